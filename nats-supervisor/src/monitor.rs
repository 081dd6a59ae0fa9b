//! A tiny HTTP/1.0 client for the loopback monitoring endpoint, so no HTTP library is needed: an
//! async one for the supervisor and a blocking one for the plain launcher, sharing the request and
//! the parsing of the answer.

use std::io::{Read as _, Write as _};
use std::net::Ipv4Addr;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

const HTTP_TIMEOUT: Duration = Duration::from_secs(2);
const HTTP_MAX_BODY: u64 = 8 * 1024 * 1024;
/// Readiness: the process is up and JetStream is running (independent of cluster quorum).
pub(crate) const READY_PATH: &str = "/healthz?js-server-only=true";
/// Health: also a JetStream meta leader when clustered.
pub(crate) const HEALTH_PATH: &str = "/healthz";

fn request(port: u16, path: &str) -> String {
    format!(
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: harmonylite\r\n\
         Connection: close\r\n\r\n"
    )
}

fn parse(raw: &[u8]) -> std::io::Result<(u16, String)> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .lines()
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, "malformed HTTP response")
        })?;
    Ok((status, body.to_string()))
}

fn timed_out() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, "monitor request timed out")
}

pub(crate) async fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let exchange = async {
        let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await?;
        stream.write_all(request(port, path).as_bytes()).await?;
        let mut raw = Vec::new();
        stream.take(HTTP_MAX_BODY).read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = tokio::time::timeout(HTTP_TIMEOUT, exchange)
        .await
        .map_err(|_| timed_out())??;
    parse(&raw)
}

pub(crate) async fn http_ok(port: u16, path: &str) -> bool {
    matches!(http_get(port, path).await, Ok((200, _)))
}

/// The same request without a runtime (the launcher is used from plain threads and from inside
/// async tests alike, where a nested runtime is not allowed).
pub(crate) fn http_get_blocking(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let addr = (Ipv4Addr::LOCALHOST, port).into();
    let mut stream = std::net::TcpStream::connect_timeout(&addr, HTTP_TIMEOUT)?;
    stream.set_read_timeout(Some(HTTP_TIMEOUT))?;
    stream.set_write_timeout(Some(HTTP_TIMEOUT))?;
    stream.write_all(request(port, path).as_bytes())?;
    let mut raw = Vec::new();
    stream
        .take(HTTP_MAX_BODY)
        .read_to_end(&mut raw)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::WouldBlock => timed_out(),
            _ => e,
        })?;
    parse(&raw)
}

pub(crate) fn http_ok_blocking(port: u16, path: &str) -> bool {
    matches!(http_get_blocking(port, path), Ok((200, _)))
}
