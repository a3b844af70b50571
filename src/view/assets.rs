//! The pages: plain HTML, CSS and JS compiled into the binary, no build step.

use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap};
use axum::response::{Html, IntoResponse, Response};

use super::i18n::{self, Lang};

const BOARD_HTML: &str = include_str!("assets/board.html");
const LOOKUP_HTML: &str = include_str!("assets/lookup.html");
const WORKLIST_HTML: &str = include_str!("assets/worklist.html");

/// Name, content type and content of every asset.
const ASSETS: [(&str, &str, &str); 5] = [
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
    (
        "worklist.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/worklist.js"),
    ),
];

/// Rows the board page shows per line.
const BOARD_ROWS: usize = 30;
/// Where the board page carries its first snapshot.
const SNAPSHOT_MARK: &str = "__BOARD_SNAPSHOT__";

/// The board page with its first snapshot inside, so the screen is complete when it has
/// loaded, before the live stream connects.
pub async fn board_page(
    State(s): State<super::Shared>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let snapshot = serde_json::to_string(&super::api::board_snapshot(&s, BOARD_ROWS))
        .unwrap_or_else(|_| "null".into());
    let page = BOARD_HTML.replacen(SNAPSHOT_MARK, &json_in_html(&snapshot), 1);
    localized(&page, s.shifts.zone_name(), query.as_deref(), &headers)
}

/// The `lang` parameter of a query string, if any.
fn query_lang(query: Option<&str>) -> Option<String> {
    url_param(query?, "lang")
}

fn url_param(query: &str, name: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// A page in the request's language: static labels filled, the catalogue and the warehouse's
/// time zone (`[view] time_zone`) handed to the script, a language switch, and the cookie set
/// when `?lang=` chose it.
fn localized(
    template: &str,
    time_zone: &str,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Response {
    let choice = i18n::choose(query_lang(query).as_deref(), headers);
    let page = fill_page(template, choice.lang, time_zone, query);
    remembered(Html(page).into_response(), choice)
}

/// A page's answer in the chosen language: the cookie set when `?lang=` chose it, and
/// caches told that the language follows the request's headers.
pub(super) fn remembered(mut resp: Response, choice: i18n::Choice) -> Response {
    if choice.remember {
        if let Ok(v) = i18n::cookie(choice.lang).parse() {
            resp.headers_mut().insert(header::SET_COOKIE, v);
        }
    }
    resp.headers_mut().insert(
        header::VARY,
        header::HeaderValue::from_static("Accept-Language, Cookie"),
    );
    resp
}

/// The language switch of a page's header: one link per language, the current one marked.
/// `query` is the page's query string: the links keep its other parameters (a filtered view
/// stays filtered in the other language).
pub(super) fn lang_switch(lang: Lang, query: Option<&str>) -> String {
    let kept: Vec<&str> = query
        .unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty() && kv.split('=').next() != Some("lang"))
        .collect();
    let switch = Lang::ALL
        .iter()
        .map(|l| {
            let current = if *l == lang { " aria-current=\"true\"" } else { "" };
            let mut params = kept.clone();
            let chosen = format!("lang={}", l.code());
            params.push(&chosen);
            format!(
                "<a class=\"lang\" href=\"?{href}\" hreflang=\"{tag}\" lang=\"{tag}\"{current}>{name}</a>",
                href = i18n::escape_html(&params.join("&")),
                tag = l.tag(),
                name = i18n::escape_html(lang.catalogue().get(&format!("lang.{}", l.code()))),
            )
        })
        .collect::<Vec<_>>()
        .join(" ");
    format!(
        "<nav class=\"langs\" aria-label=\"{}\">{switch}</nav>",
        i18n::escape_html(lang.catalogue().get("nav.language"))
    )
}

/// Fills a page template: labels, the language switch (keeping `query`'s filters) and the
/// script's catalogue.
fn fill_page(template: &str, lang: Lang, time_zone: &str, query: Option<&str>) -> String {
    let switch = lang_switch(lang, query);
    let script = serde_json::json!({
        "lang": lang.tag(),
        "time_zone": time_zone,
        "texts": serde_json::from_str::<serde_json::Value>(lang.catalogue().json())
            .unwrap_or(serde_json::Value::Null),
    });
    let script = format!(
        "<script type=\"application/json\" id=\"i18n\">{}</script>",
        json_in_html(&script.to_string())
    );
    i18n::localize_page(template, lang)
        .replacen("{{langswitch}}", &switch, 1)
        .replacen("{{i18n}}", &script, 1)
}

/// JSON made safe inside an HTML `<script type="application/json">` block: no `<`, `>` or
/// `&` can end the block or start markup (JSON reads the escapes back as the same text).
fn json_in_html(json: &str) -> String {
    json.replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
}

pub async fn lookup_page(
    State(s): State<super::Shared>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    localized(
        LOOKUP_HTML,
        s.shifts.zone_name(),
        query.as_deref(),
        &headers,
    )
}

/// The inspection worklist; its filters are in the address and read by its script.
pub async fn worklist_page(
    State(s): State<super::Shared>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    localized(
        WORKLIST_HTML,
        s.shifts.zone_name(),
        query.as_deref(),
        &headers,
    )
}

/// `GET /api/barcode.svg?text=…`: the text as a Code 128 barcode, for inspection slips.
pub async fn barcode(RawQuery(query): RawQuery) -> Response {
    let text = query
        .as_deref()
        .and_then(|q| url_param(q, "text"))
        .map(|t| percent_decode(&t))
        .unwrap_or_default();
    match super::barcode::svg(&text, 2, 80) {
        Ok(svg) => ([(header::CONTENT_TYPE, "image/svg+xml")], svg).into_response(),
        Err(e) => (
            axum::http::StatusCode::BAD_REQUEST,
            axum::Json(serde_json::json!({ "error": format!("text: {e}") })),
        )
            .into_response(),
    }
}

/// `%XX` and `+` of a query value decoded; invalid escapes are kept as they are.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
                {
                    Ok(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
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
    fn every_page_label_is_in_both_catalogues_and_filled() {
        use super::i18n::{page_keys, Lang};
        for page in [super::BOARD_HTML, super::LOOKUP_HTML, super::WORKLIST_HTML] {
            for key in page_keys(page) {
                for lang in Lang::ALL {
                    assert_ne!(lang.catalogue().get(key), key, "{key} in {}", lang.code());
                }
            }
            for lang in Lang::ALL {
                let filled = super::fill_page(page, lang, "Asia/Shanghai", None);
                assert!(!filled.contains("{{"), "unfilled mark in a page");
                assert!(filled.contains(&format!("<html lang=\"{}\">", lang.tag())));
                assert!(filled.contains("id=\"i18n\"") && filled.contains("?lang=zh"));
            }
        }
        let zh = super::fill_page(super::LOOKUP_HTML, Lang::Zh, "Asia/Shanghai", None);
        assert!(zh.contains("包裹查询"));
        // The gateway's own decisions have their reason in both languages.
        for rule in [
            "no_read",
            crate::rules::engine::AWAITING_XRAY,
            crate::rules::STATE_LOADING,
        ] {
            for lang in Lang::ALL {
                let key = format!("reason.builtin.{rule}");
                assert_ne!(lang.catalogue().get(&key), key);
            }
        }
        assert_eq!(
            super::query_lang(Some("a=1&lang=zh")).as_deref(),
            Some("zh")
        );
        assert_eq!(super::percent_decode("A%2FB+c%zz%4"), "A/B c%zz%4");
        // The switch keeps the page's other parameters and escapes them.
        let switch = super::lang_switch(Lang::En, Some("range=7d&lang=en&rule=a<b"));
        assert!(
            switch.contains("href=\"?range=7d&amp;rule=a&lt;b&amp;lang=zh\""),
            "{switch}"
        );
        assert!(switch.contains("aria-current"), "{switch}");
    }

    #[test]
    fn pages_load_only_assets_that_exist() {
        for page in [super::BOARD_HTML, super::LOOKUP_HTML, super::WORKLIST_HTML] {
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
