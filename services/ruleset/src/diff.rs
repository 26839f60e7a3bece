//! What an apply would change, by name: policy rules, NAT rules, objects, the default
//! policy and the generated cluster plumbing, each flattened into a [`Unit`] of named
//! fields; [`diff`] compares two views unit by unit and field by field.

use std::collections::BTreeMap;

use serde::Serialize;
use twinwall_config::{Endpoint, NatRule, NodeView, Service, SnatTarget};

/// One named thing of a ruleset with its fields rendered as text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unit {
    /// `rule`, `nat`, `network`, `service`, `policy` or `cluster`.
    pub kind: &'static str,
    /// The unit's name (rule name, object name, `default`, `vrrp`, ...).
    pub name: String,
    /// Field name -> rendered value.
    pub fields: BTreeMap<String, String>,
}

/// Added, removed or changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    /// Only in the new view.
    Added,
    /// Only in the old view.
    Removed,
    /// In both, with different fields.
    Changed,
}

/// A field that differs between the old and the new unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldChange {
    /// Field name.
    pub field: String,
    /// Old value (`None`: the field is new).
    pub old: Option<String>,
    /// New value (`None`: the field is gone).
    pub new: Option<String>,
}

/// One change between two views.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    /// Added / removed / changed.
    pub change: ChangeKind,
    /// Unit kind.
    pub kind: &'static str,
    /// Unit name.
    pub name: String,
    /// For `changed`: the fields that differ. For added/removed: every field.
    pub fields: Vec<FieldChange>,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sign = match self.change {
            ChangeKind::Added => '+',
            ChangeKind::Removed => '-',
            ChangeKind::Changed => '~',
        };
        write!(f, "{sign} {} {}", self.kind, self.name)?;
        if self.change == ChangeKind::Changed {
            for c in &self.fields {
                write!(
                    f,
                    "\n    {}: {} -> {}",
                    c.field,
                    c.old.as_deref().unwrap_or("(none)"),
                    c.new.as_deref().unwrap_or("(none)")
                )?;
            }
        }
        Ok(())
    }
}

fn endpoint(e: &Endpoint) -> String {
    match e {
        Endpoint::Any => "any".into(),
        Endpoint::SelfNode => "self".into(),
        Endpoint::Zone { name, device } => format!("zone {name} ({device})"),
        Endpoint::Network { name, networks } => format!("{name} {}", list(networks)),
    }
}

fn list<T: std::fmt::Display>(v: &[T]) -> String {
    let items: Vec<String> = v.iter().map(|x| x.to_string()).collect();
    format!("[{}]", items.join(", "))
}

fn service(s: &Service) -> String {
    let ports = |p: &str, a: u16, b: u16| {
        if a == b {
            format!("{p}/{a}")
        } else {
            format!("{p}/{a}-{b}")
        }
    };
    match s {
        Service::Tcp { from, to } => ports("tcp", *from, *to),
        Service::Udp { from, to } => ports("udp", *from, *to),
        Service::Icmp { r#type } => r#type
            .as_ref()
            .map_or("icmp".into(), |t| format!("icmp/{t}")),
        Service::Icmpv6 { r#type } => r#type
            .as_ref()
            .map_or("icmpv6".into(), |t| format!("icmpv6/{t}")),
    }
}

fn services(name: Option<&str>, s: &[Service]) -> String {
    let l: Vec<String> = s.iter().map(service).collect();
    let l = if l.is_empty() {
        "any".to_string()
    } else {
        format!("[{}]", l.join(", "))
    };
    match name {
        Some(n) => format!("{n} {l}"),
        None => l,
    }
}

fn unit(kind: &'static str, name: &str, fields: &[(&str, String)]) -> Unit {
    Unit {
        kind,
        name: name.to_string(),
        fields: fields
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
    }
}

/// Flattens a view into its named units.
pub fn units(v: &NodeView) -> Vec<Unit> {
    let mut out = Vec::new();
    out.push(unit(
        "policy",
        "default",
        &[
            ("action", format!("{:?}", v.policy.default).to_lowercase()),
            ("log", v.policy.log_default.to_string()),
        ],
    ));
    let mut prev = "(first)".to_string();
    for r in &v.policy.rules {
        let mut f = vec![
            ("from", endpoint(&r.from)),
            ("to", endpoint(&r.to)),
            ("service", services(r.service_name.as_deref(), &r.services)),
            ("action", format!("{:?}", r.action).to_lowercase()),
            ("log", r.log.to_string()),
            ("after", prev.clone()),
        ];
        if let Some(rl) = r.rate_limit {
            f.push((
                "rate_limit",
                format!("{}/{}", rl.count, format!("{:?}", rl.per).to_lowercase()),
            ));
        }
        out.push(unit("rule", &r.name, &f));
        prev = r.name.clone();
    }
    for n in &v.nat {
        let u = match n {
            NatRule::Snat {
                name,
                from,
                from_name,
                out_device,
                out: zone,
                to,
            } => unit(
                "nat",
                name,
                &[
                    ("type", "snat".into()),
                    (
                        "from",
                        format!(
                            "{}{}",
                            from_name
                                .as_deref()
                                .map_or(String::new(), |n| format!("{n} ")),
                            list(from)
                        ),
                    ),
                    ("out", format!("{zone} ({out_device})")),
                    (
                        "to",
                        match to {
                            SnatTarget::Masquerade => "masquerade".into(),
                            SnatTarget::Address { addresses } => list(addresses),
                        },
                    ),
                ],
            ),
            NatRule::Dnat {
                name,
                r#in,
                in_device,
                destination,
                services: s,
                service_name,
                to,
                to_name: _,
                to_port,
            } => unit(
                "nat",
                name,
                &[
                    ("type", "dnat".into()),
                    ("in", format!("{in} ({in_device})", r#in = r#in)),
                    ("destination", list(destination)),
                    ("service", services(service_name.as_deref(), s)),
                    ("to", to.to_string()),
                    (
                        "to_port",
                        to_port.map_or("(same)".into(), |p| p.to_string()),
                    ),
                ],
            ),
        };
        out.push(u);
    }
    for (name, nets) in &v.objects.networks {
        out.push(unit("network", name, &[("networks", list(nets))]));
    }
    for (name, s) in &v.objects.services {
        out.push(unit("service", name, &[("services", services(None, s))]));
    }
    let mut vrrp = Vec::new();
    for g in &v.vrrp.groups {
        for r in &g.routers {
            vrrp.push((
                format!("{} vrid {} {:?}", r.device, r.vrid, r.family).to_lowercase(),
                list(&r.addresses),
            ));
        }
    }
    let vrrp_fields: Vec<(&str, String)> = vrrp
        .iter()
        .map(|(k, val)| (k.as_str(), val.clone()))
        .collect();
    out.push(unit("cluster", "vrrp", &vrrp_fields));
    if let Some(s) = &v.sync {
        out.push(unit(
            "cluster",
            "sync",
            &[
                ("device", s.device.clone()),
                ("local", s.local.to_string()),
                ("peer", s.peer.to_string()),
                ("port", s.port.to_string()),
            ],
        ));
    }
    out.push(unit(
        "cluster",
        "management",
        &[
            ("port", v.management.port.to_string()),
            ("interfaces", list(&v.management.interfaces)),
            ("allowed_from", list(&v.management.allowed_from)),
        ],
    ));
    out
}

/// The changes from `old` to `new`, by unit: removed and changed in the old order, then
/// added in the new order.
pub fn diff(old: &NodeView, new: &NodeView) -> Vec<Change> {
    let (a, b) = (units(old), units(new));
    let key = |u: &Unit| (u.kind, u.name.clone());
    let bmap: BTreeMap<_, &Unit> = b.iter().map(|u| (key(u), u)).collect();
    let amap: BTreeMap<_, &Unit> = a.iter().map(|u| (key(u), u)).collect();
    let all_fields = |u: &Unit, added: bool| -> Vec<FieldChange> {
        u.fields
            .iter()
            .map(|(k, v)| FieldChange {
                field: k.clone(),
                old: (!added).then(|| v.clone()),
                new: added.then(|| v.clone()),
            })
            .collect()
    };
    let mut out = Vec::new();
    for u in &a {
        match bmap.get(&key(u)) {
            None => out.push(Change {
                change: ChangeKind::Removed,
                kind: u.kind,
                name: u.name.clone(),
                fields: all_fields(u, false),
            }),
            Some(n) if n.fields != u.fields => {
                let mut names: Vec<&String> = u.fields.keys().chain(n.fields.keys()).collect();
                names.sort();
                names.dedup();
                let fields = names
                    .into_iter()
                    .filter(|f| u.fields.get(*f) != n.fields.get(*f))
                    .map(|f| FieldChange {
                        field: f.clone(),
                        old: u.fields.get(f).cloned(),
                        new: n.fields.get(f).cloned(),
                    })
                    .collect();
                out.push(Change {
                    change: ChangeKind::Changed,
                    kind: u.kind,
                    name: u.name.clone(),
                    fields,
                });
            }
            Some(_) => {}
        }
    }
    for u in &b {
        if !amap.contains_key(&key(u)) {
            out.push(Change {
                change: ChangeKind::Added,
                kind: u.kind,
                name: u.name.clone(),
                fields: all_fields(u, true),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;

    #[test]
    fn identical_views_have_no_changes() {
        let v = fixtures::seed_pair("lj-fw-1");
        assert!(diff(&v, &v).is_empty());
    }

    #[test]
    fn added_removed_and_changed_fields_by_name() {
        let old = fixtures::seed_pair("lj-fw-1");
        let mut new = old.clone();
        new.policy.rules[1].services.push(Service::Tcp {
            from: 8443,
            to: 8443,
        });
        new.policy.rules[1].log = true;
        let removed = new.policy.rules.remove(2);
        let mut added = removed.clone();
        added.name = "admin-ssh-v2".into();
        new.policy.rules.push(added);
        let d = diff(&old, &new);
        let summary: Vec<String> = d
            .iter()
            .map(|c| format!("{:?} {} {}", c.change, c.kind, c.name))
            .collect();
        assert_eq!(
            summary,
            [
                "Changed rule web-from-internet",
                "Removed rule admin-ssh-to-firewall",
                "Added rule admin-ssh-v2"
            ]
        );
        let fields: Vec<&str> = d[0].fields.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(fields, ["log", "service"]);
        assert_eq!(
            d[0].fields[1].new.as_deref(),
            Some("web [tcp/80, tcp/443, tcp/8443]")
        );
        assert!(d[0].to_string().contains("log: false -> true"));
    }
}
