//! Durable work against a real nats-server: compare-and-set conflicts, lock
//! exclusivity, lease fencing, and the work queue driving a record to its end.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use chrono::Utc;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use toronto_protocol::tasks::Lease;
use toronto_protocol::{Envelope, Message, Subjects};
use toronto_runtime::Metrics;
use toronto_runtime::jetstream::{DeadLetters, Delivery, Outcome, ensure_kv};
use toronto_runtime::work::{
    Claim, Created, Driven, Edit, KeyLock, Next, Records, RetryPolicy, Saved, Taken, WorkError,
    WorkQueue, drive, lease,
};
use toronto_testkit::NatsServer;
use uuid::Uuid;

/// A record of work.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Job {
    id: Uuid,
    count: u32,
    done: bool,
    lease: Option<Lease>,
}

impl Job {
    fn new() -> Self {
        Self {
            id: Uuid::now_v7(),
            count: 0,
            done: false,
            lease: None,
        }
    }
}

/// "Advance job X".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
struct AdvanceJob {
    id: Uuid,
}

impl Message for AdvanceJob {
    const NAME: &'static str = "test.job.advance";
    const MAJOR: u32 = 1;
}

async fn jobs(server: &NatsServer) -> (async_nats::jetstream::Context, Records<Job>) {
    let js = async_nats::jetstream::new(server.client().await);
    let kv = ensure_kv(&js, "test_jobs", 5, 1).await.expect("bucket");
    (js, Records::new(kv, "job", |j: &Job| j.done))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compare_and_set_refuses_a_stale_revision_and_update_retries() {
    let server = NatsServer::start().await;
    let (_js, jobs) = jobs(&server).await;
    let job = Job::new();
    let Created::Stored(first) = jobs.create(job.id, &job).await.unwrap() else {
        panic!("a new job is created");
    };
    assert_eq!(jobs.create(job.id, &job).await.unwrap(), Created::Exists);

    // Two writers read the same revision: the first wins, the second is told.
    let mut a = job.clone();
    a.count = 1;
    let mut b = job.clone();
    b.count = 2;
    assert!(jobs.save(job.id, &a, first).await.unwrap().is_stored());
    assert_eq!(jobs.save(job.id, &b, first).await.unwrap(), Saved::Conflict);
    assert_eq!(jobs.load(job.id).await.unwrap().unwrap().value.count, 1);

    // Contending updates each land exactly once.
    let jobs = jobs.with_policy(RetryPolicy { attempts: 200 });
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let jobs = jobs.clone();
        let id = job.id;
        tasks.push(tokio::spawn(async move {
            for _ in 0..5 {
                jobs.update(id, |j| {
                    j.count += 1;
                    Edit::Save(())
                })
                .await
                .expect("update")
                .expect("job exists");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(jobs.load(job.id).await.unwrap().unwrap().value.count, 41);

    // Nothing to update is no error; keeping answers without writing.
    assert!(
        jobs.update(Uuid::now_v7(), |_| Edit::Save(()))
            .await
            .unwrap()
            .is_none()
    );
    let before = jobs.load(job.id).await.unwrap().unwrap().revision;
    let (_, answer) = jobs
        .update(job.id, |j| Edit::Keep(j.count))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answer, 41);
    assert_eq!(jobs.load(job.id).await.unwrap().unwrap().revision, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_update_that_always_meets_a_newer_revision_gives_up_with_a_typed_error() {
    let server = NatsServer::start().await;
    let (_js, jobs) = jobs(&server).await;
    let jobs = jobs.with_policy(RetryPolicy { attempts: 3 });
    let job = Job::new();
    let _ = jobs.create(job.id, &job).await.unwrap();
    let rival = jobs.clone();
    let handle = tokio::runtime::Handle::current();
    let tries = AtomicU32::new(0);
    let result = jobs
        .update(job.id, |j| {
            tries.fetch_add(1, Ordering::SeqCst);
            // Someone else writes between this read and its save.
            let mut other = j.clone();
            other.count += 100;
            tokio::task::block_in_place(|| handle.block_on(rival.put(other.id, &other))).unwrap();
            j.count += 1;
            Edit::Save(())
        })
        .await;
    assert_eq!(tries.load(Ordering::SeqCst), 3);
    match result {
        Err(WorkError::Contended { key, attempts }) => {
            assert_eq!(key, format!("job.{}", job.id));
            assert_eq!(attempts, 3);
        }
        other => panic!("expected Contended, got {other:?}"),
    }
}

#[tokio::test]
async fn one_holder_per_scope_until_it_ends_or_lets_go() {
    let server = NatsServer::start().await;
    let (_js, jobs) = jobs(&server).await;
    let lock = KeyLock::new(jobs.clone(), "active");
    let scope = "shop-api.production";

    // Many contenders at once: exactly one takes the lock.
    let mut contenders = Vec::new();
    for _ in 0..8 {
        let job = Job::new();
        let _ = jobs.create(job.id, &job).await.unwrap();
        contenders.push(job);
    }
    let takes = futures::future::join_all(contenders.iter().map(|j| lock.take(scope, j.id))).await;
    let winners: Vec<Uuid> = takes
        .iter()
        .zip(&contenders)
        .filter(|(t, _)| matches!(t, Ok(Taken::Mine)))
        .map(|(_, j)| j.id)
        .collect();
    assert_eq!(winners.len(), 1, "{takes:?}");
    let holder = winners[0];
    for t in &takes {
        match t {
            Ok(Taken::Mine) => {}
            Ok(Taken::HeldBy(h)) => assert_eq!(*h, holder),
            Err(e) => panic!("take failed: {e}"),
        }
    }
    assert_eq!(lock.take(scope, holder).await.unwrap(), Taken::Mine);
    assert_eq!(lock.active(scope).await.unwrap().unwrap().id, holder);

    // Another record's release does not free it.
    let other = contenders.iter().find(|j| j.id != holder).unwrap().clone();
    lock.release(scope, other.id).await.unwrap();
    assert_eq!(
        lock.take(scope, other.id).await.unwrap(),
        Taken::HeldBy(holder)
    );

    // The holder ends without letting go: the lock is free to take over.
    jobs.update(holder, |j| {
        j.done = true;
        Edit::Save(())
    })
    .await
    .unwrap();
    assert!(lock.active(scope).await.unwrap().is_none());
    assert_eq!(lock.take(scope, other.id).await.unwrap(), Taken::Mine);

    // Letting go frees it for the next.
    lock.release(scope, other.id).await.unwrap();
    let next = contenders
        .iter()
        .rev()
        .find(|j| j.id != holder && j.id != other.id)
        .unwrap();
    assert_eq!(lock.take(scope, next.id).await.unwrap(), Taken::Mine);
}

#[tokio::test]
async fn a_lease_is_fenced_by_the_revision_that_took_it() {
    let server = NatsServer::start().await;
    let (_js, jobs) = jobs(&server).await;
    let length = Duration::from_millis(300);
    let job = Job::new();
    let _ = jobs.create(job.id, &job).await.unwrap();

    // Instance a takes the lease.
    let read = jobs.load(job.id).await.unwrap().unwrap();
    let mut a = read.value.clone();
    let Claim::Take(l) = lease::claim(a.lease.as_ref(), "a", Utc::now(), length, length / 2) else {
        panic!("a free lease is taken");
    };
    a.lease = Some(l);
    let Saved::Stored(a_token) = jobs.save(job.id, &a, read.revision).await.unwrap() else {
        panic!("a stores its lease");
    };

    // Instance b sees it held.
    let seen = jobs.load(job.id).await.unwrap().unwrap();
    assert!(matches!(
        lease::claim(seen.value.lease.as_ref(), "b", Utc::now(), length, length / 2),
        Claim::Held { ref owner, .. } if owner == "a"
    ));

    // a stalls past its lease; b takes over.
    tokio::time::sleep(length + Duration::from_millis(50)).await;
    let seen = jobs.load(job.id).await.unwrap().unwrap();
    let mut b = seen.value.clone();
    let Claim::Take(l) = lease::claim(b.lease.as_ref(), "b", Utc::now(), length, length / 2) else {
        panic!("an expired lease is taken over");
    };
    b.lease = Some(l);
    assert!(
        jobs.save(job.id, &b, seen.revision)
            .await
            .unwrap()
            .is_stored()
    );

    // a wakes up and writes with its token: fenced off.
    a.count = 99;
    assert_eq!(
        jobs.save(job.id, &a, a_token).await.unwrap(),
        Saved::Conflict
    );
    let now = jobs.load(job.id).await.unwrap().unwrap().value;
    assert_eq!(now.count, 0);
    assert_eq!(now.lease.unwrap().owner, "b");
}

#[tokio::test]
async fn the_work_queue_drives_each_record_to_its_end() {
    let server = NatsServer::start().await;
    let (js, jobs) = jobs(&server).await;
    let subjects = Subjects::new("test");
    toronto_runtime::jetstream::ensure_streams(
        &js,
        &subjects,
        &toronto_runtime::config::JetStreamConfig::default(),
    )
    .await
    .unwrap();
    let queue = WorkQueue::new(
        js.clone(),
        subjects.rollout_runs_stream(),
        subjects.rollout_runs(),
        "test-runner",
        "test work",
    );
    queue.ensure(1).await.unwrap();
    // Ensuring again is harmless.
    queue.ensure(1).await.unwrap();

    let metrics = Metrics::new();
    let dead_letters = DeadLetters::new(js.clone(), &subjects, "test", metrics.clone());
    let shutdown = CancellationToken::new();
    let runner = {
        let jobs = jobs.clone();
        let crash = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(queue.clone().run(
            queue.consumer(Duration::from_secs(5), 5, 4),
            dead_letters,
            metrics,
            shutdown.clone(),
            move |work: AdvanceJob, delivery: Delivery| {
                let jobs = jobs.clone();
                let crash = crash.clone();
                let stop = stop.clone();
                async move {
                    // Each pass counts once; the third pass ends the job.
                    let driven = drive(&delivery, Duration::ZERO, &crash, &stop, || async {
                        let (job, ()) = jobs
                            .update(work.id, |j| {
                                j.count += 1;
                                j.done = j.count >= 3;
                                Edit::Save(())
                            })
                            .await?
                            .expect("job exists");
                        Ok::<_, WorkError>(if job.done {
                            Next::Done
                        } else {
                            Next::After(Duration::from_millis(10))
                        })
                    })
                    .await;
                    match driven {
                        Driven::Done => Outcome::Ack,
                        other => Outcome::Retry {
                            delay: None,
                            reason: format!("{other:?}"),
                        },
                    }
                }
            },
        ))
    };

    let mut ids = Vec::new();
    for _ in 0..3 {
        let job = Job::new();
        let _ = jobs.create(job.id, &job).await.unwrap();
        let envelope = Envelope::builder("toronto://test", AdvanceJob { id: job.id }).build();
        queue.enqueue(&envelope).await.unwrap();
        ids.push(job.id);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut all_done = true;
        for id in &ids {
            all_done &= jobs.load(id).await.unwrap().unwrap().value.done;
        }
        if all_done {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "jobs not driven to their end"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for id in &ids {
        assert_eq!(jobs.load(id).await.unwrap().unwrap().value.count, 3);
    }
    let all = jobs.all().await.unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(jobs.ids().await.unwrap().len(), 3);

    shutdown.cancel();
    runner.await.unwrap().unwrap();
}

#[tokio::test]
async fn the_key_index_pages_newest_first_and_follows_every_change() {
    use toronto_runtime::work::KeyIndex;
    let server = NatsServer::start().await;
    let (_js, jobs) = jobs(&server).await;
    // Written before the index starts: found by its first listing.
    let mut ids: Vec<Uuid> = Vec::new();
    for _ in 0..5 {
        let job = Job::new();
        let _ = jobs.create(job.id, &job).await.unwrap();
        ids.push(job.id);
    }
    // Another kind of record in the same bucket is not indexed.
    jobs.kv().put("other.1", "x".into()).await.unwrap();
    let index = KeyIndex::new(jobs.kv().clone(), "job");
    assert_eq!(index.newest(None, 3), None, "not live before it runs");
    let stop = CancellationToken::new();
    let running = tokio::spawn({
        let index = index.clone();
        let stop = stop.clone();
        async move { index.run(stop).await }
    });
    let s = |v: &[Uuid]| v.iter().map(Uuid::to_string).collect::<Vec<_>>();
    let live = |want: usize| {
        let index = index.clone();
        async move {
            for _ in 0..200 {
                if index.is_live() && index.len() == want {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("the index never held {want} ids (holds {})", index.len());
        }
    };
    live(5).await;
    assert_eq!(index.newest(None, 2).unwrap(), s(&[ids[4], ids[3]]));
    let cursor = ids[3].to_string();
    assert_eq!(
        index.newest(Some(&cursor), 10).unwrap(),
        s(&[ids[2], ids[1], ids[0]])
    );

    // Written and deleted while it runs: followed.
    let job = Job::new();
    let _ = jobs.create(job.id, &job).await.unwrap();
    live(6).await;
    assert_eq!(index.newest(None, 1).unwrap(), s(&[job.id]));
    jobs.kv().delete(jobs.key(ids[0])).await.unwrap();
    live(5).await;
    assert!(
        !index
            .newest(None, 10)
            .unwrap()
            .contains(&ids[0].to_string())
    );

    stop.cancel();
    running.await.unwrap().unwrap();
    assert!(!index.is_live(), "stopped: callers fall back to listing");
}
