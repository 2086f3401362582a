//! `/metrics` as Prometheus itself reads it: a real Prometheus scrapes two nodes sharing a
//! Redis, and queries over its HTTP API see the cluster's connections summed, split by
//! protocol and transport, follow a client leaving, and find the histograms dashboards use
//! (handshake, bus-to-socket delivery, event-loop lag).

use std::time::Duration;

use crate::support::*;
use serde_json::json;
use tokio::net::TcpStream;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const SECRET: &str = "switchboard-dev-secret";
const API_KEY: &str = "test-key";
/// Prometheus scrapes every second; a change shows within a few scrapes.
const SCRAPED: Duration = Duration::from_secs(30);

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

fn token(user: u64) -> String {
    jwt_hs256(SECRET, json!({"sub": user}))
}

async fn socketio(node: &Node, user: u64, transport: &str) -> Agent {
    let mut agent = Agent::spawn(json!({
        "url": node.url(),
        "auth": {"token": token(user)},
        "transports": [transport],
    }));
    agent.expect_connect(TIMEOUT).await;
    agent.expect_event("subscribed", TIMEOUT).await;
    agent
}

async fn json_socket(node: &Node, user: u64) -> Ws {
    let url = format!("ws://{}/ws?token={}", node.addr(), token(user));
    let (ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("json websocket");
    ws
}

#[tokio::test]
async fn prometheus_sums_two_nodes() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let args = ["--dev", "--api-keys", API_KEY, "--redis-url", &url];
    let one = Node::spawn(&args, &[("SWITCHBOARD_NODE_ID", "one")]).await;
    let two = Node::spawn(&args, &[("SWITCHBOARD_NODE_ID", "two")]).await;
    for node in [&one, &two] {
        node.wait_ready(true).await;
    }
    let prometheus = Prometheus::start(&[one.addr(), two.addr()]).await;

    // Three Socket.IO sessions (one on long-polling) and two JSON sockets, across the nodes.
    let mut websocket_one = socketio(&one, 1, "websocket").await;
    let _polling_one = socketio(&one, 2, "polling").await;
    let _websocket_two = socketio(&two, 3, "websocket").await;
    let mut json_one = json_socket(&one, 4).await;
    let _json_two = json_socket(&two, 5).await;

    prometheus
        .wait_for("sum(switchboard_connections)", "= 5", |v| v == 5.0, SCRAPED)
        .await;
    for (series, want) in [
        (r#"sum(switchboard_connections{protocol="socketio"})"#, 3.0),
        (r#"sum(switchboard_connections{protocol="json"})"#, 2.0),
        (r#"sum(switchboard_connections{transport="polling"})"#, 1.0),
        (
            r#"sum(switchboard_handshake_duration_seconds_count{protocol="socketio"})"#,
            3.0,
        ),
        (
            r#"sum(switchboard_handshake_duration_seconds_count{protocol="json"})"#,
            2.0,
        ),
        ("max(switchboard_cluster_nodes)", 2.0),
        (r#"min(switchboard_redis_up{component="bus"})"#, 1.0),
        (r#"min(switchboard_redis_up{component="state"})"#, 1.0),
    ] {
        let got = prometheus.value(series).await;
        assert_eq!(got, Some(want), "{series}");
    }

    // A broadcast through node two's API reaches user 1 on node one over the bus: node one
    // times that delivery.
    let response = http(
        "POST",
        &format!("{}/api/broadcast", two.url()),
        &[("authorization", &format!("Bearer {API_KEY}"))],
        json!({"channel": "private-user.1", "event": "shipped", "data": {"id": 7}})
            .to_string()
            .as_bytes(),
    )
    .await;
    assert_eq!(response.status, 202, "{}", response.text());
    websocket_one.expect_event("shipped", TIMEOUT).await;
    for counted in [
        "sum(switchboard_delivery_latency_seconds_count)",
        r#"sum(switchboard_messages_out_total{protocol="socketio",kind="broadcast"})"#,
        r#"sum(switchboard_http_api_request_duration_seconds_count{route="/api/broadcast"})"#,
    ] {
        prometheus
            .wait_for(counted, "= 1", |v| v == 1.0, SCRAPED)
            .await;
    }
    // Both nodes watch their event loop, and the histogram answers a quantile query.
    prometheus
        .wait_for(
            "count(switchboard_event_loop_lag_seconds_count > 0)",
            "= 2",
            |v| v == 2.0,
            SCRAPED,
        )
        .await;
    prometheus
        .wait_for(
            "histogram_quantile(0.99, sum by (le) (rate(switchboard_event_loop_lag_seconds_bucket[10s])))",
            "a lag below a second",
            |v| (0.0..1.0).contains(&v),
            SCRAPED,
        )
        .await;
    prometheus
        .wait_for(
            "count(switchboard_runtime_busy_ratio >= 0 and switchboard_runtime_busy_ratio <= 1)",
            "= 2",
            |v| v == 2.0,
            SCRAPED,
        )
        .await;

    // A client leaves: the sum follows.
    json_one.close(None).await.expect("close");
    prometheus
        .wait_for("sum(switchboard_connections)", "= 4", |v| v == 4.0, SCRAPED)
        .await;
    prometheus
        .wait_for(
            r#"sum(switchboard_connections_closed_total{protocol="json",reason="client_closed"})"#,
            "= 1",
            |v| v == 1.0,
            SCRAPED,
        )
        .await;
}
