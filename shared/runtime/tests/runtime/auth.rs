//! Verified identity: every refusal of a change request with its code and reason,
//! two keys of one principal, delegates, forged sources, the modes, and a registry
//! and replay guard shared by replicas.

use super::*;
use chrono::Utc;
use nkeys::KeyPair;
use toronto_protocol::Subjects;
use toronto_protocol::auth::{Principal, PrincipalKind, Role, Signature};
use toronto_runtime::auth::{AccessRule, AuthConfig, AuthMode, Authenticator, Signer};

const AUTH_SUBJECT: &str = "test.devops.v1.approve";
const AGENT_SOURCE: &str = "toronto://agents/security";

fn principal(id: &str, roles: &[Role], keys: &[&Signer]) -> Principal {
    Principal {
        id: id.into(),
        kind: PrincipalKind::Human,
        roles: roles.to_vec(),
        display_name: id.into(),
        revoked: false,
        keys: keys.iter().map(|k| k.public_key()).collect(),
        sources: vec![],
        chat_ids: vec![],
    }
}

async fn authenticator(client: &Client, mode: AuthMode) -> Arc<Authenticator> {
    let config = AuthConfig {
        mode,
        ..AuthConfig::default()
    };
    let auth = Authenticator::start(
        &async_nats::jetstream::new(client.clone()),
        &Subjects::default(),
        &config,
        1,
        CancellationToken::new(),
    )
    .await
    .unwrap();
    auth.protect("approve", AccessRule::Role(Role::Approver));
    Arc::new(auth)
}

/// A host whose `approve` endpoint needs the approver role and echoes the principal id.
async fn guarded_host(client: &Client, auth: Arc<Authenticator>) -> ServiceHost {
    let host = ServiceHost::start(
        client.clone(),
        spec(),
        EndpointConfig::default(),
        Metrics::new(),
        None,
    )
    .await
    .unwrap();
    host.set_auth(auth);
    host.add_endpoint("approve", AUTH_SUBJECT, |req: Request<Echo>| async move {
        let who = req
            .principal()
            .map(|p| p.id.clone())
            .unwrap_or_else(|| "nobody".into());
        Ok::<_, ErrorBody>(Echoed { text: who })
    })
    .await
    .unwrap();
    host
}

fn body(source: &str) -> Vec<u8> {
    let envelope = Envelope::builder(source, Echo::default()).build();
    encode(&envelope, Encoding::Json).unwrap()
}

/// Sends `bytes` with `headers` and returns the reply's text or (code, message).
async fn send(
    client: &Client,
    bytes: Vec<u8>,
    mut headers: HeaderMap,
) -> Result<String, (u16, String)> {
    headers.insert("Content-Type", "application/cloudevents+json");
    let reply = client
        .request_with_headers(AUTH_SUBJECT, headers, Bytes::from(bytes))
        .await
        .unwrap();
    let code = reply
        .headers
        .as_ref()
        .and_then(|h| h.get("Nats-Service-Error-Code"))
        .map(|v| v.as_str().parse::<u16>().unwrap());
    let env = decode_raw(&reply.payload, Encoding::Json).unwrap();
    match code {
        None => Ok(env.data["text"].as_str().unwrap().to_owned()),
        Some(code) => Err((code, env.data["message"].as_str().unwrap().to_owned())),
    }
}

fn signed(signer: &Signer, bytes: &[u8]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    signer.apply(&mut headers, AUTH_SUBJECT, bytes);
    headers
}

async fn signed_send(
    client: &Client,
    signer: &Signer,
    source: &str,
) -> Result<String, (u16, String)> {
    let bytes = body(source);
    let headers = signed(signer, &bytes);
    send(client, bytes, headers).await
}

fn refused(result: Result<String, (u16, String)>, code: u16, reason: &str) {
    match result {
        Err((got, message)) => {
            assert_eq!(got, code, "{message}");
            assert!(
                message.contains(reason),
                "`{message}` should say `{reason}`"
            );
        }
        Ok(who) => panic!("accepted as {who}, expected {code} {reason}"),
    }
}

#[tokio::test]
async fn every_refusal_has_its_code_and_reason() {
    let server = NatsServer::start().await;
    let client = server.client().await;
    let auth = authenticator(&client, AuthMode::Required).await;
    let registry = auth.registry().unwrap().clone();
    let _host = guarded_host(&client, auth).await;

    let (alice1, alice2) = (Signer::generate(), Signer::generate());
    let bob = Signer::generate();
    let carol = Signer::generate();
    let stranger = Signer::generate();
    let agent = Signer::generate();
    registry
        .put(&principal("alice", &[Role::Approver], &[&alice1, &alice2]))
        .await
        .unwrap();
    registry
        .put(&principal("bob", &[Role::Operator], &[&bob]))
        .await
        .unwrap();
    let mut revoked = principal("carol", &[Role::Approver], &[&carol]);
    revoked.revoked = true;
    registry.put(&revoked).await.unwrap();
    let mut security = principal("security-agent", &[Role::Approver], &[&agent]);
    security.kind = PrincipalKind::Agent;
    security.sources = vec![AGENT_SOURCE.into()];
    registry.put(&security).await.unwrap();

    // Two keys, one principal.
    assert_eq!(
        signed_send(&client, &alice1, "toronto://cli")
            .await
            .unwrap(),
        "alice"
    );
    assert_eq!(
        signed_send(&client, &alice2, "toronto://cli")
            .await
            .unwrap(),
        "alice"
    );
    assert_eq!(
        signed_send(&client, &agent, AGENT_SOURCE).await.unwrap(),
        "security-agent"
    );

    refused(
        send(&client, body("toronto://cli"), HeaderMap::new()).await,
        401,
        "not signed",
    );
    refused(
        signed_send(&client, &stranger, "toronto://cli").await,
        401,
        "unknown key",
    );
    refused(
        signed_send(&client, &carol, "toronto://cli").await,
        401,
        "`carol` is revoked",
    );
    refused(
        signed_send(&client, &bob, "toronto://cli").await,
        403,
        "does not hold the Approver role",
    );
    refused(
        signed_send(&client, &alice1, AGENT_SOURCE).await,
        403,
        "belongs to `security-agent`",
    );

    // The payload changed after signing.
    let bytes = body("toronto://cli");
    let headers = signed(&alice1, &bytes);
    let tampered = String::from_utf8(bytes.clone())
        .unwrap()
        .replace("toronto://cli", "toronto://clj")
        .into_bytes();
    refused(
        send(&client, tampered, headers.clone()).await,
        401,
        "does not match",
    );

    // The same message twice.
    assert_eq!(
        send(&client, bytes.clone(), headers.clone()).await.unwrap(),
        "alice"
    );
    refused(send(&client, bytes, headers).await, 401, "replay");

    // Signed ten minutes ago.
    let seedless = KeyPair::new_user();
    registry
        .put(&Principal {
            keys: vec![seedless.public_key()],
            ..principal("dave", &[Role::Approver], &[])
        })
        .await
        .unwrap();
    let bytes = body("toronto://cli");
    let old = Utc::now() - chrono::Duration::minutes(10);
    let signature = Signature::sign(&seedless, AUTH_SUBJECT, &bytes, None, old).unwrap();
    let mut headers = HeaderMap::new();
    for (name, value) in signature.headers() {
        headers.insert(name, value);
    }
    refused(
        send(&client, bytes, headers).await,
        401,
        "outside the 120 s window",
    );
}

#[tokio::test]
async fn a_delegate_acts_for_a_human_and_is_checked_as_the_human() {
    let server = NatsServer::start().await;
    let client = server.client().await;
    let auth = authenticator(&client, AuthMode::Required).await;
    let registry = auth.registry().unwrap().clone();
    let _host = guarded_host(&client, auth).await;
    let (alice, bob, bridge, rogue) = (
        Signer::generate(),
        Signer::generate(),
        Signer::generate(),
        Signer::generate(),
    );
    registry
        .put(&principal("alice", &[Role::Approver], &[&alice]))
        .await
        .unwrap();
    registry
        .put(&principal("bob", &[Role::Operator], &[&bob]))
        .await
        .unwrap();
    let mut service = principal("chat-bridge", &[Role::Delegate], &[&bridge]);
    service.kind = PrincipalKind::Service;
    registry.put(&service).await.unwrap();
    // A service with the approver role but no delegate right.
    registry
        .put(&principal("rogue", &[Role::Approver], &[&rogue]))
        .await
        .unwrap();

    let for_alice = bridge.on_behalf_of("alice").unwrap();
    assert_eq!(
        signed_send(&client, &for_alice, "toronto://chat")
            .await
            .unwrap(),
        "alice"
    );
    let for_bob = bridge.on_behalf_of("bob").unwrap();
    refused(
        signed_send(&client, &for_bob, "toronto://chat").await,
        403,
        "`bob` does not hold",
    );
    let for_nobody = bridge.on_behalf_of("nobody").unwrap();
    refused(
        signed_send(&client, &for_nobody, "toronto://chat").await,
        401,
        "unknown principal `nobody`",
    );
    let rogue_for_alice = rogue.on_behalf_of("alice").unwrap();
    refused(
        signed_send(&client, &rogue_for_alice, "toronto://chat").await,
        403,
        "no delegate role",
    );
    // The bridge itself holds no approver role.
    refused(
        signed_send(&client, &bridge, "toronto://chat").await,
        403,
        "`chat-bridge` does not hold",
    );
}

#[tokio::test]
async fn replicas_share_the_registry_and_the_replay_guard() {
    let server = NatsServer::start().await;
    let client = server.client().await;
    let first = authenticator(&client, AuthMode::Required).await;
    let second = authenticator(&client, AuthMode::Required).await;
    let registry = first.registry().unwrap().clone();
    let _one = guarded_host(&client, first).await;
    let _two = guarded_host(&client, second.clone()).await;

    let erin = Signer::generate();
    registry
        .put(&principal("erin", &[Role::Approver], &[&erin]))
        .await
        .unwrap();
    // The other replica learns of erin through its watch.
    for _ in 0..100 {
        if second
            .registry()
            .unwrap()
            .by_key(&erin.public_key())
            .is_some()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        second
            .registry()
            .unwrap()
            .by_key(&erin.public_key())
            .is_some()
    );

    // Whichever replica gets a message, it is taken once.
    let bytes = body("toronto://cli");
    let headers = signed(&erin, &bytes);
    let mut outcomes = Vec::new();
    for _ in 0..6 {
        outcomes.push(send(&client, bytes.clone(), headers.clone()).await);
    }
    assert_eq!(
        outcomes.iter().filter(|o| o.is_ok()).count(),
        1,
        "{outcomes:?}"
    );

    // Revoking reaches the other replica too.
    let mut revoked = principal("erin", &[Role::Approver], &[&erin]);
    revoked.revoked = true;
    registry.put(&revoked).await.unwrap();
    for _ in 0..100 {
        if second
            .registry()
            .unwrap()
            .by_id("erin")
            .is_some_and(|p| p.revoked)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..4 {
        refused(
            signed_send(&client, &erin, "toronto://cli").await,
            401,
            "revoked",
        );
    }
}

#[tokio::test]
async fn permissive_and_off_let_unsigned_requests_through_and_open_endpoints_stay_open() {
    let server = NatsServer::start().await;
    let client = server.client().await;
    for mode in [AuthMode::Permissive, AuthMode::Off] {
        let auth = authenticator(&client, mode).await;
        assert_eq!(auth.mode(), mode);
        let host = guarded_host(&client, auth).await;
        assert_eq!(
            send(&client, body("toronto://cli"), HeaderMap::new())
                .await
                .unwrap(),
            "nobody",
            "{mode:?}"
        );
        host.stop(Duration::from_secs(2)).await;
    }
    // Required, but an endpoint without a rule is open.
    let auth = authenticator(&client, AuthMode::Required).await;
    auth.protect("approve", AccessRule::Open);
    let _host = guarded_host(&client, auth).await;
    assert_eq!(
        send(&client, body("toronto://cli"), HeaderMap::new())
            .await
            .unwrap(),
        "nobody"
    );
}

#[test]
fn a_seed_file_is_written_0600_and_refused_when_others_may_read_it() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys/me.nk");
    let signer = Signer::generate();
    signer.write_new(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(
        Signer::from_file(&path).unwrap().public_key(),
        signer.public_key()
    );
    assert!(signer.write_new(&path).is_err(), "never overwrites");
    let seed = std::fs::read_to_string(&path).unwrap();
    let seed = seed.trim();
    assert!(seed.starts_with("SU"), "the file holds a user seed");
    assert!(!format!("{signer:?}").contains(seed), "Debug shows no seed");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let error = Signer::from_file(&path).unwrap_err().to_string();
    assert!(error.contains("chmod 600"), "{error}");
}

/// The tools venv's Python (`TORONTO_PYTHON_BIN`, else `.tools/venv/bin/python` of the
/// workspace), with the PyPI `nkeys` and `nats-py` packages.
fn python() -> std::path::PathBuf {
    if let Some(bin) = std::env::var_os("TORONTO_PYTHON_BIN").filter(|v| !v.is_empty()) {
        return bin.into();
    }
    let local =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.tools/venv/bin/python");
    assert!(
        local.is_file(),
        "no Python with nkeys and nats-py: run scripts/install-tools or set TORONTO_PYTHON_BIN"
    );
    local
}

#[tokio::test]
async fn a_python_peer_signs_with_pypi_nkeys_and_is_accepted_and_a_bad_signature_is_refused() {
    let server = NatsServer::start().await;
    let client = server.client().await;
    let auth = authenticator(&client, AuthMode::Required).await;
    let registry = auth.registry().unwrap().clone();
    let _host = guarded_host(&client, auth).await;
    let dir = tempfile::tempdir().unwrap();
    let seed_file = dir.path().join("peer.nk");
    let peer = Signer::generate();
    peer.write_new(&seed_file).unwrap();
    let seed = std::fs::read_to_string(&seed_file).unwrap();
    let mut agent = principal("python-peer", &[Role::Approver], &[&peer]);
    agent.kind = PrincipalKind::Agent;
    registry.put(&agent).await.unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/runtime/peer.py");
    let url = server.url();
    let run = async |extra: &[&str]| {
        let output = tokio::process::Command::new(python())
            .arg(&script)
            .arg(&url)
            .arg(AUTH_SUBJECT)
            .args(extra)
            .env("PEER_SEED", seed.trim())
            .output()
            .await
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&output.stdout).unwrap()
    };
    let good = run(&[]).await;
    assert_eq!(good["code"], 0, "{good}");
    assert_eq!(good["data"]["text"], "python-peer");
    let bad = run(&["--bad-signature"]).await;
    assert_eq!(bad["code"], 401, "{bad}");
    assert!(
        bad["data"]["message"]
            .as_str()
            .unwrap()
            .contains("does not match"),
        "{bad}"
    );
}
