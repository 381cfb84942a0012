//! `toronto bootstrap`: the admin creates (or brings up to date) every JetStream
//! stream and KV bucket the services use. Services running as their least-privilege
//! NATS users (deploy/nats/permissions.conf) may not create, update, purge or delete
//! streams, nor delete consumers: they check that what they use exists and wait,
//! with a log line naming this command, until it does. `toronto up` runs it first.

use async_nats::jetstream::{self, Context};
use toronto_protocol::Subjects;

use async_nats::jetstream::kv;
use toronto_runtime::auth::AuthConfig;
use toronto_runtime::config::JetStreamConfig;
use toronto_runtime::jetstream::{JetStreamError, bootstrap_kv, bootstrap_streams};
use toronto_runtime::work::WorkQueue;

/// What the bootstrap set up, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bootstrapped {
    /// Streams created or updated.
    pub streams: Vec<String>,
    /// KV buckets created or updated.
    pub buckets: Vec<String>,
}

/// Every KV bucket of every service, and the replicas' leases: (bucket name without
/// prefix, history).
pub fn all_buckets() -> Vec<(&'static str, i64)> {
    [
        toronto_planner::BUCKETS,
        toronto_deployer::BUCKETS,
        toronto_monitor::BUCKETS,
        toronto_incident_commander::BUCKETS,
        toronto_chat_bridge::BUCKETS,
        &[toronto_runtime::lease::BUCKET],
    ]
    .into_iter()
    .flatten()
    .copied()
    .collect()
}

/// The KV buckets with a TTL: the identity registry and the replay guard (their
/// configurations are the runtime's, [`toronto_runtime::auth::bucket_configs`]) and the
/// chat bridge's replay guard `<prefix>_chat_replay`.
pub fn ttl_buckets(subjects: &Subjects, auth: &AuthConfig, replicas: usize) -> Vec<kv::Config> {
    let mut configs = toronto_runtime::auth::bucket_configs(subjects, auth, replicas).to_vec();
    // The chat bridge's Slack replay guard, exactly as the bridge makes it.
    configs.push(toronto_chat_bridge::verify::replay_bucket_config(
        subjects, replicas,
    ));
    configs
}

/// The monitor's verdict evidence `<prefix>_analysis_evidence`, kept
/// `TORONTO_MONITOR_EVIDENCE_DAYS` (read from the environment, 30 when unset).
pub fn evidence_bucket(subjects: &Subjects, replicas: usize) -> kv::Config {
    let days = toronto_monitor::Settings::from_env()
        .map(|s| s.evidence_days)
        .unwrap_or(toronto_monitor::Settings::default().evidence_days);
    toronto_monitor::evidence::bucket_config(subjects, days, replicas)
}

/// The work queues of the planner and the deployer (their descriptions as the
/// services give them).
fn work_queues(js: &Context, subjects: &Subjects) -> [WorkQueue; 2] {
    [
        WorkQueue::new(
            js.clone(),
            subjects.plan_runs_stream(),
            subjects.plan_runs(),
            toronto_planner::RUNNER_CONSUMER,
            "Planner work: plans to advance (work queue)",
        ),
        WorkQueue::new(
            js.clone(),
            subjects.rollout_runs_stream(),
            subjects.rollout_runs(),
            toronto_deployer::RUNNER_CONSUMER,
            "Deployer work: rollouts to advance (work queue)",
        ),
    ]
}

/// Creates or updates every stream and KV bucket over `client` (which must be allowed
/// to: the NATS admin, or a server without authorization), the identity buckets with
/// the default signature window.
pub async fn bootstrap(
    client: &async_nats::Client,
    subjects: &Subjects,
    config: &JetStreamConfig,
) -> Result<Bootstrapped, JetStreamError> {
    bootstrap_with_auth(client, subjects, config, &AuthConfig::default()).await
}

/// [`bootstrap`] with the identity settings the services run with (the replay
/// bucket's entries live twice their signature window).
pub async fn bootstrap_with_auth(
    client: &async_nats::Client,
    subjects: &Subjects,
    config: &JetStreamConfig,
    auth: &AuthConfig,
) -> Result<Bootstrapped, JetStreamError> {
    let js = jetstream::new(client.clone());
    let mut done = Bootstrapped::default();
    bootstrap_streams(&js, subjects, config).await?;
    done.streams.extend(
        toronto_runtime::jetstream::stream_configs(subjects, config)
            .into_iter()
            .map(|c| c.name),
    );
    for queue in work_queues(&js, subjects) {
        queue.bootstrap(config.replicas).await?;
        done.streams.push(queue.stream().to_owned());
    }
    let outbox = toronto_incident_commander::outbound::start::stream_config(
        subjects.prefix(),
        config.replicas,
    );
    let name = outbox.name.clone();
    js.create_or_update_stream(outbox)
        .await
        .map_err(|source| JetStreamError::Stream {
            name: name.clone(),
            source,
        })?;
    done.streams.push(name);
    for (name, history) in all_buckets() {
        let bucket = subjects.kv_bucket(name);
        bootstrap_kv(&js, &bucket, history, config.replicas).await?;
        done.buckets.push(bucket);
    }
    let ttl = ttl_buckets(subjects, auth, config.replicas);
    let evidence = evidence_bucket(subjects, config.replicas);
    for bucket in ttl.into_iter().chain([evidence]) {
        let name = bucket.bucket.clone();
        js.create_or_update_key_value(bucket)
            .await
            .map_err(|source| JetStreamError::Bucket {
                name: name.clone(),
                source,
            })?;
        done.buckets.push(name);
    }
    Ok(done)
}
