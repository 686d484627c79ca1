//! A Llama-family decoder: Touvron et al. 2023, "LLaMA: Open and Efficient Foundation Language
//! Models", mirroring Hugging Face's `LlamaForCausalLM` (RMSNorm pre-norm, rotary position
//! embeddings, grouped-query attention, SwiGLU MLP, tied or untied output embeddings), and the
//! families built on it ([`super::family`]: Mistral, Qwen2, Qwen3), whose differences — biases,
//! per-head query/key norms, sliding-window layers, rope scaling — are options of its layers.
//!
//! Parameter paths follow the HF state dict (`model.layers.3.self_attn.q_proj.weight`, …); burn
//! stores linear weights as `[in, out]`, so loading an HF checkpoint is this name map plus a
//! transpose of every `*_proj` / `lm_head` weight.

use burn::module::{Module, Param};
use burn::nn::{Embedding, EmbeddingConfig, Initializer, Linear};
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::family::Family;
use super::fused::{geglu, swiglu};
use super::layers::{
    RmsNorm, attention, attention_scaled, linear, merge_heads, project, split_heads,
};
use super::rope::{Frequencies, RopeSpec, Ropes};
use crate::data::batch::Packing;

/// Mirrors the fields of Hugging Face's `LlamaConfig` (config.json) that the model uses, and
/// those of the families built on it ([`Family`]). `Default` is all zeros and nones: a base for
/// struct updates, not a model.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "default_max_position_embeddings")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_rms_norm_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
    #[serde(default = "default_initializer_range")]
    pub initializer_range: f64,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<u32>,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    /// The family (`model_type`) the fields belong to.
    #[serde(default, skip_serializing_if = "Family::is_llama")]
    pub family: Family,
    /// transformers 5's rope settings (`rope_theta`, `rope_type`, the scaling's keys); older
    /// configs give `rope_theta` and `rope_scaling` instead. See [`RopeSpec::from_config`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_parameters: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<serde_json::Value>,
    /// A GGUF's `rope_freqs` (llama.cpp's per-dimension divisors of the rotary frequencies,
    /// Llama 3.1's scaling baked in); fairtune's own field, never in a Hugging Face config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_divisors: Option<Vec<f64>>,
    /// Mistral, Qwen2, Qwen3: the attention window of sliding layers (see [`Family`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sliding_window: Option<usize>,
    /// Qwen2, Qwen3: whether any layer slides.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub use_sliding_window: bool,
    /// Qwen2, Qwen3: the layers before this one attend fully (default 28).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_window_layers: Option<usize>,
    /// Qwen2, Qwen3, Gemma 2/3: each layer's `full_attention` or `sliding_attention`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_types: Option<Vec<String>>,
    /// Gemma: the MLP's activation (`gelu_pytorch_tanh`; Gemma's name for `hidden_act`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden_activation: Option<String>,
    /// Gemma 2/3: attention scores are scaled by `query_pre_attn_scalar^−½` (not `head_dim^−½`).
    /// An integer in transformers' config class: written as one when whole.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "whole_as_integer"
    )]
    pub query_pre_attn_scalar: Option<f64>,
    /// Gemma 2: attention scores become `c·tanh(s / c)` before the mask.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attn_logit_softcapping: Option<f64>,
    /// Gemma 2: the output logits become `c·tanh(z / c)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_logit_softcapping: Option<f64>,
    /// Gemma 3 (transformers 4 layout): the rotary base of sliding layers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_local_base_freq: Option<f64>,
    /// Gemma 3 (transformers 4 layout, when `layer_types` is absent): every n-th layer is full.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sliding_window_pattern: Option<usize>,
    /// Phi-3 (transformers 4 layout): the share of each head that is rotated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial_rotary_factor: Option<f64>,
    /// Phi-3: the pretraining length that `longrope` scaling extends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_max_position_embeddings: Option<usize>,
}

/// The MLP's gate activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// SiLU: SwiGLU (Llama, Mistral, Qwen, Phi-3).
    Silu,
    /// GELU with the tanh approximation: GeGLU (Gemma).
    GeluTanh,
}

fn whole_as_integer<S: serde::Serializer>(value: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(v) if v.fract() == 0.0 && v.abs() < 1e15 => s.serialize_some(&(*v as i64)),
        Some(v) => s.serialize_some(v),
        None => s.serialize_none(),
    }
}

fn default_max_position_embeddings() -> usize {
    2048
}
fn default_rms_norm_eps() -> f64 {
    1e-6
}
fn default_rope_theta() -> f64 {
    10_000.0
}
fn default_hidden_act() -> String {
    "silu".into()
}
fn default_initializer_range() -> f64 {
    0.02
}

impl LlamaConfig {
    pub fn num_kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// The rotary base and scaling (validated by [`Self::validate`]); Gemma 3's full layers'.
    pub fn rope(&self) -> RopeSpec {
        let spec = self.rope_spec(false).expect("a validated config");
        match &self.rope_divisors {
            Some(divisors) => RopeSpec {
                scaling: super::rope::RopeScaling::Divisors(divisors.clone()),
                ..spec
            },
            None => spec,
        }
    }

    /// The longest sequence the model serves as fairtune computes it: `max_position_embeddings`,
    /// or LongRoPE's pretraining length (beyond it transformers switches to the long factors).
    pub fn max_positions(&self) -> usize {
        self.rope()
            .max_positions()
            .map_or(self.max_position_embeddings, |m| {
                m.min(self.max_position_embeddings)
            })
    }

    /// The config.json field [`Self::max_positions`] comes from, for error messages.
    pub fn max_positions_key(&self) -> &'static str {
        match self.rope().max_positions() {
            Some(m) if m < self.max_position_embeddings => {
                "original_max_position_embeddings (LongRoPE)"
            }
            _ => "max_position_embeddings",
        }
    }

    /// Gemma 3: the rotary settings of its sliding layers (`None` for other families).
    pub fn local_rope(&self) -> Option<RopeSpec> {
        (self.family == Family::Gemma3).then(|| self.rope_spec(true).expect("a validated config"))
    }

    /// The rope settings of the full layers (or Gemma 3's sliding ones, `local`): from
    /// `rope_parameters` (per layer type for Gemma 3), else `rope_theta` and `rope_scaling`;
    /// Phi-3's `original_max_position_embeddings` joins them as transformers moves it in.
    fn rope_spec(&self, local: bool) -> Result<RopeSpec, String> {
        let mut params = self.rope_parameters.clone().filter(|v| !v.is_null());
        let mut scaling = self.rope_scaling.clone().filter(|v| !v.is_null());
        let mut theta = self.rope_theta;
        if self.family == Family::Gemma3 && local {
            // transformers: the sliding layers' base defaults to `rope_local_base_freq`.
            theta = self.rope_local_base_freq.unwrap_or(10_000.0);
        }
        if self.family == Family::Gemma3 {
            let nested = params
                .as_ref()
                .and_then(|p| p.get("full_attention").or(p.get("sliding_attention")))
                .is_some();
            if nested {
                let key = if local {
                    "sliding_attention"
                } else {
                    "full_attention"
                };
                params = params.and_then(|p| p.get(key).cloned());
            } else if local {
                (params, scaling) = (None, None);
            }
        }
        for value in [&mut params, &mut scaling].into_iter().flatten() {
            if let Some(object) = value.as_object_mut() {
                if let Some(original) = self.original_max_position_embeddings {
                    object.insert("original_max_position_embeddings".into(), original.into());
                }
                object
                    .entry("max_position_embeddings")
                    .or_insert(self.max_position_embeddings.into());
            }
        }
        RopeSpec::from_config(theta, params.as_ref(), scaling.as_ref())
    }

    /// How many dimensions of each head are rotated (Phi-3's `partial_rotary_factor`).
    pub fn rotary_dim(&self) -> usize {
        let factor = self
            .rope_parameters
            .as_ref()
            .and_then(|p| p.get("partial_rotary_factor"))
            .and_then(serde_json::Value::as_f64)
            .or(self.partial_rotary_factor)
            .unwrap_or(1.0);
        (self.head_dim() as f64 * factor) as usize
    }

    /// The MLP's activation (validated by [`Self::validate`]).
    pub fn activation(&self) -> Result<Activation, String> {
        let name = match (self.family.is_gemma(), &self.hidden_activation) {
            (true, Some(name)) => name.as_str(),
            _ => self.hidden_act.as_str(),
        };
        match name {
            "silu" if !self.family.is_gemma() => Ok(Activation::Silu),
            "gelu_pytorch_tanh" if self.family.is_gemma() => Ok(Activation::GeluTanh),
            other => Err(format!(
                "activation {other:?} is not supported for {} (it uses {:?})",
                self.family.model_type(),
                if self.family.is_gemma() {
                    "gelu_pytorch_tanh"
                } else {
                    "silu"
                }
            )),
        }
    }

    /// The attention window of layer `layer`: `None` for full attention (see [`Family`]).
    pub fn layer_window(&self, layer: usize) -> Option<usize> {
        match self.family {
            Family::Llama => None,
            Family::Mistral | Family::Phi3 => self.sliding_window,
            Family::Gemma2 | Family::Gemma3 => {
                let sliding = match &self.layer_types {
                    Some(types) => types.get(layer).is_some_and(|t| t == "sliding_attention"),
                    None => {
                        let pattern = match self.family {
                            Family::Gemma2 => 2,
                            _ => self.sliding_window_pattern.unwrap_or(6),
                        };
                        !(layer + 1).is_multiple_of(pattern.max(1))
                    }
                };
                if sliding { self.sliding_window } else { None }
            }
            Family::Qwen2 | Family::Qwen3 => {
                let window = self.sliding_window.filter(|_| self.use_sliding_window)?;
                let sliding = match &self.layer_types {
                    Some(types) => types.get(layer).is_some_and(|t| t == "sliding_attention"),
                    None => layer >= self.max_window_layers.unwrap_or(28),
                };
                sliding.then_some(window)
            }
        }
    }

    /// Every inconsistency a config.json can hold, as one sentence each.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(format!("{name} must be positive"));
            }
        }
        if self.num_kv_heads() == 0 || !self.num_attention_heads.is_multiple_of(self.num_kv_heads())
        {
            return Err(format!(
                "num_attention_heads ({}) must be a multiple of num_key_value_heads ({})",
                self.num_attention_heads,
                self.num_kv_heads()
            ));
        }
        if self.head_dim.is_none() && !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(format!(
                "hidden_size ({}) must be divisible by num_attention_heads ({})",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err(format!(
                "rotary embeddings need an even head_dim, got {}",
                self.head_dim()
            ));
        }
        self.activation()?;
        let positive = |x: f64| x.is_finite() && x > 0.0;
        if !positive(self.rms_norm_eps) || !positive(self.rope_theta) {
            return Err("rms_norm_eps and rope_theta must be positive".into());
        }
        for (name, value) in [
            ("query_pre_attn_scalar", self.query_pre_attn_scalar),
            ("attn_logit_softcapping", self.attn_logit_softcapping),
            ("final_logit_softcapping", self.final_logit_softcapping),
            ("rope_local_base_freq", self.rope_local_base_freq),
        ] {
            if value.is_some_and(|v| !positive(v)) {
                return Err(format!("{name} must be positive"));
            }
        }
        let rotary = self.rotary_dim();
        if rotary == 0 || rotary > self.head_dim() || !rotary.is_multiple_of(2) {
            return Err(format!(
                "partial_rotary_factor gives {rotary} rotated dimensions of a head of {}: it \
                 must be an even number, at least 2",
                self.head_dim()
            ));
        }
        for local in [false, true] {
            let spec = self.rope_spec(local)?;
            if let super::rope::RopeScaling::LongRope { short_factor, .. } = &spec.scaling
                && short_factor.len() != rotary / 2
            {
                return Err(format!(
                    "longrope's short_factor has {} entries for {} rotated dimensions",
                    short_factor.len(),
                    rotary
                ));
            }
        }
        if let Some(divisors) = &self.rope_divisors {
            if divisors.len() != self.rotary_dim() / 2 {
                return Err(format!(
                    "rope_freqs has {} divisors for {} rotated dimensions",
                    divisors.len(),
                    self.rotary_dim()
                ));
            }
            if !divisors.iter().all(|&d| d.is_finite() && d > 0.0) {
                return Err("rope_freqs divisors must be positive numbers".into());
            }
        }
        if self.sliding_window == Some(0) {
            return Err("sliding_window must be positive".into());
        }
        if let Some(types) = &self.layer_types {
            if types.len() != self.num_hidden_layers {
                return Err(format!(
                    "layer_types has {} entries for {} layers",
                    types.len(),
                    self.num_hidden_layers
                ));
            }
            if let Some(bad) = types
                .iter()
                .find(|t| *t != "full_attention" && *t != "sliding_attention")
            {
                return Err(format!(
                    "layer type {bad:?} is not supported (full_attention, sliding_attention)"
                ));
            }
        }
        Ok(())
    }

    pub fn init(&self, device: &Device) -> LlamaForCausalLM {
        let std = self.initializer_range;
        let embed_tokens = EmbeddingConfig::new(self.vocab_size, self.hidden_size)
            .with_initializer(Initializer::Normal { mean: 0.0, std })
            .init(device);
        let layers = (0..self.num_hidden_layers)
            .map(|layer| LlamaDecoderLayer::new(self, layer, device))
            .collect();
        let lm_head = (!self.tie_word_embeddings)
            .then(|| linear(self.hidden_size, self.vocab_size, false, std, device));
        let rope = self.rope();
        let max_position_embeddings = self.max_positions();
        LlamaForCausalLM {
            model: LlamaModel {
                embed_tokens,
                layers,
                norm: self.norm(self.hidden_size, device),
            },
            lm_head,
            rope,
            local_rope: self.local_rope(),
            rotary_dim: self.rotary_dim(),
            embed_scale: self
                .family
                .is_gemma()
                .then(|| (self.hidden_size as f64).sqrt()),
            final_softcap: self.final_logit_softcapping,
            max_position_embeddings,
        }
    }

    /// An RMSNorm of the family's kind over `dim` features.
    fn norm(&self, dim: usize, device: &Device) -> RmsNorm {
        if self.family.is_gemma() {
            RmsNorm::gemma(dim, self.rms_norm_eps, device)
        } else {
            RmsNorm::new(dim, self.rms_norm_eps, device)
        }
    }
}

#[derive(Module, Debug)]
pub struct LlamaAttention {
    /// `None` when fused into `qkv_proj`.
    pub q_proj: Option<Linear>,
    pub k_proj: Option<Linear>,
    pub v_proj: Option<Linear>,
    /// Phi-3: q, k and v as one projection, their rows in that order.
    pub qkv_proj: Option<Linear>,
    pub o_proj: Linear,
    /// Qwen3, Gemma 3: RMSNorm over each query / key head, before the rotation.
    pub q_norm: Option<RmsNorm>,
    pub k_norm: Option<RmsNorm>,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// Sliding-window layers: how many tokens (itself included) a token sees.
    pub window: Option<usize>,
    /// Dropout on the inputs of LoRA adapters (see [`project`]).
    pub lora_dropout: f64,
    /// Gemma 2/3: the scores' scale (`query_pre_attn_scalar^−½`; `head_dim^−½` when `None`).
    #[module(skip)]
    pub scale: Option<f64>,
    /// Gemma 2: the scores' soft cap.
    #[module(skip)]
    pub softcap: Option<f64>,
    /// Gemma 3's sliding layers: rotated with the local table (see [`Ropes`]).
    pub local_rope: bool,
}

impl LlamaAttention {
    fn new(config: &LlamaConfig, layer: usize, device: &Device) -> Self {
        let (hidden, head_dim) = (config.hidden_size, config.head_dim());
        let (heads, kv_heads) = (config.num_attention_heads, config.num_kv_heads());
        let family = config.family;
        let (bias, std) = (
            family.qkv_bias(config.attention_bias),
            config.initializer_range,
        );
        let o_bias = family.o_bias(config.attention_bias);
        let norm = || family.qk_norm().then(|| config.norm(head_dim, device));
        let fused = family.fused_projections();
        let separate = |width: usize| (!fused).then(|| linear(hidden, width, bias, std, device));
        let window = config.layer_window(layer);
        Self {
            q_proj: separate(heads * head_dim),
            k_proj: separate(kv_heads * head_dim),
            v_proj: separate(kv_heads * head_dim),
            qkv_proj: fused
                .then(|| linear(hidden, (heads + 2 * kv_heads) * head_dim, bias, std, device)),
            o_proj: linear(heads * head_dim, hidden, o_bias, std, device),
            q_norm: norm(),
            k_norm: norm(),
            num_heads: heads,
            num_kv_heads: kv_heads,
            head_dim,
            window,
            lora_dropout: 0.0,
            scale: config.query_pre_attn_scalar.map(|s| s.powf(-0.5)),
            softcap: config.attn_logit_softcapping,
            local_rope: family == Family::Gemma3 && window.is_some(),
        }
    }

    /// Queries, keys and values `[batch, heads, seq, head_dim]`, rotated where they apply; each
    /// projection's `[rows, seq, features]` output passes through `layout` before heads split.
    fn qkv(
        &self,
        x: Tensor<3>,
        ropes: &Ropes,
        layout: impl Fn(Tensor<3>) -> Tensor<3>,
    ) -> (Tensor<4>, Tensor<4>, Tensor<4>) {
        let p = self.lora_dropout;
        let (q, k, v) = match &self.qkv_proj {
            Some(fused) => {
                let all = layout(project(fused, x, p));
                let q_width = self.num_heads * self.head_dim;
                let kv_width = self.num_kv_heads * self.head_dim;
                (
                    all.clone().narrow(2, 0, q_width),
                    all.clone().narrow(2, q_width, kv_width),
                    all.narrow(2, q_width + kv_width, kv_width),
                )
            }
            None => {
                let part = |linear: &Option<Linear>, x: Tensor<3>| {
                    layout(project(
                        linear.as_ref().expect("separate projections"),
                        x,
                        p,
                    ))
                };
                (
                    part(&self.q_proj, x.clone()),
                    part(&self.k_proj, x.clone()),
                    part(&self.v_proj, x),
                )
            }
        };
        let normed = |norm: &Option<RmsNorm>, x: Tensor<4>| match norm {
            Some(norm) => norm.forward(x),
            None => x,
        };
        let rope = ropes.of(self.local_rope);
        let q = rope.apply(normed(&self.q_norm, split_heads(q, self.num_heads)));
        let k = rope.apply(normed(&self.k_norm, split_heads(k, self.num_kv_heads)));
        let v = split_heads(v, self.num_kv_heads);
        (q, k, v)
    }

    /// Attention of `q` over `k`, `v` (already repeated to the query heads) under `mask`.
    fn attend(&self, q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, mask: Tensor<4, Bool>) -> Tensor<4> {
        match (self.scale, self.softcap) {
            (None, None) => attention(q, k, v, mask, None),
            (scale, softcap) => {
                let scale = scale.unwrap_or(1.0 / (self.head_dim as f64).sqrt());
                attention_scaled(q, k, v, mask, scale, softcap)
            }
        }
    }

    fn forward(&self, x: Tensor<3>, ropes: &Ropes, masks: &Masks) -> Tensor<3> {
        let mask = masks.of(self.window);
        let (q, k, v) = self.qkv(x, ropes, |t| t);
        let (k, v) = (self.repeat_kv(k), self.repeat_kv(v));
        let out = merge_heads(self.attend(q, k, v, mask));
        project(&self.o_proj, out, self.lora_dropout)
    }

    /// Attention over a packed row `[1, T, hidden]`: the queries, keys and values are laid out as
    /// a batch of its segments (each padded to the longest, see [`SegmentBatch`]), one attention
    /// call serves them all under their masks, and the outputs go back to the packed row. Grouped-
    /// query attention without copying keys and values: the query heads that share a key/value
    /// head are stacked along the rows (`[segments, kv, rep·width, head_dim]`).
    fn forward_packed(&self, x: Tensor<3>, batch: &SegmentBatch) -> Tensor<3> {
        let [_, total, _] = x.dims();
        let (q, k, v) = self.qkv(x, &batch.ropes, |t| batch.to_segments(t));
        let (kv_heads, repeats) = (self.num_kv_heads, self.num_heads / self.num_kv_heads);
        let (segments, width, head_dim) = (batch.segments, batch.width, self.head_dim);
        let q = q.reshape([segments, kv_heads, repeats * width, head_dim]);
        let scale = self.scale.unwrap_or(1.0 / (head_dim as f64).sqrt());
        let mask = batch.masks.of(self.window);
        let out = super::attention::attention(q, k, v, mask, scale, self.softcap).reshape([
            segments,
            self.num_heads,
            width,
            head_dim,
        ]);
        let out = batch.to_row(merge_heads(out), total);
        project(&self.o_proj, out, self.lora_dropout)
    }

    /// Attention of new tokens over the cached ones and themselves: their keys and values
    /// (rotated at their positions) join `cache`, `[batch, kv_heads, slots, head_dim]`.
    fn forward_cached(
        &self,
        x: Tensor<3>,
        ropes: &Ropes,
        mask: Tensor<4, Bool>,
        cache: &mut Option<(Tensor<4>, Tensor<4>)>,
    ) -> Tensor<3> {
        let (q, k, v) = self.qkv(x, ropes, |t| t);
        let (k, v) = match cache.take() {
            Some((past_k, past_v)) => (
                Tensor::cat(vec![past_k, k], 2),
                Tensor::cat(vec![past_v, v], 2),
            ),
            None => (k, v),
        };
        *cache = Some((k.clone(), v.clone()));
        let (k, v) = (self.repeat_kv(k), self.repeat_kv(v));
        let out = merge_heads(self.attend(q, k, v, mask));
        project(&self.o_proj, out, self.lora_dropout)
    }

    /// Grouped-query attention: each key/value head serves `num_heads / num_kv_heads` query heads.
    fn repeat_kv(&self, x: Tensor<4>) -> Tensor<4> {
        let repeats = self.num_heads / self.num_kv_heads;
        if repeats == 1 {
            return x;
        }
        let [batch, kv_heads, seq, head_dim] = x.dims();
        x.unsqueeze_dim::<5>(2)
            .expand([batch, kv_heads, repeats, seq, head_dim])
            .reshape([batch, kv_heads * repeats, seq, head_dim])
    }
}

#[derive(Module, Debug)]
pub struct LlamaMlp {
    /// `None` when fused into `gate_up_proj`.
    pub gate_proj: Option<Linear>,
    pub up_proj: Option<Linear>,
    /// Phi-3: gate and up as one projection, the gate's columns first.
    pub gate_up_proj: Option<Linear>,
    pub down_proj: Linear,
    pub lora_dropout: f64,
    /// Gemma: GeGLU (tanh-approximated GELU) instead of SwiGLU.
    pub gelu: bool,
}

impl LlamaMlp {
    fn new(config: &LlamaConfig, device: &Device) -> Self {
        let (hidden, inter) = (config.hidden_size, config.intermediate_size);
        let (bias, std) = (config.mlp_bias, config.initializer_range);
        let fused = config.family.fused_projections();
        let separate = || (!fused).then(|| linear(hidden, inter, bias, std, device));
        Self {
            gate_proj: separate(),
            up_proj: separate(),
            gate_up_proj: fused.then(|| linear(hidden, 2 * inter, bias, std, device)),
            down_proj: linear(inter, hidden, bias, std, device),
            lora_dropout: 0.0,
            gelu: config.activation() == Ok(Activation::GeluTanh),
        }
    }

    // SwiGLU (Shazeer 2020): down(silu(gate(x)) * up(x)); GeGLU with gelu_tanh for Gemma.
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let p = self.lora_dropout;
        let (gate, up) = match &self.gate_up_proj {
            Some(fused) => {
                let both = project(fused, x, p);
                let half = both.dims()[2] / 2;
                (both.clone().narrow(2, 0, half), both.narrow(2, half, half))
            }
            None => {
                let part = |linear: &Option<Linear>, x: Tensor<3>| {
                    project(linear.as_ref().expect("separate projections"), x, p)
                };
                (part(&self.gate_proj, x.clone()), part(&self.up_proj, x))
            }
        };
        let gated = if self.gelu {
            geglu(gate, up)
        } else {
            swiglu(gate, up)
        };
        project(&self.down_proj, gated, p)
    }
}

#[derive(Module, Debug)]
pub struct LlamaDecoderLayer {
    pub self_attn: LlamaAttention,
    pub mlp: LlamaMlp,
    pub input_layernorm: RmsNorm,
    /// The MLP's input norm; with sandwich norms (Gemma 2/3), the attention output's norm.
    pub post_attention_layernorm: RmsNorm,
    /// Gemma 2/3: the MLP's input and output norms.
    pub pre_feedforward_layernorm: Option<RmsNorm>,
    pub post_feedforward_layernorm: Option<RmsNorm>,
}

impl LlamaDecoderLayer {
    fn new(config: &LlamaConfig, layer: usize, device: &Device) -> Self {
        let hidden = config.hidden_size;
        let sandwich = || {
            config
                .family
                .sandwich_norms()
                .then(|| config.norm(hidden, device))
        };
        Self {
            self_attn: LlamaAttention::new(config, layer, device),
            mlp: LlamaMlp::new(config, device),
            input_layernorm: config.norm(hidden, device),
            post_attention_layernorm: config.norm(hidden, device),
            pre_feedforward_layernorm: sandwich(),
            post_feedforward_layernorm: sandwich(),
        }
    }

    /// The two residual blocks around `attend` (the attention of the normed input).
    fn blocks(&self, x: Tensor<3>, attend: impl FnOnce(Tensor<3>) -> Tensor<3>) -> Tensor<3> {
        let attended = attend(self.input_layernorm.forward(x.clone()));
        match (
            &self.pre_feedforward_layernorm,
            &self.post_feedforward_layernorm,
        ) {
            (Some(pre), Some(post)) => {
                let h = x + self.post_attention_layernorm.forward(attended);
                h.clone() + post.forward(self.mlp.forward(pre.forward(h)))
            }
            _ => {
                let h = x + attended;
                h.clone() + self.mlp.forward(self.post_attention_layernorm.forward(h))
            }
        }
    }

    fn forward(&self, x: Tensor<3>, ropes: &Ropes, masks: &Masks) -> Tensor<3> {
        self.blocks(x, |normed| self.self_attn.forward(normed, ropes, masks))
    }

    fn forward_cached(
        &self,
        x: Tensor<3>,
        ropes: &Ropes,
        masks: &Masks,
        cache: &mut Option<(Tensor<4>, Tensor<4>)>,
    ) -> Tensor<3> {
        let mask = masks.of(self.self_attn.window);
        self.blocks(x, |normed| {
            self.self_attn.forward_cached(normed, ropes, mask, cache)
        })
    }

    pub(super) fn forward_packed(&self, x: Tensor<3>, batch: &SegmentBatch) -> Tensor<3> {
        self.blocks(x, |normed| self.self_attn.forward_packed(normed, batch))
    }
}

#[derive(Module, Debug)]
pub struct LlamaModel {
    pub embed_tokens: Embedding,
    pub layers: Vec<LlamaDecoderLayer>,
    pub norm: RmsNorm,
}

#[derive(Module, Debug)]
pub struct LlamaForCausalLM {
    pub model: LlamaModel,
    /// `None` when the output projection is tied to `model.embed_tokens`.
    pub lm_head: Option<Linear>,
    #[module(skip)]
    pub rope: RopeSpec,
    /// Gemma 3: the rotary settings of the sliding layers.
    #[module(skip)]
    pub local_rope: Option<RopeSpec>,
    /// Rotated dimensions of each head.
    pub rotary_dim: usize,
    /// Gemma: embeddings × √hidden.
    #[module(skip)]
    pub embed_scale: Option<f64>,
    /// Gemma 2: the output logits' soft cap.
    #[module(skip)]
    pub final_softcap: Option<f64>,
    pub max_position_embeddings: usize,
}

impl LlamaForCausalLM {
    /// Next-token logits `[batch, seq, vocab]` for right-padded `input_ids`. Causal attention alone
    /// keeps real tokens from seeing the padding that follows them, so no padding mask is needed.
    pub fn forward(&self, input_ids: Tensor<2, Int>) -> Tensor<3> {
        self.lm_logits(self.hidden_states(input_ids))
    }

    /// Final hidden states `[batch, seq, hidden]` (after the last norm).
    pub fn hidden_states(&self, input_ids: Tensor<2, Int>) -> Tensor<3> {
        let device = input_ids.device();
        let [_, seq] = input_ids.dims();
        let positions: Vec<usize> = (0..seq).collect();
        let rope = self.ropes(&positions, 1, &device);
        let masks = Masks::new(&self.windows(), |window| {
            // Hidden: the future, and with a window the keys W or more tokens back.
            let mut hidden = vec![false; seq * seq];
            for q in 0..seq {
                for k in 0..seq {
                    hidden[q * seq + k] =
                        k > q || window.is_some_and(|w| positions[q] - positions[k] >= w);
                }
            }
            Tensor::<2, Bool>::from_data(TensorData::new(hidden, [seq, seq]), &device)
                .unsqueeze::<4>()
        });
        let mut x = self.embed(input_ids);
        for layer in &self.model.layers {
            x = layer.forward(x, &rope, &masks);
        }
        self.model.norm.forward(x)
    }

    /// Feed each row of a generation its next tokens, `(id, position)` with `None` for left
    /// padding (all rows the same count), through the key/value `cache` of what came before;
    /// returns the next-token logits at each row's last new token, `[batch, vocab]`. A token
    /// sees the cached and new tokens of its row at positions up to its own (within its layer's
    /// window), padding never; a padding token sees only itself.
    pub fn extend(
        &self,
        cache: &mut KvCache,
        tokens: &[Vec<(u32, Option<usize>)>],
        device: &Device,
    ) -> Tensor<2> {
        let batch = tokens.len();
        let new = tokens.first().map_or(0, Vec::len);
        assert!(
            batch > 0 && new > 0 && tokens.iter().all(|row| row.len() == new),
            "extend takes the same number of new tokens, at least one, for every row"
        );
        if cache.layers.is_empty() {
            cache.layers = vec![None; self.model.layers.len()];
            cache.positions = vec![Vec::new(); batch];
        }
        let past = cache.positions[0].len();
        for (row, new_tokens) in cache.positions.iter_mut().zip(tokens) {
            row.extend(new_tokens.iter().map(|&(_, position)| position));
        }
        let total = past + new;
        let ids: Vec<i64> = tokens
            .iter()
            .flatten()
            .map(|&(id, _)| i64::from(id))
            .collect();
        let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [batch, new]), device);
        let positions: Vec<usize> = tokens
            .iter()
            .flatten()
            .map(|&(_, position)| position.unwrap_or(0))
            .collect();
        let rope = self.ropes(&positions, batch, device);
        let slots = &cache.positions;
        let masks = Masks::new(&self.windows(), |window| {
            let mut hidden = vec![true; batch * new * total];
            for row in 0..batch {
                for i in 0..new {
                    let query = slots[row][past + i];
                    for key in 0..total {
                        let visible = match (query, slots[row][key]) {
                            (None, _) => key == past + i,
                            (Some(_), None) => false,
                            (Some(q), Some(k)) => k <= q && window.is_none_or(|w| q - k < w),
                        };
                        hidden[(row * new + i) * total + key] = !visible;
                    }
                }
            }
            Tensor::<4, Bool>::from_data(TensorData::new(hidden, [batch, 1, new, total]), device)
        });
        let mut x = self.embed(ids);
        for (layer, entry) in self.model.layers.iter().zip(&mut cache.layers) {
            x = layer.forward_cached(x, &rope, &masks, entry);
        }
        let hidden = self.model.norm.forward(x).narrow(1, new - 1, 1);
        let width = self.hidden_size();
        let hidden = hidden.reshape([batch, width]);
        self.cap_logits(match &self.lm_head {
            Some(head) => super::layers::project(head, hidden, 0.0),
            // Tied: W·hᵀ with the embeddings [vocab, hidden] as stored, not a transposed copy
            // of them per step (a CPU matmul with a transposed operand copies it whole).
            None => super::precision::full(self.model.embed_tokens.weight.val())
                .matmul(hidden.transpose())
                .transpose(),
        })
    }

    /// Token embeddings `[batch, seq, hidden]` (Gemma: × √hidden, in the weights' precision).
    pub(super) fn embed(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        self.scale_embeddings(super::precision::full(self.model.embed_tokens.forward(ids)))
    }

    /// The family's scale on looked-up embeddings (none but Gemma's).
    pub(super) fn scale_embeddings<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        match self.embed_scale {
            Some(scale) => x * (scale as f32),
            None => x,
        }
    }

    /// Gemma 2's final soft cap, `c·tanh(z / c)`, on logits (as they are for other families).
    pub fn cap_logits<const D: usize>(&self, logits: Tensor<D>) -> Tensor<D> {
        super::layers::soft_cap(logits, self.final_softcap)
    }

    /// Final hidden states `[T, hidden]` of a packed row (see [`Packing`]): every token sees what
    /// it sees in its own sequence, so these are the separate sequences' hidden states, with
    /// shared prefixes computed once and no padding.
    pub fn packed_hidden_states(&self, packing: &Packing, device: &Device) -> Tensor<2> {
        self.packed_with_layers(packing, device, |ids, batch| {
            let mut x = self.embed(ids);
            for layer in &self.model.layers {
                x = layer.forward_packed(x, &batch);
            }
            x
        })
    }

    /// A packed forward whose decoder layers `layers` runs: it gets the row's token ids and
    /// segment layout and returns the last layer's output (activation checkpointing runs them
    /// its own way); the final norm follows here.
    pub(super) fn packed_with_layers(
        &self,
        packing: &Packing,
        device: &Device,
        layers: impl FnOnce(Tensor<2, Int>, SegmentBatch) -> Tensor<3>,
    ) -> Tensor<2> {
        let total = packing.tokens.len();
        let ids: Vec<i64> = packing.tokens.iter().map(|&t| i64::from(t)).collect();
        let input_ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, total]), device);
        let x = if self.model.layers.is_empty() {
            self.embed(input_ids)
        } else {
            layers(input_ids, SegmentBatch::of(self, packing, device))
        };
        self.model
            .norm
            .forward(x)
            .reshape([total, self.hidden_size()])
    }

    fn hidden_size(&self) -> usize {
        self.model.embed_tokens.weight.lazy_shape()[1]
    }

    /// The rotary frequencies of the full layers and (Gemma 3) the sliding ones.
    fn frequencies(&self) -> (Frequencies, Option<Frequencies>) {
        let rotary = self.rotary_dim;
        (
            Frequencies::of(&self.rope, rotary),
            self.local_rope.as_ref().map(|r| Frequencies::of(r, rotary)),
        )
    }

    /// The rotations of `batch` rows of tokens at `positions`.
    fn ropes(&self, positions: &[usize], batch: usize, device: &Device) -> Ropes {
        let (global, local) = self.frequencies();
        Ropes::at(positions, batch, &global, local.as_ref(), device)
    }

    /// The distinct attention windows of the layers (`None`: full attention).
    fn windows(&self) -> Vec<Option<usize>> {
        let mut windows: Vec<Option<usize>> = Vec::new();
        for layer in &self.model.layers {
            if !windows.contains(&layer.self_attn.window) {
                windows.push(layer.self_attn.window);
            }
        }
        windows
    }

    /// Project hidden states onto the vocabulary.
    pub fn lm_logits(&self, hidden: Tensor<3>) -> Tensor<3> {
        self.cap_logits(match &self.lm_head {
            Some(head) => super::layers::project(head, hidden, 0.0),
            None => hidden.matmul(
                super::precision::full(self.model.embed_tokens.weight.val())
                    .transpose()
                    .unsqueeze::<3>(),
            ),
        })
    }

    /// The output projection as `[vocab, hidden]`: the embeddings when tied, else `lm_head`'s
    /// weight (burn stores it `[hidden, vocab]`; a transposed view, not a copy).
    pub fn output_weight(&self) -> Tensor<2> {
        match &self.lm_head {
            Some(head) => head.weight.val().transpose(),
            None => self.model.embed_tokens.weight.val(),
        }
    }

    /// Set the dropout on LoRA adapter inputs (no effect without adapters or outside training).
    pub fn with_lora_dropout(mut self, p: f64) -> Self {
        for layer in &mut self.model.layers {
            layer.self_attn.lora_dropout = p;
            layer.mlp.lora_dropout = p;
        }
        self
    }

    /// Rows of the output projection.
    pub fn vocab_size(&self) -> usize {
        self.model.embed_tokens.weight.lazy_shape()[0]
    }

    pub fn max_positions(&self) -> usize {
        self.max_position_embeddings
    }

    pub fn embedding_weight(&self) -> &Param<Tensor<2>> {
        &self.model.embed_tokens.weight
    }
}

/// A packed row's segments as a batch for attention: `segments` rows of `width` slots (the
/// longest segment), slot j of segment i holding packed token `start_i + j` (padding slots repeat
/// the segment's first token and are never read back). Linear layers run on the packed row, with
/// no padding; only attention sees the segments padded, so one call serves all of them.
pub(super) struct SegmentBatch {
    segments: usize,
    width: usize,
    /// Packed row of each slot, `[segments · width]`; `None` when one segment is the whole row.
    gather: Option<Tensor<1, Int>>,
    /// Slot of each packed token, `[T]`; `None` likewise.
    scatter: Option<Tensor<1, Int>>,
    /// `[segments, 1, repeats · width, width]`, true = hidden, for the stacked query heads: one
    /// per attention window of the layers.
    masks: Masks,
    /// Rotations of every slot, `[segments, 1, width, rotated]` (padding at position 0).
    ropes: Ropes,
}

impl SegmentBatch {
    /// The layout of `packing` for `model`'s attention (which must have a layer).
    pub(super) fn of(model: &LlamaForCausalLM, packing: &Packing, device: &Device) -> Self {
        let attention = &model.model.layers[0].self_attn;
        Self::new(
            packing,
            attention.num_heads / attention.num_kv_heads,
            &model.frequencies(),
            &model.windows(),
            device,
        )
    }

    fn new(
        packing: &Packing,
        repeats: usize,
        frequencies: &(Frequencies, Option<Frequencies>),
        windows: &[Option<usize>],
        device: &Device,
    ) -> Self {
        let segments = packing.segments.len().max(1);
        let width = packing.segments.iter().map(|s| s.len()).max().unwrap_or(1);
        let single = packing.segments.len() == 1;
        let (mut rows, mut positions) = (Vec::new(), Vec::new());
        let mut scatter = vec![0i64; packing.tokens.len()];
        let mut blocks = Vec::with_capacity(segments);
        for (index, segment) in packing.segments.iter().enumerate() {
            let len = segment.len();
            for slot in 0..width {
                let row = segment.start + if slot < len { slot } else { 0 };
                rows.push(row as i64);
                positions.push(packing.positions[row]);
                if slot < len {
                    scatter[row] = (index * width + slot) as i64;
                }
            }
            blocks.push((segment.visibility(), segment.start, len));
        }
        // Real queries see their segment's visible keys (within the window: position
        // differences below it), padding keys never; padding queries (never read) see the
        // first key only, so no row is empty.
        let mask = |window: Option<usize>| {
            let mut hidden = Vec::with_capacity(segments * repeats * width * width);
            for (visible, start, len) in &blocks {
                let (start, len) = (*start, *len);
                let position = |slot: usize| packing.positions[start + slot];
                let mut block = vec![true; width * width];
                for q in 0..width {
                    for k in 0..width {
                        block[q * width + k] = if q < len && k < len {
                            !visible[q * len + k]
                                || window.is_some_and(|w| position(q) >= position(k) + w)
                        } else {
                            !(q >= len && k == 0)
                        };
                    }
                }
                for _ in 0..repeats {
                    hidden.extend_from_slice(&block);
                }
            }
            let data = TensorData::new(hidden, [segments, 1, repeats * width, width]);
            Tensor::<4, Bool>::from_data(data, device)
        };
        let ints = |values: Vec<i64>| {
            let n = values.len();
            Tensor::<1, Int>::from_data(TensorData::new(values, [n]), device)
        };
        Self {
            segments,
            width,
            gather: (!single).then(|| ints(rows)),
            scatter: (!single).then(|| ints(scatter)),
            masks: Masks::new(windows, mask),
            ropes: Ropes::at(
                &positions,
                segments,
                &frequencies.0,
                frequencies.1.as_ref(),
                device,
            ),
        }
    }

    /// `[1, T, features]` of the packed row → `[segments, width, features]`.
    fn to_segments(&self, x: Tensor<3>) -> Tensor<3> {
        let [_, total, features] = x.dims();
        match &self.gather {
            None => x.reshape([1, total, features]),
            Some(rows) => x
                .reshape([total, features])
                .select(0, rows.clone())
                .reshape([self.segments, self.width, features]),
        }
    }

    /// `[segments, width, features]` → `[1, total, features]` of the packed row.
    fn to_row(&self, x: Tensor<3>, total: usize) -> Tensor<3> {
        let [_, _, features] = x.dims();
        match &self.scatter {
            None => x.reshape([1, total, features]),
            Some(slots) => x
                .reshape([self.segments * self.width, features])
                .select(0, slots.clone())
                .reshape([1, total, features]),
        }
    }
}

/// The keys and values every layer computed for the tokens a generation has seen, `[batch,
/// kv_heads, slots, head_dim]` (keys rotated), and each row's slot positions (`None`: left
/// padding). Filled by [`LlamaForCausalLM::extend`].
#[derive(Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor<4>, Tensor<4>)>>,
    positions: Vec<Vec<Option<usize>>>,
}

impl KvCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Slots per row so far.
    pub fn len(&self) -> usize {
        self.positions.first().map_or(0, Vec::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The attention masks of a forward, one per distinct window of its layers (true = hidden).
pub(super) struct Masks(Vec<(Option<usize>, Tensor<4, Bool>)>);

impl Masks {
    fn new(windows: &[Option<usize>], mask: impl Fn(Option<usize>) -> Tensor<4, Bool>) -> Self {
        let windows = if windows.is_empty() {
            &[None][..]
        } else {
            windows
        };
        Self(windows.iter().map(|&w| (w, mask(w))).collect())
    }

    /// The mask of layers with attention window `window`.
    fn of(&self, window: Option<usize>) -> Tensor<4, Bool> {
        self.0
            .iter()
            .find(|(w, _)| *w == window)
            .map(|(_, mask)| mask.clone())
            .expect("a mask for every layer's window")
    }
}
