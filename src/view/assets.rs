//! The pages: plain HTML, CSS and JS compiled into the binary, no build step.

use axum::extract::Path;
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

pub async fn board_page() -> Html<&'static str> {
    Html(BOARD_HTML)
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
