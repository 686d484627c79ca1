//! Every bad input gets one clear error line and exit code 2 (1 for failures while running),
//! never a panic, and no output that looks like a finished run.

use std::path::Path;

use serde_json::json;

use crate::common::{self, TrainCommand, fairtune, jsonl, write};

fn pairs_file(dir: &Path) -> String {
    let rows: Vec<_> = (0..8)
        .map(|i| {
            json!({"prompt": format!("q{i}: "), "chosen": "yes", "rejected": "no",
                   "group": if i % 2 == 0 { "a" } else { "b" }})
        })
        .collect();
    write(dir, "pairs.jsonl", &jsonl(&rows))
        .display()
        .to_string()
}

/// Run `fairtune train` (by default `--task dpo --model tiny-llama --steps 2`) on CPU with
/// `extra` flags (each flag followed by its value, if it takes one); expect failure with `code`
/// and a single error line containing `needle`, and no report.
#[track_caller]
fn expect_error(dir: &Path, train: &str, extra: &[&str], code: i32, needle: &str) {
    let mut command =
        TrainCommand::new("dpo", "tiny-llama", train, dir.join("run")).set("--steps", 2);
    let mut rest = extra.iter().peekable();
    while let Some(flag) = rest.next() {
        match rest.next_if(|value| !value.starts_with("--")) {
            Some(value) => command = command.set(flag, value),
            None => command = command.switch(flag),
        }
    }
    common::expect_error(&command.output(), code, needle);
    assert!(
        !command.out().join("report.json").exists(),
        "no report for a failed run"
    );
}

#[test]
fn missing_and_unreadable_files() {
    let dir = crate::common::tempdir();
    let missing = dir.path().join("nope.jsonl");
    expect_error(
        dir.path(),
        missing.to_str().unwrap(),
        &[],
        2,
        "cannot read file",
    );
    // A directory where a file is expected.
    expect_error(
        dir.path(),
        dir.path().to_str().unwrap(),
        &[],
        2,
        "cannot read file",
    );
    let train = pairs_file(dir.path());
    expect_error(
        dir.path(),
        &train,
        &["--eval", missing.to_str().unwrap()],
        2,
        "nope.jsonl",
    );
    expect_error(
        dir.path(),
        &train,
        &["--tokenizer", missing.to_str().unwrap()],
        2,
        "cannot load tokenizer",
    );
}

#[test]
fn malformed_json_and_missing_fields_name_the_line() {
    let dir = crate::common::tempdir();
    let good = "{\"prompt\":\"a\",\"chosen\":\"b\",\"rejected\":\"c\"}";
    let bad_json = write(
        dir.path(),
        "bad.jsonl",
        &format!("{good}\n{good}\n{{oops\n"),
    );
    expect_error(
        dir.path(),
        bad_json.to_str().unwrap(),
        &[],
        2,
        "bad.jsonl:3: invalid JSON",
    );
    let missing = write(
        dir.path(),
        "missing.jsonl",
        &format!("{good}\n{{\"prompt\":\"a\",\"chosen\":\"b\"}}\n"),
    );
    expect_error(
        dir.path(),
        missing.to_str().unwrap(),
        &[],
        2,
        "missing.jsonl:2: missing field \"rejected\"",
    );
    let wrong_type = write(
        dir.path(),
        "type.jsonl",
        "{\"prompt\":\"a\",\"chosen\":3,\"rejected\":\"c\"}\n",
    );
    expect_error(
        dir.path(),
        wrong_type.to_str().unwrap(),
        &[],
        2,
        "type.jsonl:1: field \"chosen\" must be a string",
    );
}

#[test]
fn empty_dataset() {
    let dir = crate::common::tempdir();
    let empty = write(dir.path(), "empty.jsonl", "");
    expect_error(dir.path(), empty.to_str().unwrap(), &[], 2, "no examples");
}

#[test]
fn unknown_group() {
    let dir = crate::common::tempdir();
    let train = pairs_file(dir.path());
    let eval = write(
        dir.path(),
        "eval.jsonl",
        &jsonl(&[json!({"prompt": "q", "chosen": "yes", "rejected": "no", "group": "zebra"})]),
    );
    expect_error(
        dir.path(),
        &train,
        &["--eval", eval.to_str().unwrap()],
        2,
        "eval.jsonl:1: unknown group \"zebra\"",
    );
}

#[test]
fn invalid_numbers() {
    let dir = crate::common::tempdir();
    let train = pairs_file(dir.path());
    expect_error(
        dir.path(),
        &train,
        &["--fairness-lambda=-1"],
        2,
        "--fairness-lambda",
    );
    expect_error(dir.path(), &train, &["--beta", "0"], 2, "--beta");
    expect_error(dir.path(), &train, &["--beta=-0.5"], 2, "--beta");
    expect_error(dir.path(), &train, &["--lr", "0"], 2, "--lr");
    // Layer recomputation exists for the decoder models' DPO only.
    expect_error(
        dir.path(),
        &train,
        &[
            "--task",
            "classify",
            "--model",
            "tiny-bert",
            "--gradient-checkpointing",
        ],
        2,
        "--gradient-checkpointing",
    );
    expect_error(
        dir.path(),
        &train,
        &["--fairness-lambda", "NaN"],
        2,
        "--fairness-lambda",
    );
    expect_error(
        dir.path(),
        &train,
        &["--loss", "sigmoid,bco_pair", "--loss-weights", "1"],
        2,
        "one per loss",
    );
    expect_error(dir.path(), &train, &["--loss", "exo_pair"], 2, "ε > 0");
    expect_error(dir.path(), &train, &["--ld-alpha", "2"], 2, "--ld-alpha");
    expect_error(
        dir.path(),
        &train,
        &["--group-robust", "--loss", "sigmoid,sft"],
        2,
        "sft is a loss of the whole batch",
    );
    expect_error(
        dir.path(),
        &train,
        &["--loss", "aot", "--f-divergence", "js_divergence"],
        2,
        "not to aot",
    );
    kto_inputs(dir.path());
    expect_error(
        dir.path(),
        &train,
        &["--use-weighting", "--loss", "aot"],
        2,
        "aot sorts the pairs",
    );
    // clap's own usage errors also exit with 2.
    let output = fairtune(&["train", "--task", "nonsense"]);
    assert_eq!(output.status.code(), Some(2));
}

/// The losses of unpaired examples and their data: each misuse one clear line.
fn kto_inputs(dir: &Path) {
    let rows: Vec<_> = (0..8)
        .map(|i: usize| json!({"prompt": format!("q{i}: "), "completion": "yes", "label": i.is_multiple_of(2)}))
        .collect();
    let unpaired = write(dir, "unpaired.jsonl", &jsonl(&rows))
        .display()
        .to_string();
    expect_error(dir, &unpaired, &[], 2, "KTO's format");
    expect_error(dir, &unpaired, &["--loss", "ipo"], 2, "use --loss kto");
    let cases: [(&[&str], &str); 8] = [
        (
            &["--loss", "kto", "--use-weighting"],
            "--use-weighting is for preference pairs",
        ),
        (&["--loss", "kto", "--batch-size", "1"], "at least 2"),
        (&["--loss", "kto,sigmoid"], "cannot be listed"),
        (
            &["--loss", "kto", "--ld-alpha", "0.5"],
            "--ld-alpha is for preference pairs",
        ),
        (
            &["--loss", "kto", "--group-robust"],
            "--group-robust is for preference pairs",
        ),
        (
            &["--loss", "kto", "--desirable-weight", "0"],
            "--desirable-weight must be a positive number",
        ),
        (
            &["--desirable-weight", "1.3"],
            "weigh the examples of --loss kto",
        ),
        (
            &["--loss", "kto", "--fairness-score", "reward_margin"],
            "unpaired examples have one",
        ),
    ];
    for (args, needle) in cases {
        expect_error(dir, &unpaired, args, 2, needle);
    }
    let bad_label = write(
        dir,
        "bad-label.jsonl",
        &jsonl(&[json!({"prompt": "q", "completion": "yes", "label": 1})]),
    );
    expect_error(
        dir,
        bad_label.to_str().unwrap(),
        &["--loss", "kto"],
        2,
        "bad-label.jsonl:1: \"label\" must be true",
    );
}

#[test]
fn model_configs_that_do_not_fit() {
    let dir = crate::common::tempdir();
    let train = pairs_file(dir.path());
    expect_error(
        dir.path(),
        &train,
        &["--model", "tiny-bert"],
        2,
        "needs a causal LM",
    );
    let config = write(
        dir.path(),
        "config.json",
        &json!({"model_type": "llama", "vocab_size": 300, "hidden_size": 30, "intermediate_size": 64,
                "num_hidden_layers": 1, "num_attention_heads": 4}).to_string(),
    );
    let mut args = vec!["--model", config.to_str().unwrap()];
    expect_error(
        dir.path(),
        &train,
        &args,
        2,
        "divisible by num_attention_heads",
    );
    let gpt = write(
        dir.path(),
        "gpt.json",
        &json!({"model_type": "gpt2"}).to_string(),
    );
    args[1] = gpt.to_str().unwrap();
    expect_error(
        dir.path(),
        &train,
        &args,
        2,
        "model_type \"gpt2\" is not supported",
    );
    let small_vocab = write(
        dir.path(),
        "small.json",
        &json!({"model_type": "llama", "vocab_size": 100, "hidden_size": 32, "intermediate_size": 64,
                "num_hidden_layers": 1, "num_attention_heads": 4}).to_string(),
    );
    args[1] = small_vocab.to_str().unwrap();
    expect_error(dir.path(), &train, &args, 2, "smaller than the tokenizer");
    expect_error(
        dir.path(),
        &train,
        &["--max-length", "4096"],
        2,
        "max_position_embeddings",
    );
}

#[test]
fn lambda_without_fairness_examples() {
    let dir = crate::common::tempdir();
    let rows: Vec<_> = (0..4)
        .map(|i| json!({"prompt": format!("{i}"), "chosen": "y", "rejected": "n"}))
        .collect();
    let train = write(dir.path(), "nogroups.jsonl", &jsonl(&rows));
    expect_error(
        dir.path(),
        train.to_str().unwrap(),
        &["--fairness-lambda", "1"],
        2,
        "no fairness examples",
    );
}

#[test]
fn a_diverging_loss_stops_the_run_with_exit_code_1() {
    let dir = crate::common::tempdir();
    let train = pairs_file(dir.path());
    expect_error(
        dir.path(),
        &train,
        &["--lr", "1e30", "--max-grad-norm", "0", "--steps", "20"],
        1,
        "became",
    );
}

#[test]
fn an_existing_run_is_not_overwritten() {
    let dir = crate::common::tempdir();
    let train = pairs_file(dir.path());
    let out = dir.path().join("run");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("config.json"), "{}").unwrap();
    expect_error(dir.path(), &train, &[], 2, "already holds a training run");
    assert_eq!(
        std::fs::read_to_string(out.join("config.json")).unwrap(),
        "{}"
    );
}

#[test]
fn too_many_groups() {
    let dir = crate::common::tempdir();
    let rows: Vec<_> = (0..16_385)
        .map(|i| json!({"prompt": "p", "chosen": "y", "rejected": "n", "group": i}))
        .collect();
    let train = write(dir.path(), "many.jsonl", &jsonl(&rows));
    expect_error(
        dir.path(),
        train.to_str().unwrap(),
        &[],
        2,
        "fairness cells",
    );
}

#[test]
fn keep_start_truncation_that_leaves_no_pairs_is_one_clear_error() {
    let dir = crate::common::tempdir();
    let long = "a long prompt ".repeat(8);
    let rows: Vec<_> = (0..3)
        .map(|_| json!({"prompt": long, "chosen": "y", "rejected": "n"}))
        .collect();
    let train = write(dir.path(), "long.jsonl", &jsonl(&rows));
    expect_error(
        dir.path(),
        train.to_str().unwrap(),
        &[
            "--truncation-mode",
            "keep-start",
            "--max-length",
            "16",
            "--max-prompt-length",
            "8",
        ],
        2,
        "all 3 examples were left out",
    );
}

/// `fairtune train --task classify` of tiny-bert on two rows in `dir`, with `extra` flags.
fn classify_with(dir: &Path, extra: &[&str]) -> std::process::Output {
    let rows = write(
        dir,
        "rows.jsonl",
        &jsonl(&[
            json!({"text": "fine", "label": 1}),
            json!({"text": "bad", "label": 0}),
        ]),
    );
    let out = dir.join("classify");
    let mut args = vec![
        "train",
        "--task",
        "classify",
        "--model",
        "tiny-bert",
        "--train",
        rows.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    crate::common::fairtune(&args)
}

/// `--quantize-base` where it cannot apply: without LoRA (the base would train), with a
/// reference that TR-DPO moves, on another task.
#[test]
fn quantized_bases_that_cannot_apply() {
    let dir = crate::common::tempdir();
    let train = pairs_file(dir.path());
    expect_error(
        dir.path(),
        &train,
        &["--quantize-base", "q4"],
        2,
        "--quantize-base q4 keeps the frozen base in integers, so only LoRA adapters can train",
    );
    expect_error(
        dir.path(),
        &train,
        &[
            "--quantize-base",
            "q8",
            "--lora-rank",
            "4",
            "--sync-ref-model",
            "--ref-model-sync-steps",
            "2",
        ],
        2,
        "a quantized base cannot follow",
    );
    let output = classify_with(dir.path(), &["--quantize-base", "q8", "--lora-rank", "4"]);
    crate::common::expect_error(&output, 2, "--quantize-base q8 is for --task dpo");
}

/// `--base-dtype` where it cannot apply: another task, full fine-tuning without a reference,
/// bf16 on wgpu (WGSL has none).
#[test]
fn base_dtypes_that_cannot_apply() {
    let dir = crate::common::tempdir();
    let train = pairs_file(dir.path());
    expect_error(
        dir.path(),
        &train,
        &["--base-dtype", "f16", "--loss", "simpo"],
        2,
        "this --loss has none",
    );
    let output = classify_with(dir.path(), &["--base-dtype", "bf16"]);
    crate::common::expect_error(&output, 2, "--base-dtype bf16 is for --task dpo");
    if crate::common::wgpu().is_some() {
        expect_error(
            dir.path(),
            &train,
            &[
                "--base-dtype",
                "bf16",
                "--lora-rank",
                "4",
                "--backend",
                "wgpu",
            ],
            2,
            "WGSL has no bf16",
        );
    }
}

/// A run whose memory plan exceeds `--memory-limit` is refused before the model loads, with the
/// plan and what would shrink it; a limit that is not a size is refused by name.
#[test]
fn runs_that_do_not_fit_the_memory_limit() {
    let dir = crate::common::tempdir();
    let train = pairs_file(dir.path());
    expect_error(
        dir.path(),
        &train,
        &["--memory-limit", "1MiB"],
        2,
        "this run needs more memory than it may use",
    );
    let output = TrainCommand::new("dpo", "tiny-llama", &train, dir.path().join("run"))
        .set("--memory-limit", "1MiB")
        .output();
    let text = common::stderr(&output);
    for advice in [
        "--lora-rank",
        "--base-dtype auto",
        "--gradient-checkpointing",
    ] {
        assert!(text.contains(advice), "{advice} suggested: {text}");
    }
    // Under LoRA, the frozen base in integers is suggested too.
    let lora = TrainCommand::new("dpo", "tiny-llama", &train, dir.path().join("lora"))
        .set("--memory-limit", "1MiB")
        .set("--lora-rank", 4)
        .output();
    assert!(
        common::stderr(&lora).contains("--quantize-base q8"),
        "{}",
        common::stderr(&lora)
    );
    expect_error(
        dir.path(),
        &train,
        &["--memory-limit", "8XB"],
        2,
        "unknown unit",
    );
    // Within the limit, the run goes ahead and says its plan.
    let fits = TrainCommand::new("dpo", "tiny-llama", &train, dir.path().join("fits"))
        .set("--steps", 1)
        .set("--memory-limit", "64GiB")
        .output();
    assert!(fits.status.success(), "{}", common::stderr(&fits));
    assert!(common::stderr(&fits).contains("memory: weights"));
}
