//! Reading pipeline files into one merged [`Node`] tree: TOML syntax errors (all of them,
//! with duplicate keys and tables naming both places), and the `extends` chain (each file
//! deep-merged onto the one it extends; missing files and cycles reported).

use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};

use super::diagnostic::Diagnostic;
use super::tree::{Node, Origin, Sources, Value};

/// The `extends` key.
pub(crate) const EXTENDS: &str = "extends";

/// One file on the `extends` chain being loaded.
struct ChainLink {
    canonical: PathBuf,
    name: String,
}

/// Loads the pipeline file at `path` and everything it extends, merged. `None` when the
/// document cannot be built (unreadable file, syntax error, `extends` problem); the reasons
/// are in `diags`.
pub(crate) fn load_file(
    path: &Path,
    sources: &mut Sources,
    diags: &mut Vec<Diagnostic>,
) -> Option<Node> {
    let mut chain = Vec::new();
    load_link(path, None, &mut chain, sources, diags)
}

/// Parses `text` (registered under `name`) into a tree without following `extends`.
pub(crate) fn parse_text(
    name: String,
    text: String,
    sources: &mut Sources,
    diags: &mut Vec<Diagnostic>,
) -> Option<(Node, usize)> {
    let source = sources.add_file(name, text);
    let text = sources.text(source);
    let (doc, errors) = DeTable::parse_recoverable(text);
    if !errors.is_empty() {
        let found = syntax_diagnostics(source, doc.get_ref(), &errors, sources);
        diags.extend(found);
        return None;
    }
    let at = |span: Range<usize>| Origin::File { source, span };
    let mut value_errors = Vec::new();
    let table = Node::table_from_de(doc.get_ref(), &at, &mut value_errors);
    for e in value_errors {
        diags.push(Diagnostic::new(e.message, Some(sources.locate(&e.origin))));
    }
    let root = Node {
        value: Value::Table(table),
        origin: at(0..0),
        key: at(0..0),
    };
    Some((root, source))
}

fn load_link(
    path: &Path,
    extended_from: Option<&Node>,
    chain: &mut Vec<ChainLink>,
    sources: &mut Sources,
    diags: &mut Vec<Diagnostic>,
) -> Option<Node> {
    let name = path.display().to_string();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            let d = match extended_from {
                None => Diagnostic::new(format!("cannot read pipeline file `{name}`: {e}"), None),
                Some(node) => Diagnostic::new(
                    format!("cannot read `{name}`, the file this one extends: {e}"),
                    Some(sources.locate(&node.origin)),
                )
                .with_help(
                    "the `extends` path is relative to the folder of the file that names it",
                ),
            };
            diags.push(d);
            return None;
        }
    };
    let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    chain.push(ChainLink {
        canonical,
        name: name.clone(),
    });
    let (mut root, _) = parse_text(name, text, sources, diags)?;
    let extends = root.as_table_mut().and_then(|t| t.remove(EXTENDS));
    let Some(extends) = extends else {
        return Some(root);
    };
    let Some(target) = extends.as_str() else {
        diags.push(
            Diagnostic::new(
                format!(
                    "`extends` must be a string (a path to a pipeline file), found {}",
                    extends.type_name()
                ),
                Some(sources.locate(&extends.origin)),
            )
            .with_help("write `extends = \"base.toml\"`"),
        );
        return None;
    };
    let base_path = path.parent().unwrap_or(Path::new("")).join(target);
    let base_canonical = std::fs::canonicalize(&base_path).ok();
    if let Some(start) = base_canonical
        .as_ref()
        .and_then(|c| chain.iter().position(|link| &link.canonical == c))
    {
        let mut names: Vec<&str> = chain[start..].iter().map(|l| l.name.as_str()).collect();
        names.push(&chain[start].name);
        diags.push(
            Diagnostic::new(
                format!("`extends` cycle: {}", names.join(" -> ")),
                Some(sources.locate(&extends.origin)),
            )
            .with_label("extends a file that (indirectly) extends this one")
            .with_help("remove `extends` from one of these files"),
        );
        return None;
    }
    let mut base = load_link(&base_path, Some(&extends), chain, sources, diags)?;
    base.merge(root);
    Some(base)
}

/// One diagnostic per syntax problem (the first on each line), skipping the errors that
/// follow from a table defined twice.
fn syntax_diagnostics(
    source: usize,
    recovered: &DeTable<'_>,
    errors: &[toml::de::Error],
    sources: &Sources,
) -> Vec<Diagnostic> {
    let text = sources.text(source);
    let mut spans: Vec<(Range<usize>, &str)> = errors
        .iter()
        .map(|e| (e.span().unwrap_or(0..0), e.message()))
        .collect();
    spans.sort_by_key(|(span, _)| (span.start, span.end));
    let mut out = Vec::new();
    let mut last_line = None;
    // After a table defined twice, its keys are duplicates too: skip to the next header.
    let mut skip_until = 0;
    for (span, message) in spans {
        let line = line_of(text, span.start);
        if last_line == Some(line.start) || span.start < skip_until {
            continue;
        }
        last_line = Some(line.start);
        let origin = Origin::File {
            source,
            span: span.clone(),
        };
        let location = Some(sources.locate(&origin));
        let line_text = &text[line.clone()];
        if message == "duplicate key" {
            let key = &text[span.clone()];
            let is_header = line_text.trim_start().starts_with('[');
            let path = if is_header {
                let inner = text[line.start..span.end]
                    .trim_start()
                    .trim_start_matches('[');
                skip_until = next_header(text, line.end);
                key_path(inner)
            } else {
                let header = current_header(text, line.start);
                let local = text[line.start..span.end].trim_start();
                match header {
                    Some(h) => key_path(&format!("{h}.{local}")),
                    None => key_path(local),
                }
            };
            let first = path
                .as_deref()
                .and_then(|p| {
                    if is_header {
                        first_header(text, line.start, p)
                    } else {
                        first_definition(recovered, p)
                    }
                })
                .filter(|first| *first != span);
            let what = match (&path, is_header) {
                (Some(p), true) if p.len() == 2 && p[0] == "stages" => {
                    format!("stage `{}` is defined twice", p[1])
                }
                (Some(p), true) => format!("table `[{}]` is defined twice", p.join(".")),
                (Some(p), false) => format!("key `{}` is defined twice", p.join(".")),
                (None, _) => format!("`{key}` is defined twice"),
            };
            let mut d = Diagnostic::new(what, location).with_label("defined again here");
            if let Some(first) = first {
                let first = sources.locate(&Origin::File {
                    source,
                    span: first,
                });
                d = d.with_note(format!("first defined at {}", first.place));
            }
            out.push(d.with_help("keep one definition and merge the keys into it"));
        } else {
            out.push(Diagnostic::new(
                format!("invalid TOML: {message}"),
                location,
            ));
        }
    }
    out
}

/// Byte range of the line containing `offset` (without its line break).
fn line_of(text: &str, offset: usize) -> Range<usize> {
    let offset = offset.min(text.len());
    let start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
    start..end
}

/// Start of the next `[header]` line after `from`, or the end of the text.
fn next_header(text: &str, from: usize) -> usize {
    let mut pos = from;
    for line in text[from..].split_inclusive('\n') {
        if line.trim_start().starts_with('[') {
            return pos;
        }
        pos += line.len();
    }
    text.len()
}

/// Span of the last key segment of the first `[header]` before `before` that names `path`.
fn first_header(text: &str, before: usize, path: &[String]) -> Option<Range<usize>> {
    let mut pos = 0;
    for line in text[..before].split_inclusive('\n') {
        let start = pos;
        pos += line.len();
        let indent = line.len() - line.trim_start().len();
        let body = line.trim_start();
        let Some(inner) = body.strip_prefix('[') else {
            continue;
        };
        let brackets = if inner.starts_with('[') { 2 } else { 1 };
        let inner = &body[brackets..];
        let Some(end) = inner.find(']') else {
            continue;
        };
        let Some(segments) = key_segments(&inner[..end]) else {
            continue;
        };
        if segments.iter().map(|(s, _)| s).eq(path.iter()) {
            let (_, span) = segments.last()?;
            let offset = start + indent + brackets;
            return Some(offset + span.start..offset + span.end);
        }
    }
    None
}

/// The dotted key of the last `[header]` (or `[[header]]`) before `offset`.
fn current_header(text: &str, offset: usize) -> Option<String> {
    text[..offset].lines().rev().find_map(|line| {
        let line = line.trim();
        let inner = line.strip_prefix('[')?;
        let inner = inner.strip_prefix('[').unwrap_or(inner);
        let end = inner.find(']')?;
        Some(inner[..end].trim().to_owned())
    })
}

/// The segments of a dotted TOML key (bare or quoted parts), if it is one.
pub(crate) fn key_path(key: &str) -> Option<Vec<String>> {
    key_segments(key).map(|segments| segments.into_iter().map(|(s, _)| s).collect())
}

/// The segments of a dotted TOML key with their byte spans in `key`.
pub(crate) fn key_segments(key: &str) -> Option<Vec<(String, Range<usize>)>> {
    let text = format!("{key} = 0");
    let doc = DeTable::parse(&text).ok()?;
    let mut path = Vec::new();
    let mut table = doc.get_ref();
    loop {
        if table.len() != 1 {
            return None;
        }
        let (k, v) = table.iter().next()?;
        path.push((k.get_ref().to_string(), k.span()));
        match v.get_ref() {
            DeValue::Table(t) => table = t,
            _ => return Some(path),
        }
    }
}

/// Span of the key that first defined `path` in the recovered document.
fn first_definition(doc: &DeTable<'_>, path: &[String]) -> Option<Range<usize>> {
    let (first, rest) = path.split_first()?;
    let (key, value) = doc.get_key_value(first.as_str())?;
    if rest.is_empty() {
        return Some(key.span());
    }
    match value.get_ref() {
        DeValue::Table(t) => first_definition(t, rest),
        DeValue::Array(items) => match items.last()?.get_ref() {
            DeValue::Table(t) => first_definition(t, rest),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_paths() {
        assert_eq!(
            key_path("stages.train"),
            Some(vec!["stages".to_owned(), "train".to_owned()])
        );
        assert_eq!(
            key_path("a.\"b.c\".d"),
            Some(vec!["a".to_owned(), "b.c".to_owned(), "d".to_owned()])
        );
        assert_eq!(key_path("a..b"), None);
    }

    #[test]
    fn headers() {
        let text = "[pipeline]\nname = 1\n[stages.a]\nx = 1\n";
        assert_eq!(
            current_header(text, text.len()).as_deref(),
            Some("stages.a")
        );
        assert_eq!(current_header(text, 11).as_deref(), Some("pipeline"));
        assert_eq!(next_header(text, 11), 20);
    }
}
