//! `seibo-gate network etcd-member`, at the network's home: an etcd member's certificate from
//! the network's etcd CA (server and client authentication, for its client and peer URLs), so
//! that the regional registry's members, the sites' gateways (`registry/gateway.crt`, issued
//! by `network init` and `site add`) and each other trust one CA, and nothing else.

use std::path::{Path, PathBuf};

use super::{create_private_dir, NetworkError, ETCD_CA_CERT, ETCD_CA_KEY};
use crate::site::config::Config;
use crate::site::pki::{self, Ca, LeafSpec};

/// The files `etcd-member` wrote: the member's certificate chain, its key, the etcd CA.
#[derive(Debug, Clone)]
pub struct MemberFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// Issues member `name`'s certificate for `hosts` (its client and peer URLs' addresses or
/// names) into `out`: `NAME.crt` (leaf then CA), `NAME.key` (0600) and `etcd-ca.crt`.
pub fn issue_member(
    home: &Config,
    name: &str,
    hosts: &[String],
    out: &Path,
) -> Result<MemberFiles, NetworkError> {
    if !crate::registry::ids::TerminalName::is_valid(name) {
        return Err(NetworkError::Invalid(format!(
            "--name {name:?}: letters, digits, '.', '_' or '-' (it names the files)"
        )));
    }
    if hosts.is_empty() {
        return Err(NetworkError::Invalid(
            "--host: the member's address (repeatable), as its client and peer URLs name it".into(),
        ));
    }
    let base = home
        .path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let (ca_cert, ca_key) = (base.join(ETCD_CA_CERT), base.join(ETCD_CA_KEY));
    if !ca_key.exists() {
        return Err(NetworkError::Invalid(format!(
            "{} is not the network's home (no {ETCD_CA_KEY} beside it)",
            home.path.display()
        )));
    }
    let ca = Ca::load(&ca_cert, &ca_key)?;
    create_private_dir(out)?;
    let files = MemberFiles {
        cert: out.join(format!("{name}.crt")),
        key: out.join(format!("{name}.key")),
        ca: out.join("etcd-ca.crt"),
    };
    ca.issue_leaf(
        &LeafSpec {
            cn: name,
            ou: None,
            sans: hosts,
            server: true,
            client: true,
        },
        &files.cert,
        &files.key,
    )?;
    if !files.ca.exists() {
        pki::write_new_file(&files.ca, ca.cert_pem().as_bytes(), 0o644)?;
    }
    Ok(files)
}
