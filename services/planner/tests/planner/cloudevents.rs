//! CloudEvents conformance, checked with the Python CloudEvents SDK (PyPI `cloudevents`)
//! against a real planner on a real nats-server: the SDK reads our events and replies,
//! and its structured and binary events are served as requests.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use toronto_protocol::status::StatusRequest;
use toronto_protocol::{Encoding, Envelope, encode};

use crate::support::*;

const SCRIPT: &str = "tests/planner/cloudevents_sdk.py";

/// The tools venv's Python with `cloudevents` and `nats-py` (`TORONTO_PYTHON_BIN`, else
/// `.tools/venv/bin/python` of the workspace); `None` when there is none.
fn python() -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os("TORONTO_PYTHON_BIN").filter(|v| !v.is_empty()) {
        return Some(bin.into());
    }
    let local = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.tools/venv/bin/python");
    local.is_file().then_some(local)
}

async fn run_python(python: &PathBuf, args: &[&str]) -> Value {
    let output = tokio::process::Command::new(python)
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(SCRIPT))
        .args(args)
        .env("PEER_SEED", toronto_testkit::TEST_ADMIN_SEED)
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// A captured message: its subject, headers and body.
fn captured(message: &async_nats::Message) -> (String, Value) {
    let headers: BTreeMap<String, String> = message
        .headers
        .iter()
        .flat_map(|h| h.iter())
        .filter_map(|(k, v)| Some((k.to_string(), v.first()?.as_str().to_owned())))
        .collect();
    let body = String::from_utf8(message.payload.to_vec()).unwrap();
    (
        message.subject.to_string(),
        json!({"headers": headers, "body": body}),
    )
}

#[tokio::test]
async fn the_python_cloudevents_sdk_reads_our_messages_and_is_served_in_both_modes() {
    let Some(python) = python() else {
        eprintln!(
            "SKIPPED: no tools venv with the PyPI cloudevents and nats-py packages \
             (run scripts/install-tools or set TORONTO_PYTHON_BIN)"
        );
        return;
    };
    let p = planner().await;
    let mut events = p
        .client
        .subscribe("toronto.devops.v1.events.>")
        .await
        .unwrap();
    p.client.flush().await.unwrap();

    // Events of a real plan, and real replies (a status, an error).
    let task = Envelope::builder(
        "toronto://agents/developer/alice",
        deploy("shop", "staging"),
    )
    .build();
    let accepted = p.submit(&task).await.unwrap();
    let mut messages: Vec<(String, Value)> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while messages.len() < 4 {
        let message = tokio::time::timeout_at(deadline, events.next())
            .await
            .expect("the plan's first events")
            .unwrap();
        let plan_event = [".plan.", ".step.", ".gate."]
            .iter()
            .any(|e| message.subject.contains(e));
        if plan_event && !messages.iter().any(|(s, _)| *s == message.subject.as_str()) {
            messages.push(captured(&message));
        }
    }
    let status = Envelope::builder("toronto://test", StatusRequest::default()).build();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Content-Type", Encoding::Json.content_type());
    let reply = p
        .client
        .request_with_headers(
            "toronto.devops.v1.planner.status",
            headers.clone(),
            encode(&status, Encoding::Json).unwrap().into(),
        )
        .await
        .unwrap();
    messages.push(("reply".into(), captured(&reply).1));
    let mut bogus = serde_json::to_value(&status).unwrap();
    bogus["type"] = "ai.toronto.devops.bogus.v1".into();
    let reply = p
        .client
        .request_with_headers(
            "toronto.devops.v1.planner.status",
            headers,
            serde_json::to_vec(&bogus).unwrap().into(),
        )
        .await
        .unwrap();
    messages.push(("error".into(), captured(&reply).1));

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("messages.json");
    let bodies: Vec<&Value> = messages.iter().map(|(_, m)| m).collect();
    std::fs::write(&file, serde_json::to_vec(&bodies).unwrap()).unwrap();
    let read = run_python(&python, &["parse", file.to_str().unwrap()]).await;
    let read = read.as_array().unwrap();
    assert_eq!(read.len(), messages.len());
    for ((subject, _), event) in messages.iter().zip(read) {
        let a = &event["attributes"];
        assert_eq!(a["specversion"], "1.0", "{subject}: {event}");
        assert!(
            a["dataschema"]
                .as_str()
                .unwrap()
                .starts_with("https://toronto.dev/schemas/v1/"),
            "{subject}: {event}"
        );
        assert!(a["time"].is_string() && a["id"].is_string(), "{event}");
        match subject.split_once(".events.") {
            Some((_, name)) => {
                // Every event has its own type; its data is the plan.
                assert_eq!(a["type"], format!("ai.toronto.devops.{name}.v1"), "{event}");
                assert!(a["source"].as_str().unwrap().starts_with("toronto://"));
                assert_eq!(a["correlationid"], task.correlationid.clone().unwrap());
                assert_eq!(a["dataschema"], "https://toronto.dev/schemas/v1/plan.json");
                assert_eq!(event["data"]["id"], accepted.plan_id.to_string());
            }
            None if subject == "reply" => {
                assert_eq!(a["type"], "ai.toronto.devops.status.v1", "{event}");
                assert_eq!(a["causationid"], status.id, "{event}");
                assert_eq!(event["data"]["service"], "toronto-planner", "{event}");
            }
            None => {
                assert_eq!(a["type"], "ai.toronto.devops.error.v1", "{event}");
                assert_eq!(event["data"]["code"], "bad_request", "{event}");
            }
        }
    }
    let names: Vec<&str> = messages.iter().map(|(s, _)| s.as_str()).collect();
    assert!(
        names.contains(&"toronto.devops.v1.events.plan.created"),
        "{names:?}"
    );

    // The SDK's events as requests, in both content modes, with ids that are no UUID.
    let url = p.server.url();
    for mode in ["structured", "binary"] {
        let id = format!("sdk-{mode}-status");
        let out = run_python(
            &python,
            &[
                "send",
                &url,
                "toronto.devops.v1.planner.status",
                mode,
                "ai.toronto.devops.status.request.v1",
                "{}",
                &id,
            ],
        )
        .await;
        assert_eq!(out["code"], 0, "{mode}: {out}");
        let reply = &out["reply"];
        assert_eq!(reply["attributes"]["type"], "ai.toronto.devops.status.v1");
        assert_eq!(reply["attributes"]["causationid"], id, "{mode}: {out}");
        assert_eq!(reply["attributes"]["correlationid"], format!("flow-{id}"));
        assert_eq!(reply["data"]["service"], "toronto-planner", "{out}");

        // A real command: a deploy task, planned under the SDK's id.
        let id = format!("sdk {mode} deploy");
        let data = serde_json::to_string(&deploy(&format!("cart-{mode}"), "staging")).unwrap();
        let out = run_python(
            &python,
            &[
                "send",
                &url,
                SUBMIT,
                mode,
                "ai.toronto.devops.task.deploy.v1",
                &data,
                &id,
            ],
        )
        .await;
        assert_eq!(out["code"], 0, "{mode}: {out}");
        assert_eq!(
            out["reply"]["attributes"]["type"],
            "ai.toronto.devops.planner.submit.accepted.v1"
        );
        let plan_id = out["reply"]["data"]["plan_id"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let plan = p.plan(plan_id).await.unwrap();
        assert_eq!(plan.task_id, id);
        assert_eq!(plan.requested_by, "python-sdk://tests/cloudevents");

        // A request the endpoint does not take is answered with the error envelope.
        let out = run_python(
            &python,
            &[
                "send",
                &url,
                "toronto.devops.v1.planner.status",
                mode,
                "ai.toronto.devops.status.request.v9",
                "{}",
                "sdk-old",
            ],
        )
        .await;
        assert_eq!(out["code"], 422, "{mode}: {out}");
        assert_eq!(
            out["reply"]["attributes"]["type"],
            "ai.toronto.devops.error.v1"
        );
        assert_eq!(out["reply"]["data"]["code"], "unsupported_version");
    }
    p.stop().await;
}
