//! Joining a cluster from the outside (a new member or a node agent): join tokens, pinning the
//! cluster CA from the TLS handshake against the token, and certificate signing requests.
//!
//! A join token is `ferry1.<sha256 of the CA certificate>.<id>.<secret>`. The joiner learns the
//! CA from the chain a server presents without trusting it, keeps it only if its hash matches
//! the token, and only then talks to the cluster (over TLS verified against that CA).

use std::sync::Arc;
use std::time::Duration;

use rcgen::{CertificateParams, DnType, KeyPair};

/// The DNS name every serving certificate carries.
pub use crate::client::SERVER_NAME;

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("invalid join token: {0}")]
    BadToken(String),
    #[error("connecting to {addr}: {message}")]
    Connect { addr: String, message: String },
    #[error(
        "{addr} did not present a CA matching the token (expected sha256 {expected}); is the token for this cluster?"
    )]
    CaMismatch { addr: String, expected: String },
    #[error("certificate request: {0}")]
    Csr(String),
}

/// SHA-256 of a certificate's DER, hex: what join tokens pin.
pub fn cert_hash(der: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, der).as_ref())
}

/// A new private key (PEM) and a certificate signing request for it (PEM).
pub fn new_csr(common_name: &str) -> Result<(String, String), JoinError> {
    let err = |e: rcgen::Error| JoinError::Csr(e.to_string());
    let key = KeyPair::generate().map_err(err)?;
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    let csr = params.serialize_request(&key).map_err(err)?;
    Ok((csr.pem().map_err(err)?, key.serialize_pem()))
}

/// A TLS channel to `through` verified against the pinned `ca_pem`, without a client
/// certificate: what a joiner uses to call the `Bootstrap` service.
pub async fn bootstrap_channel(
    through: &str,
    ca_pem: &str,
) -> Result<tonic::transport::Channel, JoinError> {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
    let cerr = |m: String| JoinError::Connect {
        addr: through.to_string(),
        message: m,
    };
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name(SERVER_NAME);
    Endpoint::from_shared(format!("https://{through}"))
        .map_err(|e| cerr(e.to_string()))?
        .tls_config(tls)
        .map_err(|e| cerr(e.to_string()))?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| cerr(e.to_string()))
}

/// Accepts any server certificate: used only to read the chain a server presents, which is then
/// checked against the hash pinned in the join token before anything is sent.
#[derive(Debug)]
struct ReadChainOnly(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for ReadChainOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS client configuration that accepts any server certificate, for callers that check what
/// they got some other way (the pinned CA hash here) or, like kubelet's HTTPS probes, not at all.
pub fn unverified_tls_client() -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(
        rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ReadChainOnly(provider)))
            .with_no_client_auth(),
    )
}

/// The CA certificate (PEM) that `addr` presents in its TLS chain, if its hash is `expected_hash`.
pub async fn fetch_pinned_ca(addr: &str, expected_hash: &str) -> Result<String, JoinError> {
    let cerr = |m: String| JoinError::Connect {
        addr: addr.to_string(),
        message: m,
    };
    let config = unverified_tls_client().map_err(cerr)?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| cerr("timed out".into()))?
        .map_err(|e| cerr(e.to_string()))?;
    let name =
        rustls::pki_types::ServerName::try_from(SERVER_NAME).map_err(|e| cerr(e.to_string()))?;
    let tls = tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp))
        .await
        .map_err(|_| cerr("TLS handshake timed out".into()))?
        .map_err(|e| cerr(format!("TLS handshake: {e}")))?;
    let (_, conn) = tls.get_ref();
    for cert in conn.peer_certificates().unwrap_or_default() {
        if cert_hash(cert.as_ref()) == expected_hash {
            return Ok(pem::encode(&pem::Pem::new(
                "CERTIFICATE",
                cert.as_ref().to_vec(),
            )));
        }
    }
    Err(JoinError::CaMismatch {
        addr: addr.to_string(),
        expected: expected_hash.to_string(),
    })
}

/// A parsed join token: `ferry1.<sha256 of the CA certificate>.<id>.<secret>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub ca_hash: String,
    pub id: String,
    pub secret: String,
}

impl JoinToken {
    /// A new token for the CA with `ca_hash`.
    pub fn generate(ca_hash: &str) -> JoinToken {
        use rand::Rng;
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        let mut rng = rand::rng();
        let mut pick = |n: usize| -> String {
            (0..n)
                .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
                .collect()
        };
        JoinToken {
            ca_hash: ca_hash.to_string(),
            id: pick(6),
            secret: pick(32),
        }
    }

    pub fn parse(s: &str) -> Result<JoinToken, JoinError> {
        let parts: Vec<&str> = s.trim().split('.').collect();
        match parts.as_slice() {
            ["ferry1", hash, id, secret]
                if hash.len() == 64
                    && hash.chars().all(|c| c.is_ascii_hexdigit())
                    && !id.is_empty()
                    && id.chars().all(|c| c.is_ascii_alphanumeric())
                    && secret.len() >= 16 =>
            {
                Ok(JoinToken { ca_hash: hash.to_ascii_lowercase(), id: id.to_string(), secret: secret.to_string() })
            }
            _ => Err(JoinError::BadToken(
                "expected ferry1.<64 hex CA hash>.<id>.<secret>; copy it from <data-dir>/join-token on the first member"
                    .into(),
            )),
        }
    }

    pub fn secret_hash(&self) -> String {
        hex::encode(ring::digest::digest(&ring::digest::SHA256, self.secret.as_bytes()).as_ref())
    }

    /// Store key holding the token's hashed secret.
    pub fn store_key(&self) -> String {
        format!("/_ferry/bootstrap-tokens/{}", self.id)
    }
}

impl std::fmt::Display for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ferry1.{}.{}.{}", self.ca_hash, self.id, self.secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_reject_garbage() {
        let t = JoinToken::generate(&"a".repeat(64));
        assert_eq!(JoinToken::parse(&t.to_string()).expect("parses"), t);
        assert!(JoinToken::parse("ferry1.abc.def.ghi").is_err());
        assert!(JoinToken::parse("").is_err());
        assert_ne!(
            t.secret_hash(),
            JoinToken::generate(&"a".repeat(64)).secret_hash()
        );
    }

    #[test]
    fn csr_is_pem() {
        let (csr, key) = new_csr("x").expect("csr");
        assert!(csr.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
        assert!(key.contains("PRIVATE KEY"));
    }
}
