//! The direct path against the general path, document by document.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::*;
use crate::codec::{
    DecodeFailure, Encoding, decode_msgpack_general, decode_with_flow, encode, typed_from_span,
};
use crate::envelope::Envelope;
use crate::error::{ErrorBody, ErrorCode, ProtocolError};
use crate::message::Message;

#[derive(Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
enum Level {
    Low,
    High,
    Custom(String),
    Span { from: u32, to: u32 },
}

/// A payload at major 2 whose major 1 called `count` `n`.
#[derive(Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
struct Sample {
    count: u32,
    level: Level,
    #[serde(default)]
    ratio: Option<f64>,
    #[serde(default)]
    labels: BTreeMap<String, i64>,
    #[serde(default)]
    extra: Option<Value>,
    #[serde(default)]
    tags: Vec<String>,
}

impl Message for Sample {
    const NAME: &'static str = "codec.sample";
    const MAJOR: u32 = 2;

    fn upgrade(major: u32, mut data: Value) -> Result<Self, ProtocolError> {
        if let Some(map) = data.as_object_mut()
            && let Some(n) = map.remove("n")
        {
            map.insert("count".into(), n);
        }
        serde_json::from_value(data)
            .map_err(|e| ProtocolError::InvalidData(format!("v{major}: {e}")))
    }
}

fn sample() -> Envelope<Sample> {
    let data = Sample {
        count: 3,
        level: Level::Span { from: 1, to: 2 },
        ratio: Some(0.5),
        labels: BTreeMap::from([("b".into(), -4), ("a".into(), 7)]),
        extra: Some(json!({"list": [1, -2, 2.5, "x", null, true], "z": {}})),
        tags: vec!["one".into(), "two".into()],
    };
    Envelope::builder("toronto://test", data)
        .subject("shop")
        .build()
}

fn mp(value: &impl Serialize) -> Vec<u8> {
    rmp_serde::to_vec_named(value).unwrap()
}

/// A map (fewer than 16 entries) of already encoded values.
fn map(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut out = vec![0x80 | entries.len() as u8];
    for (key, value) in entries {
        out.extend(mp(key));
        out.extend(value);
    }
    out
}

/// The sample's attributes in the order the encoder writes them, `data` last.
fn entries(data: Vec<u8>) -> Vec<(&'static str, Vec<u8>)> {
    let env = serde_json::to_value(sample()).unwrap();
    let mut out = Vec::new();
    for key in [
        "specversion",
        "id",
        "source",
        "type",
        "time",
        "subject",
        "correlationid",
        "traceparent",
        "dataschema",
    ] {
        if let Some(value) = env.get(key) {
            out.push((key, mp(value)));
        }
    }
    out.push(("data", data));
    out
}

fn sample_data() -> Value {
    serde_json::to_value(sample().data).unwrap()
}

/// `data` (as JSON) with `key` set to the encoded `value`.
fn data_with(key: &str, value: Vec<u8>) -> Vec<u8> {
    let data = sample_data();
    let mut fields: Vec<(&str, Vec<u8>)> = data
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != key)
        .map(|(k, v)| (k.as_str(), mp(v)))
        .collect();
    fields.push((key, value));
    map(&fields)
}

fn with_attribute(key: &'static str, value: Vec<u8>) -> Vec<u8> {
    let mut attrs = entries(mp(&sample_data()));
    attrs.retain(|(k, _)| *k != key);
    attrs.insert(0, (key, value));
    map(&attrs)
}

fn outcome<T: Message + fmt::Debug>(result: Result<Envelope<T>, DecodeFailure>) -> String {
    match result {
        Ok(env) => format!("ok {env:?}"),
        Err((e, flow)) => format!("err {e} / {e:?} / {flow:?}"),
    }
}

/// Whether the direct path decided `bytes` itself (not handing them back).
fn direct<T: Message>(bytes: &[u8]) -> bool {
    parse(bytes)
        .and_then(|unchecked| unchecked.validate().ok())
        .is_some_and(|env| typed_from_span::<T>(env).is_some())
}

#[test]
fn an_envelope_we_encode_takes_the_direct_path() {
    let env = sample();
    let bytes = encode(&env, Encoding::MessagePack).unwrap();
    assert!(direct::<Sample>(&bytes));
    assert_eq!(
        decode_with_flow::<Sample>(&bytes, Encoding::MessagePack).unwrap(),
        env
    );
    let error = Envelope::builder(
        "toronto://test",
        ErrorBody::new(ErrorCode::Conflict, "busy").with_details(json!({"n": [1, {"a": null}]})),
    )
    .build();
    let bytes = encode(&error, Encoding::MessagePack).unwrap();
    assert!(direct::<ErrorBody>(&bytes));
    let back = decode_with_flow::<ErrorBody>(&bytes, Encoding::MessagePack).unwrap();
    assert_eq!(back, error);
}

#[test]
fn every_document_decodes_as_the_general_path_decodes_it() {
    let good = mp(&sample_data());
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("encoded", encode(&sample(), Encoding::MessagePack).unwrap()),
        ("type before data", map(&entries(good.clone()))),
    ];
    let mut data_first = entries(good.clone());
    data_first.rotate_right(1);
    cases.push(("data before type", map(&data_first)));
    // `data` itself.
    let nan = [&[0xcb][..], &f64::NAN.to_be_bytes()].concat();
    let data_cases: Vec<(&str, Vec<u8>)> = vec![
        ("nil data", vec![0xc0]),
        ("string data", mp(&"text")),
        ("bin data", vec![0xc4, 1, 0]),
        ("data as array", mp(&json!([3, "low"]))),
        (
            "array too long",
            mp(&json!([3, "low", null, {}, [], null, 1])),
        ),
        ("wrong field type", data_with("count", mp(&"x"))),
        ("count as int8", data_with("count", vec![0xd0, 5])),
        ("count negative", data_with("count", vec![0xff])),
        ("count as float", data_with("count", mp(&3.0f32))),
        ("enum index", data_with("level", vec![0x00])),
        ("enum in array", data_with("level", mp(&["low"]))),
        ("enum unit", data_with("level", mp(&"high"))),
        (
            "enum unit in map",
            data_with("level", map(&[("high", vec![0xc0])])),
        ),
        (
            "enum newtype",
            data_with("level", mp(&json!({"custom": "x"}))),
        ),
        ("enum newtype bare", data_with("level", mp(&"custom"))),
        (
            "enum struct as array",
            data_with("level", mp(&json!({"span": [1, 2]}))),
        ),
        (
            "enum two keys",
            data_with("level", mp(&json!({"low": null, "high": null}))),
        ),
        ("ratio NaN", data_with("ratio", nan.clone())),
        ("ratio int", data_with("ratio", mp(&2))),
        ("ratio f32", data_with("ratio", mp(&0.1f32))),
        (
            "labels int key",
            data_with("labels", vec![0x81, 0x01, 0x02]),
        ),
        (
            "labels repeated key",
            data_with("labels", map(&[("a", mp(&1)), ("a", mp(&2))])),
        ),
        (
            "labels bool key",
            data_with("labels", map(&[("true", mp(&1))])),
        ),
        ("extra ext", data_with("extra", vec![0xd4, 1, 0])),
        (
            "extra not UTF-8",
            data_with("extra", vec![0xa2, 0xff, 0xfe]),
        ),
        ("extra NaN", data_with("extra", nan.clone())),
        (
            "extra raw token",
            data_with("extra", map(&[(RAW_VALUE_TOKEN, mp(&"1"))])),
        ),
        ("tags bin", data_with("tags", vec![0xc4, 1, b'a'])),
        ("unknown bin", data_with("unknown", vec![0xc4, 1, 0])),
        (
            "unknown not UTF-8",
            data_with("unknown", vec![0xa2, 0xff, 0xfe]),
        ),
        (
            "tags not UTF-8",
            data_with("tags", vec![0x91, 0xa2, 0xc3, 0x28]),
        ),
        (
            "key not UTF-8",
            data_with("labels", vec![0x81, 0xa2, 0xff, 0xfe, 0x01]),
        ),
        ("unknown ext", data_with("unknown", vec![0xd4, 1, 0])),
        (
            "unknown map",
            data_with("unknown", mp(&json!({"a": [1, {"b": 2}]}))),
        ),
        ("repeated field", {
            let mut d = data_with("count", mp(&4));
            d[0] += 1;
            d.extend(mp(&"count"));
            d.extend(mp(&5));
            d
        }),
    ];
    for (name, data) in data_cases {
        cases.push((name, map(&entries(data))));
    }
    // The attributes.
    let v1 = mp(&json!({"n": 3, "level": "low"}));
    let mut v1_entries = entries(v1);
    v1_entries[3].1 = mp(&"ai.toronto.devops.codec.sample.v1");
    cases.push(("older major", map(&v1_entries)));
    v1_entries.last_mut().unwrap().1 = mp(&json!({"n": "x"}));
    cases.push(("older major, bad data", map(&v1_entries)));
    let attribute_cases: Vec<(&str, &'static str, Vec<u8>)> = vec![
        (
            "wrong type",
            "type",
            mp(&"ai.toronto.devops.status.request.v1"),
        ),
        (
            "unsupported major",
            "type",
            mp(&"ai.toronto.devops.codec.sample.v7"),
        ),
        ("bad type", "type", mp(&"nope")),
        ("empty id", "id", mp(&"")),
        ("nil id", "id", vec![0xc0]),
        ("int id", "id", mp(&7)),
        ("bin id", "id", vec![0xc4, 1, b'a']),
        ("bad time", "time", mp(&"yesterday")),
        ("bad priority", "priority", mp(&"urgent")),
        ("old specversion", "specversion", mp(&"0.3")),
        ("extension", "ext", mp(&json!({"a": [1, 2]}))),
        ("extension bin", "ext", vec![0xc4, 1, 0]),
        ("extension not UTF-8", "ext", vec![0xa2, 0xff, 0xfe]),
        ("repeated id", "id", mp(&"again")),
        (
            "repeated data",
            "data",
            mp(&json!({"count": 1, "level": "low"})),
        ),
    ];
    for (name, key, value) in attribute_cases {
        let mut bytes = with_attribute(key, value.clone());
        if name.starts_with("repeated") {
            let mut attrs = entries(good.clone());
            attrs.push((key, value));
            bytes = map(&attrs);
        }
        cases.push((name, bytes));
    }
    // Broken documents.
    let encoded = encode(&sample(), Encoding::MessagePack).unwrap();
    let mut index_key = encoded.clone();
    index_key[1..13].copy_from_slice(&[0x00; 12]);
    cases.extend([
        ("truncated", encoded[..encoded.len() - 3].to_vec()),
        ("trailing", [&encoded[..], &[0xc0]].concat()),
        ("array envelope", mp(&["1.0", "id", "toronto://test"])),
        ("empty", Vec::new()),
        ("reserved marker", vec![0xc1]),
        ("integer keys", index_key),
    ]);
    let mut decided = Vec::new();
    for (name, bytes) in &cases {
        let general = outcome(decode_msgpack_general::<Sample>(bytes));
        let new = outcome(decode_with_flow::<Sample>(bytes, Encoding::MessagePack));
        assert_eq!(new, general, "{name}");
        if direct::<Sample>(bytes) {
            decided.push(*name);
        }
        // The loose `ErrorBody` decode too: a wrong type, with the flow.
        let general = outcome(decode_msgpack_general::<ErrorBody>(bytes));
        let new = outcome(decode_with_flow::<ErrorBody>(bytes, Encoding::MessagePack));
        assert_eq!(new, general, "{name} as ErrorBody");
    }
    // What the direct path decides itself; the rest is handed back (attributes
    // that do not validate fail the same way before either path reads `data`).
    assert_eq!(
        decided,
        [
            "encoded",
            "type before data",
            "data before type",
            "nil data",
            "data as array",
            "count as int8",
            "enum unit",
            "enum unit in map",
            "enum newtype",
            "ratio int",
            "ratio f32",
            "labels bool key",
            "unknown map",
            "older major",
            "older major, bad data",
            "wrong type",
            "unsupported major",
            "extension",
        ]
    );
}
