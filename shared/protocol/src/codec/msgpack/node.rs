//! [`Node`]: a span's value presented to a payload's `Deserialize` as
//! `serde_json::Value` presents the same value.

use serde::de::value::StrDeserializer;
use serde::de::{self, DeserializeSeed, Deserializer, EnumAccess, VariantAccess, Visitor};
use serde::{Deserialize, forward_to_deserialize_any};

use super::{Kind, RAW_VALUE_TOKEN, Reader, Refused};

/// A deserializer over one value of a scanned span, behaving as `serde_json::Value`'s
/// (the owned one, which `from_value` uses) behaves for the same value.
pub(super) struct Node<'r, 'a>(pub(super) &'r mut Reader<'a>);

impl<'a> Node<'_, 'a> {
    fn kind(&mut self) -> Result<Kind<'a>, Refused> {
        self.0.next().ok_or(Refused)
    }

    fn seq<V: Visitor<'a>>(self, len: u32, visitor: V) -> Result<V::Value, Refused> {
        let mut seq = Elements {
            r: self.0,
            left: len,
        };
        let value = visitor.visit_seq(&mut seq)?;
        // As `Value`: an array with elements left over is an error.
        if seq.left == 0 {
            Ok(value)
        } else {
            Err(Refused)
        }
    }

    fn map<V: Visitor<'a>>(self, len: u32, visitor: V) -> Result<V::Value, Refused> {
        let mut map = Entries {
            r: self.0,
            left: len,
            pending: false,
        };
        let value = visitor.visit_map(&mut map)?;
        if map.left == 0 && !map.pending {
            Ok(value)
        } else {
            Err(Refused)
        }
    }

    fn number<V: Visitor<'a>>(mut self, visitor: V) -> Result<V::Value, Refused> {
        match self.kind()? {
            Kind::UInt(v) => visitor.visit_u64(v),
            Kind::NegInt(v) => visitor.visit_i64(v),
            Kind::Float(v) => visitor.visit_f64(v),
            _ => Err(Refused),
        }
    }
}

macro_rules! numbers {
    ($($method:ident)*) => {
        $(fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Refused> {
            self.number(visitor)
        })*
    };
}

impl<'de> Deserializer<'de> for Node<'_, 'de> {
    type Error = Refused;

    fn deserialize_any<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, Refused> {
        match self.kind()? {
            Kind::Nil => visitor.visit_unit(),
            Kind::Bool(v) => visitor.visit_bool(v),
            Kind::UInt(v) => visitor.visit_u64(v),
            Kind::NegInt(v) => visitor.visit_i64(v),
            Kind::Float(v) => visitor.visit_f64(v),
            Kind::Str(v) => visitor.visit_str(v),
            Kind::Array(len) => self.seq(len, visitor),
            Kind::Map(len) => self.map(len, visitor),
            // Never read here: strings are checked.
            Kind::Text(_) => Err(Refused),
        }
    }

    numbers!(deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64 deserialize_i128
        deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64 deserialize_u128
        deserialize_f32 deserialize_f64);

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Refused> {
        if self.0.is_nil() {
            self.0.pos += 1;
            visitor.visit_none()
        } else {
            visitor.visit_some(self)
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        mut self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Refused> {
        match self.kind()? {
            Kind::Str(variant) => visitor.visit_enum(Variant {
                variant,
                value: None,
            }),
            Kind::Map(1) => {
                let Kind::Str(variant) = self.kind()? else {
                    return Err(Refused);
                };
                visitor.visit_enum(Variant {
                    variant,
                    value: Some(self),
                })
            }
            _ => Err(Refused),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Refused> {
        if name == RAW_VALUE_TOKEN {
            return Err(Refused);
        }
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_bool<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, Refused> {
        match self.kind()? {
            Kind::Bool(v) => visitor.visit_bool(v),
            _ => Err(Refused),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, Refused> {
        match self.kind()? {
            Kind::Str(v) => visitor.visit_str(v),
            _ => Err(Refused),
        }
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Refused> {
        self.deserialize_string(visitor)
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Refused> {
        self.deserialize_string(visitor)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Refused> {
        self.deserialize_string(visitor)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, Refused> {
        match self.kind()? {
            Kind::Str(v) => visitor.visit_str(v),
            Kind::Array(len) => self.seq(len, visitor),
            _ => Err(Refused),
        }
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Refused> {
        self.deserialize_byte_buf(visitor)
    }

    fn deserialize_unit<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, Refused> {
        match self.kind()? {
            Kind::Nil => visitor.visit_unit(),
            _ => Err(Refused),
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Refused> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_seq<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, Refused> {
        match self.kind()? {
            Kind::Array(len) => self.seq(len, visitor),
            _ => Err(Refused),
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Refused> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Refused> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, Refused> {
        match self.kind()? {
            Kind::Map(len) => self.map(len, visitor),
            _ => Err(Refused),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        mut self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Refused> {
        match self.kind()? {
            Kind::Array(len) => self.seq(len, visitor),
            Kind::Map(len) => self.map(len, visitor),
            _ => Err(Refused),
        }
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Refused> {
        self.0.skip(0, true).ok_or(Refused)?;
        visitor.visit_unit()
    }
}

struct Elements<'r, 'a> {
    r: &'r mut Reader<'a>,
    left: u32,
}

impl<'de> de::SeqAccess<'de> for Elements<'_, 'de> {
    type Error = Refused;

    fn next_element_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, Refused> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(Node(self.r)).map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        usize::try_from(self.left).ok()
    }
}

struct Entries<'r, 'a> {
    r: &'r mut Reader<'a>,
    left: u32,
    /// A key was read and its value not yet.
    pending: bool,
}

impl<'de> de::MapAccess<'de> for Entries<'_, 'de> {
    type Error = Refused;

    fn next_key_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, Refused> {
        if self.left == 0 {
            return Ok(None);
        }
        if self.pending {
            return Err(Refused);
        }
        self.left -= 1;
        let Some(Kind::Str(key)) = self.r.next() else {
            return Err(Refused);
        };
        self.pending = true;
        seed.deserialize(Key(key)).map(Some)
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, Refused> {
        if !std::mem::replace(&mut self.pending, false) {
            return Err(Refused);
        }
        seed.deserialize(Node(self.r))
    }

    fn size_hint(&self) -> Option<usize> {
        usize::try_from(self.left).ok()
    }
}

/// A map key, as `Value`'s map-key deserializer presents it (numeric keys, which it
/// parses from the text, are left to the general path).
struct Key<'a>(&'a str);

macro_rules! refused {
    ($($method:ident)*) => {
        $(fn $method<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Refused> {
            Err(Refused)
        })*
    };
}

impl<'de> Deserializer<'de> for Key<'_> {
    type Error = Refused;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Refused> {
        visitor.visit_str(self.0)
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Refused> {
        match self.0 {
            "true" => visitor.visit_bool(true),
            "false" => visitor.visit_bool(false),
            _ => Err(Refused),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Refused> {
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Refused> {
        if name == RAW_VALUE_TOKEN {
            return Err(Refused);
        }
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Refused> {
        StrDeserializer::<Refused>::new(self.0).deserialize_enum(name, variants, visitor)
    }

    forward_to_deserialize_any! {
        char str string bytes byte_buf unit unit_struct seq tuple tuple_struct
        map struct identifier ignored_any
    }

    // Numeric keys: left to the general path.
    refused! {
        deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64 deserialize_i128 deserialize_u8
        deserialize_u16 deserialize_u32 deserialize_u64 deserialize_u128 deserialize_f32
        deserialize_f64
    }
}

/// An enum's variant: a string (`value` none) or a one-key map's key and its value.
struct Variant<'r, 'a> {
    variant: &'a str,
    value: Option<Node<'r, 'a>>,
}

impl<'r, 'de> EnumAccess<'de> for Variant<'r, 'de> {
    type Error = Refused;
    type Variant = Payload<'r, 'de>;

    fn variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<(S::Value, Self::Variant), Refused> {
        let variant = seed.deserialize(StrDeserializer::<Refused>::new(self.variant))?;
        Ok((variant, Payload(self.value)))
    }
}

/// The variant's value, if it has one.
struct Payload<'r, 'a>(Option<Node<'r, 'a>>);

impl<'de> VariantAccess<'de> for Payload<'_, 'de> {
    type Error = Refused;

    fn unit_variant(self) -> Result<(), Refused> {
        match self.0 {
            Some(node) => <()>::deserialize(node),
            None => Ok(()),
        }
    }

    fn newtype_variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Result<S::Value, Refused> {
        seed.deserialize(self.0.ok_or(Refused)?)
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, Refused> {
        let mut node = self.0.ok_or(Refused)?;
        match node.kind()? {
            Kind::Array(0) => visitor.visit_unit(),
            Kind::Array(len) => node.seq(len, visitor),
            _ => Err(Refused),
        }
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Refused> {
        let mut node = self.0.ok_or(Refused)?;
        match node.kind()? {
            Kind::Map(len) => node.map(len, visitor),
            _ => Err(Refused),
        }
    }
}
