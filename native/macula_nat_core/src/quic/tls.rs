//! Node-key authentication for QUIC.
//!
//! Each node presents a self-signed X.509 certificate for its ed25519 node
//! key. There is no CA and no host name: a peer *is* its key. The dialler
//! knows the NodeId it wants and accepts the server only if the certificate
//! key is that NodeId; the server requires a client certificate and learns
//! the client's NodeId from it. In both directions TLS 1.3's
//! CertificateVerify signature proves the peer holds the private key, so a
//! certificate copied from someone else is useless.
//!
//! Session resumption is off on both sides: a resumed TLS 1.3 session
//! presents no certificate, and every connection must prove its key again.

use crate::lock::lock;
use crate::{Identity, NodeId};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme};
use std::fmt;
use std::sync::{Arc, Mutex};

/// ALPN of the node-to-node protocol; bump the suffix on an incompatible change.
pub const ALPN: &[u8] = b"macula-nat/1";
/// Sent as the QUIC server name; never checked (SNI is off and the verifier
/// ignores names), but rustls needs a syntactically valid one.
pub(crate) const SERVER_NAME: &str = "macula-nat";

/// Ed25519 only: node keys are ed25519, so any other scheme is a foreign peer.
static ED25519_ONLY: WebPkiSupportedAlgorithms = WebPkiSupportedAlgorithms {
    all: &[webpki::ring::ED25519],
    mapping: &[(SignatureScheme::ED25519, &[webpki::ring::ED25519])],
};

/// The ring provider, explicitly: rustls' process-wide default might be
/// another one (or none) depending on what else is linked into the VM.
fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: once_cell::sync::Lazy<Arc<CryptoProvider>> =
        once_cell::sync::Lazy::new(|| Arc::new(rustls::crypto::ring::default_provider()));
    PROVIDER.clone()
}

/// The peer presented a valid certificate for a different node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerIdMismatch {
    pub expected: NodeId,
    pub found: NodeId,
}

impl fmt::Display for PeerIdMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "peer is node {} but {} was dialled", self.found, self.expected)
    }
}

impl std::error::Error for PeerIdMismatch {}

/// RFC 8410 PKCS#8 v1 wrapping of an ed25519 seed: a fixed 16-byte header
/// followed by the 32-byte seed.
fn ed25519_pkcs8(seed: &[u8; 32]) -> Vec<u8> {
    const HEADER: [u8; 16] = [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];
    let mut der = Vec::with_capacity(48);
    der.extend_from_slice(&HEADER);
    der.extend_from_slice(seed);
    der
}

/// The node's certificate and signing key, built once per endpoint.
pub(crate) fn node_certificate(identity: &Identity) -> Result<Arc<CertifiedKey>, String> {
    let pkcs8 = PrivatePkcs8KeyDer::from(ed25519_pkcs8(&identity.signing_key().to_bytes()));
    let key_pair = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, &rcgen::PKCS_ED25519)
        .map_err(|e| format!("node key: {e}"))?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, "macula-nat node");
    // rcgen's default validity (1975..4096) is kept on purpose: the key is
    // the identity, and clock skew between peers must not break connections.
    let cert = params.self_signed(&key_pair).map_err(|e| format!("certificate: {e}"))?;
    let signer = rustls::crypto::ring::sign::any_eddsa_type(&pkcs8).map_err(|e| format!("signer: {e}"))?;
    Ok(Arc::new(CertifiedKey::new(vec![cert.der().clone()], signer)))
}

/// The NodeId a certificate speaks for, if it is a well-formed self-signed
/// ed25519 certificate (the self-signature is checked by using the
/// certificate as its own trust anchor).
pub(crate) fn verify_node_cert(
    cert: &CertificateDer<'_>,
    now: UnixTime,
    usage: webpki::KeyUsage,
) -> Result<NodeId, rustls::Error> {
    let bad = |e: webpki::Error| rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))));
    let ee = webpki::EndEntityCert::try_from(cert).map_err(bad)?;
    let anchor = webpki::anchor_from_trusted_cert(cert).map_err(bad)?;
    ee.verify_for_usage(ED25519_ONLY.all, &[anchor], &[], now, usage, None, None).map_err(bad)?;
    node_id_from_spki(ee.subject_public_key_info().as_ref())
        .ok_or(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer))
}

/// The NodeId in a certificate the TLS layer already verified.
pub(crate) fn node_id_of(cert: &CertificateDer<'_>) -> Option<NodeId> {
    let ee = webpki::EndEntityCert::try_from(cert).ok()?;
    node_id_from_spki(ee.subject_public_key_info().as_ref())
}

/// SubjectPublicKeyInfo of an ed25519 key is a fixed 12-byte header (RFC
/// 8410: algorithm 1.3.101.112, no parameters) and the 32-byte key.
fn node_id_from_spki(spki: &[u8]) -> Option<NodeId> {
    const HEADER: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];
    let key = spki.strip_prefix(&HEADER[..])?;
    NodeId::from_slice(key)
}

fn tls12_refused() -> rustls::Error {
    rustls::Error::General("TLS 1.2 is not used by macula-nat".into())
}

/// What the client verifier saw, so a failed handshake can say whom it met.
pub(crate) type SeenPeer = Arc<Mutex<Option<NodeId>>>;

/// Client side: the server must be exactly the node we dialled.
#[derive(Debug)]
struct ExpectNode {
    expected: NodeId,
    seen: SeenPeer,
}

/// The signature half of both verifiers (rustls asks each trait for it):
/// TLS 1.2 refused, TLS 1.3 with ed25519 node keys only.
macro_rules! node_key_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            _message: &[u8],
            _cert: &CertificateDer<'_>,
            _dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Err(tls12_refused())
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &ED25519_ONLY)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            vec![SignatureScheme::ED25519]
        }
    };
}

impl ServerCertVerifier for ExpectNode {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if !intermediates.is_empty() {
            return Err(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer));
        }
        let found = verify_node_cert(end_entity, now, webpki::KeyUsage::server_auth())?;
        *lock(&self.seen) = Some(found);
        if found != self.expected {
            let e = PeerIdMismatch { expected: self.expected, found };
            return Err(rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e)))));
        }
        Ok(ServerCertVerified::assertion())
    }

    node_key_signatures!();
}

/// Server side: any node may connect, but it must prove a node key.
#[derive(Debug)]
struct AnyNode;

impl ClientCertVerifier for AnyNode {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if !intermediates.is_empty() {
            return Err(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer));
        }
        verify_node_cert(end_entity, now, webpki::KeyUsage::client_auth())?;
        Ok(ClientCertVerified::assertion())
    }

    node_key_signatures!();
}

/// rustls client config for dialling `expected`.
pub(crate) fn client_config(
    cert: &Arc<CertifiedKey>,
    expected: NodeId,
    seen: SeenPeer,
) -> Result<rustls::ClientConfig, rustls::Error> {
    let mut c = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ExpectNode { expected, seen }))
        .with_client_cert_resolver(Arc::new(SingleCertAndKey::from(cert.clone())));
    c.alpn_protocols = vec![ALPN.to_vec()];
    c.enable_sni = false;
    c.resumption = rustls::client::Resumption::disabled();
    Ok(c)
}

/// rustls server config accepting any node.
pub(crate) fn server_config(cert: &Arc<CertifiedKey>) -> Result<rustls::ServerConfig, rustls::Error> {
    let mut s = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(AnyNode))
        .with_cert_resolver(Arc::new(SingleCertAndKey::from(cert.clone())));
    s.alpn_protocols = vec![ALPN.to_vec()];
    s.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    s.send_tls13_tickets = 0;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_carries_the_node_id() {
        let id = Identity::generate();
        let ck = node_certificate(&id).unwrap();
        let cert = &ck.cert[0];
        let now = UnixTime::now();
        assert_eq!(verify_node_cert(cert, now, webpki::KeyUsage::server_auth()).unwrap(), id.node_id());
        assert_eq!(verify_node_cert(cert, now, webpki::KeyUsage::client_auth()).unwrap(), id.node_id());
        assert_eq!(node_id_of(cert), Some(id.node_id()));
    }

    #[test]
    fn tampered_certificate_is_rejected() {
        let id = Identity::generate();
        let ck = node_certificate(&id).unwrap();
        let mut der = ck.cert[0].as_ref().to_vec();
        // Swap the public key for another node's: the self-signature breaks.
        let other = Identity::generate().node_id();
        let pos = der.windows(32).position(|w| w == id.node_id().as_bytes()).unwrap();
        der[pos..pos + 32].copy_from_slice(other.as_bytes());
        let forged = CertificateDer::from(der);
        assert!(verify_node_cert(&forged, UnixTime::now(), webpki::KeyUsage::server_auth()).is_err());
        assert!(verify_node_cert(&CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01]), UnixTime::now(), webpki::KeyUsage::server_auth()).is_err());
    }
}
