//! Caching any shell command: `runcache run -- CMD ARGS...`, `rc.run([...])` and [`run`].
//!
//! A command's key ([`key`]) covers its argv, its working directory, the content of its declared
//! inputs, named environment variables, its declared outputs and the content of its executable.
//! On a miss the command runs ([`exec`]) under the entry's lease, so identical commands started
//! at once on any machine sharing the store run it once; its stdout and stderr (streamed to
//! files, never held in memory) and its declared outputs ([`outputs`]) become the entry's
//! artifacts, its exit status and output tree the entry's metadata. A hit, or a recorded failure,
//! is replayed ([`replay`]): stdout and stderr byte for byte, outputs restored atomically with
//! their modes, and the recorded exit status returned. [`explain`] says why a command misses.
//!
//! Sits above the engine (it is a [`Task`](crate::Task) whose value lives in artifacts); nothing
//! in the engine imports it.

mod exec;
mod explain;
mod key;
mod outputs;
mod replay;

use std::borrow::Cow;
use std::cell::Cell;
use std::ffi::OsString;
use std::io::Write;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::engine::{Failure, Mode, Store, ValueCodec};
use crate::error::{Error, IoContext, Result};
use crate::key::{compute_key, key_document, Key};
use crate::manifest::{Manifest, Status};

pub use crate::key::Difference;
pub use explain::{explain, Explanation};
pub use outputs::{EntryKind, TreeEntry};

/// Artifact holding the command's stdout.
pub const STDOUT_ARTIFACT: &str = "stdout";
/// Artifact holding the command's stderr.
pub const STDERR_ARTIFACT: &str = "stderr";
/// Metadata field holding the [`RunRecord`] (exit status, output tree).
pub const RECORD_METADATA: &str = "runcache.run";
/// The manifest encoding of a command's entry.
pub const ENCODING: &str = "runcache.run";

/// One command to run through the cache, and how.
#[derive(Clone, Debug)]
pub struct RunSpec {
    /// The program and its arguments (the program is looked up on `PATH` unless it has a `/`).
    pub argv: Vec<OsString>,
    /// Where it runs; part of the key unless `ignore_cwd`.
    pub cwd: PathBuf,
    /// Leave the working directory out of the key.
    pub ignore_cwd: bool,
    /// Files, directories or glob patterns (relative to `cwd`) whose content is part of the key.
    pub inputs: Vec<String>,
    /// Files or directories (inside `cwd`) the command writes: stored, and restored on a hit.
    pub outputs: Vec<PathBuf>,
    /// Environment variables whose values are part of the key (never the whole environment).
    pub env: Vec<String>,
    /// A version string of the user's choosing; a new one gives new keys.
    pub version: String,
    /// Include the content of the executable in the key.
    pub hash_executable: bool,
    /// The namespace of the entries; default: the program's file name.
    pub name: Option<String>,
    /// How the store is used (`Retry` reruns a recorded failure, `Force` always reruns).
    pub mode: Mode,
    /// An entry (completed or failed) older than this is rerun and replaced.
    pub ttl: Option<Duration>,
    /// Record a non-zero exit (replayed by later calls until `Retry`); if false a failing
    /// command leaves no entry and the next call runs it again.
    pub cache_failures: bool,
}

impl RunSpec {
    /// A spec for `argv` run in the current directory, with the defaults of `runcache run`.
    pub fn new<I: IntoIterator<Item = S>, S: Into<OsString>>(argv: I) -> Result<Self> {
        let cwd = std::env::current_dir().at(".")?;
        Ok(RunSpec {
            argv: argv.into_iter().map(Into::into).collect(),
            cwd,
            ignore_cwd: false,
            inputs: Vec::new(),
            outputs: Vec::new(),
            env: Vec::new(),
            version: "0".into(),
            hash_executable: true,
            name: None,
            mode: Mode::Cached,
            ttl: None,
            cache_failures: true,
        })
    }

    /// The namespace: `name`, or the program's file name.
    pub fn namespace(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            let program = Path::new(self.argv.first().map(|a| a.as_os_str()).unwrap_or_default());
            program
                .file_name()
                .unwrap_or(program.as_os_str())
                .to_string_lossy()
                .into_owned()
        })
    }

    /// Checks the spec and puts it in the form the key is built from: `cwd` absolute and free
    /// of symbolic links, each output a path relative to it that stays inside it.
    fn normalized(&self) -> Result<RunSpec> {
        if self.argv.is_empty() || self.argv[0].is_empty() {
            return Err(Error::Invalid(
                "no command given: write it after `--`, e.g. `runcache run -- make all`".into(),
            ));
        }
        let mut spec = self.clone();
        spec.cwd = self.cwd.canonicalize().at(&self.cwd)?;
        spec.outputs = self
            .outputs
            .iter()
            .map(|o| inside(&spec.cwd, o))
            .collect::<Result<_>>()?;
        for (i, a) in spec.outputs.iter().enumerate() {
            if let Some(b) = spec.outputs[..i]
                .iter()
                .find(|b| a.starts_with(b) || b.starts_with(a))
            {
                return Err(Error::Invalid(format!(
                    "the outputs `{}` and `{}` overlap: declare each file or directory once",
                    b.display(),
                    a.display()
                )));
            }
        }
        Ok(spec)
    }
}

/// `path` (relative to `cwd`, or absolute) as a path relative to `cwd`, refused if it leaves it.
fn inside(cwd: &Path, path: &Path) -> Result<PathBuf> {
    let joined = cwd.join(path);
    let Ok(below) = joined.strip_prefix(cwd) else {
        return Err(outside(cwd, path));
    };
    let mut rel = PathBuf::new();
    for c in below.components() {
        match c {
            Component::Normal(n) => rel.push(n),
            Component::CurDir => {}
            Component::ParentDir if rel.pop() => {}
            _ => return Err(outside(cwd, path)),
        }
    }
    if rel.as_os_str().is_empty() {
        return Err(outside(cwd, path));
    }
    Ok(rel)
}

fn outside(cwd: &Path, path: &Path) -> Error {
    Error::Invalid(format!(
        "the output `{}` is not inside the working directory `{}`: declare outputs below it \
         (run from a parent directory, or write the file there)",
        path.display(),
        cwd.display()
    ))
}

/// How the command ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitState {
    /// Its exit code, if it exited.
    pub code: Option<i32>,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
}

impl ExitState {
    /// True for exit code 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// The status a shell reports: the exit code, or 128 + the signal.
    pub fn exit_code(&self) -> i32 {
        self.code.unwrap_or_else(|| 128 + self.signal.unwrap_or(0))
    }
}

/// What a command's entry records in its metadata ([`RECORD_METADATA`]) besides its stdout and
/// stderr artifacts.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunRecord {
    /// How the command ended.
    pub exit: ExitState,
    /// Every file, directory and link of its declared outputs, parents before children.
    pub outputs: Vec<TreeEntry>,
}

/// Where a run's stdout and stderr go (live, or replayed). The CLI passes its own file
/// descriptors 1 and 2; the Python API passes files it reads back.
pub struct Streams<'a> {
    /// Receives the command's stdout.
    pub stdout: &'a mut (dyn Write + Send),
    /// Receives the command's stderr.
    pub stderr: &'a mut (dyn Write + Send),
}

/// What [`run`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunResult {
    /// How the command ended (now, or when its entry was recorded).
    pub exit: ExitState,
    /// True if the result was replayed from the store rather than run now.
    pub replayed: bool,
    /// The command's key.
    pub key: Key,
}

/// A checked spec with its namespace, key and key material, ready to run or explain.
pub(crate) struct Prepared {
    spec: RunSpec,
    namespace: String,
    key: Key,
    material: key::CommandKey,
}

impl Prepared {
    /// The readable key document (built only when an entry is written or explained).
    fn doc(&self) -> Result<serde_json::Value> {
        key_document(&self.namespace, &self.spec.version, &self.material)
    }
}

/// Checks `spec`, reads its inputs and executable, and computes its key.
pub(crate) fn prepare(spec: &RunSpec) -> Result<Prepared> {
    let spec = spec.normalized()?;
    let namespace = spec.namespace();
    let material = key::CommandKey::of(&spec)?;
    let key = compute_key(&namespace, &spec.version, &material)?;
    Ok(Prepared {
        spec,
        namespace,
        key,
        material,
    })
}

/// The entry's value as the compute-once protocol sees it.
enum Outcome {
    /// Run now; committed only if `commit` (a refused run leaves no entry).
    Ran { commit: bool },
    /// Found stored.
    Stored(Box<Manifest>),
}

/// The error the codec gives for a refused run: it stops the commit before anything is stored.
const REFUSED: &str = "runcache: this run is not to be stored";

struct Codec;

impl ValueCodec<Outcome> for Codec {
    fn name(&self) -> &str {
        ENCODING
    }
    fn encode<'v>(&self, value: &'v Outcome) -> Result<Vec<(String, Cow<'v, [u8]>)>> {
        match value {
            Outcome::Ran { commit: false } => Err(Error::Invalid(REFUSED.into())),
            _ => Ok(Vec::new()),
        }
    }
    fn decode(&self, _store: &Store, manifest: &Manifest) -> Result<Outcome> {
        check_encoding(manifest)?;
        Ok(Outcome::Stored(Box::new(manifest.clone())))
    }
}

fn check_encoding(manifest: &Manifest) -> Result<()> {
    if manifest.encoding != ENCODING && manifest.status == Status::Completed {
        return Err(Error::Invalid(format!(
            "entry {} of {} was not written by `runcache run` (encoding `{}`); give another --name",
            manifest.key, manifest.namespace, manifest.encoding
        )));
    }
    Ok(())
}

/// Runs `spec`'s command through `store`: replays a stored result, else runs the command (once
/// among all concurrent identical calls), stores what it produced and returns how it ended.
/// Stdout and stderr, live or replayed, go to `streams`.
///
/// Errors (nothing is committed): an invalid spec (no command, an output outside the working
/// directory, a missing input), a command that cannot be started, a declared output missing
/// after exit 0, or a store error.
pub fn run(store: &Store, spec: &RunSpec, streams: Streams<'_>) -> Result<RunResult> {
    let prepared = prepare(spec)?;
    let (spec, namespace, key) = (&prepared.spec, &prepared.namespace, prepared.key);
    let mut task = store
        .task(namespace.clone())
        .version(spec.version.clone())
        .mode(spec.mode);
    if let Some(ttl) = spec.ttl {
        let ttl_ms = ttl.as_millis() as u64;
        task = task.validator(std::sync::Arc::new(move |m: &Manifest| {
            older_than(m, ttl_ms).then(|| "it is older than its time to live (--ttl)".into())
        }));
        // A recorded failure past its time to live is rerun too (validators judge completed
        // entries only).
        if spec.mode == Mode::Cached {
            if let Some(m) = store.manifest(&key)? {
                if m.status == Status::Failed && older_than(&m, ttl_ms) {
                    task = task.mode(Mode::Retry);
                }
            }
        }
    }
    let Streams { stdout, stderr } = streams;
    let ran = Cell::new(None);
    // Why a run was refused (nothing committed), returned to the caller as it is.
    let refused: Cell<Option<Error>> = Cell::new(None);
    let doc_fn = || prepared.doc();
    let result = task.get_or_compute_keyed(key, &doc_fn, &Codec, |ctx| {
        let refuse = |e: Error| {
            refused.set(Some(e));
            Ok(Outcome::Ran { commit: false })
        };
        let (out_path, err_path) = match (
            ctx.artifact_path(STDOUT_ARTIFACT),
            ctx.artifact_path(STDERR_ARTIFACT),
        ) {
            (Ok(o), Ok(e)) => (o, e),
            (Err(e), _) | (_, Err(e)) => return refuse(e),
        };
        let exit = match exec::execute(spec, &out_path, &err_path, &mut *stdout, &mut *stderr) {
            Ok(exit) => exit,
            Err(e) => return refuse(e),
        };
        ran.set(Some(exit));
        let outputs = if exit.success() {
            match outputs::capture(spec, ctx) {
                Ok(outputs) => outputs,
                Err(e) => return refuse(e),
            }
        } else if !spec.cache_failures {
            return Ok(Outcome::Ran { commit: false });
        } else {
            Vec::new()
        };
        if let Err(e) = ctx.set_metadata(RECORD_METADATA, RunRecord { exit, outputs }) {
            return refuse(e);
        }
        if exit.success() {
            return Ok(Outcome::Ran { commit: true });
        }
        Err(Failure {
            error_type: "exit status".into(),
            message: format!(
                "`{}` ended with status {}",
                spec.argv[0].to_string_lossy(),
                exit.exit_code()
            ),
            traceback: String::new(),
            // Stopped from outside: the next call runs it again.
            interrupted: matches!(exit.signal, Some(libc::SIGINT | libc::SIGTERM)),
        })
    });
    if let Some(e) = refused.take() {
        return Err(e);
    }
    let ran_now = |exit| RunResult {
        exit,
        replayed: false,
        key,
    };
    let manifest = match (result, ran.get()) {
        (Ok(Outcome::Ran { .. }), Some(exit)) => return Ok(ran_now(exit)),
        (Err(Error::ComputeFailed { .. }), Some(exit)) => return Ok(ran_now(exit)),
        (Err(Error::Invalid(m)), Some(exit)) if m == REFUSED => return Ok(ran_now(exit)),
        (Ok(Outcome::Stored(manifest)), _) => *manifest,
        (Err(Error::RecordedFailure { .. }), _) => store.manifest(&key)?.ok_or_else(|| {
            Error::Invalid(format!(
                "the failed entry {key} of {namespace} vanished while being read; run again"
            ))
        })?,
        (Ok(Outcome::Ran { .. }), None) => unreachable!("a run that returns has run"),
        (Err(e), _) => return Err(e),
    };
    let exit = replay::replay(store, &manifest, &spec.cwd, Streams { stdout, stderr })?;
    Ok(RunResult {
        exit,
        replayed: true,
        key,
    })
}

fn older_than(m: &Manifest, ttl_ms: u64) -> bool {
    crate::engine::unix_ms().saturating_sub(m.created_unix_ms) > ttl_ms
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_must_stay_inside_the_working_directory() {
        let cwd = Path::new("/w/d");
        assert_eq!(inside(cwd, Path::new("out/a")).unwrap(), Path::new("out/a"));
        assert_eq!(
            inside(cwd, Path::new("/w/d/x/../y")).unwrap(),
            Path::new("y")
        );
        for bad in ["../e", "/etc/passwd", ".", "a/../..", "/w/d"] {
            assert!(inside(cwd, Path::new(bad)).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn overlapping_outputs_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = RunSpec::new(["true"]).unwrap();
        spec.cwd = dir.path().into();
        spec.outputs = vec!["out".into(), "out/a".into()];
        let e = spec.normalized().unwrap_err().to_string();
        assert!(e.contains("overlap"), "{e}");
    }

    #[test]
    fn exit_codes_follow_the_shell() {
        let killed = ExitState {
            code: None,
            signal: Some(9),
        };
        assert_eq!(killed.exit_code(), 137);
        assert!(!killed.success());
    }
}
