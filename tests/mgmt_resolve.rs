//! `--to HOST` with a host name in the static appliance binary (crt-static glibc, the one
//! `make image` builds): names come from `/etc/hosts` and from DNS without any NSS module
//! on disk. glibc 2.34+ carries its `files` and `dns` backends inside libc itself, so a
//! static `getaddrinfo` needs no `libnss_*.so`; this test proves it rather than assumes it.
//!
//! In a fresh network namespace: a real `twinwall mgmt --fail-closed` on 127.0.0.1:9780,
//! `/etc/netns/NS/hosts` with one name, `/etc/netns/NS/resolv.conf` pointing at a small
//! DNS responder on the namespace's loopback that knows another name. The static binary
//! runs inside the namespace with `/usr/lib/x86_64-linux-gnu` hidden (an empty bind mount),
//! so no NSS module can be loaded, and `twinwall status --to NAME` must reach the API by
//! both names; an unknown name fails with a one-line reason naming it.

mod image_common;

use std::net::UdpSocket;
use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use twinwall_testkit::Netns;

/// Files under `/etc/netns/NAME/` (what `ip netns exec` binds over `/etc`), removed on drop.
struct EtcNetns(PathBuf);

impl Drop for EtcNetns {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A DNS answer for `query`: an A record `addr` when it asks for `name` type A, an empty
/// NOERROR answer for other types of `name` (AAAA), NXDOMAIN otherwise. Only what this
/// test's resolver sends is handled: one question, no EDNS.
fn answer(query: &[u8], name: &str, addr: [u8; 4]) -> Option<Vec<u8>> {
    if query.len() < 12 {
        return None;
    }
    let mut i = 12;
    let mut labels = Vec::new();
    while i < query.len() && query[i] != 0 {
        let n = query[i] as usize;
        labels.push(String::from_utf8_lossy(query.get(i + 1..i + 1 + n)?).to_lowercase());
        i += 1 + n;
    }
    let qend = i + 5; // zero label, type, class
    let qtype = u16::from_be_bytes([*query.get(i + 1)?, *query.get(i + 2)?]);
    let asked = labels.join(".");
    let mut r = query[..2].to_vec();
    let known = asked == name;
    r.extend_from_slice(if known { &[0x81, 0x80] } else { &[0x81, 0x83] });
    let an: u16 = u16::from(known && qtype == 1);
    r.extend_from_slice(&[0, 1]);
    r.extend_from_slice(&an.to_be_bytes());
    r.extend_from_slice(&[0, 0, 0, 0]);
    r.extend_from_slice(query.get(12..qend)?);
    if an == 1 {
        r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
        r.extend_from_slice(&addr);
    }
    Some(r)
}

fn status_in(ns: &Netns, empty: &std::path::Path, to: &str) -> Output {
    let bin = image_common::static_binary();
    ns.command(
        "unshare",
        [
            "-m".to_string(),
            "sh".into(),
            "-c".into(),
            format!(
                "mount --bind {} /usr/lib/x86_64-linux-gnu && exec {} status --json --to {to}",
                empty.display(),
                bin.display()
            ),
        ],
    )
    .env("TWINWALL_LOG", "warn")
    .stdin(Stdio::null())
    .output()
    .unwrap()
}

#[test]
fn a_host_name_resolves_from_hosts_and_dns_in_the_static_binary() {
    let ns = Netns::new("mgmtdns").unwrap();
    let etc = EtcNetns(PathBuf::from("/etc/netns").join(ns.name()));
    std::fs::create_dir_all(&etc.0).unwrap();
    std::fs::write(
        etc.0.join("hosts"),
        "127.0.0.1 localhost\n127.0.0.1 fw-by-hosts.test\n",
    )
    .unwrap();
    std::fs::write(
        etc.0.join("resolv.conf"),
        "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
    )
    .unwrap();
    let scratch = image_common::scratch("mgmt-resolve");
    let empty = scratch.join("empty");
    std::fs::create_dir_all(&empty).unwrap();

    let dns: UdpSocket = ns
        .enter(|| UdpSocket::bind("127.0.0.1:53").unwrap())
        .unwrap();
    dns.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let queries = Arc::new(AtomicU32::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let responder = {
        let (q, stop) = (queries.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !stop.load(Ordering::Relaxed) {
                let Ok((n, from)) = dns.recv_from(&mut buf) else {
                    continue;
                };
                q.fetch_add(1, Ordering::Relaxed);
                if let Some(r) = answer(&buf[..n], "fw-by-dns.test", [127, 0, 0, 1]) {
                    let _ = dns.send_to(&r, from);
                }
            }
        })
    };

    std::fs::create_dir_all(scratch.join("config")).unwrap();
    let mgmt = ns
        .spawn_command({
            let mut c = ns.command(env!("CARGO_BIN_EXE_twinwall"), ["mgmt", "--fail-closed"]);
            c.arg("--run-dir")
                .arg(scratch.join("run"))
                .arg("--config-dir")
                .arg(scratch.join("config"))
                .args(["--listen", "127.0.0.1:9780"])
                .env("TWINWALL_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            c
        })
        .unwrap();

    let start = Instant::now();
    for name in ["fw-by-hosts.test", "fw-by-dns.test:9780", "localhost"] {
        let o = loop {
            let o = status_in(&ns, &empty, name);
            if o.status.success() || start.elapsed() > Duration::from_secs(60) {
                break o;
            }
            std::thread::sleep(Duration::from_millis(300));
        };
        assert!(
            o.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["mgmt"]["fail_closed"], true, "{name}: {v}");
    }
    assert!(
        queries.load(Ordering::Relaxed) > 0,
        "fw-by-dns.test was answered without asking the DNS server"
    );
    let o = status_in(&ns, &empty, "no-such-fw.test");
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("no-such-fw.test"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    stop.store(true, Ordering::Relaxed);
    responder.join().unwrap();
    drop(mgmt);
    drop(ns);
    let _ = std::fs::remove_dir_all(&scratch);
}
