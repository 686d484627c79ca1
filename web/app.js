// The page's logic: start fairtune's wasm module, show the device it trains on.
import init, * as fairtune from "./pkg/fairtune.js";

const device = document.getElementById("device");

async function main() {
  await init();
  const report = JSON.parse(await fairtune.init());
  window.fairtuneDevice = report;
  if (report.fallback_reason) {
    device.className = "fallback";
    device.textContent = `This browser has no usable WebGPU (${report.fallback_reason}); ` +
      `training runs on the CPU backend in WebAssembly: ${report.adapter}`;
  } else {
    device.textContent = `Training on ${report.adapter}`;
  }
  device.dataset.state = "ready";
}

main().catch((error) => {
  device.className = "error";
  device.textContent = `fairtune could not start: ${error}`;
  device.dataset.state = "error";
  throw error;
});
