//! Reading JSON values the way ArduinoJson's `is<T>()` / `as<T>()` do in the library.
//!
//! A field of the wrong JSON type never fails the whole frame: it reads as "absent", which
//! is what the library does (e.g. `"dest":"21"` reads as 0, `"root":1` reads as false).

use core::fmt;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// An unsigned 32-bit integer if the value is a JSON integer in range, else `None`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct LenientU32(pub(crate) Option<u32>);

/// A JSON boolean; any other value reads as `None`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct LenientBool(pub(crate) Option<bool>);

/// An integer, or a string holding one (ArduinoJson's `as<int>()` converts `"9"` to 9).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct LenientInt(pub(crate) Option<i64>);

macro_rules! ignore_compound {
    () => {
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            Ok(Default::default())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(Default::default())
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
    };
}

struct U32Visitor;
impl<'de> Visitor<'de> for U32Visitor {
    type Value = LenientU32;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<LenientU32, E> {
        Ok(LenientU32(u32::try_from(v).ok()))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<LenientU32, E> {
        Ok(LenientU32(u32::try_from(v).ok()))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<LenientU32, E> {
        Ok(LenientU32(None))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<LenientU32, E> {
        Ok(LenientU32(None))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<LenientU32, E> {
        Ok(LenientU32(None))
    }
    ignore_compound!();
}
impl<'de> de::Deserialize<'de> for LenientU32 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(U32Visitor)
    }
}

struct BoolVisitor;
impl<'de> Visitor<'de> for BoolVisitor {
    type Value = LenientBool;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<LenientBool, E> {
        Ok(LenientBool(Some(v)))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<LenientBool, E> {
        Ok(LenientBool(None))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<LenientBool, E> {
        Ok(LenientBool(None))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<LenientBool, E> {
        Ok(LenientBool(None))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<LenientBool, E> {
        Ok(LenientBool(None))
    }
    ignore_compound!();
}
impl<'de> de::Deserialize<'de> for LenientBool {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(BoolVisitor)
    }
}

struct IntVisitor;
impl<'de> Visitor<'de> for IntVisitor {
    type Value = LenientInt;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<LenientInt, E> {
        Ok(LenientInt(i64::try_from(v).ok()))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<LenientInt, E> {
        Ok(LenientInt(Some(v)))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<LenientInt, E> {
        // ArduinoJson truncates a float read as int; only whole numbers are plausible here.
        Ok(LenientInt(
            if v.is_finite() && v >= i64::MIN as f64 && v <= i64::MAX as f64 {
                Some(v as i64)
            } else {
                None
            },
        ))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<LenientInt, E> {
        Ok(LenientInt(v.trim().parse::<i64>().ok()))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<LenientInt, E> {
        Ok(LenientInt(None))
    }
    ignore_compound!();
}
impl<'de> de::Deserialize<'de> for LenientInt {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(IntVisitor)
    }
}
