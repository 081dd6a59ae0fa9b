//! Publish: stamping captured changes into the outbox (database side), and the publisher task that sends
//! the outbox to JetStream and deletes an entry only after its acknowledgement.

pub mod publisher;
pub mod republish;
pub mod stamp;

/// One outbox row: a ready-to-send message for one shard.
#[derive(Debug, Clone)]
pub struct OutboxEntry {
    pub id: i64,
    pub shard: u32,
    pub rows: u32,
    /// Unique per node and message, for JetStream de-duplication across retries and restarts.
    pub msg_id: String,
    pub payload: bytes::Bytes,
}
