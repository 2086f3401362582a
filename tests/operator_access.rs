//! What the client port tells strangers, and how it treats key guessers: wrong API and admin
//! keys throttled per client address.

mod support;

use serde_json::json;
use support::*;

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
    assert!((10..=12).contains(&refused), "{refused} wrong keys before 429");
    // Once throttled, the key is not even compared: the right one waits too, on the API and
    // on the admin endpoints alike.
    for path in ["/api/channels", "/admin/api/overview"] {
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
    assert!((9..=11).contains(&refused), "{refused} wrong admin keys before 429");

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

    let metrics = http("GET", &format!("{base}/metrics"), &[], b"").await.text();
    let throttled = metrics
        .lines()
        .find_map(|l| l.strip_prefix(r#"switchboard_rate_limited_total{limit="failed_auth"} "#))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no failed_auth series:\n{metrics}"));
    assert!(throttled >= 5, "{throttled} throttled requests counted");
}
