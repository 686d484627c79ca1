//! Losses of unpaired preference data: KTO (Ethayarajh et al. 2024, "KTO: Model Alignment as
//! Prospect Theoretic Optimization", Eq. 7) and the unpaired APO-zero (D'Oosterlinck et al.
//! 2024), with TRL's names, definitions and metrics (TRL 1.16's `KTOTrainer`).
//!
//! Each example is a prompt, one completion and a label: desirable or not. With the log-ratio
//! h = log π(y|x) − log π_ref(y|x) (sums over completion tokens) and the batch's reference point
//! z₀ = max(0, mean over the batch of the same log-ratio on mismatched pairs (x, y′): each prompt
//! with another example's completion), detached:
//! - `kto`: desirable 1 − σ(β(h − z₀)), undesirable 1 − σ(β(z₀ − h))
//! - `apo_zero_unpaired`: desirable 1 − σ(βh), undesirable σ(βh) (no z₀)
//!
//! each weighted by `--desirable-weight` / `--undesirable-weight`, and the loss is the mean over
//! the batch's examples. Rewards are β·h, detached.

use burn::tensor::{Tensor, TensorData};

use super::dpo::{DpoConfig, DpoLossKind, log_sigmoid};

/// The policy's or the reference's summed completion log-probs of a batch of unpaired examples,
/// and of their mismatched (KL) sequences when the loss needs z₀.
#[derive(Clone, Debug)]
pub struct UnpairedLogps {
    pub completions: Tensor<1>,
    pub kl: Option<Tensor<1>>,
}

/// The loss and, per example, the detached quantities TRL's KTO metrics are made of.
#[derive(Clone, Debug)]
pub struct KtoOutput {
    /// Scalar `[1]`: the mean of the examples' weighted losses.
    pub loss: Tensor<1>,
    /// Each example's weighted loss.
    pub per_example: Tensor<1>,
    /// β·h, detached.
    pub rewards: Tensor<1>,
    /// The policy's summed log-probs, detached.
    pub logps: Tensor<1>,
    /// z₀ of each example's batch, detached (the same value across one batch).
    pub kl: Tensor<1>,
    /// Each example's label.
    pub desirable: Vec<bool>,
}

/// 1 for desirable examples, 0 for the others, on `like`'s device.
fn mask(desirable: &[bool], like: &Tensor<1>) -> Tensor<1> {
    let values: Vec<f32> = desirable.iter().map(|&d| f32::from(u8::from(d))).collect();
    Tensor::from_data(TensorData::new(values, [desirable.len()]), &like.device())
}

/// σ(x) as e^{log σ(x)}: 1 − σ(x) = σ(−x) keeps its small values, where TRL's `1 − sigmoid(x)`
/// rounds them to 0.
fn sigmoid(x: Tensor<1>) -> Tensor<1> {
    log_sigmoid(x).exp()
}

/// The `kto` or `apo_zero_unpaired` loss of a batch (`config.loss` is that one loss).
pub fn kto_loss(
    config: &DpoConfig,
    policy: &UnpairedLogps,
    reference: &UnpairedLogps,
    desirable: &[bool],
) -> KtoOutput {
    let beta = config.beta;
    let kind = config.loss[0];
    let h = policy.completions.clone() - reference.completions.clone().detach();
    let kl = match (kind, &policy.kl, &reference.kl) {
        (DpoLossKind::Kto, Some(pi), Some(reference)) => (pi.clone() - reference.clone())
            .mean()
            .detach()
            .clamp_min(0.0),
        (DpoLossKind::Kto, _, _) => panic!("kto needs the KL sequences' log-probs"),
        _ => h.clone().zeros_like().narrow(0, 0, 1),
    };
    let z0 = kl.clone().expand([desirable.len()]);
    let (desirable_loss, undesirable_loss) = match kind {
        DpoLossKind::Kto => (
            sigmoid((h.clone() - z0.clone()) * -beta),
            sigmoid((h.clone() - z0.clone()) * beta),
        ),
        DpoLossKind::ApoZeroUnpaired => (sigmoid(h.clone() * -beta), sigmoid(h.clone() * beta)),
        other => panic!("{} is not a loss of unpaired data", other.name()),
    };
    let d = mask(desirable, &h);
    let per_example = desirable_loss * d.clone() * config.desirable_weight
        + undesirable_loss * (d.neg() + 1.0) * config.undesirable_weight;
    KtoOutput {
        loss: per_example.clone().mean(),
        per_example,
        rewards: h.detach() * beta,
        logps: policy.completions.clone().detach(),
        kl: z0.detach(),
        desirable: desirable.to_vec(),
    }
}

impl KtoOutput {
    /// TRL's KTO metrics over these examples, each a detached scalar `[1]` on the device: `kl`
    /// (z₀, the examples' mean of their batches' values), the mean rewards and log-probs of the
    /// desirable (`chosen`) and undesirable (`rejected`) examples, and the difference of the mean
    /// rewards (`rewards/margins`). As in TRL, a side with no example in the set has no entry
    /// (and then there is no margin).
    pub fn metrics(&self) -> Vec<(&'static str, Tensor<1>)> {
        let d = mask(&self.desirable, &self.rewards);
        let chosen = self.desirable.iter().filter(|&&x| x).count();
        let rejected = self.desirable.len() - chosen;
        let mean_over =
            |values: &Tensor<1>, m: Tensor<1>, n: usize| (values.clone() * m).sum() / n as f64;
        let mut metrics = vec![("kl", self.kl.clone().mean())];
        let chosen_rewards = (chosen > 0).then(|| mean_over(&self.rewards, d.clone(), chosen));
        let rejected_rewards =
            (rejected > 0).then(|| mean_over(&self.rewards, d.clone().neg() + 1.0, rejected));
        if let Some(r) = &chosen_rewards {
            metrics.push(("rewards/chosen", r.clone()));
            metrics.push(("logps/chosen", mean_over(&self.logps, d.clone(), chosen)));
        }
        if let Some(r) = &rejected_rewards {
            metrics.push(("rewards/rejected", r.clone()));
            metrics.push((
                "logps/rejected",
                mean_over(&self.logps, d.clone().neg() + 1.0, rejected),
            ));
        }
        if let (Some(c), Some(r)) = (chosen_rewards, rejected_rewards) {
            metrics.push(("rewards/margins", c - r));
        }
        metrics
    }

    /// Several batches' outputs as one; `loss` becomes the examples' mean of the batches' losses.
    pub fn cat(outputs: Vec<KtoOutput>) -> KtoOutput {
        let loss = super::dpo::batch_weighted_mean(
            outputs.iter().map(|o| (o.loss.clone(), o.desirable.len())),
        );
        let (mut per_example, mut rewards, mut logps, mut kl) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut desirable = Vec::new();
        for output in outputs {
            per_example.push(output.per_example);
            rewards.push(output.rewards);
            logps.push(output.logps);
            kl.push(output.kl);
            desirable.extend(output.desirable);
        }
        KtoOutput {
            loss,
            per_example: Tensor::cat(per_example, 0),
            rewards: Tensor::cat(rewards, 0),
            logps: Tensor::cat(logps, 0),
            kl: Tensor::cat(kl, 0),
            desirable,
        }
    }
}
