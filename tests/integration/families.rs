//! Every decoder family against transformers 5.24.0 (tests/fixtures/make_families.py): tiny
//! random checkpoints of Qwen2 (also with sliding layers), Qwen3, Mistral (sliding window),
//! Llama with llama3 and linear rope scaling, Gemma 2 (soft caps, alternating windows), Gemma 3
//! (two rope bases, 5:1 windows, a query scalar other than head_dim) and Phi-3 (fused
//! projections; partial rotary with LongRoPE), saved by transformers itself. Our model loaded from
//! each reproduces transformers' logits within 1e-4 (max abs), through the plain forward and the
//! packed forward that training uses, and its greedy continuation token for token; on the CPU
//! backend and on wgpu. The same weights written as llama.cpp lays them out in GGUF (Q/K rows
//! permuted for `llama` only, Gemma's norms as 1 + w, Phi-3's projections fused) load to the
//! same logits.

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Int, Tensor, TensorData};
use fairtune::data::LmSequence;
use fairtune::model::logps::{ALL_POSITIONS, sequence_logps, single_groups};
use fairtune::model::{self, ArchConfig, Family};
use serde_json::Value;

use crate::common::{self, to_vec};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn devices() -> Vec<(String, Device)> {
    let mut list = vec![("cpu".to_string(), common::cpu())];
    if let Some(wgpu) = common::wgpu() {
        list.push(("wgpu".to_string(), wgpu.device));
    }
    list
}

fn rows(value: &Value) -> Vec<Vec<u32>> {
    serde_json::from_value(value.clone()).unwrap()
}

fn ids_tensor(rows: &[Vec<u32>], device: &Device) -> Tensor<2, Int> {
    let (batch, seq) = (rows.len(), rows[0].len());
    let flat: Vec<i64> = rows.iter().flatten().map(|&t| i64::from(t)).collect();
    Tensor::from_data(TensorData::new(flat, [batch, seq]), device)
}

/// The largest difference of `lm`'s logits on `inputs` from `want`, asserted within 1e-4, and
/// nothing of the checkpoint left unused.
#[track_caller]
fn logits_within(
    lm: &fairtune::model::LlamaForCausalLM,
    report: &fairtune::model::io::safetensors::LoadReport,
    inputs: &[Vec<u32>],
    want: &[f32],
    device: &Device,
    what: &str,
) -> f32 {
    assert!(
        report.unused.is_empty(),
        "{what}: unused {:?}",
        report.unused
    );
    let logits = to_vec(lm.forward(ids_tensor(inputs, device)));
    let worst = logits
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(worst <= 1e-4, "{what}: logits differ by {worst}");
    worst
}

/// log-softmax of one row of logits at `target`.
fn log_prob(row: &[f32], target: usize) -> f64 {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
    let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
    row[target] as f64 - max - sum.ln()
}

#[test]
fn every_family_matches_transformers() {
    let fixture = common::read_json(&fixtures().join("parity/families.json"));
    let models = fixture["models"].as_object().unwrap();
    assert!(models.len() >= 6, "{} models", models.len());
    let mut ggufs = 0;
    for (name, expected) in models {
        let dir = fixtures().join("families").join(name);
        let ArchConfig::Llama(config) = model::read_config(&dir).unwrap() else {
            panic!("{name}: a decoder");
        };
        let want_family = match name.split('-').next().unwrap() {
            "qwen2" => Family::Qwen2,
            "qwen3" => Family::Qwen3,
            "mistral" => Family::Mistral,
            "gemma2" => Family::Gemma2,
            "gemma3" => Family::Gemma3,
            "phi3" => Family::Phi3,
            _ => Family::Llama,
        };
        assert_eq!(config.family, want_family, "{name}");
        let inputs = rows(&expected["input_ids"]);
        let want: Vec<f32> = serde_json::from_value(expected["logits"].clone()).unwrap();
        for (backend, device) in devices() {
            let what = format!("{name} on {backend}");
            let (lm, report) = model::load_llama(&dir, &device).unwrap();
            let worst = logits_within(&lm, &report, &inputs, &want, &device, &what);

            // The packed forward of training: each sequence's summed log-probs of its tokens
            // after the first equal those of transformers' logits.
            let vocab = config.vocab_size;
            let sequences: Vec<LmSequence> = inputs
                .iter()
                .map(|ids| LmSequence {
                    tokens: ids.clone(),
                    completion: (0..ids.len()).map(|i| i > 0).collect(),
                })
                .collect();
            let refs: Vec<&LmSequence> = sequences.iter().collect();
            let (sums, _, _) = sequence_logps(
                &lm,
                &refs,
                &single_groups(refs.len()),
                &device,
                ALL_POSITIONS,
            );
            let seq = inputs[0].len();
            for (row, ids) in inputs.iter().enumerate() {
                let reference: f64 = (1..seq)
                    .map(|t| {
                        let at = (row * seq + t - 1) * vocab;
                        log_prob(&want[at..at + vocab], ids[t] as usize)
                    })
                    .sum();
                let got = to_vec(sums.clone())[row] as f64;
                assert!(
                    (got - reference).abs() < 1e-3,
                    "{what}: packed log-prob sum {got} vs transformers' {reference}"
                );
            }

            // Greedy continuation, by full forwards.
            let mut ids = rows(&Value::Array(vec![expected["prompt_ids"].clone()]));
            let want_greedy: Vec<u32> =
                serde_json::from_value(expected["greedy_ids"].clone()).unwrap();
            for _ in 0..want_greedy.len() {
                let logits = to_vec(lm.forward(ids_tensor(&ids, &device)));
                let last = &logits[logits.len() - vocab..];
                let next = (0..vocab)
                    .max_by(|&a, &b| last[a].total_cmp(&last[b]))
                    .unwrap();
                ids[0].push(next as u32);
            }
            let prompt_len = ids[0].len() - want_greedy.len();
            assert_eq!(
                &ids[0][prompt_len..],
                &want_greedy[..],
                "{what}: greedy tokens"
            );
            eprintln!("{what}: logits within {worst:.1e}, greedy tokens equal");

            // The same weights as llama.cpp's converter lays them out in a GGUF.
            let gguf = fixtures().join("families").join(format!("{name}.gguf"));
            if gguf.exists() {
                let (lm, report) = model::load_llama_gguf(&gguf, &device).unwrap();
                let what = format!("{what} from GGUF");
                let worst = logits_within(&lm, &report, &inputs, &want, &device, &what);
                eprintln!("{what}: logits within {worst:.1e}");
                ggufs += 1;
            }
        }
    }
    assert!(ggufs >= 8, "{ggufs} GGUF checks");
}

/// LongRoPE serves sequences up to its pretraining length only (transformers switches to the
/// long factors beyond it): the model's positions are capped there, so `--max-length` past it is
/// refused before training.
#[test]
fn longrope_caps_the_positions_at_the_original_length() {
    let ArchConfig::Llama(config) =
        model::read_config(&fixtures().join("families/phi3-longrope")).unwrap()
    else {
        panic!("a decoder");
    };
    assert_eq!(config.max_position_embeddings, 64);
    assert_eq!(config.max_positions(), 32);
    assert_eq!(
        config.max_positions_key(),
        "original_max_position_embeddings (LongRoPE)"
    );
    let lm = config.init(&common::cpu());
    assert_eq!(lm.max_positions(), 32);
}

/// A config of a family we do not know names it and the ones we do.
#[test]
fn an_unknown_family_is_named() {
    let error = model::parse_config(r#"{"model_type": "falcon", "hidden_size": 8}"#).unwrap_err();
    assert!(
        error.contains("\"falcon\" is not supported") && error.contains("qwen3"),
        "{error}"
    );
    let yarn = r#"{"model_type": "qwen2", "vocab_size": 8, "hidden_size": 8,
        "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
        "rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e6}}"#;
    let error = model::parse_config(yarn).unwrap_err();
    assert!(error.contains("\"yarn\" is not supported"), "{error}");
}
