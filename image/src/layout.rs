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

/// A partition as read back from a GPT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GptEntry {
    /// 1-based number.
    pub number: u32,
    /// PARTNAME.
    pub name: String,
    /// First LBA.
    pub first_lba: u64,
    /// Last LBA (inclusive).
    pub last_lba: u64,
}

impl GptEntry {
    /// Byte offset.
    pub fn offset(&self) -> u64 {
        self.first_lba * SECTOR
    }
    /// Size in bytes.
    pub fn size(&self) -> u64 {
        (self.last_lba + 1 - self.first_lba) * SECTOR
    }
}

/// Why a GPT could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GptError {
    /// No `EFI PART` signature at LBA 1.
    #[error("no GPT header at LBA 1 (not a twinwall image?)")]
    NoHeader,
    /// The header's fields are out of range for the bytes given.
    #[error("GPT header is inconsistent: {0}")]
    Header(&'static str),
    /// The header CRC32 does not match.
    #[error("GPT header checksum mismatch")]
    HeaderCrc,
}

fn crc32(data: &[u8]) -> u32 {
    // CRC-32/ISO-HDLC, the one GPT uses. Bitwise is fast enough for a 16 KiB table and
    // saves a dependency for one checksum.
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

/// Reads the primary GPT from the first sectors of a disk (`head` must hold LBA 0..34).
pub fn read_gpt(head: &[u8]) -> Result<Vec<GptEntry>, GptError> {
    let h = head
        .get(SECTOR as usize..2 * SECTOR as usize)
        .ok_or(GptError::NoHeader)?;
    if &h[..8] != b"EFI PART" {
        return Err(GptError::NoHeader);
    }
    let u32_at = |o: usize| u32::from_le_bytes(h[o..o + 4].try_into().expect("4 bytes"));
    let u64_at = |o: usize| u64::from_le_bytes(h[o..o + 8].try_into().expect("8 bytes"));
    let hsize = u32_at(12) as usize;
    if !(92..=SECTOR as usize).contains(&hsize) {
        return Err(GptError::Header("header size"));
    }
    let mut hdr = h[..hsize].to_vec();
    hdr[16..20].fill(0);
    if crc32(&hdr) != u32_at(16) {
        return Err(GptError::HeaderCrc);
    }
    let entries_lba = u64_at(72) as usize;
    let count = u32_at(80) as usize;
    let esize = u32_at(84) as usize;
    if esize < 128 || count > 1024 {
        return Err(GptError::Header("entry size or count"));
    }
    let start = entries_lba * SECTOR as usize;
    let table = head
        .get(start..start + count * esize)
        .ok_or(GptError::Header("entry table beyond the bytes read"))?;
    let mut out = Vec::new();
    for i in 0..count {
        let e = &table[i * esize..(i + 1) * esize];
        if e[..16].iter().all(|&b| b == 0) {
            continue;
        }
        let name: Vec<u16> = e[56..128]
            .chunks(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&c| c != 0)
            .collect();
        out.push(GptEntry {
            number: i as u32 + 1,
            name: String::from_utf16_lossy(&name),
            first_lba: u64::from_le_bytes(e[32..40].try_into().expect("8 bytes")),
            last_lba: u64::from_le_bytes(e[40..48].try_into().expect("8 bytes")),
        });
    }
    Ok(out)
}

/// A GPT moved to the end of a larger disk: what [`relocate_backup`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelocatedGpt {
    /// The new LBA 0 (protective MBR, its size field updated; boot code kept).
    pub mbr: Vec<u8>,
    /// The new LBA 1 (primary header pointing at the new backup).
    pub primary_header: Vec<u8>,
    /// Where the backup entry array starts (its header follows it, at the last LBA).
    pub backup_lba: u64,
    /// The backup entry array followed by the backup header.
    pub backup: Vec<u8>,
}

/// Moves the backup GPT to the end of a disk of `disk_sectors` sectors (what `sgdisk -e`
/// does), from the disk's first sectors `head` (LBA 0..=33). Pure: `twinwall flash` and
/// `twinwall install` write the result; the appliance, which has no sgdisk, installs with
/// it. Partitions are unchanged; only the last usable LBA grows.
pub fn relocate_backup(head: &[u8], disk_sectors: u64) -> Result<RelocatedGpt, GptError> {
    read_gpt(head)?;
    let s = SECTOR as usize;
    let h = &head[s..2 * s];
    let u32_at = |o: usize| u32::from_le_bytes(h[o..o + 4].try_into().expect("4 bytes"));
    let u64_at = |o: usize| u64::from_le_bytes(h[o..o + 8].try_into().expect("8 bytes"));
    let hsize = u32_at(12) as usize;
    let entries_lba = u64_at(72);
    let table_bytes = u32_at(80) as u64 * u32_at(84) as u64;
    let table_sectors = table_bytes.div_ceil(SECTOR);
    let last_used = read_gpt(head)?
        .iter()
        .map(|e| e.last_lba)
        .max()
        .unwrap_or(0);
    let last = disk_sectors
        .checked_sub(1)
        .ok_or(GptError::Header("empty disk"))?;
    let backup_lba = last - table_sectors.min(last);
    if backup_lba <= last_used {
        return Err(GptError::Header("disk smaller than the partition table"));
    }
    let table = &head[(entries_lba * SECTOR) as usize..][..table_bytes as usize];
    let seal = |hdr: &mut Vec<u8>| {
        hdr[16..20].fill(0);
        let crc = crc32(&hdr[..hsize]);
        hdr[16..20].copy_from_slice(&crc.to_le_bytes());
    };
    let mut primary = h.to_vec();
    primary[32..40].copy_from_slice(&last.to_le_bytes());
    primary[48..56].copy_from_slice(&(backup_lba - 1).to_le_bytes());
    seal(&mut primary);
    let mut backup_hdr = primary.clone();
    backup_hdr[24..32].copy_from_slice(&last.to_le_bytes());
    backup_hdr[32..40].copy_from_slice(&1u64.to_le_bytes());
    backup_hdr[72..80].copy_from_slice(&backup_lba.to_le_bytes());
    seal(&mut backup_hdr);
    let mut backup = table.to_vec();
    backup.resize((table_sectors * SECTOR) as usize, 0);
    backup.extend_from_slice(&backup_hdr);
    let mut mbr = head[..s].to_vec();
    // The protective entry (type 0xEE) covers the whole disk, capped at 32 bits.
    for e in 0..4 {
        let o = 446 + 16 * e;
        if mbr[o + 4] == 0xEE {
            let size = u32::try_from(last).unwrap_or(u32::MAX);
            mbr[o + 12..o + 16].copy_from_slice(&size.to_le_bytes());
        }
    }
    Ok(RelocatedGpt {
        mbr,
        primary_header: primary,
        backup_lba,
        backup,
    })
}

/// Writes [`relocate_backup`]'s result to a disk (block device or file) of
/// `disk_bytes` bytes whose first sectors are `head`.
pub fn write_relocated(
    disk: &mut std::fs::File,
    head: &[u8],
    disk_bytes: u64,
) -> Result<(), RelocateError> {
    use std::os::unix::fs::FileExt;
    let r = relocate_backup(head, disk_bytes / SECTOR)?;
    disk.write_all_at(&r.backup, r.backup_lba * SECTOR)?;
    disk.write_all_at(&r.primary_header, SECTOR)?;
    disk.write_all_at(&r.mbr, 0)?;
    disk.sync_all()?;
    Ok(())
}

/// Why the backup GPT could not be moved.
#[derive(Debug, thiserror::Error)]
pub enum RelocateError {
    /// The table read is unusable.
    #[error(transparent)]
    Gpt(#[from] GptError),
    /// Writing failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

#[cfg(test)]
mod gpt_tests {
    use super::*;

    #[test]
    fn crc32_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn garbage_is_not_a_gpt() {
        assert_eq!(read_gpt(&[0u8; 512 * 34]), Err(GptError::NoHeader));
        assert_eq!(read_gpt(&[0u8; 100]), Err(GptError::NoHeader));
    }
}
