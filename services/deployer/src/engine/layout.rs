//! Rollout shapes: the steps of a strategy, and the layout (workloads and routing)
//! each step, the steady state and a rollback put on the target.

use std::time::Duration;

use toronto_protocol::rollout::{
    Revision, Rollout, RolloutStep, RolloutStepKind, RolloutStepState,
};
use toronto_protocol::tasks::Strategy;

use super::Release;
use super::weights::canary_replicas;
use crate::settings::Settings;
use crate::target::{Layout, Routing, Track, Workload};

/// Checks canary weights: 1 to 100, strictly increasing.
pub fn check_weights(weights: &[u8]) -> Result<(), StepsError> {
    if weights.is_empty() {
        return Err(StepsError::NoSteps);
    }
    if let Some(&w) = weights.iter().find(|w| **w == 0 || **w > 100) {
        return Err(StepsError::OutOfRange(w));
    }
    if let Some(pair) = weights.windows(2).find(|p| p[1] <= p[0]) {
        return Err(StepsError::NotIncreasing {
            before: pair[0],
            after: pair[1],
        });
    }
    Ok(())
}

/// Why canary steps are refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepsError {
    /// A canary needs at least one step.
    #[error("at least one canary step is needed")]
    NoSteps,
    /// A weight outside 1..=100.
    #[error("canary weight {0} is not between 1 and 100")]
    OutOfRange(u8),
    /// A weight not above the one before it.
    #[error("canary steps must increase: {after} comes after {before}")]
    NotIncreasing {
        /// The earlier weight.
        before: u8,
        /// The weight that does not exceed it.
        after: u8,
    },
}

/// The shape a layout routes traffic in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// One workload.
    Rolling,
    /// Stable and canary.
    Canary,
    /// Blue and green.
    BlueGreen,
}

impl Family {
    /// The family of a strategy.
    pub fn of_strategy(s: &Strategy) -> Self {
        match s {
            Strategy::Rolling => Self::Rolling,
            Strategy::BlueGreen => Self::BlueGreen,
            Strategy::Canary { .. } => Self::Canary,
        }
    }

    /// The family of a layout.
    pub fn of_layout(l: &Layout) -> Self {
        match l.routing {
            Routing::Rolling { .. } => Self::Rolling,
            Routing::BlueGreen { .. } => Self::BlueGreen,
            Routing::Canary { .. } => Self::Canary,
        }
    }
}

/// The id of a first deploy's one step, analysed against thresholds.
pub const FIRST_DEPLOY: &str = "first-deploy";

fn step(id: String, kind: RolloutStepKind, weight: u8, pause: Duration) -> RolloutStep {
    RolloutStep {
        id,
        kind,
        weight,
        pause_seconds: pause.as_secs(),
        state: RolloutStepState::Pending,
        applied_at: None,
        ready_at: None,
        done_at: None,
        note: None,
    }
}

/// The steps of a rollout of `strategy` over `previous` (what runs now). Every step
/// that puts the new version beside the old one is analysed before the next:
/// - rolling: batches (`batch-<w>`, the new version on `w` percent of the replicas
///   beside the old one, analysed like a canary step), then `rolling` to all;
/// - canary: its weights, then `promote`;
/// - blue-green: `preview`, `switch`, `scale-down`.
///
/// A change of strategy family takes the new strategy's steps from the old shape, so
/// it is verified too, and so is a rollback (its strategy is the service's current
/// shape). A first deploy has nothing to compare with: one `first-deploy` step puts
/// the version in place in the strategy's shape and pauses
/// (`TORONTO_DEPLOYER_FIRST_DEPLOY_PAUSE_SECONDS`, at most the step pause) while its
/// analysis checks
/// thresholds. Only an `emergency` (a rollback the operator called one) is one
/// unanalysed `replace` step.
pub fn plan_steps(
    strategy: &Strategy,
    previous: Option<&Release>,
    settings: &Settings,
    emergency: bool,
) -> Result<Vec<RolloutStep>, StepsError> {
    let pause = settings.step_pause;
    if let Strategy::Canary { steps } = strategy
        && !steps.is_empty()
    {
        check_weights(&steps.iter().map(|s| s.weight).collect::<Vec<_>>())?;
    }
    if emergency {
        let mut only = step(
            "replace".into(),
            RolloutStepKind::Replace,
            100,
            Duration::ZERO,
        );
        only.note = Some("emergency: put in place in one step, without analysis".into());
        return Ok(vec![only]);
    }
    if previous.is_none() {
        let mut only = step(
            FIRST_DEPLOY.into(),
            RolloutStepKind::Replace,
            100,
            settings.first_deploy_pause.min(settings.step_pause),
        );
        only.note = Some(format!(
            "first deploy: nothing to compare with, so the analysis checks thresholds (error ratio at most {}, latency at most {} s)",
            settings.first_deploy_max_error_ratio, settings.first_deploy_max_latency_seconds
        ));
        return Ok(vec![only]);
    }
    Ok(match strategy {
        Strategy::Rolling => {
            let mut out: Vec<RolloutStep> = settings
                .rolling_batches
                .iter()
                .filter(|w| **w < 100)
                .map(|w| step(format!("batch-{w}"), RolloutStepKind::Weight, *w, pause))
                .collect();
            out.push(step(
                "rolling".into(),
                RolloutStepKind::Rolling,
                100,
                Duration::ZERO,
            ));
            out
        }
        Strategy::BlueGreen => vec![
            step("preview".into(), RolloutStepKind::Preview, 0, pause),
            step(
                "switch".into(),
                RolloutStepKind::Switch,
                100,
                settings.scale_down_delay,
            ),
            step(
                "scale-down".into(),
                RolloutStepKind::ScaleDown,
                100,
                Duration::ZERO,
            ),
        ],
        Strategy::Canary { steps } => {
            let weights: Vec<(u8, Duration)> = if steps.is_empty() {
                settings.canary_steps.iter().map(|w| (*w, pause)).collect()
            } else {
                steps
                    .iter()
                    .map(|s| {
                        (
                            s.weight,
                            s.pause_seconds.map(Duration::from_secs).unwrap_or(pause),
                        )
                    })
                    .collect()
            };
            let mut out: Vec<RolloutStep> = weights
                .iter()
                .filter(|(w, _)| *w < 100)
                .map(|(w, p)| step(format!("weight-{w}"), RolloutStepKind::Weight, *w, *p))
                .collect();
            out.push(step(
                "promote".into(),
                RolloutStepKind::Promote,
                100,
                Duration::ZERO,
            ));
            out
        }
    })
}

fn workload(name: String, track: Track, rev: &Revision, replicas: u32) -> Workload {
    Workload {
        name,
        track,
        version: rev.version.clone(),
        image: rev.image.clone(),
        replicas,
    }
}

/// Adds, at 0 replicas, every workload of `before` that `layout` does not name, so
/// that what a change leaves behind stops running.
fn zero_others(mut layout: Layout, before: Option<&Layout>) -> Layout {
    if let Some(before) = before {
        for w in &before.workloads {
            if !layout.workloads.iter().any(|x| x.name == w.name) {
                let mut w = w.clone();
                w.replicas = 0;
                layout.workloads.push(w);
            }
        }
    }
    layout
}

fn active_colour(layout: &Layout) -> Option<Track> {
    match layout.routing {
        Routing::BlueGreen { active, .. } => Some(active),
        _ => None,
    }
}

/// The layout in which `rev` serves everything, in `family`'s shape.
pub fn steady_layout(
    family: Family,
    service: &str,
    environment: &str,
    rev: &Revision,
    before: Option<&Layout>,
) -> Layout {
    let (workloads, routing) = match family {
        Family::Rolling => (
            vec![workload(service.into(), Track::Stable, rev, rev.replicas)],
            Routing::Rolling {
                max_surge: "25%".into(),
                max_unavailable: "0".into(),
            },
        ),
        Family::Canary => (
            vec![
                workload(service.into(), Track::Stable, rev, rev.replicas),
                workload(format!("{service}-canary"), Track::Canary, rev, 0),
            ],
            Routing::Canary { canary_weight: 0 },
        ),
        Family::BlueGreen => {
            let colour = before
                .and_then(active_colour)
                .map(Track::other_colour)
                .unwrap_or(Track::Blue);
            (
                vec![workload(
                    format!("{service}-{}", colour.as_str()),
                    colour,
                    rev,
                    rev.replicas,
                )],
                Routing::BlueGreen {
                    active: colour,
                    preview: None,
                },
            )
        }
    };
    zero_others(
        Layout {
            service: service.into(),
            environment: environment.into(),
            workloads,
            routing,
            step_key: String::new(),
            progress_deadline_seconds: 0,
            pod_template: None,
        },
        before,
    )
}

/// The layout a step of `r` applies, given what ran before it.
pub fn step_layout(
    r: &Rollout,
    step: &RolloutStep,
    before: Option<&Release>,
    settings: &Settings,
) -> Layout {
    let new = Revision {
        version: r.version.clone(),
        image: r.image.clone(),
        replicas: r.replicas,
    };
    let before_layout = before.map(|b| &b.layout);
    let old = r.previous.clone().unwrap_or_else(|| new.clone());
    let svc = r.service.as_str();
    let env = r.environment.as_str();
    let mut layout = match step.kind {
        RolloutStepKind::Replace => {
            // A rollback keeps the service's shape; anything else takes the strategy's.
            let family = if r.is_rollback {
                before_layout.map_or(Family::Rolling, Family::of_layout)
            } else {
                Family::of_strategy(&r.strategy)
            };
            steady_layout(family, svc, env, &new, before_layout)
        }
        RolloutStepKind::Rolling => {
            let mut l = steady_layout(Family::Rolling, svc, env, &new, before_layout);
            // The analysed batches ran the new version on `<svc>-canary`: it stops now.
            let canary = format!("{svc}-canary");
            if r.steps.iter().any(|s| s.kind == RolloutStepKind::Weight)
                && !l.workloads.iter().any(|w| w.name == canary)
            {
                l.workloads.push(workload(canary, Track::Canary, &new, 0));
            }
            l
        }
        RolloutStepKind::Promote => steady_layout(Family::Canary, svc, env, &new, before_layout),
        RolloutStepKind::Weight => {
            let total = r.replicas.max(1);
            let canary = canary_replicas(total, step.weight);
            let stable = total.saturating_sub(canary).max(1);
            zero_others(
                Layout {
                    service: svc.into(),
                    environment: env.into(),
                    workloads: vec![
                        workload(svc.into(), Track::Stable, &old, stable),
                        workload(format!("{svc}-canary"), Track::Canary, &new, canary),
                    ],
                    routing: Routing::Canary {
                        canary_weight: step.weight,
                    },
                    step_key: String::new(),
                    progress_deadline_seconds: 0,
                    pod_template: None,
                },
                before_layout,
            )
        }
        RolloutStepKind::Preview | RolloutStepKind::Switch | RolloutStepKind::ScaleDown => {
            let old_colour = before_layout.and_then(active_colour).unwrap_or(Track::Blue);
            let new_colour = old_colour.other_colour();
            let old_replicas = if step.kind == RolloutStepKind::ScaleDown {
                0
            } else {
                old.replicas
            };
            let routing = match step.kind {
                RolloutStepKind::Preview => Routing::BlueGreen {
                    active: old_colour,
                    preview: Some(new_colour),
                },
                RolloutStepKind::Switch => Routing::BlueGreen {
                    active: new_colour,
                    preview: Some(old_colour),
                },
                _ => Routing::BlueGreen {
                    active: new_colour,
                    preview: None,
                },
            };
            zero_others(
                Layout {
                    service: svc.into(),
                    environment: env.into(),
                    workloads: vec![
                        workload(
                            format!("{svc}-{}", old_colour.as_str()),
                            old_colour,
                            &old,
                            old_replicas,
                        ),
                        workload(
                            format!("{svc}-{}", new_colour.as_str()),
                            new_colour,
                            &new,
                            r.replicas,
                        ),
                    ],
                    routing,
                    step_key: String::new(),
                    progress_deadline_seconds: 0,
                    pod_template: None,
                },
                before_layout,
            )
        }
    };
    layout.step_key = format!("{}:{}", r.id, step.id);
    layout.progress_deadline_seconds = settings.progress_deadline.as_secs().clamp(1, 86_400) as u32;
    layout
}

/// What to apply to send all traffic back to what ran before `r` (or, for a first
/// deploy, to stop the new version).
pub fn rollback_layout(r: &Rollout, before: Option<&Release>, settings: &Settings) -> Layout {
    let current = r
        .steps
        .get(r.step_index.min(r.steps.len().saturating_sub(1)))
        .map(|s| step_layout(r, s, before, settings));
    let mut layout = match before {
        Some(b) => zero_others(b.layout.clone(), current.as_ref()),
        None => {
            let mut l = current.unwrap_or_else(|| {
                steady_layout(
                    Family::of_strategy(&r.strategy),
                    &r.service,
                    &r.environment,
                    &Revision {
                        version: r.version.clone(),
                        image: r.image.clone(),
                        replicas: 0,
                    },
                    None,
                )
            });
            for w in &mut l.workloads {
                w.replicas = 0;
            }
            l
        }
    };
    layout.step_key = format!("{}:rollback", r.id);
    layout.progress_deadline_seconds = settings.progress_deadline.as_secs().clamp(1, 86_400) as u32;
    layout
}

#[cfg(test)]
#[path = "layout_tests.rs"]
mod tests;
