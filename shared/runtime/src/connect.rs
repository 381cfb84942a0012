//! The NATS connection: credentials and TLS from [`NatsConfig`], reconnecting
//! forever with capped exponential backoff.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::connection::State;
use async_nats::{Client, ConnectOptions, Event};
use tokio_util::sync::CancellationToken;

use crate::config::NatsConfig;
use crate::metrics::Metrics;

/// Why no connection could be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The credentials file could not be read.
    #[error("cannot read NATS credentials file {path}: {source}")]
    Credentials {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The client refused the options (bad URL, bad TLS files...).
    #[error("cannot connect to NATS at {urls}: {source}")]
    Connect {
        /// The configured URLs.
        urls: String,
        /// The client's error.
        #[source]
        source: async_nats::ConnectError,
    },
    /// A TLS file (CA, client certificate or key) could not be read.
    #[error("cannot read NATS TLS {what} file {path}: {source}")]
    TlsFile {
        /// Which file: `CA`, `certificate` or `key`.
        what: &'static str,
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A server URL does not parse.
    #[error("invalid NATS server URL `{url}`: {reason}")]
    Url {
        /// The URL.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Shutdown was requested before the first connection.
    #[error("shut down before NATS became reachable")]
    Cancelled,
}

/// Delay before reconnect attempt `attempts`: 100 ms doubling up to 5 s, plus a random
/// jitter of up to as much again, so that many clients cut off at once do not come back
/// in step.
pub fn backoff(attempts: usize) -> Duration {
    exponential_backoff(Duration::from_millis(100), Duration::from_secs(5), attempts)
}

/// Delay number `n` (from 0) of backon's exponential backoff: `min` doubling up to
/// `max`, plus a random jitter of up to as much again.
pub fn exponential_backoff(min: Duration, max: Duration, n: usize) -> Duration {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_min_delay(min)
        .with_max_delay(max)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build()
        .nth(n.min(32))
        .unwrap_or(max)
}

/// The configured server URLs, parsed (the client fails over between them).
pub fn server_addrs(config: &NatsConfig) -> Result<Vec<async_nats::ServerAddr>, ConnectError> {
    config
        .urls
        .iter()
        .map(|url| {
            url.parse().map_err(|e: std::io::Error| ConnectError::Url {
                url: url.clone(),
                reason: e.to_string(),
            })
        })
        .collect()
}

/// Whether the configuration asks for TLS: `TORONTO_NATS_TLS_REQUIRED`, a `tls://` URL,
/// a CA file or a client certificate.
pub fn tls_required(config: &NatsConfig) -> bool {
    config.tls_required
        || config.tls_ca.is_some()
        || config.tls_cert.is_some()
        || config
            .urls
            .iter()
            .any(|u| u.trim().to_ascii_lowercase().starts_with("tls://"))
}

/// Checks that a TLS file is readable now, so a wrong path is a clear error at start
/// rather than a connection that never comes up.
fn readable(what: &'static str, path: &std::path::Path) -> Result<(), ConnectError> {
    std::fs::File::open(path)
        .map(|_| ())
        .map_err(|source| ConnectError::TlsFile {
            what,
            path: path.display().to_string(),
            source,
        })
}

/// The client options for authentication and TLS only: one attempt, no reconnection
/// (for [`probe`] and one-shot clients). [`options`] adds the service's settings.
pub async fn base_options(config: &NatsConfig) -> Result<ConnectOptions, ConnectError> {
    let mut opts = match &config.creds_file {
        Some(path) => ConnectOptions::with_credentials_file(path)
            .await
            .map_err(|source| ConnectError::Credentials {
                path: path.display().to_string(),
                source,
            })?,
        None => ConnectOptions::new(),
    };
    if let Some(seed) = &config.nkey_seed {
        opts = opts.nkey(seed.clone());
    }
    if let Some(token) = &config.token {
        opts = opts.token(token.clone());
    }
    if let (Some(user), Some(password)) = (&config.user, &config.password) {
        opts = opts.user_and_password(user.clone(), password.clone());
    }
    if let Some(ca) = &config.tls_ca {
        readable("CA", ca)?;
        opts = opts.add_root_certificates(ca.clone());
    }
    if let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) {
        readable("certificate", cert)?;
        readable("key", key)?;
        opts = opts.add_client_certificate(cert.clone(), key.clone());
    }
    if tls_required(config) {
        opts = opts.require_tls(true);
    }
    Ok(opts.connection_timeout(Duration::from_millis(config.connect_timeout_ms)))
}

/// Messages a subscription holds that its reader has not taken yet. Beyond it the
/// client drops what arrives for that subscription (core NATS is at most once; the
/// drop is logged as a slow consumer) instead of buffering it: a reader that falls
/// behind a busy subject (every `alert.firing` event at 1,000 a second) costs at most
/// this many messages of memory. The client's own default (65,536 per subscription)
/// let a starved `toronto up` hold hundreds of megabytes of undelivered events.
pub const SUBSCRIPTION_CAPACITY: usize = 4096;

/// Builds the client options from the configuration: [`base_options`], the client
/// name, the request timeout, the [`SUBSCRIPTION_CAPACITY`], and reconnection
/// forever with [`backoff`].
pub async fn options(config: &NatsConfig, name: &str) -> Result<ConnectOptions, ConnectError> {
    Ok(base_options(config)
        .await?
        .name(name)
        .subscription_capacity(SUBSCRIPTION_CAPACITY)
        .request_timeout(Some(config.request_timeout()))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .reconnect_delay_callback(backoff))
}

/// One connection attempt with the configured credentials and TLS, closed at once:
/// the error says why the server cannot be reached (refused, TLS handshake with the
/// certificate problem named, authorization), which the reconnecting client does not.
pub async fn probe(config: &NatsConfig) -> Result<(), ConnectError> {
    let urls = config.urls.join(",");
    let client = base_options(config)
        .await?
        .connect(server_addrs(config)?)
        .await
        .map_err(|source| ConnectError::Connect { urls, source })?;
    drop(client);
    Ok(())
}

/// The error and its sources, joined, for a log line.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let next = e.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = e.source();
    }
    text
}

/// How often a slow consumer is logged at most: a reader behind a busy subject drops
/// messages by the thousand, and one line per message would flood the log.
const SLOW_CONSUMER_LOG_EVERY: Duration = Duration::from_secs(10);

/// Messages dropped by slow subscriptions since the last log line.
#[derive(Debug, Default)]
struct SlowConsumers {
    dropped: u64,
    logged: Option<std::time::Instant>,
}

impl SlowConsumers {
    /// Counts one dropped message; `Some(count since the last line)` when a line is due.
    fn drop_seen(&mut self) -> Option<u64> {
        self.dropped += 1;
        let now = std::time::Instant::now();
        if self
            .logged
            .is_some_and(|at| now.duration_since(at) < SLOW_CONSUMER_LOG_EVERY)
        {
            return None;
        }
        self.logged = Some(now);
        Some(std::mem::take(&mut self.dropped))
    }
}

/// Connects (in the background: the client retries until the server is reachable)
/// and waits for the first connection, or for `shutdown`. Connection events are
/// logged and mirrored in the `toronto_nats_connected` gauge.
pub async fn connect(
    config: &NatsConfig,
    name: &str,
    metrics: &Metrics,
    shutdown: &CancellationToken,
) -> Result<Client, ConnectError> {
    let gauge = metrics.nats_connected.clone();
    let service = name.to_owned();
    let slow = Arc::new(Mutex::new(SlowConsumers::default()));
    let opts = options(config, name).await?.event_callback(move |event| {
        let gauge = gauge.clone();
        let service = service.clone();
        let slow = slow.clone();
        async move {
            match &event {
                Event::Connected => {
                    gauge.set(1);
                    tracing::info!(service, "NATS connected");
                }
                Event::Disconnected => {
                    gauge.set(0);
                    tracing::warn!(service, "NATS disconnected; reconnecting");
                }
                Event::ClientError(e) => {
                    tracing::warn!(service, error = %e, "NATS connection attempt failed")
                }
                Event::SlowConsumer(sid) => {
                    let report = slow.lock().unwrap_or_else(|e| e.into_inner()).drop_seen();
                    if let Some(dropped) = report {
                        tracing::error!(
                            service,
                            sid,
                            dropped,
                            "slow consumer: messages were dropped"
                        )
                    }
                }
                other => tracing::info!(service, event = %other, "NATS event"),
            }
        }
    });
    let urls = config.urls.join(",");
    let client = opts
        .connect(server_addrs(config)?)
        .await
        .map_err(|source| ConnectError::Connect {
            urls: urls.clone(),
            source,
        })?;
    let mut next_warning = tokio::time::Instant::now() + Duration::from_secs(5);
    while client.connection_state() != State::Connected {
        if tokio::time::Instant::now() >= next_warning {
            // Say why: the reconnecting client only reports the kind of failure.
            let reason = match probe(config).await {
                Ok(()) => "connecting".to_owned(),
                Err(e) => chain(&e),
            };
            tracing::warn!(urls, reason, "still waiting for NATS");
            next_warning = tokio::time::Instant::now() + Duration::from_secs(5);
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Err(ConnectError::Cancelled),
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
    metrics.nats_connected.set(1);
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_consumers_are_logged_at_most_every_ten_seconds_with_the_count() {
        let mut slow = SlowConsumers::default();
        assert_eq!(slow.drop_seen(), Some(1));
        for _ in 0..999 {
            assert_eq!(slow.drop_seen(), None);
        }
        slow.logged = Some(std::time::Instant::now() - SLOW_CONSUMER_LOG_EVERY);
        assert_eq!(slow.drop_seen(), Some(1000));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let within = |n: usize, base: Duration| {
            let d = backoff(n);
            assert!(
                d >= base && d <= base * 2,
                "attempt {n}: {d:?} from {base:?}"
            );
        };
        within(0, Duration::from_millis(100));
        within(1, Duration::from_millis(200));
        within(3, Duration::from_millis(800));
        within(10, Duration::from_secs(5));
        within(usize::MAX, Duration::from_secs(5));
        let spread: std::collections::BTreeSet<Duration> = (0..20).map(|_| backoff(5)).collect();
        assert!(spread.len() > 1, "jittered: {spread:?}");
    }

    #[test]
    fn tls_urls_a_ca_or_a_certificate_require_tls() {
        let mut config = NatsConfig::default();
        assert!(!tls_required(&config));
        config.urls = vec!["nats://a:4222".into(), "TLS://b:4222".into()];
        assert!(tls_required(&config));
        let config = NatsConfig {
            tls_ca: Some("/ca.pem".into()),
            ..Default::default()
        };
        assert!(tls_required(&config));
    }

    #[tokio::test]
    async fn a_missing_tls_file_is_named() {
        let config = NatsConfig {
            tls_ca: Some("/nonexistent/ca.pem".into()),
            ..Default::default()
        };
        let err = base_options(&config).await.unwrap_err();
        assert!(
            err.to_string().contains("TLS CA file /nonexistent/ca.pem"),
            "{err}"
        );
    }
}
