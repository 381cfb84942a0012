//! End to end, against a real nats-server: the whole stack as `toronto up` starts it,
//! the AsyncAPI document against what is actually served, and SIGTERM under load.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use toronto_e2e::permissions_conf;

use async_nats::Client;
use bytes::Bytes;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use toronto_e2e::{SLEEP_VERB, Sleep, Slept};
use toronto_protocol::status::{Status, StatusRequest};
use toronto_protocol::{Encoding, Envelope, ServiceKind};
use toronto_runtime::Config;
use toronto_runtime::rpc::call;
use toronto_testkit::NatsServer;

fn config(server: &NatsServer) -> Config {
    let mut config = toronto_testkit::with_test_admin(Config::default());
    config.nats.urls = vec![server.url()];
    config.http.addr = "127.0.0.1:0".into();
    config
}

async fn collect(client: &Client, verb: &str) -> Vec<serde_json::Value> {
    toronto_e2e::srv_replies(client, verb).await
}

#[tokio::test]
async fn the_stack_registers_five_services_that_answer_status() {
    let server = NatsServer::start().await;
    let shutdown = CancellationToken::new();
    let stack = toronto_cli::up::Stack::start(&config(&server), 0, shutdown.clone())
        .await
        .unwrap();
    assert!(stack.services.iter().all(|(_, http)| http.is_some()));
    let client = server.client().await;

    let names: BTreeSet<String> = collect(&client, "PING")
        .await
        .into_iter()
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect();
    let expected: BTreeSet<String> = ServiceKind::ALL
        .iter()
        .map(|k| k.service_name().to_owned())
        .collect();
    assert_eq!(names, expected);

    for kind in ServiceKind::ALL {
        let request = Envelope::builder("toronto://e2e", StatusRequest::default()).build();
        let subject = format!("toronto.devops.v1.{}.status", kind.token());
        let reply = call::<_, Status>(
            &client,
            &subject,
            &request,
            Encoding::MessagePack,
            Duration::from_secs(5),
        )
        .await
        .unwrap_or_else(|e| panic!("{subject}: {e}"));
        assert_eq!(reply.data.service, kind.service_name());
        assert!(reply.data.nats_connected);
        assert_eq!(reply.correlationid, request.correlationid);
    }

    // Every service is ready over HTTP.
    for (kind, http) in &stack.services {
        let resp = reqwest::get(format!("http://{}/readyz", http.unwrap()))
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200, "{kind}");
    }

    // The buckets the services own exist.
    let js = async_nats::jetstream::new(client.clone());
    for bucket in [
        "toronto_plans",
        "toronto_rollouts",
        "toronto_slo_status",
        "toronto_incidents",
        "toronto_silences",
        "toronto_schedules",
    ] {
        js.get_key_value(bucket)
            .await
            .unwrap_or_else(|e| panic!("{bucket}: {e}"));
    }

    shutdown.cancel();
    stack.wait().await.unwrap();
    assert!(
        collect(&client, "PING").await.is_empty(),
        "all services deregistered"
    );
}

fn schemas_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../schemas")
}

fn refs(value: &serde_yaml_ng::Value, out: &mut Vec<String>) {
    match value {
        serde_yaml_ng::Value::Mapping(map) => {
            for (k, v) in map {
                if k.as_str() == Some("$ref")
                    && let Some(s) = v.as_str()
                {
                    out.push(s.to_owned());
                }
                refs(v, out);
            }
        }
        serde_yaml_ng::Value::Sequence(seq) => seq.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

fn resolve_pointer<'a>(
    doc: &'a serde_yaml_ng::Value,
    pointer: &str,
) -> Option<&'a serde_yaml_ng::Value> {
    pointer
        .trim_start_matches("#/")
        .split('/')
        .try_fold(doc, |node, token| node.get(token))
}

#[tokio::test]
async fn asyncapi_lists_every_served_endpoint_and_only_existing_schemas() {
    let text = std::fs::read_to_string(schemas_dir().join("asyncapi.yaml")).unwrap();
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
    assert_eq!(doc["asyncapi"].as_str(), Some("3.0.0"));
    for server in doc["servers"].as_mapping().unwrap().values() {
        assert_eq!(server["protocol"].as_str(), Some("nats"));
    }

    // Every reference resolves: files exist, pointers point at something.
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(!all.is_empty());
    for r in &all {
        if r.starts_with("#/") {
            assert!(resolve_pointer(&doc, r).is_some(), "dangling reference {r}");
        } else {
            let path = schemas_dir().join(r.trim_start_matches("./"));
            assert!(
                path.is_file(),
                "asyncapi.yaml references {r}, which does not exist"
            );
        }
    }

    // Every message named after a contract type has that type's schema in the catalogue.
    let catalogue: BTreeMap<String, String> = toronto_protocol::catalogue::all()
        .into_iter()
        .filter_map(|f| f.message_type.map(|t| (t, f.path)))
        .collect();
    for message in doc["components"]["messages"].as_mapping().unwrap().values() {
        let name = message["name"].as_str().unwrap();
        if name.starts_with("ai.toronto.devops.") {
            let path = catalogue
                .get(name)
                .unwrap_or_else(|| panic!("{name} is not a contract type"));
            assert!(
                serde_yaml_ng::to_string(message)
                    .unwrap()
                    .contains(path.as_str()),
                "{name} should reference {path}"
            );
        }
    }

    // Every endpoint the running services serve appears as a channel, with a
    // receive operation that replies.
    let addresses: BTreeMap<String, String> = doc["channels"]
        .as_mapping()
        .unwrap()
        .iter()
        .filter_map(|(k, v)| Some((v["address"].as_str()?.to_owned(), k.as_str()?.to_owned())))
        .collect();
    let server = NatsServer::start().await;
    let shutdown = CancellationToken::new();
    let stack = toronto_cli::up::Stack::start(&config(&server), 0, shutdown.clone())
        .await
        .unwrap();
    let client = server.client().await;
    let infos = collect(&client, "INFO").await;
    assert_eq!(infos.len(), ServiceKind::ALL.len());
    let mut served = 0;
    for info in infos {
        for endpoint in info["endpoints"].as_array().unwrap() {
            let subject = endpoint["subject"].as_str().unwrap();
            let channel = addresses.get(subject).unwrap_or_else(|| {
                panic!("{subject} is served but missing from schemas/asyncapi.yaml")
            });
            let operation = doc["operations"]
                .as_mapping()
                .unwrap()
                .values()
                .find(|op| op["channel"]["$ref"].as_str() == Some(&format!("#/channels/{channel}")))
                .unwrap_or_else(|| panic!("no operation for channel {channel}"));
            assert_eq!(operation["action"].as_str(), Some("receive"));
            assert!(
                operation.get("reply").is_some(),
                "{subject} is request/reply"
            );
            served += 1;
        }
    }
    assert!(served >= ServiceKind::ALL.len());
    shutdown.cancel();
    stack.wait().await.unwrap();
}

/// Waits until `name` lists the endpoint `endpoint` in `$SRV.INFO` (PING answers as
/// soon as the service registers, before its endpoints are added).
async fn wait_for_endpoint(client: &Client, name: &str, endpoint: &str) {
    for _ in 0..200 {
        if let Ok(Ok(reply)) = tokio::time::timeout(
            Duration::from_millis(200),
            client.request(format!("$SRV.INFO.{name}"), Bytes::new()),
        )
        .await
            && let Ok(info) = serde_json::from_slice::<serde_json::Value>(&reply.payload)
            && info["endpoints"]
                .as_array()
                .is_some_and(|eps| eps.iter().any(|e| e["name"] == endpoint))
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{name} never served {endpoint}");
}

async fn collect_quick(client: &Client, name: &str) -> bool {
    matches!(
        tokio::time::timeout(
            Duration::from_millis(200),
            client.request(format!("$SRV.PING.{name}"), Bytes::new())
        )
        .await,
        Ok(Ok(_))
    )
}

#[tokio::test]
async fn sigterm_lets_requests_in_flight_finish_and_exits_zero() {
    let server = NatsServer::start().await;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_slow_service"))
        .env("TORONTO_NATS_URL", server.url())
        .env("TORONTO_HTTP_ADDR", "")
        .env("TORONTO_LOG_FORMAT", "text")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let client = server.client().await;
    wait_for_endpoint(&client, "toronto-planner", &SLEEP_VERB.replace('.', "-")).await;

    let subject = format!("toronto.devops.v1.planner.{SLEEP_VERB}");
    let in_flight = {
        let client = client.clone();
        let subject = subject.clone();
        tokio::spawn(async move {
            let request = Envelope::builder("toronto://e2e", Sleep { ms: 1500 }).build();
            call::<_, Slept>(
                &client,
                &subject,
                &request,
                Encoding::Json,
                Duration::from_secs(10),
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    let pid = child.id().unwrap().to_string();
    let killed = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(killed.success());

    let reply = in_flight
        .await
        .unwrap()
        .expect("the request in flight at SIGTERM is answered");
    assert_eq!(reply.data.ms, 1500);
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0), "clean exit after SIGTERM");
    assert!(
        !collect_quick(&client, "toronto-planner").await,
        "deregistered after exit"
    );
}

#[test]
fn the_configuration_page_documents_every_variable() {
    let readme = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/configuration.md"),
    )
    .unwrap();
    for name in toronto_cli::settings_docs::names() {
        assert!(
            readme.contains(&format!("| `{name}` |")),
            "docs/configuration.md's table lacks {name}"
        );
    }
}

async fn wait_for(rollouts: &mut async_nats::Subscriber, what: &str) -> serde_json::Value {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(20), rollouts.next())
            .await
            .unwrap_or_else(|_| panic!("no rollout.{what}"))
            .unwrap();
        if m.subject.ends_with(what) {
            return serde_json::from_slice::<serde_json::Value>(&m.payload).unwrap();
        }
    }
}

fn as_user(server: &NatsServer, user: &str) -> Config {
    let mut config = config(server);
    config.nats.user = Some(user.into());
    config.nats.password = Some(format!("pw-{user}"));
    config.shutdown_grace_secs = 2;
    config
}

async fn connect_as(
    server: &NatsServer,
    user: &str,
    errors: Option<tokio::sync::mpsc::UnboundedSender<String>>,
) -> Client {
    let mut options =
        async_nats::ConnectOptions::with_user_and_password(user.into(), format!("pw-{user}"));
    if let Some(tx) = errors {
        options = options.event_callback(move |event| {
            let tx = tx.clone();
            async move {
                if let async_nats::Event::ServerError(e) = event {
                    let _ = tx.send(e.to_string());
                }
            }
        });
    }
    options.connect(server.url()).await.unwrap()
}

#[tokio::test]
async fn every_service_works_under_its_least_privilege_nats_user_and_no_further() {
    let server = NatsServer::start_with_config(&permissions_conf()).await;
    // Streams and buckets are the admin's; the services only use them.
    let bootstrap = connect_as(&server, "admin", None).await;
    toronto_cli::bootstrap::bootstrap(
        &bootstrap,
        &toronto_protocol::Subjects::default(),
        &Default::default(),
    )
    .await
    .unwrap();
    let shutdown = CancellationToken::new();
    let users = [
        (ServiceKind::Planner, "planner"),
        (ServiceKind::Deployer, "deployer"),
        (ServiceKind::Monitor, "monitor"),
        (ServiceKind::IncidentCommander, "incident"),
        (ServiceKind::ChatBridge, "chat"),
    ];
    let mut running = Vec::new();
    for (kind, user) in users {
        let mut config = as_user(&server, user);
        config.http.addr = String::new();
        let rt = match kind {
            ServiceKind::Deployer => {
                let settings = toronto_deployer::Settings {
                    analysis_interval: Duration::from_millis(200),
                    step_pause: Duration::from_secs(30),
                    drift_interval: Duration::ZERO,
                    ..Default::default()
                };
                toronto_deployer::start_with(config, settings, None, shutdown.clone())
                    .await
                    .map(|s| s.runtime)
            }
            kind => toronto_cli::up::start_service(kind, config, shutdown.clone()).await,
        }
        .unwrap_or_else(|e| panic!("{user} cannot start under its permissions: {e}"));
        running.push(tokio::spawn(rt.run_until_shutdown()));
    }
    let admin = connect_as(&server, "admin", None).await;
    // Each answers status.
    for (kind, user) in users {
        let req = Envelope::builder("toronto://test", StatusRequest::default()).build();
        let reply: Envelope<Status> = call(
            &admin,
            &format!("toronto.devops.v1.{}.status", kind.token()),
            &req,
            Encoding::Json,
            Duration::from_secs(5),
        )
        .await
        .unwrap_or_else(|e| panic!("{user}: {e}"));
        assert_eq!(reply.data.service, kind.service_name());
    }
    // A flow across them: the deployer ships 1.0.0, then its canary of a faulty 2.0.0
    // is judged by the monitor (metrics on the bus, a request to the monitor) and
    // rolled back; the planner plans a pipeline (queue, KV, events).
    let mut rollouts = admin
        .subscribe("toronto.devops.v1.events.rollout.>")
        .await
        .unwrap();
    toronto_runtime::service::confirm_subscriptions(&admin).await;
    let execute = |version: &str, steps: Vec<toronto_protocol::tasks::CanaryStep>| {
        Envelope::builder(
            "toronto://test",
            toronto_protocol::tasks::ExecuteRequest {
                plan_id: uuid::Uuid::now_v7(),
                idempotency_key: format!("perm-{version}"),
                task: toronto_protocol::tasks::PlanTask::Deploy(Box::new(
                    toronto_protocol::tasks::DeployTask {
                        service: "shop".into(),
                        version: version.into(),
                        image: None,
                        environment: "production".into(),
                        strategy: toronto_protocol::tasks::Strategy::Canary { steps },
                        change: None,
                        fix: false,
                        policy_override: None,
                    },
                )),
            },
        )
        .build()
    };
    let _: Envelope<toronto_protocol::tasks::ExecuteAccepted> = call(
        &admin,
        "toronto.devops.v1.deployer.rollout.start",
        &execute("1.0.0", vec![]),
        Encoding::Json,
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    wait_for(&mut rollouts, "succeeded").await;
    let fault = Envelope::builder(
        "toronto://test",
        toronto_protocol::rollout::SimFault {
            service: "shop".into(),
            environment: "production".into(),
            version: "2.0.0".into(),
            error_rate: 0.5,
            ..Default::default()
        },
    )
    .build();
    let _: Envelope<toronto_protocol::rollout::SimService> = call(
        &admin,
        "toronto.devops.v1.deployer.sim.fault",
        &fault,
        Encoding::Json,
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    let canary = vec![
        toronto_protocol::tasks::CanaryStep {
            weight: 50,
            pause_seconds: None,
        },
        toronto_protocol::tasks::CanaryStep {
            weight: 100,
            pause_seconds: None,
        },
    ];
    let _: Envelope<toronto_protocol::tasks::ExecuteAccepted> = call(
        &admin,
        "toronto.devops.v1.deployer.rollout.start",
        &execute("2.0.0", canary),
        Encoding::Json,
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    let aborted = wait_for(&mut rollouts, "aborted").await;
    assert_eq!(
        aborted["data"]["analyses"][0]["source"], "monitor",
        "the deployer asked the monitor: {aborted}"
    );

    // Outside its permissions, a service's user is refused by the server and nothing
    // is delivered.
    let (tx, mut violations) = tokio::sync::mpsc::unbounded_channel();
    let planner = connect_as(&server, "planner", Some(tx)).await;
    planner
        .publish(
            "toronto.devops.v1.events.rollout.succeeded",
            Bytes::from_static(b"{}"),
        )
        .await
        .unwrap();
    planner
        .publish("toronto.metrics.shop.production", Bytes::from_static(b"{}"))
        .await
        .unwrap();
    planner.flush().await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let v = tokio::time::timeout(Duration::from_secs(5), violations.recv())
            .await
            .expect("the server reports the violation")
            .unwrap();
        seen.push(v);
    }
    assert!(
        seen.iter()
            .all(|v| v.to_lowercase().contains("permissions violation")),
        "{seen:?}"
    );
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(300), rollouts.next()).await
    {
        assert_ne!(
            m.payload.as_ref(),
            b"{}",
            "a forged rollout event got through"
        );
    }
    shutdown.cancel();
    for r in running {
        r.await.unwrap().unwrap();
    }
}
