//! The lab-host role: the appliance image booted as a plain host of the QEMU lab (a client
//! or a server behind or in front of the firewall pair) instead of as a firewall.
//!
//! Chosen on the kernel command line, which the lab writes:
//!
//! | option | meaning |
//! |---|---|
//! | `twinwall.role=lab-host` | this role (no config, no ruleset, no firewall services) |
//! | `twinwall.lab.addr=DEV=ADDR/LEN` | an address (repeatable) |
//! | `twinwall.lab.gw=ADDR` | default gateway |
//! | `twinwall.lab.agent=client\|server` | the traffic agent to run |
//! | `twinwall.lab.target=ADDR:PORT` | client: the echo server |
//! | `twinwall.lab.port=PORT` | server: echo port (default 7000); client: stats port (default 7001) |
//! | `twinwall.lab.flows=N` | client: TCP flows (default 8) |
//! | `twinwall.lab.interval_ms=N` | client: time between echoes (default 20) |
//!
//! Parsing and the plan are pure ([`LabHost::from_options`], [`LabHost::agent_args`]);
//! [`configure`] applies addresses and the route over rtnetlink.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use ipnet::IpNet;

use crate::network::{self, NetPlan, NetworkError};
use crate::service::{Kind, ServiceSpec};

/// Kernel command line prefix of the role's options (besides `twinwall.role`).
const PREFIX: &str = "twinwall.lab.";

/// Errors of the lab-host role, naming the option at fault.
#[derive(Debug, thiserror::Error)]
pub enum LabHostError {
    /// An option's value does not parse.
    #[error("kernel option {option}: {reason}")]
    Option {
        /// The whole `twinwall.lab.*` word.
        option: String,
        /// Why.
        reason: String,
    },
}

/// Which agent the host runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Agent {
    /// `twinwall lab agent client`.
    Client,
    /// `twinwall lab agent server`.
    Server,
}

/// The lab host's settings, from the kernel command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabHost {
    /// (device, address) pairs.
    pub addresses: Vec<(String, IpNet)>,
    /// Default gateway.
    pub gateway: Option<IpAddr>,
    /// The agent, if any.
    pub agent: Option<Agent>,
    /// Client: the echo server.
    pub target: Option<SocketAddr>,
    /// Echo port (server) or stats port (client).
    pub port: Option<u16>,
    /// Client: TCP flows.
    pub flows: u32,
    /// Client: milliseconds between echoes.
    pub interval_ms: u32,
}

/// Whether a kernel option belongs to this role (init's command line parser reports it
/// as unknown; the role consumes it).
pub fn owns(option: &str) -> bool {
    option.starts_with(PREFIX) || option.starts_with("twinwall.role=")
}

impl LabHost {
    /// The role from the `twinwall.*` words init did not know; `None` unless
    /// `twinwall.role=lab-host` is among them.
    pub fn from_options(options: &[String]) -> Option<Result<LabHost, LabHostError>> {
        if !options.iter().any(|o| o == "twinwall.role=lab-host") {
            return None;
        }
        Some(Self::parse(options))
    }

    fn parse(options: &[String]) -> Result<LabHost, LabHostError> {
        let mut h = LabHost {
            addresses: Vec::new(),
            gateway: None,
            agent: None,
            target: None,
            port: None,
            flows: 8,
            interval_ms: 20,
        };
        for word in options {
            let Some(opt) = word.strip_prefix(PREFIX) else {
                continue;
            };
            let bad = |reason: String| LabHostError::Option {
                option: word.clone(),
                reason,
            };
            let (key, value) = opt
                .split_once('=')
                .ok_or_else(|| bad("expected KEY=VALUE".into()))?;
            match key {
                "addr" => {
                    let (dev, addr) = value
                        .split_once('=')
                        .ok_or_else(|| bad("expected DEVICE=ADDRESS/PREFIX".into()))?;
                    let net: IpNet = addr.parse().map_err(|e| bad(format!("{addr}: {e}")))?;
                    h.addresses.push((dev.to_string(), net));
                }
                "gw" => h.gateway = Some(value.parse().map_err(|e| bad(format!("{e}")))?),
                "agent" => {
                    h.agent = Some(match value {
                        "client" => Agent::Client,
                        "server" => Agent::Server,
                        _ => return Err(bad("expected client or server".into())),
                    })
                }
                "target" => h.target = Some(value.parse().map_err(|e| bad(format!("{e}")))?),
                "port" => h.port = Some(value.parse().map_err(|e| bad(format!("{e}")))?),
                "flows" => h.flows = value.parse().map_err(|e| bad(format!("{e}")))?,
                "interval_ms" => h.interval_ms = value.parse().map_err(|e| bad(format!("{e}")))?,
                _ => return Err(bad(format!("unknown option {key}"))),
            }
        }
        if h.agent == Some(Agent::Client) && h.target.is_none() {
            return Err(LabHostError::Option {
                option: "twinwall.lab.agent=client".into(),
                reason: "a client needs twinwall.lab.target=ADDR:PORT".into(),
            });
        }
        Ok(h)
    }

    /// The arguments of the agent's command (after the binary), if an agent is set.
    pub fn agent_args(&self) -> Option<Vec<String>> {
        let s = |x: &str| x.to_string();
        match self.agent? {
            Agent::Server => Some(vec![
                s("lab"),
                s("agent"),
                s("server"),
                s("--listen"),
                format!("0.0.0.0:{}", self.port.unwrap_or(7000)),
            ]),
            Agent::Client => Some(vec![
                s("lab"),
                s("agent"),
                s("client"),
                s("--target"),
                self.target?.to_string(),
                s("--flows"),
                self.flows.to_string(),
                s("--interval-ms"),
                self.interval_ms.to_string(),
                s("--stats"),
                format!("0.0.0.0:{}", self.port.unwrap_or(7001)),
            ]),
        }
    }

    /// The agent as init's only service (`agent`, a daemon whose control socket is
    /// `RUN_DIR/agent.sock`), if an agent is set.
    pub fn service(&self, exe: PathBuf, run_dir: &Path) -> Option<ServiceSpec> {
        let mut args = self.agent_args()?;
        args.extend(["--run-dir".to_string(), run_dir.display().to_string()]);
        Some(ServiceSpec {
            name: "agent".into(),
            program: exe,
            args,
            kind: Kind::Daemon,
        })
    }

    /// The links and addresses to configure (loopback first).
    pub fn plan(&self) -> NetPlan {
        let mut links = vec![("loopback".to_string(), "lo".to_string())];
        for (dev, _) in &self.addresses {
            if !links.iter().any(|(_, d)| d == dev) {
                links.push((dev.clone(), dev.clone()));
            }
        }
        NetPlan {
            links,
            addresses: self.addresses.clone(),
        }
    }
}

/// Brings the links up, adds the addresses and the default route. Returns the per-item
/// failures (each degrades the boot, none stops it).
pub fn configure(h: &LabHost) -> Result<Vec<NetworkError>, NetworkError> {
    let mut errors = network::apply(&h.plan(), false)?;
    if let Some(gw) = h.gateway {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(NetworkError::Runtime)?;
        if let Err(e) = rt.block_on(default_route(gw)) {
            errors.push(e);
        }
    }
    Ok(errors)
}

async fn default_route(gw: IpAddr) -> Result<(), NetworkError> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(NetworkError::Connect)?;
    let task = tokio::spawn(conn);
    let fail = |source| NetworkError::Netlink {
        what: format!("add default route via {gw}"),
        device: "-".into(),
        source,
    };
    // The builder needs the family first: a default route is the /0 of the gateway's.
    let any: IpAddr = match gw {
        IpAddr::V4(_) => std::net::Ipv4Addr::UNSPECIFIED.into(),
        IpAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
    };
    let msg = rtnetlink::RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(any, 0)
        .and_then(|b| b.gateway(gw))
        .map(|b| b.build())
        .map_err(|_| fail(rtnetlink::Error::RequestFailed))?;
    let r = handle
        .route()
        .add(msg)
        .replace()
        .execute()
        .await
        .map_err(fail);
    task.abort();
    if r.is_ok() {
        tracing::info!(gateway = %gw, "default route added");
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn parses_a_client_and_builds_its_agent_command() {
        let o = words(
            "twinwall.role=lab-host twinwall.lab.addr=eth0=198.51.100.10/24 \
             twinwall.lab.addr=eth1=192.0.2.80/26 twinwall.lab.gw=198.51.100.1 \
             twinwall.lab.agent=client twinwall.lab.target=203.0.113.254:7000 \
             twinwall.lab.flows=4",
        );
        let h = LabHost::from_options(&o).unwrap().unwrap();
        assert_eq!(h.addresses.len(), 2);
        assert_eq!(h.gateway, Some("198.51.100.1".parse().unwrap()));
        assert_eq!(
            h.agent_args().unwrap().join(" "),
            "lab agent client --target 203.0.113.254:7000 --flows 4 --interval-ms 20 \
             --stats 0.0.0.0:7001"
        );
        assert_eq!(
            h.plan().links,
            [
                ("loopback".to_string(), "lo".to_string()),
                ("eth0".into(), "eth0".into()),
                ("eth1".into(), "eth1".into())
            ]
        );
        assert!(o.iter().all(|w| owns(w)));
        let spec = h
            .service("/bin/twinwall".into(), Path::new("/run/twinwall"))
            .unwrap();
        assert_eq!(spec.name, "agent");
        assert_eq!(spec.kind, Kind::Daemon);
        assert!(
            spec.args
                .ends_with(&["--run-dir".into(), "/run/twinwall".into()])
        );
    }

    #[test]
    fn without_the_role_nothing_happens_and_bad_options_name_themselves() {
        assert!(LabHost::from_options(&words("twinwall.lab.agent=server")).is_none());
        let e = LabHost::from_options(&words("twinwall.role=lab-host twinwall.lab.addr=eth0=x"))
            .unwrap()
            .unwrap_err()
            .to_string();
        assert!(e.contains("twinwall.lab.addr=eth0=x"), "{e}");
        let e = LabHost::from_options(&words("twinwall.role=lab-host twinwall.lab.agent=client"))
            .unwrap()
            .unwrap_err()
            .to_string();
        assert!(e.contains("target"), "{e}");
        let s = LabHost::from_options(&words("twinwall.role=lab-host twinwall.lab.agent=server"))
            .unwrap()
            .unwrap();
        assert_eq!(
            s.agent_args().unwrap().join(" "),
            "lab agent server --listen 0.0.0.0:7000"
        );
    }
}
