//! The browser build's entry points (wasm-bindgen; compiled only for wasm32). The page calls
//! [`init`] once — wgpu starts only asynchronously in a browser — then hands its data over with
//! [`register_file`], so the same readers and training code run as on the desktop.
//!
//! Work in progress (issue #5): the training session and its async readbacks come next.

use std::cell::RefCell;

use wasm_bindgen::prelude::*;

use crate::device::{Selected, init_browser};

thread_local! {
    static DEVICE: RefCell<Option<Selected>> = const { RefCell::new(None) };
}

/// Start the device: the browser's WebGPU adapter, else burn's CPU backend. Returns a JSON
/// object: `{"backend", "adapter", "fallback_reason"}`.
#[wasm_bindgen]
pub async fn init() -> String {
    let (selected, fallback) = init_browser().await;
    let report = serde_json::json!({
        "backend": selected.backend_name(),
        "adapter": selected.describe(),
        "fallback_reason": fallback,
    });
    DEVICE.with(|device| *device.borrow_mut() = Some(selected));
    report.to_string()
}

/// Make `text` readable at `path` for the data readers (the browser has no file system).
#[wasm_bindgen]
pub fn register_file(path: &str, text: &str) {
    crate::data::files::register(path, text);
}
