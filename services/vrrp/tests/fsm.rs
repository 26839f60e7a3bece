//! Table tests of the RFC 5798 §6.4 transitions of one virtual router.

use std::net::IpAddr;
use std::time::Duration;

use twinwall_vrrp::fsm::{
    Action, Event, Params, RoleChange, Router, State, Timer, master_down_interval, skew_time, step,
};

const MS: fn(u64) -> Duration = Duration::from_millis;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn params(priority: u8, preempt: bool, delay_ms: u64) -> Params {
    Params {
        vrid: 51,
        priority,
        advert_interval_cs: 10,
        preempt,
        preempt_delay: MS(delay_ms),
        accept_mode: false,
        primary: ip("203.0.113.2"),
    }
}

fn in_state(p: Params, state: State) -> Router {
    let mut r = Router::new(p);
    r.state = state;
    r
}

fn advert(from: &str, priority: u8) -> Event {
    Event::AdvertReceived {
        from: ip(from),
        priority,
        max_advert_int_cs: 10,
    }
}

fn publish(from: State, to: State) -> Action {
    Action::Publish(RoleChange { from, to })
}

#[test]
fn rfc5798_6_1_timer_formulas() {
    // Skew_Time = ((256 - Priority) * Master_Adver_Interval) / 256, here exact in µs.
    assert_eq!(
        skew_time(200, 100),
        Duration::from_micros(56 * 1_000_000 / 256)
    );
    assert_eq!(
        skew_time(100, 10),
        Duration::from_micros(156 * 100_000 / 256)
    );
    // Master_Down_Interval = 3 * Master_Adver_Interval + Skew_Time.
    assert_eq!(master_down_interval(100, 10), MS(300) + skew_time(100, 10));
    // A lower priority waits longer: the backups are ordered by priority.
    assert!(skew_time(100, 1) > skew_time(200, 1));
    assert!(
        skew_time(200, 1) > Duration::ZERO,
        "10 ms adverts keep a non-zero skew"
    );
}

/// One row: router before, time, event -> expected state and actions.
struct Row {
    section: &'static str,
    before: Router,
    event: Event,
    state: State,
    actions: Vec<Action>,
}

#[test]
fn rfc5798_6_4_transition_table() {
    let now = MS(1000);
    let mdi_100 = master_down_interval(100, 10);
    let mdi_200 = master_down_interval(200, 10);
    let rows = vec![
        Row {
            section: "6.4.1 Initialize + Startup (priority < 255) -> Backup, Master_Down_Timer",
            before: Router::new(params(100, true, 0)),
            event: Event::Startup,
            state: State::Backup,
            actions: vec![
                Action::SetTimer {
                    timer: Timer::MasterDown,
                    at: now + mdi_100,
                },
                publish(State::Initialize, State::Backup),
            ],
        },
        Row {
            section: "6.4.1 Startup with a preempt delay arms its timer",
            before: Router::new(params(200, true, 5000)),
            event: Event::Startup,
            state: State::Backup,
            actions: vec![
                Action::SetTimer {
                    timer: Timer::MasterDown,
                    at: now + mdi_200,
                },
                Action::SetTimer {
                    timer: Timer::PreemptDelay,
                    at: now + MS(5000),
                },
                publish(State::Initialize, State::Backup),
            ],
        },
        Row {
            section: "6.4.2 Backup + Shutdown -> Initialize, cancel Master_Down_Timer",
            before: in_state(params(100, true, 0), State::Backup),
            event: Event::Shutdown,
            state: State::Initialize,
            actions: vec![
                Action::CancelTimer {
                    timer: Timer::MasterDown,
                },
                Action::CancelTimer {
                    timer: Timer::PreemptDelay,
                },
                publish(State::Backup, State::Initialize),
            ],
        },
        Row {
            section: "6.4.2 Backup + Master_Down_Timer -> Master: advert, GARP, Adver_Timer",
            before: in_state(params(100, true, 0), State::Backup),
            event: Event::MasterDownTimer,
            state: State::Master,
            actions: vec![
                Action::CancelTimer {
                    timer: Timer::MasterDown,
                },
                Action::SendAdvert { priority: 100 },
                Action::AddVips,
                Action::SendGarp,
                Action::SetTimer {
                    timer: Timer::Adver,
                    at: now + MS(100),
                },
                publish(State::Backup, State::Master),
            ],
        },
        Row {
            section: "6.4.2 Backup + advert priority 0 -> Master_Down_Timer = Skew_Time",
            before: in_state(params(100, true, 0), State::Backup),
            event: advert("203.0.113.3", 0),
            state: State::Backup,
            actions: vec![Action::SetTimer {
                timer: Timer::MasterDown,
                at: now + skew_time(100, 10),
            }],
        },
        Row {
            section: "6.4.2 Backup + higher-priority advert -> reset Master_Down_Timer",
            before: in_state(params(100, true, 0), State::Backup),
            event: advert("203.0.113.3", 200),
            state: State::Backup,
            actions: vec![Action::SetTimer {
                timer: Timer::MasterDown,
                at: now + mdi_100,
            }],
        },
        Row {
            section: "6.4.2 Backup + equal-priority advert -> reset Master_Down_Timer",
            before: in_state(params(100, true, 0), State::Backup),
            event: advert("203.0.113.3", 100),
            state: State::Backup,
            actions: vec![Action::SetTimer {
                timer: Timer::MasterDown,
                at: now + mdi_100,
            }],
        },
        Row {
            section: "6.4.2 Backup, preempt, lower-priority advert -> discarded (will preempt)",
            before: in_state(params(200, true, 0), State::Backup),
            event: advert("203.0.113.3", 100),
            state: State::Backup,
            actions: vec![],
        },
        Row {
            section: "6.4.2 Backup, no preempt, lower-priority advert -> reset the timer",
            before: in_state(params(200, false, 0), State::Backup),
            event: advert("203.0.113.3", 100),
            state: State::Backup,
            actions: vec![Action::SetTimer {
                timer: Timer::MasterDown,
                at: now + mdi_200,
            }],
        },
        Row {
            section: "6.4.2 Backup + Adver_Timer (stale) -> nothing",
            before: in_state(params(100, true, 0), State::Backup),
            event: Event::AdverTimer,
            state: State::Backup,
            actions: vec![],
        },
        Row {
            section: "6.4.3 Master + Adver_Timer -> advert, re-arm",
            before: in_state(params(200, true, 0), State::Master),
            event: Event::AdverTimer,
            state: State::Master,
            actions: vec![
                Action::SendAdvert { priority: 200 },
                Action::SetTimer {
                    timer: Timer::Adver,
                    at: now + MS(100),
                },
            ],
        },
        Row {
            section: "6.4.3 Master + Shutdown -> priority-0 advert, Initialize",
            before: in_state(params(200, true, 0), State::Master),
            event: Event::Shutdown,
            state: State::Initialize,
            actions: vec![
                Action::CancelTimer {
                    timer: Timer::Adver,
                },
                Action::CancelTimer {
                    timer: Timer::PreemptDelay,
                },
                Action::SendAdvert { priority: 0 },
                Action::RemoveVips,
                publish(State::Master, State::Initialize),
            ],
        },
        Row {
            section: "6.4.3 Master + priority-0 advert -> advertise at once (and re-announce)",
            before: in_state(params(200, true, 0), State::Master),
            event: advert("203.0.113.3", 0),
            state: State::Master,
            actions: vec![
                Action::SendAdvert { priority: 200 },
                Action::SendGarp,
                Action::SetTimer {
                    timer: Timer::Adver,
                    at: now + MS(100),
                },
            ],
        },
        Row {
            section: "6.4.3 Master + higher-priority advert -> Backup (stepping down with priority 0)",
            before: in_state(params(100, true, 0), State::Master),
            event: advert("203.0.113.3", 200),
            state: State::Backup,
            actions: vec![
                Action::CancelTimer {
                    timer: Timer::Adver,
                },
                Action::SendAdvert { priority: 0 },
                Action::SetTimer {
                    timer: Timer::MasterDown,
                    at: now + mdi_100,
                },
                Action::RemoveVips,
                publish(State::Master, State::Backup),
            ],
        },
        Row {
            section: "6.4.3 Master + equal priority from a higher address -> Backup",
            before: in_state(params(100, true, 0), State::Master),
            event: advert("203.0.113.3", 100),
            state: State::Backup,
            actions: vec![
                Action::CancelTimer {
                    timer: Timer::Adver,
                },
                Action::SendAdvert { priority: 0 },
                Action::SetTimer {
                    timer: Timer::MasterDown,
                    at: now + mdi_100,
                },
                Action::RemoveVips,
                publish(State::Master, State::Backup),
            ],
        },
        Row {
            section: "6.4.3 Master + equal priority from a lower address -> stay, re-announce",
            before: in_state(params(100, true, 0), State::Master),
            event: advert("203.0.113.1", 100),
            state: State::Master,
            actions: vec![
                Action::SendAdvert { priority: 100 },
                Action::SendGarp,
                Action::SetTimer {
                    timer: Timer::Adver,
                    at: now + MS(100),
                },
            ],
        },
        Row {
            section: "6.4.3 Master + lower-priority advert (healed split brain) -> stay, re-announce",
            before: in_state(params(200, true, 0), State::Master),
            event: advert("203.0.113.3", 100),
            state: State::Master,
            actions: vec![
                Action::SendAdvert { priority: 200 },
                Action::SendGarp,
                Action::SetTimer {
                    timer: Timer::Adver,
                    at: now + MS(100),
                },
            ],
        },
        Row {
            section: "6.4.3 Master + Master_Down_Timer (stale) -> nothing",
            before: in_state(params(200, true, 0), State::Master),
            event: Event::MasterDownTimer,
            state: State::Master,
            actions: vec![],
        },
        Row {
            section: "FAULT: Master + tracked link down -> priority-0 advert, VIPs removed",
            before: in_state(params(200, true, 0), State::Master),
            event: Event::TrackDown { send_zero: true },
            state: State::Fault,
            actions: vec![
                Action::CancelTimer {
                    timer: Timer::Adver,
                },
                Action::CancelTimer {
                    timer: Timer::PreemptDelay,
                },
                Action::SendAdvert { priority: 0 },
                Action::RemoveVips,
                publish(State::Master, State::Fault),
            ],
        },
        Row {
            section: "FAULT: Master whose own link is down sends nothing",
            before: in_state(params(200, true, 0), State::Master),
            event: Event::TrackDown { send_zero: false },
            state: State::Fault,
            actions: vec![
                Action::CancelTimer {
                    timer: Timer::Adver,
                },
                Action::CancelTimer {
                    timer: Timer::PreemptDelay,
                },
                Action::RemoveVips,
                publish(State::Master, State::Fault),
            ],
        },
        Row {
            section: "FAULT: Backup + tracked link down -> Fault, no takeover",
            before: in_state(params(100, true, 0), State::Backup),
            event: Event::TrackDown { send_zero: true },
            state: State::Fault,
            actions: vec![
                Action::CancelTimer {
                    timer: Timer::MasterDown,
                },
                Action::CancelTimer {
                    timer: Timer::PreemptDelay,
                },
                publish(State::Backup, State::Fault),
            ],
        },
        Row {
            section: "FAULT: adverts and timers are ignored in Fault",
            before: in_state(params(100, true, 0), State::Fault),
            event: Event::MasterDownTimer,
            state: State::Fault,
            actions: vec![],
        },
        Row {
            section: "FAULT + tracked links up -> Backup as at Startup (6.4.1)",
            before: in_state(params(100, true, 0), State::Fault),
            event: Event::TrackUp,
            state: State::Backup,
            actions: vec![
                Action::SetTimer {
                    timer: Timer::MasterDown,
                    at: now + mdi_100,
                },
                publish(State::Fault, State::Backup),
            ],
        },
    ];
    for row in rows {
        let (r, actions) = step(row.before, now, row.event);
        assert_eq!(r.state, row.state, "{}", row.section);
        assert_eq!(actions, row.actions, "{}", row.section);
    }
}

#[test]
fn rfc5798_6_4_2_backup_learns_master_adver_interval() {
    let r = in_state(params(100, true, 0), State::Backup);
    let (r, actions) = step(
        r,
        MS(0),
        Event::AdvertReceived {
            from: ip("203.0.113.3"),
            priority: 200,
            max_advert_int_cs: 50,
        },
    );
    assert_eq!(r.master_adver_interval_cs, 50);
    assert_eq!(r.master, Some(ip("203.0.113.3")));
    assert_eq!(
        actions,
        vec![Action::SetTimer {
            timer: Timer::MasterDown,
            at: master_down_interval(100, 50)
        }]
    );
}

#[test]
fn preempt_delay_suppresses_preemption_until_it_expires() {
    let (r, _) = step(Router::new(params(200, true, 3000)), MS(0), Event::Startup);
    assert!(r.preempt_held);
    // A lower-priority master is accepted while the delay runs ...
    let (r, a) = step(r, MS(100), advert("203.0.113.3", 100));
    assert!(matches!(
        a[..],
        [Action::SetTimer {
            timer: Timer::MasterDown,
            ..
        }]
    ));
    // ... and discarded (so the Master_Down_Timer runs out) once it is over.
    let (r, a) = step(r, MS(3000), Event::PreemptDelayExpired);
    assert!(a.is_empty() && !r.preempt_held);
    let (r, a) = step(r, MS(3100), advert("203.0.113.3", 100));
    assert!(a.is_empty());
    let (r, _) = step(r, MS(3500), Event::MasterDownTimer);
    assert_eq!(r.state, State::Master);
}

#[test]
fn shutdown_then_peer_takes_over_after_skew_time() {
    // Two routers driven against each other: the master's priority-0 advert makes the
    // backup master after Skew_Time, not Master_Down_Interval (§6.4.2, §6.4.3).
    let (m, _) = step(
        in_state(params(200, true, 0), State::Master),
        MS(0),
        Event::Shutdown,
    );
    assert_eq!(m.state, State::Initialize);
    let b = in_state(params(100, true, 0), State::Backup);
    let (b, a) = step(b, MS(0), advert("203.0.113.2", 0));
    let Action::SetTimer { at, .. } = a[0] else {
        panic!("{a:?}")
    };
    assert_eq!(at, skew_time(100, 10));
    assert!(at < master_down_interval(100, 10));
    let (b, _) = step(b, at, Event::MasterDownTimer);
    assert_eq!(b.state, State::Master);
}
