//! TLS for the gRPC listener: rustls with the ring provider, the certificate chain and
//! key read from PEM files, an optional client CA for mutual TLS, and reloading.
//!
//! Handshakes run in tasks of their own, bounded by [`HANDSHAKE_TIMEOUT`], so a client
//! that opens a connection and says nothing holds up no one else. The acceptor is read
//! for each new connection: [`Reloader::reload`] swaps it when the files change (checked
//! every `reload_check_ms` and on SIGHUP), and established connections keep the session
//! they negotiated. A reload that fails (a half-written file, a key that does not match
//! the certificate) is logged and the previous configuration stays.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use parking_lot::{Mutex, RwLock};
use streambus_types::config::TlsConfig;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;

/// How long a client has to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshaken connections waiting for the server to take them.
const READY_QUEUE: usize = 1024;

/// The crypto provider of the whole process (ring), installed as rustls's default
/// once. Every TLS user in the binary (the listener, the client, the sinks) then agrees.
pub fn install_crypto_provider() -> Arc<CryptoProvider> {
    let provider = tokio_rustls::rustls::crypto::ring::default_provider();
    // An error means a provider is installed already (this one, by an earlier call).
    let _ = provider.clone().install_default();
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(provider))
}

/// Why a TLS configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or parsed.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// rustls refused the certificate, key or CA.
    #[error("tls: {0}")]
    Rustls(String),
}

fn file_error(path: &str, reason: impl ToString) -> TlsError {
    TlsError::File {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

/// Reads every certificate of a PEM file.
pub fn read_certificates(path: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, e))?;
    if certs.is_empty() {
        return Err(file_error(path, "no certificate in the file"));
    }
    Ok(certs)
}

/// Builds the server configuration the files describe.
pub fn server_config(config: &TlsConfig) -> Result<ServerConfig, TlsError> {
    let provider = install_crypto_provider();
    let certs = read_certificates(&config.cert_file)?;
    let key = PrivateKeyDer::from_pem_file(&config.key_file).map_err(|e| file_error(&config.key_file, e))?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let builder = match &config.client_ca_file {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certificates(ca)? {
                roots.add(cert).map_err(|e| file_error(ca, e))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if config.require_client_cert {
                verifier.build()
            } else {
                verifier.allow_unauthenticated().build()
            }
            .map_err(|e| TlsError::Rustls(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    builder
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Rustls(e.to_string()))
}

/// [`server_config`] for the gRPC listener: HTTP/2 only.
fn grpc_server_config(config: &TlsConfig) -> Result<ServerConfig, TlsError> {
    let mut server = server_config(config)?;
    server.alpn_protocols = vec![b"h2".to_vec()];
    Ok(server)
}

/// The files' contents, to tell whether they changed.
fn fingerprint(config: &TlsConfig) -> Vec<u8> {
    let mut all = Vec::new();
    for path in [
        Some(&config.cert_file),
        Some(&config.key_file),
        config.client_ca_file.as_ref(),
    ]
    .into_iter()
    .flatten()
    {
        all.extend(std::fs::read(path).unwrap_or_default());
        all.push(0);
    }
    all
}

/// The listener's current TLS acceptor, and what reloads it.
pub struct Reloader {
    config: TlsConfig,
    acceptor: RwLock<TlsAcceptor>,
    loaded: Mutex<Vec<u8>>,
}

impl Reloader {
    /// Loads the files once; fails when they are unusable.
    pub fn new(config: TlsConfig) -> Result<Arc<Reloader>, TlsError> {
        let loaded = fingerprint(&config);
        let server = grpc_server_config(&config)?;
        Ok(Arc::new(Reloader {
            config,
            acceptor: RwLock::new(TlsAcceptor::from(Arc::new(server))),
            loaded: Mutex::new(loaded),
        }))
    }

    /// Loads the files again if they changed since the last load. True when a new
    /// configuration is in place; a failure keeps the old one and is logged.
    pub fn reload(&self) -> bool {
        let now = fingerprint(&self.config);
        if *self.loaded.lock() == now {
            return false;
        }
        match grpc_server_config(&self.config) {
            Ok(server) => {
                *self.acceptor.write() = TlsAcceptor::from(Arc::new(server));
                *self.loaded.lock() = now;
                tracing::info!(cert = %self.config.cert_file, "tls certificate reloaded");
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "tls reload failed; the previous certificate stays in use");
                false
            }
        }
    }

    /// Watches for changes (every `reload_check_ms`, and on SIGHUP) until the returned
    /// task is aborted.
    pub fn watch(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let every = Duration::from_millis(me.config.reload_check_ms);
            #[cfg(unix)]
            let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            loop {
                let tick = async {
                    if every.is_zero() {
                        std::future::pending::<()>().await;
                    }
                    tokio::time::sleep(every).await;
                };
                #[cfg(unix)]
                let hup = async {
                    match hangup.as_mut() {
                        Some(h) => {
                            h.recv().await;
                        }
                        None => std::future::pending::<()>().await,
                    }
                };
                #[cfg(not(unix))]
                let hup = std::future::pending::<()>();
                tokio::select! {
                    () = tick => {}
                    () = hup => tracing::info!("SIGHUP: checking the tls files"),
                }
                me.reload();
            }
        })
    }

    /// Accepted TCP connections, handshaken: each handshake in its own task (bounded
    /// by [`HANDSHAKE_TIMEOUT`]); a failed one is logged at DEBUG and dropped.
    pub fn incoming<S>(
        self: &Arc<Self>,
        tcp: S,
    ) -> impl Stream<Item = io::Result<TlsStream<TcpStream>>> + Send + 'static
    where
        S: Stream<Item = io::Result<TcpStream>> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::mpsc::channel(READY_QUEUE);
        let me = self.clone();
        tokio::spawn(async move {
            let mut tcp = std::pin::pin!(tcp);
            while let Some(accepted) = tcp.next().await {
                let stream = match accepted {
                    Ok(stream) => stream,
                    Err(e) => {
                        if tx.send(Err(e)).await.is_err() {
                            return;
                        }
                        continue;
                    }
                };
                let acceptor = me.acceptor.read().clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let peer = stream.peer_addr().ok();
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send(Ok(tls)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(?peer, error = %e, "tls handshake failed"),
                        Err(_) => tracing::debug!(?peer, "tls handshake timed out"),
                    }
                });
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx)
    }
}
