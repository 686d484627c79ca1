//! A GGUF file as a Llama: its `llama.*` metadata as a Hugging Face config, and its tensors as a
//! Hugging Face state dict. llama.cpp's converter permutes the rows of `attn_q`/`attn_k` (it
//! stores rotary pairs interleaved); [`GgufLlama::llama_checkpoint`] undoes that, so the result is
//! a checkpoint that [`crate::model::io::safetensors::load`] maps like any safetensors one. The file format itself
//! is [`crate::gguf`].

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::gguf::{Gguf, Value};
use crate::model::io::safetensors::Checkpoint;
use crate::model::llama::LlamaConfig;

/// The Llama view of a [`Gguf`].
pub trait GgufLlama {
    /// The Llama hyper-parameters (`llama.*` metadata) as a Hugging Face config.
    fn llama_config(&self) -> Result<LlamaConfig>;
    /// Every tensor, dequantized, under its Hugging Face name, Q/K rows un-permuted.
    fn llama_checkpoint(&self, config: &LlamaConfig) -> Result<Checkpoint>;
}

impl GgufLlama for Gguf {
    /// The Llama hyper-parameters (`llama.*` metadata) as a Hugging Face config.
    fn llama_config(&self) -> Result<LlamaConfig> {
        match self.architecture() {
            Some("llama") => {}
            other => {
                return Err(Error::input(format!(
                    "{}: architecture {:?} is not supported (supported: llama)",
                    self.path.display(),
                    other.unwrap_or("(none)")
                )));
            }
        }
        let int = |key: &str| -> Result<usize> {
            self.require(key)?
                .as_u64()
                .map(|v| v as usize)
                .ok_or_else(|| {
                    Error::input(format!(
                        "{}: {key:?} is not an integer",
                        self.path.display()
                    ))
                })
        };
        let float = |key: &str, default: f64| -> f64 {
            self.get(key).and_then(Value::as_f64).unwrap_or(default)
        };
        let embed = self.tensor("token_embd.weight").ok_or_else(|| {
            Error::input(format!(
                "{}: no token_embd.weight tensor",
                self.path.display()
            ))
        })?;
        let hidden_size = int("llama.embedding_length")?;
        let heads = int("llama.attention.head_count")?;
        let vocab_size = match self.get("llama.vocab_size").and_then(Value::as_u64) {
            Some(v) => v as usize,
            None => embed.dims.get(1).copied().unwrap_or(0),
        };
        let head_dim = self
            .get("llama.attention.key_length")
            .and_then(Value::as_u64)
            .map(|v| v as usize)
            .filter(|&d| d != hidden_size / heads.max(1));
        let token = |key: &str| {
            self.get(&format!("tokenizer.ggml.{key}"))
                .and_then(Value::as_u64)
                .map(|v| v as u32)
        };
        let config = LlamaConfig {
            vocab_size,
            hidden_size,
            intermediate_size: int("llama.feed_forward_length")?,
            num_hidden_layers: int("llama.block_count")?,
            num_attention_heads: heads,
            num_key_value_heads: self
                .get("llama.attention.head_count_kv")
                .and_then(Value::as_u64)
                .map(|v| v as usize),
            head_dim,
            max_position_embeddings: self
                .get("llama.context_length")
                .and_then(Value::as_u64)
                .map_or(2048, |v| v as usize),
            rms_norm_eps: float("llama.attention.layer_norm_rms_epsilon", 1e-6),
            rope_theta: float("llama.rope.freq_base", 10_000.0),
            tie_word_embeddings: self.tensor("output.weight").is_none(),
            attention_bias: self.tensor("blk.0.attn_q.bias").is_some(),
            mlp_bias: self.tensor("blk.0.ffn_up.bias").is_some(),
            hidden_act: "silu".into(),
            initializer_range: 0.02,
            bos_token_id: token("bos_token_id"),
            eos_token_id: token("eos_token_id"),
            pad_token_id: token("padding_token_id"),
        };
        if self.get("llama.rope.scaling.type").is_some() {
            return Err(Error::input(format!(
                "{}: rope scaling is not supported",
                self.path.display()
            )));
        }
        config
            .validate()
            .map_err(|e| Error::input(format!("{}: {e}", self.path.display())))?;
        Ok(config)
    }

    /// Every tensor, dequantized, under its Hugging Face name, Q/K rows un-permuted.
    fn llama_checkpoint(&self, config: &LlamaConfig) -> Result<Checkpoint> {
        let mut tensors = HashMap::new();
        let mut skipped = Vec::new();
        for info in &self.tensors {
            let Some(name) = hf_llama_name(&info.name) else {
                skipped.push(info.name.clone());
                continue;
            };
            let (shape, mut data) = self.tensor_f32(info)?;
            let heads = if info.name.contains(".attn_q.") {
                Some(config.num_attention_heads)
            } else if info.name.contains(".attn_k.") {
                Some(config.num_kv_heads())
            } else {
                None
            };
            if let Some(heads) = heads {
                data = unpermute_rows(&data, &shape, heads).map_err(|e| {
                    Error::input(format!("{}: {}: {e}", self.path.display(), info.name))
                })?;
            }
            tensors.insert(name, (shape, data));
        }
        Ok(Checkpoint {
            tensors,
            skipped,
            source: self.path.clone(),
        })
    }
}

/// llama.cpp's tensor names → Hugging Face's.
pub fn hf_llama_name(name: &str) -> Option<String> {
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
    let hf = match part {
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
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
