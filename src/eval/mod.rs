//! Evaluation of trained models: `fairtune eval` (here), the bias benchmarks of causal LMs
//! ([`bias`]: `eval --benchmark`), `fairtune compare` ([`compare`]), and the one way to open a
//! finished run ([`run`]). Above `train`: it reuses the tasks' own evaluation.
//!
//! `fairtune eval`: a model's task and fairness metrics on a labelled, group-tagged set.
//!
//! Classifiers get the full report below; finished dpo and ner runs (`--run`) get their task's
//! held-out metrics on the new data (and, for DPO, per-group means and the gap).
//!
//! Task: accuracy, per-class precision/recall/F1. Fairness, per group (the `"group"` field):
//! count, positive rate, TPR, FPR and mean P(positive class), with demographic-parity and
//! equalized-odds differences as Fairlearn defines them and percentile-bootstrap intervals for
//! both. The model is a finished run (`--run OUT`: its settings and `model.bpk`) or a Hugging
//! Face directory / fetched model (`--model`).

#[cfg(not(target_arch = "wasm32"))]
pub mod bias;
pub mod compare;
pub mod run;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use burn::module::Module;
use serde_json::{Value, json};

use crate::device::Selected;
use crate::error::{Error, Result};
use crate::fsutil::write_atomic;
use crate::metrics::{
    GroupRates, bootstrap_interval, demographic_parity_difference, equalized_odds_difference,
    group_rates,
};
use crate::train::classify::ClassifyTask;
use crate::train::{RunDir, Task, TaskRunner, TrainConfig};
use run::FinishedRun;

/// What to evaluate.
pub struct EvalOptions {
    /// A training run's output directory.
    pub run: Option<PathBuf>,
    /// A model (HF directory, fetched model) when there is no run.
    pub model: Option<String>,
    pub tokenizer: Option<PathBuf>,
    pub data: PathBuf,
    pub positive_class: usize,
    pub batch_size: usize,
    pub max_length: usize,
    /// Bootstrap resamples for the gaps' intervals (0: none).
    pub bootstrap: usize,
    pub seed: u64,
}

/// The run's (or a fresh) config, pointed at `data`.
fn config_for(options: &EvalOptions, run: Option<&FinishedRun>) -> Result<TrainConfig> {
    let mut config = match (run, &options.model) {
        (Some(run), None) => run.config.clone(),
        (None, Some(model)) => {
            let mut config = TrainConfig::new(
                Task::Classify,
                options.data.clone(),
                model.clone(),
                PathBuf::new(),
            );
            config.tokenizer = options.tokenizer.clone();
            config.max_length = options.max_length;
            config.max_prompt_length = options.max_length.saturating_sub(1).min(128);
            config.positive_class = options.positive_class;
            config
        }
        _ => return Err(Error::input("give exactly one of --run and --model")),
    };
    if config.task != Task::Classify && options.run.is_none() {
        return Err(Error::input(
            "--model evaluates classifiers; give --run OUT for a dpo or ner run",
        ));
    }
    // The cache was made for the run's own data; here the reference runs on the new data.
    config.reference_cache = None;
    config.train = options.data.clone();
    config.eval = Some(options.data.clone());
    config.fairness_data = None;
    config.fairness_eval = None;
    config.batch_size = options.batch_size;
    config.resume = false;
    Ok(config)
}

fn per_class(probs: &[Vec<f32>], labels: &[usize], num_labels: usize) -> Vec<Value> {
    let predicted: Vec<usize> = probs.iter().map(|p| argmax(p)).collect();
    (0..num_labels)
        .map(|class| {
            let tp = (0..labels.len())
                .filter(|&i| predicted[i] == class && labels[i] == class)
                .count();
            let predicted_n = predicted.iter().filter(|&&p| p == class).count();
            let support = labels.iter().filter(|&&l| l == class).count();
            let prf = crate::metrics::Prf::new(tp, predicted_n, support);
            json!({"class": class, "precision": prf.precision, "recall": prf.recall,
                   "f1": prf.f1, "support": support})
        })
        .collect()
}

fn argmax(p: &[f32]) -> usize {
    p.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i)
}

/// A finished dpo or ner run on new data: the task's own held-out metrics (DPO: TRL's reward
/// metrics against the run's reference model; NER: entity P/R/F1), and for DPO data with groups
/// the per-group mean scores, F and the gap.
fn run_task<T: TaskRunner>(
    task: &mut T,
    config: &TrainConfig,
    run: &FinishedRun,
    selected: &Selected,
    data: &Path,
) -> Result<Value> {
    let device = selected.device.clone().autodiff();
    device.seed(config.seed);
    let model = task.init_model(&device)?;
    // As a resumed run would: the DPO reference is the run's reference.bpk (or, with LoRA, the
    // base model before its adapters).
    task.prepare(&model, RunDir::Existing(&run.dir))?;
    let model = run.load_weights(model, |model, lora| task.apply_lora(model, lora))?;
    let held_out = pollster::block_on(crate::train::held_out(task, &model, &selected.device))?;
    let mut report = json!({"data": data, "task": config.task});
    if let (Value::Object(report), Value::Object(held_out)) = (
        &mut report,
        serde_json::to_value(held_out).expect("numbers serialize"),
    ) {
        report.extend(held_out);
    }
    Ok(report)
}

/// Evaluate; returns the report (also printed as a table by the CLI).
pub fn run(options: &EvalOptions, selected: &Selected) -> Result<Value> {
    let run = options.run.as_deref().map(FinishedRun::open).transpose()?;
    let config = config_for(options, run.as_ref())?;
    if let (Some(run), Task::Dpo | Task::Ner) = (&run, config.task) {
        return match config.task {
            Task::Dpo => {
                let mut task = crate::train::dpo::DpoTask::load(&config, selected)?;
                run_task(&mut task, &config, run, selected, &options.data)
            }
            _ => {
                let mut task = crate::train::ner::NerTask::load(&config, selected)?;
                run_task(&mut task, &config, run, selected, &options.data)
            }
        };
    }
    let task = ClassifyTask::load(&config, selected)?;
    let device = selected.device.clone().autodiff();
    let mut model = task.init_model(&device)?;
    if let Some(run) = &run {
        model = run.load_weights(model, |model, lora| task.apply_lora(model, lora))?;
    }
    let predictions = task.eval_predictions(&model.valid())?;
    let (probs, labels, groups) = (predictions.probs, predictions.labels, predictions.groups);
    let labels: Vec<usize> = labels.iter().map(|l| l.unwrap_or(0) as usize).collect();
    let n = labels.len();
    let positive = config.positive_class;
    let correct = (0..n).filter(|&i| argmax(&probs[i]) == labels[i]).count();

    let names = task.groups().names.clone();
    let grouped: Vec<usize> = (0..n).filter(|&i| groups[i] >= 0).collect();
    let rates_of = |rows: &[usize]| -> Vec<GroupRates> {
        let group_ids: Vec<usize> = rows.iter().map(|&i| groups[i] as usize).collect();
        let predicted: Vec<bool> = rows
            .iter()
            .map(|&i| argmax(&probs[i]) == positive)
            .collect();
        let truth: Vec<bool> = rows.iter().map(|&i| labels[i] == positive).collect();
        let scores: Vec<f64> = rows
            .iter()
            .map(|&i| f64::from(probs[i][positive]))
            .collect();
        group_rates(&names, &group_ids, &predicted, Some(&truth), &scores)
    };
    let mut report = json!({
        "data": options.data,
        "examples": n,
        "accuracy": correct as f64 / n.max(1) as f64,
        "per_class": per_class(&probs, &labels, task.num_labels()),
        "positive_class": positive,
    });
    if !grouped.is_empty() {
        let rates = rates_of(&grouped);
        let resampled = |stat: fn(&[GroupRates]) -> f64| {
            bootstrap_interval(
                grouped.len(),
                options.bootstrap,
                0.95,
                options.seed,
                |idx| {
                    let rows: Vec<usize> = idx.iter().map(|&k| grouped[k]).collect();
                    stat(&rates_of(&rows))
                },
            )
        };
        let dp = demographic_parity_difference(&rates);
        let eo = equalized_odds_difference(&rates);
        let fairness = report.as_object_mut().expect("object");
        fairness.insert("groups".into(), json!(rates));
        fairness.insert("demographic_parity_difference".into(), json!(dp));
        fairness.insert("equalized_odds_difference".into(), json!(eo));
        if options.bootstrap > 0 {
            fairness.insert(
                "bootstrap".into(),
                json!({
                    "resamples": options.bootstrap,
                    "level": 0.95,
                    "demographic_parity_difference": resampled(demographic_parity_difference),
                    "equalized_odds_difference": resampled(equalized_odds_difference),
                }),
            );
        }
    }
    Ok(report)
}

/// The report as a terminal table.
pub fn table(report: &Value) -> String {
    if report.get("per_class").is_none() {
        // dpo / ner: the task's metrics, one per line.
        let mut out = String::new();
        for (key, value) in report.as_object().into_iter().flatten() {
            writeln!(out, "{key}: {value}").ok();
        }
        return out;
    }
    let mut out = String::new();
    let f = |v: &Value| v.as_f64().map_or("-".into(), |x| format!("{x:.4}"));
    writeln!(
        out,
        "{}: {} examples, accuracy {}",
        report["data"].as_str().unwrap_or("?"),
        report["examples"],
        f(&report["accuracy"])
    )
    .ok();
    writeln!(
        out,
        "| class | precision | recall | F1 | support |\n|---|---:|---:|---:|---:|"
    )
    .ok();
    for row in report["per_class"].as_array().into_iter().flatten() {
        writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            row["class"],
            f(&row["precision"]),
            f(&row["recall"]),
            f(&row["f1"]),
            row["support"]
        )
        .ok();
    }
    if let Some(groups) = report["groups"].as_array() {
        writeln!(
            out,
            "\n| group | n | positive rate | TPR | FPR | mean P(positive) |\n|---|---:|---:|---:|---:|---:|"
        )
        .ok();
        for g in groups {
            writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} |",
                g["group"].as_str().unwrap_or("?"),
                g["count"],
                f(&g["positive_rate"]),
                f(&g["tpr"]),
                f(&g["fpr"]),
                f(&g["mean_score"])
            )
            .ok();
        }
        for key in ["demographic_parity_difference", "equalized_odds_difference"] {
            let interval = &report["bootstrap"][key];
            let ci = match (interval[0].as_f64(), interval[1].as_f64()) {
                (Some(lo), Some(hi)) => format!(" (95% CI {lo:.4} – {hi:.4})"),
                _ => String::new(),
            };
            writeln!(out, "{key}: {}{ci}", f(&report[key])).ok();
        }
    }
    out
}

/// Write the report next to nothing the user had: `path` is replaced atomically.
pub fn write(report: &Value, path: &Path) -> Result<()> {
    write_atomic(
        path,
        serde_json::to_string_pretty(report)
            .expect("report serializes")
            .as_bytes(),
    )
}
