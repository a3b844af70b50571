//! Every error the view answers is `{"error": "…", "code": "…", "message": "…"}`
//! (docs/view.md), wherever it comes from: `error` in English, `code` stable, `message` in the
//! request's language from the catalogues' `error.<code>`.
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

/// What an error response says, by a stable code: set by the handler that knows (as a
/// response extension), else derived from the status. Its message is the catalogues'
/// `error.<code>` with `args`, in the request's language.
#[derive(Debug, Clone)]
pub struct ErrorText {
    pub code: &'static str,
    pub args: Vec<(&'static str, String)>,
}

/// The stable code of an error status without a more precise one.
pub fn status_code_name(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "bad_request",
        401 => "unauthorized",
        404 => "not_found",
        405 => "method_not_allowed",
        414 => "uri_too_long",
        429 => "too_many_requests",
        431 => "headers_too_large",
        503 => "unavailable",
        500 => "internal",
        _ => "error",
    }
}

/// Layer: every error response (4xx, 5xx) is `{"error", "code", "message"}`: `error` the
/// English text (what it always was), `code` stable for tools, `message` in the request's
/// language (`?lang=`, the cookie, `Accept-Language`). A response that is not JSON yet keeps
/// its status and headers (`Allow` for a 405 stays).
pub async fn json_errors(request: Request, next: Next) -> Response {
    let query_lang = request.uri().query().and_then(|q| {
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == "lang")
            .map(|(_, v)| v.to_string())
    });
    let lang = super::i18n::choose(query_lang.as_deref(), request.headers()).lang;
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
    let (mut parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, 64 * 1024)
        .await
        .unwrap_or_default();
    let english = if is_json {
        serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
            .unwrap_or_else(|| reason(status))
    } else {
        let text = String::from_utf8_lossy(&bytes).trim().to_string();
        if status == StatusCode::METHOD_NOT_ALLOWED {
            "method not allowed: the view is read-only, every route is a GET".to_string()
        } else if text.is_empty() {
            reason(status)
        } else {
            text.chars().take(MAX_MESSAGE).collect()
        }
    };
    let text = parts
        .extensions
        .remove::<ErrorText>()
        .unwrap_or_else(|| ErrorText {
            code: status_code_name(status),
            args: vec![("detail", english.clone())],
        });
    let args: Vec<(&str, &str)> = text.args.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let message = lang
        .catalogue()
        .format(&format!("error.{}", text.code), &args);
    parts.headers.remove(header::CONTENT_TYPE);
    parts.headers.remove(header::CONTENT_LENGTH);
    let mut json = (
        status,
        Json(serde_json::json!({ "error": english, "code": text.code, "message": message })),
    )
        .into_response();
    for (name, value) in parts.headers.iter() {
        json.headers_mut().insert(name.clone(), value.clone());
    }
    json.headers_mut().insert(
        header::VARY,
        header::HeaderValue::from_static("Accept-Language, Cookie"),
    );
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
    // Before any routing: the request's language is unknown, so the message says it in
    // every language of the view (`中文 / English`), and `messages` has each by tag.
    let code_name = status_code_name(status);
    let key = format!("error.{code_name}");
    let detail = [("detail", reason(status))];
    let text = |lang: super::i18n::Lang| {
        let args: Vec<(&str, &str)> = detail.iter().map(|(k, v)| (*k, v.as_str())).collect();
        lang.catalogue().format(&key, &args)
    };
    let messages: serde_json::Map<String, serde_json::Value> = super::i18n::Lang::ALL
        .iter()
        .map(|l| (l.tag().to_string(), text(*l).into()))
        .collect();
    let message = super::i18n::Lang::ALL
        .iter()
        .map(|l| text(*l))
        .collect::<Vec<_>>()
        .join(" / ");
    let body = serde_json::json!({
        "error": reason(status),
        "code": code_name,
        "message": message,
        "messages": messages,
    })
    .to_string();
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
