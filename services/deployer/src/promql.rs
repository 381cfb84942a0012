//! Checks the PromQL of analysis templates with `promql-parser` (the parser of
//! Prometheus' own grammar, as GreptimeDB uses it) when they are loaded, so that a
//! template with a typo is refused at start with the parser's words instead of failing
//! every canary analysis later at Prometheus.
//!
//! A template's query has placeholders the monitor fills per side (`{{service}}`,
//! `{{track}}`, `{{window}}`, `{{selector}}`, ...): each is given a sample value first,
//! as the monitor would fill it (a label value, a duration, a matcher).

use toronto_protocol::analysis::AnalysisTemplate;

/// A query of a template that is not PromQL.
#[derive(Debug, thiserror::Error)]
#[error("metric {metric:?}: `{query}` is not valid PromQL: {reason}")]
pub struct InvalidQuery {
    /// The metric whose query it is.
    pub metric: String,
    /// The query as written (with its placeholders).
    pub query: String,
    /// The parser's words.
    pub reason: String,
}

/// `query` with every placeholder given a sample value: `{{window}}` a duration,
/// `{{selector}}` a matcher (bare inside braces, in braces elsewhere), any other
/// `{{name}}` a plain word (it stands for a label value or name).
pub fn with_samples(query: &str) -> String {
    let mut out = String::with_capacity(query.len() + 16);
    let mut rest = query;
    while let Some(at) = rest.find("{{") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        let name = after.find("}}").map(|end| (after[..end].trim(), end));
        match name {
            Some((name, end))
                if !name.is_empty()
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') =>
            {
                match name {
                    "window" => out.push_str("5m"),
                    "selector" => {
                        let inside = matches!(out.trim_end().chars().last(), Some('{' | ','));
                        out.push_str(if inside { r#"x="x""# } else { r#"{x="x"}"# });
                    }
                    _ => out.push('x'),
                }
                rest = &after[end + 2..];
            }
            // PromQL's own brace before a placeholder (`m{{{selector}}}`): keep one.
            _ => {
                out.push('{');
                rest = &rest[at + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Parses every query of `template`, its sequential test's counts too (placeholders
/// filled with samples).
pub fn check_template(template: &AnalysisTemplate) -> Result<(), InvalidQuery> {
    let metrics = template
        .metrics
        .iter()
        .filter_map(|m| m.query.as_ref().map(|q| (m.name.clone(), q)));
    let counts = template.sequential.iter().flat_map(|s| {
        [
            (
                format!("{} (sequential requests_query)", s.metric),
                &s.requests_query,
            ),
            (
                format!("{} (sequential errors_query)", s.metric),
                &s.errors_query,
            ),
        ]
    });
    for (metric, query) in metrics.chain(counts) {
        promql_parser::parser::parse(&with_samples(query)).map_err(|reason| InvalidQuery {
            metric,
            query: query.clone(),
            reason,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{BUILT_IN, built_in};
    use crate::settings::Settings;

    #[test]
    fn every_built_in_template_is_promql() {
        let s = Settings::default();
        for name in BUILT_IN {
            let t = built_in(name, &s).expect(name);
            check_template(&t).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn placeholders_get_samples_and_a_typo_is_refused() {
        assert_eq!(
            with_samples(
                r#"sum(rate(m{a="{{service}}",{{track_label}}="{{ track }}"}[{{window}}]))"#
            ),
            r#"sum(rate(m{a="x",x="x"}[5m]))"#
        );
        assert_eq!(with_samples("m{{{selector}}}"), r#"m{x="x"}"#);
        assert_eq!(
            with_samples("rate(m{{selector}}[1m])"),
            r#"rate(m{x="x"}[1m])"#
        );
        let mut t = built_in("app", &Settings::default()).unwrap();
        t.metrics[1].query =
            Some("histogram_quantile(0.99, sum by (le) (rate(x[{{window}}]))".into());
        let err = check_template(&t).unwrap_err();
        assert_eq!(err.metric, "latency_p99");
        assert!(err.to_string().contains("not valid PromQL"), "{err}");
    }
}
