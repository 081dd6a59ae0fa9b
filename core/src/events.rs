//! Change events: every row change this node commits (local, once stamped) or applies (remote), fanned out
//! to subscribers. A [`Subscription`] or [`Listener`] stops receiving when dropped.

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use crate::clock::Hlc;
use crate::log::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeOp {
    Insert,
    Update,
    Delete,
}

impl ChangeOp {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeOp::Insert => "insert",
            ChangeOp::Update => "update",
            ChangeOp::Delete => "delete",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangeEvent {
    pub table: String,
    pub op: ChangeOp,
    /// Primary-key values in key order.
    pub pk: Vec<Value>,
    /// Node that made the change.
    pub origin_node: u64,
    pub hlc: Hlc,
    /// True when the change was made on this node (reported once it is stamped for publishing).
    pub local: bool,
}

/// How many events a slow subscriber may fall behind before it misses some (and is told so).
pub const EVENT_BUFFER: usize = 65_536;

#[derive(Clone)]
pub(crate) struct EventHub {
    sender: broadcast::Sender<ChangeEvent>,
}

impl EventHub {
    pub fn new() -> EventHub {
        let (sender, _) = broadcast::channel(EVENT_BUFFER);
        EventHub { sender }
    }

    pub fn emit(&self, events: Vec<ChangeEvent>) {
        if self.sender.receiver_count() == 0 {
            return;
        }
        for event in events {
            // An error only means every subscriber left meanwhile.
            let _ = self.sender.send(event);
        }
    }

    pub fn subscribe(&self) -> Subscription {
        Subscription {
            receiver: self.sender.subscribe(),
            missed: 0,
        }
    }
}

/// A stream of change events. Dropping it unsubscribes.
pub struct Subscription {
    receiver: broadcast::Receiver<ChangeEvent>,
    missed: u64,
}

impl Subscription {
    /// The next event; `None` once the replica is closed.
    pub async fn recv(&mut self) -> Option<ChangeEvent> {
        loop {
            match self.receiver.recv().await {
                Ok(event) => return Some(event),
                Err(broadcast::error::RecvError::Lagged(count)) => {
                    self.missed += count;
                    tracing::warn!(
                        missed = count,
                        "a change-event subscriber fell behind and missed events"
                    );
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// The next event if one is ready.
    pub fn try_recv(&mut self) -> Option<ChangeEvent> {
        loop {
            match self.receiver.try_recv() {
                Ok(event) => return Some(event),
                Err(broadcast::error::TryRecvError::Lagged(count)) => self.missed += count,
                Err(_) => return None,
            }
        }
    }

    /// Events this subscriber missed by falling more than [`EVENT_BUFFER`] behind.
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
