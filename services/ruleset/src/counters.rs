//! Rule counters by config rule name, read back from the kernel: a pure parser of
//! `nft -j list table inet twinwall` ([`parse`]) and its IO shell ([`read`]).
//!
//! Every nft rule the compiler writes carries a `counter` and a `comment` naming its
//! config rule (or the generated plumbing, for example `cluster:sync`). A merged run
//! (docs/ruleset.md, "Merged runs") is one nft rule over a set whose elements carry
//! each config rule's name and its own counter; the rule's own counter is the sum of
//! them and is skipped here, so each config rule is counted exactly once. A rule that
//! became one nft rule per address family (or a generated rule that exists in several
//! chains, like `established`) is summed under its name.

use std::collections::{HashMap, HashSet};

use serde::Serialize;
use serde_json::Value;

use crate::apply::{ApplyError, Nft};

/// The packets and bytes one rule (by name) has counted since the ruleset was applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleCounter {
    /// The config rule's name (or the generated rule's comment, e.g. `cluster:sync`).
    pub rule: String,
    /// The chain it is in (the first one, for generated rules in several chains).
    pub chain: String,
    /// Packets counted.
    pub packets: u64,
    /// Bytes counted.
    pub bytes: u64,
    /// The rule is one element of a merged set (`forward_merged_N`).
    pub merged: bool,
}

/// Why the nft listing could not be turned into counters.
#[derive(Debug, thiserror::Error)]
pub enum CountersError {
    /// nft could not be run or refused to list the table (for example: no twinwall
    /// table is loaded).
    #[error(transparent)]
    Nft(#[from] ApplyError),
    /// The listing is not JSON.
    #[error("nft -j output is not JSON: {source}")]
    Json {
        /// The parser's error (with line and column).
        source: serde_json::Error,
    },
    /// The JSON is not an nft listing (no top-level `nftables` array).
    #[error("nft -j output has no `nftables` array")]
    Shape,
}

/// One counter statement: `{"counter": {"packets": N, "bytes": M}}`.
fn counter(v: &Value) -> Option<(u64, u64)> {
    let c = v.get("counter")?;
    Some((c.get("packets")?.as_u64()?, c.get("bytes")?.as_u64()?))
}

/// Set names a rule looks up (`"right": "@NAME"` of its matches).
fn lookups(expr: &[Value]) -> impl Iterator<Item = &str> {
    expr.iter()
        .filter_map(|e| e.get("match")?.get("right")?.as_str()?.strip_prefix('@'))
}

struct Acc {
    out: Vec<RuleCounter>,
    index: HashMap<String, usize>,
}

impl Acc {
    fn add(&mut self, rule: &str, chain: &str, (packets, bytes): (u64, u64), merged: bool) {
        if let Some(&i) = self.index.get(rule) {
            let c = &mut self.out[i];
            c.packets += packets;
            c.bytes += bytes;
            return;
        }
        self.index.insert(rule.to_string(), self.out.len());
        self.out.push(RuleCounter {
            rule: rule.to_string(),
            chain: chain.to_string(),
            packets,
            bytes,
            merged,
        });
    }
}

/// Maps the counters of an `nft -j list table inet twinwall` (or `list ruleset`)
/// listing to rule names, in chain order (chains as nft lists them, rules in order,
/// the elements of a merged set where its rule stands). Rules without a comment or a
/// counter (none that twinwall writes) are left out.
pub fn parse(json: &str) -> Result<Vec<RuleCounter>, CountersError> {
    let doc: Value = serde_json::from_str(json).map_err(|source| CountersError::Json { source })?;
    let items = doc
        .get("nftables")
        .and_then(Value::as_array)
        .ok_or(CountersError::Shape)?;
    // Sets whose elements carry a name and a counter: (table, set) -> [(name, counter)].
    let mut per_element: HashMap<(&str, &str), Vec<(&str, (u64, u64))>> = HashMap::new();
    for s in items.iter().filter_map(|i| i.get("set")) {
        let (Some(table), Some(name)) = (
            s.get("table").and_then(Value::as_str),
            s.get("name").and_then(Value::as_str),
        ) else {
            continue;
        };
        let elems: Vec<(&str, (u64, u64))> = s
            .get("elem")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|e| {
                let e = e.get("elem")?;
                Some((e.get("comment")?.as_str()?, counter(e)?))
            })
            .collect();
        if !elems.is_empty() {
            per_element.insert((table, name), elems);
        }
    }
    let mut acc = Acc {
        out: Vec::new(),
        index: HashMap::new(),
    };
    let mut expanded: HashSet<(&str, &str)> = HashSet::new();
    for r in items.iter().filter_map(|i| i.get("rule")) {
        let table = r.get("table").and_then(Value::as_str).unwrap_or_default();
        let chain = r.get("chain").and_then(Value::as_str).unwrap_or_default();
        let expr = r
            .get("expr")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let merged: Vec<&str> = lookups(expr)
            .filter(|s| per_element.contains_key(&(table, *s)))
            .collect();
        if !merged.is_empty() {
            // The elements count per rule; the rule's own counter is their sum.
            for set in merged {
                if expanded.insert((table, set)) {
                    for (name, c) in &per_element[&(table, set)] {
                        acc.add(name, chain, *c, true);
                    }
                }
            }
            continue;
        }
        let (Some(name), Some(c)) = (
            r.get("comment").and_then(Value::as_str),
            expr.iter().find_map(counter),
        ) else {
            continue;
        };
        acc.add(name, chain, c, false);
    }
    Ok(acc.out)
}

/// Reads the counters of the loaded twinwall table with one `nft -j list table`.
pub fn read(nft: &Nft) -> Result<Vec<RuleCounter>, CountersError> {
    parse(&nft.list_table_json()?)
}
