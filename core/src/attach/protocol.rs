//! What travels on the attach socket: length-prefixed MessagePack frames (a 4-byte big-endian length, then
//! `rmp_serde` with field names). MessagePack rather than JSON lines because change events carry SQLite
//! values, and JSON cannot carry every REAL (±inf) or a BLOB as bytes (DESIGN invariant 8).
//!
//! The server speaks first (`Hello`); then the client sends numbered calls and the server sends replies (in
//! any order), applied positions whenever they move, and — once the client asked for them — change events.

use std::collections::BTreeMap;

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt as _};

use crate::error::Error;
use crate::events::ChangeEvent;
use crate::snapshot::Manifest;
use crate::state::conflicts::Conflict;
use crate::status::{Status, Token};

/// Raised whenever a frame changes shape. Both sides must also run the same library version.
pub(crate) const PROTOCOL: u32 = 2;
const MAX_FRAME: usize = 64 * 1024 * 1024;

/// The server's first frame: who runs the replicator, and what a client needs to answer locally.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Hello {
    pub protocol: u32,
    pub version: String,
    pub pid: u32,
    pub node_id: u64,
    pub nats_urls: Vec<String>,
    pub publish: bool,
    pub replicate: bool,
}

impl Hello {
    pub(crate) fn compatible(&self) -> bool {
        self.protocol == PROTOCOL && self.version == env!("CARGO_PKG_VERSION")
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Request {
    Status,
    Sync {
        timeout_ms: u64,
    },
    WaitReady {
        timeout_ms: u64,
    },
    SaveSnapshot,
    /// Start sending change events and conflicts on this connection (from now on, for as long as it lives).
    Events,
    /// Entries of the conflict log.
    Conflicts {
        after: i64,
        limit: u64,
    },
    /// A status at most a second old (what metrics and health probes poll).
    RecentStatus,
    /// The metrics as OpenMetrics text, names under `prefix`.
    Metrics {
        prefix: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Call {
    pub id: u64,
    pub request: Request,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Answer {
    Status(Box<Status>),
    Token(Token),
    Snapshot(Option<Manifest>),
    Conflicts(Vec<Conflict>),
    Metrics(String),
    Done,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ServerFrame {
    Hello(Hello),
    Reply {
        id: u64,
        result: Result<Answer, WireError>,
    },
    Positions(BTreeMap<u32, u64>),
    Event(ChangeEvent),
    Conflict(Conflict),
}

/// An [`Error`] that crosses the socket keeping its code and its fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum WireError {
    Config { field: String, reason: String },
    SqliteBusy { context: String },
    Sqlite { context: String, message: String },
    Transport { context: String, reason: String },
    Timeout { what: String, millis: u64 },
    SchemaMismatch { table: String, reason: String },
    Snapshot(String),
    Closed,
    Io { path: String, message: String },
    NoPrimaryKey { table: String },
    NatsServerNotFound,
    Internal(String),
}

impl From<&Error> for WireError {
    fn from(err: &Error) -> WireError {
        match err {
            Error::Config { field, reason } => WireError::Config {
                field: field.clone(),
                reason: reason.clone(),
            },
            Error::SqliteBusy { context } => WireError::SqliteBusy {
                context: context.clone(),
            },
            Error::Sqlite { context, source } => WireError::Sqlite {
                context: context.clone(),
                message: source.to_string(),
            },
            Error::Transport { context, reason } => WireError::Transport {
                context: context.clone(),
                reason: reason.clone(),
            },
            Error::Timeout { what, millis } => WireError::Timeout {
                what: what.clone(),
                millis: *millis,
            },
            Error::SchemaMismatch { table, reason } => WireError::SchemaMismatch {
                table: table.clone(),
                reason: reason.clone(),
            },
            Error::Snapshot(reason) => WireError::Snapshot(reason.clone()),
            Error::Closed | Error::UsedAfterFork { .. } => WireError::Closed,
            Error::Io { path, source } => WireError::Io {
                path: path.clone(),
                message: source.to_string(),
            },
            Error::NoPrimaryKey { table } => WireError::NoPrimaryKey {
                table: table.clone(),
            },
            Error::NatsServerNotFound => WireError::NatsServerNotFound,
            Error::Internal(reason) => WireError::Internal(reason.clone()),
        }
    }
}

impl From<WireError> for Error {
    fn from(err: WireError) -> Error {
        match err {
            WireError::Config { field, reason } => Error::Config { field, reason },
            WireError::SqliteBusy { context } => Error::SqliteBusy { context },
            WireError::Sqlite { context, message } => Error::Sqlite {
                context,
                source: rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
                    Some(message),
                ),
            },
            WireError::Transport { context, reason } => Error::Transport { context, reason },
            WireError::Timeout { what, millis } => Error::Timeout { what, millis },
            WireError::SchemaMismatch { table, reason } => Error::SchemaMismatch { table, reason },
            WireError::Snapshot(reason) => Error::Snapshot(reason),
            WireError::Closed => Error::Closed,
            WireError::Io { path, message } => Error::Io {
                path,
                source: std::io::Error::other(message),
            },
            WireError::NoPrimaryKey { table } => Error::NoPrimaryKey { table },
            WireError::NatsServerNotFound => Error::NatsServerNotFound,
            WireError::Internal(reason) => Error::Internal(reason),
        }
    }
}

/// Serializes one frame (length prefix included), ready to be written.
pub(crate) fn encode<T: Serialize>(frame: &T) -> std::io::Result<Vec<u8>> {
    let body = rmp_serde::to_vec_named(frame).map_err(std::io::Error::other)?;
    let len = u32::try_from(body.len())
        .ok()
        .filter(|len| (*len as usize) <= MAX_FRAME)
        .ok_or_else(|| std::io::Error::other("frame too large"))?;
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

#[cfg(test)]
pub(crate) async fn write_frame<T: Serialize>(
    writer: &mut (impl tokio::io::AsyncWrite + Unpin),
    frame: &T,
) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt as _;
    writer.write_all(&encode(frame)?).await
}

/// The next frame, or `None` at a clean end of the stream. A malformed frame is an error (the peer runs
/// something else): the connection is dropped, never panicked on.
pub(crate) async fn read_frame<T: DeserializeOwned>(
    reader: &mut (impl AsyncRead + Unpin),
) -> std::io::Result<Option<T>> {
    let mut len = [0u8; 4];
    match reader.read_exact(&mut len).await {
        Ok(_) => {}
        Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(err) => return Err(err),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::other(format!("frame of {len} bytes")));
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).await?;
    rmp_serde::from_slice(&body)
        .map(Some)
        .map_err(|err| std::io::Error::new(std::io::ErrorKind::InvalidData, err))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::ChangeOp;
    use crate::log::Value;

    #[tokio::test]
    async fn frames_round_trip_values_exactly() {
        let event = ChangeEvent {
            table: "t\"able".into(),
            op: ChangeOp::Update,
            pk: vec![
                Value::Integer(i64::MIN),
                Value::Real(f64::INFINITY),
                Value::Real(-0.0),
                Value::Text("é\0x".into()),
                Value::Blob(vec![0, 255, 7]),
                Value::Null,
            ],
            origin_node: u64::MAX >> 1,
            hlc: u64::MAX,
            local: true,
        };
        let frames = vec![
            ServerFrame::Event(event.clone()),
            ServerFrame::Positions(BTreeMap::from([(0, 7), (3, u64::MAX)])),
            ServerFrame::Reply {
                id: 9,
                result: Err(WireError::Timeout {
                    what: "x".into(),
                    millis: 5,
                }),
            },
        ];
        let mut bytes = Vec::new();
        for frame in &frames {
            write_frame(&mut bytes, frame).await.expect("write");
        }
        let mut reader = bytes.as_slice();
        match read_frame::<ServerFrame>(&mut reader).await.expect("read") {
            Some(ServerFrame::Event(back)) => {
                assert_eq!(back.pk.len(), event.pk.len());
                for (a, b) in back.pk.iter().zip(&event.pk) {
                    assert!(a.same_as(b), "{a:?} vs {b:?}");
                }
                assert_eq!(back.hlc, event.hlc);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            read_frame::<ServerFrame>(&mut reader).await.expect("read"),
            Some(ServerFrame::Positions(p)) if p[&3] == u64::MAX
        ));
        match read_frame::<ServerFrame>(&mut reader).await.expect("read") {
            Some(ServerFrame::Reply {
                id: 9,
                result: Err(err),
            }) => {
                let err: Error = err.into();
                assert_eq!(err.code(), crate::ErrorCode::Timeout);
            }
            other => panic!("{other:?}"),
        }
        assert!(read_frame::<ServerFrame>(&mut reader)
            .await
            .expect("eof")
            .is_none());
        let mut garbage: &[u8] = &[0, 0, 0, 2, 0xc1, 0xc1];
        assert!(read_frame::<ServerFrame>(&mut garbage).await.is_err());
    }

    #[test]
    fn errors_keep_their_code_across_the_socket() {
        let errors = [
            Error::config("nats.urls", "bad"),
            Error::SqliteBusy {
                context: "x".into(),
            },
            Error::Sqlite {
                context: "x".into(),
                source: rusqlite::Error::InvalidQuery,
            },
            Error::transport("x", "y"),
            Error::Timeout {
                what: "x".into(),
                millis: 1,
            },
            Error::Snapshot("x".into()),
            Error::Closed,
            Error::io("p", std::io::Error::other("x")),
            Error::NatsServerNotFound,
            Error::Internal("x".into()),
        ];
        for err in errors {
            let back: Error = WireError::from(&err).into();
            assert_eq!(back.code(), err.code(), "{err}");
        }
    }
}
