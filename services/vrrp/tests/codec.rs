//! RFC 5798 §5 codec: byte vectors both ways (checksums computed independently) and the
//! §7.1 receive checks, one malformed packet per drop reason.

use std::net::{IpAddr, Ipv6Addr};

use twinwall_vrrp::packet::{
    Advert, DecodeError, check_configured, decode_ipv4, decode_ipv6, ipv4_header,
};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn v4_advert() -> Advert {
    Advert {
        vrid: 51,
        priority: 200,
        max_advert_int_cs: 10,
        addresses: vec![ip("203.0.113.1")],
    }
}

/// VRID 51, priority 200, 100 ms, VIP 203.0.113.1, from 203.0.113.2 to 224.0.0.18; the
/// checksum includes the IPv4 pseudo-header (§5.2.8).
const V4: [u8; 12] = [0x31, 51, 200, 1, 0x00, 0x0a, 0xae, 0x2c, 203, 0, 113, 1];

const V6: &str =
    "313364020064 10c2 20010db8000000000000000000000001 20010db8000100000000000000000001";

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn v4_packet(ttl: u8, msg: &[u8]) -> Vec<u8> {
    let mut p = ipv4_header("203.0.113.2".parse().unwrap(), msg.len()).to_vec();
    p[8] = ttl;
    p.extend_from_slice(msg);
    p
}

#[test]
fn ipv4_advert_encodes_and_decodes_exactly() {
    let enc = v4_advert().encode(ip("203.0.113.2"), ip("224.0.0.18"));
    assert_eq!(enc, V4);
    let dec = Advert::decode(&V4, ip("203.0.113.2"), ip("224.0.0.18")).unwrap();
    assert_eq!(dec, v4_advert());
    let rcv = decode_ipv4(&v4_packet(255, &V4)).unwrap();
    assert_eq!(
        (rcv.src, rcv.ttl, rcv.advert),
        (ip("203.0.113.2"), 255, v4_advert())
    );
}

#[test]
fn ipv6_advert_encodes_and_decodes_exactly() {
    let adv = Advert {
        vrid: 51,
        priority: 100,
        max_advert_int_cs: 100,
        addresses: vec![ip("2001:db8::1"), ip("2001:db8:1::1")],
    };
    let (src, dst): (Ipv6Addr, Ipv6Addr) =
        ("fe80::1".parse().unwrap(), "ff02::12".parse().unwrap());
    assert_eq!(adv.encode(src.into(), dst.into()), hex(V6));
    let rcv = decode_ipv6(&hex(V6), src, dst, 255).unwrap();
    assert_eq!(rcv.advert, adv);
}

#[test]
fn checksum_covers_the_pseudo_header() {
    // The same bytes from another source fail: the source is in the pseudo-header.
    let e = Advert::decode(&V4, ip("203.0.113.3"), ip("224.0.0.18")).unwrap_err();
    assert_eq!(e.reason(), "bad_checksum");
}

#[test]
fn rfc5798_7_1_malformed_packets_are_rejected_by_reason() {
    let with = |i: usize, v: u8| {
        let mut m = V4.to_vec();
        m[i] = v;
        m
    };
    let cases: Vec<(Vec<u8>, u8, &str)> = vec![
        (V4.to_vec(), 254, "bad_ttl"),
        (with(0, 0x21), 255, "bad_version"),
        (with(0, 0x32), 255, "bad_type"),
        (with(7, 0x00), 255, "bad_checksum"),
        (with(3, 2), 255, "bad_length"),
        (V4[..5].to_vec(), 255, "truncated"),
        (V4[..10].to_vec(), 255, "bad_length"),
    ];
    for (msg, ttl, reason) in cases {
        let e = decode_ipv4(&v4_packet(ttl, &msg)).unwrap_err();
        assert_eq!(e.reason(), reason, "{msg:02x?} ttl {ttl}: {e}");
    }
    // A zero interval with a valid checksum.
    let zero = Advert {
        max_advert_int_cs: 0,
        ..v4_advert()
    }
    .encode(ip("203.0.113.2"), ip("224.0.0.18"));
    assert_eq!(
        decode_ipv4(&v4_packet(255, &zero)).unwrap_err(),
        DecodeError::ZeroInterval
    );
    // IP-level garbage.
    assert_eq!(decode_ipv4(&[0x45; 10]).unwrap_err().reason(), "truncated");
    let mut not_vrrp = v4_packet(255, &V4);
    not_vrrp[9] = 17;
    assert_eq!(
        decode_ipv4(&not_vrrp).unwrap_err().reason(),
        "bad_ip_header"
    );
}

#[test]
fn rfc5798_7_1_vrid_and_address_list_must_match_the_configuration() {
    let a = v4_advert();
    assert!(check_configured(&a, 51, &[ip("203.0.113.1")]).is_ok());
    assert_eq!(
        check_configured(&a, 52, &[ip("203.0.113.1")])
            .unwrap_err()
            .reason(),
        "unknown_vrid"
    );
    assert_eq!(
        check_configured(&a, 51, &[ip("203.0.113.9")])
            .unwrap_err()
            .reason(),
        "address_mismatch"
    );
    // Order on the wire is not significant.
    let two = Advert {
        addresses: vec![ip("203.0.113.1"), ip("203.0.113.5")],
        ..a
    };
    assert!(check_configured(&two, 51, &[ip("203.0.113.5"), ip("203.0.113.1")]).is_ok());
}

#[test]
fn decoder_never_panics_on_any_short_input() {
    // Every prefix and every single-byte corruption of a valid packet is handled.
    let pkt = v4_packet(255, &V4);
    for n in 0..=pkt.len() {
        let _ = decode_ipv4(&pkt[..n]);
        for b in [0u8, 0xff, 0x0f] {
            let mut p = pkt[..n].to_vec();
            if let Some(x) = p.get_mut(n.saturating_sub(1)) {
                *x = b;
            }
            let _ = decode_ipv4(&p);
            let _ = decode_ipv6(&p, Ipv6Addr::LOCALHOST, Ipv6Addr::LOCALHOST, 255);
        }
    }
}

/// An advert captured from Debian's keepalived 2.2.7 (`vrrp_version 3`, VRID 51, priority
/// 100, `advert_int 0.1`, VIP 203.0.113.1/24) on 203.0.113.3, IPv4 header included, by
/// `tests/netns_vrrp_keepalived.rs`.
const KEEPALIVED_V4: &str = "45c0002000010000ff709e96cb007103e0000012 31336401000a122ccb007101";

#[test]
fn a_real_keepalived_advert_decodes_exactly_and_reencodes_bit_for_bit() {
    let pkt = hex(KEEPALIVED_V4);
    let rcv = decode_ipv4(&pkt).unwrap();
    assert_eq!(
        (rcv.src, rcv.dst, rcv.ttl),
        (ip("203.0.113.3"), ip("224.0.0.18"), 255)
    );
    let want = Advert {
        vrid: 51,
        priority: 100,
        max_advert_int_cs: 10,
        addresses: vec![ip("203.0.113.1")],
    };
    assert_eq!(rcv.advert, want);
    // Our encoder computes keepalived's checksum (pseudo-header included).
    assert_eq!(want.encode(rcv.src, rcv.dst), pkt[20..]);
}
