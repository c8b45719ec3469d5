//! The in-memory store: for tests and for throw-away caches inside one process. Stores opened
//! with the same `memory://NAME` location in one process share their content.

use std::collections::{BTreeMap, HashMap};
use std::io::Cursor;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use super::{check_record_kind, check_record_name, Backend, BlobInfo, BlobReader};
use crate::digest::Digest;
use crate::error::{IoContext, Result};
use crate::key::Key;
use crate::lease::LeaseBackend;
use crate::lease::MemoryLeases;

/// A store held in this process's memory.
#[derive(Debug, Default)]
pub struct MemoryBackend {
    name: String,
    blobs: Mutex<HashMap<Digest, Arc<Vec<u8>>>>,
    manifests: Mutex<HashMap<Key, Vec<u8>>>,
    used: Mutex<HashMap<Key, u64>>,
    /// Records by (kind, name); ordered, so a kind's names come out sorted.
    records: Mutex<BTreeMap<(String, String), Vec<u8>>>,
    leases: Arc<MemoryLeases>,
}

impl MemoryBackend {
    /// A new, empty, unnamed store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The process-wide store registered under `name` (created on first use).
    pub fn named(name: &str) -> Arc<MemoryBackend> {
        static REGISTRY: OnceLock<Mutex<HashMap<String, Arc<MemoryBackend>>>> = OnceLock::new();
        let mut reg = REGISTRY.get_or_init(Default::default).lock().unwrap();
        reg.entry(name.to_string())
            .or_insert_with(|| {
                Arc::new(MemoryBackend {
                    name: name.to_string(),
                    ..Default::default()
                })
            })
            .clone()
    }

    /// Replaces a stored blob's bytes without changing its name (for corruption tests).
    pub fn corrupt_blob(&self, digest: &Digest, data: Vec<u8>) {
        self.blobs.lock().unwrap().insert(*digest, Arc::new(data));
    }
}

impl Backend for MemoryBackend {
    fn location(&self) -> String {
        format!("memory://{}", self.name)
    }

    fn has_blob(&self, digest: &Digest) -> Result<bool> {
        Ok(self.blobs.lock().unwrap().contains_key(digest))
    }

    fn put_blob(&self, digest: &Digest, data: &[u8]) -> Result<()> {
        self.blobs
            .lock()
            .unwrap()
            .entry(*digest)
            .or_insert_with(|| Arc::new(data.to_vec()));
        Ok(())
    }

    fn put_blob_file(&self, digest: &Digest, path: &Path) -> Result<()> {
        let data = std::fs::read(path).at(path)?;
        self.put_blob(digest, &data)
    }

    fn open_blob(&self, digest: &Digest) -> Result<Option<BlobReader>> {
        let data = self.blobs.lock().unwrap().get(digest).cloned();
        Ok(data.map(|d| Box::new(Cursor::new(SharedBytes(d))) as BlobReader))
    }

    fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        Ok(self
            .blobs
            .lock()
            .unwrap()
            .get(digest)
            .map(|d| d.len() as u64))
    }

    fn delete_blob(&self, digest: &Digest) -> Result<()> {
        self.blobs.lock().unwrap().remove(digest);
        Ok(())
    }

    fn list_blobs(&self) -> Result<Vec<BlobInfo>> {
        Ok(self
            .blobs
            .lock()
            .unwrap()
            .iter()
            .map(|(d, b)| BlobInfo {
                digest: *d,
                size: b.len() as u64,
                age_s: None,
            })
            .collect())
    }

    fn put_manifest(&self, key: &Key, bytes: &[u8], replace: bool) -> Result<bool> {
        let mut m = self.manifests.lock().unwrap();
        if !replace && m.contains_key(key) {
            return Ok(false);
        }
        m.insert(*key, bytes.to_vec());
        Ok(true)
    }

    fn get_manifest(&self, key: &Key) -> Result<Option<Vec<u8>>> {
        Ok(self.manifests.lock().unwrap().get(key).cloned())
    }

    fn delete_manifest(&self, key: &Key) -> Result<()> {
        self.manifests.lock().unwrap().remove(key);
        Ok(())
    }

    fn list_manifests(&self) -> Result<Vec<Key>> {
        Ok(self.manifests.lock().unwrap().keys().copied().collect())
    }

    fn manifest_location(&self, key: &Key) -> String {
        format!("{}/manifests/{key}", self.location())
    }

    fn touch(&self, key: &Key, unix_ms: u64) -> Result<()> {
        self.used.lock().unwrap().insert(*key, unix_ms);
        Ok(())
    }

    fn last_used(&self, key: &Key) -> Result<Option<u64>> {
        Ok(self.used.lock().unwrap().get(key).copied())
    }

    fn forget_usage(&self, key: &Key) -> Result<()> {
        self.used.lock().unwrap().remove(key);
        Ok(())
    }

    fn leases(&self) -> Arc<dyn LeaseBackend> {
        self.leases.clone()
    }

    fn put_record(&self, kind: &str, name: &str, bytes: &[u8]) -> Result<()> {
        check_record_name(kind, name)?;
        self.records
            .lock()
            .unwrap()
            .insert((kind.to_string(), name.to_string()), bytes.to_vec());
        Ok(())
    }

    fn get_record(&self, kind: &str, name: &str) -> Result<Option<Vec<u8>>> {
        check_record_name(kind, name)?;
        Ok(self
            .records
            .lock()
            .unwrap()
            .get(&(kind.to_string(), name.to_string()))
            .cloned())
    }

    fn list_records(&self, kind: &str) -> Result<Vec<String>> {
        check_record_kind(kind)?;
        Ok(self
            .records
            .lock()
            .unwrap()
            .keys()
            .filter(|(k, _)| k == kind)
            .map(|(_, n)| n.clone())
            .collect())
    }

    fn delete_record(&self, kind: &str, name: &str) -> Result<bool> {
        check_record_name(kind, name)?;
        Ok(self
            .records
            .lock()
            .unwrap()
            .remove(&(kind.to_string(), name.to_string()))
            .is_some())
    }
}

/// Lets a reader stream a shared blob without copying it.
struct SharedBytes(Arc<Vec<u8>>);

impl AsRef<[u8]> for SharedBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}
