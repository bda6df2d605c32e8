//! File modes of the state directory: nothing in it is for anyone but the service's user.
//!
//! The state directory (registry, audit log, admin socket) is 0700, but the files in it must
//! not rely on that alone: a copy (`cp -a`, a backup), or a directory loosened by mistake,
//! would otherwise leak the registries (sled creates its files with the process umask, 0644
//! under the usual 022). So:
//!
//! * `serve` and every admin command set the process umask to 0077 before creating anything
//!   ([`restrict_umask`]), which covers files created by libraries (sled) too;
//! * the files the project writes itself are opened with an explicit 0600 (audit log, head
//!   anchor, index, keys);
//! * at every start, and before an admin command opens the store, [`tighten_tree`] removes
//!   any group or other permission from what is already there (a state directory written by
//!   an older version).

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The umask for the service and its admin commands: files 0600, directories 0700.
pub const STATE_UMASK: u32 = 0o077;

/// Sets the process umask to [`STATE_UMASK`]; returns the previous one.
pub fn restrict_umask() -> u32 {
    let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(STATE_UMASK));
    old.as_raw_mode()
}

/// What [`tighten_tree`] did.
#[derive(Debug, Default)]
pub struct Tightened {
    /// Entries whose mode was changed.
    pub changed: usize,
    /// Entries that could not be read or changed (a read-only mount, another owner), and why.
    pub failed: Vec<(PathBuf, io::Error)>,
}

/// Removes group and other permission bits from `dir` and everything under it (symbolic
/// links are not followed; sockets are included). Best effort: an entry that cannot be
/// changed is reported in [`Tightened::failed`] and the walk goes on (whoever then needs to
/// write it fails with its own error, naming it).
pub fn tighten_tree(dir: &Path) -> Tightened {
    let mut out = Tightened::default();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let meta = match std::fs::symlink_metadata(&p) {
            Ok(m) => m,
            // Gone meanwhile (a sled snapshot replaced): nothing to tighten.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => {
                out.failed.push((p, e));
                continue;
            }
        };
        if meta.file_type().is_symlink() {
            continue;
        }
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            match std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode & 0o7700)) {
                Ok(()) => out.changed += 1,
                Err(e) => out.failed.push((p.clone(), e)),
            }
        }
        if meta.is_dir() {
            match std::fs::read_dir(&p) {
                Ok(entries) => {
                    for entry in entries {
                        match entry {
                            Ok(e) => stack.push(e.path()),
                            Err(e) => out.failed.push((p.clone(), e)),
                        }
                    }
                }
                Err(e) => out.failed.push((p, e)),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tighten_tree_removes_group_and_other_bits_everywhere() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sub = dir.path().join("registry");
        std::fs::create_dir(&sub).expect("mkdir");
        std::fs::write(sub.join("db"), b"x").expect("write");
        std::fs::write(dir.path().join("top"), b"y").expect("write");
        for (p, m) in [
            (dir.path().to_path_buf(), 0o755),
            (sub.clone(), 0o775),
            (sub.join("db"), 0o644),
            (dir.path().join("top"), 0o666),
        ] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(m)).expect("chmod");
        }
        let t = tighten_tree(dir.path());
        assert_eq!((t.changed, t.failed.len()), (4, 0), "{t:?}");
        for (p, m) in [
            (dir.path().to_path_buf(), 0o700),
            (sub.clone(), 0o700),
            (sub.join("db"), 0o600),
            (dir.path().join("top"), 0o600),
        ] {
            let got = std::fs::metadata(&p).expect("stat").permissions().mode() & 0o777;
            assert_eq!(got, m, "{}", p.display());
        }
        assert_eq!(tighten_tree(dir.path()).changed, 0);
    }
}
