//! How a client proves who it is ([`ClientAuth`]) and how it checks the server
//! ([`ClientTls`]), shared by the SDK, the CLI and the load generator.

use std::path::Path;

use base64::Engine;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// Credentials a client sends as `authorization` metadata.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum ClientAuth {
    /// None (a server with authentication off, or mutual TLS alone).
    #[default]
    None,
    /// A bearer token.
    Token(String),
    /// A user name and password.
    Basic {
        /// The user name.
        user: String,
        /// The password.
        password: String,
    },
}

impl std::fmt::Debug for ClientAuth {
    /// Never prints the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientAuth::None => f.write_str("None"),
            ClientAuth::Token(_) => f.write_str("Token(…)"),
            ClientAuth::Basic { user, .. } => write!(f, "Basic({user}, …)"),
        }
    }
}

impl ClientAuth {
    /// The `authorization` header's text, if any.
    pub(super) fn header_text(&self) -> Option<String> {
        match self {
            ClientAuth::None => None,
            ClientAuth::Token(token) => Some(format!("Bearer {token}")),
            ClientAuth::Basic { user, password } => Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
            )),
        }
    }

    /// The `authorization` metadata value, if any.
    pub fn header(&self) -> Option<MetadataValue<tonic::metadata::Ascii>> {
        let mut value: MetadataValue<tonic::metadata::Ascii> = self.header_text()?.parse().ok()?;
        value.set_sensitive(true);
        Some(value)
    }

    /// Sets `authorization` on a request.
    pub fn apply<T>(&self, request: &mut tonic::Request<T>) {
        if let Some(value) = self.header() {
            request.metadata_mut().insert("authorization", value);
        }
    }
}

/// TLS settings of a client: the CA that signs the server's certificate, and for mutual
/// TLS the client's own certificate and key (all PEM).
#[derive(Clone, Default)]
pub struct ClientTls {
    /// CA certificates, PEM; empty: the operating system's roots are not used, so set it.
    pub ca_pem: Vec<u8>,
    /// The client's certificate chain and key, PEM, for mutual TLS.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// The name to check the server's certificate against (default: the URL's host).
    pub domain: Option<String>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("ca_pem_bytes", &self.ca_pem.len())
            .field("identity", &self.identity.is_some())
            .field("domain", &self.domain)
            .finish()
    }
}

impl ClientTls {
    /// Reads the CA file and, when both are given, the client certificate and key.
    pub fn from_files(ca: &Path, cert: Option<&Path>, key: Option<&Path>) -> std::io::Result<ClientTls> {
        let read =
            |p: &Path| std::fs::read(p).map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", p.display())));
        let identity = match (cert, key) {
            (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
            (None, None) => None,
            _ => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "a client certificate needs its key, and a key its certificate",
                ));
            }
        };
        Ok(ClientTls {
            ca_pem: read(ca)?,
            identity,
            domain: None,
        })
    }

    /// The rustls configuration of the SDK's own connections: these CA certificates as
    /// the only roots, the client certificate if any, and HTTP/2 by ALPN.
    pub(super) fn rustls_config(&self) -> Result<ClientConfig, String> {
        let provider = crate::tls::install_crypto_provider();
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&self.ca_pem) {
            let cert = cert.map_err(|e| format!("CA certificate: {e}"))?;
            roots.add(cert).map_err(|e| format!("CA certificate: {e}"))?;
        }
        if roots.is_empty() {
            return Err("no CA certificate in the TLS settings".into());
        }
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots);
        let mut config = match &self.identity {
            Some((cert, key)) => {
                let chain = CertificateDer::pem_slice_iter(cert)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("client certificate: {e}"))?;
                let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| format!("client key: {e}"))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("client certificate: {e}"))?
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }

    /// Applies these settings to an endpoint (an `https://` URL).
    pub fn apply(&self, endpoint: Endpoint) -> Result<Endpoint, tonic::transport::Error> {
        crate::tls::install_crypto_provider();
        let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.ca_pem));
        if let Some((cert, key)) = &self.identity {
            config = config.identity(Identity::from_pem(cert, key));
        }
        if let Some(domain) = &self.domain {
            config = config.domain_name(domain.clone());
        }
        endpoint.tls_config(config)
    }
}
