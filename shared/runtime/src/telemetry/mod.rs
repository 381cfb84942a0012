//! Logs and traces. Logs: tracing with JSON (default) or text output on stderr,
//! filtered by `TORONTO_LOG`. Traces: when an OTLP endpoint is set
//! (`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), every
//! span is exported over OTLP/HTTP with `service.name` = `OTEL_SERVICE_NAME` or the
//! service's name, sampled as `OTEL_TRACES_SAMPLER` says; the runtime's spans take
//! their parent from the incoming `traceparent`, and what a service sends carries its
//! current span ([`propagation`]). JSON log lines inside a traced span carry its
//! `trace_id` and `span_id`. Without an endpoint no tracing layer is installed at all.

mod export;
mod logfmt;
pub mod propagation;

use std::sync::OnceLock;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogConfig, LogFormat};

pub use export::{
    ExportError, OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
    OTEL_SDK_DISABLED, OTEL_SERVICE_NAME, OTEL_TRACES_EXPORTER,
};

/// The tracer of the installed tracing layer, when traces are exported.
static TRACER: OnceLock<export::ServiceTracer> = OnceLock::new();

/// Whether this process exports traces (the tracing layer is installed).
pub fn exporting() -> bool {
    TRACER.get().is_some()
}

/// Installs the global subscriber once; later calls (e.g. several services in one
/// process) are no-ops. With an OTLP endpoint set, spans are exported once
/// [`start_export`] has named the service.
pub fn init(config: &LogConfig) {
    let filter = EnvFilter::try_new(&config.filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let tracer = export::configured().then(export::ServiceTracer::new);
    let otel = tracer
        .clone()
        .map(|t| tracing_opentelemetry::layer().with_tracer(t));
    let (json, text) = match config.format {
        LogFormat::Json => {
            let format = tracing_subscriber::fmt::format()
                .json()
                .flatten_event(true)
                .with_current_span(true);
            let layer = tracing_subscriber::fmt::layer()
                .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
                .event_format(logfmt::WithTraceIds(format))
                .with_writer(std::io::stderr);
            (Some(layer), None)
        }
        LogFormat::Text => (
            None,
            Some(tracing_subscriber::fmt::layer().with_writer(std::io::stderr)),
        ),
    };
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(otel)
        .with(json)
        .with(text)
        .try_init()
        .is_ok();
    if installed && let Some(tracer) = tracer {
        let _ = TRACER.set(tracer);
        toronto_protocol::trace::set_current_source(propagation::current_traceparent);
    }
}

/// Starts exporting spans as `service` (unless `OTEL_SERVICE_NAME` says otherwise);
/// nothing when no endpoint is set or export already started (the first service of
/// a process names it). Call inside the Tokio runtime.
pub fn start_export(service: &str) {
    if let Some(tracer) = TRACER.get() {
        tracer.start(service);
    }
}

/// Sends the spans not yet exported and stops export (at the end of a process).
pub async fn shutdown() {
    let Some(provider) = TRACER.get().and_then(|t| t.provider()) else {
        return;
    };
    // The provider's shutdown blocks while the last batch is sent on this runtime.
    match tokio::task::spawn_blocking(move || provider.shutdown()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "trace export did not shut down cleanly"),
        Err(e) => tracing::debug!(error = %e, "trace export shutdown failed"),
    }
}
