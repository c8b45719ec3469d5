//! Low-level writers of the canonical key encoding, for encoders that do not go through serde
//! (the Python value hasher in `runcache-py`).
//!
//! Everything written here is byte-for-byte what the serde key serializer writes for the same
//! value (a `write_int(5)` is what `5i64` serializes to, a map built with [`begin_map`] /
//! [`end_map`] is sorted exactly like a serde map), so keys computed either way agree. The one
//! addition is [`TAG_TYPED`], which the serde serializer never emits: a value whose type must be
//! kept (a Python tuple as opposed to a list, a numpy array, a dataclass, ...).
//!
//! The layout is specified in `docs/key-format.md`.

use super::encode;
use crate::digest::Digest;

pub use super::document::{float_json, insert_unique};
pub use super::encode::Reader;
pub use super::encode::{
    TAG_BOOL, TAG_BYTES, TAG_DIGEST, TAG_F32, TAG_F64, TAG_INT, TAG_MAP, TAG_NULL, TAG_SEQ,
    TAG_SOME, TAG_STR, TAG_VARIANT,
};

/// A typed value: u64 LE type-name length, the type name (UTF-8), then exactly one payload
/// value. Never produced by the serde serializers; used for Python values whose type must be
/// kept (see the "Python values" section of `docs/key-format.md`).
pub const TAG_TYPED: u8 = 0x0D;

/// Appends NULL.
pub fn write_null(out: &mut Vec<u8>) {
    out.push(TAG_NULL);
}

/// Appends a BOOL.
pub fn write_bool(out: &mut Vec<u8>, v: bool) {
    out.push(TAG_BOOL);
    out.push(u8::from(v));
}

/// Appends an INT (sign byte, magnitude as u128 LE), exactly like any serde integer of value `v`.
pub fn write_int(out: &mut Vec<u8>, v: i128) {
    encode::write_int(out, v);
}

/// Appends an INT for an unsigned value (the range above `i128::MAX` included).
pub fn write_uint(out: &mut Vec<u8>, v: u128) {
    encode::write_uint(out, v);
}

/// Appends an F32 (its bits, LE).
pub fn write_f32(out: &mut Vec<u8>, v: f32) {
    out.push(TAG_F32);
    out.extend_from_slice(&v.to_bits().to_le_bytes());
}

/// Appends an F64 (its bits, LE).
pub fn write_f64(out: &mut Vec<u8>, v: f64) {
    out.push(TAG_F64);
    out.extend_from_slice(&v.to_bits().to_le_bytes());
}

/// Appends a STR.
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    encode::write_str(out, s);
}

/// Appends a BYTES (length, then the bytes).
pub fn write_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.push(TAG_BYTES);
    out.extend_from_slice(&(b.len() as u64).to_le_bytes());
    out.extend_from_slice(b);
}

/// Appends a DIGEST: content length and its BLAKE3, exactly like a `Buffer` / `Prehashed`.
pub fn write_digest(out: &mut Vec<u8>, len: u64, digest: &Digest) {
    out.push(TAG_DIGEST);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(digest.as_bytes());
}

/// Appends the header of a TYPED value; the caller then appends exactly one payload value.
pub fn write_typed_header(out: &mut Vec<u8>, type_name: &str) {
    out.push(TAG_TYPED);
    out.extend_from_slice(&(type_name.len() as u64).to_le_bytes());
    out.extend_from_slice(type_name.as_bytes());
}

/// Starts a SEQ; returns the position of its count, to pass to [`end_seq`].
pub fn begin_seq(out: &mut Vec<u8>) -> usize {
    out.push(TAG_SEQ);
    let pos = out.len();
    out.extend_from_slice(&[0u8; 8]);
    pos
}

/// Ends a SEQ started at `count_pos` with `count` elements written since.
pub fn end_seq(out: &mut [u8], count_pos: usize, count: u64) {
    out[count_pos..count_pos + 8].copy_from_slice(&count.to_le_bytes());
}

/// One written map entry: `(start, end of the encoded key, end of the encoded value)`, as
/// positions in the output buffer.
pub type MapEntry = (usize, usize, usize);

/// Starts a MAP; returns the position of its count, to pass to [`end_map`]. Write each entry as
/// an encoded key followed by an encoded value, and record its [`MapEntry`].
pub fn begin_map(out: &mut Vec<u8>) -> usize {
    out.push(TAG_MAP);
    let pos = out.len();
    out.extend_from_slice(&[0u8; 8]);
    pos
}

/// Two keys of one map have the same canonical encoding (the encoded key is given).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DuplicateKey(pub Vec<u8>);

/// Ends a MAP started at `count_pos`: sorts the entries (all written after the count, in
/// order, with nothing else in between) by their encoded key bytes exactly as the serde encoder
/// does, and patches the count. Two keys with the same encoding are an error.
pub fn end_map(
    out: &mut Vec<u8>,
    count_pos: usize,
    entries: &mut [MapEntry],
) -> Result<(), DuplicateKey> {
    encode::sort_entries(out, count_pos + 8, entries)
        .map_err(|_| DuplicateKey(duplicate_in(out, entries)))?;
    end_seq(out, count_pos, entries.len() as u64);
    Ok(())
}

fn duplicate_in(out: &[u8], entries: &[MapEntry]) -> Vec<u8> {
    let mut keys: Vec<&[u8]> = entries.iter().map(|e| &out[e.0..e.1]).collect();
    keys.sort_unstable();
    keys.windows(2)
        .find(|w| w[0] == w[1])
        .map(|w| w[0].to_vec())
        .unwrap_or_default()
}

/// Ends a SEQ started at `count_pos` whose elements (written after the count, in order, given
/// as `(start, end)`) form an unordered collection: sorts them by their encoded bytes (equal
/// encodings are kept, side by side) and patches the count.
pub fn end_sorted_seq(out: &mut Vec<u8>, count_pos: usize, elements: &mut [(usize, usize)]) {
    let body = count_pos + 8;
    let in_order = elements
        .windows(2)
        .all(|w| out[w[0].0..w[0].1] <= out[w[1].0..w[1].1]);
    if !in_order {
        elements.sort_unstable_by(|a, b| out[a.0..a.1].cmp(&out[b.0..b.1]));
        let region = out[body..].to_vec();
        out.truncate(body);
        for &(start, end) in elements.iter() {
            out.extend_from_slice(&region[start - body..end - body]);
        }
    }
    end_seq(out, count_pos, elements.len() as u64);
}

/// Renders canonical bytes as short, deterministic text (strings JSON-quoted, integers in
/// decimal, `[..]`, `{k: v}`, typed values as `name(payload)`), for error messages and for
/// non-string map keys in key documents. Malformed input renders with a trailing `?`.
pub fn render(bytes: &[u8]) -> String {
    encode::render(bytes)
}

/// Renders an encoded map key: a string as itself, anything else as [`render`] does.
pub fn render_key(bytes: &[u8]) -> String {
    encode::render_key(bytes)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::key::{compute_key, compute_key_from_canonical_args, encode_canonical, Buffer};

    #[test]
    fn writers_match_serde() {
        let mut out = Vec::new();
        write_int(&mut out, 5);
        assert_eq!(out, encode_canonical(&5i64).unwrap());
        let mut out = Vec::new();
        write_uint(&mut out, u128::MAX);
        assert_eq!(out, encode_canonical(&u128::MAX).unwrap());
        let mut out = Vec::new();
        write_f64(&mut out, -0.0);
        assert_eq!(out, encode_canonical(&-0.0f64).unwrap());
        let mut out = Vec::new();
        write_f32(&mut out, 1.5);
        assert_eq!(out, encode_canonical(&1.5f32).unwrap());
        let mut out = Vec::new();
        write_str(&mut out, "héllo");
        assert_eq!(out, encode_canonical("héllo").unwrap());
        let mut out = Vec::new();
        write_bool(&mut out, true);
        write_null(&mut out);
        assert_eq!(out, [TAG_BOOL, 1, TAG_NULL]);
        let data = b"some buffer";
        let mut out = Vec::new();
        write_digest(&mut out, data.len() as u64, &Digest::of(data));
        assert_eq!(out, encode_canonical(&Buffer(data)).unwrap());
    }

    #[test]
    fn bytes_match_serialize_bytes() {
        struct B<'a>(&'a [u8]);
        impl serde::Serialize for B<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(self.0)
            }
        }
        let mut out = Vec::new();
        write_bytes(&mut out, b"\x00\x01ab");
        assert_eq!(out, encode_canonical(&B(b"\x00\x01ab")).unwrap());
    }

    #[test]
    fn seq_and_map_match_serde() {
        let mut out = Vec::new();
        let pos = begin_seq(&mut out);
        write_int(&mut out, 1);
        write_str(&mut out, "x");
        end_seq(&mut out, pos, 2);
        assert_eq!(out, encode_canonical(&(1u8, "x")).unwrap());

        // Entries written in a non-canonical order come out sorted like a BTreeMap's.
        let mut expected = BTreeMap::new();
        expected.insert("bb", 2i64);
        expected.insert("a", 1i64);
        expected.insert("c", -3i64);
        let mut out = Vec::new();
        let pos = begin_map(&mut out);
        let mut entries = Vec::new();
        for (k, v) in [("c", -3i128), ("bb", 2), ("a", 1)] {
            let start = out.len();
            write_str(&mut out, k);
            let key_end = out.len();
            write_int(&mut out, v);
            entries.push((start, key_end, out.len()));
        }
        end_map(&mut out, pos, &mut entries).unwrap();
        assert_eq!(out, encode_canonical(&expected).unwrap());
    }

    #[test]
    fn duplicate_map_keys_are_rejected() {
        let mut out = Vec::new();
        let pos = begin_map(&mut out);
        let mut entries = Vec::new();
        for v in [1i128, 2] {
            let start = out.len();
            write_str(&mut out, "k");
            let key_end = out.len();
            write_int(&mut out, v);
            entries.push((start, key_end, out.len()));
        }
        let err = end_map(&mut out, pos, &mut entries).unwrap_err();
        assert_eq!(render(&err.0), "\"k\"");
    }

    #[test]
    fn sorted_seq_orders_by_encoding_and_keeps_duplicates() {
        let build = |items: &[&str]| {
            let mut out = vec![0xEE];
            let pos = begin_seq(&mut out);
            let mut els = Vec::new();
            for s in items {
                let start = out.len();
                write_str(&mut out, s);
                els.push((start, out.len()));
            }
            end_sorted_seq(&mut out, pos, &mut els);
            out
        };
        assert_eq!(build(&["b", "a", "cc", "a"]), build(&["a", "a", "cc", "b"]));
        assert_eq!(
            build(&["b", "a"])[1..],
            encode_canonical(&("a", "b")).unwrap()[..]
        );
    }

    #[test]
    fn typed_values_render_and_skip() {
        let mut out = Vec::new();
        write_typed_header(&mut out, "tuple");
        let pos = begin_seq(&mut out);
        write_int(&mut out, 1);
        write_f64(&mut out, 2.5);
        end_seq(&mut out, pos, 2);
        assert_eq!(render(&out), "tuple([1,2.5])");
        assert_eq!(Reader::new(&out).skip_value(), Some(&out[..]));
        assert_eq!(Reader::new(&out[..out.len() - 1]).skip_value(), None);
        assert_eq!(out[0], 0x0D);
    }

    #[test]
    fn canonical_args_frame_like_compute_key() {
        let mut args = BTreeMap::new();
        args.insert("x", 5i64);
        let rust = compute_key("ns", "1", &args).unwrap();
        let bytes = encode_canonical(&args).unwrap();
        assert_eq!(compute_key_from_canonical_args("ns", "1", &bytes), rust);
        assert_ne!(compute_key_from_canonical_args("ns", "2", &bytes), rust);
        assert_ne!(compute_key_from_canonical_args("ns2", "1", &bytes), rust);
    }

    /// The key of `{"x": 5, "s": "a"}` under namespace "ns", version "1". The Python test
    /// suite checks that `_core.compute_key("ns", "1", {"x": 5, "s": "a"})` gives this same hex.
    #[test]
    fn golden_key_shared_with_python() {
        let mut args = BTreeMap::new();
        args.insert("x", serde_json::json!(5));
        args.insert("s", serde_json::json!("a"));
        let key = compute_key("ns", "1", &args).unwrap();
        assert_eq!(
            key.to_hex(),
            "a3083ff6460423768404219f4de9fbfc7ab1c849b9770e9a8c8cd8a752b2258d"
        );
    }
}
