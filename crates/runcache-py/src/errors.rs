//! Python exceptions for engine errors.

use pyo3::create_exception;
use pyo3::exceptions::{
    PyKeyError, PyOSError, PyRuntimeError, PyTimeoutError, PyTypeError, PyValueError,
};
use pyo3::prelude::*;

create_exception!(
    _core,
    RuncacheError,
    PyRuntimeError,
    "Base class of runcache's errors."
);
create_exception!(
    _core,
    StoreError,
    RuncacheError,
    "The store cannot be opened, read or written (the message says why and what to do)."
);
create_exception!(
    _core,
    CorruptEntryError,
    StoreError,
    "A stored entry is damaged; it is treated as missing and recomputed."
);
create_exception!(
    _core,
    SignatureError,
    StoreError,
    "A signing key is configured and a stored entry is unsigned or badly signed: it is refused \
     (never loaded, never recomputed over). Delete it (`runcache rm KEY`) or fix the key."
);
create_exception!(
    _core,
    RecordedFailure,
    RuncacheError,
    "A computation failed earlier and its failure is recorded; use mode='retry' to recompute."
);

/// Converts an engine error into the closest Python exception.
pub fn to_py(e: runcache::Error) -> PyErr {
    use runcache::Error as E;
    let msg = e.to_string();
    match e {
        E::Unhashable { .. } => PyTypeError::new_err(msg),
        E::WaitTimeout { .. } => PyTimeoutError::new_err(msg),
        E::NotFound { .. } => PyKeyError::new_err(msg),
        E::Invalid(_) => PyValueError::new_err(msg),
        E::Io { .. } => PyOSError::new_err(msg),
        E::Corrupt { .. } => CorruptEntryError::new_err(msg),
        E::Signature { .. } => SignatureError::new_err(msg),
        E::RecordedFailure {
            namespace,
            key,
            error_type,
            message,
        } => RecordedFailure::new_err((msg, namespace, key, error_type, message)),
        _ => StoreError::new_err(msg),
    }
}

/// Registers the exception classes on the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("RuncacheError", py.get_type::<RuncacheError>())?;
    m.add("StoreError", py.get_type::<StoreError>())?;
    m.add("CorruptEntryError", py.get_type::<CorruptEntryError>())?;
    m.add("SignatureError", py.get_type::<SignatureError>())?;
    m.add("RecordedFailure", py.get_type::<RecordedFailure>())?;
    Ok(())
}
