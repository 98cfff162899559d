//! Dependency waves: wave 1 holds credentials with no selected dependency, wave
//! N+1 those whose selected dependencies are all in waves 1..=N. Validation has
//! already refused cycles.

use crate::playbook::Playbook;
use rustc_hash::FxHashMap;

/// Groups the selected credential indices into waves, each in playbook order.
pub fn waves(playbook: &Playbook, selected: &[usize]) -> Vec<Vec<usize>> {
    let credentials = &playbook.credentials;
    let mut chosen = vec![false; credentials.len()];
    for &i in selected {
        chosen[i] = true;
    }
    let index: FxHashMap<&str, usize> = selected
        .iter()
        .map(|&i| (credentials[i].id.as_str(), i))
        .collect();
    // Edges dependency -> dependent, grouped by dependency (counting sort).
    let mut indegree = vec![0u32; credentials.len()];
    let mut edges: Vec<(u32, u32)> = Vec::new();
    for &i in selected {
        for dep in &credentials[i].depends_on {
            if let Some(&d) = index.get(dep.as_str())
                && d != i
                && chosen[d]
            {
                indegree[i] += 1;
                edges.push((d as u32, i as u32));
            }
        }
    }
    let mut start = vec![0u32; credentials.len() + 1];
    for &(d, _) in &edges {
        start[d as usize + 1] += 1;
    }
    for k in 1..start.len() {
        start[k] += start[k - 1];
    }
    let mut fill = start.clone();
    let mut dependents = vec![0u32; edges.len()];
    for &(d, i) in &edges {
        dependents[fill[d as usize] as usize] = i;
        fill[d as usize] += 1;
    }

    let mut current: Vec<usize> = selected
        .iter()
        .copied()
        .filter(|&i| indegree[i] == 0)
        .collect();
    let mut out = Vec::new();
    let mut placed = 0;
    while !current.is_empty() {
        current.sort_unstable();
        placed += current.len();
        let mut next = Vec::new();
        for &i in &current {
            for &t in &dependents[start[i] as usize..start[i + 1] as usize] {
                let t = t as usize;
                indegree[t] -= 1;
                if indegree[t] == 0 {
                    next.push(t);
                }
            }
        }
        out.push(std::mem::replace(&mut current, next));
    }
    if placed < selected.len() {
        // Unreachable after validation (no cycles); never lose a credential anyway.
        let mut rest: Vec<usize> = selected
            .iter()
            .copied()
            .filter(|&i| indegree[i] > 0)
            .collect();
        rest.sort_unstable();
        out.push(rest);
    }
    out
}
