//! The `toronto` binary as a user runs it: `toronto up` with its own nats-server or
//! against TORONTO_NATS_URL, `status`, `ping`, `request`, and SIGTERM.

mod demo;
mod restart;
mod secure;

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
