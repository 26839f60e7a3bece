//! The GPT layout of twinwall.img as pure data: partition order, names, types, sizes and
//! offsets, plus the `sgdisk` arguments that write it into a plain file.
//!
//! sgdisk (gdisk) writes the table rather than the `gpt` crate: it is the reference tool
//! for GPT on Debian, writes the protective MBR and the backup table correctly, accepts a
//! plain file, takes fixed GUIDs (so the table is reproducible), and its `--verify` gives
//! an independent check in tests. The partition names are the contract with init, which
//! finds the partitions by PARTNAME.

use serde::Serialize;

/// Bytes per logical sector (the image is built for 512-byte-sector disks).
pub const SECTOR: u64 = 512;
/// One mebibyte.
pub const MIB: u64 = 1024 * 1024;

/// What a partition is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// GRUB's BIOS core.img (no filesystem).
    BiosBoot,
    /// EFI system partition: FAT with GRUB for BIOS and UEFI, grub.cfg, grubenv.
    Esp,
    /// OS slot A (squashfs).
    SlotA,
    /// OS slot B (squashfs).
    SlotB,
    /// The node's config partition (identity, keys, bundles).
    Config,
    /// Persistent data (logs, state); formatted by init on first boot.
    Data,
}

/// One planned partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Partition {
    /// 1-based GPT partition number (GRUB's `gptN`).
    pub number: u32,
    /// What it holds.
    pub role: Role,
    /// GPT partition name (PARTNAME).
    pub name: &'static str,
    /// sgdisk type code (`ef02`, `ef00`, `8300`).
    pub type_code: &'static str,
    /// First LBA.
    pub start_lba: u64,
    /// Size in sectors.
    pub sectors: u64,
}

impl Partition {
    /// Byte offset in the image.
    pub fn offset(&self) -> u64 {
        self.start_lba * SECTOR
    }
    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.sectors * SECTOR
    }
    /// Last LBA (inclusive).
    pub fn end_lba(&self) -> u64 {
        self.start_lba + self.sectors - 1
    }
}

/// Partition sizes in MiB (the BIOS boot partition is always 1 MiB).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Sizes {
    /// ESP.
    pub esp_mib: u64,
    /// Each slot.
    pub slot_mib: u64,
    /// Config partition.
    pub config_mib: u64,
    /// Data partition as shipped in the image (init may grow it).
    pub data_mib: u64,
}

impl Default for Sizes {
    /// The sizes documented in docs/image.md.
    fn default() -> Self {
        Self {
            esp_mib: 32,
            slot_mib: 192,
            config_mib: 32,
            data_mib: 32,
        }
    }
}

/// The whole disk plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Layout {
    /// Partitions in on-disk order.
    pub partitions: Vec<Partition>,
    /// Total image size in bytes (including the backup GPT).
    pub total_bytes: u64,
    /// Disk GUID.
    pub disk_guid: String,
}

/// 1 MiB alignment: the first partition starts at LBA 2048, like every modern tool.
const ALIGN: u64 = MIB / SECTOR;
/// The backup GPT needs 33 sectors at the end; we reserve an aligned 1 MiB.
const TAIL: u64 = MIB / SECTOR;

/// A GUID derived from a name, so that the same inputs give the same table.
pub fn stable_guid(name: &str) -> String {
    use sha2::{Digest, Sha256};
    let h = Sha256::digest(format!("twinwall-image-guid:{name}").as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&h[..16]);
    b[6] = (b[6] & 0x0f) | 0x40; // version 4 layout
    b[8] = (b[8] & 0x3f) | 0x80; // RFC 4122 variant
    let x = hex::encode_upper(b);
    format!(
        "{}-{}-{}-{}-{}",
        &x[0..8],
        &x[8..12],
        &x[12..16],
        &x[16..20],
        &x[20..32]
    )
}

impl Layout {
    /// Plans the disk with the given sizes.
    pub fn plan(sizes: Sizes) -> Layout {
        let spec: [(Role, &'static str, &'static str, u64); 6] = [
            (Role::BiosBoot, "bios-boot", "ef02", 1),
            (Role::Esp, "esp", "ef00", sizes.esp_mib),
            (Role::SlotA, "slot-a", "8300", sizes.slot_mib),
            (Role::SlotB, "slot-b", "8300", sizes.slot_mib),
            (Role::Config, "config", "8300", sizes.config_mib),
            (Role::Data, "data", "8300", sizes.data_mib),
        ];
        let mut lba = ALIGN;
        let mut partitions = Vec::new();
        for (i, (role, name, type_code, mib)) in spec.into_iter().enumerate() {
            let sectors = mib * MIB / SECTOR;
            partitions.push(Partition {
                number: i as u32 + 1,
                role,
                name,
                type_code,
                start_lba: lba,
                sectors,
            });
            lba += sectors;
        }
        Layout {
            partitions,
            total_bytes: (lba + TAIL) * SECTOR,
            disk_guid: stable_guid("disk"),
        }
    }

    /// The partition with a role.
    pub fn get(&self, role: Role) -> &Partition {
        self.partitions
            .iter()
            .find(|p| p.role == role)
            .expect("every role is planned")
    }

    /// Arguments for `sgdisk` that write this table into an existing file of
    /// [`Layout::total_bytes`] bytes.
    pub fn sgdisk_args(&self, path: &str) -> Vec<String> {
        let mut a = vec!["--clear".to_owned()];
        for p in &self.partitions {
            let n = p.number;
            a.push(format!("--new={n}:{}:{}", p.start_lba, p.end_lba()));
            a.push(format!("--typecode={n}:{}", p.type_code));
            a.push(format!("--change-name={n}:{}", p.name));
            a.push(format!("--partition-guid={n}:{}", stable_guid(p.name)));
        }
        a.push(format!("--disk-guid={}", self.disk_guid));
        a.push(path.to_owned());
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_layout_is_aligned_contiguous_and_named() {
        let l = Layout::plan(Sizes::default());
        let names: Vec<_> = l.partitions.iter().map(|p| p.name).collect();
        assert_eq!(
            names,
            ["bios-boot", "esp", "slot-a", "slot-b", "config", "data"]
        );
        assert_eq!(l.partitions[0].start_lba, 2048);
        assert_eq!(l.partitions[0].size(), MIB);
        for w in l.partitions.windows(2) {
            assert_eq!(w[0].end_lba() + 1, w[1].start_lba);
        }
        for p in &l.partitions {
            assert_eq!(p.start_lba % 2048, 0, "{} is 1 MiB aligned", p.name);
        }
        let last = l.partitions.last().unwrap();
        assert!(
            l.total_bytes >= (last.end_lba() + 34) * SECTOR,
            "room for backup GPT"
        );
        assert_eq!(l.get(Role::SlotB).number, 4);
        assert_eq!(l.get(Role::Esp).number, 2);
    }

    #[test]
    fn guids_are_stable_and_distinct() {
        assert_eq!(stable_guid("slot-a"), stable_guid("slot-a"));
        assert_ne!(stable_guid("slot-a"), stable_guid("slot-b"));
        let g = stable_guid("x");
        assert_eq!(g.len(), 36);
        assert_eq!(&g[14..15], "4");
    }

    #[test]
    fn sgdisk_args_name_every_partition() {
        let l = Layout::plan(Sizes::default());
        let a = l.sgdisk_args("disk.img");
        assert_eq!(a.first().unwrap(), "--clear");
        assert_eq!(a.last().unwrap(), "disk.img");
        assert!(a.contains(&"--change-name=3:slot-a".to_owned()));
        assert!(a.contains(&"--typecode=1:ef02".to_owned()));
        assert!(a.contains(&"--new=1:2048:4095".to_owned()));
    }
}
