//! fairtune: fine-tune transformer language models with DPO and a fairness regularizer, on any
//! GPU through wgpu (Vulkan, Metal, DX12, WebGPU) or on the CPU.
//!
//! The modules form one dependency order, each importing only from those before it:
//!
//! 1. the floor: [`error`], [`fsutil`] (atomic writes, scratch dirs, texts registered in memory),
//!    [`device`] (which backend), [`gguf`] (llama.cpp's file format), [`fetch`] (the download
//!    cache), [`metrics`] (Fairlearn's and seqeval's numbers over host vectors);
//! 2. [`tokenizer`]: text → ids, the model's special tokens and chat template;
//! 3. [`data`]: JSONL → records → encoded sequences → device batches;
//! 4. [`model`]: where a `--model` comes from, the architectures, LoRA, log-probs, file formats;
//! 5. [`group_stats`] (the WGSL op) and [`objective`] (DPO losses, the fairness term F);
//! 6. [`train`]: the session that turns a task's batches into `task + λ·F`, steps and checkpoints;
//! 7. [`eval`] (metrics of a finished run, bias benchmarks, compare), [`sweep`] (λ sweeps and the
//!    Pareto plot), [`throughput`] (`fairtune bench`), [`generate`] (text from a decoder);
//! 8. [`apps`]: the demo, the browser playground and its wasm entry points — and then the CLI
//!    (`src/main.rs`), which only parses flags.

pub mod apps;
pub mod data;
pub mod device;
pub mod error;
pub mod eval;
#[cfg(not(target_arch = "wasm32"))]
pub mod fetch;
pub mod fsutil;
pub mod generate;
pub mod gguf;
pub mod group_stats;
pub mod metrics;
pub mod model;
pub mod objective;
#[cfg(not(target_arch = "wasm32"))]
pub mod sweep;
pub mod throughput;
pub mod tokenizer;
pub mod train;

pub use error::{Error, Result};

/// Tests that seed a device's random generator and read what it draws take turns: the CPU
/// backend's generator is one per process, and the test harness runs tests on many threads.
#[cfg(test)]
pub(crate) fn seeded_rng_turn() -> std::sync::MutexGuard<'static, ()> {
    static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());
    RNG.lock().unwrap_or_else(|e| e.into_inner())
}
