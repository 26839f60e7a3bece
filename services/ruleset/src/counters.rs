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
fn counter(v: &Value) -> Option<Count> {
    let c = v.get("counter")?;
    Some((c.get("packets")?.as_u64()?, c.get("bytes")?.as_u64()?))
}

/// Set names a rule looks up (`"right": "@NAME"` of its matches).
fn lookups(expr: &[Value]) -> impl Iterator<Item = &str> {
    expr.iter()
        .filter_map(|e| e.get("match")?.get("right")?.as_str()?.strip_prefix('@'))
}

/// Packets and bytes.
type Count = (u64, u64);

/// The named elements of one set: (rule name, its counter).
type NamedElems<'j> = Vec<(&'j str, Count)>;

struct Acc {
    out: Vec<RuleCounter>,
    index: HashMap<String, usize>,
}

impl Acc {
    fn add(&mut self, rule: &str, chain: &str, (packets, bytes): Count, merged: bool) {
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
    let mut per_element: HashMap<(&str, &str), NamedElems> = HashMap::new();
    for s in items.iter().filter_map(|i| i.get("set")) {
        let (Some(table), Some(name)) = (
            s.get("table").and_then(Value::as_str),
            s.get("name").and_then(Value::as_str),
        ) else {
            continue;
        };
        let elems: NamedElems = s
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `nft -j list table inet twinwall` on the host kernel (6.18, nft 1.0.6) after the
    /// traffic of `firewall_own_ipv6_connections_and_merged_rules` (tests/netns_ruleset.rs,
    /// captured with `TWINWALL_CAPTURE_COUNTERS=FILE`): three merged runs, plain rules in
    /// three chains, rules over both families.
    const CAPTURED: &str = include_str!("../tests/data/counters-own-traffic-v6.json");

    fn of<'c>(c: &'c [RuleCounter], name: &str) -> &'c RuleCounter {
        c.iter()
            .find(|c| c.rule == name)
            .unwrap_or_else(|| panic!("no {name} in {c:?}"))
    }

    #[test]
    fn every_config_rule_of_the_capture_gets_its_own_counter() {
        let c = parse(CAPTURED).unwrap();
        // Merged runs: each rule by its element, in the chain of the merged rule.
        for (name, packets, bytes) in [
            ("client-8001", 1, 80),
            ("client-8004", 0, 0),
            ("client-8005", 1, 80),
            ("http-10", 1, 60),
            ("http-13", 0, 0),
            ("mix-2", 1, 60),
            ("mix-3", 0, 0),
        ] {
            let r = of(&c, name);
            assert_eq!((r.packets, r.bytes), (packets, bytes), "{name}");
            assert!(r.merged, "{name}");
            assert_eq!(r.chain, "forward");
        }
        // Plain rules.
        let dns = of(&c, "fw-dns6");
        assert_eq!((dns.packets, dns.bytes, dns.merged), (2, 134, false));
        assert_eq!(dns.chain, "output");
        assert_eq!(of(&c, "fw-ping6-out").packets, 1);
        // Generated rules in several chains are summed under their name.
        assert_eq!(of(&c, "default-drop").packets, 8 + 5);
        assert_eq!(of(&c, "established").packets, 15 + 184 + 12);
        // The merged nft rules themselves are not counted (their elements are).
        assert!(!c.iter().any(|r| r.rule.contains(" .. ")), "{c:?}");
        // Each name once; chain order: input's rules before forward's.
        let mut names: Vec<&str> = c.iter().map(|r| r.rule.as_str()).collect();
        let n = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), n);
        let pos = |name: &str| c.iter().position(|r| r.rule == name).unwrap();
        assert!(pos("ipv6-nd") < pos("client-8001"));
        assert!(pos("client-8001") < pos("client-8002"));
        assert!(pos("client-8005") < pos("http-10"));
        assert!(pos("mix-4") < pos("fw-dns6"));
    }

    #[test]
    fn a_rule_over_both_families_is_summed() {
        let json = r#"{"nftables": [
          {"rule": {"family": "inet", "table": "twinwall", "chain": "forward",
            "comment": "web", "expr": [{"counter": {"packets": 3, "bytes": 300}}, {"accept": null}]}},
          {"rule": {"family": "inet", "table": "twinwall", "chain": "forward",
            "comment": "web", "expr": [{"counter": {"packets": 2, "bytes": 250}}, {"accept": null}]}},
          {"rule": {"family": "inet", "table": "twinwall", "chain": "forward",
            "expr": [{"counter": {"packets": 9, "bytes": 900}}, {"accept": null}]}}
        ]}"#;
        let c = parse(json).unwrap();
        assert_eq!(c.len(), 1, "the uncommented rule is left out: {c:?}");
        assert_eq!((c[0].packets, c[0].bytes), (5, 550));
    }

    #[test]
    fn a_set_without_named_elements_does_not_hide_its_rule() {
        // A plain group set (no element comments or counters): the rule counts itself.
        let json = r#"{"nftables": [
          {"set": {"family": "inet", "table": "twinwall", "name": "big_v4",
            "elem": ["198.51.100.1", "198.51.100.2"]}},
          {"rule": {"family": "inet", "table": "twinwall", "chain": "forward", "comment": "to-big",
            "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}},
              "right": "@big_v4"}}, {"counter": {"packets": 4, "bytes": 400}}, {"accept": null}]}}
        ]}"#;
        let c = parse(json).unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(
            (c[0].rule.as_str(), c[0].packets, c[0].merged),
            ("to-big", 4, false)
        );
    }

    #[test]
    fn what_is_not_an_nft_listing_is_an_error() {
        assert!(matches!(parse("not json"), Err(CountersError::Json { .. })));
        assert!(matches!(
            parse(r#"{"rules": []}"#),
            Err(CountersError::Shape)
        ));
        assert!(parse(r#"{"nftables": []}"#).unwrap().is_empty());
    }
}
