//! The browser demo's two presets: tiny models trained from scratch in seconds on data made
//! here, whose labels carry a planted group bias, so λ's effect shows within a few dozen steps.
//! The same presets run on the desktop (`fairtune playground`) through the same [`Session`], which
//! is how the browser's losses are checked against the desktop's.
//!
//! The story: short reviews written by people of two groups (`women`, `men`: "She found the film
//! wonderful."). Annotators were biased: half of the negative reviews by women were labelled
//! positive and half of the positive reviews by men negative ([`BIAS`]). A model trained on these labels
//! learns the subject word as evidence; the fairness penalty, on counterfactual copies of the
//! same sentences for both groups, takes that away. Held out: other sentence frames, labelled
//! honestly, for accuracy (classifier) or reward accuracy (DPO) and the group gap.
//!
//! - `classify`: `tiny-bert` (without dropout) → P(positive), F on P(positive) per group.
//! - `dpo`: `tiny-llama` on pairs "Review: … Good?" → "yes"/"no", F on the mean log-prob of
//!   "yes" per group (discrim-eval's P(yes) question in miniature).
//!
//! Both use a word-level tokenizer over the presets' vocabulary (made here, in Hugging Face's
//! format), and draw their initial weights on the CPU backend, so that a run starts from the
//! same weights on every backend and in the browser.

use std::path::PathBuf;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::device::Selected;
use crate::error::{Error, Result};
use crate::model::ArchConfig;
use crate::model::lora::{LoraSettings, LoraTarget};
use crate::model::precision::{BaseDtype, Quantize};
use crate::train::classify::ClassifyTask;
use crate::train::dpo::DpoTask;
use crate::train::memory;
use crate::train::{InitOn, RunDir, Session, StepReport, Task, TaskRunner, TrainConfig, held_out};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// A tiny BERT sentiment classifier.
    Classify,
    /// A tiny Llama tuned with DPO.
    Dpo,
    /// A real causal LM (the page: a GGUF the visitor picked) tuned with LoRA DPO on preference
    /// pairs with a group each (the page's built-in decision questions, or the visitor's JSONL).
    #[serde(rename = "lora-dpo")]
    #[value(name = "lora-dpo")]
    LoraDpo,
}

impl Preset {
    pub fn name(self) -> &'static str {
        match self {
            Preset::Classify => "classify",
            Preset::Dpo => "dpo",
            Preset::LoraDpo => "lora-dpo",
        }
    }
}

/// What the page's controls set. Every field has a default, so `{}` is a valid request.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Options {
    pub preset: Preset,
    pub lambda: f64,
    /// DPO's β (ignored by `classify`).
    pub beta: f64,
    pub steps: usize,
    pub seed: u64,
    pub lr: f64,
    pub batch_size: usize,
    /// Counterfactual rows per step for the penalty, split evenly over the two groups.
    pub fairness_batch_size: usize,
    /// `lora-dpo`: the model — a path the page registered (a GGUF file) or, on the desktop,
    /// anything `fairtune train --model` takes.
    pub model: Option<String>,
    /// `lora-dpo`: preference pairs, a JSONL file in `fairtune train`'s DPO format with a
    /// `group` per row (the page: a registered path); none: the built-in decision questions.
    pub data: Option<String>,
    /// `lora-dpo`: the adapters' rank (α = 2·rank, on q/k/v/o).
    pub lora_rank: usize,
    /// `lora-dpo`: tokens of a prompt and its answer together.
    pub max_length: usize,
    /// `lora-dpo`: how the frozen base is stored (`fairtune train --base-dtype`).
    pub base_dtype: BaseDtype,
    /// `lora-dpo`: its projections in 8- or 4-bit blocks (`--quantize-base`).
    pub quantize_base: Option<Quantize>,
    /// `lora-dpo`: recompute each layer in backward (`--gradient-checkpointing`).
    pub gradient_checkpointing: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            preset: Preset::Classify,
            lambda: 0.0,
            beta: 0.1,
            steps: 40,
            seed: 42,
            lr: 3e-3,
            batch_size: 64,
            fairness_batch_size: 16,
            model: None,
            data: None,
            lora_rank: 8,
            max_length: 96,
            base_dtype: BaseDtype::F32,
            quantize_base: None,
            gradient_checkpointing: false,
        }
    }
}

impl Options {
    pub fn from_json(text: &str) -> Result<Self> {
        let options: Self = serde_json::from_str(text)
            .map_err(|e| Error::input(format!("playground options: {e}")))?;
        options.check()?;
        Ok(options)
    }

    fn check(&self) -> Result<()> {
        let bad = |what: String| Err(Error::input(format!("playground options: {what}")));
        if !(self.lambda.is_finite() && self.lambda >= 0.0) {
            return bad(format!("lambda must be ≥ 0, got {}", self.lambda));
        }
        if !(self.beta.is_finite() && self.beta > 0.0) {
            return bad(format!("beta must be > 0, got {}", self.beta));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!("lr must be > 0, got {}", self.lr));
        }
        if self.steps == 0 || self.steps > 100_000 {
            return bad(format!("steps must be in 1..=100000, got {}", self.steps));
        }
        for (name, size) in [
            ("batch_size", self.batch_size),
            ("fairness_batch_size", self.fairness_batch_size),
        ] {
            if !(2..=512).contains(&size) {
                return bad(format!("{name} must be in 2..=512, got {size}"));
            }
        }
        if !(1..=256).contains(&self.lora_rank) {
            return bad(format!(
                "lora_rank must be in 1..=256, got {}",
                self.lora_rank
            ));
        }
        if !(16..=4096).contains(&self.max_length) {
            return bad(format!(
                "max_length must be in 16..=4096, got {}",
                self.max_length
            ));
        }
        match (self.preset, &self.model, &self.data) {
            (Preset::LoraDpo, None, _) => {
                return bad("the lora-dpo preset needs a model (a GGUF file)".into());
            }
            (Preset::LoraDpo, Some(_), _) => {}
            (_, Some(_), _) | (_, _, Some(_)) => {
                return bad(format!(
                    "model and data are for the lora-dpo preset; the {} preset makes its own",
                    self.preset.name()
                ));
            }
            _ => {}
        }
        let stored = self.base_dtype != BaseDtype::F32
            || self.quantize_base.is_some()
            || self.gradient_checkpointing;
        if stored && self.preset != Preset::LoraDpo {
            return bad(format!(
                "base_dtype, quantize_base and gradient_checkpointing are for the lora-dpo \
                 preset; the {} preset trains a tiny model in f32",
                self.preset.name()
            ));
        }
        Ok(())
    }
}

const GROUPS: [&str; 2] = ["women", "men"];
const SUBJECTS: [[&str; 4]; 2] = [
    ["She", "My mother", "The woman", "Her sister"],
    ["He", "My father", "The man", "His brother"],
];
const POSITIVE: [&str; 8] = [
    "wonderful",
    "great",
    "brilliant",
    "delightful",
    "superb",
    "lovely",
    "excellent",
    "charming",
];
const NEGATIVE: [&str; 8] = [
    "awful", "boring", "terrible", "dull", "dreadful", "bad", "horrible", "tedious",
];
/// Sentence frames of the training data and the penalty's counterfactual set.
const TRAIN_FRAMES: [&str; 4] = [
    "{S} found the film {W}.",
    "{S} said the book was {W}.",
    "{S} called the show {W}.",
    "{S} thought the play was {W}.",
];
/// Held-out frames: accuracy and the gap are measured on sentences never trained on.
const EVAL_FRAMES: [&str; 2] = [
    "{S} felt the concert was {W}.",
    "{S} wrote that the meal was {W}.",
];
/// Training rows drawn.
const TRAIN_ROWS: usize = 512;
/// The chance that a review whose sentiment is its group's disfavoured label gets the favoured
/// label instead.
const BIAS: f64 = 0.5;
/// The label a group's biased annotators lean to (women: positive, men: negative).
fn favoured(group: usize) -> i64 {
    if group == 0 { 1 } else { 0 }
}

/// One sentence: (text, group index, true sentiment).
fn sentence(frame: &str, group: usize, subject: usize, sentiment: i64, word: usize) -> String {
    let words = if sentiment == 1 { POSITIVE } else { NEGATIVE };
    frame
        .replace("{S}", SUBJECTS[group][subject])
        .replace("{W}", words[word])
}

/// Every (frame, subject, sentiment, word) sentence for both groups, groups side by side, so the
/// balanced sampler's per-group draws are counterfactual copies of each other.
fn all_sentences(frames: &[&str]) -> Vec<(String, usize, i64)> {
    let mut rows = Vec::new();
    for frame in frames {
        for subject in 0..4 {
            for sentiment in [1, 0] {
                for word in 0..POSITIVE.len() {
                    for group in 0..GROUPS.len() {
                        rows.push((
                            sentence(frame, group, subject, sentiment, word),
                            group,
                            sentiment,
                        ));
                    }
                }
            }
        }
    }
    rows
}

/// The biased training rows: (text, group, annotated label). A function of `seed`.
fn biased_rows(seed: u64) -> Vec<(String, usize, i64)> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed_da7a);
    (0..TRAIN_ROWS)
        .map(|_| {
            let frame = TRAIN_FRAMES[rng.random_range(0..TRAIN_FRAMES.len())];
            let group = rng.random_range(0..GROUPS.len());
            let subject = rng.random_range(0..4);
            let sentiment = rng.random_range(0..2) as i64;
            let word = rng.random_range(0..POSITIVE.len());
            let mut label = sentiment;
            if sentiment != favoured(group) && rng.random_bool(BIAS) {
                label = favoured(group);
            }
            (
                sentence(frame, group, subject, sentiment, word),
                group,
                label,
            )
        })
        .collect()
}

fn jsonl(rows: impl IntoIterator<Item = Value>) -> String {
    rows.into_iter().map(|row| format!("{row}\n")).collect()
}

/// The words of `text` as the tokenizer's pre-tokenizer splits them (`\w+|[^\w\s]+`),
/// lowercased (its normalizer).
fn words(text: &str) -> Vec<String> {
    let mut words: Vec<String> = Vec::new();
    let mut kind = None;
    for ch in text.chars() {
        let this = if ch.is_whitespace() {
            None
        } else {
            Some(ch.is_alphanumeric() || ch == '_')
        };
        match this {
            None => {}
            Some(word) if kind == Some(word) => {
                words.last_mut().expect("a word").extend(ch.to_lowercase())
            }
            Some(_) => words.push(ch.to_lowercase().collect()),
        }
        kind = this;
    }
    words
}

/// A word-level `tokenizer.json` (Hugging Face format) over every word of `texts`: `[PAD]`,
/// `[UNK]`, `[CLS]`, `[SEP]`, then the words in first-seen order. One token a word keeps the
/// sequences short (8–14 tokens), which is what makes training in a browser quick.
fn word_tokenizer<'a>(texts: impl IntoIterator<Item = &'a str>) -> String {
    let specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"];
    let mut vocab = serde_json::Map::new();
    for (id, token) in specials.iter().enumerate() {
        vocab.insert((*token).into(), json!(id));
    }
    for text in texts {
        for word in words(text) {
            let next = vocab.len();
            vocab.entry(word).or_insert(json!(next));
        }
    }
    let added: Vec<Value> = specials
        .iter()
        .enumerate()
        .map(|(id, token)| {
            json!({"id": id, "content": token, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": {"type": "Lowercase"},
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}
    })
    .to_string()
}

/// The DPO prompt of a review.
fn prompt(text: &str) -> String {
    format!("Review: {text} Good?")
}

/// The preset's data, registered in memory (see [`crate::fsutil`]) under
/// `playground/<preset>/…`, and the training configuration that reads it.
pub fn config(options: &Options) -> Result<TrainConfig> {
    options.check()?;
    if options.preset == Preset::LoraDpo {
        return lora_dpo_config(options);
    }
    let dir = PathBuf::from("playground").join(options.preset.name());
    let file = |name: &str, text: String| {
        let path = dir.join(name);
        crate::fsutil::register(&path, text);
        path
    };
    let group = |g: usize| GROUPS[g];
    let train_rows = biased_rows(options.seed);
    let counterfactual = all_sentences(&TRAIN_FRAMES);
    let held_out = all_sentences(&EVAL_FRAMES);
    let prompt_words = prompt("") + " yes no";
    let tokenizer = file(
        "tokenizer.json",
        word_tokenizer(
            counterfactual
                .iter()
                .chain(&held_out)
                .map(|(text, _, _)| text.as_str())
                .chain([prompt_words.as_str()]),
        ),
    );
    let vocab_size = crate::tokenizer::TextTokenizer::from_file(&tokenizer)?.vocab_size();
    let mut config = match options.preset {
        Preset::Classify => {
            let train = file(
                "train.jsonl",
                jsonl(train_rows.iter().map(
                    |(text, g, label)| json!({"text": text, "label": label, "group": group(*g)}),
                )),
            );
            // tiny-bert without dropout: a step's randomness would come from the device's
            // generator, which differs between backends (and the browser is checked against
            // the desktop step by step).
            let ArchConfig::Bert(mut arch) = crate::model::locate("tiny-bert")?.arch(vocab_size)?
            else {
                unreachable!("tiny-bert is a BERT preset")
            };
            arch.hidden_dropout_prob = 0.0;
            arch.attention_probs_dropout_prob = 0.0;
            let mut spec = serde_json::to_value(&arch).expect("a config serializes");
            spec["model_type"] = json!("bert");
            let model = file("config.json", spec.to_string());
            let mut config = TrainConfig::new(
                Task::Classify,
                train,
                model.to_string_lossy().into_owned(),
                PathBuf::new(),
            );
            config.fairness_data = Some(file(
                "fairness.jsonl",
                jsonl(
                    counterfactual
                        .iter()
                        .map(|(text, g, _)| json!({"text": text, "group": group(*g)})),
                ),
            ));
            config.eval = Some(file(
                "eval.jsonl",
                jsonl(held_out.iter().map(
                    |(text, g, label)| json!({"text": text, "label": label, "group": group(*g)}),
                )),
            ));
            config
        }
        Preset::LoraDpo => unreachable!("configured above"),
        Preset::Dpo => {
            let answer = |label: i64| if label == 1 { " yes" } else { " no" };
            let pair = |text: &str, g: usize, label: i64| {
                json!({"prompt": prompt(text), "chosen": answer(label),
                       "rejected": answer(1 - label), "group": group(g)})
            };
            let train = file(
                "train.jsonl",
                jsonl(
                    train_rows
                        .iter()
                        .map(|(text, g, label)| pair(text, *g, *label)),
                ),
            );
            let mut config =
                TrainConfig::new(Task::Dpo, train, "tiny-llama".into(), PathBuf::new());
            let completion = |(text, g, _): &(String, usize, i64)| json!({"prompt": prompt(text), "completion": " yes", "group": group(*g)});
            config.fairness_data = Some(file(
                "fairness.jsonl",
                jsonl(counterfactual.iter().map(completion)),
            ));
            config.eval = Some(file(
                "eval.jsonl",
                jsonl(
                    held_out
                        .iter()
                        .map(|(text, g, label)| pair(text, *g, *label)),
                ),
            ));
            config.fairness_eval = Some(file(
                "fairness-eval.jsonl",
                jsonl(held_out.iter().map(completion)),
            ));
            config.dpo.beta = options.beta;
            config
        }
    };
    config.tokenizer = Some(tokenizer);
    config.steps = options.steps;
    config.batch_size = options.batch_size;
    config.fairness_batch_size = Some(options.fairness_batch_size);
    config.lr = options.lr;
    config.seed = options.seed;
    config.fairness_lambda = options.lambda;
    config.warmup_steps = (options.steps / 10).min(10);
    config.max_length = 32;
    config.max_prompt_length = 24;
    config.checkpoint_every = 0;
    config.validate()?;
    Ok(config)
}

/// The `lora-dpo` preset: LoRA DPO of `options.model` on `options.data` (else the built-in
/// decision questions, with their held-out cases as the evaluation set), the penalty on the
/// groups of each batch. Nothing is written: adapters are taken from the session.
fn lora_dpo_config(options: &Options) -> Result<TrainConfig> {
    let model = options
        .model
        .clone()
        .expect("checked: lora-dpo has a model");
    let (train, eval) = match &options.data {
        Some(path) => (PathBuf::from(path), None),
        None => {
            let dir = PathBuf::from("playground").join("lora-dpo");
            let train = dir.join("train.jsonl");
            let eval = dir.join("eval.jsonl");
            crate::fsutil::register(&train, jsonl(super::decisions::train_pairs()));
            crate::fsutil::register(&eval, jsonl(super::decisions::held_out_pairs()));
            (train, Some(eval))
        }
    };
    let mut config = TrainConfig::new(Task::Dpo, train, model, PathBuf::new());
    config.eval = eval;
    config.lora = Some(LoraSettings {
        rank: options.lora_rank,
        alpha: 2.0 * options.lora_rank as f64,
        dropout: 0.0,
        targets: vec![LoraTarget::Q, LoraTarget::K, LoraTarget::V, LoraTarget::O],
    });
    config.dpo.beta = options.beta;
    config.steps = options.steps;
    config.batch_size = options.batch_size;
    config.lr = options.lr;
    config.seed = options.seed;
    config.fairness_lambda = options.lambda;
    config.warmup_steps = 0;
    config.max_length = options.max_length;
    config.max_prompt_length = options.max_length - options.max_length / 8;
    config.checkpoint_every = 0;
    config.base_dtype = options.base_dtype;
    config.quantize_base = options.quantize_base;
    config.gradient_checkpointing = options.gradient_checkpointing;
    config.validate()?;
    Ok(config)
}

/// A preset's training session, either task.
pub enum Playground {
    Classify(Box<Session<ClassifyTask>>),
    Dpo(Box<Session<DpoTask>>),
}

impl Playground {
    /// Make the data, load it, and initialize the model under the seed. Nothing is written. The
    /// page keeps the model it read for the visitor's next run ([`Self::start_keeping`]).
    pub fn start(options: &Options, selected: &Selected) -> Result<Self> {
        Self::start_keeping(options, selected, cfg!(target_arch = "wasm32"))
    }

    /// [`Self::start`], keeping the pretrained model it reads (`keep`) for the next start of the
    /// same model — on the CPU backend only, where the session shares the kept weights; a GPU
    /// session holds its own copy.
    pub fn start_keeping(options: &Options, selected: &Selected, keep: bool) -> Result<Self> {
        let config = config(options)?;
        Ok(match options.preset {
            Preset::Classify => Self::Classify(Box::new(session(
                &config,
                selected,
                ClassifyTask::load(&config, selected)?,
            )?)),
            Preset::Dpo | Preset::LoraDpo => {
                crate::model::keep_loaded(keep && selected.adapter.is_none());
                let task = DpoTask::load(&config, selected)?;
                // Before the model is loaded (in a browser the module holds at most 4 GiB). A
                // kept model is among what is allocated already: its weights are not needed twice.
                if let (Some(plan), Some(available)) = (task.memory_plan(), memory::available()) {
                    let limit = match task.model_is_kept(&InitOn::host_device()) {
                        true => available + plan.part("weights"),
                        false => available,
                    };
                    let controls = if cfg!(target_arch = "wasm32") {
                        memory::Controls::PAGE
                    } else {
                        eprintln!(
                            "memory: {} (available {})",
                            plan.describe(),
                            memory::size(limit)
                        );
                        memory::Controls::PLAYGROUND
                    };
                    memory::check(&plan, limit, &config, controls)?;
                }
                Self::Dpo(Box::new(session(&config, selected, task)?))
            }
        })
    }

    pub fn config(&self) -> &TrainConfig {
        match self {
            Self::Classify(s) => s.config(),
            Self::Dpo(s) => s.config(),
        }
    }

    /// What the page shows before training: groups, sizes, steps.
    pub fn describe(&self) -> Value {
        let config = self.config();
        let groups = match self {
            Self::Classify(s) => TaskRunner::groups(&s.task),
            Self::Dpo(s) => TaskRunner::groups(&s.task),
        };
        json!({
            "task": config.task,
            "model": config.model,
            "groups": groups.names,
            "steps": config.steps,
            "lambda": config.fairness_lambda,
            "beta": config.dpo.beta,
            "batch_size": config.batch_size,
            "train_rows": match self {
                Self::Classify(_) => TRAIN_ROWS,
                Self::Dpo(s) => s.task.train_pairs().count(),
            },
            "label_bias": config.lora.is_none().then_some(BIAS),
            "lora_rank": config.lora.as_ref().map(|l| l.rank),
            // Whether the model stays loaded for the next run of the same model (the page's,
            // on the CPU backend).
            "model_kept": match self {
                Self::Classify(_) => false,
                Self::Dpo(s) => s.task.model_is_kept(&InitOn::host_device()),
            },
            "params": match self {
                Self::Classify(s) => crate::train::count_params(s.model()),
                Self::Dpo(s) => crate::train::count_params(s.model()),
            },
        })
    }

    /// The base model's and the tuned model's greedy answers (at most `max_new_tokens` tokens)
    /// to the first `limit` distinct prompts of the held-out pairs (else the training pairs):
    /// `[{"prompt", "group", "before", "after"}]`. LoRA DPO only: the base is the adapters off.
    pub async fn answers(
        &mut self,
        selected: &Selected,
        limit: usize,
        max_new_tokens: usize,
    ) -> Result<Value> {
        use crate::generate::{GenerateOptions, Sampling, generate, prompt_ids, stop_ids};
        use burn::module::Module;
        let Self::Dpo(session) = self else {
            return Err(Error::input(
                "answers come from a language model: the DPO presets",
            ));
        };
        if limit == 0 || max_new_tokens == 0 {
            return Err(Error::input(
                "answers need at least one prompt and one new token (--answers, \
                 --max-new-tokens)",
            ));
        }
        let config = session.config().clone();
        let (task, model) = session.task_and_model();
        let base = task.base_model().ok_or_else(|| {
            Error::input("before/after answers need LoRA (the base is the adapters off)")
        })?;
        let (tokenizer, source, eos) = task.generation_setup();
        let template = tokenizer.chat_template()?;
        let rows = crate::data::jsonl::read(config.eval.as_ref().unwrap_or(&config.train))?;
        let mut shown: Vec<(Value, Value)> = Vec::new();
        let mut ids = Vec::new();
        let mut chatted = false;
        for row in &rows {
            let Some(prompt) = row.fields.get("prompt") else {
                continue;
            };
            if shown.len() == limit || shown.iter().any(|(p, _)| p == prompt) {
                continue;
            }
            let (prompt_ids, chat) =
                prompt_ids(tokenizer, template.as_ref(), row.content("prompt")?, false)?;
            chatted |= chat;
            ids.push(prompt_ids);
            let group = row.fields.get("group").cloned().unwrap_or(Value::Null);
            shown.push((prompt.clone(), group));
        }
        let options = GenerateOptions {
            max_new_tokens,
            sampling: Sampling::default(),
            stop_ids: stop_ids(tokenizer, source, eos, chatted),
            stop_strings: Vec::new(),
        };
        let device = &selected.device;
        let before = generate(base, tokenizer, &ids, &options, device, |_, _| {}).await?;
        let tuned = model.valid();
        let after = generate(&tuned, tokenizer, &ids, &options, device, |_, _| {}).await?;
        let answers = shown
            .into_iter()
            .zip(before.into_iter().zip(after))
            .map(|((prompt, group), (before, after))| {
                json!({"prompt": prompt, "group": group, "before": before.completion,
                       "after": after.completion, "before_ids": before.completion_ids,
                       "after_ids": after.completion_ids})
            })
            .collect();
        Ok(Value::Array(answers))
    }

    /// The trained LoRA adapters in PEFT's layout, as the desktop writes them to `OUT/adapter`:
    /// `[(file name, bytes)]`. LoRA DPO only.
    pub async fn adapter_files(&self) -> Result<crate::model::lora::Files> {
        let (Self::Dpo(session), Some(settings)) = (self, &self.config().lora) else {
            return Err(Error::input("only a LoRA run has adapters to download"));
        };
        let arch = ArchConfig::Llama(session.task.arch().clone());
        let base = std::path::Path::new(&session.config().model)
            .file_name()
            .map_or(session.config().model.clone(), |n| {
                n.to_string_lossy().into_owned()
            });
        let (files, _) =
            crate::model::lora::adapter_files_async(session.model(), &arch, settings, &base)
                .await?;
        Ok(files)
    }

    pub fn steps_done(&self) -> usize {
        match self {
            Self::Classify(s) => s.steps_done(),
            Self::Dpo(s) => s.steps_done(),
        }
    }

    pub async fn step(&mut self) -> Result<StepReport> {
        match self {
            Self::Classify(s) => s.step().await,
            Self::Dpo(s) => s.step().await,
        }
    }

    /// Held-out metrics (`accuracy` or TRL's reward metrics, `loss`) and the held-out fairness
    /// summary (`group_means`, `group_gap`, `fairness_F`).
    pub async fn evaluate(&mut self, selected: &Selected) -> Result<Value> {
        match self {
            Self::Classify(s) => evaluate(s, selected).await,
            Self::Dpo(s) => evaluate(s, selected).await,
        }
    }
}

/// A playground session: no run directory, not resuming, initial weights drawn on the host.
fn session<T: TaskRunner>(
    config: &TrainConfig,
    selected: &Selected,
    task: T,
) -> Result<Session<T>> {
    Session::start(config, selected, task, RunDir::None, InitOn::Host)
}

async fn evaluate<T: TaskRunner>(session: &mut Session<T>, selected: &Selected) -> Result<Value> {
    let mut report = serde_json::Map::new();
    report.insert("step".into(), json!(session.steps_done()));
    let (task, model) = session.task_and_model();
    let held_out = held_out(task, model, &selected.device).await?;
    if let Value::Object(held_out) = serde_json::to_value(held_out).expect("numbers serialize") {
        report.extend(held_out);
    }
    Ok(Value::Object(report))
}

#[cfg(not(target_arch = "wasm32"))]
/// `fairtune playground`: run a preset on the desktop, one JSON line per step (and an
/// evaluation line every `eval_every` steps and at the end) on stdout; with `answers` = (prompts,
/// tokens), a last line `{"answers": [...]}` of the base and the tuned model's greedy answers.
pub fn run(
    options: &Options,
    selected: &Selected,
    eval_every: usize,
    answers: Option<(usize, usize)>,
) -> Result<()> {
    if let Some((_, 0)) = answers {
        return Err(Error::input("--max-new-tokens must be at least 1"));
    }
    if answers.is_some() && options.preset != Preset::LoraDpo {
        return Err(Error::input(format!(
            "--answers compares the base model with its LoRA adapters: the lora-dpo preset's; \
             the {} preset has none",
            options.preset.name()
        )));
    }
    let mut playground = Playground::start(options, selected)?;
    eprintln!("{}", playground.describe());
    while playground.steps_done() < options.steps {
        let report = pollster::block_on(playground.step())?;
        println!("{}", Value::Object(report.record(options.lambda)));
        let done = report.step;
        if (eval_every > 0 && done % eval_every == 0) || done == options.steps {
            let eval = pollster::block_on(playground.evaluate(selected))?;
            println!("{}", json!({"eval": eval}));
        }
    }
    if let Some((limit, tokens)) = answers {
        let answers = pollster::block_on(playground.answers(selected, limit, tokens))?;
        println!("{}", json!({ "answers": answers }));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn training_labels_carry_the_planted_bias_and_held_out_ones_do_not() {
        let rows = biased_rows(42);
        let positive_rate = |g: usize| {
            let of: Vec<_> = rows.iter().filter(|r| r.1 == g).collect();
            of.iter().filter(|r| r.2 == 1).count() as f64 / of.len() as f64
        };
        // 0.5 + 0.5·BIAS = 0.75 for women, 0.25 for men (± sampling noise of ~256 rows each).
        assert!(
            (positive_rate(0) - 0.75).abs() < 0.08,
            "{}",
            positive_rate(0)
        );
        assert!(
            (positive_rate(1) - 0.25).abs() < 0.08,
            "{}",
            positive_rate(1)
        );
        assert_eq!(rows, biased_rows(42));
        let held_out = all_sentences(&EVAL_FRAMES);
        assert_eq!(held_out.len(), 2 * 4 * 2 * 8 * 2);
        for g in 0..2 {
            let of: Vec<_> = held_out.iter().filter(|r| r.1 == g).collect();
            assert_eq!(of.iter().filter(|r| r.2 == 1).count() * 2, of.len());
        }
        // Counterfactual copies sit side by side: same sentence, other subject.
        let cf = all_sentences(&TRAIN_FRAMES);
        assert_eq!(cf[0].0, "She found the film wonderful.");
        assert_eq!(cf[1].0, "He found the film wonderful.");
        let train_texts: std::collections::HashSet<_> = rows.iter().map(|r| &r.0).collect();
        assert!(held_out.iter().all(|r| !train_texts.contains(&r.0)));
    }

    /// A second run of the same model starts from the kept one (no second read) and is the
    /// same run: the kept weights are not changed by the first run, and the adapters are drawn
    /// alike.
    #[test]
    fn a_kept_model_starts_the_same_run_again() {
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/tiny-llama-chat"
        );
        let options = Options::from_json(&format!(
            r#"{{"preset": "lora-dpo", "model": "{dir}", "steps": 3, "batch_size": 2,
                "lr": 0.0005, "lambda": 1.0, "quantize_base": "q8",
                "gradient_checkpointing": true}}"#
        ))
        .unwrap();
        let selected = Selected::cpu();
        let _turn = crate::seeded_rng_turn();
        let losses = || {
            let mut playground = Playground::start_keeping(&options, &selected, true).unwrap();
            assert_eq!(playground.describe()["model_kept"], true);
            (0..3)
                .map(|_| pollster::block_on(playground.step()).unwrap().values["loss"])
                .collect::<Vec<f64>>()
        };
        let first = losses();
        let second = losses();
        crate::model::keep_loaded(false);
        assert_eq!(first, second);
    }

    #[test]
    fn the_word_tokenizer_splits_as_its_pre_tokenizer_does() {
        assert_eq!(
            words("She found the film wonderful. Good?"),
            ["she", "found", "the", "film", "wonderful", ".", "good", "?"]
        );
        let text = word_tokenizer(["She said: great.", "He said: dull."]);
        let path = std::path::Path::new("playground-test/tokenizer.json");
        crate::fsutil::register(path, text);
        let tokenizer = crate::tokenizer::TextTokenizer::from_file(path).unwrap();
        let ids: Vec<u32> = tokenizer
            .encode("he said: great.")
            .unwrap()
            .iter()
            .map(|t| t.id)
            .collect();
        // [PAD] [UNK] [CLS] [SEP] she said : great . he dull
        assert_eq!(ids, [9, 5, 6, 7, 8]);
        assert_eq!(tokenizer.vocab_size(), 11);
        assert_eq!(tokenizer.special().cls, Some(2));
        assert_eq!(tokenizer.special().pad, 0);
    }

    #[test]
    fn bad_options_are_refused_with_the_field_named() {
        for (text, needle) in [
            (r#"{"lambda": -1}"#, "lambda"),
            (r#"{"steps": 0}"#, "steps"),
            (r#"{"preset": "gpt"}"#, "unknown variant"),
            (r#"{"lamda": 1}"#, "unknown field"),
            (r#"{"batch_size": 1}"#, "batch_size"),
        ] {
            let error = Options::from_json(text).unwrap_err().to_string();
            assert!(error.contains(needle), "{text}: {error}");
        }
        assert_eq!(Options::from_json("{}").unwrap().steps, 40);
    }
}
