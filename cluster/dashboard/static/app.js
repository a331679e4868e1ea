// The dashboard page: polls the API, draws each model's charts on one time axis, lists
// training jobs (and API keys: keys.js), and sends the controls with the cluster token.
"use strict";

const CHARTS = [
  { id: "qps", title: "Requests", unit: "req/s", lines: [
    { key: "qps", label: "QPS", color: "#1f5fbf" },
    { key: "errors_4xx", label: "4xx/s", color: "#c78100" },
    { key: "errors_5xx", label: "5xx/s", color: "#c0392b" }] },
  { id: "ttft", title: "Time to first token", unit: "ms", lines: [
    { key: "ttft_p50_ms", label: "p50", color: "#1f5fbf" },
    { key: "ttft_p99_ms", label: "p99", color: "#8e44ad", dash: "4 3" }] },
  { id: "tpot", title: "Time per output token", unit: "ms", lines: [
    { key: "tpot_p50_ms", label: "p50", color: "#1f5fbf" },
    { key: "tpot_p99_ms", label: "p99", color: "#8e44ad", dash: "4 3" }] },
  { id: "tokens", title: "Tokens", unit: "tok/s", lines: [
    { key: "completion_tps", label: "completion", color: "#1e8449" },
    { key: "prompt_tps", label: "prompt", color: "#7f8c8d" }] },
  { id: "queue", title: "Engine requests", unit: "", integer: true, lines: [
    { key: "running", label: "running", color: "#1f5fbf" },
    { key: "waiting", label: "waiting", color: "#c0392b" }] },
  { id: "kv", title: "KV cache (fullest engine)", unit: "%", max: 100, lines: [
    { key: "kv_cache_pct", label: "used", color: "#16a085" }] },
  { id: "replicas", title: "Replicas", unit: "", integer: true, lines: [
    { key: "replicas_current", label: "current", color: "#1f5fbf" },
    { key: "replicas_target", label: "target", color: "#e67e22", dash: "5 3" },
    { key: "replicas_min", label: "min", color: "#95a5a6", dash: "2 3" },
    { key: "replicas_max", label: "max", color: "#34495e", dash: "2 3" }] },
];

const ui = { models: {}, timer: null, busy: false };
const $ = (sel, root = document) => root.querySelector(sel);

function token() { return sessionStorage.getItem("llmc-token") || ""; }

async function api(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  if (token()) headers.Authorization = `Bearer ${token()}`;
  if (options.body) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { ...options, headers });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error((body.error && body.error.message) || `HTTP ${response.status}`);
  return body;
}

function say(node, text, ok) {
  node.textContent = text;
  node.className = `result ${ok ? "ok" : "err"}`;
}

function modelSection(model) {
  const section = document.createElement("section");
  section.className = "model";
  section.dataset.model = model.id;
  section.innerHTML = `
    <h2>${model.id} <small class="status"></small></h2>
    <div class="numbers">Replicas: <b data-testid="replicas-current">–</b> running,
      target <b data-testid="replicas-target">–</b>, min <b data-testid="replicas-min">–</b>,
      max <b data-testid="replicas-max">–</b>, <b data-testid="replicas-mode">–</b>
      <span class="reason"></span></div>
    <form class="controls">
      <label>min <input name="min" type="number" min="0" step="1"></label>
      <label>max <input name="max" type="number" min="1" step="1"></label>
      <label><input type="radio" name="mode" value="auto" checked> auto</label>
      <label><input type="radio" name="mode" value="pin"> pin
        <input name="pin" type="number" min="1" step="1"></label>
      <button type="submit">Apply</button> <span class="result" data-testid="scale-result"></span>
    </form>
    <div class="charts"></div>`;
  $("#models").appendChild(section);
  const charts = CHARTS.map((spec) => new LineChart($(".charts", section), spec));
  $(".controls", section).addEventListener("submit", (e) => { e.preventDefault(); scale(model.id, section); });
  return { section, charts, filled: false };
}

async function scale(id, section) {
  const form = $(".controls", section), out = $(".result", form), body = {};
  if (form.min.value !== "") body.min_replicas = Number(form.min.value);
  if (form.max.value !== "") body.max_replicas = Number(form.max.value);
  if (form.mode.value === "pin") body.replicas = Number(form.pin.value);
  else body.auto = true;
  try {
    const b = await api(`/api/models/${encodeURIComponent(id)}/scale`, { method: "POST", body: JSON.stringify(body) });
    say(out, `applied: min ${b.min_replicas}, max ${b.max_replicas}, ${b.pinned === null ? "auto" : `pinned at ${b.pinned}`}`, true);
    refresh();
  } catch (err) { say(out, err.message, false); }
}

function showNumbers(view, model) {
  const put = (key, value) => { $(`[data-testid=${key}]`, view.section).textContent = value ?? "–"; };
  put("replicas-current", model.current);
  put("replicas-target", model.target);
  put("replicas-min", model.min);
  put("replicas-max", model.max);
  put("replicas-mode", model.pinned === null || model.pinned === undefined ? "auto" : `pinned at ${model.pinned}`);
  $(".status", view.section).textContent = model.status || "";
  $(".reason", view.section).textContent = model.reason ? `(${model.policy || "policy"}: ${model.reason})` : "";
  const form = $(".controls", view.section);
  if (!view.filled && model.min !== undefined) {
    form.min.value = model.min; form.max.value = model.max; form.pin.value = model.pinned || model.current || 1;
    view.filled = true;
  }
}

async function refreshModel(view, id, range) {
  const data = await api(`/api/series?model=${encodeURIComponent(id)}&range=${range}`);
  for (const chart of view.charts) chart.render(data, [data.start, data.end], data.events);
}

async function refreshJobs() {
  const { jobs } = await api("/api/jobs");
  const rows = jobs.map((j) => {
    const live = !["SUCCEEDED", "FAILED", "STOPPED"].includes(j.state);
    return `<tr data-job="${j.id}"><td>${j.id}</td><td class="job-state">${j.state}</td>
      <td>${j.step ?? "–"} / ${j.max_steps ?? "?"}</td><td>${j.loss != null ? j.loss.toFixed(4) : "–"}</td>
      <td>${j.tokens_per_s != null ? Math.round(j.tokens_per_s) : "–"}</td>
      <td>${live ? `<button data-stop="${j.id}">Stop</button>` : ""}</td></tr>`;
  });
  $("#jobs tbody").innerHTML = rows.join("") || `<tr><td colspan="6">No training jobs.</td></tr>`;
}

async function stopJob(id) {
  try {
    await api(`/api/jobs/${encodeURIComponent(id)}/stop`, { method: "POST" });
    say($("#job-result"), `stop requested for ${id}`, true);
    setTimeout(refreshJobs, 1000);
  } catch (err) { say($("#job-result"), err.message, false); }
}

async function refresh() {
  if (ui.busy) return;
  ui.busy = true;
  try {
    const jobs = refreshJobs().catch((err) => say($("#job-result"), err.message, false));
    const overview = await api("/api/overview");
    showLinks(overview.links);
    const keys = refreshKeys(overview.api_keys).catch((err) => say($("#keys-result"), err.message, false));
    const range = $("#range").value;
    await Promise.all(overview.models.map(async (model) => {
      ui.models[model.id] = ui.models[model.id] || modelSection(model);
      showNumbers(ui.models[model.id], model);
      await refreshModel(ui.models[model.id], model.id, range);
    }));
    await Promise.all([jobs, keys]);
    say($("#updated"), `updated ${fmtClock(Date.now() / 1000)} (scrape ${overview.tick_ms} ms)`, true);
  } catch (err) {
    say($("#updated"), `error: ${err.message}`, false);
  } finally { ui.busy = false; }
}

function showLinks(links) {
  const parts = [["Ray dashboard", links.ray_dashboard], ["OpenAI API", links.api], ["Prometheus", links.prometheus]];
  $("#links").innerHTML = parts.filter(([, url]) => url).map(([name, url]) => `<a href="${url}" target="_blank">${name}</a>`).join(" · ");
}

function schedule() {
  clearInterval(ui.timer);
  const every = Number($("#refresh").value);
  if (every > 0) ui.timer = setInterval(refresh, every * 1000);
}

document.addEventListener("DOMContentLoaded", () => {
  $("#token").value = token();
  $("#token").addEventListener("change", (e) => sessionStorage.setItem("llmc-token", e.target.value.trim()));
  $("#range").addEventListener("change", refresh);
  $("#refresh").addEventListener("change", schedule);
  $("#jobs").addEventListener("click", (e) => { if (e.target.dataset.stop) stopJob(e.target.dataset.stop); });
  refresh();
  schedule();
});
