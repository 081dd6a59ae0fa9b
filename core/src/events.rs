//! Change events: every row change this node commits (local, once stamped) or applies (remote), fanned out
//! to subscribers. A [`Subscription`] or [`Listener`] stops receiving when dropped.

use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use crate::state::conflicts::Conflict;

// Declared in `records` (the list the bindings expand too).
pub use crate::records::{ChangeEvent, ChangeOp};

/// How many events a slow subscriber may fall behind before it misses some (and is told so).
pub const EVENT_BUFFER: usize = 65_536;

/// Fan-out of one kind of record (change events, conflicts) to every subscriber.
#[derive(Clone)]
pub(crate) struct Hub<T: Clone> {
    sender: broadcast::Sender<T>,
}

pub(crate) type EventHub = Hub<ChangeEvent>;
pub(crate) type ConflictHub = Hub<Conflict>;

impl<T: Clone> Hub<T> {
    pub fn new() -> Hub<T> {
        let (sender, _) = broadcast::channel(EVENT_BUFFER);
        Hub { sender }
    }

    pub fn emit(&self, items: Vec<T>) {
        if self.sender.receiver_count() == 0 {
            return;
        }
        for item in items {
            // An error only means every subscriber left meanwhile.
            let _ = self.sender.send(item);
        }
    }

    pub fn subscribe(&self) -> Feed<T> {
        Feed {
            receiver: self.sender.subscribe(),
            missed: 0,
        }
    }
}

/// A stream of records from a [`Hub`]. Dropping it unsubscribes.
pub struct Feed<T: Clone> {
    receiver: broadcast::Receiver<T>,
    missed: u64,
}

/// Change events, local and remote.
pub type Subscription = Feed<ChangeEvent>;
/// Conflict-log entries as they are recorded.
pub type ConflictSubscription = Feed<Conflict>;

impl<T: Clone> Feed<T> {
    /// The next record; `None` once the replica is closed.
    pub async fn recv(&mut self) -> Option<T> {
        loop {
            match self.receiver.recv().await {
                Ok(item) => return Some(item),
                Err(broadcast::error::RecvError::Lagged(count)) => {
                    self.missed += count;
                    tracing::warn!(missed = count, "a subscriber fell behind and missed events");
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// The next record if one is ready.
    pub fn try_recv(&mut self) -> Option<T> {
        loop {
            match self.receiver.try_recv() {
                Ok(item) => return Some(item),
                Err(broadcast::error::TryRecvError::Lagged(count)) => self.missed += count,
                Err(_) => return None,
            }
        }
    }

    /// Records this subscriber missed by falling more than [`EVENT_BUFFER`] behind.
    pub fn missed(&self) -> u64 {
        self.missed
    }
}

/// A callback subscription running on the core's runtime; cancelled by [`Listener::cancel`] or drop.
pub struct Listener {
    pub(crate) task: Option<JoinHandle<()>>,
}

impl Listener {
    pub fn cancel(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.cancel();
    }
}
