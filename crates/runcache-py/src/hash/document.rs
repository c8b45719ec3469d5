//! The key document of Python arguments, rendered from their canonical bytes (so it covers
//! exactly what went into the key and fails exactly where the key fails: it is built from the
//! encoder's output).
//!
//! The plain tags read as in `runcache::key::key_document`; typed values read as:
//! tuples as arrays, `{"$set": [...]}`, `{"$array": {"dtype", "shape", "len", "blake3"}}`
//! (object arrays: `"values"` instead of `"len"`/`"blake3"`), `{"$file": {"len", "blake3"}}`,
//! `{"$int": "0x..."}` for integers beyond 128 bits, and `{"$<type name>": payload}` for every
//! other typed value (`{"$dataclass:pkg.Config": {...}}`, `{"$datetime.date": "2024-01-31"}`).

use serde_json::{Map, Value};

use runcache::key::canonical as c;

/// Byte strings up to this length appear as hex; longer ones as `{"$bytes": {len, blake3}}`.
const INLINE_BYTES_MAX: usize = 64;

/// The document of one canonical value. `None` if the bytes are malformed (never for bytes
/// the encoder produced).
pub(crate) fn to_document(bytes: &[u8]) -> Option<Value> {
    let mut r = Reader(c::Reader::new(bytes));
    let v = r.value()?;
    r.is_done().then_some(v)
}

/// The engine's canonical reader, plus the decoding of values into a document.
struct Reader<'b>(c::Reader<'b>);

impl<'b> std::ops::Deref for Reader<'b> {
    type Target = c::Reader<'b>;
    fn deref(&self) -> &c::Reader<'b> {
        &self.0
    }
}

impl std::ops::DerefMut for Reader<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

fn blob(kind: &str, len: u64, digest: &[u8]) -> Value {
    let mut inner = Map::new();
    inner.insert("len".into(), Value::from(len));
    inner.insert("blake3".into(), Value::from(hex(digest)));
    tagged(kind, Value::Object(inner))
}

fn tagged(kind: &str, v: Value) -> Value {
    let mut m = Map::new();
    m.insert(kind.into(), v);
    Value::Object(m)
}

fn hex(b: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}

impl Reader<'_> {
    fn value(&mut self) -> Option<Value> {
        Some(match self.u8()? {
            c::TAG_NULL => Value::Null,
            c::TAG_BOOL => Value::Bool(self.u8()? != 0),
            c::TAG_INT => {
                let neg = self.u8()? != 0;
                let mag = u128::from_le_bytes(self.take(16)?.try_into().ok()?);
                if neg {
                    match i64::try_from(mag).ok().and_then(|m| m.checked_neg()) {
                        Some(v) => Value::from(v),
                        None if mag == 1u128 << 63 => Value::from(i64::MIN),
                        None => Value::from(format!("-{mag}")),
                    }
                } else {
                    match u64::try_from(mag) {
                        Ok(v) => Value::from(v),
                        Err(_) => Value::from(mag.to_string()),
                    }
                }
            }
            c::TAG_F32 => {
                let v = f32::from_bits(u32::from_le_bytes(self.take(4)?.try_into().ok()?));
                match v.to_string().parse::<f64>() {
                    Ok(w) if v.is_finite() => c::float_json(w),
                    _ => c::float_json(f64::from(v)),
                }
            }
            c::TAG_F64 => c::float_json(f64::from_bits(u64::from_le_bytes(
                self.take(8)?.try_into().ok()?,
            ))),
            c::TAG_STR => Value::from(std::str::from_utf8(self.len_bytes()?).ok()?),
            c::TAG_BYTES => {
                let b = self.len_bytes()?;
                if b.len() <= INLINE_BYTES_MAX {
                    Value::from(hex(b))
                } else {
                    let d = runcache::Digest::of(b);
                    blob("$bytes", b.len() as u64, d.as_bytes())
                }
            }
            c::TAG_SOME => match self.value()? {
                Value::Null => tagged("$some", Value::Null),
                v => v,
            },
            c::TAG_SEQ => {
                let n = self.u64()?;
                let mut items = Vec::new();
                for _ in 0..n {
                    items.push(self.value()?);
                }
                Value::Array(items)
            }
            c::TAG_MAP => {
                let n = self.u64()?;
                let mut map = Map::new();
                for _ in 0..n {
                    let key = c::render_key(self.skip_value()?);
                    let v = self.value()?;
                    c::insert_unique(&mut map, key, v);
                }
                Value::Object(map)
            }
            c::TAG_VARIANT => {
                let name = std::str::from_utf8(self.len_bytes()?).ok()?.to_owned();
                match self.value()? {
                    Value::Null => Value::from(name),
                    v => tagged(&name, v),
                }
            }
            c::TAG_DIGEST => {
                let len = self.u64()?;
                blob("$buffer", len, self.take(32)?)
            }
            c::TAG_TYPED => {
                let name = std::str::from_utf8(self.len_bytes()?).ok()?.to_owned();
                let payload = self.value()?;
                typed(&name, payload)
            }
            _ => return None,
        })
    }
}

fn typed(name: &str, payload: Value) -> Value {
    match name {
        "tuple" => payload,
        "set" => tagged("$set", payload),
        "int" => tagged("$int", payload),
        "file" => match payload {
            Value::Object(mut m) => m
                .remove("$buffer")
                .map_or(Value::Null, |v| tagged("$file", v)),
            v => tagged("$file", v),
        },
        "numpy.ndarray" => {
            let Value::Object(mut m) = payload else {
                return tagged("$array", payload);
            };
            let mut out = Map::new();
            out.insert("dtype".into(), m.remove("dtype").unwrap_or(Value::Null));
            out.insert("shape".into(), m.remove("shape").unwrap_or(Value::Null));
            match m.remove("data") {
                Some(Value::Object(mut d)) if d.contains_key("$buffer") => {
                    if let Some(Value::Object(b)) = d.remove("$buffer") {
                        out.extend(b);
                    }
                }
                Some(v) => {
                    out.insert("values".into(), v);
                }
                None => {}
            }
            tagged("$array", Value::Object(out))
        }
        _ => tagged(&format!("${name}"), payload),
    }
}
