//! Sweeps: many items of one task submitted together and computed by workers.
//!
//! A sweep is a small record (kind `sweeps` in the backend's records) plus two kinds of blobs:
//! the item keys (32 bytes each, in item order) and a runner-specific payload telling a worker
//! how to compute each item (for Python: the callable and pickled arguments). Nothing else is
//! kept: an item's state is read from the store itself — its entry (completed, failed,
//! interrupted) and its lease (running) — so every session, the CLI and every worker see the
//! same truth.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::mode::{Mode, Validator, LOG_ARTIFACT};
use super::store::{Lookup, Store};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::key::Key;
use crate::lease::Acquire;
use crate::manifest::{BlobRef, Manifest, Status};

/// Format of the sweep record written by this engine.
pub const SWEEP_FORMAT: u32 = 1;

/// The record kind sweeps are stored under.
const KIND: &str = "sweeps";

/// Longest sweep id (so that the record kind of its cancellations, `cancel.<id>`, is valid).
pub const MAX_SWEEP_ID: usize = 100;

/// The record kind under which the cancelled items of sweep `id` are kept (one empty record
/// per item key).
fn cancel_kind(id: &str) -> String {
    format!("cancel.{id}")
}

/// Everything a worker and a status reader need to know about one sweep.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SweepRecord {
    /// Record format ([`SWEEP_FORMAT`]).
    pub format: u32,
    /// The sweep's id (letters, digits, `-`, `_`, `.`).
    pub id: String,
    /// When it was submitted (unix ms, the submitter's clock); see [`settles_item`].
    pub created_unix_ms: u64,
    /// Task namespace of every item.
    pub namespace: String,
    /// Task version (as used in the keys).
    pub version: String,
    /// Lookup mode of the workers: `cached`, `retry` or `force`.
    pub mode: String,
    /// Number of items.
    pub count: u64,
    /// Blob of the item keys, 32 bytes each, in item order.
    pub keys: Digest,
    /// The runner's description of each item's call, as blobs (digest, size) in the runner's
    /// order (for Python: the pickle stream, then its out-of-band buffers).
    #[serde(default)]
    pub payload: Vec<(Digest, u64)>,
    /// How workers run items (for Python: interpreter, `sys.path`, callable).
    #[serde(default)]
    pub runner: serde_json::Value,
    /// Resources one item needs (e.g. `{"ram": 1.5}`).
    #[serde(default)]
    pub resources: BTreeMap<String, f64>,
    /// What the executor recorded (job ids, log directory).
    #[serde(default)]
    pub executor: serde_json::Value,
}

impl SweepRecord {
    /// The sweep's lookup mode.
    pub fn mode(&self) -> Result<Mode> {
        self.mode.parse()
    }

    /// Which sweep this is, for [`settles_item`].
    pub fn sweep_ref(&self) -> SweepRef {
        SweepRef::new(self.id.clone(), self.created_unix_ms)
    }

    /// Every blob the sweep needs (gc keeps them while the record exists).
    pub fn referenced_blobs(&self) -> impl Iterator<Item = &Digest> {
        std::iter::once(&self.keys).chain(self.payload.iter().map(|(digest, _)| digest))
    }
}

/// A sweep as its items' entries see it: the entries its workers compute carry its id.
#[derive(Clone)]
pub struct SweepRef {
    /// The sweep's id.
    pub id: String,
    /// When it was submitted (unix ms, the submitter's clock).
    pub submitted_unix_ms: u64,
    /// Judges completed entries as a task's calls do (e.g. a dependency's version changed): a
    /// completed entry it rejects does not settle the item, so workers recompute it and every
    /// status reader agrees.
    pub validator: Option<Validator>,
}

impl SweepRef {
    /// Sweep `id`, submitted at `submitted_unix_ms`, with no validator.
    pub fn new(id: impl Into<String>, submitted_unix_ms: u64) -> Self {
        SweepRef {
            id: id.into(),
            submitted_unix_ms,
            validator: None,
        }
    }

    /// The same sweep, judging completed entries with `validator`.
    pub fn with_validator(mut self, validator: Validator) -> Self {
        self.validator = Some(validator);
        self
    }
}

impl std::fmt::Debug for SweepRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SweepRef")
            .field("id", &self.id)
            .field("submitted_unix_ms", &self.submitted_unix_ms)
            .field("validator", &self.validator.is_some())
            .finish()
    }
}

/// Whether a stored entry settles an item of `sweep` in `mode`. Completed and failed entries
/// are final, except that `retry` redoes failures and `force` redoes everything that is not
/// *fresh*: computed by the sweep's own workers (told by the id they record, so clock skew
/// between machines cannot make a sweep redo its own work), or recorded by anyone strictly
/// after the submission. Interrupted entries never settle an item, nor completed ones the
/// sweep's validator rejects.
pub fn settles_item(mode: Mode, sweep: &SweepRef, manifest: &Manifest) -> bool {
    if manifest.status == Status::Completed
        && sweep
            .validator
            .as_ref()
            .is_some_and(|v| v(manifest).is_some())
    {
        return false;
    }
    let fresh = manifest.sweep.as_deref() == Some(sweep.id.as_str())
        || manifest.created_unix_ms > sweep.submitted_unix_ms;
    match (manifest.status, mode) {
        (Status::Interrupted, _) => false,
        (_, Mode::Force) => fresh,
        (Status::Completed, _) => true,
        (Status::Failed, Mode::Retry) => fresh,
        (Status::Failed, _) => true,
    }
}

/// The state of one item, derived from the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ItemState {
    /// Queued; no worker holds it.
    Pending,
    /// A live worker holds its lease.
    Running,
    /// Computed by this sweep's workers.
    Completed,
    /// Completed by anyone else: before the submission, or by another sweep or call (loaded
    /// from the cache).
    Cached,
    /// Its computation failed (recorded).
    Failed,
    /// Its computation was interrupted; it is queued again.
    Interrupted,
    /// Cancelled before it started: no worker of this sweep will compute it.
    Cancelled,
}

/// One item's state, with where to look when it failed.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ItemStatus {
    /// Position in the sweep.
    pub index: u64,
    /// Entry key.
    pub key: Key,
    /// State.
    pub state: ItemState,
    /// `Type: message` of a failure or interruption.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Host that recorded the entry, or that runs it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Where the item's captured output is: a local file, or the command that prints it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
}

/// Counts of a sweep's items by state, plus the items that need attention.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct SweepStatus {
    /// Sweep id.
    pub id: String,
    /// Task namespace.
    pub namespace: String,
    /// Number of items.
    pub total: u64,
    /// Queued, no worker yet.
    pub pending: u64,
    /// Held by a live worker.
    pub running: u64,
    /// Computed by this sweep's workers.
    pub completed: u64,
    /// Loaded from entries this sweep did not compute.
    pub cached: u64,
    /// Failed.
    pub failed: u64,
    /// Interrupted (queued again).
    pub interrupted: u64,
    /// Cancelled before they started.
    #[serde(default)]
    pub cancelled: u64,
    /// Per-item states: every item when asked for, else the failed and interrupted ones.
    pub items: Vec<ItemStatus>,
}

impl SweepStatus {
    /// Items settled: completed, cached, failed or cancelled.
    pub fn settled(&self) -> u64 {
        self.completed + self.cached + self.failed + self.cancelled
    }

    /// True when every item is settled.
    pub fn drained(&self) -> bool {
        self.settled() == self.total
    }
}

impl Store {
    /// Writes (creates or replaces) a sweep record.
    pub fn save_sweep(&self, record: &SweepRecord) -> Result<()> {
        if record.id.len() > MAX_SWEEP_ID {
            return Err(Error::Invalid(format!(
                "sweep id {:?} is {} bytes long; use at most {MAX_SWEEP_ID}",
                record.id,
                record.id.len()
            )));
        }
        let bytes = serde_json::to_vec(record).expect("a sweep record serializes");
        self.backend().put_record(KIND, &record.id, &bytes)
    }

    /// Stores the item keys of a sweep (one blob) and returns its digest.
    pub fn save_sweep_keys(&self, keys: &[Key]) -> Result<Digest> {
        let bytes: Vec<u8> = keys.iter().flat_map(|k| *k.digest().as_bytes()).collect();
        self.backend().put_blob_hashing(&bytes)
    }

    /// The record of sweep `id`.
    pub fn sweep(&self, id: &str) -> Result<SweepRecord> {
        let Some(bytes) = self.backend().get_record(KIND, id)? else {
            let known = self.backend().list_records(KIND)?;
            let hint = match known.last() {
                Some(last) => format!(
                    "; this store has {} sweep(s), the newest is {last} (`runcache status` lists them)",
                    known.len()
                ),
                None => "; this store has no sweeps".into(),
            };
            return Err(Error::Invalid(format!(
                "no sweep `{id}` in {}{hint}",
                self.location()
            )));
        };
        let record: SweepRecord = serde_json::from_slice(&bytes).map_err(|e| Error::Malformed {
            what: "sweep record",
            path: format!("{} sweep {id}", self.location()),
            message: e.to_string(),
        })?;
        if record.format > SWEEP_FORMAT {
            return Err(Error::Invalid(format!(
                "sweep {id} was written in format {} by a newer runcache; upgrade runcache to read it",
                record.format
            )));
        }
        Ok(record)
    }

    /// Every sweep record of the store, oldest first.
    pub fn sweeps(&self) -> Result<Vec<SweepRecord>> {
        let mut out = Vec::new();
        for id in self.backend().list_records(KIND)? {
            match self.sweep(&id) {
                Ok(r) => out.push(r),
                Err(e) => log::warn!("runcache: skipping sweep {id}: {e}"),
            }
        }
        out.sort_by(|a, b| (a.created_unix_ms, &a.id).cmp(&(b.created_unix_ms, &b.id)));
        Ok(out)
    }

    /// Deletes a sweep record and its cancellations (its entries stay); returns whether it
    /// existed.
    pub fn delete_sweep(&self, id: &str) -> Result<bool> {
        let kind = cancel_kind(id);
        for name in self.backend().list_records(&kind)? {
            self.backend().delete_record(&kind, &name)?;
        }
        self.backend().delete_record(KIND, id)
    }

    /// Cancels the item of `sweep` whose key is `key`, unless it has started: takes the item's
    /// lease (so no worker holds it or can start it meanwhile), and when no entry settles the
    /// item, records the cancellation, which every worker checks after taking an item's lease.
    /// Returns false, changing nothing, when the item is running or settled.
    pub fn cancel_item(&self, sweep: &SweepRef, mode: Mode, key: &Key) -> Result<bool> {
        let guard = match self.leases().try_acquire(key, "runcache.cancel")? {
            Acquire::Won(guard) => guard,
            Acquire::Busy(_) => return Ok(false),
        };
        let cancel = !self.settles(key, mode, sweep)?;
        let written = if cancel {
            self.backend()
                .put_record(&cancel_kind(&sweep.id), &key.to_hex(), b"")
        } else {
            Ok(())
        };
        guard.release()?;
        written.map(|()| cancel)
    }

    /// Whether the item of `sweep` with key `key` was cancelled.
    pub fn is_cancelled(&self, sweep: &SweepRef, key: &Key) -> Result<bool> {
        Ok(self
            .backend()
            .get_record(&cancel_kind(&sweep.id), &key.to_hex())?
            .is_some())
    }

    /// The keys of the cancelled items of `sweep`.
    pub fn cancelled_items(&self, sweep: &SweepRef) -> Result<HashSet<Key>> {
        Ok(self
            .backend()
            .list_records(&cancel_kind(&sweep.id))?
            .iter()
            .filter_map(|name| name.parse::<Key>().ok())
            .collect())
    }

    /// The item keys of a sweep, in item order.
    pub fn sweep_keys(&self, record: &SweepRecord) -> Result<Vec<Key>> {
        let expected = record.count * 32;
        // Checked before reading: read_blob would delete a blob whose size disagrees, and a
        // record with a wrong count must not destroy a key list other sweeps may share.
        let size = self.backend().blob_size(&record.keys)?;
        if size != Some(expected) {
            return Err(Error::Invalid(format!(
                "the key list of sweep {} is missing or damaged (blob {}); resubmit the sweep",
                record.id, record.keys
            )));
        }
        let blob = BlobRef {
            role: "sweep-keys".into(),
            digest: record.keys,
            size: expected,
            inline: None,
        };
        let bytes = self.read_blob(&Key(record.keys), &blob)?;
        Ok(bytes
            .chunks_exact(32)
            .map(|c| Key(Digest::from_bytes(c.try_into().expect("32-byte chunks"))))
            .collect())
    }

    /// The state of every item of a sweep, read from its entries, and from its leases for the
    /// items no entry settles. With `all_items`,
    /// `items` lists every item; otherwise only the failed and interrupted ones.
    pub fn sweep_status(&self, record: &SweepRecord, all_items: bool) -> Result<SweepStatus> {
        let mode = record.mode()?;
        let sweep = record.sweep_ref();
        let keys = self.sweep_keys(record)?;
        let cancelled = self.cancelled_items(&sweep)?;
        let mut status = SweepStatus {
            id: record.id.clone(),
            namespace: record.namespace.clone(),
            total: keys.len() as u64,
            ..Default::default()
        };
        for (index, key) in keys.into_iter().enumerate() {
            let (state, manifest) = self.item_state(&key, mode, &sweep, &cancelled)?;
            let counter = match state {
                ItemState::Pending => &mut status.pending,
                ItemState::Running => &mut status.running,
                ItemState::Completed => &mut status.completed,
                ItemState::Cached => &mut status.cached,
                ItemState::Failed => &mut status.failed,
                ItemState::Interrupted => &mut status.interrupted,
                ItemState::Cancelled => &mut status.cancelled,
            };
            *counter += 1;
            if all_items || matches!(state, ItemState::Failed | ItemState::Interrupted) {
                status
                    .items
                    .push(self.describe(index as u64, key, state, manifest.as_deref()));
            }
        }
        Ok(status)
    }

    /// Whether the entry of `key` settles an item of `sweep` in `mode` (see [`settles_item`]).
    pub fn settles(&self, key: &Key, mode: Mode, sweep: &SweepRef) -> Result<bool> {
        Ok(match self.lookup(key)? {
            Lookup::Found(m) => settles_item(mode, sweep, &m),
            _ => false,
        })
    }

    /// The states of items of `sweep` in `mode` (from the entries of `keys`), including
    /// whether a live worker holds them.
    pub fn item_states(
        &self,
        keys: &[Key],
        mode: Mode,
        sweep: &SweepRef,
    ) -> Result<Vec<ItemState>> {
        let cancelled = self.cancelled_items(sweep)?;
        keys.iter()
            .map(|key| Ok(self.item_state(key, mode, sweep, &cancelled)?.0))
            .collect()
    }

    /// The state of one item, and its entry if there is one. Only an unsettled item's lease is
    /// looked at: the cost follows the sweep, not the number of leases in the store.
    fn item_state(
        &self,
        key: &Key,
        mode: Mode,
        sweep: &SweepRef,
        cancelled: &HashSet<Key>,
    ) -> Result<(ItemState, Option<Arc<Manifest>>)> {
        let manifest = match self.lookup(key)? {
            Lookup::Found(m) => Some(m),
            _ => None,
        };
        let state = match manifest.as_deref() {
            Some(m) if settles_item(mode, sweep, m) => match m.status {
                Status::Completed if m.sweep.as_deref() == Some(sweep.id.as_str()) => {
                    ItemState::Completed
                }
                Status::Completed => ItemState::Cached,
                _ => ItemState::Failed,
            },
            _ if cancelled.contains(key) => ItemState::Cancelled,
            _ if self
                .leases()
                .view(key)?
                .is_some_and(|v| v.alive != Some(false)) =>
            {
                ItemState::Running
            }
            Some(m) if m.status == Status::Interrupted => ItemState::Interrupted,
            _ => ItemState::Pending,
        };
        Ok((state, manifest))
    }

    /// What `runcache status` shows of one item: its state, and where its entry came from (the
    /// error only when it is this item's: failed, or interrupted).
    fn describe(
        &self,
        index: u64,
        key: Key,
        state: ItemState,
        manifest: Option<&Manifest>,
    ) -> ItemStatus {
        let own_error = matches!(state, ItemState::Failed | ItemState::Interrupted);
        ItemStatus {
            index,
            key,
            state,
            error: manifest
                .and_then(|m| m.error.as_ref())
                .filter(|_| own_error)
                .map(|e| format!("{}: {}", e.error_type, e.message)),
            host: manifest.map(|m| m.host.clone()),
            log: manifest
                .and_then(|m| m.artifacts.iter().find(|a| a.name == LOG_ARTIFACT))
                .map(|a| match self.backend().blob_path(&a.digest) {
                    Some(p) => p.display().to_string(),
                    None => format!("runcache logs {}", key.to_hex()),
                }),
        }
    }
}
