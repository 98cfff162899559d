//! Dependency waves: wave 1 holds credentials with no selected dependency, wave
//! N+1 those whose selected dependencies are all in waves 1..=N. Validation has
//! already refused cycles.

use crate::playbook::Playbook;
use std::collections::HashMap;

/// Groups the selected credential indices into waves, each in playbook order.
pub fn waves(playbook: &Playbook, selected: &[usize]) -> Vec<Vec<usize>> {
    let position: HashMap<&str, usize> = selected.iter().map(|&i| (playbook.credentials[i].id.as_str(), i)).collect();
    let mut indegree: HashMap<usize, usize> = selected.iter().map(|&i| (i, 0)).collect();
    let mut dependents: HashMap<usize, Vec<usize>> = HashMap::new();
    for &i in selected {
        for dep in &playbook.credentials[i].depends_on {
            if let Some(&d) = position.get(dep.as_str()) {
                if d != i {
                    *indegree.entry(i).or_default() += 1;
                    dependents.entry(d).or_default().push(i);
                }
            }
        }
    }
    let mut current: Vec<usize> = selected.iter().copied().filter(|i| indegree[i] == 0).collect();
    let mut out = Vec::new();
    let mut placed = 0;
    while !current.is_empty() {
        current.sort_unstable();
        placed += current.len();
        let mut next = Vec::new();
        for &i in &current {
            for &t in dependents.get(&i).map(Vec::as_slice).unwrap_or(&[]) {
                let d = indegree.get_mut(&t).expect("every dependent is selected");
                *d -= 1;
                if *d == 0 {
                    next.push(t);
                }
            }
        }
        out.push(std::mem::replace(&mut current, next));
    }
    debug_assert_eq!(placed, selected.len(), "validation refuses cycles");
    out
}
