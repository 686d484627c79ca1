//! Where data files come from: the file system, or texts registered in memory under a path —
//! how the browser build (which has no file system) hands the page's data to the same readers.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

thread_local! {
    static REGISTERED: RefCell<HashMap<PathBuf, Vec<u8>>> = RefCell::new(HashMap::new());
}

/// Make `bytes` readable as `path` (on this thread), in place of any file there.
pub fn register(path: impl Into<PathBuf>, bytes: impl Into<Vec<u8>>) {
    REGISTERED.with(|files| files.borrow_mut().insert(path.into(), bytes.into()));
}

/// Whether `path` names a registered text.
pub fn is_registered(path: &Path) -> bool {
    REGISTERED.with(|files| files.borrow().contains_key(path))
}

/// A registered text, else the file's bytes.
pub fn read(path: &Path) -> std::io::Result<Vec<u8>> {
    match REGISTERED.with(|files| files.borrow().get(path).cloned()) {
        Some(bytes) => Ok(bytes),
        None => std::fs::read(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_texts_shadow_the_file_system() {
        let path = Path::new("/nonexistent/fairtune/registered.jsonl");
        assert!(read(path).is_err());
        register(path, "{\"text\": \"a\"}\n");
        assert_eq!(read(path).unwrap(), b"{\"text\": \"a\"}\n");
        let rows = crate::data::jsonl::read(path).unwrap();
        assert_eq!(rows[0].fields["text"], "a");
    }
}
