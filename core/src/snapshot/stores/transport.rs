//! The HTTP client under every object_store-based snapshot store.
//!
//! object_store's own client uses one total timeout per request, which would fail a large snapshot on a
//! slow link however steadily it moves. Snapshots need two different limits instead: the time until a
//! response starts (scaled with the size of the upload, so a big PUT gets time to send its body) and the
//! longest *silence* while a body is read (so a long download that keeps moving never fails, and a stalled
//! one fails quickly). This connector gives object_store exactly that, on the reqwest/rustls/ring stack the
//! rest of the crate already uses; object_store keeps retries, signing and the protocols.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest, HttpResponse,
    HttpResponseBody, HttpService,
};
use object_store::{BackoffConfig, ClientOptions, RetryConfig};

use crate::error::{Error, Result};

/// Timeouts and retries shared by the HTTP stores (S3, GCS, Azure, WebDAV). [`Default`] suits production.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// Time allowed to open a TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// Time allowed until a response's headers arrive (for an upload, plus the time below), and the
    /// longest silence while a response body is being read (a large download has no total limit).
    pub request_timeout: Duration,
    /// An upload may take `request_timeout` plus its size divided by this many bytes per second.
    pub min_upload_bytes_per_sec: u64,
    /// Tries per request (at least 1), for connection errors, timeouts and 5xx/429 answers.
    pub attempts: u32,
    /// Pause before the first retry; doubled for each further retry.
    pub retry_backoff: Duration,
    /// Files larger than this are uploaded in parts of this size (one or two parts in memory at a time);
    /// S3 requires at least 5 MiB for all but the last part.
    pub multipart_part_size: u64,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            min_upload_bytes_per_sec: 1024 * 1024,
            attempts: 4,
            retry_backoff: Duration::from_millis(200),
            multipart_part_size: 8 << 20,
        }
    }
}

impl HttpOptions {
    /// Checks the values; `section` names the configuration section in the error (`snapshot.s3`).
    pub(crate) fn validate(&self, section: &str) -> Result<()> {
        if self.attempts == 0 {
            return Err(Error::config(section, "attempts must be at least 1"));
        }
        if self.request_timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err(Error::config(section, "timeouts must be longer than 0"));
        }
        if self.multipart_part_size < 5 << 20 {
            return Err(Error::config(
                section,
                "multipart_part_size must be at least 5 MiB (the S3 minimum)",
            ));
        }
        Ok(())
    }

    /// object_store's retry policy for these options: `attempts - 1` retries with doubling backoff. The
    /// total is bounded by the attempts; the time limit only keeps signed requests fresh.
    pub(crate) fn retry_config(&self) -> RetryConfig {
        RetryConfig {
            backoff: BackoffConfig {
                init_backoff: self.retry_backoff,
                max_backoff: self.retry_backoff.saturating_mul(1 << 6),
                base: 2.0,
            },
            max_retries: self.attempts.saturating_sub(1) as usize,
            retry_timeout: Duration::from_secs(5 * 60),
        }
    }

    /// The connector to hand to an object_store builder. `basic_auth` is added to every request (WebDAV).
    pub(crate) fn connector(&self, basic_auth: Option<(String, String)>) -> Result<Connector> {
        let client = reqwest::Client::builder()
            .connect_timeout(self.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            // object_store follows redirects itself where a protocol uses them.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("harmonylite/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|err| Error::Snapshot(format!("cannot build the HTTP client: {err}")))?;
        Ok(Connector {
            service: Arc::new(TimedService {
                client,
                request_timeout: self.request_timeout,
                min_upload_bytes_per_sec: self.min_upload_bytes_per_sec.max(1),
                basic_auth,
            }),
        })
    }
}

/// Hands the same client (and its connection pool) to object_store, whatever options it asks for.
#[derive(Debug, Clone)]
pub(crate) struct Connector {
    service: Arc<TimedService>,
}

impl Connector {
    /// The client, for the few requests object_store has no call for (creating an S3 bucket).
    pub(crate) fn client(&self) -> HttpClient {
        HttpClient::new(SharedService(self.service.clone()))
    }
}

impl Connector {
    /// PUTs the file at `source` (`size` bytes) to `url`, read as it goes: object_store's payloads live in
    /// memory, and a backend without multipart uploads (WebDAV) would otherwise hold a whole snapshot.
    /// Not retried (the body is consumed); the caller's next save tries again.
    pub(crate) async fn put_file(
        &self,
        url: &str,
        source: &std::path::Path,
        size: u64,
    ) -> std::result::Result<(), String> {
        let service = &self.service;
        let file = tokio::fs::File::open(source)
            .await
            .map_err(|err| format!("reading {}: {err}", source.display()))?;
        let body = FileBody {
            file,
            buffer: vec![0; 1 << 20],
            remaining: size,
        };
        let mut request = service
            .client
            .put(url)
            .header(http::header::CONTENT_LENGTH, size)
            .body(reqwest::Body::wrap(body));
        if let Some((user, password)) = &service.basic_auth {
            request = request.basic_auth(user, Some(password));
        }
        let limit =
            service.request_timeout + Duration::from_secs(size / service.min_upload_bytes_per_sec);
        let response = tokio::time::timeout(limit, request.send())
            .await
            .map_err(|_| format!("no response within {} ms (timed out)", limit.as_millis()))?
            .map_err(|err| super::error_chain(&err.without_url()))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let text = tokio::time::timeout(service.request_timeout, response.text())
            .await
            .ok()
            .and_then(|text| text.ok())
            .unwrap_or_default();
        let text: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
        Err(format!(
            "HTTP {}: {}",
            status,
            text.chars().take(300).collect::<String>()
        ))
    }
}

/// A request body read from a file in blocks; fails if the file ends before `remaining` bytes.
struct FileBody {
    file: tokio::fs::File,
    buffer: Vec<u8>,
    remaining: u64,
}

impl Body for FileBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<Frame<Bytes>, std::io::Error>>> {
        let this = self.get_mut();
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        let want = this
            .buffer
            .len()
            .min(usize::try_from(this.remaining).unwrap_or(usize::MAX));
        let mut read = tokio::io::ReadBuf::new(&mut this.buffer[..want]);
        match tokio::io::AsyncRead::poll_read(Pin::new(&mut this.file), cx, &mut read) {
            Poll::Ready(Ok(())) if read.filled().is_empty() => {
                Poll::Ready(Some(Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the file became shorter while it was uploaded",
                ))))
            }
            Poll::Ready(Ok(())) => {
                this.remaining -= read.filled().len() as u64;
                Poll::Ready(Some(Ok(Frame::data(Bytes::copy_from_slice(read.filled())))))
            }
            Poll::Ready(Err(err)) => Poll::Ready(Some(Err(err))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

impl HttpConnector for Connector {
    fn connect(&self, _options: &ClientOptions) -> object_store::Result<HttpClient> {
        Ok(self.client())
    }
}

#[derive(Debug)]
struct SharedService(Arc<TimedService>);

#[async_trait::async_trait]
impl HttpService for SharedService {
    async fn call(&self, req: HttpRequest) -> std::result::Result<HttpResponse, HttpError> {
        self.0.call(req).await
    }
}

#[derive(Debug)]
struct TimedService {
    client: reqwest::Client,
    request_timeout: Duration,
    min_upload_bytes_per_sec: u64,
    basic_auth: Option<(String, String)>,
}

/// A timeout in the same shape as reqwest's, so that object_store classifies (and retries) it alike.
fn timed_out(what: String) -> HttpError {
    HttpError::new(
        HttpErrorKind::Timeout,
        std::io::Error::new(std::io::ErrorKind::TimedOut, what),
    )
}

fn classify(err: reqwest::Error) -> HttpError {
    let mut kind = if err.is_timeout() {
        HttpErrorKind::Timeout
    } else if err.is_connect() {
        HttpErrorKind::Connect
    } else if err.is_decode() {
        HttpErrorKind::Decode
    } else if err.is_request() || err.is_body() {
        HttpErrorKind::Request
    } else {
        HttpErrorKind::Unknown
    };
    // A connection dropped mid-exchange shows up as an I/O error deeper in the chain.
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            match io.kind() {
                TimedOut => kind = HttpErrorKind::Timeout,
                ConnectionAborted | ConnectionReset | BrokenPipe | UnexpectedEof => {
                    kind = HttpErrorKind::Interrupted
                }
                _ => {}
            }
        }
        source = cause.source();
    }
    HttpError::new(kind, err.without_url())
}

impl TimedService {
    async fn call(&self, req: HttpRequest) -> std::result::Result<HttpResponse, HttpError> {
        let upload = req.body().content_length() as u64;
        let (parts, body) = req.into_parts();
        let url = reqwest::Url::parse(&parts.uri.to_string())
            .map_err(|err| HttpError::new(HttpErrorKind::Request, err))?;
        let mut builder = self
            .client
            .request(parts.method, url)
            .headers(parts.headers)
            .body(reqwest::Body::wrap(body));
        if let Some((user, password)) = &self.basic_auth {
            builder = builder.basic_auth(user, Some(password));
        }
        let limit =
            self.request_timeout + Duration::from_secs(upload / self.min_upload_bytes_per_sec);
        let response = match tokio::time::timeout(limit, builder.send()).await {
            Ok(response) => response.map_err(classify)?,
            Err(_) => {
                return Err(timed_out(format!(
                    "no response within {} ms (timed out)",
                    limit.as_millis()
                )))
            }
        };
        let response: http::Response<reqwest::Body> = response.into();
        let (parts, body) = response.into_parts();
        let body = SilenceLimit {
            inner: body,
            limit: self.request_timeout,
            timer: Box::pin(tokio::time::sleep(self.request_timeout)),
        };
        Ok(HttpResponse::from_parts(parts, HttpResponseBody::new(body)))
    }
}

/// A response body that fails when no data arrives for `limit`; the clock restarts with every frame.
struct SilenceLimit {
    inner: reqwest::Body,
    limit: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl Body for SilenceLimit {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<Frame<Bytes>, HttpError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                let deadline = tokio::time::Instant::now() + this.limit;
                this.timer.as_mut().reset(deadline);
                Poll::Ready(frame.map(|frame| frame.map_err(classify)))
            }
            Poll::Pending => match this.timer.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(timed_out(format!(
                    "no data for {} ms while reading the response body (timed out)",
                    this.limit.as_millis()
                ))))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
