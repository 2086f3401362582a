//! The command line: one subcommand per scenario, with the settings every scenario shares.

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;

/// The public development secret a node started with `--dev` verifies tokens with.
const DEV_JWT_SECRET: &str = "switchboard-dev-secret";

/// Command line of `switchboard-bench`.
#[derive(Debug, Parser)]
#[command(
    name = "switchboard-bench",
    version,
    about = "Load generator for Switchboard: Socket.IO v4 or plain JSON websocket clients, one JSON summary line on stdout"
)]
pub struct Cli {
    /// The scenario to run.
    #[command(subcommand)]
    pub scenario: Scenario,
}

/// What to measure.
#[derive(Debug, Subcommand)]
pub enum Scenario {
    /// Subscribe N clients, publish at a fixed rate, measure delivery, loss and latency
    Fanout(FanoutArgs),
    /// Run N full handshakes with at most C in flight, measure their rate and latency
    Connect(ConnectArgs),
    /// Hold N subscribed clients open for a while, measure drops and server memory
    Idle(IdleArgs),
    /// Long run of mixed clients with churn, presence and steady deliveries; samples the node's memory, fds and latency
    Soak(SoakArgs),
}

/// Settings shared by every scenario.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// Comma-separated server base URLs (http://host:port); connections go round-robin over them
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:6001")]
    pub url: Vec<String>,

    /// Client connections to open
    #[arg(long, default_value_t = 100)]
    pub connections: usize,

    /// Channels; connection i subscribes to `bench.{i % channels}`
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub channels: u32,

    /// What the clients speak: Socket.IO v4 on /socket.io/, or the plain JSON protocol on /ws
    #[arg(long, value_enum, default_value_t = Protocol::Socketio)]
    pub protocol: Protocol,

    /// Most handshakes in flight at once
    #[arg(long, default_value_t = 100)]
    pub concurrency: usize,

    /// Seconds one handshake (TCP to `subscribed`) may take before it counts as a timeout
    #[arg(long, default_value_t = 10.0)]
    pub timeout: f64,

    /// HMAC secret the HS256 tokens are signed with [default: the server's --dev secret]
    #[arg(long, default_value = DEV_JWT_SECRET, hide_default_value = true)]
    pub jwt_secret: String,

    /// Comma-separated pids of the server processes to measure (CPU and RSS from /proc)
    #[arg(long, value_delimiter = ',')]
    pub server_pid: Vec<u32>,

    /// Tokio worker threads of the bench (1 = a current-thread runtime)
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub threads: u32,

    /// Loopback source addresses 127.0.0.2… to spread connections over [default: enough for at most 20,000 per address]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=250))]
    pub source_addresses: Option<u32>,

    /// Free text copied into the JSON summary
    #[arg(long, default_value = "")]
    pub label: String,
}

/// Settings of the `fanout` scenario.
#[derive(Debug, Clone, Args)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub common: Common,

    /// Messages per second, in total over all channels
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,

    /// Seconds of publishing
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,

    /// Approximate size of each message's JSON data, in bytes
    #[arg(long, default_value_t = 100)]
    pub size: usize,

    /// How messages are published
    #[arg(long, value_enum, default_value_t = Publish::Http)]
    pub publish: Publish,

    /// Redis URL to PUBLISH to (with --publish redis)
    #[arg(long, default_value = "redis://127.0.0.1:6379/")]
    pub redis_url: String,

    /// Prefix of the Redis channel names (the server's --redis-prefix)
    #[arg(long, default_value = "")]
    pub redis_prefix: String,

    /// Bearer key for POST /api/broadcast (with --publish http)
    #[arg(long)]
    pub api_key: Option<String>,

    /// Seconds to wait after publishing for the last deliveries
    #[arg(long, default_value_t = 5.0)]
    pub grace: f64,
}

/// Settings of the `connect` scenario.
#[derive(Debug, Clone, Args)]
pub struct ConnectArgs {
    #[command(flatten)]
    pub common: Common,
}

/// Settings of the `idle` scenario.
#[derive(Debug, Clone, Args)]
pub struct IdleArgs {
    #[command(flatten)]
    pub common: Common,

    /// Seconds to hold the connections open once all are connected
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
}

/// Settings of the `soak` scenario.
#[derive(Debug, Clone, Args)]
#[command(
    mut_arg("connections", |a| a.default_value("19000")),
    mut_arg("channels", |a| a.default_value("100")),
    mut_arg("concurrency", |a| a.default_value("200")),
    // The mix decides what each client speaks.
    mut_arg("protocol", |a| a.hide(true)),
)]
pub struct SoakArgs {
    #[command(flatten)]
    pub common: Common,

    /// Shares of Socket.IO-over-websocket, JSON and Socket.IO-over-polling clients (a polling client holds two connections)
    #[arg(long, default_value = "60,37,3")]
    pub mix: crate::soak::Mix,

    /// Seconds of load once every client has connected
    #[arg(long, default_value_t = 1800.0)]
    pub duration: f64,

    /// Seconds at the start the verdict does not judge growth on
    #[arg(long, default_value_t = 300.0)]
    pub warmup: f64,

    /// Seconds between samples
    #[arg(long, default_value_t = 60.0)]
    pub sample_interval: f64,

    /// Share of the connected clients that close politely and reconnect each second
    #[arg(long, default_value_t = 0.02)]
    pub churn: f64,

    /// Share of the clients that each second subscribe to a new channel `soak.extra.N` and leave the one they held
    #[arg(long, default_value_t = 0.01)]
    pub resubscribe: f64,

    /// Share of the clients that also join one of the presence channels `presence-soak.K` (needs a policy allowing them)
    #[arg(long, default_value_t = 0.1)]
    pub presence: f64,

    /// Presence channels
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub presence_channels: u32,

    /// Deliveries per second to aim for (messages × subscribers of their channel)
    #[arg(long, default_value_t = 50_000.0)]
    pub deliveries: f64,

    /// Approximate size of each message's JSON data, in bytes
    #[arg(long, default_value_t = 100)]
    pub size: usize,

    /// Redis URL to PUBLISH to
    #[arg(long, default_value = "redis://127.0.0.1:6379/")]
    pub redis_url: String,

    /// Prefix of the Redis channel names (the server's --redis-prefix)
    #[arg(long, default_value = "")]
    pub redis_prefix: String,

    /// Seconds to wait after the last publish before the still-connected clients count what they miss
    #[arg(long, default_value_t = 5.0)]
    pub grace: f64,

    /// Growth of RSS and open fds after the warm-up that still passes (0.05 = 5%)
    #[arg(long, default_value_t = 0.05)]
    pub tolerance: f64,
}

/// What the clients speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Socket.IO v4 over websocket (`/socket.io/?EIO=4&transport=websocket`).
    Socketio,
    /// The plain JSON protocol (`/ws?token=…`, `{"type", "payload"}` frames).
    Json,
}

/// The path a published message takes into the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Publish {
    /// `PUBLISH <prefix><channel>` with Laravel's envelope.
    Redis,
    /// `POST /api/broadcast` on the first URL.
    Http,
}

impl Publish {
    /// The name as given on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Publish::Redis => "redis",
            Publish::Http => "http",
        }
    }
}

impl Scenario {
    /// The settings every scenario has.
    pub fn common(&self) -> &Common {
        match self {
            Scenario::Fanout(args) => &args.common,
            Scenario::Connect(args) => &args.common,
            Scenario::Idle(args) => &args.common,
            Scenario::Soak(args) => &args.common,
        }
    }

    /// Client sockets the scenario opens at most, for the file limit.
    pub fn sockets(&self) -> usize {
        match self {
            Scenario::Soak(args) => crate::soak::sockets(args),
            other => other.common().connections,
        }
    }
}

/// Checks a number of seconds given on the command line.
pub fn seconds(flag: &str, value: f64) -> anyhow::Result<std::time::Duration> {
    std::time::Duration::try_from_secs_f64(value)
        .map_err(|_| anyhow::anyhow!("--{flag} must be a non-negative number of seconds"))
}
