//! TLS to NATS from `TORONTO_NATS_TLS_*` variables, against a real nats-server with a
//! `tls {}` block; the CA, server and client certificates are made here with rcgen.

use super::*;

/// A CA with a server certificate for 127.0.0.1 and a client certificate, as PEM files.
struct Pki {
    dir: tempfile::TempDir,
    ca: String,
    server_cert: String,
    server_key: String,
    client_cert: String,
    client_key: String,
}

impl Pki {
    fn new() -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: String| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path.to_str().unwrap().to_owned()
        };
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let server_key = KeyPair::generate().unwrap();
        let server_cert = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
            .unwrap()
            .signed_by(&server_key, &ca)
            .unwrap();
        let client_key = KeyPair::generate().unwrap();
        let client_cert = CertificateParams::new(vec!["toronto-test".into()])
            .unwrap()
            .signed_by(&client_key, &ca)
            .unwrap();
        Pki {
            ca: write("ca.pem", ca.pem()),
            server_cert: write("server.pem", server_cert.pem()),
            server_key: write("server-key.pem", server_key.serialize_pem()),
            client_cert: write("client.pem", client_cert.pem()),
            client_key: write("client-key.pem", client_key.serialize_pem()),
            dir,
        }
    }

    /// The server's `tls {}` block; `verify` asks every client for a certificate.
    fn server_block(&self, verify: bool) -> String {
        use std::path::Path;
        toronto_testkit::tls_config(
            Path::new(&self.server_cert),
            Path::new(&self.server_key),
            Path::new(&self.ca),
            verify,
        )
    }
}

fn config_from(pairs: &[(&str, String)]) -> Config {
    let vars: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    Config::from_vars(&vars).expect("valid configuration")
}

#[tokio::test]
async fn a_service_connects_and_answers_over_tls() {
    let pki = Pki::new();
    let server = NatsServer::start_with_config(&pki.server_block(false)).await;
    let mut config = config_from(&[
        ("TORONTO_NATS_URL", server.tls_url()),
        ("TORONTO_NATS_TLS_CA_FILE", pki.ca.clone()),
    ]);
    config.http.addr = "127.0.0.1:0".into();
    let shutdown = CancellationToken::new();
    let rt = ServiceRuntime::start(
        ServiceKind::Planner,
        "0.0.1",
        config.clone(),
        shutdown.clone(),
    )
    .await
    .expect("the service starts over TLS");
    let status_subject = rt.subjects.status(ServiceKind::Planner);
    let running = tokio::spawn(rt.run_until_shutdown());

    let metrics = Metrics::new();
    let client =
        toronto_runtime::connect::connect(&config.nats, "toronto-test", &metrics, &shutdown)
            .await
            .expect("a client trusting the CA connects");
    let status: Status = Requester::new(client, status_subject)
        .with_timeout(Duration::from_secs(5))
        .request("", StatusRequest::default())
        .await
        .expect("the service answers over TLS");
    assert_eq!(status.service, "toronto-planner");
    assert!(status.nats_connected);

    // A plain-text client is refused by a server that requires TLS.
    let plain = config_from(&[("TORONTO_NATS_URL", server.url())]);
    assert!(
        toronto_runtime::connect::probe(&plain.nats).await.is_err(),
        "a client without TLS is refused"
    );
    shutdown.cancel();
    running.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_client_trusting_another_ca_is_refused_with_the_reason() {
    let pki = Pki::new();
    let other = Pki::new();
    let server = NatsServer::start_with_config(&pki.server_block(false)).await;
    let config = config_from(&[
        ("TORONTO_NATS_URL", server.tls_url()),
        ("TORONTO_NATS_TLS_CA_FILE", other.ca.clone()),
    ]);
    let err = toronto_runtime::connect::probe(&config.nats)
        .await
        .expect_err("a server certificate from an unknown CA is refused");
    // e.g. "cannot connect to NATS at tls://127.0.0.1:…: IO error: invalid peer
    // certificate: BadSignature"
    let text = err.to_string();
    assert!(
        text.contains("invalid peer certificate") && text.contains(&server.tls_url()),
        "the error names the server and the TLS failure: {text}"
    );
    // The reconnecting client never comes up either.
    let shutdown = CancellationToken::new();
    let metrics = Metrics::new();
    let attempt =
        toronto_runtime::connect::connect(&config.nats, "toronto-test", &metrics, &shutdown);
    assert!(
        tokio::time::timeout(Duration::from_secs(2), attempt)
            .await
            .is_err(),
        "no connection to a server the CA did not sign"
    );
    // The right CA connects.
    let good = config_from(&[
        ("TORONTO_NATS_URL", server.tls_url()),
        ("TORONTO_NATS_TLS_CA_FILE", pki.ca.clone()),
    ]);
    toronto_runtime::connect::probe(&good.nats)
        .await
        .expect("the server's own CA is trusted");
}

#[tokio::test]
async fn with_verify_the_server_refuses_a_client_without_a_certificate() {
    let pki = Pki::new();
    let server = NatsServer::start_with_config(&pki.server_block(true)).await;
    let with_cert = config_from(&[
        ("TORONTO_NATS_URL", server.tls_url()),
        ("TORONTO_NATS_TLS_CA_FILE", pki.ca.clone()),
        ("TORONTO_NATS_TLS_CERT_FILE", pki.client_cert.clone()),
        ("TORONTO_NATS_TLS_KEY_FILE", pki.client_key.clone()),
    ]);
    toronto_runtime::connect::probe(&with_cert.nats)
        .await
        .expect("a client certificate from the CA is accepted");
    let shutdown = CancellationToken::new();
    let client = toronto_runtime::connect::connect(
        &with_cert.nats,
        "toronto-test",
        &Metrics::new(),
        &shutdown,
    )
    .await
    .unwrap();
    let mut sub = client.subscribe("tls.check").await.unwrap();
    client
        .publish("tls.check", Bytes::from_static(b"x"))
        .await
        .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_secs(2), sub.next())
            .await
            .ok()
            .flatten()
            .is_some(),
        "the mutual-TLS connection carries traffic"
    );

    let without_cert = config_from(&[
        ("TORONTO_NATS_URL", server.tls_url()),
        ("TORONTO_NATS_TLS_CA_FILE", pki.ca.clone()),
    ]);
    assert!(
        toronto_runtime::connect::probe(&without_cert.nats)
            .await
            .is_err(),
        "without a client certificate the server refuses"
    );
    assert!(pki.dir.path().exists());
}
