// streamrec dashboard: polls /api/metrics once per collector interval and extends the charts in
// place (no reloads). Every series is one worker's value over time, so a challenger's AUC sits
// point by point beside the champion's. State is on window.streamrec for the browser tests.
"use strict";

const PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"];
const EVENT_COLOURS = { rollback: "#d62728", held: "#ff7f0e", promote: "#1f5fd6", pin: "#1f5fd6", unpin: "#2ca02c",
                        champion: "#9467bd" };
const RANGES = [300, 900, 3600, 21600, 86400];
const KEEP_S = 86400;  // the page forgets points older than its longest range
const DASHES = [[], [6, 4], [2, 3], [10, 3, 2, 3]];

// One chart per entry: trainer values (and scorer values) plotted per worker.
const CHARTS = [
  { id: "auc", title: "AUC — window (solid) and lifetime (dashed)", trainer: ["auc_window", "auc_lifetime"], events: true },
  { id: "logloss", title: "Logloss, window (nats)", trainer: ["logloss"] },
  { id: "normalized_entropy", title: "Normalised entropy, window", trainer: ["normalized_entropy"] },
  { id: "calibration", title: "Calibration, window (mean prediction / click rate)", trainer: ["calibration"] },
  { id: "examples_per_second", title: "Examples per second", trainer: ["examples_per_second"] },
  { id: "lag", title: "Consumer lag (messages)", trainer: ["lag"] },
  { id: "join", title: "Join outcomes (cumulative): positives, negatives, late clicks, orphan clicks",
    trainer: ["positives", "negatives", "late_clicks", "orphan_clicks"] },
  { id: "dead_letters", title: "Dead letters (cumulative)", trainer: ["dead_letters"] },
  { id: "versions", title: "Versions — head (solid), live (dashed), served by scorers (dotted)",
    trainer: ["version", "live_version"], scorer: ["served_version"], events: true },
];

const STATS = {
  trainer: [["auc_window", "AUC window", 4], ["auc_lifetime", "AUC lifetime", 4], ["examples_per_second", "examples/s", 0],
            ["examples", "examples", 0], ["lag", "lag", 0], ["dead_letters", "dead letters", 0],
            ["version", "head version", 0], ["live_version", "live version", 0], ["rollbacks", "rollbacks", 0],
            ["search_promotions", "search promotions", 0], ["search_challengers", "challengers", 0],
            ["search_compute", "search compute x", 2]],
  scorer: [["served_version", "served version", 0], ["served_delta_seq", "delta", 0],
           ["predictions", "predictions", 0]],
  joiner: [["examples_emitted", "examples written", 0], ["positives", "positives", 0], ["lag", "lag", 0],
           ["dead_letters", "dead letters", 0]],
};

const state = { since: 0, workers: new Map(), timeline: {}, models: {}, champion: null, errors: [], ticks: 0, polls: 0,
                range: Number(localStorage.getItem("streamrec.range")) || 3600, now: Date.now() / 1000,
                actions: { enabled: false, why_not: "" }, interval: 1 };
const charts = new Map();   // chart id -> { plot, signature, labels }
window.streamrec = { state, charts, lastValue, act };

function worker(w) {
  let entry = state.workers.get(w.key);
  if (!entry) {
    entry = { ...w, index: state.workers.size, times: [], values: {} };
    delete entry.points;
    state.workers.set(w.key, entry);
  }
  return entry;
}

function absorb(body) {
  for (const w of body.workers) {
    const entry = worker(w);
    entry.stopped = w.stopped;
    entry.serves = w.serves;
    entry.ranks = w.ranks;
    entry.population = w.population || [];
    entry.tables = w.tables || [];
    for (const [t, values] of w.points) {
      entry.times.push(t);
      for (const [name, value] of Object.entries(values)) {
        if (!entry.values[name]) entry.values[name] = new Array(entry.times.length - 1).fill(null);
        entry.values[name].push(value);
      }
      for (const name of Object.keys(entry.values)) {
        if (entry.values[name].length < entry.times.length) entry.values[name].push(null);
      }
      state.since = Math.max(state.since, t);
    }
    const cut = entry.times.findIndex((t) => t >= body.now - KEEP_S);
    if (cut > 0) {
      entry.times.splice(0, cut);
      for (const values of Object.values(entry.values)) values.splice(0, cut);
    }
  }
  state.now = body.now;
  state.interval = body.interval_s;
  state.models = body.models || {};
  state.actions = body.actions || { enabled: false, why_not: "" };
  state.timeline = body.timeline || {};
  state.champion = body.champion;
  state.errors = body.errors || [];
  state.ticks = body.ticks;
  state.namespace = body.namespace;
  state.source = body.source;
}

function seriesFor(chart) {
  const out = [];
  for (const w of state.workers.values()) {
    const names = w.role === "scorer" ? (chart.scorer || []) : (chart.trainer || []);
    names.forEach((name, i) => {
      out.push({ w, name, label: `${w.model}/${w.worker} ${name}`, dash: w.role === "scorer" ? [2, 3] : DASHES[i % DASHES.length] });
    });
  }
  return out;
}

function alignedData(series) {
  const times = new Set();
  for (const s of series) for (const t of s.w.times) times.add(t);
  const xs = [...times].sort((a, b) => a - b);
  const data = [xs];
  for (const s of series) {
    const at = new Map(s.w.times.map((t, i) => [t, i]));
    const values = s.w.values[s.name] || [];
    data.push(xs.map((t) => (at.has(t) ? values[at.get(t)] ?? null : null)));
  }
  return data;
}

function eventMarkers(u) {
  const ctx = u.ctx;
  const [xmin, xmax] = [u.scales.x.min, u.scales.x.max];
  ctx.save();
  ctx.lineWidth = 2;
  for (const events of Object.values(state.timeline)) {
    for (const e of events) {
      // a version held because of a pin is not a gate failure: drawn grey, not orange
      const colour = e.kind === "held" && e.reason === "pinned" ? "#9aa0a8" : EVENT_COLOURS[e.kind];
      if (!colour || e.at < xmin || e.at > xmax) continue;
      const x = Math.round(u.valToPos(e.at, "x", true));
      ctx.strokeStyle = colour;
      ctx.beginPath();
      ctx.moveTo(x, u.bbox.top);
      ctx.lineTo(x, u.bbox.top + u.bbox.height);
      ctx.stroke();
    }
  }
  ctx.restore();
}

// The chosen range ends now; it starts no earlier than the first point, so a short run fills the chart.
function xRange(u, dataMin) {
  const from = state.now - state.range;
  return [dataMin === null || dataMin === undefined ? from : Math.min(Math.max(from, dataMin), state.now - 1),
          state.now];
}

function render(chart) {
  const series = seriesFor(chart);
  const signature = series.map((s) => s.label).join("|");
  let entry = charts.get(chart.id);
  const data = alignedData(series);
  if (!entry || entry.signature !== signature) {
    if (entry) entry.plot.destroy();
    let box = document.getElementById(`chart-${chart.id}`);
    if (!box) {
      box = document.createElement("div");
      box.className = "chart";
      box.id = `chart-${chart.id}`;
      box.dataset.testid = `chart-${chart.id}`;
      box.innerHTML = `<h2>${chart.title}</h2><div class="plot"></div>`;
      document.getElementById("charts").appendChild(box);
    }
    const plotBox = box.querySelector(".plot");
    plotBox.innerHTML = "";
    const opts = {
      width: Math.max(520, box.clientWidth - 12), height: 240,
      scales: { x: { time: true, range: xRange } },
      series: [{}, ...series.map((s) => ({ label: s.label, stroke: PALETTE[s.w.index % PALETTE.length], dash: s.dash,
                                           width: 1.5, spanGaps: true }))],
      axes: [{}, { size: 56, values: (u, splits) => splits.map(compact) }],
      hooks: chart.events ? { draw: [eventMarkers] } : {},
      legend: { live: false },
    };
    entry = { plot: new uPlot(opts, data, plotBox), signature, labels: series.map((s) => s.label) };
    charts.set(chart.id, entry);
  } else {
    entry.plot.setData(data);
  }
}

function compact(value) {
  if (value === null || value === undefined) return "";
  const abs = Math.abs(value);
  if (abs >= 1e6) return `${+(value / 1e6).toFixed(2)}M`;
  if (abs >= 1e4) return `${+(value / 1e3).toFixed(1)}k`;
  return String(+value.toPrecision(4));
}

function lastValue(chartId, label) {
  const entry = charts.get(chartId);
  if (!entry) return undefined;
  const column = entry.labels.indexOf(label);
  if (column < 0) return undefined;
  const ys = entry.plot.data[column + 1];
  for (let i = ys.length - 1; i >= 0; i--) if (ys[i] !== null && ys[i] !== undefined) return ys[i];
  return null;
}

function format(value, digits) {
  if (value === null || value === undefined) return "–";
  return value.toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

function renderWorkers() {
  const box = document.getElementById("workers");
  for (const w of state.workers.values()) {
    let card = document.getElementById(`worker-${w.key}`);
    if (!card) {
      card = document.createElement("div");
      card.className = "worker";
      card.id = `worker-${w.key}`;
      card.dataset.testid = `worker-${w.key}`;
      const rows = (STATS[w.role] || []).map(([name, label]) =>
        `<dt>${label}</dt><dd data-testid="${w.key}:${name}" data-name="${name}">–</dd>`).join("");
      card.innerHTML = `<h3><span class="swatch" style="background:${PALETTE[w.index % PALETTE.length]}"></span>` +
                       `${w.role} ${w.model} / ${w.worker} <span class="ranks"></span> <span class="serves"></span> ` +
                       `<span class="state"></span></h3>` +
                       `<dl>${rows}</dl>` +
                       (w.role === "trainer" ? `<table class="population" data-testid="${w.key}:population" hidden>` +
                        "<thead><tr><th>search challenger</th><th>examples</th><th>AUC</th><th>champion's</th>" +
                        "<th>z</th></tr></thead><tbody></tbody></table>" +
                        `<table class="tables" data-testid="${w.key}:tables" hidden>` +
                        "<thead><tr><th>keyed table</th><th>rows</th><th>MiB</th><th>admitted</th>" +
                        "<th>not admitted</th><th>evicted</th></tr></thead><tbody></tbody></table>" : "");
      box.appendChild(card);
    }
    renderPopulation(card, w);
    renderTables(card, w);
    const last = w.times.length ? w.times[w.times.length - 1] : 0;
    const silent = !w.stopped && state.now - last > Math.max(5, 5 * state.interval);
    const ranks = card.querySelector(".ranks");
    ranks.textContent = w.ranks ? `(${w.ranks} ranks, one model)` : "";
    ranks.dataset.testid = `${w.key}:ranks`;
    const serves = card.querySelector(".serves");
    serves.textContent = w.role === "scorer" && w.serves && w.serves !== w.model ? `serving ${w.serves}` : "";
    card.dataset.serves = w.serves || "";
    card.querySelector(".state").textContent = w.stopped ? "(stopped)"
      : silent ? `(not reporting since ${new Date(last * 1000).toLocaleTimeString()})` : "";
    card.dataset.stopped = String(Boolean(w.stopped));
    card.classList.toggle("silent", silent);
    for (const [name, , digits] of STATS[w.role] || []) {
      const values = w.values[name] || [];
      const value = values.length ? values[values.length - 1] : null;
      const cell = card.querySelector(`[data-name="${name}"]`);
      cell.textContent = format(value, digits);
      cell.dataset.value = value === null ? "" : String(value);
    }
  }
}

// A table of the card (the search's challengers, the keyed tables), one row per item, hidden when empty.
function renderRows(card, selector, items, key, cells) {
  const table = card.querySelector(selector);
  if (!table) return;
  table.hidden = items.length === 0;
  const body = table.querySelector("tbody");
  body.innerHTML = "";
  for (const item of items) {
    const tr = document.createElement("tr");
    tr.dataset[key] = item[key];
    for (const [value, digits] of cells(item)) {
      const td = document.createElement("td");
      td.textContent = digits === null ? value : format(value, digits);
      tr.appendChild(td);
    }
    body.appendChild(tr);
  }
}

// The online search's challengers, each beside the champion on the same examples.
function renderPopulation(card, w) {
  renderRows(card, "table.population", w.population || [], "member",
             (m) => [[m.member, null], [m.examples, 0], [m.auc, 4], [m.champion_auc, 4], [m.z, 1]]);
}

// Keyed tables: rows held, memory, keys admitted, sightings not admitted and rows evicted so far.
function renderTables(card, w) {
  renderRows(card, "table.tables", w.tables || [], "table", (t) => {
    const mib = t.bytes === null || t.bytes === undefined ? null : t.bytes / 1048576;
    return [[t.table, null], [t.rows, 0], [mib, 1], [t.admitted, 0], [t.not_admitted, 0], [t.evicted, 0]];
  });
}

function renderTimeline() {
  const rows = [];
  for (const [model, events] of Object.entries(state.timeline)) for (const e of events) rows.push({ model, ...e });
  rows.sort((a, b) => b.at - a.at);
  const body = document.querySelector("#timeline tbody");
  body.innerHTML = "";
  for (const e of rows.slice(0, 100)) {
    const tr = document.createElement("tr");
    tr.className = e.kind === "held" && e.reason === "pinned" ? "held-by-pin" : e.kind;
    tr.dataset.kind = e.kind;
    const cells = [new Date(e.at * 1000).toLocaleTimeString(), e.model, e.kind, e.version, e.live ?? "–", e.reason || "",
                   e.by || ""];
    for (const value of cells) {
      const td = document.createElement("td");
      td.textContent = String(value);
      tr.appendChild(td);
    }
    body.appendChild(tr);
  }
}

function renderHeader() {
  document.getElementById("namespace").textContent = `namespace ${state.namespace}`;
  document.getElementById("source").textContent = `source: ${state.source}`;
  document.getElementById("champion").textContent = state.champion ? `champion: ${state.champion}` : "no champion named";
  const updated = document.getElementById("updated");
  updated.textContent = `updated ${new Date().toLocaleTimeString()} · ${state.ticks} samples`;
  updated.dataset.ticks = String(state.ticks);
  const errors = document.getElementById("errors");
  errors.innerHTML = "";
  for (const message of state.errors) {
    const div = document.createElement("div");
    div.textContent = message;
    errors.appendChild(div);
  }
}

function annotationText(note) {
  if (!note) return "";
  return [note.description || "", ...(note.tags || []).map((t) => `#${t}`)].filter(Boolean).join(" ");
}

function cell(tr, text) {
  const td = document.createElement("td");
  td.textContent = text;
  tr.appendChild(td);
  return td;
}

// One panel per model: its pointers, its newest versions with the gate's verdict and their
// annotations, and the operator's actions (sent to /api/actions, which needs the dashboard's token).
function renderModels() {
  const box = document.getElementById("models");
  const stateLine = document.getElementById("actions-state");
  stateLine.textContent = state.actions.enabled ? "" : state.actions.why_not;
  for (const [model, info] of Object.entries(state.models)) {
    let panel = document.getElementById(`model-${model}`);
    if (!panel) {
      panel = document.createElement("div");
      panel.className = "model";
      panel.id = `model-${model}`;
      panel.dataset.testid = `model-${model}`;
      panel.innerHTML = `<h3></h3><table><thead><tr><th>version</th><th>published</th><th>AUC</th><th>window</th><th>gate</th>` +
        `<th>notes</th></tr></thead><tbody></tbody></table><div class="form">` +
        `<select data-role="version"></select>` +
        `<input type="text" data-role="reason" placeholder="why (goes on the timeline)" maxlength="300">` +
        ["promote", "pin", "unpin", "rollback", "champion"].map((a) =>
          `<button data-action="${a}" data-testid="${model}:${a}">${a}</button>`).join("") +
        `</div><div class="form"><input type="text" data-role="note" placeholder="description of the version" ` +
        `maxlength="1000"><input type="text" data-role="tags" placeholder="tags, space-separated">` +
        `<button data-action="annotate" data-testid="${model}:annotate">annotate</button></div>`;
      const picker = panel.querySelector('select[data-role="version"]');
      picker.addEventListener("change", () => { picker.dataset.chosen = picker.value; });
      panel.querySelectorAll("button[data-action]").forEach((button) =>
        button.addEventListener("click", () => act(model, button.dataset.action, panel)));
      box.appendChild(panel);
    }
    const champion = state.champion === model ? ' <span class="badge">champion</span>' : "";
    panel.querySelector("h3").innerHTML = `${model}: live v${info.live ?? "–"}${info.pinned ? " (pinned)" : ""}, ` +
      `head v${info.head ?? "–"}${champion}`;
    panel.dataset.live = String(info.live ?? "");
    panel.dataset.pinned = String(Boolean(info.pinned));
    const body = panel.querySelector("tbody");
    body.innerHTML = "";
    for (const v of info.versions) {
      const tr = document.createElement("tr");
      tr.dataset.version = String(v.version);
      const marks = [v.version === info.live ? "live" : "", v.version === info.head ? "head" : ""].filter(Boolean);
      cell(tr, `v${v.version}${marks.length ? ` (${marks.join(", ")})` : ""}`);
      cell(tr, v.created_at ? new Date(v.created_at * 1000).toLocaleTimeString() : "");
      cell(tr, v.auc === null || v.auc === undefined ? "–" : v.auc.toFixed(4));
      cell(tr, v.auc_window === null || v.auc_window === undefined ? "–" : v.auc_window.toFixed(4));
      cell(tr, v.promoted ? "passed" : `held (${v.gate_reason || "?"})`);
      cell(tr, annotationText(v.annotation)).dataset.testid = `${model}:v${v.version}:notes`;
      body.appendChild(tr);
    }
    const select = panel.querySelector('select[data-role="version"]');
    const chosen = select.dataset.chosen || "";  // what the operator picked; else the live version
    select.innerHTML = "";
    for (const v of info.versions) {
      const option = document.createElement("option");
      option.value = String(v.version);
      option.textContent = `v${v.version}`;
      select.appendChild(option);
    }
    const keep = [...select.options].some((o) => o.value === chosen);
    if (keep || info.live !== null) select.value = keep ? chosen : String(info.live);
    panel.querySelectorAll("button[data-action]").forEach((button) => { button.disabled = !state.actions.enabled; });
  }
}

async function act(model, action, panel) {
  const result = document.getElementById("action-result");
  const operator = document.getElementById("operator").value.trim();
  localStorage.setItem("streamrec.operator", operator);
  const body = { model, action, by: operator, reason: panel.querySelector('[data-role="reason"]').value.trim() || null,
                 version: ["unpin", "champion"].includes(action) ? null
                   : Number(panel.querySelector('[data-role="version"]').value) || null };
  const missing = !operator ? "by: your name (above the panels)"
    : action !== "annotate" && !body.reason ? "reason: say why (it goes on the timeline)" : null;
  if (missing) {
    result.className = "error";
    result.textContent = `${action} not sent: ${missing}`;
    result.dataset.ok = "false";
    return;
  }
  if (action === "annotate") {
    body.description = panel.querySelector('[data-role="note"]').value.trim() || null;
    body.tags = panel.querySelector('[data-role="tags"]').value.split(/\s+/).filter(Boolean);
  }
  try {
    const response = await fetch("api/actions", { method: "POST", cache: "no-store", body: JSON.stringify(body),
      headers: { "Content-Type": "application/json", "X-Streamrec-Action": "1" } });
    const answer = await response.json();
    result.className = response.ok ? "" : "error";
    result.textContent = response.ok ? answer.message : `${action} refused: ${answer.error}`;
    result.dataset.ok = String(response.ok);
  } catch (err) {
    result.className = "error";
    result.textContent = `${action} failed: ${err}`;
    result.dataset.ok = "false";
  }
}

function setRange(seconds) {
  state.range = seconds;
  localStorage.setItem("streamrec.range", String(seconds));
  document.querySelectorAll("#range button").forEach((b) => b.classList.toggle("on", Number(b.dataset.range) === seconds));
  for (const entry of charts.values()) {
    const [min, max] = xRange(entry.plot, entry.plot.data[0].length ? entry.plot.data[0][0] : null);
    entry.plot.setScale("x", { min, max });
  }
}

document.querySelectorAll("#range button").forEach((b) => b.addEventListener("click", () => setRange(Number(b.dataset.range))));
document.getElementById("operator").value = localStorage.getItem("streamrec.operator") || "";
setRange(RANGES.includes(state.range) ? state.range : 3600);

async function poll() {
  try {
    const response = await fetch(`api/metrics?since=${state.since}`, { cache: "no-store" });
    if (response.ok) {
      absorb(await response.json());
      state.polls += 1;
      renderHeader();
      renderWorkers();
      renderModels();
      for (const chart of CHARTS) render(chart);
      renderTimeline();
    }
  } catch (err) {
    state.errors = [`dashboard server unreachable: ${err}`];
    renderHeader();
  }
  setTimeout(poll, 1000);
}

poll();
