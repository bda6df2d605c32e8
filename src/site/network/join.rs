//! `seibo-gate init --join BUNDLE`: at a site the network's home added, a working
//! `gate.toml` from the bundle `site add` wrote — the site's id and name, the regional CA as
//! the terminals' CA, its certificates, `[registry]`, `[peer]`, `[network]` and, when the
//! bundle has one, `[wireguard]`. The site's own EMR, listener and private segment come from
//! `init`'s options as for a single site.

use std::path::{Path, PathBuf};

use super::{create_private_dir, io_err, text, Descriptor, NetworkError, DESCRIPTOR_FILE};
use crate::site::init::{self, InitOptions, CONFIG_FILE};

/// Makes the site in `o.dir` from `bundle` (copied there when it is another directory);
/// `o.site` and `o.name` are the bundle's. The config's path.
pub fn join(bundle: &Path, o: &InitOptions) -> Result<PathBuf, NetworkError> {
    let d: Descriptor = super::read_toml(&bundle.join(DESCRIPTOR_FILE))?;
    let site = d
        .network
        .site(&d.site)
        .cloned()
        .ok_or_else(|| NetworkError::File {
            path: bundle.join(DESCRIPTOR_FILE),
            message: format!("site {:?} is not in the descriptor's site list", d.site),
        })?;
    let cfg_path = o.dir.join(CONFIG_FILE);
    if cfg_path.exists() {
        return Err(NetworkError::Exists(cfg_path));
    }
    let same = same_dir(bundle, &o.dir);
    if !same {
        copy_tree(bundle, &o.dir)?;
    }
    let mut o = o.clone();
    o.site = site.id.clone();
    o.name = Some(site.name.clone());
    let private = init::private_segment(&o)?;
    init::create_dirs(&o)?;
    let wireguard = match (
        &d.wireguard_listen,
        &site.wireguard_endpoint,
        &site.wireguard_public_key,
        &site.tunnel_address,
    ) {
        (Some(listen), Some(endpoint), Some(public), Some(address)) => {
            let listen = listen.parse().map_err(|e| NetworkError::File {
                path: bundle.join(DESCRIPTOR_FILE),
                message: format!("wireguard_listen {listen:?}: {e}"),
            })?;
            Some(init::wireguard_section(public, listen, endpoint, address))
        }
        _ => None,
    };
    let extra = text::sections(&d.network, &d.peer_listen);
    Ok(init::write_config(&o, &private, wireguard, &extra)?)
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Copies the bundle's files (modes kept; nothing overwritten) into `to`.
fn copy_tree(from: &Path, to: &Path) -> Result<(), NetworkError> {
    use std::os::unix::fs::PermissionsExt;
    create_private_dir(to)?;
    for entry in std::fs::read_dir(from).map_err(io_err(from))? {
        let entry = entry.map_err(io_err(from))?;
        let src = entry.path();
        let dst = to.join(entry.file_name());
        let meta = entry.metadata().map_err(io_err(&src))?;
        if meta.is_dir() {
            copy_tree(&src, &dst)?;
        } else if meta.is_file() {
            let data = std::fs::read(&src).map_err(io_err(&src))?;
            crate::site::pki::write_new_file(&dst, &data, meta.permissions().mode() & 0o777)?;
        }
    }
    Ok(())
}
