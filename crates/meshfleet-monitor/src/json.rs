//! Reading one flat JSON object field by field, without building a `Value`.
//!
//! Status and telemetry packages are flat objects of scalars (plus one array of integers in
//! telemetry). [`Scalar`] captures what a value *is* so that the caller, not serde, decides
//! what a wrong type means (count and drop the field, never the whole package).

use alloc::borrow::Cow;
use alloc::vec::Vec;
use core::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// One JSON value, as far as a flat package cares.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Scalar<'a> {
    /// A non-negative integer.
    U(u64),
    /// A negative integer.
    I(i64),
    /// A number with a fraction or exponent.
    F(f64),
    /// A string (borrowed when it has no escapes).
    Str(Cow<'a, str>),
    /// `true` / `false`.
    Bool(bool),
    /// `null`.
    Null,
    /// An array of integers or `null`s (telemetry values), at most [`MAX_INTS`] long; longer
    /// arrays and arrays holding anything else read as [`Scalar::Compound`].
    Ints(Vec<Option<i64>>),
    /// An object, or an array that is not a short list of integers.
    Compound,
}

/// Longest integer array kept (a telemetry keyframe has 16 slots; pairs of a delta 32).
pub(crate) const MAX_INTS: usize = 64;

impl Scalar<'_> {
    /// The value as an integer in `lo..=hi`: `Ok(None)` never happens; `Err` says why not.
    pub(crate) fn int_in(&self, lo: i64, hi: i64) -> Result<i64, FieldFault> {
        let v = match *self {
            Self::U(u) => i64::try_from(u).map_err(|_| FieldFault::OutOfRange)?,
            Self::I(i) => i,
            // A relay re-serializes `3.0` as `3`; a whole float is a number, a fraction is not
            // something the library's integer fields ever carry.
            Self::F(f) if f.is_finite() && f == (f as i64) as f64 => f as i64,
            _ => return Err(FieldFault::WrongType),
        };
        if v < lo || v > hi {
            return Err(FieldFault::OutOfRange);
        }
        Ok(v)
    }

    /// The value as a string of at most `max` bytes.
    pub(crate) fn str_max(&self, max: usize) -> Result<&str, FieldFault> {
        match self {
            Self::Str(s) if s.len() <= max => Ok(s),
            Self::Str(_) => Err(FieldFault::TooLong),
            _ => Err(FieldFault::WrongType),
        }
    }
}

/// Why one field of a package was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FieldFault {
    /// The JSON type is not the one the field has (a string where a number belongs...).
    WrongType,
    /// A number outside the field's range (negative memory, loss above 100 %...).
    OutOfRange,
    /// A string longer than the field's cap.
    TooLong,
}

impl fmt::Display for FieldFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::WrongType => "wrong JSON type",
            Self::OutOfRange => "value out of range",
            Self::TooLong => "string too long",
        })
    }
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Scalar::U(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(if v >= 0 {
            Scalar::U(v as u64)
        } else {
            Scalar::I(v)
        })
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Scalar::F(v))
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Owned(v.into())))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Scalar::Bool(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Null)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Scalar::Compound)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        let mut ok = true;
        while let Some(v) = seq.next_element::<Elem>()? {
            match v {
                Elem::Int(i) if ok && out.len() < MAX_INTS => out.push(Some(i)),
                Elem::Null if ok && out.len() < MAX_INTS => out.push(None),
                _ => ok = false,
            }
        }
        Ok(if ok {
            Scalar::Ints(out)
        } else {
            Scalar::Compound
        })
    }
}

impl<'de> de::Deserialize<'de> for Scalar<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor)
    }
}

/// An array element: an integer, or anything else (skipped without allocating).
enum Elem {
    Int(i64),
    Null,
    Other,
}

struct ElemVisitor;

impl<'de> Visitor<'de> for ElemVisitor {
    type Value = Elem;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Elem, E> {
        Ok(i64::try_from(v).map_or(Elem::Other, Elem::Int))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Elem, E> {
        Ok(Elem::Int(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Elem, E> {
        Ok(if v.is_finite() && v == (v as i64) as f64 {
            Elem::Int(v as i64)
        } else {
            Elem::Other
        })
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Elem, E> {
        Ok(Elem::Other)
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Elem, E> {
        Ok(Elem::Other)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Elem, E> {
        Ok(Elem::Null)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Elem, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Elem::Other)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Elem, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Elem::Other)
    }
}

impl<'de> de::Deserialize<'de> for Elem {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ElemVisitor)
    }
}

/// Why a package's text could not be read at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ObjectError {
    /// Not JSON (or nested beyond serde_json's recursion limit).
    Json,
    /// JSON, but not an object.
    NotObject,
}

/// Calls `f(key, value)` for every key of the top-level object in `text`, in order.
///
/// Trailing bytes after the object are ignored, as the library's parser ignores them.
pub(crate) fn for_each_field<'a>(
    text: &'a str,
    mut f: impl FnMut(&str, Scalar<'a>),
) -> Result<(), ObjectError> {
    struct ObjVisitor<'f, F>(&'f mut F);
    impl<'de, F: FnMut(&str, Scalar<'de>)> Visitor<'de> for ObjVisitor<'_, F> {
        type Value = bool;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
            while let Some(k) = map.next_key::<Cow<'de, str>>()? {
                let v = map.next_value::<Scalar<'de>>()?;
                (self.0)(&k, v);
            }
            Ok(true)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(false)
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<bool, E> {
            Ok(false)
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<bool, E> {
            Ok(false)
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<bool, E> {
            Ok(false)
        }
        fn visit_str<E: de::Error>(self, _: &str) -> Result<bool, E> {
            Ok(false)
        }
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<bool, E> {
            Ok(false)
        }
        fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
            Ok(false)
        }
    }
    let mut de = serde_json::Deserializer::from_str(text);
    match de.deserialize_any(ObjVisitor(&mut f)) {
        Ok(true) => Ok(()),
        Ok(false) => Err(ObjectError::NotObject),
        Err(_) => Err(ObjectError::Json),
    }
}
