//! One code layout for twinwall's processes when the CPU is emulated (QEMU TCG).
//!
//! QEMU's TCG translates guest code into host code block by block and keys the
//! translations by physical *and* virtual address. With address space layout
//! randomisation every exec of the 15 MB static-pie `twinwall` maps it at another address,
//! so each service retranslates the code PID 1 and the services before it already ran:
//! in the lab's boots 60-90 ms from `main` to logging set up and as much again to the
//! config loaded, per process, against 6-20 ms with one layout (docs/init.md, "Boot speed
//! round 6"). So, on an emulated CPU only, PID 1 sets `ADDR_NO_RANDOMIZE` on itself
//! before it execs the slot's binary and starts the services; the personality is
//! inherited, so every twinwall process (and the `nft` they run) shares one layout.
//!
//! On hardware, and under a hardware hypervisor (KVM, Hyper-V, VMware, Xen), nothing is
//! retranslated, the gain is nil and ASLR stays on. `twinwall.aslr=on|off` on the kernel
//! command line forces either way. The cost where it is off: a memory-corruption bug in a
//! network-facing service would meet a known layout — the services are Rust, the lab and
//! test VMs are where TCG runs.

use crate::sys::Syscalls;

/// `twinwall.aslr=`: what the command line asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AslrChoice {
    /// Decide from the CPU (the default): off only on an emulated CPU.
    #[default]
    Auto,
    /// Keep address space layout randomisation, also under emulation.
    On,
    /// One fixed layout for every twinwall process, also on hardware.
    Off,
}

impl AslrChoice {
    /// Parses the value of `twinwall.aslr=` (`on`, `off`, `auto`).
    pub fn parse(value: &str) -> Option<AslrChoice> {
        match value {
            "auto" => Some(AslrChoice::Auto),
            "on" | "1" | "yes" => Some(AslrChoice::On),
            "off" | "0" | "no" => Some(AslrChoice::Off),
            _ => None,
        }
    }
}

/// What the machine's CPU tells about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CpuFacts {
    /// The `hypervisor` CPUID bit (leaf 1, ECX bit 31): some virtual machine.
    pub hypervisor_bit: bool,
    /// The hypervisor signature of CPUID leaf 0x40000000 (`KVMKVMKVM`, `TCGTCGTCGTCG`,
    /// `Microsoft Hv`, ...), NULs trimmed; empty when there is none.
    pub signature: String,
    /// `/sys/class/dmi/id/sys_vendor`, trimmed (`QEMU` for every QEMU machine).
    pub dmi_vendor: String,
}

/// The decision and why, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutDecision {
    /// Whether twinwall's processes run with one fixed layout (`ADDR_NO_RANDOMIZE`).
    pub shared: bool,
    /// One line for the console and the log.
    pub reason: String,
}

/// Hypervisor signatures of hardware virtualisation: the guest's code runs natively there.
const ACCELERATED: [&str; 6] = [
    "KVMKVMKVM",
    "Microsoft Hv",
    "VMwareVMware",
    "XenVMMXenVMM",
    "ACRNACRNACRN",
    "bhyve bhyve",
];

/// Whether the CPU is emulated by QEMU's TCG: QEMU announces TCG with the signature
/// `TCGTCGTCGTCG`; a QEMU machine (DMI vendor `QEMU`) whose CPU has the hypervisor bit but
/// no known accelerator's signature is TCG too (older QEMUs leave the leaf empty). Pure.
pub fn emulated(cpu: &CpuFacts) -> bool {
    if cpu.signature == "TCGTCGTCGTCG" {
        return true;
    }
    cpu.hypervisor_bit && cpu.dmi_vendor == "QEMU" && !ACCELERATED.contains(&cpu.signature.as_str())
}

/// Decides the layout from the command line's choice and the CPU. Pure.
pub fn decide(choice: AslrChoice, cpu: &CpuFacts) -> LayoutDecision {
    let what = if cpu.signature.is_empty() {
        format!("DMI vendor `{}`, no hypervisor signature", cpu.dmi_vendor)
    } else {
        format!(
            "DMI vendor `{}`, hypervisor `{}`",
            cpu.dmi_vendor, cpu.signature
        )
    };
    match choice {
        AslrChoice::On => LayoutDecision {
            shared: false,
            reason: "ASLR on (twinwall.aslr=on)".into(),
        },
        AslrChoice::Off => LayoutDecision {
            shared: true,
            reason: "one code layout for twinwall's processes, ASLR off (twinwall.aslr=off)".into(),
        },
        AslrChoice::Auto if emulated(cpu) => LayoutDecision {
            shared: true,
            reason: format!(
                "emulated CPU ({what}): one code layout for twinwall's processes, ASLR off \
                 (TCG translates each layout anew; twinwall.aslr=on keeps it)"
            ),
        },
        AslrChoice::Auto => LayoutDecision {
            shared: false,
            reason: format!("ASLR on ({what})"),
        },
    }
}

/// Reads the CPUID bits and the DMI vendor (on other architectures no hypervisor: ASLR
/// stays).
pub fn read_facts(sys: &dyn Syscalls) -> CpuFacts {
    let dmi_vendor = sys
        .read_file(std::path::Path::new("/sys/class/dmi/id/sys_vendor"))
        .map(|v| String::from_utf8_lossy(&v).trim().to_string())
        .unwrap_or_default();
    let hv = sys.hypervisor();
    CpuFacts {
        hypervisor_bit: hv.is_some(),
        signature: hv.unwrap_or_default(),
        dmi_vendor,
    }
}

/// Decides and, when the layout is to be shared, sets `ADDR_NO_RANDOMIZE` on PID 1 (its
/// next exec and every child inherit it). A failing call is logged and leaves ASLR on.
pub fn apply(sys: &dyn Syscalls, choice: AslrChoice) -> LayoutDecision {
    let d = decide(choice, &read_facts(sys));
    if d.shared
        && let Err(e) = sys.no_address_randomization()
    {
        let reason = format!("{}; personality(ADDR_NO_RANDOMIZE) failed: {e}", d.reason);
        tracing::warn!(errno = %e, "cannot turn address randomisation off; it stays on");
        return LayoutDecision {
            shared: false,
            reason,
        };
    }
    tracing::info!(shared = d.shared, reason = %d.reason, "code layout");
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpu(bit: bool, sig: &str, vendor: &str) -> CpuFacts {
        CpuFacts {
            hypervisor_bit: bit,
            signature: sig.into(),
            dmi_vendor: vendor.into(),
        }
    }

    #[test]
    fn tcg_shares_one_layout_and_hardware_keeps_aslr() {
        assert!(decide(AslrChoice::Auto, &cpu(true, "TCGTCGTCGTCG", "QEMU")).shared);
        // an older QEMU with an empty leaf on a QEMU machine: TCG as well
        assert!(decide(AslrChoice::Auto, &cpu(true, "", "QEMU")).shared);
        // KVM runs guest code natively: nothing is retranslated
        let kvm = decide(AslrChoice::Auto, &cpu(true, "KVMKVMKVM", "QEMU"));
        assert!(!kvm.shared);
        assert!(kvm.reason.contains("KVMKVMKVM"), "{}", kvm.reason);
        assert!(!decide(AslrChoice::Auto, &cpu(false, "", "Supermicro")).shared);
        assert!(!decide(AslrChoice::Auto, &cpu(true, "Microsoft Hv", "Microsoft")).shared);
        // a hypervisor bit on a non-QEMU machine without a known signature: keep ASLR
        assert!(!decide(AslrChoice::Auto, &cpu(true, "", "Dell Inc.")).shared);
    }

    #[test]
    fn the_command_line_forces_either_way() {
        let tcg = cpu(true, "TCGTCGTCGTCG", "QEMU");
        let hw = cpu(false, "", "Supermicro");
        assert!(!decide(AslrChoice::On, &tcg).shared);
        assert!(decide(AslrChoice::Off, &hw).shared);
        assert_eq!(AslrChoice::parse("on"), Some(AslrChoice::On));
        assert_eq!(AslrChoice::parse("off"), Some(AslrChoice::Off));
        assert_eq!(AslrChoice::parse("auto"), Some(AslrChoice::Auto));
        assert_eq!(AslrChoice::parse("maybe"), None);
    }
}
