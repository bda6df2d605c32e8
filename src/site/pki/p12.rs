//! The PKCS#12 bundle a terminal imports: key and leaf plus the CA certificate.

use p12_keystore::{
    Certificate as P12Certificate, EncryptionAlgorithm, KeyStore, KeyStoreEntry, MacAlgorithm,
    PrivateKey as P12PrivateKey, PrivateKeyChain,
};

use super::*;

/// The first `CERTIFICATE` PEM block of `text`, with a trailing newline.
pub(super) fn first_cert_pem(text: &str) -> Option<String> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let start = text.find(BEGIN)?;
    let len = text.get(start..)?.find(END)? + END.len();
    let block = text.get(start..start + len)?;
    Some(format!("{block}\n"))
}

/// Builds the PKCS#12 file: one key bag (friendly name `name`) linked by localKeyId to the
/// leaf, plus the CA certificate; PBES2 (PBKDF2-HMAC-SHA256, AES-256-CBC) and an HMAC-SHA256 MAC.
pub(super) fn build_p12(
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
