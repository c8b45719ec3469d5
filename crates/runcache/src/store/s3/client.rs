//! The S3 client every part of the backend shares: the object store, the tokio runtime that
//! drives it, and where the store lives; requests with errors that name the object.

use std::future::Future;
use std::io;

use futures::stream::StreamExt;
use object_store::aws::AmazonS3;
use object_store::path::Path;
use object_store::{
    ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion,
};

use crate::error::{Error, Result};

/// Most GET requests one batched manifest read keeps in flight.
pub(super) const CONCURRENT_GETS: usize = 32;

/// What every part of the backend (blobs, manifests, leases) shares: the client, the runtime
/// that drives it, and where the store lives.
pub(crate) struct Client {
    pub(super) rt: tokio::runtime::Runtime,
    pub(super) store: AmazonS3,
    pub(super) bucket: String,
    /// The key prefix without leading or trailing `/` ("" for the bucket root).
    pub(super) prefix: String,
    /// The endpoint, for messages (never carries credentials).
    pub(super) endpoint: String,
    /// False only with `?best_effort=true` on a server that failed the conditional-write probe:
    /// put-if-absent and compare-and-swap then degrade to check-then-write.
    pub(super) conditional: bool,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Deliberately leaves the object_store client (and its credentials) out.
        f.debug_struct("Client")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .field("conditional", &self.conditional)
            .finish()
    }
}

/// The outcome of a conditional put.
pub(crate) enum Put {
    /// Written.
    Done,
    /// The condition failed (the object exists, or its etag changed).
    Conflict,
}

impl Client {
    pub(super) fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// The object path of `rel` (a path relative to the store prefix).
    pub(crate) fn path(&self, rel: &str) -> Path {
        if self.prefix.is_empty() {
            Path::from(rel)
        } else {
            Path::from(format!("{}/{rel}", self.prefix))
        }
    }

    /// The URL of `rel`, for messages.
    pub(crate) fn url(&self, rel: &str) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}/{rel}", self.bucket)
        } else {
            format!("s3://{}/{}/{rel}", self.bucket, self.prefix)
        }
    }

    /// The store's own URL.
    pub(super) fn root_url(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }

    /// An error for a failed request on `rel`, naming the object and the likely fix.
    pub(crate) fn fail(&self, op: &str, rel: &str, e: object_store::Error) -> Error {
        Error::io(
            self.url(rel),
            io::Error::other(format!(
                "S3 {op} failed: {e}. Check that the S3 endpoint {} is reachable and that the \
                 credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_PROFILE-less env \
                 chain) allow it; the endpoint comes from ?endpoint= or AWS_ENDPOINT_URL",
                self.endpoint
            )),
        )
    }

    /// Reads `rel`; `None` if it does not exist. Returns the bytes and the etag.
    pub(crate) fn get(&self, rel: &str) -> Result<Option<(Vec<u8>, Option<String>)>> {
        let path = self.path(rel);
        self.block_on(async {
            match self.store.get(&path).await {
                Ok(r) => {
                    let etag = r.meta.e_tag.clone();
                    let bytes = r.bytes().await.map_err(|e| self.fail("GET", rel, e))?;
                    Ok(Some((bytes.to_vec(), etag)))
                }
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(self.fail("GET", rel, e)),
            }
        })
    }

    /// Reads every object of `rels` with up to [`CONCURRENT_GETS`] requests in flight, in
    /// the order given; `None` where one does not exist.
    pub(crate) fn get_many(&self, rels: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
        self.block_on(async {
            futures::stream::iter(rels.iter().map(|rel| async move {
                match self.store.get(&self.path(rel)).await {
                    Ok(r) => match r.bytes().await {
                        Ok(bytes) => Ok(Some(bytes.to_vec())),
                        Err(e) => Err(self.fail("GET", rel, e)),
                    },
                    Err(object_store::Error::NotFound { .. }) => Ok(None),
                    Err(e) => Err(self.fail("GET", rel, e)),
                }
            }))
            .buffered(CONCURRENT_GETS)
            .collect::<Vec<Result<Option<Vec<u8>>>>>()
            .await
            .into_iter()
            .collect()
        })
    }

    /// Metadata of `rel`; `None` if it does not exist.
    pub(super) fn head(&self, rel: &str) -> Result<Option<ObjectMeta>> {
        let path = self.path(rel);
        self.block_on(async {
            match self.store.head(&path).await {
                Ok(m) => Ok(Some(m)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(self.fail("HEAD", rel, e)),
            }
        })
    }

    /// Writes `bytes` to `rel` unless it exists (`If-None-Match: *`).
    pub(crate) fn put_if_absent(&self, rel: &str, bytes: Vec<u8>) -> Result<Put> {
        if !self.conditional && self.head(rel)?.is_some() {
            return Ok(Put::Conflict);
        }
        let mode = if self.conditional {
            PutMode::Create
        } else {
            PutMode::Overwrite
        };
        self.put_mode(rel, bytes, mode)
    }

    /// Replaces `rel` if its etag is still `etag` (`If-Match`).
    pub(crate) fn put_if_match(&self, rel: &str, bytes: Vec<u8>, etag: &str) -> Result<Put> {
        if !self.conditional {
            let current = self.head(rel)?.and_then(|m| m.e_tag);
            if current.as_deref() != Some(etag) {
                return Ok(Put::Conflict);
            }
            return self.put_mode(rel, bytes, PutMode::Overwrite);
        }
        let mode = PutMode::Update(UpdateVersion {
            e_tag: Some(etag.to_string()),
            version: None,
        });
        self.put_mode(rel, bytes, mode)
    }

    /// Writes `bytes` to `rel`, replacing whatever is there.
    pub(crate) fn put_overwrite(&self, rel: &str, bytes: Vec<u8>) -> Result<()> {
        self.put_mode(rel, bytes, PutMode::Overwrite).map(|_| ())
    }

    pub(super) fn put_mode(&self, rel: &str, bytes: Vec<u8>, mode: PutMode) -> Result<Put> {
        let path = self.path(rel);
        let result = self.block_on(self.store.put_opts(
            &path,
            PutPayload::from(bytes),
            PutOptions::from(mode),
        ));
        match result {
            Ok(_) => Ok(Put::Done),
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => Ok(Put::Conflict),
            // A conditional write on a missing object (If-Match): the record is gone.
            Err(object_store::Error::NotFound { .. }) => Ok(Put::Conflict),
            Err(e) => Err(self.fail("PUT", rel, e)),
        }
    }

    /// Deletes `rel` (no error if absent).
    pub(crate) fn delete(&self, rel: &str) -> Result<()> {
        let path = self.path(rel);
        match self.block_on(self.store.delete(&path)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.fail("DELETE", rel, e)),
        }
    }

    /// Every object under `rel_dir/` (recursive).
    pub(crate) fn list(&self, rel_dir: &str) -> Result<Vec<ObjectMeta>> {
        let path = self.path(rel_dir);
        self.block_on(async {
            let mut stream = self.store.list(Some(&path));
            let mut out = Vec::new();
            while let Some(item) = stream.next().await {
                out.push(item.map_err(|e| self.fail("LIST", rel_dir, e))?);
            }
            Ok(out)
        })
    }

    /// Up to `limit` objects under `rel_dir` whose paths sort after `rel_after`, in path order
    /// (S3's `start-after`): one page of a listing, whatever the size of the prefix.
    pub(crate) fn list_after(
        &self,
        rel_dir: &str,
        rel_after: &str,
        limit: usize,
    ) -> Result<Vec<ObjectMeta>> {
        let path = self.path(rel_dir);
        let offset = self.path(rel_after);
        self.block_on(async {
            let mut stream = self.store.list_with_offset(Some(&path), &offset);
            let mut out = Vec::new();
            while out.len() < limit {
                match stream.next().await {
                    Some(item) => out.push(item.map_err(|e| self.fail("LIST", rel_dir, e))?),
                    None => break,
                }
            }
            Ok(out)
        })
    }

    /// The part of an object's path after the store prefix.
    pub(crate) fn relative<'a>(&self, location: &'a Path) -> &'a str {
        let full = location.as_ref();
        if self.prefix.is_empty() {
            full
        } else {
            full.strip_prefix(self.prefix.as_str())
                .and_then(|r| r.strip_prefix('/'))
                .unwrap_or(full)
        }
    }
}
