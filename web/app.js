// The page: start fairtune's wasm module on WebGPU, train a preset step by step (every device
// read is awaited, so the page stays live), draw the charts, and keep a table of finished runs.
// Everything a run produced is also on `window.fairtuneRuns` (the browser test reads it).
import init, * as fairtune from "./pkg/fairtune.js";

const $ = (id) => document.getElementById(id);
const LAMBDAS = [0, 0.3, 1, 3, 10, 30, 100, 300, 1000];
const BETAS = [0.05, 0.1, 0.2, 0.5, 1, 2];
const EVAL_EVERY = 10;
const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"];

window.fairtuneRuns = [];
let stopRequested = false;
// Called by the wasm module when it panics (a bug): it is unusable afterwards.
window.fairtunePanic = (message) => {
  stopRequested = true;
  const run = window.fairtuneRuns[window.fairtuneRuns.length - 1];
  if (run) run.error = message;
  setStatus("error", `${message} — reload the page to train again.`);
  $("train").disabled = true;
  $("stop").disabled = true;
};

function options() {
  return {
    preset: $("preset").value,
    lambda: LAMBDAS[Number($("lambda").value)],
    beta: BETAS[Number($("beta").value)],
    steps: Number($("steps").value),
    seed: Number($("seed").value),
  };
}

function showControls() {
  $("lambda-value").textContent = LAMBDAS[Number($("lambda").value)];
  $("beta-value").textContent = BETAS[Number($("beta").value)];
  const dpo = $("preset").value === "dpo";
  $("beta-label").style.opacity = dpo ? 1 : 0.4;
  $("beta").disabled = !dpo;
  $("groups-caption").textContent = dpo
    ? "Mean log P(\" yes\") per group (fairness batch)"
    : "Mean P(positive) per group (fairness batch)";
  $("eval-caption").textContent = dpo
    ? "Held-out reward accuracy and group gap"
    : "Held-out accuracy and group gap";
}

function setStatus(state, text) {
  const status = $("status");
  status.dataset.state = state;
  status.className = state === "error" ? "error" : "";
  status.textContent = text;
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
  for (const v of [lo + pad, (lo + hi) / 2, hi - pad]) {
    ctx.fillText(v.toPrecision(3), 2, y(v) + 4);
  }
  ctx.fillText("0", left - 3, height - 5);
  ctx.fillText(`step ${xMax}`, width - right - 48, height - 5);
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
  // The previous finished run of the same preset, dashed, to compare λs at a glance.
  const runs = window.fairtuneRuns;
  const previous = runs.slice(0, runs.indexOf(run)).reverse()
    .find((r) => r.options.preset === run.options.preset && !r.error && r.evals.length > 0);
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
  for (const cell of [run.options.preset, run.options.lambda,
    run.options.preset === "dpo" ? run.options.beta : "–", run.records.length,
    fmt(last[run.accuracyKey]), fmt(last.group_gap), means, run.tokensPerSecond.toFixed(0)]) {
    const td = document.createElement("td");
    td.textContent = cell;
    row.append(td);
  }
  $("runs").tBodies[0].append(row);
}

async function train(event) {
  event.preventDefault();
  const opts = options();
  let info;
  try {
    info = JSON.parse(fairtune.start(JSON.stringify(opts)));
  } catch (error) {
    setStatus("error", `Could not start: ${error?.message ?? error}`);
    return;
  }
  const run = {
    options: opts, info, groups: info.groups, records: [], evals: [], tokensPerSecond: 0,
    accuracyKey: opts.preset === "dpo" ? "rewards/accuracies" : "accuracy",
  };
  window.fairtuneRuns.push(run);
  stopRequested = false;
  $("train").disabled = true;
  $("stop").disabled = false;
  setStatus("training", `Training ${info.model} on ${info.train_rows} rows, λ = ${opts.lambda}…`);
  const started = performance.now();
  let tokens = 0;
  try {
    for (let s = 1; s <= opts.steps && !stopRequested; s++) {
      const stepStarted = performance.now();
      const record = JSON.parse(await fairtune.step());
      record.browser_ms = performance.now() - stepStarted;
      run.records.push(record);
      tokens += record.tokens;
      if (s % EVAL_EVERY === 0 || s === opts.steps) {
        const evalStarted = performance.now();
        const evaluation = JSON.parse(await fairtune.evaluate());
        evaluation.browser_ms = performance.now() - evalStarted;
        run.evals.push(evaluation);
      }
      run.tokensPerSecond = tokens / ((performance.now() - started) / 1000);
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
    const last = run.evals[run.evals.length - 1];
    setStatus("done", `Done: ${run.records.length} steps in ${run.seconds.toFixed(1)} s ` +
      `(${run.tokensPerSecond.toFixed(0)} tokens/s); held-out ${run.accuracyKey} ` +
      `${last[run.accuracyKey].toFixed(3)}, group gap ${last.group_gap.toFixed(3)}.`);
  } catch (error) {
    run.error = String(error?.message ?? error);
    setStatus("error", `Training stopped: ${run.error}`);
  } finally {
    $("train").disabled = false;
    $("stop").disabled = true;
  }
}

async function main() {
  for (const id of ["lambda", "beta", "preset"]) $(id).addEventListener("input", showControls);
  showControls();
  await init();
  const report = JSON.parse(await fairtune.init());
  window.fairtuneDevice = report;
  const device = $("device");
  if (report.fallback_reason) {
    device.className = "fallback";
    device.textContent = `This browser has no usable WebGPU (${report.fallback_reason}); ` +
      `training runs on the CPU backend in WebAssembly: ${report.adapter}`;
  } else {
    // wgpu names few WebGPU adapters; the browser's own GPUAdapterInfo says more.
    const adapter = await navigator.gpu?.requestAdapter();
    const info = adapter?.info ?? {};
    const names = [info.vendor, info.architecture, info.device, info.description].filter(Boolean);
    report.adapter_info = info.vendor === undefined ? null : {
      vendor: info.vendor, architecture: info.architecture, device: info.device,
      description: info.description,
    };
    device.textContent = `Training on WebGPU: ${names.join(" / ") || report.adapter}`;
  }
  device.dataset.state = "ready";
  $("controls").addEventListener("submit", train);
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
