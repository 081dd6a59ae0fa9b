//! The listeners of the metrics and health endpoints (axum).

use axum::Router;
use tokio::net::TcpListener;
use tracing::{info, warn};

/// Binds `address` (HarmonyLite style `:3010` means every interface) and serves `routes` there.
pub async fn serve(
    what: &'static str,
    address: &str,
    routes: Router,
) -> Result<std::net::SocketAddr, String> {
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
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, routes).await {
            warn!(what, error = %err, "endpoint stopped");
        }
    });
    Ok(local)
}
