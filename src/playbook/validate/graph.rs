//! The dependency graph: references to unknown credentials, and cycles.

use super::Ctx;
use crate::doc::diagnostic::{Diagnostic, did_you_mean};
use crate::playbook::model::RawCredential;
use rustc_hash::FxHashMap as HashMap;

/// References to credentials that do not exist, reported once every id is known
/// (`ids`: each credential's id and index).
pub(super) fn unknown_dependencies(
    cx: &mut Ctx,
    credentials: &[RawCredential],
    ids: &HashMap<&str, usize>,
) {
    // Finding a suggestion compares against every id: done for the first few only,
    // so a playbook with thousands of bad references still loads in time.
    let known: Vec<&str> = credentials.iter().map(|c| c.id.as_str()).collect();
    let mut suggestions_left = 20;
    for (i, c) in credentials.iter().enumerate() {
        for (j, dep) in c.depends_on.iter().enumerate() {
            if !ids.contains_key(dep.as_str()) {
                let mut d = Diagnostic::error(
                    format!(
                        "credential `{}` depends on unknown credential `{dep}`",
                        c.id
                    ),
                    cx.at(&format!("/credentials/{i}/depends_on/{j}")),
                )
                .label("no credential has this id");
                let suggestion = if suggestions_left > 0 {
                    suggestions_left -= 1;
                    did_you_mean(dep, known.iter().copied())
                } else {
                    None
                };
                d = match suggestion {
                    Some(best) => d.help(format!("did you mean `{best}`?")),
                    None => d.help("depends_on lists ids of other credentials in this playbook"),
                };
                cx.push(d);
            }
        }
    }
}

/// Cycles reported in one run: enough to act on, bounded for pathological input.
const MAX_CYCLES_REPORTED: usize = 20;

/// Finds dependency cycles (iteratively: a 100,000-long chain must not overflow the
/// stack) and reports each once, printing the cycle.
pub(super) fn find_cycles(cx: &Ctx, credentials: &[RawCredential]) -> Option<Vec<Diagnostic>> {
    let index: HashMap<&str, usize> = credentials
        .iter()
        .enumerate()
        .map(|(i, c)| (c.id.as_str(), i))
        .collect();
    let edges: Vec<Vec<(usize, usize)>> = credentials
        .iter()
        .map(|c| {
            c.depends_on
                .iter()
                .enumerate()
                .filter_map(|(j, d)| index.get(d.as_str()).map(|&t| (t, j)))
                .filter(|(t, _)| credentials[*t].id != c.id)
                .collect()
        })
        .collect();
    #[derive(Clone, Copy, PartialEq)]
    enum Color {
        White,
        Grey,
        Black,
    }
    let mut color = vec![Color::White; credentials.len()];
    let mut out = Vec::new();
    for start in 0..credentials.len() {
        if color[start] != Color::White {
            continue;
        }
        // Stack of (node, next edge to explore).
        let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
        color[start] = Color::Grey;
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            if let Some(&(target, dep_index)) = edges[node].get(*next) {
                *next += 1;
                match color[target] {
                    Color::White => {
                        color[target] = Color::Grey;
                        stack.push((target, 0));
                    }
                    Color::Grey if out.len() >= MAX_CYCLES_REPORTED => {}
                    Color::Grey => {
                        let from = stack.iter().position(|(n, _)| *n == target).unwrap_or(0);
                        let cycle = &stack[from..];
                        let mut names: Vec<&str> = if cycle.len() > 12 {
                            // Long cycles: the ends, and how many in between.
                            let mut v: Vec<&str> = cycle[..5]
                                .iter()
                                .map(|(n, _)| credentials[*n].id.as_str())
                                .collect();
                            v.push("…");
                            v.extend(
                                cycle[cycle.len() - 5..]
                                    .iter()
                                    .map(|(n, _)| credentials[*n].id.as_str()),
                            );
                            v
                        } else {
                            cycle
                                .iter()
                                .map(|(n, _)| credentials[*n].id.as_str())
                                .collect()
                        };
                        names.push(&credentials[target].id);
                        let length = if cycle.len() > 12 {
                            format!(" ({} credentials)", cycle.len())
                        } else {
                            String::new()
                        };
                        out.push(
                            Diagnostic::error(format!("dependency cycle{length}: {}", names.join(" → ")), cx.at(&format!("/credentials/{node}/depends_on/{dep_index}")))
                                .label("closes the cycle")
                                .help("remove one `depends_on` entry of the cycle; rekey rotates dependencies first, so a cycle can never start"),
                        );
                    }
                    Color::Black => {}
                }
            } else {
                color[node] = Color::Black;
                stack.pop();
            }
        }
    }
    if out.is_empty() { None } else { Some(out) }
}
