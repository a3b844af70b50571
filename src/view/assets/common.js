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

function fmtTime(ms) {
  if (!ms) return "—";
  const d = new Date(ms);
  return pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
}

function fmtDateTime(ms) {
  if (!ms) return "—";
  const d = new Date(ms);
  return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " + fmtTime(ms);
}

function fmtAge(ms) {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 120) return s + " s";
  if (s < 7200) return Math.round(s / 60) + " min";
  return Math.round(s / 3600) + " h";
}

const ROLE_MARK = { release: "✓ RELEASE", inspection: "⚑ INSPECTION", hold: "■ HOLD", exception: "! EXCEPTION" };

function roleBadge(role) {
  return el("span", { class: "badge " + (ROLE_MARK[role] ? role : "neutral") }, ROLE_MARK[role] || String(role || "—"));
}

function fwdText(f) {
  if (!f) return "—";
  if (f.state === "forwarded") return "forwarded to the platform";
  if (f.state === "outbox") return "in the outbox (waiting for the platform's acknowledge)";
  if (f.state === "parked") return "parked: " + f.reason;
  return f.state;
}

async function fetchJson(url) {
  const r = await fetch(url, { cache: "no-store", credentials: "same-origin" });
  if (!r.ok) {
    let msg = r.status + " " + r.statusText;
    try { msg = (await r.json()).error || msg; } catch (_) { /* not JSON */ }
    throw new Error(msg);
  }
  return r.json();
}

// Any JSON value as readable nodes: objects as key/value lists, arrays of objects as tables.
// New record fields show up without a change here.
function renderValue(v) {
  if (v === null || v === undefined) return document.createTextNode("—");
  if (Array.isArray(v)) {
    if (v.length === 0) return document.createTextNode("none");
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
  if (typeof v === "boolean") return document.createTextNode(v ? "yes" : "no");
  return document.createTextNode(String(v));
}
