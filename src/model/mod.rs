//! Model architectures (one file each) and how a `--model` argument becomes a config.
//!
//! `--model` is a built-in preset (`tiny-llama`, `tiny-bert`: small, random-init, for tests and
//! demos), a Hugging Face `config.json`, a directory holding one (with weights: pretrained), a
//! GGUF file, or the name of a fetched model (`fairtune fetch`).

pub mod attention;
pub mod bert;
pub mod export;
pub mod fused;
pub mod gguf;
pub mod layers;
pub mod llama;
pub mod load;
pub mod logps;
pub mod lora;
pub mod recompute;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use bert::{BertClassifier, BertConfig, BertHead};
pub use llama::{LlamaConfig, LlamaForCausalLM};

use crate::error::{Error, Result};
use crate::gguf::Gguf;
use gguf::GgufLlama;

/// An architecture and its Hugging Face-style configuration.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "model_type", rename_all = "lowercase")]
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

/// What `--model` names: a built-in preset, a config.json (random init), or a directory with
/// pretrained weights (a Hugging Face directory, or a fetched asset's).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub enum ModelSource {
    Preset(String),
    ConfigFile(PathBuf),
    Pretrained(PathBuf),
    /// A llama.cpp GGUF file: config, weights and tokenizer in one.
    Gguf(PathBuf),
}

/// The built-in presets: tiny random-init models whose vocabulary is the tokenizer's.
pub const PRESETS: &[&str] = &["tiny-llama", "tiny-bert"];

fn has_weights(dir: &Path) -> bool {
    dir.join("model.safetensors").exists() || dir.join("model.safetensors.index.json").exists()
}

/// Find what `--model` names (no tokenizer needed yet; see [`ModelSource::arch`]).
pub fn locate(model: &str) -> Result<ModelSource> {
    if PRESETS.contains(&model) {
        return Ok(ModelSource::Preset(model.to_string()));
    }
    let path = Path::new(model);
    #[cfg(not(target_arch = "wasm32"))]
    if !path.exists()
        && let Some(asset) = crate::fetch::asset(model)
    {
        if asset.kind != crate::fetch::Kind::Model {
            return Err(Error::input(format!(
                "--model {model}: that is a data set, not a model"
            )));
        }
        let dir = crate::fetch::require(model)?;
        if dir.join("model.gguf").exists() && !has_weights(&dir) {
            return Ok(ModelSource::Gguf(dir.join("model.gguf")));
        }
        return Ok(ModelSource::Pretrained(dir));
    }
    if crate::data::files::is_registered(path) {
        return Ok(ModelSource::ConfigFile(path.to_path_buf()));
    }
    if path.is_file() && path.extension().is_some_and(|e| e == "gguf") {
        return Ok(ModelSource::Gguf(path.to_path_buf()));
    }
    if path.is_dir() {
        if has_weights(path) {
            return Ok(ModelSource::Pretrained(path.to_path_buf()));
        }
        if path.join("model.gguf").exists() {
            return Ok(ModelSource::Gguf(path.join("model.gguf")));
        }
        if path.join("config.json").exists() {
            return Ok(ModelSource::ConfigFile(path.join("config.json")));
        }
        return Err(Error::input(format!(
            "--model {}: the directory has no config.json",
            path.display()
        )));
    }
    if path.exists() {
        return Ok(ModelSource::ConfigFile(path.to_path_buf()));
    }
    Err(Error::input(format!(
        "--model {model:?} is neither a preset ({}), a fetched model (see `fairtune fetch`), \
         nor an existing config.json or model directory",
        PRESETS.join(", ")
    )))
}

impl ModelSource {
    /// The model's own tokenizer.json, when it has one.
    pub fn tokenizer_file(&self) -> Option<PathBuf> {
        match self {
            ModelSource::Pretrained(dir) => Some(dir.join("tokenizer.json")).filter(|p| p.exists()),
            ModelSource::ConfigFile(file) => file
                .parent()
                .map(|dir| dir.join("tokenizer.json"))
                .filter(|p| p.exists()),
            ModelSource::Preset(_) | ModelSource::Gguf(_) => None,
        }
    }

    /// Whether the model comes with pretrained weights (and so needs its own tokenizer).
    pub fn is_pretrained(&self) -> bool {
        matches!(self, ModelSource::Pretrained(_) | ModelSource::Gguf(_))
    }

    /// The directory with pretrained weights, if any.
    pub fn weights(&self) -> Option<&Path> {
        match self {
            ModelSource::Pretrained(dir) => Some(dir),
            _ => None,
        }
    }

    /// The architecture config. `tokenizer_vocab` sizes the presets and is checked against a
    /// config's `vocab_size`.
    pub fn arch(&self, tokenizer_vocab: usize) -> Result<ArchConfig> {
        let config_path = match self {
            ModelSource::Preset(name) => {
                return Ok(preset(name, tokenizer_vocab).expect("a preset name"));
            }
            ModelSource::ConfigFile(file) => file.clone(),
            ModelSource::Pretrained(dir) => dir.join("config.json"),
            ModelSource::Gguf(file) => {
                let config = ArchConfig::Llama(Gguf::open_metadata(file)?.llama_config()?);
                if config.vocab_size() < tokenizer_vocab {
                    return Err(Error::input(format!(
                        "{}: vocab_size {} is smaller than the tokenizer's vocabulary \
                         ({tokenizer_vocab})",
                        file.display(),
                        config.vocab_size()
                    )));
                }
                return Ok(config);
            }
        };
        let text = crate::data::files::read(&config_path)
            .and_then(|bytes| String::from_utf8(bytes).map_err(std::io::Error::other))
            .map_err(|e| {
                Error::input(format!(
                    "{}: cannot read model config: {e}",
                    config_path.display()
                ))
            })?;
        let config = parse_config(&text)
            .map_err(|e| Error::input(format!("{}: {e}", config_path.display())))?;
        if config.vocab_size() < tokenizer_vocab {
            return Err(Error::input(format!(
                "{}: vocab_size {} is smaller than the tokenizer's vocabulary ({tokenizer_vocab})",
                config_path.display(),
                config.vocab_size()
            )));
        }
        Ok(config)
    }
}

fn preset(name: &str, vocab_size: usize) -> Option<ArchConfig> {
    match name {
        "tiny-llama" => Some(ArchConfig::Llama(LlamaConfig {
            vocab_size,
            hidden_size: 64,
            intermediate_size: 128,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: Some(2),
            head_dim: None,
            max_position_embeddings: 512,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            tie_word_embeddings: true,
            attention_bias: false,
            mlp_bias: false,
            hidden_act: "silu".into(),
            initializer_range: 0.02,
            bos_token_id: None,
            eos_token_id: None,
            pad_token_id: None,
        })),
        "tiny-bert" => Some(ArchConfig::Bert(BertConfig {
            vocab_size,
            hidden_size: 64,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            intermediate_size: 128,
            hidden_act: "gelu".into(),
            hidden_dropout_prob: 0.1,
            attention_probs_dropout_prob: 0.1,
            max_position_embeddings: 512,
            type_vocab_size: 2,
            layer_norm_eps: 1e-12,
            initializer_range: 0.02,
            pad_token_id: Some(0),
            classifier_dropout: None,
        })),
        _ => None,
    }
}

/// [`locate`] and [`ModelSource::arch`] in one step.
pub fn resolve(model: &str, tokenizer_vocab: usize) -> Result<(ArchConfig, ModelSource)> {
    let source = locate(model)?;
    Ok((source.arch(tokenizer_vocab)?, source))
}

/// Read and parse `dir/config.json`.
pub fn read_config(dir: &Path) -> Result<ArchConfig> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| Error::input(format!("{}: cannot read model config: {e}", path.display())))?;
    parse_config(&text).map_err(|e| Error::input(format!("{}: {e}", path.display())))
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
    let gguf = Gguf::open(file)?;
    let config = gguf.llama_config()?;
    let checkpoint = gguf.llama_checkpoint(&config)?;
    drop(gguf);
    load::load(config.init(device), checkpoint, &load::LlamaKeys)
}

/// A pretrained Llama from whichever pretrained source `--model` named.
pub fn load_llama_from(
    source: &ModelSource,
    device: &burn::tensor::Device,
) -> Result<Option<(LlamaForCausalLM, load::LoadReport)>> {
    match source {
        ModelSource::Pretrained(dir) => load_llama(dir, device).map(Some),
        ModelSource::Gguf(file) => load_llama_gguf(file, device).map(Some),
        ModelSource::Preset(_) | ModelSource::ConfigFile(_) => Ok(None),
    }
}

/// The model's chat template: GGUF metadata; for a directory, `chat_template.jinja` (which
/// transformers 5 writes, and which takes priority, as there), else `chat_template` in
/// tokenizer_config.json (a string, or a list of named templates: the one named "default").
pub fn chat_template(source: &ModelSource) -> Result<Option<String>> {
    let dir = match source {
        ModelSource::Gguf(file) => {
            return Ok(Gguf::open_metadata(file)?.chat_template().map(String::from));
        }
        ModelSource::Pretrained(dir) => dir.clone(),
        ModelSource::ConfigFile(file) => file.parent().map(Path::to_path_buf).unwrap_or_default(),
        ModelSource::Preset(_) => return Ok(None),
    };
    let jinja = dir.join("chat_template.jinja");
    if jinja.exists() {
        return std::fs::read_to_string(&jinja)
            .map(Some)
            .map_err(|e| Error::input(format!("{}: cannot read: {e}", jinja.display())));
    }
    let Ok(text) = std::fs::read_to_string(dir.join("tokenizer_config.json")) else {
        return Ok(None);
    };
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        Error::input(format!(
            "{}: not valid JSON: {e}",
            dir.join("tokenizer_config.json").display()
        ))
    })?;
    let template = match value.get("chat_template") {
        Some(serde_json::Value::String(template)) => Some(template.clone()),
        Some(serde_json::Value::Array(named)) => named
            .iter()
            .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
            .and_then(|t| t.get("template")?.as_str())
            .map(String::from),
        _ => None,
    };
    Ok(template)
}

/// Parse a Hugging Face config.json, naming the problem when it does not fit.
pub fn parse_config(text: &str) -> std::result::Result<ArchConfig, String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
    let model_type = value
        .get("model_type")
        .and_then(|v| v.as_str())
        .ok_or("no \"model_type\" field (expected \"llama\" or \"bert\")")?;
    let config = match model_type {
        "llama" => ArchConfig::Llama(
            serde_json::from_value(value.clone()).map_err(|e| format!("llama config: {e}"))?,
        ),
        "bert" => ArchConfig::Bert(
            serde_json::from_value(value.clone()).map_err(|e| format!("bert config: {e}"))?,
        ),
        other => {
            return Err(format!(
                "model_type {other:?} is not supported (supported: llama, bert)"
            ));
        }
    };
    config.validate()?;
    Ok(config)
}
