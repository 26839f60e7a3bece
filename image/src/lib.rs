//! twinwall image tooling: the A/B slot logic shared with init and the update agent
//! ([`slot`], [`grubenv`]), and the build side: rootfs assembly from pinned Debian
//! packages, the reproducible slot squashfs, the GPT A/B disk image with GRUB for BIOS and
//! UEFI, the hybrid ISO, and flashing a disk with a node's config partition.

pub mod build;
pub mod disk;
pub mod fat;
pub mod flash;
pub mod grub;
pub mod grubenv;
pub mod install;
pub mod layout;
pub mod modules;
pub mod reproducible;
pub mod rootfs;
pub mod slot;
pub mod tool;

pub use grubenv::{Grubenv, GrubenvError};
pub use slot::{BootReason, BootState, GrubenvFile, Slot, SlotControl, SlotError, SlotFlags};
