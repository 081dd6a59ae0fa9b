//! An S3-compatible snapshot store (AWS S3, MinIO, Ceph, moto, ...): PUT (single-request, or multipart for
//! files larger than one part), GET, ListObjectsV2 and DELETE over HTTP(S), signed with AWS Signature
//! Version 4 (see [`sigv4`]).
//!
//! Configuration comes from `[snapshot.s3]` ([`SnapshotS3Config`]):
//! - `endpoint`: empty for AWS (`https://s3.<region>.amazonaws.com`), else `host[:port]` (scheme from
//!   `use_ssl`) or a full `http(s)://host[:port]` URL. A custom endpoint uses path-style addressing
//!   (`http://host/bucket/key`); AWS uses virtual-hosted addressing (`https://bucket.s3.../key`) unless
//!   `force_path_style` is set or the bucket name is not a DNS label (a dot, `_` or upper case).
//! - `path`: a key prefix inside the bucket; keys given to the store are placed under it and `list` returns
//!   them without it.
//! - credentials: `access_key`/`secret`/`session_token`, else `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/
//!   `AWS_SESSION_TOKEN`, else `MINIO_ACCESS_KEY`/`MINIO_SECRET_KEY`, else anonymous (unsigned) requests.
//! - region: `region`, else `AWS_REGION`, else `AWS_DEFAULT_REGION`, else `us-east-1`.
//!
//! The bucket is created when a PUT finds it missing. Requests that fail with a connection error, a timeout
//! or a 5xx/429 status are retried with exponential backoff.

use std::fmt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use reqwest::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::store::{SnapshotStore, StoreFuture};
use crate::config::SnapshotS3Config;
use crate::error::{Error, Result};

/// Tuning knobs that are not part of the TOML configuration. [`Default`] suits production.
#[derive(Debug, Clone)]
pub struct S3Options {
    /// Time allowed to open a TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// Time allowed until a response's headers arrive (for a PUT, plus the upload time below), and the
    /// longest silence while a response body is being read (a GET of a large object has no total limit).
    pub request_timeout: Duration,
    /// A PUT may take `request_timeout` plus its size divided by this many bytes per second.
    pub min_upload_bytes_per_sec: u64,
    /// Tries per request (at least 1), for connection errors, timeouts and 5xx/429 answers.
    pub attempts: u32,
    /// Pause before the first retry; doubled for each further retry.
    pub retry_backoff: Duration,
    /// `max-keys` for ListObjectsV2 pages; `None` uses the server's default (1000 on AWS).
    pub list_page_size: Option<u32>,
    /// Files larger than this are uploaded in parts of this size (raised when a file would need more than
    /// 10,000 parts); one part is in memory at a time. S3 requires at least 5 MiB for all but the last part.
    pub multipart_part_size: u64,
}

impl Default for S3Options {
    fn default() -> Self {
        S3Options {
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            min_upload_bytes_per_sec: 1024 * 1024,
            attempts: 4,
            retry_backoff: Duration::from_millis(200),
            list_page_size: None,
            multipart_part_size: 8 << 20,
        }
    }
}

/// S3's limit on the parts of one multipart upload.
const MAX_PARTS: u64 = 10_000;
/// S3's minimum size of every part but the last.
const MIN_PART_SIZE: u64 = 5 << 20;

/// A snapshot store in an S3 bucket, under an optional key prefix.
pub struct S3Store {
    client: reqwest::Client,
    /// `http` or `https`.
    scheme: &'static str,
    /// `host[:port]` of the service, without the bucket.
    authority: String,
    path_style: bool,
    bucket: String,
    /// Empty, or ends with `/`.
    prefix: String,
    region: String,
    credentials: Option<sigv4::Credentials>,
    credential_source: &'static str,
    options: S3Options,
}

impl fmt::Debug for S3Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Store")
            .field("endpoint", &self.endpoint_url())
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("region", &self.region)
            .field("path_style", &self.path_style)
            .field("credentials", &self.credential_source)
            .finish()
    }
}

/// A finished HTTP exchange: the status and the whole body (empty when a successful body went to a file).
struct Response {
    status: StatusCode,
    body: Vec<u8>,
    etag: Option<String>,
}

impl Response {
    /// The `<Code>` of an S3 error document, or empty.
    fn error_code(&self) -> String {
        xml_elements(&self.body, "Code")
            .into_iter()
            .next()
            .unwrap_or_default()
    }
}

/// Why one attempt failed, and whether another may succeed.
struct Failure {
    retryable: bool,
    message: String,
}

/// One S3 request, re-signed on every attempt.
struct Request<'a> {
    method: Method,
    /// URI-encoded path, also the canonical URI.
    path: String,
    query: Vec<(String, String)>,
    body: Bytes,
    payload_hash: String,
    /// `s3://bucket/key` for messages.
    target: &'a str,
    /// Where a successful response's body goes (created or truncated on every attempt) instead of memory.
    sink: Option<&'a Path>,
}

impl S3Store {
    /// Builds a store from `[snapshot.s3]`, reading credentials and region from the environment where the
    /// configuration leaves them empty. Makes no request: a missing bucket is created by the first `put`.
    pub fn from_config(cfg: &SnapshotS3Config) -> Result<S3Store> {
        S3Store::from_config_with(cfg, S3Options::default())
    }

    /// [`S3Store::from_config`] with explicit timeouts, retries and list page size.
    pub fn from_config_with(cfg: &SnapshotS3Config, options: S3Options) -> Result<S3Store> {
        S3Store::build(cfg, options, &|name| std::env::var(name).ok())
    }

    fn build(
        cfg: &SnapshotS3Config,
        options: S3Options,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<S3Store> {
        let env = |name: &str| env(name).filter(|value| !value.trim().is_empty());
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
        let (scheme, authority, custom) = parse_endpoint(&cfg.endpoint, cfg.use_ssl, &region)?;
        // Virtual-hosted names need a DNS label (and a dot would break the TLS wildcard certificate).
        let dns_label = bucket
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        let path_style = cfg.force_path_style || custom || !dns_label;
        let prefix = normalize_prefix(&cfg.path);
        if options.attempts == 0 {
            return Err(Error::config(
                "snapshot.s3",
                "S3Options::attempts must be at least 1",
            ));
        }
        let client = reqwest::Client::builder()
            .connect_timeout(options.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("harmonylite/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|err| Error::Snapshot(format!("cannot build the S3 HTTP client: {err}")))?;
        Ok(S3Store {
            client,
            scheme,
            authority,
            path_style,
            bucket,
            prefix,
            region,
            credentials,
            credential_source,
            options,
        })
    }

    /// Where requests go: `scheme://host[:port]` (without the bucket).
    pub fn endpoint_url(&self) -> String {
        format!("{}://{}", self.scheme, self.authority)
    }

    /// The bucket name.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The key prefix inside the bucket: empty, or ending with `/`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The signing region.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// Where the credentials came from: `config`, `env:AWS_ACCESS_KEY_ID`, `env:MINIO_ACCESS_KEY` or
    /// `anonymous`.
    pub fn credential_source(&self) -> &'static str {
        self.credential_source
    }

    /// Whether requests use path-style addressing (`/bucket/key`) rather than virtual-hosted.
    pub fn path_style(&self) -> bool {
        self.path_style
    }

    fn host(&self) -> String {
        if self.path_style {
            self.authority.clone()
        } else {
            format!("{}.{}", self.bucket, self.authority)
        }
    }

    fn bucket_path(&self) -> String {
        if self.path_style {
            format!("/{}", sigv4::uri_encode(&self.bucket, false))
        } else {
            "/".to_string()
        }
    }

    fn object_path(&self, full_key: &str) -> String {
        let key = sigv4::uri_encode(full_key, true);
        if self.path_style {
            format!("/{}/{key}", sigv4::uri_encode(&self.bucket, false))
        } else {
            format!("/{key}")
        }
    }

    /// The key inside the bucket for a store key.
    fn full_key(&self, key: &str) -> Result<String> {
        let invalid = |why: &str| {
            Error::Snapshot(format!(
                "invalid snapshot object key `{}` for s3://{}/{}: {why}",
                key.escape_debug(),
                self.bucket,
                self.prefix
            ))
        };
        if key.is_empty() {
            return Err(invalid("it is empty"));
        }
        if key.starts_with('/') {
            return Err(invalid("it starts with `/`"));
        }
        if key.split('/').any(|part| part == "." || part == "..") {
            return Err(invalid("it has a `.` or `..` path segment"));
        }
        if key.chars().any(char::is_control) {
            return Err(invalid("it has a control character"));
        }
        let full = format!("{}{key}", self.prefix);
        if full.len() > 1024 {
            return Err(invalid("S3 keys are at most 1024 bytes long"));
        }
        Ok(full)
    }

    fn target(&self, full_key: &str) -> String {
        format!("s3://{}/{full_key}", self.bucket)
    }

    fn failure(&self, method: &Method, target: &str, response: &Response) -> Error {
        let code = response.error_code();
        let message = xml_elements(&response.body, "Message")
            .into_iter()
            .next()
            .unwrap_or_default();
        let mut text = format!(
            "S3 {method} {target} at {} failed: HTTP {}",
            self.endpoint_url(),
            response.status.as_u16()
        );
        if !code.is_empty() {
            text.push(' ');
            text.push_str(&code);
        }
        if !message.is_empty() {
            text.push_str(": ");
            text.push_str(&message);
        } else if code.is_empty() && !response.body.is_empty() {
            let body = String::from_utf8_lossy(&response.body);
            let body: String = body.chars().take(200).collect();
            text.push_str(": ");
            text.push_str(body.trim());
        }
        if response.status == StatusCode::FORBIDDEN && self.credentials.is_none() {
            text.push_str(
                " (no credentials were found: set snapshot.s3.access_key/secret, AWS_ACCESS_KEY_ID/\
                 AWS_SECRET_ACCESS_KEY or MINIO_ACCESS_KEY/MINIO_SECRET_KEY)",
            );
        }
        Error::Snapshot(text)
    }

    /// Sends `request`, retrying connection errors, timeouts and 5xx/429 answers, and reads the whole body.
    async fn send(&self, request: &Request<'_>) -> Result<Response> {
        let host = self.host();
        let query = sigv4::canonical_query(&request.query);
        let mut url = format!("{}://{host}{}", self.scheme, request.path);
        if !query.is_empty() {
            url.push('?');
            url.push_str(&query);
        }
        let url = reqwest::Url::parse(&url).map_err(|err| {
            Error::Snapshot(format!(
                "S3 {} {}: cannot build a URL from `{url}`: {err}",
                request.method, request.target
            ))
        })?;
        // The URL parser must keep the path and query exactly as signed (it would, e.g., resolve `..`).
        if url.path() != request.path || url.query().unwrap_or("") != query {
            return Err(Error::Snapshot(format!(
                "S3 {} {}: the URL `{url}` does not keep the signed path `{}`",
                request.method, request.target, request.path
            )));
        }
        let mut attempt = 1;
        loop {
            let outcome = self.attempt(request, &url, &host, &query).await;
            let retry = match &outcome {
                Ok(response) => {
                    response.status.is_server_error()
                        || response.status == StatusCode::TOO_MANY_REQUESTS
                        || (response.status == StatusCode::BAD_REQUEST
                            && response.error_code() == "RequestTimeout")
                        || (response.status == StatusCode::CONFLICT
                            && response.error_code() == "OperationAborted")
                }
                Err(failure) => failure.retryable,
            };
            if !retry || attempt >= self.options.attempts {
                return match outcome {
                    Ok(response) => Ok(response),
                    Err(failure) => Err(Error::Snapshot(format!(
                        "S3 {} {} at {} failed{}: {}",
                        request.method,
                        request.target,
                        self.endpoint_url(),
                        if attempt > 1 {
                            format!(" after {attempt} attempts")
                        } else {
                            String::new()
                        },
                        failure.message
                    ))),
                };
            }
            let pause = self.options.retry_backoff * 2u32.saturating_pow(attempt - 1);
            let pause = pause + pause.mul_f64(rand::random::<f64>() * 0.25);
            match &outcome {
                Ok(response) => tracing::warn!(
                    "S3 {} {} at {}: HTTP {} {}; retrying in {pause:?}",
                    request.method,
                    request.target,
                    self.endpoint_url(),
                    response.status.as_u16(),
                    response.error_code(),
                ),
                Err(failure) => tracing::warn!(
                    "S3 {} {} at {}: {}; retrying in {pause:?}",
                    request.method,
                    request.target,
                    self.endpoint_url(),
                    failure.message,
                ),
            }
            tokio::time::sleep(pause).await;
            attempt += 1;
        }
    }

    /// One signed exchange. A PUT may take `request_timeout` plus its size at the minimum upload rate;
    /// other requests must see their response headers within `request_timeout`; while a body is read, no
    /// silence may last longer than `request_timeout`.
    async fn attempt(
        &self,
        request: &Request<'_>,
        url: &reqwest::Url,
        host: &str,
        query: &str,
    ) -> Result<Response, Failure> {
        let amz_date = sigv4::amz_date(SystemTime::now());
        let mut builder = self
            .client
            .request(request.method.clone(), url.clone())
            .header("host", host)
            .header("x-amz-date", &amz_date)
            .header("x-amz-content-sha256", &request.payload_hash);
        if let Some(credentials) = &self.credentials {
            let mut headers: Vec<(&str, &str)> = vec![
                ("host", host),
                ("x-amz-content-sha256", &request.payload_hash),
                ("x-amz-date", &amz_date),
            ];
            if let Some(token) = &credentials.session_token {
                headers.push(("x-amz-security-token", token));
                builder = builder.header("x-amz-security-token", token);
            }
            let authorization = sigv4::authorization(
                credentials,
                &self.region,
                "s3",
                request.method.as_str(),
                &request.path,
                query,
                &headers,
                &request.payload_hash,
                &amz_date,
            );
            builder = builder.header("authorization", authorization);
        }
        let idle = self.options.request_timeout;
        let headers_deadline = if request.method == Method::PUT || request.method == Method::POST {
            let upload = Duration::from_secs(
                request.body.len() as u64 / self.options.min_upload_bytes_per_sec.max(1),
            );
            builder = builder
                .header("content-type", "application/octet-stream")
                .body(request.body.clone());
            idle + upload
        } else {
            idle
        };
        let mut response = match tokio::time::timeout(headers_deadline, builder.send()).await {
            Ok(Ok(response)) => response,
            Ok(Err(err)) => {
                return Err(Failure {
                    retryable: !err.is_builder(),
                    message: error_chain(&err),
                })
            }
            Err(_) => {
                return Err(Failure {
                    retryable: true,
                    message: format!("timed out after {headers_deadline:?} waiting for a response"),
                })
            }
        };
        let status = response.status();
        let etag = response
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|value| value.to_str().ok())
            .map(str::to_string);
        if let (Some(dest), true) = (request.sink, status.is_success()) {
            self.body_to_file(response, dest).await?;
            return Ok(Response {
                status,
                body: Vec::new(),
                etag,
            });
        }
        let capacity = response
            .content_length()
            .unwrap_or(0)
            .min(1 << 30)
            .try_into()
            .unwrap_or(0);
        let mut body = Vec::with_capacity(capacity);
        loop {
            match tokio::time::timeout(idle, response.chunk()).await {
                Ok(Ok(Some(chunk))) => body.extend_from_slice(&chunk),
                Ok(Ok(None)) => break,
                Ok(Err(err)) => {
                    return Err(Failure {
                        retryable: true,
                        message: format!(
                            "HTTP {} but reading the body failed after {} bytes: {}",
                            status.as_u16(),
                            body.len(),
                            error_chain(&err)
                        ),
                    })
                }
                Err(_) => {
                    return Err(Failure {
                        retryable: true,
                        message: format!(
                            "HTTP {} but the body timed out: no data for {idle:?} after {} bytes",
                            status.as_u16(),
                            body.len()
                        ),
                    })
                }
            }
        }
        Ok(Response { status, body, etag })
    }

    /// Writes a response body to `dest` as it arrives, with the same silence limit as in memory.
    async fn body_to_file(
        &self,
        mut response: reqwest::Response,
        dest: &Path,
    ) -> Result<(), Failure> {
        let status = response.status().as_u16();
        let idle = self.options.request_timeout;
        let local = |err: std::io::Error| Failure {
            retryable: false,
            message: format!(
                "HTTP {status} but writing the body to {} failed: {err}",
                dest.display()
            ),
        };
        let file = tokio::fs::File::create(dest).await.map_err(local)?;
        // Network chunks are small; a tokio file write is a blocking-pool round trip, so batch them.
        let mut writer = tokio::io::BufWriter::with_capacity(1 << 20, file);
        let mut received: u64 = 0;
        loop {
            match tokio::time::timeout(idle, response.chunk()).await {
                Ok(Ok(Some(chunk))) => {
                    writer.write_all(&chunk).await.map_err(local)?;
                    received += chunk.len() as u64;
                }
                Ok(Ok(None)) => break,
                Ok(Err(err)) => {
                    return Err(Failure {
                        retryable: true,
                        message: format!(
                            "HTTP {status} but reading the body failed after {received} bytes: {}",
                            error_chain(&err)
                        ),
                    })
                }
                Err(_) => {
                    return Err(Failure {
                        retryable: true,
                        message: format!(
                            "HTTP {status} but the body timed out: no data for {idle:?} after {received} bytes"
                        ),
                    })
                }
            }
        }
        writer.flush().await.map_err(local)
    }

    /// Creates the bucket; succeeds if this account already owns it.
    async fn create_bucket(&self) -> Result<()> {
        let body = if self.region == "us-east-1" {
            Bytes::new()
        } else {
            Bytes::from(format!(
                "<CreateBucketConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
                 <LocationConstraint>{}</LocationConstraint></CreateBucketConfiguration>",
                self.region
            ))
        };
        let target = format!("s3://{}", self.bucket);
        let request = Request {
            method: Method::PUT,
            path: self.bucket_path(),
            query: Vec::new(),
            payload_hash: sigv4::hex_sha256(&body),
            body,
            target: &target,
            sink: None,
        };
        let response = self.send(&request).await?;
        if response.status.is_success()
            || (response.status == StatusCode::CONFLICT
                && response.error_code() == "BucketAlreadyOwnedByYou")
        {
            tracing::info!("created S3 bucket {target} at {}", self.endpoint_url());
            return Ok(());
        }
        Err(self.failure(&request.method, &target, &response))
    }

    async fn put_object(&self, key: &str, bytes: Vec<u8>) -> Result<()> {
        let full = self.full_key(key)?;
        let target = self.target(&full);
        let body = Bytes::from(bytes);
        let payload_hash = if body.len() > 1 << 20 {
            let body = body.clone();
            tokio::task::spawn_blocking(move || sigv4::hex_sha256(&body))
                .await
                .map_err(|err| Error::Internal(format!("hashing a snapshot object: {err}")))?
        } else {
            sigv4::hex_sha256(&body)
        };
        let request = Request {
            method: Method::PUT,
            path: self.object_path(&full),
            query: Vec::new(),
            body,
            payload_hash,
            target: &target,
            sink: None,
        };
        let mut response = self.send(&request).await?;
        if response.status == StatusCode::NOT_FOUND && response.error_code() == "NoSuchBucket" {
            self.create_bucket().await?;
            response = self.send(&request).await?;
        }
        if response.status.is_success() {
            Ok(())
        } else {
            Err(self.failure(&request.method, &target, &response))
        }
    }

    async fn get_object(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.fetch(key, None).await
    }

    async fn get_object_to_file(&self, key: &str, dest: &Path) -> Result<bool> {
        self.fetch(key, Some(dest))
            .await
            .map(|found| found.is_some())
    }

    /// GET of one object: into memory, or (`sink`) streamed into a file, whose body is then not returned.
    async fn fetch(&self, key: &str, sink: Option<&Path>) -> Result<Option<Vec<u8>>> {
        let full = self.full_key(key)?;
        let target = self.target(&full);
        let request = Request {
            method: Method::GET,
            path: self.object_path(&full),
            query: Vec::new(),
            body: Bytes::new(),
            payload_hash: sigv4::EMPTY_SHA256.to_string(),
            target: &target,
            sink,
        };
        let response = self.send(&request).await?;
        match response.status {
            status if status.is_success() => Ok(Some(response.body)),
            // NoSuchKey, or NoSuchBucket (nothing stored yet). A 404 with another body is not from S3.
            StatusCode::NOT_FOUND
                if response.body.is_empty()
                    || matches!(response.error_code().as_str(), "NoSuchKey" | "NoSuchBucket") =>
            {
                Ok(None)
            }
            _ => Err(self.failure(&request.method, &target, &response)),
        }
    }

    /// Uploads a file with one part in memory at a time: a single PUT when it fits in one part, else a
    /// multipart upload, whose object appears only when the upload completes (and is aborted on failure),
    /// so a partial object is never visible under `key`.
    async fn put_file_object(&self, key: &str, path: &Path) -> Result<()> {
        let full = self.full_key(key)?;
        let target = self.target(&full);
        let io = |err: std::io::Error| {
            Error::Snapshot(format!(
                "uploading {} to {target} at {}: {err}",
                path.display(),
                self.endpoint_url()
            ))
        };
        let mut file = tokio::fs::File::open(path).await.map_err(io)?;
        let len = file.metadata().await.map_err(io)?.len();
        let part_size = self
            .options
            .multipart_part_size
            .max(MIN_PART_SIZE)
            .max(len.div_ceil(MAX_PARTS));
        if len <= part_size {
            let mut bytes = Vec::with_capacity(len as usize);
            file.read_to_end(&mut bytes).await.map_err(io)?;
            return self.put_object(key, bytes).await;
        }
        let upload_id = self.create_multipart(&full, &target).await?;
        let uploaded = self
            .upload_parts(&full, &target, &upload_id, &mut file, len, part_size)
            .await;
        let result = match uploaded {
            Ok(parts) => {
                self.complete_multipart(&full, &target, &upload_id, &parts)
                    .await
            }
            Err(err) => Err(err),
        };
        if let Err(err) = &result {
            // Otherwise the stored parts linger (and are billed) until a lifecycle rule removes them.
            if let Err(abort) = self.abort_multipart(&full, &target, &upload_id).await {
                tracing::warn!(error = %abort, upload_failure = %err, "cannot abort the S3 multipart upload");
            }
        }
        result.map_err(|err| match err {
            Error::Snapshot(text) if !text.contains(&target) => {
                Error::Snapshot(format!("uploading {} to {target}: {text}", path.display()))
            }
            other => other,
        })
    }

    async fn create_multipart(&self, full: &str, target: &str) -> Result<String> {
        let request = Request {
            method: Method::POST,
            path: self.object_path(full),
            query: vec![("uploads".to_string(), String::new())],
            body: Bytes::new(),
            payload_hash: sigv4::EMPTY_SHA256.to_string(),
            target,
            sink: None,
        };
        let mut response = self.send(&request).await?;
        if response.status == StatusCode::NOT_FOUND && response.error_code() == "NoSuchBucket" {
            self.create_bucket().await?;
            response = self.send(&request).await?;
        }
        if !response.status.is_success() {
            return Err(self.failure(&request.method, target, &response));
        }
        match xml_elements(&response.body, "UploadId").pop() {
            Some(id) if !id.is_empty() => Ok(id),
            _ => Err(Error::Snapshot(format!(
                "S3 POST {target}?uploads at {} answered without an UploadId",
                self.endpoint_url()
            ))),
        }
    }

    /// Sends the parts in order and returns their numbers and ETags.
    async fn upload_parts(
        &self,
        full: &str,
        target: &str,
        upload_id: &str,
        file: &mut tokio::fs::File,
        len: u64,
        part_size: u64,
    ) -> Result<Vec<(u64, String)>> {
        let mut parts = Vec::new();
        let mut sent: u64 = 0;
        while sent < len {
            let number = parts.len() as u64 + 1;
            let size = part_size.min(len - sent);
            let mut bytes = vec![0u8; size as usize];
            file.read_exact(&mut bytes).await.map_err(|err| {
                Error::Snapshot(format!(
                    "reading part {number} ({size} bytes at offset {sent}) for {target}: {err}"
                ))
            })?;
            let body = Bytes::from(bytes);
            let hashed = body.clone();
            let payload_hash = tokio::task::spawn_blocking(move || sigv4::hex_sha256(&hashed))
                .await
                .map_err(|err| Error::Internal(format!("hashing a snapshot part: {err}")))?;
            let request = Request {
                method: Method::PUT,
                path: self.object_path(full),
                query: vec![
                    ("partNumber".to_string(), number.to_string()),
                    ("uploadId".to_string(), upload_id.to_string()),
                ],
                body,
                payload_hash,
                target,
                sink: None,
            };
            let response = self.send(&request).await?;
            if !response.status.is_success() {
                return Err(self.failure(&request.method, target, &response));
            }
            let Some(etag) = response.etag else {
                return Err(Error::Snapshot(format!(
                    "S3 PUT {target} part {number} at {} answered without an ETag",
                    self.endpoint_url()
                )));
            };
            parts.push((number, etag));
            sent += size;
        }
        Ok(parts)
    }

    async fn complete_multipart(
        &self,
        full: &str,
        target: &str,
        upload_id: &str,
        parts: &[(u64, String)],
    ) -> Result<()> {
        let mut xml = String::from("<CompleteMultipartUpload>");
        for (number, etag) in parts {
            xml.push_str(&format!(
                "<Part><PartNumber>{number}</PartNumber><ETag>{}</ETag></Part>",
                xml_escape(etag)
            ));
        }
        xml.push_str("</CompleteMultipartUpload>");
        let body = Bytes::from(xml);
        let request = Request {
            method: Method::POST,
            path: self.object_path(full),
            query: vec![("uploadId".to_string(), upload_id.to_string())],
            payload_hash: sigv4::hex_sha256(&body),
            body,
            target,
            sink: None,
        };
        let response = self.send(&request).await?;
        // S3 may answer 200 and still fail: the error is then the body (the status line went out before
        // the parts were assembled).
        let failed_late = String::from_utf8_lossy(&response.body).contains("<Error>");
        if response.status.is_success() && !failed_late {
            Ok(())
        } else {
            Err(self.failure(&request.method, target, &response))
        }
    }

    async fn abort_multipart(&self, full: &str, target: &str, upload_id: &str) -> Result<()> {
        let request = Request {
            method: Method::DELETE,
            path: self.object_path(full),
            query: vec![("uploadId".to_string(), upload_id.to_string())],
            body: Bytes::new(),
            payload_hash: sigv4::EMPTY_SHA256.to_string(),
            target,
            sink: None,
        };
        let response = self.send(&request).await?;
        if response.status.is_success() || response.status == StatusCode::NOT_FOUND {
            Ok(())
        } else {
            Err(self.failure(&request.method, target, &response))
        }
    }

    async fn list_objects(&self, prefix: &str) -> Result<Vec<String>> {
        let full_prefix = format!("{}{prefix}", self.prefix);
        let target = format!("s3://{}/{full_prefix}*", self.bucket);
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut query = vec![
                ("list-type".to_string(), "2".to_string()),
                ("prefix".to_string(), full_prefix.clone()),
            ];
            if let Some(size) = self.options.list_page_size {
                query.push(("max-keys".to_string(), size.to_string()));
            }
            if let Some(token) = &token {
                query.push(("continuation-token".to_string(), token.clone()));
            }
            let request = Request {
                method: Method::GET,
                path: self.bucket_path(),
                query,
                body: Bytes::new(),
                payload_hash: sigv4::EMPTY_SHA256.to_string(),
                target: &target,
                sink: None,
            };
            let response = self.send(&request).await?;
            if response.status == StatusCode::NOT_FOUND && response.error_code() == "NoSuchBucket" {
                return Ok(Vec::new());
            }
            if !response.status.is_success() {
                return Err(self.failure(&request.method, &target, &response));
            }
            for key in xml_elements(&response.body, "Key") {
                match key.strip_prefix(&self.prefix) {
                    Some(key) => keys.push(key.to_string()),
                    None => {
                        return Err(Error::Snapshot(format!(
                            "S3 list of {target} at {} returned key `{key}` outside the prefix",
                            self.endpoint_url()
                        )))
                    }
                }
            }
            let truncated = xml_elements(&response.body, "IsTruncated")
                .first()
                .is_some_and(|value| value.trim() == "true");
            if !truncated {
                return Ok(keys);
            }
            match xml_elements(&response.body, "NextContinuationToken").pop() {
                Some(next) if !next.is_empty() && token.as_deref() != Some(next.as_str()) => {
                    token = Some(next)
                }
                _ => {
                    return Err(Error::Snapshot(format!(
                        "S3 list of {target} at {} is truncated but has no new continuation token \
                         (is the server ListObjectsV2-compatible?)",
                        self.endpoint_url()
                    )))
                }
            }
        }
    }

    async fn delete_object(&self, key: &str) -> Result<()> {
        let full = self.full_key(key)?;
        let target = self.target(&full);
        let request = Request {
            method: Method::DELETE,
            path: self.object_path(&full),
            query: Vec::new(),
            body: Bytes::new(),
            payload_hash: sigv4::EMPTY_SHA256.to_string(),
            target: &target,
            sink: None,
        };
        let response = self.send(&request).await?;
        if response.status.is_success() || response.status == StatusCode::NOT_FOUND {
            Ok(())
        } else {
            Err(self.failure(&request.method, &target, &response))
        }
    }
}

impl SnapshotStore for S3Store {
    fn describe(&self) -> String {
        format!(
            "s3://{}/{} ({})",
            self.bucket,
            self.prefix,
            self.endpoint_url()
        )
    }

    fn put<'a>(&'a self, key: &'a str, bytes: Vec<u8>) -> StoreFuture<'a, ()> {
        Box::pin(self.put_object(key, bytes))
    }

    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Vec<u8>>> {
        Box::pin(self.get_object(key))
    }

    fn put_file<'a>(&'a self, key: &'a str, path: &'a Path) -> StoreFuture<'a, ()> {
        Box::pin(self.put_file_object(key, path))
    }

    fn get_file<'a>(&'a self, key: &'a str, dest: &'a Path) -> StoreFuture<'a, bool> {
        Box::pin(self.get_object_to_file(key, dest))
    }

    fn list<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, Vec<String>> {
        Box::pin(self.list_objects(prefix))
    }

    fn delete<'a>(&'a self, key: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(self.delete_object(key))
    }
}

fn resolve_credentials(
    cfg: &SnapshotS3Config,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(Option<sigv4::Credentials>, &'static str)> {
    let access_key = cfg.access_key.trim();
    let secret = cfg.secret.trim();
    match (access_key.is_empty(), secret.is_empty()) {
        (false, false) => {
            let token = cfg.session_token.trim();
            return Ok((
                Some(sigv4::Credentials {
                    access_key: access_key.to_string(),
                    secret: secret.to_string(),
                    session_token: (!token.is_empty()).then(|| token.to_string()),
                }),
                "config",
            ));
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
        if let (Some(access_key), Some(secret)) = (env(key_var), env(secret_var)) {
            return Ok((
                Some(sigv4::Credentials {
                    access_key: access_key.trim().to_string(),
                    secret: secret.trim().to_string(),
                    session_token: token_var.and_then(env).map(|t| t.trim().to_string()),
                }),
                source,
            ));
        }
    }
    Ok((None, "anonymous"))
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

/// `""` for no prefix, else the prefix without leading slashes and with exactly one trailing slash.
fn normalize_prefix(path: &str) -> String {
    let trimmed = path.trim().trim_matches('/');
    if trimmed.is_empty() {
        String::new()
    } else {
        format!("{trimmed}/")
    }
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The decoded text of every `<name>...</name>` element (no nesting, no attributes on `name`), in order.
/// Enough for S3's flat response documents.
fn xml_elements(xml: &[u8], name: &str) -> Vec<String> {
    let text = String::from_utf8_lossy(xml);
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let mut found = Vec::new();
    let mut rest: &str = &text;
    while let Some(start) = rest.find(&open) {
        rest = &rest[start + open.len()..];
        let Some(end) = rest.find(&close) else { break };
        found.push(xml_unescape(&rest[..end]));
        rest = &rest[end + close.len()..];
    }
    found
}

/// Escapes text for an XML element.
fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Decodes the five predefined XML entities, numeric character references and CDATA sections.
fn xml_unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find(['&', '<']) {
        out.push_str(&rest[..pos]);
        rest = &rest[pos..];
        if let Some(after) = rest.strip_prefix("<![CDATA[") {
            match after.find("]]>") {
                Some(end) => {
                    out.push_str(&after[..end]);
                    rest = &after[end + 3..];
                }
                None => {
                    out.push_str(after);
                    rest = "";
                }
            }
            continue;
        }
        if rest.starts_with('<') {
            out.push('<');
            rest = &rest[1..];
            continue;
        }
        let decoded = rest.find(';').filter(|&end| end <= 12).and_then(|end| {
            let entity = &rest[1..end];
            let c = match entity {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                _ => {
                    let number = if let Some(hex) = entity
                        .strip_prefix("#x")
                        .or_else(|| entity.strip_prefix("#X"))
                    {
                        u32::from_str_radix(hex, 16).ok()
                    } else {
                        entity.strip_prefix('#').and_then(|dec| dec.parse().ok())
                    };
                    number.and_then(char::from_u32)
                }
            };
            c.map(|c| (c, end))
        });
        match decoded {
            Some((c, end)) => {
                out.push(c);
                rest = &rest[end + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// AWS Signature Version 4 for header-signed requests (the `Authorization` header).
pub mod sigv4 {
    use std::fmt;
    use std::time::{SystemTime, UNIX_EPOCH};

    use hmac::{Hmac, Mac};
    use sha2::{Digest, Sha256};

    /// SHA-256 of the empty string: the payload hash of a request without a body.
    pub const EMPTY_SHA256: &str =
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    /// An access key pair, with an optional session token (temporary credentials).
    #[derive(Clone, PartialEq, Eq)]
    pub struct Credentials {
        pub access_key: String,
        pub secret: String,
        pub session_token: Option<String>,
    }

    impl fmt::Debug for Credentials {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("Credentials")
                .field("access_key", &self.access_key)
                .field("secret", &"<redacted>")
                .field(
                    "session_token",
                    &self.session_token.as_ref().map(|_| "<redacted>"),
                )
                .finish()
        }
    }

    pub fn hex(bytes: &[u8]) -> String {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = String::with_capacity(bytes.len() * 2);
        for byte in bytes {
            out.push(char::from(DIGITS[usize::from(byte >> 4)]));
            out.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
        }
        out
    }

    pub fn hex_sha256(data: &[u8]) -> String {
        hex(&Sha256::digest(data))
    }

    fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
        // HMAC accepts keys of any length, so `new_from_slice` cannot fail.
        let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC takes keys of any length"),
        };
        mac.update(data);
        mac.finalize().into_bytes().to_vec()
    }

    /// RFC 3986 percent-encoding of everything but the unreserved characters (`A-Z a-z 0-9 - . _ ~`),
    /// and of `/` unless `keep_slash` (object key paths keep their slashes).
    pub fn uri_encode(text: &str, keep_slash: bool) -> String {
        let mut out = String::with_capacity(text.len());
        for byte in text.bytes() {
            if byte.is_ascii_alphanumeric()
                || matches!(byte, b'-' | b'.' | b'_' | b'~')
                || (keep_slash && byte == b'/')
            {
                out.push(char::from(byte));
            } else {
                out.push_str(&format!("%{byte:02X}"));
            }
        }
        out
    }

    /// The canonical query string: names and values URI-encoded, sorted by name then value, joined with
    /// `&`. It is also used verbatim as the request's query string.
    pub fn canonical_query(params: &[(String, String)]) -> String {
        let mut encoded: Vec<(String, String)> = params
            .iter()
            .map(|(name, value)| (uri_encode(name, false), uri_encode(value, false)))
            .collect();
        encoded.sort();
        encoded
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect::<Vec<_>>()
            .join("&")
    }

    /// `YYYYMMDD'T'HHMMSS'Z'` in UTC.
    pub fn amz_date(time: SystemTime) -> String {
        let secs = time
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let days = (secs / 86_400) as i64;
        let rem = secs % 86_400;
        // Howard Hinnant's civil_from_days.
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        format!(
            "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
            rem / 3600,
            (rem / 60) % 60,
            rem % 60
        )
    }

    /// The canonical request (exposed for tests and debugging).
    pub fn canonical_request(
        method: &str,
        canonical_uri: &str,
        canonical_query: &str,
        headers: &[(&str, &str)],
        payload_hash: &str,
    ) -> (String, String) {
        let mut canonical: Vec<(String, String)> = headers
            .iter()
            .map(|(name, value)| {
                (
                    name.trim().to_ascii_lowercase(),
                    value.split_whitespace().collect::<Vec<_>>().join(" "),
                )
            })
            .collect();
        canonical.sort();
        let signed_headers = canonical
            .iter()
            .map(|(name, _)| name.as_str())
            .collect::<Vec<_>>()
            .join(";");
        let mut request = format!("{method}\n{canonical_uri}\n{canonical_query}\n");
        for (name, value) in &canonical {
            request.push_str(name);
            request.push(':');
            request.push_str(value);
            request.push('\n');
        }
        request.push('\n');
        request.push_str(&signed_headers);
        request.push('\n');
        request.push_str(payload_hash);
        (request, signed_headers)
    }

    /// The `Authorization` header value for a request. `canonical_uri` is the URI-encoded path exactly as
    /// sent (S3 does not encode it twice); `canonical_query` comes from [`canonical_query`]; `headers` are
    /// the headers to sign (at least `host` and `x-amz-date`, which must equal `amz_date`).
    #[allow(clippy::too_many_arguments)]
    pub fn authorization(
        credentials: &Credentials,
        region: &str,
        service: &str,
        method: &str,
        canonical_uri: &str,
        canonical_query: &str,
        headers: &[(&str, &str)],
        payload_hash: &str,
        amz_date: &str,
    ) -> String {
        let (request, signed_headers) = canonical_request(
            method,
            canonical_uri,
            canonical_query,
            headers,
            payload_hash,
        );
        let date = amz_date.get(..8).unwrap_or(amz_date);
        let scope = format!("{date}/{region}/{service}/aws4_request");
        let string_to_sign = format!(
            "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
            hex_sha256(request.as_bytes())
        );
        let mut key = hmac_sha256(
            format!("AWS4{}", credentials.secret).as_bytes(),
            date.as_bytes(),
        );
        for part in [region, service, "aws4_request"] {
            key = hmac_sha256(&key, part.as_bytes());
        }
        let signature = hex(&hmac_sha256(&key, string_to_sign.as_bytes()));
        format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope},SignedHeaders={signed_headers},Signature={signature}",
            credentials.access_key
        )
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::{Duration, UNIX_EPOCH};

    use super::sigv4::{self, Credentials};
    use super::*;

    const AWS_KEY: &str = "AKIAIOSFODNN7EXAMPLE";
    const AWS_SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
    const DATE: &str = "20130524T000000Z";
    const HOST: &str = "examplebucket.s3.amazonaws.com";

    fn example_credentials() -> Credentials {
        Credentials {
            access_key: AWS_KEY.to_string(),
            secret: AWS_SECRET.to_string(),
            session_token: None,
        }
    }

    fn signature(authorization: &str) -> &str {
        authorization
            .rsplit_once("Signature=")
            .map(|(_, sig)| sig)
            .unwrap_or("")
    }

    // The four examples of "Signature Calculations for the Authorization Header" in the S3 API reference.
    #[test]
    fn s3_example_get_object() {
        let auth = sigv4::authorization(
            &example_credentials(),
            "us-east-1",
            "s3",
            "GET",
            "/test.txt",
            "",
            &[
                ("Host", HOST),
                ("Range", "bytes=0-9"),
                ("x-amz-content-sha256", sigv4::EMPTY_SHA256),
                ("x-amz-date", DATE),
            ],
            sigv4::EMPTY_SHA256,
            DATE,
        );
        assert_eq!(
            auth,
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,\
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,\
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    #[test]
    fn s3_example_put_object() {
        let payload = b"Welcome to Amazon S3.";
        let hash = sigv4::hex_sha256(payload);
        assert_eq!(
            hash,
            "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072"
        );
        let path = format!("/{}", sigv4::uri_encode("test$file.text", true));
        assert_eq!(path, "/test%24file.text");
        let auth = sigv4::authorization(
            &example_credentials(),
            "us-east-1",
            "s3",
            "PUT",
            &path,
            "",
            &[
                ("Date", "Fri, 24 May 2013 00:00:00 GMT"),
                ("Host", HOST),
                ("x-amz-date", DATE),
                ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
                ("x-amz-content-sha256", &hash),
            ],
            &hash,
            DATE,
        );
        assert!(auth.contains(
            "SignedHeaders=date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class,"
        ));
        assert_eq!(
            signature(&auth),
            "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd"
        );
    }

    #[test]
    fn s3_example_get_bucket_lifecycle() {
        let query = sigv4::canonical_query(&[("lifecycle".to_string(), String::new())]);
        assert_eq!(query, "lifecycle=");
        let auth = sigv4::authorization(
            &example_credentials(),
            "us-east-1",
            "s3",
            "GET",
            "/",
            &query,
            &[
                ("host", HOST),
                ("x-amz-content-sha256", sigv4::EMPTY_SHA256),
                ("x-amz-date", DATE),
            ],
            sigv4::EMPTY_SHA256,
            DATE,
        );
        assert_eq!(
            signature(&auth),
            "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543"
        );
    }

    #[test]
    fn s3_example_list_objects() {
        // Given out of order: the canonical query sorts them.
        let query = sigv4::canonical_query(&[
            ("prefix".to_string(), "J".to_string()),
            ("max-keys".to_string(), "2".to_string()),
        ]);
        assert_eq!(query, "max-keys=2&prefix=J");
        let (canonical, _) = sigv4::canonical_request(
            "GET",
            "/",
            &query,
            &[
                ("host", HOST),
                ("x-amz-content-sha256", sigv4::EMPTY_SHA256),
                ("x-amz-date", DATE),
            ],
            sigv4::EMPTY_SHA256,
        );
        assert_eq!(
            sigv4::hex_sha256(canonical.as_bytes()),
            "df57d21db20da04d7fa30298dd4488ba3a2b47ca3a489c74750e0f1e7df1b9b7"
        );
        let auth = sigv4::authorization(
            &example_credentials(),
            "us-east-1",
            "s3",
            "GET",
            "/",
            &query,
            &[
                ("host", HOST),
                ("x-amz-content-sha256", sigv4::EMPTY_SHA256),
                ("x-amz-date", DATE),
            ],
            sigv4::EMPTY_SHA256,
            DATE,
        );
        assert_eq!(
            signature(&auth),
            "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"
        );
    }

    // "get-vanilla-query-order-key-case" from the generic AWS SigV4 test suite.
    #[test]
    fn sigv4_suite_query_order() {
        let credentials = Credentials {
            access_key: "AKIDEXAMPLE".to_string(),
            secret: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".to_string(),
            session_token: None,
        };
        let query = sigv4::canonical_query(&[
            ("Param2".to_string(), "value2".to_string()),
            ("Param1".to_string(), "value1".to_string()),
        ]);
        let auth = sigv4::authorization(
            &credentials,
            "us-east-1",
            "service",
            "GET",
            "/",
            &query,
            &[
                ("Host", "example.amazonaws.com"),
                ("X-Amz-Date", "20150830T123600Z"),
            ],
            sigv4::EMPTY_SHA256,
            "20150830T123600Z",
        );
        assert_eq!(
            auth,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date, \
             Signature=b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"
                .replace(", ", ",")
        );
    }

    #[test]
    fn amz_date_formats_utc() {
        assert_eq!(sigv4::amz_date(UNIX_EPOCH), "19700101T000000Z");
        assert_eq!(
            sigv4::amz_date(UNIX_EPOCH + Duration::from_secs(1_369_353_600)),
            DATE
        );
        // 2024-02-29 23:59:59 (a leap day) and 2000-03-01 12:34:56.
        assert_eq!(
            sigv4::amz_date(UNIX_EPOCH + Duration::from_secs(1_709_251_199)),
            "20240229T235959Z"
        );
        assert_eq!(
            sigv4::amz_date(UNIX_EPOCH + Duration::from_secs(951_914_096)),
            "20000301T123456Z"
        );
    }

    #[test]
    fn uri_encoding() {
        assert_eq!(sigv4::uri_encode("a b/c+d~e", true), "a%20b/c%2Bd~e");
        assert_eq!(sigv4::uri_encode("a b/c", false), "a%20b%2Fc");
        assert_eq!(sigv4::uri_encode("é", false), "%C3%A9");
        assert_eq!(
            sigv4::canonical_query(&[
                ("prefix".to_string(), "a/b c".to_string()),
                ("continuation-token".to_string(), "x=y+".to_string()),
            ]),
            "continuation-token=x%3Dy%2B&prefix=a%2Fb%20c"
        );
    }

    #[test]
    fn xml_extraction_and_entities() {
        let xml = br#"<?xml version="1.0"?><ListBucketResult><IsTruncated>true</IsTruncated>
            <Contents><Key>a b&amp;c</Key></Contents><Contents><Key>&lt;x&gt;&quot;&apos;&#65;&#x42;&bogus;</Key></Contents>
            <Contents><Key><![CDATA[raw & <stuff>]]></Key></Contents>
            <NextContinuationToken>tok</NextContinuationToken></ListBucketResult>"#;
        assert_eq!(
            xml_elements(xml, "Key"),
            vec!["a b&c", "<x>\"'AB&bogus;", "raw & <stuff>"]
        );
        assert_eq!(xml_elements(xml, "NextContinuationToken"), vec!["tok"]);
        assert!(xml_elements(xml, "Missing").is_empty());
        assert!(xml_elements(b"<Key>unterminated", "Key").is_empty());
        assert_eq!(xml_unescape("&"), "&");
        assert_eq!(xml_unescape("&#xFFFFFFFF;"), "&#xFFFFFFFF;");
    }

    fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    fn cfg(endpoint: &str) -> SnapshotS3Config {
        SnapshotS3Config {
            endpoint: endpoint.to_string(),
            bucket: "snapshots".to_string(),
            ..SnapshotS3Config::default()
        }
    }

    fn build(cfg: &SnapshotS3Config, env: &[(&str, &str)]) -> Result<S3Store> {
        S3Store::build(cfg, S3Options::default(), &env_of(env))
    }

    #[test]
    fn credentials_config_then_aws_env_then_minio_env_then_anonymous() -> Result<()> {
        let all_env = [
            ("AWS_ACCESS_KEY_ID", "aws-key"),
            ("AWS_SECRET_ACCESS_KEY", "aws-secret"),
            ("AWS_SESSION_TOKEN", "aws-token"),
            ("MINIO_ACCESS_KEY", "minio-key"),
            ("MINIO_SECRET_KEY", "minio-secret"),
        ];
        let mut config = cfg("localhost:9000");
        config.access_key = "cfg-key".into();
        config.secret = "cfg-secret".into();
        let store = build(&config, &all_env)?;
        assert_eq!(store.credential_source(), "config");
        assert_eq!(
            store.credentials.as_ref().map(|c| c.access_key.as_str()),
            Some("cfg-key")
        );
        assert_eq!(
            store
                .credentials
                .as_ref()
                .and_then(|c| c.session_token.clone()),
            None
        );

        let store = build(&cfg("localhost:9000"), &all_env)?;
        assert_eq!(store.credential_source(), "env:AWS_ACCESS_KEY_ID");
        assert_eq!(
            store.credentials,
            Some(Credentials {
                access_key: "aws-key".into(),
                secret: "aws-secret".into(),
                session_token: Some("aws-token".into()),
            })
        );

        let store = build(&cfg("localhost:9000"), &all_env[3..])?;
        assert_eq!(store.credential_source(), "env:MINIO_ACCESS_KEY");
        assert_eq!(
            store.credentials.as_ref().map(|c| c.secret.as_str()),
            Some("minio-secret")
        );

        // A half-set AWS pair falls through to MinIO; empty values count as unset.
        let store = build(
            &cfg("localhost:9000"),
            &[
                ("AWS_ACCESS_KEY_ID", "only-key"),
                ("AWS_SECRET_ACCESS_KEY", ""),
                ("MINIO_ACCESS_KEY", "m"),
                ("MINIO_SECRET_KEY", "s"),
            ],
        )?;
        assert_eq!(store.credential_source(), "env:MINIO_ACCESS_KEY");

        let store = build(&cfg("localhost:9000"), &[])?;
        assert_eq!(store.credential_source(), "anonymous");
        assert!(store.credentials.is_none());
        Ok(())
    }

    fn config_field(result: Result<S3Store>) -> String {
        match result {
            Err(Error::Config { field, .. }) => field,
            Err(other) => format!("unexpected error {other}"),
            Ok(store) => format!("unexpected success {store:?}"),
        }
    }

    #[test]
    fn invalid_settings_name_their_field() {
        let mut config = cfg("localhost:9000");
        config.access_key = "k".into();
        assert_eq!(config_field(build(&config, &[])), "snapshot.s3.secret");
        let mut config = cfg("localhost:9000");
        config.secret = "s".into();
        assert_eq!(config_field(build(&config, &[])), "snapshot.s3.access_key");
        let mut config = cfg("localhost:9000");
        config.session_token = "t".into();
        assert_eq!(
            config_field(build(&config, &[])),
            "snapshot.s3.session_token"
        );
        let mut config = cfg("localhost:9000");
        config.bucket = String::new();
        assert_eq!(config_field(build(&config, &[])), "snapshot.s3.bucket");
        config.bucket = "has/slash".into();
        assert_eq!(config_field(build(&config, &[])), "snapshot.s3.bucket");
        for endpoint in [
            "ftp://host",
            "http://host/path",
            "http://",
            "host name",
            "user@host",
            "host:99999",
        ] {
            assert_eq!(
                config_field(build(&cfg(endpoint), &[])),
                "snapshot.s3.endpoint",
                "{endpoint}"
            );
        }
        let mut config = cfg("");
        config.region = "us east".into();
        assert_eq!(config_field(build(&config, &[])), "snapshot.s3.region");
    }

    #[test]
    fn endpoints_regions_and_addressing() -> Result<()> {
        let store = build(&cfg(""), &[])?;
        assert_eq!(store.endpoint_url(), "https://s3.us-east-1.amazonaws.com");
        assert!(!store.path_style());
        assert_eq!(store.host(), "snapshots.s3.us-east-1.amazonaws.com");
        assert_eq!(store.object_path("a b"), "/a%20b");
        assert_eq!(store.bucket_path(), "/");

        let store = build(&cfg(""), &[("AWS_DEFAULT_REGION", "eu-west-1")])?;
        assert_eq!(store.region(), "eu-west-1");
        assert_eq!(store.endpoint_url(), "https://s3.eu-west-1.amazonaws.com");
        let store = build(
            &cfg(""),
            &[("AWS_REGION", "eu-north-1"), ("AWS_DEFAULT_REGION", "x")],
        )?;
        assert_eq!(store.region(), "eu-north-1");
        let mut config = cfg("");
        config.region = "ap-south-1".into();
        config.force_path_style = true;
        let store = build(&config, &[("AWS_REGION", "eu-north-1")])?;
        assert_eq!(store.region(), "ap-south-1");
        assert!(store.path_style());
        assert_eq!(store.object_path("k"), "/snapshots/k");

        for bucket in ["my.dotted.bucket", "Upper", "under_score"] {
            let mut config = cfg("");
            config.bucket = bucket.into();
            assert!(build(&config, &[])?.path_style(), "{bucket}");
        }

        let store = build(&cfg("minio:9000"), &[])?;
        assert_eq!(store.endpoint_url(), "http://minio:9000");
        assert!(store.path_style());
        assert_eq!(store.host(), "minio:9000");
        assert_eq!(store.bucket_path(), "/snapshots");
        assert_eq!(store.object_path("dir/a+b"), "/snapshots/dir/a%2Bb");

        let mut config = cfg("minio:9000");
        config.use_ssl = true;
        assert_eq!(build(&config, &[])?.endpoint_url(), "https://minio:9000");
        assert_eq!(
            build(&cfg("HTTP://Minio:80/"), &[])?.endpoint_url(),
            "http://minio"
        );
        assert_eq!(
            build(&cfg("https://[::1]:9000"), &[])?.endpoint_url(),
            "https://[::1]:9000"
        );
        Ok(())
    }

    #[test]
    fn prefixes_and_keys() -> Result<()> {
        assert_eq!(normalize_prefix(""), "");
        assert_eq!(normalize_prefix("/"), "");
        assert_eq!(normalize_prefix("snaps"), "snaps/");
        assert_eq!(normalize_prefix("/a/b/"), "a/b/");
        let mut config = cfg("localhost:9000");
        config.path = "/cluster-1/".into();
        let store = build(&config, &[])?;
        assert_eq!(store.prefix(), "cluster-1/");
        assert_eq!(store.full_key("snap.db")?, "cluster-1/snap.db");
        assert_eq!(
            store.describe(),
            "s3://snapshots/cluster-1/ (http://localhost:9000)"
        );
        for bad in ["", "/abs", "a/../b", ".", "x\ny", &"k".repeat(1100)] {
            assert!(
                matches!(store.full_key(bad), Err(Error::Snapshot(_))),
                "{bad:?}"
            );
        }
        Ok(())
    }
}
