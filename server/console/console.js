// The memory console: the gateway's public API, called from the browser with the
// caller's key. Data from the API is only ever put into the page as text (textContent).
"use strict";

const KEY = "loramem.key";
const TENANT = "loramem.tenant";
const JOBS = "loramem.jobs"; // ids of the jobs started from this tab
const TERMINAL = new Set(["published", "failed", "cancelled"]);
const PALETTE = ["#2f6fde", "#1f9d55", "#d97706", "#9333ea", "#c23934", "#0891b2", "#64748b"];
const $ = (id) => document.getElementById(id);

let view = "modules";
let editing = null; // the fact being edited: its row is left alone by refreshes
let modules = [];
const refusals = {}; // job id -> why the gateway refused to cancel it

// ------------------------------------------------------------------ the API
function headers(json) {
  const h = json ? { "content-type": "application/json" } : {};
  const key = sessionStorage.getItem(KEY);
  const tenant = sessionStorage.getItem(TENANT);
  if (key) h.authorization = "Bearer " + key;
  if (tenant) h["x-loramem-tenant"] = tenant; // ignored by the gateway when auth is on
  return h;
}

async function call(method, path, body) {
  const reply = await fetch(path, {
    method, headers: headers(body !== undefined),
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await reply.json().catch(() => null);
  if (!reply.ok) {
    throw new Error((data && data.error && data.error.message) || `${method} ${path}: ${reply.status}`);
  }
  return data;
}

function say(text, error) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

// ------------------------------------------------------------- page helpers
function el(tag, text, attrs) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
  return node;
}

function row(cells, attrs) {
  const tr = el("tr", null, attrs);
  for (const cell of cells) tr.append(cell instanceof Node ? cell : el("td", cell));
  return tr;
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

// Redraw `node` from `data` only when the data changed, so that a refresh leaves a
// selection, a focused button or a hovered row alone.
function render(node, data, build) {
  const shown = JSON.stringify(data);
  if (node.dataset.shown === shown) return;
  node.dataset.shown = shown;
  node.replaceChildren(...build());
}

const fixed = (x, digits) => (x === null || x === undefined ? "–" : Number(x).toFixed(digits));

function button(text, cls, onclick) {
  const b = el("button", text, { type: "button", class: cls });
  b.addEventListener("click", onclick);
  return b;
}

// ----------------------------------------------------------------- modules
async function loadModules() {
  modules = await call("GET", "/modules");
  const names = modules.map((m) => m.name);
  for (const id of ["module-names", "fact-module", "model"]) {
    const list = $(id);
    const keep = id === "module-names" ? 0 : 1; // the first option of a select stays
    const now = Array.from(list.options).slice(keep).map((o) => o.value);
    if (now.join() !== names.join()) {
      list.replaceChildren(...Array.from(list.options).slice(0, keep),
        ...names.map((n) => el("option", n, { value: n })));
    }
  }
  return modules;
}

async function showModules() {
  const [mods, hits] = await Promise.all([loadModules(), call("GET", "/stats/hits")]);
  const byModule = Object.fromEntries(hits.series.map((s) => [s.module, s.total]));
  render($("modules").tBodies[0], [mods, byModule], () => mods.map((m) => {
    const count = byModule[m.name] || 0;
    const open = el("a", m.name, { href: "#facts" });
    open.addEventListener("click", () => { $("fact-module").value = m.name; });
    const name = el("td");
    name.append(open);
    return row([name, m.served_name || "not published", m.fact_count,
      fixed(m.recall, 2), count, hits.total ? `${Math.round((100 * count) / hits.total)}%` : "–"],
    { "data-module": m.name });
  }));
  $("base-hits").textContent = `Requests in the last hour: ${hits.total}, of them answered by ` +
    `the base model: ${byModule.base || 0}.`;
}

// ------------------------------------------------------------------- facts
async function showFacts() {
  if (editing) return;
  await loadModules();
  const only = $("fact-module").value;
  const facts = (await call("GET", "/facts")).filter((f) => !only || f.module === only);
  $("fact-count").textContent = `${facts.length} fact${facts.length === 1 ? "" : "s"}`;
  render($("facts").tBodies[0], facts, () => facts.map(factRow));
}

function factRow(fact) {
  const text = el("td", fact.text, { class: "text" });
  const actions = el("td", null, { class: "actions" });
  const tr = row([text, fact.module, actions], { "data-fact-id": fact.id });
  actions.append(
    button("Edit", "plain edit", () => editFact(tr, fact)),
    button("Delete", "danger delete", () => deleteFact(fact)),
  );
  return tr;
}

function editFact(tr, fact) {
  editing = fact.id;
  delete tr.parentNode.dataset.shown; // the next refresh redraws the row, edited or not
  const input = el("input", null, { class: "edit-text", "aria-label": "fact text" });
  input.value = fact.text;
  tr.cells[0].replaceChildren(input);
  tr.cells[2].replaceChildren(
    button("Save", "save", async () => {
      try {
        const job = await call("PUT", `/facts/${encodeURIComponent(fact.id)}`, { text: input.value });
        track(job.job_id);
        say(`Fact ${fact.id} changed: job ${job.job_id} retrains ${job.module}.`);
        editing = null;
        await showFacts();
      } catch (err) { say(err.message, true); }
    }),
    button("Cancel", "plain", () => { editing = null; showFacts(); }),
  );
  input.focus();
}

async function deleteFact(fact) {
  try {
    const job = await call("DELETE", `/facts/${encodeURIComponent(fact.id)}`);
    track(job.job_id);
    say(`Fact ${fact.id} deleted: job ${job.job_id} retrains ${job.module} without it.`);
    await showFacts();
  } catch (err) { say(err.message, true); }
}

async function addFacts(event) {
  event.preventDefault();
  const facts = $("new-facts").value.split("\n").map((s) => s.trim()).filter(Boolean);
  const body = { facts };
  if ($("add-module").value.trim()) body.module = $("add-module").value.trim();
  try {
    const job = await call("POST", "/facts", body);
    track(job.job_id);
    $("new-facts").value = "";
    say(`${facts.length} fact(s) accepted into ${job.module}: job ${job.job_id}.`);
    await showFacts();
  } catch (err) { say(err.message, true); }
}

// -------------------------------------------------------------------- jobs
function tracked() {
  return JSON.parse(sessionStorage.getItem(JOBS) || "[]");
}

function track(id) {
  sessionStorage.setItem(JOBS, JSON.stringify([id, ...tracked().filter((j) => j !== id)].slice(0, 30)));
}

function percent(job) {
  const p = job.progress || {};
  switch (job.status) {
    case "queued": return 0;
    case "training": return 5 + 80 * Math.min(1, (p.step || 0) / (p.total_steps || 1));
    case "validating": return 88;
    case "publishing": return 95;
    case "published": return 100;
    default: return 5 + 80 * Math.min(1, (p.step || 0) / (p.total_steps || 1));
  }
}

function jobDetail(job) {
  const p = job.progress || {};
  const done = TERMINAL.has(job.status);
  const parts = [done ? job.status : p.phase || job.status];
  // total_steps counts every extra round the gate may ask for: an upper bound.
  if (p.total_steps && done) parts.push(`${p.step || 0} steps`);
  else if (p.total_steps) parts.push(`step ${p.step || 0} of at most ${p.total_steps}`);
  if (p.loss !== undefined) parts.push(`loss ${fixed(p.loss, 4)}`);
  if (p.recall !== undefined) parts.push(`recall ${fixed(p.recall, 2)}`);
  if (job.version) parts.push(`version v${job.version}`);
  if (job.error) parts.push(job.error);
  return parts.join(" · ");
}

function jobCard(job) {
  const card = el("div", null, { class: "job", "data-job-id": job.id, "data-status": job.status });
  const title = el("div", null, { class: "title" });
  const right = el("span");
  right.append(el("span", job.status, { class: "status" }));
  // Offered on every unfinished job: the gateway decides (an edit or delete job is
  // refused with 409, and the page shows why), so the rule lives in one place.
  if (!TERMINAL.has(job.status)) {
    right.append(el("button", "Cancel", { type: "button", class: "danger cancel", "data-job-id": job.id }));
  }
  title.append(el("span", `${job.kind} · ${job.module} · job ${job.id}`), right);
  const bar = el("progress", null, { max: "100", value: String(Math.round(percent(job))) });
  card.append(title, bar, el("div", jobDetail(job), { class: "detail" }));
  if (refusals[job.id]) card.append(el("div", refusals[job.id], { class: "refusal" }));
  return card;
}

async function showJobs() {
  const open = await call("GET", "/jobs");
  const seen = new Set(open.map((j) => j.id));
  const mine = await Promise.all(tracked().filter((id) => !seen.has(id)).map(
    (id) => call("GET", `/jobs/${encodeURIComponent(id)}`).catch(() => null)));
  const jobs = [...open.reverse(), ...mine.filter(Boolean)]; // running ones first, newest first
  render($("jobs"), [jobs, refusals],
    () => (jobs.length ? jobs.map(jobCard) : [el("p", "No jobs yet.", { class: "note" })]));
}

// One listener on the list, not one per button: the cards are redrawn while they poll.
async function cancelJob(event) {
  const target = event.target.closest("button.cancel");
  if (!target) return;
  const id = target.dataset.jobId;
  target.disabled = true;
  try {
    const job = await call("DELETE", `/jobs/${encodeURIComponent(id)}`);
    track(id); // a cancelled job leaves GET /jobs; keep showing it here
    const waiting = (job.progress.unlearned_fact_ids || []).length;
    say(`Job ${id} cancelled: nothing is published for it.` + (waiting ? ` Its ${waiting} ` +
      `fact(s) stay stored; the module's next job learns them.` : ""));
  } catch (err) {
    refusals[id] = err.message;
    say(err.message, true);
  }
  await refresh();
}

// --------------------------------------------------------------------- ask
async function ask(event) {
  event.preventDefault();
  const answer = $("answer");
  answer.textContent = "";
  answer.dataset.state = "streaming";
  $("decision").hidden = true;
  const body = {
    model: $("model").value, stream: true, temperature: 0, max_tokens: 64,
    messages: [{ role: "user", content: $("question").value }],
    loramem: { mode: $("mode").value, explain: true },
  };
  try {
    const reply = await fetch("/v1/chat/completions", { method: "POST", headers: headers(true), body: JSON.stringify(body) });
    if (!reply.ok) {
      const data = await reply.json().catch(() => null);
      throw new Error((data && data.error && data.error.message) || `chat: ${reply.status}`);
    }
    await readStream(reply.body.getReader(), answer);
    answer.dataset.state = "done";
  } catch (err) {
    answer.dataset.state = "error";
    say(err.message, true);
  }
}

async function readStream(reader, answer) {
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, end).trim();
      buffer = buffer.slice(end + 1);
      if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
      const chunk = JSON.parse(line.slice(6));
      if (chunk.error) throw new Error(chunk.error.message);
      if (chunk.loramem) showDecision(chunk.loramem);
      const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
      if (delta && delta.content) answer.textContent += delta.content;
    }
  }
}

function showDecision(d) {
  $("d-served").textContent = d.served;
  // A question spanning modules: each part's module and the words of the question it named.
  const parts = (d.span || []).map((p) => `${p.served} (${p.words.join(" ")})`);
  $("d-outcome").textContent = parts.length ? `${d.outcome}: ${parts.join(", ")}` : d.outcome;
  $("d-mode").textContent = d.mode;
  $("d-score").textContent = d.score === null ? "– (no routing: a model was named)" :
    `${fixed(d.score, 3)} (threshold ${fixed(d.threshold, 2)})`;
  fill($("d-candidates").tBodies[0], d.candidates.map((c) => row(
    [c.module, fixed(c.score, 3), fixed(c.best, 3)], c.module === d.module ? { class: "chosen" } : {})));
  fill($("d-facts").tBodies[0], d.facts.map((f) => row(
    [fixed(f.score, 3), f.module, f.text === null ? f.id : f.text],
    f.module === d.module ? { class: "chosen" } : {})));
  $("decision").hidden = false;
}

// -------------------------------------------------------------------- hits
async function showHits() {
  const hits = await call("GET", "/stats/hits");
  const minutes = hits.window_s / 60;
  $("hits-note").textContent = `Requests per ${hits.bucket_s} s over the last ${minutes} minutes, ` +
    `by the module that answered (this gateway's own count; ${hits.total} in all).`;
  drawChart(hits);
}

function svg(tag, attrs, text) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function drawChart(hits) {
  const [w, h, left, bottom, top] = [720, 260, 40, 24, 10];
  const buckets = hits.window_s / hits.bucket_s;
  const peak = Math.max(1, ...hits.series.flatMap((s) => s.counts));
  const x = (i) => left + ((w - left - 10) * i) / Math.max(1, buckets - 1);
  const y = (n) => h - bottom - ((h - bottom - top) * n) / peak;
  const nodes = [
    svg("line", { class: "axis", x1: left, y1: y(0), x2: w - 10, y2: y(0) }),
    svg("line", { class: "axis", x1: left, y1: top, x2: left, y2: y(0) }),
    svg("text", { x: left - 6, y: y(peak) + 4, "text-anchor": "end" }, String(peak)),
    svg("text", { x: left - 6, y: y(0) + 4, "text-anchor": "end" }, "0"),
    svg("text", { x: left, y: h - 6 }, `-${hits.window_s / 60} min`),
    svg("text", { x: w - 10, y: h - 6, "text-anchor": "end" }, "now"),
  ];
  const legend = [];
  hits.series.forEach((s, i) => {
    const colour = PALETTE[i % PALETTE.length];
    const points = s.counts.map((n, j) => `${x(j).toFixed(1)},${y(n).toFixed(1)}`).join(" ");
    nodes.push(svg("polyline", { points, stroke: colour, "data-module": s.module }));
    const item = el("li", `${s.module}: ${s.total}`);
    item.style.setProperty("--swatch", colour);
    legend.push(item);
  });
  $("chart").replaceChildren(...nodes);
  $("legend").replaceChildren(...legend);
}

// ------------------------------------------------------------ navigation
const VIEWS = { modules: showModules, facts: showFacts, jobs: showJobs, ask: loadModules, hits: showHits };

async function refresh() {
  try {
    await VIEWS[view]();
  } catch (err) { say(err.message, true); }
}

function route() {
  view = VIEWS[location.hash.slice(1)] ? location.hash.slice(1) : "modules";
  for (const name of Object.keys(VIEWS)) $(`view-${name}`).hidden = name !== view;
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.view === view);
  refresh();
}

function login(event) {
  event.preventDefault();
  for (const [item, id] of [[KEY, "key"], [TENANT, "tenant"]]) {
    const value = $(id).value.trim();
    if (value) sessionStorage.setItem(item, value); else sessionStorage.removeItem(item);
  }
  $("key").value = "";
  say(sessionStorage.getItem(KEY) ? "Using the key (kept in this tab only)." : "No key: auth must be off.");
  refresh();
}

function forget() {
  sessionStorage.clear();
  $("tenant").value = "";
  say("Key forgotten.");
  refresh();
}

document.addEventListener("DOMContentLoaded", () => {
  $("tenant").value = sessionStorage.getItem(TENANT) || "";
  if (sessionStorage.getItem(KEY)) say("Using the key kept in this tab.");
  $("login").addEventListener("submit", login);
  $("forget").addEventListener("click", forget);
  $("add-facts").addEventListener("submit", addFacts);
  $("fact-module").addEventListener("change", () => { editing = null; showFacts(); });
  $("ask").addEventListener("submit", ask);
  $("jobs").addEventListener("click", cancelJob);
  window.addEventListener("hashchange", route);
  route();
  // Live: jobs every second, the rest every few seconds (the ask view does not poll).
  setInterval(() => { if (view === "jobs") refresh(); }, 1000);
  setInterval(() => { if (view === "modules" || view === "facts" || view === "hits") refresh(); }, 3000);
});
