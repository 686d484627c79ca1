//! Generation: the key/value-cached decoder reproduces transformers' greedy `generate` for every
//! family fixture (tests/fixtures/make_families.py), alone and batched with a shorter prompt
//! (left padding changes nothing); `fairtune generate` from the command line, its JSONL, seeded
//! sampling, stop strings, and its bad inputs.

use std::path::{Path, PathBuf};

use fairtune::generate::{Finish, GenerateOptions, Sampling, generate};
use fairtune::model;
use fairtune::tokenizer::TextTokenizer;
use serde_json::{Value, json};

use crate::common::{self, fairtune, jsonl, write};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn greedy(max_new_tokens: usize) -> GenerateOptions {
    GenerateOptions {
        max_new_tokens,
        sampling: Sampling::default(),
        stop_ids: Vec::new(),
        stop_strings: Vec::new(),
    }
}

#[test]
fn cached_greedy_generation_matches_transformers_for_every_family() {
    let fixture = common::read_json(&fixtures().join("parity/families.json"));
    let mut devices = vec![("cpu", common::cpu())];
    if let Some(wgpu) = common::wgpu() {
        devices.push(("wgpu", wgpu.device));
    }
    for (name, expected) in fixture["models"].as_object().unwrap() {
        let prompt: Vec<u32> = serde_json::from_value(expected["prompt_ids"].clone()).unwrap();
        let want: Vec<u32> = serde_json::from_value(expected["greedy_ids"].clone()).unwrap();
        for (backend, device) in &devices {
            let dir = fixtures().join("families").join(name);
            let (lm, _) = model::load_llama(&dir, device).unwrap();
            // A shorter second prompt: the first row is left-padded by nothing, the second by 2.
            let prompts = vec![prompt.clone(), prompt[..3].to_vec()];
            let out = pollster::block_on(generate(
                &lm,
                &TextTokenizer::Bytes,
                &prompts,
                &greedy(want.len()),
                device,
                |_, _| {},
            ))
            .unwrap();
            assert_eq!(out[0].completion_ids, want, "{name} on {backend}: batched");
            assert_eq!(out[0].finish, Finish::Length);
            let alone = pollster::block_on(generate(
                &lm,
                &TextTokenizer::Bytes,
                &prompts[1..],
                &greedy(want.len()),
                device,
                |_, _| {},
            ))
            .unwrap();
            assert_eq!(
                alone[0].completion_ids, out[1].completion_ids,
                "{name} on {backend}: left padding changes nothing"
            );
        }
    }
}

fn chat_model() -> String {
    fixtures().join("tiny-llama-chat").display().to_string()
}

/// A short DPO run of the chat fixture on 16 yes/no pairs (`extra` flags added), its OUT.
fn tiny_dpo_run(dir: &Path, name: &str, extra: &[(&str, &str)]) -> PathBuf {
    let rows: Vec<Value> = (0..16)
        .map(|i| {
            json!({"prompt": format!("Is thing {i} good?"), "chosen": " yes it is",
                   "rejected": " no it is not"})
        })
        .collect();
    let pairs = write(dir, "pairs.jsonl", &jsonl(&rows));
    let out = dir.join(name);
    let mut command = common::TrainCommand::new("dpo", &chat_model(), &pairs, &out)
        .set("--eval", pairs.display())
        .set("--steps", 10)
        .set("--batch-size", 4)
        .set("--max-length", 64)
        .set("--max-prompt-length", 32);
    for (flag, value) in extra {
        command = command.set(flag, value);
    }
    command.run();
    out
}

fn generate_cli(args: &[&str]) -> std::process::Output {
    let mut argv = vec!["generate", "--backend", "cpu"];
    argv.extend_from_slice(args);
    fairtune(&argv)
}

#[track_caller]
fn lines(output: &std::process::Output) -> Vec<Value> {
    assert!(output.status.success(), "{}", common::stderr(output));
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn the_generate_command() {
    let dir = common::tempdir();
    let model = chat_model();
    let prompts = write(
        dir.path(),
        "prompts.jsonl",
        &jsonl(&[
            json!({"prompt": "The weather is"}),
            json!({"prompt": [{"role": "user", "content": "Hi there!"}]}),
        ]),
    );
    let prompts = prompts.to_str().unwrap();
    let base = [
        "--model",
        &model,
        "--prompts",
        prompts,
        "--jsonl",
        "--max-new-tokens",
        "6",
    ];
    let greedy = lines(&generate_cli(&base));
    assert_eq!(greedy.len(), 2);
    for line in &greedy {
        for key in [
            "prompt",
            "completion",
            "prompt_ids",
            "completion_ids",
            "finish",
        ] {
            assert!(line.get(key).is_some(), "{key}: {line}");
        }
        let ids = line["completion_ids"].as_array().unwrap();
        assert!(!ids.is_empty() && ids.len() <= 6, "{line}");
    }
    // The chat row is rendered with the template (its prompt ids start with the BOS the
    // template writes); the plain one is tokenized as text.
    assert_eq!(greedy[1]["prompt"][0]["role"], "user");
    // Greedy is deterministic; a seed makes sampling so too, and the sample is another text.
    assert_eq!(lines(&generate_cli(&base)), greedy);
    let mut sampled = base.to_vec();
    sampled.extend(["--temperature", "1.5", "--seed", "3"]);
    let a = lines(&generate_cli(&sampled));
    assert_eq!(a, lines(&generate_cli(&sampled)), "same seed, same sample");
    let ids =
        |v: &[Value]| -> Vec<Value> { v.iter().map(|l| l["completion_ids"].clone()).collect() };
    assert_ne!(ids(&a), ids(&greedy), "temperature 1.5 samples");

    // One prompt streams its text to stdout; the JSONL completion for the same prompt equals it.
    let streamed = generate_cli(&[
        "--model",
        &model,
        "--prompt",
        "The weather is",
        "--max-new-tokens",
        "6",
    ]);
    assert!(streamed.status.success(), "{}", common::stderr(&streamed));
    let text = String::from_utf8_lossy(&streamed.stdout);
    assert_eq!(
        text.trim_end_matches('\n'),
        greedy[0]["completion"].as_str().unwrap()
    );

    // A stop string cuts the completion before it: its first non-space character after the
    // first as the stop, so a cut always happens and always shortens it.
    let completion = greedy[0]["completion"].as_str().unwrap();
    let (at, stop) = completion
        .char_indices()
        .skip(1)
        .find(|(_, c)| !c.is_whitespace())
        .map(|(i, c)| (i, c.to_string()))
        .expect("a greedy completion of several characters");
    let mut stopped = base.to_vec();
    stopped.extend(["--stop", &stop]);
    let cut = lines(&generate_cli(&stopped));
    let got = cut[0]["completion"].as_str().unwrap();
    assert_eq!(
        got,
        &completion[..completion.find(stop.as_str()).unwrap().min(at)]
    );
    assert_eq!(cut[0]["finish"], "stop_string", "{}", cut[0]);
}

#[test]
fn generate_refuses_bad_input_with_one_line() {
    let model = chat_model();
    let cases: [(&[&str], &str); 6] = [
        (&["--prompt", "x"], "give --model or --run"),
        (&["--model", &model], "give --prompt TEXT or --prompts"),
        (
            &["--model", &model, "--prompt", "x", "--top-p", "0"],
            "--top-p must be in (0, 1]",
        ),
        (
            &["--model", &model, "--prompt", "x", "--temperature=-1"],
            "--temperature",
        ),
        (
            &[
                "--model",
                &model,
                "--prompt",
                "x",
                "--max-new-tokens",
                "1000",
            ],
            "max_position_embeddings",
        ),
        (
            &["--model", "tiny-bert", "--prompt", "x"],
            "needs a causal LM",
        ),
    ];
    for (args, needle) in cases {
        common::expect_error(&generate_cli(args), 2, needle);
    }
    let dir = common::tempdir();
    common::expect_error(
        &generate_cli(&["--run", dir.path().to_str().unwrap(), "--prompt", "x"]),
        2,
        "no hf/ export",
    );
    common::expect_error(
        &generate_cli(&["--model", "tiny-llama", "--prompt", "x", "--chat"]),
        2,
        "no chat template",
    );
}

/// `generate --run OUT --compare`: the run's base model and its tuned model on the run's first
/// held-out prompts; each side is what `generate` gives for that model alone.
#[test]
fn compare_shows_base_and_tuned_answers_side_by_side() {
    let dir = common::tempdir();
    let out = tiny_dpo_run(dir.path(), "run", &[("--lr", "1e-2")]);
    let run = out.to_str().unwrap();
    let compared = lines(&generate_cli(&[
        "--run",
        run,
        "--compare",
        "--limit",
        "2",
        "--max-new-tokens",
        "5",
        "--jsonl",
    ]));
    assert_eq!(compared.len(), 2, "{compared:?}");
    assert_eq!(compared[0]["prompt"], "Is thing 0 good?");
    assert_eq!(compared[1]["prompt"], "Is thing 1 good?");
    let alone = |model: &[&str]| {
        let mut args = model.to_vec();
        args.extend([
            "--prompt",
            "Is thing 1 good?",
            "--max-new-tokens",
            "5",
            "--jsonl",
        ]);
        lines(&generate_cli(&args))[0]["completion"].clone()
    };
    let model = chat_model();
    assert_eq!(compared[1]["base"], alone(&["--model", &model]));
    assert_eq!(compared[1]["tuned"], alone(&["--run", run]));
    assert_ne!(
        compared[1]["base"], compared[1]["tuned"],
        "training changed the answer"
    );
    common::expect_error(
        &generate_cli(&["--model", &model, "--compare", "--prompt", "x"]),
        2,
        "--compare needs --run",
    );
}

/// `--adapter OUT/adapter` (PEFT's layout) on the base model generates what the run's merged
/// model does; a directory that is not an adapter is one clear error.
#[test]
fn peft_adapters_on_the_base_generate_as_the_merged_run() {
    let dir = common::tempdir();
    let out = tiny_dpo_run(
        dir.path(),
        "lora",
        &[("--lr", "5e-2"), ("--lora-rank", "4")],
    );
    let model = chat_model();
    let adapter = out.join("adapter");
    let ask = |source: &[&str]| {
        let mut args = source.to_vec();
        args.extend([
            "--prompt",
            "Is thing 3 good?",
            "--max-new-tokens",
            "8",
            "--jsonl",
        ]);
        lines(&generate_cli(&args))[0]["completion_ids"].clone()
    };
    let with_adapter = ask(&["--model", &model, "--adapter", adapter.to_str().unwrap()]);
    assert_eq!(with_adapter, ask(&["--run", out.to_str().unwrap()]));
    assert_ne!(
        with_adapter,
        ask(&["--model", &model]),
        "the adapters change the answer"
    );
    common::expect_error(
        &generate_cli(&[
            "--model",
            &model,
            "--adapter",
            dir.path().to_str().unwrap(),
            "--prompt",
            "x",
        ]),
        2,
        "a PEFT adapter directory?",
    );
}

/// `fairtune generate` on the fetched SmolLM2-135M-Instruct GGUF gives transformers' greedy
/// `generate` token for token (tests/fixtures/make_smollm2_generate.py): three chat prompts
/// rendered with the file's template and one plain text, batched in one call.
#[test]
fn smollm2_greedy_generation_matches_transformers() {
    let Some(dir) = common::fetched("smollm2-135m-instruct") else {
        return;
    };
    let fixture = common::read_json(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity/smollm2_generate.json"),
    );
    let cases = fixture["cases"].as_array().unwrap();
    let rows: Vec<Value> = cases
        .iter()
        .map(|c| json!({"prompt": c["prompt"]}))
        .collect();
    let tmp = common::tempdir();
    let prompts = write(tmp.path(), "prompts.jsonl", &jsonl(&rows));
    let model = dir.join("model.gguf");
    let out = lines(&generate_cli(&[
        "--model",
        model.to_str().unwrap(),
        "--prompts",
        prompts.to_str().unwrap(),
        "--jsonl",
        "--max-new-tokens",
        "24",
    ]));
    assert_eq!(out.len(), cases.len());
    for (got, want) in out.iter().zip(cases) {
        assert_eq!(got["prompt_ids"], want["prompt_ids"], "{}", want["prompt"]);
        assert_eq!(
            got["completion_ids"], want["completion_ids"],
            "{}: {:?} vs transformers' {:?}",
            want["prompt"], got["completion"], want["completion"]
        );
        assert_eq!(got["completion"], want["completion"]);
    }
}
