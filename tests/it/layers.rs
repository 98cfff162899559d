//! The layering rule of ARCHITECTURE.md, checked: every `crate::<module>` path in
//! `src/**/*.rs` (imports and inline paths alike, test modules included) is an edge
//! between top-level modules; no module may reach one in a higher layer, and the
//! edges must form no circle. A new top-level module must be given a layer here.
//! Also: nothing but `src/env_vars.rs` reads the environment.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The top-level modules of `src/`, lowest layer first. A module may use modules
/// of lower layers, and of its own layer as long as that makes no circle; never
/// one above it.
const LAYERS: &[&[&str]] = &[
    // Leaves: no crate imports at all (secrets, the environment, exit codes, the
    // file checks, the rule for HTTP endpoints).
    &["secret", "env_vars", "exit", "files", "net", "protocol"],
    // The positioned-document toolkit: YAML with positions, diagnostics, rates.
    &["doc"],
    // What provider types exist and how their HTTP definitions read.
    &["catalog"],
    // Playbooks (load, validate), and the stores of state: Vault, the journal.
    &["playbook", "store", "journal"],
    // What the plan computes; the audit trail (the journal's mirror); the
    // process hardening that takes the playbook's secret variables.
    &["plan", "audit", "harden"],
    // The providers.
    &["provider"],
    // Where a promoted value is copied (borrows the provider error type).
    &["sink"],
    // The rotation engine.
    &["engine"],
    // What drives the engine from a terminal: progress, the command line, logs;
    // around runs: notifications, ages and last use (hygiene), discovery.
    &[
        "progress", "cli", "logging", "notify", "hygiene", "discover",
    ],
    // One function per command; `main.rs` and `lib.rs` sit above everything.
    &["commands"],
];

/// One use of a module by another: `from` (a top-level module) names `to` at
/// `file:line`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Edge {
    from: String,
    to: String,
    at: String,
}

/// The module path of a source file: `src/provider/http/mod.rs` is
/// `provider::http`, `src/secret.rs` is `secret`; `lib.rs` and `main.rs` are the
/// crate root (empty).
fn module_path(relative: &Path) -> Vec<String> {
    let mut parts: Vec<String> = relative
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if let Some(last) = parts.pop() {
        let stem = last.trim_end_matches(".rs").to_owned();
        if !matches!(stem.as_str(), "mod" | "lib" | "main") {
            parts.push(stem);
        }
    }
    parts
}

/// `line` without its comment and without the text of its string literals (a
/// path in a message or a URL is not an edge).
fn code_of(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars().peekable();
    let mut in_string = false;
    while let Some(c) = chars.next() {
        match (in_string, c) {
            (true, '\\') => {
                chars.next();
            }
            (true, '"') => in_string = false,
            (true, _) => {}
            (false, '"') => in_string = true,
            // A quote as a character (`'"'`) opens no string.
            (false, '\'') if chars.peek() == Some(&'"') => {
                chars.next();
            }
            (false, '/') if chars.peek() == Some(&'/') => break,
            (false, _) => out.push(c),
        }
    }
    out
}

/// The identifier at the start of `s`.
fn ident(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// Every edge between top-level modules in `files` (`(path under src/, text)`).
fn edges(files: &[(PathBuf, String)]) -> Vec<Edge> {
    let mut out = Vec::new();
    for (path, text) in files {
        let module = module_path(path);
        let Some(from) = module.first() else {
            continue; // lib.rs, main.rs: the root may use anything.
        };
        for (n, line) in text.lines().enumerate() {
            let code = code_of(line);
            let at = format!("src/{}:{}", path.display(), n + 1);
            let mut targets = Vec::new();
            for (i, _) in code.match_indices("crate::") {
                // `crate::` as a path start, not the end of another word.
                let before = code[..i].chars().next_back();
                if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                    continue;
                }
                targets.push(ident(&code[i + "crate::".len()..]).to_owned());
            }
            // `super::super::x` from a file deep enough reaches the crate root.
            for (i, _) in code.match_indices("super::") {
                let before = code[..i].chars().next_back();
                if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
                    continue;
                }
                let mut rest = &code[i..];
                let mut ups = 0;
                while let Some(r) = rest.strip_prefix("super::") {
                    ups += 1;
                    rest = r;
                }
                if ups >= module.len() {
                    targets.push(ident(rest).to_owned());
                }
            }
            for to in targets {
                if !to.is_empty() && &to != from {
                    out.push(Edge {
                        from: from.clone(),
                        to,
                        at: at.clone(),
                    });
                }
            }
        }
    }
    out
}

/// What breaks the rule: modules with no layer, upward edges, circles.
fn violations(edges: &[Edge], layers: &[&[&str]]) -> Vec<String> {
    let layer_of = |m: &str| layers.iter().position(|l| l.contains(&m));
    let mut out = BTreeSet::new();
    for e in edges {
        match (layer_of(&e.from), layer_of(&e.to)) {
            (None, _) => {
                out.insert(format!("module `{}` has no layer in LAYERS", e.from));
            }
            (_, None) => {
                out.insert(format!("module `{}` has no layer in LAYERS", e.to));
            }
            (Some(from), Some(to)) if to > from => {
                out.insert(format!(
                    "{}: `{}` (layer {from}) uses `{}` (layer {to}), a higher layer",
                    e.at, e.from, e.to
                ));
            }
            _ => {}
        }
    }
    // Circles: a depth-first walk over the module graph.
    let mut graph: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for e in edges {
        graph.entry(&e.from).or_default().insert(&e.to);
    }
    fn walk<'a>(
        node: &'a str,
        graph: &BTreeMap<&'a str, BTreeSet<&'a str>>,
        stack: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
        found: &mut BTreeSet<String>,
    ) {
        if let Some(i) = stack.iter().position(|n| *n == node) {
            let mut circle = stack[i..].to_vec();
            circle.push(node);
            found.insert(format!("circle: {}", circle.join(" -> ")));
            return;
        }
        if !done.insert(node) {
            return;
        }
        stack.push(node);
        for next in graph.get(node).into_iter().flatten() {
            walk(next, graph, stack, done, found);
        }
        stack.pop();
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        walk(node, &graph, &mut Vec::new(), &mut done, &mut out);
    }
    out.into_iter().collect()
}

/// `(path under src/, text)` of every `.rs` file of `src/`.
fn sources() -> Vec<(PathBuf, String)> {
    let src = crate::support::repo_root().join("src");
    let mut out = Vec::new();
    let mut dirs = vec![src.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                out.push((path.strip_prefix(&src).unwrap().to_path_buf(), text));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn no_module_uses_a_higher_layer_and_no_imports_make_a_circle() {
    let files = sources();
    let edges = edges(&files);
    assert!(
        edges
            .iter()
            .any(|e| e.from == "engine" && e.to == "journal"),
        "the scan finds the engine's use of the journal"
    );
    let problems = violations(&edges, LAYERS);
    assert!(
        problems.is_empty(),
        "the layering rule (ARCHITECTURE.md) is broken:\n{}",
        problems.join("\n")
    );
    // Every top-level module has a layer, and every layer names a real module.
    let modules: BTreeSet<String> = files
        .iter()
        .filter_map(|(p, _)| module_path(p).first().cloned())
        .collect();
    let listed: BTreeSet<String> = LAYERS
        .iter()
        .flat_map(|l| l.iter().map(|m| m.to_string()))
        .collect();
    assert_eq!(modules, listed, "LAYERS lists exactly the modules of src/");
}

#[test]
fn the_layering_check_finds_upward_uses_circles_and_unknown_modules() {
    let file = |path: &str, text: &str| (PathBuf::from(path), text.to_owned());
    let files = [
        file(
            "low.rs",
            "use crate::high::Thing; // crate::ignored in a comment\n",
        ),
        file(
            "high/mod.rs",
            "let x = crate::low::f(\"crate::not_code\");\n",
        ),
        file("high/deep/mod.rs", "use super::super::side::Y;\n"),
        file("side.rs", "use crate::high::Z;\n"),
        file("lib.rs", "pub use crate::anything;\n"),
    ];
    let edges = edges(&files);
    let shown: Vec<(&str, &str)> = edges
        .iter()
        .map(|e| (e.from.as_str(), e.to.as_str()))
        .collect();
    assert_eq!(
        shown,
        [
            ("low", "high"),
            ("high", "low"),
            ("high", "side"),
            ("side", "high")
        ]
    );
    let problems = violations(&edges, &[&["low"], &["high", "side"]]);
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("src/low.rs:1: `low` (layer 0) uses `high` (layer 1)")),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p == "circle: high -> low -> high"),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p == "circle: high -> side -> high"),
        "{problems:?}"
    );
    let problems = violations(&edges, &[&["low", "high"]]);
    assert!(
        problems.iter().any(|p| p.contains("`side` has no layer")),
        "{problems:?}"
    );
}

#[test]
fn only_env_vars_reads_the_environment() {
    let readers: Vec<String> = sources()
        .iter()
        .filter(|(path, _)| path != Path::new("env_vars.rs"))
        .flat_map(|(path, text)| {
            text.lines().enumerate().filter_map(move |(n, line)| {
                let code = code_of(line);
                (code.contains("env::var") || code.contains("env::vars"))
                    .then(|| format!("src/{}:{}: {}", path.display(), n + 1, line.trim()))
            })
        })
        .collect();
    assert!(
        readers.is_empty(),
        "read the environment through src/env_vars.rs (a documented constant, or `get` for a name the playbook gives):\n{}",
        readers.join("\n")
    );
}
