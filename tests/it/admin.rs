//! The admin page: its JSON endpoints over plain HTTP (who may read them, what they say, on
//! one node and on two sharing Redis), and the page itself in a real headless Chromium
//! (`tests/js/admin-browser.mjs`) seeing a client connect.

use std::path::Path;
use std::time::Duration;

use crate::support::*;
use serde_json::{Value, json};

const SECRET: &str = "switchboard-dev-secret";
const API_KEY: &str = "api-key";
const ADMIN_KEY: &str = "admin-key";

/// Presence channels open to every user, so the presence endpoint has members to show.
const POLICY: &str = r#"
[[channel]]
pattern = "presence-room.*"
allow = "open"
"#;

/// Where scripts/test installs Debian's chromium.
const CHROMIUM: &str = "/usr/bin/chromium";

fn token(claims: Value) -> String {
    jwt_hs256(SECRET, claims)
}

/// A `--dev` node (its start logs a warning) with the open presence policy and `envs`.
async fn node(envs: &[(&str, &str)]) -> Node {
    let (_dir, policy) = policy_file(POLICY);
    let mut all = vec![(
        "SWITCHBOARD_POLICY_FILE",
        policy.to_str().expect("utf-8 temp path"),
    )];
    all.extend_from_slice(envs);
    Node::spawn(&["--dev", "--api-keys", API_KEY], &all).await
}

/// `GET path` with `Authorization: Bearer credential` (none when `None`).
async fn get(node: &Node, path: &str, credential: Option<&str>) -> HttpResponse {
    let auth = credential.map(|c| format!("Bearer {c}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("authorization", a)])
        .unwrap_or_default();
    http("GET", &format!("{}{path}", node.url()), &headers, b"").await
}

/// The JSON of `GET path` with an admin credential; fails unless 200.
async fn admin_get(node: &Node, path: &str, credential: &str) -> Value {
    let response = get(node, path, Some(credential)).await;
    assert_eq!(response.status, 200, "GET {path}: {}", response.text());
    assert_eq!(response.header("cache-control"), Some("no-store"));
    response.json()
}

/// Polls `path` until `check` accepts its answer.
async fn admin_until(
    node: &Node,
    path: &str,
    credential: &str,
    timeout: Duration,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let body = admin_get(node, path, credential).await;
        if check(&body) {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "GET {path} never matched within {timeout:?}; last answer {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn client(node: &Node, user: &str) -> Agent {
    let token = token(json!({"sub": user, "name": format!("User {user}")}));
    Agent::connected(&node.url(), &token).await
}

const ENDPOINTS: [&str; 4] = [
    "/admin/api/overview",
    "/admin/api/channels",
    "/admin/api/channels/presence-room.1/presence",
    "/admin/api/logs",
];

#[tokio::test]
async fn endpoints_need_an_admin_key_or_the_jwt_of_an_admin() {
    // Without SWITCHBOARD_ADMIN_KEYS the API keys are the admin keys.
    let node = node(&[]).await;
    let admin = token(json!({"sub": "1", "role": "admin"}));
    let super_admin = token(json!({"sub": "2", "role": "Super_Admin"}));
    let user = token(json!({"sub": "3", "role": "user"}));
    let no_role = token(json!({"sub": "4"}));
    let forged = jwt_hs256("another-secret", json!({"sub": "5", "role": "admin"}));
    for path in ENDPOINTS {
        for credential in [API_KEY, admin.as_str(), super_admin.as_str()] {
            admin_get(&node, path, credential).await;
        }
        for (credential, why) in [
            (None, "missing Authorization"),
            (Some("wrong-key"), "invalid admin key or token"),
            (Some(user.as_str()), "not an admin role"),
            (Some(no_role.as_str()), "not an admin role"),
            (Some(forged.as_str()), "invalid admin key or token"),
        ] {
            let response = get(&node, path, credential).await;
            assert_eq!(response.status, 401, "{path} with {credential:?}");
            let body = response.json();
            assert_eq!(body["error"]["code"], "unauthorized", "{body}");
            let message = body["error"]["message"].as_str().unwrap_or_default();
            assert!(
                message.contains(why),
                "{path}: {message:?} should say {why:?}"
            );
        }
    }
    let metrics = get(&node, "/metrics", None).await.text();
    assert!(
        metrics.contains(r#"switchboard_auth_failures_total{reason="admin"}"#),
        "refusals are counted:\n{metrics}"
    );

    // The page's shell and assets are public (they hold no data) and locked down by CSP.
    let page = get(&node, "/admin", None).await;
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(page.text().contains(r#"<script src="/admin/app.js""#));
    let csp = page.header("content-security-policy").unwrap_or_default();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    for (path, kind) in [
        ("/admin/app.js", "text/javascript"),
        ("/admin/style.css", "text/css"),
    ] {
        let asset = get(&node, path, None).await;
        assert_eq!(asset.status, 200, "{path}");
        assert!(
            asset
                .header("content-type")
                .unwrap_or_default()
                .starts_with(kind),
            "{path}: {:?}",
            asset.header("content-type")
        );
    }

    // With SWITCHBOARD_ADMIN_KEYS set, those keys and only those (and admin JWTs) are let in.
    let separate = self::node(&[("SWITCHBOARD_ADMIN_KEYS", &format!("{ADMIN_KEY}, other"))]).await;
    admin_get(&separate, "/admin/api/overview", ADMIN_KEY).await;
    admin_get(&separate, "/admin/api/overview", "other").await;
    admin_get(&separate, "/admin/api/overview", &admin).await;
    let response = get(&separate, "/admin/api/overview", Some(API_KEY)).await;
    assert_eq!(response.status, 401, "an API key is not an admin key then");
    // …and the API keys still work on the API.
    let api = get(&separate, "/api/channels", Some(API_KEY)).await;
    assert_eq!(api.status, 200);
}

#[tokio::test]
async fn overview_channels_presence_and_logs_of_one_node() {
    let node = node(&[("SWITCHBOARD_NODE_ID", "solo")]).await;
    let overview = admin_get(&node, "/admin/api/overview", API_KEY).await;
    assert_eq!(overview["node"]["id"], "solo");
    assert_eq!(overview["node"]["connections"], 0);
    assert_eq!(overview["node"]["bus"], "memory");
    assert_eq!(overview["node"]["bus_up"], true);
    assert!(overview["node"]["memory_rss_bytes"].as_u64().unwrap_or(0) > 1_000_000);
    let nodes = overview["cluster"]["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 1, "{overview}");
    assert_eq!(nodes[0]["id"], "solo");
    assert_eq!(nodes[0]["this"], true);
    assert_eq!(nodes[0]["live"], true);
    let out_before = overview["node"]["messages_out_total"]
        .as_i64()
        .expect("a count");

    // Three clients: everyone in `busy`, two in the presence room, one in `quiet`.
    let mut a = client(&node, "a").await;
    let mut b = client(&node, "b").await;
    let mut c = client(&node, "c").await;
    for agent in [&mut a, &mut b, &mut c] {
        agent.subscribe_ok("busy").await;
    }
    a.subscribe_ok("presence-room.1").await;
    b.subscribe_ok("presence-room.1").await;
    c.subscribe_ok("quiet").await;
    let sent = http(
        "POST",
        &format!("{}/api/broadcast", node.url()),
        &[("authorization", &format!("Bearer {API_KEY}"))],
        br#"{"channel": "busy", "event": "tick", "data": 1}"#,
    )
    .await;
    assert_eq!(sent.status, 202, "{}", sent.text());
    for agent in [&mut a, &mut b, &mut c] {
        agent.expect_event("tick", TIMEOUT).await;
    }

    let overview = admin_get(&node, "/admin/api/overview", API_KEY).await;
    let this = &overview["node"];
    assert_eq!(this["connections"], 3, "{overview}");
    assert_eq!(this["users"], 3);
    let by: i64 = this["connections_by"]
        .as_array()
        .expect("series")
        .iter()
        .filter_map(|s| s["value"].as_i64())
        .sum();
    assert_eq!(by, 3, "the series add up: {overview}");
    assert_eq!(overview["cluster"]["connections"], 3);
    assert!(
        this["messages_out_total"].as_i64().expect("a count") >= out_before + 3,
        "the broadcast reached three sockets: {overview}"
    );
    assert!(
        this["messages_in_total"].as_i64().expect("a count") >= 6,
        "six subscribes: {overview}"
    );

    // Most subscribers first; the private-user.{id} channels count too.
    let listed = admin_get(&node, "/admin/api/channels?limit=2", API_KEY).await;
    assert_eq!(
        listed["channels"],
        json!([
            {"name": "busy", "subscriptions": 3, "presence": false},
            {"name": "presence-room.1", "subscriptions": 2, "presence": true},
        ]),
        "{listed}"
    );
    assert_eq!(
        listed["total"],
        3 + 3,
        "busy, presence, quiet and three user channels"
    );
    let all = admin_get(&node, "/admin/api/channels", API_KEY).await;
    assert_eq!(all["channels"].as_array().map(Vec::len), Some(6));

    let presence = admin_get(
        &node,
        "/admin/api/channels/presence-room.1/presence",
        API_KEY,
    )
    .await;
    assert_eq!(presence["channel"], "presence-room.1");
    let mut users: Vec<String> = presence["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| m["user_id"].to_string())
        .collect();
    users.sort();
    assert_eq!(users, [r#""a""#, r#""b""#], "{presence}");
    let empty = admin_get(
        &node,
        "/admin/api/channels/presence-room.2/presence",
        API_KEY,
    )
    .await;
    assert_eq!(empty["members"], json!([]));
    let not_presence = get(&node, "/admin/api/channels/busy/presence", Some(API_KEY)).await;
    assert_eq!(not_presence.status, 400, "{}", not_presence.text());

    // `--dev` warns at start; that warning is in the recent log, and INFO lines are not.
    let logs = admin_get(&node, "/admin/api/logs", API_KEY).await;
    assert_eq!(logs["capacity"], 200);
    let entries = logs["entries"].as_array().expect("entries");
    let dev = entries
        .iter()
        .find(|e| {
            e["message"]
                .as_str()
                .is_some_and(|m| m.contains("DEVELOPMENT MODE"))
        })
        .unwrap_or_else(|| panic!("the --dev warning is missing: {logs}"));
    assert_eq!(dev["level"], "WARN");
    assert_eq!(dev["target"], "switchboard::server");
    assert!(dev["time_ms"].as_u64().is_some());
    assert!(
        entries
            .iter()
            .all(|e| e["level"] == "WARN" || e["level"] == "ERROR"),
        "{logs}"
    );

    // Leaving shows at once.
    c.exit().await;
    admin_until(&node, "/admin/api/overview", API_KEY, TIMEOUT, |o| {
        o["node"]["connections"] == 2
    })
    .await;
}

#[tokio::test]
async fn two_nodes_sharing_redis_list_each_other_with_their_connections() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    // A short TTL: heartbeats (which carry each node's connection count) every 500 ms.
    let envs = |id: &'static str| {
        vec![
            ("SWITCHBOARD_NODE_ID", id),
            ("SWITCHBOARD_REDIS_URL", url.as_str()),
            ("SWITCHBOARD_PRESENCE_TTL", "2s"),
        ]
    };
    let one = node(&envs("one")).await;
    let mut two = node(&envs("two")).await;
    let both = |o: &Value| o["cluster"]["nodes"].as_array().map(Vec::len) == Some(2);
    let overview = admin_until(&one, "/admin/api/overview", API_KEY, TIMEOUT, both).await;
    let nodes = overview["cluster"]["nodes"].as_array().expect("nodes");
    let ids: Vec<&str> = nodes.iter().filter_map(|n| n["id"].as_str()).collect();
    assert!(
        ids.iter().any(|id| id.starts_with("one.")) && ids.iter().any(|id| id.starts_with("two.")),
        "instance ids are the node ids plus a suffix: {overview}"
    );
    for n in nodes {
        assert_eq!(n["live"], true, "{overview}");
        assert_eq!(
            n["this"],
            n["id"].as_str().is_some_and(|id| id.starts_with("one."))
        );
        assert!(n["age_ms"].as_u64().expect("an age") < 2_000, "{overview}");
    }

    // A client on node two: node one sees it in the cluster total at two's next heartbeat.
    let mut alice = client(&two, "alice").await;
    let mut bob = client(&two, "bob").await;
    alice.subscribe_ok("presence-room.7").await;
    bob.subscribe_ok("presence-room.7").await;
    let overview = admin_until(&one, "/admin/api/overview", API_KEY, TIMEOUT, |o| {
        o["cluster"]["connections"] == 2
    })
    .await;
    assert_eq!(overview["node"]["connections"], 0);
    let two_row = overview["cluster"]["nodes"]
        .as_array()
        .and_then(|nodes| nodes.iter().find(|n| n["this"] == false).cloned())
        .expect("node two");
    assert_eq!(two_row["connections"], 2, "{overview}");
    // Channels and presence are cluster-wide too.
    let channels = admin_get(&one, "/admin/api/channels?limit=1", API_KEY).await;
    assert_eq!(
        channels["channels"][0],
        json!({"name": "presence-room.7", "subscriptions": 2, "presence": true}),
        "{channels}"
    );
    let presence = admin_get(
        &one,
        "/admin/api/channels/presence-room.7/presence",
        API_KEY,
    )
    .await;
    assert_eq!(
        presence["members"].as_array().map(Vec::len),
        Some(2),
        "{presence}"
    );

    // A node that shuts down leaves the list at once: well within the 2 s TTL after which
    // a node that only stopped heart-beating would expire.
    two.sigterm();
    two.wait_exit(Duration::from_secs(15))
        .await
        .expect("node two exits");
    let at_once = Duration::from_millis(1000);
    admin_until(&one, "/admin/api/overview", API_KEY, at_once, |o| {
        o["cluster"]["nodes"].as_array().map(Vec::len) == Some(1)
            && o["cluster"]["connections"] == 0
    })
    .await;
}

/// The page in headless Chromium: the login form, a refused key and a refused non-admin JWT,
/// the dashboard after the admin key, and the node's connection count following a client.
#[tokio::test]
async fn the_page_in_a_real_browser_follows_a_client_connecting() {
    assert!(
        Path::new(CHROMIUM).is_file(),
        "{CHROMIUM} is missing: run scripts/test, which installs Debian's chromium"
    );
    let node = node(&[("SWITCHBOARD_ADMIN_KEYS", ADMIN_KEY)]).await;
    let mut browser = JsonLinesProcess::spawn_node(
        "admin page in chromium".into(),
        "admin-browser.mjs",
        "playwright-core",
        &json!({"url": node.url(), "chromium": CHROMIUM, "timeout": 10_000}),
    );
    let ready = answer(&mut browser, "ready").await;
    assert_eq!(
        ready,
        json!({"type": "ready", "login": true}),
        "no credential: the login form"
    );

    let user = token(json!({"sub": "9", "role": "user"}));
    for (credential, error) in [
        ("wrong-key", "invalid admin key or token"),
        (user.as_str(), "this token's role is not an admin role"),
        (ADMIN_KEY, ""),
    ] {
        let line = step(
            &mut browser,
            json!({"cmd": "login", "token": credential}),
            "login",
        )
        .await;
        assert_eq!(
            line,
            json!({"type": "login", "ok": error.is_empty(), "error": error}),
            "login with {credential:?}"
        );
    }

    let before = step(
        &mut browser,
        json!({"cmd": "connections", "atMost": 0}),
        "connections",
    )
    .await;
    assert_eq!(
        before,
        json!({"type": "connections", "node": 0, "cluster": 0})
    );
    let started = tokio::time::Instant::now();
    let mut client = client(&node, "7").await;
    // The page polls every second: the count follows within a couple of polls.
    let after = step(
        &mut browser,
        json!({"cmd": "connections", "atLeast": 1}),
        "connections",
    )
    .await;
    assert_eq!(
        after,
        json!({"type": "connections", "node": 1, "cluster": 1})
    );
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(5), "the page took {waited:?}");

    // A presence channel appears in the top channels; clicking it lists its members.
    client.subscribe_ok("presence-room.3").await;
    let line = step(
        &mut browser,
        json!({"cmd": "presence", "channel": "presence-room.3"}),
        "presence",
    )
    .await;
    assert_eq!(line, json!({"type": "presence", "members": ["7"]}));

    let screenshot = manifest_dir().join("target/admin-screenshot.png");
    let _ = std::fs::remove_file(&screenshot);
    step(
        &mut browser,
        json!({"cmd": "screenshot", "path": screenshot}),
        "screenshot",
    )
    .await;
    let png = std::fs::read(&screenshot)
        .unwrap_or_else(|e| panic!("no screenshot at {}: {e}", screenshot.display()));
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    assert!(png.len() > 10_000, "a blank page? {} bytes", png.len());
    assert_no_page_errors(&mut browser).await;
    browser.exit().await;
}

/// The browser script's next line of type `kind`, or its error line (which then fails the
/// caller's comparison with the error's text).
async fn answer(browser: &mut JsonLinesProcess, kind: &str) -> Value {
    // Chromium's start and each step's own waits (10 s at most) fit well within this.
    browser
        .wait_for(
            |l| l["type"] == kind || l["type"] == "error",
            Duration::from_secs(20),
        )
        .await
}

/// Sends `cmd` to the browser script and returns its answer of type `kind`.
async fn step(browser: &mut JsonLinesProcess, cmd: Value, kind: &str) -> Value {
    browser.send(cmd).await;
    answer(browser, kind).await
}

/// Fails if the page printed an error (a script error, a CSP refusal, a failed request
/// other than the refused logins' 401s).
async fn assert_no_page_errors(browser: &mut JsonLinesProcess) {
    browser
        .assert_no(
            "page error",
            |l| {
                l["type"] == "error"
                    || (l["type"] == "console"
                        && !l["text"].as_str().is_some_and(|t| t.contains("401")))
            },
            Duration::from_millis(100),
        )
        .await;
}
