//! `rollout.list` pages: newest first, filters, and cursors that go through every
//! rollout once, over a history written straight into the rollouts bucket.

use std::time::Duration;

use toronto_protocol::rollout::{Rollout, RolloutList, Rollouts};
use toronto_protocol::tasks::Strategy;
use uuid::Uuid;

use crate::support::{settings, stack_with};

/// Every page of `query`, following the cursors to the end.
async fn all_pages(stack: &crate::support::Stack, mut query: RolloutList) -> Vec<Vec<Uuid>> {
    let mut pages = Vec::new();
    loop {
        let page: Rollouts = stack
            .request("rollout.list", query.clone())
            .await
            .expect("rollout.list");
        pages.push(page.rollouts.iter().map(|r| r.id).collect());
        match page.next_cursor {
            Some(cursor) => query.cursor = Some(cursor),
            None => return pages,
        }
        assert!(pages.len() < 100, "the cursors end");
    }
}

#[tokio::test]
async fn pages_go_through_every_rollout_once_newest_first() {
    let mut stack = stack_with(settings(), 1).await;
    let first = stack.deployed("seed", "1.0.0", Strategy::Rolling).await;
    let kv = async_nats::jetstream::new(stack.client.clone())
        .get_key_value("toronto_rollouts")
        .await
        .unwrap();
    // 150 ended rollouts, one in three of service `a`, each its own id (UUID v7: key
    // order is creation order).
    let mut written = vec![(first.id, first.service.clone())];
    for i in 0..150 {
        let mut copy: Rollout = first.clone();
        copy.id = Uuid::now_v7();
        copy.service = if i % 3 == 0 { "a" } else { "b" }.into();
        kv.put(
            format!("rollout.{}", copy.id),
            serde_json::to_vec(&copy).unwrap().into(),
        )
        .await
        .unwrap();
        written.push((copy.id, copy.service));
    }
    let newest_first: Vec<Uuid> = written.iter().rev().map(|(id, _)| *id).collect();
    // The index follows the bucket: wait until it lists the newest.
    for _ in 0..100 {
        let page: Rollouts = stack
            .request(
                "rollout.list",
                RolloutList {
                    limit: Some(1),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        if page.rollouts.first().map(|r| r.id) == Some(newest_first[0]) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Pages of 100 (more than are read at once): 100, then 51.
    let pages = all_pages(
        &stack,
        RolloutList {
            limit: Some(100),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        pages.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![100, 51]
    );
    assert_eq!(pages.concat(), newest_first);
    // Of service `a`, by 7: the filter drops two in three, the pages still fill.
    let pages = all_pages(
        &stack,
        RolloutList {
            service: Some("a".into()),
            limit: Some(7),
            ..Default::default()
        },
    )
    .await;
    let of_a: Vec<Uuid> = written
        .iter()
        .rev()
        .filter(|(_, s)| s == "a")
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(of_a.len(), 50);
    assert!(pages[..pages.len() - 1].iter().all(|p| p.len() == 7));
    assert_eq!(pages.concat(), of_a);
    // None is active.
    let active: Rollouts = stack
        .request(
            "rollout.list",
            RolloutList {
                active: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(active.rollouts.is_empty(), "{:?}", active.rollouts.len());
    stack.stop().await;
}
