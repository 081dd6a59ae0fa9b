//! Snapshots: create, store, restore. (In progress.)

pub mod s3;
pub mod store;
