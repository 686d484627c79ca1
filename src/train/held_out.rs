//! A model's held-out numbers: its task's metrics on the eval set and, on a fairness set, F,
//! the group means and counts and the gap — computed by the same op as in training.

use std::collections::BTreeMap;

use burn::tensor::{Device, Tensor};

use super::{FairnessSet, HeldOut, TaskRunner, read_async};
use crate::data::GroupVocab;
use crate::error::{Error, Result};

/// A model's held-out numbers: the task's metrics on its eval set (if any) and, with a
/// fairness set, its name and [`summarize_fairness`]'s F, group means, counts and gap.
/// `device` is the plain (non-autodiff) device of the run.
pub async fn held_out<T: TaskRunner>(
    task: &mut T,
    model: &T::Model,
    device: &Device,
) -> Result<HeldOut> {
    let mut report = HeldOut::default();
    if let Some(metrics) = task.evaluate(model).await? {
        report.metrics = metrics.into_iter().collect();
    }
    if let Some(set) = task.fairness_eval(model).await? {
        let summary = summarize_fairness(
            &set,
            task.groups(),
            task.fairness_labels(),
            task.fairness_spec(),
            device,
        )
        .await?;
        report.fairness_set = Some(set.name);
        report.fairness_f = Some(summary.f);
        report.group_means = summary.means;
        report.group_counts = summary.counts;
        report.group_gap = Some(summary.gap);
    }
    Ok(report)
}

/// Names of the fairness cells: the group names, or `label=y/group` for equalized odds.
pub fn cell_names(groups: &GroupVocab, labels: Option<usize>) -> Vec<String> {
    match labels {
        None => groups.names.clone(),
        Some(num_labels) => (0..num_labels)
            .flat_map(|y| groups.names.iter().map(move |g| format!("label={y}/{g}")))
            .collect(),
    }
}

/// F, the per-group statistic (`group_means`: the mean score for demographic parity, the TPR for
/// equal opportunity, …) and counts, and its gap over a whole fairness set. F is computed by the
/// same op as in training (on the run's device).
pub async fn summarize_fairness(
    set: &FairnessSet,
    groups: &GroupVocab,
    labels: Option<usize>,
    spec: crate::objective::FairnessSpec,
    device: &Device,
) -> Result<FairnessSummary> {
    use crate::data::batch::int_vector;
    let scores = Tensor::<1>::from_floats(set.scores.as_slice(), device);
    let group_ids = int_vector(&set.groups, device);
    let label_arg = match (labels, &set.labels) {
        (Some(num_labels), Some(values)) => Some((int_vector(values, device), num_labels)),
        (Some(_), None) => {
            return Err(Error::input(format!(
                "--fairness {:?} needs a \"label\" on every example of the fairness set ({})",
                spec.kind, set.name
            )));
        }
        _ => None,
    };
    let term = crate::objective::fairness_term(
        spec,
        scores,
        group_ids,
        groups.len(),
        label_arg,
        crate::group_stats::GroupStatsImpl::Auto,
    );
    let penalty = read_async(term.penalty).await?[0] as f64;
    let means = read_async(term.cell_means).await?;
    let counts = read_async(term.cell_counts).await?;
    let mut group_means = BTreeMap::new();
    let mut group_counts = BTreeMap::new();
    for (cell, name) in cell_names(groups, spec.kind.label_rows(labels))
        .into_iter()
        .enumerate()
    {
        if counts[cell] > 0.0 {
            group_means.insert(name.clone(), means[cell] as f64);
            group_counts.insert(name, counts[cell] as u64);
        }
    }
    // The largest max − min of group means (within each label for equalized odds).
    let gap = means
        .chunks(groups.len())
        .zip(counts.chunks(groups.len()))
        .map(|(means, counts)| {
            let present: Vec<f64> = means
                .iter()
                .zip(counts)
                .filter(|(_, c)| **c > 0.0)
                .map(|(m, _)| *m as f64)
                .collect();
            let max = present.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let min = present.iter().cloned().fold(f64::INFINITY, f64::min);
            if present.len() > 1 { max - min } else { 0.0 }
        })
        .fold(0.0, f64::max);
    Ok(FairnessSummary {
        f: penalty,
        means: group_means,
        counts: group_counts,
        gap,
    })
}

/// F over a whole fairness set, with its cells' means and counts and the gap.
pub struct FairnessSummary {
    pub f: f64,
    pub means: BTreeMap<String, f64>,
    pub counts: BTreeMap<String, u64>,
    /// The largest max − min of group means (within each label for equalized odds).
    pub gap: f64,
}
