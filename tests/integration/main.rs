//! Integration tests, one binary (each test binary links burn; one keeps CI's build short).
//!
//! The wgpu tests run on whatever adapter wgpu finds — in CI, Mesa's software Vulkan
//! (llvmpipe). Without an adapter they fail; set FAIRTUNE_SKIP_WGPU=1 to skip them on purpose.

mod cli;
mod common;
mod data;
mod dpo;
mod fairness;
mod kernel;
mod model;
mod parity;
mod train;
