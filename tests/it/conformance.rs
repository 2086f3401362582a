//! The conformance server (`examples/conformance.rs`): Switchboard's Engine.IO engine under the
//! reference behaviours the official socket.io-protocol and engine.io-protocol suites expect,
//! and the plain WebSocket echo the Autobahn client fuzzes. Checked here from the protocol
//! documents, over real sockets: raw HTTP and websocket frames, and the real socket.io-client.

use std::net::SocketAddr;
use std::time::Duration;

use crate::support::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::process::Command;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The conformance server as a child process on a free port.
struct Conformance {
    port: u16,
    // Declared before `_dir` so the process is gone before its log file.
    _process: LoggedChild,
    _dir: TempDir,
}

impl Conformance {
    async fn start() -> Conformance {
        let binary = build_example("conformance").await;
        let port = free_port();
        let dir = TempDir::new("conformance");
        let mut command = Command::new(&binary);
        command
            .args(["--port", &port.to_string()])
            .env("RUST_LOG", "info");
        let log = dir.path().join("conformance.log");
        let mut process = LoggedChild::spawn("conformance", command, &log);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        process
            .wait_ready(&format!("accept on {addr}"), async || {
                TcpStream::connect(addr)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            })
            .await;
        Conformance {
            port,
            _process: process,
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    async fn ws(&self, path: &str) -> Ws {
        let url = format!("ws://127.0.0.1:{}{path}", self.port);
        let (ws, _) = tokio_tungstenite::connect_async(&url)
            .await
            .unwrap_or_else(|e| panic!("websocket {url}: {e}"));
        ws
    }

    /// A websocket Engine.IO session on `path` (`/socket.io/` or `/engine.io/`), past its open
    /// packet, which it returns.
    async fn session(&self, path: &str) -> (Ws, Value) {
        let mut ws = self.ws(&format!("{path}?EIO=4&transport=websocket")).await;
        let open = text(next(&mut ws).await);
        let handshake = open
            .strip_prefix('0')
            .unwrap_or_else(|| panic!("an open packet, got {open:?}"));
        let handshake = serde_json::from_str(handshake).expect("the open packet's JSON");
        (ws, handshake)
    }

    /// A polling Engine.IO session on `/engine.io/`: its sid.
    async fn polling_session(&self) -> String {
        let open = http(
            "GET",
            &self.url("/engine.io/?EIO=4&transport=polling"),
            &[],
            b"",
        )
        .await;
        assert_eq!(open.status, 200, "{}", open.text());
        let handshake: Value =
            serde_json::from_str(&open.text()[1..]).expect("the open packet's JSON");
        handshake["sid"].as_str().expect("a sid").to_owned()
    }

    fn poll_url(&self, sid: &str) -> String {
        self.url(&format!("/engine.io/?EIO=4&transport=polling&sid={sid}"))
    }
}

/// The next message, whatever it is.
async fn next(ws: &mut Ws) -> Message {
    match tokio::time::timeout(TIMEOUT, ws.next()).await {
        Ok(Some(Ok(message))) => message,
        other => panic!("expected a message, got {other:?}"),
    }
}

fn text(message: Message) -> String {
    match message {
        Message::Text(text) => text.to_string(),
        other => panic!("expected a text message, got {other:?}"),
    }
}

/// The next message that is not a ping; pings are answered, so the session lives on.
async fn packet(ws: &mut Ws) -> Message {
    loop {
        match next(ws).await {
            Message::Text(ping) if ping == "2" => send(ws, "3").await,
            message => return message,
        }
    }
}

async fn send(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).await.expect("send");
}

async fn send_binary(ws: &mut Ws, data: &[u8]) {
    ws.send(Message::binary(data.to_vec())).await.expect("send");
}

/// Sends the CONNECT packet `connect`, checks its acceptance (the namespace's, with a sid
/// alone) and returns the packet after it: the `auth` event.
async fn connect(ws: &mut Ws, connect: &str) -> String {
    send(ws, connect).await;
    let accepted = text(packet(ws).await);
    let namespace = connect
        .strip_prefix("40")
        .and_then(|rest| rest.strip_prefix('/'))
        .map(|rest| format!("/{},", rest.split([',', '{']).next().unwrap_or_default()));
    let body = accepted
        .strip_prefix(&format!("40{}", namespace.unwrap_or_default()))
        .unwrap_or_else(|| panic!("{connect:?} accepted, got {accepted:?}"));
    let body: Value = serde_json::from_str(body).expect("the acceptance's JSON");
    assert!(
        body["sid"].is_string() && body.as_object().is_some_and(|o| o.len() == 1),
        "the acceptance carries the sid alone: {body}"
    );
    text(packet(ws).await)
}

/// Reads up to the close frame, answering pings (so no ping timeout ends the session) when
/// `pong`: the frame's code and reason.
async fn close_frame(ws: &mut Ws, pong: bool) -> (CloseCode, String) {
    let read = async {
        loop {
            let message = if pong {
                packet(ws).await
            } else {
                next(ws).await
            };
            match message {
                Message::Close(Some(frame)) => return (frame.code, frame.reason.to_string()),
                Message::Close(None) => panic!("a close frame without a code"),
                _ => {}
            }
        }
    };
    tokio::time::timeout(TIMEOUT, read)
        .await
        .expect("a close frame in time")
}

/// The close a protocol error brings (1008, the reason's label).
fn protocol_error() -> (CloseCode, String) {
    (CloseCode::Policy, "protocol_error".to_owned())
}

#[tokio::test]
async fn handshakes_announce_the_reference_settings_and_bad_requests_are_refused() {
    let server = Conformance::start().await;
    let open = http(
        "GET",
        &server.url("/engine.io/?EIO=4&transport=polling"),
        &[],
        b"",
    )
    .await;
    assert_eq!(open.status, 200);
    let body = open.text();
    let handshake: Value = serde_json::from_str(body.strip_prefix('0').expect("0")).expect("JSON");
    let keys: Vec<&str> = handshake
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys.len(),
        5,
        "sid, upgrades, pingInterval, pingTimeout, maxPayload: {handshake}"
    );
    assert!(handshake["sid"].is_string(), "{handshake}");
    assert_eq!(handshake["upgrades"], json!(["websocket"]));
    assert_eq!(handshake["pingInterval"], 300);
    assert_eq!(handshake["pingTimeout"], 200);
    assert_eq!(handshake["maxPayload"], 1_000_000);

    let (_ws, handshake) = server.session("/socket.io/").await;
    assert_eq!(handshake["upgrades"], json!([]), "{handshake}");
    assert_eq!(
        (
            &handshake["pingInterval"],
            &handshake["pingTimeout"],
            &handshake["maxPayload"]
        ),
        (&json!(300), &json!(200), &json!(1_000_000))
    );

    for (method, path) in [
        ("GET", "/engine.io/?transport=polling"),
        ("GET", "/engine.io/?EIO=abc&transport=polling"),
        ("GET", "/socket.io/?EIO=4"),
        ("GET", "/socket.io/?EIO=4&transport=abc"),
        ("POST", "/engine.io/?EIO=4&transport=polling"),
        ("PUT", "/socket.io/?EIO=4&transport=polling"),
    ] {
        let refused = http(method, &server.url(path), &[], b"").await;
        assert_eq!(refused.status, 400, "{method} {path}: {}", refused.text());
    }
}

#[tokio::test]
async fn engine_io_echoes_text_and_binary_over_polling_and_websocket() {
    let server = Conformance::start().await;
    let sid = server.polling_session().await;
    let url = server.poll_url(&sid);
    let posted = http("POST", &url, &[], b"4hello\x1e4world\x1ebAQIDBA==").await;
    assert_eq!((posted.status, posted.text()), (200, "ok".to_owned()));
    let polled = http("GET", &url, &[], b"").await;
    assert_eq!(polled.text(), "4hello\x1e4world\x1ebAQIDBA==");

    let (mut ws, _) = server.session("/engine.io/").await;
    send(&mut ws, "4hello").await;
    assert_eq!(text(packet(&mut ws).await), "4hello");
    send_binary(&mut ws, &[1, 2, 3, 4]).await;
    assert_eq!(packet(&mut ws).await, Message::binary(vec![1, 2, 3, 4]));
    // A packet that is no Engine.IO packet ends the session.
    send(&mut ws, "abc").await;
    assert_eq!(close_frame(&mut ws, true).await, protocol_error());
}

#[tokio::test]
async fn socket_io_connects_both_namespaces_and_emits_the_auth_payload_back() {
    let server = Conformance::start().await;
    let (mut ws, _) = server.session("/socket.io/").await;
    assert_eq!(connect(&mut ws, "40").await, r#"42["auth",{}]"#);
    assert_eq!(
        connect(&mut ws, "40/custom").await,
        r#"42/custom,["auth",{}]"#
    );

    let (mut ws, _) = server.session("/socket.io/").await;
    assert_eq!(
        connect(&mut ws, r#"40{"token":"123"}"#).await,
        r#"42["auth",{"token":"123"}]"#
    );
    assert_eq!(
        connect(&mut ws, r#"40/custom,{"token":"abc"}"#).await,
        r#"42/custom,["auth",{"token":"abc"}]"#
    );

    // An unknown namespace is refused, and the session stays.
    let (mut ws, _) = server.session("/socket.io/").await;
    send(&mut ws, "40/random").await;
    assert_eq!(
        text(packet(&mut ws).await),
        r#"44/random,{"message":"Invalid namespace"}"#
    );
    assert_eq!(
        connect(&mut ws, "40/custom,").await,
        r#"42/custom,["auth",{}]"#
    );
}

#[tokio::test]
async fn messages_and_acks_come_back_with_their_arguments_and_attachments() {
    let server = Conformance::start().await;
    let (mut ws, _) = server.session("/socket.io/").await;
    connect(&mut ws, "40").await;
    connect(&mut ws, "40/custom,").await;

    send(&mut ws, r#"42["message",1,"2",{"3":[true]}]"#).await;
    assert_eq!(
        text(packet(&mut ws).await),
        r#"42["message-back",1,"2",{"3":[true]}]"#
    );
    send(&mut ws, r#"42456["message-with-ack",1,"2",{"3":[false]}]"#).await;
    assert_eq!(text(packet(&mut ws).await), r#"43456[1,"2",{"3":[false]}]"#);

    let placeholders = r#"{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}"#;
    send(&mut ws, &format!(r#"452-["message",{placeholders}]"#)).await;
    send_binary(&mut ws, &[1, 2, 3]).await;
    send_binary(&mut ws, &[4, 5, 6]).await;
    assert_eq!(
        text(packet(&mut ws).await),
        format!(r#"452-["message-back",{placeholders}]"#)
    );
    assert_eq!(packet(&mut ws).await, Message::binary(vec![1, 2, 3]));
    assert_eq!(packet(&mut ws).await, Message::binary(vec![4, 5, 6]));

    send(
        &mut ws,
        &format!(r#"452-/custom,789["message-with-ack",{placeholders}]"#),
    )
    .await;
    send_binary(&mut ws, &[7]).await;
    send_binary(&mut ws, &[8]).await;
    assert_eq!(
        text(packet(&mut ws).await),
        format!(r#"462-/custom,789[{placeholders}]"#)
    );
    assert_eq!(packet(&mut ws).await, Message::binary(vec![7]));
    assert_eq!(packet(&mut ws).await, Message::binary(vec![8]));

    // After leaving /custom, its messages go unanswered: the next answer is the one for /.
    send(&mut ws, "41/custom,").await;
    send(&mut ws, r#"42/custom,["message","left"]"#).await;
    send(&mut ws, r#"42["message","still here"]"#).await;
    assert_eq!(
        text(packet(&mut ws).await),
        r#"42["message-back","still here"]"#
    );
}

#[tokio::test]
async fn malformed_socket_io_packets_close_the_session() {
    let server = Conformance::start().await;
    for malformed in [
        "4abc",
        "42{}",
        r#"42abc["message-with-ack",1]"#,
        r#"40"not an object""#,
    ] {
        let (mut ws, _) = server.session("/socket.io/").await;
        if !malformed.starts_with("40") {
            connect(&mut ws, "40").await;
        }
        send(&mut ws, malformed).await;
        let closed = close_frame(&mut ws, true).await;
        assert_eq!(closed, protocol_error(), "{malformed:?}");
    }
    // Text where a binary attachment was announced.
    let (mut ws, _) = server.session("/socket.io/").await;
    connect(&mut ws, "40").await;
    send(&mut ws, r#"451-["message",{"_placeholder":true,"num":0}]"#).await;
    send(&mut ws, r#"42["message"]"#).await;
    assert_eq!(close_frame(&mut ws, true).await, protocol_error());
}

#[tokio::test]
async fn a_socket_io_session_that_connects_no_namespace_is_closed_after_a_second() {
    let server = Conformance::start().await;
    let started = Instant::now();
    let (mut ws, _) = server.session("/socket.io/").await;
    // Pings are answered (by `packet`), so only the connect timeout can end it.
    let Message::Close(Some(closed)) = packet(&mut ws).await else {
        panic!("nothing but pings before the close frame");
    };
    assert_eq!(
        (closed.code, closed.reason.as_str()),
        (CloseCode::Policy, "connect_timeout")
    );
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(3),
        "closed after {elapsed:?}"
    );

    // The raw Engine.IO echo has no namespaces: its sessions are never closed for it. Four
    // pings answered take it past the connect timeout; then it still echoes.
    let (mut ws, _) = server.session("/engine.io/").await;
    for _ in 0..4 {
        assert_eq!(text(next(&mut ws).await), "2");
        send(&mut ws, "3").await;
    }
    send(&mut ws, "4still here").await;
    assert_eq!(text(packet(&mut ws).await), "4still here");
}

#[tokio::test]
async fn an_unanswered_ping_closes_the_session_on_either_transport() {
    let server = Conformance::start().await;
    let (mut ws, _) = server.session("/engine.io/").await;
    assert_eq!(text(next(&mut ws).await), "2");
    assert_eq!(
        close_frame(&mut ws, false).await,
        (CloseCode::Policy, "ping_timeout".to_owned())
    );

    let sid = server.polling_session().await;
    let url = server.poll_url(&sid);
    assert_eq!(http("GET", &url, &[], b"").await.text(), "2");
    // Held until the session ends, then released with the close packet.
    assert_eq!(http("GET", &url, &[], b"").await.text(), "1");
    assert_eq!(http("GET", &url, &[], b"").await.status, 400);
}

#[tokio::test]
async fn a_poll_the_client_abandons_ends_the_session() {
    use tokio::io::AsyncWriteExt;
    let server = Conformance::start().await;
    let sid = server.polling_session().await;
    let url = server.poll_url(&sid);
    let mut abandoned = TcpStream::connect(("127.0.0.1", server.port))
        .await
        .expect("connect");
    let request =
        format!("GET /engine.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\nHost: x\r\n\r\n");
    abandoned
        .write_all(request.as_bytes())
        .await
        .expect("send the poll");
    drop(abandoned);
    // Pongs keep the heartbeat satisfied, so only the abandoned poll can end the session.
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let posted = http("POST", &url, &[], b"3").await;
        if posted.status == 400 {
            break;
        }
        assert_eq!(posted.status, 200, "{}", posted.text());
        assert!(Instant::now() < deadline, "the session outlived its poll");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_echo_endpoint_returns_text_binary_and_fragmented_messages() {
    let server = Conformance::start().await;
    let mut ws = server.ws("/echo").await;
    send(&mut ws, "hello").await;
    assert_eq!(text(next(&mut ws).await), "hello");
    send_binary(&mut ws, &[0, 1, 2]).await;
    assert_eq!(next(&mut ws).await, Message::binary(vec![0, 1, 2]));

    // One text message in three frames, a ping between two of them.
    let first = Frame::message("frag", OpCode::Data(Data::Text), false);
    let second = Frame::message("men", OpCode::Data(Data::Continue), false);
    let third = Frame::message("ted", OpCode::Data(Data::Continue), true);
    ws.send(Message::Frame(first)).await.expect("send");
    ws.send(Message::Frame(second)).await.expect("send");
    ws.send(Message::Ping(vec![9].into())).await.expect("send");
    ws.send(Message::Frame(third)).await.expect("send");
    assert_eq!(next(&mut ws).await, Message::Pong(vec![9].into()));
    assert_eq!(text(next(&mut ws).await), "fragmented");

    // Larger than Engine.IO's payload limit: the echo takes up to 16 MiB.
    let large: Vec<u8> = (0..4_000_000u32).map(|i| i as u8).collect();
    send_binary(&mut ws, &large).await;
    assert_eq!(next(&mut ws).await, Message::binary(large));

    ws.close(None).await.expect("close");
    assert!(matches!(next(&mut ws).await, Message::Close(_)));
}

#[tokio::test]
async fn the_real_socket_io_client_connects_over_polling_and_upgrades() {
    let server = Conformance::start().await;
    let mut agent = Agent::spawn(json!({
        "url": server.url("/custom"),
        "auth": {"token": "abc"},
    }));
    agent.expect_connect(TIMEOUT).await;
    assert_eq!(
        agent.expect_event("auth", TIMEOUT).await,
        vec![json!({"token": "abc"})]
    );
    assert_eq!(
        agent
            .emit_ack("message-with-ack", json!([1, "2", {"3": [false]}]))
            .await,
        json!([1, "2", {"3": [false]}])
    );
    agent.emit("message", json!(["hi", {"a": null}])).await;
    assert_eq!(
        agent.expect_event("message-back", TIMEOUT).await,
        vec![json!("hi"), json!({"a": null})]
    );
    assert_eq!(agent.transport().await.as_deref(), Some("websocket"));
}
