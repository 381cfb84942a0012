//! Signed requests: who sent a message, proven with an NKey user key (ed25519).
//!
//! A request that asks for a change carries four headers ([`SIGNER_HEADER`],
//! [`SIGNATURE_HEADER`], [`SIGNED_AT_HEADER`] and, when a service acts for a human,
//! [`ON_BEHALF_OF_HEADER`]). The signature covers exactly the bytes of
//! [`signed_bytes`]:
//!
//! ```text
//! toronto-request-signature-v1 \n <subject> \n <signed-at> \n <on-behalf-of or empty> \n <payload as sent>
//! ```
//!
//! The payload comes last, as the bytes on the wire (JSON or MessagePack), so no
//! canonical form is needed. Subjects, RFC 3339 times and principal ids hold no line
//! break, so the fields cannot run into each other. The signature is the raw 64-byte
//! ed25519 signature in base64url without padding. `docs/trust-model.md` carries a test
//! vector ([`tests`] checks it) and a Python peer that signs.
//!
//! This module also holds the registry's wire types ([`Principal`], [`Role`]).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, SecondsFormat, Utc};
use nkeys::KeyPair;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::message::Message;

/// The signer's NKey user public key (`U...`).
pub const SIGNER_HEADER: &str = "Toronto-Signer";
/// Set (to `1`) on a request whose reply must be signed by the responder: the
/// signature covers the reply subject (the requester's inbox) and the reply's bytes, so
/// a gate verdict proves which agent gave it.
pub const SIGN_REPLY_HEADER: &str = "Toronto-Sign-Reply";
/// The ed25519 signature of [`signed_bytes`], base64url without padding.
pub const SIGNATURE_HEADER: &str = "Toronto-Signature";
/// When it was signed, RFC 3339 UTC (e.g. `2026-11-26T17:00:00.000Z`).
pub const SIGNED_AT_HEADER: &str = "Toronto-Signed-At";
/// The principal id a service acts for (optional; needs the `delegate` role).
pub const ON_BEHALF_OF_HEADER: &str = "Toronto-On-Behalf-Of";
/// The domain-separation prefix: a signature over these bytes means nothing elsewhere.
pub const SIGNATURE_DOMAIN: &str = "toronto-request-signature-v1";

/// Why a signature could not be made or checked.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    /// The request is not signed at all.
    #[error("the request is not signed (no {SIGNER_HEADER} header)")]
    Unsigned,
    /// Some signature headers are there, one is missing.
    #[error("the request's signature is incomplete: no {0} header")]
    Missing(&'static str),
    /// The signer is not an NKey user public key.
    #[error("{SIGNER_HEADER} is not an NKey user public key")]
    NotAUserKey,
    /// The seed given to sign with is not an NKey user seed.
    #[error("the seed is not an NKey user seed")]
    NotAUserSeed,
    /// The signed-at time is not RFC 3339.
    #[error("{SIGNED_AT_HEADER} is not an RFC 3339 time")]
    BadSignedAt,
    /// On-behalf-of holds a character a principal id cannot have.
    #[error("{ON_BEHALF_OF_HEADER} is not a principal id")]
    BadOnBehalfOf,
    /// The signature is not base64url of 64 bytes.
    #[error("{SIGNATURE_HEADER} is not a base64url ed25519 signature")]
    BadEncoding,
    /// The signature does not match the signer, subject, time and payload.
    #[error("the signature does not match the signer, subject, time and payload")]
    BadSignature,
}

/// The bytes a request signature covers.
pub fn signed_bytes(
    subject: &str,
    signed_at: &str,
    on_behalf_of: Option<&str>,
    payload: &[u8],
) -> Vec<u8> {
    let on_behalf_of = on_behalf_of.unwrap_or("");
    let mut out = Vec::with_capacity(
        SIGNATURE_DOMAIN.len()
            + subject.len()
            + signed_at.len()
            + on_behalf_of.len()
            + 4
            + payload.len(),
    );
    for field in [SIGNATURE_DOMAIN, subject, signed_at, on_behalf_of] {
        out.extend_from_slice(field.as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(payload);
    out
}

/// Whether `id` may be a principal id: 1 to 64 of `a-z A-Z 0-9 - _ .`, also usable
/// as a KV key.
pub fn valid_principal_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !id.starts_with('.')
        && !id.ends_with('.')
}

/// The signature headers of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// The signer's NKey user public key.
    pub signer: String,
    /// base64url ed25519 signature.
    pub signature: String,
    /// RFC 3339 UTC, exactly as signed.
    pub signed_at: String,
    /// The principal the signer acts for.
    pub on_behalf_of: Option<String>,
}

impl Signature {
    /// Signs `payload` sent to `subject` with the user seed `key`, at `now`.
    pub fn sign(
        key: &KeyPair,
        subject: &str,
        payload: &[u8],
        on_behalf_of: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Self, SignatureError> {
        if key.key_pair_type() != nkeys::KeyPairType::User {
            return Err(SignatureError::NotAUserSeed);
        }
        if on_behalf_of.is_some_and(|p| !valid_principal_id(p)) {
            return Err(SignatureError::BadOnBehalfOf);
        }
        let signed_at = now.to_rfc3339_opts(SecondsFormat::Millis, true);
        let raw = key
            .sign(&signed_bytes(subject, &signed_at, on_behalf_of, payload))
            .map_err(|_| SignatureError::NotAUserSeed)?;
        Ok(Self {
            signer: key.public_key(),
            signature: URL_SAFE_NO_PAD.encode(raw),
            signed_at,
            on_behalf_of: on_behalf_of.map(str::to_owned),
        })
    }

    /// Reads the headers through `get` (header name → value); `Unsigned` when there is
    /// no signer header.
    pub fn from_headers<'a>(
        get: impl Fn(&'static str) -> Option<&'a str>,
    ) -> Result<Self, SignatureError> {
        let signer = get(SIGNER_HEADER).ok_or(SignatureError::Unsigned)?;
        let signature = get(SIGNATURE_HEADER).ok_or(SignatureError::Missing(SIGNATURE_HEADER))?;
        let signed_at = get(SIGNED_AT_HEADER).ok_or(SignatureError::Missing(SIGNED_AT_HEADER))?;
        Ok(Self {
            signer: signer.to_owned(),
            signature: signature.to_owned(),
            signed_at: signed_at.to_owned(),
            on_behalf_of: get(ON_BEHALF_OF_HEADER)
                .filter(|v| !v.is_empty())
                .map(str::to_owned),
        })
    }

    /// The headers to send, as (name, value) pairs.
    pub fn headers(&self) -> Vec<(&'static str, &str)> {
        let mut out = vec![
            (SIGNER_HEADER, self.signer.as_str()),
            (SIGNATURE_HEADER, self.signature.as_str()),
            (SIGNED_AT_HEADER, self.signed_at.as_str()),
        ];
        if let Some(p) = &self.on_behalf_of {
            out.push((ON_BEHALF_OF_HEADER, p.as_str()));
        }
        out
    }

    /// Checks the signature over `payload` sent to `subject`; returns the signed-at
    /// time (the caller checks it is recent).
    pub fn verify(&self, subject: &str, payload: &[u8]) -> Result<DateTime<Utc>, SignatureError> {
        if !self.signer.starts_with('U') {
            return Err(SignatureError::NotAUserKey);
        }
        let key =
            KeyPair::from_public_key(&self.signer).map_err(|_| SignatureError::NotAUserKey)?;
        let signed_at = DateTime::parse_from_rfc3339(&self.signed_at)
            .map_err(|_| SignatureError::BadSignedAt)?
            .with_timezone(&Utc);
        if self
            .on_behalf_of
            .as_deref()
            .is_some_and(|p| !valid_principal_id(p))
        {
            return Err(SignatureError::BadOnBehalfOf);
        }
        let raw = URL_SAFE_NO_PAD
            .decode(self.signature.as_bytes())
            .map_err(|_| SignatureError::BadEncoding)?;
        if raw.len() != 64 {
            return Err(SignatureError::BadEncoding);
        }
        let bytes = signed_bytes(
            subject,
            &self.signed_at,
            self.on_behalf_of.as_deref(),
            payload,
        );
        key.verify(&bytes, &raw)
            .map_err(|_| SignatureError::BadSignature)?;
        Ok(signed_at)
    }
}

/// What kind of actor a principal is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PrincipalKind {
    /// A peer agent (e.g. the security agent).
    Agent,
    /// A person.
    Human,
    /// One of our own services (e.g. the chat bridge).
    Service,
}

/// Who may send a request of a type ([`Message::ACCESS`]): the contract says it, so
/// a service cannot forget to protect an endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Access {
    /// Anyone (read-only requests).
    #[default]
    Open,
    /// Any verified, unrevoked principal.
    Signed,
    /// A verified principal holding the role.
    Role(Role),
}

impl Access {
    /// A verified principal holding the operator role.
    pub const OPERATOR: Access = Access::Role(Role::Operator);
    /// A verified principal holding the approver role.
    pub const APPROVER: Access = Access::Role(Role::Approver);
    /// A verified admin.
    pub const ADMIN: Access = Access::Role(Role::Admin);

    /// How the docs name it: `open`, `signed` or the role.
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Open => "open",
            Access::Signed => "signed",
            Access::Role(role) => role.as_str(),
        }
    }
}

/// A right a principal holds. Roles come from the registry, never from a request.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Manages the registry, overrides policy; holds every other role.
    Admin,
    /// Approves or rejects plans.
    Approver,
    /// Submits tasks and runs rollouts, incident commands and the like.
    Operator,
    /// May act on behalf of another principal (a chat bridge for a human).
    Delegate,
}

impl Role {
    /// Its name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Approver => "approver",
            Role::Operator => "operator",
            Role::Delegate => "delegate",
        }
    }
}

/// One entry of the identity registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Principal {
    /// Stable id, e.g. `alice` or `security-agent` (see [`valid_principal_id`]).
    pub id: String,
    /// Agent, human or service.
    pub kind: PrincipalKind,
    /// What it may do.
    #[serde(default)]
    pub roles: Vec<Role>,
    /// Shown to people.
    #[serde(default)]
    pub display_name: String,
    /// A revoked principal is refused whatever key it signs with.
    #[serde(default)]
    pub revoked: bool,
    /// Its NKey user public keys (several during a rotation).
    #[serde(default)]
    pub keys: Vec<String>,
    /// Its source attributes (e.g. `toronto://agents/security`): a message claiming one
    /// of these must be signed by this principal.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<String>,
    /// Its immutable chat user ids, `<platform>:<user id>` (e.g. `slack:U024BE7LH`,
    /// `mattermost:abc123`), never a user name (users can change those): the chat
    /// bridge acts on behalf of this principal for commands from these users.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chat_ids: Vec<String>,
}

impl Principal {
    /// Whether it holds `role` (an admin holds every role).
    pub fn has_role(&self, role: Role) -> bool {
        self.roles.contains(&role) || self.roles.contains(&Role::Admin)
    }
}

/// The largest page of [`IdentityList`].
pub const MAX_IDENTITY_PAGE: usize = 500;

/// Adds or replaces a principal (`<prefix>.devops.v1.planner.identity.put`; admin only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IdentityPut {
    /// The principal as it is to be stored.
    pub principal: Principal,
}

impl Message for IdentityPut {
    const NAME: &'static str = "identity.put";
    const MAJOR: u32 = 1;
    const ACCESS: Access = Access::ADMIN;
}

/// Revokes a principal: every key of it is refused from now on
/// (`<prefix>.devops.v1.planner.identity.revoke`; admin only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IdentityRevoke {
    /// The principal's id.
    pub id: String,
}

impl Message for IdentityRevoke {
    const NAME: &'static str = "identity.revoke";
    const MAJOR: u32 = 1;
    const ACCESS: Access = Access::ADMIN;
}

/// Lists principals by id (`<prefix>.devops.v1.planner.identity.list`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IdentityList {
    /// Start after this id (the `next` of the previous page).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// At most this many (default 100, at most 500).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

impl Message for IdentityList {
    const NAME: &'static str = "identity.list";
    const MAJOR: u32 = 1;
}

/// A page of principals, or the one principal a put or revoke left.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Identities {
    /// The principals, ordered by id.
    pub items: Vec<Principal>,
    /// The `after` of the next page, when there may be one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

impl Message for Identities {
    const NAME: &'static str = "identity.page";
    const MAJOR: u32 = 1;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test vector of `docs/trust-model.md`.
    const VECTOR_SEED: &str = "SUAAAAICAMCAKBQHBAEQUCYMBUHA6EARCIJRIFIWC4MBSGQ3DQOR4H776Y";
    const VECTOR_SUBJECT: &str = "toronto.devops.v1.planner.plan.approve";
    const VECTOR_AT: &str = "2026-01-01T00:00:00.000Z";
    const VECTOR_PAYLOAD: &[u8] = br#"{"plan_id":"p-1"}"#;

    fn at() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(VECTOR_AT).unwrap().into()
    }

    #[test]
    fn the_documented_vector_signs_and_verifies() {
        let key = KeyPair::from_seed(VECTOR_SEED).unwrap();
        let sig = Signature::sign(&key, VECTOR_SUBJECT, VECTOR_PAYLOAD, None, at()).unwrap();
        assert_eq!(sig.signed_at, VECTOR_AT);
        assert_eq!(
            signed_bytes(VECTOR_SUBJECT, VECTOR_AT, None, VECTOR_PAYLOAD),
            b"toronto-request-signature-v1\ntoronto.devops.v1.planner.plan.approve\n2026-01-01T00:00:00.000Z\n\n{\"plan_id\":\"p-1\"}"
        );
        // ed25519 is deterministic: the documented values must come out exactly.
        assert_eq!(sig.signer, VECTOR_PUBLIC);
        assert_eq!(sig.signature, VECTOR_SIGNATURE);
        assert_eq!(sig.verify(VECTOR_SUBJECT, VECTOR_PAYLOAD).unwrap(), at());
    }

    const VECTOR_PUBLIC: &str = "UAB2CB576PHBBPQ5ODORRZ2LYCMWPZGWGCN2KDK7DXOIMZASKUY3RLKK";
    const VECTOR_SIGNATURE: &str =
        "BB00vN43V0H8rV4gB5UUNJKNd9ZeyzvGMAaKL-Y52fUXd63AM4cBcKUdZaMim4LrpbZhoOdb9n6YYGe3LzdnDw";

    #[test]
    fn any_change_breaks_the_signature() {
        let key = KeyPair::new_user();
        let sig = Signature::sign(&key, "a.b", b"payload", Some("alice"), Utc::now()).unwrap();
        assert!(sig.verify("a.b", b"payload").is_ok());
        assert_eq!(
            sig.verify("a.c", b"payload"),
            Err(SignatureError::BadSignature)
        );
        assert_eq!(
            sig.verify("a.b", b"payloae"),
            Err(SignatureError::BadSignature)
        );
        let mut other = sig.clone();
        other.on_behalf_of = Some("mallory".into());
        assert_eq!(
            other.verify("a.b", b"payload"),
            Err(SignatureError::BadSignature)
        );
        let mut other = sig.clone();
        other.signed_at = "2020-01-01T00:00:00.000Z".into();
        assert_eq!(
            other.verify("a.b", b"payload"),
            Err(SignatureError::BadSignature)
        );
        let mut other = sig.clone();
        other.signer = KeyPair::new_user().public_key();
        assert_eq!(
            other.verify("a.b", b"payload"),
            Err(SignatureError::BadSignature)
        );
    }

    #[test]
    fn malformed_headers_are_named() {
        let key = KeyPair::new_user();
        let sig = Signature::sign(&key, "s", b"p", None, Utc::now()).unwrap();
        let mut bad = sig.clone();
        bad.signature = "!!".into();
        assert_eq!(bad.verify("s", b"p"), Err(SignatureError::BadEncoding));
        let mut bad = sig.clone();
        bad.signer = KeyPair::new_account().public_key();
        assert_eq!(bad.verify("s", b"p"), Err(SignatureError::NotAUserKey));
        let mut bad = sig.clone();
        bad.signed_at = "yesterday".into();
        assert_eq!(bad.verify("s", b"p"), Err(SignatureError::BadSignedAt));
        assert_eq!(
            Signature::sign(&KeyPair::new_account(), "s", b"p", None, Utc::now()),
            Err(SignatureError::NotAUserSeed)
        );
        assert_eq!(
            Signature::sign(&key, "s", b"p", Some("a\nb"), Utc::now()),
            Err(SignatureError::BadOnBehalfOf)
        );
        assert_eq!(
            Signature::from_headers(|_| None),
            Err(SignatureError::Unsigned)
        );
        assert_eq!(
            Signature::from_headers(|h| (h == SIGNER_HEADER).then_some("U")),
            Err(SignatureError::Missing(SIGNATURE_HEADER))
        );
        let headers = sig.headers();
        let read = Signature::from_headers(|name| {
            headers.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
        })
        .unwrap();
        assert_eq!(read, sig);
    }

    #[test]
    fn admin_holds_every_role() {
        let p = Principal {
            id: "root".into(),
            kind: PrincipalKind::Human,
            roles: vec![Role::Admin],
            display_name: String::new(),
            revoked: false,
            keys: vec![],
            sources: vec![],
            chat_ids: vec![],
        };
        assert!(p.has_role(Role::Approver) && p.has_role(Role::Delegate));
        assert!(valid_principal_id("security-agent.v2"));
        assert!(!valid_principal_id("a b") && !valid_principal_id("") && !valid_principal_id(".a"));
    }
}
