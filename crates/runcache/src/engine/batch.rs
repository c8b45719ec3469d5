//! Batched tasks: one entry per item, computed in batches ([`Task::get_or_compute_batch`]).
//!
//! A call looks every item's key up in one pass (`Store::lookup_many`, defined here: one round
//! trip on PostgreSQL and S3), claims the missing items a batch at a time with their leases,
//! computes each batch with one call of the user's function, and commits every item of the
//! batch as its own entry as soon as the batch returns. Items another process holds are waited
//! for and loaded, never recomputed. A batch that fails records nothing for its items.

use std::collections::HashMap;
use std::fmt::Display;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::context::{self, Context};
use super::mode::Mode;
use super::store::{Lookup, Store};
use super::task::{release, run_uncached, Check, Failure, Postcard, Task, ValueCodec};
use crate::error::{Error, Result};
use crate::key::{key_document, Key};
use crate::lease::{Acquire, LeaseGuard};
use crate::manifest::{Dependency, Status};
use crate::store::{PollWatch, Watch};

/// The longest a waiter sleeps between two looks at the items other processes hold.
const WAIT_STEP: Duration = Duration::from_millis(50);

/// One item this call has to compute: its position among the call's keys and whether an
/// entry (damaged, stale, interrupted, or replaced by mode) exists in its place.
#[derive(Clone, Copy)]
struct Todo {
    at: usize,
    replace: bool,
}

impl Store {
    /// [`Store::lookup`] of many keys, in their order: on a backend with fingerprints (local
    /// files) each key is looked up as usual, reusing manifests this handle already parsed; the
    /// others are read with one [`Backend::get_manifests`](crate::store::Backend::get_manifests)
    /// (one query on PostgreSQL, concurrent GETs on S3).
    pub(crate) fn lookup_many(&self, keys: &[Key]) -> Result<Vec<Lookup>> {
        let backend = self.backend();
        let mut out = Vec::with_capacity(keys.len());
        let mut unread = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            match backend.manifest_fingerprint(key)? {
                // A fingerprinted backend (local files) reads one file per key anyway.
                Some(_) => out.push(self.lookup(key)?),
                None => {
                    out.push(Lookup::Missing);
                    unread.push(i);
                }
            }
        }
        let wanted: Vec<Key> = unread.iter().map(|&i| keys[i]).collect();
        for (&i, bytes) in unread.iter().zip(backend.get_manifests(&wanted)?) {
            if let Some(bytes) = bytes {
                self.check_signature(&keys[i], &bytes)?;
                out[i] = self.parse_manifest(&keys[i], &bytes);
            }
        }
        Ok(out)
    }
}

impl Task {
    /// Returns the result of every item of `items`, in order: stored ones are loaded, the
    /// missing ones computed by `f` in batches of at most `batch_size` (one call of `f` per
    /// batch, with the batch's items in call order; it must return one result per item, in the
    /// same order). Each item's result is its own entry (keyed by the item alone), committed as
    /// soon as its batch returns, so an interrupted call loses at most the batch it was in.
    /// Among concurrent callers each item is computed once. Equal items are computed once.
    pub fn get_or_compute_batch<A, T, E, F>(
        &self,
        items: &[A],
        batch_size: usize,
        mut f: F,
    ) -> Result<Vec<T>>
    where
        A: Serialize,
        T: Serialize + DeserializeOwned + Clone,
        E: Display,
        F: FnMut(&[&A]) -> std::result::Result<Vec<T>, E>,
    {
        let keys = items
            .iter()
            .map(|a| self.key(a))
            .collect::<Result<Vec<Key>>>()?;
        // Equal items share one key: each distinct key is resolved once.
        let mut first: HashMap<Key, usize> = HashMap::new();
        let mut distinct = Vec::new();
        let slot: Vec<usize> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| {
                *first.entry(*k).or_insert_with(|| {
                    distinct.push(i);
                    distinct.len() - 1
                })
            })
            .collect();
        let distinct_keys: Vec<Key> = distinct.iter().map(|&i| keys[i]).collect();
        let doc = |d: usize| key_document(&self.namespace, &self.version, &items[distinct[d]]);
        let values = self.get_or_compute_batch_keyed(
            &distinct_keys,
            &doc,
            &Postcard,
            batch_size,
            |todo: &[usize], _: &mut Context| {
                let args: Vec<&A> = todo.iter().map(|&d| &items[distinct[d]]).collect();
                f(&args).map_err(|e| Failure::from_display(&e))
            },
        )?;
        Ok(slot.iter().map(|&d| values[d].clone()).collect())
    }

    /// The batched compute-once protocol for keys computed by the caller (e.g. from Python
    /// values); the keys must be distinct. Returns the value of every key, in order: completed
    /// entries are decoded by `codec`, the others computed by `compute` in batches of at most
    /// `batch_size`. `compute` receives the positions (in `keys`) of one batch and returns
    /// their values in that order; metadata it sets on the [`Context`] is recorded in every
    /// entry of the batch. `doc(i)` builds the key document of `keys[i]`, only for items that
    /// are computed. A batch whose `compute` fails, panics or returns a wrong number of values
    /// commits nothing for its items (entries of earlier batches stay) and ends the call with
    /// an error naming the batch.
    pub fn get_or_compute_batch_keyed<T, F>(
        &self,
        keys: &[Key],
        doc: &dyn Fn(usize) -> Result<serde_json::Value>,
        codec: &dyn ValueCodec<T>,
        batch_size: usize,
        mut compute: F,
    ) -> Result<Vec<T>>
    where
        F: FnMut(&[usize], &mut Context) -> std::result::Result<Vec<T>, Failure>,
    {
        if batch_size == 0 {
            return Err(Error::Invalid(format!(
                "batch task {}: batch_size is 0; give at least 1",
                self.namespace
            )));
        }
        check_distinct(keys)?;
        let mut values: Vec<Option<T>> = keys.iter().map(|_| None).collect();
        if self.mode == Mode::Off {
            let all: Vec<Todo> = (0..keys.len())
                .map(|at| Todo { at, replace: false })
                .collect();
            for batch in all.chunks(batch_size) {
                self.run_uncached_batch(batch, keys.len(), &mut compute, &mut values)?;
            }
            return Ok(unwrap_all(values));
        }
        let started = Instant::now();
        let mut pending: Vec<usize> = (0..keys.len()).collect();
        let mut watch = PollWatch::default();
        while !pending.is_empty() {
            let todo = self.look(keys, &pending, codec, &mut values)?;
            if self.mode == Mode::ReadOnly {
                for batch in todo.chunks(batch_size) {
                    self.run_uncached_batch(batch, keys.len(), &mut compute, &mut values)?;
                }
                break;
            }
            let mut busy = Vec::new();
            let mut computed_any = false;
            let mut todo = todo.into_iter();
            loop {
                let claimed = self.claim(keys, &mut todo, batch_size, &mut busy)?;
                if claimed.is_empty() {
                    break;
                }
                // Someone may have committed between our look and our claim.
                let claimed = self.recheck(keys, claimed, codec, &mut values)?;
                if !claimed.is_empty() {
                    self.compute_batch(keys, doc, codec, &mut compute, claimed, &mut values)?;
                    computed_any = true;
                }
            }
            pending = busy;
            if !pending.is_empty() && !computed_any {
                self.check_wait(keys, &pending, started)?;
                watch.wait(WAIT_STEP);
            }
        }
        for key in keys {
            context::record_dependency(|| Dependency {
                namespace: self.namespace.clone(),
                version: self.version.clone(),
                key: *key,
            });
        }
        Ok(unwrap_all(values))
    }

    /// Looks up the items at `pending` in one pass: hits are decoded into `values`; returns the
    /// items to compute.
    fn look<T>(
        &self,
        keys: &[Key],
        pending: &[usize],
        codec: &dyn ValueCodec<T>,
        values: &mut [Option<T>],
    ) -> Result<Vec<Todo>> {
        let wanted: Vec<Key> = pending.iter().map(|&i| keys[i]).collect();
        let mut todo = Vec::new();
        for (&at, found) in pending.iter().zip(self.store.lookup_many(&wanted)?) {
            match self.judge(&keys[at], found, codec)? {
                Check::Hit(v) => values[at] = Some(v),
                Check::Failed(err) => return Err(self.recorded_failure(&keys[at], err)),
                Check::Compute { replace } => todo.push(Todo { at, replace }),
            }
        }
        Ok(todo)
    }

    /// Takes leases on the next items of `todo` until `batch_size` are held; items another
    /// process holds go to `busy`.
    fn claim(
        &self,
        keys: &[Key],
        todo: &mut impl Iterator<Item = Todo>,
        batch_size: usize,
        busy: &mut Vec<usize>,
    ) -> Result<Vec<(Todo, LeaseGuard)>> {
        let mut claimed = Vec::with_capacity(batch_size);
        while claimed.len() < batch_size {
            let Some(item) = todo.next() else { break };
            match self
                .store
                .leases()
                .try_acquire(&keys[item.at], &self.namespace)
            {
                Ok(Acquire::Won(guard)) => claimed.push((item, guard)),
                Ok(Acquire::Busy(_)) => busy.push(item.at),
                // The leases taken so far are released as `claimed` drops.
                Err(e) => return Err(e),
            }
        }
        Ok(claimed)
    }

    /// Looks again at items just claimed: those completed meanwhile are loaded and released.
    fn recheck<T>(
        &self,
        keys: &[Key],
        claimed: Vec<(Todo, LeaseGuard)>,
        codec: &dyn ValueCodec<T>,
        values: &mut [Option<T>],
    ) -> Result<Vec<(Todo, LeaseGuard)>> {
        let wanted: Vec<Key> = claimed.iter().map(|(t, _)| keys[t.at]).collect();
        // On an error, every lease still held is released as its guard drops.
        let found = self.store.lookup_many(&wanted)?;
        let mut keep = Vec::with_capacity(claimed.len());
        let mut claimed = claimed.into_iter();
        for found in found {
            let (item, guard) = claimed.next().expect("one lookup per claimed item");
            match self.judge(&keys[item.at], found, codec) {
                Ok(Check::Hit(v)) => {
                    values[item.at] = Some(v);
                    release(guard);
                }
                Ok(Check::Compute { replace }) => keep.push((
                    Todo {
                        at: item.at,
                        replace: replace || item.replace,
                    },
                    guard,
                )),
                Ok(Check::Failed(err)) => return Err(self.recorded_failure(&keys[item.at], err)),
                Err(e) => return Err(e),
            }
        }
        Ok(keep)
    }

    /// Computes one claimed batch, commits each item's entry and releases the leases.
    fn compute_batch<T, F>(
        &self,
        keys: &[Key],
        doc: &dyn Fn(usize) -> Result<serde_json::Value>,
        codec: &dyn ValueCodec<T>,
        compute: &mut F,
        claimed: Vec<(Todo, LeaseGuard)>,
        values: &mut [Option<T>],
    ) -> Result<()>
    where
        F: FnMut(&[usize], &mut Context) -> std::result::Result<Vec<T>, Failure>,
    {
        let (items, guards): (Vec<Todo>, Vec<LeaseGuard>) = claimed.into_iter().unzip();
        let out = self.compute_and_commit_batch(keys, doc, codec, compute, &items, values);
        for guard in guards {
            release(guard);
        }
        out
    }

    fn compute_and_commit_batch<T, F>(
        &self,
        keys: &[Key],
        doc: &dyn Fn(usize) -> Result<serde_json::Value>,
        codec: &dyn ValueCodec<T>,
        compute: &mut F,
        items: &[Todo],
        values: &mut [Option<T>],
    ) -> Result<()>
    where
        F: FnMut(&[usize], &mut Context) -> std::result::Result<Vec<T>, Failure>,
    {
        let at: Vec<usize> = items.iter().map(|t| t.at).collect();
        let mut ctx = Context::new(self.store.backend().scratch_dir());
        let t0 = Instant::now();
        context::push_frame();
        let outcome = catch_unwind(AssertUnwindSafe(|| compute(&at, &mut ctx)));
        let dependencies = context::pop_frame();
        let computed = match outcome {
            Ok(Ok(computed)) => computed,
            Ok(Err(failure)) => {
                return Err(Error::ComputeFailed {
                    namespace: self.namespace.clone(),
                    message: format!(
                        "{} ({}; nothing was stored for its items)",
                        failure.message,
                        describe_batch(&at, keys.len())
                    ),
                })
            }
            Err(panic) => resume_unwind(panic),
        };
        self.check_length(computed.len(), &at, keys.len())?;
        if !ctx.artifacts.is_empty() {
            log::warn!(
                "runcache: batch task {} asked for artifacts; batch entries keep none",
                self.namespace
            );
        }
        // The batch's time is shared evenly by its items.
        let duration_s = t0.elapsed().as_secs_f64() / at.len() as f64;
        // Every item's blobs and key document first: a bad one stores no entry of the batch.
        let mut manifests = Vec::with_capacity(at.len());
        for (item, value) in items.iter().zip(&computed) {
            let mut manifest = self.manifest_for(keys[item.at], doc(item.at)?, Status::Completed);
            manifest.duration_s = duration_s;
            manifest.dependencies = dependencies.clone();
            manifest.metadata = ctx.metadata.clone();
            manifest.encoding = codec.name().into();
            for (role, bytes) in codec.encode(value)? {
                manifest.blobs.push(self.store.store_blob(&role, &bytes)?);
            }
            manifests.push(manifest);
        }
        for (item, manifest) in items.iter().zip(&manifests) {
            if !self.store.commit(manifest, item.replace)? {
                log::debug!(
                    "entry {} was committed by another writer first; kept theirs",
                    manifest.key
                );
            }
        }
        for (item, value) in items.iter().zip(computed) {
            values[item.at] = Some(value);
        }
        Ok(())
    }

    /// Runs one batch with no store involved (modes `off`, and `read-only` on a miss).
    fn run_uncached_batch<T, F>(
        &self,
        items: &[Todo],
        total: usize,
        compute: &mut F,
        values: &mut [Option<T>],
    ) -> Result<()>
    where
        F: FnMut(&[usize], &mut Context) -> std::result::Result<Vec<T>, Failure>,
    {
        let at: Vec<usize> = items.iter().map(|t| t.at).collect();
        let computed = run_uncached(&self.namespace, |ctx| compute(&at, ctx))?;
        self.check_length(computed.len(), &at, total)?;
        for (i, value) in at.into_iter().zip(computed) {
            values[i] = Some(value);
        }
        Ok(())
    }

    /// The length contract: one result per item of the batch.
    fn check_length(&self, got: usize, at: &[usize], total: usize) -> Result<()> {
        if got == at.len() {
            return Ok(());
        }
        Err(Error::Invalid(format!(
            "batch task {}: the function returned {got} results for {}; it must return exactly \
             one result per item, in order. Nothing was stored for this batch",
            self.namespace,
            describe_batch(at, total)
        )))
    }

    /// Gives up when the wait timeout has passed while other processes hold items.
    fn check_wait(&self, keys: &[Key], pending: &[usize], started: Instant) -> Result<()> {
        let Some(limit) = self.wait_timeout else {
            return Ok(());
        };
        if started.elapsed() < limit {
            return Ok(());
        }
        Err(Error::WaitTimeout {
            key: keys[pending[0]].to_hex(),
            holder: format!(
                "another process, which holds {} item(s) of this batch call",
                pending.len()
            ),
            waited: started.elapsed(),
        })
    }
}

/// "the batch of 3 items at positions 0, 1, 2 of 10": names a batch in errors.
fn describe_batch(at: &[usize], total: usize) -> String {
    let shown: Vec<String> = at.iter().take(8).map(usize::to_string).collect();
    let more = if at.len() > 8 { ", ..." } else { "" };
    format!(
        "the batch of {} item(s) at position(s) {}{more} of {total}",
        at.len(),
        shown.join(", ")
    )
}

fn check_distinct(keys: &[Key]) -> Result<()> {
    let mut seen = std::collections::HashSet::with_capacity(keys.len());
    match keys.iter().find(|k| !seen.insert(**k)) {
        None => Ok(()),
        Some(k) => Err(Error::Invalid(format!(
            "a batch call names key {k} twice: resolve each distinct item once"
        ))),
    }
}

fn unwrap_all<T>(values: Vec<Option<T>>) -> Vec<T> {
    values
        .into_iter()
        .map(|v| v.expect("every item of a batch call is resolved"))
        .collect()
}
