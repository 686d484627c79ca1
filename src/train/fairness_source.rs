//! Where a task's fairness examples come from — the same rules for every task.
//!
//! Training: a separate group-tagged set (`--fairness-data`, drawn group-balanced beside every
//! task batch, as MinDiff does), else the task batch's own rows that carry a group.
//! Reporting: `--fairness-eval`, else the grouped rows of `--eval`, else the training set above.

use crate::data::GroupVocab;
use crate::data::sampler::BalancedSampler;
use crate::error::{Error, Result};

use super::TrainConfig;

pub enum FairnessSource<T> {
    /// The grouped rows of the task batch.
    InBatch,
    /// A separate set, drawn group-balanced every step.
    Separate {
        examples: Vec<T>,
        sampler: BalancedSampler,
    },
    None,
}

/// The penalty's cells (groups, or labels × groups for equalized odds) must fit the op.
pub fn check_cells(groups: &GroupVocab, labels: Option<usize>) -> Result<()> {
    let cells = groups.len() * labels.unwrap_or(1);
    if cells > crate::group_stats::MAX_GROUPS {
        return Err(Error::input(format!(
            "{} groups{} make {cells} fairness cells; at most {} are supported",
            groups.len(),
            labels.map(|l| format!(" × {l} labels")).unwrap_or_default(),
            crate::group_stats::MAX_GROUPS
        )));
    }
    Ok(())
}

impl<T: Clone> FairnessSource<T> {
    /// `separate`: the `--fairness-data` examples and their group ids; `train_has_groups`:
    /// whether any `--train` row carries a group. Refuses λ > 0 without fairness examples.
    pub fn new(
        config: &TrainConfig,
        separate: Option<(Vec<T>, Vec<usize>)>,
        train_has_groups: bool,
        groups: &GroupVocab,
    ) -> Result<Self> {
        let source = match separate {
            Some((examples, group_ids)) => {
                let batch = config.fairness_batch_size.unwrap_or(config.batch_size);
                let sampler =
                    BalancedSampler::new(&group_ids, groups.len(), batch, config.seed ^ 0xFA1);
                FairnessSource::Separate { examples, sampler }
            }
            None if train_has_groups => FairnessSource::InBatch,
            None => FairnessSource::None,
        };
        if config.fairness_lambda > 0.0 {
            if matches!(source, FairnessSource::None) {
                return Err(Error::input(
                    "--fairness-lambda > 0 but there are no fairness examples: give --fairness-data or \"group\" fields in --train",
                ));
            }
            if groups.len() < 2 {
                eprintln!(
                    "warning: only one group ({}) in the fairness examples; the penalty is 0",
                    groups.names.join(", ")
                );
            }
        }
        Ok(source)
    }

    /// The separate set's examples for `step`, or `None` for in-batch / no fairness examples.
    pub fn draw(&mut self, step: usize) -> Option<Vec<T>> {
        match self {
            FairnessSource::Separate { examples, sampler } => Some(
                sampler
                    .batch(step)
                    .into_iter()
                    .map(|i| examples[i].clone())
                    .collect(),
            ),
            _ => None,
        }
    }

    /// The set the report's fairness numbers are measured on, by the precedence above:
    /// `explicit` (`--fairness-eval`), `eval_grouped`, then this training source.
    pub fn report_set(
        &self,
        explicit: Option<Vec<T>>,
        eval_grouped: Vec<T>,
        train_grouped: impl FnOnce() -> Vec<T>,
    ) -> Option<(String, Vec<T>)> {
        if let Some(examples) = explicit {
            return Some(("fairness-eval".into(), examples));
        }
        if !eval_grouped.is_empty() {
            return Some(("eval".into(), eval_grouped));
        }
        match self {
            FairnessSource::Separate { examples, .. } => {
                Some(("fairness-data".into(), examples.clone()))
            }
            FairnessSource::InBatch => Some(("train".into(), train_grouped())),
            FairnessSource::None => None,
        }
    }
}
