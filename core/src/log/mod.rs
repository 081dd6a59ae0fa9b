//! Change records and their wire codec. Pure: no I/O.

pub mod codec;
pub mod record;

pub use codec::{decode, encode, DecodeError};
pub use record::{pk_key, shard_of, Batch, Op, RowChange, Value};
