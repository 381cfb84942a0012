//! The peer agents' NATS users of `deploy/nats/permissions.conf`: a peer publishes
//! tasks, answers its own gate subject, reads its own notify subject, and nothing else.

use super::*;

/// The permissions file with the password `pw-<user>` for every user.
fn permissions_conf() -> String {
    let mut text = std::fs::read_to_string(
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../deploy/nats/permissions.conf"),
    )
    .unwrap();
    while let Some(start) = text.find("$TORONTO_NATS_") {
        let end = start
            + text[start..]
                .find("_PASSWORD")
                .expect("a password variable")
            + 9;
        let user = text[start + "$TORONTO_NATS_".len()..end - "_PASSWORD".len()].to_lowercase();
        text.replace_range(start..end, &format!("\"pw-{user}\""));
    }
    text
}

async fn connect_as(server: &NatsServer, user: &str) -> Client {
    async_nats::ConnectOptions::with_user_and_password(user.into(), format!("pw-{user}"))
        .custom_inbox_prefix(format!("_INBOX_{user}"))
        .connect(server.url())
        .await
        .unwrap()
}

/// Whether a message published by `from` on `subject` reaches a subscriber of `to`.
async fn delivered(from: &Client, to: &Client, subject: &str) -> bool {
    let Ok(mut sub) = to.subscribe(subject.to_owned()).await else {
        return false;
    };
    to.flush().await.unwrap();
    // Let a refused subscription's error arrive before the publish.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _ = from
        .publish(subject.to_owned(), Bytes::from_static(b"x"))
        .await;
    let _ = from.flush().await;
    tokio::time::timeout(Duration::from_millis(700), sub.next())
        .await
        .ok()
        .flatten()
        .is_some()
}

#[tokio::test]
async fn a_peer_publishes_tasks_answers_its_gate_reads_its_notify_and_nothing_else() {
    let server = NatsServer::start_with_config(&permissions_conf()).await;
    let admin = connect_as(&server, "admin").await;
    let security = connect_as(&server, "security").await;

    // Allowed: tasks through both doors, its notify subject.
    assert!(delivered(&security, &admin, "toronto.agents.devops.tasks").await);
    assert!(delivered(&security, &admin, "toronto.devops.v1.planner.submit").await);
    assert!(delivered(&admin, &security, "toronto.agents.security.v1.notify").await);

    // Allowed: answering the planner's scan request (once, to its inbox).
    let mut scans = security
        .subscribe("toronto.agents.security.v1.scan")
        .await
        .unwrap();
    security.flush().await.unwrap();
    let answering = tokio::spawn({
        let security = security.clone();
        async move {
            let request = scans.next().await.unwrap();
            security
                .publish(request.reply.unwrap(), Bytes::from_static(b"pass"))
                .await
                .unwrap();
            security.flush().await.unwrap();
        }
    });
    // Retried while the server reports no responders (interest still propagating).
    let mut reply = None;
    for _ in 0..20 {
        match tokio::time::timeout(
            Duration::from_secs(3),
            admin.request(
                "toronto.agents.security.v1.scan",
                Bytes::from_static(b"scan"),
            ),
        )
        .await
        .expect("the peer answers in time")
        {
            Ok(r) => {
                reply = Some(r);
                break;
            }
            Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("the peer may answer its gate: {e}"),
        }
    }
    let reply = reply.expect("the peer's subscription to its gate subject is allowed");
    assert_eq!(&reply.payload[..], b"pass");
    answering.await.unwrap();

    // Refused: everything else.
    for subject in [
        "toronto.devops.v1.deployer.rollout.start",
        "toronto.devops.v1.planner.plan.approve",
        "toronto.devops.v1.events.plan.created",
        "toronto.agents.qa.v1.test",
        "$JS.API.STREAM.DELETE.TORONTO_DEVOPS_TASKS",
        "$KV.toronto_identities.mallory",
    ] {
        assert!(
            !delivered(&security, &admin, subject).await,
            "the security peer may not publish {subject}"
        );
    }
    for subject in [
        "toronto.devops.v1.events.rollout.started",
        "toronto.agents.qa.v1.test",
        "toronto.agents.qa.v1.notify",
        "toronto.agents.devops.tasks",
        "_INBOX.someone-elses-reply",
        "toronto.devops.v1.planner.submit",
    ] {
        assert!(
            !delivered(&admin, &security, subject).await,
            "the security peer may not read {subject}"
        );
    }
}
