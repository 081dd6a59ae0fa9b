//! Configuration: the Swift `Config` is a tree of the TOML file's keys, sent here as JSON. The core parses
//! and validates it (its errors name the key); these functions hand back every key with its value.

use crate::errors::NativeError;

fn to_json(config: &harmonylite::Config) -> Result<String, NativeError> {
    serde_json::to_string(config).map_err(|err| {
        NativeError::from(harmonylite::Error::Internal(format!(
            "configuration does not serialize: {err}"
        )))
    })
}

/// Parses and validates a JSON object with the TOML file's keys; returns every key (defaults filled in).
#[uniffi::export(name = "native_config_from_json")]
pub fn config_from_json(json: String) -> Result<String, NativeError> {
    to_json(&harmonylite::Config::from_json_str(&json)?)
}

/// Parses and validates TOML text; returns every key as JSON.
#[uniffi::export(name = "native_config_from_toml")]
pub fn config_from_toml(text: String) -> Result<String, NativeError> {
    to_json(&harmonylite::Config::from_toml_str(&text)?)
}

/// Reads, parses and validates a TOML file; returns every key as JSON.
#[uniffi::export(name = "native_config_from_toml_file")]
pub fn config_from_toml_file(path: String) -> Result<String, NativeError> {
    to_json(&harmonylite::Config::from_file(path)?)
}
