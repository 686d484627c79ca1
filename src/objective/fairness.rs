//! The fairness penalty F: the squared demographic-parity gap of a score across groups, or its
//! equalized-odds version (the same within each true label, summed over labels).
//!
//! For scores s_i in groups g_i, with m_g the mean score of group g and m̄ the unweighted mean of
//! the group means over the P groups present (a small group counts as much as a large one):
//!
//!   F_dp = ½ Σ_g (m_g − m̄)²,        ∂F/∂s_i = (m_{g_i} − m̄) / n_{g_i}
//!
//! (the terms through m̄ cancel because Σ_g (m_g − m̄) = 0). For two groups F = ¼ (m_a − m_b)², so
//! the familiar two-group penalty ½ (m_a − m_b)² equals 2F. Empty groups contribute nothing.
//! Equalized odds uses cells (y, g) = y·G + g and sums F over y.
//!
//! The per-group sums and counts — the only part that touches every example — come from
//! [`crate::group_stats::group_stats`] (WGSL on wgpu); what is left is a few tensor ops on G numbers,
//! and autodiff through them hands the kernel's backward ∂F/∂sum_g = (m_g − m̄)/n_g.

use burn::tensor::{Int, Tensor};
use serde::{Deserialize, Serialize};

use crate::group_stats::{self, GroupStatsImpl};

/// The statistic F equalizes across groups (fairret's and Fairlearn's names). With s a score in
/// [0, 1] (a classifier's P(positive)) and y = [label is the positive class], each is a smooth
/// ratio of per-group sums:
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum FairnessKind {
    /// Demographic parity: the mean score, Σ s / n.
    Dp,
    /// Equalized odds: the mean score within each true label (one set of cells per label).
    Eo,
    /// Equal opportunity (TPR parity): the mean score of the positives, Σ s·y / Σ y.
    Tpr,
    /// FPR parity: the mean score of the negatives, Σ s·(1−y) / Σ (1−y).
    Fpr,
    /// Predictive parity (PPV): Σ s·y / Σ s, the precision of the soft predictions.
    Ppv,
    /// Accuracy parity: Σ (s·y + (1−s)·(1−y)) / n, the soft accuracy.
    Accuracy,
}

impl FairnessKind {
    /// Its `--fairness` name.
    pub fn name(self) -> String {
        super::value_name(&self)
    }

    /// Whether the statistic needs each fairness example's true label.
    pub fn needs_labels(self) -> bool {
        self != FairnessKind::Dp
    }

    /// The label count its cells are split by: equalized odds' labels, one set of cells else.
    pub fn label_rows(self, labels: Option<usize>) -> Option<usize> {
        if self == FairnessKind::Eo {
            labels
        } else {
            None
        }
    }
}

/// How F measures the inequality of the per-group statistics m_g.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PenaltyForm {
    /// ½ Σ_g (m_g − m̄)², m̄ the mean of the group statistics.
    #[default]
    Squared,
    /// fairret's norm form (Buyl et al. 2024, `NormLoss`, p = 1): Σ_g |m_g / c − 1|, c the
    /// statistic pooled over every example.
    Norm,
    /// One-sided: ½ Σ_g (m_g − m*)², m* the best group's statistic (the highest; the lowest for
    /// `fpr`), held fixed — the other groups are raised to it and the best is never pulled down,
    /// against "levelling down" (Zietlow et al. 2022, "Leveling Down in Computer Vision"), where
    /// a two-sided penalty closes a gap by making every group worse.
    #[serde(rename = "level_up")]
    #[value(name = "level_up", alias = "level-up")]
    LevelUp,
}

/// What F is: the statistic, its penalty form, and the positive class the labels refer to.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FairnessSpec {
    pub kind: FairnessKind,
    pub form: PenaltyForm,
    pub positive: usize,
}

/// Which score the penalty equalizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum FairnessScore {
    /// Classifier: P(positive class). LM: exp(mean completion-token log-prob).
    Prob,
    /// LM: the implicit DPO reward β·(log π − log π_ref) of the completion.
    Reward,
    /// LM: mean completion-token log-prob under the policy.
    Logp,
    /// Preference pairs: the reward margin β·((log π − log π_ref)(c) − (log π − log π_ref)(r)),
    /// so F equalizes how strongly each group's preferences are learned.
    #[serde(rename = "reward_margin")]
    #[value(name = "reward_margin", alias = "reward-margin")]
    RewardMargin,
    /// Preference pairs: σ(reward margin), the smooth reward accuracy, so F equalizes how well
    /// each group's preferences are learned.
    #[serde(rename = "reward_accuracy")]
    #[value(name = "reward_accuracy", alias = "reward-accuracy")]
    RewardAccuracy,
}

impl FairnessScore {
    /// Its `--fairness-score` name.
    pub fn name(self) -> String {
        super::value_name(&self)
    }

    /// A score of a preference pair (its margin), not of one completion.
    pub fn of_pairs(self) -> bool {
        matches!(
            self,
            FairnessScore::RewardMargin | FairnessScore::RewardAccuracy
        )
    }
}

/// F and what it was made of.
#[derive(Clone, Debug)]
pub struct FairnessTerm {
    /// Scalar `[1]`, differentiable in the scores.
    pub penalty: Tensor<1>,
    /// `[cells]` mean score per cell (group, or label × group), 0 where empty.
    pub cell_means: Tensor<1>,
    /// `[cells]` examples per cell.
    pub cell_counts: Tensor<1>,
}

/// F over `scores [N]` with `groups [N]` in `0..num_groups` (−1 = not a fairness example).
/// For equalized odds pass `labels [N]` in `0..num_labels`; for demographic parity pass `None`.
/// (The squared form of those two statistics; [`fairness_term`] has every statistic.)
pub fn penalty(
    scores: Tensor<1>,
    groups: Tensor<1, Int>,
    num_groups: usize,
    labels: Option<(Tensor<1, Int>, usize)>,
    implementation: GroupStatsImpl,
) -> FairnessTerm {
    let spec = FairnessSpec {
        kind: if labels.is_some() {
            FairnessKind::Eo
        } else {
            FairnessKind::Dp
        },
        form: PenaltyForm::Squared,
        positive: 1,
    };
    fairness_term(spec, scores, groups, num_groups, labels, implementation)
}

/// F of `spec` over `scores [N]`, `groups [N]` (−1: not a fairness example) and, for every
/// statistic but demographic parity, `labels [N]` in `0..num_labels`. The per-cell numerators and
/// denominators are sums the group-statistics op computes (WGSL on wgpu).
pub fn fairness_term(
    spec: FairnessSpec,
    scores: Tensor<1>,
    groups: Tensor<1, Int>,
    num_groups: usize,
    labels: Option<(Tensor<1, Int>, usize)>,
    implementation: GroupStatsImpl,
) -> FairnessTerm {
    let stats = |values: Tensor<1>, cells: Tensor<1, Int>, count: usize| {
        let [rows, g] = [count / num_groups, num_groups];
        let stats = group_stats::group_stats_with(values, cells, count, implementation);
        (
            stats.clone().narrow(0, 0, 1).reshape([rows, g]),
            stats.narrow(0, 1, 1).reshape([rows, g]).detach(),
        )
    };
    let positive = |labels: &Tensor<1, Int>| labels.clone().equal_elem(spec.positive as i64);
    // (numerator sums, denominator sums, example counts), each [rows, groups].
    let (numerators, denominators, counts) = match (spec.kind, labels) {
        (FairnessKind::Dp, _) | (_, None) => {
            let (sums, counts) = stats(scores, groups, num_groups);
            (sums, counts.clone(), counts)
        }
        (FairnessKind::Eo, Some((labels, num_labels))) => {
            // Cell id y·G + g; examples without a group (−1) stay negative and are skipped.
            let valid = groups.clone().greater_equal_elem(0);
            let cell = (labels * (num_groups as i64) + groups).mask_fill(valid.bool_not(), -1);
            let (sums, counts) = stats(scores, cell, num_labels * num_groups);
            (sums, counts.clone(), counts)
        }
        (FairnessKind::Tpr | FairnessKind::Fpr, Some((labels, _))) => {
            let keep = match spec.kind {
                FairnessKind::Tpr => positive(&labels),
                _ => positive(&labels).bool_not(),
            };
            let (sums, counts) = stats(scores, groups.mask_fill(keep.bool_not(), -1), num_groups);
            (sums, counts.clone(), counts)
        }
        (FairnessKind::Accuracy, Some((labels, _))) => {
            let y = positive(&labels).float();
            let soft = scores.clone() * y.clone() + (scores.neg() + 1.0) * (y.neg() + 1.0);
            let (sums, counts) = stats(soft, groups, num_groups);
            (sums, counts.clone(), counts)
        }
        (FairnessKind::Ppv, Some((labels, _))) => {
            let y = positive(&labels).float();
            let (hits, counts) = stats(scores.clone() * y, groups.clone(), num_groups);
            let (predicted, _) = stats(scores, groups, num_groups);
            (hits, predicted, counts)
        }
    };
    let [rows, _] = numerators.dims();
    let present = counts.clone().greater_elem(0.0).float();
    let means = numerators.clone() / denominators.clone().clamp_min(1e-12);
    let means = means * present.clone();
    let penalty = match spec.form {
        PenaltyForm::Squared => {
            let num_present = present.clone().sum_dim(1);
            let grand = means.clone().sum_dim(1) / num_present.clamp_min(1.0);
            ((means.clone() - grand) * present)
                .powi_scalar(2)
                .sum()
                .reshape([1])
                * 0.5
        }
        PenaltyForm::Norm => {
            let pooled = numerators.sum_dim(1) / denominators.sum_dim(1).clamp_min(1e-12);
            ((means.clone() / pooled.clamp_min(1e-12) - 1.0).abs() * present)
                .sum()
                .reshape([1])
        }
        PenaltyForm::LevelUp => {
            // The best present group's statistic per row (FPR: the lowest), as a constant.
            let sign = if spec.kind == FairnessKind::Fpr {
                -1.0
            } else {
                1.0
            };
            let absent = (present.clone() - 1.0) * 1e30;
            let best = ((means.clone() * sign + absent).max_dim(1) * sign).detach();
            ((means.clone() - best) * present)
                .powi_scalar(2)
                .sum()
                .reshape([1])
                * 0.5
        }
    };
    FairnessTerm {
        penalty,
        cell_means: means.reshape([rows * num_groups]),
        cell_counts: counts.reshape([rows * num_groups]),
    }
}
