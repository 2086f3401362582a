//! Exact wire behaviour with raw clients: bad input, limits, slow consumers, heartbeats,
//! origins and CORS, Engine.IO error answers, and the HTTP API's errors.

use std::time::Duration;

use crate::support::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const SECRET: &str = "switchboard-dev-secret";
const API_KEY: &str = "test-key";

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

fn token(sub: u64) -> String {
    jwt_hs256(SECRET, json!({"sub": sub}))
}

async fn connect_ws(
    node: &Node,
    origin: Option<&str>,
) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", node.addr());
    let mut request = url.into_client_request()?;
    if let Some(origin) = origin {
        request
            .headers_mut()
            .insert("origin", origin.parse().expect("header value"));
    }
    let (ws, _) = tokio_tungstenite::connect_async(request).await?;
    Ok(ws)
}

async fn next_text(ws: &mut Ws) -> String {
    loop {
        match tokio::time::timeout(TIMEOUT, ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => return text.to_string(),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// Opens a websocket session and connects to `/` as `user`; returns the socket id.
async fn socket(node: &Node, user: u64) -> (Ws, String) {
    let mut ws = connect_ws(node, None).await.expect("websocket handshake");
    let open = next_text(&mut ws).await;
    assert!(open.starts_with("0{\"sid\":"), "{open}");
    ws.send(Message::text(format!(
        "40{}",
        json!({"token": token(user)})
    )))
    .await
    .expect("send");
    let connected = next_text(&mut ws).await;
    let sid: Value =
        serde_json::from_str(connected.strip_prefix("40").expect("CONNECT")).expect("json");
    let auto = next_text(&mut ws).await;
    assert_eq!(
        auto,
        format!(r#"42["subscribed",{{"channel":"private-user.{user}","status":"auto"}}]"#)
    );
    (ws, sid["sid"].as_str().expect("sid").to_owned())
}

async fn subscribe(ws: &mut Ws, channel: &str) {
    ws.send(Message::text(format!(
        r#"42["subscribe",{{"channel":"{channel}"}}]"#
    )))
    .await
    .expect("send");
    assert_eq!(
        next_text(ws).await,
        format!(r#"42["subscribed",{{"channel":"{channel}","status":"success"}}]"#)
    );
}

async fn api(node: &Node, key: Option<&str>, body: &[u8]) -> HttpResponse {
    let auth = key.map(|k| format!("Bearer {k}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(auth) = &auth {
        headers.push(("authorization", auth));
    }
    http(
        "POST",
        &format!("{}/api/broadcast", node.url()),
        &headers,
        body,
    )
    .await
}

async fn metric(node: &Node, name: &str) -> f64 {
    let text = http("GET", &format!("{}/metrics", node.url()), &[], b"")
        .await
        .text();
    text.lines()
        .find(|line| line.starts_with(name) && !line.starts_with('#'))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn exact_broadcast_frame() {
    let node = Node::spawn(&["--dev", "--api-keys", API_KEY], &[]).await;
    let (mut ws, _) = socket(&node, 1).await;
    subscribe(&mut ws, "news").await;
    let body =
        json!({"channel": "news", "event": "App\\Events\\Posted", "data": {"title": "é\"x"}});
    assert_eq!(
        api(&node, Some(API_KEY), body.to_string().as_bytes())
            .await
            .status,
        202
    );
    assert_eq!(
        next_text(&mut ws).await,
        r#"42["App\\Events\\Posted","news",{"title":"é\"x"}]"#
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_dropped_while_others_keep_receiving() {
    let node = Node::spawn(
        &[
            "--dev",
            "--api-keys",
            API_KEY,
            "--send-queue-bytes",
            "2000000",
        ],
        // 400 API calls in a burst: the per-key API rate is not what this test is about.
        &[("SWITCHBOARD_API_RATE", "0")],
    )
    .await;
    let (mut stuck, _) = socket(&node, 1).await;
    let (mut healthy, _) = socket(&node, 2).await;
    subscribe(&mut stuck, "flood").await;
    subscribe(&mut healthy, "flood").await;

    const MESSAGES: usize = 400;
    let received = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let reader = tokio::spawn({
        let received = received.clone();
        async move {
            while received.load(std::sync::atomic::Ordering::Acquire) < MESSAGES {
                let text = next_text(&mut healthy).await;
                if text.starts_with(r#"42["chunk""#) {
                    received.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                }
            }
        }
    });
    // 400 × 100 KB is far more than loopback socket buffers hold for a reader that never
    // reads. The healthy reader is never more than 10 messages (1 MB) behind, under its limit.
    let body =
        json!({"channel": "flood", "event": "chunk", "data": "x".repeat(100_000)}).to_string();
    for sent in 0..MESSAGES {
        while sent > received.load(std::sync::atomic::Ordering::Acquire) + 10 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(api(&node, Some(API_KEY), body.as_bytes()).await.status, 202);
    }
    tokio::time::timeout(TIMEOUT, reader)
        .await
        .expect("healthy reader gets everything")
        .expect("reader");
    assert_eq!(
        metric(&node, "switchboard_slow_consumer_disconnects_total").await,
        1.0
    );
    assert!(ws_closed(&mut stuck).await, "the stuck socket is closed");
    assert!(node.logs().contains("slow_consumer"), "{}", node.logs());
}

#[tokio::test]
async fn malformed_and_oversized_frames_close_only_that_socket() {
    let node = Node::spawn(&["--dev", "--max-message-size", "2048"], &[]).await;
    let (mut bystander, _) = socket(&node, 9).await;

    let cases: [(&str, String); 5] = [
        ("unknown engine packet", "9hello".into()),
        ("bad socket.io packet", "4x".into()),
        (
            "event that is not an array",
            r#"42{"not":"an array"}"#.into(),
        ),
        ("empty frame", String::new()),
        (
            "oversized frame",
            format!(r#"42["ping","{}"]"#, "y".repeat(4096)),
        ),
    ];
    for (what, frame) in cases {
        let (mut ws, _) = socket(&node, 1).await;
        ws.send(Message::text(frame)).await.expect("send");
        assert!(ws_closed(&mut ws).await, "{what}: socket closed");
    }
    // Binary frames outside a binary packet are a protocol error too.
    let (mut ws, _) = socket(&node, 1).await;
    ws.send(Message::binary(vec![1, 2, 3])).await.expect("send");
    assert!(ws_closed(&mut ws).await, "stray binary closes");

    // The node and the other socket carry on.
    bystander
        .send(Message::text(r#"421["ping"]"#))
        .await
        .expect("send");
    assert_eq!(next_text(&mut bystander).await, r#"431["pong"]"#);
    assert!(metric(&node, "switchboard_errors_total{kind=\"protocol\"}").await >= 4.0);
    let logs = node.logs();
    assert!(logs.contains("malformed Socket.IO packet"), "{logs}");
}

/// A raw websocket client: the upgrade by hand, then frames as bytes, so that frames no
/// well-behaved client library would send can be sent.
async fn raw_ws(node: &Node) -> TcpStream {
    raw_ws_at(node, "/socket.io/?EIO=4&transport=websocket").await
}

/// A raw websocket client of the endpoint at `path` (query included).
async fn raw_ws_at(node: &Node, path: &str) -> TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = TcpStream::connect(node.addr()).await.expect("connect");
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    tcp.write_all(request.as_bytes())
        .await
        .expect("write the upgrade");
    // Byte by byte up to the blank line, so no frame byte is read with the head.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(tcp.read_u8().await.expect("read the upgrade answer"));
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
    tcp
}

/// The next server frame: its opcode and payload.
async fn read_frame(tcp: &mut TcpStream) -> std::io::Result<(u8, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let (first, second) = (tcp.read_u8().await?, tcp.read_u8().await?);
    assert_eq!(second & 0x80, 0, "server frames are not masked");
    let len = match second & 0x7f {
        126 => u64::from(tcp.read_u16().await?),
        127 => tcp.read_u64().await?,
        n => u64::from(n),
    };
    let mut payload = vec![0; usize::try_from(len).expect("frame length")];
    tcp.read_exact(&mut payload).await?;
    Ok((first & 0x0f, payload))
}

/// Reads server frames until the close frame: its code, and the opcodes of the frames before.
async fn close_code(tcp: &mut TcpStream) -> (u16, Vec<u8>) {
    let mut before = Vec::new();
    let read = async {
        loop {
            let (opcode, payload) = read_frame(tcp).await?;
            if opcode == 0x8 {
                return std::io::Result::Ok(u16::from_be_bytes([payload[0], payload[1]]));
            }
            before.push(opcode);
        }
    };
    let code = tokio::time::timeout(TIMEOUT, read)
        .await
        .expect("a close frame in time")
        .expect("read frames");
    (code, before)
}

/// The header of a masked client frame announcing `len` payload bytes, masking key included.
fn client_header(first: u8, len: usize, mask: [u8; 4]) -> Vec<u8> {
    let mut out = vec![first];
    match len {
        0..=125 => out.push(0x80 | len as u8),
        126..=0xFFFF => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out
}

/// A masked client frame.
fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [1, 2, 3, 4];
    let mut out = client_header(first, payload.len(), mask);
    out.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, k)| b ^ k));
    out
}

/// A client frame of `len` bytes of `x` under an all-zero masking key, which leaves the
/// payload as it is: cheap to build at any size.
fn plain_client_frame(first: u8, len: usize) -> Vec<u8> {
    let mut out = client_header(first, len, [0; 4]);
    out.resize(out.len() + len, b'x');
    out
}

/// The node's resident memory, in KiB.
fn rss_kib(node: &Node) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", node.pid())).expect("status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|kib| kib.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[tokio::test]
async fn websocket_violations_get_their_close_codes() {
    use tokio::io::AsyncWriteExt;
    let node = Node::spawn(&["--dev", "--max-message-size", "2048"], &[]).await;
    let header_of_a_huge_message = {
        let mut frame = vec![0x81, 0x80 | 127];
        frame.extend_from_slice(&(10u64 << 20).to_be_bytes());
        frame.extend_from_slice(&[1, 2, 3, 4]);
        frame
    };
    let mut fragments = client_frame(0x01, &[b'x'; 100]);
    fragments.extend(client_frame(0x01, &[b'x'; 100]));
    let close_with = |code: u16, reason: &[u8]| {
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(reason);
        client_frame(0x88, &payload)
    };
    let cases: [(&str, Vec<u8>, u16); 10] = [
        // Refused from the header alone: the 10 MiB never need to arrive.
        ("message over the limit", header_of_a_huge_message, 1009),
        ("unmasked frame", b"\x81\x02hi".to_vec(), 1002),
        ("reserved bit set", client_frame(0xc1, b"2"), 1002),
        (
            "text that is not UTF-8",
            client_frame(0x81, &[0xff, 0xfe]),
            1007,
        ),
        ("a message begun inside another", fragments, 1002),
        // RFC 6455 §7.4: codes no endpoint may send (Autobahn 7.9.*).
        ("close code 0", close_with(0, b""), 1002),
        ("close code 1005 (no code)", close_with(1005, b""), 1002),
        ("close code 1006 (abnormal)", close_with(1006, b""), 1002),
        ("unassigned close code 2000", close_with(2000, b""), 1002),
        // Autobahn 7.5.1.
        (
            "close reason that is not UTF-8",
            close_with(1000, &[0xce, 0xba, 0xed, 0xa0, 0x80]),
            1007,
        ),
    ];
    for (what, bytes, code) in cases {
        let mut tcp = raw_ws(&node).await;
        tcp.write_all(&bytes).await.expect("send");
        assert_eq!(close_code(&mut tcp).await.0, code, "{what}");
    }
    // A client's own close is answered with 1000, and a ping with its pong.
    let mut tcp = raw_ws(&node).await;
    tcp.write_all(&client_frame(0x89, b"hi"))
        .await
        .expect("ping");
    tcp.write_all(&client_frame(0x88, &1000u16.to_be_bytes()))
        .await
        .expect("close");
    let (code, before) = close_code(&mut tcp).await;
    assert_eq!(code, 1000);
    assert!(before.contains(&0xA), "the ping was answered: {before:?}");
}

/// Issue 16, item 3: sessions without a token each began a 990 KB message and stalled, and
/// the node kept every byte of it until the connect timeout. Until a namespace is connected a
/// message is limited to 8 KiB, refused from its frame header.
#[tokio::test]
async fn a_big_message_before_connect_is_refused_from_its_header() {
    use tokio::io::AsyncWriteExt;
    let node = Node::spawn(&["--dev"], &[]).await;
    let mut half_sent = client_header(0x81, 990_000, [0; 4]);
    half_sent.resize(half_sent.len() + 1000, b'x');
    let before = rss_kib(&node);
    for _ in 0..200 {
        let mut tcp = raw_ws(&node).await;
        tcp.write_all(&half_sent).await.expect("send");
        let (code, before) = close_code(&mut tcp).await;
        assert_eq!(
            (code, before),
            (1009, vec![0x1]),
            "the open packet, then 1009"
        );
    }
    let grown = rss_kib(&node).saturating_sub(before);
    assert!(grown < 20 * 1024, "{grown} KiB after 200 refused messages");

    // A session on polling that upgrades is held to the same limit.
    let open = http(
        "GET",
        &format!("{}/socket.io/?EIO=4&transport=polling", node.url()),
        &[],
        b"",
    )
    .await
    .text();
    let open: Value =
        serde_json::from_str(open.strip_prefix('0').expect("open packet")).expect("json");
    let sid = open["sid"].as_str().expect("sid");
    let mut tcp = raw_ws_at(
        &node,
        &format!("/socket.io/?EIO=4&transport=websocket&sid={sid}"),
    )
    .await;
    tcp.write_all(&half_sent).await.expect("send");
    let ended = tokio::time::timeout(TIMEOUT, async {
        while read_frame(&mut tcp).await.is_ok() {}
    });
    ended.await.expect("the upgrade ends at once");

    // A CONNECT with a token and an auth payload larger than real ones still fits, and once
    // connected a session may send messages up to the full limit.
    let mut ws = connect_ws(&node, None).await.expect("websocket handshake");
    assert!(next_text(&mut ws).await.starts_with("0{"));
    let connect = json!({"token": token(1), "pad": "p".repeat(6000)});
    ws.send(Message::text(format!("40{connect}")))
        .await
        .expect("send");
    assert!(next_text(&mut ws).await.starts_with("40{\"sid\""));
    next_text(&mut ws).await;
    let big = format!(r#"421["ping","{}"]"#, "y".repeat(100_000));
    ws.send(Message::text(big)).await.expect("send");
    assert_eq!(next_text(&mut ws).await, r#"431["pong"]"#);
}

/// Issue 16, item 3: on `/ws`, 100 sockets each kept a fragmented 990 KB message unfinished,
/// all of it buffered, although messages over `SWITCHBOARD_WS_MAX_FRAME_SIZE` are refused.
/// That limit now holds as fragments arrive: the rest of such a message is dropped unread.
#[tokio::test]
async fn json_fragments_over_the_frame_limit_are_not_buffered() {
    use tokio::io::AsyncWriteExt;
    // Frames up to 64 KiB, messages up to 1 MB: the defaults.
    let node = Node::spawn(&["--dev"], &[]).await;
    let mut unfinished = plain_client_frame(0x01, 10_000);
    for _ in 1..99 {
        unfinished.extend(plain_client_frame(0x00, 10_000));
    }
    let before = rss_kib(&node);
    let mut sockets = Vec::new();
    for user in 0..100 {
        let mut tcp = raw_ws_at(&node, &format!("/ws?token={}", token(100 + user))).await;
        tcp.write_all(&unfinished).await.expect("send");
        // Its pong tells that the node has read every fragment before the ping.
        tcp.write_all(&client_frame(0x89, b"read"))
            .await
            .expect("ping");
        let pong = tokio::time::timeout(TIMEOUT, async {
            loop {
                match read_frame(&mut tcp).await.expect("read") {
                    (0xA, payload) => return payload,
                    _ => continue,
                }
            }
        });
        assert_eq!(pong.await.expect("a pong in time"), b"read");
        sockets.push(tcp);
    }
    let grown = rss_kib(&node).saturating_sub(before);
    assert!(grown < 30 * 1024, "{grown} KiB for 100 unfinished messages");

    // Once it ends, the message is answered as before, and the socket stays open.
    let tcp = &mut sockets[0];
    tcp.write_all(&plain_client_frame(0x80, 10_000))
        .await
        .expect("send");
    tcp.write_all(&client_frame(0x81, br#"{"type":"PING","ref":1}"#))
        .await
        .expect("send");
    let mut texts = Vec::new();
    while texts.len() < 2 {
        let (opcode, payload) = tokio::time::timeout(TIMEOUT, read_frame(tcp))
            .await
            .expect("a frame in time")
            .expect("read");
        if opcode == 0x1 {
            texts.push(serde_json::from_slice::<Value>(&payload).expect("json"));
        }
    }
    assert_eq!(texts[0]["type"], "ERROR");
    assert_eq!(texts[0]["payload"]["code"], "FRAME_TOO_LARGE");
    assert_eq!(texts[1], json!({"type": "PONG", "payload": {}, "ref": 1}));
}

/// Issue 16, item 3: a client kept a message unfinished for as long as it liked by sending a
/// fragment now and then and answering every ping. A message now has a deadline.
#[tokio::test]
async fn a_message_trickling_between_pings_is_closed_at_its_deadline() {
    use tokio::io::AsyncWriteExt;
    let node = Node::spawn(
        &[
            "--dev",
            "--message-timeout",
            "1s",
            "--ws-ping-interval",
            "300ms",
        ],
        &[],
    )
    .await;
    let mut tcp = raw_ws_at(&node, &format!("/ws?token={}", token(1))).await;
    let started = tokio::time::Instant::now();
    tcp.write_all(&client_frame(0x01, br#"{"type":"#))
        .await
        .expect("send");
    let mut pings = 0;
    let trickle = async {
        loop {
            match read_frame(&mut tcp).await.expect("read") {
                // Each ping answered, and one more byte of the message sent.
                (0x9, payload) => {
                    pings += 1;
                    tcp.write_all(&client_frame(0x8A, &payload))
                        .await
                        .expect("pong");
                    tcp.write_all(&client_frame(0x00, b" "))
                        .await
                        .expect("fragment");
                }
                (0x8, payload) => return u16::from_be_bytes([payload[0], payload[1]]),
                _ => continue,
            }
        }
    };
    let code = tokio::time::timeout(TIMEOUT, trickle)
        .await
        .expect("closed in time");
    assert_eq!(code, 1008);
    assert!(pings >= 2, "the client answered {pings} pings");
    assert!(started.elapsed() >= Duration::from_secs(1));
}

#[tokio::test]
async fn binary_attachments_are_refused_cleanly() {
    let node = Node::spawn(&["--dev"], &[]).await;
    let (mut ws, _) = socket(&node, 1).await;
    ws.send(Message::text(
        r#"451-7["upload",{"_placeholder":true,"num":0}]"#,
    ))
    .await
    .expect("send");
    ws.send(Message::binary(vec![0u8; 16])).await.expect("send");
    assert_eq!(
        next_text(&mut ws).await,
        r#"437[{"error":"binary attachments are not supported"}]"#
    );
    // The connection is still usable.
    ws.send(Message::text(r#"428["ping"]"#))
        .await
        .expect("send");
    assert_eq!(next_text(&mut ws).await, r#"438["pong"]"#);
}

#[tokio::test]
async fn unanswered_pings_close_the_session() {
    let node = Node::spawn(
        &[
            "--dev",
            "--ping-interval",
            "200ms",
            "--ping-timeout",
            "300ms",
        ],
        &[],
    )
    .await;
    let (mut silent, _) = socket(&node, 1).await;
    let (mut polite, _) = socket(&node, 2).await;
    let started = tokio::time::Instant::now();
    // The polite client answers three pings; the silent one is closed after its first.
    let mut pongs = 0;
    while pongs < 3 {
        if next_text(&mut polite).await == "2" {
            polite.send(Message::text("3")).await.expect("pong");
            pongs += 1;
        }
    }
    assert!(ws_closed(&mut silent).await, "no pong, no session");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(
        metric(
            &node,
            "switchboard_connections_closed_total{protocol=\"socketio\",reason=\"ping_timeout\"}"
        )
        .await,
        1.0
    );
    polite
        .send(Message::text(r#"421["ping"]"#))
        .await
        .expect("send");
    loop {
        let text = next_text(&mut polite).await;
        if text == "2" {
            polite.send(Message::text("3")).await.expect("pong");
            continue;
        }
        assert_eq!(text, r#"431["pong"]"#);
        break;
    }
}

#[tokio::test]
async fn connection_limit() {
    let node = Node::spawn(&["--dev", "--max-connections", "1"], &[]).await;
    let (_first, _) = socket(&node, 1).await;
    let refused = connect_ws(&node, None).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503)
        }
        other => panic!("expected HTTP 503, got {other:?}"),
    }
    let poll = http(
        "GET",
        &format!("{}/socket.io/?EIO=4&transport=polling", node.url()),
        &[],
        b"",
    )
    .await;
    assert_eq!(poll.status, 503);
    assert_eq!(poll.json()["message"], "node is at its connection limit");
}

#[tokio::test]
async fn origins_and_cors() {
    let node = Node::spawn(
        &[
            "--dev",
            "--allowed-origins",
            "https://app.example,https://admin.example",
        ],
        &[],
    )
    .await;
    assert!(connect_ws(&node, Some("https://app.example")).await.is_ok());
    assert!(
        connect_ws(&node, None).await.is_ok(),
        "non-browser clients send no Origin"
    );
    match connect_ws(&node, Some("https://evil.example")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 403)
        }
        other => panic!("expected 403, got {other:?}"),
    }

    let handshake = format!("{}/socket.io/?EIO=4&transport=polling", node.url());
    let ok = http(
        "GET",
        &handshake,
        &[("origin", "https://admin.example")],
        b"",
    )
    .await;
    assert_eq!(ok.status, 200);
    assert_eq!(
        ok.header("access-control-allow-origin"),
        Some("https://admin.example")
    );
    assert_eq!(ok.header("access-control-allow-credentials"), Some("true"));
    let refused = http(
        "GET",
        &handshake,
        &[("origin", "https://evil.example")],
        b"",
    )
    .await;
    assert_eq!(refused.status, 403);
    assert_eq!(
        refused.json(),
        json!({"code": 4, "message": "origin not allowed"})
    );
    let preflight = http(
        "OPTIONS",
        &handshake,
        &[
            ("origin", "https://app.example"),
            ("access-control-request-headers", "authorization"),
        ],
        b"",
    )
    .await;
    assert_eq!(preflight.status, 204);
    assert_eq!(
        preflight.header("access-control-allow-headers"),
        Some("authorization")
    );
    assert!(
        preflight
            .header("access-control-allow-methods")
            .unwrap_or_default()
            .contains("POST")
    );
}

#[tokio::test]
async fn engine_io_errors_and_polling_limits() {
    let node = Node::spawn(
        &[
            "--dev",
            "--max-message-size",
            "1024",
            "--ping-interval",
            "1s",
        ],
        &[],
    )
    .await;
    let base = format!("{}/socket.io/", node.url());
    let cases = [
        ("?EIO=3&transport=polling", 5),
        ("?EIO=4&transport=carrier-pigeon", 0),
        ("?EIO=4&transport=polling&sid=nope", 1),
    ];
    for (query, code) in cases {
        let response = http("GET", &format!("{base}{query}"), &[], b"").await;
        assert_eq!(response.status, 400, "{query}");
        assert_eq!(response.json()["code"], code, "{query}");
    }

    // A polling session: handshake, connect, an oversized POST closes it with 413.
    let open = http("GET", &format!("{base}?EIO=4&transport=polling"), &[], b"")
        .await
        .text();
    let open: Value =
        serde_json::from_str(open.strip_prefix('0').expect("open packet")).expect("json");
    assert_eq!(open["upgrades"], json!(["websocket"]));
    assert_eq!(open["pingInterval"], 1000);
    assert_eq!(open["maxPayload"], 1024);
    let sid = open["sid"].as_str().expect("sid");
    let session = format!("{base}?EIO=4&transport=polling&sid={sid}");
    let connect = format!("40{}", json!({"token": token(1)}));
    assert_eq!(
        http("POST", &session, &[], connect.as_bytes()).await.text(),
        "ok"
    );
    let answers = http("GET", &session, &[], b"").await.text();
    let packets: Vec<&str> = answers.split('\u{1e}').collect();
    assert!(packets[0].starts_with("40{\"sid\":"), "{answers}");
    let too_large = http("POST", &session, &[], "4".repeat(2000).as_bytes()).await;
    assert_eq!(too_large.status, 413);
    let gone = http("GET", &session, &[], b"").await;
    assert!(
        gone.status == 400 || gone.text() == "1",
        "closed session: {} {}",
        gone.status,
        gone.text()
    );
}

#[tokio::test]
async fn broadcast_api_errors() {
    let node = Node::spawn(
        &[
            "--dev",
            "--api-keys",
            "first,second",
            "--max-message-size",
            "4096",
        ],
        &[],
    )
    .await;
    let good = json!({"channel": "news", "event": "e", "data": 1}).to_string();
    assert_eq!(
        api(&node, Some("second"), good.as_bytes()).await.status,
        202
    );

    let missing = api(&node, None, good.as_bytes()).await;
    assert_eq!(missing.status, 401);
    assert_eq!(missing.json()["error"]["code"], "unauthorized");
    assert_eq!(api(&node, Some("wrong"), good.as_bytes()).await.status, 401);
    assert_eq!(api(&node, Some("firs"), good.as_bytes()).await.status, 401);

    let bad_bodies = [
        ("not json", "invalid JSON body"),
        (r#"{"event":"e"}"#, "missing `channel` or `channels`"),
        (
            r#"{"channel":"a","channels":["b"],"event":"e"}"#,
            "not both",
        ),
        (r#"{"channels":[],"event":"e"}"#, "`channels` is empty"),
        (r#"{"channel":"a b","event":"e"}"#, "channel `a b`"),
        (r#"{"channel":"a","event":""}"#, "`event` must be"),
        (
            r#"{"channel":"a","event":"e","chanel":"x"}"#,
            "unknown field `chanel`",
        ),
        (r#"{"channel":"a"}"#, "missing field `event`"),
    ];
    for (body, problem) in bad_bodies {
        let response = api(&node, Some("first"), body.as_bytes()).await;
        assert_eq!(response.status, 400, "{body}");
        let message = response.json()["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(message.contains(problem), "{body}: {message}");
    }

    let huge = json!({"channel": "news", "event": "e", "data": "z".repeat(5000)}).to_string();
    let too_large = api(&node, Some("first"), huge.as_bytes()).await;
    assert_eq!(too_large.status, 413);
    assert_eq!(too_large.json()["error"]["code"], "payload_too_large");
    let metrics = http("GET", &format!("{}/metrics", node.url()), &[], b"")
        .await
        .text();
    assert!(
        metrics.contains(
            r#"switchboard_http_api_requests_total{route="/api/broadcast",status="401"} 3"#
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn health_ready_and_metrics() {
    let node = Node::spawn(&["--dev"], &[("SWITCHBOARD_NODE_ID", "node-a")]).await;
    let health = http("GET", &format!("{}/health", node.url()), &[], b"").await;
    assert_eq!(health.json(), json!({"status": "ok", "node_id": "node-a"}));
    let ready = http("GET", &format!("{}/ready", node.url()), &[], b"").await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["bus"], "up");
    let (_ws, _) = socket(&node, 1).await;
    let metrics = http("GET", &format!("{}/metrics", node.url()), &[], b"").await;
    assert!(
        metrics
            .header("content-type")
            .unwrap_or_default()
            .starts_with("text/plain")
    );
    let text = metrics.text();
    for series in [
        "switchboard_connections{protocol=\"socketio\",transport=\"websocket\"} 1",
        "switchboard_subscriptions 1",
        "switchboard_channels 1",
        "switchboard_connections_opened_total{protocol=\"socketio\",transport=\"websocket\"} 1",
        "switchboard_broadcast_fanout_bucket",
        "switchboard_bus_publishes_total 0",
        "switchboard_handshake_duration_seconds_count{protocol=\"socketio\"} 1",
        "switchboard_outgoing_queue_frames 0",
        "switchboard_outgoing_queue_bytes 0",
        "switchboard_runtime_alive_tasks ",
        "switchboard_cluster_nodes 1",
        "switchboard_rate_limited_total{limit=\"connect_ip\"} 0",
        "switchboard_runtime_busy_ratio ",
        "switchboard_event_loop_lag_seconds_count ",
    ] {
        assert!(text.contains(series), "missing {series} in\n{text}");
    }
}

#[tokio::test]
async fn write_delay_coalesces_without_losing_order() {
    // Long enough that three API calls land within it even on a loaded machine.
    let node = Node::spawn(
        &["--dev", "--api-keys", API_KEY, "--write-delay", "300ms"],
        &[],
    )
    .await;
    let (mut ws, _) = socket(&node, 1).await;
    subscribe(&mut ws, "news").await;
    // From here the raw bytes: nothing else is on the way (the subscribe was answered), so
    // tungstenite's buffer is empty and each read shows what one write of the node carried.
    let MaybeTlsStream::Plain(mut tcp) = ws.into_inner() else {
        panic!("plain TCP expected");
    };
    // The reader waits before the first publish, so a frame written at once wakes it alone.
    let reader = tokio::spawn(async move {
        let mut first = vec![0u8; 4096];
        let read = tokio::io::AsyncReadExt::read(&mut tcp, &mut first).await;
        first.truncate(read.expect("read"));
        first
    });
    tokio::task::yield_now().await;
    for n in 0..3 {
        let body = json!({"channel": "news", "event": "n", "data": n});
        assert_eq!(
            api(&node, Some(API_KEY), body.to_string().as_bytes())
                .await
                .status,
            202
        );
    }
    let first = tokio::time::timeout(TIMEOUT, reader)
        .await
        .expect("frames in time")
        .expect("reader");
    let text = String::from_utf8_lossy(&first);
    // Without the delay each broadcast is written as it comes and the first read holds one.
    let frames: Vec<usize> = (0..3)
        .map(|n| {
            text.find(&format!(r#"42["n","news",{n}]"#))
                .unwrap_or_else(|| panic!("frame {n} not in the first write: {text:?}"))
        })
        .collect();
    assert!(frames.is_sorted(), "in publish order: {text:?}");
}
