//! `twinwall lab ...`: the QEMU lab. `up` starts the lab daemon (switch + VMs, state in
//! a run directory, default `target/lab`); `down`, `status`, `cut`, `heal`, `flap`,
//! `impair`, `partition`, `kill`, `traffic` and `scenario` talk to it over
//! `RUN_DIR/lab.sock`; `console` reads a VM's serial console file. `agent` is the traffic
//! agent that runs inside lab-host VMs.

use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use twinwall_control::{Request, Response, socket_path};
use twinwall_lab::agent::{self, ClientConfig, ClientStats};
use twinwall_lab::fwstatus::FirewallState;
use twinwall_lab::lab::{Lab, LabOptions, LabStatus};
use twinwall_lab::scenario::Report;
use twinwall_lab::{daemon, topology};

use crate::cli::{Reported, Usage};

/// `twinwall lab ...`.
#[derive(Debug, Subcommand)]
pub enum LabCmd {
    /// Boot the lab (firewall pair, client, server) in the background.
    Up(UpArgs),
    /// The lab daemon itself (what `up` starts).
    #[command(hide = true)]
    Daemon(UpArgs),
    /// Stop the lab (all VMs and the switch).
    Down(RunDir),
    /// Who is master, the VIPs, ports, impairments, flows.
    Status(StatusArgs),
    /// Cut a link: NODE:IFACE (segment or device), both directions and the carrier.
    Cut(CutArgs),
    /// Heal one link, or everything (impairments, partitions, carriers).
    Heal(HealArgs),
    /// Cut and heal a link N times.
    Flap(FlapArgs),
    /// Loss and delay on one direction of a link.
    Impair(ImpairArgs),
    /// Block all traffic between two VMs (both keep their links).
    Partition(PartitionArgs),
    /// Power cut of a VM (QEMU quits).
    Kill(KillArgs),
    /// A VM's serial console.
    Console(ConsoleArgs),
    /// The client's flows: echoes, gaps, resets.
    Traffic(TrafficArgs),
    /// Run a scripted scenario and print its report.
    Scenario(ScenarioArgs),
    /// The traffic agent of lab hosts.
    #[command(subcommand)]
    Agent(AgentCmd),
}

/// The run directory of a lab.
#[derive(Debug, Args)]
pub struct RunDir {
    /// Run directory of the lab (consoles, sockets, disks, reports).
    #[arg(long, default_value = "target/lab", env = "TWINWALL_LAB_DIR")]
    pub run_dir: PathBuf,
}

/// `lab up`.
#[derive(Debug, Args)]
pub struct UpArgs {
    #[command(flatten)]
    dir: RunDir,
    /// Topology: a name under testkit/topologies, or a folder.
    #[arg(long, default_value = "seed-pair")]
    topology: String,
    /// Output directory of `make image`.
    #[arg(long, default_value = "out")]
    image: PathBuf,
    /// Guest memory per VM (MiB).
    #[arg(long, default_value_t = 512)]
    memory: u32,
    /// Only these VMs (comma-separated).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Extra kernel command line options for every VM.
    #[arg(long, default_value = "")]
    append: String,
    /// Seed of the switch's loss decisions.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Boot the firewalls straight into slot A's kernel (`-kernel`, no firmware or
    /// GRUB): faster, but a reboot runs slot A again, so an OS update is never tried.
    #[arg(long)]
    direct_kernel: bool,
    /// Stay in the foreground (the daemon's logs on stderr).
    #[arg(long)]
    foreground: bool,
}

/// `lab status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    dir: RunDir,
    /// JSON output.
    #[arg(long)]
    json: bool,
}

/// `lab cut`.
#[derive(Debug, Args)]
pub struct CutArgs {
    #[command(flatten)]
    dir: RunDir,
    /// NODE:IFACE, e.g. fw1:inside or fw1:eth1.
    port: String,
    /// Cut only one direction in the switch: rx (from the VM) or tx (to the VM); the
    /// guest keeps its carrier.
    #[arg(long, value_parser = ["rx", "tx"])]
    one_way: Option<String>,
    /// Cut in the switch only; the guest keeps its carrier.
    #[arg(long)]
    switch_only: bool,
}

/// `lab heal`.
#[derive(Debug, Args)]
pub struct HealArgs {
    #[command(flatten)]
    dir: RunDir,
    /// NODE:IFACE; without it everything is healed.
    port: Option<String>,
}

/// `lab flap`.
#[derive(Debug, Args)]
pub struct FlapArgs {
    #[command(flatten)]
    dir: RunDir,
    /// NODE:IFACE.
    port: String,
    /// How many times.
    #[arg(long, default_value_t = 1)]
    times: u64,
    /// Down time per flap (ms).
    #[arg(long, default_value_t = 500)]
    down_ms: u64,
    /// Up time per flap (ms).
    #[arg(long, default_value_t = 500)]
    up_ms: u64,
}

/// `lab impair`.
#[derive(Debug, Args)]
pub struct ImpairArgs {
    #[command(flatten)]
    dir: RunDir,
    /// NODE:IFACE.
    port: String,
    /// rx (from the VM) or tx (to the VM).
    #[arg(long, value_parser = ["rx", "tx"])]
    direction: String,
    /// Loss in percent.
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Delay in ms.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
}

/// `lab partition`.
#[derive(Debug, Args)]
pub struct PartitionArgs {
    #[command(flatten)]
    dir: RunDir,
    /// One VM.
    a: String,
    /// The other.
    b: String,
}

/// `lab kill`.
#[derive(Debug, Args)]
pub struct KillArgs {
    #[command(flatten)]
    dir: RunDir,
    /// VM name.
    vm: String,
}

/// `lab console`.
#[derive(Debug, Args)]
pub struct ConsoleArgs {
    #[command(flatten)]
    dir: RunDir,
    /// VM name.
    vm: String,
    /// Keep printing what arrives (Ctrl-C ends).
    #[arg(long, short)]
    follow: bool,
}

/// `lab traffic`.
#[derive(Debug, Args)]
pub struct TrafficArgs {
    #[command(flatten)]
    dir: RunDir,
    /// JSON output.
    #[arg(long)]
    json: bool,
    /// Start a new measurement window after printing.
    #[arg(long)]
    reset: bool,
    /// Refresh every second (Ctrl-C ends).
    #[arg(long)]
    watch: bool,
}

/// `lab scenario`.
#[derive(Debug, Args)]
pub struct ScenarioArgs {
    #[command(flatten)]
    dir: RunDir,
    /// Scenario name (`all` runs every one in order).
    name: String,
    /// JSON output.
    #[arg(long)]
    json: bool,
}

/// `lab agent ...`.
#[derive(Debug, Subcommand)]
pub enum AgentCmd {
    /// Echo server (TCP and UDP).
    Server {
        /// Listen address.
        #[arg(long, default_value = "0.0.0.0:7000")]
        listen: std::net::SocketAddr,
        /// Keep a control socket `agent.sock` here (init's readiness probe).
        #[arg(long)]
        run_dir: Option<PathBuf>,
    },
    /// Long-lived flows to the server, stats served on --stats.
    Client {
        /// The echo server.
        #[arg(long)]
        target: std::net::SocketAddr,
        /// TCP flows.
        #[arg(long, default_value_t = 8)]
        flows: usize,
        /// Time between echoes of a flow (ms).
        #[arg(long, default_value_t = 20)]
        interval_ms: u64,
        /// An established flow without an echo this long (ms) counts as stalled (broken)
        /// and reconnects.
        #[arg(long, default_value_t = 10_000)]
        stall_ms: u64,
        /// No UDP flow.
        #[arg(long)]
        no_udp: bool,
        /// Each TCP flow sends a message every interval without waiting for the echoes
        /// (checked in order); by default a flow waits for each echo, then the interval.
        #[arg(long)]
        stream: bool,
        /// Where the stats are served.
        #[arg(long, default_value = "0.0.0.0:7001")]
        stats: std::net::SocketAddr,
        /// Keep a control socket `agent.sock` here (init's readiness probe).
        #[arg(long)]
        run_dir: Option<PathBuf>,
    },
}

fn request(dir: &Path, cmd: &str, args: Value, timeout: Duration) -> anyhow::Result<Value> {
    let req = if args.is_null() {
        Request::new(cmd)
    } else {
        Request::with_args(cmd, args)
    };
    match twinwall_control::request(&socket_path(dir, daemon::SOCKET), &req, timeout) {
        Ok(v) => Ok(v),
        Err(e @ twinwall_control::ControlError::Connect { .. }) => {
            Err(anyhow::Error::new(e)
                .context(format!("lab {cmd}: is the lab up? (`twinwall lab up`)")))
        }
        Err(twinwall_control::ControlError::Remote { message, .. }) => {
            Err(anyhow::anyhow!("lab {cmd}: {message}"))
        }
        Err(e) => Err(anyhow::Error::new(e).context(format!("lab {cmd}"))),
    }
}

const SHORT: Duration = Duration::from_secs(30);

fn options(a: &UpArgs) -> anyhow::Result<LabOptions> {
    let repo = std::env::current_dir().context("current directory")?;
    let t = PathBuf::from(&a.topology);
    let topology = if t.is_dir() {
        t
    } else {
        topology::topologies_dir(&repo).join(&a.topology)
    };
    if !topology.is_dir() {
        return Err(Usage(format!(
            "no topology {} ({} does not exist)",
            a.topology,
            topology.display()
        ))
        .into());
    }
    let abs = |p: &Path| {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            repo.join(p)
        }
    };
    Ok(LabOptions {
        repo: repo.clone(),
        topology,
        image_dir: abs(&a.image),
        run_dir: abs(&a.dir.run_dir),
        exe: std::env::current_exe().context("locating the twinwall binary")?,
        memory_mb: a.memory,
        seed: a.seed,
        append: a.append.clone(),
        only: a.only.clone(),
        direct_firewalls: a.direct_kernel,
    })
}

fn stop_on_signal() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async {
            let Ok(mut term) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            else {
                return;
            };
            tokio::select! {
                _ = term.recv() => {},
                _ = tokio::signal::ctrl_c() => {},
            }
        });
        s.store(true, Ordering::Relaxed);
    });
    stop
}

fn daemon_main(a: &UpArgs) -> anyhow::Result<()> {
    let opts = options(a)?;
    let stop = stop_on_signal();
    let lab = Lab::up(&opts)?;
    std::fs::write(
        opts.run_dir.join("daemon.pid"),
        std::process::id().to_string(),
    )
    .context("writing daemon.pid")?;
    daemon::serve(lab, &opts.run_dir, stop)?;
    let _ = std::fs::remove_file(opts.run_dir.join("daemon.pid"));
    Ok(())
}

fn up(a: &UpArgs) -> anyhow::Result<()> {
    if a.foreground {
        return daemon_main(a);
    }
    let opts = options(a)?;
    if request(&opts.run_dir, "status", Value::Null, Duration::from_secs(2)).is_ok() {
        anyhow::bail!("a lab is already up in {}", opts.run_dir.display());
    }
    std::fs::create_dir_all(&opts.run_dir).context("creating the run directory")?;
    let log = opts.run_dir.join("daemon.log");
    let out = std::fs::File::create(&log).context("creating daemon.log")?;
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(i) = args.iter().position(|x| x == "up") {
        args[i] = "daemon".into();
    }
    use std::os::unix::process::CommandExt;
    let mut child = std::process::Command::new(&opts.exe)
        .args(&args)
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone().context("daemon.log")?)
        .stderr(out)
        // Its own process group: the lab outlives this command and a Ctrl-C here.
        .process_group(0)
        .spawn()
        .context("starting the lab daemon")?;
    eprintln!(
        "lab: preparing disks and booting VMs (log {})",
        log.display()
    );
    let start = Instant::now();
    loop {
        if let Ok(st) = request(&opts.run_dir, "status", Value::Null, Duration::from_secs(2)) {
            let st: LabStatus = serde_json::from_value(st).context("lab status")?;
            println!(
                "lab {} up in {}: {}",
                st.topology,
                opts.run_dir.display(),
                st.vms
                    .iter()
                    .map(|v| v.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            println!("consoles: twinwall lab console NAME; state: twinwall lab status");
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(5).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            anyhow::bail!("lab daemon exited ({status}):\n{}", tail.join("\n"));
        }
        if start.elapsed() > Duration::from_secs(900) {
            anyhow::bail!("the lab daemon did not come up within 15 min");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn down(d: &RunDir) -> anyhow::Result<()> {
    request(&d.run_dir, "down", Value::Null, SHORT)?;
    let start = Instant::now();
    while d.run_dir.join("daemon.pid").exists() && start.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("lab down");
    Ok(())
}

fn ms(v: u64) -> String {
    format!("{:.1} s", v as f64 / 1000.0)
}

fn print_status(st: &LabStatus, traffic: Option<&ClientStats>, firewalls: Option<&Value>) {
    println!("lab {} (switch time {})", st.topology, ms(st.now_ms));
    for v in &st.vms {
        let role = match &v.role {
            topology::VmRole::Firewall { node } => format!("firewall {node}"),
            topology::VmRole::LabHost { agent, .. } => match agent {
                Some(topology::AgentKind::Client) => "lab host, client".into(),
                Some(topology::AgentKind::Server) => "lab host, server".into(),
                None => "lab host".into(),
            },
        };
        println!(
            "  {:<8} {:<22} {}",
            v.name,
            role,
            if v.running { "running" } else { "STOPPED" }
        );
    }
    println!(
        "master: {}{}",
        if st.vip_holders.is_empty() {
            "none".to_string()
        } else {
            st.vip_holders.join(" + ")
        },
        if st.split_brain { "  SPLIT BRAIN" } else { "" }
    );
    for v in &st.vips {
        println!(
            "  VIP {:<16} vrid {:<3} {:<8} advertised by {:<24} last ARP from {}",
            v.address.to_string(),
            v.vrid,
            v.segment,
            if v.masters.is_empty() {
                "-".into()
            } else {
                v.masters.join(", ")
            },
            v.holder.as_deref().unwrap_or("-")
        );
    }
    for (a, b) in &st.partitions {
        println!("partition: {a} | {b}");
    }
    if !st.mgmt.is_empty() {
        println!("firewalls (their own state, GET /status of the management API):");
    }
    for (fw, addr) in &st.mgmt {
        let line = match firewalls.and_then(|f| f.get(fw)) {
            Some(v) if v.get("error").is_some() => {
                format!("no answer: {}", v["error"].as_str().unwrap_or_default())
            }
            Some(v) => serde_json::from_value::<FirewallState>(v.clone())
                .map(|s| s.summary())
                .unwrap_or_else(|e| format!("unreadable: {e}")),
            None => "not asked".into(),
        };
        println!("  {fw:<8} {line}");
        println!("           API {addr} (twinwall status --to {addr})");
    }
    println!("ports:");
    for p in &st.ports {
        let mut faults = Vec::new();
        for (d, imp) in [("rx", &p.rx), ("tx", &p.tx)] {
            if imp.cut {
                faults.push(format!("{d} cut"));
            }
            if imp.loss_pct > 0.0 {
                faults.push(format!("{d} loss {}%", imp.loss_pct));
            }
            if imp.delay_ms > 0 {
                faults.push(format!("{d} delay {} ms", imp.delay_ms));
            }
        }
        if !p.carrier {
            faults.push("carrier down".into());
        }
        println!(
            "  {:<16} {:<5} rx {:>8} (-{:<5}) tx {:>8} (-{:<5}) {}",
            p.name,
            p.device,
            p.counters.rx,
            p.counters.rx_dropped,
            p.counters.tx,
            p.counters.tx_dropped,
            faults.join(", ")
        );
    }
    if let Some(t) = traffic {
        print_traffic(t);
    }
}

fn print_traffic(t: &ClientStats) {
    let (b, n) = t.tcp_broken();
    println!(
        "traffic to {}: {} flows, window {}, longest gap {} ms, TCP broken {}/{}",
        t.target,
        t.flows.len(),
        ms(t.window_ms),
        t.longest_gap_ms(),
        b,
        n
    );
    for f in &t.flows {
        println!(
            "  flow {:<2} {:?} {:<9} echoes {:>7} longest gap {:>6} ms now {:>6} ms resets {} stalls {}{}",
            f.id,
            f.proto,
            if f.connected || f.proto == agent::Proto::Udp {
                "up"
            } else {
                "down"
            },
            f.echoes,
            f.longest_gap_ms,
            f.current_gap_ms,
            f.resets,
            f.stalls,
            f.last_error
                .as_deref()
                .map(|e| format!(" (last: {e})"))
                .unwrap_or_default()
        );
    }
}

fn print_report(r: &Report) {
    println!("{}", r.summary);
    for c in &r.checks {
        println!("  [{}] {}: {}", c.mark(), c.what, c.detail);
    }
}

fn console(a: &ConsoleArgs) -> anyhow::Result<()> {
    let path = a.dir.run_dir.join(&a.vm).join("console.log");
    let mut f = std::fs::File::open(&path)
        .map_err(|e| anyhow::anyhow!("no console for {} ({}: {e})", a.vm, path.display()))?;
    let mut out = std::io::stdout();
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    out.write_all(&buf)?;
    if a.follow {
        let stop = stop_on_signal();
        let mut pos = f.stream_position()?;
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(200));
            let mut g = std::fs::File::open(&path)?;
            g.seek(std::io::SeekFrom::Start(pos))?;
            let mut more = Vec::new();
            g.read_to_end(&mut more)?;
            pos += more.len() as u64;
            out.write_all(&more)?;
            out.flush()?;
        }
    }
    Ok(())
}

fn agent_socket(
    run_dir: Option<PathBuf>,
    role: &'static str,
) -> anyhow::Result<Option<twinwall_control::Server>> {
    let Some(dir) = run_dir else { return Ok(None) };
    let h = Arc::new(move |_: &Request| Response::ok(json!({ "ready": true, "role": role })));
    Ok(Some(twinwall_control::Server::bind(&dir, "agent", h)?))
}

/// Runs `twinwall lab ...`.
pub fn run(cmd: LabCmd) -> anyhow::Result<()> {
    match cmd {
        LabCmd::Up(a) => up(&a),
        LabCmd::Daemon(a) => daemon_main(&a),
        LabCmd::Down(d) => down(&d),
        LabCmd::Status(a) => {
            let v = request(&a.dir.run_dir, "status", Value::Null, SHORT)?;
            let traffic = request(&a.dir.run_dir, "traffic", Value::Null, SHORT).ok();
            let firewalls = request(&a.dir.run_dir, "firewalls", Value::Null, SHORT).ok();
            if a.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &json!({ "lab": v, "traffic": traffic, "firewalls": firewalls })
                    )?
                );
                return Ok(());
            }
            let st: LabStatus = serde_json::from_value(v)?;
            let t: Option<ClientStats> = traffic.and_then(|t| serde_json::from_value(t).ok());
            print_status(&st, t.as_ref(), firewalls.as_ref());
            Ok(())
        }
        LabCmd::Cut(a) => {
            let v = match &a.one_way {
                Some(d) => request(
                    &a.dir.run_dir,
                    "cut-one-way",
                    json!({ "port": a.port, "dir": d }),
                    SHORT,
                )?,
                None => request(
                    &a.dir.run_dir,
                    "cut",
                    json!({ "port": a.port, "carrier": !a.switch_only }),
                    SHORT,
                )?,
            };
            println!("cut {} at {}", a.port, ms(v["at_ms"].as_u64().unwrap_or(0)));
            Ok(())
        }
        LabCmd::Heal(a) => {
            let v = request(&a.dir.run_dir, "heal", json!({ "port": a.port }), SHORT)?;
            println!(
                "healed {} at {}",
                a.port.as_deref().unwrap_or("everything"),
                ms(v["at_ms"].as_u64().unwrap_or(0))
            );
            Ok(())
        }
        LabCmd::Flap(a) => {
            let total = Duration::from_millis((a.down_ms + a.up_ms) * a.times) + SHORT;
            request(
                &a.dir.run_dir,
                "flap",
                json!({ "port": a.port, "times": a.times, "down_ms": a.down_ms, "up_ms": a.up_ms }),
                total,
            )?;
            println!("flapped {} {} times", a.port, a.times);
            Ok(())
        }
        LabCmd::Impair(a) => {
            request(
                &a.dir.run_dir,
                "impair",
                json!({ "port": a.port, "dir": a.direction, "loss_pct": a.loss, "delay_ms": a.delay_ms }),
                SHORT,
            )?;
            println!(
                "{} {}: loss {}%, delay {} ms",
                a.port, a.direction, a.loss, a.delay_ms
            );
            Ok(())
        }
        LabCmd::Partition(a) => {
            request(
                &a.dir.run_dir,
                "partition",
                json!({ "a": a.a, "b": a.b }),
                SHORT,
            )?;
            println!("partitioned {} | {}", a.a, a.b);
            Ok(())
        }
        LabCmd::Kill(a) => {
            request(&a.dir.run_dir, "kill", json!({ "vm": a.vm }), SHORT)?;
            println!("killed {}", a.vm);
            Ok(())
        }
        LabCmd::Console(a) => console(&a),
        LabCmd::Traffic(a) => loop {
            let v = request(
                &a.dir.run_dir,
                "traffic",
                json!({ "reset": a.reset }),
                SHORT,
            )?;
            if a.json {
                println!("{}", serde_json::to_string(&v)?);
            } else {
                print_traffic(&serde_json::from_value(v)?);
            }
            if !a.watch {
                return Ok(());
            }
            std::thread::sleep(Duration::from_secs(1));
        },
        LabCmd::Scenario(a) => {
            let names: Vec<&str> = if a.name == "all" {
                twinwall_lab::scenario::ALL.to_vec()
            } else {
                vec![a.name.as_str()]
            };
            let mut failed = false;
            for n in names {
                let v = request(
                    &a.dir.run_dir,
                    "scenario",
                    json!({ "name": n }),
                    Duration::from_secs(1800),
                )?;
                let r: Report = serde_json::from_value(v.clone())?;
                failed |= !r.ok;
                if a.json {
                    println!("{}", serde_json::to_string(&v)?);
                } else {
                    print_report(&r);
                }
            }
            if failed {
                return Err(Reported("a scenario check failed".into()).into());
            }
            Ok(())
        }
        LabCmd::Agent(AgentCmd::Server { listen, run_dir }) => {
            let _sock = agent_socket(run_dir, "server")?;
            agent::serve(listen)?;
            Ok(())
        }
        LabCmd::Agent(AgentCmd::Client {
            target,
            flows,
            interval_ms,
            stall_ms,
            no_udp,
            stream,
            stats,
            run_dir,
        }) => {
            let _sock = agent_socket(run_dir, "client")?;
            agent::run_client(ClientConfig {
                target,
                flows,
                udp: !no_udp,
                interval: Duration::from_millis(interval_ms),
                stats,
                stall_after: Duration::from_millis(stall_ms),
                mode: if stream {
                    agent::FlowMode::Stream
                } else {
                    agent::FlowMode::StopAndWait
                },
            })?;
            Ok(())
        }
    }
}
