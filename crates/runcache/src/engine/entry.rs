//! [`Entry`]: a handle on one entry of a task (which may or may not exist).

use serde::de::DeserializeOwned;

use super::store::Store;
use crate::error::{Error, Result};
use crate::key::Key;
use crate::manifest::{ArtifactRef, Manifest, Status};

/// A handle on the entry of one set of arguments of a task.
#[derive(Clone, Debug)]
pub struct Entry {
    store: Store,
    key: Key,
    namespace: String,
}

impl Entry {
    pub(crate) fn new(store: Store, key: Key, namespace: String) -> Self {
        Entry {
            store,
            key,
            namespace,
        }
    }

    /// The entry's key.
    pub fn key(&self) -> Key {
        self.key
    }

    /// True if a completed entry is stored.
    pub fn exists(&self) -> Result<bool> {
        Ok(self.status()? == Some(Status::Completed))
    }

    /// How the stored computation ended, or `None` if nothing is stored.
    pub fn status(&self) -> Result<Option<Status>> {
        Ok(self.info()?.map(|m| m.status))
    }

    /// The full manifest, or `None` if nothing is stored.
    pub fn info(&self) -> Result<Option<Manifest>> {
        self.store.manifest(&self.key)
    }

    fn completed(&self) -> Result<Manifest> {
        match self.info()? {
            Some(m) if m.status == Status::Completed => Ok(m),
            Some(m) => Err(Error::NotFound {
                namespace: self.namespace.clone(),
                key: self.key.to_hex(),
                hint: format!(
                    " (the stored entry is {}, not completed)",
                    m.status.as_str()
                ),
            }),
            None => Err(Error::NotFound {
                namespace: self.namespace.clone(),
                key: self.key.to_hex(),
                hint: String::new(),
            }),
        }
    }

    /// Loads the stored value (written by `get_or_compute`), verifying it.
    pub fn load<T: DeserializeOwned>(&self) -> Result<T> {
        let bytes = self.load_bytes()?;
        postcard::from_bytes(&bytes).map_err(|e| Error::Decode {
            key: self.key.to_hex(),
            type_name: std::any::type_name::<T>(),
            message: e.to_string(),
        })
    }

    /// Loads the stored value's raw bytes, verifying them.
    pub fn load_bytes(&self) -> Result<Vec<u8>> {
        let m = self.completed()?;
        let blob = m.blob("value").ok_or_else(|| Error::Corrupt {
            key: self.key.to_hex(),
            digest: "-".into(),
            message: "the manifest lists no value blob".into(),
        })?;
        self.store.read_blob(&self.key, blob)
    }

    /// Deletes the entry. Returns whether it existed.
    pub fn delete(&self) -> Result<bool> {
        self.store.delete(&self.key)
    }

    /// The artifact files stored with the entry.
    pub fn artifacts(&self) -> Result<Vec<ArtifactRef>> {
        Ok(self.completed()?.artifacts)
    }

    /// Reads one artifact, verifying it.
    pub fn read_artifact(&self, name: &str) -> Result<Vec<u8>> {
        self.completed()?;
        self.store.read_artifact(&self.key, name)
    }

    /// A verified local file holding one artifact (the store's own file when the store is
    /// local, else a copy in its scratch directory).
    pub fn artifact_file(&self, name: &str) -> Result<std::path::PathBuf> {
        self.completed()?;
        self.store.artifact_file(&self.key, name)
    }
}
