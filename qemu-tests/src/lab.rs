//! A running lab: the switch, one VM per topology host, and the operations the training
//! commands and the scenarios use (cut, one-way cut, loss/delay, partition, heal, flap,
//! kill, status, traffic). Preparing the disks (keys, signed config bundle, one flashed
//! disk per firewall, the slot's kernel and initramfs for direct boot) is done with the
//! twinwall binary's own commands, exactly as an operator would.
//!
//! The firewalls boot as on hardware: SeaBIOS, GRUB and its boot counting from their own
//! flashed disk, so a reboot after an OS update runs the slot GRUB chooses (and falls
//! back as it would on a real box). Lab hosts boot the slot's kernel directly
//! (`-kernel`) on a shared snapshot disk: they are never updated.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ipnet::IpNet;
use serde::Serialize;

use crate::agent::{self, AgentError, ClientStats};
use crate::fwstatus::{self, FirewallState};
use crate::switch::core::{Dir, Impairment, Observed, PortCounters, PortId, SwitchError};
use crate::switch::io::{RunningSwitch, SwitchIoError};
use crate::topology::{AgentKind, LabPlan, TopologyError, VmRole};
use crate::vm::{self, Boot, Nic, Vm, VmError, VmSpec};

/// Guest port of the client agent's stats.
pub const AGENT_STATS_PORT: u16 = 7001;

/// Errors of the lab, each naming what it concerns.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// The topology is wrong.
    #[error(transparent)]
    Topology(#[from] TopologyError),
    /// The switch failed.
    #[error(transparent)]
    SwitchIo(#[from] SwitchIoError),
    /// A switch operation was refused.
    #[error(transparent)]
    Switch(#[from] SwitchError),
    /// A VM failed.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// The agent failed.
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// A preparation step failed.
    #[error("preparing the lab: {step}: {reason}")]
    Prepare {
        /// The step.
        step: String,
        /// Why.
        reason: String,
    },
    /// No such port.
    #[error("no port {name}: use NODE:SEGMENT or NODE:DEVICE (ports: {known})")]
    NoPort {
        /// The name.
        name: String,
        /// What exists.
        known: String,
    },
    /// No such VM.
    #[error("no VM {name} (VMs: {known})")]
    NoVm {
        /// The name.
        name: String,
        /// What exists.
        known: String,
    },
    /// The topology has no traffic client.
    #[error("the topology has no lab host running the traffic client")]
    NoClient,
}

/// Settings of `lab up`.
#[derive(Debug, Clone)]
pub struct LabOptions {
    /// The repository (topologies, the config fixture).
    pub repo: PathBuf,
    /// Topology folder.
    pub topology: PathBuf,
    /// Directory of `make image`'s output (`twinwall.img`, `twinwall-slot.squashfs`).
    pub image_dir: PathBuf,
    /// Run directory (consoles, sockets, disks, reports).
    pub run_dir: PathBuf,
    /// The twinwall binary used for keys, bundles and flashing.
    pub exe: PathBuf,
    /// Guest memory per VM (MiB).
    pub memory_mb: u32,
    /// Switch RNG seed (loss decisions).
    pub seed: u64,
    /// Extra kernel options for every VM.
    pub append: String,
    /// Only these VMs (empty: all of the topology).
    pub only: Vec<String>,
    /// Boot the firewalls with `-kernel` from slot A too (faster, but a reboot always
    /// runs slot A again: no OS update can be tried). Default: firmware + GRUB.
    pub direct_firewalls: bool,
}

/// What a port looks like now.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct PortStatus {
    /// `NODE:SEGMENT`.
    pub name: String,
    /// Guest device.
    pub device: String,
    /// Counters.
    pub counters: PortCounters,
    /// VM -> switch.
    pub rx: Impairment,
    /// switch -> VM.
    pub tx: Impairment,
    /// Whether the guest sees carrier (QMP set_link).
    pub carrier: bool,
}

/// A VIP and who holds it, as the switch saw it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct VipStatus {
    /// Address.
    pub address: IpAddr,
    /// Virtual router.
    pub vrid: u8,
    /// Zone / segment.
    pub segment: String,
    /// The port that claimed it last (ARP), if any.
    pub holder: Option<String>,
    /// Switch time of that claim.
    pub since_ms: Option<u64>,
    /// Ports advertising this router as master now.
    pub masters: Vec<String>,
}

/// One VM.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct VmStatus {
    /// Name.
    pub name: String,
    /// Role.
    pub role: VmRole,
    /// QEMU running.
    pub running: bool,
    /// Console file.
    pub console: PathBuf,
}

/// Everything `lab status` shows.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct LabStatus {
    /// Topology name.
    pub topology: String,
    /// Switch time (ms).
    pub now_ms: u64,
    /// VMs.
    pub vms: Vec<VmStatus>,
    /// Ports.
    pub ports: Vec<PortStatus>,
    /// Blocked node pairs.
    pub partitions: Vec<(String, String)>,
    /// VIPs.
    pub vips: Vec<VipStatus>,
    /// More than one master for a router on a segment.
    pub split_brain: bool,
    /// The nodes holding a VIP (one in a healthy pair).
    pub vip_holders: Vec<String>,
    /// Each firewall's management API, forwarded to this loopback address.
    #[serde(default)]
    pub mgmt: BTreeMap<String, SocketAddr>,
}

/// The configured VIPs of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Vip {
    /// Virtual router id.
    pub vrid: u8,
    /// Zone name (= segment).
    pub zone: String,
    /// The address.
    pub address: IpNet,
}

/// A running lab.
#[derive(Debug)]
pub struct Lab {
    /// The resolved topology.
    pub plan: LabPlan,
    /// The switch.
    pub switch: RunningSwitch,
    /// The cluster's VIPs.
    pub vips: Vec<Vip>,
    /// VRRP advertisement interval of the cluster (ms).
    pub advert_ms: u32,
    /// Whether the cluster preempts (the higher priority takes the VIPs back).
    pub preempt: bool,
    /// VRRP priority per firewall VM name.
    pub priorities: BTreeMap<String, u8>,
    /// Guest port of the management API per firewall VM that has a forwarded one.
    mgmt_ports: BTreeMap<String, u16>,
    /// Run directory.
    pub run_dir: PathBuf,
    vms: BTreeMap<String, Vm>,
    carrier_down: BTreeSet<PortId>,
}

fn run(step: &str, cmd: &mut Command) -> Result<(), LabError> {
    let o = cmd.output().map_err(|e| LabError::Prepare {
        step: step.into(),
        reason: e.to_string(),
    })?;
    if o.status.success() {
        Ok(())
    } else {
        Err(LabError::Prepare {
            step: step.into(),
            reason: format!(
                "{}: {}{}",
                o.status,
                String::from_utf8_lossy(&o.stdout).trim(),
                String::from_utf8_lossy(&o.stderr).trim()
            ),
        })
    }
}

/// What the lab needs to know of the cluster config to judge the pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterFacts {
    /// The VIPs.
    pub vips: Vec<Vip>,
    /// VRRP advertisement interval (ms).
    pub advert_ms: u32,
    /// Whether the higher-priority node takes the VIPs back (`[vrrp] preempt`).
    pub preempt: bool,
    /// VRRP priority per node name.
    pub priorities: BTreeMap<String, u8>,
    /// Per node name: its management API on a management-zone interface.
    pub mgmt: BTreeMap<String, MgmtAddr>,
}

/// Where a node's management API listens on a management zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MgmtAddr {
    /// The zone's device on the node (`eth3`).
    pub device: String,
    /// The node's IPv4 address there.
    pub address: std::net::Ipv4Addr,
    /// The API port (`[management] port`).
    pub port: u16,
}

/// The VIPs and advert interval of the cluster config (from the first firewall's view).
pub fn cluster_vips(config: &Path, node: &str) -> Result<(Vec<Vip>, u32), LabError> {
    let f = cluster_facts(config, node)?;
    Ok((f.vips, f.advert_ms))
}

/// The VIPs, VRRP timing, preemption, priorities and management addresses of the cluster
/// config (read through `node`'s view and its peer's).
pub fn cluster_facts(config: &Path, node: &str) -> Result<ClusterFacts, LabError> {
    let bad = |reason: String| LabError::Prepare {
        step: format!("reading {}", config.display()),
        reason,
    };
    let cfg = twinwall_config::load(config).map_err(|d| bad(d.to_string()))?;
    let view = cfg.node_view(node).map_err(|e| bad(e.to_string()))?;
    let mut vips = Vec::new();
    for g in &view.vrrp.groups {
        for r in &g.routers {
            for a in &r.addresses {
                vips.push(Vip {
                    vrid: r.vrid,
                    zone: r.interface.clone(),
                    address: *a,
                });
            }
        }
    }
    let priorities = BTreeMap::from([
        (view.node.clone(), view.priority),
        (view.peer.node.clone(), view.peer.priority),
    ]);
    let mut mgmt = BTreeMap::new();
    for n in [&view.node, &view.peer.node] {
        let v = cfg.node_view(n).map_err(|e| bad(e.to_string()))?;
        let addr = v.management.interfaces.iter().find_map(|zone| {
            let i = v.interfaces.get(zone)?;
            let a = i.addresses.iter().find_map(|a| match a.addr() {
                IpAddr::V4(a) => Some(a),
                IpAddr::V6(_) => None,
            })?;
            Some(MgmtAddr {
                device: i.device.clone(),
                address: a,
                port: v.management.port,
            })
        });
        if let Some(a) = addr {
            mgmt.insert(n.clone(), a);
        }
    }
    Ok(ClusterFacts {
        vips,
        advert_ms: view.vrrp.advert_interval_ms,
        preempt: view.vrrp.preempt,
        priorities,
        mgmt,
    })
}

/// Disks and boot files of a lab, made once per run directory.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The kernel of slot A.
    pub kernel: PathBuf,
    /// Its initramfs.
    pub initrd: PathBuf,
    /// Base disk of the lab hosts.
    pub host_disk: PathBuf,
    /// Flashed disk per firewall VM.
    pub firewall_disks: BTreeMap<String, PathBuf>,
}

/// Extracts the boot files and flashes one disk per firewall (keys and bundle made with
/// the twinwall binary). Idempotent only in the sense that it overwrites.
pub fn prepare(opts: &LabOptions, plan: &LabPlan) -> Result<Prepared, LabError> {
    let img = opts.image_dir.join("twinwall.img");
    let slot = opts.image_dir.join("twinwall-slot.squashfs");
    for f in [&img, &slot] {
        if !f.exists() {
            return Err(LabError::Prepare {
                step: "finding the image".into(),
                reason: format!("{} is missing (run `make image`)", f.display()),
            });
        }
    }
    let boot = opts.run_dir.join("boot");
    let _ = std::fs::remove_dir_all(&boot);
    run(
        "extracting the kernel and initramfs from the slot",
        Command::new("unsquashfs")
            .arg("-no-progress")
            .arg("-d")
            .arg(&boot)
            .arg(&slot)
            .args(["boot/vmlinuz", "boot/initrd.img"]),
    )?;
    let mut firewall_disks = BTreeMap::new();
    let firewalls: Vec<(&str, &str)> = plan
        .vms
        .iter()
        .filter_map(|v| match &v.role {
            VmRole::Firewall { node } => Some((v.name.as_str(), node.as_str())),
            VmRole::LabHost { .. } => None,
        })
        .filter(|(n, _)| opts.only.is_empty() || opts.only.iter().any(|o| o == n))
        .collect();
    if !firewalls.is_empty() {
        let keys = opts.run_dir.join("keys");
        std::fs::create_dir_all(&keys).map_err(|e| LabError::Prepare {
            step: "creating the key directory".into(),
            reason: e.to_string(),
        })?;
        let prefix = keys.join("lab");
        let _ = std::fs::remove_file(prefix.with_extension("key"));
        let _ = std::fs::remove_file(prefix.with_extension("pub"));
        let _ = std::fs::remove_file(keys.join("pair.key"));
        let tw = |args: &[&std::ffi::OsStr]| {
            let mut c = Command::new(&opts.exe);
            c.args(args).env("TWINWALL_LOG", "warn");
            c
        };
        let os = |s: &str| std::ffi::OsString::from(s);
        run(
            "twinwall key generate",
            &mut tw(&[
                &os("key"),
                &os("generate"),
                &os("--out"),
                prefix.as_os_str(),
            ]),
        )?;
        let sync = keys.join("pair.key");
        run(
            "twinwall key sync",
            &mut tw(&[&os("key"), &os("sync"), &os("--out"), sync.as_os_str()]),
        )?;
        let bundle = keys.join("config.bundle");
        let _ = std::fs::remove_file(&bundle);
        run(
            "twinwall bundle create",
            &mut tw(&[
                &os("bundle"),
                &os("create"),
                &os("--config"),
                plan.config.as_deref().unwrap_or(Path::new("")).as_os_str(),
                &os("--key"),
                prefix.with_extension("key").as_os_str(),
                &os("--out"),
                bundle.as_os_str(),
            ]),
        )?;
        for (name, node) in firewalls {
            let disk = opts.run_dir.join(name).join("disk.img");
            std::fs::create_dir_all(opts.run_dir.join(name)).map_err(|e| LabError::Prepare {
                step: format!("creating the directory of {name}"),
                reason: e.to_string(),
            })?;
            let _ = std::fs::remove_file(&disk);
            run(
                &format!("twinwall flash for {name} ({node})"),
                &mut tw(&[
                    &os("flash"),
                    img.as_os_str(),
                    disk.as_os_str(),
                    &os("--node"),
                    &os(node),
                    &os("--bundle"),
                    bundle.as_os_str(),
                    &os("--trust"),
                    prefix.with_extension("pub").as_os_str(),
                    &os("--sync-key"),
                    sync.as_os_str(),
                ]),
            )?;
            if !opts.append.is_empty() && !opts.direct_firewalls {
                append_to_grub_cmdline(&disk, &opts.append)?;
            }
            firewall_disks.insert(name.to_string(), disk);
        }
    }
    // Lab hosts share one disk (each VM writes to its own overlay) whose config partition
    // holds only a node name: init mounts it, finds no bundle and the role needs none.
    let hosts = opts.run_dir.join("hosts");
    std::fs::create_dir_all(&hosts).map_err(|e| LabError::Prepare {
        step: "creating the lab-host directory".into(),
        reason: e.to_string(),
    })?;
    let host_disk = hosts.join("disk.img");
    let _ = std::fs::remove_file(&host_disk);
    run(
        "twinwall flash for the lab hosts",
        Command::new(&opts.exe)
            .env("TWINWALL_LOG", "warn")
            .arg("flash")
            .arg(&img)
            .arg(&host_disk)
            .args(["--node", "lab-host"]),
    )?;
    Ok(Prepared {
        kernel: boot.join("boot/vmlinuz"),
        initrd: boot.join("boot/initrd.img"),
        host_disk,
        firewall_disks,
    })
}

/// Adds `extra` to the kernel command line of every boot entry in the `grub.cfg` on the
/// ESP of a flashed disk (what `--append` means for a firewall booted by GRUB).
pub fn append_to_grub_cmdline(disk: &Path, extra: &str) -> Result<(), LabError> {
    let bad = |reason: String| LabError::Prepare {
        step: format!(
            "adding {extra:?} to the GRUB command line of {}",
            disk.display()
        ),
        reason,
    };
    let layout = twinwall_image::layout::Layout::plan(twinwall_image::layout::Sizes::default());
    let esp = twinwall_image::disk::esp(disk, &layout);
    let cfg = esp.read("/grub/grub.cfg").map_err(|e| bad(e.to_string()))?;
    let cfg = String::from_utf8(cfg).map_err(|e| bad(format!("grub.cfg: {e}")))?;
    let base = twinwall_image::grub::CMDLINE;
    if !cfg.contains(base) {
        return Err(bad(format!("grub.cfg has no entry with {base:?}")));
    }
    let cfg = cfg.replace(base, &format!("{base} {extra}"));
    esp.write("/grub/grub.cfg", cfg.as_bytes())
        .map_err(|e| bad(e.to_string()))
}

/// Reads `GET /status` of each endpoint (in parallel: a guest under TCG answers in tens
/// to hundreds of ms).
pub fn read_firewalls(
    endpoints: &BTreeMap<String, SocketAddr>,
) -> BTreeMap<String, Result<FirewallState, String>> {
    std::thread::scope(|s| {
        let handles: Vec<_> = endpoints
            .iter()
            .map(|(vm, addr)| {
                (
                    vm.clone(),
                    s.spawn(move || {
                        fwstatus::fetch(*addr, FW_STATUS_TIMEOUT)
                            .map(|v| FirewallState::from_status(vm, &v))
                            .map_err(|e| e.to_string())
                    }),
                )
            })
            .collect();
        handles
            .into_iter()
            .map(|(vm, h)| {
                let r = h
                    .join()
                    .unwrap_or_else(|_| Err("status reader panicked".into()));
                (vm, r)
            })
            .collect()
    })
}

/// Limit of one `GET /status`.
pub const FW_STATUS_TIMEOUT: Duration = Duration::from_secs(5);

/// The management NIC of a firewall whose management zone is on `m.device` (pure): it
/// must be the device after the data NICs (`eth{data_nics}`, where the lab puts the NIC)
/// and its address must be in the lab's management network.
pub fn mgmt_nic(
    vm_name: &str,
    node: &str,
    m: &MgmtAddr,
    data_nics: usize,
) -> Result<vm::MgmtNic, LabError> {
    let bad = |reason: String| LabError::Prepare {
        step: format!("the management NIC of {vm_name} (node {node})"),
        reason,
    };
    let want = format!("eth{data_nics}");
    if m.device != want {
        return Err(bad(format!(
            "the management zone is on {}, but the lab's management NIC is {want} (the device after the {data_nics} data NICs)",
            m.device
        )));
    }
    let net: ipnet::Ipv4Net = vm::MGMT_NET
        .parse()
        .map_err(|e| bad(format!("{}: {e}", vm::MGMT_NET)))?;
    if !net.contains(&m.address) {
        return Err(bad(format!(
            "its address {} is not in the lab's management network {}",
            m.address,
            vm::MGMT_NET
        )));
    }
    Ok(vm::MgmtNic {
        guest: m.address,
        ports: vec![m.port],
    })
}

/// The options of the image's GRUB entry ([`twinwall_image::grub::CMDLINE`]) that a
/// direct (`-kernel`) boot needs too: without `no_timer_check` a loaded TCG host
/// panicked a lab firewall at boot ("IO-APIC + timer doesn't work!", 2026-12-02 17:06,
/// load 25); GRUB-booted firewalls always had them. The console and log level differ
/// on purpose (serial only, quieter).
fn image_kernel_options() -> impl Iterator<Item = &'static str> {
    twinwall_image::grub::CMDLINE
        .split_whitespace()
        .filter(|o| !o.starts_with("console=") && !o.starts_with("loglevel="))
}

/// The kernel command line of a VM (pure).
pub fn kernel_cmdline(role: &VmRole, nics: usize, with_mgmt: bool, extra: &str) -> String {
    let mut c = String::from("console=ttyS0,115200n8 loglevel=4");
    for o in image_kernel_options().filter(|o| !o.starts_with("panic=")) {
        c.push(' ');
        c.push_str(o);
    }
    c.push_str(" panic=10 twinwall.slot=a");
    if let VmRole::LabHost {
        agent,
        target,
        flows,
        addresses,
        gateway,
    } = role
    {
        c.push_str(" twinwall.role=lab-host");
        for (dev, a) in addresses {
            c.push_str(&format!(" twinwall.lab.addr={dev}={a}"));
        }
        if with_mgmt {
            c.push_str(&format!(
                " twinwall.lab.addr=eth{nics}={}/{}",
                vm::MGMT_GUEST,
                vm::MGMT_PREFIX
            ));
        }
        if let Some(g) = gateway {
            c.push_str(&format!(" twinwall.lab.gw={g}"));
        }
        match agent {
            Some(AgentKind::Client) => {
                c.push_str(" twinwall.lab.agent=client");
                if let Some(t) = target {
                    c.push_str(&format!(" twinwall.lab.target={t}"));
                }
                if let Some(f) = flows {
                    c.push_str(&format!(" twinwall.lab.flows={f}"));
                }
                c.push_str(&format!(" twinwall.lab.port={AGENT_STATS_PORT}"));
            }
            Some(AgentKind::Server) => c.push_str(" twinwall.lab.agent=server"),
            None => {}
        }
    }
    if !extra.is_empty() {
        c.push(' ');
        c.push_str(extra);
    }
    c
}

impl Lab {
    /// Prepares the disks, starts the switch and boots every VM (does not wait for the
    /// guests: see [`Lab::wait_console`]).
    pub fn up(opts: &LabOptions) -> Result<Lab, LabError> {
        let plan = LabPlan::load(&opts.topology, &opts.repo)?;
        std::fs::create_dir_all(&opts.run_dir).map_err(|e| LabError::Prepare {
            step: format!("creating {}", opts.run_dir.display()),
            reason: e.to_string(),
        })?;
        let facts = match plan.vms.iter().find_map(|v| match &v.role {
            VmRole::Firewall { node } => Some(node.clone()),
            VmRole::LabHost { .. } => None,
        }) {
            Some(node) => cluster_facts(plan.config.as_deref().unwrap_or(Path::new("")), &node)?,
            None => ClusterFacts {
                vips: Vec::new(),
                advert_ms: 1000,
                preempt: false,
                priorities: BTreeMap::new(),
                mgmt: BTreeMap::new(),
            },
        };
        let priorities = plan
            .vms
            .iter()
            .filter_map(|v| match &v.role {
                VmRole::Firewall { node } => Some((v.name.clone(), *facts.priorities.get(node)?)),
                VmRole::LabHost { .. } => None,
            })
            .collect();
        let prepared = prepare(opts, &plan)?;
        let switch = RunningSwitch::start(plan.ports.clone(), opts.seed)?;
        let mut lab = Lab {
            plan,
            switch,
            vips: facts.vips,
            advert_ms: facts.advert_ms,
            preempt: facts.preempt,
            priorities,
            mgmt_ports: BTreeMap::new(),
            run_dir: opts.run_dir.clone(),
            vms: BTreeMap::new(),
            carrier_down: BTreeSet::new(),
        };
        let plans = lab.plan.vms.clone();
        for (i, v) in plans.iter().enumerate() {
            if !opts.only.is_empty() && !opts.only.iter().any(|o| o == &v.name) {
                continue;
            }
            let nics: Vec<Nic> = v
                .nics
                .iter()
                .enumerate()
                .map(|(j, n)| Nic {
                    id: n.segment.clone(),
                    mac: [0x52, 0x54, 0x00, 0x1a, i as u8, j as u8],
                    endpoint: lab.switch.endpoints()[n.port],
                    fd: Some(lab.switch.vm_socket(n.port).as_raw_fd()),
                })
                .collect();
            let mgmt = match &v.role {
                VmRole::LabHost {
                    agent: Some(AgentKind::Client),
                    ..
                } => Some(vm::MgmtNic {
                    guest: vm::MGMT_GUEST.parse().map_err(|e| LabError::Prepare {
                        step: "the lab hosts' management address".into(),
                        reason: format!("{}: {e}", vm::MGMT_GUEST),
                    })?,
                    ports: vec![AGENT_STATS_PORT],
                }),
                VmRole::LabHost { .. } => None,
                VmRole::Firewall { node } => match facts.mgmt.get(node) {
                    Some(m) => Some(mgmt_nic(&v.name, node, m, nics.len())?),
                    None => None,
                },
            };
            if let (VmRole::Firewall { .. }, Some(m)) = (&v.role, &mgmt) {
                lab.mgmt_ports.insert(v.name.clone(), m.ports[0]);
            }
            let direct = Boot::Direct {
                kernel: prepared.kernel.clone(),
                initrd: prepared.initrd.clone(),
                append: kernel_cmdline(&v.role, nics.len(), mgmt.is_some(), &opts.append),
            };
            // A firewall's disk is its own flashed copy (sparse), written in place; the
            // lab hosts share one base disk, each with a private overlay.
            let (disk, own_disk, boot) = match &v.role {
                VmRole::Firewall { .. } => (
                    prepared.firewall_disks[&v.name].clone(),
                    true,
                    if opts.direct_firewalls {
                        direct
                    } else {
                        Boot::Disk
                    },
                ),
                VmRole::LabHost { .. } => (prepared.host_disk.clone(), false, direct),
            };
            let spec = VmSpec {
                name: v.name.clone(),
                disk,
                own_disk,
                boot,
                nics,
                mgmt,
                memory_mb: opts.memory_mb,
            };
            let vm = Vm::launch(spec, &opts.run_dir.join(&v.name))?;
            lab.vms.insert(v.name.clone(), vm);
        }
        Ok(lab)
    }

    fn vm_mut(&mut self, name: &str) -> Result<&mut Vm, LabError> {
        let known = self.vms.keys().cloned().collect::<Vec<_>>().join(", ");
        self.vms.get_mut(name).ok_or_else(|| LabError::NoVm {
            name: name.to_string(),
            known,
        })
    }

    /// A VM.
    pub fn vm(&self, name: &str) -> Option<&Vm> {
        self.vms.get(name)
    }

    /// The master a healthy pair ends up with: with preemption the running firewall of
    /// the highest priority, else `None` (any one master is final).
    pub fn expected_master(&mut self) -> Option<String> {
        if !self.preempt {
            return None;
        }
        let mut best: Option<(u8, String)> = None;
        for (name, prio) in self.priorities.clone() {
            let running = self
                .vms
                .get_mut(&name)
                .is_some_and(|v| v.check_running().is_ok());
            if running && best.as_ref().is_none_or(|b| prio > b.0) {
                best = Some((prio, name));
            }
        }
        best.map(|b| b.1)
    }

    /// Waits for a console marker of a VM.
    pub fn wait_console(
        &mut self,
        name: &str,
        marker: &str,
        timeout: Duration,
    ) -> Result<(), LabError> {
        Ok(self.vm_mut(name)?.wait_console(marker, 0, timeout)?)
    }

    fn port(&self, name: &str) -> Result<PortId, LabError> {
        self.plan.port(name).ok_or_else(|| LabError::NoPort {
            name: name.to_string(),
            known: self
                .plan
                .ports
                .iter()
                .map(|p| p.name())
                .collect::<Vec<_>>()
                .join(", "),
        })
    }

    fn set_carrier(&mut self, port: PortId, up: bool) -> Result<(), LabError> {
        let spec = self.plan.ports[port].clone();
        if let Some(vm) = self.vms.get_mut(&spec.node)
            && vm.check_running().is_ok()
        {
            vm.qmp()?
                .set_link(&spec.segment, up)
                .map_err(|source| VmError::Qmp {
                    vm: spec.node.clone(),
                    source,
                })?;
        }
        if up {
            self.carrier_down.remove(&port);
        } else {
            self.carrier_down.insert(port);
        }
        Ok(())
    }

    /// Cuts a port: both directions in the switch, and (with `carrier`) the guest's
    /// carrier via QMP, as a pulled cable does. Returns the switch time of the cut.
    pub fn cut(&mut self, name: &str, carrier: bool) -> Result<u64, LabError> {
        let port = self.port(name)?;
        self.switch.core().set_cut(port, true);
        let t = self.switch.now_ms();
        if carrier {
            self.set_carrier(port, false)?;
        }
        tracing::info!(port = name, carrier, "cut");
        Ok(t)
    }

    /// Cuts one direction of a port in the switch only (the guest keeps its carrier).
    pub fn cut_one_way(&mut self, name: &str, dir: Dir) -> Result<u64, LabError> {
        let port = self.port(name)?;
        let mut core = self.switch.core();
        let mut imp = core.impairment(port, dir);
        imp.cut = true;
        core.set_impairment(port, dir, imp)?;
        drop(core);
        tracing::info!(port = name, dir = ?dir, "one-way cut");
        Ok(self.switch.now_ms())
    }

    /// Sets loss and delay of one direction of a port (keeping a cut).
    pub fn impair(
        &mut self,
        name: &str,
        dir: Dir,
        loss_pct: f64,
        delay_ms: u32,
    ) -> Result<(), LabError> {
        let port = self.port(name)?;
        let mut core = self.switch.core();
        let cut = core.impairment(port, dir).cut;
        core.set_impairment(
            port,
            dir,
            Impairment {
                cut,
                loss_pct,
                delay_ms,
            },
        )?;
        Ok(())
    }

    /// Blocks all frames between two VMs. Returns the switch time.
    pub fn partition(&mut self, a: &str, b: &str) -> Result<u64, LabError> {
        self.switch.core().partition(a, b)?;
        tracing::info!(a, b, "partition");
        Ok(self.switch.now_ms())
    }

    /// Heals one port (both directions, carrier) or, with `None`, everything: every
    /// impairment, partition and carrier. Returns the switch time.
    pub fn heal(&mut self, name: Option<&str>) -> Result<u64, LabError> {
        match name {
            Some(n) => {
                let port = self.port(n)?;
                {
                    let mut core = self.switch.core();
                    core.set_impairment(port, Dir::Rx, Impairment::default())?;
                    core.set_impairment(port, Dir::Tx, Impairment::default())?;
                }
                if self.carrier_down.contains(&port) {
                    self.set_carrier(port, true)?;
                }
            }
            None => {
                self.switch.core().heal_all();
                for p in self.carrier_down.clone() {
                    self.set_carrier(p, true)?;
                }
            }
        }
        tracing::info!(port = ?name, "heal");
        Ok(self.switch.now_ms())
    }

    /// Power cut of a VM (QMP `quit`). Returns the switch time at which the quit was
    /// sent: the guest is gone a little later (QEMU exits within milliseconds, but
    /// waiting for the exit under load took up to 100 ms, which a time taken after it
    /// would have subtracted from every takeover measured from the kill).
    pub fn kill(&mut self, name: &str) -> Result<u64, LabError> {
        self.vm_mut(name)?;
        let t = self.switch.now_ms();
        self.vm_mut(name)?.quit()?;
        tracing::info!(vm = name, "killed");
        Ok(t)
    }

    /// The client agent's stats (`reset`: and start a new window).
    pub fn traffic(&self, reset: bool) -> Result<ClientStats, LabError> {
        let addr = self.client_stats_addr().ok_or(LabError::NoClient)?;
        Ok(agent::fetch_stats(addr, reset)?)
    }

    /// Where a firewall's management API (`twinwall mgmt`) is forwarded to on the host,
    /// if its config has a management zone on the lab's management NIC; `None` as well once the VM was killed.
    pub fn mgmt_endpoint(&self, fw: &str) -> Option<SocketAddr> {
        let port = self.mgmt_ports.get(fw)?;
        let vm = self.vms.get(fw).filter(|v| !v.is_stopped())?;
        vm.forwarded(*port)
    }

    /// Each firewall's own state through its management API (`Err`: why not), by VM name.
    /// Reads without needing `&mut self`, so callers can drop a lock around the lab
    /// before the requests: use [`Lab::mgmt_endpoints`] and [`read_firewalls`].
    pub fn firewalls(&self) -> BTreeMap<String, Result<FirewallState, String>> {
        read_firewalls(&self.mgmt_endpoints())
    }

    /// Every forwarded management API, by firewall VM name.
    pub fn mgmt_endpoints(&self) -> BTreeMap<String, SocketAddr> {
        self.mgmt_ports
            .keys()
            .filter_map(|n| Some((n.clone(), self.mgmt_endpoint(n)?)))
            .collect()
    }

    /// Where the client agent's stats are forwarded to.
    pub fn client_stats_addr(&self) -> Option<SocketAddr> {
        self.vms
            .values()
            .find_map(|v| v.forwarded(AGENT_STATS_PORT))
    }

    /// Observer events since a switch time.
    pub fn observed_since(&self, ms: u64) -> Vec<Observed> {
        self.switch.core().observed_since(ms)
    }

    /// The lab's state.
    pub fn status(&mut self) -> LabStatus {
        let now = self.switch.now_ms();
        // A master is one that advertised within 3 intervals (Master_Down_Interval-ish).
        let window = u64::from(self.advert_ms) * 3 + 100;
        let core = self.switch.core();
        let masters = core.masters(now, window);
        let ports = self
            .plan
            .vms
            .iter()
            .flat_map(|v| v.nics.iter())
            .map(|n| PortStatus {
                name: self.plan.ports[n.port].name(),
                device: n.device.clone(),
                counters: core.counters(n.port),
                rx: core.impairment(n.port, Dir::Rx),
                tx: core.impairment(n.port, Dir::Tx),
                carrier: !self.carrier_down.contains(&n.port),
            })
            .collect();
        let vips: Vec<VipStatus> = self
            .vips
            .iter()
            .map(|v| {
                let claim = match v.address.addr() {
                    IpAddr::V4(a) => core.claim(a),
                    IpAddr::V6(_) => None,
                };
                VipStatus {
                    address: v.address.addr(),
                    vrid: v.vrid,
                    segment: v.zone.clone(),
                    holder: claim.as_ref().map(|c| c.0.clone()),
                    since_ms: claim.map(|c| c.1),
                    masters: masters
                        .iter()
                        .filter(|m| m.0 == v.zone && m.1 == v.vrid)
                        .map(|m| m.2.clone())
                        .collect(),
                }
            })
            .collect();
        let split_brain = vips.iter().any(|v| v.masters.len() > 1);
        let mut vip_holders: Vec<String> = vips
            .iter()
            .flat_map(|v| v.masters.iter())
            .map(|p| p.split(':').next().unwrap_or_default().to_string())
            .collect();
        vip_holders.sort();
        vip_holders.dedup();
        let partitions = core.partitions();
        drop(core);
        let vms = self
            .vms
            .iter_mut()
            .map(|(name, vm)| VmStatus {
                name: name.clone(),
                role: self
                    .plan
                    .vm(name)
                    .map(|p| p.role.clone())
                    .unwrap_or(VmRole::LabHost {
                        agent: None,
                        target: None,
                        flows: None,
                        addresses: Vec::new(),
                        gateway: None,
                    }),
                running: vm.check_running().is_ok(),
                console: vm.console_path(),
            })
            .collect();
        LabStatus {
            topology: self.plan.name.clone(),
            now_ms: now,
            vms,
            ports,
            partitions,
            vips,
            split_brain,
            vip_holders,
            mgmt: self.mgmt_endpoints(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_host_command_line_carries_addresses_agent_and_mgmt() {
        let role = VmRole::LabHost {
            agent: Some(AgentKind::Client),
            target: Some("203.0.113.254:7000".parse().unwrap()),
            flows: None,
            addresses: vec![("eth0".into(), "198.51.100.10/24".parse().unwrap())],
            gateway: Some("198.51.100.1".parse().unwrap()),
        };
        assert_eq!(
            kernel_cmdline(&role, 1, true, ""),
            "console=ttyS0,115200n8 loglevel=4 cryptomgr.notests no_timer_check mitigations=off \
             panic=10 twinwall.slot=a twinwall.role=lab-host \
             twinwall.lab.addr=eth0=198.51.100.10/24 twinwall.lab.addr=eth1=192.0.2.80/26 \
             twinwall.lab.gw=198.51.100.1 twinwall.lab.agent=client \
             twinwall.lab.target=203.0.113.254:7000 twinwall.lab.port=7001"
        );
        let fw = VmRole::Firewall {
            node: "lj-fw-1".into(),
        };
        assert_eq!(
            kernel_cmdline(&fw, 3, false, "x=1"),
            "console=ttyS0,115200n8 loglevel=4 cryptomgr.notests no_timer_check mitigations=off \
             panic=10 twinwall.slot=a x=1"
        );
        // Every option of the GRUB entry but the console and log level is in it.
        let direct = kernel_cmdline(&fw, 3, false, "");
        for o in image_kernel_options() {
            assert!(direct.split(' ').any(|d| d == o), "{o} missing: {direct}");
        }
    }

    /// The lab's variant must not drift from the fixture: it is seed-pair.toml plus the
    /// management zone (nodes' `mgmt` interfaces and `[management]`) and the merged
    /// client-echo run, nothing else.
    #[test]
    fn the_lab_variant_is_the_fixture_plus_a_management_zone_and_a_merged_run() {
        let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let read = |p: PathBuf| -> toml::Table {
            toml::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
        };
        let fixture = read(repo.join("../shared/examples/seed-pair.toml"));
        let mut variant = read(repo.join("testkit/topologies/seed-pair/cluster.toml"));
        let mgmt = variant.remove("management").expect("[management]");
        assert_eq!(
            mgmt["interfaces"].as_array().unwrap()[0].as_str(),
            Some("mgmt")
        );
        for (_, node) in variant["nodes"].as_table_mut().unwrap().iter_mut() {
            let ifs = node["interfaces"].as_table_mut().unwrap();
            assert_eq!(ifs.remove("mgmt").unwrap()["device"].as_str(), Some("eth3"));
        }
        // The lab's echo traffic crosses a merged run (client-echo-7000..7003, over the
        // echo_7000..echo_7003 services), so the lab can read a merged element's counter.
        let services = variant["objects"]["services"].as_table_mut().unwrap();
        for p in 7000..=7003 {
            assert!(services.remove(&format!("echo_{p}")).is_some(), "echo_{p}");
        }
        let rules = variant["policy"]["rule"].as_array_mut().unwrap();
        let before = rules.len();
        rules.retain(|r| !r["name"].as_str().unwrap().starts_with("client-echo-"));
        assert_eq!(before - rules.len(), 4, "the client-echo-7000..7003 run");
        assert_eq!(variant, fixture);
    }

    /// The variant's ruleset lets the management port in on the management zone (and the
    /// sync link, always), never on inside or outside.
    #[test]
    fn the_variant_opens_the_management_port_on_the_mgmt_zone_only() {
        let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let cfg =
            twinwall_config::load(&repo.join("testkit/topologies/seed-pair/cluster.toml")).unwrap();
        let view = cfg.node_view("lj-fw-1").unwrap();
        let script = twinwall_ruleset::compile(&view, &twinwall_ruleset::Options::default())
            .unwrap()
            .text;
        let rules: Vec<&str> = script
            .lines()
            .filter(|l| l.contains("dport 9780"))
            .collect();
        let input: Vec<&&str> = rules.iter().filter(|l| l.contains("iifname")).collect();
        // One rule per zone, each with that zone's own subnet only.
        assert_eq!(input.len(), 2, "{rules:?}");
        let mgmt = input.iter().find(|l| l.contains("\"eth3\"")).unwrap();
        assert!(mgmt.contains("192.0.2.64/26"), "{mgmt}");
        assert!(
            !mgmt.contains("eth2") && !mgmt.contains("192.0.2.0/30"),
            "{mgmt}"
        );
        let sync = input.iter().find(|l| l.contains("\"eth2\"")).unwrap();
        assert!(
            !sync.contains("eth3") && !sync.contains("192.0.2.64/26"),
            "{sync}"
        );
        for l in &input {
            assert!(!l.contains("eth0") && !l.contains("eth1"), "{l}");
        }
    }

    #[test]
    fn a_management_zone_becomes_the_nic_after_the_data_nics() {
        let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let plan = LabPlan::load(&repo.join("testkit/topologies/seed-pair"), &repo).unwrap();
        let f = cluster_facts(&plan.config.unwrap(), "lj-fw-1").unwrap();
        let m1 = &f.mgmt["lj-fw-1"];
        assert_eq!(
            (m1.device.as_str(), m1.address.to_string(), m1.port),
            ("eth3", "192.0.2.81".to_string(), 9780)
        );
        assert_eq!(f.mgmt["lj-fw-2"].address.to_string(), "192.0.2.82");
        let nic = mgmt_nic("fw1", "lj-fw-1", m1, 3).unwrap();
        assert_eq!((nic.guest, nic.ports), (m1.address, vec![9780]));
        let e = mgmt_nic("fw1", "lj-fw-1", m1, 2).unwrap_err().to_string();
        assert!(
            e.contains("fw1") && e.contains("eth3") && e.contains("eth2"),
            "{e}"
        );
        let off = MgmtAddr {
            address: "10.9.9.9".parse().unwrap(),
            ..m1.clone()
        };
        let e = mgmt_nic("fw1", "lj-fw-1", &off, 3).unwrap_err().to_string();
        assert!(e.contains("10.9.9.9") && e.contains("192.0.2.64/26"), "{e}");
        assert_eq!(f.priorities["lj-fw-1"], 200);
        assert!(f.preempt);
    }

    #[test]
    fn the_seed_pair_vips_come_from_the_cluster_config() {
        let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let plan = LabPlan::load(&repo.join("testkit/topologies/seed-pair"), &repo).unwrap();
        let (vips, advert) = cluster_vips(&plan.config.unwrap(), "lj-fw-1").unwrap();
        assert_eq!(advert, 100);
        let v: Vec<(u8, &str, String)> = vips
            .iter()
            .map(|v| (v.vrid, v.zone.as_str(), v.address.to_string()))
            .collect();
        assert_eq!(
            v,
            [
                (51, "outside", "203.0.113.1/24".to_string()),
                (52, "inside", "198.51.100.1/24".to_string())
            ]
        );
    }
}
