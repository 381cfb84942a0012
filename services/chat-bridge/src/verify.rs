//! Request authentication: Slack's v0 signatures (HMAC-SHA256 over
//! `v0:{timestamp}:{raw body}` with the signing secret, 5-minute window, no replays) and
//! Mattermost's slash command tokens. Both compare in constant time (tokens as SHA-256
//! digests, so their length does not show either).
//!
//! The replay guard keeps the signatures of accepted Slack requests in the KV bucket
//! `<prefix>_chat_replay` (entries expire after twice the window), so every replica of
//! the bridge refuses a request another one already took. A signature is one
//! signature whatever the case of its hex digits: the guard keys on the decoded bytes.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use toronto_protocol::Subjects;

/// How far a request's timestamp may be from now, in seconds (Slack's own advice).
pub const MAX_SKEW_SECS: i64 = 300;

/// Why a Slack request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// `X-Slack-Request-Timestamp` or `X-Slack-Signature` is missing.
    #[error("the request is not signed")]
    Missing,
    /// A header is not in the expected form.
    #[error("the signature headers are malformed")]
    Malformed,
    /// The timestamp is more than five minutes from now.
    #[error("the request timestamp is more than five minutes old (or ahead)")]
    Stale,
    /// The signature does not match the body.
    #[error("the signature does not match")]
    Mismatch,
    /// The same signature was seen before.
    #[error("the request was already received (replay)")]
    Replayed,
}

/// The `v0=<hex>` signature of `body` sent at `timestamp`.
pub fn slack_signature(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(b"v0:");
    mac.update(timestamp.as_bytes());
    mac.update(b":");
    mac.update(body);
    format!("v0={}", hex::encode(mac.finalize().into_bytes()))
}

/// A Slack signature that matched its body, within the window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedSignature {
    /// The request's timestamp (Unix seconds).
    pub timestamp: i64,
    /// The signature's bytes (the MAC), whatever case its hex was sent in.
    pub mac: Vec<u8>,
}

impl VerifiedSignature {
    /// The replay guard's key: the MAC in lower-case hex, so `v0=AB..`, `v0=ab..` and
    /// `v0=aB..` are one signature.
    pub fn key(&self) -> String {
        hex::encode(&self.mac)
    }
}

/// Checks a Slack signature over the raw body (before any parsing) at time `now`
/// (Unix seconds).
pub fn verify_slack(
    secret: &[u8],
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now: i64,
) -> Result<VerifiedSignature, SignatureError> {
    let (Some(timestamp), Some(signature)) = (timestamp, signature) else {
        return Err(SignatureError::Missing);
    };
    let ts: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| SignatureError::Malformed)?;
    if (now - ts).abs() > MAX_SKEW_SECS {
        return Err(SignatureError::Stale);
    }
    let given = signature
        .trim()
        .strip_prefix("v0=")
        .and_then(|h| hex::decode(h).ok())
        .ok_or(SignatureError::Malformed)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(b"v0:");
    mac.update(timestamp.trim().as_bytes());
    mac.update(b":");
    mac.update(body);
    // `verify_slice` compares in constant time.
    mac.verify_slice(&given)
        .map_err(|_| SignatureError::Mismatch)?;
    Ok(VerifiedSignature {
        timestamp: ts,
        mac: given,
    })
}

/// The replay guard's bucket, without the prefix.
pub const REPLAY_BUCKET: &str = "chat_replay";

/// The replay guard's KV bucket: one entry per signature, kept twice the timestamp
/// window (a request older than the window is refused as stale anyway; 5 s more for
/// the server's expiry granularity). `toronto bootstrap` creates it with this config.
pub fn replay_bucket_config(subjects: &Subjects, replicas: usize) -> kv::Config {
    kv::Config {
        bucket: subjects.kv_bucket(REPLAY_BUCKET),
        description: "Chat bridge: signatures of Slack requests taken (replay guard)".into(),
        history: 1,
        max_age: Duration::from_secs(2 * MAX_SKEW_SECS as u64 + 5),
        num_replicas: replicas.max(1),
        storage: jetstream::stream::StorageType::File,
        ..Default::default()
    }
}

/// Why the replay guard did not take a signature.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The same signature was taken before (by this replica or another).
    #[error("the request was already received (replay)")]
    Replayed,
    /// The guard is not connected yet (the bridge is starting).
    #[error("the replay guard is starting")]
    NotConnected,
    /// The bucket cannot be opened or written: requests are refused rather than
    /// taken unguarded.
    #[error("the replay guard is unavailable (KV bucket {bucket})")]
    Unavailable {
        /// The bucket.
        bucket: String,
        /// What NATS said.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Records the signatures of accepted Slack requests in KV, shared by every replica.
#[derive(Debug, Default)]
pub struct ReplayGuard {
    target: std::sync::OnceLock<(jetstream::Context, kv::Config)>,
    /// The open bucket; dropped after a failed write, so the next request opens it again.
    store: std::sync::Mutex<Option<kv::Store>>,
}

impl ReplayGuard {
    /// Connects the guard to JetStream; the bucket is opened (or, where the NATS user
    /// may, created) on first use, and again on the next request after a failure.
    pub fn connect(&self, js: jetstream::Context, config: kv::Config) {
        let _ = self.target.set((js, config));
    }

    /// Opens the bucket: it exists (made by `toronto bootstrap`), or is created.
    pub async fn open(&self) -> Result<kv::Store, ReplayError> {
        if let Some(store) = self.store.lock().expect("replay guard lock").clone() {
            return Ok(store);
        }
        let (js, config) = self.target.get().ok_or(ReplayError::NotConnected)?;
        let store =
            match js.get_key_value(&config.bucket).await {
                Ok(store) => store,
                Err(_) => js.create_key_value(config.clone()).await.map_err(|e| {
                    ReplayError::Unavailable {
                        bucket: config.bucket.clone(),
                        source: Box::new(e),
                    }
                })?,
            };
        *self.store.lock().expect("replay guard lock") = Some(store.clone());
        Ok(store)
    }

    /// Takes `signature` once: records it, or refuses it as a replay when any replica
    /// recorded it before.
    pub async fn check(&self, signature: &VerifiedSignature) -> Result<(), ReplayError> {
        let store = self.open().await?;
        match store
            .create(signature.key(), signature.timestamp.to_string().into())
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Err(ReplayError::Replayed),
            Err(e) => {
                self.store.lock().expect("replay guard lock").take();
                Err(ReplayError::Unavailable {
                    bucket: store.name.clone(),
                    source: Box::new(e),
                })
            }
        }
    }
}

/// Whether `token` is one of `expected`. Compared as SHA-256 digests in constant time,
/// so neither a matching prefix nor the expected length shows in the time taken; every
/// expected token is compared.
pub fn token_matches(token: &str, expected: &[crate::settings::Secret]) -> bool {
    let given = Sha256::digest(token.as_bytes());
    let mut any = subtle::Choice::from(0);
    for e in expected {
        any |= given.ct_eq(&Sha256::digest(e.expose().as_bytes()));
    }
    bool::from(any)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Secret;

    #[test]
    fn mattermost_tokens_match_only_exactly() {
        let expected = [Secret::new("tok-one"), Secret::new("tok-two")];
        assert!(token_matches("tok-two", &expected));
        for wrong in ["", "tok", "tok-one ", "TOK-ONE", "tok-three"] {
            assert!(!token_matches(wrong, &expected), "{wrong:?}");
        }
        assert!(!token_matches("tok-one", &[]));
    }

    #[test]
    fn slack_documentation_example_verifies() {
        // The example of https://api.slack.com/authentication/verifying-requests-from-slack
        let secret = b"8f742231b10e8888abcd99yyyzzz85a5";
        let ts = "1531420618";
        let body = b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
        let sig = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";
        assert_eq!(slack_signature(secret, ts, body), sig);
        let verified = verify_slack(secret, Some(ts), Some(sig), body, 1531420618 + 10).unwrap();
        assert_eq!(format!("v0={}", verified.key()), sig);
        let upper = format!("v0={}", sig[3..].to_ascii_uppercase());
        let mixed: String = sig
            .chars()
            .enumerate()
            .map(|(i, c)| {
                if i > 3 && i % 2 == 0 {
                    c.to_ascii_uppercase()
                } else {
                    c
                }
            })
            .collect();
        for other in [upper.as_str(), mixed.as_str()] {
            let again = verify_slack(secret, Some(ts), Some(other), body, 1531420618).unwrap();
            assert_eq!(again.key(), verified.key(), "{other} is the same signature");
        }
        assert_eq!(
            verify_slack(secret, Some(ts), Some(sig), body, 1531420618 + 301),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            verify_slack(b"wrong", Some(ts), Some(sig), body, 1531420618),
            Err(SignatureError::Mismatch)
        );
    }
}
