//! Rollouts: `rollout.start` and `rollout.list` on the simulated cluster.

use crate::common::*;

/// Rollouts: `rollout.start` and `rollout.list` on the simulated cluster.
pub async fn rollouts(samples: usize) -> (Vec<Row>, Rollout) {
    let server = NatsServer::start().await;
    let shutdown = CancellationToken::new();
    let settings = toronto_deployer::Settings::default();
    let started = toronto_deployer::start_with(config(&server), settings, None, shutdown.clone())
        .await
        .unwrap();
    let running = tokio::spawn(started.runtime.run_until_shutdown());
    let client = server.client().await;
    let js = jetstream::new(client.clone());
    let kv = js.get_key_value("toronto_rollouts").await.unwrap();
    let start = |client: async_nats::Client, service: String| async move {
        let request = ExecuteRequest {
            plan_id: Uuid::now_v7(),
            idempotency_key: Uuid::now_v7().to_string(),
            task: PlanTask::Deploy(Box::new(deploy(service))),
        };
        let accepted: ExecuteAccepted = ask(&client, "deployer.rollout.start", request).await;
        // "rollout <id>"
        let reference = accepted.reference.expect("a rollout reference");
        reference.trim_start_matches("rollout ").to_owned()
    };
    let first = start(client.clone(), "svc-seed".into()).await;
    let record: serde_json::Value = kv_json(&kv, &format!("rollout.{first}")).await;
    let rollout: Rollout = serde_json::from_value(record.clone()).unwrap();
    let ended = |r: &mut serde_json::Value| r["phase"] = serde_json::json!("succeeded");
    let mut count = 1;
    let history = sizes(100);
    let (mut starts, mut list) = ([Duration::ZERO; 3], [Duration::ZERO; 3]);
    // Every service timed below is deployed once first, so that each timed start is a
    // new version of a known service at every level (a first deploy costs more).
    for i in (0..samples).chain(1_000_000..1_000_002) {
        start(client.clone(), format!("svc-{i}")).await;
        count += 1;
    }
    // No rollout in flight when a level starts (a service takes one at a time, and the
    // simulated traffic of rollouts in flight costs CPU).
    let settle = |client: async_nats::Client| async move {
        for _ in 0..600 {
            let active = RolloutList {
                active: true,
                ..Default::default()
            };
            let page: Rollouts = ask(&client, "deployer.rollout.list", active).await;
            if page.rollouts.is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        panic!("rollouts still in flight after 5 minutes");
    };
    settle(client.clone()).await;
    for (level, target) in history.iter().enumerate() {
        let newest = seed(&kv, "rollout", &record, ended, &mut count, *target).await;
        until_listed("rollout.list", newest, || {
            let client = client.clone();
            async move {
                let first = RolloutList {
                    limit: Some(1),
                    ..Default::default()
                };
                let page: Rollouts = ask(&client, "deployer.rollout.list", first).await;
                page.rollouts.first().map(|r| r.id)
            }
        })
        .await;
        // The same services at every level: each service started is simulated (its
        // traffic costs CPU), so new ones per level would grow the cost with them.
        starts[level] = time(samples, |i| {
            let client = client.clone();
            async move {
                start(client, format!("svc-{i}")).await;
            }
        })
        .await;
        list[level] = time(samples, |_| {
            let client = client.clone();
            async move {
                let page: Rollouts =
                    ask(&client, "deployer.rollout.list", RolloutList::default()).await;
                assert!(!page.rollouts.is_empty());
            }
        })
        .await;
        count += samples + 2;
        settle(client.clone()).await;
    }
    shutdown.cancel();
    let _ = running.await;
    (
        vec![
            Row {
                operation: "rollout.start",
                history,
                unit: "rollouts",
                median: starts,
            },
            Row {
                operation: "rollout.list (first page)",
                history,
                unit: "rollouts",
                median: list,
            },
        ],
        rollout,
    )
}
