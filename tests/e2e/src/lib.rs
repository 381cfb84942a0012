//! Fixtures of the end-to-end tests. `slow-service` is a test-only binary built on
//! the same `service_main` as every real service, with one endpoint that takes as
//! long as it is asked to, so that shutdown under load can be observed from outside.
#![forbid(unsafe_code)]

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use toronto_protocol::Message;

/// Asks the test service to take `ms` milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Sleep {
    /// How long to take.
    pub ms: u64,
}

impl Message for Sleep {
    const NAME: &'static str = "test.sleep";
    const MAJOR: u32 = 1;
}

/// The answer to [`Sleep`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Slept {
    /// How long it took.
    pub ms: u64,
}

impl Message for Slept {
    const NAME: &'static str = "test.slept";
    const MAJOR: u32 = 1;
}

/// The verb of the sleep endpoint.
pub const SLEEP_VERB: &str = "test.sleep";
