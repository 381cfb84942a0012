//! The NATS service API (ADR-32): every `$SRV.PING`, `$SRV.INFO` and `$SRV.STATS` reply of
//! every service, validated by check-jsonschema against the micro v1 response schemas in
//! `tests/fixtures/micro-v1/` (the published `io.nats.micro.v1.*_response` schemas).

use std::path::{Path, PathBuf};

use async_nats::Client;
use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use toronto_protocol::ServiceKind;
use toronto_runtime::Config;
use toronto_testkit::NatsServer;

/// check-jsonschema (installed by `scripts/install-tools --test`).
fn check_jsonschema() -> PathBuf {
    let path = std::env::var_os("TORONTO_CHECK_JSONSCHEMA_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.tools/venv/bin/check-jsonschema")
        });
    assert!(
        path.is_file(),
        "check-jsonschema not found at {}: run scripts/install-tools --test",
        path.display()
    );
    path
}

async fn collect(client: &Client, verb: &str) -> Vec<serde_json::Value> {
    toronto_e2e::srv_replies(client, verb).await
}

/// Validates each of `replies` against `schema` with check-jsonschema, which checks
/// formats (`date-time`) as well as the structure.
fn validate(dir: &Path, schema: &str, replies: &[serde_json::Value]) {
    let schema_file = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/micro-v1")
        .join(format!("{schema}.json"));
    let mut files = Vec::new();
    for (i, reply) in replies.iter().enumerate() {
        let file = dir.join(format!("{schema}-{i}.json"));
        std::fs::write(&file, serde_json::to_vec_pretty(reply).unwrap()).unwrap();
        files.push(file);
    }
    let out = std::process::Command::new(check_jsonschema())
        .arg("--schemafile")
        .arg(&schema_file)
        .args(&files)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{schema}: {}\n{}\n{replies:#?}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn every_ping_info_and_stats_reply_follows_the_micro_v1_schemas() {
    let server = NatsServer::start().await;
    let mut config = toronto_testkit::with_test_admin(Config::default());
    config.nats.urls = vec![server.url()];
    config.http.addr = "127.0.0.1:0".into();
    let shutdown = CancellationToken::new();
    let stack = toronto_cli::up::Stack::start(&config, 0, shutdown.clone())
        .await
        .unwrap();
    let client = server.client().await;

    // One failed request, so that a `last_error` is filled in.
    let _ = client
        .request(
            "toronto.devops.v1.planner.plan.get",
            Bytes::from("{not json"),
        )
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    for (verb, schema) in [
        ("PING", "ping_response"),
        ("INFO", "info_response"),
        ("STATS", "stats_response"),
    ] {
        let replies = collect(&client, verb).await;
        assert_eq!(
            replies.len(),
            ServiceKind::ALL.len(),
            "{verb}: {replies:#?}"
        );
        validate(dir.path(), schema, &replies);
        if verb != "PING" {
            // Every service serves endpoints, each with a dash name and a dotted subject.
            for reply in &replies {
                let endpoints = reply["endpoints"].as_array().unwrap();
                assert!(!endpoints.is_empty(), "{reply}");
                for e in endpoints {
                    let name = e["name"].as_str().unwrap();
                    assert!(!name.contains('.'), "{name}");
                    assert_eq!(
                        e["subject"].as_str().unwrap().rsplit('.').next(),
                        name.rsplit('-').next(),
                        "{e}"
                    );
                }
            }
        }
        if verb == "STATS" {
            let planner = replies
                .iter()
                .find(|r| r["name"] == "toronto-planner")
                .unwrap();
            let plan_get = planner["endpoints"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["name"] == "plan-get")
                .expect("the planner's plan-get endpoint");
            assert_eq!(plan_get["subject"], "toronto.devops.v1.planner.plan.get");
            assert_eq!(plan_get["num_errors"], 1, "{plan_get}");
            assert_ne!(plan_get["last_error"], "", "{plan_get}");
        }
    }

    // A schema that refuses what we serve proves the check runs: a dotted name fails.
    let mut dotted = collect(&client, "PING").await.remove(0);
    dotted["name"] = "toronto.planner".into();
    let file = dir.path().join("dotted.json");
    std::fs::write(&file, serde_json::to_vec(&dotted).unwrap()).unwrap();
    let refused = std::process::Command::new(check_jsonschema())
        .arg("--schemafile")
        .arg(
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/micro-v1/ping_response.json"),
        )
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        !refused.status.success(),
        "a dotted service name must fail the schema"
    );

    shutdown.cancel();
    stack.wait().await.unwrap();
}
