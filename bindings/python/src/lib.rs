//! Python binding of HarmonyLite: the native module `harmonylite._native`. The public API is the pure-Python
//! package `harmonylite` (`python/harmonylite/`), which wraps these classes.
//!
//! THE GIL RULE: every call that can wait (on the database, NATS, a timeout or another thread) runs inside
//! `py.detach`, so other Python threads keep running and a Python callback that the core triggers can
//! always take the GIL. No core thread ever waits for the GIL: callbacks run on this binding's own
//! dispatcher threads, core log records are queued and handed to `logging` by one forwarder thread, and
//! async results are converted by pyo3-async-runtimes on a blocking-pool thread.
//!
//! This crate only converts types, maps errors (on `ErrorCode`, in `errors.rs`) and plumbs callbacks;
//! replication behaviour belongs in `core/`.

use pyo3::prelude::*;
use pyo3::types::PyTuple;

mod config;
mod conflicts;
mod errors;
mod events;
mod fork;
mod log_bridge;
mod records;
mod replica;
mod sqlite_link;

#[pymodule]
#[pyo3(name = "_native")]
fn native_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    log_bridge::install();
    sqlite_link::install()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    let codes: Vec<&str> = harmonylite::ErrorCode::ALL
        .iter()
        .map(|code| code.as_str())
        .collect();
    m.add("ERROR_CODES", PyTuple::new(m.py(), codes)?)?;
    m.add("METRICS_CONTENT_TYPE", harmonylite::METRICS_CONTENT_TYPE)?;
    m.add_class::<config::Config>()?;
    m.add_class::<replica::Replica>()?;
    m.add_class::<replica::Token>()?;
    m.add_class::<events::ChangeEvent>()?;
    m.add_class::<events::Listener>()?;
    m.add_class::<events::EventStream>()?;
    m.add_function(wrap_pyfunction!(replica::open_replicated, m)?)?;
    m.add_function(wrap_pyfunction!(replica::open_replicated_async, m)?)?;
    m.add_function(wrap_pyfunction!(log_bridge::set_log_level, m)?)?;
    m.add_function(wrap_pyfunction!(errors::raise_error_for_test, m)?)?;
    m.add_function(wrap_pyfunction!(sqlite_link::sqlite_library, m)?)?;
    Ok(())
}
