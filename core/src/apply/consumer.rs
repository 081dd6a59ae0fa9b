//! The consumer task of one shard: reads the shard's stream from this node's stored position with a
//! durable pull consumer, hands bounded batches to the database thread, acknowledges after the commit,
//! and parks undecodable messages on the dead-letter stream.

use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use futures::{FutureExt, StreamExt};
use tokio::sync::{oneshot, watch};
use tracing::{debug, info, warn};

use super::applier::{ApplyOutcome, Incoming};
use crate::db_thread::Command;
use crate::engine::Counters;
use crate::error::{Error, Result};
use crate::transport::Names;

/// Most payload bytes gathered into one apply transaction.
const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;
const MAX_BACKOFF: Duration = Duration::from_secs(5);

pub(crate) struct ShardConsumer {
    pub js: jetstream::Context,
    pub names: Names,
    pub node_id: u64,
    pub shard: u32,
    pub db: std_mpsc::Sender<Command>,
    pub max_batch_messages: usize,
    pub max_batch_time: Duration,
    pub counters: Arc<Counters>,
}

async fn ask<T>(
    db: &std_mpsc::Sender<Command>,
    make: impl FnOnce(oneshot::Sender<Result<T>>) -> Command,
) -> Result<T> {
    let (reply, answer) = oneshot::channel();
    db.send(make(reply)).map_err(|_| Error::Closed)?;
    answer.await.map_err(|_| Error::Closed)?
}

enum Exit {
    Shutdown,
    Restart(String),
}

impl ShardConsumer {
    pub async fn run(self, mut ready: watch::Receiver<bool>, mut shutdown: watch::Receiver<bool>) {
        if !*ready.borrow() {
            tokio::select! {
                _ = ready.wait_for(|r| *r) => {}
                _ = shutdown.changed() => return,
            }
        }
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.consume(&mut shutdown).await {
                Exit::Shutdown => return,
                Exit::Restart(reason) => {
                    debug!(shard = self.shard, reason = %reason, "consumer restarting");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.changed() => return,
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    async fn open_messages(&self) -> Result<consumer::pull::Stream> {
        let shard = self.shard;
        let position = ask(&self.db, |reply| Command::Position { shard, reply }).await?;
        let stream_name = self.names.stream(shard);
        let stream = self
            .js
            .get_stream(&stream_name)
            .await
            .map_err(|err| Error::transport(format!("opening stream {stream_name}"), err))?;
        let state = &stream.cached_info().state;
        if state.messages > 0 && state.first_sequence > position + 1 {
            self.counters
                .behind_retention
                .store(true, std::sync::atomic::Ordering::Relaxed);
            tracing::error!(
                shard,
                applied = position,
                stream_starts_at = state.first_sequence,
                "this node is behind the stream's retention: rows changed in the gap stay stale until they change \
                 again; restart it to restore a snapshot"
            );
        }
        let name = self.names.consumer(self.node_id, shard);
        // The position stored in the database is the truth; start the consumer there every time.
        let _ = stream.delete_consumer(&name).await;
        let deliver_policy = if position == 0 {
            consumer::DeliverPolicy::All
        } else {
            consumer::DeliverPolicy::ByStartSequence {
                start_sequence: position + 1,
            }
        };
        let pull = stream
            .create_consumer(consumer::pull::Config {
                durable_name: Some(name.clone()),
                deliver_policy,
                ack_policy: consumer::AckPolicy::All,
                ack_wait: Duration::from_secs(60),
                inactive_threshold: Duration::from_secs(24 * 3600),
                ..Default::default()
            })
            .await
            .map_err(|err| Error::transport(format!("creating consumer {name}"), err))?;
        info!(shard, from = position + 1, "consuming");
        pull.stream()
            .max_messages_per_batch(self.max_batch_messages.clamp(16, 1000))
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await
            .map_err(|err| Error::transport(format!("reading stream {stream_name}"), err))
    }

    async fn consume(&self, shutdown: &mut watch::Receiver<bool>) -> Exit {
        let mut messages = match self.open_messages().await {
            Ok(messages) => messages,
            Err(Error::Closed) => return Exit::Shutdown,
            Err(err) => return Exit::Restart(err.to_string()),
        };
        loop {
            let first = tokio::select! {
                next = messages.next() => next,
                _ = shutdown.changed() => return Exit::Shutdown,
            };
            let first = match first {
                Some(Ok(message)) => message,
                Some(Err(err)) => return Exit::Restart(err.to_string()),
                None => return Exit::Restart("stream ended".into()),
            };
            // Take what is already here, without waiting: batching must not add latency.
            let started = Instant::now();
            let mut batch = vec![first];
            let mut bytes = batch[0].payload.len();
            while batch.len() < self.max_batch_messages
                && bytes < MAX_BATCH_BYTES
                && started.elapsed() < self.max_batch_time
            {
                match messages.next().now_or_never() {
                    Some(Some(Ok(message))) => {
                        bytes += message.payload.len();
                        batch.push(message);
                    }
                    Some(Some(Err(err))) => {
                        warn!(shard = self.shard, error = %err, "consumer error");
                        break;
                    }
                    _ => break,
                }
            }
            let incoming: Vec<Incoming> = batch
                .iter()
                .filter_map(|message| {
                    let info = message.info().ok()?;
                    Some(Incoming {
                        shard: self.shard,
                        seq: info.stream_sequence,
                        payload: message.payload.clone(),
                    })
                })
                .collect();
            let outcome = match self.apply_with_retry(incoming.clone(), shutdown).await {
                Some(outcome) => outcome,
                None => return Exit::Shutdown,
            };
            self.park(&outcome, &incoming).await;
            if let Some(last) = batch.last() {
                // A lost ack only means a redelivery, which the stored position makes harmless.
                if let Err(err) = last.ack().await {
                    debug!(error = %err, "ack failed");
                }
            }
        }
    }

    async fn apply_with_retry(
        &self,
        incoming: Vec<Incoming>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Option<ApplyOutcome> {
        let mut backoff = Duration::from_millis(20);
        loop {
            let messages = incoming.clone();
            match ask(&self.db, |reply| Command::Apply { messages, reply }).await {
                Ok(outcome) => return Some(outcome),
                Err(Error::Closed) => return None,
                Err(err) => {
                    self.counters.record_error(&err);
                    warn!(shard = self.shard, error = %err, "apply failed; will retry");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.changed() => return None,
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    async fn park(&self, outcome: &ApplyOutcome, incoming: &[Incoming]) {
        for (shard, seq, reason) in &outcome.dead_letters {
            let Some(message) = incoming.iter().find(|m| m.seq == *seq) else {
                continue;
            };
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("HarmonyLite-Reason", reason.as_str());
            headers.insert("HarmonyLite-Stream-Seq", seq.to_string().as_str());
            headers.insert("HarmonyLite-Parked-By", self.node_id.to_string().as_str());
            let subject = self.names.dead_letter_subject(*shard);
            match self
                .js
                .publish_with_headers(subject, headers, message.payload.clone())
                .await
            {
                Ok(ack) => {
                    if let Err(err) = ack.await {
                        warn!(error = %err, "parking a malformed message was not acknowledged");
                    }
                }
                Err(err) => warn!(error = %err, "could not park a malformed message"),
            }
        }
    }
}
