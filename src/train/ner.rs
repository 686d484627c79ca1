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

use super::fairness_source::{FairnessSource, check_cells};
use super::{
    FairnessBatch, FairnessSet, RunDir, StepOutput, TaskRunner, TrainConfig, checkpoint,
    read_async, report_load,
};
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
use crate::objective::FairnessScore;
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
    /// Group id (−1: none, or no entity word to score).
    group: i64,
}

impl Sentence {
    /// The token positions of its (kept) entity words' first subwords: where its fairness score
    /// is read.
    fn entity_positions(&self) -> impl Iterator<Item = usize> + '_ {
        self.word_starts
            .iter()
            .zip(&self.tags)
            .filter(|(_, tag)| *tag != "O")
            .map(|(&position, _)| position)
    }
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
    fairness: FairnessSource<Sentence>,
    /// The set the report's fairness numbers (F, group means, per-group entity recall) are
    /// measured on.
    fairness_eval: Option<(String, Vec<Sentence>)>,
    groups: GroupVocab,
    tokenizer: TextTokenizer,
}

fn encode(
    encoder: &Encoder,
    rows: &[TokenExample],
    labels: &[String],
    groups: &GroupVocab,
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
            let mut sentence = Sentence {
                ids,
                labels: token_labels,
                word_starts,
                tags: row.tags.clone(),
                group: -1,
            };
            if let Some(group) = &row.group
                && sentence.entity_positions().next().is_some()
            {
                sentence.group = groups.id(group).ok_or_else(|| {
                    row.origin.error(format!(
                        "group {group:?} is not among the fairness groups ({})",
                        groups.names.join(", ")
                    ))
                })? as i64;
            }
            Ok(sentence)
        })
        .collect::<Result<Vec<_>>>()?;
    if let Some(warning) = stats.warning(&path.display().to_string(), max_length) {
        eprintln!("{warning} (cut words are scored as predicted \"O\")");
    }
    Ok(sentences)
}

impl NerTask {
    pub fn load(config: &TrainConfig, selected: &Selected) -> Result<Self> {
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
        config.check_max_length(arch.max_position_embeddings, "max_position_embeddings")?;
        let encoder = Encoder::new(&tokenizer, config.max_length, 1)?;

        let train_rows = records::read_token_classification(&config.train)?;
        let eval_rows = config
            .eval
            .as_deref()
            .map(records::read_token_classification)
            .transpose()?
            .unwrap_or_default();
        let read = |path: &Option<std::path::PathBuf>| {
            path.as_deref()
                .map(records::read_token_classification)
                .transpose()
        };
        let (fairness_rows, fairness_eval_rows) =
            (read(&config.fairness_data)?, read(&config.fairness_eval)?);
        // Groups as classify finds them: the separate set's, else the training rows'.
        let groups = match &fairness_rows {
            Some(rows) => GroupVocab::from_names(rows.iter().filter_map(|r| r.group.as_deref())),
            None => GroupVocab::from_names(train_rows.iter().filter_map(|r| r.group.as_deref())),
        };
        check_cells(&groups, None)?;
        let mut tags: Vec<String> = train_rows
            .iter()
            .chain(&eval_rows)
            .chain(fairness_rows.iter().flatten())
            .chain(fairness_eval_rows.iter().flatten())
            .flat_map(|r| r.tags.iter().cloned())
            .filter(|t| t != "O")
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        tags.insert(0, "O".into());
        let encode_file = |rows: &[TokenExample], path: &Path| {
            encode(&encoder, rows, &tags, &groups, path, config.max_length)
        };
        // A fairness file's every sentence needs a group and an entity word to score.
        let fairness_file = |rows: &[TokenExample], path: &Path, flag: &str| {
            let sentences = encode_file(rows, path)?;
            if let Some((row, _)) = rows.iter().zip(&sentences).find(|(_, s)| s.group < 0) {
                return Err(row.origin.error(format!(
                    "a {flag} sentence needs a \"group\" and an entity (a tag other than O) \
                     to score"
                )));
            }
            Ok(sentences)
        };
        let train = encode_file(&train_rows, &config.train)?;
        let eval = match &config.eval {
            Some(path) => encode_file(&eval_rows, path)?,
            None => Vec::new(),
        };
        let separate = match (&fairness_rows, &config.fairness_data) {
            (Some(rows), Some(path)) => {
                let sentences = fairness_file(rows, path, "--fairness-data")?;
                let ids = sentences.iter().map(|s| s.group as usize).collect();
                Some((sentences, ids))
            }
            _ => None,
        };
        let train_has_groups = train.iter().any(|s| s.group >= 0);
        let fairness = FairnessSource::new(config, separate, train_has_groups, &groups)?;
        let explicit = match (&fairness_eval_rows, &config.fairness_eval) {
            (Some(rows), Some(path)) => Some(fairness_file(rows, path, "--fairness-eval")?),
            _ => None,
        };
        let grouped = |set: &[Sentence]| set.iter().filter(|s| s.group >= 0).cloned().collect();
        let fairness_eval = fairness.report_set(explicit, grouped(&eval), || grouped(&train));
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
            fairness,
            fairness_eval,
            groups,
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

impl NerTask {
    /// Each sentence's fairness score (Mishra et al. 2020's question: are one group's names
    /// recognized less well?): the mean over its entity words of P(gold tag) at the word's first
    /// subword (`logp`: of log P(gold tag)). Differentiable in `logits` `[rows, width, labels]`.
    fn scores(&self, logits: Tensor<3>, batch: &[&Sentence], device: &Device) -> Tensor<1> {
        let [rows, width, _] = logits.dims();
        let mut gold = vec![0i64; rows * width];
        let mut mask = vec![0f32; rows * width];
        for (row, sentence) in batch.iter().enumerate() {
            for position in sentence.entity_positions() {
                gold[row * width + position] = sentence.labels[position];
                mask[row * width + position] = 1.0;
            }
        }
        let gold = Tensor::<3, Int>::from_data(TensorData::new(gold, [rows, width, 1]), device);
        let mask = Tensor::<2>::from_data(TensorData::new(mask, [rows, width]), device);
        let logp = burn::tensor::activation::log_softmax(logits, 2)
            .gather(2, gold)
            .reshape([rows, width]);
        let value = match self.config.fairness_score() {
            FairnessScore::Logp => logp,
            _ => logp.exp(),
        };
        let count = mask.clone().sum_dim(1).clamp_min(1.0);
        ((value * mask).sum_dim(1) / count).reshape([rows])
    }

    /// The predicted tag of every word of `sentences` (words cut by --max-length: "O"), with the
    /// mean token cross-entropy per sentence summed.
    async fn predict(
        &self,
        model: &BertClassifier,
        sentences: &[Sentence],
    ) -> Result<(Vec<Vec<String>>, f64)> {
        let mut predicted = Vec::with_capacity(sentences.len());
        let mut loss_sum = 0.0f64;
        for chunk in sentences.chunks(self.config.batch_size) {
            let batch: Vec<&Sentence> = chunk.iter().collect();
            let (logits, labels, _) = Self::forward(model, &batch, self.pad, &self.device);
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
                let mut tags: Vec<String> = sentence
                    .word_starts
                    .iter()
                    .map(|&position| self.labels[best[row * width + position] as usize].clone())
                    .collect();
                tags.resize(sentence.tags.len(), "O".into());
                predicted.push(tags);
            }
        }
        Ok((predicted, loss_sum))
    }
}

fn as_strs(tags: &[Vec<String>]) -> Vec<Vec<&str>> {
    tags.iter()
        .map(|t| t.iter().map(String::as_str).collect())
        .collect()
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
        let (logits, labels, mut num_tokens) = Self::forward(model, &batch, self.pad, &ad_device);
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
        let in_batch = matches!(self.fairness, FairnessSource::InBatch);
        let fairness = match self.fairness.draw(step) {
            Some(drawn) => {
                let drawn: Vec<&Sentence> = drawn.iter().collect();
                let (logits, _, tokens) = Self::forward(model, &drawn, self.pad, &ad_device);
                num_tokens += tokens;
                Some(FairnessBatch {
                    scores: self.scores(logits, &drawn, &ad_device),
                    groups: drawn.iter().map(|s| s.group).collect(),
                    labels: None,
                })
            }
            None if in_batch => Some(FairnessBatch {
                scores: self.scores(logits.clone(), &batch, &ad_device),
                groups: batch.iter().map(|s| s.group).collect(),
                labels: None,
            }),
            None => None,
        };
        let task_loss = token_cross_entropy(logits, labels).reshape([1]);
        StepOutput {
            task_loss,
            fairness,
            metrics: vec![("token_accuracy".into(), accuracy)],
            num_tokens,
        }
    }

    async fn evaluate(&mut self, model: &BertClassifier) -> Result<Option<Map<String, Value>>> {
        let model = model.valid();
        let mut map = Map::new();
        if !self.eval.is_empty() {
            let (predicted, loss_sum) = self.predict(&model, &self.eval).await?;
            let truth: Vec<Vec<String>> = self.eval.iter().map(|s| s.tags.clone()).collect();
            let (correct, words) = truth
                .iter()
                .zip(&predicted)
                .flat_map(|(t, p)| t.iter().zip(p))
                .fold((0usize, 0usize), |(c, n), (t, p)| {
                    (c + usize::from(t == p), n + 1)
                });
            let scores = entity_scores(&as_strs(&truth), &as_strs(&predicted));
            map.insert("entity_f1".into(), json!(scores.micro.f1));
            map.insert("entity_precision".into(), json!(scores.micro.precision));
            map.insert("entity_recall".into(), json!(scores.micro.recall));
            map.insert(
                "token_accuracy".into(),
                json!(correct as f64 / words.max(1) as f64),
            );
            map.insert("loss".into(), json!(loss_sum / self.eval.len() as f64));
            map.insert("per_type".into(), json!(scores.per_type));
        }
        // Entity recall per group on the fairness set, and its gap: how well each group's
        // entities (names) are found.
        if let Some((_, sentences)) = &self.fairness_eval {
            let (predicted, _) = self.predict(&model, sentences).await?;
            let mut recall = Map::new();
            let mut values = Vec::new();
            for (group, name) in self.groups.names.iter().enumerate() {
                let rows: Vec<usize> = (0..sentences.len())
                    .filter(|&i| sentences[i].group == group as i64)
                    .collect();
                if rows.is_empty() {
                    continue;
                }
                let truth: Vec<Vec<&str>> = rows
                    .iter()
                    .map(|&i| sentences[i].tags.iter().map(String::as_str).collect())
                    .collect();
                let guess: Vec<Vec<&str>> = rows
                    .iter()
                    .map(|&i| predicted[i].iter().map(String::as_str).collect())
                    .collect();
                let r = entity_scores(&truth, &guess).micro.recall;
                recall.insert(name.clone(), json!(r));
                values.push(r);
            }
            let gap = values.iter().cloned().fold(f64::NEG_INFINITY, f64::max)
                - values.iter().cloned().fold(f64::INFINITY, f64::min);
            map.insert("group_entity_recall".into(), Value::Object(recall));
            if values.len() > 1 {
                map.insert("entity_recall_gap".into(), json!(gap));
            }
        }
        Ok((!map.is_empty()).then_some(map))
    }

    fn record_contents(&self) -> checkpoint::Contents {
        if self.source.has_weights() {
            checkpoint::Contents::Trained
        } else {
            checkpoint::Contents::All
        }
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

    async fn fairness_eval(&mut self, model: &BertClassifier) -> Result<Option<FairnessSet>> {
        let Some((name, sentences)) = &self.fairness_eval else {
            return Ok(None);
        };
        let model = model.valid();
        let mut scores = Vec::with_capacity(sentences.len());
        for chunk in sentences.chunks(self.config.batch_size) {
            let batch: Vec<&Sentence> = chunk.iter().collect();
            let (logits, _, _) = Self::forward(&model, &batch, self.pad, &self.device);
            scores.extend(read_async(self.scores(logits, &batch, &self.device)).await?);
        }
        Ok(Some(FairnessSet {
            name: name.clone(),
            scores,
            groups: sentences.iter().map(|s| s.group).collect(),
            labels: None,
        }))
    }

    fn groups(&self) -> &GroupVocab {
        &self.groups
    }

    fn fairness_spec(&self) -> crate::objective::FairnessSpec {
        self.config.fairness_spec()
    }

    fn fairness_labels(&self) -> Option<usize> {
        None
    }
}
