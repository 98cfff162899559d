//! A YAML document as a tree of nodes that remember where they came from.
//!
//! saphyr-parser (the maintained YAML 1.2 parser of the saphyr project) turns the
//! text into events with positions; we build the tree ourselves, iteratively, with
//! budgets (depth, nodes, alias replays) so hostile input cannot exhaust memory or
//! the stack. Keeping the whole tree with positions lets validation report *every*
//! problem with its line and column. serde-saphyr, built on the same family of
//! parsers, was 3.5 times slower on a 100,000-credential playbook (see
//! `benches/plan_large.rs`), which is why the tree is built here.

use serde_saphyr::granit_parser::{Event, Parser, ScalarStyle, ScanError, Span};
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

/// Where a node is: character offset and length in the source, 1-based line and
/// column. `u32` keeps nodes small; inputs are capped far below 4 GiB.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pos {
    /// Offset in characters (not bytes) from the start of the source.
    pub offset: u32,
    /// Length in characters.
    pub len: u32,
    pub line: u32,
    pub column: u32,
}

impl Pos {
    fn from_span(span: &Span) -> Pos {
        Pos {
            offset: span.start.index() as u32,
            len: span.end.index().saturating_sub(span.start.index()) as u32,
            line: span.start.line() as u32,
            column: span.start.col() as u32 + 1,
        }
    }
}

/// A value. Strings borrow from the source text where YAML needs no unescaping,
/// which keeps a 100,000-credential playbook's tree small.
#[derive(Clone, Debug, PartialEq)]
pub enum Value<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Cow<'a, str>),
    Seq(Vec<Node<'a>>),
    Map(Vec<(Key<'a>, Node<'a>)>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Node<'a> {
    pub value: Value<'a>,
    pub pos: Pos,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Key<'a> {
    pub name: Cow<'a, str>,
    pub pos: Pos,
}

impl<'a> Node<'a> {
    /// Follows a JSON pointer (`/credentials/3/provider`) to the node it names.
    pub fn pointer(&self, pointer: &str) -> Option<&Node<'a>> {
        let mut node = self;
        for segment in pointer_segments(pointer) {
            node = node.child(&segment)?;
        }
        Some(node)
    }

    /// Where a JSON pointer points.
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
            Value::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.name == last)
                .map(|(k, _)| k.pos),
            _ => None,
        }
    }

    /// Drops the key `key` of the mapping at `object`, or renames it to `rename_to`.
    /// Used to read past unknown keys so the rest of a playbook can be checked.
    pub fn repair_key(&mut self, object: &str, key: &str, rename_to: Option<&str>) {
        let mut node = self;
        for segment in pointer_segments(object) {
            let next = match &mut node.value {
                Value::Map(entries) => entries
                    .iter_mut()
                    .find(|(k, _)| k.name == segment)
                    .map(|(_, v)| v),
                Value::Seq(items) => segment.parse::<usize>().ok().and_then(|i| items.get_mut(i)),
                _ => None,
            };
            let Some(next) = next else { return };
            node = next;
        }
        if let Value::Map(entries) = &mut node.value {
            match rename_to {
                Some(to) => {
                    if let Some((k, _)) = entries.iter_mut().find(|(k, _)| k.name == key) {
                        k.name = Cow::Owned(to.to_owned());
                    }
                }
                None => entries.retain(|(k, _)| k.name != key),
            }
        }
    }

    fn child(&self, segment: &str) -> Option<&Node<'a>> {
        match &self.value {
            Value::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.name == segment)
                .map(|(_, v)| v),
            Value::Seq(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
            _ => None,
        }
    }

    /// Converts to JSON for schema validation.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.value {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            // JSON has no NaN or infinity; as text they fail the type check visibly
            // instead of turning into null (which optional fields would accept).
            Value::Float(f) => serde_json::Number::from_f64(*f)
                .map(J::Number)
                .unwrap_or_else(|| J::String(f.to_string())),
            Value::Str(s) => J::String(s.to_string()),
            Value::Seq(items) => J::Array(items.iter().map(Node::to_json).collect()),
            Value::Map(entries) => J::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.name.to_string(), v.to_json()))
                    .collect(),
            ),
        }
    }

    /// Visits every string scalar (not keys) mutably. Iterative: depth is bounded by
    /// the parser budget, but no recursion is needed.
    pub fn for_each_string_mut(&mut self, f: &mut impl FnMut(&mut Cow<'a, str>, Pos)) {
        let mut stack: Vec<&mut Node<'a>> = vec![self];
        while let Some(node) = stack.pop() {
            let pos = node.pos;
            match &mut node.value {
                Value::Str(s) => f(s, pos),
                Value::Seq(items) => stack.extend(items.iter_mut()),
                Value::Map(entries) => stack.extend(entries.iter_mut().map(|(_, v)| v)),
                _ => {}
            }
        }
    }
}

pub fn pointer_segments(pointer: &str) -> impl Iterator<Item = String> + '_ {
    pointer.split('/').skip(1).map(unescape)
}

pub fn escape(segment: &str) -> String {
    if segment.contains(['~', '/']) {
        segment.replace('~', "~0").replace('/', "~1")
    } else {
        segment.to_owned()
    }
}

fn unescape(segment: &str) -> String {
    if segment.contains('~') {
        segment.replace("~1", "/").replace("~0", "~")
    } else {
        segment.to_owned()
    }
}

/// A YAML syntax or budget error, with its position when known.
#[derive(Debug)]
pub struct ParseError {
    pub message: String,
    pub pos: Option<Pos>,
    pub help: &'static str,
}

/// Largest playbook accepted: far above any real one (100,000 credentials is about
/// 18 MB), small enough that hostile input cannot exhaust memory.
pub const MAX_INPUT_BYTES: usize = 64 * 1024 * 1024;
/// Deepest nesting accepted; a playbook needs about 6 levels.
pub const MAX_DEPTH: usize = 32;
/// Most nodes (scalars and collections) one document may hold.
pub const MAX_NODES: usize = 20_000_000;
/// Most nodes copied through aliases (`*anchor`): protects against alias bombs.
pub const MAX_ALIAS_NODES: usize = 100_000;

const SYNTAX_HELP: &str =
    "fix the YAML syntax here (indentation with spaces, `key: value`, lists with `- `)";
const LIMIT_HELP: &str =
    "a playbook is a few levels deep; this document is too large or too deeply nested";

fn fail(message: impl Into<String>, pos: Option<Pos>, help: &'static str) -> ParseError {
    ParseError {
        message: message.into(),
        pos,
        help,
    }
}

fn scan_error(e: &ScanError) -> ParseError {
    let m = e.marker();
    let pos = Pos {
        offset: m.index() as u32,
        len: 1,
        line: m.line() as u32,
        column: m.col() as u32 + 1,
    };
    fail(e.info(), Some(pos).filter(|p| p.line > 0), SYNTAX_HELP)
}

/// A collection under construction.
enum Frame<'a> {
    Seq {
        items: Vec<Node<'a>>,
        pos: Pos,
        anchor: usize,
    },
    Map {
        entries: Vec<(Key<'a>, Node<'a>)>,
        pending_key: Option<(Key<'a>, bool)>,
        seen: Option<HashSet<Cow<'a, str>>>,
        pos: Pos,
        anchor: usize,
        merges: Vec<Node<'a>>,
    },
}

/// Parses one YAML document into a positioned tree.
pub fn parse(text: &str) -> Result<Node<'_>, ParseError> {
    if let Some(root) = parse_split(text, SPLIT_THRESHOLD) {
        return Ok(root);
    }
    parse_serial(text)
}

/// Playbooks this large are parsed in two halves on two threads.
const SPLIT_THRESHOLD: usize = 4 << 20;

/// Parses a large playbook in two halves at once: the head up to an entry of the
/// `credentials` list near the middle, and the rest of the list. Only for the
/// plain shape generated and large playbooks have: `credentials:` is the last
/// top-level key, and there are no anchors, aliases, tags, directives or document
/// markers. Any doubt, or any error in either half, returns `None` and the caller
/// parses serially, so errors are always reported by the serial parser.
fn parse_split(text: &str, min_len: usize) -> Option<Node<'_>> {
    if text.len() < min_len || std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        return None;
    }
    if text.contains(['&', '*', '!', '%', '\t', '\r'])
        || text.contains("\n---")
        || text.contains("\n...")
    {
        return None;
    }
    let key = text.find("\ncredentials:")? + 1;
    let key_line_end = key + text[key..].find('\n')?;
    let rest_of_key_line = text[key + "credentials:".len()..key_line_end].trim();
    if !(rest_of_key_line.is_empty() || rest_of_key_line.starts_with('#')) {
        return None;
    }
    let body_start = key_line_end + 1;
    // The list's indentation, from its first entry.
    let mut indent = None;
    let mut offset = body_start;
    let mut cut = None;
    let middle = body_start + (text.len() - body_start) / 2;
    for line in text[body_start..].split_inclusive('\n') {
        let content = line.trim_start_matches(' ');
        let spaces = line.len() - content.len();
        let blank = content.trim().is_empty() || content.starts_with('#');
        if !blank {
            match indent {
                None if content.starts_with("- ") => indent = Some(spaces),
                None => return None,
                Some(i) if spaces < i => return None,
                Some(i) if spaces == i && !content.starts_with("- ") => return None,
                Some(i) if spaces == i && cut.is_none() && offset >= middle => cut = Some(offset),
                Some(_) => {}
            }
        }
        offset += line.len();
    }
    let cut = cut?;
    let (head, tail) = text.split_at(cut);
    let (head, tail) = std::thread::scope(|scope| {
        let head = std::thread::Builder::new()
            .stack_size(16 << 20)
            .spawn_scoped(scope, || parse_serial(head))
            .ok()?;
        let tail = parse_serial(tail);
        Some((head.join().ok()?, tail))
    })?;
    let (mut root, mut tail) = (head.ok()?, tail.ok()?);
    // Positions in the tail count from the cut.
    let lines_before = head_lines(text, cut);
    let chars_before = text[..cut].chars().count() as u32;
    shift(&mut tail, lines_before, chars_before);
    let Value::Seq(more) = tail.value else {
        return None;
    };
    let Value::Map(entries) = &mut root.value else {
        return None;
    };
    let (last_key, list) = entries.last_mut()?;
    match (&*last_key.name, &mut list.value) {
        ("credentials", Value::Seq(items)) => items.extend(more),
        _ => return None,
    }
    Some(root)
}

fn head_lines(text: &str, cut: usize) -> u32 {
    text.as_bytes()[..cut]
        .iter()
        .filter(|b| **b == b'\n')
        .count() as u32
}

fn shift(node: &mut Node<'_>, lines: u32, chars: u32) {
    let mut stack = vec![node];
    while let Some(n) = stack.pop() {
        n.pos.line += lines;
        n.pos.offset += chars;
        match &mut n.value {
            Value::Seq(items) => stack.extend(items.iter_mut()),
            Value::Map(entries) => {
                for (k, v) in entries.iter_mut() {
                    k.pos.line += lines;
                    k.pos.offset += chars;
                    stack.push(v);
                }
            }
            _ => {}
        }
    }
}

fn parse_serial(text: &str) -> Result<Node<'_>, ParseError> {
    if text.len() > MAX_INPUT_BYTES {
        return Err(fail(
            format!(
                "the file is larger than {} MiB",
                MAX_INPUT_BYTES / (1024 * 1024)
            ),
            None,
            LIMIT_HELP,
        ));
    }
    if text.trim().is_empty() {
        return Err(fail(
            "the file is empty",
            None,
            "start from a shipped example in `playbooks/`",
        ));
    }
    let mut parser = Parser::new_from_str(text);
    let mut stack: Vec<Frame<'_>> = Vec::new();
    let mut anchors: HashMap<usize, Node<'_>> = HashMap::new();
    let mut root: Option<Node<'_>> = None;
    let mut nodes = 0usize;
    let mut replayed = 0usize;
    let mut documents = 0usize;
    // Whether the last scalar was plain: only a plain `<<` key is a merge key.
    let mut last_scalar_plain = false;

    while let Some(event) = parser.next_event() {
        let (event, span) = event.map_err(|e| scan_error(&e))?;
        let pos = Pos::from_span(&span);
        let finished: Option<(Node<'_>, usize)> = match event {
            // Comments and anchor metadata are presentation, not data.
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Anchor(..) => None,
            Event::UnresolvedAlias(_) => {
                return Err(fail(
                    "alias to an unknown anchor",
                    Some(pos),
                    "define the anchor (`&name`) before using it (`*name`)",
                ));
            }
            Event::DocumentStart(..) => {
                documents += 1;
                if documents > 1 {
                    return Err(fail(
                        "a playbook is one YAML document; this file has several (`---`)",
                        Some(pos),
                        "keep one document per file",
                    ));
                }
                None
            }
            Event::Scalar(text, style, anchor, tag) => {
                nodes += 1;
                last_scalar_plain = style == ScalarStyle::Plain;
                let tag = tag.map(|t| format!("{}{}", t.handle(), t.suffix()));
                let value = resolve_scalar(text, style, tag.as_deref()).map_err(|m| {
                    fail(
                        m,
                        Some(pos),
                        "remove the tag; rekey reads plain YAML values",
                    )
                })?;
                Some((Node { value, pos }, anchor))
            }
            Event::SequenceStart(_, anchor, tag) => {
                check_tag(
                    tag.as_ref()
                        .map(|t| format!("{}{}", t.handle(), t.suffix())),
                    "tag:yaml.org,2002:seq",
                    pos,
                )?;
                nodes += 1;
                if stack.len() >= MAX_DEPTH {
                    return Err(fail(
                        format!("nesting deeper than {MAX_DEPTH} levels"),
                        Some(pos),
                        LIMIT_HELP,
                    ));
                }
                stack.push(Frame::Seq {
                    items: Vec::new(),
                    pos,
                    anchor,
                });
                None
            }
            Event::MappingStart(_, anchor, tag) => {
                check_tag(
                    tag.as_ref()
                        .map(|t| format!("{}{}", t.handle(), t.suffix())),
                    "tag:yaml.org,2002:map",
                    pos,
                )?;
                nodes += 1;
                if stack.len() >= MAX_DEPTH {
                    return Err(fail(
                        format!("nesting deeper than {MAX_DEPTH} levels"),
                        Some(pos),
                        LIMIT_HELP,
                    ));
                }
                stack.push(Frame::Map {
                    entries: Vec::new(),
                    pending_key: None,
                    seen: None,
                    pos,
                    anchor,
                    merges: Vec::new(),
                });
                None
            }
            Event::SequenceEnd => match stack.pop() {
                Some(Frame::Seq { items, pos, anchor }) => Some((
                    Node {
                        value: Value::Seq(items),
                        pos,
                    },
                    anchor,
                )),
                _ => return Err(fail("unbalanced sequence", Some(pos), SYNTAX_HELP)),
            },
            Event::MappingEnd => match stack.pop() {
                Some(Frame::Map {
                    mut entries,
                    pos,
                    anchor,
                    merges,
                    ..
                }) => {
                    apply_merges(&mut entries, merges);
                    Some((
                        Node {
                            value: Value::Map(entries),
                            pos,
                        },
                        anchor,
                    ))
                }
                _ => return Err(fail("unbalanced mapping", Some(pos), SYNTAX_HELP)),
            },
            Event::Alias(id) => {
                let Some(target) = anchors.get(&id) else {
                    return Err(fail(
                        "alias to an unknown anchor",
                        Some(pos),
                        "define the anchor (`&name`) before using it (`*name`)",
                    ));
                };
                let count = count_nodes(target);
                replayed += count;
                nodes += count;
                if replayed > MAX_ALIAS_NODES {
                    return Err(fail(
                        format!("aliases expand to more than {MAX_ALIAS_NODES} nodes"),
                        Some(pos),
                        LIMIT_HELP,
                    ));
                }
                let mut copy = target.clone();
                copy.pos = pos;
                Some((copy, 0))
            }
            _ => None,
        };
        if nodes > MAX_NODES {
            return Err(fail(
                format!("more than {MAX_NODES} values"),
                Some(pos),
                LIMIT_HELP,
            ));
        }
        let Some((node, anchor)) = finished else {
            continue;
        };
        if anchor != 0 {
            anchors.insert(anchor, node.clone());
        }
        match stack.last_mut() {
            None => root = Some(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map {
                entries,
                pending_key,
                seen,
                merges,
                ..
            }) => match pending_key.take() {
                None => {
                    let name = match node.value {
                        Value::Str(s) => s,
                        Value::Int(i) => Cow::Owned(i.to_string()),
                        Value::Bool(b) => Cow::Owned(b.to_string()),
                        Value::Float(f) => Cow::Owned(f.to_string()),
                        Value::Null => Cow::Borrowed("null"),
                        Value::Seq(_) | Value::Map(_) => {
                            return Err(fail(
                                "a mapping key is a list or a mapping; keys must be plain names",
                                Some(node.pos),
                                SYNTAX_HELP,
                            ));
                        }
                    };
                    let duplicate = match seen {
                        Some(set) => !set.insert(name.clone()),
                        None => {
                            let dup = entries.iter().any(|(k, _)| k.name == name);
                            if entries.len() >= 16 {
                                *seen = Some(
                                    entries
                                        .iter()
                                        .map(|(k, _)| k.name.clone())
                                        .chain([name.clone()])
                                        .collect(),
                                );
                            }
                            dup
                        }
                    };
                    let merge = last_scalar_plain && name == "<<";
                    if duplicate && !merge {
                        return Err(fail(
                            format!("duplicate key `{name}`"),
                            Some(node.pos),
                            "remove or rename one of the two keys",
                        ));
                    }
                    *pending_key = Some((
                        Key {
                            name,
                            pos: node.pos,
                        },
                        merge,
                    ));
                }
                Some((_, true)) => {
                    let mergeable = match &node.value {
                        Value::Map(_) => true,
                        Value::Seq(items) => items.iter().all(|n| matches!(n.value, Value::Map(_))),
                        _ => false,
                    };
                    if !mergeable {
                        return Err(fail(
                            "a merge key `<<` takes a mapping or a list of mappings",
                            Some(node.pos),
                            "write `<<: *anchor` where `&anchor` names a mapping",
                        ));
                    }
                    merges.push(node)
                }
                Some((key, false)) => entries.push((key, node)),
            },
        }
    }
    root.ok_or_else(|| fail("the file holds no YAML document", None, SYNTAX_HELP))
}

fn count_nodes(node: &Node<'_>) -> usize {
    let mut count = 0;
    let mut stack = vec![node];
    while let Some(n) = stack.pop() {
        count += 1;
        match &n.value {
            Value::Seq(items) => stack.extend(items.iter()),
            Value::Map(entries) => stack.extend(entries.iter().map(|(_, v)| v)),
            _ => {}
        }
    }
    count
}

/// YAML merge keys (`<<: *defaults`): entries of the merged mappings that the
/// mapping does not set itself.
fn apply_merges<'a>(entries: &mut Vec<(Key<'a>, Node<'a>)>, merges: Vec<Node<'a>>) {
    for merge in merges {
        let sources = match merge.value {
            Value::Map(m) => vec![m],
            Value::Seq(items) => items
                .into_iter()
                .filter_map(|n| {
                    if let Value::Map(m) = n.value {
                        Some(m)
                    } else {
                        None
                    }
                })
                .collect(),
            _ => Vec::new(),
        };
        for source in sources {
            for (k, v) in source {
                if !entries.iter().any(|(e, _)| e.name == k.name) {
                    entries.push((k, v));
                }
            }
        }
    }
}

fn check_tag(tag: Option<String>, allowed: &str, pos: Pos) -> Result<(), ParseError> {
    match tag {
        None => Ok(()),
        Some(t) if t == allowed || t == "!" => Ok(()),
        Some(t) => Err(fail(
            format!("unsupported tag `{t}`"),
            Some(pos),
            "remove the tag; rekey reads plain YAML values",
        )),
    }
}

/// YAML 1.2 core schema resolution for plain scalars; quoted and block scalars are
/// strings. Core tags (`!!str`, `!!int`...) are honoured; others are refused.
fn resolve_scalar<'a>(
    text: Cow<'a, str>,
    style: ScalarStyle,
    tag: Option<&str>,
) -> Result<Value<'a>, String> {
    const CORE: &str = "tag:yaml.org,2002:";
    if let Some(tag) = tag {
        let kind = tag
            .strip_prefix(CORE)
            .unwrap_or(if tag == "!" { "str" } else { tag });
        return match kind {
            "str" => Ok(Value::Str(text)),
            "null" | "bool" | "int" | "float" => {
                let v = resolve_plain(text.clone());
                let ok = matches!(
                    (kind, &v),
                    ("null", Value::Null)
                        | ("bool", Value::Bool(_))
                        | ("int", Value::Int(_))
                        | ("float", Value::Float(_) | Value::Int(_))
                );
                if !ok {
                    return Err(format!("`{text}` is not a valid !!{kind}"));
                }
                Ok(if let (Value::Int(i), "float") = (&v, kind) {
                    Value::Float(*i as f64)
                } else {
                    v
                })
            }
            _ => Err(format!("unsupported tag `{tag}`")),
        };
    }
    Ok(match style {
        ScalarStyle::Plain => resolve_plain(text),
        _ => Value::Str(text),
    })
}

fn resolve_plain(cow: Cow<'_, str>) -> Value<'_> {
    let text: &str = &cow;
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Value::Float(f64::INFINITY);
        }
        "-.inf" | "-.Inf" | "-.INF" => return Value::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Value::Float(f64::NAN),
        _ => {}
    }
    let first = text.as_bytes()[0];
    if !(first.is_ascii_digit() || matches!(first, b'-' | b'+' | b'.')) {
        return Value::Str(cow);
    }
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(i) = text.parse::<i64>() {
            return Value::Int(i);
        }
        return match text.parse::<f64>() {
            Ok(f) => Value::Float(f),
            Err(_) => Value::Str(cow),
        };
    }
    if let Some(hex) = text.strip_prefix("0x")
        && let Ok(i) = i64::from_str_radix(hex, 16)
    {
        return Value::Int(i);
    }
    if let Some(oct) = text.strip_prefix("0o")
        && let Ok(i) = i64::from_str_radix(oct, 8)
    {
        return Value::Int(i);
    }
    // Floats: digits with a dot and/or an exponent (Rust's parser also takes "inf"
    // and "nan", which YAML spells differently and which we keep as strings).
    let is_float = digits
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'-' | b'+'))
        && digits.bytes().any(|b| b.is_ascii_digit());
    if is_float && let Ok(f) = text.parse::<f64>() {
        return Value::Float(f);
    }
    Value::Str(cow)
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
        assert_eq!(
            root.to_json(),
            serde_json::json!({"a": 1, "b": ["x", {"c": true}]})
        );
    }

    #[test]
    fn scalars_resolve_like_yaml_1_2() {
        let root = parse("a: ~\nb: TRUE\nc: 0x1F\nd: -12\ne: 1.5e3\nf: '12'\ng: 1.2.3\nh: yes\ni: !!str 5\nj: .inf\nk: 99999999999999999999\n").unwrap();
        let json = root.to_json();
        assert_eq!(json["a"], serde_json::Value::Null);
        assert_eq!(json["b"], true);
        assert_eq!(json["c"], 31);
        assert_eq!(json["d"], -12);
        assert_eq!(json["e"], 1500.0);
        assert_eq!(json["f"], "12");
        assert_eq!(json["g"], "1.2.3");
        assert_eq!(json["h"], "yes");
        assert_eq!(json["i"], "5");
        assert_eq!(json["k"], 1e20);
    }

    #[test]
    fn anchors_aliases_and_merge_keys_work() {
        let root =
            parse("base: &b {host: db, port: 5432}\nx:\n  <<: *b\n  port: 6432\ny: *b\n").unwrap();
        let json = root.to_json();
        assert_eq!(json["x"], serde_json::json!({"port": 6432, "host": "db"}));
        assert_eq!(json["y"], serde_json::json!({"host": "db", "port": 5432}));
    }

    #[test]
    fn duplicate_keys_are_errors() {
        let err = parse("a: 1\na: 2\n").unwrap_err();
        assert!(err.message.contains("duplicate key `a`"), "{}", err.message);
        assert_eq!(err.pos.map(|p| p.line), Some(2));
        let many: String = (0..40).map(|i| format!("k{i}: 1\n")).collect::<String>() + "k7: 2\n";
        assert!(
            parse(&many)
                .unwrap_err()
                .message
                .contains("duplicate key `k7`")
        );
    }

    fn positions(root: &Node<'_>) -> Vec<(u32, u32)> {
        let mut out = Vec::new();
        let mut stack = vec![root];
        while let Some(n) = stack.pop() {
            out.push((n.pos.line, n.pos.column));
            match &n.value {
                Value::Seq(items) => stack.extend(items.iter().rev()),
                Value::Map(entries) => {
                    for (k, v) in entries.iter().rev() {
                        out.push((k.pos.line, k.pos.column));
                        stack.push(v);
                    }
                }
                _ => {}
            }
        }
        out
    }

    #[test]
    fn large_playbooks_parse_in_halves_exactly_as_serially() {
        let mut text =
            String::from("version: 1\nname: big\nvault: { address: 'http://x:1' }\ncredentials:\n");
        let mut i = 0;
        while text.len() < 200_000 {
            text.push_str(&format!("  - id: c{i}\n    provider: p\n    vault_path: \"a/{i}\"\n    tags: [t{}, x]\n    description: |\n      line one\n      - not an entry\n", i % 7));
            i += 1;
        }
        let split = parse_split(&text, 100_000).expect("this shape splits");
        let serial = parse_serial(&text).unwrap();
        assert!(
            split.to_json() == serial.to_json(),
            "the halves hold other values"
        );
        // Same line and column for every node (a block scalar that ends right at
        // the cut may span a different length, which only changes an underline).
        let (a, b) = (positions(&split), positions(&serial));
        assert_eq!(a.len(), b.len());
        if let Some(i) = (0..a.len()).find(|&i| a[i] != b[i]) {
            panic!("node {i}: split {:?} != serial {:?}", a[i], b[i]);
        }
        // Another top-level key after the list: not split.
        assert!(parse_split(&(text.clone() + "extra: 1\n"), 100_000).is_none());
        // An anchor anywhere: not split.
        assert!(parse_split(&text.replacen("tags: [t0", "tags: &a [t0", 1), 100_000).is_none());
        // A quoted string running over the cut: the head fails, so no split.
        let cut_line = text.len() / 2;
        let at = text[cut_line..].find("\n  - id:").unwrap() + cut_line;
        let broken = format!("{}\n    note: \"open{}", &text[..at], &text[at..]);
        assert!(parse_split(&broken, 100_000).is_none() || parse_serial(&broken).is_ok());
    }

    #[test]
    fn alias_bombs_and_deep_nesting_are_refused() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let prev = format!("*a{}", i - 1);
            text.push_str(&format!("a{i}: &a{i} [{}]\n", vec![prev; 10].join(", ")));
        }
        assert!(parse(&text).unwrap_err().message.contains("aliases expand"));
        let deep = "a: ".to_owned() + &"[".repeat(100) + &"]".repeat(100);
        assert!(parse(&deep).unwrap_err().message.contains("nesting deeper"));
        assert!(
            parse("a: 1\n---\nb: 2\n")
                .unwrap_err()
                .message
                .contains("one YAML document")
        );
    }
}
