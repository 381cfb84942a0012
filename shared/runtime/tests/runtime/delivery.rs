//! JetStream delivery: deduplicated publishes, consumers that nak, die, make progress or
//! reject, and the dead-letter stream with its listing and replay.

use super::*;

async fn js_setup(
    server: &NatsServer,
) -> (
    Client,
    async_nats::jetstream::Context,
    toronto_protocol::Subjects,
) {
    let client = server.client().await;
    let js = async_nats::jetstream::new(client.clone());
    let subjects = toronto_protocol::Subjects::default();
    ensure_streams(&js, &subjects, &Default::default())
        .await
        .unwrap();
    (client, js, subjects)
}

/// The echo endpoint on a host that parks what it refuses in the `test` dead letters.
async fn echo_host_with_dead_letters(
    client: &Client,
    js: &async_nats::jetstream::Context,
    subjects: &toronto_protocol::Subjects,
) -> ServiceHost {
    let dead_letters = DeadLetters::new(js.clone(), subjects, "test", Metrics::new());
    let host = ServiceHost::start(
        client.clone(),
        spec(),
        EndpointConfig::default(),
        Metrics::new(),
        Some(dead_letters),
    )
    .await
    .unwrap();
    host.add_endpoint("echo", SUBJECT, echo).await.unwrap();
    host
}

#[tokio::test]
async fn a_publish_repeated_with_the_same_id_is_stored_once() {
    let server = NatsServer::start().await;
    let (_client, js, subjects) = js_setup(&server).await;
    let event = envelope("once");
    let subject = subjects.event("test", "happened");
    let first = publish_envelope(&js, &subject, &event).await.unwrap();
    let second = publish_envelope(&js, &subject, &event).await.unwrap();
    assert!(!first.duplicate);
    assert!(second.duplicate);
    assert_eq!(first.sequence, second.sequence);
    // Stored with its id as Nats-Msg-Id and its trace context as a header.
    let stored = js
        .get_stream(subjects.events_stream())
        .await
        .unwrap()
        .get_raw_message(first.sequence)
        .await
        .unwrap();
    assert_eq!(
        stored.headers.get("Nats-Msg-Id").unwrap().as_str(),
        event.id.to_string()
    );
    assert_eq!(
        stored.headers.get("traceparent").map(|v| v.as_str()),
        event.traceparent.as_deref()
    );
    let info = js
        .get_stream(subjects.events_stream())
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone();
    assert_eq!(info.state.messages, 1);
    // A new envelope with the same content is a new event.
    publish_envelope(&js, &subject, &envelope("once"))
        .await
        .unwrap();
    let info = js
        .get_stream(subjects.events_stream())
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone();
    assert_eq!(info.state.messages, 2);
}

fn consumer_spec(subjects: &toronto_protocol::Subjects, max_deliver: i64) -> ConsumerSpec {
    ConsumerSpec {
        stream: subjects.tasks_stream(),
        durable: "test-worker".into(),
        filter_subject: None,
        ack_wait: Duration::from_secs(1),
        max_deliver,
        concurrency: 4,
    }
}

/// Runs a durable consumer of the tasks stream (max deliver `max_deliver`) in the
/// background; cancel the token to stop it.
fn spawn_consumer<H, Fut>(
    js: &async_nats::jetstream::Context,
    subjects: &toronto_protocol::Subjects,
    max_deliver: i64,
    handler: H,
) -> (
    tokio::task::JoinHandle<Result<(), toronto_runtime::jetstream::JetStreamError>>,
    CancellationToken,
)
where
    H: Fn(toronto_runtime::jetstream::Delivery) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Outcome> + Send + 'static,
{
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run_consumer(
        js.clone(),
        consumer_spec(subjects, max_deliver),
        DeadLetters::new(js.clone(), subjects, "test", Metrics::new()),
        Metrics::new(),
        shutdown.clone(),
        handler,
    ));
    (task, shutdown)
}

/// Waits (bounded) until the tasks work queue holds no message.
async fn tasks_queue_drains(
    js: &async_nats::jetstream::Context,
    subjects: &toronto_protocol::Subjects,
) -> bool {
    for _ in 0..50 {
        let info = js
            .get_stream(subjects.tasks_stream())
            .await
            .unwrap()
            .info()
            .await
            .unwrap()
            .clone();
        if info.state.messages == 0 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test]
async fn a_nakd_message_is_redelivered_and_then_acked() {
    let server = NatsServer::start().await;
    let (_client, js, subjects) = js_setup(&server).await;
    let dlq = DeadLetters::new(js.clone(), &subjects, "test", Metrics::new());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let shutdown = CancellationToken::new();
    let worker = tokio::spawn(run_consumer(
        js.clone(),
        consumer_spec(&subjects, 5),
        dlq,
        Metrics::new(),
        shutdown.clone(),
        move |d| {
            let tx = tx.clone();
            async move {
                let n = d.deliveries();
                tx.send(n).unwrap();
                if n == 1 {
                    Outcome::Retry {
                        delay: Some(Duration::from_millis(100)),
                        reason: "not yet".into(),
                    }
                } else {
                    Outcome::Ack
                }
            }
        },
    ));
    publish_envelope(&js, &subjects.tasks(), &envelope("task"))
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    let second = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((first, second), (1, 2));
    // Acked on a work queue: the stream is empty afterwards.
    assert!(
        tasks_queue_drains(&js, &subjects).await,
        "the acked task left the work queue"
    );
    shutdown.cancel();
    worker.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_consumer_killed_mid_message_lets_another_take_it() {
    let server = NatsServer::start().await;
    let (_client, js, subjects) = js_setup(&server).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<&'static str>();
    let tx_a = tx.clone();
    let (first, _never_cancelled) = spawn_consumer(&js, &subjects, 5, move |_d| {
        let tx = tx_a.clone();
        async move {
            tx.send("a").unwrap();
            // Dies mid-message: never returns a verdict.
            std::future::pending::<Outcome>().await
        }
    });
    publish_envelope(&js, &subjects.tasks(), &envelope("task"))
        .await
        .unwrap();
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap(),
        Some("a")
    );
    first.abort();

    let (tx_b, mut rx_b) = tokio::sync::mpsc::unbounded_channel();
    let (second, shutdown) = spawn_consumer(&js, &subjects, 5, move |d| {
        let tx = tx_b.clone();
        async move {
            tx.send((d.deliveries(), d.payload().clone())).unwrap();
            Outcome::Ack
        }
    });
    let (deliveries, payload) = tokio::time::timeout(Duration::from_secs(10), rx_b.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(deliveries, 2, "redelivered after the ack deadline");
    let env: Envelope<Echo> = toronto_protocol::decode(&payload, Encoding::Json).unwrap();
    assert_eq!(env.data.text, "task");
    shutdown.cancel();
    second.await.unwrap().unwrap();
}

#[tokio::test]
async fn max_deliver_parks_the_message_in_the_dlq_with_its_reason() {
    let server = NatsServer::start().await;
    let (client, js, subjects) = js_setup(&server).await;
    let mut dlq_sub = client.subscribe(subjects.dlq("test")).await.unwrap();
    client.flush().await.unwrap();
    let (worker, shutdown) = spawn_consumer(&js, &subjects, 3, |_d| async {
        Outcome::Retry {
            delay: Some(Duration::from_millis(50)),
            reason: "the deployer is down".into(),
        }
    });
    let task = envelope("doomed");
    let original = encode(&task, Encoding::Json).unwrap();
    publish_envelope(&js, &subjects.tasks(), &task)
        .await
        .unwrap();
    let parked = tokio::time::timeout(Duration::from_secs(15), dlq_sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        parked.payload.as_ref(),
        original.as_slice(),
        "original bytes kept"
    );
    let headers = parked.headers.unwrap();
    let reason = headers.get(DLQ_REASON_HEADER).unwrap().as_str();
    assert!(reason.contains("the deployer is down"), "{reason}");
    assert!(reason.contains("max deliver 3"), "{reason}");
    assert_eq!(headers.get(DLQ_DELIVERIES_HEADER).unwrap().as_str(), "3");
    assert_eq!(
        headers.get(DLQ_SUBJECT_HEADER).unwrap().as_str(),
        subjects.tasks()
    );
    // It is kept in the DLQ stream for inspection and replay.
    let dlq_stream = js.get_stream(subjects.dlq_stream()).await.unwrap();
    let stored = dlq_stream
        .get_last_raw_message_by_subject(&subjects.dlq("test"))
        .await
        .unwrap();
    assert_eq!(stored.payload.as_ref(), original.as_slice());
    shutdown.cancel();
    worker.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_refused_message_without_reply_subject_is_parked_not_dropped() {
    let server = NatsServer::start().await;
    let (client, js, subjects) = js_setup(&server).await;
    let _host = echo_host_with_dead_letters(&client, &js, &subjects).await;
    let mut dlq_sub = client.subscribe(subjects.dlq("test")).await.unwrap();
    client.flush().await.unwrap();
    client
        .publish(SUBJECT, Bytes::from_static(b"not an envelope"))
        .await
        .unwrap();
    let parked = tokio::time::timeout(Duration::from_secs(10), dlq_sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(parked.payload.as_ref(), b"not an envelope");
    let reason = parked
        .headers
        .unwrap()
        .get(DLQ_REASON_HEADER)
        .unwrap()
        .as_str()
        .to_owned();
    assert!(reason.contains("malformed"), "{reason}");
}

#[tokio::test]
async fn progress_acks_keep_long_work_from_being_redelivered() {
    let server = NatsServer::start().await;
    let (_client, js, subjects) = js_setup(&server).await;
    let deliveries = Arc::new(AtomicUsize::new(0));
    let seen = deliveries.clone();
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    // ack_wait is 1 s; the work takes 2.5 s and reports progress every 400 ms.
    let (worker, shutdown) = spawn_consumer(&js, &subjects, 5, move |d| {
        let seen = seen.clone();
        let done_tx = done_tx.clone();
        async move {
            seen.fetch_add(1, Ordering::SeqCst);
            for _ in 0..6 {
                tokio::time::sleep(Duration::from_millis(400)).await;
                d.progress().await;
            }
            done_tx.send(d.deliveries()).unwrap();
            Outcome::Ack
        }
    });
    publish_envelope(&js, &subjects.tasks(), &envelope("long"))
        .await
        .unwrap();
    let delivered_as = tokio::time::timeout(Duration::from_secs(10), done_rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(delivered_as, 1);
    // Past another ack deadline, still nobody got it a second time.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        deliveries.load(Ordering::SeqCst),
        1,
        "no redelivery while progress was reported"
    );
    shutdown.cancel();
    worker.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_rejected_message_goes_to_the_dlq_at_once() {
    let server = NatsServer::start().await;
    let (client, js, subjects) = js_setup(&server).await;
    let mut dlq_sub = client.subscribe(subjects.dlq("test")).await.unwrap();
    client.flush().await.unwrap();
    let (worker, shutdown) = spawn_consumer(&js, &subjects, 5, |_d| async {
        Outcome::Reject {
            reason: "schema version 9 is not supported".into(),
        }
    });
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", "peer-msg-1");
    js.publish_with_headers(
        subjects.tasks(),
        headers,
        Bytes::from_static(b"{\"not\":\"an envelope\"}"),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let parked = tokio::time::timeout(Duration::from_secs(10), dlq_sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(parked.payload.as_ref(), b"{\"not\":\"an envelope\"}");
    let headers = parked.headers.unwrap();
    assert_eq!(
        headers.get(DLQ_REASON_HEADER).unwrap().as_str(),
        "schema version 9 is not supported"
    );
    assert_eq!(headers.get(DLQ_DELIVERIES_HEADER).unwrap().as_str(), "1");
    assert_eq!(
        headers
            .get(toronto_runtime::jetstream::DLQ_ORIGINAL_MSG_ID_HEADER)
            .unwrap()
            .as_str(),
        "peer-msg-1"
    );
    // Terminated, so it left the work queue.
    assert!(
        tasks_queue_drains(&js, &subjects).await,
        "the rejected task left the work queue"
    );
    shutdown.cancel();
    worker.await.unwrap().unwrap();
}

#[tokio::test]
async fn dead_letters_can_be_listed_and_replayed_once_fixed() {
    use toronto_runtime::jetstream::{list_dead_letters, replay_dead_letter};
    let server = NatsServer::start().await;
    let (client, js, subjects) = js_setup(&server).await;
    // A consumer that cannot handle the task yet.
    let broken = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let (tx, mut handled) = tokio::sync::mpsc::unbounded_channel();
    let flag = broken.clone();
    let (worker, shutdown) = spawn_consumer(&js, &subjects, 5, move |d| {
        let flag = flag.clone();
        let tx = tx.clone();
        async move {
            if flag.load(Ordering::SeqCst) {
                Outcome::Reject {
                    reason: "no plan for task type `chaos`".into(),
                }
            } else {
                tx.send(d.payload().clone()).unwrap();
                Outcome::Ack
            }
        }
    });
    let task = encode(&envelope("chaos please"), Encoding::Json).unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("Content-Type", "application/cloudevents+json");
    js.publish_with_headers(subjects.tasks(), headers, Bytes::from(task.clone()))
        .await
        .unwrap()
        .await
        .unwrap();

    let mut letters = Vec::new();
    for _ in 0..100 {
        letters = list_dead_letters(&js, &subjects, 10).await.unwrap();
        if !letters.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!(letter.reason, "no plan for task type `chaos`");
    assert_eq!(letter.origin, "test-worker");
    assert_eq!(letter.original_subject, subjects.tasks());
    assert_eq!(letter.payload.as_ref(), task.as_slice());

    // Fixed: the replayed task is handled, with its original bytes and headers.
    broken.store(false, Ordering::SeqCst);
    let target = replay_dead_letter(&js, &subjects, letter.sequence, false)
        .await
        .unwrap();
    assert_eq!(target, subjects.tasks());
    let payload = tokio::time::timeout(Duration::from_secs(10), handled.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(payload.as_ref(), task.as_slice());
    assert!(
        list_dead_letters(&js, &subjects, 10)
            .await
            .unwrap()
            .is_empty(),
        "replayed letters leave the DLQ"
    );
    assert!(
        replay_dead_letter(&js, &subjects, letter.sequence, false)
            .await
            .is_err(),
        "nothing to replay twice"
    );

    // A letter refused by a request endpoint is replayed as a plain message.
    let _host = echo_host_with_dead_letters(&client, &js, &subjects).await;
    client.flush().await.unwrap();
    client
        .publish(SUBJECT, Bytes::from_static(b"garbage"))
        .await
        .unwrap();
    let mut letters = Vec::new();
    for _ in 0..100 {
        letters = list_dead_letters(&js, &subjects, 10).await.unwrap();
        if !letters.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(letters[0].original_subject, SUBJECT);
    let mut watch = client.subscribe(SUBJECT).await.unwrap();
    client.flush().await.unwrap();
    replay_dead_letter(&js, &subjects, letters[0].sequence, true)
        .await
        .unwrap();
    let again = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.payload.as_ref(), b"garbage");
    assert_eq!(
        list_dead_letters(&js, &subjects, 10).await.unwrap().len(),
        2,
        "kept, and parked again"
    );
    shutdown.cancel();
    worker.await.unwrap().unwrap();
}
