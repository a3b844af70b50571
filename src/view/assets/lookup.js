// Parcel lookup: every record of a waybill with the full decision explanation, or the
// records of a time range. Parameters come from the page's own address, so a lookup can be
// bookmarked or linked from the board.
"use strict";

// Fields shown in the decision summary; every other field is listed generically below it.
const SHOWN = new Set(["kind", "schema", "msg_id", "seq", "prev_hash", "gateway", "line", "parcel",
  "waybill", "lane", "lane_role", "rule", "reason", "rule_set", "revision", "divert", "rules_fired",
  "inputs", "scanned_at_ms", "decided_at_ms", "deadline_ms", "read", "instruction_id"]);

function toMs(v) {
  if (!v) return null;
  if (/^\d+$/.test(v)) return Number(v);
  const t = new Date(v).getTime();
  return Number.isNaN(t) ? null : t;
}

function localInput(ms) {
  const d = new Date(ms);
  return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + "T" + fmtTime(ms);
}

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
  card.append(el("h3", {}, (r.revision > 0 ? "Re-decision #" + r.revision : "Decision") + " · record " + v.seq));
  card.append(facts([
    ["Scanned", fmtDateTime(r.scanned_at_ms)],
    ["Line / parcel", r.line + " / " + r.parcel],
    ["Lane", el("span", {}, "Lane " + r.lane + " ", roleBadge(r.lane_role))],
    ["Deciding rule", r.rule],
    ["Reason", el("span", { class: "reason-text" }, r.reason)],
    ["Rule set", r.rule_set || "—"],
    ["Instruction", r.instruction_id || undefined],
    ["Decided", fmtDateTime(r.decided_at_ms)],
    ["Divert deadline", r.deadline_ms ? fmtDateTime(r.deadline_ms) : undefined],
    ["Divert outcome", String(d.status || "—").replace(/_/g, " ") + (d.late ? " (after the deadline)" : "") + (d.detail ? " — " + d.detail : "")],
    ["Forwarding", el("span", { class: "fwd" }, fwdText(v.forwarding))],
  ]));
  card.append(el("h4", {}, "Rules that fired (deciding rule first)"), renderValue(r.rules_fired || []));
  if (r.inputs !== undefined) card.append(el("h4", {}, "What the decision saw"), renderValue(r.inputs));
  const other = Object.fromEntries(Object.entries(r).filter(([k]) => !SHOWN.has(k)));
  if (Object.keys(other).length) card.append(el("h4", {}, "Other fields"), renderValue(other));
  return card;
}

function otherCard(v) {
  const r = v.record;
  const title = v.kind === "disposition"
    ? "PLC disposition: " + String(r.disposition).replace(/_/g, " ")
    : v.kind === "alert" ? "⚠ Alert: " + String(r.alert).replace(/_/g, " ")
      : v.kind === "report" ? "Monthly report " + ((r.report && r.report.month) || "")
        : v.kind === "xray" ? "X-ray verdict: " + (r.result ? String(r.result).replace(/_/g, " ") : "none in time") + " (" + String(r.join).replace(/_/g, " ") + ")"
          : v.kind === "image" ? "X-ray image, " + r.view + " view" + (r.error ? " — ⚠ " + r.error : "")
            : v.kind === "snapshot" ? "📷 Camera " + r.camera + " at " + (r.point === "lane" ? "lane " + r.lane : "the scanner") + (r.error ? " — ✗ " + r.error : "") : v.kind;
  const card = el("article", { class: "card record", "data-seq": v.seq, "data-kind": v.kind });
  card.append(el("h3", {}, title + " · record " + v.seq));
  if (v.kind === "image" && r.thumbnail_jpeg_b64) {
    card.append(el("img", { class: "thumb-large", alt: "X-ray " + r.view + " view of scan " + r.scan_id, src: "data:image/jpeg;base64," + r.thumbnail_jpeg_b64 }));
  }
  if (v.kind === "snapshot" && r.thumbnail_jpeg_b64) {
    card.append(el("img", { class: "thumb-large", alt: "Camera " + r.camera + " snapshot of parcel " + r.parcel, src: "data:image/jpeg;base64," + r.thumbnail_jpeg_b64 }));
  }
  const rest = Object.fromEntries(Object.entries(r).filter(([k]) => !["schema", "msg_id", "prev_hash", "gateway", "kind", "at_ms", "thumbnail_jpeg_b64"].includes(k)));
  card.append(facts([["Time", fmtDateTime(r.at_ms)], ["Forwarding", el("span", { class: "fwd" }, fwdText(v.forwarding))]]));
  card.append(renderValue(rest));
  return card;
}

async function byWaybill(waybill) {
  const out = document.getElementById("result");
  out.replaceChildren(el("p", { class: "muted" }, "Looking up " + waybill + "…"));
  const res = await fetchJson("/api/parcels/" + encodeURIComponent(waybill));
  if (res.records.length === 0) {
    out.replaceChildren(el("p", { class: "error" }, "No record of waybill " + res.waybill + " in this gateway's journal (records are kept for the configured retention after they were forwarded)."));
    return;
  }
  const decisions = res.records.filter((v) => v.kind === "parcel");
  const last = decisions[decisions.length - 1];
  const parts = [el("h2", {}, "Waybill " + res.waybill)];
  if (last) {
    const r = last.record;
    parts.push(el("p", { class: "card summary" }, "Sent to lane " + r.lane + " ", roleBadge(r.lane_role),
      " by rule ", el("b", {}, r.rule), ": ", el("span", { class: "reason-text" }, r.reason)));
  }
  for (const v of res.records) parts.push(v.kind === "parcel" ? parcelCard(v) : otherCard(v));
  out.replaceChildren(...parts);
}

function summaryOf(r) {
  if (r.kind === "parcel") return [el("span", {}, "Lane " + r.lane + " ", roleBadge(r.lane_role)), r.rule, r.reason];
  if (r.kind === "disposition") return ["Lane " + r.lane, String(r.disposition).replace(/_/g, " "), r.commanded_lane ? "commanded lane " + r.commanded_lane : ""];
  if (r.kind === "alert") return ["—", String(r.alert).replace(/_/g, " "), r.detail];
  if (r.kind === "xray") return ["—", "X-ray " + (r.result || "no verdict"), String(r.join).replace(/_/g, " ") + (r.scan_id !== null ? " · scan " + r.scan_id : "")];
  if (r.kind === "image") return ["—", "X-ray image " + r.view, r.error || r.sha256];
  if (r.kind === "snapshot") return [r.lane ? "Lane " + r.lane : "—", "Camera " + r.camera, r.error || r.sha256];
  return ["—", r.kind, r.report && r.report.month ? "monthly report " + r.report.month : ""];
}

async function byTime(from, to, limit) {
  const out = document.getElementById("result");
  const q = new URLSearchParams();
  if (from !== null) q.set("from", from);
  if (to !== null) q.set("to", to);
  if (limit) q.set("limit", limit);
  out.replaceChildren(el("p", { class: "muted" }, "Loading…"));
  const res = await fetchJson("/api/records?" + q.toString());
  const head = el("tr", {}, ...["Time", "Record", "Kind", "Line", "Waybill", "Lane", "Rule / event", "Reason / detail", "Forwarding"].map((h) => el("th", {}, h)));
  const rows = res.records.map((v) => {
    const r = v.record;
    const w = r.waybill ? el("a", { href: "/parcel?waybill=" + encodeURIComponent(r.waybill) }, r.waybill) : "—";
    const [lane, rule, reason] = summaryOf(r);
    return el("tr", {}, el("td", {}, fmtDateTime(r.scanned_at_ms || r.at_ms)), el("td", {}, v.seq), el("td", {}, v.kind),
      el("td", {}, r.line), el("td", {}, w), el("td", {}, lane), el("td", {}, rule), el("td", { class: "reason" }, reason),
      el("td", {}, fwdText(v.forwarding)));
  });
  out.replaceChildren(
    el("h2", {}, res.records.length + " record(s) from " + fmtDateTime(res.from_ms) + " to " + fmtDateTime(res.to_ms) + ", newest first"),
    res.truncated ? el("p", { class: "error" }, "More records match: narrow the range or raise the limit.") : "",
    el("table", {}, el("thead", {}, head), el("tbody", {}, ...rows)));
}

async function main() {
  const p = new URLSearchParams(location.search);
  const now = Date.now();
  document.getElementById("from").value = localInput(toMs(p.get("from")) || now - 3600000);
  document.getElementById("to").value = localInput(toMs(p.get("to")) || now);
  if (p.get("limit")) document.getElementById("limit").value = p.get("limit");
  try {
    if (p.get("waybill")) {
      document.getElementById("waybill").value = p.get("waybill");
      await byWaybill(p.get("waybill").trim());
    } else if (p.get("from") || p.get("to")) {
      await byTime(toMs(p.get("from")), toMs(p.get("to")), p.get("limit"));
    }
  } catch (e) {
    document.getElementById("result").replaceChildren(el("p", { class: "error" }, "Lookup failed: " + e.message));
  }
}

main();
