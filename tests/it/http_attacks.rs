//! Attacks on the HTTP layer before authentication, each against a real node over raw TCP:
//! bodies sent by strangers or never finished, oversized request heads, too many connections
//! from one address, and token-less Engine.IO sessions filling the node (issue 16, items 2
//! and 7). New settings are given as environment variables, which an older binary ignores, so
//! each test shows the attack working there.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::support::*;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const SECRET: &str = "switchboard-dev-secret";
const API_KEY: &str = "test-key";
/// The size every stalled upload announces: the default message limit.
const ANNOUNCED: usize = 1_000_000;

fn token(sub: Value) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    jwt_hs256(
        SECRET,
        json!({"sub": sub, "name": "Test", "exp": now + 600}),
    )
}

/// A TCP connection to `node` from `local` (127.0.0.x gives distinct client addresses).
async fn connect_from(local: &str, node: &Node) -> TcpStream {
    let local: IpAddr = local.parse().expect("a local address");
    let socket = TcpSocket::new_v4().expect("a socket");
    socket
        .bind(SocketAddr::new(local, 0))
        .expect("bind the local address");
    socket.connect(node.addr()).await.expect("connect")
}

/// Reads one response head and returns its status, or `None` when the connection ends (or
/// fails) first; panics if nothing happens within [`TIMEOUT`].
async fn read_status(stream: &mut TcpStream) -> Option<u16> {
    let read = async {
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let text = String::from_utf8_lossy(&head);
        text.split(' ').nth(1).and_then(|code| code.parse().ok())
    };
    tokio::time::timeout(TIMEOUT, read)
        .await
        .expect("the node neither answered nor closed the connection in time")
}

/// Whether the node closes the connection (after whatever it still sends) within [`TIMEOUT`].
async fn closed_by_node(stream: &mut TcpStream) -> bool {
    let drain = async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(TIMEOUT, drain).await.is_ok()
}

/// Sends the head of a POST announcing [`ANNOUNCED`] bytes and the first `sent` of them, then
/// stalls (the caller keeps the stream open).
async fn stalled_upload(stream: &mut TcpStream, target: &str, headers: &str, sent: usize) {
    let head = format!(
        "POST {target} HTTP/1.1\r\nhost: switchboard\r\ncontent-type: text/plain\r\ncontent-length: {ANNOUNCED}\r\n{headers}\r\n"
    );
    stream.write_all(head.as_bytes()).await.expect("send head");
    stream
        .write_all(&vec![b'x'; sent])
        .await
        .expect("send part of the body");
}

/// Opens an Engine.IO polling session from `local`: its sid, or the refusal's status.
async fn handshake_from(local: &str, node: &Node) -> Result<String, u16> {
    let response = http_from(
        local,
        "GET",
        &format!("{}/socket.io/?EIO=4&transport=polling", node.url()),
        &[],
        b"",
    )
    .await;
    if response.status != 200 {
        return Err(response.status);
    }
    let text = response.text();
    let open: Value = serde_json::from_str(text.trim_start_matches('0')).expect("open packet");
    Ok(open["sid"].as_str().expect("sid").to_owned())
}

fn polling_url(node: &Node, sid: &str) -> String {
    format!(
        "{}/socket.io/?EIO=4&transport=polling&sid={sid}",
        node.url()
    )
}

/// Item 2: an API call without a valid key is refused from its headers, before its body.
#[tokio::test]
async fn api_body_without_key_is_refused_unread() {
    let node = Node::spawn(&["--dev", "--api-keys", API_KEY], &[]).await;
    for auth in ["", "authorization: Bearer wrong-key\r\n"] {
        let mut stream = connect_from("127.0.0.1", &node).await;
        stalled_upload(&mut stream, "/api/broadcast", auth, 1000).await;
        assert_eq!(
            read_status(&mut stream).await,
            Some(401),
            "answered before the body, with {auth:?}"
        );
    }
}

/// Item 2: a polling POST naming no live session is refused before its body is read.
#[tokio::test]
async fn polling_body_for_unknown_session_is_refused_unread() {
    let node = Node::spawn(&["--dev"], &[]).await;
    let mut stream = connect_from("127.0.0.1", &node).await;
    stalled_upload(
        &mut stream,
        "/socket.io/?EIO=4&transport=polling&sid=no-such-session",
        "",
        1000,
    )
    .await;
    assert_eq!(read_status(&mut stream).await, Some(400));
}

/// Item 2: a body that stops arriving is answered 408 at the deadline and its connection
/// closed, for a live polling session as for an API call with a valid key.
#[tokio::test]
async fn stalled_bodies_are_cut_off_at_the_deadline() {
    let node = Node::spawn(
        &["--dev", "--api-keys", API_KEY],
        &[("SWITCHBOARD_BODY_TIMEOUT", "1s")],
    )
    .await;
    let sid = handshake_from("127.0.0.1", &node).await.expect("a session");
    // Connected first: before that a session's payloads are limited to 8 KiB.
    let connect = format!("40{}", json!({"token": token(json!(1))}));
    let connected = http("POST", &polling_url(&node, &sid), &[], connect.as_bytes()).await;
    assert_eq!(connected.status, 200, "{}", connected.text());
    let mut polling = connect_from("127.0.0.1", &node).await;
    let target = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
    stalled_upload(&mut polling, &target, "", 999_000).await;
    let mut api = connect_from("127.0.0.1", &node).await;
    let key = format!("authorization: Bearer {API_KEY}\r\n");
    stalled_upload(&mut api, "/api/broadcast", &key, 999_000).await;
    assert_eq!(read_status(&mut polling).await, Some(408));
    assert!(
        closed_by_node(&mut polling).await,
        "polling connection closed"
    );
    assert_eq!(read_status(&mut api).await, Some(408));
    assert!(closed_by_node(&mut api).await, "API connection closed");
}

/// Item 3, on polling: until a session has connected a namespace its payloads may be 8 KiB, so
/// a token-less session cannot make the node hold a megabyte; once connected, the full size.
#[tokio::test]
async fn a_big_polling_payload_before_connect_is_refused() {
    let node = Node::spawn(&["--dev"], &[]).await;
    let sid = handshake_from("127.0.0.1", &node).await.expect("a session");
    let mut stream = connect_from("127.0.0.1", &node).await;
    let target = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
    stalled_upload(&mut stream, &target, "", 1000).await;
    assert_eq!(
        read_status(&mut stream).await,
        Some(413),
        "refused from its length"
    );
    let poll = http("GET", &polling_url(&node, &sid), &[], b"").await;
    assert!(
        poll.status != 200 || poll.text().split('\u{1e}').any(|p| p == "1"),
        "the session is closed: {} {}",
        poll.status,
        poll.text()
    );

    // Connected, the same session size is accepted.
    let sid = handshake_from("127.0.0.1", &node).await.expect("a session");
    let connect = format!("40{}", json!({"token": token(json!(2))}));
    let connected = http("POST", &polling_url(&node, &sid), &[], connect.as_bytes()).await;
    assert_eq!(connected.status, 200, "{}", connected.text());
    let big = format!("42{}", json!(["ping", "x".repeat(100_000)]));
    let sent = http("POST", &polling_url(&node, &sid), &[], big.as_bytes()).await;
    assert_eq!(sent.status, 200, "{}", sent.text());
}

/// Suspected: a request head of hundreds of kilobytes was read whole; 64 KiB is the limit now.
#[tokio::test]
async fn oversized_request_head_is_refused() {
    let node = Node::spawn(&["--dev"], &[]).await;
    let mut stream = connect_from("127.0.0.1", &node).await;
    let head = format!(
        "GET /health HTTP/1.1\r\nhost: switchboard\r\nx-pad: {}\r\n\r\n",
        "a".repeat(100_000)
    );
    // The node may close before it has read everything, so a failed write is not the test's.
    let _ = stream.write_all(head.as_bytes()).await;
    let status = read_status(&mut stream).await;
    assert!(
        matches!(status, Some(431) | None),
        "a 100 KB head must be refused, got {status:?}"
    );
    // A normal request still works.
    let health = http("GET", &format!("{}/health", node.url()), &[], b"").await;
    assert_eq!(health.status, 200);
}

/// Sends `GET /health` on a kept-alive connection: whether it was answered 200.
async fn health_on(stream: &mut TcpStream) -> bool {
    let request = "GET /health HTTP/1.1\r\nhost: switchboard\r\n\r\n";
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    read_status(stream).await == Some(200)
}

/// Item 2: one address may hold only so many HTTP connections; the next is closed unanswered,
/// other addresses are not affected, and a closed connection gives its place back.
#[tokio::test]
async fn connections_over_the_per_address_cap_are_closed() {
    let node = Node::spawn(
        &["--dev"],
        &[("SWITCHBOARD_MAX_HTTP_CONNECTIONS_PER_ADDRESS", "4")],
    )
    .await;
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut stream = connect_from("127.0.0.2", &node).await;
        assert!(health_on(&mut stream).await, "within the cap");
        held.push(stream);
    }
    let mut over = connect_from("127.0.0.2", &node).await;
    assert!(
        !health_on(&mut over).await,
        "the fifth connection is refused"
    );
    let mut other = connect_from("127.0.0.3", &node).await;
    assert!(
        health_on(&mut other).await,
        "another address has its own cap"
    );
    drop(held.pop());
    // The node notices the close asynchronously: the place comes back soon after.
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let mut again = connect_from("127.0.0.2", &node).await;
        if health_on(&mut again).await {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a closed connection gives its place back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Item 7: token-less sessions from one address are capped, so they cannot fill the node; a
/// real user still connects, sessions that connect a namespace stop counting, and the
/// strangers' sessions end at the (short) connect deadline and give their places back.
#[tokio::test]
async fn unauthenticated_sessions_cannot_fill_the_node() {
    let node = Node::spawn(
        &["--dev"],
        &[
            ("SWITCHBOARD_MAX_CONNECTIONS", "20"),
            ("SWITCHBOARD_MAX_UNAUTHENTICATED_PER_ADDRESS", "4"),
            ("SWITCHBOARD_CONNECT_TIMEOUT", "1s"),
        ],
    )
    .await;
    let mut strangers = Vec::new();
    let refusal = loop {
        match handshake_from("127.0.0.2", &node).await {
            Ok(sid) => strangers.push(sid),
            Err(status) => break status,
        }
        assert!(strangers.len() <= 20, "never refused");
    };
    assert_eq!(
        (strangers.len(), refusal),
        (4, 429),
        "one address holds at most 4 sessions that have not connected"
    );

    // A pending poll on a stranger's session hears it end at the connect deadline.
    let url = polling_url(&node, &strangers[0]);
    let closed = tokio::spawn(async move {
        tokio::time::timeout(TIMEOUT, http_from("127.0.0.2", "GET", &url, &[], b"")).await
    });

    // A real user, from another address, is not kept out.
    let mut user = Agent::connected(&node.url(), &token(json!(1))).await;
    user.emit_ack("ping", json!([])).await;

    // Sessions that connect a namespace no longer count against their address.
    for n in 0..6 {
        let sid = handshake_from("127.0.0.3", &node)
            .await
            .unwrap_or_else(|status| panic!("session {n} refused with {status}"));
        let connect = format!("40{}", json!({"token": token(json!(100 + n))}));
        let sent = http_from(
            "127.0.0.3",
            "POST",
            &polling_url(&node, &sid),
            &[("content-type", "text/plain")],
            connect.as_bytes(),
        )
        .await;
        assert_eq!(sent.status, 200, "connect packet accepted");
        let ack = http_from("127.0.0.3", "GET", &polling_url(&node, &sid), &[], b"").await;
        assert!(ack.text().starts_with("40"), "connected: {}", ack.text());
    }

    // The strangers' sessions end at the connect deadline, and their address may open
    // sessions again.
    let closed = closed
        .await
        .expect("the poll task")
        .expect("the session ends at the connect deadline");
    assert_eq!(closed.text(), "1", "a close packet");
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while handshake_from("127.0.0.2", &node).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "places come back when sessions end"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Suspected: a client that never reads held a long-poll response (and its frames) forever.
/// A response that makes no progress for SWITCHBOARD_WRITE_TIMEOUT now closes its connection.
#[tokio::test]
async fn a_long_poll_nobody_reads_is_cut_off() {
    let node = Node::spawn(
        &["--dev", "--api-keys", API_KEY],
        &[
            ("SWITCHBOARD_WRITE_TIMEOUT", "1s"),
            ("SWITCHBOARD_SEND_QUEUE_BYTES", "16000000"),
        ],
    )
    .await;
    let sid = handshake_from("127.0.0.1", &node).await.expect("a session");
    let connect = format!("40{}", json!({"token": token(json!(7))}));
    let connected = http("POST", &polling_url(&node, &sid), &[], connect.as_bytes()).await;
    assert_eq!(connected.status, 200, "{}", connected.text());
    // Ten broadcasts of ~900 KB wait for the next poll: more than the kernel buffers on both
    // sides of a client that does not read (Linux lets a send buffer grow to 4 MiB).
    let data = "x".repeat(900_000);
    let mut queued = 0;
    for n in 0..10 {
        let body = json!({"channel": "private-user.7", "event": format!("big{n}"), "data": data});
        let response = http(
            "POST",
            &format!("{}/api/broadcast", node.url()),
            &[("authorization", &format!("Bearer {API_KEY}"))],
            body.to_string().as_bytes(),
        )
        .await;
        assert_eq!(response.status, 202, "{}", response.text());
        queued += data.len();
    }
    let socket = TcpSocket::new_v4().expect("a socket");
    socket
        .set_recv_buffer_size(4096)
        .expect("a small receive buffer");
    let mut stream = socket.connect(node.addr()).await.expect("connect");
    let target = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
    let request = format!("GET {target} HTTP/1.1\r\nhost: switchboard\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send the poll");
    // Read nothing for twice the timeout, then everything there is: a cut connection ends
    // short of the response; one still served would deliver it all and stay open.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut received = Vec::new();
    let read = tokio::time::timeout(TIMEOUT, async {
        let mut buf = vec![0u8; 65536];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the connection stayed open after {} bytes",
        received.len()
    );
    assert!(
        received.len() < queued,
        "the whole response arrived ({} bytes): nothing was cut",
        received.len()
    );
}
