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
pub mod held_out;
pub mod memory;
pub mod ner;
pub mod progress;
pub mod report;
pub mod run;
pub mod schedule;
pub mod session;

use std::path::Path;

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Int, Tensor};
use serde_json::{Map, Value};

pub use config::{Task, TrainConfig};
pub use held_out::{FairnessSummary, cell_names, held_out, summarize_fairness};
pub use report::{HeldOut, RunReport};
pub(crate) use run::count_params;
pub use run::{export_model, run};
pub(crate) use run::{export_run, report_load};
pub(crate) use session::step_seed;
pub use session::{Session, StepReport};

use crate::data::GroupVocab;
use crate::error::{Error, Result};
use crate::model::lora::LoraSettings;

/// What a task's step produced, before backward: its own loss and, when the step has fairness
/// examples, their scores. The [`Session`] adds λ·F — the one place `task + λ·F` is formed.
pub struct StepOutput {
    /// The task's loss, scalar `[1]`.
    pub task_loss: Tensor<1>,
    pub fairness: Option<FairnessBatch>,
    /// Scalar `[1]` metrics to log (detached), e.g. TRL's `rewards/margins`.
    pub metrics: Vec<(String, Tensor<1>)>,
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
    /// What the run will hold in memory, when the task can say (checked before the model loads).
    fn memory_plan(&self) -> Option<memory::Plan> {
        None
    }
    /// What the run's checkpoints and `model.bpk` record of the model: its trained parameters
    /// alone when the frozen ones are `--model`'s file weights (see [`checkpoint::Contents`]).
    fn record_contents(&self) -> checkpoint::Contents {
        checkpoint::Contents::All
    }
    /// Attach LoRA adapters (after `prepare`, which keeps the un-adapted model as reference).
    fn apply_lora(&self, model: Self::Model, lora: &LoraSettings) -> Result<Self::Model>;
    /// Save `model` as a Hugging Face directory (weights, config, tokenizer) at `out/hf`, LoRA
    /// adapters merged; with LoRA, the adapters alone (PEFT layout) at `out/adapter`.
    fn export(&self, model: &Self::Model, out: &Path) -> Result<()>;
    /// Scores of the report's fairness set: (scores, group ids, labels), or `None` without one.
    async fn fairness_eval(&mut self, model: &Self::Model) -> Result<Option<FairnessSet>>;
    fn groups(&self) -> &GroupVocab;
    /// Label count when the penalty's statistic uses labels (every one but demographic parity).
    fn fairness_labels(&self) -> Option<usize>;
    /// What the penalty equalizes, and how (the run's `--fairness`, `--fairness-penalty`).
    fn fairness_spec(&self) -> crate::objective::FairnessSpec;
    /// What the task carries from step to step besides the model (group-robust DPO's group
    /// weights), saved with every checkpoint so that a resumed run continues exactly.
    fn save_state(&self) -> Result<Option<Value>> {
        Ok(None)
    }
    /// Restore what [`Self::save_state`] saved.
    fn load_state(&mut self, _state: &Value) -> Result<()> {
        Ok(())
    }
    /// Files of the task's own to put into a checkpoint directory being written (TR-DPO's
    /// updated reference model).
    fn save_files(&self, _dir: &Path) -> Result<()> {
        Ok(())
    }
    /// Read back what [`Self::save_files`] wrote into the checkpoint `dir`.
    fn load_files(&mut self, _dir: &Path) -> Result<()> {
        Ok(())
    }
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

impl InitOn {
    /// The device [`InitOn::Host`] draws on: the CPU backend's, recording autodiff graphs.
    pub fn host_device() -> Device {
        Device::flex().autodiff()
    }
}

/// The fairness quantities of a whole evaluation set, scored in batches.
pub struct FairnessSet {
    pub name: String,
    pub scores: Vec<f32>,
    pub groups: Vec<i64>,
    pub labels: Option<Vec<i64>>,
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
