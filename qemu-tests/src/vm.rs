//! The VM launcher: one QEMU process per lab node, TCG only unless `TWINWALL_LAB_KVM=1`,
//! a disk that is either the VM's own (a sparse flashed file written in place, so an OS
//! update, the grubenv and the config partition survive a reboot, as on hardware) or a
//! shared base opened with `snapshot=on` (QEMU keeps a private qcow2 overlay, the base is
//! never written), the serial console captured to a file,
//! a QMP socket, every data NIC a `-netdev dgram` endpoint of the lab switch (QEMU
//! inherits the switch's already bound VM-side socket as an fd, so no port can be taken
//! by another process between the lab choosing it and QEMU starting), and an
//! optional management NIC (`-netdev user,restrict=on`) whose only use is to forward
//! loopback ports to guest services. QEMU binds each forward's host port itself (port 0)
//! and the lab reads the port back over QMP (`info usernet`): a port reserved by the lab
//! and bound later by QEMU could be taken by another process in between.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::qmp::{Qmp, QmpError};
use crate::switch::io::Endpoint;

/// Environment variable that opts in to KVM (it does not work on the project machines).
pub const KVM_ENV: &str = "TWINWALL_LAB_KVM";

/// Environment variable choosing QEMU's machine type for the lab VMs: `pc` (i440FX) or
/// `q35` (see [`DEFAULT_MACHINE`]).
pub const MACHINE_ENV: &str = "TWINWALL_LAB_MACHINE";

/// The machine type when [`MACHINE_ENV`] is not set.
pub const DEFAULT_MACHINE: &str = "pc";

/// Environment variable: the nice value the lab's QEMU processes start with (every
/// thread inherits it; below 0 needs root). Unset: the lab's own.
pub const NICE_ENV: &str = "TWINWALL_LAB_NICE";

/// The machine type of the lab VMs ([`MACHINE_ENV`], else [`DEFAULT_MACHINE`]).
pub fn machine() -> String {
    std::env::var(MACHINE_ENV)
        .ok()
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| DEFAULT_MACHINE.to_string())
}

/// The nice value asked for by [`NICE_ENV`], if any (an unparsable value is ignored
/// with a warning).
pub fn nice() -> Option<i32> {
    let v = std::env::var(NICE_ENV).ok()?;
    match v.trim().parse() {
        Ok(n) => Some(n),
        Err(_) => {
            tracing::warn!(value = %v, "{NICE_ENV} is not a number; ignored");
            None
        }
    }
}

/// The slirp network of management NICs: a documentation range, private to each QEMU
/// (`restrict=on`: nothing is routed out of it).
pub const MGMT_NET: &str = "192.0.2.64/26";
/// The lab hosts' address on the management NIC (what `hostfwd` forwards to).
pub const MGMT_GUEST: &str = "192.0.2.80";
/// Prefix length of [`MGMT_NET`].
pub const MGMT_PREFIX: u8 = 26;

/// Errors of launching or controlling a VM, naming the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// The run directory could not be prepared.
    #[error("vm {vm}: {what} {path}: {source}")]
    Fs {
        /// VM name.
        vm: String,
        /// What was attempted.
        what: &'static str,
        /// Path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// QEMU could not be started.
    #[error("vm {vm}: cannot start qemu-system-x86_64 (scripts/deps.sh installs it): {source}")]
    Spawn {
        /// VM name.
        vm: String,
        /// Cause.
        source: std::io::Error,
    },
    /// QEMU exited on its own.
    #[error("vm {vm}: QEMU exited ({status}); see {log}")]
    Exited {
        /// VM name.
        vm: String,
        /// Exit status.
        status: String,
        /// QEMU's stderr log.
        log: PathBuf,
    },
    /// A console marker did not appear.
    #[error("vm {vm}: console never showed {marker:?} within {secs} s; see {console}")]
    Timeout {
        /// VM name.
        vm: String,
        /// The marker.
        marker: String,
        /// The limit.
        secs: u64,
        /// Console file.
        console: PathBuf,
    },
    /// A forwarded port could not be read back from QEMU.
    #[error(
        "vm {vm}: no host port for the forward to guest port {guest_port} in `info usernet`: {usernet}"
    )]
    NoForward {
        /// VM name.
        vm: String,
        /// The guest port.
        guest_port: u16,
        /// What QEMU listed.
        usernet: String,
    },
    /// QMP failed.
    #[error("vm {vm}: {source}")]
    Qmp {
        /// VM name.
        vm: String,
        /// Cause.
        source: QmpError,
    },
}

/// How the VM boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Boot {
    /// Firmware and GRUB from the disk.
    Disk,
    /// `-kernel/-initrd/-append` (the kernel and initramfs of the built slot); root and
    /// config still come from the disk.
    Direct {
        /// The kernel.
        kernel: PathBuf,
        /// The initramfs.
        initrd: PathBuf,
        /// The kernel command line.
        append: String,
    },
}

/// One data NIC: its QEMU id (used by QMP `set_link`), MAC and switch endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    /// netdev and device id, e.g. `inside`.
    pub id: String,
    /// MAC address.
    pub mac: [u8; 6],
    /// The switch port it talks to.
    pub endpoint: Endpoint,
    /// The switch's VM-side socket of that port (`RunningSwitch::vm_socket`), inherited
    /// by QEMU under the same number; `None`: QEMU binds [`Endpoint::vm`] itself.
    pub fd: Option<i32>,
}

/// The management NIC: a restricted user-mode network whose only use is forwarding
/// loopback ports of the host to guest services.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MgmtNic {
    /// The guest's address on it (in [`MGMT_NET`]).
    pub guest: Ipv4Addr,
    /// Guest TCP ports reachable from the host (each on a port QEMU picks).
    pub ports: Vec<u16>,
}

/// Everything needed to start one VM.
#[derive(Debug, Clone)]
pub struct VmSpec {
    /// Lab name, e.g. `fw1`.
    pub name: String,
    /// Disk image (raw).
    pub disk: PathBuf,
    /// The disk is this VM's own and is written in place (zeroes stay holes); else it is
    /// a shared base opened with `snapshot=on` (writes go to a private overlay that
    /// QEMU discards when it exits).
    pub own_disk: bool,
    /// Boot method.
    pub boot: Boot,
    /// Data NICs in guest order (`eth0`, `eth1`, ...).
    pub nics: Vec<Nic>,
    /// The management NIC, after the data NICs (`None`: none).
    pub mgmt: Option<MgmtNic>,
    /// Guest memory in MiB.
    pub memory_mb: u32,
}

impl VmSpec {
    /// The QEMU argument list (without the program), given the run directory's files.
    pub fn qemu_args(&self, qmp: &Path, console: &Path) -> Vec<String> {
        let kvm = std::env::var(KVM_ENV).is_ok_and(|v| v == "1");
        let mut a: Vec<String> = [
            "-name",
            &self.name,
            "-accel",
            if kvm { "kvm" } else { "tcg" },
            "-machine",
            &machine(),
            "-m",
            &self.memory_mb.to_string(),
            "-smp",
            "1",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.push("-serial".into());
        a.push(format!("file:{}", console.display()));
        a.push("-qmp".into());
        a.push(format!("unix:{},server=on,wait=off", qmp.display()));
        a.push("-drive".into());
        a.push(if self.own_disk {
            format!(
                "file={},format=raw,if=virtio,discard=unmap,detect-zeroes=unmap",
                self.disk.display()
            )
        } else {
            format!(
                "file={},format=raw,if=virtio,snapshot=on",
                self.disk.display()
            )
        });
        if let Boot::Direct {
            kernel,
            initrd,
            append,
        } = &self.boot
        {
            a.extend([
                "-kernel".into(),
                kernel.display().to_string(),
                "-initrd".into(),
                initrd.display().to_string(),
                "-append".into(),
                append.clone(),
            ]);
        }
        // Fixed PCI slots in NIC order, so the guest names them eth0, eth1, ... in the
        // order of the spec whatever QEMU's default slot allocation does.
        for (i, nic) in self.nics.iter().enumerate() {
            a.push("-netdev".into());
            a.push(format!(
                "dgram,id={},{}",
                nic.id,
                match nic.fd {
                    Some(fd) => Endpoint::qemu_netdev_fd(fd),
                    None => nic.endpoint.qemu_netdev(),
                }
            ));
            a.push("-device".into());
            a.push(format!(
                "virtio-net-pci,netdev={id},id={id},mac={mac},addr={slot:#x},romfile=",
                id = nic.id,
                mac = mac_string(&nic.mac),
                slot = 0x10 + i
            ));
        }
        if let Some(m) = &self.mgmt {
            let mut user = format!("user,id=mgmt,restrict=on,net={MGMT_NET}");
            for guest in &m.ports {
                user.push_str(&format!(",hostfwd=tcp:127.0.0.1:0-{}:{guest}", m.guest));
            }
            a.push("-netdev".into());
            a.push(user);
            a.push("-device".into());
            a.push(format!(
                "virtio-net-pci,netdev=mgmt,id=mgmt,addr={:#x},romfile=",
                0x10 + self.nics.len()
            ));
        }
        a
    }
}

/// `52:54:00:..` style text of a MAC.
pub fn mac_string(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The host ports of `info usernet`'s `TCP[HOST_FORWARD]` lines, by guest port (pure).
pub fn parse_usernet_forwards(text: &str) -> BTreeMap<u16, u16> {
    // Columns: Protocol[State] FD SourceAddress Port DestAddress Port RecvQ SendQ.
    text.lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            if w.first() != Some(&"TCP[HOST_FORWARD]") || w.len() < 6 {
                return None;
            }
            Some((w[5].parse().ok()?, w[3].parse().ok()?))
        })
        .collect()
}

/// A running VM; QEMU is killed on drop.
#[derive(Debug)]
pub struct Vm {
    /// The spec it was started from.
    pub spec: VmSpec,
    /// Its files: `console.log`, `qmp.sock`, `qemu.log`.
    pub dir: PathBuf,
    child: Option<Child>,
    /// Host port per forwarded guest port, as QEMU bound them.
    forwards: BTreeMap<u16, u16>,
}

impl Vm {
    /// Starts QEMU for `spec` with its files in `dir`.
    pub fn launch(spec: VmSpec, dir: &Path) -> Result<Vm, VmError> {
        let fs = |what, path: &Path| {
            let vm = spec.name.clone();
            let path = path.to_path_buf();
            move |source| VmError::Fs {
                vm,
                what,
                path,
                source,
            }
        };
        std::fs::create_dir_all(dir).map_err(fs("create", dir))?;
        let qmp = dir.join("qmp.sock");
        let console = dir.join("console.log");
        let _ = std::fs::remove_file(&qmp);
        let log = dir.join("qemu.log");
        let stderr = std::fs::File::create(&log).map_err(fs("create", &log))?;
        let args = spec.qemu_args(&qmp, &console);
        tracing::info!(vm = %spec.name, args = %args.join(" "), "starting QEMU");
        std::fs::write(dir.join("qemu.args"), args.join("\n")).map_err(fs("write", dir))?;
        let mut cmd = Command::new("qemu-system-x86_64");
        let fds: Vec<i32> = spec.nics.iter().filter_map(|n| n.fd).collect();
        if !fds.is_empty() {
            // std opens every fd close-on-exec; only the forked child clears the flag on
            // the NIC sockets, so no other child of the lab inherits them. Hand-written:
            // one fcntl per fd does not justify a crate.
            // SAFETY: the closure runs between fork and exec and only calls fcntl(2),
            // which is async-signal-safe, on fds this process owns (the switch holds them
            // for the lab's lifetime); it allocates nothing and takes no lock.
            unsafe {
                cmd.pre_exec(move || {
                    for &fd in &fds {
                        if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    Ok(())
                });
            }
        }
        let nice = nice();
        if let Some(n) = nice {
            // Set between fork and exec so that every QEMU thread (the vCPU's included)
            // inherits it; a refusal (not root) leaves it unchanged and is logged below.
            // SAFETY: setpriority(2) on the calling process is a plain system call,
            // async-signal-safe; the closure allocates nothing and takes no lock.
            unsafe {
                cmd.pre_exec(move || {
                    libc::setpriority(libc::PRIO_PROCESS, 0, n);
                    Ok(())
                });
            }
        }
        let child = cmd
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|source| VmError::Spawn {
                vm: spec.name.clone(),
                source,
            })?;
        if let Some(n) = nice {
            // SAFETY: getpriority(2) only reads the scheduling priority of our child.
            let got = unsafe { libc::getpriority(libc::PRIO_PROCESS, child.id()) };
            if got != n {
                tracing::warn!(vm = %spec.name, asked = n, got, "QEMU's nice value not applied (needs root below 0)");
            } else {
                tracing::info!(vm = %spec.name, nice = n, "QEMU runs at this nice value");
            }
        }
        let mut vm = Vm {
            spec,
            dir: dir.to_path_buf(),
            child: Some(child),
            forwards: BTreeMap::new(),
        };
        vm.read_forwards()?;
        Ok(vm)
    }

    /// Asks QEMU which host ports it bound for the management forwards.
    fn read_forwards(&mut self) -> Result<(), VmError> {
        let Some(m) = self.spec.mgmt.clone() else {
            return Ok(());
        };
        let qmp_err = |vm: &str| {
            let vm = vm.to_string();
            move |source| VmError::Qmp { vm, source }
        };
        let mut qmp = match self.qmp() {
            Ok(q) => q,
            Err(e) => {
                // QEMU that exited at start (a port in use, a bad option) says so.
                self.check_running()?;
                return Err(e);
            }
        };
        let text = qmp
            .execute(
                "human-monitor-command",
                serde_json::json!({ "command-line": "info usernet" }),
            )
            .map_err(qmp_err(&self.spec.name))?;
        let text = text.as_str().unwrap_or_default().to_string();
        let found = parse_usernet_forwards(&text);
        for guest_port in &m.ports {
            let Some(host) = found.get(guest_port) else {
                return Err(VmError::NoForward {
                    vm: self.spec.name.clone(),
                    guest_port: *guest_port,
                    usernet: text.trim().to_string(),
                });
            };
            self.forwards.insert(*guest_port, *host);
        }
        tracing::info!(vm = %self.spec.name, forwards = ?self.forwards, "host ports of the forwards");
        Ok(())
    }

    /// The console file.
    pub fn console_path(&self) -> PathBuf {
        self.dir.join("console.log")
    }

    /// The console so far (lossy UTF-8).
    pub fn console(&self) -> String {
        std::fs::read(self.console_path())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// A QMP session.
    pub fn qmp(&self) -> Result<Qmp, VmError> {
        Qmp::connect(&self.dir.join("qmp.sock"), Duration::from_secs(10)).map_err(|source| {
            VmError::Qmp {
                vm: self.spec.name.clone(),
                source,
            }
        })
    }

    /// Whether QEMU still runs; an exit is returned as [`VmError::Exited`].
    pub fn check_running(&mut self) -> Result<(), VmError> {
        let Some(child) = self.child.as_mut() else {
            return Err(self.exited("stopped".into()));
        };
        match child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(st)) => Err(self.exited(st.to_string())),
            Err(e) => Err(self.exited(e.to_string())),
        }
    }

    fn exited(&self, status: String) -> VmError {
        VmError::Exited {
            vm: self.spec.name.clone(),
            status,
            log: self.dir.join("qemu.log"),
        }
    }

    /// Waits until the console contains `marker` (after byte offset `from`).
    pub fn wait_console(
        &mut self,
        marker: &str,
        from: usize,
        timeout: Duration,
    ) -> Result<(), VmError> {
        let start = Instant::now();
        loop {
            if self
                .console()
                .get(from..)
                .is_some_and(|t| t.contains(marker))
            {
                return Ok(());
            }
            self.check_running()?;
            if start.elapsed() >= timeout {
                return Err(VmError::Timeout {
                    vm: self.spec.name.clone(),
                    marker: marker.to_string(),
                    secs: timeout.as_secs(),
                    console: self.console_path(),
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The loopback address forwarded to guest port `guest`, if any.
    pub fn forwarded(&self, guest: u16) -> Option<SocketAddr> {
        self.forwards
            .get(&guest)
            .map(|h| SocketAddr::from(([127, 0, 0, 1], *h)))
    }

    /// Power cut: QMP `quit`, then reap (kill if QEMU does not exit).
    pub fn quit(&mut self) -> Result<(), VmError> {
        if let Ok(mut q) = self.qmp() {
            let _ = q.quit();
        }
        if let Some(mut c) = self.child.take() {
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(5) {
                if c.try_wait().ok().flatten().is_some() {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        Ok(())
    }

    /// Whether the process is gone.
    pub fn is_stopped(&self) -> bool {
        self.child.is_none()
    }

    /// QEMU's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_is_tcg_with_dgram_nics_in_slot_order_and_restricted_mgmt() {
        let ep = |p: u16| Endpoint {
            switch: SocketAddr::from(([127, 0, 0, 1], p)),
            vm: SocketAddr::from(([127, 0, 0, 1], p + 1)),
        };
        let spec = VmSpec {
            name: "fw1".into(),
            disk: "/x/fw1.img".into(),
            own_disk: false,
            boot: Boot::Direct {
                kernel: "/b/vmlinuz".into(),
                initrd: "/b/initrd.img".into(),
                append: "console=ttyS0".into(),
            },
            nics: vec![
                Nic {
                    id: "outside".into(),
                    mac: [0x52, 0x54, 0, 0, 1, 0],
                    endpoint: ep(4000),
                    fd: None,
                },
                Nic {
                    id: "inside".into(),
                    mac: [0x52, 0x54, 0, 0, 1, 1],
                    endpoint: ep(4010),
                    fd: Some(17),
                },
            ],
            mgmt: Some(MgmtNic {
                guest: "192.0.2.81".parse().unwrap(),
                ports: vec![7001, 9780],
            }),
            memory_mb: 256,
        };
        let a = spec.qemu_args(Path::new("/r/qmp.sock"), Path::new("/r/console.log"));
        let s = a.join(" ");
        if std::env::var(KVM_ENV).is_err() {
            assert!(s.contains("-accel tcg"), "{s}");
        }
        assert!(s.contains(&format!("-machine {}", machine())), "{s}");
        assert!(s.contains("file=/x/fw1.img,format=raw,if=virtio,snapshot=on"));
        assert!(s.contains(
            "dgram,id=outside,local.type=inet,local.host=127.0.0.1,local.port=4001,\
             remote.type=inet,remote.host=127.0.0.1,remote.port=4000"
        ));
        assert!(
            s.contains("virtio-net-pci,netdev=outside,id=outside,mac=52:54:00:00:01:00,addr=0x10")
        );
        assert!(
            s.contains("dgram,id=inside,local.type=fd,local.str=17 "),
            "{s}"
        );
        assert!(s.contains("netdev=inside,id=inside,mac=52:54:00:00:01:01,addr=0x11"));
        assert!(s.contains(
            "user,id=mgmt,restrict=on,net=192.0.2.64/26,hostfwd=tcp:127.0.0.1:0-192.0.2.81:7001,\
             hostfwd=tcp:127.0.0.1:0-192.0.2.81:9780"
        ));
        assert!(s.contains("netdev=mgmt,id=mgmt,addr=0x12,romfile="));
        assert!(s.contains("-serial file:/r/console.log"));
        assert!(s.contains("-qmp unix:/r/qmp.sock,server=on,wait=off"));
        assert!(s.contains("-kernel /b/vmlinuz -initrd /b/initrd.img -append console=ttyS0"));
        assert!(
            !s.contains("-no-reboot"),
            "a guest reboot must stay in QEMU: {s}"
        );

        // A firewall boots firmware + GRUB from its own disk, written in place.
        let fw = VmSpec {
            own_disk: true,
            boot: Boot::Disk,
            ..spec
        };
        let s = fw
            .qemu_args(Path::new("/r/qmp.sock"), Path::new("/r/console.log"))
            .join(" ");
        assert!(
            s.contains("file=/x/fw1.img,format=raw,if=virtio,discard=unmap,detect-zeroes=unmap"),
            "{s}"
        );
        assert!(
            !s.contains("snapshot") && !s.contains("-kernel") && !s.contains("-no-reboot"),
            "{s}"
        );
    }

    #[test]
    fn usernet_listing_gives_the_host_port_of_each_forward() {
        // What QEMU 7.2 answers to `info usernet` (two forwards bound to port 0).
        let text = "Hub -1 (m):\r\n  Protocol[State]    FD  Source Address  Port   Dest. Address  Port RecvQ SendQ\r\n  TCP[HOST_FORWARD]  11       127.0.0.1 38207      192.0.2.80  7001     0     0\r\n  TCP[HOST_FORWARD]   9       127.0.0.1 37449      192.0.2.80  9780     0     0\r\n  TCP[ESTABLISHED]   12       127.0.0.1 40000      192.0.2.80  7001     0     0\r\n";
        let f = parse_usernet_forwards(text);
        assert_eq!(f, BTreeMap::from([(7001, 38207), (9780, 37449)]));
    }
}
