//! Diagnostics: errors and warnings with file, line, column and a hint, and the helpers
//! that produce them (byte offset to line:column, "did you mean" suggestions).

use std::fmt;
use std::ops::Range;

/// How bad a diagnostic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// The config is rejected.
    Error,
    /// The config is accepted, but probably not what was meant.
    Warning,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        })
    }
}

/// One finding, located in the source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// The source name given to [`crate::parse`] (a path for [`crate::load`]).
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// What is wrong.
    pub message: String,
    /// What to do about it.
    pub hint: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.file, self.line, self.column, self.severity, self.message
        )?;
        if !self.hint.is_empty() {
            write!(f, "\n    hint: {}", self.hint)?;
        }
        Ok(())
    }
}

/// Every diagnostic of one config file, in source order. Returned as the error of
/// [`crate::parse`] when at least one is an error.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diagnostics {
    items: Vec<Diagnostic>,
}

impl Diagnostics {
    /// All diagnostics (errors and warnings), in source order.
    pub fn all(&self) -> impl Iterator<Item = &Diagnostic> {
        self.items.iter()
    }
    /// The errors only, in source order.
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.items.iter().filter(|d| d.severity == Severity::Error)
    }
    /// The warnings only, in source order.
    pub fn warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.items
            .iter()
            .filter(|d| d.severity == Severity::Warning)
    }
    /// Whether any diagnostic is an error.
    pub fn has_errors(&self) -> bool {
        self.errors().next().is_some()
    }
    /// Number of diagnostics (errors and warnings).
    pub fn len(&self) -> usize {
        self.items.len()
    }
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
    /// One error at line 1, column 1 (a file that cannot be read, for example).
    pub fn single(file: &str, message: &str, hint: &str) -> Self {
        Diagnostics {
            items: vec![Diagnostic {
                severity: Severity::Error,
                file: file.to_owned(),
                line: 1,
                column: 1,
                message: message.to_owned(),
                hint: hint.to_owned(),
            }],
        }
    }
    pub(crate) fn from_vec(mut items: Vec<Diagnostic>) -> Self {
        // Stable sort: findings at the same position keep the order they were found in.
        items.sort_by_key(|d| (d.line, d.column));
        items.dedup();
        Diagnostics { items }
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.items.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// Maps byte offsets of one source text to 1-based line and column.
#[derive(Debug)]
pub(crate) struct LineIndex<'a> {
    text: &'a str,
    starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    pub(crate) fn new(text: &'a str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { text, starts }
    }

    /// Line and column (in characters) of a byte offset; offsets past the end or inside a
    /// character are clamped, never panic.
    pub(crate) fn locate(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = match self.starts.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i.saturating_sub(1),
        };
        let start = self.starts.get(line).copied().unwrap_or(0);
        let col = self
            .text
            .get(start..)
            .map(|rest| {
                rest.char_indices()
                    .take_while(|(i, _)| start + i < offset)
                    .count()
            })
            .unwrap_or(0);
        (line + 1, col + 1)
    }
}

/// Collects diagnostics for one source while validating.
#[derive(Debug)]
pub(crate) struct Sink<'a> {
    file: &'a str,
    text: &'a str,
    /// Built on the first diagnostic: a valid file never needs it (indexing the lines of
    /// a 10k-rule file cost 1.5 % of compiling it).
    index: std::cell::OnceCell<LineIndex<'a>>,
    items: Vec<Diagnostic>,
    /// (table path, key) pairs already reported by the structural pass: an unknown key
    /// that probably meant `key`, or `key` with a value of the wrong type.
    suggested: std::collections::HashSet<(String, String)>,
}

impl<'a> Sink<'a> {
    pub(crate) fn new(file: &'a str, text: &'a str) -> Self {
        Sink {
            file,
            text,
            index: std::cell::OnceCell::new(),
            items: Vec::new(),
            suggested: Default::default(),
        }
    }

    /// Line and column of a span's start.
    pub(crate) fn locate(&self, span: &Range<usize>) -> (usize, usize) {
        self.index
            .get_or_init(|| LineIndex::new(self.text))
            .locate(span.start)
    }

    fn push(&mut self, severity: Severity, span: &Range<usize>, message: String, hint: String) {
        let (line, column) = self.locate(span);
        self.items.push(Diagnostic {
            severity,
            file: self.file.to_owned(),
            line,
            column,
            message,
            hint,
        });
    }

    /// Records an error at `span`.
    pub(crate) fn error(
        &mut self,
        span: &Range<usize>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) {
        self.push(Severity::Error, span, message.into(), hint.into());
    }

    /// Records a warning at `span`.
    pub(crate) fn warning(
        &mut self,
        span: &Range<usize>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) {
        self.push(Severity::Warning, span, message.into(), hint.into());
    }

    /// Records that `key` in `table` was already reported (mistyped or of the wrong type),
    /// so that validation does not also call it missing.
    pub(crate) fn note_suggested(&mut self, table: String, key: String) {
        self.suggested.insert((table, key));
    }

    /// Whether `key` in `table` was already reported by the structural pass.
    pub(crate) fn was_suggested(&self, table: &str, key: &str) -> bool {
        self.suggested.contains(&(table.to_owned(), key.to_owned()))
    }

    pub(crate) fn error_count(&self) -> usize {
        self.items
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .count()
    }

    pub(crate) fn finish(self) -> Diagnostics {
        Diagnostics::from_vec(self.items)
    }
}

/// The closest candidate to `word`, if it is close enough to be a likely typo: within
/// a small edit distance (transpositions count once), or very similar by Jaro-Winkler
/// (which favours a shared prefix, as in `advert_intervall_ms`).
pub(crate) fn suggest<'c>(
    word: &str,
    candidates: impl IntoIterator<Item = &'c str>,
) -> Option<&'c str> {
    let max_edits = (word.chars().count() / 4).max(1);
    let mut best: Option<(usize, f64, &str)> = None;
    for c in candidates {
        let edits = strsim::damerau_levenshtein(word, c);
        let jw = strsim::jaro_winkler(word, c);
        if edits > max_edits && jw < 0.85 {
            continue;
        }
        let better = match best {
            None => true,
            Some((e, j, _)) => edits < e || (edits == e && jw > j),
        };
        if better {
            best = Some((edits, jw, c));
        }
    }
    best.map(|(_, _, c)| c)
}

/// A hint sentence: "did you mean `x`?" or the fallback.
pub(crate) fn did_you_mean<'c>(
    word: &str,
    candidates: impl IntoIterator<Item = &'c str>,
    fallback: impl FnOnce() -> String,
) -> String {
    match suggest(word, candidates) {
        Some(c) => format!("did you mean `{c}`?"),
        None => fallback(),
    }
}

/// `a`, `b`, `c` for a hint; "none" when empty.
pub(crate) fn list<'c>(items: impl IntoIterator<Item = &'c str>) -> String {
    let v: Vec<String> = items.into_iter().map(|s| format!("`{s}`")).collect();
    if v.is_empty() {
        "none".to_owned()
    } else {
        v.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locate_counts_lines_and_characters() {
        let text = "a = 1\nbé = 2\n\nc";
        let idx = LineIndex::new(text);
        assert_eq!(idx.locate(0), (1, 1));
        assert_eq!(idx.locate(6), (2, 1));
        // 'é' is two bytes: the byte after it is column 3.
        assert_eq!(idx.locate(9), (2, 3));
        assert_eq!(idx.locate(text.len()), (4, 2));
        assert_eq!(idx.locate(usize::MAX), (4, 2));
    }

    #[test]
    fn suggests_close_words_only() {
        assert_eq!(suggest("adress", ["device", "address"]), Some("address"));
        assert_eq!(suggest("zzz", ["device", "address"]), None);
    }
}
