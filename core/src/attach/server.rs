//! The replicator's side of the attach socket: answers calls from the other processes of the node, pushes
//! applied positions to them, and change events to those that asked.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncWriteExt as _, BufWriter};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, warn};

use super::protocol::{read_frame, Call, Hello, Request, ServerFrame, WireError};
use crate::engine::WeakReplicator;
use crate::error::{Error, Result};
use crate::events::{ConflictHub, ConflictSubscription, EventHub, Subscription};

/// Frames queued for one client before the producers wait (events then lag and are counted as missed).
const QUEUE: usize = 1024;

/// What the server needs from the replicator's handle.
pub(crate) struct Serve {
    pub hello: Hello,
    pub replicator: WeakReplicator,
    pub events: EventHub,
    pub conflicts: ConflictHub,
    pub positions: watch::Receiver<BTreeMap<u32, u64>>,
}

/// A listening attach socket. Stop it (or drop it) before the node lock is released: it removes its socket
/// file first, so it can never remove the one of the process that takes over.
pub(crate) struct Server {
    path: PathBuf,
    /// (device, inode) of the socket file this server bound.
    identity: Option<(u64, u64)>,
    attached: Arc<AtomicU32>,
    accept: Mutex<Option<JoinHandle<()>>>,
}

impl Server {
    /// Binds `path` (replacing a stale socket file: the caller holds the node lock) and starts accepting.
    /// Must run on the core runtime.
    pub(crate) fn bind(path: &Path, serve: Serve) -> Result<Server> {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(Error::io(path.display(), err)),
        }
        let listener = UnixListener::bind(path).map_err(|err| Error::io(path.display(), err))?;
        let attached = Arc::new(AtomicU32::new(0));
        let accept = tokio::spawn(accept_loop(listener, Arc::new(serve), attached.clone()));
        Ok(Server {
            path: path.to_path_buf(),
            identity: file_identity(path),
            attached,
            accept: Mutex::new(Some(accept)),
        })
    }

    /// Handles attached right now.
    pub(crate) fn attached(&self) -> u32 {
        self.attached.load(Ordering::Relaxed)
    }

    /// Stops accepting, drops every connection (clients see the end and start trying the lock) and removes
    /// the socket file. Idempotent.
    pub(crate) async fn stop(&self) {
        let accept = self.accept.lock().ok().and_then(|mut a| a.take());
        self.remove_socket_file();
        if let Some(accept) = accept {
            accept.abort();
            let _ = accept.await; // its connections are aborted when its JoinSet is dropped
        }
    }

    fn remove_socket_file(&self) {
        if self.identity.is_some() && file_identity(&self.path) == self.identity {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.remove_socket_file();
        if let Some(accept) = self.accept.lock().ok().and_then(|mut a| a.take()) {
            accept.abort();
        }
    }
}

#[cfg(unix)]
fn file_identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

#[cfg(not(unix))]
fn file_identity(_path: &Path) -> Option<(u64, u64)> {
    None
}

async fn accept_loop(listener: UnixListener, serve: Arc<Serve>, attached: Arc<AtomicU32>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(connection(stream, serve.clone(), attached.clone()));
                }
                Err(err) => {
                    warn!(%err, "attach socket: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Counts a connection for as long as it lives (also when its task is aborted).
struct Counted(Arc<AtomicU32>);

impl Counted {
    fn new(counter: Arc<AtomicU32>) -> Counted {
        counter.fetch_add(1, Ordering::Relaxed);
        Counted(counter)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn connection(stream: UnixStream, serve: Arc<Serve>, attached: Arc<AtomicU32>) {
    let _counted = Counted::new(attached.clone());
    let (mut read, write) = stream.into_split();
    let (frames, mut queue) = mpsc::channel::<ServerFrame>(QUEUE);
    let writer = async move {
        let mut write = BufWriter::new(write);
        while let Some(frame) = queue.recv().await {
            let bytes = match super::protocol::encode(&frame) {
                Ok(bytes) => bytes,
                Err(err) => {
                    warn!(%err, "attach socket: a frame does not serialize; dropped");
                    continue;
                }
            };
            if write.write_all(&bytes).await.is_err() {
                return;
            }
            // Write out when nothing else is queued: one system call for a burst of events.
            if queue.is_empty() && write.flush().await.is_err() {
                return;
            }
        }
    };
    let mut tasks = JoinSet::new();
    if frames
        .send(ServerFrame::Hello(serve.hello.clone()))
        .await
        .is_err()
    {
        return;
    }
    tasks.spawn(push_positions(serve.positions.clone(), frames.clone()));
    let reader = async {
        let mut events_on = false;
        loop {
            let call: Call = match read_frame(&mut read).await {
                Ok(Some(call)) => call,
                Ok(None) => return,
                Err(err) => {
                    debug!(%err, "attach socket: dropping a client that sent a bad frame");
                    return;
                }
            };
            if matches!(call.request, Request::Events) && !events_on {
                // Subscribed here, before the next call is read: a client that asked for events and then
                // got any answer receives every event emitted after that answer.
                events_on = true;
                tasks.spawn(push_events(serve.events.subscribe(), frames.clone()));
                tasks.spawn(push_conflicts(serve.conflicts.subscribe(), frames.clone()));
            }
            tasks.spawn(reply(
                call,
                serve.replicator.clone(),
                attached.clone(),
                frames.clone(),
            ));
            // Reap finished calls so a long-lived connection does not accumulate them.
            while tasks.try_join_next().is_some() {}
        }
    };
    tokio::select! {
        () = writer => {}
        () = reader => {}
    }
}

async fn reply(
    call: Call,
    replicator: WeakReplicator,
    attached: Arc<AtomicU32>,
    frames: mpsc::Sender<ServerFrame>,
) {
    let result = match replicator.upgrade() {
        Some(replicator) => {
            super::answer(&replicator, attached.load(Ordering::Relaxed), call.request).await
        }
        None => Err(Error::Closed),
    };
    let frame = ServerFrame::Reply {
        id: call.id,
        result: result.map_err(|err| WireError::from(&err)),
    };
    let _ = frames.send(frame).await;
}

async fn push_positions(
    mut positions: watch::Receiver<BTreeMap<u32, u64>>,
    frames: mpsc::Sender<ServerFrame>,
) {
    loop {
        let now = positions.borrow_and_update().clone();
        if frames.send(ServerFrame::Positions(now)).await.is_err() {
            return;
        }
        if positions.changed().await.is_err() {
            return;
        }
    }
}

async fn push_conflicts(mut subscription: ConflictSubscription, frames: mpsc::Sender<ServerFrame>) {
    while let Some(conflict) = subscription.recv().await {
        if frames.send(ServerFrame::Conflict(conflict)).await.is_err() {
            return;
        }
    }
}

async fn push_events(mut subscription: Subscription, frames: mpsc::Sender<ServerFrame>) {
    while let Some(event) = subscription.recv().await {
        if frames.send(ServerFrame::Event(event)).await.is_err() {
            return;
        }
    }
}
