//! The pages' two languages: Simplified Chinese for the officers on the floor, English for
//! everyone else.
//!
//! The catalogues are flat JSON files (`"key": "text"`, `{name}` placeholders) compiled into
//! the binary. The server picks the language per request (`?lang=`, then the remembered
//! cookie, then `Accept-Language`), fills the page's static labels and hands the whole
//! catalogue to the page's script, which renders everything that comes from records
//! (lane roles, rule names, reasons built from rule data, alerts) through the same keys.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use axum::http::HeaderMap;

/// The cookie that remembers an explicit choice.
pub const COOKIE: &str = "bondline_lang";

const EN_JSON: &str = include_str!("i18n/en.json");
const ZH_JSON: &str = include_str!("i18n/zh.json");

/// A language the pages speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    Zh,
    En,
}

impl Lang {
    pub const ALL: [Lang; 2] = [Lang::Zh, Lang::En];

    /// The BCP 47 tag, for `<html lang>` and the browser's `Intl`.
    pub fn tag(self) -> &'static str {
        match self {
            Lang::Zh => "zh-CN",
            Lang::En => "en",
        }
    }

    /// The short code used in `?lang=` and the cookie.
    pub fn code(self) -> &'static str {
        match self {
            Lang::Zh => "zh",
            Lang::En => "en",
        }
    }

    /// `zh`, `zh-CN`, `zh-Hans`, `en-GB`, … to a language; anything else is not one.
    pub fn parse(s: &str) -> Option<Lang> {
        let primary = s.trim().split(['-', '_']).next()?.to_ascii_lowercase();
        match primary.as_str() {
            "zh" => Some(Lang::Zh),
            "en" => Some(Lang::En),
            _ => None,
        }
    }

    /// This language's catalogue.
    pub fn catalogue(self) -> &'static Catalogue {
        static CATS: OnceLock<[Catalogue; 2]> = OnceLock::new();
        let cats = CATS.get_or_init(|| {
            [
                Catalogue::parse(ZH_JSON).expect("zh.json is checked by the tests"),
                Catalogue::parse(EN_JSON).expect("en.json is checked by the tests"),
            ]
        });
        match self {
            Lang::Zh => &cats[0],
            Lang::En => &cats[1],
        }
    }
}

/// How the request chose its language, and whether the answer must remember it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    pub lang: Lang,
    /// Set from `?lang=`: the answer sets the cookie.
    pub remember: bool,
}

/// `?lang=` wins and is remembered; else the cookie; else the browser's `Accept-Language`
/// (Chinese for a Chinese browser); else English.
pub fn choose(query_lang: Option<&str>, headers: &HeaderMap) -> Choice {
    if let Some(lang) = query_lang.and_then(Lang::parse) {
        return Choice {
            lang,
            remember: true,
        };
    }
    let from_cookie = headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .and_then(|(_, v)| Lang::parse(v));
    let lang = from_cookie
        .or_else(|| {
            headers
                .get(axum::http::header::ACCEPT_LANGUAGE)
                .and_then(|v| v.to_str().ok())
                .and_then(accept_language)
        })
        .unwrap_or(Lang::En);
    Choice {
        lang,
        remember: false,
    }
}

/// The best language of an `Accept-Language` value we speak, by its `q` weights (ties keep
/// the browser's order).
pub fn accept_language(value: &str) -> Option<Lang> {
    let mut best: Option<(f32, Lang)> = None;
    for part in value.split(',') {
        let mut bits = part.split(';');
        let Some(lang) = bits.next().and_then(Lang::parse) else {
            continue;
        };
        let q = bits
            .filter_map(|b| b.trim().strip_prefix("q="))
            .filter_map(|q| q.trim().parse::<f32>().ok())
            .next()
            .unwrap_or(1.0);
        if q > 0.0 && best.is_none_or(|(b, _)| q > b) {
            best = Some((q, lang));
        }
    }
    best.map(|(_, l)| l)
}

/// The `Set-Cookie` value that remembers a language for a year.
pub fn cookie(lang: Lang) -> String {
    format!(
        "{COOKIE}={}; Path=/; Max-Age=31536000; SameSite=Lax",
        lang.code()
    )
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogueError {
    #[error("catalogue is not a flat JSON object of strings, each key written once: {0}")]
    Json(#[from] serde_json::Error),
}

/// A catalogue's texts as written: a flat object of strings whose keys appear once. JSON
/// itself lets a key repeat and keeps its last text, which would hide one text behind another.
struct Texts(BTreeMap<String, String>);

impl<'de> serde::Deserialize<'de> for Texts {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Texts, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Texts;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object of texts by key")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Texts, A::Error> {
                let mut texts = BTreeMap::new();
                while let Some((key, text)) = map.next_entry::<String, String>()? {
                    if texts.contains_key(&key) {
                        return Err(serde::de::Error::custom(format!(
                            "key `{key}` is written twice"
                        )));
                    }
                    texts.insert(key, text);
                }
                Ok(Texts(texts))
            }
        }
        d.deserialize_map(Visit)
    }
}

/// One language's texts by key.
#[derive(Debug)]
pub struct Catalogue {
    texts: BTreeMap<String, String>,
    json: String,
}

impl Catalogue {
    pub fn parse(json: &str) -> Result<Catalogue, CatalogueError> {
        let Texts(texts) = serde_json::from_str(json)?;
        let json = serde_json::to_string(&texts)?;
        Ok(Catalogue { texts, json })
    }

    /// The text for `key`, or the key itself so a missing text shows where it is missing
    /// (the tests make sure none is).
    pub fn get<'a>(&'a self, key: &'a str) -> &'a str {
        self.texts.get(key).map(String::as_str).unwrap_or(key)
    }

    /// The text for `key` with its `{name}` placeholders filled.
    pub fn format(&self, key: &str, args: &[(&str, &str)]) -> String {
        let mut out = self.get(key).to_string();
        for (name, value) in args {
            out = out.replace(&format!("{{{name}}}"), value);
        }
        out
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.texts.keys().map(String::as_str)
    }

    /// The whole catalogue as compact JSON, for the page's script.
    pub fn json(&self) -> &str {
        &self.json
    }
}

/// The `{name}` placeholders of a text.
pub fn placeholders(text: &str) -> BTreeSet<&str> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        match after.find('}') {
            Some(close) => {
                let name = &after[..close];
                if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    out.insert(name);
                }
                rest = &after[close + 1..];
            }
            None => break,
        }
    }
    out
}

/// Text made safe inside HTML text and attribute values.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A page template in the chosen language: every `{{t:key}}` becomes the escaped text,
/// `{{lang}}` the language tag and `{{lang_code}}` its short code.
pub fn localize_page(template: &str, lang: Lang) -> String {
    let cat = lang.catalogue();
    let mut out = String::with_capacity(template.len() + 1024);
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        let after = &rest[open + 2..];
        let Some(close) = after.find("}}") else {
            out.push_str(&rest[open..]);
            rest = "";
            break;
        };
        let mark = &after[..close];
        if let Some(key) = mark.strip_prefix("t:") {
            out.push_str(&escape_html(cat.get(key)));
        } else if mark == "lang" {
            out.push_str(lang.tag());
        } else if mark == "lang_code" {
            out.push_str(lang.code());
        } else {
            out.push_str(&rest[open..open + 2 + close + 2]);
        }
        rest = &after[close + 2..];
    }
    out.push_str(rest);
    out
}

/// Keys every page template uses, for the tests.
pub fn page_keys(template: &str) -> Vec<&str> {
    template
        .split("{{t:")
        .skip(1)
        .filter_map(|p| p.split("}}").next())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use bondline_devices::contract::{
        AlertKind, DispositionKind, DivertStatus, LaneRole, XrayJoin, XraySeen,
    };
    use serde::de::DeserializeOwned;

    /// Every variant name of a serde enum, read from serde's own "expected one of" list so a
    /// variant added to the contract shows up here without anyone touching this test.
    fn variants_of<T: DeserializeOwned + std::fmt::Debug>(probe: serde_json::Value) -> Vec<String> {
        let err = serde_json::from_value::<T>(probe)
            .expect_err("the probe is no variant")
            .to_string();
        let list = err
            .split("expected one of ")
            .nth(1)
            .or_else(|| err.split("expected ").nth(1))
            .unwrap_or_else(|| panic!("serde did not list the variants: {err}"));
        let names: Vec<String> = list
            .split('`')
            .enumerate()
            .filter(|(i, _)| i % 2 == 1)
            .map(|(_, s)| s.to_string())
            .collect();
        assert!(!names.is_empty(), "no variants read from: {err}");
        names
    }

    #[test]
    fn a_key_written_twice_is_refused() {
        let err = Catalogue::parse(r#"{"a": "x", "b": "y", "a": "z"}"#).unwrap_err();
        assert!(
            err.to_string().contains("key `a` is written twice"),
            "{err}"
        );
        // The shipped catalogues have none (they would not load).
        for (name, json) in [("zh.json", ZH_JSON), ("en.json", EN_JSON)] {
            Catalogue::parse(json).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    fn unit_variants<T: DeserializeOwned + std::fmt::Debug>() -> Vec<String> {
        variants_of::<T>(serde_json::json!("~no such variant~"))
    }

    fn every_lang_has(key: &str) {
        for lang in Lang::ALL {
            assert!(
                lang.catalogue().texts.contains_key(key),
                "key {key} is missing from the {} catalogue",
                lang.code()
            );
        }
    }

    #[test]
    fn both_catalogues_have_the_same_keys_and_placeholders() {
        let zh = Lang::Zh.catalogue();
        let en = Lang::En.catalogue();
        for k in zh.keys() {
            assert!(en.texts.contains_key(k), "key {k} is missing from en.json");
        }
        for k in en.keys() {
            assert!(zh.texts.contains_key(k), "key {k} is missing from zh.json");
            assert_eq!(
                placeholders(en.get(k)),
                placeholders(zh.get(k)),
                "placeholders of {k} differ between en.json and zh.json"
            );
            assert!(!en.get(k).trim().is_empty() && !zh.get(k).trim().is_empty());
        }
    }

    #[test]
    fn every_contract_variant_has_its_keys() {
        let roles = unit_variants::<LaneRole>();
        assert_eq!(roles.len(), LaneRole::ALL.len());
        for r in roles {
            every_lang_has(&format!("role.{r}"));
        }
        for a in unit_variants::<AlertKind>() {
            every_lang_has(&format!("alert.{a}"));
        }
        for d in unit_variants::<DivertStatus>() {
            every_lang_has(&format!("divert.{d}"));
        }
        for d in unit_variants::<DispositionKind>() {
            every_lang_has(&format!("disposition.{d}"));
        }
        for x in unit_variants::<XraySeen>() {
            every_lang_has(&format!("xray.{x}"));
        }
        for j in unit_variants::<XrayJoin>() {
            every_lang_has(&format!("xray_join.{j}"));
        }
        let kinds = variants_of::<crate::rules::engine::RuleKind>(
            serde_json::json!({"kind": "~no such rule~"}),
        );
        assert!(kinds.contains(&"consumer_limit".to_string()), "{kinds:?}");
        for k in kinds {
            every_lang_has(&format!("rule.{k}"));
            every_lang_has(&format!("reason.{k}"));
        }
    }

    #[test]
    fn alerts_other_branches_add_are_already_translated() {
        for a in [
            "duplicate_label",
            "broker_session",
            "stored_state_refused",
            "journal_chain_broken",
        ] {
            every_lang_has(&format!("alert.{a}"));
        }
    }

    #[test]
    fn the_language_follows_query_then_cookie_then_browser() {
        let mut h = HeaderMap::new();
        assert_eq!(choose(None, &h).lang, Lang::En);
        h.insert(
            "accept-language",
            HeaderValue::from_static("zh-CN,zh;q=0.9,en;q=0.8"),
        );
        assert_eq!(
            choose(None, &h),
            Choice {
                lang: Lang::Zh,
                remember: false
            }
        );
        h.insert("cookie", HeaderValue::from_static("a=b; bondline_lang=en"));
        assert_eq!(choose(None, &h).lang, Lang::En);
        assert_eq!(
            choose(Some("zh"), &h),
            Choice {
                lang: Lang::Zh,
                remember: true
            }
        );
        // An unknown `?lang=` falls back to the cookie.
        assert_eq!(choose(Some("fr"), &h).lang, Lang::En);
        assert_eq!(accept_language("fr, en;q=0.5, zh;q=0.7"), Some(Lang::Zh));
        assert_eq!(accept_language("de, fr"), None);
        assert_eq!(accept_language("zh;q=0, en-GB"), Some(Lang::En));
        assert!(cookie(Lang::Zh).starts_with("bondline_lang=zh;"));
    }

    #[test]
    fn pages_are_filled_and_escaped() {
        let page = localize_page(
            "<html lang=\"{{lang}}\"><b>{{t:nav.board}}</b>{{other}}",
            Lang::Zh,
        );
        assert_eq!(page, "<html lang=\"zh-CN\"><b>分拣道看板</b>{{other}}");
        assert_eq!(
            escape_html("<a href='x'>&\""),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;"
        );
        let cat = Lang::En.catalogue();
        assert_eq!(
            cat.format("common.lane", &[("lane", "3")]),
            "Lane 3".to_string()
        );
        assert_eq!(
            placeholders("a {x} b {y_1} {} {not it"),
            BTreeSet::from(["x", "y_1"])
        );
    }
}
