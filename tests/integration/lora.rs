//! LoRA: adapters start as a no-op, train only themselves, leave the base untouched (so the base
//! is the DPO reference), and export both ways — PEFT adapters, and merged weights equal to
//! `W + (α/r)·B·A` in PEFT's terms.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Int, Tensor, TensorData};
use fairtune::model::io::export::{ExportHead, save_hf};
use fairtune::model::lora::{LoraSettings, LoraTarget, save_adapters};
use fairtune::model::{self, io::safetensors::Checkpoint};

use crate::common::{self, to_vec};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn tensor(checkpoint: &Checkpoint, name: &str) -> (Vec<usize>, Vec<f32>) {
    checkpoint
        .tensors
        .get(name)
        .unwrap_or_else(|| panic!("{name} missing"))
        .clone()
}

#[test]
fn lora_trains_adapters_only_and_merges_like_peft() {
    let source = fixtures().join("tiny-llama");
    let arch = model::read_config(&source).unwrap();
    let device = common::cpu().autodiff();
    let (base, _) = model::load_llama(&source, &device).unwrap();
    let settings = LoraSettings {
        rank: 4,
        alpha: 8.0,
        dropout: 0.0,
        targets: vec![LoraTarget::Q, LoraTarget::Down],
    };
    let ids = Tensor::<2, Int>::from_data(
        TensorData::new(vec![1i64, 17, 45, 99, 3, 60, 4, 88], [1, 8]),
        &device,
    );
    let before = to_vec(base.forward(ids.clone()));
    let mut adapted = settings.apply(base, &arch, &[]).unwrap();
    assert_eq!(
        to_vec(adapted.forward(ids.clone())),
        before,
        "B = 0 at init"
    );

    let mut optimizer = AdamWConfig::new().init();
    for _ in 0..3 {
        let loss = adapted.forward(ids.clone()).powf_scalar(2.0).mean();
        let grads = GradientsParams::from_grads(loss.backward(), &adapted);
        adapted = optimizer.step(1e-2, adapted, grads);
    }
    let after = to_vec(adapted.forward(ids.clone()));
    assert_ne!(after, before, "the adapters learned something");

    // LoRA dropout: random while training (the adapters see dropped inputs), off in inference.
    let dropping = adapted.clone().with_lora_dropout(0.5);
    let (one, two) = (
        to_vec(dropping.forward(ids.clone())),
        to_vec(dropping.forward(ids.clone())),
    );
    assert_ne!(one, two, "dropout draws differ");
    assert_ne!(one, after);
    let cpu_ids = Tensor::<2, Int>::from_data(
        TensorData::new(vec![1i64, 17, 45, 99, 3, 60, 4, 88], [1, 8]),
        &common::cpu(),
    );
    let inference = to_vec(dropping.valid().forward(cpu_ids.clone()));
    let plain = to_vec(adapted.valid().forward(cpu_ids));
    assert_eq!(inference, plain, "no dropout outside training");
    let grads = GradientsParams::from_grads(
        dropping
            .forward(ids.clone())
            .powf_scalar(2.0)
            .mean()
            .backward(),
        &dropping,
    );
    assert!(
        !grads.is_empty(),
        "the adapters get gradients through the dropout path"
    );

    let dir = common::tempdir();
    let count = save_adapters(
        &adapted,
        &arch,
        &settings,
        "tiny-llama",
        &dir.path().join("adapter"),
    )
    .unwrap();
    assert_eq!(count, 2 * 2, "q and down in each of the 2 layers");
    save_hf(
        &adapted.valid().materialize(),
        &arch,
        &ExportHead::CausalLm,
        &fairtune::tokenizer::TextTokenizer::Bytes,
        &dir.path().join("hf"),
    )
    .unwrap();

    let original = Checkpoint::from_dir(&source).unwrap();
    let merged = Checkpoint::from_dir(&dir.path().join("hf")).unwrap();
    let adapter_bytes =
        std::fs::read(dir.path().join("adapter/adapter_model.safetensors")).unwrap();
    let adapters = safetensors::SafeTensors::deserialize(&adapter_bytes).unwrap();
    let factor = |name: &str| -> (Vec<usize>, Vec<f32>) {
        let view = adapters.tensor(name).unwrap();
        let data = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        (view.shape().to_vec(), data)
    };
    let scale = (settings.alpha / settings.rank as f64) as f32;
    for module in [
        "model.layers.0.self_attn.q_proj",
        "model.layers.1.mlp.down_proj",
    ] {
        let (shape, w0) = tensor(&original, &format!("{module}.weight"));
        let (_, w1) = tensor(&merged, &format!("{module}.weight"));
        let (a_shape, a) = factor(&format!("base_model.model.{module}.lora_A.weight"));
        let (b_shape, b) = factor(&format!("base_model.model.{module}.lora_B.weight"));
        let (out, inp, r) = (shape[0], shape[1], settings.rank);
        assert_eq!((a_shape, b_shape), (vec![r, inp], vec![out, r]));
        let mut worst = 0.0f32;
        for o in 0..out {
            for i in 0..inp {
                let delta: f32 = (0..r).map(|k| b[o * r + k] * a[k * inp + i]).sum();
                worst = worst.max((w0[o * inp + i] + scale * delta - w1[o * inp + i]).abs());
            }
        }
        assert!(worst < 1e-5, "{module}: merged ≠ W + scale·B·A ({worst})");
        assert!(b.iter().any(|&v| v != 0.0), "{module}: B trained");
    }
    // Everything without an adapter is exactly the base: it was frozen.
    for name in [
        "model.layers.0.self_attn.k_proj.weight",
        "model.layers.1.input_layernorm.weight",
        "model.embed_tokens.weight",
        "lm_head.weight",
    ] {
        assert_eq!(
            tensor(&merged, name),
            tensor(&original, name),
            "{name} changed"
        );
    }
    // The merged export computes what the adapted model computes.
    let (reloaded, _) = model::load_llama(&dir.path().join("hf"), &common::cpu()).unwrap();
    let ids = Tensor::<2, Int>::from_data(
        TensorData::new(vec![1i64, 17, 45, 99, 3, 60, 4, 88], [1, 8]),
        &common::cpu(),
    );
    let merged_logits = to_vec(reloaded.forward(ids));
    let worst = merged_logits
        .iter()
        .zip(&after)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(worst < 1e-4, "merged logits differ by {worst}");
    let config = common::read_json(&dir.path().join("adapter/adapter_config.json"));
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["r"], 4);
    assert_eq!(
        config["target_modules"],
        serde_json::json!(["q_proj", "down_proj"])
    );
}

#[test]
fn lora_settings_are_checked() {
    let bert = model::read_config(&fixtures().join("tiny-bert")).unwrap();
    let gate = LoraSettings {
        rank: 2,
        alpha: 4.0,
        dropout: 0.0,
        targets: vec![LoraTarget::Gate],
    };
    let message = gate.weight_paths(&bert).unwrap_err().to_string();
    assert!(message.contains("no gate projection"), "{message}");
    let zero = LoraSettings {
        rank: 0,
        alpha: 4.0,
        dropout: 0.0,
        targets: vec![],
    };
    assert!(zero.validate().is_err());
    let all = LoraSettings {
        rank: 2,
        alpha: 4.0,
        dropout: 0.0,
        targets: vec![],
    };
    assert_eq!(all.weight_paths(&bert).unwrap().len(), 2 * 6);
}

/// Training computes each adapter apart from its frozen weight (`x·W₀ + s·(x·A)·B`, as PEFT) so
/// that backward never forms the dense weight gradient; it must give what the merged weight
/// `x·(W₀ + s·A·B)` (burn's `Param::val`) gives: the same values and the same gradients for the
/// input and both factors.
#[test]
fn lora_kept_apart_equals_the_merged_weight_in_values_and_gradients() {
    use burn::tensor::Distribution;
    use fairtune::model::layers::project;

    let source = fixtures().join("tiny-llama");
    let arch = model::read_config(&source).unwrap();
    let device = common::cpu().autodiff();
    device.seed(11);
    let (base, _) = model::load_llama(&source, &device).unwrap();
    let settings = LoraSettings {
        rank: 4,
        alpha: 8.0,
        dropout: 0.0,
        targets: vec![LoraTarget::Q],
    };
    let mut adapted = settings.apply(base, &arch, &[]).unwrap();
    // A few steps, so that B is no longer zero.
    let ids = Tensor::<2, Int>::from_data(
        TensorData::new(vec![1i64, 17, 45, 99, 3, 60, 4, 88], [1, 8]),
        &device,
    );
    let mut optimizer = AdamWConfig::new().init();
    for _ in 0..3 {
        let loss = adapted.forward(ids.clone()).powf_scalar(2.0).mean();
        let grads = GradientsParams::from_grads(loss.backward(), &adapted);
        adapted = optimizer.step(1e-2, adapted, grads);
    }
    let q = &adapted.model.layers[0].self_attn.q_proj;
    let adapter = q.weight.adapter().expect("an adapter on q_proj");
    let x = Tensor::<3>::random([2, 5, 32], Distribution::Normal(0.0, 1.0), &device).require_grad();
    let weights = Tensor::<3>::random([2, 5, 32], Distribution::Normal(0.0, 1.0), &device);
    let mut results = Vec::new();
    for apart in [true, false] {
        let y = if apart {
            project(q, x.clone(), 0.0)
        } else {
            q.forward(x.clone())
        };
        let grads = (y.clone() * weights.clone()).sum().backward();
        let grad = |t: Tensor<2>| to_vec(t.grad(&grads).expect("a gradient"));
        results.push([
            to_vec(y),
            to_vec(x.grad(&grads).expect("dx")),
            grad(adapter.a.val()),
            grad(adapter.b.val()),
        ]);
    }
    for (what, (apart, merged)) in ["y", "dx", "dA", "dB"]
        .iter()
        .zip(results[0].iter().zip(&results[1]))
    {
        let scale = merged.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
        let worst = apart
            .iter()
            .zip(merged)
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            worst <= 1e-5 * scale,
            "{what}: max |apart − merged| {worst} (scale {scale})"
        );
    }
}
