//! `canon chat`: multi-turn chat with history through the model's chat template. In a terminal it
//! prompts with `> `; piped, each standard-input line is one user turn. `/reset` clears the history,
//! `/exit` (or end of input) quits.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::Context;
use canon_infer::opts::ChatArgs;
use canon_infer::{GenerateRequest, LmGenerator};
use canon_text::Message;

use crate::{Ctx, model_gen};

pub fn run(a: ChatArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let sampling = a.sampling.to_config()?;
    let lm = model_gen::load_lm(&a.model, ctx)?;
    let tmpl = lm
        .chat_template
        .clone()
        .with_context(|| format!("the model {} has no chat template", lm.path.display()))?;
    let mut g = LmGenerator::new(lm);
    let interactive = std::io::stdin().is_terminal();
    if interactive && !ctx.quiet {
        eprintln!(
            "canon: chat with {} — /reset clears the history, /exit quits",
            g.lm.name
        );
    }
    let mut history: Vec<Message> = Vec::new();
    if let Some(s) = &a.system {
        history.push(Message::new("system", s.clone()));
    }
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    let mut stdout = std::io::stdout();
    loop {
        if interactive {
            print!("> ");
            stdout.flush()?;
        }
        let Some(line) = lines.next() else { break };
        let line = line.context("cannot read standard input")?;
        let user = line.trim_end_matches('\r');
        match user.trim() {
            "/exit" | "/quit" => break,
            "/reset" => {
                history.retain(|m| m.role == "system");
                if interactive {
                    eprintln!("canon: history cleared");
                }
                continue;
            }
            "" if interactive => continue,
            _ => {}
        }
        history.push(Message::new("user", user));
        let prompt = tmpl.render(&history, true)?;
        let req = GenerateRequest {
            prompt,
            max_tokens: a.max_tokens,
            sampling: sampling.clone(),
            stop: Vec::new(),
            ignore_eos: false,
            logprobs: None,
        };
        let out = g.generate_streaming(&req, &mut |piece| {
            stdout
                .write_all(piece.as_bytes())
                .and_then(|_| stdout.flush())
                .is_ok()
        })?;
        writeln!(stdout)?;
        history.push(Message::new("assistant", out.text.trim().to_string()));
    }
    Ok(())
}
