//! The key document: a readable JSON rendering of the arguments that went into a key.
//!
//! Built only on a cache miss, so it favours clarity over speed. It fails where the canonical
//! encoder fails (same messages, same paths): map keys are canonically encoded to detect
//! duplicates, exactly as the encoder does.

use serde::ser::{self, Serialize};
use serde_json::{Map, Number, Value};

use super::capture;
use super::encode::{self, duplicate_key, render, render_key};
use super::path::{EncodeError, Segment};
use super::{BUFFER_MAGIC, PREHASHED_MAGIC};
use crate::digest::Digest;

/// Byte strings up to this length appear in the document as hex; longer ones as a digest.
pub(crate) const INLINE_BYTES_MAX: usize = 64;

/// The document of one value.
pub(crate) fn to_document<T: Serialize + ?Sized>(value: &T) -> Result<Value, EncodeError> {
    value.serialize(Doc)
}

fn blob(kind: &str, digest: &Digest, len: u64) -> Value {
    let mut inner = Map::new();
    inner.insert("len".into(), Value::from(len));
    inner.insert("blake3".into(), Value::from(digest.to_hex()));
    let mut outer = Map::new();
    outer.insert(kind.into(), Value::Object(inner));
    Value::Object(outer)
}

/// A float in a key document: a JSON number, or `"NaN"`, `"inf"`, `"-inf"`.
pub fn float_json(v: f64) -> Value {
    match Number::from_f64(v) {
        Some(n) => Value::Number(n),
        None if v.is_nan() => Value::from("NaN"),
        None if v > 0.0 => Value::from("inf"),
        None => Value::from("-inf"),
    }
}

fn variant(name: &str, payload: Value) -> Value {
    let mut m = Map::new();
    m.insert(name.into(), payload);
    Value::Object(m)
}

/// Inserts `key` into `map`; if a different canonical key rendered to the same text, the later
/// one is suffixed ` #2`, ` #3`, ... so nothing is lost.
pub fn insert_unique(map: &mut Map<String, Value>, key: String, value: Value) {
    if !map.contains_key(&key) {
        map.insert(key, value);
        return;
    }
    let mut n = 2u64;
    loop {
        let candidate = format!("{key} #{n}");
        if !map.contains_key(&candidate) {
            map.insert(candidate, value);
            return;
        }
        n += 1;
    }
}

/// The document serializer.
struct Doc;

impl ser::Serializer for Doc {
    type Ok = Value;
    type Error = EncodeError;
    type SerializeSeq = DocSeq;
    type SerializeTuple = DocSeq;
    type SerializeTupleStruct = DocSeq;
    type SerializeTupleVariant = DocSeq;
    type SerializeMap = DocMap;
    type SerializeStruct = DocMap;
    type SerializeStructVariant = DocMap;

    fn serialize_bool(self, v: bool) -> Result<Value, EncodeError> {
        Ok(Value::Bool(v))
    }
    fn serialize_i8(self, v: i8) -> Result<Value, EncodeError> {
        Ok(Value::from(v))
    }
    fn serialize_i16(self, v: i16) -> Result<Value, EncodeError> {
        Ok(Value::from(v))
    }
    fn serialize_i32(self, v: i32) -> Result<Value, EncodeError> {
        Ok(Value::from(v))
    }
    fn serialize_i64(self, v: i64) -> Result<Value, EncodeError> {
        Ok(Value::from(v))
    }
    fn serialize_i128(self, v: i128) -> Result<Value, EncodeError> {
        Ok(match (i64::try_from(v), u64::try_from(v)) {
            (Ok(i), _) => Value::from(i),
            (_, Ok(u)) => Value::from(u),
            _ => Value::from(v.to_string()),
        })
    }
    fn serialize_u8(self, v: u8) -> Result<Value, EncodeError> {
        Ok(Value::from(v))
    }
    fn serialize_u16(self, v: u16) -> Result<Value, EncodeError> {
        Ok(Value::from(v))
    }
    fn serialize_u32(self, v: u32) -> Result<Value, EncodeError> {
        Ok(Value::from(v))
    }
    fn serialize_u64(self, v: u64) -> Result<Value, EncodeError> {
        Ok(Value::from(v))
    }
    fn serialize_u128(self, v: u128) -> Result<Value, EncodeError> {
        Ok(match u64::try_from(v) {
            Ok(u) => Value::from(u),
            Err(_) => Value::from(v.to_string()),
        })
    }
    fn serialize_f32(self, v: f32) -> Result<Value, EncodeError> {
        // Via the shortest decimal of the f32, so 0.1f32 reads 0.1, not 0.10000000149011612.
        Ok(match v.to_string().parse::<f64>() {
            Ok(w) if v.is_finite() => float_json(w),
            _ => float_json(f64::from(v)),
        })
    }
    fn serialize_f64(self, v: f64) -> Result<Value, EncodeError> {
        Ok(float_json(v))
    }
    fn serialize_char(self, v: char) -> Result<Value, EncodeError> {
        Ok(Value::from(v.to_string()))
    }
    fn serialize_str(self, v: &str) -> Result<Value, EncodeError> {
        Ok(Value::from(v))
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<Value, EncodeError> {
        if v.len() <= INLINE_BYTES_MAX {
            Ok(Value::from(hex::encode(v)))
        } else {
            Ok(blob("$bytes", &Digest::of(v), v.len() as u64))
        }
    }
    fn serialize_none(self) -> Result<Value, EncodeError> {
        Ok(Value::Null)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<Value, EncodeError> {
        // `Some(x)` reads as `x`, except when `x` itself reads as null (`Some(None)`, `Some(())`).
        match value.serialize(Doc)? {
            Value::Null => Ok(variant("$some", Value::Null)),
            v => Ok(v),
        }
    }
    fn serialize_unit(self) -> Result<Value, EncodeError> {
        Ok(Value::Null)
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<Value, EncodeError> {
        Ok(Value::Null)
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<Value, EncodeError> {
        Ok(Value::from(variant))
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        value: &T,
    ) -> Result<Value, EncodeError> {
        if name == BUFFER_MAGIC || name == PREHASHED_MAGIC {
            let (digest, len) = capture::capture(name, value)?;
            let kind = if name == BUFFER_MAGIC {
                "$buffer"
            } else {
                "$prehashed"
            };
            Ok(blob(kind, &digest, len))
        } else {
            value.serialize(self)
        }
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        name: &'static str,
        value: &T,
    ) -> Result<Value, EncodeError> {
        Ok(variant(name, value.serialize(Doc)?))
    }
    fn serialize_seq(self, len: Option<usize>) -> Result<DocSeq, EncodeError> {
        Ok(DocSeq::new(None, len.unwrap_or(0)))
    }
    fn serialize_tuple(self, len: usize) -> Result<DocSeq, EncodeError> {
        Ok(DocSeq::new(None, len))
    }
    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        len: usize,
    ) -> Result<DocSeq, EncodeError> {
        Ok(DocSeq::new(None, len))
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        name: &'static str,
        len: usize,
    ) -> Result<DocSeq, EncodeError> {
        Ok(DocSeq::new(Some(name), len))
    }
    fn serialize_map(self, _len: Option<usize>) -> Result<DocMap, EncodeError> {
        Ok(DocMap::new(None))
    }
    fn serialize_struct(self, _name: &'static str, _len: usize) -> Result<DocMap, EncodeError> {
        Ok(DocMap::new(None))
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        name: &'static str,
        _len: usize,
    ) -> Result<DocMap, EncodeError> {
        Ok(DocMap::new(Some(name)))
    }
}

/// Sequences and tuples (optionally inside a variant).
struct DocSeq {
    variant: Option<&'static str>,
    items: Vec<Value>,
}

impl DocSeq {
    fn new(variant: Option<&'static str>, len: usize) -> Self {
        DocSeq {
            variant,
            items: Vec::with_capacity(len.min(4096)),
        }
    }
    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), EncodeError> {
        let i = self.items.len() as u64;
        let v = value.serialize(Doc).map_err(|e| e.at(Segment::Index(i)))?;
        self.items.push(v);
        Ok(())
    }
    fn finish(self) -> Result<Value, EncodeError> {
        let v = Value::Array(self.items);
        Ok(match self.variant {
            Some(name) => variant(name, v),
            None => v,
        })
    }
}

macro_rules! doc_seq_impl {
    ($trait:ident, $method:ident) => {
        impl ser::$trait for DocSeq {
            type Ok = Value;
            type Error = EncodeError;
            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), EncodeError> {
                self.element(value)
            }
            fn end(self) -> Result<Value, EncodeError> {
                self.finish()
            }
        }
    };
}

doc_seq_impl!(SerializeSeq, serialize_element);
doc_seq_impl!(SerializeTuple, serialize_element);
doc_seq_impl!(SerializeTupleStruct, serialize_field);
doc_seq_impl!(SerializeTupleVariant, serialize_field);

/// Maps and structs (optionally inside a variant). Entries are kept with their canonical key
/// bytes so duplicates are detected exactly as by the encoder.
struct DocMap {
    variant: Option<&'static str>,
    entries: Vec<(Vec<u8>, Value)>,
    pending_key: Option<Vec<u8>>,
}

impl DocMap {
    fn new(variant: Option<&'static str>) -> Self {
        DocMap {
            variant,
            entries: Vec::new(),
            pending_key: None,
        }
    }

    fn field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), EncodeError> {
        let v = value
            .serialize(Doc)
            .map_err(|e| e.at(Segment::Field(key)))?;
        let mut k = Vec::with_capacity(key.len() + 9);
        encode::write_str(&mut k, key);
        self.entries.push((k, v));
        Ok(())
    }

    fn finish(mut self) -> Result<Value, EncodeError> {
        if self.pending_key.is_some() {
            return Err(EncodeError::new(
                "a map key was serialized without its value (broken Serialize impl)",
            ));
        }
        self.entries.sort_by(|a, b| a.0.cmp(&b.0));
        for w in self.entries.windows(2) {
            if w[0].0 == w[1].0 {
                return Err(duplicate_key(&w[0].0));
            }
        }
        let mut map = Map::new();
        for (k, v) in self.entries {
            insert_unique(&mut map, render_key(&k), v);
        }
        let v = Value::Object(map);
        Ok(match self.variant {
            Some(name) => variant(name, v),
            None => v,
        })
    }
}

impl ser::SerializeMap for DocMap {
    type Ok = Value;
    type Error = EncodeError;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), EncodeError> {
        if self.pending_key.is_some() {
            return Err(EncodeError::new(
                "two map keys were serialized without a value between them (broken Serialize impl)",
            ));
        }
        let mut k = Vec::new();
        let n = self.entries.len() as u64;
        encode::encode_into(&mut k, key).map_err(|e| e.at(Segment::KeyOf(n)))?;
        self.pending_key = Some(k);
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), EncodeError> {
        let Some(k) = self.pending_key.take() else {
            return Err(EncodeError::new(
                "a map value was serialized without its key (broken Serialize impl)",
            ));
        };
        let v = value
            .serialize(Doc)
            .map_err(|e| e.at(Segment::Key(render(&k))))?;
        self.entries.push((k, v));
        Ok(())
    }
    fn end(self) -> Result<Value, EncodeError> {
        self.finish()
    }
}

impl ser::SerializeStruct for DocMap {
    type Ok = Value;
    type Error = EncodeError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), EncodeError> {
        self.field(key, value)
    }
    fn end(self) -> Result<Value, EncodeError> {
        self.finish()
    }
}

impl ser::SerializeStructVariant for DocMap {
    type Ok = Value;
    type Error = EncodeError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), EncodeError> {
        self.field(key, value)
    }
    fn end(self) -> Result<Value, EncodeError> {
        self.finish()
    }
}
