//! Parity with Hugging Face transformers: our modules, loaded from safetensors, reproduce the
//! reference outputs in tests/fixtures/parity (made by tests/fixtures/make_parity.py) within
//! 1e-3, on the CPU backend and on wgpu.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor, TensorData};
use fairtune::model::{self, BertHead};
use serde_json::Value;

use crate::common::{self, to_vec};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn reference(name: &str) -> Value {
    common::read_json(&fixtures().join("parity").join(format!("{name}.json")))
}

fn ints2(value: &Value, device: &Device) -> Tensor<2, Int> {
    let rows: Vec<Vec<i64>> = serde_json::from_value(value.clone()).unwrap();
    let (batch, seq) = (rows.len(), rows[0].len());
    let flat: Vec<i64> = rows.into_iter().flatten().collect();
    Tensor::from_data(TensorData::new(flat, [batch, seq]), device)
}

fn floats(value: &Value) -> Vec<f32> {
    serde_json::from_value(value.clone()).unwrap()
}

#[track_caller]
fn assert_max_abs(got: &[f32], want: &[f32], tolerance: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let worst = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        worst <= tolerance,
        "{what}: max abs difference {worst} > {tolerance}"
    );
    eprintln!("{what}: max abs difference {worst:.2e}");
}

fn devices() -> Vec<(String, Device)> {
    let mut list = vec![("cpu".to_string(), common::cpu())];
    if let Some(wgpu) = common::wgpu() {
        list.push(("wgpu".to_string(), wgpu.device));
    }
    list
}

fn check_bert(dir: &Path, fixture: &str) {
    let expected = reference(fixture);
    for (name, device) in devices() {
        let (bert, report) = model::load_bert(dir, 2, BertHead::Sequence, &device).unwrap();
        assert_eq!(
            report.newly_initialized,
            ["classifier.weight", "classifier.bias"]
        );
        let ids = ints2(&expected["input_ids"], &device);
        let mask = ints2(&expected["attention_mask"], &device);
        let hidden = bert.valid().encode(ids, mask);
        let what = format!("{fixture} hidden states on {name}");
        assert_max_abs(
            &to_vec(hidden.clone()),
            &floats(&expected["last_hidden_state"]),
            1e-3,
            &what,
        );
        if let Some(pooled) = expected.get("pooler_output") {
            let [batch, _, width] = hidden.dims();
            let cls = hidden.narrow(1, 0, 1).reshape([batch, width]);
            let pooler = bert.bert.pooler.as_ref().unwrap();
            let ours = burn::tensor::activation::tanh(pooler.dense.forward(cls));
            assert_max_abs(
                &to_vec(ours),
                &floats(pooled),
                1e-3,
                &format!("{fixture} pooler on {name}"),
            );
        }
    }
}

#[test]
fn tiny_bert_matches_transformers() {
    check_bert(&fixtures().join("tiny-bert"), "tiny-bert");
}

#[test]
fn tiny_llama_matches_transformers() {
    let expected = reference("tiny-llama");
    for (name, device) in devices() {
        let (llama, report) = model::load_llama(&fixtures().join("tiny-llama"), &device).unwrap();
        assert!(report.unused.is_empty(), "{:?}", report.unused);
        let logits = llama.forward(ints2(&expected["input_ids"], &device));
        let what = format!("tiny-llama logits on {name}");
        assert_max_abs(&to_vec(logits), &floats(&expected["logits"]), 1e-3, &what);
    }
}

/// The fetched all-MiniLM-L6-v2 (fetched here if missing; FAIRTUNE_OFFLINE=1 skips).
#[test]
fn all_minilm_l6_v2_matches_transformers() {
    let Some(dir) = common::fetched("all-minilm-l6-v2") else {
        return;
    };
    check_bert(&dir, "all-minilm-l6-v2");
}

#[test]
fn missing_tensors_are_named() {
    let dir = common::tempdir();
    let source = fixtures().join("tiny-llama");
    std::fs::copy(source.join("config.json"), dir.path().join("config.json")).unwrap();
    // A checkpoint of another shape: the tiny BERT's weights under a Llama config.
    std::fs::copy(
        fixtures().join("tiny-bert/model.safetensors"),
        dir.path().join("model.safetensors"),
    )
    .unwrap();
    let error = match model::load_llama(dir.path(), &common::cpu()) {
        Ok(_) => panic!("loading a BERT checkpoint as Llama must fail"),
        Err(e) => e.to_string(),
    };
    assert!(
        error.contains("lacks") && error.contains("model.embed_tokens.weight"),
        "{error}"
    );
}
