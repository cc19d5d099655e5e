"use strict";
// The dashboard: reads the REST API with the session cookie, listens to /api/v1/events, and writes
// every value with textContent (never as HTML): payloads, labels and error text stay inert.

const state = {role: null, canOperate: false, reads: false, refreshTimer: null, pending: new Set(), autoscale: [],
               sweep: null, sweepAt: null, model: null, registry: false};

function el(tag, text, attrs) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  return node;
}

async function api(path, options = {}) {
  const headers = {"X-Clusterai-Request": "1", ...(options.body ? {"Content-Type": "application/json"} : {})};
  const answer = await fetch(path, {credentials: "same-origin", ...options, headers});
  if (answer.status === 401) { window.location.assign("/login"); throw new Error("signed out"); }
  const body = await answer.json().catch(() => ({}));
  if (!answer.ok) throw Object.assign(new Error(body.error || `HTTP ${answer.status}`), {status: answer.status});
  return body;
}

function say(text) { document.getElementById("message").textContent = text; }

function fmt(value, digits = 1) { return value === null || value === undefined ? "-" : Number(value).toFixed(digits); }

function pairs(mapping) {
  return Object.entries(mapping || {})
    .map(([k, v]) => (k === "MEMORY" ? `${k}=${fmt(v / 2 ** 30)} GiB` : `${k}=${v}`)).join(", ") || "-";
}

function fillRows(tableId, rows) {
  const body = document.querySelector(`#${tableId} tbody`);
  body.replaceChildren(...rows);
}

function row(cells) {
  const tr = el("tr");
  for (const cell of cells) {
    const td = el("td");
    if (cell instanceof Node) td.append(cell); else td.textContent = cell === null || cell === undefined ? "-" : String(cell);
    tr.append(td);
  }
  return tr;
}

function button(label, action, attrs) {
  const b = el("button", label, {type: "button", ...(attrs || {})});
  b.addEventListener("click", async () => {
    b.disabled = true;
    try { await action(); } catch (error) { say(`${label} failed: ${error.message}`); } finally { b.disabled = false; }
  });
  return b;
}

// -- overview ------------------------------------------------------------------------------------

function card(label, value) {
  const box = el("div", null, {class: "card"});
  box.append(el("span", label, {class: "label"}), el("strong", value));
  return box;
}

async function refreshStatus() {
  const s = await api("/api/v1/cluster/status?window=60");
  const lat = s.latency;
  document.getElementById("cards").replaceChildren(
    card("workers", s.workers.total), card("active", s.workers.active), card("failed", s.workers.failed),
    card("queue", s.queue_depth), card("throughput / min", fmt(s.throughput.per_minute, 0)),
    card("p50 latency", lat.p50 === null ? "-" : `${fmt(lat.p50 * 1000)} ms`),
    card("p95 latency", lat.p95 === null ? "-" : `${fmt(lat.p95 * 1000)} ms`),
    card("error rate", `${fmt(s.error_rate * 100)} %`), card("dead letters", s.dead_letters));
  const alerts = document.getElementById("alerts");
  alerts.replaceChildren(...(s.alerts.length ? s.alerts.map((a) => el("li", a.message, {class: a.severity}))
                                              : [el("li", "none", {class: "ok"})]));
  fillRows("queues-table", s.queues.map((q) => row([q.queue, q.queued, q.pending, q.running, pairs(q.by_priority)])));
  const link = document.getElementById("dask-link");
  if (s.dask_dashboard && !link.firstChild) {
    link.append("Tasks as Dask sees them: ", el("a", "Dask dashboard", {href: s.dask_dashboard, rel: "noopener"}));
  }
}

const SVG = "http://www.w3.org/2000/svg";

function svgNode(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  return node;
}

// lines: [{cls, points: [[x from 0 to 1, value], ...]}] on one scale, from 0 to the largest value
function drawLines(svg, lines, digits) {
  const max = Math.max(1e-9, ...lines.flatMap((l) => l.points.map(([, v]) => v || 0)));
  const nodes = lines.map((l) => svgNode("polyline", {
    class: l.cls,
    points: l.points.map(([x, v]) => `${(x * 600).toFixed(1)},${(115 - ((v || 0) / max) * 105).toFixed(1)}`).join(" "),
  }));
  const label = svgNode("text", {x: "4", y: "12"});
  label.textContent = `max ${fmt(max, digits === undefined ? (max < 10 ? 2 : 0) : digits)}`;
  svg.replaceChildren(...nodes, label);
}

function drawChart(svgId, values) {
  const last = Math.max(1, values.length - 1);
  drawLines(document.getElementById(svgId), [{cls: "line", points: values.map((v, i) => [i / last, v])}]);
}

async function refreshHistory() {
  const h = await api("/api/v1/cluster/history?minutes=60");
  drawChart("chart-throughput", h.minutes.map((m) => m.succeeded));
  drawChart("chart-latency", h.minutes.map((m) => m.mean_latency));
}

// -- workers -------------------------------------------------------------------------------------

async function command(worker, action) {
  const answer = await api(`/api/v1/workers/${encodeURIComponent(worker)}/${action}?wait=10`, {method: "POST"});
  say(answer.done ? `worker ${answer.worker}: ${answer.outcome}` : answer.message);
  await refreshWorkers();
}

async function refreshWorkers() {
  const {workers} = await api("/api/v1/workers");
  const total = workers.reduce((n, w) => n + w.completed, 0);
  fillRows("share", workers.map((w) => row([w.name, w.completed, total ? `${fmt((100 * w.completed) / total)} %` : "-"])));
  fillRows("workers-table", workers.map((w) => {
    const actions = el("span");
    if (state.canOperate) {
      actions.append(w.status === "draining" || w.status === "drained"
        ? button("Undrain", () => command(w.name, "undrain"), {class: "op"})
        : button("Drain", () => command(w.name, "drain"), {class: "op"}),
      button("Restart", () => command(w.name, "restart"), {class: "op"}));
    }
    const r = row([w.name, w.status, pairs(w.labels), pairs(w.resources), fmt(w.metrics.cpu, 0),
                   fmt(w.metrics.memory_percent, 0),
                   w.metrics.gpu_memory ? `${fmt(w.metrics.gpu_memory / 2 ** 20, 0)} MiB` : "-", w.inflight,
                   w.breaker, actions]);
    r.dataset.worker = w.name;
    return r;
  }));
}

// -- jobs ----------------------------------------------------------------------------------------

function jobQuery() {
  const params = new URLSearchParams({limit: "100"});
  for (const [key, id] of [["state", "filter-state"], ["task", "filter-task"], ["queue", "filter-queue"]]) {
    const value = document.getElementById(id).value.trim();
    if (value) params.set(key, value);
  }
  return params.toString();
}

function jobActions(job) {
  const span = el("span");
  span.append(button("Details", () => showJob(job.id)));
  if (state.canOperate && ["pending", "queued", "running"].includes(job.state)) {
    span.append(button("Cancel", async () => { await api(`/api/v1/jobs/${job.id}`, {method: "DELETE"}); await refreshJobs(); }, {class: "op"}));
  }
  if (state.canOperate && ["dead", "cancelled", "succeeded"].includes(job.state)) {
    span.append(button("Retry", async () => { await api(`/api/v1/jobs/${job.id}/retry`, {method: "POST"}); await refreshJobs(); }, {class: "op"}));
  }
  return span;
}

function jobRow(job) {
  const r = row([job.id, job.task, job.state, job.priority, job.queue, job.attempt, job.worker, jobActions(job)]);
  r.dataset.job = job.id;
  r.dataset.state = job.state;
  return r;
}

async function refreshJobs() {
  const {jobs} = await api(`/api/v1/jobs?${jobQuery()}`);
  fillRows("jobs-table", jobs.map(jobRow));
}

async function showJob(id) {
  const job = await api(`/api/v1/jobs/${id}`);
  const box = document.getElementById("job-detail");
  const list = el("dl");
  for (const key of ["id", "task", "state", "queue", "priority", "worker", "attempt", "owner", "waiting", "error"]) {
    list.append(el("dt", key), el("dd", job[key] === null ? "-" : job[key]));
  }
  list.append(el("dt", "placement"), el("dd", `requires ${pairs(job.resources)}; labels ${pairs(job.labels)}; prefers ${pairs(job.prefers)}`));
  list.append(el("dt", "payload"), el("dd", null).appendChild(el("pre", JSON.stringify(job.payload, null, 2))).parentNode);
  list.append(el("dt", "result"), el("dd", null).appendChild(el("pre", JSON.stringify(job.result, null, 2))).parentNode);
  const attempts = el("table");
  attempts.append(row(["#", "worker", "outcome", "seconds", "error"]));
  for (const a of job.attempts) {
    attempts.append(row([a.number, a.worker, a.outcome || "running",
                         a.finished_at ? fmt(a.finished_at - a.started_at, 3) : "-", a.error || a.late]));
  }
  box.replaceChildren(el("h3", `Job ${job.id}`), list, el("h4", "Attempts"), attempts,
                      button("Close", () => { box.hidden = true; }));
  box.hidden = false;
  box.querySelector("button").focus();
}

// -- dead letters --------------------------------------------------------------------------------

async function refreshDlq() {
  const {jobs} = await api("/api/v1/dlq?limit=100");
  fillRows("dlq-table", jobs.map((job) => {
    const actions = el("span");
    if (state.canOperate) {
      actions.append(button("Requeue", async () => {
        await api("/api/v1/dlq/requeue", {method: "POST", body: JSON.stringify({ids: [job.id]})});
        say(`job ${job.id} requeued`);
        await refreshDlq();
      }, {class: "op"}));
    }
    const r = row([job.id, job.task, job.attempt, (job.error || "").split("\n")[0], actions]);
    r.children[3].className = "long";
    r.dataset.job = job.id;
    return r;
  }));
}

// -- pipelines and camera counts -----------------------------------------------------------------

function progress(stages) {
  return stages.map((s) => `${s.name} ${s.done}/${s.total === null ? "?" : s.total}`).join(" · ");
}

async function refreshPipelines() {
  const {runs} = await api("/api/v1/pipelines/runs?limit=20");
  const details = await Promise.all(runs.map((run) => api(`/api/v1/pipelines/runs/${run.id}`)));
  fillRows("runs-table", details.map((run) => {
    const r = row([run.id, run.pipeline, run.state, progress(run.stages), fmt((run.finished_at || Date.now() / 1000) - run.created_at),
                   button("Stages", () => showRun(run.id).catch((error) => say(error.message)))]);
    r.dataset.run = run.id;
    return r;
  }));
}

async function showRun(id) {
  const run = await api(`/api/v1/pipelines/runs/${id}`);
  const box = document.getElementById("run-detail");
  const stages = el("table");
  stages.append(row(["stage", "task", "done", "of", "reused", "states"]));
  for (const s of run.stages) {
    stages.append(row([s.name, s.task, s.done, s.total === null ? "?" : s.total, s.reused,
                       Object.entries(s.counts).map(([k, v]) => `${k} ${v}`).join(", ")]));
  }
  const problems = el("ul");
  for (const job of run.jobs.filter((j) => j.error)) {
    problems.append(el("li", `${job.stage}/${job.item} (job ${job.job}) ${job.state}: ${job.error.split("\n")[0]}`));
  }
  for (const [where, why] of Object.entries(run.problems)) problems.append(el("li", `${where}: ${why}`));
  box.replaceChildren(el("h3", `Pipeline run ${run.id}: ${run.pipeline}, ${run.state}`), stages,
                      el("h4", "Problems"), problems, button("Close", () => { box.hidden = true; }));
  box.hidden = false;
  box.querySelector("button").focus();
}

async function refreshCounts() {
  const {series} = await api("/api/v1/counts?limit=1");
  fillRows("counts-table", series.map((s) => {
    const r = row([s.camera, s.job_id, s.total, s.left_to_right, s.right_to_left, fmt(s.video_time), s.points,
                   new Date(s.at * 1000).toLocaleTimeString()]);
    r.dataset.camera = s.camera;
    return r;
  }));
}

// -- the LLM gateway's backends ------------------------------------------------------------------

const NONE = "\u2014";  // an em dash: not configured, or nothing measured yet

function ago(at) {  // an ISO time ahead as "in 4 min"; kept for good (9999-12-31, or Ollama's own far future): "kept"
  const ms = Date.parse(at) - Date.now();
  if (Number.isNaN(ms)) return "?";
  if (ms > 100 * 365 * 86400e3) return "kept";
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return `in ${s} s`;
  if (s < 3600) return `in ${Math.round(s / 60)} min`;
  return s < 86400 ? `in ${fmt(s / 3600)} h` : `in ${fmt(s / 86400)} d`;
}

function placed(m) {  // where the model is loaded: one mark per backend, expiring ones flagged
  const cell = el("span", null, {class: "where"});
  const loaded = m.backends.filter((b) => b.loaded);
  for (const b of loaded) {
    const until = b.expires_at ? ago(b.expires_at) : null;
    const text = `${b.name}${b.expiring ? ` expiring${until ? ` ${until}` : ""}` : until ? ` (${until})` : ""}`;
    cell.append(el("span", text, {class: b.expiring ? "backend expiring" : "backend", "data-backend": b.name,
                                  "data-state": b.expiring ? "expiring" : "loaded",
                                  title: b.expires_at ? `loaded on ${b.name} until ${b.expires_at}` : `loaded on ${b.name}`}));
  }
  const idle = m.backends.filter((b) => !b.loaded).map((b) => b.name).join(", ");  // they have it, not loaded
  if (!loaded.length) cell.append(el("span", idle ? `not loaded (on ${idle})` : "not loaded", {class: "hint"}));
  else if (idle) cell.append(el("span", `also on ${idle}`, {class: "hint"}));
  return cell;
}

function rate(value) { return value === null || value === undefined ? NONE : `${fmt(value * 100, 0)} %`; }

async function refreshModels() {
  const {models, backends, queued} = await api("/api/v1/models");
  document.getElementById("models-queued").textContent =
    backends.length ? `${queued} requests waiting for a free backend` : "no model servers: see gateway.backends and --serve-model";
  fillRows("fleet-table", (models || []).map((m) => {
    const asked = m.replicas === null || m.replicas === undefined ? NONE : m.replicas;
    const r = row([m.model, asked, placed(m), m.cold_loads, rate(m.cache_hit_rate),
                   m.tokens_per_second === null || m.tokens_per_second === undefined ? NONE : fmt(m.tokens_per_second),
                   m.requests]);
    if (asked !== NONE) {
      const keep = m.keep_alive === null || m.keep_alive === undefined ? "the backend's default" : m.keep_alive;
      r.children[1].title = `gateway.models: ${plural(m.replicas, "replica")}${m.preload ? ", preloaded" : ""}, keep_alive ${keep}`;
    }
    r.children[2].className = "wrap";
    r.dataset.model = m.model;
    r.dataset.loadedOn = m.loaded_on;
    return r;
  }));
  fillRows("models-table", backends.map((b) => {
    const models = b.models.map((m) => (b.loaded.includes(m) ? `${m}*` : m)).join(", ");
    const r = row([b.name, b.kind, b.reachable ? "yes" : "no", b.breaker, `${b.in_flight}/${b.max_concurrency}`, models,
                   b.requests, b.errors]);
    r.dataset.backend = b.name;
    return r;
  }));
}

// -- autoscaling ---------------------------------------------------------------------------------

function when(at) {
  if (at === null || at === undefined) return "-";
  const date = new Date(at * 1000);
  return date.toDateString() === new Date().toDateString() ? date.toLocaleTimeString() : date.toLocaleString();
}

function plural(n, word) { return `${n} ${word}${n === 1 ? "" : "s"}`; }

function bounds(profiles) {
  return Object.entries(profiles || {}).map(([name, b]) => `${name} ${b.min}..${b.max}`).join(", ");
}

function autoscaleStatus(a) {
  const override = a.override
    ? [`operator override: ${a.override.enabled ? "enable" : "disable"}${bounds(a.override.profiles) ? `, bounds ${bounds(a.override.profiles)}` : ""}`]
    : [];
  if (!a.state) {
    return ["autoscaler has not reported yet", a.enabled ? "enabled" : "disabled",
            ...(a.configured ? [] : ["no autoscale section in cluster.yaml"]), ...override].join(" · ");
  }
  const s = a.state;
  return [s.enabled ? "enabled" : "disabled", `provider ${s.provider}`,
          a.running ? `head reporting (last report ${when(a.reported_at)})`
                    : `head not reporting (last report ${when(a.reported_at)})`,
          ...(s.unmanaged ? [`${plural(s.unmanaged, "worker")} not managed by the autoscaler`] : []),
          ...override].join(" · ");
}

function backlogLine(u) {
  const needs = [...(Object.keys(u.requires || {}).length ? [pairs(u.requires)] : []),
                 ...((u.labels || []).length ? [`labels ${u.labels.join(", ")}`] : [])].join(" and ") || "placement";
  return `${plural(u.queued, "queued job")} in '${u.queue}' need ${needs}: no profile can run them`;
}

// per profile, [x from 0 to 1, value] of ready and desired workers: steps, a count holds until the next sample
function sampleLines(samples, name) {
  const mine = samples.filter(([, by]) => by && by[name]);
  if (!mine.length) return [[], []];
  const first = mine[0][0];
  const span = mine[mine.length - 1][0] - first;
  const ready = [];
  const desired = [];
  mine.forEach(([at, by], i) => {
    const x = span > 0 ? (at - first) / span : 0;
    if (i > 0) { ready.push([x, mine[i - 1][1][name][0]]); desired.push([x, mine[i - 1][1][name][1]]); }
    ready.push([x, by[name][0]]); desired.push([x, by[name][1]]);
  });
  if (span <= 0) { ready.push([1, ready[0][1]]); desired.push([1, desired[0][1]]); }  // one moment: a flat line
  return [ready, desired];
}

function profileChart(name, samples) {
  const [ready, desired] = sampleLines(samples, name);
  const mine = samples.filter(([, by]) => by && by[name]);
  const figure = el("figure", null, {"data-profile": name});
  const caption = el("figcaption", `${name}: workers${mine.length ? `, ${when(mine[0][0])} to ${when(mine[mine.length - 1][0])}` : ", no samples yet"} `);
  caption.append(el("span", "ready", {class: "key ready"}), el("span", "desired", {class: "key desired"}));
  const svg = svgNode("svg", {viewBox: "0 0 600 120", role: "img", "aria-label": `${name} workers, ready and desired`});
  drawLines(svg, [{cls: "line ready", points: ready}, {cls: "line desired", points: desired}], 0);
  figure.append(caption, svg);
  return figure;
}

function fillProfileChoice(profiles) {
  const select = document.getElementById("autoscale-profile");
  if (!select) return;  // not an operator: no form
  const names = profiles.map((p) => p.name);
  if ([...select.options].map((o) => o.value).join("\n") !== names.join("\n")) {
    const chosen = select.value;
    select.replaceChildren(...names.map((n) => el("option", n, {value: n})));
    if (names.includes(chosen)) select.value = chosen;
  }
  select.parentNode.hidden = names.length < 2;
  const profile = profiles.find((p) => p.name === select.value) || profiles[0];
  document.getElementById("autoscale-min").placeholder = profile ? profile.min : "";
  document.getElementById("autoscale-max").placeholder = profile ? profile.max : "";
}

async function refreshAutoscale() {
  const a = await api("/api/v1/autoscale?decisions=20");
  const s = a.state;
  const status = document.getElementById("autoscale-status");
  status.textContent = autoscaleStatus(a);
  status.dataset.running = a.running ? "yes" : "no";
  const problem = document.getElementById("autoscale-provider-error");
  problem.textContent = s && s.error ? `provider error: ${s.error}` : "";
  problem.hidden = !(s && s.error);
  document.getElementById("autoscale-backlog").replaceChildren(
    ...(s ? s.unschedulable : []).map((u) => el("li", backlogLine(u), {class: "warning"})));
  const profiles = s ? s.profiles : [];
  fillRows("profiles-table", profiles.map((p) => {
    const r = row([p.name, `${p.min}..${p.max}`, p.ready, p.starting, p.draining, p.busy, p.desired, p.reason]);
    r.children[7].className = "long";
    r.dataset.profile = p.name;
    return r;
  }));
  const samples = s ? s.samples || [] : [];
  const names = [...new Set([...profiles.map((p) => p.name), ...samples.flatMap(([, by]) => Object.keys(by || {}))])];
  document.getElementById("autoscale-charts").replaceChildren(
    ...(names.length ? names.map((n) => profileChart(n, samples)) : [el("p", "no samples yet", {class: "hint"})]));
  fillRows("decisions-table", a.decisions.map((d) => {
    const r = row([when(d.at), d.profile, `${d.from} → ${d.to}`, d.reason]);
    r.children[3].className = "long";
    r.dataset.decision = d.id;
    return r;
  }));
  state.autoscale = profiles;
  fillProfileChoice(profiles);
}

async function changeAutoscale(enabled) {
  const error = document.getElementById("autoscale-form-error");
  const body = {enabled};
  try {
    for (const key of ["min", "max"]) {
      const input = document.getElementById(`autoscale-${key}`);
      if (input.validity.badInput) throw new Error(`${key} must be a whole number`);
      if (input.value.trim() !== "") body[key] = Number(input.value);
    }
    const select = document.getElementById("autoscale-profile");
    if (!select.parentNode.hidden && select.value && ("min" in body || "max" in body)) body.profile = select.value;
    const {override} = await api("/api/v1/autoscale", {method: "PUT", body: JSON.stringify(body)});
    error.textContent = "";
    error.hidden = true;
    for (const key of ["min", "max"]) document.getElementById(`autoscale-${key}`).value = "";
    say(`autoscaler ${override.enabled ? "enabled" : "disabled"}${bounds(override.profiles) ? ` (bounds ${bounds(override.profiles)})` : ""}: the head applies it at its next round`);
    await refreshAutoscale();
  } catch (failure) {
    error.textContent = failure.message;
    error.hidden = false;
  }
}

function autoscaleForm() {
  const form = el("form", null, {id: "autoscale-form", class: "filter", "aria-label": "autoscaler bounds"});
  const choice = el("label", "profile ");
  choice.append(el("select", null, {id: "autoscale-profile"}));
  choice.hidden = true;
  const number = (key) => {
    const label = el("label", `${key} `);
    label.append(el("input", null, {id: `autoscale-${key}`, type: "number", min: "0", step: "1", size: "5", inputmode: "numeric"}));
    return label;
  };
  const buttons = [[true, "Enable"], [false, "Disable"]].map(([enabled, label]) => {
    const b = el("button", label, {type: "button", class: "op"});
    b.addEventListener("click", async () => {
      for (const other of form.querySelectorAll("button")) other.disabled = true;
      try { await changeAutoscale(enabled); } finally { for (const other of form.querySelectorAll("button")) other.disabled = false; }
    });
    return b;
  });
  form.append(choice, number("min"), number("max"), ...buttons);
  form.addEventListener("submit", (event) => event.preventDefault());  // Enter does nothing: choose a button
  choice.querySelector("select").addEventListener("change", () => fillProfileChoice(state.autoscale || []));
  const error = el("p", null, {id: "autoscale-form-error", class: "error", role: "alert"});
  error.hidden = true;
  document.getElementById("autoscale-controls").replaceChildren(form, error);
}

// -- sweeps and the model registry --------------------------------------------------------------

function num(value) {  // a metric or a parameter: at most 4 significant digits
  if (value === null || value === undefined) return "-";
  if (typeof value === "number") return String(Number(value.toPrecision(4)));
  return typeof value === "object" ? JSON.stringify(value) : String(value);
}

function params(mapping) { return Object.entries(mapping || {}).map(([k, v]) => `${k}=${num(v)}`).join(", ") || "-"; }

function byState(counts) {
  return ["running", "succeeded", "pruned", "failed", "cancelled"].filter((s) => counts[s])
    .map((s) => `${counts[s]} ${s}`).join(" · ") || "none yet";
}

function headed(headers, rows, attrs) {
  const table = el("table", null, attrs);
  const head = el("tr");
  head.append(...headers.map((h) => el("th", h)));
  table.append(el("thead"), el("tbody"));
  table.tHead.append(head);
  table.tBodies[0].append(...rows);
  return table;
}

function extent(values) {  // (not Math.min(...values): long curves would pass too many arguments)
  return values.reduce(([lo, hi], v) => [Math.min(lo, v), Math.max(hi, v)], [Infinity, -Infinity]);
}

function svgText(tag, text, attrs) {
  const node = svgNode(tag, attrs);
  node.textContent = text;
  return node;
}

// every trial's curve (the sweep's metric by step) on one scale: pruned dashed, the best drawn last, on top
function curveChart(sweep) {
  const [W, H, left, right, top, bottom] = [900, 300, 52, 10, 10, 30];
  const best = sweep.best ? sweep.best.number : null;
  const drawn = sweep.trials.filter((t) => (t.curve || []).length)
    .sort((a, b) => (a.number === best) - (b.number === best));
  const figure = el("figure", null, {class: "curves"});
  const caption = el("figcaption", `${sweep.metric} by step, one line per trial (${sweep.mode}imise) `);
  const keys = [[best !== null, "best", "best"], [drawn.some((t) => t.state === "pruned"), "pruned", "pruned"],
                [drawn.some((t) => ["failed", "cancelled"].includes(t.state)), "failed", "failed or cancelled"],
                [drawn.some((t) => t.number !== best && !["pruned", "failed", "cancelled"].includes(t.state)), "other", "others"]];
  caption.append(...keys.filter(([shown]) => shown).map(([, cls, label]) => el("span", label, {class: `key trial ${cls}`})));
  figure.append(caption);
  if (!drawn.length) { figure.append(el("p", "no trial has reported yet", {class: "hint"})); return figure; }
  const [x0, x1] = extent(drawn.flatMap((t) => t.curve.map(([step]) => step)));
  const [y0, y1] = extent(drawn.flatMap((t) => t.curve.map(([, value]) => value)));
  const x = (step) => (left + ((step - x0) / (x1 - x0 || 1)) * (W - left - right)).toFixed(1);
  const y = (value) => (H - bottom - ((value - y0) / (y1 - y0 || 1)) * (H - top - bottom)).toFixed(1);
  const svg = svgNode("svg", {viewBox: `0 0 ${W} ${H}`, class: "curves", role: "img",
                              "aria-label": `${sweep.metric} by step for ${drawn.length} trials`});
  svg.append(svgNode("polyline", {class: "axis", points: `${left},${top} ${left},${H - bottom} ${W - right},${H - bottom}`}),
             svgText("text", num(y1), {x: left - 4, y: top + 8, "text-anchor": "end"}),
             svgText("text", num(y0), {x: left - 4, y: H - bottom, "text-anchor": "end"}),
             svgText("text", sweep.metric, {x: 12, y: (H - bottom + top) / 2, "text-anchor": "middle",
                                    transform: `rotate(-90 12 ${(H - bottom + top) / 2})`}),
             svgText("text", num(x0), {x: left, y: H - bottom + 14}),
             svgText("text", num(x1), {x: W - right, y: H - bottom + 14, "text-anchor": "end"}),
             svgText("text", "step", {x: (left + W - right) / 2, y: H - 4, "text-anchor": "middle"}));
  for (const t of drawn) {
    const points = t.curve.map(([step, value]) => `${x(step)},${y(value)}`);
    if (points.length === 1) points.push(points[0]);  // one report: a dot (round caps)
    const line = svgNode("polyline", {class: `trial ${t.state}${t.number === best ? " best" : ""}`,
                                      points: points.join(" "), "data-trial": t.number});
    const [step, value] = t.curve[t.curve.length - 1];
    line.append(svgText("title", `trial ${t.number} (${t.state}${t.number === best ? ", best" : ""}): ${sweep.metric} `
                        + `${num(value)} at step ${num(step)}; ${params(t.params)}`));
    svg.append(line);
  }
  figure.append(svg);
  return figure;
}

async function refreshSweeps() {
  const {sweeps} = await api("/api/v1/sweeps?limit=50");
  fillRows("sweeps-table", sweeps.map((s) => {
    const b = s.best;
    const r = row([s.id, s.name, s.objective, s.state, `${s.counts.done}/${s.trials_wanted}`, byState(s.counts),
                   b ? `${s.metric} ${num(b.value)} (trial ${b.number})` : "-", b ? params(b.params) : "-",
                   button("Trials", () => showSweep(s.id))]);
    for (const i of [5, 7]) r.children[i].className = "wrap";
    r.dataset.sweep = s.id;
    r.dataset.state = s.state;
    return r;
  }));
  // the open sweep again while its trials may still report, or once it changed (finished, resumed)
  const open = sweeps.find((s) => s.id === state.sweep);
  if (open && (open.state === "running" || open.updated_at !== state.sweepAt)) await showSweep(open.id, false);
}

async function showSweep(id, focus = true) {
  const s = await api(`/api/v1/sweeps/${id}`);
  if (!focus && state.sweep !== id) return;  // closed, or another chosen, while this was loading
  state.sweep = id;
  state.sweepAt = s.updated_at;
  const box = document.getElementById("sweep-detail");
  const best = s.best ? s.best.number : null;
  const trials = headed(["trial", "state", "params", s.metric, "steps", "job", "note"], s.trials.map((t) => {
    const r = row([t.number, t.state, params(t.params), num(t.value), t.steps, t.job_id, t.note]);
    r.children[2].className = "long";
    r.children[6].className = "long";
    r.dataset.trial = t.number;
    r.dataset.state = t.state;
    if (t.number === best) r.className = "best";
    return r;
  }), {id: "trials-table"});
  const summary = `${s.objective} · ${s.mode}imise ${s.metric} · sampler ${s.sampler} · `
                  + `${s.counts.done}/${s.trials_wanted} trials done (${byState(s.counts)}) · owner ${s.owner || "-"}`;
  box.replaceChildren(el("h3", `Sweep ${s.id}: ${s.name}, ${s.state}`), el("p", summary),
                      ...(s.note ? [el("p", s.note, {class: s.state === "failed" ? "error" : "hint"})] : []),
                      curveChart(s), el("h4", "Trials"), trials,
                      button("Close", () => { state.sweep = null; box.hidden = true; }));
  box.hidden = false;
  if (focus) box.querySelector("button").focus();
}

function aliases(mapping) { return Object.entries(mapping || {}).sort().map(([a, v]) => `${a} → v${v}`).join(", ") || "-"; }

function noRegistry() {  // a role without `read`: no section to go to
  state.registry = false;
  document.querySelector("nav a[href='#registry']").hidden = true;
  document.getElementById("registry-refused").hidden = false;
  document.getElementById("registry-table").hidden = true;
}

async function refreshRegistry() {
  let models;
  try {
    ({models} = await api("/api/v1/registry"));
  } catch (error) {
    if (error.status === 403) { noRegistry(); return; }
    throw error;
  }
  fillRows("registry-table", models.map((m) => {
    const r = row([m.name, `v${m.latest}`, m.versions, aliases(m.aliases), params(m.metrics), when(m.updated_at),
                   button("Versions", () => showVersions(m.name))]);
    r.dataset.model = m.name;
    return r;
  }));
  if (state.model !== null) await showVersions(state.model, false);
}

async function showVersions(name, focus = true) {
  const {versions} = await api(`/api/v1/registry/${encodeURIComponent(name)}/versions?limit=50`);
  if (!focus && state.model !== name) return;
  state.model = name;
  const box = document.getElementById("registry-detail");
  const table = headed(["version", "aliases", "created", "by", "from", "metrics", "params", "sha256"], versions.map((v) => {
    const from = v.sweep_id !== null ? `sweep ${v.sweep_id} trial ${v.trial}` : v.job_id !== null ? `job ${v.job_id}` : "-";
    const r = row([`v${v.version}`, v.aliases.join(", ") || "-", when(v.created_at), v.created_by, from,
                   params(v.metrics), params(v.params), (v.artifact.sha256 || "-").slice(0, 12)]);
    r.children[6].className = "long";
    r.dataset.version = v.version;
    return r;
  }), {id: "versions-table"});
  box.replaceChildren(el("h3", `Model ${name}: ${versions.length} versions, newest first`), table,
                      button("Close", () => { state.model = null; box.hidden = true; }));
  box.hidden = false;
  if (focus) box.querySelector("button").focus();
}

// -- live updates --------------------------------------------------------------------------------

function soon(what) {
  state.pending.add(what);
  if (state.refreshTimer) return;
  state.refreshTimer = setTimeout(async () => {
    const work = [...state.pending];
    state.pending.clear();
    state.refreshTimer = null;
    await Promise.all(work.map((fn) => fn().catch((error) => say(error.message))));
  }, 250);
}

function listen() {
  const live = document.getElementById("live");
  const source = new EventSource("/api/v1/events");
  source.addEventListener("open", () => { live.textContent = "live"; live.classList.add("on"); });
  source.addEventListener("error", () => { live.textContent = "reconnecting"; live.classList.remove("on"); });
  source.addEventListener("job", (event) => {
    const data = JSON.parse(event.data);
    const cell = document.querySelector(`#jobs-table tr[data-job="${Number(data.job)}"] td:nth-child(3)`);
    if (cell) cell.textContent = data.state;  // at once; the full refresh follows
    soon(refreshJobs); soon(refreshStatus);
    if (data.state === "dead" || data.state === "queued") soon(refreshDlq);
    if (state.reads) { soon(refreshPipelines); soon(refreshCounts); }
  });
  source.addEventListener("worker", () => {
    soon(refreshWorkers); soon(refreshStatus);
    if (state.reads) soon(refreshAutoscale);
  });
  // the stream ends when the session's token is revoked or expires: sign in again
  source.addEventListener("closed", () => { source.close(); window.location.assign("/login"); });
  source.addEventListener("reset", () => { soon(refreshJobs); soon(refreshWorkers); soon(refreshStatus); soon(refreshDlq); });
}

// -- sections ------------------------------------------------------------------------------------

function show() {
  const current = (window.location.hash || "#overview").slice(1);
  for (const section of document.querySelectorAll("main > section")) section.hidden = section.id !== current;
  for (const link of document.querySelectorAll("nav a")) {
    if (link.getAttribute("href") === `#${current}`) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

async function start() {
  const me = await api("/api/v1/whoami");
  state.role = me.role;
  state.canOperate = me.permissions.includes("operate");
  document.getElementById("whoami").textContent = `${me.name} (${me.role})`;
  document.getElementById("logout").addEventListener("click", async () => {
    await fetch("/logout", {method: "POST", headers: {"X-Clusterai-Request": "1"}});
    window.location.assign("/login");
  });
  document.getElementById("job-filter").addEventListener("submit", (event) => { event.preventDefault(); refreshJobs(); });
  document.getElementById("job-find").addEventListener("submit", (event) => {
    event.preventDefault();
    const id = Number(document.getElementById("find-id").value);
    if (id > 0) showJob(id).catch((error) => say(error.message));
  });
  if (state.canOperate) autoscaleForm();
  window.addEventListener("hashchange", show);
  show();
  const reads = me.permissions.includes("read");
  state.reads = reads;
  state.registry = reads;
  if (!reads) noRegistry();  // a submitter: its own sweeps, no registry
  // trouble with sweeps or the registry leaves the rest of the page working
  const trained = [refreshSweeps(), ...(reads ? [refreshRegistry()] : [])].map((p) => p.catch((error) => say(error.message)));
  await Promise.all([refreshJobs(), ...trained, ...(reads ? [refreshStatus(), refreshWorkers(), refreshDlq(), refreshHistory(),
                                                            refreshPipelines(), refreshCounts(), refreshModels(), refreshAutoscale()] : [])]);
  listen();
  setInterval(() => { soon(refreshSweeps); if (state.registry) soon(refreshRegistry); }, 5000);
  if (reads) {
    setInterval(() => {
      soon(refreshStatus); soon(refreshWorkers); soon(refreshPipelines); soon(refreshCounts); soon(refreshModels);
      soon(refreshAutoscale);
    }, 5000);
    setInterval(() => refreshHistory().catch(() => {}), 60000);
  }
}

start().catch((error) => say(error.message));
