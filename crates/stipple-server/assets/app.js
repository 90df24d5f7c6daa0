// Stipple's page: plain JavaScript, no build step. Talks to the JSON API of the same origin.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { csrf: null, me: null, models: [], limits: {}, current: null, source: null, historyCursor: null, priceTimer: null };

// ---------------------------------------------------------------- API

async function api(method, path, body, retried) {
  const headers = { "accept": "application/json" };
  if (body !== undefined) headers["content-type"] = "application/json";
  if (state.csrf && method !== "GET") headers["x-csrf-token"] = state.csrf;
  const resp = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), credentials: "same-origin" });
  if (resp.status === 204) return null;
  const data = await resp.json().catch(() => ({}));
  // A stale CSRF token (the identity cookie changed, e.g. in another tab): fetch a fresh one once.
  if (resp.status === 403 && method !== "GET" && !retried && data.error && data.error.param === "x-csrf-token") {
    await refreshMe();
    return api(method, path, body, true);
  }
  if (!resp.ok) {
    const err = new Error((data.error && data.error.message) || `request failed (${resp.status})`);
    err.status = resp.status;
    err.param = data.error && data.error.param;
    throw err;
  }
  return data;
}

function say(text, isError) {
  const m = $("message");
  m.textContent = text || "";
  m.classList.toggle("error", !!isError);
}

const fmt = (n) => Number(n).toLocaleString("en-US");

// ---------------------------------------------------------------- account and balance

let meRequests = 0;
async function refreshMe() {
  // Several refreshes can be in flight (after a generation, after signing in); only the newest
  // answer counts, so a slow anonymous answer cannot undo a sign-in.
  const mine = ++meRequests;
  const me = await api("GET", "/api/me");
  if (mine !== meRequests) return;
  state.me = me;
  state.csrf = state.me.csrf_token;
  const t = state.me.tokens;
  const purchased = t.purchased > 0 ? ` + ${fmt(t.purchased)} bought` : "";
  $("balance").textContent = `${fmt(t.remaining)} tokens left today${purchased}`;
  $("balance").title = `Resets at ${new Date(t.resets_at).toLocaleString()}`;
  const signedIn = !!state.me.account;
  $("who").textContent = signedIn ? state.me.account.email : "";
  $("btn-auth").hidden = signedIn;
  $("btn-logout").hidden = !signedIn;
  $("nav-history").hidden = !signedIn;
  $("buy").hidden = !state.me.checkout_url;
  if (state.me.checkout_url) $("buy").href = state.me.checkout_url;
  $("btn-save").hidden = !signedIn || !state.current || !state.current.image_id;
  updatePriceText();
}

// ---------------------------------------------------------------- settings and price

function selectedModel() {
  return state.models.find((m) => m.name === $("model").value) || state.models[0];
}

function fillSizes(model) {
  const sizes = new Set();
  const base = Math.max(model.width, model.height);
  for (const f of [0.5, 1, 1.5, 2, 3, 4]) {
    const s = Math.round((base * f) / 8 / model.size_multiple) * 8 * model.size_multiple;
    if (s >= 8 && s <= state.limits.max_side) sizes.add(s);
  }
  const sel = $("size");
  sel.replaceChildren();
  for (const s of [...sizes].sort((a, b) => a - b)) {
    sel.add(new Option(`${s} × ${s}`, `${s}x${s}`, false, s === model.width && s === model.height));
  }
  if (![...sel.options].some((o) => o.selected)) sel.add(new Option(`${model.width} × ${model.height}`, `${model.width}x${model.height}`, true, true));
}

function applyModelDefaults() {
  const m = selectedModel();
  if (!m) return;
  fillSizes(m);
  $("steps").max = String(state.limits.max_steps);
  $("steps").value = String(m.steps);
  $("steps-out").textContent = m.steps;
  $("cfg").value = String(m.cfg_scale);
  $("sampler").value = m.sampler;
}

async function loadModels() {
  const info = await api("GET", "/api/models");
  state.models = info.models;
  state.limits = info.limits;
  const msel = $("model");
  for (const m of info.models) msel.add(new Option(m.name, m.name, m.default, m.default));
  for (const s of info.samplers) $("sampler").add(new Option(s, s));
  $("prompt").maxLength = info.limits.max_prompt_chars;
  if (info.limits.retention_secs) {
    const mins = Math.round(info.limits.retention_secs / 60);
    $("retention").textContent = mins >= 60 && mins % 60 === 0 ? `${mins / 60} hour${mins === 60 ? "" : "s"}` : `${mins} minutes`;
  }
  applyModelDefaults();
}

function requestBody() {
  const [w, h] = ($("size").value || "").split("x").map(Number);
  const body = {
    prompt: $("prompt").value,
    model: $("model").value || undefined,
    steps: Number($("steps").value),
    cfg_scale: Number($("cfg").value),
    sampler: $("sampler").value || undefined,
  };
  if (w && h) { body.width = w; body.height = h; }
  const neg = $("negative").value.trim();
  if (neg) body.negative_prompt = neg;
  const seed = $("seed").value.trim();
  if (seed !== "") body.seed = Number(seed);
  return body;
}

let lastPrice = null;
function updatePriceText() {
  if (lastPrice === null || !state.me) return;
  $("price").textContent = `Costs ${fmt(lastPrice)} tokens`;
  $("btn-generate").textContent = `Generate · ${fmt(lastPrice)}`;
  const t = state.me.tokens;
  const affordable = t.remaining + t.purchased >= lastPrice;
  if (!affordable) $("price").textContent += ` — not enough left today (resets ${new Date(t.resets_at).toLocaleTimeString()})`;
}

function schedulePrice() {
  clearTimeout(state.priceTimer);
  state.priceTimer = setTimeout(async () => {
    const body = requestBody();
    if (!body.prompt.trim()) body.prompt = "price";
    try {
      lastPrice = (await api("POST", "/api/price", body)).cost;
      updatePriceText();
    } catch (e) {
      $("price").textContent = e.message;
    }
  }, 150);
}

// ---------------------------------------------------------------- generating

async function generate(ev) {
  ev.preventDefault();
  const body = requestBody();
  if (!body.prompt.trim()) {
    say("Describe the image first.", true);
    $("prompt").focus();
    return;
  }
  $("btn-generate").disabled = true;
  say("");
  $("result").hidden = true;
  try {
    const job = await api("POST", "/api/generations", body);
    state.current = { id: job.id };
    showProgress(0, body.steps, job.queue_position);
    $("progress").scrollIntoView({ block: "nearest" });
    watch(job.id);
    refreshMe();
  } catch (e) {
    say(e.message, true);
    if (e.param && $(paramInput(e.param))) $(paramInput(e.param)).focus();
    $("btn-generate").disabled = false;
  }
}

function paramInput(param) {
  return { prompt: "prompt", steps: "steps", cfg_scale: "cfg", seed: "seed", width: "size", height: "size", sampler: "sampler", model: "model", negative_prompt: "negative" }[param];
}

function showProgress(step, steps, position) {
  $("progress").hidden = false;
  $("btn-cancel").disabled = false;
  $("progress-bar").max = steps;
  $("progress-bar").value = step;
  $("progress-text").textContent = step > 0 ? `Step ${step} of ${steps}` : position > 0 ? `Waiting in line (${position} ahead)…` : "Starting…";
}

function watch(id) {
  if (state.source) state.source.close();
  const src = new EventSource(`/api/generations/${encodeURIComponent(id)}/events`);
  state.source = src;
  src.addEventListener("progress", (e) => {
    const d = JSON.parse(e.data);
    showProgress(d.step, d.steps, 0);
    if (d.preview) {
      $("preview").src = d.preview;
      $("preview").hidden = false;
    }
  });
  src.addEventListener("done", (e) => {
    src.close();
    finished(JSON.parse(e.data));
  });
  src.addEventListener("error", (e) => {
    if (!e.data) return; // connection trouble: EventSource reconnects by itself
    src.close();
    const d = JSON.parse(e.data);
    endProgress();
    say(d.status === "canceled" ? "Cancelled." : `Generation failed: ${d.message}`, d.status !== "canceled");
    refreshMe();
  });
}

function endProgress() {
  $("progress").hidden = true;
  $("preview").hidden = true;
  $("preview").removeAttribute("src");
  $("btn-generate").disabled = false;
}

function finished(g) {
  endProgress();
  state.current = g;
  const img = $("result-img");
  img.src = g.image_url;
  img.alt = `Generated image: ${g.params.prompt}`;
  $("result-meta").textContent = `${g.params.width}×${g.params.height} · ${g.params.steps} steps · ${g.params.sampler} · CFG ${g.params.cfg_scale} · seed ${g.params.seed} · ${g.cost} tokens`;
  $("btn-download").href = g.image_url;
  $("btn-download").download = `stipple-${g.params.seed}.png`;
  $("share-out").hidden = true;
  $("btn-save").hidden = !state.me || !state.me.account;
  $("btn-save").disabled = false;
  $("btn-save").textContent = "Save";
  $("result").hidden = false;
  $("seed").placeholder = `random (last: ${g.params.seed})`;
  say("Done.");
  $("result-title").focus();
  refreshMe();
}

async function cancel() {
  if (!state.current) return;
  $("btn-cancel").disabled = true;
  try {
    await api("POST", `/api/generations/${encodeURIComponent(state.current.id)}/cancel`, {});
  } catch (e) {
    say(e.message, true);
  }
}

// ---------------------------------------------------------------- result actions

async function copyImage() {
  try {
    const blob = await (await fetch(state.current.image_url, { credentials: "same-origin" })).blob();
    await navigator.clipboard.write([new ClipboardItem({ "image/png": blob })]);
    say("Image copied to the clipboard.");
  } catch (e) {
    say("This browser cannot copy images; use Download instead.", true);
  }
}

async function share() {
  try {
    const { url } = await api("POST", `/api/images/${encodeURIComponent(state.current.image_id)}/share`, {});
    $("share-url").value = url;
    $("share-out").hidden = false;
    $("share-url").select();
    if (navigator.share) {
      navigator.share({ title: "Stipple", text: state.current.params.prompt, url }).catch(() => {});
    } else if (navigator.clipboard) {
      await navigator.clipboard.writeText(url).then(() => say("Share link copied."), () => say("Share link ready."));
    } else {
      say("Share link ready.");
    }
  } catch (e) {
    say(e.message, true);
  }
}

async function saveCurrent() {
  try {
    await api("POST", `/api/images/${encodeURIComponent(state.current.image_id)}/save`, {});
    $("btn-save").textContent = "Saved";
    $("btn-save").disabled = true;
    say("Saved to your history.");
  } catch (e) {
    say(e.message, true);
  }
}

// ---------------------------------------------------------------- accounts

function openAuth() {
  $("auth-message").textContent = "";
  $("auth-dialog").showModal();
  $("email").focus();
}

async function submitAuth(ev) {
  ev.preventDefault();
  const action = ev.submitter && ev.submitter.value === "signup" ? "signup" : "login";
  try {
    const r = await api("POST", `/api/auth/${action}`, { email: $("email").value, password: $("password").value });
    state.csrf = r.csrf_token;
    $("password").value = "";
    $("auth-dialog").close();
    await refreshMe();
    say(action === "signup" ? "Account created. You have 5,000 tokens a day." : "Signed in.");
  } catch (e) {
    $("auth-message").textContent = e.message;
    const field = e.param === "email" ? "email" : "password";
    $(field).focus();
  }
}

async function logout() {
  try {
    await api("POST", "/api/auth/logout", {});
  } catch (e) { /* the session is gone either way */ }
  await refreshMe();
  location.hash = "#create";
  say("Signed out.");
}

// ---------------------------------------------------------------- history

async function loadHistory(reset) {
  if (reset) {
    state.historyCursor = null;
    $("history-list").replaceChildren();
  }
  const q = state.historyCursor ? `?cursor=${encodeURIComponent(state.historyCursor)}` : "";
  try {
    const page = await api("GET", `/api/history${q}`);
    for (const item of page.items) $("history-list").append(historyItem(item));
    if (reset && page.items.length === 0) {
      const li = document.createElement("li");
      li.textContent = "Nothing yet: make an image first.";
      $("history-list").append(li);
    }
    state.historyCursor = page.next_cursor;
    $("btn-more").hidden = !page.next_cursor;
  } catch (e) {
    say(e.message, true);
  }
}

function historyItem(item) {
  const li = document.createElement("li");
  const img = document.createElement("img");
  img.src = item.image_url;
  img.alt = item.params.prompt;
  img.loading = "lazy";
  img.width = item.params.width;
  img.height = item.params.height;
  const p = document.createElement("p");
  p.className = "prompt";
  p.textContent = item.params.prompt;
  const buttons = document.createElement("div");
  buttons.className = "buttons";
  const save = document.createElement("button");
  save.type = "button";
  save.textContent = item.saved ? "Saved" : "Save";
  save.disabled = item.saved;
  save.setAttribute("aria-label", `Save: ${item.params.prompt}`);
  save.addEventListener("click", async () => {
    try {
      await api("POST", `/api/images/${encodeURIComponent(item.id)}/save`, {});
      save.textContent = "Saved";
      save.disabled = true;
    } catch (e) { say(e.message, true); }
  });
  const del = document.createElement("button");
  del.type = "button";
  del.textContent = "Delete";
  del.setAttribute("aria-label", `Delete: ${item.params.prompt}`);
  del.addEventListener("click", async () => {
    try {
      await api("DELETE", `/api/images/${encodeURIComponent(item.id)}`);
      li.remove();
      say("Deleted.");
    } catch (e) { say(e.message, true); }
  });
  buttons.append(save, del);
  li.append(img, p, buttons);
  return li;
}

// ---------------------------------------------------------------- views

function route() {
  const history = location.hash === "#history" && state.me && state.me.account;
  $("view-create").hidden = !!history;
  $("view-history").hidden = !history;
  $("nav-create").toggleAttribute("aria-current", !history);
  $("nav-history").toggleAttribute("aria-current", !!history);
  if (history) {
    $("nav-create").removeAttribute("aria-current");
    $("nav-history").setAttribute("aria-current", "page");
    loadHistory(true);
  } else {
    $("nav-history").removeAttribute("aria-current");
    $("nav-create").setAttribute("aria-current", "page");
  }
}

async function init() {
  $("gen-form").addEventListener("submit", generate);
  $("btn-cancel").addEventListener("click", cancel);
  $("btn-copy").addEventListener("click", copyImage);
  $("btn-share").addEventListener("click", share);
  $("btn-save").addEventListener("click", saveCurrent);
  $("btn-auth").addEventListener("click", openAuth);
  $("btn-auth-close").addEventListener("click", () => $("auth-dialog").close());
  $("auth-form").addEventListener("submit", submitAuth);
  $("btn-logout").addEventListener("click", logout);
  $("btn-more").addEventListener("click", () => loadHistory(false));
  $("model").addEventListener("change", () => { applyModelDefaults(); schedulePrice(); });
  $("steps").addEventListener("input", () => { $("steps-out").textContent = $("steps").value; schedulePrice(); });
  for (const id of ["cfg", "size", "sampler", "seed"]) $(id).addEventListener("change", schedulePrice);
  // Ctrl/Cmd+Enter in the prompt generates.
  $("prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) $("gen-form").requestSubmit();
  });
  window.addEventListener("hashchange", route);
  try {
    // /api/me first: on a first visit it sets the identity cookie the CSRF token is derived from;
    // a concurrent request could set a second identity and leave the token stale.
    await refreshMe();
    await loadModels();
    schedulePrice();
    route();
  } catch (e) {
    say(`The server cannot be reached: ${e.message}`, true);
  }
}

document.addEventListener("DOMContentLoaded", init);
