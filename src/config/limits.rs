//! Limits and delivery: per-client and per-node bounds, rates, deadlines, write pacing.

use super::*;

/// Limits and delivery: per-client and per-node bounds, rates, deadlines, write pacing.
#[derive(Debug, Clone, clap::Args)]
pub struct LimitArgs {
    /// Sessions one node holds at once; more are refused with 503
    #[arg(
        help_heading = "Limits and delivery",
        long,
        env = "SWITCHBOARD_MAX_CONNECTIONS",
        default_value_t = 100_000
    )]
    pub max_connections: usize,

    /// Socket.IO sessions one client address may hold before they connect a namespace; more
    /// handshakes are refused with 429
    #[arg(
        help_heading = "Limits and delivery",
        long,
        env = "SWITCHBOARD_MAX_UNAUTHENTICATED_PER_ADDRESS",
        default_value_t = 16
    )]
    pub max_unauthenticated_per_address: usize,

    /// HTTP connections one peer address may hold open (a websocket stops counting once upgraded;
    /// `SWITCHBOARD_TRUSTED_PROXIES` are exempt); more are closed at once. All addresses together
    /// may hold twice `SWITCHBOARD_MAX_CONNECTIONS`
    #[arg(
        help_heading = "Limits and delivery",
        long,
        env = "SWITCHBOARD_MAX_HTTP_CONNECTIONS_PER_ADDRESS",
        default_value_t = 256
    )]
    pub max_http_connections_per_address: usize,

    /// Time an HTTP request body (polling POST, API call) has to arrive; a slower one is answered
    /// 408 and its connection closed
    #[arg(help_heading = "Limits and delivery", long, env = "SWITCHBOARD_BODY_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub body_timeout: Duration,

    /// Time an HTTP response (a long poll, say) may make no progress toward a client that does not
    /// read; then its connection is closed (websockets are bounded by their send queue instead)
    #[arg(help_heading = "Limits and delivery", long, env = "SWITCHBOARD_WRITE_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub write_timeout: Duration,

    /// Largest websocket message, polling payload or API body, in bytes (a larger websocket message
    /// is refused from its frame header: close code 1009; until a Socket.IO session has connected
    /// to a namespace its websocket messages are limited to 8 KiB)
    #[arg(
        help_heading = "Limits and delivery",
        long,
        env = "SWITCHBOARD_MAX_MESSAGE_SIZE",
        default_value_t = 1_000_000
    )]
    pub max_message_size: usize,

    /// Time a client has to finish a websocket message once its first byte arrived (then the socket
    /// is closed with code 1008)
    #[arg(help_heading = "Limits and delivery", long, env = "SWITCHBOARD_MESSAGE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub message_timeout: Duration,

    /// Channels one socket may join (its `private-user.{id}` included)
    #[arg(
        help_heading = "Limits and delivery",
        long,
        env = "SWITCHBOARD_MAX_SUBSCRIPTIONS",
        default_value_t = 100
    )]
    pub max_subscriptions: usize,

    /// Longest channel name accepted, in bytes
    #[arg(
        help_heading = "Limits and delivery",
        long,
        env = "SWITCHBOARD_MAX_CHANNEL_LENGTH",
        default_value_t = 200
    )]
    pub max_channel_length: usize,

    /// Bytes queued for one socket before it is disconnected as a slow consumer
    #[arg(help_heading = "Limits and delivery", long, env = "SWITCHBOARD_SEND_QUEUE_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub send_queue_bytes: usize,

    /// Wait this long after a socket's first queued frame before writing, so frames that follow go
    /// out in the same write (less CPU, more latency); 0 = write at once
    #[arg(help_heading = "Limits and delivery", long, env = "SWITCHBOARD_WRITE_DELAY", default_value = "0ms", value_parser = parse_duration)]
    pub write_delay: Duration,

    /// Share of one thread's time broadcasts may spend writing straight to sockets from the task
    /// that received them (one `send` each, no wake-up of the socket's task), judged from the
    /// node's delivery rate and the measured cost of such a write. Above it, and for every message
    /// while Redis has the next one waiting, frames go through the sockets' tasks, which write
    /// several per call when they pile up. `0` = never directly (see docs/BENCHMARKS.md)
    #[arg(
        help_heading = "Limits and delivery",
        long,
        env = "SWITCHBOARD_DIRECT_WRITE_SHARE",
        default_value_t = 0.9
    )]
    pub direct_write_share: f64,

    /// Longest one broadcast writes directly (a direct fan-out does not yield to other tasks); its
    /// remaining recipients are left to their sockets' tasks
    #[arg(help_heading = "Limits and delivery", long, env = "SWITCHBOARD_DIRECT_WRITE_BUDGET", default_value = "100ms", value_parser = parse_duration)]
    pub direct_write_budget: Duration,

    /// Time given to clients to leave on shutdown before the process exits
    #[arg(help_heading = "Limits and delivery", long, env = "SWITCHBOARD_DRAIN_TIME", default_value = "10s", value_parser = parse_duration)]
    pub drain_time: Duration,

    /// HTTP API calls per second per API key (`0` = off); excess gets 429 `rate_limited`
    #[arg(
        help_heading = "Limits and delivery",
        long,
        env = "SWITCHBOARD_API_RATE",
        default_value_t = 100.0
    )]
    pub api_rate: f64,

    /// HTTP API calls one key may make at once above its rate
    #[arg(
        help_heading = "Limits and delivery",
        long,
        env = "SWITCHBOARD_API_BURST",
        default_value_t = 200.0
    )]
    pub api_burst: f64,

    /// How long a node that stopped heart-beating (crash, SIGKILL, partition) keeps its presence
    /// members and connection slots; it heart-beats 4× per TTL
    #[arg(help_heading = "Limits and delivery", long, env = "SWITCHBOARD_PRESENCE_TTL", default_value = "30s", value_parser = parse_duration)]
    pub presence_ttl: Duration,

    /// Sockets one user may have across the whole cluster (`0` = no limit); the next gets `too many
    /// connections`
    #[arg(
        help_heading = "Limits and delivery",
        long,
        env = "SWITCHBOARD_MAX_CONNECTIONS_PER_USER",
        default_value_t = 5
    )]
    pub max_connections_per_user: usize,

    /// Connection attempts per second from one client address (`0` = off); excess gets HTTP 429
    #[arg(
        help_heading = "Limits and delivery",
        long,
        env = "SWITCHBOARD_CONNECT_RATE_PER_IP",
        default_value_t = 100.0
    )]
    pub connect_rate_per_ip: f64,

    /// Attempts one address may make at once above that rate (offices and carriers put many users
    /// behind one address)
    #[arg(
        help_heading = "Limits and delivery",
        long,
        env = "SWITCHBOARD_CONNECT_BURST_PER_IP",
        default_value_t = 200.0
    )]
    pub connect_burst_per_ip: f64,

    /// `subscribe` requests per second from one socket (`0` = off); excess gets `too many subscribe
    /// requests, slow down`
    #[arg(
        help_heading = "Limits and delivery",
        long,
        env = "SWITCHBOARD_SUBSCRIBE_RATE",
        default_value_t = 50.0
    )]
    pub subscribe_rate: f64,

    /// Subscribe requests one socket may make at once above its rate
    #[arg(
        help_heading = "Limits and delivery",
        long,
        env = "SWITCHBOARD_SUBSCRIBE_BURST",
        default_value_t = 100.0
    )]
    pub subscribe_burst: f64,

    /// Socket.IO events, acks and connects per second from one session (`0` = off); an event over
    /// it gets `too many events, slow down` (as its ack, else as an `error` event), a connect a
    /// `connect_error`; after 20 such refusals the session is closed
    #[arg(
        help_heading = "Limits and delivery",
        long,
        env = "SWITCHBOARD_EVENT_RATE",
        default_value_t = 50.0
    )]
    pub event_rate: f64,

    /// Socket.IO packets one session may send at once above that rate (acks of `notification:new`
    /// may burst up to 500)
    #[arg(
        help_heading = "Limits and delivery",
        long,
        env = "SWITCHBOARD_EVENT_BURST",
        default_value_t = 100.0
    )]
    pub event_burst: f64,

    /// Comma-separated addresses or networks (`10.0.0.0/8`) of proxies whose `X-Forwarded-For` /
    /// `X-Real-IP` give the client address; from anyone else those headers are ignored [default:
    /// none]
    #[arg(
        help_heading = "Limits and delivery",
        long,
        env = "SWITCHBOARD_TRUSTED_PROXIES",
        value_delimiter = ','
    )]
    pub trusted_proxies: Vec<String>,
}

/// The checked limits and delivery settings.
#[derive(Debug, Clone)]
pub struct LimitSettings {
    /// Session cap.
    pub max_connections: usize,
    /// Sessions one client address may hold before connecting a namespace.
    pub max_unauthenticated_per_address: usize,
    /// Open HTTP connections one peer address may hold (trusted proxies exempt).
    pub max_http_connections_per_address: usize,
    /// Deadline for reading an HTTP request body.
    pub body_timeout: Duration,
    /// Longest an HTTP response's write may stall.
    pub write_timeout: Duration,
    /// Message and body size cap.
    pub max_message_size: usize,
    /// Time to finish a websocket message.
    pub message_timeout: Duration,
    /// Subscriptions per socket.
    pub max_subscriptions: usize,
    /// Channel name length cap.
    pub max_channel_length: usize,
    /// Outgoing queue cap per socket, in bytes.
    pub send_queue_bytes: usize,
    /// Write-coalescing delay.
    pub write_delay: Duration,
    /// Share of a thread direct writes may take.
    pub direct_write_share: f64,
    /// Longest direct part of one fan-out.
    pub direct_write_budget: Duration,
    /// Shutdown drain time.
    pub drain_time: Duration,
    /// API calls per key.
    pub api_rate: Rate,
    /// Lifetime of a silent node's shared state.
    pub presence_ttl: Duration,
    /// Sockets per user across the cluster; 0 = unlimited.
    pub max_connections_per_user: usize,
    /// Connection attempts per client address.
    pub connect_rate: Rate,
    /// Subscribe requests per socket.
    pub subscribe_rate: Rate,
    /// Socket.IO packets per session.
    pub event_rate: Rate,
    /// Proxies whose forwarding headers are believed.
    pub trusted_proxies: Vec<Network>,
}

impl LimitArgs {
    /// Checks every bound, rate and deadline.
    pub fn validate(&self) -> Result<LimitSettings, ConfigError> {
        for (name, value) in [
            ("max_connections", self.max_connections),
            (
                "max_unauthenticated_per_address",
                self.max_unauthenticated_per_address,
            ),
            (
                "max_http_connections_per_address",
                self.max_http_connections_per_address,
            ),
            ("max_message_size", self.max_message_size),
            ("max_subscriptions", self.max_subscriptions),
            ("max_channel_length", self.max_channel_length),
            ("send_queue_bytes", self.send_queue_bytes),
        ] {
            if value == 0 {
                return Err(ConfigError::new(name, "must be greater than 0"));
            }
        }
        if self.body_timeout.is_zero() {
            return Err(ConfigError::new("body_timeout", "must be greater than 0"));
        }
        if self.write_timeout.is_zero() {
            return Err(ConfigError::new("write_timeout", "must be greater than 0"));
        }
        if !(0.0..=1.0).contains(&self.direct_write_share) {
            return Err(ConfigError::new(
                "direct_write_share",
                format!("{} is not between 0 and 1", self.direct_write_share),
            ));
        }
        if self.message_timeout.is_zero() {
            return Err(ConfigError::new(
                "message_timeout",
                "must be greater than 0",
            ));
        }
        if self.presence_ttl < Duration::from_secs(1) {
            return Err(ConfigError::new("presence_ttl", "must be at least 1s"));
        }
        let connect_rate = rate(
            ("connect_rate_per_ip", self.connect_rate_per_ip),
            ("connect_burst_per_ip", self.connect_burst_per_ip),
        )?;
        let subscribe_rate = rate(
            ("subscribe_rate", self.subscribe_rate),
            ("subscribe_burst", self.subscribe_burst),
        )?;
        let event_rate = rate(
            ("event_rate", self.event_rate),
            ("event_burst", self.event_burst),
        )?;
        let api_rate = rate(("api_rate", self.api_rate), ("api_burst", self.api_burst))?;
        let trusted_proxies = self
            .trusted_proxies
            .iter()
            .filter(|p| !p.trim().is_empty())
            .map(|p| {
                p.parse()
                    .map_err(|e| ConfigError::new("trusted_proxies", e))
            })
            .collect::<Result<_, _>>()?;
        Ok(LimitSettings {
            max_connections: self.max_connections,
            max_unauthenticated_per_address: self.max_unauthenticated_per_address,
            max_http_connections_per_address: self.max_http_connections_per_address,
            body_timeout: self.body_timeout,
            write_timeout: self.write_timeout,
            max_message_size: self.max_message_size,
            message_timeout: self.message_timeout,
            max_subscriptions: self.max_subscriptions,
            max_channel_length: self.max_channel_length,
            send_queue_bytes: self.send_queue_bytes,
            write_delay: self.write_delay,
            direct_write_share: self.direct_write_share,
            direct_write_budget: self.direct_write_budget,
            drain_time: self.drain_time,
            api_rate,
            presence_ttl: self.presence_ttl,
            max_connections_per_user: self.max_connections_per_user,
            connect_rate,
            subscribe_rate,
            event_rate,
            trusted_proxies,
        })
    }
}
