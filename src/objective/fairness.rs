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

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum FairnessKind {
    /// Demographic parity: equal mean score across groups.
    Dp,
    /// Equalized odds: equal mean score across groups within each true label.
    Eo,
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
pub fn penalty(
    scores: Tensor<1>,
    groups: Tensor<1, Int>,
    num_groups: usize,
    labels: Option<(Tensor<1, Int>, usize)>,
    implementation: GroupStatsImpl,
) -> FairnessTerm {
    let (cells, num_labels) = match labels {
        // Cell id y·G + g; examples without a group (−1) stay negative and are skipped.
        Some((labels, num_labels)) => {
            let valid = groups.clone().greater_equal_elem(0);
            let cell = labels * (num_groups as i64) + groups;
            (cell.mask_fill(valid.bool_not(), -1), num_labels)
        }
        None => (groups, 1),
    };
    let stats =
        group_stats::group_stats_with(scores, cells, num_labels * num_groups, implementation);
    let sums = stats
        .clone()
        .narrow(0, 0, 1)
        .reshape([num_labels, num_groups]);
    let counts = stats
        .narrow(0, 1, 1)
        .reshape([num_labels, num_groups])
        .detach();

    let present = counts.clone().greater_elem(0.0).float();
    let means = sums / counts.clone().clamp_min(1.0);
    let num_present = present.clone().sum_dim(1);
    let grand_mean = (means.clone() * present.clone()).sum_dim(1) / num_present.clamp_min(1.0);
    let deviation = (means.clone() - grand_mean) * present;
    let penalty = deviation.powi_scalar(2).sum().reshape([1]) * 0.5;
    FairnessTerm {
        penalty,
        cell_means: means.reshape([num_labels * num_groups]),
        cell_counts: counts.reshape([num_labels * num_groups]),
    }
}
