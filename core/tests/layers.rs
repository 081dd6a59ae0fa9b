//! The source files of core/src import downwards: no file reaches, through `crate::…` and `super::…` paths,
//! a file that reaches it back. An import circle is where a change to one stage of the pipeline starts to
//! need changes in the others; this test names the files of any circle that appears.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn source_files(dir: &Path, root: &Path, out: &mut BTreeMap<String, String>) {
    for entry in std::fs::read_dir(dir).expect("read core/src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            source_files(&path, root, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let relative = path
                .strip_prefix(root)
                .expect("under core/src")
                .to_string_lossy()
                .replace('\\', "/");
            let text = std::fs::read_to_string(&path).expect("read source");
            // Unit tests may reach anywhere.
            let text = match text.find("#[cfg(test)]\nmod tests") {
                Some(at) => text[..at].to_string(),
                None => text,
            };
            out.insert(relative, text);
        }
    }
}

/// The file a module path (`apply::applier::Incoming`) names: the longest prefix that is a file.
fn file_of(path: &[&str], files: &BTreeMap<String, String>) -> Option<String> {
    (1..=path.len()).rev().find_map(|n| {
        let base = path[..n].join("/");
        [format!("{base}.rs"), format!("{base}/mod.rs")]
            .into_iter()
            .find(|candidate| files.contains_key(candidate))
    })
}

fn identifier_chars(text: &str) -> &str {
    let end = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(text.len());
    &text[..end]
}

/// What each file imports: every `crate::a::b` path, `use crate::a::{b, c}` groups, and `super::x` in a
/// file beside `x.rs`.
fn imports(files: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (file, text) in files {
        let edges = graph.entry(file.clone()).or_default();
        for (at, _) in text.match_indices("crate::") {
            let rest = &text[at + "crate::".len()..];
            let head = identifier_chars(rest).trim_end_matches(':');
            let segments: Vec<&str> = head.split("::").filter(|s| !s.is_empty()).collect();
            let after = &rest[head.len()..];
            let group = after
                .strip_prefix("::{")
                .or_else(|| after.strip_prefix('{'))
                .and_then(|g| g.split_once('}'))
                .map(|(items, _)| items);
            let mut targets = Vec::new();
            match group {
                Some(items) => {
                    for item in items.split(',') {
                        let item = identifier_chars(item.trim());
                        let mut path = segments.clone();
                        path.extend(item.split("::").filter(|s| !s.is_empty()));
                        targets.push(path);
                    }
                }
                None => targets.push(segments),
            }
            for path in targets {
                if let Some(target) = file_of(&path, files) {
                    if &target != file {
                        edges.insert(target);
                    }
                }
            }
        }
        if !file.ends_with("mod.rs") {
            let folder = Path::new(file).parent().unwrap_or(Path::new(""));
            for (at, _) in text.match_indices("super::") {
                let name = identifier_chars(&text[at + "super::".len()..])
                    .split("::")
                    .next()
                    .unwrap_or("");
                let sibling = folder.join(format!("{name}.rs"));
                let sibling = sibling.to_string_lossy().replace('\\', "/");
                if files.contains_key(&sibling) && &sibling != file {
                    edges.insert(sibling);
                }
            }
        }
    }
    graph
}

/// Strongly connected components with more than one file (Tarjan).
fn circles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct Walk<'g> {
        graph: &'g BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on_stack: BTreeSet<&'g str>,
        found: Vec<Vec<String>>,
    }
    impl<'g> Walk<'g> {
        fn visit(&mut self, v: &'g str) {
            let i = self.index.len();
            self.index.insert(v, i);
            self.low.insert(v, i);
            self.stack.push(v);
            self.on_stack.insert(v);
            for w in self.graph.get(v).into_iter().flatten() {
                let w = w.as_str();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w]);
                    self.low.insert(v, low);
                } else if self.on_stack.contains(w) {
                    let low = self.low[v].min(self.index[w]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    component.push(w.to_string());
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.found.push(component);
                }
            }
        }
    }
    let mut walk = Walk {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !walk.index.contains_key(v.as_str()) {
            walk.visit(v);
        }
    }
    walk.found
}

#[test]
fn core_source_files_import_without_circles() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = BTreeMap::new();
    source_files(&root, &root, &mut files);
    let graph = imports(&files);
    let edges: usize = graph.values().map(BTreeSet::len).sum();
    assert!(
        files.len() > 40 && edges > 100,
        "the walk found {} files and {edges} imports: it no longer reads the sources",
        files.len()
    );
    let found = circles(&graph);
    let described: Vec<String> = found
        .iter()
        .map(|circle| {
            circle
                .iter()
                .map(|f| {
                    format!(
                        "{f} → {:?}",
                        graph[f]
                            .intersection(&circle.iter().cloned().collect())
                            .collect::<Vec<_>>()
                    )
                })
                .collect::<Vec<_>>()
                .join("\n  ")
        })
        .collect();
    assert!(
        found.is_empty(),
        "core/src files that import each other (move what they share into a module below both):\n  {}",
        described.join("\n\n  ")
    );
}

#[test]
fn a_circle_is_found_when_there_is_one() {
    let mut files = BTreeMap::new();
    files.insert("a.rs".to_string(), "use crate::b::Thing;".to_string());
    files.insert("b.rs".to_string(), "use crate::{a::Other, c};".to_string());
    files.insert("c.rs".to_string(), "fn f() {}".to_string());
    let graph = imports(&files);
    assert_eq!(
        circles(&graph),
        vec![vec!["a.rs".to_string(), "b.rs".to_string()]]
    );
}

/// The top-level module a file belongs to: `apply/merge.rs` → `apply`, `engine.rs` → `engine`.
fn top_module(file: &str) -> String {
    let first = file.split('/').next().unwrap_or(file);
    first.trim_end_matches(".rs").to_string()
}

/// Folders point downwards too: a stage of the pipeline (a folder) whose files reach another folder that
/// reaches it back is one stage in two places, even when no two files form a circle.
#[test]
fn core_top_level_modules_import_without_circles() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = BTreeMap::new();
    source_files(&root, &root, &mut files);
    let mut modules: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (file, targets) in imports(&files) {
        if file == "lib.rs" {
            continue; // the crate root declares and re-exports every module
        }
        let from = top_module(&file);
        let edges = modules.entry(from.clone()).or_default();
        edges.extend(
            targets
                .iter()
                .map(|target| top_module(target))
                .filter(|to| *to != from && to != "lib"),
        );
    }
    assert!(
        modules.len() > 15,
        "found {} top-level modules",
        modules.len()
    );
    let found = circles(&modules);
    let described: Vec<String> = found
        .iter()
        .map(|circle| {
            let members: BTreeSet<String> = circle.iter().cloned().collect();
            circle
                .iter()
                .map(|m| {
                    format!(
                        "{m} → {:?}",
                        modules[m].intersection(&members).collect::<Vec<_>>()
                    )
                })
                .collect::<Vec<_>>()
                .join("\n  ")
        })
        .collect();
    assert!(
        found.is_empty(),
        "core/src modules that import each other (move the half that depends on the other into its own \
         module):\n  {}",
        described.join("\n\n  ")
    );
}
