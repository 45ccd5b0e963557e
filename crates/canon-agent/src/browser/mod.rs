//! WebGPT's text-based browser (Nakano et al., 2021) over a local site: a folder of HTML (or
//! text) pages with a BM25 search engine.
//!
//! Commands (the paper's): `Search <query>`, `Clicked on link <id>`, `Find in page: <text>`,
//! `Quote: <text>`, `Scrolled down <1|2|3>`, `Scrolled up <1|2|3>`, `Top`, `Back`,
//! `End: Answer`, `End: Nonsense`, `End: Controversial`.
//!
//! Rendering: a page is its text lines with links shown inline as `【id†text】` (ids numbered per
//! page from 0); the model sees a window of `window` lines at the cursor. A scroll moves the cursor
//! by that many windows (clamped to the page); `Find in page` moves it to the next line containing
//! the text (case-insensitive), searching after the current window and wrapping to the top once;
//! `Back` returns to the previous page and its cursor; `Search` shows a results page whose links
//! are the hits. A quote must be a substring of the current page; quotes are kept in collection
//! order, without duplicates. A malformed or failing command is an error observation that leaves
//! the state unchanged. The episode ends on `End: ...`, when the action budget is spent (a forced
//! `End: Answer`), or when the quotes exceed their character limit.
//!
//! The module's parts: `render` (HTML to marked-up lines), `site` (the pages and their search
//! engine), `state` (commands and the episode's state); the answer scores are here.

mod render;
mod site;
mod state;

pub use render::{Link, SitePage, render_html, strip_markers};
pub use site::Site;
pub use state::{Browser, BrowserConfig, Command, Quote};

/// A documented heuristic answer score until a reward model exists: +1 per distinct valid
/// citation `[k]` (1 ≤ k ≤ `references`), −1 per citation of a reference that does not exist,
/// −1 for an empty answer; a tiny length term (−0.001 per character beyond 600) breaks ties toward
/// concise answers.
pub fn heuristic_score(answer: &str, references: usize) -> f64 {
    if answer.trim().is_empty() {
        return -1.0;
    }
    let mut valid = std::collections::BTreeSet::new();
    let mut invalid = 0usize;
    let mut rest = answer;
    while let Some(a) = rest.find('[') {
        let after = &rest[a + 1..];
        let Some(b) = after.find(']') else { break };
        if let Ok(k) = after[..b].trim().parse::<usize>() {
            if (1..=references).contains(&k) {
                valid.insert(k);
            } else {
                invalid += 1;
            }
        }
        rest = &after[b + 1..];
    }
    let len = answer.chars().count().saturating_sub(600) as f64;
    valid.len() as f64 - invalid as f64 - 0.001 * len
}

/// Best-of-n: the index of the highest score, the lowest index among ties; `None` when empty.
pub fn best_of_n(scores: &[f64]) -> Option<usize> {
    let mut best: Option<usize> = None;
    for (i, s) in scores.iter().enumerate() {
        if best.is_none_or(|b| *s > scores[b]) {
            best = Some(i);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site() -> Site {
        let mut long = String::from("<html><head><title>Rust</title></head><body><h1>Rust</h1>");
        for i in 1..=23 {
            long.push_str(&format!("<p>Rust line {i}.</p>"));
        }
        long.push_str("<p>Rust was first released in 2015. See <a href=\"cargo.html\">Cargo</a>.</p></body></html>");
        Site::from_texts(vec![
            ("index.html".into(), "<html><head><title>Home</title></head><body><p>Welcome to the <a href=\"rust.html\">Rust page</a> and the <a href=\"http://example.org/\">outside</a>.</p><script>var x = '<p>no</p>';</script><p>Fish &amp; chips.</p></body></html>".into()),
            ("rust.html".into(), long),
            ("cargo.html".into(), "<title>Cargo</title><p>Cargo is the Rust package manager.</p><p>It builds crates.</p><p>Go <a href=\"./index.html\">home</a>.</p>".into()),
        ])
        .unwrap()
    }

    #[test]
    fn html_renders_with_link_markers() {
        let s = site();
        let home = &s.pages[0];
        assert_eq!(home.url, "index.html");
        assert_eq!(
            home.lines,
            [
                "Welcome to the 【0†Rust page】 and the 【1†outside】.",
                "Fish & chips."
            ]
        );
        assert_eq!(home.links[0].target, Some(1));
        assert_eq!(home.links[1].target, None);
        assert_eq!(s.pages[2].links[0].target, Some(0), "./index.html resolves");
        assert_eq!(
            strip_markers(&home.lines[0]),
            "Welcome to the Rust page and the outside."
        );
    }

    #[test]
    fn commands_round_trip_and_malformed_ones_are_errors() {
        for c in [
            "Search rust release",
            "Clicked on link 3",
            "Find in page: 2015",
            "Quote: Rust was first released in 2015.",
            "Scrolled down 2",
            "Scrolled up 1",
            "Top",
            "Back",
            "End: Answer",
            "End: Nonsense",
            "End: Controversial",
        ] {
            assert_eq!(Command::parse(c).unwrap().text(), c);
        }
        for bad in [
            "Scrolled down 4",
            "Clicked on link x",
            "Search ",
            "End: Maybe",
            "Jump",
            "Quote:",
        ] {
            assert!(Command::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_scripted_episode_gives_exact_observations() {
        let s = site();
        let cfg = BrowserConfig {
            window: 10,
            max_actions: 13,
            max_quote_chars: 500,
            search_results: 3,
        };
        let mut b = Browser::new(&s, "When was Rust first released?", cfg);
        let o = b.step("Search Rust released");
        assert!(o.starts_with("Question:\nWhen was Rust first released?\n\nQuotes:\n(none)\n\nPast actions:\nSearch Rust released\n\nTitle: Search results for 'Rust released'\nURL: search?q=Rust released\nLines 1-"), "{o}");
        assert!(o.contains("【0†Rust】 rust.html\nRust line 1.\n"), "{o}");
        let o = b.step("Clicked on link 0");
        assert!(
            o.contains("Title: Rust\nURL: rust.html\nLines 1-10 of 25:\nRust\nRust line 1.\n"),
            "{o}"
        );
        assert!(
            o.ends_with("Rust line 9.\n\nActions left: 11\nNext action:"),
            "{o}"
        );
        // scrolling clamps at the last window
        let o = b.step("Scrolled down 3");
        assert!(o.contains("Lines 21-25 of 25:\nRust line 20.\n"), "{o}");
        let o = b.step("Scrolled up 1");
        assert!(o.contains("Lines 11-20 of 25:\nRust line 10.\n"), "{o}");
        // find jumps to the next matching line after the window, wrapping to the top
        let o = b.step("Find in page: line 3");
        assert!(
            o.contains("Lines 4-13 of 25:\nRust line 3.\n"),
            "wrapped to the top: {o}"
        );
        let o = b.step("Find in page: nowhere");
        assert!(
            o.starts_with("error: \"nowhere\" is not on this page\n"),
            "{o}"
        );
        let o = b.step("Find in page: released");
        assert!(
            o.contains("Lines 25-25 of 25:\nRust was first released in 2015. See 【0†Cargo】.\n"),
            "{o}"
        );
        let o = b.step("Quote: first released in 2015");
        assert!(
            o.contains("Quotes:\n[1] From Rust (rust.html):\nfirst released in 2015\n"),
            "{o}"
        );
        let o = b.step("Quote: released in 1999");
        assert!(o.starts_with("error: the quote is not on this page"), "{o}");
        b.step("Quote: first released in 2015"); // a duplicate is kept once
        assert_eq!(b.quotes.len(), 1);
        b.step("Clicked on link 0");
        b.step("Quote: Cargo is the Rust package manager.");
        // Back after two clicks: the Rust page at the cursor it had
        let o = b.step("Back");
        assert!(
            o.contains("Title: Rust\nURL: rust.html\nLines 25-25 of 25:"),
            "{o}"
        );
        let o = b.step("Back");
        assert!(
            o.contains("Title: Search results for 'Rust released'"),
            "{o}"
        );
        assert_eq!(
            b.answer_prompt(),
            "Question: When was Rust first released?\n\nReferences:\n[1] Rust (rust.html): first released in 2015\n[2] Cargo (cargo.html): Cargo is the Rust package manager.\n\nAnswer the question from the references, citing them as [1], [2], ...\nAnswer:"
        );
        // the 13th action spends the budget: a forced End: Answer
        assert_eq!(b.actions.len(), 12);
        let o = b.step("Top");
        assert_eq!(b.ended.as_deref(), Some("Answer"));
        assert!(o.ends_with("\nEnded: Answer\n"), "{o}");
        assert!(b.step("Top").starts_with("error: the episode has ended"));
    }

    #[test]
    fn best_of_n_takes_the_highest_score_and_the_first_of_ties() {
        assert_eq!(best_of_n(&[]), None);
        assert_eq!(best_of_n(&[0.5]), Some(0));
        assert_eq!(best_of_n(&[1.0, 3.0, 3.0, 2.0]), Some(1));
        assert_eq!(
            heuristic_score("Rust came out in 2015 [1], says [2].", 2),
            2.0
        );
        assert_eq!(heuristic_score("In 2015 [1][1] and [3].", 2), 0.0);
        assert_eq!(heuristic_score("  ", 2), -1.0);
        let s = [
            heuristic_score("No idea.", 1),
            heuristic_score("2015 [1].", 1),
            heuristic_score("2015 [1]. Also [1].", 1),
        ];
        assert_eq!(best_of_n(&s), Some(1));
    }

    #[test]
    fn errors_leave_the_state_unchanged() {
        let s = site();
        let mut b = Browser::new(&s, "q", BrowserConfig::default());
        let before = b.render();
        assert!(
            b.step("Clicked on link 0")
                .starts_with("error: no page is open")
        );
        assert!(
            b.step("Back")
                .starts_with("error: there is no previous page")
        );
        assert!(
            b.step("Scrolled down 9")
                .starts_with("error: expected a scroll amount")
        );
        assert_eq!(b.render(), before);
        b.step("Search welcome");
        let o = b.step("Clicked on link 7");
        assert!(o.starts_with("error: expected a link id below"), "{o}");
        b.step("Clicked on link 0");
        assert!(
            b.step("Clicked on link 1")
                .starts_with("error: link 1 leads outside the site")
        );
        assert_eq!(b.actions, ["Search welcome", "Clicked on link 0"]);
    }
}
