//! `toronto up --secure`: every service as its own NATS user.

use super::*;

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
