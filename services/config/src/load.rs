//! The structural pass: TOML syntax, unknown keys and wrong value types, all reported.
//!
//! serde stops at the first error, but an operator wants every mistyped key at once. So
//! the text is parsed into a spanned document (`toml::de::DeTable`), deserialised into
//! [`RawConfig`], and on an error the offending entry (found by its exact span) is
//! recorded and removed from a fresh parse, and deserialisation runs again. Raw keys are
//! optional, so removing one never causes a follow-on error. A valid file costs one parse
//! and one deserialisation; each structural error costs one more of each.

use std::ops::Range;

use serde::Deserialize;
use toml::de::{DeTable, DeValue, Deserializer};

use crate::diag::{Sink, list, suggest};
use crate::raw::RawConfig;

/// After this many structural errors the rest are unlikely to be independent.
const MAX_STRUCTURAL_ERRORS: usize = 100;

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
    let mut removed: Vec<Range<usize>> = Vec::new();
    let mut doc = doc;
    loop {
        let err = match RawConfig::deserialize(Deserializer::from(doc)) {
            Ok(raw) => return Some(raw),
            Err(e) => e,
        };
        let span = err.span().unwrap_or(0..0);
        // The first parse succeeded, so this one does too; spans are identical.
        let mut fresh = DeTable::parse(text).ok()?;
        for r in &removed {
            remove_at(fresh.get_mut(), r, &mut Vec::new());
        }
        let Some(found) = remove_at(fresh.get_mut(), &span, &mut Vec::new()) else {
            // Not attributable to one entry: report it and stop the structural pass.
            sink.error(&span, err.message().to_owned(), "see docs/config.md");
            return None;
        };
        report(sink, &span, &found, err.message());
        removed.push(span);
        if removed.len() >= MAX_STRUCTURAL_ERRORS {
            sink.error(
                &(0..0),
                format!("{MAX_STRUCTURAL_ERRORS} structural errors; stopped looking for more"),
                "fix these and run the check again",
            );
            return None;
        }
        doc = fresh;
    }
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
    let table = if found.table.is_empty() {
        "at the top level".to_owned()
    } else {
        format!("in `{}`", found.table.join("."))
    };
    if found.at_key {
        // serde's unknown-field message is "unknown field `x`, expected one of `a`, `b`"
        // (or "expected `a`", or "there are no fields"); its backticked words after the
        // first are the valid keys.
        let expected: Vec<&str> = serde_msg.split('`').skip(3).step_by(2).collect();
        let hint = match suggest(&found.key, expected.iter().copied()) {
            Some(s) => {
                sink.note_suggested(found.table.join("."), s.to_owned());
                format!("did you mean `{s}`?")
            }
            None => format!("valid keys here: {}", list(expected.iter().copied())),
        };
        sink.error(span, format!("unknown key `{}` {table}", found.key), hint);
    } else {
        sink.note_suggested(found.table.join("."), found.key.clone());
        sink.error(
            span,
            format!("wrong type for `{}` {table}: {serde_msg}", found.key),
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
