//! Trigger DDL text. Pure: builds SQL from a [`TableInfo`]; every identifier is quoted.

use super::schema::TableInfo;
use super::sql::quote;
use super::CHANGE_LOG;

/// Ops recorded in the change log. The stamper compares the row as it is with the row's replication state
/// (`state::rows`), so these only tell it which rows to look at.
pub const OP_INSERT: i64 = 1;
pub const OP_UPDATE: i64 = 2;
pub const OP_DELETE: i64 = 3;

/// The commit time a trigger records, in Unix milliseconds: SQLite's `'now'` is fixed for one statement,
/// and `julianday` exists on every SQLite an app may link (`unixepoch('subsec')` needs 3.42). SQLite keeps
/// 'now' in whole milliseconds, but the conversion through days is off by a few hundredths of a millisecond
/// either way: truncating made half the commit times one millisecond early, before the clock history entry
/// of the apply transaction the app had already seen (`clock::ClockHistory::floor_at`). Rounding is exact.
pub const COMMIT_MILLIS: &str =
    "CAST(ROUND((julianday('now') - 2440587.5) * 86400000.0) AS INTEGER)";

pub struct Trigger {
    pub name: String,
    pub sql: String,
}

/// The triggers that capture one table. Names embed the table name, so they are unique per table.
///
/// They log every write, the library's own included, with no `WHEN` guard: the library drops what its own
/// transactions logged before they commit (`capture::discard_own_changes`), which costs the app nothing,
/// whereas a guard subquery ran on every row the app wrote.
pub fn for_table(table: &TableInfo, table_id: i64) -> Vec<Trigger> {
    let target = quote(&table.name);
    let slots: String = (0..table.pk.len()).map(|i| format!(", k{i}")).collect();
    let keys = |row: &str| -> String {
        table
            .pk
            .iter()
            .map(|column| format!(", {row}.{}", quote(column)))
            .collect()
    };
    let log = |op: i64, row: &str| {
        format!(
            "INSERT INTO {CHANGE_LOG}(tbl, op, at{slots}) VALUES ({table_id}, {op}, {COMMIT_MILLIS}{});",
            keys(row)
        )
    };
    // A NULL in a key column cannot identify the row elsewhere (NULLs never match each other in a key):
    // the app's statement fails with this message instead of diverging silently.
    let refuse_null_key = if table.nullable_pk.is_empty() {
        String::new()
    } else {
        let any_null = table
            .nullable_pk
            .iter()
            .map(|c| format!("NEW.{} IS NULL", quote(c)))
            .collect::<Vec<_>>()
            .join(" OR ");
        let message = format!(
            "harmonylite: table {} cannot replicate a row whose primary key holds NULL (declare the key columns NOT NULL)",
            table.name
        )
        .replace('\'', "''");
        format!("SELECT RAISE(ABORT, '{message}') WHERE {any_null}; ")
    };
    let name = |suffix: &str| format!("__harmonylite__{}__{suffix}", table.name);
    let pk_changed = table
        .pk
        .iter()
        .map(|column| format!("OLD.{c} IS NOT NEW.{c}", c = quote(column)))
        .collect::<Vec<_>>()
        .join(" OR ");
    let pk_list = table
        .pk
        .iter()
        .map(|c| quote(c))
        .collect::<Vec<_>>()
        .join(", ");

    let make = |suffix: &str, event: String, when: Option<String>, body: String| {
        let trigger_name = name(suffix);
        let when = when.map(|w| format!(" WHEN {w}")).unwrap_or_default();
        Trigger {
            sql: format!(
                "CREATE TRIGGER {} AFTER {event} ON {target}{when} BEGIN {body} END",
                quote(&trigger_name)
            ),
            name: trigger_name,
        }
    };
    vec![
        make(
            "insert",
            "INSERT".into(),
            None,
            format!("{refuse_null_key}{}", log(OP_INSERT, "NEW")),
        ),
        make(
            "update",
            "UPDATE".into(),
            None,
            format!("{refuse_null_key}{}", log(OP_UPDATE, "NEW")),
        ),
        // A primary-key change also deletes the row under its old key on the other nodes.
        make(
            "update_key",
            format!("UPDATE OF {pk_list}"),
            Some(pk_changed),
            log(OP_DELETE, "OLD"),
        ),
        make("delete", "DELETE".into(), None, log(OP_DELETE, "OLD")),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_hostile_names() {
        assert_eq!(quote("a\"b"), "\"a\"\"b\"");
        let table = TableInfo::new(
            "we\"ird table".into(),
            vec!["select".into(), "x".into()],
            vec!["select".into()],
        );
        let triggers = for_table(&table, 3);
        assert_eq!(triggers.len(), 4);
        assert!(triggers[0].sql.contains("ON \"we\"\"ird table\""));
        assert!(triggers[0].sql.contains("NEW.\"select\""));
        assert!(triggers[2]
            .sql
            .contains("OLD.\"select\" IS NOT NEW.\"select\""));
    }
}
