//! The browser build's entry points (wasm-bindgen; compiled only for wasm32). The page calls
//! [`init`] with the backend it chose — wgpu starts only asynchronously in a browser; the page
//! may call it again between runs to switch — then [`start`] with a preset
//! and its settings, then [`step`] and [`evaluate`] as often as it likes. Training is the
//! desktop's: the same [`crate::train::Session`], tasks, objectives and WGSL kernels; every device
//! read is awaited, so the page stays responsive while the GPU works.
//!
//! One session at a time lives here. A call made while another is still running (the page
//! pressed Train twice) gets an error instead of a second borrow of the same model.

use std::cell::RefCell;

use wasm_bindgen::prelude::*;

use crate::apps::playground::{Options, Playground};
use crate::device::{Selected, init_webgpu};
use crate::error::Error;

thread_local! {
    static DEVICE: RefCell<Option<Selected>> = const { RefCell::new(None) };
    /// The WebGPU device once started (or why it could not be): started once, kept for a switch
    /// back.
    static WEBGPU: RefCell<Option<Result<Selected, String>>> = const { RefCell::new(None) };
    /// The session; empty while a step or evaluation holds it (or before `start`).
    static SESSION: RefCell<Option<Playground>> = const { RefCell::new(None) };
    /// Whether `start` has made a session (to tell "busy" from "not started").
    static STARTED: RefCell<bool> = const { RefCell::new(false) };
}

/// The threaded build's pool (`initThreadPool(n)` in JavaScript, before any training): burn's
/// CPU backend then works on n threads, each a Web Worker sharing this module's memory.
#[cfg(feature = "web-threads")]
pub use wasm_bindgen_rayon::init_thread_pool;

fn js_error(error: Error) -> JsError {
    JsError::new(&error.to_string())
}

fn device() -> Result<Selected, JsError> {
    DEVICE
        .with(|device| device.borrow().clone())
        .ok_or_else(|| JsError::new("call init() before training"))
}

/// Start the device the page chose: `"webgpu"` (the browser's WebGPU adapter, or burn's CPU
/// backend with the reason when there is none) or `"cpu"` (burn's CPU backend in WebAssembly).
/// Which is faster is the page's call: it can see the adapter's `GPUAdapterInfo`, which tells a
/// software adapter (SwiftShader) from a GPU. Later runs use this device. Returns a JSON object:
/// `{"backend", "adapter", "fallback_reason"}`.
#[wasm_bindgen]
pub async fn init(backend: Option<String>) -> Result<String, JsError> {
    console_error_panic_hook();
    let (selected, fallback) = match backend.as_deref().unwrap_or("webgpu") {
        "cpu" => (Selected::cpu(), None),
        "webgpu" => {
            if WEBGPU.with(|webgpu| webgpu.borrow().is_none()) {
                let started = init_webgpu().await;
                WEBGPU.with(|webgpu| *webgpu.borrow_mut() = Some(started));
            }
            match WEBGPU
                .with(|webgpu| webgpu.borrow().clone())
                .expect("started above")
            {
                Ok(selected) => (selected, None),
                Err(why) => (Selected::cpu(), Some(why)),
            }
        }
        other => {
            return Err(JsError::new(&format!(
                "unknown backend {other:?}: use \"webgpu\" or \"cpu\""
            )));
        }
    };
    let report = serde_json::json!({
        "backend": selected.backend_name(),
        "adapter": selected.describe(),
        "fallback_reason": fallback,
    });
    DEVICE.with(|device| *device.borrow_mut() = Some(selected));
    Ok(report.to_string())
}

/// A panic (a bug) reaches the console with its message and the JS stack, and the global
/// `fairtunePanic(message)` when there is one (web/engine.js defines it in the engine's worker):
/// after a panic the module is dead (the build aborts on panic), so the page must stop waiting
/// for the call that panicked. (A panic on one of the threaded build's pool threads reaches only
/// that worker's console: the step never returns, and the page must be reloaded.)
fn console_error_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let stack =
            js_sys::Reflect::get(&js_sys::Error::new(""), &"stack".into()).unwrap_or_default();
        let message = format!("fairtune panicked: {info}");
        web_sys::console::error_2(&message.clone().into(), &stack);
        let global = js_sys::global();
        if let Ok(callback) = js_sys::Reflect::get(&global, &"fairtunePanic".into())
            && let Some(callback) = callback.dyn_ref::<js_sys::Function>()
        {
            let _ = callback.call1(&global, &message.into());
        }
    }));
}

/// A new session from JSON options (see [`Options`]: `preset`, `lambda`, `beta`, `steps`,
/// `seed`, `lr`, `batch_size`, `fairness_batch_size`), replacing any earlier one. Returns its description as JSON.
#[wasm_bindgen]
pub fn start(options: &str) -> Result<String, JsError> {
    let selected = device()?;
    let options = Options::from_json(options).map_err(js_error)?;
    // The previous session goes first: a real model and its successor need not fit together.
    if SESSION.with(|slot| slot.borrow_mut().take()).is_none()
        && STARTED.with(|started| *started.borrow())
    {
        return Err(JsError::new(
            "the session is busy: wait for the running step to finish",
        ));
    }
    STARTED.with(|started| *started.borrow_mut() = false);
    let playground = Playground::start(&options, &selected).map_err(js_error)?;
    let description = playground.describe().to_string();
    SESSION.with(|slot| *slot.borrow_mut() = Some(playground));
    STARTED.with(|started| *started.borrow_mut() = true);
    Ok(description)
}

/// Take the session out for one async call (and put it back after).
fn take() -> Result<Playground, JsError> {
    SESSION
        .with(|slot| slot.borrow_mut().take())
        .ok_or_else(|| {
            if STARTED.with(|started| *started.borrow()) {
                JsError::new("the session is busy: wait for the running step to finish")
            } else {
                JsError::new("call start() before step()")
            }
        })
}

fn put_back(playground: Playground) {
    SESSION.with(|slot| *slot.borrow_mut() = Some(playground));
}

/// One training step. Returns its record as JSON, with the keys of the desktop's
/// `metrics.jsonl` (`step`, `loss`, `task_loss`, `fairness_F`, `group_means`, `tokens_per_s`…).
#[wasm_bindgen]
pub async fn step() -> Result<String, JsError> {
    let mut playground = take()?;
    let lambda = playground.config().fairness_lambda;
    let result = playground.step().await;
    put_back(playground);
    let report = result.map_err(js_error)?;
    Ok(serde_json::Value::Object(report.record(lambda)).to_string())
}

/// Held-out evaluation: task metrics and the held-out group gap, as JSON.
#[wasm_bindgen]
pub async fn evaluate() -> Result<String, JsError> {
    let selected = device()?;
    let mut playground = take()?;
    let result = playground.evaluate(&selected).await;
    put_back(playground);
    Ok(result.map_err(js_error)?.to_string())
}

/// Make `text` readable at `path` for the data readers (the browser has no file system).
#[wasm_bindgen]
pub fn register_file(path: &str, text: &str) {
    crate::fsutil::register(path, text);
}

/// Make a binary file (the visitor's GGUF model) readable at `path`; a path ending in `.gguf`
/// is then a `model` the `lora-dpo` preset can start from.
#[wasm_bindgen]
pub fn register_bytes(path: &str, bytes: Vec<u8>) {
    crate::fsutil::register(path, bytes);
}

/// Forget every file registered under `dir` and the model kept from an earlier run: the
/// visitor picked another model, and the old one's bytes must not stay beside the new one's.
#[wasm_bindgen]
pub fn forget_files(dir: &str) {
    crate::fsutil::unregister(std::path::Path::new(dir));
    crate::model::keep_loaded(false);
}

/// The base model's and the tuned model's greedy answers to the first `limit` held-out prompts,
/// at most `max_new_tokens` tokens each, as JSON `[{"prompt", "group", "before", "after", …}]`.
#[wasm_bindgen]
pub async fn answers(limit: usize, max_new_tokens: usize) -> Result<String, JsError> {
    let selected = device()?;
    let mut playground = take()?;
    let result = playground.answers(&selected, limit, max_new_tokens).await;
    put_back(playground);
    Ok(result.map_err(js_error)?.to_string())
}

/// The trained LoRA adapters in PEFT's layout, as the desktop writes them to `OUT/adapter`:
/// an array of `[file name, bytes]` (`adapter_model.safetensors`, `adapter_config.json`).
#[wasm_bindgen]
pub async fn adapter_files() -> Result<js_sys::Array, JsError> {
    let playground = take()?;
    let files = playground.adapter_files().await;
    put_back(playground);
    Ok(files
        .map_err(js_error)?
        .into_iter()
        .map(|(name, bytes)| {
            let pair = js_sys::Array::new();
            pair.push(&name.into());
            pair.push(&js_sys::Uint8Array::from(bytes.as_slice()).into());
            pair
        })
        .collect())
}
