//! The training loop: AdamW, warmup + decay, global-norm clipping, seeded and exactly resumable,
//! periodic evaluation, atomic checkpoints, `metrics.jsonl` and `report.json`.
//!
//! Why not burn-train's `Learner`: its checkpoints and schedules are per epoch, while a
//! fine-tuning run here is counted in optimizer steps and must resume mid-epoch bit-exactly
//! (data order, dropout and learning rate are all pure functions of (seed, step) below); a step
//! also draws a second, group-balanced fairness batch beside the task batch and, for DPO, runs a
//! frozen reference model — neither fits its one-batch `TrainStep`. The loop is ~300 lines and
//! has no other job; the tasks (`dpo`, `classify`) only say how to turn a batch into a loss.

pub mod checkpoint;
pub mod classify;
pub mod config;
pub mod dpo;
pub mod fairness_source;
pub mod log;
pub mod ner;
pub mod schedule;

use std::path::Path;
use web_time::Instant;

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Tensor};
use serde_json::{Map, Value, json};

pub use config::{Task, TrainConfig};

use crate::data::GroupVocab;
use crate::device::Selected;
use crate::error::{Error, Result};
use crate::model::lora::LoraSettings;
use crate::objective::FairnessTerm;
use checkpoint::TrainState;
use log::{MetricsLog, Progress};

/// What one training step produced, before backward.
pub struct StepOutput {
    /// task loss + λ·F, scalar `[1]`.
    pub loss: Tensor<1>,
    pub task_loss: Tensor<1>,
    pub fairness: Option<FairnessTerm>,
    /// Scalar `[1]` metrics to log (detached), e.g. TRL's `rewards/margins`.
    pub metrics: Vec<(&'static str, Tensor<1>)>,
    /// Real tokens through the policy this step.
    pub num_tokens: usize,
}

/// A task: how a model is built, how a step computes its loss, how a model is evaluated.
pub trait TaskRunner {
    type Model: Module;

    /// The model: random init, or pretrained weights when `--model` has them.
    fn init_model(&self, device: &Device) -> Result<Self::Model>;
    /// Called once before the first step (e.g. to freeze the DPO reference model).
    fn prepare(&mut self, model: &Self::Model, out: &Path, resuming: bool) -> Result<()>;
    fn step(&mut self, model: &Self::Model, step: usize) -> StepOutput;
    /// Task metrics on the eval set (`None` without one), keys without the `eval/` prefix.
    fn evaluate(&mut self, model: &Self::Model) -> Result<Option<Map<String, Value>>>;
    /// Attach LoRA adapters (after `prepare`, which keeps the un-adapted model as reference).
    fn apply_lora(&self, model: Self::Model, lora: &LoraSettings) -> Result<Self::Model>;
    /// Save `model` as a Hugging Face directory (weights, config, tokenizer) at `out/hf`, LoRA
    /// adapters merged; with LoRA, the adapters alone (PEFT layout) at `out/adapter`.
    fn export(&self, model: &Self::Model, out: &Path) -> Result<()>;
    /// Scores of the report's fairness set: (scores, group ids, labels), or `None` without one.
    fn fairness_eval(&mut self, model: &Self::Model) -> Result<Option<FairnessSet>>;
    fn groups(&self) -> &GroupVocab;
    /// Label count when the penalty is equalized odds.
    fn fairness_labels(&self) -> Option<usize>;
}

/// The fairness quantities of a whole evaluation set, scored in batches.
pub struct FairnessSet {
    pub name: String,
    pub scores: Vec<f32>,
    pub groups: Vec<i64>,
    pub labels: Option<Vec<i64>>,
}

/// Run `fairtune train` end to end.
pub fn run(config: &TrainConfig, selected: &Selected) -> Result<Value> {
    config.validate()?;
    match config.task {
        Task::Dpo => {
            let mut task = dpo::DpoTask::load(config, selected)?;
            train(config, selected, &mut task)
        }
        Task::Classify => {
            let mut task = classify::ClassifyTask::load(config, selected)?;
            train(config, selected, &mut task)
        }
        Task::Ner => {
            let mut task = ner::NerTask::load(config, selected)?;
            train(config, selected, &mut task)
        }
    }
}

/// `--tokenizer`, else the model's own tokenizer.json, else the built-in byte-level tokenizer.
pub(crate) fn load_tokenizer(
    config: &TrainConfig,
    source: &crate::model::ModelSource,
) -> Result<crate::data::TextTokenizer> {
    if config.tokenizer.is_none()
        && let crate::model::ModelSource::Gguf(file) = source
    {
        return crate::data::TextTokenizer::from_gguf(&crate::model::gguf::Gguf::open_metadata(
            file,
        )?);
    }
    match config.tokenizer.clone().or_else(|| source.tokenizer_file()) {
        Some(path) => crate::data::TextTokenizer::from_file(&path),
        None if source.is_pretrained() => Err(Error::input(format!(
            "--model {}: pretrained weights need their tokenizer; give --tokenizer tokenizer.json",
            config.model
        ))),
        None => Ok(crate::data::TextTokenizer::Bytes),
    }
}

/// The tokenizer files an export writes beside the weights.
#[derive(Clone, Default)]
pub(crate) struct TokenizerFiles {
    tokenizer: Option<tokenizers::Tokenizer>,
    bos: Option<String>,
    eos: Option<String>,
    pad: Option<String>,
    chat_template: Option<String>,
}

impl TokenizerFiles {
    pub(crate) fn of(
        tokenizer: &crate::data::TextTokenizer,
        source: &crate::model::ModelSource,
    ) -> Result<Self> {
        let Some(hf) = tokenizer.hf() else {
            return Ok(Self::default());
        };
        let special = tokenizer.special();
        let text = |id: Option<u32>| id.and_then(|id| hf.id_to_token(id));
        Ok(Self {
            tokenizer: Some(hf.clone()),
            bos: text(special.bos),
            eos: text(special.eos),
            pad: text(Some(special.pad)),
            chat_template: crate::model::chat_template(source)?,
        })
    }

    /// The model's chat template, ready to render conversational prompts.
    pub(crate) fn chat_template(&self) -> Result<Option<crate::data::chat::ChatTemplate>> {
        self.chat_template
            .as_deref()
            .map(|source| {
                crate::data::chat::ChatTemplate::new(
                    source,
                    self.bos.as_deref().unwrap_or(""),
                    self.eos.as_deref().unwrap_or(""),
                )
            })
            .transpose()
    }

    pub(crate) fn export(&self) -> Option<crate::model::export::ExportTokenizer<'_>> {
        Some(crate::model::export::ExportTokenizer {
            tokenizer: self.tokenizer.as_ref()?,
            bos: self.bos.clone(),
            eos: self.eos.clone(),
            pad: self.pad.clone(),
            chat_template: self.chat_template.clone(),
        })
    }
}

/// A finished run's exports: with LoRA, the adapters alone (PEFT layout) at `out/adapter`; and
/// `merged` (the model with adapters folded in) as a Hugging Face directory at `out/hf`.
pub(crate) fn export_run<M: Module, N: Module>(
    adapted: &M,
    merged: &N,
    arch: &crate::model::ArchConfig,
    head: &crate::model::export::ExportHead,
    config: &TrainConfig,
    tokenizer: &TokenizerFiles,
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
    crate::model::export::save_hf(merged, arch, head, tokenizer.export(), &out.join("hf"))
}

/// Say what loading pretrained weights left out or started fresh.
pub(crate) fn report_load(report: &crate::model::load::LoadReport) {
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

/// A vector's values on the host.
pub(crate) fn to_host(tensor: Tensor<1>) -> Result<Vec<f32>> {
    tensor
        .inner()
        .try_into_data()
        .map_err(|e| Error::runtime(format!("reading results from the device failed: {e:?}")))?
        .try_to_vec::<f32>()
        .map_err(|e| Error::runtime(format!("unexpected result type: {e:?}")))
}

/// (trainable, all) parameter counts; LoRA factors count as trainable, frozen bases do not.
fn count_params<M: Module>(model: &M) -> (usize, usize) {
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

/// Makes every lazily initialized parameter take its value now, under the init seed.
struct Materialize;

impl ModuleVisitor for Materialize {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let _ = param.val();
    }
}

/// The seed for step `step`'s randomness (dropout): a function of (seed, step) only.
fn step_seed(seed: u64, step: usize) -> u64 {
    seed.wrapping_mul(0x2545_F491_4F6C_DD1D)
        .wrapping_add(step as u64)
        .rotate_left(17)
}

fn train<T: TaskRunner>(config: &TrainConfig, selected: &Selected, task: &mut T) -> Result<Value> {
    let out = &config.out;
    let resume_from = config::prepare_out_dir(config, task.groups())?;
    let device = selected.device.clone().autodiff();

    device.seed(config.seed);
    let model = task.init_model(&device)?;
    model.visit(&mut Materialize);
    task.prepare(&model, out, resume_from.is_some())?;
    let model = match &config.lora {
        Some(lora) => task.apply_lora(model, lora)?,
        None => model,
    };

    let mut optimizer = AdamWConfig::new()
        .with_weight_decay(config.weight_decay as f32)
        .with_epsilon(1e-8)
        .init();
    let (mut model, start_step, mut tokens_seen) = match &resume_from {
        Some(dir) => {
            let state = checkpoint::read_state(dir)?;
            let model = checkpoint::load_module(model, &dir.join("model.bpk"))?;
            optimizer = checkpoint::load_optimizer(dir, optimizer)?;
            eprintln!("resuming from {} (step {})", dir.display(), state.step);
            (model, state.step, state.tokens_seen)
        }
        None => (model, 0, 0),
    };

    let mut metrics_log = MetricsLog::open(&out.join("metrics.jsonl"), start_step)?;
    let mut progress = Progress::new(config.steps, start_step);
    let started = Instant::now();
    let mut tokens_this_run: u64 = 0;
    let mut last_loss = f64::NAN;

    for step in start_step..config.steps {
        let step_started = Instant::now();
        device.seed(step_seed(config.seed, step));
        let output = task.step(&model, step);
        let (values, group_stats) = read_step(&output, task.groups(), task.fairness_labels())?;
        let loss = values["loss"];
        if !loss.is_finite() {
            return Err(Error::runtime(format!(
                "the loss became {loss} at step {} (task loss {}, F {}); lower --lr or --fairness-lambda. \
                 No checkpoint was written for this step.",
                step + 1,
                values["task_loss"],
                values.get("fairness_F").copied().unwrap_or(0.0)
            )));
        }

        let grads = output.loss.backward();
        let mut grads = GradientsParams::from_grads(grads, &model);
        let grad_norm = schedule::grad_norm(&model, &grads);
        if !grad_norm.is_finite() {
            return Err(Error::runtime(format!(
                "the gradient norm became {grad_norm} at step {}; lower --lr or --fairness-lambda",
                step + 1
            )));
        }
        if config.max_grad_norm > 0.0 && grad_norm > config.max_grad_norm {
            schedule::scale_grads(&model, &mut grads, config.max_grad_norm / grad_norm);
        }
        let lr = schedule::learning_rate(
            step,
            config.lr,
            config.warmup_steps,
            config.steps,
            config.decay,
        );
        model = optimizer.step(lr, model, grads);

        let step_s = step_started.elapsed().as_secs_f64();
        tokens_seen += output.num_tokens as u64;
        tokens_this_run += output.num_tokens as u64;
        last_loss = loss;
        let done = step + 1;

        let mut record = Map::new();
        record.insert("step".into(), json!(done));
        record.insert("lr".into(), json!(lr));
        record.insert("lambda".into(), json!(config.fairness_lambda));
        for (name, value) in &values {
            record.insert(name.clone(), json!(value));
        }
        record.insert("grad_norm".into(), json!(grad_norm));
        record.insert("tokens".into(), json!(output.num_tokens));
        record.insert(
            "tokens_per_s".into(),
            json!(output.num_tokens as f64 / step_s),
        );
        // Without fairness examples F is undefined: the keys stay, as null and {}.
        record.entry("fairness_F").or_insert(Value::Null);
        let (means, counts) = group_stats.unwrap_or_default();
        record.insert("group_means".into(), Value::Object(means));
        record.insert("group_counts".into(), Value::Object(counts));
        let eval_now =
            config.eval_every > 0 && (done % config.eval_every == 0 || done == config.steps);
        if eval_now && let Some(eval) = task.evaluate(&model)? {
            for (name, value) in eval {
                record.insert(format!("eval/{name}"), value);
            }
        }
        if done % config.log_every == 0 || done == config.steps || eval_now {
            metrics_log.write(&record)?;
        }
        progress.update(
            done,
            loss,
            values.get("fairness_F").copied(),
            output.num_tokens as f64 / step_s,
        );

        let checkpoint_now = config.checkpoint_every > 0 && done % config.checkpoint_every == 0;
        if checkpoint_now || done == config.steps {
            let state = TrainState {
                step: done,
                fingerprint: config.fingerprint(),
                tokens_seen,
            };
            checkpoint::save(out, &model, &optimizer, &state)?;
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

    checkpoint::save_module(&model, &out.join("model.bpk"))?;
    let hf_dir = out.join("hf");
    task.export(&model, out)?;
    let mut report = Map::new();
    report.insert("task".into(), json!(config.task));
    report.insert("steps".into(), json!(config.steps));
    report.insert("device".into(), json!(selected.describe()));
    report.insert("backend".into(), json!(selected.backend_name()));
    report.insert("final_train_loss".into(), json!(last_loss));
    report.insert("lambda".into(), json!(config.fairness_lambda));
    report.insert("fairness".into(), json!(config.fairness));
    report.insert("fairness_score".into(), json!(config.fairness_score()));
    report.insert("tokens_seen".into(), json!(tokens_seen));
    report.insert("hf_export".into(), json!(hf_dir));
    if config.lora.is_some() {
        report.insert("lora_adapter".into(), json!(out.join("adapter")));
    }
    let (trainable, total) = count_params(&model);
    report.insert("trainable_params".into(), json!(trainable));
    report.insert("total_params".into(), json!(total));
    report.insert("wall_s".into(), json!(wall_s));
    report.insert(
        "tokens_per_s".into(),
        json!(tokens_this_run as f64 / wall_s.max(1e-9)),
    );
    if let Some(eval) = task.evaluate(&model)? {
        for (name, value) in eval {
            report.insert(name, value);
        }
    }
    match task.fairness_eval(&model)? {
        Some(set) => {
            let summary = summarize_fairness(
                &set,
                task.groups(),
                task.fairness_labels(),
                &selected.device,
            )?;
            report.insert("fairness_set".into(), json!(set.name));
            for (name, value) in summary {
                report.insert(name, value);
            }
        }
        None => {
            report.insert("fairness_set".into(), Value::Null);
            report.insert("fairness_F".into(), Value::Null);
            report.insert("group_means".into(), json!({}));
        }
    }
    let report = Value::Object(report);
    checkpoint::write_atomic(
        &out.join("report.json"),
        serde_json::to_string_pretty(&report)
            .expect("report serializes")
            .as_bytes(),
    )?;
    Ok(report)
}

/// Names of the fairness cells: the group names, or `label=y/group` for equalized odds.
pub fn cell_names(groups: &GroupVocab, labels: Option<usize>) -> Vec<String> {
    match labels {
        None => groups.names.clone(),
        Some(num_labels) => (0..num_labels)
            .flat_map(|y| groups.names.iter().map(move |g| format!("label={y}/{g}")))
            .collect(),
    }
}

type GroupStats = (Map<String, Value>, Map<String, Value>);

/// Read the step's scalars (one device→host transfer) and check them.
fn read_step(
    output: &StepOutput,
    groups: &GroupVocab,
    labels: Option<usize>,
) -> Result<(std::collections::BTreeMap<String, f64>, Option<GroupStats>)> {
    let mut names: Vec<String> = vec!["loss".into(), "task_loss".into()];
    let mut parts = vec![
        output.loss.clone().detach(),
        output.task_loss.clone().detach(),
    ];
    if let Some(fairness) = &output.fairness {
        names.push("fairness_F".into());
        parts.push(fairness.penalty.clone().detach());
    }
    for (name, tensor) in &output.metrics {
        names.push((*name).into());
        parts.push(tensor.clone().detach());
    }
    let cells = output
        .fairness
        .as_ref()
        .map(|f| f.cell_means.dims()[0])
        .unwrap_or(0);
    if let Some(fairness) = &output.fairness {
        parts.push(fairness.cell_means.clone().detach());
        parts.push(fairness.cell_counts.clone().detach());
    }
    let data = Tensor::cat(parts, 0).inner().try_into_data().map_err(|e| {
        Error::runtime(format!(
            "reading step results from the device failed: {e:?}"
        ))
    })?;
    let values: Vec<f32> = data
        .try_to_vec::<f32>()
        .map_err(|e| Error::runtime(format!("unexpected step result type: {e:?}")))?;
    let scalars = names
        .into_iter()
        .zip(values.iter())
        .map(|(n, &v)| (n, v as f64))
        .collect::<std::collections::BTreeMap<_, _>>();
    let group_stats = (cells > 0).then(|| {
        let base = values.len() - 2 * cells;
        let mut means = Map::new();
        let mut counts = Map::new();
        for (cell, name) in cell_names(groups, labels).into_iter().enumerate() {
            let count = values[base + cells + cell];
            if count > 0.0 {
                means.insert(name.clone(), json!(values[base + cell] as f64));
                counts.insert(name, json!(count as u64));
            }
        }
        (means, counts)
    });
    Ok((scalars, group_stats))
}

/// F, per-group means and counts, and the demographic-parity gap over a whole fairness set.
/// F is computed by the same op as in training (on the run's device).
pub fn summarize_fairness(
    set: &FairnessSet,
    groups: &GroupVocab,
    labels: Option<usize>,
    device: &Device,
) -> Result<Map<String, Value>> {
    use crate::data::batch::int_vector;
    let scores = Tensor::<1>::from_floats(set.scores.as_slice(), device);
    let group_ids = int_vector(&set.groups, device);
    let label_arg = match (labels, &set.labels) {
        (Some(num_labels), Some(values)) => Some((int_vector(values, device), num_labels)),
        (Some(_), None) => {
            return Err(Error::input(format!(
                "equalized odds needs a \"label\" on every example of the fairness set ({})",
                set.name
            )));
        }
        _ => None,
    };
    let term = crate::objective::penalty(
        scores,
        group_ids,
        groups.len(),
        label_arg,
        crate::kernel::GroupStatsImpl::Auto,
    );
    let penalty = to_host(term.penalty)?[0] as f64;
    let means = to_host(term.cell_means)?;
    let counts = to_host(term.cell_counts)?;
    let mut group_means = Map::new();
    let mut group_counts = Map::new();
    for (cell, name) in cell_names(groups, labels).into_iter().enumerate() {
        if counts[cell] > 0.0 {
            group_means.insert(name.clone(), json!(means[cell] as f64));
            group_counts.insert(name, json!(counts[cell] as u64));
        }
    }
    // The largest max − min of group means (within each label for equalized odds).
    let gap = means
        .chunks(groups.len())
        .zip(counts.chunks(groups.len()))
        .map(|(means, counts)| {
            let present: Vec<f64> = means
                .iter()
                .zip(counts)
                .filter(|(_, c)| **c > 0.0)
                .map(|(m, _)| *m as f64)
                .collect();
            let max = present.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let min = present.iter().cloned().fold(f64::INFINITY, f64::min);
            if present.len() > 1 { max - min } else { 0.0 }
        })
        .fold(0.0, f64::max);
    let mut summary = Map::new();
    summary.insert("fairness_F".into(), json!(penalty));
    summary.insert("group_means".into(), Value::Object(group_means));
    summary.insert("group_counts".into(), Value::Object(group_counts));
    summary.insert("group_gap".into(), json!(gap));
    Ok(summary)
}
