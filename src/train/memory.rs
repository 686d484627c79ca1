//! What a DPO run will hold in memory, said before it starts and checked against what the
//! machine has (`--memory-limit`), so a run that cannot fit is refused with a way out instead of
//! dying halfway. The plan counts the parameters of the model as this run stores them, the
//! trainable state (f32 gradients and AdamW's two moments), a frozen reference copy, and the
//! activations autodiff keeps for backward at the run's largest step, per token and layer as
//! fairtune's decoder keeps them (fused norms, attention and log-prob nodes; frozen projections
//! keep no input, trained ones keep theirs; checkpointing keeps one hidden state per layer).
//! The per-token counts are this implementation's, checked against measured peaks
//! (`bash bench/trl/memory.sh`, the README's memory table).

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Device, Tensor};

use crate::error::{Error, Result};
use crate::model::LlamaConfig;
use crate::model::fused::LOGIT_BUDGET;
use crate::model::precision::{Storage, bytes_per_element};

use super::TrainConfig;

const MIB: f64 = (1u64 << 20) as f64;
const GIB: f64 = (1u64 << 30) as f64;

/// The process itself: the binary, the tokenizer, the encoded data, thread pools, the
/// allocator's slack (seen: ~300 MiB on SmolLM2 runs, from the peak less everything counted).
const BASELINE: u64 = 300 << 20;

/// Parameter counts of a decoder, as this run holds them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Elements of matrix parameters (embeddings, projections, the output head).
    pub matrices: u64,
    /// Of those, the decoder layers' projections (what `--quantize-base` stores in integers).
    pub projections: u64,
    /// Elements of vector parameters (norms, biases).
    pub vectors: u64,
    /// LoRA factors' elements (`r·(in + out)` per adapted matrix).
    pub adapters: u64,
}

/// Counts the parameters of `config`'s model from their shapes (nothing is allocated), with
/// adapters of `rank` on the matrices at `adapted` paths.
pub fn count(config: &LlamaConfig, adapted: &[String], rank: usize) -> Counts {
    struct Visit<'a> {
        path: Vec<String>,
        adapted: &'a [String],
        rank: u64,
        counts: Counts,
    }
    impl ModuleVisitor for Visit<'_> {
        fn enter_module(&mut self, name: &str, _container: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let shape = param.lazy_shape();
            let elements = shape.num_elements() as u64;
            if D == 2 {
                self.counts.matrices += elements;
                if self.path.iter().any(|part| part == "layers") {
                    self.counts.projections += elements;
                }
                if self.adapted.contains(&self.path.join(".")) {
                    self.counts.adapters += self.rank * (shape[0] + shape[1]) as u64;
                }
            } else {
                self.counts.vectors += elements;
            }
        }
    }
    // Lazy parameters: the shapes exist, the values are never drawn.
    let model = config.init(&Device::flex());
    let mut visit = Visit {
        path: Vec::new(),
        adapted,
        rank: rank as u64,
        counts: Counts::default(),
    };
    model.visit(&mut visit);
    visit.counts
}

/// The parts of a run's memory, in bytes: what stays for the whole run, then what a step adds
/// and what writing a checkpoint adds (never at once: the step's activations are gone by then).
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub parts: Vec<(&'static str, u64)>,
    pub step: Vec<(&'static str, u64)>,
    /// The checkpoint's copy of every parameter and the optimizer state, on the host.
    pub checkpoint: u64,
    /// Tokens through the policy in the largest step.
    pub tokens: usize,
}

impl Plan {
    /// The bytes of one of the fixed `parts` (0 for a name it does not have).
    pub fn part(&self, name: &str) -> u64 {
        self.parts
            .iter()
            .filter(|(part, _)| *part == name)
            .map(|(_, bytes)| bytes)
            .sum()
    }

    pub fn total(&self) -> u64 {
        let fixed: u64 = self.parts.iter().map(|(_, b)| b).sum();
        let step: u64 = self.step.iter().map(|(_, b)| b).sum();
        fixed + step.max(self.checkpoint)
    }

    /// `weights 258 MiB, …; a step adds activations 640 MiB (780 tokens), …; writing a
    /// checkpoint 270 MiB: about 1.1 GiB`.
    pub fn describe(&self) -> String {
        let list = |parts: &[(&str, u64)]| -> String {
            parts
                .iter()
                .filter(|(_, bytes)| *bytes > 0)
                .map(|(name, bytes)| format!("{name} {}", size(*bytes)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "{}; a step adds {} ({} tokens); writing a checkpoint {}: about {}",
            list(&self.parts),
            list(&self.step),
            self.tokens,
            size(self.checkpoint),
            size(self.total())
        )
    }
}

/// `812 MiB` or `6.2 GiB`.
pub fn size(bytes: u64) -> String {
    let bytes = bytes as f64;
    if bytes >= GIB {
        format!("{:.1} GiB", bytes / GIB)
    } else {
        format!("{:.0} MiB", bytes / MIB)
    }
}

/// What the step keeps for backward per token, in f32 elements, summed over the layers.
fn activations_per_token(config: &LlamaConfig, run: &TrainConfig, adapted: &[String]) -> u64 {
    let h = config.hidden_size as u64;
    let i = config.intermediate_size as u64;
    let d = config.head_dim() as u64;
    let q = config.num_attention_heads as u64 * d;
    let kv = config
        .num_key_value_heads
        .unwrap_or(config.num_attention_heads) as u64
        * d;
    let layers = config.num_hidden_layers as u64;
    // Both norms' inputs (Gemma's sandwich norms two more), the attention's q, k, v and
    // output, SwiGLU's gate and up. A trained projection keeps its input too: q/k/v share the
    // normed input, gate/up theirs, o and down their own.
    let sandwich = if config.family.sandwich_norms() {
        2 * h
    } else {
        0
    };
    let mut layer = 2 * h + 2 * q + 2 * kv + 2 * i + sandwich;
    let trained = |names: &[&str]| {
        run.lora.is_none()
            || adapted
                .iter()
                .any(|path| names.iter().any(|name| path.contains(name)))
    };
    if trained(&["q_proj", "k_proj", "v_proj", "qkv_proj"]) {
        layer += h;
    }
    if trained(&["o_proj"]) {
        layer += q;
    }
    if trained(&["gate_proj", "up_proj", "gate_up_proj"]) {
        layer += h;
    }
    if trained(&["down_proj"]) {
        layer += i;
    }
    // The final norm's input and the hidden states the log-prob node keeps.
    let top = 2 * h;
    if run.gradient_checkpointing {
        // One hidden state per layer; the recomputed layer's own, one at a time.
        layers * h + layer + top
    } else {
        layers * layer + top
    }
}

/// What a run keeps of the weights it does not train.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Frozen {
    /// How the frozen matrices are stored.
    pub storage: Storage,
    /// Whether a separate frozen copy is held (full fine-tuning with a reference that is not
    /// cached).
    pub reference_copy: bool,
    /// Whether checkpoints record the frozen weights too (a randomly drawn base; a base read
    /// from `--model`'s file is read again instead, see `checkpoint::Contents`).
    pub recorded: bool,
}

/// The memory plan of a DPO run of `config`'s model: `counts` as [`count`] gave them for the
/// `adapted` matrices (LoRA), the frozen weights as `frozen` says on `device`, `tokens` through
/// the policy in the largest step.
pub fn plan(
    config: &LlamaConfig,
    run: &TrainConfig,
    counts: Counts,
    adapted: &[String],
    frozen: Frozen,
    device: &Device,
    tokens: usize,
) -> Plan {
    let Frozen {
        storage,
        reference_copy: reference,
        recorded,
    } = frozen;
    let f32_bytes = 4u64;
    let half = bytes_per_element(storage.half) as u64;
    // The frozen matrices: the projections quantized (when asked), the rest in `half`.
    let frozen_matrices = match storage.quantize {
        Some(quantize) => {
            (counts.matrices - counts.projections) * half
                + (counts.projections as f64 * quantize.bytes_per_element(device)).ceil() as u64
        }
        None => counts.matrices * half,
    };
    let lora = run.lora.is_some();
    let params = counts.matrices + counts.vectors;
    let (weights, trainable, copy) = if lora {
        (
            frozen_matrices + counts.vectors * f32_bytes + counts.adapters * f32_bytes,
            // Gradients and AdamW's two moments of the adapters.
            counts.adapters * 3 * f32_bytes,
            0,
        )
    } else {
        (
            params * f32_bytes,
            params * 3 * f32_bytes,
            if reference {
                counts.matrices * half + counts.vectors * f32_bytes
            } else {
                0
            },
        )
    };
    let per_token = activations_per_token(config, run, adapted);
    let activations = tokens as u64 * per_token * f32_bytes;
    // The log-prob node's vocabulary block in forward and backward (logits, probabilities and
    // their gradient), at most LOGIT_BUDGET elements each.
    let block = (tokens as u64 * config.vocab_size as u64).min(LOGIT_BUDGET as u64);
    let logits = 3 * block * f32_bytes;
    Plan {
        parts: vec![
            ("weights", weights),
            ("reference copy", copy),
            ("trainable state", trainable),
            ("runtime", BASELINE),
        ],
        step: vec![("activations", activations), ("log-prob blocks", logits)],
        // The record holds the parameters it records as stored, plus the optimizer's moments.
        checkpoint: if lora && !recorded {
            counts.adapters * f32_bytes + trainable * 2 / 3
        } else {
            weights + trainable * 2 / 3
        },
        tokens,
    }
}

/// The memory a run may take (`--memory-limit`): a size, `none`, or `auto` (the memory the OS
/// says is available, where it says; a GPU's own memory is not reported through wgpu).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum MemoryLimit {
    #[default]
    Auto,
    None,
    Bytes(u64),
}

impl std::str::FromStr for MemoryLimit {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Self, String> {
        let text = text.trim();
        match text.to_ascii_lowercase().as_str() {
            "auto" => return Ok(MemoryLimit::Auto),
            "none" => return Ok(MemoryLimit::None),
            _ => {}
        }
        let split = text
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let scale: f64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1.0,
            "k" | "kb" | "kib" => 1024.0,
            "m" | "mb" | "mib" => MIB,
            "g" | "gb" | "gib" => GIB,
            "t" | "tb" | "tib" => GIB * 1024.0,
            other => {
                return Err(format!(
                    "unknown unit {other:?} in {text:?} (use e.g. 8GiB, 512MiB, auto or none)"
                ));
            }
        };
        let value: f64 = number
            .parse()
            .map_err(|_| format!("{text:?} is not a size (use e.g. 8GiB, 512MiB, auto or none)"))?;
        Ok(MemoryLimit::Bytes((value * scale) as u64))
    }
}

/// The memory the OS says is available now (Linux: MemAvailable), if it says; in a browser, what
/// the WebAssembly module may still allocate of its 4 GiB.
pub fn available() -> Option<u64> {
    #[cfg(target_arch = "wasm32")]
    {
        let allocated = wasm::ALLOCATED.load(std::sync::atomic::Ordering::Relaxed) as u64;
        return Some((4u64 << 30).saturating_sub(allocated));
    }
    #[allow(unreachable_code)]
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The browser build's allocator: the system's, counting the bytes it holds. A wasm module's
/// memory only grows, so its size tells what was once used, not what is free for the next run.
#[cfg(target_arch = "wasm32")]
mod wasm {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

    pub static ALLOCATED: AtomicUsize = AtomicUsize::new(0);

    struct Counting;

    // SAFETY: every call is System's own; the counter only follows what succeeded.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            let ptr = unsafe { System.alloc(layout) };
            if !ptr.is_null() {
                ALLOCATED.fetch_add(layout.size(), Relaxed);
            }
            ptr
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            let ptr = unsafe { System.alloc_zeroed(layout) };
            if !ptr.is_null() {
                ALLOCATED.fetch_add(layout.size(), Relaxed);
            }
            ptr
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            unsafe { System.dealloc(ptr, layout) };
            ALLOCATED.fetch_sub(layout.size(), Relaxed);
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            let moved = unsafe { System.realloc(ptr, layout, new_size) };
            if !moved.is_null() {
                ALLOCATED.fetch_add(new_size, Relaxed);
                ALLOCATED.fetch_sub(layout.size(), Relaxed);
            }
            moved
        }
    }

    #[global_allocator]
    static GLOBAL: Counting = Counting;
}

/// This process's peak resident memory so far (Linux: VmHWM), if the OS says.
pub fn peak_resident() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The words a refusal's advice uses for each way out: the controls of whoever asked for the run.
#[derive(Clone, Copy, Debug)]
pub struct Controls {
    lora: &'static str,
    base_dtype: &'static str,
    quantize_base: &'static str,
    /// Both of the above in one phrase, where the user picks one of them in one control.
    frozen_either: Option<&'static str>,
    recompute: &'static str,
    batch_size: &'static str,
    max_length: &'static str,
    /// How to raise the limit, when the user can.
    limit: Option<&'static str>,
    /// What the limit is, when the user did not set it.
    whose: &'static str,
}

impl Controls {
    /// `fairtune train`'s flags.
    pub const TRAIN: Controls = Controls {
        lora: "LoRA (--lora-rank 16)",
        base_dtype: "half-precision frozen weights (--base-dtype auto)",
        quantize_base: "8- or 4-bit frozen projections (--quantize-base q8)",
        frozen_either: None,
        recompute: "--gradient-checkpointing",
        batch_size: "a smaller --batch-size",
        max_length: "a shorter --max-length",
        limit: Some("set --memory-limit"),
        whose: "",
    };
    /// `fairtune playground`'s flags (the same names; it takes the memory the OS has).
    pub const PLAYGROUND: Controls = Controls {
        limit: None,
        whose: " available",
        ..Self::TRAIN
    };
    /// The browser page's controls (web/index.html): a tab's module holds at most 4 GiB.
    pub const PAGE: Controls = Controls {
        lora: "the lora-dpo preset",
        base_dtype: "Frozen weights: f16",
        quantize_base: "Frozen weights: 8-bit blocks",
        frozen_either: Some("Frozen weights: f16 or 8-bit blocks"),
        recompute: "Recompute layers in backward",
        batch_size: "fewer Pairs per step",
        max_length: "fewer Max tokens",
        limit: None,
        whose: " free in this tab, whose WebAssembly module holds at most 4 GiB",
    };
}

/// Refuse `plan` when it exceeds `limit` bytes, naming what would help in `controls`' words.
pub fn check(plan: &Plan, limit: u64, run: &TrainConfig, controls: Controls) -> Result<()> {
    if plan.total() <= limit {
        return Ok(());
    }
    let mut advice = Vec::new();
    if run.lora.is_none() {
        advice.push(controls.lora.to_string());
    }
    let half = run.base_dtype == crate::model::precision::BaseDtype::F32;
    let quantize = run.lora.is_some() && run.quantize_base.is_none();
    match (half, quantize, controls.frozen_either) {
        (true, true, Some(either)) => advice.push(either.to_string()),
        _ => {
            if half {
                advice.push(controls.base_dtype.to_string());
            }
            if quantize {
                advice.push(controls.quantize_base.to_string());
            }
        }
    }
    if !run.gradient_checkpointing {
        advice.push(controls.recompute.to_string());
    }
    if run.batch_size > 1 {
        advice.push(format!("{} (now {})", controls.batch_size, run.batch_size));
    }
    advice.push(format!("{} (now {})", controls.max_length, run.max_length));
    let mut ways = advice.join(", ");
    if let Some(limit) = controls.limit {
        ways = format!("{ways}, or {limit}");
    }
    Err(Error::input(format!(
        "this run needs more memory than it may use ({} of {}{}): {}; try {ways}",
        size(plan.total()),
        size(limit),
        controls.whose,
        plan.describe(),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ArchConfig;
    use crate::model::lora::LoraSettings;
    use crate::model::precision::Quantize;
    use crate::train::Task;

    /// Qwen2.5-0.5B's dimensions with Llama's layers (the memory table's 0.5B model).
    fn config() -> LlamaConfig {
        let text = r#"{"model_type": "llama", "vocab_size": 151936, "hidden_size": 896,
            "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
            "num_key_value_heads": 2, "tie_word_embeddings": true}"#;
        let ArchConfig::Llama(config) = crate::model::parse_config(text).unwrap() else {
            unreachable!()
        };
        config
    }

    /// The frozen matrices cost their elements at the stored width: f32 4 bytes, f16 2, the
    /// projections quantized 1 + 4/32 (q8, and q4 on the CPU backend, which keeps a byte a value)
    /// with the embeddings at f16; a LoRA run on a file records the adapters alone.
    #[test]
    fn the_plan_counts_each_storage_at_its_width() {
        let config = config();
        let mut run = TrainConfig::new(Task::Dpo, "t.jsonl".into(), "m".into(), "out".into());
        run.lora = Some(LoraSettings::new(8));
        let adapted: Vec<String> = Vec::new();
        let counts = count(&config, &adapted, 8);
        let (h, i, layers) = (896u64, 4864u64, 24u64);
        let per_layer = h * h * 2 + h * 128 * 2 + 3 * h * i;
        assert_eq!(counts.projections, layers * per_layer);
        assert_eq!(counts.matrices - counts.projections, 151_936 * h);
        let plan_of = |storage: Storage| {
            let frozen = Frozen {
                storage,
                reference_copy: false,
                recorded: false,
            };
            plan(
                &config,
                &run,
                counts,
                &adapted,
                frozen,
                &Device::flex(),
                512,
            )
        };
        let weights = |storage: Storage| plan_of(storage).parts[0].1 - counts.vectors * 4;
        let f16 = burn::tensor::FloatDType::F16;
        assert_eq!(weights(Storage::default()), counts.matrices * 4);
        assert_eq!(weights(Storage::half(f16)), counts.matrices * 2);
        for quantize in [Quantize::Q8, Quantize::Q4] {
            let storage = Storage {
                half: Some(f16),
                quantize: Some(quantize),
            };
            let expected = (counts.matrices - counts.projections) * 2
                + (counts.projections as f64 * 1.125).ceil() as u64;
            assert_eq!(weights(storage), expected, "{quantize:?}");
        }
        let checkpoint = plan_of(Storage::default()).checkpoint;
        assert!(checkpoint < 64 << 20, "{checkpoint}");

        // A refusal names the ways out in the words of whoever asked: flags, or the page's
        // controls (one for both kinds of frozen storage) and no flag at all.
        let plan = plan_of(Storage::default());
        let refusal = |controls| {
            check(&plan, 1 << 20, &run, controls)
                .unwrap_err()
                .to_string()
        };
        let train = refusal(Controls::TRAIN);
        assert!(
            train.ends_with(
                "try half-precision frozen weights (--base-dtype auto), 8- or 4-bit frozen \
             projections (--quantize-base q8), --gradient-checkpointing, a smaller --batch-size \
             (now 8), a shorter --max-length (now 256), or set --memory-limit"
            ),
            "{train}"
        );
        assert!(!refusal(Controls::PLAYGROUND).contains("--memory-limit"));
        let page = refusal(Controls::PAGE);
        assert!(page.contains("free in this tab"), "{page}");
        assert!(page.ends_with(
            "try Frozen weights: f16 or 8-bit blocks, Recompute layers in backward, fewer Pairs \
             per step (now 8), fewer Max tokens (now 256)"
        ), "{page}");
        assert!(check(&plan, plan.total(), &run, Controls::PAGE).is_ok());
    }
}
