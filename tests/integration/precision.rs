//! Frozen weights in half precision (`--base-dtype`): the frozen matmul node against the
//! widened plain matmul, and SmolLM2's logits with its matrices stored in f16 and bf16 against
//! transformers' f32 logits (the tolerance each precision is held to).

use burn::tensor::{Distribution, FloatDType, Tensor};
use fairtune::model::precision::{self, frozen_matmul};
use fairtune::model::{ModelSource, load_llama_stored};

use crate::common::{self, to_vec};
use crate::gguf::{probe_smollm2, smollm2};

fn max_difference(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Devices and the half types each stores.
fn devices() -> Vec<(&'static str, burn::tensor::Device, Vec<FloatDType>)> {
    let mut list = vec![(
        "cpu",
        common::cpu(),
        vec![FloatDType::F16, FloatDType::BF16],
    )];
    if let Some(wgpu) = common::wgpu() {
        if wgpu.device.supports_dtype(FloatDType::F16) {
            list.push(("wgpu", wgpu.device, vec![FloatDType::F16]));
        } else {
            eprintln!("note: this wgpu adapter has no shader-f16; half storage checked on the CPU");
        }
    }
    list
}

/// One node that keeps the half weight gives the widened matmul's values and input gradient.
#[test]
fn frozen_matmul_matches_the_widened_matmul() {
    for (name, plain, dtypes) in devices() {
        let device = plain.autodiff();
        device.seed(3);
        let normal = Distribution::Normal(0.0, 1.0);
        let w = Tensor::<2>::random([16, 8], normal, &device);
        let probe = Tensor::<3>::random([3, 4, 8], normal, &device);
        for dtype in dtypes {
            let half = w.clone().cast(dtype);
            let x = Tensor::<3>::random([3, 4, 16], normal, &device).require_grad();
            let fused = frozen_matmul(x.clone(), half.clone());
            let composed = x
                .clone()
                .matmul(half.clone().cast(FloatDType::F32).unsqueeze());
            let difference = max_difference(&to_vec(fused.clone()), &to_vec(composed.clone()));
            assert!(
                difference < 1e-5,
                "{name} {dtype:?}: values differ by {difference}"
            );
            let gf = (fused * probe.clone()).sum().backward();
            let gc = (composed * probe.clone()).sum().backward();
            let (gf, gc) = (x.grad(&gf).unwrap(), x.grad(&gc).unwrap());
            let difference = max_difference(&to_vec(gf), &to_vec(gc));
            assert!(
                difference < 1e-5,
                "{name} {dtype:?}: dx differs by {difference}"
            );
            // An f32 weight is the plain matmul.
            let same = frozen_matmul(x.clone(), w.clone());
            assert_eq!(
                to_vec(same),
                to_vec(x.clone().matmul(w.clone().unsqueeze()))
            );
        }
    }
}

/// SmolLM2 with its matrices stored in f16 / bf16 (norms in f32, everything computed in f32)
/// stays within a stated distance of transformers' f32 logits: f16 ≤ 0.05, bf16 ≤ 0.25 (seen:
/// 0.022 and 0.10; the logits span ≈ ±30, f32 itself is within 1e-3), and keeps every greedy
/// next token.
#[test]
fn half_base_logits_stay_near_f32() {
    let Some((file, expected)) = smollm2() else {
        return;
    };
    let argmax: Vec<i64> = serde_json::from_value(expected["argmax"].clone()).unwrap();
    for (name, device, dtypes) in devices() {
        for dtype in dtypes {
            let tolerance = match dtype {
                FloatDType::F16 => 0.05,
                _ => 0.25,
            };
            let source = ModelSource::Gguf(file.clone());
            let (model, _) = load_llama_stored(&source, &device, Some(dtype))
                .unwrap()
                .unwrap();
            assert!(precision::has_half(&model), "{name} {dtype:?}: stored half");
            let (worst, ours) = probe_smollm2(&model, &expected, &device);
            let same = ours.iter().zip(&argmax).filter(|(a, b)| a == b).count();
            eprintln!(
                "smollm2 {dtype:?} on {name}: logits within {worst:.3e}, greedy tokens {same}/{}",
                argmax.len()
            );
            assert!(
                worst <= tolerance,
                "{name} {dtype:?}: max abs difference {worst}"
            );
            assert_eq!(same, argmax.len(), "{name} {dtype:?}: greedy next tokens");
        }
    }
}
