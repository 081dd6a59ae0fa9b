//! `snapshot.store = "azure"`: an Azure Blob Storage container, from `[snapshot.azure]`
//! ([`SnapshotAzureConfig`]): `account`, `container`, `path` (key prefix), and credentials from
//! `access_key` (the account key) or `sas_token`, else the identity of the VM (managed identity).
//! `endpoint` points at another server; `use_emulator` at a local Azurite.
//!
//! Only the configuration mapping is tested here; no test runs against Azure.

use std::sync::Arc;

use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};

use super::transport::HttpOptions;
use super::{error_chain, ObjectSnapshotStore, StoreDetails, Visibility};
use crate::config::SnapshotAzureConfig;
use crate::error::{Error, Result};

/// An Azure container as a snapshot store.
pub type AzureStore = ObjectSnapshotStore<AzureDetails>;

pub struct AzureDetails {
    account: String,
    container: String,
    prefix: String,
}

impl StoreDetails for AzureDetails {
    fn describe(&self) -> String {
        format!(
            "azure://{}/{}/{}",
            self.account, self.container, self.prefix
        )
    }

    fn target(&self, full_key: &str) -> String {
        format!("azure://{}/{}/{full_key}", self.account, self.container)
    }
}

/// The object_store settings for `cfg`, in the order they are applied.
pub(crate) fn settings(cfg: &SnapshotAzureConfig) -> Result<Vec<(AzureConfigKey, String)>> {
    let required = |key: &str, value: &str| {
        if value.trim().is_empty() && !cfg.use_emulator {
            Err(Error::config(
                format!("snapshot.azure.{key}"),
                "is required when snapshot.store = \"azure\"",
            ))
        } else {
            Ok(value.trim().to_string())
        }
    };
    let account = required("account", &cfg.account)?;
    let container = cfg.container.trim().to_string();
    if container.is_empty() {
        return Err(Error::config(
            "snapshot.azure.container",
            "is required when snapshot.store = \"azure\"",
        ));
    }
    let mut settings = vec![(AzureConfigKey::ContainerName, container)];
    if !account.is_empty() {
        settings.push((AzureConfigKey::AccountName, account));
    }
    match (cfg.access_key.trim(), cfg.sas_token.trim()) {
        ("", "") => {}
        (key, "") => settings.push((AzureConfigKey::AccessKey, key.to_string())),
        ("", sas) => settings.push((
            AzureConfigKey::SasKey,
            sas.trim_start_matches('?').to_string(),
        )),
        _ => {
            return Err(Error::config(
                "snapshot.azure.sas_token",
                "cannot be combined with snapshot.azure.access_key; set one",
            ))
        }
    }
    if !cfg.endpoint.trim().is_empty() {
        settings.push((AzureConfigKey::Endpoint, cfg.endpoint.trim().to_string()));
    }
    if cfg.use_emulator {
        settings.push((AzureConfigKey::UseEmulator, "true".to_string()));
    }
    Ok(settings)
}

impl AzureStore {
    pub fn from_config(cfg: &SnapshotAzureConfig) -> Result<AzureStore> {
        AzureStore::from_config_with(cfg, HttpOptions::default())
    }

    pub fn from_config_with(cfg: &SnapshotAzureConfig, options: HttpOptions) -> Result<AzureStore> {
        options.validate("snapshot.azure")?;
        let settings = settings(cfg)?;
        let mut builder = MicrosoftAzureBuilder::new()
            .with_retry(options.retry_config())
            .with_http_connector(options.connector(None)?);
        for (key, value) in settings {
            builder = builder.with_config(key, value);
        }
        let account = if cfg.account.trim().is_empty() {
            "devstoreaccount1".to_string() // the emulator's account
        } else {
            cfg.account.trim().to_string()
        };
        let container = cfg.container.trim().to_string();
        let store = builder.build().map_err(|err| {
            Error::config(
                "snapshot.azure",
                format!(
                    "cannot set up azure://{account}/{container}: {}",
                    error_chain(&err)
                ),
            )
        })?;
        let details = AzureDetails {
            account,
            container,
            prefix: super::normalize_prefix(&cfg.path),
        };
        Ok(ObjectSnapshotStore::wrap(
            Arc::new(store),
            details,
            &cfg.path,
            options.multipart_part_size,
            Visibility::Atomic,
            true,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::SnapshotStore;

    fn cfg() -> SnapshotAzureConfig {
        SnapshotAzureConfig {
            account: "acct".into(),
            container: "snaps".into(),
            path: "x".into(),
            ..SnapshotAzureConfig::default()
        }
    }

    #[test]
    fn configuration_maps_to_object_store_settings() {
        let mut with_key = cfg();
        with_key.access_key = "a2V5".into();
        assert_eq!(
            settings(&with_key).expect("settings"),
            vec![
                (AzureConfigKey::ContainerName, "snaps".to_string()),
                (AzureConfigKey::AccountName, "acct".to_string()),
                (AzureConfigKey::AccessKey, "a2V5".to_string()),
            ]
        );
        let mut with_sas = cfg();
        with_sas.sas_token = "?sv=1&sig=abc".into();
        with_sas.endpoint = "http://127.0.0.1:10000/acct".into();
        assert_eq!(
            settings(&with_sas).expect("settings")[2..],
            [
                (AzureConfigKey::SasKey, "sv=1&sig=abc".to_string()),
                (
                    AzureConfigKey::Endpoint,
                    "http://127.0.0.1:10000/acct".to_string()
                ),
            ]
        );
        let mut both = with_key.clone();
        both.sas_token = "sv=1".into();
        match settings(&both) {
            Err(Error::Config { field, .. }) => assert_eq!(field, "snapshot.azure.sas_token"),
            other => panic!("{other:?}"),
        }
        let mut no_container = cfg();
        no_container.container.clear();
        match settings(&no_container) {
            Err(Error::Config { field, .. }) => assert_eq!(field, "snapshot.azure.container"),
            other => panic!("{other:?}"),
        }
        let mut no_account = cfg();
        no_account.account.clear();
        match settings(&no_account) {
            Err(Error::Config { field, .. }) => assert_eq!(field, "snapshot.azure.account"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn stores_build_without_contacting_azure() {
        let mut with_key = cfg();
        with_key.access_key = "a2V5".into();
        let store = AzureStore::from_config(&with_key).expect("store");
        assert_eq!(store.describe(), "azure://acct/snaps/x/");
        let emulator = SnapshotAzureConfig {
            container: "snaps".into(),
            use_emulator: true,
            ..SnapshotAzureConfig::default()
        };
        let store = AzureStore::from_config(&emulator).expect("store");
        assert_eq!(store.describe(), "azure://devstoreaccount1/snaps/");
    }
}
