//! New files with exact modes (never overwriting), and PEM loading for rustls.

use std::fs::{self, OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::*;

/// Writes a file with the given mode, refusing to overwrite (helper, pub for other modules
/// writing secrets).
///
/// The file is created with `O_CREAT|O_EXCL` and `mode` passed to `open(2)`, so it is never
/// more permissive than `mode` (an existing file or symlink makes it fail); the mode is then
/// set exactly (independent of the umask) and the data synced to disk. If writing fails the
/// partial file is removed.
pub fn write_new_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), PkiError> {
    let io_err = |source: std::io::Error| PkiError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|source| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                PkiError::AlreadyExists {
                    path: path.to_path_buf(),
                }
            } else {
                io_err(source)
            }
        })?;
    let result = file
        .set_permissions(Permissions::from_mode(mode))
        .and_then(|()| file.write_all(contents))
        .and_then(|()| file.sync_all());
    if let Err(source) = result {
        drop(file);
        let _ = fs::remove_file(path);
        return Err(io_err(source));
    }
    Ok(())
}

/// Fails with [`PkiError::AlreadyExists`] if any of `paths` exists (or is a dangling symlink).
pub(super) fn ensure_absent(paths: &[&Path]) -> Result<(), PkiError> {
    for path in paths {
        match fs::symlink_metadata(path) {
            Ok(_) => {
                return Err(PkiError::AlreadyExists {
                    path: path.to_path_buf(),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(PkiError::Io {
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
    }
    Ok(())
}

/// Writes several new files; if one fails, the ones already written by this call are removed.
pub(super) fn write_all_new(files: &[(&Path, &[u8], u32)]) -> Result<(), PkiError> {
    ensure_absent(&files.iter().map(|(p, _, _)| *p).collect::<Vec<_>>())?;
    for (i, (path, contents, mode)) in files.iter().enumerate() {
        if let Err(e) = write_new_file(path, contents, *mode) {
            for (written, _, _) in files.iter().take(i) {
                let _ = fs::remove_file(written);
            }
            return Err(e);
        }
    }
    Ok(())
}

pub(super) fn read_to_string(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads PEM certificates (all in a file) as DER, for rustls. Fails if there are none.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let data = fs::read(path).map_err(|source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let certs = CertificateDer::pem_slice_iter(&data)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::Parse(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(PkiError::Parse(format!(
            "{}: no PEM certificate found",
            path.display()
        )));
    }
    Ok(certs)
}

/// Reads a PEM private key (PKCS#8, SEC1 or PKCS#1; the first one in the file), for rustls.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, PkiError> {
    let data = fs::read(path).map_err(|source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    PrivateKeyDer::from_pem_slice(&data).map_err(|e| {
        PkiError::Parse(format!(
            "{}: no usable PEM private key: {e}",
            path.display()
        ))
    })
}
