//! The admin page: `GET /admin`, a static HTML, JS and CSS shell embedded in the binary, and
//! the JSON endpoints under `/admin/api/` that it polls. The shell holds no data and no
//! secret; every endpoint needs `Authorization: Bearer` with an admin key
//! (`SWITCHBOARD_ADMIN_KEYS`, else the API keys) or the JWT of a user whose role is one of
//! `SWITCHBOARD_NOTIFICATIONS_ADMIN_ROLES` ([`AdminAccess`]), and answers 401 without one.
//! Served on the admin listener when `SWITCHBOARD_ADMIN_LISTEN` is set, else on the client port.

pub mod recent;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{FromRef, Path, Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus::core::Collector;
use prometheus::proto::MetricType;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::access::AdminAccess;
use crate::error::ApiError;
use crate::node::Node;

const INDEX_HTML: &str = include_str!("index.html");
const APP_JS: &str = include_str!("app.js");
const STYLE_CSS: &str = include_str!("style.css");

/// The page loads only its own script and style and talks only to this node: whatever a
/// channel name or a log line holds, it cannot run as script.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self' data:; form-action 'none'; frame-ancestors 'none'; base-uri 'none'";

/// Channels listed when the query gives no `limit`.
const DEFAULT_CHANNELS: usize = 20;
/// Most channels one call lists.
const MAX_CHANNELS: usize = 1_000;

/// What the admin handlers share: the node, and when the page's routes were built (the
/// node's start, for its uptime).
#[derive(Clone)]
struct Admin {
    node: Arc<Node>,
    started: Instant,
}

/// Lets the [`AdminAccess`] extractor find the node.
impl FromRef<Admin> for Arc<Node> {
    fn from_ref(admin: &Admin) -> Self {
        admin.node.clone()
    }
}

/// The admin routes, with their own state; merge into the node's router.
pub fn routes<S: Clone + Send + Sync + 'static>(node: Arc<Node>) -> Router<S> {
    let track = axum::middleware::from_fn_with_state(node.clone(), crate::api::track);
    let api = Router::new()
        .route("/admin/api/overview", get(overview))
        .route("/admin/api/channels", get(channels))
        .route("/admin/api/channels/{name}/presence", get(presence))
        .route("/admin/api/logs", get(logs))
        .route_layer(track);
    Router::new()
        .route("/admin", get(index))
        .route("/admin/", get(index))
        .route("/admin/app.js", get(script))
        .route("/admin/style.css", get(style))
        .merge(api)
        .with_state(Admin {
            node,
            started: Instant::now(),
        })
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CSP),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

/// `GET /admin`: the page shell (public: it holds no data).
async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

/// `GET /admin/app.js`.
async fn script() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

/// `GET /admin/style.css`.
async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE_CSS)
}

/// A JSON answer that browsers and proxies must not keep.
fn fresh(body: Value) -> Response {
    ([(header::CACHE_CONTROL, "no-store")], Json(body)).into_response()
}

/// `GET /admin/api/overview`: this node's figures and the cluster's nodes.
async fn overview(State(admin): State<Admin>, _: AdminAccess) -> Result<Response, ApiError> {
    let node = &admin.node;
    let connections = node.connection_count() as u64;
    let metrics = &node.metrics;
    let this = json!({
        "id": node.config.server.node_id,
        "uptime_seconds": admin.started.elapsed().as_secs(),
        "connections": connections,
        "connections_by": by_labels(metrics.connections()),
        "users": node.cluster.local_user_count(),
        "subscriptions": metrics.subscriptions.get(),
        "channels": node.hub.channel_count(),
        "messages_in_total": total(metrics.messages_in.family()),
        "messages_out_total": total(metrics.messages_out.family()),
        "bus": node.bus.kind(),
        "bus_up": node.bus.is_healthy(),
        "draining": node.is_draining(),
        "memory_rss_bytes": rss_bytes(),
    });
    let now = crate::cluster::now_ms();
    let cluster = match node
        .cluster
        .nodes(&node.config.server.node_id, connections)
        .await
    {
        Ok(nodes) => {
            let live_connections: u64 =
                nodes.iter().filter(|n| n.live).map(|n| n.connections).sum();
            let nodes: Vec<Value> = nodes
                .iter()
                .map(|n| {
                    json!({
                        "id": n.id,
                        "this": n.this,
                        "last_heartbeat_ms": n.last_heartbeat_ms,
                        "age_ms": now.saturating_sub(n.last_heartbeat_ms),
                        "live": n.live,
                        "connections": n.connections,
                    })
                })
                .collect();
            json!({"nodes": nodes, "connections": live_connections})
        }
        // The node's own figures are still worth showing while Redis is away.
        Err(e) => json!({"error": e.to_string()}),
    };
    Ok(fresh(
        json!({"time_ms": now, "node": this, "cluster": cluster}),
    ))
}

/// Query of `GET /admin/api/channels`.
#[derive(Debug, Deserialize)]
struct ChannelsQuery {
    /// Most channels listed (default 20, at most 1,000).
    limit: Option<usize>,
}

/// `GET /admin/api/channels?limit=N`: the channels with the most subscribers across the
/// cluster, most first.
async fn channels(
    State(admin): State<Admin>,
    _: AdminAccess,
    Query(query): Query<ChannelsQuery>,
) -> Result<Response, ApiError> {
    let node = &admin.node;
    let limit = query.limit.unwrap_or(DEFAULT_CHANNELS).min(MAX_CHANNELS);
    let mut all = node.cluster.channels(&node.hub).await?;
    let total = all.len();
    // Most subscribers first; equal counts by name, so the order is stable between polls.
    all.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let listed: Vec<Value> = all
        .into_iter()
        .take(limit)
        .map(|(name, subscriptions)| {
            let presence = crate::channel::kind(&name) == crate::channel::Kind::Presence;
            json!({"name": name, "subscriptions": subscriptions, "presence": presence})
        })
        .collect();
    Ok(fresh(json!({"channels": listed, "total": total})))
}

/// `GET /admin/api/channels/{name}/presence`: a presence channel's members across the cluster.
async fn presence(
    State(admin): State<Admin>,
    _: AdminAccess,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let node = &admin.node;
    let members = crate::api::presence_members(node, &name).await?;
    Ok(fresh(json!({"channel": name, "members": members})))
}

/// `GET /admin/api/logs`: this process's most recent warnings and errors, newest first.
async fn logs(_: AdminAccess) -> Result<Response, ApiError> {
    Ok(fresh(
        json!({"entries": recent::entries(), "capacity": recent::CAPACITY}),
    ))
}

/// The value of each series of a counter or gauge family, e.g.
/// `[{"labels": {"transport": "websocket"}, "value": 3}]`: whatever its labels are.
fn by_labels(collector: &dyn Collector) -> Vec<Value> {
    let mut series = Vec::new();
    for family in collector.collect() {
        let kind = family.get_field_type();
        for metric in family.get_metric() {
            let labels: serde_json::Map<String, Value> = metric
                .get_label()
                .iter()
                .map(|pair| (pair.name().to_owned(), pair.value().into()))
                .collect();
            let value = match kind {
                MetricType::COUNTER => metric.get_counter().get_value(),
                MetricType::GAUGE => metric.get_gauge().get_value(),
                _ => continue,
            };
            // Every metric read here is an integer one (IntGauge, IntCounter).
            series.push(json!({"labels": labels, "value": value as i64}));
        }
    }
    series
}

/// The sum over every series of an integer counter or gauge family.
fn total(collector: &dyn Collector) -> i64 {
    by_labels(collector)
        .iter()
        .filter_map(|s| s["value"].as_i64())
        .sum()
}

/// This process's resident memory, from `/proc/self/status` (Linux only; `None` elsewhere).
fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_and_totals_whatever_the_labels() {
        let gauge = prometheus::IntGaugeVec::new(
            prometheus::Opts::new("g", "g"),
            &["transport", "protocol"],
        )
        .unwrap();
        gauge.with_label_values(&["websocket", "json"]).set(2);
        gauge.with_label_values(&["polling", "socketio"]).set(3);
        let series = by_labels(&gauge);
        assert_eq!(series.len(), 2);
        assert!(series.contains(
            &json!({"labels": {"transport": "websocket", "protocol": "json"}, "value": 2})
        ));
        assert_eq!(total(&gauge), 5);

        let counter =
            prometheus::IntCounterVec::new(prometheus::Opts::new("c", "c"), &["kind"]).unwrap();
        assert_eq!(total(&counter), 0);
        counter.with_label_values(&["a"]).inc_by(4);
        assert_eq!(total(&counter), 4);
    }

    #[test]
    fn rss_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(rss_bytes().is_some_and(|b| b > 0));
        }
    }
}
