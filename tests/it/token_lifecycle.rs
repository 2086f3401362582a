//! A token's life beyond the connect: a live socket whose JWT expires is closed at expiry, on
//! Socket.IO (event `auth:expired`, then DISCONNECT: reason "io server disconnect") and on the
//! JSON endpoint (an `ERROR` frame `TOKEN_EXPIRED`, then close code 1008), unless refreshed in
//! time with a newer token of the same user (`auth:refresh`, `AUTH_REFRESH`); and RS256 keys from
//! a JWKS URL, chosen by `kid`, fetched again on a key rotation but not for every made-up `kid`.

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::support::*;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures_util::StreamExt;
use serde_json::{Value, json};
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

    // The other user's socket lives on: it still answers, and no notice came before the answer.
    assert_eq!(long.emit_ack("ping", json!([])).await, json!(["pong"]));
    long.assert_no_event("auth:expired", Duration::ZERO).await;
}

#[tokio::test]
async fn a_socketio_socket_refreshed_in_time_stays_connected() {
    let node = node().await;
    let exp = now() + LIFETIME;
    let mut refreshed = Agent::connected(
        &node.url(),
        &jwt_hs256(SECRET, json!({"sub": 7, "exp": exp})),
    )
    .await;
    let mut control = Agent::connected(
        &node.url(),
        &jwt_hs256(SECRET, json!({"sub": 7, "exp": exp})),
    )
    .await;

    // Another user's token is refused, and changes nothing.
    let theirs = jwt_hs256(SECRET, json!({"sub": 8, "exp": now() + 3600}));
    assert_eq!(
        refreshed
            .emit_ack("auth:refresh", json!([{"token": theirs}]))
            .await,
        json!([{"error": "the token is for another user"}])
    );
    let bad = jwt_hs256("wrong-secret", json!({"sub": 7, "exp": now() + 3600}));
    assert_eq!(
        refreshed
            .emit_ack("auth:refresh", json!([{"token": bad}]))
            .await,
        json!([{"error": "invalid token: bad signature"}])
    );
    let later = now() + 3600;
    let fresh = jwt_hs256(SECRET, json!({"sub": 7, "exp": later}));
    assert_eq!(
        refreshed
            .emit_ack("auth:refresh", json!([{"token": fresh}]))
            .await,
        json!([{"status": "success", "expires": later}])
    );

    // The control socket, not refreshed, expires at the old deadline; the refreshed one
    // still answers after it, and was told nothing.
    let wait = TIMEOUT + Duration::from_secs(LIFETIME);
    control.expect_event("auth:expired", wait).await;
    assert_eq!(
        control.expect_disconnect(TIMEOUT).await,
        "io server disconnect"
    );
    assert_eq!(refreshed.emit_ack("ping", json!([])).await, json!(["pong"]));
    refreshed
        .assert_no_event("auth:expired", Duration::from_millis(200))
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

/// A new RSA key pair: the private key's PEM and the public key as a JWK named `kid`.
fn rsa_key(dir: &Path, kid: &str) -> (Vec<u8>, Value) {
    let private = dir.join(format!("{kid}.pem"));
    openssl_rsa_key(&private);
    let modulus = Command::new("openssl")
        .args(["rsa", "-noout", "-modulus", "-in"])
        .arg(&private)
        .output()
        .expect("openssl rsa -modulus");
    let hex = String::from_utf8_lossy(&modulus.stdout);
    let hex = hex.trim().trim_start_matches("Modulus=");
    let n: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex modulus"))
        .collect();
    let jwk = json!({"kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid,
        "n": URL_SAFE_NO_PAD.encode(n), "e": "AQAB"});
    (std::fs::read(&private).expect("private key"), jwk)
}

fn rs256(private_pem: &[u8], kid: &str, claims: Value) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some(kid.to_owned());
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(private_pem).expect("rsa key");
    jsonwebtoken::encode(&header, &claims, &key).expect("sign")
}

async fn connect_result(node: &Node, token: &str) -> Result<String, String> {
    let mut agent = Agent::spawn(
        json!({"url": node.url(), "auth": {"token": token}, "transports": ["websocket"]}),
    );
    let line = agent
        .wait_for(
            |line| line["type"] == "connect" || line["type"] == "connect_error",
            TIMEOUT,
        )
        .await;
    match line["type"].as_str() {
        Some("connect") => Ok(line["id"].as_str().unwrap_or_default().to_owned()),
        _ => {
            assert_eq!(line["message"], "Authentication failed", "{line}");
            Err(line["data"]["reason"]
                .as_str()
                .unwrap_or_default()
                .to_owned())
        }
    }
}

#[tokio::test]
async fn jwks_keys_by_kid_with_rotation_and_no_refetch_flood() {
    let dir = TempDir::new("jwks");
    let (a_private, a_public) = rsa_key(dir.path(), "a");
    let (b_private, b_public) = rsa_key(dir.path(), "b");
    let published = Arc::new(Mutex::new(json!({"keys": [a_public.clone()]})));
    let serving = published.clone();
    let idp = AppServer::start(move |_| -> Answer {
        let set = serving.lock().expect("lock").to_string();
        Box::pin(async move { (200, set) })
    })
    .await;
    let fetches = || idp.received().iter().filter(|r| r.path == "/jwks").count();
    let node = Node::spawn(&[], &[("SWITCHBOARD_JWT_JWKS_URL", &idp.url("/jwks"))]).await;

    let claims = json!({"sub": 1, "exp": now() + 3600});
    assert!(
        connect_result(&node, &rs256(&a_private, "a", claims.clone()))
            .await
            .is_ok()
    );
    assert!(
        connect_result(&node, &rs256(&a_private, "a", claims.clone()))
            .await
            .is_ok()
    );
    assert_eq!(fetches(), 1, "the set is fetched once and cached");
    // Signed by another key under a known kid.
    assert_eq!(
        connect_result(&node, &rs256(&b_private, "a", claims.clone())).await,
        Err("invalid token: bad signature".into())
    );

    // The provider rotates: a token with the new kid makes the node fetch again, and passes.
    *published.lock().expect("lock") = json!({"keys": [a_public, b_public]});
    assert!(
        connect_result(&node, &rs256(&b_private, "b", claims.clone()))
            .await
            .is_ok()
    );
    assert_eq!(fetches(), 2);

    // Made-up kids right after: refused without asking the provider each time.
    for i in 0..10 {
        assert_eq!(
            connect_result(&node, &rs256(&b_private, &format!("x{i}"), claims.clone())).await,
            Err("invalid token: unknown key id".into())
        );
    }
    assert_eq!(fetches(), 2, "no fetch per unknown kid");
    assert!(
        connect_result(&node, &rs256(&b_private, "b", claims))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn a_json_socket_refreshes_its_token() {
    use futures_util::SinkExt;
    let node = node().await;
    let token = jwt_hs256(SECRET, json!({"sub": 7, "exp": now() + 3600}));
    let url = format!("ws://{}/ws?token={token}", node.addr());
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("json websocket");
    let mut answer = async |frame: Value| -> Value {
        ws.send(Message::text(frame.to_string()))
            .await
            .expect("send");
        loop {
            match tokio::time::timeout(TIMEOUT, ws.next()).await {
                Ok(Some(Ok(Message::Text(text)))) => {
                    let frame: Value = serde_json::from_str(&text).expect("a JSON frame");
                    // An answer carries the ref; an ERROR carries it in its payload.
                    if frame["ref"] == 1 || frame["payload"]["ref"] == 1 {
                        return frame;
                    }
                }
                Ok(Some(Ok(_))) => continue,
                other => panic!("expected an answer, got {other:?}"),
            }
        }
    };
    let theirs = jwt_hs256(SECRET, json!({"sub": 8, "exp": now() + 3600}));
    let refused =
        answer(json!({"type": "AUTH_REFRESH", "payload": {"token": theirs}, "ref": 1})).await;
    assert_eq!(refused["type"], "ERROR", "{refused}");
    assert_eq!(refused["payload"]["code"], "INVALID_TOKEN", "{refused}");
    let later = now() + 7200;
    let fresh = jwt_hs256(SECRET, json!({"sub": 7, "exp": later}));
    let accepted =
        answer(json!({"type": "AUTH_REFRESH", "payload": {"token": fresh}, "ref": 1})).await;
    assert_eq!(accepted["type"], "AUTH_REFRESHED", "{accepted}");
    assert_eq!(accepted["payload"], json!({"expires": later}));
}
