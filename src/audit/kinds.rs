//! The closed sets of values an audit record carries, as types: each serialises to the string
//! the log has always held, so the log format and `audit query --json` are unchanged.

use serde::{Deserialize, Serialize};

/// Whether a request was let through (`"allow"`) or refused (`"deny"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    Allow,
    Deny,
}

impl Decision {
    /// The name the log, the metrics and the logs use.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Deny => "deny",
        }
    }
}

impl std::fmt::Display for Decision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `pad`, not `write_str`: `{:<5}` in `audit query`'s table lines them up.
        f.pad(self.as_str())
    }
}

/// How the audited request arrived: one of the gateway's ingresses (see
/// [`crate::ingress::peer::Ingress`]), or the admin surface (socket or direct command).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ingress {
    Mtls,
    WireGuard,
    Site,
    Admin,
    /// Another site gateway's query of this site's audit (the read-only peer API, issue 14).
    Peer,
}

impl Ingress {
    /// The name the log, the metrics and the logs use.
    pub fn as_str(self) -> &'static str {
        match self {
            Ingress::Mtls => "mtls",
            Ingress::WireGuard => "wireguard",
            Ingress::Site => "site",
            Ingress::Admin => "admin",
            Ingress::Peer => "peer",
        }
    }
}

impl From<crate::ingress::peer::Ingress> for Ingress {
    fn from(i: crate::ingress::peer::Ingress) -> Ingress {
        match i {
            crate::ingress::peer::Ingress::Mtls => Ingress::Mtls,
            crate::ingress::peer::Ingress::WireGuard => Ingress::WireGuard,
            crate::ingress::peer::Ingress::Site => Ingress::Site,
        }
    }
}

impl std::fmt::Display for Ingress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_serialise_to_the_logs_strings() {
        for (d, s) in [(Decision::Allow, "allow"), (Decision::Deny, "deny")] {
            assert_eq!(serde_json::to_string(&d).ok(), Some(format!("\"{s}\"")));
            assert_eq!(d.as_str(), s);
            assert_eq!(
                serde_json::from_str::<Decision>(&format!("\"{s}\"")).ok(),
                Some(d)
            );
        }
        assert_eq!(format!("[{:<5}]", Decision::Deny), "[deny ]");
    }

    #[test]
    fn ingresses_serialise_to_the_logs_strings() {
        for (i, s) in [
            (Ingress::Mtls, "mtls"),
            (Ingress::WireGuard, "wireguard"),
            (Ingress::Site, "site"),
            (Ingress::Admin, "admin"),
            (Ingress::Peer, "peer"),
        ] {
            assert_eq!(serde_json::to_string(&i).ok(), Some(format!("\"{s}\"")));
            assert_eq!(i.as_str(), s);
            assert_eq!(
                serde_json::from_str::<Ingress>(&format!("\"{s}\"")).ok(),
                Some(i)
            );
        }
        assert_eq!(
            Ingress::from(crate::ingress::peer::Ingress::WireGuard),
            Ingress::WireGuard
        );
    }
}
