//! The MessagePack decoder's direct path: the envelope's attributes are read straight
//! from the bytes, `data` is kept as the byte span of its value, and once `type` is
//! known the span is decoded into the payload type, with no `serde_json::Value` tree.
//!
//! The general path decodes `data` into a `Value` and the payload from that `Value`.
//! To decide every document exactly as it does, the direct path only takes documents
//! whose every value a `Value` holds as it is: nil, booleans, integers, finite floats,
//! UTF-8 strings, arrays, and maps with distinct string keys (a scan checks this first,
//! and the decode checks each string's UTF-8 as it reads it), and it decodes `data` through [`Node`], a deserializer that presents a value as
//! `Value`'s own deserializer presents it (numbers as `u64`/`i64`/`f64`, enums only
//! as a string or a one-key map, ...). Anything else (binary, extension types, a NaN,
//! a repeated attribute, an array for the envelope, trailing bytes, a payload that does
//! not decode) is handed back to the general path, which decodes it or reports exactly
//! what is wrong: the direct path changes the cost, never the outcome.
//!
//! One difference is left: a map's entries reach the payload in document order, where
//! the `Value` map (without serde_json's `preserve_order`) yields them sorted by key. With
//! distinct keys only a type that keeps the order of a map (an `IndexMap`) could tell.

use std::fmt;

use serde::de;

use crate::envelope::UncheckedEnvelope;

mod node;
#[cfg(test)]
mod tests;

use node::Node;

/// The newtype name serde_json gives `RawValue`: its `Value` decodes it specially.
const RAW_VALUE_TOKEN: &str = "$serde_json::private::RawValue";

/// The deepest nesting the scan follows (the depth check before it allows 64 levels).
const SCAN_DEPTH: usize = 2 * super::MAX_DEPTH;

/// Why the direct path gave up; the general path then decides. It carries no message:
/// nothing is formatted on a path whose errors are never shown.
#[derive(Debug)]
pub(super) struct Refused;

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("left to the general path")
    }
}

impl std::error::Error for Refused {}

impl de::Error for Refused {
    fn custom<M: fmt::Display>(_: M) -> Self {
        Refused
    }
}

/// One value read from the bytes: a scalar, or the length of an array or map whose
/// entries follow.
#[derive(Clone, Copy)]
enum Kind<'a> {
    Nil,
    Bool(bool),
    UInt(u64),
    NegInt(i64),
    Float(f64),
    Str(&'a str),
    /// A string not checked for UTF-8 (the scan of `data` leaves that to [`Node`],
    /// which checks every string it reads).
    Text(&'a [u8]),
    Array(u32),
    Map(u32),
}

fn int(v: i64) -> Kind<'static> {
    if v < 0 {
        Kind::NegInt(v)
    } else {
        Kind::UInt(v as u64)
    }
}

/// A position in a MessagePack document.
pub(super) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let bytes = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(bytes)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    fn byte(&mut self) -> Option<u8> {
        Some(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.array()?))
    }

    fn str(&mut self, len: usize, utf8: bool) -> Option<Kind<'a>> {
        let bytes = self.take(len)?;
        if utf8 {
            std::str::from_utf8(bytes).ok().map(Kind::Str)
        } else {
            Some(Kind::Text(bytes))
        }
    }

    fn float(v: f64) -> Option<Kind<'a>> {
        v.is_finite().then_some(Kind::Float(v))
    }

    fn is_nil(&self) -> bool {
        self.buf.get(self.pos) == Some(&0xc0)
    }

    /// Reads the next marker and its scalar (strings included); `None` for what a
    /// `Value` does not hold as it is (binary, extension types, NaN and infinities,
    /// strings that are not UTF-8) and for truncated bytes.
    fn next(&mut self) -> Option<Kind<'a>> {
        self.next_checking(true)
    }

    /// [`Reader::next`], leaving strings unchecked ([`Kind::Text`]) unless `utf8`.
    fn next_checking(&mut self, utf8: bool) -> Option<Kind<'a>> {
        let marker = self.byte()?;
        Some(match marker {
            0x00..=0x7f => Kind::UInt(marker.into()),
            0x80..=0x8f => Kind::Map((marker & 0x0f).into()),
            0x90..=0x9f => Kind::Array((marker & 0x0f).into()),
            0xa0..=0xbf => self.str((marker & 0x1f).into(), utf8)?,
            0xc0 => Kind::Nil,
            0xc2 => Kind::Bool(false),
            0xc3 => Kind::Bool(true),
            0xca => Self::float(f32::from_be_bytes(self.array()?).into())?,
            0xcb => Self::float(f64::from_be_bytes(self.array()?))?,
            0xcc => Kind::UInt(self.byte()?.into()),
            0xcd => Kind::UInt(self.u16()?.into()),
            0xce => Kind::UInt(self.u32()?.into()),
            0xcf => Kind::UInt(u64::from_be_bytes(self.array()?)),
            0xd0 => int(i8::from_be_bytes(self.array()?).into()),
            0xd1 => int(i16::from_be_bytes(self.array()?).into()),
            0xd2 => int(i32::from_be_bytes(self.array()?).into()),
            0xd3 => int(i64::from_be_bytes(self.array()?)),
            0xd9 => {
                let len = self.byte()?;
                self.str(len.into(), utf8)?
            }
            0xda => {
                let len = self.u16()?;
                self.str(len.into(), utf8)?
            }
            0xdb => {
                let len = self.u32()?;
                self.str(usize::try_from(len).ok()?, utf8)?
            }
            0xdc => Kind::Array(self.u16()?.into()),
            0xdd => Kind::Array(self.u32()?),
            0xde => Kind::Map(self.u16()?.into()),
            0xdf => Kind::Map(self.u32()?),
            0xe0..=0xff => Kind::NegInt((marker as i8).into()),
            // 0xc1 (never used), binary, extension types.
            _ => return None,
        })
    }

    /// Passes over one value, checking that it holds only what a `Value` holds as it is
    /// and that no map repeats a key (a `Value` would keep the last). Strings are checked
    /// for UTF-8 only when `utf8`: a span [`Node`] decodes needs no check here, as `Node`
    /// checks every string it reads and refuses a span it does not read to the end.
    fn skip(&mut self, depth: usize, utf8: bool) -> Option<()> {
        if depth > SCAN_DEPTH {
            return None;
        }
        match self.next_checking(utf8)? {
            Kind::Array(len) => (0..len).try_for_each(|_| self.skip(depth + 1, utf8)),
            Kind::Map(len) => {
                // The first keys on the stack; a big map's in a set.
                let mut first: [&[u8]; 16] = [b""; 16];
                let mut more = std::collections::HashSet::new();
                for i in 0..len as usize {
                    let key = match self.next_checking(utf8)? {
                        Kind::Str(key) => key.as_bytes(),
                        Kind::Text(key) => key,
                        _ => return None,
                    };
                    let repeated =
                        first[..i.min(16)].contains(&key) || (i >= 16 && !more.insert(key));
                    if key == RAW_VALUE_TOKEN.as_bytes() || repeated {
                        return None;
                    }
                    if i < 16 {
                        first[i] = key;
                    }
                    self.skip(depth + 1, utf8)?;
                }
                Some(())
            }
            _ => Some(()),
        }
    }
}

/// `data` as the byte span of its MessagePack value, checked by the scan (all but its
/// strings' UTF-8, which the decode checks as it reads them; see [`Span::is_utf8`]).
#[derive(Clone, Copy)]
pub(super) struct Span<'a>(&'a [u8]);

impl<'a> Span<'a> {
    /// Decodes the span as `D` the way `serde_json::from_value` decodes the `Value`
    /// the general path builds from it; `None` when it does not decode.
    pub(super) fn decode<D: de::Deserialize<'a>>(self) -> Option<D> {
        let mut reader = Reader::new(self.0);
        let value = D::deserialize(Node(&mut reader)).ok()?;
        (reader.pos == self.0.len()).then_some(value)
    }

    /// Whether every string of the span is UTF-8: the scan leaves that to the decode,
    /// so a span that is not decoded (the type was refused first) is checked here.
    pub(super) fn is_utf8(self) -> bool {
        let mut reader = Reader::new(self.0);
        reader.skip(0, true).is_some() && reader.pos == self.0.len()
    }
}

/// Reads the envelope (depth already checked) with `data` as a span; `None` when the
/// general path must decide.
pub(super) fn parse(bytes: &[u8]) -> Option<UncheckedEnvelope<Span<'_>>> {
    let mut r = Reader::new(bytes);
    let Kind::Map(len) = r.next()? else {
        return None;
    };
    let mut e = UncheckedEnvelope::empty();
    let mut seen = [false; 13];
    for _ in 0..len {
        let Kind::Str(key) = r.next()? else {
            return None;
        };
        let (slot, index) = match key {
            "specversion" => (&mut e.specversion, 0),
            "id" => (&mut e.id, 1),
            "source" => (&mut e.source, 2),
            "type" => (&mut e.ty, 3),
            "time" => (&mut e.time, 4),
            "datacontenttype" => (&mut e.datacontenttype, 5),
            "dataschema" => (&mut e.dataschema, 6),
            "subject" => (&mut e.subject, 7),
            "correlationid" => (&mut e.correlationid, 8),
            "causationid" => (&mut e.causationid, 9),
            "priority" => (&mut e.priority, 10),
            "traceparent" => (&mut e.traceparent, 11),
            "data" => {
                if std::mem::replace(&mut seen[12], true) {
                    return None;
                }
                let start = r.pos;
                r.skip(1, false)?;
                // `nil` is absent data, as the general path reads it.
                let span = &bytes[start..r.pos];
                e.data = (span != [0xc0]).then_some(Span(span));
                continue;
            }
            // An extension attribute: ignored, as the general path ignores it.
            _ => {
                r.skip(1, true)?;
                continue;
            }
        };
        if std::mem::replace(&mut seen[index], true) {
            return None;
        }
        *slot = match r.next()? {
            Kind::Nil => None,
            Kind::Str(value) => Some(value.to_owned()),
            _ => return None,
        };
    }
    (r.pos == bytes.len()).then_some(e)
}
