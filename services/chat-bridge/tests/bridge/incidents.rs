//! Incident work from chat reaches the incident commander in the shape it takes.

use super::*;

/// The incident commander's `incident.action` as its branch defines it (strict, like the
/// real one), to check that what the bridge sends would be taken.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct IncidentAction {
    id: uuid::Uuid,
    by: String,
    #[serde(default)]
    reason: Option<String>,
}

impl toronto_protocol::Message for IncidentAction {
    const NAME: &'static str = "incident.action";
    const MAJOR: u32 = 1;
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct SilenceCreate {
    matchers: Vec<SilenceMatcher>,
    #[serde(default)]
    starts_at: Option<chrono::DateTime<chrono::Utc>>,
    ends_at: chrono::DateTime<chrono::Utc>,
    created_by: String,
    comment: String,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
struct SilenceMatcher {
    name: String,
    value: String,
    is_regex: bool,
    is_equal: bool,
}

impl toronto_protocol::Message for SilenceCreate {
    const NAME: &'static str = "incident.silence.create";
    const MAJOR: u32 = 1;
}

/// A loose reply (an incident or a silence).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
struct Loose(Value);

impl toronto_protocol::Message for Loose {
    const NAME: &'static str = "incident";
    const MAJOR: u32 = 1;
}

#[tokio::test]
async fn incident_work_from_chat_reaches_the_incident_commander() {
    let b = bridge_with(settings()).await;
    let host = fake_service(
        &b.client,
        "fake-incident-commander",
        "toronto://devops/incident",
    )
    .await;
    let acks = Arc::new(Mutex::new(Vec::new()));
    let seen = acks.clone();
    host.add_endpoint(
        "ack",
        "toronto.devops.v1.incident.ack",
        move |req: Request<IncidentAction>| {
            seen.lock().unwrap().push(req.data().clone());
            let id = req.data().id;
            async move {
                Ok::<_, ErrorBody>(Loose(serde_json::json!({
                    "id": id, "title": "shop errors", "state": "acknowledged", "severity": "sev2"
                })))
            }
        },
    )
    .await
    .unwrap();
    let silences = Arc::new(Mutex::new(Vec::new()));
    let seen = silences.clone();
    host.add_endpoint(
        "silence-create",
        "toronto.devops.v1.incident.silence.create",
        move |req: Request<SilenceCreate>| {
            seen.lock().unwrap().push(req.data().clone());
            async move {
                Ok::<_, ErrorBody>(Loose(serde_json::json!({
                    "id": "0193a4f0-8c1e-7cc3-9a0e-2b7f61c3d9a9"
                })))
            }
        },
    )
    .await
    .unwrap();

    let incident = "0193a4f0-8c1e-7cc3-9a0e-2b7f61c3d9a2";
    let answer = b.slack("U_OP1", &format!("ack {incident}")).await;
    assert!(
        text(&answer).contains(&format!("incident {incident} is acknowledged")),
        "{answer}"
    );
    assert_eq!(acks.lock().unwrap()[0].by, "U_OP1");

    let answer = b
        .slack("U_OP2", "silence service=shop,env=~stag.* for 2h load test")
        .await;
    assert!(
        text(&answer).contains(
            "silence 0193a4f0-8c1e-7cc3-9a0e-2b7f61c3d9a9 for 2h on service=shop,env=~stag.*"
        ),
        "{answer}"
    );
    let silence = silences.lock().unwrap()[0].clone();
    assert_eq!(silence.created_by, "U_OP2");
    assert_eq!(silence.comment, "load test");
    assert!(silence.matchers[1].is_regex);

    // A viewer may not silence.
    let answer = b.slack("U_VIEW", "silence service=shop for 1h").await;
    assert!(
        text(&answer).contains("needs the operator role"),
        "{answer}"
    );
    assert_eq!(silences.lock().unwrap().len(), 1);
    host.stop(Duration::from_millis(100)).await;
    b.stop().await;
}
