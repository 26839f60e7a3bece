//! A/B OS updates through the management API, with files as the slot "partitions" and a
//! directory as the ESP: the update streams into the inactive slot, is read back and
//! set to be tried once; a bundle cut short, tampered, wrongly signed, too old, of the
//! wrong kind or too big for the slot never marks the slot. Root only (the node runs in
//! its own namespace).

mod mgmt_common;

use mgmt_common::*;
use twinwall_image::slot::Slot;
use twinwall_testkit::require_root;

const MIB: usize = 1 << 20;

#[test]
fn an_update_is_streamed_into_the_inactive_slot_read_back_and_tried_once() {
    if !require_root() {
        return;
    }
    let n = SlotNode::new(16 * MIB as u64);
    let image = image_bytes(8 * MIB + 123, 1);
    let img = n.m.path("slot.squashfs");
    std::fs::write(&img, &image).unwrap();
    let b = os_bundle(&n.m, "os5", 5, &img, "op");
    let out = n.update(&b);
    assert!(out.status.success(), "{}\n{}", stderr(&out), n.fw.logs());
    let text = stdout(&out);
    assert!(text.contains("slot B holds OS version 5"), "{text}");
    assert!(text.contains("next boot: slot B"), "{text}");
    let written = std::fs::read(&n.slot_b).unwrap();
    assert_eq!(&written[..image.len()], &image[..]);
    let st = n.boot();
    assert_eq!(st.grub_boot().1, Slot::B);
    assert!(st.b.ok && !st.b.tried, "{st:?}");
    assert!(st.a.ok, "the running slot stays the fallback: {st:?}");
    // the config in force is pinned to the slot that validated it
    assert_eq!(
        std::fs::read(n.fw.cfg.join("bundles/slot-a.bundle")).unwrap(),
        n.fw.active_bundle()
    );
    let os: serde_json::Value =
        serde_json::from_slice(&std::fs::read(n.fw.cfg.join("os-version")).unwrap()).unwrap();
    assert_eq!(os["b"], 5);
    let s = n.fw.status();
    assert_eq!(s["update"]["last"]["version"], 5);
    assert_eq!(s["slots"]["next_boot"], "B");
}

#[test]
fn a_bad_update_never_marks_the_slot_to_be_tried() {
    if !require_root() {
        return;
    }
    let n = SlotNode::new(16 * MIB as u64);
    std::fs::write(n.fw.cfg.join("os-version"), r#"{"a": 3}"#).unwrap();
    let image = image_bytes(4 * MIB, 2);
    let img = n.m.path("slot.squashfs");
    std::fs::write(&img, &image).unwrap();
    let good = os_bundle(&n.m, "os4", 4, &img, "op");
    let bytes = std::fs::read(&good).unwrap();
    let cut = n.m.path("cut.bundle");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let mut t = bytes.clone();
    let mid = t.len() / 2;
    t[mid] ^= 0x40;
    let tampered = n.m.path("tampered.bundle");
    std::fs::write(&tampered, &t).unwrap();
    let evil = os_bundle(&n.m, "evil", 4, &img, "evil");
    let old = os_bundle(&n.m, "os3", 3, &img, "op");
    let big_img = n.m.path("big.squashfs");
    std::fs::write(&big_img, image_bytes(17 * MIB, 3)).unwrap();
    let too_big = os_bundle(&n.m, "big", 4, &big_img, "op");
    let config = n.m.path("v1.bundle");
    let cases = [
        (&cut, "HTTP 400 [truncated]"),
        (&tampered, "HTTP 400 [hash_mismatch]"),
        (&evil, "HTTP 403 [unknown_key]"),
        (&old, "HTTP 409 [not_newer]"),
        (&too_big, "HTTP 422 [sink_error]"),
        (&config, "HTTP 422 [wrong_kind]"),
    ];
    for (b, expect) in cases {
        let out = n.update(b);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{}: {err}", b.display());
        assert!(
            err.contains(expect),
            "{}: want {expect}: {err}\n{}",
            b.display(),
            n.fw.logs()
        );
        let st = n.boot();
        assert_eq!(st.grub_boot().1, Slot::A, "{}: {st:?}", b.display());
        assert!(
            !st.b.ok,
            "{}: slot B must not be bootable: {st:?}",
            b.display()
        );
    }
    assert!(!n.fw.cfg.join("bundles/slot-a.bundle").exists());
    // the node is still fine: the good bundle goes through afterwards
    let out = n.update(&good);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(n.boot().grub_boot().1, Slot::B);
}

#[test]
fn requests_beyond_the_rate_limit_get_429_and_the_api_stays_up() {
    if !require_root() {
        return;
    }
    let n = SlotNode::with_args(MIB as u64, &["--rate", "2"]);
    let addr = "127.0.0.1:9780".parse().unwrap();
    // burst 4, then 2 per second: 12 requests at once cannot all pass
    let codes: Vec<u16> = (0..12)
        .map(|_| http(&n.fw.ns, addr, "GET", "/status?local=1").0)
        .collect();
    assert!(codes.contains(&429), "{codes:?}");
    assert!(
        codes.iter().filter(|c| **c == 200).count() >= 4,
        "{codes:?}"
    );
    assert!(codes.iter().all(|c| *c == 200 || *c == 429), "{codes:?}");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(http(&n.fw.ns, addr, "GET", "/status?local=1").0, 200);
    let (code, text) = http(&n.fw.ns, addr, "GET", "/metrics");
    assert_eq!(code, 200, "{text}");
    let limited: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("twinwall_mgmt_rate_limited_total "))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(limited >= 1, "{text}");
}
