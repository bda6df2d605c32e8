//! Site PKI for seibo-gate: the terminal CA, the gateway's server certificate and the
//! physicians' terminal client certificates (PEM + PKCS#12), plus reading a certificate's
//! identity.
//!
//! All keys are ECDSA P-256 (rcgen with the `ring` backend). Private keys and PKCS#12 files
//! are created with mode 0600 from the first byte on (`O_CREAT|O_EXCL`, mode passed to
//! `open(2)`), and nothing is ever overwritten.
//!
//! The PKCS#12 files use PBES2 (PBKDF2-HMAC-SHA256, AES-256-CBC, 10 000 iterations) for both
//! the shrouded key bag and the encrypted certificate safe, and an HMAC-SHA256 integrity MAC
//! (PKCS#12 KDF, 10 000 iterations). These are the OpenSSL 3 defaults and import on
//! Windows 10 (1709+), NSS `pk12util`, macOS and `openssl pkcs12`.
//!
//! Files: [`ca`] (creating and loading the CA, issuing server and client certificates),
//! [`cert`] (reading a certificate's identity), [`files`] (new files with exact modes, PEM
//! loading for rustls), [`p12`] (the PKCS#12 bundle).

mod ca;
mod cert;
mod constraints;
mod files;
mod p12;
#[cfg(test)]
mod tests;

pub use ca::{create_ca, create_constrained_ca, Ca, IssuedClient, LeafSpec};
pub use cert::cert_info;
pub use constraints::{host_permitted, permitted_subtrees, Permit};
pub use files::{load_certs, load_key, write_new_file};

use cert::parse_cert;
use files::{ensure_absent, read_to_string, write_all_new};
use p12::{build_p12, first_cert_pem};

use std::path::PathBuf;

use rand::Rng;
use rcgen::{KeyPair, SerialNumber, PKCS_ECDSA_P256_SHA256};
use time::{Duration, OffsetDateTime};

/// Validity of the CA certificate (10 years).
const CA_VALIDITY_DAYS: i64 = 3652;
/// Validity of the gateway's server certificate (the CA/Browser maximum that Apple and
/// Chrome still accept for private roots).
const SERVER_VALIDITY_DAYS: i64 = 825;
/// Largest accepted client certificate validity.
pub const MAX_CLIENT_DAYS: u32 = 3650;
/// Certificates are back-dated by this much to tolerate terminals with a slightly slow clock.
const BACKDATE: Duration = Duration::minutes(5);
/// Subject OU marking a physician's terminal certificate.
pub const OU_TERMINAL: &str = "terminal";
/// Subject OU marking a trusted in-hospital site system certificate.
pub const OU_SITE_SYSTEM: &str = "site-system";
/// Subject OU of a liaison-office staff certificate (the office console, issue 15).
pub const OU_STAFF: &str = "liaison-office-staff";
/// Subject OU marking a site gateway of the network (the peer API's only clients).
pub const OU_SITE_GATEWAY: &str = "site-gateway";
/// Length of the generated PKCS#12 password.
const P12_PASSWORD_LEN: usize = 20;
/// Password alphabet without look-alikes (no 0/O/o, 1/l/I/i).
const P12_PASSWORD_ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghjkmnpqrstuvwxyz23456789";
/// PBKDF2 / PKCS#12-KDF iteration count for the .p12 files.
const P12_ITERATIONS: u32 = 10_000;
/// Maximum length (characters) of a subject common name (X.520 ub-common-name).
const MAX_CN_CHARS: usize = 64;

/// Errors of the PKI module.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A file or directory could not be read, created or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Certificate or key generation failed in rcgen.
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// A certificate or key could not be parsed, or has unexpected content.
    #[error("parse error: {0}")]
    Parse(String),
    /// The PKCS#12 file could not be built.
    #[error("PKCS#12 error: {0}")]
    P12(String),
    /// Refusing to overwrite an existing file.
    #[error("{} already exists; refusing to overwrite", path.display())]
    AlreadyExists { path: PathBuf },
    /// A terminal name is not usable as a file stem.
    #[error(
        "invalid name {0:?}: use 1-64 characters A-Z a-z 0-9 . _ -, starting with a letter or digit, without \"..\""
    )]
    InvalidName(String),
    /// Any other invalid argument (common name, SAN, validity, mismatched CA key ...).
    #[error("invalid input: {0}")]
    Invalid(String),
}

/// Kind of client certificate: a physician's terminal, or (later) a trusted in-hospital site system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientKind {
    Terminal,
    SiteSystem,
    /// A liaison-office staff terminal (the office console's first factor, issue 15).
    Staff,
    /// Another site's gateway in the network (issue 14: the read-only peer API).
    SiteGateway,
}

impl ClientKind {
    /// The subject OU value marking this kind.
    pub fn ou(self) -> &'static str {
        match self {
            ClientKind::Terminal => OU_TERMINAL,
            ClientKind::SiteSystem => OU_SITE_SYSTEM,
            ClientKind::Staff => OU_STAFF,
            ClientKind::SiteGateway => OU_SITE_GATEWAY,
        }
    }

    fn from_ou(ou: &str) -> Option<ClientKind> {
        match ou {
            OU_TERMINAL => Some(ClientKind::Terminal),
            OU_SITE_SYSTEM => Some(ClientKind::SiteSystem),
            OU_STAFF => Some(ClientKind::Staff),
            OU_SITE_GATEWAY => Some(ClientKind::SiteGateway),
            _ => None,
        }
    }
}

/// Identity read from a certificate with x509-parser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// lower-case hex SHA-256 of the DER SubjectPublicKeyInfo (the terminal's identity)
    pub fingerprint: String,
    /// serial as lower-case hex
    pub serial: String,
    pub subject_cn: Option<String>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    /// from an OU=site-system / OU=terminal marker you put in the subject when issuing (None if absent)
    pub kind: Option<ClientKind>,
}

fn validate_common_name(cn: &str) -> Result<(), PkiError> {
    let chars = cn.chars().count();
    if cn.trim().is_empty() || chars > MAX_CN_CHARS {
        return Err(PkiError::Invalid(format!(
            "common name must have 1-{MAX_CN_CHARS} characters (got {chars})"
        )));
    }
    if cn.chars().any(char::is_control) {
        return Err(PkiError::Invalid(
            "common name must not contain control characters".into(),
        ));
    }
    Ok(())
}

/// A random positive 16-byte serial (first byte in 0x01..=0x7f, so the DER INTEGER is exactly
/// 16 bytes and never negative).
fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    rand::rng().fill(&mut bytes[..]);
    bytes[0] &= 0x7f;
    if bytes[0] == 0 {
        bytes[0] = 0x01;
    }
    SerialNumber::from_slice(&bytes)
}

/// A fresh random password from an unambiguous alphabet.
fn random_password() -> String {
    let mut rng = rand::rng();
    (0..P12_PASSWORD_LEN)
        .map(|_| {
            let i = rng.random_range(0..P12_PASSWORD_ALPHABET.len());
            char::from(P12_PASSWORD_ALPHABET.get(i).copied().unwrap_or(b'A'))
        })
        .collect()
}

/// Current time, whole seconds (X.509 times have second precision).
fn now() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(0).unwrap_or(now)
}

fn new_key() -> Result<KeyPair, PkiError> {
    Ok(KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?)
}
