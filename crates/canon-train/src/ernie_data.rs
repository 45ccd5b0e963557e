//! ERNIE's knowledge and text (paper 6), built deterministically from the Python standard library
//! sources on this machine — no download, no Python at run time.
//!
//! Knowledge graph. Every `.py` file outside `test`/`tests`/`idle_test` folders and `site-packages`
//! is a module entity (`json/decoder.py` → `json.decoder`, `json/__init__.py` → `json`). A module's
//! top-level `class` and `def` statements and the `def`s directly in the body of a top-level class
//! are class and function entities (`json.decoder.JSONDecoder`, `json.decoder.JSONDecoder.decode`);
//! names starting with `_` are left out. Relations, read from the code with strings and comments
//! blanked out:
//! - `defined_in` (top-level class/function → module), `method_of` (method → class),
//! - `submodule_of` (module → its package, when the package is a module of the graph),
//! - `subclass_of` (class → base class named in its `class` line and resolved),
//! - `imports` (module → module, from `import a.b` and `from a.b import c` lines),
//! - `calls` (function/method/class/module → entity, a name followed by `(` in its body that
//!   resolves to an entity).
//!
//! Name resolution in module `m`: the first component of a dotted name is looked up among `m`'s own
//! definitions, then among its import aliases (`import a.b as x`, `from a import b`); the rest is
//! appended and the whole qualified name must be an entity.
//!
//! Text: docstrings (every triple-quoted string) split into paragraphs at blank lines, and runs of
//! consecutive `#` comment lines, each with the module it comes from. Paragraphs of fewer than
//! [`MIN_WORDS`] words, or where fewer than half the words are letters, are dropped.
//!
//! Words: `[A-Za-z_][A-Za-z0-9_]*`, digit runs, or any other single non-space character.
//!
//! Mention alignment (exact match, see [`Linker`]): a run of words `a.b.c` written without spaces is
//! tried longest prefix first as (1) a qualified entity name, (2) a name defined in the paragraph's
//! module, (3) an import alias of that module; a single word also as (4) a class or function name
//! defined exactly once in the graph. A single word is accepted only when it looks like code: it
//! heads a dotted name (`math` in `math.pi`), contains `_`, a digit or an upper-case letter after the
//! first, or is followed by `(`; a module name also when next to the word `module` or after
//! `import`; a capitalised class name also when it does not start a sentence. The
//! entity is aligned to the *first word* of the mention (as in the paper); the other words of the
//! mention carry no entity.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::{Result, TrainError, io_err};

/// Paragraphs with fewer words are dropped.
pub const MIN_WORDS: usize = 6;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EntityKind {
    Module,
    Class,
    Function,
}

impl EntityKind {
    pub const ALL: [EntityKind; 3] = [EntityKind::Module, EntityKind::Class, EntityKind::Function];
    pub fn index(self) -> usize {
        self as usize
    }
    pub fn name(self) -> &'static str {
        ["module", "class", "function"][self as usize]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Relation {
    DefinedIn,
    MethodOf,
    SubmoduleOf,
    SubclassOf,
    Imports,
    Calls,
}

impl Relation {
    pub const ALL: [Relation; 6] = [
        Relation::DefinedIn,
        Relation::MethodOf,
        Relation::SubmoduleOf,
        Relation::SubclassOf,
        Relation::Imports,
        Relation::Calls,
    ];
    pub fn name(self) -> &'static str {
        [
            "defined_in",
            "method_of",
            "submodule_of",
            "subclass_of",
            "imports",
            "calls",
        ][self as usize]
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Entity {
    /// Qualified name, e.g. `json.decoder.JSONDecoder`.
    pub name: String,
    pub kind: EntityKind,
}

/// `(head, relation, tail)` as entity and relation indices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Triple {
    pub h: u32,
    pub r: u32,
    pub t: u32,
}

/// One source file: its module name, path and text.
#[derive(Debug, Clone)]
pub struct SourceFile {
    pub module: String,
    pub path: PathBuf,
    pub text: String,
}

/// A paragraph of docstring or comment text, with the module it comes from.
#[derive(Debug, Clone)]
pub struct TextUnit {
    pub module: String,
    /// `file:line` of the paragraph's first line.
    pub origin: String,
    pub text: String,
}

#[derive(Debug, Clone, Default)]
pub struct KnowledgeGraph {
    pub entities: Vec<Entity>,
    pub index: HashMap<String, u32>,
    /// Sorted, without duplicates.
    pub triples: Vec<Triple>,
    /// Per module: local definitions and import aliases → qualified names (for resolution).
    scopes: HashMap<String, Scope>,
}

#[derive(Debug, Clone, Default)]
struct Scope {
    /// Short name → qualified name (module's own classes and functions).
    local: HashMap<String, String>,
    /// Alias → qualified module or entity name.
    alias: HashMap<String, String>,
}

/// The `.py` files under `dir` (sorted by module name), skipping test folders and `site-packages`.
pub fn stdlib_sources(dir: &Path) -> Result<Vec<SourceFile>> {
    let files = canon_fs::walk_files(
        dir,
        |d| {
            let name = canon_fs::walk::file_name(d);
            let skip = ["site-packages", "__pycache__", "test", "tests", "idle_test"];
            !skip.contains(&name) && !name.starts_with('.') && !name.contains('-')
        },
        |f| canon_fs::walk::file_name(f).ends_with(".py"),
    )
    .map_err(|e| io_err(&e.path, e.error))?;
    let mut out = Vec::new();
    for p in files {
        let Some(stem) = canon_fs::walk::file_name(&p).strip_suffix(".py") else {
            continue;
        };
        let Ok(rel) = p.strip_prefix(dir) else {
            continue;
        };
        let mut parts: Vec<String> = rel
            .parent()
            .into_iter()
            .flat_map(|q| q.iter())
            .map(|c| c.to_string_lossy().into_owned())
            .collect();
        if stem != "__init__" {
            parts.push(stem.to_string());
        }
        if parts.is_empty() || parts.iter().any(|c| !is_identifier(c)) {
            continue;
        }
        // Non-UTF-8 files are skipped (a few legacy test fixtures).
        if let Ok(text) = std::fs::read_to_string(&p) {
            out.push(SourceFile {
                module: parts.join("."),
                path: p.clone(),
                text,
            });
        }
    }
    if out.is_empty() {
        return Err(TrainError::Data(format!(
            "no Python sources under {}",
            dir.display()
        )));
    }
    out.sort_by(|a, b| a.module.cmp(&b.module));
    out.dedup_by(|a, b| a.module == b.module);
    Ok(out)
}

mod scan;
mod text;

use scan::*;
pub use text::{Linker, Word, text_units, words};

impl KnowledgeGraph {
    fn add_entity(&mut self, name: String, kind: EntityKind) -> u32 {
        if let Some(&i) = self.index.get(&name) {
            return i;
        }
        let i = self.entities.len() as u32;
        self.index.insert(name.clone(), i);
        self.entities.push(Entity { name, kind });
        i
    }

    pub fn id(&self, name: &str) -> Option<u32> {
        self.index.get(name).copied()
    }

    pub fn count(&self, kind: EntityKind) -> usize {
        self.entities.iter().filter(|e| e.kind == kind).count()
    }

    pub fn count_relation(&self, r: Relation) -> usize {
        self.triples.iter().filter(|t| t.r == r as u32).count()
    }

    /// Resolves a dotted `name` used in `module` to an entity (see the module header).
    pub fn resolve(&self, module: &str, name: &str) -> Option<u32> {
        let (first, rest) = match name.split_once('.') {
            Some((f, r)) => (f, Some(r)),
            None => (name, None),
        };
        let scope = self.scopes.get(module)?;
        let base = scope.local.get(first).or_else(|| scope.alias.get(first))?;
        let full = match rest {
            Some(r) => format!("{base}.{r}"),
            None => base.clone(),
        };
        self.id(&full)
    }

    /// Builds the graph from `files` (see the module header for what is read).
    pub fn build(files: &[SourceFile]) -> Self {
        let mut kg = KnowledgeGraph::default();
        let scanned: Vec<Scanned> = files.iter().map(|f| scan(&f.text)).collect();
        // Pass 1: entities and each module's local names.
        for f in files {
            kg.add_entity(f.module.clone(), EntityKind::Module);
        }
        for (f, s) in files.iter().zip(&scanned) {
            let mut scope = Scope::default();
            let mut class: Option<(String, Option<usize>)> = None;
            for l in s.code.lines() {
                let t = l.trim_start();
                if t.is_empty() {
                    continue;
                }
                let ind = indent_of(l);
                if ind == 0 {
                    class = None;
                    for (kw, kind) in [("class", EntityKind::Class), ("def", EntityKind::Function)]
                    {
                        if let Some(n) = def_name(t, kw).or_else(|| {
                            (kw == "def").then(|| def_name(t.strip_prefix("async ")?, kw))?
                        }) && !n.starts_with('_')
                        {
                            let q = format!("{}.{n}", f.module);
                            kg.add_entity(q.clone(), kind);
                            scope.local.insert(n.to_string(), q.clone());
                            if kind == EntityKind::Class {
                                class = Some((q, None));
                            }
                        }
                    }
                } else if let Some((cq, body)) = &mut class {
                    let body = *body.get_or_insert(ind);
                    if ind == body
                        && let Some(n) = def_name(t, "def")
                            .or_else(|| def_name(t.strip_prefix("async ")?, "def"))
                        && !n.starts_with('_')
                    {
                        kg.add_entity(format!("{cq}.{n}"), EntityKind::Function);
                    }
                }
            }
            kg.scopes.insert(f.module.clone(), scope);
        }
        // Pass 2: imports (aliases), then relations.
        let mut triples: HashSet<Triple> = HashSet::new();
        for (f, s) in files.iter().zip(&scanned) {
            let m = kg.id(&f.module).unwrap_or(0);
            let package: Vec<&str> = {
                let mut p: Vec<&str> = f.module.split('.').collect();
                if !f.path.ends_with("__init__.py") {
                    p.pop();
                }
                p
            };
            if let Some((parent, _)) = f.module.rsplit_once('.')
                && let Some(p) = kg.id(parent)
            {
                triples.insert(Triple {
                    h: m,
                    r: Relation::SubmoduleOf as u32,
                    t: p,
                });
            }
            let mut aliases: Vec<(String, String)> = Vec::new();
            let lines: Vec<&str> = s.code.lines().collect();
            let mut i = 0;
            while i < lines.len() {
                let mut t = lines[i].trim().to_string();
                // Parenthesised import lists continue over lines.
                if t.starts_with("from ") && t.contains('(') {
                    while !t.contains(')') && i + 1 < lines.len() {
                        i += 1;
                        t.push(' ');
                        t.push_str(lines[i].trim());
                    }
                }
                i += 1;
                let t = t.replace(['(', ')'], " ").replace('\\', " ");
                if let Some(rest) = t.strip_prefix("import ") {
                    for part in rest.split(',') {
                        let w: Vec<&str> = part.split_whitespace().collect();
                        match w.as_slice() {
                            [name] => {
                                let first = name.split('.').next().unwrap_or(name);
                                aliases.push((first.to_string(), first.to_string()));
                                aliases.push((name.to_string(), name.to_string()));
                            }
                            [name, "as", alias] => {
                                aliases.push((alias.to_string(), name.to_string()))
                            }
                            _ => {}
                        }
                    }
                } else if let Some(rest) = t.strip_prefix("from ")
                    && let Some((src, names)) = rest.split_once(" import ")
                {
                    let src = src.trim();
                    let dots = src.len() - src.trim_start_matches('.').len();
                    let src_mod = if dots > 0 {
                        let keep = package.len().saturating_sub(dots - 1);
                        let mut p: Vec<&str> = package[..keep].to_vec();
                        let tail = src.trim_start_matches('.');
                        if !tail.is_empty() {
                            p.push(tail);
                        }
                        p.join(".")
                    } else {
                        src.to_string()
                    };
                    if names.trim() == "*" {
                        // Only the source module is known (a non-module name below imports it too).
                        aliases.push((String::new(), src_mod.clone()));
                    }
                    for part in names.split(',') {
                        let w: Vec<&str> = part.split_whitespace().collect();
                        let (name, alias) = match w.as_slice() {
                            [n] => (*n, *n),
                            [n, "as", a] => (*n, *a),
                            _ => continue,
                        };
                        if name != "*" {
                            aliases.push((alias.to_string(), format!("{src_mod}.{name}")));
                        }
                    }
                }
            }
            let scope = kg.scopes.entry(f.module.clone()).or_default();
            for (alias, target) in aliases {
                // Module imports become `imports` triples.
                if let Some(&tm) = kg.index.get(&target)
                    && kg.entities[tm as usize].kind == EntityKind::Module
                    && tm != m
                {
                    triples.insert(Triple {
                        h: m,
                        r: Relation::Imports as u32,
                        t: tm,
                    });
                } else if let Some((tmod, _)) = target.rsplit_once('.')
                    && let Some(&tm) = kg.index.get(tmod)
                    && kg.entities[tm as usize].kind == EntityKind::Module
                    && tm != m
                {
                    triples.insert(Triple {
                        h: m,
                        r: Relation::Imports as u32,
                        t: tm,
                    });
                }
                if !alias.is_empty() && !scope.local.contains_key(&alias) {
                    scope.alias.insert(alias, target);
                }
            }
        }
        for (f, s) in files.iter().zip(&scanned) {
            let m = kg.id(&f.module).unwrap_or(0);
            // Owner of the current line: (top-level def or class, its class body indent).
            let mut owner = m;
            let mut class: Option<(u32, String, Option<usize>)> = None;
            let mut method: Option<(u32, usize)> = None;
            for l in s.code.lines() {
                let t = l.trim_start();
                if t.is_empty() {
                    continue;
                }
                let ind = indent_of(l);
                let t_noasync = t.strip_prefix("async ").unwrap_or(t);
                if ind == 0 {
                    owner = m;
                    class = None;
                    method = None;
                    if let Some(n) = def_name(t_noasync, "def").or_else(|| def_name(t, "class"))
                        && let Some(e) = kg.id(&format!("{}.{n}", f.module))
                    {
                        owner = e;
                        let is_class = def_name(t, "class").is_some();
                        triples.insert(Triple {
                            h: e,
                            r: Relation::DefinedIn as u32,
                            t: m,
                        });
                        if is_class {
                            class = Some((e, format!("{}.{n}", f.module), None));
                            // Bases: `class X(A, b.B, metaclass=M):`
                            if let Some(open) = t.find('(')
                                && let Some(close) = t[open..].find(')')
                            {
                                for base in t[open + 1..open + close].split(',') {
                                    let base = base.trim();
                                    if base.contains('=') || base.is_empty() {
                                        continue;
                                    }
                                    if let Some(b) = kg.resolve(&f.module, base)
                                        && kg.entities[b as usize].kind == EntityKind::Class
                                        && b != e
                                    {
                                        triples.insert(Triple {
                                            h: e,
                                            r: Relation::SubclassOf as u32,
                                            t: b,
                                        });
                                    }
                                }
                            }
                        }
                    }
                } else if let Some((ce, cq, body)) = &mut class {
                    let body = *body.get_or_insert(ind);
                    if ind == body {
                        method = None;
                        if let Some(n) = def_name(t_noasync, "def")
                            && let Some(e) = kg.id(&format!("{cq}.{n}"))
                        {
                            method = Some((e, ind));
                            triples.insert(Triple {
                                h: e,
                                r: Relation::MethodOf as u32,
                                t: *ce,
                            });
                        }
                    }
                    owner = match method {
                        Some((e, mi)) if ind >= mi => e,
                        _ => *ce,
                    };
                }
                for name in called_names(t) {
                    let name = name.strip_prefix("self.").unwrap_or(name);
                    if let Some(e) = kg.resolve(&f.module, name)
                        && e != owner
                    {
                        triples.insert(Triple {
                            h: owner,
                            r: Relation::Calls as u32,
                            t: e,
                        });
                    }
                }
            }
        }
        kg.triples = triples.into_iter().collect();
        kg.triples.sort();
        kg
    }

    /// Counts per relation, for reports.
    pub fn summary(&self) -> String {
        let kinds: Vec<String> = EntityKind::ALL
            .iter()
            .map(|k| format!("{} {}", self.count(*k), k.name()))
            .collect();
        let rels: Vec<String> = Relation::ALL
            .iter()
            .map(|r| format!("{} {}", self.count_relation(*r), r.name()))
            .collect();
        format!(
            "{} entities ({}), {} triples ({})",
            self.entities.len(),
            kinds.join(", "),
            self.triples.len(),
            rels.join(", ")
        )
    }
}

#[cfg(test)]
#[path = "ernie_data_tests.rs"]
mod tests;
