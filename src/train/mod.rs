//! Training: the [`Session`] that turns a task's step into `loss = task + λ·F` (the one place it
//! is formed), backward, global-norm clipping and AdamW under warmup + decay, seeded and exactly
//! resumable; around it, for `fairtune train`, periodic evaluation, atomic checkpoints,
//! `metrics.jsonl` ([`progress`]) and the typed `report.json` ([`report`]).
//!
//! Words used here: a [`Task`] is which job a run does (`--task dpo|classify|ner`); a
//! [`TaskRunner`] is how a task trains (its model, its batches, its loss and metrics), and
//! [`dpo::DpoTask`], [`classify::ClassifyTask`] and [`ner::NerTask`] are the three; the losses
//! themselves are `objective`'s. [`config`] holds every setting with its one default.
//!
//! Why not burn-train's `Learner`: its checkpoints and schedules are per epoch, while a
//! fine-tuning run here is counted in optimizer steps and must resume mid-epoch bit-exactly
//! (data order, dropout and learning rate are all pure functions of (seed, step) below); a step
//! also draws a second, group-balanced fairness batch beside the task batch and, for DPO, runs a
//! frozen reference model — neither fits its one-batch `TrainStep`. The loop is ~300 lines and
//! has no other job; the tasks only say how to turn a batch into a loss (and fairness scores).

pub mod checkpoint;
pub mod classify;
pub mod config;
pub mod dpo;
pub mod fairness_source;
pub mod ner;
pub mod progress;
pub mod report;
pub mod schedule;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use web_time::Instant;

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Int, Tensor};
use serde_json::{Map, Value, json};

pub use config::{Task, TrainConfig};
pub use report::{HeldOut, RunReport};

use crate::data::GroupVocab;
use crate::device::Selected;
use crate::error::{Error, Result};
use crate::fsutil::write_atomic;
use crate::model::lora::LoraSettings;
use crate::objective::FairnessTerm;
use checkpoint::TrainState;
use progress::{MetricsLog, Progress};

/// What a task's step produced, before backward: its own loss and, when the step has fairness
/// examples, their scores. The [`Session`] adds λ·F — the one place `task + λ·F` is formed.
pub struct StepOutput {
    /// The task's loss, scalar `[1]`.
    pub task_loss: Tensor<1>,
    pub fairness: Option<FairnessBatch>,
    /// Scalar `[1]` metrics to log (detached), e.g. TRL's `rewards/margins`.
    pub metrics: Vec<(&'static str, Tensor<1>)>,
    /// Real tokens through the policy this step.
    pub num_tokens: usize,
}

/// A step's fairness examples: their scores (differentiable in the model), group ids (−1: not
/// a fairness example) and, where the examples have them, labels — used when the penalty is
/// equalized odds ([`TaskRunner::fairness_labels`]).
pub struct FairnessBatch {
    pub scores: Tensor<1>,
    pub groups: Vec<i64>,
    pub labels: Option<Tensor<1, Int>>,
}

/// `loss = task + λ·F` for one step, with F's parts.
struct Objective {
    loss: Tensor<1>,
    fairness: Option<FairnessTerm>,
}

impl Objective {
    fn of(
        output: &StepOutput,
        num_groups: usize,
        eo_labels: Option<usize>,
        lambda: f64,
        device: &Device,
    ) -> Self {
        let fairness = output.fairness.as_ref().map(|batch| {
            let labels = eo_labels.zip(batch.labels.clone()).map(|(n, l)| (l, n));
            crate::objective::penalty(
                batch.scores.clone(),
                crate::data::batch::int_vector(&batch.groups, device),
                num_groups.max(1),
                labels,
                crate::group_stats::GroupStatsImpl::Auto,
            )
        });
        let loss = match &fairness {
            Some(term) if lambda > 0.0 => output.task_loss.clone() + term.penalty.clone() * lambda,
            _ => output.task_loss.clone(),
        };
        Self { loss, fairness }
    }
}

/// A task: how a model is built, how a step computes its loss, how a model is evaluated.
// The async methods are only awaited on one thread (the desktop's loop, the browser's event
// loop), so their futures need no `Send` bound.
#[allow(async_fn_in_trait)]
pub trait TaskRunner {
    type Model: Module;

    /// The model: random init, or pretrained weights when `--model` has them.
    fn init_model(&self, device: &Device) -> Result<Self::Model>;
    /// Called once before the first step (e.g. to freeze the DPO reference model), with the run
    /// directory the session keeps its files in, if any.
    fn prepare(&mut self, model: &Self::Model, dir: RunDir<'_>) -> Result<()>;
    fn step(&mut self, model: &Self::Model, step: usize) -> StepOutput;
    /// The gradients of the step's `loss` (from [`Self::step`]) for `model`'s trainable
    /// parameters. A task that recomputes activations in backward does its backward here.
    fn backward(&mut self, model: &Self::Model, loss: &Tensor<1>) -> GradientsParams {
        GradientsParams::from_grads(loss.backward(), model)
    }
    /// Task metrics on the eval set (`None` without one), keys without the `eval/` prefix.
    /// Async: its device reads must not block in a browser (the desktop blocks on it).
    async fn evaluate(&mut self, model: &Self::Model) -> Result<Option<Map<String, Value>>>;
    /// Attach LoRA adapters (after `prepare`, which keeps the un-adapted model as reference).
    fn apply_lora(&self, model: Self::Model, lora: &LoraSettings) -> Result<Self::Model>;
    /// Save `model` as a Hugging Face directory (weights, config, tokenizer) at `out/hf`, LoRA
    /// adapters merged; with LoRA, the adapters alone (PEFT layout) at `out/adapter`.
    fn export(&self, model: &Self::Model, out: &Path) -> Result<()>;
    /// Scores of the report's fairness set: (scores, group ids, labels), or `None` without one.
    async fn fairness_eval(&mut self, model: &Self::Model) -> Result<Option<FairnessSet>>;
    fn groups(&self) -> &GroupVocab;
    /// Label count when the penalty is equalized odds.
    fn fairness_labels(&self) -> Option<usize>;
}

/// Where a session keeps its files.
#[derive(Clone, Copy, Debug)]
pub enum RunDir<'a> {
    /// Nowhere (the browser, `fairtune bench`): nothing is written, a frozen DPO reference stays
    /// in memory.
    None,
    /// A new run's directory.
    New(&'a Path),
    /// The directory of a run that is continued (or, finished, evaluated): what its first start
    /// wrote there is read back, not made again.
    Existing(&'a Path),
}

impl<'a> RunDir<'a> {
    pub fn path(self) -> Option<&'a Path> {
        match self {
            RunDir::None => None,
            RunDir::New(path) | RunDir::Existing(path) => Some(path),
        }
    }
}

/// Where a session draws its initial weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitOn {
    /// On the run's device (pretrained weights are loaded, not drawn: the same everywhere).
    Device,
    /// On the CPU backend, then moved to the device, so that every backend (and the browser)
    /// starts from the same random weights — device random generators differ between backends.
    Host,
}

/// The fairness quantities of a whole evaluation set, scored in batches.
pub struct FairnessSet {
    pub name: String,
    pub scores: Vec<f32>,
    pub groups: Vec<i64>,
    pub labels: Option<Vec<i64>>,
}

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
/// `merged` (the model with adapters folded in) as a Hugging Face directory at `out/hf`.
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
    crate::model::io::export::save_hf(merged, arch, head, tokenizer, &out.join("hf"))
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
    let arch = crate::model::ArchConfig::Llama(arch);
    crate::model::io::export::save_hf(
        &weights,
        &arch,
        &crate::model::io::export::ExportHead::CausalLm,
        &tokenizer,
        out,
    )?;
    Ok(format!(
        "{}: LlamaForCausalLM, {} parameters (fp32), {}",
        out.display(),
        weights.num_params(),
        tokenizer.describe()
    ))
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

/// A vector's values on the host, without blocking: a browser cannot block on a GPU read, so
/// every read in training and evaluation goes through here (the desktop blocks on the future).
pub(crate) async fn read_async(tensor: Tensor<1>) -> Result<Vec<f32>> {
    tensor
        .inner()
        .into_data_async()
        .await
        .map_err(|e| Error::runtime(format!("reading results from the device failed: {e:?}")))?
        .try_to_vec::<f32>()
        .map_err(|e| Error::runtime(format!("unexpected result type: {e:?}")))
}

/// A vector's values on the host, blocking (desktop-only paths).
pub(crate) fn read_blocking(tensor: Tensor<1>) -> Result<Vec<f32>> {
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
struct InitLazyParams;

impl ModuleVisitor for InitLazyParams {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let _ = param.val();
    }
}

/// The seed for step `step`'s randomness (dropout): a function of (seed, step) only.
pub(crate) fn step_seed(seed: u64, step: usize) -> u64 {
    seed.wrapping_mul(0x2545_F491_4F6C_DD1D)
        .wrapping_add(step as u64)
        .rotate_left(17)
}

/// One optimizer step's results, read from the device in one transfer.
pub struct StepReport {
    /// Steps done after this one (1-based).
    pub step: usize,
    /// `loss`, `task_loss`, `fairness_F` (with fairness examples) and the task's metrics.
    pub values: BTreeMap<String, f64>,
    /// Per-cell mean scores and counts of the step's fairness batch.
    pub group_stats: Option<GroupStats>,
    /// The global gradient norm before clipping.
    pub grad_norm: f64,
    pub lr: f64,
    pub num_tokens: usize,
    pub seconds: f64,
}

impl StepReport {
    /// The `metrics.jsonl` record of this step (without evaluation).
    pub fn record(&self, lambda: f64) -> Map<String, Value> {
        let mut record = Map::new();
        record.insert("step".into(), json!(self.step));
        record.insert("lr".into(), json!(self.lr));
        record.insert("lambda".into(), json!(lambda));
        for (name, value) in &self.values {
            record.insert(name.clone(), json!(value));
        }
        record.insert("grad_norm".into(), json!(self.grad_norm));
        record.insert("tokens".into(), json!(self.num_tokens));
        record.insert("seconds".into(), json!(self.seconds));
        record.insert(
            "tokens_per_s".into(),
            json!(self.num_tokens as f64 / self.seconds.max(1e-9)),
        );
        // Without fairness examples F is undefined: the keys stay, as null and {}.
        record.entry("fairness_F").or_insert(Value::Null);
        let (means, counts) = self.group_stats.clone().unwrap_or_default();
        record.insert("group_means".into(), Value::Object(means));
        record.insert("group_counts".into(), Value::Object(counts));
        record
    }
}

/// A run's model, optimizer and step counter: what `fairtune train` and the browser page
/// (`src/apps/web.rs`) both drive, one [`step`](Session::step) at a time, so both run the same
/// training. The desktop adds checkpoints, logs and exports around it.
pub struct Session<T: TaskRunner> {
    pub task: T,
    /// Always `Some` between steps (the optimizer takes the model by value).
    model: Option<T::Model>,
    optimizer: ModuleOptimizer,
    /// The autodiff device.
    device: Device,
    config: TrainConfig,
    next_step: usize,
}

impl<T: TaskRunner> Session<T> {
    /// The model as step 0 sees it: initialized under the run's seed, prepared (e.g. the DPO
    /// reference frozen), LoRA adapters attached.
    pub fn start(
        config: &TrainConfig,
        selected: &Selected,
        mut task: T,
        dir: RunDir<'_>,
        init: InitOn,
    ) -> Result<Self> {
        let host_init = init == InitOn::Host;
        let device = selected.device.clone().autodiff();
        device.seed(config.seed);
        let init_device = if host_init {
            Device::flex().autodiff()
        } else {
            device.clone()
        };
        init_device.seed(config.seed);
        let model = task.init_model(&init_device)?;
        model.visit(&mut InitLazyParams);
        // `fork` (not `to_device`): the moved weights are leaves of the new graph.
        let model = if host_init {
            model.fork(&device)
        } else {
            model
        };
        task.prepare(&model, dir)?;
        let model = match &config.lora {
            Some(lora) => task.apply_lora(model, lora)?,
            None => model,
        };
        let optimizer = AdamWConfig::new()
            .with_weight_decay(config.weight_decay as f32)
            .with_epsilon(1e-8)
            .init();
        Ok(Self {
            task,
            model: Some(model),
            optimizer,
            device,
            config: config.clone(),
            next_step: 0,
        })
    }

    /// Continue from a checkpoint directory: its weights, optimizer state and step.
    fn resume(&mut self, dir: &Path) -> Result<TrainState> {
        let state = checkpoint::read_state(dir)?;
        let model = self.model.take().expect("a model between steps");
        self.model = Some(checkpoint::load_module(model, &dir.join("model.bpk"))?);
        let optimizer = std::mem::replace(&mut self.optimizer, AdamWConfig::new().init());
        self.optimizer = checkpoint::load_optimizer(dir, optimizer)?;
        self.next_step = state.step;
        Ok(state)
    }

    pub fn model(&self) -> &T::Model {
        self.model.as_ref().expect("a model between steps")
    }

    /// The task (mutable, for its evaluations) beside the model.
    pub fn task_and_model(&mut self) -> (&mut T, &T::Model) {
        (
            &mut self.task,
            self.model.as_ref().expect("a model between steps"),
        )
    }

    /// Steps done so far.
    pub fn steps_done(&self) -> usize {
        self.next_step
    }

    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// One optimizer step: the task's loss (task + λ·F), backward, global-norm clipping,
    /// AdamW under the schedule's learning rate. Its randomness (dropout) is a function of
    /// (seed, step) only. One device read per step, awaited (the browser's event loop runs
    /// meanwhile); a non-finite loss or gradient is an error and leaves the model as it was.
    pub async fn step(&mut self) -> Result<StepReport> {
        let step = self.next_step;
        let config = &self.config;
        if step >= config.steps {
            // The schedule ends there; more steps would silently train at a zero learning rate.
            return Err(Error::input(format!(
                "all {} steps of this run are done; start a new run to train more",
                config.steps
            )));
        }
        let started = Instant::now();
        self.device.seed(step_seed(config.seed, step));
        let model = self.model.take().expect("a model between steps");
        let output = self.task.step(&model, step);
        let objective = Objective::of(
            &output,
            self.task.groups().len(),
            self.task.fairness_labels(),
            config.fairness_lambda,
            &self.device,
        );
        let mut grads = self.task.backward(&model, &objective.loss);
        let squared_norm = schedule::squared_grad_norm(&model, &grads);
        let read = read_step(
            &output,
            &objective,
            squared_norm,
            self.task.groups(),
            self.task.fairness_labels(),
        )
        .await;
        let (values, group_stats, grad_norm) = match read {
            Ok(read) => read,
            Err(e) => {
                self.model = Some(model);
                return Err(e);
            }
        };
        let loss = values["loss"];
        if !loss.is_finite() || !grad_norm.is_finite() {
            self.model = Some(model);
            let what = if loss.is_finite() {
                format!("the gradient norm became {grad_norm}")
            } else {
                format!(
                    "the loss became {loss} (task loss {}, F {})",
                    values["task_loss"],
                    values.get("fairness_F").copied().unwrap_or(0.0)
                )
            };
            return Err(Error::runtime(format!(
                "{what} at step {}; lower --lr or --fairness-lambda. \
                 No checkpoint was written for this step.",
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
        self.model = Some(self.optimizer.step(lr, model, grads));
        self.next_step += 1;
        Ok(StepReport {
            step: self.next_step,
            values,
            group_stats,
            grad_norm,
            lr,
            num_tokens: output.num_tokens,
            seconds: started.elapsed().as_secs_f64(),
        })
    }
}

fn train<T: TaskRunner>(config: &TrainConfig, selected: &Selected, task: T) -> Result<RunReport> {
    let out = &config.out;
    let resume_from = config::prepare_out_dir(config, task.groups())?;
    let dir = match resume_from {
        Some(_) => RunDir::Existing(out),
        None => RunDir::New(out),
    };
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
            };
            checkpoint::save(out, session.model(), &session.optimizer, &state)?;
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
        checkpoint::save_module(&model, &out.join("model.bpk"))?;
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
            held_out: pollster::block_on(held_out(&mut task, &model, &selected.device))?,
        })
    })();
    drop(task);
    if trained {
        let state = TrainState {
            step: config.steps,
            fingerprint: config.fingerprint(),
            tokens_seen,
        };
        checkpoint::save(out, &model, &optimizer, &state)?;
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

/// A model's held-out numbers: the task's metrics on its eval set (if any) and, with a
/// fairness set, its name and [`summarize_fairness`]'s F, group means, counts and gap.
/// `device` is the plain (non-autodiff) device of the run.
pub async fn held_out<T: TaskRunner>(
    task: &mut T,
    model: &T::Model,
    device: &Device,
) -> Result<HeldOut> {
    let mut report = HeldOut::default();
    if let Some(metrics) = task.evaluate(model).await? {
        report.metrics = metrics.into_iter().collect();
    }
    if let Some(set) = task.fairness_eval(model).await? {
        let summary =
            summarize_fairness(&set, task.groups(), task.fairness_labels(), device).await?;
        report.fairness_set = Some(set.name);
        report.fairness_f = Some(summary.f);
        report.group_means = summary.means;
        report.group_counts = summary.counts;
        report.group_gap = Some(summary.gap);
    }
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

type StepValues = (BTreeMap<String, f64>, Option<GroupStats>, f64);

/// Read the step's scalars, its fairness cells and the squared gradient norm in one
/// device→host transfer. Returns (scalars, group stats, gradient norm).
async fn read_step(
    output: &StepOutput,
    objective: &Objective,
    squared_grad_norm: Option<Tensor<1>>,
    groups: &GroupVocab,
    labels: Option<usize>,
) -> Result<StepValues> {
    let mut names: Vec<String> = vec!["loss".into(), "task_loss".into()];
    let mut parts = vec![
        objective.loss.clone().detach(),
        output.task_loss.clone().detach(),
    ];
    if let Some(fairness) = &objective.fairness {
        names.push("fairness_F".into());
        parts.push(fairness.penalty.clone().detach());
    }
    for (name, tensor) in &output.metrics {
        names.push((*name).into());
        parts.push(tensor.clone().detach());
    }
    let cells = objective
        .fairness
        .as_ref()
        .map(|f| f.cell_means.dims()[0])
        .unwrap_or(0);
    if let Some(fairness) = &objective.fairness {
        parts.push(fairness.cell_means.clone().detach());
        parts.push(fairness.cell_counts.clone().detach());
    }
    let has_norm = squared_grad_norm.is_some();
    parts.extend(squared_grad_norm);
    let mut values = read_async(Tensor::cat(parts, 0)).await?;
    let grad_norm = if has_norm {
        (values.pop().expect("the squared norm") as f64).sqrt()
    } else {
        0.0
    };
    let scalars = names
        .into_iter()
        .zip(values.iter())
        .map(|(n, &v)| (n, v as f64))
        .collect::<BTreeMap<_, _>>();
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
    Ok((scalars, group_stats, grad_norm))
}

/// F, per-group means and counts, and the demographic-parity gap over a whole fairness set.
/// F is computed by the same op as in training (on the run's device).
pub async fn summarize_fairness(
    set: &FairnessSet,
    groups: &GroupVocab,
    labels: Option<usize>,
    device: &Device,
) -> Result<FairnessSummary> {
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
        crate::group_stats::GroupStatsImpl::Auto,
    );
    let penalty = read_async(term.penalty).await?[0] as f64;
    let means = read_async(term.cell_means).await?;
    let counts = read_async(term.cell_counts).await?;
    let mut group_means = BTreeMap::new();
    let mut group_counts = BTreeMap::new();
    for (cell, name) in cell_names(groups, labels).into_iter().enumerate() {
        if counts[cell] > 0.0 {
            group_means.insert(name.clone(), means[cell] as f64);
            group_counts.insert(name, counts[cell] as u64);
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
    Ok(FairnessSummary {
        f: penalty,
        means: group_means,
        counts: group_counts,
        gap,
    })
}

/// F over a whole fairness set, with its cells' means and counts and the gap.
pub struct FairnessSummary {
    pub f: f64,
    pub means: BTreeMap<String, f64>,
    pub counts: BTreeMap<String, u64>,
    /// The largest max − min of group means (within each label for equalized odds).
    pub gap: f64,
}
