//! The pages: plain HTML, CSS and JS compiled into the binary, no build step.

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};

const BOARD_HTML: &str = include_str!("assets/board.html");
const LOOKUP_HTML: &str = include_str!("assets/lookup.html");

/// Name, content type and content of every asset.
const ASSETS: [(&str, &str, &str); 4] = [
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("assets/style.css"),
    ),
    (
        "common.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/common.js"),
    ),
    (
        "board.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/board.js"),
    ),
    (
        "lookup.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/lookup.js"),
    ),
];

/// Rows the board page shows per line.
const BOARD_ROWS: usize = 30;
/// Where the board page carries its first snapshot.
const SNAPSHOT_MARK: &str = "__BOARD_SNAPSHOT__";

/// The board page with its first snapshot inside, so the screen is complete when it has
/// loaded, before the live stream connects.
pub async fn board_page(State(s): State<super::Shared>) -> Html<String> {
    let snapshot = serde_json::to_string(&super::api::board_snapshot(&s, BOARD_ROWS))
        .unwrap_or_else(|_| "null".into());
    Html(BOARD_HTML.replacen(SNAPSHOT_MARK, &json_in_html(&snapshot), 1))
}

/// JSON made safe inside an HTML `<script type="application/json">` block: no `<`, `>` or
/// `&` can end the block or start markup (JSON reads the escapes back as the same text).
fn json_in_html(json: &str) -> String {
    json.replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
}

pub async fn lookup_page() -> Html<&'static str> {
    Html(LOOKUP_HTML)
}

pub async fn asset(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|(n, _, _)| *n == name) {
        Some((_, kind, body)) => ([(header::CONTENT_TYPE, *kind)], *body).into_response(),
        None => super::api::not_found().await,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn json_cannot_close_its_script_block() {
        let json = serde_json::to_string(&serde_json::json!({"reason": "</script><b>&"})).unwrap();
        let safe = super::json_in_html(&json);
        assert!(!safe.contains('<') && !safe.contains('>') && !safe.contains('&'));
        let back: serde_json::Value = serde_json::from_str(&safe).unwrap();
        assert_eq!(back["reason"], "</script><b>&");
        assert!(super::BOARD_HTML.contains(super::SNAPSHOT_MARK));
    }

    #[test]
    fn pages_load_only_assets_that_exist() {
        for page in [super::BOARD_HTML, super::LOOKUP_HTML] {
            for part in page.split("/assets/").skip(1) {
                let name = part.split('"').next().unwrap_or("");
                assert!(
                    super::ASSETS.iter().any(|(n, _, _)| *n == name),
                    "missing asset {name}"
                );
            }
        }
    }
}
