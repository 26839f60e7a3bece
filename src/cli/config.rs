//! `twinwall config ...`: check cluster configs, show a node's resolved view, print the
//! JSON Schema.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Subcommand;
use twinwall_config::{Action, Endpoint, Family, NatRule, NodeView, RateUnit, Service, SnatTarget};

use super::Reported;

/// Config commands.
#[derive(Debug, Subcommand)]
pub enum ConfigCmd {
    /// Validate cluster configs; prints every error of every file.
    Check {
        /// Config files to check.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Show one node's resolved view of a cluster config.
    Show {
        /// The cluster config.
        file: PathBuf,
        /// The node (a key of `[nodes]`).
        #[arg(long)]
        node: String,
        /// Print the view as JSON (the contract the services consume).
        #[arg(long)]
        json: bool,
    },
    /// Print the JSON Schema of the config file (for taplo / Even Better TOML).
    Schema,
}

/// Runs a config command.
pub fn run(c: ConfigCmd) -> anyhow::Result<()> {
    match c {
        ConfigCmd::Check { files } => check(&files),
        ConfigCmd::Show { file, node, json } => show(&file, &node, json),
        ConfigCmd::Schema => {
            let schema = serde_json::to_string_pretty(&twinwall_config::json_schema())?;
            println!("{schema}");
            Ok(())
        }
    }
}

fn check(files: &[PathBuf]) -> anyhow::Result<()> {
    let mut failed = 0usize;
    for f in files {
        match twinwall_config::load(f) {
            Ok(cfg) => {
                for w in cfg.warnings().all() {
                    eprintln!("{w}");
                }
                println!(
                    "{}: OK (cluster {}, version {}, nodes {})",
                    f.display(),
                    cfg.cluster_name(),
                    cfg.version(),
                    cfg.node_names().join(", ")
                );
            }
            Err(diags) => {
                eprintln!("{diags}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        let n = files.len();
        eprintln!("twinwall: {failed} of {n} config file(s) have errors");
        return Err(Reported(format!("{failed} of {n} config file(s) have errors")).into());
    }
    Ok(())
}

fn show(file: &std::path::Path, node: &str, json: bool) -> anyhow::Result<()> {
    let cfg = match twinwall_config::load(file) {
        Ok(cfg) => cfg,
        Err(diags) => {
            eprintln!("{diags}");
            return Err(Reported(format!("{} has errors", file.display())).into());
        }
    };
    let view = cfg.node_view(node)?;
    if json {
        let out = serde_json::to_string_pretty(&view).context("serialising the node view")?;
        println!("{out}");
    } else {
        print!("{}", summary(&view));
    }
    Ok(())
}

fn services(s: &[Service]) -> String {
    if s.is_empty() {
        return "any".to_owned();
    }
    s.iter()
        .map(|s| match s {
            Service::Tcp { from, to } | Service::Udp { from, to } => {
                let p = if matches!(s, Service::Tcp { .. }) {
                    "tcp"
                } else {
                    "udp"
                };
                if from == to {
                    format!("{p}/{from}")
                } else {
                    format!("{p}/{from}-{to}")
                }
            }
            Service::Icmp { r#type } => r#type
                .as_ref()
                .map_or("icmp".into(), |t| format!("icmp/{t}")),
            Service::Icmpv6 { r#type } => r#type
                .as_ref()
                .map_or("icmpv6".into(), |t| format!("icmpv6/{t}")),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn endpoint(e: &Endpoint) -> String {
    match e {
        Endpoint::Any => "any".into(),
        Endpoint::SelfNode => "self".into(),
        Endpoint::Zone { name, device } => format!("{name} ({device})"),
        Endpoint::Network { name, networks } => format!(
            "{name} ({})",
            networks
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(" ")
        ),
    }
}

fn family(f: Family) -> &'static str {
    match f {
        Family::Ipv4 => "ipv4",
        Family::Ipv6 => "ipv6",
    }
}

fn action(a: Action) -> &'static str {
    match a {
        Action::Accept => "accept",
        Action::Drop => "drop",
        Action::Reject => "reject",
    }
}

fn unit(u: RateUnit) -> &'static str {
    match u {
        RateUnit::Second => "second",
        RateUnit::Minute => "minute",
        RateUnit::Hour => "hour",
        RateUnit::Day => "day",
    }
}

fn join<T: std::fmt::Display>(v: &[T]) -> String {
    v.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The human summary of `config show`.
fn summary(v: &NodeView) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "node {} of cluster {} (version {}), priority {}; peer {} (priority {})",
        v.node, v.cluster, v.version, v.priority, v.peer.node, v.peer.priority
    );
    let _ = writeln!(s, "interfaces:");
    for i in v.interfaces.values() {
        let _ = writeln!(s, "  {:<10} {:<8} {}", i.name, i.device, join(&i.addresses));
    }
    let _ = writeln!(
        s,
        "vrrp: advert {} ms, preempt {} (delay {} ms), accept_mode {}, garp {} x {} ms",
        v.vrrp.advert_interval_ms,
        v.vrrp.preempt,
        v.vrrp.preempt_delay_ms,
        v.vrrp.accept_mode,
        v.vrrp.garp_count,
        v.vrrp.garp_interval_ms
    );
    for g in &v.vrrp.groups {
        let _ = writeln!(s, "  group {} (track {})", g.name, g.track.join(", "));
        for r in &g.routers {
            let _ = writeln!(
                s,
                "    vrid {:<3} {} on {} ({}): {}",
                r.vrid,
                family(r.family),
                r.interface,
                r.device,
                join(&r.addresses)
            );
        }
    }
    match &v.sync {
        Some(y) => {
            let _ = writeln!(
                s,
                "sync: {} ({}) {} <-> {} port {}",
                y.interface, y.device, y.local, y.peer, y.port
            );
        }
        None => {
            let _ = writeln!(s, "sync: none");
        }
    }
    let _ = writeln!(s, "routes:");
    for r in &v.routes {
        let _ = writeln!(
            s,
            "  {} via {} dev {}{}",
            r.destination,
            r.gateway,
            r.device,
            if r.follows_vip { " (follows VIP)" } else { "" }
        );
    }
    let _ = writeln!(s, "conntrack ignore: {}", join(&v.conntrack_ignore));
    let _ = writeln!(
        s,
        "objects: {} networks, {} services",
        v.objects.networks.len(),
        v.objects.services.len()
    );
    let _ = writeln!(
        s,
        "policy: default {}{}, {} rules",
        action(v.policy.default),
        if v.policy.log_default {
            " (logged)"
        } else {
            ""
        },
        v.policy.rules.len()
    );
    for r in &v.policy.rules {
        let _ = writeln!(
            s,
            "  {}: {} -> {} [{}] {}{}{}",
            r.name,
            endpoint(&r.from),
            endpoint(&r.to),
            services(&r.services),
            action(r.action),
            if r.log { " log" } else { "" },
            r.rate_limit
                .map(|l| format!(" limit {}/{}", l.count, unit(l.per)))
                .unwrap_or_default()
        );
    }
    let _ = writeln!(s, "nat:");
    for n in &v.nat {
        match n {
            NatRule::Snat {
                name,
                from,
                out_device,
                to,
                ..
            } => {
                let to = match to {
                    SnatTarget::Address { addresses } => join(addresses),
                    SnatTarget::Masquerade => "masquerade".into(),
                };
                let _ = writeln!(s, "  {name}: snat {} out {out_device} -> {to}", join(from));
            }
            NatRule::Dnat {
                name,
                in_device,
                destination,
                services: svc,
                to,
                to_port,
                ..
            } => {
                let _ = writeln!(
                    s,
                    "  {name}: dnat in {in_device} {} [{}] -> {to}{}",
                    join(destination),
                    services(svc),
                    to_port.map(|p| format!(":{p}")).unwrap_or_default()
                );
            }
        }
    }
    let _ = writeln!(
        s,
        "management: port {} on {} from {}",
        v.management.port,
        v.management.interfaces.join(", "),
        if v.management.allowed_from.is_empty() {
            "the zones' subnets".to_owned()
        } else {
            join(&v.management.allowed_from)
        }
    );
    s
}
