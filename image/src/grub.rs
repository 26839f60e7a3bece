//! GRUB for the disk image and the ISO: the `grub.cfg` that implements the boot counting of
//! [`crate::slot`] in GRUB script, the early config embedded in the core images, the
//! `grub-mkimage` invocations, and the BIOS boot sector patching that replaces
//! `grub-install`/`grub-bios-setup` (which need partition device nodes or refuse image
//! files): boot.img's first 440 bytes into the MBR, pointing at core.img in the BIOS boot
//! partition, whose first sector carries the blocklist of the rest.

use std::path::Path;

use thiserror::Error;

use crate::layout::{Layout, Role, SECTOR};
use crate::tool::{self, ToolError};

/// Where GRUB's platform files live on Debian (grub-pc-bin, grub-efi-amd64-bin).
pub const GRUB_LIB: &str = "/usr/lib/grub";

/// Modules built into both core images. `squash4` lets GRUB read the kernel straight from a
/// slot; `loadenv` is boot counting; `search_fs_uuid` finds the ESP; `regexp` derives the
/// disk of the slots from the ESP's device.
pub const MODULES: &[&str] = &[
    "part_gpt",
    "part_msdos",
    "fat",
    "squash4",
    "loadenv",
    "normal",
    "linux",
    "echo",
    "test",
    "serial",
    "terminal",
    "configfile",
    "sleep",
    "reboot",
    "search",
    "search_fs_uuid",
    "regexp",
    "halt",
];

/// Kernel command line shared by every boot entry. `panic=10` makes a kernel that cannot
/// bring up init reboot, so GRUB's boot counting falls back to the other slot.
/// `cryptomgr.notests` skips the crypto API's boot-time self-tests of every registered
/// algorithm: `initcall_debug` showed them as the slowest initcall by far
/// (`crypto_algapi_init`, 6.1 s of a 25 s kernel start under TCG on a loaded host, see
/// docs/init.md); the appliance does not run in FIPS mode, which would require them.
/// `no_timer_check` skips the IO-APIC timer check, a timing loop that a slow or busy
/// virtual CPU fails: under TCG on a loaded host it panicked boots with "IO-APIC + timer
/// doesn't work!" (docs/init.md); it is the usual option for virtual machines and a no-op
/// on hardware whose timer works.
/// `mitigations=off`: the CPU vulnerability mitigations (on QEMU's default CPU the
/// retpolines around every indirect branch; PTI is not enabled there) guard against code
/// running on the machine spying on other processes or the kernel. The appliance runs no
/// untrusted code — no shell, no logins, only twinwall's own services, as root — so they
/// protect nothing here, and they cost boot time under TCG and throughput on hardware
/// (docs/init.md has the A/B). Someone who adds untrusted local workloads must remove it.
pub const CMDLINE: &str = "console=tty0 console=ttyS0,115200n8 panic=10 loglevel=6 \
     cryptomgr.notests no_timer_check mitigations=off";

/// Options that only make the kernel reach init sooner, appended to [`CMDLINE`] in every
/// boot entry (kept apart from it: a direct `-kernel` boot that copies [`CMDLINE`]'s
/// options for correctness does not need these; it may add them for speed).
///
/// `noreplace-smp`: a kernel that finds a single possible CPU (a one-vCPU VM) otherwise
/// rewrites every `lock` prefix of the kernel and of each module it loads into a no-op;
/// under TCG that pass took 0.33 of the 0.57 s the alternatives patching costs before the
/// first initcall (docs/init.md, "Boot speed round 6: kernel"). The `lock` prefixes then
/// stay, which costs a single CPU next to nothing; a machine with more CPUs never does
/// that pass, so the option changes nothing there.
///
/// `initcall_blacklist=`: two built-in initcalls the appliance never needs, both among the
/// slowest under TCG: `init_kprobe_trace` (the tracefs `kprobe_events` interface for
/// dynamic kprobes, 80-190 ms) and `crypto_kdf108_init` (nothing but the boot self-test of
/// the SP800-108 KDF, which `cryptomgr.notests` does not cover, 20-180 ms; the KDF stays
/// usable).
pub const BOOT_SPEED_OPTIONS: &str =
    "noreplace-smp initcall_blacklist=init_kprobe_trace,crypto_kdf108_init";

/// Errors of the GRUB steps.
#[derive(Debug, Error)]
pub enum GrubError {
    /// A GRUB tool failed.
    #[error(transparent)]
    Tool(#[from] ToolError),
    /// Reading or writing a GRUB file failed.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: String,
        /// The IO error.
        source: std::io::Error,
    },
    /// core.img does not fit into the BIOS boot partition.
    #[error("GRUB core.img is {size} bytes, larger than the {room}-byte BIOS boot partition")]
    CoreTooLarge {
        /// core.img size.
        size: u64,
        /// Partition size.
        room: u64,
    },
    /// boot.img is not a 512-byte sector.
    #[error("GRUB boot.img is {size} bytes, expected 512")]
    BadBootImg {
        /// Its size.
        size: usize,
    },
}

/// The early config embedded in both core images: find the ESP by its FAT volume id and
/// load `grub.cfg` from it (so it works whatever the disk's BIOS/UEFI number is).
pub fn early_config(esp_uuid: &str) -> String {
    format!("search --no-floppy --fs-uuid --set=root {esp_uuid}\nset prefix=($root)/grub\n")
}

/// `grub.cfg` of the disk image: boot counting over the slot partitions.
pub fn disk_config(layout: &Layout) -> String {
    let a = layout.get(Role::SlotA).number;
    let b = layout.get(Role::SlotB).number;
    let mut s = String::from(COUNTING_HEAD);
    s.push_str("regexp --set=1:disk '^([^,]+)' \"$root\"\nexport disk\n\n");
    for (slot, lower, part) in [("A", "a", a), ("B", "b", b)] {
        s.push_str(&format!(
            r#"menuentry "twinwall slot {slot} (OK=${slot}_OK TRY=${slot}_TRY)" --id slot-{lower} {{
    echo "twinwall: booting slot {slot}"
    if linux ($disk,gpt{part})/boot/vmlinuz {CMDLINE} {BOOT_SPEED_OPTIONS} twinwall.slot={lower}; then
        if initrd ($disk,gpt{part})/boot/initrd.img; then
            boot
        fi
    fi
    echo "twinwall: slot {slot} cannot be loaded, rebooting"
    sleep 1
    reboot
}}

"#
        ));
    }
    s
}

/// Disks the ISO's menu offers to install to (each entry names its target; init and
/// `twinwall install` refuse the installation medium itself and mounted disks).
pub const INSTALL_TARGETS: &[&str] = &["/dev/sda", "/dev/nvme0n1", "/dev/vda"];

/// `grub.cfg` of the ISO: boots the slot image stored as a file on the ISO, live
/// (`twinwall.live=1`: init finds the ISO and loop-mounts the same file), or installs it
/// to a disk (`twinwall.install=DISK`).
///
/// Unattended install without typing at the menu: when the machine's last SMBIOS OEM
/// string (type 11; QEMU `-smbios type=11,value=...`, most hypervisors and BMCs can set
/// one) is `twinwall.install=/dev/DISK`, that entry is the default with no timeout. GRUB's
/// `smbios --get-string 4` reads the string whose index is the byte at offset 4 of the
/// type-11 structure, the string count: the last string.
pub fn iso_config(squashfs_path: &str) -> String {
    let entry = |title: &str, id: &str, extra: &str| {
        format!(
            r#"menuentry "{title}" --id {id} {{
    echo "twinwall: booting {id}"
    loopback slot {squashfs_path}
    linux (slot)/boot/vmlinuz {CMDLINE} {BOOT_SPEED_OPTIONS} twinwall.slot=a twinwall.live=1{extra}
    initrd (slot)/boot/initrd.img
}}
"#
        )
    };
    let mut s = String::from(
        r#"set default=0
set timeout=2
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console

set tw_install=""
if smbios --type 11 --get-string 4 --set tw_oem; then
    regexp --set=1:tw_install '^twinwall\.install=(/dev/[a-z0-9]+)$' "$tw_oem"
fi
if [ -n "$tw_install" ]; then
    echo "twinwall: SMBIOS OEM string asks to install to $tw_install"
    set default=install-oem
    set timeout=0
fi

"#,
    );
    s.push_str(
        &entry("twinwall live", "live", "").replace("booting live\"", "booting live image\""),
    );
    s.push_str(
        "if [ -n \"$tw_install\" ]; then
",
    );
    s.push_str(&entry(
        "Install twinwall to $tw_install (SMBIOS; erases it)",
        "install-oem",
        " twinwall.install=$tw_install",
    ));
    s.push_str(
        "fi
",
    );
    for dev in INSTALL_TARGETS {
        let id = format!("install-{}", dev.trim_start_matches("/dev/"));
        s.push_str(&entry(
            &format!("Install twinwall to {dev} (erases it)"),
            &id,
            &format!(" twinwall.install={dev}"),
        ));
    }
    s
}

/// The boot-counting part of grub.cfg. It mirrors [`crate::slot::BootState::grub_boot`]:
/// first good slot of ORDER; else retry the OK slots (TRY reset, as RAUC does); else the
/// first slot of ORDER. The chosen slot's TRY is set and saved before it is booted.
const COUNTING_HEAD: &str = r#"# twinwall grub.cfg: A/B boot counting (see docs/image.md). Generated; do not edit.
set default=0
set timeout=1
set timeout_style=menu
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console

set ORDER="A B"
set A_OK=0
set A_TRY=0
set B_OK=0
set B_TRY=0
load_env ORDER A_OK A_TRY B_OK B_TRY

set SLOT=""
for s in $ORDER; do
    if [ -z "$SLOT" ]; then
        if [ "$s" = "A" -a "$A_OK" = "1" -a "$A_TRY" = "0" ]; then SLOT=A; fi
        if [ "$s" = "B" -a "$B_OK" = "1" -a "$B_TRY" = "0" ]; then SLOT=B; fi
    fi
done
if [ -z "$SLOT" ]; then
    echo "twinwall: no good slot, retrying the OK slots"
    if [ "$A_OK" = "1" ]; then A_TRY=0; fi
    if [ "$B_OK" = "1" ]; then B_TRY=0; fi
    for s in $ORDER; do
        if [ -z "$SLOT" ]; then
            if [ "$s" = "A" -a "$A_OK" = "1" ]; then SLOT=A; fi
            if [ "$s" = "B" -a "$B_OK" = "1" ]; then SLOT=B; fi
        fi
    done
fi
if [ -z "$SLOT" ]; then
    echo "twinwall: no OK slot, last resort: first slot of ORDER"
    for s in $ORDER; do
        if [ -z "$SLOT" ]; then SLOT=$s; fi
    done
fi
if [ "$SLOT" = "A" ]; then A_TRY=1; default=0; fi
if [ "$SLOT" = "B" ]; then B_TRY=1; default=1; fi
save_env ORDER A_OK A_TRY B_OK B_TRY
echo "twinwall: grub chose slot $SLOT"

"#;

/// Builds a core image with `grub-mkimage`: `i386-pc` (with `biosdisk`) or `x86_64-efi`.
pub fn mkimage(format: &str, early_cfg: &Path, out: &Path) -> Result<(), GrubError> {
    let dir = format!("{GRUB_LIB}/{format}");
    let mut args: Vec<String> = vec![
        "-O".into(),
        format.into(),
        "-d".into(),
        dir,
        "-c".into(),
        early_cfg.display().to_string(),
        "-p".into(),
        "/grub".into(),
        "-o".into(),
        out.display().to_string(),
    ];
    args.extend(MODULES.iter().map(|m| m.to_string()));
    if format == "i386-pc" {
        args.push("biosdisk".into());
    } else {
        // The EFI linux loader wants a graphics mode to hand to the kernel.
        args.extend(["efi_gop".into(), "efi_uga".into()]);
    }
    tool::run("grub-mkimage", &args, None)?;
    Ok(())
}

/// Patches the BIOS boot code: returns the new first sector (MBR) and the patched
/// core.img. `mbr` is the existing protective MBR (its partition table at 446.. is kept),
/// `boot_img` GRUB's boot.img, `core` the i386-pc core.img placed at `core_lba`.
pub fn bios_boot_sectors(
    mbr: &[u8; 512],
    boot_img: &[u8],
    core: &[u8],
    core_lba: u64,
    room: u64,
) -> Result<([u8; 512], Vec<u8>), GrubError> {
    if boot_img.len() != 512 {
        return Err(GrubError::BadBootImg {
            size: boot_img.len(),
        });
    }
    let mut core = core.to_vec();
    core.resize(core.len().div_ceil(SECTOR as usize) * SECTOR as usize, 0);
    if core.len() as u64 > room {
        return Err(GrubError::CoreTooLarge {
            size: core.len() as u64,
            room,
        });
    }
    let mut out = *mbr;
    // Boot code only: bytes 440..446 (disk signature) and the partition table stay.
    out[..440].copy_from_slice(&boot_img[..440]);
    // GRUB_BOOT_MACHINE_KERNEL_SECTOR: where boot.img loads diskboot (core's 1st sector).
    out[0x5c..0x64].copy_from_slice(&core_lba.to_le_bytes());
    // diskboot.img's blocklist at the end of its sector: the rest of core.img.
    let rest = (core.len() as u64 / SECTOR - 1) as u16;
    core[0x1f4..0x1fc].copy_from_slice(&(core_lba + 1).to_le_bytes());
    core[0x1fc..0x1fe].copy_from_slice(&rest.to_le_bytes());
    core[0x1fe..0x200].copy_from_slice(&0x820u16.to_le_bytes());
    Ok((out, core))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::Sizes;

    #[test]
    fn disk_config_boots_slot_partitions_with_slot_on_cmdline() {
        let cfg = disk_config(&Layout::plan(Sizes::default()));
        assert!(cfg.contains("linux ($disk,gpt3)/boot/vmlinuz"));
        assert!(cfg.contains("twinwall.slot=a"));
        assert!(cfg.contains("initrd ($disk,gpt4)/boot/initrd.img"));
        assert!(cfg.contains("twinwall.slot=b"));
        assert!(cfg.contains("console=ttyS0"));
        assert!(cfg.contains("save_env ORDER A_OK A_TRY B_OK B_TRY"));
        // The chosen slot's TRY is saved before any menu entry runs.
        assert!(cfg.find("save_env").unwrap() < cfg.find("menuentry").unwrap());
    }

    #[test]
    fn iso_config_offers_live_and_install_entries() {
        let cfg = iso_config("/twinwall/slot.squashfs");
        assert!(cfg.contains("echo \"twinwall: booting live image\""));
        assert!(cfg.contains("twinwall.slot=a twinwall.live=1\n"));
        assert!(cfg.contains("twinwall.live=1 twinwall.install=/dev/sda\n"));
        assert!(cfg.contains("twinwall.live=1 twinwall.install=$tw_install\n"));
        assert!(cfg.contains("set default=install-oem"));
        // The live entry stays the default without an OEM string.
        assert!(
            cfg.find("menuentry \"twinwall live\"").unwrap()
                < cfg.find("menuentry \"Install").unwrap()
        );
    }

    #[test]
    fn every_kernel_line_carries_the_command_line_and_the_speed_options() {
        let cfgs = [
            disk_config(&Layout::plan(Sizes::default())),
            iso_config("/twinwall/slot.squashfs"),
        ];
        for cfg in &cfgs {
            let lines: Vec<&str> = cfg
                .lines()
                .map(str::trim)
                .filter(|l| l.starts_with("linux ") || l.starts_with("if linux "))
                .collect();
            assert!(lines.len() >= 2, "{cfg}");
            for l in lines {
                assert!(
                    l.contains(&format!("{CMDLINE} {BOOT_SPEED_OPTIONS} twinwall.slot=")),
                    "{l}"
                );
            }
        }
        // One word each: the kernel splits its command line at spaces.
        assert_eq!(BOOT_SPEED_OPTIONS.split(' ').count(), 2);
    }

    /// The minimal QEMU boot (scripts/qemu-initramfs.sh, a shell script that cannot read
    /// this constant) must boot with the same speed options, or the two boots' kernel
    /// phases stop being comparable.
    #[test]
    fn minimal_boot_script_uses_the_same_speed_options() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/qemu-initramfs.sh");
        let script = std::fs::read_to_string(path).unwrap();
        assert!(
            script.contains(&format!("\nspeed=\"{BOOT_SPEED_OPTIONS}\"\n")),
            "{path} does not set speed=\"{BOOT_SPEED_OPTIONS}\""
        );
        assert_eq!(script.matches(" $speed ").count(), 3, "{path}");
    }

    #[test]
    fn bios_patch_sets_pointers_and_keeps_partition_table() {
        let mut mbr = [0u8; 512];
        mbr[446..512].fill(0xAA);
        let boot: Vec<u8> = (0..512).map(|i| i as u8).collect();
        let core = vec![0x11u8; 512 * 3 + 100];
        let (m, c) = bios_boot_sectors(&mbr, &boot, &core, 2048, 1 << 20).unwrap();
        assert_eq!(&m[..0x5c], &boot[..0x5c]);
        assert_eq!(u64::from_le_bytes(m[0x5c..0x64].try_into().unwrap()), 2048);
        assert_eq!(&m[0x64..440], &boot[0x64..440]);
        assert!(m[446..].iter().all(|&b| b == 0xAA));
        assert_eq!(c.len(), 512 * 4);
        assert_eq!(
            u64::from_le_bytes(c[0x1f4..0x1fc].try_into().unwrap()),
            2049
        );
        assert_eq!(u16::from_le_bytes([c[0x1fc], c[0x1fd]]), 3);
        assert_eq!(u16::from_le_bytes([c[0x1fe], c[0x1ff]]), 0x820);
    }

    #[test]
    fn bios_patch_rejects_oversized_core_and_bad_boot_img() {
        let mbr = [0u8; 512];
        assert!(matches!(
            bios_boot_sectors(&mbr, &[0; 512], &[0; 4096], 2048, 2048),
            Err(GrubError::CoreTooLarge {
                size: 4096,
                room: 2048
            })
        ));
        assert!(matches!(
            bios_boot_sectors(&mbr, &[0; 511], &[0; 512], 2048, 2048),
            Err(GrubError::BadBootImg { size: 511 })
        ));
    }
}
