//! The sync-group layer: routers move together, a tracked link down faults the whole
//! group with priority-0 adverts on the links still up, and a group becoming master holds
//! its address announcements until the commit is acknowledged or the wait runs out.

use std::net::IpAddr;
use std::time::Duration;

use twinwall_vrrp::fsm::{Action, Event, Params, Router, State};
use twinwall_vrrp::group::{COMMIT_WAIT, Group, GroupAction, GroupEvent, Notice, Target, step};

const MS: fn(u64) -> Duration = Duration::from_millis;

fn router(vrid: u8, primary: &str) -> Router {
    Router::new(Params {
        vrid,
        priority: 200,
        advert_interval_cs: 10,
        preempt: true,
        preempt_delay: Duration::ZERO,
        accept_mode: false,
        primary: primary.parse().unwrap(),
    })
}

/// Group "edge": router 0 on outside (tracked zone 0), router 1 on inside (zone 1).
fn edge() -> Group {
    let g = Group::new(
        vec![router(51, "203.0.113.2"), router(52, "198.51.100.2")],
        vec![Some(0), Some(1)],
        2,
        MS(200),
    );
    step(g, MS(0), GroupEvent::Startup).0
}

fn states(g: &Group) -> Vec<State> {
    g.routers.iter().map(|r| r.state).collect()
}

fn router_actions(acts: &[GroupAction], r: usize) -> Vec<Action> {
    acts.iter()
        .filter_map(|a| match a {
            GroupAction::Do(Target::Router(i), a) if *i == r => Some(*a),
            _ => None,
        })
        .collect()
}

fn master(g: Group) -> Group {
    let ev = GroupEvent::Router {
        index: 0,
        event: Event::MasterDownTimer,
    };
    let (g, acts) = step(g, MS(400), ev);
    let seq = g.seq;
    let (g, _) = step(g, MS(401), GroupEvent::CommitAck { seq });
    assert!(
        acts.iter()
            .any(|a| matches!(a, GroupAction::Publish(Notice::BecomingMaster { .. })))
    );
    g
}

#[test]
fn one_router_becoming_master_takes_the_whole_group() {
    let g = edge();
    assert_eq!(states(&g), [State::Backup, State::Backup]);
    let g = master(g);
    assert_eq!(states(&g), [State::Master, State::Master]);
    // And a better master on one link sends the whole group back to Backup.
    let ev = GroupEvent::Router {
        index: 1,
        event: Event::AdvertReceived {
            from: "198.51.100.3".parse().unwrap(),
            priority: 250,
            max_advert_int_cs: 10,
        },
    };
    let (g, acts) = step(g, MS(500), ev);
    assert_eq!(states(&g), [State::Backup, State::Backup]);
    assert!(router_actions(&acts, 0).contains(&Action::RemoveVips));
    assert!(router_actions(&acts, 1).contains(&Action::RemoveVips));
}

#[test]
fn tracked_link_down_faults_the_group_with_zero_adverts_on_links_still_up() {
    let g = master(edge());
    let (g, acts) = step(g, MS(600), GroupEvent::LinkDown { zone: 1 });
    assert_eq!(states(&g), [State::Fault, State::Fault]);
    // outside (still up) tells the peer to take over now; inside (down) cannot.
    assert!(router_actions(&acts, 0).contains(&Action::SendAdvert { priority: 0 }));
    assert!(
        !router_actions(&acts, 1)
            .iter()
            .any(|a| matches!(a, Action::SendAdvert { .. }))
    );
    for r in 0..2 {
        assert!(router_actions(&acts, r).contains(&Action::RemoveVips));
    }
    // Back up: both routers restart as Backup (§6.4.1).
    let (g, _) = step(g, MS(700), GroupEvent::LinkUp { zone: 1 });
    assert_eq!(states(&g), [State::Backup, State::Backup]);
}

#[test]
fn a_link_down_at_startup_keeps_the_group_in_fault() {
    let g = Group::new(vec![router(51, "203.0.113.2")], vec![Some(0)], 1, MS(200));
    let (g, _) = step(g, MS(0), GroupEvent::LinkDown { zone: 0 });
    let (g, _) = step(g, MS(0), GroupEvent::Startup);
    assert_eq!(states(&g), [State::Fault]);
    let (g, _) = step(g, MS(10), GroupEvent::LinkUp { zone: 0 });
    assert_eq!(states(&g), [State::Backup]);
}

#[test]
fn vips_wait_for_the_commit_ack() {
    let g = edge();
    let ev = GroupEvent::Router {
        index: 0,
        event: Event::MasterDownTimer,
    };
    let (g, acts) = step(g, MS(400), ev);
    // The adverts go out at once, the addresses are held.
    assert!(router_actions(&acts, 0).contains(&Action::SendAdvert { priority: 200 }));
    assert!(router_actions(&acts, 1).contains(&Action::SendAdvert { priority: 200 }));
    assert!(
        !acts
            .iter()
            .any(|a| matches!(a, GroupAction::Do(_, Action::AddVips | Action::SendGarp)))
    );
    assert!(acts.contains(&GroupAction::Do(
        Target::Group,
        Action::SetTimer {
            timer: COMMIT_WAIT,
            at: MS(600)
        }
    )));
    assert!(g.committing());
    // A stale ack does nothing; the right one releases every held action, in order.
    let (g, acts) = step(g, MS(410), GroupEvent::CommitAck { seq: 99 });
    assert!(acts.is_empty());
    let (g, acts) = step(g, MS(420), GroupEvent::CommitAck { seq: 1 });
    assert_eq!(
        router_actions(&acts, 0),
        [Action::AddVips, Action::SendGarp]
    );
    assert_eq!(
        router_actions(&acts, 1),
        [Action::AddVips, Action::SendGarp]
    );
    assert!(acts.contains(&GroupAction::Publish(Notice::VipsAnnounced {
        seq: 1,
        acked: true
    })));
    assert!(!g.committing());
}

#[test]
fn vips_follow_after_the_commit_wait_without_an_ack() {
    let g = edge();
    let ev = GroupEvent::Router {
        index: 0,
        event: Event::MasterDownTimer,
    };
    let (g, _) = step(g, MS(400), ev);
    let (_, acts) = step(g, MS(600), GroupEvent::CommitTimeout);
    assert_eq!(
        router_actions(&acts, 0),
        [Action::AddVips, Action::SendGarp]
    );
    assert!(acts.contains(&GroupAction::Publish(Notice::VipsAnnounced {
        seq: 1,
        acked: false
    })));
}

#[test]
fn losing_mastership_during_the_commit_drops_the_held_announcements() {
    let g = edge();
    let (g, _) = step(
        g,
        MS(400),
        GroupEvent::Router {
            index: 0,
            event: Event::MasterDownTimer,
        },
    );
    let from: IpAddr = "203.0.113.3".parse().unwrap();
    let ev = GroupEvent::Router {
        index: 0,
        event: Event::AdvertReceived {
            from,
            priority: 250,
            max_advert_int_cs: 10,
        },
    };
    let (g, _) = step(g, MS(450), ev);
    assert_eq!(g.role(), State::Backup);
    let (_, acts) = step(g, MS(600), GroupEvent::CommitTimeout);
    assert!(
        !acts
            .iter()
            .any(|a| matches!(a, GroupAction::Do(_, Action::AddVips)))
    );
}

#[test]
fn a_reannouncement_covers_every_link_of_the_group() {
    let g = master(edge());
    // The loser of a healed split brain steps down on the outside link with priority 0.
    let ev = GroupEvent::Router {
        index: 0,
        event: Event::AdvertReceived {
            from: "203.0.113.3".parse().unwrap(),
            priority: 0,
            max_advert_int_cs: 10,
        },
    };
    let (g, acts) = step(g, MS(500), ev);
    assert_eq!(g.role(), State::Master);
    assert!(router_actions(&acts, 0).contains(&Action::SendGarp));
    assert!(
        router_actions(&acts, 1).contains(&Action::SendGarp),
        "inside must re-announce too"
    );
}
