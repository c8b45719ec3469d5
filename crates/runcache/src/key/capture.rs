//! Extracts `(digest, len)` from the inner value of a `Buffer` or `Prehashed`.
//!
//! The key serializers see those types only as a newtype struct with a reserved name; they feed
//! the inner value to the small serializer below, which accepts exactly what `Buffer` and
//! `Prehashed` produce: a byte string (hashed in place, no copy) or a struct `{blake3, len}`.

use serde::ser::{self, Impossible, Serialize};

use super::path::{EncodeError, Segment};
use crate::digest::Digest;

/// The `(digest, len)` of the value wrapped under the reserved newtype name `name`.
pub(crate) fn capture<T: Serialize + ?Sized>(
    name: &str,
    value: &T,
) -> Result<(Digest, u64), EncodeError> {
    match value.serialize(Capture)? {
        Captured::Blob(digest, len) => Ok((digest, len)),
        _ => Err(misuse(name)),
    }
}

fn misuse(name: &str) -> EncodeError {
    EncodeError::new(format!(
        "the newtype name `{name}` is reserved for runcache::key::Buffer and \
         runcache::key::Prehashed; it must wrap a byte string or a struct {{blake3, len}}"
    ))
}

enum Captured {
    Blob(Digest, u64),
    Str(String),
    U64(u64),
}

struct Capture;

fn unsupported<T>() -> Result<T, EncodeError> {
    Err(misuse("$runcache::*"))
}

macro_rules! reject {
    ($($method:ident($($arg:ty),*)),* $(,)?) => {
        $(fn $method(self, $(_: $arg),*) -> Result<Captured, EncodeError> { unsupported() })*
    };
}

impl ser::Serializer for Capture {
    type Ok = Captured;
    type Error = EncodeError;
    type SerializeSeq = Impossible<Captured, EncodeError>;
    type SerializeTuple = Impossible<Captured, EncodeError>;
    type SerializeTupleStruct = Impossible<Captured, EncodeError>;
    type SerializeTupleVariant = Impossible<Captured, EncodeError>;
    type SerializeMap = Impossible<Captured, EncodeError>;
    type SerializeStruct = CaptureStruct;
    type SerializeStructVariant = Impossible<Captured, EncodeError>;

    fn serialize_bytes(self, v: &[u8]) -> Result<Captured, EncodeError> {
        Ok(Captured::Blob(Digest::of(v), v.len() as u64))
    }
    fn serialize_str(self, v: &str) -> Result<Captured, EncodeError> {
        Ok(Captured::Str(v.to_owned()))
    }
    fn serialize_u64(self, v: u64) -> Result<Captured, EncodeError> {
        Ok(Captured::U64(v))
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<Captured, EncodeError> {
        value.serialize(self)
    }
    fn serialize_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<CaptureStruct, EncodeError> {
        Ok(CaptureStruct::default())
    }

    reject!(
        serialize_bool(bool),
        serialize_i8(i8),
        serialize_i16(i16),
        serialize_i32(i32),
        serialize_i64(i64),
        serialize_u8(u8),
        serialize_u16(u16),
        serialize_u32(u32),
        serialize_f32(f32),
        serialize_f64(f64),
        serialize_char(char),
        serialize_none(),
        serialize_unit(),
        serialize_unit_struct(&'static str),
        serialize_unit_variant(&'static str, u32, &'static str),
    );

    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result<Captured, EncodeError> {
        unsupported()
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<Captured, EncodeError> {
        unsupported()
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, EncodeError> {
        unsupported()
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, EncodeError> {
        unsupported()
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, EncodeError> {
        unsupported()
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, EncodeError> {
        unsupported()
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, EncodeError> {
        unsupported()
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, EncodeError> {
        unsupported()
    }
}

/// Collects the `blake3` and `len` fields of a `Prehashed`.
#[derive(Default)]
struct CaptureStruct {
    digest: Option<Digest>,
    len: Option<u64>,
}

impl ser::SerializeStruct for CaptureStruct {
    type Ok = Captured;
    type Error = EncodeError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), EncodeError> {
        let v = value
            .serialize(Capture)
            .map_err(|e| e.at(Segment::Field(key)))?;
        match (key, v) {
            ("blake3", Captured::Str(s)) => {
                let d = Digest::from_hex(&s)
                    .map_err(|e| EncodeError::new(e.to_string()).at(Segment::Field("blake3")))?;
                self.digest = Some(d);
            }
            ("len", Captured::U64(n)) => self.len = Some(n),
            _ => return unsupported().map(|_: Captured| ()),
        }
        Ok(())
    }
    fn end(self) -> Result<Captured, EncodeError> {
        match (self.digest, self.len) {
            (Some(d), Some(n)) => Ok(Captured::Blob(d, n)),
            _ => unsupported(),
        }
    }
}
