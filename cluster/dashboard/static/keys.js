// The API keys section: keys and tenants with their usage, a form that creates a key (its
// secret shown once) and a revoke button per key; shown only when the cluster requires keys.
"use strict";

const USAGE = ["requests", "prompt_tokens", "completion_tokens", "cache_hits", "rate_limited", "errors"];
const keysUi = { html: {}, secret: "" };

function esc(value) {
  const map = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
  return String(value ?? "").replace(/[&<>"']/g, (c) => map[c]);
}

// The API's times are UTC ISO strings: shown to the minute.
function utcText(iso) {
  return `${iso.slice(0, 16).replace("T", " ")} UTC`;
}

function limitsText(limits) {
  const parts = Object.entries(limits).filter(([, v]) => v !== null).map(([k, v]) => `${k} ${v.toLocaleString()}`);
  return parts.join(", ") || "none";
}

function usageCells(usage) {
  return USAGE.map((k) => `<td class="num" data-usage="${k}">${usage[k].toLocaleString()}</td>`).join("");
}

function keyState(key) {
  const until = key.state === "active" && key.expires_at ? ` <small>until ${esc(utcText(key.expires_at))}</small>` : "";
  return `<span class="state ${esc(key.state)}">${esc(key.state)}</span>${until}`;
}

function keyRow(key) {
  const models = key.models.includes("*") ? "all" : key.models.map(esc).join(", ");
  const revoke = key.state === "revoked" ? "" : `<button data-revoke="${esc(key.id)}" data-name="${esc(key.name)}">Revoke</button>`;
  return `<tr data-key="${esc(key.id)}"><td><code>${esc(key.id)}</code></td><td>${esc(key.name)}</td>
    <td>${esc(key.tenant)}</td><td>${keyState(key)}</td><td>${models}</td>
    <td>${esc(limitsText(key.limits))}</td>${usageCells(key.usage)}<td>${revoke}</td></tr>`;
}

function tenantRow(t) {
  return `<tr data-tenant="${esc(t.name)}"><td>${esc(t.name)}</td><td>${t.active_keys} of ${t.keys}</td>
    <td>${esc(limitsText(t.limits))}</td>${usageCells(t.usage)}</tr>`;
}

// Replaces a table's rows only when they changed, so a click is never lost to a refresh.
function fill(table, html, empty, columns) {
  const body = html || `<tr><td colspan="${columns}">${empty}</td></tr>`;
  if (keysUi.html[table] === body) return;
  keysUi.html[table] = body;
  $(`#${table} tbody`).innerHTML = body;
}

async function refreshKeys(enabled) {
  $("#api-keys").hidden = !enabled;
  if (!enabled) return;
  const range = $("#usage-range").value;
  const [keys, tenants] = await Promise.all([api(`/api/keys?range=${range}`), api(`/api/tenants?range=${range}`)]);
  fill("keys", keys.keys.map(keyRow).join(""), "No API keys yet: create one below.", 13);
  fill("tenants", tenants.tenants.map(tenantRow).join(""), "No tenants yet.", 9);
  $("#usage-since").textContent = `since ${utcText(keys.since)}`;
}

function keyRequest(form) {
  const field = (name) => form.elements.namedItem(name).value.trim();
  const body = { name: field("name") };
  if (field("tenant")) body.tenant = field("tenant");
  const models = field("models").split(",").map((m) => m.trim()).filter(Boolean);
  if (models.length) body.models = models;
  for (const limit of ["rpm", "tpm", "max_concurrent", "daily_tokens"]) {
    if (field(limit) !== "") body[limit] = Number(field(limit));
  }
  // The picker's value is local time; the API takes a zoned ISO time.
  if (field("expires_at")) body.expires_at = new Date(field("expires_at")).toISOString();
  return body;
}

async function createKey(form) {
  const out = $("[data-testid=key-result]");
  try {
    const key = await api("/api/keys", { method: "POST", body: JSON.stringify(keyRequest(form)) });
    showSecret(key.key);
    say(out, `created ${key.id} (${key.name}, tenant ${key.tenant})`, true);
    form.reset();
    refreshKeys(true).catch((err) => say($("#keys-result"), err.message, false));
  } catch (err) { say(out, err.message, false); }
}

function showSecret(secret) {
  keysUi.secret = secret;
  $("[data-testid=new-secret]").textContent = secret;
  $("#new-secret").hidden = !secret;
}

async function copySecret() {
  const hint = $("#secret-hint");
  try {
    await navigator.clipboard.writeText(keysUi.secret);
    say(hint, "copied", true);
  } catch {
    getSelection().selectAllChildren($("[data-testid=new-secret]"));
    say(hint, "selected: press Ctrl+C (or ⌘C) to copy", true);
  }
}

async function revokeKey(id, name) {
  if (!confirm(`Revoke ${name} (${id})? Requests with it are refused within a second; this cannot be undone.`)) return;
  try {
    const key = await api(`/api/keys/${encodeURIComponent(id)}/revoke`, { method: "POST" });
    say($("#keys-result"), `revoked ${key.id} (${key.name})`, true);
    await refreshKeys(true);
  } catch (err) { say($("#keys-result"), err.message, false); }
}

document.addEventListener("DOMContentLoaded", () => {
  $("#key-form").addEventListener("submit", (e) => { e.preventDefault(); createKey(e.target); });
  $("#keys").addEventListener("click", (e) => {
    const button = e.target.closest("button[data-revoke]");
    if (button) revokeKey(button.dataset.revoke, button.dataset.name);
  });
  $("#usage-range").addEventListener("change", () => refreshKeys(true).catch((err) => say($("#keys-result"), err.message, false)));
  $("#copy-secret").addEventListener("click", copySecret);
  $("#hide-secret").addEventListener("click", () => showSecret(""));
});
