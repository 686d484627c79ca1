//! Side-by-side table of finished runs (`OUT/report.json` of each), e.g. λ = 0 against λ > 0.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};

fn read_report(dir: &Path) -> Result<Value> {
    let path = dir.join("report.json");
    let text = std::fs::read_to_string(&path).map_err(|e| {
        Error::input(format!(
            "{}: cannot read ({e}); is {} a finished run?",
            path.display(),
            dir.display()
        ))
    })?;
    serde_json::from_str(&text).map_err(|e| Error::input(format!("{}: {e}", path.display())))
}

fn number(report: &Value, key: &str) -> String {
    match report.get(key).and_then(Value::as_f64) {
        Some(v) if v.abs() >= 100.0 => format!("{v:.0}"),
        Some(v) => format!("{v:.4}"),
        None => "—".into(),
    }
}

/// A markdown table with one row per run directory.
pub fn table(dirs: &[&Path]) -> Result<String> {
    if dirs.is_empty() {
        return Err(Error::input("give at least one run directory"));
    }
    let reports = dirs
        .iter()
        .map(|dir| read_report(dir))
        .collect::<Result<Vec<_>>>()?;
    let mut groups: Vec<String> = Vec::new();
    for report in &reports {
        if let Some(means) = report.get("group_means").and_then(Value::as_object) {
            for name in means.keys() {
                if !groups.contains(name) {
                    groups.push(name.clone());
                }
            }
        }
    }
    let task_metrics: &[(&str, &str)] = match reports[0].get("task").and_then(Value::as_str) {
        Some("classify") => &[("accuracy", "eval accuracy"), ("loss", "eval loss")],
        _ => &[
            ("rewards/accuracies", "reward acc."),
            ("rewards/margins", "reward margin"),
            ("loss", "eval loss"),
        ],
    };
    let mut header = vec!["run".to_string(), "λ".into()];
    header.extend(task_metrics.iter().map(|(_, label)| label.to_string()));
    header.extend(["F".to_string(), "group gap".into()]);
    header.extend(groups.iter().map(|g| format!("mean[{g}]")));
    header.extend(["backend".to_string(), "tokens/s".into()]);

    let mut out = String::new();
    writeln!(out, "| {} |", header.join(" | ")).ok();
    writeln!(out, "|{}", "---|".repeat(header.len())).ok();
    for (dir, report) in dirs.iter().zip(&reports) {
        let mut row = vec![dir.display().to_string(), number(report, "lambda")];
        row.extend(task_metrics.iter().map(|(key, _)| number(report, key)));
        row.extend([number(report, "fairness_F"), number(report, "group_gap")]);
        for group in &groups {
            let mean = report.get("group_means").cloned().unwrap_or(Value::Null);
            row.push(number(&mean, group));
        }
        row.push(
            report
                .get("backend")
                .and_then(Value::as_str)
                .unwrap_or("—")
                .to_string(),
        );
        row.push(number(report, "tokens_per_s"));
        writeln!(out, "| {} |", row.join(" | ")).ok();
    }
    Ok(out)
}
