//! The sync-group layer over [`crate::fsm`]: all routers of a group change role together,
//! a tracked link going down puts the whole group in FAULT, and the addresses of a group
//! that becomes master are held back until the commit participants (the conntrack sync
//! service) acknowledge, or the commit wait runs out.
//!
//! Like the router core this is a pure function over data: [`step`] returns the new group
//! and the actions, each tagged with the router it concerns.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::fsm::{self, Action, Event, Router, State, Time};

/// What a group-level action concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// Router number N of the group.
    Router(usize),
    /// The group itself (its commit-wait timer).
    Group,
}

/// The group's own timer.
pub const COMMIT_WAIT: fsm::Timer = fsm::Timer::PreemptDelay;

/// An input of the group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum GroupEvent {
    /// Start every router.
    Startup,
    /// Stop every router.
    Shutdown,
    /// An event for one router.
    Router {
        /// Router number in the group.
        index: usize,
        /// The event.
        event: Event,
    },
    /// Tracked zone number N of the group lost carrier.
    LinkDown {
        /// Index into the group's `track` list.
        zone: usize,
    },
    /// Tracked zone number N has carrier again.
    LinkUp {
        /// Index into the group's `track` list.
        zone: usize,
    },
    /// A commit participant acknowledged `BecomingMaster { seq }`.
    CommitAck {
        /// The sequence number of the announcement.
        seq: u64,
    },
    /// The commit wait ran out.
    CommitTimeout,
}

/// What the group tells the world.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "event")]
pub enum Notice {
    /// One router changed state.
    RoleChange {
        /// Router number in the group.
        router: usize,
        /// Previous state.
        from: State,
        /// New state.
        to: State,
    },
    /// The group is becoming master: commit participants must commit now and ack `seq`.
    /// The addresses are announced after the ack or after the commit wait.
    BecomingMaster {
        /// Sequence number to acknowledge.
        seq: u64,
    },
    /// The group's addresses are being added and announced.
    VipsAnnounced {
        /// The announcement this follows.
        seq: u64,
        /// True when a participant acknowledged, false when the commit wait ran out.
        acked: bool,
    },
}

/// One output of the group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupAction {
    /// A router-level action.
    Do(Target, Action),
    /// Something to publish on the event stream.
    Publish(Notice),
}

/// A sync group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    /// The routers.
    pub routers: Vec<Router>,
    /// For each router, the index of its zone in `track`, if that zone is tracked.
    pub router_track: Vec<Option<usize>>,
    /// Number of tracked zones.
    pub track_count: usize,
    /// Tracked zones currently without carrier.
    pub down: BTreeSet<usize>,
    /// How long to wait for a commit acknowledgement before announcing the addresses.
    pub commit_wait: Duration,
    /// Sequence number of the last `BecomingMaster`.
    pub seq: u64,
    /// Address announcements held back until the commit is acknowledged.
    pub held: Vec<(usize, Action)>,
}

impl Group {
    /// A group of routers in Initialize.
    pub fn new(
        routers: Vec<Router>,
        router_track: Vec<Option<usize>>,
        track_count: usize,
        commit_wait: Duration,
    ) -> Group {
        Group {
            routers,
            router_track,
            track_count,
            down: BTreeSet::new(),
            commit_wait,
            seq: 0,
            held: Vec::new(),
        }
    }

    /// The group's role: Master if any router is master, else Fault if in fault, else
    /// Backup if any router is backup, else Initialize.
    pub fn role(&self) -> State {
        let has = |s| self.routers.iter().any(|r| r.state == s);
        if has(State::Master) {
            State::Master
        } else if has(State::Fault) {
            State::Fault
        } else if has(State::Backup) {
            State::Backup
        } else {
            State::Initialize
        }
    }

    /// Whether address announcements are being held for a commit.
    pub fn committing(&self) -> bool {
        self.seq > 0 && !self.held.is_empty()
    }
}

fn run(g: &mut Group, i: usize, now: Time, ev: Event, out: &mut Vec<(usize, Action)>) {
    let r = g.routers[i].clone();
    let (r, acts) = fsm::step(r, now, ev);
    g.routers[i] = r;
    out.extend(acts.into_iter().map(|a| (i, a)));
}

/// Advances the group by one event.
pub fn step(mut g: Group, now: Time, event: GroupEvent) -> (Group, Vec<GroupAction>) {
    let before = g.role();
    let was_committing = !g.held.is_empty();
    let mut acts: Vec<(usize, Action)> = Vec::new();
    let mut out = Vec::new();
    match event {
        GroupEvent::Startup => {
            for i in 0..g.routers.len() {
                if g.down.is_empty() {
                    run(&mut g, i, now, Event::Startup, &mut acts);
                } else {
                    run(
                        &mut g,
                        i,
                        now,
                        Event::TrackDown { send_zero: false },
                        &mut acts,
                    );
                }
            }
        }
        GroupEvent::Shutdown => {
            for i in 0..g.routers.len() {
                run(&mut g, i, now, Event::Shutdown, &mut acts);
            }
        }
        GroupEvent::Router { index, event } if index < g.routers.len() => {
            let prev = g.routers[index].state;
            run(&mut g, index, now, event, &mut acts);
            let new = g.routers[index].state;
            // The sync-group rule: the others follow a Backup->Master or Master->Backup move.
            let follow = match (prev, new) {
                (State::Backup, State::Master) => Some(Event::SyncMaster),
                (State::Master, State::Backup) => Some(Event::SyncBackup),
                _ => None,
            };
            if let Some(f) = follow {
                for i in (0..g.routers.len()).filter(|&i| i != index) {
                    run(&mut g, i, now, f, &mut acts);
                }
            }
            // A master re-announcing its addresses (a healed split brain) does so on every
            // link of the group: the neighbours on all of them followed the other node.
            let reannounce = prev == State::Master
                && new == State::Master
                && acts.iter().any(|(_, a)| *a == Action::SendGarp);
            if reannounce {
                for i in (0..g.routers.len()).filter(|&i| i != index) {
                    if g.routers[i].state == State::Master {
                        acts.push((i, Action::SendGarp));
                    }
                }
            }
        }
        GroupEvent::Router { .. } => {}
        GroupEvent::LinkDown { zone } if zone < g.track_count => {
            let first = g.down.is_empty();
            g.down.insert(zone);
            if first {
                for i in 0..g.routers.len() {
                    let own_down = g.router_track[i].is_some_and(|z| g.down.contains(&z));
                    let ev = Event::TrackDown {
                        send_zero: !own_down,
                    };
                    run(&mut g, i, now, ev, &mut acts);
                }
            }
        }
        GroupEvent::LinkUp { zone } => {
            let removed = g.down.remove(&zone);
            if removed && g.down.is_empty() {
                for i in 0..g.routers.len() {
                    run(&mut g, i, now, Event::TrackUp, &mut acts);
                }
            }
        }
        GroupEvent::LinkDown { .. } => {}
        GroupEvent::CommitAck { seq } => {
            if seq == g.seq && !g.held.is_empty() {
                release(&mut g, true, &mut out);
            }
        }
        GroupEvent::CommitTimeout => {
            if !g.held.is_empty() {
                release(&mut g, false, &mut out);
            }
        }
    }
    let after = g.role();
    let becoming = before != State::Master && after == State::Master;
    if after != State::Master {
        // Leaving (or never reaching) Master drops any held announcement.
        g.held.clear();
    }
    if becoming {
        g.seq += 1;
        out.push(GroupAction::Publish(Notice::BecomingMaster { seq: g.seq }));
        out.push(GroupAction::Do(
            Target::Group,
            Action::SetTimer {
                timer: COMMIT_WAIT,
                at: now + g.commit_wait,
            },
        ));
    }
    let holding = becoming || !g.held.is_empty();
    for (i, a) in acts {
        match a {
            Action::AddVips | Action::SendGarp if holding => g.held.push((i, a)),
            Action::Publish(rc) => out.push(GroupAction::Publish(Notice::RoleChange {
                router: i,
                from: rc.from,
                to: rc.to,
            })),
            a => out.push(GroupAction::Do(Target::Router(i), a)),
        }
    }
    if was_committing && g.held.is_empty() && after != State::Master {
        out.push(GroupAction::Do(
            Target::Group,
            Action::CancelTimer { timer: COMMIT_WAIT },
        ));
    }
    (g, out)
}

fn release(g: &mut Group, acked: bool, out: &mut Vec<GroupAction>) {
    out.push(GroupAction::Do(
        Target::Group,
        Action::CancelTimer { timer: COMMIT_WAIT },
    ));
    out.push(GroupAction::Publish(Notice::VipsAnnounced {
        seq: g.seq,
        acked,
    }));
    for (i, a) in g.held.drain(..) {
        out.push(GroupAction::Do(Target::Router(i), a));
    }
}
