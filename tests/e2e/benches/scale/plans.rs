//! Plans: `planner.submit`, a plan to its end, and `plan.list`.

use crate::common::*;

pub async fn host(client: &async_nats::Client, name: &str) -> ServiceHost {
    ServiceHost::start(
        client.clone(),
        ServiceSpec {
            name: name.into(),
            version: "0.0.0".into(),
            description: "bench peer".into(),
            metadata: Default::default(),
            queue_group: name.into(),
            source: format!("toronto://agents/{name}"),
        },
        EndpointConfig::default(),
        Metrics::new(),
        None,
    )
    .await
    .unwrap()
}

/// A security peer that passes and a deployer that accepts at once, so that a plan
/// runs to its end in milliseconds.
pub async fn fake_peers(client: &async_nats::Client) -> Vec<ServiceHost> {
    let security = host(client, "bench-security").await;
    security
        .add_endpoint(
            "scan",
            "toronto.agents.security.v1.scan",
            |_r: Request<SecurityScanRequest>| async {
                Ok::<_, ErrorBody>(GateVerdict {
                    passed: true,
                    reason: None,
                    findings: None,
                })
            },
        )
        .await
        .unwrap();
    let deployer = host(client, "bench-deployer").await;
    deployer
        .add_endpoint(
            "rollout-start",
            format!("{V1}.deployer.rollout.start"),
            |r: Request<ExecuteRequest>| async move {
                Ok::<_, ErrorBody>(ExecuteAccepted {
                    reference: Some(r.data().idempotency_key.clone()),
                })
            },
        )
        .await
        .unwrap();
    client.flush().await.unwrap();
    vec![security, deployer]
}

/// Plans: submit, submit to the plan's end (`plan.completed`), and `plan.list`.
pub async fn plans(samples: usize) -> Vec<Row> {
    let server = NatsServer::start().await;
    let shutdown = CancellationToken::new();
    let settings = toronto_planner::Settings {
        promotion: Vec::new(),
        budget_environments: Vec::new(),
        approval_environments: Vec::new(),
        qa_environments: Vec::new(),
        ..Default::default()
    };
    let rt = toronto_planner::start_with(config(&server), settings, shutdown.clone())
        .await
        .unwrap();
    let running = tokio::spawn(rt.run_until_shutdown());
    let client = server.client().await;
    let _peers = fake_peers(&client).await;
    let mut completed = client
        .subscribe(format!("{V1}.events.plan.completed"))
        .await
        .unwrap();
    client.flush().await.unwrap();
    let js = jetstream::new(client.clone());
    let kv = js.get_key_value("toronto_plans").await.unwrap();

    // One plan made and ended by the planner: the record the history copies.
    let first: SubmitAccepted = ask(&client, "planner.submit", deploy("svc-seed".into())).await;
    completed.next().await.expect("the first plan completes");
    let record: serde_json::Value = kv_json(&kv, &format!("plan.{}", first.plan_id)).await;
    let mut count = 1;

    let history = sizes(100);
    let (mut submit, mut end, mut list) = (
        [Duration::ZERO; 3],
        [Duration::ZERO; 3],
        [Duration::ZERO; 3],
    );
    for (level, target) in history.iter().enumerate() {
        let newest = seed(&kv, "plan", &record, |_| {}, &mut count, *target).await;
        until_listed("plan.list", newest, || {
            let client = client.clone();
            async move {
                let first = PlanList {
                    limit: Some(1),
                    ..Default::default()
                };
                let page: Plans = ask(&client, "planner.plan.list", first).await;
                page.plans.first().map(|p| p.id)
            }
        })
        .await;
        submit[level] = time(samples, |i| {
            let client = client.clone();
            async move {
                let _: SubmitAccepted = ask(
                    &client,
                    "planner.submit",
                    deploy(format!("svc-{level}-s{i}")),
                )
                .await;
            }
        })
        .await;
        // Drain the completions of the plans just submitted.
        while tokio::time::timeout(Duration::from_millis(500), completed.next())
            .await
            .is_ok()
        {}
        let mut samples_end = Vec::new();
        for i in 0..samples {
            let t = Instant::now();
            let _: SubmitAccepted = ask(
                &client,
                "planner.submit",
                deploy(format!("svc-{level}-e{i}")),
            )
            .await;
            tokio::time::timeout(Duration::from_secs(30), completed.next())
                .await
                .expect("the plan completes")
                .unwrap();
            samples_end.push(t.elapsed());
        }
        end[level] = median(samples_end);
        list[level] = time(samples, |_| {
            let client = client.clone();
            async move {
                let page: Plans = ask(&client, "planner.plan.list", PlanList::default()).await;
                assert!(!page.plans.is_empty());
            }
        })
        .await;
        // Plans made while measuring count as history too.
        count += 3 * samples + 4;
    }
    shutdown.cancel();
    let _ = running.await;
    vec![
        Row {
            operation: "plan submit",
            history,
            unit: "plans",
            median: submit,
        },
        Row {
            operation: "plan submit to its end",
            history,
            unit: "plans",
            median: end,
        },
        Row {
            operation: "plan.list (first page)",
            history,
            unit: "plans",
            median: list,
        },
    ]
}
