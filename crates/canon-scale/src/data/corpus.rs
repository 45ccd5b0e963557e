//! The code corpus: every `.py` file under the given roots (the standard library, site-packages),
//! deduplicated by the SHA-256 of its content, with a manifest of where each file came from and
//! under which licence; files are cut into snippets at top-level definitions.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{Result, ScaleError, io_err};

/// Where a root's files come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// The interpreter's standard library (licence: the Python Software Foundation License).
    Stdlib,
    /// Third-party distributions (licence from each `*.dist-info`).
    SitePackages,
}

/// One manifest line per kept file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// Path relative to its root.
    pub path: String,
    pub origin: Origin,
    /// The distribution that installed it (site-packages), if its `RECORD` lists it.
    pub distribution: Option<String>,
    /// `License-Expression`, else `License`, else the `License ::` classifiers, else `unknown`.
    pub licence: String,
    pub sha256: String,
    pub bytes: usize,
}

/// A snippet of a kept file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snippet {
    /// `path#index`.
    pub id: String,
    /// Index of the file in the manifest.
    pub file: usize,
    pub text: String,
}

/// The corpus: kept files (manifest order) and how many duplicates were dropped.
#[derive(Debug, Clone, Default)]
pub struct CodeCorpus {
    pub manifest: Vec<ManifestEntry>,
    pub texts: Vec<String>,
    pub duplicates: usize,
    pub unreadable: usize,
}

/// Hex SHA-256 of a text.
pub fn sha256_hex(text: &str) -> String {
    let d = Sha256::digest(text.as_bytes());
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// The `.py` files under `dir` (path order), never following a symbolic link, skipping
/// `__pycache__`, hidden folders and (for a standard library) its `site-packages`.
fn walk(dir: &Path, skip_site: bool) -> Result<Vec<PathBuf>> {
    canon_fs::walk_files(
        dir,
        |d| {
            let name = canon_fs::walk::file_name(d);
            !(d.is_symlink()
                || name == "__pycache__"
                || name.starts_with('.')
                || (skip_site && (name == "site-packages" || name == "dist-packages")))
        },
        |f| !f.is_symlink() && canon_fs::walk::file_name(f).ends_with(".py"),
    )
    .map_err(|e| io_err(&e.path, e.error))
}

/// Licence of a distribution from its `METADATA` text.
pub fn licence_from_metadata(meta: &str) -> String {
    let mut expr = None;
    let mut lic = None;
    let mut classifiers = Vec::new();
    for line in meta.lines() {
        if line.is_empty() {
            break; // the body (long description) starts after the first blank line
        }
        if let Some(v) = line.strip_prefix("License-Expression:") {
            expr = Some(v.trim().to_string());
        } else if let Some(v) = line.strip_prefix("License:") {
            let v = v.trim();
            if !v.is_empty() && lic.is_none() {
                lic = Some(v.chars().take(80).collect::<String>());
            }
        } else if let Some(v) = line.strip_prefix("Classifier: License ::") {
            classifiers.push(
                v.trim()
                    .trim_start_matches("OSI Approved ::")
                    .trim()
                    .to_string(),
            );
        }
    }
    expr.or(lic)
        .filter(|s| !s.eq_ignore_ascii_case("unknown") && !s.eq_ignore_ascii_case("UNKNOWN"))
        .or_else(|| (!classifiers.is_empty()).then(|| classifiers.join("; ")))
        .unwrap_or_else(|| "unknown".into())
}

/// For site-packages: file path (relative to the root) → (distribution, licence).
fn distributions(root: &Path) -> HashMap<String, (String, String)> {
    let mut map = HashMap::new();
    let Ok(rd) = std::fs::read_dir(root) else {
        return map;
    };
    let mut infos: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .is_some_and(|e| e == "dist-info" || e == "egg-info")
        })
        .collect();
    infos.sort();
    for info in infos {
        let stem = info
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("")
            .to_string();
        let meta = std::fs::read_to_string(info.join("METADATA"))
            .or_else(|_| std::fs::read_to_string(info.join("PKG-INFO")))
            .unwrap_or_default();
        let name = meta
            .lines()
            .find_map(|l| l.strip_prefix("Name:").map(|v| v.trim().to_string()))
            .unwrap_or(stem);
        let licence = licence_from_metadata(&meta);
        let record = std::fs::read_to_string(info.join("RECORD"))
            .or_else(|_| std::fs::read_to_string(info.join("installed-files.txt")))
            .unwrap_or_default();
        for line in record.lines() {
            let path = line.split(',').next().unwrap_or("").trim();
            if path.ends_with(".py") {
                map.insert(path.to_string(), (name.clone(), licence.clone()));
            }
        }
    }
    map
}

/// Reads every `.py` file under each root, keeping the first copy of each content hash.
/// `max_file_bytes` skips larger files (generated tables, vendored bundles).
pub fn collect(roots: &[(PathBuf, Origin)], max_file_bytes: usize) -> Result<CodeCorpus> {
    let mut seen = HashSet::new();
    let mut c = CodeCorpus::default();
    for (root, origin) in roots {
        if !root.is_dir() {
            return Err(ScaleError::Data(format!(
                "expected a folder of Python sources, found nothing at {}",
                root.display()
            )));
        }
        let files = walk(root, *origin == Origin::Stdlib)?;
        let dists = match origin {
            Origin::SitePackages => distributions(root),
            Origin::Stdlib => HashMap::new(),
        };
        for f in files {
            let Ok(text) = std::fs::read_to_string(&f) else {
                c.unreadable += 1;
                continue;
            };
            if text.trim().is_empty() || text.len() > max_file_bytes {
                continue;
            }
            let hash = sha256_hex(&text);
            if !seen.insert(hash.clone()) {
                c.duplicates += 1;
                continue;
            }
            let rel = f
                .strip_prefix(root)
                .unwrap_or(&f)
                .to_string_lossy()
                .into_owned();
            let (distribution, licence) = match origin {
                Origin::Stdlib => (None, "PSF-2.0 (Python standard library)".to_string()),
                Origin::SitePackages => match dists.get(&rel) {
                    Some((d, l)) => (Some(d.clone()), l.clone()),
                    None => (None, "unknown".into()),
                },
            };
            c.manifest.push(ManifestEntry {
                path: rel,
                origin: *origin,
                distribution,
                licence,
                sha256: hash,
                bytes: text.len(),
            });
            c.texts.push(text);
        }
    }
    Ok(c)
}

/// Cuts a file into snippets: a new snippet starts at each top-level `def`, `class` or
/// decorator (column 0) once the current one has at least `min_lines` lines; snippets longer
/// than `max_chars` are cut at a line boundary. Blank snippets are dropped.
pub fn split_snippets(text: &str, min_lines: usize, max_chars: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut lines = 0usize;
    let mut in_decorator = false;
    for line in text.lines() {
        let top = line.starts_with("def ")
            || line.starts_with("class ")
            || line.starts_with("async def ")
            || line.starts_with('@');
        if top && !in_decorator && lines >= min_lines {
            out.push(std::mem::take(&mut cur));
            lines = 0;
        }
        in_decorator = line.starts_with('@');
        if cur.len() + line.len() + 1 > max_chars && lines > 0 {
            out.push(std::mem::take(&mut cur));
            lines = 0;
        }
        cur.push_str(line);
        cur.push('\n');
        lines += 1;
    }
    out.push(cur);
    out.retain(|s| !s.trim().is_empty());
    out
}

/// Snippets of every kept file, in manifest order.
pub fn snippets(c: &CodeCorpus, min_lines: usize, max_chars: usize) -> Vec<Snippet> {
    let mut out = Vec::new();
    for (i, (m, t)) in c.manifest.iter().zip(&c.texts).enumerate() {
        for (k, s) in split_snippets(t, min_lines, max_chars)
            .into_iter()
            .enumerate()
        {
            out.push(Snippet {
                id: format!("{}#{k}", m.path),
                file: i,
                text: s,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_are_dropped_and_licences_kept() {
        let dir = tempfile::tempdir().unwrap();
        let std = dir.path().join("lib");
        let site = std.join("site-packages");
        std::fs::create_dir_all(site.join("pkg")).unwrap();
        std::fs::create_dir_all(site.join("pkg-1.0.dist-info")).unwrap();
        std::fs::write(std.join("a.py"), "x = 1\n").unwrap();
        std::fs::write(std.join("b.py"), "x = 1\n").unwrap(); // duplicate content
        std::fs::write(site.join("pkg/m.py"), "def f():\n    return 2\n").unwrap();
        std::fs::write(site.join("pkg/n.py"), "y = 3\n").unwrap();
        std::fs::write(
            site.join("pkg-1.0.dist-info/METADATA"),
            "Metadata-Version: 2.1\nName: pkg\nLicense: MIT\n\nbody License: GPL\n",
        )
        .unwrap();
        std::fs::write(
            site.join("pkg-1.0.dist-info/RECORD"),
            "pkg/m.py,sha256=x,10\npkg/n.py,sha256=y,6\n",
        )
        .unwrap();
        let c = collect(
            &[(std.clone(), Origin::Stdlib), (site, Origin::SitePackages)],
            1 << 20,
        )
        .unwrap();
        assert_eq!(c.duplicates, 1);
        let paths: Vec<&str> = c.manifest.iter().map(|m| m.path.as_str()).collect();
        assert_eq!(paths, ["a.py", "pkg/m.py", "pkg/n.py"]);
        assert!(c.manifest[0].licence.starts_with("PSF"));
        assert_eq!(c.manifest[1].licence, "MIT");
        assert_eq!(c.manifest[1].distribution.as_deref(), Some("pkg"));
        assert_eq!(c.manifest[0].sha256, sha256_hex("x = 1\n"));
    }

    #[test]
    fn licence_prefers_the_expression_then_classifiers() {
        assert_eq!(
            licence_from_metadata("Name: a\nLicense-Expression: Apache-2.0\nLicense: x\n"),
            "Apache-2.0"
        );
        assert_eq!(
            licence_from_metadata("Name: a\nClassifier: License :: OSI Approved :: BSD License\n"),
            "BSD License"
        );
        assert_eq!(licence_from_metadata("Name: a\n"), "unknown");
    }

    #[test]
    fn snippets_start_at_top_level_definitions() {
        let t =
            "import os\n\n@dec\ndef f():\n    pass\n\ndef g():\n    pass\n\nclass C:\n    x = 1\n";
        let s = split_snippets(t, 2, 10_000);
        assert_eq!(s.len(), 4, "{s:?}");
        assert!(s[1].starts_with("@dec\ndef f"));
        assert!(s[3].starts_with("class C"));
        let long = "x = 1\n".repeat(100);
        assert!(split_snippets(&long, 2, 60).iter().all(|s| s.len() <= 60));
    }
}
