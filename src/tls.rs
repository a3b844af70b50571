//! TLS material and credentials read from files: the broker connection's (client
//! certificate, CA, password), and the helpers the staff view's server and the cameras'
//! HTTPS clients use to read certificates and keys.
//!
//! For the broker, the material is read from its files at every new connection, so renewed certificates are
//! used from the next connection on; SIGHUP ends the current connection to get there at once.
//! Records are unaffected: they stay in the journal until a broker acknowledges them. The
//! broker's certificate is verified against the configured CA (not the system store: a
//! warehouse broker's CA is the platform's own), with the host name of `uplink.broker`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Where the TLS material is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM: the CA certificate(s) the broker's certificate must chain to.
    pub ca_file: PathBuf,
    /// PEM: this gateway's certificate chain and private key, for client authentication.
    pub client: Option<(PathBuf, PathBuf)>,
}

/// Username and the file holding the password (never the password itself in the config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password_file: PathBuf,
}

/// TLS material that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
}

pub(crate) fn file_err(path: &Path, reason: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

pub(crate) fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(path, e))?;
    if certs.is_empty() {
        return Err(file_err(path, "no PEM certificate in the file"));
    }
    Ok(certs)
}

impl TlsFiles {
    /// Reads the files and builds the client configuration.
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        for c in certs(&self.ca_file)? {
            roots
                .add(c)
                .map_err(|e| file_err(&self.ca_file, format!("unusable CA certificate: {e}")))?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
        let config = match &self.client {
            Some((cert, key)) => {
                let chain = certs(cert)?;
                let key = PrivateKeyDer::from_pem_file(key).map_err(|e| file_err(key, e))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| file_err(cert, format!("certificate and key do not fit: {e}")))?
            }
            None => builder.with_no_client_auth(),
        };
        Ok(Arc::new(config))
    }
}

impl Credentials {
    /// Reads the password (first line of the file, without the line end).
    pub fn password(&self) -> Result<String, TlsError> {
        let text = std::fs::read_to_string(&self.password_file)
            .map_err(|e| file_err(&self.password_file, e))?;
        let pw = text.lines().next().unwrap_or("").to_string();
        if pw.is_empty() {
            return Err(file_err(&self.password_file, "the password file is empty"));
        }
        Ok(pw)
    }
}
