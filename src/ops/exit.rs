//! The exit status of every `seibo-gate` command: one scheme, from `sysexits.h`, so that a
//! script, systemd (`status=78/CONFIG` in `systemctl status`) and an admin read the same
//! thing. [`code_for`] maps an error to its status by the typed errors in its chain; the
//! table [`HELP`] is printed after `seibo-gate --help` and repeated in the README.

use crate::site::config::ConfigError;

/// Success.
pub const OK: u8 = 0;
/// The request was understood and refused (unknown or duplicate id, an unregistered
/// physician), or a check answered "no" (`audit verify` found the log or its index damaged).
pub const REFUSED: u8 = 1;
/// EX_USAGE: the command line is wrong (unknown option, missing or malformed value, a date in
/// the future without `--allow-future`, `--since` not before `--until`).
pub const USAGE: u8 = 64;
/// EX_DATAERR: input data is wrong (the audit log or a registry record cannot be decoded, a
/// password read from standard input is too short).
pub const DATAERR: u8 = 65;
/// EX_NOINPUT: a file named on the command line does not exist.
pub const NOINPUT: u8 = 66;
/// EX_UNAVAILABLE: a port or address is taken or not available.
pub const UNAVAILABLE: u8 = 69;
/// EX_SOFTWARE: an internal error (a bug: please report it with the message).
pub const SOFTWARE: u8 = 70;
/// EX_CANTCREAT: `init` would overwrite a site, or an output file exists.
pub const CANTCREAT: u8 = 73;
/// EX_IOERR: reading or writing the state, the audit log or a file failed.
pub const IOERR: u8 = 74;
/// EX_NOPERM: permission denied (run admin commands as root or as the service user).
pub const NOPERM: u8 = 77;
/// EX_CONFIG: the config is invalid or missing, or a file it names is missing, invalid or
/// unreadable by the service user (`check-config` names each key and file).
pub const CONFIG: u8 = 78;

/// The table shown after `--help` (and in the README).
pub const HELP: &str = "\
Exit status (sysexits.h):
   0  ok
   1  refused: the registry said no (unknown or duplicate id), or a check failed (audit verify)
  64  usage: wrong command line (unknown option, bad value, future date without --allow-future,
      --since not before --until)
  65  data: the audit log or a registry record cannot be decoded; bad input on stdin
  66  no input: a file named on the command line does not exist
  69  unavailable: a port or address is taken or not available
  70  internal error (please report it)
  73  cannot create: init over an existing site, or an output file exists
  74  I/O error reading or writing the state, the audit log or a file
  77  permission denied
  78  config: gate.toml missing or invalid, or a file it names missing, invalid or unreadable
      by the service user (check-config names each)

Config: every command but init and demo reads --config PATH, else $SEIBO_GATE_CONFIG, else
/etc/seibo-gate/gate.toml.";

/// A wrong command line found after parsing (a value clap cannot check): exit 64.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// A problem with the site's configuration found outside `Config::load` (a section a command
/// needs is missing, a file the config names is unusable): exit 78.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigProblem(pub String);

/// Bad input data (not the command line): exit 65.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DataError(pub String);

/// The exit status for `e`: the first error in its chain (outermost first) whose type says
/// what kind of failure it is; [`SOFTWARE`] when none does.
pub fn code_for(e: &anyhow::Error) -> u8 {
    e.chain().find_map(classify).unwrap_or(SOFTWARE)
}

fn classify(e: &(dyn std::error::Error + 'static)) -> Option<u8> {
    use crate::audit::{AuditError, VerifyError};
    use crate::ops::server::ServeError;
    use crate::registry::store::StoreError;
    use crate::site::init::InitError;
    if e.is::<UsageError>() {
        return Some(USAGE);
    }
    if e.is::<ConfigProblem>()
        || e.is::<ConfigError>()
        || e.is::<crate::site::filecheck::Unreadable>()
    {
        return Some(CONFIG);
    }
    if e.is::<DataError>() {
        return Some(DATAERR);
    }
    if let Some(e) = e.downcast_ref::<ServeError>() {
        return match e {
            ServeError::Tls { .. } | ServeError::KeyMode(_) => Some(CONFIG),
            ServeError::Tunnel(crate::ingress::tunnel::TunnelError::Key { .. }) => Some(CONFIG),
            _ => None,
        };
    }
    if let Some(e) = e.downcast_ref::<crate::site::network::NetworkError>() {
        use crate::site::network::NetworkError;
        return match e {
            NetworkError::Exists(_) => Some(CANTCREAT),
            NetworkError::Invalid(_) => Some(USAGE),
            NetworkError::File { .. } => Some(CONFIG),
            // The cause (an init, PKI or I/O error) says.
            _ => None,
        };
    }
    if let Some(e) = e.downcast_ref::<InitError>() {
        return match e {
            InitError::Exists(_) => Some(CANTCREAT),
            InitError::Invalid(_) | InitError::Config(_) => Some(USAGE),
            _ => None,
        };
    }
    if let Some(e) = e.downcast_ref::<StoreError>() {
        return match e {
            StoreError::Decode { .. } | StoreError::Schema { .. } => Some(DATAERR),
            StoreError::Conflict(_) | StoreError::NotFound(_) => Some(REFUSED),
            StoreError::Backend(crate::registry::KvError::Sled(sled::Error::Io(_))) => None,
            StoreError::Backend(crate::registry::KvError::Setup(_)) => Some(CONFIG),
            StoreError::Backend(_) => Some(UNAVAILABLE),
        };
    }
    if let Some(e) = e.downcast_ref::<AuditError>() {
        return match e {
            AuditError::Corrupt { .. } => Some(DATAERR),
            AuditError::WriteFailed(_) => Some(IOERR),
            _ => None,
        };
    }
    if let Some(VerifyError::Broken { .. } | VerifyError::Index(_)) = e.downcast_ref() {
        return Some(REFUSED);
    }
    if let Some(e) = e.downcast_ref::<std::io::Error>() {
        use std::io::ErrorKind::*;
        return Some(match e.kind() {
            PermissionDenied => NOPERM,
            NotFound => NOINPUT,
            AlreadyExists => CANTCREAT,
            AddrInUse | AddrNotAvailable => UNAVAILABLE,
            _ => IOERR,
        });
    }
    if let Some(sled::Error::Io(io)) = e.downcast_ref::<sled::Error>() {
        return classify(io);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_errors_map_to_their_status_through_context() {
        let usage = anyhow::Error::new(UsageError("--published: bad".into())).context("grant");
        assert_eq!(code_for(&usage), USAGE);
        let cfg = anyhow::Error::new(ConfigError::Syntax {
            path: "gate.toml".into(),
            message: "x".into(),
        });
        assert_eq!(code_for(&cfg), CONFIG);
        let denied = anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::PermissionDenied))
            .context("reading the key");
        assert_eq!(code_for(&denied), NOPERM);
        let in_use = anyhow::Error::new(crate::ops::server::ServeError::Bind {
            addr: "127.0.0.1:1".parse().expect("addr"),
            source: std::io::Error::from(std::io::ErrorKind::AddrInUse),
        });
        assert_eq!(code_for(&in_use), UNAVAILABLE);
        assert_eq!(code_for(&anyhow::anyhow!("something else")), SOFTWARE);
    }

    #[test]
    fn help_lists_every_status() {
        for code in [
            OK,
            REFUSED,
            USAGE,
            DATAERR,
            NOINPUT,
            UNAVAILABLE,
            SOFTWARE,
            CANTCREAT,
            IOERR,
            NOPERM,
            CONFIG,
        ] {
            assert!(
                HELP.lines()
                    .any(|l| l.trim_start().starts_with(&format!("{code} "))),
                "exit status {code} is not in the help table"
            );
        }
    }
}
