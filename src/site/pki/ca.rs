//! The terminal CA: created once, loaded to issue the gateway's server certificate and the
//! terminals' client certificates.

use std::fmt;
use std::fs;
use std::net::IpAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use time::{Duration, OffsetDateTime};

use super::*;

/// Creates a new CA (ECDSA P-256, CA:true pathlen 0, keyCertSign+cRLSign, 10 years) and
/// writes cert (PEM, 0644) and key (PEM, 0600, created with mode 0600 from the start).
/// Refuses to overwrite existing files.
pub fn create_ca(common_name: &str, cert_path: &Path, key_path: &Path) -> Result<(), PkiError> {
    create_constrained_ca(common_name, &[], cert_path, key_path)
}

/// [`create_ca`] with name constraints: the CA can vouch only for names and addresses inside
/// `permits` (none: unconstrained). The network's regional terminal CA is made this way.
pub fn create_constrained_ca(
    common_name: &str,
    permits: &[Permit],
    cert_path: &Path,
    key_path: &Path,
) -> Result<(), PkiError> {
    validate_common_name(common_name)?;
    ensure_absent(&[cert_path, key_path])?;

    let key = new_key()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.name_constraints = super::constraints::name_constraints(permits);
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

/// What [`Ca::issue_leaf`] puts in a certificate.
#[derive(Debug, Clone, Copy)]
pub struct LeafSpec<'a> {
    pub cn: &'a str,
    /// Subject OU marking the kind ([`ClientKind::ou`]), if any.
    pub ou: Option<&'a str>,
    /// DNS names and IP addresses (may be empty for a client-only certificate).
    pub sans: &'a [String],
    /// serverAuth and clientAuth extended key usages.
    pub server: bool,
    pub client: bool,
}

/// SAN strings as rcgen types: an IP address becomes an IP SAN, anything else a DNS name.
fn san_types(sans: &[String]) -> Result<Vec<SanType>, PkiError> {
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
    Ok(san_types)
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
        let cn = sans.first().map(|s| s.trim()).unwrap_or_default();
        let spec = LeafSpec {
            cn,
            ou: None,
            sans,
            server: true,
            client: false,
        };
        self.issue_leaf(&spec, cert_path, key_path)
    }

    /// A site gateway's certificate in a network (issue 14): CN = the site's id, OU =
    /// `site-gateway`, serverAuth and clientAuth, SANs = the hosts other sites reach it at.
    /// It serves the read-only peer API and presents itself when asking other sites; the
    /// peer API accepts no other kind of certificate.
    pub fn issue_site_gateway(
        &self,
        site: &str,
        sans: &[String],
        cert_path: &Path,
        key_path: &Path,
    ) -> Result<CertInfo, PkiError> {
        if sans.is_empty() {
            return Err(PkiError::Invalid(
                "a site gateway certificate needs at least one DNS name or IP address".into(),
            ));
        }
        let spec = LeafSpec {
            cn: site,
            ou: Some(OU_SITE_GATEWAY),
            sans,
            server: true,
            client: true,
        };
        self.issue_leaf(&spec, cert_path, key_path)
    }

    /// Any leaf certificate: ECDSA P-256, the extended key usages asked for, SANs as in
    /// [`Ca::issue_server`], 825 days (cut to the CA's expiry). Writes the chain PEM (leaf
    /// then CA, 0644) and the key (0600); refuses to overwrite.
    pub fn issue_leaf(
        &self,
        spec: &LeafSpec<'_>,
        cert_path: &Path,
        key_path: &Path,
    ) -> Result<CertInfo, PkiError> {
        validate_common_name(spec.cn)?;
        let san_types = san_types(spec.sans)?;
        ensure_absent(&[cert_path, key_path])?;

        let key = new_key()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, spec.cn);
        if let Some(ou) = spec.ou {
            dn.push(DnType::OrganizationalUnitName, ou);
        }
        params.distinguished_name = dn;
        params.subject_alt_names = san_types;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = Vec::new();
        if spec.server {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        if spec.client {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ClientAuth);
        }
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
        if !crate::registry::ids::TerminalName::is_valid(name) {
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
