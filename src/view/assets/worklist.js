// The inspection worklist: parcels sent to inspection or hold in a time range (the shift
// running now from /api/shift, and at least the last hour, unless the address says otherwise;
// the last 12 hours if the shift cannot be read), newest first, read from the journal a page
// at a time by /api/worklist ("older parcels" loads the next), each with everything an
// officer needs at the inspection lane. The filters live in the address, so a link reproduces the
// view. Printed, every parcel is one A4 inspection slip with its waybill as a barcode.
"use strict";

const PAGE_SIZE = 20;
const DEFAULT_RANGE_MS = 12 * 3600 * 1000;

// The filters of the address; the form shows them.
function filters() {
  const p = new URLSearchParams(location.search);
  const now = Date.now();
  const f = {
    line: (p.get("line") || "").trim(),
    role: p.get("role") || "",
    rule: (p.get("rule") || "").trim(),
    enterprise: (p.get("enterprise") || "").trim(),
    waybill: (p.get("waybill") || "").trim(),
    to: zoneMs(p.get("to")) || now,
  };
  const from = zoneMs(p.get("from"));
  f.from = from === null ? f.to - DEFAULT_RANGE_MS : from;
  for (const k of ["line", "role", "rule", "enterprise", "waybill"]) document.getElementById("f-" + k).value = f[k];
  document.getElementById("f-from").value = zoneInput(f.from);
  document.getElementById("f-to").value = zoneInput(f.to);
  return f;
}

function imgThumb(b64, alt, href) {
  return el("a", { href }, el("img", { class: "thumb", alt, src: "data:image/jpeg;base64," + b64 }));
}

// The kept original of an image or snapshot, by its hash (GET /api/evidence/{sha256}).
function fullImage(sha) {
  return sha ? "/api/evidence/" + encodeURIComponent(sha) : null;
}

// A thumbnail that opens the full image, captioned, with the full image also as a text link
// (printed slips keep the caption).
function evidenceFigure(attrs, b64, alt, sha, fallback) {
  const full = fullImage(sha);
  const caption = el("figcaption", {}, alt);
  if (full) caption.append(" · ", el("a", { href: full, class: "full-image", target: "_blank", rel: "noopener" }, t("worklist.full_image")));
  return el("figure", attrs, imgThumb(b64, alt, full || fallback), caption);
}

// One parcel: the slip an officer takes to the lane.
function slip(v, all) {
  const r = v.record;
  const lookup = "/parcel?waybill=" + encodeURIComponent(r.waybill);
  const others = all.filter((x) => x.kind !== "parcel").map((x) => ({ kind: x.kind, r: x.record }));
  const card = el("article", { class: "card slip", "data-waybill": r.waybill, tabindex: "0" });
  card.append(el("h2", {}, t("slip.title") + " · ", el("a", { href: lookup }, r.waybill)));
  card.append(el("img", { class: "barcode", alt: r.waybill, src: "/api/barcode.svg?text=" + encodeURIComponent(r.waybill) }));
  card.append(facts([
    [t("lookup.scanned"), fmtDateTime(r.scanned_at_ms)],
    [t("lookup.line_parcel"), r.line + " / " + r.parcel],
    [t("lookup.lane"), el("span", {}, t("common.lane", { lane: r.lane }) + " ", roleBadge(r.lane_role))],
    [t("lookup.deciding_rule"), r.rule],
    [t("lookup.reason"), el("span", { class: "reason-text", title: r.reason }, reasonOf(r, r.rule, r.reason))],
    [t("lookup.divert"), tv("divert", r.divert && r.divert.status)],
  ]));
  card.append(el("h3", {}, t("worklist.fired")));
  const fired = el("ul");
  for (const x of r.rules_fired || []) fired.append(el("li", {}, el("b", {}, x.rule), " → ", roleBadge(x.target), " ", reasonOf(r, x.rule, x.reason)));
  card.append(fired);
  if (r.inputs) card.append(el("h3", {}, t("lookup.inputs")), renderValue(r.inputs));
  // X-ray: the verdicts and the image thumbnails, each a link to the parcel's full records.
  card.append(el("h3", {}, t("worklist.xray")));
  const xrays = others.filter((x) => x.kind === "xray");
  const images = others.filter((x) => x.kind === "image");
  const xbox = el("div", { class: "thumbs", "data-xray": xrays.length ? (xrays[xrays.length - 1].r.result || "none") : "none" });
  if (xrays.length === 0 && images.length === 0) xbox.append(el("span", { class: "muted" }, t("worklist.no_xray")));
  for (const x of xrays) xbox.append(el("div", {}, t("lookup.kind.xray", { result: x.r.result ? tv("xray", x.r.result) : t("lookup.no_verdict"), join: tv("xray_join", x.r.join) })));
  for (const i of images) {
    if (i.r.thumbnail_jpeg_b64) xbox.append(evidenceFigure({ "data-image": i.r.view }, i.r.thumbnail_jpeg_b64, t("lookup.kind.image", { view: i.r.view }), i.r.sha256, lookup));
    else xbox.append(el("span", { class: "err" }, i.r.view + ": " + (i.r.error || "—")));
  }
  card.append(xbox);
  card.append(el("h3", {}, t("worklist.snapshots")));
  const snaps = others.filter((x) => x.kind === "snapshot");
  const sbox = el("div", { class: "thumbs snapshots" });
  if (snaps.length === 0) sbox.append(el("span", { class: "muted" }, t("worklist.no_snapshot")));
  for (const s of snaps) {
    const where = s.r.point === "lane" ? t("lookup.kind.snapshot_lane", { camera: s.r.camera, lane: s.r.lane }) : t("lookup.kind.snapshot_scan", { camera: s.r.camera });
    if (s.r.thumbnail_jpeg_b64) sbox.append(evidenceFigure({ "data-snapshot": s.r.point }, s.r.thumbnail_jpeg_b64, where, s.r.sha256, lookup));
    else sbox.append(el("span", { class: "err", "data-snapshot": "none" }, where + ": " + (s.r.error || "—")));
  }
  card.append(sbox);
  const alerts = others.filter((x) => x.kind === "alert");
  if (alerts.length) {
    card.append(el("h3", {}, t("worklist.anomalies")));
    card.append(el("ul", {}, ...alerts.map((a) => el("li", {}, "⚠ " + tv("alert", a.r.alert) + " — " + a.r.detail))));
  }
  card.append(el("dl", { class: "print-only sign" }, el("dt", {}, t("slip.officer")), el("dd", {}, ""), el("dt", {}, t("slip.result")), el("dd", {}, ""), el("dt", {}, t("slip.signature")), el("dd", {}, "")));
  card.append(el("p", { class: "no-print" }, el("a", { href: lookup }, t("worklist.details"))));
  return card;
}

function facts(pairs) {
  const dl = el("dl");
  for (const [k, v] of pairs) dl.append(el("dt", {}, k), el("dd", {}, v instanceof Node ? v : renderValue(v)));
  return dl;
}

// The query of /api/worklist for the filters (without the cursor).
function apiQuery(f) {
  const p = new URLSearchParams();
  for (const k of ["line", "role", "rule", "enterprise", "waybill"]) if (f[k]) p.set(k, f[k]);
  p.set("from", f.from);
  p.set("to", f.to);
  p.set("limit", PAGE_SIZE);
  return p;
}

// Fetches slips from the cursor until a page's worth arrived or the range is exhausted (a
// page of the API may stop early after reading its share of the journal).
async function fetchSlips(f, before) {
  const items = [];
  let next = before;
  for (let round = 0; round < 50; round++) {
    const p = apiQuery(f);
    if (next) p.set("before", next);
    const res = await fetchJson("/api/worklist?" + p.toString());
    items.push(...res.items);
    next = res.next;
    if (!next || items.length >= PAGE_SIZE) break;
  }
  return { items, next };
}

async function main() {
  const out = document.getElementById("result");
  document.getElementById("print").addEventListener("click", () => window.print());
  const f = filters();
  if (!new URLSearchParams(location.search).get("from")) {
    try {
      const shift = await fetchJson("/api/shift");
      // at least the last hour, so parcels from just before a shift change stay in view
      f.from = Math.min(shift.from_ms, f.to - 3600 * 1000);
      document.getElementById("f-from").value = zoneInput(f.from);
    } catch (e) {
      // keep the last 12 hours
    }
  }
  await loadRules();
  const heading = el("h2", { class: "no-print", id: "worklist-count" });
  const list = el("div", { id: "slips" });
  const more = el("button", { type: "button", class: "no-print", id: "more", hidden: "" }, t("worklist.more"));
  let shown = 0;
  let cursor = null;
  // While older pages remain, the count is of those shown so far, and says so.
  const count = () => heading.replaceChildren(t(cursor ? "worklist.shown" : "worklist.range", { count: fmtNumber(shown), from: fmtDateTime(f.from), to: fmtDateTime(f.to) }));
  async function load() {
    more.disabled = true;
    try {
      const res = await fetchSlips(f, cursor);
      for (const item of res.items) list.append(slip({ record: item.record }, item.related));
      shown += res.items.length;
      cursor = res.next;
      count();
      if (shown === 0 && !cursor) list.replaceChildren(el("p", { class: "muted" }, t("worklist.empty")));
      if (cursor) more.removeAttribute("hidden"); else more.setAttribute("hidden", "");
    } catch (e) {
      list.append(el("p", { class: "error" }, t("common.error", { message: e.message })));
    }
    more.disabled = false;
  }
  more.addEventListener("click", load);
  count();
  out.replaceChildren(heading, list, el("nav", { class: "pager no-print" }, more));
  await load();
}

main();
