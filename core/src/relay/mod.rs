//! Relay: the async tasks between the database thread and JetStream. The publisher sends the outbox and
//! has the database thread delete an entry only after its acknowledgement; one consumer per shard reads
//! the shard's stream from the stored position and hands batches to the database thread to apply.
//!
//! They sit above `db_thread` (they send it `Command`s), which sits above the database-side halves in
//! `publish/` (stamping) and `apply/` (merging): the imports point one way.

pub(crate) mod consumer;
pub(crate) mod publisher;
