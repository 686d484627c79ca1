//! `fairtune playground`: the browser demo's presets on the desktop. The browser test
//! (web/test/browser.mjs) checks the page against these runs; here, that the presets tell their
//! story on the CPU, that every backend starts from the same weights and takes the same first
//! steps, and that bad options are refused.

use fairtune::apps::playground::{Options, Playground};
use serde_json::Value;

use crate::common::{fairtune, stderr, wgpu};

/// The JSON lines a successful `fairtune playground` run on the CPU printed, and its stderr.
fn json_lines(args: &[&str]) -> (Vec<Value>, String) {
    let mut all = vec!["playground", "--backend", "cpu"];
    all.extend_from_slice(args);
    let output = fairtune(&all);
    assert!(output.status.success(), "{}", stderr(&output));
    let lines = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    (lines, stderr(&output))
}

/// The JSON lines of a `fairtune playground` run: (step records, evaluations).
fn run(args: &[&str]) -> (Vec<Value>, Vec<Value>) {
    let (lines, _) = json_lines(args);
    let (evals, steps): (Vec<Value>, Vec<Value>) =
        lines.into_iter().partition(|v| v.get("eval").is_some());
    (
        steps,
        evals.into_iter().map(|v| v["eval"].clone()).collect(),
    )
}

#[test]
fn the_classifier_preset_learns_the_planted_bias_and_the_penalty_removes_it() {
    let (steps, plain) = run(&["--lambda", "0"]);
    assert_eq!(steps.len(), 40);
    assert!(
        steps
            .iter()
            .all(|s| s["loss"].as_f64().unwrap().is_finite())
    );
    let (_, fair) = run(&["--lambda", "100", "--eval-every", "20"]);
    assert_eq!(fair.len(), 2, "evaluations at steps 20 and 40");
    let (plain, fair) = (plain.last().unwrap(), fair.last().unwrap());
    let gap = |e: &Value| e["group_gap"].as_f64().unwrap();
    let accuracy = |e: &Value| e["accuracy"].as_f64().unwrap();
    assert!(gap(plain) > 0.3, "λ=0 learned no group gap: {plain}");
    assert!(
        gap(fair) < 0.2 * gap(plain),
        "λ=100: {fair} vs λ=0: {plain}"
    );
    // The bias is in the labels: without it the model also does better on honest labels.
    assert!(accuracy(fair) > accuracy(plain), "{fair} vs {plain}");
}

#[test]
fn the_dpo_preset_learns_the_planted_bias_and_the_penalty_removes_it() {
    let (steps, evals) = run(&["--preset", "dpo", "--lambda", "1", "--steps", "3"]);
    assert_eq!(steps.len(), 3);
    for key in ["loss", "fairness_F", "rewards/margins"] {
        assert!(steps[2][key].as_f64().unwrap().is_finite(), "{key}");
    }
    assert_eq!(evals[0]["group_counts"]["women"], 128);

    // The whole run: at λ = 0 the groups' mean log P("yes") drift apart (the labels are
    // biased); λ = 1 keeps them together, and the honest held-out pairs are ranked better.
    let (_, plain) = run(&["--preset", "dpo", "--lambda", "0"]);
    let (_, fair) = run(&["--preset", "dpo", "--lambda", "1"]);
    let (plain, fair) = (plain.last().unwrap(), fair.last().unwrap());
    let gap = |e: &Value| e["group_gap"].as_f64().unwrap();
    let accuracy = |e: &Value| e["rewards/accuracies"].as_f64().unwrap();
    assert!(gap(plain) > 1.0, "λ=0 learned no group gap: {plain}");
    assert!(gap(fair) < 0.05 * gap(plain), "λ=1: {fair} vs λ=0: {plain}");
    assert!(accuracy(fair) > accuracy(plain), "{fair} vs {plain}");
}

#[test]
fn every_backend_takes_the_same_first_steps() {
    let Some(selected) = wgpu() else { return };
    let options = Options {
        steps: 5,
        lambda: 100.0,
        ..Options::default()
    };
    let losses = |selected: &fairtune::device::Selected| -> Vec<f64> {
        let mut playground = Playground::start(&options, selected).unwrap();
        (0..options.steps)
            .map(|_| pollster::block_on(playground.step()).unwrap().values["loss"])
            .collect()
    };
    let cpu = losses(&fairtune::device::Selected::cpu());
    let gpu = losses(&selected);
    for (step, (c, g)) in cpu.iter().zip(&gpu).enumerate() {
        assert!(
            (c - g).abs() < 1e-3 * c.abs().max(1.0),
            "step {}: cpu {c}, wgpu {g}",
            step + 1
        );
    }
}

#[test]
fn a_session_refuses_steps_past_its_schedule() {
    let options = Options {
        steps: 2,
        ..Options::default()
    };
    let mut playground = Playground::start(&options, &fairtune::device::Selected::cpu()).unwrap();
    for _ in 0..2 {
        pollster::block_on(playground.step()).unwrap();
    }
    let error = pollster::block_on(playground.step())
        .err()
        .expect("a third step");
    assert!(error.to_string().contains("all 2 steps"), "{error}");
    assert_eq!(playground.steps_done(), 2);
}

#[test]
fn bad_playground_options_are_refused() {
    let output = fairtune(&["playground", "--backend", "cpu", "--batch-size", "1"]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(stderr(&output).contains("batch_size must be in 2..=512"));
    let output = fairtune(&["playground", "--preset", "gpt"]);
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn bad_lora_dpo_options_are_refused() {
    for (args, needle) in [
        (
            vec!["--preset", "lora-dpo"],
            "the lora-dpo preset needs a model",
        ),
        (
            vec!["--preset", "classify", "--model", "tiny-llama"],
            "model and data are for the lora-dpo preset",
        ),
        (
            vec![
                "--preset",
                "lora-dpo",
                "--model",
                "tiny-llama",
                "--lora-rank",
                "0",
            ],
            "lora_rank must be in 1..=256",
        ),
        (
            vec![
                "--preset",
                "lora-dpo",
                "--model",
                "tiny-llama",
                "--answers",
                "2",
                "--max-new-tokens",
                "0",
            ],
            "--max-new-tokens must be at least 1",
        ),
        (
            vec!["--preset", "dpo", "--answers", "2"],
            "--answers compares the base model with its LoRA adapters",
        ),
        (
            vec!["--preset", "dpo", "--quantize-base", "q8"],
            "quantize_base and gradient_checkpointing are for the lora-dpo preset",
        ),
    ] {
        let mut all = vec!["playground", "--backend", "cpu"];
        all.extend(args);
        let output = fairtune(&all);
        assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
        assert!(stderr(&output).contains(needle), "{}", stderr(&output));
    }
}

/// The page's real-model preset on the desktop (the browser test holds the page to this run):
/// LoRA DPO on the built-in decision questions, then the base and the tuned model's answers.
#[test]
fn the_lora_dpo_preset_tunes_adapters_and_answers_before_and_after() {
    let model = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/tiny-llama-chat"
    );
    let mut args = vec![
        "--preset",
        "lora-dpo",
        "--model",
        model,
        "--steps",
        "3",
        "--batch-size",
        "4",
        "--lambda",
        "1",
        "--lr",
        "0.01",
        "--answers",
        "4",
        "--max-new-tokens",
        "3",
    ];
    let (lines, _) = json_lines(&args);
    let steps: Vec<&Value> = lines.iter().filter(|l| l.get("step").is_some()).collect();
    assert_eq!(steps.len(), 3);
    // LoRA's B starts at zero: the first step's policy is the reference exactly.
    assert_eq!(steps[0]["rewards/margins"].as_f64(), Some(0.0));
    assert!(steps[2]["rewards/margins"].as_f64().unwrap() != 0.0);
    for step in &steps {
        assert!(step["fairness_F"].as_f64().unwrap().is_finite());
        let counts = step["group_counts"].as_object().unwrap();
        let rows: u64 = counts.values().map(|c| c.as_u64().unwrap()).sum();
        assert_eq!(rows, 4, "{step}");
    }
    let eval = &lines.iter().find(|l| l.get("eval").is_some()).unwrap()["eval"];
    assert_eq!(
        eval["group_counts"]["men"], 4,
        "the 4 held-out cases: {eval}"
    );
    let answers = lines.iter().find_map(|l| l.get("answers")).unwrap();
    let answers = answers.as_array().unwrap();
    assert_eq!(answers.len(), 4);
    assert_eq!(answers[0]["group"], "women");
    assert_eq!(answers[1]["group"], "men");
    for answer in answers {
        for key in ["before_ids", "after_ids"] {
            let ids = answer[key].as_array().unwrap();
            assert!(!ids.is_empty() && ids.len() <= 3, "{answer}");
        }
    }

    // The visitor's own pairs instead: any JSONL in the DPO format with a group per row.
    let dir = crate::common::tempdir();
    let data = dir.path().join("pairs.jsonl");
    let rows: String = (0..8)
        .map(|i| {
            let group = ["a", "b"][i % 2];
            format!(
                "{}\n",
                serde_json::json!({"prompt": format!("Question {i}?"), "chosen": " yes",
                                   "rejected": " no", "group": group})
            )
        })
        .collect();
    std::fs::write(&data, rows).unwrap();
    args.extend(["--data", data.to_str().unwrap()]);
    let (lines, stderr) = json_lines(&args);
    assert!(stderr.contains(r#""groups":["a","b"]"#), "{stderr}");
    let answers = lines.iter().find_map(|l| l.get("answers")).unwrap();
    assert_eq!(
        answers[0]["prompt"], "Question 0?",
        "the pairs' own prompts: {answers}"
    );
}
