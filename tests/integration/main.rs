//! Integration tests, one binary (each test binary links burn; one keeps CI's build short).
//!
//! The wgpu tests run on whatever adapter wgpu finds — in CI, Mesa's software Vulkan
//! (llvmpipe). Without an adapter they fail; set FAIRTUNE_SKIP_WGPU=1 to skip them on purpose.

mod benchmark;
mod cli;
mod common;
mod data;
mod demo;
mod dpo;
mod export;
mod fairness;
mod families;
mod generate;
mod gguf;
mod kernel;
mod lora;
mod metrics;
mod model;
mod ner;
mod parity;
mod playground;
mod precision;
mod train;
mod trl_kto;
mod trl_losses;
mod trl_parity;
