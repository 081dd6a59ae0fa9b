//! The handle apps hold: [`open_replicated`] and [`Replica`].
//!
//! A database file on a host has one running replicator (ADR 0010). The handle whose process takes the node
//! lock runs it ([`ReplicaRole::Active`]) and serves the attach socket; any other handle on the same file — in
//! another process, or a second open in this one — attaches to it ([`ReplicaRole::Attached`]): `status`,
//! `sync`, `wait_for`, `wait_ready`, change events and `save_snapshot` are answered by the replicator's
//! process. An attached handle keeps trying the lock, and takes over when the replicator exits or dies.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::attach::client::{CallError, Client, ConnectError, Push, PushSink};
use crate::attach::lock::{recorded_holder, NodeLock};
use crate::attach::protocol::{Answer, Hello, Request, PROTOCOL};
use crate::attach::server::{Serve, Server};
use crate::config::Config;
use crate::engine::{self, on_runtime, runtime, Replicator};
use crate::error::{Error, Result};
use crate::events::{
    ChangeEvent, ConflictHub, ConflictSubscription, EventHub, Listener, Subscription,
};
use crate::retry::Backoff;
use crate::snapshot;
use crate::state::conflicts::Conflict;
use crate::status::{ReplicaRole, Status, Token};

/// How long `status()` waits for a replicator while none answers (another process is taking over).
const STATUS_PATIENCE: Duration = Duration::from_secs(15);
/// How long `save_snapshot()` waits for a replicator while none answers.
const SNAPSHOT_PATIENCE: Duration = Duration::from_secs(60);
/// Longest a snapshot may take in the replicator's process before an attached caller gives up.
const SNAPSHOT_CALL: Duration = Duration::from_secs(3600);
/// An attached handle checks the lock this often even while its connection lives: a replicator that died
/// can leave its socket open in a forked child, and the lock (which that child does not inherit) tells.
const PROBE: Duration = Duration::from_secs(1);
/// Retry pauses while no replicator answers, and after a failed takeover.
const RETRY_MIN: Duration = Duration::from_millis(10);
const RETRY_MAX: Duration = Duration::from_millis(200);
const RETRY_AFTER_ERROR: Duration = Duration::from_secs(2);
const RETRY_AFTER_ERRORS: Duration = Duration::from_secs(30);

/// A replicated database: the handle the app keeps while it uses its own SQLite connections.
#[derive(Clone)]
pub struct Replica {
    shared: Arc<Shared>,
}

struct Shared {
    db_path: PathBuf,
    /// `<db>.harmonylite/`, canonical.
    state_dir: PathBuf,
    socket: PathBuf,
    /// The configuration this process passed.
    base_config: Config,
    /// The configuration in force (its `node_id` resolved), set once the first role is known.
    config: OnceLock<Config>,
    node_id: AtomicU64,
    role: watch::Sender<Role>,
    /// The handle's own event hub: subscriptions outlive a takeover. Taken on close.
    events: Mutex<Option<EventHub>>,
    /// Likewise for conflict-log entries.
    conflicts: Mutex<Option<ConflictHub>>,
    /// Applied positions as this handle last heard them; only ever move forward.
    positions: Arc<watch::Sender<BTreeMap<u32, u64>>>,
    wants_events: AtomicBool,
    closed: AtomicBool,
    shutdown: watch::Sender<bool>,
    supervisor: Mutex<Option<JoinHandle<()>>>,
    last_takeover_error: Mutex<Option<String>>,
}

#[derive(Clone)]
enum Role {
    /// No replicator answers right now (one is being looked for, or started).
    Vacant,
    Active(Arc<Active>),
    Attached(Arc<Client>),
    Closed,
}

/// The replicator this process runs, with what must outlive it and what must go before the lock does.
/// Field order is drop order: socket file first, the lock last.
struct Active {
    server: Option<Server>,
    replicator: Replicator,
    forwarder: JoinHandle<()>,
    lock: Mutex<Option<NodeLock>>,
}

impl Active {
    fn attached(&self) -> u32 {
        self.server.as_ref().map_or(0, Server::attached)
    }

    /// Stops serving, closes the replicator, and hands back the lock (drop it to let another take over).
    async fn shut(&self) -> (Result<()>, Option<NodeLock>) {
        if let Some(server) = &self.server {
            server.stop().await;
        }
        let result = self.replicator.close_inner().await;
        self.forwarder.abort();
        let lock = self.lock.lock().ok().and_then(|mut l| l.take());
        (result, lock)
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.forwarder.abort();
    }
}

/// Opens `db` for replication. When no other process (or handle) replicates this file, this one installs
/// capture, connects (or starts the embedded nats-server) and starts publishing and applying; it returns once
/// capture is installed (NATS may still be connecting). Otherwise it attaches to the process that does.
pub async fn open_replicated(db: impl AsRef<Path>, config: Config) -> Result<Replica> {
    let db = db.as_ref().to_path_buf();
    on_runtime(open_on_runtime(db, config)).await
}

async fn open_on_runtime(db: PathBuf, config: Config) -> Result<Replica> {
    crate::sqlite_locks::install()?;
    config.validate()?;
    if let Some(parent) = db.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.is_dir() {
            return Err(Error::io(
                db.display(),
                std::io::Error::new(std::io::ErrorKind::NotFound, "its directory does not exist"),
            ));
        }
    }
    if config.nats.urls.is_empty() {
        // A wrong binary the user named is bad input: say so before anything is written beside the file.
        crate::transport::embedded::check_configured_binary(&config.nats.server_binary)?;
    }
    let state_dir = Config::state_dir_for(&db);
    tokio::fs::create_dir_all(&state_dir)
        .await
        .map_err(|err| Error::io(state_dir.display(), err))?;
    let state_dir = tokio::fs::canonicalize(&state_dir)
        .await
        .map_err(|err| Error::io(state_dir.display(), err))?;
    let (role, _) = watch::channel(Role::Vacant);
    let (shutdown, _) = watch::channel(false);
    let shared = Arc::new(Shared {
        socket: crate::attach::socket_path(&state_dir),
        state_dir,
        db_path: db,
        node_id: AtomicU64::new(config.node_id),
        base_config: config,
        config: OnceLock::new(),
        role,
        events: Mutex::new(Some(EventHub::new())),
        conflicts: Mutex::new(Some(ConflictHub::new())),
        positions: Arc::new(watch::channel(BTreeMap::new()).0),
        wants_events: AtomicBool::new(false),
        closed: AtomicBool::new(false),
        shutdown,
        supervisor: Mutex::new(None),
        last_takeover_error: Mutex::new(None),
    });
    // The replicator may be starting in another process (a snapshot restore included): wait for it.
    let patience = Duration::from_millis(shared.base_config.snapshot.restore_timeout)
        + Duration::from_secs(60);
    let deadline = Instant::now() + patience;
    let mut pause = Backoff::new(RETRY_MIN, RETRY_MAX);
    let role = loop {
        if let Some(role) = shared.acquire().await? {
            break role;
        }
        if Instant::now() >= deadline {
            return Err(Error::Timeout {
                what: format!(
                    "the process replicating {} ({}) to accept this one",
                    shared.db_path.display(),
                    holder_text(&shared.state_dir)
                ),
                millis: u64::try_from(patience.as_millis()).unwrap_or(u64::MAX),
            });
        }
        tokio::time::sleep(pause.next_pause()).await;
    };
    if let Role::Attached(client) = &role {
        info!(
            db = %shared.db_path.display(),
            replicator_pid = client.hello().pid,
            "attached to the process that replicates this database"
        );
    }
    shared.install(role);
    let supervisor = tokio::spawn(supervise(
        Arc::downgrade(&shared),
        shared.shutdown.subscribe(),
    ));
    if let Ok(mut slot) = shared.supervisor.lock() {
        *slot = Some(supervisor);
    }
    Ok(Replica { shared })
}

fn holder_text(state_dir: &Path) -> String {
    match recorded_holder(state_dir) {
        Some(pid) => format!("pid {pid}"),
        None => "pid unknown".into(),
    }
}

/// Folds newer positions in; positions never move back (a replicator that takes over may start from stored
/// positions a little behind what the previous one announced).
fn replace_positions(positions: &watch::Sender<BTreeMap<u32, u64>>, now: &BTreeMap<u32, u64>) {
    positions.send_if_modified(|current| {
        let mut changed = false;
        for (shard, seq) in now {
            if current.get(shard) != Some(seq) {
                current.insert(*shard, *seq);
                changed = true;
            }
        }
        changed
    });
}

fn merge_positions(positions: &watch::Sender<BTreeMap<u32, u64>>, newer: &BTreeMap<u32, u64>) {
    positions.send_if_modified(|current| {
        let mut changed = false;
        for (shard, seq) in newer {
            let entry = current.entry(*shard).or_insert(0);
            if *seq > *entry {
                *entry = *seq;
                changed = true;
            }
        }
        changed
    });
}

impl Shared {
    fn current_role(&self) -> Role {
        self.role.borrow().clone()
    }

    /// Takes the lock and starts the replicator, or attaches to the process that runs it. `None`: neither
    /// is possible right now (that process is starting, or has just gone).
    async fn acquire(&self) -> Result<Option<Role>> {
        if let Some(lock) = NodeLock::try_acquire(&self.state_dir)? {
            return self.start_active(lock).await.map(Some);
        }
        match Client::connect(&self.socket, self.push_sink()).await {
            Ok(client) => Ok(Some(Role::Attached(Arc::new(client)))),
            Err(ConnectError::Unavailable(err)) => {
                tracing::debug!(%err, socket = %self.socket.display(), "no replicator answers yet");
                Ok(None)
            }
            Err(ConnectError::Incompatible(err)) => Err(err),
        }
    }

    async fn start_active(&self, lock: NodeLock) -> Result<Role> {
        let hub = self
            .events
            .lock()
            .ok()
            .and_then(|hub| hub.clone())
            .ok_or(Error::Closed)?;
        let conflicts = self
            .conflicts
            .lock()
            .ok()
            .and_then(|hub| hub.clone())
            .ok_or(Error::Closed)?;
        let replicator = engine::start(
            self.db_path.clone(),
            self.base_config.clone(),
            hub.clone(),
            conflicts.clone(),
        )
        .await?;
        let forwarder = {
            let mut from = replicator.positions();
            let to = self.positions.clone();
            tokio::spawn(async move {
                loop {
                    // In the replicator's own process its positions are the truth, also when they go back:
                    // a consumer that finds its stream recreated (broker data loss) restarts it from 0.
                    let now = from.borrow_and_update().clone();
                    replace_positions(&to, &now);
                    if from.changed().await.is_err() {
                        return;
                    }
                }
            })
        };
        let hello = Hello {
            protocol: PROTOCOL,
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            node_id: replicator.node_id(),
            nats_urls: replicator.nats_urls().to_vec(),
            publish: replicator.config().publish,
            replicate: replicator.config().replicate,
        };
        let serve = Serve {
            hello,
            replicator: replicator.downgrade(),
            events: hub,
            conflicts,
            positions: self.positions.subscribe(),
        };
        // Replication works without the socket; only other processes' handles need it (they wait for it).
        let server = match Server::bind(&self.socket, serve) {
            Ok(server) => Some(server),
            Err(err) => {
                warn!(%err, "cannot serve the attach socket: other processes cannot attach to this replicator");
                None
            }
        };
        Ok(Role::Active(Arc::new(Active {
            server,
            replicator,
            forwarder,
            lock: Mutex::new(Some(lock)),
        })))
    }

    fn push_sink(&self) -> PushSink {
        let positions = self.positions.clone();
        let hub = self.events.lock().ok().and_then(|hub| hub.clone());
        let conflicts = self.conflicts.lock().ok().and_then(|hub| hub.clone());
        Arc::new(move |push| match push {
            Push::Positions(newer) => merge_positions(&positions, &newer),
            Push::Event(event) => {
                if let Some(hub) = &hub {
                    hub.emit(vec![event]);
                }
            }
            Push::Conflict(conflict) => {
                if let Some(hub) = &conflicts {
                    hub.emit(vec![conflict]);
                }
            }
        })
    }

    /// Makes `role` current unless the handle was closed meanwhile (then the caller must stop it).
    fn install(&self, role: Role) -> bool {
        match &role {
            Role::Active(active) => {
                self.node_id
                    .store(active.replicator.node_id(), Ordering::Relaxed);
                self.config
                    .get_or_init(|| active.replicator.config().clone());
            }
            Role::Attached(client) => {
                let node_id = client.hello().node_id;
                self.node_id.store(node_id, Ordering::Relaxed);
                self.config.get_or_init(|| Config {
                    node_id,
                    ..self.base_config.clone()
                });
                if self.wants_events.load(Ordering::SeqCst) {
                    client.enable_events();
                }
            }
            Role::Vacant | Role::Closed => {}
        }
        let mut role = Some(role);
        self.role.send_if_modified(|current| {
            if matches!(current, Role::Closed) {
                return false;
            }
            if let Some(role) = role.take() {
                *current = role;
            }
            true
        })
    }

    /// Waits up to `patience` for a replicator that answers, then runs the request there (in this process
    /// or the replicator's). `make` builds the request from the time left.
    async fn call(
        &self,
        patience: Duration,
        make: impl Fn(Duration) -> (Request, Duration),
    ) -> Result<(Answer, ReplicaRole)> {
        let deadline = Instant::now() + patience;
        let mut roles = self.role.subscribe();
        loop {
            let role = roles.borrow_and_update().clone();
            let left = deadline.saturating_duration_since(Instant::now());
            match role {
                Role::Closed => return Err(Error::Closed),
                Role::Active(active) => {
                    let (request, _) = make(left);
                    let answer =
                        crate::attach::answer(&active.replicator, active.attached(), request)
                            .await?;
                    return Ok((answer, ReplicaRole::Active));
                }
                Role::Attached(client) => {
                    let (request, wire_timeout) = make(left);
                    match client.call(request, wire_timeout).await {
                        Ok(answer) => return Ok((answer, ReplicaRole::Attached)),
                        Err(CallError::Failed(err)) => return Err(err),
                        Err(CallError::Lost) => {} // ask whoever takes over
                    }
                }
                Role::Vacant => {}
            }
            match tokio::time::timeout_at(deadline.into(), roles.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(Error::Closed),
                Err(_) => {
                    let why = self
                        .last_takeover_error
                        .lock()
                        .ok()
                        .and_then(|e| e.clone())
                        .map(|err| format!("the last attempt failed: {err}"))
                        .unwrap_or_else(|| "its replicator went away".into());
                    return Err(Error::Timeout {
                        what: format!(
                            "a process to take over replicating {} ({why})",
                            self.db_path.display()
                        ),
                        millis: u64::try_from(patience.as_millis()).unwrap_or(u64::MAX),
                    });
                }
            }
        }
    }

    /// Closes the handle; an active one hands back its lock when `keep_lock` (for `cleanup`).
    async fn close(&self, keep_lock: bool) -> Result<Option<NodeLock>> {
        if self.closed.swap(true, Ordering::SeqCst) {
            return Ok(None);
        }
        let old = self.role.send_replace(Role::Closed);
        let _ = self.shutdown.send(true);
        // The supervisor may be starting a replicator: it stops what it started once it sees the shutdown.
        let supervisor = self.supervisor.lock().ok().and_then(|mut s| s.take());
        if let Some(supervisor) = supervisor {
            let _ = supervisor.await;
        }
        let (result, lock) = match old {
            Role::Active(active) => active.shut().await,
            _ => (Ok(()), None),
        };
        if let Ok(mut hub) = self.events.lock() {
            hub.take();
        }
        if let Ok(mut hub) = self.conflicts.lock() {
            hub.take();
        }
        result?;
        Ok(if keep_lock { lock } else { None })
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        if self.closed.swap(true, Ordering::SeqCst) || engine::is_forked_child() {
            return;
        }
        let _ = self.shutdown.send(true);
        // Closed as `close()` would, in the background: the lock is released only once the replicator has
        // stopped, so the process that takes over never runs beside it.
        if let Role::Active(active) = self.role.send_replace(Role::Closed) {
            runtime().spawn(async move {
                let _ = active.shut().await;
            });
        }
    }
}

/// Keeps an attached handle attached, and takes over when the replicator goes away.
async fn supervise(shared: Weak<Shared>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let Some(role) = shared.upgrade().map(|s| s.current_role()) else {
            return;
        };
        let mut lock = None;
        match role {
            Role::Active(_) | Role::Closed => return,
            Role::Vacant => {}
            Role::Attached(client) => {
                tokio::select! {
                    () = client.lost() => {}
                    _ = shutdown.wait_for(|stop| *stop) => return,
                    () = tokio::time::sleep(PROBE) => {
                        let Some(this) = shared.upgrade() else { return };
                        match NodeLock::try_acquire(&this.state_dir) {
                            Ok(Some(taken)) => lock = Some(taken),
                            _ => continue,
                        }
                    }
                }
                if let Some(this) = shared.upgrade() {
                    this.role.send_if_modified(|current| match current {
                        Role::Attached(now) if Arc::ptr_eq(now, &client) => {
                            *current = Role::Vacant;
                            true
                        }
                        _ => false,
                    });
                }
                drop(client);
            }
        }
        if !take_over(&shared, &mut shutdown, lock).await {
            return;
        }
    }
}

/// Finds the next replicator: this process (taking the lock) or another one. False when the handle is gone
/// or closing.
async fn take_over(
    shared: &Weak<Shared>,
    shutdown: &mut watch::Receiver<bool>,
    mut lock: Option<NodeLock>,
) -> bool {
    // Polling a lock another process holds, and, apart, retrying after errors (more slowly).
    let mut polling = Backoff::new(RETRY_MIN, RETRY_MAX);
    let mut after_errors = Backoff::new(RETRY_AFTER_ERROR, RETRY_AFTER_ERRORS);
    loop {
        if *shutdown.borrow() {
            return false;
        }
        let Some(this) = shared.upgrade() else {
            return false;
        };
        let started = Instant::now();
        let attempt = match lock.take() {
            Some(lock) => this.start_active(lock).await.map(Some),
            None => this.acquire().await,
        };
        let pause = match attempt {
            Ok(Some(role)) => {
                let describe = match &role {
                    Role::Active(_) => "took over replication".to_string(),
                    Role::Attached(client) => {
                        format!(
                            "attached to the replicator in process {}",
                            client.hello().pid
                        )
                    }
                    Role::Vacant | Role::Closed => String::new(),
                };
                if *shutdown.borrow() || !this.install(role.clone()) {
                    if let Role::Active(active) = role {
                        let _ = active.shut().await;
                    }
                    return false;
                }
                if let Ok(mut last) = this.last_takeover_error.lock() {
                    last.take();
                }
                info!(
                    db = %this.db_path.display(),
                    after_ms = started.elapsed().as_millis() as u64,
                    "{describe}"
                );
                return true;
            }
            Ok(None) => {
                after_errors.reset();
                polling.next_pause()
            }
            Err(_) if *shutdown.borrow() => return false,
            Err(err) => {
                warn!(db = %this.db_path.display(), error = %err, "could not take over replication; retrying");
                if let Ok(mut last) = this.last_takeover_error.lock() {
                    *last = Some(err.to_string());
                }
                after_errors.next_pause()
            }
        };
        drop(this);
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            _ = shutdown.wait_for(|stop| *stop) => return false,
        }
    }
}

impl fmt::Debug for Replica {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Replica")
            .field("node_id", &self.node_id())
            .field("db", &self.shared.db_path)
            .field("role", &self.role())
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl Replica {
    pub fn node_id(&self) -> u64 {
        self.shared.node_id.load(Ordering::Relaxed)
    }

    /// True once `close()` (or `cleanup()`) was called.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::SeqCst)
    }

    /// The configuration in force: this handle's own, with the node id resolved.
    pub fn config(&self) -> &Config {
        self.shared.config.get().unwrap_or(&self.shared.base_config)
    }

    pub fn db_path(&self) -> &Path {
        &self.shared.db_path
    }

    /// Whether this handle runs the replicator or is attached to the process that does (ADR 0010). An
    /// attached handle that is looking for a new replicator reports `Attached`.
    pub fn role(&self) -> ReplicaRole {
        match self.shared.current_role() {
            Role::Active(_) => ReplicaRole::Active,
            _ => ReplicaRole::Attached,
        }
    }

    /// URLs of the NATS servers the replicator uses (the embedded server's when it is the default).
    pub fn nats_urls(&self) -> Vec<String> {
        match self.shared.current_role() {
            Role::Active(active) => active.replicator.nats_urls().to_vec(),
            Role::Attached(client) => client.hello().nats_urls.clone(),
            Role::Vacant | Role::Closed => Vec::new(),
        }
    }

    /// Change events (local and remote) from now on. Dropping the subscription unsubscribes; it ends
    /// (`recv` gives `None`) when the replica is closed, and lives on when another process takes over. On
    /// an attached handle the first subscription asks the replicator's process for events, which flow from
    /// the moment it receives the request (within a millisecond or so).
    pub fn subscribe(&self) -> Subscription {
        self.shared.wants_events.store(true, Ordering::SeqCst);
        if let Role::Attached(client) = self.shared.current_role() {
            client.enable_events();
        }
        match self.shared.events.lock().ok().and_then(|hub| hub.clone()) {
            Some(hub) => hub.subscribe(),
            None => EventHub::new().subscribe(), // closed: its only sender is dropped right here
        }
    }

    /// Conflict-log entries from now on, as they are recorded (merge losers, moved keys, constraint
    /// resolutions). Dropping the subscription unsubscribes; it ends when the replica is closed. On an
    /// attached handle they come from the replicator's process, like change events.
    pub fn subscribe_conflicts(&self) -> ConflictSubscription {
        self.shared.wants_events.store(true, Ordering::SeqCst);
        if let Role::Attached(client) = self.shared.current_role() {
            client.enable_events();
        }
        match self
            .shared
            .conflicts
            .lock()
            .ok()
            .and_then(|hub| hub.clone())
        {
            Some(hub) => hub.subscribe(),
            None => ConflictHub::new().subscribe(),
        }
    }

    /// Calls `callback` for every conflict recorded from now on, on the core runtime, until the listener
    /// is dropped. A panicking callback is reported and does not stop later calls.
    pub fn on_conflict(&self, callback: impl Fn(Conflict) + Send + Sync + 'static) -> Listener {
        let mut subscription = self.subscribe_conflicts();
        let callback = Arc::new(callback);
        let task = runtime().spawn(async move {
            while let Some(conflict) = subscription.recv().await {
                let callback = callback.clone();
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
                    callback(conflict)
                }));
                if outcome.is_err() {
                    warn!("a conflict callback panicked; later conflicts are still delivered");
                }
            }
        });
        Listener { task: Some(task) }
    }

    /// The conflict log, from the replicator: up to `limit` of the newest entries with an id above `after`
    /// (0: from the start), oldest first. The log keeps the newest 10,000 entries.
    pub async fn conflicts(&self, after: i64, limit: usize) -> Result<Vec<Conflict>> {
        let shared = self.shared.clone();
        on_runtime(async move {
            let make = |_| {
                let request = Request::Conflicts {
                    after,
                    limit: limit as u64,
                };
                (request, Duration::from_secs(30))
            };
            match shared.call(STATUS_PATIENCE, make).await? {
                (Answer::Conflicts(conflicts), _) => Ok(conflicts),
                (other, _) => Err(unexpected(&other)),
            }
        })
        .await
    }

    /// Calls `callback` for every change event, on the core runtime, until the listener is dropped.
    /// A panicking callback is reported and does not stop later events.
    pub fn on_change(&self, callback: impl Fn(ChangeEvent) + Send + Sync + 'static) -> Listener {
        let mut subscription = self.subscribe();
        let callback = Arc::new(callback);
        let task = runtime().spawn(async move {
            while let Some(event) = subscription.recv().await {
                let callback = callback.clone();
                let outcome =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || callback(event)));
                if outcome.is_err() {
                    warn!("a change-event callback panicked; later events are still delivered");
                }
            }
        });
        Listener { task: Some(task) }
    }

    /// Stamps and publishes everything the app committed before this call (in any process), waits for
    /// JetStream to acknowledge it, and returns the token other nodes can [`wait_for`](Self::wait_for).
    pub async fn sync(&self, timeout: Duration) -> Result<Token> {
        let shared = self.shared.clone();
        on_runtime(async move {
            let make = |left: Duration| {
                let request = Request::Sync {
                    timeout_ms: millis(left),
                };
                (request, left + Duration::from_secs(5))
            };
            match shared.call(timeout, make).await? {
                (Answer::Token(token), _) => Ok(token),
                (other, _) => Err(unexpected(&other)),
            }
        })
        .await
    }

    /// Waits until this node has applied every message up to `token` (from another node's `sync`).
    pub async fn wait_for(&self, token: &Token, timeout: Duration) -> Result<()> {
        if self.is_closed() {
            return Err(Error::Closed);
        }
        let replicate = match self.shared.current_role() {
            Role::Attached(client) => client.hello().replicate,
            Role::Active(active) => active.replicator.config().replicate,
            Role::Vacant | Role::Closed => self.config().replicate,
        };
        if !replicate {
            return Err(Error::config(
                "replicate",
                "this node applies nothing (replicate = false)",
            ));
        }
        let mut positions = self.shared.positions.subscribe();
        let mut shutdown = self.shared.shutdown.subscribe();
        // In the replicator's process a stored position counts once its consumer checked it against the
        // stream (a stream recreated after broker data loss starts again at 1).
        let mut verified = match self.shared.current_role() {
            Role::Active(active) => Some(active.replicator.verified_shards()),
            _ => None,
        };
        let token = token.clone();
        on_runtime(async move {
            let shards: Vec<u32> = token
                .positions
                .iter()
                .filter(|(_, seq)| **seq > 0)
                .map(|(shard, _)| *shard)
                .collect();
            let reached = async {
                if let Some(verified) = verified.as_mut() {
                    verified
                        .wait_for(|checked| shards.iter().all(|s| checked.contains(s)))
                        .await?;
                }
                positions
                    .wait_for(|applied| token.reached_by(applied))
                    .await
                    .map(|_| ())
            };
            tokio::select! {
                outcome = tokio::time::timeout(timeout, reached) => match outcome {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(_)) => Err(Error::Closed),
                    Err(_) => Err(Error::Timeout {
                        what: "this node to apply up to the token".into(),
                        millis: millis(timeout),
                    }),
                },
                _ = shutdown.wait_for(|stop| *stop) => Err(Error::Closed),
            }
        })
        .await
    }

    /// Waits until the replicator's NATS connection is up and the streams exist.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let shared = self.shared.clone();
        on_runtime(async move {
            let make = |left: Duration| {
                let request = Request::WaitReady {
                    timeout_ms: millis(left),
                };
                (request, left + Duration::from_secs(5))
            };
            shared.call(timeout, make).await.map(|_| ())
        })
        .await
    }

    /// The positions this node has applied, as a token.
    pub fn applied(&self) -> Token {
        Token {
            positions: self.shared.positions.borrow().clone(),
        }
    }

    /// The node's status, from the replicator (`role` and `replicator_pid` say whose).
    pub async fn status(&self) -> Result<Status> {
        self.status_for(Request::Status).await
    }

    /// Like [`Replica::status`], but a status at most a second old may be answered: for whatever polls it
    /// (a health probe, a dashboard), so that polling costs at most one status a second.
    pub async fn recent_status(&self) -> Result<Status> {
        self.status_for(Request::RecentStatus).await
    }

    async fn status_for(&self, request: Request) -> Result<Status> {
        let shared = self.shared.clone();
        on_runtime(async move {
            let make = move |_| (request.clone(), Duration::from_secs(30));
            match shared.call(STATUS_PATIENCE, make).await? {
                (Answer::Status(status), role) => {
                    let mut status = *status;
                    status.role = role;
                    Ok(status)
                }
                (other, _) => Err(unexpected(&other)),
            }
        })
        .await
    }

    /// The node's metrics in the Prometheus/OpenMetrics text format (content type
    /// [`crate::METRICS_CONTENT_TYPE`]), every series labelled `node_id`, names prefixed with `[prometheus]
    /// namespace` and `subsystem` (`harmonylite_changes_applied_total`, …). Counters are read as they are;
    /// gauges come from a status at most a second old. Serve it from the app's own HTTP endpoint, or let the
    /// sidecar's `[prometheus]` listener do it.
    pub async fn metrics(&self) -> Result<String> {
        let shared = self.shared.clone();
        on_runtime(async move {
            let naming = &shared.base_config.prometheus;
            let prefix = crate::metrics::prefix(&naming.namespace, &naming.subsystem);
            let make = move |_| {
                (
                    Request::Metrics {
                        prefix: prefix.clone(),
                    },
                    Duration::from_secs(30),
                )
            };
            match shared.call(STATUS_PATIENCE, make).await? {
                (Answer::Metrics(text), _) => Ok(text),
                (other, _) => Err(unexpected(&other)),
            }
        })
        .await
    }

    /// Saves a snapshot now (after stamping what the app committed), in the replicator's process. `Ok(None)`
    /// when another node holds the upload lease and this one skipped.
    pub async fn save_snapshot(&self) -> Result<Option<snapshot::Manifest>> {
        let shared = self.shared.clone();
        on_runtime(async move {
            let make = |_| (Request::SaveSnapshot, SNAPSHOT_CALL);
            match shared.call(SNAPSHOT_PATIENCE, make).await? {
                (Answer::Snapshot(manifest), _) => Ok(manifest),
                (other, _) => Err(unexpected(&other)),
            }
        })
        .await
    }

    /// Closes the replica and removes capture (triggers and the library's tables) from the database.
    /// The app's own tables and data are untouched. Refused while another process replicates this file.
    pub async fn cleanup(&self) -> Result<usize> {
        let shared = self.shared.clone();
        on_runtime(async move {
            // Refused before closing anything when another handle runs the replicator.
            let taken = match shared.current_role() {
                Role::Active(_) => None,
                _ => Some(acquire_for_cleanup(&shared.state_dir)?),
            };
            let lock = match (shared.close(true).await?, taken) {
                (Some(lock), _) | (None, Some(lock)) => lock,
                (None, None) => acquire_for_cleanup(&shared.state_dir)?,
            };
            let db = shared.db_path.clone();
            let removed =
                tokio::task::spawn_blocking(move || crate::db_thread::cleanup_database(&db))
                    .await
                    .map_err(|err| Error::Internal(format!("cleanup task failed: {err}")))?;
            drop(lock);
            removed
        })
        .await
    }

    /// Stops replication (an attached handle just detaches). In-flight batches are committed and
    /// acknowledged, local changes are stamped and (for up to a few seconds) published; what is left stays
    /// in the database and goes out on the next open. Once this returns, the embedded nats-server has
    /// stopped and the node lock is released: opening the file again, here or elsewhere, works at once, and
    /// an attached process takes over. Idempotent.
    pub async fn close(&self) -> Result<()> {
        let shared = self.shared.clone();
        on_runtime(async move { shared.close(false).await.map(|_| ()) }).await
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn unexpected(answer: &Answer) -> Error {
    Error::Internal(format!("the replicator answered {answer:?}"))
}

fn acquire_for_cleanup(state_dir: &Path) -> Result<NodeLock> {
    NodeLock::try_acquire(state_dir)?.ok_or_else(|| {
        Error::config(
            "cleanup",
            format!(
                "another process ({}) replicates this database; close its replica or stop it first",
                holder_text(state_dir)
            ),
        )
    })
}

/// Removes capture (triggers and the library's tables) from a database that no process replicates. The
/// app's own tables and data are untouched.
pub fn cleanup_database(db: &Path) -> Result<usize> {
    crate::sqlite_locks::install()?;
    let state_dir = Config::state_dir_for(db);
    let _lock = match std::fs::canonicalize(&state_dir) {
        Ok(state_dir) => Some(acquire_for_cleanup(&state_dir)?),
        Err(_) => None, // never replicated here with a lock
    };
    crate::db_thread::cleanup_database(db)
}
