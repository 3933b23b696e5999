//! Which IP addresses a webhook or push delivery may connect to (the SSRF guard).
//!
//! Webhook and push URLs come from users, so a delivery must never reach the cluster's own
//! network: loopback, private ranges, the cloud metadata service, NAT64 or 6to4 forms of
//! those, and so on. Rather than a handful of `is_*` checks (which missed 6to4, Teredo,
//! NAT64, benchmarking and more), every block of the IANA special-purpose registries is
//! listed below with its name and RFC, and an address in any of them is refused:
//! - IPv4: <https://www.iana.org/assignments/iana-ipv4-special-registry> (plus multicast,
//!   224.0.0.0/4, from the multicast registry);
//! - IPv6: <https://www.iana.org/assignments/iana-ipv6-special-registry>; and, since only
//!   2000::/3 is allocated as global unicast, any IPv6 address outside it is refused too
//!   (multicast, unique-local, link-local, site-local, the reserved ::/8 ...).
//!
//! Blocks whose registry entry says "globally reachable" (AS112, AMT, anycast services) are
//! refused all the same: no user's webhook lives there. Addresses that embed an IPv4
//! address (IPv4-mapped, IPv4-compatible, NAT64 64:ff9b::/96, 6to4 2002::/16) are judged by
//! the IPv4 address they carry, since that is where the packets go.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// One special-purpose block: network, prefix length, what it is.
type V4Block = (Ipv4Addr, u8, &'static str);
type V6Block = (Ipv6Addr, u8, &'static str);

/// The IANA IPv4 Special-Purpose Address Registry (as of 2025), every entry, plus multicast.
const V4_SPECIAL: &[V4Block] = &[
    (Ipv4Addr::new(0, 0, 0, 0), 8, "\"this network\" (RFC 791)"),
    (Ipv4Addr::new(10, 0, 0, 0), 8, "private-use (RFC 1918)"),
    (
        Ipv4Addr::new(100, 64, 0, 0),
        10,
        "shared address space / carrier-grade NAT (RFC 6598)",
    ),
    (Ipv4Addr::new(127, 0, 0, 0), 8, "loopback (RFC 1122)"),
    (
        Ipv4Addr::new(169, 254, 0, 0),
        16,
        "link-local, cloud metadata (RFC 3927)",
    ),
    (Ipv4Addr::new(172, 16, 0, 0), 12, "private-use (RFC 1918)"),
    // Includes 192.0.0.0/29 (IPv4 service continuity), .8 (dummy), .9 (PCP anycast),
    // .10 (TURN anycast), .170 and .171 (NAT64/DNS64 discovery).
    (Ipv4Addr::new(192, 0, 0, 0), 24, "IETF protocol assignments (RFC 6890)"),
    (Ipv4Addr::new(192, 0, 2, 0), 24, "documentation TEST-NET-1 (RFC 5737)"),
    (Ipv4Addr::new(192, 31, 196, 0), 24, "AS112-v4 (RFC 7535)"),
    (Ipv4Addr::new(192, 52, 193, 0), 24, "AMT (RFC 7450)"),
    (
        Ipv4Addr::new(192, 88, 99, 0),
        24,
        "deprecated 6to4 relay anycast (RFC 7526)",
    ),
    (Ipv4Addr::new(192, 168, 0, 0), 16, "private-use (RFC 1918)"),
    (Ipv4Addr::new(192, 175, 48, 0), 24, "AS112 direct delegation (RFC 7534)"),
    (Ipv4Addr::new(198, 18, 0, 0), 15, "benchmarking (RFC 2544)"),
    (
        Ipv4Addr::new(198, 51, 100, 0),
        24,
        "documentation TEST-NET-2 (RFC 5737)",
    ),
    (Ipv4Addr::new(203, 0, 113, 0), 24, "documentation TEST-NET-3 (RFC 5737)"),
    (Ipv4Addr::new(224, 0, 0, 0), 4, "multicast (RFC 5771)"),
    // Includes 255.255.255.255/32, the limited broadcast address (RFC 919).
    (
        Ipv4Addr::new(240, 0, 0, 0),
        4,
        "reserved / limited broadcast (RFC 1112)",
    ),
];

/// The IANA IPv6 Special-Purpose Address Registry (as of 2025), every entry inside
/// 2000::/3 (everything outside it is refused wholesale, see [`classify_v6`]). The blocks
/// that embed an IPv4 address are handled before this table is consulted.
const V6_SPECIAL: &[V6Block] = &[
    // Includes Teredo 2001::/32 (RFC 4380), PCP/TURN/DNS-SD anycast 2001:1::1-3, AMT
    // 2001:3::/32, AS112-v6 2001:4:112::/48, ORCHID 2001:10::/28, ORCHIDv2 2001:20::/28 and
    // drone DETs 2001:30::/28.
    (
        Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0),
        23,
        "IETF protocol assignments, Teredo (RFC 2928, RFC 4380)",
    ),
    (
        Ipv6Addr::new(0x2001, 0x2, 0, 0, 0, 0, 0, 0),
        48,
        "benchmarking (RFC 5180)",
    ),
    (
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0),
        32,
        "documentation (RFC 3849)",
    ),
    (
        Ipv6Addr::new(0x2620, 0x4f, 0x8000, 0, 0, 0, 0, 0),
        48,
        "AS112 direct delegation (RFC 7534)",
    ),
    (
        Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0),
        20,
        "documentation (RFC 9637)",
    ),
];

/// Entries of the IPv6 registry outside 2000::/3, named for the reason given (they are
/// refused anyway, as not global unicast).
const V6_OUTSIDE_GLOBAL: &[V6Block] = &[
    (Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 1), 128, "loopback (RFC 4291)"),
    (Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 0), 128, "unspecified (RFC 4291)"),
    (
        Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0),
        48,
        "local-use IPv4/IPv6 translation (RFC 8215)",
    ),
    (Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0), 64, "discard-only (RFC 6666)"),
    (Ipv6Addr::new(0x100, 0, 0, 1, 0, 0, 0, 0), 64, "dummy prefix (RFC 9780)"),
    (
        Ipv6Addr::new(0x5f00, 0, 0, 0, 0, 0, 0, 0),
        16,
        "segment routing SIDs (RFC 9602)",
    ),
    (Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7, "unique-local (RFC 4193)"),
    (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10, "link-local (RFC 4291)"),
    (
        Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0),
        10,
        "deprecated site-local (RFC 3879)",
    ),
    (Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8, "multicast (RFC 4291)"),
];

fn in_v4(ip: Ipv4Addr, (net, len, _): &V4Block) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(*len)).unwrap_or(0);
    u32::from(ip) & mask == u32::from(*net) & mask
}

fn in_v6(ip: Ipv6Addr, (net, len, _): &V6Block) -> bool {
    let mask = u128::MAX.checked_shl(128 - u32::from(*len)).unwrap_or(0);
    u128::from(ip) & mask == u128::from(*net) & mask
}

/// The IPv4 address an IPv6 address carries where packets to it end up at that IPv4
/// address: IPv4-mapped `::ffff:a.b.c.d`, IPv4-compatible `::a.b.c.d` (deprecated),
/// NAT64 well-known prefix `64:ff9b::a.b.c.d` (RFC 6052) and 6to4 `2002:aabb:ccdd::/48`.
fn embedded_v4(ip: Ipv6Addr) -> Option<(Ipv4Addr, &'static str)> {
    let s = ip.segments();
    let low = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    match s {
        [0, 0, 0, 0, 0, 0xffff, hi, lo] => Some((low(hi, lo), "IPv4-mapped")),
        // `::` and `::1` are not IPv4-compatible: they are in the table.
        [0, 0, 0, 0, 0, 0, hi, lo] if (hi, lo) > (0, 1) => Some((low(hi, lo), "IPv4-compatible")),
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => Some((low(hi, lo), "NAT64")),
        [0x2002, hi, lo, ..] => Some((low(hi, lo), "6to4")),
        _ => None,
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<String> {
    V4_SPECIAL
        .iter()
        .find(|b| in_v4(ip, b))
        .map(|(_, _, name)| (*name).to_owned())
}

fn classify_v6(ip: Ipv6Addr) -> Option<String> {
    if let Some((v4, form)) = embedded_v4(ip) {
        return classify_v4(v4).map(|why| format!("{form} form of {v4}, {why}"));
    }
    if let Some((_, _, name)) = V6_OUTSIDE_GLOBAL.iter().chain(V6_SPECIAL).find(|b| in_v6(ip, b)) {
        return Some((*name).to_owned());
    }
    // Global unicast is 2000::/3; the rest of the space is reserved or special.
    (ip.segments()[0] & 0xe000 != 0x2000).then(|| "not global unicast (outside 2000::/3)".to_owned())
}

/// Why `ip` may not be the target of a webhook or push delivery (the registry block it is
/// in), or `None` if it is an ordinary public address.
pub fn special_purpose(ip: IpAddr) -> Option<String> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

/// Whether `ip` is one a webhook or push URL must not reach without
/// `TIDINGS_WEBHOOK_ALLOW_PRIVATE` (see [`special_purpose`] for the reason).
pub fn is_internal_ip(ip: IpAddr) -> bool {
    special_purpose(ip).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(ip: &str) -> bool {
        is_internal_ip(ip.parse().unwrap())
    }

    #[test]
    fn every_special_ipv4_block_is_refused_at_both_ends() {
        for (net, len, name) in V4_SPECIAL {
            let first = u32::from(*net);
            let last = first | u32::MAX.checked_shr(u32::from(*len)).unwrap_or(0);
            for ip in [first, last] {
                assert!(
                    is_internal_ip(IpAddr::V4(ip.into())),
                    "{} in {name}",
                    Ipv4Addr::from(ip)
                );
            }
        }
    }

    #[test]
    fn addresses_the_old_check_missed_are_refused() {
        for ip in [
            "198.18.0.1",
            "198.19.255.254",
            "100.64.0.1",
            "100.127.255.255",
            "192.0.0.171",
            "240.0.0.1",
            "255.255.255.255",
            "224.0.0.1",
            "192.88.99.1",
            // 6to4 of 127.0.0.1 and 169.254.169.254; Teredo; local-use NAT64; NAT64 of 10/8.
            "2002:7f00:1::1",
            "2002:a9fe:a9fe::",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "2001::1",
            "64:ff9b:1::a00:1",
            "64:ff9b::a00:1",
            "64:ff9b::7f00:1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "::10.0.0.1",
            "::",
            "::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "2001:db8::1",
            "3fff::1",
            "100::1",
            "5f00::1",
            "2001:2::1",
            "2001:20::1",
            "4000::1",
        ] {
            assert!(refused(ip), "{ip} should be refused");
        }
    }

    #[test]
    fn public_addresses_and_their_embeddings_pass() {
        for ip in [
            "93.184.216.34",
            "8.8.8.8",
            "1.1.1.1",
            "198.20.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "2a00:1450:4001::1",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert!(!refused(ip), "{ip} should pass");
        }
    }

    #[test]
    fn the_reason_names_the_block_and_the_embedded_address() {
        let why = special_purpose("2002:7f00:1::1".parse().unwrap()).unwrap();
        assert!(
            why.contains("6to4") && why.contains("127.0.0.1") && why.contains("loopback"),
            "{why}"
        );
        let why = special_purpose("2001::1".parse().unwrap()).unwrap();
        assert!(why.contains("Teredo"), "{why}");
    }
}
