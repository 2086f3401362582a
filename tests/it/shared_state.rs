//! State the nodes share through Redis: presence members, per-user connection limits,
//! channel and user counts across the cluster, and what happens when a node dies (SIGKILL).
//! Also the per-address and per-socket rate limits, which are per node.

use std::time::Duration;

use crate::support::*;
use serde_json::{Value, json};

const SECRET: &str = "switchboard-dev-secret";
const API_KEY: &str = "test-key";

/// Presence channels open to every user, so these tests exercise presence, not the policy.
const POLICY: &str = r#"
[[channel]]
pattern = "presence-chat.*"
allow = "open"
"#;

fn token(sub: &str, name: &str) -> String {
    jwt_hs256(SECRET, json!({"sub": sub, "name": name}))
}

/// A node sharing `redis`, with extra settings.
async fn node(redis: &RedisServer, id: &str, extra: &[(&str, &str)]) -> Node {
    let url = redis.url();
    let (_dir, policy) = policy_file(POLICY);
    let mut envs = vec![
        ("SWITCHBOARD_NODE_ID", id),
        (
            "SWITCHBOARD_POLICY_FILE",
            policy.to_str().expect("utf-8 temp path"),
        ),
    ];
    envs.extend_from_slice(extra);
    let node = Node::spawn(
        &["--dev", "--api-keys", API_KEY, "--redis-url", &url],
        &envs,
    )
    .await;
    node.wait_ready(true).await;
    node
}

async fn client(node: &Node, user: &str) -> Agent {
    Agent::connected(&node.url(), &token(user, &format!("User {user}"))).await
}

async fn api_get(node: &Node, path: &str) -> Value {
    let response = http(
        "GET",
        &format!("{}{path}", node.url()),
        &[("authorization", &format!("Bearer {API_KEY}"))],
        b"",
    )
    .await;
    assert_eq!(response.status, 200, "GET {path}: {}", response.text());
    response.json()
}

/// Polls an API path until `check` accepts its answer (counts follow subscribes within
/// milliseconds, but asynchronously).
async fn api_until(node: &Node, path: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let body = api_get(node, path).await;
        if check(&body) {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "GET {path} never matched; last answer {body}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn member(user: &str) -> Value {
    json!({"user_id": user, "user_info": {"name": format!("User {user}")}})
}

/// `presence:subscribed` args are (channel, members); members sorted by user for comparison.
fn members_of(args: &[Value]) -> Vec<Value> {
    let mut members = args[1].as_array().cloned().unwrap_or_default();
    members.sort_by_key(|m| m["user_id"].to_string());
    members
}

async fn subscribe(agent: &mut Agent, channel: &str) -> Value {
    agent
        .emit_ack("subscribe", json!([{"channel": channel}]))
        .await
}

#[tokio::test]
async fn presence_is_shared_across_nodes_one_member_per_user() {
    let redis = RedisServer::start().await;
    let one = node(&redis, "one", &[]).await;
    let two = node(&redis, "two", &[]).await;
    let channel = "presence-chat.1";

    let mut alice = client(&one, "alice").await;
    let answer = subscribe(&mut alice, channel).await;
    assert_eq!(answer[0]["status"], "success", "{answer}");
    let here = alice.expect_event("presence:subscribed", TIMEOUT).await;
    assert_eq!(here[0], channel);
    assert_eq!(members_of(&here), [member("alice")]);

    // Bob on the other node: he sees both, Alice hears him join.
    let mut bob = client(&two, "bob").await;
    subscribe(&mut bob, channel).await;
    let here = bob.expect_event("presence:subscribed", TIMEOUT).await;
    assert_eq!(members_of(&here), [member("alice"), member("bob")]);
    let joining = alice.expect_event("presence:joining", TIMEOUT).await;
    assert_eq!(joining, [json!(channel), member("bob")]);
    // Alice whispers after hearing Bob join: Redis delivers in order, so Bob would have
    // heard his own join before her whisper.
    let sent = alice
        .emit_ack(
            "client event",
            json!([{"channel": channel, "event": "client-hi", "data": 1}]),
        )
        .await;
    assert_eq!(sent, json!([{"ok": true}]));
    bob.expect_event("client-hi", TIMEOUT).await;
    bob.assert_no_event("presence:joining", Duration::ZERO)
        .await;

    // Bob's second tab, on node one: still one member, nobody hears a join.
    let mut bob_tab = client(&one, "bob").await;
    subscribe(&mut bob_tab, channel).await;
    let here = bob_tab.expect_event("presence:subscribed", TIMEOUT).await;
    assert_eq!(members_of(&here), [member("alice"), member("bob")]);
    let info = api_get(&two, &format!("/api/channels/{channel}")).await;
    assert_eq!(info["user_count"], 2, "{info}");
    let users = api_get(&one, &format!("/api/channels/{channel}/users")).await;
    assert_eq!(users["users"].as_array().map(Vec::len), Some(2), "{users}");

    // Closing one tab is not leaving; closing the last one is, on every node.
    bob.exit().await;
    // Node two has handled the close once the cluster counts one socket of Bob's.
    api_until(&one, "/api/users/bob", |u| u["connections"] == 1).await;
    bob_tab
        .emit_ack("unsubscribe", json!([{"channel": channel}]))
        .await;
    let leaving = alice.expect_event("presence:leaving", TIMEOUT).await;
    assert_eq!(leaving, [json!(channel), member("bob")]);
    // Exactly one leave: Carol's join comes after it, and no second leave before that.
    let mut carol = client(&two, "carol").await;
    subscribe(&mut carol, channel).await;
    alice.expect_event("presence:joining", TIMEOUT).await;
    alice
        .assert_no_event("presence:leaving", Duration::ZERO)
        .await;
    api_until(&two, &format!("/api/channels/{channel}"), |info| {
        info["user_count"] == 2
    })
    .await;
}

#[tokio::test]
async fn a_killed_node_leaves_presence_and_frees_its_slots() {
    let redis = RedisServer::start().await;
    // A short TTL, so the dead node is noticed quickly (but not so short that a live node
    // delayed by a busy machine looks dead).
    let limit = [
        ("SWITCHBOARD_MAX_CONNECTIONS_PER_USER", "1"),
        ("SWITCHBOARD_PRESENCE_TTL", "3s"),
    ];
    let one = node(&redis, "one", &limit).await;
    let mut two = node(&redis, "two", &limit).await;
    let channel = "presence-chat.2";

    let mut alice = client(&one, "alice").await;
    subscribe(&mut alice, channel).await;
    alice.expect_event("presence:subscribed", TIMEOUT).await;
    let mut carol = client(&two, "carol").await;
    subscribe(&mut carol, channel).await;
    alice.expect_event("presence:joining", TIMEOUT).await;

    // Carol's one slot is taken on node two: node one refuses her.
    let mut again = Agent::spawn(json!({
        "url": one.url(),
        "auth": {"token": token("carol", "User carol")},
        "transports": ["websocket"],
    }));
    assert_eq!(again.expect_refused(TIMEOUT).await, "too many connections");

    two.kill().await;
    let killed = tokio::time::Instant::now();
    let leaving = alice
        .expect_event("presence:leaving", Duration::from_secs(6))
        .await;
    assert_eq!(leaving, [json!(channel), member("carol")]);
    // Within the TTL of 3 s, plus the survivor's heartbeat (4 per TTL) that notices it and
    // room for a busy machine.
    assert!(
        killed.elapsed() < Duration::from_millis(3000 + 750 + 750),
        "leaving came {:?} after the kill",
        killed.elapsed()
    );
    drop(carol);
    // Her slot came back with the dead node.
    let _carol_again = client(&one, "carol").await;
    let user = api_get(&one, "/api/users/carol").await;
    assert_eq!(user["connections"], 1, "{user}");
}

#[tokio::test]
async fn per_user_limit_holds_under_racing_connects_on_two_nodes() {
    let redis = RedisServer::start().await;
    let limit = [("SWITCHBOARD_MAX_CONNECTIONS_PER_USER", "3")];
    let one = node(&redis, "one", &limit).await;
    let two = node(&redis, "two", &limit).await;

    let mut agents: Vec<Agent> = (0..8)
        .map(|i| {
            let target = if i % 2 == 0 { &one } else { &two };
            Agent::spawn(json!({
                "url": target.url(),
                "auth": {"token": token("dave", "Dave")},
                "transports": ["websocket"],
            }))
        })
        .collect();
    let mut connected = Vec::new();
    let mut refused = 0;
    for (index, agent) in agents.iter_mut().enumerate() {
        let line = agent
            .wait_for(
                |l| l["type"] == "connect" || l["type"] == "connect_error",
                TIMEOUT,
            )
            .await;
        if line["type"] == "connect" {
            connected.push(index);
        } else {
            assert_eq!(
                (&line["message"], &line["data"]["reason"]),
                (
                    &json!("Authentication failed"),
                    &json!("too many connections")
                ),
                "{line}"
            );
            refused += 1;
        }
    }
    assert_eq!(connected.len(), 3, "admitted {connected:?}");
    assert_eq!(refused, 5);
    let user = api_get(&two, "/api/users/dave").await;
    assert_eq!(
        user,
        json!({"user_id": "dave", "online": true, "connections": 3})
    );

    // A slot freed on one node can be taken on the other.
    let first = connected[0];
    agents[first].exit().await;
    api_until(&one, "/api/users/dave", |u| u["connections"] == 2).await;
    let other = if first % 2 == 0 { &two } else { &one };
    client(other, "dave").await;
    let offline = api_get(&one, "/api/users/nobody").await;
    assert_eq!(offline["online"], false);
}

#[tokio::test]
async fn channel_counts_are_cluster_wide() {
    let redis = RedisServer::start().await;
    let one = node(&redis, "one", &[]).await;
    let two = node(&redis, "two", &[]).await;

    let mut a = client(&one, "a").await;
    let mut b = client(&two, "b").await;
    let mut c = client(&two, "c").await;
    for agent in [&mut a, &mut b, &mut c] {
        subscribe(agent, "news").await;
    }
    let info = api_until(&one, "/api/channels/news", |i| i["subscription_count"] == 3).await;
    assert_eq!(info["occupied"], true);
    assert!(info.get("user_count").is_none(), "{info}");
    let all = api_until(&two, "/api/channels", |all| {
        all["channels"]["news"]["subscription_count"] == 3
    })
    .await;
    // Every user's own channel is there too.
    assert_eq!(all["channels"]["private-user.b"]["subscription_count"], 1);
    let filtered = api_get(&two, "/api/channels?prefix=private-").await;
    assert!(filtered["channels"].get("news").is_none(), "{filtered}");

    c.exit().await;
    a.emit_ack("unsubscribe", json!([{"channel": "news"}]))
        .await;
    let info = api_until(&two, "/api/channels/news", |i| i["subscription_count"] == 1).await;
    assert_eq!(info["occupied"], true);
    let empty = api_get(&one, "/api/channels/nothing-here").await;
    assert_eq!(
        empty,
        json!({"channel": "nothing-here", "occupied": false, "subscription_count": 0})
    );

    // The API needs its key and checks names.
    let response = http("GET", &format!("{}/api/channels", one.url()), &[], b"").await;
    assert_eq!(response.status, 401);
    let response = http(
        "GET",
        &format!("{}/api/channels/news/users", one.url()),
        &[("authorization", &format!("Bearer {API_KEY}"))],
        b"",
    )
    .await;
    assert_eq!(response.status, 400, "{}", response.text());
}

#[tokio::test]
async fn counts_come_back_after_redis_loses_everything() {
    let mut redis = RedisServer::start().await;
    let one = node(&redis, "one", &[]).await;
    let mut a = client(&one, "a").await;
    subscribe(&mut a, "news").await;
    api_until(&one, "/api/channels/news", |i| i["subscription_count"] == 1).await;

    // While Redis is down, the per-user limit cannot be checked: new sockets are refused
    // with a clear error (a configured limit is a guarantee), the connected ones stay.
    redis.kill().await;
    let mut refused = Agent::spawn(json!({
        "url": one.url(),
        "auth": {"token": token("b", "User b")},
        "transports": ["websocket"],
    }));
    assert_eq!(
        refused.expect_refused(TIMEOUT).await,
        "service unavailable, try again"
    );
    // Cluster-wide answers cannot be given meanwhile, and the API says so.
    let response = http(
        "GET",
        &format!("{}/api/channels", one.url()),
        &[("authorization", &format!("Bearer {API_KEY}"))],
        b"",
    )
    .await;
    assert_eq!(response.status, 503, "{}", response.text());
    assert_eq!(response.json()["error"]["code"], "state_unavailable");
    // The throwaway Redis keeps nothing on disk: a restart is an empty Redis.
    redis.restart().await;
    one.wait_ready(true).await;
    api_until(&one, "/api/channels/news", |i| i["subscription_count"] == 1).await;
    api_until(&one, "/api/users/a", |u| u["connections"] == 1).await;
    let _b = client(&one, "b").await;
    api_until(&one, "/api/users/b", |u| u["connections"] == 1).await;
}

/// Opens an Engine.IO polling handshake, as the first request of every Socket.IO client.
async fn handshake(node: &Node, headers: &[(&str, &str)]) -> u16 {
    http(
        "GET",
        &format!("{}/socket.io/?EIO=4&transport=polling", node.url()),
        headers,
        b"",
    )
    .await
    .status
}

#[tokio::test]
async fn connection_attempts_are_rate_limited_per_client_address() {
    let envs = [
        ("SWITCHBOARD_CONNECT_RATE_PER_IP", "0.5"),
        ("SWITCHBOARD_CONNECT_BURST_PER_IP", "2"),
        ("SWITCHBOARD_TRUSTED_PROXIES", "127.0.0.1"),
    ];
    let node = Node::spawn(&["--dev"], &envs).await;
    // The proxy (127.0.0.1, trusted) forwards two different clients.
    let first = [("x-forwarded-for", "203.0.113.1")];
    let second = [("x-forwarded-for", "203.0.113.2")];
    assert_eq!(handshake(&node, &first).await, 200);
    assert_eq!(handshake(&node, &first).await, 200);
    assert_eq!(handshake(&node, &first).await, 429);
    assert_eq!(handshake(&node, &second).await, 200);

    // From an untrusted peer the header is ignored: 127.0.0.2 is limited as itself.
    let node = Node::spawn(&["--dev"], &envs).await;
    let url = format!("{}/socket.io/?EIO=4&transport=polling", node.url());
    for (header, expected) in [
        ("198.51.100.1", 200),
        ("198.51.100.2", 200),
        ("198.51.100.3", 429),
    ] {
        let response = http_from(
            "127.0.0.2",
            "GET",
            &url,
            &[("x-forwarded-for", header)],
            b"",
        )
        .await;
        assert_eq!(response.status, expected, "{}", response.text());
    }
    let metrics = http("GET", &format!("{}/metrics", node.url()), &[], b"").await;
    let text = metrics.text();
    let refused: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix(r#"switchboard_rate_limited_total{limit="connect_ip"} "#))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no connect_ip refusal count: {text}"));
    assert!(refused >= 1.0, "refusals are counted: {refused}");
}

#[tokio::test]
async fn subscribe_requests_are_rate_limited_per_socket() {
    let node = Node::spawn(
        &["--dev"],
        &[
            ("SWITCHBOARD_SUBSCRIBE_RATE", "1"),
            ("SWITCHBOARD_SUBSCRIBE_BURST", "3"),
        ],
    )
    .await;
    let mut agent = client(&node, "e").await;
    for name in ["a", "b", "c"] {
        assert_eq!(subscribe(&mut agent, name).await[0]["status"], "success");
    }
    let refused = subscribe(&mut agent, "d").await;
    assert_eq!(
        (&refused[0]["error"], &refused[0]["details"]),
        (
            &json!("Unauthorized"),
            &json!("too many subscribe requests, slow down")
        ),
        "{refused}"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(subscribe(&mut agent, "d").await[0]["status"], "success");
}
