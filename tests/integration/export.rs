//! Hugging Face export: what `save_hf` writes loads back (through the same loader transformers'
//! files go through) to the same outputs, and a training run leaves a loadable `hf/` directory.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::{Int, Tensor, TensorData};
use fairtune::model::io::export::{ExportHead, save_hf};
use fairtune::model::{self, BertHead};
use fairtune::tokenizer::TextTokenizer;
use serde_json::Value;

use crate::common::{self, to_vec};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn ids(rows: &[&[i64]]) -> Tensor<2, Int> {
    let flat: Vec<i64> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    Tensor::from_data(
        TensorData::new(flat, [rows.len(), rows[0].len()]),
        &common::cpu(),
    )
}

#[test]
fn llama_export_round_trips() {
    let device = common::cpu();
    let (llama, _) = model::load_llama(&fixtures().join("tiny-llama"), &device).unwrap();
    let config = model::read_config(&fixtures().join("tiny-llama")).unwrap();
    let dir = common::tempdir();
    let out = dir.path().join("hf");
    // Twice: exporting again replaces the directory whole.
    for _ in 0..2 {
        save_hf(
            &llama,
            None,
            &config,
            &ExportHead::CausalLm,
            &TextTokenizer::Bytes,
            &out,
        )
        .unwrap();
    }
    let (back, report) = model::load_llama(&out, &device).unwrap();
    assert!(report.unused.is_empty() && report.newly_initialized.is_empty());
    assert_eq!(model::read_config(&out).unwrap(), config);
    let input = ids(&[&[1, 17, 45, 99, 3, 60, 4, 88, 2]]);
    assert_eq!(
        to_vec(back.forward(input.clone())),
        to_vec(llama.forward(input))
    );
    let config_json = common::read_json(&out.join("config.json"));
    assert_eq!(config_json["architectures"][0], "LlamaForCausalLM");
    assert_eq!(config_json["model_type"], "llama");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(leftovers.len(), 1, "no temporary directories left behind");
}

#[test]
fn bert_classifier_export_round_trips_with_its_head() {
    let device = common::cpu();
    let source = fixtures().join("tiny-bert");
    let (bert, report) = model::load_bert(&source, 3, BertHead::Sequence, &device).unwrap();
    assert_eq!(report.newly_initialized.len(), 2, "a fresh head");
    let config = model::read_config(&source).unwrap();
    let dir = common::tempdir();
    let out = dir.path().join("hf");
    save_hf(
        &bert,
        None,
        &config,
        &ExportHead::sequence(3),
        &TextTokenizer::Bytes,
        &out,
    )
    .unwrap();
    let (back, report) = model::load_bert(&out, 3, BertHead::Sequence, &device).unwrap();
    assert!(
        report.newly_initialized.is_empty(),
        "the head is saved: {:?}",
        report.newly_initialized
    );
    let input = ids(&[&[2, 17, 45, 99, 3], &[2, 8, 101, 4, 0]]);
    let mask = ids(&[&[1, 1, 1, 1, 1], &[1, 1, 1, 1, 0]]);
    let ours = bert.valid().forward_sequence(input.clone(), mask.clone());
    let theirs = back.valid().forward_sequence(input, mask);
    // Equal up to float summation order (a transposed weight is laid out differently).
    let worst = to_vec(ours)
        .iter()
        .zip(to_vec(theirs))
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(worst < 1e-6, "{worst}");
    let config_json = common::read_json(&out.join("config.json"));
    assert_eq!(
        config_json["architectures"][0],
        "BertForSequenceClassification"
    );
    assert_eq!(config_json["id2label"]["2"], "LABEL_2");
    assert_eq!(config.name(), "bert");
}

/// `lm` saved as a Hugging Face causal LM under `dir/hf`; that directory and its config.json.
fn export_lm(
    lm: &model::LlamaForCausalLM,
    config: &model::ArchConfig,
    dir: &std::path::Path,
) -> (PathBuf, Value) {
    let out = dir.join("hf");
    save_hf(
        lm,
        None,
        config,
        &ExportHead::CausalLm,
        &TextTokenizer::Bytes,
        &out,
    )
    .unwrap();
    let written = common::read_json(&out.join("config.json"));
    (out, written)
}

/// A GGUF's config as fairtune reads it.
fn gguf_config(gguf: &std::path::Path) -> model::ArchConfig {
    model::ArchConfig::Llama(
        <fairtune::gguf::Gguf as fairtune::model::io::gguf::GgufLlama>::llama_config(
            &fairtune::gguf::Gguf::open(gguf).unwrap(),
        )
        .unwrap(),
    )
}

/// The largest difference between two models' logits on a fixed input.
fn logits_difference(a: &model::LlamaForCausalLM, b: &model::LlamaForCausalLM) -> f32 {
    let input = ids(&[&[1, 17, 45, 99, 3, 60, 4, 88, 2]]);
    let (a, b) = (to_vec(a.forward(input.clone())), to_vec(b.forward(input)));
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max)
}

/// Each decoder family exports to its own layout: config.json names the family's model_type and
/// class, keeps its fields (biases, q/k norms, windows, rope scaling, Gemma's scalar and caps,
/// Phi-3's LongRoPE), and loads back to the same logits.
#[test]
fn every_family_exports_to_its_own_layout() {
    let device = common::cpu();
    for (name, class) in [
        ("qwen2-sliding", "Qwen2ForCausalLM"),
        ("qwen3", "Qwen3ForCausalLM"),
        ("mistral", "MistralForCausalLM"),
        ("llama3-rope", "LlamaForCausalLM"),
        ("gemma2", "Gemma2ForCausalLM"),
        ("gemma3", "Gemma3ForCausalLM"),
        ("phi3-longrope", "Phi3ForCausalLM"),
    ] {
        let source = fixtures().join("families").join(name);
        let (lm, _) = model::load_llama(&source, &device).unwrap();
        let config = model::read_config(&source).unwrap();
        let dir = common::tempdir();
        let (out, written) = export_lm(&lm, &config, dir.path());
        let source_json = common::read_json(&source.join("config.json"));
        assert_eq!(written["architectures"][0], class, "{name}");
        assert_eq!(written["model_type"], source_json["model_type"], "{name}");
        assert!(
            written.get("family").is_none(),
            "{name}: no fairtune-only keys"
        );
        for key in [
            "sliding_window",
            "use_sliding_window",
            "layer_types",
            "rope_parameters",
            "query_pre_attn_scalar",
            "attn_logit_softcapping",
            "final_logit_softcapping",
            "original_max_position_embeddings",
            "head_dim",
        ] {
            // (false and null are transformers' defaults, left out.)
            let set = |v: &&Value| !v.is_null() && **v != Value::Bool(false);
            if let Some(value) = source_json.get(key).filter(set) {
                assert_eq!(&written[key], value, "{name}: {key}");
            }
        }
        assert_eq!(model::read_config(&out).unwrap(), config, "{name}");
        let (back, report) = model::load_llama(&out, &device).unwrap();
        assert!(report.unused.is_empty() && report.newly_initialized.is_empty());
        let input = ids(&[&[1, 17, 45, 99, 3, 60, 4, 88, 2]]);
        assert_eq!(
            to_vec(back.forward(input.clone())),
            to_vec(lm.forward(input)),
            "{name}"
        );
    }
}

/// Gemma and Phi-3 GGUFs export as the Hugging Face checkpoints they were converted from: the
/// same tensors (Gemma's norms back from 1 + w to w, Phi-3's projections still fused) and a
/// config.json that gives the same logits (Gemma 3's local rope base and window pattern, Phi-3's
/// LongRoPE factors).
#[test]
fn gemma_and_phi3_ggufs_export_to_their_checkpoints() {
    let device = common::cpu();
    for name in ["gemma2", "gemma3", "phi3-longrope"] {
        let gguf = fixtures().join(format!("families/{name}.gguf"));
        let (lm, _) = model::load_llama_gguf(&gguf, &device).unwrap();
        let dir = common::tempdir();
        let (out, _) = export_lm(&lm, &gguf_config(&gguf), dir.path());
        let (hf, _) = model::load_llama(&fixtures().join("families").join(name), &device).unwrap();
        let (back, _) = model::load_llama(&out, &device).unwrap();
        let worst = logits_difference(&back, &hf);
        assert!(
            worst < 1e-4,
            "{name}: exported GGUF logits differ by {worst}"
        );
    }
}

/// A GGUF's rope_freqs (Llama 3.1's scaling as llama.cpp bakes it) exports as the transformers
/// `llama3` rope parameters they come from: the exported directory gives the GGUF's logits.
#[test]
fn gguf_rope_freqs_export_as_llama3_parameters() {
    let device = common::cpu();
    let gguf = fixtures().join("families/llama3-rope.gguf");
    let (lm, _) = model::load_llama_gguf(&gguf, &device).unwrap();
    let dir = common::tempdir();
    let (out, written) = export_lm(&lm, &gguf_config(&gguf), dir.path());
    let rope = &written["rope_parameters"];
    assert_eq!(rope["rope_type"], "llama3", "{written}");
    assert!(
        (rope["factor"].as_f64().unwrap() - 8.0).abs() < 1e-4,
        "{rope}"
    );
    assert!(written.get("rope_divisors").is_none());
    let (back, _) = model::load_llama(&out, &device).unwrap();
    let worst = logits_difference(&back, &lm);
    assert!(worst < 1e-4, "exported logits differ by {worst}");
}
