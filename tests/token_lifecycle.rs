//! A token's life beyond the connect: a live socket whose JWT expires is closed at expiry, on
//! Socket.IO (event `auth:expired`, then DISCONNECT: reason "io server disconnect") and on the
//! JSON endpoint (an `ERROR` frame `TOKEN_EXPIRED`, then close code 1008).

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use serde_json::{Value, json};
use support::*;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "switchboard-dev-secret";
/// How long the short-lived tokens below live.
const LIFETIME: u64 = 2;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A node without leeway, so a token stops at its `exp`.
async fn node() -> Node {
    Node::spawn(&["--dev", "--jwt-leeway", "0s"], &[]).await
}

#[tokio::test]
async fn a_socketio_socket_is_disconnected_when_its_token_expires() {
    let node = node().await;
    let expiring = jwt_hs256(SECRET, json!({"sub": 7, "exp": now() + LIFETIME}));
    let lasting = jwt_hs256(SECRET, json!({"sub": 8, "exp": now() + 3600}));
    let mut short = Agent::connected(&node.url(), &expiring).await;
    let mut long = Agent::connected(&node.url(), &lasting).await;

    let wait = TIMEOUT + Duration::from_secs(LIFETIME);
    let notice = short.expect_event("auth:expired", wait).await;
    assert_eq!(notice, [json!({"message": "token expired"})]);
    assert_eq!(
        short.expect_disconnect(TIMEOUT).await,
        "io server disconnect"
    );

    // The other user's socket lives on: it still answers.
    assert_eq!(long.emit_ack("ping", json!([])).await, json!(["pong"]));
    long.assert_no_event("auth:expired", Duration::from_millis(200))
        .await;
}

#[tokio::test]
async fn a_json_socket_is_closed_when_its_token_expires() {
    let node = node().await;
    let token = jwt_hs256(SECRET, json!({"sub": 7, "exp": now() + LIFETIME}));
    let url = format!("ws://{}/ws?token={token}", node.addr());
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("json websocket");
    let wait = TIMEOUT + Duration::from_secs(LIFETIME);
    let mut error = None;
    let close = loop {
        match tokio::time::timeout(wait, ws.next())
            .await
            .expect("closed in time")
        {
            Some(Ok(Message::Text(text))) => {
                let frame: Value = serde_json::from_str(&text).expect("a JSON frame");
                if frame["type"] == "ERROR" {
                    error = Some(frame["payload"].clone());
                }
            }
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(
        error,
        Some(json!({"code": "TOKEN_EXPIRED", "message": "token expired"}))
    );
    let close = close.expect("a close frame with a code");
    assert_eq!(
        (u16::from(close.code), close.reason.as_str()),
        (1008, "token_expired")
    );
}
