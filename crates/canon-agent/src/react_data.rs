//! A multi-hop question set for ReAct built from this machine's package database: pages for
//! Debian packages (version, maintainer, section, priority, dependencies, commands) and for the
//! commands they install (the man page's NAME line, the providing package), and bridge questions
//! that need two searches (and, for dependencies, a lookup past the first five sentences):
//!
//! * `cmd_version`: the version of the package that provides command C;
//! * `cmd_maintainer`: who maintains the package that provides command C;
//! * `dep_version`: the version of the first dependency of package P.
//!
//! Answers are exact strings from the database. Questions are split into train and test by their
//! entity (C or P): an entity's questions are all on one side.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{AgentError, Result};

/// One page of the local encyclopedia.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Page {
    pub title: String,
    pub text: String,
}

/// One question with its answer and the oracle's action path.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Question {
    pub id: String,
    pub split: String,
    pub kind: String,
    pub entity: String,
    pub question: String,
    pub answer: String,
    /// The actions an oracle that knows the answer's path takes, `Finish[...]` last.
    pub path: Vec<String>,
    /// What each step of the path establishes (oracle thoughts).
    pub facts: Vec<String>,
}

#[derive(Debug, Clone, Default)]
struct Pkg {
    name: String,
    version: String,
    maintainer: String,
    section: String,
    priority: String,
    summary: String,
    depends: Vec<String>,
    commands: Vec<String>,
}

/// 64-bit FNV-1a: a stable hash for the split (the same on every machine and build).
pub fn fnv1a(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// `test` for one entity in `test_every` (by hash), else `train`.
pub fn split_of(entity: &str, test_every: u64) -> &'static str {
    if fnv1a(entity).is_multiple_of(test_every.max(1)) {
        "test"
    } else {
        "train"
    }
}

fn parse_status(text: &str) -> Vec<Pkg> {
    let mut out = Vec::new();
    for block in text.split("\n\n") {
        let mut f: HashMap<&str, String> = HashMap::new();
        let mut last = "";
        for line in block.lines() {
            if line.starts_with(' ') {
                continue;
            }
            if let Some((k, v)) = line.split_once(':') {
                last = k;
                f.insert(k, v.trim().to_string());
            }
        }
        let _ = last;
        let installed = f
            .get("Status")
            .is_some_and(|s| s.ends_with("installed") && !s.contains("not-installed"));
        let (Some(name), Some(version)) = (f.get("Package"), f.get("Version")) else {
            continue;
        };
        if !installed {
            continue;
        }
        let maintainer = f
            .get("Maintainer")
            .map(|m| m.split('<').next().unwrap_or("").trim().to_string())
            .unwrap_or_default();
        let deps = f
            .get("Depends")
            .or_else(|| f.get("Pre-Depends"))
            .map(|d| {
                d.split(',')
                    .filter_map(|alt| {
                        let first = alt.split('|').next()?.trim();
                        let name = first.split([' ', '(', ':']).next()?.trim();
                        (!name.is_empty()).then(|| name.to_string())
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push(Pkg {
            name: name.clone(),
            version: version.clone(),
            maintainer,
            section: f.get("Section").cloned().unwrap_or_default(),
            priority: f.get("Priority").cloned().unwrap_or_default(),
            summary: f.get("Description").cloned().unwrap_or_default(),
            depends: deps,
            commands: Vec::new(),
        });
    }
    out
}

fn read_gz(path: &Path) -> Option<String> {
    let f = std::fs::File::open(path).ok()?;
    let mut s = String::new();
    flate2::read::GzDecoder::new(f)
        .take(64 * 1024)
        .read_to_string(&mut s)
        .ok()?;
    Some(s)
}

/// Sources of the question set.
pub struct Sources<'a> {
    /// The package database (`/var/lib/dpkg/status`).
    pub status: &'a Path,
    /// Per-package file lists (`/var/lib/dpkg/info`, `<package>[:arch].list`).
    pub info_dir: &'a Path,
    /// Section-1 man pages (`/usr/share/man/man1`).
    pub man_dir: &'a Path,
}

/// Builds the pages and the questions. `test_every`: one entity in this many goes to test.
pub fn build(src: &Sources, test_every: u64) -> Result<(Vec<Page>, Vec<Question>)> {
    let io = |p: &Path| {
        let p = p.display().to_string();
        move |source| AgentError::Io {
            path: p,
            error: source,
        }
    };
    let status = std::fs::read_to_string(src.status).map_err(io(src.status))?;
    let mut pkgs: BTreeMap<String, Pkg> = parse_status(&status)
        .into_iter()
        .map(|p| (p.name.clone(), p))
        .collect();
    if pkgs.is_empty() {
        return Err(AgentError::Task(format!(
            "{}: expected installed packages (Package/Version/Status blocks), found none",
            src.status.display()
        )));
    }
    // command -> (package, man description)
    let mut cmds: BTreeMap<String, (String, String)> = BTreeMap::new();
    let mut lists: Vec<_> = std::fs::read_dir(src.info_dir)
        .map_err(io(src.info_dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "list"))
        .collect();
    lists.sort();
    for l in lists {
        let stem = l
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let pkg = stem.split(':').next().unwrap_or("").to_string();
        if !pkgs.contains_key(&pkg) {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&l) else {
            continue;
        };
        for line in text.lines() {
            let Some(cmd) = line
                .strip_prefix("/usr/bin/")
                .or_else(|| line.strip_prefix("/bin/"))
            else {
                continue;
            };
            if cmd.contains('/') || cmd.is_empty() || cmds.contains_key(cmd) {
                continue;
            }
            let man = src.man_dir.join(format!("{cmd}.1.gz"));
            let Some(desc) = read_gz(&man)
                .and_then(|t| crate::tasks::man_name_line(&t))
                .map(|(_, d)| d)
            else {
                continue;
            };
            cmds.insert(cmd.to_string(), (pkg.clone(), desc));
        }
    }
    for (c, (p, _)) in &cmds {
        if let Some(pk) = pkgs.get_mut(p) {
            pk.commands.push(c.clone());
        }
    }
    let mut pages = Vec::new();
    for p in pkgs.values() {
        let mut s = format!(
            "{} is a Debian package: {}. Its version is {}. It is maintained by {}. It belongs to section {}. Its priority is {}.",
            p.name,
            p.summary.trim_end_matches('.'),
            p.version,
            if p.maintainer.is_empty() {
                "nobody"
            } else {
                &p.maintainer
            },
            p.section,
            p.priority
        );
        if !p.depends.is_empty() {
            s.push_str(&format!(" It depends on {}.", p.depends.join(", ")));
        }
        if !p.commands.is_empty() {
            let shown: Vec<&str> = p.commands.iter().take(12).map(String::as_str).collect();
            s.push_str(&format!(" It provides the commands {}.", shown.join(", ")));
        }
        pages.push(Page {
            title: p.name.clone(),
            text: s,
        });
    }
    for (c, (p, desc)) in &cmds {
        if pkgs.contains_key(c) {
            continue; // a package page already has this title
        }
        pages.push(Page {
            title: c.clone(),
            text: format!(
                "{c} is a command: {}. The command {c} is provided by the package {p}. Its manual page is in section 1.",
                desc.trim_end_matches('.')
            ),
        });
    }
    let mut qs = Vec::new();
    for (c, (p, _)) in &cmds {
        if pkgs.contains_key(c) {
            continue;
        }
        let Some(pk) = pkgs.get(p) else { continue };
        let split = split_of(c, test_every);
        qs.push(Question {
            id: format!("cmd_version:{c}"),
            split: split.into(),
            kind: "cmd_version".into(),
            entity: c.clone(),
            question: format!(
                "What is the version of the package that provides the command {c}?"
            ),
            answer: pk.version.clone(),
            path: vec![
                format!("Search[{c}]"),
                format!("Search[{p}]"),
                format!("Finish[{}]", pk.version),
            ],
            facts: vec![
                format!("I need to search {c}, find the package that provides it, then find that package's version."),
                format!("The command {c} is provided by the package {p}. I need to search {p} and find its version."),
                format!("The version of {p} is {}. So the answer is {}.", pk.version, pk.version),
            ],
        });
        if !pk.maintainer.is_empty() {
            qs.push(Question {
                id: format!("cmd_maintainer:{c}"),
                split: split.into(),
                kind: "cmd_maintainer".into(),
                entity: c.clone(),
                question: format!("Who maintains the package that provides the command {c}?"),
                answer: pk.maintainer.clone(),
                path: vec![
                    format!("Search[{c}]"),
                    format!("Search[{p}]"),
                    format!("Finish[{}]", pk.maintainer),
                ],
                facts: vec![
                    format!("I need to search {c}, find the package that provides it, then find who maintains that package."),
                    format!("The command {c} is provided by the package {p}. I need to search {p} and find its maintainer."),
                    format!("{p} is maintained by {}. So the answer is {}.", pk.maintainer, pk.maintainer),
                ],
            });
        }
    }
    for p in pkgs.values() {
        let Some(d) = p.depends.first() else { continue };
        let Some(dp) = pkgs.get(d) else { continue };
        qs.push(Question {
            id: format!("dep_version:{}", p.name),
            split: split_of(&p.name, test_every).into(),
            kind: "dep_version".into(),
            entity: p.name.clone(),
            question: format!(
                "What is the version of the first package that {} depends on?",
                p.name
            ),
            answer: dp.version.clone(),
            path: vec![
                format!("Search[{}]", p.name),
                "Lookup[depends]".into(),
                format!("Search[{d}]"),
                format!("Finish[{}]", dp.version),
            ],
            facts: vec![
                format!("I need to search {}, find the first package it depends on, then find that package's version.", p.name),
                format!("The dependencies of {} are not in these sentences. I need to look up depends.", p.name),
                format!("The first package {} depends on is {d}. I need to search {d} and find its version.", p.name),
                format!("The version of {d} is {}. So the answer is {}.", dp.version, dp.version),
            ],
        });
    }
    qs.sort_by(|a, b| (fnv1a(&a.id), &a.id).cmp(&(fnv1a(&b.id), &b.id)));
    Ok((pages, qs))
}

/// Writes JSON lines.
pub fn to_jsonl<T: Serialize>(rows: &[T]) -> String {
    let mut s = String::new();
    for r in rows {
        s.push_str(&serde_json::to_string(r).unwrap_or_default());
        s.push('\n');
    }
    s
}

/// Reads JSON lines, naming the line of an error.
pub fn from_jsonl<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Vec<T>> {
    let text = canon_fs::lines::read_text(path)?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| AgentError::Jsonl {
                path: path.display().to_string(),
                line: i + 1,
                message: format!("expected a JSON object of the expected shape, found {e}"),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gz(path: &Path, text: &str) {
        let f = std::fs::File::create(path).unwrap();
        let mut e = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
        e.write_all(text.as_bytes()).unwrap();
        e.finish().unwrap();
    }

    #[test]
    fn builds_pages_and_bridge_questions() {
        let d = tempfile::tempdir().unwrap();
        let status = d.path().join("status");
        std::fs::write(&status, "Package: coreutils\nStatus: install ok installed\nPriority: required\nSection: utils\nMaintainer: Michael Stone <m@example.org>\nVersion: 9.1-1\nPre-Depends: libc6 (>= 2.34), libacl1\nDescription: GNU core utilities\n long text\n\nPackage: libc6\nStatus: install ok installed\nPriority: optional\nSection: libs\nMaintainer: GNU Libc Maintainers <x@example.org>\nVersion: 2.36-9\nDescription: GNU C Library: Shared libraries\n\nPackage: gone\nStatus: deinstall ok config-files\nVersion: 1\n").unwrap();
        let info = d.path().join("info");
        std::fs::create_dir(&info).unwrap();
        std::fs::write(
            info.join("coreutils.list"),
            "/usr/bin\n/usr/bin/ls\n/bin/cat\n/usr/bin/nodoc\n",
        )
        .unwrap();
        let man = d.path().join("man1");
        std::fs::create_dir(&man).unwrap();
        gz(
            &man.join("ls.1.gz"),
            ".SH NAME\nls \\- list directory contents\n.SH SYNOPSIS\n",
        );
        gz(
            &man.join("cat.1.gz"),
            ".SH NAME\ncat \\- concatenate files and print\n.SH X\n",
        );
        let (pages, qs) = build(
            &Sources {
                status: &status,
                info_dir: &info,
                man_dir: &man,
            },
            2,
        )
        .unwrap();
        let titles: Vec<&str> = pages.iter().map(|p| p.title.as_str()).collect();
        assert_eq!(titles, ["coreutils", "libc6", "cat", "ls"]);
        assert!(
            pages[0]
                .text
                .contains("Its version is 9.1-1. It is maintained by Michael Stone.")
        );
        assert!(
            pages[0]
                .text
                .ends_with("It depends on libc6, libacl1. It provides the commands cat, ls.")
        );
        assert_eq!(
            pages[3].text,
            "ls is a command: list directory contents. The command ls is provided by the package coreutils. Its manual page is in section 1."
        );
        let q = qs.iter().find(|q| q.id == "dep_version:coreutils").unwrap();
        assert_eq!(q.answer, "2.36-9");
        assert_eq!(
            q.path,
            [
                "Search[coreutils]",
                "Lookup[depends]",
                "Search[libc6]",
                "Finish[2.36-9]"
            ]
        );
        let q = qs.iter().find(|q| q.id == "cmd_maintainer:ls").unwrap();
        assert_eq!(q.answer, "Michael Stone");
        assert_eq!(qs.len(), 5);
        // split by entity: both questions about one command land on the same side
        let s: Vec<&str> = qs
            .iter()
            .filter(|q| q.entity == "ls")
            .map(|q| q.split.as_str())
            .collect();
        assert!(s.len() == 2 && s[0] == s[1]);
    }
}
