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
