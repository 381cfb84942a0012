//! Nesting depth of a JSON or MessagePack document, measured by one linear scan of its
//! bytes before any decoder runs, so that no recursive decoder (and no `Value` tree, whose
//! drop is recursive too) ever sees a document nested deeper than [`MAX_DEPTH`].
//!
//! Every array and every map counts as one level, the document's own top level included:
//! `{"data": [[1]]}` is 3 levels deep. The scan allocates nothing. It stops early on bytes
//! that are not a well-formed document and reports no error for them: the decoder that
//! runs next names what is malformed.

/// The deepest nesting any decoder of the protocol accepts. An envelope uses two levels
/// (its own map and `data`'s), so a payload may nest 62 more.
pub const MAX_DEPTH: usize = 64;

/// The document nests deeper than the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("nested deeper than the limit of {limit} levels")]
pub struct TooDeep {
    /// The limit that was passed.
    pub limit: usize,
}

/// Checks that a JSON document nests at most [`MAX_DEPTH`] levels.
pub fn json(bytes: &[u8]) -> Result<(), TooDeep> {
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                // Skip the string: its brackets are text.
                i += 1;
                while i < bytes.len() {
                    i = to_quote_or_backslash(bytes, i);
                    match bytes.get(i) {
                        Some(b'\\') => i += 2,
                        Some(_) => break,
                        None => {}
                    }
                }
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(TooDeep { limit: MAX_DEPTH });
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// The first position from `i` on holding `"` or `\\` (`bytes.len()` when none), many
/// bytes at a time (`memchr2` uses the CPU's vector instructions): most of an
/// envelope's bytes are string contents, so this is where the scan spends its time.
fn to_quote_or_backslash(bytes: &[u8], i: usize) -> usize {
    let rest = bytes.get(i..).unwrap_or_default();
    memchr::memchr2(b'"', b'\\', rest).map_or(bytes.len(), |at| i + at)
}

/// What one MessagePack value's header says: bytes of body to skip, and for a
/// container the number of values it holds.
enum Item {
    Scalar(u64),
    Container(u64),
    /// Not MessagePack (0xc1) or cut short: leave it to the decoder.
    Stop,
}

fn be(bytes: &[u8], at: usize, n: usize) -> Option<u64> {
    let slice = bytes.get(at..at + n)?;
    Some(slice.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
}

/// Reads the header of the value at `pos`; returns the item and the position after its
/// header.
fn header(bytes: &[u8], pos: usize) -> (Item, usize) {
    let Some(&b) = bytes.get(pos) else {
        return (Item::Stop, pos);
    };
    let at = pos + 1;
    // (length bytes to read, fixed extra bytes, what the length counts)
    let sized = |n: usize, extra: u64, kind: fn(u64) -> Item| match be(bytes, at, n) {
        Some(len) => (kind(len.saturating_add(extra)), at + n),
        None => (Item::Stop, at),
    };
    let fixed = |n: u64| (Item::Scalar(n), at);
    match b {
        0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => fixed(0),
        0x80..=0x8f => (Item::Container(2 * u64::from(b & 0x0f)), at),
        0x90..=0x9f => (Item::Container(u64::from(b & 0x0f)), at),
        0xa0..=0xbf => fixed(u64::from(b & 0x1f)),
        0xc1 => (Item::Stop, at),
        0xc4 | 0xd9 => sized(1, 0, Item::Scalar),
        0xc5 | 0xda => sized(2, 0, Item::Scalar),
        0xc6 | 0xdb => sized(4, 0, Item::Scalar),
        0xc7 => sized(1, 1, Item::Scalar),
        0xc8 => sized(2, 1, Item::Scalar),
        0xc9 => sized(4, 1, Item::Scalar),
        0xca => fixed(4),
        0xcb => fixed(8),
        0xcc | 0xd0 => fixed(1),
        0xcd | 0xd1 => fixed(2),
        0xce | 0xd2 => fixed(4),
        0xcf | 0xd3 => fixed(8),
        0xd4 => fixed(2),
        0xd5 => fixed(3),
        0xd6 => fixed(5),
        0xd7 => fixed(9),
        0xd8 => fixed(17),
        0xdc => sized(2, 0, Item::Container),
        0xdd => sized(4, 0, Item::Container),
        0xde => sized(2, 0, |n| Item::Container(2 * n)),
        0xdf => sized(4, 0, |n| Item::Container(2 * n)),
    }
}

/// Checks that a MessagePack document nests at most [`MAX_DEPTH`] levels.
pub fn msgpack(bytes: &[u8]) -> Result<(), TooDeep> {
    // Values still to read at each open level; the bottom entry is the document itself.
    let mut left = [0u64; MAX_DEPTH + 1];
    let mut depth = 0usize;
    left[0] = 1;
    let mut pos = 0usize;
    loop {
        while left[depth] == 0 {
            if depth == 0 {
                return Ok(());
            }
            depth -= 1;
        }
        left[depth] -= 1;
        let (item, next) = header(bytes, pos);
        match item {
            Item::Stop => return Ok(()),
            Item::Scalar(len) => {
                let Some(end) = usize::try_from(len).ok().and_then(|l| next.checked_add(l)) else {
                    return Ok(());
                };
                if end > bytes.len() {
                    return Ok(());
                }
                pos = end;
            }
            Item::Container(count) => {
                if depth == MAX_DEPTH {
                    return Err(TooDeep { limit: MAX_DEPTH });
                }
                depth += 1;
                left[depth] = count;
                pos = next;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested_json(depth: usize) -> Vec<u8> {
        format!("{}1{}", "[".repeat(depth), "]".repeat(depth)).into_bytes()
    }

    fn nested_msgpack(depth: usize) -> Vec<u8> {
        let mut v = vec![0x91; depth];
        v.push(0x01);
        v
    }

    #[test]
    fn json_at_the_limit_passes_and_one_deeper_fails() {
        assert_eq!(json(&nested_json(MAX_DEPTH)), Ok(()));
        assert_eq!(
            json(&nested_json(MAX_DEPTH + 1)),
            Err(TooDeep { limit: MAX_DEPTH })
        );
    }

    #[test]
    fn json_brackets_inside_strings_do_not_count() {
        let text = format!(r#"{{"a": "{}\"[", "b": [1]}}"#, "[".repeat(500));
        assert_eq!(json(text.as_bytes()), Ok(()));
    }

    #[test]
    fn json_escapes_are_found_at_every_offset_of_a_long_string() {
        for offset in 0..24 {
            let pad = "x".repeat(offset);
            // An escaped quote inside the string keeps its brackets text.
            let text = format!(r#"{{"a": "{pad}\"{}\\", "b": [1]}}"#, "[".repeat(70));
            assert_eq!(json(text.as_bytes()), Ok(()), "{offset}");
            // After the string ends, brackets count again.
            let deep = format!(
                r#"{{"a": "{pad}\\", "b": {}1{}}}"#,
                "[".repeat(MAX_DEPTH),
                "]".repeat(MAX_DEPTH)
            );
            assert_eq!(
                json(deep.as_bytes()),
                Err(TooDeep { limit: MAX_DEPTH }),
                "{offset}"
            );
        }
    }

    #[test]
    fn msgpack_at_the_limit_passes_and_one_deeper_fails() {
        assert_eq!(msgpack(&nested_msgpack(MAX_DEPTH)), Ok(()));
        assert_eq!(
            msgpack(&nested_msgpack(MAX_DEPTH + 1)),
            Err(TooDeep { limit: MAX_DEPTH })
        );
    }

    #[test]
    fn msgpack_siblings_do_not_add_up() {
        // A map of 100 keys, each holding a 60-deep array: 61 levels.
        let mut doc = vec![0xde, 0x00, 100];
        for i in 0..100u8 {
            doc.extend([0xa1, i % 26 + b'a']);
            doc.extend(nested_msgpack(60));
        }
        assert_eq!(msgpack(&doc), Ok(()));
    }

    #[test]
    fn msgpack_skips_strings_binaries_and_extensions() {
        // [str8 "\x91\x91", bin8 [0x91], fixext1, array32 of 1 nil], no nesting hidden inside.
        let doc = [
            0x94, 0xd9, 2, 0x91, 0x91, 0xc4, 1, 0x91, 0xd4, 1, 0x91, 0xdd, 0, 0, 0, 1, 0xc0,
        ];
        assert_eq!(msgpack(&doc), Ok(()));
    }

    #[test]
    fn msgpack_lies_about_lengths_without_harm() {
        // An array claiming 4 billion items, and a string longer than the input.
        assert_eq!(msgpack(&[0xdd, 0xff, 0xff, 0xff, 0xff, 0x01]), Ok(()));
        assert_eq!(msgpack(&[0xdb, 0xff, 0xff, 0xff, 0xff]), Ok(()));
        assert_eq!(msgpack(&[0xc1]), Ok(()));
        assert_eq!(msgpack(&[]), Ok(()));
    }

    #[test]
    fn scans_agree_with_the_decoders_on_real_documents() {
        let value = serde_json::json!({"a": [1, {"b": [true, null, "x[{"]}], "c": 1.5});
        assert_eq!(json(&serde_json::to_vec(&value).unwrap()), Ok(()));
        assert_eq!(msgpack(&rmp_serde::to_vec_named(&value).unwrap()), Ok(()));
    }
}
