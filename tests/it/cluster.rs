//! Two nodes sharing a throwaway Redis: Laravel's PUBLISH format with a prefix, socket
//! exclusion, whispers across nodes, and surviving a Redis restart.

use std::time::Duration;

use crate::support::*;
use serde_json::{Value, json};

const SECRET: &str = "switchboard-dev-secret";
const API_KEY: &str = "test-key";
const PREFIX: &str = "laravel_database_";

fn token(sub: u64) -> String {
    jwt_hs256(SECRET, json!({"sub": sub}))
}

async fn cluster(redis: &RedisServer) -> (Node, Node) {
    let url = redis.url();
    let args = [
        "--dev",
        "--api-keys",
        API_KEY,
        "--redis-url",
        &url,
        "--redis-prefix",
        PREFIX,
    ];
    let one = Node::spawn(&args, &[("SWITCHBOARD_NODE_ID", "one")]).await;
    let two = Node::spawn(&args, &[("SWITCHBOARD_NODE_ID", "two")]).await;
    for node in [&one, &two] {
        node.wait_ready(true).await;
    }
    (one, two)
}

async fn client(node: &Node, user: u64, transports: &[&str]) -> (Agent, String) {
    let mut agent = Agent::spawn(
        json!({"url": node.url(), "auth": {"token": token(user)}, "transports": transports}),
    );
    let id = agent.expect_connect(TIMEOUT).await;
    agent.expect_event("subscribed", TIMEOUT).await;
    (agent, id)
}

async fn api_broadcast(node: &Node, body: Value) -> HttpResponse {
    http(
        "POST",
        &format!("{}/api/broadcast", node.url()),
        &[("authorization", &format!("Bearer {API_KEY}"))],
        body.to_string().as_bytes(),
    )
    .await
}

#[tokio::test]
async fn laravel_publish_reaches_both_nodes_and_respects_socket_exclusion() {
    let redis = RedisServer::start().await;
    let (one, two) = cluster(&redis).await;
    let (mut a, a_id) = client(&one, 1, &["websocket"]).await;
    let (mut b, _) = client(&two, 2, &["polling"]).await;
    a.subscribe_ok("orders").await;
    b.subscribe_ok("orders").await;

    // Exactly what Laravel's RedisBroadcaster writes (data keeps its own `socket` key).
    let payload = json!({"event": "App\\Events\\OrderShipped", "data": {"id": 5, "socket": null}, "socket": null});
    let receivers = redis
        .publish(&format!("{PREFIX}orders"), payload.to_string())
        .await;
    assert_eq!(receivers, 2, "each node subscribes once to the channel");
    for agent in [&mut a, &mut b] {
        let args = agent
            .expect_event("App\\Events\\OrderShipped", TIMEOUT)
            .await;
        assert_eq!(
            args,
            vec![json!("orders"), json!({"id": 5, "socket": null})]
        );
    }

    // broadcast(...)->toOthers(): Laravel puts the sender's socket id in `socket`.
    let payload = json!({"event": "Updated", "data": {"n": 1}, "socket": a_id});
    redis
        .publish(&format!("{PREFIX}orders"), payload.to_string())
        .await;
    assert_eq!(
        b.expect_event("Updated", TIMEOUT).await,
        vec![json!("orders"), json!({"n": 1})]
    );
    // Absence by order: the next publish reaches the sender, the excluded one never did.
    let payload = json!({"event": "Next", "data": 2, "socket": null});
    redis
        .publish(&format!("{PREFIX}orders"), payload.to_string())
        .await;
    a.expect_event("Next", TIMEOUT).await;
    a.assert_no_event("Updated", Duration::ZERO).await;

    // Without the prefix nobody listens: the channel names are exactly prefix + channel.
    let receivers = redis
        .publish(
            "orders",
            json!({"event": "Unprefixed", "data": 1}).to_string(),
        )
        .await;
    assert_eq!(receivers, 0, "a node subscribed to the unprefixed name");

    // The HTTP API of one node reaches the other through Redis too.
    let response = api_broadcast(
        &one,
        json!({"channels": ["orders"], "event": "ViaApi", "data": [1, 2]}),
    )
    .await;
    assert_eq!(response.status, 202, "{}", response.text());
    assert_eq!(
        b.expect_event("ViaApi", TIMEOUT).await,
        vec![json!("orders"), json!([1, 2])]
    );

    // The last local subscriber leaving unsubscribes the node from Redis (asynchronously:
    // the client's answer does not wait for Redis).
    a.emit_ack("unsubscribe", json!([{"channel": "orders"}]))
        .await;
    let mut conn = redis.connection().await;
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let (_, subscribers): (String, i64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(format!("{PREFIX}orders"))
            .query_async(&mut conn)
            .await
            .expect("PUBSUB NUMSUB");
        if subscribers == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node one never unsubscribed: {subscribers} subscribers"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn whisper_crosses_nodes_and_is_not_echoed() {
    let redis = RedisServer::start().await;
    let (one, two) = cluster(&redis).await;
    // Two tabs of user 5 on different nodes share private-user.5.
    let (mut a, _) = client(&one, 5, &["websocket"]).await;
    let (mut b, _) = client(&two, 5, &["websocket"]).await;
    let sent = a
        .emit_ack("client event", json!([{"channel": "private-user.5", "event": "client-typing", "data": {"typing": true}}]))
        .await;
    assert_eq!(sent, json!([{"ok": true}]));
    let args = b.expect_event("client-typing", TIMEOUT).await;
    assert_eq!(args, vec![json!("private-user.5"), json!({"typing": true})]);
    // b answers; a would have heard its own whisper before the answer.
    b.emit_ack(
        "client event",
        json!([{"channel": "private-user.5", "event": "client-reply", "data": 1}]),
    )
    .await;
    a.expect_event("client-reply", TIMEOUT).await;
    a.assert_no_event("client-typing", Duration::ZERO).await;

    // Refusals: a channel not joined, and an event not named client-*.
    let refused = a
        .emit_ack(
            "client event",
            json!([{"channel": "private-user.6", "event": "client-x", "data": 1}]),
        )
        .await;
    assert_eq!(refused[0]["error"], "not subscribed to this channel");
    a.emit(
        "client event",
        json!([{"channel": "private-user.5", "event": "typing", "data": 1}]),
    )
    .await;
    let error = a.expect_event("error", TIMEOUT).await;
    assert_eq!(error[0]["error"], "client events must be named client-*");
}

#[tokio::test]
async fn redis_restart_is_survived() {
    let mut redis = RedisServer::start().await;
    let (one, two) = cluster(&redis).await;
    let (mut a, _) = client(&one, 1, &["websocket"]).await;
    let (mut b, _) = client(&two, 2, &["polling"]).await;
    a.subscribe_ok("news").await;
    b.subscribe_ok("news").await;

    redis.kill().await;
    one.wait_ready(false).await;
    two.wait_ready(false).await;
    let refused = api_broadcast(&one, json!({"channel": "news", "event": "lost", "data": 0})).await;
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_eq!(refused.json()["error"]["code"], "bus_unavailable");
    // Sockets stay up meanwhile.
    assert_eq!(a.emit_ack("ping", json!([])).await, json!(["pong"]));
    assert_eq!(b.emit_ack("ping", json!([])).await, json!(["pong"]));

    redis.restart().await;
    one.wait_ready(true).await;
    two.wait_ready(true).await;
    let response =
        api_broadcast(&two, json!({"channel": "news", "event": "back", "data": 1})).await;
    assert_eq!(response.status, 202, "{}", response.text());
    for agent in [&mut a, &mut b] {
        assert_eq!(
            agent.expect_event("back", TIMEOUT).await,
            vec![json!("news"), json!(1)]
        );
    }
    let payload = json!({"event": "laravel-back", "data": 2, "socket": null});
    assert_eq!(
        redis
            .publish(&format!("{PREFIX}news"), payload.to_string())
            .await,
        2
    );
    for agent in [&mut a, &mut b] {
        agent.expect_event("laravel-back", TIMEOUT).await;
    }
    let logs = one.logs();
    assert!(logs.contains("connection lost"), "{logs}");
    assert!(logs.contains("connected and subscribed"), "{logs}");
}

/// Issue 16.1: a user who could join the node's own control or block-list channel could read
/// that traffic and, by leaving it, unsubscribe the node, so kicks stopped working on it.
#[tokio::test]
async fn the_nodes_own_channels_are_out_of_reach() {
    let redis = RedisServer::start().await;
    let (one, _two) = cluster(&redis).await;
    let (mut attacker, _) = client(&one, 1, &["websocket"]).await;
    for internal in ["switchboard.control", "switchboard.blocks"] {
        let answer = attacker
            .emit_ack("subscribe", json!([{"channel": internal}]))
            .await;
        assert_eq!(answer[0]["error"], "Unauthorized", "{internal}: {answer}");
        assert!(
            answer[0]["details"].to_string().contains("reserved"),
            "{internal}: {answer}"
        );
        let _ = attacker
            .emit_ack("unsubscribe", json!([{"channel": internal}]))
            .await;
        let published = api_broadcast(
            &one,
            json!({"channel": internal, "event": "disconnect_user", "data": {"userId": "2"}}),
        )
        .await;
        assert_eq!(published.status, 400, "{internal}: {}", published.text());
    }
    drop(attacker);

    // The node still hears its control channel: a kick reaches a socket on it.
    let (mut victim, _) = client(&one, 2, &["websocket"]).await;
    let kicked = http(
        "POST",
        &format!("{}/api/users/2/disconnect", one.url()),
        &[("authorization", &format!("Bearer {API_KEY}"))],
        b"",
    )
    .await;
    assert_eq!(kicked.status, 200, "{}", kicked.text());
    assert_eq!(
        victim.expect_disconnect(TIMEOUT).await,
        "io server disconnect"
    );
}

/// `POST`/`DELETE /api/users/{user}/channels/{channel}` with the API key.
async fn user_channel(node: &Node, method: &str, user: u64, channel: &str) -> HttpResponse {
    http(
        method,
        &format!("{}/api/users/{user}/channels/{channel}", node.url()),
        &[("authorization", &format!("Bearer {API_KEY}"))],
        b"",
    )
    .await
}

/// The next event an agent received, presence announcements aside: its name and arguments.
/// (A user's other socket may hear the user's own `presence:joining`, depending on which of
/// its sockets joined first.)
async fn next_event(agent: &mut Agent) -> (String, Value) {
    let line = agent
        .wait_for(
            |l| {
                l["type"] == "event"
                    && !l["event"]
                        .as_str()
                        .is_some_and(|e| e.starts_with("presence:"))
            },
            TIMEOUT,
        )
        .await;
    let name = line["event"].as_str().unwrap_or_default().to_owned();
    (name, line["args"].clone())
}

#[tokio::test]
async fn the_back_end_puts_a_users_sockets_in_a_channel_on_every_node() {
    let redis = RedisServer::start().await;
    let (one, two) = cluster(&redis).await;
    // User 7 on both nodes, one of them a plain socket.io app's client (data-only arguments).
    let (mut seven_a, _) = client(&one, 7, &["websocket"]).await;
    let mut seven_b = Agent::spawn(json!({"url": two.url(), "transports": ["polling"],
        "auth": {"token": token(7), "broadcastArgs": "data"}}));
    seven_b.expect_connect(TIMEOUT).await;
    seven_b.expect_event("subscribed", TIMEOUT).await;
    let (mut nine, _) = client(&two, 9, &["websocket"]).await;
    let team = "presence-team.1";
    // No rule lets a client in by itself.
    let refused = nine.emit_ack("subscribe", json!([{"channel": team}])).await;
    assert_eq!(refused[0]["error"], "Unauthorized", "{refused}");

    // The back-end puts user 9 in, through node one; their socket is on node two.
    let answer = user_channel(&one, "POST", 9, team).await;
    assert_eq!(answer.status, 202, "{}", answer.text());
    assert_eq!(
        answer.json(),
        json!({"user_id": "9", "channel": team, "subscribed": true, "connections": 1})
    );
    one.until_subscribed(API_KEY, team, 1).await;
    // Then user 7, both sockets: user 9 hears them join once, as a presence member.
    assert_eq!(user_channel(&two, "POST", 7, team).await.status, 202);
    let joining = nine.expect_event("presence:joining", TIMEOUT).await;
    assert_eq!(joining[0], team);
    assert_eq!(joining[1]["user_id"], "7", "{joining:?}");
    one.until_subscribed(API_KEY, team, 3).await;
    let members = http(
        "GET",
        &format!("{}/api/channels/{team}/users", one.url()),
        &[("authorization", &format!("Bearer {API_KEY}"))],
        b"",
    )
    .await
    .json();
    assert_eq!(
        members["users"].as_array().map(Vec::len),
        Some(2),
        "{members}"
    );

    let standup = json!({"channel": team, "event": "standup", "data": {"at": 9}});
    assert_eq!(api_broadcast(&two, standup).await.status, 202);
    assert_eq!(
        next_event(&mut seven_a).await,
        ("standup".to_owned(), json!([team, {"at": 9}]))
    );
    assert_eq!(
        next_event(&mut seven_b).await,
        ("standup".to_owned(), json!([{"at": 9}]))
    );

    // Out again: user 9 hears them leave, and they hear nothing more of the channel.
    assert_eq!(user_channel(&one, "DELETE", 7, team).await.status, 202);
    let leaving = nine.expect_event("presence:leaving", TIMEOUT).await;
    assert_eq!(leaving[1]["user_id"], "7", "{leaving:?}");
    one.until_subscribed(API_KEY, team, 1).await;
    let after = json!({"channel": team, "event": "after", "data": 1});
    assert_eq!(api_broadcast(&one, after).await.status, 202);
    let marker = json!({"channel": "private-user.7", "event": "marker", "data": 2});
    assert_eq!(api_broadcast(&one, marker).await.status, 202);
    for agent in [&mut seven_a, &mut seven_b] {
        assert_eq!(
            next_event(agent).await.0,
            "marker",
            "the channel's event never came"
        );
    }
    let (event, _) = next_event(&mut nine).await;
    assert_eq!(event, "standup");
    assert_eq!(next_event(&mut nine).await.0, "after");

    // Names the API refuses: the node's own channels, the namespace rooms, junk.
    for bad in ["switchboard.control", "notifications|admin", "a%20b"] {
        let refused = user_channel(&one, "POST", 7, bad).await;
        assert_eq!(refused.status, 400, "{bad}: {}", refused.text());
    }
}
