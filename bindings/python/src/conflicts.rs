//! Conflict-log entries as Python dicts (typed by the `Conflict` / `ConflictSide` TypedDicts in
//! `harmonylite/_replica.py`), the way `status()` is a dict. The dicts are expanded from the core's list in
//! `records.rs` (tests/test_conflicts.py checks their keys against the core's serde field names and the
//! TypedDicts).

use harmonylite::Conflict;
use pyo3::prelude::*;
use pyo3::types::PyList;

use crate::records::ToPy;

/// One entry as a dict with the core's field names.
pub fn conflict_to_py<'py>(py: Python<'py>, conflict: &Conflict) -> PyResult<Bound<'py, PyAny>> {
    conflict.to_py(py)
}

/// Conflicts on their way to Python (the result of `conflicts_async`).
pub struct Conflicts(pub Vec<Conflict>);

impl<'py> IntoPyObject<'py> for Conflicts {
    type Target = PyList;
    type Output = Bound<'py, PyList>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> Result<Self::Output, Self::Error> {
        let dicts = self
            .0
            .iter()
            .map(|conflict| conflict_to_py(py, conflict))
            .collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, dicts)
    }
}

/// The dispatcher's conversion for `on_conflict` callbacks.
pub fn conflict_object(py: Python<'_>, conflict: Conflict) -> PyResult<Py<PyAny>> {
    Ok(conflict_to_py(py, &conflict)?.unbind())
}

/// The entries as the core serializes them (serde), for the field-drift test: its keys are the core's
/// field names, whatever this crate converts. Not part of the public API.
pub fn conflicts_json(conflicts: &[Conflict]) -> harmonylite::Result<String> {
    serde_json::to_string(conflicts)
        .map_err(|err| harmonylite::Error::Internal(format!("conflicts do not serialize: {err}")))
}
