//! The state directory and the private keys, checked before anything is opened: the state
//! directory is 0700 and nothing in it open to others; private keys are not readable by others.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};

use super::ServeError;
use crate::site::config::Config;

/// Creates the state directory with mode 0700 (and tightens an existing one).
pub fn prepare_state_dir(dir: &std::path::Path) -> Result<(), ServeError> {
    let err = |source| ServeError::StateDir {
        path: dir.display().to_string(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(err)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
    // Issue 11 item 17: what an older version left open to group or others is closed too.
    let t = crate::site::fsmode::tighten_tree(dir);
    if t.changed > 0 {
        tracing::warn!(dir = %dir.display(), entries = t.changed, "state files were open to group or others: closed (0600/0700)");
    }
    for (path, e) in &t.failed {
        tracing::warn!(path = %path.display(), error = %e, "could not close a state file to group and others");
    }
    Ok(())
}

/// Private key files must not be open to others. A listener key may be group-readable (the
/// README's `chgrp seibo-gate` + `chmod 0640`, for a root-owned key the service reads through
/// its group): that is logged as a warning unless the group is one of the service's own (the
/// process's group or a supplementary group). World bits, or group write, refuse the start. The
/// terminal CA key is `terminal add`'s alone (root): any group or world bit refuses the start;
/// a CA key kept offline (absent) or unreadable to this user is fine.
pub fn check_key_modes(cfg: &Config) -> Result<(), ServeError> {
    check_key_modes_for(
        cfg,
        crate::site::filecheck::Principal::current().ok().as_ref(),
    )
}

/// [`check_key_modes`] for the service user `me` (`check-config --as USER`): a key readable
/// through one of `me`'s groups is as intended.
pub fn check_key_modes_for(
    cfg: &Config,
    me: Option<&crate::site::filecheck::Principal>,
) -> Result<(), ServeError> {
    let mut problems = Vec::new();
    let mut keys: Vec<(String, &std::path::Path)> = cfg
        .listeners
        .iter()
        .map(|l| (format!("listener {}", l.name), l.key.as_path()))
        .collect();
    if let Some(o) = &cfg.office {
        keys.push(("office".into(), o.key.as_path()));
    }
    if let Some(wg) = &cfg.wireguard {
        keys.push(("wireguard".into(), wg.private_key.as_path()));
        keys.push(("wireguard (in-tunnel TLS)".into(), wg.key.as_path()));
    }
    if let Some(p) = &cfg.peer {
        keys.push(("peer API (site gateway)".into(), p.key.as_path()));
    }
    for (name, key) in keys {
        // A missing key is reported by the TLS setup with its own message.
        let Ok(m) = std::fs::metadata(key) else {
            continue;
        };
        let mode = m.permissions().mode() & 0o777;
        if mode & 0o027 != 0 {
            problems.push(format!(
                "{name}: private key {} has mode {mode:04o}: others may read or change it; chmod 0600 (or 0640 with group seibo-gate)",
                key.display()
            ));
        } else if mode & 0o040 != 0 && !me.is_some_and(|p| p.in_group(m.gid())) {
            tracing::warn!(owner = %name, key = %key.display(), mode = format!("{mode:04o}"), "private key is group-readable: make sure the group is the service's own");
        }
    }
    if let Ok(m) = std::fs::metadata(&cfg.ca.key) {
        let mode = m.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            problems.push(format!(
                "terminal CA private key {} has mode {mode:04o}: it must be readable by root alone; chmod 0600",
                cfg.ca.key.display()
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ServeError::KeyMode(format!(
            "refusing to start: {}",
            problems.join("; ")
        )))
    }
}
