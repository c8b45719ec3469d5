//! `rc.run`: a shell command through the cache ([`runcache::run`]), for the Python API.

use std::ffi::OsString;
use std::fs::File;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::Duration;

use pyo3::prelude::*;

use crate::errors::to_py;
use crate::store::Store;

/// Where one stream goes: a file at this path, or (`None`) this process's own descriptor.
fn sink(path: Option<PathBuf>, fd: std::io::Result<std::os::fd::OwnedFd>) -> PyResult<File> {
    Ok(match path {
        Some(p) => File::create(&p)?,
        None => File::from(fd?),
    })
}

/// Runs `argv` through `store` (see `runcache.run`). Returns `(exit_code, signal, replayed,
/// key)`. Stdout and stderr go to the files `stdout` and `stderr` when given, else to file
/// descriptors 1 and 2. Runs with the interpreter released.
#[pyfunction]
#[pyo3(signature = (store, argv, cwd, inputs, outputs, env, version, name, mode, ttl, ignore_cwd,
                    hash_executable, cache_failures, stdout = None, stderr = None))]
#[allow(clippy::too_many_arguments)]
pub fn run_command(
    py: Python<'_>,
    store: &Store,
    argv: Vec<OsString>,
    cwd: PathBuf,
    inputs: Vec<String>,
    outputs: Vec<PathBuf>,
    env: Vec<String>,
    version: String,
    name: Option<String>,
    mode: &str,
    ttl: Option<f64>,
    ignore_cwd: bool,
    hash_executable: bool,
    cache_failures: bool,
    stdout: Option<PathBuf>,
    stderr: Option<PathBuf>,
) -> PyResult<(Option<i32>, Option<i32>, bool, String)> {
    let mut spec = runcache::run::RunSpec::new(argv).map_err(to_py)?;
    spec.cwd = cwd;
    spec.inputs = inputs;
    spec.outputs = outputs;
    spec.env = env;
    spec.version = version;
    spec.name = name;
    spec.mode = mode.parse().map_err(to_py)?;
    spec.ttl = ttl.map(Duration::from_secs_f64);
    spec.ignore_cwd = ignore_cwd;
    spec.hash_executable = hash_executable;
    spec.cache_failures = cache_failures;
    let mut out = sink(stdout, std::io::stdout().as_fd().try_clone_to_owned())?;
    let mut err = sink(stderr, std::io::stderr().as_fd().try_clone_to_owned())?;
    let engine = store.engine().clone();
    let r = py
        .detach(|| {
            runcache::run::run(
                &engine,
                &spec,
                runcache::run::Streams {
                    stdout: &mut out,
                    stderr: &mut err,
                },
            )
        })
        .map_err(to_py)?;
    Ok((r.exit.code, r.exit.signal, r.replayed, r.key.to_hex()))
}
