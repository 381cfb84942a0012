//! What-if replays: analyses keep their evidence in JetStream, and `analysis.replay`
//! judges those past rollouts again under stricter and looser rules, page by page.

use toronto_protocol::replay::{
    AnalysisReplay, MAX_EVIDENCE_SAMPLES, ReplayChange, ReplayPage, VerdictEvidence,
};

use futures::TryStreamExt;

use super::*;

fn replay(metrics: Vec<AnalysisMetric>, since: chrono::DateTime<chrono::Utc>) -> AnalysisReplay {
    AnalysisReplay {
        service: "cart".into(),
        environment: None,
        since: Some(since),
        until: None,
        template: None,
        metrics,
        confidence: None,
        limit: None,
        cursor: None,
    }
}

impl Monitor {
    async fn replay(&self, req: AnalysisReplay) -> ReplayPage {
        self.api.request("analysis.replay", req).await.unwrap()
    }
}

#[tokio::test]
async fn past_rollouts_flip_under_stricter_and_looser_rules() {
    let m = monitor().await;
    // cart in production: a canary failing 25% of requests, 70 s of ticks (more than
    // the evidence cap in the 60 s window); in staging: a healthy canary (1.5%).
    publish_batches(
        &m.client,
        cluster_batches("cart", "production", 700, 0.25, 0.1),
    )
    .await;
    publish_batches(
        &m.client,
        cluster_batches("cart", "staging", 100, 0.005, 0.1),
    )
    .await;
    let mut staging = analysis("cart", standard_metrics());
    staging.environment = "staging".into();
    m.analyze_when_ingested(analysis("cart", standard_metrics()), 520)
        .await;
    m.analyze_when_ingested(staging.clone(), 100).await;
    let since = chrono::Utc::now();

    // Rollout A (production) aborts at its first analysis; rollout B (staging) passes
    // two.
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let mut bad = analysis("cart", standard_metrics());
    bad.rollout_id = Some(a);
    assert_eq!(m.analyze(bad).await.unwrap().outcome, AnalysisOutcome::Fail);
    staging.rollout_id = Some(b);
    for _ in 0..2 {
        let v = m.analyze(staging.clone()).await.unwrap();
        assert_eq!(v.outcome, AnalysisOutcome::Pass, "{v:#?}");
    }

    // The same rules: nothing changes.
    let same = m.replay(replay(standard_metrics(), since)).await;
    assert_eq!(same.rollouts.len(), 2, "{same:#?}");
    assert!(same.next_cursor.is_none());
    let (ra, rb) = (&same.rollouts[0], &same.rollouts[1]);
    assert_eq!((ra.rollout_id, rb.rollout_id), (Some(a), Some(b)));
    assert_eq!(
        ra.version.as_deref(),
        None,
        "the canary selector had no version"
    );
    assert_eq!(
        (ra.then, ra.then_failed_at),
        (AnalysisOutcome::Fail, Some(1))
    );
    assert_eq!((rb.then, rb.steps_total), (AnalysisOutcome::Pass, 2));
    assert!(
        same.rollouts
            .iter()
            .all(|r| r.change == ReplayChange::Unchanged)
    );

    // Looser: 50 points of error ratio allowed. A would not have aborted.
    let mut loose = metric("http_error_ratio");
    loose.critical = true;
    loose.max_absolute_effect = Some(0.5);
    let looser = m.replay(replay(vec![loose], since)).await;
    let (ra, rb) = (&looser.rollouts[0], &looser.rollouts[1]);
    assert_eq!(ra.change, ReplayChange::NoLongerAborts, "{ra:#?}");
    assert_eq!((ra.now, ra.now_failed_at), (AnalysisOutcome::Pass, None));
    assert_eq!(ra.steps[0].then, AnalysisOutcome::Fail);
    assert_eq!(ra.steps[0].now, AnalysisOutcome::Pass);
    assert_eq!(rb.change, ReplayChange::Unchanged, "{rb:#?}");

    // Stricter: a threshold of 0.3% errors on the canary alone. B would abort at its
    // first analysis; A still does.
    let mut strict = metric("http_error_ratio");
    strict.critical = true;
    strict.max_value = Some(0.003);
    let stricter = m.replay(replay(vec![strict], since)).await;
    let (ra, rb) = (&stricter.rollouts[0], &stricter.rollouts[1]);
    assert_eq!(ra.change, ReplayChange::Unchanged, "{ra:#?}");
    assert_eq!(rb.change, ReplayChange::NowAborts, "{rb:#?}");
    assert_eq!((rb.now, rb.now_failed_at), (AnalysisOutcome::Fail, Some(1)));
    assert!(rb.steps[0].reason.contains("above the maximum"), "{rb:#?}");

    // Pages of one rollout, then the next, then none; an environment filter.
    let mut first = replay(standard_metrics(), since);
    first.limit = Some(1);
    let page1 = m.replay(first.clone()).await;
    assert_eq!(page1.rollouts.len(), 1);
    assert_eq!(page1.rollouts[0].rollout_id, Some(a));
    first.cursor = page1.next_cursor.clone();
    assert!(first.cursor.is_some());
    let page2 = m.replay(first).await;
    assert_eq!(page2.rollouts.len(), 1);
    assert_eq!(page2.rollouts[0].rollout_id, Some(b));
    assert!(page2.next_cursor.is_none(), "{page2:#?}");
    let mut only = replay(standard_metrics(), since);
    only.environment = Some("staging".into());
    assert_eq!(m.replay(only).await.rollouts.len(), 1);

    // No rules, or a bad cursor: refused.
    let err = m
        .api
        .request::<_, ReplayPage>("analysis.replay", replay(vec![], since))
        .await
        .unwrap_err();
    assert!(format!("{err}").contains("metric"), "{err}");
    let mut bad_cursor = replay(standard_metrics(), since);
    bad_cursor.cursor = Some("nope".into());
    assert!(
        m.api
            .request::<_, ReplayPage>("analysis.replay", bad_cursor)
            .await
            .is_err()
    );
    m.stop().await;
}

#[tokio::test]
async fn evidence_is_kept_with_retention_and_capped() {
    let m = monitor().await;
    publish_batches(
        &m.client,
        cluster_batches("cart", "production", 700, 0.25, 0.1),
    )
    .await;
    let mut req = analysis("cart", standard_metrics());
    req.canary.insert("version".into(), "2.4.1".into());
    let id = Uuid::new_v4();
    req.rollout_id = Some(id);
    m.analyze_when_ingested(req, 520).await;

    let js = async_nats::jetstream::new(m.client.clone());
    let kv = js.get_key_value("toronto_analysis_evidence").await.unwrap();
    let status = kv.status().await.unwrap();
    assert_eq!(
        status.info.config.max_age,
        Duration::from_secs(30 * 86_400),
        "TORONTO_MONITOR_EVIDENCE_DAYS defaults to 30"
    );
    let keys: Vec<String> = kv.keys().await.unwrap().try_collect().await.unwrap();
    let key = keys
        .iter()
        .rfind(|k| k.contains(&id.simple().to_string()))
        .expect("the verdict's evidence is kept");
    assert!(key.starts_with("cart.production."), "{key}");
    let kept: VerdictEvidence =
        serde_json::from_slice(&kv.get(key).await.unwrap().unwrap()).unwrap();
    assert_eq!(kept.rollout_id, Some(id));
    assert_eq!(kept.version.as_deref(), Some("2.4.1"));
    assert_eq!(kept.outcome, AnalysisOutcome::Fail);
    assert_eq!(kept.metrics, standard_metrics());
    let errors = &kept.samples[0];
    assert_eq!(errors.name, "http_error_ratio");
    assert_eq!(errors.canary.len(), MAX_EVIDENCE_SAMPLES, "capped");
    assert_eq!(errors.baseline.len(), MAX_EVIDENCE_SAMPLES);
    assert!(errors.truncated);
    assert!(errors.canary.iter().all(|v| *v > 0.2));
    m.stop().await;
}
