// Parcel lookup: every record of a waybill with the full decision explanation, or the
// records of a time range. Parameters come from the page's own address, so a lookup can be
// bookmarked or linked from the board.
"use strict";

// Fields shown in the decision summary; every other field is listed generically below it.
const SHOWN = new Set(["kind", "schema", "msg_id", "seq", "prev_hash", "gateway", "line", "parcel",
  "waybill", "lane", "lane_role", "rule", "reason", "rule_set", "revision", "divert", "rules_fired",
  "inputs", "scanned_at_ms", "decided_at_ms", "deadline_ms", "read", "instruction_id"]);

function facts(pairs) {
  const dl = el("dl");
  for (const [k, v] of pairs) {
    if (v === undefined) continue;
    dl.append(el("dt", {}, k), el("dd", {}, v instanceof Node ? v : renderValue(v)));
  }
  return dl;
}

function parcelCard(v) {
  const r = v.record;
  const d = r.divert || {};
  const card = el("article", { class: "card record", "data-seq": v.seq });
  card.append(el("h3", {}, r.revision > 0 ? t("lookup.redecision", { revision: r.revision, seq: v.seq }) : t("lookup.decision", { seq: v.seq })));
  card.append(facts([
    [t("lookup.scanned"), fmtDateTime(r.scanned_at_ms)],
    [t("lookup.line_parcel"), r.line + " / " + r.parcel],
    [t("lookup.lane"), el("span", {}, t("common.lane", { lane: r.lane }) + " ", roleBadge(r.lane_role))],
    [t("lookup.deciding_rule"), r.rule],
    [t("lookup.reason"), el("span", { class: "reason-text", title: r.reason }, reasonOf(r, r.rule, r.reason))],
    [t("board.rule_set"), r.rule_set || "—"],
    [t("lookup.instruction"), r.instruction_id || undefined],
    [t("lookup.decided"), fmtDateTime(r.decided_at_ms)],
    [t("lookup.deadline"), r.deadline_ms ? fmtDateTime(r.deadline_ms) : undefined],
    [t("lookup.divert"), tv("divert", d.status) + (d.late ? " (" + t("lookup.late") + ")" : "") + (d.detail ? " — " + d.detail : "")],
    ["Forwarding", el("span", { class: "fwd" }, fwdText(v.forwarding))],
  ]));
  card.append(el("h4", {}, t("lookup.rules_fired")), renderValue(r.rules_fired || []));
  if (r.inputs !== undefined) card.append(el("h4", {}, t("lookup.inputs")), renderValue(r.inputs));
  const other = Object.fromEntries(Object.entries(r).filter(([k]) => !SHOWN.has(k)));
  if (Object.keys(other).length) card.append(el("h4", {}, t("lookup.other")), renderValue(other));
  return card;
}

function otherCard(v) {
  const r = v.record;
  const title = v.kind === "disposition"
    ? t("lookup.kind.disposition", { disposition: tv("disposition", r.disposition) })
    : v.kind === "alert" ? t("lookup.kind.alert", { alert: tv("alert", r.alert) })
      : v.kind === "report" ? t("lookup.kind.report", { month: (r.report && r.report.month) || "" })
        : v.kind === "xray" ? t("lookup.kind.xray", { result: r.result ? tv("xray", r.result) : t("lookup.no_verdict"), join: tv("xray_join", r.join) })
          : v.kind === "image" ? "X-ray image, " + r.view + " view" + (r.error ? " — ⚠ " + r.error : "")
            : v.kind === "snapshot" ? "📷 Camera " + r.camera + " at " + (r.point === "lane" ? "lane " + r.lane : "the scanner") + (r.error ? " — ✗ " + r.error : "") : v.kind;
  const card = el("article", { class: "card record", "data-seq": v.seq, "data-kind": v.kind });
  card.append(el("h3", {}, title + " · record " + v.seq));
  if (v.kind === "image" && r.thumbnail_jpeg_b64) {
    card.append(el("a", { href: "/api/evidence/" + encodeURIComponent(r.sha256), target: "_blank", rel: "noopener" }, el("img", { class: "thumb-large", alt: "X-ray " + r.view + " view of scan " + r.scan_id, src: "data:image/jpeg;base64," + r.thumbnail_jpeg_b64 })));
  }
  if (v.kind === "snapshot" && r.thumbnail_jpeg_b64) {
    const img = el("img", { class: "thumb-large", alt: "Camera " + r.camera + " snapshot of parcel " + r.parcel, src: "data:image/jpeg;base64," + r.thumbnail_jpeg_b64 });
    card.append(r.sha256 ? el("a", { href: "/api/evidence/" + encodeURIComponent(r.sha256), target: "_blank", rel: "noopener" }, img) : img);
  }
  const rest = Object.fromEntries(Object.entries(r).filter(([k]) => !["schema", "msg_id", "prev_hash", "gateway", "kind", "at_ms", "thumbnail_jpeg_b64"].includes(k)));
  card.append(facts([["Time", fmtDateTime(r.at_ms)], ["Forwarding", el("span", { class: "fwd" }, fwdText(v.forwarding))]]));
  card.append(renderValue(rest));
  return card;
}

async function byWaybill(waybill) {
  const out = document.getElementById("result");
  out.replaceChildren(el("p", { class: "muted" }, t("lookup.looking", { waybill })));
  const res = await fetchJson("/api/parcels/" + encodeURIComponent(waybill));
  if (res.records.length === 0) {
    out.replaceChildren(el("p", { class: "error" }, t("lookup.missing", { waybill: res.waybill })));
    return;
  }
  const decisions = res.records.filter((v) => v.kind === "parcel");
  const last = decisions[decisions.length - 1];
  const parts = [el("h2", {}, t("lookup.waybill_heading", { waybill: res.waybill }))];
  if (last) {
    const r = last.record;
    parts.push(el("p", { class: "card summary" }, t("lookup.summary", { lane: r.lane, rule: r.rule }) + " ", roleBadge(r.lane_role), " ", el("span", { class: "reason-text" }, reasonOf(r, r.rule, r.reason))));
  }
  for (const v of res.records) parts.push(v.kind === "parcel" ? parcelCard(v) : otherCard(v));
  out.replaceChildren(...parts);
}

function summaryOf(r) {
  if (r.kind === "parcel") return [el("span", {}, t("common.lane", { lane: r.lane }) + " ", roleBadge(r.lane_role)), r.rule, r.reason];
  if (r.kind === "disposition") return [t("common.lane", { lane: r.lane }), tv("disposition", r.disposition), r.commanded_lane ? "commanded lane " + r.commanded_lane : ""];
  if (r.kind === "alert") return ["—", tv("alert", r.alert), r.detail];
  if (r.kind === "xray") return ["—", "X-ray " + (r.result || "no verdict"), String(r.join).replace(/_/g, " ") + (r.scan_id !== null ? " · scan " + r.scan_id : "")];
  if (r.kind === "image") return ["—", "X-ray image " + r.view, r.error || r.sha256];
  if (r.kind === "snapshot") return [r.lane ? t("common.lane", { lane: r.lane }) : "—", "Camera " + r.camera, r.error || r.sha256];
  return ["—", r.kind, r.report && r.report.month ? "monthly report " + r.report.month : ""];
}

async function byTime(from, to, limit) {
  const out = document.getElementById("result");
  const q = new URLSearchParams();
  if (from !== null) q.set("from", from);
  if (to !== null) q.set("to", to);
  if (limit) q.set("limit", limit);
  out.replaceChildren(el("p", { class: "muted" }, t("common.loading")));
  const res = await fetchJson("/api/records?" + q.toString());
  const head = el("tr", {}, ...["lookup.col.time", "lookup.col.record", "lookup.col.kind", "lookup.col.line", "lookup.waybill", "lookup.lane", "lookup.col.rule", "lookup.col.reason", "lookup.forwarding"].map((h) => el("th", {}, t(h))));
  // Filters of the address: a record of another line, a decision of another lane role or
  // rule, or a waybill without the prefix is left out.
  const p = new URLSearchParams(location.search);
  const f = { line: p.get("line") || "", role: p.get("role") || "", rule: p.get("rule") || "", prefix: p.get("prefix") || "" };
  const shown = res.records.filter((v) => {
    const r = v.record;
    if (f.line && r.line !== f.line) return false;
    if (f.prefix && !(r.waybill || "").startsWith(f.prefix)) return false;
    if ((f.role || f.rule) && v.kind !== "parcel") return false;
    if (f.role && r.lane_role !== f.role) return false;
    if (f.rule && r.rule !== f.rule) return false;
    return true;
  });
  const rows = shown.map((v) => {
    const r = v.record;
    const w = r.waybill ? el("a", { href: "/parcel?waybill=" + encodeURIComponent(r.waybill) }, r.waybill) : "—";
    const [lane, rule, reason] = summaryOf(r);
    return el("tr", {}, el("td", {}, fmtDateTime(r.scanned_at_ms || r.at_ms)), el("td", {}, v.seq), el("td", {}, v.kind),
      el("td", {}, r.line), el("td", {}, w), el("td", {}, lane), el("td", {}, rule), el("td", { class: "reason" }, reason),
      el("td", {}, fwdText(v.forwarding)));
  });
  out.replaceChildren(
    el("h2", {}, t("lookup.range", { count: fmtNumber(shown.length), from: fmtDateTime(res.from_ms), to: fmtDateTime(res.to_ms) })),
    res.truncated ? el("p", { class: "error" }, t("lookup.truncated")) : "",
    el("table", {}, el("thead", {}, head), el("tbody", {}, ...rows)));
}

async function main() {
  await loadRules();
  const p = new URLSearchParams(location.search);
  const now = Date.now();
  document.getElementById("from").value = zoneInput(zoneMs(p.get("from")) || now - 3600000);
  document.getElementById("to").value = zoneInput(zoneMs(p.get("to")) || now);
  if (p.get("limit")) document.getElementById("limit").value = p.get("limit");
  for (const k of ["line", "role", "rule", "prefix"]) document.getElementById("f-" + k).value = p.get(k) || "";
  try {
    if (p.get("waybill")) {
      document.getElementById("waybill").value = p.get("waybill");
      await byWaybill(p.get("waybill").trim());
    } else if (p.get("from") || p.get("to")) {
      await byTime(zoneMs(p.get("from")), zoneMs(p.get("to")), p.get("limit"));
    }
  } catch (e) {
    document.getElementById("result").replaceChildren(el("p", { class: "error" }, t("lookup.failed", { message: e.message })));
  }
}

main();
