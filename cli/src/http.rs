//! A minimal HTTP/1.1 server for the metrics and health endpoints (GET only, one response per connection).

use std::future::Future;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tracing::{debug, info};

pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

/// Binds `address` (HarmonyLite style `:3010` means every interface) and serves `handler(path)`.
pub async fn serve<F, Fut>(
    what: &'static str,
    address: &str,
    handler: F,
) -> Result<std::net::SocketAddr, String>
where
    F: Fn(String) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response> + Send,
{
    let address = if address.starts_with(':') {
        format!("0.0.0.0{address}")
    } else {
        address.to_string()
    };
    let listener = TcpListener::bind(&address)
        .await
        .map_err(|err| format!("cannot listen on {address} for {what}: {err}"))?;
    let local = listener.local_addr().map_err(|err| err.to_string())?;
    info!(%local, what, "serving");
    let handler = Arc::new(handler);
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                continue;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 4096];
                let mut read = 0;
                // Read the request head (bounded); only the request line matters.
                while read < buffer.len() {
                    match socket.read(&mut buffer[read..]).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            read += n;
                            if buffer[..read].windows(4).any(|w| w == b"\r\n\r\n") {
                                break;
                            }
                        }
                    }
                }
                let head = String::from_utf8_lossy(&buffer[..read]);
                let mut parts = head.lines().next().unwrap_or("").split_whitespace();
                let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
                let response = if method == "GET" {
                    let path = target.split('?').next().unwrap_or("/").to_string();
                    handler(path).await
                } else {
                    Response {
                        status: 405,
                        content_type: "text/plain",
                        body: "only GET\n".into(),
                    }
                };
                let reason = match response.status {
                    200 => "OK",
                    404 => "Not Found",
                    405 => "Method Not Allowed",
                    503 => "Service Unavailable",
                    _ => "",
                };
                let message = format!(
                    "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
                    response.status,
                    response.content_type,
                    response.body.len(),
                    response.body
                );
                if let Err(err) = socket.write_all(message.as_bytes()).await {
                    debug!(%err, "http write failed");
                }
                let _ = socket.shutdown().await;
            });
        }
    });
    Ok(local)
}
