//! fairtune: fine-tune transformer language models with DPO and a fairness regularizer, on any
//! GPU through wgpu (Vulkan, Metal, DX12, WebGPU) or on the CPU.
//!
//! Data flows one way: [`data`] (JSONL → token batches) → [`model`] (scores, log-probs) →
//! [`objective`] (task loss + λ·F, with F's group reduction in [`kernel`]) → [`train`]
//! (backward, optimizer, checkpoints, reports). [`device`] picks the backend; [`throughput`] measures (`fairtune bench`).

#[cfg(not(target_arch = "wasm32"))]
pub mod benchmark;
pub mod compare;
pub mod data;
#[cfg(not(target_arch = "wasm32"))]
pub mod demo;
pub mod device;
pub mod error;
pub mod eval;
#[cfg(not(target_arch = "wasm32"))]
pub mod fetch;
pub mod fsutil;
pub mod gguf;
pub mod kernel;
pub mod metrics;
pub mod model;
pub mod objective;
pub mod playground;
pub mod sweep;
pub mod throughput;
pub mod train;
#[cfg(target_arch = "wasm32")]
pub mod web;

pub use error::{Error, Result};
