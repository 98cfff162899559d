//! Which credentials a run touches: `--compromised`, `--tag`, `--only`.

use crate::doc::diagnostic::did_you_mean;
use crate::playbook::Playbook;
use serde::Serialize;

/// Selection flags. Within one flag the values are alternatives (any matches);
/// different flags narrow each other (all must match). Empty selects everything.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    pub compromised: Vec<String>,
    pub tags: Vec<String>,
    pub only: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct SelectionSummary {
    pub compromised: Vec<String>,
    pub tags: Vec<String>,
    pub only: Vec<String>,
    pub selected: usize,
    pub total: usize,
    /// Selected credentials that depend on credentials left out of the selection:
    /// those dependencies are not rotated by this run.
    pub unselected_dependencies: Vec<String>,
}

pub struct Selected {
    pub indices: Vec<usize>,
    pub summary: SelectionSummary,
}

/// A selection flag value that matches nothing in the playbook: almost always a
/// typo, and in a breach a typo that silently rotates nothing is dangerous.
#[derive(Debug, thiserror::Error)]
#[error("{flag} `{value}` matches nothing in the playbook{}", hint.as_ref().map(|h| format!(" (did you mean `{h}`?)")).unwrap_or_default())]
pub struct SelectionError {
    pub flag: &'static str,
    pub value: String,
    pub hint: Option<String>,
}

/// Checks that every selection value names something in the playbook.
pub fn check(playbook: &Playbook, selection: &Selection) -> Result<(), Vec<SelectionError>> {
    let mut errors = Vec::new();
    let mut tied: Vec<&str> = playbook
        .credentials
        .iter()
        .flat_map(|c| c.tied_to.iter().map(String::as_str))
        .collect();
    tied.extend(playbook.incident.compromised.iter().map(String::as_str));
    let tags: Vec<&str> = playbook
        .credentials
        .iter()
        .flat_map(|c| c.tags.iter().map(String::as_str))
        .collect();
    let ids: Vec<&str> = playbook.credentials.iter().map(|c| c.id.as_str()).collect();
    for (flag, values, known) in [
        ("--compromised", &selection.compromised, &tied),
        ("--tag", &selection.tags, &tags),
        ("--only", &selection.only, &ids),
    ] {
        for v in values {
            if !known.contains(&v.as_str()) {
                errors.push(SelectionError {
                    flag,
                    value: v.clone(),
                    hint: did_you_mean(v, known.iter().copied()),
                });
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

pub fn apply(playbook: &Playbook, selection: &Selection) -> Selected {
    let indices: Vec<usize> = playbook
        .credentials
        .iter()
        .enumerate()
        .filter(|(_, c)| {
            selection.compromised.is_empty()
                || c.tied_to.iter().any(|t| selection.compromised.contains(t))
        })
        .filter(|(_, c)| {
            selection.tags.is_empty() || c.tags.iter().any(|t| selection.tags.contains(t))
        })
        .filter(|(_, c)| selection.only.is_empty() || selection.only.contains(&c.id))
        .map(|(i, _)| i)
        .collect();
    let chosen: rustc_hash::FxHashSet<&str> = indices
        .iter()
        .map(|&i| playbook.credentials[i].id.as_str())
        .collect();
    let mut unselected_dependencies: Vec<String> = indices
        .iter()
        .flat_map(|&i| playbook.credentials[i].depends_on.iter())
        .filter(|d| !chosen.contains(d.as_str()))
        .cloned()
        .collect();
    unselected_dependencies.sort();
    unselected_dependencies.dedup();
    Selected {
        summary: SelectionSummary {
            compromised: selection.compromised.clone(),
            tags: selection.tags.clone(),
            only: selection.only.clone(),
            selected: indices.len(),
            total: playbook.credentials.len(),
            unselected_dependencies,
        },
        indices,
    }
}
