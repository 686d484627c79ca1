//! Properties of the architectures themselves, independent of any checkpoint.

use burn::tensor::{Int, Tensor, TensorData};
use fairtune::model::{self, ArchConfig};

use crate::common::{self, to_vec};

/// Causal: changing a later token leaves every earlier position's logits unchanged.
#[test]
fn llama_is_causal() {
    let device = common::cpu();
    let (ArchConfig::Llama(config), _) = model::resolve("tiny-llama", 264).unwrap() else {
        unreachable!()
    };
    let llama = config.init(&device);
    let ids = |last: i64| {
        Tensor::<2, Int>::from_data(
            TensorData::new(vec![1i64, 50, 90, 130, last], [1, 5]),
            &device,
        )
    };
    let a = llama.forward(ids(20));
    let b = llama.forward(ids(77));
    assert_eq!(
        to_vec(a.clone().narrow(1, 0, 4)),
        to_vec(b.clone().narrow(1, 0, 4))
    );
    assert_ne!(
        to_vec(a.narrow(1, 4, 1)),
        to_vec(b.narrow(1, 4, 1)),
        "the last position sees its own token"
    );
}

/// The fused attention op (the backend's own attention forward, a recomputing backward) gives
/// what the composed softmax(scale·q·kᵀ, masked)·v gives: values and the gradients of q, k and v,
/// on the CPU backend and on wgpu, with a mask that broadcasts over heads.
#[test]
fn fused_attention_matches_composed_attention() {
    use burn::tensor::{Bool, Distribution};
    use fairtune::model::attention::attention as fused;
    use fairtune::model::layers::attention as composed;

    let mut devices = vec![("cpu", common::cpu())];
    if let Some(wgpu) = common::wgpu() {
        devices.push(("wgpu", wgpu.device));
    }
    for (name, plain) in devices {
        let device = plain.autodiff();
        device.seed(3);
        let (heads, rows, keys, dim) = (3, 10, 7, 8);
        let random = |shape: [usize; 4]| {
            Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &device).require_grad()
        };
        let (q, k, v) = (
            random([2, heads, rows, dim]),
            random([2, heads, keys, dim]),
            random([2, heads, keys, dim]),
        );
        let weights =
            Tensor::<4>::random([2, heads, rows, dim], Distribution::Normal(0.0, 1.0), &device);
        // Row r hides keys past r % keys (causal-like, every row sees key 0).
        let hidden: Vec<bool> = (0..rows)
            .flat_map(|r| (0..keys).map(move |c| c > r % keys))
            .collect();
        let mask =
            Tensor::<2, Bool>::from_data(TensorData::new(hidden, [rows, keys]), &device)
                .unsqueeze::<4>();
        let scale = 1.0 / (dim as f64).sqrt();
        let mut results = Vec::new();
        for use_fused in [true, false] {
            let out = if use_fused {
                fused(q.clone(), k.clone(), v.clone(), mask.clone(), scale)
            } else {
                composed(q.clone(), k.clone(), v.clone(), mask.clone(), None)
            };
            let grads = (out.clone() * weights.clone()).sum().backward();
            let grad = |t: &Tensor<4>| to_vec(t.grad(&grads).expect("a gradient"));
            results.push([to_vec(out), grad(&q), grad(&k), grad(&v)]);
        }
        for (what, (ours, want)) in ["out", "dq", "dk", "dv"]
            .iter()
            .zip(results[0].iter().zip(&results[1]))
        {
            let worst = ours
                .iter()
                .zip(want)
                .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(worst < 1e-4, "{name} {what}: max |fused − composed| {worst}");
        }
    }
}
