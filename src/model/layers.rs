//! Small building blocks shared by the architectures, named like their PyTorch counterparts so
//! that a Hugging Face state dict maps onto them by name (`weight`, `bias`).

use burn::module::{Module, Param};
use burn::nn::{Dropout, Initializer, Linear, LinearConfig};
use burn::tensor::activation::softmax;
use burn::tensor::{Bool, Device, Distribution, Tensor};

/// Hugging Face initializes every linear and embedding weight from N(0, initializer_range).
pub fn linear(d_input: usize, d_output: usize, bias: bool, std: f64, device: &Device) -> Linear {
    LinearConfig::new(d_input, d_output)
        .with_bias(bias)
        .with_initializer(Initializer::Normal { mean: 0.0, std })
        .init(device)
}

/// `linear.forward(x)`, with a LoRA adapter kept apart from the frozen weight, as PEFT computes
/// it: `x·W₀ + s·(dropout_p(x)·A)·B + b` (dropout only while training, on an autodiff device).
/// Forming `W₀ + s·A·B` first (what `Param::val` gives) would make the backward pass compute the
/// dense `[in, out]` weight gradient `xᵀ·g` only to reduce it to A and B — the FLOPs of full
/// fine-tuning; apart, the adapter's gradients cost `r·(in + out)` per token.
///
/// A frozen weight stored in half precision ([`super::precision`]) is widened per use.
pub fn project<const D: usize>(linear: &Linear, x: Tensor<D>, lora_dropout: f64) -> Tensor<D> {
    let Some(adapter) = linear.weight.adapter() else {
        if linear.weight.dtype() == x.dtype() {
            return linear.forward(x);
        }
        let y = super::precision::frozen_matmul(x, linear.weight.val());
        return match &linear.bias {
            Some(bias) => y + super::precision::full(bias.val()).unsqueeze(),
            None => y,
        };
    };
    let adapter_input = if lora_dropout > 0.0 && x.device().is_autodiff() {
        let keep = 1.0 - lora_dropout;
        x.clone() * x.random_like(Distribution::Bernoulli(keep)) / keep
    } else {
        x.clone()
    };
    let y = super::precision::frozen_matmul(x, linear.weight.base())
        + adapter_input
            .matmul(adapter.a.val().unsqueeze())
            .matmul(adapter.b.val().unsqueeze())
            * adapter.scale;
    match &linear.bias {
        Some(bias) => y + bias.val().unsqueeze(),
        None => y,
    }
}

/// Root-mean-square norm (Zhang & Sennrich 2019), as `LlamaRMSNorm`: `x / rms(x) * weight`; as
/// `GemmaRMSNorm` with `unit_offset`: `x / rms(x) * (1 + weight)`.
#[derive(Module, Debug)]
pub struct RmsNorm {
    pub weight: Param<Tensor<1>>,
    pub eps: f64,
    pub unit_offset: bool,
}

impl RmsNorm {
    pub fn new(dim: usize, eps: f64, device: &Device) -> Self {
        Self {
            weight: Initializer::Ones.init([dim], device),
            eps,
            unit_offset: false,
        }
    }

    /// Gemma's: the weight is an offset from 1 (zeros at initialization).
    pub fn gemma(dim: usize, eps: f64, device: &Device) -> Self {
        Self {
            weight: Initializer::Zeros.init([dim], device),
            eps,
            unit_offset: true,
        }
    }

    /// One autodiff node that keeps only `x` for backward ([`super::fused::rms_norm`]).
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let weight = if self.unit_offset {
            self.weight.val() + 1.0
        } else {
            self.weight.val()
        };
        super::fused::rms_norm(x, weight, self.eps)
    }
}

/// Layer norm with an affine `weight` and `bias`, as `torch.nn.LayerNorm`.
#[derive(Module, Debug)]
pub struct LayerNorm {
    pub weight: Param<Tensor<1>>,
    pub bias: Param<Tensor<1>>,
    pub eps: f64,
}

impl LayerNorm {
    pub fn new(dim: usize, eps: f64, device: &Device) -> Self {
        Self {
            weight: Initializer::Ones.init([dim], device),
            bias: Initializer::Zeros.init([dim], device),
            eps,
        }
    }

    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let mean = x.clone().mean_dim(D - 1);
        let centered = x - mean;
        let variance = centered.clone().powi_scalar(2).mean_dim(D - 1);
        let normed = centered * (variance + self.eps).sqrt().recip();
        normed * self.weight.val().unsqueeze() + self.bias.val().unsqueeze()
    }
}

/// Scaled dot-product attention over `[batch, heads, seq, head_dim]` tensors.
///
/// `mask` is true where attention is *forbidden*, broadcastable to `[batch, heads, q, k]`.
/// Rows that are fully masked (padding queries) produce uniform weights rather than NaN: a large
/// negative fill instead of −∞ keeps softmax finite, and those rows are never read by the losses.
/// `dropout` applies to the attention probabilities (BERT does this; Llama has none).
pub fn attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    mask: Tensor<4, Bool>,
    dropout: Option<&Dropout>,
) -> Tensor<4> {
    let [_, _, _, head_dim] = q.dims();
    let scores = q.matmul(k.swap_dims(2, 3)) / (head_dim as f64).sqrt();
    masked_softmax_values(scores, mask, v, dropout)
}

/// [`attention`] with the scores scaled by `scale` instead of `head_dim^−½`, and soft-capped to
/// `c·tanh(s / c)` before the mask under `softcap` c (Gemma 2).
pub fn attention_scaled(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    mask: Tensor<4, Bool>,
    scale: f64,
    softcap: Option<f64>,
) -> Tensor<4> {
    let scores = soft_cap(q.matmul(k.swap_dims(2, 3)) * scale, softcap);
    masked_softmax_values(scores, mask, v, None)
}

/// Gemma 2's soft cap `c·tanh(x / c)` under `cap` c; `x` as it is without.
pub fn soft_cap<const D: usize>(x: Tensor<D>, cap: Option<f64>) -> Tensor<D> {
    match cap {
        Some(cap) => (x / cap).tanh() * cap,
        None => x,
    }
}

fn masked_softmax_values(
    scores: Tensor<4>,
    mask: Tensor<4, Bool>,
    v: Tensor<4>,
    dropout: Option<&Dropout>,
) -> Tensor<4> {
    let scores = scores.mask_fill(mask, -1.0e9);
    let probs = softmax(scores, 3);
    let probs = match dropout {
        Some(dropout) => dropout.forward(probs),
        None => probs,
    };
    probs.matmul(v)
}

/// `[batch, seq, hidden] → [batch, heads, seq, head_dim]`.
pub fn split_heads(x: Tensor<3>, heads: usize) -> Tensor<4> {
    let [batch, seq, hidden] = x.dims();
    x.reshape([batch, seq, heads, hidden / heads])
        .swap_dims(1, 2)
}

/// `[batch, heads, seq, head_dim] → [batch, seq, hidden]`.
pub fn merge_heads(x: Tensor<4>) -> Tensor<3> {
    let [batch, heads, seq, head_dim] = x.dims();
    x.swap_dims(1, 2).reshape([batch, seq, heads * head_dim])
}
