//! The classification task: a BERT-family encoder with a sequence-classification head,
//! cross-entropy, and the fairness penalty on P(positive class) — over the task batch's grouped
//! rows or a separate group-tagged `{"text","group"}` set drawn alongside (as MinDiff does).

use std::path::Path;

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor};
use serde_json::{Map, Value, json};

use super::fairness_source::{FairnessSource, check_cells};
use super::{
    FairnessBatch, FairnessSet, RunDir, StepOutput, TaskRunner, TrainConfig, checkpoint,
    read_async, read_blocking, report_load,
};
use crate::data::batch::{encoder_batch, int_vector};
use crate::data::records::{self, ClassifyExample};
use crate::data::sampler::EpochSampler;
use crate::data::{Encoder, GroupVocab, TruncationStats};
use crate::device::Selected;
use crate::error::{Error, Result};
use crate::model::lora::LoraSettings;
use crate::model::{self, ArchConfig, BertClassifier, BertConfig, BertHead, ModelSource};
use crate::objective::FairnessKind;
use crate::objective::losses::{class_probability, cross_entropy};
use crate::tokenizer::TextTokenizer;

#[derive(Clone)]
struct Encoded {
    ids: Vec<u32>,
    label: Option<i64>,
    group: i64,
}

pub struct ClassifyTask {
    config: TrainConfig,
    arch: BertConfig,
    source: ModelSource,
    num_labels: usize,
    pad: u32,
    device: Device,
    train: Vec<Encoded>,
    eval: Vec<Encoded>,
    sampler: EpochSampler,
    fairness: FairnessSource<Encoded>,
    fairness_eval: Option<(String, Vec<Encoded>)>,
    groups: GroupVocab,
    /// The label count, when the penalty's statistic reads labels.
    fairness_labels: Option<usize>,
    tokenizer: TextTokenizer,
}

fn encode(
    encoder: &Encoder,
    rows: &[ClassifyExample],
    groups: &GroupVocab,
    num_labels: Option<usize>,
    path: &Path,
    max_length: usize,
) -> Result<Vec<Encoded>> {
    let mut stats = TruncationStats::default();
    let encoded = rows
        .iter()
        .map(|row| {
            if let (Some(label), Some(n)) = (row.label, num_labels)
                && label >= n
            {
                return Err(row.origin.error(format!(
                    "label {label} is outside the training labels 0..{}",
                    n - 1
                )));
            }
            Ok(Encoded {
                ids: encoder.classification(&row.text, &mut stats)?,
                label: row.label.map(|l| l as i64),
                group: match &row.group {
                    Some(name) => groups.id_at(name, &row.origin)? as i64,
                    None => -1,
                },
            })
        })
        .collect::<Result<Vec<_>>>()?;
    if let Some(warning) = stats.warning(&path.display().to_string(), max_length) {
        eprintln!("{warning}");
    }
    Ok(encoded)
}

fn require_labels(
    examples: &[Encoded],
    rows: &[ClassifyExample],
    what: &str,
    kind: FairnessKind,
) -> Result<()> {
    for (example, row) in examples.iter().zip(rows) {
        if example.group >= 0 && example.label.is_none() {
            return Err(row.origin.error(format!(
                "--fairness {} needs a \"label\" on every {what} example",
                kind.name()
            )));
        }
    }
    Ok(())
}

impl ClassifyTask {
    pub fn load(config: &TrainConfig, selected: &Selected) -> Result<Self> {
        let source = model::locate(&config.model)?;
        let tokenizer = source.open_tokenizer(config.tokenizer.as_deref())?;
        let arch = source.arch(tokenizer.vocab_size())?;
        let ArchConfig::Bert(arch) = arch else {
            return Err(Error::input(format!(
                "--task classify needs an encoder (bert); --model {} is a {} decoder",
                config.model,
                arch.name()
            )));
        };
        config.check_max_length(arch.max_position_embeddings, "max_position_embeddings")?;
        let encoder = Encoder::new(
            &tokenizer,
            config.max_length,
            config.max_prompt_length.min(config.max_length - 1),
        )?;

        let train_rows = records::read_classification(&config.train, true)?;
        // A fine-tuned checkpoint fixes its label count (config.json's id2label).
        let head_labels = source
            .weights()
            .and_then(|dir| std::fs::read_to_string(dir.join("config.json")).ok())
            .and_then(|text| serde_json::from_str::<Value>(&text).ok())
            .and_then(|config| config.get("id2label")?.as_object().map(|m| m.len()))
            .unwrap_or(0);
        let num_labels = train_rows
            .iter()
            .filter_map(|r| r.label)
            .max()
            .map_or(2, |max| (max + 1).max(2))
            .max(head_labels);
        if config.positive_class >= num_labels {
            return Err(Error::input(format!(
                "--positive-class {} is not a class of the training data (labels 0..{})",
                config.positive_class,
                num_labels - 1
            )));
        }
        let fairness_rows = config
            .fairness_data
            .as_deref()
            .map(records::read_classification_fairness)
            .transpose()?;
        let groups = match &fairness_rows {
            Some(rows) => GroupVocab::from_names(rows.iter().filter_map(|r| r.group.as_deref())),
            None => GroupVocab::from_names(train_rows.iter().filter_map(|r| r.group.as_deref())),
        };
        let train = encode(
            &encoder,
            &train_rows,
            &groups,
            Some(num_labels),
            &config.train,
            config.max_length,
        )?;

        // Every statistic but demographic parity reads the fairness examples' labels.
        let labelled = config.fairness.needs_labels();
        // A group-tagged fairness file (`--fairness-data` or `--fairness-eval`), encoded.
        let fairness_file =
            |rows: &[ClassifyExample], path: &Path, flag: &str| -> Result<Vec<Encoded>> {
                let examples = encode(
                    &encoder,
                    rows,
                    &groups,
                    Some(num_labels),
                    path,
                    config.max_length,
                )?;
                if labelled {
                    require_labels(&examples, rows, flag, config.fairness)?;
                }
                Ok(examples)
            };
        let separate = match (&fairness_rows, &config.fairness_data) {
            (Some(rows), Some(path)) => {
                let examples = fairness_file(rows, path, "--fairness-data")?;
                let ids = examples.iter().map(|e| e.group as usize).collect();
                Some((examples, ids))
            }
            _ => None,
        };
        let train_has_groups = train.iter().any(|e| e.group >= 0);
        check_cells(&groups, config.fairness.label_rows(Some(num_labels)))?;
        let fairness = FairnessSource::new(config, separate, train_has_groups, &groups)?;

        let eval = match &config.eval {
            Some(path) => {
                let rows = records::read_classification(path, true)?;
                encode(
                    &encoder,
                    &rows,
                    &groups,
                    Some(num_labels),
                    path,
                    config.max_length,
                )?
            }
            None => Vec::new(),
        };
        let explicit = config
            .fairness_eval
            .as_deref()
            .map(|path| {
                fairness_file(
                    &records::read_classification_fairness(path)?,
                    path,
                    "--fairness-eval",
                )
            })
            .transpose()?;
        let grouped = |rows: &[Encoded]| rows.iter().filter(|e| e.group >= 0).cloned().collect();
        let fairness_eval = fairness.report_set(explicit, grouped(&eval), || grouped(&train));

        Ok(Self {
            config: config.clone(),
            arch,
            source,
            num_labels,
            pad: encoder.special.pad,
            device: selected.device.clone(),
            sampler: EpochSampler::new(train.len(), config.seed).with_order(config.data_order),
            train,
            eval,
            fairness,
            fairness_eval,
            groups,
            fairness_labels: labelled.then_some(num_labels),
            tokenizer,
        })
    }

    fn logits(
        model: &BertClassifier,
        examples: &[&Encoded],
        pad: u32,
        device: &Device,
    ) -> (Tensor<2>, usize) {
        let ids: Vec<&[u32]> = examples.iter().map(|e| e.ids.as_slice()).collect();
        let batch = encoder_batch(&ids, pad, device);
        (
            model.forward_sequence(batch.input_ids, batch.attention_mask),
            batch.num_tokens,
        )
    }

    fn labels(examples: &[&Encoded], device: &Device) -> Tensor<1, Int> {
        let labels: Vec<i64> = examples.iter().map(|e| e.label.unwrap_or(0)).collect();
        int_vector(&labels, device)
    }
}

/// A classifier's outputs on the eval set, in file order.
pub struct Predictions {
    /// Class probabilities per example.
    pub probs: Vec<Vec<f32>>,
    pub labels: Vec<Option<i64>>,
    /// Group ids (−1: none).
    pub groups: Vec<i64>,
}

impl ClassifyTask {
    /// Class probabilities, labels and group ids of every `--eval` example, in file order.
    pub fn eval_predictions(&self, model: &BertClassifier) -> Result<Predictions> {
        let model = model.valid();
        let mut probs = Vec::with_capacity(self.eval.len());
        for chunk in self.eval.chunks(self.config.batch_size.max(1)) {
            let batch: Vec<&Encoded> = chunk.iter().collect();
            let (logits, _) = Self::logits(&model, &batch, self.pad, &self.device);
            let flat = read_blocking(
                burn::tensor::activation::softmax(logits, 1)
                    .reshape([chunk.len() * self.num_labels]),
            )?;
            probs.extend(flat.chunks(self.num_labels).map(<[f32]>::to_vec));
        }
        Ok(Predictions {
            probs,
            labels: self.eval.iter().map(|e| e.label).collect(),
            groups: self.eval.iter().map(|e| e.group).collect(),
        })
    }

    pub fn num_labels(&self) -> usize {
        self.num_labels
    }
}

impl TaskRunner for ClassifyTask {
    type Model = BertClassifier;

    fn init_model(&self, device: &Device) -> Result<BertClassifier> {
        match self.source.weights() {
            Some(dir) => {
                let (model, report) =
                    model::load_bert(dir, self.num_labels, BertHead::Sequence, device)?;
                report_load(&report);
                Ok(model)
            }
            None => Ok(self.arch.init(self.num_labels, BertHead::Sequence, device)),
        }
    }

    fn prepare(&mut self, _: &BertClassifier, _: RunDir<'_>) -> Result<()> {
        Ok(())
    }

    fn step(&mut self, model: &BertClassifier, step: usize) -> StepOutput {
        let ad_device = self.device.clone().autodiff();
        let indices = self.sampler.batch(step, self.config.batch_size);
        let batch: Vec<&Encoded> = indices.iter().map(|&i| &self.train[i]).collect();
        let (logits, mut num_tokens) = Self::logits(model, &batch, self.pad, &ad_device);
        let labels = Self::labels(&batch, &ad_device);
        let task_loss = cross_entropy(logits.clone(), labels.clone());
        let accuracy = logits
            .clone()
            .argmax(1)
            .reshape([batch.len()])
            .equal(labels.clone())
            .float()
            .mean();

        let fairness_inputs = match self.fairness.draw(step) {
            Some(drawn) => {
                let drawn: Vec<&Encoded> = drawn.iter().collect();
                let (logits, tokens) = Self::logits(model, &drawn, self.pad, &ad_device);
                num_tokens += tokens;
                let groups: Vec<i64> = drawn.iter().map(|e| e.group).collect();
                let labels = Self::labels(&drawn, &ad_device);
                Some((
                    class_probability(logits, self.config.positive_class),
                    groups,
                    labels,
                ))
            }
            None if matches!(self.fairness, FairnessSource::InBatch) => {
                let groups: Vec<i64> = batch.iter().map(|e| e.group).collect();
                Some((
                    class_probability(logits, self.config.positive_class),
                    groups,
                    labels,
                ))
            }
            None => None,
        };
        let fairness = fairness_inputs.map(|(scores, groups, labels)| FairnessBatch {
            scores,
            groups,
            labels: Some(labels),
        });
        StepOutput {
            task_loss,
            fairness,
            metrics: vec![("accuracy".into(), accuracy)],
            num_tokens,
        }
    }

    async fn evaluate(&mut self, model: &BertClassifier) -> Result<Option<Map<String, Value>>> {
        if self.eval.is_empty() {
            return Ok(None);
        }
        let model = model.valid();
        let (mut correct, mut loss_sum) = (0usize, 0.0f64);
        for chunk in self.eval.chunks(self.config.batch_size) {
            let batch: Vec<&Encoded> = chunk.iter().collect();
            let (logits, _) = Self::logits(&model, &batch, self.pad, &self.device);
            let labels = Self::labels(&batch, &self.device);
            loss_sum += read_async(cross_entropy(logits.clone(), labels.clone())).await?[0] as f64
                * chunk.len() as f64;
            let hits = logits
                .argmax(1)
                .reshape([chunk.len()])
                .equal(labels)
                .float()
                .sum();
            correct += read_async(hits).await?[0] as usize;
        }
        let n = self.eval.len() as f64;
        let mut map = Map::new();
        map.insert("accuracy".into(), json!(correct as f64 / n));
        map.insert("loss".into(), json!(loss_sum / n));
        Ok(Some(map))
    }

    fn record_contents(&self) -> checkpoint::Contents {
        if self.source.has_weights() {
            checkpoint::Contents::Trained
        } else {
            checkpoint::Contents::All
        }
    }

    fn apply_lora(&self, model: BertClassifier, lora: &LoraSettings) -> Result<BertClassifier> {
        // The task head (and BERT's pooler under it) is new or task-specific: trained in full.
        let head = [
            "classifier.weight",
            "classifier.bias",
            "bert.pooler.dense.weight",
            "bert.pooler.dense.bias",
        ];
        let model = lora.apply(model, &ArchConfig::Bert(self.arch.clone()), &head)?;
        Ok(model.with_lora_dropout(lora.dropout))
    }

    fn export(&self, model: &BertClassifier, out: &Path) -> Result<()> {
        super::export_run(
            model,
            &model.valid().materialize(),
            &ArchConfig::Bert(self.arch.clone()),
            &model::io::export::ExportHead::sequence(self.num_labels),
            &self.config,
            &self.tokenizer,
            out,
        )
    }

    async fn fairness_eval(&mut self, model: &BertClassifier) -> Result<Option<FairnessSet>> {
        let Some((name, examples)) = &self.fairness_eval else {
            return Ok(None);
        };
        let model = model.valid();
        let mut scores = Vec::with_capacity(examples.len());
        for chunk in examples.chunks(self.config.batch_size) {
            let batch: Vec<&Encoded> = chunk.iter().collect();
            let (logits, _) = Self::logits(&model, &batch, self.pad, &self.device);
            scores.extend(read_async(class_probability(logits, self.config.positive_class)).await?);
        }
        Ok(Some(FairnessSet {
            name: name.clone(),
            scores,
            groups: examples.iter().map(|e| e.group).collect(),
            labels: examples.iter().map(|e| e.label).collect(),
        }))
    }

    fn groups(&self) -> &GroupVocab {
        &self.groups
    }

    fn fairness_spec(&self) -> crate::objective::FairnessSpec {
        self.config.fairness_spec()
    }

    fn fairness_labels(&self) -> Option<usize> {
        self.fairness_labels
    }
}
