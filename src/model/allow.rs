//! Allow-list entries: the networks a tenant's database accepts connections from. Parsing is
//! strict and normalises: a bare address is one host (/32 or /128), host bits must be zero, and
//! every refusal says what would be valid, so nothing ambiguous ever reaches pg_hba.conf.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use super::ValidationError;

const FIELD: &str = "ipAddress";

/// A validated, normalised network: `203.0.113.5/32`, `192.168.1.0/24`, `2001:db8::/32`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AllowEntry(IpNetwork);

impl AllowEntry {
    pub fn parse(input: &str) -> Result<Self, ValidationError> {
        let s = input.trim();
        let err = |m: String| ValidationError::new(FIELD, m);
        if s.is_empty() {
            return Err(err("is required: an IPv4 or IPv6 address or network, e.g. 203.0.113.5 or 192.168.1.0/24".into()));
        }
        if s.contains('%') {
            return Err(err(format!(
                "{s:?} has a zone id (%...); zone ids mean nothing to a remote server, leave it out"
            )));
        }
        let (addr_part, prefix_part) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr = parse_addr(addr_part).ok_or_else(|| {
            err(format!("{s:?} is not an IP address or network; use e.g. 203.0.113.5, 192.168.1.0/24 or 2001:db8::/32"))
        })?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix_part {
            None => max,
            Some(p) => {
                let valid_digits =
                    !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit());
                let n: u8 = if valid_digits {
                    p.parse().unwrap_or(u8::MAX)
                } else {
                    u8::MAX
                };
                if n > max {
                    return Err(err(format!(
                        "{s:?}: the prefix length must be between 1 and {max}"
                    )));
                }
                n
            }
        };
        if prefix == 0 {
            return Err(err(format!(
                "{s:?} would allow every address; an empty allow-list already means \"any address, TLS only\": remove the entries instead"
            )));
        }
        if let IpAddr::V6(v6) = addr {
            // ::ffff:a.b.c.d is an IPv4 client written as IPv6; whether a server matches it
            // against IPv4 connections differs between programs, so the list says it plainly.
            if let Some(v4) = v6.to_ipv4_mapped() {
                return Err(err(format!(
                    "{s:?} is an IPv4-mapped IPv6 address; write the IPv4 address or network \
                     instead (e.g. {v4})"
                )));
            }
        }
        let net = IpNetwork::new(addr, prefix).map_err(|e| err(format!("{s:?}: {e}")))?;
        if net.network() != addr {
            return Err(err(format!(
                "{s:?} has host bits set; did you mean {}/{prefix} (the network) or {addr} (the single host)?",
                net.network()
            )));
        }
        Ok(Self(net))
    }

    pub fn network(&self) -> IpNetwork {
        self.0
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains(ip)
    }
}

/// Addresses in their plain forms only: no leading zeros in IPv4 octets (`010.0.0.1` reads as
/// octal in some tools and decimal in others), no IPv4-mapped tricks beyond what Rust accepts.
fn parse_addr(s: &str) -> Option<IpAddr> {
    if s.contains(':') {
        return s.parse::<Ipv6Addr>().ok().map(IpAddr::V6);
    }
    let octets: Vec<&str> = s.split('.').collect();
    if octets.len() != 4
        || octets
            .iter()
            .any(|o| o.is_empty() || o.len() > 3 || (o.len() > 1 && o.starts_with('0')))
    {
        return None;
    }
    s.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
}

impl fmt::Display for AllowEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.0.network(), self.0.prefix())
    }
}

impl TryFrom<String> for AllowEntry {
    type Error = ValidationError;
    fn try_from(s: String) -> Result<Self, ValidationError> {
        Self::parse(&s)
    }
}

impl From<AllowEntry> for String {
    fn from(e: AllowEntry) -> String {
        e.to_string()
    }
}

impl From<AllowEntry> for IpNetwork {
    fn from(e: AllowEntry) -> IpNetwork {
        e.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> String {
        AllowEntry::parse(s)
            .unwrap_or_else(|e| panic!("{s}: {e}"))
            .to_string()
    }

    fn refused(s: &str) -> String {
        AllowEntry::parse(s).expect_err(s).message
    }

    #[test]
    fn addresses_and_networks_are_normalised() {
        assert_eq!(ok("203.0.113.5"), "203.0.113.5/32");
        assert_eq!(ok(" 203.0.113.5/32 "), "203.0.113.5/32");
        assert_eq!(ok("189.0.0.0/8"), "189.0.0.0/8");
        assert_eq!(ok("192.168.1.0/24"), "192.168.1.0/24");
        assert_eq!(ok("::1"), "::1/128");
        assert_eq!(ok("2001:DB8::/32"), "2001:db8::/32");
        assert_eq!(ok("2001:db8:0:0::/64"), "2001:db8::/64");
    }

    #[test]
    fn invalid_entries_say_what_would_be_valid() {
        assert!(refused("192.168.1.5/24").contains("did you mean 192.168.1.0/24"));
        assert!(refused("2001:db8::1/32").contains("2001:db8::/32"));
        assert!(refused("10.0.0.0/33").contains("between 1 and 32"));
        assert!(refused("::/129").contains("between 1 and 128"));
        assert!(refused("0.0.0.0/0").contains("empty allow-list"));
        assert!(refused("::/0").contains("empty allow-list"));
        assert!(refused("fe80::1%eth0").contains("zone id"));
        assert!(refused("010.0.0.1").contains("not an IP address"));
        assert!(refused("1.2.3").contains("not an IP address"));
        assert!(refused("example.com").contains("not an IP address"));
        assert!(refused("1.2.3.4/").contains("prefix"));
        assert!(refused("1.2.3.4/+8").contains("prefix"));
        assert!(refused("1.2.3.4/24 trust").contains("prefix"));
        assert!(refused("1.2.3.4\nhost all all 0.0.0.0/0 trust").contains("not an IP address"));
        assert!(refused("").contains("required"));
        assert!(refused("::ffff:0.0.0.0/96").contains("IPv4-mapped"));
        assert!(refused("::ffff:203.0.113.5").contains("write the IPv4"));
        assert!(refused("::ffff:c000:0/112").contains("IPv4-mapped"));
    }
}
