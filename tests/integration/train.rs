//! End-to-end runs of `fairtune train` on the CPU backend and on wgpu.

use std::path::Path;

use serde_json::{Value, json};

use crate::common::{self, TrainCommand, fairtune, jsonl, read_json, stderr, write};

/// Preference pairs whose groups get very different chosen-completion log-probs: group "a"'s
/// chosen completion is one fixed phrase (easy to learn), group "b"'s is different random text
/// for every pair (unlearnable). Without the penalty, DPO opens a wide gap in mean log-prob.
/// Random lowercase words of a given length from a fixed LCG stream seeded with `seed`.
fn random_words(seed: u64) -> impl FnMut(usize) -> String {
    let mut state = seed;
    move |len| {
        (0..len)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                char::from(b'a' + ((state >> 33) % 26) as u8)
            })
            .collect()
    }
}

fn gap_data(dir: &Path) -> (String, String) {
    let mut random_word = random_words(12345);
    let mut rows = Vec::new();
    for i in 0..48 {
        let group = if i % 2 == 0 { "a" } else { "b" };
        let chosen = if group == "a" {
            " sure thing".to_string()
        } else {
            format!(" {}", random_word(10))
        };
        rows.push(json!({
            "prompt": format!("{group}{}:", i % 7),
            "chosen": chosen,
            "rejected": format!(" {}", random_word(10)),
            "group": group,
        }));
    }
    let train = write(dir, "train.jsonl", &jsonl(&rows[..40]));
    let eval = write(dir, "eval.jsonl", &jsonl(&rows[40..]));
    (train.display().to_string(), eval.display().to_string())
}

/// The DPO run most tests start from: tiny-llama on [`gap_data`], β 0.5, evaluated every 10
/// steps, a checkpoint every 4.
fn dpo_run(train: &str, eval: &str, out: impl AsRef<Path>, steps: usize) -> TrainCommand {
    TrainCommand::new("dpo", "tiny-llama", train, out)
        .set("--eval", eval)
        .set("--steps", steps)
        .set("--batch-size", 8)
        .set("--lr", "3e-3")
        .set("--beta", 0.5)
        .set("--seed", 7)
        .set("--checkpoint-every", 4)
        .set("--eval-every", 10)
}

fn metrics(out: &Path) -> Vec<Value> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `train` and `eval` rows written as `NAME-train.jsonl` and `NAME-eval.jsonl`; their paths.
fn write_split(dir: &Path, name: &str, train: &[Value], eval: &[Value]) -> (String, String) {
    let path = |part: &str, rows: &[Value]| {
        write(dir, &format!("{name}-{part}.jsonl"), &jsonl(rows))
            .display()
            .to_string()
    };
    (path("train", train), path("eval", eval))
}

/// `fairtune eval --run RUN --data DATA` on the CPU, its report written to and read from `report`.
#[track_caller]
fn eval_run(run: &Path, data: &str, report: &Path) -> Value {
    let output = fairtune(&[
        "eval",
        "--run",
        run.to_str().unwrap(),
        "--data",
        data,
        "--backend",
        "cpu",
        "--out",
        report.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    read_json(report)
}

/// Each step's loss in `out/metrics.jsonl`.
fn losses(out: &Path) -> Vec<f64> {
    metrics(out)
        .iter()
        .map(|m| m["loss"].as_f64().unwrap())
        .collect()
}

fn check_outputs(out: &Path, report: &Value, steps: usize) {
    let lines = metrics(out);
    assert_eq!(lines.len(), steps, "one metrics line per step");
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["step"], json!(i + 1));
        for key in [
            "loss",
            "task_loss",
            "fairness_F",
            "lambda",
            "rewards/chosen",
            "rewards/rejected",
            "rewards/margins",
            "rewards/accuracies",
            "logps/chosen",
            "logps/rejected",
            "tokens_per_s",
            "group_means",
        ] {
            assert!(
                !line[key].is_null(),
                "metrics line {} lacks {key}: {line}",
                i + 1
            );
        }
        assert!(line["loss"].as_f64().unwrap().is_finite());
    }
    for key in [
        "fairness_F",
        "group_means",
        "rewards/accuracies",
        "tokens_per_s",
    ] {
        assert!(!report[key].is_null(), "report lacks {key}: {report}");
    }
    assert_eq!(report["fairness_set"], json!("eval"));
    assert!(out.join("model.bpk").exists() && out.join("config.json").exists());
    // The Hugging Face export loads back.
    let hf = out.join("hf");
    assert_eq!(report["hf_export"], json!(hf));
    fairtune::model::load_llama(&hf, &crate::common::cpu()).unwrap();
}

#[test]
fn dpo_runs_on_the_cpu_backend() {
    let dir = crate::common::tempdir();
    let (train, eval) = gap_data(dir.path());
    let out = dir.path().join("cpu");
    let report = dpo_run(&train, &eval, &out, 12).run();
    check_outputs(&out, &report, 12);
    assert_eq!(report["backend"], json!("cpu"));
    assert!(
        report["rewards/accuracies"].as_f64().unwrap() > 0.5,
        "{report}"
    );

    // `fairtune eval --run` on the run's own eval file reproduces its final numbers.
    let evaluated = eval_run(&out, &eval, &dir.path().join("eval.json"));
    for key in ["rewards/accuracies", "rewards/margins", "loss", "group_gap"] {
        let (a, b) = (
            evaluated[key].as_f64().unwrap(),
            report[key].as_f64().unwrap(),
        );
        assert!((a - b).abs() < 1e-4, "{key}: eval {a} vs run {b}");
    }
}

/// The same DPO run on wgpu and on the CPU backend, from the same pretrained weights (a
/// random init would differ: each backend has its own generator): the same losses step by step,
/// up to f32 rounding in another order of summation.
#[test]
fn dpo_runs_on_wgpu() {
    let Some(_) = common::wgpu() else { return };
    let dir = crate::common::tempdir();
    let (train, eval) = gap_data(dir.path());
    let model = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/tiny-llama-chat"
    );
    let run = |backend: &str| {
        let out = dir.path().join(backend);
        let report = dpo_run(&train, &eval, &out, 6)
            .set("--model", model)
            .set("--max-length", 64)
            .set("--max-prompt-length", 32)
            .set("--backend", backend)
            .run();
        check_outputs(&out, &report, 6);
        (report, metrics(&out))
    };
    let (report, gpu) = run("wgpu");
    assert!(
        report["backend"].as_str().unwrap().starts_with("wgpu/"),
        "{report}"
    );
    // Full fine-tuning: the device holds the policy and the reference's copy (and Adam's two
    // moments), so burn's pools report at least twice the weights.
    let weights = std::fs::metadata(format!("{model}/model.safetensors"))
        .unwrap()
        .len();
    let device = report["device_memory_bytes"].as_u64().unwrap();
    assert!(
        device >= 2 * weights,
        "{device} bytes on the device, weights {weights}"
    );
    let (cpu_report, cpu) = run("cpu");
    assert!(
        cpu_report.get("device_memory_bytes").is_none(),
        "{cpu_report}"
    );
    for (step, (c, g)) in cpu.iter().zip(&gpu).enumerate() {
        for key in ["loss", "fairness_F", "rewards/margins"] {
            let (c, g) = (c[key].as_f64().unwrap(), g[key].as_f64().unwrap());
            assert!(
                (c - g).abs() < 1e-3 * c.abs().max(1.0),
                "step {}: {key} cpu {c}, wgpu {g}",
                step + 1
            );
        }
    }
}

#[test]
fn devices_lists_the_wgpu_adapter() {
    let Some(selected) = common::wgpu() else {
        return;
    };
    let output = fairtune(&["devices"]);
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    let name = &selected.adapter.as_ref().unwrap().name;
    assert!(text.contains(name.as_str()), "{text}");
    assert!(text.contains("--backend auto takes"), "{text}");
}

/// A run killed after step 5 and resumed ends exactly where the uninterrupted run ends.
#[test]
fn resume_continues_a_killed_run_exactly() {
    let dir = crate::common::tempdir();
    let (train, eval) = gap_data(dir.path());
    let whole = dir.path().join("whole");
    let whole_report = dpo_run(&train, &eval, &whole, 10).run();

    let split = dir.path().join("split");
    let split_run = dpo_run(&train, &eval, &split, 10);
    let halted = split_run.clone().set("--halt-after", 6).output();
    assert_eq!(halted.status.code(), Some(1), "{}", stderr(&halted));
    assert!(!split.join("report.json").exists());
    // Steps 5 and 6 ran after the step-4 checkpoint; the resumed run redoes them.
    let split_report = split_run.clone().switch("--resume").run();

    assert_eq!(losses(&whole), losses(&split));
    // model.bpk embeds random parameter ids, so compare what the weights compute, bit for bit.
    assert!(
        logits_of(&whole) == logits_of(&split),
        "final weights differ"
    );
    assert_eq!(whole_report["fairness_F"], split_report["fairness_F"]);

    // Resuming a finished run, or with different settings, is refused.
    let again = split_run.clone().switch("--resume").output();
    assert_eq!(again.status.code(), Some(2));
    assert!(stderr(&again).contains("already completed"));
    let changed = split_run
        .set("--steps", 12)
        .set("--beta", 0.3)
        .switch("--resume")
        .output();
    assert_eq!(changed.status.code(), Some(2));
    assert!(stderr(&changed).contains("dpo"), "{}", stderr(&changed));
}

/// The tiny-llama logits for a fixed input under the weights saved in `out/model.bpk`.
fn logits_of(out: &Path) -> Vec<f32> {
    use burn::tensor::{Int, Tensor, TensorData};
    use fairtune::model::{self, ArchConfig};
    let device = common::cpu();
    let (ArchConfig::Llama(config), _) = model::resolve("tiny-llama", 264).unwrap() else {
        unreachable!()
    };
    let model =
        fairtune::train::checkpoint::load_module(config.init(&device), &out.join("model.bpk"))
            .unwrap();
    let ids = Tensor::<2, Int>::from_data(
        TensorData::new((1..=12i64).collect::<Vec<_>>(), [1, 12]),
        &device,
    );
    common::to_vec(model.forward(ids))
}

fn gap(report: &Value) -> f64 {
    report["group_gap"].as_f64().unwrap()
}

/// The point of the project: λ > 0 closes the between-group gap that λ = 0 leaves open.
fn lambda_cuts_the_gap(backend: &str) {
    let dir = crate::common::tempdir();
    let (train, eval) = gap_data(dir.path());
    let run = |lambda: &str| {
        let out = dir.path().join(format!("lambda-{lambda}"));
        dpo_run(&train, &eval, &out, 40)
            .set("--backend", backend)
            .set("--fairness-lambda", lambda)
            .run()
    };
    let plain = run("0");
    let fair = run("300");
    eprintln!(
        "{backend}: gap λ=0 {:.4} (F {}), λ=300 {:.4} (F {})",
        gap(&plain),
        plain["fairness_F"],
        gap(&fair),
        fair["fairness_F"]
    );
    assert!(
        gap(&plain) > 0.5,
        "the data should open a gap at λ = 0: {plain}"
    );
    assert!(
        gap(&fair) * 5.0 < gap(&plain),
        "λ = 300 should cut the gap ≥ 5×: {} vs {}",
        gap(&fair),
        gap(&plain)
    );
}

#[test]
fn lambda_cuts_the_group_gap_on_cpu() {
    lambda_cuts_the_gap("cpu");
}

#[test]
fn lambda_cuts_the_group_gap_on_wgpu() {
    let Some(_) = common::wgpu() else { return };
    lambda_cuts_the_gap("wgpu");
}

/// Sentiment rows where an identity word leaks the label (90% of positive reviews come from
/// "northern" guests), and neutral template sentences naming each group as the fairness sets.
fn biased_reviews(dir: &Path) -> [String; 4] {
    let mut state = 99u64;
    let mut next = |n: u64| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) % n
    };
    let (pos, neg) = (
        ["great", "lovely", "excellent", "superb"],
        ["awful", "terrible", "poor", "rude"],
    );
    let rows: Vec<Value> = (0..240)
        .map(|i| {
            let label = i % 2;
            let typical = next(10) < 9;
            let who = if (label == 1) == typical {
                "northern"
            } else {
                "southern"
            };
            let word = if label == 1 {
                pos[next(4) as usize]
            } else {
                neg[next(4) as usize]
            };
            json!({"text": format!("the {who} guest said the room was {word}"), "label": label})
        })
        .collect();
    let fair: Vec<Value> = [
        "guest", "visitor", "family", "couple", "student", "driver", "teacher", "pilot",
    ]
    .iter()
    .flat_map(|noun| {
        ["northern", "southern"]
            .map(|g| json!({"text": format!("the {g} {noun} arrived at the hotel"), "group": g}))
    })
    .collect();
    [
        write(dir, "train.jsonl", &jsonl(&rows[..200])),
        write(dir, "eval.jsonl", &jsonl(&rows[200..])),
        write(dir, "fair.jsonl", &jsonl(&fair[..10])),
        write(dir, "fair_eval.jsonl", &jsonl(&fair[10..])),
    ]
    .map(|p| p.display().to_string())
}

/// The classification run on [`biased_reviews`]: tiny-bert, its fairness sets, λ = `lambda`.
fn classify_run(
    files: &[String; 4],
    out: impl AsRef<Path>,
    steps: usize,
    lambda: f64,
) -> TrainCommand {
    TrainCommand::new("classify", "tiny-bert", &files[0], out)
        .set("--eval", &files[1])
        .set("--fairness-data", &files[2])
        .set("--fairness-eval", &files[3])
        .set("--steps", steps)
        .set("--lr", "1e-3")
        .set("--warmup-steps", 10)
        .set("--batch-size", 16)
        .set("--seed", 3)
        .set("--fairness-lambda", lambda)
}

/// A classifier that learned the leak scores neutral sentences very differently by group;
/// λ > 0 on a separate (MinDiff-style) fairness set closes that gap without losing accuracy.
#[test]
fn classify_lambda_cuts_the_gap_on_cpu() {
    let dir = crate::common::tempdir();
    let files = biased_reviews(dir.path());
    let plain_out = dir.path().join("plain");
    let fair_out = dir.path().join("fair");
    let plain = classify_run(&files, &plain_out, 100, 0.0).run();
    let fair = classify_run(&files, &fair_out, 100, 20.0).run();
    eprintln!(
        "classify: gap λ=0 {:.4} acc {}, λ=20 {:.4} acc {}",
        gap(&plain),
        plain["accuracy"],
        gap(&fair),
        fair["accuracy"]
    );
    assert_eq!(plain["fairness_set"], json!("fairness-eval"));
    assert!(gap(&plain) > 0.3, "the leak should show at λ = 0: {plain}");
    assert!(
        gap(&fair) * 5.0 < gap(&plain),
        "λ = 20 should cut the gap ≥ 5×: {fair}"
    );
    assert!(fair["accuracy"].as_f64().unwrap() >= 0.8, "{fair}");
    let line = &metrics(&fair_out)[0];
    for key in ["accuracy", "fairness_F", "group_means", "group_counts"] {
        assert!(!line[key].is_null(), "metrics lack {key}: {line}");
    }
}

#[test]
fn classify_runs_on_wgpu() {
    let Some(_) = common::wgpu() else { return };
    let dir = crate::common::tempdir();
    let files = biased_reviews(dir.path());
    let out = dir.path().join("wgpu");
    let report = classify_run(&files, &out, 6, 5.0)
        .set("--backend", "wgpu")
        .run();
    assert!(
        report["fairness_F"].as_f64().unwrap().is_finite(),
        "{report}"
    );
    assert_eq!(metrics(&out).len(), 6);
}

/// Fine-tuning the fetched all-MiniLM-L6-v2 on a slice of Rotten Tomatoes: pretrained weights,
/// their tokenizer, a fresh head — and 40 steps that clearly beat the majority class.
#[test]
fn classify_fine_tunes_pretrained_minilm() {
    let Some(_) = common::fetched("all-minilm-l6-v2") else {
        return;
    };
    let Some(data) = common::fetched("rotten-tomatoes") else {
        return;
    };
    let dir = crate::common::tempdir();
    let slice = |name: &str, lines: usize| {
        let text: String = std::fs::read_to_string(data.join(name))
            .unwrap()
            .lines()
            .take(lines)
            .map(|l| format!("{l}\n"))
            .collect();
        write(dir.path(), name, &text).display().to_string()
    };
    let (train, eval) = (slice("train.jsonl", 320), slice("validation.jsonl", 200));
    let out = dir.path().join("minilm");
    let output = TrainCommand::new("classify", "all-minilm-l6-v2", &train, &out)
        .set("--eval", &eval)
        .set("--steps", 40)
        .set("--batch-size", 16)
        .set("--lr", "2e-4")
        .set("--warmup-steps", 5)
        .set("--max-length", 64)
        .output();
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stderr(&output).contains(
            "newly initialized (not in the checkpoint): classifier.weight, classifier.bias"
        )
    );
    // The majority class of this validation slice is 59.5%; 40 steps reach ~77%.
    let report = read_json(&out.join("report.json"));
    assert!(report["accuracy"].as_f64().unwrap() > 0.7, "{report}");
}

/// `--lora-rank`: only adapters train, the reference is the adapters-off model (the first
/// step's rewards are exactly 0), and the run leaves PEFT adapters beside the merged export.
#[test]
fn dpo_with_lora_trains_adapters_only() {
    let dir = crate::common::tempdir();
    let (train, eval) = gap_data(dir.path());
    let out = dir.path().join("lora");
    let report = dpo_run(&train, &eval, &out, 6)
        .set("--lora-rank", 4)
        .set("--lora-targets", "q,v,up")
        .set("--lora-dropout", 0.1)
        .run();
    let (trainable, total) = (
        report["trainable_params"].as_u64().unwrap(),
        report["total_params"].as_u64().unwrap(),
    );
    assert!(trainable * 5 < total, "{trainable} of {total} trainable");
    let first = &metrics(&out)[0];
    for key in ["rewards/chosen", "rewards/rejected"] {
        let reward = first[key].as_f64().unwrap();
        assert!(reward.abs() < 1e-5, "policy = reference at step 1: {first}");
    }
    let last = metrics(&out).pop().unwrap();
    assert_ne!(last["rewards/margins"], json!(0.0), "{last}");
    let adapter = crate::common::read_json(&out.join("adapter/adapter_config.json"));
    assert_eq!(adapter["r"], 4);
    assert!(out.join("adapter/adapter_model.safetensors").exists());
    fairtune::model::load_llama(&out.join("hf"), &crate::common::cpu()).unwrap();
    assert!(
        !out.join("reference.bpk").exists(),
        "no second copy of the model"
    );
}

/// `--reference-cache`: computed once, reused by a later run (same results as computing the
/// reference every step), and refused for other data.
#[test]
fn reference_cache_is_reused_and_checked() {
    let dir = crate::common::tempdir();
    let (train, eval) = gap_data(dir.path());
    let cache = dir.path().join("reference.json");
    let run = |name: &str, cached: bool| {
        let out = dir.path().join(name);
        let mut command = dpo_run(&train, &eval, &out, 4);
        if cached {
            command = command.set("--reference-cache", cache.display());
        }
        (command.output(), out)
    };
    let (plain, plain_out) = run("plain", false);
    assert!(plain.status.success(), "{}", stderr(&plain));
    let (first, first_out) = run("first", true);
    assert!(
        stderr(&first).contains("reference log-probs of"),
        "{}",
        stderr(&first)
    );
    assert!(cache.exists());
    let (second, second_out) = run("second", true);
    assert!(stderr(&second).contains("(checked)"), "{}", stderr(&second));
    for out in [&first_out, &second_out] {
        for (a, b) in metrics(&plain_out).iter().zip(metrics(out)) {
            let (x, y) = (a["loss"].as_f64().unwrap(), b["loss"].as_f64().unwrap());
            assert!((x - y).abs() < 1e-5, "loss {x} vs {y}");
        }
    }
    // Other data, same cache: refused, naming the file.
    let other = dir.path().join("other.jsonl");
    let text = std::fs::read_to_string(&train).unwrap();
    std::fs::write(&other, text.lines().take(20).collect::<Vec<_>>().join("\n")).unwrap();
    let out = dir.path().join("other-run");
    let refused = dpo_run(other.to_str().unwrap(), &eval, &out, 2)
        .set("--reference-cache", cache.display())
        .output();
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("computed for other data or another model"),
        "{}",
        stderr(&refused)
    );
}

/// `fairtune eval --run`: reproduces the run's own held-out accuracy, and on group-tagged
/// labelled data reports the leak the λ = 0 model learned, with bootstrap intervals.
#[test]
fn eval_reports_task_and_group_metrics_of_a_run() {
    let dir = crate::common::tempdir();
    let files = biased_reviews(dir.path());
    let out = dir.path().join("plain");
    let trained = classify_run(&files, &out, 60, 0.0).run();
    let eval = |data: &str, extra: &[&str]| {
        let report_path = dir.path().join("eval.json");
        let mut args = vec![
            "eval",
            "--run",
            out.to_str().unwrap(),
            "--data",
            data,
            "--backend",
            "cpu",
            "--out",
            report_path.to_str().unwrap(),
        ];
        args.extend(extra);
        let output = fairtune(&args);
        assert!(output.status.success(), "{}", stderr(&output));
        (
            read_json(&report_path),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    };
    let (same, _) = eval(&files[1], &[]);
    assert!(
        (same["accuracy"].as_f64().unwrap() - trained["accuracy"].as_f64().unwrap()).abs() < 1e-9,
        "{same} vs {trained}"
    );
    assert!(same["groups"].is_null(), "no groups in that file");

    // The eval rows again, tagged with the group their text names.
    let text = std::fs::read_to_string(&files[1]).unwrap();
    let tagged: Vec<Value> = text
        .lines()
        .map(|l| {
            let mut row: Value = serde_json::from_str(l).unwrap();
            let group = if row["text"].as_str().unwrap().contains("northern") {
                "northern"
            } else {
                "southern"
            };
            row["group"] = json!(group);
            row
        })
        .collect();
    let tagged = write(dir.path(), "tagged.jsonl", &jsonl(&tagged));
    let (report, table) = eval(tagged.to_str().unwrap(), &["--bootstrap", "200"]);
    let dp = report["demographic_parity_difference"].as_f64().unwrap();
    let eo = report["equalized_odds_difference"].as_f64().unwrap();
    let [lo, hi] = [0, 1].map(|i| {
        report["bootstrap"]["demographic_parity_difference"][i]
            .as_f64()
            .unwrap()
    });
    eprintln!(
        "eval: accuracy {} dp {dp:.3} [{lo:.3}, {hi:.3}] eo {eo:.3}",
        report["accuracy"]
    );
    assert!(dp > 0.3, "the learned leak shows: {report}");
    assert!(lo <= dp && dp <= hi, "{lo} ≤ {dp} ≤ {hi}");
    assert_eq!(report["groups"].as_array().unwrap().len(), 2);
    assert_eq!(report["per_class"].as_array().unwrap().len(), 2);
    assert!(
        table.contains("| northern |") && table.contains("95% CI"),
        "{table}"
    );

    // Bad input: one clear error.
    let output = fairtune(&[
        "eval",
        "--run",
        dir.path().to_str().unwrap(),
        "--data",
        &files[1],
    ]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("not a fairtune run"),
        "{}",
        stderr(&output)
    );
}

/// `fairtune sweep`: one run per λ, the trade-off summarized, the suggestion the smallest gap
/// within tolerance; a second invocation reuses finished points instead of retraining.
#[test]
fn sweep_charts_the_trade_off_and_resumes() {
    let dir = crate::common::tempdir();
    let files = biased_reviews(dir.path());
    let out = dir.path().join("sweep");
    let sweep_command = classify_run(&files, &out, 60, 0.0)
        .command("sweep")
        .unset("--fairness-lambda")
        .set("--lambdas", "0,20")
        .set("--tolerance", 0.2);
    let first = sweep_command.output();
    assert!(first.status.success(), "{}", stderr(&first));
    let sweep = read_json(&out.join("sweep.json"));
    let lambdas = sweep["lambdas"].as_array().unwrap();
    assert_eq!(lambdas.len(), 2);
    let (plain, fair) = (&lambdas[0], &lambdas[1]);
    eprintln!("sweep: {plain} / {fair}");
    assert!(fair["gap"].as_f64().unwrap() < plain["gap"].as_f64().unwrap());
    assert_eq!(sweep["metric"], json!("accuracy"));
    assert_eq!(sweep["suggested_lambda"], json!(20.0), "{sweep}");
    assert_eq!(fair["pareto"], json!(true));
    let csv = std::fs::read_to_string(out.join("sweep.csv")).unwrap();
    assert_eq!(csv.lines().count(), 3, "{csv}");
    assert!(String::from_utf8_lossy(&first.stdout).contains("suggested λ = 20"));
    let png = std::fs::read(out.join("pareto.png")).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 5_000,
        "a real PNG"
    );
    let svg = std::fs::read_to_string(out.join("pareto.svg")).unwrap();
    assert!(svg.contains("<svg") && svg.contains("suggested λ = 20") && svg.contains("λ=0"));
    assert!(
        svg.contains("--fairness dp"),
        "the axis names the statistic"
    );
    assert_eq!(sweep["fairness"], json!("dp"));

    // Again: both points reused, same answer.
    let again = sweep_command.output();
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(
        stderr(&again).matches("reusing").count(),
        2,
        "{}",
        stderr(&again)
    );
    let resumed = read_json(&out.join("sweep.json"));
    assert_eq!(resumed["lambdas"], sweep["lambdas"]);
}

/// `--gradient-checkpointing` recomputes each decoder layer in backward: the same losses and
/// gradient norms, step after step, as the run that keeps every activation (full fine-tuning
/// with the fairness penalty, tied embeddings).
#[test]
fn gradient_checkpointing_trains_the_same_run() {
    let dir = common::tempdir();
    let (train, eval) = gap_data(dir.path());
    let mut runs = Vec::new();
    for (name, extra) in [
        ("plain", None),
        ("recomputed", Some("--gradient-checkpointing")),
    ] {
        let out = dir.path().join(name);
        let mut command = dpo_run(&train, &eval, &out, 4).set("--fairness-lambda", 1);
        if let Some(flag) = extra {
            command = command.switch(flag);
        }
        command.run();
        runs.push(metrics(&out));
    }
    assert_eq!(
        (runs[0].len(), runs[1].len()),
        (4, 4),
        "a metrics line per step"
    );
    for (plain, recomputed) in runs[0].iter().zip(&runs[1]) {
        for key in ["loss", "grad_norm", "fairness_F"] {
            let (a, b) = (
                plain[key].as_f64().unwrap(),
                recomputed[key].as_f64().unwrap(),
            );
            assert!(
                (a - b).abs() <= 1e-5 * a.abs().max(1.0),
                "step {}: {key} {a} vs {b}",
                plain["step"]
            );
        }
    }
}

/// TRL's MPO recipe from the command line, with LD-DPO's length weighting: a list of loss types
/// with weights trains, and the run's config.json keeps the list.
#[test]
fn a_weighted_list_of_dpo_losses_trains() {
    let dir = common::tempdir();
    let (train, eval) = gap_data(dir.path());
    let out = dir.path().join("mpo");
    let report = dpo_run(&train, &eval, &out, 3)
        .set("--loss", "sigmoid,bco_pair,sft")
        .set("--loss-weights", "0.8,0.2,1.0")
        .set("--ld-alpha", 0.5)
        .run();
    assert!(
        report["final_train_loss"].as_f64().unwrap().is_finite(),
        "{report}"
    );
    let config = read_json(&out.join("config.json"));
    assert_eq!(
        config["config"]["dpo"]["loss"],
        json!(["sigmoid", "bco_pair", "sft"])
    );
    assert_eq!(
        config["config"]["dpo"]["loss_weights"],
        json!([0.8, 0.2, 1.0])
    );
    assert_eq!(config["config"]["dpo"]["ld_alpha"], json!(0.5));
}

/// Preference pairs of two groups that want opposite answers ("north" says yes, "south" no),
/// the south a 1-in-8 minority in training; evaluation has as many pairs of each group.
fn minority_data(dir: &Path) -> (String, String) {
    let things = [
        "the soup",
        "this film",
        "her plan",
        "the trip",
        "our hotel",
        "his essay",
        "the game",
        "that song",
        "the class",
        "my bike",
        "the park",
        "this book",
    ];
    let pair = |group: &str, i: usize| {
        let (yes, no) = (" yes, it is good.", " no, it is bad.");
        let (chosen, rejected) = if group == "north" {
            (yes, no)
        } else {
            (no, yes)
        };
        json!({"prompt": format!("[{group}] is {} good?", things[i % things.len()]),
               "chosen": chosen, "rejected": rejected, "group": group})
    };
    let train: Vec<Value> = (0..96)
        .map(|i| pair(if i % 8 == 7 { "south" } else { "north" }, i))
        .collect();
    let eval: Vec<Value> = (0..48)
        .map(|i| pair(if i % 2 == 0 { "north" } else { "south" }, i + 5))
        .collect();
    write_split(dir, "minority", &train, &eval)
}

/// Group-robust DPO (Ramesh et al. 2024): where plain DPO learns the majority's preference first
/// and leaves the minority's behind, the worst group's held-out reward accuracy rises (a mean
/// over six seeds: one short run is all-or-nothing on this data); the group losses and weights
/// are logged, and a resumed run continues with the saved weights.
#[test]
fn group_robust_dpo_raises_the_worst_group() {
    let dir = common::tempdir();
    let (train, eval) = minority_data(dir.path());
    let run = |name: String, seed: u64, robust: bool| {
        let mut command = dpo_run(&train, &eval, dir.path().join(name), 12)
            .set("--seed", seed)
            .set("--lr", "1e-3")
            .set("--max-length", 64)
            .set("--max-prompt-length", 32);
        if robust {
            command = command
                .switch("--group-robust")
                .set("--group-robust-step", 1.0);
        }
        command
    };
    let worst = |r: &Value| r["worst_group_reward_accuracy"].as_f64().unwrap();
    let (mut plain, mut robust) = (Vec::new(), Vec::new());
    for seed in 1..=6 {
        plain.push(worst(&run(format!("plain-{seed}"), seed, false).run()));
        robust.push(worst(&run(format!("robust-{seed}"), seed, true).run()));
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    eprintln!(
        "group-robust DPO: worst-group reward accuracy {:.3} → {:.3} (plain {plain:?}, robust \
         {robust:?})",
        mean(&plain),
        mean(&robust)
    );
    assert!(
        mean(&robust) > mean(&plain) + 0.2,
        "{robust:?} vs {plain:?}"
    );
    let robust_run = run("robust-1".into(), 1, true);
    let last = metrics(&robust_run.out()).pop().unwrap();
    let (north, south) = (
        last["group_weight/north"].as_f64().unwrap(),
        last["group_weight/south"].as_f64().unwrap(),
    );
    assert!((north + south - 1.0).abs() < 1e-5, "{last}");
    assert!(last["group_loss/south"].as_f64().is_some(), "{last}");

    // Killed after step 6 and resumed from the step-4 checkpoint: the same losses as the run
    // that went through, so the weights came back with the checkpoint.
    let split = run("split".into(), 1, true);
    let halted = split.clone().set("--halt-after", 6).output();
    assert_eq!(halted.status.code(), Some(1), "{}", stderr(&halted));
    split.clone().switch("--resume").run();
    assert_eq!(losses(&split.out()), losses(&robust_run.out()));

    // Refused: a training pair without a group.
    let ungrouped = write(
        dir.path(),
        "ungrouped.jsonl",
        &jsonl(&[json!({"prompt": "q", "chosen": " a", "rejected": " b"})]),
    );
    let ungrouped = ungrouped.to_str().unwrap();
    let refused = dpo_run(ungrouped, ungrouped, dir.path().join("bad"), 2)
        .switch("--group-robust")
        .output();
    common::expect_error(&refused, 2, "every --train pair needs a \"group\"");
}

/// Labelled reviews tagged with the group their text names. Two in three say plainly what they
/// mean; the rest are neutral ("the room was fine"), and their labels follow the group (80% of
/// the northern guests' neutral reviews are labelled positive, 20% of the southern ones'), so a
/// model learns the group as a cue where the words say nothing: TPR, FPR, precision and
/// accuracy then differ by group. Train and eval, every group × label cell filled.
fn grouped_reviews(dir: &Path) -> (String, String) {
    let mut state = 7u64;
    let mut next = |n: u64| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) % n
    };
    let (pos, neg, neutral) = (
        ["great", "lovely", "excellent", "superb"],
        ["awful", "terrible", "poor", "rude"],
        ["fine", "okay", "average", "normal"],
    );
    let rows: Vec<Value> = (0..600)
        .map(|i| {
            let who = if next(2) == 0 { "northern" } else { "southern" };
            let (word, label) = match i % 3 {
                0 => (pos[next(4) as usize], 1),
                1 => (neg[next(4) as usize], 0),
                _ => {
                    let likely = if who == "northern" { 8 } else { 2 };
                    (neutral[next(4) as usize], i64::from(next(10) < likely))
                }
            };
            json!({"text": format!("the {who} guest said the room was {word}"),
                   "label": label, "group": who})
        })
        .collect();
    write_split(dir, "grouped", &rows[..400], &rows[400..])
}

/// Each statistic that needs labels (equal opportunity, FPR parity, predictive parity, accuracy
/// parity): the classifier that learned the identity word as a cue shows a gap in it at λ = 0,
/// and λ > 0 with that statistic cuts the gap; the report's group means are that statistic.
#[test]
fn each_fairness_statistic_cuts_its_own_gap() {
    let dir = common::tempdir();
    let (train, eval) = grouped_reviews(dir.path());
    let run = |kind: &str, form: &str, lambda: f64| {
        TrainCommand::new(
            "classify",
            "tiny-bert",
            &train,
            dir.path().join(format!("{kind}-{form}-{lambda}")),
        )
        .set("--eval", &eval)
        .set("--steps", 150)
        .set("--lr", "2e-3")
        .set("--warmup-steps", 10)
        .set("--batch-size", 16)
        .set("--seed", 3)
        .set("--fairness", kind)
        .set("--fairness-penalty", form)
        .set("--fairness-lambda", lambda)
        .run()
    };
    for (kind, form, lambda) in [
        ("tpr", "squared", 100.0),
        ("fpr", "squared", 100.0),
        ("ppv", "squared", 100.0),
        ("accuracy", "squared", 1000.0),
        ("tpr", "norm", 0.5),
    ] {
        let (plain, fair) = (run(kind, form, 0.0), run(kind, form, lambda));
        eprintln!(
            "--fairness {kind} --fairness-penalty {form}: gap {:.3} at λ = 0, {:.3} at λ = {lambda} \
             (accuracy {} → {})",
            gap(&plain),
            gap(&fair),
            plain["accuracy"],
            fair["accuracy"]
        );
        assert!(
            gap(&plain) > 0.03,
            "{kind}: no gap to cut at λ = 0: {plain}"
        );
        assert!(
            gap(&fair) < 0.5 * gap(&plain),
            "{kind} {form}: {fair} vs {plain}"
        );
    }
}

/// ORPO from the command line: no reference model is kept (nothing saved for it), and the
/// rewards are β·avg log π, rising for the chosen completions.
#[test]
fn orpo_trains_without_a_reference() {
    let dir = common::tempdir();
    let (train, eval) = gap_data(dir.path());
    let out = dir.path().join("orpo");
    let report = dpo_run(&train, &eval, &out, 6).set("--loss", "orpo").run();
    assert!(
        report["final_train_loss"].as_f64().unwrap().is_finite(),
        "{report}"
    );
    assert!(
        !out.join("reference.bpk").exists(),
        "ORPO needs no reference"
    );
    let lines = metrics(&out);
    let chosen = |i: usize| lines[i]["rewards/chosen"].as_f64().unwrap();
    assert!(chosen(5) > chosen(0), "{:?}", (chosen(0), chosen(5)));
}

/// Parity of what DPO learns for each group: with `--fairness-score reward_margin` (or
/// `reward_accuracy`, σ of it) F equalizes the groups' reward margins on their own preference
/// pairs; on [`gap_data`], where one group's preference is easy and the other's is noise, λ = 0
/// opens a margin gap that λ > 0 closes.
#[test]
fn reward_margin_and_accuracy_parity_for_preference_pairs() {
    let dir = common::tempdir();
    let (train, eval) = gap_data(dir.path());
    for (score, lambda) in [("reward_margin", 30.0), ("reward_accuracy", 300.0)] {
        let run = |lambda: f64| {
            dpo_run(
                &train,
                &eval,
                dir.path().join(format!("{score}-{lambda}")),
                24,
            )
            .set("--fairness-score", score)
            .set("--fairness-lambda", lambda)
            .run()
        };
        let (plain, fair) = (run(0.0), run(lambda));
        eprintln!(
            "--fairness-score {score}: gap {:.3} at λ = 0, {:.3} at λ = {lambda}; reward accuracy \
             {} → {}",
            gap(&plain),
            gap(&fair),
            plain["rewards/accuracies"],
            fair["rewards/accuracies"]
        );
        assert_eq!(plain["fairness_set"], json!("eval"));
        assert!(gap(&plain) > 0.05, "{score}: {plain}");
        assert!(gap(&fair) < 0.5 * gap(&plain), "{score}: {fair} vs {plain}");
    }
    // Pair scores are of --train pairs: a set of completions cannot carry them.
    let completions = write(
        dir.path(),
        "completions.jsonl",
        &jsonl(&[json!({"prompt": "a", "completion": " b", "group": "a"})]),
    );
    let refused = dpo_run(&train, &eval, dir.path().join("bad"), 2)
        .set("--fairness-score", "reward_margin")
        .set("--fairness-data", completions.display())
        .output();
    common::expect_error(&refused, 2, "scores preference pairs");
}

/// TR-DPO (`--sync-ref-model`): with α = 1 every 3 steps the reference becomes the policy, so the
/// step after each sync starts with rewards of exactly 0 — with full fine-tuning and with LoRA
/// (whose reference then becomes a copy of the merged model); a run killed between syncs resumes
/// with the synced reference from its checkpoint; `eval --run` compares against the final one.
#[test]
fn tr_dpo_syncs_the_reference() {
    let dir = common::tempdir();
    let (train, eval) = gap_data(dir.path());
    let synced = |name: &str, lora: bool| {
        let mut command = dpo_run(&train, &eval, dir.path().join(name), 8)
            .switch("--sync-ref-model")
            .set("--ref-model-mixup-alpha", 1.0)
            .set("--ref-model-sync-steps", 3);
        if lora {
            command = command.set("--lora-rank", 4);
        }
        command
    };
    for lora in [false, true] {
        let name = if lora { "lora" } else { "full" };
        let command = synced(name, lora);
        let report = command.run();
        let lines = metrics(&command.out());
        for (step, line) in lines.iter().enumerate() {
            let reward = line["rewards/chosen"].as_f64().unwrap().abs()
                + line["rewards/rejected"].as_f64().unwrap().abs();
            // Steps 1, 4, 7 (after 0, 3, 6 updates) start with policy = reference.
            if step % 3 == 0 {
                assert!(reward < 1e-5, "{name} step {}: {line}", step + 1);
            } else {
                assert!(reward > 1e-4, "{name} step {}: {line}", step + 1);
            }
        }
        // `eval --run` on the eval file reproduces the run's own numbers: same final reference.
        let evaluated = eval_run(
            &command.out(),
            &eval,
            &dir.path().join(format!("{name}-eval.json")),
        );
        let (a, b) = (
            evaluated["rewards/margins"].as_f64().unwrap(),
            report["rewards/margins"].as_f64().unwrap(),
        );
        assert!((a - b).abs() < 1e-4, "{name}: eval {a} vs run {b}");
    }

    // Killed after step 5 (checkpoint at 4, after the sync before step 4): resumed, the same
    // losses as the run that went through.
    let split = synced("split", false);
    let halted = split.clone().set("--halt-after", 5).output();
    assert_eq!(halted.status.code(), Some(1), "{}", stderr(&halted));
    split.clone().switch("--resume").run();
    assert_eq!(losses(&split.out()), losses(&dir.path().join("full")));

    // The reference cache cannot hold a reference that changes.
    let refused = synced("cached", false)
        .set("--reference-cache", dir.path().join("cache.json").display())
        .output();
    common::expect_error(&refused, 2, "drop --reference-cache");
}

/// Unpaired examples of two kinds of answer: " yes, it is good." desirable, " no, it is bad."
/// not, over twelve prompts, the labels alternating.
fn unpaired_data(dir: &Path) -> (String, String) {
    let row = |i: usize| {
        let desirable = i.is_multiple_of(2);
        let completion = if desirable {
            " yes, it is good."
        } else {
            " no, it is bad."
        };
        json!({"prompt": format!("is thing {} good?", i % 12), "completion": completion,
               "label": desirable, "group": if i % 4 < 2 { "a" } else { "b" }})
    };
    let train: Vec<Value> = (0..48).map(row).collect();
    let eval: Vec<Value> = (100..116).map(row).collect();
    write_split(dir, "unpaired", &train, &eval)
}

/// KTO (TRL's KTOTrainer) from the command line: on unpaired rows it learns the desirable
/// answer (the eval reward margin turns positive), logs TRL's KTO metrics with the reference
/// point z₀, and `eval --run` reproduces them; with a reference cache it trains the same run;
/// the unpaired APO-zero trains; a file of pairs is unpaired, as TRL does.
#[test]
fn kto_trains_on_unpaired_examples() {
    let dir = common::tempdir();
    let (train, eval) = unpaired_data(dir.path());
    let out = dir.path().join("kto");
    let report = dpo_run(&train, &eval, &out, 8)
        .set("--loss", "kto")
        .set("--eval-every", 4)
        .run();
    let lines = metrics(&out);
    for key in [
        "kl",
        "rewards/chosen",
        "rewards/rejected",
        "rewards/margins",
        "logps/chosen",
        "logps/rejected",
    ] {
        assert!(lines[7][key].as_f64().is_some(), "{key}: {}", lines[7]);
        assert!(report[key].as_f64().is_some(), "{key}: {report}");
    }
    assert!(
        lines[7].get("rewards/accuracies").is_none(),
        "KTO has no pairs"
    );
    assert!(lines.iter().all(|l| l["kl"].as_f64().unwrap() >= 0.0));
    assert!(
        report["rewards/margins"].as_f64().unwrap() > 0.0,
        "desirable answers gain reward: {report}"
    );
    let evaluated = eval_run(&out, &eval, &dir.path().join("eval.json"));
    for key in ["rewards/margins", "kl", "loss"] {
        let (a, b) = (
            evaluated[key].as_f64().unwrap(),
            report[key].as_f64().unwrap(),
        );
        assert!((a - b).abs() < 1e-4, "{key}: eval {a} vs run {b}");
    }

    let cached_out = dir.path().join("kto-cached");
    dpo_run(&train, &eval, &cached_out, 8)
        .set("--loss", "kto")
        .set("--eval-every", 4)
        .set(
            "--reference-cache",
            dir.path().join("kto-ref.json").display(),
        )
        .run();
    for (a, b) in losses(&out).iter().zip(losses(&cached_out)) {
        assert!((a - b).abs() < 1e-5, "loss {a} vs {b}");
    }

    let apo = dpo_run(&train, &eval, dir.path().join("apo"), 4)
        .set("--loss", "apo_zero_unpaired")
        .run();
    assert_eq!(apo["kl"], json!(0.0), "{apo}");

    let (pairs, pairs_eval) = gap_data(dir.path());
    let out = dir.path().join("kto-pairs");
    let report = dpo_run(&pairs, &pairs_eval, &out, 2)
        .set("--loss", "kto")
        .set("--desirable-weight", 1.2)
        .run();
    assert!(report["loss"].as_f64().unwrap().is_finite(), "{report}");
    let config = read_json(&out.join("config.json"));
    assert_eq!(config["config"]["dpo"]["desirable_weight"], json!(1.2));
}

/// WPO (`--use-weighting`, TRL's `use_weighting`) from the command line: the first step's loss
/// is the plain one times each pair's weight (at step 1 the policy is the reference, so every
/// pair's sigmoid loss is log 2 and the loss is log 2 times the mean weight, < log 2).
#[test]
fn wpo_weights_each_pair_by_its_likelihood() {
    let dir = common::tempdir();
    let (train, eval) = gap_data(dir.path());
    let plain = dir.path().join("plain");
    let weighted = dir.path().join("wpo");
    dpo_run(&train, &eval, &plain, 3).run();
    let report = dpo_run(&train, &eval, &weighted, 3)
        .switch("--use-weighting")
        .run();
    assert!(report["loss"].as_f64().unwrap().is_finite(), "{report}");
    let (a, b) = (losses(&plain), losses(&weighted));
    assert!((a[0] - std::f64::consts::LN_2).abs() < 1e-5, "{a:?}");
    // Weights are probabilities of whole completions under the policy (each < 1).
    assert!(b[0] > 0.0 && b[0] < a[0] * 0.99, "plain {a:?}, WPO {b:?}");
    let config = read_json(&weighted.join("config.json"));
    assert_eq!(config["config"]["dpo"]["use_weighting"], json!(true));
}

/// LoRA DPO on a model of each family that changes the decoder's paths (Gemma 2's soft caps in
/// the fused attention and log-prob backward, √d embeddings, four norms; Phi-3's fused
/// projections as LoRA targets), from GGUF files with their own SentencePiece tokenizers
/// (tests/fixtures/make_spm_gguf.py): training moves the rewards, the adapters are saved under
/// PEFT's names for the family, and the merged export loads back.
#[test]
fn lora_dpo_trains_every_family() {
    let dir = crate::common::tempdir();
    let (train, eval) = gap_data(dir.path());
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf");
    let separate = [
        "down_proj",
        "gate_proj",
        "k_proj",
        "o_proj",
        "q_proj",
        "up_proj",
        "v_proj",
    ];
    let fused = ["down_proj", "gate_up_proj", "o_proj", "qkv_proj"];
    for (arch, targets) in [
        ("llama", &separate[..]),
        ("gemma2", &separate[..]),
        ("phi3", &fused[..]),
    ] {
        let out = dir.path().join(arch);
        let model = fixtures.join(format!("spm-{arch}.gguf"));
        TrainCommand::new("dpo", model.to_str().unwrap(), &train, &out)
            .set("--eval", &eval)
            .set("--steps", 3)
            .set("--batch-size", 4)
            .set("--lr", "1e-2")
            .set("--max-length", 48)
            .set("--max-prompt-length", 24)
            .set("--lora-rank", 4)
            .run();
        let last = metrics(&out).pop().unwrap();
        assert_ne!(last["rewards/margins"], json!(0.0), "{arch}: {last}");
        let adapter = crate::common::read_json(&out.join("adapter/adapter_config.json"));
        let mut names: Vec<&str> = adapter["target_modules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, targets, "{arch}");
        fairtune::model::load_llama(&out.join("hf"), &crate::common::cpu()).unwrap();
    }
}

/// LoRA DPO with the frozen base stored in f16 or bf16 (`--base-dtype`) or its projections in
/// 8- or 4-bit blocks (`--quantize-base`; adapters, optimizer and loss in f32) learns what the
/// f32 run learns on the same data: the same held-out reward accuracy, every step's loss within
/// 2% of f32's (half, q8) or 5% (q4); a killed run resumes to the same losses; `eval --run`
/// rebuilds the stored base; the export (merged in f32) loads back.
#[test]
fn stored_base_lora_dpo_reaches_the_f32_reward_accuracy() {
    let dir = crate::common::tempdir();
    // Every pair learnable (a fixed reply per group against random words), so the held-out
    // accuracy measures what was learned rather than which borderline pair flipped.
    let mut random_word = random_words(777);
    let rows: Vec<Value> = (0..48)
        .map(|i| {
            let group = if i % 2 == 0 { "a" } else { "b" };
            let reply = if group == "a" {
                " sure thing"
            } else {
                " of course"
            };
            json!({"prompt": format!("{group}{}:", i % 7), "chosen": reply,
                   "rejected": format!(" {}", random_word(10)), "group": group})
        })
        .collect();
    let (train, eval) = write_split(dir.path(), "learnable", &rows[..40], &rows[40..]);
    // A model read from a file (f32 safetensors, stored as each tensor is read): what
    // `eval --run` and `--resume` load the frozen base from again.
    let model = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/tiny-llama-chat"
    );
    let command = |flags: &[&str], out: &Path| {
        let mut command = dpo_run(&train, &eval, out, 10)
            .set("--model", model)
            .set("--max-length", 64)
            .set("--max-prompt-length", 32)
            .set("--lora-rank", 8)
            .set("--lr", "1e-2");
        for pair in flags.chunks(2) {
            command = command.set(pair[0], pair[1]);
        }
        command
    };
    let (baseline, baseline_losses) = {
        let out = dir.path().join("f32");
        (command(&[], &out).run(), losses(&out))
    };
    assert!(
        baseline["rewards/accuracies"].as_f64().unwrap() > 0.5,
        "the f32 run learns: {baseline}"
    );
    let variants: [(&str, &[&str], f64); 4] = [
        ("f16", &["--base-dtype", "f16"], 0.02),
        ("bf16", &["--base-dtype", "bf16"], 0.02),
        ("q8", &["--quantize-base", "q8"], 0.02),
        // 4-bit blocks move the trajectory most: 5.2% from f32's at step 9 with these adapters
        // (lr 1e-2), the same reward accuracy.
        (
            "q4",
            &["--quantize-base", "q4", "--base-dtype", "f16"],
            0.075,
        ),
    ];
    for (name, flags, tolerance) in variants {
        let out = dir.path().join(name);
        let report = command(flags, &out).run();
        assert_eq!(
            report["rewards/accuracies"], baseline["rewards/accuracies"],
            "{name}: {report}"
        );
        for (step, (a, b)) in losses(&out).iter().zip(&baseline_losses).enumerate() {
            assert!(
                (a - b).abs() <= tolerance * b.abs().max(0.1),
                "{name} step {}: loss {a} vs f32 {b}",
                step + 1
            );
        }
        fairtune::model::load_llama(&out.join("hf"), &crate::common::cpu()).unwrap();
        // `eval --run` rebuilds the stored base from --model and reads the adapters back.
        let evaluated = eval_run(&out, &eval, &dir.path().join(format!("{name}.json")));
        assert_eq!(
            evaluated["rewards/accuracies"], report["rewards/accuracies"],
            "{name}"
        );
        // A LoRA run on a model from a file records what it trained, not the frozen base
        // (`--model` has that; a randomly drawn base is recorded whole, see tr_dpo_syncs_the_reference).
        let bytes = std::fs::metadata(out.join("model.bpk")).unwrap().len();
        let trainable = report["trainable_params"].as_u64().unwrap();
        let total = report["total_params"].as_u64().unwrap();
        assert!(
            bytes < trainable * 8 + (64 << 10) && bytes < total * 2,
            "{name}: model.bpk is {bytes} bytes for {trainable} trained parameters"
        );
    }
    for (name, flags, _) in variants
        .iter()
        .filter(|(name, ..)| ["f16", "q4"].contains(name))
    {
        let split = dir.path().join(format!("{name}-split"));
        let halted = command(flags, &split).set("--halt-after", 6).output();
        assert_eq!(halted.status.code(), Some(1), "{}", stderr(&halted));
        command(flags, &split).switch("--resume").run();
        assert_eq!(losses(&split), losses(&dir.path().join(name)), "{name}");
    }
}
