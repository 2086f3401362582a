//! Webhooks: events posted to the application.

use super::*;

/// Webhooks: events posted to the application.
#[derive(Debug, Clone, clap::Args)]
pub struct WebhookArgs {
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
}

impl WebhookArgs {
    /// The webhook sender's settings, when a URL is set; `backend_secret` signs them.
    pub fn validate(
        &self,
        backend_secret: Option<&str>,
    ) -> Result<Option<WebhookSettings>, ConfigError> {
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
        Ok(webhooks)
    }
}
