//! Scaled dot-product attention as one differentiable op that keeps no `[rows, keys]` tensor for
//! the backward pass. Composed of plain tensor ops, autodiff records every intermediate of the
//! softmax — scores, scaled, masked, shifted, exponentiated, normalized: about five
//! `[heads, rows, keys]` tensors per layer, which on a DPO step of two ~500-token pairs of
//! SmolLM2 is most of the step's memory. Here the forward runs the backend's own fused attention
//! (burn-flex's tiled online-softmax kernel on the CPU) and saves only its inputs and output; the
//! backward recomputes the probabilities from q and k, as FlashAttention does (Dao et al. 2022).
//!
//! Shapes: `q [b, h, rows, d]`, `k`, `v [b, h, keys, d]`, `mask [1 | b, 1 | h, rows, keys]` (true =
//! hidden; every row must see at least one key), `out [b, h, rows, d]`.
//!
//! Composed of the backend's own ops (its attention, matmul, exp, reductions), so it runs on every
//! backend burn dispatches to; only the autodiff node is ours.

use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::ops::AttentionModuleOptions;
use burn::backend::tensor::{BoolTensor, FloatTensor};
#[cfg(feature = "gpu")]
use burn::backend::wgpu::CubeBackend;
use burn::backend::{AutodiffBackend, Backend, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::tensor::{Bool, Tensor};

/// Masked scores are filled with this before the softmax (finite, so a row's maximum is real).
const HIDDEN: f32 = -1.0e9;

/// `softmax(s, hidden where mask)·v` with `s = scale·q·kᵀ` (Gemma 2, `softcap` c: `s =
/// c·tanh(scale·q·kᵀ / c)`); differentiable in q, k and v, with the memory of the backend's fused
/// forward (see the module docs).
pub fn attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    mask: Tensor<4, Bool>,
    scale: f64,
    softcap: Option<f64>,
) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as FusedAttentionBackend>::fused_attention(
        q.into_dispatch(),
        k.into_dispatch(),
        v.into_dispatch(),
        mask.into_dispatch(),
        Settings { scale, softcap },
    ))
}

/// The scale on the scores and their soft cap.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Settings {
    pub scale: f64,
    pub softcap: Option<f64>,
}

/// The op as a backend extension: the default bodies (the backend's own ops) serve every
/// execution backend; autodiff adds the recomputing backward below.
#[backend_extension(Autodiff, Cube: cfg(feature = "gpu"), Flex, Fusion)]
pub trait FusedAttentionBackend: Backend {
    // Forward: out = softmax(s)·v, s = scale·q·kᵀ, masked.
    #[fusion(default)]
    fn fused_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        mask: BoolTensor<Self>,
        settings: Settings,
    ) -> FloatTensor<Self> {
        let options = AttentionModuleOptions {
            scale: Some(settings.scale),
            softcap: settings.softcap,
            is_causal: false,
        };
        let shape = scores_shape(&q, &k);
        let mask = Self::bool_expand(mask, shape);
        Self::attention(q, k, v, Some(mask), None, options)
    }

    // Backward: p = softmax(s) recomputed; dv = pᵀ·g; dp = g·vᵀ; δ = rowsum(g ∘ out);
    // ds = p ∘ (dp − δ), times 1 − tanh²(scale·q·kᵀ / c) under a softcap c; dq = scale·ds·k;
    // dk = scale·dsᵀ·q. Returns (dq, dk, dv).
    #[fusion(default)]
    #[allow(clippy::too_many_arguments)]
    fn fused_attention_backward(
        grad: FloatTensor<Self>,
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        mask: BoolTensor<Self>,
        out: FloatTensor<Self>,
        settings: Settings,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let scale = settings.scale;
        let shape = scores_shape(&q, &k);
        let scores = Self::float_mul_scalar(
            Self::float_matmul(q.clone(), Self::float_swap_dims(k.clone(), 2, 3)),
            scale.into(),
        );
        let (scores, slope) = super::fused::capped::<Self>(scores, settings.softcap);
        let scores = Self::float_mask_fill(scores, Self::bool_expand(mask, shape), HIDDEN.into());
        let max = Self::float_max_dim(scores.clone(), 3);
        let exp = Self::float_exp(Self::float_sub(scores, max));
        let sum = Self::float_sum_dim(exp.clone(), 3);
        let probs = Self::float_div(exp, sum);
        let grad_v = Self::float_matmul(Self::float_swap_dims(probs.clone(), 2, 3), grad.clone());
        let grad_probs = Self::float_matmul(grad.clone(), Self::float_swap_dims(v, 2, 3));
        let delta = Self::float_sum_dim(Self::float_mul(grad, out), 3);
        let grad_scores = Self::float_mul(probs, Self::float_sub(grad_probs, delta));
        let grad_scores = match slope {
            Some(slope) => Self::float_mul(grad_scores, slope),
            None => grad_scores,
        };
        let grad_scores = Self::float_mul_scalar(grad_scores, scale.into());
        let grad_q = Self::float_matmul(grad_scores.clone(), k);
        let grad_k = Self::float_matmul(Self::float_swap_dims(grad_scores, 2, 3), q);
        (grad_q, grad_k, grad_v)
    }
}

/// `[b, h, rows, keys]` of `q [b, h, rows, d]` against `k [b, h, keys, d]`.
fn scores_shape<T: TensorMetadata>(q: &T, k: &T) -> burn::tensor::Shape {
    let (q, k) = (q.shape(), k.shape());
    burn::tensor::Shape::new([q[0], q[1], q[2], k[2]])
}

impl FusedAttentionBackend for Flex {}

#[cfg(feature = "gpu")]
impl FusedAttentionBackend for CubeBackend {}

/// What the backward needs: the inputs, the mask, the forward's output and the settings.
#[derive(Debug, Clone)]
struct AttentionState<B: Backend> {
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    mask: BoolTensor<B>,
    out: FloatTensor<B>,
    settings: Settings,
}

#[derive(Debug)]
struct FusedAttentionBackward;

impl<B: FusedAttentionBackend> Backward<B, 3> for FusedAttentionBackward {
    type State = AttentionState<B>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_q, node_k, node_v] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let s = ops.state;
        let (grad_q, grad_k, grad_v) =
            B::fused_attention_backward(grad, s.q, s.k, s.v, s.mask, s.out, s.settings);
        super::fused::register!(
            grads,
            B,
            (node_q, grad_q),
            (node_k, grad_k),
            (node_v, grad_v)
        );
    }
}

impl<B: FusedAttentionBackend, C: CheckpointStrategy> FusedAttentionBackend for Autodiff<B, C> {
    fn fused_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        mask: BoolTensor<Self>,
        settings: Settings,
    ) -> FloatTensor<Self> {
        let (q, guard_q) = q.into_parts();
        let (k, guard_k) = k.into_parts();
        let (v, guard_v) = v.into_parts();
        match FusedAttentionBackward
            .prepare::<C>([guard_q, guard_k, guard_v])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let out =
                    B::fused_attention(q.clone(), k.clone(), v.clone(), mask.clone(), settings);
                let state = AttentionState {
                    q,
                    k,
                    v,
                    mask,
                    out: out.clone(),
                    settings,
                };
                prep.finish(state, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_attention(q, k, v, mask, settings)),
        }
    }

    fn fused_attention_backward(
        grad: FloatTensor<Self>,
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        mask: BoolTensor<Self>,
        out: FloatTensor<Self>,
        settings: Settings,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        // Only reached when someone differentiates the gradient itself; no second-order graph is
        // recorded, so the results are constants.
        let (dq, dk, dv) = B::fused_attention_backward(
            grad.into_primitive(),
            q.into_primitive(),
            k.into_primitive(),
            v.into_primitive(),
            mask,
            out.into_primitive(),
            settings,
        );
        (
            <Self as AutodiffBackend>::from_inner(dq),
            <Self as AutodiffBackend>::from_inner(dk),
            <Self as AutodiffBackend>::from_inner(dv),
        )
    }
}
