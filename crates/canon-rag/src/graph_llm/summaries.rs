//! Description summaries: the descriptions an element collected, merged into one by the model.

use super::*;

/// Answer tokens of one description summary.
pub const SUMMARY_TOKENS: usize = 120;

/// The instruction that merges an element's descriptions into one (written for this project).
pub fn summary_prompt(name: &str, descriptions: &[String]) -> String {
    let mut list = String::new();
    for d in descriptions {
        list.push_str("- ");
        list.push_str(d.trim());
        list.push('\n');
    }
    format!(
        "Several passages describe {name}. Merge their descriptions into one short, complete \
description in the third person, keeping every fact and resolving contradictions. Mention \
{name} by name.\n\nDescriptions:\n{list}\nDescription:"
    )
}

/// What a summary or report stage did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LlmStats {
    pub calls: usize,
    pub written: usize,
    pub failed: usize,
    /// Why the first few failures failed.
    pub errors: Vec<String>,
}

impl LlmStats {
    pub(super) fn fail(&mut self, e: String) {
        self.failed += 1;
        if self.errors.len() < 5 {
            self.errors.push(e);
        }
    }
}

/// Cleans a model's summary: trimmed, a leading "Description:" dropped, empty → `None`.
pub(super) fn clean_summary(s: &str) -> Option<String> {
    let t = s.trim();
    let t = t.strip_prefix("Description:").unwrap_or(t).trim();
    (!t.is_empty()).then(|| t.to_string())
}

/// Summarises the descriptions of every entity and relationship that collected two or more
/// (and has no summary yet), `batch` calls at a time, at most `limit` elements (most prominent
/// first). Each summary's descriptions are cut to `max_input_chars` in all. `progress(done,
/// total)` follows the work.
pub fn summarize_descriptions(
    g: &mut KnowledgeGraph,
    llm: &mut CachedBatch<'_>,
    batch: usize,
    limit: Option<usize>,
    max_input_chars: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> LlmStats {
    // (is_entity, index, degree)
    let mut jobs: Vec<(bool, usize, usize)> = Vec::new();
    for (i, e) in g.entities.iter().enumerate() {
        if e.descriptions.len() >= 2 && e.llm_summary.is_none() {
            jobs.push((true, i, e.degree));
        }
    }
    for (i, r) in g.relations.iter().enumerate() {
        if r.descriptions.len() >= 2 && r.llm_summary.is_none() {
            let d = g.entities[r.source].degree + g.entities[r.target].degree;
            jobs.push((false, i, d));
        }
    }
    jobs.sort_by(|a, b| b.2.cmp(&a.2).then(b.0.cmp(&a.0)).then(a.1.cmp(&b.1)));
    if let Some(l) = limit {
        jobs.truncate(l);
    }
    let mut stats = LlmStats::default();
    progress(0, jobs.len());
    for chunk in jobs.chunks(batch.max(1)) {
        let calls: Vec<Call> = chunk
            .iter()
            .map(|&(ent, i, _)| {
                let (name, descs) = if ent {
                    (g.entities[i].name.clone(), &g.entities[i].descriptions)
                } else {
                    let r = &g.relations[i];
                    (
                        format!(
                            "the relationship between {} and {}",
                            g.entities[r.source].name, g.entities[r.target].name
                        ),
                        &r.descriptions,
                    )
                };
                let mut kept = Vec::new();
                let mut used = 0;
                for d in descs {
                    if used + d.len() > max_input_chars && !kept.is_empty() {
                        break;
                    }
                    used += d.len();
                    kept.push(d.clone());
                }
                Call {
                    messages: vec![("user".into(), summary_prompt(&name, &kept))],
                    max_tokens: SUMMARY_TOKENS,
                    schema: None,
                }
            })
            .collect();
        stats.calls += calls.len();
        for (&(ent, i, _), a) in chunk.iter().zip(llm.chat_batch(&calls)) {
            match a.map(|s| clean_summary(&s)) {
                Ok(Some(s)) => {
                    stats.written += 1;
                    if ent {
                        g.entities[i].llm_summary = Some(s);
                    } else {
                        g.relations[i].llm_summary = Some(s);
                    }
                }
                Ok(None) => stats.fail("empty summary".into()),
                Err(e) => stats.fail(e),
            }
        }
        progress(stats.calls, jobs.len());
    }
    stats
}
