//! The structural pass: TOML syntax, unknown keys and wrong value types, all reported.
//!
//! serde stops at the first error, but an operator wants every mistyped key at once. So
//! the text is parsed into a spanned document (`toml::de::DeTable`) and walked once
//! against the JSON Schema generated from the raw types, which finds every unknown key
//! (with "did you mean" from the schema's key names) and removes it. The rest is
//! deserialised into [`RawConfig`]; on a type error the offending entry (found by its
//! exact span) is recorded and removed from a fresh parse, and deserialisation runs
//! again. Raw keys are optional, so removing one never causes a follow-on error. A valid
//! file costs one parse and one deserialisation (serde accepting it means the walk would
//! find nothing); a file with errors one more parse and the walk, and each type error one
//! more of each, so type errors are capped.

use std::ops::Range;

use serde::Deserialize;
use serde_json::Value;
use toml::de::{DeTable, DeValue, Deserializer};

use crate::diag::{Sink, list, suggest};
use crate::raw::RawConfig;

/// After this many type errors the rest are unlikely to be independent (and each one
/// costs a parse of the whole file).
const MAX_TYPE_ERRORS: usize = 20;

/// Parses `text` into the raw model, reporting syntax, unknown-key and type errors into
/// `sink`. Returns `None` when nothing sensible can be validated (a syntax error), and the
/// raw model (with the bad entries left out) otherwise.
pub(crate) fn parse_raw(sink: &mut Sink<'_>, text: &str) -> Option<RawConfig> {
    let (doc, errors) = DeTable::parse_recoverable(text);
    if !errors.is_empty() {
        // After the first error on a line the parser's recovery mostly reports echoes of
        // it: keep the first error of each line.
        let mut errors: Vec<(Range<usize>, toml::de::Error)> = errors
            .into_iter()
            .map(|e| (e.span().unwrap_or(0..0), e))
            .collect();
        errors.sort_by_key(|(span, _)| span.start);
        let mut last_line = None;
        for (span, e) in errors {
            let line = sink.locate(&span).0;
            if last_line == Some(line) {
                continue;
            }
            last_line = Some(line);
            sink.error(
                &span,
                format!("TOML syntax: {}", e.message().trim_end()),
                "fix the TOML syntax first; semantic checks run once the file parses",
            );
        }
        return None;
    }
    // Fast path: serde denies unknown keys and checks every value's type, and the schema
    // the walk below uses is generated from the same types, so a file serde accepts as
    // it is would give the walk nothing to report. Walking a valid 10k-rule config
    // against the schema cost as much as a quarter of parsing it (callgrind), so it runs
    // only for a file with an error, from a fresh parse (deserialising consumed `doc`).
    if let Ok(raw) = RawConfig::deserialize(Deserializer::from(doc)) {
        return Some(raw);
    }
    let schema = crate::cached_schema();
    // The first parse succeeded, so this one does too.
    let mut doc = DeTable::parse(text).ok()?;
    remove_unknown_keys(schema, doc.get_mut(), Some(sink));
    let mut removed: Vec<Range<usize>> = Vec::new();
    loop {
        let err = match RawConfig::deserialize(Deserializer::from(doc)) {
            Ok(raw) => return Some(raw),
            Err(e) => e,
        };
        let span = err.span().unwrap_or(0..0);
        // The first parse succeeded, so this one does too; spans are identical.
        let mut fresh = DeTable::parse(text).ok()?;
        remove_unknown_keys(schema, fresh.get_mut(), None);
        for r in &removed {
            remove_at(fresh.get_mut(), r, &mut Vec::new());
        }
        let Some(found) = remove_at(fresh.get_mut(), &span, &mut Vec::new()) else {
            // Not attributable to one entry: report it and stop the structural pass.
            sink.error(&span, err.message().to_owned(), "see docs/config.md");
            return None;
        };
        report(sink, &span, &found, err.message());
        removed.push(span.clone());
        if removed.len() >= MAX_TYPE_ERRORS {
            sink.error(
                &span,
                format!("{MAX_TYPE_ERRORS} values of the wrong type; stopped looking for more"),
                "fix these and run the check again",
            );
            return None;
        }
        doc = fresh;
    }
}

/// Removes every key the schema does not allow, reporting each into `sink` when given.
fn remove_unknown_keys(schema: &Value, root: &mut DeTable<'_>, mut sink: Option<&mut Sink<'_>>) {
    walk_table(schema, schema, root, &mut Vec::new(), &mut sink);
}

/// Follows a `$ref` into the schema's `$defs`.
fn resolve<'s>(root: &'s Value, schema: &'s Value) -> &'s Value {
    schema
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix("#/$defs/"))
        .and_then(|name| root.get("$defs")?.get(name))
        .unwrap_or(schema)
}

fn walk_table(
    root: &Value,
    schema: &Value,
    table: &mut DeTable<'_>,
    path: &mut Vec<String>,
    sink: &mut Option<&mut Sink<'_>>,
) {
    let schema = resolve(root, schema);
    let props = schema.get("properties").and_then(Value::as_object);
    let extra = schema.get("additionalProperties");
    if let (Some(props), Some(Value::Bool(false))) = (props, extra) {
        let unknown: Vec<(String, Range<usize>)> = table
            .iter()
            .filter(|(k, _)| !props.contains_key(k.get_ref().as_ref()))
            .map(|(k, _)| (k.get_ref().to_string(), k.span()))
            .collect();
        for (key, span) in unknown {
            table.remove(key.as_str());
            if let Some(sink) = sink.as_deref_mut() {
                let found = Found {
                    table: path.clone(),
                    key,
                    at_key: true,
                };
                report_unknown(sink, &span, &found, props.keys().map(String::as_str));
            }
        }
    }
    let mut wrong: Vec<String> = Vec::new();
    for (k, v) in table.iter_mut() {
        let sub = props
            .and_then(|p| p.get(k.get_ref().as_ref()))
            .or(extra.filter(|e| e.is_object()));
        let Some(sub) = sub else { continue };
        if let Err((span, expected, got)) = check_type(root, sub, v) {
            if let Some(sink) = sink.as_deref_mut() {
                let found = Found {
                    table: path.clone(),
                    key: k.get_ref().to_string(),
                    at_key: false,
                };
                sink.note_suggested(found.table.join("."), found.key.clone());
                sink.error(
                    &span,
                    format!(
                        "wrong type for `{}` {}: expected {expected}, found {got}",
                        found.key,
                        table_name(&found)
                    ),
                    "see docs/config.md for the type of this key",
                );
            }
            wrong.push(k.get_ref().to_string());
            continue;
        }
        path.push(k.get_ref().to_string());
        walk_value(root, sub, v.get_mut(), path, sink);
        path.pop();
    }
    for k in wrong {
        table.remove(k.as_str());
    }
}

/// What a TOML value is, for messages.
fn kind(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

/// Checks a value's TOML type against the schema (tables only shallowly: their keys are
/// walked separately). On a mismatch returns the span of the offending value (an array
/// element when one is at fault), what was expected and what was found.
fn check_type(
    root: &Value,
    schema: &Value,
    v: &serde_spanned::Spanned<DeValue<'_>>,
) -> Result<(), (Range<usize>, String, &'static str)> {
    let schema = resolve(root, schema);
    if let Some(any) = schema.get("anyOf").and_then(Value::as_array) {
        if any.iter().any(|s| check_type(root, s, v).is_ok()) {
            return Ok(());
        }
        // Report against the branch of the same shape when there is one (a bad element
        // of an array), otherwise against all of them.
        if let Some(s) = any
            .iter()
            .find(|s| resolve(root, s).get("type").and_then(Value::as_str) == Some("array"))
            && matches!(v.get_ref(), DeValue::Array(_))
        {
            return check_type(root, s, v);
        }
        let names: Vec<String> = any.iter().map(|s| type_name(resolve(root, s))).collect();
        return Err((v.span(), names.join(" or "), kind(v.get_ref())));
    }
    let Some(want) = schema.get("type").and_then(Value::as_str) else {
        return Ok(());
    };
    let ok = matches!(
        (want, v.get_ref()),
        ("string", DeValue::String(_))
            | ("integer", DeValue::Integer(_))
            | ("boolean", DeValue::Boolean(_))
            | ("number", DeValue::Integer(_) | DeValue::Float(_))
            | ("object", DeValue::Table(_))
            | ("array", DeValue::Array(_))
    );
    if !ok {
        return Err((v.span(), type_name(schema), kind(v.get_ref())));
    }
    if let (DeValue::Array(a), Some(items)) = (v.get_ref(), schema.get("items")) {
        for item in a.iter() {
            check_type(root, items, item)?;
        }
    }
    Ok(())
}

/// "a string", "an array of strings", ... from a (resolved) schema.
fn type_name(schema: &Value) -> String {
    match schema.get("type").and_then(Value::as_str) {
        Some("string") => "a string".into(),
        Some("integer") => "an integer".into(),
        Some("boolean") => "a boolean (true or false)".into(),
        Some("number") => "a number".into(),
        Some("object") => "a table".into(),
        Some("array") => match schema
            .get("items")
            .and_then(|i| i.get("type"))
            .and_then(Value::as_str)
        {
            Some("string") => "an array of strings".into(),
            Some("object") | None => "an array of tables".into(),
            Some(other) => format!("an array of {other}s"),
        },
        _ => "a value of another type".into(),
    }
}

fn walk_value(
    root: &Value,
    schema: &Value,
    value: &mut DeValue<'_>,
    path: &mut Vec<String>,
    sink: &mut Option<&mut Sink<'_>>,
) {
    let schema = resolve(root, schema);
    match value {
        DeValue::Table(t) => walk_table(root, schema, t, path, sink),
        DeValue::Array(a) => {
            let Some(items) = schema.get("items") else {
                return;
            };
            let base = path.last().cloned().unwrap_or_default();
            for (i, item) in a.iter_mut().enumerate() {
                if let Some(last) = path.last_mut() {
                    *last = format!("{base}[{i}]");
                }
                walk_value(root, items, item.get_mut(), path, sink);
            }
            if let Some(last) = path.last_mut() {
                *last = base;
            }
        }
        _ => {}
    }
}

fn table_name(found: &Found) -> String {
    if found.table.is_empty() {
        "at the top level".to_owned()
    } else {
        format!("in `{}`", found.table.join("."))
    }
}

fn report_unknown<'k>(
    sink: &mut Sink<'_>,
    span: &Range<usize>,
    found: &Found,
    valid: impl Iterator<Item = &'k str> + Clone,
) {
    let hint = match suggest(&found.key, valid.clone()) {
        Some(s) => {
            sink.note_suggested(found.table.join("."), s.to_owned());
            format!("did you mean `{s}`?")
        }
        None => format!("valid keys here: {}", list(valid)),
    };
    sink.error(
        span,
        format!("unknown key `{}` {}", found.key, table_name(found)),
        hint,
    );
}

/// Where a structural error sits: the path of the enclosing table, the key, and whether
/// the error is about the key itself (unknown) or its value (wrong type).
#[derive(Debug)]
struct Found {
    table: Vec<String>,
    key: String,
    at_key: bool,
}

fn report(sink: &mut Sink<'_>, span: &Range<usize>, found: &Found, serde_msg: &str) {
    if found.at_key {
        // Normally caught by the schema walk. serde's unknown-field message is
        // "unknown field `x`, expected one of `a`, `b`": its backticked words after the
        // first are the valid keys.
        let expected: Vec<&str> = serde_msg.split('`').skip(3).step_by(2).collect();
        report_unknown(sink, span, found, expected.into_iter());
    } else {
        sink.note_suggested(found.table.join("."), found.key.clone());
        sink.error(
            span,
            format!(
                "wrong type for `{}` {}: {serde_msg}",
                found.key,
                table_name(found)
            ),
            "see docs/config.md for the type of this key",
        );
    }
}

/// Finds the table entry whose key span is `span`, or whose value (or an element of its
/// array value) has span `span`, removes it and says where it was.
fn remove_at(
    table: &mut DeTable<'_>,
    span: &Range<usize>,
    path: &mut Vec<String>,
) -> Option<Found> {
    let mut hit: Option<(String, bool)> = None;
    for (k, v) in table.iter() {
        if k.span() == *span {
            hit = Some((k.get_ref().to_string(), true));
            break;
        }
        if v.span() == *span || array_holds(v.get_ref(), span) {
            hit = Some((k.get_ref().to_string(), false));
            break;
        }
    }
    if let Some((key, at_key)) = hit {
        table.remove(key.as_str());
        return Some(Found {
            table: path.clone(),
            key,
            at_key,
        });
    }
    for (k, v) in table.iter_mut() {
        path.push(k.get_ref().to_string());
        let found = match v.get_mut() {
            DeValue::Table(t) => remove_at(t, span, path),
            DeValue::Array(a) => {
                let mut found = None;
                for (i, item) in a.iter_mut().enumerate() {
                    if let DeValue::Table(t) = item.get_mut() {
                        if let Some(last) = path.last_mut() {
                            *last = format!("{}[{i}]", k.get_ref());
                        }
                        found = remove_at(t, span, path);
                        if found.is_some() {
                            break;
                        }
                    }
                }
                found
            }
            _ => None,
        };
        path.pop();
        if found.is_some() {
            return found;
        }
    }
    None
}

/// Whether a (non-table) element of this array value, at any depth, has span `span`.
fn array_holds(v: &DeValue<'_>, span: &Range<usize>) -> bool {
    match v {
        DeValue::Array(a) => a
            .iter()
            .any(|item| item.span() == *span || array_holds(item.get_ref(), span)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fast path's premise: on every file serde accepts as it is, the schema walk
    /// reports nothing (so skipping it loses no diagnostic).
    #[test]
    fn the_walk_finds_nothing_in_files_serde_accepts() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let mut checked = 0;
        for dir in [
            root.join("../shared/examples"),
            root.join("examples"),
            root.join("tests/fixtures"),
            root.join("services/config/tests"),
        ] {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries {
                let path = e.unwrap().path();
                if path.extension().is_none_or(|x| x != "toml") {
                    continue;
                }
                let text = std::fs::read_to_string(&path).unwrap();
                let Ok(doc) = DeTable::parse(&text) else {
                    continue;
                };
                if RawConfig::deserialize(Deserializer::from(doc)).is_err() {
                    continue;
                }
                let name = path.display().to_string();
                let mut sink = Sink::new(&name, &text);
                let mut doc = DeTable::parse(&text).unwrap();
                remove_unknown_keys(crate::cached_schema(), doc.get_mut(), Some(&mut sink));
                let d = sink.finish();
                assert!(!d.has_errors(), "{name}: the walk found {d}");
                checked += 1;
            }
        }
        assert!(checked >= 4, "only {checked} files checked");
    }
}
