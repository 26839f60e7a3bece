//! The `--cluster` rolling OS update as a pure state machine: `step(event) -> actions`.
//!
//! Order: the backup first; wait until it runs the new version, is healthy (slot marked
//! good) and synced, and is backup again; then the master. Rebooting the master is the
//! graceful handover: its VRRP sends a priority-0 advert on shutdown, the updated backup
//! takes over at once and commits the synced conntrack state, so flows survive. Any
//! failure or timeout stops the roll. What is rolled back depends on who still serves:
//! * an upload that failed, or a node that came back healthy on the *old* version (its
//!   new slot failed and GRUB fell back), leaves that node on its old slot, serving: it
//!   needs no rollback (a rollback would make it try the other, failed slot), and the
//!   nodes already switched are rolled back one by one so the pair ends on one version;
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
    },
    /// Both nodes run the new version.
    Done,
    /// Stopped; the listed nodes were told to roll back.
    Failed {
        /// Why.
        reason: String,
        /// Nodes told to roll back.
        rolled_back: Vec<String>,
        /// Nodes left on the new version because they are the ones serving.
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
    /// Uploading or rebooting failed.
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
    /// `POST /update` to the node (without reboot).
    Upload {
        /// Node.
        node: String,
    },
    /// Ask the node to reboot into the new slot.
    Reboot {
        /// Node.
        node: String,
    },
    /// `GET /status` of the node after a pause.
    Poll {
        /// Node.
        node: String,
    },
    /// `POST /rollback?what=os` and reboot: back to the previous slot.
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
            max_polls,
            state: State::Idle,
        }
    }

    /// Stops the roll at `order[current]`. `current_serves`: that node still runs its
    /// old slot and answers (upload refused, or it fell back), so the nodes switched
    /// before it can be rolled back (each reboot hands over to it); otherwise they are
    /// kept and only the current node is told to roll back.
    fn fail(&mut self, reason: String, current: usize, current_serves: bool) -> Vec<Action> {
        let switched: Vec<String> = self.order[..current.min(self.order.len())]
            .iter()
            .rev()
            .cloned()
            .collect();
        let (rolled_back, kept, reason) = if current_serves {
            (switched, Vec::new(), reason)
        } else {
            let reason = if switched.is_empty() {
                reason
            } else {
                format!(
                    "{reason}; {} kept on the new version: rolling back would reboot the only node that serves",
                    switched.join(", ")
                )
            };
            (vec![self.order[current].clone()], switched, reason)
        };
        let mut actions: Vec<Action> = rolled_back
            .iter()
            .map(|n| Action::Rollback { node: n.clone() })
            .collect();
        actions.push(Action::Abort {
            reason: reason.clone(),
        });
        self.state = State::Failed {
            reason,
            rolled_back,
            kept,
        };
        actions
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
                };
                let n = self.order[node].clone();
                vec![Action::Reboot { node: n.clone() }, Action::Poll { node: n }]
            }
            (
                State::Uploading { node } | State::Waiting { node, .. },
                Event::Failed { reason, answers },
            ) => {
                let reason = format!("{}: {reason}", self.order[node]);
                // The slot was never set to be tried: a node that still answers runs its
                // old slot and serves. One that does not (cut, dead) may be all that is
                // missing of the pair: keep the nodes already switched.
                self.fail(reason, node, answers)
            }
            (State::Waiting { node, polls, ready }, Event::Polled { info }) => {
                let name = self.order[node].clone();
                // Master is fine for any node: with preemption the higher-priority node
                // takes the VIPs back as soon as it returns (requiring "backup" of the
                // first node stalled a roll whose order came from a momentary flap).
                let is_ready = info.as_ref().is_some_and(|i| {
                    i.os_version == Some(self.target)
                        && i.healthy
                        && i.synced
                        && (i.role == "backup" || i.role == "master")
                });
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
                    && i.healthy
                    && i.os_version.is_some()
                    && i.os_version != Some(self.target)
                {
                    // It came back healthy on the old version: the new slot failed its
                    // health checks and GRUB fell back.
                    let reason = format!(
                        "{name} came back on version {} (the new slot failed and fell back)",
                        i.os_version.unwrap_or(0)
                    );
                    return self.fail(reason, node, true);
                }
                if polls + 1 >= self.max_polls {
                    return self.fail(
                        format!("{name} did not come back healthy and synced"),
                        node,
                        false,
                    );
                }
                self.state = State::Waiting {
                    node,
                    polls: polls + 1,
                    ready,
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

    #[test]
    fn backup_first_then_master_then_done() {
        let (mut r, a) = start();
        assert_eq!(r.order, ["fw2", "fw1"]);
        assert_eq!(a, [Action::Upload { node: "fw2".into() }]);
        let a = r.step(Event::Uploaded);
        assert_eq!(
            a,
            [
                Action::Reboot { node: "fw2".into() },
                Action::Poll { node: "fw2".into() }
            ]
        );
        // rebooting: no answer, then up but not yet synced
        assert_eq!(
            r.step(Event::Polled { info: None }),
            [Action::Poll { node: "fw2".into() }]
        );
        assert_eq!(
            r.step(Event::Polled {
                info: Some(info("fw2", "backup", 2, true, false))
            }),
            [Action::Poll { node: "fw2".into() }]
        );
        // ready once is not enough; a poll that finds it not synced resets the count
        let ready2 = Event::Polled {
            info: Some(info("fw2", "backup", 2, true, true)),
        };
        assert_eq!(
            r.step(ready2.clone()),
            [Action::Poll { node: "fw2".into() }]
        );
        assert_eq!(
            r.step(Event::Polled {
                info: Some(info("fw2", "backup", 2, true, false))
            }),
            [Action::Poll { node: "fw2".into() }]
        );
        assert_eq!(
            r.step(ready2.clone()),
            [Action::Poll { node: "fw2".into() }]
        );
        let a = r.step(ready2);
        assert_eq!(a, [Action::Upload { node: "fw1".into() }]);
        r.step(Event::Uploaded);
        // the last node may come back as master (preemption)
        r.step(Event::Polled {
            info: Some(info("fw1", "master", 2, true, true)),
        });
        let a = r.step(Event::Polled {
            info: Some(info("fw1", "master", 2, true, true)),
        });
        assert_eq!(a, [Action::Finish]);
        assert_eq!(r.state, State::Done);
    }

    #[test]
    fn a_fallback_on_the_second_node_rolls_the_first_back() {
        let (mut r, _) = start();
        r.step(Event::Uploaded);
        for _ in 0..READY_POLLS {
            r.step(Event::Polled {
                info: Some(info("fw2", "backup", 2, true, true)),
            });
        }
        r.step(Event::Uploaded);
        let a = r.step(Event::Polled {
            info: Some(info("fw1", "backup", 1, true, true)),
        });
        // fw1 fell back by itself and serves: no rollback for it (that would try the
        // failed slot again); fw2 goes back so the pair runs one version.
        assert_eq!(a[..1], [Action::Rollback { node: "fw2".into() }]);
        assert!(matches!(&a[1], Action::Abort { reason } if reason.contains("fell back")));
        assert_eq!(a.len(), 2);
        assert!(matches!(&r.state, State::Failed { kept, .. } if kept.is_empty()));
    }

    #[test]
    fn a_second_node_that_never_comes_back_keeps_the_serving_node() {
        let (mut r, _) = start();
        r.step(Event::Uploaded);
        for _ in 0..READY_POLLS {
            r.step(Event::Polled {
                info: Some(info("fw2", "backup", 2, true, true)),
            });
        }
        r.step(Event::Uploaded);
        let mut last = vec![];
        for _ in 0..r.max_polls {
            last = r.step(Event::Polled { info: None });
        }
        // fw2 (updated) is the only node forwarding: it must not be rebooted.
        assert_eq!(last[..1], [Action::Rollback { node: "fw1".into() }]);
        assert!(matches!(
            &last[1],
            Action::Abort { reason } if reason.contains("fw1 did not come back")
                && reason.contains("fw2 kept on the new version")
        ));
        assert!(!last.contains(&Action::Rollback { node: "fw2".into() }));
        assert!(matches!(&r.state, State::Failed { kept, .. } if kept == &["fw2"]));
    }

    #[test]
    fn an_upload_failure_on_the_first_node_stops_before_the_master() {
        let (mut r, _) = start();
        let a = r.step(Event::Failed {
            reason: "409 not_newer".into(),
            answers: true,
        });
        // Nothing was switched: no rollback (fw2 runs its old slot), just stop.
        assert!(matches!(&a[..], [Action::Abort { reason }] if reason.contains("fw2: 409")));
        // nothing further happens
        assert!(r.step(Event::Uploaded).is_empty());
    }

    #[test]
    fn a_second_node_cut_during_its_upload_keeps_the_serving_node() {
        let (mut r, _) = start();
        r.step(Event::Uploaded);
        for _ in 0..READY_POLLS {
            r.step(Event::Polled {
                info: Some(info("fw2", "backup", 2, true, true)),
            });
        }
        let a = r.step(Event::Failed {
            reason: "connection reset".into(),
            answers: false,
        });
        assert_eq!(a[..1], [Action::Rollback { node: "fw1".into() }]);
        assert!(matches!(&a[1], Action::Abort { reason } if reason.contains("fw2 kept")));
        // A refusal from a node that answers rolls the switched node back instead.
        let (mut r, _) = start();
        r.step(Event::Uploaded);
        for _ in 0..READY_POLLS {
            r.step(Event::Polled {
                info: Some(info("fw2", "backup", 2, true, true)),
            });
        }
        let a = r.step(Event::Failed {
            reason: "HTTP 422".into(),
            answers: true,
        });
        assert_eq!(a[..1], [Action::Rollback { node: "fw2".into() }]);
    }

    #[test]
    fn a_node_that_never_comes_back_times_out() {
        let (mut r, _) = start();
        r.step(Event::Uploaded);
        let mut last = vec![];
        for _ in 0..r.max_polls {
            last = r.step(Event::Polled { info: None });
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
