//! Reading a certificate's identity (x509-parser).

use x509_parser::prelude::{FromDer, X509Certificate};

use super::*;

pub(super) fn parse_cert(cert_der: &[u8]) -> Result<X509Certificate<'_>, PkiError> {
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
