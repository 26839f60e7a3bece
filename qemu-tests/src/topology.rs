//! The lab topology: a netns topology folder of `testkit/topologies/NAME` (hosts,
//! bridges, links, addresses: shared with the netns tests) plus its `lab.toml` (which
//! hosts are firewall VMs or lab hosts). [`LabPlan::load`] resolves both into the switch
//! ports and the per-VM NICs, kernel options and roles. Pure apart from reading the files.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use twinwall_testkit::{Endpoint, Topology};

use crate::switch::core::{PortId, PortSpec};

/// Errors of loading a lab topology, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// topology.toml could not be loaded.
    #[error("topology {dir}: {source}")]
    Topology {
        /// Folder.
        dir: PathBuf,
        /// Cause.
        source: twinwall_testkit::TestkitError,
    },
    /// lab.toml could not be read.
    #[error("{path}: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// lab.toml does not parse.
    #[error("{path}: {message}")]
    Parse {
        /// File.
        path: PathBuf,
        /// toml's message (with line and column).
        message: String,
    },
    /// The two files disagree.
    #[error("{path}: {message}")]
    Invalid {
        /// File.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// `lab.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct LabFile {
    #[serde(default)]
    config: Option<PathBuf>,
    #[serde(default)]
    direct: BTreeMap<String, String>,
    vm: BTreeMap<String, VmEntry>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, tag = "role", rename_all = "kebab-case")]
enum VmEntry {
    Firewall {
        node: String,
    },
    LabHost {
        #[serde(default)]
        agent: Option<AgentKind>,
        #[serde(default)]
        target: Option<SocketAddr>,
        #[serde(default)]
        flows: Option<u32>,
    },
}

/// Which traffic agent a lab host runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentKind {
    /// The flows' client.
    Client,
    /// The echo server.
    Server,
}

/// What a VM is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(tag = "role", rename_all = "kebab-case")]
pub enum VmRole {
    /// A firewall node, flashed with the cluster config for `node`.
    Firewall {
        /// Node name in the cluster config.
        node: String,
    },
    /// The image in the lab-host role.
    LabHost {
        /// The agent.
        agent: Option<AgentKind>,
        /// Client: the echo server.
        target: Option<SocketAddr>,
        /// Client: TCP flows.
        flows: Option<u32>,
        /// (device, address).
        addresses: Vec<(String, IpNet)>,
        /// Default gateway (the route to 0.0.0.0/0 of topology.toml).
        gateway: Option<IpAddr>,
    },
}

/// One NIC of a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedNic {
    /// Guest device (`eth0`, ...): NICs are in device order.
    pub device: String,
    /// Switch segment.
    pub segment: String,
    /// Switch port.
    pub port: PortId,
}

/// One VM of the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VmPlan {
    /// Lab name (the topology host name).
    pub name: String,
    /// Role.
    pub role: VmRole,
    /// Data NICs in guest order.
    pub nics: Vec<PlannedNic>,
}

/// The resolved lab.
#[derive(Debug, Clone, Serialize)]
pub struct LabPlan {
    /// Topology name (folder name).
    pub name: String,
    /// The cluster config the firewalls are flashed with (required when there are).
    pub config: Option<PathBuf>,
    /// Switch ports (index = [`PortId`]).
    pub ports: Vec<PortSpec>,
    /// VMs, firewalls first, then in name order.
    pub vms: Vec<VmPlan>,
}

impl LabPlan {
    /// Loads `DIR/topology.toml` and `DIR/lab.toml`; relative paths in lab.toml are
    /// relative to `repo`.
    pub fn load(dir: &Path, repo: &Path) -> Result<LabPlan, TopologyError> {
        let topo = Topology::load(dir).map_err(|source| TopologyError::Topology {
            dir: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join("lab.toml");
        let text = std::fs::read_to_string(&path).map_err(|source| TopologyError::Read {
            path: path.clone(),
            source,
        })?;
        let file: LabFile = toml::from_str(&text).map_err(|e| TopologyError::Parse {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Self::resolve(name, &topo, file, &path, repo)
    }

    fn resolve(
        name: String,
        topo: &Topology,
        file: LabFile,
        path: &Path,
        repo: &Path,
    ) -> Result<LabPlan, TopologyError> {
        let invalid = |message: String| TopologyError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        for h in topo.hosts.keys() {
            if !file.vm.contains_key(h) {
                return Err(invalid(format!(
                    "host {h} of topology.toml has no [vm.{h}]"
                )));
            }
        }
        for v in file.vm.keys() {
            if !topo.hosts.contains_key(v) {
                return Err(invalid(format!("[vm.{v}] is not a host of topology.toml")));
            }
        }
        if file.config.is_none()
            && file
                .vm
                .values()
                .any(|v| matches!(v, VmEntry::Firewall { .. }))
        {
            return Err(invalid(
                "firewall VMs need `config` (the cluster config)".into(),
            ));
        }
        // (host, device, segment) per host-side link end.
        let mut ends: Vec<(String, String, String)> = Vec::new();
        for l in &topo.links {
            let parse = |s: &str| Endpoint::parse(s).map_err(|e| invalid(e.to_string()));
            let (a, b) = (parse(&l.a)?, parse(&l.b)?);
            let a_bridge = topo.bridges.contains_key(&a.node);
            let b_bridge = topo.bridges.contains_key(&b.node);
            match (a_bridge, b_bridge) {
                (false, true) => ends.push((a.node, a.device, b.node)),
                (true, false) => ends.push((b.node, b.device, a.node)),
                (false, false) => {
                    let seg = file
                        .direct
                        .get(&l.a)
                        .or_else(|| file.direct.get(&l.b))
                        .ok_or_else(|| {
                            invalid(format!(
                                "direct link {} <-> {} needs a segment name in [direct]",
                                l.a, l.b
                            ))
                        })?
                        .clone();
                    ends.push((a.node, a.device, seg.clone()));
                    ends.push((b.node, b.device, seg));
                }
                (true, true) => {
                    return Err(invalid(format!(
                        "bridge-to-bridge link {} <-> {} is not supported by the lab",
                        l.a, l.b
                    )));
                }
            }
        }
        // Firewalls first (their ports are the interesting ones), then by name.
        let mut names: Vec<&String> = file.vm.keys().collect();
        names.sort_by_key(|n| (!matches!(file.vm[*n], VmEntry::Firewall { .. }), *n));
        let mut ports = Vec::new();
        let mut vms = Vec::new();
        for n in names {
            let mut mine: Vec<&(String, String, String)> =
                ends.iter().filter(|(h, _, _)| h == n).collect();
            mine.sort_by_key(|e| natural(&e.1));
            let mut nics = Vec::new();
            for (_, device, segment) in mine {
                ports.push(PortSpec {
                    node: n.clone(),
                    segment: segment.clone(),
                });
                nics.push(PlannedNic {
                    device: device.clone(),
                    segment: segment.clone(),
                    port: ports.len() - 1,
                });
            }
            let host = &topo.hosts[n];
            let role = match &file.vm[n] {
                VmEntry::Firewall { node } => VmRole::Firewall { node: node.clone() },
                VmEntry::LabHost {
                    agent,
                    target,
                    flows,
                } => {
                    if *agent == Some(AgentKind::Client) && target.is_none() {
                        return Err(invalid(format!("[vm.{n}]: a client needs a target")));
                    }
                    VmRole::LabHost {
                        agent: *agent,
                        target: *target,
                        flows: *flows,
                        addresses: host
                            .addresses
                            .iter()
                            .flat_map(|(d, a)| a.iter().map(|a| (d.clone(), *a)))
                            .collect(),
                        gateway: host
                            .routes
                            .iter()
                            .find(|r| r.destination.prefix_len() == 0)
                            .map(|r| r.gateway),
                    }
                }
            };
            vms.push(VmPlan {
                name: n.clone(),
                role,
                nics,
            });
        }
        Ok(LabPlan {
            name,
            config: file.config.as_ref().map(|c| repo.join(c)),
            ports,
            vms,
        })
    }

    /// A VM by name.
    pub fn vm(&self, name: &str) -> Option<&VmPlan> {
        self.vms.iter().find(|v| v.name == name)
    }

    /// Resolves `NODE:SEGMENT` or `NODE:DEVICE` to a port.
    pub fn port(&self, name: &str) -> Option<PortId> {
        let (node, what) = name.split_once(':')?;
        let vm = self.vm(node)?;
        vm.nics
            .iter()
            .find(|n| n.segment == what || n.device == what)
            .map(|n| n.port)
    }
}

/// Sort key that puts `eth2` before `eth10`.
fn natural(s: &str) -> (String, u64) {
    let digits = s.len() - s.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    let (head, num) = s.split_at(s.len() - digits);
    (head.to_string(), num.parse().unwrap_or(0))
}

/// The topologies shipped with the repository.
pub fn topologies_dir(repo: &Path) -> PathBuf {
    repo.join("testkit/topologies")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    #[test]
    fn seed_pair_resolves_into_ports_nics_and_roles() {
        let p = LabPlan::load(&topologies_dir(&repo()).join("seed-pair"), &repo()).unwrap();
        let names: Vec<String> = p.ports.iter().map(PortSpec::name).collect();
        assert_eq!(
            names,
            [
                "fw1:outside",
                "fw1:inside",
                "fw1:sync",
                "fw2:outside",
                "fw2:inside",
                "fw2:sync",
                "client:inside",
                "server:outside"
            ]
        );
        let fw1 = p.vm("fw1").unwrap();
        let devs: Vec<&str> = fw1.nics.iter().map(|n| n.device.as_str()).collect();
        assert_eq!(devs, ["eth0", "eth1", "eth2"]);
        assert_eq!(
            fw1.role,
            VmRole::Firewall {
                node: "lj-fw-1".into()
            }
        );
        let VmRole::LabHost {
            agent,
            gateway,
            addresses,
            ..
        } = &p.vm("client").unwrap().role
        else {
            panic!("client is a lab host");
        };
        assert_eq!(*agent, Some(AgentKind::Client));
        assert_eq!(*gateway, Some("198.51.100.1".parse().unwrap()));
        assert_eq!(addresses[0].0, "eth0");
        assert_eq!(p.port("fw1:inside"), Some(1));
        assert_eq!(p.port("fw2:eth2"), Some(5));
        assert_eq!(p.port("fw3:inside"), None);
        assert!(
            p.config
                .unwrap()
                .ends_with("testkit/topologies/seed-pair/cluster.toml")
        );
    }

    #[test]
    fn a_host_without_a_vm_entry_is_named() {
        let dir = std::env::temp_dir().join(format!("lab-topo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let src = topologies_dir(&repo()).join("seed-pair");
        std::fs::copy(src.join("topology.toml"), dir.join("topology.toml")).unwrap();
        std::fs::write(
            dir.join("lab.toml"),
            "config = \"x.toml\"\n[direct]\n\"fw1:eth2\" = \"sync\"\n[vm.fw1]\nrole = \"firewall\"\nnode = \"a\"\n",
        )
        .unwrap();
        let e = LabPlan::load(&dir, &repo()).unwrap_err().to_string();
        assert!(e.contains("lab.toml") && e.contains("host client"), "{e}");
        std::fs::write(dir.join("lab.toml"), "config = 1\n").unwrap();
        let e = LabPlan::load(&dir, &repo()).unwrap_err().to_string();
        assert!(e.contains("line 1"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
