//! Redis: the bus and the shared state.

use super::*;

/// Redis: the bus and the shared state.
#[derive(Debug, Clone, clap::Args)]
pub struct RedisArgs {
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
}

/// Redis's checked settings: the client, its URL for logs, the key prefix.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// The Redis URL, kept for the command pool.
    pub redis_url: Option<String>,
    /// Prefix of Redis channel names.
    pub redis_prefix: String,
}

impl RedisArgs {
    /// Checks the URL and the prefix; returns the settings and a client for the URL (which
    /// connects only when used).
    pub fn validate(&self) -> Result<(RedisSettings, Option<::redis::Client>), ConfigError> {
        let redis_url = self.redis_url.clone().filter(|u| !u.trim().is_empty());
        let redis = redis_url
            .as_deref()
            .map(|url| {
                ::redis::Client::open(url).map_err(|e| {
                    ConfigError::new(
                        "redis_url",
                        format!("cannot use `{}`: {e}", redact_url(url)),
                    )
                })
            })
            .transpose()?;
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
        let settings = RedisSettings {
            redis_url,
            redis_prefix: self.redis_prefix.clone(),
        };
        Ok((settings, redis))
    }
}
