//! Versioned envelope: `b"HL"`, format version, flags, then a MessagePack [`Batch`], optionally zstd.
//!
//! Decoding never panics and bounds the decompressed size, so a hostile or corrupt message is only ever
//! a [`DecodeError`] that the consumer parks on the dead-letter subject.

use super::record::Batch;

const MAGIC: &[u8; 2] = b"HL";
/// 2: column-level changes with causal length and incarnation (ADR 0011). Format 1 is refused.
pub const FORMAT_VERSION: u8 = 2;
const FLAG_ZSTD: u8 = 0b0000_0001;
/// Upper bound of a decompressed payload; a message claiming more is refused before anything is allocated
/// for it (a message is at most the server's max payload, 8 MB on the embedded server, and compresses well
/// only when it is repetitive: 32 MiB leaves room for that, while a 10 KB zstd bomb cannot make every node
/// allocate hundreds of MB).
pub const MAX_DECODED_BYTES: usize = 32 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("message too short ({0} bytes)")]
    TooShort(usize),
    #[error("not a HarmonyLite message (bad magic)")]
    BadMagic,
    #[error("unknown format version {0} (this node understands {FORMAT_VERSION})")]
    UnknownVersion(u8),
    #[error("unknown flags {0:#04x}")]
    UnknownFlags(u8),
    #[error("bad compressed payload: {0}")]
    Decompress(String),
    #[error("bad payload: {0}")]
    Payload(String),
}

pub fn encode(batch: &Batch, compress: bool) -> Vec<u8> {
    // Serializing our own types into a Vec cannot fail.
    let body = rmp_serde::to_vec(batch).unwrap_or_default();
    let mut out = Vec::with_capacity(body.len() / 2 + 4);
    out.extend_from_slice(MAGIC);
    out.push(FORMAT_VERSION);
    if compress {
        match zstd::bulk::compress(&body, 1) {
            Ok(packed) if packed.len() < body.len() => {
                out.push(FLAG_ZSTD);
                out.extend_from_slice(&packed);
                return out;
            }
            _ => {}
        }
    }
    out.push(0);
    out.extend_from_slice(&body);
    out
}

/// zstd-decompresses at most `limit` bytes, growing the buffer as data arrives (a hostile frame cannot make
/// us allocate its claimed size up front).
pub fn decompress_bounded(compressed: &[u8], limit: usize) -> Result<Vec<u8>, String> {
    use std::io::Read;
    // A frame that declares its size (ours always do) is refused before decompressing.
    if let Ok(Some(declared)) = zstd::zstd_safe::get_frame_content_size(compressed) {
        if declared > limit as u64 {
            return Err(format!(
                "declares {declared} decompressed bytes, over the {limit} byte limit"
            ));
        }
    }
    let decoder = zstd::stream::read::Decoder::new(compressed).map_err(|err| err.to_string())?;
    let mut body = Vec::with_capacity(compressed.len().saturating_mul(4).min(limit).min(1 << 20));
    decoder
        .take(limit as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|err| err.to_string())?;
    if body.len() > limit {
        return Err(format!("decompressed size exceeds {limit} bytes"));
    }
    Ok(body)
}

/// Checks the envelope; the body and whether it is zstd-compressed.
fn body_of(bytes: &[u8]) -> Result<(&[u8], bool), DecodeError> {
    if bytes.len() < 4 {
        return Err(DecodeError::TooShort(bytes.len()));
    }
    if &bytes[..2] != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    if bytes[2] != FORMAT_VERSION {
        return Err(DecodeError::UnknownVersion(bytes[2]));
    }
    let flags = bytes[3];
    if flags & !FLAG_ZSTD != 0 {
        return Err(DecodeError::UnknownFlags(flags));
    }
    Ok((&bytes[4..], flags & FLAG_ZSTD != 0))
}

pub fn decode(bytes: &[u8]) -> Result<Batch, DecodeError> {
    let (payload, compressed) = body_of(bytes)?;
    let batch = if compressed {
        let body =
            decompress_bounded(payload, MAX_DECODED_BYTES).map_err(DecodeError::Decompress)?;
        rmp_serde::from_slice(&body)
    } else {
        rmp_serde::from_slice(payload)
    };
    batch.map_err(|err| DecodeError::Payload(err.to_string()))
}

/// The node a message's batch names, read from its first bytes (decompressing only those): enough for a
/// node to tell its own messages, which it skips, from the others', without decoding a whole batch only to
/// learn that.
pub fn batch_node_id(bytes: &[u8]) -> Result<u64, DecodeError> {
    use std::io::Read;
    let (payload, compressed) = body_of(bytes)?;
    // A `Batch` starts as an array whose first element is the node id: at most 1 + 9 bytes.
    let mut head = [0u8; 16];
    let filled = if compressed {
        let mut decoder = zstd::stream::read::Decoder::new(payload)
            .map_err(|err| DecodeError::Decompress(err.to_string()))?;
        let mut filled = 0;
        while filled < head.len() {
            match decoder.read(&mut head[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(err) => return Err(DecodeError::Decompress(err.to_string())),
            }
        }
        filled
    } else {
        let n = payload.len().min(head.len());
        head[..n].copy_from_slice(&payload[..n]);
        n
    };
    let mut start = &head[..filled];
    let fields = rmp::decode::read_array_len(&mut start)
        .map_err(|err| DecodeError::Payload(format!("not a batch: {err}")))?;
    if fields == 0 {
        return Err(DecodeError::Payload("not a batch: an empty array".into()));
    }
    rmp::decode::read_int(&mut start)
        .map_err(|err| DecodeError::Payload(format!("not a batch's node id: {err:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::record::{Op, RowChange, Value};
    use proptest::prelude::*;

    fn sample() -> Batch {
        Batch {
            node_id: 42,
            dropped: vec![crate::log::record::TableDropped {
                table: "gone".into(),
                hlc: 78,
            }],
            changes: vec![RowChange {
                table: "t".into(),
                op: Op::Insert,
                hlc: 77,
                cl: 1,
                born: crate::clock::Version { hlc: 77, node: 42 },
                born_hash: 5,
                life: crate::clock::Version { hlc: 77, node: 42 },
                seen: None,
                pk: vec![Value::Integer(i64::MIN)],
                columns: vec![
                    ("a".into(), Value::Real(-0.0)),
                    ("b".into(), Value::Blob(vec![0; 1000])),
                    ("c".into(), Value::Text("zé 🚀".into())),
                    ("d".into(), Value::Null),
                ],
            }],
        }
    }

    #[test]
    fn round_trips_compressed_and_plain() {
        for compress in [true, false] {
            let decoded = decode(&encode(&sample(), compress)).expect("decodes");
            assert_eq!(decoded.changes[0].columns[0].1.clone(), Value::Real(-0.0));
            match decoded.changes[0].columns[0].1 {
                Value::Real(f) => assert!(f.is_sign_negative()),
                _ => panic!("type changed"),
            }
            assert_eq!(decoded, sample());
        }
    }

    #[test]
    fn the_node_id_is_read_from_the_first_bytes_alone() {
        let batch = sample();
        for compress in [true, false] {
            let bytes = encode(&batch, compress);
            assert_eq!(batch_node_id(&bytes), Ok(batch.node_id));
        }
        let big = Batch::of_changes(u64::MAX - 3, sample().changes);
        assert_eq!(batch_node_id(&encode(&big, true)), Ok(u64::MAX - 3));
        assert!(batch_node_id(b"HL\x02\x00").is_err());
        assert!(batch_node_id(b"HL\x02\x01garbage").is_err());
        assert!(batch_node_id(b"XX\x02\x00\x91\x01").is_err());
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        assert_eq!(decode(b"xx"), Err(DecodeError::TooShort(2)));
        assert_eq!(decode(b"NOPE...."), Err(DecodeError::BadMagic));
        assert_eq!(
            decode(b"HL\x09\x00abc"),
            Err(DecodeError::UnknownVersion(9))
        );
        assert!(matches!(
            decode(b"HL\x02\x01garbage"),
            Err(DecodeError::Decompress(_))
        ));
        assert!(matches!(
            decode(b"HL\x02\x00\xc1\xc1"),
            Err(DecodeError::Payload(_))
        ));
        // A format-1 message (the row-level wire form) is refused by version, not misread.
        assert_eq!(
            decode(b"HL\x01\x00\x90"),
            Err(DecodeError::UnknownVersion(1))
        );
        let mut truncated = encode(&sample(), false);
        truncated.truncate(truncated.len() / 2);
        assert!(decode(&truncated).is_err());
    }

    #[test]
    fn a_compression_bomb_is_refused_before_allocating() {
        let huge = vec![0u8; MAX_DECODED_BYTES + 1];
        let bomb = zstd::bulk::compress(&huge, 3).expect("compress");
        assert!(bomb.len() < 64 * 1024, "the bomb is small: {}", bomb.len());
        let mut framed = b"HL\x02\x01".to_vec();
        framed.extend_from_slice(&bomb);
        match decode(&framed) {
            Err(DecodeError::Decompress(reason)) => assert!(reason.contains("limit"), "{reason}"),
            other => panic!("bomb not refused: {other:?}"),
        }
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = batch_node_id(&bytes);
            let _ = decode(&bytes);
            let mut framed = b"HL\x02\x00".to_vec();
            framed.extend_from_slice(&bytes);
            let _ = decode(&framed);
        }
    }
}
