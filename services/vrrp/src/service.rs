//! The IO shell: one tokio task that owns the groups and drives them with packets,
//! timers, link events and control-socket requests, and carries out their actions.
//!
//! Ordering on becoming master (see `docs/vrrp.md`): the first advert goes out at once
//! (so the old master and the peer stop claiming the VIPs), then `becoming_master {seq}`
//! is published; if a commit participant is registered and subscribed, the VIPs, the
//! routes and the GARP/NA wait for its `commit-ack {group, seq}` or for the commit wait
//! (default 2 s), whichever comes first; otherwise they follow immediately.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;
use twinwall_config::{Family, NodeView};
use twinwall_control::{ControlError, Request, Response, Server};

use crate::fsm::{Action, Event, Params, Router, State, Time, Timer};
use crate::group::{self, Group, GroupAction, GroupEvent, Notice, Target};
use crate::net::{Announcer, RecvResult, VrrpSocket};
use crate::netlink::{Link, Netlink, NetlinkError};
use crate::packet::{self, Advert};
use crate::plan::{self, Plan, PlanError};
use crate::status::{GroupStatus, RouterStatus, SocketStatus, Status};

/// How the service runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where the control socket `vrrp.sock` lives.
    pub run_dir: PathBuf,
    /// How long a group becoming master waits for a commit participant's ack. 2 s by
    /// default: a participant that acks ends the wait at once, so the bound only costs
    /// when the participant hangs, and it must cover the sync service's commit of a large
    /// table (100k entries: 0.35 s of CPU, 1-2 s wall on a loaded 2-core machine).
    pub commit_wait: Duration,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            run_dir: PathBuf::from(twinwall_control::DEFAULT_RUN_DIR),
            commit_wait: Duration::from_millis(2000),
        }
    }
}

/// Why the service could not start (or had to stop).
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The configuration cannot be run.
    #[error("invalid VRRP configuration: {0}")]
    Plan(#[from] PlanError),
    /// rtnetlink failed.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// A socket could not be opened.
    #[error("cannot open {what} socket on {device}: {source}")]
    Socket {
        /// Which socket.
        what: &'static str,
        /// Device.
        device: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The device has no IPv6 link-local address to send IPv6 adverts from.
    #[error("device {device} has no IPv6 link-local address (needed for IPv6 VRID {vrid})")]
    NoLinkLocal {
        /// Device.
        device: String,
        /// VRID.
        vrid: u8,
    },
    /// The control socket could not be created.
    #[error(transparent)]
    Control(#[from] ControlError),
}

/// The name of the control socket in the run dir.
pub const SERVICE: &str = "vrrp";

struct RouterIo {
    socket: usize,
    ifindex: u32,
    device: String,
    family: Family,
    vips: Vec<ipnet::IpNet>,
    announcer: Arc<Announcer>,
}

enum Input {
    Packet(usize, RecvResult),
    Link(Link),
    Ack { group: String, seq: u64 },
}

#[derive(Serialize)]
struct Published<'a> {
    service: &'static str,
    group: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    vrid: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    family: Option<Family>,
    at_unix_ms: u64,
    #[serde(flatten)]
    notice: &'a Notice,
}

struct Shell {
    plan: Plan,
    nl: Netlink,
    epoch: Instant,
    groups: Vec<Group>,
    io: Vec<Vec<RouterIo>>,
    sockets: Vec<Arc<VrrpSocket>>,
    /// socket -> (group, router) pairs on it.
    on_socket: Vec<Vec<(usize, usize)>>,
    timers: BTreeMap<(usize, Target, Timer), Time>,
    status: Status,
    shared: Arc<Mutex<Status>>,
    server: Option<Server>,
    participants: Arc<AtomicUsize>,
    queue: VecDeque<(usize, GroupEvent)>,
    /// ifindex -> (group, tracked zone index)
    tracked: HashMap<u32, Vec<(usize, usize)>>,
    link_up: HashMap<u32, bool>,
    mismatch_logged: Vec<Vec<bool>>,
    /// (group, router) -> the repeats of its running announcement (at most one each).
    /// The shell's own timers send them, so leaving Master stops them before the next
    /// action of that step: a node that is no longer master never announces a VIP.
    garp: BTreeMap<(usize, usize), Repeat>,
}

/// The rest of one router's announcement (`garp_count` GARP/NA in all).
#[derive(Debug, Clone, Copy)]
struct Repeat {
    /// When the next one goes out.
    next: Time,
    /// How many are still to go out.
    left: u32,
}

/// Runs the service until `shutdown` completes, then steps down cleanly.
pub async fn run(
    view: &NodeView,
    opts: Options,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ServiceError> {
    let plan = plan::plan(view)?;
    let nl = Netlink::open()?;
    let (tx, mut rx) = mpsc::unbounded_channel::<Input>();

    // Resolve devices first: a missing device is a clear start-up error.
    let mut links: HashMap<String, Link> = HashMap::new();
    for g in &plan.groups {
        for d in g.routers.iter().map(|r| &r.device).chain(&g.track_devices) {
            if !links.contains_key(d) {
                links.insert(d.clone(), nl.link(d).await?);
            }
        }
    }

    // Start-up cleanup: VIPs (and VIP routes) of this config left by a crashed run go
    // before anything else, so that we start as a clean backup.
    for (device, vip) in plan.all_vips() {
        let l = &links[&device];
        let had = nl
            .addresses(l.index)
            .await?
            .iter()
            .any(|(n, _)| n.addr() == vip.addr());
        if had {
            tracing::warn!(%device, %vip, "removing VIP left over by an earlier run");
            nl.del_vip(l.index, &device, vip).await?;
        }
    }
    for g in &plan.groups {
        for rt in &g.routes {
            nl.del_route(
                rt.destination,
                rt.gateway,
                links[&rt.device].index,
                &rt.device,
            )
            .await?;
        }
    }

    // Sockets: one per (device, family); announcers: one per device.
    let mut sockets: Vec<Arc<VrrpSocket>> = Vec::new();
    let mut sock_key: HashMap<(String, Family), usize> = HashMap::new();
    let mut on_socket: Vec<Vec<(usize, usize)>> = Vec::new();
    let mut announcers: HashMap<String, Arc<Announcer>> = HashMap::new();
    let mut io = Vec::new();
    let mut groups = Vec::new();
    for (gi, g) in plan.groups.iter().enumerate() {
        let mut gio = Vec::new();
        let mut routers = Vec::new();
        let mut router_track = Vec::new();
        for (ri, r) in g.routers.iter().enumerate() {
            let l = &links[&r.device];
            let src = match r.primary_v4 {
                Some(a) => a,
                None => IpAddr::V6(wait_link_local(&nl, l.index, &r.device, r.vrid).await?),
            };
            let key = (r.device.clone(), r.family);
            let si = match sock_key.get(&key) {
                Some(&i) => i,
                None => {
                    let s =
                        VrrpSocket::open(&r.device, l.index, r.family, src).map_err(|source| {
                            ServiceError::Socket {
                                what: "VRRP",
                                device: r.device.clone(),
                                source,
                            }
                        })?;
                    sockets.push(Arc::new(s));
                    on_socket.push(Vec::new());
                    sock_key.insert(key, sockets.len() - 1);
                    sockets.len() - 1
                }
            };
            on_socket[si].push((gi, ri));
            let announcer = match announcers.get(&r.device) {
                Some(a) => a.clone(),
                None => {
                    let fams: Vec<Family> = plan
                        .groups
                        .iter()
                        .flat_map(|g| g.routers.iter())
                        .filter(|x| x.device == r.device)
                        .map(|x| x.family)
                        .collect();
                    let a = Announcer::open(
                        &r.device,
                        l.index,
                        &l.mac,
                        fams.contains(&Family::Ipv4),
                        fams.contains(&Family::Ipv6),
                    )
                    .map_err(|source| ServiceError::Socket {
                        what: "ARP/NA",
                        device: r.device.clone(),
                        source,
                    })?;
                    let a = Arc::new(a);
                    announcers.insert(r.device.clone(), a.clone());
                    a
                }
            };
            routers.push(Router::new(Params {
                vrid: r.vrid,
                priority: plan.priority,
                advert_interval_cs: plan.advert_interval_cs,
                preempt: plan.preempt,
                preempt_delay: plan.preempt_delay,
                accept_mode: plan.accept_mode,
                primary: src,
            }));
            router_track.push(g.track.iter().position(|z| *z == r.zone));
            gio.push(RouterIo {
                socket: si,
                ifindex: l.index,
                device: r.device.clone(),
                family: r.family,
                vips: r.addresses.clone(),
                announcer,
            });
        }
        groups.push(Group::new(
            routers,
            router_track,
            g.track.len(),
            opts.commit_wait,
        ));
        io.push(gio);
    }
    for (si, s) in sockets.iter().enumerate() {
        let s = s.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            loop {
                match s.recv().await {
                    Ok(r) => {
                        if tx.send(Input::Packet(si, r)).is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "VRRP receive failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        });
    }

    // Tracked links: subscribe first, then read the current state, so no change is lost.
    let (ltx, mut lrx) = mpsc::unbounded_channel::<Link>();
    crate::netlink::watch_links(ltx)?;
    {
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(l) = lrx.recv().await {
                if tx.send(Input::Link(l)).is_err() {
                    break;
                }
            }
        });
    }
    let mut tracked: HashMap<u32, Vec<(usize, usize)>> = HashMap::new();
    for (gi, g) in plan.groups.iter().enumerate() {
        for (zi, d) in g.track_devices.iter().enumerate() {
            tracked.entry(links[d].index).or_default().push((gi, zi));
        }
    }

    let status = Status {
        node: plan.node.clone(),
        priority: plan.priority,
        groups: Vec::new(),
        sockets: sock_key_sorted(&sock_key),
        commit_participants: 0,
    };
    let shared = Arc::new(Mutex::new(status.clone()));
    let participants = Arc::new(AtomicUsize::new(0));
    let server = {
        let shared = shared.clone();
        let participants = participants.clone();
        let tx = tx.clone();
        let handler = move |req: &Request| handle(req, &shared, &participants, &tx);
        Server::bind(&opts.run_dir, SERVICE, Arc::new(handler))?
    };
    let mismatch_logged = plan
        .groups
        .iter()
        .map(|g| vec![false; g.routers.len()])
        .collect();
    let mut shell = Shell {
        plan,
        nl,
        epoch: Instant::now(),
        groups,
        io,
        sockets,
        on_socket,
        timers: BTreeMap::new(),
        status,
        shared,
        server: Some(server),
        participants,
        queue: VecDeque::new(),
        tracked,
        link_up: HashMap::new(),
        mismatch_logged,
        garp: BTreeMap::new(),
    };
    shell.snapshot();
    for l in links.values() {
        shell.link_event(l.clone());
    }
    for gi in 0..shell.groups.len() {
        shell.queue.push_back((gi, GroupEvent::Startup));
    }
    shell.drain().await;
    tracing::info!(node = %shell.plan.node, priority = shell.plan.priority,
        groups = shell.groups.len(), "vrrp service started");

    tokio::pin!(shutdown);
    loop {
        let next = shell
            .timers
            .iter()
            .min_by_key(|(_, t)| **t)
            .map(|(k, t)| (*k, *t));
        let next_garp = shell
            .garp
            .iter()
            .min_by_key(|(_, r)| r.next)
            .map(|(k, r)| (*k, r.next));
        let wake = [next.map(|(_, t)| t), next_garp.map(|(_, t)| t)]
            .into_iter()
            .flatten()
            .min();
        let sleep_until = wake
            .map(|t| shell.epoch + t)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            () = tokio::time::sleep_until(sleep_until), if wake.is_some() => {
                if let Some((key, at)) = next_garp.filter(|(_, at)| Some(*at) == wake) {
                    shell.repeat_garp(key, at);
                } else if let Some(((gi, target, timer), at)) = next {
                    if timer == Timer::MasterDown {
                        // A Master_Down_Timer that expired while this process did not run
                        // (a starved vCPU, a loaded host) yields to the adverts that
                        // arrived meanwhile: they came before we looked at the timer, and
                        // one of them re-arms it. Without this the resumed backup took
                        // over from a master that never stopped (tests/netns_vrrp_starve.rs).
                        shell.read_pending(&mut rx);
                        shell.drain().await;
                        if shell.timers.get(&(gi, target, timer)) != Some(&at) {
                            continue;
                        }
                    }
                    shell.timers.remove(&(gi, target, timer));
                    let ev = match (target, timer) {
                        (Target::Group, _) => GroupEvent::CommitTimeout,
                        (Target::Router(index), Timer::MasterDown) => GroupEvent::Router { index, event: Event::MasterDownTimer },
                        (Target::Router(index), Timer::Adver) => GroupEvent::Router { index, event: Event::AdverTimer },
                        (Target::Router(index), Timer::PreemptDelay) => GroupEvent::Router { index, event: Event::PreemptDelayExpired },
                    };
                    shell.queue.push_back((gi, ev));
                }
            }
            Some(input) = rx.recv() => shell.input(input),
        }
        shell.drain().await;
    }
    tracing::info!("shutting down: priority-0 adverts, removing VIPs");
    for gi in 0..shell.groups.len() {
        shell.queue.push_back((gi, GroupEvent::Shutdown));
    }
    shell.drain().await;
    shell.server.take();
    Ok(())
}

fn sock_key_sorted(keys: &HashMap<(String, Family), usize>) -> Vec<SocketStatus> {
    let mut v: Vec<_> = keys.iter().collect();
    v.sort_by_key(|(_, i)| **i);
    v.into_iter()
        .map(|((d, f), _)| SocketStatus {
            device: d.clone(),
            family: *f,
            bad_packets: BTreeMap::new(),
        })
        .collect()
}

async fn wait_link_local(
    nl: &Netlink,
    index: u32,
    device: &str,
    vrid: u8,
) -> Result<std::net::Ipv6Addr, ServiceError> {
    // A freshly created device gets its link-local address a moment after it comes up.
    for _ in 0..50 {
        if let Some(a) = nl.link_local(index).await? {
            return Ok(a);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(ServiceError::NoLinkLocal {
        device: device.into(),
        vrid,
    })
}

fn handle(
    req: &Request,
    shared: &Mutex<Status>,
    participants: &AtomicUsize,
    tx: &mpsc::UnboundedSender<Input>,
) -> Response {
    match req.cmd.as_str() {
        "status" => {
            let mut s = shared.lock().unwrap_or_else(|e| e.into_inner()).clone();
            s.commit_participants = participants.load(Ordering::SeqCst);
            match serde_json::to_value(s) {
                Ok(v) => Response::ok(v),
                Err(e) => Response::err(e.to_string()),
            }
        }
        // A subscriber that must commit state before the VIPs are announced registers.
        "commit-join" => {
            participants.fetch_add(1, Ordering::SeqCst);
            Response::ok(Value::Null)
        }
        "commit-leave" => {
            let _ =
                participants.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
            Response::ok(Value::Null)
        }
        "commit-ack" => {
            let group = req.args.get("group").and_then(Value::as_str);
            let seq = req.args.get("seq").and_then(Value::as_u64);
            match (group, seq) {
                (Some(g), Some(seq)) => {
                    let _ = tx.send(Input::Ack {
                        group: g.to_string(),
                        seq,
                    });
                    Response::ok(Value::Null)
                }
                _ => Response::err("commit-ack needs args {\"group\": NAME, \"seq\": N}"),
            }
        }
        other => Response::err(format!(
            "unknown command {other:?} (known: status, subscribe, commit-join, commit-leave, commit-ack)"
        )),
    }
}

impl Shell {
    fn now(&self) -> Time {
        self.epoch.elapsed()
    }

    fn input(&mut self, input: Input) {
        match input {
            Input::Packet(si, r) => self.packet(si, r),
            Input::Link(l) => self.link_event(l),
            Input::Ack { group, seq } => {
                if let Some(gi) = self.plan.groups.iter().position(|g| g.name == group) {
                    self.queue.push_back((gi, GroupEvent::CommitAck { seq }));
                }
            }
        }
    }

    /// Takes in everything that is already waiting, oldest first: the inputs the reader
    /// tasks queued, then the packets still in the sockets (those tasks may not have run
    /// since they arrived).
    fn read_pending(&mut self, rx: &mut mpsc::UnboundedReceiver<Input>) {
        while let Ok(input) = rx.try_recv() {
            self.input(input);
        }
        for si in 0..self.sockets.len() {
            // Bounded: a socket cannot hold more than a burst, but a flood must not
            // keep the timer from ever firing.
            for _ in 0..64 {
                let Some(r) = self.sockets[si].try_recv() else {
                    break;
                };
                self.packet(si, r);
            }
        }
    }

    fn packet(&mut self, si: usize, r: RecvResult) {
        let bad = |s: &mut Status, reason: &str| {
            *s.sockets[si]
                .bad_packets
                .entry(reason.to_string())
                .or_default() += 1;
        };
        let rcv = match r {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(socket = si, reason = e.reason(), error = %e, "dropped VRRP packet");
                bad(&mut self.status, e.reason());
                return;
            }
        };
        if rcv.src == self.sockets[si].src {
            return;
        }
        let Some(&(gi, ri)) = self.on_socket[si]
            .iter()
            .find(|(g, r)| self.groups[*g].routers[*r].params.vrid == rcv.advert.vrid)
        else {
            bad(&mut self.status, "unknown_vrid");
            return;
        };
        let want: Vec<IpAddr> = self.io[gi][ri].vips.iter().map(|n| n.addr()).collect();
        if let Err(e) = packet::check_configured(&rcv.advert, rcv.advert.vrid, &want) {
            tracing::debug!(reason = e.reason(), error = %e, "dropped VRRP packet");
            bad(&mut self.status, e.reason());
            return;
        }
        let rs = &mut self.status.groups[gi].routers[ri];
        rs.adverts_in += 1;
        if rcv.advert.max_advert_int_cs != self.plan.advert_interval_cs && rcv.advert.priority != 0
        {
            rs.interval_mismatch += 1;
            if !self.mismatch_logged[gi][ri] {
                self.mismatch_logged[gi][ri] = true;
                tracing::warn!(vrid = rcv.advert.vrid, from = %rcv.src,
                    theirs_cs = rcv.advert.max_advert_int_cs, ours_cs = self.plan.advert_interval_cs,
                    "advert interval mismatch (RFC 5798 §7.1: following the master's)");
            }
        }
        self.queue.push_back((
            gi,
            GroupEvent::Router {
                index: ri,
                event: Event::AdvertReceived {
                    from: rcv.src,
                    priority: rcv.advert.priority,
                    max_advert_int_cs: rcv.advert.max_advert_int_cs,
                },
            },
        ));
    }

    fn link_event(&mut self, l: Link) {
        let Some(users) = self.tracked.get(&l.index) else {
            return;
        };
        if self.link_up.get(&l.index) == Some(&l.up) {
            return;
        }
        self.link_up.insert(l.index, l.up);
        tracing::info!(device = %l.name, up = l.up, "tracked link changed");
        for &(gi, zone) in users {
            let ev = if l.up {
                GroupEvent::LinkUp { zone }
            } else {
                GroupEvent::LinkDown { zone }
            };
            self.queue.push_back((gi, ev));
        }
    }

    async fn drain(&mut self) {
        while let Some((gi, ev)) = self.queue.pop_front() {
            let now = self.now();
            let before = self.groups[gi].role();
            let g = std::mem::replace(
                &mut self.groups[gi],
                Group::new(Vec::new(), Vec::new(), 0, Duration::ZERO),
            );
            let (g, actions) = group::step(g, now, ev);
            self.groups[gi] = g;
            // A router that left Master stops announcing before anything else of this
            // step goes out (its priority-0 advert included).
            for ri in 0..self.groups[gi].routers.len() {
                if self.groups[gi].routers[ri].state != State::Master {
                    self.stop_garp(gi, ri, "left master");
                }
            }
            for a in actions {
                self.execute(gi, a).await;
            }
            let after = self.groups[gi].role();
            if before != after {
                tracing::info!(group = %self.plan.groups[gi].name, from = ?before, to = ?after, "group role changed");
                self.publish_value(json!({
                    "service": SERVICE, "group": self.plan.groups[gi].name, "event": "group_role",
                    "from": before, "to": after, "at_unix_ms": crate::status::unix_ms(),
                }));
            }
        }
        self.snapshot();
    }

    fn publish_value(&self, v: Value) {
        if let Some(s) = &self.server {
            s.publish(&v);
        }
    }

    async fn execute(&mut self, gi: usize, a: GroupAction) {
        let gname = self.plan.groups[gi].name.clone();
        match a {
            GroupAction::Publish(n) => {
                let (vrid, family) = match &n {
                    Notice::RoleChange { router, from, to } => {
                        self.status_router(gi, *router).record(*from, *to);
                        let r = &self.groups[gi].routers[*router];
                        tracing::info!(group = %gname, vrid = r.params.vrid, family = ?self.io[gi][*router].family,
                            from = ?from, to = ?to, "VRRP state change");
                        (Some(r.params.vrid), Some(self.io[gi][*router].family))
                    }
                    _ => (None, None),
                };
                let ev = Published {
                    service: SERVICE,
                    group: &gname,
                    vrid,
                    family,
                    at_unix_ms: crate::status::unix_ms(),
                    notice: &n,
                };
                if let Some(s) = &self.server {
                    s.publish(&ev);
                }
                if let Notice::BecomingMaster { seq } = n {
                    let wait = self.participants.load(Ordering::SeqCst) > 0
                        && self
                            .server
                            .as_ref()
                            .is_some_and(|s| s.subscriber_count() > 0);
                    if !wait {
                        self.queue.push_front((gi, GroupEvent::CommitAck { seq }));
                    }
                }
            }
            GroupAction::Do(target, Action::SetTimer { timer, at }) => {
                self.timers.insert((gi, target, timer), at);
            }
            GroupAction::Do(target, Action::CancelTimer { timer }) => {
                self.timers.remove(&(gi, target, timer));
            }
            GroupAction::Do(Target::Group, _) => {}
            GroupAction::Do(Target::Router(ri), a) => self.router_action(gi, ri, a).await,
        }
    }

    fn status_router(&mut self, gi: usize, ri: usize) -> &mut RouterStatus {
        &mut self.status.groups[gi].routers[ri]
    }

    async fn router_action(&mut self, gi: usize, ri: usize, a: Action) {
        let rio = &self.io[gi][ri];
        let r = &self.groups[gi].routers[ri];
        match a {
            Action::SendAdvert { priority } => {
                let adv = Advert {
                    vrid: r.params.vrid,
                    priority,
                    max_advert_int_cs: r.params.advert_interval_cs,
                    addresses: rio.vips.iter().map(|n| n.addr()).collect(),
                };
                match self.sockets[rio.socket].send(&adv) {
                    Ok(()) => self.status.groups[gi].routers[ri].adverts_out += 1,
                    Err(e) => {
                        tracing::debug!(device = %rio.device, src = %self.sockets[rio.socket].src, error = %e, "advert not sent")
                    }
                }
            }
            Action::AddVips => {
                for v in &rio.vips {
                    if let Err(e) = self.nl.add_vip(rio.ifindex, &rio.device, *v).await {
                        tracing::error!(error = %e, "cannot add VIP");
                    }
                }
                for rt in self.routes_of(gi, ri) {
                    if let Err(e) = self
                        .nl
                        .add_route(rt.destination, rt.gateway, rio.ifindex, &rio.device)
                        .await
                    {
                        tracing::warn!(error = %e, "cannot install VIP route");
                    }
                }
            }
            Action::RemoveVips => {
                self.stop_garp(gi, ri, "VIPs removed");
                let rio = &self.io[gi][ri];
                for rt in self.routes_of(gi, ri) {
                    if let Err(e) = self
                        .nl
                        .del_route(rt.destination, rt.gateway, rio.ifindex, &rio.device)
                        .await
                    {
                        tracing::warn!(error = %e, "cannot withdraw VIP route");
                    }
                }
                for v in &rio.vips {
                    if let Err(e) = self.nl.del_vip(rio.ifindex, &rio.device, *v).await {
                        tracing::error!(error = %e, "cannot remove VIP");
                    }
                }
            }
            Action::SendGarp => {
                let count = self.plan.garp_count.max(1);
                tracing::info!(group = %self.plan.groups[gi].name, vrid = r.params.vrid,
                    device = %rio.device, count, interval_ms = self.plan.garp_interval.as_millis() as u64,
                    "announcing the VIPs (gratuitous ARP / unsolicited NA)");
                // The first announcement goes out now: it is what moves the neighbours'
                // traffic to us. The repeats replace any series still running.
                self.announce(gi, ri);
                if count > 1 {
                    let next = self.now() + self.plan.garp_interval;
                    self.garp.insert(
                        (gi, ri),
                        Repeat {
                            next,
                            left: count - 1,
                        },
                    );
                } else {
                    self.garp.remove(&(gi, ri));
                }
            }
            Action::SetTimer { .. } | Action::CancelTimer { .. } | Action::Publish(_) => {}
        }
    }

    /// Sends one GARP/NA for every VIP of router `ri` of group `gi`.
    fn announce(&self, gi: usize, ri: usize) {
        let rio = &self.io[gi][ri];
        for v in &rio.vips {
            if let Err(e) = rio.announcer.announce(v.addr()) {
                tracing::debug!(device = %rio.device, vip = %v, error = %e, "GARP/NA not sent");
            }
        }
    }

    /// Sends the due repeat of `key`'s announcement and schedules the next.
    fn repeat_garp(&mut self, key: (usize, usize), due: Time) {
        self.announce(key.0, key.1);
        let now = self.now();
        let interval = self.plan.garp_interval;
        if let Some(r) = self.garp.get_mut(&key) {
            r.left -= 1;
            // After a stall the next one is an interval away, not a burst of catch-ups.
            r.next = (due + interval).max(now);
            if r.left == 0 {
                self.garp.remove(&key);
            }
        }
    }

    /// Stops router `ri`'s announcement, if one is still repeating.
    fn stop_garp(&mut self, gi: usize, ri: usize, why: &'static str) {
        if let Some(r) = self.garp.remove(&(gi, ri)) {
            tracing::info!(group = %self.plan.groups[gi].name, vrid = self.groups[gi].routers[ri].params.vrid,
                device = %self.io[gi][ri].device, skipped = r.left, reason = why,
                "announcement repeats stopped");
        }
    }

    fn routes_of(&self, gi: usize, ri: usize) -> Vec<twinwall_config::Route> {
        let rio = &self.io[gi][ri];
        self.plan.groups[gi]
            .routes
            .iter()
            .filter(|rt| rt.device == rio.device && Family::of(&rt.gateway) == rio.family)
            .cloned()
            .collect()
    }

    fn snapshot(&mut self) {
        if self.status.groups.is_empty() {
            self.status.groups = self
                .plan
                .groups
                .iter()
                .enumerate()
                .map(|(gi, g)| GroupStatus {
                    name: g.name.clone(),
                    state: State::Initialize,
                    links_down: Vec::new(),
                    routers: g
                        .routers
                        .iter()
                        .enumerate()
                        .map(|(ri, r)| RouterStatus {
                            vrid: r.vrid,
                            family: r.family,
                            device: r.device.clone(),
                            state: State::Initialize,
                            master: None,
                            master_adver_interval_ms: 0,
                            adverts_in: 0,
                            adverts_out: 0,
                            interval_mismatch: 0,
                            vips: self.io[gi][ri].vips.iter().map(|v| v.to_string()).collect(),
                            transitions: Vec::new(),
                        })
                        .collect(),
                })
                .collect();
        }
        for (gi, g) in self.groups.iter().enumerate() {
            let gs = &mut self.status.groups[gi];
            gs.state = g.role();
            gs.links_down = g
                .down
                .iter()
                .map(|z| self.plan.groups[gi].track[*z].clone())
                .collect();
            for (ri, r) in g.routers.iter().enumerate() {
                let rs = &mut gs.routers[ri];
                rs.state = r.state;
                rs.master = r.master;
                rs.master_adver_interval_ms = u32::from(r.master_adver_interval_cs) * 10;
            }
        }
        self.status.commit_participants = self.participants.load(Ordering::SeqCst);
        *self.shared.lock().unwrap_or_else(|e| e.into_inner()) = self.status.clone();
    }
}
