//! A finished `fairtune train` run, opened once for whatever reads it back — `eval --run`, the
//! bias benchmarks — with its settings (`config.json`) and its trained weights (`model.bpk`).

use std::path::{Path, PathBuf};

use burn::module::Module;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::model::lora::LoraSettings;
use crate::train::{TrainConfig, checkpoint};

/// A run directory whose training finished.
pub struct FinishedRun {
    pub dir: PathBuf,
    /// The settings it was trained with.
    pub config: TrainConfig,
}

impl FinishedRun {
    /// Its settings; refused when the directory is not a run, or the run has no final
    /// `model.bpk` (it did not finish).
    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path)
            .map_err(|e| Error::input(format!("{}: not a fairtune run ({e})", path.display())))?;
        let config: TrainConfig = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v.get("config").cloned())
            .ok_or_else(|| "no \"config\" object".to_string())
            .and_then(|v| serde_json::from_value(v).map_err(|e| e.to_string()))
            .map_err(|e| {
                Error::input(format!(
                    "{}: not a fairtune run config: {e}",
                    path.display()
                ))
            })?;
        if !dir.join("model.bpk").exists() {
            return Err(Error::input(format!(
                "{}: the run has no model.bpk (did it finish?)",
                dir.display()
            )));
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            config,
        })
    }

    /// The trained model: `model` (the run's architecture, as its task builds it) with the
    /// run's LoRA adapters attached by `attach_lora`, if it trained any, and then every weight
    /// read from `model.bpk`.
    pub fn load_weights<M: Module>(
        &self,
        model: M,
        attach_lora: impl FnOnce(M, &LoraSettings) -> Result<M>,
    ) -> Result<M> {
        let model = match &self.config.lora {
            Some(lora) => attach_lora(model, lora)?,
            None => model,
        };
        checkpoint::load_module(model, &self.dir.join("model.bpk"))
    }
}
