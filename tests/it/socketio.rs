//! Real socket.io-client 4.x against one node: transports, the three token places, refused
//! tokens, subscribe/unsubscribe, private-user isolation, acks, namespaces.

use crate::support::*;
use serde_json::{Value, json};

const SECRET: &str = "switchboard-dev-secret";
const API_KEY: &str = "test-key";

fn token(sub: Value) -> String {
    jwt_hs256(
        SECRET,
        json!({"sub": sub, "name": "Test", "exp": now() + 600}),
    )
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

async fn node() -> Node {
    Node::spawn(&["--dev", "--api-keys", API_KEY], &[]).await
}

async fn broadcast(node: &Node, body: Value) -> HttpResponse {
    http(
        "POST",
        &format!("{}/api/broadcast", node.url()),
        &[
            ("authorization", &format!("Bearer {API_KEY}")),
            ("content-type", "application/json"),
        ],
        body.to_string().as_bytes(),
    )
    .await
}

/// Connects, checks the automatic `private-user.{id}` subscription, subscribes to `news`, and
/// receives a broadcast as `(event, channel, data)`.
async fn round_trip(node: &Node, transports: Option<&[&str]>, upgrade: bool) -> Agent {
    let mut config =
        json!({"url": node.url(), "auth": {"token": token(json!(7))}, "upgrade": upgrade});
    if let Some(transports) = transports {
        config["transports"] = json!(transports);
    }
    let mut agent = Agent::spawn(config);
    agent.expect_connect(TIMEOUT).await;
    let auto = agent.expect_event("subscribed", TIMEOUT).await;
    assert_eq!(
        auto,
        vec![json!({"channel": "private-user.7", "status": "auto"})]
    );
    agent.emit("subscribe", json!([{"channel": "news"}])).await;
    let answer = agent.expect_event("subscribed", TIMEOUT).await;
    assert_eq!(
        answer,
        vec![json!({"channel": "news", "status": "success"})]
    );
    let response = broadcast(
        node,
        json!({"channel": "news", "event": "App\\Events\\Posted", "data": {"id": 1}}),
    )
    .await;
    assert_eq!(response.status, 202, "{}", response.text());
    let args = agent.expect_event("App\\Events\\Posted", TIMEOUT).await;
    assert_eq!(args, vec![json!("news"), json!({"id": 1})]);
    agent
}

#[tokio::test]
async fn websocket_only_client() {
    let node = node().await;
    let mut agent = round_trip(&node, Some(&["websocket"]), true).await;
    assert_eq!(agent.transport().await.as_deref(), Some("websocket"));
}

#[tokio::test]
async fn polling_only_client() {
    let node = node().await;
    let mut agent = round_trip(&node, Some(&["polling"]), false).await;
    assert_eq!(agent.transport().await.as_deref(), Some("polling"));
}

#[tokio::test]
async fn polling_then_upgrade_client() {
    let node = node().await;
    let mut agent = round_trip(&node, Some(&["polling", "websocket"]), true).await;
    agent
        .wait_for(
            |line| line["type"] == "upgrade" && line["transport"] == "websocket",
            TIMEOUT,
        )
        .await;
    assert_eq!(agent.transport().await.as_deref(), Some("websocket"));
    // Still delivering after the switch.
    broadcast(
        &node,
        json!({"channel": "news", "event": "after", "data": 2}),
    )
    .await;
    assert_eq!(
        agent.expect_event("after", TIMEOUT).await,
        vec![json!("news"), json!(2)]
    );
}

#[tokio::test]
async fn token_from_each_place() {
    let node = node().await;
    let places = [
        json!({"auth": {"token": token(json!(1))}}),
        json!({"extraHeaders": {"Authorization": format!("Bearer {}", token(json!(1)))}}),
        json!({"query": {"token": token(json!(1))}}),
        // Laravel Echo passes its `auth: {headers}` option through to the handshake.
        json!({"auth": {"headers": {"Authorization": format!("Bearer {}", token(json!(1)))}}}),
    ];
    for transports in [["websocket"], ["polling"]] {
        for place in &places {
            let mut config = place.clone();
            config["url"] = json!(node.url());
            config["transports"] = json!(transports);
            let mut agent = Agent::spawn(config);
            agent.expect_connect(TIMEOUT).await;
            let auto = agent.expect_event("subscribed", TIMEOUT).await;
            assert_eq!(auto[0]["channel"], "private-user.1", "{place}");
        }
    }
}

#[tokio::test]
async fn refused_tokens_say_why() {
    let node = node().await;
    let cases = [
        (json!({}), "missing token"),
        (
            json!({"auth": {"token": jwt_hs256(SECRET, json!({"sub": 1, "exp": now() - 3600}))}}),
            "invalid token: expired",
        ),
        (
            json!({"auth": {"token": jwt_hs256("not-the-secret", json!({"sub": 1}))}}),
            "invalid token: bad signature",
        ),
        (
            json!({"auth": {"token": jwt_none(json!({"sub": 1}))}}),
            "invalid token: algorithm not allowed",
        ),
        (
            json!({"auth": {"token": "not.a.jwt"}}),
            "invalid token: malformed",
        ),
        (
            json!({"auth": {"token": jwt_hs256(SECRET, json!({"name": "nobody"}))}}),
            "invalid token: no user id (sub or userId)",
        ),
    ];
    for (place, expected) in cases {
        let mut config = place.clone();
        config["url"] = json!(node.url());
        config["transports"] = json!(["websocket"]);
        let mut agent = Agent::spawn(config);
        assert_eq!(agent.expect_refused(TIMEOUT).await, expected);
    }
    let logs = node.logs();
    assert!(logs.contains("bad token"), "refusals are logged");
    assert!(
        !logs.contains("eyJ"),
        "no token may appear in the logs:\n{logs}"
    );
    let metrics = http("GET", &format!("{}/metrics", node.url()), &[], b"")
        .await
        .text();
    assert!(
        metrics.contains("switchboard_auth_failures_total{reason=\"expired\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn subscribe_unsubscribe_and_private_isolation() {
    let node = node().await;
    let mut one = Agent::spawn(
        json!({"url": node.url(), "auth": {"token": token(json!(1))}, "transports": ["websocket"]}),
    );
    one.expect_connect(TIMEOUT).await;
    one.expect_event("subscribed", TIMEOUT).await;

    one.emit("subscribe", json!([{"channel": "private-user.2"}]))
        .await;
    let refused = one.expect_event("subscription_error", TIMEOUT).await;
    assert_eq!(
        refused,
        vec![json!({"channel": "private-user.2", "error": "Unauthorized", "details": "forbidden"})]
    );
    one.emit("subscribe", json!([{"channel": "presence-room.1"}]))
        .await;
    let refused = one.expect_event("subscription_error", TIMEOUT).await;
    assert_eq!(
        (&refused[0]["error"], &refused[0]["details"]),
        (&json!("Unauthorized"), &json!("forbidden"))
    );
    one.emit("subscribe", json!([{"channel": "bad channel*"}]))
        .await;
    let invalid = one.expect_event("subscription_error", TIMEOUT).await;
    assert_eq!(invalid[0]["error"], "Unauthorized", "{invalid:?}");
    assert!(
        invalid[0]["details"]
            .as_str()
            .unwrap_or_default()
            .contains("channel name contains"),
        "{invalid:?}"
    );

    // User 2's own channel reaches user 2 only.
    let mut two = Agent::spawn(
        json!({"url": node.url(), "auth": {"token": token(json!("2"))}, "transports": ["websocket"]}),
    );
    two.expect_connect(TIMEOUT).await;
    two.expect_event("subscribed", TIMEOUT).await;
    broadcast(
        &node,
        json!({"channel": "private-user.2", "event": "secret", "data": "for two"}),
    )
    .await;
    assert_eq!(
        two.expect_event("secret", TIMEOUT).await,
        vec![json!("private-user.2"), json!("for two")]
    );
    // Absence by order: user 1's own channel hears a later broadcast, and nothing before it.
    broadcast(
        &node,
        json!({"channel": "private-user.1", "event": "mine", "data": 1}),
    )
    .await;
    one.expect_event("mine", TIMEOUT).await;
    one.assert_no_event("secret", std::time::Duration::ZERO)
        .await;

    // Unsubscribe stops delivery.
    one.emit("subscribe", json!([{"channel": "news"}])).await;
    one.expect_event("subscribed", TIMEOUT).await;
    one.emit("unsubscribe", json!([{"channel": "news"}])).await;
    assert_eq!(
        one.expect_event("unsubscribed", TIMEOUT).await,
        vec![json!({"channel": "news"})]
    );
    broadcast(
        &node,
        json!({"channel": "news", "event": "late", "data": null}),
    )
    .await;
    broadcast(
        &node,
        json!({"channel": "private-user.1", "event": "after", "data": 2}),
    )
    .await;
    one.expect_event("after", TIMEOUT).await;
    one.assert_no_event("late", std::time::Duration::ZERO).await;
}

#[tokio::test]
async fn acknowledgements_and_ping() {
    let node = node().await;
    let mut agent = Agent::spawn(
        json!({"url": node.url(), "auth": {"token": token(json!(3))}, "transports": ["websocket"]}),
    );
    agent.expect_connect(TIMEOUT).await;
    assert_eq!(agent.emit_ack("ping", json!([])).await, json!(["pong"]));
    agent.emit("ping", json!([])).await;
    agent.expect_event("pong", TIMEOUT).await;
    let ok = agent
        .emit_ack("subscribe", json!([{"channel": "news"}]))
        .await;
    assert_eq!(ok, json!([{"channel": "news", "status": "success"}]));
    let refused = agent
        .emit_ack("subscribe", json!([{"channel": "private-user.9"}]))
        .await;
    assert_eq!(
        refused,
        json!([{"channel": "private-user.9", "error": "Unauthorized", "details": "forbidden"}])
    );
    let unknown = agent.emit_ack("no-such-event", json!([1])).await;
    assert_eq!(unknown, json!([{"error": "unknown event `no-such-event`"}]));
    let whisper = agent
        .emit_ack(
            "client event",
            json!([{"channel": "news", "event": "client-typing", "data": {}}]),
        )
        .await;
    assert_eq!(
        whisper[0]["error"],
        "client events are only allowed on private, presence, room and group channels"
    );
}

#[tokio::test]
async fn unknown_namespace_is_refused() {
    let node = node().await;
    let mut agent = Agent::spawn(json!({
        "url": format!("{}/admin", node.url()),
        "auth": {"token": token(json!(1))},
        "transports": ["websocket"],
    }));
    assert_eq!(agent.expect_refused(TIMEOUT).await, "Invalid namespace");
}

#[tokio::test]
async fn subscription_limit() {
    let node = Node::spawn(&["--dev", "--max-subscriptions", "2"], &[]).await;
    let mut agent = Agent::spawn(
        json!({"url": node.url(), "auth": {"token": token(json!(1))}, "transports": ["websocket"]}),
    );
    agent.expect_connect(TIMEOUT).await;
    // The automatic private-user channel is the first of the two.
    let ok = agent.emit_ack("subscribe", json!([{"channel": "a"}])).await;
    assert_eq!(ok[0]["status"], "success");
    let refused = agent.emit_ack("subscribe", json!([{"channel": "b"}])).await;
    assert_eq!(
        refused,
        json!([{"channel": "b", "error": "Unauthorized", "details": "too many subscriptions (limit 2)"}])
    );
}

/// Issue 18.1: a Laravel service (MechaMap's `NodeJsBroadcastService`) posts
/// `{"channel","event","data","timestamp"}` with an ISO 8601 timestamp; it is accepted. A field
/// the API does not know, such as `socketId` for `socket_id`, is refused by name rather than
/// ignored (ignoring it would broadcast to the sender it meant to leave out).
#[tokio::test]
async fn a_laravel_service_body_with_a_timestamp_is_accepted_and_typos_are_refused() {
    let node = node().await;
    let mut agent = Agent::spawn(
        json!({"url": node.url(), "auth": {"token": token(json!(5))}, "transports": ["websocket"]}),
    );
    agent.expect_connect(TIMEOUT).await;
    agent.expect_event("subscribed", TIMEOUT).await;

    let typo = broadcast(
        &node,
        json!({"channel": "private-user.5", "event": "notification.sent", "data": {"id": 0}, "socketId": "abc"}),
    )
    .await;
    assert_eq!(typo.status, 400, "{}", typo.text());
    assert!(typo.text().contains("socketId"), "{}", typo.text());
    let badly_timed = broadcast(
        &node,
        json!({"channel": "private-user.5", "event": "notification.sent", "data": {"id": 0}, "timestamp": {}}),
    )
    .await;
    assert_eq!(badly_timed.status, 400, "{}", badly_timed.text());

    let sent = broadcast(
        &node,
        json!({
            "channel": "private-user.5",
            "event": "notification.sent",
            "data": {"id": 1, "title": "Reply"},
            "timestamp": "2026-12-05T13:42:18.000000Z",
        }),
    )
    .await;
    assert_eq!(sent.status, 202, "{}", sent.text());
    assert_eq!(
        agent.expect_event("notification.sent", TIMEOUT).await,
        vec![json!("private-user.5"), json!({"id": 1, "title": "Reply"})]
    );
    // The refused ones never went out: the accepted one, sent after them, came first.
    agent
        .assert_no(
            "a refused broadcast",
            |l| l["args"][1]["id"] == 0,
            std::time::Duration::ZERO,
        )
        .await;
}

/// Issue 18.1: a plain socket.io-client app listens with `socket.on('notification.sent', data
/// => …)` and wants the data as the first argument, as `socket.to(channel).emit(event, data)`
/// sends it; Laravel Echo wants `(channel, data)`. The node's setting picks the default, a
/// client may pick for itself in its handshake, and one broadcast reaches both shapes.
#[tokio::test]
async fn broadcast_arguments_in_either_shape() {
    let spawn = |auth: Value, node: &Node| {
        Agent::spawn(json!({"url": node.url(), "auth": auth, "transports": ["websocket"]}))
    };
    let echo_node = node().await;
    let mut echo = spawn(json!({"token": token(json!(5))}), &echo_node);
    let mut plain = spawn(
        json!({"token": token(json!(5)), "broadcastArgs": "data"}),
        &echo_node,
    );
    for agent in [&mut echo, &mut plain] {
        agent.expect_connect(TIMEOUT).await;
        agent.expect_event("subscribed", TIMEOUT).await;
    }
    let body =
        json!({"channel": "private-user.5", "event": "notification.sent", "data": {"id": 7}});
    assert_eq!(broadcast(&echo_node, body.clone()).await.status, 202);
    assert_eq!(
        echo.expect_event("notification.sent", TIMEOUT).await,
        [json!("private-user.5"), json!({"id": 7})]
    );
    assert_eq!(
        plain.expect_event("notification.sent", TIMEOUT).await,
        [json!({"id": 7})]
    );

    // A node set to the plain shape; a client can still ask for Echo's.
    let plain_node = Node::spawn(
        &["--dev", "--api-keys", API_KEY],
        &[("SWITCHBOARD_BROADCAST_ARGS", "data")],
    )
    .await;
    let mut plain = spawn(json!({"token": token(json!(5))}), &plain_node);
    let mut echo = spawn(
        json!({"token": token(json!(5)), "broadcastArgs": "channel-data"}),
        &plain_node,
    );
    for agent in [&mut echo, &mut plain] {
        agent.expect_connect(TIMEOUT).await;
        agent.expect_event("subscribed", TIMEOUT).await;
    }
    assert_eq!(broadcast(&plain_node, body).await.status, 202);
    assert_eq!(
        plain.expect_event("notification.sent", TIMEOUT).await,
        [json!({"id": 7})]
    );
    assert_eq!(
        echo.expect_event("notification.sent", TIMEOUT).await,
        [json!("private-user.5"), json!({"id": 7})]
    );
}
