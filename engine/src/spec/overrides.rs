//! `--set KEY=VALUE` overrides: parsing (TOML key and value syntax; a value that is not
//! valid TOML and does not start like a string, array or table is taken as a bare string)
//! and applying them to the merged document, each value remembering its argument.
//!
//! Keys: `STAGE.KEY[.KEY...]` (or `stages.STAGE.KEY...`) for a stage, `pipeline.KEY...` for
//! the `[pipeline]` table. The stage must exist; a key that does not exist yet is added
//! and then checked like any other key (an unknown parameter is reported with "did you
//! mean", pointing at the argument).

use std::collections::BTreeMap;
use std::ops::Range;

use toml::de::DeValue;

use super::diagnostic::{did_you_mean, Diagnostic};
use super::document::{key_segments, EXTENDS};
use super::tree::{Node, Origin, Sources, Value};

/// A parsed `--set` argument.
#[derive(Debug)]
pub(crate) struct Override {
    /// Key segments as written, with their spans in the argument.
    pub path: Vec<(String, Range<usize>)>,
    pub value: Node,
}

/// Parses one `--set` argument (registered in `sources` as argument `arg`).
pub(crate) fn parse(arg: usize, text: &str) -> Result<Override, Box<Diagnostic>> {
    let set = |span: Range<usize>| Origin::Set { arg, span };
    let Some(eq) = text.find('=') else {
        return Err(Box::new(
            Diagnostic::new(format!("`--set {text}` has no value"), None)
                .with_help("write `--set STAGE.KEY=VALUE`, e.g. `--set train.steps=200`"),
        ));
    };
    let key = &text[..eq];
    let path = key_segments(key).ok_or_else(|| {
        Box::new(
            Diagnostic::new(format!("`{}` is not a valid TOML key", key.trim()), None)
                .with_help("write `--set STAGE.KEY=VALUE`; quote key parts with dots in them"),
        )
    })?;
    let key_origin = set(path.last().map_or(0..eq, |(_, span)| span.clone()));
    let raw = &text[eq + 1..];
    let lead = raw.len() - raw.trim_start().len();
    let trimmed = raw.trim();
    let offset = eq + 1 + lead;
    let value_span = offset..offset + trimmed.len();
    let value = match DeValue::parse(trimmed) {
        Ok(parsed) => {
            let at = |span: Range<usize>| set(span.start + offset..span.end + offset);
            let mut errors = Vec::new();
            let node = Node::from_de(key_origin, &parsed, &at, &mut errors);
            if let Some(e) = errors.into_iter().next() {
                return Err(Box::new(Diagnostic::new(
                    format!("invalid value: {}", e.message),
                    None,
                )));
            }
            node
        }
        Err(e) if trimmed.starts_with(['"', '\'', '[', '{']) => {
            return Err(Box::new(
                Diagnostic::new(
                    format!("invalid TOML value `{trimmed}`: {}", e.message()),
                    None,
                )
                .with_help("quote strings, e.g. `--set 'tokenize.scheme=\"bpe\"'`"),
            ));
        }
        Err(_) => Node {
            value: Value::Scalar(toml::Value::String(trimmed.to_owned())),
            origin: set(value_span),
            key: key_origin,
        },
    };
    Ok(Override { path, value })
}

/// Applies every override in order to `root`; problems go to `diags`.
pub(crate) fn apply(
    root: &mut Node,
    overrides: &[String],
    sources: &mut Sources,
    diags: &mut Vec<Diagnostic>,
) {
    for text in overrides {
        let arg = sources.add_arg(text.clone());
        let located = |d: Diagnostic, span: Range<usize>| Diagnostic {
            origin: Some(sources.locate(&Origin::Set { arg, span })),
            ..d
        };
        match parse(arg, text) {
            Ok(o) => {
                if let Err(failed) = apply_one(root, arg, o) {
                    let (d, span) = *failed;
                    diags.push(located(d, span));
                }
            }
            Err(d) => diags.push(located(*d, 0..text.len())),
        }
    }
}

/// Applies one override (argument number `arg`); an error comes with the span of the
/// argument to point at.
fn apply_one(
    root: &mut Node,
    arg: usize,
    o: Override,
) -> Result<(), Box<(Diagnostic, Range<usize>)>> {
    let Override { path, value } = o;
    let set = |span: &Range<usize>| Origin::Set {
        arg,
        span: span.clone(),
    };
    let (first, first_span) = &path[0];
    let whole = first_span.start..path[path.len() - 1].1.end;
    let table = root.as_table_mut().expect("the document root is a table");
    let (target, rest): (&mut Node, &[(String, Range<usize>)]) = match first.as_str() {
        EXTENDS => {
            return Err(Box::new((
                Diagnostic::new("`extends` cannot be set from the command line", None)
                    .with_help("write a small file that extends the pipeline instead"),
                whole,
            )))
        }
        "pipeline" => {
            let node = table.entry("pipeline".to_owned()).or_insert_with(|| Node {
                value: Value::Table(BTreeMap::new()),
                origin: set(first_span),
                key: set(first_span),
            });
            (node, &path[1..])
        }
        _ => {
            let stage_path = if first == "stages" {
                &path[1..]
            } else {
                &path[..]
            };
            let names: Vec<String> = table
                .get("stages")
                .and_then(Node::as_table)
                .map(|t| t.keys().cloned().collect())
                .unwrap_or_default();
            let Some((stage, stage_span)) = stage_path.first() else {
                return Err(Box::new((missing_key_help(), whole)));
            };
            let Some(node) = table
                .get_mut("stages")
                .and_then(Node::as_table_mut)
                .and_then(|t| t.get_mut(stage))
            else {
                let d = Diagnostic::new(format!("`--set` names unknown stage `{stage}`"), None)
                    .with_help_opt(did_you_mean(stage, &names).or_else(|| {
                        Some("the first part of the key is a stage name, or `pipeline`".to_owned())
                    }));
                return Err(Box::new((d, stage_span.clone())));
            };
            (node, &stage_path[1..])
        }
    };
    if rest.is_empty() {
        return Err(Box::new((missing_key_help(), whole)));
    }
    let mut node = target;
    let mut walked: Vec<&str> = path[..path.len() - rest.len()]
        .iter()
        .map(|(s, _)| s.as_str())
        .collect();
    for (segment, span) in &rest[..rest.len() - 1] {
        let type_name = node.type_name();
        let Some(t) = node.as_table_mut() else {
            return Err(Box::new((not_a_table(&walked, type_name), span.clone())));
        };
        node = t.entry(segment.clone()).or_insert_with(|| Node {
            value: Value::Table(BTreeMap::new()),
            origin: set(span),
            key: set(span),
        });
        walked.push(segment);
    }
    let (leaf, leaf_span) = &rest[rest.len() - 1];
    let type_name = node.type_name();
    let Some(t) = node.as_table_mut() else {
        return Err(Box::new((
            not_a_table(&walked, type_name),
            leaf_span.clone(),
        )));
    };
    match t.get_mut(leaf) {
        Some(existing) => existing.merge(value),
        None => {
            t.insert(leaf.clone(), value);
        }
    }
    Ok(())
}

fn missing_key_help() -> Diagnostic {
    Diagnostic::new("`--set` needs a key inside a stage or `pipeline`", None)
        .with_help("write `--set STAGE.KEY=VALUE`, e.g. `--set train.steps=200`")
}

fn not_a_table(walked: &[&str], type_name: &str) -> Diagnostic {
    Diagnostic::new(
        format!(
            "`{}` is {} {type_name}, not a table, so it has no keys to set",
            walked.join("."),
            if type_name.starts_with(['a', 'e', 'i', 'o', 'u']) {
                "an"
            } else {
                "a"
            }
        ),
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value_of(text: &str) -> toml::Value {
        parse(0, text).expect("parses").value.to_toml()
    }

    #[test]
    fn values_use_toml_syntax_with_bare_words_as_strings() {
        assert_eq!(value_of("train.steps=200"), toml::Value::Integer(200));
        assert_eq!(value_of("train.lr=3e-4"), toml::Value::Float(3e-4));
        assert_eq!(value_of("a.b=true"), toml::Value::Boolean(true));
        assert_eq!(value_of("a.b=\"bpe\""), toml::Value::String("bpe".into()));
        assert_eq!(value_of("a.b=bpe"), toml::Value::String("bpe".into()));
        assert_eq!(
            value_of("a.b= data/x y "),
            toml::Value::String("data/x y".into())
        );
        assert_eq!(
            value_of("a.b=[1, 2]"),
            toml::Value::Array(vec![1.into(), 2.into()])
        );
        let t = value_of("a.b={ x = 1 }");
        assert_eq!(t.get("x"), Some(&toml::Value::Integer(1)));
    }

    #[test]
    fn keys_are_dotted_toml_keys_with_spans() {
        let o = parse(0, "train.\"model.x\".size=3").unwrap();
        let names: Vec<&str> = o.path.iter().map(|(s, _)| s.as_str()).collect();
        assert_eq!(names, ["train", "model.x", "size"]);
        assert_eq!(o.path[2].1, 16..20);
        assert_eq!(
            o.value.origin,
            Origin::Set {
                arg: 0,
                span: 21..22
            }
        );
    }

    #[test]
    fn malformed_arguments_are_errors() {
        assert!(parse(0, "train.steps").is_err());
        assert!(parse(0, "train..steps=1").is_err());
        assert!(parse(0, "a.b=[1, 2").is_err());
        assert!(parse(0, "a.b=\"open").is_err());
    }
}
