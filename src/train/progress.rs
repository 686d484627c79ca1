//! `metrics.jsonl` (one JSON object per logged step) and the progress display.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::fsutil::write_atomic;

pub struct MetricsLog {
    path: PathBuf,
    file: File,
}

impl MetricsLog {
    /// Open for appending. When resuming from step `keep_through`, lines a killed run wrote for
    /// later steps are dropped first, so the file reads as one uninterrupted run.
    pub fn open(path: &Path, keep_through: usize) -> Result<Self> {
        let err = |e: std::io::Error| Error::runtime(format!("{}: {e}", path.display()));
        if keep_through == 0 {
            let file = File::create(path).map_err(err)?;
            return Ok(Self {
                path: path.to_path_buf(),
                file,
            });
        }
        let mut kept = String::new();
        if path.exists() {
            for line in BufReader::new(File::open(path).map_err(err)?).lines() {
                let line = line.map_err(err)?;
                let step = serde_json::from_str::<Value>(&line)
                    .ok()
                    .and_then(|v| v.get("step")?.as_u64());
                if step.is_some_and(|s| s as usize <= keep_through) {
                    kept.push_str(&line);
                    kept.push('\n');
                }
            }
        }
        write_atomic(path, kept.as_bytes())?;
        let file = OpenOptions::new().append(true).open(path).map_err(err)?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
        })
    }

    pub fn write(&mut self, record: &Map<String, Value>) -> Result<()> {
        let line = serde_json::to_string(record).expect("metrics serialize");
        writeln!(self.file, "{line}")
            .and_then(|_| self.file.flush())
            .map_err(|e| Error::runtime(format!("{}: {e}", self.path.display())))
    }
}

/// The one progress-bar style: `prefix`, the bar, `done/total unit`, elapsed and ETA, then the
/// message; on a terminal only (`None` otherwise: logs and CI get plain lines instead).
pub fn terminal_bar(total: usize, unit: &str, prefix: &str) -> Option<ProgressBar> {
    std::io::stderr().is_terminal().then(|| {
        let bar = ProgressBar::new(total as u64);
        let template = format!(
            "{{prefix}}{{bar:30}} {{pos}}/{{len}} {unit} [{{elapsed_precise}}<{{eta_precise}}] {{msg}}"
        );
        bar.set_style(ProgressStyle::with_template(&template).expect("valid template"));
        if !prefix.is_empty() {
            bar.set_prefix(format!("{prefix} "));
        }
        bar
    })
}

/// A training run's progress: a bar on a terminal; a plain line every ~10% of the run otherwise
/// (logs, CI).
pub struct Progress {
    bar: Option<ProgressBar>,
    total: usize,
    every: usize,
}

impl Progress {
    pub fn new(total: usize, start: usize) -> Self {
        let bar = terminal_bar(total, "steps", "");
        if let Some(bar) = &bar {
            bar.set_position(start as u64);
        }
        Self {
            bar,
            total,
            every: (total / 10).max(1),
        }
    }

    pub fn update(&mut self, done: usize, loss: f64, fairness: Option<f64>, tokens_per_s: f64) {
        let fairness = fairness.map(|f| format!(" F {f:.5}")).unwrap_or_default();
        let message = format!("loss {loss:.4}{fairness} {tokens_per_s:.0} tok/s");
        match &self.bar {
            Some(bar) => {
                bar.set_position(done as u64);
                bar.set_message(message);
            }
            None => {
                if done.is_multiple_of(self.every) || done == self.total {
                    eprintln!("step {done}/{} {message}", self.total);
                }
            }
        }
    }

    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish();
        }
    }
}
