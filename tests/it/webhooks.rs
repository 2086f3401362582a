//! Webhooks with a stand-in application: signed batches, each event once per cluster while
//! subscribers come and go on two nodes and one node is killed, retries after failures, and
//! the last events sent at shutdown.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::*;
use serde_json::{Value, json};

const SECRET: &str = "switchboard-dev-secret";
const HOOK_SECRET: &str = "webhook-secret";

/// Presence channels open to every user.
const POLICY: &str = r#"
[[channel]]
pattern = "presence-chat.*"
allow = "open"
"#;

/// The application's webhook endpoint: refuses bad signatures, answers 503 to the first
/// `failures` requests, and keeps the events of the batches it accepted.
struct Hooks {
    server: AppServer,
    accepted: Arc<Mutex<Vec<Value>>>,
}

impl Hooks {
    async fn start(failures: usize) -> Hooks {
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let failed = Arc::new(AtomicUsize::new(0));
        let log = accepted.clone();
        let server = AppServer::start(move |request: Received| -> Answer {
            let log = log.clone();
            let failed = failed.clone();
            Box::pin(async move {
                if !request.signed_with(HOOK_SECRET) {
                    return (401, r#"{"error":"bad signature"}"#.to_owned());
                }
                if failed.fetch_add(1, Ordering::SeqCst) < failures {
                    return (503, "{}".to_owned());
                }
                let events = request.body["events"].as_array().cloned();
                log.lock().expect("lock").extend(events.unwrap_or_default());
                (200, "{}".to_owned())
            })
        })
        .await;
        Hooks { server, accepted }
    }

    fn url(&self) -> String {
        self.server.url("/hooks")
    }

    fn events(&self) -> Vec<Value> {
        self.accepted.lock().expect("lock").clone()
    }

    /// Accepted events named `name` whose `key` field is `value`.
    fn count(&self, name: &str, key: &str, value: &str) -> usize {
        self.events()
            .iter()
            .filter(|e| e["name"] == name && e[key] == value)
            .count()
    }

    /// Waits until `check` holds for the accepted events.
    async fn until(&self, what: &str, check: impl Fn(&Hooks) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
        while !check(self) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "never: {what}; events so far: {:#?}",
                self.events()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

fn token(sub: &str) -> String {
    jwt_hs256(SECRET, json!({"sub": sub, "name": format!("User {sub}")}))
}

async fn client(node: &Node, user: &str) -> Agent {
    Agent::connected(&node.url(), &token(user)).await
}

async fn node(hooks: &Hooks, redis: Option<&RedisServer>, extra: &[(&str, &str)]) -> Node {
    let (_dir, policy) = policy_file(POLICY);
    let url = hooks.url();
    let mut envs = vec![
        ("SWITCHBOARD_WEBHOOK_URL", url.as_str()),
        ("SWITCHBOARD_BACKEND_SECRET", HOOK_SECRET),
        (
            "SWITCHBOARD_POLICY_FILE",
            policy.to_str().expect("utf-8 temp path"),
        ),
    ];
    envs.extend_from_slice(extra);
    let redis_url = redis.map(RedisServer::url);
    let mut args = vec!["--dev"];
    if let Some(url) = &redis_url {
        args.extend(["--redis-url", url]);
    }
    let node = Node::spawn(&args, &envs).await;
    node.wait_ready(true).await;
    node
}

#[tokio::test]
async fn each_event_is_sent_once_per_cluster() {
    let redis = RedisServer::start().await;
    let hooks = Hooks::start(0).await;
    // A short TTL so the killed node is swept quickly; small batches to see them split.
    let settings = [
        ("SWITCHBOARD_PRESENCE_TTL", "3s"),
        ("SWITCHBOARD_WEBHOOK_BATCH_MAX", "3"),
    ];
    let one = node(
        &hooks,
        Some(&redis),
        &[&settings[..], &[("SWITCHBOARD_NODE_ID", "one")]].concat(),
    )
    .await;
    let mut two = node(
        &hooks,
        Some(&redis),
        &[&settings[..], &[("SWITCHBOARD_NODE_ID", "two")]].concat(),
    )
    .await;
    let room = "presence-chat.1";

    let mut alice = client(&one, "alice").await;
    alice.subscribe_ok(room).await;
    let mut bob = client(&two, "bob").await;
    bob.subscribe_ok(room).await;
    let mut bob_tab = client(&one, "bob").await;
    bob_tab.subscribe_ok(room).await;
    hooks
        .until("three sockets, two members, one occupied room", |h| {
            h.count("connected", "user_id", "alice") == 1
                && h.count("connected", "user_id", "bob") == 2
                && h.count("member_added", "channel", room) == 2
                && h.count("channel_occupied", "channel", room) == 1
                && h.count("channel_occupied", "channel", "private-user.bob") == 1
        })
        .await;
    let added: Vec<Value> = hooks
        .events()
        .into_iter()
        .filter(|e| e["name"] == "member_added")
        .map(|e| e["user_id"].clone())
        .collect();
    assert_eq!(added.len(), 2, "bob's second tab is not a second member");
    let first = hooks
        .events()
        .into_iter()
        .find(|e| e["name"] == "connected" && e["user_id"] == "alice")
        .expect("alice connected");
    assert_eq!(first["node_id"], "one");
    assert_eq!(first["protocol"], "socketio");
    assert!(first["socket_id"].is_string() && first["id"].is_string());

    // Alice leaves; Bob closes one tab (still a member) and then unsubscribes the other.
    alice.exit().await;
    bob.exit().await;
    bob_tab
        .emit_ack("unsubscribe", json!([{"channel": room}]))
        .await;
    hooks
        .until("both members removed and the room vacated", |h| {
            h.count("member_removed", "channel", room) == 2
                && h.count("channel_vacated", "channel", room) == 1
                && h.count("disconnected", "user_id", "alice") == 1
                && h.count("disconnected", "user_id", "bob") == 1
        })
        .await;
    // Bob's own channel still has his tab on node one: not vacated.
    assert_eq!(
        hooks.count("channel_vacated", "channel", "private-user.bob"),
        0
    );
    let gone = hooks
        .events()
        .into_iter()
        .find(|e| e["name"] == "disconnected" && e["user_id"] == "alice")
        .expect("alice disconnected");
    assert_eq!(gone["reason"], "client_disconnect", "{gone}");

    // Carol is on node two when it is killed: node one reports what died with it, once.
    let mut carol = client(&two, "carol").await;
    carol.subscribe_ok("presence-chat.2").await;
    hooks
        .until("carol joined", |h| {
            h.count("member_added", "channel", "presence-chat.2") == 1
        })
        .await;
    two.kill().await;
    hooks
        .until("the dead node's channels, member and user reported", |h| {
            h.count("member_removed", "channel", "presence-chat.2") == 1
                && h.count("channel_vacated", "channel", "presence-chat.2") == 1
                && h.count("channel_vacated", "channel", "private-user.carol") == 1
                && h.events().iter().any(|e| {
                    e["name"] == "disconnected"
                        && e["user_id"] == "carol"
                        && e["reason"] == "node_lost"
                        && e["node_id"] == "two"
                        && e["sockets"] == 1
                })
        })
        .await;
    drop(carol);
    // A barrier instead of a pause: node one sends its events in order, so once a later
    // one has arrived, any late duplicate of the events above would have too.
    let _dave = client(&one, "dave").await;
    hooks
        .until("dave's connect, after everything above", |h| {
            h.count("connected", "user_id", "dave") == 1
        })
        .await;
    // Nothing came twice: ids are unique and every event above came once.
    let events = hooks.events();
    let mut ids: Vec<&str> = events.iter().filter_map(|e| e["id"].as_str()).collect();
    ids.sort_unstable();
    let all = ids.len();
    ids.dedup();
    assert_eq!(ids.len(), all, "an event id repeated");
    for (name, channel) in [
        ("channel_occupied", room),
        ("channel_vacated", room),
        ("channel_occupied", "private-user.bob"),
        ("member_removed", "presence-chat.2"),
        ("channel_vacated", "presence-chat.2"),
    ] {
        assert_eq!(hooks.count(name, "channel", channel), 1, "{name} {channel}");
    }
    assert_eq!(
        hooks.count("member_added", "channel", room),
        2,
        "bob's second tab is not a second member"
    );
    assert!(
        hooks
            .server
            .received()
            .iter()
            .all(|r| r.body["events"].as_array().is_some_and(|e| e.len() <= 3)),
        "a batch held more than SWITCHBOARD_WEBHOOK_BATCH_MAX events"
    );
    drop(bob_tab);
}

#[tokio::test]
async fn failed_batches_are_retried_and_shutdown_sends_the_last() {
    // The application fails twice before it accepts anything.
    let hooks = Hooks::start(2).await;
    let mut node = node(&hooks, None, &[]).await;
    let mut dana = client(&node, "dana").await;
    dana.subscribe_ok("news").await;
    hooks
        .until("connected and occupied after two failures", |h| {
            h.count("connected", "user_id", "dana") == 1
                && h.count("channel_occupied", "channel", "news") == 1
        })
        .await;
    assert!(
        hooks.server.received().len() >= 3,
        "two failures, then a success"
    );

    // On SIGTERM the node drains: Dana is told to go, and her events leave before the node.
    node.sigterm();
    assert!(node.wait_exit(Duration::from_secs(10)).await.is_some());
    let gone: Vec<Value> = hooks
        .events()
        .into_iter()
        .filter(|e| e["name"] == "disconnected")
        .collect();
    assert_eq!(gone.len(), 1, "{gone:?}");
    assert_eq!(gone[0]["reason"], "shutting_down");
    assert_eq!(hooks.count("channel_vacated", "channel", "news"), 1);
    assert_eq!(
        hooks.count("channel_vacated", "channel", "private-user.dana"),
        1
    );
    assert_eq!(
        hooks.count("connected", "user_id", "dana"),
        1,
        "retries did not repeat"
    );
    drop(dana);
}

#[tokio::test]
async fn a_webhook_url_needs_the_secret() {
    let (status, output) = Node::spawn_expect_failure(
        &["--dev"],
        &[("SWITCHBOARD_WEBHOOK_URL", "http://127.0.0.1:9/hooks")],
    )
    .await;
    assert_eq!(status.code(), Some(2), "{output}");
    assert!(output.contains("SWITCHBOARD_BACKEND_SECRET"), "{output}");
}

#[tokio::test]
async fn a_hanging_receiver_is_given_up_on_and_slows_nothing_else() {
    // The application takes every webhook and never answers.
    let server = AppServer::start(|_request: Received| -> Answer {
        Box::pin(async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            (200, "{}".to_owned())
        })
    })
    .await;
    let url = server.url("/hooks");
    let node = Node::spawn(
        &["--dev", "--api-keys", "k"],
        &[
            ("SWITCHBOARD_WEBHOOK_URL", url.as_str()),
            ("SWITCHBOARD_BACKEND_SECRET", HOOK_SECRET),
            ("SWITCHBOARD_WEBHOOK_TIMEOUT", "300ms"),
            ("SWITCHBOARD_WEBHOOK_RETRIES", "1"),
            ("SWITCHBOARD_WEBHOOK_BATCH_WAIT", "10ms"),
        ],
    )
    .await;
    // Each connect and subscribe makes webhooks the receiver sits on; clients do not wait.
    let mut erin = client(&node, "erin").await;
    erin.subscribe_ok("news").await;
    let body = json!({"channel": "news", "event": "flash", "data": {"n": 1}});
    let sent = http(
        "POST",
        &format!("{}/api/broadcast", node.url()),
        &[("authorization", "Bearer k")],
        body.to_string().as_bytes(),
    )
    .await;
    assert_eq!(sent.status, 202, "{}", sent.text());
    assert_eq!(
        erin.expect_event("flash", TIMEOUT).await,
        [json!("news"), json!({"n": 1})]
    );
    // Timed out, retried once, then dropped and counted.
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let metrics = http("GET", &format!("{}/metrics", node.url()), &[], b"")
            .await
            .text();
        let counted = |kind: &str| {
            metrics.lines().any(|l| {
                l.starts_with(&format!(
                    "switchboard_webhook_failures_total{{kind=\"{kind}\"}}"
                )) && !l.ends_with(" 0")
            })
        };
        if counted("retry") && counted("given_up") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no retry and give-up counted:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
