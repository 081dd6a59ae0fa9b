//! Apply: the pure merge rules, and the applier that writes remote changes under them.

pub mod applier;
pub(crate) mod consumer;
pub mod merge;
pub mod transaction;
