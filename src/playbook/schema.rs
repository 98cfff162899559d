//! The playbook's JSON Schema (generated from the model) and the structural check
//! that uses it: wrong types, missing keys and unknown keys, all reported at once.

use super::model::RawPlaybook;
use crate::doc::diagnostic::{Diagnostic, did_you_mean};
use crate::doc::yaml::{Node, escape};
use jsonschema::error::{TypeKind, ValidationErrorKind};
use serde_json::Value;
use std::sync::OnceLock;

/// Where `$schema` in the shipped playbooks points; `rekey schema` prints the file.
pub const SCHEMA_ID: &str = "https://rekey.dev/schema/playbook-v1.json";

/// The JSON Schema of playbook version 1.
pub fn playbook_schema() -> &'static Value {
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        let mut schema =
            serde_json::to_value(schemars::schema_for!(RawPlaybook)).unwrap_or(Value::Null);
        if let Value::Object(map) = &mut schema {
            map.insert("$id".into(), Value::String(SCHEMA_ID.into()));
        }
        schema
    })
}

fn validator() -> Option<&'static jsonschema::Validator> {
    static VALIDATOR: OnceLock<Option<jsonschema::Validator>> = OnceLock::new();
    VALIDATOR
        .get_or_init(|| jsonschema::validator_for(playbook_schema()).ok())
        .as_ref()
}

/// A way to read past an unknown key, so validation can go on and report the
/// problems behind it too: drop the key, or read it as the key it was probably
/// meant to be (`vault_pth` as `vault_path`).
#[derive(Debug, Clone, PartialEq)]
pub struct Repair {
    /// JSON pointer of the mapping holding the key.
    pub object: String,
    pub key: String,
    pub rename_to: Option<String>,
}

/// What the structural check found.
pub struct Checked {
    pub diagnostics: Vec<Diagnostic>,
    pub repairs: Vec<Repair>,
    /// Whether every problem found is an unknown key (so the repairs fix them all).
    pub only_unknown_keys: bool,
}

/// Checks `instance` (the playbook as JSON) against the schema. Positions come from
/// `root`, the same document with its YAML positions.
pub fn check(instance: &Value, root: &Node) -> Vec<Diagnostic> {
    check_with_repairs(instance, root).diagnostics
}

pub fn check_with_repairs(instance: &Value, root: &Node) -> Checked {
    let Some(validator) = validator() else {
        let diagnostics = vec![Diagnostic::error(
            "internal error: the playbook schema does not compile",
            None,
        )];
        return Checked {
            diagnostics,
            repairs: Vec::new(),
            only_unknown_keys: false,
        };
    };
    let mut found = Vec::new();
    check_against(validator, instance, "", instance, root, &mut found, 0);
    // An unknown key whose suggestion is a missing required key is one mistake (a
    // typo), not two: keep the "did you mean" and drop the "missing key".
    let typos: Vec<(String, String)> = found
        .iter()
        .filter_map(|f| match f {
            Found::Unknown {
                path,
                suggestion: Some(s),
                ..
            } => Some((path.clone(), s.clone())),
            _ => None,
        })
        .collect();
    let mut repairs = Vec::new();
    let mut only_unknown_keys = true;
    let mut out: Vec<Diagnostic> = Vec::new();
    for f in found {
        match f {
            Found::Missing {
                path,
                name,
                diagnostic,
            } => {
                if !typos.contains(&(path, name)) {
                    only_unknown_keys = false;
                    out.push(diagnostic);
                }
            }
            Found::Unknown {
                path,
                key,
                suggestion,
                diagnostic,
            } => {
                // Read the typo as its suggestion only when that key is not there.
                let free =
                    suggestion.filter(|s| instance.pointer(&path).and_then(|o| o.get(s)).is_none());
                repairs.push(Repair {
                    object: path,
                    key,
                    rename_to: free,
                });
                out.push(diagnostic);
            }
            Found::Other(diagnostic) => {
                only_unknown_keys = false;
                out.push(diagnostic);
            }
        }
    }
    out.sort_by_key(|d| d.pos.map(|p| (p.line, p.column)));
    Checked {
        diagnostics: out,
        repairs,
        only_unknown_keys,
    }
}

enum Found {
    Unknown {
        path: String,
        key: String,
        suggestion: Option<String>,
        diagnostic: Diagnostic,
    },
    Missing {
        path: String,
        name: String,
        diagnostic: Diagnostic,
    },
    Other(Diagnostic),
}

/// Validates `sub` (the part of `instance` at `base`) and records what is wrong.
/// Optional blocks are `anyOf: [block, null]` in the schema; when such a block is
/// present but wrong inside, the validator only says "not valid under any of the
/// schemas", so we validate against the block's own schema to say what is wrong.
fn check_against(
    validator: &jsonschema::Validator,
    sub: &Value,
    base: &str,
    instance: &Value,
    root: &Node,
    out: &mut Vec<Found>,
    depth: usize,
) {
    for error in validator.iter_errors(sub) {
        let path = format!("{base}{}", error.instance_path().as_str());
        let here = describe_path(&path);
        match error.kind() {
            ValidationErrorKind::AdditionalProperties { unexpected } => {
                let allowed = allowed_keys(&path);
                for key in unexpected {
                    let key_path = format!("{path}/{}", escape(key));
                    let mut d = Diagnostic::error(
                        format!("unknown key `{key}` in {here}"),
                        root.key_pos_of(&key_path),
                    )
                    .label("not a known key");
                    let suggestion = did_you_mean(key, allowed.iter().map(String::as_str));
                    d = match &suggestion {
                        Some(best) => d.help(format!("did you mean `{best}`?")),
                        None if allowed.is_empty() => d.help("remove it"),
                        None => d.help(format!(
                            "remove it; keys allowed here: {}",
                            allowed.join(", ")
                        )),
                    };
                    out.push(Found::Unknown {
                        path: path.clone(),
                        key: key.clone(),
                        suggestion,
                        diagnostic: d,
                    });
                }
            }
            ValidationErrorKind::Required { property } => {
                let name = property.as_str().unwrap_or("?").to_owned();
                let described = describe_field(&format!("{path}/{}", escape(&name)));
                let pos = root.key_pos_of(&path).or_else(|| root.pos_of(&path));
                let mut d = Diagnostic::error(format!("{here} is missing the key `{name}`"), pos)
                    .label(format!("`{name}` missing"));
                d = d.help(match described {
                    Some(text) => format!("add `{name}:` ({text})"),
                    None => format!("add `{name}:`"),
                });
                out.push(Found::Missing {
                    path,
                    name,
                    diagnostic: d,
                });
            }
            ValidationErrorKind::Type { kind } => {
                let expected = match kind {
                    TypeKind::Single(t) => yaml_type(&t.to_string()).to_owned(),
                    TypeKind::Multiple(set) => {
                        let names: Vec<&str> = set
                            .iter()
                            .map(|t| yaml_type(&t.to_string()))
                            .filter(|t| *t != "empty")
                            .collect();
                        names.join(" or ")
                    }
                };
                out.push(Found::Other(type_error(
                    &path, &here, &expected, instance, root,
                )));
            }
            ValidationErrorKind::AnyOf { .. } | ValidationErrorKind::OneOfNotValid { .. } => {
                let value = instance.pointer(&path).unwrap_or(&Value::Null);
                let branch = branch_validator(&path).filter(|_| depth < 8 && !value.is_null());
                match branch {
                    Some((v, expects_object)) if value.is_object() == expects_object => {
                        check_against(&v, value, &path, instance, root, out, depth + 1);
                    }
                    _ => {
                        let expected =
                            expected_type(&path).unwrap_or_else(|| "a different value".into());
                        out.push(Found::Other(type_error(
                            &path, &here, &expected, instance, root,
                        )));
                    }
                }
            }
            ValidationErrorKind::Enum { options } => {
                let choices: Vec<String> = options
                    .as_array()
                    .map(|a| a.iter().map(|v| v.to_string()).collect())
                    .unwrap_or_default();
                out.push(Found::Other(
                    Diagnostic::error(
                        format!("{here} must be one of {}", choices.join(", ")),
                        root.pos_of(&path),
                    )
                    .help(format!(
                        "write one of: {}",
                        choices.join(", ").replace('"', "")
                    )),
                ));
            }
            _ => out.push(Found::Other(Diagnostic::error(
                format!("{here}: {error}"),
                root.pos_of(&path),
            ))),
        }
    }
}

/// A validator for the non-null branch of the optional block at `pointer`, and
/// whether that branch is an object.
fn branch_validator(pointer: &str) -> Option<(jsonschema::Validator, bool)> {
    let branch = schema_at(pointer)?;
    let mut schema = branch.clone();
    if let (Value::Object(map), Some(defs)) = (&mut schema, playbook_schema().get("$defs")) {
        map.insert("$defs".into(), defs.clone());
    }
    let is_object = branch.get("type").and_then(Value::as_str) == Some("object");
    jsonschema::validator_for(&schema)
        .ok()
        .map(|v| (v, is_object))
}

fn type_error(path: &str, here: &str, expected: &str, instance: &Value, root: &Node) -> Diagnostic {
    let found = instance.pointer(path).map(json_type).unwrap_or("nothing");
    let mut d = Diagnostic::error(
        format!("{here} must be {expected}, not {found}"),
        root.pos_of(path),
    )
    .label(format!("expected {expected}"));
    if let Some(text) = describe_field(path) {
        d = d.help(text);
    }
    d
}

/// A value the schema allows but the typed model does not (`concurrency: 4.0`):
/// explained in the same words as the schema check.
pub fn serde_error(pointer: &str, message: &str, instance: &Value, root: &Node) -> Diagnostic {
    let here = describe_path(pointer);
    match expected_type(pointer) {
        Some(expected) => type_error(pointer, &here, &expected, instance, root),
        None => Diagnostic::error(format!("{here}: {message}"), root.pos_of(pointer))
            .help("`rekey schema` prints what each key accepts"),
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "empty",
        Value::Bool(_) => "true or false",
        Value::Number(n) if n.is_i64() || n.is_u64() => "a whole number",
        Value::Number(n) if n.as_f64().is_some_and(|f| f.fract() == 0.0) => {
            "a number with a decimal point"
        }
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

fn yaml_type(t: &str) -> &'static str {
    match t {
        "object" => "a mapping",
        "array" => "a list",
        "string" => "a string",
        "integer" => "a whole number",
        "number" => "a number",
        "boolean" => "true or false",
        "null" => "empty",
        _ => "a value",
    }
}

/// `credentials[3].provider` style name of a JSON pointer, for messages.
pub fn describe_path(pointer: &str) -> String {
    if pointer.is_empty() {
        return "the playbook".into();
    }
    let mut out = String::new();
    for seg in crate::doc::yaml::pointer_segments(pointer) {
        if seg.parse::<usize>().is_ok() {
            out.push_str(&format!("[{seg}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&seg);
        }
    }
    format!("`{out}`")
}

/// The sub-schema that applies at an instance path, following `$ref`, `anyOf`
/// (the non-null branch of optional fields), `properties`, `items` and maps.
fn schema_at(pointer: &str) -> Option<&'static Value> {
    let root = playbook_schema();
    let mut schema = resolve(root, root)?;
    for seg in crate::doc::yaml::pointer_segments(pointer) {
        let next = if let Some(props) = schema.get("properties").and_then(|p| p.get(&seg)) {
            props
        } else if let Some(items) = schema.get("items") {
            items
        } else {
            schema
                .get("additionalProperties")
                .filter(|v| v.is_object())?
        };
        schema = resolve(root, next)?;
    }
    Some(schema)
}

fn resolve<'a>(root: &'a Value, mut schema: &'a Value) -> Option<&'a Value> {
    for _ in 0..16 {
        if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
            schema = root.pointer(r.strip_prefix('#')?)?;
        } else if let Some(branches) = schema.get("anyOf").and_then(Value::as_array) {
            schema = branches
                .iter()
                .find(|b| b.get("type").and_then(Value::as_str) != Some("null"))?;
        } else {
            return Some(schema);
        }
    }
    None
}

fn allowed_keys(pointer: &str) -> Vec<String> {
    schema_at(pointer)
        .and_then(|s| s.get("properties"))
        .and_then(Value::as_object)
        .map(|p| p.keys().filter(|k| !k.starts_with('$')).cloned().collect())
        .unwrap_or_default()
}

fn describe_field(pointer: &str) -> Option<String> {
    let raw = playbook_schema();
    // Descriptions sit next to the `$ref`, so look the parent's property up unresolved.
    let (parent, last) = pointer.rsplit_once('/')?;
    let parent_schema = schema_at(parent)?;
    let prop = parent_schema.get("properties").and_then(|p| p.get(last))?;
    let text = prop
        .get("description")
        .or_else(|| resolve(raw, prop).and_then(|s| s.get("description")))
        .and_then(Value::as_str)?;
    Some(text.split("\n\n").next().unwrap_or(text).replace('\n', " "))
}

fn expected_type(pointer: &str) -> Option<String> {
    let schema = schema_at(pointer)?;
    match schema.get("type")? {
        Value::String(t) => Some(yaml_type(t).to_owned()),
        Value::Array(ts) => Some(
            ts.iter()
                .filter_map(Value::as_str)
                .map(yaml_type)
                .filter(|t| *t != "empty")
                .collect::<Vec<_>>()
                .join(" or "),
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_walker_finds_nested_keys() {
        assert!(allowed_keys("").contains(&"credentials".to_string()));
        assert!(allowed_keys("/credentials/0").contains(&"vault_path".to_string()));
        assert!(allowed_keys("/providers/pg").contains(&"rate".to_string()));
        assert!(allowed_keys("/providers/pg/rate").contains(&"per_minute".to_string()));
        assert!(allowed_keys("/vault/auth").contains(&"role_id".to_string()));
        assert_eq!(
            describe_path("/credentials/3/provider"),
            "`credentials[3].provider`"
        );
    }
}
