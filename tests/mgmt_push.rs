//! Config upload to a pair in network namespaces: two real `twinwall mgmt` services with
//! the real ruleset, an admin host on the LAN running `twinwall push` / `status --to`.
//! Root only (namespaces, nftables). Topology and harness: `tests/mgmt_common`.

mod mgmt_common;

use std::time::{Duration, Instant};

use mgmt_common::*;
use twinwall_testkit::{PeerEcho, require_root, wait_for};

fn listeners(p: &Pair) -> Vec<PeerEcho> {
    p.fws
        .iter()
        .map(|f| {
            let addr = format!("{}:8080", f.inside().ip()).parse().unwrap();
            PeerEcho::tcp(&f.ns, addr).unwrap()
        })
        .collect()
}

#[test]
fn a_push_is_applied_on_both_nodes_and_the_rule_change_is_enforced() {
    if !require_root() {
        return;
    }
    let p = Pair::new();
    let _echo = listeners(&p);
    assert!(
        !p.probe_open(0) && !p.probe_open(1),
        "tcp/8080 must start closed"
    );
    let v2 = p.m.bundle("v2", &config(2, true), "op");
    let started = Instant::now();
    let out = p.admin(&["push", v2.to_str().unwrap(), "--to", INSIDE[0]]);
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "push failed: {}\n{}",
        stderr(&out),
        p.logs()
    );
    let text = stdout(&out);
    assert!(
        text.contains("fw1: config version 2 applied and confirmed"),
        "{text}"
    );
    assert!(text.contains("peer: applied"), "{text}\n{}", p.logs());
    eprintln!("push to enforced on both nodes: {} ms", took.as_millis());
    // enforced on both, with traffic
    assert!(p.probe_open(0), "fw1 does not enforce v2");
    assert!(p.probe_open(1), "fw2 does not enforce v2");
    for fw in &p.fws {
        assert_eq!(fw.version(), Some(2), "{}", fw.name);
        assert_eq!(
            fw.active_bundle(),
            std::fs::read(&v2).unwrap(),
            "{}",
            fw.name
        );
        let prev = std::fs::read(fw.cfg.join("bundles/previous.bundle")).unwrap();
        assert_eq!(prev, std::fs::read(p.m.path("v1.bundle")).unwrap());
        let floor = std::fs::read_to_string(fw.cfg.join("installed-version")).unwrap();
        assert_eq!(floor.trim(), "1");
        assert!(!fw.cfg.join("bundles/unconfirmed").exists());
        assert!(!fw.cfg.join("bundles/staged.bundle").exists());
        let running = std::fs::read_to_string(fw.run.join("cluster.toml")).unwrap();
        assert!(running.contains("probe-to-firewall"));
    }
    // status --to from the admin host: both versions, no skew once fw1 polled fw2
    assert!(wait_for(
        Duration::from_secs(5),
        Duration::from_millis(100),
        || { p.fws[0].status()["peer"]["version"].as_u64() == Some(2) }
    ));
    let out = p.admin(&["status", "--to", INSIDE[0]]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("config version 2"), "{text}");
    assert!(!text.contains("SKEW"), "{text}");
    let out = p.admin(&["status", "--to", INSIDE[1], "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["mgmt"]["config"]["version"], 2);
    assert_eq!(v["mgmt"]["node"], "fw2");
    // metrics, from the admin host
    let (code, text) = http(&p.lan, p.fws[0].inside(), "GET", "/metrics");
    assert_eq!(code, 200);
    assert!(text.contains("twinwall_config_version 2\n"), "{text}");
    assert!(text.contains("twinwall_peer_config_version 2\n"), "{text}");
    assert!(
        text.contains("twinwall_mgmt_requests_total{endpoint=\"/config\",code=\"200\"} 1"),
        "{text}"
    );
}

#[test]
fn an_unconfirmed_push_reverts_on_both_nodes() {
    if !require_root() {
        return;
    }
    let p = Pair::new();
    let _echo = listeners(&p);
    let v2 = p.m.bundle("v2", &config(2, true), "op");
    let out = p.admin(&[
        "push",
        v2.to_str().unwrap(),
        "--to",
        INSIDE[0],
        "--confirm-within",
        "3s",
    ]);
    assert!(
        out.status.success(),
        "push failed: {}\n{}",
        stderr(&out),
        p.logs()
    );
    assert!(
        stderr(&out).contains("confirm within 3 s"),
        "{}",
        stderr(&out)
    );
    assert!(
        p.probe_open(0) && p.probe_open(1),
        "v2 must be in force during the window"
    );
    for fw in &p.fws {
        assert!(fw.cfg.join("bundles/unconfirmed").exists(), "{}", fw.name);
        assert_eq!(fw.status()["config"]["confirm_pending"]["version"], 2);
    }
    // nobody confirms: both go back to v1 by themselves
    let reverted = wait_for(Duration::from_secs(15), Duration::from_millis(200), || {
        p.fws.iter().all(|f| f.version() == Some(1))
    });
    assert!(reverted, "no revert:\n{}", p.logs());
    assert!(
        !p.probe_open(0) && !p.probe_open(1),
        "v1's policy must be back"
    );
    for fw in &p.fws {
        assert_eq!(
            fw.active_bundle(),
            std::fs::read(p.m.path("v1.bundle")).unwrap()
        );
        assert!(!fw.cfg.join("bundles/unconfirmed").exists());
        assert_eq!(fw.status()["config"]["reverts"], 1);
    }
    // a push that is confirmed in time stays
    let v3 = p.m.bundle("v3", &config(3, true), "op");
    let out = p.admin(&[
        "push",
        v3.to_str().unwrap(),
        "--to",
        INSIDE[0],
        "--confirm-within",
        "3s",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = p.admin(&["push", v3.to_str().unwrap(), "--to", INSIDE[0], "--confirm"]);
    assert!(
        out.status.success(),
        "confirm failed: {}\n{}",
        stderr(&out),
        p.logs()
    );
    std::thread::sleep(Duration::from_secs(4));
    for fw in &p.fws {
        assert_eq!(fw.version(), Some(3), "{}:\n{}", fw.name, p.logs());
    }
    assert!(p.probe_open(0) && p.probe_open(1));
}

#[test]
fn bad_bundles_get_a_4xx_with_the_reason_and_change_nothing() {
    if !require_root() {
        return;
    }
    let p = Pair::new();
    // v3 in force first, so that v2 is a downgrade
    let v3 = p.m.bundle("v3", &config(3, true), "op");
    let out = p.admin(&["push", v3.to_str().unwrap(), "--to", INSIDE[0]]);
    assert!(out.status.success(), "{}\n{}", stderr(&out), p.logs());
    let before: Vec<(Vec<u8>, Vec<u8>, String)> = p
        .fws
        .iter()
        .map(|f| {
            let prev = std::fs::read(f.cfg.join("bundles/previous.bundle")).unwrap();
            (f.active_bundle(), prev, f.ruleset())
        })
        .collect();
    let good = p.m.bundle("v4", &config(4, false), "op");
    // tampered: one byte of the config payload changed
    let mut bytes = std::fs::read(&good).unwrap();
    let at = bytes.len() - 20;
    bytes[at] ^= 0x01;
    let tampered = p.m.path("tampered.bundle");
    std::fs::write(&tampered, &bytes).unwrap();
    let wrong_key = p.m.bundle("evil", &config(4, false), "evil");
    let downgrade = p.m.bundle("v2", &config(2, true), "op");
    // oversize: a config above the node's limit (the default limit is 17 MiB; pad the
    // config with a comment beyond it)
    let mut big = config(4, true);
    big.push_str(&format!("# {}\n", "x".repeat(18 << 20)));
    let oversize = p.m.bundle("big", &big, "op");
    // wrong kind: an os-update bundle posted as config
    let key = twinwall_bundle::keys::read_signing_key(&p.m.path("op.key")).unwrap();
    let os = p.m.path("os.bundle");
    twinwall_bundle::create_file(
        twinwall_bundle::Kind::OsUpdate,
        &twinwall_bundle::BundleMeta {
            version: 5,
            cluster: "twinwall-os".into(),
            compatible: twinwall_bundle::DEFAULT_COMPATIBLE.into(),
            created: std::time::SystemTime::UNIX_EPOCH,
            rollback: false,
        },
        &[twinwall_bundle::Payload::bytes(
            "slot.squashfs",
            vec![0u8; 4096],
        )],
        &key,
        &os,
    )
    .unwrap();
    let cases = [
        (&tampered, "HTTP 400 [hash_mismatch]"),
        (&wrong_key, "HTTP 403 [unknown_key]"),
        (&downgrade, "HTTP 409 [not_newer]"),
        (&v3, "HTTP 409 [not_newer]"),
        (&oversize, "HTTP 413 [too_large]"),
        (&os, "HTTP 422 [wrong_kind]"),
    ];
    for (bundle, expect) in cases {
        let out = p.admin(&["push", bundle.to_str().unwrap(), "--to", INSIDE[0]]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{}: {err}", bundle.display());
        assert!(
            err.contains(expect),
            "{}: want {expect}, got: {err}",
            bundle.display()
        );
    }
    for (fw, (bundle, prev, rules)) in p.fws.iter().zip(&before) {
        assert_eq!(&fw.active_bundle(), bundle, "{}", fw.name);
        assert_eq!(
            &std::fs::read(fw.cfg.join("bundles/previous.bundle")).unwrap(),
            prev
        );
        assert_eq!(&fw.ruleset(), rules, "{}", fw.name);
        assert_eq!(fw.version(), Some(3));
        assert!(!fw.cfg.join("bundles/staged.bundle").exists());
    }
    let rejected = &p.fws[0].status()["rejected"];
    assert_eq!(rejected["hash_mismatch"], 1, "{rejected}");
    assert_eq!(rejected["unknown_key"], 1, "{rejected}");
    // a node whose peer refuses (peer trusts another key) changes nothing either
    std::fs::remove_file(p.fws[1].cfg.join("trusted/op.pub")).unwrap();
    std::fs::copy(p.m.path("evil.pub"), p.fws[1].cfg.join("trusted/evil.pub")).unwrap();
    let out = p.admin(&["push", good.to_str().unwrap(), "--to", INSIDE[0]]);
    assert!(
        stderr(&out).contains("HTTP 409 [peer_rejected]"),
        "{}",
        stderr(&out)
    );
    assert_eq!(p.fws[0].active_bundle(), before[0].0);
    assert_eq!(p.fws[0].ruleset(), before[0].2);
}

#[test]
fn a_peer_that_was_down_gets_the_bundle_when_it_returns() {
    if !require_root() {
        return;
    }
    let mut p = Pair::new();
    let _echo = listeners(&p);
    p.fws[1].stop_mgmt();
    let v2 = p.m.bundle("v2", &config(2, true), "op");
    let out = p.admin(&["push", v2.to_str().unwrap(), "--to", INSIDE[0]]);
    assert!(out.status.success(), "{}\n{}", stderr(&out), p.logs());
    assert!(stdout(&out).contains("peer: pending"), "{}", stdout(&out));
    assert!(p.probe_open(0));
    assert!(!p.probe_open(1), "fw2 was down; it still runs v1");
    // fw1 reports the skew
    assert!(wait_for(
        Duration::from_secs(5),
        Duration::from_millis(100),
        || { p.fws[0].status()["peer"]["pending"] == true }
    ));
    let out = p.admin(&["status", "--to", INSIDE[0]]);
    assert!(stdout(&out).contains("reachable false"), "{}", stdout(&out));
    p.fws[1].start_mgmt();
    let caught_up = wait_for(Duration::from_secs(15), Duration::from_millis(200), || {
        p.fws[1].version() == Some(2)
    });
    assert!(caught_up, "fw2 did not get v2:\n{}", p.logs());
    assert!(p.probe_open(1), "fw2 must enforce v2 now");
    assert!(wait_for(
        Duration::from_secs(5),
        Duration::from_millis(100),
        || {
            let s = p.fws[0].status();
            s["peer"]["skew"] == false && s["peer"]["pending"] == false
        }
    ));
}

#[test]
fn an_unconfirmed_push_found_at_start_up_is_reverted() {
    if !require_root() {
        return;
    }
    let mut p = Pair::new();
    let _echo = listeners(&p);
    let v2 = p.m.bundle("v2", &config(2, true), "op");
    let out = p.admin(&[
        "push",
        v2.to_str().unwrap(),
        "--to",
        INSIDE[0],
        "--no-peer",
        "--confirm-within",
        "10m",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(p.probe_open(0));
    // mgmt dies during the window (crash, restart by init): the marker survives it
    p.fws[0].stop_mgmt();
    assert!(p.fws[0].cfg.join("bundles/unconfirmed").exists());
    p.fws[0].start_mgmt();
    assert_eq!(p.fws[0].version(), Some(1), "{}", p.logs());
    assert!(!p.probe_open(0), "v1's policy must be back");
    assert_eq!(
        p.fws[0].active_bundle(),
        std::fs::read(p.m.path("v1.bundle")).unwrap()
    );
}
