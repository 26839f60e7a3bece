//! The kernel command line as init reads it: `twinwall.*` options, pure parsing.
//!
//! | option | meaning |
//! |---|---|
//! | `twinwall.slot=a\|b` | boot slot whose squashfs becomes `/` |
//! | `twinwall.live=1\|PATH` | live ISO: the slot image is a file on the ISO (default `/twinwall/slot.squashfs`) |
//! | `twinwall.root=initramfs` | stay in the initramfs (no slot; minimal boots, tests) |
//! | `twinwall.services=a,b` | override the service set (`none`: no services) |
//! | `twinwall.shutdown_when_up=poweroff\|reboot` | orderly shutdown once services are up (boot tests) |
//! | `twinwall.modules=PATH` | module list file (default `/lib/modules/twinwall.modules`) |
//! | `twinwall.shutdown_when_healthy=poweroff\|reboot` | orderly shutdown once health has reported (boot tests) |
//! | `twinwall.test_panic=1` | test only: PID 1 panics after the boot phases (must reboot) |
//! | `twinwall.peer_absent_after=SECONDS` | health: how long sync may go without its peer (default 20) |
//! | `twinwall.install=/dev/DISK` | install the running slot to DISK (`twinwall install`), then power off |
//! | `twinwall.after_install=poweroff\|reboot` | what to do after a successful install (default poweroff) |
//! | `twinwall.health_deadline=SECONDS` | health: reboot to the fallback slot when not healthy by then (default 300) |
//! | `twinwall.late_modules=boot` | load the slot's late modules with the root modules, before the services (default: after services up) |
//! | `twinwall.aslr=auto\|on\|off` | address space layout randomisation of twinwall's processes: `auto` (default) turns it off only on an emulated CPU, where one layout saves retranslating the code per process ([`crate::layout`]) |
//! | `twinwall.start=parallel\|sequential` | start the services by dependency (`parallel`) or each after all before it are ready (`sequential`, the default: faster on one vCPU, docs/init.md) |

use crate::sys::PowerAction;

/// Parsed `twinwall.*` options of `/proc/cmdline`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cmdline {
    /// `twinwall.slot`.
    pub slot: Option<String>,
    /// `twinwall.live=1` or `twinwall.live=/PATH/ON/ISO`.
    pub live: bool,
    /// The slot image's path on the ISO when `twinwall.live=` gave one.
    pub live_image: Option<String>,
    /// `twinwall.root=initramfs`.
    pub stay_in_initramfs: bool,
    /// `twinwall.services`.
    pub services: Option<Vec<String>>,
    /// `twinwall.shutdown_when_up`.
    pub shutdown_when_up: Option<PowerAction>,
    /// `twinwall.modules`.
    pub modules: Option<String>,
    /// `twinwall.peer_absent_after`, in seconds.
    pub peer_absent_after: Option<u64>,
    /// `twinwall.shutdown_when_healthy`.
    pub shutdown_when_healthy: Option<PowerAction>,
    /// `twinwall.install=/dev/DISK`: the disk to install to.
    pub install: Option<String>,
    /// `twinwall.after_install`.
    pub after_install: Option<PowerAction>,
    /// `twinwall.health_deadline`, in seconds.
    pub health_deadline: Option<u64>,
    /// `twinwall.test_panic=1`.
    pub test_panic: bool,
    /// `twinwall.start=parallel`: services start by dependency, not one after another.
    pub parallel_start: bool,
    /// `twinwall.late_modules=boot`: the late list loads before the services.
    pub late_modules_at_boot: bool,
    /// `twinwall.aslr=`.
    pub aslr: crate::layout::AslrChoice,
    /// Options with the `twinwall.` prefix that init does not know (logged, not fatal:
    /// a typo on the kernel command line must not brick the box).
    pub unknown: Vec<String>,
}

impl Cmdline {
    /// Parses the contents of `/proc/cmdline`.
    pub fn parse(text: &str) -> Cmdline {
        let mut c = Cmdline::default();
        for word in text.split_whitespace() {
            let Some(opt) = word.strip_prefix("twinwall.") else {
                continue;
            };
            let (key, value) = opt.split_once('=').unwrap_or((opt, "1"));
            match key {
                "slot" => c.slot = Some(value.to_string()),
                "live" => {
                    c.live = !matches!(value, "0" | "no" | "false");
                    if value.starts_with('/') {
                        c.live_image = Some(value.to_string());
                    }
                }
                "root" if value == "initramfs" => c.stay_in_initramfs = true,
                "services" => {
                    c.services = Some(
                        value
                            .split(',')
                            .filter(|s| !s.is_empty() && *s != "none")
                            .map(str::to_string)
                            .collect(),
                    )
                }
                "install" if value.starts_with("/dev/") && value.len() > 5 => {
                    c.install = Some(value.to_string())
                }
                "shutdown_when_up" | "shutdown_when_healthy" | "after_install" => {
                    let action = match value {
                        "poweroff" => Some(PowerAction::Poweroff),
                        "reboot" => Some(PowerAction::Reboot),
                        "halt" => Some(PowerAction::Halt),
                        _ => {
                            c.unknown.push(word.to_string());
                            None
                        }
                    };
                    if key == "after_install" {
                        c.after_install = action;
                    } else if key == "shutdown_when_up" {
                        c.shutdown_when_up = action;
                    } else {
                        c.shutdown_when_healthy = action;
                    }
                }
                "modules" => c.modules = Some(value.to_string()),
                "test_panic" => c.test_panic = value == "1",
                "late_modules" => match value {
                    "boot" => c.late_modules_at_boot = true,
                    "up" => c.late_modules_at_boot = false,
                    _ => c.unknown.push(word.to_string()),
                },
                "start" => match value {
                    "sequential" => c.parallel_start = false,
                    "parallel" => c.parallel_start = true,
                    _ => c.unknown.push(word.to_string()),
                },
                "aslr" => match crate::layout::AslrChoice::parse(value) {
                    Some(a) => c.aslr = a,
                    None => c.unknown.push(word.to_string()),
                },
                "peer_absent_after" => match value.parse() {
                    Ok(n) => c.peer_absent_after = Some(n),
                    Err(_) => c.unknown.push(word.to_string()),
                },
                "health_deadline" => match value.parse() {
                    Ok(n) => c.health_deadline = Some(n),
                    Err(_) => c.unknown.push(word.to_string()),
                },
                _ => c.unknown.push(word.to_string()),
            }
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_twinwall_options_and_ignores_the_rest() {
        let c = Cmdline::parse(
            "BOOT_IMAGE=/vmlinuz console=ttyS0 twinwall.slot=b twinwall.services=none \
             twinwall.shutdown_when_up=poweroff twinwall.bogus=1 quiet\n",
        );
        assert_eq!(c.slot.as_deref(), Some("b"));
        assert_eq!(c.services, Some(vec![]));
        assert_eq!(c.shutdown_when_up, Some(PowerAction::Poweroff));
        assert_eq!(c.unknown, ["twinwall.bogus=1"]);
        assert!(!c.live);
        assert!(Cmdline::parse("twinwall.live=1").live);
        // What the image's grub.cfg writes for the ISO.
        let iso = Cmdline::parse("twinwall.slot=live twinwall.live=/twinwall/slot.squashfs");
        assert!(iso.live);
        assert_eq!(iso.live_image.as_deref(), Some("/twinwall/slot.squashfs"));
        assert!(Cmdline::parse("twinwall.root=initramfs").stay_in_initramfs);
    }

    #[test]
    fn install_names_a_device_node() {
        let c = Cmdline::parse(
            "twinwall.live=1 twinwall.install=/dev/vda twinwall.after_install=reboot",
        );
        assert_eq!(c.install.as_deref(), Some("/dev/vda"));
        assert_eq!(c.after_install, Some(PowerAction::Reboot));
        // Not a device path: logged as unknown, never an install.
        let c = Cmdline::parse("twinwall.install=vda twinwall.install=/dev/");
        assert_eq!(c.install, None);
        assert_eq!(c.unknown.len(), 2);
    }

    #[test]
    fn start_order_is_sequential_unless_parallel_is_asked_for() {
        assert!(!Cmdline::parse("twinwall.slot=a").parallel_start);
        assert!(Cmdline::parse("twinwall.start=parallel").parallel_start);
        assert!(!Cmdline::parse("twinwall.start=sequential").parallel_start);
        let c = Cmdline::parse("twinwall.start=random");
        assert!(!c.parallel_start);
        assert_eq!(c.unknown, ["twinwall.start=random"]);
    }

    #[test]
    fn aslr_is_decided_from_the_cpu_unless_the_command_line_says() {
        use crate::layout::AslrChoice;
        assert_eq!(Cmdline::parse("").aslr, AslrChoice::Auto);
        assert_eq!(Cmdline::parse("twinwall.aslr=on").aslr, AslrChoice::On);
        assert_eq!(Cmdline::parse("twinwall.aslr=off").aslr, AslrChoice::Off);
        let c = Cmdline::parse("twinwall.aslr=sometimes");
        assert_eq!(c.aslr, AslrChoice::Auto);
        assert_eq!(c.unknown, ["twinwall.aslr=sometimes"]);
    }

    #[test]
    fn late_modules_load_after_services_up_unless_boot_is_asked_for() {
        assert!(!Cmdline::parse("").late_modules_at_boot);
        assert!(Cmdline::parse("twinwall.late_modules=boot").late_modules_at_boot);
        assert!(!Cmdline::parse("twinwall.late_modules=up").late_modules_at_boot);
        assert_eq!(
            Cmdline::parse("twinwall.late_modules=never").unknown,
            ["twinwall.late_modules=never"]
        );
    }
}
