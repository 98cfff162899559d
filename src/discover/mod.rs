//! `rekey discover`: the first hour of a breach is spent finding what is tied to
//! the compromised vendor. This writes a draft playbook from what exists:
//!
//! - a Vault/OpenBao KV v2 mount (`vault`): entries mapped by rekey's own
//!   custom metadata, the documented convention (`provider`, `tied_to`,
//!   `account`) or the shape of their fields (`shapes`);
//! - provider instances given on the command line that can list accounts and
//!   keys (`Provider::list_accounts`, `list`);
//! - secret-scanner reports (`scanners`: gitleaks, trufflehog).
//!
//! Every entry carries comments saying where it came from and what to check.
//! What cannot be rotated automatically (no instance of its type declared, no
//! account, an unknown kind of secret) becomes a manual step with what is
//! known, so the draft always passes `rekey plan`.
//!
//! Invariant: no secret value is kept, printed or written into the draft:
//! values are looked at in place by `shapes` and dropped.

pub mod scanners;
pub mod shapes;
pub mod vault;

use crate::catalog::{Catalog, Need};
use crate::playbook::AdminSource;
use indexmap::IndexMap;
use serde_json::Value;
use std::fmt::Write as _;

/// A provider instance given on the command line.
#[derive(Clone, Debug)]
pub struct InstanceSpec {
    pub name: String,
    pub type_name: String,
    pub settings: IndexMap<String, Value>,
    pub admin: Option<AdminSource>,
}

/// What a provider instance listed: an account (or none: the instance's own
/// keys) and its keys.
#[derive(Clone, Debug)]
pub struct Listed {
    pub instance: String,
    pub account: Option<String>,
    pub keys: Vec<crate::provider::KeyInfo>,
}

/// One credential of the draft.
#[derive(Clone, Debug, Default)]
pub struct Entry {
    pub id: String,
    /// The declared instance that rotates it; `None`: a manual step.
    pub instance: Option<String>,
    pub type_name: Option<String>,
    pub vendor: String,
    /// What it is, for people.
    pub what: String,
    pub account: Option<String>,
    pub vault_path: String,
    /// Whether `vault_path` is a placeholder (nothing in Vault was found).
    pub vault_path_guessed: bool,
    pub key_id: Option<String>,
    pub tied_to: Vec<String>,
    /// Where it came from, one line each.
    pub sources: Vec<String>,
    /// What a reviewer must check, one line each.
    pub checks: Vec<String>,
}

/// The draft playbook.
#[derive(Debug, Default)]
pub struct Draft {
    pub name: String,
    pub mount: String,
    pub compromised: Vec<String>,
    pub instances: Vec<InstanceSpec>,
    pub entries: Vec<Entry>,
    /// Header lines: what was looked at.
    pub notes: Vec<String>,
}

/// A credential id from free text: letters, digits, `-`, `_`, `.`.
pub fn id_from(text: &str) -> String {
    let mut id: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect();
    while id.contains("--") {
        id = id.replace("--", "-");
    }
    let id = id.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    let mut id: String = id.chars().take(100).collect();
    if id.is_empty() {
        id = "credential".into();
    }
    id
}

impl Draft {
    /// Gives every entry a unique id (a suffix on repeats).
    fn unique_ids(&mut self) {
        let mut seen: IndexMap<String, usize> = IndexMap::new();
        for e in &mut self.entries {
            let n = seen.entry(e.id.clone()).or_insert(0);
            *n += 1;
            if *n > 1 {
                e.id = format!("{}-{}", e.id, n);
            }
        }
    }

    /// Marks the entries tied to the compromised vendors: their vendor, their
    /// instance's name, or a `tied_to` in their Vault metadata.
    fn mark_compromised(&mut self) {
        for e in &mut self.entries {
            for v in &self.compromised {
                let tied = e.vendor.eq_ignore_ascii_case(v)
                    || e.instance
                        .as_deref()
                        .is_some_and(|i| i.eq_ignore_ascii_case(v))
                    || e.tied_to.iter().any(|t| t.eq_ignore_ascii_case(v));
                if tied && !e.tied_to.iter().any(|t| t == v) {
                    e.tied_to.push(v.clone());
                }
            }
        }
    }
}

/// Merges what was found into a draft: Vault entries, provider listings and
/// scanner findings joined on key ids; entries assigned to declared instances
/// where their type, account and settings allow, manual steps otherwise.
pub fn assemble(
    mut draft: Draft,
    catalog: &Catalog,
    found: &[vault::Found],
    listed: &[Listed],
    findings: &[scanners::Finding],
) -> Draft {
    let mut claimed: Vec<(String, String)> = Vec::new();
    // Vault entries.
    for f in found.iter().filter(|f| f.problem.is_none()) {
        let meta = |k: &str| f.metadata.get(k).cloned();
        let mut e = Entry {
            vault_path: f.path.clone(),
            key_id: f.key_id.clone(),
            account: meta("account").or_else(|| f.account.clone()),
            ..Entry::default()
        };
        let mut how = Vec::new();
        if let Some(cred) = meta("rekey_credential") {
            e.id = id_from(&cred);
            how.push(format!(
                "rekey's metadata: credential `{cred}`{}{}",
                meta("rekey_provider")
                    .map(|p| format!(", instance `{p}`"))
                    .unwrap_or_default(),
                meta("rekey_playbook")
                    .map(|p| format!(", playbook `{p}`"))
                    .unwrap_or_default()
            ));
            if let Some(p) = meta("rekey_provider") {
                if draft.instances.iter().any(|i| i.name == p) {
                    e.instance = Some(p);
                } else {
                    e.checks.push(format!(
                        "rekey rotated it before through instance `{p}`{}: declare that instance (`rekey discover --instance {p}=TYPE --setting ... --admin ...`) to rotate it here",
                        meta("rekey_playbook")
                            .map(|b| format!(" of playbook `{b}`"))
                            .unwrap_or_default()
                    ));
                }
            }
        } else {
            e.id = id_from(&f.path);
        }
        if let Some(t) = meta("provider") {
            // The convention names a type, or an instance.
            if let Some(i) = draft.instances.iter().find(|i| i.name == t) {
                e.instance = Some(i.name.clone());
                e.type_name = Some(i.type_name.clone());
            } else if t != crate::playbook::validate::MANUAL && catalog.get(&t).is_some() {
                e.type_name = Some(t.clone());
            }
            how.push(format!("metadata `provider: {t}`"));
        }
        if let Some(t) = meta("tied_to") {
            e.tied_to = t
                .split([',', ' '])
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            how.push(format!("metadata `tied_to: {t}`"));
        }
        if let Some(s) = &f.shape {
            if e.type_name.is_none() {
                e.type_name = s.type_name.map(str::to_owned);
            }
            e.vendor = s.vendor.to_owned();
            e.what = s.what.to_owned();
            how.push(format!("its data looks like {}", s.what));
        }
        if let Some(i) = &e.instance
            && e.type_name.is_none()
        {
            e.type_name = draft
                .instances
                .iter()
                .find(|x| &x.name == i)
                .map(|x| x.type_name.clone());
        }
        if e.vendor.is_empty() {
            e.vendor = e
                .type_name
                .as_deref()
                .map(shapes::vendor_of)
                .unwrap_or("unknown")
                .to_owned();
        }
        if how.is_empty() {
            how.push(format!(
                "nothing says what it is (fields: {})",
                f.fields.join(", ")
            ));
        }
        e.sources.push(format!(
            "Vault {}/{}: {}{}",
            draft.mount,
            f.path,
            how.join("; "),
            if f.read_data {
                String::new()
            } else {
                " (data not read: the metadata said enough)".into()
            }
        ));
        // A key the provider lists names its account.
        if let Some(k) = &e.key_id
            && let Some(l) = listed.iter().find(|l| l.keys.iter().any(|x| &x.id == k))
        {
            e.instance = Some(l.instance.clone());
            if e.account.is_none() {
                e.account = l.account.clone();
            }
            e.sources.push(format!(
                "`{}` lists key {k}{}",
                l.instance,
                l.account
                    .as_deref()
                    .map(|a| format!(" under account `{a}`"))
                    .unwrap_or_default()
            ));
            claimed.push((l.instance.clone(), k.clone()));
        }
        draft.entries.push(e);
    }
    // Accounts and keys the providers listed that no Vault entry names.
    for l in listed {
        let unclaimed: Vec<&crate::provider::KeyInfo> = l
            .keys
            .iter()
            .filter(|k| !claimed.contains(&(l.instance.clone(), k.id.clone())))
            .collect();
        let instance = draft.instances.iter().find(|i| i.name == l.instance);
        let type_name = instance.map(|i| i.type_name.clone());
        let describe = |k: &crate::provider::KeyInfo| {
            format!(
                "{}{}{}",
                k.id,
                if k.active { "" } else { " (inactive)" },
                k.created_at
                    .map(|t| format!(" created {}", crate::plan::age::timestamp(t)))
                    .unwrap_or_default()
            )
        };
        match &l.account {
            // One credential per account (its keys rotate together), unless a
            // Vault entry already names the account at this instance.
            Some(account) => {
                let named = draft.entries.iter().any(|e| {
                    e.instance.as_deref() == Some(l.instance.as_str())
                        && e.account.as_deref() == Some(account.as_str())
                });
                if named || (unclaimed.is_empty() && !l.keys.is_empty()) {
                    continue;
                }
                let mut e = Entry {
                    id: id_from(&format!("{}-{account}", l.instance)),
                    instance: Some(l.instance.clone()),
                    type_name: type_name.clone(),
                    vendor: type_name
                        .as_deref()
                        .map(shapes::vendor_of)
                        .unwrap_or("unknown")
                        .to_owned(),
                    account: Some(account.clone()),
                    vault_path: format!("discovered/{}/{}", l.instance, id_from(account)),
                    vault_path_guessed: true,
                    key_id: unclaimed.first().map(|k| k.id.clone()),
                    ..Entry::default()
                };
                e.sources.push(format!(
                    "`{}` lists account `{account}` with {}",
                    l.instance,
                    if unclaimed.is_empty() {
                        "no key".to_owned()
                    } else {
                        format!(
                            "key(s) {}",
                            unclaimed
                                .iter()
                                .map(|k| describe(k))
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    }
                ));
                if unclaimed.iter().filter(|k| k.active).count() > 1 {
                    e.checks.push("it holds more than one active key: in breach mode every key it held before the run is retired (add `keep:` for a key something else uses)".into());
                }
                draft.entries.push(e);
            }
            // The instance's own keys: one credential per key.
            None => {
                for k in unclaimed {
                    let mut e = Entry {
                        id: id_from(&format!(
                            "{}-{}",
                            l.instance,
                            k.tag.as_deref().unwrap_or(&k.id)
                        )),
                        instance: Some(l.instance.clone()),
                        type_name: type_name.clone(),
                        vendor: type_name
                            .as_deref()
                            .map(shapes::vendor_of)
                            .unwrap_or("unknown")
                            .to_owned(),
                        vault_path: format!("discovered/{}/{}", l.instance, id_from(&k.id)),
                        vault_path_guessed: true,
                        key_id: Some(k.id.clone()),
                        ..Entry::default()
                    };
                    e.sources
                        .push(format!("`{}` lists key {}", l.instance, describe(k)));
                    e.checks.push(format!("the Vault entry must name key {} (`key_id`), or a rotation cannot tell which key to retire", k.id));
                    draft.entries.push(e);
                }
            }
        }
    }
    // Scanner findings: joined to what is known by key id, else their own entry.
    for (n, f) in findings.iter().enumerate() {
        let verified = match f.verified {
            Some(true) => ", verified live by the scanner",
            Some(false) => ", not verified by the scanner",
            None => "",
        };
        let line = format!(
            "{} rule `{}` at {}{verified}",
            f.scanner, f.detector, f.location
        );
        if let Some(k) = &f.key_id
            && let Some(e) = draft
                .entries
                .iter_mut()
                .find(|e| e.key_id.as_ref() == Some(k))
        {
            e.sources.push(format!("leaked: {line} (key {k})"));
            e.checks.push("a scanner found this key in a repository: rotate it in breach mode, and remove it from the history".into());
            continue;
        }
        let listed_account = f.key_id.as_ref().and_then(|k| {
            listed
                .iter()
                .find(|l| l.keys.iter().any(|x| &x.id == k))
                .map(|l| (l.instance.clone(), l.account.clone()))
        });
        let mut e = Entry {
            id: id_from(&format!("leak-{}-{}", f.detector, n + 1)),
            type_name: f.type_name.map(str::to_owned),
            vendor: f.vendor.to_owned(),
            what: format!("a {} secret", f.detector),
            vault_path: format!("discovered/leaks/{}-{}", id_from(&f.detector), n + 1),
            vault_path_guessed: true,
            key_id: f.key_id.clone(),
            ..Entry::default()
        };
        if let Some((instance, account)) = listed_account {
            e.instance = Some(instance);
            e.account = account;
        }
        e.sources.push(format!(
            "leaked: {line}{}",
            f.key_id
                .as_deref()
                .map(|k| format!(" (key {k})"))
                .unwrap_or_default()
        ));
        e.checks
            .push("find where consumers read this secret (its Vault path) and what uses it".into());
        draft.entries.push(e);
    }
    // Assign instances by type where none is set, and decide automated or manual.
    let instances = draft.instances.clone();
    for e in &mut draft.entries {
        if e.instance.is_none()
            && let Some(t) = &e.type_name
        {
            let of_type: Vec<&InstanceSpec> =
                instances.iter().filter(|i| &i.type_name == t).collect();
            if let [only] = of_type.as_slice() {
                e.instance = Some(only.name.clone());
                e.checks.push(format!(
                    "assigned to `{}`, the only `{t}` instance given: check it is the right one",
                    only.name
                ));
            }
        }
        let Some(instance) = e.instance.clone() else {
            continue;
        };
        let Some(spec) = instances.iter().find(|i| i.name == instance) else {
            e.instance = None;
            continue;
        };
        let Some(ptype) = catalog.get(&spec.type_name) else {
            e.instance = None;
            continue;
        };
        let missing: Vec<&String> = ptype
            .credential_settings
            .declared()
            .into_iter()
            .flatten()
            .filter(|(_, s)| s.required && s.default.is_none())
            .map(|(k, _)| k)
            .collect();
        let why_manual = if ptype.account == Need::Required && e.account.is_none() {
            Some("no account is known".to_owned())
        } else if !missing.is_empty() {
            Some(format!(
                "it needs the credential setting(s) {}",
                missing
                    .iter()
                    .map(|m| format!("`{m}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        } else {
            None
        };
        if let Some(why) = why_manual {
            e.checks.push(format!(
                "left as a manual step: {why}; to automate it, give it `provider: {instance}` and that"
            ));
            e.instance = None;
        }
        if ptype.account == Need::None {
            e.account = None;
        }
    }
    draft.mark_compromised();
    draft.unique_ids();
    draft
}

/// A YAML scalar: JSON's quoting (valid YAML) unless the text is plainly safe.
fn scalar(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
        && !text.starts_with(['-', '.', '/'])
        && !matches!(
            text.to_ascii_lowercase().as_str(),
            "true" | "false" | "yes" | "no" | "on" | "off" | "null" | "y" | "n" | "~"
        )
        && text.parse::<f64>().is_err();
    if plain {
        text.to_owned()
    } else {
        serde_json::to_string(text).unwrap_or_default()
    }
}

/// One comment line (wrapped, never a newline inside).
fn comment(out: &mut String, indent: &str, text: &str) {
    let text = text.replace(['\n', '\r'], " ");
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.len() + word.len() > 88 {
            let _ = writeln!(out, "{indent}# {line}");
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        let _ = writeln!(out, "{indent}# {line}");
    }
}

/// The `providers:` block declaring `instances` (empty when there are none).
pub fn providers_block(instances: &[&InstanceSpec]) -> String {
    let mut out = String::new();
    if instances.is_empty() {
        return out;
    }
    let _ = writeln!(out, "providers:");
    for i in instances {
        let _ = writeln!(out, "  {}:", scalar(&i.name));
        let _ = writeln!(out, "    type: {}", scalar(&i.type_name));
        if !i.settings.is_empty() {
            let _ = writeln!(out, "    settings:");
            for (k, v) in &i.settings {
                let _ = writeln!(
                    out,
                    "      {}: {}",
                    scalar(k),
                    serde_json::to_string(v).unwrap_or_default()
                );
            }
        }
        match &i.admin {
            Some(AdminSource::Env(var)) => {
                let _ = writeln!(out, "    admin: {{ env: {} }}", scalar(var));
            }
            Some(AdminSource::Vault(path)) => {
                let _ = writeln!(out, "    admin: {{ vault_path: {} }}", scalar(path));
            }
            None => {}
        }
    }
    out
}

/// The draft as a playbook.
pub fn write_yaml(draft: &Draft) -> String {
    let mut out = String::new();
    comment(
        &mut out,
        "",
        "A DRAFT written by `rekey discover`. Review every entry: each says where it came from and what to check. Then `rekey plan` it, fix what it says, and only then run it.",
    );
    for n in &draft.notes {
        comment(&mut out, "", n);
    }
    let _ = writeln!(out, "version: 1");
    let _ = writeln!(out, "name: {}", scalar(&draft.name));
    let _ = writeln!(
        out,
        "description: {}",
        scalar("Draft from rekey discover; reviewed by: (fill in)")
    );
    let _ = writeln!(out, "incident:");
    if draft.compromised.is_empty() {
        let _ = writeln!(out, "  mode: routine");
    } else {
        let list: Vec<String> = draft.compromised.iter().map(|c| scalar(c)).collect();
        let _ = writeln!(out, "  compromised: [{}]", list.join(", "));
        let _ = writeln!(out, "  mode: breach");
    }
    let _ = writeln!(out, "vault:");
    let _ = writeln!(out, "  address: ${{VAULT_ADDR}}");
    let _ = writeln!(out, "  mount: {}", scalar(&draft.mount));
    let used: Vec<&InstanceSpec> = draft
        .instances
        .iter()
        .filter(|i| {
            draft
                .entries
                .iter()
                .any(|e| e.instance.as_deref() == Some(&i.name))
        })
        .collect();
    out.push_str(&providers_block(&used));
    let _ = writeln!(out, "credentials:");
    if draft.entries.is_empty() {
        comment(&mut out, "  ", "nothing was found");
        let _ = writeln!(out, "  []");
    }
    for e in &draft.entries {
        let _ = writeln!(out);
        for s in &e.sources {
            comment(&mut out, "  ", &format!("from: {s}"));
        }
        let mut checks = e.checks.clone();
        if e.vault_path_guessed {
            checks.insert(
                0,
                "`vault_path` is a placeholder: set it to where consumers read this secret".into(),
            );
        }
        if !e.tied_to.is_empty() && !draft.compromised.is_empty() {
            checks.push(format!(
                "tied to {} because of its vendor, instance or metadata: confirm",
                e.tied_to.join(", ")
            ));
        }
        for c in &checks {
            comment(&mut out, "  ", &format!("check: {c}"));
        }
        let _ = writeln!(out, "  - id: {}", scalar(&e.id));
        match &e.instance {
            Some(i) => {
                let _ = writeln!(out, "    provider: {}", scalar(i));
                if let Some(a) = &e.account {
                    let _ = writeln!(out, "    account: {}", scalar(a));
                }
            }
            None => {
                let _ = writeln!(out, "    provider: manual");
                let what = if e.what.is_empty() {
                    e.type_name
                        .as_deref()
                        .map(|t| format!("a `{t}` credential"))
                        .unwrap_or_else(|| "this secret".into())
                } else {
                    e.what.clone()
                };
                let mut text = format!("Rotate {what}");
                if let Some(a) = &e.account {
                    text += &format!(" of account `{a}`");
                }
                if let Some(k) = &e.key_id {
                    text += &format!(" (key {k})");
                }
                let at = match e.vendor.as_str() {
                    "" | "unknown" | "manual" => "its issuer",
                    vendor => vendor,
                };
                text += &format!(" at {at}");
                text += ", then give rekey the new value.";
                if let Some(t) = &e.type_name {
                    text += &format!(
                        " rekey can rotate `{t}` itself: declare an instance (rekey discover --instance NAME={t} ...) to automate it."
                    );
                }
                let _ = writeln!(out, "    instructions: {}", scalar(&text));
            }
        }
        let _ = writeln!(out, "    vault_path: {}", scalar(&e.vault_path));
        if !e.tied_to.is_empty() {
            let list: Vec<String> = e.tied_to.iter().map(|t| scalar(t)).collect();
            let _ = writeln!(out, "    tied_to: [{}]", list.join(", "));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_scalars_are_safe_yaml() {
        assert_eq!(id_from("apps/billing/db"), "apps-billing-db");
        assert_eq!(id_from("//x y//"), "x-y");
        assert_eq!(id_from("@@"), "credential");
        assert_eq!(scalar("apps/db"), "apps/db");
        assert_eq!(scalar("yes"), "\"yes\"");
        assert_eq!(scalar("a: b"), "\"a: b\"");
        assert_eq!(scalar("5432"), "\"5432\"");
    }
}
