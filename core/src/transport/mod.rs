//! Transport: the NATS connection, JetStream stream names and settings, and the embedded server.
//!
//! One stream per shard (`<stream_prefix>-<shard>` on subject `<subject_prefix>.<shard>`) gives one total
//! order per row; a dead-letter stream keeps messages that could not be decoded.

pub mod embedded;
pub mod stream_health;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::context::{GetStreamError, GetStreamErrorKind};
use async_nats::jetstream::{self, stream};
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::metrics::Counters;
use crate::retry::Backoff;
use crate::status::PublishProgress;
use stream_health::StreamHealth;

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

/// Creation time of a stream, ns since the epoch: it identifies one incarnation of a stream name.
pub(crate) fn created_ns(info: &stream::Info) -> u64 {
    u64::try_from(info.created.unix_timestamp_nanos()).unwrap_or(0)
}

/// The server answered that the stream does not exist (as opposed to not answering).
pub(crate) fn is_stream_not_found(err: &GetStreamError) -> bool {
    match err.kind() {
        GetStreamErrorKind::JetStream(err) => {
            err.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND || err.code() == 404
        }
        _ => false,
    }
}

/// Every stream this node uses: one per shard, then the dead-letter stream.
fn stream_names(config: &Config, names: &Names) -> Vec<String> {
    (0..config.replication_log.shards)
        .map(|shard| names.stream(shard))
        .chain([names.dead_letter_stream()])
        .collect()
}

/// A stream after `ensure_streams`: its name, its creation time, and whether this call created it.
#[derive(Debug, Clone)]
pub(crate) struct EnsuredStream {
    pub name: String,
    pub created_ns: u64,
    pub created_now: bool,
    pub last_seq: u64,
}

/// Creates the shard streams and the dead-letter stream, or checks (and with `update_existing`, updates)
/// existing ones.
pub(crate) async fn ensure_streams(
    js: &jetstream::Context,
    config: &Config,
    names: &Names,
    replicas: usize,
) -> Result<Vec<EnsuredStream>> {
    let mut ensured = Vec::new();
    for shard in 0..config.replication_log.shards {
        let wanted = stream_config(
            config,
            names.stream(shard),
            vec![names.subject(shard)],
            replicas,
        );
        ensured.push(ensure_stream(js, wanted, config.replication_log.update_existing).await?);
    }
    let dead_letter = stream_config(
        config,
        names.dead_letter_stream(),
        vec![format!("{}-dead-letter.>", names.subject_prefix)],
        replicas,
    );
    ensured.push(ensure_stream(js, dead_letter, config.replication_log.update_existing).await?);
    Ok(ensured)
}

async fn ensure_stream(
    js: &jetstream::Context,
    wanted: stream::Config,
    update_existing: bool,
) -> Result<EnsuredStream> {
    let name = wanted.name.clone();
    let (existing, created_now) = match js.get_stream(&name).await {
        Ok(stream) => (stream, false),
        Err(err) if is_stream_not_found(&err) => match js.create_stream(wanted.clone()).await {
            Ok(stream) => (stream, true),
            // Another node created it in the meantime.
            Err(create_err) => match js.get_stream(&name).await {
                Ok(stream) => (stream, false),
                Err(_) => {
                    return Err(Error::transport(
                        format!("creating stream {name}"),
                        create_err,
                    ))
                }
            },
        },
        Err(err) => return Err(Error::transport(format!("reading stream {name}"), err)),
    };
    let info = existing.cached_info();
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
    Ok(EnsuredStream {
        name,
        created_ns: created_ns(info),
        created_now,
        last_seq: info.state.last_sequence,
    })
}

/// How often the stream keeper checks that every stream still exists (also after each reconnection, and
/// at once when a consumer or the publisher finds a stream gone).
const CHECK_STREAMS_EVERY: Duration = Duration::from_secs(5);
/// NATS unreachable this long is worth a warning naming the URLs; repeated at most this often.
const UNREACHABLE_WARN_AFTER: Duration = Duration::from_secs(2);
const UNREACHABLE_WARN_EVERY: Duration = Duration::from_secs(30);

/// Creates the streams (NATS may be down at open: offline-first), then keeps them: a stream that vanishes
/// while the node runs (deleted, or the server lost its JetStream store) is recorded as broker data loss
/// and created again, and `ready` is false until it exists.
pub(crate) struct StreamKeeper {
    pub js: jetstream::Context,
    pub config: Config,
    pub names: Names,
    pub replicas: usize,
    pub urls: Vec<String>,
    pub health: Arc<StreamHealth>,
    pub ready: watch::Sender<bool>,
    pub counters: Arc<Counters>,
    /// The publisher's acknowledged sequences (None when this node does not publish).
    pub progress: Option<watch::Sender<PublishProgress>>,
}

impl StreamKeeper {
    /// After a shard's stream was lost, sequences the old stream acknowledged must not stand in
    /// read-your-writes tokens: what this node published since is at most `last_seq` of the stream now
    /// there (0 while it is missing).
    /// Also, until the shard's consumer has reset its position, that position answers no `wait_for`.
    /// Records a loss of `stream`. The dead-letter stream holds nothing to republish (each node keeps its
    /// own record of what it parked there), so its loss is repaired as soon as the stream exists again.
    fn note_loss(&self, stream: &str, shard: Option<u32>, reason: &str, created_ns: Option<u64>) {
        self.health.record_loss(stream, shard, reason, created_ns);
        if stream == self.names.dead_letter_stream() {
            self.health.mark_republished(stream, 0);
        }
    }

    fn forget_lost_sequences(&self, stream: &str, lost_created_ns: Option<u64>, last_seq: u64) {
        let shard =
            (0..self.config.replication_log.shards).find(|s| self.names.stream(*s) == stream);
        if let Some(lost) = lost_created_ns {
            self.health.incarnation_lost(shard, stream, lost);
        }
        let (Some(shard), Some(progress)) = (shard, &self.progress) else {
            return;
        };
        progress.send_modify(|progress| {
            if let Some(seq) = progress.shard_seqs.get_mut(&shard) {
                *seq = last_seq;
            }
        });
    }

    pub async fn run(
        self,
        mut disconnects: watch::Receiver<u64>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        // The incarnation of each stream this keeper created or checked.
        let mut seen: BTreeMap<String, u64> = BTreeMap::new();
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut last_warning: Option<Instant> = None;
        let mut ensured = false;
        loop {
            if !ensured {
                // Requests made while disconnected only time out: wait for the connection (saying which
                // URLs cannot be reached), and give up any request at shutdown.
                if !self.wait_connected(&mut shutdown, &mut last_warning).await {
                    return;
                }
                let attempt = tokio::select! {
                    attempt = ensure_streams(&self.js, &self.config, &self.names, self.replicas) => attempt,
                    _ = shutdown.changed() => return,
                };
                match attempt {
                    Ok(streams) => {
                        for stream in streams {
                            if seen
                                .get(&stream.name)
                                .is_some_and(|c| *c != stream.created_ns)
                            {
                                self.note_loss(
                                    &stream.name,
                                    None,
                                    "the stream was recreated",
                                    Some(stream.created_ns),
                                );
                                if !stream.created_now {
                                    self.forget_lost_sequences(
                                        &stream.name,
                                        seen.get(&stream.name).copied(),
                                        stream.last_seq,
                                    );
                                }
                            }
                            if stream.created_now && seen.contains_key(&stream.name) {
                                warn!(stream = %stream.name, "stream created again after it was lost");
                            }
                            seen.insert(stream.name.clone(), stream.created_ns);
                            self.health.set_missing(&stream.name, false);
                        }
                        self.health.set_unreachable(false);
                        self.ready.send_replace(true);
                        ensured = true;
                        backoff.reset();
                    }
                    Err(err) => {
                        self.counters.record_error(&err);
                        self.report_not_ready(&err, &mut last_warning);
                        tokio::select! {
                            _ = tokio::time::sleep(backoff.next_pause()) => {}
                            _ = shutdown.changed() => return,
                        }
                        continue;
                    }
                }
            }
            tokio::select! {
                _ = self.health.recheck_requested() => {}
                Ok(()) = disconnects.changed() => {}
                _ = tokio::time::sleep(CHECK_STREAMS_EVERY) => {}
                _ = shutdown.changed() => return,
            }
            if !self.wait_connected(&mut shutdown, &mut last_warning).await {
                return;
            }
            for name in stream_names(&self.config, &self.names) {
                let answer = tokio::select! {
                    answer = self.js.get_stream(&name) => answer,
                    _ = shutdown.changed() => return,
                };
                match answer {
                    Ok(stream) => {
                        let info = stream.cached_info();
                        let created = created_ns(info);
                        if seen.get(&name).is_some_and(|c| *c != created) {
                            error!(stream = %name, "stream {name} was recreated on the NATS server (its earlier messages are gone)");
                            self.note_loss(&name, None, "the stream was recreated", Some(created));
                            self.forget_lost_sequences(
                                &name,
                                seen.get(&name).copied(),
                                info.state.last_sequence,
                            );
                        }
                        seen.insert(name.clone(), created);
                        self.health.set_missing(&name, false);
                    }
                    Err(err) if is_stream_not_found(&err) => {
                        error!(
                            stream = %name,
                            "stream {name} is missing on the NATS server (deleted, or the server lost its JetStream \
                             store): creating it again; rows only its messages carried stay missing on nodes that \
                             had not applied them until they are published again"
                        );
                        self.health.set_missing(&name, true);
                        self.note_loss(&name, None, "the stream was missing on the server", None);
                        self.forget_lost_sequences(&name, seen.get(&name).copied(), 0);
                        ensured = false;
                    }
                    // Not answering: the next check or reconnection tells.
                    Err(err) => debug!(stream = %name, error = %err, "stream check failed"),
                }
            }
            if !ensured {
                self.ready.send_replace(false);
            }
        }
    }

    /// Waits until the client is connected; false on shutdown. Says which URLs cannot be reached.
    async fn wait_connected(
        &self,
        shutdown: &mut watch::Receiver<bool>,
        last_warning: &mut Option<Instant>,
    ) -> bool {
        let client = self.js.client();
        let mut pause = Backoff::new(Duration::from_millis(20), Duration::from_millis(500));
        while client.connection_state() != async_nats::connection::State::Connected {
            self.health.set_unreachable(true);
            self.warn_unreachable(last_warning);
            tokio::select! {
                _ = tokio::time::sleep(pause.next_pause()) => {}
                _ = shutdown.changed() => return false,
            }
        }
        self.health.set_unreachable(false);
        true
    }

    fn warn_unreachable(&self, last_warning: &mut Option<Instant>) -> bool {
        let Some(down_for) = self.health.unreachable_for() else {
            return false;
        };
        if down_for < UNREACHABLE_WARN_AFTER
            || last_warning.is_some_and(|at| at.elapsed() < UNREACHABLE_WARN_EVERY)
        {
            return false;
        }
        *last_warning = Some(Instant::now());
        let urls = self.urls.join(", ");
        warn!(
            nats = %urls,
            down_for_s = down_for.as_secs(),
            "cannot reach NATS at {urls} (for {} s); local changes are kept and go out when it answers",
            down_for.as_secs()
        );
        true
    }

    fn report_not_ready(&self, err: &Error, last_warning: &mut Option<Instant>) {
        let connected =
            self.js.client().connection_state() == async_nats::connection::State::Connected;
        self.health.set_unreachable(!connected);
        if connected {
            warn!(error = %err, "streams not ready; retrying");
        } else if !self.warn_unreachable(last_warning) {
            debug!(error = %err, "streams not ready: NATS not reachable yet");
        }
    }
}
