//! Direct Preference Optimization (Rafailov et al. 2023) and its family, with TRL's names,
//! definitions (TRL 1.16's `DPOTrainer`) and metrics.
//!
//! Per pair, with the log-ratios c = log π(c) − log π_ref(c), r = log π(r) − log π_ref(r)
//! (sums over completion tokens), their f-divergence scores c', r' (`--f-divergence`; reverse
//! KL, the default, leaves them as they are) and Δ = c' − r':
//! - `sigmoid`: −log σ(βΔ); with label smoothing ε, cDPO's −(1−ε)·log σ(βΔ) − ε·log σ(−βΔ)
//! - `hinge`: relu(1 − βΔ) (SLiC)          - `ipo`: (Δ/n − 1/(2β))², scores per token (IPO)
//! - `robust`: (−(1−ε)·log σ(βΔ) + ε·log σ(−βΔ)) / (1 − 2ε) (Chowdhury et al. 2024)
//! - `exo_pair`: KL(softmax(βΔ, 0) ‖ (1−ε, ε)) (EXO, Ji et al. 2024)
//! - `nca_pair`: −log σ(βc) − ½·log σ(−βc) − ½·log σ(−βr) (NCA, Chen et al. 2024)
//! - `bco_pair`: −log σ(βc) − log σ(−βr)   - `sppo_hard`: (c − 1/(2β))² + (r + 1/(2β))² (SPPO)
//! - `aot`, `aot_unpaired`: the sigmoid loss between the batch's sorted log-ratio differences
//!   (paired: sorted (log π(c) − log π(r)) against sorted reference ones; unpaired: sorted c
//!   against sorted r) (AOT, Melnyk et al. 2024)
//! - `apo_zero`: σ(−βc) + σ(βr); `apo_down`: σ(βc) + σ(−β(c − r)) (APO, D'Oosterlinck et al. 2024)
//! - `discopop`: −log σ(βΔ)·(1 − m) + e^{−βΔ}·m, m = σ(βΔ/τ) (DiscoPOP, Chris Lu et al. 2024)
//! - `sft`: the chosen completions' NLL per token over the batch
//! - `sigmoid_norm`: −log σ(β·(c'/n_c − r'/n_r)), scores per token
//! - `simpo` (not TRL's DPO; CPOTrainer's): −log σ(β·(avg log π(c) − avg log π(r)) − γ), no
//!   reference (Meng et al. 2024)
//! - `orpo` (TRL's ORPOTrainer): the chosen tokens' NLL − β·log σ(log odds(c) − log odds(r)),
//!   odds of the average log-prob p̄: p̄ − log(1 − e^p̄); no reference (Hong et al. 2024)
//!
//! A list of losses (`--loss sigmoid,bco_pair,sft --loss-weights 0.8,0.2,1.0`, TRL's MPO recipe)
//! is the weighted sum of their batch means. `--sft-weight α` adds fairtune's own α·NLL per token
//! of each chosen completion. Implicit rewards are β·c and β·r (SimPO alone: β·avg log π),
//! detached. Every formula is computed so that large |β·Δ| neither overflows nor loses the small
//! terms (log-sigmoids, e^{x + log σ(y)}), where TRL's own float32 code can give inf or NaN.

use burn::tensor::activation::relu;
use burn::tensor::{Int, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum DpoLossKind {
    Sigmoid,
    Robust,
    Ipo,
    Hinge,
    Simpo,
    #[value(name = "exo_pair", alias = "exo-pair")]
    ExoPair,
    #[value(name = "nca_pair", alias = "nca-pair")]
    NcaPair,
    #[value(name = "bco_pair", alias = "bco-pair")]
    BcoPair,
    #[value(name = "sppo_hard", alias = "sppo-hard")]
    SppoHard,
    Aot,
    #[value(name = "aot_unpaired", alias = "aot-unpaired")]
    AotUnpaired,
    #[value(name = "apo_zero", alias = "apo-zero")]
    ApoZero,
    #[value(name = "apo_down", alias = "apo-down")]
    ApoDown,
    Discopop,
    Sft,
    #[value(name = "sigmoid_norm", alias = "sigmoid-norm")]
    SigmoidNorm,
    /// ORPO (Hong et al. 2024; TRL's ORPOTrainer): the chosen NLL minus β·log σ(log odds ratio)
    /// of the per-token average log-probs. No reference model.
    Orpo,
    /// KTO (Ethayarajh et al. 2024; TRL's KTOTrainer) on unpaired examples, see [`super::kto`].
    Kto,
    /// The unpaired APO-zero (TRL's KTOTrainer `apo_zero_unpaired`), see [`super::kto`].
    #[value(name = "apo_zero_unpaired", alias = "apo-zero-unpaired")]
    ApoZeroUnpaired,
}

impl DpoLossKind {
    /// Every loss but SimPO compares with a reference model (`sft` does not use it, but TRL
    /// still reports its rewards against one).
    pub fn needs_reference(self) -> bool {
        !matches!(self, DpoLossKind::Simpo | DpoLossKind::Orpo)
    }

    /// The losses TRL generalizes to an f-divergence (its reparameterization leaves a β·log Z(x)
    /// that cancels only in the chosen − rejected difference).
    fn takes_f_divergence(self) -> bool {
        use DpoLossKind::*;
        matches!(
            self,
            Sigmoid | SigmoidNorm | Hinge | Ipo | ExoPair | Robust | Discopop | Sft
        )
    }

    /// A loss of the whole batch rather than a mean of per-pair losses (`sft` pools the tokens;
    /// the `aot` losses pair sorted values across pairs).
    pub fn is_batch_level(self) -> bool {
        matches!(
            self,
            DpoLossKind::Sft | DpoLossKind::Aot | DpoLossKind::AotUnpaired | DpoLossKind::Orpo
        )
    }

    /// A loss of unpaired examples (`{"prompt","completion","label"}`, KTO's data), not pairs.
    pub fn is_unpaired(self) -> bool {
        matches!(self, DpoLossKind::Kto | DpoLossKind::ApoZeroUnpaired)
    }

    /// TRL's name.
    pub fn name(self) -> String {
        super::value_name(&self)
    }
}

/// The divergence from the reference that DPO's implicit reward regularizes (f-DPO, Wang et al.
/// 2023): what a log-ratio u = log π − log π_ref becomes before the loss, f'(e^u).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum FDivergence {
    /// u itself: standard DPO.
    #[default]
    #[value(name = "reverse_kl", alias = "reverse-kl")]
    ReverseKl,
    /// 1 − e^{−u}.
    #[value(name = "forward_kl", alias = "forward-kl")]
    ForwardKl,
    /// log 2 + log σ(u).
    #[value(name = "js_divergence", alias = "js-divergence")]
    JsDivergence,
    /// (e^{(α−1)u} − 1)/(α − 1), the exponent clamped at 80 as TRL clamps it; u at α = 1.
    #[value(name = "alpha_divergence", alias = "alpha-divergence")]
    AlphaDivergence,
}

impl FDivergence {
    fn is_reverse_kl(&self) -> bool {
        *self == FDivergence::ReverseKl
    }

    fn score(self, u: Tensor<1>, alpha: f64) -> Tensor<1> {
        match self {
            FDivergence::ReverseKl => u,
            FDivergence::ForwardKl => u.neg().exp().neg() + 1.0,
            FDivergence::JsDivergence => log_sigmoid(u) + std::f64::consts::LN_2,
            FDivergence::AlphaDivergence if (alpha - 1.0).abs() < 1e-6 => u,
            FDivergence::AlphaDivergence => {
                ((u * (alpha - 1.0)).clamp_max(80.0).exp() - 1.0) / (alpha - 1.0)
            }
        }
    }
}

/// The default step size η of group-robust DPO's weights.
pub const GROUP_ROBUST_STEP: f64 = 0.1;

fn default_alpha() -> f64 {
    0.5
}

fn default_tau() -> f64 {
    0.05
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DpoConfig {
    pub beta: f64,
    /// The loss, or several summed with `loss_weights` (written as one name when it is one).
    #[serde(with = "one_or_many")]
    pub loss: Vec<DpoLossKind>,
    /// One weight per loss (empty: 1 each).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub loss_weights: Vec<f64>,
    /// ε for `sigmoid` (cDPO), `robust`, `exo_pair`, `aot`, `aot_unpaired` and `simpo`.
    pub label_smoothing: f64,
    /// γ, SimPO's target reward margin.
    pub simpo_gamma: f64,
    /// α of fairtune's SFT term on the chosen completion (0 = off).
    pub sft_weight: f64,
    #[serde(default, skip_serializing_if = "FDivergence::is_reverse_kl")]
    pub f_divergence: FDivergence,
    /// α of the α-divergence.
    #[serde(default = "default_alpha", skip_serializing_if = "is_default_alpha")]
    pub f_alpha_divergence_coef: f64,
    /// DiscoPOP's temperature τ.
    #[serde(default = "default_tau", skip_serializing_if = "is_default_tau")]
    pub discopop_tau: f64,
    /// Group-robust DPO (Ramesh et al. 2024) with this step size η of its exponentiated-gradient
    /// group weights; `None`: the plain mean over pairs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_robust: Option<f64>,
    /// LD-DPO's α (TRL's `ld_alpha`): the log-probs of a completion's tokens beyond the length
    /// of its pair's shorter completion count α times (a pair's sums, policy and reference).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ld_alpha: Option<f64>,
    /// TR-DPO's reference updates (Gorbatovski et al. 2024, TRL's `sync_ref_model`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_ref: Option<RefSync>,
    /// WPO (Zhou et al. 2024, TRL's `use_weighting`): each pair's loss weighted by
    /// exp(mean_t (log π(y_t) − log Σ_v π_v²)) of its chosen times that of its rejected
    /// completion (detached), so pairs the policy itself would likely sample count more.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub use_weighting: bool,
    /// KTO's weight of the desirable examples' losses (TRL's `desirable_weight`).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub desirable_weight: f64,
    /// KTO's weight of the undesirable examples' losses (TRL's `undesirable_weight`).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub undesirable_weight: f64,
}

/// TR-DPO: every `steps` steps the reference becomes α·policy + (1 − α)·reference (α = 1: a
/// hard copy), as TRL's `SyncRefModelCallback` does it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct RefSync {
    pub mixup_alpha: f64,
    pub steps: usize,
}

/// TRL's defaults for TR-DPO: `ref_model_mixup_alpha` 0.6, `ref_model_sync_steps` 512.
pub const REF_MIXUP_ALPHA: f64 = 0.6;
pub const REF_SYNC_STEPS: usize = 512;

fn is_default_alpha(alpha: &f64) -> bool {
    *alpha == default_alpha()
}

fn is_default_tau(tau: &f64) -> bool {
    *tau == default_tau()
}

fn one() -> f64 {
    1.0
}

fn is_one(weight: &f64) -> bool {
    *weight == 1.0
}

/// A list serialized as its one element when it has one, so that configs written before lists
/// existed (`"loss": "sigmoid"`) read, and fingerprint, as they did.
mod one_or_many {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::DpoLossKind;

    pub fn serialize<S: Serializer>(losses: &[DpoLossKind], s: S) -> Result<S::Ok, S::Error> {
        match losses {
            [one] => one.serialize(s),
            many => many.serialize(s),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<DpoLossKind>, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(DpoLossKind),
            Many(Vec<DpoLossKind>),
        }
        Ok(match OneOrMany::deserialize(d)? {
            OneOrMany::One(one) => vec![one],
            OneOrMany::Many(many) => many,
        })
    }
}

impl Default for DpoConfig {
    fn default() -> Self {
        Self {
            beta: 0.1,
            loss: vec![DpoLossKind::Sigmoid],
            loss_weights: Vec::new(),
            label_smoothing: 0.0,
            simpo_gamma: 0.5,
            sft_weight: 0.0,
            f_divergence: FDivergence::ReverseKl,
            f_alpha_divergence_coef: default_alpha(),
            discopop_tau: default_tau(),
            group_robust: None,
            ld_alpha: None,
            sync_ref: None,
            use_weighting: false,
            desirable_weight: 1.0,
            undesirable_weight: 1.0,
        }
    }
}

impl DpoConfig {
    /// One loss with the other settings at their defaults.
    pub fn with_loss(loss: DpoLossKind) -> Self {
        Self {
            loss: vec![loss],
            ..Self::default()
        }
    }

    /// Whether any of the losses compares with a reference model.
    pub fn needs_reference(&self) -> bool {
        self.loss.iter().any(|l| l.needs_reference())
    }

    /// Whether the loss is one of unpaired examples (KTO's data).
    pub fn is_unpaired(&self) -> bool {
        self.loss.iter().any(|l| l.is_unpaired())
    }

    /// Whether the loss needs the KL sequences (mismatched prompt and completion) of KTO.
    pub fn needs_kl(&self) -> bool {
        self.loss.contains(&DpoLossKind::Kto)
    }

    /// Each loss with its weight.
    pub fn weighted(&self) -> impl Iterator<Item = (DpoLossKind, f64)> + '_ {
        let weight = |i: usize| self.loss_weights.get(i).copied().unwrap_or(1.0);
        self.loss
            .iter()
            .enumerate()
            .map(move |(i, &l)| (l, weight(i)))
    }

    pub fn validate(&self) -> Result<()> {
        if !(self.beta.is_finite() && self.beta > 0.0) {
            return Err(Error::input(format!(
                "--beta must be a positive number, got {}",
                self.beta
            )));
        }
        if self.loss.is_empty() {
            return Err(Error::input("--loss needs at least one loss type"));
        }
        if let Some(dup) = self
            .loss
            .iter()
            .enumerate()
            .find(|(i, l)| self.loss[..*i].contains(l))
        {
            return Err(Error::input(format!(
                "--loss names {} twice; give it one weight instead",
                dup.1.name()
            )));
        }
        if !self.loss_weights.is_empty() && self.loss_weights.len() != self.loss.len() {
            return Err(Error::input(format!(
                "--loss-weights has {} weights for {} losses; give one per loss",
                self.loss_weights.len(),
                self.loss.len()
            )));
        }
        if let Some(bad) = self.loss_weights.iter().find(|w| !w.is_finite()) {
            return Err(Error::input(format!(
                "--loss-weights must be finite numbers, got {bad}"
            )));
        }
        if !(0.0..0.5).contains(&self.label_smoothing) {
            return Err(Error::input(format!(
                "--label-smoothing must be in [0, 0.5), got {}",
                self.label_smoothing
            )));
        }
        if self.loss.contains(&DpoLossKind::ExoPair) && self.label_smoothing == 0.0 {
            return Err(Error::input(
                "--loss exo_pair needs --label-smoothing ε > 0 (the target distribution is \
                 (1 − ε, ε); TRL suggests 1e-3)",
            ));
        }
        if let Some(unpaired) = self.loss.iter().find(|l| l.is_unpaired()) {
            self.validate_unpaired(*unpaired)?;
        } else if self.desirable_weight != 1.0 || self.undesirable_weight != 1.0 {
            return Err(Error::input(
                "--desirable-weight and --undesirable-weight weigh the examples of --loss kto or \
                 apo_zero_unpaired",
            ));
        }
        if !self.f_divergence.is_reverse_kl()
            && let Some(other) = self.loss.iter().find(|l| !l.takes_f_divergence())
        {
            return Err(Error::input(format!(
                "--f-divergence applies to sigmoid, sigmoid_norm, hinge, ipo, exo_pair, robust, \
                 discopop and sft, not to {}",
                other.name()
            )));
        }
        if !self.f_alpha_divergence_coef.is_finite() {
            return Err(Error::input("--f-alpha-divergence-coef must be finite"));
        }
        if !(self.discopop_tau.is_finite() && self.discopop_tau > 0.0) {
            return Err(Error::input(format!(
                "--discopop-tau must be a positive number, got {}",
                self.discopop_tau
            )));
        }
        if let Some(step) = self.group_robust {
            if !(step.is_finite() && step > 0.0) {
                return Err(Error::input(format!(
                    "--group-robust-step must be a positive number, got {step}"
                )));
            }
            if let Some(batch_level) = self.loss.iter().find(|l| l.is_batch_level()) {
                return Err(Error::input(format!(
                    "--group-robust weighs each pair's loss by its group; {} is a loss of the \
                     whole batch",
                    batch_level.name()
                )));
            }
        }
        if let Some(sync) = self.sync_ref {
            if !(sync.mixup_alpha > 0.0 && sync.mixup_alpha <= 1.0) {
                return Err(Error::input(format!(
                    "--ref-model-mixup-alpha must be in (0, 1], got {}",
                    sync.mixup_alpha
                )));
            }
            if sync.steps == 0 {
                return Err(Error::input("--ref-model-sync-steps must be at least 1"));
            }
            if !self.needs_reference() {
                return Err(Error::input(
                    "--sync-ref-model updates a reference model; these losses have none",
                ));
            }
        }
        if self.use_weighting
            && let Some(other) = self.loss.iter().find(|l| {
                matches!(
                    l,
                    DpoLossKind::Aot
                        | DpoLossKind::AotUnpaired
                        | DpoLossKind::Simpo
                        | DpoLossKind::Orpo
                )
            })
        {
            return Err(Error::input(format!(
                "--use-weighting (WPO) weighs each pair's loss; {} {}",
                other.name(),
                if matches!(other, DpoLossKind::Aot | DpoLossKind::AotUnpaired) {
                    "sorts the pairs, so no loss belongs to one pair (TRL refuses it too)"
                } else {
                    "is not one of DPOTrainer's losses, which TRL's WPO weighs"
                }
            )));
        }
        if let Some(alpha) = self.ld_alpha
            && !(0.0..=1.0).contains(&alpha)
        {
            return Err(Error::input(format!(
                "--ld-alpha must be in [0, 1], got {alpha}"
            )));
        }
        if !self.simpo_gamma.is_finite() {
            return Err(Error::input("--simpo-gamma must be finite"));
        }
        if !(self.sft_weight.is_finite() && self.sft_weight >= 0.0) {
            return Err(Error::input(format!(
                "--sft-weight must be a non-negative number, got {}",
                self.sft_weight
            )));
        }
        Ok(())
    }
}

impl DpoConfig {
    /// What a loss of unpaired examples cannot be combined with.
    fn validate_unpaired(&self, loss: DpoLossKind) -> Result<()> {
        let name = loss.name();
        if self.loss.len() > 1 {
            return Err(Error::input(format!(
                "--loss {name} learns from unpaired examples; it cannot be listed with other \
                 losses"
            )));
        }
        for (weight, flag) in [
            (self.desirable_weight, "--desirable-weight"),
            (self.undesirable_weight, "--undesirable-weight"),
        ] {
            if !(weight.is_finite() && weight > 0.0) {
                return Err(Error::input(format!(
                    "{flag} must be a positive number, got {weight}"
                )));
            }
        }
        let refused = [
            (self.use_weighting, "--use-weighting"),
            (self.label_smoothing != 0.0, "--label-smoothing"),
            (self.sft_weight != 0.0, "--sft-weight"),
            (self.ld_alpha.is_some(), "--ld-alpha"),
            (self.group_robust.is_some(), "--group-robust"),
        ];
        if let Some((_, flag)) = refused.iter().find(|(set, _)| *set) {
            return Err(Error::input(format!(
                "{flag} is for preference pairs; --loss {name} learns from unpaired examples"
            )));
        }
        Ok(())
    }
}

/// Completion log-probs of a batch of pairs: sums over completion tokens, and token counts.
#[derive(Clone, Debug)]
pub struct PairLogps {
    pub chosen: Tensor<1>,
    pub rejected: Tensor<1>,
    pub chosen_tokens: Tensor<1>,
    pub rejected_tokens: Tensor<1>,
}

/// The loss and, per pair, the detached quantities TRL's metrics are made of.
#[derive(Clone, Debug)]
pub struct DpoOutput {
    /// Scalar `[1]`: the weighted sum of the losses' batch means (plus the SFT term).
    pub loss: Tensor<1>,
    /// Each pair's share: the weighted sum of the per-pair losses (and the SFT term), whose mean
    /// is `loss` when no loss is of the whole batch. Group-robust DPO weighs it by group.
    pub per_pair: Tensor<1>,
    pub chosen_rewards: Tensor<1>,
    pub rejected_rewards: Tensor<1>,
    /// The policy's summed log-probs.
    pub chosen_logps: Tensor<1>,
    pub rejected_logps: Tensor<1>,
}

/// The mean of batches' scalar losses `[1]`, each weighted by its count of examples (detached):
/// the loss of the batches joined.
pub(super) fn batch_weighted_mean(batches: impl Iterator<Item = (Tensor<1>, usize)>) -> Tensor<1> {
    let batches: Vec<(Tensor<1>, usize)> = batches.collect();
    let total = batches.iter().map(|(_, n)| n).sum::<usize>().max(1) as f64;
    batches
        .into_iter()
        .map(|(loss, n)| loss.detach() * (n as f64 / total))
        .reduce(|sum, term| sum + term)
        .expect("at least one batch")
}

/// Numerically stable log σ(x) = min(x, 0) − log1p(exp(−|x|)). Kept instead of burn's
/// `activation::log_sigmoid`, which computes `−(m + log(exp(−m) + exp(−x − m)))`: in f32 that
/// rounds log σ(x) to 0 for x > ~17 (log(1 + 2·10⁻⁸) = 0), where log1p keeps e^{−x}, as torch's
/// `logsigmoid` (TRL's) does. Its autodiff gradient is σ(−x), finite everywhere.
pub fn log_sigmoid<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    x.clone().clamp_max(0.0) - x.abs().neg().exp().log1p()
}

/// σ(x) as e^{log σ(x)}: 1 − σ(x) is σ(−x), which keeps its small values.
fn sigmoid(x: Tensor<1>) -> Tensor<1> {
    log_sigmoid(x).exp()
}

/// log(1 − eˣ) for x < 0, as TRL's `log1mexp`: log1p(−eˣ) below −ln 2, log(−expm1(x)) above
/// (expm1 by its series near 0, where eˣ − 1 would cancel). Each branch sees only its own range,
/// so the other's infinities never reach the gradient.
fn log1mexp(x: Tensor<1>) -> Tensor<1> {
    let ln2 = std::f64::consts::LN_2;
    let low = x.clone().lower_elem(-ln2);
    let far = x.clone().clamp_max(-ln2).exp().neg().log1p();
    let near = x.clone().clamp_min(-ln2);
    let small = near.clone().abs().lower_elem(0.1);
    let series = {
        // x + x²/2 + x³/6 + x⁴/24 + x⁵/120 + x⁶/720, by Horner's rule.
        let mut sum = near.clone() / 720.0 + 1.0 / 120.0;
        for c in [1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0] {
            sum = sum * near.clone() + c;
        }
        sum * near.clone()
    };
    let expm1 = (near.clone().exp() - 1.0).mask_where(small, series);
    let near = expm1.neg().log();
    near.mask_where(low, far)
}

/// `x` in ascending order (differentiable: the order is found on the detached values).
fn sorted(x: Tensor<1>) -> Tensor<1> {
    let order: Tensor<1, Int> = x.clone().detach().argsort(0);
    x.select(0, order)
}

/// −(1−ε)·log σ(x) − ε·log σ(−x).
fn smoothed_sigmoid_loss(x: Tensor<1>, eps: f64) -> Tensor<1> {
    if eps == 0.0 {
        return log_sigmoid(x).neg();
    }
    log_sigmoid(x.clone()) * -(1.0 - eps) - log_sigmoid(x.neg()) * eps
}

pub fn dpo_loss(
    config: &DpoConfig,
    policy: &PairLogps,
    reference: Option<&PairLogps>,
) -> DpoOutput {
    dpo_loss_weighted(config, policy, reference, None)
}

/// WPO's weight of each pair (TRL's `use_weighting`): exp(ā_c)·exp(ā_r), ā a completion's mean
/// over its tokens of log π(y_t) − log Σ_v π_v² (`aligned`: their sums), detached.
pub fn wpo_weights(
    chosen_aligned: Tensor<1>,
    rejected_aligned: Tensor<1>,
    policy: &PairLogps,
) -> Tensor<1> {
    let n_c = policy.chosen_tokens.clone().detach().clamp_min(1.0);
    let n_r = policy.rejected_tokens.clone().detach().clamp_min(1.0);
    (chosen_aligned.detach() / n_c).exp() * (rejected_aligned.detach() / n_r).exp()
}

/// [`dpo_loss`] with each pair's loss multiplied by `weights` (WPO: [`wpo_weights`]), as TRL
/// weighs every loss type of its list (the `sft` term by their mean).
pub fn dpo_loss_weighted(
    config: &DpoConfig,
    policy: &PairLogps,
    reference: Option<&PairLogps>,
    weights: Option<Tensor<1>>,
) -> DpoOutput {
    let weighed = |per_pair: Tensor<1>| match &weights {
        Some(w) => per_pair * w.clone(),
        None => per_pair,
    };
    let beta = config.beta;
    let eps = config.label_smoothing;
    let (pi_c, pi_r) = (policy.chosen.clone(), policy.rejected.clone());
    let n_c = policy.chosen_tokens.clone().clamp_min(1.0);
    let n_r = policy.rejected_tokens.clone().clamp_min(1.0);
    let reference = reference.map(|r| (r.chosen.clone().detach(), r.rejected.clone().detach()));
    // The log-ratios c, r and their f-divergence scores.
    let ratios = reference.as_ref().map(|(ref_c, ref_r)| {
        let (c, r) = (pi_c.clone() - ref_c.clone(), pi_r.clone() - ref_r.clone());
        let alpha = config.f_alpha_divergence_coef;
        let scores = (
            config.f_divergence.score(c.clone(), alpha),
            config.f_divergence.score(r.clone(), alpha),
        );
        (c, r, scores)
    });
    let need = |kind: DpoLossKind| {
        ratios.as_ref().unwrap_or_else(|| {
            panic!(
                "reference log-probs are required for the {} loss",
                kind.name()
            )
        })
    };

    // The chosen completions' NLL per token over the whole batch (`sft`, ORPO's first term).
    let batch_nll =
        || (pi_c.clone().sum() / policy.chosen_tokens.clone().sum().clamp_min(1.0)).neg();
    let mut loss: Option<Tensor<1>> = None;
    let mut per_pair_sum: Option<Tensor<1>> = None;
    for (kind, weight) in config.weighted() {
        let term = match kind {
            // A batch-level mean already: Σ NLL / Σ tokens (TRL's WPO: times the mean weight).
            DpoLossKind::Sft => match &weights {
                Some(w) => batch_nll() * w.clone().mean(),
                None => batch_nll(),
            },
            DpoLossKind::Orpo => {
                let (avg_c, avg_r) = (pi_c.clone() / n_c.clone(), pi_r.clone() / n_r.clone());
                let log_odds =
                    (avg_c.clone() - avg_r.clone()) - (log1mexp(avg_c) - log1mexp(avg_r));
                batch_nll() - (log_sigmoid(log_odds) * beta).mean()
            }
            DpoLossKind::Simpo => {
                let logits = (pi_c.clone() / n_c.clone() - pi_r.clone() / n_r.clone())
                    - config.simpo_gamma / beta;
                let per_pair = smoothed_sigmoid_loss(logits * beta, eps);
                let weighted = per_pair.clone() * weight;
                per_pair_sum = Some(match per_pair_sum {
                    Some(sum) => sum + weighted,
                    None => weighted,
                });
                per_pair.mean()
            }
            _ => {
                let (c, r, (cs, rs)) = need(kind);
                let (c, r, cs, rs) = (c.clone(), r.clone(), cs.clone(), rs.clone());
                let delta = cs.clone() - rs.clone();
                let per_pair = match kind {
                    DpoLossKind::Sigmoid => smoothed_sigmoid_loss(delta * beta, eps),
                    DpoLossKind::Hinge => relu(delta * -beta + 1.0),
                    DpoLossKind::Ipo => {
                        (cs / n_c.clone() - rs / n_r.clone() - 1.0 / (2.0 * beta)).powi_scalar(2)
                    }
                    DpoLossKind::ExoPair => {
                        let (log_qw, log_ql) = (
                            log_sigmoid(delta.clone() * beta),
                            log_sigmoid(delta * -beta),
                        );
                        log_qw.clone().exp() * (log_qw - (1.0 - eps).ln())
                            + log_ql.clone().exp() * (log_ql - eps.ln())
                    }
                    DpoLossKind::NcaPair => {
                        log_sigmoid(c.clone() * beta).neg()
                            - log_sigmoid(c * -beta) * 0.5
                            - log_sigmoid(r * -beta) * 0.5
                    }
                    DpoLossKind::Robust => {
                        (log_sigmoid(delta.clone() * beta) * -(1.0 - eps)
                            + log_sigmoid(delta * -beta) * eps)
                            / (1.0 - 2.0 * eps)
                    }
                    DpoLossKind::BcoPair => log_sigmoid(c * beta).neg() - log_sigmoid(r * -beta),
                    DpoLossKind::SppoHard => {
                        (c - 0.5 / beta).powi_scalar(2) + (r + 0.5 / beta).powi_scalar(2)
                    }
                    DpoLossKind::Aot => {
                        let (ref_c, ref_r) = reference.clone().expect("a reference with ratios");
                        let gap = sorted(pi_c.clone() - pi_r.clone()) - sorted(ref_c - ref_r);
                        smoothed_sigmoid_loss(gap * beta, eps)
                    }
                    DpoLossKind::AotUnpaired => {
                        smoothed_sigmoid_loss((sorted(c) - sorted(r)) * beta, eps)
                    }
                    DpoLossKind::ApoZero => sigmoid(c * -beta) + sigmoid(r * beta),
                    DpoLossKind::ApoDown => sigmoid(c.clone() * beta) + sigmoid((c - r) * -beta),
                    DpoLossKind::Discopop => {
                        let logits = delta * beta;
                        let tau = config.discopop_tau;
                        // e^{−x}·σ(x/τ) as e^{−x + log σ(x/τ)}: finite where e^{−x} is not.
                        let exp_part =
                            (logits.clone().neg() + log_sigmoid(logits.clone() / tau)).exp();
                        let modulation = sigmoid(logits.clone() / tau);
                        log_sigmoid(logits).neg() * (modulation.neg() + 1.0) + exp_part
                    }
                    DpoLossKind::SigmoidNorm => {
                        log_sigmoid((cs / n_c.clone() - rs / n_r.clone()) * beta).neg()
                    }
                    DpoLossKind::Sft | DpoLossKind::Simpo | DpoLossKind::Orpo => {
                        unreachable!("handled above")
                    }
                    DpoLossKind::Kto | DpoLossKind::ApoZeroUnpaired => {
                        unreachable!("losses of unpaired examples go through kto_loss")
                    }
                };
                let per_pair = weighed(per_pair);
                if !kind.is_batch_level() {
                    let weighted = per_pair.clone() * weight;
                    per_pair_sum = Some(match per_pair_sum {
                        Some(sum) => sum + weighted,
                        None => weighted,
                    });
                }
                per_pair.mean()
            }
        };
        let term = term * weight;
        loss = Some(match loss {
            Some(sum) => sum + term,
            None => term,
        });
    }
    let mut loss = loss.expect("validated: at least one loss");
    let mut per_pair = per_pair_sum.unwrap_or_else(|| pi_c.zeros_like());
    if config.sft_weight > 0.0 {
        let nll = (pi_c.clone() / n_c.clone()).neg();
        loss = loss + nll.clone().mean() * config.sft_weight;
        per_pair = per_pair + nll * config.sft_weight;
    }
    let (chosen_rewards, rejected_rewards) = match &ratios {
        Some((c, r, _)) => (c.clone().detach() * beta, r.clone().detach() * beta),
        // Reference-free (SimPO, SFT): β·avg log π.
        None => (
            (pi_c.clone() / n_c).detach() * beta,
            (pi_r.clone() / n_r).detach() * beta,
        ),
    };
    DpoOutput {
        loss,
        per_pair,
        chosen_rewards,
        rejected_rewards,
        chosen_logps: pi_c.detach(),
        rejected_logps: pi_r.detach(),
    }
}

/// TRL's names of its six reward metrics, in the order [`DpoOutput::metrics`] gives them.
pub const DPO_METRICS: [&str; 6] = [
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracies",
    "logps/chosen",
    "logps/rejected",
];

impl DpoOutput {
    /// TRL's reward metrics over these pairs, each a detached scalar `[1]` on the device, named
    /// as [`DPO_METRICS`]: mean rewards, mean margin, the share of pairs whose margin is > 0 (a
    /// tie is not accurate, as in TRL) and the mean log-probs. The step logs them per batch,
    /// evaluation over the whole set (its batches' vectors joined by [`Self::cat`]).
    pub fn metrics(&self) -> Vec<(&'static str, Tensor<1>)> {
        let chosen = self.chosen_rewards.clone().detach();
        let rejected = self.rejected_rewards.clone().detach();
        let margins = chosen.clone() - rejected.clone();
        let values = [
            chosen.mean(),
            rejected.mean(),
            margins.clone().mean(),
            margins.greater_elem(0.0).float().mean(),
            self.chosen_logps.clone().detach().mean(),
            self.rejected_logps.clone().detach().mean(),
        ];
        DPO_METRICS.into_iter().zip(values).collect()
    }

    /// The per-pair vectors of several batches as one output; `loss` becomes the pairs' mean of
    /// the batches' losses (each batch's weighted by its pairs).
    pub fn cat(outputs: Vec<DpoOutput>) -> DpoOutput {
        let loss = batch_weighted_mean(
            outputs
                .iter()
                .map(|o| (o.loss.clone(), o.chosen_rewards.dims()[0])),
        );
        let (mut cr, mut rr, mut cl, mut rl) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut per_pair = Vec::new();
        for output in outputs {
            per_pair.push(output.per_pair);
            cr.push(output.chosen_rewards);
            rr.push(output.rejected_rewards);
            cl.push(output.chosen_logps);
            rl.push(output.rejected_logps);
        }
        DpoOutput {
            loss,
            per_pair: Tensor::cat(per_pair, 0),
            chosen_rewards: Tensor::cat(cr, 0),
            rejected_rewards: Tensor::cat(rr, 0),
            chosen_logps: Tensor::cat(cl, 0),
            rejected_logps: Tensor::cat(rl, 0),
        }
    }
}
