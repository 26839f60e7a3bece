//! A/B slot logic: RAUC-style boot counting in grubenv (`ORDER`, `A_OK`, `A_TRY`, `B_OK`,
//! `B_TRY`), as a pure state type, plus the [`SlotControl`] trait and its grubenv-file
//! implementation used by init (mark good) and the update agent (try the new slot once).
//!
//! Semantics (RAUC's GRUB backend): a slot is *good* when `OK=1` and `TRY=0`. On every boot
//! GRUB takes the first good slot in `ORDER` and sets its `TRY=1` before booting it; init
//! marks the running slot good (`TRY=0`) after its health checks, so a slot that does not
//! come up is skipped on the next boot and the other slot boots. Marking a slot bad sets
//! `OK=0`. "Try once" puts a slot first in `ORDER` with `OK=1 TRY=0`. When no slot is good
//! GRUB resets `TRY` of the `OK` slots (as RAUC's grub.conf does) and boots the first of
//! those; when no slot is `OK` at all it boots the first slot of `ORDER` as a last resort.
//! [`BootState::grub_boot`] is that choice as a pure function; `grub.cfg` implements the
//! same in GRUB script (see [`crate::grub`]).

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::grubenv::{Grubenv, GrubenvError};

/// One of the two OS slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Slot {
    /// Slot A (partition `slot-a`).
    A,
    /// Slot B (partition `slot-b`).
    B,
}

impl Slot {
    /// Both slots in the default order.
    pub const ALL: [Slot; 2] = [Slot::A, Slot::B];

    /// The grubenv name: `A` or `B`.
    pub fn name(self) -> &'static str {
        match self {
            Slot::A => "A",
            Slot::B => "B",
        }
    }

    /// The kernel command line value of `twinwall.slot=`: `a` or `b`.
    pub fn cmdline(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }

    /// The GPT partition name (PARTNAME) of the slot.
    pub fn partlabel(self) -> &'static str {
        match self {
            Slot::A => "slot-a",
            Slot::B => "slot-b",
        }
    }

    /// The other slot.
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    /// Reads `twinwall.slot=a|b` from a kernel command line (`/proc/cmdline`).
    pub fn from_cmdline(cmdline: &str) -> Option<Slot> {
        cmdline
            .split_whitespace()
            .find_map(|w| w.strip_prefix("twinwall.slot="))
            .and_then(|v| v.parse().ok())
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Slot {
    type Err = SlotError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "A" | "a" => Ok(Slot::A),
            "B" | "b" => Ok(Slot::B),
            _ => Err(SlotError::UnknownSlot { name: s.into() }),
        }
    }
}

/// Errors of slot handling.
#[derive(Debug, Error)]
pub enum SlotError {
    /// A slot name other than A or B.
    #[error("unknown slot {name:?} (expected A or B)")]
    UnknownSlot {
        /// The name found.
        name: String,
    },
    /// A boot-counting variable with a value other than 0 or 1.
    #[error("grubenv variable {key} has value {value:?}, expected 0 or 1")]
    BadFlag {
        /// Variable name.
        key: String,
        /// Its value.
        value: String,
    },
    /// `ORDER` names a slot twice or is empty.
    #[error("grubenv ORDER={order:?} is invalid: {reason}")]
    BadOrder {
        /// The value.
        order: String,
        /// Why.
        reason: &'static str,
    },
    /// The grubenv block itself is malformed.
    #[error("{path}: {source}")]
    Format {
        /// File.
        path: PathBuf,
        /// What is wrong.
        source: GrubenvError,
    },
    /// Reading or writing the grubenv file failed.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
}

/// The boot-counting flags of one slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SlotFlags {
    /// `X_OK`: the slot holds a bootable system.
    pub ok: bool,
    /// `X_TRY`: GRUB booted the slot and nobody has confirmed it since.
    pub tried: bool,
}

impl SlotFlags {
    /// Good: bootable and not pending confirmation.
    pub fn good(self) -> bool {
        self.ok && !self.tried
    }
}

/// The whole boot-counting state as GRUB sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootState {
    /// `ORDER`: slots in priority order.
    pub order: Vec<Slot>,
    /// Flags of slot A.
    pub a: SlotFlags,
    /// Flags of slot B.
    pub b: SlotFlags,
}

impl Default for BootState {
    /// The defaults grub.cfg sets before `load_env`: `ORDER="A B"`, all flags 0.
    fn default() -> Self {
        Self {
            order: vec![Slot::A, Slot::B],
            a: SlotFlags::default(),
            b: SlotFlags::default(),
        }
    }
}

/// Why GRUB boots the slot it boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BootReason {
    /// The first good slot in ORDER.
    Good,
    /// No slot was good; the tries of the OK slots were reset and this one is retried.
    Retry,
    /// No slot is OK at all; the first slot of ORDER is booted as a last resort.
    LastResort,
}

fn flag(env: &Grubenv, key: &str) -> Result<bool, SlotError> {
    match env.get(key) {
        None | Some("0") => Ok(false),
        Some("1") => Ok(true),
        Some(v) => Err(SlotError::BadFlag {
            key: key.into(),
            value: v.into(),
        }),
    }
}

impl BootState {
    /// A fresh image: slot A installed and good, slot B empty.
    pub fn fresh() -> Self {
        Self {
            order: vec![Slot::A, Slot::B],
            a: SlotFlags {
                ok: true,
                tried: false,
            },
            b: SlotFlags::default(),
        }
    }

    /// Reads the state from a grubenv, with grub.cfg's defaults for missing variables.
    pub fn from_env(env: &Grubenv) -> Result<Self, SlotError> {
        let mut state = Self::default();
        if let Some(order) = env.get("ORDER") {
            let mut slots = Vec::new();
            for w in order.split_whitespace() {
                let s: Slot = w.parse()?;
                if slots.contains(&s) {
                    return Err(SlotError::BadOrder {
                        order: order.into(),
                        reason: "a slot appears twice",
                    });
                }
                slots.push(s);
            }
            if slots.is_empty() {
                return Err(SlotError::BadOrder {
                    order: order.into(),
                    reason: "it names no slot",
                });
            }
            state.order = slots;
        }
        state.a = SlotFlags {
            ok: flag(env, "A_OK")?,
            tried: flag(env, "A_TRY")?,
        };
        state.b = SlotFlags {
            ok: flag(env, "B_OK")?,
            tried: flag(env, "B_TRY")?,
        };
        Ok(state)
    }

    /// Writes the state into a grubenv (other variables are kept).
    pub fn apply_to(&self, env: &mut Grubenv) -> Result<(), GrubenvError> {
        let order: Vec<_> = self.order.iter().map(|s| s.name()).collect();
        env.set("ORDER", &order.join(" "))?;
        for s in Slot::ALL {
            let f = self.flags(s);
            env.set(&format!("{}_OK", s.name()), if f.ok { "1" } else { "0" })?;
            env.set(
                &format!("{}_TRY", s.name()),
                if f.tried { "1" } else { "0" },
            )?;
        }
        Ok(())
    }

    /// The flags of a slot.
    pub fn flags(&self, slot: Slot) -> SlotFlags {
        match slot {
            Slot::A => self.a,
            Slot::B => self.b,
        }
    }

    fn flags_mut(&mut self, slot: Slot) -> &mut SlotFlags {
        match slot {
            Slot::A => &mut self.a,
            Slot::B => &mut self.b,
        }
    }

    /// Confirms a slot after a successful boot: `OK=1 TRY=0`.
    pub fn mark_good(&mut self, slot: Slot) {
        *self.flags_mut(slot) = SlotFlags {
            ok: true,
            tried: false,
        };
    }

    /// Marks a slot unbootable: `OK=0 TRY=0`.
    pub fn mark_bad(&mut self, slot: Slot) {
        *self.flags_mut(slot) = SlotFlags {
            ok: false,
            tried: false,
        };
    }

    /// Makes `slot` the one GRUB boots next, once: first in ORDER, `OK=1 TRY=0`. If it is
    /// not marked good after that boot, the following boot falls back to the other slot.
    pub fn set_try_once(&mut self, slot: Slot) {
        self.order.retain(|s| *s != slot);
        self.order.insert(0, slot);
        if !self.order.contains(&slot.other()) {
            self.order.push(slot.other());
        }
        *self.flags_mut(slot) = SlotFlags {
            ok: true,
            tried: false,
        };
    }

    /// The first good slot in ORDER: the primary slot (None when no slot is good).
    pub fn primary(&self) -> Option<Slot> {
        self.order.iter().copied().find(|s| self.flags(*s).good())
    }

    /// What GRUB does at boot (mirrors grub.cfg): picks the slot, sets its `TRY=1`, and
    /// returns the new state with the slot and the reason.
    pub fn grub_boot(&self) -> (BootState, Slot, BootReason) {
        let mut next = self.clone();
        let (slot, reason) = if let Some(s) = self.primary() {
            (s, BootReason::Good)
        } else if let Some(s) = self.order.iter().copied().find(|s| self.flags(*s).ok) {
            for s in Slot::ALL {
                if next.flags(s).ok {
                    next.flags_mut(s).tried = false;
                }
            }
            (s, BootReason::Retry)
        } else {
            (self.order[0], BootReason::LastResort)
        };
        next.flags_mut(slot).tried = true;
        (next, slot, reason)
    }
}

/// Boot-slot control as used by init and the update agent.
pub trait SlotControl {
    /// The current state.
    fn state(&self) -> Result<BootState, SlotError>;
    /// Stores a new state.
    fn store(&mut self, state: &BootState) -> Result<(), SlotError>;

    /// Confirms the running slot (init, after its health checks).
    fn mark_good(&mut self, slot: Slot) -> Result<(), SlotError> {
        let mut s = self.state()?;
        s.mark_good(slot);
        self.store(&s)
    }
    /// Marks a slot unbootable.
    fn mark_bad(&mut self, slot: Slot) -> Result<(), SlotError> {
        let mut s = self.state()?;
        s.mark_bad(slot);
        self.store(&s)
    }
    /// Boots `slot` once on the next boot (update agent, after writing the slot).
    fn set_try_once(&mut self, slot: Slot) -> Result<(), SlotError> {
        let mut s = self.state()?;
        s.set_try_once(slot);
        self.store(&s)
    }
    /// The slot GRUB will boot next.
    fn next_slot(&self) -> Result<Slot, SlotError> {
        Ok(self.state()?.grub_boot().1)
    }
}

/// [`SlotControl`] on a grubenv file (on the appliance: `grub/grubenv` on the mounted ESP).
#[derive(Debug, Clone)]
pub struct GrubenvFile {
    path: PathBuf,
}

impl GrubenvFile {
    /// Uses the grubenv at `path` (it must exist; [`GrubenvFile::create`] makes one).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// Creates (or overwrites) the file with `state`.
    pub fn create(path: impl Into<PathBuf>, state: &BootState) -> Result<Self, SlotError> {
        let mut f = Self::new(path);
        f.write_env(&{
            let mut env = Grubenv::new();
            state
                .apply_to(&mut env)
                .map_err(|source| f.format(source))?;
            env
        })?;
        Ok(f)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn format(&self, source: GrubenvError) -> SlotError {
        SlotError::Format {
            path: self.path.clone(),
            source,
        }
    }

    fn io(&self, source: std::io::Error) -> SlotError {
        SlotError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Reads and parses the whole environment.
    pub fn read_env(&self) -> Result<Grubenv, SlotError> {
        let bytes = fs::read(&self.path).map_err(|e| self.io(e))?;
        Grubenv::parse(&bytes).map_err(|e| self.format(e))
    }

    /// Writes the environment: a temporary file beside it, fsync, rename, so a crash
    /// leaves either the old or the new block, never a torn one.
    pub fn write_env(&mut self, env: &Grubenv) -> Result<(), SlotError> {
        let block = env.to_block().map_err(|e| self.format(e))?;
        let dir = self
            .path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let tmp = dir.join(".grubenv.new");
        let write = || -> std::io::Result<()> {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(&block)?;
            f.sync_all()?;
            fs::rename(&tmp, &self.path)?;
            fs::File::open(dir)?.sync_all()
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            self.io(e)
        })?;
        tracing::debug!(path = %self.path.display(), "grubenv written");
        Ok(())
    }
}

impl SlotControl for GrubenvFile {
    fn state(&self) -> Result<BootState, SlotError> {
        BootState::from_env(&self.read_env()?)
    }

    fn store(&mut self, state: &BootState) -> Result<(), SlotError> {
        let mut env = self.read_env()?;
        state.apply_to(&mut env).map_err(|e| self.format(e))?;
        self.write_env(&env)
    }
}

/// Where the grubenv lives on the ESP (mounted at `esp_mount`).
pub fn esp_grubenv(esp_mount: &Path) -> PathBuf {
    esp_mount.join("grub/grubenv")
}

/// For init: marks the running slot (`a`/`b`, as on the kernel command line) good in the
/// grubenv of the ESP mounted read-write at `esp_mount`.
pub fn mark_good_on_esp(esp_mount: &Path, slot: &str) -> Result<(), SlotError> {
    GrubenvFile::new(esp_grubenv(esp_mount)).mark_good(slot.parse()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(order: &str, a: (bool, bool), b: (bool, bool)) -> BootState {
        BootState {
            order: order.split(' ').map(|s| s.parse().unwrap()).collect(),
            a: SlotFlags {
                ok: a.0,
                tried: a.1,
            },
            b: SlotFlags {
                ok: b.0,
                tried: b.1,
            },
        }
    }

    #[test]
    fn fresh_image_boots_a_and_init_confirms_it() {
        let s = BootState::fresh();
        let (after, slot, why) = s.grub_boot();
        assert_eq!((slot, why), (Slot::A, BootReason::Good));
        assert!(after.a.tried);
        let mut confirmed = after.clone();
        confirmed.mark_good(Slot::A);
        assert_eq!(confirmed, s);
    }

    #[test]
    fn update_tried_once_then_falls_back_when_not_confirmed() {
        let mut s = BootState::fresh();
        s.set_try_once(Slot::B);
        assert_eq!(s.order, [Slot::B, Slot::A]);
        let (s1, slot, _) = s.grub_boot();
        assert_eq!(slot, Slot::B);
        // B never marked good (broken): next boot is A.
        let (s2, slot, why) = s1.grub_boot();
        assert_eq!((slot, why), (Slot::A, BootReason::Good));
        assert_eq!(
            s2.b,
            SlotFlags {
                ok: true,
                tried: true
            }
        );
        // And it stays on A.
        let mut s3 = s2.clone();
        s3.mark_good(Slot::A);
        assert_eq!(s3.grub_boot().1, Slot::A);
    }

    #[test]
    fn update_confirmed_becomes_primary() {
        let mut s = BootState::fresh();
        s.set_try_once(Slot::B);
        let (mut s1, _, _) = s.grub_boot();
        s1.mark_good(Slot::B);
        assert_eq!(s1.primary(), Some(Slot::B));
        assert_eq!(s1.grub_boot().1, Slot::B);
    }

    #[test]
    fn no_good_slot_retries_ok_slots_then_last_resort() {
        let s = st("B A", (true, true), (true, true));
        let (n, slot, why) = s.grub_boot();
        assert_eq!((slot, why), (Slot::B, BootReason::Retry));
        assert_eq!(
            n.a,
            SlotFlags {
                ok: true,
                tried: false
            }
        );
        assert!(n.b.tried);
        let s = st("B A", (false, false), (false, true));
        assert_eq!(s.grub_boot().1, Slot::B);
        assert_eq!(s.grub_boot().2, BootReason::LastResort);
    }

    #[test]
    fn mark_bad_skips_slot() {
        let mut s = st("A B", (true, false), (true, false));
        s.mark_bad(Slot::A);
        assert_eq!(s.primary(), Some(Slot::B));
    }

    #[test]
    fn set_try_once_on_single_slot_order_adds_other() {
        let mut s = st("A", (true, false), (false, false));
        s.set_try_once(Slot::B);
        assert_eq!(s.order, [Slot::B, Slot::A]);
    }

    #[test]
    fn env_round_trip_and_defaults() {
        let mut env = Grubenv::new();
        assert_eq!(BootState::from_env(&env).unwrap(), BootState::default());
        env.set("other", "kept").unwrap();
        let s = st("B A", (true, true), (false, false));
        s.apply_to(&mut env).unwrap();
        assert_eq!(BootState::from_env(&env).unwrap(), s);
        assert_eq!(env.get("other"), Some("kept"));
        assert_eq!(env.get("ORDER"), Some("B A"));
    }

    #[test]
    fn env_rejects_bad_values() {
        let mut env = Grubenv::new();
        env.set("A_OK", "yes").unwrap();
        let e = BootState::from_env(&env).unwrap_err().to_string();
        assert!(e.contains("A_OK") && e.contains("yes"), "{e}");
        let mut env = Grubenv::new();
        env.set("ORDER", "A A").unwrap();
        assert!(
            BootState::from_env(&env)
                .unwrap_err()
                .to_string()
                .contains("twice")
        );
        env.set("ORDER", "A C").unwrap();
        assert!(matches!(
            BootState::from_env(&env),
            Err(SlotError::UnknownSlot { .. })
        ));
        env.set("ORDER", " ").unwrap();
        assert!(matches!(
            BootState::from_env(&env),
            Err(SlotError::BadOrder { .. })
        ));
    }

    #[test]
    fn cmdline_slot() {
        assert_eq!(
            Slot::from_cmdline("console=ttyS0 twinwall.slot=b quiet"),
            Some(Slot::B)
        );
        assert_eq!(Slot::from_cmdline("console=ttyS0"), None);
        assert_eq!(Slot::from_cmdline("twinwall.slot=c"), None);
    }
}
