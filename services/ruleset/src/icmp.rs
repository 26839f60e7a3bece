//! ICMP and ICMPv6 type names as nft spells them, with their numbers (the lints need the
//! numbers; the compiler rejects names nft would not know).

/// nft's ICMP (v4) type names and numbers.
pub const ICMP_TYPES: &[(&str, u8)] = &[
    ("echo-reply", 0),
    ("destination-unreachable", 3),
    ("source-quench", 4),
    ("redirect", 5),
    ("echo-request", 8),
    ("router-advertisement", 9),
    ("router-solicitation", 10),
    ("time-exceeded", 11),
    ("parameter-problem", 12),
    ("timestamp-request", 13),
    ("timestamp-reply", 14),
    ("info-request", 15),
    ("info-reply", 16),
    ("address-mask-request", 17),
    ("address-mask-reply", 18),
];

/// nft's ICMPv6 type names and numbers.
pub const ICMPV6_TYPES: &[(&str, u8)] = &[
    ("destination-unreachable", 1),
    ("packet-too-big", 2),
    ("time-exceeded", 3),
    ("parameter-problem", 4),
    ("echo-request", 128),
    ("echo-reply", 129),
    ("mld-listener-query", 130),
    ("mld-listener-report", 131),
    ("mld-listener-done", 132),
    ("mld-listener-reduction", 132),
    ("nd-router-solicit", 133),
    ("nd-router-advert", 134),
    ("nd-neighbor-solicit", 135),
    ("nd-neighbor-advert", 136),
    ("nd-redirect", 137),
    ("router-renumbering", 138),
    ("ind-neighbor-solicit", 141),
    ("ind-neighbor-advert", 142),
    ("mld2-listener-report", 143),
];

/// The number of an ICMP type name, if nft knows it.
pub fn icmp_type(name: &str) -> Option<u8> {
    ICMP_TYPES.iter().find(|t| t.0 == name).map(|t| t.1)
}

/// The number of an ICMPv6 type name, if nft knows it.
pub fn icmpv6_type(name: &str) -> Option<u8> {
    ICMPV6_TYPES.iter().find(|t| t.0 == name).map(|t| t.1)
}
