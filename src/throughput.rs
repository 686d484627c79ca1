//! Throughput benchmarks that print tables (run by `fairtune bench` and `cargo bench`):
//! DPO training tokens/s of the real training [`Session`] (the loop `fairtune train` and the
//! browser run) on each backend — a tiny model, and a SmolLM2-135M-sized one with LoRA and in
//! full —, greedy generation tokens/s through the key/value cache ([`crate::generate`]), and the
//! group-statistics op's throughput at N = 1M, 10M for G = 2, 64, WGSL against the tensor-op
//! reference. Each op row is also checked against an f64 host computation, so a
//! fast wrong kernel cannot hide.

use std::fmt::Write as _;
use web_time::Instant;

use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::device::{self, BackendChoice, Selected};
use crate::error::{Error, Result};
use crate::fsutil::ScratchDir;
use crate::group_stats::{self, GroupStatsImpl};
use crate::model::lora::{LoraSettings, LoraTarget};
use crate::model::precision::{BaseDtype, Quantize};
use crate::train::dpo::DpoTask;
use crate::train::{InitOn, RunDir, Session, Task, TrainConfig};

pub struct BenchOptions {
    pub backend: BackendChoice,
    pub quick: bool,
}

fn backends(choice: BackendChoice) -> Result<Vec<Selected>> {
    Ok(match choice {
        BackendChoice::Cpu => vec![Selected::cpu()],
        BackendChoice::Wgpu => vec![device::select(BackendChoice::Wgpu)?],
        BackendChoice::Auto => {
            let mut list = vec![Selected::cpu()];
            match device::select(BackendChoice::Wgpu) {
                Ok(selected) => list.push(selected),
                Err(e) => eprintln!("notice: no wgpu backend to measure ({e})"),
            }
            list
        }
    })
}

fn sync(device: &Device) -> Result<()> {
    device
        .sync()
        .map_err(|e| Error::runtime(format!("device sync failed: {e:?}")))
}

/// Synthetic preference pairs of random letters (one byte-level token each), two groups.
fn synthetic_pairs(count: usize, prompt: usize, completion: usize) -> String {
    let mut rng = StdRng::seed_from_u64(7);
    let mut text = String::new();
    let word = |rng: &mut StdRng, len: usize| -> String {
        (0..len)
            .map(|_| char::from(b'a' + rng.random_range(0..26u8)))
            .collect()
    };
    for i in 0..count {
        let line = serde_json::json!({
            "prompt": word(&mut rng, prompt),
            "chosen": word(&mut rng, completion),
            "rejected": word(&mut rng, completion),
            "group": if i % 2 == 0 { "a" } else { "b" },
        });
        text.push_str(&line.to_string());
        text.push('\n');
    }
    text
}

/// One DPO throughput configuration.
struct DpoWork {
    name: &'static str,
    /// A preset name, or a config.json to write into the scratch directory (random init).
    model: Result<&'static str, serde_json::Value>,
    lora: bool,
    /// `--gradient-checkpointing`: decoder layers recomputed in backward.
    recompute: bool,
    /// `--base-dtype`: how the frozen weights are stored.
    base: BaseDtype,
    /// `--quantize-base`: the frozen projections in integer blocks.
    quantize: Option<Quantize>,
    pairs_per_step: usize,
    prompt: usize,
    completion: usize,
    /// Whether it runs on a software rasterizer (llvmpipe) in reasonable time.
    small: bool,
}

/// SmolLM2-135M-Instruct's architecture (its config.json), random weights.
fn smollm2_sized() -> serde_json::Value {
    serde_json::json!({
        "model_type": "llama", "vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536,
        "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
        "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 100000.0,
        "tie_word_embeddings": true, "hidden_act": "silu"
    })
}

fn dpo_workloads() -> Vec<DpoWork> {
    let smol = |name, lora, recompute| DpoWork {
        name,
        model: Err(smollm2_sized()),
        lora,
        recompute,
        base: BaseDtype::F32,
        quantize: None,
        pairs_per_step: 2,
        prompt: 128,
        completion: 128,
        small: false,
    };
    vec![
        DpoWork {
            name: "tiny-llama (2 layers, hidden 64), 8 pairs × ~66 tokens, λ = 1",
            model: Ok("tiny-llama"),
            lora: false,
            recompute: false,
            base: BaseDtype::F32,
            quantize: None,
            pairs_per_step: 8,
            prompt: 32,
            completion: 32,
            small: true,
        },
        smol(
            "SmolLM2-135M-sized (30 layers, hidden 576, vocab 49152), LoRA r 8 q/k/v/o, 2 pairs × 258 tokens",
            true,
            false,
        ),
        DpoWork {
            base: BaseDtype::F16,
            ..smol(
                "SmolLM2-135M-sized, LoRA r 8, --base-dtype f16",
                true,
                false,
            )
        },
        DpoWork {
            base: BaseDtype::Bf16,
            ..smol(
                "SmolLM2-135M-sized, LoRA r 8, --base-dtype bf16",
                true,
                false,
            )
        },
        DpoWork {
            quantize: Some(Quantize::Q8),
            ..smol(
                "SmolLM2-135M-sized, LoRA r 8, --quantize-base q8",
                true,
                false,
            )
        },
        DpoWork {
            quantize: Some(Quantize::Q4),
            ..smol(
                "SmolLM2-135M-sized, LoRA r 8, --quantize-base q4",
                true,
                false,
            )
        },
        smol(
            "SmolLM2-135M-sized, full fine-tuning (frozen reference copy), 2 pairs × 258 tokens",
            false,
            false,
        ),
        smol(
            "SmolLM2-135M-sized, full fine-tuning, --gradient-checkpointing",
            false,
            true,
        ),
    ]
}

/// DPO training steps per second and tokens per second of the real training session on
/// `selected` (after warmup), and on a GPU the device memory burn's pools hold after the steps.
fn dpo_throughput(
    selected: &Selected,
    work: &DpoWork,
    warmup: usize,
    measured: usize,
) -> Result<(f64, f64, Option<u64>)> {
    let scratch = ScratchDir::new("bench-dpo")?;
    let train = scratch.path().join("pairs.jsonl");
    let pairs = synthetic_pairs(64, work.prompt, work.completion);
    std::fs::write(&train, pairs).map_err(|e| Error::runtime(e.to_string()))?;
    let model = match &work.model {
        Ok(preset) => preset.to_string(),
        Err(config) => {
            let path = scratch.path().join("config.json");
            std::fs::write(&path, config.to_string()).map_err(|e| Error::runtime(e.to_string()))?;
            path.display().to_string()
        }
    };
    let mut config = TrainConfig::new(Task::Dpo, train, model, scratch.path().join("run"));
    config.batch_size = work.pairs_per_step;
    config.fairness_lambda = 1.0;
    config.steps = warmup + measured;
    config.lr = 1e-4;
    config.max_length = work.prompt + work.completion + 2;
    config.max_prompt_length = work.prompt;
    config.gradient_checkpointing = work.recompute;
    config.base_dtype = work.base;
    config.quantize_base = work.quantize;
    if work.lora {
        config.lora = Some(LoraSettings {
            rank: 8,
            alpha: 16.0,
            dropout: 0.0,
            targets: vec![LoraTarget::Q, LoraTarget::K, LoraTarget::V, LoraTarget::O],
        });
    }
    // Pages the previous work left in the pools would count as this work's.
    selected.device.memory_cleanup();
    let task = DpoTask::load(&config, selected)?;
    let mut session = Session::start(&config, selected, task, RunDir::None, InitOn::Device)?;
    let mut tokens = 0usize;
    let mut started = Instant::now();
    for step in 0..warmup + measured {
        if step == warmup {
            sync(&selected.device)?;
            started = Instant::now();
            tokens = 0;
        }
        tokens += pollster::block_on(session.step())?.num_tokens;
    }
    sync(&selected.device)?;
    let seconds = started.elapsed().as_secs_f64();
    // Read after the timing: the pools keep the pages of the largest step for reuse.
    let device_bytes = selected
        .adapter
        .as_ref()
        .and_then(|_| selected.device.memory_pool_usage())
        .map(|usage| usage.bytes_reserved);
    Ok((
        measured as f64 / seconds,
        tokens as f64 / seconds,
        device_bytes,
    ))
}

/// Generated tokens per second of greedy decoding (prefill included) of `prompts` prompts of
/// `prompt` tokens, `new` tokens each, on `selected`, the best of `repeats` runs after one warmup.
fn generation_throughput(
    selected: &Selected,
    model: &Result<&str, serde_json::Value>,
    prompts: usize,
    prompt: usize,
    new: usize,
    repeats: usize,
) -> Result<f64> {
    use crate::generate::{GenerateOptions, Sampling, generate};
    use crate::model::ArchConfig;
    let arch = match model {
        Ok(preset) => crate::model::resolve(preset, 264)?.0,
        Err(config) => crate::model::parse_config(&config.to_string()).map_err(Error::input)?,
    };
    let ArchConfig::Llama(arch) = arch else {
        return Err(Error::runtime("generation needs a decoder"));
    };
    let device = &selected.device;
    let lm = arch.init(device);
    let mut rng = StdRng::seed_from_u64(5);
    let ids: Vec<Vec<u32>> = (0..prompts)
        .map(|_| {
            (0..prompt)
                .map(|_| rng.random_range(8..arch.vocab_size as u32))
                .collect()
        })
        .collect();
    let options = GenerateOptions {
        max_new_tokens: new,
        sampling: Sampling::default(),
        stop_ids: Vec::new(),
        stop_strings: Vec::new(),
    };
    let tokenizer = crate::tokenizer::TextTokenizer::Bytes;
    let mut best = f64::INFINITY;
    for run in 0..=repeats {
        let started = Instant::now();
        pollster::block_on(generate(&lm, &tokenizer, &ids, &options, device, |_, _| {}))?;
        if run > 0 {
            best = best.min(started.elapsed().as_secs_f64());
        }
    }
    Ok((prompts * new) as f64 / best)
}

/// Reset the process's peak resident set size (Linux: `5` into /proc/self/clear_refs).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Peak resident set size since the last reset, in MiB, if the OS says.
fn peak_rss_mib() -> Option<f64> {
    crate::train::memory::peak_resident().map(|bytes| bytes as f64 / (1u64 << 20) as f64)
}

/// Mean seconds of one group_stats forward, and its worst relative error against f64.
fn group_stats_throughput(
    device: &Device,
    implementation: GroupStatsImpl,
    scores: &[f32],
    groups: &[i64],
    num_groups: usize,
    repeats: usize,
) -> Result<(f64, f64)> {
    let n = scores.len();
    let scores_t = Tensor::<1>::from_data(TensorData::new(scores.to_vec(), [n]), device);
    let groups_t = Tensor::<1, Int>::from_data(TensorData::new(groups.to_vec(), [n]), device);
    let run = || {
        group_stats::group_stats_with(
            scores_t.clone(),
            groups_t.clone(),
            num_groups,
            implementation,
        )
    };
    let result = run();
    sync(device)?;
    let mut total = 0.0;
    for _ in 0..repeats {
        let started = Instant::now();
        let stats = run();
        sync(device)?;
        total += started.elapsed().as_secs_f64();
        drop(stats);
    }
    let got: Vec<f32> = result
        .into_data()
        .try_to_vec::<f32>()
        .map_err(|e| Error::runtime(format!("{e:?}")))?;
    let mut sums = vec![0f64; num_groups];
    let mut counts = vec![0f64; num_groups];
    for (&s, &g) in scores.iter().zip(groups) {
        sums[g as usize] += s as f64;
        counts[g as usize] += 1.0;
    }
    let error = (0..num_groups)
        .map(|g| {
            let rel = |a: f32, b: f64| (a as f64 - b).abs() / b.abs().max(1.0);
            rel(got[g], sums[g]).max(rel(got[num_groups + g], counts[g]))
        })
        .fold(0.0, f64::max);
    Ok((total / repeats as f64, error))
}

pub fn run(options: &BenchOptions) -> Result<String> {
    let selected = backends(options.backend)?;
    let (warmup, measured) = if options.quick { (1, 3) } else { (3, 20) };
    let mut out = String::new();

    writeln!(
        out,
        "DPO training throughput — the training session of `fairtune train`, λ = 1"
    )
    .ok();
    writeln!(
        out,
        "| work | backend | device | steps/s | tokens/s | peak RSS MiB | device MiB |"
    )
    .ok();
    writeln!(out, "|---|---|---|---:|---:|---:|---:|").ok();
    for work in dpo_workloads() {
        for backend in &selected {
            let software = backend
                .adapter
                .as_ref()
                .is_some_and(|a| a.device_type == "Cpu");
            if software && !work.small {
                eprintln!(
                    "notice: {} skipped on {} (a software rasterizer: hours, not minutes)",
                    work.name,
                    backend.describe()
                );
                continue;
            }
            if let Err(why) = work.base.resolve(&backend.device) {
                eprintln!(
                    "notice: {} skipped on {}: {why}",
                    work.name,
                    backend.describe()
                );
                continue;
            }
            let (warmup, measured) = match (options.quick, work.small) {
                (true, _) => (1, 2),
                (false, true) => (warmup, measured),
                (false, false) => (2, 8),
            };
            reset_peak_rss();
            let (steps_per_s, tokens_per_s, device_bytes) =
                dpo_throughput(backend, &work, warmup, measured)?;
            let peak = peak_rss_mib().map_or("n/a".into(), |m| format!("{m:.0}"));
            let device_mib = device_bytes.map_or("n/a".into(), |b| {
                format!("{:.0}", b as f64 / (1u64 << 20) as f64)
            });
            writeln!(
                out,
                "| {} | {} | {} | {steps_per_s:.2} | {tokens_per_s:.0} | {peak} | {device_mib} |",
                work.name,
                backend.backend_name(),
                backend.describe()
            )
            .ok();
        }
    }
    writeln!(
        out,
        "(peak RSS: the whole process's resident memory, which on a software GPU includes the \
         device's; a hardware GPU's own memory is not in it. device MiB: on wgpu, the \
         memory burn's pools hold on the device after the steps — they keep the pages of the \
         largest step for reuse, so this is the run's device peak)"
    )
    .ok();

    writeln!(out).ok();
    writeln!(
        out,
        "Greedy generation — `fairtune generate`'s loop (prefill, then one token per prompt per \
         step through the key/value cache), random weights"
    )
    .ok();
    writeln!(
        out,
        "| model | backend | prompts × tokens | new tokens | tokens/s |"
    )
    .ok();
    writeln!(out, "|---|---|---:|---:|---:|").ok();
    let (new, repeats) = if options.quick { (8, 1) } else { (32, 3) };
    let works: [(&str, Result<&str, serde_json::Value>, usize, bool); 3] = [
        ("tiny-llama", Ok("tiny-llama"), 1, true),
        ("SmolLM2-135M-sized", Err(smollm2_sized()), 1, false),
        ("SmolLM2-135M-sized", Err(smollm2_sized()), 4, false),
    ];
    for (name, model, prompts, small) in &works {
        for backend in &selected {
            let software = backend
                .adapter
                .as_ref()
                .is_some_and(|a| a.device_type == "Cpu");
            if software && !small {
                continue;
            }
            let rate = generation_throughput(backend, model, *prompts, 32, new, repeats)?;
            writeln!(
                out,
                "| {name} | {} | {prompts} × 32 | {new} | {rate:.1} |",
                backend.backend_name()
            )
            .ok();
        }
    }

    let sizes: &[usize] = if options.quick {
        &[100_000, 1_000_000]
    } else {
        &[1_000_000, 10_000_000]
    };
    let repeats = if options.quick { 2 } else { 5 };
    writeln!(out).ok();
    writeln!(
        out,
        "group_stats forward — read N·8 bytes (f32 score + i32 group); error vs f64 host sums"
    )
    .ok();
    writeln!(out, "| backend | impl | N | G | ms | GB/s | max rel err |").ok();
    writeln!(out, "|---|---|---:|---:|---:|---:|---:|").ok();
    let mut rng = StdRng::seed_from_u64(11);
    for &n in sizes {
        let scores: Vec<f32> = (0..n).map(|_| rng.random::<f32>()).collect();
        for &num_groups in &[2usize, 64] {
            let groups: Vec<i64> = (0..n)
                .map(|_| rng.random_range(0..num_groups as i64))
                .collect();
            for backend in &selected {
                let impls: &[GroupStatsImpl] = if backend.is_wgpu() {
                    &[GroupStatsImpl::Wgsl, GroupStatsImpl::Reference]
                } else {
                    &[GroupStatsImpl::Reference]
                };
                for &implementation in impls {
                    let (seconds, error) = group_stats_throughput(
                        &backend.device,
                        implementation,
                        &scores,
                        &groups,
                        num_groups,
                        repeats,
                    )?;
                    let gbps = (n * 8) as f64 / seconds / 1e9;
                    writeln!(
                        out,
                        "| {} | {:?} | {n} | {num_groups} | {:.2} | {gbps:.2} | {error:.1e} |",
                        backend.backend_name(),
                        implementation,
                        seconds * 1e3
                    )
                    .ok();
                }
            }
        }
    }
    Ok(out)
}
