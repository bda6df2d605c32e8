//! Step 1 of the request path: the mutual-TLS server configuration (art 12.1, 12.3) and the
//! peer's identity read from its certificate.
//!
//! TLS 1.3 and 1.2 only, ring as the one crypto provider, a client certificate chaining to
//! the site's terminal CA is mandatory, ALPN h2 and http/1.1, session tickets and a session
//! cache for cheap resumption.

use std::path::Path;
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::CertificateDer;

use crate::site::pki::{self, CertInfo};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{0}")]
    Pki(#[from] pki::PkiError),
    #[error("{path}: no certificate in file")]
    NoCert { path: String },
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client CA {path}: {message}")]
    Verifier { path: String, message: String },
}

/// The crypto provider used everywhere (boringtun needs ring; see CRATES.md).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the server side of a mutual-TLS listener.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: &Path,
) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = pki::load_certs(cert)?;
    if chain.is_empty() {
        return Err(TlsError::NoCert {
            path: cert.display().to_string(),
        });
    }
    let key = pki::load_key(key)?;
    let mut roots = RootCertStore::empty();
    let ca_certs = pki::load_certs(client_ca)?;
    if ca_certs.is_empty() {
        return Err(TlsError::NoCert {
            path: client_ca.display().to_string(),
        });
    }
    for c in ca_certs {
        roots.add(c).map_err(|e| TlsError::Verifier {
            path: client_ca.display().to_string(),
            message: e.to_string(),
        })?;
    }
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| TlsError::Verifier {
            path: client_ca.display().to_string(),
            message: e.to_string(),
        })?;
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    cfg.session_storage = rustls::server::ServerSessionMemoryCache::new(16 * 1024);
    cfg.ticketer = rustls::crypto::ring::Ticketer::new()?;
    Ok(Arc::new(cfg))
}

/// Server-authenticated TLS inside the WireGuard tunnel: the terminal is already identified
/// by its tunnel key, and the browser gets a secure origin (so `Secure` cookies work).
pub fn tunnel_server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = pki::load_certs(cert)?;
    if chain.is_empty() {
        return Err(TlsError::NoCert {
            path: cert.display().to_string(),
        });
    }
    let key = pki::load_key(key)?;
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    cfg.session_storage = rustls::server::ServerSessionMemoryCache::new(4 * 1024);
    cfg.ticketer = rustls::crypto::ring::Ticketer::new()?;
    Ok(Arc::new(cfg))
}

/// The verified client certificate's identity (the terminal's fingerprint and the details
/// kept for the audit).
pub fn peer_identity(certs: Option<&[CertificateDer<'_>]>) -> Option<CertInfo> {
    let leaf = certs?.first()?;
    pki::cert_info(leaf.as_ref()).ok()
}
