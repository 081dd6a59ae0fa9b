//! Snapshots: create, store, restore. (In progress.)

pub mod store;
