//! `OUT/report.json`: what a finished run reports, typed. `fairtune train` writes it; `compare`,
//! the sweep and the demo read it back through [`RunReport::read`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::config::Task;
use crate::error::{Error, Result};
use crate::objective::{FairnessKind, FairnessScore};

/// A finished run's report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    pub task: Task,
    pub steps: usize,
    /// The adapter (or CPU) the run trained on, in words.
    pub device: String,
    /// `wgpu` or `cpu`.
    pub backend: String,
    pub final_train_loss: f64,
    pub lambda: f64,
    pub fairness: FairnessKind,
    pub fairness_score: FairnessScore,
    pub tokens_seen: u64,
    /// The merged model as a Hugging Face directory (`OUT/hf`).
    pub hf_export: PathBuf,
    /// With LoRA: the adapters alone, PEFT's layout (`OUT/adapter`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora_adapter: Option<PathBuf>,
    pub trainable_params: usize,
    pub total_params: usize,
    pub wall_s: f64,
    pub tokens_per_s: f64,
    /// The process's peak resident memory (Linux), device memory included on a software GPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_memory_bytes: Option<u64>,
    /// On wgpu: the device memory burn's pools hold at the end of training (they keep the
    /// pages of the largest step for reuse, so this is the step's peak), in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_memory_bytes: Option<u64>,
    #[serde(flatten)]
    pub held_out: HeldOut,
}

/// A model's held-out numbers: its task's metrics on the eval set, and what the fairness set
/// says (each empty without that set).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HeldOut {
    /// The task's own metrics (as in `metrics.jsonl`, without `eval/`): TRL's reward metrics
    /// and `loss` for dpo; `accuracy`, `loss` for classify; entity P/R/F1, `token_accuracy`,
    /// `loss` and `per_type` for ner.
    #[serde(flatten)]
    pub metrics: BTreeMap<String, Value>,
    /// The fairness set's name (`null` without one).
    pub fairness_set: Option<String>,
    /// F on the fairness set.
    #[serde(rename = "fairness_F")]
    pub fairness_f: Option<f64>,
    /// Mean score per group (per `label=y/group` cell for equalized odds).
    pub group_means: BTreeMap<String, f64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub group_counts: BTreeMap<String, u64>,
    /// The largest max − min of group means (within each label for equalized odds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_gap: Option<f64>,
}

impl HeldOut {
    /// Whether these are the metrics of a loss of unpaired examples (KTO's `kl` among them).
    pub fn is_unpaired(&self) -> bool {
        self.metrics.contains_key("kl")
    }

    /// A task metric that is a number.
    pub fn metric(&self, key: &str) -> Option<f64> {
        self.metrics.get(key).and_then(Value::as_f64)
    }
}

impl RunReport {
    /// `dir/report.json`, with a message that says what is wrong when it is missing or not one.
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join("report.json");
        let text = std::fs::read_to_string(&path).map_err(|e| {
            Error::input(format!(
                "{}: cannot read ({e}); is {} a finished run?",
                path.display(),
                dir.display()
            ))
        })?;
        serde_json::from_str(&text).map_err(|e| {
            Error::input(format!(
                "{}: not a fairtune run report: {e}",
                path.display()
            ))
        })
    }

    /// The task metric a λ sweep trades against the gap, and the table's other columns: each
    /// task's own, so no run shows another task's numbers. `unpaired`: a DPO-task run of a loss
    /// of unpaired examples (KTO), whose metrics are TRL's `KTOTrainer`'s (no reward accuracy).
    pub fn task_columns(task: Task, unpaired: bool) -> &'static [(&'static str, &'static str)] {
        match task {
            Task::Classify => &[("accuracy", "eval accuracy"), ("loss", "eval loss")],
            Task::Dpo if unpaired => &[
                ("rewards/margins", "reward margin"),
                ("kl", "KL z₀"),
                ("loss", "eval loss"),
            ],
            Task::Dpo => &[
                ("rewards/accuracies", "reward acc."),
                ("rewards/margins", "reward margin"),
                ("loss", "eval loss"),
            ],
            Task::Ner => &[
                ("entity_f1", "entity F1"),
                ("token_accuracy", "token acc."),
                ("loss", "eval loss"),
            ],
        }
    }
}
