//! Plain data handed to Swift: read-your-writes tokens and snapshot manifests (`status()`'s records are
//! expanded from the core's list in `records.rs`).

use std::collections::{BTreeMap, HashMap};

use crate::errors::NativeError;

/// A read-your-writes token: per shard, the stream position a node must have applied. Its text form
/// (`"0:15,1:20"`) travels between processes and languages.
#[derive(Debug, Clone, Default, PartialEq, Eq, uniffi::Record)]
pub struct Token {
    pub positions: HashMap<u32, u64>,
}

impl From<harmonylite::Token> for Token {
    fn from(token: harmonylite::Token) -> Token {
        Token {
            positions: token.positions.into_iter().collect(),
        }
    }
}

impl From<Token> for harmonylite::Token {
    fn from(token: Token) -> harmonylite::Token {
        harmonylite::Token {
            positions: token.positions.into_iter().collect::<BTreeMap<_, _>>(),
        }
    }
}

/// The token's text form, `shard:seq,shard:seq`.
#[uniffi::export(name = "native_token_to_string")]
pub fn token_to_string(token: Token) -> String {
    harmonylite::Token::from(token).to_string()
}

/// Parses a token's text form; an error names the `token` key.
#[uniffi::export(name = "native_token_from_string")]
pub fn token_from_string(text: String) -> Result<Token, NativeError> {
    Ok(text.parse::<harmonylite::Token>()?.into())
}

/// A token that waits for both.
#[uniffi::export(name = "native_token_merge")]
pub fn token_merge(a: Token, b: Token) -> Token {
    let mut merged = harmonylite::Token::from(a);
    merged.merge(&b.into());
    merged.into()
}

/// A saved snapshot: where it is in the store and which stream positions and clock its data covers.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct SnapshotManifest {
    pub format: u32,
    /// Key of the compressed database in the store.
    pub object: String,
    pub created_ms: u64,
    /// The node that made it.
    pub node_id: u64,
    /// The creating node's clock when it was taken.
    pub hlc: u64,
    /// Stream position per shard that the data includes.
    pub positions: HashMap<u32, u64>,
    pub schema_hash: String,
    /// Compressed size and its SHA-256 (hex).
    pub bytes: u64,
    pub sha256: String,
    pub raw_bytes: u64,
    /// With a cluster key (`[signing]`): the manifest's signature.
    pub signature: Option<String>,
}

impl From<harmonylite::snapshot::Manifest> for SnapshotManifest {
    fn from(m: harmonylite::snapshot::Manifest) -> SnapshotManifest {
        // Destructured without `..`: a field added to the core's manifest fails to compile here until this
        // record has it.
        let harmonylite::snapshot::Manifest {
            format,
            object,
            created_ms,
            node_id,
            hlc,
            positions,
            schema_hash,
            bytes,
            sha256,
            raw_bytes,
            signature,
        } = m;
        SnapshotManifest {
            format,
            object,
            created_ms,
            node_id,
            hlc,
            positions: positions.into_iter().collect(),
            schema_hash,
            bytes,
            sha256,
            raw_bytes,
            signature,
        }
    }
}
