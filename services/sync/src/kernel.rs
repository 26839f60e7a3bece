//! The kernel side of conntrack: ctnetlink sockets for dumps, the event subscription (with a
//! forced large receive buffer and ENOBUFS detection) and batched creation of entries.
//! All sockets belong to the network namespace of the thread that opens them.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use netlink_sys::{Socket, SocketAddr};
use serde::{Deserialize, Serialize};

use crate::ctnetlink::{
    self, Builder, CodecError, EventKind, Message, NETLINK_NETFILTER, NFNLGRP_CONNTRACK_DESTROY,
    NFNLGRP_CONNTRACK_NEW, NFNLGRP_CONNTRACK_UPDATE,
};
use crate::entry::Entry;

/// Errors of the kernel side.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// A socket operation failed.
    #[error("ctnetlink {op}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The kernel answered with something we cannot decode.
    #[error("ctnetlink {op}: {source}")]
    Codec {
        /// What was being done.
        op: &'static str,
        /// The decoding error.
        #[source]
        source: CodecError,
    },
    /// The kernel refused a request.
    #[error("ctnetlink {op}: kernel error {errno} ({})", io::Error::from_raw_os_error(*.errno))]
    Kernel {
        /// What was being done.
        op: &'static str,
        /// Positive errno.
        errno: i32,
    },
    /// The event socket overflowed: events were lost and a resync from a dump is needed.
    #[error("ctnetlink events: receive buffer overrun (ENOBUFS), events lost")]
    Overrun,
}

fn io_err(op: &'static str) -> impl FnOnce(io::Error) -> KernelError {
    move |source| KernelError::Io { op, source }
}

const RECV_BUF: usize = 256 * 1024;
/// Entries per `sendmsg` of a commit (about 150 KiB for TCP entries with window state);
/// 1024 costs the kernel ~8 % less than 256 (pre-built batches in `bench_sync`).
const BATCH: usize = 1024;
/// Commits up to this size are built inline; larger ones are pipelined.
const PIPELINE_MIN: usize = 4 * BATCH;

fn open(op: &'static str) -> Result<Socket, KernelError> {
    let mut s = Socket::new(NETLINK_NETFILTER).map_err(io_err(op))?;
    s.bind_auto().map_err(io_err(op))?;
    s.connect(&SocketAddr::new(0, 0)).map_err(io_err(op))?;
    Ok(s)
}

fn recv(s: &Socket, buf: &mut Vec<u8>, flags: libc::c_int) -> io::Result<usize> {
    buf.clear();
    s.recv(buf, flags)
}

/// A request socket: dumps and commits.
#[derive(Debug)]
pub struct Conntrack {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

/// What a commit did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitReport {
    /// Entries sent to the kernel.
    pub entries: u64,
    /// Entries the kernel refused (counted, logged, not fatal).
    pub failed: u64,
    /// First error seen (positive errno), if any.
    pub first_errno: Option<i32>,
    /// Wall time of the commit in microseconds.
    pub duration_us: u64,
    /// Entries that were already in the kernel and were updated in place instead (a node
    /// that committed them before, e.g. master for a moment, then backup, then master).
    #[serde(default)]
    pub existing: u64,
    /// CPU time (user + system, the kernel's work included) of the threads doing the
    /// commit, in microseconds: what the commit costs whatever the machine's load.
    #[serde(default)]
    pub cpu_us: u64,
}

/// The sequence number of entry `i` of a commit that starts after `base`.
fn seq_of(base: u32, i: usize) -> u32 {
    base.wrapping_add(1).wrapping_add(i as u32)
}

/// CPU time (user + system) of the calling thread in microseconds.
pub fn thread_cpu_us() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(|t| t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1000)
        .unwrap_or(0)
}

impl Conntrack {
    /// Opens a request socket in the current thread's network namespace.
    pub fn open() -> Result<Conntrack, KernelError> {
        let sock = open("open")?;
        // Errors of a large commit batch queue up here before we read them.
        let _ =
            nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::RcvBufForce, &(8 << 20));
        // Errors without the request echoed (the header, with its seq, is still there):
        // a commit meeting entries already in the kernel gets one error per entry.
        let _ = sock.set_cap_ack(true);
        // A commit batch is one netlink message buffer of up to ~150 KiB.
        let _ =
            nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::SndBufForce, &(4 << 20));
        Ok(Conntrack {
            sock,
            seq: 1,
            buf: Vec::with_capacity(RECV_BUF),
        })
    }

    /// Dumps the whole table (IPv4 and IPv6); entries of protocols that are not replicated
    /// are skipped.
    pub fn dump(&mut self) -> Result<Vec<Entry>, KernelError> {
        let mut out = Vec::new();
        self.dump_into(|e| out.push(e))?;
        Ok(out)
    }

    /// Dumps the whole table, calling `f` for each entry.
    pub fn dump_into(&mut self, mut f: impl FnMut(Entry)) -> Result<(), KernelError> {
        self.seq = self.seq.wrapping_add(1);
        let mut b = Builder::new();
        b.dump_request(self.seq);
        self.sock
            .send(b.bytes(), 0)
            .map_err(io_err("dump request"))?;
        loop {
            recv(&self.sock, &mut self.buf, 0).map_err(io_err("dump"))?;
            for m in ctnetlink::parse_messages(&self.buf) {
                match m.map_err(|source| KernelError::Codec { op: "dump", source })? {
                    Message::Conntrack { entry: Some(e), .. } => f(e),
                    Message::Conntrack { entry: None, .. } | Message::Other(_) => {}
                    Message::Done => return Ok(()),
                    Message::Error { errno: 0, .. } => {}
                    Message::Error { errno, .. } => {
                        return Err(KernelError::Kernel {
                            op: "dump",
                            errno: -errno,
                        });
                    }
                    Message::Overrun => return Err(KernelError::Overrun),
                }
            }
        }
    }

    /// Creates entries in the kernel, many per `sendmsg`; entries that are already there
    /// (`EEXIST`: this node committed them before, e.g. it was master for a moment) are
    /// then updated in place with the new timeout, status and TCP state, so a second
    /// commit neither fails nor duplicates anything. ctnetlink processes a multi-message
    /// buffer synchronously in the sender's context, so after each send the errors for
    /// that batch are already queued; they are drained without blocking (no acks are asked
    /// for: only errors come back).
    ///
    /// Large commits are a two-stage pipeline: a scoped thread builds the next batches
    /// while this one is in the kernel with the previous one (building was a quarter of
    /// the commit time, measured in `bench_sync`; the kernel's part cannot be split, as
    /// two sockets in parallel were not faster). Buffers travel back for reuse.
    pub fn commit(&mut self, entries: &[Entry]) -> Result<CommitReport, KernelError> {
        self.commit_from(entries.len(), || entries.iter().copied())
    }

    /// [`Conntrack::commit`] of what `entries()` yields, at most `max` entries (more are
    /// not sent). `entries` must yield the same sequence each time it is called: the
    /// builder thread walks it once, and the second pass for entries already in the
    /// kernel walks it again to find them by position. So the takeover commit builds its
    /// batches straight from the external cache instead of copying 100k entries into a
    /// vector first (10-13 ms before the first send, measured in `bench_sync`).
    pub fn commit_from<F, I>(&mut self, max: usize, entries: F) -> Result<CommitReport, KernelError>
    where
        F: Fn() -> I + Sync,
        I: Iterator<Item = Entry>,
    {
        let start = Instant::now();
        let cpu0 = thread_cpu_us();
        let mut report = CommitReport::default();
        // Entry i is sent with sequence number base + 1 + i: errors name their entry.
        let base = self.seq;
        self.seq = self.seq.wrapping_add(max as u32);
        let mut existing = Vec::new();
        let mut builder_cpu_us = 0;
        if max <= PIPELINE_MIN {
            let mut b = Builder::new();
            let mut all = entries().take(max).enumerate().peekable();
            while all.peek().is_some() {
                let n = fill_batch(&mut b, &mut all, base);
                self.sock.send(b.bytes(), 0).map_err(io_err("commit"))?;
                report.entries += n;
                self.drain_errors(&mut report, Some(&mut existing))?;
            }
        } else {
            let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<(Builder, u64)>(4);
            let (empty_tx, empty_rx) = std::sync::mpsc::channel::<Builder>();
            for _ in 0..4 {
                let _ = empty_tx.send(Builder::new());
            }
            let entries = &entries;
            builder_cpu_us = std::thread::scope(|scope| -> Result<u64, KernelError> {
                let builder = scope.spawn(move || {
                    let cpu0 = thread_cpu_us();
                    let mut all = entries().take(max).enumerate().peekable();
                    while all.peek().is_some() {
                        // The sender stopped (an error): nothing more to build.
                        let Ok(mut b) = empty_rx.recv() else { break };
                        let n = fill_batch(&mut b, &mut all, base);
                        if full_tx.send((b, n)).is_err() {
                            break;
                        }
                    }
                    thread_cpu_us().saturating_sub(cpu0)
                });
                // Owned here, so that an early error return drops them and the builder
                // stops (instead of waiting for a buffer forever).
                let (full_rx, empty_tx) = (full_rx, empty_tx);
                for (b, n) in full_rx.iter() {
                    self.sock.send(b.bytes(), 0).map_err(io_err("commit"))?;
                    report.entries += n;
                    self.drain_errors(&mut report, Some(&mut existing))?;
                    let _ = empty_tx.send(b);
                }
                Ok(builder.join().unwrap_or(0))
            })?;
        }
        if !existing.is_empty() {
            self.update_existing(entries().take(max), base, existing, &mut report)?;
        }
        report.duration_us = start.elapsed().as_micros() as u64;
        report.cpu_us = thread_cpu_us().saturating_sub(cpu0) + builder_cpu_us;
        Ok(report)
    }

    /// The second pass of a commit: updates (without NAT) for the entries the kernel
    /// already held; their sequence numbers name their positions in `entries`.
    fn update_existing(
        &mut self,
        entries: impl Iterator<Item = Entry>,
        base: u32,
        existing: Vec<u32>,
        report: &mut CommitReport,
    ) -> Result<(), KernelError> {
        let mut wanted: Vec<usize> = existing
            .into_iter()
            .map(|seq| seq.wrapping_sub(base).wrapping_sub(1) as usize)
            .collect();
        wanted.sort_unstable();
        wanted.dedup();
        let mut wanted = wanted.into_iter().peekable();
        let mut b = Builder::new();
        let mut queued = 0;
        for (i, e) in entries.enumerate() {
            match wanted.peek() {
                None => break,
                Some(&w) if w != i => continue,
                Some(_) => {}
            }
            wanted.next();
            self.seq = self.seq.wrapping_add(1);
            b.update(&e, self.seq);
            report.existing += 1;
            queued += 1;
            if queued == BATCH {
                self.send_updates(&mut b, report)?;
                queued = 0;
            }
        }
        if queued > 0 {
            self.send_updates(&mut b, report)?;
        }
        Ok(())
    }

    fn send_updates(
        &mut self,
        b: &mut Builder,
        report: &mut CommitReport,
    ) -> Result<(), KernelError> {
        self.sock
            .send(b.bytes(), 0)
            .map_err(io_err("commit update"))?;
        self.drain_errors(report, None)?;
        b.clear();
        Ok(())
    }

    /// Deletes entries (by original tuple); missing ones are not an error.
    pub fn delete(&mut self, entries: &[Entry]) -> Result<CommitReport, KernelError> {
        let start = Instant::now();
        let mut report = CommitReport::default();
        let mut b = Builder::new();
        for chunk in entries.chunks(256) {
            b.clear();
            for e in chunk {
                self.seq = self.seq.wrapping_add(1);
                b.delete(e, self.seq);
            }
            self.sock.send(b.bytes(), 0).map_err(io_err("delete"))?;
            report.entries += chunk.len() as u64;
            self.drain_errors(&mut report, None)?;
        }
        report.duration_us = start.elapsed().as_micros() as u64;
        Ok(report)
    }

    /// Reads the errors queued for the last batch without blocking. With `existing`,
    /// `EEXIST` is not a failure: the sequence numbers are collected for an update.
    fn drain_errors(
        &mut self,
        report: &mut CommitReport,
        mut existing: Option<&mut Vec<u32>>,
    ) -> Result<(), KernelError> {
        loop {
            match recv(&self.sock, &mut self.buf, libc::MSG_DONTWAIT) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => {
                    return Err(KernelError::Io {
                        op: "commit",
                        source: e,
                    });
                }
            }
            for m in ctnetlink::parse_messages(&self.buf) {
                if let Ok(Message::Error { errno, seq }) = m
                    && errno != 0
                {
                    match existing.as_deref_mut() {
                        Some(v) if -errno == libc::EEXIST => v.push(seq),
                        _ => {
                            report.failed += 1;
                            report.first_errno.get_or_insert(-errno);
                        }
                    }
                }
            }
        }
    }
}

/// The per-namespace switch of conntrack events (0 off, 1 always, 2 only while a socket
/// of the namespace listens: the kernel default).
pub const EVENTS_SYSCTL: &str = "/proc/sys/net/netfilter/nf_conntrack_events";

/// Makes every new entry carry the event extension (`nf_conntrack_events = 1`), so that
/// entries created while no socket of the namespace listens still report their later
/// updates and their destruction. Under the default (2, "autodetect"), entries committed
/// while our event delivery is paused (a takeover) never reported anything again: the
/// new master did not hear about the flows it took over until its next dump (the netns
/// test `entries_committed_while_paused_still_report_events` caught it). Returns the
/// previous value.
pub fn ensure_event_extension() -> Result<u8, KernelError> {
    let op = "nf_conntrack_events";
    let old = std::fs::read_to_string(EVENTS_SYSCTL).map_err(io_err(op))?;
    let old: u8 = old.trim().parse().unwrap_or(2);
    if old != 1 {
        std::fs::write(EVENTS_SYSCTL, "1\n").map_err(io_err(op))?;
    }
    Ok(old)
}

/// Refills `b` with the create messages of the next (up to) [`BATCH`] entries of `all`
/// (position `i` is sent as sequence number `base + 1 + i`); returns how many.
fn fill_batch(b: &mut Builder, all: &mut impl Iterator<Item = (usize, Entry)>, base: u32) -> u64 {
    b.clear();
    let mut n = 0;
    for (i, e) in all.take(BATCH) {
        b.create(&e, seq_of(base, i), false);
        n += 1;
    }
    n
}

/// One kernel event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    /// New, update or destroy.
    pub kind: EventKind,
    /// The entry as the kernel reported it.
    pub entry: Entry,
}

/// The event subscription (new, update and destroy groups).
#[derive(Debug)]
pub struct Events {
    sock: Arc<Socket>,
    /// [`MMSG_SLOTS`] receive slots of [`MMSG_SLOT`] bytes, one kernel event message each.
    buf: Vec<u8>,
    /// `recvmmsg` calls and messages they returned (intake statistics).
    calls: u64,
    messages: u64,
}

const GROUPS: [u32; 3] = [
    NFNLGRP_CONNTRACK_NEW,
    NFNLGRP_CONNTRACK_UPDATE,
    NFNLGRP_CONNTRACK_DESTROY,
];

/// Leaves and rejoins the event groups of an [`Events`] socket from another thread. While
/// no socket of the namespace listens, the kernel does not build events at all: a commit
/// of the external cache runs more than twice as fast (measured: 100k entries 0.91 s vs
/// 2.13 s), and the dump after it covers what was not reported.
#[derive(Debug, Clone)]
pub struct EventPause {
    sock: Arc<Socket>,
}

impl EventPause {
    /// Stops event delivery.
    pub fn pause(&self) {
        for g in GROUPS {
            let _ = self.sock.drop_membership(g);
        }
    }

    /// Resumes event delivery.
    pub fn resume(&self) -> Result<(), KernelError> {
        for g in GROUPS {
            self.sock.add_membership(g).map_err(io_err("events join"))?;
        }
        Ok(())
    }
}

impl Events {
    /// Subscribes in the current thread's network namespace. `rcvbuf` is forced with
    /// `SO_RCVBUFFORCE` (root), falling back to `SO_RCVBUF`.
    pub fn subscribe(rcvbuf: usize) -> Result<Events, KernelError> {
        let mut sock = Socket::new(NETLINK_NETFILTER).map_err(io_err("events"))?;
        sock.bind_auto().map_err(io_err("events"))?;
        for g in GROUPS {
            sock.add_membership(g).map_err(io_err("events join"))?;
        }
        if nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::RcvBufForce, &rcvbuf)
            .is_err()
        {
            sock.set_rx_buf_sz(rcvbuf)
                .map_err(io_err("events rcvbuf"))?;
        }
        let timeout = nix::sys::time::TimeVal::new(0, 200_000);
        nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::ReceiveTimeout, &timeout)
            .map_err(|e| io_err("events timeout")(e.into()))?;
        Ok(Events {
            sock: Arc::new(sock),
            buf: vec![0; MMSG_SLOTS * MMSG_SLOT],
            calls: 0,
            messages: 0,
        })
    }

    /// A handle to pause and resume delivery.
    pub fn pauser(&self) -> EventPause {
        EventPause {
            sock: self.sock.clone(),
        }
    }

    /// The receive buffer size the kernel granted (it doubles the requested value).
    pub fn rcvbuf(&self) -> usize {
        self.sock.get_rx_buf_sz().unwrap_or(0)
    }

    /// Waits (up to 200 ms) for the next events and appends the replicated ones to `out`:
    /// after the first message, whatever else is queued (up to [`EVENT_BATCH`] messages) is
    /// read without blocking, so a burst reaches the service in batches rather than
    /// one channel hand-off (and one wake-up of the main thread) per event. The socket is
    /// read with `recvmmsg`, up to [`MMSG_SLOTS`] event messages per system call (every
    /// kernel event is its own datagram: a plain `recv` returns one, whatever the
    /// buffer's size).
    /// `Err(Overrun)` means events were lost: resync from a dump.
    pub fn recv(&mut self, out: &mut Vec<Event>) -> Result<(), KernelError> {
        // The first call blocks (up to SO_RCVTIMEO) for one message, then takes what is
        // queued; the later ones never block.
        let mut flags = libc::MSG_WAITFORONE;
        let mut read = 0;
        while read < EVENT_BATCH {
            let mut lens = [0usize; MMSG_SLOTS];
            let n = match self.recv_many(flags, &mut lens) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    return Err(KernelError::Overrun);
                }
                Err(e) => {
                    return Err(KernelError::Io {
                        op: "events",
                        source: e,
                    });
                }
            };
            self.calls += 1;
            self.messages += n as u64;
            read += n;
            for (k, &len) in lens.iter().enumerate().take(n) {
                // A message larger than its slot was cut: that event is lost.
                if len > MMSG_SLOT {
                    return Err(KernelError::Overrun);
                }
                let slot = &self.buf[k * MMSG_SLOT..k * MMSG_SLOT + len];
                for m in ctnetlink::parse_messages(slot) {
                    match m {
                        Ok(Message::Conntrack {
                            kind,
                            entry: Some(entry),
                            ..
                        }) => out.push(Event { kind, entry }),
                        Ok(Message::Overrun) => return Err(KernelError::Overrun),
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "undecodable conntrack event skipped")
                        }
                    }
                }
            }
            if n < MMSG_SLOTS {
                return Ok(());
            }
            flags = libc::MSG_DONTWAIT;
        }
        Ok(())
    }

    /// `recvmmsg` calls so far and the event messages they returned.
    pub fn intake_stats(&self) -> (u64, u64) {
        (self.calls, self.messages)
    }

    /// One `recvmmsg` into the slots; `lens[k]` is the full length of message `k` (larger
    /// than [`MMSG_SLOT`] when it was truncated). Written against libc: nix's
    /// `MultiHeaders` holds raw pointers (so `Events` could not move to its reader
    /// thread) and allocates address storage we do not need (netlink events come from
    /// the kernel).
    fn recv_many(
        &mut self,
        flags: libc::c_int,
        lens: &mut [usize; MMSG_SLOTS],
    ) -> io::Result<usize> {
        use std::os::fd::AsRawFd;
        let base = self.buf.as_mut_ptr();
        // SAFETY: an all-zero iovec / mmsghdr is a valid value (null pointers, zero lengths).
        let mut iov: [libc::iovec; MMSG_SLOTS] = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut hdrs: [libc::mmsghdr; MMSG_SLOTS] = unsafe { std::mem::zeroed() };
        for (k, v) in iov.iter_mut().enumerate() {
            *v = libc::iovec {
                // SAFETY: slot k lies inside `buf` (MMSG_SLOTS * MMSG_SLOT bytes).
                iov_base: unsafe { base.add(k * MMSG_SLOT) }.cast(),
                iov_len: MMSG_SLOT,
            };
        }
        for (h, v) in hdrs.iter_mut().zip(iov.iter_mut()) {
            h.msg_hdr.msg_iov = v;
            h.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: `hdrs` holds MMSG_SLOTS headers, each pointing at one iovec of `iov`,
        // which points into `buf`; all three outlive the call, and nothing else touches
        // `buf` meanwhile (`&mut self`). No addresses or control data are asked for.
        let r = unsafe {
            libc::recvmmsg(
                self.sock.as_raw_fd(),
                hdrs.as_mut_ptr(),
                MMSG_SLOTS as libc::c_uint,
                flags,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = r as usize;
        for (len, h) in lens.iter_mut().zip(hdrs.iter()).take(n) {
            *len = if h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                MMSG_SLOT + 1
            } else {
                h.msg_len as usize
            };
        }
        Ok(n)
    }
}

/// Event messages per `recvmmsg` at most.
pub const MMSG_SLOTS: usize = 128;
/// Bytes per receive slot: a conntrack event message is 150-400 bytes; one that does
/// not fit (it would need every optional attribute at once) is reported as an overrun,
/// so the service resyncs from a dump instead of missing it silently.
pub const MMSG_SLOT: usize = 2048;

/// Event messages read per [`Events::recv`] at most (each kernel event is its own
/// message, ~200 bytes).
pub const EVENT_BATCH: usize = 1024;

/// Polls `f` until it returns true or `limit` passes; for tests and benches.
pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}
