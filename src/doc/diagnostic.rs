//! Problems found in a playbook, each with its position, a snippet and a fix.

use super::yaml::Pos;
use miette::{GraphicalReportHandler, GraphicalTheme, LabeledSpan, NamedSource, SourceSpan};
use serde::Serialize;
use std::fmt;
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// One problem. `pos` is `None` only for problems about the whole file.
#[derive(Clone, Debug)]
pub struct Diagnostic {
    pub severity: Severity,
    pub message: String,
    pub pos: Option<Pos>,
    /// Short text under the underlined span.
    pub label: Option<String>,
    /// How to fix it.
    pub help: Option<String>,
    /// Other places worth showing (e.g. where a duplicate id was first defined).
    pub related: Vec<(Pos, String)>,
}

/// Longest value a diagnostic quotes whole (between backticks); a longer one is
/// cut, with its length said. A playbook value pasted by mistake (a key, a blob)
/// must not come back in full on a terminal or in CI logs.
const MAX_QUOTED: usize = 64;

/// `text` with every backtick-quoted span longer than [`MAX_QUOTED`] characters
/// cut to its start, an ellipsis and its length.
fn clip_quoted(text: String) -> String {
    let parts: Vec<&str> = text.split('`').collect();
    // Odd indices are inside backticks (when they pair up).
    if parts.len() < 3
        || !parts
            .iter()
            .skip(1)
            .step_by(2)
            .any(|q| q.chars().count() > MAX_QUOTED)
    {
        return text;
    }
    let mut out = String::with_capacity(text.len().min(4096));
    for (i, part) in parts.iter().enumerate() {
        if i % 2 == 0 {
            out.push_str(part);
            continue;
        }
        out.push('`');
        let len = part.chars().count();
        let closed = i + 1 < parts.len();
        if closed && len > MAX_QUOTED {
            out.extend(part.chars().take(24));
            out.push_str(&format!("…` ({len} characters)"));
        } else {
            out.push_str(part);
            if closed {
                out.push('`');
            }
        }
    }
    out
}

impl Diagnostic {
    pub fn error(message: impl Into<String>, pos: Option<Pos>) -> Self {
        Diagnostic {
            severity: Severity::Error,
            message: clip_quoted(message.into()),
            pos,
            label: None,
            help: None,
            related: Vec::new(),
        }
    }
    pub fn warning(message: impl Into<String>, pos: Option<Pos>) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(message, pos)
        }
    }
    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(clip_quoted(help.into()));
        self
    }
    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(clip_quoted(label.into()));
        self
    }
    pub fn related(mut self, pos: Option<Pos>, label: impl Into<String>) -> Self {
        if let Some(pos) = pos {
            self.related.push((pos, label.into()));
        }
        self
    }
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

/// The diagnostics of one file, with the text needed to show snippets.
#[derive(Clone, Debug)]
pub struct Report {
    pub file: String,
    pub source: Arc<String>,
    pub diagnostics: Vec<Diagnostic>,
}

/// A diagnostic as it appears in `--format json` output.
#[derive(Debug, Serialize)]
pub struct JsonDiagnostic<'a> {
    pub severity: Severity,
    pub file: &'a str,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: &'a str,
    pub help: Option<&'a str>,
}

impl Report {
    pub fn errors(&self) -> usize {
        self.diagnostics.iter().filter(|d| d.is_error()).count()
    }

    pub fn has_errors(&self) -> bool {
        self.errors() > 0
    }

    pub fn to_json(&self) -> Vec<JsonDiagnostic<'_>> {
        self.diagnostics
            .iter()
            .map(|d| JsonDiagnostic {
                severity: d.severity,
                file: &self.file,
                line: d.pos.map(|p| p.line as usize),
                column: d.pos.map(|p| p.column as usize),
                message: &d.message,
                help: d.help.as_deref(),
            })
            .collect()
    }

    /// Renders the diagnostics with their snippets, the way they go to stderr. After
    /// `MAX_RENDERED` the rest are counted, not drawn: `--format json` lists them all.
    pub fn render(&self, color: bool) -> String {
        const MAX_RENDERED: usize = 100;
        let theme = if color {
            GraphicalTheme::unicode()
        } else {
            GraphicalTheme::unicode_nocolor()
        };
        let handler = GraphicalReportHandler::new_themed(theme)
            .with_context_lines(2)
            .with_width(100)
            .with_wrap_lines(false)
            // The message already says file:line:column, counted in characters;
            // miette would count bytes, which disagrees after non-ASCII text.
            .without_primary_span_start();
        // What reaches the terminal is cleaned of control characters (a playbook must
        // not be able to drive the terminal), byte for byte so positions hold.
        let clean_source = sanitize(&self.source);
        let named = Arc::new(NamedSource::new(sanitize(&self.file), clean_source.clone()));
        let lines = LineIndex::new(&clean_source);
        let mut out = String::new();
        let file = sanitize(&self.file);
        for diagnostic in self.diagnostics.iter().take(MAX_RENDERED) {
            let diagnostic = &diagnostic.sanitized();
            // miette cannot draw columns past 65,535, and a snippet of a huge line
            // helps nobody: such diagnostics keep their position, without a snippet.
            let long_line = |p: &Pos| lines.line_len(&clean_source, p.line) > 400;
            let plain;
            let diagnostic = if diagnostic.pos.as_ref().is_some_and(long_line)
                || diagnostic.related.iter().any(|(p, _)| long_line(p))
            {
                plain = Diagnostic {
                    related: Vec::new(),
                    ..diagnostic.clone()
                };
                &plain
            } else {
                diagnostic
            };
            let shown = Shown {
                diagnostic,
                file: &file,
                source: named.clone(),
                text: &clean_source,
                lines: &lines,
                snippet: !diagnostic.pos.as_ref().is_some_and(long_line),
            };
            if handler.render_report(&mut out, &shown).is_err() {
                out.push_str(&format!("{}: {}\n", self.file, diagnostic.message));
            }
            out.push('\n');
        }
        if self.diagnostics.len() > MAX_RENDERED {
            out.push_str(&format!(
                "{}: {} more problems not shown; fix these first, or list them all with `--format json`\n",
                self.file,
                self.diagnostics.len() - MAX_RENDERED
            ));
        }
        let errors = self.errors();
        let warnings = self.diagnostics.len() - errors;
        if errors > 0 {
            out.push_str(&format!(
                "{}: {} error{}{}; nothing was changed.\n",
                self.file,
                errors,
                if errors == 1 { "" } else { "s" },
                if warnings > 0 {
                    format!(
                        ", {warnings} warning{}",
                        if warnings == 1 { "" } else { "s" }
                    )
                } else {
                    String::new()
                }
            ));
        }
        out
    }
}

/// Byte offsets of line starts, to turn (line, column) into byte offsets for miette
/// (positions count characters; the source may hold multi-byte UTF-8).
struct LineIndex {
    starts: Vec<usize>,
}

/// Replaces ASCII control characters other than line breaks and tabs with `?`.
fn sanitize(text: &str) -> String {
    if !text
        .bytes()
        .any(|b| (b < 0x20 && b != b'\n' && b != b'\r' && b != b'\t') || b == 0x7f)
    {
        return text.to_owned();
    }
    text.chars()
        .map(|c| {
            if c.is_ascii_control() && c != '\n' && c != '\r' && c != '\t' {
                '?'
            } else {
                c
            }
        })
        .collect()
}

impl Diagnostic {
    fn sanitized(&self) -> Diagnostic {
        Diagnostic {
            severity: self.severity,
            message: sanitize(&self.message),
            pos: self.pos,
            label: self.label.as_deref().map(sanitize),
            help: self.help.as_deref().map(sanitize),
            related: self
                .related
                .iter()
                .map(|(p, l)| (*p, sanitize(l)))
                .collect(),
        }
    }
}

impl LineIndex {
    /// Length in bytes of line `line` (1-based).
    fn line_len(&self, text: &str, line: u32) -> usize {
        let i = (line as usize).max(1) - 1;
        match (self.starts.get(i), self.starts.get(i + 1)) {
            (Some(&a), Some(&b)) => b - a,
            (Some(&a), None) => text.len() - a,
            _ => 0,
        }
    }

    fn new(text: &str) -> Self {
        // Lines end with \n, \r\n or a lone \r (old Mac files), as in YAML.
        let bytes = text.as_bytes();
        let mut starts = vec![0];
        for (i, b) in bytes.iter().enumerate() {
            if *b == b'\n' || (*b == b'\r' && bytes.get(i + 1) != Some(&b'\n')) {
                starts.push(i + 1);
            }
        }
        LineIndex { starts }
    }

    /// Byte range of `pos` in `text`.
    fn range(&self, text: &str, pos: Pos) -> (usize, usize) {
        let line = (pos.line as usize).max(1) - 1;
        let Some(&line_start) = self.starts.get(line) else {
            return (text.len(), 0);
        };
        let rest = &text[line_start..];
        let mut chars = rest
            .char_indices()
            .map(|(i, _)| line_start + i)
            .chain(std::iter::once(text.len()));
        let start = chars
            .nth((pos.column as usize).max(1) - 1)
            .unwrap_or(text.len());
        let tail = &text[start..];
        let len = tail
            .char_indices()
            .nth(pos.len as usize)
            .map(|(i, _)| i)
            .unwrap_or(tail.len());
        (start, len)
    }
}

/// Adapter that lets miette draw one diagnostic.
struct Shown<'a> {
    diagnostic: &'a Diagnostic,
    file: &'a str,
    source: Arc<NamedSource<String>>,
    text: &'a str,
    lines: &'a LineIndex,
    /// Whether to draw the source snippet.
    snippet: bool,
}

impl fmt::Debug for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.diagnostic.message)
    }
}

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.diagnostic.pos {
            Some(p) => write!(
                f,
                "{}:{}:{}: {}",
                self.file, p.line, p.column, self.diagnostic.message
            ),
            None => write!(f, "{}: {}", self.file, self.diagnostic.message),
        }
    }
}

impl std::error::Error for Shown<'_> {}

impl Shown<'_> {
    fn span(&self, pos: Pos) -> SourceSpan {
        let (offset, len) = self.lines.range(self.text, pos);
        SourceSpan::new(offset.into(), len)
    }
}

impl miette::Diagnostic for Shown<'_> {
    fn severity(&self) -> Option<miette::Severity> {
        Some(match self.diagnostic.severity {
            Severity::Error => miette::Severity::Error,
            Severity::Warning => miette::Severity::Warning,
        })
    }
    fn help<'b>(&'b self) -> Option<Box<dyn fmt::Display + 'b>> {
        self.diagnostic
            .help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }
    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        self.diagnostic
            .pos
            .filter(|_| self.snippet)
            .map(|_| &*self.source as &dyn miette::SourceCode)
    }
    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        let pos = self.diagnostic.pos.filter(|_| self.snippet)?;
        let mut labels = vec![LabeledSpan::new_primary_with_span(
            self.diagnostic.label.clone(),
            self.span(pos),
        )];
        for (p, text) in &self.diagnostic.related {
            labels.push(LabeledSpan::new_with_span(
                Some(text.clone()),
                self.span(*p),
            ));
        }
        Some(Box::new(labels.into_iter()))
    }
}

/// "did you mean `x`?" for a misspelled name, when one candidate is close enough.
pub fn did_you_mean<'a>(
    given: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    let mut best: Option<(f64, &str)> = None;
    for candidate in candidates {
        let score = strsim::jaro_winkler(&given.to_lowercase(), &candidate.to_lowercase());
        if score > 0.8 && best.is_none_or(|(s, _)| score > s) {
            best = Some((score, candidate));
        }
    }
    best.map(|(_, c)| c.to_owned())
}

#[cfg(test)]
mod tests {
    #[test]
    fn long_quoted_values_are_cut_and_short_ones_kept() {
        let long = "x".repeat(100);
        let cut = super::clip_quoted(format!("`a` is not `{long}`, see `b"));
        assert_eq!(
            cut,
            format!("`a` is not `{}…` (100 characters), see `b", "x".repeat(24))
        );
        assert_eq!(super::clip_quoted("`a` and `b`".into()), "`a` and `b`");
    }
}
