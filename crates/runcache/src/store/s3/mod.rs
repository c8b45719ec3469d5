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

use std::future::Future;
use std::io::{self, Read};
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::stream::{BoxStream, StreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path;
use object_store::{
    BackoffConfig, ClientConfigKey, GetOptions, GetRange, ObjectMeta, ObjectStore, ObjectStoreExt,
    PutMode, PutOptions, PutPayload, RetryConfig, UpdateVersion, WriteMultipart,
};
use serde::{Deserialize, Serialize};

use super::{
    check_record_kind, check_record_name, Backend, BlobInfo, BlobReader, Stray, STORE_FORMAT,
};
use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};
use crate::key::Key;
use crate::lease::LeaseBackend;

mod lease;
mod strays;

pub use lease::S3Leases;

/// Name of the format marker under the prefix (same as the local store's).
pub const MARKER_OBJECT: &str = "RUNCACHE-STORE.json";

/// Blobs larger than this many MiB are uploaded in parts, unless `?multipart_mib=` says otherwise.
pub const DEFAULT_MULTIPART_MIB: u64 = 64;

/// Largest part of a multipart upload (parts are at least S3's minimum of 5 MiB).
const MAX_PART: usize = 16 << 20;

/// Parts uploaded concurrently by one multipart upload.
const PART_CONCURRENCY: usize = 4;

/// How often a blob download resumes (ranged GET from where it broke) before giving up.
const DOWNLOAD_RESUMES: usize = 3;

/// The contents of the format marker.
#[derive(Debug, Serialize, Deserialize)]
struct Marker {
    format: u32,
    created_by: String,
}

/// Settings taken from the location's query string. Secrets are never accepted here.
#[derive(Clone, Debug)]
struct S3Options {
    endpoint: Option<String>,
    region: Option<String>,
    allow_http: Option<bool>,
    virtual_hosted: Option<bool>,
    best_effort: bool,
    multipart_mib: u64,
}

/// Most GET requests one batched manifest read keeps in flight.
const CONCURRENT_GETS: usize = 32;

/// What every part of the backend (blobs, manifests, leases) shares: the client, the runtime
/// that drives it, and where the store lives.
pub(crate) struct Client {
    rt: tokio::runtime::Runtime,
    store: AmazonS3,
    bucket: String,
    /// The key prefix without leading or trailing `/` ("" for the bucket root).
    prefix: String,
    /// The endpoint, for messages (never carries credentials).
    endpoint: String,
    /// False only with `?best_effort=true` on a server that failed the conditional-write probe:
    /// put-if-absent and compare-and-swap then degrade to check-then-write.
    conditional: bool,
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
    fn block_on<F: Future>(&self, f: F) -> F::Output {
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
    fn root_url(&self) -> String {
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
    fn head(&self, rel: &str) -> Result<Option<ObjectMeta>> {
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

    fn put_mode(&self, rel: &str, bytes: Vec<u8>, mode: PutMode) -> Result<Put> {
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

fn parse_bool(location: &str, key: &str, v: &str) -> Result<bool> {
    match v {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(Error::BadStore {
            location: location.into(),
            message: format!("option `{key}` must be true or false, not `{v}`"),
        }),
    }
}

/// Decodes `%XX` escapes in a query value (`+` stays `+`).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
            if let Ok(b) = u8::from_str_radix(hex, 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Drops any `user:password@` from a URL, for messages.
fn without_userinfo(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            format!("{scheme}://{host}{path}")
        }
        None => url.to_string(),
    }
}

const KNOWN_OPTIONS: &str =
    "endpoint, region, allow_http, virtual_hosted, multipart_mib, best_effort, sync";

/// Splits `s3://bucket/prefix?query` into bucket, prefix and options.
fn parse_location(location: &str) -> Result<(String, String, S3Options)> {
    let bad = |message: String| Error::BadStore {
        location: without_userinfo(location),
        message,
    };
    let rest = location
        .strip_prefix("s3://")
        .ok_or_else(|| bad("an S3 store location starts with s3://".into()))?;
    let (target, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (bucket, prefix) = target.split_once('/').unwrap_or((target, ""));
    if bucket.is_empty() {
        return Err(bad(
            "no bucket name; write s3://BUCKET/PREFIX (e.g. s3://team-cache/runcache)".into(),
        ));
    }
    let prefix = prefix.trim_matches('/').to_string();
    if prefix.split('/').any(|s| s == "." || s == "..") || prefix.contains("//") {
        return Err(bad(format!(
            "the prefix `{prefix}` has empty, `.` or `..` segments; use a plain path"
        )));
    }
    let mut opts = S3Options {
        endpoint: None,
        region: None,
        allow_http: None,
        virtual_hosted: None,
        best_effort: false,
        multipart_mib: DEFAULT_MULTIPART_MIB,
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, "true"));
        let v = percent_decode(v);
        match k {
            "endpoint" => opts.endpoint = Some(v),
            "region" => opts.region = Some(v),
            "allow_http" => opts.allow_http = Some(parse_bool(location, k, &v)?),
            "virtual_hosted" => opts.virtual_hosted = Some(parse_bool(location, k, &v)?),
            "best_effort" => opts.best_effort = parse_bool(location, k, &v)?,
            // Acknowledged S3 writes are durable; there is nothing to fsync.
            "sync" => {
                parse_bool(location, k, &v)?;
            }
            "multipart_mib" => {
                opts.multipart_mib = v.parse().ok().filter(|n| *n >= 5).ok_or_else(|| {
                    bad(format!(
                        "option `multipart_mib` must be a whole number of MiB, at least 5 (S3's smallest part), not `{v}`"
                    ))
                })?
            }
            "access_key_id" | "secret_access_key" | "aws_access_key_id"
            | "aws_secret_access_key" | "token" | "session_token" | "password" | "secret" => {
                // Do not echo the location: it holds a secret.
                return Err(Error::BadStore {
                    location: format!("s3://{bucket}/{prefix}"),
                    message: format!(
                        "`{k}` is a secret and is never accepted in a store URL (URLs end up in logs and manifests). Set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN in the environment instead"
                    ),
                });
            }
            _ => {
                return Err(bad(format!(
                    "unknown option `{k}`; known options: {KNOWN_OPTIONS}"
                )))
            }
        }
    }
    Ok((bucket.to_string(), prefix, opts))
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

/// Streams one blob, resuming with a ranged GET (pinned to the same etag) when the connection
/// breaks mid-download.
struct S3Reader {
    client: Arc<Client>,
    rel: String,
    etag: Option<String>,
    size: u64,
    offset: u64,
    stream: Option<BoxStream<'static, object_store::Result<bytes::Bytes>>>,
    chunk: Vec<u8>,
    pos: usize,
    resumes: usize,
}

impl S3Reader {
    fn next_chunk(&mut self) -> io::Result<bool> {
        loop {
            if self.offset >= self.size {
                return Ok(false);
            }
            let stream = match &mut self.stream {
                Some(s) => s,
                None => {
                    let opts = GetOptions {
                        range: Some(GetRange::Offset(self.offset)),
                        if_match: self.etag.clone(),
                        ..Default::default()
                    };
                    let path = self.client.path(&self.rel);
                    let r = self
                        .client
                        .block_on(self.client.store.get_opts(&path, opts))
                        .map_err(|e| io::Error::other(self.client.fail("GET", &self.rel, e)))?;
                    self.stream.insert(r.into_stream())
                }
            };
            match self.client.block_on(stream.next()) {
                Some(Ok(bytes)) => {
                    self.offset += bytes.len() as u64;
                    self.chunk.clear();
                    self.chunk.extend_from_slice(&bytes);
                    self.pos = 0;
                    return Ok(true);
                }
                // The server ended the body early: resume from where it stopped.
                None => {
                    self.stream = None;
                    self.resumes += 1;
                    if self.resumes > DOWNLOAD_RESUMES {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!(
                                "{}: the download ended at byte {} of {}",
                                self.client.url(&self.rel),
                                self.offset,
                                self.size
                            ),
                        ));
                    }
                }
                Some(Err(e)) => {
                    self.stream = None;
                    self.resumes += 1;
                    if self.resumes > DOWNLOAD_RESUMES {
                        return Err(io::Error::other(self.client.fail("GET", &self.rel, e)));
                    }
                    log::debug!("resuming the download of {} after: {e}", self.rel);
                }
            }
        }
    }
}

impl Read for S3Reader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.chunk.len() && !self.next_chunk()? {
            return Ok(0);
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
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
