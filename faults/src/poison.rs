//! Well-formed but hostile messages, published with a plain NATS client as any holder of the subject could:
//! each is a HarmonyLite message (current wire format) that a node must survive without halting,
//! diverging or letting it freeze a row.

use harmonylite::clock::{from_millis, wall_millis, Version};
use harmonylite::log::{encode, pk_key, shard_of, Batch, Op, RowChange, Value};

pub const KINDS: &[&str] = &["type-mismatch", "future-clock", "forged-origin", "null-key"];

/// A change creating a row (its first life) as `node` at `hlc`, in the current wire format.
fn insert(
    node: u64,
    table: &str,
    hlc: u64,
    pk: Vec<Value>,
    columns: Vec<(&str, Value)>,
) -> RowChange {
    let born = Version { hlc, node };
    RowChange {
        table: table.into(),
        op: Op::Insert,
        hlc,
        cl: 1,
        born,
        born_hash: hlc,
        life: born,
        seen: None,
        pk,
        columns: columns
            .into_iter()
            .map(|(c, v)| (c.to_string(), v))
            .collect(),
    }
}

fn rows_image(id: Value, writer: i64) -> Vec<(&'static str, Value)> {
    vec![
        ("id", id),
        ("writer", Value::Integer(writer)),
        ("generation", Value::Integer(0)),
        ("n", Value::Integer(0)),
        ("payload", Value::Null),
    ]
}

/// The message of `kind`, and the table and key it targets (for its shard).
fn message(kind: &str, victim_node: u64) -> Result<(Batch, String, Vec<Value>), String> {
    let now = from_millis(wall_millis());
    let hot = |k: Value, v: &str, writer: i64| {
        vec![
            ("k", k),
            ("v", Value::Text(v.into())),
            ("writer", Value::Integer(writer)),
        ]
    };
    let (node_id, change) = match kind {
        // An INTEGER PRIMARY KEY given a text value: SQLite's "datatype mismatch".
        "type-mismatch" => {
            let key = Value::Text("poison".into());
            (
                990,
                insert(990, "hot", now, vec![key.clone()], hot(key, "poison", 990)),
            )
        }
        // A stamp no later write can beat.
        "future-clock" => (
            991,
            insert(
                991,
                "hot",
                u64::MAX,
                vec![Value::Integer(1)],
                hot(Value::Integer(1), "from the future", 991),
            ),
        ),
        // Claims to come from a real node: its message id does not name that node's database, so that node
        // applies it too (and reports it) instead of skipping it as its own.
        "forged-origin" => {
            let id = Value::Text("forged-origin".into());
            let image = rows_image(id.clone(), victim_node as i64);
            (
                victim_node,
                insert(victim_node, "rows", now, vec![id], image),
            )
        }
        "null-key" => (
            993,
            insert(
                993,
                "rows",
                now,
                vec![Value::Null],
                rows_image(Value::Null, 993),
            ),
        ),
        other => return Err(format!("unknown message kind {other} (one of {KINDS:?})")),
    };
    let (table, pk) = (change.table.clone(), change.pk.clone());
    Ok((Batch::of_changes(node_id, vec![change]), table, pk))
}

/// Publishes one message of `kind` to the stream of its row's shard and waits for the PubAck.
pub fn publish(url: &str, kind: &str, shards: u32, victim_node: u64) -> Result<(), String> {
    let (batch, table, pk) = message(kind, victim_node)?;
    let shard = shard_of(&table, &pk_key(&pk), shards);
    let subject = format!("harmonylite-change-log.{shard}");
    let payload = encode(&batch, false);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        let client = async_nats::connect(url)
            .await
            .map_err(|e| format!("connect {url}: {e}"))?;
        let js = async_nats::jetstream::new(client);
        let ack = js
            .publish(subject.clone(), payload.into())
            .await
            .map_err(|e| format!("publish to {subject}: {e}"))?;
        ack.await
            .map_err(|e| format!("publish to {subject} not acknowledged: {e}"))?;
        Ok(())
    })
}

/// Writes a seed corpus of well-formed messages (plain, compressed, and the body alone behind the `0xff`
/// marker the fuzz targets understand) into each of `dirs` (`fuzz/corpus/<target>`).
pub fn write_fuzz_seeds(dirs: &[String]) -> Result<usize, String> {
    let mut batches: Vec<Batch> = KINDS
        .iter()
        .filter_map(|kind| message(kind, 7).ok().map(|(batch, _, _)| batch))
        .collect();
    let item = |name: &str| {
        insert(
            9,
            "items",
            from_millis(1_700_000_000_000),
            vec![Value::Integer(3)],
            vec![
                ("id", Value::Integer(3)),
                ("name", Value::Text(name.into())),
                ("qty", Value::Integer(4)),
                ("price", Value::Real(2.5)),
            ],
        )
    };
    let pair = insert(
        9,
        "pairs",
        1 << 20,
        vec![Value::Text("a".into()), Value::Integer(1)],
        vec![
            ("a", Value::Text("a".into())),
            ("b", Value::Integer(1)),
            ("v", Value::Blob(vec![0, 1, 2])),
        ],
    );
    let update = RowChange {
        op: Op::Update,
        hlc: from_millis(1_700_000_000_001),
        columns: vec![("qty".into(), Value::Integer(5))],
        ..item("x")
    };
    let delete = RowChange {
        op: Op::Delete,
        hlc: from_millis(1_700_000_000_002),
        cl: 2,
        columns: vec![],
        ..item("x")
    };
    batches.push(Batch::of_changes(9, vec![item("x"), pair, update, delete]));
    batches.push(Batch::of_changes(1, vec![]));
    let mut written = 0;
    for dir in dirs {
        std::fs::create_dir_all(dir).map_err(|e| format!("{dir}: {e}"))?;
        for (i, batch) in batches.iter().enumerate() {
            let plain = encode(batch, false);
            let mut body = vec![0xff];
            body.extend_from_slice(plain.get(4..).unwrap_or_default());
            for (name, bytes) in [
                ("plain", plain.clone()),
                ("zstd", encode(batch, true)),
                ("body", body),
            ] {
                std::fs::write(format!("{dir}/seed-{i}-{name}"), bytes)
                    .map_err(|e| format!("{dir}: {e}"))?;
                written += 1;
            }
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_a_decodable_message() {
        for kind in KINDS {
            let (batch, _, _) = message(kind, 1).expect("known kind");
            let decoded = harmonylite::log::decode(&encode(&batch, false)).expect("decodes");
            assert_eq!(decoded.changes.len(), 1, "{kind}");
        }
        assert!(message("nonsense", 1).is_err());
    }
}
