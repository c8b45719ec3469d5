//! Signed entries: a MAC over each entry's manifest with a team key, so that a process holding
//! the key loads only entries written by a process holding the same key.
//!
//! Loading a pickle from a store that others can write is running their code. With a signing
//! key configured ([`crate::StoreOptions::signing_key`], or `RUNCACHE_SIGNING_KEY` read when a
//! store is opened), every manifest the engine commits carries a signature, and every manifest it
//! reads must carry a valid one before anything in it is used: an unsigned or badly signed entry
//! is [`Error::Signature`], a hard error, never a miss.
//!
//! # Scheme
//!
//! - MAC: keyed BLAKE3 (`blake3::keyed_hash`), with the 32-byte key derived from the key
//!   material by `blake3::derive_key("runcache entry signature v1", material)`. Keyed BLAKE3 is
//!   a PRF designed for exactly this use, so it is a proper MAC (no length extension), and it
//!   needs no dependency beyond the BLAKE3 the store already uses for digests.
//! - Signed bytes: the manifest exactly as serialized with no signature (the engine's compact
//!   JSON). The manifest names every blob and artifact by digest and size (and holds small blobs
//!   inline), and reads verify blob bytes against those digests, so the signature covers the
//!   whole entry.
//! - Stored form: the signature is the last member of the manifest's JSON object,
//!   `"signature": "v1.<key id>.<mac>"` (key id: 16 hex digits identifying the key, for
//!   messages; mac: 64 hex digits). A reader removes exactly that member to get the signed
//!   bytes back, and checks the MAC over them *before* parsing the manifest. Working on the
//!   stored bytes (rather than re-serializing the parsed manifest) makes the check independent of
//!   JSON float round-tripping and of fields a newer engine may add: any change to any byte
//!   fails it.

use crate::error::{Error, Result};

/// Environment variable holding the signing key material (read when a store is opened).
pub const SIGNING_KEY_ENV: &str = "RUNCACHE_SIGNING_KEY";

const MAC_CONTEXT: &str = "runcache entry signature v1";
const ID_CONTEXT: &str = "runcache signing key id v1";
const SCHEME: &str = "v1";
/// The signature member as the engine writes it: the last member of the manifest object.
const MEMBER: &[u8] = b",\"signature\":\"";
const END: &[u8] = b"\"}";
/// How a compact JSON object ends.
const OBJECT_END: &[u8] = b"}";

/// A key that signs and verifies entries. `Debug` shows only the key id, never the key.
#[derive(Clone)]
pub struct SigningKey {
    mac_key: [u8; 32],
    id: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey(id {})", self.id)
    }
}

impl PartialEq for SigningKey {
    fn eq(&self, other: &Self) -> bool {
        blake3::Hash::from(self.mac_key) == blake3::Hash::from(other.mac_key)
    }
}

impl Eq for SigningKey {}

impl SigningKey {
    /// A key from secret material of any length (e.g. the text of `openssl rand -hex 32`).
    /// Empty material is refused (an empty variable is a configuration mistake, not "no key").
    pub fn new(material: impl AsRef<[u8]>) -> Result<SigningKey> {
        let material = material.as_ref();
        if material.is_empty() {
            return Err(Error::Invalid(format!(
                "the signing key is empty; set {SIGNING_KEY_ENV} (or the signing_key option) to a \
                 secret of at least 16 bytes, e.g. the output of `openssl rand -hex 32`, or unset it"
            )));
        }
        if material.len() < 16 {
            log::warn!(
                "runcache: the signing key is shorter than 16 bytes; use a long random secret"
            );
        }
        let id = blake3::derive_key(ID_CONTEXT, material);
        Ok(SigningKey {
            mac_key: blake3::derive_key(MAC_CONTEXT, material),
            id: hex::encode(&id[..8]),
        })
    }

    /// The key named by `RUNCACHE_SIGNING_KEY`, if that variable is set. Set but empty is an
    /// error.
    pub fn from_env() -> Result<Option<SigningKey>> {
        match std::env::var_os(SIGNING_KEY_ENV) {
            None => Ok(None),
            Some(v) => {
                use std::os::unix::ffi::OsStrExt;
                SigningKey::new(v.as_bytes()).map(Some)
            }
        }
    }

    /// A short public identifier of the key (16 hex digits), shown in messages.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn mac(&self, signed: &[u8]) -> blake3::Hash {
        blake3::keyed_hash(&self.mac_key, signed)
    }

    /// Signs a manifest serialized without a signature (compact JSON, as
    /// [`crate::Manifest::to_bytes`] writes it): returns the bytes to store.
    pub fn sign(&self, unsigned: &[u8]) -> Vec<u8> {
        assert!(
            unsigned.ends_with(OBJECT_END),
            "a manifest is a JSON object"
        );
        let mac = self.mac(unsigned);
        let body = &unsigned[..unsigned.len() - OBJECT_END.len()];
        let mut out = Vec::with_capacity(unsigned.len() + 120);
        out.extend_from_slice(body);
        out.extend_from_slice(MEMBER);
        out.extend_from_slice(format!("{SCHEME}.{}.{}", self.id, mac.to_hex()).as_bytes());
        out.extend_from_slice(END);
        out
    }

    /// Checks stored manifest bytes. `Err` says why they are refused.
    pub fn verify(&self, stored: &[u8]) -> std::result::Result<(), String> {
        let Some((signed, signature)) = split_signature(stored) else {
            return Err("the entry is not signed".into());
        };
        let mut parts = signature.split('.');
        let (Some(scheme), Some(id), Some(mac), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(format!("the signature `{signature}` is malformed"));
        };
        if scheme != SCHEME {
            return Err(format!(
                "the signature uses scheme `{scheme}`, this engine knows `{SCHEME}`"
            ));
        }
        let mac = match blake3::Hash::from_hex(mac) {
            Ok(h) => h,
            Err(_) => return Err(format!("the signature `{signature}` is malformed")),
        };
        // blake3::Hash compares in constant time.
        if mac == self.mac(&signed) {
            return Ok(());
        }
        if id != self.id {
            Err(format!(
                "it is signed with another key (key id {id}; this process's key id is {})",
                self.id
            ))
        } else {
            Err("the signature does not match the content: the manifest was modified after it was signed".into())
        }
    }
}

/// Splits stored bytes into the signed bytes and the signature text, if the last member of the
/// object is a well-formed signature member.
fn split_signature(stored: &[u8]) -> Option<(Vec<u8>, &str)> {
    let tail_start = stored.windows(MEMBER.len()).rposition(|w| w == MEMBER)?;
    let tail = &stored[tail_start + MEMBER.len()..];
    let sig = tail.strip_suffix(END)?;
    if sig.is_empty() || !sig.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'.') {
        return None;
    }
    let mut signed = Vec::with_capacity(tail_start + OBJECT_END.len());
    signed.extend_from_slice(&stored[..tail_start]);
    signed.extend_from_slice(OBJECT_END);
    Some((signed, std::str::from_utf8(sig).ok()?))
}

/// The stored bytes of `manifest`, signed with `key`.
pub(crate) fn sign_manifest(key: &SigningKey, manifest: &crate::Manifest) -> Vec<u8> {
    if manifest.signature.is_some() {
        let mut m = manifest.clone();
        m.signature = None;
        return key.sign(&m.to_bytes());
    }
    key.sign(&manifest.to_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const UNSIGNED: &[u8] = b"{\"format\":1,\"metadata\":{\"a\":1}}";

    #[test]
    fn sign_then_verify() {
        let k = SigningKey::new("team secret 0123456789").unwrap();
        let stored = k.sign(UNSIGNED);
        assert!(stored.ends_with(b"\"}"));
        let v: serde_json::Value = serde_json::from_slice(&stored).unwrap();
        assert!(v["signature"].as_str().unwrap().starts_with("v1."));
        k.verify(&stored).unwrap();
        assert_eq!(split_signature(&stored).unwrap().0, UNSIGNED);
    }

    #[test]
    fn unsigned_tampered_and_foreign_are_refused() {
        let k = SigningKey::new("team secret 0123456789").unwrap();
        assert!(k.verify(UNSIGNED).unwrap_err().contains("not signed"));
        let mut stored = k.sign(UNSIGNED);
        let pos = stored.windows(1).position(|w| w == b"1").unwrap();
        stored[pos] = b'2';
        assert!(k.verify(&stored).unwrap_err().contains("modified"));
        let other = SigningKey::new("another secret 0123456789").unwrap();
        assert!(other
            .verify(&k.sign(UNSIGNED))
            .unwrap_err()
            .contains("another key"));
    }

    #[test]
    fn empty_key_is_refused_and_debug_hides_it() {
        assert!(SigningKey::new("").is_err());
        let k = SigningKey::new("do not print me please").unwrap();
        let shown = format!("{k:?}");
        assert!(!shown.contains("print"));
        assert!(shown.contains(k.id()));
    }
}
