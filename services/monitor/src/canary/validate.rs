//! Validation of a canary analysis request: a bad one is refused naming every bad field.

use serde_json::json;
use toronto_protocol::analysis::CanaryAnalyze;
use toronto_protocol::{ErrorBody, ErrorCode};

/// One problem of a request: the field and why.
fn problem(field: &str, reason: &str) -> serde_json::Value {
    json!({"field": field, "reason": reason})
}

/// Checks a request; a bad one is answered `400 bad_request` naming every bad field.
pub fn validate(req: &CanaryAnalyze) -> Result<(), ErrorBody> {
    let mut errors = Vec::new();
    if req.service.trim().is_empty() {
        errors.push(problem("service", "must not be empty"));
    }
    if req.environment.trim().is_empty() {
        errors.push(problem("environment", "must not be empty"));
    }
    if req.metrics.is_empty() {
        errors.push(problem("metrics", "give at least one metric"));
    }
    if !(req.window_seconds.is_finite() && req.window_seconds > 0.0) {
        errors.push(problem(
            "window_seconds",
            &format!(
                "{} must be a positive number of seconds",
                req.window_seconds
            ),
        ));
    }
    if let Some(c) = req.confidence
        && !(c > 0.0 && c < 1.0)
    {
        errors.push(problem(
            "confidence",
            &format!("{c} must be between 0 and 1 (exclusive)"),
        ));
    }
    if req.canary.is_empty() {
        errors.push(problem(
            "canary",
            "give the labels that select the canary, e.g. {\"track\": \"canary\"}",
        ));
    }
    if req.baseline.is_empty() {
        errors.push(problem(
            "baseline",
            "give the labels that select the baseline, e.g. {\"track\": \"stable\"}",
        ));
    }
    if !req.canary.is_empty() && req.canary == req.baseline {
        errors.push(problem("baseline", "selects the same series as the canary"));
    }
    for (i, m) in req.metrics.iter().enumerate() {
        if m.name.trim().is_empty() {
            errors.push(problem(&format!("metrics[{i}].name"), "must not be empty"));
        }
        for (field, value) in [
            ("max_relative_effect", m.max_relative_effect),
            ("max_absolute_effect", m.max_absolute_effect),
        ] {
            if let Some(v) = value
                && !(v.is_finite() && v >= 0.0)
            {
                errors.push(problem(
                    &format!("metrics[{i}].{field}"),
                    &format!("{v} must be a non-negative number"),
                ));
            }
        }
        for (field, value) in [("max_value", m.max_value), ("min_value", m.min_value)] {
            if let Some(v) = value
                && !v.is_finite()
            {
                errors.push(problem(
                    &format!("metrics[{i}].{field}"),
                    &format!("{v} must be a finite number"),
                ));
            }
        }
        if let (Some(lo), Some(hi)) = (m.min_value, m.max_value)
            && lo > hi
        {
            errors.push(problem(
                &format!("metrics[{i}].min_value"),
                &format!("{lo} is above max_value {hi}"),
            ));
        }
        if m.query.as_deref().is_some_and(|q| q.trim().is_empty()) {
            errors.push(problem(&format!("metrics[{i}].query"), "must not be empty"));
        }
    }
    if let Some(seq) = &req.sequential {
        for (field, value) in [
            ("metric", &seq.metric),
            ("requests", &seq.requests),
            ("errors", &seq.errors),
        ] {
            if value.trim().is_empty() {
                errors.push(problem(&format!("sequential.{field}"), "must not be empty"));
            }
        }
        if seq
            .interval_seconds
            .is_some_and(|i| !(0.1..=3600.0).contains(&i))
        {
            errors.push(problem(
                "sequential.interval_seconds",
                "must be between 0.1 and 3600",
            ));
        }
        if seq.requests_query.is_some() != seq.errors_query.is_some() {
            errors.push(problem(
                "sequential.errors_query",
                "give both requests_query and errors_query, or neither",
            ));
        }
        for (field, value) in [
            ("requests_query", &seq.requests_query),
            ("errors_query", &seq.errors_query),
        ] {
            if value.as_ref().is_some_and(|q| q.trim().is_empty()) {
                errors.push(problem(&format!("sequential.{field}"), "must not be empty"));
            }
        }
        if !seq.metric.trim().is_empty() && !req.metrics.iter().any(|m| m.name == seq.metric) {
            errors.push(problem(
                "sequential.metric",
                &format!("`{}` is not one of the request's metrics", seq.metric),
            ));
        }
    }
    if errors.is_empty() {
        return Ok(());
    }
    let message = errors
        .iter()
        .map(|e| {
            format!(
                "{}: {}",
                e["field"].as_str().unwrap_or(""),
                e["reason"].as_str().unwrap_or("")
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    Err(ErrorBody::new(
        ErrorCode::BadRequest,
        format!("invalid canary analysis: {message}"),
    )
    .with_details(json!({ "errors": errors })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canary::tests::request;

    #[test]
    fn bad_requests_name_every_field() {
        let mut req = request();
        req.metrics.clear();
        req.window_seconds = 0.0;
        req.confidence = Some(1.5);
        let err = validate(&req).unwrap_err();
        assert_eq!(err.code, ErrorCode::BadRequest);
        let fields: Vec<&str> = err.details.as_ref().unwrap()["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["field"].as_str().unwrap())
            .collect();
        assert_eq!(fields, vec!["metrics", "window_seconds", "confidence"]);
        assert!(validate(&request()).is_ok());
    }

    #[test]
    fn thresholds_must_be_finite_and_in_order() {
        let mut req = request();
        req.metrics[0].min_value = Some(2.0);
        req.metrics[0].max_value = Some(1.0);
        let err = validate(&req).unwrap_err();
        assert!(
            err.message.contains("metrics[0].min_value"),
            "{}",
            err.message
        );
        req.metrics[0].min_value = None;
        req.metrics[0].max_value = Some(f64::NAN);
        let err = validate(&req).unwrap_err();
        assert!(
            err.message.contains("metrics[0].max_value"),
            "{}",
            err.message
        );
    }

    #[test]
    fn the_sequential_test_names_one_of_the_metrics() {
        let mut req = request();
        let since = chrono::Utc::now();
        req.sequential = Some(toronto_protocol::analysis::SequentialAnalysis {
            metric: "nope".into(),
            ..toronto_protocol::analysis::SequentialAnalysis::error_ratio_since(since)
        });
        let err = validate(&req).unwrap_err();
        assert!(err.message.contains("sequential.metric"), "{}", err.message);
        req.sequential = Some(toronto_protocol::analysis::SequentialAnalysis {
            metric: req.metrics[0].name.clone(),
            ..toronto_protocol::analysis::SequentialAnalysis::error_ratio_since(since)
        });
        assert!(validate(&req).is_ok());
        // Counts from Prometheus: both queries or neither.
        if let Some(seq) = req.sequential.as_mut() {
            seq.requests_query = Some("sum(increase(r[{{window}}]))".into());
        }
        let err = validate(&req).unwrap_err();
        assert!(
            err.message.contains("sequential.errors_query"),
            "{}",
            err.message
        );
        if let Some(seq) = req.sequential.as_mut() {
            seq.errors_query = Some("sum(increase(e[{{window}}]))".into());
        }
        assert!(validate(&req).is_ok());
    }
}
