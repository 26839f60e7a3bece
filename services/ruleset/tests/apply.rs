//! The apply path against real nftables in fresh network namespaces: the compiled
//! examples and the bootstrap ruleset apply; a failing apply leaves `nft list ruleset`
//! byte-identical; re-applying replaces the table instead of adding to it.

use twinwall_ruleset::{ApplyError, BootstrapOptions, Nft, Options, bootstrap, compile, fixtures};
use twinwall_testkit::{Netns, require_root};

/// Valid up to its last line, where the kernel (not nft's parser) finds overlapping
/// interval elements: a semantic error at the very end of the transaction.
const OVERLAP: &str = "add set inet twinwall overlap_v4 { type ipv4_addr; flags interval; }\n\
    add element inet twinwall overlap_v4 { 10.0.0.0/8 }\n\
    add element inet twinwall overlap_v4 { 10.1.0.0/16 }\n";

#[test]
fn failing_apply_leaves_the_ruleset_byte_identical() {
    if !require_root() {
        return;
    }
    let ns = Netns::new("fail").unwrap();
    let nft = Nft::in_netns(ns.name());
    let good = compile(&fixtures::seed_pair("lj-fw-1"), &Options::default()).unwrap();
    nft.apply(&good.text).unwrap();
    let before = nft.list_ruleset().unwrap();
    assert!(before.contains("table inet twinwall"), "{before}");

    // A valid prefix (the whole dual-stack ruleset, which would replace the table) with
    // an error injected after it: nothing of it may land.
    let other = compile(&fixtures::dual_stack("fw-a"), &Options::default()).unwrap();
    let broken = format!(
        "{}\nadd rule inet twinwall input tcp dport 22 bogus-verdict\n",
        other.text
    );
    let err = nft.apply(&broken).unwrap_err();
    assert!(matches!(err, ApplyError::Apply { .. }), "{err}");
    assert!(err.to_string().contains("bogus-verdict"), "{err}");
    assert_eq!(nft.list_ruleset().unwrap(), before);
    // The same with the separate check pass first: rejected there, nothing applied.
    let err = nft.check_then_apply(&broken).unwrap_err();
    assert!(matches!(err, ApplyError::Check { .. }), "{err}");
    assert_eq!(nft.list_ruleset().unwrap(), before);

    // A semantic error the kernel reports (overlapping interval elements) after a valid
    // prefix that replaces the table: rolled back as a whole.
    let overflow = format!("{}\n{OVERLAP}", good.text);
    assert!(nft.apply(&overflow).is_err());
    assert_eq!(nft.list_ruleset().unwrap(), before);
}

#[test]
fn reapplying_replaces_the_table_and_bootstrap_applies() {
    if !require_root() {
        return;
    }
    let ns = Netns::new("reapply").unwrap();
    let nft = Nft::in_netns(ns.name());
    let boot = bootstrap(&BootstrapOptions::default());
    nft.apply(&boot).unwrap();
    let listed = nft.list_ruleset().unwrap();
    assert!(listed.contains("tcp dport 9780"), "{listed}");
    assert!(listed.contains("udp dport 3780"), "{listed}");
    let script = compile(&fixtures::seed_pair("lj-fw-2"), &Options::default()).unwrap();
    nft.apply(&script.text).unwrap();
    let once = nft.list_ruleset().unwrap();
    nft.apply(&script.text).unwrap();
    let twice = nft.list_ruleset().unwrap();
    assert_eq!(once, twice, "a second apply must replace, not add");
    assert!(
        !once
            .lines()
            .any(|l| l.trim_start().starts_with("udp dport 3780")),
        "the bootstrap's sync rule (any source) is gone: {once}"
    );
    assert_eq!(once.matches("table inet twinwall").count(), 1);
    // Every rule has a counter.
    for line in once.lines().filter(|l| l.contains("comment")) {
        assert!(line.contains("counter"), "rule without counter: {line}");
    }
    // Other tables are left alone.
    ns.run("nft", ["add", "table", "ip", "other"]).unwrap();
    nft.apply(&script.text).unwrap();
    assert!(nft.list_ruleset().unwrap().contains("table ip other"));
}

#[test]
fn bare_nft_f_is_atomic_too() {
    if !require_root() {
        return;
    }
    let ns = Netns::new("bare").unwrap();
    let nft = Nft::in_netns(ns.name());
    let good = compile(&fixtures::seed_pair("lj-fw-1"), &Options::default()).unwrap();
    nft.apply(&good.text).unwrap();
    let before = nft.list_ruleset().unwrap();
    // With no check pass, the kernel sees the delete, the new table and then a
    // semantic error at the very end: the whole transaction is rolled back.
    let other = compile(&fixtures::dual_stack("fw-a"), &Options::default()).unwrap();
    let broken = format!("{}\n{OVERLAP}", other.text);
    let err = nft.apply(&broken).unwrap_err();
    assert!(matches!(err, ApplyError::Apply { .. }), "{err}");
    assert_eq!(nft.list_ruleset().unwrap(), before);
}
