//! TLS for the staff view, when `[view] tls` names a certificate and key.
//!
//! The view then speaks HTTPS only, over rustls (the same TLS stack as the broker link). The
//! files are read at start and again on SIGHUP ([`ViewTls::reload`]), so a renewed
//! certificate is served to new connections without a restart; a reload that fails keeps
//! the certificate in use and says why.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivateKeyDer;
use tokio_util::sync::CancellationToken;

use crate::uplink::tls::{certs, file_err, TlsError};

/// How long a client may take over its TLS handshake, and over a request's headers: an idle
/// or slow client does not hold a connection for ever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The view's certificate and key files, and the server configuration made from them.
#[derive(Debug, Clone)]
pub struct ViewTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    current: Arc<RwLock<Arc<rustls::ServerConfig>>>,
}

impl ViewTls {
    /// Reads and checks the files.
    pub fn load(cert_file: PathBuf, key_file: PathBuf) -> Result<ViewTls, TlsError> {
        let config = server_config(&cert_file, &key_file)?;
        Ok(ViewTls {
            cert_file,
            key_file,
            current: Arc::new(RwLock::new(config)),
        })
    }

    /// Reads the files again; on failure the certificate in use stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = server_config(&self.cert_file, &self.key_file)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = config;
        Ok(())
    }

    fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

fn server_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain = certs(cert)?;
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| file_err(key, e))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(chain, key_der)
    .map_err(|e| file_err(cert, format!("certificate and key do not fit: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Accepts TLS connections on `listener` and serves `app` on each until `stop`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    tls: ViewTls,
    stop: CancellationToken,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little, keep serving.
                    tracing::warn!(error = %e, "staff view: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let acceptor = tls.acceptor();
        let app = app.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return handshake_failed(peer, &e.to_string()),
                Err(_) => return handshake_failed(peer, "timed out"),
            };
            super::errors::serve_connection(stream, app, peer, stop).await;
        });
    }
}

fn handshake_failed(peer: SocketAddr, why: &str) {
    tracing::debug!(%peer, why, "staff view: TLS handshake failed");
}
