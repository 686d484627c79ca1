//! Helpers shared by the integration tests.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use burn::tensor::{Device, Int, Tensor, TensorData};
use fairtune::device::{self, BackendChoice, Selected};

/// A fresh directory under the system temp dir, removed on drop. (Not the `tempfile` crate: as
/// a dev-dependency it changes a shared dependency's features, and that rebuilds all of burn for
/// the tests.)
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn tempdir() -> TempDir {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "fairtune-test-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    TempDir(dir)
}

/// The wgpu device, or `None` when FAIRTUNE_SKIP_WGPU is set. Without an adapter and without
/// that variable, the test fails: a silently skipped GPU test would prove nothing.
pub fn wgpu() -> Option<Selected> {
    if std::env::var_os("FAIRTUNE_SKIP_WGPU").is_some() {
        eprintln!("FAIRTUNE_SKIP_WGPU is set: skipping the wgpu part of this test");
        return None;
    }
    match device::select(BackendChoice::Wgpu) {
        // wgpu's GL backend panics in its device-poll thread when a kernel outruns the GL
        // context lock (seconds: a software rasterizer's larger matmuls), and the run then
        // waits forever: seen with SmolLM2's forward on llvmpipe through GL.
        Ok(selected)
            if selected
                .adapter
                .as_ref()
                .is_some_and(|a| a.api == "GL" && a.device_type == "Cpu") =>
        {
            panic!(
                "the only wgpu adapter is a software GL one, on which long kernels hang; \
                 install Mesa's software Vulkan (mesa-vulkan-drivers libvulkan1) or set \
                 FAIRTUNE_SKIP_WGPU=1"
            )
        }
        Ok(selected) => Some(selected),
        Err(e) => panic!(
            "no wgpu adapter ({e}); install Mesa's software Vulkan (mesa-vulkan-drivers libvulkan1) \
             or set FAIRTUNE_SKIP_WGPU=1"
        ),
    }
}

/// A fetched asset's directory: fetched now if missing (pip, network). With FAIRTUNE_OFFLINE set
/// and the asset absent, `None` (the test is skipped, loudly).
pub fn fetched(name: &str) -> Option<PathBuf> {
    use fairtune::fetch;
    if let Ok(dir) = fetch::require(name) {
        return Some(dir);
    }
    if std::env::var_os("FAIRTUNE_OFFLINE").is_some() {
        eprintln!("FAIRTUNE_OFFLINE is set and {name} is not fetched: skipping");
        return None;
    }
    let asset = fetch::asset(name).expect("known asset");
    let cache = fetch::cache_dir().expect("cache dir");
    match fetch::fetch(asset, &cache) {
        Ok((dir, _)) => Some(dir),
        Err(e) => panic!("cannot fetch {name} ({e}); set FAIRTUNE_OFFLINE=1 to skip"),
    }
}

pub fn cpu() -> Device {
    Device::flex()
}

pub fn floats(values: &[f32], device: &Device) -> Tensor<1> {
    Tensor::from_data(TensorData::new(values.to_vec(), [values.len()]), device)
}

pub fn ints(values: &[i64], device: &Device) -> Tensor<1, Int> {
    Tensor::from_data(TensorData::new(values.to_vec(), [values.len()]), device)
}

pub fn to_vec<const D: usize>(tensor: Tensor<D>) -> Vec<f32> {
    tensor
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .expect("f32 data")
}

pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write test file");
    path
}

pub fn jsonl(rows: &[serde_json::Value]) -> String {
    rows.iter().map(|r| format!("{r}\n")).collect()
}

/// Run the fairtune binary.
pub fn fairtune(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fairtune"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("run fairtune")
}

/// A `fairtune train` (or `sweep`) command line, built flag by flag: it starts from the four
/// flags every run needs and `--backend cpu`, and [`Self::set`] replaces a flag already there,
/// so a test names only what it changes.
#[derive(Clone, Debug)]
pub struct TrainCommand {
    command: &'static str,
    flags: Vec<(String, Option<String>)>,
}

impl TrainCommand {
    pub fn new(task: &str, model: &str, train: impl AsRef<Path>, out: impl AsRef<Path>) -> Self {
        let command = Self {
            command: "train",
            flags: Vec::new(),
        };
        command
            .set("--task", task)
            .set("--model", model)
            .set("--train", train.as_ref().display())
            .set("--out", out.as_ref().display())
            .set("--backend", "cpu")
    }

    /// The same flags for another subcommand that takes them all (`sweep`).
    pub fn command(mut self, command: &'static str) -> Self {
        self.command = command;
        self
    }

    /// `flag value`, in place of any earlier value of `flag`.
    pub fn set(mut self, flag: &str, value: impl std::fmt::Display) -> Self {
        let value = Some(value.to_string());
        match self.flags.iter_mut().find(|(name, _)| name == flag) {
            Some(slot) => slot.1 = value,
            None => self.flags.push((flag.to_string(), value)),
        }
        self
    }

    /// A flag without a value (`--resume`).
    pub fn switch(mut self, flag: &str) -> Self {
        if !self.flags.iter().any(|(name, _)| name == flag) {
            self.flags.push((flag.to_string(), None));
        }
        self
    }

    /// Without `flag` (and its value).
    pub fn unset(mut self, flag: &str) -> Self {
        self.flags.retain(|(name, _)| name != flag);
        self
    }

    pub fn argv(&self) -> Vec<String> {
        let mut argv = vec![self.command.to_string()];
        for (flag, value) in &self.flags {
            argv.push(flag.clone());
            argv.extend(value.clone());
        }
        argv
    }

    /// The `--out` directory.
    pub fn out(&self) -> PathBuf {
        let (_, value) = self
            .flags
            .iter()
            .find(|(name, _)| name == "--out")
            .expect("--out is set in new");
        PathBuf::from(value.as_deref().expect("--out has a value"))
    }

    pub fn output(&self) -> Output {
        let argv = self.argv();
        fairtune(&argv.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// Run it, expect success, and return `OUT/report.json`.
    #[track_caller]
    pub fn run(&self) -> serde_json::Value {
        let output = self.output();
        assert!(
            output.status.success(),
            "fairtune {:?} failed:\n{}",
            self.argv(),
            stderr(&output)
        );
        read_json(&self.out().join("report.json"))
    }
}

/// A refused command: exit `code`, exactly one `error:` line on stderr, containing `needle`, and
/// no panic.
#[track_caller]
pub fn expect_error(output: &Output, code: i32, needle: &str) {
    let err = stderr(output);
    assert_eq!(
        output.status.code(),
        Some(code),
        "exit code; stderr:\n{err}"
    );
    let error_lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(error_lines.len(), 1, "one error line; stderr:\n{err}");
    assert!(
        error_lines[0].contains(needle),
        "{:?} should mention {needle:?}",
        error_lines[0]
    );
    assert!(
        !err.contains("internal failure") && !err.contains("panicked"),
        "no panic: {err}"
    );
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

pub fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("read json")).expect("parse json")
}

pub fn assert_close(got: &[f32], want: &[f64], rel: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let tolerance = rel * w.abs().max(1.0);
        assert!(
            (g as f64 - w).abs() <= tolerance,
            "{what}[{i}]: got {g}, want {w} (tolerance {tolerance:e})"
        );
    }
}
