//! [`Task`]: a named, versioned computation whose results are cached by argument key, and the
//! compute-once protocol (`get_or_compute`).

use std::borrow::Cow;
use std::fmt::Display;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::context::{self, Context};
use super::entry::Entry;
use super::mode::{Mode, Validator, LOG_ARTIFACT};
use super::store::{unix_ms, Lookup, Store};
use super::sweep::{settles_item, SweepRef};
use crate::digest::{Digest, StreamHasher};
use crate::error::{Error, Result};
use crate::key::{compute_key, key_document, Key};
use crate::lease::Acquire;
use crate::manifest::{ArtifactRef, Dependency, ErrorInfo, Manifest, Status, MANIFEST_FORMAT};
use crate::store::Watch;

/// A named, versioned computation. Create with [`Store::task`]; configure with the builder
/// methods; then call [`Task::get_or_compute`].
#[derive(Clone)]
pub struct Task {
    pub(crate) store: Store,
    pub(crate) namespace: String,
    pub(crate) version: String,
    pub(crate) mode: Mode,
    pub(crate) wait_timeout: Option<Duration>,
    validator: Option<Validator>,
}

impl std::fmt::Debug for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Task")
            .field("namespace", &self.namespace)
            .field("version", &self.version)
            .field("mode", &self.mode)
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

/// How a task's value travels to and from the store: the blobs it becomes and how it is
/// rebuilt from a completed entry. Implemented for typed Rust values (postcard) and raw bytes
/// here, and for pickled Python objects by the Python extension.
pub trait ValueCodec<T> {
    /// The name recorded in the manifest's `encoding` field.
    fn name(&self) -> &str;
    /// Turns a value into named blobs (role, bytes), borrowing from it where possible.
    fn encode<'v>(&self, value: &'v T) -> Result<Vec<(String, Cow<'v, [u8]>)>>;
    /// Rebuilds the value from a completed entry, reading its blobs through `store` (which
    /// verifies them).
    fn decode(&self, store: &Store, manifest: &Manifest) -> Result<T>;
}

/// Why a computation did not produce a value, as recorded in the entry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Failure {
    /// Error type (Rust type name, Python exception class, ...).
    pub error_type: String,
    /// Its message.
    pub message: String,
    /// Traceback or error chain.
    pub traceback: String,
    /// True if the computation was interrupted (Ctrl-C, SIGTERM) rather than failed: the entry
    /// is recorded `interrupted` and the next call recomputes it.
    pub interrupted: bool,
}

impl Failure {
    /// A failure from any displayable error.
    pub fn from_display<E: Display>(e: &E) -> Self {
        Failure {
            error_type: std::any::type_name::<E>().to_string(),
            message: e.to_string(),
            ..Default::default()
        }
    }
}

/// Typed Rust values, encoded with postcard into one `value` blob.
pub(crate) struct Postcard;

impl<T: Serialize + DeserializeOwned> ValueCodec<T> for Postcard {
    fn name(&self) -> &str {
        "postcard"
    }
    fn encode<'v>(&self, value: &'v T) -> Result<Vec<(String, Cow<'v, [u8]>)>> {
        let bytes = postcard::to_stdvec(value)
            .map_err(|e| Error::Invalid(format!("cannot encode the result: {e}")))?;
        Ok(vec![("value".into(), Cow::Owned(bytes))])
    }
    fn decode(&self, store: &Store, manifest: &Manifest) -> Result<T> {
        let bytes = store.read_role(manifest, "value", "postcard", std::any::type_name::<T>())?;
        postcard::from_bytes(&bytes).map_err(|e| Error::Decode {
            key: manifest.key.to_hex(),
            type_name: std::any::type_name::<T>(),
            message: e.to_string(),
        })
    }
}

/// Raw bytes, stored as they are in one `value` blob.
struct RawBytes;

impl ValueCodec<Vec<u8>> for RawBytes {
    fn name(&self) -> &str {
        "raw"
    }
    fn encode<'v>(&self, value: &'v Vec<u8>) -> Result<Vec<(String, Cow<'v, [u8]>)>> {
        Ok(vec![("value".into(), Cow::Borrowed(value.as_slice()))])
    }
    fn decode(&self, store: &Store, manifest: &Manifest) -> Result<Vec<u8>> {
        store.read_role(manifest, "value", "raw", "Vec<u8>")
    }
}

/// What a worker's [`Task::claim_keyed`] of one sweep item found or did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// The entry is final for the sweep (completed, or failed and not to be retried): nothing
    /// to do.
    Done(Status),
    /// A live process holds the item's lease: try again later.
    Busy,
    /// The item was cancelled ([`Store::cancel_item`]): nothing to do.
    Cancelled,
    /// This process computed the item and recorded the outcome with this status.
    Computed(Status),
}

/// A key's manifest as [`Task::read_for_hit`] read it, for [`Task::try_hit_read`] to judge.
pub struct ManifestRead {
    key: Key,
    found: Lookup,
}

impl ManifestRead {
    /// Whether judging it asks the store about blobs (the entry's artifacts must be whole):
    /// I/O besides the codec's own reads.
    pub fn checks_blobs(&self) -> bool {
        matches!(&self.found, Lookup::Found(m) if !m.artifacts.is_empty())
    }
}

/// What the store says about a key, given the mode.
pub(crate) enum Check<T> {
    Hit(T),
    Failed(ErrorInfo),
    Compute { replace: bool },
}

impl Store {
    /// A task named `namespace` (version "0", mode `cached`), to look up and compute entries.
    // Defined here, not in `store`, so that the store layer never names the task layer above it.
    pub fn task(&self, namespace: impl Into<String>) -> Task {
        Task::new(self.clone(), namespace.into())
    }
}

impl Task {
    pub(crate) fn new(store: Store, namespace: String) -> Self {
        Task {
            store,
            namespace,
            version: "0".into(),
            mode: Mode::Cached,
            wait_timeout: None,
            validator: None,
        }
    }

    /// Sets the task version; a new version gives new keys (old entries stay until gc).
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = version.into();
        self
    }

    /// Sets the lookup mode.
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// Gives up waiting for another process's computation after `timeout`
    /// ([`Error::WaitTimeout`]). Default: wait as long as the holder is alive.
    pub fn wait_timeout(mut self, timeout: Duration) -> Self {
        self.wait_timeout = Some(timeout);
        self
    }

    /// Checks every completed entry before it is used: an entry the validator rejects is
    /// recomputed and replaced, and the reason logged.
    pub fn validator(mut self, validator: Validator) -> Self {
        self.validator = Some(validator);
        self
    }

    /// The task's namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The store this task reads and writes.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The key of `args` for this task.
    pub fn key<A: Serialize + ?Sized>(&self, args: &A) -> Result<Key> {
        compute_key(&self.namespace, &self.version, args)
    }

    /// A handle on the entry of `args` (which may not exist yet).
    pub fn entry<A: Serialize + ?Sized>(&self, args: &A) -> Result<Entry> {
        Ok(Entry::new(
            self.store.clone(),
            self.key(args)?,
            self.namespace.clone(),
        ))
    }

    /// Returns the stored result for `args`, computing and storing it with `f` on a miss.
    /// Among concurrent callers (threads, processes, machines) exactly one computes; the others
    /// wait and load. The value is encoded with `postcard`.
    pub fn get_or_compute<A, T, E, F>(&self, args: &A, f: F) -> Result<T>
    where
        A: Serialize + ?Sized,
        T: Serialize + DeserializeOwned,
        E: Display,
        F: FnOnce() -> std::result::Result<T, E>,
    {
        self.get_or_compute_with(args, |_| f())
    }

    /// Like [`Task::get_or_compute`], with a [`Context`] for artifacts and metadata.
    pub fn get_or_compute_with<A, T, E, F>(&self, args: &A, f: F) -> Result<T>
    where
        A: Serialize + ?Sized,
        T: Serialize + DeserializeOwned,
        E: Display,
        F: FnOnce(&mut Context) -> std::result::Result<T, E>,
    {
        self.resolve(args, f, &Postcard)
    }

    /// Like [`Task::get_or_compute`] for a result that is raw bytes (stored as is).
    pub fn get_or_compute_bytes<A, E, F>(&self, args: &A, f: F) -> Result<Vec<u8>>
    where
        A: Serialize + ?Sized,
        E: Display,
        F: FnOnce(&mut Context) -> std::result::Result<Vec<u8>, E>,
    {
        self.resolve(args, f, &RawBytes)
    }

    fn resolve<A, T, E, F>(&self, args: &A, f: F, codec: &dyn ValueCodec<T>) -> Result<T>
    where
        A: Serialize + ?Sized,
        E: Display,
        F: FnOnce(&mut Context) -> std::result::Result<T, E>,
    {
        let f = |ctx: &mut Context| f(ctx).map_err(|e| Failure::from_display(&e));
        if self.mode == Mode::Off {
            return run_uncached(&self.namespace, f);
        }
        let key = self.key(args)?;
        let doc = || key_document(&self.namespace, &self.version, args);
        self.get_or_compute_keyed(key, &doc, codec, f)
    }

    /// The compute-once protocol for a key computed by the caller (e.g. from Python values):
    /// returns the stored value of `key` decoded by `codec`, or computes it with `f`, stores it
    /// and returns it. `doc` builds the key document, only on a miss. A [`Failure`] returned by
    /// `f` is recorded (as failed, or interrupted) and reported as [`Error::ComputeFailed`].
    /// The entry is recorded as a dependency of any computation running on this thread.
    pub fn get_or_compute_keyed<T, F>(
        &self,
        key: Key,
        doc: &dyn Fn() -> Result<serde_json::Value>,
        codec: &dyn ValueCodec<T>,
        f: F,
    ) -> Result<T>
    where
        F: FnOnce(&mut Context) -> std::result::Result<T, Failure>,
    {
        if self.mode == Mode::Off {
            return run_uncached(&self.namespace, f);
        }
        let value = self.resolve_key(key, doc, f, codec)?;
        context::record_dependency(|| Dependency {
            namespace: self.namespace.clone(),
            version: self.version.clone(),
            key,
        });
        Ok(value)
    }

    /// The hit half of [`Task::get_or_compute_keyed`]: the stored value of `key` if the store
    /// settles the call without computing (a completed, valid entry, judged by mode and
    /// validator exactly as there), else `None`, having taken no lease and changed nothing.
    /// A hit is recorded as a dependency like any other. Callers fall back to
    /// `get_or_compute_keyed` on `None`; language bindings use this as their fast path.
    pub fn try_hit_keyed<T>(&self, key: Key, codec: &dyn ValueCodec<T>) -> Result<Option<T>> {
        self.try_hit_read(self.read_for_hit(key)?, codec)
    }

    /// The reading half of [`Task::try_hit_keyed`]: the manifest of `key` as the store holds
    /// it (nothing is read in modes that never hit). Bindings run it without their interpreter
    /// lock, and [`Task::try_hit_read`] with it.
    pub fn read_for_hit(&self, key: Key) -> Result<ManifestRead> {
        let found = if matches!(self.mode, Mode::Off | Mode::Force) {
            Lookup::Missing
        } else {
            self.store.lookup(&key)?
        };
        Ok(ManifestRead { key, found })
    }

    /// The judging half of [`Task::try_hit_keyed`]: the value if what [`Task::read_for_hit`]
    /// read settles the call, decoded by `codec` (which reads any blob not inline).
    pub fn try_hit_read<T>(
        &self,
        read: ManifestRead,
        codec: &dyn ValueCodec<T>,
    ) -> Result<Option<T>> {
        if matches!(self.mode, Mode::Off | Mode::Force) {
            return Ok(None);
        }
        let key = read.key;
        let Check::Hit(value) = self.judge(&key, read.found, codec)? else {
            return Ok(None);
        };
        context::record_dependency(|| Dependency {
            namespace: self.namespace.clone(),
            version: self.version.clone(),
            key,
        });
        Ok(Some(value))
    }

    fn resolve_key<T, F>(
        &self,
        key: Key,
        doc: &dyn Fn() -> Result<serde_json::Value>,
        f: F,
        codec: &dyn ValueCodec<T>,
    ) -> Result<T>
    where
        F: FnOnce(&mut Context) -> std::result::Result<T, Failure>,
    {
        let started = Instant::now();
        let mut watch: Option<Box<dyn Watch>> = None;
        loop {
            let replace = match self.check(&key, codec)? {
                Check::Hit(v) => return Ok(v),
                Check::Failed(err) => return Err(self.recorded_failure(&key, err)),
                Check::Compute { replace } => replace,
            };
            if self.mode == Mode::ReadOnly {
                return run_uncached(&self.namespace, f);
            }
            match self.store.leases().try_acquire(&key, &self.namespace)? {
                Acquire::Won(guard) => {
                    // Someone may have committed between our check and our acquire.
                    let replace = match self.check(&key, codec)? {
                        Check::Hit(v) => {
                            release(guard);
                            return Ok(v);
                        }
                        Check::Failed(err) => {
                            release(guard);
                            return Err(self.recorded_failure(&key, err));
                        }
                        Check::Compute { replace: r } => r || replace,
                    };
                    return self.compute_leased(guard, key, doc()?, f, codec, replace, None);
                }
                Acquire::Busy(holder) => {
                    if let Some(limit) = self.wait_timeout {
                        if started.elapsed() >= limit {
                            return Err(Error::WaitTimeout {
                                key: key.to_hex(),
                                holder: format!("pid {} on {}", holder.pid, holder.host),
                                waited: started.elapsed(),
                            });
                        }
                    }
                    match watch.as_mut() {
                        // First time busy: start watching, then re-check before sleeping so a
                        // commit that landed in between is not missed.
                        None => watch = Some(self.store.backend().watch(&key)?),
                        Some(w) => w.wait(Duration::from_millis(200)),
                    }
                }
            }
        }
    }

    /// A worker's attempt at one sweep item: if the entry does not yet settle the item (see
    /// [`settles_item`]) and nobody holds its lease, computes it with `f` and commits the
    /// outcome, marked as computed by `sweep`, with the file at `log` (the item's captured
    /// output, if any) stored as the artifact [`LOG_ARTIFACT`]. Never waits and never loads a
    /// stored value.
    pub fn claim_keyed<T, F>(
        &self,
        key: Key,
        sweep: &SweepRef,
        doc: &dyn Fn() -> Result<serde_json::Value>,
        codec: &dyn ValueCodec<T>,
        log: Option<&Path>,
        f: F,
    ) -> Result<Claim>
    where
        F: FnOnce(&mut Context) -> std::result::Result<T, Failure>,
    {
        if matches!(self.mode, Mode::Off | Mode::ReadOnly) {
            return Err(Error::Invalid(format!(
                "a sweep cannot run in mode `{}`: workers must write entries (use cached, retry or force)",
                self.mode.as_str()
            )));
        }
        // (settling status, whether any entry exists) of the item now.
        let look = |key: &Key| -> Result<(Option<Status>, bool)> {
            Ok(match self.store.lookup(key)? {
                Lookup::Found(m) => {
                    let stale = m.status == Status::Completed
                        && self.validator.as_ref().is_some_and(|v| v(&m).is_some());
                    let settles = settles_item(self.mode, sweep, &m) && !stale;
                    (settles.then_some(m.status), true)
                }
                Lookup::Damaged(_) => (None, true),
                Lookup::Missing => (None, false),
            })
        };
        if let (Some(status), _) = look(&key)? {
            return Ok(Claim::Done(status));
        }
        let guard = match self.store.leases().try_acquire(&key, &self.namespace)? {
            Acquire::Won(guard) => guard,
            Acquire::Busy(_) => return Ok(Claim::Busy),
        };
        let replace = match look(&key)? {
            (Some(status), _) => {
                release(guard);
                return Ok(Claim::Done(status));
            }
            (None, exists) => exists,
        };
        // A cancellation is written under this same lease, so it is seen here or never.
        if self.store.is_cancelled(sweep, &key)? {
            release(guard);
            return Ok(Claim::Cancelled);
        }
        let mut interrupted = false;
        let out = self.compute_leased(
            guard,
            key,
            doc()?,
            |ctx: &mut Context| {
                let out = f(ctx).inspect_err(|failure| interrupted = failure.interrupted);
                // The item's captured output is kept with its entry, failed ones too.
                if let Some(log) = log.filter(|p| p.metadata().is_ok_and(|m| m.len() > 0)) {
                    if let Err(e) = ctx.add_artifact_file(LOG_ARTIFACT, log.to_path_buf()) {
                        log::warn!("runcache: the output of {key} is not kept: {e}");
                    }
                }
                out
            },
            codec,
            replace,
            Some(&sweep.id),
        );
        match out {
            Ok(_) => Ok(Claim::Computed(Status::Completed)),
            Err(Error::ComputeFailed { .. }) if interrupted => {
                Ok(Claim::Computed(Status::Interrupted))
            }
            Err(Error::ComputeFailed { .. }) => Ok(Claim::Computed(Status::Failed)),
            Err(e) => Err(e),
        }
    }

    /// Looks at the stored entry and decides, by mode, whether it is a hit.
    fn check<T>(&self, key: &Key, codec: &dyn ValueCodec<T>) -> Result<Check<T>> {
        self.judge(key, self.store.lookup(key)?, codec)
    }

    /// Decides, by mode, whether what a lookup of `key` found is a hit.
    pub(crate) fn judge<T>(
        &self,
        key: &Key,
        found: Lookup,
        codec: &dyn ValueCodec<T>,
    ) -> Result<Check<T>> {
        let manifest = match found {
            Lookup::Missing => return Ok(Check::Compute { replace: false }),
            Lookup::Damaged(msg) => {
                log::warn!(
                    "runcache: entry {key} of {} is damaged ({msg}); recomputing it",
                    self.namespace
                );
                return Ok(Check::Compute { replace: true });
            }
            Lookup::Found(m) => m,
        };
        if manifest.status == Status::Completed {
            if let Some(reason) = self.validator.as_ref().and_then(|v| v(&manifest)) {
                log::info!(
                    "runcache: entry {key} of {} is stale ({reason}); recomputing it",
                    self.namespace
                );
                return Ok(Check::Compute { replace: true });
            }
        }
        match (manifest.status, self.mode) {
            (_, Mode::Force) => Ok(Check::Compute { replace: true }),
            (Status::Completed, _) => match self.load_value(&manifest, codec) {
                Ok(v) => {
                    if self.mode != Mode::ReadOnly {
                        self.store.note_use(key);
                    }
                    Ok(Check::Hit(v))
                }
                Err(e @ Error::Corrupt { .. }) => {
                    log::warn!("runcache: {e}");
                    Ok(Check::Compute { replace: true })
                }
                Err(e) => Err(e),
            },
            (Status::Failed, Mode::Retry) | (Status::Interrupted, _) => {
                Ok(Check::Compute { replace: true })
            }
            (Status::Failed, _) => Ok(Check::Failed(manifest.error.clone().unwrap_or_default())),
        }
    }

    fn load_value<T>(&self, manifest: &Manifest, codec: &dyn ValueCodec<T>) -> Result<T> {
        // Artifacts must be intact too, or the entry is not whole.
        for a in &manifest.artifacts {
            match self.store.backend().blob_size(&a.digest)? {
                Some(size) if size == a.size => {}
                found => {
                    return Err(Error::Corrupt {
                        key: manifest.key.to_hex(),
                        digest: a.digest.to_hex(),
                        message: format!(
                            "artifact `{}` is {}",
                            a.name,
                            match found {
                                None => "missing".to_string(),
                                Some(s) => format!("{s} bytes instead of {}", a.size),
                            }
                        ),
                    })
                }
            }
        }
        codec.decode(&self.store, manifest)
    }

    pub(crate) fn recorded_failure(&self, key: &Key, err: ErrorInfo) -> Error {
        Error::RecordedFailure {
            namespace: self.namespace.clone(),
            key: key.to_hex(),
            error_type: err.error_type,
            message: err.message,
        }
    }

    pub(crate) fn manifest_for(
        &self,
        key: Key,
        key_doc: serde_json::Value,
        status: Status,
    ) -> Manifest {
        Manifest {
            format: MANIFEST_FORMAT,
            key,
            namespace: self.namespace.clone(),
            version: self.version.clone(),
            key_doc,
            status,
            blobs: Vec::new(),
            artifacts: Vec::new(),
            dependencies: Vec::new(),
            error: None,
            created_unix_ms: unix_ms(),
            duration_s: 0.0,
            host: crate::host_name(),
            pid: std::process::id(),
            encoding: String::new(),
            metadata: Default::default(),
            sweep: None,
            signature: None,
        }
    }

    /// Computes and commits `key` while holding its lease `guard` (released at the end); a
    /// SIGTERM meanwhile records the entry interrupted (as computed by `sweep`, if any).
    #[allow(clippy::too_many_arguments)]
    fn compute_leased<T, F>(
        &self,
        guard: crate::lease::LeaseGuard,
        key: Key,
        doc: serde_json::Value,
        f: F,
        codec: &dyn ValueCodec<T>,
        replace: bool,
        sweep: Option<&str>,
    ) -> Result<T>
    where
        F: FnOnce(&mut Context) -> std::result::Result<T, Failure>,
    {
        let hook_store = self.store.clone();
        let mut hook_manifest = self.manifest_for(key, doc.clone(), Status::Interrupted);
        hook_manifest.sweep = sweep.map(str::to_string);
        guard.set_interrupt_hook(Box::new(move || {
            record_interrupted(&hook_store, hook_manifest)
        }));
        let out = self.compute_and_commit(key, doc, f, codec, replace, sweep);
        release(guard);
        out
    }

    fn compute_and_commit<T, F>(
        &self,
        key: Key,
        doc: serde_json::Value,
        f: F,
        codec: &dyn ValueCodec<T>,
        replace: bool,
        sweep: Option<&str>,
    ) -> Result<T>
    where
        F: FnOnce(&mut Context) -> std::result::Result<T, Failure>,
    {
        let mut ctx = Context::new(self.store.backend().scratch_dir());
        let t0 = Instant::now();
        context::push_frame();
        let outcome = catch_unwind(AssertUnwindSafe(|| f(&mut ctx)));
        let dependencies = context::pop_frame();
        let mut manifest = self.manifest_for(key, doc, Status::Completed);
        manifest.sweep = sweep.map(str::to_string);
        manifest.duration_s = t0.elapsed().as_secs_f64();
        manifest.dependencies = dependencies;
        match outcome {
            Ok(Ok(value)) => {
                for (role, bytes) in codec.encode(&value)? {
                    manifest.blobs.push(self.store.store_blob(&role, &bytes)?);
                }
                manifest.encoding = codec.name().into();
                manifest.artifacts = self.store_artifacts(&ctx)?;
                manifest.metadata = std::mem::take(&mut ctx.metadata);
                if !self.store.commit(&manifest, replace)? {
                    log::debug!("entry {key} was committed by another writer first; kept theirs");
                }
                Ok(value)
            }
            Ok(Err(failure)) => {
                manifest.status = if failure.interrupted {
                    Status::Interrupted
                } else {
                    Status::Failed
                };
                manifest.error = Some(ErrorInfo {
                    error_type: failure.error_type,
                    message: failure.message.clone(),
                    traceback: failure.traceback,
                });
                manifest.metadata = std::mem::take(&mut ctx.metadata);
                // What a failed computation left (its log, partial artifacts) is kept with it.
                manifest.artifacts = self.store_artifacts(&ctx).unwrap_or_else(|e| {
                    log::warn!("runcache: could not store the artifacts of failed {key}: {e}");
                    Vec::new()
                });
                // An interruption never replaces a completed entry (force mode).
                let keep_completed = failure.interrupted
                    && matches!(self.store.lookup(&key)?, Lookup::Found(ref m) if m.status == Status::Completed);
                if !keep_completed {
                    self.store.commit(&manifest, replace)?;
                }
                Err(Error::ComputeFailed {
                    namespace: self.namespace.clone(),
                    message: failure.message,
                })
            }
            Err(panic) => {
                manifest.status = Status::Failed;
                manifest.error = Some(ErrorInfo {
                    error_type: "panic".into(),
                    message: panic_message(&panic),
                    traceback: String::new(),
                });
                if let Err(e) = self.store.commit(&manifest, replace) {
                    log::warn!("runcache: could not record the panic of {key}: {e}");
                }
                resume_unwind(panic)
            }
        }
    }

    fn store_artifacts(&self, ctx: &Context) -> Result<Vec<ArtifactRef>> {
        let mut out = Vec::new();
        for (name, path) in &ctx.artifacts {
            if !path.exists() {
                log::warn!(
                    "runcache: task {} asked for artifact `{name}` but wrote no file; it is not stored",
                    self.namespace
                );
                continue;
            }
            // Streamed: an artifact may be far larger than memory (a command's stdout).
            let (digest, size) = hash_file(path)?;
            self.store.backend().put_blob_file(&digest, path)?;
            out.push(ArtifactRef {
                name: name.clone(),
                digest,
                size,
            });
        }
        Ok(out)
    }
}

/// The digest and size of a file, read in chunks (never whole into memory).
fn hash_file(path: &Path) -> Result<(Digest, u64)> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    StreamHasher::digest_reader(file).map_err(|e| Error::io(path, e))
}

/// Runs `f` with no store involved (modes `off`, and `read-only` on a miss).
pub(crate) fn run_uncached<T, F>(namespace: &str, f: F) -> Result<T>
where
    F: FnOnce(&mut Context) -> std::result::Result<T, Failure>,
{
    let mut ctx = Context::new(std::env::temp_dir());
    f(&mut ctx).map_err(|failure| Error::ComputeFailed {
        namespace: namespace.to_string(),
        message: failure.message,
    })
}

pub(crate) fn release(guard: crate::lease::LeaseGuard) {
    if let Err(e) = guard.release() {
        log::warn!("runcache: could not release a lease: {e}");
    }
}

/// Records an interrupted computation, unless a completed entry already exists.
fn record_interrupted(store: &Store, mut manifest: Manifest) {
    if let Ok(Lookup::Found(m)) = store.lookup(&manifest.key) {
        if m.status == Status::Completed {
            return;
        }
    }
    manifest.error = Some(ErrorInfo {
        error_type: "interrupted".into(),
        message: "the computation was stopped by a signal".into(),
        traceback: String::new(),
    });
    if let Err(e) = store.commit(&manifest, true) {
        log::warn!(
            "runcache: could not record interruption of {}: {e}",
            manifest.key
        );
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic".into()
    }
}
