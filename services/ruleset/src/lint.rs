//! Lints over a node's policy: exact shadowing, rules that can never match, unused
//! objects, any-to-any accepts.
//!
//! Shadowing is decided exactly, not by heuristic: every rule's match space is one box
//! per address family over five dimensions (incoming device, outgoing device, source
//! address, destination address, protocol+port/ICMP type), each dimension a set of
//! integer intervals. A rule is shadowed when the union of the boxes of the earlier rules
//! of the same chain (any action) covers its box; that is decided by subtracting each
//! earlier box from the rule's box (box difference splits into at most one piece per
//! dimension) until nothing or something is left. Rate-limited rules never shadow (what
//! exceeds the limit falls through). Interval arithmetic is written by hand: it is a
//! few dozen lines over `u128`, and no crate offers exact multi-dimensional box
//! subtraction.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;
use serde::Serialize;
use twinwall_config::{Action, Endpoint, Family, NatRule, NodeView, Rule, Service};

use crate::compile::{FilterChain, rule_chain, rule_families};
use crate::icmp::{icmp_type, icmpv6_type};

/// A lint finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lint {
    /// What kind of finding.
    pub kind: LintKind,
    /// The rule or object it is about.
    pub subject: String,
    /// A sentence for the operator.
    pub message: String,
}

/// The kinds of lint finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LintKind {
    /// Earlier rules of the same chain together match everything this rule matches.
    Shadowed,
    /// The rule's source and destination have no address family in common.
    NeverMatches,
    /// A network or service object no rule uses.
    UnusedObject,
    /// `from = "any"`, `to = "any"`, action accept.
    AnyToAnyAccept,
}

impl std::fmt::Display for Lint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let k = match self.kind {
            LintKind::Shadowed => "shadowed",
            LintKind::NeverMatches => "never-matches",
            LintKind::UnusedObject => "unused-object",
            LintKind::AnyToAnyAccept => "any-to-any-accept",
        };
        write!(f, "{k}: {}", self.message)
    }
}

/// Runs every lint over a view. Findings come in rule order, then objects by name.
pub fn lint(view: &NodeView) -> Vec<Lint> {
    let mut out = Vec::new();
    shadowing(view, &mut out);
    any_to_any(view, &mut out);
    unused_objects(view, &mut out);
    out
}

fn any_to_any(view: &NodeView, out: &mut Vec<Lint>) {
    for r in &view.policy.rules {
        if matches!(r.from, Endpoint::Any)
            && matches!(r.to, Endpoint::Any)
            && r.action == Action::Accept
        {
            let what = if r.services.is_empty() {
                "every protocol"
            } else {
                "its services"
            };
            out.push(Lint {
                kind: LintKind::AnyToAnyAccept,
                subject: r.name.clone(),
                message: format!(
                    "rule `{}` accepts {what} from any source to any destination through the firewall",
                    r.name
                ),
            });
        }
    }
}

fn unused_objects(view: &NodeView, out: &mut Vec<Lint>) {
    // Every place the config lets a rule name an object: policy `from` / `to` /
    // `service`, snat `from`, dnat `to` / `service`, `[management] allowed_from`.
    let mut nets: BTreeSet<&str> = BTreeSet::new();
    let mut svcs: BTreeSet<&str> = BTreeSet::new();
    for r in &view.policy.rules {
        for ep in [&r.from, &r.to] {
            if let Endpoint::Network { name, .. } = ep {
                nets.insert(name);
            }
        }
        if let Some(s) = &r.service_name {
            svcs.insert(s);
        }
    }
    for n in &view.nat {
        match n {
            NatRule::Snat { from_name, .. } => nets.extend(from_name.as_deref()),
            NatRule::Dnat {
                service_name,
                to_name,
                ..
            } => {
                svcs.extend(service_name.as_deref());
                nets.extend(to_name.as_deref());
            }
        }
    }
    nets.extend(
        view.management
            .allowed_from_names
            .iter()
            .map(String::as_str),
    );
    for name in view.objects.networks.keys() {
        if !nets.contains(name.as_str()) {
            out.push(Lint {
                kind: LintKind::UnusedObject,
                subject: name.clone(),
                message: format!("network object `{name}` is not used by any rule"),
            });
        }
    }
    for name in view.objects.services.keys() {
        if !svcs.contains(name.as_str()) {
            out.push(Lint {
                kind: LintKind::UnusedObject,
                subject: name.clone(),
                message: format!("service object `{name}` is not used by any rule"),
            });
        }
    }
}

/// A set of disjoint, sorted, inclusive intervals.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Set(Vec<(u128, u128)>);

impl Set {
    fn full(max: u128) -> Set {
        Set(vec![(0, max)])
    }

    fn from_ranges(mut v: Vec<(u128, u128)>) -> Set {
        v.sort_unstable();
        let mut out: Vec<(u128, u128)> = Vec::with_capacity(v.len());
        for (a, b) in v {
            match out.last_mut() {
                Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
                _ => out.push((a, b)),
            }
        }
        Set(out)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn hull(&self) -> (u128, u128) {
        match (self.0.first(), self.0.last()) {
            (Some(a), Some(b)) => (a.0, b.1),
            _ => (1, 0),
        }
    }

    fn intersect(&self, o: &Set) -> Set {
        let (mut i, mut j) = (0, 0);
        let mut out = Vec::new();
        while i < self.0.len() && j < o.0.len() {
            let (a0, a1) = self.0[i];
            let (b0, b1) = o.0[j];
            let lo = a0.max(b0);
            let hi = a1.min(b1);
            if lo <= hi {
                out.push((lo, hi));
            }
            if a1 < b1 {
                i += 1;
            } else {
                j += 1;
            }
        }
        Set(out)
    }

    fn intersects(&self, o: &Set) -> bool {
        let (mut i, mut j) = (0, 0);
        while i < self.0.len() && j < o.0.len() {
            let (a0, a1) = self.0[i];
            let (b0, b1) = o.0[j];
            if a0.max(b0) <= a1.min(b1) {
                return true;
            }
            if a1 < b1 {
                i += 1;
            } else {
                j += 1;
            }
        }
        false
    }

    fn subtract(&self, o: &Set) -> Set {
        let mut out = Vec::new();
        let mut j = 0;
        for &(mut a0, a1) in &self.0 {
            while j < o.0.len() && o.0[j].1 < a0 {
                j += 1;
            }
            let mut k = j;
            let mut done = false;
            while k < o.0.len() && o.0[k].0 <= a1 {
                let (b0, b1) = o.0[k];
                if b0 > a0 {
                    out.push((a0, b0 - 1));
                }
                if b1 >= a1 {
                    done = true;
                    break;
                }
                a0 = b1 + 1;
                k += 1;
            }
            if !done {
                out.push((a0, a1));
            }
        }
        Set(out)
    }
}

const DIMS: usize = 5;
/// Protocol number in the high bits, port or ICMP type in the low 16.
const SVC_MAX: u128 = (256 << 16) - 1;

/// One rule's match space in one family: iif, oif, saddr, daddr, service.
type Box5 = [Set; DIMS];

fn box_intersects(a: &Box5, b: &Box5) -> bool {
    a.iter().zip(b).all(|(x, y)| x.intersects(y))
}

/// `a \ b` as disjoint boxes.
fn box_subtract(a: &Box5, b: &Box5) -> Vec<Box5> {
    if !box_intersects(a, b) {
        return vec![a.clone()];
    }
    let mut out = Vec::new();
    let mut prefix: Box5 = a.clone();
    for d in 0..DIMS {
        let rest = a[d].subtract(&b[d]);
        if !rest.is_empty() {
            let mut piece = prefix.clone();
            piece[d] = rest;
            out.push(piece);
        }
        prefix[d] = a[d].intersect(&b[d]);
    }
    out
}

fn addr_range(n: &IpNet) -> (u128, u128) {
    match n {
        IpNet::V4(v) => (
            u32::from(v.network()) as u128,
            u32::from(v.broadcast()) as u128,
        ),
        IpNet::V6(v) => (u128::from(v.network()), u128::from(v.broadcast())),
    }
}

fn fam_max(f: Family) -> u128 {
    match f {
        Family::Ipv4 => u32::MAX as u128,
        Family::Ipv6 => u128::MAX,
    }
}

struct Space<'a> {
    devices: BTreeMap<&'a str, u128>,
}

impl<'a> Space<'a> {
    fn new(view: &'a NodeView) -> Self {
        let mut devices = BTreeMap::new();
        for i in view.interfaces.values() {
            let n = devices.len() as u128;
            devices.entry(i.device.as_str()).or_insert(n);
        }
        Space { devices }
    }

    fn dev(&self, ep: &Endpoint) -> Set {
        match ep {
            Endpoint::Zone { device, .. } => {
                // Unknown devices get a value of their own beyond the known ones.
                let n = self
                    .devices
                    .get(device.as_str())
                    .copied()
                    .unwrap_or(u64::MAX as u128);
                Set(vec![(n, n)])
            }
            _ => Set::full(u128::MAX),
        }
    }

    fn addr(&self, ep: &Endpoint, f: Family) -> Set {
        match ep {
            Endpoint::Network { networks, .. } => {
                let fam = |n: &&IpNet| {
                    matches!(
                        (n, f),
                        (IpNet::V4(_), Family::Ipv4) | (IpNet::V6(_), Family::Ipv6)
                    )
                };
                Set::from_ranges(networks.iter().filter(fam).map(addr_range).collect())
            }
            _ => Set::full(fam_max(f)),
        }
    }

    fn svc(services: &[Service], f: Family) -> Set {
        if services.is_empty() {
            return Set::full(SVC_MAX);
        }
        let mut v = Vec::new();
        for s in services {
            match s {
                Service::Tcp { from, to } => {
                    v.push(((6 << 16) | *from as u128, (6 << 16) | *to as u128))
                }
                Service::Udp { from, to } => {
                    v.push(((17 << 16) | *from as u128, (17 << 16) | *to as u128))
                }
                Service::Icmp { r#type } if f == Family::Ipv4 => {
                    match r#type.as_deref().map(icmp_type) {
                        None => v.push((1 << 16, (1 << 16) | 255)),
                        Some(Some(t)) => v.push(((1 << 16) | t as u128, (1 << 16) | t as u128)),
                        Some(None) => {}
                    }
                }
                Service::Icmpv6 { r#type } if f == Family::Ipv6 => {
                    match r#type.as_deref().map(icmpv6_type) {
                        None => v.push((58 << 16, (58 << 16) | 255)),
                        Some(Some(t)) => v.push(((58 << 16) | t as u128, (58 << 16) | t as u128)),
                        Some(None) => {}
                    }
                }
                _ => {}
            }
        }
        Set::from_ranges(v)
    }

    fn rule_box(&self, r: &Rule, f: Family) -> Box5 {
        let oif = if matches!(r.to, Endpoint::SelfNode) {
            Set::full(u128::MAX)
        } else {
            self.dev(&r.to)
        };
        [
            self.dev(&r.from),
            oif,
            self.addr(&r.from, f),
            self.addr(&r.to, f),
            Space::svc(&r.services, f),
        ]
    }
}

/// The candidate index is a grid over two dimensions: service (buckets of 64 ports or
/// ICMP types) and destination address (IPv4 /24s, IPv6 /64s).
const SVC_SHIFT: u32 = 6;
/// Boxes spanning more grid cells than this in either dimension go to the always-checked
/// list (zone-to-zone rules, "any port" rules: few in a real policy).
const WIDE_CELLS: u128 = 16;
/// Give up (report nothing) when a subtraction fragments into more pieces than this.
const MAX_PIECES: usize = 4096;

fn dst_shift(f: Family) -> u32 {
    match f {
        Family::Ipv4 => 8,
        Family::Ipv6 => 64,
    }
}

/// Earlier boxes of one (chain, family), indexed so that a large generated policy does
/// not cost n² box tests: a rule is only tested against the boxes sharing a grid cell
/// with it, plus the wide ones.
struct Index {
    shift: u32,
    boxes: Vec<(usize, Box5)>,
    wide: Vec<usize>,
    cells: std::collections::HashMap<(u128, u128), Vec<usize>>,
}

impl Index {
    fn new(f: Family) -> Index {
        Index {
            shift: dst_shift(f),
            boxes: Vec::new(),
            wide: Vec::new(),
            cells: std::collections::HashMap::new(),
        }
    }

    /// The grid cells of a box, or `None` when it is wide.
    fn span(&self, b: &Box5) -> Option<((u128, u128), (u128, u128))> {
        let (slo, shi) = b[4].hull();
        let (dlo, dhi) = b[3].hull();
        let s = (slo >> SVC_SHIFT, shi >> SVC_SHIFT);
        let d = (dlo >> self.shift, dhi >> self.shift);
        (s.1 - s.0 < WIDE_CELLS && d.1 - d.0 < WIDE_CELLS).then_some((s, d))
    }

    fn candidates(&self, b: &Box5) -> Vec<usize> {
        let Some((s, d)) = self.span(b) else {
            return (0..self.boxes.len()).collect();
        };
        let mut c: Vec<usize> = self.wide.clone();
        for i in s.0..=s.1 {
            for j in d.0..=d.1 {
                if let Some(v) = self.cells.get(&(i, j)) {
                    c.extend_from_slice(v);
                }
            }
        }
        c.sort_unstable();
        c.dedup();
        c
    }

    fn insert(&mut self, rule: usize, b: Box5) {
        let slot = self.boxes.len();
        match self.span(&b) {
            None => self.wide.push(slot),
            Some((s, d)) => {
                for i in s.0..=s.1 {
                    for j in d.0..=d.1 {
                        self.cells.entry((i, j)).or_default().push(slot);
                    }
                }
            }
        }
        self.boxes.push((rule, b));
    }
}

fn shadowing(view: &NodeView, out: &mut Vec<Lint>) {
    let space = Space::new(view);
    // (chain, family) -> index of earlier boxes.
    let mut idx: BTreeMap<(FilterChain, Family), Index> = BTreeMap::new();
    for (i, r) in view.policy.rules.iter().enumerate() {
        let chain = rule_chain(r);
        let fams: Vec<Family> = rule_families(r)
            .into_iter()
            .flat_map(|f| match f {
                Some(f) => vec![f],
                None => vec![Family::Ipv4, Family::Ipv6],
            })
            .collect();
        if fams.is_empty() {
            out.push(Lint {
                kind: LintKind::NeverMatches,
                subject: r.name.clone(),
                message: format!(
                    "rule `{}` can never match: its source and destination have no address family in common",
                    r.name
                ),
            });
            continue;
        }
        let boxes: Vec<(Family, Box5)> = fams
            .iter()
            .map(|f| (*f, space.rule_box(r, *f)))
            .filter(|(_, b)| b.iter().all(|d| !d.is_empty()))
            .collect();
        let mut covered = !boxes.is_empty();
        let mut by: BTreeSet<usize> = BTreeSet::new();
        for (f, b) in &boxes {
            let Some(index) = idx.get(&(chain, *f)) else {
                covered = false;
                break;
            };
            let mut pieces = vec![b.clone()];
            for slot in index.candidates(b) {
                let (rule, eb) = &index.boxes[slot];
                if !pieces.iter().any(|p| box_intersects(p, eb)) {
                    continue;
                }
                by.insert(*rule);
                pieces = pieces.iter().flat_map(|p| box_subtract(p, eb)).collect();
                if pieces.is_empty() || pieces.len() > MAX_PIECES {
                    break;
                }
            }
            if !pieces.is_empty() {
                covered = false;
                break;
            }
        }
        if covered {
            let names: Vec<String> = by
                .iter()
                .map(|k| format!("`{}`", view.policy.rules[*k].name))
                .collect();
            out.push(Lint {
                kind: LintKind::Shadowed,
                subject: r.name.clone(),
                message: format!(
                    "rule `{}` is shadowed by earlier rule(s) {}: they match everything it matches, so it never takes effect",
                    r.name,
                    names.join(", ")
                ),
            });
        }
        if r.rate_limit.is_none() {
            for (f, b) in boxes {
                idx.entry((chain, f))
                    .or_insert_with(|| Index::new(f))
                    .insert(i, b);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_subtract_and_intersect() {
        let a = Set(vec![(0, 10), (20, 30)]);
        let b = Set(vec![(5, 22)]);
        assert_eq!(a.subtract(&b), Set(vec![(0, 4), (23, 30)]));
        assert_eq!(a.intersect(&b), Set(vec![(5, 10), (20, 22)]));
        assert!(a.subtract(&Set::full(100)).is_empty());
        assert_eq!(
            Set::full(u128::MAX).subtract(&Set(vec![(0, 0)])),
            Set(vec![(1, u128::MAX)])
        );
        assert_eq!(
            Set::from_ranges(vec![(5, 6), (0, 4), (8, 9)]),
            Set(vec![(0, 6), (8, 9)])
        );
    }

    #[test]
    fn box_subtraction_is_exact() {
        let full = || Set::full(100);
        let a: Box5 = [full(), full(), Set(vec![(0, 9)]), full(), Set(vec![(0, 9)])];
        let b: Box5 = [full(), full(), Set(vec![(0, 4)]), full(), Set(vec![(0, 9)])];
        let c: Box5 = [full(), full(), Set(vec![(5, 9)]), full(), Set(vec![(0, 4)])];
        let d: Box5 = [full(), full(), Set(vec![(5, 9)]), full(), Set(vec![(5, 9)])];
        let rest: Vec<Box5> = box_subtract(&a, &b)
            .iter()
            .flat_map(|p| box_subtract(p, &c))
            .collect();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0][2], Set(vec![(5, 9)]));
        assert_eq!(rest[0][4], Set(vec![(5, 9)]));
        assert!(
            rest.iter()
                .flat_map(|p| box_subtract(p, &d))
                .next()
                .is_none()
        );
    }
}
