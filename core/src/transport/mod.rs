//! Transport: the NATS connection, JetStream stream names and settings, and the embedded server.
//!
//! One stream per shard (`<stream_prefix>-<shard>` on subject `<subject_prefix>.<shard>`) gives one total
//! order per row; a dead-letter stream keeps messages that could not be decoded.

pub mod embedded;

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use tracing::{info, warn};

use crate::config::Config;
use crate::error::{Error, Result};

/// Names derived from the configured prefixes, so several clusters can share one NATS.
#[derive(Debug, Clone)]
pub struct Names {
    pub stream_prefix: String,
    pub subject_prefix: String,
}

impl Names {
    pub fn new(config: &Config) -> Names {
        Names {
            stream_prefix: config.nats.stream_prefix.clone(),
            subject_prefix: config.nats.subject_prefix.clone(),
        }
    }
    pub fn stream(&self, shard: u32) -> String {
        format!("{}-{shard}", self.stream_prefix)
    }
    pub fn subject(&self, shard: u32) -> String {
        format!("{}.{shard}", self.subject_prefix)
    }
    pub fn dead_letter_stream(&self) -> String {
        format!("{}-dead-letter", self.stream_prefix)
    }
    pub fn dead_letter_subject(&self, shard: u32) -> String {
        format!("{}-dead-letter.{shard}", self.subject_prefix)
    }
    pub fn consumer(&self, node_id: u64, shard: u32) -> String {
        format!("{}-{node_id}-{shard}", self.stream_prefix)
    }
}

/// Connects to NATS. Never fails because the server is down: the client keeps trying in the background
/// (offline-first), and everything waits for it.
/// `closing` is set by `close()`: the disconnection that follows is expected and not worth a warning.
pub async fn connect(
    config: &Config,
    urls: &[String],
    node_id: u64,
    closing: std::sync::Arc<std::sync::atomic::AtomicBool>,
    disconnects: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
) -> Result<async_nats::Client> {
    let nats = &config.nats;
    let max_wait = Duration::from_secs(nats.reconnect_wait_seconds.max(1));
    let mut options = async_nats::ConnectOptions::new()
        .name(format!("harmonylite-{node_id}"))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(5))
        .reconnect_delay_callback(move |attempts| {
            // Quick first retries (a restarted embedded server is back in milliseconds), then capped.
            let millis = 50u64.saturating_mul(1 << attempts.min(10));
            Duration::from_millis(millis).min(max_wait)
        })
        .event_callback(move |event| {
            let closing = closing.clone();
            let disconnects = disconnects.clone();
            async move {
                let expected = closing.load(std::sync::atomic::Ordering::Relaxed);
                if matches!(event, async_nats::Event::Disconnected) {
                    // Consumers restart on it: pulls in flight died with the connection.
                    disconnects.send_modify(|count| *count += 1);
                }
                match event {
                    async_nats::Event::Connected => info!("connected to NATS"),
                    async_nats::Event::Disconnected if expected => {
                        tracing::debug!("disconnected from NATS while closing")
                    }
                    async_nats::Event::Disconnected => warn!(
                        "disconnected from NATS; changes are kept and will be sent on reconnect"
                    ),
                    other => tracing::debug!(event = %other, "NATS event"),
                }
            }
        });
    if !nats.user_name.is_empty() {
        options = options.user_and_password(nats.user_name.clone(), nats.user_password.clone());
    }
    if !nats.token.is_empty() {
        options = options.token(nats.token.clone());
    }
    if !nats.seed_file.is_empty() {
        let seed = std::fs::read_to_string(&nats.seed_file).map_err(|err| Error::Config {
            field: "nats.seed_file".into(),
            reason: format!("cannot read {}: {err}", nats.seed_file),
        })?;
        options = options.nkey(seed.trim().to_string());
    }
    if !nats.ca_file.is_empty() {
        options = options
            .add_root_certificates(nats.ca_file.clone().into())
            .require_tls(true);
    }
    if !nats.cert_file.is_empty() {
        options = options
            .add_client_certificate(nats.cert_file.clone().into(), nats.key_file.clone().into())
            .require_tls(true);
    }
    let addresses = urls.join(",");
    options
        .connect(addresses.as_str())
        .await
        .map_err(|err| Error::transport(format!("connecting to {addresses}"), err))
}

pub fn jetstream_context(client: async_nats::Client) -> jetstream::Context {
    jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(5))
        .ack_timeout(Duration::from_secs(5))
        .build(client)
}

fn stream_config(
    config: &Config,
    name: String,
    subjects: Vec<String>,
    replicas: usize,
) -> stream::Config {
    let log = &config.replication_log;
    stream::Config {
        name,
        subjects,
        max_messages: if log.max_entries > 0 {
            log.max_entries
        } else {
            -1
        },
        max_bytes: if log.max_bytes > 0 { log.max_bytes } else { -1 },
        max_age: log.max_age.0,
        num_replicas: replicas,
        storage: stream::StorageType::File,
        discard: stream::DiscardPolicy::Old,
        retention: stream::RetentionPolicy::Limits,
        duplicate_window: Duration::from_secs(120).min(if log.max_age.0.is_zero() {
            Duration::from_secs(120)
        } else {
            log.max_age.0
        }),
        ..Default::default()
    }
}

/// Creates the shard streams and the dead-letter stream, or checks (and with `update_existing`, updates)
/// existing ones.
pub async fn ensure_streams(
    js: &jetstream::Context,
    config: &Config,
    names: &Names,
    replicas: usize,
) -> Result<()> {
    for shard in 0..config.replication_log.shards {
        let wanted = stream_config(
            config,
            names.stream(shard),
            vec![names.subject(shard)],
            replicas,
        );
        ensure_stream(js, wanted, config.replication_log.update_existing).await?;
    }
    let dead_letter = stream_config(
        config,
        names.dead_letter_stream(),
        vec![format!("{}-dead-letter.>", names.subject_prefix)],
        replicas,
    );
    ensure_stream(js, dead_letter, config.replication_log.update_existing).await
}

async fn ensure_stream(
    js: &jetstream::Context,
    wanted: stream::Config,
    update_existing: bool,
) -> Result<()> {
    let name = wanted.name.clone();
    let mut existing = js
        .get_or_create_stream(wanted.clone())
        .await
        .map_err(|err| Error::transport(format!("creating stream {name}"), err))?;
    let info = existing
        .info()
        .await
        .map_err(|err| Error::transport(format!("reading stream {name}"), err))?;
    let current = &info.config;
    let differs = current.max_messages != wanted.max_messages
        || current.max_bytes != wanted.max_bytes
        || current.max_age != wanted.max_age
        || current.num_replicas != wanted.num_replicas;
    if differs {
        if update_existing {
            js.update_stream(wanted)
                .await
                .map_err(|err| Error::transport(format!("updating stream {name}"), err))?;
            info!(stream = %name, "stream settings updated");
        } else {
            warn!(stream = %name, "stream exists with other settings; set replication_log.update_existing to change them");
        }
    }
    Ok(())
}
