/* openbess live dashboard: plain JavaScript, SVG and canvas; no external assets.
 *
 * Data: REST under /api/v1 and server-sent events from /api/v1/stream ("snapshot" for the
 * overview, "cells" for the heat map, throttled by the server for big packs, "event" for
 * alarms, resets and drills). Rendering is coalesced to one animation frame, so a burst of
 * messages costs one redraw. Handling times are kept in window.obStats (read by the tests).
 */
"use strict";

(() => {
  const API = "/api/v1";
  const $ = (id) => document.getElementById(id);
  const state = {
    tz: "UTC",
    overview: null,
    cells: null,
    plan: null,
    planCreated: undefined,
    lastPlanActual: -Infinity,
    histRange: 21600,
    histCustom: null,
    lastHist: -Infinity,
    lastChart: -Infinity,
    writesEnabled: false,
    database: true,
    pending: { overview: false, cells: false },
  };
  /* Handling time per update (JSON parse + render; renders are coalesced per frame), and for
   * the heat map also the latency from the message's arrival to the end of its redraw. */
  const stats = {
    n: 0, total_ms: 0, max_ms: 0, last_ms: 0,
    cells_n: 0, cells_total_ms: 0, cells_max_ms: 0, cells_latency_max_ms: 0,
  };
  window.obStats = stats;

  // ------------------------------------------------------------------ formatting
  const fmt = (x, d = 1, unit = "") =>
    x === null || x === undefined || !Number.isFinite(x) ? "--" : `${x.toFixed(d)}${unit}`;
  const kw = (w) => (w === null || w === undefined ? "--" : Math.abs(w) >= 10000 ? `${(w / 1000).toFixed(1)} kW` : `${(w / 1000).toFixed(2)} kW`);
  const pct = (f, d = 1) => (f === null || f === undefined ? "--" : `${(100 * f).toFixed(d)} %`);
  let timeFmt = null;
  let dateFmt = null;
  function setTimezone(tz) {
    state.tz = tz;
    timeFmt = new Intl.DateTimeFormat("en-GB", { timeZone: tz, hour: "2-digit", minute: "2-digit", hour12: false });
    dateFmt = new Intl.DateTimeFormat("en-GB", {
      timeZone: tz, year: "numeric", month: "2-digit", day: "2-digit",
      hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false,
    });
  }
  setTimezone("UTC");
  const fmtDate = (t) => (t === null ? "--" : dateFmt.format(new Date(t * 1000)));
  const fmtTime = (t) => timeFmt.format(new Date(t * 1000));
  function sevClass(sev) {
    if (sev === "trip" || sev === "error" || sev === "critical") return "bad";
    if (sev === "warning" || sev === "derate" || sev === "warn") return "warn";
    return "ok";
  }
  const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));

  // ------------------------------------------------------------------ HTTP helpers
  async function getJSON(path) {
    const r = await fetch(API + path, { cache: "no-store" });
    if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
    return r.json();
  }
  async function write(method, path, body) {
    const token = $("token-input").value.trim();
    if (!token) return { ok: false, text: "enter the token first (top right)" };
    const r = await fetch(API + path, {
      method,
      headers: { "Content-Type": "application/json", Authorization: `Bearer ${token}` },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    let data = null;
    try { data = await r.json(); } catch (e) { data = null; }
    let text;
    if (r.ok) text = data && data.message ? data.message : JSON.stringify(data);
    else if (data && data.message) text = `HTTP ${r.status}: ${data.message}`;
    else if (data && typeof data.detail === "string") text = `HTTP ${r.status}: ${data.detail}`;
    else if (data && Array.isArray(data.detail)) text = `HTTP ${r.status}: ${data.detail.map((d) => d.msg).join("; ")}`;
    else text = `HTTP ${r.status}`;
    return { ok: r.ok, text, data };
  }
  function show(id, res) {
    const el = $(id);
    el.textContent = res.text;
    el.style.color = res.ok ? "" : "var(--bad)";
  }
  const tokenInput = $("token-input");
  tokenInput.value = sessionStorage.getItem("openbess-token") || "";
  $("auth-form").addEventListener("submit", (ev) => { ev.preventDefault(); sessionStorage.setItem("openbess-token", tokenInput.value.trim()); });
  tokenInput.addEventListener("change", () => sessionStorage.setItem("openbess-token", tokenInput.value.trim()));

  // ------------------------------------------------------------------ power flow
  const FLOW_NODES = {
    pv: { x: 210, y: 40, label: "PV", color: "var(--pv)" },
    grid: { x: 60, y: 150, label: "Grid", color: "var(--grid)" },
    load: { x: 360, y: 150, label: "Load", color: "var(--load)" },
    batt: { x: 210, y: 260, label: "Battery", color: "var(--batt)" },
  };
  const HUB = { x: 210, y: 150 };
  function initFlow() {
    const lines = [], nodes = [];
    for (const [k, n] of Object.entries(FLOW_NODES)) {
      lines.push(`<path id="wire-${k}" class="wire" d="M${n.x},${n.y} L${HUB.x},${HUB.y}"/>`);
      nodes.push(`<g><circle class="node" cx="${n.x}" cy="${n.y}" r="30" stroke="${n.color}"/>` +
        `<text x="${n.x}" y="${n.y - 4}" text-anchor="middle">${n.label}</text>` +
        `<text id="flow-${k}" class="val" x="${n.x}" y="${n.y + 13}" text-anchor="middle">--</text></g>`);
    }
    nodes.push(`<circle cx="${HUB.x}" cy="${HUB.y}" r="7" fill="var(--muted)"/>`);
    $("flow-lines").innerHTML = lines.join("");
    $("flow-nodes").innerHTML = nodes.join("");
  }
  // towardHub: power flows from the node into the site bus when true.
  function setWire(key, watts, towardHub, color) {
    const w = $(`wire-${key}`);
    const live = watts !== null && Math.abs(watts) > 1;
    w.classList.toggle("live", live);
    w.classList.toggle("rev", live && !towardHub);
    w.style.stroke = live ? color : "";
    $(`flow-${key}`).textContent = kw(watts);
  }
  function renderFlow(site) {
    setWire("pv", site.pv_power_w, true, "var(--pv)");
    setWire("grid", site.grid_power_w, site.grid_power_w > 0, "var(--grid)");
    setWire("load", site.load_power_w, false, "var(--load)");
    setWire("batt", site.battery_ac_power_w, site.battery_ac_power_w > 0, "var(--batt)");
  }

  // ------------------------------------------------------------------ overview
  function renderOverview(o) {
    const t = o.telemetry;
    $("site-time").textContent = fmtDate(o.time_s);
    renderFlow(o.site);
    $("soc-value").textContent = pct(t.soc);
    $("soc-bar").style.width = `${t.soc === null ? 0 : Math.max(0, Math.min(100, 100 * t.soc))}%`;
    $("soh-value").textContent = pct(t.soh);
    $("energy-value").textContent = `${fmt(t.energy_available_wh / 1000, 2)} of ${fmt(t.capacity_wh / 1000, 1)} kWh`;
    const c = $("contactor-state");
    c.textContent = t.contactor;
    c.className = `pill ${t.contactor === "closed" ? "ok" : t.contactor === "fault" ? "bad" : "warn"}`;
    $("limits-value").textContent = `discharge ${kw(t.discharge_power_limit_w)} / charge ${kw(t.charge_power_limit_w)}`;
    $("cellrange-value").textContent = `${fmt(t.cell_voltage_min_v, 3)} .. ${fmt(t.cell_voltage_max_v, 3)} V, SoC ${pct(t.soc_cell_min)} .. ${pct(t.soc_cell_max)}`;
    $("temp-value").textContent = `${fmt(t.temperature_min_degc, 1)} .. ${fmt(t.temperature_max_degc, 1)} °C`;
    const cmd = o.command;
    $("command-value").textContent = cmd
      ? `${cmd.source} #${cmd.seq}: ${cmd.mode} ${kw(cmd.power_w)}, reserve ${pct(cmd.reserve_soc, 0)}` +
        (cmd.valid_until_s !== null ? `, until ${fmtTime(cmd.valid_until_s)}` : "")
      : "none";
    const g = t.gate;
    const go = $("gate-outcome");
    go.textContent = g.outcome;
    go.className = `pill ${g.outcome === "accepted" ? "ok" : g.outcome === "clamped" ? "warn" : "bad"}`;
    $("gate-reason").textContent = g.reason === "none" ? `(${g.source || "-"})` : `${g.reason} (${g.source || "-"})`;
    $("gate-power").textContent = `${kw(g.requested_w)} -> ${kw(g.granted_w)}`;
    renderAlarms(t, o.acknowledged);
    // drill watch
    $("watch-temp").textContent = `${fmt(t.temperature_max_degc, 1)} °C`;
    $("watch-limits").textContent = `${kw(t.discharge_power_limit_w)} / ${kw(t.charge_power_limit_w)}`;
    $("watch-contactor").textContent = t.contactor;
    $("watch-alarms").textContent = t.alarms.length ? t.alarms.join(", ") : "none";
    if (o.plan_created_s !== state.planCreated) {
      state.planCreated = o.plan_created_s;
      loadPlan();
    }
    // charts: refetch the database every 15 s, redraw with the stream's points every 2 s
    const now = performance.now();
    if (state.plan && state.plan.available && now - state.lastPlanActual > 15000) {
      state.lastPlanActual = now;
      loadPlanActual();
    }
    if (!state.histCustom && now - state.lastHist > 15000) {
      state.lastHist = now;
      state.lastChart = now;
      loadHistory();
    } else if (now - state.lastChart > 2000) {
      state.lastChart = now;
      if (!state.histCustom) renderHistory();
      renderPlan();
    }
  }

  let lastAlarmKey = "";
  function renderAlarms(t, acked) {
    const banner = $("alarm-banner");
    const worst = t.alarms.reduce((w, a) => {
      const s = sevClass(t.alarm_severity[a] || "warning");
      return s === "bad" || w === "bad" ? "bad" : s === "warn" || w === "warn" ? "warn" : w;
    }, "ok");
    banner.className = `banner ${t.alarms.length ? worst : "ok"}`;
    banner.textContent = t.alarms.length ? `ALARM: ${t.alarms.join(", ")}` : "no alarm";
    const key = JSON.stringify([t.alarms, t.alarm_severity, acked, t.latched]);
    if (key === lastAlarmKey) return;
    lastAlarmKey = key;
    const list = $("alarm-list");
    if (!t.alarms.length) list.innerHTML = '<li class="muted">none</li>';
    else {
      list.innerHTML = t.alarms.map((a) => {
        const sev = t.alarm_severity[a] || "warning";
        const ack = acked.includes(a);
        return `<li class="${ack ? "acked" : ""}"><span class="pill ${sevClass(sev)}">${esc(sev || "alarm")}</span>` +
          `<span class="mono">${esc(a)}</span>${ack ? '<span class="muted small">acknowledged</span>' : ""}</li>`;
      }).join("");
    }
    $("latched").textContent = t.latched.length ? `latched (reset needed): ${t.latched.join(", ")}` : "";
  }

  // ------------------------------------------------------------------ cells heat map
  const PALETTES = {
    // viridis-like for voltage and SoC, inferno-like for temperature
    voltage_v: [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]],
    soc: [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]],
    temperature_degc: [[20, 11, 52], [120, 28, 109], [187, 55, 84], [237, 105, 37], [252, 255, 164]],
  };
  const MIN_SPAN = { voltage_v: 0.01, temperature_degc: 1.0, soc: 0.01 };
  const UNIT = { voltage_v: [4, " V", 1], temperature_degc: [1, " °C", 1], soc: [2, " %", 100] };
  const LUTS = {};
  for (const [k, stops] of Object.entries(PALETTES)) {
    const lut = [];
    for (let i = 0; i < 256; i++) {
      const f = (i / 255) * (stops.length - 1);
      const j = Math.min(Math.floor(f), stops.length - 2);
      const u = f - j;
      const c = stops[j].map((v, m) => Math.round(v + u * (stops[j + 1][m] - v)));
      lut.push(`rgb(${c[0]},${c[1]},${c[2]})`);
    }
    LUTS[k] = lut;
  }
  const heat = { layout: null };
  function cellLayout(c, width) {
    const perModule = c.n_series / Math.max(c.modules_per_string, 1);
    let cols = Number.isInteger(perModule) && perModule >= 4 && perModule <= 64 ? perModule : Math.ceil(Math.sqrt(c.n_series * 3));
    cols = Math.min(cols, c.n_series);
    const rowsPerString = Math.ceil(c.n_series / cols);
    const gap = c.n_strings > 1 ? 6 : 0;
    const label = c.n_strings > 1 ? 26 : 0;
    const size = Math.max(4, Math.min(28, Math.floor((width - label) / cols)));
    const height = c.n_strings * rowsPerString * size + (c.n_strings - 1) * gap;
    return { cols, rowsPerString, gap, label, size, height, n: c.n_cells, nSeries: c.n_series, nStrings: c.n_strings };
  }
  function cellXY(L, i) {
    const s = Math.floor(i / L.nSeries), k = i % L.nSeries;
    const r = Math.floor(k / L.cols), col = k % L.cols;
    return [L.label + col * L.size, s * (L.rowsPerString * L.size + L.gap) + r * L.size];
  }
  function renderCells() {
    const c = state.cells;
    if (!c) return;
    const canvas = $("cells-canvas");
    const cssW = canvas.clientWidth || 800;
    const L = cellLayout(c, cssW);
    heat.layout = L;
    const dpr = window.devicePixelRatio || 1;
    const W = Math.round(cssW * dpr), H = Math.round(L.height * dpr);
    if (canvas.width !== W || canvas.height !== H) {
      canvas.width = W; canvas.height = H; canvas.style.height = `${L.height}px`;
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, cssW, L.height);
    const metric = $("cells-metric").value;
    const vals = c[metric];
    const st = c.stats[metric];
    let lo = st.min, hi = st.max;
    if (lo === null) { lo = 0; hi = 1; }
    if (hi - lo < MIN_SPAN[metric]) { const m = (hi + lo) / 2; lo = m - MIN_SPAN[metric] / 2; hi = m + MIN_SPAN[metric] / 2; }
    const lut = LUTS[metric];
    const scale = 255 / (hi - lo);
    const s = L.size, inner = s > 6 ? s - 1 : s;
    for (let i = 0; i < L.n; i++) {
      const v = vals[i];
      const [x, y] = cellXY(L, i);
      ctx.fillStyle = v === null ? "#555" : lut[Math.max(0, Math.min(255, Math.round((v - lo) * scale)))];
      ctx.fillRect(x, y, inner, inner);
    }
    if (s >= 6) {
      ctx.fillStyle = "#ffffff";
      const r = Math.max(1.2, s / 7);
      for (let i = 0; i < L.n; i++) {
        if (c.balancing[i]) {
          const [x, y] = cellXY(L, i);
          ctx.beginPath(); ctx.arc(x + inner / 2, y + inner / 2, r, 0, 6.283); ctx.fill();
        }
      }
    }
    ctx.lineWidth = 2;
    for (const [idx, color] of [[st.argmin, "#6aa7ff"], [st.argmax, "#ef5f5f"]]) {
      if (idx >= 0) { const [x, y] = cellXY(L, idx); ctx.strokeStyle = color; ctx.strokeRect(x + 1, y + 1, inner - 2, inner - 2); }
    }
    if (L.label) {
      ctx.fillStyle = "#8a9aab"; ctx.font = "11px sans-serif";
      for (let k = 0; k < L.nStrings; k++) ctx.fillText(`S${k + 1}`, 0, k * (L.rowsPerString * s + L.gap) + 12);
    }
    const [d, unit, mul] = UNIT[metric];
    $("legend-lo").textContent = `${(lo * mul).toFixed(d)}${unit}`;
    $("legend-hi").textContent = `${(hi * mul).toFixed(d)}${unit}`;
    const sv = (x) => (x === null ? "--" : `${(x * mul).toFixed(d)}${unit}`);
    const sp = (x) => (x === null ? "--" : `${(x * mul).toFixed(metric === "voltage_v" ? 4 : d)}${unit}`);
    $("cells-stats").textContent =
      `min ${sv(st.min)} (cell ${st.argmin}) · max ${sv(st.max)} (cell ${st.argmax}) · spread ${sp(st.spread)} · ` +
      `mean ${sv(st.mean)} · balancing ${c.balancing_count}`;
    $("cells-count").textContent = `${c.n_cells} cells, ${c.n_strings} string(s) x ${c.n_series}`;
  }
  function initLegend() {
    const cv = $("cells-legend"), ctx = cv.getContext("2d");
    const lut = LUTS[$("cells-metric").value];
    for (let i = 0; i < cv.width; i++) { ctx.fillStyle = lut[Math.round((i / (cv.width - 1)) * 255)]; ctx.fillRect(i, 0, 1, cv.height); }
  }
  $("cells-metric").addEventListener("change", () => { initLegend(); renderCells(); });
  $("cells-canvas").addEventListener("mousemove", (ev) => {
    const L = heat.layout, c = state.cells, tip = $("cells-tip");
    if (!L || !c) return;
    const rect = ev.target.getBoundingClientRect();
    const x = ev.clientX - rect.left, y = ev.clientY - rect.top;
    const blockH = L.rowsPerString * L.size + L.gap;
    const s = Math.floor(y / blockH), r = Math.floor((y - s * blockH) / L.size), col = Math.floor((x - L.label) / L.size);
    const k = r * L.cols + col, i = s * L.nSeries + k;
    if (s < 0 || s >= L.nStrings || col < 0 || col >= L.cols || k >= L.nSeries || r >= L.rowsPerString) { tip.hidden = true; return; }
    tip.hidden = false;
    tip.textContent = `cell ${i} (string ${s + 1}, #${k + 1}): ${fmt(c.voltage_v[i], 4, " V")}, ` +
      `${fmt(c.temperature_degc[i], 1, " °C")}, SoC ${pct(c.soc[i], 2)}${c.balancing[i] ? ", balancing" : ""}`;
    tip.style.left = `${Math.min(x + 12, rect.width - 260)}px`;
    tip.style.top = `${y + 12}px`;
  });
  $("cells-canvas").addEventListener("mouseleave", () => { $("cells-tip").hidden = true; });

  // ------------------------------------------------------------------ charts (SVG)
  function niceTicks(lo, hi, n) {
    const span = hi - lo || 1;
    const step0 = span / n, mag = 10 ** Math.floor(Math.log10(step0));
    const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= step0) || 10 * mag;
    const out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-9 * span; v += step) out.push(v);
    return out;
  }
  const TIME_STEPS = [60, 300, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172800];
  /* series: {name, color, t, y, step, dash}; opts: {t0, t1, yLabel, scale, now, yMin, yMax} */
  function chart(svg, series, opts) {
    const vb = svg.viewBox.baseVal, W = vb.width, H = vb.height;
    const ml = 52, mr = 10, mt = 16, mb = 18;
    const pw = W - ml - mr, ph = H - mt - mb;
    const t0 = opts.t0, t1 = opts.t1 > opts.t0 ? opts.t1 : opts.t0 + 1;
    const k = opts.scale || 1;
    let ylo = Infinity, yhi = -Infinity;
    for (const s of series) for (const v of s.y) if (v !== null) { ylo = Math.min(ylo, v * k); yhi = Math.max(yhi, v * k); }
    if (opts.yMin !== undefined) ylo = Math.min(ylo, opts.yMin);
    if (opts.yMax !== undefined) yhi = Math.max(yhi, opts.yMax);
    if (!Number.isFinite(ylo)) { ylo = 0; yhi = 1; }
    if (yhi - ylo < 1e-9) { ylo -= 1; yhi += 1; }
    const pad = (yhi - ylo) * 0.05; ylo -= pad; yhi += pad;
    const X = (t) => ml + ((t - t0) / (t1 - t0)) * pw;
    const Y = (v) => mt + (1 - (v - ylo) / (yhi - ylo)) * ph;
    const parts = [];
    for (const v of niceTicks(ylo, yhi, 4)) {
      parts.push(`<line class="axis" x1="${ml}" x2="${W - mr}" y1="${Y(v)}" y2="${Y(v)}"/>`);
      parts.push(`<text x="${ml - 4}" y="${Y(v) + 4}" text-anchor="end">${+v.toFixed(6)}</text>`);
    }
    const tstep = TIME_STEPS.find((s) => (t1 - t0) / s <= 8) || 604800;
    for (let t = Math.ceil(t0 / tstep) * tstep; t <= t1; t += tstep) {
      parts.push(`<line class="axis" x1="${X(t)}" x2="${X(t)}" y1="${mt}" y2="${H - mb}"/>`);
      const label = tstep >= 86400 ? fmtDate(t).slice(0, 5) : fmtTime(t);
      parts.push(`<text x="${X(t)}" y="${H - 4}" text-anchor="middle">${label}</text>`);
    }
    if (ylo < 0 && yhi > 0) parts.push(`<line class="axis" style="stroke:#556" x1="${ml}" x2="${W - mr}" y1="${Y(0)}" y2="${Y(0)}"/>`);
    if (opts.now !== undefined && opts.now >= t0 && opts.now <= t1) parts.push(`<line class="now" x1="${X(opts.now)}" x2="${X(opts.now)}" y1="${mt}" y2="${H - mb}"/>`);
    let lx = ml;
    for (const s of series) {
      let d = "", pen = false, prevY = null;
      for (let i = 0; i < s.t.length; i++) {
        const v = s.y[i];
        if (v === null || s.t[i] === null) { pen = false; continue; }
        const x = X(s.t[i]).toFixed(1), y = Y(v * k).toFixed(1);
        if (!pen) d += `M${x},${y}`;
        else if (s.step) d += `H${x}V${y}`;
        else d += `L${x},${y}`;
        pen = true; prevY = y;
      }
      if (s.step && pen && s.tEnd !== undefined) d += `H${X(s.tEnd).toFixed(1)}`;
      parts.push(`<path d="${d}" fill="none" stroke="${s.color}" stroke-width="1.6"${s.dash ? ' stroke-dasharray="4 3"' : ""}/>`);
      parts.push(`<text x="${lx}" y="11" style="fill:${s.color}">${esc(s.name)}</text>`);
      lx += 10 + 6.5 * s.name.length;
      void prevY;
    }
    parts.push(`<text x="${W - mr}" y="11" text-anchor="end">${esc(opts.yLabel || "")}</text>`);
    svg.innerHTML = parts.join("");
  }

  // ------------------------------------------------------------------ actual values
  /* What happened: the run database's history (fetched) joined with the points the stream
   * brought since (the database is written in batches, so the stream is fresher). */
  const LIVE_COLS = {
    soc: (o) => o.telemetry.soc,
    battery_ac_power_w: (o) => o.site.battery_ac_power_w,
    grid_power_w: (o) => o.site.grid_power_w,
    pv_power_w: (o) => o.site.pv_power_w,
    load_power_w: (o) => o.site.load_power_w,
    cell_voltage_min_v: (o) => o.telemetry.cell_voltage_min_v,
    cell_voltage_max_v: (o) => o.telemetry.cell_voltage_max_v,
    temperature_min_degc: (o) => o.telemetry.temperature_min_degc,
    temperature_max_degc: (o) => o.telemetry.temperature_max_degc,
  };
  const live = { t: [], cols: Object.fromEntries(Object.keys(LIVE_COLS).map((k) => [k, []])) };
  function addLive(o) {
    live.t.push(o.time_s);
    for (const [k, f] of Object.entries(LIVE_COLS)) live.cols[k].push(f(o));
    if (live.t.length > 6000) {
      live.t.splice(0, 1000);
      for (const k of Object.keys(LIVE_COLS)) live.cols[k].splice(0, 1000);
    }
  }
  /* h (a /history answer) followed by the live points after its last sample, within [t0, t1). */
  function joinLive(h, t0, t1) {
    const last = h && h.time_s.length ? h.time_s[h.time_s.length - 1] : -Infinity;
    const out = { time_s: h ? h.time_s.slice() : [], columns: {} };
    const names = Object.keys(LIVE_COLS);
    for (const k of names) out.columns[k] = h && h.columns[k] ? h.columns[k].slice() : new Array(out.time_s.length).fill(null);
    const stride = Math.max(1, Math.ceil(live.t.length / 600));
    for (let i = 0; i < live.t.length; i += stride) {
      const t = live.t[i];
      if (t <= last || t < t0 || t >= t1) continue;
      out.time_s.push(t);
      for (const k of names) out.columns[k].push(live.cols[k][i]);
    }
    return out;
  }

  // ------------------------------------------------------------------ plan vs actual
  /* Every step of every plan seen since the page opened, by start time; a newer plan replaces
   * an older one's steps, so past steps show what was planned when they ran. */
  const planSteps = new Map();
  let planActual = null;
  async function loadPlan() {
    try {
      const p = await getJSON("/plan");
      state.plan = p;
      if (!p.available) {
        $("plan-missing").hidden = false;
        $("plan-missing").textContent = "The EMS strategy of this site does not make a plan " +
          '(set ems.strategy = "mpc" in the site file to see one).';
        $("plan-charts").hidden = true;
        return;
      }
      $("plan-missing").hidden = true;
      $("plan-charts").hidden = false;
      $("plan-info").textContent = `made ${fmtDate(p.created_s)}, ${p.time_s.length} steps` +
        (p.relaxed.length ? `, relaxed: ${p.relaxed.join(", ")}` : "");
      for (const t of [...planSteps.keys()]) if (t >= p.time_s[0]) planSteps.delete(t);
      p.time_s.forEach((t, i) => planSteps.set(t, {
        step: p.step_s[i], load: p.load_w[i], pv: p.pv_w[i], batt: p.battery_power_w[i], soc: p.soc[i],
        imp: p.import_price_eur_per_kwh[i], exp: p.export_price_eur_per_kwh[i],
      }));
      state.lastPlanActual = performance.now();
      await loadPlanActual();
      showForecastSkill(await getJSON("/forecasts"));
    } catch (e) { /* next snapshot retries */ }
  }
  /* The controller's own report on the forecasts its plans were given (last 7 days). */
  function showForecastSkill(f) {
    const e = f.errors || {};
    const part = (name, x) => (x && x.n
      ? `${name} ${kw(x.mae)} (same time ${name === "load" ? "last week" : "yesterday"}: ` +
        `${kw(x.mae_naive)}, skill ${x.skill === null ? "-" : x.skill.toFixed(2)})`
      : `${name}: not scored yet`);
    $("forecast-skill").textContent = Object.keys(e).length
      ? `forecasts of the last 7 days, mean absolute error: ${part("load", e.load_w)}, ${part("PV", e.pv_w)}`
      : "";
  }
  function planWindow() {
    const p = state.plan, n = p.time_s.length;
    const t1 = p.time_s[n - 1] + p.step_s[n - 1];
    const first = Math.min(...planSteps.keys());
    return [Math.max(first, p.time_s[0] - 12 * 3600), t1];
  }
  async function loadPlanActual() {
    const p = state.plan;
    if (!p || !p.available || !p.time_s.length) return;
    const [t0, t1] = planWindow();
    planActual = null;
    if (state.database) {
      const cols = "battery_ac_power_w,load_power_w,pv_power_w,soc";
      try { planActual = await getJSON(`/history?start=${t0}&end=${t1}&max_points=1500&columns=${cols}`); } catch (e) { planActual = null; }
    }
    renderPlan();
  }
  function renderPlan() {
    const p = state.plan;
    if (!p || !p.available || !p.time_s.length) return;
    const [t0, t1] = planWindow();
    const now = state.overview ? state.overview.time_s : undefined;
    const act = joinLive(planActual, t0, t1);
    const keys = [...planSteps.keys()].filter((t) => t >= t0).sort((a, b) => a - b);
    const st = keys.map((t) => planSteps.get(t));
    const col = (f) => st.map(f);
    chart($("plan-prices"), [
      { name: "import price", color: "#e0a458", t: keys, y: col((x) => x.imp), step: true, tEnd: t1 },
      { name: "export price", color: "#6aa7ff", t: keys, y: col((x) => x.exp), step: true, tEnd: t1 },
    ], { t0, t1, yLabel: "EUR/kWh", now });
    chart($("plan-power"), [
      { name: "load forecast", color: "#b48ead", t: keys, y: col((x) => x.load), step: true, tEnd: t1, dash: true },
      { name: "PV forecast", color: "#f4d35e", t: keys, y: col((x) => x.pv), step: true, tEnd: t1, dash: true },
      { name: "planned battery", color: "#5cc8a8", t: keys, y: col((x) => x.batt), step: true, tEnd: t1, dash: true },
      { name: "actual battery", color: "#5cc8a8", t: act.time_s, y: act.columns.battery_ac_power_w },
      { name: "actual load", color: "#b48ead", t: act.time_s, y: act.columns.load_power_w },
      { name: "actual PV", color: "#f4d35e", t: act.time_s, y: act.columns.pv_power_w },
    ], { t0, t1, yLabel: "kW (+ = discharge)", scale: 0.001, now });
    chart($("plan-soc"), [
      { name: "planned SoC", color: "#6aa7ff", t: keys.map((t, i) => t + st[i].step), y: col((x) => x.soc), dash: true },
      { name: "actual SoC", color: "#5cc8a8", t: act.time_s, y: act.columns.soc },
    ], { t0, t1, yLabel: "SoC %", scale: 100, now, yMin: 0, yMax: 100 });
    // forecast error over the finished steps: mean absolute error of the step means
    const errs = { load: [], pv: [] };
    let j = 0;
    for (let i = 0; i < keys.length; i++) {
      const a = keys[i], b = a + st[i].step;
      if (now === undefined || b > now) break;
      let sl = 0, sp = 0, m = 0;
      while (j < act.time_s.length && act.time_s[j] < a) j++;
      for (let k = j; k < act.time_s.length && act.time_s[k] < b; k++) {
        if (act.columns.load_power_w[k] !== null && act.columns.pv_power_w[k] !== null) {
          sl += act.columns.load_power_w[k]; sp += act.columns.pv_power_w[k]; m++;
        }
      }
      if (m) { errs.load.push(Math.abs(sl / m - st[i].load)); errs.pv.push(Math.abs(sp / m - st[i].pv)); }
    }
    const mae = (a) => (a.length ? a.reduce((x, y) => x + y, 0) / a.length : null);
    $("forecast-error").textContent = errs.load.length
      ? `forecast error (mean absolute error of the step means, ${errs.load.length} finished step(s)): ` +
        `load ${kw(mae(errs.load))}, PV ${kw(mae(errs.pv))}`
      : "forecast error: no planned step has finished yet";
  }

  // ------------------------------------------------------------------ history
  let history = null;
  async function loadHistory() {
    if (!state.database) return;
    let q;
    if (state.histCustom) q = `start=${encodeURIComponent(state.histCustom[0])}&end=${encodeURIComponent(state.histCustom[1])}`;
    else {
      const end = state.overview ? state.overview.time_s + 1 : Date.now() / 1000;
      q = `start=${end - state.histRange}&end=${end}`;
    }
    try { history = await getJSON(`/history?${q}&max_points=1200`); } catch (e) { $("hist-info").textContent = String(e.message); return; }
    renderHistory();
  }
  function renderHistory() {
    const h = history;
    if (!h) return;
    let o = { t0: h.start_s, t1: h.end_s }, d = h;
    if (!state.histCustom && state.overview) {
      // a relative range follows the site time with the stream's points...
      const t1 = state.overview.time_s + 1;
      o = { t0: t1 - state.histRange, t1 };
      d = joinLive(h, o.t0, o.t1);
      // ...and on a young run starts at its first sample
      if (d.time_s.length && d.time_s[0] > o.t0) o.t0 = d.time_s[0];
    }
    const c = d.columns, t = d.time_s;
    $("hist-info").textContent = `${t.length} points` + (h.bucket_s ? `, averaged over ${Math.round(h.bucket_s)} s` : "");
    chart($("hist-soc"), [{ name: "SoC", color: "#5cc8a8", t, y: c.soc }], { ...o, yLabel: "%", scale: 100 });
    chart($("hist-power"), [
      { name: "battery", color: "#5cc8a8", t, y: c.battery_ac_power_w },
      { name: "grid", color: "#e0a458", t, y: c.grid_power_w },
      { name: "PV", color: "#f4d35e", t, y: c.pv_power_w },
      { name: "load", color: "#b48ead", t, y: c.load_power_w },
    ], { ...o, yLabel: "kW", scale: 0.001 });
    chart($("hist-voltage"), [
      { name: "cell min", color: "#6aa7ff", t, y: c.cell_voltage_min_v },
      { name: "cell max", color: "#ef5f5f", t, y: c.cell_voltage_max_v },
    ], { ...o, yLabel: "V" });
    chart($("hist-temp"), [
      { name: "min", color: "#6aa7ff", t, y: c.temperature_min_degc },
      { name: "max", color: "#ef5f5f", t, y: c.temperature_max_degc },
    ], { ...o, yLabel: "°C" });
  }
  for (const b of document.querySelectorAll("#hist-ranges button")) {
    b.addEventListener("click", () => {
      for (const x of document.querySelectorAll("#hist-ranges button")) x.classList.toggle("on", x === b);
      state.histRange = Number(b.dataset.range);
      state.histCustom = null;
      loadHistory();
    });
  }
  $("hist-apply").addEventListener("click", () => {
    const a = $("hist-start").value, b = $("hist-end").value;
    if (!a || !b) { $("hist-info").textContent = "pick both times (site time zone)"; return; }
    for (const x of document.querySelectorAll("#hist-ranges button")) x.classList.remove("on");
    state.histCustom = [a, b]; // naive ISO: the server reads it in the site time zone
    loadHistory();
  });

  // ------------------------------------------------------------------ events
  function eventRow(e) {
    return `<tr class="sev-${esc(e.severity)}"><td class="mono">${fmtDate(e.time_s)}</td><td>${esc(e.kind)}</td>` +
      `<td class="mono">${esc(e.code)}</td><td>${esc(e.severity)}</td><td>${esc(e.message)}</td></tr>`;
  }
  function addEvents(list) {
    const body = $("events-body");
    body.insertAdjacentHTML("afterbegin", list.slice().reverse().map(eventRow).join(""));
    while (body.rows.length > 300) body.deleteRow(body.rows.length - 1);
  }
  async function loadEvents() {
    if (!state.database) return;
    try {
      const r = await getJSON("/events?limit=200");
      $("events-body").innerHTML = "";
      addEvents(r.events);
    } catch (e) { /* no database yet */ }
  }

  // ------------------------------------------------------------------ writes
  $("ack-all").addEventListener("click", async () => show("alarm-result", await write("POST", "/alarms/ack", { codes: [] })));
  $("reset-faults").addEventListener("click", async () => show("alarm-result", await write("POST", "/faults/reset", { code: "all" })));
  async function drill(action) {
    const body = { kind: $("drill-kind").value, target: Number($("drill-target").value || 0), action };
    show("drill-result", await write("POST", "/drills", body));
  }
  $("drill-form").addEventListener("submit", (ev) => { ev.preventDefault(); drill("inject"); });
  $("drill-clear").addEventListener("click", () => drill("clear"));
  $("command-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const res = await write("POST", "/command", {
      mode: $("cmd-mode").value, power_w: Number($("cmd-power").value), duration_s: Number($("cmd-duration").value),
    });
    if (res.ok && res.data) res.text = `${res.data.outcome} (${res.data.reason}): granted ${kw(res.data.granted_w)} until ${fmtTime(res.data.valid_until_s)}`;
    show("command-result", res);
  });

  // ------------------------------------------------------------------ live stream
  const parseMs = { overview: 0, cells: 0 };
  const arrived = { overview: 0, cells: 0 };
  function scheduleRender(kind) {
    if (state.pending[kind]) return;
    state.pending[kind] = true;
    requestAnimationFrame(() => {
      state.pending[kind] = false;
      const t0 = performance.now();
      if (kind === "overview" && state.overview) renderOverview(state.overview);
      if (kind === "cells") renderCells();
      const t1 = performance.now();
      record(kind, parseMs[kind] + t1 - t0, t1 - arrived[kind]);
      parseMs[kind] = 0;
    });
  }
  function record(kind, ms, latency) {
    stats.n += 1; stats.total_ms += ms; stats.max_ms = Math.max(stats.max_ms, ms); stats.last_ms = ms;
    if (kind === "cells") {
      stats.cells_n += 1; stats.cells_total_ms += ms; stats.cells_max_ms = Math.max(stats.cells_max_ms, ms);
      stats.cells_latency_max_ms = Math.max(stats.cells_latency_max_ms, latency);
    }
    if (stats.n % 20 === 0) $("perf").textContent = `update ${(stats.total_ms / stats.n).toFixed(1)} ms mean, ${stats.max_ms.toFixed(1)} ms max`;
  }
  function received(kind, data) {
    const t0 = performance.now();
    if (!state.pending[kind]) arrived[kind] = t0;
    const obj = JSON.parse(data);
    parseMs[kind] += performance.now() - t0;
    return obj;
  }
  function connect() {
    const es = new EventSource(`${API}/stream`);
    es.onopen = () => { $("conn-status").className = "dot on"; };
    es.onerror = () => { $("conn-status").className = "dot off"; };
    es.addEventListener("snapshot", (m) => {
      state.overview = received("overview", m.data);
      addLive(state.overview);
      scheduleRender("overview");
    });
    es.addEventListener("cells", (m) => {
      state.cells = received("cells", m.data);
      scheduleRender("cells");
    });
    es.addEventListener("event", (m) => addEvents([JSON.parse(m.data)]));
  }

  async function init() {
    initFlow();
    initLegend();
    try {
      const s = await getJSON("/status");
      setTimezone(s.timezone);
      $("site-name").textContent = s.site;
      $("version").textContent = s.software_version;
      state.writesEnabled = s.writes_enabled;
      state.database = s.database;
      if (!s.database) $("hist-info").textContent = "no run database: no history";
      $("writes-state").textContent = s.writes_enabled ? "" : "writes disabled (no token on the server)";
    } catch (e) { /* the stream still works */ }
    try { state.cells = await getJSON("/cells"); renderCells(); } catch (e) { /* first cycle pending */ }
    await loadEvents();
    connect();
    window.addEventListener("resize", () => scheduleRender("cells"));
  }
  init();
})();
