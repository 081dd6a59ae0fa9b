//! The body of a format-3 message: a [`Batch`] in MessagePack's own types, each name written once.
//!
//! Format 2 was serde's derive: it spelled every enum by name (each value `{"Integer": 5}`, each op
//! `"Insert"`) and every change carried its table's and its columns' names. Those strings were most of a
//! message's bytes, and matching them was most of its decode time. Here a value is MessagePack's nil, int,
//! float 64, str or bin (the five SQLite storage classes map onto them one to one), an op is a small int,
//! and each table or column name is written once per message and referred to by its index:
//!
//! ```text
//! batch   = [node_id, names, changes, dropped]         node_id first: `codec::batch_node_id` reads it
//! names   = [str, ...]
//! change  = [table, op, hlc, cl, born_hlc, born_node, born_hash, life_hlc, life_node, seen, pk, columns]
//! seen    = nil | [hlc, node]
//! pk      = [value, ...]
//! columns = [name, value, name, value, ...]             table, name: indexes into `names`
//! dropped = [[table (str), hlc], ...]
//! ```
//!
//! Decoding never panics and never allocates more than the bytes it was given could hold: a declared
//! length is trusted only as far as the remaining bytes allow.

use rmp::encode as put;
use rmp::Marker;
use rustc_hash::FxHashMap;

use super::record::{Batch, Op, RowChange, TableDropped, Value};
use crate::clock::Version;

const CHANGE_FIELDS: u32 = 12;

/// Appends `batch`'s body to `out`.
pub fn write_batch(batch: &Batch, out: &mut Vec<u8>) {
    let mut names = Names::default();
    let mut changes = Vec::with_capacity(batch.changes.len() * 48);
    // Writing into a Vec cannot fail (the `Result`s below are all `Ok`).
    let _ = put::write_array_len(&mut changes, len_u32(batch.changes.len()));
    for change in &batch.changes {
        write_change(change, &mut names, &mut changes);
    }
    let _ = put::write_array_len(out, 4);
    let _ = put::write_uint(out, batch.node_id);
    let _ = put::write_array_len(out, len_u32(names.order.len()));
    for name in &names.order {
        let _ = put::write_str(out, name);
    }
    out.extend_from_slice(&changes);
    let _ = put::write_array_len(out, len_u32(batch.dropped.len()));
    for dropped in &batch.dropped {
        let _ = put::write_array_len(out, 2);
        let _ = put::write_str(out, &dropped.table);
        let _ = put::write_uint(out, dropped.hlc);
    }
}

/// Reads a batch body written by [`write_batch`]; the error says what was wrong, and where.
pub fn read_batch(bytes: &[u8]) -> Result<Batch, String> {
    let mut reader = Reader { rest: bytes };
    reader
        .expect_array(4)
        .map_err(|err| format!("batch: {err}"))?;
    let node_id = reader
        .uint()
        .map_err(|err| format!("batch node id: {err}"))?;
    let name_count = reader.array_len().map_err(|err| format!("names: {err}"))?;
    let mut names = Vec::with_capacity(reader.bounded(name_count));
    for index in 0..name_count {
        let name = reader.str().map_err(|err| format!("name {index}: {err}"))?;
        names.push(name.to_owned());
    }
    let change_count = reader
        .array_len()
        .map_err(|err| format!("changes: {err}"))?;
    let mut changes = Vec::with_capacity(reader.bounded(change_count));
    for index in 0..change_count {
        changes.push(
            reader
                .change(&names)
                .map_err(|err| format!("change {index}: {err}"))?,
        );
    }
    let dropped_count = reader
        .array_len()
        .map_err(|err| format!("dropped: {err}"))?;
    let mut dropped = Vec::with_capacity(reader.bounded(dropped_count));
    for index in 0..dropped_count {
        let table_dropped = (|| {
            reader.expect_array(2)?;
            let table = reader.str()?.to_owned();
            let hlc = reader.uint()?;
            Ok::<_, String>(TableDropped { table, hlc })
        })()
        .map_err(|err| format!("dropped table {index}: {err}"))?;
        dropped.push(table_dropped);
    }
    // A later layout gets a format version of its own: anything after the batch is an error here.
    if !reader.rest.is_empty() {
        return Err(format!("{} bytes after the batch", reader.rest.len()));
    }
    Ok(Batch {
        node_id,
        changes,
        dropped,
    })
}

fn write_change<'a>(change: &'a RowChange, names: &mut Names<'a>, out: &mut Vec<u8>) {
    let _ = put::write_array_len(out, CHANGE_FIELDS);
    let _ = put::write_uint(out, u64::from(names.index(&change.table)));
    let _ = put::write_uint(
        out,
        match change.op {
            Op::Insert => 0,
            Op::Update => 1,
            Op::Delete => 2,
        },
    );
    let _ = put::write_uint(out, change.hlc);
    let _ = put::write_uint(out, change.cl);
    let _ = put::write_uint(out, change.born.hlc);
    let _ = put::write_uint(out, change.born.node);
    let _ = put::write_uint(out, change.born_hash);
    let _ = put::write_uint(out, change.life.hlc);
    let _ = put::write_uint(out, change.life.node);
    match change.seen {
        None => {
            let _ = put::write_nil(out);
        }
        Some(seen) => {
            let _ = put::write_array_len(out, 2);
            let _ = put::write_uint(out, seen.hlc);
            let _ = put::write_uint(out, seen.node);
        }
    }
    let _ = put::write_array_len(out, len_u32(change.pk.len()));
    for value in &change.pk {
        write_value(value, out);
    }
    let _ = put::write_array_len(out, len_u32(change.columns.len() * 2));
    for (name, value) in &change.columns {
        let _ = put::write_uint(out, u64::from(names.index(name)));
        write_value(value, out);
    }
}

fn write_value(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Null => {
            let _ = put::write_nil(out);
        }
        Value::Integer(i) => {
            let _ = put::write_sint(out, *i);
        }
        Value::Real(f) => {
            let _ = put::write_f64(out, *f);
        }
        Value::Text(text) => {
            let _ = put::write_str(out, text);
        }
        Value::Blob(bytes) => {
            let _ = put::write_bin(out, bytes);
        }
    }
}

/// A message is at most a server's max payload (far below 4 GiB), so every length fits MessagePack's u32.
fn len_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

/// The names a batch uses, in the order first met, and each one's index.
#[derive(Default)]
struct Names<'a> {
    order: Vec<&'a str>,
    index: FxHashMap<&'a str, u32>,
}

impl<'a> Names<'a> {
    fn index(&mut self, name: &'a str) -> u32 {
        let next = len_u32(self.order.len());
        *self.index.entry(name).or_insert_with(|| {
            self.order.push(name);
            next
        })
    }
}

/// A cursor over the bytes of a body.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    /// How many elements of a declared length can really follow: each takes a byte at least.
    fn bounded(&self, declared: usize) -> usize {
        declared.min(self.rest.len())
    }

    fn take(&mut self, count: usize) -> Result<&'a [u8], String> {
        if self.rest.len() < count {
            return Err(format!(
                "truncated: {count} bytes wanted, {} left",
                self.rest.len()
            ));
        }
        let (head, tail) = self.rest.split_at(count);
        self.rest = tail;
        Ok(head)
    }

    fn fixed<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn marker(&mut self) -> Result<Marker, String> {
        Ok(Marker::from_u8(self.fixed::<1>()?[0]))
    }

    fn array_len(&mut self) -> Result<usize, String> {
        match self.marker()? {
            Marker::FixArray(len) => Ok(usize::from(len)),
            Marker::Array16 => Ok(usize::from(u16::from_be_bytes(self.fixed()?))),
            Marker::Array32 => Ok(u32::from_be_bytes(self.fixed()?) as usize),
            other => Err(format!("an array expected, found {other:?}")),
        }
    }

    fn expect_array(&mut self, len: usize) -> Result<(), String> {
        match self.array_len()? {
            found if found == len => Ok(()),
            found => Err(format!("an array of {len} expected, found one of {found}")),
        }
    }

    fn uint(&mut self) -> Result<u64, String> {
        match self.marker()? {
            Marker::FixPos(n) => Ok(u64::from(n)),
            Marker::U8 => Ok(u64::from(self.fixed::<1>()?[0])),
            Marker::U16 => Ok(u64::from(u16::from_be_bytes(self.fixed()?))),
            Marker::U32 => Ok(u64::from(u32::from_be_bytes(self.fixed()?))),
            Marker::U64 => Ok(u64::from_be_bytes(self.fixed()?)),
            other => Err(format!("an unsigned integer expected, found {other:?}")),
        }
    }

    fn index(&mut self, names: &[String], what: &str) -> Result<usize, String> {
        let index = self.uint()?;
        usize::try_from(index)
            .ok()
            .filter(|index| *index < names.len())
            .ok_or_else(|| format!("{what} {index} is not one of the {} names", names.len()))
    }

    fn str_of_len(&mut self, len: usize) -> Result<&'a str, String> {
        std::str::from_utf8(self.take(len)?).map_err(|err| format!("text is not UTF-8: {err}"))
    }

    /// The byte length a str or bin marker announces (read after it for all but fixstr).
    fn length(&mut self, marker: Marker) -> Result<usize, String> {
        match marker {
            Marker::FixStr(len) => Ok(usize::from(len)),
            Marker::Str8 | Marker::Bin8 => Ok(usize::from(self.fixed::<1>()?[0])),
            Marker::Str16 | Marker::Bin16 => Ok(usize::from(u16::from_be_bytes(self.fixed()?))),
            Marker::Str32 | Marker::Bin32 => Ok(u32::from_be_bytes(self.fixed()?) as usize),
            other => Err(format!("a string or bytes expected, found {other:?}")),
        }
    }

    fn str(&mut self) -> Result<&'a str, String> {
        match self.marker()? {
            marker @ (Marker::FixStr(_) | Marker::Str8 | Marker::Str16 | Marker::Str32) => {
                let len = self.length(marker)?;
                self.str_of_len(len)
            }
            other => Err(format!("a string expected, found {other:?}")),
        }
    }

    fn value(&mut self) -> Result<Value, String> {
        let integer = |value: u64| {
            i64::try_from(value)
                .map(Value::Integer)
                .map_err(|_| format!("integer {value} is out of SQLite's range"))
        };
        Ok(match self.marker()? {
            Marker::Null => Value::Null,
            Marker::FixPos(n) => Value::Integer(i64::from(n)),
            Marker::FixNeg(n) => Value::Integer(i64::from(n)),
            Marker::U8 => Value::Integer(i64::from(self.fixed::<1>()?[0])),
            Marker::U16 => Value::Integer(i64::from(u16::from_be_bytes(self.fixed()?))),
            Marker::U32 => Value::Integer(i64::from(u32::from_be_bytes(self.fixed()?))),
            Marker::U64 => integer(u64::from_be_bytes(self.fixed()?))?,
            Marker::I8 => Value::Integer(i64::from(i8::from_be_bytes(self.fixed()?))),
            Marker::I16 => Value::Integer(i64::from(i16::from_be_bytes(self.fixed()?))),
            Marker::I32 => Value::Integer(i64::from(i32::from_be_bytes(self.fixed()?))),
            Marker::I64 => Value::Integer(i64::from_be_bytes(self.fixed()?)),
            Marker::F64 => Value::Real(f64::from_be_bytes(self.fixed()?)),
            marker @ (Marker::FixStr(_) | Marker::Str8 | Marker::Str16 | Marker::Str32) => {
                let len = self.length(marker)?;
                Value::Text(self.str_of_len(len)?.to_owned())
            }
            marker @ (Marker::Bin8 | Marker::Bin16 | Marker::Bin32) => {
                let len = self.length(marker)?;
                Value::Blob(self.take(len)?.to_vec())
            }
            other => return Err(format!("a value expected, found {other:?}")),
        })
    }

    fn version(&mut self) -> Result<Version, String> {
        Ok(Version {
            hlc: self.uint()?,
            node: self.uint()?,
        })
    }

    fn change(&mut self, names: &[String]) -> Result<RowChange, String> {
        self.expect_array(CHANGE_FIELDS as usize)?;
        let table = names[self.index(names, "table")?].clone();
        let op = match self.uint()? {
            0 => Op::Insert,
            1 => Op::Update,
            2 => Op::Delete,
            other => return Err(format!("unknown op {other}")),
        };
        let hlc = self.uint()?;
        let cl = self.uint()?;
        let born = self.version()?;
        let born_hash = self.uint()?;
        let life = self.version()?;
        let seen = if self.rest.first() == Some(&0xc0) {
            self.take(1)?;
            None
        } else {
            self.expect_array(2)?;
            Some(self.version()?)
        };
        let pk_len = self.array_len()?;
        let mut pk = Vec::with_capacity(self.bounded(pk_len));
        for _ in 0..pk_len {
            pk.push(self.value()?);
        }
        let flat_len = self.array_len()?;
        if flat_len % 2 != 0 {
            return Err(format!(
                "columns: {flat_len} elements, not name and value pairs"
            ));
        }
        let mut columns = Vec::with_capacity(self.bounded(flat_len / 2));
        for _ in 0..flat_len / 2 {
            let name = names[self.index(names, "column name")?].clone();
            columns.push((name, self.value()?));
        }
        Ok(RowChange {
            table,
            op,
            hlc,
            cl,
            born,
            born_hash,
            life,
            seen,
            pk,
            columns,
        })
    }
}
