// kiln dashboard: renders the gateway's `fleet` events (GET /dashboard/events)
// and drives the playground through the gateway's OpenAI endpoints beside it
// (POST /v1/chat/completions and /v1/images/generations, streamed). No
// library: it must work offline.
"use strict";

const $ = (id) => document.getElementById(id);
let identity = { client: "", cancel_any: false, read_only: false };

function esc(s) {
  return String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

function fmtTemp(c) { return c ? c.toFixed(1) + " °C" : "–"; }

function fmtMS(ms) {
  if (ms == null) return "";
  if (ms < 1000) return ms + " ms";
  if (ms < 60000) return (ms / 1000).toFixed(1) + " s";
  return Math.round(ms / 60000) + " min";
}

function age(since, now) {
  if (!since) return "";
  const ms = Math.max(0, new Date(now) - new Date(since));
  return fmtMS(ms);
}

// spark draws the card (and SoC) temperature history as an SVG line.
function spark(temps) {
  if (!temps || temps.length < 2) return "";
  const w = 200, h = 40;
  const vals = temps.flatMap((t) => [t.card_c, t.soc_c]).filter((v) => v);
  let lo = Math.min(...vals), hi = Math.max(...vals);
  if (hi - lo < 5) { lo -= 2.5; hi += 2.5; }
  const line = (key) => temps.map((t, i) => t[key] ? `${(i / (temps.length - 1) * w).toFixed(1)},${(h - (t[key] - lo) / (hi - lo) * h).toFixed(1)}` : "")
    .filter(Boolean).join(" ");
  return `<svg class="spark" viewBox="0 0 ${w} ${h}" preserveAspectRatio="none" role="img" aria-label="temperature history">` +
    `<polyline class="soc-line" points="${line("soc_c")}"/><polyline class="card-line" points="${line("card_c")}"/></svg>`;
}

function renderCards(workers, jobs) {
  const el = $("cards");
  if (!workers || workers.length === 0) { el.innerHTML = '<p class="empty">No worker yet.</p>'; return; }
  el.innerHTML = workers.map((w) => {
    const cmm = w.cmm_total_mib ? Math.min(100, 100 * w.cmm_used_mib / w.cmm_total_mib) : 0;
    const models = (w.models || []).map((m) => `<li class="${esc(m.state)}" title="${esc(m.error || m.state)}">${esc(m.name)} <small>${esc(m.kind)}</small></li>`).join("");
    const job = w.current_job ? (jobs || []).find((j) => j.id === w.current_job) : null;
    const current = w.current_job ? `<div class="current">running <span class="job-id">${esc(w.current_job)}</span>${job && job.model ? " · " + esc(job.model) : ""}</div>` : "";
    return `<article class="card" data-worker="${esc(w.worker)}">
      <div class="card-head"><span class="card-name">${esc(w.worker)}</span><span class="state state-${esc(w.state)}">${esc(w.state)}</span></div>
      <div class="temps">
        <div class="temp temp-card">${fmtTemp(w.card_temp_c)}<small>card</small></div>
        <div class="temp temp-soc">${fmtTemp(w.soc_temp_c)}<small>SoC</small></div>
        ${spark(w.temps)}
      </div>
      <div class="meta"><span>CMM ${w.cmm_used_mib || 0} / ${w.cmm_total_mib || 0} MiB</span><span>NPU ${Math.round((w.npu_util || 0) * 100)}%</span><span>${w.tokens_per_s ? w.tokens_per_s.toFixed(1) + " tok/s" : ""}</span></div>
      <div class="bar" title="CMM"><span data-pct="${cmm.toFixed(1)}"></span></div>
      <ul class="models">${models}</ul>
      <div class="meta"><span>ok ${w.jobs_ok} · failed ${w.jobs_failed} · refused ${w.jobs_refused}</span><span>faults ${w.faults || 0}</span><span>governor ${esc(w.governor && w.governor.state)}</span></div>
      ${current}
    </article>`;
  }).join("");
  // The page's CSP refuses inline style attributes; the CSSOM may set them.
  el.querySelectorAll(".bar > span").forEach((s) => { s.style.width = s.dataset.pct + "%"; });
}

function renderQueue(queue, now) {
  const body = $("queue").tBodies[0];
  if (!queue || queue.length === 0) { body.innerHTML = '<tr><td colspan="6" class="empty">Empty.</td></tr>'; return; }
  body.innerHTML = queue.map((q) => `<tr class="${q.unserved ? "unserved" : ""}" data-route="${esc(q.subject || q.kind + "." + q.model + "." + q.lane)}">
    <td>${esc(q.kind || "?")}</td><td>${esc(q.model || q.subject)}</td><td>${esc(q.lane)}</td>
    <td class="waiting">${q.waiting}</td><td>${q.running}</td><td>${age(q.oldest, now)}</td></tr>`).join("");
}

function mayCancel(j) {
  return !identity.read_only && (identity.cancel_any || (j.client || "") === identity.client);
}

function renderJobs(jobs) {
  const el = $("jobs");
  if (!jobs || jobs.length === 0) { el.innerHTML = '<li class="empty">None yet.</li>'; return; }
  el.innerHTML = jobs.map((j) => {
    const done = j.state !== "queued" && j.state !== "running";
    const dur = done && j.usage && j.usage.total_ms ? fmtMS(j.usage.total_ms) : "";
    const cancel = !done && mayCancel(j) ? `<button class="cancel" data-id="${esc(j.id)}" data-client="${esc(j.client || "")}">Cancel</button>` : "<span></span>";
    const err = j.error ? `<div class="job-error">${esc(j.error.code)}${j.error.field ? " on " + esc(j.error.field) : ""}: ${esc(j.error.message)}</div>` : "";
    const text = j.text ? `<div class="job-text">${esc(j.text)}</div>` : "";
    const img = j.image ? `<img src="/dashboard/jobs/${encodeURIComponent(j.id)}/image?client=${encodeURIComponent(j.client || "")}" alt="image of job ${esc(j.id)}" loading="lazy">` : "";
    return `<li class="job" data-job="${esc(j.id)}" data-state="${esc(j.state)}">
      <div class="job-head"><span class="state state-${esc(j.state)}">${esc(j.state)}</span>
        <span>${esc(j.kind || "")} ${esc(j.model || "")}</span><span class="job-id">${esc(j.id)}</span>
        ${j.client ? `<span class="job-client">${esc(j.client)}</span>` : ""}
        ${j.worker ? `<span>on ${esc(j.worker)}</span>` : ""}<span>${dur}</span></div>
      ${cancel}${text}${err}${img}</li>`;
  }).join("");
}

// setModels fills a playground select with the served models of kind,
// keeping the choice.
function setModels(select, workers, kind) {
  const names = [...new Set((workers || []).flatMap((w) => (w.models || []).filter((m) => m.kind === kind && m.state !== "failed").map((m) => m.name)))].sort();
  const have = [...select.options].map((o) => o.value);
  if (names.join() === have.join()) return;
  const keep = select.value;
  select.innerHTML = names.map((n) => `<option value="${esc(n)}">${esc(n)}</option>`).join("");
  if (names.includes(keep)) select.value = keep;
}

function render(v) {
  identity = v.identity || identity;
  document.title = v.title || "kiln";
  $("title").textContent = v.title || "kiln";
  renderCards(v.workers, v.jobs);
  renderQueue(v.queue, v.time);
  renderJobs(v.jobs);
  setModels($("play-chat-model"), v.workers, "chat");
  setModels($("play-image-model"), v.workers, "image");
  $("play-section").hidden = !!identity.read_only;
}

function connect() {
  const conn = $("conn");
  const es = new EventSource("/dashboard/events");
  es.addEventListener("fleet", (e) => {
    conn.textContent = "live"; conn.className = "conn live";
    render(JSON.parse(e.data));
  });
  es.onerror = () => { conn.textContent = "reconnecting…"; conn.className = "conn down"; };
}

async function post(path, body) {
  return fetch(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
}

// stream reads a server-sent event stream from a fetch response, calling
// on(event, data) for each event (data as sent: JSON text or "[DONE]").
async function stream(res, on) {
  const reader = res.body.getReader();
  const dec = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += dec.decode(value, { stream: true });
    let i;
    while ((i = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, i); buf = buf.slice(i + 2);
      let event = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) event = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      }
      if (data) on(event, data);
    }
  }
}

async function errorText(res) {
  try { const e = await res.json(); return e.error ? e.error.message : res.statusText; } catch { return res.statusText; }
}

// playForm runs the playground form of kind: it posts body() to path (the
// gateway's OpenAI endpoint, streamed) and passes each event to onEvent,
// which returns {text, done, error} to show.
function playForm(kind, path, body, onEvent) {
  const form = $(`play-${kind}`), status = $(`play-${kind}-status`), send = $(`play-${kind}-send`);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    send.disabled = true;
    delete form.dataset.status;
    status.textContent = "submitting…";
    onEvent("reset", null);
    const t0 = performance.now();
    try {
      const res = await post(path, body());
      const job = res.headers.get("X-Kiln-Job-Id") || "";
      form.dataset.job = job;
      if (!res.ok) { status.textContent = `job ${job} refused: ` + await errorText(res); form.dataset.status = "error"; return; }
      status.textContent = `job ${job} running`;
      let outcome = "error";
      await stream(res, (event, data) => {
        const r = onEvent(event, data === "[DONE]" ? null : JSON.parse(data)) || {};
        if (r.error) { status.textContent = `job ${job} failed: ${r.error.message}`; outcome = "error"; }
        else if (r.done) { outcome = "ok"; status.textContent = `job ${job} ok in ${fmtMS(Math.round(performance.now() - t0))}` + (r.note ? ", " + r.note : ""); }
      });
      form.dataset.status = outcome;
    } catch (err) {
      status.textContent = "failed: " + err;
      form.dataset.status = "error";
    } finally {
      send.disabled = false;
    }
  });
}

function init() {
  connect();
  $("jobs").addEventListener("click", async (e) => {
    const b = e.target.closest("button.cancel");
    if (!b) return;
    b.disabled = true; b.textContent = "Cancelling…";
    const res = await post("/dashboard/cancel", { id: b.dataset.id, client: b.dataset.client });
    b.textContent = res.ok ? "Cancel sent" : "Refused: " + await errorText(res);
  });
  // Chat: POST /v1/chat/completions, streamed (chat.completion.chunk frames).
  const chatOut = $("play-chat-out");
  playForm("chat", "/v1/chat/completions", () => ({
    model: $("play-chat-model").value, stream: true, stream_options: { include_usage: true }, max_tokens: 256,
    messages: [{ role: "user", content: $("play-chat-prompt").value }],
  }), (event, d) => {
    if (event === "reset") { chatOut.textContent = ""; chatOut.dataset.tokens = 0; return; }
    if (d === null) return { done: true, note: chatOut.dataset.usage || "" };       // [DONE]
    if (d.error) return { error: d.error };
    const delta = d.choices && d.choices[0] && d.choices[0].delta;
    if (delta && delta.content) { chatOut.textContent += delta.content; chatOut.dataset.tokens = +chatOut.dataset.tokens + 1; }
    if (d.usage) chatOut.dataset.usage = `${d.usage.completion_tokens} tokens`;
  });
  // Image: POST /v1/images/generations, streamed: a progress event per step, then the image.
  const bar = $("play-image-steps"), img = $("play-image-out");
  playForm("image", "/v1/images/generations", () => ({
    model: $("play-image-model").value, prompt: $("play-image-prompt").value, stream: true, response_format: "b64_json",
  }), (event, d) => {
    if (event === "reset") { bar.value = 0; bar.dataset.seen = 0; img.hidden = true; return; }
    if (event === "error" || (d && d.error)) return { error: d.error };
    if (event === "image_generation.progress") { bar.max = d.steps; bar.value = d.step; bar.dataset.seen = +bar.dataset.seen + 1; }
    if (event === "image_generation.completed") {
      bar.value = bar.max; img.src = "data:image/png;base64," + d.b64_json; img.alt = "generated image"; img.hidden = false;
      return { done: true, note: d.size || "" };
    }
  });
}

document.addEventListener("DOMContentLoaded", init);
