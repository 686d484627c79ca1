// The page's real-model throughput on each engine: headless Chromium opens the page, picks a
// GGUF, and trains LoRA DPO (the built-in pairs, 2 pairs a step) on the CPU backend served
// cross-origin isolated (the threaded build, a thread per core) and not (one thread), and with
// --webgpu also on WebGPU; it prints one JSON line per run with the training steps' own tokens/s
// (the evaluations and the answers are left out, as the desktop's tokens_per_s leaves them out).
// Build the page first (bash web/build.sh). Not part of the tests.
//
// Usage: node web/bench.mjs MODEL.gguf [STEPS] [--webgpu]   (CHROMIUM: default /usr/bin/chromium)
import { chromium } from "playwright-core";
import { spawn } from "node:child_process";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";

const web = dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const [gguf, steps = "3"] = args.filter((a) => !a.startsWith("--"));
const port = 9000 + Math.floor(Math.random() * 500);
const servers = [[port], [port + 1, "--no-isolation"]].map((a) =>
  spawn("python3", ["serve.py", ...a.map(String)], { cwd: web, stdio: "ignore" }));
const runs = [["cpu", port], ["cpu", port + 1], ...(args.includes("--webgpu") ? [["webgpu", port]] : [])];
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--enable-unsafe-webgpu", "--no-sandbox", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage();
  await new Promise((r) => setTimeout(r, 500));
  for (const [backend, at] of runs) {
    await page.goto(`http://127.0.0.1:${at}/`);
    await page.waitForFunction(() => document.getElementById("device").dataset.state === "ready");
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
    const threads = await page.evaluate(() => window.fairtuneDevice.threads);
    console.log(JSON.stringify({ backend: run.backend, threads, steps: run.records.length, tokens,
      stepSeconds: ms / 1000, tokensPerSecond: tokens / (ms / 1000), error: run.error,
      loss: run.records.map((r) => r.loss) }));
  }
} finally {
  await browser.close();
  for (const server of servers) server.kill();
}
