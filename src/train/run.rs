//! `fairtune train` end to end around the [`Session`]: the run directory, resuming, the
//! progress line and `metrics.jsonl`, periodic evaluation, checkpoints, the exports and
//! `report.json`; and `fairtune export`.

use std::path::{Path, PathBuf};
use web_time::Instant;

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Device, Tensor};

use super::checkpoint::{self, TrainState};
use super::memory;
use super::progress::{MetricsLog, Progress};
use super::{
    InitOn, RunDir, RunReport, Session, Task, TaskRunner, TrainConfig, classify, config, dpo,
    held_out, ner,
};
use crate::device::Selected;
use crate::error::{Error, Result};
use crate::fsutil::write_atomic;

/// Run `fairtune train` end to end.
pub fn run(config: &TrainConfig, selected: &Selected) -> Result<RunReport> {
    config.validate()?;
    match config.task {
        Task::Dpo => train(config, selected, dpo::DpoTask::load(config, selected)?),
        Task::Classify => train(
            config,
            selected,
            classify::ClassifyTask::load(config, selected)?,
        ),
        Task::Ner => train(config, selected, ner::NerTask::load(config, selected)?),
    }
}

/// A finished run's exports: with LoRA, the adapters alone (PEFT layout) at `out/adapter`; and
/// `merged` (the model, its adapters folded in as each weight is written) as a Hugging Face
/// directory at `out/hf`.
pub(crate) fn export_run<M: Module, N: Module>(
    adapted: &M,
    merged: &N,
    arch: &crate::model::ArchConfig,
    head: &crate::model::io::export::ExportHead,
    config: &TrainConfig,
    tokenizer: &crate::tokenizer::TextTokenizer,
    out: &Path,
) -> Result<()> {
    if let Some(lora) = &config.lora {
        crate::model::lora::save_adapters(
            adapted,
            arch,
            lora,
            &config.model,
            &out.join("adapter"),
        )?;
    }
    // Adapters still on `merged` are merged as each weight is written.
    let scale = config
        .lora
        .as_ref()
        .map(crate::model::lora::LoraSettings::scale);
    crate::model::io::export::save_hf(merged, scale, arch, head, tokenizer, &out.join("hf"))
}

/// `fairtune export`: the causal LM that `model` names (GGUF, Hugging Face directory, config,
/// preset, fetched name) written as a Hugging Face directory at `out` — fp32 safetensors,
/// config.json, tokenizer.json, tokenizer_config.json — that transformers' `from_pretrained` loads.
/// A GGUF file's weights come out dequantized. Returns a one-line summary.
pub fn export_model(model: &str, tokenizer: Option<PathBuf>, out: &Path) -> Result<String> {
    if out.exists() {
        return Err(Error::input(format!(
            "--out {}: already exists; name a new directory",
            out.display()
        )));
    }
    let source = crate::model::locate(model)?;
    let tokenizer = source.open_tokenizer(tokenizer.as_deref())?;
    let crate::model::ArchConfig::Llama(arch) = source.arch(tokenizer.vocab_size())? else {
        return Err(Error::input(format!(
            "--model {model}: export writes causal LMs (llama); a BERT model is already a \
             Hugging Face directory"
        )));
    };
    let device = Device::flex();
    let weights = match crate::model::load_llama_from(&source, &device)? {
        Some((weights, report)) => {
            report_load(&report);
            weights
        }
        None => arch.init(&device),
    };
    let class = arch.family.causal_lm_class();
    let arch = crate::model::ArchConfig::Llama(arch);
    crate::model::io::export::save_hf(
        &weights,
        None,
        &arch,
        &crate::model::io::export::ExportHead::CausalLm,
        &tokenizer,
        out,
    )?;
    Ok(format!(
        "{}: {class}, {} parameters (fp32), {}",
        out.display(),
        weights.num_params(),
        tokenizer.describe()
    ))
}

/// Say what the run will need in memory, and refuse it when that is more than it may use:
/// `--memory-limit`, or (auto) what the OS says is available where the weights live in host
/// memory (the CPU backend, a software GPU); a hardware GPU's size is not known through wgpu.
fn check_memory(plan: &memory::Plan, config: &TrainConfig, selected: &Selected) -> Result<()> {
    let host = !selected.is_wgpu()
        || selected
            .adapter
            .as_ref()
            .is_some_and(|a| a.device_type == "Cpu");
    let limit = match config.memory_limit {
        memory::MemoryLimit::Bytes(bytes) => Some((bytes, "--memory-limit".to_string())),
        memory::MemoryLimit::None => None,
        memory::MemoryLimit::Auto if host => {
            memory::available().map(|bytes| (bytes, "available".to_string()))
        }
        memory::MemoryLimit::Auto => None,
    };
    let place = if host { "" } else { " (device memory)" };
    match &limit {
        Some((bytes, what)) => eprintln!(
            "memory{place}: {} (limit {} {what})",
            plan.describe(),
            memory::size(*bytes)
        ),
        None => eprintln!("memory{place}: {}", plan.describe()),
    }
    match limit {
        Some((bytes, _)) => memory::check(plan, bytes, config, memory::Controls::TRAIN),
        None => Ok(()),
    }
}

/// Say what loading pretrained weights left out or started fresh.
pub(crate) fn report_load(report: &crate::model::io::safetensors::LoadReport) {
    if !report.newly_initialized.is_empty() {
        eprintln!(
            "notice: newly initialized (not in the checkpoint): {}",
            report.newly_initialized.join(", ")
        );
    }
    if !report.unused.is_empty() {
        eprintln!(
            "notice: checkpoint tensors not used: {}",
            report.unused.join(", ")
        );
    }
}

/// (trainable, all) parameter counts; LoRA factors count as trainable, frozen bases do not.
pub(crate) fn count_params<M: Module>(model: &M) -> (usize, usize) {
    struct Count(usize, usize);
    impl ModuleVisitor for Count {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let n = param.lazy_shape().num_elements();
            self.1 += n;
            if param.is_require_grad() {
                self.0 += n;
            }
        }
    }
    let mut count = Count(0, 0);
    model.visit(&mut count);
    (count.0, count.1)
}

fn train<T: TaskRunner>(config: &TrainConfig, selected: &Selected, task: T) -> Result<RunReport> {
    let out = &config.out;
    // Before anything is written: a refused run leaves nothing to clean up.
    if let Some(plan) = task.memory_plan() {
        check_memory(&plan, config, selected)?;
    }
    let resume_from = config::prepare_out_dir(config, task.groups())?;
    let dir = match resume_from {
        Some(_) => RunDir::Existing(out),
        None => RunDir::New(out),
    };
    let contents = task.record_contents();
    let mut session = Session::start(config, selected, task, dir, InitOn::Device)?;
    let mut tokens_seen = 0;
    if let Some(dir) = &resume_from {
        let state = session.resume(dir)?;
        eprintln!("resuming from {} (step {})", dir.display(), state.step);
        tokens_seen = state.tokens_seen;
    }
    let start_step = session.steps_done();

    let mut metrics_log = MetricsLog::open(&out.join("metrics.jsonl"), start_step)?;
    let mut progress = Progress::new(config.steps, start_step);
    let started = Instant::now();
    let mut tokens_this_run: u64 = 0;
    let mut last_loss = f64::NAN;

    while session.steps_done() < config.steps {
        let report = pollster::block_on(session.step())?;
        let done = report.step;
        tokens_seen += report.num_tokens as u64;
        tokens_this_run += report.num_tokens as u64;
        last_loss = report.values["loss"];

        let mut record = report.record(config.fairness_lambda);
        let eval_now =
            config.eval_every > 0 && (done % config.eval_every == 0 || done == config.steps);
        if eval_now
            && let Some(eval) = pollster::block_on(
                session
                    .task
                    .evaluate(session.model.as_ref().expect("model")),
            )?
        {
            for (name, value) in eval {
                record.insert(format!("eval/{name}"), value);
            }
        }
        if done % config.log_every == 0 || done == config.steps || eval_now {
            metrics_log.write(&record)?;
        }
        progress.update(
            done,
            last_loss,
            report.values.get("fairness_F").copied(),
            report.num_tokens as f64 / report.seconds.max(1e-9),
        );

        // The last step's checkpoint is written after the held-out report, below.
        let checkpoint_now = config.checkpoint_every > 0 && done % config.checkpoint_every == 0;
        if checkpoint_now && done < config.steps {
            let state = TrainState {
                step: done,
                fingerprint: config.fingerprint(),
                tokens_seen,
                task: session.task.save_state()?,
            };
            let (model, optimizer) = (session.model(), &session.optimizer);
            checkpoint::save(out, model, optimizer, &state, contents, |dir| {
                session.task.save_files(dir)
            })?;
        }
        if config.halt_after == Some(done) && done < config.steps {
            // Test hook: stop as a killed process would, after the step's checkpoint (if any).
            progress.finish();
            return Err(Error::runtime(format!(
                "halted after step {done} (--halt-after)"
            )));
        }
    }
    progress.finish();
    let wall_s = started.elapsed().as_secs_f64();

    let trained = start_step < config.steps;
    let Session {
        mut task,
        model,
        optimizer,
        ..
    } = session;
    let model = model.expect("a model after the last step");
    // The outputs first, the last checkpoint after them (once the task, and with it a full
    // fine-tune's frozen reference copy, is gone: serializing the optimizer state then needs no
    // more memory than a step did) — and the checkpoint is written even when an output fails,
    // so no trained step is lost.
    let outputs = (|| -> Result<RunReport> {
        checkpoint::save_module(&model, &out.join("model.bpk"), contents)?;
        task.export(&model, out)?;
        let (trainable_params, total_params) = count_params(&model);
        Ok(RunReport {
            task: config.task,
            steps: config.steps,
            device: selected.describe(),
            backend: selected.backend_name().to_string(),
            final_train_loss: last_loss,
            lambda: config.fairness_lambda,
            fairness: config.fairness,
            fairness_score: config.fairness_score(),
            tokens_seen,
            hf_export: out.join("hf"),
            lora_adapter: config.lora.is_some().then(|| out.join("adapter")),
            trainable_params,
            total_params,
            wall_s,
            tokens_per_s: tokens_this_run as f64 / wall_s.max(1e-9),
            peak_memory_bytes: memory::peak_resident(),
            device_memory_bytes: selected.adapter.as_ref().and_then(|_| {
                let usage = selected.device.memory_pool_usage()?;
                Some(usage.bytes_reserved)
            }),
            held_out: pollster::block_on(held_out(&mut task, &model, &selected.device))?,
        })
    })();
    let task_state = task.save_state();
    drop(task);
    if trained {
        let state = TrainState {
            step: config.steps,
            fingerprint: config.fingerprint(),
            tokens_seen,
            task: task_state?,
        };
        // A finished run is not resumed: the task's files are not needed in its last checkpoint.
        checkpoint::save(out, &model, &optimizer, &state, contents, |_| Ok(()))?;
    }
    let report = outputs?;
    write_atomic(
        &out.join("report.json"),
        serde_json::to_string_pretty(&report)
            .expect("report serializes")
            .as_bytes(),
    )?;
    Ok(report)
}
