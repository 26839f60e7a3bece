//! Semantic validation: the raw TOML model into the typed [`Model`], reporting every
//! problem with its position and a hint.
//!
//! Validation never stops at the first problem: each check records its findings and the
//! rest of the config is still checked with whatever could be understood. The model is
//! only returned when no error was found.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::ops::Range;
use std::str::FromStr;

use ipnet::IpNet;

use crate::diag::{Sink, did_you_mean, list};
use crate::model::*;
use crate::raw::*;
use crate::view::{Action, Family, Interface, Objects, RateLimit, RateUnit, Service, SnatTarget};

/// nft's ICMP type names (`nft describe icmp type`).
pub(crate) const ICMP_TYPES: &[&str] = &[
    "echo-reply",
    "destination-unreachable",
    "source-quench",
    "redirect",
    "echo-request",
    "router-advertisement",
    "router-solicitation",
    "time-exceeded",
    "parameter-problem",
    "timestamp-request",
    "timestamp-reply",
    "info-request",
    "info-reply",
    "address-mask-request",
    "address-mask-reply",
];

/// nft's ICMPv6 type names (`nft describe icmpv6 type`).
pub(crate) const ICMPV6_TYPES: &[&str] = &[
    "destination-unreachable",
    "packet-too-big",
    "time-exceeded",
    "parameter-problem",
    "echo-request",
    "echo-reply",
    "mld-listener-query",
    "mld-listener-report",
    "mld-listener-done",
    "mld-listener-reduction",
    "nd-router-solicit",
    "nd-router-advert",
    "nd-neighbor-solicit",
    "nd-neighbor-advert",
    "nd-redirect",
    "router-renumbering",
    "ind-neighbor-solicit",
    "ind-neighbor-advert",
    "mld2-listener-report",
];

type Span = Range<usize>;

/// A node as far as it could be understood, with source positions.
struct NodeInfo {
    name: String,
    name_span: Span,
    priority: Option<u8>,
    /// zone -> (zone key span, device, addresses with spans)
    zones: BTreeMap<String, ZoneInfo>,
}

struct ZoneInfo {
    span: Span,
    device: Option<String>,
    addresses: Vec<(IpNet, Span)>,
    /// All addresses present and parsed: only then do subnet checks against this zone
    /// mean anything (otherwise they would only repeat the first error).
    addr_ok: bool,
}

/// Everything later checks look names up in.
struct Names {
    zones: BTreeSet<String>,
    networks: BTreeMap<String, Vec<IpNet>>,
    services: BTreeMap<String, Vec<Service>>,
    /// zone -> VIP addresses on it (all groups, config order)
    vips: BTreeMap<String, Vec<IpNet>>,
}

impl Names {
    fn zone_list(&self) -> String {
        list(self.zones.iter().map(String::as_str))
    }
}

fn fam(f: Family) -> &'static str {
    match f {
        Family::Ipv4 => "IPv4",
        Family::Ipv6 => "IPv6",
    }
}

fn net_family(n: &IpNet) -> Family {
    Family::of(&n.addr())
}

fn families(nets: &[IpNet]) -> BTreeSet<Family> {
    nets.iter().map(net_family).collect()
}

/// Validates the raw model. Returns the model when no error was recorded.
pub(crate) fn validate(sink: &mut Sink<'_>, raw: &RawConfig) -> Option<Model> {
    let errors_before = sink.error_count();
    let root: Span = 0..0;

    // [cluster]
    let (cluster, version) = match &raw.cluster {
        None => {
            sink.error(
                &root,
                "missing table `[cluster]`",
                "add `[cluster]` with `name = \"...\"` and `version = 1`",
            );
            (None, None)
        }
        Some(c) => {
            let name = required(sink, &c.get().name, &c.span(), "name", "cluster");
            let name = name.and_then(|n| {
                if n.get().trim().is_empty() {
                    sink.error(
                        &n.span(),
                        "cluster name is empty",
                        "give the cluster a name",
                    );
                    None
                } else {
                    Some(n.get().clone())
                }
            });
            let version = required(sink, &c.get().version, &c.span(), "version", "cluster")
                .and_then(|v| {
                    let n = *v.get();
                    if n < 1 {
                        sink.error(
                            &v.span(),
                            format!("cluster version {n} is out of range"),
                            "the version is a positive integer, raised with every change",
                        );
                        None
                    } else {
                        Some(n as u64)
                    }
                });
            (name, version)
        }
    };

    // [nodes]
    let nodes = check_nodes(sink, raw);
    let zones: BTreeSet<String> = nodes.iter().flat_map(|n| n.zones.keys().cloned()).collect();
    check_zone_consistency(sink, &nodes);

    // Duplicate addresses across the cluster: (address) -> (span, what).
    let mut seen_addr: HashMap<IpAddr, (Span, String)> = HashMap::new();
    for n in &nodes {
        for (zone, z) in &n.zones {
            for (a, span) in &z.addresses {
                note_address(
                    sink,
                    &mut seen_addr,
                    a.addr(),
                    span,
                    format!("node `{}` zone `{zone}`", n.name),
                );
            }
        }
    }

    // [objects] (before rules and VIP checks need them)
    let mut names = Names {
        zones,
        networks: BTreeMap::new(),
        services: BTreeMap::new(),
        vips: BTreeMap::new(),
    };
    check_objects(sink, raw, &mut names);

    // [vrrp]
    let (vrrp, groups) = check_vrrp(sink, raw, &nodes, &mut names, &mut seen_addr);

    // [sync]
    let sync = check_sync(sink, raw, &names);

    // [[route]]
    let routes = check_routes(sink, raw, &nodes, &names);

    // [policy]
    let policy = check_policy(sink, raw, &names);

    // [[nat.rule]]
    let nat = check_nat(sink, raw, &names);

    // [management]
    let management = check_management(sink, raw, &names, sync.as_ref());

    if sink.error_count() > errors_before {
        return None;
    }
    let nodes = nodes
        .into_iter()
        .map(|n| Node {
            priority: n.priority.unwrap_or(0),
            interfaces: n
                .zones
                .into_iter()
                .map(|(zone, z)| {
                    let iface = Interface {
                        name: zone.clone(),
                        device: z.device.unwrap_or_default(),
                        addresses: z.addresses.into_iter().map(|(a, _)| a).collect(),
                    };
                    (zone, iface)
                })
                .collect(),
            name: n.name,
        })
        .collect();
    Some(Model {
        cluster: cluster?,
        version: version?,
        nodes,
        vrrp,
        groups,
        sync,
        routes,
        objects: Objects {
            networks: names.networks,
            services: names.services,
        },
        policy: policy?,
        nat,
        management,
    })
}

/// Reports a missing key at its table and returns the key when present.
fn required<'a, T>(
    sink: &mut Sink<'_>,
    v: &'a Option<Sp<T>>,
    table_span: &Span,
    key: &str,
    table: &str,
) -> Option<&'a Sp<T>> {
    // A mistyped key was already reported with "did you mean `key`?": do not report the
    // same mistake a second time as missing.
    if v.is_none() && !sink.was_suggested(table, key) {
        sink.error(
            table_span,
            format!("missing key `{key}` in `{}`", display_path(table)),
            format!("add `{key} = ...` (see docs/config.md)"),
        );
    }
    v.as_ref()
}

/// `policy.rule[2]` as `policy.rule[2]`, top-level tables as `[cluster]`.
fn display_path(path: &str) -> String {
    if path.contains('[') {
        path.to_owned()
    } else {
        format!("[{path}]")
    }
}

/// An integer key within a range, with a default.
fn int_in(
    sink: &mut Sink<'_>,
    v: &Option<Sp<i64>>,
    what: &str,
    lo: i64,
    hi: i64,
    default: i64,
) -> Option<i64> {
    match v {
        None => Some(default),
        Some(v) => {
            let n = *v.get();
            if (lo..=hi).contains(&n) {
                Some(n)
            } else {
                sink.error(
                    &v.span(),
                    format!("{what} {n} is out of range"),
                    format!("{what} must be in {lo}..={hi}"),
                );
                None
            }
        }
    }
}

fn note_address(
    sink: &mut Sink<'_>,
    seen: &mut HashMap<IpAddr, (Span, String)>,
    addr: IpAddr,
    span: &Span,
    what: String,
) {
    if let Some((first, first_what)) = seen.get(&addr) {
        let (line, _) = sink.locate(first);
        sink.error(
            span,
            format!("duplicate address {addr}: {what} and {first_what} (line {line})"),
            "every interface address and VIP must be unique in the cluster",
        );
    } else {
        seen.insert(addr, (span.clone(), what));
    }
}

/// Names of nodes, zones, objects and rules: letters, digits, `_`, `-`, `.`; starting
/// with a letter or `_` (they become nft set names and log prefixes).
fn check_name(sink: &mut Sink<'_>, name: &str, span: &Span, what: &str) -> bool {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !ok {
        sink.error(
            span,
            format!("invalid {what} name `{name}`"),
            "names start with a letter or `_` and contain only letters, digits, `_`, `-` and `.` (at most 63)",
        );
    }
    ok
}

/// An interface or VIP address: `a/p`.
fn parse_addr_prefix(s: &str) -> Result<IpNet, (String, String)> {
    if let Ok(net) = IpNet::from_str(s) {
        return Ok(net);
    }
    if let Ok(a) = IpAddr::from_str(s) {
        let p = if a.is_ipv4() { 24 } else { 64 };
        return Err((
            format!("address `{s}` has no prefix length"),
            format!("write the address with its subnet's prefix length, e.g. `{a}/{p}`"),
        ));
    }
    Err((
        format!("`{s}` is not an address with prefix length"),
        "write ADDRESS/PREFIX, e.g. `203.0.113.2/24` or `2001:db8::2/64`".to_owned(),
    ))
}

/// A network: a prefix without host bits, or a bare address (a host).
fn parse_network(s: &str) -> Result<IpNet, (String, String)> {
    if let Ok(a) = IpAddr::from_str(s) {
        return Ok(IpNet::from(a));
    }
    match IpNet::from_str(s) {
        Ok(net) if net.trunc() != net => Err((
            format!("network `{s}` has host bits set"),
            format!(
                "did you mean `{}`? (a single host is `{}/{}`)",
                net.trunc(),
                net.addr(),
                net.max_prefix_len()
            ),
        )),
        Ok(net) => Ok(net),
        Err(_) => Err((
            format!("`{s}` is not a network prefix or address"),
            "write a prefix such as `198.51.100.0/24`, `2001:db8::/64` or a host address"
                .to_owned(),
        )),
    }
}

/// A plain address (gateways, DNAT targets).
fn parse_plain_addr(s: &str) -> Result<IpAddr, (String, String)> {
    if let Ok(a) = IpAddr::from_str(s) {
        return Ok(a);
    }
    if let Ok(net) = IpNet::from_str(s) {
        return Err((
            format!("`{s}` has a prefix length where an address is expected"),
            format!("write just the address: `{}`", net.addr()),
        ));
    }
    Err((
        format!("`{s}` is not an IP address"),
        "write an IPv4 or IPv6 address, e.g. `203.0.113.254`".to_owned(),
    ))
}

/// `tcp/80`, `udp/1000-2000`, `icmp/echo-request`, `icmpv6/echo-request`, `icmp`, `icmpv6`.
pub(crate) fn parse_service(s: &str) -> Result<Service, (String, String)> {
    let usage = "write `tcp/PORT`, `udp/PORT`, `tcp/LOW-HIGH`, `icmp/TYPE`, `icmpv6/TYPE`, `icmp` or `icmpv6`";
    match s {
        "icmp" => return Ok(Service::Icmp { r#type: None }),
        "icmpv6" => return Ok(Service::Icmpv6 { r#type: None }),
        _ => {}
    }
    let Some((proto, rest)) = s.split_once('/') else {
        return Err((format!("`{s}` is not a service"), usage.to_owned()));
    };
    match proto {
        "tcp" | "udp" => {
            let port = |p: &str| -> Result<u16, (String, String)> {
                match p.parse::<u16>() {
                    Ok(n) if n >= 1 => Ok(n),
                    _ => Err((
                        format!("port `{p}` in `{s}` is not a port number"),
                        "ports are 1..=65535".to_owned(),
                    )),
                }
            };
            let (from, to) = match rest.split_once('-') {
                Some((a, b)) => (port(a)?, port(b)?),
                None => {
                    let p = port(rest)?;
                    (p, p)
                }
            };
            if from > to {
                return Err((
                    format!("port range `{rest}` in `{s}` is reversed"),
                    format!("write `{proto}/{to}-{from}`"),
                ));
            }
            Ok(if proto == "tcp" {
                Service::Tcp { from, to }
            } else {
                Service::Udp { from, to }
            })
        }
        "icmp" | "icmpv6" => {
            let table = if proto == "icmp" {
                ICMP_TYPES
            } else {
                ICMPV6_TYPES
            };
            if table.contains(&rest) {
                let t = Some(rest.to_owned());
                Ok(if proto == "icmp" {
                    Service::Icmp { r#type: t }
                } else {
                    Service::Icmpv6 { r#type: t }
                })
            } else {
                Err((
                    format!("unknown {proto} type `{rest}` in `{s}`"),
                    did_you_mean(rest, table.iter().copied(), || {
                        format!("{proto} types are nft's names: {}", table.join(", "))
                    }),
                ))
            }
        }
        _ => Err((
            format!("unknown protocol `{proto}` in `{s}`"),
            usage.to_owned(),
        )),
    }
}

fn check_nodes(sink: &mut Sink<'_>, raw: &RawConfig) -> Vec<NodeInfo> {
    let mut nodes = Vec::new();
    for (name, node) in &raw.nodes {
        let name_span = name.span();
        check_name(sink, name.get(), &name_span, "node");
        let priority = required(
            sink,
            &node.get().priority,
            &name_span,
            "priority",
            &format!("nodes.{}", name.get()),
        )
        .and_then(|p| {
            let n = *p.get();
            if (1..=254).contains(&n) {
                Some(n as u8)
            } else {
                sink.error(
                    &p.span(),
                    format!("priority {n} of node `{}` is out of range", name.get()),
                    "VRRP priorities of a node are 1..=254 (255 is the address owner, 0 means \
                     resigning)",
                );
                None
            }
        });
        let mut zones = BTreeMap::new();
        let mut devices: HashMap<String, String> = HashMap::new();
        if node.get().interfaces.is_empty() {
            sink.error(
                &name_span,
                format!("node `{}` has no interfaces", name.get()),
                "add `interfaces.ZONE = { device = \"eth0\", address = \"a/p\" }`",
            );
        }
        for (zone, iface) in &node.get().interfaces {
            let zone_span = zone.span();
            let zname = zone.get();
            if check_name(sink, zname, &zone_span, "zone")
                && matches!(zname.as_str(), "any" | "self")
            {
                sink.error(
                    &zone_span,
                    format!("`{zname}` is reserved and cannot name a zone"),
                    "rules use `any` and `self` as keywords; pick another zone name",
                );
            }
            let table = format!("nodes.{}.interfaces.{zname}", name.get());
            let device = required(sink, &iface.get().device, &zone_span, "device", &table)
                .and_then(|d| {
                    let dev = d.get();
                    let ok = !dev.is_empty()
                        && dev.len() <= 15
                        && dev
                            .chars()
                            .all(|c| c.is_ascii_graphic() && c != '/' && c != ':');
                    if !ok {
                        sink.error(
                            &d.span(),
                            format!("`{dev}` is not a valid Linux device name"),
                            "device names are 1..=15 printable characters without `/`, `:` or spaces",
                        );
                        return None;
                    }
                    if let Some(other) = devices.insert(dev.clone(), zname.clone()) {
                        sink.error(
                            &d.span(),
                            format!(
                                "device `{dev}` of node `{}` is used by zones `{other}` and `{zname}`",
                                name.get()
                            ),
                            "each zone of a node needs its own device",
                        );
                    }
                    Some(dev.clone())
                });
            let mut addresses = Vec::new();
            let mut addr_ok = false;
            if let Some(a) = required(sink, &iface.get().address, &zone_span, "address", &table) {
                let items = a.get().items(&a.span());
                addr_ok = !items.is_empty();
                if items.is_empty() {
                    sink.error(
                        &a.span(),
                        "empty address list",
                        "give the interface at least one address with prefix length",
                    );
                }
                for (s, span) in items {
                    match parse_addr_prefix(&s) {
                        Ok(net) => addresses.push((net, span)),
                        Err((m, h)) => {
                            addr_ok = false;
                            sink.error(&span, m, h)
                        }
                    }
                }
            }
            zones.insert(
                zname.clone(),
                ZoneInfo {
                    span: zone_span,
                    device,
                    addresses,
                    addr_ok,
                },
            );
        }
        nodes.push(NodeInfo {
            name: name.get().clone(),
            name_span,
            priority,
            zones,
        });
    }
    if nodes.len() != 2 {
        let span = nodes.get(2).map(|n| n.name_span.clone()).unwrap_or(0..0);
        let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
        sink.error(
            &span,
            format!(
                "a cluster has exactly two nodes; this one has {} ({})",
                nodes.len(),
                list(names)
            ),
            "describe both nodes of the pair as `[nodes.NAME]` tables",
        );
    }
    if let [a, b] = nodes.as_slice()
        && let (Some(pa), Some(pb)) = (a.priority, b.priority)
        && pa == pb
    {
        let span = raw
            .nodes
            .iter()
            .nth(1)
            .and_then(|(_, n)| n.get().priority.as_ref().map(|p| p.span()))
            .unwrap_or(b.name_span.clone());
        sink.error(
            &span,
            format!(
                "nodes `{}` and `{}` both have priority {pa}",
                a.name, b.name
            ),
            "VRRP needs distinct priorities: give the preferred master the higher one",
        );
    }
    nodes
}

/// Both nodes have the same zones, and each zone's subnets match.
fn check_zone_consistency(sink: &mut Sink<'_>, nodes: &[NodeInfo]) {
    for n in nodes {
        for other in nodes {
            if std::ptr::eq(n, other) {
                continue;
            }
            for (zone, oz) in &other.zones {
                match n.zones.get(zone) {
                    None => {
                        let (line, _) = sink.locate(&oz.span);
                        sink.error(
                            &n.name_span,
                            format!(
                                "node `{}` lacks interface `{zone}`, which node `{}` has (line {line})",
                                n.name, other.name
                            ),
                            format!(
                                "both nodes need the same zones: add `interfaces.{zone}` to `[nodes.{}]`",
                                n.name
                            ),
                        );
                    }
                    Some(z) if z.addr_ok && oz.addr_ok => {
                        for (a, span) in &z.addresses {
                            let same = oz.addresses.iter().any(|(b, _)| b.trunc() == a.trunc());
                            if !same {
                                let theirs: Vec<String> =
                                    oz.addresses.iter().map(|(b, _)| b.to_string()).collect();
                                sink.error(
                                    span,
                                    format!(
                                        "address {a} of node `{}` zone `{zone}` is in subnet {}, which node `{}` does not have on that zone ({})",
                                        n.name,
                                        a.trunc(),
                                        other.name,
                                        if theirs.is_empty() { "no addresses".to_owned() } else { theirs.join(", ") }
                                    ),
                                    "both nodes of a zone sit on the same link: give them addresses in the same subnets",
                                );
                            }
                        }
                    }
                    Some(_) => {}
                }
            }
        }
    }
}

fn check_objects(sink: &mut Sink<'_>, raw: &RawConfig, names: &mut Names) {
    let Some(objects) = &raw.objects else {
        return;
    };
    for (name, value) in &objects.get().networks {
        let span = name.span();
        if !check_name(sink, name.get(), &span, "network object") {
            continue;
        }
        if names.zones.contains(name.get()) || matches!(name.get().as_str(), "any" | "self") {
            sink.error(
                &span,
                format!(
                    "network object `{}` has the name of a zone or keyword",
                    name.get()
                ),
                "rules could not tell them apart: rename the object",
            );
            continue;
        }
        let items = value.get().items(&value.span());
        if items.is_empty() {
            sink.error(
                &value.span(),
                format!("network object `{}` is empty", name.get()),
                "list at least one prefix or address",
            );
        }
        let mut nets = Vec::with_capacity(items.len());
        for (s, span) in items {
            match parse_network(&s) {
                Ok(n) => nets.push(n),
                Err((m, h)) => sink.error(&span, m, h),
            }
        }
        names.networks.insert(name.get().clone(), nets);
    }
    for (name, value) in &objects.get().services {
        let span = name.span();
        if !check_name(sink, name.get(), &span, "service object") {
            continue;
        }
        let items = value.get().items(&value.span());
        if items.is_empty() {
            sink.error(
                &value.span(),
                format!("service object `{}` is empty", name.get()),
                "list at least one service such as `tcp/443`",
            );
        }
        let mut svcs = Vec::with_capacity(items.len());
        for (s, span) in items {
            match parse_service(&s) {
                Ok(v) => svcs.push(v),
                Err((m, h)) => sink.error(&span, m, h),
            }
        }
        names.services.insert(name.get().clone(), svcs);
    }
}

/// Looks up a zone name, reporting an unknown one.
fn zone_ref(sink: &mut Sink<'_>, names: &Names, v: &Sp<String>, what: &str) -> Option<String> {
    let z = v.get();
    if names.zones.contains(z) {
        Some(z.clone())
    } else {
        let hint = did_you_mean(z, names.zones.iter().map(String::as_str), || {
            format!(
                "zones are the interface names of the nodes: {}",
                names.zone_list()
            )
        });
        sink.error(&v.span(), format!("{what} `{z}` is not a zone"), hint);
        None
    }
}

fn check_vrrp(
    sink: &mut Sink<'_>,
    raw: &RawConfig,
    nodes: &[NodeInfo],
    names: &mut Names,
    seen_addr: &mut HashMap<IpAddr, (Span, String)>,
) -> (VrrpSettings, Vec<Group>) {
    let mut settings = VrrpSettings {
        advert_interval_ms: DEFAULT_ADVERT_INTERVAL_MS,
        preempt: true,
        preempt_delay_ms: 0,
        accept_mode: false,
        garp_count: DEFAULT_GARP_COUNT,
        garp_interval_ms: DEFAULT_GARP_INTERVAL_MS,
    };
    let Some(v) = &raw.vrrp else {
        return (settings, Vec::new());
    };
    let v = v.get();
    if let Some(a) = &v.advert_interval_ms {
        let n = *a.get();
        if !(10..=40950).contains(&n) {
            sink.error(
                &a.span(),
                format!("advert interval {n} ms is out of range"),
                "VRRPv3 advertises every 10..=40950 ms (1..=4095 centiseconds)",
            );
        } else if n % 10 != 0 {
            sink.error(
                &a.span(),
                format!("advert interval {n} ms is not a multiple of 10 ms"),
                format!(
                    "VRRPv3 counts in centiseconds: use {} or {}",
                    n / 10 * 10,
                    (n / 10 + 1) * 10
                ),
            );
        } else {
            settings.advert_interval_ms = n as u32;
        }
    }
    if let Some(p) = &v.preempt {
        settings.preempt = *p.get();
    }
    if let Some(a) = &v.accept_mode {
        settings.accept_mode = *a.get();
    }
    if let Some(n) = int_in(
        sink,
        &v.preempt_delay_ms,
        "preempt_delay_ms",
        0,
        3_600_000,
        0,
    ) {
        settings.preempt_delay_ms = n as u32;
    }
    if let Some(n) = int_in(
        sink,
        &v.garp_count,
        "garp_count",
        0,
        100,
        DEFAULT_GARP_COUNT.into(),
    ) {
        settings.garp_count = n as u32;
    }
    if let Some(n) = int_in(
        sink,
        &v.garp_interval_ms,
        "garp_interval_ms",
        0,
        60_000,
        DEFAULT_GARP_INTERVAL_MS.into(),
    ) {
        settings.garp_interval_ms = n as u32;
    }

    let mut groups = Vec::new();
    let mut group_names: HashMap<String, Span> = HashMap::new();
    // (zone, vrid, family) -> span of the first use
    let mut vrids: HashMap<(String, u8, Family), Span> = HashMap::new();
    for (gi, g) in v.group.iter().enumerate() {
        let gspan = g.span();
        let g = g.get();
        let name = required(sink, &g.name, &gspan, "name", &format!("vrrp.group[{gi}]")).map(|n| {
            if check_name(sink, n.get(), &n.span(), "group")
                && let Some(first) = group_names.insert(n.get().clone(), n.span())
            {
                let (line, _) = sink.locate(&first);
                sink.error(
                    &n.span(),
                    format!(
                        "duplicate VRRP group name `{}` (first at line {line})",
                        n.get()
                    ),
                    "group names must be unique",
                );
            }
            n.get().clone()
        });
        let gname = name.clone().unwrap_or_default();
        let track: Vec<String> = g
            .track
            .iter()
            .filter_map(|t| zone_ref(sink, names, t, "tracked interface"))
            .collect();
        if g.vip.is_empty() {
            sink.warning(
                &gspan,
                format!("VRRP group `{gname}` has no VIPs"),
                "add `[[vrrp.group.vip]]` entries or remove the group",
            );
        }
        let mut vips = Vec::new();
        for (vi, vip) in g.vip.iter().enumerate() {
            let vspan = vip.span();
            let vip = vip.get();
            let table = &format!("vrrp.group[{gi}].vip[{vi}]");
            let vrid = required(sink, &vip.vrid, &vspan, "vrid", table).and_then(|r| {
                let n = *r.get();
                if (1..=255).contains(&n) {
                    Some((n as u8, r.span()))
                } else {
                    sink.error(
                        &r.span(),
                        format!("VRID {n} is out of range"),
                        "virtual router ids are 1..=255",
                    );
                    None
                }
            });
            let zone = required(sink, &vip.interface, &vspan, "interface", table)
                .and_then(|z| zone_ref(sink, names, z, "VIP interface"));
            let mut addrs: Vec<IpNet> = Vec::new();
            if let Some(a) = required(sink, &vip.address, &vspan, "address", table) {
                let items = a.get().items(&a.span());
                if items.is_empty() {
                    sink.error(
                        &a.span(),
                        "empty VIP address list",
                        "give the VIP an address",
                    );
                }
                for (s, span) in items {
                    let net = match parse_addr_prefix(&s) {
                        Ok(n) => n,
                        Err((m, h)) => {
                            sink.error(&span, m, h);
                            continue;
                        }
                    };
                    if let Some(zone) = &zone {
                        check_vip_subnet(sink, nodes, zone, &net, &span);
                        note_address(
                            sink,
                            seen_addr,
                            net.addr(),
                            &span,
                            format!("VIP of zone `{zone}`"),
                        );
                    }
                    addrs.push(net);
                }
            }
            if let (Some((vrid, vrid_span)), Some(zone)) = (&vrid, &zone) {
                for f in families(&addrs) {
                    if let Some(first) = vrids.insert((zone.clone(), *vrid, f), vrid_span.clone()) {
                        let (line, _) = sink.locate(&first);
                        sink.error(
                            vrid_span,
                            format!(
                                "VRID {vrid} is used twice for {} on zone `{zone}` (first at line {line})",
                                fam(f)
                            ),
                            "one link carries each VRID once per address family: pick another VRID",
                        );
                    }
                }
            }
            // Known even when the VRID is broken, so that `vip:ZONE` references do not
            // repeat that error.
            if let Some(zone) = &zone {
                names.vips.entry(zone.clone()).or_default().extend(&addrs);
            }
            if let (Some((vrid, _)), Some(zone)) = (vrid, zone) {
                vips.push(Vip {
                    vrid,
                    zone,
                    addresses: addrs,
                });
            }
        }
        groups.push(Group {
            name: gname,
            track,
            vips,
        });
    }
    (settings, groups)
}

/// A VIP must lie in a same-family subnet of its zone on every node.
fn check_vip_subnet(sink: &mut Sink<'_>, nodes: &[NodeInfo], zone: &str, vip: &IpNet, span: &Span) {
    let f = net_family(vip);
    // One error per VIP, naming every node at fault.
    let mut no_family = Vec::new();
    let mut outside = Vec::new();
    for n in nodes {
        let Some(z) = n.zones.get(zone).filter(|z| z.addr_ok) else {
            continue;
        };
        let same_family: Vec<String> = z
            .addresses
            .iter()
            .map(|(a, _)| a)
            .filter(|a| net_family(a) == f)
            .map(|a| a.to_string())
            .collect();
        if same_family.is_empty() {
            no_family.push(format!("`{}`", n.name));
        } else if !z.addresses.iter().any(|(a, _)| a.contains(&vip.addr())) {
            outside.push(format!("`{}` ({})", n.name, same_family.join(", ")));
        }
    }
    if !no_family.is_empty() {
        sink.error(
            span,
            format!(
                "wrong address family: {} VIP {vip} on zone `{zone}`, but {} no {} address there",
                fam(f),
                if no_family.len() == 1 {
                    format!("node {} has", no_family.join(""))
                } else {
                    format!("nodes {} have", no_family.join(" and "))
                },
                fam(f)
            ),
            format!(
                "give the nodes an {} address on `{zone}` or drop this VIP",
                fam(f)
            ),
        );
    }
    if !outside.is_empty() {
        sink.error(
            span,
            format!(
                "VIP {vip} is outside the subnet of zone `{zone}` on {} {}",
                if outside.len() == 1 { "node" } else { "nodes" },
                outside.join(" and ")
            ),
            "a VIP must be in a subnet that both nodes have on its zone; check the VIP and the nodes' addresses",
        );
    }
}

fn check_sync(sink: &mut Sink<'_>, raw: &RawConfig, names: &Names) -> Option<SyncSettings> {
    let s = raw.sync.as_ref()?;
    let span = s.span();
    let s = s.get();
    let port = int_in(
        sink,
        &s.port,
        "sync port",
        1,
        65535,
        DEFAULT_SYNC_PORT.into(),
    );
    let iface = required(sink, &s.interface, &span, "interface", "sync")?;
    let zone = iface.get();
    if !names.zones.contains(zone) {
        let hint = did_you_mean(zone, names.zones.iter().map(String::as_str), || {
            format!(
                "the sync interface is one of the zones: {}",
                names.zone_list()
            )
        });
        sink.error(
            &iface.span(),
            format!("sync interface `{zone}` does not exist"),
            hint,
        );
        return None;
    }
    if names.vips.contains_key(zone) {
        sink.warning(
            &iface.span(),
            format!("sync interface `{zone}` also carries a VIP"),
            "a dedicated sync link without VIPs keeps state sync independent of failover",
        );
    }
    Some(SyncSettings {
        zone: zone.clone(),
        port: port? as u16,
    })
}

fn check_routes(
    sink: &mut Sink<'_>,
    raw: &RawConfig,
    nodes: &[NodeInfo],
    names: &Names,
) -> Vec<RouteDef> {
    let mut routes = Vec::new();
    let mut dests: HashMap<IpNet, Span> = HashMap::new();
    for (ri, r) in raw.route.iter().enumerate() {
        let span = r.span();
        let r = r.get();
        let t = &format!("route[{ri}]");
        let dest =
            required(sink, &r.destination, &span, "destination", t).and_then(
                |d| match parse_network(d.get()) {
                    Ok(n) => {
                        if let Some(first) = dests.insert(n, d.span()) {
                            let (line, _) = sink.locate(&first);
                            sink.warning(
                                &d.span(),
                                format!("a route to {n} is already defined at line {line}"),
                                "the kernel keeps one of them; remove the duplicate",
                            );
                        }
                        Some(n)
                    }
                    Err((m, h)) => {
                        sink.error(&d.span(), m, h);
                        None
                    }
                },
            );
        let gw_raw = required(sink, &r.gateway, &span, "gateway", t);
        let gw = gw_raw.and_then(|g| match parse_plain_addr(g.get()) {
            Ok(a) => Some((a, g.span())),
            Err((m, h)) => {
                sink.error(&g.span(), m, h);
                None
            }
        });
        let zone = required(sink, &r.interface, &span, "interface", t)
            .and_then(|z| zone_ref(sink, names, z, "route interface"));
        let (Some(dest), Some((gw, gw_span)), Some(zone)) = (dest, gw, zone) else {
            continue;
        };
        let (df, gf) = (net_family(&dest), Family::of(&gw));
        if df != gf {
            sink.error(
                &gw_span,
                format!(
                    "wrong address family: {} gateway {gw} for {} destination {dest}",
                    fam(gf),
                    fam(df)
                ),
                "a route's gateway has the family of its destination",
            );
            continue;
        }
        let off_link: Vec<String> = nodes
            .iter()
            .filter(|n| {
                n.zones
                    .get(&zone)
                    .is_some_and(|z| z.addr_ok && !z.addresses.iter().any(|(a, _)| a.contains(&gw)))
            })
            .map(|n| format!("`{}`", n.name))
            .collect();
        if !off_link.is_empty() {
            sink.error(
                &gw_span,
                format!(
                    "gateway {gw} is not on a subnet of zone `{zone}` on {} {}",
                    if off_link.len() == 1 { "node" } else { "nodes" },
                    off_link.join(" and ")
                ),
                "the next hop must be directly reachable on the route's interface",
            );
        }
        routes.push(RouteDef {
            destination: dest,
            gateway: gw,
            zone,
        });
    }
    routes
}

/// A rule endpoint: `any`, `self`, a zone or a network object.
fn endpoint(
    sink: &mut Sink<'_>,
    names: &Names,
    v: &Sp<String>,
    is_to: bool,
) -> Option<EndpointDef> {
    let s = v.get();
    match s.as_str() {
        "any" => return Some(EndpointDef::Any),
        "self" => return Some(EndpointDef::SelfNode),
        _ => {}
    }
    if names.zones.contains(s) {
        return Some(EndpointDef::Zone(s.clone()));
    }
    if names.networks.contains_key(s) {
        return Some(EndpointDef::Network(s.clone()));
    }
    let side = if is_to { "to" } else { "from" };
    let candidates = names
        .zones
        .iter()
        .chain(names.networks.keys())
        .map(String::as_str)
        .chain(["any", "self"]);
    let hint = did_you_mean(s, candidates, || {
        format!(
            "`{side}` is `any`, `self`, a zone ({}) or a network object from `[objects.networks]`",
            names.zone_list()
        )
    });
    let what = if s.starts_with("vip:") {
        "`vip:ZONE` is only valid in NAT rules".to_owned()
    } else {
        format!("unknown zone or network object `{s}`")
    };
    sink.error(&v.span(), what, hint);
    None
}

fn service_ref(sink: &mut Sink<'_>, names: &Names, v: &Sp<String>) -> Option<String> {
    let s = v.get();
    if names.services.contains_key(s) {
        return Some(s.clone());
    }
    let hint = did_you_mean(s, names.services.keys().map(String::as_str), || {
        "define it in `[objects.services]`, e.g. `web = [\"tcp/80\", \"tcp/443\"]`".to_owned()
    });
    sink.error(&v.span(), format!("unknown service object `{s}`"), hint);
    None
}

fn parse_action(sink: &mut Sink<'_>, v: &Sp<String>) -> Option<Action> {
    match v.get().as_str() {
        "accept" => Some(Action::Accept),
        "drop" => Some(Action::Drop),
        "reject" => Some(Action::Reject),
        other => {
            let hint = did_you_mean(other, ["accept", "drop", "reject"], || {
                "use `accept`, `drop` or `reject`".to_owned()
            });
            sink.error(&v.span(), format!("unknown action `{other}`"), hint);
            None
        }
    }
}

fn parse_rate(s: &str) -> Result<RateLimit, (String, String)> {
    let usage = "write `N/second`, `N/minute`, `N/hour` or `N/day` with N >= 1";
    let Some((n, unit)) = s.split_once('/') else {
        return Err((format!("rate limit `{s}` has no unit"), usage.to_owned()));
    };
    let count = match n.trim().parse::<u32>() {
        Ok(c) if c >= 1 => c,
        _ => {
            return Err((
                format!("rate limit count `{n}` is not a positive integer"),
                usage.to_owned(),
            ));
        }
    };
    let per = match unit.trim() {
        "second" => RateUnit::Second,
        "minute" => RateUnit::Minute,
        "hour" => RateUnit::Hour,
        "day" => RateUnit::Day,
        other => {
            return Err((
                format!("unknown rate limit unit `{other}`"),
                did_you_mean(other, ["second", "minute", "hour", "day"], || {
                    usage.to_owned()
                }),
            ));
        }
    };
    Ok(RateLimit { count, per })
}

/// The address families of a network endpoint, as `[IPv4, IPv6]` flags: checked for
/// every rule, so without building a set (that was a quarter of validating 10k rules).
fn endpoint_families(names: &Names, e: &EndpointDef) -> Option<[bool; 2]> {
    let EndpointDef::Network(n) = e else {
        return None;
    };
    let mut has = [false; 2];
    for net in names.networks.get(n)? {
        has[usize::from(net_family(net) == Family::Ipv6)] = true;
        if has == [true, true] {
            break;
        }
    }
    Some(has)
}

/// `IPv4`, `IPv6` or `IPv4/IPv6` from [`endpoint_families`] flags.
fn fam_names(has: [bool; 2]) -> String {
    [Family::Ipv4, Family::Ipv6]
        .into_iter()
        .zip(has)
        .filter(|(_, h)| *h)
        .map(|(f, _)| fam(f))
        .collect::<Vec<_>>()
        .join("/")
}

fn check_policy(sink: &mut Sink<'_>, raw: &RawConfig, names: &Names) -> Option<PolicyDef> {
    let mut policy = PolicyDef {
        default: Action::Drop,
        log_default: false,
        rules: Vec::new(),
    };
    let Some(p) = &raw.policy else {
        return Some(policy);
    };
    let p = p.get();
    let mut ok = true;
    if let Some(d) = &p.default {
        match parse_action(sink, d) {
            Some(a) => policy.default = a,
            None => ok = false,
        }
    }
    if let Some(l) = &p.log_default {
        policy.log_default = *l.get();
    }
    let mut rule_names: HashMap<String, Span> = HashMap::new();
    for (ri, r) in p.rule.iter().enumerate() {
        let span = r.span();
        let r = r.get();
        let t = &format!("policy.rule[{ri}]");
        let name = required(sink, &r.name, &span, "name", t).and_then(|n| {
            if !check_name(sink, n.get(), &n.span(), "rule") {
                return None;
            }
            if let Some(first) = rule_names.insert(n.get().clone(), n.span()) {
                let (line, _) = sink.locate(&first);
                sink.error(
                    &n.span(),
                    format!("duplicate rule name `{}` (first at line {line})", n.get()),
                    "rule names must be unique: logs and diffs refer to rules by name",
                );
            }
            Some(n.get().clone())
        });
        let from =
            required(sink, &r.from, &span, "from", t).and_then(|v| endpoint(sink, names, v, false));
        let to = required(sink, &r.to, &span, "to", t).and_then(|v| endpoint(sink, names, v, true));
        let service = r.service.as_ref().map(|s| service_ref(sink, names, s));
        let action =
            required(sink, &r.action, &span, "action", t).and_then(|a| parse_action(sink, a));
        let rate_limit = r.rate_limit.as_ref().map(|v| match parse_rate(v.get()) {
            Ok(rl) => Some(rl),
            Err((m, h)) => {
                sink.error(&v.span(), m, h);
                None
            }
        });
        if let (Some(EndpointDef::SelfNode), Some(EndpointDef::SelfNode), Some(tv)) =
            (&from, &to, &r.to)
        {
            sink.error(
                &tv.span(),
                format!(
                    "rule `{}` has `from = \"self\"` and `to = \"self\"`",
                    r.name.as_ref().map(|n| n.get().as_str()).unwrap_or(t)
                ),
                "`to = \"self\"` matches traffic to the firewall, `from = \"self\"` its own outgoing connections; its traffic to itself uses loopback, which is always accepted",
            );
            ok = false;
        }
        if let (Some(f), Some(t), Some(tv)) = (&from, &to, &r.to)
            && let (Some(ff), Some(tf)) = (endpoint_families(names, f), endpoint_families(names, t))
            && !(ff[0] && tf[0] || ff[1] && tf[1])
        {
            sink.error(
                &tv.span(),
                format!(
                    "wrong address family: `{}` has only {} networks and `{}` only {}",
                    r.from.as_ref().map(|v| v.get().as_str()).unwrap_or(""),
                    fam_names(ff),
                    tv.get(),
                    fam_names(tf),
                ),
                "this rule can never match: check the objects' address families",
            );
            ok = false;
        }
        match (name, from, to, service, action, rate_limit) {
            (Some(name), Some(from), Some(to), service, Some(action), rate_limit)
                if !matches!(service, Some(None)) && !matches!(rate_limit, Some(None)) =>
            {
                policy.rules.push(RuleDef {
                    name,
                    from,
                    to,
                    service: service.flatten(),
                    action,
                    log: r.log.as_ref().is_some_and(|l| *l.get()),
                    rate_limit: rate_limit.flatten(),
                })
            }
            _ => ok = false,
        }
    }
    ok.then_some(policy)
}

/// `vip:ZONE`: the zone must exist and carry a VIP.
fn vip_ref(sink: &mut Sink<'_>, names: &Names, v: &Sp<String>, zone: &str) -> Option<Vec<IpNet>> {
    if !names.zones.contains(zone) {
        let hint = did_you_mean(zone, names.zones.iter().map(String::as_str), || {
            format!("zones: {}", names.zone_list())
        });
        sink.error(
            &v.span(),
            format!("`vip:{zone}`: `{zone}` is not a zone"),
            hint,
        );
        return None;
    }
    match names.vips.get(zone) {
        Some(v) if !v.is_empty() => Some(v.clone()),
        _ => {
            let with: Vec<&str> = names.vips.keys().map(String::as_str).collect();
            sink.error(
                &v.span(),
                format!("`vip:{zone}`: zone `{zone}` has no VIP"),
                format!(
                    "add a `[[vrrp.group.vip]]` on `{zone}`, or use a zone with a VIP: {}",
                    list(with)
                ),
            );
            None
        }
    }
}

/// A NAT source: a network object or a literal prefix/address.
fn nat_source(
    sink: &mut Sink<'_>,
    names: &Names,
    v: &Sp<String>,
) -> Option<(Vec<IpNet>, Option<String>)> {
    let s = v.get();
    if let Some(n) = names.networks.get(s) {
        return Some((n.clone(), Some(s.clone())));
    }
    match parse_network(s) {
        Ok(n) => Some((vec![n], None)),
        Err(_) => {
            let hint = did_you_mean(s, names.networks.keys().map(String::as_str), || {
                "name a network object from `[objects.networks]` or write a prefix".to_owned()
            });
            sink.error(&v.span(), format!("unknown network object `{s}`"), hint);
            None
        }
    }
}

fn check_nat(sink: &mut Sink<'_>, raw: &RawConfig, names: &Names) -> Vec<NatDef> {
    let mut out = Vec::new();
    let Some(nat) = &raw.nat else {
        return out;
    };
    let mut rule_names: HashMap<String, Span> = HashMap::new();
    for (ri, r) in nat.get().rule.iter().enumerate() {
        let span = r.span();
        let r = r.get();
        let t = &format!("nat.rule[{ri}]");
        let name = required(sink, &r.name, &span, "name", t).and_then(|n| {
            if !check_name(sink, n.get(), &n.span(), "NAT rule") {
                return None;
            }
            if let Some(first) = rule_names.insert(n.get().clone(), n.span()) {
                let (line, _) = sink.locate(&first);
                sink.error(
                    &n.span(),
                    format!(
                        "duplicate NAT rule name `{}` (first at line {line})",
                        n.get()
                    ),
                    "NAT rule names must be unique",
                );
            }
            Some(n.get().clone())
        });
        let Some(kind) = required(sink, &r.kind, &span, "type", t) else {
            continue;
        };
        let kind_s = kind.get().as_str();
        let not_for = |sink: &mut Sink<'_>, v: &Option<Sp<String>>, key: &str, valid: &str| {
            if let Some(v) = v {
                sink.error(
                    &v.span(),
                    format!("`{key}` does not apply to {kind_s} rules"),
                    format!("{kind_s} rules take {valid}"),
                );
            }
        };
        match kind_s {
            "snat" | "masquerade" => {
                let valid = if kind_s == "snat" {
                    "`name`, `type`, `from`, `out` and `to`"
                } else {
                    "`name`, `type`, `from` and `out`"
                };
                not_for(sink, &r.in_zone, "in", valid);
                not_for(sink, &r.destination, "destination", valid);
                not_for(sink, &r.service, "service", valid);
                if let Some(p) = &r.to_port {
                    sink.error(
                        &p.span(),
                        format!("`to_port` does not apply to {kind_s} rules"),
                        format!("{kind_s} rules take {valid}"),
                    );
                }
                let from = required(sink, &r.from, &span, "from", t)
                    .and_then(|v| nat_source(sink, names, v));
                let outz = required(sink, &r.out, &span, "out", t)
                    .and_then(|z| zone_ref(sink, names, z, "`out`"));
                let target = if kind_s == "masquerade" {
                    not_for(sink, &r.to, "to", valid);
                    Some(SnatTarget::Masquerade)
                } else {
                    required(sink, &r.to, &span, "to", t).and_then(|to| {
                        snat_target(sink, names, to, from.as_ref().map(|(n, _)| n.as_slice()))
                    })
                };
                if let (Some(name), Some((from, from_name)), Some(out_zone), Some(to)) =
                    (name, from, outz, target)
                {
                    out.push(NatDef::Snat {
                        name,
                        from,
                        from_name,
                        out: out_zone,
                        to,
                    });
                }
            }
            "dnat" => {
                let valid = "`name`, `type`, `in`, `destination`, `service`, `to` and `to_port`";
                not_for(sink, &r.from, "from", valid);
                not_for(sink, &r.out, "out", valid);
                let inz = required(sink, &r.in_zone, &span, "in", t)
                    .and_then(|z| zone_ref(sink, names, z, "`in`"));
                let to =
                    required(sink, &r.to, &span, "to", t).and_then(|v| dnat_target(sink, names, v));
                let service = r.service.as_ref().map(|s| service_ref(sink, names, s));
                let dest = required(sink, &r.destination, &span, "destination", t).and_then(|d| {
                    let addrs: Vec<IpAddr> = match d.get().strip_prefix("vip:") {
                        Some(zone) => vip_ref(sink, names, d, zone)?
                            .iter()
                            .map(IpNet::addr)
                            .collect(),
                        None => match parse_plain_addr(d.get()) {
                            Ok(a) => vec![a],
                            Err((m, h)) => {
                                sink.error(&d.span(), m, h);
                                return None;
                            }
                        },
                    };
                    let Some(to) = to else { return Some(addrs) };
                    let f = Family::of(&to);
                    let same: Vec<IpAddr> = addrs.iter().copied().filter(|a| Family::of(a) == f).collect();
                    if same.is_empty() {
                        sink.error(
                            &d.span(),
                            format!(
                                "wrong address family: destination `{}` has no {} address for the {} target {to}",
                                d.get(),
                                fam(f),
                                fam(f)
                            ),
                            "DNAT translates within one address family",
                        );
                        return None;
                    }
                    Some(same)
                });
                let to_port = r.to_port.as_ref().and_then(|p| {
                    let n = *p.get();
                    if !(1..=65535).contains(&n) {
                        sink.error(
                            &p.span(),
                            format!("to_port {n} is out of range"),
                            "ports are 1..=65535",
                        );
                        return None;
                    }
                    let port_svc = service
                        .as_ref()
                        .and_then(|s| s.as_ref())
                        .and_then(|s| names.services.get(s));
                    match port_svc {
                        Some(svcs)
                            if svcs.iter().all(|s| {
                                matches!(s, Service::Tcp { .. } | Service::Udp { .. })
                            }) => {}
                        _ => sink.error(
                            &p.span(),
                            "`to_port` needs a `service` of tcp or udp ports",
                            "name the original port(s) with `service`, e.g. a `tcp/8080` object",
                        ),
                    }
                    Some(n as u16)
                });
                if let (Some(name), Some(in_zone), Some(to), Some(destination)) =
                    (name, inz, to, dest)
                    && !matches!(service, Some(None))
                    && (r.to_port.is_none() || to_port.is_some())
                {
                    out.push(NatDef::Dnat {
                        name,
                        in_zone,
                        destination,
                        service: service.flatten(),
                        to,
                        to_name: r
                            .to
                            .as_ref()
                            .filter(|v| names.networks.contains_key(v.get()))
                            .map(|v| v.get().clone()),
                        to_port,
                    });
                }
            }
            other => {
                let hint = did_you_mean(other, ["snat", "dnat", "masquerade"], || {
                    "use `snat`, `dnat` or `masquerade`".to_owned()
                });
                sink.error(&kind.span(), format!("unknown NAT type `{other}`"), hint);
            }
        }
    }
    out
}

/// `to` of an snat rule: `vip:ZONE`, `masquerade` or an address; one address per family
/// of the source prefixes.
fn snat_target(
    sink: &mut Sink<'_>,
    names: &Names,
    to: &Sp<String>,
    from: Option<&[IpNet]>,
) -> Option<SnatTarget> {
    let s = to.get();
    if s == "masquerade" {
        return Some(SnatTarget::Masquerade);
    }
    let candidates: Vec<IpAddr> = match s.strip_prefix("vip:") {
        Some(zone) => vip_ref(sink, names, to, zone)?
            .iter()
            .map(IpNet::addr)
            .collect(),
        None => match parse_plain_addr(s) {
            Ok(a) => vec![a],
            Err((m, h)) => {
                sink.error(&to.span(), m, h);
                return None;
            }
        },
    };
    let from = from?;
    let mut addresses = Vec::new();
    for f in families(from) {
        match candidates.iter().find(|a| Family::of(a) == f) {
            Some(a) => addresses.push(*a),
            None => {
                sink.error(
                    &to.span(),
                    format!(
                        "wrong address family: the source has {} prefixes but `{s}` has no {} address",
                        fam(f),
                        fam(f)
                    ),
                    "SNAT translates within one address family: split the source by family or add a VIP of that family",
                );
                return None;
            }
        }
    }
    Some(SnatTarget::Address { addresses })
}

/// `to` of a dnat rule: a network object holding one host, or an address.
fn dnat_target(sink: &mut Sink<'_>, names: &Names, v: &Sp<String>) -> Option<IpAddr> {
    let s = v.get();
    if let Some(nets) = names.networks.get(s) {
        return match nets.as_slice() {
            [n] if n.prefix_len() == n.max_prefix_len() => Some(n.addr()),
            _ => {
                sink.error(
                    &v.span(),
                    format!("DNAT target `{s}` is not a single host"),
                    "a DNAT target object holds exactly one host address (/32 or /128)",
                );
                None
            }
        };
    }
    match IpAddr::from_str(s) {
        Ok(a) => Some(a),
        Err(_) => {
            let hint = did_you_mean(s, names.networks.keys().map(String::as_str), || {
                "name a network object holding one host, or write an address".to_owned()
            });
            sink.error(&v.span(), format!("unknown network object `{s}`"), hint);
            None
        }
    }
}

fn check_management(
    sink: &mut Sink<'_>,
    raw: &RawConfig,
    names: &Names,
    sync: Option<&SyncSettings>,
) -> ManagementDef {
    let mut m = ManagementDef {
        port: DEFAULT_MANAGEMENT_PORT,
        interfaces: Vec::new(),
        allowed_from: Vec::new(),
        allowed_from_names: Vec::new(),
    };
    if let Some(raw) = &raw.management {
        let raw = raw.get();
        if let Some(p) = int_in(
            sink,
            &raw.port,
            "management port",
            1,
            65535,
            DEFAULT_MANAGEMENT_PORT.into(),
        ) {
            m.port = p as u16;
        }
        for z in &raw.interfaces {
            if let Some(z) = zone_ref(sink, names, z, "management interface")
                && !m.interfaces.contains(&z)
            {
                m.interfaces.push(z);
            }
        }
        for a in &raw.allowed_from {
            if let Some(n) = names.networks.get(a.get()) {
                m.allowed_from.extend(n);
                if !m.allowed_from_names.contains(a.get()) {
                    m.allowed_from_names.push(a.get().clone());
                }
                continue;
            }
            match parse_network(a.get()) {
                Ok(n) => m.allowed_from.push(n),
                Err((msg, hint)) => sink.error(&a.span(), msg, hint),
            }
        }
    }
    if let Some(s) = sync
        && !m.interfaces.contains(&s.zone)
    {
        m.interfaces.push(s.zone.clone());
    }
    m
}
