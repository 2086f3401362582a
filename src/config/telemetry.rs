//! Telemetry: log format (traces use the standard OTEL_* variables).

use super::*;

/// Telemetry: log format (traces use the standard OTEL_* variables).
#[derive(Debug, Clone, clap::Args)]
pub struct TelemetryArgs {
    /// `text` or `json` (`--log-format json`), on stderr; filter with `RUST_LOG` (default `info`,
    /// e.g. `RUST_LOG=info,switchboard=debug`); see [Observability](docs/OPERATIONS.md)
    #[arg(help_heading = "Telemetry", long, env = "SWITCHBOARD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}
