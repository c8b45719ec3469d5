//! Replaying a stored command: its outputs restored, then its stdout and stderr streamed back
//! byte for byte (in chunks, verified as they are read), and its recorded exit status.

use std::path::Path;

use super::{check_encoding, outputs, ExitState, RunRecord, Streams, RECORD_METADATA};
use super::{STDERR_ARTIFACT, STDOUT_ARTIFACT};
use crate::engine::Store;
use crate::error::{Error, Result};
use crate::manifest::Manifest;

/// Replays the entry `manifest` (completed, or a recorded failure) of a command run in `cwd`.
pub(crate) fn replay(
    store: &Store,
    manifest: &Manifest,
    cwd: &Path,
    streams: Streams<'_>,
) -> Result<ExitState> {
    check_encoding(manifest)?;
    let record = record_of(manifest)?;
    if record.exit.success() {
        outputs::restore(store, manifest, cwd, &record.outputs)?;
    }
    for (name, sink) in [
        (STDOUT_ARTIFACT, streams.stdout),
        (STDERR_ARTIFACT, streams.stderr),
    ] {
        if let Some(a) = manifest.artifacts.iter().find(|a| a.name == name) {
            store.copy_artifact(manifest, a, sink)?;
            sink.flush()
                .map_err(|e| Error::Invalid(format!("cannot write the replayed {name}: {e}")))?;
        }
    }
    Ok(record.exit)
}

/// The [`RunRecord`] of a command's entry.
pub(crate) fn record_of(manifest: &Manifest) -> Result<RunRecord> {
    let value = manifest.metadata.get(RECORD_METADATA).ok_or_else(|| {
        Error::Invalid(format!(
            "entry {} of {} has no record of a command run (it was not written by `runcache \
             run`); give another --name, or delete it with `runcache rm {}`",
            manifest.key, manifest.namespace, manifest.key
        ))
    })?;
    serde_json::from_value(value.clone()).map_err(|e| {
        Error::Invalid(format!(
            "entry {} has an unreadable run record ({e}); delete it with `runcache rm {}`",
            manifest.key, manifest.key
        ))
    })
}
