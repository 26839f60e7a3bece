//! The appliance's service set, derived from the trust decision: ruleset first (one-shot,
//! before forwarding is enabled), then sync, vrrp and mgmt, each a child process of the
//! same binary. Fail-closed runs only the bootstrap ruleset and management.
//!
//! Start order is a dependency map ([`start_after`]), not a line: sync starts beside the
//! ruleset one-shot, VRRP waits for both, management waits only for the ruleset.
//!
//! Seam for new services: add the name to [`NORMAL`] (start order), its command line to
//! [`spec`], and, once the command exists in the binary, to [`DEFAULT`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::service::{Kind, ServiceSpec};

/// Everything the service command lines need.
#[derive(Debug, Clone)]
pub struct ServiceContext {
    /// The twinwall binary the services run (`/proc/self/exe` on the appliance).
    pub exe: PathBuf,
    /// The verified cluster config; `None` means fail-closed.
    pub config: Option<PathBuf>,
    /// This node.
    pub node: Option<String>,
    /// Run directory (control sockets).
    pub run_dir: PathBuf,
    /// Conntrack sync key.
    pub sync_key: Option<PathBuf>,
}

fn s(x: &str) -> String {
    x.to_string()
}

fn p(x: &Path) -> String {
    x.display().to_string()
}

/// Every service init knows, in start order (`twinwall.services=` / `--services` may name
/// any of them).
pub const NORMAL: [&str; 4] = ["ruleset", "sync", "vrrp", "mgmt"];

/// The services started when no explicit set is given: all of them.
pub const DEFAULT: [&str; 4] = NORMAL;

/// What each service of the appliance waits for before it starts (the supervisor's
/// [`crate::supervisor::SupervisorConfig::start_after`]); names missing from a reduced set
/// are not waited for.
///
/// * `ruleset`: nothing — it is the first thing that must be in force.
/// * `sync`: nothing. It needs no ruleset to open conntrack and bind its UDP port, its
///   messages are authenticated with the cluster's sync key, and the bootstrap ruleset
///   opens that port to everyone anyway; starting it beside the ruleset takes its
///   start-up off the critical path.
/// * `vrrp`: `ruleset` and `sync`. No VIP may appear before the ruleset is in force, and
///   sync must be ready to join VRRP's commit handshake before VRRP can become master.
/// * `mgmt`: `ruleset` only — no management listener before the ruleset says who may
///   reach it; it needs neither VRRP nor sync to answer.
pub fn start_after() -> BTreeMap<String, Vec<String>> {
    [
        ("ruleset", &[][..]),
        ("sync", &[]),
        ("vrrp", &["ruleset", "sync"]),
        ("mgmt", &["ruleset"]),
    ]
    .into_iter()
    .map(|(k, v)| (s(k), v.iter().map(|x| s(x)).collect()))
    .collect()
}

/// The spec of one named service, if the name is known.
pub fn spec(ctx: &ServiceContext, name: &str) -> Option<ServiceSpec> {
    let run = p(&ctx.run_dir);
    let (kind, args) = match (&ctx.config, &ctx.node) {
        (Some(config), Some(node)) => {
            let config = p(config);
            match name {
                "ruleset" => (
                    Kind::Oneshot,
                    vec![s("ruleset"), s("apply"), config, s("--node"), node.clone()],
                ),
                "sync" => {
                    let mut a = vec![
                        s("sync"),
                        s("--config"),
                        config,
                        s("--node"),
                        node.clone(),
                        s("--run-dir"),
                        run,
                    ];
                    if let Some(k) = &ctx.sync_key {
                        a.extend([s("--sync-key"), p(k)]);
                    }
                    (Kind::Daemon, a)
                }
                "vrrp" | "mgmt" => (
                    Kind::Daemon,
                    vec![
                        s(name),
                        s("--config"),
                        config,
                        s("--node"),
                        node.clone(),
                        s("--run-dir"),
                        run,
                    ],
                ),
                _ => return None,
            }
        }
        _ => match name {
            "ruleset" => (Kind::Oneshot, vec![s("ruleset"), s("bootstrap")]),
            "mgmt" => (
                Kind::Daemon,
                vec![s("mgmt"), s("--fail-closed"), s("--run-dir"), run],
            ),
            _ => return None,
        },
    };
    Some(ServiceSpec {
        name: s(name),
        program: ctx.exe.clone(),
        args,
        kind,
    })
}

/// The service set: [`DEFAULT`] (or its fail-closed counterpart), or exactly the known
/// services named in `only` (kept in start order). Unknown names in `only` are errors.
pub fn service_set(
    ctx: &ServiceContext,
    only: Option<&[String]>,
) -> Result<Vec<ServiceSpec>, String> {
    if let Some(bad) = only
        .into_iter()
        .flatten()
        .find(|n| !NORMAL.contains(&n.as_str()))
    {
        return Err(format!(
            "unknown service `{bad}` (known: {})",
            NORMAL.join(", ")
        ));
    }
    Ok(NORMAL
        .iter()
        .filter(|n| match only {
            Some(o) => o.iter().any(|x| x == *n),
            None => DEFAULT.contains(n),
        })
        .filter_map(|n| spec(ctx, n))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(config: bool) -> ServiceContext {
        ServiceContext {
            exe: "/proc/self/exe".into(),
            config: config.then(|| "/run/twinwall/cluster.toml".into()),
            node: Some("fw-a".into()),
            run_dir: "/run/twinwall".into(),
            sync_key: Some("/run/twinwall/config/sync.key".into()),
        }
    }

    #[test]
    fn normal_set_starts_ruleset_first_and_passes_the_config() {
        let set = service_set(&ctx(true), None).unwrap();
        let names: Vec<_> = set.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["ruleset", "sync", "vrrp", "mgmt"]);
        let all: Vec<String> = NORMAL.iter().map(|s| s.to_string()).collect();
        let set = service_set(&ctx(true), Some(&all)).unwrap();
        let names: Vec<_> = set.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["ruleset", "sync", "vrrp", "mgmt"]);
        assert_eq!(set[0].kind, Kind::Oneshot);
        assert_eq!(
            set[0].args,
            [
                "ruleset",
                "apply",
                "/run/twinwall/cluster.toml",
                "--node",
                "fw-a"
            ]
        );
        assert!(set[1].args.ends_with(&[
            "--sync-key".to_string(),
            "/run/twinwall/config/sync.key".to_string()
        ]));
    }

    #[test]
    fn vrrp_waits_for_ruleset_and_sync_and_management_for_the_ruleset() {
        let m = start_after();
        assert_eq!(m["ruleset"], Vec::<String>::new());
        assert_eq!(m["sync"], Vec::<String>::new());
        assert_eq!(m["vrrp"], ["ruleset", "sync"]);
        assert_eq!(m["mgmt"], ["ruleset"]);
        // Every known service has an entry, so none falls back to the sequential rule.
        assert!(NORMAL.iter().all(|n| m.contains_key(*n)));
    }

    #[test]
    fn fail_closed_runs_bootstrap_and_management_only() {
        let set = service_set(&ctx(false), None).unwrap();
        let names: Vec<_> = set.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["ruleset", "mgmt"]);
        let all: Vec<String> = NORMAL.iter().map(|s| s.to_string()).collect();
        let set = service_set(&ctx(false), Some(&all)).unwrap();
        let names: Vec<_> = set.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["ruleset", "mgmt"]);
        assert_eq!(set[0].args, ["ruleset", "bootstrap"]);
    }

    #[test]
    fn a_filter_keeps_start_order_and_rejects_unknown_names() {
        let only = vec!["vrrp".to_string(), "sync".to_string()];
        let set = service_set(&ctx(true), Some(&only)).unwrap();
        assert_eq!(set[0].name, "sync");
        assert_eq!(set[1].name, "vrrp");
        let err = service_set(&ctx(true), Some(&["bgp".to_string()])).unwrap_err();
        assert!(err.contains("unknown service `bgp`"), "{err}");
    }
}
