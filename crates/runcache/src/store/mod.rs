//! Storage backends. One trait, [`Backend`], holds the primitives every store provides:
//! content-addressed blobs, atomically committed manifests, last-use stamps, leases, small named
//! records and a way to wait for changes. The engine (`crate::engine`) builds everything else on
//! top of it.

use std::fmt::Debug;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::key::Key;
use crate::lease::LeaseBackend;

pub mod local;
pub mod location;
pub mod memory;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "s3")]
pub mod s3;
pub mod sharing;
pub mod tiered;

pub use local::LocalBackend;
pub use location::{open_backend, BackendOptions};
pub use memory::MemoryBackend;
#[cfg(feature = "postgres")]
pub use postgres::PostgresBackend;
pub use tiered::{Tier, TieredBackend};

/// Format of the store layout written by this engine (the marker at the store root).
pub const STORE_FORMAT: u32 = 1;

/// A readable stream of one blob's content.
pub type BlobReader = Box<dyn Read + Send>;

/// The primitives a storage backend provides. Implementations must be safe to share between
/// threads and correct between processes (and machines, for shared backends).
///
/// Contract:
/// - Blobs are immutable and named by the BLAKE3 digest of their content. `put_blob` of an
///   existing digest is a no-op. Backends never verify content on read; the engine does.
/// - `put_manifest` is the commit point of an entry and is atomic: a reader sees the old
///   manifest, the new one, or none, never a mix. With `replace == false` the first writer wins.
/// - Records are small mutable documents beside the entries (one per sweep, for instance),
///   addressed by a `kind` and a `name`, both checked by [`check_record_name`] before anything
///   else happens. `put_record` creates or replaces one atomically (last writer wins; a reader
///   sees the old bytes or the new ones, never a mix); records of different kinds never mix, and
///   `list_records` returns the names of one kind in byte order. A store that cannot be written
///   refuses `put_record` and `delete_record` with [`Error::ReadOnly`].
pub trait Backend: Send + Sync + Debug {
    /// Where the store lives (path or URL), for messages.
    fn location(&self) -> String;

    /// True if the blob exists.
    fn has_blob(&self, digest: &Digest) -> Result<bool>;
    /// Stores `data` under `digest` (computed by the caller). No-op if already present.
    fn put_blob(&self, digest: &Digest, data: &[u8]) -> Result<()>;
    /// Stores `data` and returns its digest. Backends may hash while writing (the local store
    /// writes a temp file on one core while another hashes, then names it by the digest).
    fn put_blob_hashing(&self, data: &[u8]) -> Result<Digest> {
        let digest = Digest::of(data);
        self.put_blob(&digest, data)?;
        Ok(digest)
    }
    /// Stores the content of the file at `path` under `digest`; the backend may move the file.
    fn put_blob_file(&self, digest: &Digest, path: &Path) -> Result<()>;
    /// Opens a blob for streaming; `None` if it does not exist.
    fn open_blob(&self, digest: &Digest) -> Result<Option<BlobReader>>;
    /// The blob's size, or `None` if it does not exist.
    fn blob_size(&self, digest: &Digest) -> Result<Option<u64>>;
    /// A local file holding the blob, when the backend keeps blobs as files (enables mmap).
    fn blob_path(&self, _digest: &Digest) -> Option<PathBuf> {
        None
    }
    /// Deletes a blob (no error if absent).
    fn delete_blob(&self, digest: &Digest) -> Result<()>;
    /// Every blob with its size and, where known, its age in seconds (for gc's grace period).
    fn list_blobs(&self) -> Result<Vec<BlobInfo>>;

    /// Atomically writes an entry's manifest. Returns false if `replace` is false and a
    /// manifest already exists (the existing one is kept).
    fn put_manifest(&self, key: &Key, bytes: &[u8], replace: bool) -> Result<bool>;
    /// Reads a manifest; `None` if the entry does not exist.
    fn get_manifest(&self, key: &Key) -> Result<Option<Vec<u8>>>;
    /// Reads the manifests of many keys at once, in the order of `keys` (`None` where an
    /// entry does not exist). The default reads them one by one; backends with a round trip
    /// per read (PostgreSQL, S3) answer in one query or concurrently.
    fn get_manifests(&self, keys: &[Key]) -> Result<Vec<Option<Vec<u8>>>> {
        keys.iter().map(|k| self.get_manifest(k)).collect()
    }
    /// A cheap fingerprint of the stored manifest of `key` that changes whenever the manifest
    /// is replaced or deleted (the local store: device, inode, size, mtime, ctime from one
    /// `stat`). `Ok(None)` means the backend offers none (every lookup reads the manifest) or
    /// the manifest does not exist. Lets the engine reuse a manifest it already parsed.
    fn manifest_fingerprint(&self, _key: &Key) -> Result<Option<[u64; 5]>> {
        Ok(None)
    }
    /// Deletes a manifest (no error if absent).
    fn delete_manifest(&self, key: &Key) -> Result<()>;
    /// Keys of every manifest in the store.
    fn list_manifests(&self) -> Result<Vec<Key>>;
    /// Up to `limit` manifest keys in key order, the first after `after` (one page of a
    /// listing). The default lists everything and sorts; backends that can list from a
    /// starting point override it, so that a page costs the same on a store of any size.
    fn list_manifests_page(&self, after: Option<&Key>, limit: usize) -> Result<Vec<Key>> {
        let mut keys = self.list_manifests()?;
        keys.sort_unstable();
        Ok(keys
            .into_iter()
            .filter(|k| after.is_none_or(|a| k > a))
            .take(limit)
            .collect())
    }
    /// Where the manifest of `key` lives, for messages.
    fn manifest_location(&self, key: &Key) -> String;

    /// Records that `key` was used at `unix_ms`.
    fn touch(&self, key: &Key, unix_ms: u64) -> Result<()>;
    /// When `key` was last recorded as used.
    fn last_used(&self, key: &Key) -> Result<Option<u64>>;
    /// Forgets the usage record of `key`.
    fn forget_usage(&self, key: &Key) -> Result<()>;

    /// The lease primitives of this store.
    fn leases(&self) -> Arc<dyn LeaseBackend>;

    /// Creates or replaces the record `kind/name` atomically (a reader sees the old or the new
    /// bytes, never a mix).
    fn put_record(&self, kind: &str, name: &str, bytes: &[u8]) -> Result<()>;
    /// The bytes of record `kind/name`, or `None` if there is no such record.
    fn get_record(&self, kind: &str, name: &str) -> Result<Option<Vec<u8>>>;
    /// Names of every record of `kind`, sorted (byte order).
    fn list_records(&self, kind: &str) -> Result<Vec<String>>;
    /// Deletes record `kind/name`; returns whether it existed.
    fn delete_record(&self, kind: &str, name: &str) -> Result<bool>;

    /// A way to sleep until the entry or the lease of `key` may have changed.
    fn watch(&self, key: &Key) -> Result<Box<dyn Watch>> {
        let _ = key;
        Ok(Box::new(PollWatch::default()))
    }

    /// A directory for scratch files (artifacts being produced), on the same filesystem as the
    /// blobs when possible so that storing them is a rename.
    fn scratch_dir(&self) -> PathBuf {
        std::env::temp_dir()
    }

    /// Objects under the store that are not a readable part of it (a stray file, a directory
    /// where a file belongs, a name that is not a digest, an unparsable lease record). Listing
    /// commands report them one by one instead of failing; `verify --repair` removes them with
    /// [`Backend::remove_stray`]. The default: the backend cannot hold any.
    fn strays(&self) -> Result<Vec<Stray>> {
        Ok(Vec::new())
    }

    /// Removes one object reported by [`Backend::strays`] (no error if it is already gone).
    fn remove_stray(&self, stray: &Stray) -> Result<()> {
        Err(Error::Invalid(format!(
            "{} cannot remove {}: remove it by hand",
            self.location(),
            stray.location
        )))
    }

    /// Removes temporary files left by killed writers: older than `grace` (a live writer keeps
    /// refreshing its file's mtime) and not held by a live process of this host. Returns (files
    /// removed, bytes freed). The default: the backend keeps no temporary files.
    fn collect_temp_files(&self, grace: Duration) -> Result<(u64, u64)> {
        let _ = grace;
        Ok((0, 0))
    }
}

/// An object found in a store that is not a readable part of it: reported, never fatal.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Stray {
    /// Where it is (a path or URL), for messages.
    pub location: String,
    /// What is wrong with it.
    pub problem: String,
    /// The backend's own name for it ([`Backend::remove_stray`] takes it back).
    #[serde(skip)]
    pub id: String,
}

/// Longest record kind or name accepted by [`check_record_name`].
pub const MAX_RECORD_NAME: usize = 128;

/// Checks a record's `kind` and `name` (every backend calls this, or [`check_record_kind`] when
/// there is no name, before doing anything): each must be 1 to [`MAX_RECORD_NAME`] ASCII
/// letters, digits, `.`, `_` or `-`, and must not start with `.`. So a kind or name is always one
/// plain file or object name: never empty, `.`, `..` or a path, never a hidden or temporary file
/// of the local store. A bad one is [`Error::Invalid`] naming it and the rule.
pub fn check_record_name(kind: &str, name: &str) -> Result<()> {
    check_record_part("kind", kind)?;
    check_record_part("name", name)
}

/// Checks a record kind alone (for [`Backend::list_records`]), by the rule of
/// [`check_record_name`].
pub fn check_record_kind(kind: &str) -> Result<()> {
    check_record_part("kind", kind)
}

fn check_record_part(what: &str, value: &str) -> Result<()> {
    let ok = !value.is_empty()
        && value.len() <= MAX_RECORD_NAME
        && !value.starts_with('.')
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        return Ok(());
    }
    // A very long value is shown by its start and its length.
    let shown = if value.chars().count() > MAX_RECORD_NAME {
        let start: String = value.chars().take(32).collect();
        format!("{start:?}… ({} bytes)", value.len())
    } else {
        format!("{value:?}")
    };
    Err(Error::Invalid(format!(
        "bad record {what} {shown}: a record kind or name is 1 to {MAX_RECORD_NAME} ASCII letters, digits, `.`, `_` or `-`, not starting with `.`"
    )))
}

/// One stored blob as listed by [`Backend::list_blobs`].
#[derive(Clone, Debug)]
pub struct BlobInfo {
    /// The blob's digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// Seconds since it was written or last re-used, if the backend knows.
    pub age_s: Option<u64>,
}

/// Sleeps until something relevant may have changed.
pub trait Watch: Send {
    /// Returns after a change notification or after at most `max`.
    fn wait(&mut self, max: Duration);
}

/// Adaptive polling: starts at 1 ms and backs off to 50 ms.
#[derive(Debug)]
pub struct PollWatch {
    next: Duration,
}

impl Default for PollWatch {
    fn default() -> Self {
        PollWatch {
            next: Duration::from_millis(1),
        }
    }
}

impl Watch for PollWatch {
    fn wait(&mut self, max: Duration) {
        std::thread::sleep(self.next.min(max));
        self.next = (self.next * 3 / 2).min(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_names_follow_the_rule() {
        let longest = "a".repeat(MAX_RECORD_NAME);
        for ok in ["a", "sweep", "A-b_c.9", "-x", "_", longest.as_str()] {
            check_record_name(ok, ok).unwrap();
        }
        let too_long = "a".repeat(MAX_RECORD_NAME + 1);
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "a/b",
            "a b",
            "caf\u{e9}",
            "a\0b",
            too_long.as_str(),
        ] {
            for (kind, name, what) in [("k", bad, "name"), (bad, "n", "kind")] {
                let err = check_record_name(kind, name).unwrap_err();
                let msg = err.to_string();
                assert!(matches!(err, Error::Invalid(_)), "{msg}");
                assert!(msg.contains(&format!("bad record {what}")), "{msg}");
                assert!(msg.contains("not starting with `.`"), "{msg}");
            }
        }
        let msg = check_record_name("k", &"x".repeat(10_000))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("(10000 bytes)") && msg.len() < 400, "{msg}");
        assert!(check_record_kind("sweep").is_ok());
        assert!(check_record_kind("a/b").is_err());
    }
}
