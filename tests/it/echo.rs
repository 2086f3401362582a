//! Laravel Echo from npm (`broadcaster: 'socket.io'`) against two nodes sharing Redis, with
//! a policy file: private channels by JWT claim, presence channels by role, whispers, and
//! Laravel's own Redis publishing.

use std::time::Duration;

use crate::support::*;
use serde_json::{Value, json};

const SECRET: &str = "switchboard-dev-secret";
const PREFIX: &str = "laravel_database_";

const POLICY: &str = r#"
[[channel]]
pattern = "presence-chat.{id}"
allow = "role"
min_role = "member"

[[channel]]
pattern = "private-orders.{id}"
allow = "claim"
claim = "channels"
"#;

async fn cluster(redis: &RedisServer) -> (Node, Node) {
    let url = redis.url();
    let (_dir, policy) = policy_file(POLICY);
    let policy = policy.to_str().expect("utf-8 temp path");
    let args = ["--dev", "--redis-url", &url, "--redis-prefix", PREFIX];
    let one = Node::spawn(
        &args,
        &[
            ("SWITCHBOARD_NODE_ID", "one"),
            ("SWITCHBOARD_POLICY_FILE", policy),
        ],
    )
    .await;
    let two = Node::spawn(
        &args,
        &[
            ("SWITCHBOARD_NODE_ID", "two"),
            ("SWITCHBOARD_POLICY_FILE", policy),
        ],
    )
    .await;
    for node in [&one, &two] {
        node.wait_ready(true).await;
    }
    (one, two)
}

async fn echo(node: &Node, claims: Value) -> EchoAgent {
    let mut agent = EchoAgent::spawn(json!({
        "url": node.url(),
        "token": jwt_hs256(SECRET, claims),
        "transports": ["websocket"],
    }));
    agent.expect_connect(TIMEOUT).await;
    agent
}

fn alice() -> Value {
    json!({"sub": 1, "name": "Alice", "role": "member", "channels": ["private-orders.*"]})
}

fn bob() -> Value {
    json!({"sub": 2, "name": "Bob", "role": "MODERATOR"})
}

#[tokio::test]
async fn echo_private_channel_gets_laravel_publishes_from_redis() {
    let redis = RedisServer::start().await;
    let (one, two) = cluster(&redis).await;

    let mut a = echo(&one, alice()).await;
    a.private("orders.5", &["OrderShipped"]).await;
    a.expect_subscribed("private-orders.5", TIMEOUT).await;
    // Bob's token lists no orders channel.
    let mut b = echo(&two, bob()).await;
    b.private("orders.5", &["OrderShipped"]).await;
    let refused = b
        .expect_subscription_error("private-orders.5", TIMEOUT)
        .await;
    assert_eq!(
        (&refused["error"], &refused["details"]),
        (&json!("Unauthorized"), &json!("forbidden")),
        "{refused}"
    );

    // Exactly what Laravel's Redis broadcaster publishes.
    let envelope = json!({
        "event": "App\\Events\\OrderShipped",
        "data": {"order": 5, "socket": null},
        "socket": null,
    });
    let receivers = redis
        .publish(&format!("{PREFIX}private-orders.5"), envelope.to_string())
        .await;
    // Only node one listens: Bob's refused subscription left node two unsubscribed.
    assert_eq!(receivers, 1);
    assert_eq!(
        a.expect_event("private-orders.5", "OrderShipped", TIMEOUT)
            .await,
        json!({"order": 5, "socket": null})
    );
}

#[tokio::test]
async fn echo_presence_here_joining_leaving_and_whispers_across_nodes() {
    let redis = RedisServer::start().await;
    let (one, two) = cluster(&redis).await;
    let channel = "presence-chat.1";

    let mut a = echo(&one, alice()).await;
    a.join("chat.1").await;
    a.listen_for_whisper(ChannelKind::Presence, "chat.1", "typing")
        .await;
    assert_eq!(
        a.expect_here(channel, TIMEOUT).await,
        [json!({"name": "Alice"})]
    );

    let mut b = echo(&two, bob()).await;
    b.join("chat.1").await;
    let mut here = b.expect_here(channel, TIMEOUT).await;
    here.sort_by_key(|m| m["name"].to_string());
    assert_eq!(here, [json!({"name": "Alice"}), json!({"name": "Bob"})]);
    assert_eq!(
        a.expect_joining(channel, TIMEOUT).await,
        json!({"name": "Bob"})
    );

    // A guest is below the channel's minimum role.
    let mut guest = echo(&one, json!({"sub": 3, "name": "Guest", "role": "guest"})).await;
    guest.join("chat.1").await;
    let refused = guest.expect_subscription_error(channel, TIMEOUT).await;
    assert_eq!(
        (&refused["error"], &refused["details"]),
        (&json!("Unauthorized"), &json!("forbidden")),
        "{refused}"
    );

    // Whispers cross nodes and skip the sender.
    b.listen_for_whisper(ChannelKind::Presence, "chat.1", "typing")
        .await;
    b.whisper(
        ChannelKind::Presence,
        "chat.1",
        "typing",
        json!({"who": "Bob"}),
    )
    .await;
    assert_eq!(
        a.expect_whisper(channel, "typing", TIMEOUT).await,
        json!({"who": "Bob"})
    );
    // Alice answers; Bob's own whisper would have reached him before her answer.
    a.whisper(
        ChannelKind::Presence,
        "chat.1",
        "typing",
        json!({"who": "Alice"}),
    )
    .await;
    assert_eq!(
        b.expect_whisper(channel, "typing", TIMEOUT).await,
        json!({"who": "Alice"}),
        "Bob heard his own whisper"
    );

    b.disconnect().await;
    assert_eq!(
        a.expect_leaving(channel, TIMEOUT).await,
        json!({"name": "Bob"})
    );
    // A marker on a channel the guest may hear, published after Bob left: had the refused
    // channel's presence events reached the guest, they would have come before it.
    guest.channel("announcements", &["Marker"]).await;
    guest.expect_subscribed("announcements", TIMEOUT).await;
    let marker = json!({"event": "App\\Events\\Marker", "data": {}, "socket": null});
    redis
        .publish(&format!("{PREFIX}announcements"), marker.to_string())
        .await;
    guest.expect_event("announcements", "Marker", TIMEOUT).await;
    guest
        .assert_no(
            "presence events on a refused channel",
            |line| line["type"] == "joining" || line["type"] == "leaving",
            Duration::ZERO,
        )
        .await;
}
