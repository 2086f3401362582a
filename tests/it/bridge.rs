//! The back-end bridge with a stand-in application: client events forwarded signed and
//! answered (Socket.IO ack, JSON REPLY), the back-end slow, failing and down, `register`,
//! and the back-end → clients API across two nodes: push, room broadcast counts, forced
//! disconnect, batch, per-key rate limits.

use std::time::Duration;

use crate::support::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "switchboard-dev-secret";
const API_KEY: &str = "bridge-key";
const BACKEND_SECRET: &str = "shared-backend-secret";

fn token(sub: &str) -> String {
    jwt_hs256(SECRET, json!({"sub": sub}))
}

/// Whether a request carries a valid signature of its exact body bytes.
fn signed(request: &Received) -> bool {
    request.signed_with(BACKEND_SECRET)
}

/// The application: `echo` answers with what it got, `slow` takes too long, `fail` is a 500;
/// a bad signature is a 401.
async fn application() -> AppServer {
    AppServer::start(|request: Received| -> Answer {
        Box::pin(async move {
            if request.path != "/app/events" || !signed(&request) {
                return (401, r#"{"error":"bad signature"}"#.to_owned());
            }
            let body = &request.body;
            match body["event"].as_str().unwrap_or_default() {
                "slow" => {
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    (200, "{}".to_owned())
                }
                "fail" => (500, r#"{"message":"Server Error"}"#.to_owned()),
                _ => (
                    200,
                    json!({"echo": body["data"], "user": body["userId"], "socket": body["socketId"]})
                        .to_string(),
                ),
            }
        })
    })
    .await
}

async fn agent(node: &Node, user: &str) -> (Agent, String) {
    let mut agent = Agent::spawn(json!({
        "url": node.url(),
        "auth": {"token": token(user)},
        "transports": ["websocket"],
    }));
    let id = agent.expect_connect(TIMEOUT).await;
    agent.expect_event("subscribed", TIMEOUT).await;
    (agent, id)
}

async fn api(node: &Node, path: &str, body: Value) -> HttpResponse {
    http(
        "POST",
        &format!("{}{path}", node.url()),
        &[("authorization", &format!("Bearer {API_KEY}"))],
        body.to_string().as_bytes(),
    )
    .await
}

#[tokio::test]
async fn client_events_are_forwarded_signed_and_answered() {
    let app = application().await;
    let backend = app.url("/app");
    let node = Node::spawn(
        &["--dev"],
        &[
            ("SWITCHBOARD_BACKEND_URL", &backend),
            ("SWITCHBOARD_BACKEND_SECRET", BACKEND_SECRET),
            ("SWITCHBOARD_BACKEND_EVENTS", "echo,slow,fail,chat.*"),
            ("SWITCHBOARD_BACKEND_TIMEOUT", "1s"),
            ("SWITCHBOARD_NODE_ID", "edge-1"),
        ],
    )
    .await;
    let (mut client, socket_id) = agent(&node, "u1").await;

    let answer = client.emit_ack("echo", json!([{"text": "hi"}])).await;
    assert_eq!(
        answer,
        json!([{"echo": {"text": "hi"}, "user": "u1", "socket": socket_id}])
    );
    let forwarded = app.received().pop().expect("one request");
    assert!(signed(&forwarded), "signature over the exact body");
    assert_eq!(forwarded.body["nodeId"], "edge-1");
    assert_eq!(forwarded.body["event"], "echo");
    let ts = forwarded.body["ts"].as_u64().expect("ts in ms");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    assert!(now.abs_diff(ts) < 60_000, "ts {ts} is now-ish");

    // A pattern entry, then what is outside the list, the slow, the failing.
    let answer = client.emit_ack("chat.send", json!(["x"])).await;
    assert_eq!(answer[0]["echo"], "x");
    let refused = client.emit_ack("order.delete", json!([{}])).await;
    assert_eq!(
        refused,
        json!([{"error": "event `order.delete` is not handled"}])
    );
    let slow = client.emit_ack("slow", json!([{}])).await;
    assert_eq!(slow, json!([{"error": "back-end timed out"}]));
    let failed = client.emit_ack("fail", json!([{}])).await;
    assert_eq!(failed, json!([{"error": "back-end answered 500"}]));
    // Without an ack, a failure still reaches the client.
    client.emit("fail", json!([{}])).await;
    let error = client.expect_event("error", TIMEOUT).await;
    assert_eq!(error[0]["event"], "fail");
    // A hanging back-end slows nothing else: a broadcast sent while `slow` waits for its
    // timeout reaches the same socket before the timeout's error does.
    client.emit("slow", json!([{}])).await;
    let news = json!({"channel": "private-user.u1", "event": "news", "data": 1});
    let sent = http(
        "POST",
        &format!("{}/api/broadcast", node.url()),
        &[("authorization", "Bearer switchboard-dev-key")],
        news.to_string().as_bytes(),
    )
    .await;
    assert_eq!(sent.status, 202, "{}", sent.text());
    let first = client
        .wait_for(
            |l| l["type"] == "event" && (l["event"] == "news" || l["event"] == "error"),
            TIMEOUT,
        )
        .await;
    assert_eq!(first["event"], "news", "{first}");
    let error = client.expect_event("error", TIMEOUT).await;
    assert_eq!(
        error[0],
        json!({"event": "slow", "error": "back-end timed out"})
    );

    // register: only as oneself.
    let mine = client.emit_ack("register", json!([{"userId": "u1"}])).await;
    assert_eq!(mine, json!([{"success": true, "room": "private-user.u1"}]));
    let other = client.emit_ack("register", json!([{"userId": "u2"}])).await;
    assert_eq!(other[0]["success"], false);

    // The JSON protocol: EVENT answered by REPLY with the client's ref.
    let path = format!("ws://{}/ws?token={}", node.addr(), token("u1"));
    let (mut ws, _) = tokio_tungstenite::connect_async(path).await.expect("ws");
    let frame = json!({"type": "EVENT", "payload": {"event": "echo", "data": [1, 2]}, "ref": "q1"});
    ws.send(Message::text(frame.to_string()))
        .await
        .expect("send");
    let reply = loop {
        match tokio::time::timeout(TIMEOUT, ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => {
                break serde_json::from_str::<Value>(&text).expect("json");
            }
            Ok(Some(Ok(_))) => continue,
            other => panic!("no reply: {other:?}"),
        }
    };
    assert_eq!(reply["type"], "REPLY", "{reply}");
    assert_eq!(reply["ref"], "q1");
    assert_eq!(reply["payload"]["echo"], json!([1, 2]));
}

#[tokio::test]
async fn an_unreachable_back_end_is_a_clear_error() {
    let closed = format!("http://127.0.0.1:{}", free_port());
    let node = Node::spawn(
        &["--dev"],
        &[
            ("SWITCHBOARD_BACKEND_URL", &closed),
            ("SWITCHBOARD_BACKEND_SECRET", BACKEND_SECRET),
        ],
    )
    .await;
    let (mut client, _) = agent(&node, "u1").await;
    let answer = client.emit_ack("anything", json!([1])).await;
    assert_eq!(answer, json!([{"error": "back-end unreachable"}]));
    // Without a back-end configured, unknown events are refused as before.
    let plain = Node::spawn(&["--dev"], &[]).await;
    let (mut client, _) = agent(&plain, "u1").await;
    let answer = client.emit_ack("anything", json!([1])).await;
    assert_eq!(answer, json!([{"error": "unknown event `anything`"}]));
}

async fn cluster(redis: &RedisServer, extra: &[(&str, &str)]) -> (Node, Node) {
    let url = redis.url();
    let args = ["--dev", "--api-keys", API_KEY, "--redis-url", &url];
    let (one, two) = (
        Node::spawn(&args, extra).await,
        Node::spawn(&args, extra).await,
    );
    for node in [&one, &two] {
        node.wait_ready(true).await;
    }
    (one, two)
}

#[tokio::test]
async fn push_room_broadcast_and_disconnect_across_nodes() {
    let redis = RedisServer::start().await;
    let (one, two) = cluster(&redis, &[]).await;
    let (mut a1, _) = agent(&one, "ann").await;
    let (mut a2, _) = agent(&two, "ann").await;
    let (mut b, _) = agent(&two, "bob").await;

    let pushed = api(
        &one,
        "/api/push",
        json!({"user_ids": ["ann", 404], "event": "alert", "data": {"n": 1}}),
    )
    .await;
    assert_eq!(pushed.status, 200, "{}", pushed.text());
    assert_eq!(pushed.json(), json!({"users": 2, "online": 1}));
    for agent in [&mut a1, &mut a2] {
        let args = agent.expect_event("alert", TIMEOUT).await;
        assert_eq!(args, [json!("private-user.ann"), json!({"n": 1})]);
    }
    // One bad id refuses the whole push: nobody gets a half-sent event.
    let refused = api(
        &one,
        "/api/push",
        json!({"user_ids": ["ann", "not an id!"], "event": "half", "data": 1}),
    )
    .await;
    assert_eq!(refused.status, 400, "{}", refused.text());
    // Absence proved by order: a push after the refused one arrives, and nothing before it.
    let whole = api(
        &one,
        "/api/push",
        json!({"user_ids": ["ann"], "event": "whole", "data": 2}),
    )
    .await;
    assert_eq!(whole.status, 200, "{}", whole.text());
    a1.expect_event("whole", TIMEOUT).await;
    a1.assert_no_event("half", Duration::ZERO).await;

    for agent in [&mut a1, &mut a2, &mut b] {
        let answer = agent
            .emit_ack("subscribe", json!([{"channel": "lobby"}]))
            .await;
        assert_eq!(answer[0]["status"], "success");
    }
    // Counts follow subscriptions within milliseconds, asynchronously.
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let sent = api(
            &two,
            "/api/rooms/lobby/broadcast",
            json!({"event": "tick", "data": 1}),
        )
        .await;
        assert_eq!(sent.status, 200, "{}", sent.text());
        if sent.json()["recipients"] == 3 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "recipients never 3: {}",
            sent.text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    b.expect_event("tick", TIMEOUT).await;
    // Published before the tick, so it would have arrived by now.
    b.assert_no_event("alert", Duration::ZERO).await;

    // Ann is banned: every socket of hers closes, on both nodes, and does not come back.
    let kicked = http(
        "POST",
        &format!("{}/api/users/ann/disconnect", one.url()),
        &[("authorization", &format!("Bearer {API_KEY}"))],
        b"",
    )
    .await;
    assert_eq!(kicked.json(), json!({"user_id": "ann", "connections": 2}));
    for agent in [&mut a1, &mut a2] {
        assert_eq!(
            agent.expect_disconnect(TIMEOUT).await,
            "io server disconnect"
        );
    }
    // Bob is still connected: his ping is answered after Ann's sockets closed, and no
    // disconnect line came before it.
    assert_eq!(b.emit_ack("ping", json!([])).await, json!(["pong"]));
    b.assert_no("disconnect", |l| l["type"] == "disconnect", Duration::ZERO)
        .await;
}

#[tokio::test]
async fn batches_answer_per_item_and_keys_are_rate_limited() {
    let node = Node::spawn(
        &["--dev", "--api-keys", API_KEY],
        &[
            ("SWITCHBOARD_API_RATE", "0.1"),
            ("SWITCHBOARD_API_BURST", "2"),
        ],
    )
    .await;
    let (mut u, _) = agent(&node, "u").await;
    let (mut seven, _) = agent(&node, "7").await;
    let joined = u.emit_ack("subscribe", json!([{"channel": "news"}])).await;
    assert_eq!(joined[0]["status"], "success", "{joined}");
    let batch = json!({"batch": [
        {"op": "broadcast", "channel": "news", "event": "e", "data": 1},
        {"op": "push", "user_ids": ["u"], "event": "pushed"},
        {"op": "room_broadcast", "room": "news", "event": "room", "data": 3},
        {"op": "disconnect", "user_id": 7},
        {"op": "push", "user_ids": [], "event": "e"},
        {"op": "explode"},
    ]});
    let answer = api(&node, "/api/batch", batch).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let statuses: Vec<Value> = answer.json()["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["status"].clone())
        .collect();
    assert_eq!(
        statuses,
        [
            json!(202),
            json!(200),
            json!(200),
            json!(200),
            json!(400),
            json!(400)
        ]
    );
    // Each accepted item happened, in order.
    assert_eq!(
        u.expect_event("e", TIMEOUT).await,
        [json!("news"), json!(1)]
    );
    assert_eq!(
        u.expect_event("pushed", TIMEOUT).await[0],
        json!("private-user.u")
    );
    assert_eq!(
        u.expect_event("room", TIMEOUT).await,
        [json!("news"), json!(3)]
    );
    assert_eq!(
        seven.expect_disconnect(TIMEOUT).await,
        "io server disconnect"
    );
    let too_many = api(
        &node,
        "/api/batch",
        json!({"batch": vec![json!({"op": "disconnect", "user_id": 1}); 101]}),
    )
    .await;
    assert_eq!(too_many.status, 400);
    // The burst of two is used by now: the next call is refused.
    let limited = api(&node, "/api/push", json!({"user_ids": ["u"], "event": "e"})).await;
    assert_eq!(limited.status, 429, "{}", limited.text());
    assert_eq!(limited.json()["error"]["code"], "rate_limited");
}
