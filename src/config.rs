//! Every setting, its default and its validation, in one place.
//!
//! A setting has one name: the flag `--ping-interval`, the variable `SWITCHBOARD_PING_INTERVAL`
//! and the key `ping_interval` in the `--config` TOML file. Precedence: flag, then variable,
//! then file, then default. [`Args`] is what the user typed; [`Config`] is the checked result
//! the rest of the node reads.

use std::collections::HashSet;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, ValueEnum};
use jsonwebtoken::Algorithm;

use crate::auth::JwtVerifier;
use crate::backend::Backend;
use crate::database::{Database, Statement};
use crate::limit::{Network, Rate};
use crate::policy::{Policy, PolicyConfig, Settings as PolicySettings};
use crate::webhooks::{Kind as WebhookKind, Settings as WebhookSettings};

/// The secret `--dev` signs and verifies tokens with. Public on purpose: never use it in production.
pub const DEV_JWT_SECRET: &str = "switchboard-dev-secret";

/// The HTTP API key a `--dev` node accepts when no API key is configured, so a newcomer's first
/// `curl` works. Public on purpose, like [`DEV_JWT_SECRET`].
pub const DEV_API_KEY: &str = "switchboard-dev-key";

/// Command line, environment and file settings of a node.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "switchboard",
    version,
    about = "Real-time gateway: Socket.IO v4 and WebSocket clients, Redis pub/sub fan-out"
)]
pub struct Args {
    /// TOML file with any of these settings (keys as the flag names, with `_` for `-`)
    #[arg(
        help_heading = "Server",
        long,
        env = "SWITCHBOARD_CONFIG",
        global = true
    )]
    pub config: Option<PathBuf>,

    /// Development mode (never in production): with no JWT key configured, use the public secret
    /// `switchboard-dev-secret`; with no API key, accept the public key `switchboard-dev-key`;
    /// serve a page at `/` that connects and shows events
    #[arg(help_heading = "Server", long, env = "SWITCHBOARD_DEV")]
    pub dev: bool,

    /// Address and port for clients and the API (and metrics and `/admin` without an admin
    /// listener)
    #[arg(
        help_heading = "Server",
        long,
        env = "SWITCHBOARD_LISTEN",
        default_value = "0.0.0.0:6001"
    )]
    pub listen: String,

    /// Address and port serving `/metrics`, `/admin` and `/health?verbose=1`, and only there; keep
    /// it off the internet [default: none; they are served on the client port]
    #[arg(help_heading = "Server", long, env = "SWITCHBOARD_ADMIN_LISTEN")]
    pub admin_listen: Option<String>,

    /// Redis URL for the cluster bus (redis://host:port/db); unset = single node, in-process bus
    #[arg(help_heading = "Redis", long, env = "SWITCHBOARD_REDIS_URL")]
    pub redis_url: Option<String>,

    /// Prefix of every Redis channel name [default: none] (Laravel's is `laravel_database_`)
    #[arg(
        help_heading = "Redis",
        long,
        env = "SWITCHBOARD_REDIS_PREFIX",
        default_value = "",
        hide_default_value = true
    )]
    pub redis_prefix: String,

    /// HMAC secret for HS256/HS384/HS512 tokens
    #[arg(
        help_heading = "Authentication",
        long,
        env = "SWITCHBOARD_JWT_SECRET",
        hide_env_values = true
    )]
    pub jwt_secret: Option<String>,

    /// PEM file with the public key for RS*/PS*/ES*/EdDSA tokens
    #[arg(
        help_heading = "Authentication",
        long,
        env = "SWITCHBOARD_JWT_PUBLIC_KEY"
    )]
    pub jwt_public_key: Option<PathBuf>,

    /// URL of the identity provider's JWKS: its public keys (RS*, PS*, ES*, EdDSA), chosen by the
    /// token's `kid`, fetched at the first token and again for an unknown `kid` (at most once per
    /// 30 s)
    #[arg(
        help_heading = "Authentication",
        long,
        env = "SWITCHBOARD_JWT_JWKS_URL"
    )]
    pub jwt_jwks_url: Option<String>,

    /// The one JWT algorithm accepted [default: HS256 with a secret, RS256 with a public key or
    /// JWKS]
    #[arg(
        help_heading = "Authentication",
        long,
        env = "SWITCHBOARD_JWT_ALGORITHM"
    )]
    pub jwt_algorithm: Option<String>,

    /// Clock skew tolerated on `exp` and `nbf`
    #[arg(help_heading = "Authentication", long, env = "SWITCHBOARD_JWT_LEEWAY", default_value = "5s", value_parser = parse_duration)]
    pub jwt_leeway: Duration,

    /// Comma-separated accepted `iss` values; when set, a token must carry one of them [default: no
    /// check]
    #[arg(
        help_heading = "Authentication",
        long,
        env = "SWITCHBOARD_JWT_ISSUER",
        value_delimiter = ','
    )]
    pub jwt_issuer: Vec<String>,

    /// Comma-separated audiences this node answers to; when set, a token's `aud` must name one
    /// [default: tokens with `aud` refused]
    #[arg(
        help_heading = "Authentication",
        long,
        env = "SWITCHBOARD_JWT_AUDIENCE",
        value_delimiter = ','
    )]
    pub jwt_audience: Vec<String>,

    /// Comma-separated bearer keys for the HTTP API (empty = API refuses every call)
    #[arg(
        help_heading = "Authentication",
        long,
        env = "SWITCHBOARD_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_keys: Vec<String>,

    /// Comma-separated bearer keys for the [admin page](docs/OPERATIONS.md)'s endpoints; unset = the API
    /// keys are the admin keys [default: the API keys]
    #[arg(
        help_heading = "Authentication",
        long,
        env = "SWITCHBOARD_ADMIN_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub admin_keys: Vec<String>,

    /// Comma-separated browser origins allowed to connect; these get CORS with credentials
    /// (cookies), while empty or `*` answers `Access-Control-Allow-Origin: *` without credentials
    /// (enough for socket.io-client's default `withCredentials: false`)
    #[arg(
        help_heading = "Authentication",
        long,
        env = "SWITCHBOARD_ALLOWED_ORIGINS",
        value_delimiter = ','
    )]
    pub allowed_origins: Vec<String>,

    /// This node's name in logs, metrics and Redis keys [default: host name]
    #[arg(help_heading = "Server", long, env = "SWITCHBOARD_NODE_ID")]
    pub node_id: Option<String>,

    /// Interval between Engine.IO pings
    #[arg(help_heading = "Engine.IO", long, env = "SWITCHBOARD_PING_INTERVAL", default_value = "25s", value_parser = parse_duration)]
    pub ping_interval: Duration,

    /// Time a client has to answer a ping before it is disconnected
    #[arg(help_heading = "Engine.IO", long, env = "SWITCHBOARD_PING_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub ping_timeout: Duration,

    /// Time a new session has to connect to a namespace before it is closed
    #[arg(help_heading = "Engine.IO", long, env = "SWITCHBOARD_CONNECT_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub connect_timeout: Duration,

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

    /// JSON sent to every new socket as a `welcome` event (Socket.IO `/`) or a `welcome` frame
    /// (JSON endpoint) right after it connects, as Go socket servers greet their clients; unset =
    /// none
    #[arg(help_heading = "Server", long, env = "SWITCHBOARD_WELCOME")]
    pub welcome: Option<String>,

    /// Arguments of a broadcast on Socket.IO's `/`: `channel-data` (Laravel Echo's `(channel,
    /// data)`) or `data` (plain socket.io-client apps' `socket.on(event, data => …)`); a client
    /// may choose for itself with `broadcastArgs` in its handshake's `auth`
    #[arg(help_heading = "Server", long, env = "SWITCHBOARD_BROADCAST_ARGS", value_enum, default_value_t = BroadcastArgs::ChannelData)]
    pub broadcast_args: BroadcastArgs,

    /// Paths of the plain JSON WebSocket endpoint ([docs/JSON-PROTOCOL.md](docs/JSON-PROTOCOL.md))
    #[arg(
        help_heading = "JSON endpoint",
        long,
        env = "SWITCHBOARD_WS_PATHS",
        value_delimiter = ',',
        default_value = "/ws,/api/community/ws"
    )]
    pub ws_paths: Vec<String>,

    /// Interval between WebSocket ping frames on the JSON endpoint
    #[arg(help_heading = "JSON endpoint", long, env = "SWITCHBOARD_WS_PING_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub ws_ping_interval: Duration,

    /// Time a JSON-endpoint client has to answer a ping frame before it is disconnected
    #[arg(help_heading = "JSON endpoint", long, env = "SWITCHBOARD_WS_PING_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub ws_ping_timeout: Duration,

    /// Largest JSON frame handled; larger ones get `ERROR FRAME_TOO_LARGE` and are dropped as they
    /// arrive, never buffered (above `SWITCHBOARD_MAX_MESSAGE_SIZE` the socket is closed)
    #[arg(
        help_heading = "JSON endpoint",
        long,
        env = "SWITCHBOARD_WS_MAX_FRAME_SIZE",
        default_value_t = 65_536
    )]
    pub ws_max_frame_size: usize,

    /// Frames per second one JSON-endpoint socket may send (0 = no limit)
    #[arg(
        help_heading = "JSON endpoint",
        long,
        env = "SWITCHBOARD_WS_FRAME_RATE",
        default_value_t = 50.0
    )]
    pub ws_frame_rate: f64,

    /// Frames one JSON-endpoint socket may send at once above its rate
    #[arg(
        help_heading = "JSON endpoint",
        long,
        env = "SWITCHBOARD_WS_FRAME_BURST",
        default_value_t = 100.0
    )]
    pub ws_frame_burst: f64,

    /// ERROR frames a JSON-endpoint socket may earn before it is closed with code 1008
    #[arg(
        help_heading = "JSON endpoint",
        long,
        env = "SWITCHBOARD_WS_MAX_ERRORS",
        default_value_t = 20
    )]
    pub ws_max_errors: u32,

    /// TYPING frames per second one socket may send (0 = no limit)
    #[arg(
        help_heading = "JSON endpoint",
        long,
        env = "SWITCHBOARD_TYPING_RATE",
        default_value_t = 2.0
    )]
    pub typing_rate: f64,

    /// A typing state not refreshed or stopped within this time is ended by the server
    #[arg(help_heading = "JSON endpoint", long, env = "SWITCHBOARD_TYPING_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub typing_timeout: Duration,

    /// The application's base URL: client events Switchboard does not handle are POSTed to
    /// `<url>/events` ([back-end bridge](docs/BACKEND.md)); unset = they are refused
    #[arg(
        help_heading = "Back-end bridge",
        long,
        env = "SWITCHBOARD_BACKEND_URL"
    )]
    pub backend_url: Option<String>,

    /// Secret of the HMAC-SHA256 signature on requests to the back-end and webhooks
    #[arg(
        help_heading = "Back-end bridge",
        long,
        env = "SWITCHBOARD_BACKEND_SECRET",
        hide_env_values = true
    )]
    pub backend_secret: Option<String>,

    /// Comma-separated event names or `prefix.*` patterns that are forwarded; others are refused
    /// [default: all]
    #[arg(
        help_heading = "Back-end bridge",
        long,
        env = "SWITCHBOARD_BACKEND_EVENTS",
        value_delimiter = ','
    )]
    pub backend_events: Vec<String>,

    /// Longest the back-end may take to answer a forwarded event
    #[arg(help_heading = "Back-end bridge", long, env = "SWITCHBOARD_BACKEND_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub backend_timeout: Duration,

    /// Forwarded events one socket may have waiting for the back-end
    #[arg(
        help_heading = "Back-end bridge",
        long,
        env = "SWITCHBOARD_BACKEND_MAX_IN_FLIGHT",
        default_value_t = 8
    )]
    pub backend_max_in_flight: u32,

    /// Where webhook batches are POSTed (signed with `SWITCHBOARD_BACKEND_SECRET`, which it then
    /// requires)
    #[arg(help_heading = "Webhooks", long, env = "SWITCHBOARD_WEBHOOK_URL")]
    pub webhook_url: Option<String>,

    /// Comma-separated events sent: `connected`, `disconnected`, `channel_occupied`,
    /// `channel_vacated`, `member_added`, `member_removed` [default: all]
    #[arg(
        help_heading = "Webhooks",
        long,
        env = "SWITCHBOARD_WEBHOOK_EVENTS",
        value_delimiter = ',',
        value_enum
    )]
    pub webhook_events: Vec<WebhookKind>,

    /// Longest a webhook event waits for its batch to fill
    #[arg(help_heading = "Webhooks", long, env = "SWITCHBOARD_WEBHOOK_BATCH_WAIT", default_value = "100ms", value_parser = parse_duration)]
    pub webhook_batch_wait: Duration,

    /// Most webhook events in one request
    #[arg(
        help_heading = "Webhooks",
        long,
        env = "SWITCHBOARD_WEBHOOK_BATCH_MAX",
        default_value_t = 100
    )]
    pub webhook_batch_max: usize,

    /// Longest one webhook request may take
    #[arg(help_heading = "Webhooks", long, env = "SWITCHBOARD_WEBHOOK_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub webhook_timeout: Duration,

    /// Tries after the first before a failed webhook batch is given up (backoff 0.2 s doubling, at
    /// most 30 s)
    #[arg(
        help_heading = "Webhooks",
        long,
        env = "SWITCHBOARD_WEBHOOK_RETRIES",
        default_value_t = 8
    )]
    pub webhook_retries: u32,

    /// Most webhook events waiting to be sent; more are dropped and counted
    #[arg(
        help_heading = "Webhooks",
        long,
        env = "SWITCHBOARD_WEBHOOK_QUEUE",
        default_value_t = 10_000
    )]
    pub webhook_queue: usize,

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

    /// `text` or `json` (`--log-format json`), on stderr; filter with `RUST_LOG` (default `info`,
    /// e.g. `RUST_LOG=info,switchboard=debug`); see [Observability](docs/OPERATIONS.md)
    #[arg(help_heading = "Telemetry", long, env = "SWITCHBOARD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// TOML file with the [channel authorization policy](docs/POLICY.md) [default:
    /// built-in]
    #[arg(help_heading = "Channel policy", long, env = "SWITCHBOARD_POLICY_FILE")]
    pub policy_file: Option<PathBuf>,

    /// Longest an auth callback or a policy query may take; then the subscription is refused as
    /// unavailable
    #[arg(help_heading = "Channel policy", long, env = "SWITCHBOARD_AUTH_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub auth_timeout: Duration,

    /// How long callback and query answers are reused per user and channel (0s = not cached)
    #[arg(help_heading = "Channel policy", long, env = "SWITCHBOARD_AUTH_CACHE_TTL", default_value = "60s", value_parser = parse_duration)]
    pub auth_cache_ttl: Duration,

    /// Most cached authorization answers held at once (a quarter of them, at most 256, per user)
    #[arg(
        help_heading = "Channel policy",
        long,
        env = "SWITCHBOARD_AUTH_CACHE_SIZE",
        default_value_t = 100_000
    )]
    pub auth_cache_size: usize,

    /// Comma-separated headers of a subscribe's `auth.headers` that callback rules forward beside
    /// Authorization, Cookie, X-CSRF-TOKEN, X-XSRF-TOKEN and X-Requested-With
    #[arg(
        help_heading = "Channel policy",
        long,
        env = "SWITCHBOARD_AUTH_FORWARD_HEADERS",
        value_delimiter = ','
    )]
    pub auth_forward_headers: Vec<String>,

    /// `mysql://user:pass@host:3306/db` (MySQL or MariaDB) or `postgres://user:pass@host:5432/db`
    /// (PostgreSQL) for `sql` policy rules and [notifications](docs/NOTIFICATIONS.md); connects on
    /// first use
    #[arg(
        help_heading = "Database and notifications",
        long,
        env = "SWITCHBOARD_DATABASE_URL",
        hide_env_values = true,
        global = true
    )]
    pub database_url: Option<String>,

    /// Apply the database migrations (as `switchboard migrate` does) before serving
    #[arg(
        help_heading = "Database and notifications",
        long,
        env = "SWITCHBOARD_MIGRATE"
    )]
    pub migrate: bool,

    /// Longest a notification read or write may take before it counts as a database outage
    #[arg(help_heading = "Database and notifications", long, env = "SWITCHBOARD_DATABASE_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub database_timeout: Duration,

    /// Query loading a `/notifications` user by id: id, name, email, role, sector_id, is_active
    #[arg(
        help_heading = "Database and notifications",
        long,
        env = "SWITCHBOARD_NOTIFICATIONS_USER_QUERY",
        default_value = "SELECT id, name, email, role, sector_id, is_active FROM users WHERE id = ?"
    )]
    pub notifications_user_query: String,

    /// Query listing the ids of a sector's recipients (`sector_id` of POST /api/notifications)
    #[arg(
        help_heading = "Database and notifications",
        long,
        env = "SWITCHBOARD_NOTIFICATIONS_SECTOR_QUERY",
        default_value = "SELECT id FROM users WHERE sector_id = ? AND is_active"
    )]
    pub notifications_sector_query: String,

    /// Query listing the ids of a role's recipients (`role` of POST /api/notifications; run once
    /// per role when it is a list)
    #[arg(
        help_heading = "Database and notifications",
        long,
        env = "SWITCHBOARD_NOTIFICATIONS_ROLE_QUERY",
        default_value = "SELECT id FROM users WHERE role = ? AND is_active"
    )]
    pub notifications_role_query: String,

    /// Statement marking a notification read in the application's own table, with `:id` and
    /// `:user_id` (e.g. `UPDATE user_notifications SET is_read = TRUE WHERE id = :id AND user_id
    /// = :user_id AND NOT is_read`) [default: Switchboard's `notifications` table]
    #[arg(
        help_heading = "Database and notifications",
        long,
        env = "SWITCHBOARD_NOTIFICATIONS_READ_QUERY"
    )]
    pub notifications_read_query: Option<String>,

    /// Roles whose `/notifications` sockets join the `admin` room, and whose JWT opens the [admin
    /// page](docs/OPERATIONS.md) (case-insensitive)
    #[arg(
        help_heading = "Database and notifications",
        long,
        env = "SWITCHBOARD_NOTIFICATIONS_ADMIN_ROLES",
        value_delimiter = ',',
        default_value = "ADMIN,SUPER_ADMIN"
    )]
    pub notifications_admin_roles: Vec<String>,

    /// What to do instead of serving
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Policy keys (`roles`, `presence`, `channel`) found in the `--config` file, with its path.
    #[arg(skip)]
    pub config_policy: Option<(PathBuf, toml::Table)>,
}

/// Commands other than serving.
#[derive(Debug, Clone, PartialEq, clap::Subcommand)]
pub enum Command {
    /// Apply the SQL migrations of `migrations/` to SWITCHBOARD_DATABASE_URL and exit
    Migrate,
    /// Print a JWT a node with these settings accepts: signed with SWITCHBOARD_JWT_SECRET, or
    /// with `--dev`'s public secret when no key is configured
    Token(TokenArgs),
}

/// What `switchboard token` puts in the token.
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct TokenArgs {
    /// The user id (`sub`)
    #[arg(long)]
    pub sub: String,
    /// The user's display name (`name`)
    #[arg(long)]
    pub name: Option<String>,
    /// How long the token is valid (`exp` is now plus this)
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub ttl: Duration,
    /// Another claim, repeatable, set last (so it may replace any other): the value is JSON when
    /// it parses as JSON (`3`, `true`, `["a"]`), else a string
    #[arg(long = "claim", value_name = "KEY=VALUE", value_parser = parse_claim)]
    pub claims: Vec<(String, serde_json::Value)>,
}

/// Parses `--claim`'s `key=value`.
fn parse_claim(text: &str) -> Result<(String, serde_json::Value), String> {
    let (key, value) = text
        .split_once('=')
        .filter(|(key, _)| !key.trim().is_empty())
        .ok_or_else(|| format!("`{text}` is not key=value"))?;
    let value =
        serde_json::from_str(value).unwrap_or_else(|_| serde_json::Value::String(value.to_owned()));
    Ok((key.trim().to_owned(), value))
}

/// The key `switchboard token` signs with, and the claims a node with the same settings demands.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenKey {
    /// The HMAC secret.
    pub secret: String,
    /// HS256, HS384 or HS512.
    pub algorithm: Algorithm,
    /// The public development secret, because no key is configured.
    pub development: bool,
    /// The first accepted `iss`, when the node checks it.
    pub issuer: Option<String>,
    /// The first accepted `aud`, when the node checks it.
    pub audience: Option<String>,
}

/// Where a node's token keys come from, before anything is read or parsed.
enum KeySource<'a> {
    Secret(&'a str),
    PublicKey(&'a PathBuf),
    Jwks(&'a str),
    /// No key configured: the public development secret, where allowed.
    Development,
}

/// The arguments a broadcast has on Socket.IO's `/` namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BroadcastArgs {
    /// Laravel Echo's convention: `(channel, data)`.
    ChannelData,
    /// The data alone, as `socket.to(channel).emit(event, data)` sends it: `(data)`.
    Data,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// A setting that failed validation: the message names the setting.
#[derive(Debug, thiserror::Error)]
#[error("{setting}: {problem}")]
pub struct ConfigError {
    /// The environment variable of the setting.
    pub setting: String,
    /// What is wrong with it.
    pub problem: String,
}

impl ConfigError {
    fn new(setting: &str, problem: impl Into<String>) -> Self {
        Self {
            setting: format!("SWITCHBOARD_{}", setting.to_uppercase()),
            problem: problem.into(),
        }
    }
}

/// Checked configuration of a node.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen.
    pub listen: SocketAddr,
    /// Where `/metrics`, `/admin` and the verbose health are served, when not on `listen`.
    pub admin_listen: Option<SocketAddr>,
    /// The Redis bus, when clustered.
    pub redis: Option<redis::Client>,
    /// The Redis URL, kept for the command pool.
    pub redis_url: Option<String>,
    /// Prefix of Redis channel names.
    pub redis_prefix: String,
    /// Token verification.
    pub jwt: JwtVerifier,
    /// Whether the public development secret is in use.
    pub dev: bool,
    /// Accepted API keys.
    pub api_keys: Vec<String>,
    /// Keys accepted by the admin endpoints (the API keys when none are configured).
    pub admin_keys: Vec<String>,
    /// Allowed origins; empty means any.
    pub allowed_origins: HashSet<String>,
    /// This node's name.
    pub node_id: String,
    /// Engine.IO ping interval.
    pub ping_interval: Duration,
    /// Engine.IO ping timeout.
    pub ping_timeout: Duration,
    /// Namespace connect timeout.
    pub connect_timeout: Duration,
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
    /// The `welcome` payload new sockets get, if any.
    pub welcome: Option<Box<serde_json::value::RawValue>>,
    /// Broadcast arguments on Socket.IO's `/` unless a client chooses.
    pub broadcast_args: BroadcastArgs,
    /// Paths of the JSON WebSocket endpoint.
    pub ws_paths: Vec<String>,
    /// Ping frame interval on the JSON endpoint.
    pub ws_ping_interval: Duration,
    /// Pong wait on the JSON endpoint.
    pub ws_ping_timeout: Duration,
    /// Largest JSON frame handled.
    pub ws_max_frame_size: usize,
    /// Frames per JSON socket.
    pub ws_frame_rate: Rate,
    /// ERROR frames before a JSON socket is closed.
    pub ws_max_errors: u32,
    /// TYPING frames per socket.
    pub typing_rate: Rate,
    /// Typing state lifetime without refresh.
    pub typing_timeout: Duration,
    /// The back-end bridge, when configured.
    pub backend: Option<Arc<Backend>>,
    /// Webhooks, when configured.
    pub webhooks: Option<WebhookSettings>,
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
    /// Log format.
    pub log_format: LogFormat,
    /// The application's database, when configured; connects on first use.
    pub database: Option<Database>,
    /// Whether to apply the migrations at start.
    pub migrate: bool,
    /// Notification settings.
    pub notifications: NotificationSettings,
    /// Who may join which channel.
    pub policy: Arc<Policy>,
}

/// The settings of the notification store and the `/notifications` namespace.
#[derive(Debug, Clone)]
pub struct NotificationSettings {
    /// Longest one database operation may take.
    pub timeout: Duration,
    /// Loads a user by id: id, name, email, role, sector_id, is_active.
    pub user_query: Statement,
    /// Recipient ids of a sector.
    pub sector_query: Statement,
    /// Recipient ids of a role.
    pub role_query: Statement,
    /// Marks a notification read in the application's table (`:id`, `:user_id`); `None`:
    /// Switchboard's own.
    pub read_query: Option<Statement>,
    /// Roles that join the `admin` room (compared case-insensitively).
    pub admin_roles: Vec<String>,
}

impl NotificationSettings {
    /// Whether `role` is one of the admin roles (case-insensitive).
    pub fn is_admin(&self, role: &str) -> bool {
        self.admin_roles
            .iter()
            .any(|r| r.eq_ignore_ascii_case(role))
    }
}

impl Args {
    /// Parses flags and environment, then fills unset settings from the `--config` file.
    pub fn load_from<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let mut argv: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let matches = Self::command().try_get_matches_from(&argv)?;
        let first = Self::from_arg_matches(&matches)?;
        let Some(path) = first.config.clone() else {
            return Ok(first);
        };
        let text = std::fs::read_to_string(&path).map_err(|e| {
            Self::command().error(
                clap::error::ErrorKind::Io,
                format!("SWITCHBOARD_CONFIG: cannot read {}: {e}", path.display()),
            )
        })?;
        let table: toml::Table = text.parse().map_err(|e| {
            Self::command().error(
                clap::error::ErrorKind::InvalidValue,
                format!(
                    "SWITCHBOARD_CONFIG: {} is not valid TOML: {e}",
                    path.display()
                ),
            )
        })?;
        let known: HashSet<String> = Self::command()
            .get_arguments()
            .map(|a| a.get_id().to_string())
            .collect();
        let mut policy = toml::Table::new();
        let mut from_file: Vec<OsString> = Vec::new();
        for (key, value) in table {
            // The policy may live in this file too; it is checked with the policy file's rules.
            if PolicyConfig::KEYS.contains(&key.as_str()) {
                policy.insert(key, value);
                continue;
            }
            if !known.contains(&key) || key == "config" || key == "command" {
                return Err(Self::command().error(
                    clap::error::ErrorKind::UnknownArgument,
                    format!(
                        "SWITCHBOARD_CONFIG: unknown setting `{key}` in {}",
                        path.display()
                    ),
                ));
            }
            // Flags and variables win over the file.
            if !matches!(
                matches.value_source(&key),
                None | Some(ValueSource::DefaultValue)
            ) {
                continue;
            }
            let flag = format!("--{}", key.replace('_', "-"));
            match value {
                toml::Value::Boolean(true) => from_file.push(flag.into()),
                toml::Value::Boolean(false) => {}
                toml::Value::String(s) => from_file.push(format!("{flag}={s}").into()),
                toml::Value::Integer(i) => from_file.push(format!("{flag}={i}").into()),
                toml::Value::Array(items) => {
                    let joined: Vec<String> = items
                        .iter()
                        .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
                        .collect();
                    from_file.push(format!("{flag}={}", joined.join(",")).into());
                }
                other => {
                    return Err(Self::command().error(
                        clap::error::ErrorKind::InvalidValue,
                        format!("SWITCHBOARD_CONFIG: `{key}` cannot be {}", other.type_str()),
                    ));
                }
            }
        }
        // Before any subcommand, whose name must come after the top-level flags.
        let at = argv.len().min(1);
        argv.splice(at..at, from_file);
        let mut args = Self::try_parse_from(argv)?;
        if !policy.is_empty() {
            args.config_policy = Some((path, policy));
        }
        Ok(args)
    }

    /// Checks every setting and resolves keys, URLs and names.
    pub fn validate(self) -> Result<Config, ConfigError> {
        let listen: SocketAddr = self.listen.parse().map_err(|e| {
            ConfigError::new(
                "listen",
                format!("`{}` is not host:port ({e})", self.listen),
            )
        })?;
        let admin_listen = match self.admin_listen.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(text) => Some(text.parse::<SocketAddr>().map_err(|e| {
                ConfigError::new("admin_listen", format!("`{text}` is not host:port ({e})"))
            })?),
        };
        if admin_listen.is_some_and(|admin| admin.port() != 0 && admin.port() == listen.port()) {
            return Err(ConfigError::new(
                "admin_listen",
                "must be another port than SWITCHBOARD_LISTEN's",
            ));
        }

        let database = self.database()?;
        if self.migrate && database.is_none() {
            return Err(ConfigError::new(
                "migrate",
                "needs SWITCHBOARD_DATABASE_URL",
            ));
        }
        let notifications = self.notification_settings()?;
        let redis_url = self.redis_url.clone().filter(|u| !u.trim().is_empty());
        let redis = redis_url
            .as_deref()
            .map(|url| {
                redis::Client::open(url).map_err(|e| {
                    ConfigError::new(
                        "redis_url",
                        format!("cannot use `{}`: {e}", redact_url(url)),
                    )
                })
            })
            .transpose()?;
        let policy = Arc::new(self.policy(database.clone(), redis.clone())?);
        let jwt = self.jwt()?.with_retained_claims(policy.retained_claims());
        if self
            .redis_prefix
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(ConfigError::new(
                "redis_prefix",
                "must not contain spaces or control characters",
            ));
        }

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
        if self.ping_interval.is_zero() {
            return Err(ConfigError::new("ping_interval", "must be greater than 0"));
        }
        if self.ping_timeout.is_zero() {
            return Err(ConfigError::new("ping_timeout", "must be greater than 0"));
        }
        if self.body_timeout.is_zero() {
            return Err(ConfigError::new("body_timeout", "must be greater than 0"));
        }
        if self.write_timeout.is_zero() {
            return Err(ConfigError::new("write_timeout", "must be greater than 0"));
        }
        if self.auth_timeout.is_zero() {
            return Err(ConfigError::new("auth_timeout", "must be greater than 0"));
        }
        if !(0.0..=1.0).contains(&self.direct_write_share) {
            return Err(ConfigError::new(
                "direct_write_share",
                format!("{} is not between 0 and 1", self.direct_write_share),
            ));
        }

        let keys = |keys: Vec<String>| -> Vec<String> {
            keys.into_iter()
                .map(|k| k.trim().to_owned())
                .filter(|k| !k.is_empty())
                .collect()
        };
        let api_keys = keys(self.api_keys);
        let admin_keys = match keys(self.admin_keys) {
            admin if admin.is_empty() => api_keys.clone(),
            admin => admin,
        };
        // Only a --dev node with no key of its own takes the public key, and for the API only:
        // the admin endpoints stay behind the keys the operator configured.
        let api_keys = if self.dev && api_keys.is_empty() {
            vec![DEV_API_KEY.to_owned()]
        } else {
            api_keys
        };
        let allowed_origins = self
            .allowed_origins
            .iter()
            .map(|o| o.trim().trim_end_matches('/').to_owned())
            .filter(|o| !o.is_empty())
            .collect();
        let node_id = match self.node_id.filter(|n| !n.trim().is_empty()) {
            Some(id)
                if id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c)) =>
            {
                id
            }
            Some(id) => {
                return Err(ConfigError::new(
                    "node_id",
                    format!("`{id}` may contain only letters, digits and - _ . :"),
                ));
            }
            None => host_name(),
        };

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
        let ws_frame_rate = rate(
            ("ws_frame_rate", self.ws_frame_rate),
            ("ws_frame_burst", self.ws_frame_burst),
        )?;
        // A burst of one: a client typing refreshes its state every few seconds at most.
        let typing_rate = rate(("typing_rate", self.typing_rate), ("typing_rate", 1.0))?;
        let ws_paths: Vec<String> = self
            .ws_paths
            .iter()
            .map(|p| p.trim().to_owned())
            .filter(|p| !p.is_empty())
            .collect();
        if let Some(bad) = ws_paths.iter().find(|p| {
            !p.starts_with('/') || p.starts_with("/socket.io") || p.contains(['{', '}', '*'])
        }) {
            return Err(ConfigError::new(
                "ws_paths",
                format!("`{bad}` must start with / and not be /socket.io or contain {{ }} *"),
            ));
        }
        if self.dev && ws_paths.iter().any(|p| p == crate::dev::PATH) {
            return Err(ConfigError::new(
                "ws_paths",
                format!("`{}` is --dev's page", crate::dev::PATH),
            ));
        }
        for (name, value) in [
            ("ws_ping_interval", self.ws_ping_interval),
            ("ws_ping_timeout", self.ws_ping_timeout),
            ("typing_timeout", self.typing_timeout),
            ("message_timeout", self.message_timeout),
        ] {
            if value.is_zero() {
                return Err(ConfigError::new(name, "must be greater than 0"));
            }
        }
        if self.ws_max_frame_size == 0 {
            return Err(ConfigError::new(
                "ws_max_frame_size",
                "must be greater than 0",
            ));
        }
        let api_rate = rate(("api_rate", self.api_rate), ("api_burst", self.api_burst))?;
        let welcome = self
            .welcome
            .map(|text| serde_json::value::RawValue::from_string(text.trim().to_owned()))
            .transpose()
            .map_err(|e| ConfigError::new("welcome", format!("not JSON: {e}")))?;
        let backend_secret = self.backend_secret.as_deref().filter(|s| !s.is_empty());
        let backend = match self.backend_url.as_deref().filter(|u| !u.trim().is_empty()) {
            None => None,
            Some(url) => {
                let secret = backend_secret.ok_or_else(|| {
                    ConfigError::new(
                        "backend_secret",
                        "is required with SWITCHBOARD_BACKEND_URL: every forwarded event is signed",
                    )
                })?;
                if self.backend_max_in_flight == 0 {
                    return Err(ConfigError::new(
                        "backend_max_in_flight",
                        "must be greater than 0",
                    ));
                }
                let events = self
                    .backend_events
                    .iter()
                    .map(|e| e.trim().to_owned())
                    .filter(|e| !e.is_empty())
                    .collect();
                let backend = Backend::new(
                    url,
                    secret,
                    events,
                    self.backend_timeout,
                    self.backend_max_in_flight,
                )
                .map_err(|e| {
                    ConfigError::new("backend_url", format!("`{}`: {e}", redact_url(url)))
                })?;
                Some(Arc::new(backend))
            }
        };
        let webhooks = match self.webhook_url.as_deref().filter(|u| !u.trim().is_empty()) {
            None => None,
            Some(url) => {
                let secret = backend_secret.ok_or_else(|| {
                    ConfigError::new(
                        "backend_secret",
                        "is required with SWITCHBOARD_WEBHOOK_URL: every webhook is signed",
                    )
                })?;
                let parsed = reqwest::Url::parse(url.trim())
                    .ok()
                    .filter(|u| matches!(u.scheme(), "http" | "https"))
                    .ok_or_else(|| {
                        ConfigError::new(
                            "webhook_url",
                            format!("`{}`: must be an http:// or https:// URL", redact_url(url)),
                        )
                    })?;
                for (name, value) in [
                    ("webhook_batch_max", self.webhook_batch_max),
                    ("webhook_queue", self.webhook_queue),
                ] {
                    if value == 0 {
                        return Err(ConfigError::new(name, "must be greater than 0"));
                    }
                }
                Some(WebhookSettings {
                    url: parsed,
                    secret: secret.as_bytes().into(),
                    events: self.webhook_events.clone(),
                    batch_wait: self.webhook_batch_wait,
                    batch_max: self.webhook_batch_max,
                    timeout: self.webhook_timeout,
                    retries: self.webhook_retries,
                    queue: self.webhook_queue,
                })
            }
        };
        let trusted_proxies = self
            .trusted_proxies
            .iter()
            .filter(|p| !p.trim().is_empty())
            .map(|p| {
                p.parse()
                    .map_err(|e| ConfigError::new("trusted_proxies", e))
            })
            .collect::<Result<_, _>>()?;

        Ok(Config {
            listen,
            admin_listen,
            redis,
            redis_url,
            redis_prefix: self.redis_prefix,
            jwt,
            dev: self.dev,
            api_keys,
            admin_keys,
            allowed_origins,
            node_id,
            ping_interval: self.ping_interval,
            ping_timeout: self.ping_timeout,
            connect_timeout: self.connect_timeout,
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
            welcome,
            broadcast_args: self.broadcast_args,
            ws_paths,
            ws_ping_interval: self.ws_ping_interval,
            ws_ping_timeout: self.ws_ping_timeout,
            ws_max_frame_size: self.ws_max_frame_size,
            ws_frame_rate,
            ws_max_errors: self.ws_max_errors,
            typing_rate,
            typing_timeout: self.typing_timeout,
            backend,
            webhooks,
            api_rate,
            presence_ttl: self.presence_ttl,
            max_connections_per_user: self.max_connections_per_user,
            connect_rate,
            subscribe_rate,
            event_rate,
            trusted_proxies,
            log_format: self.log_format,
            database,
            migrate: self.migrate,
            notifications,
            policy,
        })
    }

    /// The database pool of `--database-url`, if one is given (connects on first use).
    pub fn database(&self) -> Result<Option<Database>, ConfigError> {
        self.database_url
            .as_deref()
            .filter(|u| !u.trim().is_empty())
            .map(|url| {
                Database::from_url(url).map_err(|e| {
                    ConfigError::new(
                        "database_url",
                        format!("cannot use `{}`: {e}", redact_url(url)),
                    )
                })
            })
            .transpose()
    }

    fn notification_settings(&self) -> Result<NotificationSettings, ConfigError> {
        if self.database_timeout.is_zero() {
            return Err(ConfigError::new(
                "database_timeout",
                "must be greater than 0",
            ));
        }
        let one_mark = |name: &str, query: &str| {
            Statement::parse(query)
                .ok()
                .filter(|s| s.arity() == 1 && s.names().is_empty())
                .ok_or_else(|| {
                    ConfigError::new(
                        name,
                        "must use exactly one `?` parameter (the id, sector or role)",
                    )
                })
        };
        let read_query = self
            .notifications_read_query
            .as_deref()
            .map(|query| {
                let fail = |why: String| ConfigError::new("notifications_read_query", why);
                let statement = Statement::parse(query).map_err(fail)?;
                let mut names: Vec<&str> = statement.names().iter().map(String::as_str).collect();
                names.sort_unstable();
                if names != ["id", "user_id"] {
                    return Err(fail(
                        "must use `:id` and `:user_id` (the notification and its user), no other parameter".into(),
                    ));
                }
                Ok(statement)
            })
            .transpose()?;
        Ok(NotificationSettings {
            timeout: self.database_timeout,
            user_query: one_mark("notifications_user_query", &self.notifications_user_query)?,
            sector_query: one_mark(
                "notifications_sector_query",
                &self.notifications_sector_query,
            )?,
            role_query: one_mark("notifications_role_query", &self.notifications_role_query)?,
            read_query,
            admin_roles: self
                .notifications_admin_roles
                .iter()
                .map(|r| r.trim().to_owned())
                .filter(|r| !r.is_empty())
                .collect(),
        })
    }

    /// The policy from `--policy-file` or the `--config` file (not both), else the built-in one.
    fn policy(
        &self,
        database: Option<Database>,
        redis: Option<redis::Client>,
    ) -> Result<Policy, ConfigError> {
        let (setting, path, loaded) = match (&self.policy_file, &self.config_policy) {
            (Some(file), Some((config, _))) => {
                return Err(ConfigError::new(
                    "policy_file",
                    format!(
                        "both {} and {} define the channel policy; keep `roles`, `default`, `[presence]` and `[[channel]]` in one of them",
                        file.display(),
                        config.display()
                    ),
                ));
            }
            (Some(file), None) => {
                let loaded = std::fs::read_to_string(file)
                    .map_err(|e| format!("cannot read it: {e}"))
                    .and_then(|text| PolicyConfig::from_toml(&text));
                ("policy_file", Some(file), loaded)
            }
            (None, Some((config, table))) => (
                "config",
                Some(config),
                PolicyConfig::from_table(table.clone()),
            ),
            (None, None) => ("policy_file", None, Ok(PolicyConfig::default())),
        };
        let fail = |problem: String| {
            ConfigError::new(
                setting,
                match path {
                    Some(path) => format!("{}: {problem}", path.display()),
                    None => problem,
                },
            )
        };
        let settings = PolicySettings {
            timeout: self.auth_timeout,
            cache_ttl: self.auth_cache_ttl,
            cache_size: self.auth_cache_size,
            database,
            redis: redis.map(|client| (client, self.redis_prefix.clone())),
            forward_headers: self
                .auth_forward_headers
                .iter()
                .map(|name| name.trim())
                .filter(|name| !name.is_empty())
                .map(|name| {
                    reqwest::header::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                        ConfigError::new(
                            "auth_forward_headers",
                            format!("`{name}` is not a header name"),
                        )
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        Policy::new(loaded.map_err(fail)?, settings).map_err(fail)
    }

    /// The one algorithm tokens must use, when configured.
    fn jwt_algorithm(&self) -> Result<Option<Algorithm>, ConfigError> {
        self.jwt_algorithm
            .as_deref()
            .map(|name| {
                name.trim()
                    .to_uppercase()
                    .parse::<Algorithm>()
                    .map_err(|_| {
                        ConfigError::new("jwt_algorithm", format!("unknown algorithm `{name}`"))
                    })
            })
            .transpose()
    }

    /// Which key the settings name; more than one is refused.
    fn key_source(&self) -> Result<KeySource<'_>, ConfigError> {
        let secret = self.jwt_secret.as_deref().filter(|s| !s.is_empty());
        let jwks = self
            .jwt_jwks_url
            .as_deref()
            .filter(|s| !s.trim().is_empty());
        match (secret, &self.jwt_public_key, jwks) {
            (Some(_), Some(_), _) => Err(ConfigError::new(
                "jwt_secret",
                "set either SWITCHBOARD_JWT_SECRET or SWITCHBOARD_JWT_PUBLIC_KEY, not both",
            )),
            (Some(_), None, Some(_)) | (None, Some(_), Some(_)) => Err(ConfigError::new(
                "jwt_jwks_url",
                "set one of SWITCHBOARD_JWT_SECRET, SWITCHBOARD_JWT_PUBLIC_KEY and SWITCHBOARD_JWT_JWKS_URL",
            )),
            (None, None, Some(url)) => Ok(KeySource::Jwks(url)),
            (Some(secret), None, None) => Ok(KeySource::Secret(secret)),
            (None, Some(path), None) => Ok(KeySource::PublicKey(path)),
            (None, None, None) => Ok(KeySource::Development),
        }
    }

    /// The accepted issuers and audiences, blanks dropped.
    fn issuers_and_audiences(&self) -> (Vec<String>, Vec<String>) {
        let list = |values: &[String]| -> Vec<String> {
            values
                .iter()
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
                .collect()
        };
        (list(&self.jwt_issuer), list(&self.jwt_audience))
    }

    fn jwt(&self) -> Result<JwtVerifier, ConfigError> {
        let algorithm = self.jwt_algorithm()?;
        let verifier = match self.key_source()? {
            KeySource::Jwks(url) => JwtVerifier::jwks(url, algorithm.unwrap_or(Algorithm::RS256))
                .map_err(|e| ConfigError::new("jwt_jwks_url", e))?,
            KeySource::Secret(secret) => {
                JwtVerifier::hmac(secret.as_bytes(), algorithm.unwrap_or(Algorithm::HS256))
                    .map_err(|e| ConfigError::new("jwt_algorithm", e))?
            }
            KeySource::PublicKey(path) => {
                let pem = std::fs::read(path).map_err(|e| {
                    ConfigError::new(
                        "jwt_public_key",
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
                JwtVerifier::public_key(&pem, algorithm.unwrap_or(Algorithm::RS256)).map_err(
                    |e| ConfigError::new("jwt_public_key", format!("{}: {e}", path.display())),
                )?
            }
            KeySource::Development if self.dev => {
                JwtVerifier::hmac(DEV_JWT_SECRET.as_bytes(), Algorithm::HS256)
                    .map_err(|e| ConfigError::new("jwt_algorithm", e))?
            }
            KeySource::Development => {
                return Err(ConfigError::new(
                    "jwt_secret",
                    "no JWT key: set SWITCHBOARD_JWT_SECRET, SWITCHBOARD_JWT_PUBLIC_KEY or SWITCHBOARD_JWT_JWKS_URL (or pass --dev to use a public development secret)",
                ));
            }
        };
        let (issuers, audiences) = self.issuers_and_audiences();
        Ok(verifier
            .with_leeway(self.jwt_leeway)
            .with_issuers(&issuers)
            .with_audiences(&audiences))
    }

    /// What `switchboard token` signs with: the secret and algorithm a node with these settings
    /// verifies with (the public development secret when no key is configured, as `--dev` would
    /// use), and the issuer and audience it demands. A node that verifies with a public key
    /// needs tokens signed by its private key, which it does not have.
    pub fn token_key(&self) -> Result<TokenKey, ConfigError> {
        let algorithm = self.jwt_algorithm()?;
        let (secret, algorithm, development) = match self.key_source()? {
            KeySource::Secret(secret) => (secret, algorithm.unwrap_or(Algorithm::HS256), false),
            KeySource::Development => (DEV_JWT_SECRET, Algorithm::HS256, true),
            KeySource::PublicKey(_) => {
                return Err(ConfigError::new(
                    "jwt_public_key",
                    "tokens are verified with a public key: sign them with its private key",
                ));
            }
            KeySource::Jwks(_) => {
                return Err(ConfigError::new(
                    "jwt_jwks_url",
                    "tokens come from the identity provider: ask it for one",
                ));
            }
        };
        if !matches!(
            algorithm,
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
        ) {
            return Err(ConfigError::new(
                "jwt_algorithm",
                format!("{algorithm:?} does not sign with a secret (use HS256, HS384 or HS512)"),
            ));
        }
        let (issuers, audiences) = self.issuers_and_audiences();
        Ok(TokenKey {
            secret: secret.to_owned(),
            algorithm,
            development,
            issuer: issuers.into_iter().next(),
            audience: audiences.into_iter().next(),
        })
    }
}

/// Formats a command-line error as one line naming the setting's variable, e.g.
/// `SWITCHBOARD_PING_INTERVAL: invalid value 'soon' …`. Help, version and the errors of a
/// subcommand's own arguments (none of them a setting) pass through, with clap's usage lines.
pub fn describe_arg_error(error: &clap::Error) -> Option<String> {
    use clap::error::ErrorKind;
    if matches!(
        error.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion | ErrorKind::MissingRequiredArgument
    ) {
        return None;
    }
    let text = error.to_string();
    let first = text
        .lines()
        .next()
        .unwrap_or_default()
        .trim_start_matches("error: ")
        .to_owned();
    let names_a_setting = matches!(
        error.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation
    );
    let flag = first
        .split("'--")
        .nth(1)
        .and_then(|rest| rest.split([' ', '\'']).next());
    let setting = match flag {
        Some(flag) if names_a_setting => {
            // A subcommand's own flags (`token --ttl`) are no settings: clap's message fits them.
            if !Args::command()
                .get_arguments()
                .any(|a| a.get_long() == Some(flag))
            {
                return None;
            }
            format!("SWITCHBOARD_{}: ", flag.replace('-', "_").to_uppercase())
        }
        _ => String::new(),
    };
    Some(format!("{setting}{first}"))
}

/// Parses `250ms`, `25s`, `2m`, `1h`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration (e.g. 500ms, 25s, 2m)"))?;
    let seconds = match unit.trim() {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "unknown unit `{other}` in `{text}` (use ms, s, m or h)"
            ));
        }
    };
    Ok(Duration::from_secs_f64(seconds))
}

/// A rate with its burst; the burst must allow at least one request when the rate is on.
fn rate(
    (rate_name, per_second): (&str, f64),
    (burst_name, burst): (&str, f64),
) -> Result<Rate, ConfigError> {
    if !per_second.is_finite() || per_second < 0.0 {
        return Err(ConfigError::new(
            rate_name,
            "must be 0 (off) or a positive number",
        ));
    }
    if per_second > 0.0 && !(burst.is_finite() && burst >= 1.0) {
        return Err(ConfigError::new(burst_name, "must be at least 1"));
    }
    Ok(Rate { per_second, burst })
}

/// Hides the password of a URL before it is shown.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

/// The machine's host name, which Kubernetes sets to the pod name.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "switchboard".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Result<Args, clap::Error> {
        let mut argv = vec!["switchboard"];
        argv.extend_from_slice(extra);
        Args::load_from(argv)
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("25s"), Ok(Duration::from_secs(25)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("3 weeks").is_err());
        assert!(parse_duration("fast").is_err());
    }

    #[test]
    fn no_key_without_dev_is_refused() {
        let err = args(&[]).expect("parses").validate().expect_err("no key");
        assert_eq!(err.setting, "SWITCHBOARD_JWT_SECRET");
        assert!(args(&["--dev"]).expect("parses").validate().is_ok());
    }

    #[test]
    fn admin_keys_default_to_the_api_keys() {
        let config = args(&["--dev", "--api-keys", "a, b"])
            .expect("parses")
            .validate()
            .expect("valid");
        assert_eq!(config.admin_keys, ["a", "b"]);
        let config = args(&["--dev", "--api-keys", "a", "--admin-keys", " x ,,y"])
            .expect("parses")
            .validate()
            .expect("valid");
        assert_eq!(config.api_keys, ["a"]);
        assert_eq!(config.admin_keys, ["x", "y"]);
    }

    #[test]
    fn only_a_dev_node_without_api_keys_takes_the_public_dev_key() {
        let valid = |argv: &[&str]| args(argv).expect("parses").validate().expect("valid");
        let config = valid(&["--dev"]);
        assert_eq!(config.api_keys, [DEV_API_KEY]);
        assert!(
            config.admin_keys.is_empty(),
            "the admin endpoints stay shut"
        );
        assert_eq!(valid(&["--dev", "--api-keys", "mine"]).api_keys, ["mine"]);
        let config = valid(&["--jwt-secret", "s"]);
        assert!(config.api_keys.is_empty(), "no key, no API");
    }

    #[test]
    fn a_dev_node_keeps_its_page_path_off_the_json_endpoint() {
        let err = args(&["--dev", "--ws-paths", "/ws,/"])
            .expect("parses")
            .validate()
            .expect_err("/ is the page");
        assert_eq!(err.setting, "SWITCHBOARD_WS_PATHS");
        let config = args(&["--jwt-secret", "s", "--ws-paths", "/"])
            .expect("parses")
            .validate()
            .expect("without --dev, / is free");
        assert_eq!(config.ws_paths, ["/"]);
    }

    #[test]
    fn a_subcommand_argument_error_is_clap_s_own_and_a_setting_s_names_it() {
        for argv in [
            &["token"][..],
            &["token", "--sub", "1", "--ttl", "soon"],
            &["token", "--sub", "1", "--claim", "role"],
        ] {
            let err = args(argv).expect_err("refused");
            assert_eq!(describe_arg_error(&err), None, "{argv:?}");
        }
        let err = args(&["--ping-interval", "soon"]).expect_err("refused");
        let line = describe_arg_error(&err).expect("a setting's error");
        assert!(line.starts_with("SWITCHBOARD_PING_INTERVAL: "), "{line}");
    }

    #[test]
    fn admin_listen_is_off_by_default_and_another_port() {
        let config = args(&["--dev"]).expect("parses").validate().expect("valid");
        assert_eq!(config.admin_listen, None);
        let config = args(&["--dev", "--admin-listen", "127.0.0.1:9601"])
            .expect("parses")
            .validate()
            .expect("valid");
        assert_eq!(config.admin_listen, Some("127.0.0.1:9601".parse().unwrap()));
        for bad in ["nowhere", "0.0.0.0:6001"] {
            let err = args(&["--dev", "--admin-listen", bad])
                .expect("parses")
                .validate()
                .expect_err(bad);
            assert_eq!(err.setting, "SWITCHBOARD_ADMIN_LISTEN", "{bad}");
        }
    }

    #[test]
    fn bad_settings_name_themselves() {
        let err = args(&["--dev", "--redis-url", "nonsense://x"])
            .expect("parses")
            .validate();
        assert_eq!(err.expect_err("bad url").setting, "SWITCHBOARD_REDIS_URL");
        let err = args(&["--jwt-public-key", "/nonexistent.pem"])
            .expect("parses")
            .validate();
        assert_eq!(
            err.expect_err("bad key").setting,
            "SWITCHBOARD_JWT_PUBLIC_KEY"
        );
        let err = args(&["--jwt-secret", "s", "--jwt-algorithm", "none"])
            .expect("parses")
            .validate();
        assert_eq!(
            err.expect_err("bad alg").setting,
            "SWITCHBOARD_JWT_ALGORITHM"
        );
        let err = args(&["--dev", "--listen", "nowhere"])
            .expect("parses")
            .validate();
        assert_eq!(err.expect_err("bad listen").setting, "SWITCHBOARD_LISTEN");
    }

    #[test]
    fn file_fills_unset_settings_only() {
        let dir = std::env::temp_dir().join(format!("sb-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            "dev = true\nmax_subscriptions = 7\nping_interval = \"5s\"\napi_keys = [\"a\", \"b\"]\nredis_prefix = \"p_\"\n",
        )
        .expect("write");
        let path_arg = path.to_string_lossy().into_owned();
        let loaded = args(&["--config", &path_arg, "--redis-prefix", "cli_"]).expect("loads");
        assert!(loaded.dev);
        assert_eq!(loaded.max_subscriptions, 7);
        assert_eq!(loaded.ping_interval, Duration::from_secs(5));
        assert_eq!(loaded.api_keys, vec!["a", "b"]);
        assert_eq!(loaded.redis_prefix, "cli_");

        std::fs::write(&path, "no_such_thing = 1\n").expect("write");
        let err = args(&["--config", &path_arg]).expect_err("unknown key");
        assert!(err.to_string().contains("no_such_thing"));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn policy_from_either_file_but_not_both() {
        let dir = std::env::temp_dir().join(format!("sb-policy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let config = dir.join("c.toml");
        let policy = dir.join("p.toml");
        let (config_arg, policy_arg) = (
            config.to_string_lossy().into_owned(),
            policy.to_string_lossy().into_owned(),
        );
        let rule = "[[channel]]\npattern = \"admin.*\"\nallow = \"claim\"\nclaim = \"rights\"\n";
        std::fs::write(&config, format!("dev = true\n{rule}")).expect("write");
        std::fs::write(&policy, rule).expect("write");

        let from_config = args(&["--config", &config_arg]).expect("loads");
        let validated = from_config.validate().expect("valid");
        assert_eq!(
            validated.policy.retained_claims(),
            ["name", "picture", "rights"]
        );
        let from_file = args(&["--dev", "--policy-file", &policy_arg]).expect("loads");
        assert!(from_file.validate().is_ok());

        let err = args(&["--config", &config_arg, "--policy-file", &policy_arg])
            .expect("loads")
            .validate()
            .expect_err("both");
        assert_eq!(err.setting, "SWITCHBOARD_POLICY_FILE");
        assert!(err.problem.contains(&config_arg) && err.problem.contains(&policy_arg));

        std::fs::write(
            &config,
            "dev = true\n[[channel]]\npattern = \"a\"\nallow = \"x\"\n",
        )
        .expect("write");
        let err = args(&["--config", &config_arg])
            .expect("loads")
            .validate()
            .expect_err("bad rule");
        assert_eq!(err.setting, "SWITCHBOARD_CONFIG");
        assert!(
            err.problem
                .starts_with(&format!("{config_arg}: [[channel]] #1 `a`: ")),
            "{err}"
        );

        // `default` is a policy key there too, checked like the rest.
        std::fs::write(&config, "dev = true\ndefault = \"none\"\n").expect("write");
        let err = args(&["--config", &config_arg])
            .expect("loads")
            .validate()
            .expect_err("bad default");
        assert_eq!(err.setting, "SWITCHBOARD_CONFIG");
        assert!(err.problem.contains("`default = \"none\"`"), "{err}");

        let err = args(&["--dev", "--policy-file", "/nonexistent/p.toml"])
            .expect("loads")
            .validate()
            .expect_err("missing file");
        assert_eq!(err.setting, "SWITCHBOARD_POLICY_FILE");
        assert!(
            err.problem
                .starts_with("/nonexistent/p.toml: cannot read it"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn the_read_query_takes_the_notification_and_its_user() {
        let read = |query: &str| {
            args(&["--dev", "--notifications-read-query", query])
                .expect("parses")
                .validate()
        };
        let config =
            read("UPDATE user_notifications SET is_read = 1 WHERE id = :id AND user_id = :user_id")
                .expect("valid");
        let query = config.notifications.read_query.expect("set");
        assert_eq!(query.names(), ["id", "user_id"]);
        for bad in [
            "UPDATE n SET is_read = 1 WHERE id = :id",
            "UPDATE n SET is_read = 1 WHERE id = ? AND user_id = ?",
            "UPDATE n SET is_read = 1 WHERE id = :id AND user_id = :user_id AND x = :x",
        ] {
            let err = read(bad).expect_err(bad);
            assert_eq!(err.setting, "SWITCHBOARD_NOTIFICATIONS_READ_QUERY", "{bad}");
        }
        let err = args(&[
            "--dev",
            "--notifications-role-query",
            "SELECT id FROM users WHERE role IN (?, ?)",
        ])
        .expect("parses")
        .validate()
        .expect_err("two marks");
        assert_eq!(err.setting, "SWITCHBOARD_NOTIFICATIONS_ROLE_QUERY");
        assert!(
            args(&["--dev"])
                .expect("parses")
                .validate()
                .expect("valid")
                .notifications
                .read_query
                .is_none()
        );
    }

    #[test]
    fn database_url_is_checked_and_redacted() {
        let err = args(&["--dev", "--database-url", "sqlite://u:pw@h/db"])
            .expect("parses")
            .validate()
            .expect_err("neither mysql nor postgres");
        assert_eq!(err.setting, "SWITCHBOARD_DATABASE_URL");
        assert!(!err.problem.contains("pw"), "{err}");
        // Valid and lazy: nothing listens there, yet the configuration is accepted.
        for url in [
            "mysql://u:pw@127.0.0.1:1/db",
            "postgres://u:pw@127.0.0.1:1/db?sslmode=require",
        ] {
            let config = args(&["--dev", "--database-url", url])
                .expect("parses")
                .validate()
                .expect("valid");
            assert!(
                !format!("{config:?}").contains("pw@"),
                "Debug hides the password"
            );
        }
        let err = args(&["--dev", "--auth-timeout", "0s"])
            .expect("parses")
            .validate()
            .expect_err("zero timeout");
        assert_eq!(err.setting, "SWITCHBOARD_AUTH_TIMEOUT");
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("redis://:secret@host:6379"),
            "redis://***@host:6379"
        );
        assert_eq!(redact_url("redis://host"), "redis://host");
    }
}
