//! `toronto run` (the chat grammar from a terminal) and `toronto watch` (events live),
//! as a user runs them, against a real nats-server and a fake planner.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use toronto_protocol::tasks::{DeployTask, SubmitAccepted};
use toronto_protocol::{Envelope, ErrorBody};
use toronto_runtime::service::{Request, ServiceHost};
use toronto_testkit::{NatsServer, fake_service};

const TORONTO: &str = env!("CARGO_BIN_EXE_toronto");

async fn fake_planner(
    client: &async_nats::Client,
) -> (ServiceHost, Arc<Mutex<Vec<(String, DeployTask)>>>, String) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let host = fake_service(client, "fake-planner", "toronto://devops/planner").await;
    let plan_id = toronto_protocol::envelope::new_id();
    let s = seen.clone();
    host.add_endpoint(
        "submit",
        "toronto.devops.v1.planner.submit",
        move |req: Request<DeployTask>| {
            s.lock()
                .unwrap()
                .push((req.envelope.source.clone(), req.data().clone()));
            async move {
                Ok::<_, ErrorBody>(SubmitAccepted {
                    plan_id,
                    duplicate: false,
                })
            }
        },
    )
    .await
    .unwrap();
    (host, seen, plan_id.to_string())
}

/// The real planner on `server`, with the test identity as its admin; cancel the token
/// and await the handle to stop it.
async fn real_planner(
    server: &NatsServer,
) -> (
    tokio_util::sync::CancellationToken,
    tokio::task::JoinHandle<Result<(), toronto_runtime::RuntimeError>>,
) {
    let mut config = toronto_testkit::with_test_admin(toronto_runtime::Config::default());
    config.nats.urls = vec![server.url()];
    config.http.addr = String::new();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let rt = toronto_planner::start_with(config, Default::default(), shutdown.clone())
        .await
        .unwrap();
    (shutdown, tokio::spawn(rt.run_until_shutdown()))
}

async fn toronto(url: &str, args: &[&str]) -> std::process::Output {
    Command::new(TORONTO)
        .args(args)
        .env("TORONTO_NATS_URL", url)
        .output()
        .await
        .unwrap()
}

#[tokio::test]
async fn run_sends_the_chat_grammar_and_prints_the_reply() {
    let server = NatsServer::start().await;
    let client = server.client().await;
    let (_host, seen, plan_id) = fake_planner(&client).await;

    let out = toronto(
        &server.url(),
        &[
            "run",
            "--as",
            "tester",
            "deploy",
            "shop",
            "1.2.0",
            "to",
            "staging",
            "--strategy",
            "canary",
        ],
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.trim(),
        format!("plan {plan_id} accepted for deploy shop 1.2.0 to staging (canary)")
    );
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].0, "toronto://cli/tester");
        assert_eq!(seen[0].1.environment, "staging");
    }

    // JSON: the reply envelope, with --output after the command.
    let out = toronto(
        &server.url(),
        &[
            "run", "deploy", "shop", "1.2.0", "to", "qa", "--output", "json",
        ],
    )
    .await;
    assert!(out.status.success());
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        reply["type"],
        "ai.toronto.devops.planner.submit.accepted.v1"
    );
    assert_eq!(reply["data"]["plan_id"], plan_id);

    // Malformed: the usage of the command meant, and a failure exit.
    let out = toronto(&server.url(), &["run", "deploy", "shop"]).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("VERSION is missing"), "{stderr}");
    assert!(
        stderr.contains("usage: deploy SERVICE VERSION to ENV"),
        "{stderr}"
    );
    assert_eq!(seen.lock().unwrap().len(), 2);

    // help needs no NATS at all.
    let out = toronto("nats://127.0.0.1:1", &["run", "help", "silence"]).await;
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("usage: silence MATCHERS for DURATION [COMMENT]"),
        "{stdout}"
    );
}

#[tokio::test]
async fn watch_streams_the_events_of_one_service() {
    let server = NatsServer::start().await;
    let client = server.client().await;
    let mut watch = Command::new(TORONTO)
        .args(["watch", "--service", "shop"])
        .env("TORONTO_NATS_URL", server.url())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    let event = |service: &str| {
        let alert = toronto_protocol::alerts::Alert {
            fingerprint: format!("{service}-1"),
            status: toronto_protocol::alerts::AlertStatus::Firing,
            labels: [("alertname", "HighErrorRate"), ("service", service)]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            annotations: Default::default(),
            burn_rates: Default::default(),
            budget_remaining: None,
            starts_at: chrono_now(),
            ends_at: None,
            generator: "test".into(),
        };
        let envelope = Envelope::builder("toronto://test", alert)
            .subject(service)
            .build();
        toronto_protocol::encode(&envelope, toronto_protocol::Encoding::Json).unwrap()
    };
    // `watch` subscribes after it starts: publish until a line arrives.
    let mut line = None;
    for _ in 0..100 {
        for service in ["other", "shop"] {
            client
                .publish(
                    "toronto.devops.v1.events.alert.firing",
                    event(service).into(),
                )
                .await
                .unwrap();
        }
        client.flush().await.unwrap();
        if let Ok(Some(l)) = tokio::time::timeout(Duration::from_millis(200), lines.next_line())
            .await
            .map(Result::unwrap)
        {
            line = Some(l);
            break;
        }
    }
    let line = line.expect("watch prints the event");
    assert!(line.contains("alert.firing"), "{line}");
    assert!(line.contains("firing: HighErrorRate on shop"), "{line}");
    watch.kill().await.unwrap();
}

fn chrono_now() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now()
}

/// `toronto identity`: init writes a 0600 seed and prints its key; an admin adds a
/// principal through the planner; a non-admin is refused with the reason.
#[tokio::test]
async fn identity_init_add_list_and_a_refusal() {
    use std::os::unix::fs::PermissionsExt as _;
    let server = NatsServer::start().await;
    let (shutdown, running) = real_planner(&server).await;
    let dir = tempfile::tempdir().unwrap();
    let admin_file = dir.path().join("admin.nk");
    std::fs::write(
        &admin_file,
        format!("{}\n", toronto_testkit::TEST_ADMIN_SEED),
    )
    .unwrap();
    std::fs::set_permissions(&admin_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mine = dir.path().join("me/identity.nk");
    let with_file = async |file: &std::path::Path, args: &[&str]| {
        Command::new(TORONTO)
            .args(args)
            .env("TORONTO_NATS_URL", server.url())
            .env("TORONTO_IDENTITY_FILE", file)
            .output()
            .await
            .unwrap()
    };

    let init = with_file(&mine, &["identity", "init"]).await;
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let stdout = String::from_utf8(init.stdout).unwrap();
    let key = stdout
        .split_whitespace()
        .find(|w| w.starts_with('U') && w.len() == 56)
        .expect("prints the public key")
        .to_owned();
    let mode = std::fs::metadata(&mine).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // The seed itself (not any text that happens to hold "SU": a public key may).
    let seed = std::fs::read_to_string(&mine).unwrap();
    assert!(!stdout.contains(seed.trim()), "the seed is never printed");

    let add = [
        "identity", "add", "alice", "--key", &key, "--role", "approver",
    ];
    let added = with_file(&admin_file, &add).await;
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    let list = with_file(&admin_file, &["identity", "list"]).await;
    let listed = String::from_utf8(list.stdout).unwrap();
    assert!(
        listed.contains("alice") && listed.contains(&key),
        "{listed}"
    );

    let refused = with_file(&mine, &["identity", "revoke", "alice"]).await;
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("forbidden"), "{stderr}");

    shutdown.cancel();
    running.await.unwrap().unwrap();
}

/// The CLI as a user pipes it: `toronto run help | head -1` (the reader gone before the
/// CLI writes) ends quietly with status 0, never with a panic.
#[tokio::test]
async fn a_closed_pipe_is_not_a_panic() {
    for args in [
        &["run", "help"][..],
        &["config"][..],
        &["completions", "bash"][..],
    ] {
        for _ in 0..3 {
            let mut child = Command::new(TORONTO)
                .args(args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            // Close the read end at once, as `head` does once it has its line.
            drop(child.stdout.take());
            let out = child.wait_with_output().await.unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
            assert!(out.status.success(), "{args:?}: {:?} {stderr}", out.status);
        }
    }
}

/// `--output table|json|yaml` is one global option: the same document as JSON and YAML.
#[tokio::test]
async fn output_is_the_same_document_as_json_or_yaml() {
    let json = toronto("nats://127.0.0.1:1", &["run", "help", "--output", "json"]).await;
    assert!(json.status.success());
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert!(json["help"].as_str().unwrap().contains("deploy"), "{json}");
    let yaml = toronto("nats://127.0.0.1:1", &["--output", "yaml", "run", "help"]).await;
    assert!(yaml.status.success());
    let yaml: serde_json::Value = serde_yaml_ng::from_slice(&yaml.stdout).unwrap();
    assert_eq!(yaml, json);
    let config = toronto("nats://127.0.0.1:1", &["config", "--output", "yaml"]).await;
    let config: serde_json::Value = serde_yaml_ng::from_slice(&config.stdout).unwrap();
    assert!(
        config
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["name"] == "TORONTO_TLS_CA_FILE"),
        "{config}"
    );
    let wrong = toronto("nats://127.0.0.1:1", &["run", "help", "--output", "xml"]).await;
    assert!(!wrong.status.success());
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("table, json or yaml"),
        "{wrong:?}"
    );
}

/// `toronto completions SHELL` prints a script the shell accepts; `--version` names
/// the commit it was built from.
#[tokio::test]
async fn completions_and_version() {
    let bash = toronto("nats://127.0.0.1:1", &["completions", "bash"]).await;
    assert!(bash.status.success());
    let script = String::from_utf8(bash.stdout).unwrap();
    assert!(script.contains("_toronto"), "{script}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("toronto.bash");
    std::fs::write(&file, &script).unwrap();
    let syntax = Command::new("bash")
        .arg("-n")
        .arg(&file)
        .output()
        .await
        .unwrap();
    assert!(syntax.status.success(), "{syntax:?}");
    for shell in ["zsh", "fish"] {
        let out = toronto("nats://127.0.0.1:1", &["completions", shell]).await;
        assert!(out.status.success(), "{shell}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("toronto"));
    }
    let version = toronto("nats://127.0.0.1:1", &["--version"]).await;
    let version = String::from_utf8(version.stdout).unwrap();
    assert!(
        version.starts_with(&format!("toronto {} (commit ", env!("CARGO_PKG_VERSION"))),
        "{version}"
    );
}

#[tokio::test]
async fn run_follows_the_pages_of_a_listing() {
    use toronto_protocol::tasks::{CiSystem, Language, PipelineTask, Stages};
    let server = NatsServer::start().await;
    let (shutdown, running) = real_planner(&server).await;
    let client = server.client().await;
    let planner = toronto_testkit::Requester::service(client.clone(), "planner");
    // Thirteen plans: more than the one page of ten `plans` asks for.
    for n in 0..13 {
        let task = PipelineTask {
            service: format!("svc-{n}"),
            repository: "github.com/acme/shop-api".into(),
            language: Language::Rust,
            ci: CiSystem::GithubActions,
            stages: Stages::default(),
            environments: vec!["staging".into()],
            image: None,
        };
        let _: SubmitAccepted = planner.request("submit", task).await.unwrap();
    }
    let count = |out: &std::process::Output| {
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
        doc["data"]["plans"].as_array().map(Vec::len).unwrap_or(0)
    };
    let one = toronto(&server.url(), &["run", "plans", "--output", "json"]).await;
    assert!(one.status.success(), "{one:?}");
    assert_eq!(count(&one), 10);
    let table = toronto(&server.url(), &["run", "plans"]).await;
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("(more: `toronto run --pages 2 plans`"),
        "{text}"
    );
    let all = toronto(
        &server.url(),
        &["run", "--pages", "3", "plans", "--output", "json"],
    )
    .await;
    assert!(all.status.success(), "{all:?}");
    assert_eq!(count(&all), 13, "every plan, once");
    let doc: serde_json::Value = serde_json::from_slice(&all.stdout).unwrap();
    let mut ids: Vec<&str> = doc["data"]["plans"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["id"].as_str())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 13);
    assert!(doc["data"].get("next_cursor").is_none());
    shutdown.cancel();
    running.await.unwrap().unwrap();
}

#[tokio::test]
async fn analysis_replay_prints_then_and_now() {
    use toronto_protocol::analysis::{
        AnalysisMetric, AnalysisOutcome, CanaryAnalyze, CanaryVerdict, Direction, MetricBatch,
        MetricSample,
    };
    let server = NatsServer::start().await;
    let client = server.client().await;
    let mut config = toronto_testkit::with_test_admin(toronto_runtime::Config::default());
    config.nats.urls = vec![server.url()];
    config.http.addr = String::new();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let rt = toronto_monitor::start_with(config, Default::default(), shutdown.clone())
        .await
        .unwrap();
    let running = tokio::spawn(rt.run_until_shutdown());
    // A canary failing 25% of requests against a 1% baseline, 5 s of ticks.
    let now = chrono_now();
    for i in 0..50i64 {
        let at = now - chrono::Duration::milliseconds((50 - i) * 100);
        let samples = [("stable", 0.01), ("canary", 0.25)]
            .map(|(track, ratio)| MetricSample {
                name: "http_error_ratio".into(),
                labels: [("track".to_owned(), track.to_owned())].into(),
                value: ratio + (i % 3) as f64 / 1000.0,
                timestamp: at,
            })
            .to_vec();
        let batch = MetricBatch {
            service: "cart".into(),
            environment: "production".into(),
            source: "test".into(),
            samples,
        };
        let env = Envelope::builder("toronto://test", batch).build();
        let bytes = toronto_protocol::encode(&env, toronto_protocol::Encoding::Json).unwrap();
        client
            .publish("toronto.metrics.cart.production", bytes.into())
            .await
            .unwrap();
    }
    client.flush().await.unwrap();
    let api = toronto_testkit::Requester::service(client.clone(), "monitor");
    let rule = AnalysisMetric {
        name: "http_error_ratio".into(),
        query: None,
        direction: Direction::Increase,
        max_relative_effect: None,
        max_absolute_effect: Some(0.02),
        critical: true,
        must_have_data: false,
        max_value: None,
        min_value: None,
    };
    let analyze = CanaryAnalyze {
        service: "cart".into(),
        environment: "production".into(),
        canary: [("track".to_owned(), "canary".to_owned())].into(),
        baseline: [("track".to_owned(), "stable".to_owned())].into(),
        metrics: vec![rule],
        window_seconds: 60.0,
        confidence: None,
        rollout_id: Some(uuid::Uuid::new_v4()),
        sequential: None,
    };
    // The rollout's analysis fails once the samples are in (the bus is asynchronous).
    let mut failed = false;
    for _ in 0..50 {
        let v: CanaryVerdict = api
            .request("canary.analyze", analyze.clone())
            .await
            .unwrap();
        if v.outcome == AnalysisOutcome::Fail {
            failed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(failed, "the bad canary never failed");

    let out = toronto(
        &server.url(),
        &[
            "analysis",
            "replay",
            "--service",
            "cart",
            "--since",
            "1h",
            "--max-absolute-effect",
            "0.5",
        ],
    )
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.starts_with("ROLLOUT"), "{text}");
    assert!(text.contains("fail@"), "{text}");
    assert!(text.contains("yes: no longer aborts"), "{text}");
    assert!(text.contains("1 of 1 rollouts change"), "{text}");
    // No rules: the CLI says what to give.
    let out = toronto(&server.url(), &["analysis", "replay", "--service", "cart"]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--template"));
    shutdown.cancel();
    running.await.unwrap().unwrap();
}
