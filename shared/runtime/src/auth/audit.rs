//! Publishes every authorization decision as an `audit.decision` event
//! (`<prefix>.devops.v1.events.audit.decision`, kept by the events stream).
//!
//! The event is published without waiting for the stream's ack: a decision must not
//! wait on the audit, and a lost publish is counted and logged, never silent.

use async_nats::{Client, HeaderMap};
use bytes::Bytes;
use toronto_protocol::audit::{AuditDecision, AuditOutcome};
use toronto_protocol::{Encoding, Envelope, Message, encode};

use super::{Caller, Presented, Refusal};

/// Where a service's decisions go.
#[derive(Debug, Clone)]
pub struct AuditSink {
    client: Client,
    subject: String,
    service: String,
    source: String,
}

impl AuditSink {
    /// Decisions of `service` (whose envelope `source` is `source`) go to `subject`.
    pub fn new(client: Client, subject: String, service: &str, source: String) -> Self {
        Self {
            client,
            subject,
            service: service.to_owned(),
            source,
        }
    }

    /// The event for a decision on `action` about `request`.
    pub fn decision(
        &self,
        action: &str,
        request: &Presented<'_>,
        outcome: AuditOutcome,
        caller: Option<&Caller>,
        refusal: Option<&Refusal>,
    ) -> AuditDecision {
        let header = |name: &str| {
            request
                .headers
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().chars().take(128).collect::<String>())
        };
        let principal = caller.map(|c| c.principal().id.clone());
        let signer = caller
            .filter(|c| c.on_behalf_of.is_some())
            .map(|c| c.signer.id.clone());
        AuditDecision {
            service: self.service.clone(),
            action: action.to_owned(),
            subject: request.subject.to_owned(),
            target: request.target.map(str::to_owned),
            principal,
            signer,
            key: caller
                .map(|c| c.key.clone())
                .or_else(|| header(toronto_protocol::auth::SIGNER_HEADER)),
            on_behalf_of: header(toronto_protocol::auth::ON_BEHALF_OF_HEADER),
            outcome,
            code: refusal.map(|r| r.code().as_str().to_owned()),
            reason: refusal.map(|r| r.to_string()),
            request_id: request.id.to_owned(),
            at: chrono::Utc::now(),
        }
    }

    /// Publishes `decision` (fire and forget; a failure is logged).
    pub async fn publish(&self, decision: AuditDecision) {
        let envelope = Envelope::builder(self.source.clone(), decision)
            .subject(self.service.clone())
            .build();
        let bytes = match encode(&envelope, Encoding::Json) {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::error!(error = %e, "audit event could not be encoded");
                return;
            }
        };
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", envelope.id.to_string().as_str());
        headers.insert(
            toronto_protocol::codec::CONTENT_TYPE_HEADER,
            Encoding::Json.content_type(),
        );
        if let Err(e) = self
            .client
            .publish_with_headers(self.subject.clone(), headers, Bytes::from(bytes))
            .await
        {
            tracing::error!(error = %e, r#type = AuditDecision::NAME, "audit event not published");
        }
    }
}
