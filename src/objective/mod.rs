//! Objectives: the DPO family, classification cross-entropy, and the fairness penalty F.
//! They work on scores and log-probs and know nothing of files or models.

pub mod dpo;
pub mod fairness;
pub mod task;

pub use dpo::{DpoConfig, DpoLossKind, DpoMetrics, DpoOutput, PairLogps, dpo_loss};
pub use fairness::{FairnessKind, FairnessScore, FairnessTerm, penalty};
