//! One test per validation rule: a small valid config (`base.toml`) is broken in one
//! place and the diagnostic must appear at the exact line and column, with a hint.

use twinwall_config::{Diagnostic, parse};

const BASE: &str = include_str!("base.toml");

/// `BASE` with the first `from` replaced by `to` (which must exist).
#[track_caller]
fn with(from: &str, to: &str) -> String {
    assert!(BASE.contains(from), "base.toml has no {from:?}");
    BASE.replacen(from, to, 1)
}

/// `BASE` with the last `from` replaced by `to`.
#[track_caller]
fn with_last(from: &str, to: &str) -> String {
    let i = BASE
        .rfind(from)
        .unwrap_or_else(|| panic!("base.toml has no {from:?}"));
    format!("{}{to}{}", &BASE[..i], &BASE[i + from.len()..])
}

fn errors(text: &str) -> Vec<Diagnostic> {
    match parse("t.toml", text) {
        Ok(_) => Vec::new(),
        Err(d) => d.errors().cloned().collect(),
    }
}

fn show(errs: &[Diagnostic]) -> String {
    errs.iter().map(|d| format!("{d}\n")).collect()
}

/// The error at `line:col` whose message contains `needle`.
#[track_caller]
fn expect(text: &str, line: usize, col: usize, needle: &str) -> Diagnostic {
    let errs = errors(text);
    let found = errs
        .iter()
        .find(|d| d.line == line && d.column == col && d.message.contains(needle))
        .cloned();
    match found {
        Some(d) => {
            assert_eq!(d.file, "t.toml");
            assert!(!d.hint.is_empty(), "no hint: {d}");
            d
        }
        None => panic!(
            "no error at {line}:{col} containing {needle:?}; got:\n{}",
            show(&errs)
        ),
    }
}

/// Exactly one error, at `line:col`, containing `needle`.
#[track_caller]
fn expect_only(text: &str, line: usize, col: usize, needle: &str) -> Diagnostic {
    let errs = errors(text);
    assert_eq!(errs.len(), 1, "expected one error, got:\n{}", show(&errs));
    expect(text, line, col, needle)
}

#[test]
fn base_is_valid() {
    let cfg = parse("t.toml", BASE).unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(cfg.node_names(), ["a", "b"]);
    assert_eq!(cfg.cluster_name(), "t");
    assert_eq!(cfg.version(), 3);
    assert!(cfg.warnings().is_empty());
}

#[test]
fn unknown_key_gets_did_you_mean() {
    let d = expect_only(
        &with("advert_interval_ms = 100", "advert_intervall_ms = 100"),
        18,
        1,
        "unknown key `advert_intervall_ms` in `vrrp`",
    );
    assert_eq!(d.hint, "did you mean `advert_interval_ms`?");
}

#[test]
fn unknown_key_without_close_match_lists_valid_keys() {
    let d = expect_only(
        &with("version = 3", "version = 3\ncolour = 1"),
        4,
        1,
        "`colour`",
    );
    assert_eq!(d.hint, "valid keys here: `name`, `version`");
}

#[test]
fn unknown_key_in_inline_table_and_array_of_tables() {
    let text = with(
        "interfaces.inside = { device = \"eth1\", address = \"198.51.100.3/24\" }",
        "interfaces.inside = { device = \"eth1\", adress = \"198.51.100.3/24\" }",
    )
    .replacen(
        "action = \"accept\"\n\n[[policy.rule]]",
        "acton = \"accept\"\n\n[[policy.rule]]",
        1,
    );
    let errs = errors(&text);
    assert_eq!(errs.len(), 2, "{}", show(&errs));
    let d = expect(
        &text,
        14,
        40,
        "unknown key `adress` in `nodes.b.interfaces.inside`",
    );
    assert_eq!(d.hint, "did you mean `address`?");
    let d = expect(&text, 58, 1, "unknown key `acton` in `policy.rule[0]`");
    assert_eq!(d.hint, "did you mean `action`?");
}

#[test]
fn several_unknown_keys_are_all_reported() {
    let text = BASE
        .replacen("name = \"t\"", "nam = \"t\"", 1)
        .replacen("vrid = 52", "vrdi = 52", 1)
        .replacen("gateway = ", "gatway = ", 1)
        .replacen("default = \"drop\"", "defualt = \"drop\"", 1);
    let errs = errors(&text);
    let at: Vec<(usize, usize)> = errs.iter().map(|d| (d.line, d.column)).collect();
    assert_eq!(at, [(2, 1), (30, 1), (39, 1), (52, 1)], "{}", show(&errs));
    assert!(errs.iter().all(|d| d.hint.starts_with("did you mean")));
}

#[test]
fn wrong_value_type() {
    expect_only(
        &with("priority = 100", "priority = \"100\""),
        12,
        12,
        "wrong type for `priority` in `nodes.b`",
    );
    // A bad element of an address list.
    expect_only(
        &with(
            "\"203.0.113.3/24\", \"2001:db8:1::3/64\"",
            "\"203.0.113.3/24\", 6",
        ),
        13,
        70,
        "wrong type for `address`",
    );
}

#[test]
fn several_type_errors_are_all_reported() {
    let text = BASE
        .replacen(
            "advert_interval_ms = 100",
            "advert_interval_ms = 100\npreempt = \"yes\"",
            1,
        )
        .replacen(
            "track = [\"outside\", \"inside\"]",
            "track = \"outside\"",
            1,
        )
        .replacen(
            "address = \"192.0.2.2/30\"",
            "address = [\"192.0.2.2/30\", 1.5]",
            1,
        )
        .replacen("vrid = 51", "vrid = 51.0", 1);
    let errs = errors(&text);
    let got: Vec<(usize, usize, &str)> = errs
        .iter()
        .map(|d| (d.line, d.column, d.message.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (
                15,
                65,
                "wrong type for `address` in `nodes.b.interfaces.sync`: expected a string, found a float"
            ),
            (
                19,
                11,
                "wrong type for `preempt` in `vrrp`: expected a boolean (true or false), found a string"
            ),
            (
                23,
                9,
                "wrong type for `track` in `vrrp.group[0]`: expected an array of strings, found a string"
            ),
            (
                26,
                8,
                "wrong type for `vrid` in `vrrp.group[0].vip[0]`: expected an integer, found a float"
            ),
        ],
        "{}",
        show(&errs)
    );
}

#[test]
fn syntax_error_is_located() {
    expect_only(&with("version = 3", "version = = 3"), 3, 11, "TOML syntax");
}

#[test]
fn missing_key_points_at_its_table() {
    expect_only(
        &with("version = 3\n", ""),
        1,
        1,
        "missing key `version` in `[cluster]`",
    );
    expect_only(
        &with("name = \"out\"\n", ""),
        54,
        1,
        "missing key `name` in `policy.rule[0]`",
    );
}

#[test]
fn unknown_zone_reference() {
    let d = expect_only(
        &with(
            "interface = \"outside\"\n\n[objects",
            "interface = \"outsde\"\n\n[objects",
        ),
        40,
        13,
        "route interface `outsde` is not a zone",
    );
    assert_eq!(d.hint, "did you mean `outside`?");
    expect_only(
        &with(
            "track = [\"outside\", \"inside\"]",
            "track = [\"outside\", \"dmz\"]",
        ),
        22,
        21,
        "tracked interface `dmz` is not a zone",
    );
    expect_only(
        &with("interface = \"inside\"", "interface = \"insid\""),
        31,
        13,
        "VIP interface `insid` is not a zone",
    );
}

#[test]
fn unknown_object_and_service() {
    let d = expect_only(
        &with("to = \"web\"\nservice", "to = \"wbe\"\nservice"),
        63,
        6,
        "unknown zone or network object `wbe`",
    );
    assert_eq!(d.hint, "did you mean `web`?");
    let d = expect_only(
        &with("service = \"http\"\naction", "service = \"htp\"\naction"),
        64,
        11,
        "unknown service object `htp`",
    );
    assert_eq!(d.hint, "did you mean `http`?");
    expect_only(
        &with("from = \"lan\"", "from = \"lna\""),
        70,
        8,
        "unknown network object `lna`",
    );
}

#[test]
fn vip_outside_its_subnet() {
    let d = expect_only(
        &with(
            "address = \"198.51.100.1/24\"",
            "address = \"198.51.101.1/24\"",
        ),
        32,
        11,
        "VIP 198.51.101.1/24 is outside the subnet of zone `inside` on nodes `a` (198.51.100.2/24) and `b` (198.51.100.3/24)",
    );
    assert!(d.hint.contains("subnet"));
    // Only on one node: b's inside is a /25 that does not hold .200.
    let text = with(
        "address = \"198.51.100.3/24\"",
        "address = \"198.51.100.3/25\"",
    )
    .replacen(
        "address = \"198.51.100.1/24\"",
        "address = \"198.51.100.200/24\"",
        1,
    );
    // (The differing masks are an error of their own.)
    expect(
        &text,
        32,
        11,
        "outside the subnet of zone `inside` on node `b` (198.51.100.3/25)",
    );
}

#[test]
fn duplicate_vrid_on_one_link() {
    let text = with(
        "[sync]",
        "[[vrrp.group.vip]]\nvrid = 51\ninterface = \"outside\"\naddress = \"203.0.113.9/24\"\n\n[sync]",
    );
    let d = expect_only(
        &text,
        35,
        8,
        "VRID 51 is used twice for IPv4 on zone `outside`",
    );
    assert!(d.message.contains("first at line 25"));
    // The same VRID on another link is fine, and so is the other family on the same link.
    assert!(errors(&with("vrid = 52", "vrid = 51")).is_empty());
    let text = with(
        "[sync]",
        "[[vrrp.group.vip]]\nvrid = 52\ninterface = \"outside\"\naddress = \"2001:db8:1::9/64\"\n\n[sync]",
    );
    assert!(errors(&text).is_empty(), "{}", show(&errors(&text)));
}

#[test]
fn equal_priorities() {
    expect_only(
        &with("priority = 100", "priority = 200"),
        12,
        12,
        "nodes `a` and `b` both have priority 200",
    );
}

#[test]
fn priority_range() {
    expect_only(
        &with("priority = 100", "priority = 0"),
        12,
        12,
        "priority 0 of node `b` is out of range",
    );
    expect_only(
        &with("priority = 200", "priority = 255"),
        6,
        12,
        "priority 255 of node `a` is out of range",
    );
}

#[test]
fn node_lacking_an_interface() {
    let text = with(
        "interfaces.sync = { device = \"eth2\", address = \"192.0.2.2/30\" }\n",
        "",
    );
    let d = expect_only(
        &text,
        11,
        8,
        "node `b` lacks interface `sync`, which node `a` has (line 9)",
    );
    assert!(d.hint.contains("interfaces.sync"));
}

#[test]
fn exactly_two_nodes() {
    let text = with(
        "[vrrp]",
        "[nodes.c]\npriority = 50\ninterfaces.outside = { device = \"eth0\", address = \"203.0.113.4/24\" }\n\n[vrrp]",
    );
    expect(
        &text,
        17,
        8,
        "a cluster has exactly two nodes; this one has 3",
    );
    let start = BASE.find("[nodes.b]").unwrap();
    let end = BASE.find("[vrrp]").unwrap();
    let one = format!("{}{}", &BASE[..start], &BASE[end..]);
    expect_only(
        &one,
        1,
        1,
        "a cluster has exactly two nodes; this one has 1 (`a`)",
    );
}

#[test]
fn wrong_address_family() {
    // A v6 gateway for a v4 destination.
    expect_only(
        &with(
            "gateway = \"203.0.113.254\"",
            "gateway = \"2001:db8:1::fe\"",
        ),
        39,
        11,
        "wrong address family: IPv6 gateway 2001:db8:1::fe for IPv4 destination 0.0.0.0/0",
    );
    // snat of a v4 source to a v6-only VIP (the dnat to the v4 web server too).
    let text = with(
        "address = [\"203.0.113.1/24\", \"2001:db8:1::1/64\"]",
        "address = \"2001:db8:1::1/64\"",
    );
    let errs = errors(&text);
    assert_eq!(errs.len(), 2, "{}", show(&errs));
    expect(
        &text,
        72,
        6,
        "wrong address family: the source has IPv4 prefixes but `vip:outside` has no IPv4 address",
    );
    expect(
        &text,
        78,
        15,
        "wrong address family: destination `vip:outside` has no IPv4 address",
    );
    // A VIP of a family the zone does not have.
    expect_only(
        &with(
            "address = \"198.51.100.1/24\"",
            "address = [\"198.51.100.1/24\", \"2001:db8:2::1/64\"]",
        ),
        32,
        31,
        "wrong address family: IPv6 VIP 2001:db8:2::1/64 on zone `inside`, but nodes `a` and `b` have no IPv6 address there",
    );
    // A rule between a v4-only and a v6-only network can never match.
    expect_only(
        &with("to = \"web\"\nservice", "to = \"v6only\"\nservice").replacen(
            "from = \"outside\"",
            "from = \"lan\"",
            1,
        ),
        63,
        6,
        "wrong address family: `lan` has only IPv4 networks and `v6only` only IPv6",
    );
}

#[test]
fn duplicate_addresses() {
    let d = expect(
        &with(
            "address = \"198.51.100.3/24\"",
            "address = \"198.51.100.2/24\"",
        ),
        14,
        50,
        "duplicate address 198.51.100.2: node `b` zone `inside` and node `a` zone `inside` (line 8)",
    );
    assert!(d.hint.contains("unique"));
    expect_only(
        &with(
            "address = \"198.51.100.1/24\"",
            "address = \"198.51.100.3/24\"",
        ),
        32,
        11,
        "duplicate address 198.51.100.3: VIP of zone `inside` and node `b` zone `inside` (line 14)",
    );
}

#[test]
fn sync_interface_must_exist() {
    let d = expect_only(
        &with("interface = \"sync\"", "interface = \"synk\""),
        35,
        13,
        "sync interface `synk` does not exist",
    );
    assert_eq!(d.hint, "did you mean `sync`?");
}

#[test]
fn vip_reference_to_zone_without_vip() {
    let d = expect_only(
        &with("to = \"vip:outside\"", "to = \"vip:sync\""),
        72,
        6,
        "`vip:sync`: zone `sync` has no VIP",
    );
    assert!(d.hint.contains("`inside`, `outside`"));
    expect_only(
        &with(
            "destination = \"vip:outside\"",
            "destination = \"vip:nowhere\"",
        ),
        78,
        15,
        "`vip:nowhere`: `nowhere` is not a zone",
    );
}

#[test]
fn advert_interval() {
    expect_only(
        &with("advert_interval_ms = 100", "advert_interval_ms = 105"),
        18,
        22,
        "advert interval 105 ms is not a multiple of 10 ms",
    );
    expect_only(
        &with("advert_interval_ms = 100", "advert_interval_ms = 5"),
        18,
        22,
        "advert interval 5 ms is out of range",
    );
    expect_only(
        &with("advert_interval_ms = 100", "advert_interval_ms = 40960"),
        18,
        22,
        "out of range",
    );
    assert!(
        errors(&with(
            "advert_interval_ms = 100",
            "advert_interval_ms = 40950"
        ))
        .is_empty()
    );
}

#[test]
fn duplicate_rule_names() {
    expect_only(
        &with("name = \"web-in\"", "name = \"out\""),
        61,
        8,
        "duplicate rule name `out` (first at line 55)",
    );
    expect_only(
        &with("name = \"pub\"", "name = \"masq\""),
        75,
        8,
        "duplicate NAT rule name `masq` (first at line 68)",
    );
}

#[test]
fn self_as_source_or_destination_but_not_both() {
    // The firewall's own outgoing connections (the output chain).
    assert!(errors(&with("from = \"inside\"", "from = \"self\"")).is_empty());
    assert!(errors(&with("to = \"outside\"\naction", "to = \"self\"\naction")).is_empty());
    expect_only(
        &with(
            "from = \"inside\"\nto = \"outside\"",
            "from = \"self\"\nto = \"self\"",
        ),
        57,
        6,
        "rule `out` has `from = \"self\"` and `to = \"self\"`",
    );
}

#[test]
fn service_syntax() {
    expect_only(
        &with(
            "\"tcp/80\", \"tcp/8000-8080\"",
            "\"tcp/0\", \"tcp/8000-8080\"",
        ),
        48,
        9,
        "port `0`",
    );
    let d = expect_only(
        &with("\"tcp/8000-8080\"", "\"tcp/8080-8000\""),
        48,
        19,
        "port range `8080-8000` in `tcp/8080-8000` is reversed",
    );
    assert_eq!(d.hint, "write `tcp/8000-8080`");
    let d = expect_only(
        &with("\"icmp/echo-request\"", "\"icmp/echo-requst\""),
        49,
        8,
        "unknown icmp type `echo-requst`",
    );
    assert_eq!(d.hint, "did you mean `echo-request`?");
    expect_only(
        &with("\"icmp/echo-request\"", "\"sctp/9\""),
        49,
        8,
        "unknown protocol `sctp`",
    );
}

#[test]
fn rate_limit_syntax() {
    let text = with(
        "action = \"accept\"\n\n[[nat",
        "action = \"accept\"\nrate_limit = \"10/sec\"\n\n[[nat",
    );
    let d = expect_only(&text, 66, 14, "unknown rate limit unit `sec`");
    assert_eq!(d.hint, "did you mean `second`?");
    let text = with(
        "action = \"accept\"\n\n[[nat",
        "action = \"accept\"\nrate_limit = \"0/second\"\n\n[[nat",
    );
    expect_only(&text, 66, 14, "rate limit count `0`");
}

#[test]
fn addresses_and_networks() {
    let d = expect_only(
        &with("lan = \"198.51.100.0/24\"", "lan = \"198.51.100.1/24\""),
        43,
        7,
        "network `198.51.100.1/24` has host bits set",
    );
    assert!(d.hint.starts_with("did you mean `198.51.100.0/24`?"));
    let d = expect_only(
        &with("address = \"192.0.2.2/30\"", "address = \"192.0.2.2\""),
        15,
        48,
        "address `192.0.2.2` has no prefix length",
    );
    assert!(d.hint.contains("192.0.2.2/24"));
    expect_only(
        &with(
            "gateway = \"203.0.113.254\"",
            "gateway = \"203.0.113.254/24\"",
        ),
        39,
        11,
        "has a prefix length where an address is expected",
    );
    expect_only(
        &with(
            "gateway = \"203.0.113.254\"",
            "gateway = \"198.51.100.254\"",
        ),
        39,
        11,
        "gateway 198.51.100.254 is not on a subnet of zone `outside` on nodes `a` and `b`",
    );
}

#[test]
fn nat_rule_keys_by_type() {
    expect_only(
        &with_last("to = \"web\"", "to = \"web\"\nout = \"inside\""),
        81,
        7,
        "`out` does not apply to dnat rules",
    );
    expect_only(
        &with_last("to = \"web\"", "to = \"lan\""),
        80,
        6,
        "DNAT target `lan` is not a single host",
    );
    expect_only(
        &with_last(
            "service = \"http\"\nto = \"web\"",
            "to = \"web\"\nto_port = 8080",
        ),
        80,
        11,
        "`to_port` needs a `service` of tcp or udp ports",
    );
    let d = expect_only(
        &with("type = \"dnat\"", "type = \"dant\""),
        76,
        8,
        "unknown NAT type `dant`",
    );
    assert_eq!(d.hint, "did you mean `dnat`?");
}

#[test]
fn all_errors_of_a_file_are_reported_in_source_order() {
    let text = BASE
        .replacen("priority = 100", "priority = 200", 1)
        .replacen("vrid = 52", "vrid = 300", 1)
        .replacen("interface = \"sync\"", "interface = \"synk\"", 1)
        .replacen("service = \"http\"\naction", "service = \"htp\"\naction", 1)
        .replacen("name = \"pub\"", "name = \"masq\"", 1);
    let errs = errors(&text);
    let at: Vec<(usize, usize)> = errs.iter().map(|d| (d.line, d.column)).collect();
    assert_eq!(
        at,
        [(12, 12), (30, 8), (35, 13), (64, 11), (75, 8)],
        "{}",
        show(&errs)
    );
    // Display prints every one of them with its hint.
    let shown = parse("t.toml", &text).unwrap_err().to_string();
    assert_eq!(shown.matches(": error: ").count(), 5);
    assert_eq!(shown.matches("\n    hint: ").count(), 5);
    assert!(shown.starts_with("t.toml:12:12: error: "));
}

#[test]
fn warnings_do_not_reject() {
    let text = with("[sync]", "[[vrrp.group]]\nname = \"empty\"\n\n[sync]");
    let cfg = parse("t.toml", &text).unwrap_or_else(|d| panic!("{d}"));
    let w: Vec<_> = cfg.warnings().warnings().collect();
    assert_eq!(w.len(), 1);
    assert_eq!((w[0].line, w[0].column), (34, 1));
    assert!(w[0].message.contains("VRRP group `empty` has no VIPs"));
}

#[test]
fn no_panic_on_any_prefix_or_byte_flip() {
    // Every truncation, plus a few byte substitutions at every position of the first
    // kilobyte: parse must return, never panic.
    for end in 0..=BASE.len() {
        if let Some(prefix) = BASE.get(..end) {
            let _ = parse("t.toml", prefix);
        }
    }
    let bytes = BASE.as_bytes();
    for i in 0..bytes.len().min(1024) {
        for b in [b'"', b'[', b'=', b'\n', b'9'] {
            let mut v = bytes.to_vec();
            v[i] = b;
            if let Ok(s) = std::str::from_utf8(&v) {
                let _ = parse("t.toml", s);
            }
        }
    }
}

#[test]
fn unknown_node_lists_the_known_ones() {
    let cfg = parse("t.toml", BASE).unwrap();
    let err = cfg.node_view("c").unwrap_err();
    assert_eq!(
        err.to_string(),
        "unknown node `c` in t.toml; the config defines: a, b"
    );
}
