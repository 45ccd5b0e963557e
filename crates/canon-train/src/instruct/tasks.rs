//! Instruction tasks built from data on this machine, in four clusters:
//!
//! - `code`: the Python standard library's module-level functions with docstrings —
//!   docstring → function name, the task turned around (name → what it does), and which module
//!   defines a function (classification with options).
//! - `translation`: month and weekday names from glibc's locale sources
//!   (`/usr/share/i18n/locales`), English → another language; and manual-page summaries
//!   (`.SH NAME` lines) from English to German or French where both pages exist.
//! - `shell`: English manual-page summaries → the command, and turned around.
//! - `language_id`: which language a line of a translated manual page is in (classification over
//!   the languages present, with options).
//!
//! Every builder reads only local files; the orders are deterministic (sorted paths).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use canon_nn::SplitMix64;

use super::{Example, Task, Template};
use crate::{Result, TrainError, io_err};

mod sources;
use sources::*;
pub use sources::{decode_roff, locale_names};

/// Where the data comes from.
#[derive(Debug, Clone)]
pub struct Sources {
    /// The Python standard library (e.g. `/usr/lib/python3.11`).
    pub stdlib: PathBuf,
    /// The manual pages (`/usr/share/man`).
    pub man: PathBuf,
    /// glibc's locale sources (`/usr/share/i18n/locales`).
    pub locales: PathBuf,
}

/// Language of a translated manual-page folder.
pub const MAN_LANGUAGES: [(&str, &str); 8] = [
    ("de", "German"),
    ("fr", "French"),
    ("es", "Spanish"),
    ("it", "Italian"),
    ("pt", "Portuguese"),
    ("nl", "Dutch"),
    ("pl", "Polish"),
    ("sv", "Swedish"),
];

/// Locales whose month and day names make the translation task.
pub const LOCALES: [&str; 14] = [
    "de_DE", "fr_FR", "es_ES", "it_IT", "pt_PT", "nl_NL", "pl_PL", "sv_SE", "fi_FI", "cs_CZ",
    "da_DK", "hu_HU", "ro_RO", "tr_TR",
];

const DOC_TO_NAME: &[Template] = &[
    Template {
        input: "Write the name of the Python function described by this docstring:\n\n{doc}",
        target: "{name}",
    },
    Template {
        input: "{doc}\n\nWhat is a good name for a Python function that does this?",
        target: "{name}",
    },
    Template {
        input: "Docstring: {doc}\nFunction name:",
        target: "{name}",
    },
    // Turned around: the target is the input field.
    Template {
        input: "Describe what the Python function {module}.{name} does.",
        target: "{doc}",
    },
];

const FUNCTION_MODULE: &[Template] = &[
    Template {
        input: "Which Python standard-library module defines the function {name}?\n\n{doc}\n\n{options}",
        target: "{module}",
    },
    Template {
        input: "The function {name}: \"{doc}\"\nIn which module is it?\n\n{options}",
        target: "{module}",
    },
    Template {
        input: "{options}\n\nPick the module that provides {name}({doc}).",
        target: "{module}",
    },
];

const WORD_TRANSLATION: &[Template] = &[
    Template {
        input: "Translate the {kind} name \"{en}\" into {lang}.",
        target: "{word}",
    },
    Template {
        input: "How do you say \"{en}\" in {lang}?",
        target: "{word}",
    },
    Template {
        input: "English: {en}\n{lang}:",
        target: "{word}",
    },
    // Turned around.
    Template {
        input: "Translate the {lang} word \"{word}\" into English.",
        target: "{en}",
    },
];

const SENTENCE_TRANSLATION: &[Template] = &[
    Template {
        input: "Translate to {lang}:\n\n{en}",
        target: "{text}",
    },
    Template {
        input: "{en}\n\nHow would this be written in {lang}?",
        target: "{text}",
    },
    Template {
        input: "Translate this {lang} text into English:\n\n{text}",
        target: "{en}",
    },
];

const SHELL: &[Template] = &[
    Template {
        input: "Which command would you use to {desc}?",
        target: "{cmd}",
    },
    Template {
        input: "Name the Unix command that does this: {desc}",
        target: "{cmd}",
    },
    Template {
        input: "Task: {desc}\nCommand:",
        target: "{cmd}",
    },
    // Turned around.
    Template {
        input: "What does the command {cmd} do?",
        target: "{desc}",
    },
];

const LANGUAGE_ID: &[Template] = &[
    Template {
        input: "Which language is this text written in?\n\n{text}\n\n{options}",
        target: "{lang}",
    },
    Template {
        input: "\"{text}\"\n\nWhat language is that?\n\n{options}",
        target: "{lang}",
    },
    Template {
        input: "{text}\n\nIdentify the language of the text above.\n\n{options}",
        target: "{lang}",
    },
    // Turned around.
    Template {
        input: "Write a sentence from a {lang} manual page.",
        target: "{text}",
    },
];

fn sorted_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// Module-level public functions with a docstring: (module, name, first docstring paragraph).
pub fn stdlib_functions(stdlib: &Path) -> Result<Vec<(String, String, String)>> {
    if !stdlib.is_dir() {
        return Err(io_err(stdlib, "not a folder (the Python standard library)"));
    }
    let mut out = Vec::new();
    for f in sorted_files(stdlib) {
        if f.extension().and_then(|e| e.to_str()) != Some("py") {
            continue;
        }
        let Some(module) = f.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        if module.starts_with('_') || module.starts_with("test") {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        let lines: Vec<&str> = text.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            let Some(rest) = l.strip_prefix("def ") else {
                continue;
            };
            let Some(name) = rest.split('(').next() else {
                continue;
            };
            if name.starts_with('_') || !name.chars().all(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            // The signature may span lines; the docstring is the first line after it.
            let Some(sig_end) =
                (i..lines.len().min(i + 8)).find(|&j| lines[j].trim_end().ends_with(':'))
            else {
                continue;
            };
            let Some(doc_line) = lines.get(sig_end + 1).map(|s| s.trim()) else {
                continue;
            };
            let Some(quote) = ["\"\"\"", "'''"]
                .into_iter()
                .find(|q| doc_line.starts_with(q))
            else {
                continue;
            };
            let mut doc = String::new();
            let mut cur = doc_line[3..].to_string();
            let mut j = sig_end + 1;
            loop {
                let (part, closed) = match cur.find(quote) {
                    Some(k) => (cur[..k].to_string(), true),
                    None => (cur.clone(), false),
                };
                let part = part.trim();
                if part.is_empty() && !doc.is_empty() {
                    break;
                }
                if !part.is_empty() {
                    if !doc.is_empty() {
                        doc.push(' ');
                    }
                    doc.push_str(part);
                }
                j += 1;
                if closed || j >= lines.len() || j > sig_end + 8 {
                    break;
                }
                cur = lines[j].to_string();
            }
            let doc = doc.split_whitespace().collect::<Vec<_>>().join(" ");
            if doc.len() < 12 || doc.len() > 240 || doc.contains(name) {
                continue;
            }
            out.push((module.to_string(), name.to_string(), doc));
        }
    }
    if out.is_empty() {
        return Err(io_err(stdlib, "no documented module-level function found"));
    }
    Ok(out)
}

fn task(name: &str, cluster: &str, templates: &[Template], examples: Vec<Example>) -> Task {
    Task {
        name: name.into(),
        cluster: cluster.into(),
        templates: templates.to_vec(),
        examples,
    }
}

/// `k` options: `answer` and `k − 1` others from `pool`, shuffled by `rng`.
fn options_for(answer: &str, pool: &[String], k: usize, rng: &mut SplitMix64) -> Vec<String> {
    let mut opts = vec![answer.to_string()];
    let mut guard = 0;
    while opts.len() < k.min(pool.len()) && guard < 1000 {
        let o = &pool[rng.below(pool.len())];
        if !opts.contains(o) {
            opts.push(o.clone());
        }
        guard += 1;
    }
    for i in (1..opts.len()).rev() {
        let j = rng.below(i + 1);
        opts.swap(i, j);
    }
    opts
}

/// Every task, from the sources. `per_language` caps the language-identification lines per
/// language (they come from few pages for some languages).
pub fn build_tasks(src: &Sources, per_language: usize, seed: u64) -> Result<Vec<Task>> {
    let mut rng = SplitMix64::new(seed);
    let mut tasks = Vec::new();

    // code
    let funcs = stdlib_functions(&src.stdlib)?;
    let ex: Vec<Example> = funcs
        .iter()
        .map(|(m, n, d)| Example::new(&[("module", m), ("name", n), ("doc", d)]))
        .collect();
    tasks.push(task("docstring_to_name", "code", DOC_TO_NAME, ex));
    let mut per_module: BTreeMap<&str, usize> = BTreeMap::new();
    for (m, _, _) in &funcs {
        *per_module.entry(m).or_default() += 1;
    }
    let modules: Vec<String> = per_module
        .iter()
        .filter(|(_, n)| **n >= 8)
        .map(|(m, _)| m.to_string())
        .collect();
    let ex: Vec<Example> = funcs
        .iter()
        .filter(|(m, _, _)| modules.contains(m))
        .map(|(m, n, d)| {
            Example::new(&[("module", m), ("name", n), ("doc", d)])
                .with_options(options_for(m, &modules, 4, &mut rng))
        })
        .collect();
    tasks.push(task("function_module", "code", FUNCTION_MODULE, ex));

    // translation: month and day names
    let mut ex = Vec::new();
    for loc in LOCALES {
        let Some((lang, days, mons)) = locale_names(&src.locales.join(loc)) else {
            continue;
        };
        for (en, w) in EN_DAYS.iter().zip(&days) {
            ex.push(Example::new(&[
                ("kind", "weekday"),
                ("en", en),
                ("word", w),
                ("lang", &lang),
            ]));
        }
        for (en, w) in EN_MONTHS.iter().zip(&mons) {
            ex.push(Example::new(&[
                ("kind", "month"),
                ("en", en),
                ("word", w),
                ("lang", &lang),
            ]));
        }
    }
    if ex.is_empty() {
        return Err(io_err(
            &src.locales,
            "no locale with day and month names found",
        ));
    }
    tasks.push(task("calendar_words", "translation", WORD_TRANSLATION, ex));

    // shell + translation of manual-page summaries
    let english = man_pages(&src.man);
    if english.is_empty() {
        return Err(io_err(
            &src.man,
            "no English manual page with a NAME line found",
        ));
    }
    let ex: Vec<Example> = english
        .values()
        .map(|p| {
            let desc = p.summary.trim_end_matches('.');
            Example::new(&[("cmd", &p.cmd), ("desc", desc)])
        })
        .collect();
    tasks.push(task("command_from_summary", "shell", SHELL, ex));

    // Untranslated passages of translated pages are English: lines found in an English page are
    // left out of language identification.
    let english_lines: std::collections::HashSet<&str> = english
        .values()
        .flat_map(|p| std::iter::once(&p.summary).chain(&p.lines))
        .map(String::as_str)
        .collect();
    let mut summaries = Vec::new();
    let mut lang_lines: Vec<(String, String)> = Vec::new();
    for (code, lang) in MAN_LANGUAGES {
        let pages = man_pages(&src.man.join(code));
        let mut n = 0;
        for (file, p) in &pages {
            if (code == "de" || code == "fr")
                && let Some(e) = english.get(file)
                && e.summary != p.summary
            {
                summaries.push(Example::new(&[
                    ("en", &e.summary),
                    ("text", &p.summary),
                    ("lang", lang),
                ]));
            }
        }
        // Language identification: the summaries and body lines of the pages, in page order.
        for p in pages.values() {
            for line in std::iter::once(&p.summary).chain(&p.lines) {
                if n >= per_language {
                    break;
                }
                if line.split_whitespace().count() >= 4 && !english_lines.contains(line.as_str()) {
                    lang_lines.push((line.clone(), lang.to_string()));
                    n += 1;
                }
            }
        }
    }
    tasks.push(task(
        "manpage_summaries",
        "translation",
        SENTENCE_TRANSLATION,
        summaries,
    ));
    let langs: Vec<String> = MAN_LANGUAGES
        .iter()
        .filter(|(_, l)| lang_lines.iter().any(|(_, x)| x == l))
        .map(|(_, l)| l.to_string())
        .collect();
    if langs.len() < 2 {
        return Err(io_err(
            &src.man,
            "fewer than two languages of translated manual pages",
        ));
    }
    // Interleave languages so that any prefix is balanced.
    let mut by_lang: Vec<Vec<&(String, String)>> = langs
        .iter()
        .map(|l| lang_lines.iter().filter(|(_, x)| x == l).collect())
        .collect();
    let mut ex = Vec::new();
    let mut k = 0;
    while by_lang.iter().any(|v| k < v.len()) {
        for v in by_lang.iter_mut() {
            if let Some((text, lang)) = v.get(k) {
                ex.push(
                    Example::new(&[("text", text), ("lang", lang)]).with_options(langs.clone()),
                );
            }
        }
        k += 1;
    }
    tasks.push(task("manpage_language", "language_id", LANGUAGE_ID, ex));
    for t in &tasks {
        if t.examples.is_empty() {
            return Err(TrainError::Data(format!("task {} has no examples", t.name)));
        }
    }
    Ok(tasks)
}
