//! Wires the pipeline: the database thread, the NATS connection (embedded server or external), the
//! publisher and one consumer per shard; answers status, sync and wait; closes everything in order.
//!
//! A [`Replicator`] is the node's one running pipeline. The public [`crate::Replica`] (replica.rs) runs one
//! when its process holds the node lock, or attaches to the process that does (ADR 0010).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::config::Config;
use crate::db_thread::{self, Command, DbHandle, DbOutputs};
use crate::divergence::{DivergenceChecker, DivergenceMonitor};
use crate::error::{Error, Result};
use crate::events::{ConflictHub, EventHub};
use crate::metrics::Counters;
use crate::relay::consumer::ShardConsumer;
use crate::relay::publisher::Publisher;
use crate::snapshot::{self, service::SnapshotService};
use crate::state::conflicts::Conflict;
use crate::status::PublishProgress;
use crate::status::{ConnectionState, PausedTable, ReplicaRole, ShardStatus, Status, Token};
use crate::transport::embedded::{EmbeddedOptions, EmbeddedServer};
use crate::transport::stream_health::StreamHealth;
use crate::transport::{self, Names, StreamKeeper};

static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
/// The process that started the runtime: after `fork()` the child inherits the handle but not its threads.
static RUNTIME_PID: OnceLock<u32> = OnceLock::new();

/// Refuses to touch the runtime from a forked child, where it would hang forever. Bindings call it before
/// anything that could block.
pub fn check_not_forked() -> Result<()> {
    match RUNTIME_PID.get() {
        Some(pid) if *pid != std::process::id() => Err(Error::UsedAfterFork { parent_pid: *pid }),
        _ => Ok(()),
    }
}

/// True in a forked child of a process that used the runtime: bindings then leak core objects on drop
/// rather than take locks a parent thread may have held at the fork.
pub fn is_forked_child() -> bool {
    check_not_forked().is_err()
}

/// The core's one tokio runtime. Bindings await core futures on it instead of starting their own.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    RUNTIME_PID.get_or_init(std::process::id);
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("harmonylite-rt")
            .enable_all()
            .build()
            .unwrap_or_else(|err| panic!("cannot start the harmonylite runtime: {err}"))
    })
}

/// Runs a core future on the core runtime from any async context (or none).
pub async fn on_runtime<T: Send + 'static>(
    future: impl std::future::Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
    check_not_forked()?;
    runtime()
        .spawn(future)
        .await
        .map_err(|err| Error::Internal(format!("task failed: {err}")))?
}

/// Blocks the calling (non-async) thread on a core future.
pub fn block_on<T: Send + 'static>(
    future: impl std::future::Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
    check_not_forked()?;
    if tokio::runtime::Handle::try_current().is_ok() {
        return Err(Error::Internal(
            "a blocking harmonylite call was made from inside an async runtime; use the async API"
                .into(),
        ));
    }
    runtime().block_on(on_runtime(future))
}

pub(crate) struct Inner {
    node_id: u64,
    config: Config,
    db_path: PathBuf,
    commands: Mutex<Option<std_mpsc::Sender<Command>>>,
    db_thread: Mutex<Option<DbHandle>>,
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
    names: Names,
    urls: Vec<String>,
    embedded: Option<EmbeddedServer>,
    snapshots: Arc<SnapshotService>,
    /// Taken on close, so that subscriptions end once the database thread's copy is gone too.
    events: Mutex<Option<EventHub>>,
    conflict_feed: Mutex<Option<ConflictHub>>,
    positions: watch::Receiver<BTreeMap<u32, u64>>,
    progress: watch::Receiver<PublishProgress>,
    ready: watch::Receiver<bool>,
    counters: Arc<Counters>,
    health: Arc<StreamHealth>,
    divergence: Arc<DivergenceMonitor>,
    divergence_checker: Mutex<Option<JoinHandle<()>>>,
    shutdown: watch::Sender<bool>,
    consumers: Mutex<Vec<JoinHandle<()>>>,
    publisher: Mutex<Option<JoinHandle<()>>>,
    setup: Mutex<Option<JoinHandle<()>>>,
    /// Set when `close()` starts (the NATS disconnection that follows is expected, not a warning).
    closing: Arc<AtomicBool>,
    closed: AtomicBool,
    started: Instant,
    /// The latest status and when it was taken, for metrics and health (`recent_status`).
    recent_status: tokio::sync::Mutex<Option<(Instant, Status)>>,
}

/// The running pipeline of one database (one per node; see replica.rs for the handle apps hold).
#[derive(Clone)]
pub(crate) struct Replicator {
    inner: Arc<Inner>,
}

/// A replicator that does not keep it alive (the attach server's view of it).
#[derive(Clone)]
pub(crate) struct WeakReplicator(Weak<Inner>);

impl WeakReplicator {
    pub(crate) fn upgrade(&self) -> Option<Replicator> {
        self.0.upgrade().map(|inner| Replicator { inner })
    }
}

/// Starts replicating `db` (on the core runtime): installs capture, connects (or starts the embedded
/// nats-server), and starts publishing and applying; change events go to `events`. Returns once capture is
/// installed; NATS may still be connecting. The caller holds the node lock (attach/lock.rs).
pub(crate) async fn start(
    db: PathBuf,
    config: Config,
    events: EventHub,
    conflict_feed: ConflictHub,
) -> Result<Replicator> {
    config.validate()?;
    let mut config = config;
    if let Some(parent) = db.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.is_dir() {
            return Err(Error::io(
                db.display(),
                std::io::Error::new(std::io::ErrorKind::NotFound, "its directory does not exist"),
            ));
        }
    }
    // The node id is needed before the database is opened (embedded server name, a restore): keep the one
    // stored in the file, else the configured one, else a new random one (stored by the database thread).
    let peek_db = db.clone();
    let (stored_node, _) = tokio::task::spawn_blocking(move || snapshot::peek_identity(&peek_db))
        .await
        .map_err(|err| Error::Internal(format!("reading the node id: {err}")))?;
    if config.node_id == 0 {
        config.node_id = stored_node.unwrap_or_else(|| (rand::random::<u64>() >> 1).max(1));
    }
    let node_id = config.node_id;

    let (embedded, urls) = if config.nats.urls.is_empty() {
        let server = start_embedded(&db, &config, node_id).await?;
        let url = server.client_url();
        (Some(server), vec![url])
    } else {
        (None, config.nats.urls.clone())
    };
    let closing = Arc::new(AtomicBool::new(false));
    let (disconnects_tx, disconnects_rx) = watch::channel(0u64);
    let client = transport::connect(
        &config,
        &urls,
        node_id,
        closing.clone(),
        Arc::new(disconnects_tx),
    )
    .await?;
    let js = transport::jetstream_context(client.clone());
    let names = Names::new(&config);
    let replicas = match config.replication_log.replicas {
        0 => match &embedded {
            Some(server) if server.cluster_size_hint() >= 3 => 3,
            _ => 1,
        },
        n => n as usize,
    };
    // Read once (the key file too) for the snapshots, the publisher and the consumers; validated at open.
    let keys = config.signing.keys()?;
    let snapshots = Arc::new(SnapshotService::new(
        &config,
        &db,
        js.clone(),
        client.clone(),
        &names,
        replicas,
        keys.clone(),
    ));
    if config.snapshot.enabled && config.replicate {
        snapshots.bootstrap(&db, &config, node_id).await?;
    }

    let (outbox_tx, outbox_rx) = mpsc::unbounded_channel();
    let (positions_tx, positions_rx) = watch::channel(BTreeMap::new());
    let counters = Arc::new(Counters::default());
    let db_handle_positions = positions_tx.clone();
    let outputs = DbOutputs {
        conflicts: conflict_feed.clone(),
        counters: counters.clone(),
        outbox: outbox_tx,
        events: events.clone(),
        positions: positions_tx,
    };
    let db_for_thread = db.clone();
    let config_for_thread = config.clone();
    let (db_handle, opened) = tokio::task::spawn_blocking(move || {
        db_thread::start(&db_for_thread, &config_for_thread, outputs)
    })
    .await
    .map_err(|err| Error::Internal(format!("database open task failed: {err}")))??;
    let commands = db_handle.commands.clone();
    let status_js = js.clone();
    let status_names = names.clone();

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (ready_tx, ready_rx) = watch::channel(false);
    let (progress_tx, progress_rx) = watch::channel(PublishProgress::default());

    // Streams are created in the background (NATS may be down at open: offline-first) and kept: one that
    // vanishes while running is recorded as broker data loss and created again.
    let health = Arc::new(StreamHealth::new(Some(
        Config::state_dir_for(&db).join("streams.json"),
    )));
    let setup = tokio::spawn(
        StreamKeeper {
            js: js.clone(),
            config: config.clone(),
            names: names.clone(),
            replicas,
            urls: urls.clone(),
            health: health.clone(),
            ready: ready_tx,
            counters: counters.clone(),
            progress: config.publish.then(|| progress_tx.clone()),
        }
        .run(disconnects_rx.clone(), shutdown_rx.clone()),
    );
    let positions_for_consumers = db_handle_positions;
    let progress_for_consumers = config.publish.then(|| progress_tx.clone());

    let publisher = if config.publish {
        let publisher = Publisher {
            js: js.clone(),
            names: names.clone(),
            db: commands.clone(),
            max_inflight: config.replication_log.max_inflight,
            counters: counters.clone(),
            progress: progress_tx,
            health: health.clone(),
            keys: keys.clone(),
        };
        Some(tokio::spawn(publisher.run(
            opened.pending_outbox,
            outbox_rx,
            ready_rx.clone(),
            shutdown_rx.clone(),
        )))
    } else {
        drop(outbox_rx);
        None
    };

    let mut consumers = Vec::new();
    if config.replicate {
        for shard in 0..config.replication_log.shards {
            let consumer = ShardConsumer {
                js: js.clone(),
                names: names.clone(),
                node_id,
                shard,
                db: commands.clone(),
                max_batch_messages: config.apply.max_batch_rows,
                max_batch_time: Duration::from_millis(config.apply.max_batch_ms),
                counters: counters.clone(),
                disconnects: disconnects_rx.clone(),
                pull_bytes: std::sync::atomic::AtomicUsize::new(
                    crate::relay::consumer::MAX_PULL_BYTES,
                ),
                health: health.clone(),
                positions: positions_for_consumers.clone(),
                progress: progress_for_consumers.clone(),
                keys: keys.clone(),
            };
            consumers.push(tokio::spawn(
                consumer.run(ready_rx.clone(), shutdown_rx.clone()),
            ));
        }
    }
    // A node that applies nothing holds only its own writes: it has nothing to compare.
    let divergence = Arc::new(DivergenceMonitor::default());
    let divergence_checker = (config.replicate && !config.divergence_check.interval.0.is_zero())
        .then(|| {
            tokio::spawn(
                DivergenceChecker {
                    client: client.clone(),
                    js: js.clone(),
                    names: names.clone(),
                    config: config.clone(),
                    node_id,
                    db_path: db.clone(),
                    db: commands.clone(),
                    progress: config.publish.then(|| progress_rx.clone()),
                    positions: positions_rx.clone(),
                    monitor: divergence.clone(),
                }
                .run(ready_rx.clone(), shutdown_rx.clone()),
            )
        });
    info!(node_id, urls = ?urls, publish = config.publish, replicate = config.replicate, "replica open");
    let snapshot_config = config.snapshot.clone();
    let save_automatically = config.publish
        && snapshot_config.enabled
        && (snapshot_config.interval > 0 || snapshot_config.after_messages > 0);
    let mut snapshot_shutdown = shutdown_rx.clone();
    let replica = Replicator {
        inner: Arc::new(Inner {
            node_id,
            config,
            db_path: db,
            commands: Mutex::new(Some(commands)),
            db_thread: Mutex::new(Some(db_handle)),
            client,
            js: status_js,
            names: status_names,
            urls,
            embedded,
            snapshots: snapshots.clone(),
            events: Mutex::new(Some(events)),
            conflict_feed: Mutex::new(Some(conflict_feed)),
            positions: positions_rx,
            progress: progress_rx,
            ready: ready_rx,
            counters,
            health,
            divergence,
            divergence_checker: Mutex::new(divergence_checker),
            shutdown: shutdown_tx,
            consumers: Mutex::new(consumers),
            publisher: Mutex::new(publisher),
            setup: Mutex::new(Some(setup)),
            closing,
            closed: AtomicBool::new(false),
            started: Instant::now(),
            recent_status: tokio::sync::Mutex::new(None),
        }),
    };
    if save_automatically {
        let weak = Arc::downgrade(&replica.inner);
        tokio::spawn(async move {
            let interval = Duration::from_millis(snapshot_config.interval);
            let mut last_save = Instant::now();
            let mut last_total: u64 = 0;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = snapshot_shutdown.changed() => return,
                }
                let Some(inner) = weak.upgrade() else { return };
                let replica = Replicator { inner };
                let total: u64 = replica.applied().positions.values().sum();
                let due_by_time = !interval.is_zero() && last_save.elapsed() >= interval;
                let due_by_growth = snapshot_config.after_messages > 0
                    && total.saturating_sub(last_total) >= snapshot_config.after_messages;
                if due_by_time || due_by_growth {
                    match replica.save_snapshot_inner().await {
                        Ok(_) => {}
                        Err(err) => warn!(error = %err, "automatic snapshot failed; will retry"),
                    }
                    last_save = Instant::now();
                    last_total = total;
                }
            }
        });
    }
    Ok(replica)
}

async fn start_embedded(db: &Path, config: &Config, node_id: u64) -> Result<EmbeddedServer> {
    let nats = &config.nats;
    let store_dir = if nats.store_dir.is_empty() {
        Config::state_dir_for(db).join("nats")
    } else {
        PathBuf::from(&nats.store_dir)
    };
    EmbeddedServer::start(EmbeddedOptions {
        binary: (!nats.server_binary.is_empty()).then(|| PathBuf::from(&nats.server_binary)),
        store_dir,
        bind_address: nats.bind_address.clone(),
        cluster_addr: nats.cluster_addr.clone(),
        cluster_peers: nats.cluster_peers.clone(),
        leaf_servers: nats.leaf_servers.clone(),
        cluster_name: nats.cluster_name.clone(),
        server_name: format!("hl-{node_id}"),
        server_config: (!nats.server_config.is_empty()).then(|| PathBuf::from(&nats.server_config)),
        max_payload: 8 * 1024 * 1024,
    })
    .await
}

fn stop_db_thread(mut handle: DbHandle) {
    // The watcher holds a sender too: stop it first, or the thread would never see its inbox close.
    drop(handle.commit_watch.take());
    drop(handle.commands);
    if let Some(thread) = handle.thread.take() {
        let _ = thread.join();
    }
}

/// Runs a watch wait with a timeout: a closed channel means the replica closed.
async fn timed(
    wait: impl std::future::Future<Output = Result<(), watch::error::RecvError>>,
    timeout: Duration,
    what: &str,
) -> Result<()> {
    match tokio::time::timeout(timeout, wait).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(Error::Closed),
        Err(_) => Err(Error::Timeout {
            what: what.to_string(),
            millis: timeout.as_millis() as u64,
        }),
    }
}

impl fmt::Debug for Replicator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Replicator")
            .field("node_id", &self.inner.node_id)
            .field("db", &self.inner.db_path)
            .field("closed", &self.inner.closed.load(Ordering::SeqCst))
            .finish()
    }
}

impl Replicator {
    pub(crate) fn downgrade(&self) -> WeakReplicator {
        WeakReplicator(Arc::downgrade(&self.inner))
    }

    pub(crate) fn node_id(&self) -> u64 {
        self.inner.node_id
    }

    pub(crate) fn config(&self) -> &Config {
        &self.inner.config
    }

    /// URLs of the NATS servers in use (the embedded server's when it is the default).
    pub(crate) fn nats_urls(&self) -> &[String] {
        &self.inner.urls
    }

    /// Applied positions as they move (the handle forwards them to its own waiters).
    pub(crate) fn positions(&self) -> watch::Receiver<BTreeMap<u32, u64>> {
        self.inner.positions.clone()
    }

    fn commands(&self) -> Result<std_mpsc::Sender<Command>> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(Error::Closed);
        }
        self.inner
            .commands
            .lock()
            .map_err(|_| Error::Internal("lock poisoned".into()))?
            .clone()
            .ok_or(Error::Closed)
    }

    /// The conflict log: up to `limit` of the newest entries with an id above `after` (0: from the start),
    /// oldest first. The log keeps the newest 10,000 entries. (`Replica::conflicts` calls this, directly
    /// or through the attach socket.)
    pub(crate) async fn conflicts_inner(&self, after: i64, limit: usize) -> Result<Vec<Conflict>> {
        let commands = self.commands()?;
        let (reply, answer) = oneshot::channel();
        commands
            .send(Command::Conflicts {
                after,
                limit,
                reply,
            })
            .map_err(|_| Error::Closed)?;
        answer.await.map_err(|_| Error::Closed)?
    }

    /// Stamps and publishes everything the app committed before this call, waits for JetStream to
    /// acknowledge it, and returns the token other nodes can wait for.
    pub(crate) async fn sync_inner(&self, timeout: Duration) -> Result<Token> {
        let commands = self.commands()?;
        let (reply, answer) = oneshot::channel();
        commands
            .send(Command::Flush { reply })
            .map_err(|_| Error::Closed)?;
        let last_id = answer.await.map_err(|_| Error::Closed)??;
        if !self.inner.config.publish {
            return Ok(Token {
                positions: self.inner.positions.borrow().clone(),
            });
        }
        let mut progress = self.inner.progress.clone();
        let wait = progress.wait_for(|p| p.acked_through >= last_id);
        let token = match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(progress)) => Token {
                positions: progress.shard_seqs.clone(),
            },
            Ok(Err(_)) => return Err(Error::Closed),
            Err(_) => {
                return Err(Error::Timeout {
                    what: "local changes to be acknowledged by JetStream".into(),
                    millis: timeout.as_millis() as u64,
                })
            }
        };
        Ok(token)
    }

    /// Shards whose consumer has checked its stored position against the stream (broker data loss): a
    /// position counts toward `wait_for` only then.
    pub(crate) fn verified_shards(&self) -> watch::Receiver<std::collections::BTreeSet<u32>> {
        self.inner.health.verified_shards()
    }

    /// Waits until the NATS connection is up and the streams exist.
    pub(crate) async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let mut ready = self.inner.ready.clone();
        let wait = async move { ready.wait_for(|r| *r).await.map(|_| ()) };
        timed(wait, timeout, "NATS and the streams to be ready").await
    }

    /// The positions this node has applied, as a token.
    pub(crate) fn applied(&self) -> Token {
        Token {
            positions: self.inner.positions.borrow().clone(),
        }
    }

    /// This node's status (`role` says `active`; the handle adds how many others are attached).
    pub(crate) async fn status_inner(&self) -> Result<Status> {
        let commands = self.commands()?;
        let (reply, answer) = oneshot::channel();
        commands
            .send(Command::Status { reply })
            .map_err(|_| Error::Closed)?;
        let db = answer.await.map_err(|_| Error::Closed)??;
        let inner = &self.inner;
        let counters = &inner.counters;
        let progress = inner.progress.borrow().clone();
        let connection = match inner.client.connection_state() {
            async_nats::connection::State::Connected => ConnectionState::Connected,
            async_nats::connection::State::Disconnected => ConnectionState::Disconnected,
            async_nats::connection::State::Pending => ConnectionState::Connecting,
        };
        let nonzero = |v: u64| (v != 0).then_some(v);
        let mut stream_last = BTreeMap::new();
        if connection == ConnectionState::Connected {
            for shard in 0..inner.config.replication_log.shards {
                let name = inner.names.stream(shard);
                let ask = inner.js.get_stream(&name);
                match tokio::time::timeout(Duration::from_secs(1), ask).await {
                    Ok(Ok(stream)) => {
                        stream_last.insert(shard, stream.cached_info().state.last_sequence);
                    }
                    Ok(Err(err)) if transport::is_stream_not_found(&err) => {
                        inner.health.set_missing(&name, true);
                        inner.health.request_recheck();
                    }
                    _ => {}
                }
            }
        }
        let missing_streams = inner.health.missing();
        let broker_data_loss = inner.health.losses();
        Ok(Status {
            node_id: inner.node_id,
            role: ReplicaRole::Active,
            replicator_pid: std::process::id(),
            attached_handles: 0,
            db_path: inner.db_path.display().to_string(),
            connection,
            streams_ready: *inner.ready.borrow() && missing_streams.is_empty(),
            missing_streams,
            nats_unreachable_ms: (connection != ConnectionState::Connected).then(|| {
                inner
                    .health
                    .unreachable_for()
                    .map_or(0, |down| down.as_millis() as u64)
            }),
            nats_urls: inner.urls.clone(),
            embedded_server: inner.embedded.is_some(),
            publish: inner.config.publish,
            replicate: inner.config.replicate,
            replicated_tables: db.replicated_tables,
            shards: (0..inner.config.replication_log.shards)
                .map(|shard| {
                    let applied_seq = db.positions.get(&shard).copied().unwrap_or(0);
                    let stream_last_seq = stream_last.get(&shard).copied();
                    let lag_messages = stream_last_seq.map(|last| last.saturating_sub(applied_seq));
                    ShardStatus {
                        shard,
                        applied_seq,
                        published_seq: progress.shard_seqs.get(&shard).copied().unwrap_or(0),
                        stream_last_seq,
                        lag_messages,
                        stalled_ms: inner
                            .health
                            .stalled_for(shard, applied_seq, lag_messages)
                            .map(|stalled| stalled.as_millis() as u64),
                    }
                })
                .collect(),
            pending_changes: db.pending_changes,
            unsent_messages: db.outbox_messages,
            unsent_rows: db.outbox_rows,
            published_messages: counters.published_messages.get(),
            published_rows: counters.published_rows.get(),
            applied_rows: counters.applied_rows.get(),
            skipped_rows: counters.kept_rows.get(),
            deferred_rows: counters.deferred_rows.get(),
            conflicts: db.conflicts,
            conflicts_recorded: counters.conflicts.get(),
            moved_keys: counters.moved_keys.get(),
            dead_lettered: db.dead_lettered,
            rejected_local: db.rejected_local,
            paused_tables: db
                .paused_tables
                .into_iter()
                .map(|(table, (waiting_changes, reason, kind))| PausedTable {
                    table,
                    waiting_changes,
                    reason,
                    kind,
                })
                .collect(),
            last_publish_ms: nonzero(counters.last_publish_ms.load(Ordering::Relaxed)),
            last_apply_ms: nonzero(counters.last_apply_ms.load(Ordering::Relaxed)),
            errors: counters.errors.get(),
            last_error: counters.last_error.lock().ok().and_then(|e| e.clone()),
            behind_retention: counters.behind_retention.load(Ordering::Relaxed),
            broker_data_loss_detected: !broker_data_loss.is_empty(),
            broker_data_loss_events: inner.health.loss_events(),
            broker_data_loss,
            divergent_tables: inner.divergence.divergences(),
            divergence_comparisons: inner.divergence.comparisons(),
            errors_last_minute: counters.errors_last_minute(),
            snapshot: inner.snapshots.progress(),
            uptime_ms: inner.started.elapsed().as_millis() as u64,
        })
    }

    /// A status at most `metrics::STATUS_MAX_AGE` old: the one taken last, or a new one. Callers that poll
    /// (a metrics scrape, a health probe) share it, so however often they come a status is computed at most
    /// once a second; one caller at a time takes a new one, the others wait for it.
    pub(crate) async fn recent_status(&self) -> Result<Status> {
        let mut recent = self.inner.recent_status.lock().await;
        if let Some((at, status)) = recent.as_ref() {
            if at.elapsed() < crate::metrics::STATUS_MAX_AGE {
                return Ok(status.clone());
            }
        }
        let status = self.status_inner().await?;
        *recent = Some((Instant::now(), status.clone()));
        Ok(status)
    }

    /// This node's metrics as OpenMetrics text under `prefix`: the counters as they are, the gauges from a
    /// recent status.
    pub(crate) async fn metrics_inner(&self, prefix: &str) -> Result<String> {
        let status = self.recent_status().await?;
        Ok(crate::metrics::exposition(
            &self.inner.counters,
            &status,
            prefix,
        ))
    }

    /// Saves a snapshot now (after stamping what the app committed). `Ok(None)` when another node holds the
    /// upload lease and this one skipped.
    pub(crate) async fn save_snapshot_inner(&self) -> Result<Option<snapshot::Manifest>> {
        let inner = &self.inner;
        if !inner.config.snapshot.enabled {
            return Err(Error::config("snapshot.enabled", "snapshots are disabled"));
        }
        // Publish what the app committed and apply our own messages first, so the snapshot's positions
        // cover its data tightly (a looser snapshot is still correct, it only makes restorers replay more).
        let settle = Duration::from_secs(30);
        match self.sync_inner(settle).await {
            Ok(token) if inner.config.replicate => {
                let mut positions = inner.positions.clone();
                let wait = async move {
                    positions
                        .wait_for(|applied| token.reached_by(applied))
                        .await
                        .map(|_| ())
                };
                if timed(wait, settle, "own messages to be applied")
                    .await
                    .is_err()
                {
                    warn!("snapshot taken before this node applied its own latest messages");
                }
            }
            Ok(_) => {}
            Err(err) => warn!(error = %err, "snapshot taken with local changes not yet published"),
        }
        // Positions reached by our own messages wait in memory for a write transaction: store them now.
        if let Ok(commands) = self.commands() {
            let (reply, stored) = oneshot::channel();
            if commands.send(Command::StoreDeferred { reply }).is_ok() {
                let _ = stored.await;
            }
        }
        inner.snapshots.save(&inner.db_path, inner.node_id).await
    }

    /// Stops replication: in-flight batches are committed and acknowledged, local changes are stamped and
    /// (for up to a few seconds) published; what is left stays in the database and goes out on next open.
    /// Idempotent. The embedded nats-server is stopped and its folder released before this returns.
    pub(crate) async fn close_inner(&self) -> Result<()> {
        let inner = &self.inner;
        if inner.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        inner.closing.store(true, Ordering::Relaxed);
        let _ = inner.shutdown.send(true);
        let take = |m: &Mutex<Option<JoinHandle<()>>>| m.lock().ok().and_then(|mut g| g.take());
        if let Some(setup) = take(&inner.setup) {
            let _ = setup.await;
        }
        let consumers: Vec<JoinHandle<()>> = inner
            .consumers
            .lock()
            .map(|mut c| c.drain(..).collect())
            .unwrap_or_default();
        for consumer in consumers {
            let _ = consumer.await;
        }
        // The checker holds a sender of the database thread's inbox; a round hashing a large table is not
        // worth waiting for (its read transaction ends with it).
        if let Some(mut checker) = take(&inner.divergence_checker) {
            if tokio::time::timeout(Duration::from_secs(2), &mut checker)
                .await
                .is_err()
            {
                checker.abort();
                let _ = checker.await;
            }
        }
        // Stamp what the app committed last, then let the publisher drain, then stop the thread.
        let commands = inner.commands.lock().ok().and_then(|mut c| c.take());
        if let Some(commands) = &commands {
            let (reply, answer) = oneshot::channel();
            if commands.send(Command::Flush { reply }).is_ok() {
                let _ = answer.await;
            }
        }
        let db_handle = inner.db_thread.lock().ok().and_then(|mut d| d.take());
        drop(commands);
        // The publisher sends what it can until its queue is empty or its drain time is up; then the
        // database thread (which needs the publisher's acknowledgements first) can stop.
        if let Some(publisher) = take(&inner.publisher) {
            let _ = publisher.await;
        }
        if let Some(handle) = db_handle {
            tokio::task::spawn_blocking(move || stop_db_thread(handle))
                .await
                .map_err(|err| Error::Internal(format!("stopping the database thread: {err}")))?;
        }
        if let Ok(mut hub) = inner.events.lock() {
            hub.take();
        }
        if let Ok(mut hub) = inner.conflict_feed.lock() {
            hub.take();
        }
        // Bounded: with NATS unreachable a flush would wait forever, and nothing unsent is lost anyway.
        let _ = tokio::time::timeout(Duration::from_secs(2), inner.client.flush()).await;
        if let Some(server) = &inner.embedded {
            server.stop().await;
        }
        info!(node_id = inner.node_id, "replica closed");
        Ok(())
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if !self.closed.load(Ordering::SeqCst) {
            // Not closed: stop the tasks; committed changes stay in the database for the next open.
            let _ = self.shutdown.send(true);
            if let Ok(mut commands) = self.commands.lock() {
                commands.take();
            }
        }
    }
}
