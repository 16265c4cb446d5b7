//! The HTTPS side: a certificate resolver whose pair can be replaced at any time, optional
//! client-certificate verification, and a bounded accept loop serving the axum router over
//! rustls with graceful shutdown.
//!
//! Each TLS handshake asks the resolver for the current pair, so after a reload new connections
//! use the new certificate while established ones carry on with the old session untouched.
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A TLS client gets this long to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a PEM pair was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PairError {
    #[error("certificate file has no valid PEM CERTIFICATE block ({0})")]
    Certificate(String),
    #[error("key file has no valid PEM private key ({0})")]
    Key(String),
    #[error("certificate and key do not belong together or the key type is unsupported ({0})")]
    Mismatch(String),
}

/// The current certificate pair, swapped atomically on reload.
#[derive(Debug)]
pub struct CertStore {
    current: RwLock<Option<Arc<CertifiedKey>>>,
    provider: Arc<CryptoProvider>,
}

impl Default for CertStore {
    fn default() -> Self {
        Self::new()
    }
}

impl CertStore {
    pub fn new() -> Self {
        Self {
            current: RwLock::new(None),
            provider: Arc::new(rustls::crypto::ring::default_provider()),
        }
    }

    /// Validate a PEM pair and, when good, make it the one new handshakes use. Returns the
    /// certificate's expiry (Unix seconds) when it can be read.
    pub fn load_pem(&self, cert_pem: &[u8], key_pem: &[u8]) -> Result<Option<i64>, PairError> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| PairError::Certificate(e.to_string()))?;
        if chain.is_empty() {
            return Err(PairError::Certificate("no block found".into()));
        }
        let key =
            PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| PairError::Key(e.to_string()))?;
        let expiry = x509_parser::parse_x509_certificate(&chain[0])
            .map_err(|e| PairError::Certificate(e.to_string()))?
            .1
            .validity()
            .not_after
            .timestamp();
        let certified = CertifiedKey::from_der(chain, key, &self.provider)
            .map_err(|e| PairError::Mismatch(e.to_string()))?;
        // rustls accepts a key whose consistency it cannot check; we insist.
        certified
            .keys_match()
            .map_err(|e| PairError::Mismatch(e.to_string()))?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(certified));
        Ok(Some(expiry))
    }

    pub fn is_loaded(&self) -> bool {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// The CA certificates of a `--client-ca-file`: at least one, all valid.
pub fn client_roots(pem: &[u8]) -> Result<Arc<rustls::RootCertStore>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| format!("not PEM certificates ({e})"))?;
        roots
            .add(cert)
            .map_err(|e| format!("not a usable CA certificate ({e})"))?;
    }
    if roots.is_empty() {
        return Err("no PEM CERTIFICATE block".into());
    }
    Ok(Arc::new(roots))
}

/// rustls server config using `store` for every handshake; offers HTTP/2 and HTTP/1.1. With
/// `client_roots`, a client must present a certificate signed by one of them, or the handshake
/// fails.
pub fn server_config(
    store: Arc<CertStore>,
    client_roots: Option<Arc<rustls::RootCertStore>>,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions");
    let builder = match client_roots {
        None => builder.with_no_client_auth(),
        Some(roots) => {
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider)
                    .build()
                    .map_err(|e| format!("client certificate verifier: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(store);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Bounds of the accept loop.
#[derive(Clone, Debug)]
pub struct ConnLimits {
    /// Connections open at once; more are closed on accept.
    pub max_connections: usize,
    /// HTTP/1: time to receive a request head, also while a kept-alive connection is idle.
    pub header_read_timeout: Duration,
}

/// Serve `app` over TLS on `listener` until `shutdown`; then stop accepting, ask open connections
/// to finish their in-flight requests, and wait up to `drain` for them. `refused` is called for
/// each connection closed because `limits.max_connections` are open.
pub async fn serve(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    app: Router,
    shutdown: CancellationToken,
    drain: Duration,
    limits: ConnLimits,
    refused: impl Fn() + Send + 'static,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(super::exposure::MAX_HEADER_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(super::exposure::MAX_H2_STREAMS)
        .max_header_list_size(super::exposure::MAX_HEADER_BYTES as u32);
    // Every connection task holds a sender; when all are dropped, `recv` returns None.
    let (alive, mut all_closed) = tokio::sync::mpsc::channel::<()>(1);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Full: close at once (no TLS work), so a flood costs an accept and a close.
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "connection refused: --max-connections open");
            refused();
            drop(tcp);
            continue;
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        let shutdown = shutdown.clone();
        let alive = alive.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let (_alive, _slot) = (alive, slot);
            let _ = tcp.set_nodelay(true);
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let conn = builder.serve_connection(TokioIo::new(tls), TowerToHyperService::new(app));
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                }
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    drop(alive);
    if tokio::time::timeout(drain, all_closed.recv())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after {drain:?}; closing them");
    }
}

/// Keep `store` in step with the PEM files: poll them every `interval`; a changed pair that is
/// invalid (half-written, mismatched) is logged and the previous pair stays in use.
pub async fn watch_pair(
    store: Arc<CertStore>,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    interval: Duration,
    shutdown: CancellationToken,
    on_result: impl Fn(Result<Option<i64>, &PairError>) + Send + 'static,
) {
    super::files::watch(vec![cert.clone(), key.clone()], interval, shutdown, move |c| {
        match store.load_pem(&c[0], &c[1]) {
            Ok(expiry) => {
                tracing::info!(cert = %cert.display(), key = %key.display(), "TLS certificate loaded");
                on_result(Ok(expiry));
            }
            Err(e) => {
                tracing::error!(cert = %cert.display(), key = %key.display(), error = %e, "TLS pair rejected; keeping the previous one");
                on_result(Err(&e));
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(name: &str) -> (String, String) {
        let c = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
        (c.cert.pem(), c.signing_key.serialize_pem())
    }

    #[test]
    fn loads_good_pairs_and_keeps_the_old_one_on_bad_input() {
        let store = CertStore::new();
        assert!(!store.is_loaded());
        let (c1, k1) = pair("a.example");
        let expiry = store.load_pem(c1.as_bytes(), k1.as_bytes()).unwrap();
        assert!(expiry.unwrap() > 1_700_000_000);
        assert!(store.is_loaded());
        let before = store.current.read().unwrap().clone().unwrap();
        let (c2, k2) = pair("b.example");
        // Mismatched halves (a cert updated before its key).
        assert!(matches!(
            store.load_pem(c2.as_bytes(), k1.as_bytes()),
            Err(PairError::Mismatch(_))
        ));
        assert!(matches!(
            store.load_pem(b"", k2.as_bytes()),
            Err(PairError::Certificate(_))
        ));
        assert!(matches!(
            store.load_pem(c2.as_bytes(), &k2.as_bytes()[..40]),
            Err(PairError::Key(_))
        ));
        let after = store.current.read().unwrap().clone().unwrap();
        assert!(
            Arc::ptr_eq(&before, &after),
            "a bad pair must not replace the good one"
        );
        store.load_pem(c2.as_bytes(), k2.as_bytes()).unwrap();
        let now = store.current.read().unwrap().clone().unwrap();
        assert!(!Arc::ptr_eq(&before, &now));
    }
}
