//! Assembling twinwall.img in a plain file: the GPT from [`crate::layout`], the ESP (FAT
//! with grub.cfg, grubenv and BOOTX64.EFI), GRUB's BIOS boot code, the slot squashfs
//! images at their partition offsets and an empty ext4 data filesystem. No root, no loop
//! devices.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::fat::Fat;
use crate::grub::{self, GrubError};
use crate::layout::{Layout, Role, SECTOR, Sizes};
use crate::slot::{BootState, GrubenvFile, SlotError};
use crate::tool::{self, ToolError};

/// FAT volume id of the ESP; GRUB's early config searches for it (`7717-0A0B`).
pub const ESP_VOLUME_ID: u32 = 0x7717_0A0B;
/// Path of the grubenv inside the ESP.
pub const ESP_GRUBENV: &str = "/grub/grubenv";

/// The ESP volume id as GRUB and blkid print it.
pub fn esp_uuid() -> String {
    let x = format!("{ESP_VOLUME_ID:08X}");
    format!("{}-{}", &x[..4], &x[4..])
}

/// Errors while assembling the disk image.
#[derive(Debug, Error)]
pub enum DiskError {
    /// A tool failed.
    #[error(transparent)]
    Tool(#[from] ToolError),
    /// A GRUB step failed.
    #[error(transparent)]
    Grub(#[from] GrubError),
    /// Writing the initial grubenv failed.
    #[error(transparent)]
    Slot(#[from] SlotError),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// A filesystem image is larger than its partition.
    #[error("{what} is {size} bytes but partition {partition} holds only {room} bytes")]
    TooLarge {
        /// What was being written.
        what: String,
        /// Partition name.
        partition: &'static str,
        /// Its size.
        size: u64,
        /// The partition size.
        room: u64,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DiskError + '_ {
    move |source| DiskError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What goes on the disk.
#[derive(Debug, Clone)]
pub struct DiskSpec {
    /// Partition sizes.
    pub sizes: Sizes,
    /// Slot A's squashfs.
    pub slot_a: PathBuf,
    /// Slot B's squashfs (normally empty on a fresh image).
    pub slot_b: Option<PathBuf>,
    /// The initial boot-counting state.
    pub boot: BootState,
    /// SOURCE_DATE_EPOCH for the filesystems' timestamps.
    pub epoch: u64,
}

/// Copies `src` into `image` at the partition's offset, refusing what does not fit.
pub fn write_partition(
    image: &Path,
    layout: &Layout,
    role: Role,
    src: &Path,
) -> Result<(), DiskError> {
    let p = layout.get(role);
    let size = std::fs::metadata(src).map_err(io(src))?.len();
    if size > p.size() {
        return Err(DiskError::TooLarge {
            what: src.display().to_string(),
            partition: p.name,
            size,
            room: p.size(),
        });
    }
    let mut out = OpenOptions::new()
        .write(true)
        .open(image)
        .map_err(io(image))?;
    out.seek(SeekFrom::Start(p.offset())).map_err(io(image))?;
    let mut f = File::open(src).map_err(io(src))?;
    std::io::copy(&mut f, &mut out).map_err(io(image))?;
    out.sync_all().map_err(io(image))?;
    Ok(())
}

/// Builds the disk image at `out`, using `work` for intermediate files.
pub fn build_disk(spec: &DiskSpec, work: &Path, out: &Path) -> Result<Layout, DiskError> {
    let layout = build_base(spec.sizes, &spec.boot, spec.epoch, work, out)?;
    write_partition(out, &layout, Role::SlotA, &spec.slot_a)?;
    if let Some(b) = &spec.slot_b {
        write_partition(out, &layout, Role::SlotB, b)?;
    }
    Ok(layout)
}

/// Builds the disk image at `out` with empty slots: GPT, GRUB for BIOS and UEFI, the ESP
/// with grub.cfg and the grubenv of `boot`, an empty data filesystem. The slots are
/// written afterwards ([`write_partition`]); `twinwall install`'s template is this disk.
pub fn build_base(
    sizes: Sizes,
    boot: &BootState,
    epoch: u64,
    work: &Path,
    out: &Path,
) -> Result<Layout, DiskError> {
    let layout = Layout::plan(sizes);
    std::fs::create_dir_all(work).map_err(io(work))?;
    let _ = std::fs::remove_file(out);
    File::create(out)
        .and_then(|f| f.set_len(layout.total_bytes))
        .map_err(io(out))?;
    tool::run(
        "sgdisk",
        layout.sgdisk_args(&out.display().to_string()),
        None,
    )?;

    // GRUB core images, both finding the ESP by its volume id.
    let early = work.join("early.cfg");
    std::fs::write(&early, grub::early_config(&esp_uuid())).map_err(io(&early))?;
    let core = work.join("core.img");
    grub::mkimage("i386-pc", &early, &core)?;
    let efi = work.join("BOOTX64.EFI");
    grub::mkimage("x86_64-efi", &early, &efi)?;

    // The ESP.
    let cfg = work.join("grub.cfg");
    std::fs::write(&cfg, grub::disk_config(&layout)).map_err(io(&cfg))?;
    let env = work.join("grubenv");
    GrubenvFile::create(&env, boot)?;
    let esp_img = work.join("esp.img");
    let esp = Fat::mkfs(
        &esp_img,
        layout.get(Role::Esp).size(),
        "TWINWALL",
        ESP_VOLUME_ID,
    )?
    .with_epoch(epoch);
    for d in ["/grub", "/EFI", "/EFI/BOOT"] {
        esp.mkdir(d)?;
    }
    esp.copy_in(&cfg, "/grub/grub.cfg")?;
    esp.copy_in(&env, ESP_GRUBENV)?;
    esp.copy_in(&efi, "/EFI/BOOT/BOOTX64.EFI")?;
    write_partition(out, &layout, Role::Esp, &esp_img)?;

    // An empty data filesystem, so the appliance needs no mkfs of its own.
    let data = work.join("data.img");
    make_ext4(&data, layout.get(Role::Data).size(), "data", None, epoch)?;
    write_partition(out, &layout, Role::Data, &data)?;

    // BIOS boot code last: it patches the protective MBR that sgdisk wrote.
    install_bios(out, &layout, &core)?;
    tracing::info!(image = %out.display(), bytes = layout.total_bytes, "disk image assembled");
    Ok(layout)
}

/// Makes an ext4 filesystem image of `bytes` bytes, optionally filled from `content`
/// (`mke2fs -d`, no root or mount needed), with fixed UUID and times.
pub fn make_ext4(
    path: &Path,
    bytes: u64,
    label: &str,
    content: Option<&Path>,
    epoch: u64,
) -> Result<(), DiskError> {
    let _ = std::fs::remove_file(path);
    let uuid = crate::layout::stable_guid(&format!("fs-{label}"));
    let mut args = vec![
        "-q".to_owned(),
        "-F".into(),
        "-t".into(),
        "ext4".into(),
        "-L".into(),
        label.into(),
        "-U".into(),
        uuid.clone(),
        "-E".into(),
        format!("root_owner=0:0,hash_seed={uuid}"),
    ];
    if let Some(dir) = content {
        args.push("-d".into());
        args.push(dir.display().to_string());
    }
    args.push(path.display().to_string());
    args.push(format!("{}k", bytes / 1024));
    let epoch = epoch.to_string();
    tool::run_env("mke2fs", args, None, &[("E2FSPROGS_FAKE_TIME", &epoch)])?;
    Ok(())
}

/// Writes GRUB's BIOS boot code: boot.img into the MBR, core.img into the BIOS boot
/// partition with its blocklist (see [`grub::bios_boot_sectors`]).
pub fn install_bios(image: &Path, layout: &Layout, core_img: &Path) -> Result<(), DiskError> {
    let boot_path = PathBuf::from(format!("{}/i386-pc/boot.img", grub::GRUB_LIB));
    let boot = std::fs::read(&boot_path).map_err(io(&boot_path))?;
    let core = std::fs::read(core_img).map_err(io(core_img))?;
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)
        .map_err(io(image))?;
    let mut mbr = [0u8; 512];
    f.read_exact(&mut mbr).map_err(io(image))?;
    let bios = layout.get(Role::BiosBoot);
    let (mbr, core) = grub::bios_boot_sectors(&mbr, &boot, &core, bios.start_lba, bios.size())?;
    f.seek(SeekFrom::Start(0)).map_err(io(image))?;
    f.write_all(&mbr).map_err(io(image))?;
    f.seek(SeekFrom::Start(bios.start_lba * SECTOR))
        .map_err(io(image))?;
    f.write_all(&core).map_err(io(image))?;
    f.sync_all().map_err(io(image))?;
    Ok(())
}

/// The ESP of a built image, for reading or editing its files (e.g. the grubenv).
pub fn esp(image: &Path, layout: &Layout) -> Fat {
    Fat::at(image, layout.get(Role::Esp).offset())
}
