//! Domain events and their stable, versioned type names.

use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The stable wire identity of one event type: a dotted name and a version.
///
/// Its CloudEvents `ce_type` is `{name}.v{version}`, e.g. `order.placed.v2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EventType {
    /// `{aggregate}.{event}`, e.g. `order.placed`. Never changes once events are written.
    pub name: &'static str,
    /// Schema version of the payload, starting at 1. Older versions are read through
    /// upcasters (see [`crate::Upcaster`]).
    pub version: u32,
    /// `{name}.v{version}`: the value of the `ce_type` header.
    pub ce_type: &'static str,
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.ce_type)
    }
}

/// An enum of the events one aggregate type emits.
///
/// Usually derived: `#[derive(DomainEvent)] #[event(aggregate = Order)]` names the
/// aggregate by its type, as `#[command(aggregate = Order)]` does, and names every
/// variant `{name}.{variant_in_snake_case}` at version 1 unless told otherwise, where
/// `{name}` is the aggregate's [`Aggregate::NAME`](crate::Aggregate::NAME) (`order`).
/// The derive checks at compile time that `Order` is an aggregate whose
/// [`Event`](crate::Aggregate::Event) is this enum.
///
/// On the wire the payload is the variant's own data (for `Placed { customer, lines }`
/// the JSON object `{"customer":…,"lines":…}`); the variant is identified by the
/// `ce_type` header, not by a tag in the payload.
pub trait DomainEvent: Serialize + DeserializeOwned + fmt::Debug + Send + Sync + 'static {
    /// Name of the aggregate type these events belong to (`order`): its
    /// [`Aggregate::NAME`](crate::Aggregate::NAME).
    const AGGREGATE: &'static str;

    /// Every event type of this enum at its current version, in declaration order.
    const EVENT_TYPES: &'static [EventType];

    /// The event type of this value.
    fn event_type(&self) -> &'static EventType;

    /// Serializes the variant's data: the record value.
    fn to_payload(&self) -> Result<serde_json::Value, PayloadError>;

    /// Deserializes a payload at the current version of `event_type`.
    fn from_payload(
        event_type: &EventType,
        payload: serde_json::Value,
    ) -> Result<Self, PayloadError>;

    /// A faster way to read a payload at the current version of `event_type`:
    /// straight from its JSON text, without building a [`serde_json::Value`] first.
    /// `None` when that does not work out, for whatever reason; the codec then
    /// parses a `Value` and calls [`Self::from_payload`], whose result (or error)
    /// stands. So an implementation may only return what `from_payload` would.
    ///
    /// The default returns `None`; the derive implements it.
    fn from_payload_text(event_type: &EventType, json: &[u8]) -> Option<Self> {
        let _ = (event_type, json);
        None
    }

    /// Looks up a current event type by its name (`order.placed`).
    fn event_type_named(name: &str) -> Option<&'static EventType> {
        Self::EVENT_TYPES.iter().find(|t| t.name == name)
    }
}

/// Why an event payload could not be converted to or from JSON.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PayloadError {
    /// The JSON did not match the event's fields.
    #[error("payload does not match the event's fields: {0}")]
    Json(#[from] serde_json::Error),
    /// The payload names an event type this enum does not have.
    #[error("`{name}` is not an event type of this enum")]
    UnknownType {
        /// The event type name that was asked for.
        name: String,
    },
    /// The enum's serde representation is not the externally tagged default.
    #[error(
        "event enum `{enum_name}` does not serialize as serde's default (externally tagged) \
         enum; remove serde attributes that change the enum representation or skip variants"
    )]
    Representation {
        /// The Rust name of the enum.
        enum_name: &'static str,
    },
}

/// Support code for `#[derive(DomainEvent)]`, re-exported as `__private` by `tributary_core` and `tributary`.
pub(crate) mod derive_support {

    use serde::de::{self, Deserialize, Deserializer, Visitor};
    use serde_json::{Map, Value};

    use super::PayloadError;
    use crate::aggregate::Aggregate;

    /// `A::NAME`, for `#[event(aggregate = A)]` on the enum `E`. The bound is the
    /// derive's check that `A` is an aggregate whose events are `E`: the caller is
    /// spanned at `A` in the attribute, so a mistake is reported there.
    pub const fn aggregate_name<A, E>() -> &'static str
    where
        A: Aggregate<Event = E>,
    {
        A::NAME
    }

    /// The total length of `parts`: the length of [`concat`]'s array.
    pub const fn concat_len(parts: &[&str]) -> usize {
        let mut len = 0;
        let mut i = 0;
        while i < parts.len() {
            len += parts[i].len();
            i += 1;
        }
        len
    }

    /// `parts` joined, as bytes, in const context: the derive builds
    /// `{aggregate}.{event}` from `A::NAME`, which no macro can see. `N` must be
    /// [`concat_len`]`(parts)`; anything else fails const evaluation.
    pub const fn concat<const N: usize>(parts: &[&str]) -> [u8; N] {
        let mut out = [0u8; N];
        let mut at = 0;
        let mut i = 0;
        while i < parts.len() {
            let part = parts[i].as_bytes();
            let mut j = 0;
            while j < part.len() {
                assert!(at < N, "concat: the array is shorter than the parts");
                out[at] = part[j];
                at += 1;
                j += 1;
            }
            i += 1;
        }
        assert!(at == N, "concat: the array is longer than the parts");
        out
    }

    /// [`concat`]'s bytes as the `&str` they are (whole strings joined are UTF-8).
    pub const fn as_str(bytes: &'static [u8]) -> &'static str {
        match core::str::from_utf8(bytes) {
            Ok(s) => s,
            Err(_) => panic!("concat: not UTF-8"),
        }
    }

    /// Serializes an externally tagged enum value and strips the tag.
    pub fn to_payload<T: serde::Serialize>(
        enum_name: &'static str,
        value: &T,
    ) -> Result<Value, PayloadError> {
        match serde_json::to_value(value)? {
            // Unit variant: "Variant".
            Value::String(_) => Ok(Value::Object(Map::new())),
            Value::Object(map) if map.len() == 1 => match map.into_iter().next() {
                Some((_, inner)) => Ok(inner),
                None => Err(PayloadError::Representation { enum_name }),
            },
            _ => Err(PayloadError::Representation { enum_name }),
        }
    }

    /// The serde tag of variant `index`, if serde's names are one per variant
    /// (`variant_count`): `None` when they are not, as when a variant is skipped.
    fn variant_tag(
        variant_names: &'static [&'static str],
        variant_count: usize,
        index: usize,
    ) -> Option<&'static str> {
        if variant_names.len() != variant_count {
            return None;
        }
        variant_names.get(index).copied()
    }

    /// Re-attaches the serde tag of variant `index` and deserializes.
    pub fn from_payload<T: de::DeserializeOwned>(
        enum_name: &'static str,
        variant_names: &'static [&'static str],
        variant_count: usize,
        index: usize,
        unit: bool,
        payload: Value,
    ) -> Result<T, PayloadError> {
        let tag = variant_tag(variant_names, variant_count, index)
            .ok_or(PayloadError::Representation { enum_name })?;
        let tagged = if unit {
            match &payload {
                Value::Null => {}
                Value::Object(map) if map.is_empty() => {}
                _ => {
                    return Err(PayloadError::Json(de::Error::custom(format!(
                        "variant `{tag}` has no fields, expected `{{}}`, found {payload}"
                    ))));
                }
            }
            Value::String(tag.to_owned())
        } else {
            let mut map = Map::with_capacity(1);
            map.insert(tag.to_owned(), payload);
            Value::Object(map)
        };
        Ok(serde_json::from_value(tagged)?)
    }

    /// [`from_payload`]'s result for variant `index`, read from the payload's JSON
    /// text without a [`Value`] in between; `None` wherever that path fails (its
    /// caller then takes `from_payload`'s path, errors and all).
    pub fn from_payload_text<T: de::DeserializeOwned>(
        variant_names: &'static [&'static str],
        variant_count: usize,
        index: usize,
        json: &[u8],
    ) -> Option<T> {
        let tag = variant_tag(variant_names, variant_count, index)?;
        let mut json = serde_json::Deserializer::from_slice(json);
        let value = T::deserialize(Tagged {
            tag,
            json: &mut json,
        })
        .ok()?;
        json.end().ok()?;
        Some(value)
    }

    /// An externally tagged enum whose tag is known (`tag`) and whose variant data
    /// is the JSON text being read.
    struct Tagged<'a, 'de> {
        tag: &'static str,
        json: &'a mut serde_json::Deserializer<serde_json::de::SliceRead<'de>>,
    }

    impl<'de> Deserializer<'de> for Tagged<'_, 'de> {
        type Error = serde_json::Error;

        fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom(
                "an event payload is read as an enum variant",
            ))
        }

        fn deserialize_enum<V: Visitor<'de>>(
            self,
            _name: &'static str,
            _variants: &'static [&'static str],
            visitor: V,
        ) -> Result<V::Value, Self::Error> {
            visitor.visit_enum(self)
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map struct identifier ignored_any
        }
    }

    impl<'de> de::EnumAccess<'de> for Tagged<'_, 'de> {
        type Error = serde_json::Error;
        type Variant = Self;

        fn variant_seed<S: de::DeserializeSeed<'de>>(
            self,
            seed: S,
        ) -> Result<(S::Value, Self), Self::Error> {
            let tag = de::IntoDeserializer::<serde_json::Error>::into_deserializer(self.tag);
            Ok((seed.deserialize(tag)?, self))
        }
    }

    impl<'de> de::VariantAccess<'de> for Tagged<'_, 'de> {
        type Error = serde_json::Error;

        /// A unit variant's payload is `null` or `{}`, as in `from_payload`.
        fn unit_variant(self) -> Result<(), Self::Error> {
            self.json.deserialize_any(NoFields)
        }

        fn newtype_variant_seed<S: de::DeserializeSeed<'de>>(
            self,
            seed: S,
        ) -> Result<S::Value, Self::Error> {
            seed.deserialize(&mut *self.json)
        }

        fn tuple_variant<V: Visitor<'de>>(
            self,
            len: usize,
            visitor: V,
        ) -> Result<V::Value, Self::Error> {
            self.json.deserialize_tuple(
                len,
                Only {
                    visitor,
                    tuple: true,
                },
            )
        }

        fn struct_variant<V: Visitor<'de>>(
            self,
            fields: &'static [&'static str],
            visitor: V,
        ) -> Result<V::Value, Self::Error> {
            self.json.deserialize_struct(
                "",
                fields,
                Only {
                    visitor,
                    tuple: false,
                },
            )
        }
    }

    /// Passes on what the `Value` path accepts for a struct or tuple variant, and
    /// turns down the rest: a struct variant only from an object (serde_json also
    /// reads a struct from an array, but not from a `Value` in a variant), a tuple
    /// variant only from an array that is not empty (the `Value` path reads an empty
    /// one as unit).
    struct Only<V> {
        visitor: V,
        /// A tuple variant (else a struct variant).
        tuple: bool,
    }

    impl<'de, V: Visitor<'de>> Visitor<'de> for Only<V> {
        type Value = V::Value;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            self.visitor.expecting(f)
        }

        fn visit_map<M: de::MapAccess<'de>>(self, map: M) -> Result<V::Value, M::Error> {
            if self.tuple {
                return Err(de::Error::custom("a tuple variant from an object"));
            }
            self.visitor.visit_map(map)
        }

        fn visit_seq<S: de::SeqAccess<'de>>(self, seq: S) -> Result<V::Value, S::Error> {
            if !self.tuple {
                return Err(de::Error::custom("a struct variant from an array"));
            }
            let mut counted = Counted { seq, taken: 0 };
            let value = self.visitor.visit_seq(&mut counted)?;
            if counted.taken == 0 {
                return Err(de::Error::custom("an empty array"));
            }
            Ok(value)
        }
    }

    /// A sequence that counts the elements taken from it.
    struct Counted<S> {
        seq: S,
        taken: usize,
    }

    impl<'de, S: de::SeqAccess<'de>> de::SeqAccess<'de> for &mut Counted<S> {
        type Error = S::Error;

        fn next_element_seed<T: de::DeserializeSeed<'de>>(
            &mut self,
            seed: T,
        ) -> Result<Option<T::Value>, S::Error> {
            let element = self.seq.next_element_seed(seed)?;
            self.taken += usize::from(element.is_some());
            Ok(element)
        }

        fn size_hint(&self) -> Option<usize> {
            self.seq.size_hint()
        }
    }

    /// Accepts `null` and `{}`: the payload of a unit variant.
    struct NoFields;

    impl<'de> Visitor<'de> for NoFields {
        type Value = ();

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("null or {}")
        }

        fn visit_unit<E: de::Error>(self) -> Result<(), E> {
            Ok(())
        }

        fn visit_map<M: de::MapAccess<'de>>(self, mut map: M) -> Result<(), M::Error> {
            match map.next_key::<de::IgnoredAny>()? {
                None => Ok(()),
                Some(_) => Err(de::Error::custom("a unit variant has no fields")),
            }
        }
    }

    /// The serde names of an enum's variants, in declaration order, as serde's
    /// derive sees them (after `rename`/`rename_all`). Empty if `T` is not an enum.
    pub fn variant_names<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
        let mut names: &'static [&'static str] = &[];
        let _ = T::deserialize(Introspect { names: &mut names });
        names
    }

    struct Introspect<'a> {
        names: &'a mut &'static [&'static str],
    }

    impl<'de> Deserializer<'de> for Introspect<'_> {
        type Error = de::value::Error;

        fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("not an enum"))
        }

        fn deserialize_enum<V: Visitor<'de>>(
            self,
            _name: &'static str,
            variants: &'static [&'static str],
            _visitor: V,
        ) -> Result<V::Value, Self::Error> {
            *self.names = variants;
            Err(de::Error::custom("introspection only"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map struct identifier ignored_any
        }
    }

    #[cfg(test)]
    mod tests {
        use super::{as_str, concat, concat_len};

        // As the derive uses them: every step a constant.
        const AGGREGATE: &str = "order-line";
        const PARTS: &[&str] = &[AGGREGATE, ".items_added.v2"];
        const BYTES: [u8; concat_len(PARTS)] = concat(PARTS);
        const CE_TYPE: &str = as_str(&BYTES);

        #[test]
        fn joins_in_const_context() {
            assert_eq!(CE_TYPE, "order-line.items_added.v2");
        }

        #[test]
        fn counts_bytes_not_chars() {
            assert_eq!(concat_len(&[]), 0);
            assert_eq!(concat_len(&["", ""]), 0);
            assert_eq!(concat_len(&["a", "bc", "", "d"]), 4);
            assert_eq!(concat_len(&["é", "€"]), 5);
        }

        #[test]
        fn joins_any_parts() {
            const EMPTY: [u8; 0] = concat(&["", ""]);
            assert_eq!(as_str(&EMPTY), "");
            const ONE: [u8; 3] = concat(&["abc"]);
            assert_eq!(as_str(&ONE), "abc");
            // Multi-byte characters stay whole.
            const WIDE: [u8; 7] = concat(&["é", ".", "€", "x"]);
            assert_eq!(as_str(&WIDE), "é.€x");
        }

        #[test]
        #[should_panic(expected = "shorter than the parts")]
        fn a_short_array_fails() {
            let _ = concat::<3>(&["ab", "cd"]);
        }

        #[test]
        #[should_panic(expected = "longer than the parts")]
        fn a_long_array_fails() {
            let _ = concat::<5>(&["ab", "cd"]);
        }

        #[test]
        #[should_panic(expected = "not UTF-8")]
        fn bytes_that_are_not_utf8_fail() {
            static HALF: [u8; 1] = [0xc3];
            let _ = as_str(&HALF);
        }
    }
}
