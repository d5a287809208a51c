//! The merged pipeline document as a tree in which every key and value remembers where it
//! was written (a span in one of the loaded files, or a `--set` argument): built from
//! toml's spanned parse, deep-merged across `extends` and `--set`, and turned into plain
//! `toml` values for the typed checks.

use std::collections::BTreeMap;
use std::ops::Range;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::diagnostic::{Location, Snippet};

/// Where a key or value was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Origin {
    /// Byte span in the source file with this index in [`Sources`].
    File { source: usize, span: Range<usize> },
    /// Byte span inside the `--set` argument with this index (the `KEY=VALUE` text).
    Set { arg: usize, span: Range<usize> },
}

/// The texts origins point into: every loaded file and every `--set` argument.
#[derive(Debug, Default)]
pub(crate) struct Sources {
    files: Vec<(String, String)>,
    args: Vec<String>,
}

impl Sources {
    /// Registers a file's text under the name printed in messages; returns its index.
    pub fn add_file(&mut self, name: String, text: String) -> usize {
        self.files.push((name, text));
        self.files.len() - 1
    }
    pub fn text(&self, source: usize) -> &str {
        &self.files[source].1
    }
    /// Registers a `--set` argument (the `KEY=VALUE` part); returns its index.
    pub fn add_arg(&mut self, arg: String) -> usize {
        self.args.push(arg);
        self.args.len() - 1
    }

    /// The printable location of an origin.
    pub fn locate(&self, origin: &Origin) -> Location {
        match origin {
            Origin::File { source, span } => {
                let (name, text) = &self.files[*source];
                let start = span.start.min(text.len());
                let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
                let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
                let line_no = text[..start].matches('\n').count() + 1;
                let column = text[line_start..start].chars().count();
                let end = span.end.clamp(start, line_end);
                let width = text[start..end].chars().count().max(1);
                let line = text[line_start..line_end].trim_end_matches('\r');
                Location {
                    order: (0, *source, start),
                    place: format!("{name}:{line_no}:{}", column + 1),
                    snippet: Some(Snippet {
                        line: Some(line_no),
                        text: line.to_owned(),
                        column,
                        width,
                    }),
                }
            }
            Origin::Set { arg, span } => {
                let text = format!("--set {}", self.args[*arg]);
                let offset = "--set ".len();
                let arg_text = &self.args[*arg];
                let start = span.start.min(arg_text.len());
                let end = span.end.clamp(start, arg_text.len());
                Location {
                    order: (1, *arg, start),
                    place: text.clone(),
                    snippet: Some(Snippet {
                        line: None,
                        column: offset + arg_text[..start].chars().count(),
                        width: arg_text[start..end].chars().count().max(1),
                        text,
                    }),
                }
            }
        }
    }

    /// A location naming a whole file, without a line.
    pub fn whole_file(&self, source: usize) -> Location {
        Location {
            // After the problems with a line in the same file.
            order: (0, source, usize::MAX),
            place: self.files[source].0.clone(),
            snippet: None,
        }
    }
}

/// A value of the merged document with its origins.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    pub value: Value,
    /// Where the value is written (for a `[table]`, its header).
    pub origin: Origin,
    /// Where its key is written (for an array item: the item itself).
    pub key: Origin,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Table(BTreeMap<String, Node>),
    Array(Vec<Node>),
    Scalar(toml::Value),
    /// A value that cannot be represented (reported when read; skipped by typed checks).
    Invalid,
}

/// A value that cannot be represented (an integer outside the 64-bit range).
#[derive(Debug)]
pub(crate) struct ValueError {
    pub origin: Origin,
    pub message: String,
}

impl Node {
    /// Converts toml's spanned parse of a value; `at` maps a span to an origin.
    pub fn from_de(
        key: Origin,
        value: &Spanned<DeValue<'_>>,
        at: &dyn Fn(Range<usize>) -> Origin,
        errors: &mut Vec<ValueError>,
    ) -> Node {
        let origin = at(value.span());
        let value = match value.get_ref() {
            DeValue::String(s) => Value::Scalar(toml::Value::String(s.to_string())),
            DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
                Ok(n) => Value::Scalar(toml::Value::Integer(n)),
                Err(_) => {
                    errors.push(ValueError {
                        origin: origin.clone(),
                        message: format!("integer `{i}` does not fit in 64 bits"),
                    });
                    Value::Invalid
                }
            },
            DeValue::Float(x) => {
                // toml's parser only produces valid float syntax; `inf`/`nan` parse too.
                let parsed = x.as_str().parse::<f64>().unwrap_or(f64::NAN);
                Value::Scalar(toml::Value::Float(parsed))
            }
            DeValue::Boolean(b) => Value::Scalar(toml::Value::Boolean(*b)),
            DeValue::Datetime(d) => Value::Scalar(toml::Value::Datetime(*d)),
            DeValue::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|item| Node::from_de(at(item.span()), item, at, errors))
                    .collect(),
            ),
            DeValue::Table(t) => Value::Table(Node::table_from_de(t, at, errors)),
        };
        Node { value, origin, key }
    }

    /// Converts the entries of a spanned table.
    pub fn table_from_de(
        table: &DeTable<'_>,
        at: &dyn Fn(Range<usize>) -> Origin,
        errors: &mut Vec<ValueError>,
    ) -> BTreeMap<String, Node> {
        table
            .iter()
            .map(|(k, v)| {
                (
                    k.get_ref().to_string(),
                    Node::from_de(at(k.span()), v, at, errors),
                )
            })
            .collect()
    }

    pub fn as_table(&self) -> Option<&BTreeMap<String, Node>> {
        match &self.value {
            Value::Table(t) => Some(t),
            _ => None,
        }
    }
    pub fn as_table_mut(&mut self) -> Option<&mut BTreeMap<String, Node>> {
        match &mut self.value {
            Value::Table(t) => Some(t),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar(toml::Value::String(s)) => Some(s),
            _ => None,
        }
    }

    /// The TOML type name, for messages ("string", "integer", "table", ...).
    pub fn type_name(&self) -> &'static str {
        match &self.value {
            Value::Table(_) => "table",
            Value::Array(_) => "array",
            Value::Scalar(v) => v.type_str(),
            Value::Invalid => "invalid value",
        }
    }

    /// Deep merge: `over`'s tables merge into this node's tables key by key; anything else
    /// (scalars, arrays, a table meeting a non-table) replaces.
    pub fn merge(&mut self, over: Node) {
        match (&mut self.value, over.value) {
            (Value::Table(base), Value::Table(top)) => {
                for (k, v) in top {
                    match base.get_mut(&k) {
                        Some(existing) => existing.merge(v),
                        None => {
                            base.insert(k, v);
                        }
                    }
                }
                self.origin = over.origin;
                self.key = over.key;
            }
            (_, value) => {
                *self = Node {
                    value,
                    origin: over.origin,
                    key: over.key,
                }
            }
        }
    }

    /// The node at `path` (table keys, or array indices as decimal text), if it exists.
    pub fn get_path(&self, path: &[String]) -> Option<&Node> {
        let Some((first, rest)) = path.split_first() else {
            return Some(self);
        };
        let next = match &self.value {
            Value::Table(t) => t.get(first),
            Value::Array(items) => first.parse::<usize>().ok().and_then(|i| items.get(i)),
            Value::Scalar(_) | Value::Invalid => None,
        }?;
        next.get_path(rest)
    }

    /// The deepest node along `path` and how many segments of it exist.
    pub fn deepest(&self, path: &[String]) -> (&Node, usize) {
        let mut node = self;
        for (depth, segment) in path.iter().enumerate() {
            match node.get_path(std::slice::from_ref(segment)) {
                Some(next) => node = next,
                None => return (node, depth),
            }
        }
        (node, path.len())
    }

    /// The plain TOML value (origins dropped).
    pub fn to_toml(&self) -> toml::Value {
        match &self.value {
            Value::Scalar(v) => v.clone(),
            Value::Array(items) => toml::Value::Array(items.iter().map(Node::to_toml).collect()),
            Value::Table(t) => toml::Value::Table(table_to_toml(t)),
            // Never part of a valid pipeline: loading fails once one has been read.
            Value::Invalid => toml::Value::Integer(0),
        }
    }

    /// Whether this value or one inside it could not be represented.
    pub fn has_invalid(&self) -> bool {
        match &self.value {
            Value::Invalid => true,
            Value::Table(t) => t.values().any(Node::has_invalid),
            Value::Array(items) => items.iter().any(Node::has_invalid),
            Value::Scalar(_) => false,
        }
    }
}

/// A table of nodes as a plain TOML table.
pub(crate) fn table_to_toml(t: &BTreeMap<String, Node>) -> toml::Table {
    t.iter().map(|(k, v)| (k.clone(), v.to_toml())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(src: &str, source: usize) -> Node {
        let doc = DeTable::parse(src).expect("test document parses");
        let at = |span: Range<usize>| Origin::File { source, span };
        let mut errors = Vec::new();
        let table = Node::table_from_de(doc.get_ref(), &at, &mut errors);
        assert!(errors.is_empty());
        Node {
            value: Value::Table(table),
            origin: at(0..0),
            key: at(0..0),
        }
    }

    #[test]
    fn merge_is_deep_for_tables_and_replaces_everything_else() {
        let mut base = parse(
            "[a]\nx = 1\nlist = [1, 2]\n[a.inner]\np = 1\nq = 2\n[b]\ny = 1\n",
            0,
        );
        let over = parse(
            "[a]\nlist = [3]\n[a.inner]\nq = 20\n[b]\ny = { t = 1 }\n",
            1,
        );
        base.merge(over);
        let expected = parse(
            "[a]\nx = 1\nlist = [3]\n[a.inner]\np = 1\nq = 20\n[b]\ny = { t = 1 }\n",
            2,
        );
        assert_eq!(base.to_toml(), expected.to_toml());
        // Merged values keep the origin of the file that wrote them.
        let q = base
            .get_path(&["a".into(), "inner".into(), "q".into()])
            .unwrap();
        assert!(matches!(q.origin, Origin::File { source: 1, .. }));
        let p = base
            .get_path(&["a".into(), "inner".into(), "p".into()])
            .unwrap();
        assert!(matches!(p.origin, Origin::File { source: 0, .. }));
    }

    #[test]
    fn locates_lines_and_columns_in_characters() {
        let mut sources = Sources::default();
        let src = "[a]\nname = \"héllo\"\nx = 1\n";
        let s = sources.add_file("f.toml".into(), src.into());
        let node = parse(src, s);
        let x = node.get_path(&["a".into(), "x".into()]).unwrap();
        let loc = sources.locate(&x.origin);
        assert_eq!(loc.place, "f.toml:3:5");
        let name = node.get_path(&["a".into(), "name".into()]).unwrap();
        let snippet = sources.locate(&name.origin).snippet.unwrap();
        assert_eq!(
            (snippet.line, snippet.column, snippet.width),
            (Some(2), 7, 7)
        );
    }

    #[test]
    fn deepest_reports_how_far_a_path_exists() {
        let node = parse("[a]\nb = [1, { c = 2 }]\n", 0);
        let path: Vec<String> = ["a", "b", "1", "c"].map(String::from).to_vec();
        assert_eq!(node.deepest(&path).1, 4);
        let path: Vec<String> = ["a", "zz", "c"].map(String::from).to_vec();
        assert_eq!(node.deepest(&path).1, 1);
    }
}
