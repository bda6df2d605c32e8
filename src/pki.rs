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

use std::fmt;
use std::fs::{self, OpenOptions, Permissions};
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use p12_keystore::{
    Certificate as P12Certificate, EncryptionAlgorithm, KeyStore, KeyStoreEntry, MacAlgorithm,
    PrivateKey as P12PrivateKey, PrivateKeyChain,
};
use rand::Rng;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber, PKCS_ECDSA_P256_SHA256,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer, X509Certificate};

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
}

impl ClientKind {
    /// The subject OU value marking this kind.
    pub fn ou(self) -> &'static str {
        match self {
            ClientKind::Terminal => OU_TERMINAL,
            ClientKind::SiteSystem => OU_SITE_SYSTEM,
        }
    }

    fn from_ou(ou: &str) -> Option<ClientKind> {
        match ou {
            OU_TERMINAL => Some(ClientKind::Terminal),
            OU_SITE_SYSTEM => Some(ClientKind::SiteSystem),
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

fn parse_cert(cert_der: &[u8]) -> Result<X509Certificate<'_>, PkiError> {
    let (rest, cert) = X509Certificate::from_der(cert_der)
        .map_err(|e| PkiError::Parse(format!("invalid X.509 certificate: {e}")))?;
    if !rest.is_empty() {
        return Err(PkiError::Parse(format!(
            "{} trailing bytes after the X.509 certificate",
            rest.len()
        )));
    }
    Ok(cert)
}

/// Reads the identity of a DER certificate.
pub fn cert_info(cert_der: &[u8]) -> Result<CertInfo, PkiError> {
    let cert = parse_cert(cert_der)?;
    let spki = cert.tbs_certificate.subject_pki.raw;
    let fingerprint = hex::encode(ring::digest::digest(&ring::digest::SHA256, spki));

    // Serial as an unsigned big-endian number: drop DER's sign-padding zero bytes.
    let raw = cert.raw_serial();
    let first = raw
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(raw.len().saturating_sub(1));
    let serial = hex::encode(raw.get(first..).unwrap_or_default());

    let subject_cn = match cert.subject().iter_common_name().next() {
        Some(cn) => Some(
            cn.as_str()
                .map_err(|e| PkiError::Parse(format!("unreadable subject CN: {e}")))?
                .to_owned(),
        ),
        None => None,
    };
    let kind = cert
        .subject()
        .iter_organizational_unit()
        .filter_map(|ou| ou.as_str().ok())
        .find_map(ClientKind::from_ou);
    let validity = cert.validity();
    Ok(CertInfo {
        fingerprint,
        serial,
        subject_cn,
        not_before: validity.not_before.to_datetime(),
        not_after: validity.not_after.to_datetime(),
        kind,
    })
}

/// Validates a name used as a file stem (terminal names):
/// `^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$` and not containing `..`.
pub fn valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    let Some(first) = bytes.first() else {
        return false;
    };
    bytes.len() <= 64
        && first.is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && !name.contains("..")
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
fn ensure_absent(paths: &[&Path]) -> Result<(), PkiError> {
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
fn write_all_new(files: &[(&Path, &[u8], u32)]) -> Result<(), PkiError> {
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

fn read_to_string(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    })
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

/// Creates a new CA (ECDSA P-256, CA:true pathlen 0, keyCertSign+cRLSign, 10 years) and
/// writes cert (PEM, 0644) and key (PEM, 0600, created with mode 0600 from the start).
/// Refuses to overwrite existing files.
pub fn create_ca(common_name: &str, cert_path: &Path, key_path: &Path) -> Result<(), PkiError> {
    validate_common_name(common_name)?;
    ensure_absent(&[cert_path, key_path])?;

    let key = new_key()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.serial_number = Some(random_serial());
    let start = now() - BACKDATE;
    params.not_before = start;
    params.not_after = start + Duration::days(CA_VALIDITY_DAYS);
    let cert = params.self_signed(&key)?;

    let key_pem = key.serialize_pem();
    let cert_pem = cert.pem();
    // Key first: if the certificate cannot be written, the key is removed again.
    write_all_new(&[
        (key_path, key_pem.as_bytes(), 0o600),
        (cert_path, cert_pem.as_bytes(), 0o644),
    ])
}

/// Loaded CA able to issue.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    subject: String,
    not_after: OffsetDateTime,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca")
            .field("subject", &self.subject)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// Result of [`Ca::issue_client`].
#[derive(Debug, Clone)]
pub struct IssuedClient {
    pub info: CertInfo,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub p12_path: PathBuf,
    pub p12_password: String,
}

impl Ca {
    /// Loads the CA certificate (PEM; the first certificate in the file) and its private key
    /// (PEM). Checks that the certificate is a CA, that the key matches it and that it has not
    /// expired.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Ca, PkiError> {
        let cert_file = read_to_string(cert_path)?;
        let key_pem = read_to_string(key_path)?;
        let cert_der = CertificateDer::from_pem_slice(cert_file.as_bytes()).map_err(|e| {
            PkiError::Parse(format!("{}: no PEM certificate: {e}", cert_path.display()))
        })?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| {
            PkiError::Parse(format!("{}: unusable private key: {e}", key_path.display()))
        })?;

        let (subject, not_after) = {
            let cert = parse_cert(&cert_der)?;
            let is_ca = cert
                .basic_constraints()
                .map_err(|e| PkiError::Parse(format!("basicConstraints: {e}")))?
                .is_some_and(|bc| bc.value.ca);
            if !is_ca {
                return Err(PkiError::Invalid(format!(
                    "{} is not a CA certificate",
                    cert_path.display()
                )));
            }
            if cert.tbs_certificate.subject_pki.raw != key.subject_public_key_info().as_slice() {
                return Err(PkiError::Invalid(format!(
                    "{} does not match the CA certificate {}",
                    key_path.display(),
                    cert_path.display()
                )));
            }
            let not_after = cert.validity().not_after.to_datetime();
            if not_after <= now() {
                return Err(PkiError::Invalid(format!(
                    "CA certificate {} expired at {not_after}",
                    cert_path.display()
                )));
            }
            (cert.subject().to_string(), not_after)
        };

        let cert_pem = first_cert_pem(&cert_file).ok_or_else(|| {
            PkiError::Parse(format!("{}: no PEM certificate", cert_path.display()))
        })?;
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)?;
        Ok(Ca {
            issuer,
            cert_pem,
            cert_der,
            subject,
            not_after,
        })
    }

    /// The CA certificate as PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate as DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// Server certificate for the gateway: ECDSA P-256, serverAuth EKU, SANs = given DNS names
    /// and IP addresses (an IP becomes an IP SAN, otherwise DNS), 825 days (cut to the CA's
    /// expiry if that is sooner). Writes cert chain PEM (leaf then CA, 0644) and key (0600).
    /// Refuses to overwrite.
    pub fn issue_server(
        &self,
        sans: &[String],
        cert_path: &Path,
        key_path: &Path,
    ) -> Result<CertInfo, PkiError> {
        if sans.is_empty() {
            return Err(PkiError::Invalid(
                "a server certificate needs at least one DNS name or IP address".into(),
            ));
        }
        let mut san_types = Vec::with_capacity(sans.len());
        for san in sans {
            let s = san.trim();
            let s = s
                .strip_prefix('[')
                .and_then(|x| x.strip_suffix(']'))
                .unwrap_or(s);
            if s.is_empty() {
                return Err(PkiError::Invalid("empty subject alternative name".into()));
            }
            san_types.push(match s.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => {
                    if !s
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'*'))
                    {
                        return Err(PkiError::Invalid(format!(
                            "{san:?} is neither an IP address nor a DNS name (use the punycode form for IDNs)"
                        )));
                    }
                    SanType::DnsName(s.to_owned().try_into()?)
                }
            });
        }
        ensure_absent(&[cert_path, key_path])?;

        let key = new_key()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, sans[0].trim());
        params.distinguished_name = dn;
        params.subject_alt_names = san_types;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        let start = now() - BACKDATE;
        params.not_before = start;
        params.not_after = (start + Duration::days(SERVER_VALIDITY_DAYS)).min(self.not_after);
        let cert = params.signed_by(&key, &self.issuer)?;

        let chain = format!("{}{}", cert.pem(), self.cert_pem);
        let key_pem = key.serialize_pem();
        let info = cert_info(cert.der())?;
        write_all_new(&[
            (key_path, key_pem.as_bytes(), 0o600),
            (cert_path, chain.as_bytes(), 0o644),
        ])?;
        Ok(info)
    }

    /// Client certificate (clientAuth EKU only, digitalSignature), CN = common_name, OU marking
    /// the kind, ECDSA P-256, `days` validity, random 16-byte serial. Writes DIR/NAME.crt
    /// (leaf+CA PEM, 0644), DIR/NAME.key (0600) and DIR/NAME.p12 (0600; PKCS#12 with the key,
    /// the leaf and the CA cert, friendly name NAME, fresh random 20-character password,
    /// PBES2/PBKDF2-SHA256/AES-256-CBC + HMAC-SHA256 MAC). Refuses to overwrite. Creates DIR
    /// (0700) if missing.
    pub fn issue_client(
        &self,
        kind: ClientKind,
        common_name: &str,
        name: &str,
        dir: &Path,
        days: u32,
    ) -> Result<IssuedClient, PkiError> {
        if !valid_name(name) {
            return Err(PkiError::InvalidName(name.to_owned()));
        }
        validate_common_name(common_name)?;
        if !(1..=MAX_CLIENT_DAYS).contains(&days) {
            return Err(PkiError::Invalid(format!(
                "validity must be 1-{MAX_CLIENT_DAYS} days (got {days})"
            )));
        }
        let start = now() - BACKDATE;
        let not_after = now() + Duration::days(i64::from(days));
        if not_after > self.not_after {
            return Err(PkiError::Invalid(format!(
                "a {days}-day certificate would outlive the CA, which expires at {}",
                self.not_after
            )));
        }
        let cert_path = dir.join(format!("{name}.crt"));
        let key_path = dir.join(format!("{name}.key"));
        let p12_path = dir.join(format!("{name}.p12"));
        ensure_absent(&[&cert_path, &key_path, &p12_path])?;

        let key = new_key()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        dn.push(DnType::OrganizationalUnitName, kind.ou());
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        params.not_before = start;
        params.not_after = not_after;
        let cert = params.signed_by(&key, &self.issuer)?;
        let info = cert_info(cert.der())?;

        let password = random_password();
        let p12 = build_p12(
            name,
            key.serialized_der(),
            cert.der(),
            &self.cert_der,
            &password,
        )?;
        let chain = format!("{}{}", cert.pem(), self.cert_pem);
        let key_pem = key.serialize_pem();

        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| PkiError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        write_all_new(&[
            (&key_path, key_pem.as_bytes(), 0o600),
            (&p12_path, &p12, 0o600),
            (&cert_path, chain.as_bytes(), 0o644),
        ])?;
        Ok(IssuedClient {
            info,
            cert_path,
            key_path,
            p12_path,
            p12_password: password,
        })
    }
}

/// The first `CERTIFICATE` PEM block of `text`, with a trailing newline.
fn first_cert_pem(text: &str) -> Option<String> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let start = text.find(BEGIN)?;
    let len = text.get(start..)?.find(END)? + END.len();
    let block = text.get(start..start + len)?;
    Some(format!("{block}\n"))
}

/// Builds the PKCS#12 file: one key bag (friendly name `name`) linked by localKeyId to the
/// leaf, plus the CA certificate; PBES2 (PBKDF2-HMAC-SHA256, AES-256-CBC) and an HMAC-SHA256 MAC.
fn build_p12(
    name: &str,
    key_pkcs8_der: &[u8],
    leaf_der: &[u8],
    ca_der: &[u8],
    password: &str,
) -> Result<Vec<u8>, PkiError> {
    let p12_err = |what: &str, e: p12_keystore::error::Error| PkiError::P12(format!("{what}: {e}"));
    let key = P12PrivateKey::from_der(key_pkcs8_der).map_err(|e| p12_err("private key", e))?;
    let leaf = P12Certificate::from_der(leaf_der).map_err(|e| p12_err("certificate", e))?;
    let ca = P12Certificate::from_der(ca_der).map_err(|e| p12_err("CA certificate", e))?;
    // localKeyId links key and leaf: the first 20 bytes of the leaf's SHA-256 (20 bytes, the
    // size OpenSSL and Windows use for their SHA-1 based ids).
    let digest = ring::digest::digest(&ring::digest::SHA256, leaf_der);
    let local_key_id = digest
        .as_ref()
        .get(..20)
        .unwrap_or(digest.as_ref())
        .to_vec();
    let chain = PrivateKeyChain::new(local_key_id, key, [leaf, ca]);
    let mut store = KeyStore::new();
    store.add_entry(name, KeyStoreEntry::PrivateKeyChain(chain));
    store
        .writer(password)
        .encryption_algorithm(EncryptionAlgorithm::PbeWithHmacSha256AndAes256)
        .encryption_iterations(P12_ITERATIONS)
        .mac_algorithm(MacAlgorithm::HmacSha256)
        .mac_iterations(P12_ITERATIONS)
        .write()
        .map_err(|e| p12_err("writing", e))
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::sync::Arc;

    struct Setup {
        _tmp: tempfile::TempDir,
        root: PathBuf,
        ca_cert: PathBuf,
        ca: Ca,
    }

    fn setup(cn: &str) -> Setup {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let ca_cert = root.join("ca.crt");
        let ca_key = root.join("ca.key");
        create_ca(cn, &ca_cert, &ca_key).unwrap();
        let ca = Ca::load(&ca_cert, &ca_key).unwrap();
        Setup {
            _tmp: tmp,
            root,
            ca_cert,
            ca,
        }
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn names() {
        for ok in ["a", "dr-tanaka.pc01", "A_b-9", "x1.y2", &"a".repeat(64)] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in [
            "",
            ".hidden",
            "-x",
            "_x",
            "a..b",
            "a/b",
            "../x",
            "a b",
            "名前",
            "a\0",
            &"a".repeat(65),
        ] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn ca_properties_and_modes() {
        let s = setup("Seibo Test CA");
        assert_eq!(mode(&s.ca_cert), 0o644);
        assert_eq!(mode(&s.root.join("ca.key")), 0o600);
        let der = load_certs(&s.ca_cert).unwrap();
        assert_eq!(der.len(), 1);
        assert_eq!(der[0].as_ref(), s.ca.cert_der().as_ref());
        let (_, cert) = X509Certificate::from_der(&der[0]).unwrap();
        let bc = cert.basic_constraints().unwrap().unwrap().value;
        assert!(bc.ca);
        assert_eq!(bc.path_len_constraint, Some(0));
        let ku = cert.key_usage().unwrap().unwrap().value;
        assert!(ku.key_cert_sign() && ku.crl_sign() && !ku.digital_signature());
        cert.verify_signature(None).unwrap();
        let info = cert_info(&der[0]).unwrap();
        assert_eq!(info.subject_cn.as_deref(), Some("Seibo Test CA"));
        assert_eq!(info.kind, None);
        let days = (info.not_after - info.not_before).whole_days();
        assert!((3650..=3653).contains(&days), "{days}");
        assert_eq!(s.ca.cert_pem(), fs::read_to_string(&s.ca_cert).unwrap());
        assert!(format!("{:?}", s.ca).contains("Seibo Test CA"));

        // Refuses to overwrite, and leaves the existing files untouched.
        let before = fs::read(&s.ca_cert).unwrap();
        let err = create_ca("Other", &s.ca_cert, &s.root.join("new.key")).unwrap_err();
        assert!(matches!(err, PkiError::AlreadyExists { .. }), "{err}");
        assert!(!s.root.join("new.key").exists());
        let err = create_ca("Other", &s.root.join("new.crt"), &s.root.join("ca.key")).unwrap_err();
        assert!(matches!(err, PkiError::AlreadyExists { .. }), "{err}");
        assert!(!s.root.join("new.crt").exists());
        assert_eq!(before, fs::read(&s.ca_cert).unwrap());
    }

    #[test]
    fn load_rejects_mismatched_key_and_non_ca() {
        let a = setup("CA A");
        let b = setup("CA B");
        let err = Ca::load(&a.ca_cert, &b.root.join("ca.key")).unwrap_err();
        assert!(matches!(err, PkiError::Invalid(_)), "{err}");
        let srv = a.root.join("srv.crt");
        let srv_key = a.root.join("srv.key");
        a.ca.issue_server(&["localhost".into()], &srv, &srv_key)
            .unwrap();
        let err = Ca::load(&srv, &srv_key).unwrap_err();
        assert!(matches!(err, PkiError::Invalid(_)), "{err}");
        let err = Ca::load(&a.root.join("missing.crt"), &srv_key).unwrap_err();
        assert!(matches!(err, PkiError::Io { .. }), "{err}");
    }

    #[test]
    fn server_certificate() {
        let s = setup("Seibo Test CA");
        let cert_path = s.root.join("gw.crt");
        let key_path = s.root.join("gw.key");
        let sans = vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".into(),
        ];
        let info = s.ca.issue_server(&sans, &cert_path, &key_path).unwrap();
        assert_eq!(mode(&key_path), 0o600);
        assert_eq!(mode(&cert_path), 0o644);
        let chain = load_certs(&cert_path).unwrap();
        assert_eq!(chain.len(), 2);
        assert_eq!(chain[1].as_ref(), s.ca.cert_der().as_ref());
        assert_eq!(cert_info(&chain[0]).unwrap(), info);
        let days = (info.not_after - info.not_before).whole_days();
        assert_eq!(days, 825);
        assert_eq!(info.serial.len(), 32);

        let (_, leaf) = X509Certificate::from_der(&chain[0]).unwrap();
        let (_, ca) = X509Certificate::from_der(&chain[1]).unwrap();
        leaf.verify_signature(Some(ca.public_key())).unwrap();
        let san = leaf.subject_alternative_name().unwrap().unwrap().value;
        use x509_parser::extensions::GeneralName;
        let mut dns = Vec::new();
        let mut ips = Vec::new();
        for g in &san.general_names {
            match g {
                GeneralName::DNSName(d) => dns.push(d.to_string()),
                GeneralName::IPAddress(ip) => ips.push(ip.to_vec()),
                other => panic!("unexpected SAN {other:?}"),
            }
        }
        assert_eq!(dns, ["localhost"]);
        let v6: Vec<u8> = "::1"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets()
            .to_vec();
        assert_eq!(ips, [vec![127, 0, 0, 1], v6]);
        let eku = leaf.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && !eku.client_auth);
        assert!(load_key(&key_path).is_ok());

        let err = s.ca.issue_server(&sans, &cert_path, &key_path).unwrap_err();
        assert!(matches!(err, PkiError::AlreadyExists { .. }), "{err}");
        let err =
            s.ca.issue_server(
                &["bad name!".into()],
                &s.root.join("x.crt"),
                &s.root.join("x.key"),
            )
            .unwrap_err();
        assert!(matches!(err, PkiError::Invalid(_)), "{err}");
        assert!(s
            .ca
            .issue_server(&[], &s.root.join("x.crt"), &s.root.join("x.key"))
            .is_err());
        assert!(!s.root.join("x.key").exists());
    }

    #[test]
    fn client_certificate_identity() {
        let s = setup("Seibo Test CA");
        let dir = s.root.join("terminals").join("ward3");
        let issued =
            s.ca.issue_client(
                ClientKind::Terminal,
                "田中 一郎 (内科)",
                "dr-tanaka.pc01",
                &dir,
                365,
            )
            .unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(issued.cert_path, dir.join("dr-tanaka.pc01.crt"));
        assert_eq!(issued.key_path, dir.join("dr-tanaka.pc01.key"));
        assert_eq!(issued.p12_path, dir.join("dr-tanaka.pc01.p12"));
        assert_eq!(mode(&issued.key_path), 0o600);
        assert_eq!(mode(&issued.p12_path), 0o600);
        assert_eq!(mode(&issued.cert_path), 0o644);

        let chain = load_certs(&issued.cert_path).unwrap();
        assert_eq!(chain.len(), 2);
        let info = cert_info(&chain[0]).unwrap();
        assert_eq!(info, issued.info);
        let (_, leaf) = X509Certificate::from_der(&chain[0]).unwrap();
        let expected = hex::encode(ring::digest::digest(
            &ring::digest::SHA256,
            leaf.tbs_certificate.subject_pki.raw,
        ));
        assert_eq!(info.fingerprint, expected);
        assert_eq!(info.fingerprint.len(), 64);
        assert_eq!(info.kind, Some(ClientKind::Terminal));
        assert_eq!(info.subject_cn.as_deref(), Some("田中 一郎 (内科)"));
        assert_eq!(info.serial, hex::encode(leaf.raw_serial()));
        assert_eq!(info.serial.len(), 32);
        let validity = info.not_after - info.not_before;
        assert!(
            validity >= Duration::days(365) && validity <= Duration::days(365) + Duration::hours(1),
            "{validity}"
        );
        let now = OffsetDateTime::now_utc();
        assert!(info.not_before <= now && info.not_after > now + Duration::days(364));

        let eku = leaf.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth && eku.other.is_empty());
        let ku = leaf.key_usage().unwrap().unwrap().value;
        assert!(ku.digital_signature() && !ku.key_cert_sign());
        let (_, ca) = X509Certificate::from_der(&chain[1]).unwrap();
        leaf.verify_signature(Some(ca.public_key())).unwrap();

        // The key file holds the certificate's key.
        let key_pem = fs::read_to_string(&issued.key_path).unwrap();
        let kp = KeyPair::from_pem(&key_pem).unwrap();
        assert_eq!(
            kp.subject_public_key_info(),
            leaf.tbs_certificate.subject_pki.raw
        );

        // Site-system marker.
        let site =
            s.ca.issue_client(ClientKind::SiteSystem, "lab-system", "lab", &dir, 30)
                .unwrap();
        assert_eq!(site.info.kind, Some(ClientKind::SiteSystem));
        assert_ne!(site.info.fingerprint, info.fingerprint);
        assert_ne!(site.info.serial, info.serial);
        assert_ne!(site.p12_password, issued.p12_password);
    }

    #[test]
    fn client_refusals() {
        let s = setup("Seibo Test CA");
        let dir = s.root.join("t");
        let first =
            s.ca.issue_client(ClientKind::Terminal, "Dr A", "pc1", &dir, 30)
                .unwrap();
        let before = fs::read(&first.p12_path).unwrap();
        let err =
            s.ca.issue_client(ClientKind::Terminal, "Dr A", "pc1", &dir, 30)
                .unwrap_err();
        assert!(matches!(err, PkiError::AlreadyExists { .. }), "{err}");
        assert_eq!(before, fs::read(&first.p12_path).unwrap());

        // Only one of the three files present: still refused, nothing else written.
        fs::write(dir.join("pc2.p12"), b"x").unwrap();
        let err =
            s.ca.issue_client(ClientKind::Terminal, "Dr B", "pc2", &dir, 30)
                .unwrap_err();
        assert!(matches!(err, PkiError::AlreadyExists { .. }), "{err}");
        assert!(!dir.join("pc2.key").exists() && !dir.join("pc2.crt").exists());

        let other = s.root.join("other");
        for bad in ["../evil", "a/b", "", ".x", "a..b", "x y"] {
            let err =
                s.ca.issue_client(ClientKind::Terminal, "Dr", bad, &other, 30)
                    .unwrap_err();
            assert!(matches!(err, PkiError::InvalidName(_)), "{bad:?}: {err}");
        }
        assert!(!other.exists(), "nothing written for invalid names");
        assert!(!s.root.join("evil.key").exists());

        for days in [0, MAX_CLIENT_DAYS + 1] {
            let err =
                s.ca.issue_client(ClientKind::Terminal, "Dr", "pc3", &other, days)
                    .unwrap_err();
            assert!(matches!(err, PkiError::Invalid(_)), "{err}");
        }
        for cn in ["", "  ", "a\nb", &"x".repeat(65)] {
            let err =
                s.ca.issue_client(ClientKind::Terminal, cn, "pc3", &other, 30)
                    .unwrap_err();
            assert!(matches!(err, PkiError::Invalid(_)), "{cn:?}: {err}");
        }
        assert!(!other.exists());
    }

    #[test]
    fn write_new_file_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("secret");
        write_new_file(&p, b"s3cret", 0o600).unwrap();
        assert_eq!(mode(&p), 0o600);
        assert_eq!(fs::read(&p).unwrap(), b"s3cret");
        let err = write_new_file(&p, b"other", 0o600).unwrap_err();
        assert!(matches!(err, PkiError::AlreadyExists { .. }), "{err}");
        assert_eq!(fs::read(&p).unwrap(), b"s3cret");
        // A symlink at the target is not followed.
        let target = tmp.path().join("target");
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(write_new_file(&link, b"x", 0o600).is_err());
        assert!(!target.exists());
        let err = write_new_file(&tmp.path().join("no/such/dir"), b"x", 0o600).unwrap_err();
        assert!(matches!(err, PkiError::Io { .. }), "{err}");
    }

    #[test]
    fn p12_round_trip_and_openssl() {
        let s = setup("Seibo Test CA");
        let dir = s.root.join("out");
        let issued =
            s.ca.issue_client(ClientKind::Terminal, "Dr Suzuki", "suzuki-pc", &dir, 90)
                .unwrap();
        let pw = &issued.p12_password;
        assert_eq!(pw.len(), 20);
        assert!(
            pw.bytes().all(|b| P12_PASSWORD_ALPHABET.contains(&b)),
            "{pw}"
        );
        for c in ['0', 'O', 'o', '1', 'l', 'I', 'i'] {
            assert!(!pw.contains(c));
        }

        let data = fs::read(&issued.p12_path).unwrap();
        let store =
            KeyStore::from_pkcs12(&data, pw, p12_keystore::Pkcs12ImportPolicy::Strict).unwrap();
        let (alias, chain) = store.private_key_chain().unwrap();
        assert_eq!(alias, "suzuki-pc");
        let pem_chain = load_certs(&issued.cert_path).unwrap();
        assert_eq!(chain.certs().len(), 2);
        assert_eq!(chain.certs()[0].as_der(), pem_chain[0].as_ref());
        assert_eq!(chain.certs()[1].as_der(), s.ca.cert_der().as_ref());
        let key = load_key(&issued.key_path).unwrap();
        assert_eq!(chain.key().as_der(), key.secret_der());

        assert!(KeyStore::from_pkcs12(
            &data,
            "WrongPassword234567x",
            p12_keystore::Pkcs12ImportPolicy::Strict
        )
        .is_err());

        // OpenSSL must be present on this machine: the check is not optional.
        let openssl = |args: &[&str]| {
            std::process::Command::new("openssl")
                .args(args)
                .output()
                .expect("openssl must be on PATH")
        };
        let p12 = issued.p12_path.to_str().unwrap();
        let out = openssl(&[
            "pkcs12",
            "-in",
            p12,
            "-passin",
            &format!("pass:{pw}"),
            "-info",
            "-nokeys",
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "openssl failed: {stderr}");
        assert!(stderr.contains("MAC: sha256"), "{stderr}");
        assert!(stderr.contains("PBES2, PBKDF2, AES-256-CBC"), "{stderr}");
        assert!(
            !stderr.contains("RC2") && !stderr.contains("3DES"),
            "{stderr}"
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(stdout.matches("BEGIN CERTIFICATE").count(), 2, "{stdout}");

        // The key decrypts with OpenSSL too and has the friendly name NAME.
        let out = openssl(&[
            "pkcs12",
            "-in",
            p12,
            "-passin",
            &format!("pass:{pw}"),
            "-nocerts",
            "-nodes",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("friendlyName: suzuki-pc"), "{stdout}");
        assert!(stdout.contains("PRIVATE KEY"), "{stdout}");

        let out = openssl(&[
            "pkcs12",
            "-in",
            p12,
            "-passin",
            "pass:WrongPassword234567x",
            "-noout",
        ]);
        assert!(!out.status.success());
    }

    // ---- in-memory rustls handshake ----

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    fn server_config(
        s: &Setup,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Arc<rustls::ServerConfig> {
        let srv_cert = s.root.join("gw.crt");
        let srv_key = s.root.join("gw.key");
        if !srv_cert.exists() {
            s.ca.issue_server(
                &["localhost".into(), "127.0.0.1".into()],
                &srv_cert,
                &srv_key,
            )
            .unwrap();
        }
        let mut roots = rustls::RootCertStore::empty();
        for c in load_certs(&s.ca_cert).unwrap() {
            roots.add(c).unwrap();
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider(),
        )
        .build()
        .unwrap();
        Arc::new(
            rustls::ServerConfig::builder_with_provider(provider())
                .with_protocol_versions(versions)
                .unwrap()
                .with_client_cert_verifier(verifier)
                .with_single_cert(load_certs(&srv_cert).unwrap(), load_key(&srv_key).unwrap())
                .unwrap(),
        )
    }

    fn client_config(
        trusted_ca: &Path,
        client_cert: &Path,
        client_key: &Path,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for c in load_certs(trusted_ca).unwrap() {
            roots.add(c).unwrap();
        }
        Arc::new(
            rustls::ClientConfig::builder_with_provider(provider())
                .with_protocol_versions(versions)
                .unwrap()
                .with_root_certificates(roots)
                .with_client_auth_cert(
                    load_certs(client_cert).unwrap(),
                    load_key(client_key).unwrap(),
                )
                .unwrap(),
        )
    }

    /// Runs the handshake plus one application-data exchange; returns the server connection
    /// or the first TLS error from either side.
    fn handshake(
        server: Arc<rustls::ServerConfig>,
        client: Arc<rustls::ClientConfig>,
        host: &str,
    ) -> Result<rustls::ServerConnection, rustls::Error> {
        use std::io::Read;
        let name = rustls_pki_types::ServerName::try_from(host.to_owned()).unwrap();
        let mut cli = rustls::ClientConnection::new(client, name).unwrap();
        let mut srv = rustls::ServerConnection::new(server).unwrap();
        cli.writer().write_all(b"ping").unwrap();
        let mut got = Vec::new();
        for _ in 0..20 {
            let mut buf = Vec::new();
            while cli.wants_write() {
                cli.write_tls(&mut buf).unwrap();
            }
            if !buf.is_empty() {
                srv.read_tls(&mut buf.as_slice()).unwrap();
                srv.process_new_packets()?;
            }
            let mut buf = Vec::new();
            while srv.wants_write() {
                srv.write_tls(&mut buf).unwrap();
            }
            if !buf.is_empty() {
                cli.read_tls(&mut buf.as_slice()).unwrap();
                cli.process_new_packets()?;
            }
            let mut chunk = [0u8; 16];
            if let Ok(n) = srv.reader().read(&mut chunk) {
                got.extend_from_slice(&chunk[..n]);
            }
            if !srv.is_handshaking() && !cli.is_handshaking() && got == b"ping" {
                return Ok(srv);
            }
        }
        panic!("handshake did not finish");
    }

    #[test]
    fn rustls_mutual_tls() {
        let s = setup("Seibo Test CA");
        let dir = s.root.join("terminals");
        let good =
            s.ca.issue_client(ClientKind::Terminal, "Dr Sato", "sato-pc", &dir, 30)
                .unwrap();
        let other = setup("Rogue CA");
        let bad = other
            .ca
            .issue_client(ClientKind::Terminal, "Dr Sato", "sato-pc", &other.root, 30)
            .unwrap();

        for versions in [
            &[&rustls::version::TLS13][..],
            &[&rustls::version::TLS12][..],
        ] {
            let server = server_config(&s, versions);
            for host in ["localhost", "127.0.0.1"] {
                let cfg = client_config(&s.ca_cert, &good.cert_path, &good.key_path, versions);
                let conn = handshake(server.clone(), cfg, host).unwrap();
                let peer = conn.peer_certificates().unwrap();
                let info = cert_info(&peer[0]).unwrap();
                assert_eq!(info.fingerprint, good.info.fingerprint);
                assert_eq!(info.kind, Some(ClientKind::Terminal));
            }

            let cfg = client_config(&s.ca_cert, &bad.cert_path, &bad.key_path, versions);
            let err = handshake(server.clone(), cfg, "localhost").unwrap_err();
            assert!(
                matches!(
                    err,
                    rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
                        | rustls::Error::AlertReceived(_)
                ),
                "{err:?}"
            );

            // The client refuses a server whose CA it does not trust.
            let cfg = client_config(&other.ca_cert, &good.cert_path, &good.key_path, versions);
            assert!(handshake(server.clone(), cfg, "localhost").is_err());
        }
    }

    #[test]
    fn load_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("empty.pem");
        fs::write(&p, "nothing here\n").unwrap();
        assert!(matches!(load_certs(&p), Err(PkiError::Parse(_))));
        assert!(matches!(load_key(&p), Err(PkiError::Parse(_))));
        assert!(matches!(
            load_certs(&tmp.path().join("missing")),
            Err(PkiError::Io { .. })
        ));
        assert!(matches!(cert_info(b"\x30\x03abc"), Err(PkiError::Parse(_))));
    }
}
