//! The canonical encoder: a `serde::Serializer` that appends typed, length-prefixed bytes to a
//! buffer. The layout is specified in `docs/key-format.md`; the tags are below.

use std::cmp::Ordering;

use serde::ser::{self, Serialize};

use super::capture;
use super::path::{EncodeError, Segment};
use super::{BUFFER_MAGIC, PREHASHED_MAGIC};

/// Unit, `None`, unit structs. No payload.
pub const TAG_NULL: u8 = 0x01;
/// `bool`: one byte, 0 or 1.
pub const TAG_BOOL: u8 = 0x02;
/// Every integer width: a sign byte (0 for >= 0, 1 for < 0) and the magnitude as u128 LE.
pub const TAG_INT: u8 = 0x03;
/// `f32`: its 4 bits, little-endian.
pub const TAG_F32: u8 = 0x04;
/// `f64`: its 8 bits, little-endian.
pub const TAG_F64: u8 = 0x05;
/// UTF-8 string (and `char`): u64 LE byte length, then the bytes.
pub const TAG_STR: u8 = 0x06;
/// Byte string: u64 LE length, then the bytes.
pub const TAG_BYTES: u8 = 0x07;
/// `Some(x)`: followed by the encoding of `x`.
pub const TAG_SOME: u8 = 0x08;
/// Sequence, tuple, tuple struct: u64 LE element count, then the elements in order.
pub const TAG_SEQ: u8 = 0x09;
/// Map, struct: u64 LE entry count, then key/value pairs sorted by the key's encoded bytes.
pub const TAG_MAP: u8 = 0x0A;
/// Enum variant: u64 LE name length, the name, then the payload's encoding.
pub const TAG_VARIANT: u8 = 0x0B;
/// Content known by digest (`Buffer`, `Prehashed`): u64 LE length, then the 32-byte BLAKE3.
pub const TAG_DIGEST: u8 = 0x0C;

/// Appends the canonical encoding of `value` to `out`.
pub(crate) fn encode_into<T: Serialize + ?Sized>(
    out: &mut Vec<u8>,
    value: &T,
) -> Result<(), EncodeError> {
    let mut enc = Encoder { out };
    value.serialize(&mut enc)
}

/// Appends a canonical string value (tag, length, bytes).
pub(crate) fn write_str(out: &mut Vec<u8>, s: &str) {
    out.push(TAG_STR);
    write_len_bytes(out, s.as_bytes());
}

fn write_len_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u64).to_le_bytes());
    out.extend_from_slice(b);
}

pub(crate) fn write_int(out: &mut Vec<u8>, v: i128) {
    out.push(TAG_INT);
    out.push(u8::from(v < 0));
    out.extend_from_slice(&v.unsigned_abs().to_le_bytes());
}

pub(crate) fn write_uint(out: &mut Vec<u8>, v: u128) {
    out.push(TAG_INT);
    out.push(0);
    out.extend_from_slice(&v.to_le_bytes());
}

/// Reserves a u64 count and returns its position.
fn reserve_count(out: &mut Vec<u8>) -> usize {
    let pos = out.len();
    out.extend_from_slice(&[0u8; 8]);
    pos
}

fn patch_count(out: &mut [u8], pos: usize, count: u64) {
    out[pos..pos + 8].copy_from_slice(&count.to_le_bytes());
}

/// The serializer state: the output buffer.
pub(crate) struct Encoder<'o> {
    out: &'o mut Vec<u8>,
}

impl<'a, 'o> ser::Serializer for &'a mut Encoder<'o> {
    type Ok = ();
    type Error = EncodeError;
    type SerializeSeq = SeqEncoder<'a, 'o>;
    type SerializeTuple = SeqEncoder<'a, 'o>;
    type SerializeTupleStruct = SeqEncoder<'a, 'o>;
    type SerializeTupleVariant = SeqEncoder<'a, 'o>;
    type SerializeMap = MapEncoder<'a, 'o>;
    type SerializeStruct = MapEncoder<'a, 'o>;
    type SerializeStructVariant = MapEncoder<'a, 'o>;

    fn serialize_bool(self, v: bool) -> Result<(), EncodeError> {
        self.out.push(TAG_BOOL);
        self.out.push(u8::from(v));
        Ok(())
    }
    fn serialize_i8(self, v: i8) -> Result<(), EncodeError> {
        write_int(self.out, v.into());
        Ok(())
    }
    fn serialize_i16(self, v: i16) -> Result<(), EncodeError> {
        write_int(self.out, v.into());
        Ok(())
    }
    fn serialize_i32(self, v: i32) -> Result<(), EncodeError> {
        write_int(self.out, v.into());
        Ok(())
    }
    fn serialize_i64(self, v: i64) -> Result<(), EncodeError> {
        write_int(self.out, v.into());
        Ok(())
    }
    fn serialize_i128(self, v: i128) -> Result<(), EncodeError> {
        write_int(self.out, v);
        Ok(())
    }
    fn serialize_u8(self, v: u8) -> Result<(), EncodeError> {
        write_uint(self.out, v.into());
        Ok(())
    }
    fn serialize_u16(self, v: u16) -> Result<(), EncodeError> {
        write_uint(self.out, v.into());
        Ok(())
    }
    fn serialize_u32(self, v: u32) -> Result<(), EncodeError> {
        write_uint(self.out, v.into());
        Ok(())
    }
    fn serialize_u64(self, v: u64) -> Result<(), EncodeError> {
        write_uint(self.out, v.into());
        Ok(())
    }
    fn serialize_u128(self, v: u128) -> Result<(), EncodeError> {
        write_uint(self.out, v);
        Ok(())
    }
    fn serialize_f32(self, v: f32) -> Result<(), EncodeError> {
        self.out.push(TAG_F32);
        self.out.extend_from_slice(&v.to_bits().to_le_bytes());
        Ok(())
    }
    fn serialize_f64(self, v: f64) -> Result<(), EncodeError> {
        self.out.push(TAG_F64);
        self.out.extend_from_slice(&v.to_bits().to_le_bytes());
        Ok(())
    }
    fn serialize_char(self, v: char) -> Result<(), EncodeError> {
        let mut buf = [0u8; 4];
        write_str(self.out, v.encode_utf8(&mut buf));
        Ok(())
    }
    fn serialize_str(self, v: &str) -> Result<(), EncodeError> {
        write_str(self.out, v);
        Ok(())
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<(), EncodeError> {
        self.out.push(TAG_BYTES);
        write_len_bytes(self.out, v);
        Ok(())
    }
    fn serialize_none(self) -> Result<(), EncodeError> {
        self.out.push(TAG_NULL);
        Ok(())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), EncodeError> {
        self.out.push(TAG_SOME);
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), EncodeError> {
        self.out.push(TAG_NULL);
        Ok(())
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), EncodeError> {
        self.out.push(TAG_NULL);
        Ok(())
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<(), EncodeError> {
        self.out.push(TAG_VARIANT);
        write_len_bytes(self.out, variant.as_bytes());
        self.out.push(TAG_NULL);
        Ok(())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        value: &T,
    ) -> Result<(), EncodeError> {
        if name == BUFFER_MAGIC || name == PREHASHED_MAGIC {
            let (digest, len) = capture::capture(name, value)?;
            self.out.push(TAG_DIGEST);
            self.out.extend_from_slice(&len.to_le_bytes());
            self.out.extend_from_slice(digest.as_bytes());
            Ok(())
        } else {
            value.serialize(self)
        }
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), EncodeError> {
        self.out.push(TAG_VARIANT);
        write_len_bytes(self.out, variant.as_bytes());
        value.serialize(self)
    }
    fn serialize_seq(self, _len: Option<usize>) -> Result<SeqEncoder<'a, 'o>, EncodeError> {
        Ok(SeqEncoder::start(self))
    }
    fn serialize_tuple(self, _len: usize) -> Result<SeqEncoder<'a, 'o>, EncodeError> {
        Ok(SeqEncoder::start(self))
    }
    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<SeqEncoder<'a, 'o>, EncodeError> {
        Ok(SeqEncoder::start(self))
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<SeqEncoder<'a, 'o>, EncodeError> {
        self.out.push(TAG_VARIANT);
        write_len_bytes(self.out, variant.as_bytes());
        Ok(SeqEncoder::start(self))
    }
    fn serialize_map(self, _len: Option<usize>) -> Result<MapEncoder<'a, 'o>, EncodeError> {
        Ok(MapEncoder::start(self))
    }
    fn serialize_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<MapEncoder<'a, 'o>, EncodeError> {
        Ok(MapEncoder::start(self))
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<MapEncoder<'a, 'o>, EncodeError> {
        self.out.push(TAG_VARIANT);
        write_len_bytes(self.out, variant.as_bytes());
        Ok(MapEncoder::start(self))
    }
}

/// Sequences, tuples, tuple structs and tuple variants: count (patched at the end), elements.
pub(crate) struct SeqEncoder<'a, 'o> {
    enc: &'a mut Encoder<'o>,
    count_pos: usize,
    count: u64,
}

impl<'a, 'o> SeqEncoder<'a, 'o> {
    fn start(enc: &'a mut Encoder<'o>) -> Self {
        enc.out.push(TAG_SEQ);
        let count_pos = reserve_count(enc.out);
        SeqEncoder {
            enc,
            count_pos,
            count: 0,
        }
    }

    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), EncodeError> {
        value
            .serialize(&mut *self.enc)
            .map_err(|e| e.at(Segment::Index(self.count)))?;
        self.count += 1;
        Ok(())
    }

    fn finish(self) -> Result<(), EncodeError> {
        patch_count(self.enc.out, self.count_pos, self.count);
        Ok(())
    }
}

impl ser::SerializeSeq for SeqEncoder<'_, '_> {
    type Ok = ();
    type Error = EncodeError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), EncodeError> {
        self.element(value)
    }
    fn end(self) -> Result<(), EncodeError> {
        self.finish()
    }
}

impl ser::SerializeTuple for SeqEncoder<'_, '_> {
    type Ok = ();
    type Error = EncodeError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), EncodeError> {
        self.element(value)
    }
    fn end(self) -> Result<(), EncodeError> {
        self.finish()
    }
}

impl ser::SerializeTupleStruct for SeqEncoder<'_, '_> {
    type Ok = ();
    type Error = EncodeError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), EncodeError> {
        self.element(value)
    }
    fn end(self) -> Result<(), EncodeError> {
        self.finish()
    }
}

impl ser::SerializeTupleVariant for SeqEncoder<'_, '_> {
    type Ok = ();
    type Error = EncodeError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), EncodeError> {
        self.element(value)
    }
    fn end(self) -> Result<(), EncodeError> {
        self.finish()
    }
}

/// Position of one encoded entry in the output: `(start, end of key, end of value)`.
type Entry = (usize, usize, usize);

/// Maps, structs and struct variants: count, then entries sorted by encoded key bytes.
pub(crate) struct MapEncoder<'a, 'o> {
    enc: &'a mut Encoder<'o>,
    count_pos: usize,
    entries: Vec<Entry>,
    pending_key: Option<(usize, usize)>,
}

impl<'a, 'o> MapEncoder<'a, 'o> {
    fn start(enc: &'a mut Encoder<'o>) -> Self {
        enc.out.push(TAG_MAP);
        let count_pos = reserve_count(enc.out);
        MapEncoder {
            enc,
            count_pos,
            entries: Vec::new(),
            pending_key: None,
        }
    }

    fn field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), EncodeError> {
        let start = self.enc.out.len();
        write_str(self.enc.out, key);
        let key_end = self.enc.out.len();
        value
            .serialize(&mut *self.enc)
            .map_err(|e| e.at(Segment::Field(key)))?;
        self.entries.push((start, key_end, self.enc.out.len()));
        Ok(())
    }

    fn finish(mut self) -> Result<(), EncodeError> {
        if self.pending_key.is_some() {
            return Err(EncodeError::new(
                "a map key was serialized without its value (broken Serialize impl)",
            ));
        }
        let body = self.count_pos + 8;
        sort_entries(self.enc.out, body, &mut self.entries)?;
        patch_count(self.enc.out, self.count_pos, self.entries.len() as u64);
        Ok(())
    }
}

/// The error for two map keys with the same encoding, located at that key.
pub(crate) fn duplicate_key(encoded_key: &[u8]) -> EncodeError {
    EncodeError::new(
        "duplicate map key: two keys of this map have the same canonical encoding \
         (e.g. the same field twice, or keys equal up to integer width)",
    )
    .at(Segment::Key(render(encoded_key)))
}

/// Sorts the entries of the map whose body starts at `body` by their encoded key bytes, in place,
/// and rejects duplicate keys.
pub(crate) fn sort_entries(
    out: &mut Vec<u8>,
    body: usize,
    entries: &mut [Entry],
) -> Result<(), EncodeError> {
    let key = |e: &Entry| e.0..e.1;
    let mut in_order = true;
    for w in entries.windows(2) {
        match out[key(&w[0])].cmp(&out[key(&w[1])]) {
            Ordering::Less => {}
            Ordering::Equal => return Err(duplicate_key(&out[key(&w[0])])),
            Ordering::Greater => in_order = false,
        }
    }
    if in_order {
        return Ok(());
    }
    entries.sort_unstable_by(|a, b| out[key(a)].cmp(&out[key(b)]));
    for w in entries.windows(2) {
        if out[key(&w[0])] == out[key(&w[1])] {
            return Err(duplicate_key(&out[key(&w[0])]));
        }
    }
    let region = out[body..].to_vec();
    out.truncate(body);
    for &(start, _, end) in entries.iter() {
        out.extend_from_slice(&region[start - body..end - body]);
    }
    Ok(())
}

impl ser::SerializeMap for MapEncoder<'_, '_> {
    type Ok = ();
    type Error = EncodeError;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), EncodeError> {
        if self.pending_key.is_some() {
            return Err(EncodeError::new(
                "two map keys were serialized without a value between them (broken Serialize impl)",
            ));
        }
        let start = self.enc.out.len();
        let n = self.entries.len() as u64;
        key.serialize(&mut *self.enc)
            .map_err(|e| e.at(Segment::KeyOf(n)))?;
        self.pending_key = Some((start, self.enc.out.len()));
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), EncodeError> {
        let Some((start, key_end)) = self.pending_key.take() else {
            return Err(EncodeError::new(
                "a map value was serialized without its key (broken Serialize impl)",
            ));
        };
        if let Err(e) = value.serialize(&mut *self.enc) {
            return Err(e.at(Segment::Key(render(&self.enc.out[start..key_end]))));
        }
        self.entries.push((start, key_end, self.enc.out.len()));
        Ok(())
    }
    fn end(self) -> Result<(), EncodeError> {
        self.finish()
    }
}

impl ser::SerializeStruct for MapEncoder<'_, '_> {
    type Ok = ();
    type Error = EncodeError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), EncodeError> {
        self.field(key, value)
    }
    fn end(self) -> Result<(), EncodeError> {
        self.finish()
    }
}

impl ser::SerializeStructVariant for MapEncoder<'_, '_> {
    type Ok = ();
    type Error = EncodeError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), EncodeError> {
        self.field(key, value)
    }
    fn end(self) -> Result<(), EncodeError> {
        self.finish()
    }
}

/// Renders canonical bytes as short, deterministic text: strings JSON-quoted, integers in
/// decimal, `[..]` for sequences, `{k: v}` for maps. Used for error paths and for non-string
/// map keys in key documents.
pub(crate) fn render(bytes: &[u8]) -> String {
    let mut out = String::new();
    let mut r = Reader::new(bytes);
    if r.value(&mut out).is_none() || r.pos != bytes.len() {
        out.push('?');
    }
    out
}

/// Renders an encoded map key for a key document: a string key as itself, anything else as
/// [`render`] does.
pub(crate) fn render_key(bytes: &[u8]) -> String {
    let mut r = Reader::new(bytes);
    if r.u8() == Some(TAG_STR) {
        if let Some(s) = r.len_bytes().and_then(|b| std::str::from_utf8(b).ok()) {
            if r.pos == bytes.len() {
                return s.to_owned();
            }
        }
    }
    render(bytes)
}

/// A cursor over canonical bytes, for code that decodes them (key documents, renderers). Every
/// read returns `None` past the end instead of panicking.
pub struct Reader<'b> {
    b: &'b [u8],
    pos: usize,
}

impl<'b> Reader<'b> {
    /// A reader at the start of `bytes`.
    pub fn new(bytes: &'b [u8]) -> Self {
        Reader { b: bytes, pos: 0 }
    }
    /// The offset of the next unread byte.
    pub fn pos(&self) -> usize {
        self.pos
    }
    /// True once every byte has been read.
    pub fn is_done(&self) -> bool {
        self.pos == self.b.len()
    }
    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Option<&'b [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.b.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }
    /// The next byte (a tag, a sign, a bool).
    pub fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|s| s[0])
    }
    /// The next u64 LE (a length or a count).
    pub fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    /// A u64 LE length and that many bytes.
    pub fn len_bytes(&mut self) -> Option<&'b [u8]> {
        let n = usize::try_from(self.u64()?).ok()?;
        self.take(n)
    }
    /// Skips one whole encoded value and returns its bytes.
    pub fn skip_value(&mut self) -> Option<&'b [u8]> {
        let start = self.pos;
        self.skip()?;
        Some(&self.b[start..self.pos])
    }

    fn skip(&mut self) -> Option<()> {
        match self.u8()? {
            TAG_NULL => {}
            TAG_BOOL => {
                self.take(1)?;
            }
            TAG_INT => {
                self.take(17)?;
            }
            TAG_F32 => {
                self.take(4)?;
            }
            TAG_F64 => {
                self.take(8)?;
            }
            TAG_STR | TAG_BYTES => {
                self.len_bytes()?;
            }
            TAG_SOME => self.skip()?,
            TAG_SEQ => {
                for _ in 0..self.u64()? {
                    self.skip()?;
                }
            }
            TAG_MAP => {
                for _ in 0..self.u64()? {
                    self.skip()?;
                    self.skip()?;
                }
            }
            TAG_VARIANT | super::canonical::TAG_TYPED => {
                self.len_bytes()?;
                self.skip()?;
            }
            TAG_DIGEST => {
                self.take(40)?;
            }
            _ => return None,
        }
        Some(())
    }

    fn value(&mut self, out: &mut String) -> Option<()> {
        match self.u8()? {
            TAG_NULL => out.push_str("null"),
            TAG_BOOL => out.push_str(if self.u8()? != 0 { "true" } else { "false" }),
            TAG_INT => {
                let neg = self.u8()? != 0;
                let mag = u128::from_le_bytes(self.take(16)?.try_into().ok()?);
                if neg {
                    out.push('-');
                }
                out.push_str(&mag.to_string());
            }
            TAG_F32 => {
                let v = f32::from_bits(u32::from_le_bytes(self.take(4)?.try_into().ok()?));
                out.push_str(&format!("{v:?}f32"));
            }
            TAG_F64 => {
                let v = f64::from_bits(u64::from_le_bytes(self.take(8)?.try_into().ok()?));
                out.push_str(&format!("{v:?}"));
            }
            TAG_STR => {
                let s = std::str::from_utf8(self.len_bytes()?).ok()?;
                out.push_str(&serde_json::Value::from(s).to_string());
            }
            TAG_BYTES => {
                out.push_str("0x");
                out.push_str(&hex::encode(self.len_bytes()?));
            }
            TAG_SOME => {
                out.push_str("Some(");
                self.value(out)?;
                out.push(')');
            }
            TAG_SEQ => {
                let n = self.u64()?;
                out.push('[');
                for i in 0..n {
                    if i > 0 {
                        out.push(',');
                    }
                    self.value(out)?;
                }
                out.push(']');
            }
            TAG_MAP => {
                let n = self.u64()?;
                out.push('{');
                for i in 0..n {
                    if i > 0 {
                        out.push(',');
                    }
                    self.value(out)?;
                    out.push(':');
                    self.value(out)?;
                }
                out.push('}');
            }
            TAG_VARIANT => {
                let name = std::str::from_utf8(self.len_bytes()?).ok()?;
                out.push_str(name);
                if self.b.get(self.pos) == Some(&TAG_NULL) {
                    self.pos += 1;
                } else {
                    out.push('(');
                    self.value(out)?;
                    out.push(')');
                }
            }
            TAG_DIGEST => {
                let len = self.u64()?;
                let digest = self.take(32)?;
                out.push_str(&format!("<blob len={len} blake3={}>", hex::encode(digest)));
            }
            super::canonical::TAG_TYPED => {
                let name = std::str::from_utf8(self.len_bytes()?).ok()?;
                out.push_str(name);
                out.push('(');
                self.value(out)?;
                out.push(')');
            }
            _ => return None,
        }
        Some(())
    }
}
