//! `--refuse-private-addresses`: the relay connects to no address of the relay's own network
//! (loopback, private, link-local with the cloud metadata service, and the like), so that
//! whoever sets an endpoint URL cannot make the relay reach them (SSRF).
//!
//! The check is on the addresses the connection uses: the connectors (HTTP: transport.rs, NATS:
//! nats_sink.rs) resolve a name once, drop the refused addresses and connect only to the ones
//! left (a name that resolves to a public address when checked and a private one when connected
//! cannot slip through: there is one resolution, and it is the one connected to); an IP-literal
//! host is checked as it is.

use ipnet::{Ipv4Net, Ipv6Net};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// IPv4 ranges refused, and what each is. Whatever is not here is taken as public.
const V4: &[(Ipv4Net, &str)] = &[
    (
        net4([0, 0, 0, 0], 8),
        "an unspecified (\"this network\") address",
    ),
    (net4([10, 0, 0, 0], 8), "a private address (RFC 1918)"),
    (net4([100, 64, 0, 0], 10), "a shared (CGNAT) address"),
    (net4([127, 0, 0, 0], 8), "a loopback address"),
    (net4([169, 254, 0, 0], 16), "a link-local address"),
    (net4([172, 16, 0, 0], 12), "a private address (RFC 1918)"),
    (net4([192, 0, 0, 0], 24), "an IETF protocol address"),
    (net4([192, 0, 2, 0], 24), "a documentation address"),
    (net4([192, 88, 99, 0], 24), "a 6to4 relay address"),
    (net4([192, 168, 0, 0], 16), "a private address (RFC 1918)"),
    (net4([198, 18, 0, 0], 15), "a benchmarking address"),
    (net4([198, 51, 100, 0], 24), "a documentation address"),
    (net4([203, 0, 113, 0], 24), "a documentation address"),
    (net4([224, 0, 0, 0], 4), "a multicast address"),
    (net4([255, 255, 255, 255], 32), "the broadcast address"),
    (net4([240, 0, 0, 0], 4), "a reserved address"),
];

/// IPv6 ranges refused outright (those that embed an IPv4 address are checked by it).
const V6: &[(Ipv6Net, &str)] = &[
    (
        net6([0, 0, 0, 0, 0, 0, 0, 0], 128),
        "the unspecified address",
    ),
    (net6([0, 0, 0, 0, 0, 0, 0, 1], 128), "a loopback address"),
    (
        net6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48),
        "a local NAT64 address",
    ),
    (
        net6([0x100, 0, 0, 0, 0, 0, 0, 0], 64),
        "a discard-only address",
    ),
    (
        net6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32),
        "a documentation address",
    ),
    (
        net6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7),
        "a unique-local address",
    ),
    (
        net6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10),
        "a link-local address",
    ),
    (
        net6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10),
        "a site-local address",
    ),
    (
        net6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8),
        "a multicast address",
    ),
];

const fn net4(octets: [u8; 4], prefix: u8) -> Ipv4Net {
    Ipv4Net::new_assert(
        Ipv4Addr::new(octets[0], octets[1], octets[2], octets[3]),
        prefix,
    )
}

const fn net6(s: [u16; 8], prefix: u8) -> Ipv6Net {
    Ipv6Net::new_assert(
        Ipv6Addr::new(s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]),
        prefix,
    )
}

/// Why this address is refused (`"a loopback address"`), or None when it is public.
pub fn refusal(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => refusal_v4(v4),
        IpAddr::V6(v6) => {
            if let Some((_, why)) = V6.iter().find(|(net, _)| net.contains(&v6)) {
                return Some(why);
            }
            // Forms that carry an IPv4 address the packets end up at: mapped (::ffff:a.b.c.d),
            // compatible (::a.b.c.d), NAT64 (64:ff9b::a.b.c.d) and 6to4 (2002:aabb:ccdd::).
            embedded_v4(v6).and_then(refusal_v4)
        }
    }
}

fn refusal_v4(ip: Ipv4Addr) -> Option<&'static str> {
    V4.iter()
        .find(|(net, _)| net.contains(&ip))
        .map(|(_, why)| *why)
}

fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let low = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        [0, 0, 0, 0, 0, 0xffff, _, _] | [0, 0, 0, 0, 0, 0, _, _] => Some(low),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(low),
        [0x2002, a, b, ..] => Some(Ipv4Addr::new(
            (a >> 8) as u8,
            a as u8,
            (b >> 8) as u8,
            b as u8,
        )),
        _ => None,
    }
}

/// A refused connection; its text is the attempt's error (delivery_status.last_error).
#[derive(Debug, Clone, PartialEq)]
pub struct Refused(String);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "refused: {} (--refuse-private-addresses)", self.0)
    }
}

impl std::error::Error for Refused {}

impl Refused {
    /// A refusal saying why (`"127.0.0.1 is a loopback address"`).
    pub fn new(why: String) -> Refused {
        Refused(why)
    }
}

/// Why a resolution gave nothing to connect to.
#[derive(Debug)]
pub enum Unresolved {
    /// The name did not resolve.
    Lookup(std::io::Error),
    /// Every address it resolved to is refused.
    Refused(Refused),
}

impl fmt::Display for Unresolved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unresolved::Lookup(error) => write!(f, "cannot resolve: {error}"),
            Unresolved::Refused(refused) => refused.fmt(f),
        }
    }
}

/// Resolve `host` (a name or an IP literal, IPv6 with or without brackets) with the system
/// resolver and keep the allowed addresses, with `port`: the addresses to connect to. When
/// every address is refused, the refusal names the first.
pub async fn allowed_addresses(host: &str, port: u16) -> Result<Vec<SocketAddr>, Unresolved> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let found: Vec<SocketAddr> = match bare.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((bare, port))
            .await
            .map_err(Unresolved::Lookup)?
            .collect(),
    };
    let (allowed, refused): (Vec<SocketAddr>, Vec<SocketAddr>) = found
        .into_iter()
        .partition(|address| refusal(address.ip()).is_none());
    if allowed.is_empty() {
        if let Some(address) = refused.first() {
            let why = refusal(address.ip()).unwrap_or("refused");
            let text = if bare.parse::<IpAddr>().is_ok() {
                format!("{} is {why}", address.ip())
            } else {
                format!("{bare} resolves to {}, {why}", address.ip())
            };
            return Err(Unresolved::Refused(Refused(text)));
        }
    }
    Ok(allowed)
}

/// The check of a URL's host when it is an IP address (the client does not resolve those).
pub fn check_url(url: &reqwest::Url) -> Result<(), Refused> {
    match url.host_str() {
        Some(host) => check_host(host),
        None => Ok(()),
    }
}

/// The check of a host when it is an IP address (with or without brackets); a name is left to
/// the resolver.
pub fn check_host(host: &str) -> Result<(), Refused> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<IpAddr>() {
        Ok(ip) => match refusal(ip) {
            Some(why) => Err(Refused(format!("{ip} is {why}"))),
            None => Ok(()),
        },
        Err(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_classified() {
        let cases: &[(&str, Option<&str>)] = &[
            ("127.0.0.1", Some("a loopback address")),
            ("127.255.255.254", Some("a loopback address")),
            ("10.1.2.3", Some("a private address (RFC 1918)")),
            ("172.16.0.1", Some("a private address (RFC 1918)")),
            ("172.31.255.255", Some("a private address (RFC 1918)")),
            ("172.32.0.1", None),
            ("192.168.1.1", Some("a private address (RFC 1918)")),
            ("169.254.169.254", Some("a link-local address")),
            ("100.64.0.1", Some("a shared (CGNAT) address")),
            ("100.127.255.255", Some("a shared (CGNAT) address")),
            ("100.128.0.1", None),
            ("0.0.0.0", Some("an unspecified (\"this network\") address")),
            ("224.0.0.1", Some("a multicast address")),
            ("239.255.255.250", Some("a multicast address")),
            ("255.255.255.255", Some("the broadcast address")),
            ("240.0.0.1", Some("a reserved address")),
            ("192.0.2.1", Some("a documentation address")),
            ("198.18.0.1", Some("a benchmarking address")),
            ("8.8.8.8", None),
            ("1.1.1.1", None),
            ("93.184.215.14", None),
            ("::1", Some("a loopback address")),
            ("::", Some("the unspecified address")),
            ("fc00::1", Some("a unique-local address")),
            ("fd12:3456::1", Some("a unique-local address")),
            ("fe80::1", Some("a link-local address")),
            ("ff02::1", Some("a multicast address")),
            ("::ffff:127.0.0.1", Some("a loopback address")),
            ("::ffff:10.0.0.1", Some("a private address (RFC 1918)")),
            ("::ffff:169.254.169.254", Some("a link-local address")),
            ("::ffff:8.8.8.8", None),
            ("::127.0.0.1", Some("a loopback address")),
            ("64:ff9b::192.168.0.1", Some("a private address (RFC 1918)")),
            ("64:ff9b::8.8.8.8", None),
            ("2002:7f00:1::", Some("a loopback address")),
            ("2002:808:808::", None),
            ("2001:db8::1", Some("a documentation address")),
            ("2606:4700:4700::1111", None),
            ("2a00:1450:4001:82b::200e", None),
        ];
        for (text, expected) in cases {
            let ip: IpAddr = text.parse().unwrap();
            assert_eq!(refusal(ip), *expected, "{text}");
        }
    }

    #[test]
    fn literal_hosts_are_checked_and_names_left_to_the_resolver() {
        let check = |url: &str| check_url(&reqwest::Url::parse(url).unwrap());
        assert_eq!(
            check("http://127.0.0.1:8080/x").unwrap_err().to_string(),
            "refused: 127.0.0.1 is a loopback address (--refuse-private-addresses)"
        );
        assert!(check("https://[::1]/").is_err());
        assert!(check("https://[::ffff:7f00:1]/").is_err());
        // The URL parser turns other spellings of IPv4 addresses into dotted ones.
        assert!(check("http://2130706433/").is_err());
        assert!(check("http://0x7f.1/").is_err());
        assert!(check("https://8.8.8.8/").is_ok());
        assert!(check("https://example.com/").is_ok());
    }

    #[tokio::test]
    async fn names_of_private_addresses_are_refused_when_resolved() {
        let error = match allowed_addresses("localhost", 80).await {
            Ok(addresses) => panic!("resolved: {addresses:?}"),
            Err(error) => error.to_string(),
        };
        assert!(
            error.starts_with("refused: localhost resolves to "),
            "{error}"
        );
        assert!(error.contains("loopback"), "{error}");
        let error = allowed_addresses("[::1]", 80)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("refused: ::1 is a loopback address"),
            "{error}"
        );
        let public = allowed_addresses("8.8.8.8", 443).await.unwrap();
        assert_eq!(public, vec!["8.8.8.8:443".parse().unwrap()]);
    }
}
