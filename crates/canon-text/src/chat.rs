//! Chat templates: the Jinja template a model ships (`tokenizer.chat_template` in GGUF metadata or
//! `tokenizer_config.json`), rendered with minijinja the way HF transformers renders it
//! (`trim_blocks`, `lstrip_blocks`, Python string methods, `raise_exception`).

use minijinja::{Environment, ErrorKind, context};
use serde::{Deserialize, Serialize};

use crate::{Result, TextError};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// The most instructions one rendering may run (minijinja's fuel): about 20,000 messages of a
/// typical template, and a fraction of a second of work.
pub const TEMPLATE_FUEL: u64 = 10_000_000;

#[derive(Debug, Clone)]
pub struct ChatTemplate {
    source: String,
    pub bos_token: String,
    pub eos_token: String,
}

impl ChatTemplate {
    /// Parses the template once so that syntax errors surface at load time.
    pub fn new(source: impl Into<String>, bos_token: &str, eos_token: &str) -> Result<Self> {
        let t = Self {
            source: source.into(),
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
        };
        t.env()?;
        Ok(t)
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    fn env(&self) -> Result<Environment<'static>> {
        let mut env = Environment::new();
        // A template comes from the model file, which may be hostile: bound the work one
        // rendering may do (nested loops over `range`) and its recursion. Real chat templates
        // spend a few hundred units per message.
        env.set_fuel(Some(TEMPLATE_FUEL));
        env.set_recursion_limit(64);
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_function("strftime_now", |fmt: String| -> String {
            // Deterministic: templates use it for a date line; we do not read the clock here.
            let _ = fmt;
            String::new()
        });
        env.add_template_owned("chat", self.source.clone())
            .map_err(|e| TextError::Template(format!("cannot parse the template: {e}")))?;
        Ok(env)
    }

    /// Renders the conversation; with `add_generation_prompt` the text ends where the assistant's
    /// reply begins.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let env = self.env()?;
        let tmpl = env
            .get_template("chat")
            .map_err(|e| TextError::Template(e.to_string()))?;
        tmpl.render(context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token,
            eos_token => self.eos_token,
        })
        .map_err(|e| TextError::Template(format!("cannot render: {e}")))
    }
}

/// The prompt that asks a model for the next assistant turn of `messages` (role, content): its
/// chat template's rendering, or, for a model without a template, the contents joined by blank
/// lines. Every "render the chat and generate" caller builds its prompt here.
pub fn chat_prompt(
    template: Option<&ChatTemplate>,
    messages: &[(String, String)],
) -> Result<String> {
    match template {
        Some(t) => {
            let msgs: Vec<Message> = messages.iter().map(|(r, c)| Message::new(r, c)).collect();
            t.render(&msgs, true)
        }
        None => Ok(messages
            .iter()
            .map(|m| m.1.as_str())
            .collect::<Vec<_>>()
            .join("\n\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_prompt_renders_the_template_or_joins_the_contents() {
        let msgs = vec![
            ("system".to_string(), "Be brief.".to_string()),
            ("user".to_string(), "Hi".to_string()),
        ];
        assert_eq!(chat_prompt(None, &msgs).unwrap(), "Be brief.\n\nHi");
        let t = ChatTemplate::new(
            "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}",
            "",
            "",
        )
        .unwrap();
        assert_eq!(
            chat_prompt(Some(&t), &msgs).unwrap(),
            "<system>Be brief.<user>Hi<assistant>"
        );
    }

    #[test]
    fn a_hostile_template_runs_out_of_fuel_instead_of_hanging() {
        let t = ChatTemplate::new(
            "{% for a in range(100000) %}{% for b in range(100000) %}x{% endfor %}{% endfor %}",
            "",
            "",
        )
        .unwrap();
        let e = t.render(&[Message::new("user", "hi")], true).unwrap_err();
        assert!(e.to_string().contains("fuel"), "{e}");
        let t = ChatTemplate::new(
            "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
            "",
            "",
        )
        .unwrap();
        assert!(t.render(&[Message::new("user", "hi")], true).is_err());
        // The fuel is no limit for real use: a 2,000-message conversation renders.
        let t = ChatTemplate::new(CHATML, "", "").unwrap();
        let long: Vec<Message> = (0..2000)
            .map(|i| Message::new(if i % 2 == 0 { "user" } else { "assistant" }, "text"))
            .collect();
        assert!(t.render(&long, true).unwrap().len() > 2000 * 20);
    }

    const CHATML: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are helpful.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn renders_chatml_with_default_system_and_generation_prompt() {
        let t = ChatTemplate::new(CHATML, "<|im_start|>", "<|im_end|>").unwrap();
        let s = t.render(&[Message::new("user", "Hi")], true).unwrap();
        assert_eq!(
            s,
            "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        let s = t
            .render(
                &[
                    Message::new("system", "Be terse."),
                    Message::new("user", "Hi"),
                ],
                false,
            )
            .unwrap();
        assert_eq!(
            s,
            "<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        );
    }

    #[test]
    fn python_methods_and_raise_exception_work() {
        let t = ChatTemplate::new(
            "{% if messages[0]['content'].strip() == '' %}{{ raise_exception('empty') }}{% endif %}{{ messages[0]['content'].upper() }}",
            "",
            "",
        )
        .unwrap();
        assert_eq!(
            t.render(&[Message::new("user", " hi ")], false).unwrap(),
            " HI "
        );
        assert!(
            t.render(&[Message::new("user", "  ")], false)
                .unwrap_err()
                .to_string()
                .contains("empty")
        );
    }

    #[test]
    fn syntax_errors_surface_at_load() {
        assert!(ChatTemplate::new("{% for %}", "", "").is_err());
    }
}
