//! Verified identity: who sent a request, checked before the handler runs.
//!
//! A service's [`Authenticator`] holds the mode ([`AuthMode`]), the [`Registry`] of
//! principals and the [`ReplayGuard`]. Each endpoint has an [`AccessRule`]
//! (read-only endpoints are [`AccessRule::Open`]); for any other rule the service host
//! calls [`Authenticator::admit`] with the request's headers and bytes before the
//! handler, and the handler reads the verified [`Caller`] with
//! [`Request::principal`](crate::Request::principal). The signed bytes and headers are
//! defined in [`toronto_protocol::auth`]; `docs/trust-model.md` is the reviewer's page.

mod audit;
mod buckets;
mod registry;
mod replay;
mod signed;
mod signer;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use toronto_protocol::auth::{Principal, Role, SignatureError};
use toronto_protocol::{ErrorBody, ErrorCode, Subjects};

pub use audit::AuditSink;
pub use buckets::bucket_configs;
pub use registry::{BOOTSTRAP_ADMIN, Registry};
pub use replay::ReplayGuard;
pub use signer::{SeedError, Signer, install_process_signer, process_signer};

/// Whether signatures are checked and enforced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// Change requests must be signed by a known principal with the role.
    #[default]
    Required,
    /// Signatures are checked and refusals logged, but the request goes on.
    Permissive,
    /// Nothing is checked (a warning is logged at start).
    Off,
}

impl AuthMode {
    /// The mode's name as configured.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::Required => "required",
            AuthMode::Permissive => "permissive",
            AuthMode::Off => "off",
        }
    }

    /// Parses `required`, `permissive` or `off`.
    pub fn parse(value: &str) -> Option<Self> {
        match value.trim().to_ascii_lowercase().as_str() {
            "required" => Some(AuthMode::Required),
            "permissive" => Some(AuthMode::Permissive),
            "off" => Some(AuthMode::Off),
            _ => None,
        }
    }
}

/// The identity settings every service reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// `required`, `permissive` or `off` (`TORONTO_AUTH`).
    pub mode: AuthMode,
    /// Public keys of the first admin (`TORONTO_AUTH_ADMINS`).
    pub admins: Vec<String>,
    /// Seconds a signed-at time may be from now (`TORONTO_AUTH_WINDOW_SECONDS`).
    pub window_secs: u64,
    /// The seed file clients sign with (`TORONTO_IDENTITY_FILE`).
    pub identity_file: Option<std::path::PathBuf>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            mode: AuthMode::Required,
            admins: Vec::new(),
            window_secs: 120,
            identity_file: None,
        }
    }
}

/// Who may call an endpoint (the contract's [`Access`](toronto_protocol::auth::Access)).
pub use toronto_protocol::auth::Access as AccessRule;

/// The verified sender of a request.
#[derive(Debug, Clone, PartialEq)]
pub struct Caller {
    /// The principal whose key signed it.
    pub signer: Arc<Principal>,
    /// The key it signed with.
    pub key: String,
    /// The principal it acts for, when the signer is a delegate.
    pub on_behalf_of: Option<Arc<Principal>>,
    /// When it was signed.
    pub signed_at: DateTime<Utc>,
}

impl Caller {
    /// The principal authorization is checked against: the human a delegate acts for,
    /// or else the signer.
    pub fn principal(&self) -> &Principal {
        self.on_behalf_of.as_deref().unwrap_or(&self.signer)
    }
}

/// Why the identity machinery failed (not a refusal of the caller).
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// A KV bucket could not be made, read or written.
    #[error("identity bucket: {0}")]
    Bucket(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A principal record is over the size limit.
    #[error("principal record of {size} bytes, over the {limit}-byte limit")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A principal record is not readable.
    #[error("unreadable principal record: {0}")]
    Record(#[source] serde_json::Error),
    /// A principal to store is not valid.
    #[error("invalid principal: {0}")]
    BadPrincipal(String),
}

/// Why a request was refused.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// No signature at all.
    #[error("unauthorized: the request is not signed")]
    Unsigned,
    /// The signature is malformed or does not match.
    #[error("unauthorized: {0}")]
    Signature(#[source] SignatureError),
    /// Signed too long ago (or in the future).
    #[error("unauthorized: signed at {signed_at}, outside the {window_secs} s window")]
    Stale {
        /// The signed-at time.
        signed_at: DateTime<Utc>,
        /// The window.
        window_secs: u64,
    },
    /// The envelope id was already taken.
    #[error("unauthorized: message {id} was already received with this signature (replay)")]
    Replayed {
        /// The envelope id.
        id: String,
    },
    /// No principal holds the key.
    #[error("unauthorized: unknown key {key}")]
    UnknownKey {
        /// The signer's public key.
        key: String,
    },
    /// The principal (signer or the one acted for) is revoked.
    #[error("unauthorized: principal `{id}` is revoked")]
    Revoked {
        /// Its id.
        id: String,
    },
    /// The principal acted for does not exist.
    #[error("unauthorized: unknown principal `{id}` in on-behalf-of")]
    UnknownOnBehalfOf {
        /// The id given.
        id: String,
    },
    /// The signer acts for someone without the `delegate` role.
    #[error("forbidden: `{id}` may not act on behalf of others (no delegate role)")]
    NotDelegate {
        /// The signer's id.
        id: String,
    },
    /// The principal lacks the role.
    #[error("forbidden: `{id}` does not hold the {role:?} role")]
    MissingRole {
        /// The principal's id.
        id: String,
        /// The role needed.
        role: Role,
    },
    /// The envelope claims a source that belongs to another principal.
    #[error("forbidden: source `{source_attr}` belongs to `{owner}`, not to `{id}`")]
    ForgedSource {
        /// The claimed source.
        source_attr: String,
        /// Its owner.
        owner: String,
        /// The signer.
        id: String,
    },
    /// A verified principal asked for something a rule of the service forbids (the
    /// two-person rule, a policy override by a non-admin, ...).
    #[error("forbidden: {0}")]
    Policy(String),
    /// The service could not open the identity buckets at start.
    #[error("identity check unavailable: the identity registry could not be opened")]
    NoRegistry,
    /// The registry or replay bucket could not be used.
    #[error("identity check unavailable: {0}")]
    Unavailable(#[source] AuthError),
}

impl Refusal {
    /// The wire code: 401, 403, or 503 when the check itself failed.
    pub fn code(&self) -> ErrorCode {
        match self {
            Refusal::NotDelegate { .. }
            | Refusal::MissingRole { .. }
            | Refusal::Policy(_)
            | Refusal::ForgedSource { .. } => ErrorCode::Forbidden,
            Refusal::Unavailable(_) | Refusal::NoRegistry => ErrorCode::Unavailable,
            _ => ErrorCode::Unauthorized,
        }
    }
}

impl From<Refusal> for ErrorBody {
    fn from(r: Refusal) -> Self {
        ErrorBody::new(r.code(), r.to_string())
    }
}

/// What the service host knows of one request, for [`Authenticator::admit`].
#[derive(Debug, Clone, Copy)]
pub struct Presented<'a> {
    /// The subject it was sent to.
    pub subject: &'a str,
    /// Its headers.
    pub headers: Option<&'a HeaderMap>,
    /// Its bytes as received.
    pub payload: &'a [u8],
    /// The envelope id.
    pub id: &'a str,
    /// The envelope's `source`.
    pub source: &'a str,
    /// What it is about (the envelope's `subject` attribute), for the audit.
    pub target: Option<&'a str>,
}

/// What [`Authenticator::admit`] needs of a NATS message.
pub fn presented<'a>(
    message: &'a async_nats::Message,
    id: &'a str,
    source: &'a str,
    target: Option<&'a str>,
) -> Presented<'a> {
    Presented {
        subject: message.subject.as_str(),
        headers: message.headers.as_ref(),
        payload: &message.payload,
        id,
        source,
        target,
    }
}

/// Verifies requests for one service.
#[derive(Debug)]
pub struct Authenticator {
    mode: AuthMode,
    registry: Option<Registry>,
    replay: Option<ReplayGuard>,
    rules: RwLock<HashMap<String, AccessRule>>,
    audit: std::sync::OnceLock<AuditSink>,
}

impl Authenticator {
    /// Opens the registry and replay buckets (`<prefix>_identities`,
    /// `<prefix>_replay`) and follows the registry until `stop`. With mode `off`,
    /// nothing is opened and a warning is logged.
    pub async fn start(
        js: &jetstream::Context,
        subjects: &Subjects,
        config: &AuthConfig,
        replicas: usize,
        stop: CancellationToken,
    ) -> Result<Self, AuthError> {
        if config.mode == AuthMode::Off {
            tracing::warn!(
                "TORONTO_AUTH=off: requests are not verified; anyone on the bus can ask for changes"
            );
            return Ok(Self::off());
        }
        let window = Duration::from_secs(config.window_secs.max(1));
        // Open what `toronto bootstrap` made; create only what is missing (a service
        // user of deploy/nats/permissions.conf may not create or update a bucket).
        let [identities, replay] = bucket_configs(subjects, config, replicas).map(|c| async {
            match js.get_key_value(c.bucket.as_str()).await {
                Ok(store) => Ok(store),
                Err(_) => js
                    .create_key_value(c)
                    .await
                    .map_err(|e| AuthError::Bucket(Box::new(e))),
            }
        });
        let identities = identities.await?;
        let replay = replay.await?;
        let registry = Registry::start(identities, &config.admins, stop).await?;
        if config.mode == AuthMode::Permissive {
            tracing::warn!("TORONTO_AUTH=permissive: refusals are logged, not enforced");
        }
        Ok(Self {
            mode: config.mode,
            registry: Some(registry),
            replay: Some(ReplayGuard::new(replay, window)),
            rules: RwLock::new(HashMap::new()),
            audit: std::sync::OnceLock::new(),
        })
    }

    /// An authenticator that checks nothing.
    pub fn off() -> Self {
        Self {
            mode: AuthMode::Off,
            registry: None,
            replay: None,
            rules: RwLock::new(HashMap::new()),
            audit: std::sync::OnceLock::new(),
        }
    }

    /// An authenticator whose buckets could not be opened: with mode `required`,
    /// protected endpoints refuse with 503 (fail closed); open endpoints answer.
    pub fn unavailable(mode: AuthMode) -> Self {
        Self {
            mode,
            ..Self::off()
        }
    }

    /// Records every decision from now on as an `audit.decision` event (once).
    pub fn set_audit(&self, sink: AuditSink) {
        let _ = self.audit.set(sink);
    }

    /// Records a decision a service made itself on a verified request (e.g. the
    /// two-person rule): `refusal` is `None` when it allowed it.
    pub async fn record(
        &self,
        action: &str,
        request: &Presented<'_>,
        caller: Option<&Caller>,
        refusal: Option<&Refusal>,
    ) {
        if let Some(sink) = self.audit.get() {
            let outcome = match refusal {
                None => toronto_protocol::audit::AuditOutcome::Allowed,
                Some(_) => toronto_protocol::audit::AuditOutcome::Refused,
            };
            let decision = sink.decision(action, request, outcome, caller, refusal);
            sink.publish(decision).await;
        }
    }

    /// The mode.
    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    /// The registry (none when off).
    pub fn registry(&self) -> Option<&Registry> {
        self.registry.as_ref()
    }

    /// Sets the rule of endpoint `name` (default [`AccessRule::Open`]).
    pub fn protect(&self, name: &str, rule: AccessRule) {
        // Endpoints are named by their verb with dashes for dots (micro v1 names), so
        // `identity.put` and `identity-put` name the same endpoint.
        self.rules
            .write()
            .expect("rules lock")
            .insert(name.replace('.', "-"), rule);
    }

    /// The rule of endpoint `name`.
    pub fn rule(&self, name: &str) -> AccessRule {
        self.rules
            .read()
            .expect("rules lock")
            .get(name.replace('.', "-").as_str())
            .copied()
            .unwrap_or_default()
    }

    /// Checks a request to endpoint `name` against its rule. `Ok(None)` when the rule
    /// is open or the mode is off; in permissive mode a refusal is logged and the
    /// request goes on unverified.
    pub async fn admit(
        &self,
        name: &str,
        request: Presented<'_>,
    ) -> Result<Option<Arc<Caller>>, Refusal> {
        let rule = self.rule(name);
        if rule == AccessRule::Open || self.mode == AuthMode::Off {
            return Ok(None);
        }
        use toronto_protocol::audit::AuditOutcome;
        let audit = |outcome, caller: Option<&Caller>, refusal: Option<&Refusal>| {
            self.audit.get().map(|sink| {
                (
                    sink,
                    sink.decision(name, &request, outcome, caller, refusal),
                )
            })
        };
        match self.verify(rule, request).await {
            Ok(caller) => {
                if let Some((sink, d)) = audit(AuditOutcome::Allowed, Some(&caller), None) {
                    sink.publish(d).await;
                }
                Ok(Some(Arc::new(caller)))
            }
            Err(refusal) if self.mode == AuthMode::Permissive => {
                tracing::warn!(endpoint = name, reason = %refusal, "would refuse (permissive mode)");
                if let Some((sink, d)) = audit(AuditOutcome::WouldRefuse, None, Some(&refusal)) {
                    sink.publish(d).await;
                }
                Ok(None)
            }
            Err(refusal) => {
                tracing::info!(endpoint = name, reason = %refusal, "request refused");
                if let Some((sink, d)) = audit(AuditOutcome::Refused, None, Some(&refusal)) {
                    sink.publish(d).await;
                }
                Err(refusal)
            }
        }
    }

    /// Checks a message taken from a durable queue (a JetStream stream) against the
    /// rule of `name`, like [`Authenticator::admit`], with two differences: its
    /// signed-at time is compared with when the stream stored it, `stored_at` (a task
    /// may wait in the queue longer than the window), and its signature is not recorded
    /// as seen, since the stream redelivers it until it is acknowledged (the consumer's
    /// idempotency, by envelope id, makes a replay harmless).
    pub async fn admit_queued(
        &self,
        name: &str,
        request: Presented<'_>,
        stored_at: DateTime<Utc>,
    ) -> Result<Option<Arc<Caller>>, Refusal> {
        let rule = self.rule(name);
        if rule == AccessRule::Open || self.mode == AuthMode::Off {
            return Ok(None);
        }
        use toronto_protocol::audit::AuditOutcome;
        let (outcome, result) = match self.check(rule, request, stored_at, false).await {
            Ok(caller) => (AuditOutcome::Allowed, Ok(Some(Arc::new(caller)))),
            Err(refusal) if self.mode == AuthMode::Permissive => {
                tracing::warn!(endpoint = name, reason = %refusal, "would refuse (permissive mode)");
                (AuditOutcome::WouldRefuse, Err(refusal))
            }
            Err(refusal) => (AuditOutcome::Refused, Err(refusal)),
        };
        if let Some(sink) = self.audit.get() {
            let (caller, refusal) = match &result {
                Ok(caller) => (caller.as_deref(), None),
                Err(refusal) => (None, Some(refusal)),
            };
            sink.publish(sink.decision(name, &request, outcome, caller, refusal))
                .await;
        }
        match result {
            Err(_) if outcome == AuditOutcome::WouldRefuse => Ok(None),
            other => other,
        }
    }

    /// Verifies a signed reply claimed to come from `source` (e.g. the gate verdict of
    /// `toronto://agents/security`): when a principal of the registry owns that source,
    /// the reply must be signed by it over the reply `subject` and `payload`, within the
    /// time window. `Ok(None)`: no principal owns the source (or nothing is checked in
    /// mode `off`), so nobody can be asked to sign; `Ok(Some(id))`: signed by its owner.
    pub fn verify_reply(
        &self,
        source: &str,
        subject: &str,
        headers: Option<&HeaderMap>,
        payload: &[u8],
    ) -> Result<Option<String>, Refusal> {
        let (Some(registry), Some(replay)) = (&self.registry, &self.replay) else {
            return Ok(None);
        };
        let Some(owner) = registry.owner_of_source(source) else {
            return Ok(None);
        };
        let (_, _, signer) =
            signed::verified(registry, replay, headers, subject, payload, Utc::now())?;
        if signer.id != owner {
            return Err(Refusal::ForgedSource {
                source_attr: source.to_owned(),
                owner,
                id: signer.id.clone(),
            });
        }
        Ok(Some(owner))
    }

    /// Verifies a request against `rule` whatever the mode (for tests).
    pub async fn verify(
        &self,
        rule: AccessRule,
        request: Presented<'_>,
    ) -> Result<Caller, Refusal> {
        self.check(rule, request, Utc::now(), true).await
    }

    async fn check(
        &self,
        rule: AccessRule,
        request: Presented<'_>,
        now: DateTime<Utc>,
        record: bool,
    ) -> Result<Caller, Refusal> {
        let (Some(registry), Some(replay)) = (&self.registry, &self.replay) else {
            return Err(Refusal::NoRegistry);
        };
        let (signature, signed_at, signer) = signed::verified(
            registry,
            replay,
            request.headers,
            request.subject,
            request.payload,
            now,
        )?;
        let signature_text = signature.signature.clone();
        let on_behalf_of = match &signature.on_behalf_of {
            None => None,
            Some(id) => {
                if !signer.has_role(Role::Delegate) {
                    return Err(Refusal::NotDelegate {
                        id: signer.id.clone(),
                    });
                }
                let human = registry
                    .by_id(id)
                    .ok_or_else(|| Refusal::UnknownOnBehalfOf { id: id.clone() })?;
                if human.revoked {
                    return Err(Refusal::Revoked { id: id.clone() });
                }
                Some(human)
            }
        };
        if let Some(owner) = registry.owner_of_source(request.source)
            && owner != signer.id
        {
            return Err(Refusal::ForgedSource {
                source_attr: request.source.to_owned(),
                owner,
                id: signer.id.clone(),
            });
        }
        let caller = Caller {
            signer,
            key: signature.signer,
            on_behalf_of,
            signed_at,
        };
        if let AccessRule::Role(role) = rule
            && !caller.principal().has_role(role)
        {
            return Err(Refusal::MissingRole {
                id: caller.principal().id.clone(),
                role,
            });
        }
        if record {
            replay.check_new(&signature_text, request.id).await?;
        }
        Ok(caller)
    }
}
