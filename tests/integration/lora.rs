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

/// A checkpoint tensor's shape and values (read from the file now).
fn tensor(checkpoint: &mut Checkpoint, name: &str) -> (Vec<usize>, Vec<f32>) {
    let stored = checkpoint
        .tensors
        .remove(name)
        .unwrap_or_else(|| panic!("{name} missing"));
    let shape = stored.shape.clone();
    (shape, stored.read().unwrap())
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
    // The export merges the adapters as it writes each weight (what a run's `OUT/hf` is); the
    // factors without their scale are an error, not the base written as if merged.
    let unscaled = save_hf(
        &adapted.valid(),
        None,
        &arch,
        &ExportHead::CausalLm,
        &fairtune::tokenizer::TextTokenizer::Bytes,
        &dir.path().join("hf"),
    );
    assert!(
        unscaled.is_err_and(|e| e.to_string().contains("without their scale")),
        "an unmerged export needs the scale"
    );
    save_hf(
        &adapted.valid(),
        Some(settings.scale()),
        &arch,
        &ExportHead::CausalLm,
        &fairtune::tokenizer::TextTokenizer::Bytes,
        &dir.path().join("hf"),
    )
    .unwrap();

    let mut original = Checkpoint::from_dir(&source).unwrap();
    let mut merged = Checkpoint::from_dir(&dir.path().join("hf")).unwrap();
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
        let (shape, w0) = tensor(&mut original, &format!("{module}.weight"));
        let (_, w1) = tensor(&mut merged, &format!("{module}.weight"));
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
            tensor(&mut merged, name),
            tensor(&mut original, name),
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
    assert!(message.contains("no gate"), "{message}");
    // Phi-3 adapts its fused projections, under PEFT's names; the separate ones are refused
    // naming the fused one, and the fused ones on a family without them.
    let phi3 = model::read_config(&fixtures().join("families/phi3")).unwrap();
    let defaults = LoraSettings::new(2);
    let paths = defaults.weight_paths(&phi3).unwrap();
    assert_eq!(paths.len(), 2 * 4, "{paths:?}");
    assert!(paths.contains(&"model.layers.1.self_attn.qkv_proj.weight".to_string()));
    assert!(paths.contains(&"model.layers.0.mlp.gate_up_proj.weight".to_string()));
    let q = LoraSettings {
        targets: vec![LoraTarget::Q],
        ..LoraSettings::new(2)
    };
    let message = q.weight_paths(&phi3).unwrap_err().to_string();
    assert!(
        message.contains("qkv_proj") && message.contains("use qkv"),
        "{message}"
    );
    let qwen = model::read_config(&fixtures().join("families/qwen3")).unwrap();
    let fused = LoraSettings {
        targets: vec![LoraTarget::GateUp],
        ..LoraSettings::new(2)
    };
    let message = fused.weight_paths(&qwen).unwrap_err().to_string();
    assert!(message.contains("only Phi-3"), "{message}");
    // Saved in PEFT's layout and loaded back: the same adapters on the fused projections.
    let device = common::cpu();
    let (lm, _) = model::load_llama(&fixtures().join("families/phi3"), &device).unwrap();
    let adapted = defaults.apply(lm.clone(), &phi3, &[]).unwrap();
    let dir = common::tempdir();
    let count = save_adapters(&adapted, &phi3, &defaults, "phi3", dir.path()).unwrap();
    assert_eq!(count, 2 * 4);
    let config = common::read_json(&dir.path().join("adapter_config.json"));
    let mut targets: Vec<&str> = config["target_modules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    targets.sort();
    assert_eq!(targets, ["down_proj", "gate_up_proj", "o_proj", "qkv_proj"]);
    let loaded = fairtune::model::lora::load_adapters(lm, &phi3, dir.path()).unwrap();
    let a = |m: &fairtune::model::LlamaForCausalLM| {
        let qkv = m.model.layers[0].self_attn.qkv_proj.as_ref().unwrap();
        to_vec(qkv.weight.adapter().expect("an adapter").a.val())
    };
    assert_eq!(a(&loaded), a(&adapted));
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
    let q = adapted.model.layers[0].self_attn.q_proj.as_ref().unwrap();
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
