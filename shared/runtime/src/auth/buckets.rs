//! The identity buckets' configurations, shared by the services (which open them) and
//! `toronto bootstrap` (which creates and updates them), so both make the same buckets.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use toronto_protocol::Subjects;

use super::AuthConfig;

/// The identity buckets, as services open them and `toronto bootstrap` creates them:
/// `<prefix>_identities` (history 5) and `<prefix>_replay` (history 1, entries expire
/// after twice the signature window and 5 s).
pub fn bucket_configs(
    subjects: &Subjects,
    config: &AuthConfig,
    replicas: usize,
) -> [kv::Config; 2] {
    let window = Duration::from_secs(config.window_secs.max(1));
    [
        kv::Config {
            bucket: subjects.kv_bucket("identities"),
            history: 5,
            num_replicas: replicas,
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        },
        kv::Config {
            bucket: subjects.kv_bucket("replay"),
            history: 1,
            max_age: window * 2 + Duration::from_secs(5),
            num_replicas: replicas,
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        },
    ]
}
