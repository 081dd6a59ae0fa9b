//! The consumer task of one shard: reads the shard's stream from this node's stored position with a
//! durable pull consumer, hands bounded batches to the database thread, acknowledges after the commit,
//! and parks undecodable messages on the dead-letter stream.
//!
//! Before reading, it checks that the stream is the one its stored position refers to: a stream that was
//! recreated (the server lost its store, or someone deleted it) starts again at sequence 1, and resuming
//! from the old position would skip the new stream's first messages silently. Then the position is reset
//! to the start of the stream, the loss is recorded in `status()`, and this node publishes its rows again.

use std::collections::BTreeMap;
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use futures::{FutureExt, StreamExt};
use tokio::sync::{oneshot, watch};
use tracing::{debug, info, warn};

use crate::apply::applier::{ApplyOutcome, Incoming};
use crate::db_thread::Command;
use crate::error::{Error, Result};
use crate::log::PublishedBy;
use crate::metrics::Counters;
use crate::retry::{Backoff, NATS_MAX_PAUSE};
use crate::status::PublishProgress;
use crate::transport::stream_health::{judge, StreamHealth, StreamIdentity};
use crate::transport::{created_ns, is_stream_not_found, Names};

/// Most payload bytes gathered into one apply transaction.
const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;
/// Most bytes one pull asks for: far below nats-server's default 64 MB pending limit per client.
pub(crate) const MAX_PULL_BYTES: usize = 8 * 1024 * 1024;
/// Smallest pull: the server's max payload plus headroom, so one message always fits in a pull.
fn min_pull_bytes(max_payload: usize) -> usize {
    max_payload.max(64 * 1024) + 64 * 1024
}
/// Successful batches after which a shrunken pull size doubles again.
const GROW_AFTER_BATCHES: u32 = 64;

pub(crate) struct ShardConsumer {
    pub js: jetstream::Context,
    pub names: Names,
    pub node_id: u64,
    pub shard: u32,
    pub db: std_mpsc::Sender<Command>,
    pub max_batch_messages: usize,
    pub max_batch_time: Duration,
    pub counters: Arc<Counters>,
    /// Counts NATS disconnections: pulls in flight die with a connection, so the consumer restarts.
    pub disconnects: watch::Receiver<u64>,
    /// Bytes per pull; halved at each restart (usually a cut connection), grown back after healthy batches.
    pub pull_bytes: std::sync::atomic::AtomicUsize,
    pub health: Arc<StreamHealth>,
    /// Announces applied positions (a reset one too) to `wait_for`.
    pub positions: watch::Sender<BTreeMap<u32, u64>>,
    /// The publisher's acknowledged sequences (None when this node does not publish): after a stream was
    /// recreated, the old stream's sequences must not stand in read-your-writes tokens.
    pub progress: Option<watch::Sender<PublishProgress>>,
    /// The cluster keys (`[signing]`): when set, a message not signed with one of them is refused.
    pub keys: Option<crate::log::signing::ClusterKeys>,
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
        let mut backoff = Backoff::new(Duration::from_millis(100), NATS_MAX_PAUSE);
        let mut dead_letters_tried = false;
        loop {
            let started = Instant::now();
            if !dead_letters_tried {
                match self.retry_dead_letters(&mut shutdown).await {
                    Ok(()) => dead_letters_tried = true,
                    Err(Error::Closed) => return,
                    // Tried again at the next restart; the stream goes on meanwhile.
                    Err(err) => {
                        debug!(shard = self.shard, error = %err, "dead letters not tried yet")
                    }
                }
            }
            match self.consume(&mut shutdown).await {
                Exit::Shutdown => return,
                Exit::Restart(reason) => {
                    // A consumer that ran for a while failed for a new reason: retry soon again.
                    if started.elapsed() > NATS_MAX_PAUSE * 2 {
                        backoff.reset();
                    }
                    // Most restarts follow a dropped connection; the server may have cut us as a slow
                    // consumer, so ask for less at a time.
                    self.shrink_pulls();
                    debug!(shard = self.shard, reason = %reason, "consumer restarting");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff.next_pause()) => {}
                        _ = shutdown.changed() => return,
                    }
                }
            }
        }
    }

    /// Opens the pull stream from the stored position; returns it with that position.
    async fn open_messages(&self) -> Result<(consumer::pull::Stream, u64)> {
        let shard = self.shard;
        // The positions watch holds what the database thread has applied (or skipped as this node's own),
        // in memory and on disk alike, from the moment it opened: no round trip through its queue, which
        // may hold a large transaction. This consumer is the only one applying its shard and awaits each
        // apply, so nothing of its shard is in flight here.
        let mut position = self.positions.borrow().get(&shard).copied().unwrap_or(0);
        let stream_name = self.names.stream(shard);
        let stream = match self.js.get_stream(&stream_name).await {
            Ok(stream) => stream,
            Err(err) => {
                if is_stream_not_found(&err) {
                    // The stream keeper confirms, records the loss and creates it again.
                    self.health.set_missing(&stream_name, true);
                    self.health.request_recheck();
                }
                return Err(Error::transport(
                    format!("opening stream {stream_name}"),
                    err,
                ));
            }
        };
        let info = stream.cached_info();
        let state = &info.state;
        let current = StreamIdentity {
            created_ns: created_ns(info),
            last_seq: state.last_sequence,
        };
        let known = self.health.identity(&stream_name);
        // A loss the stream keeper found (the stream missing, then created again) may come before this
        // consumer ever saw the lost incarnation, or after it last looked: the repair is owed all the same.
        let loss =
            judge(known, current, position).or_else(|| self.health.unrepaired_loss(&stream_name));
        if let Some(reason) = loss {
            self.reset_position(&stream_name, &reason, position, current)
                .await?;
            position = 0;
        } else if known.map(|k| k.created_ns) != Some(current.created_ns) {
            self.health.remember(&stream_name, current);
        } else {
            self.health.saw_last_seq(&stream_name, current.last_seq);
        }
        if !self.health.verify(shard, &stream_name, current.created_ns) {
            return Err(Error::transport(
                format!("opening stream {stream_name}"),
                "it was lost while this consumer opened it",
            ));
        }
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
            // Bounded in bytes too: a pull larger than the server's per-client pending limit gets this
            // connection cut as a slow consumer, and messages in flight are lost to it.
            .max_bytes_per_batch(self.pull_bytes.load(std::sync::atomic::Ordering::Relaxed))
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await
            .map(|messages| (messages, position))
            .map_err(|err| Error::transport(format!("reading stream {stream_name}"), err))
    }

    /// After broker data loss: the stored position refers to messages the stream no longer holds, so it is
    /// reset to the start of the stream the server holds now (every node does the same, so all apply the new
    /// stream from its first message), then the new identity is remembered. A failure anywhere before the
    /// identity is remembered only means the next open resets again, which re-applies harmlessly.
    async fn reset_position(
        &self,
        stream_name: &str,
        reason: &str,
        position: u64,
        current: StreamIdentity,
    ) -> Result<()> {
        let shard = self.shard;
        let new_event =
            self.health
                .record_loss(stream_name, Some(shard), reason, Some(current.created_ns));
        tracing::error!(
            stream = %stream_name,
            shard,
            stored_position = position,
            stream_last_seq = current.last_seq,
            reason,
            new_event,
            "broker data loss on stream {stream_name}: {reason}; this node's position is reset to the start of the \
             stream the server holds now. Rows that only the lost messages carried stay missing on nodes that had \
             not applied them until they are published again"
        );
        ask(&self.db, |reply| Command::ResetPosition {
            shard,
            seq: 0,
            reply,
        })
        .await?;
        let now = ask(&self.db, |reply| Command::Position { shard, reply }).await?;
        if now != 0 {
            return Err(Error::Internal(format!(
                "the position of shard {shard} is still {now} after its reset; retrying"
            )));
        }
        self.positions.send_modify(|positions| {
            positions.insert(shard, 0);
        });
        if let Some(progress) = &self.progress {
            // Sequences acknowledged by the lost stream are meaningless now; what this node published since
            // is at most the new stream's last sequence, so a token asks for that: all of it, and no more
            // than exists.
            progress.send_modify(|progress| {
                if let Some(seq) = progress.shard_seqs.get_mut(&shard) {
                    *seq = current.last_seq;
                }
            });
        }
        self.health.mark_position_reset(stream_name);
        // Before the new identity is remembered: a failed republish is retried with the next detection.
        self.republish_after_broker_loss(stream_name).await?;
        self.health.remember(stream_name, current);
        Ok(())
    }

    /// The repair after broker data loss: the stream lost messages that carried rows some nodes may not
    /// have applied, so this node publishes every row of the shard it holds again, with its stored versions
    /// (`publish::republish`); LWW on every node converges on the newest. Every node does the same when it
    /// notices the loss (a node that was down, at its next start).
    async fn republish_after_broker_loss(&self, stream_name: &str) -> Result<()> {
        let shard = self.shard;
        let rows = ask(&self.db, |reply| Command::Republish { shard, reply }).await?;
        info!(
            stream = %stream_name,
            shard,
            rows,
            "republished this node's rows after broker data loss"
        );
        self.health.mark_republished(stream_name, rows);
        Ok(())
    }

    /// Halves the pull size (a dropped connection usually means the server cut a slow consumer).
    fn shrink_pulls(&self) -> usize {
        let ordering = std::sync::atomic::Ordering::Relaxed;
        let floor = min_pull_bytes(self.js.client().server_info().max_payload);
        let smaller = (self.pull_bytes.load(ordering) / 2).max(floor);
        self.pull_bytes.store(smaller, ordering);
        smaller
    }

    /// After enough healthy batches, a shrunken pull size grows back toward the maximum.
    fn grow_pulls(&self, healthy_batches: &mut u32) {
        *healthy_batches += 1;
        if *healthy_batches < GROW_AFTER_BATCHES {
            return;
        }
        *healthy_batches = 0;
        let ordering = std::sync::atomic::Ordering::Relaxed;
        let bigger = (self.pull_bytes.load(ordering) * 2).min(MAX_PULL_BYTES);
        self.pull_bytes.store(bigger, ordering);
    }

    /// True when no sequence in `from..to` is in the stream any more (deleted), so skipping them loses nothing.
    /// Checks at most a few thousand; a larger hole is treated as lost in transit (the consumer restarts).
    async fn absent_from_stream(&self, from: u64, to: u64) -> bool {
        if to.saturating_sub(from) > 4096 {
            return false;
        }
        let Ok(stream) = self.js.get_stream(self.names.stream(self.shard)).await else {
            return false;
        };
        for seq in from..to {
            match stream.get_raw_message(seq).await {
                Err(err)
                    if err.kind()
                        == async_nats::jetstream::stream::RawMessageErrorKind::NoMessageFound => {}
                _ => return false,
            }
        }
        true
    }

    /// The stream's first sequence (what retention has kept), if NATS answers.
    async fn first_sequence(&self) -> Option<u64> {
        let stream = self
            .js
            .get_stream(self.names.stream(self.shard))
            .await
            .ok()?;
        Some(stream.cached_info().state.first_sequence)
    }

    async fn consume(&self, shutdown: &mut watch::Receiver<bool>) -> Exit {
        let (mut messages, position) = match self.open_messages().await {
            Ok(opened) => opened,
            Err(Error::Closed) => return Exit::Shutdown,
            Err(err) => return Exit::Restart(err.to_string()),
        };
        let mut disconnects = self.disconnects.clone();
        disconnects.mark_unchanged();
        let mut next_expected = position + 1;
        let mut healthy_batches = 0u32;
        loop {
            let first = tokio::select! {
                next = messages.next() => next,
                _ = shutdown.changed() => return Exit::Shutdown,
                // A dropped connection (perhaps cut as a slow consumer): restart with smaller pulls.
                Ok(()) = disconnects.changed() => return Exit::Restart("NATS connection dropped".into()),
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
            // Sequences must be contiguous: a message missing in the middle (lost with a dropped
            // connection) must never be acknowledged past. Apply up to the gap, then start over from the
            // stored position; only retention may explain a gap.
            let mut incoming: Vec<Incoming> = Vec::with_capacity(batch.len());
            let mut gap = None;
            for message in &batch {
                let Ok(info) = message.info() else { continue };
                let seq = info.stream_sequence;
                if seq > next_expected {
                    let trimmed = self
                        .first_sequence()
                        .await
                        .is_some_and(|first| first >= seq);
                    if !trimmed {
                        if self.absent_from_stream(next_expected, seq).await {
                            // Deleted from the stream on purpose (not retention, not lost in transit).
                            warn!(
                                shard = self.shard,
                                from = next_expected,
                                to = seq,
                                "messages deleted from the stream were skipped"
                            );
                            next_expected = seq;
                        } else {
                            gap = Some((next_expected, seq));
                            break;
                        }
                    }
                }
                if seq > next_expected {
                    self.counters
                        .behind_retention
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                    tracing::error!(
                        shard = self.shard,
                        missing_from = next_expected,
                        resumes_at = seq,
                        "messages expired from the stream before this node applied them: rows changed in the \
                         gap stay stale until they change again; restart the node to restore a snapshot"
                    );
                }
                next_expected = next_expected.max(seq + 1);
                incoming.push(self.incoming(
                    seq,
                    message.payload.clone(),
                    message.headers.as_ref(),
                    false,
                ));
            }
            let last_applied = incoming.last().map(|m| m.seq);
            if incoming.is_empty() {
                if let Some((expected, got)) = gap {
                    return Exit::Restart(format!("sequence gap: expected {expected}, got {got}"));
                }
                continue;
            }
            self.health.saw_last_seq(
                &self.names.stream(self.shard),
                next_expected.saturating_sub(1),
            );
            // Shared with the database thread: a retried apply hands over the same batch, not a copy.
            let incoming: std::sync::Arc<[Incoming]> = incoming.into();
            let outcome = match self.apply_with_retry(&incoming, shutdown).await {
                Some(outcome) => outcome,
                None => return Exit::Shutdown,
            };
            self.park(&outcome, &incoming).await;
            if gap.is_none() {
                self.grow_pulls(&mut healthy_batches);
            }
            // Acknowledge (AckPolicy::All) only what was applied: never past a gap.
            if let Some(last) = batch
                .iter()
                .find(|m| m.info().ok().map(|i| i.stream_sequence) == last_applied)
            {
                // A lost ack only means a redelivery, which the stored position makes harmless.
                if let Err(err) = last.ack().await {
                    debug!(error = %err, "ack failed");
                }
            }
            if let Some((expected, got)) = gap {
                warn!(shard = self.shard, expected, got, "gap in the stream's sequence (lost in transit); restarting from the stored position with smaller pulls");
                return Exit::Restart(format!("sequence gap: expected {expected}, got {got}"));
            }
        }
    }

    /// A message of this shard as the database thread takes it: its publisher from the message id, and its
    /// signature checked (`[signing]`) before anything is decoded, so a refused message never reaches a table.
    fn incoming(
        &self,
        seq: u64,
        payload: bytes::Bytes,
        headers: Option<&async_nats::HeaderMap>,
        retry: bool,
    ) -> Incoming {
        let header = |name: &str| {
            headers
                .and_then(|headers| headers.get(name))
                .map(|value| value.as_str())
        };
        let message_id = header(async_nats::header::NATS_MESSAGE_ID.as_ref());
        let published_by = message_id.and_then(PublishedBy::from_message_id);
        let refused = self.keys.as_ref().and_then(|keys| {
            keys.verify(
                message_id.unwrap_or_default(),
                &payload,
                header(crate::log::signing::SIGNATURE_HEADER),
            )
            .err()
            .map(|err| err.to_string())
        });
        Incoming {
            shard: self.shard,
            seq,
            payload,
            published_by,
            refused,
            retry,
        }
    }

    /// Tries this shard's dead letters again, once per start (ADR 0021): a message refused by an older
    /// library (a newer message format) or by the signing keys of the time applies once the node can read
    /// and trust it, and its record goes; one still refused keeps its record. Each is read back from the
    /// stream by its sequence, if the stream still holds it and it is the message that was refused: a stream
    /// created again since then holds other messages under the same numbers, stored later than the refusal.
    async fn retry_dead_letters(&self, shutdown: &mut watch::Receiver<bool>) -> Result<()> {
        /// Most dead letters tried per start (the oldest first).
        const MOST: usize = 10_000;
        /// Allowance for the server's clock running ahead of this node's.
        const CLOCK_ALLOWANCE_MS: u64 = 60_000;
        let shard = self.shard;
        let dead = ask(&self.db, |reply| Command::DeadLetters {
            shard,
            limit: MOST,
            reply,
        })
        .await?;
        if dead.is_empty() {
            return Ok(());
        }
        let stream_name = self.names.stream(shard);
        let stream = self
            .js
            .get_stream(&stream_name)
            .await
            .map_err(|err| Error::transport(format!("opening stream {stream_name}"), err))?;
        let mut batch: Vec<Incoming> = Vec::new();
        let mut bytes = 0;
        let (mut tried, mut recovered, mut gone) = (0u64, 0u64, 0u64);
        for (index, letter) in dead.iter().enumerate() {
            match stream.get_raw_message(letter.seq).await {
                Ok(message) => {
                    let stored_ms =
                        u64::try_from(message.time.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
                    if stored_ms > letter.at_ms + CLOCK_ALLOWANCE_MS {
                        gone += 1; // Another message: the stream was created again since.
                    } else {
                        bytes += message.payload.len();
                        batch.push(self.incoming(
                            letter.seq,
                            message.payload,
                            Some(&message.headers),
                            true,
                        ));
                    }
                }
                Err(err)
                    if err.kind()
                        == async_nats::jetstream::stream::RawMessageErrorKind::NoMessageFound =>
                {
                    gone += 1;
                }
                Err(err) => {
                    return Err(Error::transport(
                        format!("reading dead letter {} of stream {stream_name}", letter.seq),
                        err,
                    ))
                }
            }
            let last = index + 1 == dead.len();
            if !batch.is_empty()
                && (last || batch.len() >= self.max_batch_messages || bytes >= MAX_BATCH_BYTES)
            {
                tried += batch.len() as u64;
                let messages: Arc<[Incoming]> = std::mem::take(&mut batch).into();
                bytes = 0;
                match self.apply_with_retry(&messages, shutdown).await {
                    Some(outcome) => recovered += outcome.recovered_dead_letters,
                    None => return Err(Error::Closed),
                }
            }
        }
        if recovered > 0 {
            info!(
                shard,
                recovered,
                still_refused = tried - recovered,
                "dead letters applied on a later try"
            );
        }
        if tried > recovered || gone > 0 {
            warn!(
                shard,
                still_refused = tried - recovered,
                no_longer_in_the_stream = gone,
                "dead letters kept: their messages are on the dead-letter stream, with the reason"
            );
        }
        Ok(())
    }

    async fn apply_with_retry(
        &self,
        incoming: &std::sync::Arc<[Incoming]>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Option<ApplyOutcome> {
        let mut backoff = Backoff::new(Duration::from_millis(20), NATS_MAX_PAUSE);
        loop {
            let messages = incoming.clone();
            match ask(&self.db, |reply| Command::Apply { messages, reply }).await {
                Ok(outcome) => {
                    self.health.apply_failing(self.shard, false);
                    return Some(outcome);
                }
                Err(Error::Closed) => return None,
                Err(err) => {
                    self.health.apply_failing(self.shard, true);
                    self.counters.record_error(&err);
                    warn!(shard = self.shard, error = %err, "apply failed; will retry");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff.next_pause()) => {}
                        _ = shutdown.changed() => return None,
                    }
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
