//! The decoder's small ops as single autodiff nodes that keep only their inputs for the backward
//! pass. Composed of plain tensor ops, autodiff keeps every intermediate: SwiGLU's sigmoid and
//! SiLU, RMSNorm's squares and normalized copy, and — largest — the `[positions, vocab]` logits
//! and exponentials of the log-softmax. Each op here recomputes those in its backward instead,
//! with forward and backward side by side, the math above each.
//!
//! Composed of the backend's own ops, so they run on every backend burn dispatches to; only the
//! autodiff nodes are ours. The tests hold each to its composed form (values and gradients).

use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::{FloatTensor, IntTensor, QuantizedTensor};
#[cfg(feature = "gpu")]
use burn::backend::wgpu::CubeBackend;
use burn::backend::{AutodiffBackend, Backend, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::tensor::{IndexingUpdateOp, Int, Shape, Slice, Tensor};

/// `silu(gate) · up` (Shazeer 2020's SwiGLU, `gate · σ(gate) · up`), differentiable in both.
pub fn swiglu<const D: usize>(gate: Tensor<D>, up: Tensor<D>) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as FusedBackend>::swiglu(
        gate.into_dispatch(),
        up.into_dispatch(),
    ))
}

/// `gelu_tanh(gate) · up` (Shazeer 2020's GeGLU with the tanh-approximated GELU that Gemma
/// uses, PyTorch's `gelu(approximate="tanh")`), differentiable in both.
pub fn geglu<const D: usize>(gate: Tensor<D>, up: Tensor<D>) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as FusedBackend>::geglu(
        gate.into_dispatch(),
        up.into_dispatch(),
    ))
}

/// √(2/π), GELU's tanh approximation's slope.
const GELU_K: f64 = 0.797_884_560_802_865_4;
/// The cubic term's coefficient of GELU's tanh approximation.
const GELU_C: f64 = 0.044_715;

/// RMSNorm over the last dimension, `x · (mean(x²) + eps)^(−½) · weight`, differentiable in `x`
/// and `weight`.
pub fn rms_norm<const D: usize>(x: Tensor<D>, weight: Tensor<1>, eps: f64) -> Tensor<D> {
    // Backend ops broadcast between tensors of one rank: the weight goes in as [1, …, 1, d].
    Tensor::from_dispatch(<Dispatch as FusedBackend>::rms_norm(
        x.into_dispatch(),
        weight.unsqueeze::<D>().into_dispatch(),
        eps,
    ))
}

/// `x · cast(W)` for `x [rows, in]` and a frozen `weight [in, out]` stored in another precision
/// (f16, bf16), differentiable in `x` only: the node keeps the stored weight, not its f32 copy,
/// and widens it again in backward ([`super::precision`]).
pub fn frozen_matmul(x: Tensor<2>, weight: Tensor<2>) -> Tensor<2> {
    Tensor::from_dispatch(<Dispatch as FusedBackend>::frozen_matmul(
        x.into_dispatch(),
        weight.into_dispatch(),
    ))
}

/// `x · dequantize(W)` for `x [rows, in]` and a frozen `weight [in, out]` stored quantized
/// (`--quantize-base`), differentiable in `x` only: the node keeps the packed weight, not its
/// f32 copy, and dequantizes it again in backward ([`super::precision`]).
pub fn quantized_matmul(x: Tensor<2>, weight: Tensor<2>) -> Tensor<2> {
    Tensor::from_dispatch(<Dispatch as FusedBackend>::quantized_matmul(
        x.into_dispatch(),
        weight.into_dispatch(),
    ))
}

/// Logits alive at once inside [`token_logps`]: 2^24 floats (64 MiB), whatever the vocabulary.
pub const LOGIT_BUDGET: usize = 1 << 24;

/// Widest vocabulary block: reductions stay well under the ~65,536-long axes that llvmpipe
/// gets wrong (DESIGN.md §4), whatever the vocabulary.
const MAX_BLOCK: usize = 32_768;

/// `log p(targets[i] | hidden[i])` for rows of `hidden [n, d]` under the output projection
/// `weight [vocab, d]`: `z[i, tᵢ] − logsumexp_j z[i, j]` with `z = h·Wᵀ` (Gemma 2, `softcap`
/// c: `z = c·tanh(h·Wᵀ / c)`), differentiable in both. The
/// logits exist only inside the op, `[n, block]` at a time over blocks of the vocabulary
/// (`n · block ≤` [`LOGIT_BUDGET`]), in the forward and again in the backward; never in the graph.
/// The backward writes the `[vocab, d]` weight gradient block by block into one buffer, so it
/// costs that gradient and one block, however many positions are scored.
pub fn token_logps(
    hidden: Tensor<2>,
    weight: Tensor<2>,
    targets: Tensor<1, Int>,
    softcap: Option<f64>,
) -> Tensor<1> {
    let [n] = targets.dims();
    let [vocab, _] = weight.dims();
    let block = (LOGIT_BUDGET / n.max(1))
        .clamp(1, MAX_BLOCK)
        .min(vocab.max(1));
    token_logps_in_blocks(hidden, weight, targets, block, softcap)
}

/// [`token_logps`] over vocabulary blocks of `block` rows of `weight` (the last may be shorter).
pub fn token_logps_in_blocks(
    hidden: Tensor<2>,
    weight: Tensor<2>,
    targets: Tensor<1, Int>,
    block: usize,
    softcap: Option<f64>,
) -> Tensor<1> {
    let [n] = targets.dims();
    let (logps, _logsumexp) = <Dispatch as FusedBackend>::token_logps(
        hidden.into_dispatch(),
        weight.into_dispatch(),
        targets.reshape([n, 1]).into_dispatch(),
        block,
        softcap,
    );
    let logps = Tensor::<2>::from_dispatch(logps);
    logps.reshape([n])
}

/// WPO's log Σ_v p_v² (Zhou et al. 2024, Eq. 2; TRL's `log_sum_sq_probs`) for rows of
/// `hidden [n, d]` under `weight [vocab, d]`, p = softmax(h·Wᵀ): logsumexp(2z) − 2·logsumexp(z),
/// over blocks of the vocabulary as [`token_logps`] takes them. Detached: WPO's weights carry no
/// gradient, so plain tensor ops suffice (two forward passes over the vocabulary, no backward).
pub fn log_sum_squared_probs(
    hidden: Tensor<2>,
    weight: Tensor<2>,
    softcap: Option<f64>,
) -> Tensor<1> {
    let [n, _] = hidden.dims();
    let [vocab, _] = weight.dims();
    let block = (LOGIT_BUDGET / n.max(1))
        .clamp(1, MAX_BLOCK)
        .min(vocab.max(1));
    log_sum_squared_probs_in_blocks(hidden, weight, block, softcap)
}

/// [`log_sum_squared_probs`] over vocabulary blocks of `block` rows of `weight`.
pub fn log_sum_squared_probs_in_blocks(
    hidden: Tensor<2>,
    weight: Tensor<2>,
    block: usize,
    softcap: Option<f64>,
) -> Tensor<1> {
    let (hidden, weight) = (hidden.detach(), weight.detach());
    let [n, _] = hidden.dims();
    let [vocab, _] = weight.dims();
    let logsumexp = |scale: f64| {
        let (mut maxes, mut sums) = (Vec::new(), Vec::new());
        for start in (0..vocab).step_by(block.max(1)) {
            let w =
                super::precision::full(weight.clone().narrow(0, start, block.min(vocab - start)));
            let logits =
                super::layers::soft_cap(hidden.clone().matmul(w.transpose()), softcap) * scale;
            let max = logits.clone().max_dim(1);
            sums.push((logits - max.clone()).exp().sum_dim(1));
            maxes.push(max);
        }
        let (maxes, sums) = (Tensor::cat(maxes, 1), Tensor::cat(sums, 1));
        let max = maxes.clone().max_dim(1);
        let total = (sums * (maxes - max.clone()).exp()).sum_dim(1);
        (total.log() + max).reshape([n])
    };
    logsumexp(2.0) - logsumexp(1.0) * 2.0
}

#[backend_extension(Autodiff, Cube: cfg(feature = "gpu"), Flex, Fusion)]
pub trait FusedBackend: Backend {
    // SwiGLU forward: out = g · σ(g) · u.
    #[fusion(default)]
    fn swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        let sigmoid = Self::sigmoid(gate.clone());
        Self::float_mul(Self::float_mul(gate, sigmoid), up)
    }

    // SwiGLU backward: du = ḡ · g·σ(g);  dg = ḡ · u · σ(g)·(1 + g·(1 − σ(g))). Returns (dg, du).
    #[fusion(default)]
    fn swiglu_backward(
        grad: FloatTensor<Self>,
        gate: FloatTensor<Self>,
        up: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let sigmoid = Self::sigmoid(gate.clone());
        let silu = Self::float_mul(gate.clone(), sigmoid.clone());
        let grad_up = Self::float_mul(grad.clone(), silu);
        let one_minus = Self::float_add_scalar(Self::float_neg(sigmoid.clone()), 1.0.into());
        let slope = Self::float_mul(
            sigmoid,
            Self::float_add_scalar(Self::float_mul(gate, one_minus), 1.0.into()),
        );
        let grad_gate = Self::float_mul(Self::float_mul(grad, up), slope);
        (grad_gate, grad_up)
    }

    // GeGLU forward: out = ½·g·(1 + tanh(k·(g + c·g³))) · u.
    #[fusion(default)]
    fn geglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        let (_, gelu) = gelu_tanh::<Self>(gate);
        Self::float_mul(gelu, up)
    }

    // GeGLU backward, t = tanh(k·(g + c·g³)): du = ḡ · gelu(g);
    // dg = ḡ · u · (½·(1 + t) + ½·g·(1 − t²)·k·(1 + 3c·g²)). Returns (dg, du).
    #[fusion(default)]
    fn geglu_backward(
        grad: FloatTensor<Self>,
        gate: FloatTensor<Self>,
        up: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (tanh, gelu) = gelu_tanh::<Self>(gate.clone());
        let grad_up = Self::float_mul(grad.clone(), gelu);
        let half_one_plus =
            Self::float_mul_scalar(Self::float_add_scalar(tanh.clone(), 1.0.into()), 0.5.into());
        let sech2 = Self::float_add_scalar(
            Self::float_neg(Self::float_mul(tanh.clone(), tanh)),
            1.0.into(),
        );
        let square = Self::float_mul(gate.clone(), gate.clone());
        let inner = Self::float_mul_scalar(
            Self::float_add_scalar(
                Self::float_mul_scalar(square, (3.0 * GELU_C).into()),
                1.0.into(),
            ),
            (0.5 * GELU_K).into(),
        );
        let slope = Self::float_add(
            half_one_plus,
            Self::float_mul(Self::float_mul(gate, sech2), inner),
        );
        let grad_gate = Self::float_mul(Self::float_mul(grad, up), slope);
        (grad_gate, grad_up)
    }

    // RMSNorm forward: r = (mean_last(x²) + eps)^(−½), out = x · r · w  (w as [1, …, 1, d]).
    #[fusion(default)]
    fn rms_norm(x: FloatTensor<Self>, weight: FloatTensor<Self>, eps: f64) -> FloatTensor<Self> {
        let rstd = rms_rstd::<Self>(x.clone(), eps);
        Self::float_mul(Self::float_mul(x, rstd), weight)
    }

    // RMSNorm backward: n = x·r; dw = Σ_rows ḡ·n; dn = ḡ·w; dx = r · (dn − n · mean_last(dn·n)).
    // Returns (dx, dw).
    #[fusion(default)]
    fn rms_norm_backward(
        grad: FloatTensor<Self>,
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        eps: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let shape = x.shape();
        let last = shape.num_dims() - 1;
        let dim = shape[last];
        let rstd = rms_rstd::<Self>(x.clone(), eps);
        let normed = Self::float_mul(x, rstd.clone());
        let rows = Shape::new([shape.num_elements() / dim.max(1), dim]);
        let grad_weight = Self::float_reshape(
            Self::float_sum_dim(
                Self::float_reshape(Self::float_mul(grad.clone(), normed.clone()), rows),
                0,
            ),
            weight.shape(),
        );
        let grad_normed = Self::float_mul(grad, weight);
        let projection =
            Self::float_mean_dim(Self::float_mul(grad_normed.clone(), normed.clone()), last);
        let grad_x = Self::float_mul(
            rstd,
            Self::float_sub(grad_normed, Self::float_mul(normed, projection)),
        );
        (grad_x, grad_weight)
    }

    // Frozen matmul forward: out = x · cast(W), W [in, out] in its stored precision.
    #[fusion(default)]
    fn frozen_matmul(x: FloatTensor<Self>, weight: FloatTensor<Self>) -> FloatTensor<Self> {
        let wide = widened::<Self>(weight, x.dtype().into());
        Self::float_matmul(x, wide)
    }

    // Frozen matmul backward: dx = ḡ · cast(W)ᵀ (W frozen: no gradient of its own).
    #[fusion(default)]
    fn frozen_matmul_backward(
        grad: FloatTensor<Self>,
        weight: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let wide = widened::<Self>(weight, grad.dtype().into());
        Self::float_matmul(grad, Self::float_swap_dims(wide, 0, 1))
    }

    // Quantized matmul forward: out = x · dq(W), dq(W)[i, j] = q[i, j] · s[i, ⌊j / block⌋].
    #[fusion(default)]
    fn quantized_matmul(x: FloatTensor<Self>, weight: QuantizedTensor<Self>) -> FloatTensor<Self> {
        let wide = Self::dequantize(weight, x.dtype().into());
        Self::float_matmul(x, wide)
    }

    // Quantized matmul backward: dx = ḡ · dq(W)ᵀ (W frozen: no gradient of its own).
    #[fusion(default)]
    fn quantized_matmul_backward(
        grad: FloatTensor<Self>,
        weight: QuantizedTensor<Self>,
    ) -> FloatTensor<Self> {
        let wide = Self::dequantize(weight, grad.dtype().into());
        Self::float_matmul(grad, Self::float_swap_dims(wide, 0, 1))
    }

    // Token log-probs forward: z = h·Wᵀ, out[i] = z[i, tᵢ] − logsumexp_j z[i, j]  ([n, 1]).
    // z[i, tᵢ] = h_i · W[tᵢ] (gathered rows); the logsumexp over vocabulary blocks b of z's
    // columns: with m_b = max z_b and s_b = Σ exp(z_b − m_b) per row, M = max_b m_b and
    // logsumexp = M + log Σ_b s_b · exp(m_b − M). Returns (out, logsumexp), both [n, 1]: the
    // backward reuses the logsumexp instead of another pass over the vocabulary. With a
    // softcap c every logit is c·tanh(z / c) first.
    #[fusion(default)]
    fn token_logps(
        hidden: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        targets: IntTensor<Self>,
        block: usize,
        softcap: Option<f64>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let picked = picked_logits::<Self>(hidden.clone(), weight.clone(), targets);
        let picked = capped::<Self>(picked, softcap).0;
        let lse = blocked_logsumexp::<Self>(hidden, weight, block, softcap);
        (Self::float_sub(picked, lse.clone()), lse)
    }

    // Token log-probs backward. With p = softmax(z) and dz = ḡ · (onehot(t) − p):
    // dh = ḡ · W[t] − Σ_b (ḡ·p_b)·W_b and dW_b = −(ḡ·p_b)ᵀ·h, then dW[tᵢ] += ḡᵢ · hᵢ.
    // p_b = exp(z_b − logsumexp) block by block, `lse` the forward's; dW (when `with_weight`;
    // else a [1, 1] zero) is assembled in one buffer. Returns (dh, dW).
    #[fusion(default)]
    #[allow(clippy::too_many_arguments)]
    fn token_logps_backward(
        grad: FloatTensor<Self>,
        hidden: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        targets: IntTensor<Self>,
        lse: FloatTensor<Self>,
        block: usize,
        with_weight: bool,
        softcap: Option<f64>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (vocab, width) = (weight.shape()[0], weight.shape()[1]);
        let n = hidden.shape()[0];
        // The one-hot part's ḡ, times the cap's slope at the picked logit.
        let picked_grad = match softcap {
            Some(_) => {
                let picked = picked_logits::<Self>(hidden.clone(), weight.clone(), targets.clone());
                let (_, slope) = capped::<Self>(picked, softcap);
                Self::float_mul(grad.clone(), slope.expect("a cap's slope"))
            }
            None => grad.clone(),
        };
        let rows = Self::int_reshape(targets, Shape::new([n]));
        let device = weight.device();
        let dtype: burn::tensor::FloatDType = hidden.dtype().into();
        let mut grad_hidden = Self::float_mul(
            widened::<Self>(Self::float_select(weight.clone(), 0, rows.clone()), dtype),
            picked_grad.clone(),
        );
        let mut grad_weight = Self::float_zeros(
            if with_weight {
                Shape::new([vocab, width])
            } else {
                Shape::new([1, 1])
            },
            &device,
            dtype,
        );
        for start in (0..vocab).step_by(block.max(1)) {
            let range = [
                Slice::from(start..(start + block).min(vocab)),
                Slice::from(..),
            ];
            let w = widened::<Self>(Self::float_slice(weight.clone(), &range), dtype);
            let logits = Self::float_matmul(hidden.clone(), Self::float_swap_dims(w.clone(), 0, 1));
            let (logits, slope) = capped::<Self>(logits, softcap);
            let probs = Self::float_exp(Self::float_sub(logits, lse.clone()));
            // −ḡ·p_b: the softmax part of dz for this block (times the cap's slope).
            let spread = Self::float_mul(probs, Self::float_neg(grad.clone()));
            let spread = match slope {
                Some(slope) => Self::float_mul(spread, slope),
                None => spread,
            };
            if with_weight {
                let part =
                    Self::float_matmul(Self::float_swap_dims(spread.clone(), 0, 1), hidden.clone());
                grad_weight = Self::float_slice_assign(grad_weight, &range, part);
            }
            grad_hidden = Self::float_add(grad_hidden, Self::float_matmul(spread, w));
        }
        if with_weight {
            let onehot = Self::float_mul(hidden, picked_grad);
            grad_weight =
                Self::float_select_assign(grad_weight, 0, rows, onehot, IndexingUpdateOp::Add);
        }
        (grad_hidden, grad_weight)
    }
}

/// `t` in `dtype` (itself when it is: no op is recorded on a fusing backend).
fn widened<B: Backend>(t: FloatTensor<B>, dtype: burn::tensor::FloatDType) -> FloatTensor<B> {
    if t.dtype() == dtype.into() {
        t
    } else {
        B::float_cast(t, dtype)
    }
}

/// `z[i, tᵢ] = hᵢ · W[tᵢ]`, as `[n, 1]`.
fn picked_logits<B: Backend>(
    hidden: FloatTensor<B>,
    weight: FloatTensor<B>,
    targets: IntTensor<B>,
) -> FloatTensor<B> {
    let n = hidden.shape()[0];
    let rows = B::float_select(weight, 0, B::int_reshape(targets, Shape::new([n])));
    let rows = widened::<B>(rows, hidden.dtype().into());
    B::float_sum_dim(B::float_mul(hidden, rows), 1)
}

/// `c·tanh(z / c)` under a softcap c, with its slope `1 − tanh²(z / c)`; `z` as it is without.
pub(super) fn capped<B: Backend>(
    logits: FloatTensor<B>,
    softcap: Option<f64>,
) -> (FloatTensor<B>, Option<FloatTensor<B>>) {
    let Some(cap) = softcap else {
        return (logits, None);
    };
    let tanh = B::float_tanh(B::float_div_scalar(logits, cap.into()));
    let slope = B::float_add_scalar(
        B::float_neg(B::float_mul(tanh.clone(), tanh.clone())),
        1.0.into(),
    );
    (B::float_mul_scalar(tanh, cap.into()), Some(slope))
}

/// `(tanh(k·(g + c·g³)), gelu_tanh(g))` of the tanh-approximated GELU.
fn gelu_tanh<B: Backend>(gate: FloatTensor<B>) -> (FloatTensor<B>, FloatTensor<B>) {
    let cube = B::float_mul(B::float_mul(gate.clone(), gate.clone()), gate.clone());
    let inner = B::float_mul_scalar(
        B::float_add(gate.clone(), B::float_mul_scalar(cube, GELU_C.into())),
        GELU_K.into(),
    );
    let tanh = B::float_tanh(inner);
    let gelu = B::float_mul(
        B::float_mul_scalar(gate, 0.5.into()),
        B::float_add_scalar(tanh.clone(), 1.0.into()),
    );
    (tanh, gelu)
}

/// `logsumexp_j z[i, j]` of the (capped) logits `z = h·Wᵀ` as `[n, 1]`, over blocks of `block`
/// rows of `weight`.
fn blocked_logsumexp<B: Backend>(
    hidden: FloatTensor<B>,
    weight: FloatTensor<B>,
    block: usize,
    softcap: Option<f64>,
) -> FloatTensor<B> {
    let vocab = weight.shape()[0];
    let (mut maxes, mut sums) = (Vec::new(), Vec::new());
    for start in (0..vocab).step_by(block.max(1)) {
        let range = [
            Slice::from(start..(start + block).min(vocab)),
            Slice::from(..),
        ];
        let w = widened::<B>(
            B::float_slice(weight.clone(), &range),
            hidden.dtype().into(),
        );
        let logits = B::float_matmul(hidden.clone(), B::float_swap_dims(w, 0, 1));
        let logits = capped::<B>(logits, softcap).0;
        let max = B::float_max_dim(logits.clone(), 1);
        sums.push(B::float_sum_dim(
            B::float_exp(B::float_sub(logits, max.clone())),
            1,
        ));
        maxes.push(max);
    }
    if maxes.len() == 1 {
        let (max, sum) = (maxes.pop().expect("one"), sums.pop().expect("one"));
        return B::float_add(B::float_log(sum), max);
    }
    let (maxes, sums) = (B::float_cat(maxes, 1), B::float_cat(sums, 1));
    let max = B::float_max_dim(maxes.clone(), 1);
    let scaled = B::float_mul(sums, B::float_exp(B::float_sub(maxes, max.clone())));
    B::float_add(B::float_log(B::float_sum_dim(scaled, 1)), max)
}

/// `(mean_last(x²) + eps)^(−½)`, keeping the last dimension as 1.
fn rms_rstd<B: Backend>(x: FloatTensor<B>, eps: f64) -> FloatTensor<B> {
    let last = x.shape().num_dims() - 1;
    let mean_square = B::float_mean_dim(B::float_mul(x.clone(), x), last);
    B::float_recip(B::float_sqrt(B::float_add_scalar(mean_square, eps.into())))
}

impl FusedBackend for Flex {}

#[cfg(feature = "gpu")]
impl FusedBackend for CubeBackend {}

/// Hand each tracked input (a parent node: `Some`) its gradient, in a backward step of backend `B`.
macro_rules! register {
    ($grads:expr, $B:ty, $( ($node:expr, $grad:expr) ),+ $(,)?) => {
        $( if let Some(node) = $node {
            $grads.register::<$B>(node.id, $grad);
        } )+
    };
}
pub(crate) use register;

#[derive(Debug)]
struct SwigluBackward;

impl<B: FusedBackend> Backward<B, 2> for SwigluBackward {
    type State = (FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_gate, node_up] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (gate, up) = ops.state;
        let (grad_gate, grad_up) = B::swiglu_backward(grad, gate, up);
        register!(grads, B, (node_gate, grad_gate), (node_up, grad_up));
    }
}

#[derive(Debug)]
struct GegluBackward;

impl<B: FusedBackend> Backward<B, 2> for GegluBackward {
    type State = (FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_gate, node_up] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (gate, up) = ops.state;
        let (grad_gate, grad_up) = B::geglu_backward(grad, gate, up);
        register!(grads, B, (node_gate, grad_gate), (node_up, grad_up));
    }
}

#[derive(Debug)]
struct RmsNormBackward;

impl<B: FusedBackend> Backward<B, 2> for RmsNormBackward {
    type State = (FloatTensor<B>, FloatTensor<B>, f64);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_weight] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (x, weight, eps) = ops.state;
        let (grad_x, grad_weight) = B::rms_norm_backward(grad, x, weight, eps);
        register!(grads, B, (node_x, grad_x), (node_weight, grad_weight));
    }
}

#[derive(Debug)]
struct FrozenMatmulBackward;

impl<B: FusedBackend> Backward<B, 1> for FrozenMatmulBackward {
    /// The weight as stored (half precision).
    type State = FloatTensor<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let grad_x = B::frozen_matmul_backward(grad, ops.state);
        register!(grads, B, (node_x, grad_x));
    }
}

#[derive(Debug)]
struct QuantizedMatmulBackward;

impl<B: FusedBackend> Backward<B, 1> for QuantizedMatmulBackward {
    /// The packed weight.
    type State = QuantizedTensor<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let grad_x = B::quantized_matmul_backward(grad, ops.state);
        register!(grads, B, (node_x, grad_x));
    }
}

#[derive(Debug)]
struct TokenLogpsBackward;

impl<B: FusedBackend> Backward<B, 2> for TokenLogpsBackward {
    /// (hidden, weight, targets, the forward's logsumexp `[n, 1]`, block, softcap).
    type State = (
        FloatTensor<B>,
        FloatTensor<B>,
        IntTensor<B>,
        FloatTensor<B>,
        usize,
        Option<f64>,
    );

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_hidden, node_weight] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (hidden, weight, targets, lse, block, softcap) = ops.state;
        // A frozen output projection (LoRA) needs no [vocab, d] gradient: skip its matmuls.
        let with_weight = node_weight.is_some();
        let (grad_hidden, grad_weight) = B::token_logps_backward(
            grad,
            hidden,
            weight,
            targets,
            lse,
            block,
            with_weight,
            softcap,
        );
        register!(
            grads,
            B,
            (node_hidden, grad_hidden),
            (node_weight, grad_weight)
        );
    }
}

impl<B: FusedBackend, C: CheckpointStrategy> FusedBackend for Autodiff<B, C> {
    fn swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        let (gate, guard_gate) = gate.into_parts();
        let (up, guard_up) = up.into_parts();
        match SwigluBackward
            .prepare::<C>([guard_gate, guard_up])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let out = B::swiglu(gate.clone(), up.clone());
                prep.finish((gate, up), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::swiglu(gate, up)),
        }
    }

    fn swiglu_backward(
        grad: FloatTensor<Self>,
        gate: FloatTensor<Self>,
        up: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        // No second-order graph: constants.
        let (dg, du) = B::swiglu_backward(
            grad.into_primitive(),
            gate.into_primitive(),
            up.into_primitive(),
        );
        (Self::from_inner(dg), Self::from_inner(du))
    }

    fn geglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        let (gate, guard_gate) = gate.into_parts();
        let (up, guard_up) = up.into_parts();
        match GegluBackward
            .prepare::<C>([guard_gate, guard_up])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let out = B::geglu(gate.clone(), up.clone());
                prep.finish((gate, up), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::geglu(gate, up)),
        }
    }

    fn geglu_backward(
        grad: FloatTensor<Self>,
        gate: FloatTensor<Self>,
        up: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        // No second-order graph: constants.
        let (dg, du) = B::geglu_backward(
            grad.into_primitive(),
            gate.into_primitive(),
            up.into_primitive(),
        );
        (Self::from_inner(dg), Self::from_inner(du))
    }

    fn rms_norm(x: FloatTensor<Self>, weight: FloatTensor<Self>, eps: f64) -> FloatTensor<Self> {
        let (x, guard_x) = x.into_parts();
        let (weight, guard_weight) = weight.into_parts();
        match RmsNormBackward
            .prepare::<C>([guard_x, guard_weight])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let out = B::rms_norm(x.clone(), weight.clone(), eps);
                prep.finish((x, weight, eps), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::rms_norm(x, weight, eps)),
        }
    }

    fn rms_norm_backward(
        grad: FloatTensor<Self>,
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        eps: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (dx, dw) = B::rms_norm_backward(
            grad.into_primitive(),
            x.into_primitive(),
            weight.into_primitive(),
            eps,
        );
        (Self::from_inner(dx), Self::from_inner(dw))
    }

    fn frozen_matmul(x: FloatTensor<Self>, weight: FloatTensor<Self>) -> FloatTensor<Self> {
        let (x, guard_x) = x.into_parts();
        // Frozen: the weight is a constant of the graph.
        let weight = weight.into_primitive();
        match FrozenMatmulBackward
            .prepare::<C>([guard_x])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let out = B::frozen_matmul(x, weight.clone());
                prep.finish(weight, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::frozen_matmul(x, weight)),
        }
    }

    fn frozen_matmul_backward(
        grad: FloatTensor<Self>,
        weight: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        Self::from_inner(B::frozen_matmul_backward(
            grad.into_primitive(),
            weight.into_primitive(),
        ))
    }

    fn quantized_matmul(x: FloatTensor<Self>, weight: QuantizedTensor<Self>) -> FloatTensor<Self> {
        let (x, guard_x) = x.into_parts();
        // Frozen: the packed weight is a constant of the graph.
        match QuantizedMatmulBackward
            .prepare::<C>([guard_x])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let out = B::quantized_matmul(x, weight.clone());
                prep.finish(weight, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::quantized_matmul(x, weight)),
        }
    }

    fn quantized_matmul_backward(
        grad: FloatTensor<Self>,
        weight: QuantizedTensor<Self>,
    ) -> FloatTensor<Self> {
        Self::from_inner(B::quantized_matmul_backward(grad.into_primitive(), weight))
    }

    fn token_logps(
        hidden: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        targets: IntTensor<Self>,
        block: usize,
        softcap: Option<f64>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (hidden, guard_hidden) = hidden.into_parts();
        let (weight, guard_weight) = weight.into_parts();
        match TokenLogpsBackward
            .prepare::<C>([guard_hidden, guard_weight])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (out, lse) = B::token_logps(
                    hidden.clone(),
                    weight.clone(),
                    targets.clone(),
                    block,
                    softcap,
                );
                let state = (hidden, weight, targets, lse.clone(), block, softcap);
                (prep.finish(state, out), Self::from_inner(lse))
            }
            OpsKind::UnTracked(prep) => {
                let (out, lse) = B::token_logps(hidden, weight, targets, block, softcap);
                (prep.finish(out), Self::from_inner(lse))
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn token_logps_backward(
        grad: FloatTensor<Self>,
        hidden: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        targets: IntTensor<Self>,
        lse: FloatTensor<Self>,
        block: usize,
        with_weight: bool,
        softcap: Option<f64>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (dh, dw) = B::token_logps_backward(
            grad.into_primitive(),
            hidden.into_primitive(),
            weight.into_primitive(),
            targets,
            lse.into_primitive(),
            block,
            with_weight,
            softcap,
        );
        (Self::from_inner(dh), Self::from_inner(dw))
    }
}
