//! The records a replica reports about itself: `status()`, its shards, its role, and the read-your-writes
//! token. Plain data, shared by the engine, the attach protocol, health and metrics.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A read-your-writes token: per shard, the stream position a node must have applied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    pub positions: BTreeMap<u32, u64>,
}

impl Token {
    /// Combines two tokens: waiting for the result waits for both.
    pub fn merge(&mut self, other: &Token) {
        for (shard, seq) in &other.positions {
            let entry = self.positions.entry(*shard).or_insert(0);
            *entry = (*entry).max(*seq);
        }
    }

    pub(crate) fn reached_by(&self, applied: &BTreeMap<u32, u64>) -> bool {
        self.positions
            .iter()
            .all(|(shard, seq)| applied.get(shard).copied().unwrap_or(0) >= *seq)
    }
}

/// Text form `shard:seq,shard:seq` so tokens can travel between processes and languages.
impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .positions
            .iter()
            .map(|(s, q)| format!("{s}:{q}"))
            .collect();
        f.write_str(&parts.join(","))
    }
}

impl FromStr for Token {
    type Err = Error;
    fn from_str(text: &str) -> Result<Token> {
        let mut positions = BTreeMap::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let parsed = part
                .split_once(':')
                .and_then(|(s, q)| Some((s.parse::<u32>().ok()?, q.parse::<u64>().ok()?)));
            let Some((shard, seq)) = parsed else {
                return Err(Error::config(
                    "token",
                    format!("`{text}` is not a token (shard:seq,...)"),
                ));
            };
            positions.insert(shard, seq);
        }
        Ok(Token { positions })
    }
}

// Declared in `records` (the list the bindings expand too).
pub use crate::records::{ConnectionState, PausedTable, ReplicaRole, ShardStatus, Status};

/// What has been published so far, for read-your-writes tokens.
#[derive(Debug, Clone, Default)]
pub struct PublishProgress {
    /// Every outbox id up to this one is acknowledged.
    pub acked_through: i64,
    /// Highest acknowledged stream sequence per shard.
    pub shard_seqs: BTreeMap<u32, u64>,
}
