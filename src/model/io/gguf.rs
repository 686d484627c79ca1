//! A GGUF file as a Llama-family decoder (`general.architecture` `llama`, `qwen2`, `qwen3`,
//! `gemma2`, `gemma3`, `phi3`; a Mistral converts as `llama`): its `{arch}.*` metadata as a
//! Hugging Face config, and its
//! tensors as a Hugging Face state dict. For `llama` only, llama.cpp's converter permutes the
//! rows of `attn_q`/`attn_k` (it stores rotary pairs interleaved; the Qwen families run its
//! NEOX, half-split rotation and are stored as they are); [`GgufLlama::llama_checkpoint`] undoes
//! that, so the result is a checkpoint that [`crate::model::io::safetensors::load`] maps like
//! any safetensors one. llama.cpp's converter also stores Gemma's norm weights as `1 + w` (it
//! runs a plain RMSNorm), undone here, and keeps Phi-3's fused `attn_qkv` and `ffn_up` (gate
//! and up) as they are. The file format itself is [`crate::gguf`].

use std::collections::HashMap;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::gguf::{Gguf, Value};
use crate::model::Family;
use crate::model::io::safetensors::{Checkpoint, Stored};
use crate::model::llama::LlamaConfig;

/// The Llama view of a [`Gguf`].
pub trait GgufLlama {
    /// The Llama hyper-parameters (`llama.*` metadata) as a Hugging Face config.
    fn llama_config(&self) -> Result<LlamaConfig>;
    /// Every tensor under its Hugging Face name, read as it is placed.
    fn llama_checkpoint(self: Arc<Self>, config: &LlamaConfig) -> Result<Checkpoint>;
}

impl GgufLlama for Gguf {
    /// The Llama hyper-parameters (`llama.*` metadata) as a Hugging Face config.
    fn llama_config(&self) -> Result<LlamaConfig> {
        let family = match self.architecture() {
            Some("llama") => Family::Llama,
            Some("qwen2") => Family::Qwen2,
            Some("qwen3") => Family::Qwen3,
            Some("gemma2") => Family::Gemma2,
            Some("gemma3") => Family::Gemma3,
            Some("phi3") => Family::Phi3,
            other => {
                return Err(Error::input(format!(
                    "{}: architecture {:?} is not supported (supported: llama, qwen2, qwen3, \
                     gemma2, gemma3, phi3)",
                    self.path.display(),
                    other.unwrap_or("(none)")
                )));
            }
        };
        let arch = self.architecture().unwrap_or("llama").to_string();
        let key = |name: &str| format!("{arch}.{name}");
        let int = |name: &str| -> Result<usize> {
            let key = key(name);
            self.require(&key)?
                .as_u64()
                .map(|v| v as usize)
                .ok_or_else(|| {
                    Error::input(format!(
                        "{}: {key:?} is not an integer",
                        self.path.display()
                    ))
                })
        };
        let float = |name: &str, default: f64| -> f64 {
            self.get(&key(name))
                .and_then(Value::as_f64)
                .unwrap_or(default)
        };
        let embed = self.tensor("token_embd.weight").ok_or_else(|| {
            Error::input(format!(
                "{}: no token_embd.weight tensor",
                self.path.display()
            ))
        })?;
        let hidden_size = int("embedding_length")?;
        let heads = int("attention.head_count")?;
        let vocab_size = match self.get(&key("vocab_size")).and_then(Value::as_u64) {
            Some(v) => v as usize,
            None => embed.dims.get(1).copied().unwrap_or(0),
        };
        let head_dim = self
            .get(&key("attention.key_length"))
            .and_then(Value::as_u64)
            .map(|v| v as usize)
            .filter(|&d| d != hidden_size / heads.max(1));
        let token = |key: &str| {
            self.get(&format!("tokenizer.ggml.{key}"))
                .and_then(Value::as_u64)
                .map(|v| v as u32)
        };
        let mut config = LlamaConfig {
            vocab_size,
            hidden_size,
            intermediate_size: int("feed_forward_length")?,
            num_hidden_layers: int("block_count")?,
            num_attention_heads: heads,
            num_key_value_heads: self
                .get(&key("attention.head_count_kv"))
                .and_then(Value::as_u64)
                .map(|v| v as usize),
            head_dim,
            max_position_embeddings: self
                .get(&key("context_length"))
                .and_then(Value::as_u64)
                .map_or(2048, |v| v as usize),
            rms_norm_eps: float("attention.layer_norm_rms_epsilon", 1e-6),
            rope_theta: float("rope.freq_base", 10_000.0),
            tie_word_embeddings: self.tensor("output.weight").is_none(),
            attention_bias: self.tensor("blk.0.attn_q.bias").is_some(),
            mlp_bias: self.tensor("blk.0.ffn_up.bias").is_some(),
            hidden_act: "silu".into(),
            initializer_range: 0.02,
            bos_token_id: token("bos_token_id"),
            eos_token_id: token("eos_token_id"),
            pad_token_id: token("padding_token_id"),
            family,
            sliding_window: self
                .get(&key("attention.sliding_window"))
                .and_then(Value::as_u64)
                .filter(|&w| w > 0)
                .map(|w| w as usize),
            ..LlamaConfig::default()
        };
        // Windows as llama.cpp runs them: every layer when the file gives one (Qwen), Gemma's
        // own pattern (every 2nd layer full for Gemma 2, every 6th for Gemma 3).
        config.use_sliding_window = config.sliding_window.is_some();
        config.max_window_layers = Some(0);
        if family.is_gemma() {
            let heads = config.num_attention_heads.max(1);
            // llama.cpp scales queries by head_dim^−½, by (hidden / heads)^−½ for the 27B
            // models (46 layers for Gemma 2, 62 for Gemma 3), as their configs' scalar says.
            let big = matches!(
                (family, config.num_hidden_layers),
                (Family::Gemma2, 46) | (Family::Gemma3, 62)
            );
            config.query_pre_attn_scalar = Some(if big {
                (config.hidden_size / heads) as f64
            } else {
                config.head_dim.unwrap_or(config.hidden_size / heads) as f64
            });
            config.head_dim = Some(config.head_dim());
            config.hidden_activation = Some("gelu_pytorch_tanh".into());
            if family == Family::Gemma2 {
                config.attn_logit_softcapping = self
                    .get(&key("attn_logit_softcapping"))
                    .and_then(Value::as_f64);
                config.final_logit_softcapping = self
                    .get(&key("final_logit_softcapping"))
                    .and_then(Value::as_f64);
            } else {
                config.rope_local_base_freq = Some(10_000.0);
                config.sliding_window_pattern = Some(6);
            }
        }
        if family == Family::Phi3 {
            if let Some(rotated) = self
                .get(&key("rope.dimension_count"))
                .and_then(Value::as_u64)
                .filter(|&d| d as usize != config.head_dim())
            {
                config.partial_rotary_factor = Some(rotated as f64 / config.head_dim() as f64);
            }
            // The 128k models: LongRoPE's factors as tensors, its lengths as metadata.
            if let Some(info) = self.tensor("rope_factors_short.weight") {
                let (_, short) = self.tensor_f32(info)?;
                let original = self
                    .get(&key("rope.scaling.original_context_length"))
                    .and_then(Value::as_u64)
                    .unwrap_or(4096);
                let mut params = serde_json::json!({
                    "rope_type": "longrope",
                    "short_factor": short,
                    "original_max_position_embeddings": original,
                });
                if let Some(attn) = self
                    .get(&key("rope.scaling.attn_factor"))
                    .and_then(Value::as_f64)
                {
                    params["attention_factor"] = attn.into();
                }
                // Unused within the original length, but transformers needs them (an export).
                if let Some(info) = self.tensor("rope_factors_long.weight") {
                    params["long_factor"] = self.tensor_f32(info)?.1.into();
                }
                config.original_max_position_embeddings = Some(original as usize);
                config.rope_scaling = Some(params);
            }
        }
        let scaling = self.get(&key("rope.scaling.type")).and_then(Value::as_str);
        match scaling {
            None | Some("none") => {}
            // Phi-3's LongRoPE, read above from its factor tensors.
            Some("longrope" | "su") if config.rope_scaling.is_some() => {}
            Some("linear") => {
                config.rope_scaling = Some(serde_json::json!({
                    "rope_type": "linear",
                    "factor": float("rope.scaling.factor", 1.0),
                }));
            }
            Some(other) => {
                return Err(Error::input(format!(
                    "{}: rope scaling {other:?} is not supported (supported: linear)",
                    self.path.display()
                )));
            }
        }
        // Llama 3.x: llama.cpp bakes the llama3 scaling into per-dimension divisors.
        if let Some(info) = self.tensor("rope_freqs.weight") {
            let (_, divisors) = self.tensor_f32(info)?;
            config.rope_divisors = Some(divisors.into_iter().map(f64::from).collect());
        }
        config
            .validate()
            .map_err(|e| Error::input(format!("{}: {e}", self.path.display())))?;
        Ok(config)
    }

    /// Every tensor under its Hugging Face name, dequantized (and Q/K rows un-permuted) only
    /// when it is placed: loading costs the file and the model, never an f32 copy of it.
    fn llama_checkpoint(self: Arc<Self>, config: &LlamaConfig) -> Result<Checkpoint> {
        let mut tensors = HashMap::new();
        let mut skipped = Vec::new();
        for (index, info) in self.tensors.iter().enumerate() {
            // Read into the config (rope divisors, LongRoPE's factors), not weights.
            if info.name == "rope_freqs.weight" || info.name.starts_with("rope_factors_") {
                continue;
            }
            let Some(name) = hf_llama_name(&info.name, config.family) else {
                skipped.push(info.name.clone());
                continue;
            };
            // A type fairtune cannot read is refused now, not halfway through loading.
            self.check_readable(info)?;
            // Gemma's norms are stored as 1 + w (see the module docs).
            let unit_offset = config.family.is_gemma() && info.name.ends_with("norm.weight");
            // Only llama's rows are permuted (see the module docs).
            let permuted = config.family == Family::Llama;
            let heads = if !permuted {
                None
            } else if info.name.contains(".attn_q.") {
                Some(config.num_attention_heads)
            } else if info.name.contains(".attn_k.") {
                Some(config.num_kv_heads())
            } else {
                None
            };
            let gguf = Arc::clone(&self);
            let read = move || -> Result<Vec<f32>> {
                let info = &gguf.tensors[index];
                let (shape, mut data) = gguf.tensor_f32(info)?;
                if unit_offset {
                    data.iter_mut().for_each(|x| *x -= 1.0);
                }
                if let Some(heads) = heads {
                    data = unpermute_rows(&data, &shape, heads).map_err(|e| {
                        Error::input(format!("{}: {}: {e}", gguf.path.display(), info.name))
                    })?;
                }
                Ok(data)
            };
            tensors.insert(name, Stored::lazy(info.shape(), read));
        }
        Ok(Checkpoint {
            tensors,
            skipped,
            source: self.path.clone(),
        })
    }
}

/// llama.cpp's tensor names → Hugging Face's, for a model of `family`.
pub fn hf_llama_name(name: &str, family: Family) -> Option<String> {
    match name {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (part, kind) = rest.rsplit_once('.')?;
    let hf = match (part, family) {
        // Gemma 2/3's four norms: llama.cpp's ffn_norm is the MLP's input norm there.
        ("ffn_norm", Family::Gemma2 | Family::Gemma3) => "pre_feedforward_layernorm",
        ("post_attention_norm", Family::Gemma2 | Family::Gemma3) => "post_attention_layernorm",
        ("post_ffw_norm", Family::Gemma2 | Family::Gemma3) => "post_feedforward_layernorm",
        // Phi-3's fused projections.
        ("attn_qkv", Family::Phi3) => "self_attn.qkv_proj",
        ("ffn_up", Family::Phi3) => "mlp.gate_up_proj",
        (part, _) => match part {
            "attn_norm" => "input_layernorm",
            "ffn_norm" => "post_attention_layernorm",
            "attn_q" => "self_attn.q_proj",
            "attn_k" => "self_attn.k_proj",
            "attn_v" => "self_attn.v_proj",
            "attn_output" => "self_attn.o_proj",
            "attn_q_norm" => "self_attn.q_norm",
            "attn_k_norm" => "self_attn.k_norm",
            "ffn_gate" => "mlp.gate_proj",
            "ffn_up" => "mlp.up_proj",
            "ffn_down" => "mlp.down_proj",
            _ => return None,
        },
    };
    Some(format!("model.layers.{layer}.{hf}.{kind}"))
}

/// Undo llama.cpp's `permute`: within each head, row `2i + j` of the GGUF tensor goes back to
/// row `j·(head_dim/2) + i` (rotate-half layout). Works for weights `[out, in]` and biases `[out]`.
pub fn unpermute_rows(
    data: &[f32],
    shape: &[usize],
    heads: usize,
) -> std::result::Result<Vec<f32>, String> {
    let rows = shape.first().copied().unwrap_or(0);
    let width = if shape.len() > 1 { shape[1] } else { 1 };
    if heads == 0 || !rows.is_multiple_of(heads) || !(rows / heads).is_multiple_of(2) {
        return Err(format!(
            "{rows} rows do not split into {heads} heads of even size"
        ));
    }
    let head_dim = rows / heads;
    let half = head_dim / 2;
    let mut out = vec![0.0; data.len()];
    for h in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                let src = h * head_dim + 2 * i + j;
                let dst = h * head_dim + j * half + i;
                out[dst * width..(dst + 1) * width]
                    .copy_from_slice(&data[src * width..(src + 1) * width]);
            }
        }
    }
    Ok(out)
}
