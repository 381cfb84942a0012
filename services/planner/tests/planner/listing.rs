//! `plan.list` pages: thousands of plans listed page by page with nothing lost or
//! repeated, the limit capped, and a reply over the server's `max_payload` answered
//! with a `413 too_large` error envelope instead of silence.

use std::collections::HashSet;
use std::time::Duration;

use futures::StreamExt;
use toronto_protocol::tasks::{Plan, PlanList, Plans};
use toronto_protocol::{Encoding, Envelope, ErrorCode, page};
use toronto_runtime::rpc::{CallError, call};
use toronto_testkit::NatsServer;
use uuid::Uuid;

use crate::support::{Planner, deploy, start_planner};

async fn page_of(p: &Planner, query: PlanList) -> Result<Plans, CallError> {
    let req = Envelope::builder("toronto://test", query).build();
    call(
        &p.client,
        "toronto.devops.v1.planner.plan.list",
        &req,
        Encoding::Json,
        Duration::from_secs(10),
    )
    .await
    .map(|r: Envelope<Plans>| r.data)
}

/// Writes `count` copies of a real plan (new ids, `reason` of `pad` bytes) straight to
/// the plans bucket, as a long history would have left them.
async fn history(p: &Planner, count: usize, pad: usize) -> HashSet<Uuid> {
    let accepted = p
        .submit(&Envelope::builder("toronto://test", deploy("cart", "staging")).build())
        .await
        .unwrap();
    let template = p.plan(accepted.plan_id).await.unwrap();
    let js = async_nats::jetstream::new(p.client.clone());
    let kv = js.get_key_value("toronto_plans").await.unwrap();
    let ids: Vec<Uuid> = (0..count).map(|_| Uuid::now_v7()).collect();
    futures::stream::iter(ids.iter().copied())
        .map(|id| {
            let kv = kv.clone();
            let plan = Plan {
                id,
                task_id: Uuid::now_v7().to_string(),
                reason: Some("x".repeat(pad)),
                ..template.clone()
            };
            async move {
                kv.put(
                    format!("plan.{id}"),
                    serde_json::to_vec(&plan).unwrap().into(),
                )
                .await
                .unwrap();
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
    let mut all: HashSet<Uuid> = ids.into_iter().collect();
    all.insert(accepted.plan_id);
    all
}

async fn planner_on(server: NatsServer) -> Planner {
    let (shutdown, running) = start_planner(&server.url()).await;
    let client = server.client().await;
    Planner {
        server,
        client,
        shutdown,
        running,
    }
}

#[tokio::test]
async fn five_thousand_plans_are_listed_page_by_page_with_nothing_lost() {
    let p = planner_on(NatsServer::start().await).await;
    let all = history(&p, 5_000, 0).await;

    // A limit past the cap is cut to it, and the reply says where to go on.
    let capped = page_of(
        &p,
        PlanList {
            limit: Some(5_000),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(capped.plans.len(), page::MAX_LIMIT);
    assert!(capped.next_cursor.is_some());

    let mut seen = Vec::new();
    let mut cursor = None;
    let mut pages = 0;
    loop {
        let page = page_of(
            &p,
            PlanList {
                limit: Some(page::MAX_LIMIT),
                cursor: cursor.clone(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        pages += 1;
        seen.extend(page.plans.iter().map(|plan| plan.id));
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
        assert!(pages < 100, "paging does not end");
    }
    assert_eq!(seen.len(), all.len(), "every plan once");
    assert_eq!(seen.iter().copied().collect::<HashSet<_>>(), all);
    let mut newest_first = seen.clone();
    newest_first.sort_by(|a, b| b.cmp(a));
    assert_eq!(seen, newest_first, "newest first");
    assert_eq!(pages, all.len().div_ceil(page::MAX_LIMIT));

    // A cursor the service did not give is refused, not guessed at.
    let bad = page_of(
        &p,
        PlanList {
            cursor: Some("page-2".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert!(
        matches!(bad, CallError::Remote(ref e) if e.code == ErrorCode::BadRequest),
        "{bad:?}"
    );
    p.stop().await;
}

#[tokio::test]
async fn a_reply_over_max_payload_is_a_too_large_error_not_a_timeout() {
    let server = NatsServer::start_with_config("max_payload: 65536").await;
    let p = planner_on(server).await;
    history(&p, 120, 1_000).await;
    let refused = page_of(
        &p,
        PlanList {
            limit: Some(120),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    match refused {
        CallError::Remote(e) => {
            assert_eq!(e.code, ErrorCode::TooLarge);
            assert!(e.message.contains("next_cursor"), "{}", e.message);
        }
        other => panic!("expected a too_large error envelope, got {other:?}"),
    }
    // A smaller page fits.
    let fits = page_of(
        &p,
        PlanList {
            limit: Some(20),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(fits.plans.len(), 20);
    assert!(fits.next_cursor.is_some());
    p.stop().await;
}
