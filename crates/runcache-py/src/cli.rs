//! `runcache._core.cli_main`: the `runcache` command inside the Python package, so installing
//! the package installs the CLI (`runcache` console script, `python -m runcache`).

use pyo3::prelude::*;

/// Runs the `runcache` command with `argv` (the arguments after the program name, like
/// `sys.argv[1:]`) and returns its exit code. Output goes straight to file descriptors 1 and 2.
/// Usage errors return 2 and `--help` returns 0: it never exits the interpreter.
#[pyfunction]
pub fn cli_main(py: Python<'_>, argv: Vec<String>) -> i32 {
    let args = std::iter::once("runcache".to_string()).chain(argv);
    py.detach(|| runcache_cli::run(args))
}
