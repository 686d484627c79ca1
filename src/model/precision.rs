//! Frozen weights in half precision (`--base-dtype`): with LoRA, the base model's matrices (and,
//! in full fine-tuning, the frozen reference's) are stored as f16 or bf16, while adapters,
//! optimizer state, activations and the loss stay f32 — the mixed precision of QLoRA's "compute
//! dtype" (Dettmers et al. 2023), without a CUDA kernel: each frozen matrix is widened to f32
//! where it is used ([`frozen_matmul`], the embedding lookup, the log-prob op's vocabulary
//! blocks) and dropped after. Master weights are never half: a trained matrix stays f32.
//!
//! Under autodiff a plain `x · cast(W)` would keep the widened copy of every layer's weight alive
//! until backward, undoing the saving; [`frozen_matmul`] is one node that keeps only the stored
//! half weight and widens it again in backward (`dx = dy · cast(W)ᵀ`).
//!
//! Which devices hold what: burn's CPU backend stores f16 and bf16 (and computes in f32 after our
//! cast); wgpu stores f16 only on adapters with `shader-f16` (WGSL has no bf16).

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{DType, Device, FloatDType, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How the frozen base weights are stored (`--base-dtype`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BaseDtype {
    /// As loaded: f32.
    #[default]
    F32,
    /// IEEE half (10-bit mantissa, range ±65,504).
    F16,
    /// bfloat16 (7-bit mantissa, f32's range): CPU backend only.
    Bf16,
    /// f16 where the device stores it, else f32.
    Auto,
}

impl BaseDtype {
    pub fn name(self) -> &'static str {
        match self {
            BaseDtype::F32 => "f32",
            BaseDtype::F16 => "f16",
            BaseDtype::Bf16 => "bf16",
            BaseDtype::Auto => "auto",
        }
    }

    /// The storage type on `device` (`None`: f32, nothing to do), or why the device cannot.
    pub fn resolve(self, device: &Device) -> Result<Option<FloatDType>> {
        let supports = |dtype: FloatDType| device.supports_dtype(dtype);
        match self {
            BaseDtype::F32 => Ok(None),
            BaseDtype::Auto => Ok(supports(FloatDType::F16).then_some(FloatDType::F16)),
            BaseDtype::F16 if supports(FloatDType::F16) => Ok(Some(FloatDType::F16)),
            BaseDtype::F16 => Err(Error::input(
                "--base-dtype f16: this GPU adapter cannot compute in f16 (no shader-f16); use \
                 --base-dtype auto or f32, or --backend cpu",
            )),
            BaseDtype::Bf16 if supports(FloatDType::BF16) => Ok(Some(FloatDType::BF16)),
            BaseDtype::Bf16 => Err(Error::input(
                "--base-dtype bf16: WGSL has no bf16, so wgpu cannot store it; use --base-dtype \
                 f16 on the GPU or bf16 with --backend cpu",
            )),
        }
    }
}

/// Bytes per element of `dtype` (f32 when `None`).
pub fn bytes_per_element(dtype: Option<FloatDType>) -> usize {
    match dtype {
        Some(FloatDType::F16 | FloatDType::BF16) => 2,
        Some(FloatDType::F64) => 8,
        _ => 4,
    }
}

/// `module` with every matrix parameter (embeddings, projections, the output head) stored as
/// `dtype` and frozen; vectors (norms, biases) stay as they are. The values are rounded once,
/// here; every use widens them back to f32.
pub fn store_matrices<M: Module>(module: M, dtype: FloatDType) -> M {
    module.map(&mut Store { dtype: Some(dtype) })
}

/// `module` with every parameter in f32 again (exact: half values widen without rounding), for
/// merging adapters into it and for export.
pub fn widen<M: Module>(module: M) -> M {
    module.map(&mut Store { dtype: None })
}

/// Whether any parameter of `module` is stored in half precision.
pub fn has_half<M: Module>(module: &M) -> bool {
    struct Find(bool);
    impl burn::module::ModuleVisitor for Find {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0 |= is_half(param.dtype());
        }
    }
    let mut find = Find(false);
    module.visit(&mut find);
    find.0
}

fn is_half(dtype: DType) -> bool {
    matches!(dtype, DType::F16 | DType::BF16)
}

/// Casts matrices to `dtype` (`Some`), or every half parameter back to f32 (`None`).
struct Store {
    dtype: Option<FloatDType>,
}

impl ModuleMapper for Store {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        match self.dtype {
            // A fresh, untracked tensor: the rounded copy replaces the f32 one (which is freed),
            // and no gradient flows to it.
            Some(dtype) if D == 2 && !is_half(param.dtype()) => {
                param.map(|t| t.detach().cast(dtype))
            }
            None if is_half(param.dtype()) => param.map(|t| t.detach().cast(FloatDType::F32)),
            _ => param,
        }
    }
}

/// `t` as f32 (itself when it is).
pub fn full<const D: usize>(t: Tensor<D>) -> Tensor<D> {
    if t.dtype() == DType::F32 {
        t
    } else {
        t.cast(FloatDType::F32)
    }
}

/// `x · W` for `x [.., in]` and `weight [in, out]`. A half-precision `weight` (frozen) is widened
/// inside one autodiff node that keeps only the half weight for backward
/// ([`super::fused::FusedBackend::frozen_matmul`]); an f32 one is a plain matmul.
pub fn frozen_matmul<const D: usize>(x: Tensor<D>, weight: Tensor<2>) -> Tensor<D> {
    if weight.dtype() == x.dtype() {
        return x.matmul(weight.unsqueeze());
    }
    debug_assert!(
        !weight.is_require_grad(),
        "half-precision weights are frozen"
    );
    let dims = x.dims();
    let [d_in, d_out] = weight.dims();
    let rows = dims[..D - 1].iter().product::<usize>();
    let out = super::fused::frozen_matmul(x.reshape([rows, d_in]), weight);
    let mut shape = dims;
    shape[D - 1] = d_out;
    out.reshape(shape)
}
