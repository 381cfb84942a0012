//! Task intake through both doors, cancellation, and delegated tasks.

use std::time::Duration;

use async_nats::HeaderMap;
use futures::StreamExt;
use toronto_protocol::tasks::{
    CanaryStep, Plan, PlanList, PlanState, PlanTask, ScaleTask, Strategy,
};
use toronto_protocol::{Encoding, Envelope, ErrorCode, Message, encode};
use toronto_runtime::rpc::{CallError, call};

use crate::support::*;

#[tokio::test]
async fn submit_accepts_a_task_once_and_announces_the_plan() {
    let p = planner().await;
    let mut events = p
        .client
        .subscribe("toronto.devops.v1.events.plan.created")
        .await
        .unwrap();
    p.client.flush().await.unwrap();
    let task = Envelope::builder(
        "toronto://agents/developer/alice",
        deploy("shop-api", "production"),
    )
    .build();
    let accepted = p.submit(&task).await.unwrap();
    assert!(!accepted.duplicate);

    let plan = p.plan(accepted.plan_id).await.unwrap();
    assert_eq!(plan.task_id, task.id);
    assert_eq!(plan.requested_by, "toronto://agents/developer/alice");
    assert_eq!(plan.intake, "submit");
    assert!(matches!(&plan.task, PlanTask::Deploy(d) if d.version == "2.4.1"));

    let event = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .unwrap()
        .unwrap();
    let event: Envelope<Plan> = toronto_protocol::decode(&event.payload, Encoding::Json).unwrap();
    assert_eq!(event.data.id, accepted.plan_id);
    assert_eq!(
        event.correlationid, task.correlationid,
        "the event continues the task's flow"
    );
    assert_eq!(event.subject.as_deref(), Some("shop-api"));

    // The same task again: the same plan, no second one.
    let again = p.submit(&task).await.unwrap();
    assert_eq!(again.plan_id, accepted.plan_id);
    assert!(again.duplicate);
    assert_eq!(p.plans("shop-api").await.len(), 1);
    let by_bob = p
        .list(PlanList {
            requested_by: Some("toronto://agents/qa/bob".into()),
            ..Default::default()
        })
        .await;
    assert!(by_bob.is_empty(), "filtered by requester");
    // No security agent answers here: the plan fails closed at its first gate.
    let failed = p.wait_for_state(accepted.plan_id, PlanState::Failed).await;
    assert!(
        failed
            .reason
            .as_deref()
            .unwrap_or_default()
            .contains("no security agent answers"),
        "{:?}",
        failed.reason
    );
    let failed_plans = p
        .list(PlanList {
            state: Some(PlanState::Failed),
            requested_by: Some("toronto://agents/developer/alice".into()),
            ..Default::default()
        })
        .await;
    assert_eq!(failed_plans.len(), 1);
    // A new task for the same change is a new plan.
    let other = Envelope::builder(
        "toronto://agents/developer/alice",
        deploy("shop-api", "staging"),
    )
    .build();
    assert_ne!(p.submit(&other).await.unwrap().plan_id, accepted.plan_id);
    assert!(matches!(
        p.plan(uuid::Uuid::now_v7()).await,
        Err(CallError::Remote(e)) if e.code == ErrorCode::NotFound
    ));
    p.stop().await;
}

#[tokio::test]
async fn a_bad_task_is_rejected_with_every_reason() {
    let p = planner().await;
    let mut task = deploy("Shop_API", "prod uction");
    task.version = "".into();
    task.strategy = Strategy::Canary {
        steps: vec![
            CanaryStep {
                weight: 50,
                pause_seconds: None,
            },
            CanaryStep {
                weight: 25,
                pause_seconds: None,
            },
        ],
    };
    let err = p
        .submit(&Envelope::builder("toronto://test", task).build())
        .await
        .unwrap_err();
    let CallError::Remote(body) = err else {
        panic!("expected a rejection, got {err}")
    };
    assert_eq!(body.code, ErrorCode::BadRequest);
    let reasons: Vec<String> =
        serde_json::from_value(body.details.unwrap()["reasons"].clone()).unwrap();
    assert_eq!(reasons.len(), 5, "{reasons:#?}");
    for expected in [
        "service `Shop_API`",
        "environment `prod uction`",
        "version ``",
        "must increase",
        "last canary step must be 100",
    ] {
        assert!(
            reasons.iter().any(|r| r.contains(expected)),
            "no reason about {expected}: {reasons:#?}"
        );
    }
    let scale = Envelope::builder(
        "toronto://test",
        ScaleTask {
            service: "shop-api".into(),
            environment: "production".into(),
            replicas: 5000,
        },
    )
    .build();
    let err = p.submit(&scale).await.unwrap_err();
    assert!(err.to_string().contains("replicas 5000"), "{err}");
    assert!(p.plans("shop-api").await.is_empty(), "nothing was planned");
    p.stop().await;
}

#[tokio::test]
async fn the_work_queue_is_the_same_door() {
    let p = planner().await;
    let js = async_nats::jetstream::new(p.client.clone());
    let mut dlq = p
        .client
        .subscribe("toronto.devops.v1.dlq.planner")
        .await
        .unwrap();
    p.client.flush().await.unwrap();
    let publish = |bytes: Vec<u8>, msg_id: &str, content_type: &str| {
        let js = js.clone();
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", msg_id);
        headers.insert("Content-Type", content_type);
        toronto_testkit::test_identity().apply(&mut headers, "toronto.agents.devops.tasks", &bytes);
        async move {
            js.publish_with_headers("toronto.agents.devops.tasks", headers, bytes.into())
                .await
                .unwrap()
                .await
                .unwrap()
        }
    };

    // A task published twice with the same Nats-Msg-Id makes one plan, in MessagePack too.
    let task = Envelope::builder("toronto://agents/qa/bob", deploy("cart", "staging")).build();
    let bytes = encode(&task, Encoding::MessagePack).unwrap();
    let first = publish(bytes.clone(), "task-1", "application/cloudevents+msgpack").await;
    let second = publish(bytes, "task-1", "application/cloudevents+msgpack").await;
    assert!(second.duplicate && first.sequence == second.sequence);
    let plans = p.wait_for_plans("cart", 1).await;
    assert_eq!(plans[0].intake, "queue");
    assert_eq!(plans[0].requested_by, "toronto://agents/qa/bob");

    // The same task through the other door is recognised as the same task.
    let again = p.submit(&task).await.unwrap();
    assert!(again.duplicate);
    assert_eq!(again.plan_id, plans[0].id);

    // Malformed, unknown and invalid tasks are parked with their reasons, never dropped.
    publish(
        b"{not json".to_vec(),
        "bad-1",
        "application/cloudevents+json",
    )
    .await;
    let reason = |m: async_nats::Message| {
        m.headers
            .unwrap()
            .get("Toronto-Dlq-Reason")
            .unwrap()
            .as_str()
            .to_owned()
    };
    let parked = tokio::time::timeout(Duration::from_secs(10), dlq.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(parked.payload.as_ref(), b"{not json");
    assert!(reason(parked).contains("malformed"));

    let mut unknown = serde_json::to_value(&task).unwrap();
    unknown["type"] = "ai.toronto.devops.task.teleport.v1".into();
    publish(
        serde_json::to_vec(&unknown).unwrap(),
        "bad-2",
        "application/cloudevents+json",
    )
    .await;
    let parked = tokio::time::timeout(Duration::from_secs(10), dlq.next())
        .await
        .unwrap()
        .unwrap();
    assert!(reason(parked).contains("task.teleport"));

    let invalid = Envelope::builder("toronto://test", deploy("cart", "")).build();
    publish(
        encode(&invalid, Encoding::Json).unwrap(),
        "bad-3",
        "application/cloudevents+json",
    )
    .await;
    let parked = tokio::time::timeout(Duration::from_secs(10), dlq.next())
        .await
        .unwrap()
        .unwrap();
    assert!(reason(parked).contains("environment ``"));

    assert_eq!(p.plans("cart").await.len(), 1, "refused tasks made no plan");
    p.stop().await;
}

#[tokio::test]
async fn a_plan_can_be_cancelled_once() {
    use toronto_protocol::tasks::PlanCancel;
    let p = planner().await;
    let mut events = p
        .client
        .subscribe("toronto.devops.v1.events.plan.cancelled")
        .await
        .unwrap();
    p.client.flush().await.unwrap();
    // A production scale change waits for approval: a plan that is still open.
    let task = Envelope::builder(
        "toronto://test",
        ScaleTask {
            service: "search".into(),
            environment: "production".into(),
            replicas: 4,
        },
    )
    .build();
    let plan_id = p.submit(&task).await.unwrap().plan_id;
    p.wait_for_state(plan_id, PlanState::Waiting).await;
    let cancel = |by: &str, reason: &str, plan_id| {
        let req = Envelope::builder(
            "toronto://humans/carol",
            PlanCancel {
                plan_id,
                by: by.into(),
                reason: reason.into(),
            },
        )
        .build();
        let client = p.client.clone();
        let by = by.to_owned();
        async move {
            let roles = [toronto_protocol::auth::Role::Operator];
            let who = if by.is_empty() { "nobody" } else { &by };
            let signer = toronto_testkit::person(&client, who, &roles, &[]).await;
            toronto_runtime::rpc::call_signed::<_, Plan>(
                &client,
                Some(&signer),
                "toronto.devops.v1.planner.plan.cancel",
                &req,
                Encoding::Json,
                Duration::from_secs(5),
            )
            .await
            .map(|r| r.data)
        }
    };

    let err = cancel("", "", plan_id).await.unwrap_err();
    assert!(
        matches!(&err, CallError::Remote(e) if e.code == ErrorCode::BadRequest),
        "{err}"
    );
    let cancelled = cancel("carol", "wrong version", plan_id).await.unwrap();
    assert_eq!(cancelled.state, PlanState::Cancelled);
    assert_eq!(cancelled.cancellation.as_ref().unwrap().by, "carol");
    assert_eq!(
        p.plan(plan_id).await.unwrap().state,
        PlanState::Cancelled,
        "stored"
    );
    let event = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .unwrap()
        .unwrap();
    let event: Envelope<Plan> = toronto_protocol::decode(&event.payload, Encoding::Json).unwrap();
    assert_eq!(event.data.id, plan_id);

    let again = cancel("carol", "twice", plan_id).await.unwrap_err();
    assert!(
        matches!(&again, CallError::Remote(e) if e.code == ErrorCode::Conflict),
        "{again}"
    );
    let missing = cancel("carol", "no such plan", uuid::Uuid::now_v7())
        .await
        .unwrap_err();
    assert!(
        matches!(&missing, CallError::Remote(e) if e.code == ErrorCode::NotFound),
        "{missing}"
    );
    p.stop().await;
}

#[tokio::test]
async fn a_delegated_task_is_answered_in_the_agents_vocabulary() {
    use toronto_protocol::delegation::{
        AcceptTask, AssignTask, ProgressUpdate, RejectTask, TaskCompleted,
    };
    use toronto_protocol::tasks::{CiSystem, Language, PipelineTask, Stages};
    let p = planner().await;
    let mut notify = p
        .client
        .subscribe("toronto.agents.developer.v1.notify")
        .await
        .unwrap();
    toronto_runtime::service::confirm_subscriptions(&p.client).await;
    let assign = |task_id: &str, service: &str| AssignTask {
        task_id: task_id.into(),
        from_role: "developer".into(),
        from_agent: Some("dev-7".into()),
        title: Some("CI for the shop".into()),
        task: PlanTask::Pipeline(PipelineTask {
            service: service.into(),
            repository: "github.com/acme/shop-api".into(),
            language: Language::Rust,
            ci: CiSystem::GithubActions,
            stages: Stages::default(),
            environments: vec!["staging".into()],
            image: None,
        }),
    };
    // Through the work queue, as peers hand tasks over.
    let envelope = Envelope::builder(
        "toronto://agents/developer/dev-7",
        assign("T-42", "shop-api"),
    )
    .build();
    let js = async_nats::jetstream::new(p.client.clone());
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", envelope.id.to_string().as_str());
    headers.insert("Content-Type", "application/json");
    let bytes = encode(&envelope, Encoding::Json).unwrap();
    toronto_testkit::test_identity().apply(&mut headers, "toronto.agents.devops.tasks", &bytes);
    js.publish_with_headers("toronto.agents.devops.tasks", headers, bytes.into())
        .await
        .unwrap()
        .await
        .unwrap();
    let mut seen = Vec::new();
    let completed = loop {
        let m = tokio::time::timeout(Duration::from_secs(10), notify.next())
            .await
            .expect("the developer hears back")
            .unwrap();
        let raw: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        let ty = raw["type"].as_str().unwrap().to_owned();
        seen.push(ty.clone());
        if ty == TaskCompleted::message_type().to_string() {
            break serde_json::from_value::<TaskCompleted>(raw["data"].clone()).unwrap();
        }
        if ty == AcceptTask::message_type().to_string() {
            let accept: AcceptTask = serde_json::from_value(raw["data"].clone()).unwrap();
            assert_eq!(accept.task_id, "T-42");
        }
        if ty == ProgressUpdate::message_type().to_string() {
            let update: ProgressUpdate = serde_json::from_value(raw["data"].clone()).unwrap();
            assert_eq!(update.task_id, "T-42");
            assert!((0.0..=1.0).contains(&update.progress));
        }
    };
    assert_eq!(
        seen.first().map(String::as_str),
        Some("ai.toronto.devops.agent.accept_task.v1")
    );
    assert!(
        seen.iter()
            .any(|t| t == "ai.toronto.devops.agent.progress_update.v1"),
        "{seen:?}"
    );
    assert_eq!(completed.task_id, "T-42");
    assert!(completed.success, "{completed:?}");
    assert_eq!(completed.artifacts[0].path, ".github/workflows/ci.yml");

    // A task the planner cannot take is refused with every reason, to the assigner.
    let bad = Envelope::builder(
        "toronto://agents/developer/dev-7",
        assign("T-43", "Shop API"),
    )
    .build();
    let err = p.submit(&bad).await.unwrap_err();
    assert!(matches!(err, CallError::Remote(ref b) if b.code == ErrorCode::BadRequest));
    let reject = loop {
        let m = tokio::time::timeout(Duration::from_secs(10), notify.next())
            .await
            .expect("the developer hears the refusal")
            .unwrap();
        let raw: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        if raw["type"] == RejectTask::message_type().to_string() {
            break serde_json::from_value::<RejectTask>(raw["data"].clone()).unwrap();
        }
    };
    assert_eq!(reject.task_id, "T-43");
    assert!(
        reject
            .reasons
            .iter()
            .any(|r| r.contains("must be a DNS label")),
        "{reject:?}"
    );
    p.stop().await;
}
