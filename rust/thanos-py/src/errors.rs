//! Core errors and panics to the Python exceptions of `thanos_rs.errors`.
//!
//! The classes are defined in Python (so `InputError` can also be a
//! `ValueError`) and looked up when an error is raised.

use std::any::Any;

use pyo3::prelude::*;
use pyo3::types::PyType;
use thanos_core::PruneError;

fn raise(py: Python<'_>, class: &str, msg: String) -> PyErr {
    let found = py
        .import("thanos_rs.errors")
        .and_then(|m| m.getattr(class))
        .and_then(|c| c.cast_into::<PyType>().map_err(PyErr::from));
    match found {
        Ok(ty) => PyErr::from_type(ty, msg),
        Err(e) => e,
    }
}

pub fn to_pyerr(py: Python<'_>, err: PruneError) -> PyErr {
    let class = match err {
        PruneError::InvalidInput(_) => "InputError",
        PruneError::NotPositiveDefinite { .. } => "HessianError",
    };
    raise(py, class, err.to_string())
}

/// A panic in the core is a bug; it reaches Python as a ThanosError, not a crash.
pub fn panic_to_pyerr(py: Python<'_>, payload: Box<dyn Any + Send>) -> PyErr {
    let what = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    raise(py, "ThanosError", format!("internal error in the Rust kernel (please report): {what}"))
}
