// dcpue live page: vanilla JS, no dependencies, charts as inline SVG.
// Polls the API every 2 s; updates the DOM in place so nothing flickers.
"use strict";

(function () {
  const API = "/api/v1";
  const POLL_MS = 2000;
  const AMBER_LIMIT = 1.5; // above this a PUE is shown red
  // how many windows each chart choice fetches (newest first from the API's point of view)
  const WINDOW_LIMITS = { "1m": 360, "1h": 168, "1d": 90 };
  const STATUS_LABEL = {
    ok: "ok",
    incomplete: "incomplete",
    meter_fault: "meter fault",
    no_data: "no data",
  };
  const SVGNS = "http://www.w3.org/2000/svg";

  const state = {
    target: 1.2,
    sites: [],
    selected: null,
    window: "1m",
    lastOk: null,
    inFlight: false,
  };

  const $ = (id) => document.getElementById(id);

  // ---------------------------------------------------------------- formatting

  const isNum = (v) => typeof v === "number" && Number.isFinite(v);
  const fmt = (v, digits) => (isNum(v) ? v.toFixed(digits) : "–");
  const fmtKw = (v) =>
    isNum(v) ? v.toLocaleString("en-US", { maximumFractionDigits: v >= 100 ? 0 : 1 }) : "–";
  const fmtPct = (v) => (isNum(v) ? (v * 100).toFixed(1) + " %" : "–");
  const fmtGap = (v) => (isNum(v) ? (v > 0 ? "+" : v < 0 ? "−" : "±") + Math.abs(v).toFixed(3) : "–");

  function pueClass(pue, target) {
    if (!isNum(pue)) return "na";
    if (pue <= target + 1e-9) return "good";
    if (pue <= AMBER_LIMIT) return "warn";
    return "bad";
  }

  function esc(s) {
    return String(s == null ? "" : s).replace(/[&<>"']/g, (c) => ({
      "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;",
    })[c]);
  }

  function badge(status) {
    return `<span class="badge ${esc(status)}">${esc(STATUS_LABEL[status] || status)}</span>`;
  }

  // a figure, or why there is none: a non-ok status is never shown as a number
  function figure(value, status, digits) {
    if (status && status !== "ok") return badge(status);
    return isNum(value) ? value.toFixed(digits) : badge("no_data");
  }

  function gradeText(grade) {
    if (!grade) return "–";
    if (grade === "beyond_limit") return "beyond limit (未达标)";
    return /^\d$/.test(grade) ? `Level ${grade} (${grade}级)` : grade;
  }

  // chart axes use the browser's own timezone
  function tzLabel() {
    return Intl.DateTimeFormat().resolvedOptions().timeZone || "local";
  }

  // the site calendar (status.timezone, e.g. Asia/Shanghai), not the browser's, names the clock
  function fmtClock(ms, timeZone) {
    const opts = { year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit",
                   hourCycle: "h23" };
    try {
      return new Intl.DateTimeFormat("sv-SE", { ...opts, timeZone: timeZone || undefined }).format(new Date(ms));
    } catch (e) {
      return new Intl.DateTimeFormat("sv-SE", opts).format(new Date(ms));
    }
  }

  // ---------------------------------------------------------------- API token

  // Where the API wants a token (docs/api.md#authentication), the page takes it from a link
  // (#token=…, removed from the address bar at once) or from the form it shows on a 401, keeps it in
  // this tab's sessionStorage (gone when the tab closes) and sends it as Authorization: Bearer.
  const TOKEN_KEY = "dcpue.token";
  let memoryToken = null; // where sessionStorage is unavailable

  function getToken() {
    try { return sessionStorage.getItem(TOKEN_KEY) || memoryToken; } catch (e) { return memoryToken; }
  }

  function setToken(token) {
    memoryToken = token;
    try { sessionStorage.setItem(TOKEN_KEY, token); } catch (e) { /* memory only */ }
  }

  function takeTokenFromHash() {
    const params = new URLSearchParams(location.hash.slice(1));
    if (!params.has("token")) return;
    const token = params.get("token");
    params.delete("token");
    if (token) setToken(token);
    const rest = params.toString();
    history.replaceState(null, "", location.pathname + location.search + (rest ? "#" + rest : ""));
  }

  class Unauthorized extends Error {}

  function showTokenForm(show) {
    $("token-form").hidden = !show;
  }

  // ---------------------------------------------------------------- data

  async function getJSON(path) {
    const token = getToken();
    const headers = token ? { Authorization: `Bearer ${token}` } : {};
    const res = await fetch(path, { cache: "no-store", headers });
    if (!res.ok) {
      let detail = res.statusText;
      try { detail = (await res.json()).detail || detail; } catch (e) { /* not JSON */ }
      const Err = res.status === 401 ? Unauthorized : Error;
      throw new Err(`${path}: HTTP ${res.status} ${detail}`);
    }
    return res.json();
  }

  async function refresh() {
    if (state.inFlight) return;
    state.inFlight = true;
    try {
      const [sites, fleet, status] = await Promise.all([
        getJSON(`${API}/sites`),
        getJSON(`${API}/fleet`),
        getJSON(`${API}/status`),
      ]);
      state.target = sites.target_pue;
      state.sites = sites.sites;
      if (!state.selected || !state.sites.some((s) => s.id === state.selected)) {
        const fromHash = decodeURIComponent((location.hash.match(/site=([^&]+)/) || [])[1] || "");
        state.selected = state.sites.some((s) => s.id === fromHash)
          ? fromHash : (state.sites[0] ? state.sites[0].id : null);
      }
      renderHeader(fleet, status);
      renderTable();
      if (state.selected) {
        const limit = WINDOW_LIMITS[state.window];
        const series = await getJSON(
          `${API}/sites/${encodeURIComponent(state.selected)}/windows?window=${state.window}&limit=${limit}`);
        if (series.site === state.selected && series.window === state.window) renderCharts(series.rows);
      }
      state.lastOk = new Date();
      showTokenForm(false);
      hideError();
    } catch (err) {
      showTokenForm(err instanceof Unauthorized);
      showError(err);
    } finally {
      state.inFlight = false;
    }
  }

  function showError(err) {
    const banner = $("error-banner");
    const since = state.lastOk ? ` Showing data from ${state.lastOk.toLocaleTimeString()}.` : "";
    const what = err instanceof Unauthorized
      ? (getToken() ? "API token not accepted" : "API token needed") + ": enter it below"
      : "API unreachable";
    banner.textContent = `${what} — ${err.message || err}.${since} Retrying every 2 s.`;
    banner.hidden = false;
  }

  function hideError() {
    $("error-banner").hidden = true;
    $("last-update").textContent = `updated ${state.lastOk.toLocaleTimeString()}`;
  }

  // ---------------------------------------------------------------- header

  function setKpi(el, value, cls) {
    el.textContent = value;
    el.className = "value" + (cls ? " " + cls : "") + (el.dataset.small ? " small" : "");
  }

  function renderHeader(fleet, status) {
    const target = state.target;
    $("target-pue").textContent = target.toFixed(2);
    document.querySelectorAll(".target-text").forEach((n) => { n.textContent = target.toFixed(2); });
    $("gap-header").textContent = `Gap to ${target.toFixed(2)}`;

    const live = fleet.fleet["1m"];
    const el = $("fleet-pue");
    if (live && live.status === "ok" && isNum(live.pue)) {
      setKpi(el, live.pue.toFixed(3), pueClass(live.pue, target));
      $("fleet-pue-note").textContent = `gap ${fmtGap(live.pue - target)} · coverage ${fmtPct(live.coverage)}`;
    } else {
      setKpi(el, live ? STATUS_LABEL[live.status] || live.status : "no data", "na");
      $("fleet-pue-note").textContent = "";
    }
    const day = fleet.fleet["1d"];
    const year = fleet.fleet["12mo"];
    const longText = (r) => (r && r.status === "ok" && isNum(r.pue) ? r.pue.toFixed(3) : (r ? STATUS_LABEL[r.status] : "–"));
    $("fleet-pue-long").textContent = `${longText(day)} · ${longText(year)}`;
    $("fleet-load").textContent = live && isNum(live.it_kw)
      ? `${fmtKw(live.it_kw)} · ${fmtKw(live.facility_kw)} kW` : "–";

    let clock = null;
    if (isNum(status.sim_time_ms)) clock = status.sim_time_ms;
    else if (typeof status.sim_time === "string") clock = Date.parse(status.sim_time);
    else {
      const ends = state.sites.map((s) => s.end_ms).filter(isNum);
      if (ends.length) clock = Math.max(...ends);
    }
    $("sim-clock").textContent = isNum(clock) ? fmtClock(clock, status.timezone) : "–";
    $("sim-clock-tz").textContent = status.timezone || Intl.DateTimeFormat().resolvedOptions().timeZone;

    const counts = {};
    state.sites.forEach((s) => { counts[s.status] = (counts[s.status] || 0) + 1; });
    $("site-total").textContent = state.sites.length;
    const parts = ["ok", "incomplete", "meter_fault", "no_data"]
      .filter((k) => counts[k])
      .map((k) => `<span class="count ${k}">${counts[k]} ${STATUS_LABEL[k]}</span>`);
    replaceHtml($("site-counts"), parts.join(" "));

    const chips = (fleet.clusters["1m"] || []).map((c) => {
      const v = c.status === "ok" && isNum(c.pue)
        ? `<b class="${pueClass(c.pue, target)}">${c.pue.toFixed(3)}</b>` : badge(c.status);
      return `<span class="chip">Cluster ${esc(c.id)} PUE ${v}</span>`;
    });
    replaceHtml($("clusters"), chips.join(""));

    const skip = new Set(["target_pue", "sim_time_ms", "sim_time", "timezone"]);
    const counters = Object.entries(status)
      .filter(([k, v]) => !skip.has(k) && !k.endsWith("_ms")
        && (isNum(v) || typeof v === "string" || typeof v === "boolean"))
      .slice(0, 12)
      .map(([k, v]) => `<span>${esc(k)} <b>${esc(isNum(v) ? v.toLocaleString("en-US") : v)}</b></span>`);
    replaceHtml($("counters"), counters.join(""));
  }

  function replaceHtml(el, html) {
    if (el.innerHTML !== html) el.innerHTML = html; // unchanged content is left alone: no reflow, no flicker
  }

  // ---------------------------------------------------------------- fleet table

  function rowHtml(s) {
    const t = s.target_pue || state.target;
    const cls = s.status === "ok" ? pueClass(s.pue, t) : "na";
    const cell = (html, klass) => `<td class="${klass || ""}">${html}</td>`;
    return [
      cell(esc(s.id), "site-id"),
      cell(esc(s.name)),
      cell(esc(s.city)),
      cell(esc(s.cluster || "–")),
      cell(esc(s.cooling)),
      cell(figure(s.pue, s.status, 3), `num pue ${cls}`),
      cell(s.status === "ok" && isNum(s.pue_gap) ? fmtGap(s.pue_gap) : "–", `num gap ${cls}`),
      cell(esc(gradeText(s.grade))),
      // a meter-fault window's IT figure cannot be true: no load shown for it
      cell(s.status === "meter_fault" ? badge("meter_fault") : fmtKw(s.it_kw), "num it-kw"),
      cell(fmtPct(s.occupancy), "num occupancy"),
      cell(fmtPct(s.it_utilization), "num utilization"),
      cell(figure(s.pue_1d, s.status_1d, 3), `num ${s.status_1d === "ok" ? pueClass(s.pue_1d, t) : ""}`),
      cell(figure(s.pue_12mo, s.status_12mo, 3), `num ${s.status_12mo === "ok" ? pueClass(s.pue_12mo, t) : ""}`),
    ].join("");
  }

  function renderTable() {
    const body = $("fleet-body");
    const existing = new Map();
    body.querySelectorAll("tr[data-site]").forEach((tr) => existing.set(tr.dataset.site, tr));
    const wanted = new Set(state.sites.map((s) => s.id));
    existing.forEach((tr, id) => { if (!wanted.has(id)) tr.remove(); });
    state.sites.forEach((s, i) => {
      let tr = existing.get(s.id);
      if (!tr) {
        tr = document.createElement("tr");
        tr.dataset.site = s.id;
        tr.addEventListener("click", () => select(s.id));
      }
      if (body.children[i] !== tr) body.insertBefore(tr, body.children[i] || null);
      replaceHtml(tr, rowHtml(s));
      tr.classList.toggle("selected", s.id === state.selected);
      tr.title = `status: ${STATUS_LABEL[s.status] || s.status}` +
        (isNum(s.coverage) ? ` · coverage ${fmtPct(s.coverage)}` : "");
    });
    const sel = state.sites.find((s) => s.id === state.selected);
    $("selected-site").textContent = sel ? sel.id : "–";
    $("selected-name").textContent = sel ? `${sel.name} · ${sel.city} · ${sel.cooling} cooling` : "";
  }

  function updateHash() {
    history.replaceState(null, "", `#site=${encodeURIComponent(state.selected)}&window=${state.window}`);
  }

  function select(id) {
    if (id === state.selected) return;
    state.selected = id;
    updateHash();
    renderTable();
    refresh();
  }

  // ---------------------------------------------------------------- charts

  // "nice" axis ticks covering [lo, hi]
  function ticks(lo, hi, count) {
    if (!(hi > lo)) { hi = lo + 1; }
    const raw = (hi - lo) / count;
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const norm = raw / mag;
    const step = (norm >= 5 ? 10 : norm >= 2 ? 5 : norm >= 1 ? 2 : 1) * mag;
    const out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(+v.toFixed(10));
    return { values: out, step };
  }

  function timeTicks(t0, t1, count) {
    const spans = [60e3, 5 * 60e3, 15 * 60e3, 30 * 60e3, 3600e3, 2 * 3600e3, 3 * 3600e3, 6 * 3600e3,
      12 * 3600e3, 86400e3, 2 * 86400e3, 7 * 86400e3, 14 * 86400e3, 30 * 86400e3];
    const step = spans.find((s) => (t1 - t0) / s <= count) || spans[spans.length - 1];
    const offset = new Date(t0).getTimezoneOffset() * 60e3; // align ticks to local midnight/hours
    const out = [];
    for (let t = Math.ceil((t0 - offset) / step) * step + offset; t <= t1; t += step) out.push(t);
    return { values: out, step };
  }

  function timeLabel(t, step) {
    const d = new Date(t);
    const p = (n) => String(n).padStart(2, "0");
    if (step >= 86400e3) return `${p(d.getMonth() + 1)}-${p(d.getDate())}`;
    if (d.getHours() === 0 && d.getMinutes() === 0) return `${p(d.getMonth() + 1)}-${p(d.getDate())}`;
    return `${p(d.getHours())}:${p(d.getMinutes())}`;
  }

  function frame(svg) {
    const w = Math.max(320, Math.round(svg.clientWidth || 640));
    const h = Math.max(200, Math.round(svg.clientHeight || 300));
    return { w, h, left: 58, right: 26, top: 14, bottom: 40 };
  }

  function axes(f, x0, x1, y0, y1, yTicks, yFmt, yTitle) {
    const sx = (t) => f.left + ((t - x0) / (x1 - x0 || 1)) * (f.w - f.left - f.right);
    const sy = (v) => f.h - f.bottom - ((v - y0) / (y1 - y0 || 1)) * (f.h - f.top - f.bottom);
    const parts = [];
    yTicks.forEach((v) => {
      const y = sy(v).toFixed(1);
      parts.push(`<line class="grid" x1="${f.left}" x2="${f.w - f.right}" y1="${y}" y2="${y}"/>`);
      parts.push(`<text x="${f.left - 6}" y="${y}" text-anchor="end" dominant-baseline="middle">${yFmt(v)}</text>`);
    });
    const tt = timeTicks(x0, x1, Math.max(3, Math.floor((f.w - f.left - f.right) / 90)));
    tt.values.forEach((t) => {
      const x = sx(t).toFixed(1);
      parts.push(`<line class="axis" x1="${x}" x2="${x}" y1="${f.h - f.bottom}" y2="${f.h - f.bottom + 4}"/>`);
      parts.push(`<text x="${x}" y="${f.h - f.bottom + 16}" text-anchor="middle">${timeLabel(t, tt.step)}</text>`);
    });
    parts.push(`<line class="axis" x1="${f.left}" x2="${f.left}" y1="${f.top}" y2="${f.h - f.bottom}"/>`);
    parts.push(`<line class="axis" x1="${f.left}" x2="${f.w - f.right}" y1="${f.h - f.bottom}" y2="${f.h - f.bottom}"/>`);
    parts.push(`<text x="14" y="${(f.top + f.h - f.bottom) / 2}" text-anchor="middle" ` +
      `transform="rotate(-90 14 ${(f.top + f.h - f.bottom) / 2})">${yTitle}</text>`);
    parts.push(`<text x="${(f.left + f.w - f.right) / 2}" y="${f.h - 4}" text-anchor="middle">time (${tzLabel()})</text>`);
    return { sx, sy, svg: parts.join("") };
  }

  function empty(svg, message) {
    const f = frame(svg);
    svg.setAttribute("viewBox", `0 0 ${f.w} ${f.h}`);
    replaceHtml(svg, `<text class="empty" x="${f.w / 2}" y="${f.h / 2}" text-anchor="middle">${esc(message)}</text>`);
  }

  // consecutive runs of usable points; a missing window or a time jump breaks the run (no zero-filling)
  function segments(rows, ok) {
    const segs = [];
    let cur = [];
    let prev = null;
    rows.forEach((r) => {
      const len = r.end_ms - r.start_ms;
      const jump = prev && r.start_ms - prev.end_ms > 0.5 * len;
      if (!ok(r) || jump) { if (cur.length) segs.push(cur); cur = []; }
      if (ok(r)) cur.push(r);
      prev = r;
    });
    if (cur.length) segs.push(cur);
    return segs;
  }

  function faultBands(rows, sx, f) {
    return rows.filter((r) => r.status !== "ok").map((r) => {
      const x = sx(r.start_ms);
      const w = Math.max(1, sx(r.end_ms) - x);
      const color = r.status === "meter_fault" ? "rgba(180,35,24,0.18)" : "rgba(180,35,24,0.09)";
      return `<rect x="${x.toFixed(1)}" y="${f.top}" width="${w.toFixed(1)}" height="${f.h - f.top - f.bottom}" ` +
        `fill="${color}"><title>${esc(STATUS_LABEL[r.status] || r.status)}</title></rect>`;
    }).join("");
  }

  const COMPONENTS = [
    ["it_kwh", "var(--it)", "IT"],
    ["cooling_kwh", "var(--cooling)", "Cooling"],
    ["losses_kwh", "var(--losses)", "Losses"],
    ["lighting_kwh", "var(--lighting)", "Lighting"],
  ];

  function renderPower(rows) {
    const svg = $("power-chart");
    const hours = (r) => (r.end_ms - r.start_ms) / 3600e3;
    const kw = (r, col) => (isNum(r[col]) ? r[col] / hours(r) : 0); // unmetered component: contributes nothing
    // only valid windows: an incomplete window's energy covers part of it and would read as a dip
    const ok = (r) => r.status === "ok" && isNum(r.it_kwh) && r.it_kwh > 0;
    const usable = rows.filter(ok);
    if (!usable.length) { empty(svg, "no power data for this window"); return; }
    const f = frame(svg);
    const x0 = rows[0].start_ms;
    const x1 = rows[rows.length - 1].end_ms;
    let top = 0;
    usable.forEach((r) => {
      const stack = COMPONENTS.reduce((s, [c]) => s + kw(r, c), 0);
      top = Math.max(top, stack, isNum(r.facility_kwh) ? r.facility_kwh / hours(r) : 0);
    });
    const yt = ticks(0, top * 1.08, 5);
    const yMax = yt.values[yt.values.length - 1] >= top ? yt.values[yt.values.length - 1] : top;
    const ax = axes(f, x0, x1, 0, yMax, yt.values, (v) => v.toLocaleString("en-US"), "power [kW]");
    const mid = (r) => (r.start_ms + r.end_ms) / 2;
    const parts = [faultBands(rows, ax.sx, f)];
    segments(rows, ok).forEach((seg) => {
      let base = seg.map(() => 0);
      COMPONENTS.forEach(([col, color, label]) => {
        const upper = seg.map((r, i) => base[i] + kw(r, col));
        const pts = seg.map((r, i) => `${ax.sx(mid(r)).toFixed(1)},${ax.sy(upper[i]).toFixed(1)}`);
        const back = seg.map((r, i) => `${ax.sx(mid(r)).toFixed(1)},${ax.sy(base[i]).toFixed(1)}`).reverse();
        const d = seg.length === 1
          ? `M${ax.sx(seg[0].start_ms).toFixed(1)},${ax.sy(upper[0]).toFixed(1)}H${ax.sx(seg[0].end_ms).toFixed(1)}` +
            `V${ax.sy(base[0]).toFixed(1)}H${ax.sx(seg[0].start_ms).toFixed(1)}Z`
          : `M${pts.join("L")}L${back.join("L")}Z`;
        parts.push(`<path class="area ${col}" d="${d}" fill="${color}" fill-opacity="0.85"><title>${label}</title></path>`);
        base = upper;
      });
      const fac = seg.filter((r) => isNum(r.facility_kwh));
      if (fac.length > 1) {
        const d = "M" + fac.map((r) => `${ax.sx(mid(r)).toFixed(1)},${ax.sy(r.facility_kwh / hours(r)).toFixed(1)}`).join("L");
        parts.push(`<path class="facility-line" d="${d}" fill="none" stroke="var(--ink)" stroke-width="1.2"/>`);
      }
    });
    svg.setAttribute("viewBox", `0 0 ${f.w} ${f.h}`);
    replaceHtml(svg, ax.svg + parts.join(""));
  }

  function renderPue(rows) {
    const svg = $("pue-chart");
    const target = (state.sites.find((s) => s.id === state.selected) || {}).target_pue || state.target;
    const ok = (r) => r.status === "ok" && isNum(r.pue);
    const good = rows.filter(ok);
    if (!rows.length) { empty(svg, "no windows yet for this site"); return; }
    const f = frame(svg);
    const x0 = rows[0].start_ms;
    const x1 = rows[rows.length - 1].end_ms;
    const values = good.map((r) => r.pue).concat([target]);
    let lo = Math.min(...values);
    let hi = Math.max(...values);
    const pad = Math.max(0.02, (hi - lo) * 0.15);
    lo = Math.max(1.0, lo - pad);
    hi = hi + pad;
    const yt = ticks(lo, hi, 5);
    const ax = axes(f, x0, x1, lo, hi, yt.values.filter((v) => v >= lo && v <= hi),
      (v) => v.toFixed(yt.step < 0.01 ? 3 : 2), "PUE [–]");
    const mid = (r) => (r.start_ms + r.end_ms) / 2;
    const parts = [faultBands(rows, ax.sx, f)];
    const ty = ax.sy(target).toFixed(1);
    parts.push(`<line class="target-line" x1="${f.left}" x2="${f.w - f.right}" y1="${ty}" y2="${ty}" ` +
      `stroke="var(--bad)" stroke-width="1.5" stroke-dasharray="6 4"/>`);
    parts.push(`<text x="${f.w - f.right - 4}" y="${(+ty - 5).toFixed(1)}" text-anchor="end" ` +
      `style="fill: var(--bad)">target ${target.toFixed(2)}</text>`);
    segments(rows, ok).forEach((seg) => {
      if (seg.length === 1) {
        parts.push(`<circle cx="${ax.sx(mid(seg[0])).toFixed(1)}" cy="${ax.sy(seg[0].pue).toFixed(1)}" r="2.5" fill="var(--accent)"/>`);
        return;
      }
      const d = "M" + seg.map((r) => `${ax.sx(mid(r)).toFixed(1)},${ax.sy(r.pue).toFixed(1)}`).join("L");
      parts.push(`<path class="pue-line" d="${d}" fill="none" stroke="var(--accent)" stroke-width="1.8"/>`);
    });
    if (!good.length) {
      parts.push(`<text class="empty" x="${f.w / 2}" y="${f.h / 2}" text-anchor="middle">no valid PUE in this range</text>`);
    }
    svg.setAttribute("viewBox", `0 0 ${f.w} ${f.h}`);
    replaceHtml(svg, ax.svg + parts.join(""));
    const bad = rows.length - good.length;
    $("pue-caption").textContent = `${good.length} valid windows` + (bad ? `, ${bad} without a figure` : "");
  }

  function renderCharts(rows) {
    if (!rows.length) {
      empty($("power-chart"), "no windows yet for this site");
      empty($("pue-chart"), "no windows yet for this site");
      $("pue-caption").textContent = "";
      return;
    }
    renderPower(rows);
    renderPue(rows);
  }

  // ---------------------------------------------------------------- wiring

  takeTokenFromHash();
  $("token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const token = $("token-input").value.trim();
    if (!token) return;
    setToken(token);
    $("token-input").value = "";
    refresh();
  });

  // links like #site=gy-a&window=1h open that site and window
  const hashWindow = (location.hash.match(/window=([^&]+)/) || [])[1];
  if (hashWindow && WINDOW_LIMITS[hashWindow]) state.window = hashWindow;
  document.querySelectorAll(".window-picker button").forEach((o) => {
    o.classList.toggle("active", o.dataset.window === state.window);
  });

  document.querySelectorAll(".window-picker button").forEach((b) => {
    b.addEventListener("click", () => {
      state.window = b.dataset.window;
      document.querySelectorAll(".window-picker button").forEach((o) => o.classList.toggle("active", o === b));
      if (state.selected) updateHash();
      refresh();
    });
  });

  function loop() {
    refresh().finally(() => setTimeout(loop, POLL_MS));
  }
  loop();
})();
