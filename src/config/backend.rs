//! The back-end bridge: client events forwarded to the application.

use super::*;

/// The back-end bridge: client events forwarded to the application.
#[derive(Debug, Clone, clap::Args)]
pub struct BackendArgs {
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
}

impl BackendArgs {
    /// The bridge, when a URL is set: its secret is required (every forwarded event is
    /// signed).
    pub fn validate(&self) -> Result<Option<Arc<Backend>>, ConfigError> {
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
        Ok(backend)
    }
}
