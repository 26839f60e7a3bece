//! The pure core of the sync service: caches, the reliable replication stream (FTFW-like:
//! sequence numbers, cumulative acks, NACK of gaps, retransmission, full resync), role
//! handling and the consistency digest. `Core::step(now, input) -> outputs` does no IO, so
//! every scenario is a unit test without sockets.
//!
//! The master keeps the *internal cache* (its kernel table, from dumps and events) and
//! streams changes to the peer; the backup keeps the peer's entries in the *external cache*
//! (not in its kernel), expiring them by their timeout, and commits them into the kernel
//! when it becomes master (the shell does the commit, see `service`).

use std::collections::{BTreeMap, VecDeque};

use foldhash::HashSet;

use serde::{Deserialize, Serialize};

use crate::ctnetlink::EventKind;
use crate::entry::{Digest, Entry, Filter, Key};
use crate::kernel::{CommitReport, Event};
use crate::table::{Keyed, Table};
use crate::wire::{Body, Fresh, MAX_DATAGRAM, Update};

/// The node's VRRP role as far as sync is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Owns the VIPs: replicates its table to the peer.
    Master,
    /// Holds the peer's table in the external cache.
    Backup,
}

/// Timers and limits (all times in microseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tuning {
    /// Unacked datagrams in flight before the sender waits.
    pub window: usize,
    /// Retransmit timeout.
    pub rto_us: u64,
    /// Keepalive interval.
    pub hello_us: u64,
    /// Silence after which the peer counts as down.
    pub peer_dead_us: u64,
    /// Interval of digest markers from the master.
    pub digest_us: u64,
    /// Interval of reconciling dumps of the kernel table.
    pub refresh_us: u64,
    /// Interval of the external cache expiry sweep.
    pub expiry_us: u64,
    /// Largest datagram.
    pub max_datagram: usize,
}

impl Default for Tuning {
    fn default() -> Tuning {
        Tuning {
            window: 512,
            rto_us: 100_000,
            hello_us: 250_000,
            peer_dead_us: 1_500_000,
            digest_us: 2_000_000,
            refresh_us: 10_000_000,
            expiry_us: 1_000_000,
            max_datagram: MAX_DATAGRAM,
        }
    }
}

/// An input to the core.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// Time passes (the shell ticks every few milliseconds).
    Tick,
    /// Kernel conntrack events, in order.
    Kernel(Vec<Event>),
    /// The event socket overflowed (ENOBUFS): events were lost.
    Overrun,
    /// A full dump of the kernel table.
    Dump(Vec<Entry>),
    /// An authenticated, fresh datagram from the peer.
    Peer {
        /// Whether the peer started a new session.
        fresh: Fresh,
        /// Its body.
        body: Body,
        /// Its size on the wire.
        bytes: usize,
    },
    /// The role changed. For `Master` the shell has already committed the external cache
    /// (see [`Core::external_entries`]) and fed a fresh dump.
    Role(Role),
    /// A commit into the kernel finished.
    Committed(CommitReport),
    /// The operator asked for a resync from the peer.
    RequestResync,
}

/// What the shell must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Seal and send this body to the peer.
    Send(Body),
    /// Dump the kernel table and feed [`Input::Dump`].
    Dump,
    /// Large buffers were just released (the send queue after a burst, a dump's working
    /// set): a good moment for the shell to return free memory to the system.
    Released,
}

/// The consistency check as the backup sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Consistency {
    /// Digest of our internal cache.
    pub internal: Digest,
    /// Digest of our external cache.
    pub external: Digest,
    /// The last digest the peer sent.
    pub peer: Option<Digest>,
    /// Whether the external cache matched the peer's last digest.
    pub consistent: Option<bool>,
    /// Digests that did not match.
    pub mismatches: u64,
    /// Raised while the caches diverge (two mismatches in a row); cleared by a match.
    pub alarm: bool,
}

/// Counters and gauges, served as JSON on the control socket.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// Current role.
    pub role: Option<Role>,
    /// A datagram from the peer arrived within the dead interval.
    pub peer_up: bool,
    /// Entries in the internal cache (our kernel table, filtered).
    pub internal_entries: usize,
    /// Entries in the external cache (the peer's table).
    pub external_entries: usize,
    /// Changes waiting to be sent.
    pub pending: usize,
    /// Datagrams sent and not yet acked.
    pub unacked: usize,
    /// Kernel events processed.
    pub events: u64,
    /// Kernel events per second over the last second.
    pub events_per_s: f64,
    /// Kernel events ignored by the filter.
    pub events_ignored: u64,
    /// Full resyncs this node started as sender.
    pub resyncs_sent: u64,
    /// Full resyncs this node received completely.
    pub resyncs_received: u64,
    /// Resync requests this node sent.
    pub resync_requests: u64,
    /// Datagrams and bytes sent.
    pub tx_datagrams: u64,
    /// Bytes sent (sealed datagrams).
    pub tx_bytes: u64,
    /// Datagrams received and accepted.
    pub rx_datagrams: u64,
    /// Bytes received and accepted.
    pub rx_bytes: u64,
    /// Entries (upserts and removes) sent, retransmissions excluded.
    pub tx_updates: u64,
    /// Datagrams retransmitted.
    pub retransmits: u64,
    /// NACKs sent.
    pub nacks_sent: u64,
    /// Datagrams dropped for a bad MAC.
    pub bad_mac: u64,
    /// Datagrams dropped as replays.
    pub replays: u64,
    /// Datagrams dropped as undecodable or not ours.
    pub undecodable: u64,
    /// ENOBUFS overruns of the event socket.
    pub enobufs: u64,
    /// Kernel dumps processed.
    pub dumps: u64,
    /// External entries expired by their timeout.
    pub expired: u64,
    /// Kernel event to peer ack, last acked datagram, microseconds.
    pub lag_last_us: u64,
    /// Largest lag seen, microseconds.
    pub lag_max_us: u64,
    /// The last commit of the external cache.
    pub last_commit: Option<CommitReport>,
    /// Commits done.
    pub commits: u64,
    /// The consistency check.
    pub consistency: Consistency,
}

#[derive(Debug, Clone)]
struct Internal {
    entry: Entry,
    /// When the peer's copy expires (as of the last time we sent it).
    peer_deadline_us: u64,
}

#[derive(Debug, Clone)]
struct External {
    entry: Entry,
    deadline_us: u64,
    generation: u32,
}

impl Keyed for Internal {
    fn key(&self) -> Key {
        self.entry.key()
    }
}

impl Keyed for External {
    fn key(&self) -> Key {
        self.entry.key()
    }
}

#[derive(Debug, Clone)]
enum Pending {
    Key { key: Key, event_us: u64 },
    Marker(Update),
}

#[derive(Debug, Clone)]
struct Sent {
    seq: u32,
    updates: Vec<Update>,
    event_us: Option<u64>,
    sent_us: u64,
}

/// The sync service state.
#[derive(Debug)]
pub struct Core {
    tuning: Tuning,
    filter: Filter,
    role: Role,
    internal: Table<Internal>,
    internal_digest: Digest,
    external: Table<External>,
    external_digest: Digest,
    generation: u32,
    in_resync: bool,
    // sender
    tx_stream: u32,
    tx_next: u32,
    unacked: VecDeque<Sent>,
    pending: VecDeque<Pending>,
    pending_keys: HashSet<Key>,
    // receiver
    rx_stream: u32,
    rx_expected: u32,
    rx_held: BTreeMap<u32, Vec<Update>>,
    unacked_rx: u32,
    want_resync: bool,
    last_nack: Option<(u32, u64)>,
    /// When an ack last moved the window (the retransmission timer runs from here).
    last_progress_us: u64,
    // timers
    last_rx_us: Option<u64>,
    last_hello_us: u64,
    last_digest_us: u64,
    last_refresh_us: u64,
    last_dump_us: u64,
    dump_due: bool,
    last_expiry_us: u64,
    last_rate: (u64, u64),
    rto_us: u64,
    status: Status,
}

/// Bytes of a Data datagram besides its updates: magic, epoch, counter, stream, seq,
/// length prefix (all varints at their largest) and the MAC.
const OVERHEAD: usize = 80;
/// Pending changes that surely fill a datagram (IPv4 TCP entries are ~50 bytes).
const FULL_DATAGRAM: usize = 30;
/// Capacity the send queue keeps once drained. A burst (an injection of 100k entries, a
/// full resync) grows the queue and its key set to the table's size, ~20 MB at 100k, and
/// neither shrinks by itself: they go back to this after the burst.
const QUEUE_KEEP: usize = 4096;

impl Core {
    /// A core in `role` that ignores what `filter` rejects.
    pub fn new(role: Role, filter: Filter, tuning: Tuning) -> Core {
        let mut c = Core {
            tuning,
            filter,
            role,
            internal: Table::new(),
            internal_digest: Digest::default(),
            external: Table::new(),
            external_digest: Digest::default(),
            generation: 0,
            in_resync: false,
            tx_stream: 0,
            tx_next: 1,
            unacked: VecDeque::new(),
            pending: VecDeque::new(),
            pending_keys: HashSet::default(),
            rx_stream: 0,
            rx_expected: 1,
            rx_held: BTreeMap::new(),
            unacked_rx: 0,
            want_resync: role == Role::Backup,
            last_nack: None,
            last_progress_us: 0,
            last_rx_us: None,
            last_hello_us: 0,
            last_digest_us: 0,
            last_refresh_us: 0,
            last_dump_us: 0,
            dump_due: false,
            last_expiry_us: 0,
            last_rate: (0, 0),
            rto_us: tuning.rto_us,
            status: Status::default(),
        };
        if role == Role::Master {
            c.start_resync();
        }
        c
    }

    /// The current role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Counters; the shell adds what it sees before the core (bad MACs, replays).
    pub fn status_mut(&mut self) -> &mut Status {
        &mut self.status
    }

    /// A snapshot of the status at `now`.
    pub fn status(&self, now_us: u64) -> Status {
        let mut s = self.status.clone();
        s.role = Some(self.role);
        s.peer_up = self.peer_up(now_us);
        s.internal_entries = self.internal.len();
        s.external_entries = self.external.len();
        s.pending = self.pending_keys.len();
        s.unacked = self.unacked.len();
        s.consistency.internal = self.internal_digest;
        s.consistency.external = self.external_digest;
        s
    }

    /// The digest of the internal cache.
    pub fn internal_digest(&self) -> Digest {
        self.internal_digest
    }

    /// The digest of the external cache.
    pub fn external_digest(&self) -> Digest {
        self.external_digest
    }

    /// The external cache as entries to commit, timeouts set to what is left at `now`.
    pub fn external_entries(&self, now_us: u64) -> Vec<Entry> {
        self.external_iter(now_us).collect()
    }

    /// [`Core::external_entries`] without the copy: the same sequence on every call while
    /// the cache is not changed (what [`crate::kernel::Conntrack::commit_from`] needs).
    pub fn external_iter(&self, now_us: u64) -> impl Iterator<Item = Entry> + '_ {
        self.external
            .values()
            .filter(move |x| x.deadline_us > now_us)
            .map(move |x| {
                let mut e = x.entry;
                e.timeout = (((x.deadline_us - now_us) / 1_000_000) as u32).max(1);
                e
            })
    }

    /// Entries in the external cache (expired ones included).
    pub fn external_len(&self) -> usize {
        self.external.len()
    }

    fn peer_up(&self, now_us: u64) -> bool {
        self.last_rx_us
            .is_some_and(|t| now_us.saturating_sub(t) < self.tuning.peer_dead_us)
    }

    /// Advances the core by one input.
    pub fn step(&mut self, now_us: u64, input: Input) -> Vec<Output> {
        let mut out = Vec::new();
        // Kernel events only fill datagrams; partly filled ones wait for the next tick
        // (a few ms), so that a burst travels in full datagrams.
        let partial = !matches!(input, Input::Kernel(_));
        // A dump's entries and working set are freed by the time the step returns.
        let mut released = matches!(input, Input::Dump(_));
        match input {
            Input::Tick => self.tick(now_us, &mut out),
            Input::Kernel(events) => {
                for ev in events {
                    self.kernel_event(now_us, ev);
                }
            }
            Input::Overrun => {
                self.status.enobufs += 1;
                if !self.dump_due {
                    tracing::warn!(
                        enobufs = self.status.enobufs,
                        "conntrack events lost (ENOBUFS): resyncing from a dump"
                    );
                }
                // One dump per burst of overruns: it is taken on a tick, at most every
                // `rto_us`, while the events that still arrive keep being applied.
                self.dump_due = true;
            }
            Input::Dump(entries) => self.reconcile(now_us, entries),
            Input::Peer { fresh, body, bytes } => self.peer(now_us, fresh, body, bytes, &mut out),
            Input::Role(role) => self.set_role(now_us, role, &mut out),
            Input::Committed(report) => {
                self.status.commits += 1;
                self.status.last_commit = Some(report);
            }
            Input::RequestResync => {
                self.want_resync = true;
                self.send_hello(now_us, &mut out);
            }
        }
        self.flush(now_us, partial, &mut out);
        if self.pending.is_empty() && self.pending.capacity() > 2 * QUEUE_KEEP {
            self.pending.shrink_to(QUEUE_KEEP);
            self.pending_keys.shrink_to(QUEUE_KEEP);
            released = true;
        }
        if released {
            out.push(Output::Released);
        }
        out
    }

    fn mark_dirty(&mut self, key: Key, now_us: u64) {
        if self.role == Role::Master && self.pending_keys.insert(key) {
            self.pending.push_back(Pending::Key {
                key,
                event_us: now_us,
            });
        }
    }

    fn kernel_event(&mut self, now_us: u64, ev: Event) {
        self.status.events += 1;
        if !self.filter.accepts(&ev.entry) {
            self.status.events_ignored += 1;
            return;
        }
        let key = ev.entry.key();
        match ev.kind {
            EventKind::New | EventKind::Update => {
                let mut entry = ev.entry;
                match self.internal.get_mut(&key) {
                    Some(old) => {
                        // Update events omit what did not change (TCP state, timeout):
                        // keep what we knew.
                        if entry.tcp.is_none() {
                            entry.tcp = old.entry.tcp;
                        }
                        if entry.timeout == 0 {
                            entry.timeout = old.entry.timeout;
                        }
                        self.internal_digest.remove(&old.entry);
                        old.entry = entry;
                        self.internal_digest.add(&entry);
                    }
                    None => {
                        self.internal.insert(Internal {
                            entry,
                            peer_deadline_us: 0,
                        });
                        self.internal_digest.add(&entry);
                    }
                }
                self.mark_dirty(key, now_us);
            }
            EventKind::Destroy => {
                if let Some(old) = self.internal.remove(&key) {
                    self.internal_digest.remove(&old.entry);
                    self.mark_dirty(key, now_us);
                }
            }
        }
    }

    /// Brings the internal cache in line with a full dump: new and changed entries, entries
    /// whose copy on the peer would expire before the kernel's, and vanished entries are
    /// queued for the peer.
    fn reconcile(&mut self, now_us: u64, entries: Vec<Entry>) {
        self.status.dumps += 1;
        let mut seen = HashSet::with_capacity_and_hasher(entries.len(), Default::default());
        for e in entries {
            if !self.filter.accepts(&e) {
                continue;
            }
            let key = e.key();
            seen.insert(key);
            let dirty = match self.internal.get_mut(&key) {
                Some(old) => {
                    let changed = Entry {
                        timeout: 0,
                        ..old.entry
                    } != Entry { timeout: 0, ..e };
                    let remaining = old.peer_deadline_us.saturating_sub(now_us);
                    let aging = remaining < u64::from(e.timeout) * 1_000_000 / 2;
                    self.internal_digest.remove(&old.entry);
                    old.entry = e;
                    self.internal_digest.add(&e);
                    changed || aging
                }
                None => {
                    self.internal.insert(Internal {
                        entry: e,
                        peer_deadline_us: 0,
                    });
                    self.internal_digest.add(&e);
                    true
                }
            };
            if dirty {
                self.mark_dirty(key, now_us);
            }
        }
        let gone: Vec<Key> = self.internal.keys().filter(|k| !seen.contains(k)).collect();
        for k in gone {
            if let Some(old) = self.internal.remove(&k) {
                self.internal_digest.remove(&old.entry);
            }
            self.mark_dirty(k, now_us);
        }
    }

    fn set_role(&mut self, now_us: u64, role: Role, out: &mut Vec<Output>) {
        if role == self.role {
            return;
        }
        tracing::info!(from = ?self.role, to = ?role, "sync role change");
        self.role = role;
        match role {
            Role::Master => {
                // The shell committed the external cache; from now on our kernel is the
                // truth and the peer gets all of it.
                self.external.clear();
                self.external_digest = Digest::default();
                self.rx_stream = 0;
                self.rx_expected = 1;
                self.rx_held.clear();
                self.want_resync = false;
                self.status.consistency = Consistency::default();
                self.start_resync();
            }
            Role::Backup => {
                // Stale: the new master's table is the truth. Ask for all of it.
                self.unacked.clear();
                self.pending.clear();
                self.pending_keys.clear();
                self.external.clear();
                self.external_digest = Digest::default();
                self.rx_stream = 0;
                self.rx_expected = 1;
                self.rx_held.clear();
                self.want_resync = true;
                self.send_hello(now_us, out);
            }
        }
    }

    /// Starts a new stream that carries the whole internal cache.
    fn start_resync(&mut self) {
        self.tx_stream = self.tx_stream.wrapping_add(1);
        self.tx_next = 1;
        self.rto_us = self.tuning.rto_us;
        self.unacked.clear();
        self.pending.clear();
        self.pending_keys.clear();
        self.status.resyncs_sent += 1;
        self.pending.push_back(Pending::Marker(Update::ResyncBegin));
        let now_us = 0;
        let keys: Vec<Key> = self.internal.keys().collect();
        for key in keys {
            self.pending_keys.insert(key);
            self.pending.push_back(Pending::Key {
                key,
                event_us: now_us,
            });
        }
        self.pending.push_back(Pending::Marker(Update::ResyncEnd));
        tracing::info!(
            stream = self.tx_stream,
            entries = self.internal.len(),
            "full resync to the peer"
        );
    }

    fn send_hello(&mut self, now_us: u64, out: &mut Vec<Output>) {
        self.last_hello_us = now_us;
        if self.want_resync {
            self.status.resync_requests += 1;
        }
        out.push(Output::Send(Body::Hello {
            want_resync: self.want_resync.then_some(self.rx_stream),
        }));
    }

    fn tick(&mut self, now_us: u64, out: &mut Vec<Output>) {
        if now_us.saturating_sub(self.last_hello_us) >= self.tuning.hello_us {
            self.send_hello(now_us, out);
        }
        if self.unacked_rx > 0 {
            self.send_ack(out);
        }
        // events per second
        let (t, n) = self.last_rate;
        if now_us.saturating_sub(t) >= 1_000_000 {
            let dt = (now_us - t) as f64 / 1e6;
            self.status.events_per_s = (self.status.events - n) as f64 / dt;
            self.last_rate = (now_us, self.status.events);
        }
        if now_us.saturating_sub(self.last_expiry_us) >= self.tuning.expiry_us {
            self.last_expiry_us = now_us;
            self.expire(now_us);
        }
        if self.dump_due && now_us.saturating_sub(self.last_dump_us) >= self.tuning.rto_us {
            self.dump_due = false;
            self.last_dump_us = now_us;
            out.push(Output::Dump);
        }
        if self.role == Role::Master {
            if now_us.saturating_sub(self.last_refresh_us) >= self.tuning.refresh_us {
                self.last_refresh_us = now_us;
                self.last_dump_us = now_us;
                out.push(Output::Dump);
            }
            if now_us.saturating_sub(self.last_digest_us) >= self.tuning.digest_us
                && self.pending.is_empty()
                && self.unacked.len() < self.tuning.window
            {
                self.last_digest_us = now_us;
                self.pending
                    .push_back(Pending::Marker(Update::Digest(self.internal_digest)));
            }
            self.retransmit(now_us, out);
        }
    }

    fn expire(&mut self, now_us: u64) {
        let (digest, status) = (&mut self.external_digest, &mut self.status);
        self.external.retain(
            |x| x.deadline_us > now_us,
            |x| {
                digest.remove(&x.entry);
                status.expired += 1;
            },
        );
    }

    /// Retransmission on timeout covers tail loss and lost NACKs only (gaps are NACKed):
    /// when the oldest unacked datagram is older than the RTO *and* no ack has moved the
    /// window for an RTO, the oldest few are resent and the RTO backs off (doubling, up to
    /// 2 s) until an ack advances, so a slow or silent peer is probed, not flooded. (The
    /// timer used to run from the oldest datagram's send time alone: a backup whose acks
    /// came late but steadily — its main thread behind on a loaded machine — got 16
    /// duplicates every RTO, ~1,000 retransmits per 100k entries in the benchmark, which
    /// it then had to read too.)
    fn retransmit(&mut self, now_us: u64, out: &mut Vec<Output>) {
        let Some(oldest) = self.unacked.front() else {
            return;
        };
        if now_us.saturating_sub(oldest.sent_us.max(self.last_progress_us)) < self.rto_us {
            return;
        }
        let limit = if self.peer_up(now_us) { 16 } else { 1 };
        let mut n = 0;
        for s in self.unacked.iter_mut().take(limit) {
            s.sent_us = now_us;
            n += 1;
            out.push(Output::Send(Body::Data {
                stream: self.tx_stream,
                seq: s.seq,
                updates: s.updates.clone(),
            }));
        }
        self.rto_us = (self.rto_us * 2).min(2_000_000);
        self.status.retransmits += n as u64;
    }

    fn send_ack(&mut self, out: &mut Vec<Output>) {
        self.unacked_rx = 0;
        out.push(Output::Send(Body::Ack {
            stream: self.rx_stream,
            upto: self.rx_expected - 1,
        }));
    }

    fn peer(&mut self, now_us: u64, fresh: Fresh, body: Body, bytes: usize, out: &mut Vec<Output>) {
        self.last_rx_us = Some(now_us);
        self.status.rx_datagrams += 1;
        self.status.rx_bytes += bytes as u64;
        if fresh == Fresh::NewSession {
            tracing::info!("peer restarted (new session)");
            self.rx_stream = 0;
            self.rx_expected = 1;
            self.rx_held.clear();
            if self.role == Role::Master {
                self.start_resync();
            } else {
                self.want_resync = true;
            }
        }
        match body {
            Body::Hello { want_resync } => {
                // The request names the last stream the peer saw; a newer one of ours is
                // already the answer.
                if let Some(after) = want_resync
                    && self.role == Role::Master
                    && self.tx_stream <= after
                {
                    self.start_resync();
                }
            }
            Body::Data {
                stream,
                seq,
                updates,
            } => self.data(now_us, stream, seq, updates, out),
            Body::Ack { stream, upto } => self.ack(now_us, stream, upto),
            Body::Nack { stream, from, to } => self.nack(now_us, stream, from, to, out),
        }
    }

    fn data(
        &mut self,
        now_us: u64,
        stream: u32,
        seq: u32,
        updates: Vec<Update>,
        out: &mut Vec<Output>,
    ) {
        if stream < self.rx_stream {
            return;
        }
        if stream > self.rx_stream {
            self.rx_stream = stream;
            self.rx_expected = 1;
            self.rx_held.clear();
            self.last_nack = None;
        }
        if seq < self.rx_expected {
            // duplicate: our ack was lost
            self.unacked_rx += 1;
            return;
        }
        if seq > self.rx_expected {
            // Out of order: keep it (bounded by the window) and ask for the gap before the
            // first datagram we hold.
            if ((seq - self.rx_expected) as usize) < self.tuning.window {
                self.rx_held.insert(seq, updates);
            }
            let to = self.rx_held.keys().next().map_or(seq, |s| *s) - 1;
            let again = match self.last_nack {
                Some((from, at)) => {
                    from != self.rx_expected || now_us.saturating_sub(at) >= self.tuning.rto_us
                }
                None => true,
            };
            if again {
                self.last_nack = Some((self.rx_expected, now_us));
                self.status.nacks_sent += 1;
                out.push(Output::Send(Body::Nack {
                    stream,
                    from: self.rx_expected,
                    to,
                }));
            }
            return;
        }
        self.deliver(now_us, updates);
        while let Some(next) = self.rx_held.remove(&self.rx_expected) {
            self.deliver(now_us, next);
        }
        if self.unacked_rx >= 16 {
            self.send_ack(out);
        }
    }

    fn deliver(&mut self, now_us: u64, updates: Vec<Update>) {
        self.rx_expected += 1;
        self.unacked_rx += 1;
        self.want_resync = false;
        for u in updates {
            self.apply(now_us, u);
        }
    }

    fn apply(&mut self, now_us: u64, u: Update) {
        match u {
            Update::Upsert(e) => {
                let x = External {
                    entry: e,
                    deadline_us: now_us + u64::from(e.timeout) * 1_000_000,
                    generation: self.generation,
                };
                if let Some(old) = self.external.insert(x) {
                    self.external_digest.remove(&old.entry);
                }
                self.external_digest.add(&e);
            }
            Update::Remove(k) => {
                if let Some(old) = self.external.remove(&k) {
                    self.external_digest.remove(&old.entry);
                }
            }
            Update::ResyncBegin => {
                self.generation = self.generation.wrapping_add(1);
                self.in_resync = true;
            }
            Update::ResyncEnd => {
                let g = self.generation;
                let digest = &mut self.external_digest;
                self.external
                    .retain(|x| x.generation == g, |old| digest.remove(&old.entry));
                self.in_resync = false;
                self.status.resyncs_received += 1;
                tracing::info!(
                    entries = self.external.len(),
                    "full resync from the peer complete"
                );
            }
            Update::Digest(d) => {
                let c = &mut self.status.consistency;
                c.peer = Some(d);
                if self.in_resync {
                    return;
                }
                let ok = d == self.external_digest;
                if ok {
                    if c.alarm {
                        tracing::info!(entries = d.count, "caches converged again");
                    }
                    c.alarm = false;
                } else {
                    c.mismatches += 1;
                    if c.consistent == Some(false) && !c.alarm {
                        c.alarm = true;
                        tracing::warn!(
                            peer_entries = d.count,
                            our_entries = self.external_digest.count,
                            "external cache diverges from the peer's table: requesting resync"
                        );
                        self.want_resync = true;
                    }
                }
                c.consistent = Some(ok);
            }
        }
    }

    fn ack(&mut self, now_us: u64, stream: u32, upto: u32) {
        if stream != self.tx_stream {
            return;
        }
        let before = self.unacked.len();
        while let Some(s) = self.unacked.front() {
            if s.seq > upto {
                break;
            }
            if let Some(t) = s.event_us
                && t > 0
            {
                let lag = now_us.saturating_sub(t);
                self.status.lag_last_us = lag;
                self.status.lag_max_us = self.status.lag_max_us.max(lag);
            }
            self.unacked.pop_front();
        }
        // Progress: back to the base RTO. (No RTT estimate: a cumulative ack of a datagram
        // that waited behind a gap says nothing about the link, and the sync link is one
        // hop.)
        if self.unacked.len() < before {
            self.rto_us = self.tuning.rto_us;
            self.last_progress_us = now_us;
        }
    }

    fn nack(&mut self, now_us: u64, stream: u32, from: u32, to: u32, out: &mut Vec<Output>) {
        if stream != self.tx_stream {
            return;
        }
        let oldest = self.unacked.front().map(|s| s.seq).unwrap_or(self.tx_next);
        if from < oldest {
            tracing::warn!(
                from,
                oldest,
                "peer missed datagrams we no longer hold: full resync"
            );
            self.start_resync();
            return;
        }
        let mut n = 0;
        for s in self
            .unacked
            .iter_mut()
            .filter(|s| s.seq >= from && s.seq <= to)
        {
            s.sent_us = now_us;
            n += 1;
            out.push(Output::Send(Body::Data {
                stream,
                seq: s.seq,
                updates: s.updates.clone(),
            }));
        }
        self.status.retransmits += n;
    }

    /// Turns the next pending item into an update (and its event time).
    fn next_update(&mut self, now_us: u64) -> Option<(Update, u64)> {
        Some(match self.pending.pop_front()? {
            // computed now: everything before it in the stream is already sent
            Pending::Marker(Update::Digest(_)) => (Update::Digest(self.internal_digest), 0),
            Pending::Marker(u) => (u, 0),
            Pending::Key { key, event_us } => {
                self.pending_keys.remove(&key);
                self.status.tx_updates += 1;
                let u = match self.internal.get_mut(&key) {
                    Some(i) => {
                        i.peer_deadline_us = now_us + u64::from(i.entry.timeout) * 1_000_000;
                        Update::Upsert(i.entry)
                    }
                    None => Update::Remove(key),
                };
                (u, event_us)
            }
        })
    }

    /// Packs pending changes into datagrams of at most `max_datagram` bytes while the
    /// window allows.
    fn flush(&mut self, now_us: u64, partial: bool, out: &mut Vec<Output>) {
        if self.role != Role::Master {
            return;
        }
        let mut carry: Option<(Update, u64, usize)> = None;
        while self.unacked.len() < self.tuning.window
            && (carry.is_some() || !self.pending.is_empty())
            && (partial || self.pending.len() >= FULL_DATAGRAM)
        {
            let mut updates = Vec::new();
            let mut size = OVERHEAD;
            let mut event_us: Option<u64> = None;
            loop {
                let (u, t, len) = match carry.take() {
                    Some(c) => c,
                    None => match self.next_update(now_us) {
                        Some((u, t)) => {
                            let len =
                                postcard::experimental::serialized_size(&u).expect("serialisable");
                            (u, t, len)
                        }
                        None => break,
                    },
                };
                if size + len > self.tuning.max_datagram && !updates.is_empty() {
                    carry = Some((u, t, len));
                    break;
                }
                size += len;
                if t > 0 {
                    event_us = Some(event_us.map_or(t, |e| e.min(t)));
                }
                updates.push(u);
            }
            let seq = self.tx_next;
            self.tx_next += 1;
            self.unacked.push_back(Sent {
                seq,
                updates: updates.clone(),
                event_us,
                sent_us: now_us,
            });
            out.push(Output::Send(Body::Data {
                stream: self.tx_stream,
                seq,
                updates,
            }));
        }
        if let Some((u, t, _)) = carry {
            // The window filled up: put the update back (as a key, re-read next time).
            match u {
                Update::Upsert(e) => {
                    self.status.tx_updates -= 1;
                    self.pending_keys.insert(e.key());
                    self.pending.push_front(Pending::Key {
                        key: e.key(),
                        event_us: t,
                    });
                }
                Update::Remove(key) => {
                    self.status.tx_updates -= 1;
                    self.pending_keys.insert(key);
                    self.pending.push_front(Pending::Key { key, event_us: t });
                }
                marker => self.pending.push_front(Pending::Marker(marker)),
            }
        }
    }
}

#[cfg(test)]
mod tests;
