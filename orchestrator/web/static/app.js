// distctl live view: applies the server's deltas (server-sent events) and draws its own charts.
// No framework, nothing from the network but this page's own server.
"use strict";

const TOKEN = document.querySelector('meta[name="distctl-token"]').content;
const MAX_LINES = 5000;
const $ = (id) => document.getElementById(id);

const model = {
  run: null, hosts: [], ranks: [], failure: null, marks: [],
  series: new Map(),      // "rank/key" -> {rank, key, gen, stride, points: [[step, t, mean, lo, hi]]}
  lines: [], lastSeq: -1, lastNotice: 0, skipped: 0, clockSkew: 0,
};
let stacksPending = false;  // the Stacks button waits for its answer
const dirty = { meta: false, keys: new Set(), lines: false, rebuildLog: false };
// Read by the browser test and the delay bench: what each chart drew last, and when.
window.distctlView = { model, drawn: new Map(), messages: 0 };

// ------------------------------------------------------------------ live updates

function connect() {
  const source = new EventSource("/events");
  source.onopen = () => { $("conn").textContent = "live"; };
  source.onerror = () => { $("conn").textContent = "disconnected, retrying…"; };
  source.onmessage = (event) => { apply(JSON.parse(event.data)); schedule(); };
}

function apply(d) {
  window.distctlView.messages++;
  if (d.run) {
    model.run = d.run; model.hosts = d.hosts; model.ranks = d.ranks; model.failure = d.failure;
    model.clockSkew = d.run.now - Date.now() / 1000;
    dirty.meta = true;
  }
  for (const u of d.series || []) {
    const id = u.rank + "/" + u.key;
    let s = model.series.get(id);
    if (!s || s.gen !== u.gen || u.from === 0) {
      s = { rank: u.rank, key: u.key, gen: u.gen, stride: u.stride, points: [] };
      model.series.set(id, s);
    }
    s.points.length = Math.min(s.points.length, u.from);
    for (const p of u.points) s.points.push(p);
    s.stride = u.stride;
    dirty.keys.add(u.key);
  }
  if (d.marks) { model.marks = d.marks; for (const s of model.series.values()) dirty.keys.add(s.key); }
  for (const line of d.lines || []) {
    if (line[0] <= model.lastSeq) continue;
    model.lastSeq = line[0];
    model.lines.push(line);
    dirty.lines = true;
  }
  if (model.lines.length > MAX_LINES + 500) model.lines.splice(0, model.lines.length - MAX_LINES);  // the pane keeps its own
  if (d.skipped) { model.skipped += d.skipped; }
  for (const [seq, , text] of d.notices || []) {
    if (seq <= model.lastNotice) continue;
    model.lastNotice = seq;
    notice(text);
  }
}

let scheduled = false;
function schedule() {
  if (scheduled) return;
  scheduled = true;
  requestAnimationFrame(() => { scheduled = false; render(); });
}

function render() {
  if (dirty.meta) { renderHeader(); renderHosts(); renderRanks(); renderFailure(); renderFilters(); }
  dirty.meta = false;
  renderCharts();
  if (dirty.lines || dirty.rebuildLog) renderLog();
}

// ------------------------------------------------------------------ run, hosts, ranks

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k === "style") node.style.cssText = v;   // CSSOM: the page's CSP allows no inline style attributes
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

function duration(seconds) {
  if (seconds == null) return "–";
  const s = Math.max(0, Math.round(seconds));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  return (h ? h + ":" : "") + String(m).padStart(h ? 2 : 1, "0") + ":" + String(r).padStart(2, "0");
}

function elapsed() {
  const run = model.run;
  if (!run) return null;
  const ended = ["finished", "failed", "stopped"].includes(run.state);
  return ended ? run.elapsed : Date.now() / 1000 + model.clockSkew - run.started;
}

function renderHeader() {
  const run = model.run;
  $("run-id").textContent = run.id;
  const badge = $("run-state");
  badge.textContent = run.state + (run.source === "pulled" ? " (from pulled logs)" : "");
  badge.className = "badge " + run.state;
  const inv = run.inventory.split("/").pop();
  const facts = $("run-facts");
  facts.replaceChildren(
    "inventory ", el("b", { text: inv, title: run.inventory }),
    " · started ", el("b", { text: new Date(run.started * 1000).toLocaleString() }),
    " · elapsed ", el("b", { id: "elapsed", text: duration(elapsed()) }),
    " · " + run.world_size + " ranks",
    ...(run.max_restarts ? [" · attempt ", el("b", { text: String(run.attempt) }),
      ", restarts ", el("b", { text: run.restarts + "/" + run.max_restarts })] : []));
  $("stop").disabled = !["running", "starting", "restarting", "unknown"].includes(run.state) || run.source === "pulled";
  $("stacks").disabled = stacksPending || $("stop").disabled;
}

setInterval(() => { const e = $("elapsed"); if (e) e.textContent = duration(elapsed()); }, 1000);

function meter(fraction, text) {
  const f = Math.max(0, Math.min(1, fraction || 0));
  return el("span", {}, el("span", { class: "meter" }, el("i", { style: "width:" + (f * 100).toFixed(0) + "%" })), text);
}

function renderHosts() {
  // The agent and GPU columns only where there is something to show: restarts on, a GPU found.
  const withAgent = model.run.max_restarts > 0, withGpu = model.hosts.some((h) => ((h.health || {}).gpus || []).length);
  const head = ["host", "address", "iface", "ranks", ...(withAgent ? ["agent"] : []), "load", "memory",
    ...(withGpu ? ["GPU"] : [])];
  $("hosts").tHead.replaceChildren(el("tr", {}, ...head.map((h) => el("th", { text: h }))));
  $("hosts").tBodies[0].replaceChildren(...model.hosts.map((h) => {
    const hl = h.health || {};
    const mem = hl.mem_total ? (1 - hl.mem_available / hl.mem_total) : null;
    const gpu = (hl.gpus || []).map((g) => g.util.toFixed(0) + "% " + (g.mem_used / 1024).toFixed(1) + "/" +
      (g.mem_total / 1024).toFixed(0) + "G").join(", ") || "–";
    const agent = h.agent ? ("attempt " + (h.agent.attempt ?? 0) + (h.agent.outcome ? ", " + h.agent.outcome : "")) : "–";
    const cells = [el("td", { text: h.name }), el("td", { text: h.address }), el("td", { text: h.interface || "–" }),
      el("td", { class: "num", text: String(h.ranks.length) }), ...(withAgent ? [el("td", { text: agent })] : []),
      el("td", { class: "num", text: hl.load ? hl.load[0].toFixed(2) : "–" }),
      el("td", {}, mem == null ? "–" : meter(mem, (mem * 100).toFixed(0) + "% of " + (hl.mem_total / 1048576).toFixed(0) + "G")),
      ...(withGpu ? [el("td", { text: gpu })] : [])];
    if (h.reachable === false) {
      cells.splice(4, cells.length - 4, el("td", { class: "state unreachable", colspan: String(head.length - 4),
        text: "unreachable: " + (h.why || "") }));
    }
    return el("tr", {}, ...cells);
  }));
}

function stateClass(r) {
  if (r.state === "exited") return r.code === 0 ? "exited-ok" : "exited-bad";
  return r.state;
}

function renderRanks() {
  const body = $("ranks").tBodies[0];
  body.replaceChildren(...model.ranks.map((r) => el("tr", {},
    el("td", { class: "num", text: String(r.rank) }), el("td", { text: r.host }),
    el("td", { class: "state " + stateClass(r), text: r.state + (r.code != null ? " " + r.code : "") }),
    el("td", { class: "num", text: r.step == null ? "–" : r.step + (r.total ? "/" + r.total : "") }),
    el("td", { class: "num", text: r.rate == null ? "–" : r.rate.toPrecision(3) }),
    el("td", { class: "straggler", text: r.straggler ? "straggler" : "" }))));
}

function renderFailure() {
  const f = model.failure;
  $("failure").hidden = !f;
  if (!f) return;
  $("failure-title").textContent = "rank " + f.rank + " on " + f.host + " failed first: " +
    (f.code == null ? "its processes are gone without an exit code" : "exited with code " + f.code) +
    (f.restarted ? " (the job restarted after it)" : "");
  $("failure-collateral").textContent = f.collateral.length ? "then: " + f.collateral.map((c) =>
    "rank " + c.rank + " on " + c.host + " (" + (c.code == null ? "killed" : "code " + c.code) + ")").join(", ") : "";
  $("failure-tail").textContent = f.tail.join("\n") || "(no lines seen from it)";
}

function notice(text) {
  const box = $("notices");
  box.append(el("div", { text: new Date().toLocaleTimeString() + "  " + text }));
  while (box.children.length > 6) box.firstChild.remove();
}

// ------------------------------------------------------------------ charts

const charts = new Map();   // key -> {canvas, legend, box}

function rankFilter() {
  const text = $("rank-filter").value.trim();
  if (!text) return null;
  const wanted = new Set();
  for (const part of text.split(",")) {
    const [a, b] = part.split("-").map((x) => parseInt(x, 10));
    if (Number.isNaN(a)) continue;
    const last = b === undefined || Number.isNaN(b) ? a : b;   // "3" or "2-5"
    for (let r = a; r <= last; r++) wanted.add(r);
  }
  return wanted;
}

function color(rank, alpha = 1) { return "hsla(" + ((rank * 137.508) % 360).toFixed(0) + ",70%,45%," + alpha + ")"; }

function keyOrder(a, b) {
  const first = ["loss", "samples_per_s", "test_accuracy"];
  const ia = first.indexOf(a), ib = first.indexOf(b);
  return (ia < 0 ? 99 : ia) - (ib < 0 ? 99 : ib) || a.localeCompare(b);
}

function renderCharts() {
  const keys = [...new Set([...model.series.values()].map((s) => s.key))].sort(keyOrder);
  $("no-curves").hidden = keys.length > 0;
  for (const key of keys) {
    if (!charts.has(key)) {
      const canvas = el("canvas");
      const box = el("div", { class: "chart" }, el("h3", { text: key }), canvas, el("div", { class: "legend" }));
      $("charts").append(box);
      charts.set(key, { canvas, box, legend: box.lastChild });
      canvas.addEventListener("mousemove", (e) => hover(key, e));
      canvas.addEventListener("mouseleave", () => { $("tooltip").hidden = true; });
      dirty.keys.add(key);
    }
  }
  const sorted = [...charts.keys()].sort(keyOrder);
  sorted.forEach((key) => $("charts").append(charts.get(key).box));
  for (const key of dirty.keys) if (charts.has(key)) drawChart(key);
  dirty.keys.clear();
}

function visibleSeries(key) {
  const wanted = rankFilter();
  return [...model.series.values()].filter((s) => s.key === key && (!wanted || wanted.has(s.rank)))
    .sort((a, b) => a.rank - b.rank);
}

function niceTicks(lo, hi, count) {
  const span = hi - lo || Math.abs(hi) || 1;
  const raw = span / count, mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw);
  const ticks = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) ticks.push(+v.toPrecision(12));
  return ticks;
}

function timeTicks(lo, hi, count) {
  // Seconds on a clock's steps (10 s, 1 min, 5 min, 1 h...), not 100 s.
  const steps = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400];
  const step = steps.find((s) => (hi - lo) / s <= count) || 86400 * Math.ceil((hi - lo) / count / 86400);
  const ticks = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi; v += step) ticks.push(v);
  return ticks;
}

function fmt(v) {
  const a = Math.abs(v);
  if (a !== 0 && (a >= 1e5 || a < 1e-3)) return v.toExponential(1);
  return +v.toPrecision(4) + "";
}

function geometry(key) {
  const { canvas } = charts.get(key);
  const xi = $("x-axis").value === "t" ? 1 : 0;
  const list = visibleSeries(key);
  let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
  for (const s of list) for (const p of s.points) {
    if (p[xi] == null) continue;
    x0 = Math.min(x0, p[xi]); x1 = Math.max(x1, p[xi]); y0 = Math.min(y0, p[3]); y1 = Math.max(y1, p[4]);
  }
  if (!Number.isFinite(x0)) { x0 = 0; x1 = 1; y0 = 0; y1 = 1; }
  if (x1 === x0) { x1 = x0 + 1; }
  const pad = (y1 - y0) * 0.06 || Math.abs(y1) * 0.1 || 1; y0 -= pad; y1 += pad;
  const w = canvas.clientWidth, h = canvas.clientHeight, L = 52, R = 10, T = 8, B = 22;
  return { xi, list, x0, x1, y0, y1, w, h, L, R, T, B,
    X: (x) => L + (x - x0) / (x1 - x0) * (w - L - R), Y: (y) => T + (1 - (y - y0) / (y1 - y0)) * (h - T - B) };
}

function drawChart(key) {
  const { canvas, legend } = charts.get(key);
  const dpr = window.devicePixelRatio || 1;
  const g = geometry(key);
  canvas.width = Math.round(g.w * dpr); canvas.height = Math.round(g.h * dpr);
  const c = canvas.getContext("2d");
  c.setTransform(dpr, 0, 0, dpr, 0, 0);
  c.clearRect(0, 0, g.w, g.h);
  c.font = "11px system-ui, sans-serif"; c.fillStyle = "#6b7280"; c.strokeStyle = "#eceff3"; c.lineWidth = 1;
  for (const v of niceTicks(g.y0, g.y1, 5)) {
    const y = Math.round(g.Y(v)) + 0.5;
    c.beginPath(); c.moveTo(g.L, y); c.lineTo(g.w - g.R, y); c.stroke();
    c.textAlign = "right"; c.textBaseline = "middle"; c.fillText(fmt(v), g.L - 6, y);
  }
  for (const v of (g.xi ? timeTicks : niceTicks)(g.x0, g.x1, 6)) {
    const x = Math.round(g.X(v)) + 0.5;
    c.beginPath(); c.moveTo(x, g.T); c.lineTo(x, g.h - g.B); c.stroke();
    c.textAlign = x > g.w - g.R - 20 ? "right" : "center"; c.textBaseline = "top";
    c.fillText(g.xi ? duration(v) : fmt(v), x, g.h - g.B + 5);
  }
  // Restarts and dropped hosts: dashed lines where they happened.
  c.save(); c.setLineDash([4, 3]); c.strokeStyle = "#d97706"; c.fillStyle = "#b45309";
  for (const m of model.marks) {
    const at = g.xi ? m.t : m.step;
    if (at == null || at < g.x0 || at > g.x1) continue;
    const x = Math.round(g.X(at)) + 0.5;
    c.beginPath(); c.moveTo(x, g.T); c.lineTo(x, g.h - g.B); c.stroke();
    c.textAlign = "left"; c.textBaseline = "top"; c.fillText(m.text.split(" after ")[0], x + 3, g.T + 2);
  }
  c.restore();
  const few = g.list.length <= 8;
  for (const s of g.list) {
    if (few && s.stride > 1) {       // the min-max band of merged buckets
      c.fillStyle = color(s.rank, 0.15); c.beginPath();
      const pts = s.points.filter((p) => p[g.xi] != null);
      pts.forEach((p, i) => (i ? c.lineTo(g.X(p[g.xi]), g.Y(p[4])) : c.moveTo(g.X(p[g.xi]), g.Y(p[4]))));
      for (let i = pts.length - 1; i >= 0; i--) c.lineTo(g.X(pts[i][g.xi]), g.Y(pts[i][3]));
      c.fill();
    }
    c.strokeStyle = color(s.rank); c.lineWidth = few ? 1.6 : 1; c.beginPath();
    let prev = null;
    for (const p of s.points) {
      const x = p[g.xi];
      if (x == null) { prev = null; continue; }
      if (prev === null || x < prev) c.moveTo(g.X(x), g.Y(p[2])); else c.lineTo(g.X(x), g.Y(p[2]));
      prev = x;
    }
    c.stroke();
    const last = s.points[s.points.length - 1];
    if (last) window.distctlView.drawn.set(s.rank + "/" + key, { step: last[0], hi: last[4], at: Date.now() });
  }
  legend.replaceChildren(...(g.list.length <= 16
    ? g.list.map((s) => el("span", {}, el("i", { style: "background:" + color(s.rank) }), "rank " + s.rank))
    : [el("span", { text: g.list.length + " ranks (filter with \u201cranks\u201d to pick some)" })]));
}

function hover(key, e) {
  const g = geometry(key), rect = charts.get(key).canvas.getBoundingClientRect();
  const mx = e.clientX - rect.left, my = e.clientY - rect.top;
  let best = null;
  for (const s of g.list) for (const p of s.points) {
    if (p[g.xi] == null) continue;
    const d = Math.hypot(g.X(p[g.xi]) - mx, g.Y(p[2]) - my);
    if (!best || d < best.d) best = { d, s, p };
  }
  const tip = $("tooltip");
  if (!best || best.d > 30) { tip.hidden = true; return; }
  tip.textContent = "rank " + best.s.rank + "  step " + best.p[0] + (best.p[1] != null ? "  t " + duration(best.p[1]) : "") +
    "\n" + key + " " + fmt(best.p[2]) + (best.p[3] !== best.p[4] ? "  (" + fmt(best.p[3]) + " … " + fmt(best.p[4]) + ")" : "");
  tip.style.left = (e.clientX + 12) + "px"; tip.style.top = (e.clientY + 12) + "px"; tip.hidden = false;
}

// For the bench: milliseconds one redraw of every chart takes.
window.distctlView.redraw = () => { const t0 = performance.now(); for (const k of charts.keys()) drawChart(k); return performance.now() - t0; };

$("x-axis").addEventListener("change", () => { for (const k of charts.keys()) dirty.keys.add(k); schedule(); });
$("rank-filter").addEventListener("input", () => { for (const k of charts.keys()) dirty.keys.add(k); schedule(); });
window.addEventListener("resize", () => { for (const k of charts.keys()) dirty.keys.add(k); schedule(); });

// ------------------------------------------------------------------ log pane

function renderFilters() {
  const hostSel = $("log-host"), rankSel = $("log-rank");
  if (hostSel.options.length - 1 !== model.hosts.length) {
    const keep = hostSel.value;
    hostSel.replaceChildren(el("option", { value: "", text: "all" }),
      ...model.hosts.map((h) => el("option", { value: h.name, text: h.name })));
    hostSel.value = keep;
  }
  const ranks = model.ranks.filter((r) => !hostSel.value || r.host === hostSel.value);
  if (rankSel.options.length - 1 !== ranks.length) {
    const keep = rankSel.value;
    rankSel.replaceChildren(el("option", { value: "", text: "all" }),
      ...ranks.map((r) => el("option", { value: String(r.rank), text: String(r.rank) })));
    rankSel.value = ranks.some((r) => String(r.rank) === keep) ? keep : "";
  }
}

let shownSeq = -1;
function lineMatches(line) {
  const host = $("log-host").value, rank = $("log-rank").value, q = $("log-search").value.toLowerCase();
  return (!host || line[2] === host) && (!rank || String(line[3]) === rank) && (!q || line[4].toLowerCase().includes(q));
}

function lineNode(line) {
  return el("div", line[1] == null ? { class: "loaded" } : {}, el("span", { class: "p", text: "[" + line[2] + " r" + line[3] + "] " }), line[4]);
}

function renderLog() {
  const pane = $("log");
  const rebuild = dirty.rebuildLog;
  dirty.lines = dirty.rebuildLog = false;
  if (rebuild) { pane.replaceChildren(); shownSeq = -1; }
  const fragment = document.createDocumentFragment();
  for (const line of model.lines) if (line[0] > shownSeq && lineMatches(line)) fragment.append(lineNode(line));
  if (model.lines.length) shownSeq = model.lines[model.lines.length - 1][0];
  pane.append(fragment);
  while (pane.childElementCount > 2000) pane.firstChild.remove();
  $("log-note").textContent = model.skipped ? model.skipped + " lines skipped while they came too fast" : "";
  if ($("log-follow").checked) pane.scrollTop = pane.scrollHeight;
}

for (const id of ["log-host", "log-rank", "log-search"]) {
  $(id).addEventListener("input", () => { if (id === "log-host") renderFilters(); dirty.rebuildLog = true; schedule(); });
}

$("log-load").addEventListener("click", async () => {
  const host = $("log-host").value, rank = $("log-rank").value;
  const ranks = rank ? [rank] : model.ranks.filter((r) => !host || r.host === host).map((r) => String(r.rank));
  if (ranks.length > 8) { $("log-note").textContent = "pick a host or a rank first (at most 8 ranks at once)"; return; }
  for (const r of ranks) {
    const response = await fetch("/api/log?rank=" + encodeURIComponent(r) + "&lines=200");
    if (!response.ok) $("log-note").textContent = "rank " + r + ": " + ((await response.json()).error || response.status);
  }
});

$("failure-log").addEventListener("click", () => {
  const f = model.failure;
  if (!f) return;
  $("log-host").value = ""; renderFilters(); $("log-rank").value = String(f.rank);
  dirty.rebuildLog = true; schedule();
  $("log").scrollIntoView({ behavior: "smooth" });
});

// ------------------------------------------------------------------ stop

$("stop").addEventListener("click", () => {
  $("confirm-text").textContent = "Stop run " + model.run.id + " on every host? Each rank gets SIGTERM (the trainer " +
    "checkpoints), then SIGKILL after the grace period; then distctl checks that nothing is left, as `distctl stop` does.";
  $("confirm").showModal();
});

$("confirm-cancel").addEventListener("click", () => $("confirm").close("cancel"));
$("confirm-stop").addEventListener("click", () => $("confirm").close("stop"));
$("confirm").addEventListener("close", async () => {
  if ($("confirm").returnValue !== "stop") return;
  $("stop").disabled = true;
  notice("stopping run " + model.run.id + " on every host…");
  try {
    const response = await fetch("/api/stop", { method: "POST", headers: { "X-Distctl-Token": TOKEN } });
    const result = await response.json();
    for (const line of result.lines || []) notice(line);
    if (!result.ok) $("stop").disabled = false;
  } catch (err) {
    notice("stop failed: " + err);
    $("stop").disabled = false;
  }
});

// ------------------------------------------------------------------ stacks

$("stacks").addEventListener("click", async () => {
  stacksPending = true;
  $("stacks").disabled = true;
  $("stacks-panel").hidden = false;
  $("stacks-rollcall").textContent = "taking every rank's stacks…";
  $("stacks-text").textContent = "";
  try {
    const response = await fetch("/api/stacks", { method: "POST", headers: { "X-Distctl-Token": TOKEN } });
    const result = await response.json();
    $("stacks-rollcall").textContent = result.error || result.rollcall;
    $("stacks-text").textContent = (result.lines || []).join("\n").replace(/^\n+/, "");  // no blank first line
  } catch (err) {
    $("stacks-rollcall").textContent = "stacks failed: " + err;
  }
  stacksPending = false;
  dirty.meta = true; schedule();
});

$("stacks-close").addEventListener("click", () => { $("stacks-panel").hidden = true; });

connect();
