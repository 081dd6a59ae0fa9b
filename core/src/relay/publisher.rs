//! The publisher task: sends outbox entries to their shard's stream with many publishes in flight, and
//! tells the database thread to delete an entry only after JetStream acknowledged it. Failures are retried
//! with backoff, forever; the message id makes a retried publish a no-op if the first one had landed.

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::context::{PublishAckFuture, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, publish::PublishAck};
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::db_thread::Command;
use crate::log::signing::{ClusterKeys, SIGNATURE_HEADER};
use crate::metrics::Counters;
use crate::publish::OutboxEntry;
use crate::retry::{Backoff, NATS_MAX_PAUSE};
use crate::status::PublishProgress;
use crate::transport::stream_health::StreamHealth;
use crate::transport::Names;

pub(crate) struct Publisher {
    pub js: jetstream::Context,
    pub names: Names,
    pub db: std_mpsc::Sender<Command>,
    pub max_inflight: usize,
    pub counters: Arc<Counters>,
    pub progress: watch::Sender<PublishProgress>,
    /// Told when a publish finds no stream for its subject (the stream keeper then checks and recreates).
    pub health: Arc<StreamHealth>,
    /// The cluster key (`[signing]`): when set, every message is signed.
    pub keys: Option<ClusterKeys>,
}

type Inflight = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = (OutboxEntry, Result<PublishAck, (PublishErrorKind, String)>),
            > + Send,
    >,
>;

/// How long `close()` lets unsent messages go out before leaving them in the outbox for next time.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);

impl Publisher {
    pub async fn run(
        self,
        initial: Vec<OutboxEntry>,
        mut inbox: mpsc::UnboundedReceiver<OutboxEntry>,
        mut ready: watch::Receiver<bool>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut queue: VecDeque<OutboxEntry> = VecDeque::new();
        let mut outstanding: BTreeSet<i64> = BTreeSet::new();
        let mut known_highest: i64 = 0;
        for entry in initial {
            outstanding.insert(entry.id);
            known_highest = known_highest.max(entry.id);
            queue.push_back(entry);
        }
        let mut inflight: FuturesUnordered<Inflight> = FuturesUnordered::new();
        let mut backoff = Backoff::new(Duration::from_millis(50), NATS_MAX_PAUSE);
        let mut retry_at: Option<Instant> = None;
        let mut drain_deadline: Option<Instant> = None;
        let mut streams_ready = *ready.borrow();
        let mut ready_open = true;
        let mut acked_ids: Vec<i64> = Vec::new();

        loop {
            if drain_deadline.is_some()
                && ((queue.is_empty() && inflight.is_empty())
                    || drain_deadline.is_some_and(|d| Instant::now() >= d))
            {
                break;
            }
            if streams_ready && retry_at.is_none_or(|at| Instant::now() >= at) {
                retry_at = None;
                while inflight.len() < self.max_inflight {
                    let Some(entry) = queue.pop_front() else {
                        break;
                    };
                    match self.send(&entry).await {
                        Ok(ack) => inflight.push(Box::pin(async move {
                            let result = ack.await.map_err(|err| (err.kind(), err.to_string()));
                            (entry, result)
                        })),
                        Err((PublishErrorKind::MaxPayloadExceeded, reason)) => {
                            warn!(shard = entry.shard, rows = entry.rows, reason = %reason, "message larger than the server accepts");
                            outstanding.remove(&entry.id);
                            let _ = self.db.send(Command::Reject { entry, reason });
                        }
                        Err((kind, reason)) => {
                            if kind == PublishErrorKind::StreamNotFound {
                                self.health.request_recheck();
                            }
                            debug!(reason = %reason, "publish failed; will retry");
                            queue.push_front(entry);
                            retry_at = Some(Instant::now() + backoff.next_pause());
                            break;
                        }
                    }
                }
            }
            let wake_retry = async {
                match retry_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                entry = inbox.recv() => match entry {
                    Some(entry) => {
                        outstanding.insert(entry.id);
                        known_highest = known_highest.max(entry.id);
                        queue.push_back(entry);
                    }
                    None => {
                        if drain_deadline.is_none() {
                            drain_deadline = Some(Instant::now() + DRAIN_LIMIT);
                        }
                        if queue.is_empty() && inflight.is_empty() {
                            break;
                        }
                    }
                },
                Some((entry, result)) = inflight.next(), if !inflight.is_empty() => match result {
                    Ok(ack) => {
                        backoff.reset();
                        outstanding.remove(&entry.id);
                        acked_ids.push(entry.id);
                        self.counters.published_messages.inc();
                        self.counters.published_rows.inc_by(u64::from(entry.rows));
                        self.counters.last_publish_ms.store(crate::clock::wall_millis(), Ordering::Relaxed);
                        self.progress.send_modify(|progress| {
                            let seq = progress.shard_seqs.entry(entry.shard).or_insert(0);
                            *seq = (*seq).max(ack.sequence);
                        });
                    }
                    Err((kind, reason)) => {
                        if kind == PublishErrorKind::StreamNotFound {
                            self.health.request_recheck();
                        }
                        debug!(reason = %reason, "publish not acknowledged; will retry");
                        queue.push_front(entry);
                        if retry_at.is_none() {
                            retry_at = Some(Instant::now() + backoff.next_pause());
                        }
                    }
                },
                _ = wake_retry => {}
                // Both ways: a stream found missing while running makes the streams not ready again.
                changed = ready.changed(), if ready_open => match changed {
                    Ok(()) => streams_ready = *ready.borrow(),
                    // The stream keeper stopped (closing): keep sending what is queued.
                    Err(_) => ready_open = false,
                },
                _ = shutdown.changed(), if drain_deadline.is_none() => {
                    drain_deadline = Some(Instant::now() + DRAIN_LIMIT);
                }
            }
            if !acked_ids.is_empty() {
                let _ = self.db.send(Command::Acked {
                    ids: std::mem::take(&mut acked_ids),
                });
            }
            let through = match outstanding.first() {
                Some(first) => first - 1,
                None => known_highest,
            };
            if self.progress.borrow().acked_through != through {
                self.progress
                    .send_modify(|progress| progress.acked_through = through);
            }
        }
        if !queue.is_empty() || !inflight.is_empty() {
            warn!(
                unsent = queue.len() + inflight.len(),
                "closing with unsent messages; they stay in the outbox and go out on next open"
            );
        }
    }

    async fn send(
        &self,
        entry: &OutboxEntry,
    ) -> Result<PublishAckFuture, (PublishErrorKind, String)> {
        let mut message = PublishMessage::build()
            .payload(entry.payload.clone())
            .message_id(&entry.msg_id);
        if let Some(keys) = &self.keys {
            message = message.header(
                SIGNATURE_HEADER,
                keys.sign(&entry.msg_id, &entry.payload).as_str(),
            );
        }
        self.js
            .send_publish(self.names.subject(entry.shard), message)
            .await
            .map_err(|err| (err.kind(), err.to_string()))
    }
}
