//! The HTTPS side: a certificate resolver whose pair can be replaced at any time, and an accept
//! loop serving the axum router over rustls with graceful shutdown.
//!
//! Each TLS handshake asks the resolver for the current pair, so after a reload new connections
//! use the new certificate while established ones carry on with the old session untouched.
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
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

/// rustls server config using `store` for every handshake; offers HTTP/2 and HTTP/1.1.
pub fn server_config(store: Arc<CertStore>) -> Arc<rustls::ServerConfig> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default TLS versions")
    .with_no_client_auth()
    .with_cert_resolver(store);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

/// Serve `app` over TLS on `listener` until `shutdown`; then stop accepting, ask open connections
/// to finish their in-flight requests, and wait up to `drain` for them.
pub async fn serve(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    app: Router,
    shutdown: CancellationToken,
    drain: Duration,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
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
        let acceptor = acceptor.clone();
        let app = app.clone();
        let shutdown = shutdown.clone();
        let alive = alive.clone();
        tokio::spawn(async move {
            let _alive = alive;
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
            let builder = auto::Builder::new(TokioExecutor::new());
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
