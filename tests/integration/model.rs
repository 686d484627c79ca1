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
/// on the CPU backend and on wgpu, with a mask that broadcasts over heads; with and without
/// Gemma 2's soft cap on the scores (a cap of 2 on scores of spread ~1 bends many of them).
#[test]
fn fused_attention_matches_composed_attention() {
    use burn::tensor::{Bool, Distribution};
    use fairtune::model::attention::attention as fused;
    use fairtune::model::layers::{attention as composed, attention_scaled};

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
        let weights = Tensor::<4>::random(
            [2, heads, rows, dim],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        // Row r hides keys past r % keys (causal-like, every row sees key 0).
        let hidden: Vec<bool> = (0..rows)
            .flat_map(|r| (0..keys).map(move |c| c > r % keys))
            .collect();
        let mask = Tensor::<2, Bool>::from_data(TensorData::new(hidden, [rows, keys]), &device)
            .unsqueeze::<4>();
        let scale = 1.0 / (dim as f64).sqrt();
        for softcap in [None, Some(2.0)] {
            let mut results = Vec::new();
            for use_fused in [true, false] {
                let (qq, kk, vv, mm) = (q.clone(), k.clone(), v.clone(), mask.clone());
                let out = match (use_fused, softcap) {
                    (true, _) => fused(qq, kk, vv, mm, scale, softcap),
                    (false, None) => composed(qq, kk, vv, mm, None),
                    (false, Some(_)) => attention_scaled(qq, kk, vv, mm, scale, softcap),
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
                assert!(
                    worst < 1e-4,
                    "{name} {what}, softcap {softcap:?}: max |fused − composed| {worst}"
                );
            }
        }
    }
}

/// Largest |a − b| over two equal-length vectors.
fn max_difference(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
}

/// The fused SwiGLU, GeGLU, RMSNorm and token log-prob ops (one autodiff node each, recomputing
/// in backward) give what their composed forms give: values and every input's gradient, on the
/// CPU backend and on wgpu; token log-probs also under Gemma 2's final soft cap.
#[test]
fn fused_ops_match_their_composed_forms() {
    use burn::tensor::Distribution;
    use burn::tensor::activation::{log_softmax, silu};
    use fairtune::model::fused::{geglu, rms_norm, swiglu, token_logps, token_logps_in_blocks};

    let mut devices = vec![("cpu", common::cpu())];
    if let Some(wgpu) = common::wgpu() {
        devices.push(("wgpu", wgpu.device));
    }
    for (name, plain) in devices {
        let device = plain.autodiff();
        device.seed(9);
        let normal = Distribution::Normal(0.0, 1.0);
        let x = Tensor::<3>::random([2, 5, 12], normal, &device).require_grad();
        let y = Tensor::<3>::random([2, 5, 12], normal, &device).require_grad();
        let w = Tensor::<1>::random([12], normal, &device).require_grad();
        let probe = Tensor::<3>::random([2, 5, 12], normal, &device);
        let check3 = |what: &str, fused: Tensor<3>, composed: Tensor<3>| {
            assert!(
                max_difference(&to_vec(fused.clone()), &to_vec(composed.clone())) < 1e-5,
                "{name} {what}: values"
            );
            let gf = (fused * probe.clone()).sum().backward();
            let gc = (composed * probe.clone()).sum().backward();
            for (input, g_f, g_c) in [
                ("x", x.grad(&gf), x.grad(&gc)),
                ("y", y.grad(&gf), y.grad(&gc)),
            ] {
                assert_eq!(
                    g_f.is_some(),
                    g_c.is_some(),
                    "{name} {what}: d{input} present"
                );
                if let (Some(a), Some(b)) = (g_f, g_c) {
                    let worst = max_difference(&to_vec(a), &to_vec(b));
                    assert!(worst < 1e-4, "{name} {what}: d{input} off by {worst}");
                }
            }
            let (dw_f, dw_c) = (w.grad(&gf), w.grad(&gc));
            assert_eq!(dw_f.is_some(), dw_c.is_some(), "{name} {what}: dw present");
            if let (Some(a), Some(b)) = (dw_f, dw_c) {
                let worst = max_difference(&to_vec(a), &to_vec(b));
                assert!(worst < 1e-4, "{name} {what}: dw off by {worst}");
            }
        };
        check3(
            "swiglu",
            swiglu(x.clone(), y.clone()),
            silu(x.clone()) * y.clone(),
        );
        // PyTorch's gelu(approximate="tanh"): ½x(1 + tanh(√(2/π)(x + 0.044715x³))).
        let k = (2.0 / std::f64::consts::PI).sqrt();
        check3("geglu", geglu(x.clone() * 2.0, y.clone()), {
            let x2 = x.clone() * 2.0;
            let inner = (x2.clone() + x2.clone().powi_scalar(3) * 0.044715) * k;
            x2 * 0.5 * (inner.tanh() + 1.0) * y.clone()
        });
        let eps = 1e-5;
        let variance = x.clone().powi_scalar(2).mean_dim(2);
        let composed = x.clone() * (variance + eps).sqrt().recip() * w.clone().unsqueeze();
        check3("rms_norm", rms_norm(x.clone(), w.clone(), eps), composed);

        // Token log-probs of 6 rows against a 20-word output projection.
        let hidden = Tensor::<2>::random([6, 12], normal, &device).require_grad();
        let weight = Tensor::<2>::random([20, 12], normal, &device).require_grad();
        let targets =
            Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 19, 3, 3, 11, 7], [6]), &device);
        // In one block, and in blocks of the vocabulary that do and do not divide it.
        let scale = Tensor::<1>::random([6], normal, &device);
        let capped_logps = |weight: &Tensor<2>, softcap: Option<f64>| {
            let logits = hidden.clone().matmul(weight.clone().transpose()) * 3.0;
            let logits = match softcap {
                Some(cap) => (logits / cap).tanh() * cap,
                None => logits,
            };
            log_softmax(logits, 1)
                .gather(1, targets.clone().reshape([6, 1]))
                .reshape([6])
        };
        let composed = |weight: &Tensor<2>| capped_logps(weight, None);
        // Gemma 2's final cap (a cap of 4 on logits of spread ~10 bends most of them).
        for (block, softcap) in [
            (None, None),
            (Some(1), None),
            (Some(4), None),
            (Some(7), None),
            (Some(19), None),
            (None, Some(4.0)),
            (Some(7), Some(4.0)),
        ] {
            let what = format!("{name} token_logps, block {block:?}, softcap {softcap:?}");
            let (h, w, t) = (hidden.clone(), weight.clone() * 3.0, targets.clone());
            let fused = match block {
                None => token_logps(h, w, t, softcap),
                Some(b) => token_logps_in_blocks(h, w, t, b, softcap),
            };
            let composed = capped_logps(&weight, softcap);
            assert!(
                max_difference(&to_vec(fused.clone()), &to_vec(composed.clone())) < 1e-5,
                "{what}: values"
            );
            let gf = (fused * scale.clone()).sum().backward();
            let gc = (composed * scale.clone()).sum().backward();
            for (input, tensor) in [("hidden", &hidden), ("weight", &weight)] {
                let worst = max_difference(
                    &to_vec(tensor.grad(&gf).expect("fused grad")),
                    &to_vec(tensor.grad(&gc).expect("composed grad")),
                );
                assert!(worst < 1e-4, "{what}: d{input} off by {worst}");
            }
        }
        // A frozen projection (LoRA's): the gradient reaches the hidden states only.
        let frozen = weight.clone().detach().set_require_grad(false);
        let fused = token_logps_in_blocks(
            hidden.clone(),
            frozen.clone() * 3.0,
            targets.clone(),
            7,
            None,
        );
        let gf = (fused * scale.clone()).sum().backward();
        let gc = (composed(&frozen) * scale.clone()).sum().backward();
        assert!(
            frozen.grad(&gf).is_none(),
            "{name}: no gradient for a frozen weight"
        );
        let worst = max_difference(
            &to_vec(hidden.grad(&gf).expect("fused grad")),
            &to_vec(hidden.grad(&gc).expect("composed grad")),
        );
        assert!(
            worst < 1e-4,
            "{name} token_logps, frozen weight: dhidden off by {worst}"
        );
    }
}

/// A damaged safetensors file is one clear error naming the file and what is wrong, never a
/// panic: truncated data, a header length past the file, a header that is not JSON, offsets that
/// do not fit the shape. The intact file loads, every tensor.
#[test]
fn damaged_safetensors_are_refused_with_a_reason() {
    use fairtune::model::io::safetensors::Checkpoint;

    let source =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-llama-chat");
    let bytes = std::fs::read(source.join("model.safetensors")).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let intact = Checkpoint::from_dir(&source).unwrap();
    assert!(
        intact.tensors.len() > 10,
        "{} tensors",
        intact.tensors.len()
    );

    let header = std::str::from_utf8(&bytes[8..8 + header_len]).unwrap();
    // The first tensor's offsets, moved one byte: they no longer fit its shape.
    let shifted = header.replacen("\"data_offsets\":[0,", "\"data_offsets\":[1,", 1);
    assert_ne!(
        shifted, header,
        "the fixture's header lists a tensor at offset 0"
    );
    let mut bad_offsets = (shifted.len() as u64).to_le_bytes().to_vec();
    bad_offsets.extend_from_slice(shifted.as_bytes());
    bad_offsets.extend_from_slice(&bytes[8 + header_len..]);
    let mut huge_header = bytes.clone();
    huge_header[..8].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
    let mut not_json = bytes.clone();
    not_json[8] = b'#';
    let cases = [
        ("truncated", bytes[..bytes.len() - 100].to_vec()),
        ("header past the end", huge_header),
        ("not JSON", not_json),
        ("offsets", bad_offsets),
        ("empty", Vec::new()),
    ];
    for (what, damaged) in cases {
        let dir = common::tempdir();
        std::fs::write(dir.path().join("model.safetensors"), damaged).unwrap();
        let error = match Checkpoint::from_dir(dir.path()) {
            Ok(_) => panic!("{what}: a damaged file loaded"),
            Err(e) => e.to_string(),
        };
        assert!(
            error.contains("model.safetensors") && error.contains("not a safetensors file"),
            "{what}: {error}"
        );
    }
}
