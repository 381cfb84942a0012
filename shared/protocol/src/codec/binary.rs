//! Binary content mode of the CloudEvents NATS protocol binding: the attributes travel
//! as `ce-<name>` message headers, `Content-Type` names the encoding of `data`, and the
//! body is the bare `data`.
//!
//! A message is in binary mode when it carries a `ce-specversion` header and its
//! `Content-Type` is not a structured-mode one (`application/cloudevents+...`).
//! Header values are percent-decoded, as the CloudEvents HTTP binding (and the SDKs
//! that follow it) encode them; a value that does not decode to UTF-8 is kept as sent.
//! Binary-mode messages are checked exactly like structured envelopes (the same
//! required attributes, the same validation) and bounded: the `ce-*` headers together
//! at most [`MAX_BINARY_HEADER_BYTES`], the body at most [`super::MAX_DEPTH`] levels deep.

use crate::envelope::{Envelope, FlowContext, RawEnvelope, UncheckedEnvelope};
use crate::error::ProtocolError;
use crate::message::Message;

use super::{CONTENT_TYPE_HEADER, DecodeFailure, Encoding};

/// The header whose presence marks a message as binary mode.
pub const SPECVERSION_HEADER: &str = "ce-specversion";
/// The prefix of every attribute header in binary mode.
pub const ATTRIBUTE_HEADER_PREFIX: &str = "ce-";
/// The most bytes the `ce-*` attribute headers of one message may take together.
pub const MAX_BINARY_HEADER_BYTES: usize = 16 * 1024;

/// The attributes read from `ce-*` headers, in the envelope's order.
const ATTRIBUTES: [&str; 11] = [
    "specversion",
    "id",
    "source",
    "type",
    "time",
    "dataschema",
    "subject",
    "correlationid",
    "causationid",
    "priority",
    "traceparent",
];

/// Whether a message whose headers are looked up through `header` (by lowercase name;
/// the lookup decides about case) is in binary content mode.
pub fn is_binary(header: impl Fn(&str) -> Option<String>) -> bool {
    header(SPECVERSION_HEADER).is_some() && !structured_content_type(header(CONTENT_TYPE_HEADER))
}

fn structured_content_type(value: Option<String>) -> bool {
    value.is_some_and(|v| {
        v.trim_start()
            .to_ascii_lowercase()
            .starts_with("application/cloudevents")
    })
}

/// The encoding of `data` named by a binary-mode `Content-Type`: JSON when absent, for
/// `application/json`, `text/json` and any `+json` type; MessagePack for
/// `application/msgpack` (and `x-msgpack`). Others cannot become one of our payloads.
fn data_encoding(value: Option<&str>) -> Result<Encoding, ProtocolError> {
    let Some(value) = value else {
        return Ok(Encoding::Json);
    };
    let media = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match media.as_str() {
        "" | "application/json" | "text/json" => Ok(Encoding::Json),
        "application/msgpack" | "application/x-msgpack" => Ok(Encoding::MessagePack),
        m if m.ends_with("+json") => Ok(Encoding::Json),
        _ => Err(ProtocolError::InvalidAttribute {
            attribute: "datacontenttype",
            reason: format!(
                "data of type `{value}` is not accepted; use application/json or application/msgpack"
            ),
        }),
    }
}

/// Decodes and validates a binary-mode message, leaving `data` untyped (`null` when
/// the body is empty). `header` looks a header up by its lowercase name.
pub fn decode_binary_raw(
    header: impl Fn(&str) -> Option<String>,
    body: &[u8],
) -> Result<RawEnvelope, ProtocolError> {
    let mut values: [Option<String>; ATTRIBUTES.len()] = Default::default();
    let mut total = 0;
    for (slot, name) in values.iter_mut().zip(ATTRIBUTES) {
        *slot = header(&format!("{ATTRIBUTE_HEADER_PREFIX}{name}"));
        total += slot.as_ref().map_or(0, String::len);
    }
    if total > MAX_BINARY_HEADER_BYTES {
        return Err(ProtocolError::TooLarge {
            size: total,
            limit: MAX_BINARY_HEADER_BYTES,
        });
    }
    for value in values.iter_mut().flatten() {
        if value.contains('%') {
            *value = percent_decode(value);
        }
    }
    let content_type = header(CONTENT_TYPE_HEADER);
    let data = if body.is_empty() {
        None
    } else {
        let encoding = data_encoding(content_type.as_deref())?;
        super::check_depth(body, encoding)?;
        let value: serde_json::Value = match encoding {
            Encoding::Json => serde_json::from_slice(body)
                .map_err(|e| ProtocolError::InvalidData(format!("data is not JSON: {e}")))?,
            Encoding::MessagePack => {
                let mut de = rmp_serde::Deserializer::from_read_ref(body).with_human_readable();
                serde::Deserialize::deserialize(&mut de).map_err(|e| {
                    ProtocolError::InvalidData(format!("data is not MessagePack: {e}"))
                })?
            }
        };
        Some(value)
    };
    let [
        specversion,
        id,
        source,
        ty,
        time,
        dataschema,
        subject,
        correlationid,
        causationid,
        priority,
        traceparent,
    ] = values;
    let unchecked = UncheckedEnvelope {
        specversion,
        id,
        source,
        ty,
        time,
        datacontenttype: content_type,
        dataschema,
        subject,
        correlationid,
        causationid,
        priority,
        traceparent,
        data,
    };
    Ok(unchecked
        .validate()?
        .map_data(|d| d.unwrap_or(serde_json::Value::Null)))
}

/// `%XX` sequences decoded; the value as it is when the result is not UTF-8.
fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap_or_else(|_| value.to_owned())
}

/// Decodes and validates a binary-mode message whose payload is `T`; a failure after
/// the attributes were read returns the message's flow (as
/// [`super::decode_with_flow`] does).
pub fn decode_binary<T: Message>(
    header: impl Fn(&str) -> Option<String>,
    body: &[u8],
) -> Result<Envelope<T>, DecodeFailure> {
    let raw = decode_binary_raw(header, body).map_err(|e| (e, None))?;
    let flow: Box<FlowContext> = Box::new(raw.flow());
    raw.into_typed().map_err(|e| (e, Some(flow)))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::status::StatusRequest;
    use crate::{ErrorBody, ErrorCode};

    fn headers(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), (*v).to_owned()))
            .collect();
        move |name: &str| map.get(&name.to_ascii_lowercase()).cloned()
    }

    const BASE: [(&str, &str); 4] = [
        ("ce-specversion", "1.0"),
        ("ce-id", "A234-1234-1234"),
        ("ce-source", "/mycontext"),
        ("ce-type", "ai.toronto.devops.error.v1"),
    ];

    #[test]
    fn attributes_come_from_headers_and_data_from_the_body() {
        let mut pairs = BASE.to_vec();
        pairs.extend([
            ("Content-Type", "application/json"),
            ("ce-subject", "shop-api"),
            ("ce-correlationid", "flow-1"),
            ("ce-priority", "high"),
            ("ce-time", "2026-11-27T05:00:00Z"),
            ("ce-unknown", "dropped"),
        ]);
        let h = headers(&pairs);
        assert!(is_binary(&h));
        let env: Envelope<ErrorBody> =
            decode_binary(&h, br#"{"code":"conflict","message":"busy"}"#).unwrap();
        assert_eq!(env.id, "A234-1234-1234");
        assert_eq!(env.source, "/mycontext");
        assert_eq!(env.data.code, ErrorCode::Conflict);
        assert_eq!(env.subject.as_deref(), Some("shop-api"));
        assert_eq!(env.correlationid.as_deref(), Some("flow-1"));
        assert_eq!(env.priority, Some(crate::Priority::High));
        assert_eq!(env.datacontenttype.as_deref(), Some("application/json"));
        assert!(env.time.is_some());
    }

    #[test]
    fn mode_is_told_by_specversion_and_content_type() {
        assert!(!is_binary(headers(&[("Content-Type", "application/json")])));
        assert!(!is_binary(headers(&[
            ("ce-specversion", "1.0"),
            ("Content-Type", "application/cloudevents+json"),
        ])));
        assert!(is_binary(headers(&[("ce-specversion", "1.0")])));
    }

    #[test]
    fn an_empty_body_is_an_event_without_data() {
        let mut pairs = BASE.to_vec();
        pairs[3] = ("ce-type", "ai.toronto.devops.status.request.v1");
        let env: Envelope<StatusRequest> = decode_binary(headers(&pairs), b"").unwrap();
        assert_eq!(env.data, StatusRequest::default());
        let err = decode_binary::<ErrorBody>(headers(&BASE), b"")
            .unwrap_err()
            .0;
        assert!(matches!(err, ProtocolError::MissingData { .. }), "{err}");
    }

    #[test]
    fn binary_messages_are_checked_and_bounded() {
        let without_id: Vec<_> = BASE
            .iter()
            .copied()
            .filter(|(k, _)| *k != "ce-id")
            .collect();
        let err = decode_binary_raw(headers(&without_id), b"{}").unwrap_err();
        assert_eq!(err.to_string(), "missing required attribute `id`");
        let mut pairs = BASE.to_vec();
        pairs.push(("Content-Type", "text/plain"));
        let err = decode_binary_raw(headers(&pairs), b"hello").unwrap_err();
        assert!(err.to_string().contains("datacontenttype"), "{err}");
        let deep = format!("{}{}", "[".repeat(65), "]".repeat(65));
        let err = decode_binary_raw(headers(&BASE), deep.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("limit of 64 levels"), "{err}");
        let long = "x".repeat(MAX_BINARY_HEADER_BYTES);
        let mut pairs = BASE.to_vec();
        pairs.push(("ce-subject", &long));
        let err = decode_binary_raw(headers(&pairs), b"{}").unwrap_err();
        assert_eq!(err.code(), ErrorCode::TooLarge);
        let err = decode_binary::<ErrorBody>(headers(&BASE), b"{\"code\":1}").unwrap_err();
        assert!(matches!(err.0, ProtocolError::InvalidData(_)));
        assert_eq!(err.1.unwrap().id, "A234-1234-1234");
    }

    #[test]
    fn header_values_are_percent_decoded() {
        let mut pairs = BASE.to_vec();
        pairs[1] = ("ce-id", "an%20id%25");
        pairs.push(("ce-subject", "caf%C3%A9 50%"));
        let env = decode_binary_raw(headers(&pairs), b"").unwrap();
        assert_eq!(env.id, "an id%");
        assert_eq!(env.subject.as_deref(), Some("café 50%"));
        assert_eq!(percent_decode("%ff%fe"), "%ff%fe");
    }

    #[test]
    fn msgpack_data_is_accepted() {
        let mut pairs = BASE.to_vec();
        pairs.push(("Content-Type", "application/msgpack"));
        let body = rmp_serde::to_vec_named(&ErrorBody::new(ErrorCode::NotFound, "gone")).unwrap();
        let env: Envelope<ErrorBody> = decode_binary(headers(&pairs), &body).unwrap();
        assert_eq!(env.data.message, "gone");
    }
}
