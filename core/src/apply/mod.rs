//! Apply, database side: the pure merge rules, and the applier that writes remote changes under them in
//! one transaction per batch. The task that reads the streams is `relay::consumer`.

pub mod applier;
pub mod merge;
pub mod transaction;
