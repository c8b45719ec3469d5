//! The S3-compatible store (`s3://bucket/prefix`), built on the `object_store` crate. See
//! `docs/store-s3.md`.
//!
//! Layout under the prefix mirrors the local store:
//! ```text
//! RUNCACHE-STORE.json          format marker
//! blobs/ab/<64 hex>            content-addressed blobs (put-if-absent; multipart when large)
//! manifests/ab/<64 hex>.json   the commit point of an entry (put-if-absent, or overwrite)
//! used/ab/<64 hex>             last-use stamp (unix ms as text)
//! leases/ab/<64 hex>.json      one lock object per key, changed by etag compare-and-swap
//! records/<kind>/<name>        small named documents (plain PUT: atomic per object)
//! tmp/                         probe objects written while opening
//! ```
//!
//! The [`Backend`] trait is synchronous: each backend owns a small tokio runtime and blocks on
//! it. Calling the backend from inside another tokio runtime's worker thread is not supported.

use std::io::Read;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::{
    BackoffConfig, ClientConfigKey, ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutOptions,
    PutPayload, RetryConfig, UpdateVersion, WriteMultipart,
};
use serde::{Deserialize, Serialize};

use super::{
    check_record_kind, check_record_name, Backend, BlobInfo, BlobReader, Stray, STORE_FORMAT,
};
use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};
use crate::key::Key;
use crate::lease::LeaseBackend;

mod client;
mod lease;
mod location;
mod reader;
mod strays;

pub(crate) use client::{Client, Put};
pub use location::DEFAULT_MULTIPART_MIB;
use location::{parse_location, without_userinfo};
use reader::S3Reader;

pub use lease::S3Leases;

/// Name of the format marker under the prefix (same as the local store's).
pub const MARKER_OBJECT: &str = "RUNCACHE-STORE.json";

/// Largest part of a multipart upload (parts are at least S3's minimum of 5 MiB).
const MAX_PART: usize = 16 << 20;

/// Parts uploaded concurrently by one multipart upload.
const PART_CONCURRENCY: usize = 4;

/// The contents of the format marker.
#[derive(Debug, Serialize, Deserialize)]
struct Marker {
    format: u32,
    created_by: String,
}

/// A store in an S3-compatible bucket.
#[derive(Debug)]
pub struct S3Backend {
    client: Arc<Client>,
    leases: Arc<S3Leases>,
    multipart_threshold: u64,
}

/// `dir/ab/<hex><suffix>`.
fn sharded(dir: &str, hex: &str, suffix: &str) -> String {
    format!("{dir}/{}/{hex}{suffix}", &hex[..2])
}

/// A random hex string of `bytes` random bytes.
pub(crate) fn random_hex(bytes: usize) -> Result<String> {
    let mut r = vec![0u8; bytes];
    getrandom::fill(&mut r)
        .map_err(|e| Error::Invalid(format!("the OS random source failed: {e}")))?;
    Ok(hex::encode(r))
}

impl S3Backend {
    /// Opens (creating the marker if needed) the store at `location`
    /// (`s3://bucket/prefix?endpoint=…&region=…&allow_http=true&best_effort=false`).
    ///
    /// Credentials, region and endpoint also come from the standard AWS environment variables
    /// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`,
    /// `AWS_ENDPOINT_URL`, ...), web identity, or the instance metadata service. Refuses a
    /// server that does not honour conditional writes unless `best_effort=true`.
    pub fn open(location: &str) -> Result<S3Backend> {
        let (bucket, prefix, opts) = parse_location(location)?;
        let root = if prefix.is_empty() {
            format!("s3://{bucket}")
        } else {
            format!("s3://{bucket}/{prefix}")
        };
        let bad = |message: String| Error::BadStore {
            location: root.clone(),
            message,
        };

        let mut builder = AmazonS3Builder::from_env().with_bucket_name(&bucket);
        if let Some(e) = &opts.endpoint {
            builder = builder.with_endpoint(e);
        }
        if let Some(r) = &opts.region {
            builder = builder.with_region(r);
        }
        if let Some(a) = opts.allow_http {
            builder = builder.with_allow_http(a);
        }
        if let Some(v) = opts.virtual_hosted {
            builder = builder.with_virtual_hosted_style_request(v);
        }
        // An unreachable server must fail in seconds, not hang: few retries, short connect
        // timeout, bounded total retry time. Requests themselves may be long (large parts).
        builder = builder
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(100),
                    max_backoff: Duration::from_secs(2),
                    base: 2.0,
                },
                max_retries: 4,
                retry_timeout: Duration::from_secs(20),
            })
            .with_config(
                AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout),
                "3s",
            )
            .with_config(AmazonS3ConfigKey::Client(ClientConfigKey::Timeout), "120s");
        let endpoint = opts
            .endpoint
            .clone()
            .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok())
            .map(|e| without_userinfo(&e))
            .unwrap_or_else(|| "(AWS default for the region)".into());
        let store = builder.build().map_err(|e| {
            bad(format!(
                "invalid S3 configuration: {e}. Check ?endpoint= / AWS_ENDPOINT_URL, ?region= / AWS_REGION"
            ))
        })?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("runcache-s3")
            .enable_all()
            .build()
            .map_err(|e| bad(format!("cannot start the S3 client's runtime: {e}")))?;
        let mut client = Client {
            rt,
            store,
            bucket,
            prefix,
            endpoint,
            conditional: true,
        };

        // 1. Reachability and format.
        let marker = match client.block_on(client.store.get(&client.path(MARKER_OBJECT))) {
            Ok(r) => Some(
                client
                    .block_on(r.bytes())
                    .map_err(|e| bad(format!("cannot read {MARKER_OBJECT}: {e}")))?,
            ),
            Err(object_store::Error::NotFound { .. }) => None,
            Err(e) => {
                return Err(bad(format!(
                    "cannot reach the S3 endpoint {}: {e}. Check AWS_ENDPOINT_URL / ?endpoint=, that the server is running, and the credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)",
                    client.endpoint
                )))
            }
        };
        if let Some(bytes) = &marker {
            // Not "verify --repair" (which cannot open the store either): say how to rewrite it.
            let m: Marker = serde_json::from_slice(bytes).map_err(|e| {
                bad(format!(
                    "its format marker {} is damaged ({e}). If this prefix is a runcache store, overwrite that object with {{\"format\": {STORE_FORMAT}, \"created_by\": \"runcache\"}}; entries are kept",
                    client.url(MARKER_OBJECT)
                ))
            })?;
            if m.format > STORE_FORMAT {
                return Err(Error::NewerFormat {
                    path: root.clone(),
                    found: m.format,
                    supported: STORE_FORMAT,
                    engine: env!("CARGO_PKG_VERSION"),
                });
            }
        }

        // 2. A new store only in an empty prefix of an existing bucket.
        if marker.is_none() {
            let listing = client.block_on(client.store.list_with_delimiter(Some(&client.path(""))));
            let listing = listing.map_err(|e| {
                bad(format!(
                    "cannot list the bucket: {e}. Check that the bucket `{}` exists and that the credentials may list it",
                    client.bucket
                ))
            })?;
            let foreign = listing
                .objects
                .iter()
                .map(|o| client.relative(&o.location).to_string())
                .chain(
                    listing
                        .common_prefixes
                        .iter()
                        .map(|p| client.relative(p).to_string()),
                )
                .find(|name| name != "tmp" && name != MARKER_OBJECT);
            if let Some(name) = foreign {
                return Err(bad(format!(
                    "the prefix holds `{name}` but no {MARKER_OBJECT}; it is not a runcache store. Point the store at a new or empty prefix"
                )));
            }
        }

        // 3. Conditional writes: the whole protocol (first writer wins, one lease winner) rests
        // on them, so a server that ignores them is refused unless the user accepts races.
        if let Err(problem) = probe_conditional_writes(&client) {
            if opts.best_effort {
                log::warn!(
                    "runcache: the S3 server at {} does not honour conditional writes ({problem}); continuing with best_effort=true: concurrent writers may compute the same entry twice and lease takeovers may race",
                    client.endpoint
                );
                client.conditional = false;
            } else {
                return Err(bad(format!(
                    "the S3 server at {} does not honour conditional writes: {problem}. runcache needs put-if-absent (If-None-Match: *) and compare-and-swap (If-Match) to guarantee compute-once; use a server that supports them (AWS S3, moto, recent MinIO), or add ?best_effort=true to accept duplicate work and racing leases",
                    client.endpoint
                )));
            }
        }

        // 4. A new store: write the marker (first writer wins).
        if marker.is_none() {
            let body = serde_json::to_vec_pretty(&Marker {
                format: STORE_FORMAT,
                created_by: format!("runcache {}", env!("CARGO_PKG_VERSION")),
            })
            .expect("marker serializes");
            // Two processes creating the same store race here; both markers are identical.
            client
                .put_if_absent(MARKER_OBJECT, body)
                .map_err(|e| bad(format!("cannot write {MARKER_OBJECT}: {e}")))?;
        }

        let client = Arc::new(client);
        Ok(S3Backend {
            leases: Arc::new(S3Leases::new(client.clone())),
            client,
            multipart_threshold: opts.multipart_mib << 20,
        })
    }

    fn blob_rel(d: &Digest) -> String {
        sharded("blobs", &d.to_hex(), "")
    }

    /// The keys named by manifest objects (anything else is a stray, listed by `strays`).
    fn manifest_keys(&self, objects: Vec<ObjectMeta>) -> Result<Vec<Key>> {
        let mut out = Vec::new();
        for meta in objects {
            let rel = self.client.relative(&meta.location);
            let Some(hex) = rel.rsplit('/').next().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                out.push(hex.parse()?);
            }
        }
        Ok(out)
    }

    fn manifest_rel(k: &Key) -> String {
        sharded("manifests", &k.to_hex(), ".json")
    }

    fn used_rel(k: &Key) -> String {
        sharded("used", &k.to_hex(), "")
    }

    /// `records/<kind>/<name>`; the caller has checked both.
    fn record_rel(kind: &str, name: &str) -> String {
        format!("records/{kind}/{name}")
    }

    fn part_size(&self) -> usize {
        (self.multipart_threshold as usize).clamp(5 << 20, MAX_PART)
    }

    /// Uploads a large blob in parts from `next_chunk` (which fills a buffer and returns its
    /// length, 0 at the end). An upload that fails is aborted; nothing is visible until the
    /// upload completes, so a failure leaves no partial blob.
    fn upload_in_parts(
        &self,
        rel: &str,
        mut next_chunk: impl FnMut(&mut [u8]) -> Result<usize>,
    ) -> Result<()> {
        let c = &self.client;
        let path = c.path(rel);
        let part = self.part_size();
        c.block_on(async {
            let upload = c
                .store
                .put_multipart(&path)
                .await
                .map_err(|e| c.fail("multipart upload start", rel, e))?;
            let mut writer = WriteMultipart::new_with_chunk_size(upload, part);
            let mut buf = vec![0u8; part];
            let result: Result<()> = async {
                loop {
                    let n = next_chunk(&mut buf)?;
                    if n == 0 {
                        return Ok(());
                    }
                    writer
                        .wait_for_capacity(PART_CONCURRENCY)
                        .await
                        .map_err(|e| c.fail("multipart upload", rel, e))?;
                    writer.write(&buf[..n]);
                }
            }
            .await;
            match result {
                Ok(()) => writer
                    .finish()
                    .await
                    .map(|_| ())
                    .map_err(|e| c.fail("multipart upload", rel, e)),
                Err(e) => {
                    if let Err(abort) = writer.abort().await {
                        log::debug!("could not abort the multipart upload of {rel}: {abort}");
                    }
                    Err(e)
                }
            }
        })
    }

    /// True if the blob exists with `size` bytes (then there is nothing to upload).
    fn blob_present(&self, rel: &str, size: u64) -> Result<bool> {
        Ok(self.client.head(rel)?.is_some_and(|m| m.size == size))
    }
}

impl Backend for S3Backend {
    fn location(&self) -> String {
        self.client.root_url()
    }

    fn has_blob(&self, digest: &Digest) -> Result<bool> {
        Ok(self.client.head(&Self::blob_rel(digest))?.is_some())
    }

    fn put_blob(&self, digest: &Digest, data: &[u8]) -> Result<()> {
        let rel = Self::blob_rel(digest);
        if (data.len() as u64) <= self.multipart_threshold {
            // Put-if-absent: an existing blob of that name already holds this content.
            self.client.put_if_absent(&rel, data.to_vec())?;
            return Ok(());
        }
        if self.blob_present(&rel, data.len() as u64)? {
            return Ok(());
        }
        let mut offset = 0;
        self.upload_in_parts(&rel, |buf| {
            let n = buf.len().min(data.len() - offset);
            buf[..n].copy_from_slice(&data[offset..offset + n]);
            offset += n;
            Ok(n)
        })
    }

    fn put_blob_file(&self, digest: &Digest, path: &FsPath) -> Result<()> {
        let size = std::fs::metadata(path).at(path)?.len();
        if size <= self.multipart_threshold {
            let data = std::fs::read(path).at(path)?;
            return self.put_blob(digest, &data);
        }
        let rel = Self::blob_rel(digest);
        if self.blob_present(&rel, size)? {
            return Ok(());
        }
        let mut file = std::fs::File::open(path).at(path)?;
        self.upload_in_parts(&rel, |buf| {
            let mut filled = 0;
            while filled < buf.len() {
                match file.read(&mut buf[filled..]).at(path)? {
                    0 => break,
                    n => filled += n,
                }
            }
            Ok(filled)
        })
    }

    fn open_blob(&self, digest: &Digest) -> Result<Option<BlobReader>> {
        let rel = Self::blob_rel(digest);
        let c = &self.client;
        let result = c.block_on(c.store.get(&c.path(&rel)));
        match result {
            Ok(r) => Ok(Some(Box::new(S3Reader {
                client: self.client.clone(),
                rel,
                etag: r.meta.e_tag.clone(),
                size: r.meta.size,
                offset: 0,
                stream: Some(r.into_stream()),
                chunk: Vec::new(),
                pos: 0,
                resumes: 0,
            }))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(c.fail("GET", &rel, e)),
        }
    }

    fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        Ok(self.client.head(&Self::blob_rel(digest))?.map(|m| m.size))
    }

    fn delete_blob(&self, digest: &Digest) -> Result<()> {
        self.client.delete(&Self::blob_rel(digest))
    }

    fn list_blobs(&self) -> Result<Vec<BlobInfo>> {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let mut out = Vec::new();
        for meta in self.client.list("blobs")? {
            let rel = self.client.relative(&meta.location);
            let Some(hex) = rel.rsplit('/').next() else {
                continue;
            };
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                continue;
            }
            out.push(BlobInfo {
                digest: Digest::from_hex(hex)?,
                size: meta.size,
                age_s: Some((now - meta.last_modified.timestamp()).max(0) as u64),
            });
        }
        Ok(out)
    }

    fn put_manifest(&self, key: &Key, bytes: &[u8], replace: bool) -> Result<bool> {
        let rel = Self::manifest_rel(key);
        if replace {
            // A single PUT replaces the object atomically: readers see the old or the new one.
            self.client.put_overwrite(&rel, bytes.to_vec())?;
            return Ok(true);
        }
        Ok(matches!(
            self.client.put_if_absent(&rel, bytes.to_vec())?,
            Put::Done
        ))
    }

    fn get_manifest(&self, key: &Key) -> Result<Option<Vec<u8>>> {
        Ok(self.client.get(&Self::manifest_rel(key))?.map(|(b, _)| b))
    }

    fn get_manifests(&self, keys: &[Key]) -> Result<Vec<Option<Vec<u8>>>> {
        let rels: Vec<String> = keys.iter().map(Self::manifest_rel).collect();
        self.client.get_many(&rels)
    }

    fn delete_manifest(&self, key: &Key) -> Result<()> {
        self.client.delete(&Self::manifest_rel(key))
    }

    fn list_manifests(&self) -> Result<Vec<Key>> {
        self.manifest_keys(self.client.list("manifests")?)
    }

    fn list_manifests_page(&self, after: Option<&Key>, limit: usize) -> Result<Vec<Key>> {
        // `manifests/<shard>/<hex>.json` sorts like the keys; "manifests/" precedes them all.
        let after = after.map_or("manifests/".to_string(), Self::manifest_rel);
        let mut keys = Vec::new();
        let mut from = after;
        // Stray objects in the listing are skipped, so ask again until the page is full.
        while keys.len() < limit {
            let page = self.client.list_after("manifests", &from, limit)?;
            let Some(last) = page.last() else { break };
            from = self.client.relative(&last.location).to_string();
            let n = page.len();
            keys.extend(self.manifest_keys(page)?);
            if n < limit {
                break;
            }
        }
        keys.truncate(limit);
        Ok(keys)
    }

    fn manifest_location(&self, key: &Key) -> String {
        self.client.url(&Self::manifest_rel(key))
    }

    fn strays(&self) -> Result<Vec<Stray>> {
        strays::strays(&self.client, &self.leases)
    }

    fn remove_stray(&self, stray: &Stray) -> Result<()> {
        self.client.delete(&stray.id)
    }

    fn touch(&self, key: &Key, unix_ms: u64) -> Result<()> {
        self.client
            .put_overwrite(&Self::used_rel(key), unix_ms.to_string().into_bytes())
    }

    fn last_used(&self, key: &Key) -> Result<Option<u64>> {
        // A garbled stamp only loses recency information; treat it as absent.
        Ok(self
            .client
            .get(&Self::used_rel(key))?
            .and_then(|(b, _)| std::str::from_utf8(&b).ok()?.trim().parse().ok()))
    }

    fn forget_usage(&self, key: &Key) -> Result<()> {
        self.client.delete(&Self::used_rel(key))
    }

    fn leases(&self) -> Arc<dyn LeaseBackend> {
        self.leases.clone()
    }

    fn blob_path(&self, _digest: &Digest) -> Option<PathBuf> {
        None
    }

    fn put_record(&self, kind: &str, name: &str, bytes: &[u8]) -> Result<()> {
        check_record_name(kind, name)?;
        // One plain PUT: S3 replaces an object atomically, readers see the old or the new one.
        self.client
            .put_overwrite(&Self::record_rel(kind, name), bytes.to_vec())
    }

    fn get_record(&self, kind: &str, name: &str) -> Result<Option<Vec<u8>>> {
        check_record_name(kind, name)?;
        Ok(self
            .client
            .get(&Self::record_rel(kind, name))?
            .map(|(b, _)| b))
    }

    fn list_records(&self, kind: &str) -> Result<Vec<String>> {
        check_record_kind(kind)?;
        let dir = format!("records/{kind}");
        let mut names = Vec::new();
        for meta in self.client.list(&dir)? {
            // Only direct children of `records/<kind>/` with a valid name are records.
            let rel = self.client.relative(&meta.location);
            let Some(name) = rel
                .strip_prefix(dir.as_str())
                .and_then(|r| r.strip_prefix('/'))
            else {
                continue;
            };
            if check_record_name(kind, name).is_ok() {
                names.push(name.to_string());
            }
        }
        names.sort();
        Ok(names)
    }

    fn delete_record(&self, kind: &str, name: &str) -> Result<bool> {
        check_record_name(kind, name)?;
        // S3's DELETE does not say whether the object existed: ask first. A concurrent delete
        // in between may make both callers answer true; the record is gone either way.
        let rel = Self::record_rel(kind, name);
        if self.client.head(&rel)?.is_none() {
            return Ok(false);
        }
        self.client.delete(&rel)?;
        Ok(true)
    }
}

/// Checks that the server honours `If-None-Match: *` and `If-Match` on a fresh probe object
/// under `tmp/`, and removes it. `Err` describes what the server got wrong.
fn probe_conditional_writes(c: &Client) -> std::result::Result<(), String> {
    let rel = format!("tmp/probe-{}", random_hex(12).map_err(|e| e.to_string())?);
    let path = c.path(&rel);
    let put = |mode: PutMode| {
        c.block_on(c.store.put_opts(
            &path,
            PutPayload::from(b"runcache conditional-write probe".to_vec()),
            PutOptions::from(mode),
        ))
    };
    let outcome = (|| {
        put(PutMode::Create).map_err(|e| {
            format!("a put-if-absent of a new object failed ({e}); the server may reject If-None-Match, or the credentials may not allow writing")
        })?;
        match put(PutMode::Create) {
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => {}
            Ok(_) => {
                return Err(
                    "a second put-if-absent (If-None-Match: *) of the same object succeeded"
                        .to_string(),
                )
            }
            Err(e) => return Err(format!("a second put-if-absent failed oddly: {e}")),
        }
        let stale = PutMode::Update(UpdateVersion {
            e_tag: Some("\"00000000000000000000000000000000\"".into()),
            version: None,
        });
        match put(stale) {
            Err(object_store::Error::Precondition { .. })
            | Err(object_store::Error::AlreadyExists { .. }) => Ok(()),
            Ok(_) => Err("a write conditional on a stale etag (If-Match) succeeded".to_string()),
            Err(e) => Err(format!("a write conditional on an etag failed oddly: {e}")),
        }
    })();
    let _ = c.block_on(c.store.delete(&path));
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse_and_refuse_secrets() {
        let (b, p, o) = parse_location(
            "s3://bkt/a/b/?endpoint=http%3A%2F%2F127.0.0.1%3A9000&region=eu-west-1&allow_http=true&multipart_mib=8",
        )
        .unwrap();
        assert_eq!((b.as_str(), p.as_str()), ("bkt", "a/b"));
        assert_eq!(o.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(o.region.as_deref(), Some("eu-west-1"));
        assert_eq!(o.allow_http, Some(true));
        assert_eq!(o.multipart_mib, 8);
        assert!(!o.best_effort);
        let (_, p, _) = parse_location("s3://bkt").unwrap();
        assert_eq!(p, "");

        let err = parse_location("s3://bkt/p?secret_access_key=hunter2").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("never accepted"), "{msg}");
        assert!(!msg.contains("hunter2"), "the secret leaked: {msg}");
        let err = parse_location("s3://bkt/p?colour=blue").unwrap_err();
        assert!(err.to_string().contains("unknown option `colour`"), "{err}");
        let err = parse_location("s3:///p").unwrap_err();
        assert!(err.to_string().contains("no bucket"), "{err}");
        let err = parse_location("s3://b/p?multipart_mib=1").unwrap_err();
        assert!(err.to_string().contains("at least 5"), "{err}");
        assert_eq!(
            without_userinfo("http://user:pw@host:9/x"),
            "http://host:9/x"
        );
    }
}
