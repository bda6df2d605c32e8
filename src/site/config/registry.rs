//! `[registry]`: where the registries (physicians, terminals, consents, sessions) live.
//!
//! ```toml
//! [registry]
//! backend = "etcd"                 # default "sled": embedded, nothing to run
//! endpoints = ["https://10.20.0.7:2379", "https://10.30.0.7:2379", "https://10.40.0.7:2379"]
//! prefix = "/seibo-net/"           # one network per prefix
//! ca = "registry/etcd-ca.crt"      # etcd's CA; client certificate and key for etcd's
//! cert = "registry/gateway.crt"    # client-certificate authentication
//! key = "registry/gateway.key"
//! max_stale_secs = 15
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Default of `[registry] max_stale_secs`: how long a gateway that lost its etcd watch keeps
/// serving from its in-memory copy before it refuses sign-ins and consent-gated requests.
pub const DEFAULT_MAX_STALE_SECS: u64 = 15;

/// `[registry]` as written.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRegistry {
    #[serde(default)]
    backend: Option<String>,
    #[serde(default)]
    endpoints: Option<Vec<String>>,
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    ca: Option<PathBuf>,
    #[serde(default)]
    cert: Option<PathBuf>,
    #[serde(default)]
    key: Option<PathBuf>,
    #[serde(default)]
    max_stale_secs: Option<u64>,
}

/// `[registry]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryConfig {
    pub backend: RegistryBackend,
    /// `max_stale_secs`: bounded staleness of the in-memory copy (etcd only).
    pub max_stale: Duration,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            backend: RegistryBackend::Sled,
            max_stale: Duration::from_secs(DEFAULT_MAX_STALE_SECS),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryBackend {
    /// Embedded, in the state directory (one gateway).
    Sled,
    /// The regional registry shared by every gateway of the network.
    Etcd(EtcdConfig),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    /// `https://HOST:PORT` of every member.
    pub endpoints: Vec<String>,
    /// Every key of this network starts with it (ends with `/`).
    pub prefix: String,
    /// etcd's CA certificate (PEM).
    pub ca: PathBuf,
    /// This gateway's client certificate and key for etcd (PEM).
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// Validates `[registry]`, pushing each problem (naming its key).
pub(super) fn registry(
    raw: &RawRegistry,
    base: &Path,
    problems: &mut Vec<String>,
) -> RegistryConfig {
    let max_stale = match raw.max_stale_secs {
        Some(0) => {
            problems.push("registry.max_stale_secs: must be at least 1".into());
            DEFAULT_MAX_STALE_SECS
        }
        Some(n) if n > 3600 => {
            problems.push(format!(
                "registry.max_stale_secs: {n} is more than an hour of serving withdrawn consents; at most 3600"
            ));
            DEFAULT_MAX_STALE_SECS
        }
        Some(n) => n,
        None => DEFAULT_MAX_STALE_SECS,
    };
    let max_stale = Duration::from_secs(max_stale);
    match raw.backend.as_deref().unwrap_or("sled") {
        "sled" => {
            for (key, set) in [
                ("endpoints", raw.endpoints.is_some()),
                ("prefix", raw.prefix.is_some()),
                ("ca", raw.ca.is_some()),
                ("cert", raw.cert.is_some()),
                ("key", raw.key.is_some()),
            ] {
                if set {
                    problems.push(format!(
                        "registry.{key}: only used with backend = \"etcd\" (backend is \"sled\")"
                    ));
                }
            }
            RegistryConfig {
                backend: RegistryBackend::Sled,
                max_stale,
            }
        }
        "etcd" => {
            let endpoints = etcd_endpoints(raw.endpoints.as_deref(), problems);
            let prefix = etcd_prefix(raw.prefix.as_deref(), problems);
            let mut path = |key: &str, p: &Option<PathBuf>| match p {
                Some(p) => resolve(base, p),
                None => {
                    problems.push(format!(
                        "registry.{key}: required with backend = \"etcd\" (etcd is reached over TLS with a client certificate)"
                    ));
                    PathBuf::new()
                }
            };
            let ca = path("ca", &raw.ca);
            let cert = path("cert", &raw.cert);
            let key = path("key", &raw.key);
            RegistryConfig {
                backend: RegistryBackend::Etcd(EtcdConfig {
                    endpoints,
                    prefix,
                    ca,
                    cert,
                    key,
                }),
                max_stale,
            }
        }
        other => {
            problems.push(format!(
                "registry.backend: {other:?} is not \"sled\" or \"etcd\""
            ));
            RegistryConfig::default()
        }
    }
}

fn etcd_endpoints(raw: Option<&[String]>, problems: &mut Vec<String>) -> Vec<String> {
    let Some(items) = raw.filter(|e| !e.is_empty()) else {
        problems.push(
            "registry.endpoints: required with backend = \"etcd\": the https:// address of every etcd member".into(),
        );
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, e) in items.iter().enumerate() {
        let Some(rest) = e.strip_prefix("https://") else {
            problems.push(format!(
                "registry.endpoints[{i}]: {e:?} must start with https:// (the registry is only reached over TLS)"
            ));
            continue;
        };
        let authority = rest.trim_end_matches('/');
        let valid = !authority.is_empty()
            && !authority.contains('/')
            && authority
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if valid {
            out.push(format!("https://{authority}"));
        } else {
            problems.push(format!(
                "registry.endpoints[{i}]: {e:?} is not https://HOST:PORT"
            ));
        }
    }
    out
}

fn etcd_prefix(raw: Option<&str>, problems: &mut Vec<String>) -> String {
    let p = raw.unwrap_or("/seibo-net/");
    let ok = p.starts_with('/')
        && p.ends_with('/')
        && p.len() > 1
        && p.len() <= 128
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.'));
    if !ok {
        problems.push(format!(
            "registry.prefix: {p:?} must start and end with '/', hold only letters, digits, '-', '_', '.', and be at most 128 bytes"
        ));
    }
    p.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> (RegistryConfig, Vec<String>) {
        let raw: RawRegistry = toml::from_str(text).expect("toml");
        let mut problems = Vec::new();
        let c = registry(&raw, Path::new("/etc/seibo-gate"), &mut problems);
        (c, problems)
    }

    #[test]
    fn default_is_sled_with_fifteen_seconds() {
        let (c, p) = parse("");
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(c, RegistryConfig::default());
        assert_eq!(c.max_stale, Duration::from_secs(15));
    }

    #[test]
    fn the_issue_example_parses_with_paths_beside_the_config() {
        let (c, p) = parse(
            r#"backend = "etcd"
endpoints = ["https://10.20.0.7:2379", "https://10.30.0.7:2379", "https://10.40.0.7:2379"]
prefix = "/seibo-net/"
ca = "registry/etcd-ca.crt"
cert = "registry/gateway.crt"
key = "/abs/gateway.key"
max_stale_secs = 15"#,
        );
        assert!(p.is_empty(), "{p:?}");
        let RegistryBackend::Etcd(e) = c.backend else {
            panic!("not etcd")
        };
        assert_eq!(e.endpoints.len(), 3);
        assert_eq!(e.prefix, "/seibo-net/");
        assert_eq!(e.ca, PathBuf::from("/etc/seibo-gate/registry/etcd-ca.crt"));
        assert_eq!(e.key, PathBuf::from("/abs/gateway.key"));
    }

    #[test]
    fn bad_values_are_named() {
        let (_, p) = parse(
            r#"backend = "etcd"
endpoints = ["http://10.0.0.1:2379", "https://nohost", "https://a:1/x"]
prefix = "seibo"
max_stale_secs = 0"#,
        );
        let all = p.join("\n");
        for needle in [
            "registry.endpoints[0]",
            "registry.endpoints[1]",
            "registry.endpoints[2]",
            "registry.prefix",
            "registry.ca: required",
            "registry.cert: required",
            "registry.key: required",
            "registry.max_stale_secs",
        ] {
            assert!(all.contains(needle), "{needle} missing in {all}");
        }
        let (_, p) = parse(r#"backend = "zookeeper""#);
        assert!(p[0].contains("registry.backend"), "{p:?}");
        let (_, p) = parse(r#"endpoints = ["https://a:1"]"#);
        assert!(p[0].contains("only used with backend"), "{p:?}");
    }
}
