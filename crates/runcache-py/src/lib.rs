//! `runcache._core`: the Python extension module. Python-facing hot paths (value hashing, the
//! hit path, blob IO) over the engine; the Python API in `python/runcache` wraps it.

use pyo3::prelude::*;

mod hash;

/// The extension module.
#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // Python turns SIGINT into KeyboardInterrupt; the Python layer records interruptions and
    // releases leases itself, so the engine must not install its own handlers.
    runcache::lease::disable_signal_handling();
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("KEY_FORMAT_VERSION", runcache::key::KEY_FORMAT_VERSION)?;
    hash::register(m)?;
    Ok(())
}
