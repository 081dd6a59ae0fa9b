//! Apply: the pure last-writer-wins rule, and the applier that writes remote changes.

pub mod applier;
pub(crate) mod consumer;
pub mod lww;
