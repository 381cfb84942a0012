//! The HTTP client that posts to webhooks and response URLs: hyper with rustls on the
//! ring provider (which the workspace already links for NATS), HTTP/1.1, http and https.
//!
//! It is not reqwest on purpose: reqwest's TLS features are workspace-wide once enabled,
//! and its provider-less rustls feature would make every other crate's reqwest client
//! panic for want of a process-wide crypto provider.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Why a post got no answer. Never carries the URL (webhook URLs are credentials).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PostError {
    /// The URL is not a valid http(s) URL.
    #[error("the URL is invalid")]
    InvalidUrl,
    /// No answer in time.
    #[error("no answer in time")]
    Timeout,
    /// The connection failed.
    #[error("cannot connect or send")]
    Connect,
}

/// What a post got back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The `Retry-After` header, in seconds, when present.
    pub retry_after: Option<u64>,
}

/// A small JSON-posting HTTP client.
#[derive(Debug, Clone)]
pub struct WebClient {
    inner: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl Default for WebClient {
    fn default() -> Self {
        Self::new()
    }
}

impl WebClient {
    /// A client trusting the system's root certificates (none found: https fails, http
    /// still works).
    pub fn new() -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        let builder = match builder.with_provider_and_native_roots(provider.clone()) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "no system root certificates; https webhooks will fail");
                let config = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .expect("ring supports the default protocol versions")
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth();
                hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config)
            }
        };
        let https = builder.https_or_http().enable_http1().build();
        Self {
            inner: Client::builder(TokioExecutor::new()).build(https),
        }
    }

    /// POSTs `body` as JSON to `url`; the answer's status and `Retry-After`.
    pub async fn post_json(
        &self,
        url: &str,
        body: &serde_json::Value,
        timeout: Duration,
    ) -> Result<Answer, PostError> {
        let uri: http::Uri = url.parse().map_err(|_| PostError::InvalidUrl)?;
        let request = http::Request::post(uri)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(
                http::header::USER_AGENT,
                concat!("toronto-chat-bridge/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|_| PostError::InvalidUrl)?;
        let response = tokio::time::timeout(timeout, self.inner.request(request))
            .await
            .map_err(|_| PostError::Timeout)?
            .map_err(|_| PostError::Connect)?;
        let retry_after = response
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok());
        Ok(Answer {
            status: response.status().as_u16(),
            retry_after,
        })
    }
}
