//! Honest canary weights. Behind a traffic router (Gateway API HTTPRoute weights, the
//! simulated cluster) a weight is exact. Without one, one Service selects the stable
//! and the canary pods alike, so the canary's share of the traffic is its share of the
//! pods: with 3 replicas only 33% and 67% are reachable, and "10%" would really be 33%.
//! There the steps are planned in the weights the replica count can reach, each
//! changed step says so in its `note`, and the rollout reports the weight reached.

use toronto_protocol::rollout::{RolloutStep, RolloutStepKind};

/// How a target splits traffic between the stable and the canary workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrafficSplit {
    /// By weight, exactly (a traffic router).
    Exact,
    /// By the ratio of ready pods behind one Service (no router).
    ReplicaRatio,
}

/// Canary pods for `weight` percent of `total` replicas: the fewest whose share
/// rounds to the weight when one does (so a planned replica-ratio weight gets exactly
/// its pods), else the share rounded up; at least 1.
pub fn canary_replicas(total: u32, weight: u8) -> u32 {
    let total = total.max(1);
    let up = (total * u32::from(weight)).div_ceil(100).max(1);
    let share = |c: u32| (100 * c + total / 2) / total;
    if up > 1 && share(up - 1) == u32::from(weight) {
        up - 1
    } else {
        up
    }
}

/// The canary's share of the pods when it has `canary` of `total` replicas (the
/// stable keeps at least one: a single replica gets a canary beside it).
fn reached(total: u32, canary: u32) -> u8 {
    let stable = total.saturating_sub(canary).max(1);
    u8::try_from((100 * canary + (canary + stable) / 2) / (canary + stable)).unwrap_or(100)
}

/// Moves every traffic step below 100% to the nearest weight `replicas` can reach by
/// replica ratio, noting the change on the step; steps that land on the same weight
/// are merged (the later pause kept). Exact splits are left alone.
pub fn honest_weights(
    steps: Vec<RolloutStep>,
    replicas: u32,
    split: TrafficSplit,
) -> Vec<RolloutStep> {
    if split == TrafficSplit::Exact {
        return steps;
    }
    let total = replicas.max(1);
    let mut out: Vec<RolloutStep> = Vec::with_capacity(steps.len());
    for mut s in steps {
        if s.kind != RolloutStepKind::Weight || s.weight >= 100 {
            out.push(s);
            continue;
        }
        let asked = s.weight;
        let canary = if total == 1 {
            1
        } else {
            ((total * u32::from(asked) + 50) / 100).clamp(1, total - 1)
        };
        let weight = reached(total, canary);
        if weight != asked {
            let prefix =
                s.id.rsplit_once('-')
                    .map_or("weight", |(p, _)| p)
                    .to_owned();
            s.id = format!("{prefix}-{weight}");
            s.note = Some(format!(
                "{asked}% asked, {weight}% reached: without a traffic router the canary's share of the traffic is its share of the pods ({canary} canary, {} stable)",
                total.saturating_sub(canary).max(1)
            ));
            s.weight = weight;
        }
        match out.last_mut() {
            Some(prev) if prev.kind == RolloutStepKind::Weight && prev.weight >= weight => {
                prev.pause_seconds = prev.pause_seconds.max(s.pause_seconds);
                let merged = format!("{asked}% asked, merged into the {}% step", prev.weight);
                prev.note = Some(match prev.note.take() {
                    Some(n) => format!("{n}; {merged}"),
                    None => merged,
                });
            }
            _ => out.push(s),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use toronto_protocol::rollout::RolloutStepState;

    fn weight(id: &str, w: u8) -> RolloutStep {
        RolloutStep {
            id: id.into(),
            kind: RolloutStepKind::Weight,
            weight: w,
            pause_seconds: 5,
            state: RolloutStepState::Pending,
            applied_at: None,
            ready_at: None,
            done_at: None,
            note: None,
        }
    }

    #[test]
    fn replica_ratio_plans_reachable_weights_and_says_so() {
        let steps = vec![
            weight("weight-10", 10),
            weight("weight-25", 25),
            weight("weight-50", 50),
            RolloutStep {
                kind: RolloutStepKind::Promote,
                ..weight("promote", 100)
            },
        ];
        let honest = honest_weights(steps.clone(), 3, TrafficSplit::ReplicaRatio);
        let got: Vec<(&str, u8)> = honest.iter().map(|s| (s.id.as_str(), s.weight)).collect();
        // 10% and 25% are both one pod of three; 50% is two.
        assert_eq!(
            got,
            [("weight-33", 33), ("weight-67", 67), ("promote", 100)]
        );
        let note = honest[0].note.as_deref().unwrap();
        assert!(note.starts_with("10% asked, 33% reached"), "{note}");
        assert!(
            note.contains("25% asked, merged into the 33% step"),
            "{note}"
        );
        // The layout gives each planned weight exactly its pods.
        assert_eq!(canary_replicas(3, 33), 1);
        assert_eq!(canary_replicas(3, 67), 2);
        // With 10 replicas 10%, 25% (3 pods: 30%) and 50% are kept apart.
        let ten = honest_weights(steps.clone(), 10, TrafficSplit::ReplicaRatio);
        let got: Vec<u8> = ten.iter().map(|s| s.weight).collect();
        assert_eq!(got, [10, 30, 50, 100]);
        assert!(ten[0].note.is_none());
        // One replica: the canary runs beside it, half the traffic.
        let one = honest_weights(steps.clone(), 1, TrafficSplit::ReplicaRatio);
        assert_eq!(one[0].weight, 50);
        assert_eq!(one.len(), 2);
        // A router is exact.
        assert_eq!(honest_weights(steps.clone(), 3, TrafficSplit::Exact), steps);
    }

    #[test]
    fn canary_replicas_round_up_unless_a_share_matches() {
        assert_eq!(canary_replicas(3, 10), 1);
        assert_eq!(canary_replicas(3, 50), 2);
        assert_eq!(canary_replicas(4, 25), 1);
        assert_eq!(canary_replicas(4, 75), 3);
        assert_eq!(canary_replicas(10, 10), 1);
        assert_eq!(canary_replicas(1, 50), 1);
    }
}
