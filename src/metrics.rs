//! Prometheus metrics of one node, in its own registry (so two nodes in one test process
//! do not share counters). Labels are what operators filter on; never user ids or channel names.
//!
//! Counters hit for every message (messages in and out, rate-limit refusals) are resolved to
//! their labelled child once and kept, so the hot path pays an atomic add, not a label lookup.
//! What is cheaper to read than to maintain (outgoing queue depth, pool usage, the runtime's
//! busy share) is sampled when `/metrics` is scraped ([`Metrics::scrape`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::outbox::{CloseReason, Queued};

/// How often the event-loop watch wakes to measure its own lateness.
const LAG_INTERVAL: Duration = Duration::from_millis(100);

/// The kind of client: the `protocol` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Socket.IO over Engine.IO, both namespaces.
    SocketIo = 0,
    /// The plain JSON WebSocket protocol.
    Json = 1,
}

impl Protocol {
    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Self::SocketIo => "socketio",
            Self::Json => "json",
        }
    }
}

/// A refusing rate limit: the `limit` label of `rate_limited_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// Connection attempts per client address.
    ConnectIp = 0,
    /// Subscribe requests per socket.
    Subscribe = 1,
    /// HTTP API calls per key.
    ApiKey = 2,
    /// Events waiting for the back-end per socket.
    Forward = 3,
    /// Frames per plain WebSocket socket.
    WsFrame = 4,
    /// Typing states started per plain WebSocket socket.
    Typing = 5,
    /// Wrong API or admin keys per client address.
    FailedAuth = 6,
    /// Packets per Socket.IO session.
    Event = 7,
}

impl Limit {
    const ALL: [Limit; 8] = [
        Self::ConnectIp,
        Self::Subscribe,
        Self::ApiKey,
        Self::Forward,
        Self::WsFrame,
        Self::Typing,
        Self::FailedAuth,
        Self::Event,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Self::ConnectIp => "connect_ip",
            Self::Subscribe => "subscribe",
            Self::ApiKey => "api_key",
            Self::Forward => "forward",
            Self::WsFrame => "ws_frame",
            Self::Typing => "typing",
            Self::FailedAuth => "failed_auth",
            Self::Event => "socketio_event",
        }
    }
}

/// Message kinds whose counters are kept resolved; any other kind still counts, through a
/// label lookup.
const KINDS: [&str; 14] = [
    "broadcast",
    "subscribe",
    "unsubscribe",
    "client_event",
    "ping",
    "register",
    "notification",
    "notification_read",
    "typing",
    "event",
    "forward_ok",
    "forward_not_allowed",
    "forward_failed",
    "other",
];

/// A `{protocol, kind}` counter family whose children are resolved on first use and kept.
#[derive(Clone)]
pub struct KindCounters {
    family: IntCounterVec,
    children: Arc<[[OnceLock<IntCounter>; KINDS.len()]; 2]>,
}

impl KindCounters {
    fn new(family: IntCounterVec) -> Self {
        Self {
            family,
            children: Arc::new(Default::default()),
        }
    }

    /// The whole family, for reading (the admin page's totals).
    pub fn family(&self) -> &IntCounterVec {
        &self.family
    }

    /// Adds one.
    pub fn inc(&self, protocol: Protocol, kind: &str) {
        self.inc_by(protocol, kind, 1);
    }

    /// Adds `n`.
    pub fn inc_by(&self, protocol: Protocol, kind: &str, n: u64) {
        match KINDS.iter().position(|k| *k == kind) {
            Some(index) => self.children[protocol as usize][index]
                .get_or_init(|| self.family.with_label_values(&[protocol.label(), kind]))
                .inc_by(n),
            None => self
                .family
                .with_label_values(&[protocol.label(), kind])
                .inc_by(n),
        }
    }
}

/// What a component talking to Redis reports: whether its last call succeeded, and failures.
#[derive(Clone)]
pub struct RedisHealth {
    /// 1 after a call that succeeded, 0 after one that failed.
    pub up: IntGauge,
    /// Failed or timed-out calls.
    pub errors: IntCounter,
}

impl RedisHealth {
    /// Records a call's outcome.
    pub fn record<T, E>(&self, result: &Result<T, E>) {
        self.up.set(i64::from(result.is_ok()));
        if result.is_err() {
            self.errors.inc();
        }
    }
}

/// The event-loop watch's findings; the watch task holds them weakly and stops with the metrics.
struct Lag {
    histogram: Histogram,
    /// Largest lateness since the last scrape, in nanoseconds.
    max_nanos: AtomicU64,
}

/// The runtime's total worker busy time at the last scrape.
struct BusySample {
    at: Instant,
    busy: Duration,
}

/// Every metric the node exports; cloning shares them.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    connections: IntGaugeVec,
    connections_opened: IntCounterVec,
    connections_closed: IntCounterVec,
    handshake: [Histogram; 2],
    /// Socket-to-channel subscriptions on this node.
    pub subscriptions: IntGauge,
    /// Channels with at least one local subscriber.
    pub channels: IntGauge,
    /// Messages received from clients, by protocol and kind.
    pub messages_in: KindCounters,
    /// Messages queued to clients, by protocol and kind.
    pub messages_out: KindCounters,
    /// Envelopes published to the bus.
    pub bus_publishes: IntCounter,
    /// Envelopes received from the bus.
    pub bus_receives: IntCounter,
    /// Bus failures, by operation.
    pub bus_errors: IntCounterVec,
    /// Local recipients per bus message.
    pub fanout: Histogram,
    /// Seconds from a bus envelope's arrival to its frames queued to every local recipient.
    pub delivery_latency: Histogram,
    /// Broadcast frames written by the delivering task itself rather than the socket's.
    pub direct_writes: IntCounter,
    slow_consumers: IntCounter,
    outgoing_queue_frames: IntGauge,
    outgoing_queue_bytes: IntGauge,
    runtime_alive_tasks: IntGauge,
    rate_limited: [IntCounter; Limit::ALL.len()],
    /// Refused tokens, by reason.
    pub auth_failures: IntCounterVec,
    /// Protocol and input errors, by kind.
    pub errors: IntCounterVec,
    /// HTTP API calls, by route and status.
    pub api_requests: IntCounterVec,
    /// HTTP API call durations, by route.
    pub api_duration: HistogramVec,
    redis_up: IntGaugeVec,
    redis_errors: IntCounterVec,
    redis_pool: IntGaugeVec,
    /// Live nodes in the cluster (set by the cluster heartbeat; 1 without Redis).
    pub cluster_nodes: IntGauge,
    /// Notifications stored (one per recipient).
    pub notifications_created: IntCounter,
    /// Notifications delivered in-app for the first time (acknowledged or marked delivered).
    pub notifications_delivered: IntCounter,
    /// Notifications marked read.
    pub notifications_read: IntCounter,
    /// Seconds from a notification's creation to its first in-app delivery.
    pub notification_delivery_seconds: Histogram,
    /// Failed or timed-out notification database operations, by operation.
    pub database_errors: IntCounterVec,
    /// Notification operations holding a database connection now.
    pub database_in_use: IntGauge,
    /// Webhook events the application accepted, by event.
    pub webhook_events: IntCounterVec,
    /// Webhook failures, by kind (`retry`, `refused`, `given_up`, `queue_full`).
    pub webhook_failures: IntCounterVec,
    database_pool: IntGaugeVec,
    runtime_busy_ratio: Gauge,
    busy: Arc<Mutex<Option<BusySample>>>,
    lag: Arc<Lag>,
    lag_max: Gauge,
}

/// Registers metrics in one registry, turning each into its typed handle.
struct Builder<'a>(&'a Registry);

impl Builder<'_> {
    fn add<M: prometheus::core::Collector + Clone + 'static>(
        &self,
        metric: Result<M, prometheus::Error>,
    ) -> Result<M, prometheus::Error> {
        let metric = metric?;
        self.0.register(Box::new(metric.clone()))?;
        Ok(metric)
    }

    fn counter(&self, name: &str, help: &str) -> Result<IntCounter, prometheus::Error> {
        self.add(IntCounter::new(name, help))
    }

    fn counters(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> Result<IntCounterVec, prometheus::Error> {
        self.add(IntCounterVec::new(Opts::new(name, help), labels))
    }

    fn gauge(&self, name: &str, help: &str) -> Result<IntGauge, prometheus::Error> {
        self.add(IntGauge::new(name, help))
    }

    fn gauges(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> Result<IntGaugeVec, prometheus::Error> {
        self.add(IntGaugeVec::new(Opts::new(name, help), labels))
    }

    fn float_gauge(&self, name: &str, help: &str) -> Result<Gauge, prometheus::Error> {
        self.add(Gauge::new(name, help))
    }

    fn histogram(
        &self,
        name: &str,
        help: &str,
        buckets: &[f64],
    ) -> Result<Histogram, prometheus::Error> {
        self.add(Histogram::with_opts(
            HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        ))
    }

    fn histograms(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
        buckets: &[f64],
    ) -> Result<HistogramVec, prometheus::Error> {
        self.add(HistogramVec::new(
            HistogramOpts::new(name, help).buckets(buckets.to_vec()),
            labels,
        ))
    }
}

/// Buckets for things that take micro- to milliseconds normally and seconds when in trouble.
const FAST_SECONDS: [f64; 14] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
    5.0,
];

impl Metrics {
    /// Registers every metric in a fresh registry.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("switchboard".into()), None)?;
        let b = Builder(&registry);
        let connections = b.gauges(
            "connections",
            "Open client sessions",
            &["transport", "protocol"],
        )?;
        let connections_opened = b.counters(
            "connections_opened_total",
            "Client sessions opened",
            &["transport", "protocol"],
        )?;
        // Present at 0 from the start, so sums and rates exist before the first client.
        for (transport, protocol) in [
            ("polling", Protocol::SocketIo),
            ("websocket", Protocol::SocketIo),
            ("websocket", Protocol::Json),
        ] {
            connections.with_label_values(&[transport, protocol.label()]);
            connections_opened.with_label_values(&[transport, protocol.label()]);
        }
        let handshake = b.histograms(
            "handshake_duration_seconds",
            "Seconds from a client's first request to its session being ready (token verified, user admitted)",
            &["protocol"],
            &FAST_SECONDS,
        )?;
        let rate_limited = b.counters(
            "rate_limited_total",
            "Requests refused by a rate limit",
            &["limit"],
        )?;
        let lag = Arc::new(Lag {
            histogram: b.histogram(
                "event_loop_lag_seconds",
                "How late a 100 ms timer wakes: the runtime's scheduling delay",
                &FAST_SECONDS,
            )?,
            max_nanos: AtomicU64::new(0),
        });
        Ok(Self {
            handshake: [Protocol::SocketIo, Protocol::Json]
                .map(|p| handshake.with_label_values(&[p.label()])),
            rate_limited: Limit::ALL.map(|l| rate_limited.with_label_values(&[l.label()])),
            connections,
            connections_opened,
            connections_closed: b.counters(
                "connections_closed_total",
                "Client sessions closed",
                &["protocol", "reason"],
            )?,
            subscriptions: b.gauge("subscriptions", "Socket subscriptions to channels")?,
            channels: b.gauge("channels", "Channels with local subscribers")?,
            messages_in: KindCounters::new(b.counters(
                "messages_in_total",
                "Messages received from clients",
                &["protocol", "kind"],
            )?),
            messages_out: KindCounters::new(b.counters(
                "messages_out_total",
                "Messages queued to clients",
                &["protocol", "kind"],
            )?),
            bus_publishes: b.counter("bus_publishes_total", "Messages published to the bus")?,
            bus_receives: b.counter("bus_receives_total", "Messages received from the bus")?,
            bus_errors: b.counters("bus_errors_total", "Bus failures", &["op"])?,
            fanout: b.histogram(
                "broadcast_fanout",
                "Local sockets reached per bus message",
                &[0.0, 1.0, 10.0, 100.0, 1_000.0, 10_000.0, 100_000.0],
            )?,
            delivery_latency: b.histogram(
                "delivery_latency_seconds",
                "Seconds from a bus message's arrival to its frames queued to every local recipient",
                &FAST_SECONDS,
            )?,
            direct_writes: b.counter(
                "broadcast_direct_writes_total",
                "Broadcast frames written straight to the socket by the delivering task (the rest go through each socket's task)",
            )?,
            slow_consumers: b.counter(
                "slow_consumer_disconnects_total",
                "Sockets dropped for a full send queue",
            )?,
            outgoing_queue_frames: b.gauge(
                "outgoing_queue_frames",
                "Frames waiting in all sockets' send queues",
            )?,
            outgoing_queue_bytes: b.gauge(
                "outgoing_queue_bytes",
                "Bytes of the frames waiting in all sockets' send queues",
            )?,
            runtime_alive_tasks: b.gauge(
                "runtime_alive_tasks",
                "Tasks alive in the node's runtime (a leak shows as growth at a steady load)",
            )?,
            auth_failures: b.counters("auth_failures_total", "Refused tokens", &["reason"])?,
            errors: b.counters("errors_total", "Protocol and input errors", &["kind"])?,
            api_requests: b.counters(
                "http_api_requests_total",
                "HTTP API calls",
                &["route", "status"],
            )?,
            api_duration: b.histograms(
                "http_api_request_duration_seconds",
                "Seconds to answer an HTTP API call",
                &["route"],
                &FAST_SECONDS,
            )?,
            redis_up: b.gauges(
                "redis_up",
                "1 when the component's last Redis call succeeded",
                &["component"],
            )?,
            redis_errors: b.counters(
                "redis_errors_total",
                "Failed or timed-out Redis calls",
                &["component"],
            )?,
            redis_pool: b.gauges(
                "redis_pool_connections",
                "Redis command pool connections",
                &["state"],
            )?,
            cluster_nodes: b.gauge("cluster_nodes", "Live nodes in the cluster")?,
            notifications_created: b.counter(
                "notifications_created_total",
                "Notifications stored, one per recipient",
            )?,
            notifications_delivered: b.counter(
                "notifications_delivered_total",
                "Notifications delivered in-app for the first time",
            )?,
            notifications_read: b.counter(
                "notifications_read_total",
                "Notifications marked read",
            )?,
            notification_delivery_seconds: b.histogram(
                "notification_delivery_seconds",
                "Seconds from a notification's creation to its first in-app delivery",
                &[
                    0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 3_600.0, 86_400.0,
                ],
            )?,
            database_errors: b.counters(
                "database_errors_total",
                "Failed or timed-out notification database operations",
                &["op"],
            )?,
            database_in_use: b.gauge(
                "database_connections_in_use",
                "Notification operations holding a database connection",
            )?,
            webhook_events: b.counters(
                "webhook_events_total",
                "Webhook events the application accepted",
                &["event"],
            )?,
            webhook_failures: b.counters(
                "webhook_failures_total",
                "Webhook batches retried, refused or given up, and events dropped",
                &["kind"],
            )?,
            database_pool: b.gauges(
                "database_pool_connections",
                "Database (MySQL or PostgreSQL) pool connections",
                &["state"],
            )?,
            runtime_busy_ratio: b.float_gauge(
                "runtime_busy_ratio",
                "Share of the runtime workers' time spent busy since the last scrape",
            )?,
            busy: Arc::new(Mutex::new(None)),
            lag,
            lag_max: b.float_gauge(
                "event_loop_lag_max_seconds",
                "Largest event-loop lag since the last scrape",
            )?,
            registry,
        })
    }

    /// Open sessions by transport and protocol, for reading (changed only through
    /// [`Metrics::opened`], [`Metrics::upgraded`] and [`Metrics::closed`]).
    pub fn connections(&self) -> &IntGaugeVec {
        &self.connections
    }

    /// A client session opened.
    pub fn opened(&self, protocol: Protocol, transport: &str) {
        let labels = [transport, protocol.label()];
        self.connections.with_label_values(&labels).inc();
        self.connections_opened.with_label_values(&labels).inc();
    }

    /// A Socket.IO session moved from polling to websocket.
    pub fn upgraded(&self) {
        let protocol = Protocol::SocketIo.label();
        self.connections
            .with_label_values(&["polling", protocol])
            .dec();
        self.connections
            .with_label_values(&["websocket", protocol])
            .inc();
    }

    /// A client session closed; slow consumers are counted apart too.
    pub fn closed(&self, protocol: Protocol, transport: &str, reason: CloseReason) {
        self.connections
            .with_label_values(&[transport, protocol.label()])
            .dec();
        self.connections_closed
            .with_label_values(&[protocol.label(), reason.label()])
            .inc();
        if reason == CloseReason::SlowConsumer {
            self.slow_consumers.inc();
        }
    }

    /// A client's session became ready `elapsed` after its first request.
    pub fn handshake(&self, protocol: Protocol, elapsed: Duration) {
        self.handshake[protocol as usize].observe(elapsed.as_secs_f64());
    }

    /// A rate limit refused something.
    pub fn rate_limited(&self, limit: Limit) {
        self.rate_limited[limit as usize].inc();
    }

    /// The health handles of one Redis user (`bus`, `state`).
    pub fn redis(&self, component: &str) -> RedisHealth {
        RedisHealth {
            up: self.redis_up.with_label_values(&[component]),
            errors: self.redis_errors.with_label_values(&[component]),
        }
    }

    /// Starts watching the runtime: the task that measures how late a periodic timer wakes
    /// (the scheduling delay, like Node's `monitorEventLoopDelay`; it stops with the
    /// metrics), and the baseline of the first scrape's busy share.
    pub fn watch_runtime(&self) {
        let lag = Arc::downgrade(&self.lag);
        tokio::spawn(watch_event_loop(lag));
        self.sample_busy();
    }

    /// Records what is read rather than maintained (`sample`, read by the node from its
    /// parts), then renders every metric in the Prometheus text format.
    pub fn scrape(&self, sample: &Sample) -> String {
        self.outgoing_queue_frames.set(sample.queued.frames as i64);
        self.outgoing_queue_bytes.set(sample.queued.bytes as i64);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            self.runtime_alive_tasks
                .set(runtime.metrics().num_alive_tasks() as i64);
        }
        if let Some(healthy) = sample.bus_healthy {
            self.redis_up
                .with_label_values(&["bus"])
                .set(i64::from(healthy));
        }
        for (gauge, pool) in [
            (&self.redis_pool, &sample.redis_pool),
            (&self.database_pool, &sample.database_pool),
        ] {
            let Some(pool) = pool else { continue };
            for (state, value) in [
                ("in_use", pool.in_use),
                ("idle", pool.idle),
                ("max", pool.max),
            ] {
                gauge.with_label_values(&[state]).set(value as i64);
            }
        }
        if let Some(ratio) = self.sample_busy() {
            self.runtime_busy_ratio.set(ratio);
        }
        let max = self.lag.max_nanos.swap(0, Ordering::AcqRel);
        self.lag_max.set(max as f64 / 1e9);
        self.render()
    }

    /// The runtime workers' busy share since the previous sample, if there was one.
    fn sample_busy(&self) -> Option<f64> {
        let runtime = tokio::runtime::Handle::try_current().ok()?.metrics();
        let workers = runtime.num_workers();
        let busy: Duration = (0..workers)
            .map(|worker| runtime.worker_total_busy_duration(worker))
            .sum();
        let now = Instant::now();
        let mut last = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        let previous = last.replace(BusySample { at: now, busy })?;
        let wall = now.duration_since(previous.at).as_secs_f64() * workers as f64;
        if wall <= 0.0 {
            return None;
        }
        let spent = busy.saturating_sub(previous.busy).as_secs_f64();
        Some((spent / wall).clamp(0.0, 1.0))
    }

    /// The Prometheus text exposition of every metric, as it stands.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding gathered families into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// What a scrape reads from the node's parts at that moment.
#[derive(Debug, Default)]
pub struct Sample {
    /// What waits in every socket's outbox.
    pub queued: Queued,
    /// Whether the Redis bus is connected, when there is one.
    pub bus_healthy: Option<bool>,
    /// The Redis pool's connections, when there is one.
    pub redis_pool: Option<PoolSample>,
    /// The database pool's connections, when there is one.
    pub database_pool: Option<PoolSample>,
}

/// A connection pool's occupancy.
#[derive(Debug, Clone, Copy)]
pub struct PoolSample {
    /// Connections lent out.
    pub in_use: usize,
    /// Connections idle in the pool.
    pub idle: usize,
    /// The pool's limit.
    pub max: usize,
}

async fn watch_event_loop(lag: Weak<Lag>) {
    let mut tick = tokio::time::interval(LAG_INTERVAL);
    // After a stall, measure from the late wake-up rather than firing the missed ticks at once.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let due = tick.tick().await;
        let late = tokio::time::Instant::now().saturating_duration_since(due);
        let Some(lag) = lag.upgrade() else { return };
        lag.histogram.observe(late.as_secs_f64());
        lag.max_nanos
            .fetch_max(late.as_nanos() as u64, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every metric the dashboards, alerts and autoscaler may use: the first word of each
    /// line of deploy/metrics.txt, so that list and this registry cannot drift apart.
    fn contract() -> Vec<&'static str> {
        include_str!("../deploy/metrics.txt")
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(|l| l.split_whitespace().next())
            .collect()
    }

    #[test]
    fn renders_every_contract_name() {
        let m = Metrics::new().expect("metrics");
        // Labelled families appear once they have a series; give each one.
        m.closed(Protocol::Json, "websocket", CloseReason::SlowConsumer);
        m.messages_in.inc(Protocol::Json, "ping");
        m.messages_out.inc_by(Protocol::SocketIo, "broadcast", 3);
        m.bus_errors.with_label_values(&["publish"]).inc();
        m.auth_failures.with_label_values(&["expired"]).inc();
        m.errors.with_label_values(&["protocol"]).inc();
        m.api_requests
            .with_label_values(&["/api/push", "202"])
            .inc();
        m.api_duration
            .with_label_values(&["/api/push"])
            .observe(0.01);
        m.database_errors.with_label_values(&["insert"]).inc();
        m.database_pool.with_label_values(&["idle"]).set(1);
        m.redis_pool.with_label_values(&["idle"]).set(1);
        m.redis("bus").record(&Err::<(), ()>(()));
        m.webhook_events.with_label_values(&["connected"]).inc();
        m.webhook_failures.with_label_values(&["retry"]).inc();
        let text = m.render();
        for name in contract() {
            let full = format!("# TYPE switchboard_{name} ");
            assert!(text.contains(&full), "{full} missing from\n{text}");
        }
        let expect = [
            r#"switchboard_connections{protocol="json",transport="websocket"} -1"#,
            r#"switchboard_connections_closed_total{protocol="json",reason="slow_consumer"} 1"#,
            "switchboard_slow_consumer_disconnects_total 1",
            r#"switchboard_messages_out_total{kind="broadcast",protocol="socketio"} 3"#,
            r#"switchboard_rate_limited_total{limit="connect_ip"} 0"#,
            r#"switchboard_redis_up{component="bus"} 0"#,
            r#"switchboard_redis_errors_total{component="bus"} 1"#,
        ];
        for line in expect {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }

    #[test]
    fn resolved_and_looked_up_kinds_count_alike() {
        let m = Metrics::new().expect("metrics");
        m.messages_in.inc(Protocol::SocketIo, "subscribe");
        m.messages_in.inc(Protocol::SocketIo, "subscribe");
        m.messages_in
            .inc(Protocol::SocketIo, "a_kind_not_in_the_list");
        m.rate_limited(Limit::Typing);
        let text = m.render();
        for line in [
            r#"switchboard_messages_in_total{kind="subscribe",protocol="socketio"} 2"#,
            r#"switchboard_messages_in_total{kind="a_kind_not_in_the_list",protocol="socketio"} 1"#,
            r#"switchboard_rate_limited_total{limit="typing"} 1"#,
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        assert!(
            !text.contains(r#"messages_in_total{kind="subscribe",protocol="json"}"#),
            "a kind never counted for a protocol has no series"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn samples_runtime_busy_share_and_event_loop_lag() {
        let m = Metrics::new().expect("metrics");
        m.watch_runtime();
        // Keep one worker busy for a while: the share must be well above zero.
        let busy = tokio::spawn(async {
            let end = Instant::now() + Duration::from_millis(300);
            while Instant::now() < end {
                std::hint::spin_loop();
            }
        });
        busy.await.expect("busy task");
        // A worker reports its busy time when it parks.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let ratio = m.sample_busy().expect("a previous sample");
        assert!(ratio > 0.2 && ratio <= 1.0, "busy share {ratio}");
        let text = m.render();
        assert!(
            !text.contains("switchboard_event_loop_lag_seconds_count 0\n"),
            "the watch ran:\n{text}"
        );
    }
}
