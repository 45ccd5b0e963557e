//! WebGPT's browsing task in miniature (paper 17): a site built from the local encyclopedia, an
//! oracle that browses the way a demonstrator would, behaviour-cloning records, and the evaluation
//! (accuracy and citation correctness at best-of-n).
//!
//! **Site.** Every page of the encyclopedia (`react_data::Page`) becomes an HTML page, one sentence
//! per line, titled by the entity. `Search` runs BM25 over titles and text.
//!
//! **Oracle.** The questions of the ReAct set carry the path a lookup takes
//! (`Search[dpkg-source]`, `Search[dpkg-dev]`, `Finish[Dpkg Developers]`). The oracle turns it
//! into browser commands: for each `Search[X]`, `Search X`, click the result titled `X`, then
//! quote the line that leads on (the line naming the next entity) or, on the last page, the line
//! holding the answer (after `Find in page:` when it is below the window); at the end `End:
//! Answer`, and the answer is the gold answer citing the quote that holds it (`Dpkg Developers
//! [2]`). A question whose page is not among the top results of its search is skipped (counted).
//!
//! **Grading.** An answer is *accurate* when it contains the gold answer (case and runs of
//! whitespace ignored); it is *supported* when, in addition, it cites a collected quote that
//! contains the gold answer and cites no reference that does not exist (WebGPT's human raters
//! judged factual accuracy and whether claims were supported by the references; this is the
//! programmatic stand-in).

use serde::{Deserialize, Serialize};

use crate::browse_run::{self, Answers, CommandLm, PromptStyle, Turn};
use crate::browser::{Browser, BrowserConfig, Quote, Site};
use crate::react_data::{Page, Question};
use crate::{AgentError, Result};

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A page's text as sentences (split after `". "`, except after a one-letter initial such as
/// the `Y.` of `Theodore Y. Ts'o`).
pub fn sentences(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text.trim();
    let mut from = 0;
    while let Some(j) = rest[from..].find(". ") {
        let i = from + j;
        let word = rest[..i].rsplit(' ').next().unwrap_or("");
        if word.chars().count() == 1 && word.chars().all(|c| c.is_uppercase()) {
            from = i + 2;
            continue;
        }
        out.push(rest[..=i].trim().to_string());
        rest = rest[i + 2..].trim_start();
        from = 0;
    }
    if !rest.is_empty() {
        out.push(rest.to_string());
    }
    out
}

/// The site: one HTML page per encyclopedia page, one sentence per paragraph.
pub fn site(pages: &[Page]) -> Result<Site> {
    let raw = pages
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut h = format!(
                "<html><head><title>{}</title></head><body>",
                html_escape(&p.title)
            );
            for s in sentences(&p.text) {
                h.push_str(&format!("<p>{}</p>", html_escape(&s)));
            }
            h.push_str("</body></html>");
            (format!("page{i}.html"), h)
        })
        .collect();
    Site::from_texts(raw)
}

pub(crate) fn norm(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// An oracle episode: each turn's state (the browser before the command) and command, then the
/// answer prompt and the answer.
#[derive(Debug, Clone, Serialize)]
pub struct Demo {
    pub id: String,
    /// (prompt in the given style, command)
    pub turns: Vec<(String, String)>,
    pub answer_prompt: String,
    pub answer: String,
}

/// Applies `cmd` and records the turn; an error observation means the oracle went wrong.
fn oracle_step(
    b: &mut Browser,
    cmd: String,
    style: PromptStyle,
    turns: &mut Vec<(String, String)>,
) -> std::result::Result<(), String> {
    let prompt = browse_run::command_prompt(b, style);
    let obs = b.step(&cmd);
    if obs.starts_with("error:") {
        return Err(obs.lines().next().unwrap_or("").to_string());
    }
    turns.push((prompt, cmd));
    Ok(())
}

/// The oracle's episode for `q`, or why it could not browse it.
pub fn oracle(
    site: &Site,
    q: &Question,
    cfg: BrowserConfig,
    style: PromptStyle,
) -> std::result::Result<Demo, String> {
    let searches: Vec<&str> = q
        .path
        .iter()
        .filter_map(|a| a.strip_prefix("Search[")?.strip_suffix(']'))
        .collect();
    if searches.is_empty() {
        return Err(format!("{}: the path has no Search step", q.id));
    }
    let mut b = Browser::new(site, &q.question, cfg);
    let mut turns = Vec::new();
    for (k, x) in searches.iter().enumerate() {
        oracle_step(&mut b, format!("Search {x}"), style, &mut turns)?;
        // The result titled x.
        let hit = (0..b.link_count()).find(|&i| {
            let mut probe = Browser::new(site, "", cfg);
            probe.step(&format!("Search {x}"));
            probe.step(&format!("Clicked on link {i}"));
            probe.render().contains(&format!("\nTitle: {x}\n"))
        });
        let Some(i) = hit else {
            return Err(format!(
                "{}: no result titled {x:?} for \"Search {x}\"",
                q.id
            ));
        };
        oracle_step(&mut b, format!("Clicked on link {i}"), style, &mut turns)?;
        let target = searches.get(k + 1).copied().unwrap_or(q.answer.as_str());
        let t = norm(target);
        if !b.visible_lines().iter().any(|l| norm(l).contains(&t)) {
            oracle_step(&mut b, format!("Find in page: {target}"), style, &mut turns)?;
        }
        let Some(line) = b.visible_lines().into_iter().find(|l| norm(l).contains(&t)) else {
            return Err(format!("{}: {target:?} is not on the page of {x}", q.id));
        };
        oracle_step(&mut b, format!("Quote: {line}"), style, &mut turns)?;
    }
    oracle_step(&mut b, "End: Answer".into(), style, &mut turns)?;
    let gold = norm(&q.answer);
    let cite = b
        .quotes
        .iter()
        .rposition(|qt| norm(&qt.text).contains(&gold))
        .map(|k| k + 1)
        .ok_or_else(|| format!("{}: no quote holds the answer", q.id))?;
    Ok(Demo {
        id: q.id.clone(),
        turns,
        answer_prompt: b.answer_prompt(),
        answer: format!("{} [{cite}]", q.answer),
    })
}

/// Behaviour-cloning records (`{"prompt", "completion"}` per line): one per command, and one for
/// the answer. Completions start with a space and end with a newline, as the model is asked to
/// write them after `Next action:` and `Answer:`.
pub fn records(demos: &[Demo]) -> String {
    let mut out = String::new();
    for d in demos {
        for (p, c) in &d.turns {
            out.push_str(
                &serde_json::json!({"prompt": p, "completion": format!(" {c}\n")}).to_string(),
            );
            out.push('\n');
        }
        out.push_str(
            &serde_json::json!({"prompt": d.answer_prompt, "completion": format!(" {}\n", d.answer)})
                .to_string(),
        );
        out.push('\n');
    }
    out
}

/// Whether `answer` is accurate and supported (see the module header).
pub fn grade(answer: &str, gold: &str, quotes: &[Quote]) -> (bool, bool) {
    let g = norm(gold);
    let accurate = !g.is_empty() && norm(answer).contains(&g);
    let cited = citations(answer);
    let valid = cited.iter().all(|&k| k >= 1 && k <= quotes.len());
    let backs = cited
        .iter()
        .any(|&k| k >= 1 && k <= quotes.len() && norm(&quotes[k - 1].text).contains(&g));
    (accurate, accurate && valid && backs)
}

/// The reference numbers `[k]` an answer cites.
pub fn citations(answer: &str) -> Vec<usize> {
    let mut out = Vec::new();
    let mut rest = answer;
    while let Some(i) = rest.find('[') {
        rest = &rest[i + 1..];
        if let Some(j) = rest.find(']')
            && let Ok(k) = rest[..j].trim().parse::<usize>()
        {
            out.push(k);
        }
    }
    out
}

/// Up to `limit` questions of `split`, taken round-robin over the kinds (each kind in file order),
/// so a small sample covers every kind.
pub fn pick<'q>(questions: &'q [Question], split: &str, limit: usize) -> Vec<&'q Question> {
    let mut kinds: Vec<(&str, Vec<&Question>)> = Vec::new();
    for q in questions.iter().filter(|q| q.split == split) {
        match kinds.iter_mut().find(|k| k.0 == q.kind) {
            Some(k) => k.1.push(q),
            None => kinds.push((q.kind.as_str(), vec![q])),
        }
    }
    let mut out = Vec::new();
    let mut i = 0;
    while out.len() < limit && kinds.iter().any(|k| i < k.1.len()) {
        for k in &kinds {
            if let Some(q) = k.1.get(i)
                && out.len() < limit
            {
                out.push(*q);
            }
        }
        i += 1;
    }
    out
}

/// One evaluated question.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outcome {
    pub id: String,
    pub question: String,
    pub gold: String,
    pub turns: Vec<Turn>,
    pub quotes: Vec<Quote>,
    /// Whether some collected quote holds the gold answer.
    pub found: bool,
    /// The answer prompt (question and numbered references) as the browser wrote it, before any
    /// chat template: what a reward model reads before each answer. Empty in outcome files
    /// written before it was recorded.
    #[serde(default)]
    pub answer_prompt: String,
    pub answers: Answers,
}

/// Who browses an evaluated question.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Episodes {
    /// The model, greedily, under the state's command grammar.
    Model,
    /// The oracle's path, but quoting every visible line of each page it opens (as the cloned
    /// model does), so the answer has to be picked out of many references.
    OracleWide,
}

/// How an episode is run and answered.
#[derive(Debug, Clone, Copy)]
pub struct EvalConfig {
    pub browser: BrowserConfig,
    pub style: PromptStyle,
    pub episodes: Episodes,
    /// Answers sampled.
    pub n: usize,
    pub answer_tokens: usize,
}

/// The oracle's commands for `q`, replayed with every visible line quoted where the oracle quotes
/// one line; ends with `End: Answer` (or earlier, at the quote budget).
pub fn oracle_wide<'s>(
    site: &'s Site,
    q: &Question,
    cfg: BrowserConfig,
) -> Result<(Browser<'s>, Vec<Turn>)> {
    let demo = oracle(site, q, cfg, PromptStyle::Plain).map_err(AgentError::Task)?;
    let mut b = Browser::new(site, &q.question, cfg);
    let mut turns = Vec::new();
    for (_, cmd) in &demo.turns {
        if b.ended.is_some() {
            break;
        }
        let cmds: Vec<String> = if cmd.starts_with("Quote: ") {
            b.visible_lines()
                .into_iter()
                .map(|l| format!("Quote: {l}"))
                .collect()
        } else {
            vec![cmd.clone()]
        };
        for c in cmds {
            if b.ended.is_some() {
                break;
            }
            let observation = b.step(&c);
            turns.push(Turn {
                command: c,
                observation,
            });
        }
    }
    if b.ended.is_none() {
        let observation = b.step("End: Answer");
        turns.push(Turn {
            command: "End: Answer".into(),
            observation,
        });
    }
    Ok((b, turns))
}

/// Browses `q` (with `lm` or the wide oracle, as `c.episodes` says) and samples `c.n` answers
/// from `engine`; with `chat`, the answer prompt is the user turn of that chat template.
pub fn evaluate_one(
    site: &Site,
    q: &Question,
    c: EvalConfig,
    lm: &mut dyn CommandLm,
    engine: &canon_infer::Engine,
    chat: Option<&canon_text::ChatTemplate>,
) -> Result<Outcome> {
    let (b, turns) = match c.episodes {
        Episodes::Model => {
            let mut b = Browser::new(site, &q.question, c.browser);
            let turns = browse_run::drive(&mut b, lm, c.style)?;
            (b, turns)
        }
        Episodes::OracleWide => oracle_wide(site, q, c.browser)?,
    };
    let answer_prompt = b.answer_prompt();
    let model_prompt = match chat {
        Some(t) => canon_text::chat_prompt(Some(t), &[("user".into(), answer_prompt.clone())])
            .map_err(|e| AgentError::Text(e.to_string()))?,
        None => answer_prompt.clone(),
    };
    let answers = browse_run::answer(
        engine,
        &model_prompt,
        b.quotes.len(),
        c.n,
        c.answer_tokens,
        true,
    )?;
    let g = norm(&q.answer);
    Ok(Outcome {
        id: q.id.clone(),
        question: q.question.clone(),
        gold: q.answer.clone(),
        found: b.quotes.iter().any(|qt| norm(&qt.text).contains(&g)),
        turns,
        quotes: b.quotes,
        answer_prompt,
        answers,
    })
}

/// Accuracy and supported-answer rate at one n, with their standard errors
/// (`sqrt(p(1 − p)/questions)`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    pub n: usize,
    pub accurate: f64,
    pub supported: f64,
    pub accurate_se: f64,
    pub supported_se: f64,
}

/// The standard error of a proportion `p` over `n` items.
pub fn std_err(p: f64, n: usize) -> f64 {
    if n == 0 {
        return 0.0;
    }
    (p * (1.0 - p) / n as f64).max(0.0).sqrt()
}

/// How often the scores rank an accurate sampled answer above an inaccurate one of the same
/// question (distinct texts): (accuracy, pairs); `None` without such a pair.
pub fn sample_pair_accuracy(outcomes: &[Outcome]) -> Option<(f64, usize)> {
    let (mut right, mut total) = (0usize, 0usize);
    for o in outcomes {
        let g = norm(&o.gold);
        let a = &o.answers.answers;
        let acc: Vec<bool> = a
            .iter()
            .map(|x| !g.is_empty() && norm(x).contains(&g))
            .collect();
        for i in (0..a.len()).filter(|&i| acc[i]) {
            for j in (0..a.len()).filter(|&j| !acc[j] && a[j] != a[i]) {
                total += 1;
                right += (o.answers.scores.get(i) > o.answers.scores.get(j)) as usize;
            }
        }
    }
    (total > 0).then(|| (right as f64 / total as f64, total))
}

/// Best-of-n over the first `n` sampled answers of each outcome, for each n.
pub fn summarize(outcomes: &[Outcome], ns: &[usize]) -> Result<Vec<Row>> {
    if outcomes.is_empty() {
        return Err(AgentError::Task("no questions were evaluated".into()));
    }
    let total = outcomes.len() as f64;
    Ok(ns
        .iter()
        .map(|&n| {
            let (mut a, mut s) = (0usize, 0usize);
            for o in outcomes {
                if let Some(i) = o.answers.best_of_first(n) {
                    let (acc, sup) = grade(&o.answers.answers[i], &o.gold, &o.quotes);
                    a += acc as usize;
                    s += sup as usize;
                }
            }
            let (accurate, supported) = (a as f64 / total, s as f64 / total);
            Row {
                n,
                accurate,
                supported,
                accurate_se: std_err(accurate, outcomes.len()),
                supported_se: std_err(supported, outcomes.len()),
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pages() -> Vec<Page> {
        let p = |t: &str, x: &str| Page {
            title: t.into(),
            text: x.into(),
        };
        vec![
            p(
                "dpkg-source",
                "dpkg-source is a command: source package tool. The command dpkg-source is provided by the package dpkg-dev. Its manual page is in section 1.",
            ),
            p(
                "dpkg-dev",
                "dpkg-dev is a Debian package: Debian package development tools. Its version is 1.21.22. It is maintained by Dpkg Developers. It belongs to section utils.",
            ),
            p(
                "tar",
                "tar is a Debian package: GNU version of the tar archiving utility. Its version is 1.34. It is maintained by Janos Lenart.",
            ),
        ]
    }

    fn question() -> Question {
        Question {
            id: "cmd_maintainer:dpkg-source".into(),
            split: "test".into(),
            kind: "cmd_maintainer".into(),
            entity: "dpkg-source".into(),
            question: "Who maintains the package that provides the command dpkg-source?".into(),
            answer: "Dpkg Developers".into(),
            path: vec![
                "Search[dpkg-source]".into(),
                "Search[dpkg-dev]".into(),
                "Finish[Dpkg Developers]".into(),
            ],
            facts: Vec::new(),
        }
    }

    #[test]
    fn pick_interleaves_kinds() {
        let mk = |id: &str, kind: &str, split: &str| Question {
            id: id.into(),
            kind: kind.into(),
            split: split.into(),
            ..question()
        };
        let qs = vec![
            mk("a1", "a", "test"),
            mk("a2", "a", "test"),
            mk("a3", "a", "train"),
            mk("b1", "b", "test"),
        ];
        let ids: Vec<&str> = pick(&qs, "test", 3).iter().map(|q| q.id.as_str()).collect();
        assert_eq!(ids, vec!["a1", "b1", "a2"]);
        assert!(pick(&qs, "dev", 3).is_empty());
    }

    #[test]
    fn sentences_split_after_periods() {
        assert_eq!(
            sentences("A b. Version 1.2.3 here. End"),
            vec!["A b.", "Version 1.2.3 here.", "End"]
        );
        assert_eq!(
            sentences("It is maintained by Theodore Y. Ts'o. Next."),
            vec!["It is maintained by Theodore Y. Ts'o.", "Next."]
        );
    }

    #[test]
    fn the_oracle_browses_to_the_answer_and_cites_it() {
        let s = site(&pages()).unwrap();
        let d = oracle(
            &s,
            &question(),
            BrowserConfig::default(),
            PromptStyle::Plain,
        )
        .unwrap();
        let cmds: Vec<&str> = d.turns.iter().map(|t| t.1.as_str()).collect();
        assert_eq!(cmds[0], "Search dpkg-source");
        assert!(cmds[1].starts_with("Clicked on link "));
        assert_eq!(
            cmds[2],
            "Quote: The command dpkg-source is provided by the package dpkg-dev."
        );
        assert_eq!(cmds[3], "Search dpkg-dev");
        assert_eq!(cmds[5], "Quote: It is maintained by Dpkg Developers.");
        assert_eq!(cmds[6], "End: Answer");
        assert_eq!(d.answer, "Dpkg Developers [2]");
        // Each prompt is the state before its command, in the plain style.
        assert!(d.turns[0].0.ends_with("Next action:"));
        assert!(!d.turns[0].0.contains("tac command"));
        let recs = records(&[d]);
        assert_eq!(recs.lines().count(), 8);
        assert!(recs.contains("\"completion\":\" Dpkg Developers [2]\\n\""));
        // A question whose page does not exist is refused with the reason.
        let mut q = question();
        q.path[0] = "Search[nonexistent-tool]".into();
        let e = oracle(&s, &q, BrowserConfig::default(), PromptStyle::Plain).unwrap_err();
        assert!(e.contains("nonexistent-tool"), "{e}");
    }

    #[test]
    fn grading_needs_the_answer_and_a_quote_that_holds_it() {
        let quotes = vec![
            Quote {
                title: "a".into(),
                url: "a".into(),
                text: "provided by dpkg-dev".into(),
            },
            Quote {
                title: "b".into(),
                url: "b".into(),
                text: "It is maintained by Dpkg Developers.".into(),
            },
        ];
        let g = "Dpkg Developers";
        assert_eq!(grade("dpkg  developers [2]", g, &quotes), (true, true));
        assert_eq!(grade("Dpkg Developers [1]", g, &quotes), (true, false));
        assert_eq!(grade("Dpkg Developers", g, &quotes), (true, false));
        assert_eq!(grade("Dpkg Developers [2][3]", g, &quotes), (true, false));
        assert_eq!(grade("Janos [2]", g, &quotes), (false, false));
        assert_eq!(citations("x [1] y [ 2 ] [z] [3"), vec![1, 2]);
    }

    #[test]
    fn sample_pairs_count_accurate_over_inaccurate() {
        let o = |answers: &[&str], scores: &[f64]| Outcome {
            id: "q".into(),
            question: "q?".into(),
            gold: "Dpkg Developers".into(),
            turns: Vec::new(),
            quotes: Vec::new(),
            found: false,
            answer_prompt: String::new(),
            answers: Answers {
                answers: answers.iter().map(|s| s.to_string()).collect(),
                scores: scores.to_vec(),
                best: None,
            },
        };
        // Two accurate answers, two inaccurate: four pairs, three ranked right.
        let os = [o(
            &["Dpkg Developers", "no", "dpkg developers [1]", "[1]"],
            &[2.0, 1.0, 0.5, 0.0],
        )];
        assert_eq!(sample_pair_accuracy(&os), Some((0.75, 4)));
        assert_eq!(sample_pair_accuracy(&[o(&["no"], &[1.0])]), None);
    }
}
