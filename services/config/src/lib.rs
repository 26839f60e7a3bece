//! The cluster config: the TOML model, validation with file:line:column diagnostics, the
//! per-node resolved view ([`view::NodeView`]) and the JSON Schema.
//!
//! The path of a config: [`load`]/[`parse`] run the structural pass (TOML syntax, unknown
//! keys, value types; `load.rs`) into the raw serde model (`raw.rs`), then semantic
//! validation (`validate.rs`) into the cluster-wide model (`model.rs`); a [`Config`] exists
//! only when no error was found. [`Config::node_view`] resolves one node's view
//! (`resolve.rs`). Every error is reported, not just the first.

mod diag;
mod load;
mod model;
mod raw;
mod resolve;
mod validate;
pub mod view;

use std::path::Path;

pub use diag::{Diagnostic, Diagnostics, Severity};
pub use model::{
    DEFAULT_ADVERT_INTERVAL_MS, DEFAULT_GARP_COUNT, DEFAULT_GARP_INTERVAL_MS,
    DEFAULT_MANAGEMENT_PORT, DEFAULT_SYNC_PORT,
};
pub use view::*;

/// A validated cluster config.
#[derive(Debug, Clone)]
pub struct Config {
    source: String,
    model: model::Model,
    warnings: Diagnostics,
}

/// Why a node's view could not be produced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ViewError {
    /// The node is not one of the config's nodes.
    #[error("unknown node `{node}` in {source_name}; the config defines: {}", known.join(", "))]
    UnknownNode {
        /// The name asked for.
        node: String,
        /// The config's source name.
        source_name: String,
        /// The nodes the config defines.
        known: Vec<String>,
    },
}

/// Reads and validates a config file. A file that cannot be read (or is not UTF-8) is
/// reported as a diagnostic too, so that callers deal with one error type.
pub fn load(path: &Path) -> Result<Config, Diagnostics> {
    let name = path.display().to_string();
    let started = std::time::Instant::now();
    let result = read_and_parse(path, &name);
    match &result {
        Ok(cfg) => tracing::debug!(
            file = %name,
            cluster = cfg.cluster_name(),
            version = cfg.version(),
            warnings = cfg.warnings().len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "config valid"
        ),
        Err(d) => tracing::debug!(
            file = %name,
            errors = d.errors().count(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "config rejected"
        ),
    }
    result
}

fn read_and_parse(path: &Path, name: &str) -> Result<Config, Diagnostics> {
    let name = name.to_owned();
    match std::fs::read(path) {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(text) => parse(&name, &text),
            Err(e) => Err(Diagnostics::single(
                &name,
                &format!(
                    "not UTF-8 text (invalid byte at offset {})",
                    e.utf8_error().valid_up_to()
                ),
                "a TOML config is UTF-8 text",
            )),
        },
        Err(e) => Err(Diagnostics::single(
            &name,
            &format!("cannot read the file: {e}"),
            "check the path and its permissions",
        )),
    }
}

/// Parses and validates a config. `source_name` names the text in diagnostics (a path).
/// Never panics, whatever the input.
pub fn parse(source_name: &str, text: &str) -> Result<Config, Diagnostics> {
    let mut sink = diag::Sink::new(source_name, text);
    let raw = load::parse_raw(&mut sink, text);
    let model = raw.and_then(|raw| validate::validate(&mut sink, &raw));
    let diags = sink.finish();
    match model {
        Some(model) if !diags.has_errors() => Ok(Config {
            source: source_name.to_owned(),
            model,
            warnings: diags,
        }),
        _ => Err(diags),
    }
}

impl Config {
    /// The node names, sorted.
    pub fn node_names(&self) -> Vec<String> {
        self.model.nodes.iter().map(|n| n.name.clone()).collect()
    }

    /// `[cluster] name`.
    pub fn cluster_name(&self) -> &str {
        &self.model.cluster
    }

    /// `[cluster] version`.
    pub fn version(&self) -> u64 {
        self.model.version
    }

    /// The source name the config was parsed from.
    pub fn source_name(&self) -> &str {
        &self.source
    }

    /// Warnings found while validating (the config is valid nevertheless).
    pub fn warnings(&self) -> &Diagnostics {
        &self.warnings
    }

    /// The resolved view of one node.
    pub fn node_view(&self, node: &str) -> Result<NodeView, ViewError> {
        match self.model.nodes.iter().position(|n| n.name == node) {
            Some(i) => Ok(resolve::node_view(&self.model, i)),
            None => Err(ViewError::UnknownNode {
                node: node.to_owned(),
                source_name: self.source.clone(),
                known: self.node_names(),
            }),
        }
    }
}

/// The JSON Schema (draft 2020-12) of the config file, generated from the raw types, for
/// editors (taplo / Even Better TOML: `#:schema ./twinwall-config.schema.json`).
pub fn json_schema() -> serde_json::Value {
    let schema = schemars::schema_for!(raw::RawConfig);
    let mut value = schema.to_value();
    strip_null(&mut value);
    value
}

/// The schema, generated once per process (the structural pass walks it for every parse).
pub(crate) fn cached_schema() -> &'static serde_json::Value {
    static SCHEMA: std::sync::OnceLock<serde_json::Value> = std::sync::OnceLock::new();
    SCHEMA.get_or_init(json_schema)
}

/// Raw keys are `Option`s so that validation can report a missing key itself; TOML has no
/// null, so the schema should not offer one.
fn strip_null(v: &mut serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::Object(map) => {
            if let Some(Value::Array(types)) = map.get_mut("type") {
                types.retain(|t| t != "null");
                if types.len() == 1 {
                    let only = types.remove(0);
                    map.insert("type".to_owned(), only);
                }
            }
            if let Some(Value::Array(any)) = map.get_mut("anyOf") {
                any.retain(|s| s.get("type").is_none_or(|t| t != "null"));
                if any.len() == 1 {
                    let only = any.remove(0);
                    map.remove("anyOf");
                    if let Value::Object(inner) = only {
                        map.extend(inner);
                    }
                }
            }
            map.values_mut().for_each(strip_null);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_null),
        _ => {}
    }
}
