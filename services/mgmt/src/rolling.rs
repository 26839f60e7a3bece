//! The `--cluster` rolling OS update as a pure state machine: `step(event) -> actions`.
//!
//! Order: the backup first; wait until it runs the new version, is healthy (slot marked
//! good) and synced, and is backup again; then the master. Rebooting the master is the
//! graceful handover: its VRRP sends a priority-0 advert on shutdown, the updated backup
//! takes over at once and commits the synced conntrack state, so flows survive. Any
//! failure or timeout stops the roll; the step that failed (upload, reboot, rollback) and
//! why are in the abort reason. What is rolled back depends on who still serves:
//! * an upload that failed while the node still answers (refused, or its connection cut
//!   mid-stream: the slot is never set to be tried), or a node that came back healthy on
//!   the *old* version (its new slot failed and GRUB fell back), leaves that node on its
//!   old slot, serving: it needs no rollback (a rollback would make it try the other,
//!   failed slot). The nodes already switched are rolled back one by one
//!   ([`State::RollingBack`]: `POST /rollback?what=os&reboot=1`, then polled until they
//!   run their old version again, healthy and synced), so the pair ends on one version;
//! * a node that does not come back at all is told to roll back (if it answers later),
//!   but the nodes already switched are **kept**: rebooting them would take down the
//!   only node that still forwards. The abort reason says so.
//!
//! The driver (the CLI) performs the actions over the management API and feeds the
//! results back as events; tests replay event sequences without any IO.

use serde::{Deserialize, Serialize};

/// What the driver learned about a node from its `GET /status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Node name.
    pub name: String,
    /// `master`, `backup` or anything else (fault, init, unknown).
    pub role: String,
    /// The OS version it runs, when known.
    pub os_version: Option<u64>,
    /// Its slot was marked good (init's health checks passed).
    pub healthy: bool,
    /// Conntrack sync is connected.
    pub synced: bool,
}

impl NodeInfo {
    /// Back in the pair on OS version `v`: running it, healthy, synced, with a VRRP role
    /// (master is fine: with preemption the higher-priority node takes the VIPs back as
    /// soon as it returns).
    fn ready_on(&self, v: u64) -> bool {
        self.os_version == Some(v)
            && self.healthy
            && self.synced
            && (self.role == "backup" || self.role == "master")
    }
}

/// Where the roll is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum State {
    /// Not started.
    Idle,
    /// Uploading to `order[node]`.
    Uploading {
        /// Index into the order.
        node: usize,
    },
    /// `order[node]` reboots into the new slot; waiting for it to come back healthy.
    Waiting {
        /// Index into the order.
        node: usize,
        /// Polls so far.
        polls: u32,
        /// Consecutive polls that found it ready ([`READY_POLLS`] are needed).
        #[serde(default)]
        ready: u32,
        /// A poll found it gone (no answer): it did reboot. Until then an answer on the
        /// old version is the node still shutting down, not a fallback.
        #[serde(default)]
        gone: bool,
    },
    /// The roll failed at a node that still serves on its old slot; the nodes switched
    /// before it go back to their old slot, one at a time.
    RollingBack {
        /// Why the roll stopped.
        reason: String,
        /// Indices into the order still to roll back; the first is the one in progress.
        pending: Vec<usize>,
        /// Its rollback request was accepted (it reboots); polling it.
        accepted: bool,
        /// Polls of the first pending node so far.
        polls: u32,
        /// Consecutive polls that found it ready on its old version.
        ready: u32,
        /// A poll found it gone (it did reboot).
        gone: bool,
        /// Nodes back on their old version.
        done: Vec<String>,
    },
    /// Both nodes run the new version.
    Done,
    /// Stopped.
    Failed {
        /// Why.
        reason: String,
        /// Nodes rolled back (back on their old version), or told to roll back when
        /// they could not be reached.
        rolled_back: Vec<String>,
        /// Nodes left on the new version because they are the ones serving (or their
        /// rollback failed).
        #[serde(default)]
        kept: Vec<String>,
    },
}

/// An input to the machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// Start with both nodes' status.
    Start {
        /// Both nodes.
        nodes: Vec<NodeInfo>,
    },
    /// The upload to the current node succeeded (slot written and set to be tried).
    Uploaded,
    /// The node being rolled back accepted `POST /rollback?what=os&reboot=1`.
    RollbackAccepted,
    /// Uploading, rebooting or a rollback request failed.
    Failed {
        /// Why.
        reason: String,
        /// The node still answers its status (the driver asks after the failure): it
        /// runs its old slot and serves. `false`: it was cut or died mid-upload.
        answers: bool,
    },
    /// A status poll of the current node (`None`: it did not answer, e.g. rebooting).
    Polled {
        /// The node's status.
        info: Option<NodeInfo>,
    },
}

/// What the driver must do next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// `POST /update?reboot=1` to the node; answer with [`Event::Uploaded`] or
    /// [`Event::Failed`].
    Upload {
        /// Node.
        node: String,
    },
    /// Ask the node to reboot into the new slot.
    Reboot {
        /// Node.
        node: String,
    },
    /// `GET /status` of the node after a pause; answer with [`Event::Polled`].
    Poll {
        /// Node.
        node: String,
    },
    /// `POST /rollback?what=os&reboot=1`: back to the previous slot. Answer with
    /// [`Event::RollbackAccepted`] or [`Event::Failed`] (ignored once the roll has
    /// failed: a node told to roll back while unreachable is not waited for).
    Rollback {
        /// Node.
        node: String,
    },
    /// Finished successfully.
    Finish,
    /// Finished with a failure.
    Abort {
        /// Why.
        reason: String,
    },
}

/// Consecutive polls (2 s apart in the CLI) a node must be found ready before the roll
/// moves on: in the QEMU lab a TCG-starved peer made the updated backup flap to master
/// and back for a few hundred ms, and one lucky poll is not a settled pair.
pub const READY_POLLS: u32 = 2;

/// The rolling update of a pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rolling {
    /// The version being installed.
    pub target: u64,
    /// Update order (backup first), filled by `Start`.
    pub order: Vec<String>,
    /// The OS version each node of `order` ran at the start (what a rollback returns to).
    #[serde(default)]
    pub from: Vec<Option<u64>>,
    /// Polls allowed per node before giving up.
    pub max_polls: u32,
    /// Current state.
    pub state: State,
}

impl Rolling {
    /// A roll to OS version `target`.
    pub fn new(target: u64, max_polls: u32) -> Rolling {
        Rolling {
            target,
            order: Vec::new(),
            from: Vec::new(),
            max_polls,
            state: State::Idle,
        }
    }

    fn old_version(&self, i: usize) -> String {
        self.from
            .get(i)
            .copied()
            .flatten()
            .map_or("?".into(), |v| v.to_string())
    }

    /// Stops the roll at `order[current]`. `current_serves`: that node still runs its
    /// old slot and answers (upload refused or cut, or it fell back), so the nodes
    /// switched before it are rolled back (each reboot hands over to it); otherwise they
    /// are kept and only the current node is told to roll back.
    fn fail(&mut self, reason: String, current: usize, current_serves: bool) -> Vec<Action> {
        let switched: Vec<usize> = (0..current.min(self.order.len())).rev().collect();
        if current_serves {
            if let Some(&first) = switched.first() {
                self.state = State::RollingBack {
                    reason,
                    pending: switched,
                    accepted: false,
                    polls: 0,
                    ready: 0,
                    gone: false,
                    done: Vec::new(),
                };
                return vec![Action::Rollback {
                    node: self.order[first].clone(),
                }];
            }
            self.state = State::Failed {
                reason: reason.clone(),
                rolled_back: Vec::new(),
                kept: Vec::new(),
            };
            return vec![Action::Abort { reason }];
        }
        let kept: Vec<String> = switched.iter().map(|&i| self.order[i].clone()).collect();
        let reason = if kept.is_empty() {
            reason
        } else {
            format!(
                "{reason}; {} kept on the new version: rolling back would reboot the only node that serves",
                kept.join(", ")
            )
        };
        let current = self.order[current].clone();
        self.state = State::Failed {
            reason: reason.clone(),
            rolled_back: vec![current.clone()],
            kept,
        };
        vec![Action::Rollback { node: current }, Action::Abort { reason }]
    }

    /// The rollback phase ends: abort with what was rolled back and what was not.
    fn end_rollback(
        &mut self,
        reason: String,
        done: Vec<String>,
        kept: Vec<String>,
        why_kept: Option<String>,
    ) -> Vec<Action> {
        let mut reason = reason;
        for n in &done {
            let i = self.order.iter().position(|o| o == n).unwrap_or(0);
            reason.push_str(&format!(
                "; {n} rolled back to OS version {}",
                self.old_version(i)
            ));
        }
        if let Some(w) = why_kept {
            reason.push_str(&format!("; {w}"));
        }
        self.state = State::Failed {
            reason: reason.clone(),
            rolled_back: done,
            kept,
        };
        vec![Action::Abort { reason }]
    }

    /// Feeds one event; returns the actions to perform.
    pub fn step(&mut self, event: Event) -> Vec<Action> {
        match (self.state.clone(), event) {
            (State::Idle, Event::Start { nodes }) => {
                if nodes.len() != 2 {
                    self.state = State::Failed {
                        reason: format!("a pair has 2 nodes, status shows {}", nodes.len()),
                        rolled_back: vec![],
                        kept: vec![],
                    };
                    return vec![Action::Abort {
                        reason: "not a pair".into(),
                    }];
                }
                if let Some(n) = nodes.iter().find(|n| !n.healthy) {
                    let reason = format!("{} is not healthy; not starting", n.name);
                    self.state = State::Failed {
                        reason: reason.clone(),
                        rolled_back: vec![],
                        kept: vec![],
                    };
                    return vec![Action::Abort { reason }];
                }
                let mut order: Vec<&NodeInfo> = nodes.iter().collect();
                // The backup first; the master last (rebooting it hands over).
                order.sort_by_key(|n| (n.role == "master", n.name.clone()));
                self.order = order.iter().map(|n| n.name.clone()).collect();
                self.from = order.iter().map(|n| n.os_version).collect();
                if nodes.iter().all(|n| n.os_version == Some(self.target)) {
                    self.state = State::Done;
                    return vec![Action::Finish];
                }
                self.state = State::Uploading { node: 0 };
                vec![Action::Upload {
                    node: self.order[0].clone(),
                }]
            }
            (State::Uploading { node }, Event::Uploaded) => {
                self.state = State::Waiting {
                    node,
                    polls: 0,
                    ready: 0,
                    gone: false,
                };
                let n = self.order[node].clone();
                vec![Action::Reboot { node: n.clone() }, Action::Poll { node: n }]
            }
            (State::Uploading { node }, Event::Failed { reason, answers }) => {
                // The slot was never set to be tried: a node that still answers runs its
                // old slot and serves. One that does not (cut, dead) may be all that is
                // missing of the pair: keep the nodes already switched.
                let reason = format!(
                    "{}: upload of OS version {} failed: {reason}",
                    self.order[node], self.target
                );
                self.fail(reason, node, answers)
            }
            (State::Waiting { node, .. }, Event::Failed { reason, answers }) => {
                let reason = format!(
                    "{}: reboot into the new slot failed: {reason}",
                    self.order[node]
                );
                self.fail(reason, node, answers)
            }
            (
                State::Waiting {
                    node,
                    polls,
                    ready,
                    gone,
                },
                Event::Polled { info },
            ) => {
                let name = self.order[node].clone();
                let gone = gone || info.is_none();
                let is_ready = info.as_ref().is_some_and(|i| i.ready_on(self.target));
                let ready = if is_ready { ready + 1 } else { 0 };
                if ready >= READY_POLLS {
                    if node + 1 < self.order.len() {
                        self.state = State::Uploading { node: node + 1 };
                        return vec![Action::Upload {
                            node: self.order[node + 1].clone(),
                        }];
                    }
                    self.state = State::Done;
                    return vec![Action::Finish];
                }
                if let Some(i) = &info
                    && gone
                    && i.healthy
                    && i.os_version.is_some()
                    && i.os_version != Some(self.target)
                {
                    // It came back healthy on the old version: the new slot failed its
                    // health checks and GRUB fell back.
                    let reason = format!(
                        "{name}: came back on OS version {} (the new slot failed and fell back)",
                        i.os_version.unwrap_or(0)
                    );
                    return self.fail(reason, node, true);
                }
                if polls + 1 >= self.max_polls {
                    return self.fail(
                        format!("{name}: did not come back healthy and synced on OS version {} within the wait", self.target),
                        node,
                        false,
                    );
                }
                self.state = State::Waiting {
                    node,
                    polls: polls + 1,
                    ready,
                    gone,
                };
                vec![Action::Poll { node: name }]
            }
            (
                State::RollingBack {
                    reason,
                    pending,
                    accepted: false,
                    done,
                    ..
                },
                Event::RollbackAccepted,
            ) => {
                let node = self.order[pending[0]].clone();
                self.state = State::RollingBack {
                    reason,
                    pending,
                    accepted: true,
                    polls: 0,
                    ready: 0,
                    gone: false,
                    done,
                };
                vec![Action::Poll { node }]
            }
            (
                State::RollingBack {
                    reason,
                    pending,
                    accepted: false,
                    done,
                    ..
                },
                Event::Failed { reason: why, .. },
            ) => {
                // Its rollback was refused or did not reach it: it stays on the new
                // version (and so do the ones after it: one version change at a time).
                let kept: Vec<String> = pending.iter().map(|&i| self.order[i].clone()).collect();
                let w = format!(
                    "the rollback of {} failed: {why}; {} kept on the new version",
                    kept[0],
                    kept.join(", ")
                );
                self.end_rollback(reason, done, kept, Some(w))
            }
            (
                State::RollingBack {
                    reason,
                    mut pending,
                    accepted: true,
                    polls,
                    ready,
                    gone,
                    mut done,
                },
                Event::Polled { info },
            ) => {
                let gone = gone || info.is_none();
                let i = pending[0];
                let name = self.order[i].clone();
                let back = self.from.get(i).copied().flatten();
                let is_ready = match (&info, back) {
                    (Some(n), Some(v)) => n.ready_on(v),
                    _ => false,
                };
                let ready = if is_ready { ready + 1 } else { 0 };
                if ready >= READY_POLLS {
                    pending.remove(0);
                    done.push(name);
                    if let Some(&next) = pending.first() {
                        self.state = State::RollingBack {
                            reason,
                            pending,
                            accepted: false,
                            polls: 0,
                            ready: 0,
                            gone: false,
                            done,
                        };
                        return vec![Action::Rollback {
                            node: self.order[next].clone(),
                        }];
                    }
                    return self.end_rollback(reason, done, Vec::new(), None);
                }
                // Back up, healthy, on the new version after it went away: its old slot
                // failed and GRUB fell back to the new one.
                let stuck = gone
                    && info
                        .as_ref()
                        .is_some_and(|n| n.healthy && n.os_version == Some(self.target));
                if stuck || polls + 1 >= self.max_polls {
                    let kept: Vec<String> =
                        pending.iter().map(|&i| self.order[i].clone()).collect();
                    let w = if stuck {
                        format!(
                            "{name} came back on the new version {} instead of {} (its old slot failed); {} kept on the new version",
                            self.target,
                            self.old_version(i),
                            kept.join(", ")
                        )
                    } else {
                        format!(
                            "{name} did not come back healthy and synced on OS version {} after its rollback",
                            self.old_version(i)
                        )
                    };
                    return self.end_rollback(reason, done, kept, Some(w));
                }
                self.state = State::RollingBack {
                    reason,
                    pending,
                    accepted: true,
                    polls: polls + 1,
                    ready,
                    gone,
                    done,
                };
                vec![Action::Poll { node: name }]
            }
            (state, event) => {
                tracing::debug!(?state, ?event, "event ignored in this state");
                vec![]
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, role: &str, v: u64, healthy: bool, synced: bool) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            role: role.into(),
            os_version: Some(v),
            healthy,
            synced,
        }
    }

    fn polled(name: &str, role: &str, v: u64) -> Event {
        Event::Polled {
            info: Some(info(name, role, v, true, true)),
        }
    }

    fn gone() -> Event {
        Event::Polled { info: None }
    }

    fn start() -> (Rolling, Vec<Action>) {
        let mut r = Rolling::new(2, 8);
        let a = r.step(Event::Start {
            nodes: vec![
                info("fw1", "master", 1, true, true),
                info("fw2", "backup", 1, true, true),
            ],
        });
        (r, a)
    }

    /// Started, fw2 (the backup) updated and back on version 2; fw1's upload is next.
    fn first_done() -> Rolling {
        let (mut r, _) = start();
        r.step(Event::Uploaded);
        r.step(gone());
        for _ in 0..READY_POLLS - 1 {
            r.step(polled("fw2", "backup", 2));
        }
        assert_eq!(
            r.step(polled("fw2", "backup", 2)),
            [Action::Upload { node: "fw1".into() }]
        );
        r
    }

    fn abort_reason(a: &[Action]) -> &str {
        match a {
            [Action::Abort { reason }] => reason,
            other => panic!("expected one abort, got {other:?}"),
        }
    }

    #[test]
    fn backup_first_then_master_then_done() {
        let (mut r, a) = start();
        assert_eq!(r.order, ["fw2", "fw1"]);
        assert_eq!(r.from, [Some(1), Some(1)]);
        assert_eq!(a, [Action::Upload { node: "fw2".into() }]);
        let a = r.step(Event::Uploaded);
        assert_eq!(
            a,
            [
                Action::Reboot { node: "fw2".into() },
                Action::Poll { node: "fw2".into() }
            ]
        );
        // still answering on the old version while it shuts down: not a fallback
        assert_eq!(
            r.step(polled("fw2", "backup", 1)),
            [Action::Poll { node: "fw2".into() }]
        );
        // rebooting: no answer, then up but not yet synced
        assert_eq!(r.step(gone()), [Action::Poll { node: "fw2".into() }]);
        assert_eq!(
            r.step(Event::Polled {
                info: Some(info("fw2", "backup", 2, true, false))
            }),
            [Action::Poll { node: "fw2".into() }]
        );
        // ready once is not enough; a poll that finds it not synced resets the count
        assert_eq!(
            r.step(polled("fw2", "backup", 2)),
            [Action::Poll { node: "fw2".into() }]
        );
        assert_eq!(
            r.step(Event::Polled {
                info: Some(info("fw2", "backup", 2, true, false))
            }),
            [Action::Poll { node: "fw2".into() }]
        );
        assert_eq!(
            r.step(polled("fw2", "backup", 2)),
            [Action::Poll { node: "fw2".into() }]
        );
        let a = r.step(polled("fw2", "backup", 2));
        assert_eq!(a, [Action::Upload { node: "fw1".into() }]);
        r.step(Event::Uploaded);
        // the last node may come back as master (preemption)
        r.step(polled("fw1", "master", 2));
        let a = r.step(polled("fw1", "master", 2));
        assert_eq!(a, [Action::Finish]);
        assert_eq!(r.state, State::Done);
    }

    #[test]
    fn a_fallback_on_the_second_node_rolls_the_first_back_and_waits_for_it() {
        let mut r = first_done();
        r.step(Event::Uploaded);
        r.step(gone());
        let a = r.step(polled("fw1", "backup", 1));
        // fw1 fell back by itself and serves: no rollback for it (that would try the
        // failed slot again); fw2 goes back so the pair runs one version.
        assert_eq!(a, [Action::Rollback { node: "fw2".into() }]);
        assert!(
            matches!(&r.state, State::RollingBack { reason, .. } if reason.contains("fw1: came back on OS version 1 (the new slot failed and fell back)"))
        );
        assert_eq!(
            r.step(Event::RollbackAccepted),
            [Action::Poll { node: "fw2".into() }]
        );
        // still up on the new version while it shuts down, then rebooting, then back
        // on the old version (twice)
        assert_eq!(
            r.step(polled("fw2", "backup", 2)),
            [Action::Poll { node: "fw2".into() }]
        );
        assert_eq!(r.step(gone()), [Action::Poll { node: "fw2".into() }]);
        assert_eq!(
            r.step(polled("fw2", "backup", 1)),
            [Action::Poll { node: "fw2".into() }]
        );
        let a = r.step(polled("fw2", "backup", 1));
        let reason = abort_reason(&a);
        assert!(
            reason.contains("fw2 rolled back to OS version 1"),
            "{reason}"
        );
        assert!(
            matches!(&r.state, State::Failed { kept, rolled_back, .. } if kept.is_empty() && rolled_back == &["fw2"])
        );
    }

    #[test]
    fn an_upload_cut_on_the_second_node_that_still_answers_rolls_the_first_back() {
        let mut r = first_done();
        let a = r.step(Event::Failed {
            reason: "connection closed mid-body".into(),
            answers: true,
        });
        assert_eq!(a, [Action::Rollback { node: "fw2".into() }]);
        r.step(Event::RollbackAccepted);
        r.step(gone());
        r.step(polled("fw2", "backup", 1));
        let a = r.step(polled("fw2", "backup", 1));
        let reason = abort_reason(&a);
        assert!(
            reason.starts_with(
                "fw1: upload of OS version 2 failed: connection closed mid-body; fw2 rolled back to OS version 1"
            ),
            "{reason}"
        );
        // nothing further happens
        assert!(r.step(polled("fw2", "backup", 1)).is_empty());
    }

    #[test]
    fn a_refused_rollback_keeps_the_node_and_says_so() {
        let mut r = first_done();
        r.step(Event::Failed {
            reason: "HTTP 422".into(),
            answers: true,
        });
        let a = r.step(Event::Failed {
            reason: "409 conflict: the proof bundle is version 1".into(),
            answers: true,
        });
        let reason = abort_reason(&a);
        assert!(
            reason.contains("fw1: upload of OS version 2 failed: HTTP 422")
                && reason.contains("the rollback of fw2 failed: 409 conflict")
                && reason.contains("fw2 kept on the new version"),
            "{reason}"
        );
        assert!(
            matches!(&r.state, State::Failed { kept, rolled_back, .. } if kept == &["fw2"] && rolled_back.is_empty())
        );
    }

    #[test]
    fn a_rollback_that_does_not_come_back_or_comes_back_new_is_reported() {
        // never back within the wait
        let mut r = first_done();
        r.step(Event::Failed {
            reason: "HTTP 500".into(),
            answers: true,
        });
        r.step(Event::RollbackAccepted);
        let mut last = vec![];
        for _ in 0..r.max_polls {
            last = r.step(gone());
            if !matches!(last[..], [Action::Poll { .. }]) {
                break;
            }
        }
        let reason = abort_reason(&last);
        assert!(
            reason.contains(
                "fw2 did not come back healthy and synced on OS version 1 after its rollback"
            ),
            "{reason}"
        );
        assert!(matches!(&r.state, State::Failed { kept, .. } if kept == &["fw2"]));
        // back, but on the new version (its old slot failed and GRUB fell back)
        let mut r = first_done();
        r.step(Event::Failed {
            reason: "HTTP 500".into(),
            answers: true,
        });
        r.step(Event::RollbackAccepted);
        r.step(gone());
        let a = r.step(polled("fw2", "backup", 2));
        let reason = abort_reason(&a);
        assert!(
            reason.contains("fw2 came back on the new version 2 instead of 1"),
            "{reason}"
        );
    }

    #[test]
    fn a_second_node_that_never_comes_back_keeps_the_serving_node() {
        let mut r = first_done();
        r.step(Event::Uploaded);
        let mut last = vec![];
        for _ in 0..r.max_polls {
            last = r.step(gone());
        }
        // fw2 (updated) is the only node forwarding: it must not be rebooted.
        assert_eq!(last[..1], [Action::Rollback { node: "fw1".into() }]);
        assert!(matches!(
            &last[1],
            Action::Abort { reason } if reason.contains("fw1: did not come back")
                && reason.contains("fw2 kept on the new version")
        ));
        assert!(!last.contains(&Action::Rollback { node: "fw2".into() }));
        assert!(matches!(&r.state, State::Failed { kept, .. } if kept == &["fw2"]));
        // the driver's answer to that rollback (unreachable) changes nothing
        assert!(
            r.step(Event::Failed {
                reason: "connection refused".into(),
                answers: false
            })
            .is_empty()
        );
    }

    #[test]
    fn an_upload_failure_on_the_first_node_stops_before_the_master() {
        let (mut r, _) = start();
        let a = r.step(Event::Failed {
            reason: "409 not_newer".into(),
            answers: true,
        });
        // Nothing was switched: no rollback (fw2 runs its old slot), just stop.
        let reason = abort_reason(&a);
        assert!(
            reason.contains("fw2: upload of OS version 2 failed: 409"),
            "{reason}"
        );
        // nothing further happens
        assert!(r.step(Event::Uploaded).is_empty());
    }

    #[test]
    fn a_second_node_cut_during_its_upload_and_unreachable_keeps_the_serving_node() {
        let mut r = first_done();
        let a = r.step(Event::Failed {
            reason: "connection reset".into(),
            answers: false,
        });
        assert_eq!(a[..1], [Action::Rollback { node: "fw1".into() }]);
        assert!(matches!(&a[1], Action::Abort { reason } if reason.contains("fw2 kept")));
    }

    #[test]
    fn a_node_that_never_comes_back_times_out() {
        let (mut r, _) = start();
        r.step(Event::Uploaded);
        let mut last = vec![];
        for _ in 0..r.max_polls {
            last = r.step(gone());
        }
        assert!(
            matches!(last.last(), Some(Action::Abort { reason }) if reason.contains("did not come back"))
        );
    }

    #[test]
    fn an_unhealthy_pair_is_not_touched_and_an_updated_pair_is_done() {
        let mut r = Rolling::new(2, 5);
        let a = r.step(Event::Start {
            nodes: vec![
                info("fw1", "master", 1, true, true),
                info("fw2", "fault", 1, false, false),
            ],
        });
        assert!(matches!(&a[..], [Action::Abort { reason }] if reason.contains("fw2")));
        let mut r = Rolling::new(2, 5);
        let a = r.step(Event::Start {
            nodes: vec![
                info("fw1", "master", 2, true, true),
                info("fw2", "backup", 2, true, true),
            ],
        });
        assert_eq!(a, [Action::Finish]);
    }
}
