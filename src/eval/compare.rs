//! `fairtune compare`: a side-by-side table of finished runs of one task (`OUT/report.json` of
//! each), e.g. λ = 0 against λ > 0, with that task's own metrics as columns.

use std::fmt::Write as _;
use std::path::Path;

use crate::error::{Error, Result};
use crate::train::RunReport;

fn number(value: Option<f64>) -> String {
    match value {
        Some(v) if v.abs() >= 100.0 => format!("{v:.0}"),
        Some(v) => format!("{v:.4}"),
        None => "—".into(),
    }
}

/// A markdown table with one row per run directory.
pub fn table(dirs: &[&Path]) -> Result<String> {
    let Some(first) = dirs.first() else {
        return Err(Error::input("give at least one run directory"));
    };
    let reports = dirs
        .iter()
        .map(|dir| RunReport::read(dir))
        .collect::<Result<Vec<_>>>()?;
    let task = reports[0].task;
    if let Some((dir, other)) = dirs.iter().zip(&reports).find(|(_, r)| r.task != task) {
        return Err(Error::input(format!(
            "{} is a {:?} run and {} a {:?} run; compare runs of one task",
            first.display(),
            task,
            dir.display(),
            other.task
        )));
    }
    let mut groups: Vec<&String> = Vec::new();
    for report in &reports {
        for name in report.held_out.group_means.keys() {
            if !groups.contains(&name) {
                groups.push(name);
            }
        }
    }
    let task_metrics = RunReport::task_columns(task, reports[0].held_out.is_unpaired());
    let mut header = vec!["run".to_string(), "λ".into()];
    header.extend(task_metrics.iter().map(|(_, label)| label.to_string()));
    header.extend(["F".to_string(), "group gap".into()]);
    header.extend(groups.iter().map(|g| format!("mean[{g}]")));
    header.extend(["backend".to_string(), "tokens/s".into()]);

    let mut out = String::new();
    writeln!(out, "| {} |", header.join(" | ")).ok();
    writeln!(out, "|{}", "---|".repeat(header.len())).ok();
    for (dir, report) in dirs.iter().zip(&reports) {
        let held_out = &report.held_out;
        let mut row = vec![dir.display().to_string(), number(Some(report.lambda))];
        row.extend(
            task_metrics
                .iter()
                .map(|(key, _)| number(held_out.metric(key))),
        );
        row.extend([number(held_out.fairness_f), number(held_out.group_gap)]);
        for group in &groups {
            row.push(number(held_out.group_means.get(*group).copied()));
        }
        row.push(report.backend.clone());
        row.push(number(Some(report.tokens_per_s)));
        writeln!(out, "| {} |", row.join(" | ")).ok();
    }
    Ok(out)
}
