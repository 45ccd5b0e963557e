//! The one file walker of the workspace: every file below a folder, in path order, using only the
//! standard library.

use std::io;
use std::path::{Path, PathBuf};

/// A folder the walker could not list.
#[derive(Debug)]
pub struct WalkError {
    pub path: PathBuf,
    pub error: io::Error,
}

impl std::fmt::Display for WalkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot list {}: {}", self.path.display(), self.error)
    }
}

impl std::error::Error for WalkError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

/// Every file below `root` (a file `root` is returned alone), sorted by path, so the order is the
/// same on every machine. A sub-folder for which `descend(path)` is false is not entered; a file
/// is kept when `keep(path)` is true. Symbolic links are followed (a caller that must not follow
/// them says so in `descend` and `keep`). Entries that vanish while the walk runs are skipped;
/// a folder that cannot be listed is an error naming it.
pub fn walk_files(
    root: &Path,
    mut descend: impl FnMut(&Path) -> bool,
    mut keep: impl FnMut(&Path) -> bool,
) -> Result<Vec<PathBuf>, WalkError> {
    let meta = std::fs::metadata(root).map_err(|error| WalkError {
        path: root.to_path_buf(),
        error,
    })?;
    if meta.is_file() {
        return Ok(if keep(root) {
            vec![root.to_path_buf()]
        } else {
            Vec::new()
        });
    }
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let rd = std::fs::read_dir(&dir).map_err(|error| WalkError {
            path: dir.clone(),
            error,
        })?;
        for entry in rd.flatten() {
            let p = entry.path();
            if p.is_dir() {
                if descend(&p) {
                    stack.push(p);
                }
            } else if p.is_file() && keep(&p) {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The last component of `p` as text (empty when it is not UTF-8).
pub fn file_name(p: &Path) -> &str {
    p.file_name().and_then(|s| s.to_str()).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_in_path_order_and_prunes() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        for f in ["b/z.py", "b/a.txt", "a.py", "skip/x.py", "b/c/d.py"] {
            let p = r.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, "x").unwrap();
        }
        let got = walk_files(
            r,
            |p| file_name(p) != "skip",
            |p| file_name(p).ends_with(".py"),
        )
        .unwrap();
        let rel: Vec<String> = got
            .iter()
            .map(|p| p.strip_prefix(r).unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(rel, ["a.py", "b/c/d.py", "b/z.py"]);
        // A file root is itself; a missing root is an error naming it.
        assert_eq!(
            walk_files(&r.join("a.py"), |_| true, |_| true)
                .unwrap()
                .len(),
            1
        );
        let e = walk_files(&r.join("nope"), |_| true, |_| true).unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
    }
}
