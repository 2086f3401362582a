//! Two nodes behind a real nginx using the repository's `nginx/switchboard.conf`: sticky
//! sessions by client address, websocket upgrades through the proxy, and a broadcast reaching
//! clients on both nodes.

use std::collections::HashMap;
use std::net::IpAddr;

use crate::support::*;
use serde_json::json;

const SECRET: &str = "switchboard-dev-secret";
const API_KEY: &str = "test-key";

/// The id of the node nginx sends a request from `ip` to.
async fn node_behind(nginx: &Nginx, ip: IpAddr) -> String {
    let health = http_from(
        &ip.to_string(),
        "GET",
        &format!("{}/health", nginx.url()),
        &[],
        b"",
    )
    .await;
    health.json()["node_id"]
        .as_str()
        .expect("node id")
        .to_owned()
}

/// Finds, for each node id, a 127.0.0.x source address that nginx sends to that node, and
/// checks it keeps doing so.
async fn addresses_by_node(nginx: &Nginx) -> HashMap<String, IpAddr> {
    let mut found: HashMap<String, IpAddr> = HashMap::new();
    for last in 2..=80u8 {
        let ip = IpAddr::from([127, 0, 0, last]);
        found.entry(node_behind(nginx, ip).await).or_insert(ip);
        if found.len() == 2 {
            break;
        }
    }
    assert_eq!(
        found.len(),
        2,
        "two source addresses landing on different nodes"
    );
    for (node, ip) in &found {
        for _ in 0..5 {
            assert_eq!(
                &node_behind(nginx, *ip).await,
                node,
                "{ip} sticks to {node}"
            );
        }
    }
    found
}

#[tokio::test]
async fn polling_and_websocket_clients_on_different_nodes_behind_nginx() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let args = [
        "--dev",
        "--api-keys",
        API_KEY,
        "--redis-url",
        &url,
        "--ping-interval",
        "1s",
        "--ping-timeout",
        "1s",
    ];
    let one = Node::spawn(&args, &[("SWITCHBOARD_NODE_ID", "one")]).await;
    let two = Node::spawn(&args, &[("SWITCHBOARD_NODE_ID", "two")]).await;
    let nginx = Nginx::start(&[one.addr(), two.addr()]).await;
    let by_node = addresses_by_node(&nginx).await;
    let (ip_one, ip_two) = (by_node["one"], by_node["two"]);

    let token = jwt_hs256(SECRET, json!({"sub": 1}));
    let mut polling = Agent::spawn(json!({
        "url": nginx.url(), "auth": {"token": token}, "transports": ["polling"], "localAddress": ip_one.to_string(),
    }));
    let mut websocket = Agent::spawn(json!({
        "url": nginx.url(), "auth": {"token": token}, "transports": ["websocket"], "localAddress": ip_two.to_string(),
    }));
    for agent in [&mut polling, &mut websocket] {
        agent.expect_connect(TIMEOUT).await;
        let answer = agent
            .emit_ack("subscribe", json!([{"channel": "news"}]))
            .await;
        assert_eq!(answer[0]["status"], "success");
    }
    // Several heartbeats pass over polling through the proxy (1 s ping interval).
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;

    let body = json!({"channel": "news", "event": "headline", "data": {"n": 1}}).to_string();
    let response = http(
        "POST",
        &format!("{}/api/broadcast", nginx.url()),
        &[("authorization", &format!("Bearer {API_KEY}"))],
        body.as_bytes(),
    )
    .await;
    assert_eq!(response.status, 202, "{}", response.text());
    for agent in [&mut polling, &mut websocket] {
        assert_eq!(
            agent.expect_event("headline", TIMEOUT).await,
            vec![json!("news"), json!({"n": 1})]
        );
    }
    assert_eq!(polling.transport().await.as_deref(), Some("polling"));
    assert_eq!(websocket.transport().await.as_deref(), Some("websocket"));

    // Every request of the polling session went to node one; the websocket went to node two.
    // nginx logs a request when it ends, so the clients leave first.
    polling.exit().await;
    websocket.exit().await;
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let mut log = nginx.access_log();
    while !log.contains("transport=websocket") && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        log = nginx.access_log();
    }
    let polling_requests: Vec<&str> = log
        .lines()
        .filter(|line| line.starts_with(&format!("{ip_one} ")) && line.contains("/socket.io/"))
        .collect();
    assert!(
        polling_requests.len() >= 4,
        "handshake, polls and posts are logged:\n{log}"
    );
    for line in &polling_requests {
        assert!(
            line.ends_with(&format!("upstream={}", one.addr())),
            "polling request on the wrong node: {line}"
        );
    }
    let upgrade = log
        .lines()
        .find(|line| {
            line.starts_with(&format!("{ip_two} ")) && line.contains("transport=websocket")
        })
        .unwrap_or_else(|| panic!("websocket request in the log:\n{log}"));
    assert!(
        upgrade.contains(" 101 "),
        "nginx passed the upgrade: {upgrade}"
    );
    assert!(
        upgrade.ends_with(&format!("upstream={}", two.addr())),
        "{upgrade}"
    );
}
