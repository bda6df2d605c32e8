//! The peer API's TLS, both ends: the server accepts only site-gateway certificates of the
//! network's regional CA (OU `site-gateway`; a terminal's, a site system's or a server
//! certificate is refused at the handshake), and the client (`audit query --network`)
//! presents this site's gateway certificate and checks that the answering server is the
//! site it dialled.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, Error, RootCertStore,
    ServerConfig, SignatureScheme,
};

use crate::ingress::tls::{provider, TlsError};
use crate::site::pki::{self, ClientKind};

fn roots(ca: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in pki::load_certs(ca)? {
        roots.add(c).map_err(|e| TlsError::Verifier {
            path: ca.display().to_string(),
            message: e.to_string(),
        })?;
    }
    Ok(Arc::new(roots))
}

/// Whether a certificate is a site gateway's (OU `site-gateway`); its CN (the site id) then.
pub fn site_gateway_of(cert: &CertificateDer<'_>) -> Option<String> {
    let info = pki::cert_info(cert.as_ref()).ok()?;
    (info.kind == Some(ClientKind::SiteGateway))
        .then_some(info.subject_cn)
        .flatten()
}

fn not_a_site_gateway() -> Error {
    Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)
}

/// The webpki chain check, then: a site gateway's certificate, or refused.
#[derive(Debug)]
struct SiteGatewayClients(Arc<dyn ClientCertVerifier>);

impl ClientCertVerifier for SiteGatewayClients {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.0.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let ok = self.0.verify_client_cert(end_entity, intermediates, now)?;
        match site_gateway_of(end_entity) {
            Some(_) => Ok(ok),
            None => Err(not_a_site_gateway()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// The peer API's server: this site's gateway certificate, clients only site gateways of
/// the regional CA `ca`. TLS 1.3 and 1.2, HTTP/1.1.
pub fn server_config(cert: &Path, key: &Path, ca: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = pki::load_certs(cert)?;
    let key = pki::load_key(key)?;
    let provider = provider();
    let webpki = WebPkiClientVerifier::builder_with_provider(roots(ca)?, provider.clone())
        .build()
        .map_err(|e| TlsError::Verifier {
            path: ca.display().to_string(),
            message: e.to_string(),
        })?;
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(Arc::new(SiteGatewayClients(webpki)))
        .with_single_cert(chain, key)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// The webpki check of the server's chain and name, then: a site gateway's certificate.
#[derive(Debug)]
struct SiteGatewayServers(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for SiteGatewayServers {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let ok = self.0.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        match site_gateway_of(end_entity) {
            Some(_) => Ok(ok),
            None => Err(not_a_site_gateway()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// The client of `audit query --network`: trusts the regional CA `ca` for site gateways
/// only, presents this site's gateway certificate.
pub fn client_config(cert: &Path, key: &Path, ca: &Path) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let webpki = WebPkiServerVerifier::builder_with_provider(roots(ca)?, provider.clone())
        .build()
        .map_err(|e| TlsError::Verifier {
            path: ca.display().to_string(),
            message: e.to_string(),
        })?;
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SiteGatewayServers(webpki)))
        .with_client_auth_cert(pki::load_certs(cert)?, pki::load_key(key)?)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}
