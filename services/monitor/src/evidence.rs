//! Every canary verdict's evidence, kept for what-if replays, and
//! `analysis.replay`: past rollouts judged again under new rules.
//!
//! **Keeping.** After each verdict (`canary.analyze`, and each of a `canary.watch`),
//! the monitor puts a [`VerdictEvidence`] in the KV bucket `<prefix>_analysis_evidence`:
//! the rules applied, the verdict and its reason, and the samples per metric and side,
//! at most [`MAX_EVIDENCE_SAMPLES`] each (the most recent of the window; `truncated`
//! says when older ones were left out). The bucket's `max_age` is
//! `TORONTO_MONITOR_EVIDENCE_DAYS` (default 30): JetStream drops older evidence. Keys
//! are `<service>.<environment>.<unix ms, 13 digits>.<rollout id or none>.<unique>`, so
//! a replay finds a service's verdicts in a time range from the keys alone.
//!
//! **Replaying** ([`replay`]) reads the keys of the service (and environment) only,
//! by a subject filter on the bucket's stream (headers only, the last entry per key),
//! so a replay's cost does not grow with the other services' evidence; it keeps those
//! in the range, groups the verdicts by rollout (a verdict without a rollout is its own
//! entry), and pages the groups oldest first. Each recorded verdict is judged again:
//! every new metric is matched by name with the samples kept for it, evaluated as the
//! analysis does ([`crate::canary::evaluate_metric`]) and scored
//! ([`crate::canary::score`]). A new rule for a metric that was not recorded sees no
//! data; a comparison over a metric that was recorded as a threshold check has no
//! baseline samples, so it is inconclusive.

use std::collections::BTreeMap;

use async_nats::jetstream::{self, kv};
use chrono::{DateTime, TimeZone, Utc};
use futures::TryStreamExt;
use toronto_protocol::analysis::{AnalysisMetric, AnalysisOutcome, CanaryAnalyze, CanaryVerdict};
use toronto_protocol::replay::{
    AnalysisReplay, MAX_EVIDENCE_SAMPLES, MAX_REPLAY_LIMIT, MAX_REPLAY_STEPS, MetricSamples,
    ReplayChange, ReplayPage, RolloutReplay, StepReplay, VerdictEvidence,
};
use toronto_protocol::{ErrorBody, ErrorCode, Subjects};

use crate::canary::{DEFAULT_CONFIDENCE, evaluate_metric, score, validate};

/// The evidence bucket's name without the prefix.
pub const BUCKET: &str = "analysis_evidence";

/// How far back a replay looks when the request gives no `since`.
pub const DEFAULT_REPLAY_DAYS: i64 = 7;

/// The largest number of verdicts one replay page judges (beyond it the page ends
/// early, with a cursor).
pub const MAX_VERDICTS_PER_PAGE: usize = 5_000;

/// Why evidence could not be kept or a replay could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum EvidenceError {
    /// The service's keys could not be read from the bucket's stream.
    #[error("cannot list the evidence: {0}")]
    Scan(#[source] async_nats::Error),
    /// A verdict could not be read.
    #[error("cannot read the evidence {key}: {source}")]
    Get {
        /// Its key.
        key: String,
        /// The server's answer.
        #[source]
        source: kv::EntryError,
    },
    /// The request is not a valid replay.
    #[error("{0}")]
    BadRequest(String),
}

impl From<EvidenceError> for ErrorBody {
    fn from(e: EvidenceError) -> Self {
        let code = match e {
            EvidenceError::BadRequest(_) => ErrorCode::BadRequest,
            _ => ErrorCode::Unavailable,
        };
        ErrorBody::new(code, e.to_string())
    }
}

/// The bucket's configuration: evidence kept `days` days.
pub fn bucket_config(subjects: &Subjects, days: u64, replicas: usize) -> kv::Config {
    kv::Config {
        bucket: subjects.kv_bucket(BUCKET),
        description: "Canary verdicts with their samples, for analysis.replay".into(),
        history: 1,
        max_age: std::time::Duration::from_secs(days.max(1) * 86_400),
        num_replicas: replicas,
        storage: jetstream::stream::StorageType::File,
        ..Default::default()
    }
}

/// One metric's samples, each side cut to the most recent [`MAX_EVIDENCE_SAMPLES`].
pub fn capped(name: &str, mut canary: Vec<f64>, mut baseline: Vec<f64>) -> MetricSamples {
    let mut truncated = false;
    for side in [&mut canary, &mut baseline] {
        if side.len() > MAX_EVIDENCE_SAMPLES {
            side.drain(..side.len() - MAX_EVIDENCE_SAMPLES);
            truncated = true;
        }
    }
    MetricSamples {
        name: name.to_owned(),
        canary,
        baseline,
        truncated,
    }
}

/// Where verdicts' evidence is kept.
#[derive(Debug, Clone)]
pub struct EvidenceStore {
    kv: kv::Store,
}

impl EvidenceStore {
    /// Opens the bucket, creating it (evidence kept `days` days) when it does not
    /// exist and this NATS user may; `toronto bootstrap` creates it otherwise.
    pub async fn open(
        js: &jetstream::Context,
        subjects: &Subjects,
        days: u64,
        replicas: usize,
    ) -> Result<Self, toronto_runtime::jetstream::JetStreamError> {
        let config = bucket_config(subjects, days, replicas);
        if let Ok(kv) = js.get_key_value(&config.bucket).await {
            return Ok(Self { kv });
        }
        let name = config.bucket.clone();
        let kv = js.create_key_value(config).await.map_err(|source| {
            toronto_runtime::jetstream::JetStreamError::Bucket { name, source }
        })?;
        Ok(Self { kv })
    }

    /// Keeps a verdict with its samples; a failure is logged, never the analysis's.
    pub async fn record(
        &self,
        req: &CanaryAnalyze,
        verdict: &CanaryVerdict,
        samples: Vec<MetricSamples>,
    ) {
        let kept = VerdictEvidence {
            service: req.service.clone(),
            environment: req.environment.clone(),
            rollout_id: req.rollout_id,
            version: req.canary.get("version").cloned(),
            analyzed_at: verdict.analyzed_at,
            window_seconds: req.window_seconds,
            confidence: req.confidence,
            metrics: req.metrics.clone(),
            outcome: verdict.outcome,
            reason: verdict.reason.clone(),
            samples,
        };
        let key = format!(
            "{}.{}.{:013}.{}.{}",
            req.service,
            req.environment,
            verdict.analyzed_at.timestamp_millis().max(0),
            req.rollout_id
                .map(|id| id.simple().to_string())
                .unwrap_or_else(|| "none".into()),
            uuid::Uuid::new_v4().simple()
        );
        let bytes = match serde_json::to_vec(&kept) {
            Ok(b) => b,
            Err(e) => return tracing::warn!(error = %e, "cannot encode a verdict's evidence"),
        };
        if let Err(e) = self.kv.put(&key, bytes.into()).await {
            tracing::warn!(key, error = %e, "cannot keep a verdict's evidence");
        }
    }

    /// The keys of `service`'s verdicts (in `environment`, or in all), read by a
    /// subject filter on the bucket's stream, headers only: other services' evidence
    /// is never listed.
    async fn keys_of(
        &self,
        service: &str,
        environment: Option<&str>,
    ) -> Result<Vec<String>, EvidenceError> {
        use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
        let token = |t: &str| {
            if t.is_empty() || t.contains(['.', '*', '>', ' ']) {
                Err(EvidenceError::BadRequest(format!(
                    "`{t}` is not a service or environment name"
                )))
            } else {
                Ok(())
            }
        };
        token(service)?;
        if let Some(e) = environment {
            token(e)?;
        }
        let filter = format!(
            "{}{service}.{}.>",
            self.kv.prefix,
            environment.unwrap_or("*")
        );
        let consumer = self
            .kv
            .stream
            .create_consumer(OrderedConfig {
                filter_subject: filter,
                headers_only: true,
                deliver_policy: DeliverPolicy::LastPerSubject,
                ..Default::default()
            })
            .await
            .map_err(|e| EvidenceError::Scan(Box::new(e)))?;
        let mut pending = consumer.cached_info().num_pending;
        let mut keys = Vec::with_capacity(pending as usize);
        if pending == 0 {
            return Ok(keys);
        }
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| EvidenceError::Scan(Box::new(e)))?;
        while pending > 0 {
            let Some(message) = messages
                .try_next()
                .await
                .map_err(|e| EvidenceError::Scan(Box::new(e)))?
            else {
                break;
            };
            pending = message.info().map_err(EvidenceError::Scan)?.pending;
            let deleted = message.headers.as_ref().is_some_and(|h| {
                h.get("KV-Operation")
                    .is_some_and(|op| op.as_str() == "DEL" || op.as_str() == "PURGE")
            });
            if let Some(key) = message.subject.strip_prefix(self.kv.prefix.as_str())
                && !deleted
            {
                keys.push(key.to_owned());
            }
        }
        Ok(keys)
    }

    /// The replay of `req` (see the module documentation).
    pub async fn replay(
        &self,
        req: &AnalysisReplay,
        min_samples: usize,
    ) -> Result<ReplayPage, EvidenceError> {
        let rules = rules(req)?;
        let until = req.until.unwrap_or_else(Utc::now);
        let since = req
            .since
            .unwrap_or_else(|| until - chrono::Duration::days(DEFAULT_REPLAY_DAYS));
        if since > until {
            return Err(EvidenceError::BadRequest("`since` is after `until`".into()));
        }
        let after = req.cursor.as_deref().map(parse_cursor).transpose()?;
        let keys = self
            .keys_of(&req.service, req.environment.as_deref())
            .await?;
        let (from, to) = (since.timestamp_millis(), until.timestamp_millis());
        let mut groups: BTreeMap<String, Vec<(i64, String)>> = BTreeMap::new();
        for key in keys {
            let Some(k) = parse_key(&key) else { continue };
            if k.service != req.service
                || req
                    .environment
                    .as_deref()
                    .is_some_and(|e| e != k.environment)
                || k.at_ms < from
                || k.at_ms > to
            {
                continue;
            }
            let group = match k.rollout {
                "none" => key.clone(),
                id => format!("{}.{id}", k.environment),
            };
            groups.entry(group).or_default().push((k.at_ms, key));
        }
        // Oldest first: by the first analysis, then the group's name.
        let mut ordered: Vec<(Position, Vec<(i64, String)>)> = groups
            .into_iter()
            .map(|(name, mut steps)| {
                steps.sort();
                ((steps[0].0, name), steps)
            })
            .filter(|(at, _)| after.as_ref().is_none_or(|c| at > c))
            .collect();
        ordered.sort_by(|a, b| a.0.cmp(&b.0));
        let limit = req
            .limit
            .unwrap_or(toronto_protocol::page::DEFAULT_LIMIT)
            .clamp(1, MAX_REPLAY_LIMIT);
        let more = ordered.len() > limit;
        ordered.truncate(limit);
        let mut rollouts = Vec::new();
        let mut judged = 0;
        let mut last = None;
        let mut more = more;
        for (position, steps) in ordered {
            if judged > 0 && judged + steps.len() > MAX_VERDICTS_PER_PAGE {
                more = true;
                break;
            }
            judged += steps.len();
            let mut kept = Vec::with_capacity(steps.len());
            for (_, key) in &steps {
                let entry = self
                    .kv
                    .get(key)
                    .await
                    .map_err(|source| EvidenceError::Get {
                        key: key.clone(),
                        source,
                    })?;
                match entry.map(|b| toronto_protocol::codec::from_json_bounded(&b)) {
                    Some(Ok(e)) => kept.push(e),
                    Some(Err(e)) => tracing::warn!(key, error = %e, "unreadable evidence"),
                    None => {}
                }
            }
            last = Some(position);
            if let Some(r) = judge(&kept, &rules, req.confidence, min_samples) {
                rollouts.push(r);
            }
        }
        let next_cursor = match last {
            Some((at, name)) if more => Some(format!("{at}.{name}")),
            _ => None,
        };
        Ok(ReplayPage {
            rollouts,
            next_cursor,
        })
    }
}

/// The new rules of a replay, validated as an analysis's metrics are.
fn rules(req: &AnalysisReplay) -> Result<Vec<AnalysisMetric>, EvidenceError> {
    let metrics = match &req.template {
        Some(t) => t.metrics.clone(),
        None => req.metrics.clone(),
    };
    let probe = CanaryAnalyze {
        service: req.service.clone(),
        environment: req.environment.clone().unwrap_or_else(|| "any".into()),
        // Only the rules are checked: the sides are the recorded ones.
        canary: [("track".to_owned(), "canary".to_owned())].into(),
        baseline: [("track".to_owned(), "stable".to_owned())].into(),
        metrics: metrics.clone(),
        window_seconds: 60.0,
        confidence: req.confidence,
        rollout_id: None,
        sequential: None,
    };
    validate(&probe).map_err(|e| EvidenceError::BadRequest(e.message))?;
    Ok(metrics)
}

/// Where a rollout stands in the replay's order: its first analysis, then its name.
type Position = (i64, String);

struct Key<'a> {
    service: &'a str,
    environment: &'a str,
    at_ms: i64,
    rollout: &'a str,
}

fn parse_key(key: &str) -> Option<Key<'_>> {
    let mut parts = key.split('.');
    let k = Key {
        service: parts.next()?,
        environment: parts.next()?,
        at_ms: parts.next()?.parse().ok()?,
        rollout: parts.next()?,
    };
    parts.next()?;
    parts.next().is_none().then_some(k)
}

fn parse_cursor(cursor: &str) -> Result<(i64, String), EvidenceError> {
    let bad = || EvidenceError::BadRequest(format!("`{cursor}` is not a replay cursor"));
    let (at, name) = cursor.split_once('.').ok_or_else(bad)?;
    Ok((at.parse().map_err(|_| bad())?, name.to_owned()))
}

/// Overall: fail at the first failing analysis, else the last one's verdict.
fn overall(outcomes: &[AnalysisOutcome]) -> (AnalysisOutcome, Option<u32>) {
    match outcomes.iter().position(|o| *o == AnalysisOutcome::Fail) {
        Some(i) => (AnalysisOutcome::Fail, Some(i as u32 + 1)),
        None => (
            outcomes
                .last()
                .copied()
                .unwrap_or(AnalysisOutcome::Inconclusive),
            None,
        ),
    }
}

/// One rollout's recorded verdicts, then and under `rules` (none without verdicts).
pub fn judge(
    kept: &[VerdictEvidence],
    rules: &[AnalysisMetric],
    confidence: Option<f64>,
    min_samples: usize,
) -> Option<RolloutReplay> {
    let first = kept.first()?;
    let mut steps = Vec::with_capacity(kept.len());
    for (i, verdict) in kept.iter().enumerate() {
        let confidence = confidence
            .or(verdict.confidence)
            .unwrap_or(DEFAULT_CONFIDENCE);
        let evidence: Vec<_> = rules
            .iter()
            .map(|rule| {
                let s = verdict.samples.iter().find(|s| s.name == rule.name);
                let (c, b) = s.map_or((&[][..], &[][..]), |s| (&s.canary[..], &s.baseline[..]));
                evaluate_metric(rule, c, b, confidence, min_samples)
            })
            .collect();
        let (now, reason) = score(&evidence);
        steps.push(StepReplay {
            step: i as u32 + 1,
            analyzed_at: verdict.analyzed_at,
            then: verdict.outcome,
            now,
            reason,
        });
    }
    let (then, then_failed_at) = overall(&steps.iter().map(|s| s.then).collect::<Vec<_>>());
    let (now, now_failed_at) = overall(&steps.iter().map(|s| s.now).collect::<Vec<_>>());
    let change = match (then_failed_at, now_failed_at) {
        (Some(a), Some(b)) if b < a => ReplayChange::AbortsEarlier,
        (Some(a), Some(b)) if b > a => ReplayChange::AbortsLater,
        (Some(_), None) => ReplayChange::NoLongerAborts,
        (None, Some(_)) => ReplayChange::NowAborts,
        _ if steps.iter().any(|s| s.then != s.now) => ReplayChange::VerdictsDiffer,
        _ => ReplayChange::Unchanged,
    };
    let total = steps.len() as u32;
    steps.truncate(MAX_REPLAY_STEPS);
    Some(RolloutReplay {
        rollout_id: first.rollout_id,
        service: first.service.clone(),
        environment: first.environment.clone(),
        version: first.version.clone(),
        started_at: first.analyzed_at,
        then,
        now,
        then_failed_at,
        now_failed_at,
        change,
        steps_total: total,
        steps,
    })
}

/// When a key's milliseconds say it was analysed (for tests and tools).
pub fn key_time(key: &str) -> Option<DateTime<Utc>> {
    Utc.timestamp_millis_opt(parse_key(key)?.at_ms).single()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_capped_to_the_most_recent() {
        let many: Vec<f64> = (0..2000).map(f64::from).collect();
        let s = capped("m", many.clone(), vec![1.0; 10]);
        assert_eq!(s.canary.len(), MAX_EVIDENCE_SAMPLES);
        assert_eq!(s.canary[0], (2000 - MAX_EVIDENCE_SAMPLES) as f64);
        assert_eq!(s.baseline.len(), 10);
        assert!(s.truncated);
        assert!(!capped("m", vec![1.0], vec![]).truncated);
    }

    #[test]
    fn keys_and_cursors_parse() {
        let k = parse_key("cart.production.1790000000000.none.abc").unwrap();
        assert_eq!(
            (k.service, k.environment, k.at_ms),
            ("cart", "production", 1790000000000)
        );
        assert!(parse_key("cart.production.x.none.abc").is_none());
        assert!(parse_key("cart.production.1.none").is_none());
        assert_eq!(
            parse_cursor("12.production.abc").unwrap(),
            (12, "production.abc".into())
        );
        assert!(parse_cursor("nope").is_err());
        assert!(key_time("a.b.1000.none.c").is_some());
    }

    #[test]
    fn an_earlier_failure_is_an_earlier_abort() {
        use AnalysisOutcome::*;
        assert_eq!(overall(&[Pass, Fail, Fail]), (Fail, Some(2)));
        assert_eq!(overall(&[Pass, Inconclusive]), (Inconclusive, None));
    }
}
