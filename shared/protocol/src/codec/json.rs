//! The JSON encoder: sonic-rs's serde serializer, which writes the same bytes as
//! `serde_json` (the same escapes, the same float text, from the same `zmij`) but scans
//! strings for characters to escape many bytes at a time instead of one by one. An
//! envelope with a 1 KiB payload encodes in about half the time.
//!
//! Decoding stays with `serde_json`: its error messages are part of what a sender is
//! told, and the one-pass decoder borrows `serde_json::value::RawValue`. A payload
//! type must not hold a `serde_json::value::RawValue` (sonic-rs would write it as a
//! map); none in the contract does, and the tests below hold the two encoders to the
//! same bytes.

use serde::Serialize;

use crate::error::ProtocolError;

/// Encodes `document` as compact JSON into a buffer of `capacity` bytes to start with.
pub(super) fn encode<E: Serialize + ?Sized>(
    document: &E,
    capacity: usize,
) -> Result<Vec<u8>, ProtocolError> {
    let mut buf = Vec::with_capacity(capacity);
    sonic_rs::to_writer(&mut buf, document).map_err(|e| ProtocolError::Encode(e.to_string()))?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::{Value, json};

    use super::*;

    fn same_as_serde_json<E: Serialize + ?Sized + std::fmt::Debug>(document: &E) {
        let ours = encode(document, 16).unwrap();
        let theirs = serde_json::to_vec(document).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&ours),
            String::from_utf8_lossy(&theirs),
            "{document:?}"
        );
    }

    /// xorshift64*: enough randomness to vary inputs, the same on every run.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
    }

    #[test]
    fn strings_are_escaped_exactly_as_serde_json_escapes_them() {
        // Every ASCII character alone, and inside longer runs (the vector paths).
        for b in 0u8..=0x7f {
            let c = char::from(b);
            same_as_serde_json(&c.to_string());
            same_as_serde_json(&format!("{}{c}{}", "x".repeat(40), "y".repeat(37)));
        }
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let alphabet: Vec<char> = (0u32..0x80)
            .filter_map(char::from_u32)
            .chain([
                'é', 'ß', '€', '😀', '\u{2028}', '\u{2029}', '\u{7f}', '\u{feff}',
            ])
            .collect();
        for _ in 0..2000 {
            let len = (rng.next() % 300) as usize;
            let text: String = (0..len)
                .map(|_| alphabet[(rng.next() % alphabet.len() as u64) as usize])
                .collect();
            same_as_serde_json(&text);
            same_as_serde_json(&BTreeMap::from([(text.clone(), text)]));
        }
    }

    #[test]
    fn numbers_are_written_as_serde_json_writes_them() {
        let mut rng = Rng(0x0123_4567_89ab_cdef);
        let mut floats = vec![
            0.0,
            -0.0,
            1.0,
            -1.5,
            0.1,
            1e20,
            1e21,
            1e-7,
            123_456_789.0,
            f64::MAX,
            f64::MIN_POSITIVE,
            f64::EPSILON,
            f64::NAN,
            f64::INFINITY,
            9_007_199_254_740_993.0,
        ];
        floats.extend((0..5000).map(|_| f64::from_bits(rng.next())));
        for f in floats {
            same_as_serde_json(&f);
            same_as_serde_json(&(f as f32));
        }
        for i in [0, 1, -1, i64::MIN, i64::MAX] {
            same_as_serde_json(&i);
        }
        for u in [0, u64::MAX, u64::from(u32::MAX)] {
            same_as_serde_json(&u);
        }
        same_as_serde_json(&(u128::MAX, i128::MIN));
    }

    #[derive(Debug, Serialize)]
    enum Shape {
        Unit,
        Newtype(u8),
        Tuple(u8, String),
        Struct { a: Option<u8>, b: Vec<bool> },
    }

    #[derive(Debug, Serialize)]
    #[serde(tag = "kind", rename_all = "snake_case")]
    enum Tagged {
        One { x: u8 },
        Two,
    }

    #[derive(Debug, Serialize)]
    struct Nested {
        #[serde(skip_serializing_if = "Option::is_none")]
        skipped: Option<u8>,
        shapes: Vec<Shape>,
        tagged: Vec<Tagged>,
        #[serde(flatten)]
        rest: BTreeMap<String, Value>,
        int_keys: BTreeMap<u32, &'static str>,
        bool_keys: BTreeMap<bool, u8>,
        unit: (),
        bytes: &'static [u8],
        ch: char,
    }

    #[test]
    fn structures_are_written_as_serde_json_writes_them() {
        same_as_serde_json(&Nested {
            skipped: None,
            shapes: vec![
                Shape::Unit,
                Shape::Newtype(7),
                Shape::Tuple(1, "\"q\"".into()),
                Shape::Struct {
                    a: None,
                    b: vec![true, false],
                },
            ],
            tagged: vec![Tagged::One { x: 1 }, Tagged::Two],
            rest: BTreeMap::from([("extra".into(), json!({"a": [1, 2.5, null, {}]}))]),
            int_keys: BTreeMap::from([(1, "one"), (20, "twenty")]),
            bool_keys: BTreeMap::from([(true, 1)]),
            unit: (),
            bytes: b"\x00\xff",
            ch: '\n',
        });
        same_as_serde_json(&json!([[], {}, [[{"": ""}]], "\u{0}", -0.0, 1e300]));
    }

    #[test]
    fn envelopes_of_the_contract_are_written_as_serde_json_writes_them() {
        use crate::envelope::{Envelope, Priority};
        use crate::{ErrorBody, ErrorCode};
        let envelope = Envelope::builder(
            "toronto://test",
            ErrorBody::new(ErrorCode::Conflict, "busy \"now\"\n")
                .with_details(json!({"n": 1, "list": [1.5, "x", null], "é": "😀"})),
        )
        .subject("shop-api")
        .priority(Priority::High)
        .build();
        same_as_serde_json(&envelope);
        same_as_serde_json(&envelope.borrowed());
    }
}
