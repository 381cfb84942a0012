//! The checks every signed message goes through, a request or a signed reply: the
//! signature headers, the signature over the subject and bytes, the time window, and
//! a known, unrevoked signer.

use std::sync::Arc;

use async_nats::HeaderMap;
use chrono::{DateTime, Utc};
use toronto_protocol::auth::{Principal, Signature, SignatureError};

use super::{Refusal, Registry, ReplayGuard};

/// The message's signature, when it was signed, and the principal whose key signed it.
pub(super) fn verified(
    registry: &Registry,
    replay: &ReplayGuard,
    headers: Option<&HeaderMap>,
    subject: &str,
    payload: &[u8],
    now: DateTime<Utc>,
) -> Result<(Signature, DateTime<Utc>, Arc<Principal>), Refusal> {
    let signature =
        Signature::from_headers(|name| headers.and_then(|h| h.get(name)).map(|v| v.as_str()))
            .map_err(|e| match e {
                SignatureError::Unsigned => Refusal::Unsigned,
                e => Refusal::Signature(e),
            })?;
    let signed_at = signature
        .verify(subject, payload)
        .map_err(Refusal::Signature)?;
    replay.check_time(signed_at, now)?;
    let signer = registry
        .by_key(&signature.signer)
        .ok_or_else(|| Refusal::UnknownKey {
            key: signature.signer.clone(),
        })?;
    if signer.revoked {
        return Err(Refusal::Revoked {
            id: signer.id.clone(),
        });
    }
    Ok((signature, signed_at, signer))
}
