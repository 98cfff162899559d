//! A YAML document as a tree of nodes that remember where they came from.
//!
//! serde-saphyr parses the text (with resource budgets, so hostile input cannot
//! exhaust memory) and hands every node over wrapped in `Spanned`. Keeping the whole
//! tree with positions lets validation report *every* problem with its line and
//! column, instead of stopping at the first one the way plain serde does.

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::{Budget, DuplicateKeyPolicy, Options, Spanned};
use std::fmt;

/// A byte range in the source text, with the 1-based line and column of its start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pos {
    pub offset: usize,
    pub len: usize,
    pub line: usize,
    pub column: usize,
}

impl Pos {
    fn from_location(loc: &serde_saphyr::Location) -> Pos {
        let span = loc.span();
        Pos {
            offset: span.byte_offset().unwrap_or(0) as usize,
            len: span.byte_len().unwrap_or(0) as usize,
            line: loc.line() as usize,
            column: loc.column() as usize,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Key, Node)>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub value: Value,
    pub pos: Pos,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Key {
    pub name: String,
    pub pos: Pos,
}

impl Node {
    /// Follows a JSON pointer (`/credentials/3/provider`) to the node it names.
    pub fn pointer(&self, pointer: &str) -> Option<&Node> {
        let mut node = self;
        for segment in pointer_segments(pointer) {
            node = node.child(&segment)?;
        }
        Some(node)
    }

    /// Where a JSON pointer points: the node itself, or when the pointer names a map
    /// entry, the node of that entry's value.
    pub fn pos_of(&self, pointer: &str) -> Option<Pos> {
        self.pointer(pointer).map(|n| n.pos)
    }

    /// The position of the *key* of the last segment of `pointer` (for "unknown key"
    /// errors the key is what should be underlined, not its value).
    pub fn key_pos_of(&self, pointer: &str) -> Option<Pos> {
        let (parent, last) = match pointer.rfind('/') {
            Some(i) => (&pointer[..i], unescape(&pointer[i + 1..])),
            None => return None,
        };
        match &self.pointer(parent)?.value {
            Value::Map(entries) => entries.iter().find(|(k, _)| k.name == last).map(|(k, _)| k.pos),
            _ => None,
        }
    }

    fn child(&self, segment: &str) -> Option<&Node> {
        match &self.value {
            Value::Map(entries) => entries.iter().find(|(k, _)| k.name == segment).map(|(_, v)| v),
            Value::Seq(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
            _ => None,
        }
    }

    /// Converts to JSON for schema validation and typed deserialization.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.value {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f).map(J::Number).unwrap_or(J::Null),
            Value::Str(s) => J::String(s.clone()),
            Value::Seq(items) => J::Array(items.iter().map(Node::to_json).collect()),
            Value::Map(entries) => J::Object(
                entries.iter().map(|(k, v)| (k.name.clone(), v.to_json())).collect(),
            ),
        }
    }

    /// Visits every string scalar (not keys) mutably, with its JSON pointer.
    pub fn for_each_string_mut(&mut self, path: &mut String, f: &mut impl FnMut(&str, &mut String, Pos)) {
        let pos = self.pos;
        match &mut self.value {
            Value::Str(s) => f(path, s, pos),
            Value::Seq(items) => {
                for (i, item) in items.iter_mut().enumerate() {
                    let len = path.len();
                    path.push('/');
                    path.push_str(&i.to_string());
                    item.for_each_string_mut(path, f);
                    path.truncate(len);
                }
            }
            Value::Map(entries) => {
                for (k, v) in entries.iter_mut() {
                    let len = path.len();
                    path.push('/');
                    path.push_str(&escape(&k.name));
                    v.for_each_string_mut(path, f);
                    path.truncate(len);
                }
            }
            _ => {}
        }
    }
}

pub fn pointer_segments(pointer: &str) -> impl Iterator<Item = String> + '_ {
    pointer.split('/').skip(1).map(unescape)
}

pub fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

fn unescape(segment: &str) -> String {
    segment.replace("~1", "/").replace("~0", "~")
}

/// A YAML syntax or resource-budget error, with the position serde-saphyr gave.
#[derive(Debug)]
pub struct ParseError {
    pub message: String,
    pub pos: Option<Pos>,
}

/// Largest playbook accepted: far above any real one (100,000 credentials is about
/// 15 MB), small enough that hostile input cannot exhaust memory.
pub const MAX_INPUT_BYTES: usize = 64 * 1024 * 1024;

fn options() -> Options {
    let mut budget = Budget::default();
    budget.max_events = 20_000_000;
    budget.max_nodes = 10_000_000;
    budget.max_depth = 32;
    budget.flow_nesting_limit = 32;
    budget.max_aliases = 10_000;
    budget.max_anchors = 10_000;
    budget.max_total_scalar_bytes = MAX_INPUT_BYTES;
    budget.max_documents = 1;
    let mut options = Options::default();
    options.budget = Some(budget);
    options.duplicate_keys = DuplicateKeyPolicy::Error;
    options.with_snippet = false;
    // Anchors are handy for shared settings, but a playbook never needs more than a
    // few thousand replayed nodes; more is an alias bomb.
    options.alias_limits.max_total_replayed_events = 100_000;
    options.alias_limits.max_alias_expansions_per_anchor = 10_000;
    options
}

/// Parses one YAML document into a positioned tree.
pub fn parse(text: &str) -> Result<Node, ParseError> {
    if text.len() > MAX_INPUT_BYTES {
        return Err(ParseError {
            message: format!("the file is larger than {} MiB", MAX_INPUT_BYTES / (1024 * 1024)),
            pos: None,
        });
    }
    if text.trim().is_empty() {
        return Err(ParseError { message: "the file is empty".into(), pos: None });
    }
    match serde_saphyr::from_str_with_options::<Spanned<Value>>(text, options()) {
        Ok(root) => Ok(Node { pos: Pos::from_location(&root.referenced), value: root.value }),
        Err(err) => {
            let pos = err.location().map(|l| Pos::from_location(&l)).filter(|p| p.line > 0);
            Err(ParseError { message: err.without_snippet().to_string(), pos })
        }
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ValueVisitor)
    }
}

fn spanned_node(s: Spanned<Value>) -> Node {
    Node { pos: Pos::from_location(&s.referenced), value: s.value }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Value::deserialize(d)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(i64::try_from(v).map(Value::Int).unwrap_or(Value::Float(v as f64)))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Value, E> {
        Ok(i64::try_from(v).map(Value::Int).unwrap_or(Value::Float(v as f64)))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
        Ok(i64::try_from(v).map(Value::Int).unwrap_or(Value::Float(v as f64)))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v))
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Value, E> {
        Ok(Value::Str(String::from_utf8_lossy(v).into_owned()))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(item) = seq.next_element::<Spanned<Value>>()? {
            items.push(spanned_node(item));
        }
        Ok(Value::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0).min(1024));
        while let Some(key) = map.next_key::<Spanned<Value>>()? {
            let pos = Pos::from_location(&key.referenced);
            let name = match key.value {
                Value::Str(s) => s,
                Value::Int(i) => i.to_string(),
                Value::Bool(b) => b.to_string(),
                Value::Float(f) => f.to_string(),
                Value::Null => "null".to_owned(),
                Value::Seq(_) | Value::Map(_) => {
                    return Err(de::Error::custom(format!(
                        "a mapping key at line {} column {} is a list or a mapping; keys must be plain names",
                        pos.line, pos.column
                    )));
                }
            };
            let value = map.next_value::<Spanned<Value>>()?;
            entries.push((Key { name, pos }, spanned_node(value)));
        }
        Ok(Value::Map(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_keep_line_and_column() {
        let root = parse("a: 1\nb:\n  - x\n  - {c: true}\n").unwrap();
        let c = root.pointer("/b/1/c").unwrap();
        assert_eq!(c.value, Value::Bool(true));
        assert_eq!((c.pos.line, c.pos.column), (4, 9));
        let key = root.key_pos_of("/b/1/c").unwrap();
        assert_eq!((key.line, key.column), (4, 6));
        assert_eq!(root.to_json(), serde_json::json!({"a": 1, "b": ["x", {"c": true}]}));
    }

    #[test]
    fn duplicate_keys_are_errors() {
        let err = parse("a: 1\na: 2\n").unwrap_err();
        assert!(err.message.to_lowercase().contains("duplicate"), "{}", err.message);
        assert_eq!(err.pos.map(|p| p.line), Some(2));
    }

    #[test]
    fn alias_bombs_are_refused() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let prev = format!("*a{}", i - 1);
            text.push_str(&format!("a{i}: &a{i} [{}]\n", vec![prev; 10].join(", ")));
        }
        assert!(parse(&text).is_err());
    }
}
