//! The pure RFC 5798 state machine of one virtual router.
//!
//! [`step`] takes a router, the current (monotonic) time and one [`Event`] and returns the
//! new router plus the [`Action`]s the IO shell must carry out. The core never reads a
//! clock and never does IO: timers are data (absolute deadlines on the shell's monotonic
//! time line), so every transition can be tested as a table of inputs and outputs.
//!
//! Timers follow RFC 5798 §6.1 in centiseconds. Skew_Time and Master_Down_Interval are
//! computed in microseconds rather than truncated to whole centiseconds: with a 10 ms
//! advert interval the RFC's integer formula would make Skew_Time 0 for every priority,
//! and the priority ordering of backups would be lost.

use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Monotonic time as an offset from the shell's epoch (its start-up instant).
pub type Time = Duration;

/// Configuration of one virtual router (RFC 5798 §6.1 parameters).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Params {
    /// VRID, 1..=255.
    pub vrid: u8,
    /// Local priority, 1..=254 (255, the address owner, is not used by twinwall).
    pub priority: u8,
    /// Advertisement_Interval in centiseconds (1..=4095).
    pub advert_interval_cs: u16,
    /// Preempt_Mode.
    pub preempt: bool,
    /// How long after start-up (or after a fault clears) preemption stays suppressed.
    pub preempt_delay: Duration,
    /// Accept_Mode (reported; enforcing it is the ruleset's job).
    pub accept_mode: bool,
    /// This router's primary address on the interface (the tie-breaker of §6.4.3).
    pub primary: IpAddr,
}

/// The state of one virtual router.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// RFC 5798 §6.4.1: not running.
    Initialize,
    /// §6.4.2: monitoring the master.
    Backup,
    /// §6.4.3: owning the virtual addresses.
    Master,
    /// A tracked link of the sync group is down: neither advertising nor taking over.
    Fault,
}

/// The timers of one virtual router.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Timer {
    /// Master_Down_Timer (§6.2).
    MasterDown,
    /// Adver_Timer (§6.2).
    Adver,
    /// End of the preempt delay.
    PreemptDelay,
}

/// An input of the state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "event")]
pub enum Event {
    /// The router is enabled (§6.4.1).
    Startup,
    /// The router is disabled (service stop).
    Shutdown,
    /// A valid advertisement for this VRID arrived (already checked per §7.1).
    AdvertReceived {
        /// The sender's address (its primary address).
        from: IpAddr,
        /// The advertised priority.
        priority: u8,
        /// The advertised Max Advert Int, in centiseconds.
        max_advert_int_cs: u16,
    },
    /// Master_Down_Timer fired.
    MasterDownTimer,
    /// Adver_Timer fired.
    AdverTimer,
    /// The preempt delay is over.
    PreemptDelayExpired,
    /// A tracked link of the group went down. `send_zero`: this router's own link is
    /// still up, so a priority-0 advert can tell the peer to take over at once.
    TrackDown {
        /// Whether to send a priority-0 advert if this router is master.
        send_zero: bool,
    },
    /// All tracked links of the group are up again.
    TrackUp,
    /// Sync group: another router of the group became master, follow it.
    SyncMaster,
    /// Sync group: another router of the group became backup, follow it.
    SyncBackup,
}

/// An effect the IO shell carries out, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "action")]
pub enum Action {
    /// Multicast one advertisement with this priority.
    SendAdvert {
        /// Advertised priority (0 = the master is stepping down).
        priority: u8,
    },
    /// Add the virtual addresses (and the routes that follow them).
    AddVips,
    /// Remove the virtual addresses (and the routes that follow them).
    RemoveVips,
    /// Announce the virtual addresses: gratuitous ARP / unsolicited NA, repeated.
    SendGarp,
    /// Arm (or re-arm) a timer to fire at an absolute time.
    SetTimer {
        /// Which timer.
        timer: Timer,
        /// Deadline on the shell's monotonic time line.
        at: Time,
    },
    /// Disarm a timer.
    CancelTimer {
        /// Which timer.
        timer: Timer,
    },
    /// Publish a role change.
    Publish(RoleChange),
}

/// A state transition of one router.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleChange {
    /// State before.
    pub from: State,
    /// State after.
    pub to: State,
}

/// One virtual router: its parameters and its protocol state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Router {
    /// Configuration.
    pub params: Params,
    /// Current state.
    pub state: State,
    /// Master_Adver_Interval in centiseconds, learned from the master's adverts (§6.1).
    pub master_adver_interval_cs: u16,
    /// The current master's address, when known.
    pub master: Option<IpAddr>,
    /// True while the preempt delay runs: the router behaves as if Preempt_Mode were off.
    pub preempt_held: bool,
}

/// Skew_Time = ((256 - Priority) * Master_Adver_Interval) / 256 (RFC 5798 §6.1), exact.
pub fn skew_time(priority: u8, master_adver_interval_cs: u16) -> Duration {
    let us = (256 - u64::from(priority)) * u64::from(master_adver_interval_cs) * 10_000 / 256;
    Duration::from_micros(us)
}

/// Master_Down_Interval = 3 * Master_Adver_Interval + Skew_Time (RFC 5798 §6.1).
pub fn master_down_interval(priority: u8, master_adver_interval_cs: u16) -> Duration {
    centis(master_adver_interval_cs) * 3 + skew_time(priority, master_adver_interval_cs)
}

/// A centisecond count as a duration.
pub fn centis(cs: u16) -> Duration {
    Duration::from_millis(u64::from(cs) * 10)
}

impl Router {
    /// A router in Initialize, Master_Adver_Interval set to our own interval.
    pub fn new(params: Params) -> Router {
        Router {
            master_adver_interval_cs: params.advert_interval_cs,
            params,
            state: State::Initialize,
            master: None,
            preempt_held: false,
        }
    }

    fn preempt_effective(&self) -> bool {
        self.params.preempt && !self.preempt_held
    }

    fn mdi(&self) -> Duration {
        master_down_interval(self.params.priority, self.master_adver_interval_cs)
    }

    fn adver_at(&self, now: Time) -> Action {
        Action::SetTimer {
            timer: Timer::Adver,
            at: now + centis(self.params.advert_interval_cs),
        }
    }
}

/// Advances one router by one event. See the module doc; each arm cites RFC 5798.
pub fn step(mut r: Router, now: Time, event: Event) -> (Router, Vec<Action>) {
    let from = r.state;
    let mut out = Vec::new();
    let prio = r.params.priority;
    match (r.state, event) {
        // §6.4.1: Startup. Priority 255 (owner) is not used, so always go to Backup with
        // Master_Adver_Interval = Advertisement_Interval and the Master_Down_Timer armed.
        (State::Initialize, Event::Startup) | (State::Fault, Event::TrackUp) => {
            r.master_adver_interval_cs = r.params.advert_interval_cs;
            r.master = None;
            out.push(Action::SetTimer {
                timer: Timer::MasterDown,
                at: now + r.mdi(),
            });
            if r.params.preempt && !r.params.preempt_delay.is_zero() {
                r.preempt_held = true;
                out.push(Action::SetTimer {
                    timer: Timer::PreemptDelay,
                    at: now + r.params.preempt_delay,
                });
            }
            r.state = State::Backup;
        }
        // §6.4.2: Backup, Shutdown: cancel the Master_Down_Timer, go to Initialize.
        (State::Backup, Event::Shutdown) => {
            out.push(Action::CancelTimer {
                timer: Timer::MasterDown,
            });
            out.push(Action::CancelTimer {
                timer: Timer::PreemptDelay,
            });
            r.state = State::Initialize;
        }
        // §6.4.2: Master_Down_Timer fires: advertise, announce the addresses (GARP /
        // unsolicited NA), arm the Adver_Timer, become Master. SyncMaster does the same
        // because another router of the sync group just did.
        (State::Backup, Event::MasterDownTimer | Event::SyncMaster) => {
            out.push(Action::CancelTimer {
                timer: Timer::MasterDown,
            });
            out.push(Action::SendAdvert { priority: prio });
            out.push(Action::AddVips);
            out.push(Action::SendGarp);
            out.push(r.adver_at(now));
            r.master = Some(r.params.primary);
            r.state = State::Master;
        }
        // §6.4.2: an advert in Backup.
        (
            State::Backup,
            Event::AdvertReceived {
                from: sender,
                priority,
                max_advert_int_cs,
            },
        ) => {
            if priority == 0 {
                // The master is leaving: take over after Skew_Time.
                out.push(Action::SetTimer {
                    timer: Timer::MasterDown,
                    at: now + skew_time(prio, r.master_adver_interval_cs),
                });
            } else if !r.preempt_effective() || priority >= prio {
                // Accept this master: learn its interval, restart the Master_Down_Timer.
                r.master_adver_interval_cs = max_advert_int_cs.max(1);
                r.master = Some(sender);
                out.push(Action::SetTimer {
                    timer: Timer::MasterDown,
                    at: now + r.mdi(),
                });
            }
            // else: preempting a lower-priority master: discard, the timer runs out.
        }
        // §6.4.3: Adver_Timer fires in Master: advertise and re-arm.
        (State::Master, Event::AdverTimer) => {
            out.push(Action::SendAdvert { priority: prio });
            out.push(r.adver_at(now));
        }
        // §6.4.3: Shutdown in Master: cancel the Adver_Timer, send a priority-0 advert,
        // give up the addresses, go to Initialize.
        (State::Master, Event::Shutdown) => {
            out.push(Action::CancelTimer {
                timer: Timer::Adver,
            });
            out.push(Action::CancelTimer {
                timer: Timer::PreemptDelay,
            });
            out.push(Action::SendAdvert { priority: 0 });
            out.push(Action::RemoveVips);
            r.master = None;
            r.state = State::Initialize;
        }
        // §6.4.3: an advert in Master.
        (
            State::Master,
            Event::AdvertReceived {
                from: sender,
                priority,
                max_advert_int_cs,
            },
        ) => {
            if priority == 0 {
                // Another router is leaving: re-assert mastership at once (§6.4.3). The
                // leaver may have owned the neighbours' caches (a healed split brain), so
                // twinwall also re-announces the addresses.
                out.push(Action::SendAdvert { priority: prio });
                out.push(Action::SendGarp);
                out.push(r.adver_at(now));
            } else if priority > prio || (priority == prio && ip_gt(&sender, &r.params.primary)) {
                // A better master exists: become Backup. twinwall steps down with a
                // priority-0 advert (beyond §6.4.3): if the winner has not heard us it still
                // learns that we were master, and re-announces the addresses we claimed.
                out.push(Action::CancelTimer {
                    timer: Timer::Adver,
                });
                out.push(Action::SendAdvert { priority: 0 });
                r.master_adver_interval_cs = max_advert_int_cs.max(1);
                r.master = Some(sender);
                out.push(Action::SetTimer {
                    timer: Timer::MasterDown,
                    at: now + r.mdi(),
                });
                out.push(Action::RemoveVips);
                r.state = State::Backup;
            } else {
                // §6.4.3 says discard. twinwall also answers at once and re-announces the
                // addresses: a lower-priority master means a healed split brain, and the
                // loser's GARPs have just pointed the neighbours' caches at it.
                out.push(Action::SendAdvert { priority: prio });
                out.push(Action::SendGarp);
                out.push(r.adver_at(now));
            }
        }
        // Sync group: a sibling fell back to Backup; follow it as if a better master had
        // been heard, but keep the learned interval.
        (State::Master, Event::SyncBackup) => {
            out.push(Action::CancelTimer {
                timer: Timer::Adver,
            });
            out.push(Action::SetTimer {
                timer: Timer::MasterDown,
                at: now + r.mdi(),
            });
            out.push(Action::RemoveVips);
            r.master = None;
            r.state = State::Backup;
        }
        // Preempt delay over: from now on lower-priority masters are preempted.
        (_, Event::PreemptDelayExpired) => {
            r.preempt_held = false;
        }
        // A tracked link went down: stop everything; a master steps down with a
        // priority-0 advert so the peer takes over after Skew_Time.
        (State::Master, Event::TrackDown { send_zero }) => {
            out.push(Action::CancelTimer {
                timer: Timer::Adver,
            });
            out.push(Action::CancelTimer {
                timer: Timer::PreemptDelay,
            });
            if send_zero {
                out.push(Action::SendAdvert { priority: 0 });
            }
            out.push(Action::RemoveVips);
            r.master = None;
            r.state = State::Fault;
        }
        (State::Backup, Event::TrackDown { .. }) => {
            out.push(Action::CancelTimer {
                timer: Timer::MasterDown,
            });
            out.push(Action::CancelTimer {
                timer: Timer::PreemptDelay,
            });
            r.master = None;
            r.state = State::Fault;
        }
        (State::Initialize, Event::TrackDown { .. }) => {
            r.state = State::Fault;
        }
        (State::Fault, Event::Shutdown) => {
            r.state = State::Initialize;
        }
        // Everything else is a stale timer or an event that means nothing in this state.
        _ => {}
    }
    r.preempt_held &= r.state == State::Backup;
    if r.state != from {
        out.push(Action::Publish(RoleChange { from, to: r.state }));
    }
    (r, out)
}

/// §6.4.3 compares primary addresses "as unsigned integers in network byte order".
fn ip_gt(a: &IpAddr, b: &IpAddr) -> bool {
    match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) => a.octets() > b.octets(),
        (IpAddr::V6(a), IpAddr::V6(b)) => a.octets() > b.octets(),
        _ => false,
    }
}
