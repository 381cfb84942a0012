//! Evidence against a rollout: alerts and failing analyses heard on the bus, canary
//! analyses asked of the monitor, and the simulated cluster's own counts when no
//! monitor answers.

use chrono::{DateTime, Utc};
use std::collections::BTreeMap;
use std::time::Duration;

use toronto_protocol::analysis::{
    AnalysisMetric, AnalysisOutcome, CanaryAnalyze, CanaryVerdict, Direction, OnNoData,
    SequentialAnalysis,
};
use toronto_protocol::rollout::{AnalysisRecord, Rollout, RolloutStep, RolloutStepKind};
use toronto_protocol::{Encoding, Envelope, ServiceKind};
use toronto_runtime::rpc::{CallError, call_signed};

use uuid::Uuid;

use super::sim_verdict::threshold_verdict;
use super::{
    Deployer, Heard, LastOutcome, Release, first_deploy_metrics, step_layout, template_for,
};
use crate::kube::track_label;
use crate::settings::Settings;
use crate::target::Track;

impl Deployer {
    /// Evidence that the step should be aborted: something heard on the bus, or an
    /// analysis run now (at most once per analysis interval).
    pub(super) async fn evidence_against(
        &self,
        r: &Rollout,
        step: &RolloutStep,
        before: Option<&Release>,
    ) -> Option<AnalysisRecord> {
        // Only steps that send traffic to the new version are judged (not an emergency
        // rollback's one step).
        let judged = analysis_tracks(r, step, before, &self.settings)?;
        if let Some(h) = self.take_heard(r) {
            return Some(AnalysisRecord {
                step: step.id.clone(),
                source: h.source.into(),
                verdict: h.verdict,
            });
        }
        {
            // A step not analysed yet is analysed now, whatever the interval.
            let same_step = self
                .last_outcome
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&r.id)
                .is_some_and(|o| o.step == step.id);
            let mut last = self.last_analysis.lock().unwrap_or_else(|e| e.into_inner());
            let every = self.analysis_period(matches!(judged, Judged::Compare { .. }));
            if same_step && last.get(&r.id).is_some_and(|t| t.elapsed() < every) {
                return None;
            }
            last.insert(r.id, std::time::Instant::now());
        }
        let layout = step_layout(r, step, before, &self.settings);
        let side = |track: Track| {
            let w = layout.workloads.iter().find(|w| w.track == track);
            Side {
                track,
                workload: w.map_or_else(|| default_workload(&r.service, track), |w| w.name.clone()),
                version: w.map(|w| w.version.clone()),
            }
        };
        let (canary, baseline) = match judged {
            Judged::Compare { new, baseline } => (side(new), Some(side(baseline))),
            Judged::Thresholds { new } => (side(new), None),
        };
        // The sequential test counts from when the step's workloads were ready.
        let since = step.ready_at.unwrap_or_else(Utc::now);
        let (source, verdict) =
            Box::pin(self.analyze(r, &canary, baseline.as_ref(), since)).await?;
        self.last_outcome
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                r.id,
                LastOutcome {
                    step: step.id.clone(),
                    source,
                    verdict: verdict.clone(),
                },
            );
        (verdict.outcome == AnalysisOutcome::Fail).then(|| AnalysisRecord {
            step: step.id.clone(),
            source: source.into(),
            verdict,
        })
    }

    /// Whether comparisons run the sequential test on bus metrics, asked every
    /// sequential interval (a template's sequential test, on counts read from
    /// Prometheus, is asked at the analysis interval, with the template's other
    /// metrics).
    pub(super) fn sequential_on(&self) -> bool {
        self.settings.sequential_analysis && !self.settings.uses_templates()
    }

    /// Time between two analyses of a step: the sequential interval when a comparison
    /// runs the sequential test, else the analysis interval.
    pub(super) fn analysis_period(&self, compare: bool) -> Duration {
        if compare && self.sequential_on() {
            self.settings.sequential_interval
        } else {
            self.settings.analysis_interval
        }
    }

    /// A firing alert heard on the service since `since`, described.
    pub(crate) fn heard_alert(
        &self,
        service: &str,
        environment: &str,
        since: DateTime<Utc>,
    ) -> Option<String> {
        let heard = self.heard.lock().unwrap_or_else(|e| e.into_inner());
        heard
            .get(&(service.to_owned(), environment.to_owned()))?
            .iter()
            .find(|h| h.at >= since && h.source == "alert")
            .map(|h| h.verdict.reason.clone())
    }

    /// Evidence heard on the bus since the rollout began.
    fn take_heard(&self, r: &Rollout) -> Option<Heard> {
        let heard = self.heard.lock().unwrap_or_else(|e| e.into_inner());
        heard
            .get(&(r.service.clone(), r.environment.clone()))?
            .iter()
            .find(|h| {
                h.at >= r.created_at
                    && h.rollout_id.is_none_or(|id| id == r.id)
                    // An alert on the service is about the version a rollback takes
                    // traffic away from: the rollback's own analysis judges it.
                    && (h.source != "alert" || (self.settings.abort_on_alert && !r.is_rollback))
            })
            .cloned()
    }

    /// The passing verdict of `step`'s last analysis, to keep on the rollout as the
    /// evidence the step went on with (none when it was not analysed).
    pub(super) fn passed_analysis(
        &self,
        r: &Rollout,
        step: &RolloutStep,
    ) -> Option<AnalysisRecord> {
        self.last_outcome
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&r.id)
            .filter(|o| o.step == step.id && o.verdict.outcome == AnalysisOutcome::Pass)
            .map(|o| AnalysisRecord {
                step: step.id.clone(),
                source: o.source.into(),
                verdict: o.verdict.clone(),
            })
    }

    /// How long `step` holds once its workloads are ready before it may go on: its
    /// pause, and, while a step judged by a template has no conclusive analysis yet,
    /// at least one analysis window plus one analysis interval. The series of pods
    /// the step started begin when they do: the window Prometheus is asked about
    /// fills only that long after, so `on_no_data` is decided then, not before
    /// anyone could have seen the new version.
    pub(super) fn step_hold(
        &self,
        r: &Rollout,
        step: &RolloutStep,
        before: Option<&Release>,
    ) -> Duration {
        let pause = Duration::from_secs(step.pause_seconds);
        if !self.settings.uses_templates()
            || analysis_tracks(r, step, before, &self.settings).is_none()
        {
            return pause;
        }
        let conclusive = self
            .last_outcome
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&r.id)
            .is_some_and(|o| {
                o.step == step.id && o.verdict.outcome != AnalysisOutcome::Inconclusive
            });
        if conclusive {
            pause
        } else {
            pause.max(self.settings.analysis_window + self.settings.analysis_interval)
        }
    }

    /// Why a rollout judged by a template has nothing to go on once its step's hold
    /// is over (its latest analysis of the step is inconclusive, or there is none),
    /// with the policy that applies; `None` when it has data, when the step is not
    /// analysed, or when bus metrics judge it.
    pub(super) fn no_data(
        &self,
        r: &Rollout,
        step: &RolloutStep,
        before: Option<&Release>,
    ) -> Option<(OnNoData, CanaryVerdict)> {
        if !self.settings.uses_templates() {
            return None;
        }
        analysis_tracks(r, step, before, &self.settings)?;
        let policy = template_for(&r.service, &self.settings)
            .ok()
            .and_then(|t| t.on_no_data)
            .unwrap_or(self.settings.on_no_data);
        let last = self
            .last_outcome
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&r.id)
            .filter(|o| o.step == step.id)
            .map(|o| o.verdict.clone());
        match last {
            Some(v) if v.outcome != AnalysisOutcome::Inconclusive => None,
            Some(v) => Some((policy, v)),
            None => Some((
                policy,
                inconclusive(r, "the step was never analysed".into()),
            )),
        }
    }

    /// Forgets what this process holds about a rollout that ended: its analyses and
    /// the steps it applied here (so that what it holds does not grow with history).
    pub(super) fn forget_rollout(&self, id: Uuid) {
        self.forget_analyses(id);
        let prefix = format!("{id}:");
        self.applied_here
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|key| !key.starts_with(&prefix));
    }

    /// Forgets a rollout's analyses (paused for lack of data, or ended), so that the
    /// next pass analyses afresh.
    pub(super) fn forget_analyses(&self, id: Uuid) {
        self.last_analysis
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        self.last_outcome
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }

    /// Asks the monitor with the service's template: any failure to get an answer is
    /// no data (never a pass).
    async fn analyze_with_template(
        &self,
        r: &Rollout,
        canary: &Side,
        baseline: Option<&Side>,
        since: DateTime<Utc>,
    ) -> (&'static str, CanaryVerdict) {
        let template = match template_for(&r.service, &self.settings) {
            Ok(t) => t,
            Err(e) => return ("template", inconclusive(r, e)),
        };
        let metrics = match baseline {
            Some(_) => template.metrics.clone(),
            None => first_deploy_metrics(&template, &self.settings),
        };
        // A comparison also runs the template's sequential test on the counts it
        // names, from when the step's workloads were ready.
        let sequential = template
            .sequential
            .as_ref()
            .filter(|_| baseline.is_some() && self.settings.sequential_analysis)
            .map(|q| SequentialAnalysis {
                metric: q.metric.clone(),
                requests_query: Some(q.requests_query.clone()),
                errors_query: Some(q.errors_query.clone()),
                interval_seconds: q.interval_seconds,
                ..SequentialAnalysis::error_ratio_since(since)
            });
        if metrics.is_empty() {
            return (
                "template",
                inconclusive(
                    r,
                    format!(
                        "analysis template `{}` has no metric a first deploy can be checked by (no threshold, no error_ratio)",
                        template.name
                    ),
                ),
            );
        }
        // A first deploy has no baseline: its threshold checks never read one, but
        // the request names a side that selects nothing.
        let nothing = Side {
            track: canary.track,
            workload: format!("{}-no-baseline", canary.workload),
            version: Some("none".into()),
        };
        let baseline = baseline.unwrap_or(&nothing);
        let namespace = self.target.namespace_of(&r.environment);
        let vars = |side: &Side, fallback_version: Option<&str>| -> BTreeMap<String, String> {
            let version = side
                .version
                .clone()
                .or_else(|| fallback_version.map(str::to_owned))
                .unwrap_or_default();
            [
                ("service", r.service.clone()),
                ("namespace", namespace.clone()),
                ("version", version),
                ("track", side.track.as_str().to_owned()),
                ("track_label", track_label(side.track).to_owned()),
                ("workload", side.workload.clone()),
                (
                    "backend",
                    if side.track == Track::Canary {
                        "1"
                    } else {
                        "0"
                    }
                    .to_owned(),
                ),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect()
        };
        let request = CanaryAnalyze {
            service: r.service.clone(),
            environment: r.environment.clone(),
            canary: vars(canary, Some(&r.version)),
            baseline: vars(baseline, r.previous.as_ref().map(|p| p.version.as_str())),
            metrics,
            window_seconds: self.settings.analysis_window.as_secs_f64(),
            confidence: None,
            rollout_id: Some(r.id),
            sequential,
        };
        match self.ask_monitor(r, request).await {
            Ok(verdict) => ("monitor", verdict),
            Err(e) => (
                "monitor",
                inconclusive(r, format!("no analysis: the monitor did not answer: {e}")),
            ),
        }
    }

    /// The monitor's `canary.analyze` verdict on `request` about `r`.
    async fn ask_monitor(
        &self,
        r: &Rollout,
        request: CanaryAnalyze,
    ) -> Result<CanaryVerdict, CallError> {
        let envelope = Envelope::builder(self.source.clone(), request)
            .subject(r.service.clone())
            .build();
        let subject = self
            .subjects
            .command(ServiceKind::Monitor, "canary.analyze");
        // Unsigned: `canary.analyze` is a read (an open endpoint), and signing each of
        // a hundred analyses a second would cost more than the analyses.
        call_signed::<_, CanaryVerdict>(
            &self.client,
            None,
            &subject,
            &envelope,
            Encoding::Json,
            self.settings.analysis_timeout,
        )
        .await
        .map(|reply| reply.data)
    }

    /// Asks the monitor; falls back to the simulated target's own numbers when no
    /// monitor answers. With templates, asks with the service's template.
    async fn analyze(
        &self,
        r: &Rollout,
        canary_side: &Side,
        baseline_side: Option<&Side>,
        since: DateTime<Utc>,
    ) -> Option<(&'static str, CanaryVerdict)> {
        if self.settings.uses_templates() {
            // Boxed: keeps the reconciler's future small (it is polled on small stacks).
            return Some(
                Box::pin(self.analyze_with_template(r, canary_side, baseline_side, since)).await,
            );
        }
        let canary = canary_side.track;
        let baseline = baseline_side.map(|b| b.track);
        let metric = |name: &str, critical: bool| AnalysisMetric {
            name: name.into(),
            query: None,
            direction: Direction::Increase,
            max_relative_effect: None,
            max_absolute_effect: None,
            critical,
            must_have_data: false,
            max_value: None,
            min_value: None,
        };
        let (baseline_labels, metrics) = match baseline {
            Some(track) => (
                [("track".to_owned(), track.as_str().to_owned())]
                    .into_iter()
                    .chain(
                        r.previous
                            .as_ref()
                            .map(|p| ("version".to_owned(), p.version.clone())),
                    )
                    .collect(),
                vec![
                    AnalysisMetric {
                        max_absolute_effect: Some(self.settings.max_error_ratio_increase),
                        ..metric("http_error_ratio", true)
                    },
                    AnalysisMetric {
                        max_relative_effect: Some(self.settings.max_latency_increase),
                        ..metric("http_latency_seconds", false)
                    },
                ],
            ),
            // A first deploy: absolute limits, no baseline read (the labels select
            // nothing).
            None => (
                [("baseline".to_owned(), "none".to_owned())].into(),
                vec![
                    AnalysisMetric {
                        max_value: Some(self.settings.first_deploy_max_error_ratio),
                        ..metric("http_error_ratio", true)
                    },
                    AnalysisMetric {
                        max_value: Some(self.settings.first_deploy_max_latency_seconds),
                        ..metric("http_latency_seconds", false)
                    },
                ],
            ),
        };
        let request = CanaryAnalyze {
            service: r.service.clone(),
            environment: r.environment.clone(),
            // The version too: an earlier canary's samples on the same track must not
            // count against this one.
            canary: [
                ("track".to_owned(), canary.as_str().to_owned()),
                ("version".to_owned(), r.version.clone()),
            ]
            .into(),
            baseline: baseline_labels,
            metrics,
            window_seconds: self.settings.analysis_window.as_secs_f64(),
            confidence: None,
            rollout_id: Some(r.id),
            // The error ratio of a comparison is also judged by the sequential test.
            sequential: (baseline.is_some() && self.sequential_on())
                .then(|| SequentialAnalysis::error_ratio_since(since)),
        };
        match self.ask_monitor(r, request).await {
            Ok(verdict) => Some(("monitor", verdict)),
            Err(CallError::NoResponders(_) | CallError::Timeout { .. }) => {
                let sim = self.sim.as_ref()?;
                Some((
                    "threshold",
                    threshold_verdict(sim, r, canary, baseline, &self.settings),
                ))
            }
            Err(e) => {
                tracing::warn!(rollout = %r.id, error = %e, "canary analysis failed");
                None
            }
        }
    }
}

/// One side of a comparison: its track, workload and version.
struct Side {
    track: Track,
    workload: String,
    version: Option<String>,
}

/// The workload name a track has by convention (see [`crate::target::Workload`]).
fn default_workload(service: &str, track: Track) -> String {
    match track {
        Track::Stable => service.to_owned(),
        t => format!("{service}-{}", t.as_str()),
    }
}

/// An inconclusive verdict (no data) with its reason.
pub(super) fn inconclusive(r: &Rollout, reason: String) -> CanaryVerdict {
    CanaryVerdict {
        service: r.service.clone(),
        environment: r.environment.clone(),
        rollout_id: Some(r.id),
        outcome: AnalysisOutcome::Inconclusive,
        reason,
        metrics: Vec::new(),
        analyzed_at: Utc::now(),
    }
}

pub(super) fn trim(analyses: &mut Vec<AnalysisRecord>) {
    let excess = analyses.len().saturating_sub(20);
    analyses.drain(..excess);
}

/// What a step's analysis judges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Judged {
    /// The new version's track against the old version's.
    Compare {
        /// Where the new version runs.
        new: Track,
        /// Where the old one runs.
        baseline: Track,
    },
    /// A first deploy: the new version's track against absolute thresholds.
    Thresholds {
        /// Where the new version runs.
        new: Track,
    },
}

/// What a step analyses, when it has something to analyse: the canary with the
/// stable, the new colour (behind the preview Service, then active) with the old one,
/// or a first deploy against thresholds. An emergency rollback's one step is not
/// analysed.
fn analysis_tracks(
    r: &Rollout,
    step: &RolloutStep,
    before: Option<&Release>,
    settings: &Settings,
) -> Option<Judged> {
    let new_track = || {
        step_layout(r, step, before, settings)
            .workloads
            .iter()
            .find(|w| w.version == r.version && w.replicas > 0)
            .map(|w| w.track)
    };
    match step.kind {
        RolloutStepKind::Weight => Some(Judged::Compare {
            new: Track::Canary,
            baseline: Track::Stable,
        }),
        RolloutStepKind::Preview | RolloutStepKind::Switch => {
            let new = new_track()?;
            Some(Judged::Compare {
                new,
                baseline: new.other_colour(),
            })
        }
        RolloutStepKind::Replace if r.previous.is_none() && !r.emergency => {
            Some(Judged::Thresholds { new: new_track()? })
        }
        _ => None,
    }
}
