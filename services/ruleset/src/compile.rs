//! The policy compiler: one [`NodeView`] in, one nft script out that replaces table
//! `inet twinwall` as a whole in a single kernel transaction.
//!
//! Layout of the table (documented for operators in `docs/ruleset.md`):
//! * named sets: `NAME_v4` / `NAME_v6` for every network object with two or more
//!   prefixes of that family (interval sets; hash sets with a size hint when an object
//!   holds only host addresses), `NAME_svc` (`inet_proto . inet_service`, interval) for
//!   the TCP/UDP part of every service object with two or more entries, and one dynamic
//!   set per rate-limited rule and family. A single prefix or port is matched inline
//!   (`ip daddr 198.51.100.0/24`, `tcp dport 22`): the kernel resolves every set
//!   reference by a linear scan over the table's sets by name, which made 10k rules
//!   over 532 one-element sets cost 1.5x the kernel time of the same rules inline;
//! * base chains `input`, `forward`, `output` (filter, the config's default policy) and
//!   `prerouting` / `postrouting` (nat, policy accept);
//! * in each filter chain: `ct state established,related accept`, `ct state invalid
//!   drop`, loopback, the generated cluster plumbing and essential ICMP, then the policy
//!   rules in config order, then the default (counted, optionally logged).
//!
//! nft 1.0.6 (Debian 12) has no `destroy table`, so the script opens with the
//! `table inet twinwall` + `delete table inet twinwall` idiom: the first line makes sure
//! the table exists, so the delete cannot fail, and nft runs the whole file as one
//! transaction.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;
use twinwall_config::{
    Action, Endpoint, Family, NatRule, NodeView, RateUnit, Rule, Service, SnatTarget,
};

use crate::icmp::{icmp_type, icmpv6_type};
use crate::lint::{Lint, lint};
use crate::merge::{self, Elem, Line, Out, Part};

/// The nftables table the compiler owns (family `inet`).
pub const TABLE: &str = "twinwall";

/// Compiler options.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Turn lint warnings into a [`CompileError::Strict`] error.
    pub strict: bool,
    /// Skip the lints altogether (benchmarks of the bare compiler).
    pub skip_lints: bool,
}

/// A compiled ruleset.
#[derive(Debug, Clone, Serialize)]
pub struct Script {
    /// The nft script, ready for `nft -f -`.
    pub text: String,
    /// Lint findings (warnings unless `strict`).
    pub lints: Vec<Lint>,
    /// How many nft rules the script holds (all chains).
    pub rule_count: usize,
}

/// Why a view could not be compiled.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    /// A name cannot be used in an nft identifier or comment.
    #[error("{kind} name `{name}` cannot be used in nftables: {reason}")]
    BadName {
        /// object, service, rule or device.
        kind: &'static str,
        /// The name.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An ICMP type name nft does not know.
    #[error("rule `{rule}`: unknown {proto} type `{name}`")]
    UnknownIcmpType {
        /// Rule or object name.
        rule: String,
        /// icmp or icmpv6.
        proto: &'static str,
        /// The type name.
        name: String,
    },
    /// A NAT rule that cannot be expressed.
    #[error("nat rule `{rule}`: {reason}")]
    Nat {
        /// Rule name.
        rule: String,
        /// Why.
        reason: String,
    },
    /// `--strict` and the lints found something.
    #[error("{} lint finding(s) with --strict: {}", lints.len(), lints.iter().map(|l| l.to_string()).collect::<Vec<_>>().join("; "))]
    Strict {
        /// The findings.
        lints: Vec<Lint>,
    },
}

/// Compiles one node's view into the nft script that replaces table `inet twinwall`.
///
/// The lints and the emit both only read the view, so with lints on they run side by
/// side: the lints on a second thread while this one writes the script (10k rules: the
/// lints are about as much work as the emit, so on two cores the compile's wall time
/// loses nearly all of theirs). With `strict`, findings still mean no script.
pub fn compile(view: &NodeView, opts: &Options) -> Result<Script, CompileError> {
    validate_names(view)?;
    if opts.skip_lints {
        return emit(view, Vec::new());
    }
    let (lints, emitted) = std::thread::scope(|s| {
        let lints = s.spawn(|| lint(view));
        let emitted = emit_text(view);
        // A panic in the lints is a bug: pass it on as it is.
        let lints = lints
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        (lints, emitted)
    });
    if opts.strict && !lints.is_empty() {
        return Err(CompileError::Strict { lints });
    }
    let (text, rule_count) = emitted?;
    Ok(Script {
        text,
        lints,
        rule_count,
    })
}

/// The script without lints, or with the given ones.
fn emit(view: &NodeView, lints: Vec<Lint>) -> Result<Script, CompileError> {
    let (text, rule_count) = emit_text(view)?;
    Ok(Script {
        text,
        lints,
        rule_count,
    })
}

/// The nft script of a view and the number of nft rules in it.
fn emit_text(view: &NodeView) -> Result<(String, usize), CompileError> {
    let mut e = Emitter::new(view);
    e.header();
    e.sets()?;
    // The chains go into their own buffer: the sets of merged rules are found while
    // writing them and must be defined before the chains use them.
    let head = std::mem::take(&mut e.out);
    e.filter_chains()?;
    e.nat_chains()?;
    let chains = std::mem::replace(&mut e.out, head);
    let merged = std::mem::take(&mut e.merged_sets);
    e.out.push_str(&merged);
    e.out.push_str(&chains);
    e.out.push_str("}\n");
    tracing::debug!(node = %view.node, rules = e.rules, "compiled");
    Ok((e.out, e.rules))
}

fn check_ident(kind: &'static str, name: &str) -> Result<(), CompileError> {
    let mut chars = name.chars();
    let ok_first = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !ok_first {
        return Err(CompileError::BadName {
            kind,
            name: name.into(),
            reason: "must start with a letter or `_`",
        });
    }
    if !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')) {
        return Err(CompileError::BadName {
            kind,
            name: name.into(),
            reason: "only letters, digits, `_`, `-` and `.` are allowed",
        });
    }
    Ok(())
}

fn check_text(kind: &'static str, name: &str) -> Result<(), CompileError> {
    if name.is_empty() || name.len() > 100 {
        return Err(CompileError::BadName {
            kind,
            name: name.into(),
            reason: "must be 1 to 100 characters (nft comments hold 128)",
        });
    }
    if name
        .chars()
        .any(|c| c == '"' || c == '\\' || c.is_control())
    {
        return Err(CompileError::BadName {
            kind,
            name: name.into(),
            reason: "quotes, backslashes and control characters are not allowed",
        });
    }
    Ok(())
}

fn validate_names(view: &NodeView) -> Result<(), CompileError> {
    for n in view.objects.networks.keys() {
        check_ident("network object", n)?;
    }
    for n in view.objects.services.keys() {
        check_ident("service object", n)?;
    }
    for r in &view.policy.rules {
        check_text("rule", &r.name)?;
    }
    for n in &view.nat {
        check_text("nat rule", nat_name(n))?;
    }
    for i in view.interfaces.values() {
        if i.device.is_empty()
            || i.device.len() > 15
            || !i.device.chars().all(|c| c.is_ascii_graphic() && c != '"')
        {
            return Err(CompileError::BadName {
                kind: "device",
                name: i.device.clone(),
                reason: "must be 1 to 15 printable characters",
            });
        }
    }
    Ok(())
}

/// The name of a NAT rule.
pub(crate) fn nat_name(n: &NatRule) -> &str {
    match n {
        NatRule::Snat { name, .. } | NatRule::Dnat { name, .. } => name,
    }
}

/// `ip saddr`, `ip6 daddr`, ... (`dir` is `saddr` or `daddr`): static, as set elements
/// carry it for every rule.
fn addr_lhs(f: Family, dir: &str) -> &'static str {
    match (f, dir) {
        (Family::Ipv4, "saddr") => "ip saddr",
        (Family::Ipv4, _) => "ip daddr",
        (Family::Ipv6, "saddr") => "ip6 saddr",
        (Family::Ipv6, _) => "ip6 daddr",
    }
}

fn fam_ip(f: Family) -> &'static str {
    match f {
        Family::Ipv4 => "ip",
        Family::Ipv6 => "ip6",
    }
}

fn fam_suffix(f: Family) -> &'static str {
    match f {
        Family::Ipv4 => "v4",
        Family::Ipv6 => "v6",
    }
}

fn fam_nfproto(f: Family) -> &'static str {
    match f {
        Family::Ipv4 => "meta nfproto ipv4",
        Family::Ipv6 => "meta nfproto ipv6",
    }
}

fn net_family(n: &IpNet) -> Family {
    match n {
        IpNet::V4(_) => Family::Ipv4,
        IpNet::V6(_) => Family::Ipv6,
    }
}

/// `{ a, b }` or a bare element when there is only one.
fn set_literal<T: std::fmt::Display>(items: impl IntoIterator<Item = T>) -> String {
    let v: Vec<String> = items.into_iter().map(|i| i.to_string()).collect();
    if v.len() == 1 {
        v.into_iter().next().unwrap_or_default()
    } else {
        format!("{{ {} }}", v.join(", "))
    }
}

/// Appends an address. IPv4 is written by hand: std's `Display` for `Ipv4Addr` goes
/// through the formatting machinery at about 1,500 instructions an address, which was a
/// quarter of compiling a 100k-address group; this is a few dozen.
fn push_addr(out: &mut String, a: IpAddr) {
    match a {
        IpAddr::V4(a) => {
            for (i, o) in a.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                if o >= 100 {
                    out.push(char::from(b'0' + o / 100));
                }
                if o >= 10 {
                    out.push(char::from(b'0' + o / 10 % 10));
                }
                out.push(char::from(b'0' + o % 10));
            }
        }
        IpAddr::V6(a) => {
            let _ = write!(out, "{a}");
        }
    }
}

/// Prefixes as an nft literal; host prefixes are written as plain addresses.
fn prefix_literal(p: &[IpNet]) -> String {
    set_literal(p.iter().map(|n| {
        if n.prefix_len() == n.max_prefix_len() {
            n.addr().to_string()
        } else {
            n.to_string()
        }
    }))
}

fn quoted_set<'a>(items: impl IntoIterator<Item = &'a str>) -> String {
    set_literal(items.into_iter().map(|d| format!("\"{d}\"")))
}

/// Prefixes of one family, trimmed to their network address and without those another
/// one contains (nft rejects overlapping interval elements). Adjacent prefixes are kept
/// apart so that the sets read like the config.
fn prefixes_of(nets: &[IpNet], f: Family) -> Vec<IpNet> {
    // Sort keys computed once (a 100k-element object sorted with `network()` in the
    // comparator took most of its compile time).
    let mut v: Vec<(u128, u8, IpNet)> = nets
        .iter()
        .filter(|n| net_family(n) == f)
        .map(|n| {
            let t = n.trunc();
            let start = match t.network() {
                IpAddr::V4(a) => u128::from(u32::from(a)),
                IpAddr::V6(a) => u128::from(a),
            };
            (start, t.prefix_len(), t)
        })
        .collect();
    // CIDR blocks are either nested or disjoint: sorted by start (shorter prefix first),
    // a block is redundant exactly when it starts inside the last kept one.
    v.sort_unstable_by_key(|&(start, len, _)| (start, len));
    v.dedup_by_key(|&mut (start, len, _)| (start, len));
    let mut out: Vec<IpNet> = Vec::with_capacity(v.len());
    for (_, _, n) in v {
        if !out.last().is_some_and(|o| o.contains(&n)) {
            out.push(n);
        }
    }
    out
}

/// A host-only set becomes ranges when that cuts its element count by this factor.
const RANGE_GAIN: usize = 3;
/// ... and holds at least this many addresses (smaller sets cost nothing to load).
const RANGE_MIN: usize = 256;

/// The runs of consecutive addresses of sorted, distinct host prefixes, as
/// (first, last) integers.
fn host_runs(p: &[IpNet]) -> Vec<(u128, u128)> {
    let mut runs: Vec<(u128, u128)> = Vec::new();
    for n in p {
        let a = match n.addr() {
            IpAddr::V4(a) => u128::from(u32::from(a)),
            IpAddr::V6(a) => u128::from(a),
        };
        match runs.last_mut() {
            Some((_, last)) if last.checked_add(1) == Some(a) => *last = a,
            _ => runs.push((a, a)),
        }
    }
    runs
}

/// The address of family `f` with integer value `v` (from [`host_runs`]).
fn addr_of(f: Family, v: u128) -> IpAddr {
    match f {
        // The value came from an IPv4 address, so it fits.
        Family::Ipv4 => IpAddr::V4(std::net::Ipv4Addr::from(v as u32)),
        Family::Ipv6 => IpAddr::V6(std::net::Ipv6Addr::from(v)),
    }
}

fn port_elem(proto: &str, from: u16, to: u16) -> String {
    if from == to {
        format!("{proto} . {from}")
    } else {
        format!("{proto} . {from}-{to}")
    }
}

fn l4_elems(services: &[Service]) -> Vec<String> {
    let mut v: Vec<String> = services
        .iter()
        .filter_map(|s| match s {
            Service::Tcp { from, to } => Some(port_elem("tcp", *from, *to)),
            Service::Udp { from, to } => Some(port_elem("udp", *from, *to)),
            _ => None,
        })
        .collect();
    v.dedup();
    v
}

/// `tcp dport { ... }` / `udp dport { ... }` for the TCP and UDP services.
fn per_proto_ports(services: &[Service]) -> Vec<SvcMatch> {
    let mut out = Vec::new();
    for proto in ["tcp", "udp"] {
        let mut ports: Vec<String> = services
            .iter()
            .filter_map(|s| match (s, proto) {
                (Service::Tcp { from, to }, "tcp") | (Service::Udp { from, to }, "udp") => {
                    Some(if from == to {
                        from.to_string()
                    } else {
                        format!("{from}-{to}")
                    })
                }
                _ => None,
            })
            .collect();
        ports.dedup();
        if !ports.is_empty() {
            out.push(SvcMatch {
                text: format!(" {proto} dport {}", set_literal(ports)),
                family: None,
                single: None,
            });
        }
    }
    out
}

/// One way of matching the services of a rule, for one family.
#[derive(Debug, Clone)]
struct SvcMatch {
    text: String,
    family: Option<Family>,
    /// The match as one set element, when it is one TCP/UDP port (range).
    single: Option<Elem>,
}

struct Emitter<'a> {
    view: &'a NodeView,
    /// Every network object's normalized prefixes per family, computed once (sorting a
    /// 100k-element object is the biggest cost of compiling it).
    prefixes: BTreeMap<(&'a str, Family), Vec<IpNet>>,
    out: String,
    rules: usize,
    /// Rate-limit set names by (rule index, family).
    rl_sets: BTreeMap<(usize, Family), String>,
    /// Definitions of the sets of merged rules, written while emitting the chains.
    merged_sets: String,
    /// How many merged sets there are so far (their names count up).
    merged: usize,
}

impl<'a> Emitter<'a> {
    fn new(view: &'a NodeView) -> Self {
        let mut prefixes = BTreeMap::new();
        for (name, nets) in &view.objects.networks {
            for f in [Family::Ipv4, Family::Ipv6] {
                prefixes.insert((name.as_str(), f), prefixes_of(nets, f));
            }
        }
        Emitter {
            view,
            prefixes,
            out: String::with_capacity(256 + 160 * view.policy.rules.len()),
            rules: 0,
            rl_sets: BTreeMap::new(),
            merged_sets: String::new(),
            merged: 0,
        }
    }

    fn line(&mut self, s: &str) {
        self.out.push_str("        ");
        self.out.push_str(s);
        self.out.push('\n');
        self.rules += 1;
    }

    fn note(&mut self, s: &str) {
        self.out.push_str("        # ");
        self.out.push_str(s);
        self.out.push('\n');
    }

    fn header(&mut self) {
        let v = self.view;
        let _ = write!(
            self.out,
            "#!/usr/sbin/nft -f\n\
             # twinwall ruleset for node {node} of cluster {cluster}, config version {version}.\n\
             # Generated by `twinwall ruleset compile`; edit the cluster config, not this file.\n\
             # The first two lines replace table inet {TABLE} as a whole in one transaction.\n\
             table inet {TABLE}\n\
             delete table inet {TABLE}\n\n\
             table inet {TABLE} {{\n",
            node = v.node,
            cluster = v.cluster,
            version = v.version
        );
    }

    fn set_def(&mut self, name: &str, ty: &str, flags: &str, size: Option<usize>, elems: &str) {
        let _ = writeln!(self.out, "    set {name} {{");
        let _ = writeln!(self.out, "        type {ty}");
        if let Some(n) = size {
            let _ = writeln!(self.out, "        size {n}");
        }
        if !flags.is_empty() {
            let _ = writeln!(self.out, "        flags {flags}");
        }
        if !elems.is_empty() {
            self.out.push_str("        elements = { ");
            self.out.push_str(elems);
            self.out.push_str(" }\n");
        }
        self.out.push_str("    }\n\n");
    }

    fn sets(&mut self) -> Result<(), CompileError> {
        let v = self.view;
        for name in v.objects.networks.keys() {
            for f in [Family::Ipv4, Family::Ipv6] {
                let p = &self.prefixes[&(name.as_str(), f)];
                // A single prefix is matched inline (see `addr_match`): no set.
                if p.len() <= 1 {
                    continue;
                }
                let ty = match f {
                    Family::Ipv4 => "ipv4_addr",
                    Family::Ipv6 => "ipv6_addr",
                };
                // Only host addresses: a hash set, which nft loads several times faster
                // than an interval set (100k elements: 2.6 s vs 0.6 s here).
                let hosts = p.iter().all(|n| n.prefix_len() == n.max_prefix_len());
                // Its exact size as a hint: without one the kernel grows the hash table
                // step by step while loading (100k elements: 0.28 s -> 0.18 s of kernel
                // time). The table is only ever replaced as a whole, so the bound never
                // stops an addition.
                let mut elems = String::with_capacity(p.len() * 18);
                // Many adjacent host addresses: ranges in an interval set. nft pays
                // about 3x per interval element what it pays per hash element (100k
                // hosts in 23.8k runs: 0.37 s of CPU as ranges, 0.50 s as hosts), so
                // only when that leaves a third of the elements or fewer. Nothing is
                // lost: a plain group set has no per-element counters.
                // Small sets stay as the config wrote them.
                let runs = if hosts && p.len() >= RANGE_MIN {
                    host_runs(p)
                } else {
                    Vec::new()
                };
                let ranges = !runs.is_empty() && runs.len() * RANGE_GAIN <= p.len();
                if ranges {
                    for (k, &(a, b)) in runs.iter().enumerate() {
                        if k > 0 {
                            elems.push_str(", ");
                        }
                        push_addr(&mut elems, addr_of(f, a));
                        if b != a {
                            elems.push('-');
                            push_addr(&mut elems, addr_of(f, b));
                        }
                    }
                } else {
                    for (k, n) in p.iter().enumerate() {
                        if k > 0 {
                            elems.push_str(", ");
                        }
                        push_addr(&mut elems, n.addr());
                        if !hosts {
                            let _ = write!(elems, "/{}", n.prefix_len());
                        }
                    }
                }
                let (flags, size) = if hosts && !ranges {
                    ("", Some(p.len()))
                } else {
                    ("interval", None)
                };
                self.set_def(
                    &format!("{name}_{}", fam_suffix(f)),
                    ty,
                    flags,
                    size,
                    &elems,
                );
            }
        }
        for (name, svcs) in &v.objects.services {
            let elems = l4_elems(svcs);
            // A single port (range) is matched inline (`tcp dport 22`): no set.
            if elems.len() <= 1 {
                continue;
            }
            self.set_def(
                &format!("{name}_svc"),
                "inet_proto . inet_service",
                "interval",
                None,
                &elems.join(", "),
            );
        }
        for (i, r) in v.policy.rules.iter().enumerate() {
            let Some(rl) = r.rate_limit else { continue };
            let timeout = match rl.per {
                RateUnit::Second => "1m",
                RateUnit::Minute => "5m",
                RateUnit::Hour => "2h",
                RateUnit::Day => "2d",
            };
            for f in rule_families(r) {
                let Some(f) = f else { continue };
                let clean: String = r
                    .name
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                    .collect();
                let name = format!("rl{i}_{clean}_{}", fam_suffix(f));
                let ty = match f {
                    Family::Ipv4 => "ipv4_addr",
                    Family::Ipv6 => "ipv6_addr",
                };
                let _ = writeln!(
                    self.out,
                    "    # per-source rate limit of rule \"{}\"\n    set {name} {{\n        type {ty}\n        size 65535\n        flags dynamic,timeout\n        timeout {timeout}\n    }}\n",
                    r.name
                );
                self.rl_sets.insert((i, f), name);
            }
        }
        Ok(())
    }

    fn chain_head(&mut self, name: &str, ty: &str, hook: &str, prio: &str, policy: &str) {
        let _ = writeln!(
            self.out,
            "    chain {name} {{\n        type {ty} hook {hook} priority {prio}; policy {policy};"
        );
    }

    fn policy_word(&self) -> &'static str {
        match self.view.policy.default {
            Action::Accept => "accept",
            Action::Drop | Action::Reject => "drop",
        }
    }

    fn default_rule(&mut self) {
        let (verdict, name) = match self.view.policy.default {
            Action::Accept => ("", "default-accept"),
            Action::Drop => ("", "default-drop"),
            Action::Reject => (" reject", "default-reject"),
        };
        let log = if self.view.policy.log_default {
            format!(" log prefix \"tw:{name} \"")
        } else {
            String::new()
        };
        self.line(&format!("counter{log}{verdict} comment \"{name}\""));
    }

    fn conntrack_head(&mut self) {
        self.line("ct state established,related counter accept comment \"established\"");
        self.line("ct state invalid counter drop comment \"invalid\"");
    }

    fn filter_chains(&mut self) -> Result<(), CompileError> {
        let policy = self.policy_word();

        self.chain_head("input", "filter", "input", "filter", policy);
        self.conntrack_head();
        self.line("iifname \"lo\" counter accept comment \"loopback\"");
        self.note("cluster plumbing (generated)");
        self.vrrp("iifname", "daddr");
        self.sync_rule(true);
        self.management();
        self.icmp_essential(true);
        self.note("policy: rules to the firewall itself");
        self.policy_rules(FilterChain::Input)?;
        self.default_rule();
        self.out.push_str("    }\n\n");

        self.chain_head("forward", "filter", "forward", "filter", policy);
        self.conntrack_head();
        self.icmp_essential(false);
        self.note("port forwards: each dnat rule's matching accept (generated)");
        self.dnat_accepts()?;
        self.note("policy: rules through the firewall");
        self.policy_rules(FilterChain::Forward)?;
        self.default_rule();
        self.out.push_str("    }\n\n");

        self.chain_head("output", "filter", "output", "filter", policy);
        self.conntrack_head();
        self.line("oifname \"lo\" counter accept comment \"loopback\"");
        self.note("cluster plumbing (generated)");
        self.vrrp("oifname", "daddr");
        self.sync_rule(false);
        self.icmp_essential(true);
        self.note("policy: the firewall's own connections");
        self.policy_rules(FilterChain::Output)?;
        self.default_rule();
        self.out.push_str("    }\n\n");
        Ok(())
    }

    /// VRRP adverts (IP protocol 112) to 224.0.0.18 / ff02::12 on every VIP interface.
    /// Incoming adverts on IPv4 must come from the peer's address on that zone; IPv6
    /// adverts come from link-local addresses (RFC 5798 5.1.2.1).
    fn vrrp(&mut self, dir: &str, _daddr: &str) {
        let v = self.view;
        let mut seen = BTreeSet::new();
        for g in &v.vrrp.groups {
            for r in &g.routers {
                if !seen.insert((r.device.clone(), r.family)) {
                    continue;
                }
                let src = if dir == "iifname" {
                    match r.family {
                        Family::Ipv4 => {
                            let peer: Vec<IpAddr> = v
                                .peer
                                .interfaces
                                .get(&r.interface)
                                .map(|i| {
                                    i.addresses
                                        .iter()
                                        .filter(|a| net_family(a) == Family::Ipv4)
                                        .map(|a| a.addr())
                                        .collect()
                                })
                                .unwrap_or_default();
                            if peer.is_empty() {
                                String::new()
                            } else {
                                format!(" ip saddr {}", set_literal(peer))
                            }
                        }
                        Family::Ipv6 => " ip6 saddr fe80::/10".to_string(),
                    }
                } else {
                    String::new()
                };
                let (fam, group) = match r.family {
                    Family::Ipv4 => ("ip", "224.0.0.18"),
                    Family::Ipv6 => ("ip6", "ff02::12"),
                };
                self.line(&format!(
                    "{dir} \"{dev}\"{src} {fam} daddr {group} meta l4proto 112 counter accept comment \"cluster:vrrp\"",
                    dev = r.device
                ));
            }
        }
    }

    fn sync_rule(&mut self, incoming: bool) {
        let Some(s) = &self.view.sync else { return };
        let fam = fam_ip(Family::of(&s.local));
        let line = if incoming {
            format!(
                "iifname \"{}\" {fam} saddr {} {fam} daddr {} udp dport {} counter accept comment \"cluster:sync\"",
                s.device, s.peer, s.local, s.port
            )
        } else {
            format!(
                "oifname \"{}\" {fam} saddr {} {fam} daddr {} udp dport {} counter accept comment \"cluster:sync\"",
                s.device, s.local, s.peer, s.port
            )
        };
        self.line(&line);
        if !incoming {
            // mgmt forwards pushes to the peer's management API over the sync link (the
            // incoming side is the "cluster:management" rule).
            self.line(&format!(
                "oifname \"{}\" {fam} saddr {} {fam} daddr {} tcp dport {} counter accept comment \"cluster:management-peer\"",
                s.device, s.local, s.peer, self.view.management.port
            ));
        }
    }

    /// The management API (TCP), on its zones (the sync link always), from the allowed
    /// prefixes on every one of them or, when none are given, from each zone's own subnets
    /// on that zone only (a zone's subnet must not open the port on another zone's device).
    fn management(&mut self) {
        let v = self.view;
        let m = &v.management;
        let mut zones: Vec<&str> = m.interfaces.iter().map(String::as_str).collect();
        if let Some(s) = &v.sync
            && !zones.contains(&s.interface.as_str())
        {
            zones.push(&s.interface);
        }
        let ifaces: Vec<_> = zones.iter().filter_map(|z| v.interfaces.get(*z)).collect();
        if ifaces.is_empty() {
            return;
        }
        // (devices, allowed sources) pairs: one for all zones, or one per zone.
        let groups: Vec<(Vec<&str>, Vec<IpNet>)> = if m.allowed_from.is_empty() {
            ifaces
                .iter()
                .map(|i| {
                    (
                        vec![i.device.as_str()],
                        i.addresses.iter().map(|a| a.trunc()).collect(),
                    )
                })
                .collect()
        } else {
            vec![(
                ifaces.iter().map(|i| i.device.as_str()).collect(),
                m.allowed_from.clone(),
            )]
        };
        for (devices, allowed) in groups {
            for f in [Family::Ipv4, Family::Ipv6] {
                let p = prefixes_of(&allowed, f);
                if p.is_empty() {
                    continue;
                }
                self.line(&format!(
                    "iifname {} {} saddr {} tcp dport {} counter accept comment \"cluster:management\"",
                    quoted_set(devices.iter().copied()),
                    fam_ip(f),
                    prefix_literal(&p),
                    m.port
                ));
            }
        }
    }

    /// ICMP errors (PMTU discovery needs them) and, for the firewall's own traffic,
    /// IPv6 neighbour discovery and MLD.
    fn icmp_essential(&mut self, local: bool) {
        self.line("icmp type { destination-unreachable, time-exceeded, parameter-problem } counter accept comment \"icmp-essential\"");
        self.line("icmpv6 type { destination-unreachable, packet-too-big, time-exceeded, parameter-problem } counter accept comment \"icmp-essential\"");
        if local {
            self.line("icmpv6 type { nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert } ip6 hoplimit 255 counter accept comment \"ipv6-nd\"");
            self.line("icmpv6 type { mld-listener-query, mld-listener-report, mld-listener-done, mld2-listener-report } ip6 hoplimit 1 counter accept comment \"ipv6-mld\"");
        }
    }

    /// Address match for one side of a rule and one family.
    fn addr_match(&self, dir: &str, ep: &Endpoint, f: Option<Family>) -> String {
        let Endpoint::Network { name, networks } = ep else {
            return String::new();
        };
        let Some(f) = f else { return String::new() };
        let fam = fam_ip(f);
        let cached = self
            .view
            .objects
            .networks
            .get(name)
            .filter(|n| *n == networks)
            .and_then(|_| self.prefixes.get(&(name.as_str(), f)));
        match cached {
            Some(p) if p.len() > 1 => format!(" {fam} {dir} @{name}_{}", fam_suffix(f)),
            Some(p) => format!(" {fam} {dir} {}", prefix_literal(p)),
            None => format!(" {fam} {dir} {}", prefix_literal(&prefixes_of(networks, f))),
        }
    }

    fn svc_matches(
        &self,
        rule: &str,
        service_name: Option<&str>,
        services: &[Service],
    ) -> Result<Vec<SvcMatch>, CompileError> {
        if services.is_empty() {
            return Ok(vec![SvcMatch {
                text: String::new(),
                family: None,
                single: None,
            }]);
        }
        let mut out = Vec::new();
        let l4 = l4_elems(services);
        if !l4.is_empty() {
            let named = service_name.filter(|n| {
                l4.len() > 1
                    && self
                        .view
                        .objects
                        .services
                        .get(*n)
                        .is_some_and(|s| s == services)
            });
            let mut single = None;
            let text = match named {
                Some(n) => format!(" meta l4proto . th dport @{n}_svc"),
                None if l4.len() == 1 => {
                    let (p, port) = l4[0].split_once(" . ").unwrap_or(("tcp", "0"));
                    single = single_port(services);
                    format!(" {p} dport {port}")
                }
                None => format!(" meta l4proto . th dport {{ {} }}", l4.join(", ")),
            };
            out.push(SvcMatch {
                text,
                family: None,
                single,
            });
        }
        for (proto, fam, is_v6) in [
            ("icmp", Family::Ipv4, false),
            ("icmpv6", Family::Ipv6, true),
        ] {
            let mut any = false;
            let mut types = Vec::new();
            for s in services {
                let t = match (s, is_v6) {
                    (Service::Icmp { r#type }, false) | (Service::Icmpv6 { r#type }, true) => {
                        r#type
                    }
                    _ => continue,
                };
                match t {
                    None => any = true,
                    Some(name) => {
                        let known = if is_v6 {
                            icmpv6_type(name).is_some()
                        } else {
                            icmp_type(name).is_some()
                        };
                        if !known {
                            return Err(CompileError::UnknownIcmpType {
                                rule: rule.into(),
                                proto,
                                name: name.clone(),
                            });
                        }
                        if !types.contains(&name.as_str()) {
                            types.push(name.as_str());
                        }
                    }
                }
            }
            let l4name = if is_v6 { "ipv6-icmp" } else { "icmp" };
            if any {
                out.push(SvcMatch {
                    text: format!(" meta l4proto {l4name}"),
                    family: Some(fam),
                    single: None,
                });
            } else if !types.is_empty() {
                out.push(SvcMatch {
                    text: format!(" {proto} type {}", set_literal(types)),
                    family: Some(fam),
                    single: None,
                });
            }
        }
        Ok(out)
    }

    /// An address match as a [`Part`]: its text, and the one set element it is when the
    /// endpoint has a single prefix of the family (then the text is written from the
    /// element: std's `Display` for a prefix was most of this function's time).
    fn addr_part(&self, dir: &str, ep: &Endpoint, f: Option<Family>) -> Part {
        let (Endpoint::Network { name, networks }, Some(f)) = (ep, f) else {
            return Part::default();
        };
        let cached = self
            .prefixes
            .get(&(name.as_str(), f))
            .filter(|_| self.view.objects.networks.get(name) == Some(networks));
        if let Some([n]) = cached.map(Vec::as_slice) {
            let lhs = addr_lhs(f, dir);
            let e = prefix_elem(n, lhs);
            return Part {
                text: format!(" {lhs} {}", e.text),
                single: Some(e),
            };
        }
        let text = self.addr_match(dir, ep, Some(f));
        let single = match cached {
            Some(_) => None,
            None => match prefixes_of(networks, f).as_slice() {
                [n] => Some(prefix_elem(n, addr_lhs(f, dir))),
                _ => None,
            },
        };
        Part { text, single }
    }

    /// The policy rules of one chain, in config order; runs of rules that differ in one
    /// single-element match become one rule over a set (see `merge.rs`).
    fn policy_rules(&mut self, chain: FilterChain) -> Result<(), CompileError> {
        let v = self.view;
        let mut lines: Vec<Line> = Vec::new();
        // The service matches of each service object, computed once: thousands of rules
        // share a few services.
        let mut by_service: HashMap<&str, Vec<SvcMatch>> = HashMap::new();
        let mut own: Vec<SvcMatch>;
        for (i, r) in v.policy.rules.iter().enumerate() {
            if rule_chain(r) != chain {
                continue;
            }
            let object = r
                .service_name
                .as_deref()
                .filter(|n| v.objects.services.get(*n) == Some(&r.services));
            let svcs: &[SvcMatch] = match object {
                Some(n) => {
                    if !by_service.contains_key(n) {
                        let m = self.svc_matches(&r.name, Some(n), &r.services)?;
                        by_service.insert(n, m);
                    }
                    &by_service[n]
                }
                None => {
                    own = self.svc_matches(&r.name, r.service_name.as_deref(), &r.services)?;
                    &own
                }
            };
            for f in rule_families(r) {
                for s in svcs {
                    if let (Some(a), Some(b)) = (f, s.family)
                        && a != b
                    {
                        continue;
                    }
                    let mut head = String::new();
                    if let Endpoint::Zone { device, .. } = &r.from {
                        let _ = write!(head, " iifname \"{device}\"");
                    }
                    if let Endpoint::Zone { device, .. } = &r.to {
                        let _ = write!(head, " oifname \"{device}\"");
                    }
                    let addr_implied = matches!(r.from, Endpoint::Network { .. })
                        || matches!(r.to, Endpoint::Network { .. });
                    let mut family = None;
                    if let Some(f) = f
                        && !addr_implied
                        && s.family.is_none()
                    {
                        let _ = write!(head, " {}", fam_nfproto(f));
                        family = Some(f);
                    }
                    let saddr = self.addr_part("saddr", &r.from, f);
                    let daddr = self.addr_part("daddr", &r.to, f);
                    if !saddr.text.is_empty() || !daddr.text.is_empty() {
                        family = f;
                    }
                    let mut tail = String::new();
                    if let (Some(rl), Some(f)) = (r.rate_limit, f)
                        && let Some(set) = self.rl_sets.get(&(i, f))
                    {
                        let per = match rl.per {
                            RateUnit::Second => "second",
                            RateUnit::Minute => "minute",
                            RateUnit::Hour => "hour",
                            RateUnit::Day => "day",
                        };
                        let _ = write!(
                            tail,
                            " update @{set} {{ {} saddr limit rate {}/{per} }}",
                            fam_ip(f),
                            rl.count
                        );
                    }
                    tail.push_str(" counter");
                    if r.log {
                        let _ = write!(tail, " log prefix \"tw:{} \"", r.name);
                    }
                    let verdict = match r.action {
                        Action::Accept => "accept",
                        Action::Drop => "drop",
                        Action::Reject => "reject",
                    };
                    let _ = write!(tail, " {verdict}");
                    lines.push(Line {
                        head,
                        parts: [
                            saddr,
                            daddr,
                            Part {
                                text: s.text.clone(),
                                single: s.single.clone(),
                            },
                        ],
                        tail,
                        name: r.name.clone(),
                        family,
                        mergeable: !r.log && r.rate_limit.is_none(),
                    });
                }
            }
        }
        for o in merge::plan(&lines) {
            match o {
                Out::Single(i) => self.line(&lines[i].text()),
                Out::Merged { dims, lines: run } => {
                    let run: Vec<&Line> = run.iter().map(|&i| &lines[i]).collect();
                    self.merged_rule(chain, dims, &run);
                }
            }
        }
        Ok(())
    }

    /// One rule over a set for a run of lines that differ only in the matches `dims`
    /// (one, or an address and the port: a concatenated set); the set (one element per
    /// rule, with its counter and its name) goes before the chains.
    fn merged_rule(&mut self, chain: FilterChain, dims: &[usize], run: &[&Line]) {
        let first = run[0];
        let last = run[run.len() - 1];
        let e0 = run_elems(first, dims);
        let key: Vec<&str> = e0.iter().map(|e| e.key).collect();
        let lhs: Vec<&str> = e0.iter().map(|e| e.lhs).collect();
        let (key, lhs) = (key.join(" . "), lhs.join(" . "));
        let name = format!("{}_merged_{}", chain.name(), self.merged);
        self.merged += 1;
        let interval = run
            .iter()
            .any(|l| run_elems(l, dims).iter().any(|e| e.hi > e.lo));
        let ms = &mut self.merged_sets;
        let _ = writeln!(
            ms,
            "    # {} rules of chain {} that differ only in `{lhs}`, \"{}\" .. \"{}\":\n    # one element per rule, with the rule's own counter and its name as comment",
            run.len(),
            chain.name(),
            first.name,
            last.name
        );
        let _ = writeln!(ms, "    set {name} {{\n        type {key}");
        if interval {
            ms.push_str("        flags interval\n");
        } else {
            let _ = writeln!(ms, "        size {}", run.len());
        }
        // One element a line: the set reads like the rules it replaces.
        ms.push_str("        counter\n        elements = {\n");
        for (k, l) in run.iter().enumerate() {
            ms.push_str("            ");
            for (n, e) in run_elems(l, dims).into_iter().enumerate() {
                if n > 0 {
                    ms.push_str(" . ");
                }
                ms.push_str(&e.text);
            }
            ms.push_str(" comment \"");
            ms.push_str(&l.name);
            ms.push_str(if k + 1 < run.len() { "\",\n" } else { "\"\n" });
        }
        ms.push_str("        }\n    }\n\n");

        let mut m = first.head.clone();
        for (i, p) in first.parts.iter().enumerate() {
            if !dims.contains(&i) {
                m.push_str(&p.text);
            }
        }
        // The lookup last: its element counter then counts only packets the rule takes.
        let _ = write!(m, " {lhs} @{name}");
        m.push_str(&first.tail);
        let range = format!("{} .. {}", first.name, last.name);
        let comment = if range.len() <= 120 {
            range
        } else {
            format!("{} +{}", first.name, run.len() - 1)
        };
        let _ = write!(m, " comment \"{comment}\"");
        self.note(&format!(
            "{} rules merged into one lookup in set {name} (their counters are its elements')",
            run.len()
        ));
        self.line(m.trim_start());
    }

    fn dnat_parts(
        &self,
        name: &str,
        services: &[Service],
        service_name: Option<&str>,
        to: IpAddr,
    ) -> Result<Vec<SvcMatch>, CompileError> {
        let f = Family::of(&to);
        Ok(self
            .svc_matches(name, service_name, services)?
            .into_iter()
            .filter(|s| s.family.is_none() || s.family == Some(f))
            .collect())
    }

    fn dnat_accepts(&mut self) -> Result<(), CompileError> {
        let v = self.view;
        for n in &v.nat {
            let NatRule::Dnat {
                name,
                in_device,
                services,
                service_name,
                to,
                to_port,
                ..
            } = n
            else {
                continue;
            };
            let f = Family::of(to);
            let svcs: Vec<SvcMatch> = match to_port {
                Some(p) => {
                    let mut protos: Vec<&str> = services
                        .iter()
                        .filter_map(|s| match s {
                            Service::Tcp { .. } => Some("tcp"),
                            Service::Udp { .. } => Some("udp"),
                            _ => None,
                        })
                        .collect();
                    protos.dedup();
                    if protos.is_empty() {
                        return Err(CompileError::Nat {
                            rule: name.clone(),
                            reason: "a translated port needs a TCP or UDP service".into(),
                        });
                    }
                    vec![SvcMatch {
                        text: format!(" meta l4proto {} th dport {p}", set_literal(protos)),
                        family: None,
                        single: None,
                    }]
                }
                None => self.dnat_parts(name, services, service_name.as_deref(), *to)?,
            };
            for s in svcs {
                self.line(&format!(
                    "iifname \"{in_device}\" {} daddr {to}{} ct status dnat counter accept comment \"{name}\"",
                    fam_ip(f),
                    s.text
                ));
            }
        }
        Ok(())
    }

    fn nat_chains(&mut self) -> Result<(), CompileError> {
        let v = self.view;
        self.chain_head("prerouting", "nat", "prerouting", "dstnat", "accept");
        for n in &v.nat {
            let NatRule::Dnat {
                name,
                in_device,
                destination,
                services,
                service_name,
                to,
                to_port,
                ..
            } = n
            else {
                continue;
            };
            let f = Family::of(to);
            let dst: Vec<&IpAddr> = destination.iter().filter(|d| Family::of(d) == f).collect();
            if !destination.is_empty() && dst.is_empty() {
                return Err(CompileError::Nat {
                    rule: name.clone(),
                    reason: format!("no destination address of the same family as `{to}`"),
                });
            }
            let dmatch = if dst.is_empty() {
                format!(" {}", fam_nfproto(f))
            } else {
                format!(" {} daddr {}", fam_ip(f), set_literal(dst))
            };
            let target = match (to_port, f) {
                (Some(p), Family::Ipv4) => format!("{to}:{p}"),
                (Some(p), Family::Ipv6) => format!("[{to}]:{p}"),
                (None, _) => to.to_string(),
            };
            // A translated port needs a plain protocol match before it (nft: "transport
            // protocol mapping is only valid after transport protocol match"), so one
            // rule per protocol.
            let parts = match to_port {
                Some(_) => per_proto_ports(services),
                None => self.dnat_parts(name, services, service_name.as_deref(), *to)?,
            };
            for s in parts {
                self.line(&format!(
                    "iifname \"{in_device}\"{dmatch}{} counter dnat {} to {target} comment \"{name}\"",
                    s.text,
                    fam_ip(f)
                ));
            }
        }
        self.out.push_str("    }\n\n");

        self.chain_head("postrouting", "nat", "postrouting", "srcnat", "accept");
        for n in &v.nat {
            let NatRule::Snat {
                name,
                from,
                from_name,
                out_device,
                to,
                ..
            } = n
            else {
                continue;
            };
            let is_object = from_name
                .as_ref()
                .is_some_and(|o| v.objects.networks.get(o) == Some(from));
            let mut emitted = false;
            for f in [Family::Ipv4, Family::Ipv6] {
                let p = prefixes_of(from, f);
                if !from.is_empty() && p.is_empty() {
                    continue;
                }
                let action = match to {
                    SnatTarget::Masquerade => "masquerade".to_string(),
                    SnatTarget::Address { addresses } => {
                        match addresses.iter().find(|a| Family::of(a) == f) {
                            Some(a) => format!("snat {} to {a}", fam_ip(f)),
                            None => continue,
                        }
                    }
                };
                let smatch = if from.is_empty() {
                    format!(" {}", fam_nfproto(f))
                } else if let (true, Some(o)) = (is_object && p.len() > 1, from_name) {
                    format!(" {} saddr @{o}_{}", fam_ip(f), fam_suffix(f))
                } else {
                    format!(" {} saddr {}", fam_ip(f), prefix_literal(&p))
                };
                self.line(&format!(
                    "oifname \"{out_device}\"{smatch} counter {action} comment \"{name}\""
                ));
                emitted = true;
            }
            if !emitted {
                return Err(CompileError::Nat {
                    rule: name.clone(),
                    reason: "no translation address of the family of its sources".into(),
                });
            }
        }
        self.out.push_str("    }\n");
        Ok(())
    }
}

impl FilterChain {
    /// The nft chain's name.
    pub(crate) fn name(self) -> &'static str {
        match self {
            FilterChain::Input => "input",
            FilterChain::Forward => "forward",
            FilterChain::Output => "output",
        }
    }
}

/// The set elements of a merged line: its matches `dims`.
fn run_elems<'l>(l: &'l Line, dims: &[usize]) -> Vec<&'l Elem> {
    dims.iter()
        .map(|&d| l.parts[d].single.as_ref().expect("planned with one"))
        .collect()
}

/// A single prefix as a set element matched by `lhs` (`ip daddr`).
fn prefix_elem(n: &IpNet, lhs: &'static str) -> Elem {
    let (key, lo, hi) = match n {
        IpNet::V4(n) => (
            "ipv4_addr",
            u128::from(u32::from(n.network())),
            u128::from(u32::from(n.broadcast())),
        ),
        IpNet::V6(n) => (
            "ipv6_addr",
            u128::from(n.network()),
            u128::from(n.broadcast()),
        ),
    };
    let mut text = String::with_capacity(20);
    push_addr(&mut text, n.addr());
    if n.prefix_len() != n.max_prefix_len() {
        let _ = write!(text, "/{}", n.prefix_len());
    }
    Elem {
        key,
        lhs,
        text,
        lo,
        hi,
    }
}

/// The one TCP/UDP port (range) of a service list whose L4 part is a single element.
fn single_port(services: &[Service]) -> Option<Elem> {
    services.iter().find_map(|s| {
        let (proto, from, to) = match s {
            Service::Tcp { from, to } => ("tcp", *from, *to),
            Service::Udp { from, to } => ("udp", *from, *to),
            _ => return None,
        };
        Some(Elem {
            key: "inet_service",
            lhs: match proto {
                "tcp" => "tcp dport",
                _ => "udp dport",
            },
            text: if from == to {
                from.to_string()
            } else {
                format!("{from}-{to}")
            },
            lo: from.into(),
            hi: to.into(),
        })
    })
}

/// The filter chain a policy rule belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum FilterChain {
    /// `to = "self"`: traffic to the firewall.
    Input,
    /// Traffic through the firewall.
    Forward,
    /// `from = "self"`: the firewall's own outgoing connections.
    Output,
}

/// `to = "self"` goes to input, `from = "self"` to output (the config rejects both in
/// one rule), everything else to forward.
pub(crate) fn rule_chain(r: &Rule) -> FilterChain {
    match (&r.from, &r.to) {
        (_, Endpoint::SelfNode) => FilterChain::Input,
        (Endpoint::SelfNode, _) => FilterChain::Output,
        _ => FilterChain::Forward,
    }
}

/// The address families a rule applies to: `None` for "both, no address match";
/// rate-limited rules are always split per family (the per-source set is per family).
pub(crate) fn rule_families(r: &Rule) -> Vec<Option<Family>> {
    // Families as bits (IPv4 1, IPv6 2): this runs for every rule in the compiler and
    // in the lints, and sets of families allocated for each took a tenth of the emit.
    let bits = |ep: &Endpoint| -> Option<u8> {
        match ep {
            Endpoint::Network { networks, .. } => Some(networks.iter().fold(0, |b, n| {
                b | match net_family(n) {
                    Family::Ipv4 => 1,
                    Family::Ipv6 => 2,
                }
            })),
            _ => None,
        }
    };
    let set = match (bits(&r.from), bits(&r.to)) {
        (None, None) if r.rate_limit.is_none() => return vec![None],
        (None, None) => 3,
        (Some(a), None) => a,
        (None, Some(b)) => b,
        (Some(a), Some(b)) => a & b,
    };
    [(1, Family::Ipv4), (2, Family::Ipv6)]
        .into_iter()
        .filter(|(bit, _)| set & bit != 0)
        .map(|(_, f)| Some(f))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_addr_writes_what_display_writes() {
        for a in [
            "0.0.0.0",
            "9.10.99.100",
            "255.254.200.1",
            "198.51.100.10",
            "2001:db8::1",
        ] {
            let ip: IpAddr = a.parse().unwrap();
            let mut s = String::new();
            push_addr(&mut s, ip);
            assert_eq!(s, ip.to_string());
        }
    }
}
