//! A client of the Prometheus HTTP API (`/api/v1/query` and `/api/v1/query_range`),
//! over reqwest.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::store::Labels;

/// Why a query failed.
#[derive(Debug, thiserror::Error)]
pub enum PrometheusError {
    /// The request did not complete (connection, timeout).
    #[error("cannot reach Prometheus at {url}: {source}")]
    Http {
        /// The URL asked.
        url: String,
        /// The cause.
        #[source]
        source: reqwest::Error,
    },
    /// Prometheus answered with an error (bad query, timeout on its side).
    #[error("Prometheus refused the query `{query}`: {error_type}: {error}")]
    Query {
        /// The query.
        query: String,
        /// Its `errorType`.
        error_type: String,
        /// Its `error`.
        error: String,
    },
    /// The answer was not the documented JSON.
    #[error("unexpected answer from Prometheus for `{query}`: {reason}")]
    Decode {
        /// The query.
        query: String,
        /// Why.
        reason: String,
    },
    /// The base URL is not a URL.
    #[error("`{0}` is not a valid Prometheus URL")]
    Url(String),
}

/// One series of an answer: its labels and its (seconds since the epoch, value) points.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Its labels (with `__name__` when Prometheus kept it).
    pub labels: Labels,
    /// Its points, oldest first.
    pub points: Vec<(f64, f64)>,
}

/// A Prometheus HTTP API client.
#[derive(Debug, Clone)]
pub struct Prometheus {
    base: String,
    http: reqwest::Client,
}

#[derive(Deserialize)]
struct Answer {
    status: String,
    #[serde(default)]
    data: Option<AnswerData>,
    #[serde(default, rename = "errorType")]
    error_type: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
struct AnswerData {
    #[serde(rename = "resultType")]
    result_type: String,
    result: serde_json::Value,
}

#[derive(Deserialize)]
struct VectorItem {
    metric: BTreeMap<String, String>,
    value: (f64, String),
}

#[derive(Deserialize)]
struct MatrixItem {
    metric: BTreeMap<String, String>,
    values: Vec<(f64, String)>,
}

fn number(s: &str) -> f64 {
    match s {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other.parse().unwrap_or(f64::NAN),
    }
}

impl Prometheus {
    /// A client of the API at `base` (e.g. `http://127.0.0.1:9090`), each request
    /// bounded by `timeout`.
    pub fn new(base: &str, timeout: Duration) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            http: toronto_runtime::tls::http_client()
                .timeout(timeout)
                .build()
                .expect("an HTTP client with the ring provider builds"),
        }
    }

    /// Its base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    async fn get(
        &self,
        path: &str,
        params: &[(&str, String)],
    ) -> Result<AnswerData, PrometheusError> {
        let query = params
            .iter()
            .find(|(k, _)| *k == "query")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let mut url = reqwest::Url::parse(&format!("{}{path}", self.base))
            .map_err(|_| PrometheusError::Url(self.base.clone()))?;
        {
            let mut pairs = url.query_pairs_mut();
            for (k, v) in params {
                pairs.append_pair(k, v);
            }
        }
        let http = |source| PrometheusError::Http {
            url: self.base.clone(),
            source,
        };
        let response = self.http.get(url).send().await.map_err(http)?;
        let text = response.text().await.map_err(http)?;
        let answer: Answer =
            toronto_protocol::codec::from_json_bounded(text.as_bytes()).map_err(|e| {
                PrometheusError::Decode {
                    query: query.clone(),
                    reason: format!("{e}: {}", text.chars().take(200).collect::<String>()),
                }
            })?;
        if answer.status != "success" {
            return Err(PrometheusError::Query {
                query,
                error_type: answer.error_type.unwrap_or_default(),
                error: answer.error.unwrap_or_default(),
            });
        }
        answer.data.ok_or_else(|| PrometheusError::Decode {
            query,
            reason: "no data".into(),
        })
    }

    /// An instant query at `time` (seconds since the epoch; now when `None`). A scalar
    /// answer is one series without labels.
    pub async fn query(
        &self,
        query: &str,
        time: Option<f64>,
    ) -> Result<Vec<Series>, PrometheusError> {
        let mut params = vec![("query", query.to_owned())];
        if let Some(t) = time {
            params.push(("time", format!("{t:.3}")));
        }
        let data = self.get("/api/v1/query", &params).await?;
        let bad = |reason: String| PrometheusError::Decode {
            query: query.to_owned(),
            reason,
        };
        match data.result_type.as_str() {
            "vector" => {
                let items: Vec<VectorItem> =
                    serde_json::from_value(data.result).map_err(|e| bad(e.to_string()))?;
                Ok(items
                    .into_iter()
                    .map(|i| Series {
                        labels: i.metric,
                        points: vec![(i.value.0, number(&i.value.1))],
                    })
                    .collect())
            }
            "scalar" => {
                let (t, v): (f64, String) =
                    serde_json::from_value(data.result).map_err(|e| bad(e.to_string()))?;
                Ok(vec![Series {
                    labels: Labels::new(),
                    points: vec![(t, number(&v))],
                }])
            }
            "matrix" => Self::matrix(query, data.result),
            other => Err(bad(format!("result type `{other}`"))),
        }
    }

    /// A range query from `start` to `end` (seconds since the epoch) every `step`.
    pub async fn query_range(
        &self,
        query: &str,
        start: f64,
        end: f64,
        step: Duration,
    ) -> Result<Vec<Series>, PrometheusError> {
        let params = [
            ("query", query.to_owned()),
            ("start", format!("{start:.3}")),
            ("end", format!("{end:.3}")),
            ("step", format!("{:.3}", step.as_secs_f64().max(0.001))),
        ];
        let data = self.get("/api/v1/query_range", &params).await?;
        if data.result_type != "matrix" {
            return Err(PrometheusError::Decode {
                query: query.to_owned(),
                reason: format!("result type `{}` for a range query", data.result_type),
            });
        }
        Self::matrix(query, data.result)
    }

    fn matrix(query: &str, result: serde_json::Value) -> Result<Vec<Series>, PrometheusError> {
        let items: Vec<MatrixItem> =
            serde_json::from_value(result).map_err(|e| PrometheusError::Decode {
                query: query.to_owned(),
                reason: e.to_string(),
            })?;
        Ok(items
            .into_iter()
            .map(|i| Series {
                labels: i.metric,
                points: i.values.iter().map(|(t, v)| (*t, number(v))).collect(),
            })
            .collect())
    }
}

/// PromQL label matchers for `labels`: `a="x",b="y"` (values escaped).
pub fn matchers(labels: &Labels) -> String {
    labels
        .iter()
        .map(|(k, v)| {
            let escaped = v
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            format!("{k}=\"{escaped}\"")
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// A query's placeholder names no value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown placeholder `{{{{{name}}}}}` in the query (known: {known})")]
pub struct UnknownPlaceholder {
    /// The placeholder's name.
    pub name: String,
    /// The names that have values, comma-separated.
    pub known: String,
}

/// A PromQL duration for `seconds` (whole milliseconds, e.g. `30000ms`).
pub fn promql_duration(seconds: f64) -> String {
    format!("{}ms", (seconds * 1000.0).round().max(1.0) as u64)
}

/// Fills a template's placeholders: `{{name}}` becomes the value of `name` in `values`
/// (escaped for a PromQL string) and `{{window}}` the window as a PromQL duration;
/// `{{selector}}` is left for [`with_selector`]. Any other placeholder is an error.
pub fn render(
    query: &str,
    values: &Labels,
    window_seconds: f64,
) -> Result<String, UnknownPlaceholder> {
    let mut out = String::with_capacity(query.len() + 64);
    let mut rest = query;
    while let Some(at) = rest.find("{{") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        let Some(end) = after.find("}}") else {
            out.push_str(&rest[at..]);
            return Ok(out);
        };
        let name = after[..end].trim();
        let valid = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            // Not a placeholder (PromQL braces, e.g. `m{{a="b"}`): keep one brace and go on.
            out.push('{');
            rest = &rest[at + 1..];
            continue;
        }
        match name {
            "selector" => out.push_str("{{selector}}"),
            "window" => out.push_str(&promql_duration(window_seconds)),
            _ => match values.get(name) {
                Some(v) => out.push_str(
                    &v.replace('\\', "\\\\")
                        .replace('"', "\\\"")
                        .replace('\n', "\\n"),
                ),
                None => {
                    let mut known: Vec<&str> = values.keys().map(String::as_str).collect();
                    known.push("window");
                    known.push("selector");
                    return Err(UnknownPlaceholder {
                        name: name.to_owned(),
                        known: known.join(", "),
                    });
                }
            },
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Puts the matchers of `labels` where a query says `{{selector}}`: bare when the
/// placeholder is inside braces (`m{{{selector}}}`, `m{job="x",{{selector}}}`), in
/// braces otherwise (`rate(m{{selector}}[1m])`).
pub fn with_selector(query: &str, labels: &Labels) -> String {
    const PLACEHOLDER: &str = "{{selector}}";
    let bare = matchers(labels);
    let mut out = String::with_capacity(query.len() + bare.len());
    let mut rest = query;
    while let Some(at) = rest.find(PLACEHOLDER) {
        let before = &rest[..at];
        out.push_str(before);
        let inside = matches!(out.trim_end().chars().last(), Some('{') | Some(','));
        if inside {
            out.push_str(&bare);
        } else {
            out.push('{');
            out.push_str(&bare);
            out.push('}');
        }
        rest = &rest[at + PLACEHOLDER.len()..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_filled_escaped_and_unknown_ones_refused() {
        let values: Labels = [
            ("track", "canary"),
            ("version", "2.0\"x"),
            ("namespace", "prod"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(
            render(
                r#"sum(rate(m{namespace="{{namespace}}",track="{{ track }}",v="{{version}}"}[{{window}}]))"#,
                &values,
                2.5
            )
            .unwrap(),
            r#"sum(rate(m{namespace="prod",track="canary",v="2.0\"x"}[2500ms]))"#
        );
        // `{{selector}}` stays for `with_selector`; PromQL's own braces are kept.
        assert_eq!(
            render("m{{{selector}}}", &values, 1.0).unwrap(),
            "m{{{selector}}}"
        );
        let err = render("m{x=\"{{colour}}\"}", &values, 1.0).unwrap_err();
        assert_eq!(err.name, "colour");
        assert!(
            err.to_string().contains("namespace, track, version"),
            "{err}"
        );
    }

    #[test]
    fn selectors_go_where_the_query_says() {
        let labels: Labels = [("track", "canary"), ("service", "shop\"api")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        assert_eq!(
            with_selector("rate(errors{{selector}}[1m])", &labels),
            r#"rate(errors{service="shop\"api",track="canary"}[1m])"#
        );
        assert_eq!(
            with_selector("errors{{{selector}}}", &labels),
            r#"errors{service="shop\"api",track="canary"}"#
        );
        assert_eq!(
            with_selector(r#"errors{job="x",{{selector}}}"#, &labels),
            r#"errors{job="x",service="shop\"api",track="canary"}"#
        );
    }
}
