//! What users run on top of the library: `fairtune demo` (the main job), the browser demo's
//! presets (`playground`, which `fairtune playground` also runs on the desktop) and the page's
//! wasm entry points (`web`, wasm32 only). The top of the house: nothing below imports from here.

pub mod decisions;
#[cfg(not(target_arch = "wasm32"))]
pub mod demo;
pub mod playground;
#[cfg(target_arch = "wasm32")]
pub mod web;
