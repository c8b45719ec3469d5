//! `runcache._core`: the Python extension module. Python-facing hot paths (value hashing, the
//! hit path, blob IO) over the engine; the Python API in `python/runcache` wraps it.

use pyo3::prelude::*;

mod arrow_results;
mod batch;
mod blob;
mod cli;
mod codec;
mod errors;
mod hash;
mod hit;
mod run;
mod store;

/// The extension module.
#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // Python turns SIGINT into KeyboardInterrupt; the Python layer records interruptions and
    // releases leases itself, so the engine must not install its own handlers.
    runcache::lease::disable_signal_handling();
    // Engine warnings (damaged entries being recomputed, lost leases) go to Python's logging,
    // under the logger "runcache".
    let _ = pyo3_log::Logger::new(m.py(), pyo3_log::Caching::LoggersAndLevels)
        .map(|l| l.filter(log::LevelFilter::Info).install());
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("KEY_FORMAT_VERSION", runcache::key::KEY_FORMAT_VERSION)?;
    m.add_class::<store::Store>()?;
    m.add_class::<blob::Blob>()?;
    m.add_class::<hit::HitPath>()?;
    m.add_function(wrap_pyfunction!(hit::config_changed, m)?)?;
    m.add_function(wrap_pyfunction!(batch::call_batch, m)?)?;
    m.add_function(wrap_pyfunction!(store::register_version, m)?)?;
    m.add_function(wrap_pyfunction!(store::registered_version, m)?)?;
    m.add_function(wrap_pyfunction!(cli::cli_main, m)?)?;
    m.add_function(wrap_pyfunction!(run::run_command, m)?)?;
    errors::register(m)?;
    hash::register(m)?;
    Ok(())
}
