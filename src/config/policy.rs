//! The channel policy: its file, authorization timeouts and cache.

use super::*;

/// The channel policy: its file, authorization timeouts and cache.
#[derive(Debug, Clone, clap::Args)]
pub struct PolicyArgs {
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
}
