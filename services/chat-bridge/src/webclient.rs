//! The HTTP client that posts to webhooks and response URLs: reqwest over rustls (the
//! process-wide ring provider), http and https, trusting the system's roots and the
//! private CA of `TORONTO_TLS_CA_FILE` ([`toronto_runtime::tls::http_client`]).

use std::time::Duration;

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
    inner: reqwest::Client,
}

impl Default for WebClient {
    fn default() -> Self {
        Self::new()
    }
}

impl WebClient {
    /// A client trusting the system's root certificates and the configured private CA.
    pub fn new() -> Self {
        let inner = toronto_runtime::tls::http_client()
            .user_agent(concat!("toronto-chat-bridge/", env!("CARGO_PKG_VERSION")))
            // Redirects could carry the credential in the URL elsewhere: not followed.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("an HTTP client with the ring provider builds");
        Self { inner }
    }

    /// POSTs `body` as JSON to `url`; the answer's status and `Retry-After`.
    pub async fn post_json(
        &self,
        url: &str,
        body: &serde_json::Value,
        timeout: Duration,
    ) -> Result<Answer, PostError> {
        let url = reqwest::Url::parse(url).map_err(|_| PostError::InvalidUrl)?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(PostError::InvalidUrl);
        }
        let response = self
            .inner
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    PostError::Timeout
                } else {
                    PostError::Connect
                }
            })?;
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok());
        Ok(Answer {
            status: response.status().as_u16(),
            retry_after,
        })
    }
}
