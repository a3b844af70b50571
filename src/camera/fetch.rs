//! One snapshot over HTTP(S): `GET` the camera's snapshot URL and read the body, within a
//! time limit, with basic or digest credentials.
//!
//! One connection per snapshot (HTTP/1.1, `Connection: close`): cameras drop idle
//! connections at will, and a fresh connection per frame makes a camera that stopped
//! answering cost exactly one timeout, never a stuck pooled connection. Digest needs the
//! camera's challenge first, so a digest camera is asked twice per snapshot (the `401` and
//! then the answer); cameras keep nonces short-lived, so the nonce is not reused.
//!
//! The split of errors follows what staff need to tell apart: the camera could not be
//! reached, it refused (an HTTP status), it was too slow, or it sent too much.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper::header::{AUTHORIZATION, CONNECTION, HOST, WWW_AUTHENTICATE};
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::config::camera::Auth;

/// Largest snapshot read. Camera JPEGs are tens to hundreds of KiB.
pub const MAX_SNAPSHOT_BYTES: usize = 8 * 1024 * 1024;

/// Why no snapshot came back.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("camera unreachable: {0}")]
    Connect(std::io::Error),
    #[error("TLS with the camera failed: {0}")]
    Tls(std::io::Error),
    #[error("HTTP exchange with the camera failed: {0}")]
    Http(String),
    /// The camera answered, and refused: an HTTP status other than 200.
    #[error("camera answered HTTP {0}")]
    Status(u16),
    #[error("camera asked for digest credentials and none fit: {0}")]
    Digest(String),
    #[error("camera did not answer within {0:?}")]
    Timeout(Duration),
    #[error("snapshot larger than {MAX_SNAPSHOT_BYTES} bytes")]
    TooLarge,
}

/// Where and how to fetch; cheap to clone.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: Uri,
    pub auth: Auth,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub timeout: Duration,
}

/// Fetches one snapshot's bytes, all of it within the target's timeout.
pub async fn fetch(t: &Target) -> Result<Vec<u8>, FetchError> {
    tokio::time::timeout(t.timeout, exchange(t))
        .await
        .unwrap_or(Err(FetchError::Timeout(t.timeout)))
}

async fn exchange(t: &Target) -> Result<Vec<u8>, FetchError> {
    let first = match &t.auth {
        Auth::Basic { username, password } => Some(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"))
        )),
        Auth::None | Auth::Digest { .. } => None,
    };
    let (status, headers, body) = get(t, first).await?;
    if status == StatusCode::UNAUTHORIZED {
        if let Auth::Digest { username, password } = &t.auth {
            let challenge = headers
                .get(WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| FetchError::Digest("no WWW-Authenticate challenge".into()))?;
            let mut prompt =
                digest_auth::parse(challenge).map_err(|e| FetchError::Digest(e.to_string()))?;
            let path = t.url.path_and_query().map_or("/", |p| p.as_str());
            let ctx = digest_auth::AuthContext::new(username.as_str(), password.as_str(), path);
            let answer = prompt
                .respond(&ctx)
                .map_err(|e| FetchError::Digest(e.to_string()))?
                .to_header_string();
            let (status, _, body) = get(t, Some(answer)).await?;
            return ok_body(status, body);
        }
    }
    ok_body(status, body)
}

fn ok_body(status: StatusCode, body: Vec<u8>) -> Result<Vec<u8>, FetchError> {
    if status == StatusCode::OK {
        Ok(body)
    } else {
        Err(FetchError::Status(status.as_u16()))
    }
}

/// One `GET` on a fresh connection.
async fn get(
    t: &Target,
    authorization: Option<String>,
) -> Result<(StatusCode, hyper::HeaderMap, Vec<u8>), FetchError> {
    let host = t.url.host().unwrap_or_default().to_string();
    let https = t.tls.is_some();
    let port = t.url.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = TcpStream::connect((host.trim_matches(['[', ']']), port))
        .await
        .map_err(FetchError::Connect)?;
    let _ = tcp.set_nodelay(true);
    let path = t.url.path_and_query().map_or("/", |p| p.as_str());
    let mut req = Request::get(path)
        .header(
            HOST,
            t.url.authority().map_or(host.as_str(), |a| a.as_str()),
        )
        .header(CONNECTION, "close");
    if let Some(a) = authorization {
        req = req.header(AUTHORIZATION, a);
    }
    let req = req
        .body(Empty::<Bytes>::new())
        .map_err(|e| FetchError::Http(e.to_string()))?;
    match &t.tls {
        None => send(TokioIo::new(tcp), req).await,
        Some(cfg) => {
            let name = rustls::pki_types::ServerName::try_from(host.trim_matches(['[', ']']))
                .map_err(|e| FetchError::Tls(std::io::Error::other(e.to_string())))?
                .to_owned();
            let tls = tokio_rustls::TlsConnector::from(cfg.clone())
                .connect(name, tcp)
                .await
                .map_err(FetchError::Tls)?;
            send(TokioIo::new(tls), req).await
        }
    }
}

async fn send<S>(
    io: TokioIo<S>,
    req: Request<Empty<Bytes>>,
) -> Result<(StatusCode, hyper::HeaderMap, Vec<u8>), FetchError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let http = |e: hyper::Error| FetchError::Http(e.to_string());
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(http)?;
    // The connection task is aborted when this exchange ends or is dropped by the
    // caller's timeout, so a camera that hangs holds no task and no socket afterwards.
    let _conn = AbortOnDrop(tokio::spawn(conn));
    let resp = sender.send_request(req).await.map_err(http)?;
    let (parts, body) = resp.into_parts();
    let body = Limited::new(body, MAX_SNAPSHOT_BYTES).collect().await;
    let body = match body {
        Ok(b) => b.to_bytes().to_vec(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(FetchError::TooLarge),
        Err(e) => return Err(FetchError::Http(e.to_string())),
    };
    Ok((parts.status, parts.headers, body))
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
