//! Name constraints of the network's regional terminal CA (RFC 5280 §4.2.1.10): the DNS and
//! IP subtrees the sites' gateways live in. A physician installs the CA as a trusted root for
//! the in-tunnel page; with its permitted subtrees a certificate it signs for any other web
//! site fails verification in browsers and in rustls/webpki. Written with rcgen, read back
//! with x509-parser (`site add` checks a new site's hosts against the CA it signs with).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnetwork::IpNetwork;
use rcgen::{CidrSubnet, GeneralSubtree, NameConstraints};
use x509_parser::extensions::{GeneralName, ParsedExtension};

use super::{parse_cert, PkiError};

/// One permitted subtree: a DNS domain (the name itself and every name below it) or an IP
/// network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Permit {
    Dns(String),
    Ip(IpNetwork),
}

impl fmt::Display for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Permit::Dns(d) => write!(f, "DNS:{d}"),
            Permit::Ip(n) => write!(f, "IP:{n}"),
        }
    }
}

impl FromStr for Permit {
    type Err = PkiError;

    /// `10.20.0.0/16`, `203.0.113.10` (a /32 or /128), or a DNS domain `seibo-net.example.jp`.
    fn from_str(s: &str) -> Result<Permit, PkiError> {
        let s = s.trim();
        if let Ok(n) = s.parse::<IpNetwork>() {
            return Ok(Permit::Ip(
                IpNetwork::new(n.network(), n.prefix())
                    .map_err(|e| PkiError::Invalid(format!("permitted network {s:?}: {e}")))?,
            ));
        }
        let d = s.trim_start_matches('.').to_ascii_lowercase();
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if d.is_empty() || d.len() > 253 || !d.split('.').all(label_ok) {
            return Err(PkiError::Invalid(format!(
                "permitted name {s:?} is neither an IP network (10.20.0.0/16) nor a DNS domain \
                 (gate.example.jp; punycode for IDNs)"
            )));
        }
        Ok(Permit::Dns(d))
    }
}

impl Permit {
    /// The subtree that holds exactly `host` (a DNS name or an IP address).
    pub fn for_host(host: &str) -> Result<Permit, PkiError> {
        match host.trim_matches(['[', ']']).parse::<IpAddr>() {
            Ok(ip) => Permit::from_str(&ip.to_string()),
            Err(_) => Permit::from_str(host),
        }
    }

    /// Whether `host` (a DNS name or an IP address) lies inside this subtree.
    pub fn permits(&self, host: &str) -> bool {
        let host = host.trim_matches(['[', ']']);
        match (self, host.parse::<IpAddr>()) {
            (Permit::Ip(n), Ok(ip)) => n.contains(ip),
            (Permit::Dns(d), Err(_)) => {
                let h = host.to_ascii_lowercase();
                h == *d || h.ends_with(&format!(".{d}"))
            }
            _ => false,
        }
    }

    fn subtree(&self) -> GeneralSubtree {
        match self {
            Permit::Dns(d) => GeneralSubtree::DnsName(d.clone()),
            Permit::Ip(n) => {
                GeneralSubtree::IpAddress(CidrSubnet::from_addr_prefix(n.network(), n.prefix()))
            }
        }
    }
}

/// The rcgen extension permitting exactly `permits` (nothing excluded: what is not
/// permitted is refused).
pub(super) fn name_constraints(permits: &[Permit]) -> Option<NameConstraints> {
    if permits.is_empty() {
        return None;
    }
    Some(NameConstraints {
        permitted_subtrees: permits.iter().map(Permit::subtree).collect(),
        excluded_subtrees: Vec::new(),
    })
}

/// The permitted subtrees of a CA certificate (DER), read with x509-parser; `None` when it
/// carries no name constraints.
pub fn permitted_subtrees(ca_der: &[u8]) -> Result<Option<Vec<Permit>>, PkiError> {
    let cert = parse_cert(ca_der)?;
    for ext in cert.extensions() {
        let ParsedExtension::NameConstraints(nc) = ext.parsed_extension() else {
            continue;
        };
        let mut out = Vec::new();
        for st in nc.permitted_subtrees.iter().flatten() {
            match &st.base {
                GeneralName::DNSName(d) => out.push(Permit::Dns(d.to_ascii_lowercase())),
                GeneralName::IPAddress(b) => out.push(Permit::Ip(ip_subtree(b)?)),
                other => {
                    return Err(PkiError::Parse(format!(
                        "name constraint of a kind seibo-gate does not write: {other:?}"
                    )))
                }
            }
        }
        return Ok(Some(out));
    }
    Ok(None)
}

/// An IP subtree as encoded: address then mask (8 or 32 bytes).
fn ip_subtree(b: &[u8]) -> Result<IpNetwork, PkiError> {
    let bad = || PkiError::Parse(format!("IP name constraint of {} bytes", b.len()));
    let (ip, mask): (IpAddr, Vec<u8>) = match b.len() {
        8 => {
            let a: [u8; 4] = b.get(..4).and_then(|s| s.try_into().ok()).ok_or_else(bad)?;
            (IpAddr::from(a), b.get(4..).unwrap_or_default().to_vec())
        }
        32 => {
            let a: [u8; 16] = b
                .get(..16)
                .and_then(|s| s.try_into().ok())
                .ok_or_else(bad)?;
            (IpAddr::from(a), b.get(16..).unwrap_or_default().to_vec())
        }
        _ => return Err(bad()),
    };
    let prefix: u32 = mask.iter().map(|m| m.count_ones()).sum();
    IpNetwork::new(ip, u8::try_from(prefix).map_err(|_| bad())?).map_err(|_| bad())
}

/// Whether `host` lies inside one of `permits`; with no constraints every host does.
pub fn host_permitted(permits: Option<&[Permit]>, host: &str) -> bool {
    permits.is_none_or(|p| p.iter().any(|p| p.permits(host)))
}
