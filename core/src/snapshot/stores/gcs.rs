//! `snapshot.store = "gcs"`: a Google Cloud Storage bucket, from `[snapshot.gcs]`
//! ([`SnapshotGcsConfig`]): `bucket`, `path` (key prefix), and credentials from `service_account_path`
//! (a service-account JSON file), `service_account_key` (its JSON text) or `application_credentials`
//! (an application-default-credentials file), else `GOOGLE_APPLICATION_CREDENTIALS`, else the metadata
//! server of the VM the node runs on. `endpoint` points at another server (an emulator).
//!
//! Only the configuration mapping is tested here; no test runs against Google's service.

use std::sync::Arc;

use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};

use super::transport::HttpOptions;
use super::{error_chain, ObjectSnapshotStore, StoreDetails, Visibility};
use crate::config::SnapshotGcsConfig;
use crate::error::{Error, Result};

/// A GCS bucket as a snapshot store.
pub type GcsStore = ObjectSnapshotStore<GcsDetails>;

pub struct GcsDetails {
    bucket: String,
    prefix: String,
}

impl StoreDetails for GcsDetails {
    fn describe(&self) -> String {
        format!("gs://{}/{}", self.bucket, self.prefix)
    }

    fn target(&self, full_key: &str) -> String {
        format!("gs://{}/{full_key}", self.bucket)
    }
}

/// The object_store settings for `cfg`, in the order they are applied.
pub(crate) fn settings(cfg: &SnapshotGcsConfig) -> Result<Vec<(GoogleConfigKey, String)>> {
    let bucket = cfg.bucket.trim();
    if bucket.is_empty() {
        return Err(Error::config(
            "snapshot.gcs.bucket",
            "is required when snapshot.store = \"gcs\"",
        ));
    }
    let mut settings = vec![(GoogleConfigKey::Bucket, bucket.to_string())];
    let credentials = [
        (
            "snapshot.gcs.service_account_path",
            GoogleConfigKey::ServiceAccount,
            &cfg.service_account_path,
        ),
        (
            "snapshot.gcs.service_account_key",
            GoogleConfigKey::ServiceAccountKey,
            &cfg.service_account_key,
        ),
        (
            "snapshot.gcs.application_credentials",
            GoogleConfigKey::ApplicationCredentials,
            &cfg.application_credentials,
        ),
    ];
    let given: Vec<_> = credentials
        .into_iter()
        .filter(|(_, _, value)| !value.trim().is_empty())
        .collect();
    if given.len() > 1 {
        return Err(Error::config(
            given[1].0,
            format!("cannot be combined with {}; set one", given[0].0),
        ));
    }
    settings.extend(
        given
            .into_iter()
            .map(|(_, key, value)| (key, value.trim().to_string())),
    );
    if !cfg.endpoint.trim().is_empty() {
        settings.push((GoogleConfigKey::BaseUrl, cfg.endpoint.trim().to_string()));
    }
    Ok(settings)
}

impl GcsStore {
    pub fn from_config(cfg: &SnapshotGcsConfig) -> Result<GcsStore> {
        GcsStore::from_config_with(cfg, HttpOptions::default())
    }

    pub fn from_config_with(cfg: &SnapshotGcsConfig, options: HttpOptions) -> Result<GcsStore> {
        options.validate("snapshot.gcs")?;
        let settings = settings(cfg)?;
        let mut builder = GoogleCloudStorageBuilder::new()
            .with_retry(options.retry_config())
            .with_http_connector(options.connector(None)?);
        for (key, value) in settings {
            builder = builder.with_config(key, value);
        }
        let bucket = cfg.bucket.trim().to_string();
        let store = builder.build().map_err(|err| {
            Error::config(
                "snapshot.gcs",
                format!("cannot set up gs://{bucket}: {}", error_chain(&err)),
            )
        })?;
        let details = GcsDetails {
            bucket,
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

    #[test]
    fn configuration_maps_to_object_store_settings() {
        let cfg = SnapshotGcsConfig {
            bucket: " snaps ".into(),
            path: "/cluster-a/".into(),
            service_account_path: "/etc/gcs.json".into(),
            endpoint: "http://127.0.0.1:4443".into(),
            ..SnapshotGcsConfig::default()
        };
        assert_eq!(
            settings(&cfg).expect("settings"),
            vec![
                (GoogleConfigKey::Bucket, "snaps".to_string()),
                (GoogleConfigKey::ServiceAccount, "/etc/gcs.json".to_string()),
                (
                    GoogleConfigKey::BaseUrl,
                    "http://127.0.0.1:4443".to_string()
                ),
            ]
        );
        let mut both = cfg.clone();
        both.service_account_key = "{}".into();
        match settings(&both) {
            Err(Error::Config { field, .. }) => {
                assert_eq!(field, "snapshot.gcs.service_account_key")
            }
            other => panic!("{other:?}"),
        }
        match settings(&SnapshotGcsConfig::default()) {
            Err(Error::Config { field, .. }) => assert_eq!(field, "snapshot.gcs.bucket"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_store_builds_without_contacting_google() {
        let cfg = SnapshotGcsConfig {
            bucket: "snaps".into(),
            path: "a/b".into(),
            endpoint: "http://127.0.0.1:9".into(),
            ..SnapshotGcsConfig::default()
        };
        let store = GcsStore::from_config(&cfg).expect("store");
        assert_eq!(store.describe(), "gs://snaps/a/b/");
        assert_eq!(store.prefix(), "a/b/");
    }
}
