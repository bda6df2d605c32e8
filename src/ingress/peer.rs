//! Who is at the other end of a connection, fixed once at the handshake: the ingress it came
//! through, its address, and the terminal credential it presented. Every later stage of the
//! request path reads these; none of them changes during the connection.

use std::net::SocketAddr;

use base64::Engine as _;

use crate::registry::model::wireguard_fingerprint;
use crate::site::pki::CertInfo;

/// How a request reached the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingress {
    /// Mutual TLS from a registered terminal.
    Mtls,
    /// A registered terminal's WireGuard tunnel.
    WireGuard,
    /// The site's own in-hospital EMR system (art 6.1).
    Site,
}

impl Ingress {
    /// The name the audit, the logs and the metrics use.
    pub fn as_str(self) -> &'static str {
        match self {
            Ingress::Mtls => "mtls",
            Ingress::WireGuard => "wireguard",
            Ingress::Site => "site",
        }
    }
}

/// One client connection's identity, fixed at the handshake.
#[derive(Debug, Clone)]
pub struct Peer {
    pub ingress: Ingress,
    pub addr: SocketAddr,
    pub credential: Credential,
}

/// The terminal credential a connection presented: what the registry is keyed by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// A client certificate (mutual TLS, and TLS inside a WireGuard tunnel's site systems).
    Certificate {
        /// The certificate's SPKI SHA-256 (hex): the registry key.
        fingerprint: String,
        /// The certificate's serial (hex), kept for the audit.
        serial: String,
        /// The subject's common name, if any.
        cn: Option<String>,
    },
    /// A WireGuard peer's static public key.
    WireGuard {
        /// `wg:` + the public key (base64): the registry key ([`wireguard_fingerprint`]).
        fingerprint: String,
        /// The peer's registered name.
        name: String,
    },
}

impl Credential {
    /// The credential of a WireGuard peer with this static public key.
    pub fn wireguard(public_key: &[u8; 32], name: &str) -> Credential {
        let b64 = base64::engine::general_purpose::STANDARD.encode(public_key);
        Credential::WireGuard {
            fingerprint: wireguard_fingerprint(&b64),
            name: name.to_string(),
        }
    }

    /// The registry key of the terminal this credential belongs to.
    pub fn fingerprint(&self) -> &str {
        match self {
            Credential::Certificate { fingerprint, .. }
            | Credential::WireGuard { fingerprint, .. } => fingerprint,
        }
    }

    /// The certificate's serial; none for a WireGuard key.
    pub fn serial(&self) -> Option<&str> {
        match self {
            Credential::Certificate { serial, .. } => Some(serial),
            Credential::WireGuard { .. } => None,
        }
    }

    /// The certificate's common name, or the WireGuard peer's registered name.
    pub fn cn(&self) -> Option<&str> {
        match self {
            Credential::Certificate { cn, .. } => cn.as_deref(),
            Credential::WireGuard { name, .. } => Some(name),
        }
    }
}

impl From<CertInfo> for Credential {
    fn from(c: CertInfo) -> Credential {
        Credential::Certificate {
            fingerprint: c.fingerprint,
            serial: c.serial,
            cn: c.subject_cn,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wireguard_credential_is_keyed_like_the_registry() {
        let c = Credential::wireguard(&[7u8; 32], "dr-pc");
        assert_eq!(
            c.fingerprint(),
            wireguard_fingerprint(&base64::engine::general_purpose::STANDARD.encode([7u8; 32]))
        );
        assert_eq!(c.serial(), None);
        assert_eq!(c.cn(), Some("dr-pc"));
    }
}
