//! Checkpoints written atomically: a killed run never leaves a half-written checkpoint behind,
//! and `--resume` always finds a whole one.
//!
//! Layout: `OUT/checkpoints/step-00000100/{model.bpk, optimizer.bpk, state.json}` and
//! `OUT/checkpoints/latest` (the name of the newest whole checkpoint). A checkpoint is built in a
//! temporary directory, synced, renamed into place, and only then does `latest` (itself replaced
//! by rename) point at it; older checkpoints are removed afterwards.

use std::fs;
use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleVisitor, Param, ParamGroup, ParamId};
use burn::optim::ModuleOptimizer;
use burn::store::ModuleRecord;
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::fsutil::{io_error as io, sync_dir, sync_file, write_atomic};

/// How many whole checkpoints to keep.
const KEEP_LAST: usize = 2;

/// Everything besides tensors that a resumed run needs.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TrainState {
    /// Number of optimizer steps completed.
    pub step: usize,
    /// Fingerprint of the settings that must not change across a resume.
    pub fingerprint: String,
    pub tokens_seen: u64,
    /// The task's own state ([`super::TaskRunner::save_state`]), if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<serde_json::Value>,
}

/// What a model record holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Contents {
    /// Every parameter.
    All,
    /// The trained parameters alone when others are frozen (LoRA, a fresh head on a frozen
    /// encoder) — for a model whose frozen weights are `--model`'s file weights, which whatever
    /// reads the record loads again exactly. A LoRA checkpoint of a 1.5B model is then its
    /// adapters' megabytes, not the base's gigabytes (which, copied to the host to be written,
    /// were a run's peak memory). A randomly drawn base is recorded whole: another backend, or
    /// another order of drawing, would not draw it again the same.
    Trained,
}

/// The ids of `module`'s trainable parameters when others are frozen: what training changes.
fn trained_ids<M: Module>(module: &M) -> Option<Vec<ParamId>> {
    struct Split {
        trained: Vec<ParamId>,
        frozen: bool,
    }
    impl ModuleVisitor for Split {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            // A fresh module's lazy parameters (a record is about to fill them): reading one
            // would draw it.
            if !param.is_initialized() {
                return;
            }
            if param.is_require_grad() {
                self.trained.push(param.id);
            } else {
                self.frozen = true;
            }
        }
    }
    let mut split = Split {
        trained: Vec::new(),
        frozen: false,
    };
    module.visit(&mut split);
    (split.frozen && !split.trained.is_empty()).then_some(split.trained)
}

/// What to write of `module`.
fn record_of<M: Module>(module: &M, contents: Contents) -> ModuleRecord {
    match (contents, trained_ids(module)) {
        (Contents::Trained, Some(ids)) => {
            module.clone().into_record_group(ParamGroup::from_ids(ids))
        }
        _ => module.clone().into_record(),
    }
}

/// Save a module's weights to `path` atomically (see [`Contents`]).
pub fn save_module<M: Module>(module: &M, path: &Path, contents: Contents) -> Result<()> {
    let tmp = path.with_extension("bpk.tmp");
    record_of(module, contents)
        .save(&tmp)
        .map_err(|e| io(&tmp, "write weights", e))?;
    sync_file(&tmp)?;
    fs::rename(&tmp, path).map_err(|e| io(path, "rename into place", e))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")));
    Ok(())
}

/// Load weights saved by [`save_module`] into `module` (a record of the trained parameters
/// alone, [`Contents::Trained`], leaves the frozen ones as `module` has them).
pub fn load_module<M: Module>(module: M, path: &Path) -> Result<M> {
    let record = ModuleRecord::load(path).map_err(|e| io(path, "read weights", e))?;
    let record = record.allow_partial(trained_ids(&module).is_some());
    module.try_load_record(record).map_err(|e| {
        Error::runtime(format!(
            "{}: weights do not fit the model: {e}",
            path.display()
        ))
    })
}

pub fn checkpoints_dir(out: &Path) -> PathBuf {
    out.join("checkpoints")
}

/// Save a whole checkpoint for `state.step`.
pub fn save<M: Module>(
    out: &Path,
    model: &M,
    optimizer: &ModuleOptimizer,
    state: &TrainState,
    contents: Contents,
    task_files: impl FnOnce(&Path) -> Result<()>,
) -> Result<PathBuf> {
    let dir = checkpoints_dir(out);
    fs::create_dir_all(&dir).map_err(|e| io(&dir, "create directory", e))?;
    let name = format!("step-{:08}", state.step);
    let tmp = dir.join(format!(".{name}.tmp"));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(|e| io(&tmp, "remove stale temporary checkpoint", e))?;
    }
    fs::create_dir_all(&tmp).map_err(|e| io(&tmp, "create directory", e))?;

    let model_path = tmp.join("model.bpk");
    record_of(model, contents)
        .save(&model_path)
        .map_err(|e| io(&model_path, "write weights", e))?;
    sync_file(&model_path)?;
    let optimizer_path = tmp.join("optimizer.bpk");
    optimizer
        .save(&optimizer_path)
        .map_err(|e| io(&optimizer_path, "write optimizer state", e))?;
    sync_file(&optimizer_path)?;
    let state_path = tmp.join("state.json");
    let state_json = serde_json::to_vec_pretty(state).expect("state serializes");
    fs::write(&state_path, state_json).map_err(|e| io(&state_path, "write", e))?;
    sync_file(&state_path)?;
    task_files(&tmp)?;
    sync_dir(&tmp);

    let final_dir = dir.join(&name);
    if final_dir.exists() {
        fs::remove_dir_all(&final_dir).map_err(|e| io(&final_dir, "replace", e))?;
    }
    fs::rename(&tmp, &final_dir).map_err(|e| io(&final_dir, "rename into place", e))?;
    sync_dir(&dir);
    write_atomic(&dir.join("latest"), name.as_bytes())?;

    // Prune: keep the newest KEEP_LAST whole checkpoints.
    let mut existing: Vec<String> = fs::read_dir(&dir)
        .map_err(|e| io(&dir, "list", e))?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("step-"))
        .collect();
    existing.sort();
    let stale = existing.len().saturating_sub(KEEP_LAST);
    for old in &existing[..stale] {
        let _ = fs::remove_dir_all(dir.join(old));
    }
    Ok(final_dir)
}

/// The newest whole checkpoint, if any.
pub fn latest(out: &Path) -> Result<Option<PathBuf>> {
    let pointer = checkpoints_dir(out).join("latest");
    if !pointer.exists() {
        return Ok(None);
    }
    let name = fs::read_to_string(&pointer).map_err(|e| io(&pointer, "read", e))?;
    let dir = checkpoints_dir(out).join(name.trim());
    if !dir.join("state.json").exists() {
        return Err(Error::runtime(format!(
            "{}: points at {} which is missing or incomplete",
            pointer.display(),
            dir.display()
        )));
    }
    Ok(Some(dir))
}

pub fn read_state(dir: &Path) -> Result<TrainState> {
    let path = dir.join("state.json");
    let text = fs::read_to_string(&path).map_err(|e| io(&path, "read", e))?;
    serde_json::from_str(&text).map_err(|e| io(&path, "parse", e))
}

pub fn load_optimizer(dir: &Path, optimizer: ModuleOptimizer) -> Result<ModuleOptimizer> {
    let path = dir.join("optimizer.bpk");
    optimizer
        .load(&path)
        .map_err(|e| io(&path, "read optimizer state", e))
}
