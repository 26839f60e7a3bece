//! The built-in fail-closed ruleset that init applies before any config is verified:
//! nothing is forwarded; the node accepts only loopback, the management API, VRRP and
//! conntrack sync (on any interface, since no config says which), IPv6 neighbour
//! discovery and ICMP errors. It lives in the same table as the compiled ruleset, so
//! the first verified config replaces it in one transaction.

use std::fmt::Write as _;

use crate::compile::TABLE;

/// Ports the bootstrap ruleset opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootstrapOptions {
    /// TCP port of the management API.
    pub management_port: u16,
    /// UDP port of conntrack sync.
    pub sync_port: u16,
}

impl Default for BootstrapOptions {
    fn default() -> Self {
        BootstrapOptions {
            management_port: 9780,
            sync_port: 3780,
        }
    }
}

/// The bootstrap nft script.
pub fn bootstrap(opts: &BootstrapOptions) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        r#"#!/usr/sbin/nft -f
# twinwall bootstrap ruleset: fail-closed until a verified config is applied.
# No forwarding; only loopback, management (tcp/{mgmt}), VRRP and sync (udp/{sync}).
table inet {TABLE}
delete table inet {TABLE}

table inet {TABLE} {{
    chain input {{
        type filter hook input priority filter; policy drop;
        ct state established,related counter accept comment "established"
        ct state invalid counter drop comment "invalid"
        iifname "lo" counter accept comment "loopback"
        ip daddr 224.0.0.18 meta l4proto 112 counter accept comment "cluster:vrrp"
        ip6 saddr fe80::/10 ip6 daddr ff02::12 meta l4proto 112 counter accept comment "cluster:vrrp"
        udp dport {sync} counter accept comment "cluster:sync"
        tcp dport {mgmt} counter accept comment "cluster:management"
        icmp type {{ destination-unreachable, time-exceeded, parameter-problem }} counter accept comment "icmp-essential"
        icmpv6 type {{ destination-unreachable, packet-too-big, time-exceeded, parameter-problem }} counter accept comment "icmp-essential"
        icmpv6 type {{ nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert }} ip6 hoplimit 255 counter accept comment "ipv6-nd"
        icmpv6 type {{ mld-listener-query, mld-listener-report, mld-listener-done, mld2-listener-report }} ip6 hoplimit 1 counter accept comment "ipv6-mld"
        counter comment "default-drop"
    }}

    chain forward {{
        type filter hook forward priority filter; policy drop;
        counter comment "default-drop"
    }}

    chain output {{
        type filter hook output priority filter; policy drop;
        ct state established,related counter accept comment "established"
        oifname "lo" counter accept comment "loopback"
        ip daddr 224.0.0.18 meta l4proto 112 counter accept comment "cluster:vrrp"
        ip6 daddr ff02::12 meta l4proto 112 counter accept comment "cluster:vrrp"
        udp dport {sync} counter accept comment "cluster:sync"
        icmp type {{ destination-unreachable, time-exceeded, parameter-problem }} counter accept comment "icmp-essential"
        icmpv6 type {{ destination-unreachable, packet-too-big, time-exceeded, parameter-problem }} counter accept comment "icmp-essential"
        icmpv6 type {{ nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert }} ip6 hoplimit 255 counter accept comment "ipv6-nd"
        icmpv6 type {{ mld-listener-query, mld-listener-report, mld-listener-done, mld2-listener-report }} ip6 hoplimit 1 counter accept comment "ipv6-mld"
        counter comment "default-drop"
    }}
}}
"#,
        mgmt = opts.management_port,
        sync = opts.sync_port,
    );
    s
}
