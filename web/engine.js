// The page's training engine: fairtune's wasm module in a dedicated worker, so the page stays
// live while a model loads or a step runs, and so burn's CPU backend may use threads (a thread
// pool blocks the thread that waits for it, which a page's main thread may not do). In a
// cross-origin isolated page (web/serve.sh sends the headers) the threaded build
// (web/pkg-threads: shared memory, a rayon pool of one worker per core) runs; elsewhere the
// single-threaded one (web/pkg).
//
// Protocol: the page posts {id, name, args}; the worker answers {id, value} or {id, error}, one
// call after the other in the order they came. A panic (a bug) is posted as {panic}.
let module = null;

// Load a build: `threads` > 0 asks for the threaded one with that many threads (at most one per
// core), 0 for the one with WebGPU. Returns {threads, why}: the threads the CPU backend has, and
// why only one when it is so.
async function load(threads) {
  const isolated = self.crossOriginIsolated && typeof SharedArrayBuffer === "function";
  // Which builds web/build.sh made (the threaded one needs the toolchain's rust-src).
  const builds = await fetch(new URL("./pkg/builds.json", import.meta.url))
    .then((response) => response.json())
    .catch(() => ({ threads: false }));
  let why = null;
  if (threads > 0 && !builds.threads) {
    why = "this copy of the page was built without its threaded build (web/build.sh says why)";
  } else if (threads > 0 && isolated) {
    try {
      module = await import("./pkg-threads/fairtune.js");
    } catch (error) {
      why = `the threaded build did not load (${error?.message ?? error})`;
    }
  } else if (threads > 0) {
    why = "this page is not cross-origin isolated, so it may not share memory between threads";
  } else {
    why = "the build with WebGPU runs on one thread";
  }
  module ??= await import("./pkg/fairtune.js");
  await module.default();
  // The module calls this when it panics: it is unusable afterwards.
  self.fairtunePanic = (message) => postMessage({ panic: message });
  if (why) return { threads: 1, why };
  const count = Math.max(1, Math.min(threads, navigator.hardwareConcurrency || 1));
  if (count === 1) return { threads: 1, why: "the browser reports one core" };
  await module.initThreadPool(count);
  return { threads: count, why: null };
}

async function call({ name, args }) {
  if (name === "load") return load(...args);
  if (!module) throw new Error("the engine is not loaded");
  return module[name](...args);
}

let queue = Promise.resolve();
self.onmessage = ({ data }) => {
  queue = queue.then(async () => {
    try {
      postMessage({ id: data.id, value: await call(data) });
    } catch (error) {
      postMessage({ id: data.id, error: String(error?.message ?? error) });
    }
  });
};
