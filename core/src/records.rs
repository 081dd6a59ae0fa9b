//! The public records a replica reports (`status()` and its parts, conflict-log entries, change events)
//! and their enums, declared once in [`records!`](crate::records): this crate expands that list into its
//! own structs and enums (below), and each binding expands the same list into its language's records and
//! the conversions from these (ADR 0019). A field added here appears in every binding, or stops a binding
//! compiling until that binding can convert its type.
//!
//! Every other module reaches these types where they always were (`status::Status`,
//! `state::conflicts::Conflict`, `events::ChangeEvent`, `snapshot::SnapshotProgress`, ...).

use serde::{Deserialize, Serialize};

pub use crate::clock::Hlc;
use crate::log::Value;

/// A node's id (all 64 bits count: bindings whose numbers are doubles keep it exact).
pub type NodeId = u64;
/// A position in a shard's stream (exact, like [`NodeId`]).
pub type Seq = u64;
/// What a paused table waits for, one of `schema`, `constraint`, `invalid`, `clock`, `queued`.
pub type PauseKind = String;

/// The list of the public records, for bindings: `harmonylite::records!(my_macro)` calls `my_macro!` once
/// per record or enum, in one of two forms:
///
/// ```text
/// $(#[doc = "..."])*
/// enum Name (path::of::core::Name) [core derives] {
///     $( $(#[doc = "..."])* Variant = "wire name", )*
/// }
/// $(#[doc = "..."])*
/// record Name (path::of::core::Name) [core derives] {
///     $( $(#[doc = "..."])* field: [Type] $(serde(...))?, )*
/// }
/// ```
///
/// A field's type is written in brackets, as tokens a binding's `macro_rules!` can match (a `ty` fragment
/// cannot be matched again): `u32`, `u64` (a count or a time in ms), `i64`, `bool`, `String`, [`NodeId`],
/// [`Seq`], [`Hlc`], [`PauseKind`], `Value`, the records and enums of this list, and `Option<..>`/`Vec<..>`
/// of these; `Vec<(String, Value)>` is a row's column values. `serde(...)` is for this crate's serde
/// derive only. The core path names the type to convert from; every field is public.
///
/// Docs are written as `#[doc = "..."]`, not `///`: a `///` inside a macro reaches the expansions as a raw
/// string (`r"..."`), which napi-rs copies into `index.d.ts` as it is written.
#[macro_export]
macro_rules! records {
    ($cb:ident) => {
        $cb! {
            #[doc = " The NATS connection's state."]
            enum ConnectionState ($crate::records::ConnectionState)
                [Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize] {
                Connected = "connected",
                Disconnected = "disconnected",
                Connecting = "connecting",
            }
        }
        $cb! {
            #[doc = " Whether a handle runs the database's replicator or forwards to the process that does (ADR 0010)."]
            enum ReplicaRole ($crate::records::ReplicaRole)
                [Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize] {
                #[doc = " This handle runs the replicator (capture, publishing, applying, the embedded nats-server)."]
                Active = "active",
                #[doc = " Another process (or another open in this process) runs it; this handle forwards to it and"]
                #[doc = " takes over when it goes away."]
                Attached = "attached",
            }
        }
        $cb! {
            #[doc = " One shard (stream) in a status: positions applied here and published from here, and the lag."]
            record ShardStatus ($crate::records::ShardStatus) [Debug, Clone, Serialize, Deserialize] {
                #[doc = " The shard number."]
                shard: [u32],
                #[doc = " The stream position applied on this node."]
                applied_seq: [Seq],
                #[doc = " The highest stream position of a message this node published (since open)."]
                published_seq: [Seq],
                #[doc = " The last position in the shard's stream (absent when NATS cannot be asked right now)."]
                stream_last_seq: [Option<Seq>],
                #[doc = " Messages in the stream this node has not applied yet (absent when unknown)."]
                lag_messages: [Option<u64>],
                #[doc = " How long this shard has had messages waiting without applying any (its apply failing, or"]
                #[doc = " its position not moving while the stream holds more); absent while it keeps up."]
                stalled_ms: [Option<u64>],
            }
        }
        $cb! {
            #[doc = " A table whose incoming changes wait."]
            record PausedTable ($crate::records::PausedTable) [Debug, Clone, Serialize, Deserialize] {
                #[doc = " The table."]
                table: [String],
                #[doc = " Changes waiting to be applied."]
                waiting_changes: [u64],
                #[doc = " Why the oldest waiting change waits, in words."]
                reason: [String],
                #[doc = " What it waits for: a table or column this node lacks (`schema`), a local UNIQUE / NOT NULL"]
                #[doc = " / CHECK constraint that refuses it until the blocking data changes (`constraint`), a value"]
                #[doc = " this schema cannot hold (`invalid`), a stamp ahead of this node's clock (`clock`), an"]
                #[doc = " earlier change of its row (`queued`)."]
                kind: [PauseKind],
            }
        }
        $cb! {
            #[doc = " JetStream lost data this node relied on, as this node detected it. Rows that only the lost"]
            #[doc = " messages carried are missing on the nodes that had not applied them, until every node publishes"]
            #[doc = " its rows again."]
            record BrokerDataLoss ($crate::records::BrokerDataLoss)
                [Debug, Clone, PartialEq, Eq, Serialize, Deserialize] {
                #[doc = " The stream that lost data."]
                stream: [String],
                #[doc = " The shard whose consumer detected it (absent when the stream keeper did)."]
                shard: [Option<u32>],
                #[doc = " What was seen, in words."]
                reason: [String],
                #[doc = " When (milliseconds since the epoch)."]
                detected_at_ms: [u64],
                #[doc = " This node's position in the shard was reset to the start of the new stream."]
                position_reset: [bool],
                #[doc = " Rows this node published again to repair the loss (absent until it has)."]
                republished_rows: [Option<u64>],
            }
        }
        $cb! {
            #[doc = " A table whose checksum differs from a peer's at identical positions (the divergence check,"]
            #[doc = " ADR 0017)."]
            record Divergence ($crate::records::Divergence)
                [Debug, Clone, PartialEq, Eq, Serialize, Deserialize] {
                #[doc = " The table."]
                table: [String],
                #[doc = " The node whose checksum differs from this node's."]
                peer_node_id: [NodeId],
                #[doc = " When this node first found the difference (milliseconds since the epoch)."]
                since_ms: [u64],
                #[doc = " Rows of the table here, at the latest comparison that found the difference."]
                rows_here: [u64],
                #[doc = " Rows of the table at the peer, then."]
                rows_at_peer: [u64],
                #[doc = " When this node last published the table's rows again to repair it (absent: not yet)."]
                republished_at_ms: [Option<u64>],
            }
        }
        $cb! {
            #[doc = " Progress of a snapshot being saved or restored."]
            record SnapshotProgress ($crate::records::SnapshotProgress)
                [Debug, Clone, Default, PartialEq, Serialize, Deserialize] {
                #[doc = " `idle`, `creating`, `uploading`, `downloading`, `verifying` or `installing`."]
                phase: [String],
                #[doc = " Bytes done in this phase."]
                bytes_done: [u64],
                #[doc = " Bytes this phase handles."]
                bytes_total: [u64],
                #[doc = " The newest snapshot this node restored (manifest object key), if any."]
                restored: [Option<String>],
                #[doc = " The newest snapshot this node saved, if any."]
                saved: [Option<String>],
                #[doc = " When it was saved (milliseconds since the epoch)."]
                saved_at_ms: [Option<u64>],
            }
        }
        $cb! {
            #[doc = " What a replica is doing: its role, connection, streams, per-shard positions, counters and"]
            #[doc = " snapshot progress."]
            record Status ($crate::records::Status) [Debug, Clone, Serialize, Deserialize] {
                #[doc = " This node's id."]
                node_id: [NodeId],
                #[doc = " `active`: this process runs the replicator; `attached`: it forwards to the process that"]
                #[doc = " does (ADR 0010)."]
                role: [ReplicaRole],
                #[doc = " The process that runs this database's replicator (this one when `role` is `active`)."]
                replicator_pid: [u32],
                #[doc = " Handles (other processes, or other opens) attached to that replicator."]
                attached_handles: [u32],
                #[doc = " The replicated database file."]
                db_path: [String],
                #[doc = " The NATS connection."]
                connection: [ConnectionState],
                #[doc = " The JetStream streams exist (created or checked since open, and none found missing since)."]
                streams_ready: [bool],
                #[doc = " Streams this node expects that the server does not have (lost, or not created yet); the"]
                #[doc = " stream keeper is creating them again."]
                missing_streams: [Vec<String>],
                #[doc = " How long NATS has been unreachable, while it is."]
                nats_unreachable_ms: [Option<u64>],
                #[doc = " The NATS servers in use."]
                nats_urls: [Vec<String>],
                #[doc = " True when this replica runs its own nats-server."]
                embedded_server: [bool],
                #[doc = " This node sends its changes (false: a read replica)."]
                publish: [bool],
                #[doc = " This node applies what it receives."]
                replicate: [bool],
                #[doc = " Tables with capture installed."]
                replicated_tables: [Vec<String>],
                #[doc = " Per shard (stream): positions applied here and published from here, and the lag."]
                shards: [Vec<ShardStatus>],
                #[doc = " Captured local changes not yet stamped."]
                pending_changes: [u64],
                #[doc = " Stamped local messages not yet acknowledged by JetStream."]
                unsent_messages: [u64],
                #[doc = " Rows in those messages."]
                unsent_rows: [u64],
                #[doc = " Messages this node published since open."]
                published_messages: [u64],
                #[doc = " Rows in those messages."]
                published_rows: [u64],
                #[doc = " Rows applied from other nodes since open."]
                applied_rows: [u64],
                #[doc = " Received changes that lost to a newer version already here."]
                skipped_rows: [u64],
                #[doc = " Received changes waiting (see `paused_tables`)."]
                deferred_rows: [u64],
                #[doc = " Entries in the conflict log (bounded; see `conflicts()`)."]
                conflicts: [u64],
                #[doc = " Conflicts recorded since open: merge losers, moved keys, constraint resolutions."]
                conflicts_recorded: [u64],
                #[doc = " Rows this node moved to a fresh key since open (another node created a different row"]
                #[doc = " under the same auto-assigned key first)."]
                moved_keys: [u64],
                #[doc = " Messages that could not be decoded, parked in the dead-letter stream."]
                dead_lettered: [u64],
                #[doc = " Local changes larger than the server's max payload, never sent."]
                rejected_local: [u64],
                #[doc = " Tables whose incoming changes wait, and why."]
                paused_tables: [Vec<PausedTable>],
                #[doc = " When this node last published (milliseconds since the epoch)."]
                last_publish_ms: [Option<u64>],
                #[doc = " When this node last applied a batch (milliseconds since the epoch)."]
                last_apply_ms: [Option<u64>],
                #[doc = " Errors since open."]
                errors: [u64],
                #[doc = " The last of them."]
                last_error: [Option<String>],
                #[doc = " A shard's position is older than the first message its stream still holds: rows changed"]
                #[doc = " in the gap are stale until they change again. Restart the node to restore a snapshot."]
                behind_retention: [bool],
                #[doc = " JetStream lost messages this node relied on (a stream deleted or recreated, or holding"]
                #[doc = " less than this node had applied). Positions were reset to the new stream; rows that only"]
                #[doc = " the lost messages carried are missing on the nodes that had not applied them until every"]
                #[doc = " node has published its rows again (`broker_data_loss[].republished_rows`); this stays"]
                #[doc = " true for the rest of the run, as a record."]
                broker_data_loss_detected: [bool],
                #[doc = " How many such losses were detected since open (one per lost stream incarnation)."]
                broker_data_loss_events: [u64],
                #[doc = " The losses detected, newest last."]
                broker_data_loss: [Vec<BrokerDataLoss>],
                #[doc = " Tables whose checksum differs from a peer's although both nodes had applied the same"]
                #[doc = " changes (identical positions on every shard, nothing unsent): the divergence check (ADR"]
                #[doc = " 0017). This node republishes such a table's rows (at most once per"]
                #[doc = " `divergence_check.repair_interval`); an entry stays until a later comparison at"]
                #[doc = " identical positions matches."]
                divergent_tables: [Vec<Divergence>] serde(default),
                #[doc = " Table checksums compared with a peer's at identical positions since open: zero while the"]
                #[doc = " check is off, before the first round, or while no peer has been at this node's positions."]
                divergence_comparisons: [u64] serde(default),
                #[doc = " Errors counted in the last minute (`errors` counts since open)."]
                errors_last_minute: [u64],
                #[doc = " Snapshot save/restore progress."]
                snapshot: [SnapshotProgress],
                #[doc = " Milliseconds since open."]
                uptime_ms: [u64],
            }
        }
        $cb! {
            #[doc = " What a conflict-log entry records."]
            enum ConflictKind ($crate::records::ConflictKind)
                [Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize] {
                #[doc = " A received change lost to newer values for some columns (`loser`: the received values)."]
                ChangeLost = "change_lost",
                #[doc = " A received change replaced values its writer had not seen (`loser`: the values replaced)."]
                ValuesOverwritten = "values_overwritten",
                #[doc = " A delete removed a row holding edits its writer had not seen, or an edit arrived for a row"]
                #[doc = " deleted concurrently (the delete wins; `loser`: the edit)."]
                DeletedWithEdits = "deleted_with_edits",
                #[doc = " Two nodes created different rows under one auto-assigned key; the later one was moved (by"]
                #[doc = " the node that created it) to `moved_to`."]
                KeyMoved = "key_moved",
                #[doc = " A received change conflicts with a local UNIQUE / NOT NULL / CHECK constraint; the row"]
                #[doc = " created first keeps the value and the other waits (parked) until the blocking data changes."]
                Constraint = "constraint",
                #[doc = " Changes of a table this node does not have, from a node that has dropped the table since:"]
                #[doc = " they could only wait forever, so they are discarded (ADR 0016). One entry per table and"]
                #[doc = " node, `pk` empty; `loser`: that node and the stamp of its drop; `detail`: how many changes."]
                TableDropped = "table_dropped",
            }
        }
        $cb! {
            #[doc = " One side of a conflict: who wrote it, when, and the values involved."]
            record ConflictSide ($crate::records::ConflictSide)
                [Debug, Clone, PartialEq, Serialize, Deserialize] {
                #[doc = " The node that wrote it."]
                node: [NodeId],
                #[doc = " Its hybrid-logical-clock stamp."]
                hlc: [Hlc],
                #[doc = " Column name to value."]
                values: [Vec<(String, Value)>],
            }
        }
        $cb! {
            #[doc = " An entry of the conflict log: what a merge did not keep as it came (the loser of a concurrent"]
            #[doc = " edit, a row moved off a colliding key, a change a local constraint refused), with both sides."]
            record Conflict ($crate::records::Conflict) [Debug, Clone, PartialEq, Serialize, Deserialize] {
                #[doc = " Position in this node's log (0 until stored; pass the last one seen as `after`)."]
                id: [i64],
                #[doc = " When it was recorded, milliseconds since the epoch."]
                at_ms: [u64],
                #[doc = " The table the row belongs to."]
                table: [String],
                #[doc = " The row's primary-key values, in key order."]
                pk: [Vec<Value>],
                #[doc = " What happened."]
                kind: [ConflictKind],
                #[doc = " The columns involved."]
                columns: [Vec<String>],
                #[doc = " The side that was kept."]
                winner: [Option<ConflictSide>],
                #[doc = " The side that was not."]
                loser: [Option<ConflictSide>],
                #[doc = " The key the losing row now lives under (key moves)."]
                moved_to: [Option<Vec<Value>>],
                #[doc = " What happened, in words."]
                detail: [String],
            }
        }
        $cb! {
            #[doc = " What happened to a row."]
            enum ChangeOp ($crate::records::ChangeOp)
                [Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize] {
                Insert = "insert",
                Update = "update",
                Delete = "delete",
            }
        }
        $cb! {
            #[doc = " One row change, made on this node (`local`, reported once it is stamped for publishing) or"]
            #[doc = " applied from another node."]
            record ChangeEvent ($crate::records::ChangeEvent)
                [Debug, Clone, PartialEq, Serialize, Deserialize] {
                #[doc = " The table the row belongs to."]
                table: [String],
                #[doc = " What happened to the row."]
                op: [ChangeOp],
                #[doc = " The row's primary-key values, in key order."]
                pk: [Vec<Value>],
                #[doc = " The node that made the change."]
                origin_node: [NodeId],
                #[doc = " The change's hybrid-logical-clock stamp (milliseconds since the epoch shifted left by 16"]
                #[doc = " bits, plus a counter)."]
                hlc: [Hlc],
                #[doc = " True when the change was made on this node."]
                local: [bool],
            }
        }
    };
}

/// The conversion trait a binding's records are built with, declared in the binding crate by
/// `harmonylite::from_core_conversions!(u32, i64, ...)`: `trait FromCore<C> { fn from_core(core: C) -> Self }`,
/// the identity conversion for each type listed, and the element-wise conversions of `Option` and `Vec`.
/// The binding adds its own conversions (a node id to a `bigint`, a core value to its SQL value type).
///
/// A macro, not a trait of this crate: a binding's conversions between types it does not own (`u64` to
/// `i64`, `u64` to napi's `BigInt`) would break Rust's orphan rule under a foreign trait.
#[macro_export]
macro_rules! from_core_conversions {
    ($($identity:ty),* $(,)?) => {
        /// Converts a core record field's value into this binding's type for it.
        pub(crate) trait FromCore<C> {
            fn from_core(core: C) -> Self;
        }

        $(impl FromCore<$identity> for $identity {
            fn from_core(core: $identity) -> $identity {
                core
            }
        })*

        impl<C, T: FromCore<C>> FromCore<Option<C>> for Option<T> {
            fn from_core(core: Option<C>) -> Option<T> {
                core.map(T::from_core)
            }
        }

        impl<C, T: FromCore<C>> FromCore<Vec<C>> for Vec<T> {
            fn from_core(core: Vec<C>) -> Vec<T> {
                core.into_iter().map(T::from_core).collect()
            }
        }
    };
}

/// A binding record's conversions from the core record it mirrors, field by field with the binding's
/// `FromCore` (see [`from_core_conversions!`](crate::from_core_conversions)):
/// `harmonylite::from_core_record!(Status (harmonylite::Status) { node_id, shards, ... })`.
#[macro_export]
macro_rules! from_core_record {
    ($name:ident ($core:path) { $($field:ident),* $(,)? }) => {
        impl From<$core> for $name {
            fn from(core: $core) -> $name {
                $name {
                    $( $field: FromCore::from_core(core.$field), )*
                }
            }
        }

        impl FromCore<$core> for $name {
            fn from_core(core: $core) -> $name {
                core.into()
            }
        }
    };
}

/// This crate's expansion of the list: the structs and enums themselves.
macro_rules! core_record {
    (
        $(#[doc = $doc:literal])*
        enum $name:ident ($core:path) [$($derive:tt)*] {
            $( $(#[doc = $vdoc:literal])* $variant:ident = $wire:literal, )*
        }
    ) => {
        $(#[doc = $doc])*
        #[derive($($derive)*)]
        pub enum $name {
            $( $(#[doc = $vdoc])* #[serde(rename = $wire)] $variant, )*
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),*];

            /// The variant's stable name, shared with every binding (its serde name).
            pub fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $wire, )*
                }
            }
        }
    };
    (
        $(#[doc = $doc:literal])*
        record $name:ident ($core:path) [$($derive:tt)*] {
            $(
                $(#[doc = $fdoc:literal])*
                $field:ident : [$($ty:tt)*] $(serde($($serde:tt)*))?,
            )*
        }
    ) => {
        $(#[doc = $doc])*
        #[derive($($derive)*)]
        pub struct $name {
            $(
                $(#[doc = $fdoc])*
                $(#[serde($($serde)*)])?
                pub $field: $($ty)*,
            )*
        }
    };
}

records!(core_record);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enum_names_are_their_serde_names() {
        fn check<T: Serialize + Copy>(all: &[T], name: fn(T) -> &'static str) {
            for &variant in all {
                let json = serde_json::to_string(&variant).expect("serializes");
                assert_eq!(json, format!("\"{}\"", name(variant)));
            }
        }
        check(ConnectionState::ALL, ConnectionState::as_str);
        check(ReplicaRole::ALL, ReplicaRole::as_str);
        check(ConflictKind::ALL, ConflictKind::as_str);
        check(ChangeOp::ALL, ChangeOp::as_str);
    }
}
