// The Sluice dashboard: plain JavaScript over the same HTTP API as the CLI.
"use strict";

const TOKEN_KEY = "sluice.token";
const POINTS = 60;
let token = localStorage.getItem(TOKEN_KEY) || "";
let selectedFunction = null;
let streamAbort = null;
let lastMetrics = null;
const series = {
  invocations: [[]],
  events: [[]],
  latency: [[], []],
  deliveries: [[], []],
};

const $ = (selector) => document.querySelector(selector);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else if (key === "onclick") node.addEventListener("click", value);
    else node[key] = value;
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(child ?? ""));
  }
  return node;
}

function say(text) {
  $("#message").textContent = text;
  if (text) setTimeout(() => { if ($("#message").textContent === text) say(""); }, 4000);
}

class Unauthorized extends Error {}

async function api(path, options = {}) {
  const response = await fetch(path, {
    ...options,
    headers: { ...(options.headers || {}), Authorization: `Bearer ${token}` },
  });
  if (response.status === 401 || response.status === 403) {
    const body = await response.json().catch(() => ({}));
    throw new Unauthorized(body.error ? body.error.message : `HTTP ${response.status}`);
  }
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    throw new Error(body.error ? `${body.error.code}: ${body.error.message}` : `HTTP ${response.status}`);
  }
  return response.json();
}

// ---- sign in ----

function showSignIn(reason) {
  $("#app").hidden = true;
  $("#sign-in").hidden = false;
  $("#sign-in-error").textContent = reason || "";
  if (streamAbort) streamAbort.abort();
}

async function signIn(candidate) {
  token = candidate;
  try {
    await api("/v1/status");
  } catch (error) {
    showSignIn(error.message);
    return;
  }
  localStorage.setItem(TOKEN_KEY, token);
  $("#sign-in").hidden = true;
  $("#app").hidden = false;
  refresh();
  openStream();
}

$("#sign-in-form").addEventListener("submit", (event) => {
  event.preventDefault();
  signIn($("#token").value.trim());
});

$("#sign-out").addEventListener("click", () => {
  localStorage.removeItem(TOKEN_KEY);
  token = "";
  showSignIn("");
});

// ---- tabs ----

for (const button of document.querySelectorAll("#tabs button")) {
  button.addEventListener("click", () => {
    for (const other of document.querySelectorAll("#tabs button")) other.classList.remove("active");
    button.classList.add("active");
    for (const tab of document.querySelectorAll(".tab")) tab.hidden = tab.id !== button.dataset.tab;
    refresh();
  });
}

// ---- refresh ----

function duration(seconds) {
  if (seconds < 120) return `${seconds}s`;
  if (seconds < 7200) return `${Math.round(seconds / 60)}m`;
  if (seconds < 172800) return `${Math.round(seconds / 3600)}h`;
  return `${Math.round(seconds / 86400)}d`;
}

function bytes(n) {
  if (!n) return "–";
  if (n < 1 << 20) return `${(n / 1024).toFixed(0)} KiB`;
  return `${(n / (1 << 20)).toFixed(1)} MiB`;
}

function time(ms) {
  return new Date(ms).toLocaleTimeString();
}

// Cluster mode: this node among the live ones, JetStream's health, the
// cluster's backlog.
function showCluster(cluster) {
  $("#cluster").hidden = !cluster;
  if (!cluster) return;
  const js = cluster.jetstream;
  $("#jetstream").textContent = js.healthy ? "JetStream ok" : "JetStream unavailable";
  $("#jetstream").className = `badge ${js.healthy ? "ok" : "bad"}`;
  $("#jetstream").title = js.reason || "";
  const parts = [`${cluster.nodes.length} live node${cluster.nodes.length === 1 ? "" : "s"}`];
  if (js.events) {
    parts.push(`events stream: ${js.events.messages} events, ${bytes(js.events.bytes)}, ` +
      `R${js.events.replicas}${js.events.leader ? `, leader ${js.events.leader}` : ""}`);
  }
  if (js.backlog) {
    parts.push(`backlog: ${js.backlog.events_to_fan_out} events to fan out, ` +
      `${js.backlog.deliveries_waiting} deliveries waiting, ${js.backlog.deliveries_held} held`);
  }
  if (!js.healthy && js.reason) parts.push(js.reason);
  const body = $("#nodes-table tbody");
  if (cluster.nodes_error) parts.push(`nodes: ${cluster.nodes_error}`);
  $("#cluster-summary").textContent = parts.join(" · ");
  body.replaceChildren(...cluster.nodes.map((n) => el("tr", { class: n.id === cluster.node_id ? "self" : "" },
    el("td", {}, n.id === cluster.node_id ? `${n.name} (this node)` : n.name),
    el("td", {}, n.listen),
    el("td", {}, n.version),
    el("td", {}, new Date(n.started).toLocaleString()))));
}

async function refresh() {
  if (!token) return;
  try {
    const status = await api("/v1/status");
    $("#health").textContent = status.ready && status.store_healthy ? "ready" : "not ready";
    $("#health").className = `badge ${status.ready && status.store_healthy ? "ok" : "bad"}`;
    $("#stat-functions").textContent = status.functions;
    $("#stat-loaded").textContent = `${status.functions_loaded} in memory`;
    $("#stat-triggers").textContent = status.triggers;
    $("#stat-pending").textContent = status.deliveries_pending;
    $("#stat-deadletters").textContent = status.dead_letters;
    $("#stat-uptime").textContent = duration(status.uptime_secs);
    $("#stat-version").textContent = `v${status.version}`;
    showCluster(status.cluster);
    await Promise.all([refreshFunctions(), refreshTriggers(), refreshSchedules(), refreshDeadLetters()]);
  } catch (error) {
    if (error instanceof Unauthorized) showSignIn(error.message);
    else say(error.message);
  }
}

async function refreshFunctions() {
  const { functions } = await api("/v1/functions");
  const counts = invocationCounts();
  const rows = functions.map((f) => {
    const s = f.settings;
    const limits = [
      s.timeout_ms ? `${s.timeout_ms} ms` : null,
      s.memory_mb ? `${s.memory_mb} MiB` : null,
      s.max_concurrency ? `×${s.max_concurrency}` : null,
    ].filter(Boolean).join(", ") || "defaults";
    return el("tr", { "data-name": f.name, onclick: () => selectFunction(f.name) },
      el("td", {}, el("strong", {}, f.name)),
      el("td", {}, f.world),
      el("td", {}, String(f.version)),
      el("td", {}, s.visibility || "private"),
      el("td", {}, limits),
      el("td", { class: "invocations" }, String(counts[f.name] || 0)),
      el("td", {}, new Date(f.updated).toLocaleString()));
  });
  $("#functions-table tbody").replaceChildren(...rows);
  if (selectedFunction && functions.some((f) => f.name === selectedFunction)) {
    await showFunction(functions.find((f) => f.name === selectedFunction));
  }
}

function selectFunction(name) {
  selectedFunction = name;
  refreshFunctions().catch((error) => say(error.message));
}

async function showFunction(f) {
  const [{ invocations }, { logs }] = await Promise.all([
    api(`/v1/functions/${f.name}/invocations`),
    api(`/v1/functions/${f.name}/logs?limit=200`),
  ]);
  $("#function-detail").hidden = false;
  $("#function-name").textContent = `${f.name} · ${f.digest.slice(0, 19)}…`;
  $("#function-settings").textContent = JSON.stringify(f.settings, null, 2);
  $("#invocations-table tbody").replaceChildren(...invocations.map((i) =>
    el("tr", {},
      el("td", {}, time(i.time_ms)),
      el("td", {}, el("span", { class: `badge ${i.outcome === "ok" ? "ok" : "bad"}` }, i.outcome)),
      el("td", {}, `${(i.duration_us / 1000).toFixed(2)} ms`),
      el("td", {}, bytes(i.memory_peak_bytes)),
      el("td", {}, (i.cold ? "cold" : "warm") + (i.node ? ` · ${i.node}` : "")))));
  $("#function-logs").textContent = logs.map((l) => `${l.time} ${l.stream} ${l.line}`).join("\n") || "(no output)";
}

function filterText(trigger) {
  if (trigger.filters && trigger.filters.length) return JSON.stringify(trigger.filters);
  const attributes = (trigger.filter && trigger.filter.attributes) || {};
  const parts = Object.entries(attributes).map(([k, v]) => `${k}=${v}`);
  return parts.length ? parts.join(", ") : "(every event)";
}

async function refreshTriggers() {
  const { triggers } = await api("/v1/triggers");
  $("#triggers-table tbody").replaceChildren(...triggers.map((t) => {
    const stats = t.stats || {};
    const subscriber = t.subscriber.function ? `function ${t.subscriber.function}` : t.subscriber.uri;
    return el("tr", { "data-name": t.name },
      el("td", {}, el("strong", {}, t.name)),
      el("td", {}, t.broker || "default"),
      el("td", { class: "mono" }, filterText(t)),
      el("td", {}, subscriber),
      el("td", {}, el("span", { class: `badge ${t.status.ready ? "ok" : "bad"}`, title: t.status.reason || "" },
        t.status.ready ? "ready" : "not ready")),
      el("td", { class: "matched" }, String(stats.matched ?? 0)),
      el("td", { class: "delivered" }, String(stats.delivered ?? 0)),
      el("td", { class: "retried" }, String(stats.retried ?? 0)),
      el("td", { class: "dead-lettered" }, String(stats.dead_lettered ?? 0)),
      el("td", { class: "in-flight" }, String(stats.in_flight ?? 0)));
  }));
}

async function refreshSchedules() {
  const { schedules } = await api("/v1/schedules");
  $("#schedules-empty").hidden = schedules.length > 0;
  $("#schedules-table tbody").replaceChildren(...schedules.map((s) =>
    el("tr", { "data-name": s.name },
      el("td", {}, el("strong", {}, s.name)),
      el("td", { class: "mono" }, s.schedule),
      el("td", {}, s.timezone || "UTC"),
      el("td", { class: "sink" }, s.sink.broker || (s.sink.function ? `function ${s.sink.function}` : s.sink.uri),
        ...(s.status && !s.status.ready
          ? [" ", el("span", { class: "badge bad", title: s.status.reason || "" }, "not ready")]
          : [])),
      el("td", { class: "next", title: s.next || "" }, s.next ? new Date(s.next).toLocaleString() : "–"),
      el("td", { class: "last-fired" }, s.lastFired ? new Date(s.lastFired).toLocaleString() : "never"))));
}

async function refreshDeadLetters() {
  const { deadletters } = await api("/v1/deadletters");
  $("#deadletters-empty").hidden = deadletters.length > 0;
  $("#deadletters-table tbody").replaceChildren(...deadletters.slice().reverse().map((d) =>
    el("tr", { "data-id": d.id },
      el("td", { class: "mono" }, d.id),
      el("td", {}, new Date(d.time).toLocaleString()),
      el("td", {}, d.trigger),
      el("td", { class: "mono" }, `${d.event.type} ${d.event.id}`),
      el("td", {}, String(d.attempts)),
      el("td", {}, d.reason),
      el("td", {},
        el("button", { class: "replay", "data-id": d.id, onclick: () => act(`/v1/deadletters/${d.id}/replay`, "POST", `dead letter ${d.id} replayed`) }, "Replay"),
        " ",
        el("button", { class: "danger delete", "data-id": d.id, onclick: () => act(`/v1/deadletters/${d.id}`, "DELETE", `dead letter ${d.id} deleted`) }, "Delete")))));
}

async function act(path, method, done) {
  try {
    await api(path, { method });
    say(done);
    await refresh();
  } catch (error) {
    say(error.message);
  }
}

// ---- live events ----

function addEventRow(kind, entry) {
  const body = $("#events-table tbody");
  const trigger = entry.trigger || (entry.matched ? `matched: ${entry.matched.join(", ") || "none"}` : "");
  const row = el("tr", { "data-id": entry.id, "data-kind": kind },
    el("td", {}, time(entry.time_ms)),
    el("td", {}, el("span", { class: `badge ${kind}` }, kind.replace("_", " "))),
    el("td", {}, entry.broker),
    el("td", {}, entry.type),
    el("td", {}, entry.source),
    el("td", { class: "mono" },
      el("a", { href: "#", class: "trace-link", title: "what became of this event", onclick: (e) => { e.preventDefault(); showTrace(entry); } }, entry.id)),
    el("td", {}, trigger));
  body.prepend(row);
  while (body.children.length > 200) body.lastChild.remove();
}

// The trace of one event: accepted, each trigger's verdict, attempts,
// dead letters, caused events.
async function showTrace(entry) {
  // `.` encoded too: an id `.` or `..` is not a relative path.
  const segment = (text) => encodeURIComponent(text).replaceAll(".", "%2E");
  const path = `/v1/brokers/${segment(entry.broker)}/events/${segment(entry.id)}?source=${encodeURIComponent(entry.source)}`;
  $("#trace").hidden = false;
  $("#trace-title").textContent = `Trace of ${entry.id}`;
  try {
    const { traces } = await api(path);
    const lines = [];
    for (const t of traces) {
      lines.push(`accepted ${t.accepted} into ${entry.broker} (type ${t.type}, source ${t.source})`);
      if (t.duplicates) lines.push(`repeated ${t.duplicates} time(s): duplicates, not delivered again`);
      for (const trig of t.triggers) lines.push(trig.matched ? `  match  ${trig.name}` : `  miss   ${trig.name}: ${trig.reason}`);
      for (const a of t.attempts) {
        lines.push(`  ${a.start} ${a.trigger} attempt ${a.attempt}: ${a.outcome} after ${a.duration_ms.toFixed(1)} ms`
          + (a.status ? `, status ${a.status}` : "") + (a.error ? ` (${a.error})` : ""));
      }
      for (const d of t.dead_letters) lines.push(`  dead letter ${d.id} of ${d.trigger}: ${d.reason}`);
      for (const c of t.caused) lines.push(`  caused event ${c}`);
    }
    $("#trace-body").textContent = lines.join("\n");
  } catch (error) {
    $("#trace-body").textContent = error.message;
  }
}

async function openStream() {
  if (streamAbort) streamAbort.abort();
  const controller = new AbortController();
  streamAbort = controller;
  let wait = 1000;
  while (!controller.signal.aborted) {
    try {
      const response = await fetch("/v1/events/stream", {
        headers: { Authorization: `Bearer ${token}` },
        signal: controller.signal,
      });
      if (response.status === 401 || response.status === 403) {
        showSignIn("the token was refused");
        return;
      }
      $("#stream-state").textContent = "live";
      $("#stream-state").className = "badge ok";
      wait = 1000;
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const message = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          let kind = "message";
          let data = "";
          for (const line of message.split("\n")) {
            if (line.startsWith("event:")) kind = line.slice(6).trim();
            else if (line.startsWith("data:")) data += line.slice(5).trim();
          }
          if (!data) continue;
          if (kind === "lagged") say(`the stream skipped ${JSON.parse(data).missed} entries`);
          else addEventRow(kind, JSON.parse(data));
        }
      }
    } catch (error) {
      if (controller.signal.aborted) return;
    }
    $("#stream-state").textContent = "reconnecting";
    $("#stream-state").className = "badge warn";
    await new Promise((resolve) => setTimeout(resolve, wait));
    wait = Math.min(wait * 2, 15000);
  }
}

// ---- charts from /metrics ----

function parseMetrics(text) {
  const samples = [];
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const match = line.match(/^([a-zA-Z_:][\w:]*)(\{(.*)\})?\s+(\S+)$/);
    if (!match) continue;
    const labels = {};
    for (const pair of (match[3] || "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[pair[1]] = pair[2];
    samples.push({ name: match[1], labels, value: Number(match[4]) });
  }
  return samples;
}

function sum(samples, name, where = () => true) {
  return samples.filter((s) => s.name === name && where(s.labels)).reduce((a, s) => a + s.value, 0);
}

function invocationCounts() {
  const counts = {};
  for (const s of lastMetrics ? lastMetrics.samples : []) {
    if (s.name === "sluice_function_invocations_total") {
      counts[s.labels.function] = (counts[s.labels.function] || 0) + s.value;
    }
  }
  return counts;
}

function quantile(buckets, q) {
  // buckets: [[le, cumulative count]] sorted by le.
  const total = buckets.length ? buckets[buckets.length - 1][1] : 0;
  if (!total) return 0;
  for (const [le, count] of buckets) if (count >= q * total) return le;
  return buckets[buckets.length - 1][0];
}

function latencyBuckets(samples) {
  const byLe = new Map();
  for (const s of samples) {
    if (s.name !== "sluice_function_duration_seconds_bucket") continue;
    const le = s.labels.le === "+Inf" ? Infinity : Number(s.labels.le);
    byLe.set(le, (byLe.get(le) || 0) + s.value);
  }
  return [...byLe.entries()].sort((a, b) => a[0] - b[0]);
}

function push(list, value) {
  list.push(value);
  while (list.length > POINTS) list.shift();
}

function draw(id, lines) {
  const svg = $(`#chart-${id}`);
  const max = Math.max(1e-9, ...lines.flat());
  const children = [0.25, 0.5, 0.75].map((f) => {
    const line = document.createElementNS("http://www.w3.org/2000/svg", "line");
    line.setAttribute("x1", "0");
    line.setAttribute("x2", "300");
    line.setAttribute("y1", String(100 * f));
    line.setAttribute("y2", String(100 * f));
    line.setAttribute("class", "grid");
    return line;
  });
  lines.forEach((values, i) => {
    // Newest at the right edge.
    const offset = POINTS - values.length;
    const points = values.map((v, j) => `${(300 * (offset + j)) / (POINTS - 1)},${100 - (95 * v) / max}`).join(" ");
    const polyline = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
    polyline.setAttribute("points", points);
    polyline.setAttribute("class", `series-${i}`);
    children.push(polyline);
  });
  svg.replaceChildren(...children);
}

async function pollMetrics() {
  try {
    const response = await fetch("/metrics", { headers: { Authorization: `Bearer ${token}` } });
    const samples = parseMetrics(await response.text());
    const now = performance.now();
    const current = {
      at: now,
      samples,
      invocations: sum(samples, "sluice_function_invocations_total"),
      events: sum(samples, "sluice_events_accepted_total"),
      durationSum: sum(samples, "sluice_function_duration_seconds_sum"),
      durationCount: sum(samples, "sluice_function_duration_seconds_count"),
      delivered: sum(samples, "sluice_trigger_delivered_total"),
      dead: sum(samples, "sluice_trigger_dead_lettered_total"),
      buckets: latencyBuckets(samples),
    };
    if (lastMetrics) {
      const dt = (now - lastMetrics.at) / 1000;
      const rate = (key) => Math.max(0, (current[key] - lastMetrics[key]) / dt);
      const calls = current.durationCount - lastMetrics.durationCount;
      const mean = calls > 0 ? ((current.durationSum - lastMetrics.durationSum) / calls) * 1000 : 0;
      const window = current.buckets.map(([le, count], i) => [le, count - ((lastMetrics.buckets[i] || [le, 0])[1])]);
      const p99 = calls > 0 ? Math.min(quantile(window, 0.99), 30) * 1000 : 0;
      push(series.invocations[0], rate("invocations"));
      push(series.events[0], rate("events"));
      push(series.latency[0], mean);
      push(series.latency[1], p99);
      push(series.deliveries[0], rate("delivered"));
      push(series.deliveries[1], rate("dead"));
      $("#now-invocations").textContent = rate("invocations").toFixed(1);
      $("#now-events").textContent = rate("events").toFixed(1);
      $("#now-latency").textContent = `${mean.toFixed(2)} / ${p99.toFixed(1)}`;
      $("#now-deliveries").textContent = `${rate("delivered").toFixed(1)} / ${rate("dead").toFixed(1)}`;
      for (const id of Object.keys(series)) draw(id, series[id]);
    }
    lastMetrics = current;
  } catch (error) {
    say(`metrics: ${error.message}`);
  }
}

// ---- start ----

// One refresh at a time: a slow answer (NATS away) must not pile requests up.
let refreshing = false;
setInterval(async () => {
  if ($("#app").hidden || refreshing) return;
  refreshing = true;
  try { await refresh(); } finally { refreshing = false; }
}, 3000);
setInterval(pollMetrics, 2000);
pollMetrics();
if (token) signIn(token); else showSignIn("");
