//! The plain JSON WebSocket endpoint.

use super::*;

/// The plain JSON WebSocket endpoint.
#[derive(Debug, Clone, clap::Args)]
pub struct JsonArgs {
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
}

/// The JSON endpoint's checked settings.
#[derive(Debug, Clone)]
pub struct JsonSettings {
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
}

impl JsonArgs {
    /// Checks the paths (`dev`: the development page's path is taken), the heartbeat and the
    /// rates.
    pub fn validate(&self, dev: bool) -> Result<JsonSettings, ConfigError> {
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
        if dev && ws_paths.iter().any(|p| p == crate::dev::PATH) {
            return Err(ConfigError::new(
                "ws_paths",
                format!("`{}` is --dev's page", crate::dev::PATH),
            ));
        }
        for (name, value) in [
            ("ws_ping_interval", self.ws_ping_interval),
            ("ws_ping_timeout", self.ws_ping_timeout),
            ("typing_timeout", self.typing_timeout),
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
        Ok(JsonSettings {
            ws_paths,
            ws_ping_interval: self.ws_ping_interval,
            ws_ping_timeout: self.ws_ping_timeout,
            ws_max_frame_size: self.ws_max_frame_size,
            ws_frame_rate,
            ws_max_errors: self.ws_max_errors,
            typing_rate,
            typing_timeout: self.typing_timeout,
        })
    }
}
