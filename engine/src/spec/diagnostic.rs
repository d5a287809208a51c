//! Diagnostics for pipeline files: one [`Diagnostic`] per problem, each pointing at the
//! file, line and column (or the `--set` argument) it comes from, rendered colour-free in
//! the rustc style; [`Diagnostics`] collects every problem of one load; [`suggest`] picks
//! the "did you mean" candidate.

use std::fmt;

/// Where a problem is: a place in a file (or a `--set` argument) and the text to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// `path:line:col` (1-based) as printed after `-->`, or `--set key=value`, or a bare path.
    pub place: String,
    /// The line to show with a caret under the offending part, if there is one.
    pub snippet: Option<Snippet>,
    /// Sorts problems in reading order: files in load order, each by offset, then the
    /// `--set` arguments in order.
    pub(crate) order: (usize, usize, usize),
}

/// A source line (or command-line argument) with the part a problem is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snippet {
    /// 1-based line number; `None` for a command-line argument.
    pub line: Option<usize>,
    /// The whole line (or argument), without its line break.
    pub text: String,
    /// Character offset of the first marked character in `text`.
    pub column: usize,
    /// Number of marked characters (at least 1).
    pub width: usize,
}

/// One problem found in a pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// What is wrong, one line.
    pub message: String,
    /// Where; `None` when the problem has no place (e.g. the file given cannot be read).
    pub origin: Option<Location>,
    /// Short text printed after the caret.
    pub label: Option<String>,
    /// How to fix it.
    pub help: Option<String>,
    /// Further facts (e.g. where something was first defined).
    pub notes: Vec<String>,
}

impl Diagnostic {
    pub fn new(message: impl Into<String>, origin: Option<Location>) -> Self {
        Self {
            message: message.into(),
            origin,
            label: None,
            help: None,
            notes: Vec::new(),
        }
    }
    pub fn with_label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }
    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
    /// Sets the help only if there is one.
    pub fn with_help_opt(mut self, help: Option<String>) -> Self {
        if help.is_some() {
            self.help = help;
        }
        self
    }
    pub fn with_note(mut self, note: impl Into<String>) -> Self {
        self.notes.push(note.into());
        self
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "error: {}", self.message)?;
        let snippet = self.origin.as_ref().and_then(|o| o.snippet.as_ref());
        let width = snippet
            .and_then(|s| s.line)
            .map_or(2, |n| n.to_string().len().max(2));
        let pad = " ".repeat(width);
        if let Some(origin) = &self.origin {
            writeln!(f, "{pad}--> {}", origin.place)?;
        }
        if let Some(s) = snippet {
            writeln!(f, "{pad} |")?;
            let number = s.line.map(|n| n.to_string()).unwrap_or_default();
            // A tab is shown as one space so the caret (counted in characters) lines up.
            let text = s.text.trim_end().replace('\t', " ");
            let (text, column, marked) = clip(&text, s.column, s.width.max(1));
            writeln!(f, "{number:>width$} | {text}")?;
            let marks = format!("{}{}", " ".repeat(column), "^".repeat(marked));
            match &self.label {
                Some(label) => writeln!(f, "{pad} | {marks} {label}")?,
                None => writeln!(f, "{pad} | {marks}")?,
            }
        } else if let Some(label) = &self.label {
            writeln!(f, "{pad} = {label}")?;
        }
        if let Some(help) = &self.help {
            writeln!(f, "{pad} = help: {help}")?;
        }
        for note in &self.notes {
            writeln!(f, "{pad} = note: {note}")?;
        }
        Ok(())
    }
}

/// Longest snippet line shown, in characters; longer lines are cut around the marked part.
const MAX_SNIPPET_CHARS: usize = 160;
/// Characters kept before the marked part when a line is cut.
const CONTEXT_BEFORE: usize = 50;

/// `text` cut to at most [`MAX_SNIPPET_CHARS`] around the marked characters
/// `column..column + width` (`…` where something was cut), with the mark's new column
/// and width. A 10,000-character line shows as one screen line.
fn clip(text: &str, column: usize, width: usize) -> (String, usize, usize) {
    let chars: Vec<char> = text.chars().collect();
    if chars.len() <= MAX_SNIPPET_CHARS {
        return (text.to_owned(), column, width);
    }
    let start = column.saturating_sub(CONTEXT_BEFORE).min(chars.len());
    let end = (start + MAX_SNIPPET_CHARS).min(chars.len());
    let mut out = String::new();
    let mut shift = 0;
    if start > 0 {
        out.push('…');
        shift = 1;
    }
    out.extend(&chars[start..end]);
    if end < chars.len() {
        out.push('…');
    }
    let new_column = column.saturating_sub(start) + shift;
    let marked = width.min(end.saturating_sub(column.max(start)).max(1));
    (out, new_column, marked)
}

/// Every problem found while loading one pipeline. Displays as all of them, separated by
/// blank lines, then `error: N problems found in FILE; nothing was run`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostics {
    file: String,
    items: Vec<Diagnostic>,
}

impl Diagnostics {
    /// An empty collection for the pipeline file `file` (as given by the user).
    pub fn new(file: impl Into<String>) -> Self {
        Self {
            file: file.into(),
            items: Vec::new(),
        }
    }
    /// Adds a problem; an identical one already present is not added twice.
    pub fn push(&mut self, d: Diagnostic) {
        if !self.items.contains(&d) {
            self.items.push(d);
        }
    }
    pub fn extend(&mut self, ds: impl IntoIterator<Item = Diagnostic>) {
        for d in ds {
            self.push(d);
        }
    }
    /// Puts the problems in reading order (problems without a place first); problems at
    /// the same place keep the order they were found in.
    pub(crate) fn sort(&mut self) {
        self.items
            .sort_by_key(|d| d.origin.as_ref().map(|o| o.order));
    }
    /// Number of problems.
    pub fn len(&self) -> usize {
        self.items.len()
    }
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
    pub fn iter(&self) -> impl Iterator<Item = &Diagnostic> {
        self.items.iter()
    }
    /// The pipeline file the problems were found in.
    pub fn file(&self) -> &str {
        &self.file
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.items {
            writeln!(f, "{d}")?;
        }
        let n = self.items.len();
        write!(
            f,
            "error: {n} problem{} found in {}; nothing was run",
            if n == 1 { "" } else { "s" },
            self.file
        )
    }
}

impl std::error::Error for Diagnostics {}

/// The candidate closest to `word` (Levenshtein distance at most 2, and less than the
/// word's length, or equal ignoring case), for a "did you mean" hint.
pub fn suggest<'a, I, S>(word: &str, candidates: I) -> Option<String>
where
    I: IntoIterator<Item = &'a S>,
    S: AsRef<str> + 'a + ?Sized,
{
    // Ties go to the alphabetically first candidate, so the order given does not matter.
    let mut best: Option<(usize, &str)> = None;
    for c in candidates {
        let c = c.as_ref();
        if c == word {
            continue;
        }
        let d = if c.eq_ignore_ascii_case(word) {
            0
        } else {
            strsim::levenshtein(word, c)
        };
        if d <= 2
            && d < word.chars().count()
            && best.is_none_or(|(bd, bc)| d < bd || (d == bd && c < bc))
        {
            best = Some((d, c));
        }
    }
    best.map(|(_, c)| c.to_owned())
}

/// `help: did you mean `X`?` if there is a close candidate.
pub fn did_you_mean<'a, I, S>(word: &str, candidates: I) -> Option<String>
where
    I: IntoIterator<Item = &'a S>,
    S: AsRef<str> + 'a + ?Sized,
{
    suggest(word, candidates).map(|s| format!("did you mean `{s}`?"))
}

/// `a`, `b` and `c` (each in backticks).
pub fn list<S: AsRef<str>>(items: &[S]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("`{}`", s.as_ref())).collect();
    match quoted.as_slice() {
        [] => "none".to_owned(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(line: usize, text: &str, column: usize, width: usize) -> Option<Location> {
        Some(Location {
            order: (0, line, column),
            place: format!("pipelines/bad.toml:{line}:{}", column + 1),
            snippet: Some(Snippet {
                line: Some(line),
                text: text.to_owned(),
                column,
                width,
            }),
        })
    }

    #[test]
    fn a_long_line_is_cut_around_the_marked_part() {
        let line = format!("command = \"{}BAD{}\"", "x".repeat(5000), "y".repeat(5000));
        let column = line.find("BAD").unwrap();
        let d = Diagnostic::new(
            "bad",
            Some(Location {
                place: "p.toml:3:1".into(),
                snippet: Some(Snippet {
                    line: Some(3),
                    text: line.clone(),
                    column,
                    width: 3,
                }),
                order: (0, 0, 0),
            }),
        );
        let text = d.to_string();
        assert!(text.lines().all(|l| l.chars().count() < 180), "{text}");
        let lines: Vec<&str> = text.lines().collect();
        let shown = lines.iter().find(|l| l.contains("BAD")).unwrap();
        let caret = lines.iter().find(|l| l.contains('^')).unwrap();
        // The caret stands under the marked text, counted in characters.
        let col = |l: &str, pat: &str| l[..l.find(pat).unwrap()].chars().count();
        assert_eq!(col(shown, "BAD"), col(caret, "^^^"), "{text}");
        assert!(shown.contains('…'));
    }

    #[test]
    fn renders_like_rustc() {
        let d = Diagnostic::new(
            "unknown parameter `hiden_size` for stage `train` (kind `train`)",
            at(12, "hiden_size = 64", 0, 10),
        )
        .with_help("did you mean `hidden_size`?");
        assert_eq!(
            d.to_string(),
            "error: unknown parameter `hiden_size` for stage `train` (kind `train`)\n  --> pipelines/bad.toml:12:1\n   |\n12 | hiden_size = 64\n   | ^^^^^^^^^^\n   = help: did you mean `hidden_size`?\n"
        );
    }

    #[test]
    fn renders_label_notes_and_summary() {
        let mut ds = Diagnostics::new("p.toml");
        let d = Diagnostic::new("bad", at(3, "steps = 0", 8, 1))
            .with_label("must be at least 1")
            .with_note("first");
        ds.push(d.clone());
        ds.push(d);
        ds.push(Diagnostic::new("no place", None));
        assert_eq!(ds.len(), 2);
        assert_eq!(
            ds.to_string(),
            "error: bad\n  --> pipelines/bad.toml:3:9\n   |\n 3 | steps = 0\n   |         ^ must be at least 1\n   = note: first\n\nerror: no place\n\nerror: 2 problems found in p.toml; nothing was run"
        );
    }

    #[test]
    fn renders_command_line_argument() {
        let d = Diagnostic::new(
            "x",
            Some(Location {
                order: (1, 0, 0),
                place: "--set train.steps=x".into(),
                snippet: Some(Snippet {
                    line: None,
                    text: "--set train.steps=x".into(),
                    column: 18,
                    width: 1,
                }),
            }),
        );
        assert_eq!(
            d.to_string(),
            "error: x\n  --> --set train.steps=x\n   |\n   | --set train.steps=x\n   |                   ^\n"
        );
    }

    #[test]
    fn tabs_keep_the_caret_aligned() {
        let d = Diagnostic::new("x", at(1, "\tsteps = 0", 9, 1));
        assert!(d.to_string().contains(" 1 |  steps = 0\n   |          ^\n"));
    }

    #[test]
    fn suggestions() {
        let names = ["hidden_size", "steps", "seed", "lr"];
        assert_eq!(
            suggest("hiden_size", &names).as_deref(),
            Some("hidden_size")
        );
        assert_eq!(suggest("setps", &names).as_deref(), Some("steps"));
        assert_eq!(suggest("Steps", &names).as_deref(), Some("steps"));
        assert_eq!(suggest("completely_else", &names), None);
        // A two-letter word is not "close" to every other two-letter word.
        assert_eq!(suggest("xy", &names), None);
        assert_eq!(list(&["a", "b", "c"]), "`a`, `b` and `c`");
        assert_eq!(list::<&str>(&[]), "none");
    }
}
