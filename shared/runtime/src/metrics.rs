//! Prometheus metrics of one service, served on `/metrics` in exposition format.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of per-endpoint metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    /// The endpoint's name.
    pub endpoint: String,
}

/// Labels of error counts.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// The endpoint's name.
    pub endpoint: String,
    /// The error code, e.g. `bad_request`.
    pub code: String,
}

/// Labels of event counts.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    /// The CloudEvents type.
    pub r#type: String,
}

/// Labels of consumer metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConsumerLabels {
    /// The durable consumer's name, or the endpoint that parked the message.
    pub consumer: String,
}

/// Every metric a service exports. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
    /// Requests handled, per endpoint.
    pub requests: Family<EndpointLabels, Counter>,
    /// Requests answered with an error, per endpoint and code.
    pub errors: Family<ErrorLabels, Counter>,
    /// Handling time, per endpoint.
    pub latency: Family<EndpointLabels, Histogram>,
    /// Events published to the events stream and acknowledged.
    pub events_published: Family<EventLabels, Counter>,
    /// Messages delivered more than once to a durable consumer.
    pub redeliveries: Family<ConsumerLabels, Counter>,
    /// Messages parked in the dead-letter stream.
    pub dead_letters: Family<ConsumerLabels, Counter>,
    /// 1 while the NATS connection is up.
    pub nats_connected: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// A fresh registry with every metric of the runtime under the `toronto_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("toronto");
        let requests = Family::<EndpointLabels, Counter>::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let latency = Family::<EndpointLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0001, 2.0, 18))
        });
        let events_published = Family::<EventLabels, Counter>::default();
        let redeliveries = Family::<ConsumerLabels, Counter>::default();
        let dead_letters = Family::<ConsumerLabels, Counter>::default();
        let nats_connected = Gauge::default();
        registry.register(
            "requests",
            "Requests handled per endpoint",
            requests.clone(),
        );
        registry.register(
            "request_errors",
            "Requests answered with an error, per endpoint and code",
            errors.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time to handle a request, per endpoint",
            latency.clone(),
        );
        registry.register(
            "events_published",
            "Events published to the events stream and acknowledged",
            events_published.clone(),
        );
        registry.register(
            "redeliveries",
            "Messages delivered again to a durable consumer",
            redeliveries.clone(),
        );
        registry.register(
            "dead_letters",
            "Messages parked in the dead-letter stream",
            dead_letters.clone(),
        );
        registry.register(
            "nats_connected",
            "1 while the NATS connection is up",
            nats_connected.clone(),
        );
        Self {
            registry: Arc::new(Mutex::new(registry)),
            requests,
            errors,
            latency,
            events_published,
            redeliveries,
            dead_letters,
            nats_connected,
        }
    }

    /// Handles to one endpoint's series, resolved once so that recording a request
    /// takes no lookup and no allocation.
    pub fn endpoint(&self, endpoint: &str) -> EndpointMetrics {
        let labels = EndpointLabels {
            endpoint: endpoint.to_owned(),
        };
        EndpointMetrics {
            name: endpoint.to_owned(),
            requests: self.requests.get_or_create(&labels).clone(),
            latency: self.latency.get_or_create(&labels).clone(),
            errors: self.errors.clone(),
        }
    }

    /// Adds a service's own metric (under the `toronto_` prefix). A family is in the
    /// exposition once it has a series: give label sets known at start a zero series.
    pub fn register(
        &self,
        name: &str,
        help: &str,
        metric: impl prometheus_client::registry::Metric,
    ) {
        self.registry
            .lock()
            .expect("metrics registry lock")
            .register(name, help, metric);
    }

    /// Adds a collector that writes its own families at every scrape (figures
    /// computed from state, such as histograms over recorded times).
    pub fn register_collector(&self, collector: impl prometheus_client::collector::Collector) {
        self.registry
            .lock()
            .expect("metrics registry lock")
            .register_collector(Box::new(collector));
    }

    /// The registry in Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().expect("metrics registry lock");
        prometheus_client::encoding::text::encode(&mut out, &registry)
            .expect("writing to a String cannot fail");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// One endpoint's request metrics.
#[derive(Clone, Debug)]
pub struct EndpointMetrics {
    name: String,
    requests: Counter,
    latency: Histogram,
    errors: Family<ErrorLabels, Counter>,
}

impl EndpointMetrics {
    /// Records one handled request and, if it failed, its error code.
    pub fn observe(&self, elapsed: Duration, error: Option<&str>) {
        self.requests.inc();
        self.latency.observe(elapsed.as_secs_f64());
        if let Some(code) = error {
            self.errors
                .get_or_create(&ErrorLabels {
                    endpoint: self.name.clone(),
                    code: code.to_owned(),
                })
                .inc();
        }
    }
}
