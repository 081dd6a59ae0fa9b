//! Publish, database side: stamping captured changes into the outbox, and republishing rows a stream lost.
//! The task that sends the outbox to JetStream is `relay::publisher`.

pub mod republish;
pub mod stamp;

use crate::clock::Hlc;
use crate::error::Result;
use crate::log::Publisher;
use crate::state::outbox;

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

impl OutboxEntry {
    /// Stores an encoded message in the outbox, in the caller's transaction, and returns it ready to send.
    /// `newest` is the newest clock in the message; with the outbox id it makes the message id, and it is
    /// stored beside the payload so the id is the same after a restart without decoding the payload.
    pub fn queue(
        conn: &rusqlite::Connection,
        publisher: Publisher,
        shard: u32,
        rows: u32,
        newest: Hlc,
        payload: Vec<u8>,
    ) -> Result<OutboxEntry> {
        let id = outbox::insert(conn, shard, rows, Some(newest), &payload)?;
        Ok(OutboxEntry {
            id,
            shard,
            rows,
            msg_id: publisher.message_id(id, newest),
            payload: payload.into(),
        })
    }
}
