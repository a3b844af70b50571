// Shared helpers. Every value from the server goes into the page as text, never as HTML.
"use strict";

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null) continue;
    if (k === "class") e.className = v; else e.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === undefined || c === null) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function pad(n) { return String(n).padStart(2, "0"); }

// The page's language: its catalogue, tag and the warehouse's time zone, filled in by the
// server. Records stay in UTC; times are shown in the warehouse's zone, numbers in the
// language's form.
const PAGE_I18N = (() => {
  try { return JSON.parse(document.getElementById("i18n").textContent); } catch (_) { return { lang: "en", time_zone: "UTC", texts: {} }; }
})();
const LANG = PAGE_I18N.lang;
const TIME_ZONE = PAGE_I18N.time_zone;

// The text of `key` with its `{name}` placeholders filled from `params`.
function t(key, params) {
  let s = PAGE_I18N.texts[key];
  if (s === undefined) return key;
  for (const [k, v] of Object.entries(params || {})) s = s.split("{" + k + "}").join(String(v));
  return s;
}

// A value of the contract (`link_down`) in words: its catalogue entry under `prefix`, else
// the value itself with spaces.
function tv(prefix, v) {
  if (v === null || v === undefined) return "—";
  const key = prefix + "." + v;
  return PAGE_I18N.texts[key] !== undefined ? PAGE_I18N.texts[key] : String(v).replace(/_/g, " ");
}

function fmtNumber(n) {
  return typeof n === "number" ? n.toLocaleString(LANG) : String(n);
}

function fmtParts(ms, withDate) {
  const opts = { timeZone: TIME_ZONE, hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23" };
  if (withDate) Object.assign(opts, { year: "numeric", month: "2-digit", day: "2-digit" });
  try { return new Intl.DateTimeFormat(LANG, opts).format(new Date(ms)); } catch (_) { return new Date(ms).toISOString(); }
}

// The warehouse's wall clock at `ms` as parts (year … second), whatever the browser's zone.
function zoneParts(ms) {
  const opts = { timeZone: TIME_ZONE, hourCycle: "h23", year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit" };
  const parts = {};
  for (const p of new Intl.DateTimeFormat("en-US", opts).formatToParts(new Date(ms))) parts[p.type] = p.value;
  return parts;
}

// `ms` as the value of a datetime-local field, in the warehouse's zone: a form filled on a
// tablet set to another zone still shows and sends the warehouse's time.
function zoneInput(ms) {
  try {
    const p = zoneParts(ms);
    return p.year + "-" + p.month + "-" + p.day + "T" + p.hour + ":" + p.minute + ":" + p.second;
  } catch (_) {
    return new Date(ms).toISOString().slice(0, 19);
  }
}

// How far the warehouse's wall clock is ahead of UTC at `ms`, in ms.
function zoneOffset(ms) {
  const p = zoneParts(ms);
  const wall = Date.UTC(+p.year, +p.month - 1, +p.day, +p.hour % 24, +p.minute, +p.second);
  return wall - Math.floor(ms / 1000) * 1000;
}

// A time of an address or form as ms: digits are ms since the epoch, a time with `Z` or an
// offset is that instant, and a bare `2026-12-05T08:00[:00]` is 08:00 in the warehouse's zone
// (exact across offset changes: the offset is taken at the instant it yields). Null when it
// is none of these.
function zoneMs(v) {
  if (!v) return null;
  if (/^\d+$/.test(v)) return Number(v);
  const m = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})(?::(\d{2}))?$/.exec(v);
  if (!m) {
    const t = new Date(v).getTime();
    return Number.isNaN(t) ? null : t;
  }
  const wall = Date.UTC(+m[1], +m[2] - 1, +m[3], +m[4], +m[5], +(m[6] || 0));
  try {
    let ms = wall - zoneOffset(wall);
    const again = wall - zoneOffset(ms);
    if (again !== ms && zoneOffset(again) === wall - again) ms = again;
    return ms;
  } catch (_) {
    return wall;
  }
}

function fmtTime(ms) {
  if (!ms) return "—";
  return fmtParts(ms, false);
}

function fmtDateTime(ms) {
  if (!ms) return "—";
  return fmtParts(ms, true);
}

function fmtAge(ms) {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 120) return s + " s";
  if (s < 7200) return Math.round(s / 60) + " min";
  return Math.round(s / 3600) + " h";
}

function roleBadge(role) {
  const known = PAGE_I18N.texts["role." + role] !== undefined;
  return el("span", { class: "badge " + (known ? role : "neutral") }, known ? t("role." + role) : String(role || "—"));
}

function fwdText(f) {
  if (!f) return "—";
  if (f.state === "forwarded") return t("lookup.fwd.forwarded");
  if (f.state === "outbox") return t("lookup.fwd.outbox");
  if (f.state === "parked") return t("lookup.fwd.parked", { reason: f.reason });
  return f.state;
}

async function fetchJson(url) {
  // Resolved against the origin, which never carries credentials: a page opened as
  // http://user:password@gateway/ may not fetch a URL built from its own address.
  const r = await fetch(new URL(url, location.origin), { cache: "no-store", credentials: "same-origin" });
  if (!r.ok) {
    let msg = r.status + " " + r.statusText;
    // `message` is in the page's language (the request carries its cookie); `error` in English.
    try { const b = await r.json(); msg = b.message || b.error || msg; } catch (_) { /* not JSON */ }
    throw new Error(msg);
  }
  return r.json();
}

// Any JSON value as readable nodes: objects as key/value lists, arrays of objects as tables.
// New record fields show up without a change here.
function renderValue(v) {
  if (v === null || v === undefined) return document.createTextNode("—");
  if (Array.isArray(v)) {
    if (v.length === 0) return document.createTextNode(t("common.none"));
    if (v.every((x) => x && typeof x === "object" && !Array.isArray(x))) {
      const keys = [];
      for (const o of v) for (const k of Object.keys(o)) if (!keys.includes(k)) keys.push(k);
      const head = el("tr", {}, ...keys.map((k) => el("th", {}, k)));
      const rows = v.map((o) => el("tr", {}, ...keys.map((k) => el("td", {}, renderValue(o[k])))));
      return el("table", {}, el("thead", {}, head), el("tbody", {}, ...rows));
    }
    return document.createTextNode(v.map((x) => (typeof x === "object" ? JSON.stringify(x) : String(x))).join(", "));
  }
  if (typeof v === "object") {
    const dl = el("dl");
    for (const [k, x] of Object.entries(v)) dl.append(el("dt", {}, k), el("dd", {}, renderValue(x)));
    return dl;
  }
  if (typeof v === "boolean") return document.createTextNode(v ? t("common.yes") : t("common.no"));
  return document.createTextNode(String(v));
}

// The rules in force (`/api/rules`), by name, for writing reasons from structured fields.
let RULES = null;
async function loadRules() {
  try {
    const r = await fetchJson("/api/rules");
    RULES = { version: r.version, byName: Object.fromEntries(r.rules.map((x) => [x.name, x])) };
  } catch (_) { RULES = null; }
}

function money(minor, currency) {
  if (minor === null || minor === undefined) return "—";
  const v = minor / 100;
  try { return currency ? new Intl.NumberFormat(LANG, { style: "currency", currency }).format(v) : fmtNumber(v); } catch (_) { return fmtNumber(v) + (currency ? " " + currency : ""); }
}

// The reason of rule `name` on parcel record `r`, in the page's language, from the rule's
// kind and parameters and what the decision saw. Falls back to the recorded (English)
// reason when the record's rule set is not the one in force or a figure is missing.
function reasonOf(r, name, recorded) {
  // The gateway's own decisions (no read, waiting for the X-ray) have fixed reasons.
  if (PAGE_I18N.texts["reason.builtin." + name] !== undefined) return t("reason.builtin." + name);
  const rule = RULES && r.rule_set === RULES.version ? RULES.byName[name] : null;
  const i = r.inputs;
  if (!rule || !i) return recorded;
  const p = {};
  switch (rule.kind) {
    case "instruction": if (!i.instruction) return recorded; p.action = tv("action", i.instruction); break;
    case "undeclared": p.waybill = r.waybill || "—"; break;
    case "suspended_enterprise": if (!i.enterprise) return recorded; p.enterprise = i.enterprise; break;
    case "weight_mismatch":
      if (i.measured_weight_g == null || i.declared_weight_g == null) return recorded;
      Object.assign(p, { measured_g: fmtNumber(i.measured_weight_g), declared_g: fmtNumber(i.declared_weight_g), tolerance_pct: fmtNumber(rule.tolerance_pct), tolerance_g: fmtNumber(rule.tolerance_g) });
      break;
    case "consumer_limit": {
      const w = (i.consumer_windows || []).find((x) => x.rule === name);
      if (!w) return recorded;
      Object.assign(p, { window: rule.window ? t("window." + rule.window) : t("window.rolling", { days: fmtNumber(rule.window_days) }), parcels: fmtNumber(w.parcels), value: money(w.value_minor, i.currency || rule.currency) });
      break;
    }
    case "transaction_limit": {
      const x = (i.transactions || []).find((y) => y.rule === name);
      if (!x) return recorded;
      const cur = x.currency || rule.currency || i.currency;
      Object.assign(p, { which: x.order_id ? t("transaction.order", { order: x.order_id, parcels: fmtNumber(x.parcels) }) : t("transaction.waybill"), value: money(x.value_minor_after, cur), limit: money(x.max_value_minor, rule.currency || cur) });
      break;
    }
    case "sampling": p.rate_ppm = fmtNumber(rule.rate_ppm); break;
    case "unverified_identity": case "xray_suspect": break;
    default: return recorded;
  }
  return t("reason." + rule.kind, p);
}
