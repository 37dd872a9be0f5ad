// streamrec dashboard: polls /api/metrics once per collector interval and extends the charts in
// place (no reloads). Every series is one worker's value over time, so a challenger's AUC sits
// point by point beside the champion's. State is on window.streamrec for the browser tests.
"use strict";

const PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"];
const EVENT_COLOURS = { rollback: "#d62728", held: "#ff7f0e", promote: "#1f5fd6", pin: "#1f5fd6", unpin: "#2ca02c" };
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
            ["version", "head version", 0], ["live_version", "live version", 0], ["rollbacks", "rollbacks", 0]],
  scorer: [["served_version", "served version", 0], ["served_delta_seq", "delta", 0],
           ["predictions", "predictions", 0]],
  joiner: [["examples_emitted", "examples written", 0], ["positives", "positives", 0], ["lag", "lag", 0],
           ["dead_letters", "dead letters", 0]],
};

const state = { since: 0, workers: new Map(), timeline: {}, champion: null, errors: [], ticks: 0, polls: 0 };
const charts = new Map();   // chart id -> { plot, signature, labels }
window.streamrec = { state, charts, lastValue };

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
  }
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
      const colour = EVENT_COLOURS[e.kind];
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
      scales: { x: { time: true } },
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
                       `${w.role} ${w.model} / ${w.worker} <span class="state"></span></h3><dl>${rows}</dl>`;
      box.appendChild(card);
    }
    card.querySelector(".state").textContent = w.stopped ? "(stopped)" : "";
    card.dataset.stopped = String(Boolean(w.stopped));
    for (const [name, , digits] of STATS[w.role] || []) {
      const values = w.values[name] || [];
      const value = values.length ? values[values.length - 1] : null;
      const cell = card.querySelector(`[data-name="${name}"]`);
      cell.textContent = format(value, digits);
      cell.dataset.value = value === null ? "" : String(value);
    }
  }
}

function renderTimeline() {
  const rows = [];
  for (const [model, events] of Object.entries(state.timeline)) for (const e of events) rows.push({ model, ...e });
  rows.sort((a, b) => b.at - a.at);
  const body = document.querySelector("#timeline tbody");
  body.innerHTML = "";
  for (const e of rows.slice(0, 100)) {
    const tr = document.createElement("tr");
    tr.className = e.kind;
    tr.dataset.kind = e.kind;
    const cells = [new Date(e.at * 1000).toLocaleTimeString(), e.model, e.kind, e.version, e.live ?? "–", e.reason || ""];
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

async function poll() {
  try {
    const response = await fetch(`api/metrics?since=${state.since}`, { cache: "no-store" });
    if (response.ok) {
      absorb(await response.json());
      state.polls += 1;
      renderHeader();
      renderWorkers();
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
