//! Per-frame cost of the lab switch (run by `scripts/bench-lab.sh`, part of `make bench`).
//!
//! 1. The pure core: decisions per second for learned unicast and for broadcast floods.
//! 2. The IO shell: round-trip time of a 64-byte frame between two fake NICs through the
//!    switch, against the yardstick of the same ping-pong over plain loopback UDP (no
//!    switch) in the same run; and a one-way burst, frames/s delivered.

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use twinwall_lab::switch::core::{PortSpec, Switch};
use twinwall_lab::switch::io::RunningSwitch;

fn spec(n: &str) -> PortSpec {
    PortSpec {
        node: n.into(),
        segment: "inside".into(),
    }
}

fn frame(dst: u8, src: u8) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, dst, 0x02, 0, 0, 0, 0, src, 0x08, 0x00];
    f.resize(64, 0);
    f
}

fn core_bench() {
    let mut s = Switch::new(vec![spec("a"), spec("b"), spec("c")], 1);
    let mut out = Vec::new();
    s.frame(0, &frame(0xff, 1), 0, &mut out);
    s.frame(1, &frame(0xff, 2), 0, &mut out);
    let (uni, bcast) = (frame(2, 1), frame(0xff, 1));
    for (name, f) in [
        ("unicast (learned)", &uni),
        ("broadcast (flood to 2)", &bcast),
    ] {
        let n = 2_000_000u64;
        let t = Instant::now();
        for i in 0..n {
            s.frame(0, f, i / 1000, &mut out);
        }
        let ns = t.elapsed().as_nanos() as f64 / n as f64;
        println!("core {name:<24} {ns:>8.1} ns/frame");
    }
}

fn pingpong(a: &UdpSocket, b: &UdpSocket, n: u32) -> Duration {
    let (f, back) = (frame(2, 1), frame(1, 2));
    let mut buf = [0u8; 2048];
    let t = Instant::now();
    for _ in 0..n {
        a.send(&f).unwrap();
        b.recv(&mut buf).unwrap();
        b.send(&back).unwrap();
        a.recv(&mut buf).unwrap();
    }
    t.elapsed() / n
}

fn main() {
    core_bench();
    let sw = RunningSwitch::start(vec![spec("a"), spec("b")], 1).unwrap();
    let nic = |i: usize| {
        let s = sw.vm_socket(i).try_clone().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s
    };
    let (a, b) = (nic(0), nic(1));
    // Learn both MACs first.
    a.send(&frame(0xff, 1)).unwrap();
    b.recv(&mut [0u8; 2048]).unwrap();
    b.send(&frame(1, 2)).unwrap();
    a.recv(&mut [0u8; 2048]).unwrap();
    let n = 20_000;
    let via = pingpong(&a, &b, n);
    // Yardstick: the same ping-pong straight between two loopback sockets.
    let x = UdpSocket::bind("127.0.0.1:0").unwrap();
    let y = UdpSocket::bind("127.0.0.1:0").unwrap();
    x.connect(y.local_addr().unwrap()).unwrap();
    y.connect(x.local_addr().unwrap()).unwrap();
    let direct = pingpong(&x, &y, n);
    println!(
        "round trip 64 B via switch {:>8.1} us, direct loopback UDP {:>8.1} us, ratio {:.2} \
         (switch adds {:.1} us per frame)",
        via.as_secs_f64() * 1e6,
        direct.as_secs_f64() * 1e6,
        via.as_secs_f64() / direct.as_secs_f64(),
        (via.as_secs_f64() - direct.as_secs_f64()) * 1e6 / 2.0
    );
    // Burst: as fast as the sender can, count what arrives in order.
    let burst = 200_000u32;
    b.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let rx = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        let mut got = 0u32;
        let t = Instant::now();
        while b.recv(&mut buf).is_ok() {
            got += 1;
        }
        (got, t.elapsed().saturating_sub(Duration::from_millis(300)))
    });
    let f = frame(2, 1);
    for _ in 0..burst {
        let _ = a.send(&f);
    }
    let (got, took) = rx.join().unwrap();
    println!(
        "burst {burst} frames: {got} delivered ({:.1} %), {:.0} frames/s through the switch",
        f64::from(got) * 100.0 / f64::from(burst),
        f64::from(got) / took.as_secs_f64().max(1e-9)
    );
}
