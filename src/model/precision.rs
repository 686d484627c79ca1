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
//!
//! QLoRA's other half, `--quantize-base q8|q4`: the decoder layers' projections are stored as 8-
//! or 4-bit integers in blocks of 32 (32 outputs of one input row of the `[in, out]` matrix) with
//! one f32 scale per block — symmetric absmax quantization, as bitsandbytes' blockwise int8 and
//! llama.cpp's Q8_0/Q4_0 — through burn's quantized tensors, and dequantized where they are used
//! by [`frozen_matmul`]'s quantized node, which likewise keeps only the packed weight for
//! backward. Embeddings and the output head keep `--base-dtype` (QLoRA leaves them unquantized
//! too). On wgpu the values are
//! packed into u32 words (4 or 8 a word); burn's CPU backend keeps one byte a value, so there 4-bit
//! rounds to 4 bits but takes what 8-bit takes.

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::quantization::{QuantScheme, QuantStore, QuantValue, ScaleDtype};
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

/// Integer storage of the frozen projections (`--quantize-base`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Quantize {
    /// 8-bit integers (±127) per block of 32, one f32 scale each.
    Q8,
    /// 4-bit integers (−8..7, the block's absmax at ±7.5) per block of 32, one f32 scale each.
    Q4,
}

impl Quantize {
    pub fn name(self) -> &'static str {
        match self {
            Quantize::Q8 => "q8",
            Quantize::Q4 => "q4",
        }
    }

    fn value(self) -> QuantValue {
        match self {
            Quantize::Q8 => QuantValue::Q8S,
            Quantize::Q4 => QuantValue::Q4F,
        }
    }

    /// Bytes a quantized element takes on `device`, its block's scale included: the values
    /// (packed in u32 words on wgpu, a byte each on the CPU backend) and an f32 per block.
    pub fn bytes_per_element(self, device: &Device) -> f64 {
        let scale = 4.0 / BLOCK as f64;
        let cpu = device.clone().without_autodiff() == Device::flex();
        match (self, cpu) {
            (Quantize::Q4, false) => 0.5 + scale,
            _ => 1.0 + scale,
        }
    }
}

/// Values per quantization block (along a matrix's output dimension).
pub const BLOCK: usize = 32;

/// How a run stores the frozen base: matrices in a half type (`None`: f32), and the decoder
/// layers' projections quantized.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Storage {
    pub half: Option<FloatDType>,
    pub quantize: Option<Quantize>,
}

impl Storage {
    pub fn half(dtype: FloatDType) -> Self {
        Self {
            half: Some(dtype),
            quantize: None,
        }
    }

    /// Whether anything is stored other than as loaded (f32).
    pub fn changes(&self) -> bool {
        self.half.is_some() || self.quantize.is_some()
    }

    /// A matrix at `path` (burn's module path) as this storage keeps it: quantized when it is a
    /// projection inside a decoder layer (and its rows split into whole blocks), else in the half
    /// type. Vectors (norms, biases) stay as they are.
    pub fn store<const D: usize>(&self, path: &str, tensor: Tensor<D>) -> Tensor<D> {
        if D != 2 {
            return tensor;
        }
        if let Some(quantize) = self.quantize
            && is_projection(path)
            && let Some(quantized) = quantized(tensor.clone(), quantize)
        {
            return quantized;
        }
        match self.half {
            Some(dtype) if !is_half(tensor.dtype()) => tensor.cast(dtype),
            _ => tensor,
        }
    }
}

/// A decoder layer's projection (`model.layers.3.self_attn.q_proj.weight`), by burn's module path.
fn is_projection(path: &str) -> bool {
    path.contains("layers.") && path.ends_with("weight") && !path.contains("norm")
}

/// `matrix [in, out]` quantized symmetrically in blocks of [`BLOCK`] along `out` (a smaller
/// power of two down to 8 where `out` is not a multiple of 32); `None` when none divides `out`.
fn quantized<const D: usize>(matrix: Tensor<D>, quantize: Quantize) -> Option<Tensor<D>> {
    let columns = matrix.dims()[D - 1];
    let block = [BLOCK, 16, 8]
        .into_iter()
        .find(|b| columns.is_multiple_of(*b))?;
    let scheme = QuantScheme::default()
        .with_value(quantize.value())
        .with_store(QuantStore::PackedU32(0))
        .per_block([block as u8], ScaleDtype::F32);
    Some(matrix.detach().quantize_dynamic(&scheme))
}

/// Bytes per element of `dtype` (f32 when `None`).
pub fn bytes_per_element(dtype: Option<FloatDType>) -> usize {
    match dtype {
        Some(FloatDType::F16 | FloatDType::BF16) => 2,
        Some(FloatDType::F64) => 8,
        _ => 4,
    }
}

/// `module` with its matrix parameters (embeddings, projections, the output head) stored as
/// `storage` says ([`Storage::store`]) and frozen; vectors (norms, biases) stay as they are. The
/// values are rounded once, here; every use widens them back to f32.
pub fn store_matrices<M: Module>(module: M, storage: Storage) -> M {
    module.map(&mut Store {
        storage: Some(storage),
        path: Vec::new(),
    })
}

/// `module` with every parameter in f32 again (half values widen exactly; quantized ones are
/// their dequantized values), for merging adapters into it and for export.
pub fn widen<M: Module>(module: M) -> M {
    module.map(&mut Store {
        storage: None,
        path: Vec::new(),
    })
}

/// Whether any parameter of `module` is stored quantized.
pub fn has_quantized<M: Module>(module: &M) -> bool {
    struct Find(bool);
    impl burn::module::ModuleVisitor for Find {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0 |= is_quantized(param.dtype());
        }
    }
    let mut find = Find(false);
    module.visit(&mut find);
    find.0
}

fn is_quantized(dtype: DType) -> bool {
    matches!(dtype, DType::QFloat(_))
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

/// Stores matrices as `storage` says (`Some`), or every half or quantized parameter back in f32
/// (`None`).
struct Store {
    storage: Option<Storage>,
    path: Vec<String>,
}

impl ModuleMapper for Store {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let stored = is_half(param.dtype()) || is_quantized(param.dtype());
        match self.storage {
            // A fresh, untracked tensor: the rounded copy replaces the f32 one (which is freed),
            // and no gradient flows to it.
            Some(storage) if D == 2 && !stored => {
                let path = self.path.join(".");
                param.map(|t| storage.store(&path, t.detach()))
            }
            None if stored => param.map(|t| full(t.detach())),
            _ => param,
        }
    }
}

/// `t` as f32 (itself when it is; dequantized when quantized).
pub fn full<const D: usize>(t: Tensor<D>) -> Tensor<D> {
    match t.dtype() {
        DType::F32 => t,
        DType::QFloat(_) => t.dequantize(),
        _ => t.cast(FloatDType::F32),
    }
}

/// `x · W` for `x [.., in]` and `weight [in, out]`. A half-precision `weight` (frozen) is widened
/// inside one autodiff node that keeps only the half weight for backward
/// ([`super::fused::FusedBackend::frozen_matmul`]); an f32 one is a plain matmul.
pub fn frozen_matmul<const D: usize>(x: Tensor<D>, weight: Tensor<2>) -> Tensor<D> {
    if weight.dtype() == x.dtype() {
        return x.matmul(weight.unsqueeze());
    }
    let dims = x.dims();
    let [d_in, d_out] = weight.dims();
    let rows = dims[..D - 1].iter().product::<usize>();
    let x = x.reshape([rows, d_in]);
    let out = if is_quantized(weight.dtype()) {
        super::fused::quantized_matmul(x, weight)
    } else {
        debug_assert!(
            !weight.is_require_grad(),
            "half-precision weights are frozen"
        );
        super::fused::frozen_matmul(x, weight)
    };
    let mut shape = dims;
    shape[D - 1] = d_out;
    out.reshape(shape)
}
