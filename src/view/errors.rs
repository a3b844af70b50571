//! Every error the view answers is `{"error": "…"}` (docs/view.md), wherever it comes from.
//!
//! Two sources do not go through a handler that could say so:
//! - the router itself (405 for a method other than GET, extractor rejections as plain text):
//!   [`json_errors`], a layer, rewrites any error response that is not JSON yet;
//! - the HTTP/1 parser (hyper), which answers a request it cannot parse before any routing:
//!   400 (bad request line or header), 414 (URI over 64 KiB) and 431 (head over its buffer or
//!   more than 100 headers), each with an empty body. [`JsonParseErrors`] wraps the
//!   connection and replaces exactly those bodiless automatic responses as they are written.
//!   The connection is closed after them either way.
//!
//! Every connection of the view's server ([`super::serve`]), plain or TLS, is wrapped so.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use axum::extract::Request;
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Largest plain-text error body turned into the JSON message; longer ones are cut.
const MAX_MESSAGE: usize = 512;

/// Layer: an error response (4xx, 5xx) that is not JSON becomes `{"error": …}` with the same
/// status and headers (`Allow` for a 405 stays).
pub async fn json_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let message = if status == StatusCode::METHOD_NOT_ALLOWED {
        "method not allowed: the view is read-only, every route is a GET".to_string()
    } else if text.is_empty() {
        reason(status)
    } else {
        text.chars().take(MAX_MESSAGE).collect()
    };
    parts.headers.remove(header::CONTENT_TYPE);
    parts.headers.remove(header::CONTENT_LENGTH);
    let mut json = (status, Json(serde_json::json!({ "error": message }))).into_response();
    for (name, value) in parts.headers.iter() {
        json.headers_mut().insert(name.clone(), value.clone());
    }
    json
}

fn reason(status: StatusCode) -> String {
    status
        .canonical_reason()
        .unwrap_or("error")
        .to_ascii_lowercase()
}

/// A connection whose bodiless automatic error responses (400, 414, 431: the HTTP parser's,
/// written before any routing) are replaced by the same status with a JSON body.
///
/// It relies on what hyper writes for them: one write holding exactly one response head
/// and nothing after it (this type does not support vectored writes, so hyper flattens head
/// and body into one buffer), with no `content-type`. Every response of the router has a
/// content type or a body, so nothing else matches.
pub struct JsonParseErrors<S> {
    inner: S,
    /// A replacement response still being written.
    pending: Vec<u8>,
}

impl<S> JsonParseErrors<S> {
    pub fn new(inner: S) -> JsonParseErrors<S> {
        JsonParseErrors {
            inner,
            pending: Vec::new(),
        }
    }
}

/// The JSON replacement for `head`, if it is one of the parser's bodiless error responses.
fn replacement(head: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(head).ok()?;
    let rest = text.strip_prefix("HTTP/1.1 ")?;
    let body_start = text.find("\r\n\r\n")?;
    if body_start + 4 != text.len() {
        return None;
    }
    let code: u16 = rest.get(..3)?.parse().ok()?;
    if !matches!(code, 400 | 414 | 431) {
        return None;
    }
    let status = StatusCode::from_u16(code).ok()?;
    let lines: Vec<&str> = text[..body_start].split("\r\n").skip(1).collect();
    if lines.iter().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("content-type:") || l.starts_with("transfer-encoding:")
    }) {
        return None;
    }
    let body = serde_json::json!({ "error": reason(status) }).to_string();
    let mut out = format!(
        "HTTP/1.1 {code} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    for l in lines {
        let lower = l.to_ascii_lowercase();
        if !(lower.starts_with("content-length:") || lower.starts_with("connection:")) {
            out.push_str(l);
            out.push_str("\r\n");
        }
    }
    out.push_str("\r\n");
    out.push_str(&body);
    Some(out.into_bytes())
}

impl<S: AsyncWrite + Unpin> JsonParseErrors<S> {
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.pending.is_empty() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.pending.drain(..n);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for JsonParseErrors<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for JsonParseErrors<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_pending(cx))?;
        if let Some(json) = replacement(buf) {
            self.pending = json;
            // Written by the flush that follows (or the next write): the caller's bytes
            // count as written, they are replaced.
            let _ = self.poll_pending(cx)?;
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
