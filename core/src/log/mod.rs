//! Change records and their wire codec. Pure: no I/O.

pub mod codec;
pub mod record;

pub use codec::{decode, encode, DecodeError};
pub use record::{
    image_hash, pk_from_key, pk_key, shard_of, value_hash, Batch, Op, RowChange, Value,
};
