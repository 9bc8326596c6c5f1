// kuosan serve: the page. Plain JavaScript, no build step, nothing from the internet.
// The server checks every field; this file only collects them, streams progress and shows results.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  info: null,            // /api/info: models, samplers, schedules, limits
  card: null,            // /api/card of the chosen model
  client: Math.random().toString(36).slice(2, 10),  // takes turns in the queue with other tabs
  running: null,         // the AbortController of the job in flight
  editImage: null,       // the image to edit, as a data: URL
  editSize: [0, 0],      // its natural size
  frames: [],            // an interpolation's images
  gallery: [], galleryTotal: 0,
  live: { busy: false, pending: false, url: null },
};

// --- small helpers ------------------------------------------------------------------------------------

async function api(path, options = {}) {
  const res = await fetch(path, options);
  const type = res.headers.get("content-type") || "";
  const body = type.includes("json") ? await res.json() : null;
  if (!res.ok) throw new Error((body && body.error) || `${res.status} ${res.statusText}`);
  return body;
}

function postJSON(path, body, signal) {
  return fetch(path, { method: "POST", signal, body: JSON.stringify(body),
    headers: { "Content-Type": "application/json", "X-Kuosan-Client": state.client } });
}

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== null && v !== undefined) node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

function options(select, items, empty) {
  select.replaceChildren();
  if (empty !== undefined) select.append(el("option", { value: "" }, empty));
  for (const [value, label] of items) select.append(el("option", { value }, label));
}

function showError(message) {
  $("error").textContent = message || "";
  $("error").hidden = !message;
}

let toastTimer = null;
function toast(message) {
  $("toast").textContent = message;
  $("toast").hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { $("toast").hidden = true; }, 4000);
}

function readAsDataURL(blob) {
  return new Promise((resolve, reject) => {
    const r = new FileReader();
    r.onload = () => resolve(r.result);
    r.onerror = () => reject(new Error("cannot read the file"));
    r.readAsDataURL(blob);
  });
}

const plural = (n, word, many = `${word}s`) => `${n} ${n === 1 ? word : many}`;
function ordinal(n) {  // 1st, 2nd, 3rd, 4th, 11th, 21st
  const suffix = ["th", "st", "nd", "rd"], v = n % 100;
  return n + (suffix[(v - 20) % 10] || suffix[v] || suffix[0]);
}

// --- tabs ---------------------------------------------------------------------------------------------

function showTab(name) {
  for (const b of document.querySelectorAll(".tabs button")) b.classList.toggle("active", b.dataset.tab === name);
  for (const p of document.querySelectorAll(".panel")) p.hidden = p.id !== `panel-${name}`;
  document.body.dataset.tab = name;
  if (!state.running) $("status").hidden = true;  // the last job's status belongs to the tab it ran in
  if (name === "gallery") loadGallery(true);
  if (name === "live") liveChanged();
}

// --- the model and the form ---------------------------------------------------------------------------

function classItems() {
  if (!state.card) return [];
  // a model trained on finer labels (emoji:sub) also takes its data set's classes: each seed one of their labels
  const sizes = state.card.group_sizes || {};
  const groups = (state.card.groups || []).map((n) => [n, `${n} (any of its ${plural(sizes[n], "class", "classes")})`]);
  return [...groups, ...state.card.classes.map((n, k) => [String(k), n === String(k) ? n : `${k} · ${n}`])];
}

async function selectModel(name) {
  $("model").value = name;
  showError("");
  $("model-summary").textContent = "loading…";
  try {
    state.card = await api(`/api/card?model=${encodeURIComponent(name)}`);
  } catch (e) {
    $("model-summary").textContent = "";
    showError(e.message);
    return;
  }
  const c = state.card, s = c.sample;
  const classes = classItems();
  const conditional = c.num_classes > 0;
  options($("class"), classes, conditional ? "every class in turn" : "unconditional");
  options($("source"), classes, "no class");
  options($("class-b"), classes, "none: between two seeds");
  options($("live-a"), classes, "no class");
  options($("live-b"), classes, "none");
  for (const id of ["class", "source", "class-b", "live-a", "live-b"]) $(id).disabled = !conditional;
  $("sampler").options[0].textContent = `default (${s.sampler})`;
  $("schedule").options[0].textContent = `default (${s.schedule})`;
  $("steps").placeholder = s.steps;
  $("guidance").placeholder = s.guidance;
  $("guidance_rescale").placeholder = s.guidance_rescale ?? 0;
  $("live-guidance").value = s.guidance;
  $("live-guidance-out").textContent = s.guidance;
  const [h, w, ch] = c.image;
  $("model-summary").textContent = `${c.dataset || c.kind} · ${w}×${h}×${ch} · ${plural(c.num_classes, "class", "classes")}` +
    ` · ${formatCount(c.parameters)} parameters · samples with ${s.sampler}, ${s.steps} steps`;
  renderCard();
}

function intervalValue() {
  const lo = $("interval-lo").value.trim(), hi = $("interval-hi").value.trim();
  return lo || hi ? [lo || null, hi || null] : null;
}

function formBody(mode) {
  const v = (id) => $(id).value.trim();
  return { mode, model: v("model"), sampler: v("sampler"), schedule: v("schedule"), steps: v("steps"),
    guidance: v("guidance"), guidance_rescale: v("guidance_rescale"), interval: intervalValue(), seeds: v("seeds"), class: v("class"), batch: v("batch") };
}

function setValue(id, value) {
  if (value === undefined) return;
  $(id).value = value === null ? "" : String(value);
}

// Fill the form from a gallery entry's or a PNG's parameters; returns the mode they were made with.
async function fillForm(p) {
  const known = state.info.models.some((m) => m.name === p.model);
  if (p.model && known && p.model !== $("model").value) await selectModel(p.model);
  if (p.model && !known) toast(`model ${p.model} is not served here: settings loaded for ${$("model").value}`);
  for (const k of ["sampler", "schedule", "steps", "guidance", "guidance_rescale", "batch", "strength", "resample", "jump", "frames"]) {
    setValue(k, p[k]);
  }
  setValue("seeds", p.seeds !== undefined ? p.seeds : p.seed);
  setValue("class", p.class);
  setValue("source", p.source);
  setValue("class-b", p.class_b);
  const iv = p.guidance_interval || [null, null];
  setValue("interval-lo", iv[0]);
  setValue("interval-hi", iv[1]);
  $("strength-out").textContent = $("strength").value;
  const mode = p.mode || "generate";
  if (["img2img", "inpaint", "invert", "interpolate"].includes(mode)) {
    document.querySelector(`input[name=edit-mode][value=${mode}]`).checked = true;
    editModeChanged();
  }
  if (mode === "live") {
    setValue("live-seed", p.seed);
    setValue("live-a", p.class);
    setValue("live-b", p.class_b);
    setValue("live-mix", p.mix);
    setValue("live-guidance", p.guidance);
    syncLiveOutputs();
  }
  return mode;
}

// --- running a job: a POST whose answer is a stream of server-sent events -------------------------------

function setProgress(text, fraction) {
  $("status").hidden = false;
  $("status-text").textContent = text;
  $("bar-fill").style.width = `${Math.round(100 * Math.max(0, Math.min(1, fraction)))}%`;
}

async function runJob(body, view) {
  if (state.running) state.running.abort();
  const controller = new AbortController();
  state.running = controller;
  showError("");
  setProgress("sending…", 0);
  $("status").classList.add("busy");
  $(view.preview).removeAttribute("src");
  try {
    const res = await postJSON("/api/jobs", body, controller.signal);
    if (!res.ok) {
      const err = await res.json().catch(() => ({ error: `${res.status} ${res.statusText}` }));
      throw new Error(err.error);
    }
    await readEvents(res.body, (event) => onEvent(event, view));
  } catch (e) {
    if (e.name === "AbortError") setProgress("cancelled", 0);
    else { setProgress("failed", 0); showError(e.message); }
  } finally {
    if (state.running === controller) state.running = null;
    $("status").classList.remove("busy");
  }
}

async function readEvents(stream, handle) {
  const reader = stream.getReader(), decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
      if (data) handle(JSON.parse(data));
    }
  }
}

function onEvent(event, view) {
  if (event.type === "queued") {
    setProgress(event.place <= 1 ? "next in the queue…" : `waiting: ${ordinal(event.place)} in the queue`, 0);
  } else if (event.type === "started") {
    setProgress("starting…", 0);
  } else if (event.type === "progress") {
    setProgress(`step ${event.done} of ${event.total}`, event.done / event.total);
    if (event.preview) $(view.preview).src = event.preview;
  } else if (event.type === "done") {
    const r = event.result;
    setProgress(`done in ${r.seconds.toFixed(2)} s`, 1);
    showResult(r, view);
  } else if (event.type === "failed") {
    setProgress("failed", 0);
    showError(event.message);
  } else if (event.type === "cancelled") {
    setProgress("cancelled", 0);
  }
}

function describe(img) {
  const parts = [`seed ${img.seed}`];
  if (img.class !== undefined) parts.push(img.class_name && img.class_name !== String(img.class)
    ? `class ${img.class} (${img.class_name})` : `class ${img.class}`);
  if (img.t !== undefined) parts.push(`t ${img.t}`);
  if (img.edit) parts.push(img.edit);
  return parts.join(" · ");
}

function showResult(entry, view) {
  const main = entry.urls.grid || entry.images[0].url;
  $(view.grid).src = main;
  $(view.download).href = `${main}?download=1`;
  $(view.download).hidden = false;
  $(view.caption).textContent = [entry.note, `${plural(entry.images.length, "image")}`].filter(Boolean).join(" · ");
  const singles = $(view.singles);
  singles.replaceChildren(...entry.images.map((img) => el("a", { class: "thumb", href: `${img.url}?download=1`,
    title: `download ${img.file}`, download: img.file }, el("img", { class: "pixel", src: img.url, alt: describe(img) }),
    el("span", { class: "small" }, describe(img)))));
  if (view.frames) showFrames(entry.mode === "interpolate" ? entry.images : []);
  state.gallery = [];  // the gallery reloads when next shown
}

function showFrames(images) {
  state.frames = images;
  $("frames-box").hidden = images.length === 0;
  if (!images.length) return;
  $("frame-slider").max = images.length - 1;
  $("frame-slider").value = 0;
  frameChanged();
}

function frameChanged() {
  const k = Number($("frame-slider").value), img = state.frames[k];
  if (!img) return;
  $("frame").src = img.url;
  $("frame-out").textContent = `${k + 1} of ${state.frames.length} · ${describe(img)}`;
}

const GENERATE_VIEW = { preview: "gen-preview", grid: "gen-grid", download: "gen-download", caption: "gen-caption",
  singles: "gen-singles" };
const EDIT_VIEW = { preview: "edit-preview", grid: "edit-grid", download: "edit-download", caption: "edit-caption",
  singles: "edit-singles", frames: true };

// --- editing: the image, the mask, the options ---------------------------------------------------------

function editMode() {
  return document.querySelector("input[name=edit-mode]:checked").value;
}

function editModeChanged() {
  document.body.dataset.edit = editMode();
}

async function setEditImage(blob) {
  const limit = state.info.limits.upload;
  if (blob.size > limit) {
    showError(`the image is ${(blob.size / 1e6).toFixed(1)} MB; images up to ${limit / 1e6} MB are accepted`);
    return;
  }
  state.editImage = await readAsDataURL(blob);
  const img = await loadImage(state.editImage).catch(() => null);
  clearMask();
  $("edit-drop").classList.remove("needs-image");
  if (!img) return;  // not an image the browser shows: the server still decodes it, or says why it cannot
  state.editSize = [img.naturalWidth, img.naturalHeight];
  const cv = $("edit-image"), ctx = cv.getContext("2d");
  const s = Math.min(img.naturalWidth, img.naturalHeight);  // the centre square, as the server crops it
  ctx.imageSmoothingEnabled = s >= cv.width;
  ctx.clearRect(0, 0, cv.width, cv.height);
  ctx.drawImage(img, (img.naturalWidth - s) / 2, (img.naturalHeight - s) / 2, s, s, 0, 0, cv.width, cv.height);
}

function loadImage(src) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("not an image"));
    img.src = src;
  });
}

// A saved mask (white: regenerate) painted back onto the mask canvas, for re-running an inpainting.
async function setMask(url) {
  const img = await loadImage(url), cv = $("edit-mask"), ctx = cv.getContext("2d");
  ctx.imageSmoothingEnabled = false;
  ctx.clearRect(0, 0, cv.width, cv.height);
  ctx.drawImage(img, 0, 0, cv.width, cv.height);
  const pixels = ctx.getImageData(0, 0, cv.width, cv.height), d = pixels.data;
  for (let i = 0; i < d.length; i += 4) {
    const on = d[i] >= 128;
    [d[i], d[i + 1], d[i + 2], d[i + 3]] = on ? [255, 59, 107, 255] : [0, 0, 0, 0];
  }
  ctx.putImageData(pixels, 0, 0);
}

function clearMask() {
  const cv = $("edit-mask");
  cv.getContext("2d").clearRect(0, 0, cv.width, cv.height);
}

function setupMask() {
  const cv = $("edit-mask"), ctx = cv.getContext("2d");
  let last = null;
  const at = (e) => {
    const r = cv.getBoundingClientRect();
    return [(e.clientX - r.left) * cv.width / r.width, (e.clientY - r.top) * cv.height / r.height];
  };
  const paint = (p) => {
    ctx.strokeStyle = ctx.fillStyle = "#ff3b6b";
    ctx.lineWidth = Number($("brush").value);
    ctx.lineCap = ctx.lineJoin = "round";
    ctx.beginPath();
    ctx.moveTo(...(last || p));
    ctx.lineTo(...p);
    ctx.stroke();
    last = p;
  };
  cv.addEventListener("pointerdown", (e) => {
    if (editMode() !== "inpaint" || !state.editImage) return;
    cv.setPointerCapture(e.pointerId);
    last = null;
    paint(at(e));
  });
  cv.addEventListener("pointermove", (e) => { if (last) paint(at(e)); });
  const stop = () => { last = null; };
  cv.addEventListener("pointerup", stop);
  cv.addEventListener("pointercancel", stop);
}

// The mask as the server reads it: white where painted (regenerate), black elsewhere (keep).
function maskDataURL() {
  const src = $("edit-mask"), out = document.createElement("canvas");
  out.width = src.width;
  out.height = src.height;
  const pixels = src.getContext("2d").getImageData(0, 0, src.width, src.height);
  const d = pixels.data;
  let painted = 0;
  for (let i = 0; i < d.length; i += 4) {
    const on = d[i + 3] > 0;
    painted += on;
    d[i] = d[i + 1] = d[i + 2] = on ? 255 : 0;
    d[i + 3] = 255;
  }
  out.getContext("2d").putImageData(pixels, 0, 0);
  return painted ? out.toDataURL("image/png") : null;
}

function editBody() {
  const mode = editMode(), body = formBody(mode);
  if (mode !== "interpolate") {
    if (!state.editImage) throw new Error("choose an image to edit first");
    body.image = state.editImage;
  }
  if (mode === "img2img") body.strength = $("strength").value;
  if (mode === "inpaint") {
    body.mask = maskDataURL();
    if (!body.mask) throw new Error("paint over the part of the image to regenerate first");
    body.resample = $("resample").value;
    body.jump = $("jump").value;
  }
  if (mode === "invert") body.source = $("source").value;
  if (mode === "interpolate") {
    body.class_b = $("class-b").value;
    body.frames = $("frames").value;
  }
  return body;
}

// --- live: sliders that re-generate as they move (one request in flight, the newest values next) --------

function syncLiveOutputs() {
  $("live-seed-out").textContent = $("live-seed").value;
  $("live-mix-out").textContent = Number($("live-mix").value).toFixed(2);
  $("live-guidance-out").textContent = Number($("live-guidance").value).toFixed(1);
}

function liveBody() {
  const body = formBody("live");
  Object.assign(body, { seeds: $("live-seed").value, class: $("live-a").value, class_b: $("live-b").value,
    mix: $("live-mix").value, guidance: $("live-guidance").value });
  delete body.batch;
  return body;
}

function liveNote() {
  if (!state.card) return;
  const steps = Number($("steps").value || state.card.sample.steps);
  $("live-note").textContent = steps > 2
    ? `${steps} steps an image: set Steps to 1 or 2 on the left (or pick a distilled student) for real time.`
    : `${plural(steps, "step")} an image: fast enough to follow the sliders.`;
}

async function liveChanged() {
  syncLiveOutputs();
  liveNote();
  if (state.live.busy) { state.live.pending = true; return; }
  state.live.busy = true;
  const t0 = performance.now();
  try {
    const res = await postJSON("/api/live", liveBody());
    if (!res.ok) throw new Error((await res.json().catch(() => ({}))).error || res.statusText);
    const server = Number(res.headers.get("X-Kuosan-Seconds") || 0);
    const made = JSON.parse(res.headers.get("X-Kuosan-Params") || "{}");
    const url = URL.createObjectURL(await res.blob());
    $("live-image").src = url;
    if (state.live.url) URL.revokeObjectURL(state.live.url);
    state.live.url = url;
    const what = [`seed ${made.seed}`, made.class !== undefined ? `class ${made.class}` : null,
      made.class_b !== undefined ? `mix ${Number(made.mix).toFixed(2)} of class ${made.class_b}` : null];
    $("live-timing").textContent = `${what.filter(Boolean).join(" · ")}: ${Math.round(performance.now() - t0)} ms a frame` +
      ` (${Math.round(server * 1000)} ms sampling)`;
    showError("");
  } catch (e) {
    showError(e.message);
  } finally {
    state.live.busy = false;
    if (state.live.pending) { state.live.pending = false; liveChanged(); }
  }
}

// --- the gallery ----------------------------------------------------------------------------------------

async function loadGallery(fresh) {
  if (fresh) state.gallery = [];
  const page = await api(`/api/gallery?offset=${state.gallery.length}&limit=24`).catch((e) => { showError(e.message); });
  if (!page) return;
  state.gallery.push(...page.entries);
  state.galleryTotal = page.total;
  $("gallery-count").textContent = `${plural(page.total, "result")}, newest first`;
  $("gallery").replaceChildren(...state.gallery.map(galleryCard));
  $("gallery-more").hidden = state.gallery.length >= page.total;
}

function galleryCard(entry) {
  const p = entry.params, main = entry.urls.grid || entry.images[0].url;
  const what = [p.sampler, plural(p.steps, "step"), p.seeds !== undefined ? `seeds ${p.seeds}` : null,
    p.class !== null && p.class !== undefined ? `class ${p.class}` : null,
    p.guidance !== 1 ? `guidance ${p.guidance}` : null].filter(Boolean);
  const meta = el("div", { class: "muted small" });
  what.forEach((w, k) => meta.append(...(k ? [" · "] : []), el("span", { class: "nowrap" }, w)));
  return el("article", { class: "card entry" },
    el("a", { href: `${main}?download=1`, download: "", title: "download" }, el("img", { class: "pixel", src: main, alt: "" })),
    el("div", { class: "entry-title" }, el("strong", {}, entry.mode), ` · ${entry.model}`),
    meta,
    el("div", { class: "muted small" }, entry.created),
    el("div", { class: "row" },
      el("button", { type: "button", class: "quiet", onclick: () => rerun(entry) }, "Re-run"),
      el("button", { type: "button", class: "quiet", onclick: () => editEntry(entry) }, "Edit")));
}

async function rerun(entry) {
  const mode = await fillForm(entry.params);
  if (entry.urls.input) await setEditImage(await (await fetch(entry.urls.input)).blob());
  if (entry.urls.mask) await setMask(entry.urls.mask);
  if (mode === "generate") { showTab("generate"); runJob(formBody("generate"), GENERATE_VIEW); }
  else if (mode === "live") { showTab("live"); }
  else { showTab("edit"); runEdit(); }
}

async function editEntry(entry) {
  await fillForm({ ...entry.params, mode: undefined });
  await setEditImage(await (await fetch(entry.images[0].url)).blob());
  showTab("edit");
  toast("loaded into the editor: choose a mode and run");
}

function runEdit() {
  try {
    runJob(editBody(), EDIT_VIEW);
  } catch (e) {
    showError(e.message);
  }
}

// --- the model's card -----------------------------------------------------------------------------------

function formatCount(n) {
  return n >= 1e9 ? `${(n / 1e9).toFixed(2)} B` : n >= 1e6 ? `${(n / 1e6).toFixed(2)} M` : n >= 1e3 ? `${(n / 1e3).toFixed(1)} k` : String(n);
}

function renderCard() {
  const c = state.card, s = c.sample;
  const rows = [["Name", c.name], ["Kind", c.kind + (c.lora ? " (LoRA)" : "") + (c.latent ? ", latent" : "")],
    ["Data set", c.dataset || "–"], ["Classes", c.num_classes ? `${c.num_classes}: ${c.classes.join(", ")}` : "none"],
    ["Images", `${c.image[1]}×${c.image[0]}, ${plural(c.image[2], "channel")}`],
    ["Network", `${c.network}, ${formatCount(c.parameters)} parameters`], ["Preconditioning", c.precond || "–"],
    ["Trained", c.trained_steps !== null ? `${c.trained_steps} steps` + (c.train.batch ? `, batch ${c.train.batch}, lr ${c.train.lr}` : "") : "–"],
    ["Samples with", `${s.sampler}, ${plural(s.steps, "step")}, ${s.schedule} schedule, guidance ${s.guidance}`],
    ["Fine-tuned from", c.parent || "–"], ["Weights SHA-256", c.checksum ? c.checksum.slice(0, 16) + "…" : "–"]];
  const table = el("table", { class: "facts" }, ...rows.map(([k, v]) => el("tr", {}, el("th", {}, k), el("td", {}, v))));
  const parts = [el("h2", {}, c.name), table];
  if (c.report) {
    const r = c.report;
    parts.push(el("h3", {}, "Evaluation"), el("p", { class: "muted small" },
      `${r.images || "?"} generated images against ${r.reference || "the reference"} (report in ${r.folder})`));
    if (r.rows.length) {
      parts.push(el("table", { class: "metrics" }, el("tr", {}, ...["metric", "features", "generated", "real floor"].map((h) => el("th", {}, h))),
        ...r.rows.map((row) => el("tr", {}, ...row.map((v) => el("td", {}, v))))));
    }
    for (const f of r.flags) parts.push(el("p", { class: "warning small" }, f));
    parts.push(el("div", { class: "plots" }, ...r.plots.map((f) => el("figure", {},
      el("img", { src: `/api/report?model=${encodeURIComponent(c.name)}&file=${encodeURIComponent(f)}`, alt: f }),
      el("figcaption", { class: "muted small" }, f)))));
  } else {
    parts.push(el("p", { class: "muted" }, "No evaluation report in this model's folder yet: ",
      el("code", {}, "kuosan evaluate --checkpoint RUN --out RUN/eval"), " writes one there."));
  }
  $("card").replaceChildren(...parts);
}

// --- dropping a PNG fills the form ------------------------------------------------------------------------

async function readDroppedPNG(file) {
  try {
    const res = await fetch("/api/pnginfo", { method: "POST", body: file, headers: { "Content-Type": "application/octet-stream" } });
    const body = await res.json();
    if (!res.ok) throw new Error(body.error);
    if (!body.params) { toast(`${file.name}: ${body.message}`); return; }
    const mode = await fillForm({ ...body.params, model: body.model || body.params.model });
    showTab(mode === "generate" ? "generate" : mode === "live" ? "live" : "edit");
    toast(`settings loaded from ${file.name}`);
  } catch (e) {
    showError(`${file.name}: ${e.message}`);
  }
}

function setupDrops() {
  let depth = 0;
  const overlay = $("drop-overlay");
  document.addEventListener("dragenter", (e) => { if (e.dataTransfer.types.includes("Files")) { depth++; overlay.hidden = false; } });
  document.addEventListener("dragleave", () => { if (--depth <= 0) { depth = 0; overlay.hidden = true; } });
  document.addEventListener("dragover", (e) => e.preventDefault());
  document.addEventListener("drop", (e) => {
    e.preventDefault();
    depth = 0;
    overlay.hidden = true;
    const file = e.dataTransfer.files[0];
    if (!file) return;
    const onEditor = document.body.dataset.tab === "edit" && e.target.closest && e.target.closest("#edit-drop");
    if (onEditor) setEditImage(file); else readDroppedPNG(file);
  });
}

// --- start ------------------------------------------------------------------------------------------------

function wire() {
  for (const b of document.querySelectorAll(".tabs button")) b.addEventListener("click", () => showTab(b.dataset.tab));
  $("model").addEventListener("change", () => selectModel($("model").value));
  $("dice").addEventListener("click", () => { $("seeds").value = String(Math.floor(Math.random() * 1e6)); });
  $("generate").addEventListener("click", () => runJob(formBody("generate"), GENERATE_VIEW));
  $("form").addEventListener("submit", (e) => { e.preventDefault(); });
  $("cancel").addEventListener("click", () => { if (state.running) state.running.abort(); });
  $("run-edit").addEventListener("click", runEdit);
  for (const r of document.querySelectorAll("input[name=edit-mode]")) r.addEventListener("change", editModeChanged);
  $("upload").addEventListener("change", () => { if ($("upload").files[0]) setEditImage($("upload").files[0]); });
  $("change-image").addEventListener("click", () => $("upload").click());
  $("clear-mask").addEventListener("click", clearMask);
  $("strength").addEventListener("input", () => { $("strength-out").textContent = $("strength").value; });
  $("frame-slider").addEventListener("input", frameChanged);
  for (const id of ["live-seed", "live-a", "live-b", "live-mix", "live-guidance"]) $(id).addEventListener("input", liveChanged);
  $("steps").addEventListener("input", liveNote);
  $("live-keep").addEventListener("click", () => { showTab("generate"); runJob(liveBody(), GENERATE_VIEW); });
  $("gallery-refresh").addEventListener("click", () => loadGallery(true));
  $("gallery-more").addEventListener("click", () => loadGallery(false));
  setupMask();
  setupDrops();
}

async function start() {
  wire();
  editModeChanged();
  try {
    state.info = await api("/api/info");
  } catch (e) {
    showError(`cannot reach the server: ${e.message}`);
    return;
  }
  $("version").textContent = state.info.version;
  options($("model"), state.info.models.map((m) => [m.name, m.kind === "kuosan" ? m.name : `${m.name} (${m.kind})`]));
  options($("sampler"), state.info.samplers.map((s) => [s, s]), "model default");
  options($("schedule"), state.info.schedules.map((s) => [s, s]), "model default");
  await selectModel(state.info.default);
  document.body.dataset.ready = "1";
}

document.addEventListener("DOMContentLoaded", start);
