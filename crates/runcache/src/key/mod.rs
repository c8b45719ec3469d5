//! Content keys: a canonical, typed, length-prefixed encoding of what identifies a computation,
//! hashed with BLAKE3.
//!
//! A key covers the key-format version, the task namespace, the task version and the arguments.
//! The arguments are any [`Serialize`] value; they are encoded by a dedicated serde serializer
//! (never JSON, never `Debug`/`repr`, never a process-salted hash) whose output is:
//!
//! * **typed**: every value starts with a one-byte tag, so `"1"` and `1` differ;
//! * **length-prefixed**: strings and byte strings carry their length, sequences and maps their
//!   element count, so `("1", "23")` and `("12", "3")` differ and no encoding is a prefix of
//!   another;
//! * **canonical**: map entries and struct fields are sorted by their encoded key bytes, so
//!   `HashMap` iteration order and struct field order in the source never matter; all integer
//!   widths share one tag, so `1u8` and `1i64` encode alike.
//!
//! Large byte buffers enter a key through [`Buffer`]: only their length and BLAKE3 digest are
//! encoded, the bytes are hashed in place (no copy, multi-threaded above
//! [`PARALLEL_HASH_THRESHOLD`](crate::digest::PARALLEL_HASH_THRESHOLD)). Values whose digest is
//! already known (results loaded from the store, files whose fingerprint is remembered) enter
//! through [`Prehashed`] and are never re-hashed.
//!
//! The exact byte layout is specified in `docs/key-format.md`.

pub mod canonical;
mod capture;
mod diff;
mod document;
mod encode;
mod path;

pub use diff::{diff_documents, Difference};

use std::fmt;
use std::str::FromStr;

use serde::ser::SerializeStruct;
use serde::{Serialize, Serializer};

use crate::digest::Digest;
use crate::error::{Error, Result};

/// Version of the key encoding. Bump it whenever the bytes produced for any input change.
///
/// Version 1: the typed, length-prefixed canonical encoding described in `docs/key-format.md`.
pub const KEY_FORMAT_VERSION: u32 = 1;

/// Domain-separation prefix that starts the bytes of every key. It keeps key digests apart from
/// every other BLAKE3 digest the engine computes (blob digests, buffer digests).
pub const KEY_DOMAIN: &[u8; 13] = b"runcache/key\0";

/// Newtype-struct name by which [`Buffer`] announces itself to the key serializers.
pub const BUFFER_MAGIC: &str = "$runcache::Buffer";

/// Newtype-struct name by which [`Prehashed`] announces itself to the key serializers.
pub const PREHASHED_MAGIC: &str = "$runcache::Prehashed";

/// The identity of one entry: a 256-bit digest of its canonical key encoding.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Key(pub Digest);

impl Key {
    /// 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        self.0.to_hex()
    }

    /// The underlying digest.
    pub fn digest(&self) -> &Digest {
        &self.0
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({})", self.0.to_hex())
    }
}

impl FromStr for Key {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(Key(Digest::from_hex(s)?))
    }
}

/// A raw byte buffer that enters a key by its length and BLAKE3 digest, not by its bytes.
///
/// Use it for large inputs (array element bytes, file contents): the buffer is hashed where it
/// lies, with no copy, on all cores when it is at least
/// [`PARALLEL_HASH_THRESHOLD`](crate::digest::PARALLEL_HASH_THRESHOLD) long. A `Buffer` encodes
/// exactly like a [`Prehashed`] carrying `Digest::of(bytes)` and the buffer's length, so a digest
/// remembered from an earlier hash gives the same key as hashing the bytes again.
///
/// A `Buffer` is *not* the same key input as the same bytes passed as a plain byte string
/// (`serialize_bytes`): the two have different tags.
///
/// With serializers other than runcache's key serializers, a `Buffer` serializes as its plain
/// bytes (a newtype struct around `serialize_bytes`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buffer<'a>(pub &'a [u8]);

impl Serialize for Buffer<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_newtype_struct(BUFFER_MAGIC, &RawBytes(self.0))
    }
}

/// Serializes a slice with `serialize_bytes` (serde serializes `&[u8]` as a sequence).
struct RawBytes<'a>(&'a [u8]);

impl Serialize for RawBytes<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self.0)
    }
}

/// A value whose content digest is already known, e.g. a result loaded from the store.
///
/// It enters a key as its length and digest and is never re-hashed; it encodes exactly like a
/// [`Buffer`] whose bytes have this BLAKE3 digest and length.
///
/// With serializers other than runcache's key serializers, it serializes as a newtype struct
/// around a struct `Prehashed { blake3: "<64 hex digits>", len: N }`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Prehashed {
    /// BLAKE3 digest of the content.
    pub digest: Digest,
    /// Length of the content in bytes.
    pub len: u64,
}

impl Prehashed {
    /// Hashes `bytes` once; the result can then enter any number of keys without re-hashing.
    pub fn of(bytes: &[u8]) -> Self {
        Prehashed {
            digest: Digest::of(bytes),
            len: bytes.len() as u64,
        }
    }
}

impl Serialize for Prehashed {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_newtype_struct(PREHASHED_MAGIC, &PrehashedRepr(self))
    }
}

/// The inner representation of [`Prehashed`]: `{blake3, len}`.
struct PrehashedRepr<'a>(&'a Prehashed);

impl Serialize for PrehashedRepr<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("Prehashed", 2)?;
        s.serialize_field("blake3", &self.0.digest)?;
        s.serialize_field("len", &self.0.len)?;
        s.end()
    }
}

/// Canonical bytes of one value, without the key prefix (see `docs/key-format.md`).
///
/// Two values get the same bytes only if they are equal under the documented rules (all integer
/// widths alike, struct names ignored, maps and struct fields in canonical order, ...), and no
/// value's bytes are a prefix of another's. Errors are [`Error::Unhashable`] with a path rooted at
/// `value`, e.g. `value.train[3]`.
pub fn encode_canonical<A: Serialize + ?Sized>(value: &A) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(64);
    encode::encode_into(&mut out, value).map_err(|e| e.into_error("value"))?;
    Ok(out)
}

/// The full bytes that are hashed into a key: [`KEY_DOMAIN`], [`KEY_FORMAT_VERSION`] (u32 LE),
/// the namespace and version (as canonical strings), then the canonical arguments.
fn key_bytes<A: Serialize + ?Sized>(namespace: &str, version: &str, args: &A) -> Result<Vec<u8>> {
    let mut out = key_prefix(namespace, version);
    encode::encode_into(&mut out, args).map_err(|e| e.into_error("args"))?;
    Ok(out)
}

/// What every key of `namespace` at `version` hashes before the canonical arguments:
/// [`KEY_DOMAIN`], [`KEY_FORMAT_VERSION`] (u32 LE), then the namespace and version as canonical
/// strings. A caller that keys many calls of one task can write each call's canonical arguments
/// after a copy of it and take [`key_of_prefixed`].
pub fn key_prefix(namespace: &str, version: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + namespace.len() + version.len());
    out.extend_from_slice(KEY_DOMAIN);
    out.extend_from_slice(&KEY_FORMAT_VERSION.to_le_bytes());
    encode::write_str(&mut out, namespace);
    encode::write_str(&mut out, version);
    out
}

/// The key of `prefixed`: a [`key_prefix`] followed by one complete canonical value (not
/// validated). Equal to [`compute_key_from_canonical_args`] of the same parts.
pub fn key_of_prefixed(prefixed: &[u8]) -> Key {
    Key(Digest::of(prefixed))
}

/// Computes the key of `args` for a task: BLAKE3 (256 bits) over the domain prefix, the key
/// format version, `namespace`, `version` and the canonical encoding of `args`.
///
/// Fast path: no JSON, one small buffer; [`Buffer`]s are hashed in place. Any failure to encode
/// `args` (an erroring `Serialize` impl, two map keys with the same encoding, a misused magic
/// name) is [`Error::Unhashable`] naming where in `args` it happened, e.g. `args.train[3]` or
/// `args["lr"]`.
pub fn compute_key<A: Serialize + ?Sized>(namespace: &str, version: &str, args: &A) -> Result<Key> {
    let bytes = key_bytes(namespace, version, args)?;
    Ok(Key(Digest::of(&bytes)))
}

/// Computes a key from arguments already in canonical form (built with [`canonical`], e.g. by
/// the Python value hasher): BLAKE3 over exactly the bytes [`compute_key`] hashes, with
/// `args` in place of the serde encoding of the arguments. So for any `a`,
/// `compute_key(ns, v, &a)` equals `compute_key_from_canonical_args(ns, v,
/// &encode_canonical(&a)?)`.
///
/// `args` must be one complete canonical value (it is not validated).
pub fn compute_key_from_canonical_args(namespace: &str, version: &str, args: &[u8]) -> Key {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&key_prefix(namespace, version));
    if args.len() >= crate::digest::PARALLEL_HASH_THRESHOLD {
        hasher.update_rayon(args);
    } else {
        hasher.update(args);
    }
    Key(Digest::from_bytes(*hasher.finalize().as_bytes()))
}

/// The readable JSON of what went into a key:
/// `{"key_format": 1, "namespace": ..., "version": ..., "args": ...}`.
///
/// Buffers appear as `{"$buffer": {"len": N, "blake3": "<hex>"}}`, prehashed values as
/// `{"$prehashed": {"len": N, "blake3": "<hex>"}}`, byte strings of at most 64 bytes as a hex
/// string and longer ones as `{"$bytes": {"len": N, "blake3": "<hex>"}}`, non-finite floats as
/// `"NaN"`, `"inf"`, `"-inf"`, and non-string map keys as a deterministic text rendering. The
/// document is for people (`explain`, `show`); the key itself is computed from the canonical
/// bytes, never from this document. It fails exactly where [`compute_key`] fails, with the same
/// [`Error::Unhashable`] path.
pub fn key_document<A: Serialize + ?Sized>(
    namespace: &str,
    version: &str,
    args: &A,
) -> Result<serde_json::Value> {
    let args = document::to_document(args).map_err(|e| e.into_error("args"))?;
    Ok(serde_json::json!({
        "key_format": KEY_FORMAT_VERSION,
        "namespace": namespace,
        "version": version,
        "args": args,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffer_and_prehashed_agree() {
        let data = b"hello buffer";
        assert_eq!(
            encode_canonical(&Buffer(data)).unwrap(),
            encode_canonical(&Prehashed::of(data)).unwrap()
        );
        assert_ne!(
            encode_canonical(&Buffer(data)).unwrap(),
            encode_canonical(&serde_bytes_like(data)).unwrap()
        );
    }

    fn serde_bytes_like(b: &[u8]) -> RawBytes<'_> {
        RawBytes(b)
    }

    #[test]
    fn prefixed_keys_equal_keys() {
        let args = encode_canonical(&(7u64, "small")).unwrap();
        let mut prefixed = key_prefix("ns", "3");
        prefixed.extend_from_slice(&args);
        assert_eq!(
            key_of_prefixed(&prefixed),
            compute_key_from_canonical_args("ns", "3", &args)
        );
        assert_eq!(
            key_of_prefixed(&prefixed),
            compute_key("ns", "3", &(7u64, "small")).unwrap()
        );
    }

    #[test]
    fn key_bytes_start_with_domain_and_version() {
        let b = key_bytes("ns", "1", &()).unwrap();
        assert!(b.starts_with(KEY_DOMAIN));
        assert_eq!(&b[13..17], &KEY_FORMAT_VERSION.to_le_bytes());
    }
}
