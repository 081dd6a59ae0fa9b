//! Which top-level keys a user's nats-server configuration sets, following its `include`s.
//!
//! nats-server reads a config into a map and applies its keys in Go map order, which is random. The
//! same key written twice is harmless (the later one replaces the earlier while parsing, so the
//! included user file wins), but two *different* keys for one setting (the generated `http` and a
//! user's `monitor_port`) are applied in a different order on every start. So for such settings the
//! generated key is left out when the user sets any key of the group; to know that, this scanner
//! reads just enough of the format: comments, quoted strings, nesting, `include`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// How deep `include`s are followed (nats-server itself has no limit but rejects cycles).
const MAX_INCLUDE_DEPTH: usize = 10;

/// Lower-cased top-level keys of `text` (the contents of a file in `dir`) and of the files it
/// includes. An include that cannot be read is skipped: nats-server reports it itself, by name.
pub(crate) fn top_level_keys(text: &str, dir: &Path) -> HashSet<String> {
    let mut keys = HashSet::new();
    let mut seen = HashSet::new();
    scan(text, dir, &mut keys, &mut seen, 0);
    keys
}

fn scan(
    text: &str,
    dir: &Path,
    keys: &mut HashSet<String>,
    seen: &mut HashSet<PathBuf>,
    depth: usize,
) {
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() || c == ';' || c == ',' {
            i += 1;
            continue;
        }
        if is_comment_start(&chars, i) {
            i = end_of_line(&chars, i);
            continue;
        }
        let (key, after) = read_key(&chars, i);
        if key.is_empty() {
            // A stray closing bracket or separator: skip it.
            i = after.max(i + 1);
            continue;
        }
        let key = key.to_lowercase();
        if key == "include" {
            let (path, end) = read_include_path(&chars, after);
            if !path.is_empty() && depth < MAX_INCLUDE_DEPTH {
                follow(dir.join(path), keys, seen, depth + 1);
            }
            i = end;
            continue;
        }
        keys.insert(key);
        i = skip_value(&chars, after);
    }
}

fn follow(path: PathBuf, keys: &mut HashSet<String>, seen: &mut HashSet<PathBuf>, depth: usize) {
    let Ok(path) = std::fs::canonicalize(&path) else {
        return;
    };
    if !seen.insert(path.clone()) {
        return;
    }
    let Ok(text) = std::fs::read_to_string(&path) else {
        return;
    };
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    scan(&text, &dir, keys, seen, depth);
}

/// The path of an `include`: quoted, or up to whitespace or `;`.
fn read_include_path(chars: &[char], from: usize) -> (String, usize) {
    let start = chars[from..]
        .iter()
        .position(|c| *c == '\n' || !c.is_whitespace())
        .map_or(chars.len(), |p| from + p);
    match chars.get(start) {
        Some(quote @ ('"' | '\'')) => {
            let end = chars[start + 1..]
                .iter()
                .position(|c| c == quote || *c == '\n')
                .map_or(chars.len(), |p| start + 1 + p);
            (chars[start + 1..end].iter().collect(), end + 1)
        }
        _ => {
            let end = chars[start..]
                .iter()
                .position(|c| c.is_whitespace() || matches!(c, ';' | '#'))
                .map_or(chars.len(), |p| start + p);
            (chars[start..end].iter().collect(), end)
        }
    }
}

fn is_comment_start(chars: &[char], i: usize) -> bool {
    chars[i] == '#' || (chars[i] == '/' && chars.get(i + 1) == Some(&'/'))
}

fn end_of_line(chars: &[char], from: usize) -> usize {
    chars[from..]
        .iter()
        .position(|c| *c == '\n')
        .map_or(chars.len(), |p| from + p)
}

/// A key: quoted, or up to whitespace, `:`, `=` or an opening bracket.
fn read_key(chars: &[char], start: usize) -> (String, usize) {
    if let Some(quote) = chars.get(start).filter(|c| **c == '"' || **c == '\'') {
        let end = chars[start + 1..]
            .iter()
            .position(|c| c == quote)
            .map_or(chars.len(), |p| start + 1 + p);
        let key = chars[start + 1..end].iter().collect();
        return (key, (end + 1).min(chars.len()));
    }
    let end = chars[start..]
        .iter()
        .position(|c| {
            c.is_whitespace() || matches!(c, ':' | '=' | '{' | '[' | '}' | ']' | ';' | ',' | '#')
        })
        .map_or(chars.len(), |p| start + p);
    (chars[start..end].iter().collect(), end)
}

/// Skips a value (a scalar, a string, or a nested block or array) and returns where the next
/// top-level statement may begin.
fn skip_value(chars: &[char], from: usize) -> usize {
    let mut depth = 0usize;
    let mut i = from;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' => {
                i += 1;
                while i < chars.len() && chars[i] != c {
                    if c == '"' && chars[i] == '\\' {
                        i += 1;
                    }
                    i += 1;
                }
            }
            '{' | '[' | '(' => depth += 1,
            '}' | ']' | ')' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return i + 1;
                }
            }
            // `//` only after whitespace: in an unquoted URL (`nats://host`) it is no comment.
            '#' => i = end_of_line(chars, i).saturating_sub(1),
            '/' if chars.get(i + 1) == Some(&'/')
                && i.checked_sub(1).is_none_or(|p| chars[p].is_whitespace()) =>
            {
                i = end_of_line(chars, i).saturating_sub(1)
            }
            '\n' | ';' | ',' if depth == 0 => return i + 1,
            _ => {}
        }
        i += 1;
    }
    chars.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(text: &str) -> Vec<String> {
        let mut keys: Vec<String> = top_level_keys(text, Path::new("/nonexistent"))
            .into_iter()
            .collect();
        keys.sort();
        keys
    }

    #[test]
    fn finds_top_level_keys_only() {
        let text = "\
# a comment: http: 1
Monitor_Port: 8222
max_connections = 10; debug true
\"quoted key\": 1
authorization {
  user: app   # not top level
  http_port: 1
}
routes_list: [nats://a:1, // no comment inside a URL
  nats://b:2]
// http: nope
tls { cert_file: \"a}b\" }
lame_duck_duration: \"30s\"
";
        assert_eq!(
            keys(text),
            [
                "authorization",
                "debug",
                "lame_duck_duration",
                "max_connections",
                "monitor_port",
                "quoted key",
                "routes_list",
                "tls"
            ]
        );
    }

    #[test]
    fn follows_includes_relative_to_the_including_file() {
        let dir = tempfile::tempdir().expect("tmp");
        let sub = dir.path().join("sub");
        std::fs::create_dir_all(&sub).expect("mkdir");
        std::fs::write(
            sub.join("inner.conf"),
            "http: 127.0.0.1:9\ninclude ../outer.conf\n",
        )
        .expect("write");
        std::fs::write(
            dir.path().join("outer.conf"),
            "include 'sub/inner.conf'; port: 1\n",
        )
        .expect("write");
        let text = "include \"outer.conf\" # ours\ninclude missing.conf\nmax_payload: 1\n";
        let mut found: Vec<String> = top_level_keys(text, dir.path()).into_iter().collect();
        found.sort();
        assert_eq!(found, ["http", "max_payload", "port"]);
    }
}
