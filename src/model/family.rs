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
//! - `gemma2` — Gemma team 2024, "Gemma 2: Improving Open Language Models at a Practical Size"
//!   (`Gemma2ForCausalLM`): GeGLU (`gelu_pytorch_tanh`) MLP, RMSNorm scaled by `1 + w`, a norm
//!   after attention and around the MLP too (four per layer), embeddings × √hidden, scores ×
//!   `query_pre_attn_scalar^−½`, tanh soft-capping of attention scores and of the final logits,
//!   sliding and full layers alternating (`layer_types`; even layers slide), tied embeddings.
//! - `gemma3_text` — Gemma team 2025, "Gemma 3 Technical Report" (`Gemma3ForCausalLM`): Gemma 2
//!   without soft-capping, with Qwen3's per-head q/k norms (`1 + w` ones), five sliding layers to
//!   one full (`sliding_window_pattern` 6), and two rotary bases: `rope_parameters` per layer
//!   type (`full_attention` 1,000,000 with the config's scaling, `sliding_attention` 10,000 from
//!   `rope_local_base_freq`).
//! - `phi3` — Abdin et al. 2024, "Phi-3 Technical Report" (`Phi3ForCausalLM`): q, k and v in one
//!   `qkv_proj`, gate and up in one `gate_up_proj` (kept fused, as PEFT adapts them), a
//!   `partial_rotary_factor` of each head rotated (Phi-4-mini), `longrope` scaling for the 128k
//!   models (the short factors: fairtune stays within `original_max_position_embeddings`),
//!   Mistral's window when `sliding_window` is set.
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
    Gemma2,
    #[serde(rename = "gemma3_text")]
    Gemma3,
    Phi3,
}

impl Family {
    pub const ALL: [Family; 7] = [
        Family::Llama,
        Family::Mistral,
        Family::Qwen2,
        Family::Qwen3,
        Family::Gemma2,
        Family::Gemma3,
        Family::Phi3,
    ];

    /// Its `model_type`.
    pub fn model_type(self) -> &'static str {
        match self {
            Family::Llama => "llama",
            Family::Mistral => "mistral",
            Family::Qwen2 => "qwen2",
            Family::Qwen3 => "qwen3",
            Family::Gemma2 => "gemma2",
            Family::Gemma3 => "gemma3_text",
            Family::Phi3 => "phi3",
        }
    }

    /// The transformers class of its causal LM (config.json's `architectures`).
    pub fn causal_lm_class(self) -> &'static str {
        match self {
            Family::Llama => "LlamaForCausalLM",
            Family::Mistral => "MistralForCausalLM",
            Family::Qwen2 => "Qwen2ForCausalLM",
            Family::Qwen3 => "Qwen3ForCausalLM",
            Family::Gemma2 => "Gemma2ForCausalLM",
            Family::Gemma3 => "Gemma3ForCausalLM",
            Family::Phi3 => "Phi3ForCausalLM",
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
            Family::Gemma2 | Family::Gemma3 => {
                default("head_dim", Value::from(256));
                default("query_pre_attn_scalar", Value::from(256));
                default("sliding_window", Value::from(4096));
                default("tie_word_embeddings", Value::from(true));
                default("hidden_activation", Value::from("gelu_pytorch_tanh"));
                if self == Family::Gemma2 {
                    default("final_logit_softcapping", Value::from(30.0));
                    default("attn_logit_softcapping", Value::from(50.0));
                } else {
                    default("rope_theta", Value::from(1_000_000.0));
                }
            }
            Family::Phi3 => default("rms_norm_eps", Value::from(1e-5)),
        }
    }

    /// Whether the q, k and v projections have biases.
    pub fn qkv_bias(self, attention_bias: bool) -> bool {
        match self {
            Family::Qwen2 => true,
            Family::Mistral | Family::Phi3 => false,
            Family::Llama | Family::Qwen3 | Family::Gemma2 | Family::Gemma3 => attention_bias,
        }
    }

    /// Whether the output projection has a bias.
    pub fn o_bias(self, attention_bias: bool) -> bool {
        match self {
            Family::Qwen2 | Family::Mistral | Family::Phi3 => false,
            Family::Llama | Family::Qwen3 | Family::Gemma2 | Family::Gemma3 => attention_bias,
        }
    }

    /// Whether each query and key head is RMS-normalized before the rotation (Qwen3, Gemma 3).
    pub fn qk_norm(self) -> bool {
        matches!(self, Family::Qwen3 | Family::Gemma3)
    }

    /// Gemma: RMSNorm scales by `1 + w` (its weights are stored as offsets from 1), the
    /// embeddings by √hidden, and the MLP's gate goes through tanh-approximated GELU.
    pub fn is_gemma(self) -> bool {
        matches!(self, Family::Gemma2 | Family::Gemma3)
    }

    /// Gemma 2 and 3: a norm on the attention output and on the MLP's input and output, besides
    /// the input norm (HF's `post_attention_layernorm` is then the attention's output norm).
    pub fn sandwich_norms(self) -> bool {
        self.is_gemma()
    }

    /// Phi-3: `qkv_proj` and `gate_up_proj` instead of the separate projections.
    pub fn fused_projections(self) -> bool {
        self == Family::Phi3
    }

    /// Whether the family has sliding-window attention at all.
    pub fn slides(self) -> bool {
        self != Family::Llama
    }
}
