//! Fuzz targets: every decoder that reads input from outside the agent (envelopes in
//! JSON and MessagePack, the chat and CLI command grammar, OpenSLO files, and the
//! Alertmanager and PagerDuty webhooks), each a function that must return, never
//! panic, whatever bytes it is given.
//!
//! `src/bin/fuzz.rs` mutates the seeds and the corpus for a bounded time and prints
//! the executions and crashes of each target; a crashing input is written to
//! `corpus/<target>/`, and `tests/replay.rs` replays that corpus in every test run.
#![forbid(unsafe_code)]

use std::path::PathBuf;

use toronto_protocol::Encoding;

/// A fuzz target: a name, the function, and valid inputs to start mutating from.
pub struct Target {
    /// Its name (and its corpus folder).
    pub name: &'static str,
    /// Reads the input; must not panic.
    pub run: fn(&[u8]),
    /// Valid inputs.
    pub seeds: &'static [&'static str],
}

fn text(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(bytes)
}

fn envelope_json(bytes: &[u8]) {
    let _ = toronto_protocol::decode_raw(bytes, Encoding::Json);
    let _ = toronto_protocol::decode::<toronto_protocol::tasks::DeployTask>(bytes, Encoding::Json);
}

fn envelope_msgpack(bytes: &[u8]) {
    let _ = toronto_protocol::decode_raw(bytes, Encoding::MessagePack);
    let _ = toronto_protocol::decode::<toronto_protocol::incidents::IncidentEvent>(
        bytes,
        Encoding::MessagePack,
    );
    // A JSON seed's tree, as MessagePack: reach the MessagePack decoder with deep and
    // odd structure, not only with bytes that fail at the first byte.
    if let Ok(value) = toronto_protocol::codec::from_json_bounded::<serde_json::Value>(bytes)
        && let Some(packed) = rmp_like(value)
    {
        let _ = toronto_protocol::decode_raw(&packed, Encoding::MessagePack);
    }
}

/// The MessagePack bytes of a JSON value (through the codec's own encoder).
fn rmp_like(value: serde_json::Value) -> Option<Vec<u8>> {
    let envelope: toronto_protocol::RawEnvelope = serde_json::from_value(value).ok()?;
    toronto_protocol::encode(&envelope, Encoding::MessagePack).ok()
}

fn chat_grammar(bytes: &[u8]) {
    let actor = toronto_commands::Actor {
        id: "fuzz".into(),
        role: toronto_commands::Role::Admin,
        source: "toronto://cli/fuzz".into(),
    };
    if let Ok(command) = toronto_commands::parse(&text(bytes)) {
        if let Some(request) = command.request(&actor) {
            let _ = request.envelope(&actor.source);
        }
        let _ = toronto_commands::render(&command, &serde_json::Value::Null);
    }
}

fn openslo(bytes: &[u8]) {
    let _ = toronto_monitor::slo::parse(&text(bytes));
}

fn alertmanager(bytes: &[u8]) {
    let _ = toronto_incident_commander::intake::webhook_alerts(bytes);
    let _ = toronto_incident_commander::intake::postable_alerts(bytes, chrono::Utc::now());
}

fn pagerduty(bytes: &[u8]) {
    let _ = toronto_incident_commander::intake::pagerduty_event(
        bytes,
        &["R0UT1NGK3Y".to_owned()],
        "production",
        chrono::Utc::now(),
    );
}

/// Every target.
pub const TARGETS: &[Target] = &[
    Target {
        name: "envelope-json",
        run: envelope_json,
        seeds: &[
            r#"{"specversion":"1.0","id":"0193a4f0-8c1e-7cc3-9a0e-2b7f61c3d9a1","source":"toronto://test","type":"ai.toronto.devops.task.deploy.v1","datacontenttype":"application/json","data":{"service":"shop","version":"1.2.0","environment":"staging","strategy":{"kind":"canary","steps":[{"weight":10}]}}}"#,
            r#"{"specversion":"1.0","id":"x","source":"s","type":"t","data":[[[[{"a":[1,2,{"b":null}]}]]]]}"#,
        ],
    },
    Target {
        name: "envelope-msgpack",
        run: envelope_msgpack,
        seeds: &[
            r#"{"specversion":"1.0","id":"1","source":"toronto://test","type":"ai.toronto.devops.incident.event.v1","data":{"id":"0193a4f0-8c1e-7cc3-9a0e-2b7f61c3d9a2","key":"k","title":"t","service":"shop","environment":"production","state":"triggered","severity":"sev2","alerts_firing":1,"alerts_total":1,"change":"opened","at":"2026-11-26T10:00:00Z"}}"#,
        ],
    },
    Target {
        name: "chat-grammar",
        run: chat_grammar,
        seeds: &[
            "deploy shop-api 2.4.1 to production --strategy canary --steps 10,25,50 --commit 9f3a1c0 --committed-at 2026-11-26T08:30:00Z",
            "rollback shop in production --to 1.1.0",
            "silence service=shop-api,env=~stag.* for 2h load test",
            "approve 0193a4f0-8c1e-7cc3-9a0e-2b7f61c3d9a1",
            "note 0193a4f0-8c1e-7cc3-9a0e-2b7f61c3d9a2 \"quoted text\" and more",
            "dora shop",
        ],
    },
    Target {
        name: "openslo",
        run: openslo,
        seeds: &[
            r#"apiVersion: openslo/v1
kind: SLO
metadata:
  name: shop-api-availability
  labels:
    environment: production
spec:
  service: shop-api
  budgetingMethod: Occurrences
  timeWindow:
    - duration: 30d
      isRolling: true
  objectives:
    - target: 0.999
  indicator:
    spec:
      ratioMetric:
        bad:   { metricSource: { type: Prometheus, spec: { query: 'sum(rate(http_requests_total{code=~"5.."}[{{.window}}]))' } } }
        total: { metricSource: { type: Prometheus, spec: { query: 'sum(rate(http_requests_total[{{.window}}]))' } } }
"#,
            r#"apiVersion: openslo/v1
kind: SLO
metadata:
  name: shop-bus
spec:
  service: shop
  budgetingMethod: Occurrences
  timeWindow:
    - duration: 28d
      isRolling: true
  objectives:
    - target: 0.99
  indicator:
    spec:
      ratioMetric:
        bad: { metricSource: { type: Bus, spec: { query: 'http_errors{service="shop",environment="production"}' } } }
        total: { metricSource: { type: Bus, spec: { query: 'http_requests{service="shop",environment="production"}' } } }
"#,
        ],
    },
    Target {
        name: "alertmanager",
        run: alertmanager,
        seeds: &[
            r#"{"version":"4","groupKey":"{}:{}","truncatedAlerts":0,"status":"firing","receiver":"toronto","groupLabels":{},"commonLabels":{"alertname":"HighErrors"},"commonAnnotations":{},"externalURL":"http://am","alerts":[{"status":"firing","labels":{"alertname":"HighErrors","service":"shop","severity":"critical"},"annotations":{"summary":"errors"},"startsAt":"2026-11-26T10:00:00Z","endsAt":"0001-01-01T00:00:00Z","generatorURL":"http://prom","fingerprint":"abc"}]}"#,
            r#"[{"labels":{"alertname":"Down","service":"shop"},"annotations":{},"startsAt":"2026-11-26T10:00:00Z"}]"#,
        ],
    },
    Target {
        name: "pagerduty",
        run: pagerduty,
        seeds: &[
            r#"{"routing_key":"R0UT1NGK3Y","event_action":"trigger","dedup_key":"shop-errors","payload":{"summary":"errors","source":"shop","severity":"critical","component":"shop","custom_details":{"env":"production"}}}"#,
            r#"{"routing_key":"R0UT1NGK3Y","event_action":"acknowledge","dedup_key":"shop-errors"}"#,
        ],
    },
];

/// The corpus folder of a target: inputs that once crashed it, replayed by the tests.
pub fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target)
}

/// Runs `target` on `input`; the panic message when it panicked.
pub fn check(target: &Target, input: &[u8]) -> Result<(), String> {
    std::panic::catch_unwind(|| (target.run)(input)).map_err(|e| {
        e.downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "panic".into())
    })
}
