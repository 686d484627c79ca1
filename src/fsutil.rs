//! File helpers every layer uses: writes that are atomic (a killed process never leaves a
//! half-written file behind) and scratch directories that clean up after themselves. The bottom
//! of the house: it imports nothing of the crate but its error type.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// "`path`: cannot `what`: `e`" as a run-time error.
pub(crate) fn io_error(path: &Path, what: &str, e: impl std::fmt::Display) -> Error {
    Error::runtime(format!("{}: cannot {what}: {e}", path.display()))
}

/// Write `bytes` to `path` through a temporary file, a sync and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = fs::File::create(&tmp).map_err(|e| io_error(&tmp, "create", e))?;
    file.write_all(bytes)
        .map_err(|e| io_error(&tmp, "write", e))?;
    file.sync_all().map_err(|e| io_error(&tmp, "sync", e))?;
    fs::rename(&tmp, path).map_err(|e| io_error(path, "rename into place", e))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")));
    Ok(())
}

/// Make a rename in `dir` durable. Best effort: it works on POSIX, not everywhere (Windows).
pub fn sync_dir(dir: &Path) {
    if let Ok(handle) = fs::File::open(dir) {
        let _ = handle.sync_all();
    }
}

/// Flush a written file to disk.
pub fn sync_file(path: &Path) -> Result<()> {
    fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| io_error(path, "sync", e))
}

/// A fresh directory under the system's temporary directory, removed (with what is in it) on
/// drop.
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    /// `fairtune-{tag}-{pid}`, emptied if a crashed run left it behind.
    pub fn new(tag: &str) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("fairtune-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).map_err(|e| io_error(&dir, "create directory", e))?;
        Ok(Self(dir))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
