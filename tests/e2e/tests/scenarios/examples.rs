//! `examples/`: every file loads through the parser the service uses, and the Python peer
//! agent signs a deploy the real planner accepts and answers the planner's security gate.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use toronto_protocol::auth::{PrincipalKind, Role};
use toronto_protocol::tasks::{PlanState, StepState};

use crate::planner::{planner, step};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(examples().join(rel)).unwrap_or_else(|e| panic!("examples/{rel}: {e}"))
}

/// The files of `examples/<dir>`, sorted.
fn files(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(examples().join(dir))
        .unwrap_or_else(|e| panic!("examples/{dir}: {e}"))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

#[test]
fn every_example_loads_through_the_services_parsers() {
    // OpenSLO: each file alone, and the directory as TORONTO_MONITOR_SLO_DIR loads it.
    let mut kinds = Vec::new();
    for file in files("slo") {
        let text = std::fs::read_to_string(&file).unwrap();
        let slo = toronto_monitor::slo::parse(&text)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert_eq!(
            slo.environment.as_deref(),
            Some("production"),
            "{}",
            file.display()
        );
        kinds.push(if text.contains("latencyMetric") {
            "latency"
        } else {
            "availability"
        });
    }
    kinds.sort();
    assert_eq!(kinds, ["availability", "latency"]);
    let loaded = toronto_monitor::load_slo_dir(&examples().join("slo")).unwrap();
    assert_eq!(loaded.len(), 2);

    // The incident policy, as TORONTO_INCIDENT_POLICY_FILE loads it.
    let policy =
        toronto_incident_commander::settings::Policy::from_yaml(&read("incidents/policy.yaml"))
            .unwrap_or_else(|e| panic!("examples/incidents/policy.yaml: {e}"));
    assert_eq!(policy.schedules.len(), 2);
    assert!(
        policy
            .escalation_policies
            .iter()
            .all(|p| !p.levels.is_empty())
    );
    assert!(policy.playbooks.len() >= 3);
    // alice covers bob's week: the override wins over the rotation.
    let christmas = "2026-12-24T12:00:00Z".parse().unwrap();
    assert_eq!(
        policy.schedules[0].on_call(christmas).as_deref(),
        Some("alice")
    );
    // Toronto's Monday 09:00 is 14:00 UTC in winter and 13:00 UTC in summer.
    let secondary = &policy.schedules[1];
    let at = |t: &str| secondary.on_call(t.parse().unwrap());
    assert_ne!(at("2026-07-06T12:59:00Z"), at("2026-07-06T13:01:00Z"));
    assert_ne!(at("2026-01-12T13:59:00Z"), at("2026-01-12T14:01:00Z"));

    // The chat bridge's variables, as its settings table reads them.
    let vars: HashMap<String, String> = read("chat/chat.env")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("not KEY=VALUE: {l}"));
            (k.to_owned(), v.to_owned())
        })
        .collect();
    let chat = toronto_chat_bridge::Settings::from_vars(&vars)
        .unwrap_or_else(|e| panic!("examples/chat/chat.env: {e}"));
    assert_eq!(chat.webhooks.len(), 2);
    assert_eq!(chat.routes.len(), 2);

    // The Python peer compiles (it runs in the next test).
    let out = std::process::Command::new(python())
        .args(["-m", "py_compile"])
        .arg(examples().join("peer-agent/security_agent.py"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn python() -> PathBuf {
    if let Some(bin) = std::env::var_os("TORONTO_PYTHON_BIN").filter(|v| !v.is_empty()) {
        return bin.into();
    }
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.tools/venv/bin/python");
    assert!(
        local.is_file(),
        "no Python with nkeys and nats-py: run scripts/install-tools --test or set TORONTO_PYTHON_BIN"
    );
    local
}

#[tokio::test]
async fn the_python_peer_agent_signs_a_deploy_and_answers_the_security_gate() {
    let p = planner().await;
    // The agent's key, registered as docs/peers.md says: an agent with the operator role
    // that alone may speak as toronto://agents/security.
    let (signer, mut record) = toronto_testkit::principal("security-agent", &[Role::Operator]);
    record.kind = PrincipalKind::Agent;
    record.sources = vec!["toronto://agents/security".into()];
    toronto_testkit::put_principal(&p.client, &record).await;
    let dir = tempfile::tempdir().unwrap();
    let seed = dir.path().join("security.nk");
    signer.write_new(&seed).unwrap();
    let script = examples().join("peer-agent/security_agent.py");
    let agent = |args: &[&str]| {
        let mut cmd = tokio::process::Command::new(python());
        cmd.arg(&script)
            .args(args)
            .env("TORONTO_NATS_URL", p.server.url())
            .env("TORONTO_IDENTITY_FILE", &seed)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    };

    // It answers the security gate...
    let mut server = agent(&["serve", "--once"]).spawn().unwrap();
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    let ready = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("the agent subscribes")
        .unwrap();
    assert_eq!(ready.as_deref(), Some("ready"));

    // ...of the deploy it hands the planner itself.
    let out = agent(&["deploy", "shop-api", "2.4.1", "staging"])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reply["code"], 0, "{reply}");
    let plan_id = reply["data"]["plan_id"].as_str().unwrap().parse().unwrap();

    let status = tokio::time::timeout(Duration::from_secs(20), server.wait())
        .await
        .expect("the agent answered one scan")
        .unwrap();
    assert!(status.success());
    // No QA agent runs here: the plan fails at its QA gate, after the security gate
    // passed on the Python agent's signed verdict.
    let plan = p.wait_for_state(plan_id, PlanState::Failed).await;
    let security = step(&plan, "security-scan");
    assert_eq!(security.state, StepState::Succeeded, "{security:?}");
    assert!(
        security.reason.as_deref().is_some_and(
            |r| r.contains("no known vulnerabilities in registry.example.com/shop-api:2.4.1")
        ),
        "{security:?}"
    );
    p.stop().await;
}
