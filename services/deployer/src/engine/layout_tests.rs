use super::*;
use chrono::Utc;
use toronto_protocol::rollout::RolloutPhase;
use toronto_protocol::tasks::CanaryStep;
use uuid::Uuid;

fn release(family: Family, version: &str) -> Release {
    let rev = Revision {
        version: version.into(),
        image: format!("shop:{version}"),
        replicas: 4,
    };
    Release {
        layout: steady_layout(family, "shop", "production", &rev, None),
        current: rev,
        history: Vec::new(),
        rollout_id: None,
        at: Utc::now(),
    }
}

#[test]
fn weights_must_increase_within_range() {
    assert!(check_weights(&[10, 25, 50, 100]).is_ok());
    assert_eq!(
        check_weights(&[25, 10]).unwrap_err().to_string(),
        "canary steps must increase: 10 comes after 25"
    );
    assert_eq!(check_weights(&[0, 10]), Err(StepsError::OutOfRange(0)));
    assert_eq!(check_weights(&[]), Err(StepsError::NoSteps));
}

#[test]
fn canary_steps_end_with_promote_and_first_deploy_replaces() {
    let settings = Settings::default();
    let strategy = Strategy::Canary {
        steps: vec![
            CanaryStep {
                weight: 20,
                pause_seconds: Some(5),
            },
            CanaryStep {
                weight: 100,
                pause_seconds: None,
            },
        ],
    };
    let before = release(Family::Canary, "1.0.0");
    let steps = plan_steps(&strategy, Some(&before), &settings, false).unwrap();
    let ids: Vec<_> = steps.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["weight-20", "promote"]);
    assert_eq!(steps[0].pause_seconds, 5);
    let first = plan_steps(&strategy, None, &settings, false).unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].kind, RolloutStepKind::Replace);
    assert_eq!(first[0].id, FIRST_DEPLOY);
    assert_eq!(
        first[0].pause_seconds,
        settings.first_deploy_pause.as_secs()
    );
    // Never longer than the step pause.
    let quick = Settings {
        step_pause: Duration::from_secs(2),
        ..Settings::default()
    };
    assert_eq!(
        plan_steps(&strategy, None, &quick, false).unwrap()[0].pause_seconds,
        2
    );
}

#[test]
fn rolling_goes_in_analysed_batches_and_a_family_change_is_verified() {
    let settings = Settings::default();
    let ids = |steps: Vec<RolloutStep>| -> Vec<(String, RolloutStepKind)> {
        steps.into_iter().map(|s| (s.id, s.kind)).collect()
    };
    let from_rolling = release(Family::Rolling, "1.0.0");
    let steps = plan_steps(&Strategy::Rolling, Some(&from_rolling), &settings, false).unwrap();
    assert_eq!(
        ids(steps),
        [
            ("batch-25".to_owned(), RolloutStepKind::Weight),
            ("batch-50".to_owned(), RolloutStepKind::Weight),
            ("rolling".to_owned(), RolloutStepKind::Rolling),
        ]
    );
    // From blue-green to rolling: batches, not one unverified replace.
    let from_bg = release(Family::BlueGreen, "1.0.0");
    let steps = plan_steps(&Strategy::Rolling, Some(&from_bg), &settings, false).unwrap();
    assert_eq!(steps[0].id, "batch-25");
    // From rolling to blue-green: the new colour is previewed with analysis first.
    let steps = plan_steps(&Strategy::BlueGreen, Some(&from_rolling), &settings, false).unwrap();
    assert_eq!(steps[0].kind, RolloutStepKind::Preview);
    // From rolling to canary: the canary weights.
    let canary = Strategy::Canary { steps: Vec::new() };
    let steps = plan_steps(&canary, Some(&from_rolling), &settings, false).unwrap();
    assert_eq!(steps[0].id, "weight-10");
    // Only an emergency is one unanalysed step.
    let back = plan_steps(&Strategy::Rolling, Some(&from_bg), &settings, true).unwrap();
    assert_eq!(
        ids(back),
        [("replace".to_owned(), RolloutStepKind::Replace)]
    );
}

fn rollout(strategy: Strategy, steps: Vec<RolloutStep>, before: &Release) -> Rollout {
    Rollout {
        id: Uuid::nil(),
        service: "shop".into(),
        environment: "production".into(),
        version: "2.0.0".into(),
        image: "shop:2.0.0".into(),
        strategy,
        replicas: 4,
        previous: Some(before.current.clone()),
        phase: RolloutPhase::Progressing,
        steps,
        step_index: 0,
        weight: 0,
        manual_promotion: false,
        reason: None,
        rolled_back: false,
        is_rollback: false,
        emergency: false,
        pending: None,
        analyses: Vec::new(),
        plan_id: None,
        idempotency_key: "k".into(),
        correlationid: None,
        requested_by: None,
        lease: None,
        created_at: Utc::now(),
        updated_at: Utc::now(),
        finished_at: None,
    }
}

#[test]
fn blue_green_switches_to_the_other_colour() {
    let settings = Settings::default();
    let before = release(Family::BlueGreen, "1.0.0");
    let steps = plan_steps(&Strategy::BlueGreen, Some(&before), &settings, false).unwrap();
    let r = rollout(Strategy::BlueGreen, steps.clone(), &before);
    let preview = step_layout(&r, &steps[0], Some(&before), &settings);
    assert_eq!(
        preview.routing,
        Routing::BlueGreen {
            active: Track::Blue,
            preview: Some(Track::Green)
        }
    );
    let switch = step_layout(&r, &steps[1], Some(&before), &settings);
    assert_eq!(
        switch.routing,
        Routing::BlueGreen {
            active: Track::Green,
            preview: Some(Track::Blue)
        }
    );
    let green = switch
        .workloads
        .iter()
        .find(|w| w.name == "shop-green")
        .unwrap();
    assert_eq!(green.version, "2.0.0");
    let back = rollback_layout(&r, Some(&before), &settings);
    assert_eq!(
        back.routing,
        Routing::BlueGreen {
            active: Track::Blue,
            preview: None
        }
    );
    assert_eq!(
        back.workloads
            .iter()
            .find(|w| w.name == "shop-green")
            .unwrap()
            .replicas,
        0
    );
}
