//! The NATS connection: credentials and TLS from [`NatsConfig`], reconnecting
//! forever with capped exponential backoff.

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

/// Delay before reconnect attempt `attempts`: 100 ms doubling, capped at 5 s.
pub fn backoff(attempts: usize) -> Duration {
    let exp = attempts.min(16) as u32;
    Duration::from_millis(100u64.saturating_mul(2u64.saturating_pow(exp)))
        .min(Duration::from_secs(5))
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

/// Builds the client options from the configuration.
pub async fn options(config: &NatsConfig, name: &str) -> Result<ConnectOptions, ConnectError> {
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
        opts = opts.add_root_certificates(ca.clone());
    }
    if let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) {
        opts = opts.add_client_certificate(cert.clone(), key.clone());
    }
    if config.tls_required || config.tls_ca.is_some() || config.tls_cert.is_some() {
        opts = opts.require_tls(true);
    }
    Ok(opts
        .name(name)
        .connection_timeout(Duration::from_millis(config.connect_timeout_ms))
        .request_timeout(Some(config.request_timeout()))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .reconnect_delay_callback(backoff))
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
    let opts = options(config, name).await?.event_callback(move |event| {
        let gauge = gauge.clone();
        let service = service.clone();
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
                Event::SlowConsumer(sid) => {
                    tracing::error!(service, sid, "slow consumer: messages were dropped")
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
            tracing::warn!(urls, "still waiting for NATS");
            next_warning += Duration::from_secs(5);
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
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(0), Duration::from_millis(100));
        assert_eq!(backoff(1), Duration::from_millis(200));
        assert_eq!(backoff(3), Duration::from_millis(800));
        assert_eq!(backoff(10), Duration::from_secs(5));
        assert_eq!(backoff(usize::MAX), Duration::from_secs(5));
    }
}
