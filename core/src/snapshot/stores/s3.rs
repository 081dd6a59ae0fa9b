//! `snapshot.store = "s3"`: AWS S3 or any S3-compatible service (MinIO, Ceph, moto, ...), from
//! `[snapshot.s3]` ([`SnapshotS3Config`]):
//! - `endpoint`: empty for AWS (`https://s3.<region>.amazonaws.com`), else `host[:port]` (scheme from
//!   `use_ssl`) or `http(s)://host[:port]`. A custom endpoint uses path-style addressing
//!   (`http://host/bucket/key`); AWS uses virtual-hosted addressing unless `force_path_style` is set or the
//!   bucket name is not a DNS label.
//! - `path`: a key prefix inside the bucket.
//! - credentials: `access_key`/`secret`/`session_token`, else `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/
//!   `AWS_SESSION_TOKEN`, else `MINIO_ACCESS_KEY`/`MINIO_SECRET_KEY`, else anonymous (unsigned) requests.
//! - region: `region`, else `AWS_REGION`, else `AWS_DEFAULT_REGION`, else `us-east-1`.
//!
//! The bucket is created when an upload finds it missing (as HarmonyLite does).

use std::sync::Arc;

use futures::future::BoxFuture;
use object_store::aws::{AmazonS3Builder, AwsAuthorizer, AwsCredential};
use object_store::client::HttpClient;

use super::transport::HttpOptions;
use super::{error_chain, ObjectSnapshotStore, StoreDetails, Visibility};
use crate::config::SnapshotS3Config;
use crate::error::{Error, Result};

/// Timeouts, retries and part size of the S3 store (the same for every HTTP store).
pub type S3Options = HttpOptions;

/// An S3 bucket (under an optional key prefix) as a snapshot store.
pub type S3Store = ObjectSnapshotStore<S3Details>;

/// Where an [`S3Store`] keeps its objects and how it signs.
pub struct S3Details {
    endpoint_url: String,
    bucket: String,
    prefix: String,
    region: String,
    credential_source: &'static str,
    credentials: Option<AwsCredential>,
    /// `PUT` here creates the bucket.
    bucket_url: String,
    client: HttpClient,
}

impl StoreDetails for S3Details {
    fn describe(&self) -> String {
        format!(
            "s3://{}/{} ({})",
            self.bucket, self.prefix, self.endpoint_url
        )
    }

    fn target(&self, full_key: &str) -> String {
        format!("s3://{}/{full_key} at {}", self.bucket, self.endpoint_url)
    }

    fn hint(&self, err: &object_store::Error) -> Option<String> {
        let refused = matches!(
            err,
            object_store::Error::PermissionDenied { .. }
                | object_store::Error::Unauthenticated { .. }
        );
        (refused && self.credentials.is_none()).then(|| {
            "no credentials were found: set snapshot.s3.access_key/secret, AWS_ACCESS_KEY_ID/\
             AWS_SECRET_ACCESS_KEY or MINIO_ACCESS_KEY/MINIO_SECRET_KEY"
                .to_string()
        })
    }

    fn is_missing_container(&self, err: &object_store::Error) -> bool {
        // A PUT never answers 404 for a missing key: only the bucket can be missing.
        matches!(err, object_store::Error::NotFound { .. })
            || error_chain(err).contains("NoSuchBucket")
    }

    fn create_container(&self) -> Option<BoxFuture<'_, Result<()>>> {
        Some(Box::pin(self.create_bucket()))
    }
}

impl S3Details {
    /// CreateBucket (object_store has no call for it), signed by object_store's SigV4 signer. Another
    /// node creating it first is fine.
    async fn create_bucket(&self) -> Result<()> {
        let body = if self.region == "us-east-1" {
            String::new()
        } else {
            format!(
                "<CreateBucketConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
                 <LocationConstraint>{}</LocationConstraint></CreateBucketConfiguration>",
                self.region
            )
        };
        let failed = |why: String| {
            Error::Snapshot(format!(
                "creating bucket s3://{} at {} failed: {why}",
                self.bucket, self.endpoint_url
            ))
        };
        let mut request = http::Request::builder()
            .method(http::Method::PUT)
            .uri(&self.bucket_url)
            .body(body.into())
            .map_err(|err| failed(err.to_string()))?;
        if let Some(credentials) = &self.credentials {
            AwsAuthorizer::new(credentials, "s3", &self.region)
                .try_authorize(&mut request, None)
                .map_err(|err| failed(error_chain(&err)))?;
        }
        let response = self
            .client
            .execute(request)
            .await
            .map_err(|err| failed(error_chain(&err)))?;
        let status = response.status();
        let text = response
            .into_body()
            .bytes()
            .await
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default();
        let already = status == http::StatusCode::CONFLICT
            && (text.contains("BucketAlreadyOwnedByYou") || text.contains("BucketAlreadyExists"));
        if status.is_success() || already {
            tracing::info!(bucket = %self.bucket, endpoint = %self.endpoint_url, "S3 bucket created");
            return Ok(());
        }
        let mut why = format!("HTTP {}", status.as_u16());
        if !text.is_empty() {
            why.push_str(": ");
            why.push_str(text.chars().take(300).collect::<String>().trim());
        }
        Err(failed(why))
    }
}

impl S3Store {
    /// Builds a store from `[snapshot.s3]`, reading credentials and region from the environment where the
    /// configuration leaves them empty. Makes no request: a missing bucket is created by the first upload.
    pub fn from_config(cfg: &SnapshotS3Config) -> Result<S3Store> {
        S3Store::from_config_with(cfg, S3Options::default())
    }

    /// [`S3Store::from_config`] with explicit timeouts, retries and part size.
    pub fn from_config_with(cfg: &SnapshotS3Config, options: S3Options) -> Result<S3Store> {
        build(cfg, options, &|name| std::env::var(name).ok())
    }

    /// Where requests go: `scheme://host[:port]` (without the bucket).
    pub fn endpoint_url(&self) -> &str {
        &self.details().endpoint_url
    }

    pub fn bucket(&self) -> &str {
        &self.details().bucket
    }

    /// The signing region.
    pub fn region(&self) -> &str {
        &self.details().region
    }

    /// Where the credentials came from: `config`, `env:AWS_ACCESS_KEY_ID`, `env:MINIO_ACCESS_KEY` or
    /// `anonymous`.
    pub fn credential_source(&self) -> &'static str {
        self.details().credential_source
    }
}

fn build(
    cfg: &SnapshotS3Config,
    options: S3Options,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<S3Store> {
    let env = |name: &str| env(name).filter(|value| !value.trim().is_empty());
    options.validate("snapshot.s3")?;
    let bucket = cfg.bucket.trim().to_string();
    validate_bucket(&bucket)?;
    let region = [
        Some(cfg.region.trim().to_string()).filter(|r| !r.is_empty()),
        env("AWS_REGION"),
        env("AWS_DEFAULT_REGION"),
    ]
    .into_iter()
    .flatten()
    .next()
    .unwrap_or_else(|| "us-east-1".to_string());
    if region.contains(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_')) {
        return Err(Error::config(
            "snapshot.s3.region",
            format!("`{region}` is not a region name"),
        ));
    }
    let (credentials, credential_source) = resolve_credentials(cfg, &env)?;
    if let Some(credentials) = &credentials {
        check_printable(credentials, credential_source)?;
    }
    let (scheme, authority, custom) = parse_endpoint(&cfg.endpoint, cfg.use_ssl, &region)?;
    // Virtual-hosted names need a DNS label (and a dot would break the TLS wildcard certificate).
    let dns_label = bucket
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    let path_style = cfg.force_path_style || custom || !dns_label;
    let endpoint_url = format!("{scheme}://{authority}");
    let bucket_url = if path_style {
        format!("{endpoint_url}/{bucket}")
    } else {
        format!("{scheme}://{bucket}.{authority}/")
    };
    let connector = options.connector(None)?;
    let mut builder = AmazonS3Builder::new()
        .with_bucket_name(&bucket)
        .with_region(&region)
        .with_endpoint(&endpoint_url)
        .with_virtual_hosted_style_request(!path_style)
        .with_allow_http(scheme == "http")
        .with_retry(options.retry_config())
        .with_http_connector(connector.clone());
    if !path_style {
        // object_store wants the bucket in a virtual-hosted endpoint.
        builder = builder.with_endpoint(format!("{scheme}://{bucket}.{authority}"));
    }
    builder = match &credentials {
        Some(credentials) => {
            let builder = builder
                .with_access_key_id(&credentials.key_id)
                .with_secret_access_key(&credentials.secret_key);
            match &credentials.token {
                Some(token) => builder.with_token(token),
                None => builder,
            }
        }
        // Unsigned requests, not a lookup of instance credentials the operator did not ask for.
        None => builder.with_skip_signature(true),
    };
    let store = builder.build().map_err(|err| {
        Error::config(
            "snapshot.s3",
            format!(
                "cannot set up s3://{bucket} at {endpoint_url}: {}",
                error_chain(&err)
            ),
        )
    })?;
    let details = S3Details {
        endpoint_url,
        bucket,
        prefix: super::normalize_prefix(&cfg.path),
        region,
        credential_source,
        credentials,
        bucket_url,
        client: connector.client(),
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

fn resolve_credentials(
    cfg: &SnapshotS3Config,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(Option<AwsCredential>, &'static str)> {
    let access_key = cfg.access_key.trim();
    let secret = cfg.secret.trim();
    let credential = |key: &str, secret: &str, token: Option<String>| AwsCredential {
        key_id: key.to_string(),
        secret_key: secret.to_string(),
        token: token.filter(|t| !t.trim().is_empty()),
    };
    match (access_key.is_empty(), secret.is_empty()) {
        (false, false) => {
            let token = cfg.session_token.trim().to_string();
            return Ok((Some(credential(access_key, secret, Some(token))), "config"));
        }
        (false, true) => {
            return Err(Error::config(
                "snapshot.s3.secret",
                "is empty but snapshot.s3.access_key is set; set both or neither",
            ))
        }
        (true, false) => {
            return Err(Error::config(
                "snapshot.s3.access_key",
                "is empty but snapshot.s3.secret is set; set both or neither",
            ))
        }
        (true, true) => {}
    }
    if !cfg.session_token.trim().is_empty() {
        return Err(Error::config(
            "snapshot.s3.session_token",
            "is set without snapshot.s3.access_key and snapshot.s3.secret",
        ));
    }
    let sources: [(&str, &str, Option<&str>, &'static str); 2] = [
        (
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            Some("AWS_SESSION_TOKEN"),
            "env:AWS_ACCESS_KEY_ID",
        ),
        (
            "MINIO_ACCESS_KEY",
            "MINIO_SECRET_KEY",
            None,
            "env:MINIO_ACCESS_KEY",
        ),
    ];
    for (key_var, secret_var, token_var, source) in sources {
        if let (Some(key), Some(secret)) = (env(key_var), env(secret_var)) {
            let token = token_var.and_then(env).map(|t| t.trim().to_string());
            return Ok((Some(credential(key.trim(), secret.trim(), token)), source));
        }
    }
    Ok((None, "anonymous"))
}

/// The access key and session token go into HTTP headers, where a control or non-ASCII character cannot go
/// (and would make the signer panic): refuse them here, naming where they came from. The secret only feeds
/// the HMAC, so anything goes there.
fn check_printable(credentials: &AwsCredential, source: &str) -> Result<()> {
    let fields = [("access_key", "AWS_ACCESS_KEY_ID", &credentials.key_id)];
    let token = credentials
        .token
        .as_ref()
        .map(|token| ("session_token", "AWS_SESSION_TOKEN", token));
    for (key, var, value) in fields.into_iter().chain(token) {
        if value
            .chars()
            .all(|c| c == ' ' || c == '\t' || c.is_ascii_graphic())
        {
            continue;
        }
        let field = match source {
            "config" => format!("snapshot.s3.{key}"),
            "env:MINIO_ACCESS_KEY" => "MINIO_ACCESS_KEY".to_string(),
            _ => var.to_string(),
        };
        return Err(Error::config(
            field,
            "has a control or non-ASCII character, which cannot go into an HTTP header",
        ));
    }
    Ok(())
}

/// `(scheme, authority, custom)` for the configured endpoint.
fn parse_endpoint(
    endpoint: &str,
    use_ssl: bool,
    region: &str,
) -> Result<(&'static str, String, bool)> {
    let endpoint = endpoint.trim();
    if endpoint.is_empty() {
        return Ok(("https", format!("s3.{region}.amazonaws.com"), false));
    }
    let invalid = |reason: String| Error::config("snapshot.s3.endpoint", reason);
    let (scheme, rest) = match endpoint.split_once("://") {
        Some((scheme, rest)) => match scheme.to_ascii_lowercase().as_str() {
            "http" => ("http", rest),
            "https" => ("https", rest),
            other => {
                return Err(invalid(format!(
                    "`{endpoint}` has scheme `{other}`; use http:// or https:// (or host:port with \
                     snapshot.s3.use_ssl)"
                )))
            }
        },
        None => (if use_ssl { "https" } else { "http" }, endpoint),
    };
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest.contains(['/', '?', '#', '@']) || rest.contains(char::is_whitespace)
    {
        return Err(invalid(format!(
            "`{endpoint}` is not `host[:port]` or `http(s)://host[:port]` (paths are not supported)"
        )));
    }
    let url = reqwest::Url::parse(&format!("{scheme}://{rest}/"))
        .map_err(|err| invalid(format!("`{endpoint}` is not a valid host[:port]: {err}")))?;
    let host = url
        .host_str()
        .filter(|host| !host.is_empty())
        .ok_or_else(|| invalid(format!("`{endpoint}` has no host")))?;
    let authority = match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    };
    Ok((scheme, authority, true))
}

fn validate_bucket(bucket: &str) -> Result<()> {
    if bucket.is_empty() {
        return Err(Error::config(
            "snapshot.s3.bucket",
            "is required when snapshot.store = \"s3\"",
        ));
    }
    if bucket.len() > 255
        || !bucket
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    {
        return Err(Error::config(
            "snapshot.s3.bucket",
            format!("`{bucket}` is not a bucket name (letters, digits, `.`, `-`, `_`)"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(endpoint: &str) -> SnapshotS3Config {
        SnapshotS3Config {
            endpoint: endpoint.into(),
            bucket: "b".into(),
            ..SnapshotS3Config::default()
        }
    }

    fn build_with(cfg: &SnapshotS3Config, vars: &[(&str, &str)]) -> Result<S3Store> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        build(cfg, S3Options::default(), &move |name| {
            vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn endpoints_and_addressing() {
        let store = build_with(&cfg("minio:9000"), &[]).expect("store");
        assert_eq!(store.endpoint_url(), "http://minio:9000");
        assert_eq!(store.details().bucket_url, "http://minio:9000/b");
        let mut tls = cfg("minio:9000");
        tls.use_ssl = true;
        let store = build_with(&tls, &[]).expect("store");
        assert_eq!(store.endpoint_url(), "https://minio:9000");
        let store = build_with(&cfg(""), &[("AWS_REGION", "eu-west-3")]).expect("store");
        assert_eq!(store.endpoint_url(), "https://s3.eu-west-3.amazonaws.com");
        assert_eq!(
            store.details().bucket_url,
            "https://b.s3.eu-west-3.amazonaws.com/"
        );
        assert_eq!(store.region(), "eu-west-3");
        for bad in ["ftp://x", "http://x/path", "x?y", "user@x"] {
            match build_with(&cfg(bad), &[]) {
                Err(Error::Config { field, .. }) => assert_eq!(field, "snapshot.s3.endpoint"),
                other => panic!("{bad}: {:?}", other),
            }
        }
    }

    #[test]
    fn credential_sources_in_order() {
        let env = [
            ("AWS_ACCESS_KEY_ID", "a"),
            ("AWS_SECRET_ACCESS_KEY", "b"),
            ("MINIO_ACCESS_KEY", "c"),
            ("MINIO_SECRET_KEY", "d"),
        ];
        assert_eq!(
            build_with(&cfg("h:1"), &env)
                .expect("s")
                .credential_source(),
            "env:AWS_ACCESS_KEY_ID"
        );
        assert_eq!(
            build_with(&cfg("h:1"), &env[2..])
                .expect("s")
                .credential_source(),
            "env:MINIO_ACCESS_KEY"
        );
        assert_eq!(
            build_with(&cfg("h:1"), &[]).expect("s").credential_source(),
            "anonymous"
        );
        let mut bad = cfg("h:1");
        bad.access_key = "k".into();
        bad.secret = "any thing\u{7f}ü".into(); // only hashed: accepted as before
        bad.session_token = "line\nbreak".into();
        match build_with(&bad, &[]) {
            Err(Error::Config { field, .. }) => assert_eq!(field, "snapshot.s3.session_token"),
            other => panic!("{other:?}"),
        }
        bad.session_token.clear();
        build_with(&bad, &[]).expect("any secret");
        let minio = [("MINIO_ACCESS_KEY", "c\u{1}"), ("MINIO_SECRET_KEY", "d")];
        match build_with(&cfg("h:1"), &minio) {
            Err(Error::Config { field, .. }) => assert_eq!(field, "MINIO_ACCESS_KEY"),
            other => panic!("{other:?}"),
        }
        let mut half = cfg("h:1");
        half.access_key = "k".into();
        match build_with(&half, &env) {
            Err(Error::Config { field, .. }) => assert_eq!(field, "snapshot.s3.secret"),
            other => panic!("{:?}", other),
        }
    }
}
