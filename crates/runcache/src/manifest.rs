//! The manifest: one JSON document per entry naming its blobs and metadata. Writing it is the
//! commit point of an entry.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::key::Key;

/// Version of the manifest schema written by this engine.
pub const MANIFEST_FORMAT: u32 = 1;

/// Blobs up to this size are stored inside the manifest itself (one file read per hit).
pub const INLINE_LIMIT: usize = 4096;

/// How an entry ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// The computation finished and its result is stored.
    Completed,
    /// The computation raised an error; the error is recorded.
    Failed,
    /// The computation was stopped by a signal; the next call recomputes.
    Interrupted,
}

impl Status {
    /// Lowercase name, as stored.
    pub fn as_str(&self) -> &'static str {
        match self {
            Status::Completed => "completed",
            Status::Failed => "failed",
            Status::Interrupted => "interrupted",
        }
    }
}

/// A reference from a manifest to one blob.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRef {
    /// What the blob is to the entry (`value`, `pickle`, `buffer:0`, ...).
    pub role: String,
    /// BLAKE3 digest of the content.
    pub digest: Digest,
    /// Size in bytes.
    pub size: u64,
    /// The content itself (base64) when it is at most [`INLINE_LIMIT`] bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline: Option<String>,
}

impl BlobRef {
    /// Decodes the inline content, if any.
    pub fn inline_bytes(&self) -> Option<Result<Vec<u8>>> {
        self.inline.as_ref().map(|b64| {
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| Error::Invalid(format!("bad inline blob {}: {e}", self.digest)))
        })
    }
}

/// A named file produced by the computation and stored with the entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactRef {
    /// File name as given by the task (relative, `/`-separated).
    pub name: String,
    /// BLAKE3 digest of the content.
    pub digest: Digest,
    /// Size in bytes.
    pub size: u64,
}

/// An entry this one used while computing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dependency {
    /// The dependency's task namespace.
    pub namespace: String,
    /// The dependency's task version.
    pub version: String,
    /// The dependency's entry key.
    pub key: Key,
}

/// What a failed computation left behind.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorInfo {
    /// Error type (Rust type name or Python exception class).
    #[serde(rename = "type")]
    pub error_type: String,
    /// Its message.
    pub message: String,
    /// Traceback or error chain, if known.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub traceback: String,
}

/// Everything recorded about one entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Manifest schema version.
    pub format: u32,
    /// The entry key.
    pub key: Key,
    /// Task namespace.
    pub namespace: String,
    /// Task version.
    pub version: String,
    /// Readable JSON of what went into the key.
    pub key_doc: serde_json::Value,
    /// How the computation ended.
    pub status: Status,
    /// Result blobs.
    #[serde(default)]
    pub blobs: Vec<BlobRef>,
    /// Artifact files.
    #[serde(default)]
    pub artifacts: Vec<ArtifactRef>,
    /// Entries used while computing.
    #[serde(default)]
    pub dependencies: Vec<Dependency>,
    /// Error details when `status` is failed or interrupted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    /// Computation time in seconds.
    pub duration_s: f64,
    /// Host that computed it.
    pub host: String,
    /// Process that computed it.
    pub pid: u32,
    /// How the value blob is encoded (`postcard`, `raw`, `pickle5`, ...).
    #[serde(default)]
    pub encoding: String,
    /// Free-form user metadata.
    #[serde(default)]
    pub metadata: BTreeMap<String, serde_json::Value>,
    /// The sweep whose worker computed it (absent for ordinary calls).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sweep: Option<String>,
    /// The entry's signature (`v1.<key id>.<mac>`) when it was written with a signing key; see
    /// [`crate::signing`]. Always the last member of the stored JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

impl Manifest {
    /// Serializes to the stored JSON form (compact: parsed on every hit; `runcache show`
    /// pretty-prints it).
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("manifest serialization cannot fail")
    }

    /// Parses stored bytes; `path` names the file in the error.
    pub fn parse(bytes: &[u8], path: &str) -> Result<Self> {
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| Error::Malformed {
            what: "manifest",
            path: path.to_string(),
            message: e.to_string(),
        })?;
        if m.format > MANIFEST_FORMAT {
            return Err(Error::Malformed {
                what: "manifest",
                path: path.to_string(),
                message: format!(
                    "manifest format {} is newer than this engine's {MANIFEST_FORMAT}; upgrade runcache",
                    m.format
                ),
            });
        }
        for b in &m.blobs {
            if let Some(Err(e)) = b.inline_bytes() {
                return Err(Error::Malformed {
                    what: "manifest",
                    path: path.to_string(),
                    message: e.to_string(),
                });
            }
        }
        Ok(m)
    }

    /// The blob with the given role.
    pub fn blob(&self, role: &str) -> Option<&BlobRef> {
        self.blobs.iter().find(|b| b.role == role)
    }

    /// Total bytes of blobs and artifacts this entry references.
    /// Saturates rather than overflowing (a damaged manifest may claim any size).
    pub fn total_size(&self) -> u64 {
        self.blobs
            .iter()
            .map(|b| b.size)
            .chain(self.artifacts.iter().map(|a| a.size))
            .fold(0u64, u64::saturating_add)
    }

    /// Digests of every blob stored outside the manifest (result blobs and artifacts).
    pub fn external_digests(&self) -> impl Iterator<Item = &Digest> {
        self.blobs
            .iter()
            .filter(|b| b.inline.is_none())
            .map(|b| &b.digest)
            .chain(self.artifacts.iter().map(|a| &a.digest))
    }
}

/// Encodes bytes for [`BlobRef::inline`].
pub fn encode_inline(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Err(e) = Manifest::parse(&bytes, "m.json") {
                prop_assert!(e.to_string().contains("m.json"));
            }
        }

        #[test]
        fn mutated_manifest_is_error_or_valid(pos in 0usize..400, byte in any::<u8>()) {
            let mut bytes = sample().to_bytes();
            let p = pos % bytes.len();
            bytes[p] = byte;
            match Manifest::parse(&bytes, "x/m.json") {
                Ok(m) => prop_assert_eq!(m.format, MANIFEST_FORMAT),
                Err(e) => prop_assert!(e.to_string().contains("x/m.json")),
            }
        }
    }

    fn sample() -> Manifest {
        Manifest {
            format: MANIFEST_FORMAT,
            key: Key(Digest::of(b"k")),
            namespace: "ns".into(),
            version: "1".into(),
            key_doc: serde_json::json!({"args": [1, 2]}),
            status: Status::Completed,
            blobs: vec![BlobRef {
                role: "value".into(),
                digest: Digest::of(b"v"),
                size: 1,
                inline: Some(encode_inline(b"v")),
            }],
            artifacts: vec![],
            dependencies: vec![],
            error: None,
            created_unix_ms: 1,
            duration_s: 0.5,
            host: "h".into(),
            pid: 1,
            encoding: "raw".into(),
            metadata: BTreeMap::new(),
            sweep: None,
            signature: None,
        }
    }

    #[test]
    fn roundtrip() {
        let m = sample();
        assert_eq!(Manifest::parse(&m.to_bytes(), "m").unwrap(), m);
    }

    #[test]
    fn newer_format_is_refused() {
        let mut m = sample();
        m.format = MANIFEST_FORMAT + 1;
        let err = Manifest::parse(&m.to_bytes(), "m").unwrap_err();
        assert!(err.to_string().contains("newer"));
    }
}
