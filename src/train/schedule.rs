//! Learning-rate schedule and global-norm gradient clipping.
//!
//! The schedule is a pure function of the step, so a resumed run needs no scheduler state.
//! Clipping is by the global L2 norm over all parameters (as `torch.nn.utils.clip_grad_norm_` and
//! HF's `max_grad_norm`), not per parameter.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Decay {
    /// Linear from the peak to 0 at the last step.
    Linear,
    /// Half a cosine from the peak to 0 at the last step.
    Cosine,
    /// Stay at the peak.
    Constant,
}

/// Linear warmup from 0 over `warmup_steps`, then `decay` to 0 at `total_steps`.
pub fn learning_rate(
    step: usize,
    peak: f64,
    warmup_steps: usize,
    total_steps: usize,
    decay: Decay,
) -> f64 {
    // Steps are 0-based; step s applies the rate of "s + 1 updates done" as HF's schedulers do.
    let progress_step = step as f64 + 1.0;
    if step < warmup_steps {
        return peak * progress_step / warmup_steps as f64;
    }
    let decay_steps = total_steps.saturating_sub(warmup_steps).max(1) as f64;
    let t = ((step - warmup_steps) as f64 / decay_steps).clamp(0.0, 1.0);
    match decay {
        Decay::Constant => peak,
        Decay::Linear => peak * (1.0 - t),
        Decay::Cosine => peak * 0.5 * (1.0 + (std::f64::consts::PI * t).cos()),
    }
}

/// Σ‖g‖² over every parameter that has a gradient (read back to the host: one number).
struct SquaredNorm<'a> {
    grads: &'a GradientsParams,
    parts: Vec<Tensor<1>>,
}

/// Elements squared at once by [`SquaredNorm`]: a large gradient (the `[vocab, d]` embeddings')
/// is squared a slice of rows at a time, not copied whole.
const SQUARE_CHUNK: usize = 1 << 20;

impl ModuleVisitor for SquaredNorm<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let Some(grad) = self.grads.get::<D>(param.id) else {
            return;
        };
        let dims = grad.dims();
        let rows = dims.first().copied().unwrap_or(1);
        let per_row = dims.iter().skip(1).product::<usize>().max(1);
        let step = (SQUARE_CHUNK / per_row).max(1);
        if D == 0 || rows <= step {
            self.parts.push(grad.powi_scalar(2).sum().reshape([1]));
            return;
        }
        for start in (0..rows).step_by(step) {
            let part = grad.clone().narrow(0, start, step.min(rows - start));
            self.parts.push(part.powi_scalar(2).sum().reshape([1]));
        }
    }
}

struct Scale<'a> {
    grads: &'a mut GradientsParams,
    factor: f64,
}

impl ModuleVisitor for Scale<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(grad) = self.grads.remove::<D>(param.id) {
            self.grads.register::<D>(param.id, grad * self.factor);
        }
    }
}

/// The squared global gradient norm, `[1]` on the device (`None`: no gradients).
pub fn squared_grad_norm<M: Module>(module: &M, grads: &GradientsParams) -> Option<Tensor<1>> {
    let mut visitor = SquaredNorm {
        grads,
        parts: Vec::new(),
    };
    module.visit(&mut visitor);
    (!visitor.parts.is_empty()).then(|| Tensor::cat(visitor.parts, 0).sum())
}

/// Scale every gradient by `factor`.
pub fn scale_grads<M: Module>(module: &M, grads: &mut GradientsParams, factor: f64) {
    module.visit(&mut Scale { grads, factor });
}
