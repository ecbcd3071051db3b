// edgefleet dashboard: plain JS, no build step, no external resources.
"use strict";
const PAGE = 50;
const TOKEN_KEY = "edgefleet-token";
const CHART_EVERY_MS = 60000;
const $ = (sel) => document.querySelector(sel);
let offset = 0;
let refreshTimer = null;
let stream = null;
let chartLoaded = 0;
let chartSamples = null;
let stateOrder = [];
// Who is signed in (GET /api/v1/whoami); may_operate lists the stages it may act in.
let me = { name: null, role: null, may_operate: [], public_read: true };

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v; else if (k === "text") e.textContent = v; else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(c ?? "–"));
  return e;
}
const short = (sha) => (sha ? sha.slice(0, 10) : "–");
const ago = (ts) => {
  if (!ts) return "–";
  const d = Math.max(0, Date.now() / 1000 - ts);
  return d < 120 ? `${d.toFixed(0)}s ago` : d < 7200 ? `${(d / 60).toFixed(0)}m ago` : `${(d / 3600).toFixed(1)}h ago`;
};
const badge = (state) => el("span", { class: `state ${state}`, "data-state": state }, state);

// The token stays in this tab (sessionStorage) and goes out only as a bearer header.
const token = () => sessionStorage.getItem(TOKEN_KEY);

async function api(path, { method = "GET", body } = {}) {
  const headers = { Accept: "application/json" };
  if (token()) headers.Authorization = `Bearer ${token()}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const data = await r.json();
  if (!r.ok) throw new Error(data.error || r.statusText);
  return data;
}

// The state names come from the hub (the summary lists every state, in order).
function fillStateFilter(states) {
  const stateSel = $("#filters select[name=state]");
  if (stateSel.options.length > 1) return;
  for (const s of states) stateSel.append(el("option", { value: s }, s));
}

function renderSummary(s) {
  $("#total-nodes").textContent = s.nodes;
  $("#total-synced").textContent = s.states.synced;
  const first = !stateOrder.length;
  stateOrder = Object.keys(s.states);
  if (first && chartSamples) drawChart($("#chart"), $("#chart-legend"), chartSamples, stateOrder);
  fillStateFilter(stateOrder);
  const box = $("#stages");
  box.replaceChildren();
  const columns = Object.entries(s.stages);
  if (s.unstaged && s.unstaged.nodes) columns.push(["(no stage)", { ...s.unstaged, branch: "", head: null }]);
  for (const [name, st] of columns) {
    const list = el("ul");
    for (const state of Object.keys(s.states)) {
      const n = st.states[state] || 0;
      list.append(el("li", { class: n ? state : `${state} zero`, "data-state": state },
        badge(state), el("b", { class: "count", "data-stage": name, "data-state": state }, String(n))));
    }
    box.append(el("div", { class: "stage", "data-stage": name },
      el("h3", {}, name),
      el("div", { class: "meta" }, `${st.branch || "–"} @ ${short(st.head)} · `,
        el("b", { class: "stage-nodes" }, String(st.nodes)), " nodes"),
      list, ...(st.versions ? [agentVersions(name, st.versions)] : [])));
  }
}

// Agent versions in a stage (nodes per version), so a half-done agent upgrade shows.
function agentVersions(stage, versions) {
  const entries = Object.entries(versions || {}).sort(([a], [b]) => a.localeCompare(b));
  const box = el("div", { class: "versions" }, "agent: ", ...(entries.length ? [] : ["–"]));
  entries.forEach(([v, n], i) => {
    if (i) box.append(", ");
    box.append(el("span", { class: "version", "data-stage": stage, "data-version": v }, `${v}: ${n}`));
  });
  return box;
}

async function loadDrift() {
  const d = await api("/api/v1/drift");
  const body = $("#drift tbody");
  body.replaceChildren();
  if (!d.drift.length) body.append(el("tr", {}, el("td", { colspan: "6" }, "no drift reported")));
  for (const g of d.drift) {
    const byStage = Object.entries(g.by_stage).map(([k, v]) => `${k || "(none)"}: ${v}`).join(", ");
    const examples = el("td");
    g.examples.forEach((n, i) => { if (i) examples.append(", "); examples.append(el("a", { href: `#/node/${encodeURIComponent(n)}` }, n)); });
    body.append(el("tr", {}, el("td", {}, g.target), el("td", {}, el("code", {}, g.subject)), el("td", {}, g.kind),
      el("td", {}, String(g.nodes)), el("td", {}, byStage), examples));
  }
}

async function loadNodes() {
  const form = new FormData($("#filters"));
  const q = new URLSearchParams({ limit: PAGE, offset });
  for (const k of ["stage", "state", "label"]) if (form.get(k)) q.set(k, form.get(k));
  let d;
  try { d = await api(`/api/v1/nodes?${q}`); } catch (e) { $("#nodes-count").textContent = e.message; return; }
  const body = $("#nodes tbody");
  body.replaceChildren();
  for (const n of d.nodes) {
    body.append(el("tr", { class: n.state, "data-node": n.node },
      el("td", {}, el("a", { href: `#/node/${encodeURIComponent(n.node)}` }, n.node)),
      el("td", {}, n.stage), el("td", {}, badge(n.state)),
      el("td", {}, el("code", {}, short(n.applied))), el("td", {}, el("code", {}, short(n.desired))),
      el("td", {}, String(n.drift_count)), el("td", { class: "version" }, n.version), el("td", {}, ago(n.last_heard))));
  }
  $("#nodes-count").textContent = `${d.nodes.length ? offset + 1 : 0}–${offset + d.nodes.length} of ${d.total}`;
  $("#prev").disabled = offset === 0;
  $("#next").disabled = offset + d.nodes.length >= d.total;
}

async function loadNode(name) {
  const box = $("#node-status");
  $("#node-name").textContent = name;
  let n;
  try { n = await api(`/api/v1/nodes/${encodeURIComponent(name)}`); } catch (e) {
    box.replaceChildren(el("dt", {}, "error"), el("dd", {}, e.message)); return;
  }
  const actions = $("#node-actions");
  actions.replaceChildren(...[actionButton("sync", "sync now", n.node, me.may_operate.includes(n.stage))].filter(Boolean));
  const st = n.status || {};
  const rows = [["state", badge(n.state)], ["reported", st.state], ["stage", n.stage], ["branch", n.branch],
    ["applied", el("code", {}, n.applied ?? "–")], ["desired", el("code", {}, n.desired ?? "–")],
    ["last good", el("code", {}, st.last_good ?? "–")], ["reason", st.reason], ["message", st.message],
    ["deferred until", st.deferred_until ? new Date(st.deferred_until * 1000).toLocaleString() : null],
    ["agent", st.version], ["paths", (st.paths || []).join(", ")],
    ["labels", Object.entries(n.labels).map(([k, v]) => `${k}=${v}`).join(", ")],
    ["last heard", ago(n.last_heard)], ["online", n.online ? "yes" : "no"],
    ["drifted objects", String(n.drift_count)]];
  box.replaceChildren(...rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v || "–")]));
  const problems = (st.health && st.health.problems) || [];
  $("#node-health tbody").replaceChildren(...(problems.length ? problems.map((p) => el("tr", { class: "problem" },
    el("td", {}, p.target), el("td", {}, el("code", {}, p.subject)), el("td", {}, p.reason)))
    : [el("tr", {}, el("td", { colspan: "3" }, st.health && st.health.ok === false ? "not healthy" : "healthy"))]));
  const drift = $("#node-drift tbody");
  drift.replaceChildren(...(n.drift.length ? n.drift.map((d) => el("tr", {}, el("td", {}, d.target),
    el("td", {}, el("code", {}, d.subject)), el("td", {}, d.kind), el("td", {}, d.detail || "")))
    : [el("tr", {}, el("td", { colspan: "4" }, "none"))]));
  const events = $("#node-events tbody");
  events.replaceChildren(...n.events.map((e) => el("tr", {},
    el("td", {}, new Date((e.at || e.received) * 1000).toLocaleString()), el("td", {}, String(e.seq)),
    el("td", {}, e.type), el("td", {}, el("code", {}, short(e.commit))),
    el("td", {}, el("code", {}, JSON.stringify(e.details))))));
}

function gateText(st) {
  if (st.paused) return `PAUSED (${st.paused.kind} by ${st.paused.who}): ${st.paused.reason}`;
  const g = st.gate_status;
  if (!g) return "– (first stage)";
  if (g.up_to_date) return "up to date";
  const text = (g.open ? "open: " : "closed: ") + g.reason;
  return st.blocked && !g.open ? `${text}; ${st.blocked}` : text;
}

// Waves of a stage: nodes on the candidate / total, state, gate (with soak left).
function waveList(st) {
  if (!st.waves || !st.waves.length) return [];
  return [el("ul", { class: "waves" }, ...st.waves.map((w) =>
    el("li", { "data-wave": w.name, "data-state": w.state },
      `${w.name}: ${w.on_candidate}/${w.nodes} on candidate, ${w.state}` + (w.gate ? ` – ${w.gate}` : ""))))];
}

async function loadRollouts() {
  const [s, h] = await Promise.all([api("/api/v1/stages"), api("/api/v1/history?limit=20")]);
  const gates = $("#gates tbody");
  gates.replaceChildren(...s.stages.map((st) => {
    const state = st.paused ? "paused" : st.gate_status && st.gate_status.open ? "open" : "closed";
    return el("tr", { "data-stage": st.name, "data-gate": state },
      el("td", {}, st.name), el("td", {}, st.promote_from), el("td", {}, st.auto ? "yes" : "no"),
      el("td", { class: "progress" }, el("progress", { max: String(st.nodes || 1), value: String(st.on_head) }),
        el("span", { class: "on-head" }, ` ${st.on_head}/${st.nodes} on ${short(st.head)}`)),
      el("td", { class: `gate ${state}` }, gateText(st), ...waveList(st)), el("td", {}, stageActions(st)));
  }));
  loadPlans(s.stages);
  const body = $("#history tbody");
  body.replaceChildren();
  if (!h.history.length) body.append(el("tr", {}, el("td", { colspan: "8" }, "no rollout history")));
  for (const r of h.history) {
    body.append(el("tr", { "data-action": r.action },
      el("td", {}, new Date(r.at * 1000).toLocaleString()), el("td", {}, r.stage),
      el("td", {}, r.action), el("td", {}, r.outcome + (r.forced ? " (forced)" : "")),
      el("td", {}, r.on_behalf ? `${r.who} for ${r.on_behalf}` : r.who), el("td", {}, el("code", {}, short(r.from))),
      el("td", {}, el("code", {}, short(r.to))), el("td", {}, r.reason)));
  }
}

// The latest plan of each pending promotion (a plan of the candidate the gate waits on).
async function loadPlans(stages) {
  let box = $("#plans");
  if (!box) { box = el("div", { id: "plans" }); $("#gates").after(box); }
  const pending = stages.filter((st) => st.gate_status && st.gate_status.candidate && !st.gate_status.up_to_date);
  // One read for all stages: a stage without a plan is no error (no 404 in the console).
  const latest = pending.length ? await api("/api/v1/plans").catch(() => ({ plans: {} })) : { plans: {} };
  const plans = pending.map((st) => latest.plans[st.name] || null);
  box.replaceChildren(...plans.filter((p, i) => p && p.to === pending[i].gate_status.candidate).map((p) => {
    const rows = [
      ...p.changes.map((c) => el("tr", {}, el("td", {}, c.action), el("td", {}, `${c.target}:${c.subject}`),
        el("td", {}, String(c.nodes)), el("td", {}, c.examples.join(", ")))),
      ...p.refused.map((r) => el("tr", { class: "refused" }, el("td", {}, "refused"),
        el("td", {}, `${r.reason}: ${r.message}`), el("td", {}, "1"), el("td", {}, r.node))),
    ];
    return el("div", { class: "plan", "data-stage": p.stage },
      el("h3", {}, `Plan for ${p.stage}: ${short(p.from)} → ${short(p.to)} `,
        el("small", {}, `${p.answered}/${p.asked} answered` + (p.silent.length ? `, silent: ${p.silent.join(", ")}` : ""))),
      el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "action"), el("th", {}, "subject"),
        el("th", {}, "nodes"), el("th", {}, "examples"))), el("tbody", {}, ...rows)));
  }));
}

function route() {
  const m = location.hash.match(/^#\/node\/(.+)$/);
  $("#overview").hidden = !!m;
  $("#node-page").hidden = !m;
  if (m) loadNode(decodeURIComponent(m[1])); else { loadRollouts(); loadDrift(); loadNodes(); loadChart(); }
}

async function loadChart() {
  if (Date.now() - chartLoaded < CHART_EVERY_MS) return;
  chartLoaded = Date.now();
  try {
    chartSamples = (await api(`/api/v1/samples?hours=${CHART.hours}`)).samples;
    // Until the first summary names the states in order, the samples' own names serve.
    const order = stateOrder.length ? stateOrder : [...new Set(chartSamples.flatMap((s) => Object.keys(s.states)))];
    drawChart($("#chart"), $("#chart-legend"), chartSamples, order);
  } catch (e) { chartLoaded = 0; }
}

// Tables are refetched at most once a second while summaries stream in.
function scheduleRefresh() {
  if (refreshTimer) return;
  refreshTimer = setTimeout(() => { refreshTimer = null; route(); }, 1000);
}

function setLive(on, text) { const l = $("#live"); l.className = `live ${on ? "on" : "off"}`; l.textContent = text; }

// EventSource cannot send a header: a signed-in tab trades its token for a stream ticket
// (valid 60 s, for opening the stream only) and fetches a new one for every reconnect.
async function connect() {
  if (stream) stream.close();
  let url = "/api/v1/stream";
  if (token()) {
    try {
      url += `?ticket=${encodeURIComponent((await api("/api/v1/stream-ticket", { method: "POST" })).ticket)}`;
    } catch (e) { setLive(false, "reconnecting"); setTimeout(connect, 5000); return; }
  }
  const es = new EventSource(url);
  stream = es;
  es.addEventListener("summary", (ev) => {
    renderSummary(JSON.parse(ev.data));
    scheduleRefresh();
  });
  es.onopen = () => setLive(true, "live");
  es.onerror = () => {
    setLive(false, "reconnecting");
    if (token()) { es.close(); setTimeout(() => { if (stream === es) connect(); }, 2000); }
  };
}

function renderMe() {
  $("#signin").hidden = !!me.name;
  $("#signout").hidden = !me.name;
  $("#whoami").textContent = me.name ? `${me.name} (${me.role})` : "";
  $("#whoami").dataset.role = me.role || "";
}

async function fillStageFilter() {
  const stageSel = $("#filters select[name=stage]");
  if (stageSel.options.length > 1) return;
  const s = await api("/api/v1/stages");
  for (const st of s.stages) stageSel.append(el("option", { value: st.name }, st.name));
}

async function start() {
  try { me = await api("/api/v1/whoami"); } catch (e) {
    sessionStorage.removeItem(TOKEN_KEY);
    notice(`sign-in failed: ${e.message}`, true);
    me = await api("/api/v1/whoami");
  }
  renderMe();
  const locked = !me.name && !me.public_read;
  $("#locked").hidden = !locked;
  if (locked) { $("#overview").hidden = true; $("#node-page").hidden = true; return; }
  try { await fillStageFilter(); } catch (e) { /* the stream shows the hub is unreachable */ }
  route();
  connect();
}

function init() {
  $("#signin").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const t = new FormData(ev.target).get("token").trim();
    ev.target.reset();
    if (t) { sessionStorage.setItem(TOKEN_KEY, t); $("#notice").hidden = true; start(); }
  });
  $("#signout").addEventListener("click", () => { sessionStorage.removeItem(TOKEN_KEY); location.reload(); });
  $("#filters").addEventListener("submit", (ev) => { ev.preventDefault(); offset = 0; loadNodes(); });
  $("#prev").addEventListener("click", () => { offset = Math.max(0, offset - PAGE); loadNodes(); });
  $("#next").addEventListener("click", () => { offset += PAGE; loadNodes(); });
  window.addEventListener("hashchange", route);
  start();
}
init();
