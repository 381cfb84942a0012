//! The JSON decoder's fast path: one pass over the document that decodes `data`
//! straight into the payload type when `type`, read before it, names that type at its
//! current major (the order every envelope we encode has). Otherwise `data` is held as
//! raw text, as the general path holds it.
//!
//! Any document this path cannot take (a parse error anywhere, `data` that is not a
//! valid payload, a duplicated attribute, an array instead of an object) is handed
//! back to the general path, which decodes it or reports exactly what is wrong: the
//! fast path changes the cost, never the outcome.

use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{Deserializer as _, Error as _, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::envelope::UncheckedEnvelope;
use crate::message::{Message, MessageType};

/// `data` as the fast path found it.
pub(super) enum Data<'a, T> {
    /// Decoded into the payload type.
    Typed(T),
    /// Raw JSON text (`type` came after `data`, or names another type or major).
    Raw(&'a RawValue),
}

/// The envelope's attribute names (unknown extension attributes are skipped).
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum Field {
    Specversion,
    Id,
    Source,
    #[serde(rename = "type")]
    Type,
    Time,
    Datacontenttype,
    Dataschema,
    Subject,
    Correlationid,
    Causationid,
    Priority,
    Traceparent,
    Data,
    #[serde(other)]
    Other,
}

struct OnePass<T>(PhantomData<fn() -> T>);

/// Sets an attribute once; a second occurrence is an error (as the derived decoder has it).
fn once<'de, A: MapAccess<'de>, V: Deserialize<'de>>(
    slot: &mut Option<V>,
    seen: &mut bool,
    map: &mut A,
    name: &'static str,
) -> Result<(), A::Error> {
    if std::mem::replace(seen, true) {
        return Err(A::Error::duplicate_field(name));
    }
    *slot = map.next_value::<Option<V>>()?;
    Ok(())
}

impl<'de, T: Message> Visitor<'de> for OnePass<T> {
    type Value = UncheckedEnvelope<Data<'de, T>>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a CloudEvents envelope")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut e = UncheckedEnvelope::empty();
        let mut seen = [false; 13];
        // Whether `type` names `T` at its current major, so that `data` decodes as `T`.
        let mut typed = false;
        while let Some(field) = map.next_key::<Field>()? {
            let m = &mut map;
            match field {
                Field::Specversion => once(&mut e.specversion, &mut seen[0], m, "specversion")?,
                Field::Id => once(&mut e.id, &mut seen[1], m, "id")?,
                Field::Source => once(&mut e.source, &mut seen[2], m, "source")?,
                Field::Type => {
                    once(&mut e.ty, &mut seen[3], m, "type")?;
                    // `check_type` without building a `MessageType`: the current major
                    // is always supported.
                    typed =
                        e.ty.as_deref()
                            .and_then(|t| MessageType::parts(t).ok())
                            .is_some_and(|(name, major)| {
                                major == T::MAJOR && (name == T::NAME || T::is_event(name))
                            });
                }
                Field::Time => once(&mut e.time, &mut seen[4], m, "time")?,
                Field::Datacontenttype => {
                    once(&mut e.datacontenttype, &mut seen[5], m, "datacontenttype")?
                }
                Field::Dataschema => once(&mut e.dataschema, &mut seen[6], m, "dataschema")?,
                Field::Subject => once(&mut e.subject, &mut seen[7], m, "subject")?,
                Field::Correlationid => {
                    once(&mut e.correlationid, &mut seen[8], m, "correlationid")?
                }
                Field::Causationid => once(&mut e.causationid, &mut seen[9], m, "causationid")?,
                Field::Priority => once(&mut e.priority, &mut seen[10], m, "priority")?,
                Field::Traceparent => once(&mut e.traceparent, &mut seen[11], m, "traceparent")?,
                Field::Data => {
                    if std::mem::replace(&mut seen[12], true) {
                        return Err(A::Error::duplicate_field("data"));
                    }
                    // `null` is absent data, as the general path reads it.
                    e.data = if typed {
                        m.next_value::<Option<T>>()?.map(Data::Typed)
                    } else {
                        m.next_value::<Option<&'de RawValue>>()?.map(Data::Raw)
                    };
                }
                Field::Other => {
                    m.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(e)
    }
}

/// Parses `bytes` (depth already checked) in one pass; `None` when the general path
/// must decide.
pub(super) fn parse<T: Message>(bytes: &[u8]) -> Option<UncheckedEnvelope<Data<'_, T>>> {
    // UTF-8 checked once for the whole document rather than string by string (key and
    // value), as a slice reader checks it; a document that is not UTF-8 is the general
    // path's to report.
    let text = std::str::from_utf8(bytes).ok()?;
    let mut de = serde_json::Deserializer::from_str(text);
    let envelope = (&mut de).deserialize_map(OnePass::<T>(PhantomData)).ok()?;
    de.end().ok()?;
    Some(envelope)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{Encoding, decode, decode_json_general, encode};
    use crate::envelope::Envelope;
    use crate::error::{ErrorBody, ErrorCode};

    fn sample() -> serde_json::Value {
        let env = Envelope::builder("toronto://test", ErrorBody::new(ErrorCode::Conflict, "x"))
            .subject("shop")
            .build();
        serde_json::to_value(env).unwrap()
    }

    /// The general path's outcome, flow included.
    fn general(bytes: &[u8]) -> Result<Envelope<ErrorBody>, String> {
        decode_json_general(bytes).map_err(|(e, flow)| format!("{e} {flow:?}"))
    }

    #[test]
    fn an_envelope_we_encode_takes_the_fast_path() {
        let env =
            Envelope::builder("toronto://test", ErrorBody::new(ErrorCode::Conflict, "x")).build();
        let bytes = encode(&env, Encoding::Json).unwrap();
        let parsed = parse::<ErrorBody>(&bytes).unwrap();
        assert!(matches!(parsed.data, Some(Data::Typed(_))));
        assert_eq!(decode::<ErrorBody>(&bytes, Encoding::Json).unwrap(), env);
    }

    #[test]
    fn every_other_document_decodes_as_the_general_path_decodes_it() {
        let good = sample();
        let mut cases: Vec<Vec<u8>> = Vec::new();
        // `data` before `type`: held raw.
        let mut data_first = String::from("{\"data\":");
        data_first.push_str(&good["data"].to_string());
        for (k, v) in good.as_object().unwrap() {
            if k != "data" {
                data_first.push_str(&format!(",{}:{v}", serde_json::Value::from(k.as_str())));
            }
        }
        data_first.push('}');
        cases.push(data_first.into_bytes());
        let variants: Vec<(&str, serde_json::Value)> = vec![
            ("data", serde_json::Value::Null),
            ("data", serde_json::json!({"code": "nope"})),
            ("data", serde_json::json!("text")),
            ("type", "ai.toronto.devops.status.request.v1".into()),
            ("type", "ai.toronto.devops.error.v7".into()),
            ("id", "".into()),
            ("time", "yesterday".into()),
            ("extension", serde_json::json!({"a": [1, 2]})),
        ];
        for (attr, value) in variants {
            let mut doc = good.clone();
            doc[attr] = value;
            cases.push(serde_json::to_vec(&doc).unwrap());
        }
        let text = serde_json::to_string(&good).unwrap();
        cases.push(format!("{},\"id\":\"again\"}}", &text[..text.len() - 1]).into_bytes());
        cases.push(format!("{text} trailing").into_bytes());
        // Not UTF-8 inside a string value, and inside `data`.
        let mut bad = text.clone().into_bytes();
        let at = text.find("shop").unwrap();
        bad[at] = 0xff;
        cases.push(bad);
        let mut bad = text.clone().into_bytes();
        let at = text.find("conflict").unwrap();
        bad[at + 1] = 0xc3;
        cases.push(bad);
        cases.push(b"[\"1.0\"]".to_vec());
        for bytes in cases {
            let fast = crate::codec::decode_with_flow::<ErrorBody>(&bytes, Encoding::Json)
                .map_err(|(e, flow)| format!("{e} {flow:?}"));
            assert_eq!(fast, general(&bytes), "{}", String::from_utf8_lossy(&bytes));
        }
    }
}
