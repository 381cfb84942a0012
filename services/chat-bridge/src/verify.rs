//! Request authentication: Slack's v0 signatures (HMAC-SHA256 over
//! `v0:{timestamp}:{raw body}` with the signing secret, 5-minute window, no replays) and
//! Mattermost's slash command tokens. Both compare in constant time.

use std::collections::HashMap;
use std::sync::Mutex;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

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

/// Checks a Slack signature over the raw body (before any parsing) at time `now`
/// (Unix seconds).
pub fn verify_slack(
    secret: &[u8],
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now: i64,
) -> Result<(), SignatureError> {
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
        .map_err(|_| SignatureError::Mismatch)
}

/// Remembers the signatures of accepted requests for the length of the window, so that
/// a captured request cannot be sent again.
#[derive(Debug, Default)]
pub struct ReplayGuard {
    seen: Mutex<HashMap<String, i64>>,
}

impl ReplayGuard {
    /// Records `signature` (of a request stamped `timestamp`) at time `now`; refuses
    /// one already recorded. Entries older than the window are forgotten (a request
    /// that old is refused as stale anyway).
    pub fn check(&self, signature: &str, timestamp: i64, now: i64) -> Result<(), SignatureError> {
        let mut seen = self.seen.lock().expect("replay guard lock");
        seen.retain(|_, ts| (now - *ts).abs() <= MAX_SKEW_SECS);
        if seen.contains_key(signature) {
            return Err(SignatureError::Replayed);
        }
        seen.insert(signature.to_owned(), timestamp);
        Ok(())
    }
}

/// Whether `token` is one of `expected`, compared in constant time.
pub fn token_matches(token: &str, expected: &[crate::settings::Secret]) -> bool {
    let mut any = subtle::Choice::from(0);
    for e in expected {
        any |= token.as_bytes().ct_eq(e.expose().as_bytes());
    }
    bool::from(any)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slack_documentation_example_verifies() {
        // The example of https://api.slack.com/authentication/verifying-requests-from-slack
        let secret = b"8f742231b10e8888abcd99yyyzzz85a5";
        let ts = "1531420618";
        let body = b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
        let sig = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";
        assert_eq!(slack_signature(secret, ts, body), sig);
        assert_eq!(
            verify_slack(secret, Some(ts), Some(sig), body, 1531420618 + 10),
            Ok(())
        );
        assert_eq!(
            verify_slack(secret, Some(ts), Some(sig), body, 1531420618 + 301),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            verify_slack(b"wrong", Some(ts), Some(sig), body, 1531420618),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn replays_are_refused_within_the_window() {
        let guard = ReplayGuard::default();
        assert_eq!(guard.check("v0=aa", 100, 100), Ok(()));
        assert_eq!(
            guard.check("v0=aa", 100, 150),
            Err(SignatureError::Replayed)
        );
        assert_eq!(guard.check("v0=bb", 100, 150), Ok(()));
    }
}
