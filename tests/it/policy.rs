//! The channel authorization policy through a real node and a real socket.io-client: the
//! `callback` rule against a stand-in for Laravel's `/broadcasting/auth` (allow, deny, slow,
//! failing, down, cached), and the `self`, `role` and `claim` rules from a policy file.

use std::time::Duration;

use crate::support::*;
use serde_json::{Value, json};

const SECRET: &str = "switchboard-dev-secret";
const API_KEY: &str = "test-key";
/// Longer than the nodes' `--auth-timeout` below, so `/slow` always times out.
const SLOW: Duration = Duration::from_secs(3);

/// A stand-in for Laravel's `/broadcasting/auth`, answering by path: `/allow` (200 with a
/// presence `channel_data` as a JSON string, as Pusher-style back-ends send it), `/deny`
/// (403), `/error` (500) and `/slow` (200 after [`SLOW`]).
async fn auth_server() -> AppServer {
    AppServer::start(|request: Received| -> Answer {
        Box::pin(async move {
            let channel = request.body["channel_name"].as_str().unwrap_or_default();
            match request.path.as_str() {
                "/allow" if channel.starts_with("presence-") => (
                    200,
                    json!({"channel_data": json!({"user_id": 7, "user_info": {"name": "Ann"}}).to_string()})
                        .to_string(),
                ),
                "/allow" => (200, "{}".to_owned()),
                "/deny" => (403, "{\"message\":\"This action is unauthorized.\"}".to_owned()),
                "/slow" => {
                    tokio::time::sleep(SLOW).await;
                    (200, "{}".to_owned())
                }
                _ => (500, "{\"message\":\"Server Error\"}".to_owned()),
            }
        })
    })
    .await
}

/// Requests the stand-in received for `channel` so far.
fn requests_for(server: &AppServer, channel: &str) -> Vec<Received> {
    server
        .received()
        .into_iter()
        .filter(|r| r.body["channel_name"] == channel)
        .collect()
}

fn token(claims: Value) -> String {
    jwt_hs256(SECRET, claims)
}

/// Writes `policy` to a file and starts a node with it (and `extra` flags).
async fn node_with_policy(dir: &TempDir, policy: &str, extra: &[&str]) -> Node {
    let path = dir.path().join("policy.toml");
    std::fs::write(&path, policy).expect("write the policy file");
    let path = path.to_string_lossy().into_owned();
    let mut args = vec!["--dev", "--api-keys", API_KEY, "--policy-file", &path];
    args.extend_from_slice(extra);
    Node::spawn(&args, &[]).await
}

/// A connected agent (websocket only) for `claims`, past its automatic user channel; also
/// returns its socket id.
async fn connect(node: &Node, claims: Value) -> (Agent, String) {
    let mut agent = Agent::spawn(json!({
        "url": node.url(),
        "auth": {"token": token(claims)},
        "transports": ["websocket"],
    }));
    let id = agent.expect_connect(TIMEOUT).await;
    agent.expect_event("subscribed", TIMEOUT).await;
    (agent, id)
}

/// Subscribes with an ack; returns the answer object.
async fn subscribe(agent: &mut Agent, payload: Value) -> Value {
    let reply = agent.emit_ack("subscribe", json!([payload])).await;
    reply[0].clone()
}

/// `Ok(())` when subscribed, else `error: details` of the refusal.
async fn try_join(agent: &mut Agent, channel: &str) -> Result<(), String> {
    let answer = subscribe(agent, json!({"channel": channel})).await;
    match answer["error"].as_str() {
        Some(error) => Err(format!(
            "{error}: {}",
            answer["details"].as_str().unwrap_or_default()
        )),
        None if answer["status"] == "success" => Ok(()),
        None => panic!("unexpected answer {answer}"),
    }
}

async fn broadcast(node: &Node, channel: &str, event: &str) {
    let response = http(
        "POST",
        &format!("{}/api/broadcast", node.url()),
        &[
            ("authorization", &format!("Bearer {API_KEY}")),
            ("content-type", "application/json"),
        ],
        json!({"channel": channel, "event": event, "data": {}})
            .to_string()
            .as_bytes(),
    )
    .await;
    assert_eq!(response.status, 202, "{}", response.text());
}

fn callback_rule(pattern: &str, url: &str) -> String {
    format!("[[channel]]\npattern = \"{pattern}\"\nallow = \"callback\"\nurl = \"{url}\"\n\n")
}

#[tokio::test]
async fn callback_allows_with_the_clients_headers() {
    let server = auth_server().await;
    let dir = TempDir::new("policy");
    let policy = callback_rule("private-orders.{id}", &server.url("/allow"))
        + &callback_rule("presence-room.{id}", &server.url("/allow"));
    let node = node_with_policy(&dir, &policy, &["--auth-forward-headers", "X-Tenant"]).await;
    let (mut agent, socket_id) = connect(&node, json!({"sub": 7})).await;

    // What Laravel Echo sends: the channel and its `auth.headers`, plus headers that would
    // let the client tell the application where it connects from.
    let answer = subscribe(
        &mut agent,
        json!({"channel": "private-orders.5", "auth": {"headers": {
            "Authorization": "Bearer app-session-token",
            "X-CSRF-TOKEN": "csrf-1",
            "Host": "evil.example",
            "Connection": "upgrade",
            "X-Ignored-Number": 5,
            "X-Forwarded-For": "10.9.8.7",
            "X-Real-IP": "10.9.8.7",
            "X-Custom": "c",
            "X-Tenant": "acme",
        }}}),
    )
    .await;
    assert_eq!(
        answer,
        json!({"channel": "private-orders.5", "status": "success"})
    );
    let requests = requests_for(&server, "private-orders.5");
    assert_eq!(requests.len(), 1, "{requests:?}");
    let request = &requests[0];
    assert_eq!(
        (request.method.as_str(), request.path.as_str()),
        ("POST", "/allow")
    );
    assert_eq!(
        request.body,
        json!({"channel_name": "private-orders.5", "socket_id": socket_id})
    );
    assert_eq!(
        request.header("authorization"),
        Some("Bearer app-session-token")
    );
    assert_eq!(request.header("x-csrf-token"), Some("csrf-1"));
    assert_eq!(request.header("content-type"), Some("application/json"));
    assert_eq!(request.header("accept"), Some("application/json"));
    assert_ne!(request.header("host"), Some("evil.example"));
    assert_ne!(request.header("connection"), Some("upgrade"));
    assert_eq!(request.header("x-ignored-number"), None);
    assert_eq!(request.header("x-real-ip"), None);
    assert_eq!(request.header("x-custom"), None);
    assert_eq!(request.header("x-forwarded-for"), None);
    assert_eq!(
        request.header("x-tenant"),
        Some("acme"),
        "the operator's addition"
    );

    // Subscribed for real: a broadcast arrives.
    broadcast(&node, "private-orders.5", "OrderShipped").await;
    agent.expect_event("OrderShipped", TIMEOUT).await;

    // A presence channel: the answer carries channel_data, which becomes the member.
    assert_eq!(try_join(&mut agent, "presence-room.1").await, Ok(()));
    assert_eq!(requests_for(&server, "presence-room.1").len(), 1);
    let here = agent.expect_event("presence:subscribed", TIMEOUT).await;
    assert_eq!(
        here,
        [
            json!("presence-room.1"),
            json!([{"user_id": 7, "user_info": {"name": "Ann"}}])
        ]
    );

    let logs = node.logs();
    assert!(
        !logs.contains("app-session-token") && !logs.contains("csrf-1"),
        "no forwarded header in the logs:\n{logs}"
    );
}

#[tokio::test]
async fn callback_denies_on_4xx() {
    let server = auth_server().await;
    let dir = TempDir::new("policy");
    let node = node_with_policy(&dir, &callback_rule("private-*", &server.url("/deny")), &[]).await;
    let (mut agent, _) = connect(&node, json!({"sub": 7})).await;
    assert_eq!(
        try_join(&mut agent, "private-orders.5").await,
        Err("Unauthorized: forbidden".into())
    );
    // The built-in rule comes after the file's: this file sends the user channel to the callback too.
    assert_eq!(
        try_join(&mut agent, "private-user.7").await,
        Err("Unauthorized: forbidden".into())
    );
    assert_eq!(requests_for(&server, "private-orders.5").len(), 1);
}

#[tokio::test]
async fn callback_outages_refuse_as_unavailable() {
    let server = auth_server().await;
    let dir = TempDir::new("policy");
    // A free port was bound and closed again: nothing listens there.
    let down = format!("http://127.0.0.1:{}/broadcasting/auth", free_port());
    let policy = callback_rule("private-slow.*", &server.url("/slow"))
        + &callback_rule("private-error.*", &server.url("/error"))
        + &callback_rule("private-down.*", &down);
    let node = node_with_policy(&dir, &policy, &["--auth-timeout", "300ms"]).await;
    let (mut agent, _) = connect(&node, json!({"sub": 7})).await;

    for (channel, error) in [
        (
            "private-slow.1",
            "Internal error: authorization unavailable: auth callback timed out",
        ),
        (
            "private-error.1",
            "Internal error: authorization unavailable: auth callback answered 500",
        ),
        (
            "private-down.1",
            "Internal error: authorization unavailable: auth callback unreachable",
        ),
    ] {
        assert_eq!(
            try_join(&mut agent, channel).await,
            Err(error.into()),
            "{channel}"
        );
        broadcast(&node, channel, "Leaked").await;
    }
    // Absence by order: the user's own channel hears a later broadcast, and nothing before it.
    broadcast(&node, "private-user.7", "After").await;
    agent.expect_event("After", TIMEOUT).await;
    agent.assert_no_event("Leaked", Duration::ZERO).await;

    // Outages are not cached: the next subscribe asks again.
    assert!(try_join(&mut agent, "private-error.1").await.is_err());
    assert_eq!(requests_for(&server, "private-error.1").len(), 2);
    assert!(node.logs().contains("auth callback timed out"));
}

#[tokio::test]
async fn callback_answers_are_cached_per_user_and_channel() {
    let server = auth_server().await;
    let dir = TempDir::new("policy");
    let policy = callback_rule("private-orders.*", &server.url("/allow"))
        + &callback_rule("private-secret.*", &server.url("/deny"));
    let node = node_with_policy(&dir, &policy, &[]).await;
    let (mut seven, _) = connect(&node, json!({"sub": 7})).await;

    for _ in 0..2 {
        assert_eq!(try_join(&mut seven, "private-orders.1").await, Ok(()));
        seven
            .emit_ack("unsubscribe", json!([{"channel": "private-orders.1"}]))
            .await;
        assert_eq!(
            try_join(&mut seven, "private-secret.1").await,
            Err("Unauthorized: forbidden".into())
        );
    }
    assert_eq!(requests_for(&server, "private-orders.1").len(), 1);
    assert_eq!(requests_for(&server, "private-secret.1").len(), 1);

    // Another user is asked about on their own.
    let (mut eight, _) = connect(&node, json!({"sub": 8})).await;
    assert_eq!(try_join(&mut eight, "private-orders.1").await, Ok(()));
    assert_eq!(requests_for(&server, "private-orders.1").len(), 2);

    // With the cache off, every subscribe asks.
    let uncached = node_with_policy(&dir, &policy, &["--auth-cache-ttl", "0s"]).await;
    let (mut agent, _) = connect(&uncached, json!({"sub": 9})).await;
    assert_eq!(try_join(&mut agent, "private-orders.9").await, Ok(()));
    assert_eq!(try_join(&mut agent, "private-orders.9").await, Ok(()));
    assert_eq!(requests_for(&server, "private-orders.9").len(), 2);
}

/// One user subscribing to junk channel names fills only their own share of the cache: another
/// user's answer is still cached (the application is asked once).
#[tokio::test]
async fn one_users_junk_does_not_stop_another_users_caching() {
    let server = auth_server().await;
    let dir = TempDir::new("policy");
    let policy = callback_rule("private-orders.*", &server.url("/allow"))
        + &callback_rule("private-junk.*", &server.url("/deny"));
    // 40 answers in all, so at most 10 per user.
    let node = node_with_policy(&dir, &policy, &["--auth-cache-size", "40"]).await;
    let (mut junk, _) = connect(&node, json!({"sub": 6})).await;
    for i in 0..50 {
        let channel = format!("private-junk.{i}");
        assert_eq!(
            try_join(&mut junk, &channel).await,
            Err("Unauthorized: forbidden".into())
        );
    }
    assert_eq!(requests_for(&server, "private-junk.0").len(), 1);

    let (mut seven, _) = connect(&node, json!({"sub": 7})).await;
    for _ in 0..2 {
        assert_eq!(try_join(&mut seven, "private-orders.1").await, Ok(()));
        seven
            .emit_ack("unsubscribe", json!([{"channel": "private-orders.1"}]))
            .await;
    }
    assert_eq!(
        requests_for(&server, "private-orders.1").len(),
        1,
        "the second subscribe was answered from the cache"
    );
}

#[tokio::test]
async fn self_role_and_claim_rules() {
    let dir = TempDir::new("policy");
    let policy = r#"
        [[channel]]
        pattern = "private-inbox.{user}"
        allow = "self"

        [[channel]]
        pattern = "presence-thread.{id}"
        allow = "role"
        min_role = "member"

        [[channel]]
        pattern = "private-staff.*"
        allow = "role"
        min_role = "moderator"

        [[channel]]
        pattern = "admin.*"
        allow = "claim"
    "#;
    let node = node_with_policy(&dir, policy, &[]).await;
    let (mut boss, _) = connect(
        &node,
        json!({"sub": 1, "role": "SUPER-ADMIN", "channels": ["admin.reports", "admin.logs.*"]}),
    )
    .await;
    let (mut member, _) = connect(&node, json!({"sub": 2, "role": "member"})).await;
    let (mut nobody, _) = connect(&node, json!({"sub": 3})).await;

    let forbidden = || Err::<(), String>("Unauthorized: forbidden".into());
    assert_eq!(try_join(&mut boss, "private-inbox.1").await, Ok(()));
    assert_eq!(try_join(&mut boss, "private-inbox.2").await, forbidden());
    assert_eq!(try_join(&mut boss, "presence-thread.9").await, Ok(()));
    assert_eq!(try_join(&mut boss, "private-staff.ops").await, Ok(()));
    assert_eq!(try_join(&mut boss, "admin.reports").await, Ok(()));
    assert_eq!(try_join(&mut boss, "admin.logs.today").await, Ok(()));
    assert_eq!(try_join(&mut boss, "admin.billing").await, forbidden());

    assert_eq!(try_join(&mut member, "presence-thread.9").await, Ok(()));
    assert_eq!(
        try_join(&mut member, "private-staff.ops").await,
        forbidden()
    );
    assert_eq!(try_join(&mut member, "admin.reports").await, forbidden());

    assert_eq!(
        try_join(&mut nobody, "presence-thread.9").await,
        forbidden()
    );
    // Unmatched: public open, private refused; the built-in user channel rule still applies.
    assert_eq!(try_join(&mut nobody, "news").await, Ok(()));
    assert_eq!(try_join(&mut nobody, "private-other.1").await, forbidden());
    assert_eq!(try_join(&mut nobody, "private-user.3").await, Ok(()));
}

#[tokio::test]
async fn sql_rule_with_the_database_down_starts_and_refuses_as_unavailable() {
    let dir = TempDir::new("policy");
    let policy = "[[channel]]\npattern = \"forum.{id}\"\nallow = \"sql\"\nquery = \"SELECT 1 FROM forums WHERE id = :id\"\n";
    // Nothing listens on a free port: the database is down from the start.
    let url = format!("mysql://app:s3cret@127.0.0.1:{}/forum", free_port());
    let node = node_with_policy(
        &dir,
        policy,
        &["--database-url", &url, "--auth-timeout", "1s"],
    )
    .await;
    let (mut agent, _) = connect(&node, json!({"sub": 1})).await;
    assert_eq!(
        try_join(&mut agent, "forum.1").await,
        Err("Internal error: authorization unavailable: database error".into())
    );
    assert!(!node.logs().contains("s3cret"));
}

#[tokio::test]
async fn bad_policies_stop_the_node_naming_the_file() {
    let dir = TempDir::new("policy");
    let path = dir.path().join("policy.toml");
    let path_arg = path.to_string_lossy().into_owned();
    let config = dir.path().join("switchboard.toml");
    let config_arg = config.to_string_lossy().into_owned();
    std::fs::write(
        &config,
        "dev = true\n[[channel]]\npattern = \"a.*\"\nallow = \"open\"\n",
    )
    .expect("write");
    for (policy, args, expected) in [
        (
            "[[channel]]\npattern = \"a.{x}.{y}\"\nallow = \"open\"\n",
            vec!["--dev", "--policy-file", &path_arg],
            "[[channel]] #1 `a.{x}.{y}`: a pattern has at most one {placeholder}",
        ),
        (
            "[[channel]]\npattern = \"forum.{id}\"\nallow = \"sql\"\nquery = \"SELECT 1\"\n",
            vec!["--dev", "--policy-file", &path_arg],
            "SWITCHBOARD_DATABASE_URL",
        ),
        (
            "default = \"closed\"\n",
            vec!["--dev", "--policy-file", &path_arg],
            "`default = \"closed\"`: expected \"conventional\" or \"deny\"",
        ),
        (
            "",
            vec!["--config", &config_arg, "--policy-file", &path_arg],
            "switchboard.toml",
        ),
    ] {
        std::fs::write(&path, policy).expect("write");
        let (status, output) = Node::spawn_expect_failure(&args, &[]).await;
        assert_eq!(status.code(), Some(2), "{output}");
        let line = output.trim();
        assert_eq!(line.lines().count(), 1, "one line:\n{output}");
        assert!(
            line.starts_with("switchboard: invalid configuration: SWITCHBOARD_POLICY_FILE: "),
            "{line}"
        );
        assert!(line.contains(&path_arg), "names the file: {line}");
        assert!(line.contains(expected), "{expected:?} in {line}");
    }
}
