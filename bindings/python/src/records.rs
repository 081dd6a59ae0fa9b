//! The core's records in Python, expanded from the core's list (`harmonylite::records!`, ADR 0019): the
//! `ChangeEvent` class's getters, `to_dict`, `__eq__` and `__repr__`, and conflict-log entries as dicts with
//! the core's field names. `status()` needs nothing here: it is the core's own serde JSON. A field added in
//! the core appears here; one of a type [`ToPy`] cannot convert stops the crate compiling
//! (`tests/test_conflicts.py` and the status tests also compare the keys with the core's serde output and the
//! TypedDicts).

use harmonylite::Value;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};

use crate::events::{value_to_py, ChangeEvent};

/// A core value as a Python object: ints, strs, bools, `None`; key values as tuples, lists of names as
/// lists, column values and records as dicts, enums as their stable names.
pub(crate) trait ToPy {
    fn to_py<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>>;
}

macro_rules! plain {
    ($($t:ty),*) => {
        $(impl ToPy for $t {
            fn to_py<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
                Ok(self.into_pyobject(py)?.to_owned().into_any())
            }
        })*
    };
}
plain!(u32, u64, i64, bool, String);

impl<T: ToPy> ToPy for Option<T> {
    fn to_py<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        match self {
            Some(value) => value.to_py(py),
            None => Ok(py.None().into_bound(py)),
        }
    }
}

impl ToPy for Vec<String> {
    fn to_py<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        Ok(PyList::new(py, self)?.into_any())
    }
}

/// Key values: a tuple.
impl ToPy for Vec<Value> {
    fn to_py<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let values = self
            .iter()
            .map(|v| value_to_py(py, v))
            .collect::<PyResult<Vec<_>>>()?;
        Ok(PyTuple::new(py, values)?.into_any())
    }
}

/// Column values: a dict of column name to value.
impl ToPy for Vec<(String, Value)> {
    fn to_py<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let columns = PyDict::new(py);
        for (column, value) in self {
            columns.set_item(column, value_to_py(py, value)?)?;
        }
        Ok(columns.into_any())
    }
}

/// Equality of two field values for `ChangeEvent.__eq__`: REAL values compare by their bits (as the core's
/// `Value::same_as`), so an event equals itself even when it holds NaN.
pub(crate) trait Same {
    fn same(&self, other: &Self) -> bool;
}

macro_rules! same_by_eq {
    ($($t:ty),*) => {
        $(impl Same for $t {
            fn same(&self, other: &$t) -> bool {
                self == other
            }
        })*
    };
}
same_by_eq!(u64, bool, String, harmonylite::ChangeOp);

impl Same for Vec<Value> {
    fn same(&self, other: &Vec<Value>) -> bool {
        self.len() == other.len() && self.iter().zip(other).all(|(a, b)| a.same_as(b))
    }
}

macro_rules! py_record {
    // An enum: its stable name.
    (
        $(#[doc = $doc:literal])*
        enum $name:ident ($core:path) [$($derive:tt)*] {
            $( $(#[doc = $vdoc:literal])* $variant:ident = $wire:literal, )*
        }
    ) => {
        impl ToPy for $core {
            fn to_py<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
                Ok(self.as_str().into_pyobject(py)?.into_any())
            }
        }
    };
    // `status()` and its parts reach Python as the core's serde JSON.
    ($(#[doc = $doc:literal])* record Status $($rest:tt)*) => {};
    ($(#[doc = $doc:literal])* record ShardStatus $($rest:tt)*) => {};
    ($(#[doc = $doc:literal])* record PausedTable $($rest:tt)*) => {};
    ($(#[doc = $doc:literal])* record BrokerDataLoss $($rest:tt)*) => {};
    ($(#[doc = $doc:literal])* record Divergence $($rest:tt)*) => {};
    ($(#[doc = $doc:literal])* record SnapshotProgress $($rest:tt)*) => {};
    // The `ChangeEvent` class: a getter per field, and `to_dict`, `__eq__`, `__repr__` over all of them.
    (
        $(#[doc = $doc:literal])*
        record ChangeEvent ($core:path) [$($derive:tt)*] {
            $(
                $(#[doc = $fdoc:literal])*
                $field:ident : [$($ty:tt)*] $(serde($($serde:tt)*))?,
            )*
        }
    ) => {
        #[pymethods]
        impl ChangeEvent {
            $(
                $(#[doc = $fdoc])*
                #[getter]
                fn $field<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
                    self.event.$field.to_py(py)
                }
            )*

            /// The fields as a dict.
            fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
                let dict = PyDict::new(py);
                $( dict.set_item(stringify!($field), self.event.$field.to_py(py)?)?; )*
                Ok(dict)
            }

            fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
                other.cast::<ChangeEvent>().is_ok_and(|other| {
                    let (a, b) = (&self.event, &other.get().event);
                    true $( && a.$field.same(&b.$field) )*
                })
            }

            fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
                let fields: Vec<String> = vec![$(
                    format!("{}={}", stringify!($field), self.event.$field.to_py(py)?.repr()?),
                )*];
                Ok(format!("ChangeEvent({})", fields.join(", ")))
            }
        }
    };
    // Any other record (a conflict-log entry, its sides): a dict with the core's field names.
    (
        $(#[doc = $doc:literal])*
        record $name:ident ($core:path) [$($derive:tt)*] {
            $(
                $(#[doc = $fdoc:literal])*
                $field:ident : [$($ty:tt)*] $(serde($($serde:tt)*))?,
            )*
        }
    ) => {
        impl ToPy for $core {
            fn to_py<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
                let dict = PyDict::new(py);
                $( dict.set_item(stringify!($field), self.$field.to_py(py)?)?; )*
                Ok(dict.into_any())
            }
        }
    };
}

harmonylite::records!(py_record);
