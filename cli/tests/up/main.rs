//! The `toronto` binary as a user runs it: `toronto up` with its own nats-server or
//! against TORONTO_NATS_URL, `status`, `ping`, `request`, and SIGTERM.

mod restart;

use std::process::{Output, Stdio};
use std::time::Duration;

use tokio::process::{Child, Command};
use toronto_testkit::{NatsServer, nats_server_bin};

const TORONTO: &str = env!("CARGO_BIN_EXE_toronto");

/// The tests' own config home (`XDG_CONFIG_HOME`): the operator's key that `toronto up`
/// makes the first admin and the CLI signs with, made once for the whole binary.
fn config_home() -> &'static std::path::Path {
    static HOME: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    HOME.get_or_init(|| {
        let home = tempfile::tempdir().unwrap();
        let key = home.path().join("toronto").join("identity.nk");
        toronto_runtime::auth::Signer::generate()
            .write_new(&key)
            .unwrap();
        home
    })
    .path()
}

/// `toronto` with the tests' config home.
fn tor() -> Command {
    let mut command = Command::new(TORONTO);
    command.env("XDG_CONFIG_HOME", config_home());
    command
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn toronto(url: &str, args: &[&str]) -> Output {
    tor()
        .args(args)
        .env("TORONTO_NATS_URL", url)
        .output()
        .await
        .unwrap()
}

async fn wait_until_all_answer(url: &str) -> String {
    for _ in 0..100 {
        let out = toronto(url, &["status"]).await;
        if out.status.success() {
            return String::from_utf8(out.stdout).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("the services never all answered status");
}

async fn sigterm(child: &mut Child) -> std::process::ExitStatus {
    let pid = child.id().unwrap().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .unwrap()
            .success()
    );
    tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("toronto up exits after SIGTERM")
        .unwrap()
}

#[tokio::test]
async fn up_starts_its_own_nats_server_and_stops_cleanly_on_sigterm() {
    let port = free_port();
    let data = tempfile::tempdir().unwrap();
    let mut up = tor()
        .args([
            "up",
            "--nats-port",
            &port.to_string(),
            "--http-port-base",
            "0",
            "--data-dir",
        ])
        .arg(data.path())
        .env_remove("TORONTO_NATS_URL")
        .env("TORONTO_NATS_SERVER_BIN", nats_server_bin().unwrap())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let url = format!("nats://127.0.0.1:{port}");
    let status = wait_until_all_answer(&url).await;
    for name in [
        "toronto-planner",
        "toronto-deployer",
        "toronto-monitor",
        "toronto-incident-commander",
        "toronto-chat-bridge",
    ] {
        assert!(status.contains(name), "{status}");
    }
    // The console joins the bus a moment after the five services answer `status`.
    let mut pings = String::new();
    for _ in 0..40 {
        let ping = toronto(&url, &["ping"]).await;
        assert!(ping.status.success());
        pings = String::from_utf8(ping.stdout).unwrap();
        if pings.lines().count() >= 6 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        pings.lines().count(),
        6,
        "five services and the console: {pings}"
    );
    assert!(pings.contains("toronto-console"), "{pings}");
    assert!(
        data.path().join("nats/jetstream").is_dir(),
        "JetStream data kept under --data-dir"
    );

    let exit = sigterm(&mut up).await;
    assert_eq!(exit.code(), Some(0));
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err(),
        "the nats-server it started is stopped with it"
    );
}

#[tokio::test]
async fn up_uses_an_existing_server_and_the_cli_drives_it_from_outside() {
    let server = NatsServer::start().await;
    let data = tempfile::tempdir().unwrap();
    let mut up = tor()
        .args(["up", "--http-port-base", "0"])
        .arg("--data-dir")
        .arg(data.path())
        .env("TORONTO_NATS_URL", server.url())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_until_all_answer(&server.url()).await;

    let ok = toronto(
        &server.url(),
        &[
            "request",
            "toronto.devops.v1.incident.status",
            "--type",
            "ai.toronto.devops.status.request.v1",
            "--msgpack",
        ],
    )
    .await;
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let reply: serde_json::Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!(reply["data"]["service"], "toronto-incident-commander");

    let refused = toronto(
        &server.url(),
        &[
            "request",
            "toronto.devops.v1.planner.status",
            "--type",
            "ai.toronto.devops.status.request.v9",
        ],
    )
    .await;
    assert!(!refused.status.success());
    let reply: serde_json::Value = serde_json::from_slice(&refused.stdout).unwrap();
    assert_eq!(reply["data"]["code"], "unsupported_version");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("422"));

    // A message nobody can answer is parked, listed and replayed from the CLI.
    let client = server.client().await;
    client
        .publish(
            "toronto.devops.v1.deployer.status",
            "not an envelope".into(),
        )
        .await
        .unwrap();
    client.flush().await.unwrap();
    let mut listed = String::new();
    for _ in 0..50 {
        let out = toronto(&server.url(), &["dlq", "list", "--payload"]).await;
        assert!(out.status.success());
        listed = String::from_utf8(out.stdout).unwrap();
        if listed.contains("malformed") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        listed.contains("toronto.devops.v1.dlq.deployer"),
        "{listed}"
    );
    assert!(listed.contains("not an envelope"), "{listed}");
    let sequence = listed.split_whitespace().next().unwrap().to_owned();
    let replayed = toronto(&server.url(), &["dlq", "replay", &sequence]).await;
    assert!(
        replayed.status.success(),
        "{}",
        String::from_utf8_lossy(&replayed.stderr)
    );
    assert!(
        String::from_utf8_lossy(&replayed.stdout).contains("toronto.devops.v1.deployer.status")
    );

    let exit = sigterm(&mut up).await;
    assert_eq!(exit.code(), Some(0));
    let mut stderr = String::new();
    use tokio::io::AsyncReadExt;
    up.stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .await
        .unwrap();
    assert!(stderr.contains("using NATS at"), "{stderr}");
    assert!(
        !stderr.contains("nats-server"),
        "no server of its own: {stderr}"
    );
}

#[tokio::test]
async fn up_demo_answers_status_and_ships_a_canary_past_its_demo_gates() {
    let server = NatsServer::start().await;
    let data = tempfile::tempdir().unwrap();
    let mut up = tor()
        .args(["up", "--demo", "--http-port-base", "0"])
        .arg("--data-dir")
        .arg(data.path())
        .env("TORONTO_NATS_URL", server.url())
        .env("TORONTO_DEPLOYER_STEP_PAUSE_SECONDS", "2")
        .env("TORONTO_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let status = wait_until_all_answer(&server.url()).await;
    assert!(status.contains("toronto-deployer"), "{status}");
    let request = |subject: &'static str, ty: &'static str, data: String| {
        let url = server.url();
        async move {
            let out = toronto(
                &url,
                &["request", subject, "--type", ty, "--data", data.as_str()],
            )
            .await;
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["data"].clone()
        }
    };
    // The demo service runs, labelled a simulation.
    let mut sim = serde_json::Value::Null;
    for _ in 0..50 {
        let out = toronto(
            &server.url(),
            &[
                "request",
                "toronto.devops.v1.deployer.sim.get",
                "--type",
                "ai.toronto.devops.rollout.ref.v1",
                "--data",
                r#"{"service":"shop","environment":"staging"}"#,
            ],
        )
        .await;
        if out.status.success() {
            sim = serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["data"].clone();
            if sim["traffic"]["1.0.0"] == 100 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(sim["simulated"], true, "{sim}");
    assert_eq!(sim["traffic"]["1.0.0"], 100, "{sim}");
    // A deploy passes the demo security and QA agents and its canary ships.
    let accepted = request(
        "toronto.devops.v1.planner.submit",
        "ai.toronto.devops.task.deploy.v1",
        r#"{"service":"shop","version":"1.1.0","environment":"staging","strategy":{"kind":"canary","steps":[{"weight":50},{"weight":100}]}}"#.into(),
    )
    .await;
    let plan_id = accepted["plan_id"].as_str().unwrap().to_owned();
    let mut plan = serde_json::Value::Null;
    for _ in 0..100 {
        plan = request(
            "toronto.devops.v1.planner.plan.get",
            "ai.toronto.devops.planner.plan.get.v1",
            format!(r#"{{"plan_id":"{plan_id}"}}"#),
        )
        .await;
        if plan["state"] == "completed" || plan["state"] == "failed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(plan["state"], "completed", "{plan:#}");
    let security = plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "security-scan")
        .unwrap();
    assert!(
        security["reason"].as_str().unwrap().contains("DEMO"),
        "{security}"
    );
    // A faulty version, followed from the terminal: progress, then the rollback, exit 1.
    request(
        "toronto.devops.v1.deployer.sim.fault",
        "ai.toronto.devops.sim.fault.v1",
        r#"{"service":"shop","environment":"staging","version":"1.2.0","error_rate":0.5}"#.into(),
    )
    .await;
    let followed = toronto(
        &server.url(),
        &[
            "run",
            "--follow",
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
    let stdout = String::from_utf8_lossy(&followed.stdout);
    let stderr = String::from_utf8_lossy(&followed.stderr);
    assert!(!followed.status.success(), "{stdout}");
    assert!(stdout.contains("rollout.progressed"), "{stdout}");
    assert!(stdout.contains("rollout.rolled_back"), "{stdout}");
    assert!(stderr.contains("aborted and rolled back"), "{stderr}");
    let exit = sigterm(&mut up).await;
    assert!(exit.success());
}

#[tokio::test]
async fn up_secure_runs_every_service_as_its_own_nats_user() {
    let port = free_port();
    let data = tempfile::tempdir().unwrap();
    let mut up = tor()
        .args([
            "up",
            "--secure",
            "--nats-port",
            &port.to_string(),
            "--http-port-base",
            "0",
            "--data-dir",
        ])
        .arg(data.path())
        .env_remove("TORONTO_NATS_URL")
        .env("TORONTO_NATS_SERVER_BIN", nats_server_bin().unwrap())
        .env("TORONTO_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(data.path().join("up.err")).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let url = format!("nats://127.0.0.1:{port}");
    // Without credentials the server refuses the CLI.
    let env_file = data.path().join("admin.env");
    for _ in 0..100 {
        if env_file.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let admin = std::fs::read_to_string(&env_file).expect("admin.env written");
    let password = admin
        .lines()
        .find_map(|l| l.strip_prefix("TORONTO_NATS_PASSWORD="))
        .unwrap()
        .to_owned();
    let as_admin = |args: &'static [&'static str]| {
        let url = url.clone();
        let password = password.clone();
        async move {
            tor()
                .args(args)
                .env("TORONTO_NATS_URL", url)
                .env("TORONTO_NATS_USER", "admin")
                .env("TORONTO_NATS_PASSWORD", password)
                .output()
                .await
                .unwrap()
        }
    };
    let mut status = None;
    for _ in 0..100 {
        let out = as_admin(&["status"]).await;
        if out.status.success() {
            status = Some(String::from_utf8(out.stdout).unwrap());
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let status = status.expect("every service answers status under its own user");
    assert!(status.contains("toronto-chat-bridge"), "{status}");
    // Protected endpoints work under the services' own users: the planner reads and
    // writes the identity registry, and checks the signature in the replay guard.
    let peer = toronto_runtime::auth::Signer::generate().public_key();
    let added = tor()
        .args([
            "identity", "add", "peer-x", "--role", "operator", "--key", &peer,
        ])
        .env("TORONTO_NATS_URL", &url)
        .env("TORONTO_NATS_USER", "admin")
        .env("TORONTO_NATS_PASSWORD", &password)
        .output()
        .await
        .unwrap();
    assert!(
        added.status.success(),
        "a signed admin request is verified under --secure: {}",
        String::from_utf8_lossy(&added.stderr)
    );
    let listed = as_admin(&["identity", "list"]).await;
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains("peer-x"),
        "{}",
        String::from_utf8_lossy(&listed.stdout)
    );
    let peers = std::fs::read_to_string(data.path().join("peers.env")).unwrap();
    assert!(peers.contains("TORONTO_NATS_SECURITY_PASSWORD="), "{peers}");
    let anonymous = toronto(&url, &["status"]).await;
    assert!(
        !anonymous.status.success(),
        "the server refuses a client without credentials"
    );
    let conf = std::fs::read_to_string(data.path().join("nats-users.conf")).unwrap();
    assert!(
        !conf.contains("$TORONTO_NATS_"),
        "every password was filled in"
    );
    // The console runs as its own user, and that user may do all the console does:
    // every page renders without an error, and the server saw no permission violation.
    let err = std::fs::read_to_string(data.path().join("up.err")).unwrap();
    let console = err
        .split("web console at ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("the console's URL is printed: {err}"))
        .trim_end_matches('/')
        .to_owned();
    let http = toronto_runtime::tls::http_client().build().unwrap();
    for page in [
        "/readyz",
        "/",
        "/rollouts",
        "/plans",
        "/incidents",
        "/slos",
        "/dora",
    ] {
        let response = http.get(format!("{console}{page}")).send().await.unwrap();
        assert_eq!(response.status(), 200, "{page}");
        let body = response.text().await.unwrap();
        assert!(!body.contains("class=\"error\""), "{page}: {body}");
    }
    let exit = sigterm(&mut up).await;
    assert_eq!(exit.code(), Some(0));
    let log = std::fs::read_to_string(data.path().join("nats/nats-server.log")).unwrap();
    let violations: Vec<&str> = log.lines().filter(|l| l.contains("Violation")).collect();
    assert!(violations.is_empty(), "{violations:#?}");
}

#[tokio::test]
async fn demo_incident_tells_the_whole_story_from_a_bad_change_to_a_postmortem() {
    let server = NatsServer::start().await;
    let client = server.client().await;
    let mut bus = client
        .subscribe("toronto.devops.v1.events.>")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let data = tempfile::tempdir().unwrap();
    let mut up = tor()
        .args(["up", "--demo", "--http-port-base", "0"])
        .arg("--data-dir")
        .arg(data.path())
        .env("TORONTO_NATS_URL", server.url())
        .env("TORONTO_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_until_all_answer(&server.url()).await;
    tokio::time::sleep(Duration::from_secs(3)).await; // healthy traffic for the SLOs
    let dir = tempfile::tempdir().unwrap();
    let story = tor()
        .args(["demo", "incident", "--postmortem-dir"])
        .arg(dir.path())
        .arg("--identities-dir")
        .arg(data.path().join("identities"))
        .env("TORONTO_NATS_URL", server.url())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&story.stdout);
    assert!(
        story.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&story.stderr)
    );
    println!(
        "demo incident: the whole story (up --demo included) took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    for step in [
        "1. the change is in production",
        "2. the SLO burns",
        "3. the alert fires",
        "4. incident",
        "5. user:",
        "6. the playbook rolled the change back",
        "7. the monitor confirms recovery",
        "8. incident",
        "9. the postmortem is written",
        "SLO time compressed 360x",
    ] {
        assert!(stdout.contains(step), "{step}: {stdout}");
    }
    let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(files.len(), 1, "one postmortem");
    // The events, in order: exactly one incident, one rollback, one postmortem.
    let mut seen: Vec<(String, serde_json::Value)> = Vec::new();
    use futures::StreamExt;
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(500), bus.next()).await {
        let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap_or_default();
        seen.push((m.subject.to_string(), v));
    }
    let position = |name: &str, pick: &dyn Fn(&serde_json::Value) -> bool| {
        seen.iter()
            .position(|(s, v)| s.ends_with(name) && pick(&v["data"]))
            .unwrap_or_else(|| panic!("no {name}"))
    };
    let prod = |d: &serde_json::Value| {
        d["environment"] == "production" || d["labels"]["environment"] == "production"
    };
    let bad = position(".rollout.succeeded", &|d| {
        prod(d) && d["version"] == "1.3.0"
    });
    let firing = position(".alert.firing", &prod);
    let opened = position(".incident.opened", &prod);
    let paged = position(".page.sent", &|_| true);
    let rollback = position(".rollout.rolled_back", &|d| {
        prod(d) && d["is_rollback"] == true
    });
    let resolved = position(".incident.resolved", &prod);
    let closed = position(".incident.closed", &prod);
    assert!(
        bad < firing && firing < opened && opened < paged && paged < rollback,
        "{bad} {firing} {opened} {paged} {rollback}"
    );
    assert!(
        rollback < resolved && resolved < closed,
        "{rollback} {resolved} {closed}: {:?}",
        seen.iter()
            .map(|(s, v)| format!("{s} {}", v["data"]["environment"]))
            .collect::<Vec<_>>()
    );
    let count = |name: &str| seen.iter().filter(|(s, _)| s.ends_with(name)).count();
    assert_eq!(count(".incident.opened"), 1);
    assert_eq!(count(".incident.closed"), 1);
    assert_eq!(
        seen.iter()
            .filter(|(s, v)| s.ends_with(".rollout.started") && v["data"]["is_rollback"] == true)
            .count(),
        1,
        "one rollback"
    );
    // DORA, asked as a user would: the bad change is one failed change, shown by its
    // rollback and by its incident, with a time to restore.
    let dora = tor()
        .args(["run", "dora", "shop", "--output", "json"])
        .env("TORONTO_NATS_URL", server.url())
        .output()
        .await
        .unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&dora.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&dora.stdout)));
    let report = &doc["data"];
    assert_eq!(report["failed_changes"], 1, "{report}");
    assert_eq!(report["failures_by_cause"]["rolled_back"], 1, "{report}");
    assert_eq!(report["failures_by_cause"]["incident"], 1, "{report}");
    assert!(
        report["time_to_restore_median_seconds"].is_number(),
        "{report}"
    );
    let exit = sigterm(&mut up).await;
    assert!(exit.success());
}
