//! Direct Preference Optimization (Rafailov et al. 2023) and its family, with TRL's metrics.
//!
//! With h = (log π(c) − log π_ref(c)) − (log π(r) − log π_ref(r)) per pair:
//! - `sigmoid`: −(1−ε)·log σ(βh) − ε·log σ(−βh)   (ε = label smoothing: cDPO)
//! - `robust`:  (−(1−ε)·log σ(βh) + ε·log σ(−βh)) / (1 − 2ε)   (Chowdhury et al. 2024)
//! - `ipo`:     (h − 1/(2β))², log-probs averaged per token   (Azar et al. 2023)
//! - `hinge`:   relu(1 − βh)   (SLiC, Zhao et al. 2023)
//! - `simpo`:   −log σ(β·(avg log π(c) − avg log π(r)) − γ), no reference   (Meng et al. 2024)
//!
//! plus an optional SFT term α·NLL(chosen) per token (RPO). Implicit rewards are
//! β·(log π − log π_ref) (SimPO: β·avg log π), detached; TRL's metric names are kept.

use burn::tensor::Tensor;
use burn::tensor::activation::relu;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DpoLossKind {
    Sigmoid,
    Robust,
    Ipo,
    Hinge,
    Simpo,
}

impl DpoLossKind {
    /// IPO and SimPO work on per-token average log-probs; the others on sums.
    pub fn averages_logps(self) -> bool {
        matches!(self, DpoLossKind::Ipo | DpoLossKind::Simpo)
    }

    pub fn needs_reference(self) -> bool {
        self != DpoLossKind::Simpo
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DpoConfig {
    pub beta: f64,
    pub loss: DpoLossKind,
    /// ε for `sigmoid` (cDPO), `robust` and `simpo`.
    pub label_smoothing: f64,
    /// γ, SimPO's target reward margin.
    pub simpo_gamma: f64,
    /// α of the SFT term on the chosen completion (0 = off).
    pub sft_weight: f64,
}

impl Default for DpoConfig {
    fn default() -> Self {
        Self {
            beta: 0.1,
            loss: DpoLossKind::Sigmoid,
            label_smoothing: 0.0,
            simpo_gamma: 0.5,
            sft_weight: 0.0,
        }
    }
}

impl DpoConfig {
    pub fn validate(&self) -> Result<()> {
        if !(self.beta.is_finite() && self.beta > 0.0) {
            return Err(Error::input(format!(
                "--beta must be a positive number, got {}",
                self.beta
            )));
        }
        if !(0.0..0.5).contains(&self.label_smoothing) {
            return Err(Error::input(format!(
                "--label-smoothing must be in [0, 0.5), got {}",
                self.label_smoothing
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

/// Completion log-probs of a batch of pairs: sums over completion tokens, and token counts.
#[derive(Clone, Debug)]
pub struct PairLogps {
    pub chosen: Tensor<1>,
    pub rejected: Tensor<1>,
    pub chosen_tokens: Tensor<1>,
    pub rejected_tokens: Tensor<1>,
}

impl PairLogps {
    /// The log-probs the loss uses: sums, or per-token averages for IPO/SimPO.
    fn as_used(&self, average: bool) -> (Tensor<1>, Tensor<1>) {
        if average {
            (
                self.chosen.clone() / self.chosen_tokens.clone().clamp_min(1.0),
                self.rejected.clone() / self.rejected_tokens.clone().clamp_min(1.0),
            )
        } else {
            (self.chosen.clone(), self.rejected.clone())
        }
    }
}

/// The loss and, per pair, the detached quantities TRL's metrics are made of.
#[derive(Clone, Debug)]
pub struct DpoOutput {
    /// Scalar `[1]`: mean over pairs (plus the SFT term).
    pub loss: Tensor<1>,
    pub chosen_rewards: Tensor<1>,
    pub rejected_rewards: Tensor<1>,
    pub chosen_logps: Tensor<1>,
    pub rejected_logps: Tensor<1>,
}

/// Numerically stable log σ(x) = min(x, 0) − log1p(exp(−|x|)). Kept instead of burn's
/// `activation::log_sigmoid`, which computes `−(m + log(exp(−m) + exp(−x − m)))`: in f32 that
/// rounds log σ(x) to 0 for x > ~17 (log(1 + 2·10⁻⁸) = 0), where log1p keeps e^{−x}, as torch's
/// `logsigmoid` (TRL's) does. Its autodiff gradient is σ(−x), finite everywhere.
pub fn log_sigmoid<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    x.clone().clamp_max(0.0) - x.abs().neg().exp().log1p()
}

pub fn dpo_loss(
    config: &DpoConfig,
    policy: &PairLogps,
    reference: Option<&PairLogps>,
) -> DpoOutput {
    let average = config.loss.averages_logps();
    let (pi_c, pi_r) = policy.as_used(average);
    let beta = config.beta;
    let eps = config.label_smoothing;

    let (losses, chosen_rewards, rejected_rewards) = if config.loss == DpoLossKind::Simpo {
        let logits = (pi_c.clone() - pi_r.clone()) - config.simpo_gamma / beta;
        let losses =
            log_sigmoid(logits.clone() * beta) * -(1.0 - eps) - log_sigmoid(logits * -beta) * eps;
        (
            losses,
            pi_c.clone().detach() * beta,
            pi_r.clone().detach() * beta,
        )
    } else {
        let reference = reference.expect("reference log-probs are required for this DPO loss");
        let (ref_c, ref_r) = reference.as_used(average);
        let (ref_c, ref_r) = (ref_c.detach(), ref_r.detach());
        let h = (pi_c.clone() - ref_c.clone()) - (pi_r.clone() - ref_r.clone());
        let losses = match config.loss {
            DpoLossKind::Sigmoid => {
                log_sigmoid(h.clone() * beta) * -(1.0 - eps) - log_sigmoid(h * -beta) * eps
            }
            DpoLossKind::Robust => {
                (log_sigmoid(h.clone() * beta) * -(1.0 - eps) + log_sigmoid(h * -beta) * eps)
                    / (1.0 - 2.0 * eps)
            }
            DpoLossKind::Ipo => (h - 1.0 / (2.0 * beta)).powi_scalar(2),
            DpoLossKind::Hinge => relu((h * -beta) + 1.0),
            DpoLossKind::Simpo => unreachable!(),
        };
        (
            losses,
            (pi_c.clone().detach() - ref_c) * beta,
            (pi_r.clone().detach() - ref_r) * beta,
        )
    };

    let mut loss = losses.mean();
    if config.sft_weight > 0.0 {
        let nll = (policy.chosen.clone() / policy.chosen_tokens.clone().clamp_min(1.0)).neg();
        loss = loss + nll.mean() * config.sft_weight;
    }
    DpoOutput {
        loss,
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
        let pairs: Vec<usize> = outputs.iter().map(|o| o.chosen_rewards.dims()[0]).collect();
        let total = pairs.iter().sum::<usize>().max(1) as f64;
        let mut loss = None;
        let (mut cr, mut rr, mut cl, mut rl) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (output, n) in outputs.into_iter().zip(pairs) {
            let weighted = output.loss.detach() * (n as f64 / total);
            loss = Some(match loss {
                Some(sum) => sum + weighted,
                None => weighted,
            });
            cr.push(output.chosen_rewards);
            rr.push(output.rejected_rewards);
            cl.push(output.chosen_logps);
            rl.push(output.rejected_logps);
        }
        DpoOutput {
            loss: loss.expect("at least one batch"),
            chosen_rewards: Tensor::cat(cr, 0),
            rejected_rewards: Tensor::cat(rr, 0),
            chosen_logps: Tensor::cat(cl, 0),
            rejected_logps: Tensor::cat(rl, 0),
        }
    }
}
