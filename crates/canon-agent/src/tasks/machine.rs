//! Tasks built from data on this machine: `man-commands` (section-1 man pages), `gettext-de`
//! (the German `.mo` catalogs) and `stdlib-module` (the Python standard library).

use super::*;

/// The (command, description) of a man page's NAME section, from roff source.
pub fn man_name_line(roff: &str) -> Option<(String, String)> {
    let mut lines = roff.lines();
    lines.find(|l| {
        let l = l.trim();
        (l.starts_with(".SH") || l.starts_with(".Sh")) && l.to_ascii_uppercase().contains("NAME")
    })?;
    let body: Vec<&str> = lines
        .take_while(|l| !l.starts_with(".SH") && !l.starts_with(".Sh"))
        .filter(|l| !l.starts_with('.') && !l.starts_with('\'') && !l.trim().is_empty())
        .collect();
    let text = body.join(" ");
    let (name, desc) = text.split_once("\\-")?;
    let name = name.trim().replace("\\", "");
    let desc = desc
        .trim()
        .replace("\\(em", "-")
        .replace("\\-", "-")
        .replace("\\fB", "")
        .replace("\\fR", "")
        .replace("\\fI", "")
        .replace("\\fP", "")
        .replace("\\&", "")
        .replace("\\ ", " ");
    if name.is_empty()
        || name.contains(',')
        || name.contains(' ')
        || desc.len() < 8
        || desc.contains('\\')
    {
        return None;
    }
    Some((name, desc))
}

/// Builds items from (command, description) pairs: each gets its command and three distractors.
pub fn man_items(pairs: &[(String, String)], seed: u64) -> Vec<Item> {
    let mut rng = StdRng::seed_from_u64(seed);
    let names: Vec<&String> = pairs.iter().map(|(n, _)| n).collect();
    let mut items = Vec::new();
    if names.len() < 4 {
        return items;
    }
    for (i, (name, desc)) in pairs.iter().enumerate() {
        let mut options = vec![name.clone()];
        for j in sample(&mut rng, names.len(), names.len()).into_iter() {
            if options.len() == 4 {
                break;
            }
            if j != i && !options.contains(names[j]) {
                options.push(names[j].clone());
            }
        }
        options.shuffle(&mut rng);
        items.push(Item {
            question: format!("Which command does this describe: {desc}?"),
            options,
            answer: name.clone(),
        });
    }
    items
}

/// The `man-commands` task from `dir` (e.g. `/usr/share/man/man1`): pages sorted by name,
/// shuffled with `seed`, `train` items for demonstrations and the rest as test items.
pub fn man_commands(dir: &Path, train: usize, seed: u64) -> Result<Task> {
    let io = |source| AgentError::Io {
        path: dir.display().to_string(),
        error: source,
    };
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(io)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "gz"))
        .collect();
    files.sort();
    let mut pairs = Vec::new();
    let mut seen = HashSet::new();
    for f in files {
        let Ok(file) = std::fs::File::open(&f) else {
            continue;
        };
        let mut text = String::new();
        if flate2::read::GzDecoder::new(file)
            .take(64 * 1024)
            .read_to_string(&mut text)
            .is_err()
        {
            continue;
        }
        if let Some((name, desc)) = man_name_line(&text)
            && seen.insert(name.clone())
            && seen.insert(desc.clone())
        {
            pairs.push((name, desc));
        }
    }
    let mut items = man_items(&pairs, seed);
    items.shuffle(&mut StdRng::seed_from_u64(seed.wrapping_add(1)));
    if items.len() <= train {
        return Err(AgentError::Task(format!(
            "{}: expected more than {train} man pages with a NAME line, found {}",
            dir.display(),
            items.len()
        )));
    }
    let test = items.split_off(train);
    Ok(Task {
        name: "man-commands".into(),
        train: items,
        test,
    })
}

/// The (original, translation) pairs of a GNU gettext `.mo` catalog (either byte order). The
/// header entry (empty msgid), entries with a context (`ctxt\x04id`) and plural entries
/// (`id\0plural`) are skipped, as are strings that are not UTF-8.
pub fn parse_mo(bytes: &[u8], label: &str) -> Result<Vec<(String, String)>> {
    let bad =
        |what: &str| AgentError::Task(format!("{label}: expected a gettext .mo catalog, {what}"));
    let word = |at: usize, le: bool| -> Result<usize> {
        let b: [u8; 4] = bytes
            .get(at..at + 4)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| {
                bad(&format!(
                    "the file ends at byte {} inside its tables",
                    bytes.len()
                ))
            })?;
        Ok(if le {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        } as usize)
    };
    let le = match bytes.get(0..4) {
        Some([0xde, 0x12, 0x04, 0x95]) => true,
        Some([0x95, 0x04, 0x12, 0xde]) => false,
        _ => return Err(bad("found no magic number 0x950412de")),
    };
    let n = word(8, le)?;
    let (originals, translations) = (word(12, le)?, word(16, le)?);
    if n > bytes.len() / 8 {
        return Err(bad(&format!("found {n} strings in {} bytes", bytes.len())));
    }
    let string = |table: usize, i: usize| -> Result<Option<String>> {
        let len = word(table + 8 * i, le)?;
        let off = word(table + 8 * i + 4, le)?;
        let raw = bytes
            .get(off..off.saturating_add(len))
            .ok_or_else(|| bad(&format!("string {i} lies outside the file")))?;
        Ok(std::str::from_utf8(raw).ok().map(str::to_string))
    };
    let mut out = Vec::new();
    for i in 0..n {
        let (Some(id), Some(tr)) = (string(originals, i)?, string(translations, i)?) else {
            continue;
        };
        if id.is_empty() || id.contains('\u{4}') || id.contains('\0') || tr.contains('\0') {
            continue;
        }
        out.push((id, tr));
    }
    Ok(out)
}

/// Whether a UI string pair makes a clean question: one line of 2–40 characters with a letter,
/// no format directives, markup or accelerator marks, and a translation that differs.
fn plain_ui_pair(id: &str, tr: &str) -> bool {
    let plain = |s: &str| {
        let n = s.chars().count();
        (2..=40).contains(&n)
            && s.chars().any(char::is_alphabetic)
            && !s.chars().any(|c| {
                matches!(
                    c,
                    '%' | '\n' | '\t' | '{' | '}' | '<' | '>' | '_' | '&' | '$' | '\\' | '"'
                )
            })
            && s.trim() == s
    };
    plain(id) && plain(tr) && id != tr
}

/// The `gettext-de` task: the German for an English UI string, from every `.mo` catalog of `dir`
/// (e.g. `/usr/share/locale/de/LC_MESSAGES`): clean one-line pairs (see `plain_ui_pair`), an
/// English string whose catalogs disagree on the German dropped, at most one English string per
/// German one; four options (the translation and three others), `train` demonstration items.
pub fn gettext_de(dir: &Path, train: usize, seed: u64) -> Result<Task> {
    let io = |source| AgentError::Io {
        path: dir.display().to_string(),
        error: source,
    };
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(io)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "mo"))
        .collect();
    files.sort();
    let mut by_id: std::collections::BTreeMap<String, HashSet<String>> = Default::default();
    for f in &files {
        let Ok(bytes) = std::fs::read(f) else {
            continue;
        };
        // A catalog that does not parse is skipped: one broken file should not lose the task.
        let Ok(pairs) = parse_mo(&bytes, &f.display().to_string()) else {
            continue;
        };
        for (id, tr) in pairs {
            if plain_ui_pair(&id, &tr) {
                by_id.entry(id).or_default().insert(tr);
            }
        }
    }
    let mut used = HashSet::new();
    let pairs: Vec<(String, String)> = by_id
        .into_iter()
        .filter(|(_, t)| t.len() == 1)
        .filter_map(|(id, t)| t.into_iter().next().map(|t| (id, t)))
        .filter(|(_, t)| used.insert(t.clone()))
        .collect();
    let items = choice_items(
        &pairs,
        &|en| format!("What is the German for \"{en}\"?"),
        seed,
    );
    split_task(
        "gettext-de",
        items,
        train,
        seed,
        &format!("English/German UI strings in {}", dir.display()),
    )
}

/// The `stdlib-module` task: which module of the Python standard library in `dir` defines a
/// public function (names defined by several modules dropped), four modules as options.
pub fn stdlib_module(dir: &Path, train: usize, seed: u64) -> Result<Task> {
    let pairs: Vec<(String, String)> = crate::autoprompt::stdlib_function_facts(dir)?
        .into_iter()
        .map(|f| (f.subject, f.object))
        .collect();
    let items = choice_items(
        &pairs,
        &|f| format!("Which Python standard library module defines the function {f}?"),
        seed,
    );
    split_task(
        "stdlib-module",
        items,
        train,
        seed,
        &format!("functions in {}", dir.display()),
    )
}
