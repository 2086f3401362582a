//! Engine.IO: heartbeat and connect deadline.

use super::*;

/// Engine.IO: heartbeat and connect deadline.
#[derive(Debug, Clone, clap::Args)]
pub struct EngineArgs {
    /// Interval between Engine.IO pings
    #[arg(help_heading = "Engine.IO", long, env = "SWITCHBOARD_PING_INTERVAL", default_value = "25s", value_parser = parse_duration)]
    pub ping_interval: Duration,

    /// Time a client has to answer a ping before it is disconnected
    #[arg(help_heading = "Engine.IO", long, env = "SWITCHBOARD_PING_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub ping_timeout: Duration,

    /// Time a new session has to connect to a namespace before it is closed
    #[arg(help_heading = "Engine.IO", long, env = "SWITCHBOARD_CONNECT_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
}

/// Engine.IO's checked settings.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// Engine.IO ping interval.
    pub ping_interval: Duration,
    /// Engine.IO ping timeout.
    pub ping_timeout: Duration,
    /// Namespace connect timeout.
    pub connect_timeout: Duration,
}

impl EngineArgs {
    /// Checks the heartbeat.
    pub fn validate(&self) -> Result<EngineSettings, ConfigError> {
        if self.ping_interval.is_zero() {
            return Err(ConfigError::new("ping_interval", "must be greater than 0"));
        }
        if self.ping_timeout.is_zero() {
            return Err(ConfigError::new("ping_timeout", "must be greater than 0"));
        }
        Ok(EngineSettings {
            ping_interval: self.ping_interval,
            ping_timeout: self.ping_timeout,
            connect_timeout: self.connect_timeout,
        })
    }
}
