//! The commit handshake on the control socket (root, netns): a subscriber that joined as
//! commit participant holds back the VIPs of a group becoming master until it acks; and
//! the service refuses bad start-ups with a clear reason.

mod netns_vrrp_support;

use std::time::{Duration, Instant};

use netns_vrrp_support::*;
use serde_json::{Value, json};
use twinwall_control::{Request, request, socket_path, subscribe};
use twinwall_testkit::{Netns, require_root, wait_for};

const S: fn(u64) -> Duration = Duration::from_secs;

fn next_event(sub: &mut twinwall_control::Subscription, event: &str, deadline: Duration) -> Value {
    let end = Instant::now() + deadline;
    while Instant::now() < end {
        if let Ok(Some(v)) = sub.next_event(Some(Duration::from_millis(200)))
            && v["event"] == event
        {
            return v;
        }
    }
    panic!("no {event} event within {deadline:?}");
}

#[test]
fn vips_wait_for_the_commit_participants_ack() {
    if !require_root() {
        return;
    }
    // 1 s adverts: Master_Down_Interval is 3.2 s, time enough to subscribe first.
    let mut p = Pair::new("advert_interval_ms = 1000\npreempt = true");
    p.start_with(0, &["--commit-wait-ms", "10000"]);
    let sock = socket_path(&p.run_dir(0), "vrrp");
    let mut sub = subscribe(&sock, S(2)).unwrap();
    request(&sock, &Request::new("commit-join"), S(2)).unwrap();
    assert_eq!(p.status(0).unwrap()["commit_participants"], 1);

    let ev = next_event(&mut sub, "becoming_master", S(10));
    assert_eq!(ev["group"], "edge");
    let seq = ev["seq"].as_u64().unwrap();
    // Held: no VIP while the participant commits.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        p.holders(),
        Vec::<usize>::new(),
        "VIPs announced before the ack\n{}",
        p.logs()
    );
    assert_eq!(p.role(0), "master");
    // A wrong ack is refused politely and changes nothing.
    let bad = request(
        &sock,
        &Request::with_args("commit-ack", json!({"seq": seq})),
        S(2),
    );
    assert!(bad.unwrap_err().to_string().contains("group"));
    request(
        &sock,
        &Request::with_args("commit-ack", json!({"group": "edge", "seq": seq})),
        S(2),
    )
    .unwrap();
    let ev = next_event(&mut sub, "vips_announced", S(5));
    assert_eq!(
        (ev["seq"].as_u64(), ev["acked"].as_bool()),
        (Some(seq), Some(true))
    );
    assert!(
        wait_for(S(2), Duration::from_millis(10), || p.holders() == vec![0]),
        "{}",
        p.logs()
    );
}

#[test]
fn refuses_to_start_without_its_devices_or_with_a_bad_config() {
    if !require_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cluster.toml");
    std::fs::write(
        &cfg,
        config_text("advert_interval_ms = 100\npreempt = true"),
    )
    .unwrap();
    let run = |ns: &Netns, cfg: &std::path::Path| {
        let out = ns
            .exec(
                env!("CARGO_BIN_EXE_twinwall"),
                [
                    "vrrp",
                    "--config",
                    cfg.to_str().unwrap(),
                    "--node",
                    "lj-fw-1",
                    "--run-dir",
                    dir.path().join("run").to_str().unwrap(),
                ],
            )
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // An empty namespace: no eth0.
    let ns = Netns::new("vrrp-empty").unwrap();
    let (code, err) = run(&ns, &cfg);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("network device eth0 does not exist"), "{err}");
    // A config the parser rejects: the error names file:line:column.
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        config_text("advert_interval_ms = 100\npreempt = true").replace("vrid = 52", "vrid = 300"),
    )
    .unwrap();
    let (code, err) = run(&ns, &bad);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("bad.toml:"), "{err}");
    assert!(!dir.path().join("run/vrrp.sock").exists());
}
