//! The tasks' own losses: classification (and per-token) cross-entropy, and the completion
//! log-probs of a causal LM that DPO's losses start from.

use burn::tensor::{Int, Tensor};

/// Per-row log-sum-exp over the last axis, shifted by the (detached) max for stability.
pub fn logsumexp_last<const D: usize>(logits: Tensor<D>) -> Tensor<D> {
    let max = logits.clone().max_dim(D - 1).detach();
    (logits - max.clone()).exp().sum_dim(D - 1).log() + max
}

/// Summed log-probability of the completion tokens of each sequence, and their count: the plain
/// full-logits computation that training's packed, fused `model::logps::sequence_logps` is tested
/// against.
///
/// `logits [B, T, V]` are next-token logits for `input_ids [B, T]`; position t predicts token
/// t + 1, so token t is scored by `logits[t − 1]` where `completion_mask[t] = 1`. The full-vocab
/// log-softmax is never materialized: log p = logit[target] − logsumexp(logits).
pub fn completion_logps(
    logits: Tensor<3>,
    input_ids: Tensor<2, Int>,
    completion_mask: Tensor<2>,
) -> (Tensor<1>, Tensor<1>) {
    let [batch, seq, _] = logits.dims();
    let predicted = logits.narrow(1, 0, seq - 1);
    let targets = input_ids.narrow(1, 1, seq - 1);
    let mask = completion_mask.narrow(1, 1, seq - 1);
    let target_logits = predicted
        .clone()
        .gather(2, targets.reshape([batch, seq - 1, 1]))
        .reshape([batch, seq - 1]);
    let lse = logsumexp_last(predicted).reshape([batch, seq - 1]);
    let token_logps = (target_logits - lse) * mask.clone();
    (
        token_logps.sum_dim(1).reshape([batch]),
        mask.sum_dim(1).reshape([batch]),
    )
}

/// Mean cross-entropy of `logits [B, C]` against `labels [B]`.
pub fn cross_entropy(logits: Tensor<2>, labels: Tensor<1, Int>) -> Tensor<1> {
    let [batch, _] = logits.dims();
    let picked = logits
        .clone()
        .gather(1, labels.reshape([batch, 1]))
        .reshape([batch]);
    let lse = logsumexp_last(logits).reshape([batch]);
    (lse - picked).mean()
}

/// Mean cross-entropy of per-token `logits [B, T, C]` against `labels [B, T]`, over the
/// positions where `labels >= 0` (−100 marks specials, continuation subwords and padding).
pub fn token_cross_entropy(logits: Tensor<3>, labels: Tensor<2, Int>) -> Tensor<1> {
    let [batch, seq, classes] = logits.dims();
    let logits = logits.reshape([batch * seq, classes]);
    let labels = labels.reshape([batch * seq]);
    let mask = labels.clone().greater_equal_elem(0).float();
    let safe = labels.clamp_min(0);
    let picked = logits
        .clone()
        .gather(1, safe.reshape([batch * seq, 1]))
        .reshape([batch * seq]);
    let lse = logsumexp_last(logits).reshape([batch * seq]);
    let count = mask.clone().sum().clamp_min(1.0);
    ((lse - picked) * mask).sum() / count
}

/// Class probabilities of `logits [B, C]`, column `class` → `[B]`.
pub fn class_probability(logits: Tensor<2>, class: usize) -> Tensor<1> {
    let [batch, _] = logits.dims();
    burn::tensor::activation::softmax(logits, 1)
        .narrow(1, class, 1)
        .reshape([batch])
}
