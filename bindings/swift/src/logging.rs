//! The core logs through `tracing`; a Swift app has no subscriber, so logs are dropped unless the app asks
//! for them on stderr.

use crate::errors::NativeError;

/// Writes the core's logs to stderr, filtered like `RUST_LOG` (`"info"`, `"harmonylite=debug"`).
/// Only the first call in a process installs the writer; later calls return `false`.
#[uniffi::export(name = "native_enable_logging")]
pub fn enable_logging(filter: String) -> Result<bool, NativeError> {
    let filter = tracing_subscriber::EnvFilter::try_new(&filter).map_err(|err| {
        NativeError::from(harmonylite::Error::Config {
            field: "logging".into(),
            reason: format!("`{filter}` is not a log filter: {err}"),
        })
    })?;
    Ok(tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init()
        .is_ok())
}
