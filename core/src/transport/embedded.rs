//! Placeholder until the embedded nats-server supervisor lands (same API).
use std::path::PathBuf;

use crate::error::{Error, Result};

pub struct EmbeddedOptions {
    pub binary: Option<PathBuf>,
    pub store_dir: PathBuf,
    pub bind_address: String,
    pub cluster_addr: String,
    pub cluster_peers: Vec<String>,
    pub leaf_servers: Vec<String>,
    pub cluster_name: String,
    pub server_name: String,
    pub server_config: Option<PathBuf>,
    pub max_payload: u32,
}

pub struct EmbeddedServer;

impl EmbeddedServer {
    pub async fn start(_opts: EmbeddedOptions) -> Result<EmbeddedServer> {
        Err(Error::NatsServerNotFound)
    }
    pub fn client_url(&self) -> String {
        String::new()
    }
    pub fn cluster_size_hint(&self) -> usize {
        1
    }
    pub async fn stop(&self) {}
}
