//! Scenario tests of the pure core: two cores joined by an in-memory link that can drop
//! datagrams, every datagram really sealed, opened and replay-checked.

use std::collections::{BTreeMap, VecDeque};

use super::*;
use crate::entry::tests::tcp;
use crate::wire::{self, Datagram, ReplayWindow, SyncKey};

struct Node {
    core: Core,
    /// The node's kernel table.
    kernel: BTreeMap<u16, Entry>,
    epoch: u64,
    counter: u64,
    window: ReplayWindow,
}

struct Pair {
    nodes: [Node; 2],
    now: u64,
    key: SyncKey,
    /// Datagrams in flight: (to, bytes).
    wire: VecDeque<(usize, Vec<u8>)>,
    /// Drops the n-th datagram when it returns true.
    drop: Box<dyn FnMut(u64) -> bool>,
    sent: u64,
    link_up: bool,
    max_len: usize,
    /// `Output::Released` seen.
    released: usize,
}

fn node(role: Role, epoch: u64) -> Node {
    Node {
        core: Core::new(role, Filter::default(), Tuning::default()),
        kernel: BTreeMap::new(),
        epoch,
        counter: 0,
        window: ReplayWindow::default(),
    }
}

impl Pair {
    fn new() -> Pair {
        Pair {
            nodes: [node(Role::Master, 1), node(Role::Backup, 2)],
            now: 1_000_000,
            key: SyncKey::from_bytes([3; 32]),
            wire: VecDeque::new(),
            drop: Box::new(|_| false),
            sent: 0,
            link_up: true,
            max_len: 0,
            released: 0,
        }
    }

    fn input(&mut self, i: usize, input: Input) {
        let outs = self.nodes[i].core.step(self.now, input);
        for o in outs {
            match o {
                Output::Send(body) => {
                    let n = &mut self.nodes[i];
                    n.counter += 1;
                    let bytes = wire::seal(
                        &self.key,
                        &Datagram {
                            epoch: n.epoch,
                            counter: n.counter,
                            body,
                        },
                    );
                    n.core.status_mut().tx_datagrams += 1;
                    self.max_len = self.max_len.max(bytes.len());
                    self.sent += 1;
                    if self.link_up && !(self.drop)(self.sent) {
                        self.wire.push_back((1 - i, bytes));
                    }
                }
                Output::Dump => {
                    let dump = self.nodes[i].kernel.values().copied().collect();
                    self.input(i, Input::Dump(dump));
                }
                Output::Released => self.released += 1,
            }
        }
    }

    /// Delivers everything in flight, then ticks, `rounds` times, 10 ms apart.
    fn run(&mut self, rounds: usize) {
        for _ in 0..rounds {
            while let Some((to, bytes)) = self.wire.pop_front() {
                let d = wire::open(&self.key, &bytes).expect("authentic");
                let fresh = self.nodes[to]
                    .window
                    .check(d.epoch, d.counter)
                    .expect("fresh");
                self.input(
                    to,
                    Input::Peer {
                        fresh,
                        body: d.body,
                        bytes: bytes.len(),
                    },
                );
            }
            self.now += 10_000;
            self.input(0, Input::Tick);
            self.input(1, Input::Tick);
        }
    }

    /// The kernel of node `i` gets entries and reports them as events.
    fn kernel_new(&mut self, i: usize, entries: impl IntoIterator<Item = Entry>) {
        let events = entries
            .into_iter()
            .map(|e| {
                let port = e.orig.l4.ports().unwrap().0;
                self.nodes[i].kernel.insert(port, e);
                Event {
                    kind: EventKind::New,
                    entry: e,
                }
            })
            .collect();
        self.input(i, Input::Kernel(events));
    }

    fn kernel_destroy(&mut self, i: usize, port: u16) {
        let e = self.nodes[i].kernel.remove(&port).unwrap();
        self.input(
            i,
            Input::Kernel(vec![Event {
                kind: EventKind::Destroy,
                entry: e,
            }]),
        );
    }

    fn converged(&self, master: usize) -> bool {
        let m = &self.nodes[master].core;
        let b = &self.nodes[1 - master].core;
        m.internal_digest() == b.external_digest()
            && m.internal_digest().count == self.nodes[master].kernel.len() as u64
    }

    /// What a takeover by `i` does in the shell: commit its external cache into its
    /// kernel, dump, switch role.
    fn take_over(&mut self, i: usize) {
        let entries = self.nodes[i].core.external_entries(self.now);
        for e in &entries {
            self.nodes[i]
                .kernel
                .insert(e.orig.l4.ports().unwrap().0, *e);
        }
        let dump = self.nodes[i].kernel.values().copied().collect();
        self.input(i, Input::Dump(dump));
        self.input(i, Input::Role(Role::Master));
    }
}

fn flows(range: std::ops::Range<u16>) -> Vec<Entry> {
    range.map(|p| tcp(p, p % 2 == 0)).collect()
}

#[test]
fn master_replicates_new_and_destroyed_entries() {
    let mut p = Pair::new();
    p.kernel_new(0, flows(1000..3000));
    p.run(10);
    assert!(p.converged(0));
    assert_eq!(p.nodes[1].core.status(p.now).external_entries, 2000);
    p.kernel_destroy(0, 1500);
    p.run(3);
    assert!(p.converged(0));
    assert_eq!(p.nodes[1].core.status(p.now).external_entries, 1999);
    assert!(p.max_len <= wire::MAX_DATAGRAM, "{} bytes", p.max_len);
    let s = p.nodes[0].core.status(p.now);
    assert!(s.tx_updates >= 2001);
    assert_eq!(s.unacked, 0, "everything acked");
}

#[test]
fn the_send_queue_shrinks_back_after_a_burst() {
    let mut p = Pair::new();
    // 30k changes at once: more than the window holds, so most of them queue.
    p.kernel_new(0, flows(1000..31_000));
    let m = &p.nodes[0].core;
    assert!(m.pending.len() > 2 * QUEUE_KEEP, "{}", m.pending.len());
    let grown = (m.pending.capacity(), m.pending_keys.capacity());
    p.run(100);
    assert!(p.converged(0));
    let m = &p.nodes[0].core;
    assert!(m.pending.is_empty());
    assert!(
        m.pending.capacity() <= 2 * QUEUE_KEEP && m.pending_keys.capacity() <= 2 * QUEUE_KEEP,
        "queue capacity {} / key set {} after the burst (grown to {grown:?})",
        m.pending.capacity(),
        m.pending_keys.capacity()
    );
    assert!(p.released >= 1, "the shell was not told to return memory");
}

#[test]
fn a_backup_that_acks_late_but_steadily_gets_no_timer_retransmits() {
    let mut p = Pair::new();
    p.kernel_new(0, flows(1000..21_000));
    // The backup reads 32 datagrams per 50 ms (its thread behind on a loaded machine):
    // the oldest unacked datagram is soon far older than the RTO, but every round moves
    // the window.
    for _ in 0..400 {
        let mut to_backup = 0;
        let mut later = VecDeque::new();
        while let Some((to, bytes)) = p.wire.pop_front() {
            if to == 1 && to_backup == 32 {
                later.push_back((to, bytes));
                continue;
            }
            to_backup += usize::from(to == 1);
            let d = wire::open(&p.key, &bytes).expect("authentic");
            let fresh = p.nodes[to].window.check(d.epoch, d.counter).expect("fresh");
            p.input(
                to,
                Input::Peer {
                    fresh,
                    body: d.body,
                    bytes: bytes.len(),
                },
            );
        }
        p.wire = later;
        p.now += 50_000;
        p.input(0, Input::Tick);
        p.input(1, Input::Tick);
        if p.converged(0) && p.wire.is_empty() {
            break;
        }
    }
    assert!(p.converged(0));
    assert_eq!(p.nodes[0].core.status(p.now).retransmits, 0);
}

#[test]
fn losing_a_third_of_the_datagrams_still_converges() {
    let mut p = Pair::new();
    p.drop = Box::new(|n| n % 3 == 0);
    p.kernel_new(0, flows(1000..6000));
    p.run(500);
    assert!(p.converged(0));
    let m = p.nodes[0].core.status(p.now);
    assert!(m.retransmits > 0);
    assert!(p.nodes[1].core.status(p.now).nacks_sent > 0);
}

#[test]
fn backup_restart_gets_a_full_resync() {
    let mut p = Pair::new();
    p.kernel_new(0, flows(1000..2000));
    p.run(10);
    assert!(p.converged(0));
    p.nodes[1] = node(Role::Backup, 3);
    p.run(20);
    assert!(p.converged(0));
    assert!(p.nodes[0].core.status(p.now).resyncs_sent >= 2);
}

#[test]
fn sync_link_loss_then_heal_converges_without_restart() {
    let mut p = Pair::new();
    p.kernel_new(0, flows(1000..2000));
    p.run(10);
    p.link_up = false;
    p.kernel_new(0, flows(2000..2500));
    for port in 1000..1100 {
        p.kernel_destroy(0, port);
    }
    p.run(300);
    assert!(!p.converged(0));
    assert!(!p.nodes[0].core.status(p.now).peer_up);
    p.link_up = true;
    p.run(100);
    assert!(p.converged(0));
    assert_eq!(p.nodes[1].core.status(p.now).external_entries, 1400);
}

#[test]
fn failover_commits_the_external_cache_and_the_old_master_follows() {
    let mut p = Pair::new();
    p.kernel_new(0, flows(1000..2000));
    p.run(10);
    // the master dies, the backup takes over
    p.link_up = false;
    p.take_over(1);
    assert_eq!(p.nodes[1].kernel.len(), 1000, "committed");
    assert_eq!(p.nodes[1].core.role(), Role::Master);
    assert_eq!(p.nodes[1].core.status(p.now).external_entries, 0);
    p.kernel_new(1, flows(5000..5100));
    // the old master comes back as backup (restarted)
    p.nodes[0] = node(Role::Backup, 4);
    p.nodes[0].kernel.clear();
    p.link_up = true;
    p.run(30);
    assert!(p.converged(1));
    assert_eq!(p.nodes[0].core.status(p.now).external_entries, 1100);
    // and a role change without restart: back to node 0
    p.take_over(0);
    p.input(1, Input::Role(Role::Backup));
    p.run(30);
    assert!(p.converged(0));
    assert_eq!(p.nodes[0].kernel.len(), 1100);
}

#[test]
fn digests_flow_and_a_divergence_raises_the_alarm_then_heals() {
    let mut p = Pair::new();
    p.kernel_new(0, flows(1000..1100));
    p.run(250); // 2.5 s: at least one digest
    let c = p.nodes[1].core.status(p.now).consistency;
    assert_eq!(c.consistent, Some(true), "{c:?}");
    assert_eq!(c.peer, Some(p.nodes[0].core.internal_digest()));
    // corrupt the backup's cache behind the protocol's back
    let k = p.nodes[1].core.external.keys().next().unwrap();
    let x = p.nodes[1].core.external.remove(&k).unwrap();
    p.nodes[1].core.external_digest.remove(&x.entry);
    p.run(450);
    let s = p.nodes[1].core.status(p.now);
    assert!(s.consistency.mismatches >= 2, "{s:?}");
    assert!(s.resync_requests >= 1);
    p.run(300);
    let c = p.nodes[1].core.status(p.now).consistency;
    assert_eq!(c.consistent, Some(true));
    assert!(!c.alarm);
    assert!(p.converged(0));
}

#[test]
fn external_entries_expire_by_their_timeout() {
    let mut p = Pair::new();
    let mut e = tcp(7, false);
    e.timeout = 2;
    p.kernel_new(0, [e]);
    p.run(5);
    assert_eq!(p.nodes[1].core.status(p.now).external_entries, 1);
    p.link_up = false;
    p.run(300);
    let s = p.nodes[1].core.status(p.now);
    assert_eq!(s.external_entries, 0);
    assert_eq!(s.expired, 1);
}

#[test]
fn refreshed_kernel_timeouts_are_resent_before_the_peer_copy_expires() {
    let mut p = Pair::new();
    let mut e = tcp(7, false);
    e.timeout = 30;
    p.kernel_new(0, [e]);
    p.run(5);
    // the kernel keeps refreshing the entry (packets, no events); dumps see it
    for _ in 0..6 {
        p.run(1000); // 10 s
        assert_eq!(p.nodes[1].core.status(p.now).external_entries, 1);
    }
}

#[test]
fn overrun_triggers_a_dump_that_repairs_the_cache() {
    let mut p = Pair::new();
    p.kernel_new(0, flows(1000..1100));
    p.run(5);
    // events for these were lost
    for port in 2000..2050 {
        p.nodes[0].kernel.insert(port, tcp(port, false));
    }
    p.nodes[0].kernel.remove(&1000);
    p.input(0, Input::Overrun);
    p.run(10);
    assert!(p.converged(0));
    let s = p.nodes[0].core.status(p.now);
    assert_eq!(s.enobufs, 1);
    assert_eq!(s.internal_entries, 149);
}

#[test]
fn ipv6_datagrams_stay_within_the_mtu_budget() {
    let mut p = Pair::new();
    let v6: Vec<Entry> = (1..500u16)
        .map(|i| {
            let mut e = tcp(i, false);
            e.orig.src = format!("2001:db8::{i:x}").parse().unwrap();
            e.orig.dst = "2001:db8:ffff::1".parse().unwrap();
            e.reply.src = e.orig.dst;
            e.reply.dst = e.orig.src;
            e
        })
        .collect();
    p.kernel_new(0, v6);
    p.run(10);
    assert!(p.converged(0));
    assert!(p.max_len <= wire::MAX_DATAGRAM, "{}", p.max_len);
    assert!(p.max_len > 1000, "datagrams are batched: {}", p.max_len);
}
