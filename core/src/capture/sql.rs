//! SQL text helpers: quoted identifiers and key filters.

/// SQL identifier quoting: wrap in double quotes, double any inner quote.
pub fn quote(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}

/// `"a" IS ?1 AND "b" IS ?2`: selects one row by its key (`IS`, so a NULL key part still matches).
pub fn key_filter(pk: &[String]) -> String {
    pk.iter()
        .enumerate()
        .map(|(i, c)| format!("{} IS ?{}", quote(c), i + 1))
        .collect::<Vec<_>>()
        .join(" AND ")
}
