//! Fuzzes the VRRPv3 receive path: whole IPv4 packets and IPv6 payloads, then the
//! configuration checks. Nothing may panic; whatever decodes must re-encode to the same
//! message (the codec is exact).
#![no_main]

use std::net::{IpAddr, Ipv6Addr};

use libfuzzer_sys::fuzz_target;
use twinwall_vrrp::packet::{check_configured, decode_ipv4, decode_ipv6, Advert};

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = decode_ipv4(data) {
        let _ = check_configured(&r.advert, 51, &["203.0.113.1".parse().unwrap()]);
        let ihl = usize::from(data[0] & 0x0f) * 4;
        let again = r.advert.encode(r.src, r.dst);
        assert_eq!(&data[ihl..ihl + again.len()], &again[..]);
    }
    let (src, dst): (Ipv6Addr, Ipv6Addr) = ("fe80::1".parse().unwrap(), "ff02::12".parse().unwrap());
    if let Ok(r) = decode_ipv6(data, src, dst, 255) {
        assert_eq!(r.advert.encode(IpAddr::V6(src), IpAddr::V6(dst)), data);
        let _ = Advert::decode(data, src.into(), dst.into());
    }
});
