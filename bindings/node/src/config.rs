//! `cfg` as JavaScript gives it: nothing (defaults), a TOML file path, or a plain object whose keys are
//! the TOML keys in camelCase (`nodeId`, `replicationLog.shards`) or as written in TOML (`node_id`).
//! Errors name the key as the user wrote it.

use std::collections::HashMap;

use harmonylite::Config;
use serde_json::{Map, Number, Value};

pub(crate) enum JsConfig {
    Default,
    TomlFile(String),
    Object(Value),
}

impl JsConfig {
    /// Builds the core config, and the key names to report errors with. Reads the TOML file when
    /// there is one: call it off the JavaScript thread.
    pub(crate) fn load(self) -> harmonylite::Result<(Config, KeyNames)> {
        match self {
            JsConfig::Default => Ok((Config::default(), KeyNames::default())),
            JsConfig::TomlFile(path) => Ok((Config::from_file(path)?, KeyNames::toml())),
            JsConfig::Object(value) => {
                let mut names = KeyNames::default();
                let value = to_toml_keys(value, "", "", &mut names)?;
                match Config::from_json_str(&value.to_string()) {
                    Ok(config) => Ok((config, names)),
                    Err(err) => Err(names.rename(err)),
                }
            }
        }
    }
}

/// The user's spelling of every key path, by its TOML spelling (`replication_log.shards` →
/// `replicationLog.shards`), so that `CONFIG` errors name the key as the user wrote it.
#[derive(Default)]
pub(crate) struct KeyNames {
    by_toml_path: HashMap<String, String>,
    /// The config came from a TOML file: its spelling is the core's.
    toml: bool,
}

impl KeyNames {
    fn toml() -> KeyNames {
        KeyNames {
            by_toml_path: HashMap::new(),
            toml: true,
        }
    }

    /// Renames the key in a `CONFIG` error (from parsing, or from opening with this config).
    pub(crate) fn rename(&self, err: harmonylite::Error) -> harmonylite::Error {
        if self.toml {
            return err;
        }
        match err {
            harmonylite::Error::Config { field, reason } => harmonylite::Error::Config {
                field: self.user_path(&field),
                reason,
            },
            other => other,
        }
    }

    /// The key path as the user wrote it; a key they did not write (a default that failed validation)
    /// is shown in camelCase, the object form's spelling.
    fn user_path(&self, toml_path: &str) -> String {
        // Not a key path: an environment variable (HARMONYLITE_NATS_SERVER) or an argument.
        if !toml_path.starts_with(|c: char| c.is_ascii_lowercase()) {
            return toml_path.to_string();
        }
        if let Some(name) = self.by_toml_path.get(toml_path) {
            return name.clone();
        }
        // Longest written prefix, then the rest (an array index such as `[0]`, or unwritten keys).
        let mut end = toml_path.len();
        while let Some(cut) = toml_path[..end].rfind(['.', '[']) {
            if let Some(name) = self.by_toml_path.get(&toml_path[..cut]) {
                return format!("{name}{}", camel_path(&toml_path[cut..]));
            }
            end = cut;
        }
        camel_path(toml_path)
    }
}

fn to_toml_keys(
    value: Value,
    toml_prefix: &str,
    user_prefix: &str,
    names: &mut KeyNames,
) -> harmonylite::Result<Value> {
    Ok(match value {
        Value::Object(entries) => {
            let mut converted = Map::new();
            for (key, value) in entries {
                // `null` means "not set", as `undefined` does.
                if value.is_null() {
                    continue;
                }
                let toml_key = snake_case(&key);
                let toml_path = join(toml_prefix, &toml_key);
                let user_path = join(user_prefix, &key);
                if converted.contains_key(&toml_key) {
                    return Err(crate::error::bad_argument(
                        &user_path,
                        "the same key is given twice (in camelCase and snake_case)",
                    ));
                }
                let value = to_toml_keys(value, &toml_path, &user_path, names)?;
                names.by_toml_path.insert(toml_path, user_path);
                converted.insert(toml_key, value);
            }
            Value::Object(converted)
        }
        Value::Array(items) => Value::Array(
            items
                .into_iter()
                .enumerate()
                .map(|(index, item)| {
                    let toml_path = format!("{toml_prefix}[{index}]");
                    let user_path = format!("{user_prefix}[{index}]");
                    to_toml_keys(item, &toml_path, &user_path, names)
                })
                .collect::<harmonylite::Result<Vec<_>>>()?,
        ),
        Value::Number(number) => Value::Number(integral(number)),
        other => other,
    })
}

/// JavaScript has one number type: `5000000000` arrives as a float, which an integer key would refuse.
fn integral(number: Number) -> Number {
    match number.as_f64() {
        Some(float) if number.is_f64() && float.fract() == 0.0 => {
            if float >= 0.0 && float < u64::MAX as f64 {
                Number::from(float as u64)
            } else if float < 0.0 && float >= i64::MIN as f64 {
                Number::from(float as i64)
            } else {
                number
            }
        }
        _ => number,
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

/// `replicationLog` → `replication_log`, `useSSL` → `use_ssl`; snake_case stays as it is.
fn snake_case(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    let mut out = String::with_capacity(key.len() + 4);
    for (i, c) in chars.iter().enumerate() {
        if c.is_ascii_uppercase() {
            let previous = i.checked_sub(1).map(|p| chars[p]);
            let next = chars.get(i + 1);
            let starts_word = match previous {
                Some(p) if p.is_ascii_lowercase() || p.is_ascii_digit() => true,
                Some(p) if p.is_ascii_uppercase() => next.is_some_and(|n| n.is_ascii_lowercase()),
                _ => false,
            };
            if starts_word {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(*c);
        }
    }
    out
}

/// `replication_log.max_age` → `replicationLog.maxAge`.
fn camel_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut upper = false;
    for c in path.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.push(c.to_ascii_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(json: &str) -> harmonylite::Result<Config> {
        JsConfig::Object(serde_json::from_str(json).expect("json"))
            .load()
            .map(|(config, _)| config)
    }

    fn field_of(err: harmonylite::Error) -> String {
        match err {
            harmonylite::Error::Config { field, .. } => field,
            other => panic!("not a config error: {other}"),
        }
    }

    #[test]
    fn camel_case_keys_reach_the_toml_keys() {
        let config = load(
            r#"{"nodeId": 7, "replicationLog": {"shards": 3, "maxAge": "1h"},
                "nats": {"urls": ["nats://127.0.0.1:4222"], "serverBinary": null}}"#,
        )
        .expect("config");
        assert_eq!(config.node_id, 7);
        assert_eq!(config.replication_log.shards, 3);
        assert_eq!(config.nats.urls, vec!["nats://127.0.0.1:4222".to_string()]);
    }

    #[test]
    fn snake_case_keys_work_too() {
        let config = load(r#"{"node_id": 9, "replication_log": {"shards": 2}}"#).expect("config");
        assert_eq!(config.node_id, 9);
        assert_eq!(config.replication_log.shards, 2);
    }

    #[test]
    fn large_integral_numbers_are_integers() {
        let config = load(r#"{"nodeId": 5000000000.0}"#).expect("config");
        assert_eq!(config.node_id, 5_000_000_000);
    }

    #[test]
    fn errors_name_the_key_as_written() {
        let err = load(r#"{"replicationLog": {"shards": 0}}"#).expect_err("bad shards");
        assert_eq!(field_of(err), "replicationLog.shards");
        let err = load(r#"{"replication_log": {"shards": 0}}"#).expect_err("bad shards");
        assert_eq!(field_of(err), "replication_log.shards");
        let err = load(r#"{"nats": {"urlz": []}}"#).expect_err("unknown key");
        assert_eq!(field_of(err), "nats.urlz");
        let err = load(r#"{"nats": {"urls": [3]}}"#).expect_err("bad url type");
        assert_eq!(field_of(err), "nats.urls[0]");
    }

    #[test]
    fn errors_from_opening_name_the_key_as_written_too() {
        let value = serde_json::json!({"nats": {"serverBinary": "/nowhere"}});
        let (_, names) = JsConfig::Object(value).load().expect("config");
        let err = names.rename(harmonylite::Error::Config {
            field: "nats.server_binary".into(),
            reason: "missing".into(),
        });
        assert_eq!(field_of(err), "nats.serverBinary");
        let err = names.rename(harmonylite::Error::Config {
            field: "HARMONYLITE_NATS_SERVER".into(),
            reason: "missing".into(),
        });
        assert_eq!(field_of(err), "HARMONYLITE_NATS_SERVER");
    }

    #[test]
    fn the_same_key_twice_is_refused() {
        let err = load(r#"{"nodeId": 1, "node_id": 2}"#).expect_err("duplicate");
        assert!(field_of(err).starts_with("node"));
    }

    /// The hand-written `Config` interface in the `.d.ts` header must offer every key the core reads.
    #[test]
    fn the_typescript_config_interface_has_every_key() {
        fn walk(value: &Value, path: &str, header: &str, missing: &mut Vec<String>) {
            if let Value::Object(entries) = value {
                for (key, value) in entries {
                    let path = join(path, key);
                    if !header.contains(&format!(" {}?:", camel_path(key))) {
                        missing.push(path.clone());
                    }
                    walk(value, &path, header, missing);
                }
            }
        }
        let header = include_str!("../dts-header.d.ts");
        let defaults = serde_json::to_value(Config::default()).expect("serialize the defaults");
        let mut missing = Vec::new();
        walk(&defaults, "", header, &mut missing);
        assert!(missing.is_empty(), "dts-header.d.ts lacks {missing:?}");
    }

    #[test]
    fn key_spelling() {
        assert_eq!(snake_case("replicationLog"), "replication_log");
        assert_eq!(snake_case("useSSL"), "use_ssl");
        assert_eq!(snake_case("SSLMode"), "ssl_mode");
        assert_eq!(snake_case("max_age"), "max_age");
        assert_eq!(
            camel_path("replication_log.max_age"),
            "replicationLog.maxAge"
        );
    }
}
