// The real-browser test: headless Debian Chromium loads the page from a local server and trains
// through the page's own controls. Without WebGPU the page says so in a plain sentence and trains
// on burn's CPU backend in WebAssembly. With WebGPU enabled (--enable-unsafe-webgpu: a SwiftShader
// adapter, a CPU emulation) the page must still pick the CPU backend by default — it is far
// faster — and say why; there the classifier preset trains at λ = 0 and at λ > 0, the task loss
// falls and the held-out group gap at λ > 0 is much smaller. Then WebGPU is forced and a short
// classifier run (the WGSL group-statistics kernels) and a DPO run train on it. Every run's losses
// equal the desktop CPU's step by step, and nothing on the page fails (no uncaught error, no
// console error, no WebGPU validation message). Saves a screenshot of the charts to
// web/test-results/page.png.
//
// Environment: CHROMIUM (default /usr/bin/chromium), FAIRTUNE_WEB_STEPS (default 40).
import { chromium } from "playwright-core";
import { spawn, execFileSync } from "node:child_process";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join, dirname } from "node:path";
import { cpus } from "node:os";
import { fileURLToPath } from "node:url";
import assert from "node:assert/strict";

const web = join(dirname(fileURLToPath(import.meta.url)), "..");
const results = join(web, "test-results");
const steps = Number(process.env.FAIRTUNE_WEB_STEPS || 40);
// Slider positions of the page's λ scale [0, 0.3, 1, 3, 10, 30, 100, 300, 1000].
const LAMBDA_ZERO = 0, LAMBDA_FAIR = 6, LAMBDA_DPO = 2;
// Steps of the classifier run on (software) WebGPU, and of the real model's LoRA DPO run.
const GPU_STEPS = 10, LORA_STEPS = 2;

// The page as web/serve.sh serves it (cross-origin isolated: the threaded CPU build), and as a
// host that sets no headers would (one thread).
const port = 8000 + Math.floor(Math.random() * 1000);
const servers = [[port], [port + 1, "--no-isolation"]].map((args) =>
  spawn("python3", ["serve.py", ...args.map(String)], { cwd: web, stdio: "ignore" }));
let problems = [];
let browser;
let page;

// A fresh headless Chromium on the page; `webgpu: false` leaves out the flag that gives it a
// (SwiftShader) WebGPU adapter, so navigator.gpu offers none.
async function openPage(webgpu, isolated = true) {
  problems = [];
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: [
      ...(webgpu ? ["--enable-unsafe-webgpu"] : []),
      "--no-sandbox", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ], // (playwright gives each launch a fresh profile directory of its own)
  });
  page = await browser.newPage({ viewport: { width: 1280, height: 1000 } });
  page.on("crash", () => problems.push("the page crashed"));
  page.on("pageerror", (e) => problems.push(`pageerror: ${e.message}`));
  page.on("console", (m) => {
    const text = m.text();
    if (process.env.FAIRTUNE_WEB_VERBOSE) console.log(`[page ${m.type()}] ${text}`);
    // Chromium reports WebGPU validation errors (an invalid shader or pipeline) as warnings.
    if (m.type() === "error" || /WebGPU|Invalid|validation/i.test(text)) {
      problems.push(`console ${m.type()}: ${text}`);
    }
  });
  await page.goto(`http://127.0.0.1:${isolated ? port : port + 1}/`);
  await page.waitForFunction(() => document.getElementById("device").dataset.state !== "starting",
    null, { timeout: 120_000 });
  const device = await page.evaluate(() => window.fairtuneDevice);
  console.log(`device (${webgpu ? "WebGPU enabled" : "no WebGPU"}):`, JSON.stringify(device));
  assert.ok(device, "the page reported no device");
  return device;
}

// Set the controls, press Train, and wait for the run to end; returns the page's record of it.
async function trainRun(lambdaIndex, preset = "classify", runSteps = steps) {
  await page.selectOption("#preset", preset);
  await page.fill("#steps", String(runSteps));
  await page.fill("#seed", "42");
  await page.locator("#lambda").fill(String(lambdaIndex));
  const before = await page.evaluate(() => window.fairtuneRuns.length);
  await page.click("#train");
  // (Starting a run on a real model loads it first: tens of seconds.)
  await page.waitForFunction((n) => window.fairtuneRuns.length > n ||
    document.getElementById("status").dataset.state === "error", before, { timeout: 10 * 60_000 });
  const started = await page.evaluate(() => document.getElementById("status").textContent);
  assert.equal(await page.evaluate(() => window.fairtuneRuns.length), before + 1,
    `the run did not start: ${started}`);
  const progress = setInterval(async () => {
    const status = await page.evaluate(() => document.getElementById("status").textContent)
      .catch(() => null);
    if (status) console.log(`  ${status}`);
  }, 20_000);
  try {
    await page.waitForFunction(
      () => ["done", "error"].includes(document.getElementById("status").dataset.state),
      null, { timeout: 15 * 60_000, polling: 500 });
  } catch (error) {
    throw new Error(`${error.message}\n${problems.join("\n")}`);
  } finally {
    clearInterval(progress);
  }
  const run = await page.evaluate(() => window.fairtuneRuns[window.fairtuneRuns.length - 1]);
  assert.equal(run.error, undefined, `the run failed: ${run.error}`);
  return run;
}

const binary = process.env.FAIRTUNE_BIN || join(web, "..", "target", "release", "fairtune");

// The desktop CPU run of the same preset (`fairtune playground`): its per-step records (and for
// LoRA DPO, its before/after answers as the page asks for them).
function desktopRun(options) {
  const args = ["playground", "--preset", options.preset, "--backend", "cpu",
    "--lambda", String(options.lambda), "--beta", String(options.beta),
    "--steps", String(options.steps), "--seed", String(options.seed)];
  if (options.preset === "lora-dpo") {
    args.push("--model", desktopModels[options.model], "--lr", String(options.lr), "--batch-size",
      String(options.batch_size), "--lora-rank", String(options.lora_rank), "--max-length",
      String(options.max_length), "--answers", String(ANSWERS), "--max-new-tokens",
      String(ANSWER_TOKENS), "--base-dtype", options.base_dtype);
    if (options.quantize_base) args.push("--quantize-base", options.quantize_base);
    if (options.gradient_checkpointing) args.push("--gradient-checkpointing");
  }
  const out = execFileSync(binary, args, { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] });
  const lines = out.trim().split("\n").map((line) => JSON.parse(line));
  const records = lines.filter((r) => r.step !== undefined);
  records.answers = lines.find((r) => r.answers)?.answers;
  return records;
}

// The browser's first steps against the desktop CPU's: same data, seed and initial weights, so
// the losses may differ only by float rounding (different kernels, summation orders).
const PARITY_STEPS = 10, PARITY_TOLERANCE = 1e-3;
function checkParity(run, tolerance = PARITY_TOLERANCE) {
  const desktop = desktopRun(run.options);
  run.desktop = desktop;
  const worst = [];
  for (let i = 0; i < Math.min(PARITY_STEPS, run.records.length); i++) {
    for (const key of ["loss", "task_loss", "fairness_F"]) {
      const a = run.records[i][key], b = desktop[i][key];
      const diff = Math.abs(a - b);
      worst.push({ step: i + 1, key, browser: a, desktop: b, diff });
      assert.ok(diff <= tolerance * Math.max(1, Math.abs(b)),
        `${run.options.preset} λ=${run.options.lambda} step ${i + 1}: ${key} ${a} in the browser, ` +
        `${b} on the desktop CPU`);
    }
  }
  return Math.max(...worst.map((w) => w.diff));
}

function mean(values) {
  return values.reduce((a, b) => a + b, 0) / values.length;
}

function checkRun(run) {
  const lambda = run.options.lambda;
  assert.equal(run.records.length, steps, `λ=${lambda}: ${run.records.length} of ${steps} steps`);
  for (const r of run.records) {
    for (const key of ["loss", "task_loss", "fairness_F"]) {
      assert.ok(Number.isFinite(r[key]), `λ=${lambda} step ${r.step}: ${key} = ${r[key]}`);
    }
  }
  const losses = run.records.map((r) => r.task_loss);
  const k = Math.max(3, Math.floor(steps / 6));
  const first = mean(losses.slice(0, k)), last = mean(losses.slice(-k));
  assert.ok(last < 0.8 * first, `λ=${lambda}: the task loss did not fall (${first} → ${last})`);
  const final = run.evals[run.evals.length - 1];
  assert.ok(Number.isFinite(final.group_gap) && Number.isFinite(final.accuracy),
    `λ=${lambda}: no held-out numbers: ${JSON.stringify(final)}`);
  return { lambda, first, last, accuracy: final.accuracy, gap: final.group_gap,
    means: final.group_means, tokensPerSecond: run.tokensPerSecond, seconds: run.seconds };
}

// The real model: SmolLM2-135M-Instruct's GGUF, fetched by the desktop binary (a no-op when it
// is in the cache already). Its page answers: as many as the page shows, as long.
const ANSWERS = 4, ANSWER_TOKENS = 16;
// With FAIRTUNE_OFFLINE set and the model not in the cache, that run is skipped (as the Rust
// tests skip theirs).
let ggufPath = null;
try {
  const fetchLine = execFileSync(binary, ["fetch", "smollm2-135m-instruct"],
    { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
  ggufPath = join(fetchLine.trim().split(/\s+/)[1], "model.gguf");
} catch (error) {
  if (!process.env.FAIRTUNE_OFFLINE) throw error;
  console.log("FAIRTUNE_OFFLINE is set and SmolLM2 is not fetched: skipping its run");
}
// A Hugging Face directory: the tiny chat Llama of the Rust tests.
const hfDir = join(web, "..", "tests", "fixtures", "tiny-llama-chat");
// Where the page registers each (see app.js) → the same model on disk for the desktop run.
const desktopModels = { "models/model.gguf": ggufPath, "models/tiny-llama-chat": hfDir };

// The visitor's path: pick a model (`input`: the GGUF or the directory control), train LoRA DPO
// with the built-in pairs, read the answers, download the adapters.
async function loraRun(input, path, layers, frozen = "f32", recompute = false) {
  await page.selectOption("#preset", "lora-dpo");
  await page.setInputFiles(input, path);
  const name = path.split("/").pop();
  await page.waitForFunction((n) => document.getElementById("status").textContent
    .startsWith(`${n} (`), name, { timeout: 120_000 });
  await page.fill("#batch-size", "2");
  await page.fill("#lr", "0.0005");
  await page.selectOption("#lora-rank", "8");
  await page.fill("#max-length", "96");
  await page.selectOption("#frozen", frozen);
  await page.setChecked("#recompute", recompute);
  const run = await trainRun(LAMBDA_DPO, "lora-dpo", LORA_STEPS);
  assert.equal(run.records.length, LORA_STEPS);
  const parityMaxDiff = checkParity(run, 1e-4);
  // The same greedy tokens as the desktop, before and after training.
  assert.equal(run.answers.length, ANSWERS);
  run.answers.forEach((a, i) => {
    const d = run.desktop.answers[i];
    assert.deepEqual(a.before_ids, d.before_ids, `answer ${i} before: ${a.before} / ${d.before}`);
    assert.deepEqual(a.after_ids, d.after_ids, `answer ${i} after: ${a.after} / ${d.after}`);
  });
  const shown = await page.evaluate(() => document.getElementById("answers").tBodies[0].rows.length);
  assert.equal(shown, ANSWERS, "the page shows no before/after table");
  // The adapters, in PEFT's layout: every q/k/v/o projection of every layer, A and B.
  const files = {};
  const saved = new Promise((resolve) => {
    const save = async (download) => {
      files[download.suggestedFilename()] = readFileSync(await download.path());
      if (Object.keys(files).length === 2) {
        page.off("download", save);
        resolve();
      }
    };
    page.on("download", save);
  });
  await page.click("#download");
  await saved;
  const weights = files["adapter_model.safetensors"];
  const headerLength = Number(weights.readBigUInt64LE(0));
  const header = JSON.parse(weights.subarray(8, 8 + headerLength).toString("utf8"));
  const names = Object.keys(header).filter((k) => k !== "__metadata__");
  assert.equal(names.length, layers * 4 * 2, `adapter tensors: ${names.length}`);
  assert.ok(names.includes("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"), names[0]);
  const config = JSON.parse(files["adapter_config.json"].toString("utf8"));
  assert.equal(config.r, 8);
  assert.equal(config.peft_type, "LORA");
  return { steps: LORA_STEPS, parityMaxDiff, seconds: run.seconds, tokensPerSecond: run.tokensPerSecond,
    startSeconds: run.info.start_seconds, losses: run.records.map((r) => r.loss),
    answerSeconds: run.answerSeconds, backend: run.backend,
    answers: run.answers.map((a) => ({ group: a.group, before: a.before, after: a.after })) };
}

// Choose a backend with the page's control and wait until the page has started it.
async function chooseBackend(choice) {
  await page.selectOption("#backend", choice);
  await page.waitForFunction((c) => window.fairtuneDevice?.choice === c &&
    document.getElementById("device").dataset.state === "ready", choice);
  const device = await page.evaluate(() => window.fairtuneDevice);
  console.log(`device (chose ${choice}):`, JSON.stringify(device));
  return device;
}

// The banner must read as a sentence, not a Rust debug dump.
async function banner() {
  const shown = await page.evaluate(() => document.getElementById("device").textContent);
  assert.doesNotMatch(shown, /WgpuDevice|\{|\}|noop|requested/, `a raw error on the page: ${shown}`);
  return shown;
}

try {
  await new Promise((r) => setTimeout(r, 500));
  // Without WebGPU the page says so and trains on burn's CPU backend in WebAssembly — the
  // desktop CPU's numbers exactly.
  // Served without the isolation headers: one thread, and the page says why.
  const fallbackDevice = await openPage(false, false);
  assert.equal(fallbackDevice.backend, "cpu", `expected the CPU backend: ${JSON.stringify(fallbackDevice)}`);
  assert.match(await banner(), /CPU backend.*no WebGPU/, "the page did not say it has no WebGPU");
  assert.equal(fallbackDevice.threads, 1, JSON.stringify(fallbackDevice));
  assert.match(await banner(), /one thread: this page is not cross-origin isolated/);
  const fallbackRun = await trainRun(LAMBDA_FAIR, "classify", 5);
  const fallback = { steps: 5, parityMaxDiff: checkParity(fallbackRun),
    tokensPerSecond: fallbackRun.tokensPerSecond };
  // A dead module (a panic, or a trap such as running out of memory) is replaced by the next
  // Train, which trains as before.
  await page.evaluate(() => window.fairtunePanic("a simulated failure"));
  assert.match(await page.evaluate(() => document.getElementById("status").textContent),
    /press Train to start again/);
  const restarted = await trainRun(LAMBDA_FAIR, "classify", 5);
  assert.deepEqual(restarted.records.map((r) => r.loss), fallbackRun.records.map((r) => r.loss),
    "the new engine trains the same run");
  // Asking for WebGPU anyway: one plain sentence, and still the CPU backend.
  const forced = await chooseBackend("webgpu");
  assert.equal(forced.backend, "cpu");
  assert.match(forced.fallback_reason, /no WebGPU adapter/, JSON.stringify(forced));
  assert.match(await banner(), /WebGPU did not start: this browser offers no WebGPU adapter/);
  assert.deepEqual(problems.filter((p) => !/WebGPU/.test(p)), [], "the fallback page reported problems");
  await browser.close();

  // A software WebGPU adapter (SwiftShader): the CPU backend by default, and the page says why.
  // Isolated (web/serve.sh): the threaded build, a thread per core.
  const device = await openPage(true);
  assert.equal(device.backend, "cpu", `SwiftShader should lose to the CPU: ${JSON.stringify(device)}`);
  // (web/build.sh makes the threaded build wherever rustup can add rust-src; without it the page
  // must say why it has one thread.)
  if (JSON.parse(readFileSync(join(web, "pkg", "builds.json"), "utf8")).threads) {
    const cores = await page.evaluate(() => navigator.hardwareConcurrency);
    assert.equal(device.threads, cores, `the CPU backend should run a thread per core: ${JSON.stringify(device)}`);
    if (cpus().length > 1) assert.ok(device.threads > 1, "one core seen on a machine with more");
  } else {
    console.log("NOTE: no threaded build (web/pkg-threads): the threads are not tested");
    assert.match(device.threads_why, /built without its threaded build/, JSON.stringify(device));
  }
  assert.equal(device.software_adapter, true, JSON.stringify(device));
  assert.match(await banner(), /software emulation/, "the page did not say why it took the CPU");

  const plainRun = await trainRun(LAMBDA_ZERO);
  const plain = checkRun(plainRun);
  plain.parityMaxDiff = checkParity(plainRun);
  const fairRun = await trainRun(LAMBDA_FAIR);
  const fair = checkRun(fairRun);
  fair.parityMaxDiff = checkParity(fairRun);
  mkdirSync(results, { recursive: true });
  await page.screenshot({ path: join(results, "page.png"), fullPage: true });

  // A Hugging Face directory, then a real model's GGUF: LoRA DPO on the CPU backend the page
  // chose.
  // (The directory's run keeps its base in 8-bit blocks and recomputes its layers: the memory
  // options in WebAssembly, against the desktop's same options.)
  const loraDir = await loraRun("#model-dir", hfDir, 2, "q8", true);
  // Train again: the page kept the model it read (on the CPU backend), and the run that starts
  // from it is the same run.
  const againRun = await trainRun(LAMBDA_DPO, "lora-dpo", LORA_STEPS);
  assert.equal(againRun.info.model_kept, true, "the page did not keep the model between runs");
  assert.deepEqual(againRun.records.map((r) => r.loss), loraDir.losses,
    "a run from the kept model differs from the first");
  loraDir.againStartSeconds = againRun.info.start_seconds;
  const lora = ggufPath ? await loraRun("#model-file", ggufPath, 30) : null;
  await page.screenshot({ path: join(results, "lora-dpo.png"), fullPage: true });
  if (lora) {
    // A run that cannot fit in the tab is refused before it starts, in the page's own words.
    await page.fill("#batch-size", "64");
    await page.fill("#max-length", "1024");
    await page.selectOption("#frozen", "f32");
    await page.setChecked("#recompute", false);
    const runs = await page.evaluate(() => window.fairtuneRuns.length);
    await page.click("#train");
    await page.waitForFunction(() => document.getElementById("status").dataset.state === "error",
      null, { timeout: 120_000 });
    const refusal = await page.evaluate(() => document.getElementById("status").textContent);
    console.log(`refused: ${refusal}`);
    assert.match(refusal, /needs more memory than it may use .* free in this tab/, refusal);
    assert.match(refusal, /Frozen weights: f16 or 8-bit blocks, Recompute layers in backward, fewer Pairs per step \(now 64\), fewer Max tokens \(now 1024\)$/, refusal);
    assert.doesNotMatch(refusal, /--/, `the refusal names command-line flags: ${refusal}`);
    assert.equal(await page.evaluate(() => window.fairtuneRuns.length), runs, "a refused run started");
    assert.equal(await page.evaluate(() => document.getElementById("train").disabled), false);
    lora.refusal = refusal;
  }

  // WebGPU when the visitor forces it: the classifier with the penalty (the WGSL kernels) and
  // the DPO preset (a causal LM, its in-memory reference model, the log-prob score) — a few
  // steps each, finite and equal to the desktop's.
  const gpuDevice = await chooseBackend("webgpu");
  assert.equal(gpuDevice.backend, "wgpu/WebGPU", `not on WebGPU: ${JSON.stringify(gpuDevice)}`);
  assert.equal(gpuDevice.threads, 1, "the WebGPU build is the one-thread build");
  await banner();
  const gpuRun = await trainRun(LAMBDA_FAIR, "classify", GPU_STEPS);
  assert.equal(gpuRun.backend, "wgpu/WebGPU");
  const gpu = { steps: GPU_STEPS, parityMaxDiff: checkParity(gpuRun),
    tokensPerSecond: gpuRun.tokensPerSecond };
  const dpoRun = await trainRun(LAMBDA_DPO, "dpo", 3);
  assert.equal(dpoRun.records.length, 3);
  for (const r of dpoRun.records) {
    for (const key of ["loss", "task_loss", "fairness_F", "rewards/margins"]) {
      assert.ok(Number.isFinite(r[key]), `dpo step ${r.step}: ${key} = ${r[key]}`);
    }
  }
  const dpoEval = dpoRun.evals[dpoRun.evals.length - 1];
  assert.ok(Number.isFinite(dpoEval["rewards/accuracies"]) && Number.isFinite(dpoEval.group_gap),
    `dpo: no held-out numbers: ${JSON.stringify(dpoEval)}`);
  const dpo = { lambda: dpoRun.options.lambda, steps: 3, parityMaxDiff: checkParity(dpoRun),
    seconds: dpoRun.seconds, tokensPerSecond: dpoRun.tokensPerSecond };
  const summary = { device, gpuDevice, steps, runs: [plain, fair], loraDir, lora, gpu, dpo,
    fallback };
  writeFileSync(join(results, "summary.json"), JSON.stringify(summary, null, 2));
  console.log(JSON.stringify(summary, null, 2));

  assert.ok(plain.gap > 0.1, `λ=0 learned no group gap to remove (${plain.gap})`);
  assert.ok(fair.gap < 0.5 * plain.gap,
    `λ=${fair.lambda} left the gap at ${fair.gap} (λ=0: ${plain.gap})`);
  assert.deepEqual(problems, [], "the page reported problems");
  console.log("browser test passed");
} finally {
  await browser?.close();
  for (const server of servers) server.kill();
}
