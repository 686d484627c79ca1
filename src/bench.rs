//! Throughput benchmarks that print tables (run by `fairtune bench` and `cargo bench`):
//! DPO training tokens/s for a fixed small config on each backend, and the group-statistics op's
//! throughput at N = 1M, 10M for G = 2, 64 — WGSL against the tensor-op reference. Each op row
//! is also checked against an f64 host computation, so a fast wrong kernel cannot hide.

use std::fmt::Write as _;
use std::path::PathBuf;
use web_time::Instant;

use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::device::{self, BackendChoice, Selected};
use crate::error::{Error, Result};
use crate::kernel::{self, GroupStatsImpl};
use crate::train::dpo::DpoTask;
use crate::train::{Task, TaskRunner, TrainConfig};

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

/// A temporary directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("fairtune-bench-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::runtime(format!("{}: {e}", dir.display())))?;
        Ok(Self(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Synthetic preference pairs: 32-byte prompts, 32-byte completions, two groups.
fn synthetic_pairs(count: usize) -> String {
    let mut rng = StdRng::seed_from_u64(7);
    let mut text = String::new();
    let word = |rng: &mut StdRng, len: usize| -> String {
        (0..len)
            .map(|_| char::from(b'a' + rng.random_range(0..26u8)))
            .collect()
    };
    for i in 0..count {
        let line = serde_json::json!({
            "prompt": word(&mut rng, 32),
            "chosen": word(&mut rng, 32),
            "rejected": word(&mut rng, 32),
            "group": if i % 2 == 0 { "a" } else { "b" },
        });
        text.push_str(&line.to_string());
        text.push('\n');
    }
    text
}

/// Reset the process's peak resident set size (Linux: `5` into /proc/self/clear_refs).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Peak resident set size since the last reset, in MiB (Linux: VmHWM), if the OS says.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// DPO training steps per second and tokens per second on `selected` (after warmup).
fn dpo_throughput(selected: &Selected, warmup: usize, measured: usize) -> Result<(f64, f64)> {
    let scratch = Scratch::new("dpo")?;
    let train = scratch.0.join("pairs.jsonl");
    std::fs::write(&train, synthetic_pairs(64)).map_err(|e| Error::runtime(e.to_string()))?;
    let mut config = TrainConfig::new(Task::Dpo, train, "tiny-llama".into(), scratch.0.join("run"));
    config.batch_size = 8;
    config.fairness_lambda = 1.0;
    config.steps = warmup + measured;
    let mut task = DpoTask::load(&config, selected)?;
    let device = selected.device.clone().autodiff();
    device.seed(config.seed);
    let mut model = task.init_model(&device)?;
    task.prepare(&model, Some(&scratch.0), false)?;
    let mut optimizer = AdamWConfig::new().init();
    let mut tokens = 0usize;
    let mut started = Instant::now();
    for step in 0..warmup + measured {
        if step == warmup {
            sync(&selected.device)?;
            started = Instant::now();
            tokens = 0;
        }
        let output = task.step(&model, step);
        tokens += output.num_tokens;
        let grads = GradientsParams::from_grads(output.loss.backward(), &model);
        model = optimizer.step(1e-4, model, grads);
    }
    sync(&selected.device)?;
    let seconds = started.elapsed().as_secs_f64();
    Ok((measured as f64 / seconds, tokens as f64 / seconds))
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
        kernel::group_stats_with(
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
        "DPO training throughput — tiny-llama (2 layers, hidden 64), 8 pairs × ~66 tokens, λ = 1"
    )
    .ok();
    writeln!(
        out,
        "| backend | device | steps/s | tokens/s | peak RSS MiB |"
    )
    .ok();
    writeln!(out, "|---|---|---:|---:|---:|").ok();
    for backend in &selected {
        reset_peak_rss();
        let (steps_per_s, tokens_per_s) = dpo_throughput(backend, warmup, measured)?;
        let peak = peak_rss_mib().map_or("n/a".into(), |m| format!("{m:.0}"));
        writeln!(
            out,
            "| {} | {} | {steps_per_s:.2} | {tokens_per_s:.0} | {peak} |",
            backend.backend_name(),
            backend.describe()
        )
        .ok();
    }
    writeln!(
        out,
        "(peak RSS: the whole process's resident memory, which on a software GPU includes the \
         device's; a hardware GPU's own memory is not in it)"
    )
    .ok();

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
