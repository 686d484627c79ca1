// The page's real-model throughput on each backend: headless Chromium opens the page, picks a
// GGUF, and trains LoRA DPO (the built-in pairs, 2 pairs a step) on the CPU backend, then on
// WebGPU; it prints one JSON line per backend with the training steps' own tokens/s (the
// evaluations and the answers are left out, as the desktop's tokens_per_s leaves them out).
// Build the page first (bash web/build.sh). Not part of the tests.
//
// Usage: node web/bench.mjs MODEL.gguf [STEPS]   (CHROMIUM: the browser, default /usr/bin/chromium)
import { chromium } from "playwright-core";
import { spawn } from "node:child_process";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";

const web = dirname(fileURLToPath(import.meta.url));
const [gguf, steps = "1"] = process.argv.slice(2);
const port = 9000 + Math.floor(Math.random() * 500);
const server = spawn("python3", ["-m", "http.server", "--bind", "127.0.0.1", String(port)],
  { cwd: web, stdio: "ignore" });
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--enable-unsafe-webgpu", "--no-sandbox", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage();
  await new Promise((r) => setTimeout(r, 500));
  await page.goto(`http://127.0.0.1:${port}/`);
  await page.waitForFunction(() => document.getElementById("device").dataset.state === "ready");
  for (const backend of ["cpu", "webgpu"]) {
    await page.selectOption("#backend", backend);
    await page.waitForFunction((c) => window.fairtuneDevice?.choice === c &&
      document.getElementById("device").dataset.state === "ready", backend);
    await page.selectOption("#preset", "lora-dpo");
    await page.setInputFiles("#model-file", gguf);
    await page.waitForFunction(() => / is ready/.test(document.getElementById("status").textContent),
      null, { timeout: 120_000 });
    await page.fill("#steps", steps);
    await page.fill("#batch-size", "2");
    const before = await page.evaluate(() => window.fairtuneRuns.length);
    const started = Date.now();
    await page.click("#train");
    const progress = setInterval(async () => {
      const status = await page.evaluate(() => document.getElementById("status").textContent)
        .catch(() => null);
      console.log(`  ${((Date.now() - started) / 1000).toFixed(0)} s: ${status}`);
    }, 60_000);
    // The training steps only (not the evaluations before and after, nor the answers).
    await page.waitForFunction((n) => window.fairtuneRuns.length > n &&
      (window.fairtuneRuns[n].records.length >= window.fairtuneRuns[n].options.steps ||
       document.getElementById("status").dataset.state === "error"), before,
    { timeout: 60 * 60_000, polling: 1000 });
    clearInterval(progress);
    const run = await page.evaluate((n) => window.fairtuneRuns[n], before);
    const tokens = run.records.reduce((sum, r) => sum + r.tokens, 0);
    const ms = run.records.reduce((sum, r) => sum + r.browser_ms, 0);
    console.log(JSON.stringify({ backend: run.backend, steps: run.records.length, tokens,
      stepSeconds: ms / 1000, tokensPerSecond: tokens / (ms / 1000), error: run.error,
      loss: run.records.map((r) => r.loss) }));
    await page.reload();
    await page.waitForFunction(() => document.getElementById("device").dataset.state === "ready");
  }
} finally {
  await browser.close();
  server.kill();
}
