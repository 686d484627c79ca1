//! The DPO task: a Llama-family policy, a frozen reference (a copy of the initial policy, kept on
//! the plain device with no autodiff and no optimizer state), and the fairness penalty on a score
//! of completions — drawn from the task batch (pairs with a `"group"`, scored on the chosen
//! completion) or from a separate group-tagged set of `{"prompt","completion","group"}` rows.
//!
//! The losses of unpaired examples (KTO, `apo_zero_unpaired`) train on `{"prompt",
//! "completion","label"}` rows (or pairs, unpaired as TRL does), each example a unit of two
//! sequences with one prompt like a pair's: the example, and its KL sequence.

use std::path::Path;

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData};
use serde_json::{Map, Value, json};

use super::fairness_source::{FairnessSource, check_cells};
use super::{
    FairnessBatch, FairnessSet, RunDir, StepOutput, TaskRunner, TrainConfig, checkpoint,
    read_async, read_blocking, report_load,
};
use crate::data::batch::int_vector;
use crate::data::records::{
    self, CompletionExample, PreferenceData, PreferenceExample, UnpairedExample,
};
use crate::data::sampler::EpochSampler;
use crate::data::{Encoder, GroupVocab, LmSequence, Origin, TruncationStats};
use crate::device::Selected;
use crate::error::{Error, Result};
use crate::fsutil::write_atomic;
use crate::model::logps::{
    ALL_POSITIONS, Extras, SequenceLogps, TailWeights, pair_groups, sequence_logps_weighted,
    single_groups,
};
use crate::model::lora::LoraSettings;
use crate::model::precision;
use crate::model::recompute::LayerTape;
use crate::model::{self, ArchConfig, LlamaConfig, LlamaForCausalLM, ModelSource};
use crate::objective::{
    DpoOutput, FairnessKind, FairnessScore, KtoOutput, PairLogps, UnpairedLogps, dpo_loss_weighted,
    kto_loss,
};
use crate::tokenizer::TextTokenizer;
use crate::tokenizer::chat::ChatTemplate;

/// A unit of training: a preference pair, or an unpaired example (KTO) with, in `rejected`'s
/// place, its KL sequence — its prompt with another example's completion (empty when the loss
/// needs none).
struct Pair {
    chosen: LmSequence,
    rejected: LmSequence,
    group: i64,
    /// Unpaired examples: whether the completion is desirable.
    desirable: Option<bool>,
}

/// A sequence whose completion is a fairness example.
#[derive(Clone)]
struct Scored {
    sequence: LmSequence,
    group: i64,
    label: Option<i64>,
}

pub struct DpoTask {
    config: TrainConfig,
    arch: LlamaConfig,
    source: ModelSource,
    device: Device,
    /// How the frozen weights are stored (`--base-dtype`, `--quantize-base`).
    base_storage: precision::Storage,
    /// Tokens through the policy in the largest step (for the memory plan).
    step_tokens: usize,
    train: Vec<Pair>,
    eval: Vec<Pair>,
    sampler: EpochSampler,
    fairness: FairnessSource<Scored>,
    fairness_eval: Option<(String, Vec<Scored>)>,
    groups: GroupVocab,
    num_labels: Option<usize>,
    reference: Option<LlamaForCausalLM>,
    /// Reference log-prob sums `[chosen, rejected]` of every train and eval pair (`--reference-cache`).
    cached: Option<ReferenceLogps>,
    tokenizer: TextTokenizer,
    /// The layer inputs of this step's policy forwards, under `--gradient-checkpointing`, from
    /// `step` to `backward`.
    tape: Option<LayerTape>,
    /// Group-robust DPO's weights over the groups (on the simplex), updated every step.
    group_weights: Option<Tensor<1>>,
}

/// The reference model's log-prob sums of each pair, and what they were computed for.
#[derive(serde::Serialize, serde::Deserialize)]
struct ReferenceLogps {
    /// FNV-1a over the model and every token of every train and eval sequence.
    fingerprint: String,
    model: String,
    train: Vec<[f32; 2]>,
    eval: Vec<[f32; 2]>,
}

/// 64-bit FNV-1a: a stable, dependency-free fingerprint (not a security hash).
fn fnv1a(state: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(state, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// How the sequences of one forward share prefixes.
#[derive(Clone, Copy)]
enum Layout {
    /// `[chosen…, rejected…]` of preference pairs: pair i is sequences i and `pairs + i`.
    Pairs,
    /// Each on its own.
    Singles,
}

fn groups(layout: Layout, count: usize) -> Vec<Vec<usize>> {
    match layout {
        Layout::Pairs => pair_groups(count / 2),
        Layout::Singles => single_groups(count),
    }
}

fn encode_pairs(
    encoder: &Encoder,
    examples: &[PreferenceExample],
    chat: Option<&ChatTemplate>,
    groups: &GroupVocab,
    stats: &mut TruncationStats,
) -> Result<Vec<Pair>> {
    let mut pairs = Vec::with_capacity(examples.len());
    for ex in examples {
        let group = match &ex.group {
            Some(name) => groups.id_at(name, &ex.origin)? as i64,
            None => -1,
        };
        let encoded = encoder
            .prompted(&ex.prompt, &[&ex.chosen, &ex.rejected], chat, stats)
            .map_err(|e| ex.origin.error(e))?;
        // None: left out by keep-start truncation (counted in `stats`).
        if let Some(mut sequences) = encoded {
            let rejected = sequences.pop().expect("two completions");
            let chosen = sequences.pop().expect("two completions");
            pairs.push(Pair {
                chosen,
                rejected,
                group,
                desirable: None,
            });
        }
    }
    Ok(pairs)
}

/// Unpaired examples as units: each example, and (with `kl`) its KL sequence — its prompt with
/// the previous example's completion within blocks of `block` (the batch size) in file order,
/// the block's first taking its last, as TRL's `KTOTrainer` pairs them ("rotating the
/// completions by +1 within each batch"). Examples left out by keep-start truncation are left
/// out before the blocks are formed, as in TRL.
fn encode_unpaired(
    encoder: &Encoder,
    examples: &[UnpairedExample],
    chat: Option<&ChatTemplate>,
    groups: &GroupVocab,
    stats: &mut TruncationStats,
    block: usize,
    kl: bool,
) -> Result<Vec<Pair>> {
    let mut encoded = Vec::with_capacity(examples.len());
    for ex in examples {
        let group = match &ex.group {
            Some(name) => groups.id_at(name, &ex.origin)? as i64,
            None => -1,
        };
        let prompted = encoder
            .prompted_ids(&ex.prompt, &[&ex.completion], chat, stats)
            .map_err(|e| ex.origin.error(e))?;
        if let Some(prompted) = prompted {
            encoded.push((prompted, ex.desirable, group));
        }
    }
    let mut units = Vec::with_capacity(encoded.len());
    for chunk in encoded.chunks(block.max(1)) {
        for (i, (prompted, desirable, group)) in chunk.iter().enumerate() {
            let ids = &prompted.full[0];
            let rejected = if kl {
                let partner = &chunk[(i + chunk.len() - 1) % chunk.len()].0;
                let mut mismatched = ids[..prompted.prompt].to_vec();
                mismatched.extend(&partner.full[0][partner.prompt..]);
                // Not counted in the file's truncation warning: these are not its examples.
                encoder.sequence(mismatched, prompted.prompt, &mut TruncationStats::default())
            } else {
                LmSequence {
                    tokens: Vec::new(),
                    completion: Vec::new(),
                }
            };
            units.push(Pair {
                chosen: encoder.sequence(ids.clone(), prompted.prompt, stats),
                rejected,
                group: *group,
                desirable: Some(*desirable),
            });
        }
    }
    Ok(units)
}

/// KTO paper's Eq. 8 advice, as TRL gives it: with unequal numbers of desirable (n_D) and
/// undesirable (n_U) examples, λ_D·n_D / (λ_U·n_U) should lie in [1, 4/3]; when neither weight
/// is in its range, the ranges (rounded to two decimals, as TRL rounds them).
fn weight_advice(units: &[Pair], dpo: &crate::objective::DpoConfig) -> Option<String> {
    if !dpo.is_unpaired() {
        return None;
    }
    let desirable = units.iter().filter(|u| u.desirable == Some(true)).count();
    let undesirable = units.len() - desirable;
    if desirable == undesirable {
        return None;
    }
    let (n_d, n_u) = (desirable.max(1) as f64, undesirable.max(1) as f64);
    let round = |x: f64| (x * 100.0).round() / 100.0;
    let (w_d, w_u) = (dpo.desirable_weight, dpo.undesirable_weight);
    let d_range = (round(n_u * w_u / n_d), round(n_u * w_u / n_d * 1.33));
    let u_range = (round(n_d * w_d / n_u / 1.33), round(n_d * w_d / n_u));
    let within = |w: f64, (lo, hi): (f64, f64)| lo <= w && w <= hi;
    if within(w_d, d_range) || within(w_u, u_range) {
        return None;
    }
    Some(format!(
        "{desirable} desirable and {undesirable} undesirable examples: KTO's paper (Eq. 8) \
         suggests EITHER --desirable-weight in [{}, {}] OR --undesirable-weight in [{}, {}] \
         (not both)",
        d_range.0, d_range.1, u_range.0, u_range.1
    ))
}

/// A preference file's examples as the loss takes them: pairs for the pairwise losses;
/// unpaired examples for KTO's (a file of pairs unpaired as TRL does).
fn read_examples(path: &Path, config: &TrainConfig) -> Result<PreferenceData> {
    let unpaired = config.dpo.is_unpaired();
    Ok(match records::read_preference_data(path)? {
        PreferenceData::Pairs(pairs) if unpaired => {
            PreferenceData::Unpaired(records::unpair(pairs))
        }
        PreferenceData::Unpaired(_) if !unpaired => {
            let names: Vec<String> = config.dpo.loss.iter().map(|l| l.name()).collect();
            return Err(Error::input(format!(
                "{}: the rows are unpaired examples ({{\"prompt\", \"completion\", \"label\"}}, \
                 KTO's format), but --loss {} compares a chosen and a rejected completion: use \
                 --loss kto or apo_zero_unpaired, or give {{\"prompt\", \"chosen\", \"rejected\"}} \
                 pairs",
                path.display(),
                names.join(",")
            )));
        }
        data => data,
    })
}

fn group_names(data: &PreferenceData) -> Vec<&str> {
    match data {
        PreferenceData::Pairs(pairs) => pairs.iter().filter_map(|p| p.group.as_deref()).collect(),
        PreferenceData::Unpaired(examples) => {
            examples.iter().filter_map(|e| e.group.as_deref()).collect()
        }
    }
}

/// The first example without a group, where it is.
fn ungrouped(data: &PreferenceData) -> Option<&Origin> {
    match data {
        PreferenceData::Pairs(pairs) => pairs.iter().find(|p| p.group.is_none()).map(|p| &p.origin),
        PreferenceData::Unpaired(examples) => examples
            .iter()
            .find(|e| e.group.is_none())
            .map(|e| &e.origin),
    }
}

fn rows(data: &PreferenceData) -> usize {
    match data {
        PreferenceData::Pairs(pairs) => pairs.len(),
        PreferenceData::Unpaired(examples) => examples.len(),
    }
}

/// A file's units of training ([`Pair`]).
fn encode_units(
    encoder: &Encoder,
    data: &PreferenceData,
    chat: Option<&ChatTemplate>,
    groups: &GroupVocab,
    stats: &mut TruncationStats,
    config: &TrainConfig,
) -> Result<Vec<Pair>> {
    match data {
        PreferenceData::Pairs(pairs) => encode_pairs(encoder, pairs, chat, groups, stats),
        PreferenceData::Unpaired(examples) => encode_unpaired(
            encoder,
            examples,
            chat,
            groups,
            stats,
            config.batch_size,
            config.dpo.needs_kl(),
        ),
    }
}

fn encode_completions(
    encoder: &Encoder,
    examples: &[CompletionExample],
    chat: Option<&ChatTemplate>,
    groups: &GroupVocab,
    stats: &mut TruncationStats,
) -> Result<Vec<Scored>> {
    let mut scored = Vec::with_capacity(examples.len());
    for ex in examples {
        let group = groups.id_at(&ex.group, &ex.origin)? as i64;
        let encoded = encoder
            .prompted(&ex.prompt, &[&ex.completion], chat, stats)
            .map_err(|e| ex.origin.error(e))?;
        if let Some(sequence) = encoded.and_then(|mut s| s.pop()) {
            scored.push(Scored {
                sequence,
                group,
                label: ex.label.map(|l| l as i64),
            });
        }
    }
    Ok(scored)
}

/// Keep-start truncation may leave a file with nothing to train or score on: one clear error.
fn require_some<T>(encoded: &[T], path: &Path, rows: usize, max_length: usize) -> Result<()> {
    if encoded.is_empty() {
        return Err(Error::input(format!(
            "{}: all {rows} examples were left out: each prompt alone fills --max-length \
             {max_length} (--truncation-mode keep-start); raise --max-length",
            path.display()
        )));
    }
    Ok(())
}

fn warn(stats: &TruncationStats, what: &Path, max_length: usize) {
    if let Some(warning) = stats.warning(&what.display().to_string(), max_length) {
        eprintln!("{warning}");
    }
}

/// Check equalized-odds labels: present on every example, within `0..num_labels`.
fn check_labels(
    examples: &[(Option<i64>, &Origin)],
    what: &str,
    kind: FairnessKind,
) -> Result<usize> {
    let mut max = 0;
    for (label, origin) in examples {
        match label {
            Some(l) => max = max.max(*l),
            None => {
                return Err(origin.error(format!(
                    "--fairness {} needs a \"label\" on every {what} example",
                    kind.name()
                )));
            }
        }
    }
    Ok((max as usize + 1).max(2))
}

impl DpoTask {
    /// How [`TaskRunner::init_model`] stores the model it loads. Under LoRA the whole model is
    /// the frozen base: its matrices go half (or quantized) as they are placed, so the f32 model
    /// never exists whole.
    fn init_storage(&self) -> precision::Storage {
        match self.config.lora {
            Some(_) => self.base_storage,
            None => precision::Storage::default(),
        }
    }

    /// Whether the model this task starts from is the one [`model::keep_loaded`] kept from an
    /// earlier run on `device` (so it is in memory already).
    pub fn model_is_kept(&self, device: &Device) -> bool {
        model::is_kept(&self.source, self.init_storage(), device)
    }

    pub fn load(config: &TrainConfig, selected: &Selected) -> Result<Self> {
        let source = model::locate(&config.model)?;
        let tokenizer = source.open_tokenizer(config.tokenizer.as_deref())?;
        let arch = source.arch(tokenizer.vocab_size())?;
        let ArchConfig::Llama(arch) = arch else {
            return Err(Error::input(format!(
                "--task dpo needs a causal LM (llama); --model {} is a {} encoder",
                config.model,
                arch.name()
            )));
        };
        config.check_max_length(arch.max_positions(), arch.max_positions_key())?;
        // auto: half only under LoRA, where the whole base is frozen.
        let base_storage = precision::Storage {
            half: match (config.base_dtype, &config.lora) {
                (precision::BaseDtype::Auto, None) => None,
                (dtype, _) => dtype.resolve(&selected.device)?,
            },
            quantize: config.quantize_base,
        };
        let mut encoder = Encoder::new(&tokenizer, config.max_length, config.max_prompt_length)?;
        encoder.truncation = config.truncation;

        let chat = tokenizer.chat_template()?;
        let chat = chat.as_ref();
        if config.dpo.needs_kl() && config.batch_size < 2 {
            return Err(Error::input(
                "--loss kto estimates its reference point from mismatched examples within a \
                 batch: --batch-size must be at least 2",
            ));
        }
        if config.dpo.is_unpaired() && config.fairness_score().of_pairs() {
            return Err(Error::input(format!(
                "--fairness-score {} compares the completions of a pair; unpaired examples \
                 have one: use logp, prob or reward",
                crate::objective::value_name(&config.fairness_score())
            )));
        }
        let train_examples = read_examples(&config.train, config)?;
        let fairness_examples = config
            .fairness_data
            .as_deref()
            .map(records::read_completions)
            .transpose()?;
        let groups = match &fairness_examples {
            Some(rows) => GroupVocab::from_names(rows.iter().map(|r| r.group.as_str())),
            None => GroupVocab::from_names(group_names(&train_examples)),
        };

        let mut stats = TruncationStats::default();
        let train = encode_units(&encoder, &train_examples, chat, &groups, &mut stats, config)?;
        warn(&stats, &config.train, config.max_length);
        if let Some(advice) = weight_advice(&train, &config.dpo) {
            eprintln!("warning: {advice}");
        }
        require_some(
            &train,
            &config.train,
            rows(&train_examples),
            config.max_length,
        )?;

        // Every statistic but demographic parity reads the fairness examples' labels.
        let eo = config.fairness.needs_labels();
        let mut num_labels = None;
        let separate = match fairness_examples {
            Some(rows) => {
                let path = config.fairness_data.as_deref().expect("set");
                let mut stats = TruncationStats::default();
                let examples = encode_completions(&encoder, &rows, chat, &groups, &mut stats)?;
                warn(&stats, path, config.max_length);
                require_some(&examples, path, rows.len(), config.max_length)?;
                if eo {
                    let labels: Vec<_> = rows
                        .iter()
                        .map(|r| (r.label.map(|l| l as i64), &r.origin))
                        .collect();
                    num_labels = Some(check_labels(&labels, "--fairness-data", config.fairness)?);
                }
                let ids = examples.iter().map(|e| e.group as usize).collect();
                Some((examples, ids))
            }
            None => None,
        };
        let train_has_groups = train.iter().any(|p| p.group >= 0);
        if eo && separate.is_none() && train_has_groups {
            return Err(Error::input(
                "this --fairness statistic needs labels: preference pairs have none; give \
                 --fairness-data rows with \"label\"",
            ));
        }
        check_cells(&groups, num_labels)?;
        // The largest step: the longest pairs a batch can hold (a pair's shared prompt runs once
        // in the packed forward; a batch may straddle two epochs, or repeat pairs when larger
        // than the set), and the group-balanced fairness batch beside it at its worst.
        let mut step_tokens = crate::data::sampler::most_tokens_in_a_batch(
            train
                .iter()
                .map(|p| {
                    let (a, b) = (&p.chosen.tokens, &p.rejected.tokens);
                    let shared = a.iter().zip(b).take_while(|(x, y)| x == y).count();
                    a.len() + b.len() - shared
                })
                .collect(),
            config.batch_size,
        );
        let fairness = FairnessSource::new(config, separate, train_has_groups, &groups)?;
        if let FairnessSource::Separate { examples, sampler } = &fairness {
            let lengths: Vec<usize> = examples.iter().map(|e| e.sequence.tokens.len()).collect();
            step_tokens += sampler.most_tokens(&lengths);
        }

        let eval = match &config.eval {
            Some(path) => {
                let data = read_examples(path, config)?;
                let mut stats = TruncationStats::default();
                let units = encode_units(&encoder, &data, chat, &groups, &mut stats, config)?;
                warn(&stats, path, config.max_length);
                require_some(&units, path, rows(&data), config.max_length)?;
                units
            }
            None => Vec::new(),
        };

        let explicit = match &config.fairness_eval {
            Some(path) => {
                let rows = records::read_completions(path)?;
                let mut stats = TruncationStats::default();
                let examples = encode_completions(&encoder, &rows, chat, &groups, &mut stats)?;
                warn(&stats, path, config.max_length);
                require_some(&examples, path, rows.len(), config.max_length)?;
                if let Some(n) = num_labels {
                    let labels: Vec<_> = rows
                        .iter()
                        .map(|r| (r.label.map(|l| l as i64), &r.origin))
                        .collect();
                    let found = check_labels(&labels, "--fairness-eval", config.fairness)?;
                    if found > n {
                        return Err(Error::input(format!(
                            "{}: labels go up to {} but training saw only 0..{}",
                            path.display(),
                            found - 1,
                            n - 1
                        )));
                    }
                }
                Some(examples)
            }
            None => None,
        };
        // Pairs are scored on their chosen completion; they carry no labels, so not for eo.
        let chosen_of = |pairs: &[Pair]| -> Vec<Scored> {
            pairs
                .iter()
                .filter(|p| p.group >= 0 && !eo)
                .map(|p| Scored {
                    sequence: p.chosen.clone(),
                    group: p.group,
                    label: None,
                })
                .collect()
        };
        let fairness_eval = fairness.report_set(explicit, chosen_of(&eval), || chosen_of(&train));
        let group_weights = match config.dpo.group_robust {
            None => None,
            Some(_) => {
                if let Some(origin) = ungrouped(&train_examples) {
                    return Err(origin.error(
                        "--group-robust weighs the loss by group: every --train pair needs a \
                         \"group\"",
                    ));
                }
                if groups.len() < 2 {
                    return Err(Error::input(format!(
                        "--group-robust needs at least two groups; the data has {}",
                        groups.len()
                    )));
                }
                let uniform = vec![1.0 / groups.len() as f32; groups.len()];
                Some(Tensor::from_floats(
                    uniform.as_slice(),
                    &selected.device.clone().autodiff(),
                ))
            }
        };

        Ok(Self {
            config: config.clone(),
            arch,
            source,
            device: selected.device.clone(),
            sampler: EpochSampler::new(train.len(), config.seed).with_order(config.data_order),
            train,
            eval,
            fairness,
            fairness_eval,
            groups,
            num_labels,
            reference: None,
            cached: None,
            tape: None,
            group_weights,
            tokenizer,
            base_storage,
            step_tokens,
        })
    }

    /// `model` (frozen) with its matrices in the run's storage precision.
    fn stored(&self, model: LlamaForCausalLM) -> LlamaForCausalLM {
        if self.base_storage.changes() {
            precision::store_matrices(model, self.base_storage)
        } else {
            model
        }
    }

    /// The base model under LoRA — the reference, which is the loaded model with no adapters —
    /// for answers before training beside the tuned model's; `None` without LoRA (or when
    /// precomputed reference log-probs let the reference go).
    pub fn base_model(&self) -> Option<&LlamaForCausalLM> {
        self.reference
            .as_ref()
            .filter(|_| self.config.lora.is_some())
    }

    /// The model's architecture.
    pub fn arch(&self) -> &LlamaConfig {
        &self.arch
    }

    /// The model's tokenizer, where it came from, and its config's end-of-sequence id: what
    /// generation needs beside a model.
    pub fn generation_setup(&self) -> (&TextTokenizer, &ModelSource, Option<u32>) {
        (&self.tokenizer, &self.source, self.arch.eos_token_id)
    }

    /// The encoded training pairs (chosen, rejected), in file order.
    pub fn train_pairs(&self) -> impl Iterator<Item = (&LmSequence, &LmSequence)> {
        self.train.iter().map(|p| (&p.chosen, &p.rejected))
    }

    /// Summed completion log-probs and token counts of `sequences` under `model`.
    fn logps(
        model: &LlamaForCausalLM,
        sequences: &[&LmSequence],
        layout: Layout,
        device: &Device,
    ) -> (Tensor<1>, Tensor<1>, usize) {
        Self::policy_logps(model, sequences, layout, device, None)
    }

    /// [`Self::logps`] of the policy in a training step, its layers kept on `tape` when the
    /// run recomputes them.
    fn policy_logps(
        model: &LlamaForCausalLM,
        sequences: &[&LmSequence],
        layout: Layout,
        device: &Device,
        tape: Option<&mut LayerTape>,
    ) -> (Tensor<1>, Tensor<1>, usize) {
        let scored = sequence_logps_weighted(
            model,
            sequences,
            &groups(layout, sequences.len()),
            device,
            ALL_POSITIONS,
            tape,
            Extras::default(),
        );
        (scored.sums, scored.counts, scored.num_tokens)
    }

    /// Summed log-probs of a batch of pairs' sequences (`[chosen…, rejected…]`), LD-DPO's tail
    /// weights applied when the run asks for them, and WPO's aligned sums with `wpo`.
    fn pair_logps(
        &self,
        model: &LlamaForCausalLM,
        sequences: &[&LmSequence],
        device: &Device,
        tape: Option<&mut LayerTape>,
        wpo: bool,
    ) -> SequenceLogps {
        let shared: Vec<usize>;
        let tail = match self.config.dpo.ld_alpha {
            Some(alpha) => {
                let pairs = sequences.len() / 2;
                let length = |s: &LmSequence| s.completion.iter().skip(1).filter(|&&c| c).count();
                let lengths: Vec<usize> = (0..pairs)
                    .map(|i| length(sequences[i]).min(length(sequences[pairs + i])))
                    .collect();
                shared = lengths.iter().chain(&lengths).copied().collect();
                Some(TailWeights {
                    shared: &shared,
                    alpha,
                })
            }
            None => None,
        };
        sequence_logps_weighted(
            model,
            sequences,
            &groups(Layout::Pairs, sequences.len()),
            device,
            ALL_POSITIONS,
            tape,
            Extras { tail, wpo },
        )
    }

    /// Summed log-probs and token counts of `units` under `model`, in one packed forward: both
    /// sequences of each (`[chosen…, rejected…]`, sharing their prompt), or the first alone for
    /// unpaired examples whose loss needs no KL sequence (`rejected` then holds zeros).
    fn unit_logps(
        &self,
        model: &LlamaForCausalLM,
        units: &[&Pair],
        device: &Device,
        tape: Option<&mut LayerTape>,
    ) -> (PairLogps, usize) {
        let (logps, tokens, _) = self.unit_logps_wpo(model, units, device, tape, false);
        (logps, tokens)
    }

    /// [`Self::unit_logps`], and with `wpo` each pair's WPO weight.
    fn unit_logps_wpo(
        &self,
        model: &LlamaForCausalLM,
        units: &[&Pair],
        device: &Device,
        tape: Option<&mut LayerTape>,
        wpo: bool,
    ) -> (PairLogps, usize, Option<Tensor<1>>) {
        let n = units.len();
        let first = units.iter().map(|u| &u.chosen);
        if self.config.dpo.is_unpaired() && !self.config.dpo.needs_kl() {
            let sequences: Vec<&LmSequence> = first.collect();
            let (sums, counts, tokens) =
                Self::policy_logps(model, &sequences, Layout::Singles, device, tape);
            let zeros = sums.clone().detach().zeros_like();
            let logps = PairLogps {
                chosen: sums,
                rejected: zeros.clone(),
                chosen_tokens: counts,
                rejected_tokens: zeros,
            };
            return (logps, tokens, None);
        }
        let sequences: Vec<&LmSequence> = first.chain(units.iter().map(|u| &u.rejected)).collect();
        let scored = self.pair_logps(model, &sequences, device, tape, wpo);
        let logps = split_pairs(scored.sums, scored.counts, n);
        let weights = scored.wpo.map(|aligned| {
            let (chosen, rejected) = (aligned.clone().narrow(0, 0, n), aligned.narrow(0, n, n));
            crate::objective::wpo_weights(chosen, rejected, &logps)
        });
        (logps, scored.num_tokens, weights)
    }

    fn fingerprint(&self) -> String {
        let mut h = fnv1a(0xcbf2_9ce4_8422_2325, self.config.model.as_bytes());
        // Reference sums with LD-DPO's weights are other numbers.
        if let Some(alpha) = self.config.dpo.ld_alpha {
            h = fnv1a(h, &alpha.to_le_bytes());
        }
        h = fnv1a(
            h,
            serde_json::to_string(&self.arch)
                .expect("config")
                .as_bytes(),
        );
        for pair in self.train.iter().chain(&self.eval) {
            for sequence in [&pair.chosen, &pair.rejected] {
                for (&token, &scored) in sequence.tokens.iter().zip(&sequence.completion) {
                    h = fnv1a(h, &token.to_le_bytes());
                    h = fnv1a(h, &[u8::from(scored)]);
                }
                h = fnv1a(h, b"|");
            }
        }
        format!("{h:016x}")
    }

    /// Reference sums `[chosen, rejected]` of `pairs`, in batches.
    fn reference_sums(&self, pairs: &[Pair]) -> Result<Vec<[f32; 2]>> {
        let reference = self.reference().expect("a reference model");
        let mut out = Vec::with_capacity(pairs.len());
        for chunk in pairs.chunks(self.config.batch_size.max(1)) {
            let units: Vec<&Pair> = chunk.iter().collect();
            let (logps, _) = self.unit_logps(reference, &units, &self.device, None);
            let sums = read_blocking(Tensor::cat(vec![logps.chosen, logps.rejected], 0))?;
            let (chosen, rejected) = sums.split_at(chunk.len());
            out.extend(chosen.iter().zip(rejected).map(|(&c, &r)| [c, r]));
        }
        Ok(out)
    }

    /// With `--reference-cache`: read the file if it is there (refusing one made for other
    /// data or another model), else compute it and write it. Afterwards the reference model is
    /// only kept when fairness scores need it.
    fn load_reference_cache(&mut self) -> Result<()> {
        let Some(path) = self.config.reference_cache.clone() else {
            return Ok(());
        };
        let fingerprint = self.fingerprint();
        let cache = if path.exists() {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| Error::input(format!("{}: cannot read: {e}", path.display())))?;
            let cache: ReferenceLogps = serde_json::from_str(&text).map_err(|e| {
                Error::input(format!(
                    "{}: not a reference log-prob cache: {e}",
                    path.display()
                ))
            })?;
            if cache.fingerprint != fingerprint
                || cache.train.len() != self.train.len()
                || cache.eval.len() != self.eval.len()
            {
                return Err(Error::input(format!(
                    "{}: these reference log-probs were computed for other data or another model \
                     ({}; this run: {}, model {}); delete the file or name another \
                     --reference-cache",
                    path.display(),
                    cache.model,
                    fingerprint,
                    self.config.model
                )));
            }
            eprintln!("reference log-probs: {} (checked)", path.display());
            cache
        } else {
            let started = web_time::Instant::now();
            let cache = ReferenceLogps {
                fingerprint,
                model: self.config.model.clone(),
                train: self.reference_sums(&self.train)?,
                eval: self.reference_sums(&self.eval)?,
            };
            let bytes = serde_json::to_vec(&cache).expect("cache serializes");
            write_atomic(&path, &bytes)?;
            eprintln!(
                "reference log-probs of {} pairs computed in {:.1} s: {}",
                cache.train.len() + cache.eval.len(),
                started.elapsed().as_secs_f64(),
                path.display()
            );
            cache
        };
        self.cached = Some(cache);
        if !self.needs_reference_scores() {
            self.reference = None;
        }
        Ok(())
    }

    /// DPO on pairs `indices` of `split` — the one pair forward of training and evaluation: the
    /// policy's log-probs of both completions in one packed forward (its layers kept on `tape`
    /// when the run recomputes them), the reference's from the cache or the frozen model, and
    /// the loss. `device` is the policy's (autodiff while training).
    fn pair_forward(
        &self,
        model: &LlamaForCausalLM,
        split: Split,
        indices: &[usize],
        device: &Device,
        tape: Option<&mut LayerTape>,
    ) -> PairForward {
        let (pairs, cached) = match split {
            Split::Train => (&self.train, self.cached.as_ref().map(|c| &c.train)),
            Split::Eval => (&self.eval, self.cached.as_ref().map(|c| &c.eval)),
        };
        let units: Vec<&Pair> = indices.iter().map(|&i| &pairs[i]).collect();
        let (policy, num_tokens, weights) =
            self.unit_logps_wpo(model, &units, device, tape, self.config.dpo.use_weighting);
        let reference = match cached {
            Some(cached) => Some(Self::cached_pairs(
                cached,
                indices.iter().copied(),
                &policy,
                device,
            )),
            None => self
                .reference()
                .map(|reference| self.unit_logps(reference, &units, &self.device, None).0),
        };
        let output = if self.config.dpo.is_unpaired() {
            let reference = reference.as_ref().expect("validated: KTO has a reference");
            let kl = self.config.dpo.needs_kl();
            let unpaired = |logps: &PairLogps| UnpairedLogps {
                completions: logps.chosen.clone(),
                kl: kl.then(|| logps.rejected.clone()),
            };
            let desirable: Vec<bool> = units
                .iter()
                .map(|u| u.desirable.expect("unpaired units"))
                .collect();
            Losses::Unpaired(kto_loss(
                &self.config.dpo,
                &unpaired(&policy),
                &unpaired(reference),
                &desirable,
            ))
        } else {
            Losses::Pairs(dpo_loss_weighted(
                &self.config.dpo,
                &policy,
                reference.as_ref(),
                weights,
            ))
        };
        PairForward {
            policy,
            reference,
            output,
            num_tokens,
        }
    }

    /// The reference log-probs of `pairs` (pair indices into `cached`), with the policy's token
    /// counts (the sequences are the same).
    fn cached_pairs(
        cached: &[[f32; 2]],
        indices: impl Iterator<Item = usize>,
        policy: &PairLogps,
        device: &Device,
    ) -> PairLogps {
        let (chosen, rejected): (Vec<f32>, Vec<f32>) =
            indices.map(|i| (cached[i][0], cached[i][1])).unzip();
        let n = chosen.len();
        PairLogps {
            chosen: Tensor::from_data(TensorData::new(chosen, [n]), device),
            rejected: Tensor::from_data(TensorData::new(rejected, [n]), device),
            chosen_tokens: policy.chosen_tokens.clone().detach(),
            rejected_tokens: policy.rejected_tokens.clone().detach(),
        }
    }

    /// A pair's fairness score (`reward_margin`, `reward_accuracy`): its reward margin
    /// β·((π − π_ref)(c) − (π − π_ref)(r)), or σ of it; differentiable in the policy.
    fn pair_score(&self, policy: &PairLogps, reference: &PairLogps) -> Tensor<1> {
        let margin = ((policy.chosen.clone() - reference.chosen.clone().detach())
            - (policy.rejected.clone() - reference.rejected.clone().detach()))
            * self.config.dpo.beta;
        match self.config.fairness_score() {
            FairnessScore::RewardAccuracy => crate::objective::dpo::log_sigmoid(margin).exp(),
            _ => margin,
        }
    }

    /// The pair scores of the report's fairness set: the grouped --eval pairs, else the grouped
    /// --train pairs.
    async fn pair_fairness_eval(&self, model: &LlamaForCausalLM) -> Result<Option<FairnessSet>> {
        let grouped = |pairs: &[Pair]| -> Vec<usize> {
            (0..pairs.len()).filter(|&i| pairs[i].group >= 0).collect()
        };
        let (name, split, indices) = match grouped(&self.eval) {
            eval if !eval.is_empty() => ("eval", Split::Eval, eval),
            _ => ("train", Split::Train, grouped(&self.train)),
        };
        if indices.is_empty() {
            return Ok(None);
        }
        let pairs = match split {
            Split::Eval => &self.eval,
            Split::Train => &self.train,
        };
        let mut scores = Vec::with_capacity(indices.len());
        for chunk in indices.chunks(self.config.batch_size.max(1)) {
            let forward = self.pair_forward(model, split, chunk, &self.device, None);
            let reference = forward.reference.as_ref().expect("validated: a reference");
            scores.extend(read_async(self.pair_score(&forward.policy, reference)).await?);
        }
        Ok(Some(FairnessSet {
            name: name.into(),
            scores,
            groups: indices.iter().map(|&i| pairs[i].group).collect(),
            labels: None,
        }))
    }

    /// The fairness score of completions from their policy (and, for `reward`, reference) log-probs.
    fn score(
        &self,
        sums: Tensor<1>,
        counts: Tensor<1>,
        reference_sums: Option<Tensor<1>>,
    ) -> Tensor<1> {
        let mean = sums.clone() / counts.clamp_min(1.0);
        match self.config.fairness_score() {
            FairnessScore::Logp => mean,
            FairnessScore::Prob => mean.exp(),
            FairnessScore::Reward => {
                (sums - reference_sums.expect("reference log-probs for reward scores"))
                    * self.config.dpo.beta
            }
            FairnessScore::RewardMargin | FairnessScore::RewardAccuracy => {
                unreachable!("pair scores go through pair_score")
            }
        }
    }

    fn needs_reference_scores(&self) -> bool {
        self.config.fairness_score() == FairnessScore::Reward
    }

    fn reference(&self) -> Option<&LlamaForCausalLM> {
        self.reference.as_ref()
    }

    /// Scores of `examples` under `model` (no autodiff), in batches.
    async fn score_all(&self, model: &LlamaForCausalLM, examples: &[Scored]) -> Result<Vec<f32>> {
        let inner = self.device.clone();
        let mut scores = Vec::with_capacity(examples.len());
        for chunk in examples.chunks(self.config.batch_size.max(1)) {
            let seqs: Vec<&LmSequence> = chunk.iter().map(|e| &e.sequence).collect();
            let (sums, counts, _) = Self::logps(model, &seqs, Layout::Singles, &inner);
            let reference = self.needs_reference_scores().then(|| {
                Self::logps(
                    self.reference().expect("reference"),
                    &seqs,
                    Layout::Singles,
                    &inner,
                )
                .0
            });
            let batch = self.score(sums, counts, reference);
            scores.extend(read_async(batch).await?);
        }
        Ok(scores)
    }
}

/// TR-DPO's update, as TRL's `SyncRefModelCallback` does it: every parameter of `target`
/// becomes (1 − α)·target + α·source, parameter by parameter in module order (`source` is the
/// policy with any LoRA adapters folded in, so the two have the same parameters).
fn mix_parameters(
    target: LlamaForCausalLM,
    source: &LlamaForCausalLM,
    alpha: f64,
) -> LlamaForCausalLM {
    use burn::module::{ModuleMapper, ModuleVisitor, Param};
    struct Collect(Vec<Tensor<1>>);
    impl ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let value = param.val();
            let n = value.shape().num_elements();
            self.0.push(value.reshape([n]));
        }
    }
    struct Mix {
        source: std::vec::IntoIter<Tensor<1>>,
        alpha: f64,
    }
    impl ModuleMapper for Mix {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let source = self.source.next().expect("the same parameters");
            let alpha = self.alpha;
            param.map(|value| {
                let shape = value.shape();
                assert_eq!(
                    shape.num_elements(),
                    source.dims()[0],
                    "TR-DPO mixes models of the same shape"
                );
                // In f32, stored back in the reference's precision (`--base-dtype`).
                let dtype = value.dtype();
                let mixed = precision::full(value) * (1.0 - alpha)
                    + precision::full(source.reshape(shape)) * alpha;
                if mixed.dtype() == dtype {
                    mixed
                } else {
                    mixed.cast(burn::tensor::FloatDType::from(dtype))
                }
            })
        }
    }
    let mut collect = Collect(Vec::new());
    source.visit(&mut collect);
    target.map(&mut Mix {
        source: collect.0.into_iter(),
        alpha,
    })
}

/// One step of group-robust DPO (Ramesh et al. 2024, "Group Robust Preference Optimization in
/// Reward-free RLHF", Algorithm 1 as its authors' code runs it): each group's mean pair loss in
/// the batch (the group-statistics op: WGSL on wgpu), then the weights w_g ← w_g·exp(η·loss_g)
/// over the groups present, renormalized, and the loss Σ_g w_g·loss_g with the new, detached
/// weights — the gradient of a weighted worst-group objective.
struct GroupRobust {
    loss: Tensor<1>,
    /// Detached, `[groups]`, 0 for a group without pairs in the batch.
    group_losses: Tensor<1>,
    /// The updated weights (detached).
    weights: Tensor<1>,
}

fn group_robust(
    per_pair: Tensor<1>,
    groups: &[i64],
    weights: Tensor<1>,
    step_size: f64,
    device: &Device,
) -> GroupRobust {
    let num_groups = weights.dims()[0];
    let stats = crate::group_stats::group_stats_with(
        per_pair,
        int_vector(groups, device),
        num_groups,
        crate::group_stats::GroupStatsImpl::Auto,
    );
    let sums = stats.clone().narrow(0, 0, 1).reshape([num_groups]);
    let counts = stats.narrow(0, 1, 1).reshape([num_groups]).detach();
    let present = counts.clone().greater_elem(0.0).float();
    let means = sums / counts.clamp_min(1.0);
    let raised = weights * (means.clone().detach() * present * step_size).exp();
    let weights = (raised.clone() / raised.sum()).detach();
    GroupRobust {
        loss: (weights.clone() * means.clone()).sum().reshape([1]),
        group_losses: means.detach(),
        weights,
    }
}

/// Which pairs a DPO forward is over.
#[derive(Clone, Copy)]
enum Split {
    Train,
    Eval,
}

/// What [`DpoTask::pair_forward`] computed.
struct PairForward {
    policy: PairLogps,
    reference: Option<PairLogps>,
    output: Losses,
    /// Real tokens through the policy.
    num_tokens: usize,
}

/// The loss of a batch of pairs, or of unpaired examples.
enum Losses {
    Pairs(DpoOutput),
    Unpaired(KtoOutput),
}

impl Losses {
    fn loss(&self) -> Tensor<1> {
        match self {
            Losses::Pairs(output) => output.loss.clone(),
            Losses::Unpaired(output) => output.loss.clone(),
        }
    }

    /// Each unit's share of the loss.
    fn per_unit(&self) -> Tensor<1> {
        match self {
            Losses::Pairs(output) => output.per_pair.clone(),
            Losses::Unpaired(output) => output.per_example.clone(),
        }
    }

    /// TRL's metrics of the trainer the loss belongs to (`DPOTrainer`'s or `KTOTrainer`'s).
    fn metrics(&self) -> Vec<(&'static str, Tensor<1>)> {
        match self {
            Losses::Pairs(output) => output.metrics(),
            Losses::Unpaired(output) => output.metrics(),
        }
    }

    /// Pairs: each pair's reward margin (none for unpaired examples).
    fn margins(&self) -> Option<Tensor<1>> {
        match self {
            Losses::Pairs(output) => {
                Some(output.chosen_rewards.clone() - output.rejected_rewards.clone())
            }
            Losses::Unpaired(_) => None,
        }
    }

    /// Several batches' outputs (all of one kind) as one.
    fn cat(outputs: Vec<Losses>) -> Losses {
        let (mut pairs, mut unpaired) = (Vec::new(), Vec::new());
        for output in outputs {
            match output {
                Losses::Pairs(o) => pairs.push(o),
                Losses::Unpaired(o) => unpaired.push(o),
            }
        }
        if unpaired.is_empty() {
            Losses::Pairs(DpoOutput::cat(pairs))
        } else {
            Losses::Unpaired(KtoOutput::cat(unpaired))
        }
    }
}

fn split_pairs(sums: Tensor<1>, counts: Tensor<1>, pairs: usize) -> PairLogps {
    PairLogps {
        chosen: sums.clone().narrow(0, 0, pairs),
        rejected: sums.narrow(0, pairs, pairs),
        chosen_tokens: counts.clone().narrow(0, 0, pairs),
        rejected_tokens: counts.narrow(0, pairs, pairs),
    }
}

impl TaskRunner for DpoTask {
    type Model = LlamaForCausalLM;

    fn init_model(&self, device: &Device) -> Result<LlamaForCausalLM> {
        let store = self.init_storage();
        match model::load_llama_stored(&self.source, device, store)? {
            Some((model, report)) => {
                report_load(&report);
                Ok(model)
            }
            None if store.changes() => Ok(precision::store_matrices(self.arch.init(device), store)),
            None => Ok(self.arch.init(device)),
        }
    }

    fn prepare(&mut self, model: &LlamaForCausalLM, dir: RunDir<'_>) -> Result<()> {
        if !self.config.dpo.needs_reference() {
            return Ok(());
        }
        if self.config.lora.is_some() {
            // The adapters go on after this: the reference is the loaded model itself, sharing
            // its (frozen) weights with the policy's base. Nothing to save or reload — unless
            // TR-DPO updated it, when a finished run's export left it in reference.bpk.
            self.reference = Some(match dir {
                RunDir::Existing(out)
                    if self.config.dpo.sync_ref.is_some() && out.join("reference.bpk").exists() =>
                {
                    self.stored(checkpoint::load_module(
                        self.arch.init(&self.device),
                        &out.join("reference.bpk"),
                    )?)
                }
                _ => model.valid(),
            });
            return self.load_reference_cache();
        }
        let reference = match dir {
            // No run directory (the browser): the reference lives in memory only.
            RunDir::None => model.valid(),
            RunDir::Existing(out) => {
                checkpoint::load_module(self.arch.init(&self.device), &out.join("reference.bpk"))?
            }
            RunDir::New(out) => {
                let reference = model.valid();
                checkpoint::save_module(
                    &reference,
                    &out.join("reference.bpk"),
                    checkpoint::Contents::All,
                )?;
                reference
            }
        };
        // The policy trains in f32; only its frozen copy goes half.
        self.reference = Some(self.stored(reference.valid()));
        self.load_reference_cache()
    }

    fn step(&mut self, model: &LlamaForCausalLM, step: usize) -> StepOutput {
        // TR-DPO: after every `steps` optimizer steps (TRL's on_step_end at global_step % steps).
        if let Some(sync) = self.config.dpo.sync_ref
            && step > 0
            && step.is_multiple_of(sync.steps)
        {
            let policy = precision::widen(model.valid()).materialize();
            let reference = self.reference.take().expect("a reference to update");
            self.reference = Some(mix_parameters(reference, &policy, sync.mixup_alpha));
        }
        let ad_device = self.device.clone().autodiff();
        let indices = self.sampler.batch(step, self.config.batch_size);
        let mut tape = self
            .config
            .gradient_checkpointing
            .then(|| LayerTape::new(super::step_seed(self.config.seed, step)));
        let PairForward {
            policy,
            reference,
            output,
            mut num_tokens,
        } = self.pair_forward(model, Split::Train, &indices, &ad_device, tape.as_mut());

        let fairness = match self.fairness.draw(step) {
            Some(drawn) => {
                let seqs: Vec<&LmSequence> = drawn.iter().map(|e| &e.sequence).collect();
                let (sums, counts, tokens) =
                    Self::policy_logps(model, &seqs, Layout::Singles, &ad_device, tape.as_mut());
                num_tokens += tokens;
                let reference = self.needs_reference_scores().then(|| {
                    Self::logps(
                        self.reference().expect("reference"),
                        &seqs,
                        Layout::Singles,
                        &self.device,
                    )
                    .0
                });
                let scores = self.score(sums, counts, reference);
                let groups = drawn.iter().map(|e| e.group).collect();
                let labels = drawn
                    .iter()
                    .map(|e| e.label.unwrap_or(0))
                    .collect::<Vec<_>>();
                Some((scores, groups, Some(labels)))
            }
            None if matches!(self.fairness, FairnessSource::InBatch)
                && self.config.fairness_score().of_pairs() =>
            {
                let groups: Vec<i64> = indices.iter().map(|&i| self.train[i].group).collect();
                let reference = reference.as_ref().expect("validated: a reference");
                Some((self.pair_score(&policy, reference), groups, None))
            }
            None if matches!(self.fairness, FairnessSource::InBatch) => {
                let groups: Vec<i64> = indices.iter().map(|&i| self.train[i].group).collect();
                let scores = self.score(
                    policy.chosen.clone(),
                    policy.chosen_tokens.clone(),
                    reference.as_ref().map(|r| r.chosen.clone()),
                );
                Some((scores, groups, None))
            }
            None => None,
        };
        let fairness = fairness.map(|(scores, groups, labels)| FairnessBatch {
            scores,
            groups,
            labels: labels.map(|labels: Vec<i64>| int_vector(&labels, &ad_device)),
        });
        let mut metrics: Vec<(String, Tensor<1>)> = output
            .metrics()
            .into_iter()
            .map(|(name, value)| (name.to_string(), value))
            .collect();
        let task_loss = match self.group_weights.take() {
            None => output.loss(),
            Some(weights) => {
                let groups: Vec<i64> = indices.iter().map(|&i| self.train[i].group).collect();
                let robust = group_robust(
                    output.per_unit(),
                    &groups,
                    weights,
                    self.config.dpo.group_robust.expect("group-robust"),
                    &ad_device,
                );
                for (g, name) in self.groups.names.iter().enumerate() {
                    let at = |t: &Tensor<1>| t.clone().narrow(0, g, 1);
                    metrics.push((format!("group_loss/{name}"), at(&robust.group_losses)));
                    metrics.push((format!("group_weight/{name}"), at(&robust.weights)));
                }
                self.group_weights = Some(robust.weights);
                robust.loss
            }
        };
        self.tape = tape;
        StepOutput {
            task_loss,
            fairness,
            metrics,
            num_tokens,
        }
    }

    fn backward(&mut self, model: &LlamaForCausalLM, loss: &Tensor<1>) -> GradientsParams {
        match self.tape.take() {
            Some(tape) => tape.backward(model, loss),
            None => GradientsParams::from_grads(loss.backward(), model),
        }
    }

    async fn evaluate(&mut self, model: &LlamaForCausalLM) -> Result<Option<Map<String, Value>>> {
        if self.eval.is_empty() {
            return Ok(None);
        }
        let model = model.valid();
        let indices: Vec<usize> = (0..self.eval.len()).collect();
        let outputs = indices
            .chunks(self.config.batch_size.max(1))
            .map(|chunk| {
                self.pair_forward(&model, Split::Eval, chunk, &self.device, None)
                    .output
            })
            .collect();
        // One device read for the whole set.
        let output = Losses::cat(outputs);
        let metrics = output.metrics();
        let mut parts = vec![output.loss()];
        parts.extend(metrics.iter().map(|(_, value)| value.clone()));
        // With groups on the eval pairs, each pair's margin too, for the per-group accuracies.
        let margins = output
            .margins()
            .filter(|_| self.eval.iter().any(|p| p.group >= 0));
        let grouped = margins.is_some();
        parts.extend(margins);
        let values = read_async(Tensor::cat(parts, 0)).await?;
        let mut map = Map::new();
        map.insert("loss".into(), json!(values[0] as f64));
        for ((name, _), value) in metrics.iter().zip(&values[1..]) {
            map.insert((*name).into(), json!(*value as f64));
        }
        if grouped {
            // TRL's reward accuracy (margin > 0) within each group; the worst group's is what
            // group-robust DPO raises.
            let margins = &values[1 + metrics.len()..];
            let mut accuracy = Map::new();
            let mut worst = f64::INFINITY;
            for (g, name) in self.groups.names.iter().enumerate() {
                let of: Vec<f32> = self
                    .eval
                    .iter()
                    .zip(margins)
                    .filter(|(p, _)| p.group == g as i64)
                    .map(|(_, &m)| m)
                    .collect();
                if of.is_empty() {
                    continue;
                }
                let share = of.iter().filter(|&&m| m > 0.0).count() as f64 / of.len() as f64;
                worst = worst.min(share);
                accuracy.insert(name.clone(), json!(share));
            }
            map.insert("group_reward_accuracy".into(), Value::Object(accuracy));
            map.insert("worst_group_reward_accuracy".into(), json!(worst));
        }
        Ok(Some(map))
    }

    fn memory_plan(&self) -> Option<super::memory::Plan> {
        let (adapted, rank) = match &self.config.lora {
            Some(lora) => (
                lora.weight_paths(&ArchConfig::Llama(self.arch.clone()))
                    .unwrap_or_default(),
                lora.rank,
            ),
            None => (Vec::new(), 0),
        };
        let counts = super::memory::count(&self.arch, &adapted, rank);
        let copy = self.config.lora.is_none()
            && self.config.dpo.needs_reference()
            && self.config.reference_cache.is_none();
        Some(super::memory::plan(
            &self.arch,
            &self.config,
            counts,
            &adapted,
            super::memory::Frozen {
                storage: self.base_storage,
                reference_copy: copy,
                recorded: self.record_contents() == checkpoint::Contents::All,
            },
            &self.device,
            self.step_tokens,
        ))
    }

    fn record_contents(&self) -> checkpoint::Contents {
        if self.source.has_weights() {
            checkpoint::Contents::Trained
        } else {
            checkpoint::Contents::All
        }
    }

    fn apply_lora(&self, model: LlamaForCausalLM, lora: &LoraSettings) -> Result<LlamaForCausalLM> {
        let model = lora.apply(model, &ArchConfig::Llama(self.arch.clone()), &[])?;
        Ok(model.with_lora_dropout(lora.dropout))
    }

    fn export(&self, model: &LlamaForCausalLM, out: &Path) -> Result<()> {
        // The reference TR-DPO ended with, for `eval --run` to compare against what training did.
        if self.config.dpo.sync_ref.is_some()
            && let Some(reference) = &self.reference
        {
            checkpoint::save_module(
                reference,
                &out.join("reference.bpk"),
                checkpoint::Contents::All,
            )?;
        }
        // Unmerged: each weight is merged (and widened) as it is written, so the export never
        // holds a merged f32 copy of the model beside it.
        super::export_run(
            model,
            &model.valid(),
            &ArchConfig::Llama(self.arch.clone()),
            &model::io::export::ExportHead::CausalLm,
            &self.config,
            &self.tokenizer,
            out,
        )
    }

    async fn fairness_eval(&mut self, model: &LlamaForCausalLM) -> Result<Option<FairnessSet>> {
        if self.config.fairness_score().of_pairs() {
            return self.pair_fairness_eval(&model.valid()).await;
        }
        let Some((name, examples)) = &self.fairness_eval else {
            return Ok(None);
        };
        let model = model.valid();
        let scores = self.score_all(&model, examples).await?;
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
        self.num_labels
    }

    fn save_files(&self, dir: &Path) -> Result<()> {
        match (&self.config.dpo.sync_ref, &self.reference) {
            (Some(_), Some(reference)) => checkpoint::save_module(
                reference,
                &dir.join("reference.bpk"),
                checkpoint::Contents::All,
            ),
            _ => Ok(()),
        }
    }

    fn load_files(&mut self, dir: &Path) -> Result<()> {
        let path = dir.join("reference.bpk");
        if self.config.dpo.sync_ref.is_some() && path.exists() {
            self.reference = Some(checkpoint::load_module(
                self.arch.init(&self.device),
                &path,
            )?);
        }
        Ok(())
    }

    fn save_state(&self) -> Result<Option<Value>> {
        let Some(weights) = &self.group_weights else {
            return Ok(None);
        };
        Ok(Some(
            json!({"group_weights": read_blocking(weights.clone())?}),
        ))
    }

    fn load_state(&mut self, state: &Value) -> Result<()> {
        let Some(weights) = &mut self.group_weights else {
            return Ok(());
        };
        let saved: Vec<f32> = state
            .get("group_weights")
            .and_then(|w| serde_json::from_value(w.clone()).ok())
            .filter(|w: &Vec<f32>| w.len() == weights.dims()[0])
            .ok_or_else(|| Error::input("the checkpoint's group weights do not fit this run"))?;
        *weights = Tensor::from_floats(saved.as_slice(), &weights.device());
        Ok(())
    }
}
