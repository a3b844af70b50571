//! TLS for the staff view, when `[view] tls` names a certificate and key.
//!
//! The view then speaks HTTPS only, over rustls (the same TLS stack as the broker link). The
//! files are read at start and again on SIGHUP ([`ViewTls::reload`]), so a renewed
//! certificate is served to new connections without a restart; a reload that fails keeps
//! the certificate in use and says why. Connections are served by [`super::serve`], whose
//! header timeout bounds the handshake too.

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivateKeyDer;

use crate::tls::{certs, file_err, TlsError};

/// The view's certificate and key files, and the server configuration made from them.
#[derive(Debug, Clone)]
pub struct ViewTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    current: Arc<ArcSwap<rustls::ServerConfig>>,
}

impl ViewTls {
    /// Reads and checks the files.
    pub fn load(cert_file: PathBuf, key_file: PathBuf) -> Result<ViewTls, TlsError> {
        let config = server_config(&cert_file, &key_file)?;
        Ok(ViewTls {
            cert_file,
            key_file,
            current: Arc::new(ArcSwap::new(config)),
        })
    }

    /// Reads the files again; on failure the certificate in use stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = server_config(&self.cert_file, &self.key_file)?;
        self.current.store(config);
        Ok(())
    }

    pub(super) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current.load_full())
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

/// Serves `app` over TLS on `listener` until `stop`, with the staff view's default budget
/// (for HTTPS test servers; the view itself is started by [`super::start`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    tls: ViewTls,
    stop: tokio_util::sync::CancellationToken,
) {
    super::serve::serve(
        listener,
        app,
        super::serve::Budget::DEFAULT,
        Some(tls),
        Arc::default(),
        crate::metrics::HttpServer::View,
        stop,
    )
    .await;
}
