// The real-browser test: headless Debian Chromium (WebGPU through SwiftShader, enabled by
// --enable-unsafe-webgpu) loads the page from a local server, then trains the classifier preset
// through the page's own controls at λ = 0 and at λ > 0. It asserts that the adapter is WebGPU,
// every logged loss is finite, the task loss falls, the held-out group gap at λ > 0 is much
// smaller than at λ = 0, and nothing on the page failed (no uncaught error, no console error, no
// WebGPU validation message). Saves a screenshot of the charts to web/test-results/page.png.
//
// Environment: CHROMIUM (default /usr/bin/chromium), FAIRTUNE_WEB_STEPS (default 40).
import { chromium } from "playwright-core";
import { spawn, execFileSync } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import assert from "node:assert/strict";

const web = join(dirname(fileURLToPath(import.meta.url)), "..");
const results = join(web, "test-results");
const steps = Number(process.env.FAIRTUNE_WEB_STEPS || 40);
// Slider positions of the page's λ scale [0, 0.3, 1, 3, 10, 30, 100, 300, 1000].
const LAMBDA_ZERO = 0, LAMBDA_FAIR = 6, LAMBDA_DPO = 2;

const port = 8000 + Math.floor(Math.random() * 1000);
const server = spawn("python3", ["-m", "http.server", "--bind", "127.0.0.1", String(port)], {
  cwd: web,
  stdio: "ignore",
});
let problems = [];
let browser;
let page;

// A fresh headless Chromium on the page; `webgpu: false` leaves out the flag that gives it a
// (SwiftShader) WebGPU adapter, so navigator.gpu offers none.
async function openPage(webgpu) {
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
  await page.goto(`http://127.0.0.1:${port}/`);
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
  await page.waitForFunction((n) => window.fairtuneRuns.length > n, before);
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

// The desktop CPU run of the same preset (`fairtune playground`): its per-step records.
function desktopRun(options) {
  const binary = process.env.FAIRTUNE_BIN || join(web, "..", "target", "release", "fairtune");
  const out = execFileSync(binary, ["playground", "--preset", options.preset, "--backend", "cpu",
    "--lambda", String(options.lambda), "--beta", String(options.beta),
    "--steps", String(options.steps), "--seed", String(options.seed)],
  { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] });
  return out.trim().split("\n").map((line) => JSON.parse(line)).filter((r) => r.step !== undefined);
}

// The browser's first steps against the desktop CPU's: same data, seed and initial weights, so
// the losses may differ only by float rounding (different kernels, summation orders).
const PARITY_STEPS = 10, PARITY_TOLERANCE = 1e-3;
function checkParity(run) {
  const desktop = desktopRun(run.options);
  const worst = [];
  for (let i = 0; i < Math.min(PARITY_STEPS, run.records.length); i++) {
    for (const key of ["loss", "task_loss", "fairness_F"]) {
      const a = run.records[i][key], b = desktop[i][key];
      const diff = Math.abs(a - b);
      worst.push({ step: i + 1, key, browser: a, desktop: b, diff });
      assert.ok(diff <= PARITY_TOLERANCE * Math.max(1, Math.abs(b)),
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

try {
  await new Promise((r) => setTimeout(r, 500));
  // Without WebGPU the page says so and trains on burn's CPU backend in WebAssembly — the
  // desktop CPU's numbers exactly.
  const fallbackDevice = await openPage(false);
  assert.equal(fallbackDevice.backend, "cpu", `expected the CPU fallback: ${JSON.stringify(fallbackDevice)}`);
  assert.ok(fallbackDevice.fallback_reason, "the fallback gave no reason");
  const shown = await page.evaluate(() => document.getElementById("device").textContent);
  assert.match(shown, /no usable WebGPU/, `the page did not say it has no WebGPU: ${shown}`);
  const fallbackRun = await trainRun(LAMBDA_FAIR, "classify", 5);
  const fallback = { steps: 5, parityMaxDiff: checkParity(fallbackRun),
    tokensPerSecond: fallbackRun.tokensPerSecond };
  assert.deepEqual(problems.filter((p) => !/WebGPU/.test(p)), [], "the fallback page reported problems");
  await browser.close();

  const device = await openPage(true);
  assert.equal(device.backend, "wgpu/WebGPU", `not on WebGPU: ${JSON.stringify(device)}`);

  const plainRun = await trainRun(LAMBDA_ZERO);
  const plain = checkRun(plainRun);
  plain.parityMaxDiff = checkParity(plainRun);
  const fairRun = await trainRun(LAMBDA_FAIR);
  const fair = checkRun(fairRun);
  fair.parityMaxDiff = checkParity(fairRun);
  mkdirSync(results, { recursive: true });
  await page.screenshot({ path: join(results, "page.png"), fullPage: true });

  // The DPO preset (a causal LM, its in-memory reference model, the log-prob score): a few
  // steps and its evaluation, finite and equal to the desktop's.
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
  const summary = { device, steps, runs: [plain, fair], dpo, fallback };
  writeFileSync(join(results, "summary.json"), JSON.stringify(summary, null, 2));
  console.log(JSON.stringify(summary, null, 2));

  assert.ok(plain.gap > 0.1, `λ=0 learned no group gap to remove (${plain.gap})`);
  assert.ok(fair.gap < 0.5 * plain.gap,
    `λ=${fair.lambda} left the gap at ${fair.gap} (λ=0: ${plain.gap})`);
  assert.deepEqual(problems, [], "the page reported problems");
  console.log("browser test passed");
} finally {
  await browser?.close();
  server.kill();
}
