//! mgmt under the real init supervisor with the real VRRP service, in a network namespace:
//! a policy-only push leaves VRRP alone (same pid, still master: mastership is not
//! dropped); a push that changes `[vrrp]` restarts it through init and it comes back as
//! master with the new config. Root only.

mod mgmt_common;

use std::process::Stdio;
use std::time::Duration;

use mgmt_common::*;
use serde_json::Value;
use twinwall_testkit::{Netns, require_root, wait_for};

fn sock(run: &std::path::Path, name: &str) -> Value {
    twinwall_control::request(
        &run.join(format!("{name}.sock")),
        &twinwall_control::Request::new("status"),
        Duration::from_secs(2),
    )
    .unwrap_or(Value::Null)
}

fn vrrp_pid(run: &std::path::Path) -> Option<i64> {
    sock(run, "init")["services"]
        .as_array()?
        .iter()
        .find(|s| s["spec"]["name"] == "vrrp")?["pid"]
        .as_i64()
}

fn master(run: &std::path::Path) -> bool {
    sock(run, "vrrp")["groups"][0]["state"] == "master"
}

#[test]
fn only_a_vrrp_change_restarts_vrrp_and_mastership_survives_a_policy_push() {
    if !require_root() {
        return;
    }
    let m = Material::new();
    let v1 = m.bundle("v1", &config(1, false), "op");
    let ns = Netns::new("mginit").unwrap();
    for (dev, addr) in [
        ("eth0", "203.0.113.2/24"),
        ("eth1", "198.51.100.2/24"),
        ("eth2", "192.0.2.1/30"),
    ] {
        // a veth pair inside the namespace (no dummy module on this kernel)
        let other = format!("x{dev}");
        ns.ip(["link", "add", dev, "type", "veth", "peer", "name", &other])
            .unwrap();
        ns.link_up(&other).unwrap();
        ns.link_up(dev).unwrap();
        ns.add_addr(dev, addr.parse().unwrap()).unwrap();
    }
    let run = m.path("run");
    std::fs::create_dir_all(&run).unwrap();
    let config_file = run.join("cluster.toml");
    std::fs::write(&config_file, config(1, false)).unwrap();
    let cfg = m.config_dir("fw1", &v1);
    let log = std::fs::File::create(m.path("init.log")).unwrap();
    let mut c = ns.command(
        &bin(),
        [
            "init",
            "--supervise",
            "--config",
            config_file.to_str().unwrap(),
            "--node",
            "fw1",
            "--services",
            "ruleset,vrrp,mgmt",
            "--run-dir",
            run.to_str().unwrap(),
        ],
    );
    c.env("TWINWALL_CONFIG_DIR", &cfg)
        .stdout(Stdio::null())
        .stderr(log);
    let _init = ns.spawn_command(c).unwrap();
    let logs = || std::fs::read_to_string(m.path("init.log")).unwrap_or_default();
    let up = wait_for(Duration::from_secs(30), Duration::from_millis(100), || {
        sock(&run, "mgmt")["ready"] == true && master(&run)
    });
    assert!(up, "mgmt and vrrp (master) did not come up:\n{}", logs());
    let pid = vrrp_pid(&run).unwrap();
    // policy only: the ruleset changes, VRRP keeps running as master
    let v2 = m.bundle("v2", &config(2, true), "op");
    let out = ns
        .exec(
            &bin(),
            ["push", v2.to_str().unwrap(), "--to", INSIDE[0], "--no-peer"],
        )
        .unwrap();
    assert!(out.status.success(), "{}\n{}", stderr(&out), logs());
    assert!(stdout(&out).contains("restarted: none"), "{}", stdout(&out));
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(
        vrrp_pid(&run),
        Some(pid),
        "vrrp was restarted by a policy push"
    );
    assert!(master(&run), "mastership dropped by a policy push");
    let nft = ns.run("nft", ["-s", "list", "ruleset"]).unwrap();
    assert!(nft.contains("probe-to-firewall"), "{nft}");
    // a [vrrp] change: vrrp is restarted with the new interval and becomes master again
    let v3 = m.bundle(
        "v3",
        &config(3, true).replace("advert_interval_ms = 100", "advert_interval_ms = 200"),
        "op",
    );
    let out = ns
        .exec(
            &bin(),
            ["push", v3.to_str().unwrap(), "--to", INSIDE[0], "--no-peer"],
        )
        .unwrap();
    assert!(out.status.success(), "{}\n{}", stderr(&out), logs());
    assert!(stdout(&out).contains("restarted: vrrp"), "{}", stdout(&out));
    let back = wait_for(Duration::from_secs(20), Duration::from_millis(100), || {
        vrrp_pid(&run).is_some_and(|p| p != pid)
            && master(&run)
            && sock(&run, "vrrp")["groups"][0]["routers"][0]["master_adver_interval_ms"] == 200
    });
    assert!(
        back,
        "vrrp did not come back with the new config:\n{}",
        logs()
    );
    assert!(
        std::fs::read_to_string(&config_file)
            .unwrap()
            .contains("advert_interval_ms = 200")
    );
}
