//! The raw TOML model: serde types that mirror the file one to one, with source spans.
//!
//! Every table denies unknown keys. Nearly every key is optional at this level so that a
//! missing key is reported by validation (with the table's position) instead of aborting
//! deserialisation; values stay strings and wide integers so that range and syntax errors
//! get our own messages. The JSON Schema of the config is generated from these types, so
//! their doc comments are what editors show.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_spanned::Spanned;

/// A value with its byte span in the source (a thin wrapper so that the schema of `Sp<T>`
/// is the schema of `T`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(transparent)]
pub struct Sp<T>(pub Spanned<T>);

impl<T> Sp<T> {
    /// The value.
    pub fn get(&self) -> &T {
        self.0.get_ref()
    }
    /// Its byte span in the source.
    pub fn span(&self) -> Range<usize> {
        self.0.span()
    }
}

impl<T: JsonSchema> JsonSchema for Sp<T> {
    fn inline_schema() -> bool {
        T::inline_schema()
    }
    fn schema_name() -> Cow<'static, str> {
        T::schema_name()
    }
    fn schema_id() -> Cow<'static, str> {
        T::schema_id()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        T::json_schema(generator)
    }
}

/// One string or an array of strings (`address = "a/p"` or `address = ["a/p", ...]`).
///
/// Hand-written instead of `#[serde(untagged)]` so that a wrong type gets a precise
/// message at the offending element rather than "did not match any variant".
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OneOrMany(pub Vec<Sp<String>>);

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or an array of strings")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<OneOrMany, E> {
                // The span of a lone string is the span of the key's value; the caller
                // wraps us in `Sp`, so use an empty span here and let validation fall back
                // to the outer span.
                Ok(OneOrMany(vec![Sp(Spanned::new(0..0, v.to_owned()))]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<OneOrMany, A::Error> {
                let mut out = Vec::new();
                while let Some(item) = seq.next_element::<Sp<String>>()? {
                    out.push(item);
                }
                Ok(OneOrMany(out))
            }
        }
        d.deserialize_any(V)
    }
}

impl OneOrMany {
    /// The entries, each with its span; a lone string gets `outer` (the key's value span).
    pub fn items(&self, outer: &Range<usize>) -> Vec<(String, Range<usize>)> {
        self.0
            .iter()
            .map(|s| {
                let span = s.span();
                let span = if span.is_empty() { outer.clone() } else { span };
                (s.get().clone(), span)
            })
            .collect()
    }
}

impl JsonSchema for OneOrMany {
    fn schema_name() -> Cow<'static, str> {
        "OneOrMany".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "anyOf": [
                { "type": "string" },
                { "type": "array", "items": { "type": "string" }, "minItems": 1 }
            ]
        })
    }
}

/// A twinwall cluster config: both nodes of an HA firewall pair in one file.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "twinwall cluster config")]
pub struct RawConfig {
    /// The cluster's identity and config version.
    #[schemars(required)]
    pub cluster: Option<Sp<RawCluster>>,
    /// The two nodes of the pair, by node name.
    #[serde(default)]
    #[schemars(required, extend("minProperties" = 2, "maxProperties" = 2))]
    pub nodes: BTreeMap<Sp<String>, Sp<RawNode>>,
    /// VRRPv3 settings, sync groups and virtual IPs.
    pub vrrp: Option<Sp<RawVrrp>>,
    /// Conntrack state sync over a dedicated link.
    pub sync: Option<Sp<RawSync>>,
    /// Static routes.
    #[serde(default)]
    pub route: Vec<Sp<RawRoute>>,
    /// Named networks and services that rules refer to.
    pub objects: Option<Sp<RawObjects>>,
    /// The filter policy.
    pub policy: Option<Sp<RawPolicy>>,
    /// NAT rules.
    pub nat: Option<Sp<RawNat>>,
    /// Management API access.
    pub management: Option<Sp<RawManagement>>,
}

/// `[cluster]`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    /// Cluster name (bundles and status show it).
    #[schemars(required)]
    pub name: Option<Sp<String>>,
    /// Config version, monotonic: an appliance refuses a bundle whose version is not
    /// greater than the one it runs.
    #[schemars(range(min = 1))]
    #[schemars(required)]
    pub version: Option<Sp<i64>>,
}

/// `[nodes.NAME]`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawNode {
    /// VRRP priority, 1..=254; the two nodes must differ.
    #[schemars(range(min = 1, max = 254))]
    #[schemars(required)]
    pub priority: Option<Sp<i64>>,
    /// The node's interfaces by zone name (`outside`, `inside`, `sync`, ...). Both nodes
    /// must have the same zones.
    #[serde(default)]
    #[schemars(required, extend("minProperties" = 1))]
    pub interfaces: BTreeMap<Sp<String>, Sp<RawInterface>>,
}

/// `interfaces.ZONE = { device, address }`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawInterface {
    /// Kernel device name, e.g. `eth0`.
    #[schemars(required)]
    pub device: Option<Sp<String>>,
    /// The node's own address(es) with prefix length: `"a/p"` or `["a/p", ...]`.
    #[schemars(required)]
    pub address: Option<Sp<OneOrMany>>,
}

/// `[vrrp]`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawVrrp {
    /// Advertisement interval in ms: a multiple of 10 in 10..=40950 (VRRPv3 centiseconds).
    /// Default 1000.
    #[schemars(range(min = 10, max = 40950), extend("multipleOf" = 10))]
    pub advert_interval_ms: Option<Sp<i64>>,
    /// A higher-priority node takes mastership back from a lower-priority master.
    /// Default true.
    pub preempt: Option<Sp<bool>>,
    /// After start, wait this long before preempting a running master. Default 0.
    #[schemars(range(min = 0))]
    pub preempt_delay_ms: Option<Sp<i64>>,
    /// RFC 5798 Accept_Mode: the master accepts packets addressed to the VIPs.
    /// Default false.
    pub accept_mode: Option<Sp<bool>>,
    /// Gratuitous ARPs / unsolicited neighbour advertisements sent on becoming master.
    /// Default 5.
    #[schemars(range(min = 0, max = 100))]
    pub garp_count: Option<Sp<i64>>,
    /// Interval between those in ms. Default 100.
    #[schemars(range(min = 0, max = 60000))]
    pub garp_interval_ms: Option<Sp<i64>>,
    /// Sync groups: all VIPs of a group live on the same node.
    #[serde(default)]
    pub group: Vec<Sp<RawGroup>>,
}

/// `[[vrrp.group]]`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawGroup {
    /// Group name.
    #[schemars(required)]
    pub name: Option<Sp<String>>,
    /// Zones whose carrier loss puts the whole group in FAULT.
    #[serde(default)]
    pub track: Vec<Sp<String>>,
    /// The group's virtual IPs.
    #[serde(default)]
    pub vip: Vec<Sp<RawVip>>,
}

/// `[[vrrp.group.vip]]`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawVip {
    /// Virtual router id, 1..=255; unique per zone and address family.
    #[schemars(range(min = 1, max = 255))]
    #[schemars(required)]
    pub vrid: Option<Sp<i64>>,
    /// The zone the VIP lives on.
    #[schemars(required)]
    pub interface: Option<Sp<String>>,
    /// Virtual address(es) with prefix length, one or both families.
    #[schemars(required)]
    pub address: Option<Sp<OneOrMany>>,
}

/// `[sync]`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSync {
    /// Zone of the dedicated state-sync link.
    #[schemars(required)]
    pub interface: Option<Sp<String>>,
    /// UDP port of the sync protocol. Default 3780.
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<Sp<i64>>,
}

/// `[[route]]`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// Destination prefix, e.g. `0.0.0.0/0`.
    #[schemars(required)]
    pub destination: Option<Sp<String>>,
    /// Next hop address, same family as the destination.
    #[schemars(required)]
    pub gateway: Option<Sp<String>>,
    /// Zone the next hop is reached through.
    #[schemars(required)]
    pub interface: Option<Sp<String>>,
}

/// `[objects]`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawObjects {
    /// Named networks: name = "prefix" or ["prefix", ...] (a bare address is a host).
    #[serde(default)]
    pub networks: BTreeMap<Sp<String>, Sp<OneOrMany>>,
    /// Named services: name = "tcp/80" or ["tcp/80", "udp/1000-2000", "icmp/echo-request",
    /// "icmpv6", ...].
    #[serde(default)]
    pub services: BTreeMap<Sp<String>, Sp<OneOrMany>>,
}

/// `[policy]`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    /// What happens to traffic no rule accepts: accept, drop or reject. Default drop.
    #[schemars(extend("enum" = ["accept", "drop", "reject"]))]
    pub default: Option<Sp<String>>,
    /// Log what falls to the default. Default false.
    pub log_default: Option<Sp<bool>>,
    /// Filter rules, first match wins.
    #[serde(default)]
    pub rule: Vec<Sp<RawRule>>,
}

/// `[[policy.rule]]`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    /// Unique rule name.
    #[schemars(required)]
    pub name: Option<Sp<String>>,
    /// Source: "any", a zone or a network object.
    #[schemars(required)]
    pub from: Option<Sp<String>>,
    /// Destination: "any", "self" (the firewall), a zone or a network object.
    #[schemars(required)]
    pub to: Option<Sp<String>>,
    /// A service object; absent means any protocol.
    pub service: Option<Sp<String>>,
    /// accept, drop or reject.
    #[schemars(extend("enum" = ["accept", "drop", "reject"]))]
    #[schemars(required)]
    pub action: Option<Sp<String>>,
    /// Log matches. Default false.
    pub log: Option<Sp<bool>>,
    /// Per-source limit of new connections: "N/second", "N/minute", "N/hour" or "N/day".
    pub rate_limit: Option<Sp<String>>,
}

/// `[nat]`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawNat {
    /// NAT rules in order.
    #[serde(default)]
    pub rule: Vec<Sp<RawNatRule>>,
}

/// `[[nat.rule]]`: one table for all types; validation checks which keys a type takes.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawNatRule {
    /// Unique NAT rule name.
    #[schemars(required)]
    pub name: Option<Sp<String>>,
    /// snat, dnat or masquerade.
    #[serde(rename = "type")]
    #[schemars(extend("enum" = ["snat", "dnat", "masquerade"]))]
    #[schemars(required)]
    pub kind: Option<Sp<String>>,
    /// snat/masquerade: source network object or prefix.
    pub from: Option<Sp<String>>,
    /// snat/masquerade: outgoing zone.
    pub out: Option<Sp<String>>,
    /// snat: "vip:ZONE", an address or "masquerade"; dnat: a network object or address.
    pub to: Option<Sp<String>>,
    /// dnat: incoming zone.
    #[serde(rename = "in")]
    pub in_zone: Option<Sp<String>>,
    /// dnat: original destination, "vip:ZONE" or an address.
    pub destination: Option<Sp<String>>,
    /// dnat: service object matched; absent means any.
    pub service: Option<Sp<String>>,
    /// dnat: translated destination port.
    #[schemars(range(min = 1, max = 65535))]
    pub to_port: Option<Sp<i64>>,
}

/// `[management]`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawManagement {
    /// TCP port of the management API. Default 9780.
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<Sp<i64>>,
    /// Zones the API listens on (the sync zone is always included).
    #[serde(default)]
    pub interfaces: Vec<Sp<String>>,
    /// Source prefixes allowed to reach it (empty: the zones' own subnets).
    #[serde(default)]
    pub allowed_from: Vec<Sp<String>>,
}
