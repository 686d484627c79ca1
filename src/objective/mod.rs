//! Objectives: the DPO family and TRL's metrics ([`dpo`]), classification and completion
//! losses ([`losses`]), and the fairness penalty F ([`fairness`], on the group-statistics op).
//! They work on scores and log-probs and know nothing of files, models or training loops.

pub mod dpo;
pub mod fairness;
pub mod kto;
pub mod losses;

pub use dpo::{
    DPO_METRICS, DpoConfig, DpoLossKind, DpoOutput, FDivergence, PairLogps, RefSync, dpo_loss,
    dpo_loss_weighted, wpo_weights,
};
pub use kto::{KtoOutput, UnpairedLogps, kto_loss};
/// A flag value's name as the command line spells it (`exo_pair`, `tpr`, `reward_margin`).
pub fn value_name<T: clap::ValueEnum + std::fmt::Debug>(value: &T) -> String {
    value
        .to_possible_value()
        .map_or_else(|| format!("{value:?}"), |v| v.get_name().to_string())
}

pub use fairness::{
    FairnessKind, FairnessScore, FairnessSpec, FairnessTerm, PenaltyForm, fairness_term, penalty,
};
