//! `fairtune sweep`: the same training job for each λ (and seed), each point a full run in its
//! own directory, then the fairness/accuracy trade-off: per-λ means over seeds, the Pareto front
//! (task metric up, group gap down) and a suggested λ — the smallest gap whose task metric stays
//! within `tolerance` of the smallest λ's. Writes `sweep.json`, `sweep.csv` and the Pareto plot
//! (`pareto.png`, `pareto.svg`).
//!
//! Resumable: a point whose `report.json` exists is read, not retrained; a point killed midway
//! continues from its latest checkpoint.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

pub mod plot;

use serde::Serialize;
use serde_json::{Value, json};

use crate::device::Selected;
use crate::error::{Error, Result};
use crate::fsutil::write_atomic;
use crate::train::{self, RunReport, TrainConfig};

pub struct SweepOptions {
    pub lambdas: Vec<f64>,
    pub seeds: Vec<u64>,
    /// Largest drop of the task metric from the baseline λ that a suggestion may cost.
    pub tolerance: f64,
}

/// One finished run.
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    pub lambda: f64,
    pub seed: u64,
    pub metric: f64,
    pub gap: f64,
    pub out: PathBuf,
    pub reused: bool,
}

/// Means over seeds for one λ.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LambdaSummary {
    pub lambda: f64,
    pub runs: usize,
    pub metric: f64,
    pub metric_std: f64,
    pub gap: f64,
    pub gap_std: f64,
    /// Not dominated: no other λ has a metric at least as high and a gap at least as low,
    /// one of them strictly.
    pub pareto: bool,
}

/// The x axis of the Pareto plot: the gap of the statistic the runs equalize.
fn gap_label(base: &TrainConfig) -> String {
    use crate::objective::FairnessKind::*;
    let statistic = match base.fairness {
        Dp => "group mean score",
        Eo => "group mean score within a label",
        Tpr => "group TPR",
        Fpr => "group FPR",
        Ppv => "group precision",
        Accuracy => "group accuracy",
    };
    format!(
        "group gap (max − min {statistic}, --fairness {})",
        base.fairness.name()
    )
}

/// The task metric a sweep of runs like `base` trades against the gap.
pub fn metric_name(base: &TrainConfig) -> &'static str {
    RunReport::task_columns(base.task, base.dpo.is_unpaired())[0].0
}

fn mean_std(values: &[f64]) -> (f64, f64) {
    let n = values.len().max(1) as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

/// Per-λ means (λ ascending) with the Pareto front marked.
pub fn summarize(points: &[Point]) -> Vec<LambdaSummary> {
    let mut lambdas: Vec<f64> = points.iter().map(|p| p.lambda).collect();
    lambdas.sort_by(f64::total_cmp);
    lambdas.dedup();
    let mut out: Vec<LambdaSummary> = lambdas
        .into_iter()
        .map(|lambda| {
            let of: Vec<&Point> = points.iter().filter(|p| p.lambda == lambda).collect();
            let metrics: Vec<f64> = of.iter().map(|p| p.metric).collect();
            let gaps: Vec<f64> = of.iter().map(|p| p.gap).collect();
            let ((metric, metric_std), (gap, gap_std)) = (mean_std(&metrics), mean_std(&gaps));
            LambdaSummary {
                lambda,
                runs: of.len(),
                metric,
                metric_std,
                gap,
                gap_std,
                pareto: false,
            }
        })
        .collect();
    for i in 0..out.len() {
        let dominated = out.iter().enumerate().any(|(j, other)| {
            j != i
                && other.metric >= out[i].metric
                && other.gap <= out[i].gap
                && (other.metric > out[i].metric || other.gap < out[i].gap)
        });
        out[i].pareto = !dominated;
    }
    out
}

/// The λ with the smallest gap among those whose metric is within `tolerance` of the smallest
/// λ's (the baseline, normally λ = 0).
pub fn suggest(summaries: &[LambdaSummary], tolerance: f64) -> Option<f64> {
    let baseline = summaries.first()?;
    summaries
        .iter()
        .filter(|s| s.metric >= baseline.metric - tolerance)
        .min_by(|a, b| a.gap.total_cmp(&b.gap))
        .map(|s| s.lambda)
}

fn point_dir(sweep: &Path, lambda: f64, seed: u64) -> PathBuf {
    sweep.join(format!("lambda-{lambda}-seed-{seed}"))
}

/// Run (or reuse) every point, then summarize into `sweep.json` / `sweep.csv` in `base.out`.
pub fn run(base: &TrainConfig, options: &SweepOptions, selected: &Selected) -> Result<Value> {
    if options.lambdas.is_empty() || options.seeds.is_empty() {
        return Err(Error::input(
            "--lambdas and --seeds must each name at least one value",
        ));
    }
    if let Some(bad) = options
        .lambdas
        .iter()
        .find(|l| !(l.is_finite() && **l >= 0.0))
    {
        return Err(Error::input(format!(
            "--lambdas must be non-negative numbers, got {bad}"
        )));
    }
    if !(options.tolerance.is_finite() && options.tolerance >= 0.0) {
        return Err(Error::input("--tolerance must be a non-negative number"));
    }
    let sweep_dir = base.out.clone();
    std::fs::create_dir_all(&sweep_dir)
        .map_err(|e| Error::runtime(format!("{}: {e}", sweep_dir.display())))?;
    let metric_key = metric_name(base);
    let mut points = Vec::new();
    for &lambda in &options.lambdas {
        for &seed in &options.seeds {
            let out = point_dir(&sweep_dir, lambda, seed);
            let report_path = out.join("report.json");
            let mut config = base.clone();
            config.fairness_lambda = lambda;
            config.seed = seed;
            config.out = out.clone();
            config.resume = out.join("config.json").exists();
            let reused = report_path.exists();
            let report = if reused {
                eprintln!(
                    "sweep: λ = {lambda}, seed {seed}: reusing {}",
                    report_path.display()
                );
                RunReport::read(&out)?
            } else {
                eprintln!("sweep: λ = {lambda}, seed {seed} → {}", out.display());
                train::run(&config, selected)?
            };
            let missing = |what: &str| {
                Error::input(format!(
                    "{}: no {what} (a sweep needs --eval for the task metric and grouped \
                     data for the gap)",
                    report_path.display()
                ))
            };
            points.push(Point {
                lambda,
                seed,
                metric: report
                    .held_out
                    .metric(metric_key)
                    .ok_or_else(|| missing(&format!("{metric_key:?}")))?,
                gap: report
                    .held_out
                    .group_gap
                    .ok_or_else(|| missing("\"group_gap\""))?,
                out,
                reused,
            });
        }
    }
    let summaries = summarize(&points);
    let suggested = suggest(&summaries, options.tolerance);
    plot::pareto(
        &plot::ParetoPlot {
            summaries: &summaries,
            points: &points,
            metric: metric_key,
            gap: &gap_label(base),
            suggested,
            title: &format!("fairness / {metric_key} trade-off over λ"),
        },
        &sweep_dir.join("pareto.png"),
        &sweep_dir.join("pareto.svg"),
    )?;
    let report = json!({
        "metric": metric_key,
        "fairness": base.fairness,
        "tolerance": options.tolerance,
        "suggested_lambda": suggested,
        "lambdas": summaries,
        "points": points,
    });
    write_atomic(
        &sweep_dir.join("sweep.json"),
        serde_json::to_string_pretty(&report)
            .expect("sweep serializes")
            .as_bytes(),
    )?;
    // Through the csv crate: a run directory with a comma or a quote in its name stays one
    // field.
    let mut csv = csv::Writer::from_writer(Vec::new());
    let written = csv
        .write_record(["lambda", "seed", metric_key, "group_gap", "out"])
        .and_then(|()| {
            points.iter().try_for_each(|p| {
                csv.write_record([
                    p.lambda.to_string(),
                    p.seed.to_string(),
                    p.metric.to_string(),
                    p.gap.to_string(),
                    p.out.display().to_string(),
                ])
            })
        });
    let csv = written
        .map_err(|e| e.to_string())
        .and_then(|()| csv.into_inner().map_err(|e| e.to_string()))
        .map_err(|e| Error::runtime(format!("sweep.csv: {e}")))?;
    write_atomic(&sweep_dir.join("sweep.csv"), &csv)?;
    Ok(report)
}

/// The per-λ table for the terminal.
pub fn table(report: &Value) -> String {
    let metric = report["metric"].as_str().unwrap_or("metric");
    let mut out =
        format!("| λ | runs | {metric} | group gap | Pareto |\n|---:|---:|---:|---:|:---:|\n");
    for s in report["lambdas"].as_array().into_iter().flatten() {
        writeln!(
            out,
            "| {} | {} | {:.4} ± {:.4} | {:.4} ± {:.4} | {} |",
            s["lambda"],
            s["runs"],
            s["metric"].as_f64().unwrap_or(f64::NAN),
            s["metric_std"].as_f64().unwrap_or(f64::NAN),
            s["gap"].as_f64().unwrap_or(f64::NAN),
            s["gap_std"].as_f64().unwrap_or(f64::NAN),
            if s["pareto"] == json!(true) {
                "●"
            } else {
                ""
            }
        )
        .ok();
    }
    match report["suggested_lambda"].as_f64() {
        Some(lambda) => writeln!(
            out,
            "suggested λ = {lambda}: the smallest gap with {metric} within {} of the baseline",
            report["tolerance"]
        ),
        None => writeln!(out, "no suggestion"),
    }
    .ok();
    out
}
