//! Conflict-log entries as Python dicts (typed by the `Conflict` / `ConflictSide` TypedDicts in
//! `harmonylite/_replica.py`), the way `status()` is a dict.
//!
//! The core's structs are destructured without `..`: a field added to `harmonylite::Conflict` or
//! `ConflictSide` stops this crate compiling until it is converted here (tests/test_conflicts.py checks the
//! dict's keys against the core's serde field names and the TypedDicts).

use harmonylite::{Conflict, ConflictSide};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};

use crate::events::value_to_py;

fn values_tuple<'py>(
    py: Python<'py>,
    values: &[harmonylite::Value],
) -> PyResult<Bound<'py, PyTuple>> {
    let values = values
        .iter()
        .map(|v| value_to_py(py, v))
        .collect::<PyResult<Vec<_>>>()?;
    PyTuple::new(py, values)
}

fn side_to_py<'py>(py: Python<'py>, side: &ConflictSide) -> PyResult<Bound<'py, PyDict>> {
    let ConflictSide { node, hlc, values } = side;
    let dict = PyDict::new(py);
    dict.set_item("node", node)?;
    dict.set_item("hlc", hlc)?;
    let columns = PyDict::new(py);
    for (column, value) in values {
        columns.set_item(column, value_to_py(py, value)?)?;
    }
    dict.set_item("values", columns)?;
    Ok(dict)
}

fn optional_side<'py>(py: Python<'py>, side: &Option<ConflictSide>) -> PyResult<Bound<'py, PyAny>> {
    match side {
        Some(side) => Ok(side_to_py(py, side)?.into_any()),
        None => Ok(py.None().into_bound(py)),
    }
}

/// One entry as a dict with the core's field names.
pub fn conflict_to_py<'py>(py: Python<'py>, conflict: &Conflict) -> PyResult<Bound<'py, PyDict>> {
    let Conflict {
        id,
        at_ms,
        table,
        pk,
        kind,
        columns,
        winner,
        loser,
        moved_to,
        detail,
    } = conflict;
    let dict = PyDict::new(py);
    dict.set_item("id", id)?;
    dict.set_item("at_ms", at_ms)?;
    dict.set_item("table", table)?;
    dict.set_item("pk", values_tuple(py, pk)?)?;
    dict.set_item("kind", kind.as_str())?;
    dict.set_item("columns", PyList::new(py, columns)?)?;
    dict.set_item("winner", optional_side(py, winner)?)?;
    dict.set_item("loser", optional_side(py, loser)?)?;
    match moved_to {
        Some(key) => dict.set_item("moved_to", values_tuple(py, key)?)?,
        None => dict.set_item("moved_to", py.None())?,
    }
    dict.set_item("detail", detail)?;
    Ok(dict)
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
    Ok(conflict_to_py(py, &conflict)?.into_any().unbind())
}

/// The entries as the core serializes them (serde), for the field-drift test: its keys are the core's
/// field names, whatever this crate converts. Not part of the public API.
pub fn conflicts_json(conflicts: &[Conflict]) -> harmonylite::Result<String> {
    serde_json::to_string(conflicts)
        .map_err(|err| harmonylite::Error::Internal(format!("conflicts do not serialize: {err}")))
}
