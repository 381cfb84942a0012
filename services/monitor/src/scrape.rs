//! Scraping Prometheus exposition endpoints into the store.
//!
//! The text format is parsed with the `openmetrics-parser` crate: a pest grammar that
//! passes the OpenMetrics test suite and handles escaped label values (commas, quotes,
//! `=` inside values), which line-splitting parsers get wrong. Each sample becomes a
//! series as Prometheus names it (`<name>`, and `<name>_bucket{le=..}`, `_sum`, `_count`
//! for histograms, `<name>{quantile=..}`, `_sum`, `_count` for summaries) with the
//! target's `job` and `instance` labels added; every scrape also records `up` (1 or 0)
//! and `scrape_duration_seconds`, as Prometheus does.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::settings::Target;
use crate::store::{Labels, Store, now_ms};

/// Why a scrape failed.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    /// The endpoint could not be read.
    #[error("cannot scrape {url}: {reason}")]
    Http {
        /// The endpoint.
        url: String,
        /// Why.
        reason: String,
    },
    /// The body is not in the exposition format.
    #[error("{url} is not in the Prometheus exposition format: {reason}")]
    Parse {
        /// The endpoint.
        url: String,
        /// The parser's words.
        reason: String,
    },
}

/// One parsed sample: series name, labels, timestamp (ms), value.
pub type Parsed = (String, Labels, i64, f64);

/// One exposed value, whichever format it came in.
enum Exposed<'a> {
    Single(&'a str, f64),
    Histogram(&'a openmetrics_parser::HistogramValue, &'a str),
    Summary(&'a openmetrics_parser::SummaryValue),
}

/// Parses an exposition body, in the Prometheus text format (0.0.4) or in OpenMetrics
/// (ends with `# EOF`, as prometheus-client and so our own `/metrics` write it);
/// `extra` labels are added to every series (without overriding the exposed ones), and
/// samples without a timestamp get `now_ms`.
pub fn parse_exposition(text: &str, extra: &Labels, now_ms: i64) -> Result<Vec<Parsed>, String> {
    // The grammars want a final newline.
    let owned;
    let text = if text.ends_with('\n') {
        text
    } else {
        owned = format!("{text}\n");
        &owned
    };
    let mut out = Vec::new();
    let mut emit = |name: &str, labels: Result<Labels, ()>, ts: i64, value: Exposed<'_>| {
        let mut labels = labels.unwrap_or_default();
        for (k, v) in extra {
            labels.entry(k.clone()).or_insert_with(|| v.clone());
        }
        match value {
            Exposed::Single(suffix, v) => out.push((format!("{name}{suffix}"), labels, ts, v)),
            Exposed::Histogram(h, prefix) => {
                for bucket in &h.buckets {
                    let mut l = labels.clone();
                    l.insert("le".into(), le(bucket.upper_bound));
                    out.push((format!("{name}_bucket"), l, ts, bucket.count.as_f64()));
                }
                if let Some(sum) = h.sum {
                    out.push((
                        format!("{name}_{prefix}sum"),
                        labels.clone(),
                        ts,
                        sum.as_f64(),
                    ));
                }
                if let Some(count) = h.count {
                    out.push((format!("{name}_{prefix}count"), labels, ts, count as f64));
                }
            }
            Exposed::Summary(s) => {
                for q in &s.quantiles {
                    let mut l = labels.clone();
                    l.insert("quantile".into(), q.quantile.to_string());
                    out.push((name.to_owned(), l, ts, q.value.as_f64()));
                }
                if let Some(sum) = s.sum {
                    out.push((format!("{name}_sum"), labels.clone(), ts, sum.as_f64()));
                }
                if let Some(count) = s.count {
                    out.push((format!("{name}_count"), labels, ts, count as f64));
                }
            }
        }
    };
    let labelset = |set: Result<openmetrics_parser::LabelSet<'_>, _>| {
        set.map(|set| {
            set.iter()
                .map(|(k, v)| (k.clone(), unescape(v)))
                .collect::<Labels>()
        })
        .map_err(|_| ())
    };
    if text.trim_end().ends_with("# EOF") {
        use openmetrics_parser::OpenMetricsValue as V;
        let exposition =
            openmetrics_parser::openmetrics::parse_openmetrics(text).map_err(|e| e.to_string())?;
        for (name, family) in &exposition.families {
            for sample in family.iter_samples() {
                // OpenMetrics timestamps are seconds since the epoch.
                let ts = sample
                    .timestamp
                    .map(|t| (t * 1000.0) as i64)
                    .unwrap_or(now_ms);
                let value = match &sample.value {
                    V::Unknown(n) | V::Gauge(n) | V::StateSet(n) => Exposed::Single("", n.as_f64()),
                    V::Counter(c) => Exposed::Single("_total", c.value.as_f64()),
                    V::Info => Exposed::Single("_info", 1.0),
                    V::Histogram(h) => Exposed::Histogram(h, ""),
                    V::GaugeHistogram(h) => Exposed::Histogram(h, "g"),
                    V::Summary(s) => Exposed::Summary(s),
                };
                emit(name, labelset(sample.get_labelset()), ts, value);
            }
        }
    } else {
        use openmetrics_parser::PrometheusValue as V;
        let exposition =
            openmetrics_parser::prometheus::parse_prometheus(text).map_err(|e| e.to_string())?;
        for (name, family) in &exposition.families {
            for sample in family.iter_samples() {
                // Prometheus text timestamps are milliseconds since the epoch.
                let ts = sample.timestamp.map(|t| t as i64).unwrap_or(now_ms);
                let value = match &sample.value {
                    V::Unknown(n) | V::Gauge(n) => Exposed::Single("", n.as_f64()),
                    V::Counter(c) => Exposed::Single("", c.value.as_f64()),
                    V::Histogram(h) => Exposed::Histogram(h, ""),
                    V::Summary(s) => Exposed::Summary(s),
                };
                emit(name, labelset(sample.get_labelset()), ts, value);
            }
        }
    }
    Ok(out)
}

/// A label value as written (`\\`, `\"`, `\n` escaped; the parser keeps the escapes).
fn unescape(v: &str) -> String {
    if !v.contains('\\') {
        return v.to_owned();
    }
    let mut out = String::with_capacity(v.len());
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some(other) => out.push(other),
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A bucket bound as Prometheus writes it (`+Inf`, `0.5`).
fn le(bound: f64) -> String {
    if bound == f64::INFINITY {
        "+Inf".into()
    } else {
        bound.to_string()
    }
}

/// The `instance` label of a URL: its `host:port`.
fn instance(url: &str) -> String {
    reqwest::Url::parse(url)
        .ok()
        .and_then(|u| {
            let host = u.host_str()?.to_owned();
            Some(match u.port_or_known_default() {
                Some(p) => format!("{host}:{p}"),
                None => host,
            })
        })
        .unwrap_or_else(|| url.to_owned())
}

/// Scrapes one target into `store`; returns how many samples were stored. Records `up`
/// and `scrape_duration_seconds` for the target either way.
pub async fn scrape_once(
    http: &reqwest::Client,
    target: &Target,
    store: &Store,
) -> Result<usize, ScrapeError> {
    let labels: Labels = [
        ("job".to_owned(), target.name.clone()),
        ("instance".to_owned(), instance(&target.url)),
    ]
    .into();
    let started = Instant::now();
    let at = now_ms();
    let result = async {
        let response = http
            .get(&target.url)
            .header("Accept", "text/plain;version=0.0.4")
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| ScrapeError::Http {
                url: target.url.clone(),
                reason: e.to_string(),
            })?;
        let text = response.text().await.map_err(|e| ScrapeError::Http {
            url: target.url.clone(),
            reason: e.to_string(),
        })?;
        parse_exposition(&text, &labels, at).map_err(|reason| ScrapeError::Parse {
            url: target.url.clone(),
            reason,
        })
    }
    .await;
    store.insert(
        "scrape_duration_seconds",
        &labels,
        at,
        started.elapsed().as_secs_f64(),
    );
    match result {
        Ok(samples) => {
            store.insert("up", &labels, at, 1.0);
            let mut kept = 0;
            for (name, l, ts, v) in samples {
                if store.insert(&name, &l, ts, v) {
                    kept += 1;
                }
            }
            Ok(kept)
        }
        Err(e) => {
            store.insert("up", &labels, at, 0.0);
            Err(e)
        }
    }
}

/// Scrapes every target every `interval` until `shutdown`.
pub async fn run(
    targets: Vec<Target>,
    interval: Duration,
    timeout: Duration,
    store: Arc<Store>,
    shutdown: CancellationToken,
) -> Result<(), reqwest::Error> {
    let http = toronto_runtime::tls::http_client()
        .timeout(timeout)
        .build()?;
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = ticks.tick() => {}
        }
        let scrapes = targets.iter().map(|t| {
            let (http, store) = (&http, &store);
            async move {
                if let Err(e) = scrape_once(http, t, store).await {
                    tracing::warn!(target = %t.name, error = %e, "scrape failed");
                }
            }
        });
        futures::future::join_all(scrapes).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_kind_with_escaped_labels() {
        let text = r#"# HELP http_requests_total Requests.
# TYPE http_requests_total counter
http_requests_total{code="200",path="/a,b=c"} 10
http_requests_total{code="500",path="/q\"x"} 2
# TYPE temperature gauge
temperature 21.5
# TYPE latency histogram
latency_bucket{le="0.1"} 3
latency_bucket{le="+Inf"} 5
latency_sum 0.9
latency_count 5
"#;
        let extra: Labels = [("job".to_owned(), "shop".to_owned())].into();
        let parsed = parse_exposition(text, &extra, 1000).unwrap();
        let find = |name: &str, key: &str, value: &str| {
            parsed
                .iter()
                .find(|(n, l, _, _)| n == name && l.get(key).map(String::as_str) == Some(value))
                .map(|(_, l, t, v)| (l.clone(), *t, *v))
        };
        let (labels, ts, v) =
            find("http_requests_total", "path", "/a,b=c").unwrap_or_else(|| panic!("{parsed:#?}"));
        assert_eq!((ts, v), (1000, 10.0));
        assert_eq!(labels["job"], "shop");
        assert!(
            find("http_requests_total", "path", "/q\"x").is_some(),
            "{parsed:#?}"
        );
        assert_eq!(find("temperature", "job", "shop").unwrap().2, 21.5);
        assert_eq!(find("latency_bucket", "le", "+Inf").unwrap().2, 5.0);
        assert_eq!(find("latency_bucket", "le", "0.1").unwrap().2, 3.0);
        assert_eq!(find("latency_count", "job", "shop").unwrap().2, 5.0);
        assert!(parse_exposition("this is { not metrics", &extra, 0).is_err());
    }

    #[test]
    fn parses_openmetrics_as_prometheus_client_writes_it() {
        use prometheus_client::metrics::counter::Counter;
        use prometheus_client::metrics::family::Family;
        use prometheus_client::metrics::histogram::Histogram;
        let mut registry = prometheus_client::registry::Registry::default();
        let requests = Family::<Vec<(String, String)>, Counter>::default();
        registry.register("requests", "Requests", requests.clone());
        let latency = Histogram::new([0.1, 0.5]);
        registry.register("latency_seconds", "Latency", latency.clone());
        requests
            .get_or_create(&vec![("code".to_owned(), "500".to_owned())])
            .inc_by(7);
        latency.observe(0.3);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let parsed = parse_exposition(&text, &Labels::new(), 5).unwrap();
        let get = |name: &str| {
            parsed
                .iter()
                .filter(|(n, _, _, _)| n == name)
                .map(|(_, l, _, v)| (l.clone(), *v))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            get("requests_total")[0].0["code"],
            "500",
            "{text}\n{parsed:#?}"
        );
        assert_eq!(get("requests_total")[0].1, 7.0);
        assert_eq!(get("latency_seconds_count")[0].1, 1.0);
        assert_eq!(get("latency_seconds_bucket").len(), 3, "{parsed:#?}");
    }

    #[test]
    fn instances_are_host_and_port() {
        assert_eq!(instance("http://127.0.0.1:9100/metrics"), "127.0.0.1:9100");
        assert_eq!(instance("http://exporter/metrics"), "exporter:80");
    }
}
