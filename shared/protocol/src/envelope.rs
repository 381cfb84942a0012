//! The CloudEvents 1.0 envelope (structured mode) with the contract's extension
//! attributes `correlationid`, `causationid`, `priority` and `traceparent`.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::ProtocolError;
use crate::message::{Message, MessageType};
use crate::trace::TraceParent;

mod time;

/// The only CloudEvents version we speak.
pub const SPEC_VERSION: &str = "1.0";

/// How urgent a message is. Consumers may use it to order work; it never changes semantics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// Background work.
    Low,
    /// The default.
    #[default]
    Normal,
    /// Ahead of normal work.
    High,
    /// Incidents and rollbacks.
    Critical,
}

impl Priority {
    fn parse(value: &str) -> Option<Self> {
        match value {
            "low" => Some(Priority::Low),
            "normal" => Some(Priority::Normal),
            "high" => Some(Priority::High),
            "critical" => Some(Priority::Critical),
            _ => None,
        }
    }
}

/// A CloudEvents envelope around a payload `T`.
///
/// Unknown extension attributes on incoming messages are tolerated and dropped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Envelope<T> {
    /// Always `1.0`.
    pub specversion: String,
    /// Unique id of this message: any non-empty string, as CloudEvents allows (a
    /// UUID v7 when we make it). Also the `Nats-Msg-Id` of JetStream publishes.
    #[schemars(length(min = 1))]
    pub id: String,
    /// Who sent it, e.g. `toronto://agents/developer/alice`.
    pub source: String,
    /// `ai.toronto.devops.<name>.v<N>`.
    #[serde(rename = "type")]
    pub ty: String,
    /// When it was made (RFC 3339).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "time::serialize"
    )]
    pub time: Option<DateTime<Utc>>,
    /// Encoding of `data`; `application/json` for ours.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datacontenttype: Option<String>,
    /// The schema of `data`: an absolute URI, `https://toronto.dev/schemas/` followed by
    /// the schema's path in the repository's `schemas/` folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataschema: Option<String>,
    /// What the message is about, e.g. the service name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Ties every message of one flow together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlationid: Option<String>,
    /// The id of the message that caused this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causationid: Option<String>,
    /// How urgent it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
    /// W3C trace context of the sender.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// The payload. CloudEvents makes `data` optional: a received envelope without it
    /// decodes into a payload type only when that type can be made from no fields
    /// (a request whose fields all have defaults); a raw envelope holds `null` for it.
    pub data: T,
}

/// An outgoing envelope whose attributes and payload are borrowed, so that a reply can
/// be encoded without copying them. It serializes exactly as [`Envelope`] does (same
/// attributes, same order, same omissions); [`crate::codec::encode_ref`] encodes it.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct EnvelopeRef<'a, T> {
    /// Always `1.0`.
    pub specversion: &'a str,
    /// Unique id of this message.
    pub id: &'a str,
    /// Who sent it.
    pub source: &'a str,
    /// `ai.toronto.devops.<name>.v<N>`.
    #[serde(rename = "type")]
    pub ty: &'a str,
    /// When it was made.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "time::serialize"
    )]
    pub time: Option<DateTime<Utc>>,
    /// Encoding of `data`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub datacontenttype: Option<&'a str>,
    /// The schema of `data`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dataschema: Option<&'a str>,
    /// What the message is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<&'a str>,
    /// Ties every message of one flow together.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correlationid: Option<&'a str>,
    /// The id of the message that caused this one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub causationid: Option<&'a str>,
    /// How urgent it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
    /// W3C trace context of the sender.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<&'a str>,
    /// The payload.
    pub data: &'a T,
}

/// The attributes that link a message to its flow, taken from a received or built envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowContext {
    /// The message's id.
    pub id: String,
    /// Its correlation id (its own id when it started the flow).
    pub correlationid: String,
    /// Its trace context, if any.
    pub traceparent: Option<TraceParent>,
}

impl<T> Envelope<T> {
    /// The attributes a reply or follow-up message inherits.
    pub fn flow(&self) -> FlowContext {
        FlowContext {
            id: self.id.clone(),
            correlationid: self
                .correlationid
                .clone()
                .unwrap_or_else(|| self.id.clone()),
            traceparent: self.traceparent.as_deref().and_then(TraceParent::parse),
        }
    }

    /// The envelope with its attributes and payload borrowed, to encode it (or a
    /// variant of it, e.g. with another `type`) without copying.
    pub fn borrowed(&self) -> EnvelopeRef<'_, T> {
        EnvelopeRef {
            specversion: &self.specversion,
            id: &self.id,
            source: &self.source,
            ty: &self.ty,
            time: self.time,
            datacontenttype: self.datacontenttype.as_deref(),
            dataschema: self.dataschema.as_deref(),
            subject: self.subject.as_deref(),
            correlationid: self.correlationid.as_deref(),
            causationid: self.causationid.as_deref(),
            priority: self.priority,
            traceparent: self.traceparent.as_deref(),
            data: &self.data,
        }
    }

    /// The parsed `type`.
    pub fn message_type(&self) -> Result<MessageType, ProtocolError> {
        self.ty.parse()
    }

    /// Replaces the payload, keeping every attribute.
    pub fn map_data<U>(self, f: impl FnOnce(T) -> U) -> Envelope<U> {
        Envelope {
            specversion: self.specversion,
            id: self.id,
            source: self.source,
            ty: self.ty,
            time: self.time,
            datacontenttype: self.datacontenttype,
            dataschema: self.dataschema,
            subject: self.subject,
            correlationid: self.correlationid,
            causationid: self.causationid,
            priority: self.priority,
            traceparent: self.traceparent,
            data: f(self.data),
        }
    }
}

impl<T: Message> Envelope<T> {
    /// Starts building an envelope for `data` sent by `source`.
    pub fn builder(source: impl Into<String>, data: T) -> EnvelopeBuilder<T> {
        EnvelopeBuilder::new(source, data)
    }
}

/// A received envelope whose attributes are validated and whose `data` is still untyped.
pub type RawEnvelope = Envelope<serde_json::Value>;

impl RawEnvelope {
    /// Converts `data` into the payload type `T`, checking that `type` names `T` at a
    /// supported major (the older major goes through [`Message::upgrade`]).
    pub fn into_typed<T: Message>(self) -> Result<Envelope<T>, ProtocolError> {
        let ty = self.message_type()?;
        T::check_type(&ty)?;
        let Envelope {
            specversion,
            id,
            source,
            ty: type_attr,
            time,
            datacontenttype,
            dataschema,
            subject,
            correlationid,
            causationid,
            priority,
            traceparent,
            data,
        } = self;
        let data = if data.is_null() {
            absent_data(&ty)?
        } else if ty.major == T::MAJOR {
            serde_json::from_value(data).map_err(|e| ProtocolError::InvalidData(e.to_string()))?
        } else {
            T::upgrade(ty.major, data)?
        };
        Ok(Envelope {
            specversion,
            id,
            source,
            ty: type_attr,
            time,
            datacontenttype,
            dataschema,
            subject,
            correlationid,
            causationid,
            priority,
            traceparent,
            data,
        })
    }
}

/// The payload `T` of an envelope without `data` (absent or `null`): `T` made from
/// no fields when it can be (a request whose fields all have defaults), otherwise
/// [`ProtocolError::MissingData`].
pub(crate) fn absent_data<T: Message>(ty: &MessageType) -> Result<T, ProtocolError> {
    let empty = serde_json::Value::Object(serde_json::Map::new());
    let made = if ty.major == T::MAJOR {
        serde_json::from_value(serde_json::Value::Null)
            .or_else(|_| serde_json::from_value(empty))
            .ok()
    } else {
        T::upgrade(ty.major, serde_json::Value::Null)
            .or_else(|_| T::upgrade(ty.major, empty))
            .ok()
    };
    made.ok_or_else(|| ProtocolError::MissingData { ty: ty.to_string() })
}

/// The wire form before validation: every attribute optional, so that a missing one
/// is reported by name rather than as a parse error. `D` is how `data` is held until
/// its type is known: a JSON value, or the raw JSON text (no intermediate tree).
#[derive(Debug, Deserialize)]
pub(crate) struct UncheckedEnvelope<D> {
    pub(crate) specversion: Option<String>,
    pub(crate) id: Option<String>,
    pub(crate) source: Option<String>,
    #[serde(rename = "type")]
    pub(crate) ty: Option<String>,
    pub(crate) time: Option<String>,
    pub(crate) datacontenttype: Option<String>,
    pub(crate) dataschema: Option<String>,
    pub(crate) subject: Option<String>,
    pub(crate) correlationid: Option<String>,
    pub(crate) causationid: Option<String>,
    pub(crate) priority: Option<String>,
    pub(crate) traceparent: Option<String>,
    #[serde(default = "Option::default")]
    pub(crate) data: Option<D>,
}

fn required(value: Option<String>, name: &'static str) -> Result<String, ProtocolError> {
    match value {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(ProtocolError::MissingAttribute(name)),
    }
}

impl<D> UncheckedEnvelope<D> {
    /// An envelope with no attribute set yet, for a decoder to fill in.
    pub(crate) fn empty() -> Self {
        Self {
            specversion: None,
            id: None,
            source: None,
            ty: None,
            time: None,
            datacontenttype: None,
            dataschema: None,
            subject: None,
            correlationid: None,
            causationid: None,
            priority: None,
            traceparent: None,
            data: None,
        }
    }

    /// Validates the attributes: required ones present (`id` any non-empty string), `specversion` 1.0,
    /// `type` well formed, `time` RFC 3339, `priority` known. An invalid `traceparent`
    /// is dropped, as W3C trace context asks.
    pub(crate) fn validate(self) -> Result<Envelope<Option<D>>, ProtocolError> {
        let specversion = required(self.specversion, "specversion")?;
        if specversion != SPEC_VERSION {
            return Err(ProtocolError::InvalidAttribute {
                attribute: "specversion",
                reason: format!("`{specversion}` is not supported; use `1.0`"),
            });
        }
        let id = required(self.id, "id")?;
        let source = required(self.source, "source")?;
        let ty = required(self.ty, "type")?;
        MessageType::parts(&ty).map_err(|why| crate::message::invalid_type(&ty, why))?;
        let time = self
            .time
            .map(|t| {
                DateTime::parse_from_rfc3339(&t)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|_| ProtocolError::InvalidAttribute {
                        attribute: "time",
                        reason: format!("`{t}` is not an RFC 3339 timestamp"),
                    })
            })
            .transpose()?;
        let priority = self
            .priority
            .map(|p| {
                Priority::parse(&p).ok_or_else(|| ProtocolError::InvalidAttribute {
                    attribute: "priority",
                    reason: format!("`{p}` is not one of low, normal, high, critical"),
                })
            })
            .transpose()?;
        let traceparent = self.traceparent.filter(|tp| TraceParent::is_valid(tp));
        Ok(Envelope {
            specversion,
            id,
            source,
            ty,
            time,
            datacontenttype: self.datacontenttype,
            dataschema: self.dataschema,
            subject: self.subject,
            correlationid: self.correlationid,
            causationid: self.causationid,
            priority,
            traceparent,
            data: self.data,
        })
    }
}

/// Builds an outgoing envelope: fresh UUID v7 id, current time, `type` and
/// `dataschema` from the payload type (or the event's own `type`, see
/// [`EnvelopeBuilder::event`]), and flow attributes from a parent message.
#[derive(Debug)]
pub struct EnvelopeBuilder<T> {
    source: String,
    data: T,
    ty: Option<MessageType>,
    subject: Option<String>,
    correlationid: Option<String>,
    causationid: Option<String>,
    priority: Option<Priority>,
    traceparent: Option<TraceParent>,
}

impl<T: Message> EnvelopeBuilder<T> {
    /// A builder for `data` sent by `source`.
    pub fn new(source: impl Into<String>, data: T) -> Self {
        Self {
            source: source.into(),
            data,
            ty: None,
            subject: None,
            correlationid: None,
            causationid: None,
            priority: None,
            traceparent: None,
        }
    }

    /// Makes this envelope the event `<entity>.<what>` (published on
    /// `<prefix>.devops.v1.events.<entity>.<what>`): its `type` becomes the event's own,
    /// [`crate::message::event_type`], instead of the payload's.
    pub fn event(mut self, entity: &str, what: &str) -> Self {
        self.ty = Some(crate::message::event_type(entity, what, T::MAJOR));
        self
    }

    /// Sets what the message is about.
    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = Some(subject.into());
        self
    }

    /// Sets the correlation id explicitly.
    pub fn correlationid(mut self, id: impl Into<String>) -> Self {
        self.correlationid = Some(id.into());
        self
    }

    /// Sets the priority.
    pub fn priority(mut self, priority: Priority) -> Self {
        self.priority = Some(priority);
        self
    }

    /// Sets the trace context.
    pub fn traceparent(mut self, traceparent: TraceParent) -> Self {
        self.traceparent = Some(traceparent);
        self
    }

    /// Makes this message a consequence of `parent`: same correlation id, causation id
    /// set to the parent's id, and a child span of the parent's trace.
    pub fn caused_by(mut self, parent: &FlowContext) -> Self {
        self.correlationid = Some(parent.correlationid.clone());
        self.causationid = Some(parent.id.clone());
        self.traceparent = Some(
            parent
                .traceparent
                .as_ref()
                .map(TraceParent::child)
                .unwrap_or_else(TraceParent::new_root),
        );
        self
    }

    /// Finishes the envelope.
    pub fn build(self) -> Envelope<T> {
        let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let id = String::from(&*Uuid::now_v7().hyphenated().encode_lower(&mut text));
        Envelope {
            specversion: SPEC_VERSION.to_owned(),
            id: id.clone(),
            source: self.source,
            ty: match self.ty {
                Some(ty) => ty.attribute(),
                None => crate::message::type_attribute(T::NAME, T::MAJOR),
            },
            time: Some(Utc::now()),
            datacontenttype: Some("application/json".to_owned()),
            dataschema: Some(T::schema_uri()),
            subject: self.subject,
            correlationid: Some(self.correlationid.unwrap_or(id)),
            causationid: self.causationid,
            priority: self.priority,
            traceparent: Some(
                self.traceparent
                    .unwrap_or_else(TraceParent::new_root)
                    .header_value(),
            ),
            data: self.data,
        }
    }
}

/// The longest id used as it is in a key or subject token by [`id_token`].
pub const MAX_ID_TOKEN_LEN: usize = 128;

/// A message id as one token of a NATS subject or KV key: the id itself when it is
/// made of letters, digits, `-` and `_` only (every UUID) and at most
/// [`MAX_ID_TOKEN_LEN`] bytes, else `h_` and the hex SHA-256 of the id. Two ids give
/// the same token only if they are equal (or their SHA-256 collide).
pub fn id_token(id: &str) -> std::borrow::Cow<'_, str> {
    let plain = !id.is_empty()
        && id.len() <= MAX_ID_TOKEN_LEN
        && !id.starts_with("h_")
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if plain {
        return std::borrow::Cow::Borrowed(id);
    }
    use sha2::Digest;
    let digest = sha2::Sha256::digest(id.as_bytes());
    let mut token = String::with_capacity(2 + 64);
    token.push_str("h_");
    for b in digest {
        token.push_str(&format!("{b:02x}"));
    }
    std::borrow::Cow::Owned(token)
}

/// A fresh message id (UUID v7).
pub fn new_id() -> Uuid {
    Uuid::now_v7()
}

/// The current time in RFC 3339, as the `time` attribute carries it.
pub fn now_rfc3339() -> String {
    Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_become_safe_tokens() {
        let uuid = new_id().to_string();
        assert_eq!(id_token(&uuid), uuid.as_str());
        assert_eq!(id_token("T-42_a"), "T-42_a");
        for odd in ["a b", "a.b", "x/y", "h_abc", "é", &"x".repeat(129)] {
            let token = id_token(odd);
            assert!(
                token.starts_with("h_") && token.len() == 66,
                "{odd}: {token}"
            );
            assert_eq!(token, id_token(odd));
        }
        assert_ne!(id_token("a b"), id_token("a.b"));
    }
}
