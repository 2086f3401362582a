//! What the client port tells strangers, and how it treats key guessers: wrong API and admin
//! keys throttled per client address, the admin listener (`SWITCHBOARD_ADMIN_LISTEN`) taking
//! `/metrics`, `/admin` and the verbose health off the client port, health answers without
//! counts, and no credentialed CORS for origins nobody configured (checked with
//! socket.io-client in headless Chromium too, `tests/js/cors-browser.mjs`).

use crate::support::*;
use serde_json::{Value, json};

const API_KEY: &str = "the-api-key";

/// `GET path` on `base` from the loopback address `from`, with `Bearer credential`.
async fn get_from(from: &str, base: &str, path: &str, credential: Option<&str>) -> HttpResponse {
    let auth = credential.map(|c| format!("Bearer {c}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("authorization", a)])
        .unwrap_or_default();
    http_from(from, "GET", &format!("{base}{path}"), &headers, b"").await
}

/// Sends wrong keys to `path` from `from` until one is refused with 429; returns how many
/// were answered 401 before it.
async fn wrong_keys_until_throttled(from: &str, base: &str, path: &str) -> usize {
    for sent in 0..30 {
        let response = get_from(from, base, path, Some(&format!("guess-{sent}"))).await;
        match response.status {
            401 => continue,
            429 => {
                assert_eq!(response.json()["error"]["code"], "rate_limited");
                let retry: u64 = response
                    .header("retry-after")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("429 without Retry-After: {:?}", response.headers));
                assert!((1..=2).contains(&retry), "Retry-After {retry}");
                return sent;
            }
            other => panic!("{path}: wrong key answered {other}: {}", response.text()),
        }
    }
    panic!("30 wrong keys for {path} from {from}, none refused with 429");
}

#[tokio::test]
async fn wrong_api_and_admin_keys_are_throttled_per_client_address() {
    let node = Node::spawn(&["--dev", "--api-keys", API_KEY], &[]).await;
    let base = node.url();

    // A burst of about ten wrong keys, then 429 from that address.
    let refused = wrong_keys_until_throttled("127.0.0.2", &base, "/api/channels").await;
    assert!(
        (10..=12).contains(&refused),
        "{refused} wrong keys before 429"
    );
    // Once throttled, the key is not even compared: the right one waits too, on the API and
    // on the admin endpoints alike.
    for path in ["/api/channels", "/admin/api/overview", "/health?verbose=1"] {
        let response = get_from("127.0.0.2", &base, path, Some(API_KEY)).await;
        assert_eq!(response.status, 429, "{path} from the throttled address");
    }
    // Another address is not affected: its wrong key is a 401, its right key a 200.
    let other = get_from("127.0.0.3", &base, "/api/channels", Some("nope")).await;
    assert_eq!(other.status, 401);
    let other = get_from("127.0.0.3", &base, "/api/channels", Some(API_KEY)).await;
    assert_eq!(other.status, 200, "{}", other.text());

    // Wrong admin keys and forged admin tokens count the same way.
    let forged = jwt_hs256("not-the-secret", json!({"sub": "1", "role": "admin"}));
    let first = get_from("127.0.0.4", &base, "/admin/api/overview", Some(&forged)).await;
    assert_eq!(first.status, 401);
    let refused = wrong_keys_until_throttled("127.0.0.4", &base, "/admin/api/logs").await;
    assert!(
        (9..=11).contains(&refused),
        "{refused} wrong admin keys before 429"
    );

    // A request without any credential guesses nothing and costs nothing.
    for _ in 0..20 {
        let bare = get_from("127.0.0.5", &base, "/api/channels", None).await;
        assert_eq!(bare.status, 401);
    }
    let right = get_from("127.0.0.5", &base, "/api/channels", Some(API_KEY)).await;
    assert_eq!(right.status, 200);

    // The budget refills (one a second): the throttled address is heard again.
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let response = get_from("127.0.0.2", &base, "/api/channels", Some(API_KEY)).await;
        if response.status == 200 {
            break;
        }
        assert_eq!(response.status, 429);
        assert!(
            tokio::time::Instant::now() < deadline,
            "127.0.0.2 still throttled"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }

    let metrics = http("GET", &format!("{base}/metrics"), &[], b"")
        .await
        .text();
    let throttled = metrics
        .lines()
        .find_map(|l| l.strip_prefix(r#"switchboard_rate_limited_total{limit="failed_auth"} "#))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no failed_auth series:\n{metrics}"));
    assert!(throttled >= 5, "{throttled} throttled requests counted");
}

/// The keys of a JSON object, sorted.
fn keys(value: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = value
        .as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default();
    keys.sort_unstable();
    keys
}

/// `2026-12-05T13:42:18.123Z`.
fn is_iso8601_utc(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() == 24
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'.',
            23 => *c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

#[tokio::test]
async fn health_shows_strangers_no_counts() {
    let node = Node::spawn(
        &["--dev", "--api-keys", API_KEY],
        &[("SWITCHBOARD_NODE_ID", "node-h")],
    )
    .await;
    let base = node.url();
    let health = http("GET", &format!("{base}/health"), &[], b"").await;
    assert_eq!(health.json(), json!({"status": "ok", "node_id": "node-h"}));

    let ws = http("GET", &format!("{base}/api/community/ws/health"), &[], b"").await;
    assert_eq!(ws.status, 200);
    let body = ws.json();
    assert_eq!(keys(&body), ["status", "timestamp"], "{body}");
    assert_eq!(body["status"], "ok");
    let timestamp = body["timestamp"].as_str().unwrap_or_default();
    assert!(is_iso8601_utc(timestamp), "timestamp {timestamp:?}");

    // Without an admin listener, the figures need an admin credential.
    for credential in [None, Some("wrong")] {
        let refused = get_from("127.0.0.1", &base, "/health?verbose=1", credential).await;
        assert_eq!(refused.status, 401, "{credential:?}: {}", refused.text());
        assert!(refused.json().get("data").is_none());
    }
    let verbose = get_from("127.0.0.1", &base, "/health?verbose=1", Some(API_KEY)).await;
    assert_eq!(verbose.status, 200);
    assert_eq!(verbose.json()["data"]["websocket"]["totalConnections"], 0);
    assert_eq!(verbose.json()["data"]["node_id"], "node-h");
    // /metrics and /admin stay on the client port when no admin listener is set.
    let metrics = http("GET", &format!("{base}/metrics"), &[], b"").await;
    assert_eq!(metrics.status, 200);
    assert_eq!(
        http("GET", &format!("{base}/admin"), &[], b"").await.status,
        200
    );
}

#[tokio::test]
async fn the_admin_listener_takes_metrics_admin_and_verbose_health_off_the_client_port() {
    let admin_port = free_port();
    let admin_listen = format!("127.0.0.1:{admin_port}");
    let mut node = Node::spawn(
        &[
            "--dev",
            "--api-keys",
            API_KEY,
            "--admin-listen",
            &admin_listen,
        ],
        &[],
    )
    .await;
    let public = node.url();
    let admin = format!("http://{admin_listen}");

    // The client port: no metrics, no admin page or endpoints, no figures.
    for path in ["/metrics", "/admin", "/admin/app.js", "/admin/api/overview"] {
        let response = get_from("127.0.0.1", &public, path, Some(API_KEY)).await;
        assert_eq!(response.status, 404, "{path} on the client port");
    }
    let health = get_from("127.0.0.1", &public, "/health?verbose=1", Some(API_KEY)).await;
    assert_eq!(health.status, 200);
    assert_eq!(keys(&health.json()), ["node_id", "status"]);
    // The client port still serves clients and the API.
    let api = get_from("127.0.0.1", &public, "/api/channels", Some(API_KEY)).await;
    assert_eq!(api.status, 200, "{}", api.text());
    let handshake = http(
        "GET",
        &format!("{public}/socket.io/?EIO=4&transport=polling"),
        &[],
        b"",
    )
    .await;
    assert_eq!(handshake.status, 200);

    // The admin listener: all of it.
    let metrics = http("GET", &format!("{admin}/metrics"), &[], b"").await;
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.text().contains("switchboard_connections"),
        "{}",
        metrics.text()
    );
    assert_eq!(
        http("GET", &format!("{admin}/admin"), &[], b"")
            .await
            .status,
        200
    );
    let verbose = http("GET", &format!("{admin}/health?verbose=1"), &[], b"").await;
    assert_eq!(verbose.json()["success"], true);
    assert!(verbose.json()["data"]["websocket"]["totalConnections"].is_number());
    // The admin endpoints still want an admin credential there.
    let bare = get_from("127.0.0.1", &admin, "/admin/api/overview", None).await;
    assert_eq!(bare.status, 401);
    let overview = get_from("127.0.0.1", &admin, "/admin/api/overview", Some(API_KEY)).await;
    assert_eq!(overview.status, 200, "{}", overview.text());
    // And the API is not served there.
    let api = get_from("127.0.0.1", &admin, "/api/channels", Some(API_KEY)).await;
    assert_eq!(api.status, 404);

    // Both listeners stop with the node.
    node.sigterm();
    let status = node.wait_exit(std::time::Duration::from_secs(10)).await;
    assert!(status.is_some_and(|s| s.success()), "exit: {status:?}");
    assert!(
        try_http("GET", &format!("{admin}/metrics"), &[], b"")
            .await
            .is_err(),
        "the admin listener outlived the node"
    );
}

#[tokio::test]
async fn without_configured_origins_no_origin_gets_credentials() {
    for args in [&["--dev"][..], &["--dev", "--allowed-origins", "*"][..]] {
        let node = Node::spawn(args, &[]).await;
        let handshake = format!("{}/socket.io/?EIO=4&transport=polling", node.url());
        let origin = [("origin", "https://evil.example")];
        // socket.io-client in a browser polls without credentials by default
        // (`withCredentials: false`), which `*` serves.
        let open = http("GET", &handshake, &origin, b"").await;
        assert_eq!(open.status, 200, "{args:?}");
        assert_eq!(open.header("access-control-allow-origin"), Some("*"));
        assert_eq!(open.header("access-control-allow-credentials"), None);
        let preflight = http(
            "OPTIONS",
            &handshake,
            &[
                ("origin", "https://evil.example"),
                ("access-control-request-method", "POST"),
                ("access-control-request-headers", "content-type"),
            ],
            b"",
        )
        .await;
        assert_eq!(preflight.status, 204, "{args:?}");
        assert_eq!(preflight.header("access-control-allow-origin"), Some("*"));
        assert_eq!(preflight.header("access-control-allow-credentials"), None);
        assert_eq!(
            preflight.header("access-control-allow-headers"),
            Some("content-type")
        );
    }
}

/// socket.io-client in headless Chromium, on a page of another origin, long-polling a node
/// with no configured origins.
async fn browser_poll(node: &Node, with_credentials: bool) -> Value {
    let token = jwt_hs256(
        "switchboard-dev-secret",
        json!({"sub": "7", "exp": 4_102_444_800_u64}),
    );
    let mut browser = JsonLinesProcess::spawn_node(
        "socket.io-client in chromium".into(),
        "cors-browser.mjs",
        "playwright-core",
        &json!({"url": node.url(), "token": token, "withCredentials": with_credentials,
                "chromium": "/usr/bin/chromium", "timeout": 10_000}),
    );
    let line = browser
        .wait_for(
            |l| l["type"] == "result" || l["type"] == "error",
            std::time::Duration::from_secs(30),
        )
        .await;
    assert_eq!(line["type"], "result", "{line}");
    line
}

#[tokio::test]
async fn a_browser_on_another_origin_polls_without_credentials() {
    let node = Node::spawn(&["--dev"], &[]).await;
    // socket.io-client's default (`withCredentials: false`): `*` lets every poll through,
    // the POST carrying the subscribe and the GET carrying its ack.
    let plain = browser_poll(&node, false).await;
    assert_eq!(plain["connected"], true, "{plain}");
    assert_eq!(
        plain["ack"],
        json!({"channel": "news", "status": "success"}),
        "{plain}"
    );
    // With credentials the browser refuses `*`: an origin must be configured for cookies.
    let credentialed = browser_poll(&node, true).await;
    assert_eq!(credentialed["connected"], false, "{credentialed}");
    assert_eq!(credentialed["error"], "xhr poll error", "{credentialed}");
}
