//! Where a `--model` comes from: a built-in preset (`tiny-llama`, `tiny-bert`: small,
//! random-init, for tests and demos), a Hugging Face `config.json`, a directory holding one (with
//! weights: pretrained), a GGUF file, or the name of a fetched model (`fairtune fetch`, which
//! downloads it on first use) — and the tokenizer that comes with it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{ArchConfig, BertConfig, LlamaConfig, parse_config};
use crate::error::{Error, Result};
use crate::gguf::Gguf;
use crate::model::io::gguf::GgufLlama;
use crate::tokenizer::TextTokenizer;

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
    use crate::fsutil::exists;
    exists(&dir.join("model.safetensors")) || exists(&dir.join("model.safetensors.index.json"))
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
    // What the browser page registered: a model directory the visitor picked,
    if crate::fsutil::is_registered(&path.join("config.json")) {
        return Ok(match has_weights(path) {
            true => ModelSource::Pretrained(path.to_path_buf()),
            false => ModelSource::ConfigFile(path.join("config.json")),
        });
    }
    if crate::fsutil::is_registered(path) {
        // a GGUF file, or a preset's config.
        if path.extension().is_some_and(|e| e == "gguf") {
            return Ok(ModelSource::Gguf(path.to_path_buf()));
        }
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
            ModelSource::Pretrained(dir) => {
                Some(dir.join("tokenizer.json")).filter(|p| crate::fsutil::exists(p))
            }
            ModelSource::ConfigFile(file) => file
                .parent()
                .map(|dir| dir.join("tokenizer.json"))
                .filter(|p| crate::fsutil::exists(p)),
            ModelSource::Preset(_) | ModelSource::Gguf(_) => None,
        }
    }

    /// The tokenizer to use with this model: `tokenizer` (a `--tokenizer` tokenizer.json) if
    /// given, else the model's own (a GGUF file's metadata, a directory's tokenizer.json), else
    /// the built-in byte-level tokenizer — which only random-init models may use.
    pub fn open_tokenizer(&self, tokenizer: Option<&Path>) -> Result<TextTokenizer> {
        if tokenizer.is_none()
            && let ModelSource::Gguf(file) = self
        {
            return TextTokenizer::from_gguf(&Gguf::open_metadata(file)?);
        }
        match tokenizer
            .map(Path::to_path_buf)
            .or_else(|| self.tokenizer_file())
        {
            Some(path) => TextTokenizer::from_file(&path),
            None if self.is_pretrained() => Err(Error::input(format!(
                "--model {}: pretrained weights need their tokenizer; give --tokenizer \
                 tokenizer.json",
                self.path().display()
            ))),
            None => Ok(TextTokenizer::Bytes),
        }
    }

    /// The file or directory it names (a preset's name).
    pub fn path(&self) -> &Path {
        match self {
            ModelSource::Preset(name) => Path::new(name),
            ModelSource::ConfigFile(path)
            | ModelSource::Pretrained(path)
            | ModelSource::Gguf(path) => path,
        }
    }

    /// Whether the model comes with pretrained weights (and so needs its own tokenizer).
    pub fn is_pretrained(&self) -> bool {
        matches!(self, ModelSource::Pretrained(_) | ModelSource::Gguf(_))
    }

    /// The directory with pretrained weights, if any.
    /// Whether the model's weights come from a file (a Hugging Face directory's or a GGUF's),
    /// not drawn at random: loading it again gives the same weights.
    pub fn has_weights(&self) -> bool {
        matches!(self, ModelSource::Pretrained(_) | ModelSource::Gguf(_))
    }

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
        let text = crate::fsutil::read(&config_path)
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
            ..LlamaConfig::default()
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
