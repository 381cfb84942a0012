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

/// `config` with the test admin as the first admin (`TORONTO_AUTH_ADMINS`).
pub fn with_test_admin(mut config: toronto_runtime::Config) -> toronto_runtime::Config {
    config.auth.admins = vec![test_identity().public_key()];
    config
}
