//! LLM extraction: the prompt, the record parser, gleanings and the answer cache.

use super::*;

/// A chat-completion model. Implementations: the local generator, a remote OpenAI-compatible
/// endpoint, scripted fakes in tests.
pub trait Llm {
    /// Completes a conversation of `(role, content)` messages.
    fn chat(
        &mut self,
        messages: &[(String, String)],
        max_tokens: usize,
    ) -> std::result::Result<String, String>;
    /// Identifies the model in cache keys.
    fn id(&self) -> String;
}

/// A local model's prompt of `prompt` tokens leaves room for `max_tokens` answer tokens within its
/// context of `context` tokens, or the error naming the three.
pub fn check_fits(
    prompt: usize,
    max_tokens: usize,
    context: usize,
) -> std::result::Result<(), String> {
    if prompt + max_tokens > context {
        return Err(format!(
            "prompt of {prompt} tokens and {max_tokens} answer tokens exceed the context of {context}"
        ));
    }
    Ok(())
}

/// Default entity types (GraphRAG's) plus the ones a manual has.
pub const ENTITY_TYPES: &[&str] = &[
    "organization",
    "person",
    "geo",
    "event",
    "command",
    "option",
    "file",
];

/// The extraction instruction for one text unit (written for this project; the record format is
/// GraphRAG's).
pub fn extraction_prompt(text: &str, types: &[&str]) -> String {
    format!(
        "Goal: find every entity of the types [{types}] in the text, and every pair of those entities \
that are clearly related.\n\n\
For each entity write (\"entity\"{TUPLE}NAME{TUPLE}TYPE{TUPLE}what the text says about it)\n\
For each related pair write (\"relationship\"{TUPLE}SOURCE{TUPLE}TARGET{TUPLE}how they are related{TUPLE}strength from 1 to 10)\n\
Separate records with {RECORD} and finish with {COMPLETE}\n\n\
Example:\nText: cp copies files; with -r it copies directories recursively.\nOutput:\n\
(\"entity\"{TUPLE}CP{TUPLE}COMMAND{TUPLE}cp copies files){RECORD}\n\
(\"entity\"{TUPLE}-R{TUPLE}OPTION{TUPLE}makes cp copy directories recursively){RECORD}\n\
(\"relationship\"{TUPLE}CP{TUPLE}-R{TUPLE}-r is an option of cp for recursive copies{TUPLE}8){COMPLETE}\n\n\
Text: {text}\nOutput:",
        types = types.join(", ")
    )
}

/// Asked after an extraction: add what was missed.
pub const CONTINUE_PROMPT: &str = "Many entities and relationships were missed in the last extraction. \
Add them below in the same format, records only:";
/// Asked between gleanings: answer Y or N.
pub const LOOP_PROMPT: &str = "Were some entities or relationships still missed? Answer Y if yes, N if no, with that single letter.";

/// Parses extraction output. Names and types are upper-cased; a non-numeric strength becomes
/// 1.0; malformed records are counted and skipped.
pub fn parse_records(out: &str) -> (Extraction, usize) {
    let body = out.split(COMPLETE).next().unwrap_or(out);
    let mut ex = Extraction::default();
    let mut bad = 0;
    for rec in body.split(RECORD) {
        let r = rec.trim();
        if r.is_empty() {
            continue;
        }
        let Some(inner) = r
            .find('(')
            .and_then(|s| r.rfind(')').filter(|&e| e > s).map(|e| &r[s + 1..e]))
        else {
            bad += 1;
            continue;
        };
        let f: Vec<String> = inner
            .split(TUPLE)
            .map(|x| x.trim().trim_matches('"').trim().to_string())
            .collect();
        match f.first().map(|s| s.to_lowercase()).as_deref() {
            Some("entity") if f.len() >= 4 && !f[1].is_empty() => {
                ex.entities
                    .push((f[1].to_uppercase(), f[2].to_uppercase(), f[3..].join(" ")))
            }
            Some("relationship") if f.len() >= 5 && !f[1].is_empty() && !f[2].is_empty() => {
                let strength = f[4].parse::<f64>().unwrap_or(1.0);
                ex.relations.push((
                    f[1].to_uppercase(),
                    f[2].to_uppercase(),
                    f[3].clone(),
                    strength,
                ))
            }
            _ => bad += 1,
        }
    }
    (ex, bad)
}

/// LLM calls stored on disk by a hash of (model, messages, max tokens): a rerun finds the
/// answers of the calls that finished and asks only the rest.
pub struct CachedLlm<'a> {
    pub inner: &'a mut dyn Llm,
    pub dir: PathBuf,
    pub hits: usize,
    pub misses: usize,
}

pub(super) fn fnv(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A cached call's file name and full request text: two independent 64-bit hashes of (model,
/// messages, max tokens and, when given, the output's JSON schema); the full request is stored
/// with the answer and compared on read.
pub fn call_key(
    model: &str,
    messages: &[(String, String)],
    max_tokens: usize,
    schema: Option<&serde_json::Value>,
) -> (String, String) {
    let mut req =
        serde_json::json!({"model": model, "messages": messages, "max_tokens": max_tokens});
    if let Some(s) = schema {
        req["schema"] = s.clone();
    }
    let text = req.to_string();
    (
        format!("{:016x}{:016x}", fnv(&text), fnv(&format!("canon{text}"))),
        text,
    )
}

impl<'a> CachedLlm<'a> {
    pub fn new(inner: &'a mut dyn Llm, dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        Ok(CachedLlm {
            inner,
            dir: dir.to_path_buf(),
            hits: 0,
            misses: 0,
        })
    }

    fn key(&self, messages: &[(String, String)], max_tokens: usize) -> (String, String) {
        call_key(&self.inner.id(), messages, max_tokens, None)
    }

    pub fn chat(
        &mut self,
        messages: &[(String, String)],
        max_tokens: usize,
    ) -> std::result::Result<String, String> {
        let (k, req) = self.key(messages, max_tokens);
        let p = self.dir.join(format!("{k}.json"));
        if let Ok(t) = std::fs::read_to_string(&p)
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&t)
            && v["request"].as_str() == Some(req.as_str())
            && let Some(r) = v["response"].as_str()
        {
            self.hits += 1;
            return Ok(r.to_string());
        }
        let r = self.inner.chat(messages, max_tokens)?;
        self.misses += 1;
        let body = serde_json::json!({"request": req, "response": r}).to_string();
        // A cache entry that cannot be written is only a lost cache hit.
        let _ = canon_fs::write_atomic(&p, body.as_bytes());
        Ok(r)
    }
}

/// Extraction statistics.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExtractStats {
    pub calls: usize,
    pub malformed_records: usize,
    pub failed_units: usize,
}

/// Extracts from one text unit: the first pass, then up to `max_gleanings` continuations; between
/// gleanings a Y/N question decides whether to go on (skipped after the last one). A failed call
/// or an output with no record at all counts as a failure and yields what was parsed so far.
pub fn extract_with_gleanings(
    llm: &mut CachedLlm,
    text: &str,
    max_gleanings: usize,
    max_tokens: usize,
    stats: &mut ExtractStats,
) -> Extraction {
    let mut msgs = vec![("user".to_string(), extraction_prompt(text, ENTITY_TYPES))];
    stats.calls += 1;
    let first = match llm.chat(&msgs, max_tokens) {
        Ok(o) => o,
        Err(_) => {
            stats.failed_units += 1;
            return Extraction::default();
        }
    };
    let (mut ex, bad) = parse_records(&first);
    stats.malformed_records += bad;
    if ex.entities.is_empty() && ex.relations.is_empty() {
        stats.failed_units += 1;
    }
    msgs.push(("assistant".into(), first));
    for g in 0..max_gleanings {
        msgs.push(("user".into(), CONTINUE_PROMPT.into()));
        stats.calls += 1;
        let Ok(more) = llm.chat(&msgs, max_tokens) else {
            break;
        };
        let (e2, bad) = parse_records(&more);
        stats.malformed_records += bad;
        ex.entities.extend(e2.entities);
        ex.relations.extend(e2.relations);
        msgs.push(("assistant".into(), more));
        if g + 1 == max_gleanings {
            break;
        }
        msgs.push(("user".into(), LOOP_PROMPT.into()));
        stats.calls += 1;
        let Ok(yn) = llm.chat(&msgs, 1) else {
            break;
        };
        if yn.trim().to_uppercase() != "Y" {
            break;
        }
        msgs.push(("assistant".into(), yn));
    }
    ex
}
