//! Content keys: a canonical, typed, length-prefixed encoding of what identifies a computation,
//! hashed with BLAKE3.
//!
//! A key covers the key-format version, the task namespace, the task version and the arguments.
//! See `docs/architecture.md` ("Key format") for the byte-level layout.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use crate::digest::Digest;
use crate::error::{Error, Result};

/// Version of the key encoding. Bump it whenever the bytes produced for any input change.
pub const KEY_FORMAT_VERSION: u32 = 1;

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

/// Computes the key of `args` for a task. Placeholder body; replaced by the canonical encoder.
pub fn compute_key<A: Serialize + ?Sized>(namespace: &str, version: &str, args: &A) -> Result<Key> {
    let doc = key_document(namespace, version, args)?;
    Ok(Key(Digest::of(doc.to_string().as_bytes())))
}

/// The readable JSON of what went into a key. Placeholder body; replaced by the canonical encoder.
pub fn key_document<A: Serialize + ?Sized>(
    namespace: &str,
    version: &str,
    args: &A,
) -> Result<serde_json::Value> {
    let args = serde_json::to_value(args).map_err(|e| Error::Unhashable {
        path: "args".into(),
        message: e.to_string(),
    })?;
    Ok(serde_json::json!({
        "key_format": KEY_FORMAT_VERSION,
        "namespace": namespace,
        "version": version,
        "args": args,
    }))
}
