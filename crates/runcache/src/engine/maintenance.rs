//! Governing a store: usage (`du`), eviction (`gc`) and integrity checks (`verify`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use serde::Serialize;

use super::store::{unix_ms, EntryInfo, Store};
use crate::digest::Digest;
use crate::error::Result;
use crate::key::Key;
use crate::lease::Acquire;
use crate::store::Stray;

/// Temporary files (and artifact scratch directories) of writers on this host that are gone
/// are removed by `gc` and `verify --repair` once their newest write is older than this; those
/// of other hosts after [`crate::store::local::FOREIGN_GRACE_FACTOR`] times as long.
pub const TEMP_GRACE: Duration = Duration::from_secs(3600);

/// Called with (done, total, message) as long operations progress.
pub type Progress<'a> = &'a (dyn Fn(u64, u64, &str) + Sync);

/// Space used by a store.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Usage {
    /// Number of entries.
    pub entries: u64,
    /// Number of blobs stored outside manifests.
    pub blobs: u64,
    /// Bytes in those blobs.
    pub blob_bytes: u64,
    /// Per namespace: entries and the bytes they reference (shared blobs counted in each).
    pub namespaces: BTreeMap<String, NamespaceUsage>,
    /// Objects in the store that are not a readable part of it (`verify --repair` removes them).
    pub damaged_objects: Vec<Stray>,
    /// Entries whose manifest cannot be read (`verify --repair` removes them).
    pub damaged_entries: Vec<VerifyProblem>,
}

/// One namespace's share of a store.
#[derive(Clone, Debug, Default, Serialize)]
pub struct NamespaceUsage {
    /// Entries in the namespace.
    pub entries: u64,
    /// Bytes referenced by them.
    pub bytes: u64,
    /// Of which failed entries.
    pub failed: u64,
}

/// What `gc` should remove.
#[derive(Clone, Debug)]
pub struct GcOptions {
    /// Evict least-recently-used entries until blobs and manifests take at most this many bytes.
    pub max_size: Option<u64>,
    /// Evict entries not used for longer than this.
    pub older_than: Option<Duration>,
    /// Report what would be removed without removing anything.
    pub dry_run: bool,
    /// Never evict an entry used more recently than this (it may be being read).
    pub min_idle: Duration,
    /// Unreferenced blobs younger than this are kept (a writer may be about to reference them).
    pub blob_grace: Duration,
    /// Temporary files of killed writers older than this are removed ([`TEMP_GRACE`]).
    pub temp_grace: Duration,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            max_size: None,
            older_than: None,
            dry_run: false,
            min_idle: Duration::from_secs(60),
            blob_grace: Duration::from_secs(600),
            temp_grace: TEMP_GRACE,
        }
    }
}

/// What `gc` did (or would do, in a dry run).
#[derive(Clone, Debug, Default, Serialize)]
pub struct GcReport {
    /// Entries removed: (key, namespace, bytes referenced).
    pub removed: Vec<(Key, String, u64)>,
    /// Entries kept because a live lease or recent use protects them.
    pub protected: u64,
    /// Unreferenced blobs removed.
    pub blobs_removed: u64,
    /// Bytes freed (blobs actually deleted).
    pub bytes_freed: u64,
    /// Blob bytes remaining.
    pub bytes_remaining: u64,
    /// True if nothing was changed.
    pub dry_run: bool,
    /// Temporary files of killed writers removed (not counted in a dry run).
    pub temp_files_removed: u64,
    /// Bytes they took.
    pub temp_bytes_freed: u64,
    /// Entries that could not be evicted, with why (a damaged lease, say); gc went on.
    pub errors: Vec<(Key, String)>,
    /// Objects in the store that are not a readable part of it (`verify --repair` removes them).
    pub damaged_objects: Vec<Stray>,
    /// Entries whose manifest cannot be read (kept by gc unless evicted by age or size).
    pub damaged_entries: Vec<VerifyProblem>,
}

/// One problem found by `verify`.
#[derive(Clone, Debug, Serialize)]
pub struct VerifyProblem {
    /// The damaged entry.
    pub key: Key,
    /// Its namespace, if the manifest could be read.
    pub namespace: Option<String>,
    /// What is wrong.
    pub problem: String,
}

/// What `verify` found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct VerifyReport {
    /// Entries checked.
    pub entries: u64,
    /// Blobs checked (each once, however many entries share it).
    pub blobs: u64,
    /// Bytes read and hashed.
    pub bytes: u64,
    /// Damaged entries.
    pub problems: Vec<VerifyProblem>,
    /// Damaged entries removed (with `repair`).
    pub removed: u64,
    /// Objects in the store that are not a readable part of it (stray files, directories where
    /// files belong, unparsable lease files).
    pub damaged_objects: Vec<Stray>,
    /// Of those, removed (with `repair`).
    pub damaged_objects_removed: u64,
    /// Temporary files of killed writers removed (with `repair`).
    pub temp_files_removed: u64,
}

impl VerifyReport {
    /// True if anything damaged was found.
    pub fn found_damage(&self) -> bool {
        !self.problems.is_empty() || !self.damaged_objects.is_empty()
    }
}

impl EntryInfo {
    /// The entry as a damaged item, if its manifest cannot be read.
    pub fn damaged(&self) -> Option<VerifyProblem> {
        self.manifest.is_none().then(|| VerifyProblem {
            key: self.key,
            namespace: None,
            problem: self.damage.clone().unwrap_or_default(),
        })
    }
}

impl Store {
    /// Counts entries and bytes.
    pub fn usage(&self) -> Result<Usage> {
        let mut u = Usage::default();
        for b in self.backend().list_blobs()? {
            u.blobs += 1;
            u.blob_bytes = u.blob_bytes.saturating_add(b.size);
        }
        u.damaged_objects = self.backend().strays()?;
        for e in self.entries()? {
            u.entries += 1;
            if let Some(d) = e.damaged() {
                u.damaged_entries.push(d);
            }
            let ns = e
                .manifest
                .as_ref()
                .map_or("(damaged)".to_string(), |m| m.namespace.clone());
            let n = u.namespaces.entry(ns).or_default();
            n.entries += 1;
            if let Some(m) = &e.manifest {
                n.bytes = n.bytes.saturating_add(m.total_size());
                if m.status == crate::manifest::Status::Failed {
                    n.failed += 1;
                }
            }
        }
        Ok(u)
    }

    /// Evicts entries by age and/or total size, least recently used first, then removes blobs
    /// no entry references. Each entry is removed under its lease, so an entry being computed
    /// is never touched; entries used within `min_idle` are kept. Safe to interrupt at any
    /// point: each step leaves a consistent store.
    pub fn gc(&self, options: &GcOptions, progress: Progress<'_>) -> Result<GcReport> {
        self.flush_usage();
        let now = unix_ms();
        let mut entries: Vec<EntryInfo> = self.entries()?;
        entries.sort_by_key(|e| e.last_used_unix_ms);
        let blobs = self.backend().list_blobs()?;
        let sizes: HashMap<Digest, u64> = blobs.iter().map(|b| (b.digest, b.size)).collect();
        let mut refs: HashMap<Digest, u32> = HashMap::new();
        for e in &entries {
            if let Some(m) = &e.manifest {
                for d in m.external_digests().collect::<HashSet<_>>() {
                    *refs.entry(*d).or_default() += 1;
                }
            }
        }
        // Manifests (with their inline blobs) count too: they are what small results cost.
        let manifest_bytes =
            |e: &EntryInfo| e.manifest.as_ref().map_or(0, |m| m.to_bytes().len() as u64);
        let mut live_bytes: u64 = refs
            .keys()
            .filter_map(|d| sizes.get(d).copied())
            .chain(entries.iter().map(manifest_bytes))
            .fold(0, u64::saturating_add);
        let mut report = GcReport {
            dry_run: options.dry_run,
            damaged_objects: self.backend().strays()?,
            damaged_entries: entries.iter().filter_map(EntryInfo::damaged).collect(),
            ..Default::default()
        };
        let total = entries.len() as u64;
        for (i, e) in entries.iter().enumerate() {
            progress(i as u64, total, "checking entries");
            let idle_ms = now.saturating_sub(e.last_used_unix_ms);
            let too_old = options
                .older_than
                .is_some_and(|age| idle_ms > age.as_millis() as u64);
            let too_big = options.max_size.is_some_and(|max| live_bytes > max);
            if !(too_old || too_big) {
                continue;
            }
            if idle_ms < options.min_idle.as_millis() as u64 {
                report.protected += 1;
                continue;
            }
            let namespace = e
                .manifest
                .as_ref()
                .map_or("(damaged)".into(), |m| m.namespace.clone());
            let digests: HashSet<Digest> = e
                .manifest
                .as_ref()
                .map(|m| m.external_digests().copied().collect())
                .unwrap_or_default();
            if !options.dry_run {
                match self.remove_under_lease(&e.key, &namespace) {
                    Ok(true) => {}
                    Ok(false) => {
                        report.protected += 1;
                        continue;
                    }
                    // One entry that cannot be evicted (a damaged lease) does not stop gc.
                    Err(err) => {
                        report.errors.push((e.key, err.to_string()));
                        continue;
                    }
                }
            }
            let mut freed = manifest_bytes(e);
            for d in &digests {
                let r = refs.get_mut(d).expect("counted above");
                *r -= 1;
                if *r == 0 {
                    freed = freed.saturating_add(sizes.get(d).copied().unwrap_or(0));
                }
            }
            live_bytes = live_bytes.saturating_sub(freed);
            let referenced = e.manifest.as_ref().map_or(0, |m| m.total_size());
            report.removed.push((e.key, namespace, referenced));
        }
        progress(total, total, "removing unreferenced blobs");
        let (count, bytes) = if options.dry_run {
            let orphans: Vec<_> = blobs
                .iter()
                .filter(|b| refs.get(&b.digest).copied().unwrap_or(0) == 0)
                .collect();
            (
                orphans.len() as u64,
                orphans.iter().map(|b| b.size).fold(0, u64::saturating_add),
            )
        } else {
            self.remove_unreferenced_blobs(options.blob_grace)?
        };
        report.blobs_removed = count;
        report.bytes_freed = bytes;
        if !options.dry_run {
            let (n, b) = self.backend().collect_temp_files(options.temp_grace)?;
            report.temp_files_removed = n;
            report.temp_bytes_freed = b;
        }
        report.bytes_remaining = self
            .backend()
            .list_blobs()?
            .iter()
            .map(|b| b.size)
            .fold(0, u64::saturating_add)
            .saturating_sub(if options.dry_run { bytes } else { 0 });
        Ok(report)
    }

    /// Deletes `key` while holding its lease; false if someone holds the lease (computing it).
    fn remove_under_lease(&self, key: &Key, namespace: &str) -> Result<bool> {
        match self.leases().try_acquire(key, namespace)? {
            Acquire::Busy(_) => Ok(false),
            Acquire::Won(guard) => {
                let r = self.delete(key);
                guard.release()?;
                let _ = self.leases().backend().clean(key);
                r.map(|_| true)
            }
        }
    }

    /// Deletes blobs that no manifest or sweep record references and that are older than `grace`. Returns
    /// (blobs removed, bytes freed).
    pub fn remove_unreferenced_blobs(&self, grace: Duration) -> Result<(u64, u64)> {
        let mut referenced: HashSet<Digest> = HashSet::new();
        for key in self.backend().list_manifests()? {
            if let Ok(Some(m)) = self.manifest(&key) {
                referenced.extend(m.external_digests().copied());
            }
        }
        // A sweep's key list and payload live as long as its record.
        for sweep in self.sweeps()? {
            referenced.extend(sweep.referenced_blobs().copied());
        }
        let (mut n, mut bytes) = (0, 0);
        for b in self.backend().list_blobs()? {
            let old_enough = b.age_s.is_none_or(|age| age >= grace.as_secs());
            if !referenced.contains(&b.digest) && old_enough {
                self.backend().delete_blob(&b.digest)?;
                n += 1;
                bytes += b.size;
            }
        }
        Ok((n, bytes))
    }

    /// Re-reads and re-hashes every blob of every entry, and lists the store's damaged
    /// objects. Each blob is hashed once, but each entry is judged by its own manifest: its
    /// claims (size, digest) are compared with what is on disk, so a damaged manifest that
    /// claims a wrong size for a shared blob never condemns the sound entries sharing it.
    /// With `repair`, damaged entries are removed (and blobs whose content does not match their
    /// name deleted) so the next call recomputes; damaged objects and the temporary files of
    /// killed writers are removed too. An entry whose own manifest and blobs are sound is never
    /// removed.
    pub fn verify(&self, repair: bool, progress: Progress<'_>) -> Result<VerifyReport> {
        let entries = self.entries()?;
        let mut report = VerifyReport::default();
        // What each blob really is: (size, digest of its content), or None if missing.
        let mut found: HashMap<Digest, Option<(u64, Digest)>> = HashMap::new();
        let total = entries.len() as u64;
        for (i, e) in entries.iter().enumerate() {
            progress(i as u64, total, "verifying");
            report.entries += 1;
            let Some(m) = &e.manifest else {
                report.problems.extend(e.damaged());
                if repair {
                    self.delete(&e.key)?;
                    report.removed += 1;
                }
                continue;
            };
            let mut problems = Vec::new();
            let mut misnamed = Vec::new();
            for b in &m.blobs {
                if let Some(inline) = b.inline_bytes() {
                    let data = inline?;
                    if data.len() as u64 != b.size || Digest::of(&data) != b.digest {
                        problems.push(format!(
                            "inline blob `{}` does not match its digest",
                            b.role
                        ));
                    }
                    continue;
                }
                let what = format!("blob `{}` ({})", b.role, b.digest);
                self.judge(
                    &mut found,
                    &mut report,
                    &b.digest,
                    b.size,
                    &what,
                    &mut problems,
                    &mut misnamed,
                )?;
            }
            for a in &m.artifacts {
                let what = format!("artifact `{}` ({})", a.name, a.digest);
                self.judge(
                    &mut found,
                    &mut report,
                    &a.digest,
                    a.size,
                    &what,
                    &mut problems,
                    &mut misnamed,
                )?;
            }
            if !problems.is_empty() {
                report.problems.push(VerifyProblem {
                    key: e.key,
                    namespace: Some(m.namespace.clone()),
                    problem: problems.join("; "),
                });
                if repair {
                    self.delete(&e.key)?;
                    for d in &misnamed {
                        self.backend().delete_blob(d)?;
                    }
                    report.removed += 1;
                }
            }
        }
        report.damaged_objects = self.backend().strays()?;
        if repair {
            for stray in &report.damaged_objects {
                match self.backend().remove_stray(stray) {
                    Ok(()) => report.damaged_objects_removed += 1,
                    Err(e) => log::warn!("could not remove {}: {e}", stray.location),
                }
            }
            report.temp_files_removed = self.backend().collect_temp_files(TEMP_GRACE)?.0;
        }
        progress(total, total, "verified");
        Ok(report)
    }

    /// Compares one claim of an entry (`digest`, `size`) with the blob as it is (hashed once
    /// per digest); a problem is added to `problems`, and a blob whose content does not match
    /// its name to `misnamed`.
    #[allow(clippy::too_many_arguments)]
    fn judge(
        &self,
        found: &mut HashMap<Digest, Option<(u64, Digest)>>,
        report: &mut VerifyReport,
        digest: &Digest,
        size: u64,
        what: &str,
        problems: &mut Vec<String>,
        misnamed: &mut Vec<Digest>,
    ) -> Result<()> {
        let actual = match found.get(digest) {
            Some(a) => *a,
            None => {
                let a = self.hash_blob(digest)?;
                report.blobs += 1;
                report.bytes += a.map_or(0, |(n, _)| n);
                found.insert(*digest, a);
                a
            }
        };
        match actual {
            None => problems.push(format!("{what}: missing")),
            Some((_, content)) if content != *digest => {
                problems.push(format!("{what}: content does not match its digest"));
                misnamed.push(*digest);
            }
            Some((n, _)) if n != size => problems.push(format!(
                "{what}: size is {n} bytes, the manifest says {size} (the blob itself is sound)"
            )),
            Some(_) => {}
        }
        Ok(())
    }
}
