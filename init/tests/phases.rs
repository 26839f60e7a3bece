//! Boot phases against the recording syscalls: order, arguments, and the failure of each
//! step (a failed mount names its target, a missing module names it, a missing slot
//! names its label), plus the whole boot's phase order.

use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::MsFlags;
use twinwall_init::cmdline::Cmdline;
use twinwall_init::pid1::{self, BootError, BootOptions};
use twinwall_init::status::{Mode, Shared, Status};
use twinwall_init::storage::{self, Root, StorageError};
use twinwall_init::sys::{Call, RecordingSyscalls};
use twinwall_init::trust::{BundleVerifier, VerifiedBundle};
use twinwall_init::{early, modules};

fn mounts(sys: &RecordingSyscalls) -> Vec<(String, String, Option<String>)> {
    sys.calls_of("mount")
        .into_iter()
        .map(|c| match c {
            Call::Mount {
                source,
                target,
                fstype,
                ..
            } => (source, target.display().to_string(), fstype),
            _ => unreachable!(),
        })
        .collect()
}

fn with_cmdline(cmdline: &str) -> RecordingSyscalls {
    RecordingSyscalls::new().with_file("/proc/cmdline", cmdline)
}

#[test]
fn early_mounts_kernel_filesystems_in_order_and_reads_the_cmdline() {
    let sys = with_cmdline("console=ttyS0 twinwall.slot=a\n");
    let c = early::run(&sys).unwrap();
    assert_eq!(c.slot.as_deref(), Some("a"));
    let m = mounts(&sys);
    let targets: Vec<&str> = m.iter().map(|(_, t, _)| t.as_str()).collect();
    assert_eq!(
        targets,
        ["/proc", "/sys", "/dev", "/dev/pts", "/run", "/tmp"]
    );
    assert_eq!(
        m[2],
        ("devtmpfs".into(), "/dev".into(), Some("devtmpfs".into()))
    );
    // Arguments: /proc is nosuid,nodev,noexec; /tmp is world-writable sticky.
    let calls = sys.calls_of("mount");
    let Call::Mount { flags, .. } = &calls[0] else {
        unreachable!()
    };
    let want = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    assert_eq!(*flags, want.bits());
    let Call::Mount { data, .. } = &calls[5] else {
        unreachable!()
    };
    assert_eq!(data.as_deref(), Some("mode=1777"));
    // Each mount point is created before it is mounted on.
    let all = sys.calls();
    let mkdir_proc = all
        .iter()
        .position(|c| matches!(c, Call::MkdirAll { path, .. } if path == Path::new("/proc")));
    let mount_proc = all.iter().position(|c| c.kind() == "mount");
    assert!(mkdir_proc < mount_proc);
}

#[test]
fn early_failed_mount_names_the_target() {
    let sys = with_cmdline("").fail("mount", "/sys", Errno::EPERM);
    let err = early::run(&sys).unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot mount sysfs on /sys: EPERM: Operation not permitted"
    );
    // Nothing after the failed step was attempted.
    assert!(!mounts(&sys).iter().any(|(_, t, _)| t == "/dev"));
}

#[test]
fn early_accepts_a_devtmpfs_the_kernel_already_mounted() {
    let sys = with_cmdline("").fail("mount", "/dev", Errno::EBUSY);
    early::run(&sys).unwrap();
    assert_eq!(mounts(&sys).len(), 6);
}

#[test]
fn early_unreadable_cmdline_is_an_error() {
    let sys = RecordingSyscalls::new();
    let err = early::run(&sys).unwrap_err();
    assert!(
        err.to_string().starts_with("cannot read /proc/cmdline"),
        "{err}"
    );
}

fn module_sys(list: &str) -> RecordingSyscalls {
    RecordingSyscalls::new()
        .with_file("/lib/modules/twinwall.modules", list)
        .with_file("/proc/sys/kernel/osrelease", "6.1.0-50-cloud-amd64\n")
        .with_file(
            "/lib/modules/6.1.0-50-cloud-amd64/kernel/drivers/virtio/virtio.ko",
            "",
        )
        .with_file(
            "/lib/modules/6.1.0-50-cloud-amd64/kernel/drivers/virtio/virtio_ring.ko",
            "",
        )
        .with_file("/opt/extra/nf_tables.ko", "")
}

#[test]
fn modules_load_in_list_order_already_loaded_and_absent_hardware_are_fine() {
    let sys = module_sys(
        "# generated from modules.dep\nkernel/drivers/virtio/virtio_ring.ko\n\n\
         kernel/drivers/virtio/virtio.ko\n/opt/extra/nf_tables.ko\n",
    )
    .fail("finit_module", "/opt/extra/nf_tables.ko", Errno::EEXIST)
    .fail(
        "finit_module",
        "/lib/modules/6.1.0-50-cloud-amd64/kernel/drivers/virtio/virtio.ko",
        Errno::ENODEV,
    );
    let done = modules::run(&sys, Path::new(modules::DEFAULT_LIST)).unwrap();
    assert_eq!(done.loaded, ["virtio_ring"]);
    assert_eq!(done.already, ["nf_tables"]);
    // Hardware or CPU feature absent (crc32c-intel under TCG): skipped, not fatal.
    assert_eq!(done.not_applicable, ["virtio"]);
    let paths: Vec<PathBuf> = sys
        .calls_of("finit_module")
        .into_iter()
        .map(|c| match c {
            Call::FinitModule { path, .. } => path,
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(
        paths,
        [
            PathBuf::from("/lib/modules/6.1.0-50-cloud-amd64/kernel/drivers/virtio/virtio_ring.ko"),
            PathBuf::from("/lib/modules/6.1.0-50-cloud-amd64/kernel/drivers/virtio/virtio.ko"),
            PathBuf::from("/opt/extra/nf_tables.ko"),
        ]
    );
}

#[test]
fn a_missing_module_is_named() {
    let sys = module_sys("kernel/drivers/virtio/virtio.ko\nkernel/net/netfilter/nf_conntrack.ko\n");
    let err = modules::run(&sys, Path::new(modules::DEFAULT_LIST)).unwrap_err();
    let msg = err.to_string();
    assert!(msg.starts_with("module nf_conntrack is missing"), "{msg}");
    assert!(
        msg.contains("kernel/net/netfilter/nf_conntrack.ko"),
        "{msg}"
    );
    assert!(msg.contains("/lib/modules/twinwall.modules"), "{msg}");
}

#[test]
fn a_module_the_kernel_refuses_is_named_with_the_errno() {
    let sys = module_sys("kernel/drivers/virtio/virtio.ko\n").fail(
        "finit_module",
        "/lib/modules/6.1.0-50-cloud-amd64/kernel/drivers/virtio/virtio.ko",
        Errno::ENOEXEC,
    );
    let err = modules::run(&sys, Path::new(modules::DEFAULT_LIST)).unwrap_err();
    assert!(
        err.to_string().starts_with("cannot load module virtio ("),
        "{err}"
    );
    assert!(err.to_string().contains("ENOEXEC"), "{err}");
}

#[test]
fn a_missing_module_list_is_named() {
    let sys = RecordingSyscalls::new();
    let err = modules::run(&sys, Path::new("/lib/modules/twinwall.modules")).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("cannot read module list /lib/modules/twinwall.modules"),
        "{err}"
    );
}

/// A fake /sys/class/block: a GPT disk vda with the twinwall labels, a CD, a loop device.
fn fake_sysfs(sys: RecordingSyscalls) -> RecordingSyscalls {
    let b = "/sys/class/block";
    let dev = |name: &str, ty: &str, label: Option<&str>| {
        let mut s = format!("MAJOR=254\nMINOR=0\nDEVNAME={name}\nDEVTYPE={ty}\n");
        if let Some(l) = label {
            s.push_str(&format!("PARTN=1\nPARTNAME={l}\n"));
        }
        s
    };
    sys.with_file(format!("{b}/vda/uevent"), dev("vda", "disk", None))
        .with_file(
            format!("{b}/vda1/uevent"),
            dev("vda1", "partition", Some("bios-boot")),
        )
        .with_file(
            format!("{b}/vda2/uevent"),
            dev("vda2", "partition", Some("esp")),
        )
        .with_file(
            format!("{b}/vda3/uevent"),
            dev("vda3", "partition", Some("slot-a")),
        )
        .with_file(
            format!("{b}/vda4/uevent"),
            dev("vda4", "partition", Some("slot-b")),
        )
        .with_file(
            format!("{b}/vda5/uevent"),
            dev("vda5", "partition", Some("config")),
        )
        .with_file(
            format!("{b}/vda6/uevent"),
            dev("vda6", "partition", Some("data")),
        )
        .with_file(format!("{b}/sr0/uevent"), dev("sr0", "disk", None))
        .with_file(format!("{b}/loop0/uevent"), dev("loop0", "disk", None))
}

/// When the first scan finds no slot (or no config partition), the storage phase asks
/// once for the drivers it left for later and keeps looking: here the SATA disk's
/// partitions appear after that. When the slot is there at once, it does not ask.
#[test]
fn storage_loads_what_it_left_for_later_only_when_the_partitions_are_missing() {
    use twinwall_init::sys::Syscalls;
    let cmdline = Cmdline::parse("twinwall.slot=a");
    let block = Path::new("/sys/class/block");
    // a virtio disk without twinwall's labels is there from the start
    let sys = RecordingSyscalls::new()
        .with_file("/sys/class/block/vda/uevent", "DEVNAME=vda\nDEVTYPE=disk\n");
    let mut asked = 0;
    let plan = storage::scan_and_plan_with(
        &sys,
        &cmdline,
        block,
        std::time::Duration::from_secs(5),
        &mut || {
            asked += 1;
            for (name, label) in [("sda3", "slot-a"), ("sda5", "config")] {
                let uevent =
                    format!("DEVNAME={name}\nDEVTYPE=partition\nPARTN=1\nPARTNAME={label}\n");
                sys.write_file(&block.join(name).join("uevent"), uevent.as_bytes())
                    .unwrap();
            }
        },
    )
    .unwrap();
    assert_eq!(asked, 1);
    assert_eq!(
        plan.root,
        Root::Slot {
            slot: "a".into(),
            device: "sda3".into()
        }
    );
    assert_eq!(plan.config.as_deref(), Some("sda5"));

    let sys = fake_sysfs(RecordingSyscalls::new());
    let mut asked = 0;
    storage::scan_and_plan_with(
        &sys,
        &cmdline,
        block,
        std::time::Duration::from_secs(5),
        &mut || asked += 1,
    )
    .unwrap();
    assert_eq!(asked, 0);
}

#[test]
fn storage_finds_partitions_by_gpt_label_in_sysfs() {
    let sys = fake_sysfs(RecordingSyscalls::new());
    let devs = storage::scan(&sys, Path::new("/sys/class/block")).unwrap();
    let labels = storage::by_label(&devs);
    assert_eq!(labels["slot-a"], "vda3");
    assert_eq!(labels["slot-b"], "vda4");
    assert_eq!(labels["config"], "vda5");
    assert_eq!(labels["data"], "vda6");
    assert_eq!(labels.len(), 6);
}

#[test]
fn storage_parses_uevent_lines() {
    let ev = storage::parse_uevent("MAJOR=8\nDEVNAME=sda2\nPARTNAME=slot-a\nbogus line\n");
    assert_eq!(ev["PARTNAME"], "slot-a");
    assert_eq!(ev.len(), 3);
}

#[test]
fn storage_mounts_slot_b_moves_kernel_filesystems_and_switches_root() {
    let sys = fake_sysfs(RecordingSyscalls::new());
    let cmdline = Cmdline::parse("twinwall.slot=b");
    let devs = storage::scan(&sys, Path::new("/sys/class/block")).unwrap();
    let plan = storage::plan(&cmdline, &devs).unwrap();
    assert_eq!(
        plan.root,
        Root::Slot {
            slot: "b".into(),
            device: "vda4".into()
        }
    );
    let done = storage::execute(&sys, &plan).unwrap();
    assert!(done.switched_root && done.config && done.data);
    let m = mounts(&sys);
    assert_eq!(
        m,
        [
            (
                "/dev/vda5".into(),
                "/run/twinwall/config".into(),
                Some("ext4".into())
            ),
            (
                "/dev/vda6".into(),
                "/run/twinwall/data".into(),
                Some("ext4".into())
            ),
            (
                "/dev/vda2".into(),
                "/run/twinwall/esp".into(),
                Some("vfat".into())
            ),
            (
                "/dev/vda4".into(),
                "/sysroot".into(),
                Some("squashfs".into())
            ),
            ("/dev".into(), "/sysroot/dev".into(), None),
            ("/proc".into(), "/sysroot/proc".into(), None),
            ("/sys".into(), "/sysroot/sys".into(), None),
            ("/run".into(), "/sysroot/run".into(), None),
            ("tmpfs".into(), "/tmp".into(), Some("tmpfs".into())),
        ]
    );
    // Config is read-only, the slot is read-only.
    let calls = sys.calls_of("mount");
    let ro = MsFlags::MS_RDONLY.bits();
    for i in [0, 3] {
        let Call::Mount { flags, .. } = &calls[i] else {
            unreachable!()
        };
        assert_eq!(flags & ro, ro, "mount {i} must be read-only");
    }
    // The switch comes after the moves.
    let all = sys.calls();
    let switch = all.iter().position(|c| c.kind() == "switch_root").unwrap();
    let last_move = all
        .iter()
        .rposition(
            |c| matches!(c, Call::Mount { target, .. } if target == Path::new("/sysroot/run")),
        )
        .unwrap();
    assert!(switch > last_move);
}

#[test]
fn storage_config_partition_falls_back_to_vfat_and_an_unmountable_one_is_not_fatal() {
    let sys =
        fake_sysfs(RecordingSyscalls::new()).fail("mount", "/run/twinwall/config", Errno::EINVAL);
    let plan = storage::Plan {
        root: Root::Initramfs,
        config: Some("vda5".into()),
        data: None,
        esp: None,
    };
    let done = storage::execute(&sys, &plan).unwrap();
    // Both filesystem types were tried; an unflashed (all-zero) or damaged config
    // partition means fail-closed, not a reboot loop, and the reason names the device.
    let tried: Vec<_> = mounts(&sys).into_iter().map(|m| m.2.unwrap()).collect();
    assert_eq!(tried, ["ext4", "vfat"]);
    assert!(!done.config);
    assert_eq!(
        done.config_error.as_deref(),
        Some(
            "config partition /dev/vda5 holds no ext4 or vfat filesystem (not flashed?): EINVAL: Invalid argument"
        )
    );
}

#[test]
fn an_unflashed_config_partition_boots_fail_closed_with_the_reason() {
    let sys = fake_sysfs(module_sys("kernel/drivers/virtio/virtio.ko\n"))
        .with_file("/proc/cmdline", "console=ttyS0 twinwall.root=initramfs")
        .fail("mount", "/run/twinwall/config", Errno::EINVAL);
    let shared = Shared::new(Status::new(Mode::Pid1));
    let opts = BootOptions {
        run_dir: "/run/twinwall".into(),
        network: false,
        root_wait: std::time::Duration::ZERO,
        ..BootOptions::default()
    };
    let booted = pid1::boot(
        &sys,
        &Reject,
        &|_: &Path, _: &str| Err("unused".to_string()),
        &shared,
        &opts,
    )
    .unwrap();
    let st = shared.snapshot();
    assert_eq!(
        st.fail_closed.as_deref(),
        Some(
            "config partition /dev/vda5 holds no ext4 or vfat filesystem (not flashed?): EINVAL: Invalid argument"
        )
    );
    assert!(booted.installed.is_none());
    let names: Vec<_> = booted.specs.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["ruleset", "mgmt"]);
}

#[test]
fn storage_missing_slot_names_the_label_and_what_was_found() {
    let sys = fake_sysfs(RecordingSyscalls::new());
    let devs: Vec<_> = storage::scan(&sys, Path::new("/sys/class/block"))
        .unwrap()
        .into_iter()
        .filter(|d| d.partname.as_deref() != Some("slot-b"))
        .collect();
    let err = storage::plan(&Cmdline::parse("twinwall.slot=b"), &devs).unwrap_err();
    assert!(matches!(err, StorageError::NoSlot { .. }));
    assert_eq!(
        err.to_string(),
        "no partition labelled slot-b (from twinwall.slot); found: bios-boot, config, data, esp, slot-a"
    );
    let err = storage::plan(&Cmdline::parse("twinwall.slot=c"), &devs).unwrap_err();
    assert!(
        err.to_string().contains("twinwall.slot=c is not a slot"),
        "{err}"
    );
}

#[test]
fn storage_failed_slot_mount_names_the_device() {
    let sys = fake_sysfs(RecordingSyscalls::new()).fail("mount", "/sysroot", Errno::ENODEV);
    let devs = storage::scan(&sys, Path::new("/sys/class/block")).unwrap();
    let plan = storage::plan(&Cmdline::parse("twinwall.slot=a"), &devs).unwrap();
    let err = storage::execute(&sys, &plan).unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot mount /dev/vda3 on /sysroot (squashfs): ENODEV: No such device"
    );
    assert!(sys.calls_of("switch_root").is_empty());
}

#[test]
fn storage_live_mode_loop_mounts_the_slot_image_from_the_iso() {
    let sys = fake_sysfs(RecordingSyscalls::new())
        .with_file("/run/twinwall/iso/twinwall/slot.squashfs", "");
    let devs = storage::scan(&sys, Path::new("/sys/class/block")).unwrap();
    let plan = storage::plan(
        &Cmdline::parse("twinwall.slot=live twinwall.live=/twinwall/slot.squashfs"),
        &devs,
    )
    .unwrap();
    let Root::Live { candidates, image } = &plan.root else {
        panic!("{plan:?}")
    };
    assert_eq!(candidates[0], "sr0");
    assert_eq!(image, "twinwall/slot.squashfs");
    assert!(!candidates.iter().any(|c| c.starts_with("loop")));
    storage::execute(&sys, &plan).unwrap();
    let m = mounts(&sys);
    assert!(m.contains(&(
        "/dev/sr0".into(),
        "/run/twinwall/iso".into(),
        Some("iso9660".into())
    )));
    assert!(m.contains(&(
        "/dev/loop0".into(),
        "/sysroot".into(),
        Some("squashfs".into())
    )));
    assert_eq!(
        sys.calls_of("attach_loop"),
        [Call::AttachLoop {
            file: "/run/twinwall/iso/twinwall/slot.squashfs".into()
        }]
    );
    assert_eq!(sys.calls_of("switch_root").len(), 1);
}

/// Rejects every bundle with a fixed reason (the real verifier is tested in the root
/// crate's init_trust tests with real signed bundles).
struct Reject;

impl BundleVerifier for Reject {
    fn verify(
        &self,
        _: &Path,
        _: &[PathBuf],
        _: Option<u64>,
        _: &str,
    ) -> Result<VerifiedBundle, String> {
        Err("signature does not verify".into())
    }
}

#[test]
fn boot_runs_the_phases_in_order_and_reports_fail_closed() {
    let sys = module_sys("kernel/drivers/virtio/virtio.ko\n")
        .with_file("/proc/cmdline", "console=ttyS0 twinwall.root=initramfs")
        .with_file("/sys/class/block/vda/uevent", "DEVNAME=vda\nDEVTYPE=disk\n");
    let shared = Shared::new(Status::new(Mode::Pid1));
    let opts = BootOptions {
        run_dir: "/run/twinwall".into(),
        network: false,
        root_wait: std::time::Duration::ZERO,
        ..BootOptions::default()
    };
    let booted = pid1::boot(
        &sys,
        &Reject,
        &|_: &Path, _: &str| Err("unused".to_string()),
        &shared,
        &opts,
    )
    .unwrap();
    let st = shared.snapshot();
    let phases: Vec<(&str, &str)> = st
        .phases
        .iter()
        .map(|p| (p.name.as_str(), p.result.as_str()))
        .collect();
    assert_eq!(
        phases,
        [
            ("early", "ok"),
            ("modules", "ok"),
            ("storage", "ok"),
            ("trust", "degraded"),
            ("network", "skipped")
        ]
    );
    assert!(!booted.switched_root);
    assert_eq!(
        st.fail_closed.as_deref(),
        Some("no config partition (GPT label `config`) found")
    );
    let names: Vec<_> = booted.specs.iter().map(|s| s.name.as_str()).collect();
    // Fail-closed: the bootstrap ruleset and management, nothing else.
    assert_eq!(names, ["ruleset", "mgmt"]);
}

#[test]
fn boot_stops_at_the_first_failing_phase() {
    let sys = with_cmdline("twinwall.root=initramfs");
    let shared = Shared::new(Status::new(Mode::Pid1));
    let opts = BootOptions {
        network: false,
        root_wait: std::time::Duration::ZERO,
        ..BootOptions::default()
    };
    let err = pid1::boot(
        &sys,
        &Reject,
        &|_: &Path, _: &str| Err(String::new()),
        &shared,
        &opts,
    )
    .unwrap_err();
    assert!(matches!(err, BootError::Modules(_)), "{err}");
    let st = shared.snapshot();
    assert_eq!(st.phases.len(), 2);
    assert_eq!(st.phases[1].result, "failed");
    assert!(st.phases[1].detail.contains("twinwall.modules"));
    assert!(sys.calls_of("switch_root").is_empty());
}

/// The config partition's sync key (`twinwall-sync-key-v1 <base64>`, what flash writes
/// and sync reads) is checked and handed to the sync service where it is — no second
/// copy of the secret under the run directory; a malformed or missing key is not passed on.
#[test]
fn trust_hands_sync_a_checked_copy_of_the_pair_key() {
    use twinwall_init::trust::sync_key_for_service;
    let key = twinwall_bundle::SyncKey::generate().unwrap();
    let sys = RecordingSyscalls::new().with_file("/cfg/sync.key", key.encode().as_bytes());
    let out = sync_key_for_service(&sys, Path::new("/cfg/sync.key"), Path::new("/run/tw"));
    assert_eq!(out, Some(PathBuf::from("/cfg/sync.key")));
    assert!(
        sys.file("/run/tw/sync.key").is_none(),
        "no copy of the key is written"
    );
    // What sync will read from that path is the pair's key.
    let back = twinwall_bundle::SyncKey::parse(
        &String::from_utf8(sys.file("/cfg/sync.key").unwrap()).unwrap(),
        "/cfg/sync.key",
    )
    .unwrap();
    assert_eq!(back.expose(), key.expose());
    let bad = RecordingSyscalls::new().with_file("/cfg/sync.key", "twinwall-sync-key-v1 AAAA");
    assert_eq!(
        sync_key_for_service(&bad, Path::new("/cfg/sync.key"), Path::new("/run/tw")),
        None
    );
    assert!(bad.file("/run/tw/sync.key").is_none());
    let none = RecordingSyscalls::new();
    assert_eq!(
        sync_key_for_service(&none, Path::new("/cfg/sync.key"), Path::new("/run/tw")),
        None
    );
}

/// The slot's full list repeats what the initramfs loaded: modules named in
/// /proc/modules are counted as present without a finit_module (`usb-storage.ko` is
/// `usb_storage` there).
#[test]
fn modules_in_proc_modules_are_skipped_without_a_load() {
    let sys = module_sys(
        "kernel/drivers/virtio/virtio_ring.ko\nkernel/drivers/usb/storage/usb-storage.ko\n\
         /opt/extra/nf_tables.ko\n",
    )
    .with_file(
        "/proc/modules",
        "virtio_ring 45056 1 virtio_net, Live 0x0\nusb_storage 81920 0 - Live 0x0\n",
    );
    let done = modules::run(&sys, Path::new(modules::DEFAULT_LIST)).unwrap();
    assert_eq!(done.already, ["virtio_ring", "usb_storage"]);
    assert_eq!(done.loaded, ["nf_tables"]);
    assert_eq!(sys.calls_of("finit_module").len(), 1);
    assert!(done.summary().starts_with(
        "1 loaded, 2 already present, 0 not applicable, 0 without a device; slowest: nf_tables "
    ));
}

/// A panic in PID 1 is printed, synced and turned into a reboot (never an exit, which
/// would panic the kernel).
#[test]
fn a_panic_in_pid1_syncs_and_reboots() {
    let sys = RecordingSyscalls::new();
    pid1::on_panic(&sys, "boom");
    let kinds: Vec<&str> = sys.calls().iter().map(Call::kind).collect();
    assert_eq!(kinds, ["sync", "reboot"]);
    assert!(
        matches!(
            sys.calls()[1],
            Call::Reboot {
                action: twinwall_init::sys::PowerAction::Reboot
            }
        ),
        "{:?}",
        sys.calls()
    );
    assert!(Cmdline::parse("twinwall.test_panic=1").test_panic);
    assert!(!Cmdline::parse("twinwall.test_panic=0").test_panic);
}

/// PID 1 re-executes the slot's binary after the switch; the new image gets the phases
/// done so far and the mounts, and goes on with root-modules without mounting anything
/// again.
#[test]
fn a_resumed_pid1_goes_on_after_the_switch_without_remounting() {
    use twinwall_init::status::PhaseReport;
    let sys = module_sys("kernel/drivers/virtio/virtio.ko\n")
        .with_file("/proc/cmdline", "console=ttyS0 twinwall.slot=a");
    let before = ["early", "modules", "storage"].map(|n| PhaseReport {
        name: n.into(),
        duration_us: 1,
        result: "ok".into(),
        detail: String::new(),
    });
    let resume = pid1::Resume {
        phases: before.to_vec(),
        mounted: storage::Mounted {
            switched_root: true,
            ..storage::Mounted::default()
        },
    };
    // The hand-over survives its JSON form in the environment.
    let json = serde_json::to_string(&resume).unwrap();
    assert_eq!(serde_json::from_str::<pid1::Resume>(&json).unwrap(), resume);
    let shared = Shared::new(Status::new(Mode::Pid1));
    let opts = BootOptions {
        network: false,
        root_wait: std::time::Duration::ZERO,
        reexec_after_switch: true,
        resume: Some(resume),
        ..BootOptions::default()
    };
    let booted = pid1::boot(
        &sys,
        &Reject,
        &|_: &Path, _: &str| Err("unused".to_string()),
        &shared,
        &opts,
    )
    .unwrap();
    assert!(booted.switched_root);
    let names: Vec<String> = shared
        .snapshot()
        .phases
        .iter()
        .map(|p| p.name.clone())
        .collect();
    assert_eq!(
        names,
        [
            "early",
            "modules",
            "storage",
            "root-modules",
            "trust",
            "network"
        ]
    );
    assert!(mounts(&sys).is_empty(), "nothing is mounted twice");
    assert_eq!(shared.snapshot().slot.as_deref(), Some("a"));
}

/// Hardware drivers load only for devices that are there: the list has e1000e (with its
/// own dependencies ptp and pps_core) and virtio_pci/virtio_net (with theirs); only a
/// virtio NIC exists, so e1000e and what only it needs are skipped, and modules without a
/// hardware alias (squashfs) always load, in list order.
#[test]
fn hardware_drivers_load_only_for_devices_that_are_present() {
    let k = "/lib/modules/6.1.0-57-amd64";
    let mods = [
        "kernel/drivers/pps/pps_core.ko",
        "kernel/drivers/ptp/ptp.ko",
        "kernel/drivers/net/ethernet/intel/e1000e/e1000e.ko",
        "kernel/drivers/virtio/virtio.ko",
        "kernel/drivers/virtio/virtio_ring.ko",
        "kernel/drivers/virtio/virtio_pci.ko",
        "kernel/net/core/failover.ko",
        "kernel/drivers/net/net_failover.ko",
        "kernel/drivers/net/virtio_net.ko",
        "kernel/fs/squashfs/squashfs.ko",
    ];
    let mut sys = RecordingSyscalls::new()
        .with_file("/proc/sys/kernel/osrelease", "6.1.0-57-amd64\n")
        .with_file("/lib/modules/twinwall.modules", mods.join("\n"))
        .with_file(
            format!("{k}/modules.dep"),
            "kernel/drivers/pps/pps_core.ko:\n\
             kernel/drivers/ptp/ptp.ko: kernel/drivers/pps/pps_core.ko\n\
             kernel/drivers/net/ethernet/intel/e1000e/e1000e.ko: kernel/drivers/ptp/ptp.ko kernel/drivers/pps/pps_core.ko\n\
             kernel/drivers/virtio/virtio.ko:\n\
             kernel/drivers/virtio/virtio_ring.ko:\n\
             kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko\n\
             kernel/net/core/failover.ko:\n\
             kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko\n\
             kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko\n\
             kernel/fs/squashfs/squashfs.ko:\n",
        )
        .with_file(
            format!("{k}/modules.alias"),
            "alias pci:v00008086d000010D3sv*sd*bc*sc*i* e1000e\n\
             alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci\n\
             alias virtio:d00000001v* virtio_net\n\
             alias fs-squashfs squashfs\n",
        )
        .with_file(
            "/sys/bus/pci/devices/0000:00:10.0/modalias",
            "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00\n",
        )
        .with_file(
            "/sys/bus/pci/devices/0000:00:01.1/modalias",
            "pci:v00008086d00007010sv00001AF4sd00001100bc01sc01i80\n",
        )
        .with_file(
            "/sys/bus/virtio/devices/virtio0/modalias",
            "virtio:d00000001v00001AF4\n",
        );
    for m in mods {
        sys = sys.with_file(format!("{k}/{m}"), "");
    }
    let done = modules::run(&sys, Path::new(modules::DEFAULT_LIST)).unwrap();
    assert_eq!(
        done.loaded,
        [
            "virtio",
            "virtio_ring",
            "virtio_pci",
            "failover",
            "net_failover",
            "virtio_net",
            "squashfs"
        ]
    );
    assert_eq!(done.not_needed, ["pps_core", "ptp", "e1000e"]);
    assert!(
        done.summary().contains("3 without a device"),
        "{}",
        done.summary()
    );
    let loads: Vec<String> = sys
        .calls_of("finit_module")
        .into_iter()
        .map(|c| format!("{c:?}"))
        .collect();
    assert!(!loads.iter().any(|c| c.contains("e1000e")), "{loads:?}");
}

/// A q35-like machine: an AHCI controller (with its CD drive) and a virtio disk. On a
/// disk-slot boot the SCSI/ATA stack (everything that needs scsi_mod: libata, ahci, sd_mod)
/// loads last, with `async_probe`, so no load waits for the SATA scan; everything else
/// loads first, in list order, waiting for its probes. With `Probe::Wait` the same list
/// loads in list order and every load waits.
#[test]
fn the_scsi_stack_loads_last_and_probes_in_the_background_on_a_disk_slot_boot() {
    let k = "/lib/modules/6.1.0-57-amd64";
    let mods = [
        "kernel/drivers/scsi/scsi_common.ko",
        "kernel/drivers/scsi/scsi_mod.ko",
        "kernel/drivers/ata/libata.ko",
        "kernel/drivers/ata/ahci.ko",
        "kernel/drivers/scsi/sd_mod.ko",
        "kernel/drivers/virtio/virtio.ko",
        "kernel/drivers/virtio/virtio_ring.ko",
        "kernel/drivers/virtio/virtio_pci.ko",
        "kernel/drivers/block/virtio_blk.ko",
        "kernel/fs/squashfs/squashfs.ko",
    ];
    let sys = || {
        let mut sys = RecordingSyscalls::new()
            .with_file("/proc/sys/kernel/osrelease", "6.1.0-57-amd64\n")
            .with_file("/lib/modules/twinwall.modules", mods.join("\n"))
            .with_file(
                format!("{k}/modules.dep"),
                "kernel/drivers/scsi/scsi_common.ko:\n\
                 kernel/drivers/scsi/scsi_mod.ko: kernel/drivers/scsi/scsi_common.ko\n\
                 kernel/drivers/ata/libata.ko: kernel/drivers/scsi/scsi_mod.ko kernel/drivers/scsi/scsi_common.ko\n\
                 kernel/drivers/ata/ahci.ko: kernel/drivers/ata/libata.ko kernel/drivers/scsi/scsi_mod.ko kernel/drivers/scsi/scsi_common.ko\n\
                 kernel/drivers/scsi/sd_mod.ko: kernel/drivers/scsi/scsi_mod.ko kernel/drivers/scsi/scsi_common.ko\n\
                 kernel/drivers/virtio/virtio.ko:\n\
                 kernel/drivers/virtio/virtio_ring.ko:\n\
                 kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko\n\
                 kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko\n\
                 kernel/fs/squashfs/squashfs.ko:\n",
            )
            .with_file(
                format!("{k}/modules.alias"),
                "alias pci:v*d*sv*sd*bc01sc06i01* ahci\n\
                 alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci\n\
                 alias virtio:d00000002v* virtio_blk\n",
            )
            .with_file(
                "/sys/bus/pci/devices/0000:00:1f.2/modalias",
                "pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01\n",
            )
            .with_file(
                "/sys/bus/pci/devices/0000:00:04.0/modalias",
                "pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00\n",
            )
            .with_file(
                "/sys/bus/virtio/devices/virtio0/modalias",
                "virtio:d00000002v00001AF4\n",
            );
        for m in mods {
            sys = sys.with_file(format!("{k}/{m}"), "");
        }
        sys
    };
    let loads = |sys: &RecordingSyscalls| -> Vec<(String, String)> {
        sys.calls_of("finit_module")
            .into_iter()
            .map(|c| match c {
                Call::FinitModule { path, params } => (
                    path.file_stem().unwrap().to_string_lossy().into_owned(),
                    params,
                ),
                _ => unreachable!(),
            })
            .collect()
    };
    let bg = sys();
    let done = modules::run_with(
        &bg,
        Path::new(modules::DEFAULT_LIST),
        modules::Probe::StorageInBackground,
    )
    .unwrap();
    let want: Vec<(String, String)> = [
        ("scsi_common", ""),
        ("scsi_mod", ""),
        ("virtio", ""),
        ("virtio_ring", ""),
        ("virtio_pci", ""),
        ("virtio_blk", ""),
        ("squashfs", ""),
        ("libata", "async_probe"),
        ("ahci", "async_probe"),
        ("sd_mod", "async_probe"),
    ]
    .iter()
    .map(|(m, p)| (m.to_string(), p.to_string()))
    .collect();
    assert_eq!(loads(&bg), want);
    assert_eq!(done.background, ["libata", "ahci", "sd_mod"]);
    assert!(
        done.summary()
            .starts_with("10 loaded (3 probing in the background), 0 already present"),
        "{}",
        done.summary()
    );

    // Left for later: the whole SCSI/ATA stack and what only it needs (scsi_common), so
    // nothing of it loads; once loaded (by the storage phase), it counts as present.
    let later = sys();
    let done = modules::run_with(
        &later,
        Path::new(modules::DEFAULT_LIST),
        modules::Probe::StorageLater,
    )
    .unwrap();
    let names: Vec<String> = loads(&later).into_iter().map(|(m, _)| m).collect();
    assert_eq!(
        names,
        [
            "virtio",
            "virtio_ring",
            "virtio_pci",
            "virtio_blk",
            "squashfs"
        ]
    );
    assert_eq!(
        done.later,
        ["scsi_common", "scsi_mod", "libata", "ahci", "sd_mod"]
    );
    assert!(done.not_needed.is_empty(), "{:?}", done.not_needed);
    assert!(
        done.summary().contains(", 5 later (storage stack)"),
        "{}",
        done.summary()
    );
    let loaded_before = sys().with_file(
        "/proc/modules",
        "scsi_common 1 0 - Live 0x0\nscsi_mod 1 0 - Live 0x0\nlibata 1 0 - Live 0x0\n\
         ahci 1 0 - Live 0x0\nsd_mod 1 0 - Live 0x0\n",
    );
    let done = modules::run_with(
        &loaded_before,
        Path::new(modules::DEFAULT_LIST),
        modules::Probe::StorageLater,
    )
    .unwrap();
    assert!(done.later.is_empty(), "{:?}", done.later);
    assert_eq!(done.already.len(), 5);

    let wait = sys();
    let done = modules::run_with(
        &wait,
        Path::new(modules::DEFAULT_LIST),
        modules::Probe::Wait,
    )
    .unwrap();
    assert!(done.background.is_empty());
    let l = loads(&wait);
    assert!(l.iter().all(|(_, p)| p.is_empty()), "{l:?}");
    let names: Vec<&str> = l.iter().map(|(m, _)| m.as_str()).collect();
    assert_eq!(
        names,
        [
            "scsi_common",
            "scsi_mod",
            "libata",
            "ahci",
            "sd_mod",
            "virtio",
            "virtio_ring",
            "virtio_pci",
            "virtio_blk",
            "squashfs"
        ]
    );
}

/// The storage stack waits only where the storage phase waits for its partitions (and
/// loads the stack when they are not there without it): a disk-slot boot; a live ISO (the
/// CD's sr device is looked for once) and the initramfs load everything, waiting.
#[test]
fn the_storage_stack_waits_only_on_a_disk_slot_boot() {
    use modules::Probe;
    let p = |c: &str| Probe::for_boot(&Cmdline::parse(c));
    assert_eq!(p("twinwall.slot=a"), Probe::StorageLater);
    assert_eq!(p("twinwall.slot=a twinwall.live=1"), Probe::Wait);
    assert_eq!(p("twinwall.root=initramfs"), Probe::Wait);
    assert_eq!(p(""), Probe::Wait);
}

/// On an emulated CPU (QEMU TCG) PID 1 turns address randomisation off for itself before
/// the first module load (so the re-exec and every service inherit one layout); on bare
/// metal, under KVM, or with `twinwall.aslr=on` it does not; a failing call leaves ASLR on
/// and the boot goes on.
#[test]
fn one_code_layout_only_on_an_emulated_cpu() {
    let boot = |sys: &RecordingSyscalls| {
        let shared = Shared::new(Status::new(Mode::Pid1));
        let opts = BootOptions {
            network: false,
            root_wait: std::time::Duration::ZERO,
            ..BootOptions::default()
        };
        pid1::boot(
            sys,
            &Reject,
            &|_: &Path, _: &str| Err("unused".to_string()),
            &shared,
            &opts,
        )
        .unwrap();
    };
    let kinds = |sys: &RecordingSyscalls| -> Vec<&'static str> {
        sys.calls().iter().map(Call::kind).collect()
    };
    let tcg = |cmdline: &str| {
        module_sys("kernel/drivers/virtio/virtio.ko\n")
            .with_file("/proc/cmdline", cmdline)
            .with_file("/sys/class/block/vda/uevent", "DEVNAME=vda\nDEVTYPE=disk\n")
            .with_file("/sys/class/dmi/id/sys_vendor", "QEMU\n")
            .with_hypervisor("TCGTCGTCGTCG")
    };
    let sys = tcg("twinwall.root=initramfs");
    boot(&sys);
    let k = kinds(&sys);
    let at = k.iter().position(|c| *c == "no_address_randomization");
    let first_load = k.iter().position(|c| *c == "finit_module");
    assert!(at.is_some() && at < first_load, "{k:?}");

    let sys = tcg("twinwall.root=initramfs twinwall.aslr=on");
    boot(&sys);
    assert!(sys.calls_of("no_address_randomization").is_empty());

    let kvm = module_sys("kernel/drivers/virtio/virtio.ko\n")
        .with_file("/proc/cmdline", "twinwall.root=initramfs")
        .with_file("/sys/class/block/vda/uevent", "DEVNAME=vda\nDEVTYPE=disk\n")
        .with_file("/sys/class/dmi/id/sys_vendor", "QEMU\n")
        .with_hypervisor("KVMKVMKVM");
    boot(&kvm);
    assert!(kvm.calls_of("no_address_randomization").is_empty());
    let metal = module_sys("kernel/drivers/virtio/virtio.ko\n")
        .with_file("/proc/cmdline", "twinwall.root=initramfs")
        .with_file("/sys/class/block/vda/uevent", "DEVNAME=vda\nDEVTYPE=disk\n");
    boot(&metal);
    assert!(metal.calls_of("no_address_randomization").is_empty());

    let failing = tcg("twinwall.root=initramfs").fail("no_address_randomization", "", Errno::EPERM);
    boot(&failing);
    assert_eq!(failing.calls_of("no_address_randomization").len(), 1);
    assert!(
        !failing.calls_of("finit_module").is_empty(),
        "the boot went on"
    );
}

#[test]
fn modalias_patterns_match_like_modprobe() {
    use twinwall_init::modules::alias_matches;
    let dev = "pci:v00008086d00007010sv00001AF4sd00001100bc01sc01i80";
    assert!(alias_matches("pci:v00008086d00007010sv*sd*bc*sc*i*", dev));
    assert!(alias_matches("pci:v*d*sv*sd*bc01sc01i*", dev));
    assert!(!alias_matches("pci:v00008086d000010D3sv*sd*bc*sc*i*", dev));
    assert!(!alias_matches("pci:v*d*sv*sd*bc0Csc03i30*", dev));
    assert!(alias_matches(
        "virtio:d00000002v*",
        "virtio:d00000002v00001AF4"
    ));
    assert!(!alias_matches(
        "virtio:d00000001v*",
        "virtio:d00000002v00001AF4"
    ));
}

/// Accepts every bundle whose file holds `version N`.
struct ByContent;

impl BundleVerifier for ByContent {
    fn verify(
        &self,
        bundle: &Path,
        _trusted: &[PathBuf],
        _min_version: Option<u64>,
        _node: &str,
    ) -> Result<VerifiedBundle, String> {
        let text = std::fs::read_to_string(bundle).map_err(|e| e.to_string())?;
        let version = text
            .trim()
            .strip_prefix("version ")
            .and_then(|v| v.parse().ok())
            .ok_or("not a test bundle")?;
        Ok(VerifiedBundle {
            version,
            config_toml: Vec::new(),
        })
    }
}

/// A boot that GRUB fell back to (grubenv ORDER names the other slot first: an update of
/// it did not come up) runs the config pinned to the running slot, `bundles/slot-X.bundle`
/// (what mgmt pins when it writes an update), not the active one; a normal boot of the
/// same slot runs the active bundle.
#[test]
fn a_fallback_boot_runs_the_config_pinned_to_its_slot() {
    use twinwall_image::{BootState, Grubenv, Slot};
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path();
    std::fs::create_dir_all(cfg.join("trusted")).unwrap();
    std::fs::create_dir_all(cfg.join("bundles")).unwrap();
    std::fs::write(cfg.join("node"), "fw-a\n").unwrap();
    std::fs::write(cfg.join("trusted/ops.pub"), "k").unwrap();
    std::fs::write(cfg.join("bundles/active.bundle"), "version 7").unwrap();
    std::fs::write(cfg.join("bundles/slot-a.bundle"), "version 5").unwrap();
    let run = tempfile::tempdir().unwrap();
    for (order, want) in [([Slot::B, Slot::A], 5), ([Slot::A, Slot::B], 7)] {
        let mut st = BootState::fresh();
        st.order = order.to_vec();
        st.b.ok = true;
        st.b.tried = true;
        let mut env = Grubenv::new();
        st.apply_to(&mut env).unwrap();
        let sys = module_sys("kernel/drivers/virtio/virtio.ko\n")
            .with_file("/proc/cmdline", "console=ttyS0 twinwall.slot=a")
            .with_file("/run/twinwall/esp/grub/grubenv", env.to_block().unwrap())
            .with_file("/run/twinwall/config/node", "fw-a\n")
            .with_file("/run/twinwall/config/trusted/ops.pub", "k")
            .with_file("/run/twinwall/config/bundles/active.bundle", "version 7")
            .with_file("/run/twinwall/config/bundles/slot-a.bundle", "version 5");
        let shared = Shared::new(Status::new(Mode::Pid1));
        let opts = BootOptions {
            run_dir: run.path().into(),
            network: false,
            resume: Some(pid1::Resume {
                phases: Vec::new(),
                mounted: storage::Mounted {
                    switched_root: true,
                    config: true,
                    esp: true,
                    ..storage::Mounted::default()
                },
            }),
            ..BootOptions::default()
        };
        // The trust phase reads the config partition through the real filesystem here.
        let verifier = ByContent;
        let d = twinwall_init::trust::run_with_pin(
            &twinwall_init::sys::RealSyscalls,
            &verifier,
            Some(cfg),
            run.path(),
            (order[0] != Slot::A).then_some("a"),
        );
        assert_eq!(
            d.summary(),
            if want == 5 {
                "config version 5 (slot-pinned bundle) verified".to_string()
            } else {
                "config version 7 (active bundle) verified".to_string()
            }
        );
        // And boot decides "fallback" from the grubenv the same way.
        let _ = pid1::boot(
            &sys,
            &Reject,
            &|_: &Path, _: &str| Err("unused".to_string()),
            &shared,
            &opts,
        )
        .unwrap();
        let trust = shared.snapshot().trust.unwrap();
        let tried_pinned = trust.rejected.iter().any(|r| r.contains("slot-a.bundle"));
        assert_eq!(tried_pinned, want == 5, "{:?}", trust.rejected);
    }
}
