//! Topologies as data: hosts (each a namespace), bridges (each in a namespace of its
//! own, acting as a switch), links (veth pairs), addresses and routes. A [`Topology`] is
//! loaded from a TOML or JSON file and built into a [`Lab`] that owns the namespaces.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::{Netns, Result, TestkitError, bridge, veth};

/// A topology: hosts, bridges and the links between them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    /// Hosts by name; each becomes a namespace.
    #[serde(default)]
    pub hosts: BTreeMap<String, HostSpec>,
    /// Bridges (switches) by name; each lives in a namespace of its own.
    #[serde(default)]
    pub bridges: BTreeMap<String, BridgeSpec>,
    /// veth links between host interfaces and/or bridge ports.
    #[serde(default)]
    pub links: Vec<LinkSpec>,
}

/// One host.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostSpec {
    /// Turn on IPv4/IPv6 forwarding (routers, firewalls).
    #[serde(default)]
    pub forwarding: bool,
    /// Addresses by device name.
    #[serde(default)]
    pub addresses: BTreeMap<String, Vec<IpNet>>,
    /// Static routes, added after the addresses.
    #[serde(default)]
    pub routes: Vec<RouteSpec>,
}

/// A bridge (switch). No options yet; a table keeps room for them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeSpec {}

/// A static route of a host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// Destination prefix (`0.0.0.0/0`, `::/0`, ...).
    pub destination: IpNet,
    /// Next hop.
    pub gateway: IpAddr,
}

/// A veth link between two endpoints, each written `NODE:DEVICE`, where NODE is a host
/// or a bridge (for a bridge, DEVICE names the port, which is enslaved to the bridge).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkSpec {
    /// One end.
    pub a: String,
    /// The other end.
    pub b: String,
}

/// A parsed link endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Host or bridge name.
    pub node: String,
    /// Device name in that node's namespace.
    pub device: String,
}

impl Endpoint {
    /// Parses `NODE:DEVICE`.
    pub fn parse(s: &str) -> Result<Endpoint> {
        let (node, device) = s
            .split_once(':')
            .filter(|(n, d)| !n.is_empty() && !d.is_empty())
            .ok_or_else(|| {
                TestkitError::Invalid(format!("link endpoint `{s}` is not NODE:DEVICE"))
            })?;
        if device.len() > 15 {
            return Err(TestkitError::Invalid(format!(
                "link endpoint `{s}`: device name longer than 15 characters"
            )));
        }
        Ok(Endpoint {
            node: node.to_string(),
            device: device.to_string(),
        })
    }
}

impl Topology {
    /// Loads a topology from a `.toml` or `.json` file, or from a directory holding
    /// `topology.toml`.
    pub fn load(path: &Path) -> Result<Topology> {
        let file = if path.is_dir() {
            path.join("topology.toml")
        } else {
            path.to_path_buf()
        };
        let text = std::fs::read_to_string(&file).map_err(|source| TestkitError::Read {
            path: file.clone(),
            source,
        })?;
        let parsed = if file.extension().is_some_and(|e| e == "json") {
            serde_json::from_str(&text).map_err(|e| e.to_string())
        } else {
            toml::from_str(&text).map_err(|e| e.to_string())
        };
        let topo: Topology = parsed.map_err(|message| TestkitError::Parse {
            path: file.clone(),
            message,
        })?;
        topo.validate()?;
        Ok(topo)
    }

    /// Loads one of the topologies shipped in `testkit/topologies/NAME`.
    pub fn shipped(name: &str) -> Result<Topology> {
        Topology::load(&crate::topologies_dir().join(name))
    }

    /// Checks that links name known nodes, that no name is both a host and a bridge, that
    /// no device is used twice, and that addresses and routes name host devices.
    pub fn validate(&self) -> Result<()> {
        for b in self.bridges.keys() {
            if self.hosts.contains_key(b) {
                return Err(TestkitError::Invalid(format!(
                    "`{b}` is both a host and a bridge"
                )));
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for l in &self.links {
            for e in [&l.a, &l.b] {
                let ep = Endpoint::parse(e)?;
                if !self.hosts.contains_key(&ep.node) && !self.bridges.contains_key(&ep.node) {
                    return Err(TestkitError::Invalid(format!(
                        "link endpoint `{e}` names unknown host or bridge `{}`",
                        ep.node
                    )));
                }
                if !seen.insert((ep.node.clone(), ep.device.clone())) {
                    return Err(TestkitError::Invalid(format!(
                        "device `{e}` is used by more than one link"
                    )));
                }
            }
        }
        for (h, spec) in &self.hosts {
            for dev in spec.addresses.keys() {
                if !seen.contains(&(h.clone(), dev.clone())) {
                    return Err(TestkitError::Invalid(format!(
                        "host `{h}` has addresses on `{dev}`, which no link creates"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Builds the topology: one namespace per host and per bridge, the links, addresses,
    /// forwarding and routes. Everything is torn down when the [`Lab`] is dropped, also
    /// when building fails half-way.
    pub fn build(&self) -> Result<Lab> {
        self.validate()?;
        let mut lab = Lab {
            namespaces: BTreeMap::new(),
        };
        for name in self.hosts.keys().chain(self.bridges.keys()) {
            let ns = Netns::new(&short(name))?;
            lab.namespaces.insert(name.clone(), ns);
        }
        for name in self.bridges.keys() {
            bridge(&lab.namespaces[name], "br0")?;
        }
        for l in &self.links {
            let a = Endpoint::parse(&l.a)?;
            let b = Endpoint::parse(&l.b)?;
            veth(
                (&lab.namespaces[&a.node], &a.device),
                (&lab.namespaces[&b.node], &b.device),
            )?;
            for ep in [&a, &b] {
                if self.bridges.contains_key(&ep.node) {
                    lab.namespaces[&ep.node].ip(["link", "set", &ep.device, "master", "br0"])?;
                }
            }
        }
        for (name, spec) in &self.hosts {
            let ns = &lab.namespaces[name];
            if spec.forwarding {
                ns.enable_forwarding()?;
            }
            for (dev, addrs) in &spec.addresses {
                for a in addrs {
                    ns.add_addr(dev, *a)?;
                }
            }
            for r in &spec.routes {
                ns.add_route(r.destination, r.gateway)?;
            }
        }
        Ok(lab)
    }
}

/// Namespace name prefixes stay short so that `ip netns list` stays readable.
fn short(name: &str) -> String {
    name.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(8)
        .collect()
}

/// A built topology: owns the namespaces (hosts and bridges) by name.
#[derive(Debug)]
pub struct Lab {
    namespaces: BTreeMap<String, Netns>,
}

impl Lab {
    /// The namespace of a host or bridge. Panics on an unknown name (a test bug).
    pub fn ns(&self, name: &str) -> &Netns {
        self.namespaces
            .get(name)
            .unwrap_or_else(|| panic!("no host or bridge `{name}` in this lab"))
    }

    /// All namespaces by host/bridge name.
    pub fn namespaces(&self) -> &BTreeMap<String, Netns> {
        &self.namespaces
    }
}
