//! Models: the architectures (one file each: [`llama`], [`bert`]) and their shared parts
//! ([`layers`], [`attention`], [`fused`]), LoRA ([`lora`]), sequence log-probs ([`logps`]),
//! activation checkpointing ([`recompute`]), where a `--model` comes from ([`source`]) and the
//! files models are read from and written to ([`io`]). Below the objectives and training: a
//! model computes scores and log-probs and knows nothing of losses.

pub mod attention;
pub mod bert;
pub mod family;
pub mod fused;
pub mod io;
pub mod layers;
pub mod llama;
pub mod logps;
pub mod lora;
pub mod precision;
pub mod recompute;
pub mod rope;
pub mod source;

use std::path::Path;

use serde::{Deserialize, Serialize};

pub use bert::{BertClassifier, BertConfig, BertHead};
pub use family::Family;
pub use llama::{LlamaConfig, LlamaForCausalLM};

use crate::error::{Error, Result};
use crate::gguf::Gguf;
use io::gguf::GgufLlama;
use io::safetensors as load;
pub use source::{ModelSource, PRESETS, locate, resolve};

/// An architecture and its Hugging Face-style configuration.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "model_type", rename_all = "lowercase")]
// One config per run, moved around a handful of times: boxing the larger one gains nothing.
#[allow(clippy::large_enum_variant)]
pub enum ArchConfig {
    Llama(LlamaConfig),
    Bert(BertConfig),
}

impl ArchConfig {
    pub fn name(&self) -> &'static str {
        match self {
            ArchConfig::Llama(_) => "llama",
            ArchConfig::Bert(_) => "bert",
        }
    }

    pub fn max_positions(&self) -> usize {
        match self {
            ArchConfig::Llama(c) => c.max_position_embeddings,
            ArchConfig::Bert(c) => c.max_position_embeddings,
        }
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            ArchConfig::Llama(c) => c.vocab_size,
            ArchConfig::Bert(c) => c.vocab_size,
        }
    }

    fn validate(&self) -> std::result::Result<(), String> {
        match self {
            ArchConfig::Llama(c) => c.validate(),
            ArchConfig::Bert(c) => c.validate(),
        }
    }
}

/// Read and parse `dir/config.json`.
pub fn read_config(dir: &Path) -> Result<ArchConfig> {
    let path = dir.join("config.json");
    let bytes = crate::fsutil::read(&path)
        .map_err(|e| Error::input(format!("{}: cannot read model config: {e}", path.display())))?;
    parse_config(&String::from_utf8_lossy(&bytes))
        .map_err(|e| Error::input(format!("{}: {e}", path.display())))
}

/// A pretrained BERT from a Hugging Face directory, with a fresh `num_labels` head.
pub fn load_bert(
    dir: &Path,
    num_labels: usize,
    head: BertHead,
    device: &burn::tensor::Device,
) -> Result<(BertClassifier, load::LoadReport)> {
    let ArchConfig::Bert(config) = read_config(dir)? else {
        return Err(Error::input(format!("{}: not a BERT model", dir.display())));
    };
    let checkpoint = load::Checkpoint::from_dir(dir)?;
    load::load(
        config.init(num_labels, head, device),
        checkpoint,
        &load::BertKeys,
    )
}

/// A pretrained Llama from a Hugging Face directory.
pub fn load_llama(
    dir: &Path,
    device: &burn::tensor::Device,
) -> Result<(LlamaForCausalLM, load::LoadReport)> {
    let ArchConfig::Llama(config) = read_config(dir)? else {
        return Err(Error::input(format!(
            "{}: not a Llama model",
            dir.display()
        )));
    };
    let checkpoint = load::Checkpoint::from_dir(dir)?;
    load::load(config.init(device), checkpoint, &load::LlamaKeys)
}

/// A pretrained Llama from a GGUF file (dequantized to f32).
pub fn load_llama_gguf(
    file: &Path,
    device: &burn::tensor::Device,
) -> Result<(LlamaForCausalLM, load::LoadReport)> {
    let gguf = std::sync::Arc::new(Gguf::open(file)?);
    let config = gguf.llama_config()?;
    let checkpoint = gguf.llama_checkpoint(&config)?;
    load::load(config.init(device), checkpoint, &load::LlamaKeys)
}

/// A pretrained Llama from whichever pretrained source `--model` named.
pub fn load_llama_from(
    source: &ModelSource,
    device: &burn::tensor::Device,
) -> Result<Option<(LlamaForCausalLM, load::LoadReport)>> {
    load_llama_stored(source, device, precision::Storage::default())
}

/// [`load_llama_from`] with every matrix stored as `store` says (f16, bf16, the projections
/// quantized) as it is placed, so the f32 model never exists whole ([`precision`]). Where
/// [`keep_loaded`] asked for it, the model read last is kept and handed out again (a copy
/// sharing its weights) while the same source, bytes, storage and device are asked for.
pub fn load_llama_stored(
    source: &ModelSource,
    device: &burn::tensor::Device,
    store: precision::Storage,
) -> Result<Option<(LlamaForCausalLM, load::LoadReport)>> {
    let key = kept::Key::new(source, store, device);
    if let Some(hit) = kept::get(&key) {
        return Ok(Some(hit));
    }
    let (config, checkpoint) = match source {
        ModelSource::Pretrained(dir) => {
            let ArchConfig::Llama(config) = read_config(dir)? else {
                return Err(Error::input(format!(
                    "{}: not a Llama model",
                    dir.display()
                )));
            };
            (config, load::Checkpoint::from_dir(dir)?)
        }
        ModelSource::Gguf(file) => {
            let gguf = std::sync::Arc::new(Gguf::open(file)?);
            let config = gguf.llama_config()?;
            let checkpoint = gguf.llama_checkpoint(&config)?;
            (config, checkpoint)
        }
        ModelSource::Preset(_) | ModelSource::ConfigFile(_) => return Ok(None),
    };
    let loaded = load::load_stored(config.init(device), checkpoint, &load::LlamaKeys, store)?;
    kept::put(key, &loaded);
    Ok(Some(loaded))
}

pub use kept::{is_kept, keep_loaded};

/// The pretrained model read last, for a caller that trains the same model again in one
/// process (the browser page: a visitor's second run would otherwise parse and convert the file
/// again, seconds to minutes in a tab). Off unless [`keep_loaded`] turned it on.
mod kept {
    use std::cell::{Cell, RefCell};
    use std::path::PathBuf;

    use super::{LlamaForCausalLM, ModelSource, load, precision};

    #[derive(PartialEq)]
    pub(super) struct Key {
        source: ModelSource,
        /// The registered files it reads (the page's), by registration: a file picked again
        /// under the same name is another model.
        stamp: Vec<(PathBuf, u64)>,
        store: precision::Storage,
        /// The device, and whether its tensors record autodiff graphs (not part of a device's
        /// equality).
        device: burn::tensor::Device,
        autodiff: bool,
    }

    impl Key {
        pub(super) fn new(
            source: &ModelSource,
            store: precision::Storage,
            device: &burn::tensor::Device,
        ) -> Self {
            let path = match source {
                ModelSource::Pretrained(path) | ModelSource::Gguf(path) => path.clone(),
                ModelSource::Preset(_) | ModelSource::ConfigFile(_) => PathBuf::new(),
            };
            Self {
                source: source.clone(),
                stamp: crate::fsutil::stamp(&path),
                store,
                device: device.clone(),
                autodiff: device.is_autodiff(),
            }
        }
    }

    thread_local! {
        static KEEP: Cell<bool> = const { Cell::new(false) };
        static KEPT: RefCell<Option<(Key, LlamaForCausalLM, load::LoadReport)>> =
            const { RefCell::new(None) };
    }

    /// Keep the model read last (or stop keeping it, dropping it now).
    pub fn keep_loaded(keep: bool) {
        KEEP.with(|k| k.set(keep));
        if !keep {
            KEPT.with(|kept| kept.borrow_mut().take());
        }
    }

    /// Whether the kept model is the one `source` would load stored as `store` on `device`.
    /// A kept model that is not is dropped now, so the next one need not fit beside it.
    pub fn is_kept(
        source: &ModelSource,
        store: precision::Storage,
        device: &burn::tensor::Device,
    ) -> bool {
        let key = Key::new(source, store, device);
        KEPT.with(|kept| {
            let mut kept = kept.borrow_mut();
            let hit = kept.as_ref().is_some_and(|(k, _, _)| *k == key);
            if !hit {
                kept.take();
            }
            hit
        })
    }

    pub(super) fn get(key: &Key) -> Option<(LlamaForCausalLM, load::LoadReport)> {
        KEPT.with(|kept| {
            kept.borrow()
                .as_ref()
                .filter(|(k, _, _)| k == key)
                .map(|(_, model, report)| (model.clone(), report.clone()))
        })
    }

    pub(super) fn put(key: Key, loaded: &(LlamaForCausalLM, load::LoadReport)) {
        if KEEP.with(Cell::get) {
            let (model, report) = loaded;
            KEPT.with(|kept| *kept.borrow_mut() = Some((key, model.clone(), report.clone())));
        }
    }
}

/// Parse a Hugging Face config.json, naming the problem when it does not fit.
pub fn parse_config(text: &str) -> std::result::Result<ArchConfig, String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
    let supported = || {
        let mut names: Vec<&str> = Family::ALL.iter().map(|f| f.model_type()).collect();
        names.push("bert");
        names.join(", ")
    };
    let model_type = value
        .get("model_type")
        .and_then(|v| v.as_str())
        .ok_or_else(|| format!("no \"model_type\" field (supported: {})", supported()))?;
    let config = match (model_type, Family::of_model_type(model_type)) {
        (_, Some(family)) => {
            let mut object = value.as_object().cloned().unwrap_or_default();
            family.fill_defaults(&mut object);
            let mut config: LlamaConfig = serde_json::from_value(serde_json::Value::Object(object))
                .map_err(|e| format!("{model_type} config: {e}"))?;
            config.family = family;
            ArchConfig::Llama(config)
        }
        ("bert", None) => ArchConfig::Bert(
            serde_json::from_value(value.clone()).map_err(|e| format!("bert config: {e}"))?,
        ),
        (other, None) => {
            return Err(format!(
                "model_type {other:?} is not supported (supported: {})",
                supported()
            ));
        }
    };
    config.validate()?;
    Ok(config)
}
