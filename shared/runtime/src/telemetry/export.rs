//! OTLP/HTTP (protobuf) trace export, configured by the standard `OTEL_*` variables:
//! one tracer provider per process, spans batched and sent from the batch processor's
//! own thread (a slow or absent collector never blocks a request), flushed at shutdown.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry::trace::{SpanBuilder, TracerProvider as _};
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};

/// Where spans go (`<endpoint>/v1/traces`), for every signal.
pub const OTEL_EXPORTER_OTLP_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// Where spans go, used as given (wins over [`OTEL_EXPORTER_OTLP_ENDPOINT`]).
pub const OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
/// The `service.name` resource attribute (default: the service's name).
pub const OTEL_SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
/// `true` turns the SDK off whatever else is set.
pub const OTEL_SDK_DISABLED: &str = "OTEL_SDK_DISABLED";
/// `otlp` (default) or `none`.
pub const OTEL_TRACES_EXPORTER: &str = "OTEL_TRACES_EXPORTER";

/// How long one export request may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether spans are exported: an endpoint is set, the SDK is not disabled and the
/// traces exporter is `otlp`.
pub(super) fn configured() -> bool {
    configured_from(|name| std::env::var(name).ok())
}

fn configured_from(var: impl Fn(&str) -> Option<String>) -> bool {
    let set = |name: &str| var(name).filter(|v| !v.trim().is_empty());
    if set(OTEL_SDK_DISABLED).is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        return false;
    }
    if set(OTEL_TRACES_EXPORTER).is_some_and(|v| !v.trim().eq_ignore_ascii_case("otlp")) {
        return false;
    }
    set(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT).is_some() || set(OTEL_EXPORTER_OTLP_ENDPOINT).is_some()
}

/// The tracer the tracing layer uses. Until [`start`] has named the service it makes
/// spans that are neither recorded nor exported; from then on it is the exporting
/// provider's tracer. (The subscriber is installed before the process knows which
/// service it runs, and `service.name` is fixed when a provider is built.)
#[derive(Clone, Debug)]
pub(super) struct ServiceTracer {
    state: Arc<State>,
}

#[derive(Debug)]
struct State {
    /// The exporting provider and its tracer, once started.
    started: OnceLock<(SdkTracerProvider, SdkTracer)>,
    /// Spans before then: sampled off, no processor.
    off: SdkTracer,
}

impl ServiceTracer {
    pub(super) fn new() -> Self {
        let off = SdkTracerProvider::builder()
            .with_sampler(Sampler::AlwaysOff)
            .build()
            .tracer("toronto");
        Self {
            state: Arc::new(State {
                started: OnceLock::new(),
                off,
            }),
        }
    }

    fn tracer(&self) -> &SdkTracer {
        self.state
            .started
            .get()
            .map(|(_, tracer)| tracer)
            .unwrap_or(&self.state.off)
    }

    /// Builds the exporting provider for `service` (unless [`OTEL_SERVICE_NAME`]
    /// names it) the first time; later calls (more services in the same process) keep
    /// the first. Must run inside a Tokio runtime: export requests run on it.
    pub(super) fn start(&self, service: &str) {
        if self.state.started.get().is_some() {
            return;
        }
        let name = std::env::var(OTEL_SERVICE_NAME)
            .ok()
            .filter(|n| !n.trim().is_empty())
            .unwrap_or_else(|| service.to_owned());
        match provider(&name) {
            Ok(provider) => {
                let tracer = provider.tracer("toronto");
                if let Err((provider, _)) = self.state.started.set((provider, tracer)) {
                    // Another service of this process started first.
                    let _ = provider.shutdown();
                } else {
                    tracing::info!(service.name = %name, "exporting traces over OTLP/HTTP");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot export traces; spans are not sent")
            }
        }
    }

    /// The exporting provider, if started.
    pub(super) fn provider(&self) -> Option<SdkTracerProvider> {
        self.state.started.get().map(|(p, _)| p.clone())
    }
}

impl opentelemetry::trace::Tracer for ServiceTracer {
    type Span = opentelemetry_sdk::trace::Span;

    fn build_with_context(&self, builder: SpanBuilder, parent_cx: &Context) -> Self::Span {
        self.tracer().build_with_context(builder, parent_cx)
    }
}

/// The provider: `service.name`, the sampler of `OTEL_TRACES_SAMPLER` (default
/// parent-based always-on), a batch processor (its `OTEL_BSP_*` settings) and the
/// OTLP/HTTP protobuf exporter with the endpoint of the `OTEL_EXPORTER_OTLP_*`
/// variables.
fn provider(service: &str) -> Result<SdkTracerProvider, ExportError> {
    let client = crate::tls::http_client()
        .timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(ExportError::Client)?;
    let handle = tokio::runtime::Handle::try_current().map_err(|_| ExportError::NoRuntime)?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_http_client(OnRuntime { client, handle })
        .build()
        .map_err(ExportError::Exporter)?;
    let resource = Resource::builder()
        .with_service_name(service.to_owned())
        .build();
    Ok(SdkTracerProvider::builder()
        .with_resource(resource)
        .with_batch_exporter(exporter)
        .build())
}

/// Why export could not start.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The HTTP client could not be built.
    #[error("cannot build the OTLP HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    /// Not inside a Tokio runtime.
    #[error("trace export needs a Tokio runtime")]
    NoRuntime,
    /// The exporter's settings (endpoint, headers, protocol) are invalid.
    #[error("invalid OTLP exporter settings: {0}")]
    Exporter(#[source] opentelemetry_otlp::ExporterBuildError),
}

/// The workspace's async reqwest client, its requests run on the service's Tokio
/// runtime: the batch processor drives exports from its own (non-Tokio) thread.
#[derive(Debug)]
struct OnRuntime {
    client: reqwest::Client,
    handle: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl HttpClient for OnRuntime {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let client = self.client.clone();
        self.handle
            .spawn(async move { client.send_bytes(request).await })
            .await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn configured_with(vars: &[(&str, &str)]) -> bool {
        configured_from(|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        })
    }

    #[test]
    fn export_is_on_only_with_an_endpoint() {
        assert!(!configured_with(&[]));
        assert!(!configured_with(&[(OTEL_EXPORTER_OTLP_ENDPOINT, " ")]));
        assert!(configured_with(&[(
            OTEL_EXPORTER_OTLP_ENDPOINT,
            "http://collector:4318"
        )]));
        assert!(configured_with(&[(
            OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
            "http://collector:4318/v1/traces"
        )]));
        assert!(!configured_with(&[
            (OTEL_EXPORTER_OTLP_ENDPOINT, "http://collector:4318"),
            (OTEL_SDK_DISABLED, "TRUE"),
        ]));
        assert!(!configured_with(&[
            (OTEL_EXPORTER_OTLP_ENDPOINT, "http://collector:4318"),
            (OTEL_TRACES_EXPORTER, "none"),
        ]));
    }
}
