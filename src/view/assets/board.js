// The live board: one fetch of the whole board, then server-sent events. Built to run for
// weeks on a screen nobody touches: it reconnects by itself, refetches the board after every
// reconnect, restarts a stream that went silent, and keeps a fixed number of rows.
"use strict";

const MAX_ROWS = 30;
const MAX_ALERTS = 10;
const SILENCE_MS = 45000; // the server pings every 15 s
let stream = null;
// Filters from the address (`?line=L1&role=inspection&rule=…&waybill=…`), so a link shows the
// same board.
const FILTER = (() => {
  const p = new URLSearchParams(location.search);
  return { line: p.get("line") || "", role: p.get("role") || "", rule: p.get("rule") || "", waybill: p.get("waybill") || "" };
})();

function rowShown(r) {
  return (!FILTER.role || r.lane_role === FILTER.role) && (!FILTER.rule || r.rule === FILTER.rule) &&
    (!FILTER.waybill || (r.waybill || "").startsWith(FILTER.waybill));
}
let lastHeard = Date.now();

function setConn(live, text) {
  const c = document.getElementById("conn");
  c.textContent = text;
  c.className = "conn " + (live ? "conn-live" : "conn-wait");
}

function laneBox(l) {
  return el("div", { class: "lane role-" + l.role, "data-lane": l.lane },
    el("div", {}, t("common.lane", { lane: l.lane }) + " · ", roleBadge(l.role)),
    el("div", { class: "n" }, fmtNumber(l.count)));
}

function dispositionText(d) {
  if (!d) return "—";
  const role = d.lane_role ? " (" + tv("role", d.lane_role) + ")" : "";
  return tv("disposition", d.kind) + " → " + t("common.lane", { lane: d.lane }) + role;
}

function divertText(d) {
  if (!d || !d.status) return "—";
  return tv("divert", d.status) + (d.late ? " (" + t("board.late") + ")" : "");
}

// The verdict in words with a symbol (never colour alone), then the views' thumbnails.
const XRAY_WORDS = {
  pending: "board.xray_wait",
  clear: "board.xray_clear",
  suspect: "board.xray_suspect",
  operator_mark: "board.xray_mark",
  no_result: "board.xray_none",
};

function xrayCell(x) {
  const words = XRAY_WORDS[x.state] ? t(XRAY_WORDS[x.state]) : x.state;
  const flagged = x.state === "suspect" || x.state === "operator_mark" || x.state === "no_result";
  const cell = el("div", { class: "xray" + (flagged ? " xray-flag" : ""), "data-xray": x.state },
    el("div", {}, words + (x.material ? " · " + x.material : "") + (x.scan_id !== null && x.scan_id !== undefined ? " · scan " + x.scan_id : "")));
  const thumbs = el("div", { class: "thumbs" });
  for (const i of x.images || []) {
    if (i.thumbnail_jpeg_b64) {
      thumbs.append(el("img", { class: "thumb", alt: "X-ray " + i.view + " view", title: i.view + " · " + i.sha256.slice(0, 12), src: "data:image/jpeg;base64," + i.thumbnail_jpeg_b64 }));
    } else {
      thumbs.append(el("span", { class: "err", title: i.sha256 }, i.view + ": " + (i.error || "no thumbnail")));
    }
  }
  if (thumbs.childNodes.length) cell.append(thumbs);
  return cell;
}

// Camera snapshots: where (scan point or lane) in words, then the picture or why there is none.
function snapshotCell(list) {
  if (!list || list.length === 0) return el("span", { class: "muted" }, "—");
  const cell = el("div", { class: "thumbs snapshots" });
  for (const s of list) {
    const where = s.point === "lane" ? t("common.lane", { lane: s.lane }) : t("board.at_scan");
    if (s.thumbnail_jpeg_b64) {
      cell.append(el("img", { class: "thumb", alt: "Camera " + s.camera + " at " + where, title: "📷 " + s.camera + " · " + where + (s.sha256 ? " · " + s.sha256.slice(0, 12) : ""), src: "data:image/jpeg;base64," + s.thumbnail_jpeg_b64 }));
    } else {
      cell.append(el("span", { class: "err", "data-snapshot": "none" }, "✗ " + s.camera + " (" + where + "): " + (s.error || "no picture")));
    }
  }
  return cell;
}

function rowFor(r, live) {
  const waybill = r.waybill
    ? el("a", { href: "/parcel?waybill=" + encodeURIComponent(r.waybill) }, r.waybill)
    : el("span", { class: "muted" }, t("board.no_read"));
  const xray = r.xray === null || r.xray === undefined
    ? el("span", { class: "muted" }, t("board.no_xray"))
    : xrayCell(r.xray);
  const tr = el("tr", { "data-key": r.key, "data-source": live ? "live" : "snapshot", class: live ? "fresh" : "" },
    el("td", {}, fmtTime(r.scanned_at_ms)),
    el("td", {}, waybill),
    el("td", {}, t("common.lane", { lane: r.lane })),
    el("td", {}, roleBadge(r.lane_role)),
    el("td", {}, r.rule + (r.revision > 0 ? " (" + t("board.redecided", { revision: r.revision }) + ")" : "")),
    el("td", { class: "reason" }, r.reason),
    el("td", {}, divertText(r.divert)),
    el("td", {}, dispositionText(r.disposition)),
    el("td", {}, xray),
    el("td", {}, snapshotCell(r.snapshots)),
    el("td", {}, r.alerts && r.alerts.length ? "⚠ " + r.alerts.map((a) => tv("alert", a)).join(", ") : "—"));
  return tr;
}

function lineSection(line) {
  const sec = el("section", { class: "line", id: "line-" + line.id, "data-line": line.id });
  sec.append(el("h2", {}, t("common.line", { line: line.id })));
  const lanes = el("div", { class: "lanes" }, ...line.lanes.map(laneBox));
  sec.append(lanes);
  const alerts = el("ul", { class: "alerts" });
  for (const a of line.alerts.slice(0, MAX_ALERTS)) alerts.append(alertItem(a));
  sec.append(alerts);
  const head = el("tr", {}, ...["board.col.time", "board.col.waybill", "board.col.lane", "board.col.role", "lookup.deciding_rule", "board.col.reason", "board.col.divert", "board.col.went", "board.col.xray", "board.col.camera", "board.col.alerts"].map((h) => el("th", {}, t(h))));
  const body = el("tbody");
  for (const r of line.rows.filter(rowShown).slice(0, MAX_ROWS)) body.append(rowFor(r, false));
  sec.append(el("table", {}, el("thead", {}, head), body));
  return sec;
}

function alertItem(a) {
  return el("li", {}, "⚠ " + fmtTime(a.at_ms) + " " + tv("alert", a.alert) +
    (a.waybill ? " · " + a.waybill : "") + " — " + a.detail);
}

function showBoard(b) {
  document.getElementById("gateway").textContent = b.gateway;
  document.getElementById("rule-set").textContent = b.rule_set;
  document.getElementById("board-foot").textContent = t("board.footer", { since: fmtDateTime(b.counting_since_ms) });
  document.getElementById("lines").replaceChildren(...b.lines.filter((l) => !FILTER.line || l.id === FILTER.line).map(lineSection));
}

async function loadBoard() {
  try {
    showBoard(await fetchJson("/api/board?rows=" + MAX_ROWS));
  } catch (e) {
    setConn(false, t("board.unavailable", { message: e.message }));
  }
}

// The page arrives with a snapshot of the board, so it is complete as soon as it loads.
function firstBoard() {
  try {
    const b = JSON.parse(document.getElementById("board-snapshot").textContent);
    if (b) { showBoard(b); return; }
  } catch (_) { /* fall back to the API */ }
  loadBoard();
}

function applyUpdate(u) {
  if (FILTER.line && u.line !== FILTER.line) return;
  const sec = document.getElementById("line-" + u.line);
  if (!sec) { loadBoard(); return; }
  sec.querySelector(".lanes").replaceChildren(...u.lanes.map(laneBox));
  if (u.row && rowShown(u.row)) {
    const body = sec.querySelector("tbody");
    const tr = rowFor(u.row, true);
    const old = Array.from(body.children).find((x) => x.getAttribute("data-key") === u.row.key);
    if (old) old.remove();
    body.prepend(tr);
    while (body.children.length > MAX_ROWS) body.lastElementChild.remove();
  }
  if (u.alert) {
    const list = sec.querySelector(".alerts");
    list.prepend(alertItem(u.alert));
    while (list.children.length > MAX_ALERTS) list.lastElementChild.remove();
  }
}

function connect() {
  if (stream) stream.close();
  lastHeard = Date.now();
  stream = new EventSource("/api/events");
  stream.addEventListener("open", () => { setConn(true, t("board.live")); loadBoard(); });
  stream.addEventListener("update", (e) => {
    lastHeard = Date.now();
    try { applyUpdate(JSON.parse(e.data)); } catch (_) { loadBoard(); }
  });
  stream.addEventListener("ping", () => { lastHeard = Date.now(); });
  stream.addEventListener("resync", () => { lastHeard = Date.now(); loadBoard(); });
  stream.addEventListener("error", () => {
    setConn(false, t("board.reconnecting"));
    // The browser retries by itself unless the server answered with an error status.
    if (stream.readyState === EventSource.CLOSED) setTimeout(connect, 5000);
  });
}

async function loadHealth() {
  const box = document.getElementById("health");
  try {
    const h = await fetchJson("/api/health");
    document.getElementById("rule-set").textContent = h.rule_set;
    document.getElementById("unsigned").hidden = h.platform_signatures === "required";
    const integrity = document.getElementById("integrity");
    integrity.hidden = !(h.integrity && h.integrity.length);
    integrity.textContent = integrity.hidden ? "" : t("board.integrity", { problems: h.integrity.join("; ") });
    const items = h.links.map((l) => el("div", { class: "link " + (l.state === "up" ? "up" : "down") },
      el("div", {}, tv("health", l.kind) + " " + l.name.replace(/^[a-z]+:/, "") + ": ",
        el("span", { class: "state", "data-state": l.state }, tv("health", l.state))),
      el("div", { class: "muted" }, l.since_ms ? t("health.since", { time: fmtDateTime(l.since_ms) }) : t("board.no_attempt")),
      l.last_error ? el("div", { class: "err" }, t("board.last_error", { message: l.last_error })) : null));
    for (const line of h.lines) {
      if (!line.xray) items.push(el("div", { class: "link" }, t("health.xray") + " " + t("common.line", { line: line.line }) + ": ", el("span", { class: "state" }, t("health.none")), el("div", { class: "muted" }, t("board.no_xray"))));
    }
    const oldest = h.oldest_unforwarded
      ? t("board.oldest_unforwarded", { age: fmtAge(h.oldest_unforwarded.age_ms), seq: h.oldest_unforwarded.seq })
      : t("board.nothing_waiting");
    items.push(el("div", { class: "link " + (h.backlog === 0 ? "up" : "") },
      t("board.outbox") + ": ", el("span", { class: "state" }, t("board.records", { count: fmtNumber(h.backlog) })),
      el("div", { class: "muted" }, oldest + (h.parked ? " · " + h.parked + " parked" : "")),
      el("div", { class: "muted" }, t("board.journal", { level: h.journal_level.replace(/_/g, " "), records: fmtNumber(Math.round((h.journal_record_bytes || 0) / 1048576)), platform: fmtNumber(Math.round((h.journal_platform_bytes || 0) / 1048576)) }))));
    if (h.platform_backlog) {
      const b = h.platform_backlog;
      items.push(el("div", { class: "link" },
        t("board.platform_backlog", { count: fmtNumber(b.ingested), rate: fmtNumber(b.rate) }) + (b.paced ? " " + t("board.platform_paced") : ""),
        el("div", { class: "muted" }, t("board.platform_in_flight", { count: fmtNumber(b.in_flight) }))));
    }
    box.replaceChildren(...items);
  } catch (e) {
    box.replaceChildren(el("div", { class: "link down" }, t("board.health_unavailable", { message: e.message })));
  }
}

function tick() {
  document.getElementById("clock").textContent = fmtTime(Date.now());
  if (Date.now() - lastHeard > SILENCE_MS) {
    setConn(false, t("board.reconnecting"));
    connect();
  }
}

firstBoard();
connect();
loadHealth();
setInterval(loadHealth, 5000);
setInterval(tick, 1000);
tick();
