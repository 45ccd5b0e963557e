//! `canon agent browse`: WebGPT's text browser (paper 17) over a local site, driven by commands;
//! the settings are `canon_agent::browse_opts`.

use std::io::BufRead;

use anyhow::Context;
pub use canon_agent::browse_opts::BrowseArgs;
use canon_agent::browse_opts::episode_end_text;
use canon_agent::browse_run;
use canon_agent::browser::{Browser, Site};
use serde_json::json;

pub fn run(a: BrowseArgs, ctx: &crate::Ctx) -> anyhow::Result<()> {
    let cfg = a.browser_config()?;
    let site = Site::load(&a.site).with_context(|| format!("--site {}", a.site.display()))?;
    let engine = match &a.model {
        Some(m) => Some(canon_infer::Engine::start(
            crate::model_gen::load_lm(m, ctx)?,
            canon_infer::EngineConfig {
                slots: a.n.min(15),
                ..Default::default()
            },
        )?),
        None => None,
    };
    let mut b = Browser::new(&site, &a.question, cfg);
    let mut steps = Vec::new();
    let mut show = |command: &str, obs: &str| {
        if !a.json {
            println!("> {command}\n{obs}\n");
        }
        steps.push(json!({"command": command, "observation": obs}));
    };
    match (&engine, a.drive) {
        (Some(e), true) => {
            let mut lm = browse_run::EngineCommandLm::new(e)?;
            for t in browse_run::drive(&mut b, &mut lm, browse_run::PromptStyle::FewShot)? {
                show(&t.command, &t.observation);
            }
        }
        _ => {
            let lines: Vec<String> = match &a.commands {
                Some(p) => std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read {}", p.display()))?
                    .lines()
                    .map(str::to_string)
                    .collect(),
                None => std::io::stdin().lock().lines().collect::<Result<_, _>>()?,
            };
            for l in lines.iter().filter(|l| !l.trim().is_empty()) {
                if b.ended.is_some() {
                    break;
                }
                let obs = b.step(l);
                show(l, &obs);
            }
        }
    }
    let answers = match &engine {
        Some(e) => serde_json::to_value(browse_run::answer(
            e,
            &b.answer_prompt(),
            b.quotes.len(),
            a.n,
            a.answer_tokens,
            false,
        )?)?,
        None => serde_json::Value::Null,
    };
    if let Some(e) = &engine {
        e.shutdown();
    }
    if a.json {
        println!(
            "{}",
            json!({"question": a.question, "steps": steps, "quotes": b.quotes,
                "ended": b.ended, "answer_prompt": b.answer_prompt(), "answers": answers})
        );
    } else {
        print!("{}", episode_end_text(&b.answer_prompt(), &answers, a.n));
    }
    Ok(())
}
