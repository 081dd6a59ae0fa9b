//! Versioned envelope: `b"HL"`, format version, flags, then a MessagePack [`Batch`], optionally zstd.
//! Format 3's body is [`super::wire`]'s (written); format 2's, serde's derive of `Batch`, is still read, so
//! a node reads what an older node published and the messages still in its own outbox.
//!
//! Decoding never panics and bounds the decompressed size, so a hostile or corrupt message is only ever
//! a [`DecodeError`] that the consumer parks on the dead-letter subject.

use super::record::Batch;
use super::wire;

const MAGIC: &[u8; 2] = b"HL";
/// 3: format 2's changes in MessagePack's own types, each name once per message (ADR 0020); written.
pub const FORMAT_VERSION: u8 = 3;
/// 2: column-level changes with causal length and incarnation (ADR 0011); still read. Format 1 is refused.
pub const OLDEST_READ_FORMAT: u8 = 2;
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
    #[error("unknown format version {0} (this node understands {OLDEST_READ_FORMAT} to {FORMAT_VERSION})")]
    UnknownVersion(u8),
    #[error("unknown flags {0:#04x}")]
    UnknownFlags(u8),
    #[error("bad compressed payload: {0}")]
    Decompress(String),
    #[error("bad payload: {0}")]
    Payload(String),
}

/// The message of `batch` in the newest format.
pub fn encode(batch: &Batch, compress: bool) -> Vec<u8> {
    encode_as(batch, FORMAT_VERSION, compress)
}

/// The message of `batch` in `format` (`replication_log.message_format`: 2 while a cluster upgrades from a
/// library that reads only format 2; any other number is written as the newest).
pub fn encode_as(batch: &Batch, format: u8, compress: bool) -> Vec<u8> {
    let (format, body) = if format == 2 {
        // Serializing our own types into a Vec cannot fail.
        (2, rmp_serde::to_vec(batch).unwrap_or_default())
    } else {
        let mut body = Vec::with_capacity(64 + batch.changes.len() * 64);
        wire::write_batch(batch, &mut body);
        (FORMAT_VERSION, body)
    };
    let mut out = Vec::with_capacity(body.len() / 2 + 4);
    out.extend_from_slice(MAGIC);
    out.push(format);
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

/// Checks the envelope; the body, its format and whether it is zstd-compressed.
fn body_of(bytes: &[u8]) -> Result<(&[u8], u8, bool), DecodeError> {
    if bytes.len() < 4 {
        return Err(DecodeError::TooShort(bytes.len()));
    }
    if &bytes[..2] != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    let format = bytes[2];
    if !(OLDEST_READ_FORMAT..=FORMAT_VERSION).contains(&format) {
        return Err(DecodeError::UnknownVersion(format));
    }
    let flags = bytes[3];
    if flags & !FLAG_ZSTD != 0 {
        return Err(DecodeError::UnknownFlags(flags));
    }
    Ok((&bytes[4..], format, flags & FLAG_ZSTD != 0))
}

pub fn decode(bytes: &[u8]) -> Result<Batch, DecodeError> {
    let (payload, format, compressed) = body_of(bytes)?;
    let decompressed;
    let body = if compressed {
        decompressed =
            decompress_bounded(payload, MAX_DECODED_BYTES).map_err(DecodeError::Decompress)?;
        &decompressed[..]
    } else {
        payload
    };
    if format == 2 {
        rmp_serde::from_slice(body).map_err(|err| DecodeError::Payload(err.to_string()))
    } else {
        wire::read_batch(body).map_err(DecodeError::Payload)
    }
}

/// The node a message's batch names, read from its first bytes (decompressing only those): enough for a
/// node to tell its own messages, which it skips, from the others', without decoding a whole batch only to
/// learn that.
pub fn batch_node_id(bytes: &[u8]) -> Result<u64, DecodeError> {
    use std::io::Read;
    let (payload, _format, compressed) = body_of(bytes)?;
    // A `Batch` starts (in both formats) as an array whose first element is the node id: at most 1 + 9 bytes.
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

    /// A batch as a library of format 2 wrote it (serde's derive of `Batch`), built apart from
    /// `encode_as` so the test does not trust the code it checks.
    fn encode_format_2(batch: &Batch, compress: bool) -> Vec<u8> {
        let body = rmp_serde::to_vec(batch).expect("serializes");
        let mut out = b"HL\x02".to_vec();
        if compress {
            out.push(FLAG_ZSTD);
            out.extend_from_slice(&zstd::bulk::compress(&body, 1).expect("compresses"));
        } else {
            out.push(0);
            out.extend_from_slice(&body);
        }
        out
    }

    #[test]
    fn format_2_is_written_on_request_as_an_older_library_wrote_it() {
        for compress in [true, false] {
            let written = encode_as(&sample(), 2, compress);
            assert_eq!(written, encode_format_2(&sample(), compress));
            assert_eq!(decode(&written), Ok(sample()));
        }
    }

    #[test]
    fn a_format_2_message_is_still_read() {
        for compress in [true, false] {
            let bytes = encode_format_2(&sample(), compress);
            assert_eq!(decode(&bytes), Ok(sample()));
            assert_eq!(batch_node_id(&bytes), Ok(42));
        }
        assert_eq!(encode(&sample(), false)[2], 3, "format 3 is written");
    }

    /// A hundred rows of one table: each name once in the body, and the body far smaller than format 2's.
    #[test]
    fn names_travel_once_per_message() {
        let mut batch = Batch::of_changes(7, Vec::new());
        for id in 0..100 {
            let mut change = sample().changes.remove(0);
            change.table = "inventory_items".into();
            change.pk = vec![Value::Integer(id)];
            change.columns = vec![
                ("quantity_on_hand".into(), Value::Integer(id * 3)),
                ("description".into(), Value::Text(format!("item {id}"))),
            ];
            batch.changes.push(change);
        }
        let plain = encode(&batch, false);
        let count = |needle: &[u8]| plain.windows(needle.len()).filter(|w| *w == needle).count();
        assert_eq!(count(b"inventory_items"), 1);
        assert_eq!(count(b"quantity_on_hand"), 1);
        assert_eq!(count(b"description"), 1);
        let old = encode_format_2(&batch, false);
        assert!(
            plain.len() * 2 < old.len(),
            "format 3 {} bytes, format 2 {} bytes",
            plain.len(),
            old.len()
        );
        assert_eq!(decode(&plain), Ok(batch));
    }

    #[test]
    fn a_format_3_body_that_lies_is_refused() {
        let mut body = Vec::new();
        wire::write_batch(&sample(), &mut body);
        let framed = |body: &[u8]| {
            let mut out = b"HL\x03\x00".to_vec();
            out.extend_from_slice(body);
            out
        };
        assert_eq!(decode(&framed(&body)), Ok(sample()));
        // Trailing bytes, a truncated body, and a name index past the names.
        let mut trailing = body.clone();
        trailing.push(0);
        assert!(
            matches!(decode(&framed(&trailing)), Err(DecodeError::Payload(e)) if e.contains("after"))
        );
        for cut in 1..body.len() {
            assert!(decode(&framed(&body[..cut])).is_err(), "cut at {cut}");
        }
        // [node, [], [one change naming table 0], []]: no names at all.
        let mut no_names = vec![0x94, 0x01, 0x90, 0x91, 0x9c, 0x00];
        no_names.extend_from_slice(&[0u8; 11]);
        assert!(
            matches!(decode(&framed(&no_names)), Err(DecodeError::Payload(e)) if e.contains("not one of the 0 names"))
        );
        // An array claiming four billion changes allocates nothing for them.
        let huge = [0x94, 0x01, 0x90, 0xdd, 0xff, 0xff, 0xff, 0xff];
        assert!(decode(&framed(&huge)).is_err());
    }

    fn any_value() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<i64>().prop_map(Value::Integer),
            any::<f64>().prop_map(Value::Real),
            ".{0,40}".prop_map(Value::Text),
            proptest::collection::vec(any::<u8>(), 0..300).prop_map(Value::Blob),
        ]
    }

    fn any_change() -> impl Strategy<Value = RowChange> {
        let version = (any::<u64>(), any::<u64>())
            .prop_map(|(hlc, node)| crate::clock::Version { hlc, node });
        (
            ("[a-z_]{1,12}", 0..3u8, any::<u64>(), any::<u64>()),
            (
                version.clone(),
                any::<u64>(),
                version.clone(),
                proptest::option::of(version),
            ),
            proptest::collection::vec(any_value(), 1..3),
            proptest::collection::vec(("[a-z]{1,6}", any_value()), 0..8),
        )
            .prop_map(
                |((table, op, hlc, cl), (born, born_hash, life, seen), pk, columns)| RowChange {
                    table,
                    op: [Op::Insert, Op::Update, Op::Delete][usize::from(op)],
                    hlc,
                    cl,
                    born,
                    born_hash,
                    life,
                    seen,
                    pk,
                    columns,
                },
            )
    }

    /// Values compared as SQLite keeps them: REAL by bits (NaN included).
    fn same_batch(a: &Batch, b: &Batch) -> bool {
        let same_values = |x: &[Value], y: &[Value]| {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| x.same_as(y))
        };
        a.node_id == b.node_id
            && a.dropped == b.dropped
            && a.changes.len() == b.changes.len()
            && a.changes.iter().zip(&b.changes).all(|(x, y)| {
                let names =
                    |c: &RowChange| c.columns.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
                let values =
                    |c: &RowChange| c.columns.iter().map(|(_, v)| v.clone()).collect::<Vec<_>>();
                (
                    &x.table,
                    x.op,
                    x.hlc,
                    x.cl,
                    x.born,
                    x.born_hash,
                    x.life,
                    x.seen,
                ) == (
                    &y.table,
                    y.op,
                    y.hlc,
                    y.cl,
                    y.born,
                    y.born_hash,
                    y.life,
                    y.seen,
                ) && same_values(&x.pk, &y.pk)
                    && names(x) == names(y)
                    && same_values(&values(x), &values(y))
            })
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = batch_node_id(&bytes);
            let _ = decode(&bytes);
            for format in [2u8, 3] {
                let mut framed = vec![b'H', b'L', format, 0];
                framed.extend_from_slice(&bytes);
                let _ = decode(&framed);
                let _ = batch_node_id(&framed);
            }
        }

        #[test]
        fn every_batch_round_trips(
            node_id in any::<u64>(),
            changes in proptest::collection::vec(any_change(), 0..12),
            dropped in proptest::collection::vec(("[a-z]{1,8}", any::<u64>()), 0..3),
            compress in any::<bool>(),
        ) {
            let batch = Batch {
                node_id,
                changes,
                dropped: dropped
                    .into_iter()
                    .map(|(table, hlc)| crate::log::record::TableDropped { table, hlc })
                    .collect(),
            };
            let bytes = encode(&batch, compress);
            let decoded = decode(&bytes).expect("decodes");
            prop_assert!(same_batch(&batch, &decoded), "{batch:?} came back as {decoded:?}");
            prop_assert_eq!(batch_node_id(&bytes), Ok(node_id));
        }
    }
}
