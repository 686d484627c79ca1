//! The [`Session`]: a run's model, optimizer and step counter, and its one optimizer step —
//! `loss = task + λ·F`, backward, global-norm clipping, AdamW under the schedule — which
//! `fairtune train`, `fairtune bench` and the browser page all drive, so all three train alike.

use std::collections::BTreeMap;
use std::path::Path;
use web_time::Instant;

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::{AdamWConfig, ModuleOptimizer};
use burn::tensor::{Device, Tensor};
use serde_json::{Map, Value, json};

use super::checkpoint::{self, TrainState};
use super::held_out::cell_names;
use super::{InitOn, RunDir, StepOutput, TaskRunner, TrainConfig, read_async, schedule};
use crate::data::GroupVocab;
use crate::device::Selected;
use crate::error::{Error, Result};
use crate::objective::{FairnessSpec, FairnessTerm};

/// `loss = task + λ·F` for one step, with F's parts.
struct Objective {
    loss: Tensor<1>,
    fairness: Option<FairnessTerm>,
}

impl Objective {
    fn of(
        output: &StepOutput,
        num_groups: usize,
        labels: Option<usize>,
        spec: FairnessSpec,
        lambda: f64,
        device: &Device,
    ) -> Self {
        let fairness = output.fairness.as_ref().map(|batch| {
            let labels = labels.zip(batch.labels.clone()).map(|(n, l)| (l, n));
            crate::objective::fairness_term(
                spec,
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

/// Makes every lazily initialized parameter take its value now, under the init seed.
struct InitLazyParams;

impl ModuleVisitor for InitLazyParams {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let _ = param.val();
    }
}

/// Mixed into the run's seed for the LoRA adapters' initial values ("LoRA" in ASCII).
const LORA_STREAM: u64 = 0x4C6F_5241;

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
    pub(super) model: Option<T::Model>,
    pub(super) optimizer: ModuleOptimizer,
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
            InitOn::host_device()
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
            Some(lora) => {
                // The adapters draw from a stream of their own, whatever making the model drew
                // (a lazily drawn parameter the checkpoint then replaced, or nothing when the
                // model was kept from an earlier run): the same adapters either way.
                device.seed(config.seed ^ LORA_STREAM);
                task.apply_lora(model, lora)?
            }
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
    pub(super) fn resume(&mut self, dir: &Path) -> Result<TrainState> {
        let state = checkpoint::read_state(dir)?;
        if let Some(task_state) = &state.task {
            self.task.load_state(task_state)?;
        }
        self.task.load_files(dir)?;
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
            config.fairness_spec(),
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
            config.fairness.label_rows(self.task.fairness_labels()),
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
        names.push(name.clone());
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
