//! The decoder families that share [`super::llama`]'s implementation, and what each changes in
//! it. A config.json's `model_type` names the family; its fields keep Hugging Face's names (one
//! [`super::LlamaConfig`] holds the union), and the family decides what they mean:
//!
//! - `llama` — Touvron et al. 2023, "LLaMA"; Llama 3.x with rope scaling (`LlamaForCausalLM`).
//! - `mistral` — Jiang et al. 2023, "Mistral 7B" (`MistralForCausalLM`): Llama with sliding-window
//!   attention on every layer; `sliding_window` is 4096 when config.json leaves it out, none
//!   when it is `null`.
//! - `qwen2` — Qwen team 2024, "Qwen2 Technical Report"; Qwen2.5 (`Qwen2ForCausalLM`): biases on
//!   the q/k/v projections (none on o); with `use_sliding_window`, layers from
//!   `max_window_layers` on slide.
//! - `qwen3` — Qwen team 2025, "Qwen3 Technical Report" (`Qwen3ForCausalLM`): no biases (unless
//!   `attention_bias`), an RMSNorm over each query and key head before the rotation, `head_dim`
//!   128 unless given; sliding as Qwen2.
//!
//! A sliding layer's token sees itself and the `sliding_window − 1` tokens before it
//! (transformers' `sliding_window_overlay`: kv > q − W).

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    #[default]
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
}

impl Family {
    pub const ALL: [Family; 4] = [Family::Llama, Family::Mistral, Family::Qwen2, Family::Qwen3];

    /// Its `model_type`.
    pub fn model_type(self) -> &'static str {
        match self {
            Family::Llama => "llama",
            Family::Mistral => "mistral",
            Family::Qwen2 => "qwen2",
            Family::Qwen3 => "qwen3",
        }
    }

    /// The transformers class of its causal LM (config.json's `architectures`).
    pub fn causal_lm_class(self) -> &'static str {
        match self {
            Family::Llama => "LlamaForCausalLM",
            Family::Mistral => "MistralForCausalLM",
            Family::Qwen2 => "Qwen2ForCausalLM",
            Family::Qwen3 => "Qwen3ForCausalLM",
        }
    }

    pub fn of_model_type(model_type: &str) -> Option<Family> {
        Family::ALL
            .into_iter()
            .find(|f| f.model_type() == model_type)
    }

    pub fn is_llama(&self) -> bool {
        *self == Family::Llama
    }

    /// The family's defaults that differ from Llama's, written into a config.json object where
    /// it leaves the field out (as the family's transformers config class defaults it).
    pub fn fill_defaults(self, config: &mut serde_json::Map<String, Value>) {
        let mut default = |key: &str, value: Value| {
            config.entry(key).or_insert(value);
        };
        match self {
            Family::Llama => {}
            Family::Mistral => default("sliding_window", Value::from(4096)),
            Family::Qwen2 => {}
            Family::Qwen3 => default("head_dim", Value::from(128)),
        }
    }

    /// Whether the q, k and v projections have biases.
    pub fn qkv_bias(self, attention_bias: bool) -> bool {
        match self {
            Family::Qwen2 => true,
            Family::Mistral => false,
            Family::Llama | Family::Qwen3 => attention_bias,
        }
    }

    /// Whether the output projection has a bias.
    pub fn o_bias(self, attention_bias: bool) -> bool {
        match self {
            Family::Qwen2 | Family::Mistral => false,
            Family::Llama | Family::Qwen3 => attention_bias,
        }
    }

    /// Whether each query and key head is RMS-normalized before the rotation (Qwen3).
    pub fn qk_norm(self) -> bool {
        self == Family::Qwen3
    }

    /// Whether the family has sliding-window attention at all.
    pub fn slides(self) -> bool {
        self != Family::Llama
    }
}
