/* BitDance playground: a form built from the endpoint's input schema, runs through the queue API
 * like a fal client (submit, status stream with logs, cancel, result), the same request as code,
 * and this browser's history. Plain JavaScript, no build step, nothing loaded from elsewhere. */
"use strict";

const KEY_STORAGE = "bitdance.apiKey";
const HISTORY_STORAGE = "bitdance.history";
const HISTORY_LIMIT = 30;
const HISTORY_MAX_URL_CHARS = 2048; // data URIs (sync_mode) are not kept in the history
// fal's documented presets, as (width, height): the server snaps them to the checkpoint's sizes.
const PRESET_SIZES = {
  square_hd: [1024, 1024],
  square: [512, 512],
  portrait_4_3: [768, 1024],
  portrait_16_9: [576, 1024],
  landscape_4_3: [1024, 768],
  landscape_16_9: [1024, 576],
};
const CUSTOM_SIZE = "custom";
const SLIDER_MAX_SPAN = 1000; // bounded numbers get a slider too, unless the range is huge (seed)
const PATCH_LOG = /patch (\d+)\/(\d+), (\d+) sampling steps each/;

const state = {
  config: null,
  schema: null, // BitDanceInput's JSON schema
  components: {},
  running: null, // {requestId, cancelUrl, responseUrl, input, controller, cancelling}
};

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "className") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/* ---------------------------------------------------------------- schema -> form */

function resolveRef(schema) {
  if (schema && schema.$ref) return state.components[schema.$ref.split("/").pop()] || {};
  return schema || {};
}

/** The shape of one property: {kind, enum, nullable, object} from its JSON schema. */
function describeProperty(raw) {
  const schema = resolveRef(raw);
  const variants = (schema.anyOf || schema.oneOf || [schema]).map(resolveRef);
  const nullable = variants.some((v) => v.type === "null");
  const real = variants.filter((v) => v.type !== "null");
  const enumVariant = real.find((v) => Array.isArray(v.enum));
  const objectVariant = real.find((v) => v.type === "object" && v.properties);
  const base = real[0] || {};
  if (enumVariant && objectVariant) return { kind: "size", options: enumVariant.enum, object: objectVariant, nullable };
  if (enumVariant) return { kind: "select", options: enumVariant.enum, nullable, base: enumVariant };
  if (base.type === "boolean") return { kind: "boolean", nullable, base };
  if (base.type === "integer" || base.type === "number") return { kind: base.type, nullable, base };
  return { kind: "string", nullable, base };
}

function labelText(name, schema) {
  return schema.title || name.replace(/_/g, " ").replace(/^./, (c) => c.toUpperCase());
}

function fieldError(name) {
  return el("p", { className: "field-error", "data-error-for": name, role: "alert", hidden: true });
}

function numberInput(name, schema, fallbackDefault) {
  const isInteger = schema.type === "integer";
  const def = schema.default ?? fallbackDefault;
  const attrs = {
    id: `field-${name}`,
    name,
    type: "number",
    inputmode: isInteger ? "numeric" : "decimal",
    min: schema.minimum,
    max: schema.maximum,
    step: isInteger ? 1 : 0.1,
    value: def ?? "",
    placeholder: def === undefined || def === null ? "random" : String(def),
  };
  return el("input", attrs);
}

function buildField(name, raw, required) {
  const shape = describeProperty(raw);
  const schema = { ...resolveRef(raw), ...(shape.base || {}) };
  const description = resolveRef(raw).description || schema.description || "";
  const wrapper = el("div", { className: `field field-${shape.kind}`, "data-field": name });
  const label = el("label", { for: `field-${name}` }, labelText(name, resolveRef(raw)), required ? el("span", { className: "required", text: " *" }) : null);
  const def = resolveRef(raw).default;

  if (shape.kind === "boolean") {
    const box = el("input", { id: `field-${name}`, name, type: "checkbox", checked: def === true });
    wrapper.append(el("label", { className: "check", for: `field-${name}` }, box, " ", labelText(name, resolveRef(raw))));
  } else if (shape.kind === "select") {
    const select = el("select", { id: `field-${name}`, name }, shape.options.map((o) => el("option", { value: o, selected: o === def }, o)));
    wrapper.append(label, select);
  } else if (shape.kind === "size") {
    const select = el("select", { id: `field-${name}`, name },
      shape.options.map((o) => el("option", { value: o, selected: o === def }, sizeLabel(o))),
      el("option", { value: CUSTOM_SIZE }, "custom width × height"));
    const custom = el("div", { className: "custom-size", hidden: true });
    for (const [sub, subRaw] of Object.entries(shape.object.properties)) {
      const subSchema = resolveRef(subRaw);
      const subWrapper = el("div", { className: "field sub-field", "data-field": `${name}.${sub}` },
        el("label", { for: `field-${sub}` }, labelText(sub, subSchema)),
        numberInput(sub, subSchema),
        fieldError(`${name}.${sub}`));
      custom.append(subWrapper);
    }
    select.addEventListener("change", () => { custom.hidden = select.value !== CUSTOM_SIZE; });
    wrapper.append(label, select, custom);
  } else if (shape.kind === "integer" || shape.kind === "number") {
    const input = numberInput(name, schema);
    if (schema.minimum !== undefined && schema.maximum !== undefined && schema.maximum - schema.minimum <= SLIDER_MAX_SPAN) {
      const range = el("input", {
        type: "range", min: schema.minimum, max: schema.maximum, step: shape.kind === "integer" ? 1 : 0.1,
        value: input.value, "aria-label": `${labelText(name, resolveRef(raw))} slider`, tabindex: -1,
      });
      range.addEventListener("input", () => { input.value = range.value; input.dispatchEvent(new Event("input", { bubbles: true })); });
      input.addEventListener("input", () => { if (input.value !== "") range.value = input.value; });
      wrapper.append(label, el("div", { className: "number-row" }, input, range));
    } else {
      wrapper.append(label, el("div", { className: "number-row wide" }, input));
    }
  } else {
    const long = (schema.maxLength || 0) > 200;
    const example = (resolveRef(raw).examples || [])[0];
    const input = long
      ? el("textarea", { id: `field-${name}`, name, rows: 3, maxlength: schema.maxLength, placeholder: example, required })
      : el("input", { id: `field-${name}`, name, type: "text", maxlength: schema.maxLength, placeholder: example, required });
    if (typeof def === "string") input.value = def;
    wrapper.append(label, input);
  }
  const bounds = [];
  if (schema.minimum !== undefined && schema.maximum !== undefined && schema.maximum <= Number.MAX_SAFE_INTEGER) {
    bounds.push(`${schema.minimum}–${schema.maximum}`);
  }
  if (def !== undefined && def !== null && shape.kind !== "boolean") bounds.push(`default ${def}`);
  if (description || bounds.length) {
    wrapper.append(el("p", { className: "help" }, description, bounds.length ? el("span", { className: "bounds" }, ` (${bounds.join(", ")})`) : null));
  }
  wrapper.append(fieldError(name));
  return wrapper;
}

function sizeLabel(preset) {
  const size = PRESET_SIZES[preset];
  return size ? `${preset} (${size[0]}×${size[1]})` : preset;
}

function buildForm() {
  const fields = $("fields");
  fields.replaceChildren();
  const required = new Set(state.schema.required || []);
  for (const [name, raw] of Object.entries(state.schema.properties)) {
    fields.append(buildField(name, raw, required.has(name)));
  }
}

/** The request body from the form: every field as its schema types it; blank optional ones left out. */
function readInput() {
  const form = $("input-form");
  const input = {};
  for (const [name, raw] of Object.entries(state.schema.properties)) {
    const shape = describeProperty(raw);
    const control = form.elements.namedItem(name);
    if (!control) continue;
    if (shape.kind === "boolean") { input[name] = control.checked; continue; }
    if (shape.kind === "size") {
      if (control.value === CUSTOM_SIZE) {
        input[name] = {};
        for (const sub of Object.keys(shape.object.properties)) input[name][sub] = asNumber(form.elements.namedItem(sub).value);
      } else input[name] = control.value;
      continue;
    }
    const value = control.value;
    if (value === "" && !(state.schema.required || []).includes(name)) continue;
    input[name] = shape.kind === "integer" || shape.kind === "number" ? asNumber(value) : value;
  }
  return input;
}

function asNumber(text) {
  const trimmed = String(text).trim();
  const number = Number(trimmed);
  return trimmed !== "" && Number.isFinite(number) ? number : trimmed; // the server names what is wrong
}

function fillForm(input) {
  const form = $("input-form");
  for (const [name, raw] of Object.entries(state.schema.properties)) {
    const shape = describeProperty(raw);
    const control = form.elements.namedItem(name);
    if (!control) continue;
    const value = input[name];
    if (shape.kind === "boolean") control.checked = value === undefined ? resolveRef(raw).default === true : Boolean(value);
    else if (shape.kind === "size") {
      if (value && typeof value === "object") {
        control.value = CUSTOM_SIZE;
        for (const [sub, subValue] of Object.entries(value)) {
          const subControl = form.elements.namedItem(sub);
          if (subControl) subControl.value = subValue;
        }
      } else control.value = value ?? resolveRef(raw).default;
      control.dispatchEvent(new Event("change"));
    } else {
      control.value = value ?? (resolveRef(raw).default ?? "");
      control.dispatchEvent(new Event("input", { bubbles: true }));
    }
  }
  updateCode();
}

/* ---------------------------------------------------------------- errors at their fields */

function clearErrors() {
  for (const node of document.querySelectorAll(".field-error")) { node.hidden = true; node.textContent = ""; }
  for (const node of document.querySelectorAll(".field.invalid")) node.classList.remove("invalid");
  for (const node of document.querySelectorAll("[aria-invalid]")) node.removeAttribute("aria-invalid");
  $("form-error").hidden = true;
}

/** fal's 422 body {"detail": [{loc, msg, type}]}: each message next to the field its loc names. */
function showValidationErrors(detail) {
  const unplaced = [];
  for (const error of Array.isArray(detail) ? detail : []) {
    const loc = (error.loc || []).filter((part) => part !== "body");
    let target = null;
    for (let n = loc.length; n > 0 && !target; n--) {
      target = document.querySelector(`.field-error[data-error-for="${CSS.escape(loc.slice(0, n).join("."))}"]`);
    }
    if (!target) { unplaced.push(`${loc.join(".") || "input"}: ${error.msg}`); continue; }
    target.textContent = error.msg;
    target.hidden = false;
    const wrapper = target.closest(".field");
    wrapper.classList.add("invalid");
    const control = wrapper.querySelector("input, select, textarea");
    if (control) control.setAttribute("aria-invalid", "true");
  }
  if (typeof detail === "string") unplaced.push(detail);
  if (unplaced.length) { $("form-error").textContent = unplaced.join("; "); $("form-error").hidden = false; }
  const first = document.querySelector(".field.invalid input, .field.invalid select, .field.invalid textarea");
  if (first) first.focus();
}

/* ---------------------------------------------------------------- running through the queue */

function authHeaders() {
  const key = $("api-key").value.trim();
  return key ? { Authorization: `Key ${key}` } : {};
}

function setStatus(text, kind) {
  const node = $("run-status");
  node.textContent = text;
  node.className = `status ${kind}`;
}

function setProgress(fraction, indeterminate = false) {
  const bar = $("progress-bar");
  bar.style.width = `${Math.round(Math.max(0, Math.min(1, fraction)) * 100)}%`;
  bar.classList.toggle("indeterminate", indeterminate);
}

function appendLogs(logs) {
  const list = $("logs");
  for (const entry of logs || []) {
    const time = entry.timestamp ? new Date(entry.timestamp).toLocaleTimeString() : "";
    list.append(el("li", { className: `log ${String(entry.level || "").toLowerCase()}` }, el("span", { className: "log-time", text: time }), " ", entry.message));
    const match = PATCH_LOG.exec(entry.message);
    if (match) {
      const [patch, patches] = [Number(match[1]), Number(match[2])];
      setStatus(`Generating: patch ${patch}/${patches}, ${match[3]} sampling steps each`, "running");
      setProgress(0.9 * (patch / patches), false);
      if (patch === patches) { setStatus("Decoding, checking and encoding the image", "running"); setProgress(0.95, true); }
    }
  }
  list.scrollTop = list.scrollHeight;
}

async function submit(event) {
  event.preventDefault();
  if (state.running) return;
  clearErrors();
  const input = readInput();
  const key = $("api-key").value.trim();
  if (key) localStorage.setItem(KEY_STORAGE, key);
  resetResult();
  setStatus("Submitting", "running");
  let response;
  try {
    response = await fetch(state.config.queue_submit_url, {
      method: "POST",
      headers: { "Content-Type": "application/json", ...authHeaders() },
      body: JSON.stringify(input),
    });
  } catch (error) {
    return showFailure(`Could not reach the server: ${error.message}`);
  }
  const body = await response.json().catch(() => ({}));
  if (response.status === 422) {
    setStatus("Invalid input", "error");
    showResultError("The server rejected the input (422): see the highlighted field.");
    return showValidationErrors(body.detail);
  }
  if (!response.ok) return showFailure(`${response.status}: ${messageOf(body)}`);
  const run = {
    requestId: body.request_id, statusUrl: body.status_url, responseUrl: body.response_url, cancelUrl: body.cancel_url,
    input, controller: new AbortController(), cancelling: false, createdAt: Date.now(),
  };
  state.running = run;
  $("request-id").textContent = body.request_id;
  $("cancel-button").disabled = false;
  $("run-button").disabled = true;
  showQueued(body.queue_position);
  saveHistory({ request_id: run.requestId, created_at: run.createdAt, input, status: "IN_QUEUE" });
  try {
    await followStatus(run);
    await fetchResult(run);
  } catch (error) {
    if (state.running === run) showFailure(`Lost the request's status: ${error.message}`);
  } finally {
    if (state.running === run) finishRun();
  }
}

function showQueued(position) {
  setStatus("In queue", "queued");
  $("queue-position").textContent = position === undefined || position === null ? "" : `position ${position}`;
  setProgress(0.02, true);
}

/** Reads the status stream (SSE over fetch, so the Authorization header goes along); polls if it breaks. */
async function followStatus(run) {
  try {
    const response = await fetch(`${run.statusUrl}/stream?logs=1`, { headers: authHeaders(), signal: run.controller.signal });
    if (!response.ok || !response.body) throw new Error(`status stream answered ${response.status}`);
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const chunk = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = chunk.split("\n").filter((line) => line.startsWith("data:")).map((line) => line.slice(5).trim()).join("\n");
        if (data && onStatus(JSON.parse(data))) return;
      }
    }
  } catch (error) {
    if (error.name === "AbortError") throw error;
    console.warn("status stream failed, polling instead", error);
  }
  for (;;) { // polling fallback (the stream ended early or could not be read)
    const response = await fetch(`${run.statusUrl}?logs=1`, { headers: authHeaders() });
    const body = await response.json();
    $("logs").replaceChildren();
    if (onStatus(body)) return;
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
}

/** One status update; true once COMPLETED. */
function onStatus(status) {
  if (status.status === "IN_QUEUE") showQueued(status.queue_position);
  else if (status.status === "IN_PROGRESS") {
    $("queue-position").textContent = "";
    if ($("run-status").classList.contains("queued")) { setStatus("Running", "running"); setProgress(0.03, true); }
  }
  appendLogs(status.logs);
  return status.status === "COMPLETED";
}

async function fetchResult(run) {
  const response = await fetch(run.responseUrl, { headers: authHeaders() });
  const body = await response.json().catch(() => ({}));
  if (response.ok) {
    showOutput(body, run);
    updateHistory(run.requestId, { status: "COMPLETED", output: historyOutput(body) });
  } else if (response.status === 499 || body.error_type === "client_cancelled") {
    setStatus("Cancelled", "cancelled");
    setProgress(0);
    updateHistory(run.requestId, { status: "CANCELLED" });
  } else if (response.status === 422) {
    setStatus("Invalid input", "error");
    showValidationErrors(body.detail);
    updateHistory(run.requestId, { status: "ERROR", error: messageOf(body) });
  } else {
    showFailure(`${response.status}: ${messageOf(body)}`);
    updateHistory(run.requestId, { status: "ERROR", error: messageOf(body) });
  }
}

function messageOf(body) {
  if (typeof body.detail === "string") return body.detail;
  if (Array.isArray(body.detail)) return body.detail.map((d) => d.msg).join("; ");
  return body.error || JSON.stringify(body);
}

async function cancel() {
  const run = state.running;
  if (!run || run.cancelling) return;
  run.cancelling = true;
  $("cancel-button").disabled = true;
  setStatus("Cancelling", "cancelled");
  const response = await fetch(run.cancelUrl, { method: "PUT", headers: authHeaders() }).catch(() => null);
  if (response && response.status === 400) setStatus("Already completed", "running");
}

function finishRun() {
  state.running = null;
  $("cancel-button").disabled = true;
  $("run-button").disabled = false;
  renderHistory();
}

function showFailure(message) {
  setStatus("Failed", "error");
  setProgress(0);
  showResultError(message);
}

function showResultError(message) {
  const box = $("result-error");
  box.textContent = message;
  box.hidden = false;
}

function resetResult() {
  $("images").replaceChildren();
  $("logs").replaceChildren();
  $("result-error").hidden = true;
  $("result-meta").hidden = true;
  $("queue-position").textContent = "";
  $("request-id").textContent = "";
  setProgress(0);
  selectTab("result");
}

function showOutput(output, run) {
  setStatus("Done", "done");
  setProgress(1);
  $("result-seed").textContent = String(output.seed);
  $("result-meta").hidden = false;
  $("result-time").textContent = `${((Date.now() - run.createdAt) / 1000).toFixed(1)} s end to end`;
  const images = $("images");
  images.replaceChildren();
  (output.images || []).forEach((image, index) => images.append(imageCard(image, index, (output.has_nsfw_concepts || [])[index])));
}

function imageCard(image, index, nsfw) {
  const img = el("img", { src: image.url, alt: `generated image ${index + 1}`, width: image.width, height: image.height, className: "result-image" });
  const size = el("span", { className: "natural-size" }, `${image.width}×${image.height}`);
  img.addEventListener("load", () => { size.textContent = `${img.naturalWidth}×${img.naturalHeight}`; });
  const kib = image.file_size ? ` · ${(image.file_size / 1024).toFixed(0)} KiB` : "";
  return el("figure", { className: "image-card" },
    el("a", { href: image.url, target: "_blank", rel: "noopener", title: "Open full size" }, img),
    el("figcaption", {},
      el("span", { className: "image-meta" },
        size, el("span", { className: "muted" }, ` · ${image.content_type || ""}${kib} · `),
        el("span", { className: nsfw ? "nsfw flagged" : "nsfw" }, nsfw ? "NSFW: flagged (blacked out)" : "NSFW: no")),
      el("span", { className: "image-links" },
        el("a", { href: image.url, download: image.file_name || `bitdance-${index}`, className: "download" }, "Download"),
        el("a", { href: image.url, target: "_blank", rel: "noopener", className: "open-full" }, "Open full size"))));
}

/* ---------------------------------------------------------------- history */

function loadHistory() {
  try { return JSON.parse(localStorage.getItem(HISTORY_STORAGE) || "[]"); } catch { return []; }
}

function storeHistory(items) {
  try { localStorage.setItem(HISTORY_STORAGE, JSON.stringify(items.slice(0, HISTORY_LIMIT))); } catch { /* quota: keep going */ }
}

function saveHistory(item) { storeHistory([item, ...loadHistory().filter((i) => i.request_id !== item.request_id)]); renderHistory(); }

function updateHistory(requestId, changes) {
  storeHistory(loadHistory().map((item) => (item.request_id === requestId ? { ...item, ...changes } : item)));
  renderHistory();
}

function historyOutput(output) {
  const images = (output.images || []).map((i) => ({
    url: i.url.length > HISTORY_MAX_URL_CHARS ? null : i.url, width: i.width, height: i.height, content_type: i.content_type,
  }));
  return { seed: output.seed, images, has_nsfw_concepts: output.has_nsfw_concepts };
}

function renderHistory() {
  const list = $("history");
  const items = loadHistory();
  list.replaceChildren();
  if (!items.length) { list.append(el("li", { className: "muted empty" }, "No requests from this browser yet.")); return; }
  for (const item of items) {
    const input = item.input || {};
    const size = typeof input.image_size === "object" ? `${input.image_size.width}×${input.image_size.height}` : input.image_size || "";
    const thumbs = ((item.output || {}).images || []).map((image) => image.url
      ? el("a", { href: image.url, target: "_blank", rel: "noopener" }, el("img", { src: image.url, alt: "", className: "thumb", loading: "lazy" }))
      : el("span", { className: "thumb missing" }, "inline"));
    list.append(el("li", { className: "history-item" },
      el("div", { className: "history-thumbs" }, thumbs),
      el("div", { className: "history-body" },
        el("p", { className: "history-prompt" }, input.prompt || ""),
        el("p", { className: "muted" }, [new Date(item.created_at).toLocaleString(), size, `${input.num_inference_steps ?? ""} steps`,
          item.output ? `seed ${item.output.seed}` : "", item.status].filter(Boolean).join(" · ")),
        el("button", { type: "button", className: "small", onclick: () => { fillForm(input); window.scrollTo({ top: 0, behavior: "smooth" }); } }, "Use this input"))));
  }
}

/* ---------------------------------------------------------------- API tab */

function pythonLiteral(value, indent = "") {
  if (value === null || value === undefined) return "None";
  if (value === true) return "True";
  if (value === false) return "False";
  if (typeof value === "number") return String(value);
  if (typeof value === "string") return JSON.stringify(value);
  if (Array.isArray(value)) return `[${value.map((v) => pythonLiteral(v, indent)).join(", ")}]`;
  const inner = `${indent}    `;
  const entries = Object.entries(value).map(([k, v]) => `${inner}${JSON.stringify(k)}: ${pythonLiteral(v, inner)},`);
  return `{\n${entries.join("\n")}\n${indent}}`;
}

function jsLiteral(value, indent = "") {
  if (value === null || typeof value !== "object" || Array.isArray(value)) return JSON.stringify(value);
  const inner = `${indent}  `;
  const entries = Object.entries(value).map(([k, v]) => `${inner}${/^[A-Za-z_$][\w$]*$/.test(k) ? k : JSON.stringify(k)}: ${jsLiteral(v, inner)},`);
  return `{\n${entries.join("\n")}\n${indent}}`;
}

function shellQuote(text) { return `'${text.replace(/'/g, `'\\''`)}'`; }

function updateCode() {
  if (!state.schema || !state.config) return;
  const input = readInput();
  const endpoint = state.config.endpoint_id;
  const origin = window.location.origin;
  const host = window.location.host;
  const keyed = state.config.requires_key;
  const keyNote = keyed ? "one of the server's BITDANCE_API_KEYS" : "any value: this server is open";
  const tlsNote = window.location.protocol === "https:"
    ? "export SSL_CERT_FILE=/path/to/.run/tls/ca.pem   # the CA `make run TLS=1` printed (not needed with a public certificate)"
    : "# fal-client always uses https: serve TLS (`make run TLS=1`) and\n# export SSL_CERT_FILE=/path/to/.run/tls/ca.pem   # the CA it printed";
  $("code-python").textContent = [
    "# Set before fal_client is imported (it reads its hosts once, at import time):",
    `export FAL_KEY=...                            # ${keyNote}`,
    `export FAL_RUN_HOST=${host}`,
    `export FAL_QUEUE_RUN_HOST=${host}/queue`,
    tlsNote,
    "",
    "import fal_client",
    "",
    "result = fal_client.subscribe(",
    `    ${JSON.stringify(endpoint)},`,
    `    arguments=${pythonLiteral(input, "    ")},`,
    "    with_logs=True,",
    "    on_queue_update=lambda update: print(update),",
    ")",
    'print(result["images"][0]["url"])',
  ].join("\n");
  $("code-js").textContent = [
    'import { createFalClient } from "@fal-ai/client";',
    "",
    "const fal = createFalClient({",
    `  credentials: process.env.FAL_KEY,  // ${keyNote}`,
    `  proxyUrl: { url: ${JSON.stringify(`${origin}/api/fal/proxy`)}, when: "always" },`,
    "});",
    "",
    `const result = await fal.subscribe(${JSON.stringify(endpoint)}, {`,
    `  input: ${jsLiteral(input, "  ")},`,
    "  logs: true,",
    "  onQueueUpdate: (update) => console.log(update.status, update.logs?.at(-1)?.message ?? \"\"),",
    "});",
    "console.log(result.data.images[0].url);",
  ].join("\n");
  const auth = keyed ? ` \\\n  -H "Authorization: Key $FAL_KEY"` : "";
  $("code-curl").textContent = `curl -s ${origin}/${endpoint}${auth} \\\n  -H 'Content-Type: application/json' \\\n  -d ${shellQuote(JSON.stringify(input))}`;
}

/* ---------------------------------------------------------------- banner, tabs, start */

async function showModelBanner() {
  const banner = $("model-banner");
  let health;
  try { health = await (await fetch("/health")).json(); } catch { banner.textContent = "Could not read /health."; banner.className = "banner warn"; return; }
  const workers = health.live_workers || [];
  const models = workers.map((w) => w.model).filter(Boolean);
  if (!workers.length) {
    banner.className = "banner warn";
    banner.textContent = "No worker is running: requests wait in the queue until one starts.";
    return;
  }
  const model = models[0] || {};
  const where = `${model.name || "unknown"} (variant ${model.variant || "?"}, ${model.parallel_num || "?"} tokens per step) from ${model.path || "?"}`;
  const count = workers.length > 1 ? ` · ${workers.length} workers` : "";
  if (model.simulated) {
    banner.className = "banner warn";
    banner.replaceChildren(el("strong", {}, "Simulated model: "), `images are synthetic test output, not BitDance's. ${where}${count}`);
  } else if (model.random) {
    banner.className = "banner warn";
    banner.replaceChildren(el("strong", {}, "Random tiny checkpoint: "),
      `the weights are random, so images are coloured noise, not pictures. ${where}${count}. For real images load the released weights: `,
      el("code", {}, "make run MODEL=/path/to/BitDance-14B-64x DEVICE=cuda:0"), " (see weights.md).");
  } else {
    banner.className = "banner ok";
    banner.replaceChildren(el("strong", {}, "Model: "), `${where}${count}`);
  }
}

function selectTab(name) {
  for (const tab of ["result", "api", "history"]) {
    $(`tab-${tab}`).setAttribute("aria-selected", String(tab === name));
    $(`pane-${tab}`).hidden = tab !== name;
  }
  if (name === "api") updateCode();
  if (name === "history") renderHistory();
}

async function start() {
  for (const tab of ["result", "api", "history"]) $(`tab-${tab}`).addEventListener("click", () => selectTab(tab));
  $("input-form").addEventListener("submit", submit);
  $("input-form").addEventListener("input", updateCode);
  $("input-form").addEventListener("change", updateCode);
  $("cancel-button").addEventListener("click", cancel);
  $("reset-button").addEventListener("click", () => { clearErrors(); fillForm({}); });
  $("reuse-seed").addEventListener("click", () => {
    const seed = $("field-seed");
    seed.value = $("result-seed").textContent;
    seed.dispatchEvent(new Event("input", { bubbles: true }));
    seed.focus();
  });
  $("clear-history").addEventListener("click", () => { storeHistory([]); renderHistory(); });
  for (const button of document.querySelectorAll("button.copy")) {
    button.addEventListener("click", async () => {
      const text = $(button.dataset.copy).textContent;
      try { await navigator.clipboard.writeText(text); button.textContent = "Copied"; } catch { button.textContent = "Select and copy"; }
      setTimeout(() => { button.textContent = "Copy"; }, 1500);
    });
  }
  showModelBanner();
  setInterval(showModelBanner, 15000);
  try {
    state.config = await (await fetch("/playground/config.json")).json();
    const spec = await (await fetch(state.config.openapi_url)).json();
    state.components = spec.components.schemas;
    state.schema = state.components[state.config.input_schema];
  } catch (error) {
    $("fields").replaceChildren(el("p", { className: "form-error" }, `Could not load the input schema: ${error.message}`));
    return;
  }
  $("endpoint-id").textContent = state.config.endpoint_id;
  $("api-key-field").hidden = !state.config.requires_key;
  $("api-key").value = localStorage.getItem(KEY_STORAGE) || "";
  buildForm();
  updateCode();
  renderHistory();
  document.body.dataset.ready = "true";
}

start();
