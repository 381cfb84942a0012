//! One deploy is one trace. The planner, deployer and monitor run as separate
//! processes (the `test_service` fixture, so each has its own OpenTelemetry provider
//! and `service.name`, as in production) on a real nats-server, exporting spans over
//! OTLP/HTTP to a receiver in this test that decodes the protobuf. A deploy task goes
//! in with a `traceparent` and a `tracestate`; once its plan has ended the processes
//! are stopped with SIGTERM (the batch delay is a minute, so the spans arrive through
//! the flush at shutdown), and the span tree must hold one trace across the three
//! services, with every parent link intact and the `tracestate` kept.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use futures::StreamExt;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message as _;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use toronto_protocol::codec::CONTENT_TYPE_HEADER;
use toronto_protocol::tasks::{
    CanaryStep, DeployTask, GateVerdict, Plan, PlanList, PlanState, Plans, Strategy, SubmitAccepted,
};
use toronto_protocol::{Encoding, Envelope, ServiceKind, Subjects, TraceParent};
use toronto_testkit::{NatsServer, Requester};

/// The caller's span: the parent of the planner's first span; nobody exports it.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";
/// The caller's vendor state, to be kept along the whole trace.
const TRACESTATE: &str = "toronto-test=kept";
/// A second deploy, queued by a peer that sets only the envelope's `traceparent`
/// attribute (no header).
const QUEUED_TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
const QUEUED_CALLER_SPAN: &str = "b7ad6b7169203331";

/// One span as received.
#[derive(Debug, Clone)]
struct Got {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
    trace_state: String,
}

type Received = Arc<Mutex<Vec<Got>>>;

/// `POST /v1/traces`: decodes an `ExportTraceServiceRequest` and keeps its spans.
async fn export(State(received): State<Received>, body: Bytes) -> &'static str {
    let request = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
    let mut got = received.lock().unwrap();
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| kv.value.as_ref()?.value.as_ref())
            .map(|v| match v {
                Value::StringValue(s) => s.clone(),
                other => format!("{other:?}"),
            })
            .unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                got.push(Got {
                    service: service.clone(),
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent: hex(&span.parent_span_id),
                    trace_state: span.trace_state,
                });
            }
        }
    }
    ""
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The receiver's base URL (what `OTEL_EXPORTER_OTLP_ENDPOINT` is set to).
async fn receiver(received: Received) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new()
        .route("/v1/traces", post(export))
        .with_state(received);
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

/// The security and QA agents: pass every gate, and record the trace context their
/// requests came with.
async fn peers(client: async_nats::Client, seen: Arc<Mutex<Vec<(String, String)>>>) {
    let mut scan = client
        .subscribe("toronto.agents.security.v1.scan")
        .await
        .unwrap();
    let mut test = client.subscribe("toronto.agents.qa.v1.test").await.unwrap();
    loop {
        let m = tokio::select! {
            Some(m) = scan.next() => m,
            Some(m) = test.next() => m,
            else => return,
        };
        let header = |name: &str| {
            m.headers
                .as_ref()
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default()
        };
        seen.lock()
            .unwrap()
            .push((header("traceparent"), header("tracestate")));
        let Some(reply) = m.reply.clone() else {
            continue;
        };
        let verdict = GateVerdict {
            passed: true,
            reason: Some("test peer: clean".into()),
            findings: None,
        };
        let envelope = Envelope::builder("toronto://agents/test", verdict).build();
        let body = toronto_protocol::encode(&envelope, Encoding::Json).unwrap();
        let _ = client.publish(reply, body.into()).await;
    }
}

/// One service process exporting spans to `endpoint`.
async fn spawn(
    kind: &str,
    url: &str,
    endpoint: &str,
    log: &std::path::Path,
    extra: &[(&str, &str)],
) -> Child {
    let stderr = std::fs::File::create(log).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_test_service"))
        .arg(kind)
        .envs([
            ("TORONTO_NATS_URL", url),
            ("TORONTO_JETSTREAM_REPLICAS", "1"),
            ("TORONTO_HTTP_ADDR", ""),
            ("TORONTO_LOG", "info"),
            ("TORONTO_LOG_FORMAT", "json"),
            ("TORONTO_SHUTDOWN_GRACE_SECONDS", "2"),
            ("TORONTO_PLANNER_GATE_TIMEOUT_MS", "5000"),
            ("TORONTO_DEPLOYER_STEP_PAUSE_SECONDS", "1"),
            ("TORONTO_DEPLOYER_ANALYSIS_INTERVAL_MS", "300"),
            ("TORONTO_DEPLOYER_ANALYSIS_WINDOW_SECONDS", "2"),
            ("TORONTO_DEPLOYER_SCALE_DOWN_DELAY_SECONDS", "1"),
            ("TORONTO_DEPLOYER_DRIFT_INTERVAL_SECONDS", "0"),
            ("TORONTO_DEPLOYER_SIM_TICK_MS", "100"),
            ("TORONTO_DEPLOYER_SIM_POD_START_MS", "100"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
            // Nothing is sent on a schedule during the test: what arrives was flushed
            // when the process shut down.
            ("OTEL_BSP_SCHEDULE_DELAY", "60000"),
        ])
        .envs(extra.iter().copied())
        .env_remove("OTEL_SERVICE_NAME")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .stdout(Stdio::piped())
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.starts_with("instance ") {
                return;
            }
        }
        panic!("{kind} ended before it started; see {}", log.display());
    })
    .await
    .unwrap_or_else(|_| panic!("{kind} did not start; see {}", log.display()));
    child
}

/// SIGTERM, and the exit within the shutdown grace; how long it took.
async fn terminate(child: &mut Child) -> Duration {
    let asked = std::time::Instant::now();
    let pid = child.id().expect("running").to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("the service exits after SIGTERM")
        .unwrap();
    assert!(exit.success(), "exit status {exit}");
    asked.elapsed()
}

/// Sends the deploy task with the caller's `traceparent` and `tracestate`.
async fn submit(client: &async_nats::Client, task: DeployTask) -> SubmitAccepted {
    let subject = Subjects::default().command(ServiceKind::Planner, "submit");
    let traceparent = TraceParent::parse(&format!("00-{TRACE_ID}-{CALLER_SPAN}-01")).unwrap();
    let envelope = Envelope::builder("toronto://agents/test", task)
        .traceparent(traceparent.clone())
        .build();
    let bytes = toronto_protocol::encode(&envelope, Encoding::Json).unwrap();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(CONTENT_TYPE_HEADER, Encoding::Json.content_type());
    headers.insert("traceparent", traceparent.to_string().as_str());
    headers.insert("tracestate", TRACESTATE);
    toronto_testkit::test_identity().apply(&mut headers, &subject, &bytes);
    let reply = client
        .send_request(
            subject,
            async_nats::client::Request::new()
                .payload(bytes.into())
                .headers(headers)
                .timeout(Some(Duration::from_secs(10))),
        )
        .await
        .unwrap();
    let tp = reply.headers.as_ref().and_then(|h| h.get("traceparent"));
    assert!(
        tp.is_some_and(|tp| tp.as_str().contains(TRACE_ID)),
        "the reply continues the caller's trace: {tp:?}"
    );
    toronto_protocol::decode::<SubmitAccepted>(&reply.payload, Encoding::Json)
        .unwrap_or_else(|e| panic!("submit refused: {e}: {:?}", reply.payload))
        .data
}

/// Publishes the deploy task on the task queue with the trace context in the
/// envelope only.
async fn enqueue(client: &async_nats::Client, task: DeployTask) {
    let subject = Subjects::default().tasks();
    let traceparent =
        TraceParent::parse(&format!("00-{QUEUED_TRACE_ID}-{QUEUED_CALLER_SPAN}-01")).unwrap();
    let envelope = Envelope::builder("toronto://agents/test", task)
        .traceparent(traceparent)
        .build();
    let bytes = toronto_protocol::encode(&envelope, Encoding::Json).unwrap();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", envelope.id.to_string().as_str());
    headers.insert(CONTENT_TYPE_HEADER, Encoding::Json.content_type());
    toronto_testkit::test_identity().apply(&mut headers, &subject, &bytes);
    async_nats::jetstream::new(client.clone())
        .publish_with_headers(subject, headers, bytes.into())
        .await
        .unwrap()
        .await
        .unwrap();
}

/// Waits for the plan of `service` to end; its final state.
async fn plan_end(planner: &Requester, service: &str, logs: &std::path::Path) -> Plan {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let plans = planner
            .request::<_, Plans>(
                "plan.list",
                PlanList {
                    service: Some(service.into()),
                    ..Default::default()
                },
            )
            .await
            .ok();
        let plan = plans.and_then(|p| p.plans.into_iter().find(|p| p.state.is_final()));
        if let Some(plan) = plan {
            return plan;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the plan of {service} did not end; logs in {}",
            logs.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn deploy(service: &str) -> DeployTask {
    DeployTask {
        service: service.into(),
        version: "1.2.3".into(),
        image: Some(format!("registry.example/{service}:1.2.3")),
        environment: "staging".into(),
        strategy: Strategy::Canary {
            steps: [50, 100]
                .into_iter()
                .map(|weight| CanaryStep {
                    weight,
                    pause_seconds: Some(1),
                })
                .collect(),
        },
        change: None,
        fix: false,
        policy_override: None,
    }
}

/// The spans of `trace_id`, and a line per span to print.
fn spans_of(received: &Received, trace_id: &str) -> (Vec<Got>, String) {
    let spans: Vec<Got> = received
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.trace_id == trace_id)
        .cloned()
        .collect();
    let tree = spans
        .iter()
        .map(|s| format!("{} {} {} <- {}", s.service, s.name, s.span_id, s.parent))
        .collect::<Vec<_>>()
        .join("\n");
    (spans, tree)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_deploy_is_one_trace_across_planner_deployer_and_monitor() {
    let received: Received = Arc::default();
    let endpoint = receiver(received.clone()).await;
    let server = NatsServer::start().await;
    let client = server.client().await;
    let gate_requests = Arc::new(Mutex::new(Vec::new()));
    let peers = tokio::spawn(peers(client.clone(), gate_requests.clone()));
    // Kept after the run, to read when it fails.
    let logs = std::env::temp_dir().join(format!("toronto-tracing-{}", std::process::id()));
    std::fs::create_dir_all(&logs).unwrap();
    let mut procs = Vec::new();
    for kind in ["planner", "deployer", "monitor"] {
        let log = logs.join(format!("{kind}.log"));
        procs.push((kind, spawn(kind, &server.url(), &endpoint, &log, &[]).await));
    }

    let plan_id = submit(&client, deploy("traced-api")).await.plan_id;
    enqueue(&client, deploy("queued-api")).await;
    let planner =
        Requester::service(client.clone(), "planner").with_timeout(Duration::from_secs(5));
    for service in ["traced-api", "queued-api"] {
        let plan = plan_end(&planner, service, &logs).await;
        assert_eq!(
            plan.state,
            PlanState::Completed,
            "the deploy succeeds: {plan:?}"
        );
        if service == "traced-api" {
            assert_eq!(plan.id, plan_id);
        }
    }

    for (_, child) in &mut procs {
        terminate(child).await;
    }
    peers.abort();

    // The peers were asked within the trace, with its state.
    let gate_requests = gate_requests.lock().unwrap().clone();
    assert!(!gate_requests.is_empty(), "the security and QA gates ran");
    for (traceparent, tracestate) in &gate_requests {
        if traceparent.contains(TRACE_ID) {
            assert_eq!(tracestate, TRACESTATE);
        } else {
            assert!(
                traceparent.contains(QUEUED_TRACE_ID),
                "gate request {traceparent}"
            );
            assert_eq!(tracestate, "", "no state was given with the queued task");
        }
    }

    let (spans, tree) = spans_of(&received, TRACE_ID);
    println!("the deploy's trace ({} spans):\n{tree}", spans.len());
    let services: BTreeSet<&str> = spans.iter().map(|s| s.service.as_str()).collect();
    for service in ["toronto-planner", "toronto-deployer", "toronto-monitor"] {
        assert!(
            services.contains(service),
            "no span of {service} in the deploy's trace:\n{tree}"
        );
    }
    let ids: HashMap<&str, &Got> = spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    assert_eq!(ids.len(), spans.len(), "span ids are unique:\n{tree}");
    for s in &spans {
        assert!(
            s.parent == CALLER_SPAN || ids.contains_key(s.parent.as_str()),
            "{} {}: parent {} is not in the trace:\n{tree}",
            s.service,
            s.name,
            s.parent
        );
        assert_eq!(
            s.trace_state, TRACESTATE,
            "{} {} lost the tracestate",
            s.service, s.name
        );
    }
    // The caller's span has one child: the planner's `submit`.
    let roots: Vec<&Got> = spans.iter().filter(|s| s.parent == CALLER_SPAN).collect();
    assert_eq!(roots.len(), 1, "{tree}");
    assert_eq!(roots[0].service, "toronto-planner");
    // Every service's spans hang from another service's: the trace crosses
    // planner -> deployer -> monitor.
    let crossings: BTreeMap<(&str, &str), usize> = spans
        .iter()
        .filter_map(|s| {
            let parent = ids.get(s.parent.as_str())?;
            (parent.service != s.service).then_some((parent.service.as_str(), s.service.as_str()))
        })
        .fold(BTreeMap::new(), |mut m, k| {
            *m.entry(k).or_default() += 1;
            m
        });
    assert!(
        crossings.contains_key(&("toronto-planner", "toronto-deployer")),
        "{crossings:?}\n{tree}"
    );
    assert!(
        crossings.contains_key(&("toronto-deployer", "toronto-monitor")),
        "{crossings:?}\n{tree}"
    );

    // The queued deploy, its context in the envelope only, is a trace of its own
    // from the planner's consumer to the monitor.
    let (queued, queued_tree) = spans_of(&received, QUEUED_TRACE_ID);
    let queued_ids: BTreeSet<&str> = queued.iter().map(|s| s.span_id.as_str()).collect();
    let first = queued
        .iter()
        .find(|s| s.parent == QUEUED_CALLER_SPAN)
        .unwrap_or_else(|| panic!("no span continues the queued task's trace:\n{queued_tree}"));
    assert_eq!(first.service, "toronto-planner", "{queued_tree}");
    for s in &queued {
        assert!(
            s.parent == QUEUED_CALLER_SPAN || queued_ids.contains(s.parent.as_str()),
            "{} {}: parent {} is not in the trace:\n{queued_tree}",
            s.service,
            s.name,
            s.parent
        );
    }
    let queued_services: BTreeSet<&str> = queued.iter().map(|s| s.service.as_str()).collect();
    assert_eq!(
        queued_services,
        BTreeSet::from(["toronto-deployer", "toronto-monitor", "toronto-planner"]),
        "{queued_tree}"
    );

    // The services' JSON log lines inside the trace carry its ids.
    let deployer_log = std::fs::read_to_string(logs.join("deployer.log")).unwrap();
    let traced = deployer_log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["trace_id"] == TRACE_ID);
    let traced =
        traced.unwrap_or_else(|| panic!("no deployer log line in the trace:\n{deployer_log}"));
    assert!(
        ids.contains_key(traced["span_id"].as_str().unwrap_or_default()),
        "the log line names an exported span: {traced}"
    );
}

/// A collector that takes connections and never answers: requests are served as
/// usual, and SIGTERM still ends the process (the last flush gives up).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_never_answers_blocks_no_request_and_no_shutdown() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let collector = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((connection, _)) = listener.accept().await {
            held.push(connection);
        }
    });
    let server = NatsServer::start().await;
    let client = server.client().await;
    let logs = std::env::temp_dir().join(format!("toronto-tracing-stuck-{}", std::process::id()));
    std::fs::create_dir_all(&logs).unwrap();
    let mut planner = spawn(
        "planner",
        &server.url(),
        &endpoint,
        &logs.join("planner.log"),
        &[("OTEL_BSP_SCHEDULE_DELAY", "50")],
    )
    .await;
    let requester =
        Requester::service(client.clone(), "planner").with_timeout(Duration::from_secs(2));
    let started = std::time::Instant::now();
    for _ in 0..50 {
        requester
            .request::<_, toronto_protocol::status::Status>(
                "status",
                toronto_protocol::status::StatusRequest {},
            )
            .await
            .expect("answered while export hangs");
    }
    let served = started.elapsed();
    let exit = terminate(&mut planner).await;
    println!(
        "collector never answers: 50 status requests in {} ms, exit {} ms after SIGTERM",
        served.as_millis(),
        exit.as_millis()
    );
    collector.abort();
}
