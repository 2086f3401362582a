//! Prometheus metrics of one node, in its own registry (so two nodes in one test process
//! do not share counters). Labels are what operators filter on; never user ids or channel names.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Every metric the node exports; cloning shares them.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Open sessions by transport (`polling`, `websocket`).
    pub connections: IntGaugeVec,
    /// Sessions opened, by transport.
    pub connections_opened: IntCounterVec,
    /// Sessions closed, by reason.
    pub connections_closed: IntCounterVec,
    /// Socket-to-channel subscriptions on this node.
    pub subscriptions: IntGauge,
    /// Channels with at least one local subscriber.
    pub channels: IntGauge,
    /// Messages received from clients, by kind.
    pub messages_in: IntCounterVec,
    /// Messages queued to clients, by kind.
    pub messages_out: IntCounterVec,
    /// Envelopes published to the bus.
    pub bus_publishes: IntCounter,
    /// Envelopes received from the bus.
    pub bus_receives: IntCounter,
    /// Bus failures, by operation.
    pub bus_errors: IntCounterVec,
    /// Local recipients per bus message.
    pub fanout: Histogram,
    /// Sockets disconnected because their queue overflowed.
    pub slow_consumers: IntCounter,
    /// Refused tokens, by reason.
    pub auth_failures: IntCounterVec,
    /// Protocol and input errors, by kind.
    pub errors: IntCounterVec,
    /// HTTP API calls, by route and status.
    pub api_requests: IntCounterVec,
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
}

impl Metrics {
    /// Registers every metric in a fresh registry.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("switchboard".into()), None)?;
        let gauge_vec =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntGaugeVec, prometheus::Error> {
                let m = IntGaugeVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(m.clone()))?;
                Ok(m)
            };
        let counter_vec =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, prometheus::Error> {
                let m = IntCounterVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(m.clone()))?;
                Ok(m)
            };
        let counter = |name: &str, help: &str| -> Result<IntCounter, prometheus::Error> {
            let m = IntCounter::new(name, help)?;
            registry.register(Box::new(m.clone()))?;
            Ok(m)
        };
        let gauge = |name: &str, help: &str| -> Result<IntGauge, prometheus::Error> {
            let m = IntGauge::new(name, help)?;
            registry.register(Box::new(m.clone()))?;
            Ok(m)
        };
        let fanout = Histogram::with_opts(
            HistogramOpts::new("broadcast_fanout", "Local sockets reached per bus message")
                .buckets(vec![0.0, 1.0, 10.0, 100.0, 1_000.0, 10_000.0, 100_000.0]),
        )?;
        registry.register(Box::new(fanout.clone()))?;
        let delivery = Histogram::with_opts(
            HistogramOpts::new(
                "notification_delivery_seconds",
                "Seconds from a notification's creation to its first in-app delivery",
            )
            .buckets(vec![
                0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 3_600.0, 86_400.0,
            ]),
        )?;
        registry.register(Box::new(delivery.clone()))?;

        Ok(Self {
            connections: gauge_vec("connections", "Open client sessions", &["transport"])?,
            connections_opened: counter_vec(
                "connections_opened_total",
                "Client sessions opened",
                &["transport"],
            )?,
            connections_closed: counter_vec(
                "connections_closed_total",
                "Client sessions closed",
                &["reason"],
            )?,
            subscriptions: gauge("subscriptions", "Socket subscriptions to channels")?,
            channels: gauge("channels", "Channels with local subscribers")?,
            messages_in: counter_vec(
                "messages_in_total",
                "Messages received from clients",
                &["kind"],
            )?,
            messages_out: counter_vec(
                "messages_out_total",
                "Messages queued to clients",
                &["kind"],
            )?,
            bus_publishes: counter("bus_publishes_total", "Messages published to the bus")?,
            bus_receives: counter("bus_receives_total", "Messages received from the bus")?,
            bus_errors: counter_vec("bus_errors_total", "Bus failures", &["op"])?,
            fanout,
            slow_consumers: counter(
                "slow_consumer_disconnects_total",
                "Sockets dropped for a full send queue",
            )?,
            auth_failures: counter_vec("auth_failures_total", "Refused tokens", &["reason"])?,
            errors: counter_vec("errors_total", "Protocol and input errors", &["kind"])?,
            api_requests: counter_vec(
                "http_api_requests_total",
                "HTTP API calls",
                &["route", "status"],
            )?,
            notifications_created: counter(
                "notifications_created_total",
                "Notifications stored, one per recipient",
            )?,
            notifications_delivered: counter(
                "notifications_delivered_total",
                "Notifications delivered in-app for the first time",
            )?,
            notifications_read: counter("notifications_read_total", "Notifications marked read")?,
            notification_delivery_seconds: delivery,
            database_errors: counter_vec(
                "database_errors_total",
                "Failed or timed-out notification database operations",
                &["op"],
            )?,
            database_in_use: gauge(
                "database_connections_in_use",
                "Notification operations holding a database connection",
            )?,
            webhook_events: counter_vec(
                "webhook_events_total",
                "Webhook events the application accepted",
                &["event"],
            )?,
            webhook_failures: counter_vec(
                "webhook_failures_total",
                "Webhook batches retried, refused or given up, and events dropped",
                &["kind"],
            )?,
            registry,
        })
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding gathered families into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}
