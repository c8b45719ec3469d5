//! Tiered stores: an ordered list of stores read nearest first, written through to the shared
//! one. Typically `[./.runcache, s3://team/cache]`: hits come from the local directory, a hit
//! found only in the team store is copied into the local one, and every write also reaches the
//! team store, which holds the leases (the shared truth).
//!
//! Semantics (see `docs/signing-and-tiers.md`):
//! - Tiers are ordered nearest first. The *shared* tier is the farthest writable one.
//! - A tier may be read-only (`?readonly=true` on its location, or [`Tier::read_only`]): nothing
//!   is ever written to it — no blobs, manifests, fills, usage stamps or leases.
//! - Manifest reads return the nearest tier's copy; farther tiers are asked only when the nearer
//!   ones miss (or hold an entry that is not completed), so an unreachable remote does not stop
//!   a local hit from being served. A manifest found in a farther tier is copied into the nearer
//!   writable tiers (fill, best effort); its blobs are copied as they are read (verified against
//!   their digest first).
//! - Writes go to every writable tier, the shared tier first: its result decides (first writer
//!   wins there) and its errors are errors; a nearer tier that fails to take a copy is logged.
//! - Leases and change notifications are the shared tier's.
//! - Records (small named documents that processes coordinate through, such as sweep records)
//!   live on the tier that holds the leases, the shared tier, and only there: they are written,
//!   read, listed and deleted there, never copied into nearer tiers (a stale nearer copy would be
//!   worse than a round trip). With no writable tier they are read from the farthest tier and
//!   every write is refused.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::{
    check_record_kind, check_record_name, open_backend, Backend, BackendOptions, BlobInfo,
    BlobReader, PollWatch, Stray, Watch,
};
use crate::digest::{Digest, StreamHasher};
use crate::error::{Error, Result};
use crate::key::Key;
use crate::lease::{LeaseBackend, LeaseRecord, LeaseState, MemoryLeases};

/// One tier of a [`TieredBackend`].
#[derive(Clone, Debug)]
pub struct Tier {
    /// The tier's store.
    pub backend: Arc<dyn Backend>,
    /// Never write to this tier.
    pub read_only: bool,
}

impl Tier {
    /// A tier that is read and written.
    pub fn writable(backend: Arc<dyn Backend>) -> Tier {
        Tier {
            backend,
            read_only: false,
        }
    }

    /// A tier that is only read.
    pub fn read_only(backend: Arc<dyn Backend>) -> Tier {
        Tier {
            backend,
            read_only: true,
        }
    }
}

/// A [`Backend`] over an ordered list of tiers, nearest first. See the module documentation.
#[derive(Debug)]
pub struct TieredBackend {
    tiers: Vec<Tier>,
    /// Index of the farthest writable tier, if any tier is writable.
    shared: Option<usize>,
    leases: Arc<dyn LeaseBackend>,
}

/// True if the manifest's top-level status is `completed` (a parse of that one member: a key
/// document may itself contain a "status" string, so no byte search is safe).
fn is_completed(manifest: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct StatusOnly {
        status: crate::manifest::Status,
    }
    serde_json::from_slice::<StatusOnly>(manifest)
        .is_ok_and(|m| m.status == crate::manifest::Status::Completed)
}

impl TieredBackend {
    /// Tiers nearest first. Leases are the farthest writable tier's; with no writable tier,
    /// leases are private to this process and every write is refused.
    pub fn new(tiers: Vec<Tier>) -> Result<TieredBackend> {
        if tiers.is_empty() {
            return Err(Error::Invalid(
                "a tiered store needs at least one location".into(),
            ));
        }
        let shared = tiers.iter().rposition(|t| !t.read_only);
        let leases: Arc<dyn LeaseBackend> = match shared {
            Some(i) => tiers[i].backend.leases(),
            None => Arc::new(MemoryLeases::new()),
        };
        Ok(TieredBackend {
            tiers,
            shared,
            leases,
        })
    }

    /// The tiers, nearest first.
    pub fn tiers(&self) -> &[Tier] {
        &self.tiers
    }

    /// Writable tiers in write order: the shared tier first, then nearer ones, farthest first.
    fn write_order(&self) -> Vec<&Tier> {
        self.tiers.iter().rev().filter(|t| !t.read_only).collect()
    }

    /// Runs `f` on every writable tier (in write order); the first error, after trying all.
    fn on_writable(&self, f: impl Fn(&dyn Backend) -> Result<()>) -> Result<()> {
        let mut first_err = None;
        for t in self.write_order() {
            if let Err(e) = f(t.backend.as_ref()) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// What the nearest tier that has an answer says; an error only when no tier answers.
    fn nearest<T>(&self, f: impl Fn(&dyn Backend) -> Result<Option<T>>) -> Result<Option<T>> {
        let mut first_err = None;
        for t in &self.tiers {
            match f(t.backend.as_ref()) {
                Ok(Some(v)) => return Ok(Some(v)),
                Ok(None) => {}
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(None), Err)
    }

    fn read_only_error(&self) -> Error {
        Error::ReadOnly {
            location: self.location(),
            reason: "every tier is read-only".into(),
        }
    }

    /// Writable tiers nearer than tier `found`.
    fn nearer_writable(&self, found: usize) -> Vec<Arc<dyn Backend>> {
        self.tiers[..found]
            .iter()
            .filter(|t| !t.read_only)
            .map(|t| t.backend.clone())
            .collect()
    }

    /// The tier holding the records: the shared tier (the one holding the leases), or with no
    /// writable tier the farthest one (read only).
    fn records_tier(&self) -> &Tier {
        &self.tiers[self.shared.unwrap_or(self.tiers.len() - 1)]
    }

    /// The records tier if it may be written, else the read-only error.
    fn writable_records_tier(&self) -> Result<&Tier> {
        match self.shared {
            Some(i) => Ok(&self.tiers[i]),
            None => Err(self.read_only_error()),
        }
    }

    /// Copies a manifest found in tier `found` into the nearer writable tiers (best effort).
    fn fill_manifest(&self, found: usize, key: &Key, bytes: &[u8]) {
        for b in self.nearer_writable(found) {
            if let Err(e) = b.put_manifest(key, bytes, true) {
                log::warn!(
                    "runcache: could not copy entry {key} into the store tier {}: {e}",
                    b.location()
                );
            }
        }
    }
}

/// Stores the file at `path` in every backend of `targets` (in order), the last one receiving
/// the file itself (it may move it), the others a hard link or copy. Errors of the first target
/// are returned when `first_is_fatal`; others are logged.
fn put_file_in(
    targets: &[&Arc<dyn Backend>],
    digest: &Digest,
    path: &Path,
    first_is_fatal: bool,
) -> Result<()> {
    for (n, b) in targets.iter().enumerate() {
        let result = if n + 1 == targets.len() {
            b.put_blob_file(digest, path)
        } else {
            let copy = sibling(path, n);
            let linked = fs::hard_link(path, &copy).or_else(|_| fs::copy(path, &copy).map(|_| ()));
            let r = match linked {
                Ok(()) => b.put_blob_file(digest, &copy),
                Err(e) => Err(Error::io(&copy, e)),
            };
            let _ = fs::remove_file(&copy);
            r
        };
        if let Err(e) = result {
            if n == 0 && first_is_fatal {
                return Err(e);
            }
            log::warn!(
                "runcache: could not copy blob {digest} into the store tier {}: {e}",
                b.location()
            );
        }
    }
    Ok(())
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn sibling(path: &Path, n: usize) -> PathBuf {
    let name = path
        .file_name()
        .map_or_else(|| "blob".into(), |s| s.to_string_lossy().into_owned());
    path.with_file_name(format!(
        ".{name}.tier{n}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ))
}

impl Backend for TieredBackend {
    fn location(&self) -> String {
        let parts: Vec<String> = self
            .tiers
            .iter()
            .map(|t| {
                if t.read_only {
                    format!("{} (read-only)", t.backend.location())
                } else {
                    t.backend.location()
                }
            })
            .collect();
        format!("tiered[{}]", parts.join(", "))
    }

    fn has_blob(&self, digest: &Digest) -> Result<bool> {
        let found = self.nearest(|b| Ok(b.has_blob(digest)?.then_some(())))?;
        Ok(found.is_some())
    }

    fn put_blob(&self, digest: &Digest, data: &[u8]) -> Result<()> {
        let order = self.write_order();
        let Some((shared, nearer)) = order.split_first() else {
            return Err(self.read_only_error());
        };
        shared.backend.put_blob(digest, data)?;
        for t in nearer {
            if let Err(e) = t.backend.put_blob(digest, data) {
                log::warn!(
                    "runcache: could not copy blob {digest} into the store tier {}: {e}",
                    t.backend.location()
                );
            }
        }
        Ok(())
    }

    fn put_blob_file(&self, digest: &Digest, path: &Path) -> Result<()> {
        let order = self.write_order();
        if order.is_empty() {
            return Err(self.read_only_error());
        }
        let targets: Vec<&Arc<dyn Backend>> = order.iter().map(|t| &t.backend).collect();
        put_file_in(&targets, digest, path, true)
    }

    fn open_blob(&self, digest: &Digest) -> Result<Option<BlobReader>> {
        let mut first_err = None;
        for (i, t) in self.tiers.iter().enumerate() {
            match t.backend.open_blob(digest) {
                Ok(Some(reader)) => {
                    let targets = self.nearer_writable(i);
                    if targets.is_empty() {
                        return Ok(Some(reader));
                    }
                    return Ok(Some(Box::new(FillReader::new(reader, *digest, targets))));
                }
                Ok(None) => {}
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(None), Err)
    }

    fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        self.nearest(|b| b.blob_size(digest))
    }

    fn blob_path(&self, digest: &Digest) -> Option<PathBuf> {
        // The nearest tier holding the blob decides: its file, or no file (read it instead).
        for t in &self.tiers {
            match t.backend.blob_path(digest) {
                Some(p) if p.is_file() => return Some(p),
                Some(_) => {}
                None => {
                    if matches!(t.backend.has_blob(digest), Ok(true)) {
                        return None;
                    }
                }
            }
        }
        None
    }

    fn delete_blob(&self, digest: &Digest) -> Result<()> {
        self.on_writable(|b| b.delete_blob(digest))
    }

    fn list_blobs(&self) -> Result<Vec<BlobInfo>> {
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for t in &self.tiers {
            for b in t.backend.list_blobs()? {
                if seen.insert(b.digest) {
                    out.push(b);
                }
            }
        }
        Ok(out)
    }

    fn put_manifest(&self, key: &Key, bytes: &[u8], replace: bool) -> Result<bool> {
        let order = self.write_order();
        let Some((shared, nearer)) = order.split_first() else {
            return Err(self.read_only_error());
        };
        // The shared truth commits first and decides; nearer tiers then mirror it.
        if !shared.backend.put_manifest(key, bytes, replace)? {
            return Ok(false);
        }
        for t in nearer {
            if let Err(e) = t.backend.put_manifest(key, bytes, true) {
                log::warn!(
                    "runcache: could not copy entry {key} into the store tier {}: {e}",
                    t.backend.location()
                );
            }
        }
        Ok(true)
    }

    fn get_manifest(&self, key: &Key) -> Result<Option<Vec<u8>>> {
        let mut first_err = None;
        let mut found = None;
        for (i, t) in self.tiers.iter().enumerate() {
            match t.backend.get_manifest(key) {
                Ok(Some(bytes)) => {
                    found = Some((i, bytes));
                    break;
                }
                Ok(None) => {}
                Err(e) => {
                    log::debug!(
                        "runcache: store tier {} could not be read: {e}",
                        t.backend.location()
                    );
                    first_err.get_or_insert(e);
                }
            }
        }
        let Some((mut at, mut bytes)) = found else {
            // Not found anywhere we could look: a miss only if every tier answered.
            return first_err.map_or(Ok(None), Err);
        };
        if !is_completed(&bytes) {
            // A failed or interrupted entry here may have been completed elsewhere since (a
            // retry on another machine): prefer a farther completed copy. Errors don't matter.
            for (j, t) in self.tiers.iter().enumerate().skip(at + 1) {
                if let Ok(Some(b)) = t.backend.get_manifest(key) {
                    if is_completed(&b) {
                        (at, bytes) = (j, b);
                        break;
                    }
                }
            }
        }
        if at > 0 {
            self.fill_manifest(at, key, &bytes);
        }
        Ok(Some(bytes))
    }

    fn get_manifests(&self, keys: &[Key]) -> Result<Vec<Option<Vec<u8>>>> {
        // As `get_manifest` for every key, with one batched read per tier: each tier is asked
        // for the keys no nearer tier holds a completed entry of.
        let mut best: Vec<Option<(usize, Vec<u8>)>> = keys.iter().map(|_| None).collect();
        let mut first_err = None;
        for (i, t) in self.tiers.iter().enumerate() {
            let ask: Vec<usize> = (0..keys.len())
                .filter(|&k| best[k].as_ref().is_none_or(|(_, b)| !is_completed(b)))
                .collect();
            if ask.is_empty() {
                break;
            }
            let wanted: Vec<Key> = ask.iter().map(|&k| keys[k]).collect();
            match t.backend.get_manifests(&wanted) {
                Ok(got) => {
                    for (&k, bytes) in ask.iter().zip(got) {
                        let Some(bytes) = bytes else { continue };
                        // A nearer failed or interrupted entry yields to a farther completed one.
                        if best[k].is_none() || is_completed(&bytes) {
                            best[k] = Some((i, bytes));
                        }
                    }
                }
                Err(e) => {
                    log::debug!(
                        "runcache: store tier {} could not be read: {e}",
                        t.backend.location()
                    );
                    first_err.get_or_insert(e);
                }
            }
        }
        if best.iter().any(Option::is_none) {
            // A key found nowhere is a miss only if every tier answered.
            if let Some(e) = first_err {
                return Err(e);
            }
        }
        Ok(best
            .into_iter()
            .zip(keys)
            .map(|(found, key)| {
                found.map(|(at, bytes)| {
                    if at > 0 {
                        self.fill_manifest(at, key, &bytes);
                    }
                    bytes
                })
            })
            .collect())
    }

    fn delete_manifest(&self, key: &Key) -> Result<()> {
        if self.write_order().is_empty() {
            return Err(self.read_only_error());
        }
        self.on_writable(|b| b.delete_manifest(key))
    }

    fn list_manifests(&self) -> Result<Vec<Key>> {
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for t in &self.tiers {
            for k in t.backend.list_manifests()? {
                if seen.insert(k) {
                    out.push(k);
                }
            }
        }
        Ok(out)
    }

    fn manifest_location(&self, key: &Key) -> String {
        // Name the copy a read uses: the nearest tier holding the entry.
        for t in &self.tiers {
            if let Ok(Some(_)) = t.backend.get_manifest(key) {
                return t.backend.manifest_location(key);
            }
        }
        self.tiers[0].backend.manifest_location(key)
    }

    fn touch(&self, key: &Key, unix_ms: u64) -> Result<()> {
        self.on_writable(|b| b.touch(key, unix_ms))
    }

    fn last_used(&self, key: &Key) -> Result<Option<u64>> {
        let mut first_err = None;
        let mut any_ok = false;
        let mut latest = None;
        for t in &self.tiers {
            match t.backend.last_used(key) {
                Ok(v) => {
                    any_ok = true;
                    latest = latest.max(v);
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            Some(e) if !any_ok => Err(e),
            _ => Ok(latest),
        }
    }

    fn forget_usage(&self, key: &Key) -> Result<()> {
        self.on_writable(|b| b.forget_usage(key))
    }

    fn leases(&self) -> Arc<dyn LeaseBackend> {
        self.leases.clone()
    }

    fn put_record(&self, kind: &str, name: &str, bytes: &[u8]) -> Result<()> {
        check_record_name(kind, name)?;
        self.writable_records_tier()?
            .backend
            .put_record(kind, name, bytes)
    }

    fn get_record(&self, kind: &str, name: &str) -> Result<Option<Vec<u8>>> {
        check_record_name(kind, name)?;
        self.records_tier().backend.get_record(kind, name)
    }

    fn list_records(&self, kind: &str) -> Result<Vec<String>> {
        check_record_kind(kind)?;
        self.records_tier().backend.list_records(kind)
    }

    fn delete_record(&self, kind: &str, name: &str) -> Result<bool> {
        check_record_name(kind, name)?;
        self.writable_records_tier()?
            .backend
            .delete_record(kind, name)
    }

    fn watch(&self, key: &Key) -> Result<Box<dyn Watch>> {
        match self.shared {
            Some(i) => self.tiers[i].backend.watch(key),
            None => Ok(Box::new(PollWatch::default())),
        }
    }

    fn strays(&self) -> Result<Vec<Stray>> {
        // Each tier's own, its index prefixed to the id so that removal goes back to it.
        let mut out = Vec::new();
        for (i, t) in self.tiers.iter().enumerate() {
            out.extend(t.backend.strays()?.into_iter().map(|s| Stray {
                id: format!("{i}:{}", s.id),
                ..s
            }));
        }
        Ok(out)
    }

    fn remove_stray(&self, stray: &Stray) -> Result<()> {
        let (i, id) = stray
            .id
            .split_once(':')
            .and_then(|(i, id)| Some((i.parse::<usize>().ok()?, id)))
            .filter(|(i, _)| *i < self.tiers.len())
            .ok_or_else(|| Error::Invalid(format!("bad stray id `{}`", stray.id)))?;
        let tier = &self.tiers[i];
        if tier.read_only {
            return Err(Error::ReadOnly {
                location: tier.backend.location(),
                reason: format!("cannot remove {}", stray.location),
            });
        }
        tier.backend.remove_stray(&Stray {
            id: id.to_string(),
            ..stray.clone()
        })
    }

    fn collect_temp_files(&self, grace: std::time::Duration) -> Result<(u64, u64)> {
        let (mut n, mut bytes) = (0, 0);
        for t in self.tiers.iter().filter(|t| !t.read_only) {
            let (a, b) = t.backend.collect_temp_files(grace)?;
            n += a;
            bytes += b;
        }
        Ok((n, bytes))
    }

    fn scratch_dir(&self) -> PathBuf {
        // The nearest writable tier takes the file itself (a rename when it is local).
        self.tiers
            .iter()
            .find(|t| !t.read_only)
            .unwrap_or(&self.tiers[0])
            .backend
            .scratch_dir()
    }
}

/// Reads a blob from a far tier while copying it into a temp file; at the end of the stream,
/// if the content matches its digest, stores the copy in the nearer writable tiers. Fill
/// failures are logged and never affect the read.
struct FillReader {
    inner: BlobReader,
    digest: Digest,
    targets: Vec<Arc<dyn Backend>>,
    hasher: StreamHasher,
    tmp: Option<(fs::File, PathBuf)>,
}

impl FillReader {
    fn new(inner: BlobReader, digest: Digest, targets: Vec<Arc<dyn Backend>>) -> FillReader {
        let dir = targets
            .first()
            .expect("at least one target")
            .scratch_dir()
            .join("fill");
        let path = dir.join(format!(
            "{}-{}-{}",
            digest.to_hex(),
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let tmp = fs::create_dir_all(&dir)
            .and_then(|_| {
                fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&path)
            })
            .map_err(|e| log::debug!("runcache: no fill of blob {digest}: {e}"))
            .ok()
            .map(|f| (f, path));
        FillReader {
            inner,
            digest,
            targets,
            hasher: StreamHasher::new(),
            tmp,
        }
    }

    fn finish(&mut self) {
        let Some((file, path)) = self.tmp.take() else {
            return;
        };
        drop(file);
        if self.hasher.finish() == self.digest {
            // Nearest target last: it receives the file itself.
            let targets: Vec<&Arc<dyn Backend>> = self.targets.iter().rev().collect();
            let _ = put_file_in(&targets, &self.digest, &path, false);
        } else {
            log::debug!(
                "runcache: blob {} read from a far tier does not match its digest; not copied",
                self.digest
            );
        }
        let _ = fs::remove_file(&path);
    }
}

impl Read for FillReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 {
            self.finish();
            return Ok(0);
        }
        if let Some((file, path)) = &mut self.tmp {
            self.hasher.update(&buf[..n]);
            if let Err(e) = file.write_all(&buf[..n]) {
                log::debug!("runcache: no fill of blob {}: {e}", self.digest);
                let _ = fs::remove_file(&*path);
                self.tmp = None;
            }
        }
        Ok(n)
    }
}

impl Drop for FillReader {
    fn drop(&mut self) {
        if let Some((_, path)) = self.tmp.take() {
            let _ = fs::remove_file(path);
        }
    }
}

/// A tier that could not be opened: every operation fails with the reason, so hits in nearer
/// tiers are still served while anything that needs this tier reports why it cannot.
#[derive(Debug)]
struct Unreachable {
    location: String,
    message: String,
}

impl Unreachable {
    fn error(&self) -> Error {
        Error::BadStore {
            location: self.location.clone(),
            message: format!(
                "the store tier was unreachable when the store was opened ({}); open the store again to retry",
                self.message
            ),
        }
    }
}

impl Backend for Unreachable {
    fn location(&self) -> String {
        self.location.clone()
    }
    fn has_blob(&self, _: &Digest) -> Result<bool> {
        Err(self.error())
    }
    fn put_blob(&self, _: &Digest, _: &[u8]) -> Result<()> {
        Err(self.error())
    }
    fn put_blob_file(&self, _: &Digest, _: &Path) -> Result<()> {
        Err(self.error())
    }
    fn open_blob(&self, _: &Digest) -> Result<Option<BlobReader>> {
        Err(self.error())
    }
    fn blob_size(&self, _: &Digest) -> Result<Option<u64>> {
        Err(self.error())
    }
    fn delete_blob(&self, _: &Digest) -> Result<()> {
        Err(self.error())
    }
    fn list_blobs(&self) -> Result<Vec<BlobInfo>> {
        Err(self.error())
    }
    fn put_manifest(&self, _: &Key, _: &[u8], _: bool) -> Result<bool> {
        Err(self.error())
    }
    fn get_manifest(&self, _: &Key) -> Result<Option<Vec<u8>>> {
        Err(self.error())
    }
    fn delete_manifest(&self, _: &Key) -> Result<()> {
        Err(self.error())
    }
    fn list_manifests(&self) -> Result<Vec<Key>> {
        Err(self.error())
    }
    fn manifest_location(&self, key: &Key) -> String {
        format!("{} (manifest {key})", self.location)
    }
    fn touch(&self, _: &Key, _: u64) -> Result<()> {
        Err(self.error())
    }
    fn last_used(&self, _: &Key) -> Result<Option<u64>> {
        Err(self.error())
    }
    fn forget_usage(&self, _: &Key) -> Result<()> {
        Err(self.error())
    }
    fn put_record(&self, _: &str, _: &str, _: &[u8]) -> Result<()> {
        Err(self.error())
    }
    fn get_record(&self, _: &str, _: &str) -> Result<Option<Vec<u8>>> {
        Err(self.error())
    }
    fn list_records(&self, _: &str) -> Result<Vec<String>> {
        Err(self.error())
    }
    fn delete_record(&self, _: &str, _: &str) -> Result<bool> {
        Err(self.error())
    }
    fn leases(&self) -> Arc<dyn LeaseBackend> {
        Arc::new(UnreachableLeases(
            self.location.clone(),
            self.message.clone(),
        ))
    }
}

#[derive(Debug)]
struct UnreachableLeases(String, String);

impl UnreachableLeases {
    fn error(&self) -> Error {
        Unreachable {
            location: self.0.clone(),
            message: self.1.clone(),
        }
        .error()
    }
}

impl LeaseBackend for UnreachableLeases {
    fn read(&self, _: &Key) -> Result<LeaseState> {
        Err(self.error())
    }
    fn try_create(&self, _: &Key, _: &LeaseRecord) -> Result<bool> {
        Err(self.error())
    }
    fn beat(&self, _: &Key, _: u64, _: &str, _: u64) -> Result<bool> {
        Err(self.error())
    }
    fn release(&self, _: &Key, _: u64, _: &str) -> Result<bool> {
        Err(self.error())
    }
    fn list(&self) -> Result<Vec<(Key, LeaseState)>> {
        Err(self.error())
    }
    fn clean(&self, _: &Key) -> Result<()> {
        Err(self.error())
    }
}

/// Splits the `readonly` (or `read_only`) option off a location's query string: returns the
/// location without it and whether the tier is read-only.
pub fn split_read_only(location: &str) -> Result<(String, bool)> {
    let Some((target, query)) = location.split_once('?') else {
        return Ok((location.to_string(), false));
    };
    let mut read_only = false;
    let mut rest = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, "true"));
        if k == "readonly" || k == "read_only" {
            read_only = match v {
                "1" | "true" | "yes" | "on" => true,
                "0" | "false" | "no" | "off" => false,
                _ => {
                    return Err(Error::BadStore {
                        location: location.into(),
                        message: format!("option `{k}` must be true or false, not `{v}`"),
                    })
                }
            };
        } else {
            rest.push(pair);
        }
    }
    let loc = if rest.is_empty() {
        target.to_string()
    } else {
        format!("{target}?{}", rest.join("&"))
    };
    Ok((loc, read_only))
}

/// Opens a tiered backend over `locations`, nearest first; each may carry `?readonly=true`.
/// A tier other than the first that cannot be opened (e.g. a remote that is unreachable) is
/// kept as an unreachable tier, with a warning: hits in nearer tiers are still served, and
/// whatever needs it fails with the reason. The first tier must open.
pub fn open_tiered(locations: &[&str], base: &BackendOptions) -> Result<TieredBackend> {
    let mut tiers = Vec::with_capacity(locations.len());
    for (i, location) in locations.iter().enumerate() {
        let (loc, read_only) = split_read_only(location)?;
        let backend = match open_backend(&loc, base) {
            Ok(b) => b,
            Err(e) if i > 0 => {
                log::warn!(
                    "runcache: store tier {loc} is unreachable ({e}); hits in nearer tiers are still served"
                );
                Arc::new(Unreachable {
                    location: loc.clone(),
                    message: e.to_string(),
                })
            }
            Err(e) => return Err(e),
        };
        tiers.push(Tier { backend, read_only });
    }
    TieredBackend::new(tiers)
}

/// Wraps a single backend as a read-only store.
pub fn read_only(backend: Arc<dyn Backend>) -> Result<Arc<dyn Backend>> {
    Ok(Arc::new(TieredBackend::new(vec![Tier::read_only(
        backend,
    )])?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_only_option_is_split_off() {
        assert_eq!(
            split_read_only("/a/b?readonly=true").unwrap(),
            ("/a/b".into(), true)
        );
        assert_eq!(
            split_read_only("s3://b/p?endpoint=http://h:1&readonly&region=x").unwrap(),
            ("s3://b/p?endpoint=http://h:1&region=x".into(), true)
        );
        assert_eq!(
            split_read_only("/a?sync=true&read_only=false").unwrap(),
            ("/a?sync=true".into(), false)
        );
        assert_eq!(split_read_only("/a").unwrap(), ("/a".into(), false));
        assert!(split_read_only("/a?readonly=maybe").is_err());
    }

    #[test]
    fn completed_is_recognised_at_top_level_only() {
        assert!(is_completed(
            br#"{"key_doc":{"status":"failed"},"status":"completed"}"#
        ));
        assert!(!is_completed(
            br#"{"key_doc":{"status":"completed"},"status":"failed"}"#
        ));
        assert!(!is_completed(br#"{"status":"interrupted"}"#));
        assert!(!is_completed(b"not json"));
    }
}
