//! Can the service's user use every file the gateway needs? `check-config` (which the systemd
//! unit runs before `serve`) answers this for the user it runs as, or for the user named with
//! `--as USER` (root checking for `seibo-gate`), so that a key left root-only is found before
//! the start fails, with the command that fixes it.
//!
//! The check reads the mode bits and ownership the kernel checks (owner class, else group class
//! when the file's group is the user's primary or a supplementary group, else others) on each
//! file the gateway reads — the config, the terminal CA certificate, every listener's
//! certificate and key, the WireGuard key, certificate and key — plus search permission on
//! every directory on the way to each, following symlinks. The state directory, when it
//! exists, must be the user's own, and everything in it readable and writable by the user (an
//! admin command run as root while the gateway was stopped leaves root-owned files there).
//! Root (uid 0) passes every mode check, as the kernel's CAP_DAC_OVERRIDE does. POSIX ACLs are
//! not read: a file readable only through an ACL entry is reported as unreadable.
//!
//! Users and groups come from `/etc/passwd` and `/etc/group` (a system user is local); the
//! current user's from `/proc/self/status` (filesystem uid and gid, supplementary groups).

use std::collections::BTreeSet;
use std::fs::Metadata;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::site::config::Config;

/// Entries of the state directory checked at most (a state directory holds a few dozen).
const STATE_ENTRIES_MAX: usize = 100_000;

/// Whose access is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The user name (or `uid N` when the uid has no entry in /etc/passwd).
    pub name: String,
    pub uid: u32,
    /// The primary group.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// The primary group's name (or its number), for the fixes shown.
    pub group_name: String,
}

#[derive(Debug, thiserror::Error)]
pub enum PrincipalError {
    #[error("--as {0:?}: no such user in /etc/passwd")]
    UnknownUser(String),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: malformed entry {line:?}")]
    Malformed { path: PathBuf, line: String },
}

/// Files the gateway needs that its user cannot use; each problem names the file, why, and the
/// command that fixes it.
#[derive(Debug, thiserror::Error)]
#[error(
    "{n} problem(s) with files the gateway needs, for user {user}:\n  - {list}",
    n = .problems.len(),
    list = .problems.join("\n  - ")
)]
pub struct Unreadable {
    pub user: String,
    pub problems: Vec<String>,
}

fn read(path: &Path) -> Result<String, PrincipalError> {
    std::fs::read_to_string(path).map_err(|source| PrincipalError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// `name:x:uid:gid:...` lines of a passwd-format file.
fn passwd_entries(path: &Path) -> Result<Vec<(String, u32, u32)>, PrincipalError> {
    let text = read(path)?;
    let mut out = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
    {
        let f: Vec<&str> = line.split(':').collect();
        let parsed = (f.len() >= 4)
            .then(|| Some((f[0].to_string(), f[2].parse().ok()?, f[3].parse().ok()?)))
            .flatten();
        out.push(parsed.ok_or_else(|| PrincipalError::Malformed {
            path: path.to_path_buf(),
            line: line.to_string(),
        })?);
    }
    Ok(out)
}

/// `name:x:gid:member,member` lines of a group-format file.
fn group_entries(path: &Path) -> Result<Vec<(String, u32, Vec<String>)>, PrincipalError> {
    let text = read(path)?;
    let mut out = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
    {
        let f: Vec<&str> = line.split(':').collect();
        let parsed = (f.len() >= 3)
            .then(|| {
                let members = f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .filter(|s| !s.is_empty())
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default();
                Some((f[0].to_string(), f[2].parse().ok()?, members))
            })
            .flatten();
        out.push(parsed.ok_or_else(|| PrincipalError::Malformed {
            path: path.to_path_buf(),
            line: line.to_string(),
        })?);
    }
    Ok(out)
}

impl Principal {
    /// The user `name` (or a numeric uid) as `passwd` and `group` describe it: uid, primary
    /// group, and every group that lists the user as a member.
    pub fn named_in(name: &str, passwd: &Path, group: &Path) -> Result<Principal, PrincipalError> {
        let users = passwd_entries(passwd)?;
        let (user, uid, gid) = users
            .iter()
            .find(|(n, _, _)| n == name)
            .or_else(|| {
                let uid: u32 = name.parse().ok()?;
                users.iter().find(|(_, u, _)| *u == uid)
            })
            .cloned()
            .ok_or_else(|| PrincipalError::UnknownUser(name.to_string()))?;
        let groups = group_entries(group)?;
        let supplementary = groups
            .iter()
            .filter(|(_, _, members)| members.contains(&user))
            .map(|(_, g, _)| *g)
            .collect();
        let group_name = groups
            .iter()
            .find(|(_, g, _)| *g == gid)
            .map(|(n, _, _)| n.clone())
            .unwrap_or_else(|| gid.to_string());
        Ok(Principal {
            name: user,
            uid,
            gid,
            groups: supplementary,
            group_name,
        })
    }

    /// The user named `name`, from /etc/passwd and /etc/group.
    pub fn named(name: &str) -> Result<Principal, PrincipalError> {
        Principal::named_in(name, Path::new("/etc/passwd"), Path::new("/etc/group"))
    }

    /// This process's filesystem uid and gid and its supplementary groups.
    pub fn current() -> Result<Principal, PrincipalError> {
        let path = Path::new("/proc/self/status");
        let status = read(path)?;
        let field = |key: &str| -> Option<Vec<u32>> {
            let line = status.lines().find(|l| l.starts_with(key))?;
            line[key.len()..]
                .split_whitespace()
                .map(|v| v.parse().ok())
                .collect()
        };
        let malformed = || PrincipalError::Malformed {
            path: path.to_path_buf(),
            line: "Uid:/Gid:/Groups:".into(),
        };
        // Real, effective, saved, filesystem: file access uses the last.
        let uid = field("Uid:")
            .and_then(|v| v.get(3).copied())
            .ok_or_else(malformed)?;
        let gid = field("Gid:")
            .and_then(|v| v.get(3).copied())
            .ok_or_else(malformed)?;
        let groups = field("Groups:").unwrap_or_default();
        let users = passwd_entries(Path::new("/etc/passwd")).unwrap_or_default();
        let name = users
            .iter()
            .find(|(_, u, _)| *u == uid)
            .map(|(n, _, _)| n.clone())
            .unwrap_or_else(|| format!("uid {uid}"));
        let group_name = group_entries(Path::new("/etc/group"))
            .unwrap_or_default()
            .iter()
            .find(|(_, g, _)| *g == gid)
            .map(|(n, _, _)| n.clone())
            .unwrap_or_else(|| gid.to_string());
        Ok(Principal {
            name,
            uid,
            gid,
            groups,
            group_name,
        })
    }

    /// True when a file of group `gid` is read through the group bits by this user.
    pub fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }

    /// Whether the mode bits and ownership of `m` grant all of `want` (`r` 4, `w` 2, `x` 1).
    fn may(&self, m: &Metadata, want: u32) -> bool {
        if self.uid == 0 {
            return true;
        }
        let mode = m.mode();
        let bits = if m.uid() == self.uid {
            mode >> 6
        } else if self.in_group(m.gid()) {
            mode >> 3
        } else {
            mode
        } & 0o7;
        bits & want == want
    }
}

/// A file the gateway reads, and the config key that names it.
#[derive(Debug, Clone)]
pub struct Needed {
    pub key: String,
    pub path: PathBuf,
}

/// Every file `serve` reads, with its key (the terminal CA key is not among them: only `terminal
/// add` reads it, as root).
pub fn files_read(cfg: &Config) -> Vec<Needed> {
    let mut out = vec![
        Needed {
            key: "the config file".into(),
            path: cfg.path.clone(),
        },
        Needed {
            key: "ca.cert".into(),
            path: cfg.ca.cert.clone(),
        },
    ];
    for (i, l) in cfg.listeners.iter().enumerate() {
        for (what, p) in [("cert", &l.cert), ("key", &l.key)] {
            out.push(Needed {
                key: format!("listener[{i}].{what}"),
                path: p.clone(),
            });
        }
    }
    if let Some(wg) = &cfg.wireguard {
        for (what, p) in [
            ("private_key", &wg.private_key),
            ("cert", &wg.cert),
            ("key", &wg.key),
        ] {
            out.push(Needed {
                key: format!("wireguard.{what}"),
                path: p.clone(),
            });
        }
    }
    if let Some(p) = &cfg.peer {
        for (what, path) in [("cert", &p.cert), ("key", &p.key)] {
            out.push(Needed {
                key: format!("peer.{what}"),
                path: path.clone(),
            });
        }
    }
    if let Some(o) = &cfg.office {
        for (what, path) in [("cert", &o.cert), ("key", &o.key)] {
            out.push(Needed {
                key: format!("office.{what}"),
                path: path.clone(),
            });
        }
    }
    out
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    }
}

fn owner(m: &Metadata) -> String {
    format!(
        "mode {:04o}, owner {}:{}",
        m.mode() & 0o7777,
        m.uid(),
        m.gid()
    )
}

/// Checks everything `serve` needs for `who`; every problem at once.
pub fn check(cfg: &Config, who: &Principal) -> Result<(), Unreadable> {
    let mut problems = Vec::new();
    let mut dirs_seen = BTreeSet::new();
    for n in files_read(cfg) {
        check_read(&n, who, &mut dirs_seen, &mut problems);
    }
    check_state(cfg, who, &mut dirs_seen, &mut problems);
    check_socket_dir(cfg, who, &mut dirs_seen, &mut problems);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Unreadable {
            user: who.name.clone(),
            problems,
        })
    }
}

/// Search permission on every directory above `path`, literally and after resolving symlinks.
fn check_dirs(
    path: &Path,
    who: &Principal,
    seen: &mut BTreeSet<PathBuf>,
    problems: &mut Vec<String>,
) {
    let mut chains = vec![absolute(path)];
    if let Ok(real) = std::fs::canonicalize(path) {
        chains.push(real);
    }
    for p in chains {
        for dir in p.ancestors().skip(1) {
            if dir.as_os_str().is_empty() || !seen.insert(dir.to_path_buf()) {
                continue;
            }
            let Ok(m) = std::fs::metadata(dir) else {
                continue;
            };
            if !who.may(&m, 0o1) {
                problems.push(format!(
                    "directory {d}: {u} cannot enter it ({o}), so nothing below it is readable; fix: chgrp {g} {d} && chmod g+x {d}",
                    d = dir.display(),
                    u = who.name,
                    o = owner(&m),
                    g = who.group_name
                ));
            }
        }
    }
}

fn check_read(
    n: &Needed,
    who: &Principal,
    seen: &mut BTreeSet<PathBuf>,
    problems: &mut Vec<String>,
) {
    check_dirs(&n.path, who, seen, problems);
    let p = n.path.display();
    match std::fs::metadata(&n.path) {
        Err(e) => problems.push(format!("{} {p}: {e}", n.key)),
        Ok(m) if m.is_dir() => problems.push(format!("{} {p}: is a directory", n.key)),
        Ok(m) if !who.may(&m, 0o4) => {
            let fix = if m.uid() == who.uid {
                format!("chmod u+r {p}")
            } else {
                format!("chgrp {g} {p} && chmod g+r {p}", g = who.group_name)
            };
            problems.push(format!(
                "{} {p}: not readable by {u} ({o}); fix: {fix}",
                n.key,
                u = who.name,
                o = owner(&m)
            ));
        }
        Ok(_) => {}
    }
}

/// The admin socket is created at every start: outside the state directory, its directory
/// must exist and be writable and searchable by `who`.
fn check_socket_dir(
    cfg: &Config,
    who: &Principal,
    seen: &mut BTreeSet<PathBuf>,
    problems: &mut Vec<String>,
) {
    let Some(dir) = cfg.admin_socket.parent() else {
        return;
    };
    if absolute(dir).starts_with(absolute(&cfg.state_dir)) {
        return;
    }
    check_dirs(&cfg.admin_socket, who, seen, problems);
    match std::fs::metadata(dir) {
        Err(e) => problems.push(format!(
            "state.admin_socket {}: its directory {}: {e}",
            cfg.admin_socket.display(),
            dir.display()
        )),
        Ok(m) if !who.may(&m, 0o3) => problems.push(format!(
            "state.admin_socket {}: {} cannot create it in {} ({}); fix: leave admin_socket out (it goes in the state directory) or chown {}:{} {}",
            cfg.admin_socket.display(),
            who.name,
            dir.display(),
            owner(&m),
            who.name,
            who.group_name,
            dir.display()
        )),
        Ok(_) => {}
    }
}

/// The state directory, when it exists: owned by `who` (serve keeps it 0700) and every entry
/// readable and writable (directories also searchable) by `who`. One problem for the whole tree.
fn check_state(
    cfg: &Config,
    who: &Principal,
    seen: &mut BTreeSet<PathBuf>,
    problems: &mut Vec<String>,
) {
    let dir = &cfg.state_dir;
    let Ok(m) = std::fs::metadata(dir) else {
        // Created by serve (or systemd's StateDirectory=) at the first start.
        return;
    };
    check_dirs(dir, who, seen, problems);
    let fix = format!(
        "chown -R {u}:{g} {d}",
        u = who.name,
        g = who.group_name,
        d = dir.display()
    );
    if !m.is_dir() {
        problems.push(format!("state.dir {}: not a directory", dir.display()));
        return;
    }
    if who.uid != 0 && m.uid() != who.uid {
        problems.push(format!(
            "state.dir {}: owned by uid {}, not by {} ({}); fix: {fix}",
            dir.display(),
            m.uid(),
            who.name,
            owner(&m)
        ));
        return;
    }
    let mut bad = Vec::new();
    let mut stack = vec![dir.clone()];
    let mut visited = 0usize;
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            bad.push(d.display().to_string());
            continue;
        };
        for e in entries.flatten() {
            visited += 1;
            if visited > STATE_ENTRIES_MAX {
                break;
            }
            let path = e.path();
            let Ok(m) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            let ft = m.file_type();
            if ft.is_socket() || ft.is_symlink() {
                continue; // the admin socket is recreated at every start
            }
            let want = if ft.is_dir() { 0o7 } else { 0o6 };
            if !who.may(&m, want) {
                bad.push(format!("{} ({})", path.display(), owner(&m)));
            } else if ft.is_dir() {
                stack.push(path);
            }
        }
    }
    if !who.may(&m, 0o7) {
        bad.insert(0, format!("{} ({})", dir.display(), owner(&m)));
    }
    if !bad.is_empty() {
        let shown: Vec<&str> = bad.iter().take(5).map(String::as_str).collect();
        problems.push(format!(
            "state.dir {}: {} entr{} not readable and writable by {}: {}{}; fix: {fix}",
            dir.display(),
            bad.len(),
            if bad.len() == 1 { "y" } else { "ies" },
            who.name,
            shown.join(", "),
            if bad.len() > shown.len() { ", …" } else { "" }
        ));
    }
}

#[cfg(test)]
mod tests;
