// lorastack serve: the pages. Plain JavaScript, no build step. Every value from the server is set as text
// (textContent), never as HTML: names, trigger words and metadata come from files and other sites.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const main = () => $("#main");

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) if (child !== null && child !== undefined)
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return node;
}

function toast(message) {
  const box = $("#toast");
  box.textContent = message;
  box.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { box.hidden = true; }, 6000);
}

async function api(path, { method = "GET", body, form } = {}) {
  const headers = method === "GET" ? {} : { "X-Lorastack": "1" };
  let payload;
  if (form) payload = form;
  else if (body !== undefined) { headers["Content-Type"] = "application/json"; payload = JSON.stringify(body); }
  const response = await fetch(path, { method, headers, body: payload, credentials: "same-origin" });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) { const message = data.error || response.statusText; toast(message); throw new Error(message); }
  return data;
}

function follow(job, onUpdate) {
  // server-sent events: the job's record each time it changes, until it finishes
  return new Promise((resolve) => {
    const source = new EventSource(`/api/jobs/${job.id}/events`);
    source.onmessage = (event) => {
      const record = JSON.parse(event.data);
      onUpdate(record);
      if (["done", "failed", "cancelled", "interrupted"].includes(record.state)) {
        source.close();
        if (record.state === "failed") toast(record.error);
        resolve(record);
      }
    };
    source.onerror = () => { source.close(); api(`/api/jobs/${job.id}`).then((r) => { onUpdate(r); resolve(r); }); };
  });
}

function jobLine(record) {
  return el("div", { class: "row job", "data-state": record.state },
    el("progress", { max: 1, value: record.progress || 0 }),
    el("span", { class: "state", text: record.state }), el("span", { class: "muted", text: record.message || "" }));
}

// --- library -------------------------------------------------------------------------------------------------
const libraryState = { q: "", family: "", lineage: "", tag: "", missing: false, sort: "name", page: 1 };

async function libraryPage() {
  const s = libraryState;
  const families = await api("/api/families");
  const grid = el("div", { class: "grid", id: "cards" });
  const pager = el("div", { class: "row" });
  const input = (key, placeholder) => el("input", { id: `f-${key}`, placeholder, value: s[key],
    oninput: (e) => { s[key] = e.target.value; s.page = 1; debounce(load); } });
  const family = el("select", { id: "f-family", onchange: (e) => { s.family = e.target.value; s.page = 1; load(); } },
    el("option", { value: "", text: "every family" }),
    families.families.map((f) => el("option", { value: f, text: f, selected: s.family === f })));
  const sort = el("select", { id: "f-sort", onchange: (e) => { s.sort = e.target.value; load(); } },
    el("option", { value: "name", text: "by name", selected: s.sort === "name" }),
    el("option", { value: "date", text: "newest first", selected: s.sort === "date" }),
    el("option", { value: "use", text: "most used", selected: s.sort === "use" }));
  const missing = el("label", {}, el("input", { type: "checkbox", id: "f-missing", checked: s.missing,
    onchange: (e) => { s.missing = e.target.checked; s.page = 1; load(); } }), "missing files");
  main().replaceChildren(el("h2", { text: "Library" }),
    el("div", { class: "filters" }, input("q", "search names, trigger words, notes…"), family,
      input("lineage", "lineage (Pony, …)"), input("tag", "tag"), missing, sort), grid, pager);

  async function load() {
    const params = new URLSearchParams({ page: s.page, per_page: 48, sort: s.sort });
    for (const key of ["q", "family", "lineage", "tag"]) if (s[key]) params.set(key, s[key]);
    if (s.missing) params.set("missing", "true");
    const data = await api(`/api/adapters?${params}`);
    grid.replaceChildren(...data.items.map(card));
    if (!data.items.length) grid.append(el("p", { class: "muted", text: "No adapter matches." }));
    pager.replaceChildren(
      el("button", { class: "plain", disabled: s.page <= 1, onclick: () => { s.page--; load(); } }, "‹ previous"),
      el("span", { class: "muted", id: "page", text: `page ${s.page}` }),
      el("button", { class: "plain", disabled: !data.has_more, onclick: () => { s.page++; load(); } }, "next ›"));
  }
  await load();
}

function debounce(fn, ms = 250) {
  clearTimeout(debounce.timer);
  debounce.timer = setTimeout(fn, ms);
}

function copyWords(words) {
  navigator.clipboard?.writeText(words.join(", ")).then(() => toast(`copied: ${words.join(", ")}`), () => {});
}

function card(item) {
  const thumb = el("div", { class: "thumb" });
  if (item.preview_url) thumb.style.backgroundImage = `url("${item.preview_url}")`;
  else thumb.textContent = "◇";
  const words = item.trigger_words || [];
  return el("div", { class: "card", "data-ref": item.ref },
    el("a", { href: `#/adapter/${item.ref}` }, thumb),
    el("div", { class: "body" },
      el("a", { class: "name", href: `#/adapter/${item.ref}`, text: item.ref }),
      el("span", { class: "muted", text: `${item.family || "unknown"} · ${item.kind || ""} · ${item.versions} version(s)${item.missing ? " · file missing" : ""}` }),
      el("div", {}, words.map((w) => el("span", { class: "chip word", title: "copy", text: w, onclick: () => copyWords([w]) })),
        words.length ? el("button", { class: "plain", title: "copy trigger words", onclick: () => copyWords(words) }, "copy") : null),
      el("div", {}, item.tags.map((t) => el("span", { class: "chip", text: t })))));
}

// --- one adapter ---------------------------------------------------------------------------------------------
async function adapterPage(ref) {
  const data = await api(`/api/adapters/${ref}`);
  const rows = Object.entries(data.metadata).map(([field, v]) => el("tr", {},
    el("td", { text: field }), el("td", { text: typeof v.value === "string" ? v.value : JSON.stringify(v.value) }),
    el("td", { class: "muted", text: v.source })));
  const field = el("select", { id: "edit-field" }, Object.keys(data.fields).map((f) => el("option", { value: f, text: f })));
  const value = el("input", { id: "edit-value", placeholder: "value (JSON for lists and numbers)" });
  const save = async () => {
    let parsed = value.value;
    try { parsed = JSON.parse(value.value); } catch { /* plain text */ }
    await api(`/api/adapters/${data.ref}`, { method: "PATCH", body: { metadata: { [field.value]: parsed } } });
    adapterPage(data.ref);
  };
  const tag = el("input", { id: "new-tag", placeholder: "new tag" });
  const addTag = async () => { await api(`/api/adapters/${data.ref}`, { method: "PATCH", body: { add_tags: [tag.value] } }); adapterPage(data.ref); };
  const remove = async () => {
    if (!confirm(`Remove ${data.ref}? Its file is deleted from the registry.`)) return;
    await api(`/api/adapters/${data.ref}?confirm=${encodeURIComponent(data.ref)}`, { method: "DELETE" });
    location.hash = "#/library";
  };
  const repo = el("input", { id: "push-repo", placeholder: "user/repo on the Hub" });
  const pushStatus = el("div");
  const push = async () => {
    const job = await api("/api/push", { method: "POST", body: { ref: data.ref, repo_id: repo.value } });
    follow(job, (r) => pushStatus.replaceChildren(jobLine(r)));
  };
  const training = data.training ? el("div", { class: "panel", id: "training" }, el("h3", { text: "Training record" }),
    el("pre", { class: "recipe", text: data.training.recipe || JSON.stringify(data.training.provenance, null, 1) }),
    data.training.validation ? el("div", { class: "muted", text: `validation loss: ${JSON.stringify(data.training.validation)}` }) : null,
    data.training.loss_url ? el("img", { src: data.training.loss_url, alt: "loss curve", style: "max-width:480px" }) : null,
    el("div", { class: "images" }, (data.training.samples || []).map((s) =>
      el("figure", {}, el("img", { src: s.url, class: "wide" }), el("figcaption", { text: `step ${s.step}` }))))) : null;
  main().replaceChildren(
    el("h2", { id: "adapter-ref", text: data.ref }),
    el("div", { class: "muted", text: `${data.family} · ${data.kind} · rank ${data.rank} · ${data.format}` }),
    el("div", {}, data.trigger_words.map((w) => el("span", { class: "chip word", text: w, onclick: () => copyWords([w]) })),
      data.tags.map((t) => el("span", { class: "chip", text: t }))),
    el("div", { class: "row" }, el("a", { href: `#/generate?add=${encodeURIComponent(data.ref)}` }, "Generate with it"),
      el("a", { href: data.download_url }, "Download")),
    el("div", { class: "images" }, data.previews.map((p) => el("figure", {}, el("img", { src: p.url, alt: "preview" })))),
    el("div", { class: "panel" }, el("h3", { text: "Metadata" }), el("table", { class: "meta", id: "metadata" }, rows),
      el("div", { class: "row" }, field, value, el("button", { onclick: save }, "Save"))),
    el("div", { class: "panel" }, el("h3", { text: "Versions" }), el("ul", {}, data.all_versions.map((v) =>
      el("li", {}, el("a", { href: `#/adapter/${v.ref}`, text: v.ref }), " ", v.tags.join(", "))))),
    el("div", { class: "row" }, tag, el("button", { class: "plain", onclick: addTag }, "Add tag")),
    training,
    scoresPanel(data.scores),
    el("div", { class: "panel" }, el("h3", { text: "Hashes" }), el("table", { class: "meta" }, data.files.map((f) =>
      el("tr", {}, el("td", { text: f.path }), el("td", { class: "muted", text: f.sha256 }))))),
    el("div", { class: "row" }, repo, el("button", { class: "plain", onclick: push }, "Push to the Hub"), pushStatus),
    el("button", { class: "danger", id: "delete", onclick: remove }, `Remove ${data.ref}`));
}

// the stored evaluation: a row per metric, a column per weight (0: the base), the recommended weight
function scoresPanel(scores) {
  if (!scores || !scores.results.length) return null;
  const weights = [...new Set(scores.results.map((r) => r.weight))].sort((a, b) => a - b);
  const metrics = [...new Set(scores.results.map((r) => `${r.evaluator}.${r.metric}`))].sort();
  const cell = new Map(scores.results.map((r) => [`${r.evaluator}.${r.metric}@${r.weight}`, r]));
  const up = new Map(scores.results.map((r) => [`${r.evaluator}.${r.metric}`, r.higher_is_better]));
  const head = el("tr", {}, el("th", { text: "metric" }), weights.map((w) => el("th", { text: w === 0 ? "base" : `weight ${w}` })));
  const rows = metrics.map((m) => el("tr", {}, el("td", { text: `${m} ${up.get(m) ? "↑" : "↓"}` }), weights.map((w) => {
    const r = cell.get(`${m}@${w}`);
    return el("td", { text: r ? `${r.mean.toFixed(3)} ±${r.std.toFixed(3)} (n=${r.n})` : "" });
  })));
  const weight = scores.recommended_weight === null ? "none" : String(scores.recommended_weight);
  return el("div", { class: "panel", id: "scores" }, el("h3", { text: "Evaluation" }),
    el("table", { class: "meta" }, head, rows),
    el("div", { class: "muted", text: `recommended weight: ${weight} · from ${scores.source}` }));
}

// --- generate / compare --------------------------------------------------------------------------------------
const studio = { adapters: [], live: true };

async function generatePage(query) {
  const bases = await api("/api/bases");
  if (query.get("add") && !studio.adapters.some((a) => a.ref === query.get("add")))
    studio.adapters.push({ ref: query.get("add"), scale: 1.0, unet: "", te: "" });
  const f = (id, attrs) => el("input", { id, ...attrs });
  const prompt = el("textarea", { id: "prompt", rows: 2, cols: 70 }, studio.prompt || "a red circle on a white background");
  const negative = f("negative", { placeholder: "negative prompt", value: studio.negative || "" });
  const seed = f("seed", { type: "number", value: studio.seed ?? 1, min: 0 });
  const steps = f("steps", { type: "number", value: studio.steps ?? 20, min: 1, max: 1000 });
  const size = f("size", { placeholder: "size, e.g. 64 or 512x768", value: studio.size || "" });
  const base = el("select", { id: "base" }, bases.bases.map((b) => el("option", { value: b, text: b })));
  const trigger = f("trigger", { type: "checkbox" });
  const live = f("live", { type: "checkbox", checked: studio.live, onchange: (e) => { studio.live = e.target.checked; } });
  const stack = el("div", { id: "stack" });
  const results = el("div", { class: "images", id: "results" });
  const status = el("div", { id: "status" });
  const addRef = f("add-ref", { placeholder: "adapter reference (me/style, me/style@2, toy-style)" });

  function drawStack() {
    stack.replaceChildren(...studio.adapters.map((a, i) => {
      const number = el("span", { text: Number(a.scale).toFixed(2) });
      return el("div", {},
        el("div", { class: "slider" }, el("span", { text: a.ref }),
          el("input", { type: "range", min: -1, max: 2, step: 0.05, value: a.scale, "data-ref": a.ref, class: "weight",
            oninput: (e) => { a.scale = Number(e.target.value); number.textContent = a.scale.toFixed(2); },
            onchange: () => { if (studio.live) run("image"); } }),
          number,
          el("button", { class: "plain", onclick: () => { studio.adapters.splice(i, 1); drawStack(); } }, "×")),
        el("details", {}, el("summary", { class: "muted", text: "advanced: per-component and per-block scales" }),
          el("label", {}, "unet", el("input", { size: 6, value: a.unet, oninput: (e) => { a.unet = e.target.value; } })),
          el("label", {}, "text encoder", el("input", { size: 6, value: a.te, oninput: (e) => { a.te = e.target.value; } })),
          el("label", {}, "blocks (JSON)", el("input", { size: 30, value: a.blocks || "", placeholder: '{"down": 0, "up": 1}',
            oninput: (e) => { a.blocks = e.target.value; } }))));
    }));
  }

  function scaleOf(a) {
    if (a.unet === "" && a.te === "" && !a.blocks) return a.scale;
    const spec = {};
    if (a.unet !== "") spec.unet = Number(a.unet) * a.scale; else spec.unet = a.scale;
    if (a.te !== "") spec.text_encoder = Number(a.te) * a.scale; else spec.text_encoder = a.scale;
    if (a.blocks) { try { spec.blocks = JSON.parse(a.blocks); } catch { toast("blocks: not JSON"); } }
    return spec;
  }

  function requestBody(mode, sweep) {
    Object.assign(studio, { prompt: prompt.value, negative: negative.value, seed: seed.value, steps: steps.value, size: size.value });
    const [w, h] = size.value ? size.value.toLowerCase().split("x").map(Number) : [null, null];
    return { prompt: prompt.value, negative: negative.value, base: base.value, seed: seed.value === "" ? null : Number(seed.value),
      steps: Number(steps.value), width: w, height: h ?? w, trigger: trigger.checked, mode, sweep,
      adapters: studio.adapters.map((a) => ({ ref: a.ref, scale: scaleOf(a) })) };
  }

  async function run(mode, sweep) {
    const job = await api("/api/generate", { method: "POST", body: requestBody(mode, sweep) });
    const line = el("div");
    status.replaceChildren(line);
    const record = await follow(job, (r) => line.replaceChildren(jobLine(r)));
    if (record.state !== "done") return;
    const figures = record.result.images.map((image) => figure(image, record.result));
    results.prepend(...figures);
  }

  function figure(image, result) {
    const wide = image.kind === "compare" || image.kind === "sweep-grid";
    return el("figure", { class: "result" },
      el("img", { src: image.url, class: wide ? "wide" : "", alt: image.kind }),
      el("figcaption", { class: "muted", text: image.scale !== undefined ? `scale ${image.scale}` :
        [`seed ${image.recipe.seed ?? ""}`, ...stackText(image.recipe),
         `${result.modules_changed} module(s) rewritten`].join(" · ") }),
      el("details", {}, el("summary", { text: "recipe" }), el("pre", { class: "recipe", text: JSON.stringify(image.recipe, null, 1) })),
      image.recipe.prompt !== undefined ? el("button", { class: "plain reproduce", onclick: () => reproduce(image.recipe) }, "reproduce") : null);
  }

  // the weights an image was made with, as its caption says them: "toy-style 0.3"
  function stackText(recipe) {
    return (recipe.adapters || []).map((a) => `${a.name} ${typeof a.scale === "number" ? a.scale : JSON.stringify(a.scale)}`);
  }

  function reproduce(recipe) {
    prompt.value = recipe.prompt; negative.value = recipe.negative_prompt || ""; seed.value = recipe.seed; steps.value = recipe.steps;
    size.value = `${recipe.width}x${recipe.height}`;
    studio.adapters = recipe.adapters.map((a) => ({ ref: a.name, scale: typeof a.scale === "number" ? a.scale : 1, unet: "", te: "" }));
    drawStack();
    run("image");
  }

  drawStack();
  main().replaceChildren(el("h2", { text: "Generate and compare" }),
    el("div", { class: "panel" },
      el("div", { class: "row" }, el("label", {}, "base", base), el("label", {}, "seed", seed), el("label", {}, "steps", steps), size,
        el("label", {}, trigger, "add trigger words")),
      el("div", { class: "row" }, prompt), el("div", { class: "row" }, negative),
      el("h3", { text: "Stack" }), stack,
      el("div", { class: "row" }, addRef, el("button", { class: "plain", onclick: () => {
        if (addRef.value) studio.adapters.push({ ref: addRef.value.trim(), scale: 1.0, unet: "", te: "" }); addRef.value = ""; drawStack();
      } }, "Add adapter")),
      el("div", { class: "row" }, el("button", { id: "generate", onclick: () => run("image") }, "Generate"),
        el("button", { class: "plain", id: "compare", onclick: () => run("compare") }, "Compare grid"),
        el("button", { class: "plain", id: "sweep", onclick: () => studio.adapters[0] ? run("sweep", studio.adapters[0].ref) : toast("add an adapter to sweep") }, "Weight sweep (first adapter)"),
        el("label", {}, live, "generate when a slider is released"))),
    status, results);
}

// --- train ---------------------------------------------------------------------------------------------------
async function trainPage() {
  const [{ trainers }, bases] = await Promise.all([api("/api/trainers"), api("/api/bases")]);
  const trainer = el("select", { id: "trainer" }, trainers.map((t) => el("option", { value: t.name, text: `${t.name}: ${t.description}` })));
  const base = el("select", { id: "train-base" }, bases.bases.map((b) => el("option", { value: b, text: b })));
  const data = el("input", { id: "train-data", size: 50, placeholder: "dataset folder on this machine" });
  const zip = el("input", { id: "train-zip", type: "file", accept: ".zip" });
  const name = el("input", { id: "train-name", placeholder: "register as NAME[:TAG]" });
  const options = el("div", { class: "options", id: "train-options" });
  const status = el("div", { id: "train-status" });
  const loss = el("canvas", { class: "loss", width: 480, height: 160, id: "loss" });
  const samples = el("div", { class: "images" });
  const fields = {};

  function drawOptions() {
    const t = trainers.find((x) => x.name === trainer.value);
    options.replaceChildren(...t.options.flatMap((o) => {
      const input = o.choices ? el("select", { "data-option": o.name }, o.choices.map((c) => el("option", { value: c, text: c, selected: c === o.default })))
        : el("input", { "data-option": o.name, value: o.default ?? "", type: o.type === "bool" ? "checkbox" : "text", checked: o.type === "bool" && o.default });
      fields[o.name] = { input, option: o };
      return [el("label", { text: o.name }), input, el("span", { class: "muted", text: o.help })];
    }));
  }

  function values() {
    const out = {};
    for (const [key, { input, option }] of Object.entries(fields)) {
      const raw = option.type === "bool" ? input.checked : input.value;
      const dflt = option.default ?? (option.type === "bool" ? false : "");
      if (String(raw) === String(dflt)) continue;
      out[key] = option.type === "int" ? parseInt(raw, 10) : option.type === "float" ? Number(raw) : raw;
    }
    return out;
  }

  function plot(losses) {
    const g = loss.getContext("2d");
    g.clearRect(0, 0, loss.width, loss.height);
    if (!losses || losses.length < 2) return;
    const max = Math.max(...losses), min = Math.min(...losses);
    g.beginPath();
    losses.forEach((v, i) => {
      const x = (i / (losses.length - 1)) * (loss.width - 10) + 5;
      const y = loss.height - 5 - ((v - min) / (max - min || 1)) * (loss.height - 10);
      i ? g.lineTo(x, y) : g.moveTo(x, y);
    });
    g.strokeStyle = "#3955d1";
    g.stroke();
  }

  async function start(resumeOf) {
    let job;
    if (resumeOf) job = await api(`/api/jobs/${resumeOf}/resume`, { method: "POST" });
    else {
      const body = { trainer: trainer.value, base: base.value, name: name.value || null, options: values() };
      if (zip.files.length) {
        const form = new FormData();
        form.append("file", zip.files[0]);
        body.upload = (await api("/api/uploads/dataset", { method: "POST", form })).upload;
      } else body.data = data.value;
      job = await api("/api/train", { method: "POST", body });
    }
    const line = el("div");
    const cancel = el("button", { class: "plain", id: "cancel", onclick: () => api(`/api/jobs/${job.id}/cancel`, { method: "POST" }) }, "Cancel");
    status.replaceChildren(line, cancel);
    const record = await follow(job, (r) => {
      line.replaceChildren(jobLine(r));
      plot(r.live.losses);
      samples.replaceChildren(...(r.sample_urls || []).map((url) => el("img", { src: url, class: "wide" })));
    });
    cancel.remove();
    if (record.state === "done" && record.result.ref)
      status.append(el("a", { id: "trained", href: `#/adapter/${record.result.ref}`, text: `${record.result.ref} is in the library` }));
    else if (record.state === "cancelled" || record.state === "interrupted")
      status.append(el("button", { class: "plain", onclick: () => start(record.id) }, "Resume"));
  }

  trainer.addEventListener("change", drawOptions);
  drawOptions();
  main().replaceChildren(el("h2", { text: "Train" }),
    el("div", { class: "panel" }, el("div", { class: "row" }, trainer, base, name),
      el("div", { class: "row" }, data, "or a zip:", zip),
      el("details", { open: true }, el("summary", { text: "options (defaults shown)" }), options),
      el("button", { id: "start-training", onclick: () => start() }, "Start training")),
    status, loss, samples);
}

// --- import --------------------------------------------------------------------------------------------------
function importPage() {
  const file = el("input", { type: "file", id: "upload-file", accept: ".safetensors" });
  const name = el("input", { id: "upload-name", placeholder: "name (me/style)" });
  const tag = el("input", { id: "upload-tag", placeholder: "tag (optional)" });
  const folder = el("input", { id: "scan-folder", size: 50, placeholder: "folder on this machine" });
  const status = el("div", { id: "import-status" });
  const done = (record) => {
    if (record.state === "done" && record.result.ref) status.append(el("a", { href: `#/adapter/${record.result.ref}`, text: record.result.ref }));
    if (record.state === "done" && record.result.counts) status.append(el("div", { text: JSON.stringify(record.result.counts) }));
  };
  const upload = async () => {
    if (!file.files.length) return toast("choose a .safetensors file");
    const form = new FormData();
    form.append("file", file.files[0]);
    form.append("name", name.value);
    if (tag.value) form.append("tag", tag.value);
    const job = await api("/api/uploads/adapter", { method: "POST", form });
    done(await follow(job, (r) => status.replaceChildren(jobLine(r))));
  };
  const scan = async () => {
    const job = await api("/api/scan", { method: "POST", body: { folder: folder.value } });
    done(await follow(job, (r) => status.replaceChildren(jobLine(r))));
  };
  main().replaceChildren(el("h2", { text: "Import" }),
    el("div", { class: "panel" }, el("h3", { text: "Upload an adapter" }), el("div", { class: "row" }, file, name, tag,
      el("button", { onclick: upload }, "Upload"))),
    el("div", { class: "panel" }, el("h3", { text: "Scan a folder (files stay in place)" }), el("div", { class: "row" }, folder,
      el("button", { onclick: scan }, "Scan"))),
    status);
}

// --- routing -------------------------------------------------------------------------------------------------
async function route() {
  const hash = location.hash || "#/library";
  const [path, queryText] = hash.slice(2).split("?");
  const query = new URLSearchParams(queryText || "");
  const [page, ...rest] = path.split("/");
  for (const link of document.querySelectorAll("nav a")) link.classList.toggle("active", link.dataset.page === page);
  try {
    if (page === "adapter") await adapterPage(decodeURIComponent(rest.join("/")));
    else if (page === "generate") await generatePage(query);
    else if (page === "train") await trainPage();
    else if (page === "import") importPage();
    else await libraryPage();
  } catch (e) {
    main().replaceChildren(el("p", { class: "muted", text: String(e.message || e) }));
  }
  document.body.dataset.ready = page || "library";
}

window.addEventListener("hashchange", route);
route();
