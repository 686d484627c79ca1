// The page: start fairtune's wasm module on the fastest backend this browser has (a GPU through
// WebGPU, else burn's CPU backend in WebAssembly — a software WebGPU adapter such as SwiftShader
// is slower than the CPU backend), train a preset step by step (every device read is awaited, so
// the page stays live), draw the charts, and keep a table of finished runs. Everything a run
// produced is also on `window.fairtuneRuns`, the device on `window.fairtuneDevice` (the browser
// test reads them). The module runs in a worker (web/engine.js): every call below is a message
// and a promise.

// Threads for burn's CPU backend where the page may have them (one per core).
const THREADS = navigator.hardwareConcurrency || 1;
// The engine: a worker and which build it runs — "threads" (the CPU backend on every core, in a
// cross-origin isolated page) or "gpu" (WebGPU and a one-thread CPU backend) — and what it said
// when it loaded ({threads, why}).
let engine = null;
const pending = new Map();
let nextCall = 0;
function callEngine(name, args, transfer = []) {
  return new Promise((resolve, reject) => {
    const id = nextCall++;
    pending.set(id, { resolve, reject });
    engine.worker.postMessage({ id, name, args }, transfer);
  });
}
function failPending(message) {
  for (const { reject } of pending.values()) reject(new Error(message));
  pending.clear();
}
function onEngineMessage({ data }) {
  if (data.panic !== undefined) {
    window.fairtunePanic(data.panic);
    return;
  }
  const call = pending.get(data.id);
  pending.delete(data.id);
  if (!call) return; // (failed already, when the engine died)
  if (data.error !== undefined) call.reject(new Error(data.error));
  else call.resolve(data.value);
}

// Run the engine of `kind`, replacing another: the visitor's files go to the new one again.
async function useEngine(kind) {
  if (engine?.kind === kind) return;
  if (engine) {
    engine.worker.terminate();
    failPending("the engine was replaced");
  }
  const worker = new Worker(new URL("./engine.js", import.meta.url), { type: "module" });
  worker.onmessage = onEngineMessage;
  // A trap (out of memory) ends the module like a panic does.
  worker.onerror = (event) => window.fairtunePanic(`the engine failed: ${event.message ?? "it did not load"}`);
  engine = { worker, kind, info: null };
  engine.info = await callEngine("load", [kind === "threads" ? THREADS : 0]);
  if (loadedModel) await registerModel(loadedModel);
  if (loadedData) await fairtune.register_file(loadedData.path, await loadedData.file.text());
}

const fairtune = Object.fromEntries(["init", "start", "step", "evaluate", "register_file",
  "forget_files", "answers", "adapter_files"].map((name) => [name, (...args) => callEngine(name, args)]));
// The model's bytes move to the worker instead of being copied.
fairtune.register_bytes = (path, bytes) => callEngine("register_bytes", [path, bytes], [bytes.buffer]);

const $ = (id) => document.getElementById(id);
const LAMBDAS = [0, 0.3, 1, 3, 10, 30, 100, 300, 1000];
const BETAS = [0.05, 0.1, 0.2, 0.5, 1, 2];
const EVAL_EVERY = 10;
const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"];

const INTROS = {
  classify: "A sentiment classifier (a tiny BERT, trained from scratch) reads short reviews " +
    "written by two groups, women and men. The annotators were biased: half of the negative " +
    "reviews by women were labelled positive, half of the positive reviews by men negative, so " +
    "a model trained on these labels learns the subject's gender as evidence. The fairness " +
    "penalty λ·F pulls the mean P(positive) of the two groups together on counterfactual copies " +
    "of the same sentences. The held-out reviews use other sentences and honest labels. Train " +
    "at λ = 0, then at λ = 100, and compare the held-out group gap.",
  dpo: "Preference tuning with DPO: a tiny Llama (trained from scratch) learns to answer " +
    "\"Good?\" about a review with \"yes\" or \"no\" from pairs of a chosen and a rejected answer, " +
    "labelled by the same biased annotators. The fairness penalty λ·F equalizes the mean " +
    "log P(\" yes\") of the two groups; the held-out numbers are TRL's reward accuracy " +
    "(rewards/accuracies: the share of pairs whose chosen answer gains more than the rejected) " +
    "and the group gap of P(\" yes\"). β sets how far the model may move from its reference.",
  "lora-dpo": "Your model, tuned here: LoRA adapters (rank r on the attention's q, k, v and o " +
    "projections) are trained with DPO on preference pairs while the model's own weights stay " +
    "frozen; the reference model is the same model with the adapters off. The fairness penalty " +
    "λ·F pulls together the groups' mean log-probability of the chosen answer in each batch. " +
    "After training the page shows the model's answers to held-out questions before and after, " +
    "and offers the adapters for download in the PEFT layout the desktop writes " +
    "(fairtune generate --model M.gguf --adapter DIR uses them).",
};
// How many held-out answers the page shows after a LoRA DPO run, and their length.
const ANSWERS = 4, ANSWER_TOKENS = 16;
// The visitor's files, registered with the wasm module under these paths.
let loadedModel = null, loadedData = null;

window.fairtuneRuns = [];
let stopRequested = false;
// Called when the module panics (a bug) or traps (out of memory): it is unusable afterwards, so
// the calls waiting on it fail and the next Train starts a new engine.
window.fairtunePanic = (message) => {
  stopRequested = true;
  if (engine) engine.broken = true;
  failPending(message);
  const run = window.fairtuneRuns[window.fairtuneRuns.length - 1];
  if (run && !run.error) run.error = message;
  setStatus("error", `${message} — press Train to start again with a new engine.`);
};

function options() {
  const opts = {
    preset: $("preset").value,
    lambda: LAMBDAS[Number($("lambda").value)],
    beta: BETAS[Number($("beta").value)],
    steps: Number($("steps").value),
    seed: Number($("seed").value),
  };
  if (opts.preset === "lora-dpo") {
    Object.assign(opts, {
      model: loadedModel?.path, lora_rank: Number($("lora-rank").value),
      lr: Number($("lr").value), batch_size: Number($("batch-size").value),
      max_length: Number($("max-length").value),
      // As `fairtune train`: 8-/4-bit blocks for the projections, f16 for the rest.
      base_dtype: $("frozen").value === "f32" ? "f32" : "f16",
      gradient_checkpointing: $("recompute").checked,
    });
    if (["q8", "q4"].includes($("frozen").value)) opts.quantize_base = $("frozen").value;
    if (loadedData) opts.data = loadedData.path;
  }
  return opts;
}

const MB = 1024 * 1024;

// A tab's WebAssembly memory ends at 4 GiB; the model's files and its f32 weights (several times
// a 4-bit file) must fit in it. The run's own memory plan is checked when it starts.
const MAX_MODEL_BYTES = 1536 * MB;

// Read `file` in chunks (the status shows how far, `before` bytes of `total` already read) and
// hand it to the module at `path`.
async function registerWithProgress(file, path, before, total, label) {
  const bytes = new Uint8Array(file.size);
  const reader = file.stream().getReader();
  let read = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    bytes.set(value, read);
    read += value.length;
    setStatus("loading", `Reading ${label}: ${((before + read) / MB).toFixed(0)} of ` +
      `${(total / MB).toFixed(0)} MB…`);
  }
  await fairtune.register_bytes(path, bytes);
}

function modelReady(model) {
  loadedModel = model;
  $("train").disabled = false;
  setStatus("idle", `${model.name} (${(model.size / MB).toFixed(0)} MB) is ready. ` +
    "Set λ, β and the steps, then press Train.");
}

// The visitor's GGUF file, noted for the next run.
async function loadModel(file) {
  if (!file) return;
  if (!/\.gguf$/i.test(file.name)) {
    setStatus("error", `${file.name} is not a GGUF file: pick a .gguf model (SmolLM2-135M-Instruct is the tested one).`);
    return;
  }
  if (file.size > MAX_MODEL_BYTES) {
    setStatus("error", `${file.name} is ${(file.size / MB).toFixed(0)} MB: a model that large ` +
      "does not fit in a browser tab's 4 GiB of WebAssembly memory once its weights are unpacked.");
    return;
  }
  const path = `models/${file.name}`;
  await registerModel({ path, name: file.name, size: file.size, files: [{ file, path }] });
}

// Hand the model's files to the engine (the first time, or again to a new engine), reporting
// progress; the engine forgets the model it had first.
async function registerModel(model) {
  $("train").disabled = true;
  await fairtune.forget_files("models");
  let before = 0;
  for (const { file, path } of model.files) {
    await registerWithProgress(file, path, before, model.size, model.name);
    before += file.size;
  }
  modelReady(model);
}

// The files of a Hugging Face model directory fairtune reads.
const MODEL_FILES = /^(config\.json|generation_config\.json|tokenizer\.json|tokenizer_config\.json|special_tokens_map\.json|chat_template\.jinja|model\.safetensors|model\.safetensors\.index\.json|model-\d+-of-\d+\.safetensors)$/;

// A Hugging Face model directory the visitor picked, its files noted under `models/<dir>/`.
async function loadModelDir(list) {
  const files = [...list].filter((f) => f.webkitRelativePath.split("/").length === 2 &&
    MODEL_FILES.test(f.name));
  if (list.length === 0) return;
  const dir = list[0].webkitRelativePath.split("/")[0];
  const names = files.map((f) => f.name);
  if (!names.includes("config.json") || !names.some((n) => n.endsWith(".safetensors"))) {
    setStatus("error", `${dir} is not a Hugging Face model directory: it needs config.json and ` +
      "safetensors weights (and tokenizer.json) at its top level.");
    return;
  }
  const total = files.reduce((sum, f) => sum + f.size, 0);
  if (total > MAX_MODEL_BYTES) {
    setStatus("error", `${dir} holds ${(total / MB).toFixed(0)} MB of model files: too large ` +
      "for a browser tab's 4 GiB of WebAssembly memory.");
    return;
  }
  await registerModel({ path: `models/${dir}`, name: dir, size: total,
    files: files.map((file) => ({ file, path: `models/${dir}/${file.name}` })) });
}

// A file the browser could not read (moved, unreadable, the tab out of memory) says so.
function reading(loading) {
  loading.catch((error) => {
    $("train").disabled = false;
    setStatus("error", `Could not read the file: ${error?.message ?? error}`);
  });
}

async function loadData(file) {
  if (!file) {
    loadedData = null;
    return;
  }
  const path = `data/${file.name}`;
  await fairtune.register_file(path, await file.text());
  loadedData = { path, name: file.name, file };
  setStatus("idle", `Preference pairs: ${file.name}.`);
}

// What WebGPU offers here: none, a GPU, or a software adapter (a CPU emulation: SwiftShader,
// llvmpipe, a fallback adapter), which trains slower than burn's CPU backend in WebAssembly.
async function probeWebGpu() {
  if (!navigator.gpu) return { available: false, why: "this browser has no WebGPU" };
  let adapter = null;
  try {
    adapter = await navigator.gpu.requestAdapter();
  } catch {
    adapter = null;
  }
  if (!adapter) return { available: false, why: "this browser offers no WebGPU adapter" };
  const info = adapter.info ?? {};
  const name = [info.vendor, info.architecture, info.device, info.description]
    .filter(Boolean).join(" / ") || "an unnamed adapter";
  const software = Boolean(adapter.isFallbackAdapter || info.isFallbackAdapter) ||
    /swiftshader|llvmpipe|lavapipe|software|basic render/i.test(name);
  return {
    available: true, software, name,
    info: { vendor: info.vendor, architecture: info.architecture, device: info.device,
      description: info.description },
  };
}

let probe = null;

// Start the backend the visitor chose (`auto`: WebGPU on a GPU, else the CPU backend) and say
// which one trains, and why, in the banner.
async function startBackend() {
  const choice = $("backend").value;
  probe ??= await probeWebGpu();
  const wanted = choice === "auto"
    ? (probe.available && !probe.software ? "webgpu" : "cpu")
    : choice;
  // WebGPU lives in the one-thread build; the CPU backend runs on every core where it may.
  await useEngine(wanted === "webgpu" ? "gpu" : "threads");
  const report = JSON.parse(await fairtune.init(wanted));
  let reason;
  if (report.fallback_reason) {
    reason = `WebGPU did not start: ${report.fallback_reason}.`;
  } else if (report.backend === "cpu" && choice === "cpu") {
    reason = "As chosen.";
  } else if (report.backend === "cpu" && probe.available) {
    reason = `This browser's WebGPU adapter is ${probe.name}, a software emulation on the CPU, ` +
      "which trains far slower than this backend. Choose WebGPU under Backend to use it anyway.";
  } else if (report.backend === "cpu") {
    reason = `${probe.why[0].toUpperCase()}${probe.why.slice(1)}.`;
  } else if (probe.software) {
    reason = "A software emulation, as chosen: expect it to be slower than the CPU backend.";
  } else {
    reason = "";
  }
  Object.assign(report, { choice, reason, software_adapter: probe.available && probe.software,
    adapter_info: probe.info ?? null, threads: engine.info.threads, threads_why: engine.info.why });
  window.fairtuneDevice = report;
  const device = $("device");
  device.className = report.backend === "cpu" && choice !== "cpu" ? "fallback" : "";
  const threads = engine.info.threads === 1
    ? `one thread: ${engine.info.why}`
    : `${engine.info.threads} threads`;
  device.textContent = report.backend === "cpu"
    ? `Training on the CPU backend (WebAssembly, ${threads}). ${reason}`
    : `Training on WebGPU: ${probe.name}. ${reason}`;
  device.dataset.state = "ready";
  return report;
}

function showControls() {
  $("lambda-value").textContent = LAMBDAS[Number($("lambda").value)];
  $("beta-value").textContent = BETAS[Number($("beta").value)];
  const preset = $("preset").value;
  const dpo = preset !== "classify";
  $("intro").textContent = INTROS[preset];
  $("model-panel").hidden = preset !== "lora-dpo";
  $("beta-label").style.opacity = dpo ? 1 : 0.4;
  $("beta").disabled = !dpo;
  $("groups-caption").textContent = preset === "lora-dpo"
    ? "Mean log P(chosen answer) per group (training batch)"
    : dpo ? "Mean log P(\" yes\") per group (fairness batch)"
    : "Mean P(positive) per group (fairness batch)";
  $("eval-caption").textContent = dpo
    ? "Held-out reward accuracy (rewards/accuracies) and group gap"
    : "Held-out accuracy and group gap";
}

function setStatus(state, text) {
  const status = $("status");
  status.dataset.state = state;
  status.className = state === "error" ? "error" : "";
  status.textContent = text;
}

// Three to six round values from `lo` to `hi` (1, 2 or 5 times a power of ten apart).
function niceTicks(lo, hi) {
  const span = hi - lo;
  if (!(span > 0)) return [lo];
  const raw = span / 4;
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw);
  const ticks = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) {
    ticks.push(Math.abs(v) < step * 1e-9 ? 0 : v);
  }
  return ticks;
}

// A tick's label with as many decimals as the axis's span needs (0.0021 → "2.1e-3" only when
// the values themselves are that small).
function tickLabel(v, span) {
  if (v === 0) return "0";
  if (Math.abs(v) < 1e-3 || Math.abs(v) >= 1e5) return v.toExponential(1);
  const decimals = Math.max(0, Math.min(4, 1 - Math.floor(Math.log10(span / 4))));
  return v.toFixed(decimals);
}

// A line chart on a canvas: `series` = [{name, color, dashed?, points: [[x, y], …]}].
function drawChart(canvas, series, xMax) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth, height = canvas.clientHeight;
  canvas.width = width * ratio;
  canvas.height = height * ratio;
  const ctx = canvas.getContext("2d");
  ctx.scale(ratio, ratio);
  ctx.clearRect(0, 0, width, height);
  ctx.font = "11px system-ui, sans-serif";
  const all = series.flatMap((s) => s.points.map((p) => p[1])).filter(Number.isFinite);
  if (all.length === 0) return;
  let lo = Math.min(...all), hi = Math.max(...all);
  if (hi - lo < 1e-9) { lo -= 0.5; hi += 0.5; }
  const pad = (hi - lo) * 0.08;
  lo -= pad; hi += pad;
  const left = 48, right = 8, top = 8, bottom = 20;
  const x = (v) => left + (v / Math.max(1, xMax)) * (width - left - right);
  const y = (v) => top + (1 - (v - lo) / (hi - lo)) * (height - top - bottom);
  ctx.strokeStyle = "#ccc";
  ctx.fillStyle = "#555";
  ctx.beginPath();
  ctx.moveTo(left, top); ctx.lineTo(left, height - bottom); ctx.lineTo(width - right, height - bottom);
  ctx.stroke();
  const span = hi - lo - 2 * pad;
  for (const v of niceTicks(lo + pad, hi - pad)) {
    ctx.fillText(tickLabel(v, span), 2, y(v) + 4);
    ctx.strokeStyle = "#eee";
    ctx.beginPath(); ctx.moveTo(left + 1, y(v)); ctx.lineTo(width - right, y(v)); ctx.stroke();
  }
  for (const v of niceTicks(0, Math.max(1, xMax)).filter(Number.isInteger)) {
    ctx.fillText(String(v), x(v) - 3 * String(v).length, height - 5);
  }
  ctx.fillText("step", width - right - 24, height - bottom - 4);
  series.forEach((s, i) => {
    ctx.strokeStyle = s.color;
    ctx.lineWidth = 1.5;
    ctx.setLineDash(s.dashed ? [5, 4] : []);
    ctx.beginPath();
    s.points.filter((p) => Number.isFinite(p[1])).forEach(([px, py], j) => {
      j === 0 ? ctx.moveTo(x(px), y(py)) : ctx.lineTo(x(px), y(py));
    });
    ctx.stroke();
    if (s.points.length < 20) {
      ctx.fillStyle = s.color;
      s.points.forEach(([px, py]) => ctx.fillRect(x(px) - 2, y(py) - 2, 4, 4));
    }
    ctx.fillStyle = s.color;
    ctx.fillText(s.name, left + 8 + (i % 2) * 150, top + 10 + Math.floor(i / 2) * 13);
  });
  ctx.setLineDash([]);
}

function draw(run) {
  const steps = run.options.steps;
  const series = (key) => run.records.map((r) => [r.step, r[key]]);
  drawChart($("chart-loss"), [{ name: "task loss", color: COLORS[0], points: series("task_loss") }], steps);
  drawChart($("chart-f"), [{ name: "F", color: COLORS[1], points: series("fairness_F") }], steps);
  drawChart($("chart-groups"), run.groups.map((g, i) => ({
    name: g, color: COLORS[i % COLORS.length],
    points: run.records.map((r) => [r.step, r.group_means[g]]),
  })), steps);
  // The previous finished run of the same preset and model, dashed, to compare λs at a glance.
  const runs = window.fairtuneRuns;
  const previous = runs.slice(0, runs.indexOf(run)).reverse()
    .find((r) => r.options.preset === run.options.preset && r.options.model === run.options.model &&
      !r.error && r.evals.length > 0);
  const evalSeries = (r, dashed) => {
    const label = dashed ? ` (λ=${r.options.lambda})` : "";
    return [
      { name: run.accuracyKey + label, color: COLORS[2], dashed,
        points: r.evals.map((e) => [e.step, e[r.accuracyKey]]) },
      { name: "group gap" + label, color: COLORS[1], dashed,
        points: r.evals.map((e) => [e.step, e.group_gap]) },
    ];
  };
  drawChart($("chart-eval"), [
    ...evalSeries(run, false),
    ...(previous ? evalSeries(previous, true) : []),
  ], Math.max(steps, previous?.options.steps ?? 0));
}

function addRunRow(run) {
  const last = run.evals[run.evals.length - 1] ?? {};
  const fmt = (v) => (Number.isFinite(v) ? v.toFixed(3) : "–");
  const means = Object.entries(last.group_means ?? {}).map(([g, m]) => `${g} ${fmt(m)}`).join(", ");
  const row = document.createElement("tr");
  const preset = run.options.model
    ? `${run.options.preset} (${run.options.model.split("/").pop()})`
    : run.options.preset;
  for (const cell of [preset, run.backend, run.options.lambda,
    run.options.preset === "classify" ? "–" : run.options.beta, run.records.length,
    `${run.accuracyKey} ${fmt(last[run.accuracyKey])}`, fmt(last.group_gap), means,
    run.tokensPerSecond.toFixed(0)]) {
    const td = document.createElement("td");
    td.textContent = cell;
    row.append(td);
  }
  $("runs").tBodies[0].append(row);
}

async function train(event) {
  event.preventDefault();
  const opts = options();
  if (opts.preset === "lora-dpo" && !opts.model) {
    setStatus("error", "Pick a GGUF model first (or drop one on the page).");
    return;
  }
  let info;
  try {
    if (engine.broken) {
      setStatus("loading", "Starting a new engine…");
      engine.worker.terminate();
      engine = null;
      await startBackend();
    }
    if (opts.preset === "lora-dpo") {
      setStatus("loading", `Loading ${loadedModel.name} and the preference pairs…`);
      // Let the page draw the status before the module is busy.
      await new Promise((resolve) => setTimeout(resolve, 30));
    }
    const startedAt = performance.now();
    info = JSON.parse(await fairtune.start(JSON.stringify(opts)));
    info.start_seconds = (performance.now() - startedAt) / 1000;
  } catch (error) {
    setStatus("error", `Could not start: ${error?.message ?? error}`);
    return;
  }
  const run = {
    options: opts, info, groups: info.groups, records: [], evals: [], tokensPerSecond: 0,
    accuracyKey: opts.preset === "classify" ? "accuracy" : "rewards/accuracies",
    backend: window.fairtuneDevice.backend,
  };
  window.fairtuneRuns.push(run);
  stopRequested = false;
  setBusy(true);
  setStatus("training", `Training ${info.model} on ${info.train_rows} rows, λ = ${opts.lambda}…`);
  let started;
  // Training throughput: the steps' own time, as the desktop's tokens_per_s (the evaluations
  // and the answers are timed apart).
  let tokens = 0, stepSeconds = 0;
  try {
    // Where the run starts from, so the held-out chart shows what training changed.
    run.evals.push(JSON.parse(await fairtune.evaluate()));
    draw(run);
    started = performance.now();
    for (let s = 1; s <= opts.steps && !stopRequested; s++) {
      const stepStarted = performance.now();
      const record = JSON.parse(await fairtune.step());
      record.browser_ms = performance.now() - stepStarted;
      run.records.push(record);
      tokens += record.tokens;
      stepSeconds += record.browser_ms / 1000;
      if (s % EVAL_EVERY === 0 || s === opts.steps) {
        const evalStarted = performance.now();
        const evaluation = JSON.parse(await fairtune.evaluate());
        evaluation.browser_ms = performance.now() - evalStarted;
        run.evals.push(evaluation);
      }
      run.tokensPerSecond = tokens / stepSeconds;
      draw(run);
      setStatus("training", `Step ${s}/${opts.steps}: task loss ${record.task_loss.toFixed(4)}, ` +
        `F ${record.fairness_F?.toFixed(5) ?? "–"}, ${run.tokensPerSecond.toFixed(0)} tokens/s`);
    }
    if (run.evals.length === 0 || run.evals[run.evals.length - 1].step !== run.records.length) {
      run.evals.push(JSON.parse(await fairtune.evaluate()));
      draw(run);
    }
    run.seconds = (performance.now() - started) / 1000;
    addRunRow(run);
    if (opts.preset === "lora-dpo") {
      setStatus("training", "Writing the answers before and after training…");
      const answersStarted = performance.now();
      run.answers = JSON.parse(await fairtune.answers(ANSWERS, ANSWER_TOKENS));
      run.answerSeconds = (performance.now() - answersStarted) / 1000;
      showAnswers(run.answers);
    }
    const last = run.evals[run.evals.length - 1];
    setStatus("done", `Done: ${run.records.length} steps in ${run.seconds.toFixed(1)} s with ` +
      `the evaluations (training ${run.tokensPerSecond.toFixed(0)} tokens/s on ` +
      `${run.backend}); held-out ${run.accuracyKey} ` +
      `${last[run.accuracyKey].toFixed(3)}, group gap ${last.group_gap.toFixed(3)}.`);
  } catch (error) {
    run.error = String(error?.message ?? error);
    setStatus("error", `Training stopped: ${run.error}` +
      (engine?.broken ? " — press Train to start again with a new engine." : ""));
  } finally {
    setBusy(false);
  }
}

function showAnswers(answers) {
  const body = $("answers").tBodies[0];
  body.replaceChildren();
  for (const a of answers) {
    const prompt = Array.isArray(a.prompt) ? a.prompt.map((m) => m.content).join(" ") : a.prompt;
    const row = document.createElement("tr");
    for (const cell of [prompt, a.group ?? "", a.before.trim(), a.after.trim()]) {
      const td = document.createElement("td");
      td.textContent = cell;
      row.append(td);
    }
    body.append(row);
  }
  $("answers-section").hidden = false;
}

// The adapters of the last LoRA run, as the two files of PEFT's layout.
async function downloadAdapters() {
  for (const [name, bytes] of await fairtune.adapter_files()) {
    const link = document.createElement("a");
    link.href = URL.createObjectURL(new Blob([bytes], { type: "application/octet-stream" }));
    link.download = name;
    link.click();
    setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
  }
}

// While a run trains, its settings and the backend stay as they are.
function setBusy(busy) {
  $("train").disabled = busy;
  $("stop").disabled = !busy;
  $("backend").disabled = busy;
}

async function main() {
  for (const id of ["lambda", "beta", "preset"]) $(id).addEventListener("input", showControls);
  showControls();
  await startBackend();
  $("backend").addEventListener("change", async () => {
    $("train").disabled = true;
    $("device").dataset.state = "starting";
    try {
      await startBackend();
    } catch (error) {
      setStatus("error", `Could not switch the backend: ${error?.message ?? error}`);
    }
    $("train").disabled = false;
  });
  $("controls").addEventListener("submit", train);
  $("model-file").addEventListener("change", (e) => reading(loadModel(e.target.files[0])));
  $("model-dir").addEventListener("change", (e) => reading(loadModelDir(e.target.files)));
  $("data-file").addEventListener("change", (e) => reading(loadData(e.target.files[0])));
  $("download").addEventListener("click", async () => {
    try {
      await downloadAdapters();
    } catch (error) {
      setStatus("error", `Could not make the adapter files: ${error?.message ?? error}`);
    }
  });
  document.addEventListener("dragover", (e) => {
    e.preventDefault();
    document.body.classList.add("dragging");
  });
  document.addEventListener("dragleave", () => document.body.classList.remove("dragging"));
  document.addEventListener("drop", (e) => {
    e.preventDefault();
    document.body.classList.remove("dragging");
    const file = e.dataTransfer?.files?.[0];
    if (!file) return;
    $("preset").value = "lora-dpo";
    showControls();
    reading(loadModel(file));
  });
  $("stop").addEventListener("click", () => { stopRequested = true; });
  $("train").disabled = false;
  setStatus("idle", "Ready. Pick a preset and λ, then press Train.");
}

main().catch((error) => {
  const device = $("device");
  device.className = "error";
  device.textContent = `fairtune could not start: ${error}`;
  device.dataset.state = "error";
  throw error;
});
