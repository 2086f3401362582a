//! Logs and traces: one `tracing` subscriber for the process.
//!
//! - Logs go to stderr as text or JSON (`--log-format`), filtered by `RUST_LOG` (default
//!   `info`).
//! - Traces are exported over OTLP/HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//!   `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, with the standard `OTEL_*` variables;
//!   otherwise no exporter exists and Switchboard's spans cost one level check each.
//!
//! Switchboard's spans are DEBUG-level, so `RUST_LOG` decides whether they appear as context
//! in log lines, while the exporter takes them whatever `RUST_LOG` says. What a span or a log
//! line may carry: ids, channel and event names, counts, reasons. Never a token, a secret, an
//! API key, an email address or a message body.

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::resource::{EnvResourceDetector, TelemetryResourceDetector};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use tracing::{Level, Metadata};
use tracing_subscriber::filter::{LevelFilter, filter_fn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::config::LogFormat;

/// A layer added to the subscriber beside the log and trace layers (e.g. a ring buffer of
/// recent warnings); give it its own filter with [`Layer::with_filter`].
pub type ExtraLayer = Box<dyn Layer<Registry> + Send + Sync>;

/// The service name when neither `OTEL_SERVICE_NAME` nor `OTEL_RESOURCE_ATTRIBUTES` names one.
const SERVICE_NAME: &str = "switchboard";

/// Why logging or tracing could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// An `OTEL_*` variable has a value this build does not support.
    #[error("{0}: {1}")]
    Setting(&'static str, String),
    /// The OTLP exporter refused its configuration (endpoint, headers, timeout…).
    #[error("OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    /// Another subscriber was installed first.
    #[error("cannot install the logger: {0}")]
    Install(#[from] tracing_subscriber::util::TryInitError),
}

/// What to install: logs always, traces when asked for and configured, extra layers.
pub struct Setup {
    format: LogFormat,
    node_id: Option<String>,
    layers: Vec<ExtraLayer>,
}

impl Setup {
    /// Logs in `format`, nothing else yet.
    pub fn logs(format: LogFormat) -> Self {
        Self {
            format,
            node_id: None,
            layers: Vec::new(),
        }
    }

    /// Also exports traces, if OTLP is configured, as `service.instance.id = node_id`.
    /// One-shot commands (`migrate`) leave this out.
    pub fn traces(mut self, node_id: &str) -> Self {
        self.node_id = Some(node_id.to_owned());
        self
    }

    /// Adds a layer.
    pub fn layer(mut self, layer: ExtraLayer) -> Self {
        self.layers.push(layer);
        self
    }

    /// Installs the global subscriber. With traces, must run inside a tokio runtime: the
    /// batch exporter is a task on it.
    pub fn install(self) -> Result<Telemetry, TelemetryError> {
        let filter = EnvFilter::builder()
            .with_default_directive(LevelFilter::INFO.into())
            .from_env_lossy();
        let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
        let mut layers = self.layers;
        layers.push(match self.format {
            LogFormat::Text => logs.with_filter(filter).boxed(),
            LogFormat::Json => logs.json().with_filter(filter).boxed(),
        });
        let provider = match &self.node_id {
            Some(node_id) => tracer_provider(node_id)?,
            None => None,
        };
        if let Some(provider) = &provider {
            layers.push(
                tracing_opentelemetry::layer()
                    .with_tracer(provider.tracer("switchboard"))
                    // Parents come from tracing's own span tree; nothing else reads the
                    // OpenTelemetry context, and timing every poll is not worth its cost.
                    .with_context_activation(false)
                    .with_tracked_inactivity(false)
                    .with_threads(false)
                    .with_filter(filter_fn(exported).with_max_level_hint(Level::DEBUG))
                    .boxed(),
            );
        }
        tracing_subscriber::registry().with(layers).try_init()?;
        Ok(Telemetry { provider })
    }
}

/// Installed logging and tracing; [`Telemetry::shutdown`] sends the last spans.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn traces(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports the spans still queued and stops the exporter. Blocks until then (bounded by
    /// `OTEL_EXPORTER_OTLP_TIMEOUT`), so call it outside async code while the runtime still runs.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(e) = provider.shutdown()
        {
            tracing::warn!(error = %e, "could not send the last spans");
        }
    }
}

/// What the exporter takes: Switchboard's spans (DEBUG and up), and its INFO-and-up events
/// as events of the span they happen in.
fn exported(metadata: &Metadata<'_>) -> bool {
    let most_verbose = if metadata.is_span() {
        Level::DEBUG
    } else {
        Level::INFO
    };
    metadata.target().starts_with("switchboard") && *metadata.level() <= most_verbose
}

/// The variable's value, if set and not blank.
fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The tracer provider, or `None` when no OTLP endpoint is configured or traces are switched
/// off (`OTEL_SDK_DISABLED=true`, `OTEL_TRACES_EXPORTER=none`).
fn tracer_provider(node_id: &str) -> Result<Option<SdkTracerProvider>, TelemetryError> {
    let configured = env("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
        || env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some();
    let disabled = env("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    match env("OTEL_TRACES_EXPORTER").as_deref().map(str::trim) {
        None | Some("otlp") => {}
        Some("none") => return Ok(None),
        Some(other) => {
            return Err(TelemetryError::Setting(
                "OTEL_TRACES_EXPORTER",
                format!("`{other}` is not supported; use otlp or none"),
            ));
        }
    }
    if !configured || disabled {
        return Ok(None);
    }
    // The exporter builds its reqwest client here, and reqwest has no TLS provider of its own.
    crate::http_client::install_crypto_provider();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(protocol()?)
        .build()?;
    let processor =
        BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio).build();
    Ok(Some(
        SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_resource(resource(node_id))
            .build(),
    ))
}

/// `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`, else `OTEL_EXPORTER_OTLP_PROTOCOL`, else the
/// specification's default, `http/protobuf`.
fn protocol() -> Result<Protocol, TelemetryError> {
    for name in [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ] {
        if let Some(value) = env(name) {
            return match value.trim() {
                "http/protobuf" => Ok(Protocol::HttpBinary),
                "http/json" => Ok(Protocol::HttpJson),
                other => Err(TelemetryError::Setting(
                    name,
                    format!(
                        "`{other}` is not supported; use http/protobuf (port 4318) or http/json"
                    ),
                )),
            };
        }
    }
    Ok(Protocol::HttpBinary)
}

/// The resource: `OTEL_SERVICE_NAME`, else `service.name` in `OTEL_RESOURCE_ATTRIBUTES`, else
/// `switchboard`; the variables' attributes over this node's id and Switchboard's version.
fn resource(node_id: &str) -> Resource {
    let builder = Resource::builder_empty()
        .with_service_name(SERVICE_NAME)
        .with_attributes([
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
            KeyValue::new("service.instance.id", node_id.to_owned()),
        ])
        // Detected attributes win over the ones above.
        .with_detectors(&[
            Box::new(TelemetryResourceDetector),
            Box::new(EnvResourceDetector::new()),
        ]);
    match env("OTEL_SERVICE_NAME") {
        Some(name) => builder.with_service_name(name.trim().to_owned()),
        None => builder,
    }
    .build()
}
