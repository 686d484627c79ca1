//! File helpers every layer uses: writes that are atomic (a killed process never leaves a
//! half-written file behind), scratch directories that clean up after themselves, and texts
//! registered in memory under a path — how the browser build (which has no file system) hands the
//! page's data, tokenizer and config to the same readers. The floor of the house: it imports
//! nothing of the crate but its error type.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::rc::Rc;

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

/// A registered file's bytes (shared, so a reader of a model's tensors does not copy the file)
/// and the number of its registration (see [`stamp`]).
type Registered = (u64, Rc<[u8]>);

thread_local! {
    static REGISTERED: RefCell<HashMap<PathBuf, Registered>> = RefCell::new(HashMap::new());
    static REGISTRATIONS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Make `bytes` readable as `path` by [`read`] and [`open`] (on this thread), in place of any
/// file there. A directory's files registered under it make it a directory to [`exists`].
pub fn register(path: impl Into<PathBuf>, bytes: impl Into<Vec<u8>>) {
    let bytes: Rc<[u8]> = Rc::from(bytes.into());
    let number = REGISTRATIONS.with(|n| {
        n.set(n.get() + 1);
        n.get()
    });
    REGISTERED.with(|files| files.borrow_mut().insert(path.into(), (number, bytes)));
}

/// Forget the file registered at `path` and every file registered under it.
pub fn unregister(path: &Path) {
    REGISTERED.with(|files| files.borrow_mut().retain(|p, _| !p.starts_with(path)));
}

/// Which registrations `path` reads now: the registration number of the file registered there
/// or of every file under it (sorted by path; empty for what is only on disk). Equal stamps mean
/// the same bytes, even when a file was registered again under the same name.
pub fn stamp(path: &Path) -> Vec<(PathBuf, u64)> {
    let mut stamp: Vec<(PathBuf, u64)> = REGISTERED.with(|files| {
        files
            .borrow()
            .iter()
            .filter(|(p, _)| p.starts_with(path))
            .map(|(p, (number, _))| (p.clone(), *number))
            .collect()
    });
    stamp.sort();
    stamp
}

/// Whether `path` names a registered text.
pub fn is_registered(path: &Path) -> bool {
    REGISTERED.with(|files| files.borrow().contains_key(path))
}

fn registered(path: &Path) -> Option<Rc<[u8]>> {
    REGISTERED.with(|files| files.borrow().get(path).map(|(_, bytes)| bytes.clone()))
}

/// A registered text, else the file's bytes.
pub fn read(path: &Path) -> std::io::Result<Vec<u8>> {
    match registered(path) {
        Some(bytes) => Ok(bytes.to_vec()),
        None => fs::read(path),
    }
}

/// Whether `path` is registered (or has registered files under it), else exists on disk.
pub fn exists(path: &Path) -> bool {
    is_registered(path)
        || REGISTERED.with(|files| files.borrow().keys().any(|p| p.starts_with(path)))
        || path.exists()
}

/// Something to read and seek in.
pub trait ReadSeek: std::io::Read + std::io::Seek {}
impl<T: std::io::Read + std::io::Seek> ReadSeek for T {}

/// A reader of a registered file (sharing its bytes), else of the file on disk, and its length.
pub fn open(path: &Path) -> std::io::Result<(Box<dyn ReadSeek>, u64)> {
    match registered(path) {
        Some(bytes) => {
            let len = bytes.len() as u64;
            Ok((Box::new(std::io::Cursor::new(bytes)), len))
        }
        None => {
            let file = fs::File::open(path)?;
            let len = file.metadata()?.len();
            Ok((Box::new(file), len))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Seek};

    use super::*;

    #[test]
    fn registered_texts_shadow_the_file_system() {
        let path = Path::new("/nonexistent/fairtune/registered.jsonl");
        assert!(read(path).is_err());
        register(path, "{\"text\": \"a\"}\n");
        assert_eq!(read(path).unwrap(), b"{\"text\": \"a\"}\n");
        assert!(is_registered(path));
        assert!(
            exists(path.parent().unwrap()),
            "a registered file's directory exists"
        );
        let (mut reader, len) = open(path).unwrap();
        let mut tail = String::new();
        reader.seek(std::io::SeekFrom::Start(len - 4)).unwrap();
        reader.read_to_string(&mut tail).unwrap();
        assert_eq!(tail, "a\"}\n");
    }

    #[test]
    fn stamps_change_when_a_file_is_registered_again() {
        let dir = Path::new("/nonexistent/fairtune/stamped");
        assert!(stamp(dir).is_empty(), "nothing registered: no stamp");
        register(dir.join("config.json"), "{}");
        register(dir.join("model.safetensors"), vec![0u8; 8]);
        let first = stamp(dir);
        assert_eq!(first.len(), 2);
        assert_eq!(stamp(dir), first, "the same registrations, the same stamp");
        assert_eq!(stamp(&dir.join("config.json")), first[..1]);
        register(dir.join("model.safetensors"), vec![0u8; 8]);
        assert_ne!(
            stamp(dir),
            first,
            "the same name and bytes registered again"
        );
        unregister(dir);
        assert!(stamp(dir).is_empty() && !exists(dir));
    }
}
