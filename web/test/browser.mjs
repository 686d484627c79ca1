// The real-browser test: headless Debian Chromium (WebGPU through SwiftShader, enabled by
// --enable-unsafe-webgpu) loads the page from a local server; the page must start fairtune on a
// WebGPU adapter without any uncaught error. Saves a screenshot to web/test-results/.
import { chromium } from "playwright-core";
import { spawn } from "node:child_process";
import { mkdirSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import assert from "node:assert/strict";

const web = join(dirname(fileURLToPath(import.meta.url)), "..");
const port = 8000 + Math.floor(Math.random() * 1000);
const server = spawn("python3", ["-m", "http.server", "--bind", "127.0.0.1", String(port)], {
  cwd: web,
  stdio: "ignore",
});
const errors = [];
let browser;
try {
  await new Promise((r) => setTimeout(r, 500));
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: [
      "--enable-unsafe-webgpu", "--no-sandbox", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
      `--user-data-dir=${mkdtempSync(join(tmpdir(), "fairtune-chromium-"))}`,
    ],
  });
  const page = await browser.newPage();
  page.on("pageerror", (e) => errors.push(`pageerror: ${e.message}`));
  page.on("console", (m) => m.type() === "error" && errors.push(`console: ${m.text()}`));
  await page.goto(`http://127.0.0.1:${port}/`);
  await page.waitForFunction(() => document.getElementById("device").dataset.state !== "starting",
    null, { timeout: 120_000 });
  const device = await page.evaluate(() => window.fairtuneDevice);
  mkdirSync(join(web, "test-results"), { recursive: true });
  await page.screenshot({ path: join(web, "test-results", "page.png"), fullPage: true });
  console.log("device:", JSON.stringify(device));
  assert.ok(device, "the page reported no device");
  assert.equal(device.backend, "wgpu/WebGPU", `not on WebGPU: ${JSON.stringify(device)}`);
  assert.deepEqual(errors, [], "the page logged errors");
  console.log("browser test passed");
} finally {
  await browser?.close();
  server.kill();
}
