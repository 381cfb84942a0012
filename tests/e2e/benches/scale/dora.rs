//! `planner.dora.get` against the events in its window.

use crate::common::*;

/// `planner.dora.get` over a history of rollout events in its window.
pub async fn dora(samples: usize, rollout: &Rollout) -> Vec<Row> {
    let server = NatsServer::start().await;
    let shutdown = CancellationToken::new();
    let rt = toronto_planner::start_with(config(&server), Default::default(), shutdown.clone())
        .await
        .unwrap();
    let running = tokio::spawn(rt.run_until_shutdown());
    let client = server.client().await;
    let js = jetstream::new(client.clone());
    let history = sizes(1000);
    let mut count = 0;
    let mut times = [Duration::ZERO; 3];
    let mut fresh = [Duration::ZERO; 3];
    let now = chrono::Utc::now();
    // Deploys spread over the last 20 days, one in ten aborted.
    let event = |count: usize| {
        let mut r = rollout.clone();
        r.id = Uuid::now_v7();
        r.service = format!("svc-{}", count % 50);
        r.environment = "production".into();
        r.created_at = now - chrono::Duration::seconds((count as i64 * 7919) % (20 * 86_400));
        r.finished_at = Some(r.created_at + chrono::Duration::seconds(90));
        let what = if count.is_multiple_of(10) {
            "aborted"
        } else {
            "succeeded"
        };
        let envelope = Envelope::builder("toronto://agents/devops/deployer", r)
            .subject("svc")
            .build();
        (
            format!("{V1}.events.rollout.{what}"),
            encode(&envelope, Encoding::Json).unwrap(),
        )
    };
    let query = |client: async_nats::Client| async move {
        let report: DoraReport = ask(
            &client,
            "planner.dora.get",
            DoraQuery {
                environment: Some("production".into()),
                ..Default::default()
            },
        )
        .await;
        assert!(report.deployments > 0);
    };
    for (level, target) in history.iter().enumerate() {
        let mut acks = Vec::new();
        while count < *target {
            let (subject, bytes) = event(count);
            acks.push(js.publish(subject, bytes.into()).await.unwrap());
            count += 1;
            if acks.len() == 512 {
                for a in futures::future::join_all(
                    acks.drain(..).map(std::future::IntoFuture::into_future),
                )
                .await
                {
                    a.unwrap();
                }
            }
        }
        for a in
            futures::future::join_all(acks.into_iter().map(std::future::IntoFuture::into_future))
                .await
        {
            a.unwrap();
        }
        // The planner's own consumer of rollout events takes in what was just
        // published before anything is timed, so that its work is not timed with
        // the queries.
        planner_caught_up(&js).await;
        // The first query folds the history just written (all of it at once, as no
        // query came between): untimed, with time to spare in a debug build.
        let started = Instant::now();
        call::<_, DoraReport>(
            &client,
            &format!("{V1}.planner.dora.get"),
            &Envelope::builder("toronto://bench", DoraQuery::default()).build(),
            Encoding::Json,
            Duration::from_secs(600),
        )
        .await
        .unwrap();
        eprintln!(
            "dora: the first query with {target} events behind it (folding the new ones) took {:.1} s",
            started.elapsed().as_secs_f64()
        );
        times[level] = time(samples, |_| query(client.clone())).await;
        // The same query after each new event: the ledger reads the one event and the
        // report is computed again from memory.
        let mut samples_fresh = Vec::new();
        for _ in 0..samples {
            let (subject, bytes) = event(count);
            js.publish(subject, bytes.into())
                .await
                .unwrap()
                .await
                .unwrap();
            count += 1;
            let started = Instant::now();
            query(client.clone()).await;
            samples_fresh.push(started.elapsed());
        }
        fresh[level] = median(samples_fresh);
    }
    shutdown.cancel();
    let _ = running.await;
    vec![
        Row {
            operation: "planner.dora.get (30 days)",
            history,
            unit: "events",
            median: times,
        },
        Row {
            operation: "planner.dora.get, new event",
            history,
            unit: "events",
            median: fresh,
        },
    ]
}

/// Waits until the planner's durable consumer of rollout events has taken in every
/// event stored.
async fn planner_caught_up(js: &jetstream::Context) {
    let stream = js
        .get_stream(toronto_protocol::Subjects::default().events_stream())
        .await
        .unwrap();
    loop {
        let info = stream
            .consumer_info(toronto_planner::ROLLOUTS_CONSUMER)
            .await
            .unwrap();
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
