//! Token classification (NER): a BERT encoder with a per-token head, trained on words with BIO
//! tags. Words are split into subwords; a word's tag sits on its first subword and the others are
//! ignored by the loss (−100), as in Hugging Face's token-classification recipe. Evaluation maps
//! the first-subword predictions back to words and scores entities with seqeval's rules.
//!
//! The label set is `O` followed by the sorted tags of the training and evaluation data.
//! Fairness penalties need a per-example score, which token classification does not define yet:
//! such runs are refused rather than run without the penalty.

use std::path::Path;

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde_json::{Map, Value, json};

use super::{FairnessSet, RunDir, StepOutput, TaskRunner, TrainConfig, read_async, report_load};
use crate::data::batch::encoder_batch;
use crate::data::records::{self, TokenExample};
use crate::data::sampler::EpochSampler;
use crate::data::{Encoder, GroupVocab, TruncationStats};
use crate::device::Selected;
use crate::error::{Error, Result};
use crate::metrics::entity_scores;
use crate::model::io::export::ExportHead;
use crate::model::lora::LoraSettings;
use crate::model::{self, ArchConfig, BertClassifier, BertConfig, BertHead, ModelSource};
use crate::objective::losses::token_cross_entropy;
use crate::tokenizer::TextTokenizer;

/// An encoded sentence: token ids, each token's label (−100: not scored), the word tags.
#[derive(Clone)]
struct Sentence {
    ids: Vec<u32>,
    labels: Vec<i64>,
    /// Token index of each kept word's first subword.
    word_starts: Vec<usize>,
    tags: Vec<String>,
}

pub struct NerTask {
    config: TrainConfig,
    arch: BertConfig,
    source: ModelSource,
    labels: Vec<String>,
    pad: u32,
    device: Device,
    train: Vec<Sentence>,
    eval: Vec<Sentence>,
    sampler: EpochSampler,
    groups: GroupVocab,
    tokenizer: TextTokenizer,
}

fn encode(
    encoder: &Encoder,
    rows: &[TokenExample],
    labels: &[String],
    path: &Path,
    max_length: usize,
) -> Result<Vec<Sentence>> {
    let mut stats = TruncationStats::default();
    let sentences = rows
        .iter()
        .map(|row| {
            let (ids, word_of, _) = encoder.words(&row.tokens, &mut stats)?;
            let mut token_labels = vec![-100i64; ids.len()];
            let mut word_starts = Vec::new();
            for (position, word) in word_of.iter().enumerate() {
                if let Some(word) = *word {
                    let tag = &row.tags[word];
                    let id = labels.iter().position(|l| l == tag).ok_or_else(|| {
                        row.origin
                            .error(format!("tag {tag:?} is not in the label set"))
                    })?;
                    token_labels[position] = id as i64;
                    word_starts.push(position);
                }
            }
            Ok(Sentence {
                ids,
                labels: token_labels,
                word_starts,
                tags: row.tags.clone(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    if let Some(warning) = stats.warning(&path.display().to_string(), max_length) {
        eprintln!("{warning} (cut words are scored as predicted \"O\")");
    }
    Ok(sentences)
}

impl NerTask {
    pub fn load(config: &TrainConfig, selected: &Selected) -> Result<Self> {
        if config.fairness_lambda > 0.0
            || config.fairness_data.is_some()
            || config.fairness_eval.is_some()
        {
            return Err(Error::input(
                "--task ner has no fairness score yet: drop --fairness-lambda, \
                 --fairness-data and --fairness-eval",
            ));
        }
        let source = model::locate(&config.model)?;
        let tokenizer = source.open_tokenizer(config.tokenizer.as_deref())?;
        let arch = source.arch(tokenizer.vocab_size())?;
        let ArchConfig::Bert(arch) = arch else {
            return Err(Error::input(format!(
                "--task ner needs an encoder (bert); --model {} is a {} decoder",
                config.model,
                arch.name()
            )));
        };
        config.check_max_length(arch.max_position_embeddings)?;
        let encoder = Encoder::new(&tokenizer, config.max_length, 1)?;

        let train_rows = records::read_token_classification(&config.train)?;
        let eval_rows = config
            .eval
            .as_deref()
            .map(records::read_token_classification)
            .transpose()?
            .unwrap_or_default();
        let mut tags: Vec<String> = train_rows
            .iter()
            .chain(&eval_rows)
            .flat_map(|r| r.tags.iter().cloned())
            .filter(|t| t != "O")
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        tags.insert(0, "O".into());
        let train = encode(
            &encoder,
            &train_rows,
            &tags,
            &config.train,
            config.max_length,
        )?;
        let eval = match &config.eval {
            Some(path) => encode(&encoder, &eval_rows, &tags, path, config.max_length)?,
            None => Vec::new(),
        };
        Ok(Self {
            config: config.clone(),
            arch,
            source,
            labels: tags,
            pad: encoder.special.pad,
            device: selected.device.clone(),
            sampler: EpochSampler::new(train.len(), config.seed).with_order(config.data_order),
            train,
            eval,
            groups: GroupVocab::from_names([]),
            tokenizer,
        })
    }

    /// The label names, `O` first (the head's output order).
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    fn forward(
        model: &BertClassifier,
        batch: &[&Sentence],
        pad: u32,
        device: &Device,
    ) -> (Tensor<3>, Tensor<2, Int>, usize) {
        let ids: Vec<&[u32]> = batch.iter().map(|s| s.ids.as_slice()).collect();
        let inputs = encoder_batch(&ids, pad, device);
        let [rows, width] = inputs.input_ids.dims();
        let mut labels = vec![-100i64; rows * width];
        for (row, sentence) in batch.iter().enumerate() {
            labels[row * width..row * width + sentence.labels.len()]
                .copy_from_slice(&sentence.labels);
        }
        let labels = Tensor::from_data(TensorData::new(labels, [rows, width]), device);
        let logits = model.forward_tokens(inputs.input_ids, inputs.attention_mask);
        (logits, labels, inputs.num_tokens)
    }
}

impl TaskRunner for NerTask {
    type Model = BertClassifier;

    fn init_model(&self, device: &Device) -> Result<BertClassifier> {
        let n = self.labels.len();
        match self.source.weights() {
            Some(dir) => {
                let (model, report) = model::load_bert(dir, n, BertHead::Token, device)?;
                report_load(&report);
                Ok(model)
            }
            None => Ok(self.arch.init(n, BertHead::Token, device)),
        }
    }

    fn prepare(&mut self, _: &BertClassifier, _: RunDir<'_>) -> Result<()> {
        Ok(())
    }

    fn step(&mut self, model: &BertClassifier, step: usize) -> StepOutput {
        let ad_device = self.device.clone().autodiff();
        let indices = self.sampler.batch(step, self.config.batch_size);
        let batch: Vec<&Sentence> = indices.iter().map(|&i| &self.train[i]).collect();
        let (logits, labels, num_tokens) = Self::forward(model, &batch, self.pad, &ad_device);
        let scored = labels.clone().greater_equal_elem(0).float();
        let [rows, width, _] = logits.dims();
        let hits = logits
            .clone()
            .argmax(2)
            .reshape([rows, width])
            .equal(labels.clone())
            .float()
            * scored.clone();
        let accuracy = (hits.sum() / scored.sum().clamp_min(1.0)).reshape([1]);
        let task_loss = token_cross_entropy(logits, labels).reshape([1]);
        StepOutput {
            task_loss,
            fairness: None,
            metrics: vec![("token_accuracy", accuracy)],
            num_tokens,
        }
    }

    async fn evaluate(&mut self, model: &BertClassifier) -> Result<Option<Map<String, Value>>> {
        if self.eval.is_empty() {
            return Ok(None);
        }
        let model = model.valid();
        let mut predicted: Vec<Vec<&str>> = Vec::with_capacity(self.eval.len());
        let (mut loss_sum, mut correct, mut words) = (0.0f64, 0usize, 0usize);
        for chunk in self.eval.chunks(self.config.batch_size) {
            let batch: Vec<&Sentence> = chunk.iter().collect();
            let (logits, labels, _) = Self::forward(&model, &batch, self.pad, &self.device);
            let [rows, width, _] = logits.dims();
            loss_sum += read_async(token_cross_entropy(logits.clone(), labels).reshape([1])).await?
                [0] as f64
                * rows as f64;
            let best: Vec<i64> = logits
                .argmax(2)
                .reshape([rows * width])
                .into_data_async()
                .await
                .map_err(|e| Error::runtime(format!("reading predictions failed: {e:?}")))?
                .convert::<i64>()
                .try_into_vec::<i64>()
                .map_err(|e| Error::runtime(format!("reading predictions failed: {e:?}")))?;
            for (row, sentence) in chunk.iter().enumerate() {
                let mut tags: Vec<&str> = sentence
                    .word_starts
                    .iter()
                    .map(|&position| self.labels[best[row * width + position] as usize].as_str())
                    .collect();
                correct += tags
                    .iter()
                    .zip(&sentence.tags)
                    .filter(|(p, t)| **p == t.as_str())
                    .count();
                words += sentence.tags.len();
                // Words cut by --max-length are predicted "O".
                tags.resize(sentence.tags.len(), "O");
                predicted.push(tags);
            }
        }
        let truth: Vec<Vec<&str>> = self
            .eval
            .iter()
            .map(|s| s.tags.iter().map(String::as_str).collect())
            .collect();
        let scores = entity_scores(&truth, &predicted);
        let mut map = Map::new();
        map.insert("entity_f1".into(), json!(scores.micro.f1));
        map.insert("entity_precision".into(), json!(scores.micro.precision));
        map.insert("entity_recall".into(), json!(scores.micro.recall));
        map.insert(
            "token_accuracy".into(),
            json!(correct as f64 / words.max(1) as f64),
        );
        map.insert("loss".into(), json!(loss_sum / self.eval.len() as f64));
        map.insert("per_type".into(), json!(scores.per_type));
        Ok(Some(map))
    }

    fn apply_lora(&self, model: BertClassifier, lora: &LoraSettings) -> Result<BertClassifier> {
        let head = ["classifier.weight", "classifier.bias"];
        let model = lora.apply(model, &ArchConfig::Bert(self.arch.clone()), &head)?;
        Ok(model.with_lora_dropout(lora.dropout))
    }

    fn export(&self, model: &BertClassifier, out: &Path) -> Result<()> {
        super::export_run(
            model,
            &model.valid().materialize(),
            &ArchConfig::Bert(self.arch.clone()),
            &ExportHead::Token(self.labels.clone()),
            &self.config,
            &self.tokenizer,
            out,
        )
    }

    async fn fairness_eval(&mut self, _: &BertClassifier) -> Result<Option<FairnessSet>> {
        Ok(None)
    }

    fn groups(&self) -> &GroupVocab {
        &self.groups
    }

    fn fairness_labels(&self) -> Option<usize> {
        None
    }
}
