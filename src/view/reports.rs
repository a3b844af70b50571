//! The charts page and API and the shift export download: the handlers that walk the
//! journal over a shift or a day (off the async workers, in bounded slices) and hand the
//! records to [`super::charts`] and [`super::export`].

use axum::extract::{Query, RawQuery, State};
use axum::http::{header, HeaderMap};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use bondline_devices::contract::LaneRole;
use serde::{Deserialize, Serialize};

use super::charts::{self, esc, Chart, Filter};
use super::export::{self, Export, Lang, Scope};
use super::shift::ShiftPlan;
use super::{Shared, ViewError};
use crate::journal::walk::{fold_between, WalkError};
use crate::metrics::unix_ms;

impl From<WalkError> for ViewError {
    fn from(e: WalkError) -> ViewError {
        match e {
            WalkError::Journal(j) => ViewError::Journal(j),
            WalkError::Task(t) => ViewError::Task(t),
        }
    }
}

/// Page texts, from the view's catalogues (`src/view/i18n/*.json`, keys `charts.*`).
fn t(key: &str, lang: Lang) -> String {
    export::text(key, lang)
}

#[derive(Deserialize, Default)]
pub struct ChartQuery {
    /// `shift` (default) or `7d`.
    range: Option<String>,
    /// With `range=shift`: the shift containing this time (default now).
    shift: Option<String>,
    line: Option<String>,
    role: Option<String>,
    rule: Option<String>,
    lang: Option<String>,
}

#[derive(Serialize)]
pub struct ChartResponse {
    range: String,
    /// Shift label or the days' span, local.
    label: String,
    time_zone: String,
    from: String,
    to: String,
    #[serde(flatten)]
    chart: Chart,
}

fn nonempty(s: &Option<String>) -> Option<String> {
    s.as_ref()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

fn parse_role(s: &str) -> Result<LaneRole, ViewError> {
    serde_json::from_value(serde_json::Value::String(s.to_string()))
        .map_err(|_| ViewError::invalid("bad_lane_role", &[("role", s)]))
}

/// `[from, to)` and a label for a chart's range.
fn chart_range(
    plan: &ShiftPlan,
    q: &ChartQuery,
    now: i64,
) -> Result<(String, i64, i64, String), ViewError> {
    let bad = |e: super::shift::ShiftError| ViewError::BadRequest(e.to_string());
    match q.range.as_deref().unwrap_or("shift") {
        "shift" => {
            let at = match nonempty(&q.shift) {
                Some(s) => plan.parse_instant(&s).map_err(bad)?,
                None => now,
            };
            let s = plan.shift_at(at).map_err(bad)?;
            Ok(("shift".into(), s.start_ms(), s.end_ms(), s.label()))
        }
        "7d" => {
            let today = plan.date_of(now).map_err(bad)?;
            let mut first = today;
            for _ in 0..6 {
                first = first
                    .yesterday()
                    .map_err(|_| ViewError::BadRequest("date out of range".into()))?;
            }
            let (from, _) = plan.day_bounds(first).map_err(bad)?;
            let (_, to) = plan.day_bounds(today).map_err(bad)?;
            Ok(("7d".into(), from, to, format!("{first} – {today}")))
        }
        other => Err(ViewError::invalid("bad_chart_range", &[("range", other)])),
    }
}

async fn gather(s: &Shared, q: &ChartQuery) -> Result<ChartResponse, ViewError> {
    let plan = &s.shifts;
    let now = unix_ms(std::time::SystemTime::now()) as i64;
    let (range, from, to, label) = chart_range(plan, q, now)?;
    let filter = Filter {
        line: nonempty(&q.line),
        role: nonempty(&q.role).map(|r| parse_role(&r)).transpose()?,
        rule: nonempty(&q.rule),
    };
    let chart = fold_between(
        s.ctx.journal.clone(),
        from.max(0) as u64,
        to.max(0) as u64,
        Chart::new(from, to, filter),
        |c, r| c.add(r),
    )
    .await?;
    Ok(ChartResponse {
        range,
        label,
        time_zone: plan.zone_name().to_string(),
        from: plan.local_rfc3339(from),
        to: plan.local_rfc3339(to),
        chart,
    })
}

/// `GET /api/charts?range=shift|7d&shift=…&line=…&role=…&rule=…`
pub async fn charts_api(
    State(s): State<Shared>,
    Query(q): Query<ChartQuery>,
) -> Result<Json<ChartResponse>, ViewError> {
    Ok(Json(gather(&s, &q).await?))
}

/// `GET /api/shift`: the shift running now in the warehouse's zone (the worklist's default
/// range): `{label, time_zone, from_ms, to_ms, from, to}`.
pub async fn shift_api(State(s): State<Shared>) -> Result<Json<serde_json::Value>, ViewError> {
    let now = unix_ms(std::time::SystemTime::now()) as i64;
    let shift = s
        .shifts
        .shift_at(now)
        .map_err(|e| ViewError::BadRequest(e.to_string()))?;
    Ok(Json(serde_json::json!({
        "label": shift.label(),
        "time_zone": s.shifts.zone_name(),
        "from_ms": shift.start_ms(),
        "to_ms": shift.end_ms(),
        "from": shift.start_rfc3339(),
        "to": shift.end_rfc3339(),
    })))
}

fn query_string(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{k}={}", url_escape(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn url_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `GET /charts?…`: the same as `/api/charts`, drawn. Filters are a plain GET form, so the
/// address carries them and can be sent to a colleague.
/// The language is chosen like on the other pages (`?lang=`, remembered in the cookie, then the
/// cookie, then `Accept-Language`), and the header has the same switch.
pub async fn charts_page(
    State(s): State<Shared>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    Query(q): Query<ChartQuery>,
) -> Result<Response, ViewError> {
    let choice = super::i18n::choose(nonempty(&q.lang).as_deref(), &headers);
    let lang = match choice.lang {
        super::i18n::Lang::Zh => Lang::Zh,
        super::i18n::Lang::En => Lang::En,
    };
    let switch = super::assets::lang_switch(choice.lang, raw.as_deref());
    let r = gather(&s, &q).await?;
    let plan = &s.shifts;
    let hour = |ms: i64| match plan.local(ms) {
        Ok(z) if r.range == "7d" => z.strftime("%m-%d %H").to_string(),
        Ok(z) => z.strftime("%H:%M").to_string(),
        Err(_) => String::new(),
    };
    let role_label = |name: &str| export::text(&format!("export.role.{name}"), lang);
    let plain = |name: &str| name.to_string();
    let by_role = charts::svg(
        &r.chart,
        &r.chart.by_role,
        &charts::role_colours,
        &role_label,
        &hour,
        &t("charts.by_role", lang),
    );
    let by_rule = charts::svg(
        &r.chart,
        &r.chart.by_rule,
        &charts::rule_colours,
        &plain,
        &hour,
        &t("charts.by_rule", lang),
    );
    let (line, role, rule) = (
        nonempty(&q.line).unwrap_or_default(),
        nonempty(&q.role).unwrap_or_default(),
        nonempty(&q.rule).unwrap_or_default(),
    );
    let lang_code = if lang == Lang::Zh { "zh" } else { "en" };
    let link = |range: &str| {
        format!(
            "/charts?{}",
            query_string(&[
                ("range", range),
                ("line", &line),
                ("role", &role),
                ("rule", &rule),
            ])
        )
    };
    let mut role_options = format!(r#"<option value="">{}</option>"#, t("charts.any", lang));
    for x in LaneRole::ALL {
        let w = bondline_devices::contract::wire_name(&x);
        role_options.push_str(&format!(
            r#"<option value="{w}"{sel}>{l}</option>"#,
            sel = if w == role { " selected" } else { "" },
            l = esc(&role_label(&w))
        ));
    }
    let mut line_options = format!(r#"<option value="">{}</option>"#, t("charts.any", lang));
    for l in &s.ctx.lines {
        line_options.push_str(&format!(
            r#"<option value="{v}"{sel}>{v}</option>"#,
            v = esc(&l.id),
            sel = if l.id == line { " selected" } else { "" }
        ));
    }
    let export_shift = format!(
        "/api/export.csv?{}",
        query_string(&[("shift", &r.from), ("lang", lang_code)])
    );
    let today = plan
        .date_of(unix_ms(std::time::SystemTime::now()) as i64)
        .map(|d| d.to_string())
        .unwrap_or_default();
    let export_day = format!(
        "/api/export.csv?{}",
        query_string(&[("date", &today), ("lang", lang_code)])
    );
    let html = format!(
        r#"<!doctype html>
<html lang="{html_lang}">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · {gw}</title>
<link rel="stylesheet" href="/assets/style.css">
</head>
<body>
<header><h1>{title}</h1><nav><a href="/">{board}</a> · <a href="{l_shift}">{shift}</a> · <a href="{l_7d}">{d7}</a></nav> {switch}</header>
<main>
<form method="get" action="/charts" class="filters">
<input type="hidden" name="range" value="{range}">
<label>{t_line} <select name="line">{line_options}</select></label>
<label>{t_role} <select name="role">{role_options}</select></label>
<label>{t_rule} <input name="rule" value="{rule_v}" size="14"></label>
<button type="submit">{apply}</button>
</form>
<p id="range">{label} ({tz}) · {t_total}: <strong id="total" data-total="{total}">{total}</strong></p>
<section><h2>{t_by_role}</h2>{by_role}</section>
<section><h2>{t_by_rule}</h2>{by_rule}</section>
<p><a href="{export_shift}" download>{t_export}</a> · <a href="{export_day}" download>{t_export_day}</a></p>
<p class="note">{note} {tz}.</p>
</main>
</body>
</html>
"#,
        html_lang = if lang == Lang::Zh { "zh-CN" } else { "en" },
        title = t("charts.title", lang),
        gw = esc(&s.ctx.gateway),
        board = t("charts.board", lang),
        shift = t("charts.shift", lang),
        d7 = t("charts.7d", lang),
        l_shift = esc(&link("shift")),
        l_7d = esc(&link("7d")),
        range = esc(&r.range),
        t_line = t("charts.line", lang),
        t_role = t("charts.role", lang),
        t_rule = t("charts.rule", lang),
        rule_v = esc(&rule),
        apply = t("charts.apply", lang),
        label = esc(&r.label),
        tz = esc(&r.time_zone),
        t_total = t("charts.total", lang),
        total = r.chart.total,
        t_by_role = t("charts.by_role", lang),
        t_by_rule = t("charts.by_rule", lang),
        export_shift = esc(&export_shift),
        export_day = esc(&export_day),
        t_export = t("charts.export", lang),
        t_export_day = t("charts.export_day", lang),
        note = t("charts.first_decision", lang),
    );
    Ok(super::assets::remembered(
        Html(html).into_response(),
        choice,
    ))
}

#[derive(Deserialize)]
pub struct ExportQuery {
    /// The shift containing this time (its start, typically): RFC 3339, local
    /// `YYYY-MM-DDTHH:MM`, or Unix ms.
    shift: Option<String>,
    /// A whole local day, `YYYY-MM-DD`.
    date: Option<String>,
    lang: Option<String>,
    /// `1` or `true`: every parcel decision, not only inspection and hold.
    all: Option<String>,
}

/// `GET /api/export.csv?shift=<time>|date=<YYYY-MM-DD>&lang=zh|en&all=1`: the diversions of a
/// shift (default: the current one) or a local day as CSV, UTF-8 with BOM.
pub async fn export_csv(
    State(s): State<Shared>,
    Query(q): Query<ExportQuery>,
) -> Result<Response, ViewError> {
    let plan = s.shifts.clone();
    let now = unix_ms(std::time::SystemTime::now()) as i64;
    let (shift, date) = (nonempty(&q.shift), nonempty(&q.date));
    if shift.is_some() && date.is_some() {
        return Err(ViewError::invalid("shift_and_date", &[]));
    }
    let (from, to, label) = export::range_of(&plan, date.as_deref(), None, shift.as_deref(), now)
        .map_err(|e| ViewError::BadRequest(e.to_string()))?;
    let scope = match q.all.as_deref() {
        Some("1" | "true") => Scope::AllLanes,
        _ => Scope::Diversions,
    };
    let lang = Lang::parse(q.lang.as_deref().unwrap_or("en"));
    let export = fold_between(
        s.ctx.journal.clone(),
        from.max(0) as u64,
        to.max(0) as u64,
        Export::new(scope),
        |e, r| e.add(r),
    )
    .await?;
    let truncated = export.truncated;
    // The reasons are written like the pages write them: from the rules in force.
    let in_force = s.ctx.rules.load_full();
    let body = tokio::task::spawn_blocking(move || {
        export.to_csv(&plan, lang, std::slice::from_ref(&*in_force))
    })
    .await
    .map_err(|e| ViewError::Task(e.to_string()))?;
    let name: String = format!("bondline-{}-{label}.csv", s.ctx.gateway)
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut response = (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        body,
    )
        .into_response();
    if truncated {
        response.headers_mut().insert(
            "x-bondline-truncated",
            axum::http::HeaderValue::from_static("true"),
        );
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_page_text_has_both_languages_and_ranges_parse() {
        for k in ["charts.title", "charts.by_role", "charts.first_decision"] {
            assert_ne!(t(k, Lang::En), k);
            assert_ne!(t(k, Lang::Zh), t(k, Lang::En));
        }
        let plan = ShiftPlan::default_plan();
        let now = plan.parse_instant("2026-12-05T09:00").unwrap();
        let q = ChartQuery {
            range: Some("7d".into()),
            ..Default::default()
        };
        let (_, from, to, label) = chart_range(&plan, &q, now).unwrap();
        assert_eq!((to - from) / 3_600_000, 7 * 24);
        assert_eq!(label, "2026-11-29 – 2026-12-05");
        let q = ChartQuery::default();
        let (_, from, to, _) = chart_range(&plan, &q, now).unwrap();
        assert_eq!(plan.local_rfc3339(from), "2026-12-05T08:00:00+08:00");
        assert_eq!((to - from) / 3_600_000, 12);
        let q = ChartQuery {
            range: Some("month".into()),
            ..Default::default()
        };
        assert!(chart_range(&plan, &q, now).is_err());
        assert!(parse_role("hold").is_ok());
        assert!(parse_role("Hold").is_err());
        assert_eq!(url_escape("a b+c"), "a%20b%2Bc");
    }
}
