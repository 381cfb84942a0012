//! A fixed test identity: the first admin of stacks started by tests, so that signed
//! test requests pass `TORONTO_AUTH=required`. Its seed is public: never use it
//! outside tests.

use toronto_runtime::auth::Signer;

/// The seed of the test admin (an NKey user seed made for tests only).
pub const TEST_ADMIN_SEED: &str = "SUAAAAICAMCAKBQHBAEQUCYMBUHA6EARCIJRIFIWC4MBSGQ3DQOR4H776Y";

/// The test admin's signer.
pub fn test_identity() -> Signer {
    Signer::from_seed(TEST_ADMIN_SEED).expect("the test seed is a user seed")
}

/// The test admin's seed in a file (mode 0600) under the temp dir, written once.
pub fn test_identity_file() -> std::path::PathBuf {
    static FILE: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    FILE.get_or_init(|| {
        let path = std::env::temp_dir().join(format!(
            "toronto-test-admin-{}.nk",
            test_identity().public_key()
        ));
        if !path.exists() {
            // Written under another name and renamed, so parallel test binaries
            // never read a half-written file.
            let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
            let _ = std::fs::remove_file(&tmp);
            test_identity()
                .write_new(&tmp)
                .expect("write the test seed");
            std::fs::rename(&tmp, &path).expect("place the test seed");
        }
        path
    })
    .clone()
}

/// `config` with the test admin as the first admin (`TORONTO_AUTH_ADMINS`) and as the
/// identity the service signs its own requests with (`TORONTO_IDENTITY_FILE`), so a
/// test stack runs with `TORONTO_AUTH=required` as a deployed one does.
pub fn with_test_admin(mut config: toronto_runtime::Config) -> toronto_runtime::Config {
    config.auth.admins = vec![test_identity().public_key()];
    config.auth.identity_file = Some(test_identity_file());
    config
}

/// A new principal with `roles` and a fresh key: its signer, and the record to store
/// with [`put_principal`].
pub fn principal(
    id: &str,
    roles: &[toronto_protocol::auth::Role],
) -> (Signer, toronto_protocol::auth::Principal) {
    let signer = Signer::generate();
    let principal = toronto_protocol::auth::Principal {
        id: id.to_owned(),
        kind: toronto_protocol::auth::PrincipalKind::Human,
        roles: roles.to_vec(),
        display_name: id.to_owned(),
        revoked: false,
        keys: vec![signer.public_key()],
        sources: vec![],
        chat_ids: vec![],
    };
    (signer, principal)
}

/// Stores `principal` straight into the identity registry bucket of the default prefix
/// (`toronto_identities`, which every service watches) and gives the watches a moment
/// to see it. Tests of the registry's own endpoints use `identity.put` instead.
pub async fn put_principal(
    client: &async_nats::Client,
    principal: &toronto_protocol::auth::Principal,
) {
    let js = async_nats::jetstream::new(client.clone());
    let store = toronto_runtime::jetstream::ensure_kv(&js, "toronto_identities", 5, 1)
        .await
        .expect("the identities bucket");
    store
        .put(
            principal.id.as_str(),
            serde_json::to_vec(principal).expect("a principal").into(),
        )
        .await
        .expect("store the principal");
    // The services follow the bucket with a watch: give it a moment to arrive.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
}

/// A person for a test: registers `id` with `roles` (and `chat_ids`) in the stack's
/// registry and returns the key that signs as them, so that "alice asks, bob
/// approves" is two verified principals, as in production.
pub async fn person(
    client: &async_nats::Client,
    id: &str,
    roles: &[toronto_protocol::auth::Role],
    chat_ids: &[&str],
) -> Signer {
    let (signer, mut record) = principal(id, roles);
    record.chat_ids = chat_ids.iter().map(|c| (*c).to_owned()).collect();
    put_principal(client, &record).await;
    signer
}
