//! JSON and MessagePack codecs for envelopes, chosen by the `Content-Type` header, and
//! the binary content mode of the CloudEvents NATS binding ([`binary`]).
//!
//! MessagePack uses named maps and human-readable forms (ids and times as strings),
//! so the two encodings carry the same document.

use serde::{Deserialize, Serialize};

use crate::envelope::{Envelope, EnvelopeRef, FlowContext, RawEnvelope, UncheckedEnvelope};
use crate::error::ProtocolError;
use crate::message::Message;

/// The NATS header naming the encoding.
pub const CONTENT_TYPE_HEADER: &str = "Content-Type";
/// Structured-mode CloudEvents in JSON (the default).
pub const JSON_CONTENT_TYPE: &str = "application/cloudevents+json";
/// Structured-mode CloudEvents in MessagePack.
pub const MSGPACK_CONTENT_TYPE: &str = "application/cloudevents+msgpack";

/// The encoders' first buffer: the attributes alone take ~400 bytes, so start big
/// enough to grow rarely.
const INITIAL_CAPACITY: usize = 1024;

pub mod binary;
pub mod depth;
mod json;
mod msgpack;
mod one_pass;

pub use depth::{MAX_DEPTH, TooDeep};

/// Checks that a document in `encoding` nests at most [`MAX_DEPTH`] levels, before any
/// decoder runs: every decoder of this module does it first.
pub fn check_depth(bytes: &[u8], encoding: Encoding) -> Result<(), ProtocolError> {
    match encoding {
        Encoding::Json => depth::json(bytes),
        Encoding::MessagePack => depth::msgpack(bytes),
    }
    .map_err(|e| ProtocolError::Malformed {
        encoding: encoding.name(),
        reason: e.to_string(),
    })
}

/// Decodes untrusted JSON that is not an envelope (an HTTP body, a KV value, a bus
/// message read loosely) like `serde_json::from_slice`, refusing a document nested
/// deeper than [`MAX_DEPTH`] before parsing it.
pub fn from_json_bounded<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, serde_json::Error> {
    depth::json(bytes).map_err(<serde_json::Error as serde::de::Error>::custom)?;
    serde_json::from_slice(bytes)
}

/// Decodes untrusted MessagePack like `rmp_serde::from_slice`, refusing a document
/// nested deeper than [`MAX_DEPTH`] before parsing it.
pub fn from_msgpack_bounded<'a, T: Deserialize<'a>>(
    bytes: &'a [u8],
) -> Result<T, rmp_serde::decode::Error> {
    depth::msgpack(bytes).map_err(<rmp_serde::decode::Error as serde::de::Error>::custom)?;
    rmp_serde::from_slice(bytes)
}

/// An encoding of the envelope.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// JSON, the default when no `Content-Type` is given.
    #[default]
    Json,
    /// MessagePack via rmp-serde.
    MessagePack,
}

impl Encoding {
    /// The encoding named by a `Content-Type` value; absent means JSON. Parameters such
    /// as `; charset=utf-8` are ignored.
    pub fn from_content_type(value: Option<&str>) -> Result<Self, ProtocolError> {
        let value = match value {
            None | Some(JSON_CONTENT_TYPE) => return Ok(Encoding::Json),
            Some(MSGPACK_CONTENT_TYPE) => return Ok(Encoding::MessagePack),
            Some(value) => value,
        };
        let media = value
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        match media.as_str() {
            "" | "application/json" | JSON_CONTENT_TYPE => Ok(Encoding::Json),
            MSGPACK_CONTENT_TYPE | "application/msgpack" | "application/x-msgpack" => {
                Ok(Encoding::MessagePack)
            }
            _ => Err(ProtocolError::UnsupportedContentType(value.to_owned())),
        }
    }

    /// The `Content-Type` value to send.
    pub fn content_type(self) -> &'static str {
        match self {
            Encoding::Json => JSON_CONTENT_TYPE,
            Encoding::MessagePack => MSGPACK_CONTENT_TYPE,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Encoding::Json => "json",
            Encoding::MessagePack => "msgpack",
        }
    }
}

/// Encodes an envelope.
pub fn encode<T: Serialize>(
    envelope: &Envelope<T>,
    encoding: Encoding,
) -> Result<Vec<u8>, ProtocolError> {
    encode_document(envelope, encoding)
}

/// Encodes an envelope whose attributes are borrowed ([`EnvelopeRef`]): the same bytes
/// as [`encode`] of the owned envelope.
pub fn encode_ref<T: Serialize>(
    envelope: &EnvelopeRef<'_, T>,
    encoding: Encoding,
) -> Result<Vec<u8>, ProtocolError> {
    encode_document(envelope, encoding)
}

fn encode_document<E: Serialize>(
    envelope: &E,
    encoding: Encoding,
) -> Result<Vec<u8>, ProtocolError> {
    match encoding {
        Encoding::Json => json::encode(envelope, INITIAL_CAPACITY),
        Encoding::MessagePack => {
            let mut buf = Vec::with_capacity(INITIAL_CAPACITY);
            let mut serializer = rmp_serde::Serializer::new(&mut buf)
                .with_struct_map()
                .with_human_readable();
            envelope
                .serialize(&mut serializer)
                .map_err(|e| ProtocolError::Encode(e.to_string()))?;
            Ok(buf)
        }
    }
}

/// Decodes and validates an envelope, leaving `data` untyped.
pub fn decode_raw(bytes: &[u8], encoding: Encoding) -> Result<RawEnvelope, ProtocolError> {
    let unchecked: UncheckedEnvelope<serde_json::Value> = parse(bytes, encoding)?;
    Ok(unchecked
        .validate()?
        .map_data(|d| d.unwrap_or(serde_json::Value::Null)))
}

fn parse<'de, D: Deserialize<'de>>(
    bytes: &'de [u8],
    encoding: Encoding,
) -> Result<UncheckedEnvelope<D>, ProtocolError> {
    let malformed = |reason: String| ProtocolError::Malformed {
        encoding: encoding.name(),
        reason,
    };
    check_depth(bytes, encoding)?;
    match encoding {
        Encoding::Json => serde_json::from_slice(bytes).map_err(|e| malformed(e.to_string())),
        Encoding::MessagePack => {
            let mut de = rmp_serde::Deserializer::from_read_ref(bytes).with_human_readable();
            serde::Deserialize::deserialize(&mut de).map_err(|e| malformed(e.to_string()))
        }
    }
}

/// Decodes and validates an envelope whose payload is `T`.
pub fn decode<T: Message>(bytes: &[u8], encoding: Encoding) -> Result<Envelope<T>, ProtocolError> {
    decode_with_flow(bytes, encoding).map_err(|(e, _)| e)
}

/// Why a request could not be decoded, with the request's flow when its attributes
/// were read (so that the error reply can continue its correlation and trace).
pub type DecodeFailure = (ProtocolError, Option<Box<FlowContext>>);

/// Like [`decode`], but a failure after the attributes were read still returns the
/// request's flow, so that an error reply can continue its correlation and trace.
pub fn decode_with_flow<T: Message>(
    bytes: &[u8],
    encoding: Encoding,
) -> Result<Envelope<T>, DecodeFailure> {
    check_depth(bytes, encoding).map_err(|e| (e, None))?;
    if encoding == Encoding::MessagePack {
        // Attributes read directly, `data` straight into `T`, when the document allows it.
        if let Some(unchecked) = msgpack::parse(bytes) {
            let envelope = unchecked.validate().map_err(|e| (e, None))?;
            if let Some(decoded) = typed_from_span(envelope) {
                return decoded;
            }
        }
        return decode_msgpack_general(bytes);
    }
    // JSON: one pass, `data` straight into `T`, when the document allows it.
    if let Some(unchecked) = one_pass::parse::<T>(bytes) {
        let mut envelope = unchecked.validate().map_err(|e| (e, None))?;
        return match envelope.data.take() {
            Some(one_pass::Data::Typed(data)) => Ok(envelope.map_data(|_| data)),
            Some(one_pass::Data::Raw(raw)) => typed_from_raw(envelope.map_data(|_| Some(raw))),
            None => typed_from_raw(envelope.map_data(|_| None)),
        };
    }
    decode_json_general(bytes)
}

/// The general MessagePack path: `data` decoded into a `Value` tree, then into `T`. It
/// decides every document the direct path does not take.
fn decode_msgpack_general<T: Message>(bytes: &[u8]) -> Result<Envelope<T>, DecodeFailure> {
    let raw = decode_raw(bytes, Encoding::MessagePack).map_err(|e| (e, None))?;
    let flow = Box::new(raw.flow());
    raw.into_typed().map_err(|e| (e, Some(flow)))
}

/// The envelope with `data` (a MessagePack span, or absent) decoded as `T`, as
/// [`RawEnvelope::into_typed`] decodes it; `None` when the span does not decode, for
/// the general path to report why.
fn typed_from_span<T: Message>(
    envelope: Envelope<Option<msgpack::Span<'_>>>,
) -> Option<Result<Envelope<T>, DecodeFailure>> {
    let typed = (|| {
        let ty = envelope.message_type()?;
        T::check_type(&ty)?;
        let Some(span) = envelope.data else {
            return crate::envelope::absent_data(&ty).map(Some);
        };
        Ok(if ty.major == T::MAJOR {
            span.decode::<T>()
        } else {
            match span.decode::<serde_json::Value>() {
                Some(value) => Some(T::upgrade(ty.major, value)?),
                None => None,
            }
        })
    })();
    match typed {
        Ok(Some(data)) => Some(Ok(envelope.map_data(|_| data))),
        Ok(None) => None,
        // The general path, which builds `data`'s tree first, refuses a string in it
        // that is not UTF-8 before it looks at `type`.
        Err(_) if envelope.data.is_some_and(|span| !span.is_utf8()) => None,
        Err(e) => Some(Err((e, Some(Box::new(envelope.flow()))))),
    }
}

/// The general JSON path: `data` held as raw JSON text, then parsed once, straight
/// into `T`. It decides every document the one-pass path does not take.
fn decode_json_general<T: Message>(bytes: &[u8]) -> Result<Envelope<T>, DecodeFailure> {
    let unchecked: UncheckedEnvelope<&serde_json::value::RawValue> =
        parse(bytes, Encoding::Json).map_err(|e| (e, None))?;
    let envelope = unchecked.validate().map_err(|e| (e, None))?;
    typed_from_raw(envelope)
}

/// The envelope with `data` (raw JSON text, or absent) decoded as `T`.
fn typed_from_raw<T: Message>(
    envelope: Envelope<Option<&serde_json::value::RawValue>>,
) -> Result<Envelope<T>, DecodeFailure> {
    let typed = (|| {
        let ty = envelope.message_type()?;
        T::check_type(&ty)?;
        let text = match envelope.data.map(|raw| raw.get()) {
            None | Some("null") => return crate::envelope::absent_data(&ty),
            Some(text) => text,
        };
        let data = if ty.major == T::MAJOR {
            serde_json::from_str(text).map_err(|e| ProtocolError::InvalidData(e.to_string()))?
        } else {
            let value = serde_json::from_str(text)
                .map_err(|e| ProtocolError::InvalidData(e.to_string()))?;
            T::upgrade(ty.major, value)?
        };
        Ok(data)
    })();
    match typed {
        Ok(data) => Ok(envelope.map_data(|_| data)),
        Err(e) => Err((e, Some(Box::new(envelope.flow())))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Priority;
    use crate::status::StatusRequest;
    use crate::trace::TraceParent;
    use crate::{ErrorBody, ErrorCode};

    fn sample() -> Envelope<ErrorBody> {
        Envelope::builder(
            "toronto://test",
            ErrorBody::new(ErrorCode::Conflict, "busy")
                .with_details(serde_json::json!({"n": 1, "list": [1.5, "x", null]})),
        )
        .subject("shop-api")
        .priority(Priority::High)
        .build()
    }

    #[test]
    fn round_trips_in_both_encodings() {
        let env = sample();
        for encoding in [Encoding::Json, Encoding::MessagePack] {
            let bytes = encode(&env, encoding).unwrap();
            let back: Envelope<ErrorBody> = decode(&bytes, encoding).unwrap();
            assert_eq!(back, env, "{encoding:?}");
        }
    }

    #[test]
    fn a_borrowed_envelope_encodes_to_the_same_bytes() {
        let mut env = sample();
        env.causationid = Some(crate::envelope::new_id().to_string());
        let borrowed = env.borrowed();
        for encoding in [Encoding::Json, Encoding::MessagePack] {
            assert_eq!(
                encode_ref(&borrowed, encoding).unwrap(),
                encode(&env, encoding).unwrap(),
                "{encoding:?}"
            );
        }
    }

    #[test]
    fn encodings_are_distinct_on_the_wire() {
        let env = sample();
        let json = encode(&env, Encoding::Json).unwrap();
        let msgpack = encode(&env, Encoding::MessagePack).unwrap();
        assert_eq!(json[0], b'{');
        assert_ne!(msgpack[0], b'{');
        assert!(decode_raw(&msgpack, Encoding::Json).is_err());
    }

    #[test]
    fn builder_sets_required_and_flow_attributes() {
        let parent = sample();
        let child = Envelope::builder("toronto://child", StatusRequest::default())
            .caused_by(&parent.flow())
            .build();
        assert_eq!(
            uuid::Uuid::parse_str(&child.id).unwrap().get_version_num(),
            7
        );
        assert_eq!(child.ty, "ai.toronto.devops.status.request.v1");
        assert_eq!(child.correlationid, parent.correlationid);
        assert_eq!(child.causationid, Some(parent.id.to_string()));
        let parent_tp = TraceParent::parse(parent.traceparent.as_deref().unwrap()).unwrap();
        let child_tp = TraceParent::parse(child.traceparent.as_deref().unwrap()).unwrap();
        assert_eq!(parent_tp.trace_id, child_tp.trace_id);
        assert_eq!(
            child.dataschema.as_deref(),
            Some("https://toronto.dev/schemas/v1/status.request.json")
        );
    }

    #[test]
    fn validation_names_what_is_wrong() {
        let good = serde_json::to_value(sample()).unwrap();
        let cases: Vec<(&str, serde_json::Value, &str)> = vec![
            (
                "id",
                serde_json::Value::Null,
                "missing required attribute `id`",
            ),
            ("id", "".into(), "missing required attribute `id`"),
            ("source", "".into(), "missing required attribute `source`"),
            (
                "type",
                serde_json::Value::Null,
                "missing required attribute `type`",
            ),
            ("type", "com.acme.thing.v1".into(), "invalid type"),
            ("specversion", "0.3".into(), "`0.3` is not supported"),
            ("time", "yesterday".into(), "RFC 3339"),
            ("priority", "urgent".into(), "not one of low"),
        ];
        for (attr, value, expected) in cases {
            let mut doc = good.clone();
            if value.is_null() {
                doc.as_object_mut().unwrap().remove(attr);
            } else {
                doc[attr] = value;
            }
            let bytes = serde_json::to_vec(&doc).unwrap();
            let err = decode_raw(&bytes, Encoding::Json).unwrap_err();
            assert!(err.to_string().contains(expected), "{attr}: {err}");
            assert_eq!(err.code(), ErrorCode::BadRequest);
        }
        let err = decode_raw(b"{not json", Encoding::Json).unwrap_err();
        assert!(matches!(err, ProtocolError::Malformed { .. }));
    }

    #[test]
    fn wrong_type_and_unsupported_major_are_told_apart() {
        let env = sample();
        let mut doc = serde_json::to_value(&env).unwrap();
        doc["type"] = "ai.toronto.devops.error.v7".into();
        let err =
            decode::<ErrorBody>(&serde_json::to_vec(&doc).unwrap(), Encoding::Json).unwrap_err();
        assert_eq!(err.code(), ErrorCode::UnsupportedVersion);
        assert_eq!(
            err.to_body().details.unwrap()["supported"],
            serde_json::json!(["ai.toronto.devops.error.v1"])
        );
        doc["type"] = "ai.toronto.devops.status.request.v1".into();
        let err =
            decode::<ErrorBody>(&serde_json::to_vec(&doc).unwrap(), Encoding::Json).unwrap_err();
        assert!(matches!(err, ProtocolError::WrongType { .. }));
        assert_eq!(err.code(), ErrorCode::BadRequest);
    }

    #[test]
    fn any_non_empty_id_is_accepted_as_is() {
        let mut doc = serde_json::to_value(sample()).unwrap();
        for id in ["A234-1234-1234", "1", "not a uuid at all"] {
            doc["id"] = id.into();
            let bytes = serde_json::to_vec(&doc).unwrap();
            for encoding in [Encoding::Json, Encoding::MessagePack] {
                let bytes = match encoding {
                    Encoding::Json => bytes.clone(),
                    Encoding::MessagePack => {
                        let env: Envelope<ErrorBody> = decode(&bytes, Encoding::Json).unwrap();
                        encode(&env, encoding).unwrap()
                    }
                };
                let env: Envelope<ErrorBody> = decode(&bytes, encoding).unwrap();
                assert_eq!(env.id, id);
                assert_eq!(env.flow().id, id);
                assert_eq!(env.flow().correlationid, sample_correlation(&doc));
            }
        }
    }

    fn sample_correlation(doc: &serde_json::Value) -> String {
        doc["correlationid"].as_str().unwrap().to_owned()
    }

    #[test]
    fn data_is_optional_unless_the_type_needs_it() {
        let env = Envelope::builder("toronto://test", StatusRequest::default()).build();
        let mut doc = serde_json::to_value(&env).unwrap();
        doc.as_object_mut().unwrap().remove("data");
        let absent = serde_json::to_vec(&doc).unwrap();
        doc["data"] = serde_json::Value::Null;
        let null = serde_json::to_vec(&doc).unwrap();
        for bytes in [&absent, &null] {
            let raw = decode_raw(bytes, Encoding::Json).unwrap();
            assert!(raw.data.is_null());
            let typed: Envelope<StatusRequest> = decode(bytes, Encoding::Json).unwrap();
            assert_eq!(typed.data, StatusRequest::default());
            let typed: Envelope<StatusRequest> = raw.into_typed().unwrap();
            assert_eq!(typed.data, StatusRequest::default());
        }
        // A type with required fields says that `data` is missing.
        let mut doc = serde_json::to_value(sample()).unwrap();
        doc.as_object_mut().unwrap().remove("data");
        let bytes = serde_json::to_vec(&doc).unwrap();
        let err = decode::<ErrorBody>(&bytes, Encoding::Json).unwrap_err();
        assert!(matches!(err, ProtocolError::MissingData { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            "`data` is required for type `ai.toronto.devops.error.v1`"
        );
        assert_eq!(err.code(), ErrorCode::BadRequest);
        let err = decode_raw(&bytes, Encoding::Json)
            .unwrap()
            .into_typed::<ErrorBody>()
            .unwrap_err();
        assert!(matches!(err, ProtocolError::MissingData { .. }), "{err}");
    }

    #[test]
    fn events_have_their_own_type_and_decode_under_the_old_one_too() {
        use crate::alerts::Alert as Plan;
        let plan: Plan = serde_json::from_value(serde_json::json!({
            "fingerprint": "f1", "status": "firing", "labels": {"service": "shop-api"},
            "starts_at": "2026-11-27T05:00:00Z", "generator": "toronto://devops/monitor"
        }))
        .unwrap();
        let event = Envelope::builder("toronto://monitor", plan.clone())
            .event("alert", "firing")
            .build();
        assert_eq!(event.ty, "ai.toronto.devops.alert.firing.v1");
        assert_eq!(
            event.dataschema.as_deref(),
            Some("https://toronto.dev/schemas/v1/alert.json")
        );
        let bytes = encode(&event, Encoding::Json).unwrap();
        let back: Envelope<Plan> = decode(&bytes, Encoding::Json).unwrap();
        assert_eq!(back.data, plan);
        // The payload's own type, which events carried before, is still accepted.
        let mut old = serde_json::to_value(&event).unwrap();
        old["type"] = "ai.toronto.devops.alert.v1".into();
        let back: Envelope<Plan> =
            decode(&serde_json::to_vec(&old).unwrap(), Encoding::Json).unwrap();
        assert_eq!(back.data, plan);
        // Another payload's event is still the wrong type.
        old["type"] = "ai.toronto.devops.rollout.started.v1".into();
        let err = decode::<Plan>(&serde_json::to_vec(&old).unwrap(), Encoding::Json).unwrap_err();
        assert!(matches!(err, ProtocolError::WrongType { .. }), "{err}");
        old["type"] = "ai.toronto.devops.alert.resolved.v7".into();
        let err = decode::<Plan>(&serde_json::to_vec(&old).unwrap(), Encoding::Json).unwrap_err();
        assert_eq!(err.code(), ErrorCode::UnsupportedVersion);
    }

    /// An envelope whose `data` is `arrays` nested arrays around `1`, in `encoding`.
    fn nested_envelope(arrays: usize, encoding: Encoding) -> Vec<u8> {
        let marker = "@@DATA@@";
        let env = Envelope::builder("toronto://test", StatusRequest::default()).build();
        let bytes = encode(&env.map_data(|_| marker), encoding).unwrap();
        let (needle, nested): (Vec<u8>, Vec<u8>) = match encoding {
            Encoding::Json => (
                format!("\"{marker}\"").into_bytes(),
                format!("{}1{}", "[".repeat(arrays), "]".repeat(arrays)).into_bytes(),
            ),
            Encoding::MessagePack => {
                let mut needle = vec![0xa0 | marker.len() as u8];
                needle.extend(marker.as_bytes());
                let mut nested = vec![0x91; arrays];
                nested.push(0x01);
                (needle, nested)
            }
        };
        let at = bytes
            .windows(needle.len())
            .position(|w| w == needle.as_slice())
            .unwrap();
        [&bytes[..at], &nested, &bytes[at + needle.len()..]].concat()
    }

    #[test]
    fn nesting_is_bounded_at_64_levels_before_decoding() {
        for encoding in [Encoding::Json, Encoding::MessagePack] {
            // The envelope's own map is one level: 63 arrays make 64 levels.
            let ok = decode_raw(&nested_envelope(MAX_DEPTH - 1, encoding), encoding)
                .unwrap_or_else(|e| panic!("{encoding:?}: {e}"));
            let mut value = &ok.data;
            for _ in 0..MAX_DEPTH - 1 {
                value = &value[0];
            }
            assert_eq!(value, &serde_json::json!(1), "{encoding:?}");
            for arrays in [MAX_DEPTH, 650, 100_000] {
                let err = decode_raw(&nested_envelope(arrays, encoding), encoding).unwrap_err();
                assert!(
                    err.to_string().contains("limit of 64 levels"),
                    "{encoding:?} {arrays}: {err}"
                );
                assert_eq!(err.code(), ErrorCode::BadRequest);
                let typed = decode::<StatusRequest>(&nested_envelope(arrays, encoding), encoding);
                assert!(
                    typed
                        .unwrap_err()
                        .to_string()
                        .contains("limit of 64 levels")
                );
            }
        }
    }

    #[test]
    fn bounded_helpers_refuse_deep_documents() {
        let deep = format!("{}{}", "[".repeat(65), "]".repeat(65));
        let err = from_json_bounded::<serde_json::Value>(deep.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("limit of 64 levels"), "{err}");
        let ok = format!("{}{}", "[".repeat(64), "]".repeat(64));
        assert!(from_json_bounded::<serde_json::Value>(ok.as_bytes()).is_ok());
        let mut deep = vec![0x91; 65];
        deep.push(0xc0);
        let err = from_msgpack_bounded::<serde_json::Value>(&deep).unwrap_err();
        assert!(err.to_string().contains("limit of 64 levels"), "{err}");
        assert!(from_msgpack_bounded::<serde_json::Value>(&deep[1..]).is_ok());
    }

    #[test]
    fn content_type_selects_encoding() {
        assert_eq!(Encoding::from_content_type(None).unwrap(), Encoding::Json);
        assert_eq!(
            Encoding::from_content_type(Some("application/cloudevents+json; charset=utf-8"))
                .unwrap(),
            Encoding::Json
        );
        assert_eq!(
            Encoding::from_content_type(Some("application/cloudevents+msgpack")).unwrap(),
            Encoding::MessagePack
        );
        assert!(Encoding::from_content_type(Some("text/xml")).is_err());
    }
}
