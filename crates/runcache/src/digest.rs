//! 256-bit BLAKE3 digests: the identity of keys and blobs.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// Buffers at least this large are hashed with all cores (BLAKE3 over rayon).
pub const PARALLEL_HASH_THRESHOLD: usize = 1 << 20;

/// A full 256-bit BLAKE3 digest. Shown and stored as 64 lowercase hex digits, never truncated.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

impl Digest {
    /// Wraps raw digest bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Digest(bytes)
    }

    /// Hashes a buffer without copying it; large buffers use all cores.
    pub fn of(data: &[u8]) -> Self {
        if data.len() < PARALLEL_HASH_THRESHOLD {
            // One call, no incremental hasher: most digests taken are of small values.
            return Self::of_single_threaded(data);
        }
        let mut hasher = blake3::Hasher::new();
        hasher.update_rayon(data);
        Digest(*hasher.finalize().as_bytes())
    }

    /// Hashes a buffer on the calling thread only.
    pub fn of_single_threaded(data: &[u8]) -> Self {
        Digest(*blake3::hash(data).as_bytes())
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> Result<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| {
            Error::Invalid(format!(
                "`{s}` is not a digest: expected 64 hexadecimal digits"
            ))
        })?;
        Ok(Digest(out))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.to_hex())
    }
}

impl FromStr for Digest {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Digest::from_hex(s)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Digest::from_hex(&s).map_err(serde::de::Error::custom)
    }
}

/// Incremental hasher for streamed content (blobs being copied or downloaded).
#[derive(Default, Clone)]
pub struct StreamHasher {
    inner: blake3::Hasher,
    len: u64,
}

impl StreamHasher {
    /// A fresh hasher.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds more bytes.
    pub fn update(&mut self, data: &[u8]) {
        if data.len() >= PARALLEL_HASH_THRESHOLD {
            self.inner.update_rayon(data);
        } else {
            self.inner.update(data);
        }
        self.len += data.len() as u64;
    }

    /// Feeds more bytes, hashing on the calling thread only.
    pub fn update_single_threaded(&mut self, data: &[u8]) {
        self.inner.update(data);
        self.len += data.len() as u64;
    }

    /// Feeds everything `reader` yields, in 1 MiB reads (never the whole stream in memory).
    pub fn read_from(&mut self, mut reader: impl std::io::Read) -> std::io::Result<()> {
        let mut buf = vec![0u8; 1 << 20];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => self.update(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// The digest and length of everything `reader` yields, streamed.
    pub fn digest_reader(reader: impl std::io::Read) -> std::io::Result<(Digest, u64)> {
        let mut h = StreamHasher::new();
        h.read_from(reader)?;
        Ok((h.finish(), h.len()))
    }

    /// Bytes fed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True if nothing was fed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The digest of everything fed.
    pub fn finish(&self) -> Digest {
        Digest(*self.inner.finalize().as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_roundtrip_and_parallel_agrees() {
        let data = vec![7u8; PARALLEL_HASH_THRESHOLD + 13];
        let d = Digest::of(&data);
        assert_eq!(d, Digest::of_single_threaded(&data));
        assert_eq!(Digest::from_hex(&d.to_hex()).unwrap(), d);
        assert_eq!(d.to_hex().len(), 64);
        assert!(Digest::from_hex("abc").is_err());
    }
}
