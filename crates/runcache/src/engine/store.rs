//! [`Store`]: a handle on one store, shared cheaply between threads.

use std::collections::HashMap;
use std::io::Read;
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::digest::{Digest, StreamHasher};
use crate::error::{Error, Result};
use crate::key::Key;
use crate::lease::{LeaseOptions, Leases};
use crate::manifest::{ArtifactRef, BlobRef, Manifest, INLINE_LIMIT};
use crate::signing::{self, SigningKey};
use crate::store::{self, Backend, BackendOptions};

use super::mapped::{map_verified, read_verified, BlobData, MapOutcome, ReadOutcome};

/// Options of a [`Store`] handle.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// fsync files and directories on commit (local stores). Off by default: reads verify every
    /// digest, so an entry torn by a power loss is detected and recomputed, never returned.
    pub sync: bool,
    /// Lease timing (TTL, heartbeat interval, same-host liveness).
    pub lease: LeaseOptions,
    /// A hit records its use in the store at most once per this interval per process.
    pub usage_granularity: Duration,
    /// Sign every entry written and refuse every entry read without a valid signature
    /// ([`Error::Signature`]). `None`: `Store::open*` use `RUNCACHE_SIGNING_KEY` if it is set;
    /// entries are then neither signed nor checked. See [`crate::signing`].
    pub signing_key: Option<SigningKey>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            sync: false,
            lease: LeaseOptions::default(),
            usage_granularity: Duration::from_secs(600),
            signing_key: None,
        }
    }
}

/// A handle on one store. Cloning is cheap; clones share leases and caches.
#[derive(Clone)]
pub struct Store {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) leases: Leases,
    pub(crate) options: StoreOptions,
    touched: Mutex<HashMap<Key, Instant>>,
    usage_writer: OnceLock<Mutex<mpsc::Sender<UsageMsg>>>,
    /// Manifests already parsed, by key, with the fingerprint of the file they came from.
    parsed: Mutex<HashMap<Key, (Fingerprint, Arc<Manifest>)>>,
}

/// A manifest file's identity as reported by [`Backend::manifest_fingerprint`].
type Fingerprint = [u64; 5];

/// Local blobs at least this large are verified once per machine per file identity when read.
const LOCAL_VERIFY_ONCE: u64 = 1 << 20;

/// At most this many parsed manifests are kept per store handle.
const PARSED_CACHE_LIMIT: usize = 16_384;

/// Work for the background thread that records last use off the hit path.
enum UsageMsg {
    Touch(Key, u64),
    Flush(mpsc::Sender<()>),
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.location())
    }
}

/// The outcome of reading one entry's manifest.
pub(crate) enum Lookup {
    Missing,
    Found(Arc<Manifest>),
    Damaged(String),
}

/// One entry as listed by [`Store::entries`].
#[derive(Clone, Debug)]
pub struct EntryInfo {
    /// The entry's key.
    pub key: Key,
    /// Its manifest, or `None` if the manifest is damaged.
    pub manifest: Option<Manifest>,
    /// Why the manifest could not be read, if it could not.
    pub damage: Option<String>,
    /// Last recorded use (unix ms): the later of the usage stamp and the creation time.
    pub last_used_unix_ms: u64,
}

impl Store {
    /// Opens the store at `location` (a directory path, `file:///path`, `memory://[NAME]`).
    pub fn open(location: &str) -> Result<Store> {
        Self::open_with(location, StoreOptions::default())
    }

    /// Opens the default store: `RUNCACHE_STORE` if set, else `./.runcache`.
    pub fn open_default() -> Result<Store> {
        Self::open(&store::location::default_location())
    }

    /// Opens a store with explicit options.
    pub fn open_with(location: &str, mut options: StoreOptions) -> Result<Store> {
        signing_key_from_env(&mut options)?;
        let backend = store::open_backend(
            location,
            &BackendOptions {
                sync: options.sync,
                ..Default::default()
            },
        )?;
        Ok(Self::from_backend(backend, options))
    }

    /// Opens a tiered store over `locations`, nearest first (e.g. `["./.runcache",
    /// "s3://team/cache"]`); a location may end in `?readonly=true`. See
    /// [`crate::store::tiered`].
    pub fn open_tiered(locations: &[&str]) -> Result<Store> {
        Self::open_tiered_with(locations, StoreOptions::default())
    }

    /// [`Store::open_tiered`] with explicit options.
    pub fn open_tiered_with(locations: &[&str], mut options: StoreOptions) -> Result<Store> {
        signing_key_from_env(&mut options)?;
        let backend = store::tiered::open_tiered(
            locations,
            &BackendOptions {
                sync: options.sync,
                ..Default::default()
            },
        )?;
        Ok(Self::from_backend(Arc::new(backend), options))
    }

    /// A new private in-memory store.
    pub fn memory() -> Store {
        Self::from_backend(
            Arc::new(store::MemoryBackend::new()),
            StoreOptions::default(),
        )
    }

    /// Wraps an already opened backend.
    pub fn from_backend(backend: Arc<dyn Backend>, options: StoreOptions) -> Store {
        let leases = Leases::new(backend.leases(), options.lease.clone());
        Store {
            inner: Arc::new(Inner {
                backend,
                leases,
                options,
                touched: Mutex::new(HashMap::new()),
                usage_writer: OnceLock::new(),
                parsed: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Where the store lives.
    pub fn location(&self) -> String {
        self.inner.backend.location()
    }

    /// The backend, for tools that need its primitives.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.inner.backend
    }

    /// The store's leases.
    pub fn leases(&self) -> &Leases {
        &self.inner.leases
    }

    /// Reads and checks the manifest of `key`. Damage is reported, not raised.
    pub(crate) fn lookup(&self, key: &Key) -> Result<Lookup> {
        // Fast path: the manifest file is the one parsed before (same fingerprint).
        let fingerprint = self.inner.backend.manifest_fingerprint(key)?;
        if let Some(fp) = fingerprint {
            if let Some((seen, m)) = self.inner.parsed.lock().unwrap().get(key) {
                if *seen == fp {
                    return Ok(Lookup::Found(m.clone()));
                }
            }
        }
        let Some(bytes) = self.inner.backend.get_manifest(key)? else {
            return Ok(Lookup::Missing);
        };
        self.check_signature(key, &bytes)?;
        let found = self.parse_manifest(key, &bytes);
        if let (Some(fp), Lookup::Found(m)) = (fingerprint, &found) {
            // Only cache what was read from the file the fingerprint describes.
            if self.inner.backend.manifest_fingerprint(key)? == Some(fp) {
                let mut parsed = self.inner.parsed.lock().unwrap();
                if parsed.len() >= PARSED_CACHE_LIMIT {
                    // Evict about an eighth: the keys whose last byte matches this key's first
                    // in its low 3 bits (keys are uniform hashes, so an arbitrary eighth, a
                    // different one each time). Clearing it all made a hot set a little larger
                    // than the limit re-read about half of its hits; now about limit / hot set
                    // of them are cached.
                    let turn = key.0.as_bytes()[0] & 7;
                    parsed.retain(|k, _| k.0.as_bytes()[31] & 7 != turn);
                }
                parsed.insert(*key, (fp, m.clone()));
            }
        }
        Ok(found)
    }

    pub(super) fn parse_manifest(&self, key: &Key, bytes: &[u8]) -> Lookup {
        // The manifest's location is only needed to name it in an error: not on the hit path.
        match Manifest::parse(bytes, "") {
            Ok(m) if m.key == *key => Lookup::Found(Arc::new(m)),
            Ok(m) => Lookup::Damaged(format!(
                "{} names key {} instead of {key}",
                self.inner.backend.manifest_location(key),
                m.key
            )),
            Err(_) => {
                let path = self.inner.backend.manifest_location(key);
                let e = Manifest::parse(bytes, &path).expect_err("parsing is deterministic");
                Lookup::Damaged(e.to_string())
            }
        }
    }

    /// The manifest of `key`, if present and readable.
    pub fn manifest(&self, key: &Key) -> Result<Option<Manifest>> {
        match self.lookup(key)? {
            Lookup::Found(m) => Ok(Some(Arc::unwrap_or_clone(m))),
            Lookup::Missing => Ok(None),
            Lookup::Damaged(msg) => Err(Error::Malformed {
                what: "manifest",
                path: self.inner.backend.manifest_location(key),
                message: msg,
            }),
        }
    }

    /// Reads one blob of an entry, checking its size and digest. A blob found damaged is
    /// deleted (its content can never be right for its name) and reported as [`Error::Corrupt`].
    pub fn read_blob(&self, key: &Key, blob: &BlobRef) -> Result<Vec<u8>> {
        let corrupt = |message: String| Error::Corrupt {
            key: key.to_hex(),
            digest: blob.digest.to_hex(),
            message,
        };
        let (data, digest) = match blob.inline_bytes() {
            Some(bytes) => {
                let data = bytes?;
                let digest = Digest::of(&data);
                (data, digest)
            }
            None if blob.size >= LOCAL_VERIFY_ONCE
                && self.inner.backend.blob_path(&blob.digest).is_some() =>
            {
                let path = self.inner.backend.blob_path(&blob.digest).expect("checked");
                let read = read_verified(&path, &blob.digest, blob.size, |file, size| {
                    read_and_hash(Box::new(file), size)
                })?;
                return match read {
                    ReadOutcome::Ok(data) => Ok(data),
                    ReadOutcome::Missing => {
                        Err(corrupt("the blob is missing from the store".into()))
                    }
                    ReadOutcome::Damaged(message) => {
                        self.discard_blob(blob);
                        Err(corrupt(message))
                    }
                };
            }
            None => {
                let Some(reader) = self.inner.backend.open_blob(&blob.digest)? else {
                    return Err(corrupt("the blob is missing from the store".into()));
                };
                read_and_hash(reader, blob.size).map_err(|e| corrupt(e.to_string()))?
            }
        };
        if data.len() as u64 != blob.size {
            self.discard_blob(blob);
            return Err(corrupt(format!(
                "size is {} bytes, the manifest says {}",
                data.len(),
                blob.size
            )));
        }
        if digest != blob.digest {
            self.discard_blob(blob);
            return Err(corrupt("content does not match its digest".into()));
        }
        Ok(data)
    }

    /// Reads the blob of `role` from a completed entry whose value was encoded as `encoding`,
    /// verified. Errors name the entry and what was expected (`type_name` is for messages).
    pub fn read_role(
        &self,
        manifest: &Manifest,
        role: &str,
        encoding: &str,
        type_name: &'static str,
    ) -> Result<Vec<u8>> {
        if manifest.encoding != encoding {
            return Err(Error::Decode {
                key: manifest.key.to_hex(),
                type_name,
                message: format!(
                    "the entry is encoded as `{}`, this call reads `{encoding}`",
                    manifest.encoding
                ),
            });
        }
        let blob = manifest.blob(role).ok_or_else(|| Error::Corrupt {
            key: manifest.key.to_hex(),
            digest: "-".into(),
            message: format!("the manifest lists no `{role}` blob"),
        })?;
        self.read_blob(&manifest.key, blob)
    }

    /// A blob's bytes, memory-mapped read-only when the backend keeps it as a local file and it
    /// is at least `map_threshold` bytes (verified the first time this machine maps that file),
    /// otherwise read and verified. Damage is [`Error::Corrupt`], and the damaged file removed.
    pub fn load_blob(&self, key: &Key, blob: &BlobRef, map_threshold: u64) -> Result<BlobData> {
        if blob.inline.is_none() && blob.size >= map_threshold {
            if let Some(path) = self.inner.backend.blob_path(&blob.digest) {
                let corrupt = |message: String| Error::Corrupt {
                    key: key.to_hex(),
                    digest: blob.digest.to_hex(),
                    message,
                };
                return match map_verified(&path, &blob.digest, blob.size)? {
                    MapOutcome::Ok(map) => Ok(BlobData::Mapped(map)),
                    MapOutcome::Missing => {
                        Err(corrupt("the blob is missing from the store".into()))
                    }
                    MapOutcome::Damaged(message) => {
                        self.discard_blob(blob);
                        Err(corrupt(message))
                    }
                };
            }
        }
        self.read_blob(key, blob).map(BlobData::Owned)
    }

    /// Streams a blob through the hasher without keeping it: its actual size and content
    /// digest, or `None` if it is missing. For `verify`, which compares each entry's claims
    /// with what this finds.
    pub(crate) fn hash_blob(&self, digest: &Digest) -> Result<Option<(u64, Digest)>> {
        let Some(reader) = self.inner.backend.open_blob(digest)? else {
            return Ok(None);
        };
        let (digest, size) =
            StreamHasher::digest_reader(reader).map_err(|e| Error::io(self.location(), e))?;
        Ok(Some((size, digest)))
    }

    /// Deletes a blob found damaged while reading an entry, but only if its content does not
    /// match its own name: when the entry's manifest claims a wrong size, the blob (which other
    /// entries may share) is sound and stays.
    fn discard_blob(&self, blob: &BlobRef) {
        if blob.inline.is_some() {
            return;
        }
        match self.hash_blob(&blob.digest) {
            Ok(Some((_, found))) if found != blob.digest => {
                if let Err(e) = self.inner.backend.delete_blob(&blob.digest) {
                    log::warn!("could not remove damaged blob {}: {e}", blob.digest);
                }
            }
            Ok(_) => {}
            Err(e) => log::warn!("could not check blob {}: {e}", blob.digest),
        }
    }

    /// Stores `data` as a blob (inline in the manifest when small) and returns its reference.
    pub(crate) fn store_blob(&self, role: &str, data: &[u8]) -> Result<BlobRef> {
        let (digest, inline) = if data.len() <= INLINE_LIMIT {
            (Digest::of(data), Some(crate::manifest::encode_inline(data)))
        } else {
            (self.inner.backend.put_blob_hashing(data)?, None)
        };
        Ok(BlobRef {
            role: role.into(),
            digest,
            size: data.len() as u64,
            inline,
        })
    }

    /// Commits a manifest: the entry becomes visible whole. Returns false when `replace` is
    /// false and another writer committed first (theirs is kept).
    pub(crate) fn commit(&self, manifest: &Manifest, replace: bool) -> Result<bool> {
        let bytes = match &self.inner.options.signing_key {
            Some(k) => signing::sign_manifest(k, manifest),
            None => manifest.to_bytes(),
        };
        let ok = self
            .inner
            .backend
            .put_manifest(&manifest.key, &bytes, replace)?;
        if ok {
            self.inner
                .touched
                .lock()
                .unwrap()
                .insert(manifest.key, Instant::now());
        }
        Ok(ok)
    }

    /// Records a use of `key`, writing to the store at most once per granularity per process.
    pub(crate) fn note_use(&self, key: &Key) {
        let now = Instant::now();
        {
            let mut touched = self.inner.touched.lock().unwrap();
            match touched.get(key) {
                Some(t) if now.duration_since(*t) < self.inner.options.usage_granularity => return,
                _ => {
                    touched.insert(*key, now);
                }
            }
        }
        let writer = self.inner.usage_writer.get_or_init(|| {
            let (tx, rx) = mpsc::channel::<UsageMsg>();
            let backend = self.inner.backend.clone();
            let spawned = std::thread::Builder::new()
                .name("runcache-usage".into())
                .spawn(move || {
                    for msg in rx {
                        match msg {
                            UsageMsg::Touch(key, ms) => {
                                if let Err(e) = backend.touch(&key, ms) {
                                    log::debug!("could not record use of {key}: {e}");
                                }
                            }
                            UsageMsg::Flush(done) => {
                                let _ = done.send(());
                            }
                        }
                    }
                });
            if let Err(e) = spawned {
                log::warn!("runcache: cannot start the usage-recording thread: {e}");
            }
            Mutex::new(tx)
        });
        let _ = writer
            .lock()
            .unwrap()
            .send(UsageMsg::Touch(*key, unix_ms()));
    }

    /// Waits until every use recorded so far by this handle is written to the store (uses are
    /// recorded by a background thread so that hits never wait for a write).
    pub fn flush_usage(&self) {
        if let Some(writer) = self.inner.usage_writer.get() {
            let (tx, rx) = mpsc::channel();
            if writer.lock().unwrap().send(UsageMsg::Flush(tx)).is_ok() {
                let _ = rx.recv();
            }
        }
    }

    /// Deletes an entry's manifest and usage record. Its blobs are removed by the next gc (or
    /// [`Store::remove_unreferenced_blobs`]) once no other entry uses them. Returns whether the
    /// entry existed.
    pub fn delete(&self, key: &Key) -> Result<bool> {
        // A manifest that cannot even be read (too large, say) exists and is deleted.
        let existed = match self.inner.backend.get_manifest(key) {
            Ok(m) => m.is_some(),
            Err(e) if e.is_object_damage() => true,
            Err(e) => return Err(e),
        };
        self.inner.backend.delete_manifest(key)?;
        self.inner.backend.forget_usage(key)?;
        self.inner.touched.lock().unwrap().remove(key);
        Ok(existed)
    }

    /// The blob reference of artifact `name` of entry `key`; an unknown name is an error that
    /// lists the artifacts the entry has.
    fn artifact_blob(&self, key: &Key, name: &str) -> Result<BlobRef> {
        let m = self.manifest(key)?.ok_or_else(|| Error::NotFound {
            namespace: "-".into(),
            key: key.to_hex(),
            hint: String::new(),
        })?;
        let a = m.artifacts.iter().find(|a| a.name == name).ok_or_else(|| {
            let names: Vec<&str> = m.artifacts.iter().map(|a| a.name.as_str()).collect();
            Error::Invalid(format!(
                "entry {key} has no artifact `{name}`; it has: {}",
                names.join(", ")
            ))
        })?;
        Ok(BlobRef {
            role: format!("artifact:{name}"),
            digest: a.digest,
            size: a.size,
            inline: None,
        })
    }

    /// Reads artifact `name` of entry `key`, verified.
    pub fn read_artifact(&self, key: &Key, name: &str) -> Result<Vec<u8>> {
        self.read_blob(key, &self.artifact_blob(key, name)?)
    }

    /// Streams artifact `artifact` of the entry `manifest` into `out` in chunks (never whole in
    /// memory), hashing as it goes, and returns the bytes written. The check comes at the end:
    /// a damaged blob has then been partly written to `out`, is deleted from the store and is
    /// reported as [`Error::Corrupt`] (callers that must not emit unverified bytes read it with
    /// [`Store::read_artifact`] instead).
    pub fn copy_artifact(
        &self,
        manifest: &Manifest,
        artifact: &ArtifactRef,
        out: &mut dyn std::io::Write,
    ) -> Result<u64> {
        let blob = BlobRef {
            role: format!("artifact:{}", artifact.name),
            digest: artifact.digest,
            size: artifact.size,
            inline: None,
        };
        let corrupt = |message: String| Error::Corrupt {
            key: manifest.key.to_hex(),
            digest: blob.digest.to_hex(),
            message,
        };
        let Some(mut reader) = self.inner.backend.open_blob(&blob.digest)? else {
            return Err(corrupt("the blob is missing from the store".into()));
        };
        let mut hasher = StreamHasher::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(corrupt(format!("reading it failed: {e}"))),
            };
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n]).map_err(|e| {
                Error::Invalid(format!("cannot write artifact `{}`: {e}", artifact.name))
            })?;
        }
        if hasher.len() != blob.size || hasher.finish() != blob.digest {
            self.discard_blob(&blob);
            return Err(corrupt(format!(
                "{} bytes read do not match the recorded {} bytes and digest",
                hasher.len(),
                blob.size
            )));
        }
        Ok(hasher.len())
    }

    /// A verified local file holding artifact `name` of entry `key`: the store's own file when
    /// the backend keeps blobs as files, else a copy in its scratch directory.
    pub fn artifact_file(&self, key: &Key, name: &str) -> Result<std::path::PathBuf> {
        let blob = self.artifact_blob(key, name)?;
        let data = self.read_blob(key, &blob)?;
        if let Some(path) = self.inner.backend.blob_path(&blob.digest) {
            return Ok(path);
        }
        let dir = self.inner.backend.scratch_dir().join("artifacts-out");
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let path = dir.join(blob.digest.to_hex());
        std::fs::write(&path, data).map_err(|e| Error::io(&path, e))?;
        Ok(path)
    }

    /// Every entry in the store with its manifest and last use.
    pub fn entries(&self) -> Result<Vec<EntryInfo>> {
        let mut out = Vec::new();
        for key in self.inner.backend.list_manifests()? {
            out.extend(self.entry_info(key)?);
        }
        out.sort_by_key(|e| e.key);
        Ok(out)
    }

    /// One page of [`Store::entries`]: up to `limit` entries in key order, the first after
    /// `after`. Listing the next page from the last key of this one walks the whole store
    /// without ever holding it in memory; a page costs the same on a store of any size where
    /// the backend can list from a starting point (local directories).
    pub fn entries_page(&self, after: Option<&Key>, limit: usize) -> Result<Vec<EntryInfo>> {
        let mut out = Vec::new();
        for key in self.inner.backend.list_manifests_page(after, limit)? {
            out.extend(self.entry_info(key)?);
        }
        Ok(out)
    }

    /// The listing of one key: its manifest or its damage, and its last use (`None` if the
    /// entry vanished since it was listed).
    fn entry_info(&self, key: Key) -> Result<Option<EntryInfo>> {
        // A damaged usage stamp only loses recency.
        let used = self
            .inner
            .backend
            .last_used(&key)
            .ok()
            .flatten()
            .unwrap_or(0);
        let lookup = match self.lookup(&key) {
            // Listed as damage (so `ls` and `verify` show it), never parsed.
            Err(e @ Error::Signature { .. }) => Lookup::Damaged(e.to_string()),
            // One object that cannot be read is one damaged entry, not a failed listing.
            Err(e) if e.is_object_damage() => Lookup::Damaged(e.to_string()),
            other => other?,
        };
        Ok(match lookup {
            Lookup::Missing => None,
            Lookup::Found(m) => Some(EntryInfo {
                key,
                last_used_unix_ms: used.max(m.created_unix_ms),
                manifest: Some(Arc::unwrap_or_clone(m)),
                damage: None,
            }),
            Lookup::Damaged(msg) => Some(EntryInfo {
                key,
                manifest: None,
                damage: Some(msg),
                last_used_unix_ms: used,
            }),
        })
    }

    /// The unique entry whose key starts with `prefix` (at least 4 hex digits).
    pub fn resolve_prefix(&self, prefix: &str) -> Result<Key> {
        let prefix = prefix.trim().to_ascii_lowercase();
        if prefix.len() == 64 {
            return prefix.parse();
        }
        if prefix.len() < 4 || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::Invalid(format!(
                "`{prefix}` is not a key prefix: give at least 4 hexadecimal digits of a key (see `runcache ls`)"
            )));
        }
        let matches: Vec<Key> = self
            .inner
            .backend
            .list_manifests()?
            .into_iter()
            .filter(|k| k.to_hex().starts_with(&prefix))
            .collect();
        match matches.as_slice() {
            [k] => Ok(*k),
            [] => Err(Error::NotFound {
                namespace: "any namespace".into(),
                key: prefix,
                hint: " (no entry key starts with it; see `runcache ls`)".into(),
            }),
            many => Err(Error::Invalid(format!(
                "key prefix `{prefix}` is ambiguous: {} entries match; give more digits",
                many.len()
            ))),
        }
    }
}

/// Reads a blob expected to be `expected` bytes and hashes it: chunk by chunk, a second thread
/// hashes what is already read while this one reads on. Reads at most `expected + 1` bytes, so
/// a blob longer than its manifest says is detected without reading it whole.
fn read_and_hash(
    mut reader: Box<dyn Read + Send>,
    expected: u64,
) -> std::io::Result<(Vec<u8>, Digest)> {
    const CHUNK: usize = 4 << 20;
    if expected < 2 * CHUNK as u64 {
        let mut data = Vec::with_capacity(expected as usize + 1);
        reader.take(expected + 1).read_to_end(&mut data)?;
        let digest = Digest::of(&data);
        return Ok((data, digest));
    }
    // Zeroed by the allocator (fresh pages from the OS), so no extra pass over memory; plain
    // 4 KiB pages (see `mapped::advise_sequential` for why not huge pages).
    let mut data = vec![0u8; expected as usize];
    let mut filled = 0usize;
    let (tx, rx) = std::sync::mpsc::channel::<&[u8]>();
    let digest = std::thread::scope(|s| -> std::io::Result<Digest> {
        let hasher = s.spawn(move || {
            let mut h = StreamHasher::new();
            for chunk in rx {
                h.update_single_threaded(chunk);
            }
            h.finish()
        });
        let mut short = false;
        for chunk in data.chunks_mut(CHUNK) {
            let mut n = 0;
            while n < chunk.len() {
                match reader.read(&mut chunk[n..]) {
                    Ok(0) => break,
                    Ok(k) => n += k,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        drop(tx);
                        let _ = hasher.join();
                        return Err(e);
                    }
                }
            }
            filled += n;
            let _ = tx.send(&chunk[..n]);
            if n < chunk.len() {
                short = true;
                break;
            }
        }
        drop(tx);
        let digest = hasher.join().expect("hashing does not panic");
        // A blob longer than expected: read one byte more to notice it.
        if !short && reader.read(&mut [0u8; 1])? > 0 {
            filled += 1;
        }
        Ok(digest)
    })?;
    if filled != expected as usize {
        data.truncate(filled.min(expected as usize));
        if filled > expected as usize {
            data.push(0); // length now says "longer than the manifest"
        }
    }
    Ok((data, digest))
}

// --- Signed entries (see crate::signing) ------------------------------------------------------

impl Store {
    /// With a signing key, refuses manifest bytes whose signature is missing or wrong: a hard
    /// error, checked before anything in the entry is parsed or decoded.
    pub(super) fn check_signature(&self, key: &Key, bytes: &[u8]) -> Result<()> {
        let Some(signing_key) = &self.inner.options.signing_key else {
            return Ok(());
        };
        signing_key
            .verify(bytes)
            .map_err(|reason| Error::Signature {
                key: key.to_hex(),
                location: self.inner.backend.manifest_location(key),
                reason,
            })
    }
}

/// Fills `options.signing_key` from `RUNCACHE_SIGNING_KEY` when it is unset.
fn signing_key_from_env(options: &mut StoreOptions) -> Result<()> {
    if options.signing_key.is_none() {
        options.signing_key = SigningKey::from_env()?;
    }
    Ok(())
}

/// Milliseconds since the Unix epoch on this machine's clock (for display and usage only).
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
