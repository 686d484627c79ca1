//! Every training setting in one place, with its default, validated once, and echoed into
//! `OUT/config.json` so a run can be repeated — or resumed — exactly.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::checkpoint;
use super::schedule::Decay;
use crate::data::sampler::DataOrder;
use crate::data::{GroupVocab, Truncation};
use crate::device::BackendChoice;
use crate::error::{Error, Result};
use crate::fsutil::write_atomic;
use crate::model::lora::LoraSettings;
use crate::model::precision::{BaseDtype, Quantize};
use crate::objective::{DpoConfig, FairnessKind, FairnessScore, FairnessSpec, PenaltyForm};

fn is_f32(dtype: &BaseDtype) -> bool {
    *dtype == BaseDtype::F32
}

fn is_squared(form: &PenaltyForm) -> bool {
    *form == PenaltyForm::Squared
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// Preference tuning of a causal LM (policy + frozen reference).
    Dpo,
    /// Sequence classification with an encoder.
    Classify,
    /// Token classification (NER) with an encoder: `{"tokens", "tags"}` rows, BIO tags.
    Ner,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub task: Task,
    pub train: PathBuf,
    pub eval: Option<PathBuf>,
    pub fairness_data: Option<PathBuf>,
    pub fairness_eval: Option<PathBuf>,
    pub model: String,
    pub tokenizer: Option<PathBuf>,
    pub out: PathBuf,
    pub backend: BackendChoice,
    pub resume: bool,

    pub steps: usize,
    pub batch_size: usize,
    /// Examples per step from `--fairness-data` (default: `batch_size`), split evenly over groups.
    pub fairness_batch_size: Option<usize>,
    pub lr: f64,
    pub warmup_steps: usize,
    pub decay: Decay,
    pub weight_decay: f64,
    /// Global-norm clipping threshold (0 = off).
    pub max_grad_norm: f64,
    pub seed: u64,
    /// The order training walks its examples in.
    #[serde(default)]
    pub data_order: DataOrder,
    pub max_length: usize,
    pub max_prompt_length: usize,
    /// How a dpo sequence longer than `max_length` is cut.
    #[serde(default)]
    pub truncation: Truncation,

    pub dpo: DpoConfig,
    /// Train LoRA adapters instead of every weight (`None`: full fine-tuning).
    #[serde(default)]
    pub lora: Option<LoraSettings>,
    /// DPO: a file of the reference model's log-probs for every train and eval pair, computed
    /// once (and reused by later runs on the same model and data) instead of every step.
    #[serde(default)]
    pub reference_cache: Option<PathBuf>,
    /// Keep only each decoder layer's input and recompute the layer in backward (dpo): far less
    /// memory for activations, one more forward of the policy per step. Not written when off,
    /// so runs from before it existed keep their fingerprint.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub gradient_checkpointing: bool,
    /// How the frozen weights are stored (dpo): the base under LoRA, the reference in full
    /// fine-tuning. Not written when f32, so older runs keep their fingerprint.
    #[serde(default, skip_serializing_if = "is_f32")]
    pub base_dtype: BaseDtype,
    /// The frozen base's projections in 8- or 4-bit blocks (dpo under LoRA). Not written when
    /// off, so older runs keep their fingerprint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantize_base: Option<Quantize>,
    /// The memory a run may take before it is refused (checked before the model loads); not
    /// part of what a run is.
    #[serde(skip)]
    pub memory_limit: super::memory::MemoryLimit,

    pub fairness: FairnessKind,
    /// F's form: squared deviations (the default) or fairret's norm.
    #[serde(default, skip_serializing_if = "is_squared")]
    pub fairness_penalty: PenaltyForm,
    pub fairness_lambda: f64,
    /// Default: `prob` for classify, `logp` for dpo.
    pub fairness_score: Option<FairnessScore>,
    /// The class whose probability is the classifier's score.
    pub positive_class: usize,

    pub eval_every: usize,
    pub log_every: usize,
    pub checkpoint_every: usize,
    /// Test hook: stop (exit 1) right after this step, as a killed run would.
    #[serde(skip)]
    pub halt_after: Option<usize>,
}

impl TrainConfig {
    /// The defaults of every optional setting, for a task and its files.
    pub fn new(task: Task, train: PathBuf, model: String, out: PathBuf) -> Self {
        Self {
            task,
            train,
            eval: None,
            fairness_data: None,
            fairness_eval: None,
            model,
            tokenizer: None,
            out,
            backend: BackendChoice::Auto,
            resume: false,
            steps: 100,
            batch_size: 8,
            fairness_batch_size: None,
            lr: 5e-4,
            warmup_steps: 0,
            decay: Decay::Linear,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            seed: 42,
            data_order: DataOrder::default(),
            max_length: 256,
            max_prompt_length: 128,
            truncation: Truncation::default(),
            dpo: DpoConfig::default(),
            lora: None,
            reference_cache: None,
            gradient_checkpointing: false,
            base_dtype: BaseDtype::F32,
            quantize_base: None,
            memory_limit: Default::default(),
            fairness: FairnessKind::Dp,
            fairness_penalty: PenaltyForm::Squared,
            fairness_lambda: 0.0,
            fairness_score: None,
            positive_class: 1,
            eval_every: 0,
            log_every: 1,
            checkpoint_every: 50,
            halt_after: None,
        }
    }

    /// What the penalty equalizes and how.
    pub fn fairness_spec(&self) -> FairnessSpec {
        FairnessSpec {
            kind: self.fairness,
            form: self.fairness_penalty,
            positive: self.positive_class,
        }
    }

    pub fn fairness_score(&self) -> FairnessScore {
        self.fairness_score.unwrap_or(match self.task {
            Task::Classify | Task::Ner => FairnessScore::Prob,
            Task::Dpo => FairnessScore::Logp,
        })
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::input(m));
        if !(self.fairness_lambda.is_finite() && self.fairness_lambda >= 0.0) {
            return bad(format!(
                "--fairness-lambda must be a non-negative number, got {}",
                self.fairness_lambda
            ));
        }
        if self.steps == 0 {
            return bad("--steps must be at least 1".into());
        }
        if self.batch_size == 0 || self.fairness_batch_size == Some(0) {
            return bad("batch sizes must be at least 1".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!("--lr must be a positive number, got {}", self.lr));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad(format!(
                "--weight-decay must be non-negative, got {}",
                self.weight_decay
            ));
        }
        if !(self.max_grad_norm.is_finite() && self.max_grad_norm >= 0.0) {
            return bad(format!(
                "--max-grad-norm must be non-negative (0 = off), got {}",
                self.max_grad_norm
            ));
        }
        if self.log_every == 0 {
            return bad("--log-every must be at least 1".into());
        }
        self.dpo.validate()?;
        if self.dpo.sync_ref.is_some() && self.reference_cache.is_some() {
            return bad(
                "--sync-ref-model changes the reference during training; its log-probs cannot \
                 be cached (drop --reference-cache)"
                    .into(),
            );
        }
        if let Some(lora) = &self.lora {
            lora.validate()?;
        }
        if self.gradient_checkpointing && self.task != Task::Dpo {
            return bad("--gradient-checkpointing is for --task dpo (the decoder models)".into());
        }
        if self.base_dtype != BaseDtype::F32 {
            let name = self.base_dtype.name();
            if self.task != Task::Dpo {
                return bad(format!(
                    "--base-dtype {name} is for --task dpo (the decoder models)"
                ));
            }
            if self.lora.is_none() && !self.dpo.needs_reference() {
                return bad(format!(
                    "--base-dtype {name} stores the frozen weights: in full fine-tuning that is \
                     the reference model, and this --loss has none (add --lora-rank)"
                ));
            }
        }
        if let Some(quantize) = self.quantize_base {
            let name = quantize.name();
            if self.task != Task::Dpo {
                return bad(format!(
                    "--quantize-base {name} is for --task dpo (the decoder models)"
                ));
            }
            if self.lora.is_none() {
                return bad(format!(
                    "--quantize-base {name} keeps the frozen base in integers, so only LoRA \
                     adapters can train: add --lora-rank (e.g. 16)"
                ));
            }
            if self.dpo.sync_ref.is_some() {
                return bad(format!(
                    "--quantize-base {name}: --sync-ref-model moves the reference toward the \
                     policy, which a quantized base cannot follow; drop one of them"
                ));
            }
        }
        match (self.task, self.fairness_score()) {
            (Task::Classify, score) if score != FairnessScore::Prob => {
                return bad("--fairness-score for classify must be prob".into());
            }
            (Task::Ner, _) if self.fairness.needs_labels() => {
                return bad(
                    "--task ner takes --fairness dp: its fairness examples are sentences, with \
                     no label of their own to condition on"
                        .into(),
                );
            }
            (_, score)
                if matches!(
                    self.fairness,
                    FairnessKind::Tpr
                        | FairnessKind::Fpr
                        | FairnessKind::Ppv
                        | FairnessKind::Accuracy
                ) && score != FairnessScore::Prob =>
            {
                return bad(format!(
                    "--fairness {} treats the score as a probability: use --fairness-score prob",
                    self.fairness.name()
                ));
            }
            (Task::Ner, score) if !matches!(score, FairnessScore::Prob | FairnessScore::Logp) => {
                return bad(
                    "--fairness-score for ner is prob or logp (of the entity words' gold tags)"
                        .into(),
                );
            }
            (Task::Dpo, score) if score.of_pairs() && self.fairness_data.is_some() => {
                return bad(format!(
                    "--fairness-score {} scores preference pairs: put \"group\" on the \
                     --train (and --eval) pairs instead of --fairness-data",
                    score.name()
                ));
            }
            (Task::Dpo, score)
                if (score == FairnessScore::Reward || score.of_pairs())
                    && !self.dpo.needs_reference() =>
            {
                return bad(
                    "--fairness-score reward needs a reference model; --loss simpo has none".into(),
                );
            }
            _ => {}
        }
        Ok(())
    }

    /// `--max-length` must fit the model's positions (`limit`, read from config.json's `key`).
    pub fn check_max_length(&self, limit: usize, key: &str) -> Result<()> {
        if self.max_length > limit {
            return Err(Error::input(format!(
                "--max-length {} exceeds the model's {key} {limit}",
                self.max_length
            )));
        }
        Ok(())
    }

    /// The settings a resumed run must share with the run it continues (everything that shapes
    /// the trajectory; `steps` may grow, logging and the device may change).
    pub fn fingerprint(&self) -> String {
        let mut value = serde_json::to_value(self).expect("config serializes");
        if let Some(map) = value.as_object_mut() {
            for volatile in [
                "steps",
                "resume",
                "backend",
                "eval_every",
                "log_every",
                "checkpoint_every",
                "out",
                "reference_cache",
            ] {
                map.remove(volatile);
            }
        }
        value.to_string()
    }
}

/// Check `OUT` against `--resume` and write `OUT/config.json`. Returns the checkpoint to resume
/// from. Nothing the user had is overwritten: a directory holding a run is only reused with
/// `--resume`, and then only for the same settings.
pub fn prepare_out_dir(config: &TrainConfig, groups: &GroupVocab) -> Result<Option<PathBuf>> {
    let out = &config.out;
    let config_path = out.join("config.json");
    let holds_run = config_path.exists() || checkpoint::checkpoints_dir(out).exists();
    if !config.resume {
        if holds_run || out.join("report.json").exists() {
            return Err(Error::input(format!(
                "{} already holds a training run; pass --resume to continue it, or choose another --out",
                out.display()
            )));
        }
        if out.is_file() {
            return Err(Error::input(format!("--out {} is a file", out.display())));
        }
        std::fs::create_dir_all(out).map_err(|e| {
            Error::input(format!(
                "{}: cannot create output directory: {e}",
                out.display()
            ))
        })?;
        write_config(&config_path, config, groups)?;
        return Ok(None);
    }

    let Some(dir) = checkpoint::latest(out)? else {
        return Err(Error::input(format!(
            "--resume: {} has no checkpoint to resume from",
            out.display()
        )));
    };
    let state = checkpoint::read_state(&dir)?;
    if state.fingerprint != config.fingerprint() {
        let previous: serde_json::Value =
            serde_json::from_str(&state.fingerprint).unwrap_or(serde_json::Value::Null);
        let current: serde_json::Value =
            serde_json::from_str(&config.fingerprint()).unwrap_or(serde_json::Value::Null);
        let changed: Vec<String> = match (previous.as_object(), current.as_object()) {
            (Some(a), Some(b)) => b
                .iter()
                .filter(|(k, v)| a.get(*k) != Some(*v))
                .map(|(k, _)| k.clone())
                .collect(),
            _ => vec!["(unreadable)".into()],
        };
        return Err(Error::input(format!(
            "--resume: settings differ from the run in {} ({}); only --steps and logging may change",
            out.display(),
            changed.join(", ")
        )));
    }
    if state.step >= config.steps {
        return Err(Error::input(format!(
            "--resume: the run in {} already completed {} of --steps {}; raise --steps to train further",
            out.display(),
            state.step,
            config.steps
        )));
    }
    write_config(&config_path, config, groups)?;
    let report = out.join("report.json");
    if report.exists() {
        // The old report describes fewer steps; it will be rewritten at the end.
        std::fs::remove_file(&report)
            .map_err(|e| Error::runtime(format!("{}: {e}", report.display())))?;
    }
    Ok(Some(dir))
}

fn write_config(path: &Path, config: &TrainConfig, groups: &GroupVocab) -> Result<()> {
    let value = serde_json::json!({
        "config": config,
        "groups": groups.names,
        "fairness_score": config.fairness_score(),
        "fairtune_version": env!("CARGO_PKG_VERSION"),
    });
    write_atomic(
        path,
        serde_json::to_string_pretty(&value)
            .expect("config serializes")
            .as_bytes(),
    )
}
