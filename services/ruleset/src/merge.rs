//! Merging runs of policy rules into one nft rule over a set, exactly.
//!
//! nft and the kernel pay per rule and per expression (12 expressions a typical policy
//! rule; see docs/ruleset.md, Speed), so a policy of thousands of rules that differ only
//! in their destination (or source, or port) loads several times faster as a few rules
//! that look the varying field up in a set. The merge keeps the semantics exact:
//!
//! * only rules whose nft lines are identical except for one match (source prefix,
//!   destination prefix or one TCP/UDP port range) are merged, and that match must be a
//!   single element, so a rule is exactly one element of the set;
//! * the elements of a run are pairwise disjoint, so a packet matches at most one of
//!   the merged rules: which rule matched (and its counter) is unambiguous, and the order
//!   inside the run does not matter;
//! * the set has per-element counters and each element carries its rule's name as its
//!   comment, so every config rule keeps a counter of its own (`nft list set`), and the
//!   lookup is the rule's last match, so an element counts only packets the rule takes;
//! * rules with a log prefix or a rate limit (per-rule state) are never merged;
//! * a run is consecutive in chain order, except that lines matching only the other
//!   address family are stepped over (they can never match the same packet, so moving
//!   the run's later lines ahead of them changes nothing).
//!
//! The planner is pure: lines in, an emission plan out.

use std::collections::{BTreeMap, HashMap};

use twinwall_config::Family;

/// Runs shorter than this stay separate rules: a set costs the kernel a lookup by name
/// per reference, and a short run reads better as plain rules.
pub(crate) const MIN_RUN: usize = 4;

/// How many lines in a row a run may step over (see [`plan`]).
const MAX_STEP_OVER: usize = 16;

/// The three matches a run may vary in, in the order a line writes them.
pub(crate) const DIMS: usize = 3;

/// One policy rule's nft line for one family and service part, cut into its matches.
#[derive(Debug, Clone)]
pub(crate) struct Line {
    /// The matches before the varying ones (devices, `meta nfproto`), each with a
    /// leading space.
    pub head: String,
    /// Source address, destination address and service matches, each with a leading
    /// space (or empty).
    pub parts: [Part; DIMS],
    /// Everything after the matches except the comment: rate limit, ` counter`, log and
    /// the verdict.
    pub tail: String,
    /// The rule's name (the comment).
    pub name: String,
    /// The one address family the line can match, when it has an address or family
    /// match; `None` when it may match both.
    pub family: Option<Family>,
    /// Whether the line may join a run (no log prefix, no rate limit).
    pub mergeable: bool,
}

/// One match of a line.
#[derive(Debug, Clone, Default)]
pub(crate) struct Part {
    /// The match as written in an unmerged rule (leading space, or empty).
    pub text: String,
    /// The match as one set element, when it is a single prefix or port range.
    pub single: Option<Elem>,
}

/// A match that is one set element.
#[derive(Debug, Clone)]
pub(crate) struct Elem {
    /// The set's element type (`ipv4_addr`, `ipv6_addr`, `inet_service`).
    pub key: &'static str,
    /// What the set is matched against (`ip daddr`, `tcp dport`).
    pub lhs: &'static str,
    /// The element as nft writes it (`198.51.100.0/24`, `8080`, `1000-1999`).
    pub text: String,
    /// The first and last value the element covers (addresses or ports).
    pub lo: u128,
    /// See `lo`.
    pub hi: u128,
}

impl Line {
    /// The line as one nft rule (without indentation).
    pub fn text(&self) -> String {
        let mut s = String::with_capacity(
            self.head.len()
                + self.parts.iter().map(|p| p.text.len()).sum::<usize>()
                + self.tail.len()
                + self.name.len()
                + 12,
        );
        s.push_str(&self.head);
        for p in &self.parts {
            s.push_str(&p.text);
        }
        s.push_str(&self.tail);
        s.push_str(" comment \"");
        s.push_str(&self.name);
        s.push('"');
        s.trim_start().to_owned()
    }

    /// Whether `other` may join a run of this line over the matches `dims`: everything
    /// but those matches is equal, and each of those is one element of the same kind.
    /// (Compared field by field: building a signature string per line and shape was a
    /// fifth of the emit.)
    fn same_shape(&self, other: &Line, dims: &[usize]) -> bool {
        self.head == other.head
            && self.tail == other.tail
            && self
                .parts
                .iter()
                .zip(&other.parts)
                .enumerate()
                .all(|(i, (a, b))| {
                    if dims.contains(&i) {
                        match (&a.single, &b.single) {
                            (Some(x), Some(y)) => x.key == y.key && x.lhs == y.lhs,
                            _ => false,
                        }
                    } else {
                        a.text == b.text
                    }
                })
    }
}

/// What to emit for the lines of one chain, in order.
#[derive(Debug)]
pub(crate) enum Out {
    /// One line as it is (by index).
    Single(usize),
    /// Lines (by index, in chain order) merged over the matches `dims`.
    Merged {
        /// The varying matches (0 source, 1 destination, 2 service): one, or an address
        /// and the service (a concatenated set).
        dims: &'static [usize],
        /// The merged lines.
        lines: Vec<usize>,
    },
}

/// Disjoint closed intervals; insertion refuses one that overlaps.
#[derive(Default)]
struct Disjoint(BTreeMap<u128, u128>);

impl Disjoint {
    fn insert(&mut self, lo: u128, hi: u128) -> bool {
        // The stored intervals are disjoint, so only the last one starting at or before
        // `hi` can reach into [lo, hi].
        if let Some((_, &end)) = self.0.range(..=hi).next_back()
            && end >= lo
        {
            return false;
        }
        self.0.insert(lo, hi);
        true
    }
}

/// The shapes a run may have: one varying match ...
const ONE: [&[usize]; DIMS] = [&[0], &[1], &[2]];
/// ... or an address and a single port together (`ip daddr . tcp dport`).
const PAIRS: [&[usize]; 2] = [&[0, 2], &[1, 2]];

/// A single-match run at least this long is taken even when a concatenated run would
/// be longer: nft loads a few plain interval sets faster than one concatenated set
/// (10k bench rules: 20 sets of 512 took 0.10 s of CPU, one of 10,000 0.14 s), so
/// concatenations are for policies whose consecutive rules differ in two matches.
const PREFER_ONE: usize = 8;

/// Plans the emission of one chain's lines: runs of at least [`MIN_RUN`] mergeable
/// lines become one [`Out::Merged`], the rest stay [`Out::Single`], in chain order.
/// Greedy: at each line the longest run over one match wins; when that is short, the
/// longest run over an address and the port together.
pub(crate) fn plan(lines: &[Line]) -> Vec<Out> {
    let mut done = vec![false; lines.len()];
    let mut out = Vec::new();
    for i in 0..lines.len() {
        if done[i] {
            continue;
        }
        done[i] = true;
        let mut best: Option<(&'static [usize], Vec<usize>)> = None;
        let consider = |dims: &'static [usize],
                        best: &mut Option<(&'static [usize], Vec<usize>)>| {
            let run = run_from(lines, &done, i, dims);
            if run.len() >= MIN_RUN && best.as_ref().is_none_or(|(_, b)| run.len() > b.len()) {
                *best = Some((dims, run));
            }
        };
        if lines[i].mergeable {
            for dims in ONE {
                consider(dims, &mut best);
            }
            if best.as_ref().is_none_or(|(_, b)| b.len() < PREFER_ONE) {
                for dims in PAIRS {
                    consider(dims, &mut best);
                }
            }
        }
        match best {
            Some((dims, run)) => {
                for &j in &run {
                    done[j] = true;
                }
                out.push(Out::Merged { dims, lines: run });
            }
            None => out.push(Out::Single(i)),
        }
    }
    out
}

/// The elements of a run so far, to keep them pairwise disjoint: intervals of one
/// match, or per port the address intervals (two lines of a concatenated run overlap
/// only when their ports are equal and their addresses overlap).
enum Seen {
    One(Disjoint),
    Pair(HashMap<u128, Disjoint>),
}

impl Seen {
    /// Records the line's elements over `dims`; false when it overlaps an earlier one
    /// (or is not of the run's shape).
    fn insert(&mut self, l: &Line, dims: &[usize]) -> bool {
        match (self, dims) {
            (Seen::One(d), [k]) => l.parts[*k]
                .single
                .as_ref()
                .is_some_and(|e| d.insert(e.lo, e.hi)),
            (Seen::Pair(m), [a, p]) => {
                let (Some(a), Some(p)) = (&l.parts[*a].single, &l.parts[*p].single) else {
                    return false;
                };
                p.lo == p.hi && m.entry(p.lo).or_default().insert(a.lo, a.hi)
            }
            _ => false,
        }
    }
}

/// The run over the matches `dims` that starts at line `i` (included).
fn run_from(lines: &[Line], done: &[bool], i: usize, dims: &'static [usize]) -> Vec<usize> {
    let first = &lines[i];
    if !first.same_shape(first, dims) {
        // Not every varying match is a single element.
        return Vec::new();
    }
    let mut seen = if dims.len() == 1 {
        Seen::One(Disjoint::default())
    } else {
        Seen::Pair(HashMap::new())
    };
    if !seen.insert(&lines[i], dims) {
        return Vec::new();
    }
    let fam = first.family;
    let mut run = vec![i];
    let mut stepped = 0;
    for (j, l) in lines.iter().enumerate().skip(i + 1) {
        if done[j] {
            continue;
        }
        let joins = l.mergeable && first.same_shape(l, dims) && seen.insert(l, dims);
        if joins {
            run.push(j);
            stepped = 0;
            continue;
        }
        // A line of the other family can be stepped over: it never matches a packet
        // the run matches. Only a few in a row, so that a long stretch of the other
        // family does not make planning quadratic.
        let other_family = matches!((fam, l.family), (Some(a), Some(b)) if a != b);
        stepped += 1;
        if !other_family || stepped > MAX_STEP_OVER {
            break;
        }
    }
    run
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(lhs: &'static str, text: &str, lo: u128, hi: u128) -> Part {
        Part {
            text: format!(" {lhs} {text}"),
            single: Some(Elem {
                key: "ipv4_addr",
                lhs,
                text: text.into(),
                lo,
                hi,
            }),
        }
    }

    fn port(p: u16) -> Part {
        Part {
            text: format!(" tcp dport {p}"),
            single: Some(Elem {
                key: "inet_service",
                lhs: "tcp dport",
                text: p.to_string(),
                lo: p.into(),
                hi: p.into(),
            }),
        }
    }

    fn line(name: &str, dst: (u128, u128), p: u16, verdict: &str) -> Line {
        Line {
            head: " iifname \"eth0\"".into(),
            parts: [
                Part::default(),
                addr("ip daddr", &format!("n{}", dst.0), dst.0, dst.1),
                port(p),
            ],
            tail: format!(" counter {verdict}"),
            name: name.into(),
            family: Some(Family::Ipv4),
            mergeable: true,
        }
    }

    fn shape(out: &[Out]) -> Vec<String> {
        out.iter()
            .map(|o| match o {
                Out::Single(i) => format!("{i}"),
                Out::Merged { dims, lines } => format!("{dims:?}:{lines:?}"),
            })
            .collect()
    }

    #[test]
    fn a_run_of_destinations_merges_and_the_rest_stays() {
        let mut v: Vec<Line> = (0..5)
            .map(|k| line(&format!("r{k}"), (k * 256, k * 256 + 255), 80, "accept"))
            .collect();
        v.push(line("other", (10_000, 10_000), 22, "drop"));
        assert_eq!(shape(&plan(&v)), ["[1]:[0, 1, 2, 3, 4]", "5"]);
    }

    #[test]
    fn overlapping_elements_end_the_run() {
        // r2's destination lies inside r0's: r0 cannot join r2's run (the counters
        // would be ambiguous), so r0 stays alone and r1..r4, disjoint, merge after it.
        let v = vec![
            line("r0", (0, 255), 80, "accept"),
            line("r1", (256, 511), 80, "accept"),
            line("r2", (10, 10), 80, "accept"),
            line("r3", (512, 767), 80, "accept"),
            line("r4", (768, 1023), 80, "accept"),
        ];
        assert_eq!(shape(&plan(&v)), ["0", "[1]:[1, 2, 3, 4]"]);
    }

    #[test]
    fn a_different_verdict_or_a_log_breaks_the_run() {
        let mut v: Vec<Line> = (0..8)
            .map(|k| line(&format!("r{k}"), (k * 256, k * 256 + 255), 80, "accept"))
            .collect();
        v[4].tail = " counter drop".into();
        assert_eq!(shape(&plan(&v)), ["[1]:[0, 1, 2, 3]", "4", "5", "6", "7"]);
        v[4].tail = " counter accept".into();
        v[2].mergeable = false;
        assert_eq!(shape(&plan(&v)), ["0", "1", "2", "[1]:[3, 4, 5, 6, 7]"]);
    }

    #[test]
    fn the_longest_dimension_wins_and_other_family_lines_are_stepped_over() {
        // Same destination, ports 80..85: a run over the service.
        let mut v: Vec<Line> = (0..6)
            .map(|k| line(&format!("r{k}"), (0, 255), 80 + k as u16, "accept"))
            .collect();
        let mut six = line("v6", (0, 255), 9, "accept");
        six.family = Some(Family::Ipv6);
        six.parts[1].text = " ip6 daddr 2001:db8::/120".into();
        six.parts[1].single.as_mut().unwrap().key = "ipv6_addr";
        v.insert(2, six.clone());
        assert_eq!(shape(&plan(&v)), ["[2]:[0, 1, 3, 4, 5, 6]", "2"]);
        // A line that may match both families is not stepped over.
        six.family = None;
        v[2] = six;
        assert_eq!(shape(&plan(&v)), ["0", "1", "2", "[2]:[3, 4, 5, 6]"]);
    }

    #[test]
    fn rules_that_differ_in_address_and_port_merge_into_a_concatenation() {
        // Consecutive rules differ in both: no single-match run, one concatenated run.
        let mut v: Vec<Line> = (0..6)
            .map(|k| {
                line(
                    &format!("r{k}"),
                    (k * 256, k * 256 + 255),
                    80 + k as u16,
                    "accept",
                )
            })
            .collect();
        assert_eq!(shape(&plan(&v)), ["[1, 2]:[0, 1, 2, 3, 4, 5]"]);
        // The same port again with an overlapping address ends the run; the same
        // address with another port does not.
        v.push(line("same-net-other-port", (0, 255), 99, "accept"));
        v.push(line("overlap", (300, 300), 81, "accept"));
        v.push(line("after", (5000, 5000), 7, "accept"));
        assert_eq!(shape(&plan(&v)), ["[1, 2]:[0, 1, 2, 3, 4, 5, 6]", "7", "8"]);
        // A port range cannot be part of a concatenated run (the per-port index needs
        // single ports).
        let mut w = v[..6].to_vec();
        w[3].parts[2].single.as_mut().unwrap().hi = 90;
        assert_eq!(shape(&plan(&w)), ["0", "1", "2", "3", "4", "5"]);
    }

    #[test]
    fn disjoint_intervals() {
        let mut d = Disjoint::default();
        assert!(d.insert(10, 20));
        assert!(d.insert(21, 30));
        assert!(d.insert(0, 9));
        assert!(!d.insert(20, 21));
        assert!(!d.insert(5, 5));
        assert!(!d.insert(0, 100));
        assert!(d.insert(31, 31));
    }
}
