//! The serving engine as a batch model.

use super::*;

/// The local model on the batched engine: each call is rendered with the model's chat template,
/// all calls of a batch are submitted together and decode as one batch; a call with a schema is
/// decoded under it (llguidance).
pub struct EngineLlm {
    pub engine: canon_infer::Engine,
    pub template: Option<canon_text::ChatTemplate>,
    pub name: String,
    grammar: Option<canon_infer::GrammarCompiler>,
}

impl EngineLlm {
    pub fn new(
        engine: canon_infer::Engine,
        template: Option<canon_text::ChatTemplate>,
        name: &str,
    ) -> Self {
        EngineLlm {
            engine,
            template,
            name: name.to_string(),
            grammar: None,
        }
    }

    fn request(&mut self, c: &Call) -> std::result::Result<canon_infer::Request, String> {
        let prompt = canon_text::chat_prompt(self.template.as_ref(), &c.messages)
            .map_err(|e| e.to_string())?;
        let ids = self
            .engine
            .tokenizer()
            .encode(&prompt, true)
            .map_err(|e| e.to_string())?;
        crate::graph::check_fits(ids.len(), c.max_tokens, self.engine.max_len())?;
        let mut req = canon_infer::Request::new(ids, c.max_tokens);
        if let Some(schema) = &c.schema {
            if self.grammar.is_none() {
                self.grammar = Some(
                    canon_infer::GrammarCompiler::new(self.engine.tokenizer())
                        .map_err(|e| e.to_string())?,
                );
            }
            if let Some(gc) = &self.grammar {
                let g = gc
                    .compile(&canon_infer::Grammar::JsonSchema(schema.clone()))
                    .map_err(|e| e.to_string())?;
                req.constraint = Some(Box::new(g));
            }
        }
        Ok(req)
    }
}

impl BatchLlm for EngineLlm {
    fn chat_batch(&mut self, calls: &[Call]) -> Vec<std::result::Result<String, String>> {
        let mut handles = Vec::with_capacity(calls.len());
        for c in calls {
            handles.push(
                self.request(c)
                    .and_then(|r| self.engine.submit(r).map_err(|e| e.to_string())),
            );
        }
        handles
            .into_iter()
            .map(|h| {
                let h = h?;
                while let Some(e) = h.recv() {
                    match e {
                        canon_infer::Event::Done(c) => return Ok(c.text),
                        canon_infer::Event::Error(m) => return Err(m),
                        _ => {}
                    }
                }
                Err("the engine stopped".into())
            })
            .collect()
    }
    fn id(&self) -> String {
        format!("local:{}", self.name)
    }
}
