//! A real server on a loopback port, spoken to with raw HTTP/1.1.

use std::net::SocketAddr;

use std::time::Duration;

use axum::routing::get;
use axum::Router;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::*;

async fn server() -> (SocketAddr, CancellationToken) {
    let app = Router::new()
        .route("/ok", get(|| async { "fine" }))
        .route(
            "/text-error",
            get(|| async { (StatusCode::BAD_REQUEST, "bad thing") }),
        )
        .route(
            "/coded",
            get(|| async {
                Err::<(), _>(crate::view::ViewError::invalid(
                    "bad_count",
                    &[("name", "limit"), ("max", "50")],
                ))
            }),
        )
        .layer(axum::middleware::from_fn(json_errors));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    // The view's own server, plain HTTP, default budget.
    tokio::spawn(crate::view::serve::serve(
        listener,
        app,
        crate::view::serve::Budget::DEFAULT,
        None,
        std::sync::Arc::default(),
        crate::metrics::HttpServer::View,
        stop.clone(),
    ));
    (addr, stop)
}

/// Sends `request` as is; returns the status, the lower-cased head and the body.
async fn exchange(addr: SocketAddr, request: &[u8]) -> (u16, String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut raw))
        .await
        .expect("the server answers and closes")
        .unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_ascii_lowercase(), body.to_string())
}

fn error_of(body: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:?}"));
    v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("{body}"))
        .to_string()
}

#[tokio::test]
async fn every_error_is_json_whoever_raises_it() {
    let (addr, stop) = server().await;
    let ok = exchange(
        addr,
        b"GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!((ok.0, ok.2.as_str()), (200, "fine"));

    // The router: a method other than GET.
    let (status, head, body) = exchange(
        addr,
        b"POST /ok HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 405);
    assert!(head.contains("content-type: application/json"), "{head}");
    assert!(head.contains("allow: get,head"), "{head}");
    assert!(error_of(&body).contains("read-only"), "{body}");

    // A handler's plain-text error keeps its words.
    let (status, _, body) = exchange(
        addr,
        b"GET /text-error HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!((status, error_of(&body).as_str()), (400, "bad thing"));

    // The HTTP parser: a URI over 64 KiB, more than 100 headers, a broken request line.
    let long_uri = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(70_000));
    let (status, head, body) = exchange(addr, long_uri.as_bytes()).await;
    assert_eq!(status, 414, "{head}");
    assert!(head.contains("content-type: application/json"), "{head}");
    assert_eq!(error_of(&body), "uri too long");

    let mut many = String::from("GET /ok HTTP/1.1\r\nHost: x\r\n");
    for i in 0..120 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let (status, _, body) = exchange(addr, many.as_bytes()).await;
    assert_eq!(status, 431);
    assert_eq!(error_of(&body), "request header fields too large");

    let (status, _, body) = exchange(addr, b"GET\x01 / HTTP/1.1\r\n\r\n").await;
    assert_eq!(status, 400);
    assert_eq!(error_of(&body), "bad request");
    stop.cancel();
}

#[test]
fn only_bodiless_parser_errors_are_replaced() {
    let auto = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: Fri, 04 Dec 2026 17:00:00 GMT\r\n\r\n";
    let json = String::from_utf8(replacement(auto).unwrap()).unwrap();
    assert!(
        json.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
        "{json}"
    );
    assert!(json.contains("date: Fri"), "{json}");
    let (_, body) = json.split_once("\r\n\r\n").unwrap();
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["code"], "headers_too_large");
    assert_eq!(v["error"], "request header fields too large");
    // Written before the request is read, so in both languages of the view.
    assert_eq!(v["messages"]["zh-CN"], "请求头过大");
    assert_eq!(v["messages"]["en"], "The request headers are too large");
    assert_eq!(
        v["message"],
        "请求头过大 / The request headers are too large"
    );
    assert!(
        json.contains(&format!("content-length: {}\r\n", body.len())),
        "{json}"
    );
    // A response with a body, a content type, or another status is left alone.
    assert!(replacement(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 2\r\n\r\n{}").is_none());
    assert!(
        replacement(b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n\r\n")
            .is_none()
    );
    assert!(replacement(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n").is_none());
    assert!(replacement(b"HTTP/1.1 200 OK\r\n\r\n").is_none());
}

fn field(body: &str, name: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:?}"));
    v[name]
        .as_str()
        .unwrap_or_else(|| panic!("{body}"))
        .to_string()
}

#[tokio::test]
async fn errors_carry_a_stable_code_and_a_message_in_the_request_language() {
    let (addr, stop) = server().await;
    let ask = |path: &str, extra: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n{extra}Connection: close\r\n\r\n")
    };
    // A handler's coded error: English in `error`, the code, and the message by language.
    let (status, head, body) = exchange(addr, ask("/coded", "").as_bytes()).await;
    assert_eq!(status, 400);
    assert_eq!(field(&body, "code"), "bad_count");
    assert_eq!(field(&body, "error"), "`limit` must be 1 to 50");
    assert_eq!(field(&body, "message"), "`limit` must be 1 to 50");
    assert!(head.contains("vary: accept-language, cookie"), "{head}");
    let zh = "Accept-Language: zh-CN,zh;q=0.9\r\n";
    let (_, _, body) = exchange(addr, ask("/coded", zh).as_bytes()).await;
    assert_eq!(field(&body, "code"), "bad_count");
    assert_eq!(field(&body, "error"), "`limit` must be 1 to 50");
    assert_eq!(field(&body, "message"), "`limit` 须为 1 至 50");
    let (_, _, body) = exchange(
        addr,
        ask("/coded", "Cookie: bondline_lang=zh\r\n").as_bytes(),
    )
    .await;
    assert_eq!(field(&body, "message"), "`limit` 须为 1 至 50");
    let (_, _, body) = exchange(addr, ask("/coded?lang=zh", "").as_bytes()).await;
    assert_eq!(field(&body, "message"), "`limit` 须为 1 至 50");
    // Errors without a handler's code get the status's.
    let (_, _, body) = exchange(addr, ask("/nowhere", zh).as_bytes()).await;
    assert_eq!(field(&body, "code"), "not_found");
    assert_eq!(field(&body, "message"), "页面不存在");
    let (_, _, body) = exchange(
        addr,
        format!(
            "POST /ok HTTP/1.1\r\nHost: x\r\n{zh}Content-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(field(&body, "code"), "method_not_allowed");
    assert_eq!(field(&body, "message"), "本视图只读：所有路径仅支持 GET");
    let (_, _, body) = exchange(addr, ask("/text-error", zh).as_bytes()).await;
    assert_eq!(field(&body, "code"), "bad_request");
    assert_eq!(field(&body, "message"), "请求有误：bad thing");
    stop.cancel();
}

#[test]
fn every_code_has_its_message_in_both_languages() {
    use crate::view::i18n::Lang;
    let mut codes: Vec<&str> = [400u16, 401, 404, 405, 414, 429, 431, 500, 503, 418]
        .iter()
        .map(|s| status_code_name(StatusCode::from_u16(*s).unwrap()))
        .collect();
    codes.extend([
        "bad_time",
        "bad_count",
        "bad_waybill",
        "range_reversed",
        "bad_role",
        "bad_lane_role",
        "bad_chart_range",
        "shift_and_date",
        "bad_cursor",
        "bad_hash",
        "not_kept",
        "evidence_mismatch",
    ]);
    for code in codes {
        for lang in Lang::ALL {
            let key = format!("error.{code}");
            assert_ne!(lang.catalogue().get(&key), key, "{key} in {}", lang.code());
        }
    }
}
