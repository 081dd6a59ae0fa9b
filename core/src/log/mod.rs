//! Change records and their wire codec. Pure: no I/O.

pub mod codec;
pub mod publisher;
pub mod record;
pub mod signing;
mod wire;

pub use codec::{batch_node_id, decode, encode, encode_as, DecodeError};
pub use publisher::{Origin, PublishedBy, Publisher};
pub use record::{
    image_hash, pk_from_key, pk_key, shard_of, value_hash, Batch, Op, RowChange, TableDropped,
    Value,
};
