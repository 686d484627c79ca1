//! Token-for-token parity with TRL's DPO preprocessing. The fixtures (tests/fixtures/trl/, made
//! by tests/fixtures/make_trl_parity.py with TRL 1.16 and transformers 5.24) hold what TRL's own
//! `DPOTrainer` dataset map and collator produced for plain and conversational pairs; fairtune's
//! `DpoTask` must encode the same rows to identical token ids and completion masks, and score
//! them to the same summed log-probs (within 1e-4 relative of transformers' logits).

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use fairtune::data::{LmSequence, Truncation};
use fairtune::device::Selected;
use fairtune::model::logps::{pair_groups, sequence_logps};
use fairtune::train::dpo::DpoTask;
use fairtune::train::{Task, TaskRunner, TrainConfig};
use serde_json::Value as Json;

use crate::common::{self, tempdir};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn ids(value: &Json) -> Vec<u32> {
    serde_json::from_value(value.clone()).unwrap()
}

fn floats(value: &Json) -> Vec<f64> {
    serde_json::from_value(value.clone()).unwrap()
}

/// Encode `case["rows"]` with fairtune's DPO task on `model` (TRL's keep-start truncation at the
/// case's max length), check the ids and masks against TRL's, and return the task.
fn check_tokens(model: &Path, case: &Json) -> DpoTask {
    let name = case["name"].as_str().unwrap();
    let dir = tempdir();
    let train = dir.path().join("train.jsonl");
    let rows: Vec<String> = case["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(Json::to_string)
        .collect();
    std::fs::write(&train, rows.join("\n")).unwrap();
    let mut config = TrainConfig::new(
        Task::Dpo,
        train,
        model.display().to_string(),
        dir.path().join("run"),
    );
    config.max_length = case["max_length"].as_u64().unwrap() as usize;
    config.max_prompt_length = config.max_length - 1;
    config.truncation = Truncation::KeepStart;
    let task = DpoTask::load(&config, &Selected::cpu()).unwrap();

    let rows = case["input_ids"].as_array().unwrap();
    let masks = case["completion_mask"].as_array().unwrap();
    let pairs: Vec<(&LmSequence, &LmSequence)> = task.train_pairs().collect();
    assert_eq!(pairs.len() * 2, rows.len(), "{name}: pairs kept");
    let ours = pairs.iter().map(|p| p.0).chain(pairs.iter().map(|p| p.1));
    for (index, (sequence, (want, mask))) in ours.zip(rows.iter().zip(masks)).enumerate() {
        assert_eq!(sequence.tokens, ids(want), "{name}: row {index} token ids");
        let mask: Vec<bool> = ids(mask).iter().map(|&m| m == 1).collect();
        assert_eq!(
            sequence.completion, mask,
            "{name}: row {index} completion mask"
        );
    }
    task
}

/// The summed completion log-probs of the task's pairs against TRL's (transformers' logits).
fn check_logps(task: &DpoTask, case: &Json, device: &Device) {
    let name = case["name"].as_str().unwrap();
    let model = task.init_model(device).unwrap();
    let pairs: Vec<(&LmSequence, &LmSequence)> = task.train_pairs().collect();
    let sequences: Vec<&LmSequence> = pairs
        .iter()
        .map(|p| p.0)
        .chain(pairs.iter().map(|p| p.1))
        .collect();
    let groups = pair_groups(pairs.len());
    let (sums, _, _) = sequence_logps(&model, &sequences, &groups, device, 1 << 10);
    let ours = common::to_vec(sums);
    let want: Vec<f64> = floats(&case["chosen_logps"])
        .into_iter()
        .chain(floats(&case["rejected_logps"]))
        .collect();
    for (index, (&got, &want)) in ours.iter().zip(&want).enumerate() {
        let relative = (f64::from(got) - want).abs() / want.abs().max(1.0);
        eprintln!(
            "{name}: row {index} logp {got:.4} vs TRL/transformers {want:.4} ({relative:.1e})"
        );
        assert!(relative <= 1e-4, "{name}: row {index}: {got} vs {want}");
    }
}

/// The tiny fixture: a post-processor that adds `<s>`, a chat template that writes it itself, a
/// BPE merge across the prompt/completion seam, keep-start truncation, and an `add_bos_token`
/// in tokenizer_config.json that transformers 5 ignores when tokenizer.json is there.
#[test]
fn tiny_llama_chat_matches_trl_token_for_token() {
    let model_dir = fixtures().join("tiny-llama-chat");
    let fixture = common::read_json(&fixtures().join("trl/tiny-llama-chat.json"));
    let device = common::cpu();
    for case in fixture["cases"].as_array().unwrap() {
        // The model directory, with the case's own tokenizer_config.json when it has one.
        let variant = tempdir();
        let dir = match case.get("tokenizer_config") {
            None => model_dir.clone(),
            Some(tokenizer_config) => {
                for file in ["tokenizer.json", "config.json", "model.safetensors"] {
                    std::fs::copy(model_dir.join(file), variant.path().join(file)).unwrap();
                }
                let config = variant.path().join("tokenizer_config.json");
                std::fs::write(config, tokenizer_config.to_string()).unwrap();
                variant.path().to_path_buf()
            }
        };
        let task = check_tokens(&dir, case);
        check_logps(&task, case, &device);
    }
}

/// SmolLM2-135M-Instruct: its GGUF, and the Hugging Face directory transformers saves from it,
/// whose tokenizer_config.json names `bos_token: <|im_start|>` (the file on which fairtune used to
/// put a second `<|im_start|>` in front of every chat prompt).
#[test]
fn smollm2_matches_trl_token_for_token() {
    let Some(dir) = common::fetched("smollm2-135m-instruct") else {
        return;
    };
    let gguf = dir.join("model.gguf");
    let fixture = common::read_json(&fixtures().join("trl/smollm2-135m-instruct.json"));
    // The Hugging Face directory: fairtune's own export of the GGUF (the same fp32 weights
    // transformers dequantizes), with the tokenizer_config.json and chat_template.jinja that
    // transformers' save_pretrained wrote.
    let scratch = tempdir();
    let hf = scratch.path().join("hf");
    fairtune::train::export_model(&gguf.display().to_string(), None, &hf).unwrap();
    std::fs::write(
        hf.join("tokenizer_config.json"),
        fixture["hf_tokenizer_config"].to_string(),
    )
    .unwrap();
    if let Some(template) = fixture["hf_chat_template"].as_str() {
        std::fs::write(hf.join("chat_template.jinja"), template).unwrap();
    }
    let device = common::cpu();
    for case in fixture["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        if let Some(gguf_case) = name.strip_prefix("hf-") {
            // The same weights as the GGUF case (the export is exact): only the tokens can differ.
            check_tokens(&hf, case);
            let twin = fixture["cases"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["name"] == format!("gguf-{gguf_case}"))
                .unwrap();
            assert_eq!(case["input_ids"], twin["input_ids"], "{name}");
        } else {
            let task = check_tokens(&gguf, case);
            check_logps(&task, case, &device);
        }
    }
}
