//! Canary analysis: verdicts with their evidence, missing data, unreadable metric
//! messages, and continuous watches across replicas.

use super::*;

#[tokio::test]
async fn a_bad_canary_fails_with_its_evidence_and_a_good_one_passes() {
    let m = monitor().await;
    publish_batches(
        &m.client,
        cluster_batches("cart", "production", 100, 0.25, 0.1),
    )
    .await;
    publish_batches(
        &m.client,
        cluster_batches("shop-api", "production", 100, 0.01, 0.1),
    )
    .await;

    let bad = m
        .analyze_when_ingested(analysis("cart", standard_metrics()), 100)
        .await;
    assert_eq!(bad.outcome, AnalysisOutcome::Fail, "{bad:#?}");
    assert!(
        bad.reason.contains("critical metric http_error_ratio"),
        "{}",
        bad.reason
    );
    let errors = &bad.metrics[0];
    assert_eq!(errors.name, "http_error_ratio");
    assert_eq!(errors.outcome, AnalysisOutcome::Fail);
    assert_eq!((errors.canary.count, errors.baseline.count), (100, 100));
    assert!(errors.canary.median.unwrap() > 0.25 && errors.baseline.median.unwrap() < 0.03);
    assert!(errors.p_value.unwrap() < 1e-6, "{errors:?}");
    assert!(
        errors.u.unwrap() > 9000.0,
        "U near n1*n2 = 10000: {errors:?}"
    );
    assert!(errors.effect.unwrap() > 10.0, "relative effect: {errors:?}");
    // Same latency on both tracks: that metric passes.
    assert_eq!(bad.metrics[1].outcome, AnalysisOutcome::Pass, "{bad:#?}");

    let good = m
        .analyze_when_ingested(analysis("shop-api", standard_metrics()), 100)
        .await;
    assert_eq!(good.outcome, AnalysisOutcome::Pass, "{good:#?}");
    assert!(
        good.metrics
            .iter()
            .all(|e| e.outcome == AnalysisOutcome::Pass)
    );

    // A slower canary within the allowed effect passes; beyond it fails.
    publish_batches(
        &m.client,
        cluster_batches("search", "production", 80, 0.01, 0.11),
    )
    .await;
    publish_batches(
        &m.client,
        cluster_batches("orders", "production", 80, 0.01, 0.2),
    )
    .await;
    let mut latency = metric("http_latency_seconds");
    latency.max_relative_effect = Some(0.2);
    let slightly = m
        .analyze_when_ingested(analysis("search", vec![latency.clone()]), 80)
        .await;
    assert_eq!(slightly.outcome, AnalysisOutcome::Pass, "{slightly:#?}");
    assert!(
        slightly.metrics[0].p_value.unwrap() < 0.05,
        "significant but small"
    );
    let slow = m
        .analyze_when_ingested(analysis("orders", vec![latency]), 80)
        .await;
    assert_eq!(slow.outcome, AnalysisOutcome::Fail, "{slow:#?}");
    m.stop().await;
}

#[tokio::test]
async fn the_sequential_test_fails_a_20_percent_error_canary_and_passes_a_healthy_one() {
    let m = monitor().await;
    // One second of traffic: ten ticks.
    publish_batches(
        &m.client,
        cluster_batches("cart", "production", 10, 0.2, 0.1),
    )
    .await;
    publish_batches(
        &m.client,
        cluster_batches("shop-api", "production", 10, 0.01, 0.1),
    )
    .await;
    let with_sequential = |service: &str| CanaryAnalyze {
        sequential: Some(SequentialAnalysis::error_ratio_since(
            chrono::Utc::now() - chrono::Duration::seconds(5),
        )),
        ..analysis(service, standard_metrics())
    };
    let bad = m.analyze_when_ingested(with_sequential("cart"), 10).await;
    assert_eq!(bad.outcome, AnalysisOutcome::Fail, "{bad:#?}");
    assert!(
        bad.reason.starts_with(
            "critical metric http_error_ratio failed: sequential test (mSPRT) rejects"
        ),
        "{}",
        bad.reason
    );
    assert!(
        bad.metrics[0].reason.contains("always-valid p="),
        "{}",
        bad.metrics[0].reason
    );

    let good = m
        .analyze_when_ingested(with_sequential("shop-api"), 10)
        .await;
    assert_eq!(good.outcome, AnalysisOutcome::Pass, "{good:#?}");
    assert!(
        good.metrics[0]
            .reason
            .contains("sequential test (mSPRT) does not reject"),
        "{}",
        good.metrics[0].reason
    );
    // A sequential test naming a metric the request does not have is refused.
    let mut wrong = with_sequential("cart");
    wrong.sequential.as_mut().unwrap().metric = "nope".into();
    let err = m.analyze(wrong).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::BadRequest, "{err}");
    assert!(err.to_string().contains("sequential.metric"), "{err}");
    m.stop().await;
}

#[tokio::test]
async fn missing_data_is_inconclusive_unless_required_and_bad_requests_name_the_field() {
    let m = monitor().await;
    let verdict = m
        .analyze(analysis("nobody", vec![metric("http_error_ratio")]))
        .await
        .unwrap();
    assert_eq!(
        verdict.outcome,
        AnalysisOutcome::Inconclusive,
        "{verdict:#?}"
    );
    assert!(verdict.metrics[0].reason.contains("no data"));
    let mut required = metric("http_error_ratio");
    required.must_have_data = true;
    let verdict = m.analyze(analysis("nobody", vec![required])).await.unwrap();
    assert_eq!(verdict.outcome, AnalysisOutcome::Fail, "{verdict:#?}");

    for (req, field) in [
        (analysis("cart", vec![]), "metrics"),
        (
            CanaryAnalyze {
                window_seconds: 0.0,
                ..analysis("cart", vec![metric("m")])
            },
            "window_seconds",
        ),
        (
            CanaryAnalyze {
                confidence: Some(1.0),
                ..analysis("cart", vec![metric("m")])
            },
            "confidence",
        ),
    ] {
        let err = m.analyze(req).await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::BadRequest, "{err}");
        let CallError::Remote(body) = err else {
            panic!("not an error envelope")
        };
        assert_eq!(
            body.details.unwrap()["errors"][0]["field"].as_str(),
            Some(field),
            "{}",
            body.message
        );
    }
    m.stop().await;
}

#[tokio::test]
async fn unreadable_metric_messages_are_counted_and_the_monitor_keeps_going() {
    let m = monitor().await;
    for junk in [
        &b"not json"[..],
        br#"{"specversion":"1.0","id":"x","source":"s","type":"ai.toronto.devops.status.v1","data":{}}"#,
        br#"{"specversion":"1.0","id":"0193a4f0-8c1e-7cc3-9a0e-2b7f61c3d9a1","source":"s","type":"ai.toronto.devops.metrics.batch.v1","data":{"service":"a"}}"#,
    ] {
        m.client
            .publish("toronto.metrics.cart.production", junk.to_vec().into())
            .await
            .unwrap();
    }
    publish_batches(
        &m.client,
        cluster_batches("cart", "production", 20, 0.01, 0.1),
    )
    .await;
    let verdict = m
        .analyze_when_ingested(analysis("cart", standard_metrics()), 20)
        .await;
    assert_eq!(verdict.outcome, AnalysisOutcome::Pass, "{verdict:#?}");
    let text = m.metrics_text().await;
    assert!(
        text.contains("toronto_monitor_bad_metric_batches_total 3"),
        "{text}"
    );
    assert!(
        text.contains("toronto_monitor_metric_batches_total 20"),
        "{text}"
    );
    m.stop().await;
}

async fn watch(m: &Monitor, rollout_id: Uuid, service: &str) -> CanaryWatchStatus {
    let mut analyze = analysis(service, standard_metrics());
    analyze.rollout_id = Some(rollout_id);
    m.api
        .request(
            "canary.watch",
            CanaryWatch {
                analyze,
                interval_ms: 200,
                duration_seconds: 60,
            },
        )
        .await
        .unwrap()
}

/// A subscription to the verdicts the monitor publishes.
async fn verdicts(m: &Monitor) -> async_nats::Subscriber {
    let results = m
        .client
        .subscribe("toronto.devops.v1.events.analysis.result")
        .await
        .unwrap();
    m.client.flush().await.unwrap();
    results
}

async fn next_verdict(sub: &mut async_nats::Subscriber) -> Envelope<CanaryVerdict> {
    let msg = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("a verdict within 10 s")
        .unwrap();
    toronto_protocol::decode(&msg.payload, Encoding::Json).unwrap()
}

/// Waits until no verdict of `rollout_id` has arrived for a second; fails when they
/// keep coming (a few may be in flight when the watch stops).
async fn quiet(sub: &mut async_nats::Subscriber, rollout_id: Uuid) {
    for _ in 0..10 {
        match tokio::time::timeout(Duration::from_secs(1), sub.next()).await {
            Err(_) | Ok(None) => return,
            Ok(Some(msg)) => {
                let v: Envelope<CanaryVerdict> =
                    toronto_protocol::decode(&msg.payload, Encoding::Json).unwrap();
                assert_eq!(v.data.rollout_id, Some(rollout_id), "an unexpected verdict");
            }
        }
    }
    panic!("verdicts of {rollout_id} kept coming after the watch should have stopped");
}

#[tokio::test]
async fn a_watch_publishes_verdicts_until_unwatched_or_the_rollout_ends() {
    let m = monitor().await;
    publish_batches(
        &m.client,
        cluster_batches("cart", "production", 60, 0.3, 0.1),
    )
    .await;
    let mut results = verdicts(&m).await;

    // Without a rollout id: refused, naming the field.
    let err = m
        .api
        .request::<_, CanaryWatchStatus>(
            "canary.watch",
            CanaryWatch {
                analyze: analysis("cart", standard_metrics()),
                interval_ms: 200,
                duration_seconds: 60,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::BadRequest);
    assert!(err.to_string().contains("analyze.rollout_id"), "{err}");

    let first = Uuid::new_v4();
    let status = watch(&m, first, "cart").await;
    assert!(status.watching);
    let mut fails = 0;
    while fails < 2 {
        let v = next_verdict(&mut results).await;
        assert_eq!(v.data.rollout_id, Some(first));
        assert_eq!(v.subject.as_deref(), Some("cart"));
        assert_eq!(v.ty, "ai.toronto.devops.analysis.result.v1");
        if v.data.outcome == AnalysisOutcome::Fail {
            fails += 1;
        }
    }
    let stopped: CanaryWatchStatus = m
        .api
        .request("canary.unwatch", CanaryUnwatch { rollout_id: first })
        .await
        .unwrap();
    assert!(!stopped.watching);
    assert!(stopped.verdicts >= 2, "{stopped:?}");
    quiet(&mut results, first).await;

    // A rollout.aborted event for the rollout ends its watch.
    let second = Uuid::new_v4();
    watch(&m, second, "cart").await;
    assert_eq!(
        next_verdict(&mut results).await.data.rollout_id,
        Some(second)
    );
    let aborted = serde_json::json!({
        "specversion": "1.0",
        "id": Uuid::now_v7().to_string(),
        "source": "toronto://devops/deployer",
        "type": "ai.toronto.devops.rollout.v1",
        "data": {"id": second.to_string(), "service": "cart", "phase": "aborted"}
    });
    m.client
        .publish(
            "toronto.devops.v1.events.rollout.aborted",
            serde_json::to_vec(&aborted).unwrap().into(),
        )
        .await
        .unwrap();
    quiet(&mut results, second).await;
    let after: CanaryWatchStatus = m
        .api
        .request("canary.unwatch", CanaryUnwatch { rollout_id: second })
        .await
        .unwrap();
    assert!(!after.watching);
    assert!(
        after.verdicts >= 1,
        "the figures of the ended watch: {after:?}"
    );
    m.stop().await;
}

#[tokio::test]
async fn unwatch_stops_a_watch_whichever_replica_runs_it() {
    let m = monitor().await;
    let mut config = toronto_testkit::with_test_admin(Config::default());
    config.nats.urls = vec![m.server.url()];
    config.http.addr = String::new();
    let shutdown = CancellationToken::new();
    let second = toronto_monitor::start_with(config, Settings::default(), shutdown.clone())
        .await
        .unwrap();
    let second = tokio::spawn(second.run_until_shutdown());
    publish_batches(
        &m.client,
        cluster_batches("cart", "production", 30, 0.01, 0.1),
    )
    .await;
    let mut results = verdicts(&m).await;
    // Four watches: the queue group spreads them (and the unwatches) over both replicas.
    let rollouts: Vec<Uuid> = (0..4).map(|_| Uuid::new_v4()).collect();
    for id in &rollouts {
        assert!(watch(&m, *id, "cart").await.watching);
    }
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < rollouts.len() {
        seen.insert(next_verdict(&mut results).await.data.rollout_id.unwrap());
    }
    for id in &rollouts {
        let _: CanaryWatchStatus = m
            .api
            .request("canary.unwatch", CanaryUnwatch { rollout_id: *id })
            .await
            .unwrap();
    }
    // No verdict of any of them keeps coming.
    let mut late = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(1), results.next()).await {
            Err(_) | Ok(None) => break,
            Ok(Some(_)) => {
                late += 1;
                assert!(late < 20, "verdicts keep coming after every unwatch");
            }
        }
    }
    shutdown.cancel();
    second.await.unwrap().unwrap();
    m.stop().await;
}
