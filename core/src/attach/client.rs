//! An attached handle's side of the socket: calls the replicator's process, receives its pushes.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncWriteExt as _, BufWriter};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::protocol::{read_frame, Answer, Call, Hello, Request, ServerFrame, WireError, PROTOCOL};
use crate::error::Error;
use crate::events::ChangeEvent;

/// How long a listening replicator may take to greet: it does so at once, so silence means the socket is a
/// leftover (for instance inherited by a forked child of a dead replicator).
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// What the replicator pushes, handed to the attached handle.
pub(crate) enum Push {
    Positions(BTreeMap<u32, u64>),
    Event(ChangeEvent),
    Conflict(crate::state::conflicts::Conflict),
}

pub(crate) type PushSink = Arc<dyn Fn(Push) + Send + Sync>;

pub(crate) enum ConnectError {
    /// Nobody answers there right now (no socket, refused, no greeting): try again later.
    Unavailable(std::io::Error),
    /// A replicator answers but speaks another version.
    Incompatible(Error),
}

pub(crate) enum CallError {
    /// The connection ended before the answer: the replicator went away; ask whoever takes over.
    Lost,
    Failed(Error),
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Answer, WireError>>>>>;

pub(crate) struct Client {
    hello: Hello,
    calls: mpsc::UnboundedSender<Call>,
    pending: Pending,
    next_id: AtomicU64,
    lost: watch::Receiver<bool>,
    events_on: AtomicBool,
    task: JoinHandle<()>,
}

impl Client {
    /// Connects to the replicator listening at `socket`. Must run on the core runtime.
    pub(crate) async fn connect(
        socket: &Path,
        push: PushSink,
    ) -> std::result::Result<Client, ConnectError> {
        let stream = UnixStream::connect(socket)
            .await
            .map_err(ConnectError::Unavailable)?;
        let (mut read, write) = stream.into_split();
        let greeting = tokio::time::timeout(HELLO_TIMEOUT, read_frame::<ServerFrame>(&mut read))
            .await
            .map_err(|_| {
                ConnectError::Unavailable(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the replicator did not greet",
                ))
            })?
            .map_err(ConnectError::Unavailable)?;
        let hello = match greeting {
            Some(ServerFrame::Hello(hello)) => hello,
            Some(_) | None => {
                return Err(ConnectError::Unavailable(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "the replicator did not greet",
                )))
            }
        };
        if !hello.compatible() {
            return Err(ConnectError::Incompatible(Error::transport(
                format!("attaching to the replicator of {}", socket.display()),
                format!(
                    "process {} runs harmonylite {} (attach protocol {}), this process {} (protocol {}); \
                     run one version of harmonylite for a database on a host",
                    hello.pid,
                    hello.version,
                    hello.protocol,
                    env!("CARGO_PKG_VERSION"),
                    PROTOCOL
                ),
            )));
        }
        let pending: Pending = Arc::default();
        let (calls, mut outgoing) = mpsc::unbounded_channel::<Call>();
        let (lost_tx, lost) = watch::channel(false);
        let task = {
            let pending = pending.clone();
            tokio::spawn(async move {
                let writer = async move {
                    let mut write = BufWriter::new(write);
                    while let Some(call) = outgoing.recv().await {
                        let Ok(bytes) = super::protocol::encode(&call) else {
                            continue;
                        };
                        if write.write_all(&bytes).await.is_err() {
                            return;
                        }
                        if outgoing.is_empty() && write.flush().await.is_err() {
                            return;
                        }
                    }
                };
                let reader = async {
                    loop {
                        match read_frame::<ServerFrame>(&mut read).await {
                            Ok(Some(ServerFrame::Reply { id, result })) => {
                                let waiter = pending.lock().ok().and_then(|mut p| p.remove(&id));
                                if let Some(waiter) = waiter {
                                    let _ = waiter.send(result);
                                }
                            }
                            Ok(Some(ServerFrame::Positions(positions))) => {
                                push(Push::Positions(positions))
                            }
                            Ok(Some(ServerFrame::Event(event))) => push(Push::Event(event)),
                            Ok(Some(ServerFrame::Conflict(conflict))) => {
                                push(Push::Conflict(conflict))
                            }
                            Ok(Some(ServerFrame::Hello(_))) => {}
                            Ok(None) | Err(_) => return,
                        }
                    }
                };
                tokio::select! {
                    () = writer => {}
                    () = reader => {}
                }
                // Waiters see their sender dropped: `CallError::Lost`.
                if let Ok(mut pending) = pending.lock() {
                    pending.clear();
                }
                let _ = lost_tx.send(true);
            })
        };
        Ok(Client {
            hello,
            calls,
            pending,
            next_id: AtomicU64::new(1),
            lost,
            events_on: AtomicBool::new(false),
            task,
        })
    }

    pub(crate) fn hello(&self) -> &Hello {
        &self.hello
    }

    /// Resolves once the connection has ended.
    pub(crate) async fn lost(&self) {
        let mut lost = self.lost.clone();
        let _ = lost.wait_for(|lost| *lost).await;
    }

    pub(crate) fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }

    /// Asks the replicator's process to run `request`, waiting at most `timeout` for its answer.
    pub(crate) async fn call(
        &self,
        request: Request,
        timeout: Duration,
    ) -> std::result::Result<Answer, CallError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (reply, answer) = oneshot::channel();
        match self.pending.lock() {
            Ok(mut pending) => {
                pending.insert(id, reply);
            }
            Err(_) => return Err(CallError::Failed(Error::Internal("lock poisoned".into()))),
        }
        if self.is_lost() || self.calls.send(Call { id, request }).is_err() {
            self.forget(id);
            return Err(CallError::Lost);
        }
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(Ok(answer))) => Ok(answer),
            Ok(Ok(Err(err))) => Err(CallError::Failed(err.into())),
            Ok(Err(_)) => Err(CallError::Lost),
            Err(_) => {
                self.forget(id);
                Err(CallError::Failed(Error::Timeout {
                    what: format!("the replicator (process {}) to answer", self.hello.pid),
                    millis: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                }))
            }
        }
    }

    fn forget(&self, id: u64) {
        if let Ok(mut pending) = self.pending.lock() {
            pending.remove(&id);
        }
    }

    /// Asks for change events on this connection (once; later calls do nothing).
    pub(crate) fn enable_events(&self) {
        if self.events_on.swap(true, Ordering::SeqCst) {
            return;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        // The answer (`Done`) is not awaited: nobody is registered for it and the reader drops it.
        let _ = self.calls.send(Call {
            id,
            request: Request::Events,
        });
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}
