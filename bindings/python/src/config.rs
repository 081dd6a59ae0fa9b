//! `Config`: the core's configuration, parsed and validated by the core (JSON from a dict, or TOML).

use pyo3::prelude::*;

use crate::errors::{core_error, to_py_err};

/// A validated HarmonyLite configuration (use `harmonylite.Config`, which wraps this).
#[pyclass(frozen, module = "harmonylite._native")]
pub struct Config {
    pub(crate) inner: harmonylite::Config,
}

#[pymethods]
impl Config {
    /// Parses a JSON object with the TOML file's keys; the error names the bad key.
    #[staticmethod]
    fn from_json(py: Python<'_>, text: &str) -> PyResult<Config> {
        harmonylite::Config::from_json_str(text)
            .map(|inner| Config { inner })
            .map_err(|err| to_py_err(py, err))
    }

    /// Parses TOML text; the error names the bad key.
    #[staticmethod]
    fn from_toml(py: Python<'_>, text: &str) -> PyResult<Config> {
        harmonylite::Config::from_toml_str(text)
            .map(|inner| Config { inner })
            .map_err(|err| to_py_err(py, err))
    }

    /// Reads and parses a TOML file.
    #[staticmethod]
    fn from_file(py: Python<'_>, path: std::path::PathBuf) -> PyResult<Config> {
        py.detach(move || harmonylite::Config::from_file(path))
            .map(|inner| Config { inner })
            .map_err(|err| to_py_err(py, err))
    }

    /// Every key with its value, as JSON.
    fn to_json(&self) -> PyResult<String> {
        serde_json::to_string(&self.inner).map_err(|err| {
            core_error(harmonylite::Error::Internal(format!(
                "configuration does not serialize: {err}"
            )))
        })
    }
}
