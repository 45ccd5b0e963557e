//! An OpenAI-compatible chat-completions endpoint (`canon serve`, llama-server, vLLM, a hosted
//! API) as RLAIF's labeller (paper 29).
//!
//! The endpoint sees the same user message as a local labeller ([`crate::rlaif::pair_user_text`]);
//! it is asked for one token at temperature 0 with `logprobs` and the 20 most likely alternatives
//! (`top_logprobs`). The preference is the softmax over the log-probabilities of the label
//! tokens `1` and `2` among them, as the paper reads it from the labeller's logits (an API exposes
//! only the top alternatives: a label outside them counts as probability 0, and a reply with
//! neither label among them is an error that names what came back).
//!
//! Chain of thought: a first call writes the rationale (at most the given tokens), a second call
//! continues the conversation with it and asks for the label.
//!
//! d-RLAIF ratings read the alternatives whose text is `1` … `10`; a vocabulary that writes 10 as
//! two tokens gives the rating 10 no mass (the local labeller scores it exactly).

use std::collections::HashMap;

use serde_json::{Value, json};

use crate::rlaif::{Labeller, pair_user_text, rating_user_text};
use crate::task::Problem;
use crate::{Result, data_err};

/// Alternatives asked for per token (the OpenAI API's maximum).
pub const TOP_LOGPROBS: usize = 20;

/// The labeller behind an endpoint.
pub struct RemoteLabeller {
    /// Base URL (`http://127.0.0.1:8080`, with or without `/v1`).
    pub url: String,
    /// The `model` field sent with each request.
    pub model: String,
    client: reqwest::blocking::Client,
    cot_tokens: Option<usize>,
    ratings: HashMap<(Problem, String), [f64; 10]>,
    /// Requests sent so far.
    pub calls: u64,
    /// The rationales written so far (chain of thought), in call order.
    pub rationales: Vec<String>,
}

impl RemoteLabeller {
    pub fn new(url: &str, model: &str) -> Result<Self> {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(data_err(format!(
                "--url: expected an http:// or https:// base URL, found {url:?}"
            )));
        }
        let client = reqwest::blocking::Client::builder()
            .timeout(std::time::Duration::from_secs(600))
            .build()
            .map_err(|e| data_err(format!("cannot create an HTTP client: {e}")))?;
        Ok(Self {
            url: url.trim_end_matches('/').to_string(),
            model: model.to_string(),
            client,
            cot_tokens: None,
            ratings: HashMap::new(),
            calls: 0,
            rationales: Vec::new(),
        })
    }

    /// A rationale of at most `max_tokens` tokens before each label (see the module docs).
    pub fn with_chain_of_thought(mut self, max_tokens: usize) -> Result<Self> {
        if max_tokens == 0 {
            return Err(data_err(
                "chain-of-thought labelling needs at least 1 rationale token, found 0",
            ));
        }
        self.cot_tokens = Some(max_tokens);
        Ok(self)
    }

    fn endpoint(&self) -> String {
        if self.url.ends_with("/v1") {
            format!("{}/chat/completions", self.url)
        } else {
            format!("{}/v1/chat/completions", self.url)
        }
    }

    /// One chat completion at temperature 0; with `logprobs`, one token and its alternatives.
    fn chat(
        &mut self,
        messages: &[(&str, &str)],
        max_tokens: usize,
        logprobs: bool,
    ) -> Result<Value> {
        let url = self.endpoint();
        let mut body = json!({
            "model": self.model,
            "temperature": 0,
            "max_tokens": max_tokens,
            "messages": messages
                .iter()
                .map(|(r, c)| json!({"role": r, "content": c}))
                .collect::<Vec<_>>(),
        });
        if logprobs {
            body["logprobs"] = json!(true);
            body["top_logprobs"] = json!(TOP_LOGPROBS);
        }
        let mut req = self.client.post(&url).json(&body);
        if let Ok(k) = std::env::var("OPENAI_API_KEY") {
            req = req.bearer_auth(k);
        }
        self.calls += 1;
        let resp = req
            .send()
            .map_err(|e| data_err(format!("labeller endpoint {url}: {e}")))?;
        let status = resp.status();
        let v: Value = resp
            .json()
            .map_err(|e| data_err(format!("labeller endpoint {url}: expected JSON: {e}")))?;
        if !status.is_success() {
            return Err(data_err(format!(
                "labeller endpoint {url}: HTTP {status}: {v}"
            )));
        }
        Ok(v)
    }

    /// The first generated token's alternatives for a conversation.
    fn first_token(&mut self, messages: &[(&str, &str)]) -> Result<Vec<(String, f64)>> {
        let v = self.chat(messages, 1, true)?;
        first_token_top_logprobs(&v)
    }
}

/// `choices[0].logprobs.content[0].top_logprobs` as `(token, logprob)` pairs.
pub fn first_token_top_logprobs(v: &Value) -> Result<Vec<(String, f64)>> {
    let top = v["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
        .as_array()
        .ok_or_else(|| {
            data_err(format!(
                "the labeller endpoint returned no top_logprobs (expected \
                 choices[0].logprobs.content[0].top_logprobs; does it support logprobs?): {v}"
            ))
        })?;
    top.iter()
        .map(|e| match (e["token"].as_str(), e["logprob"].as_f64()) {
            (Some(t), Some(lp)) => Ok((t.to_string(), lp)),
            _ => Err(data_err(format!(
                "the labeller endpoint returned a top_logprobs entry without token and logprob: {e}"
            ))),
        })
        .collect()
}

/// `P(label 1)` from the first token's alternatives: the softmax over the probabilities of the
/// tokens reading `1` and `2` (surrounding spaces ignored; variants of one label add up).
pub fn label_from_top(top: &[(String, f64)]) -> Result<f64> {
    let mass = |label: &str| -> f64 {
        top.iter()
            .filter(|(t, _)| t.trim() == label)
            .map(|(_, lp)| lp.exp())
            .sum()
    };
    let (one, two) = (mass("1"), mass("2"));
    if one + two <= 0.0 {
        let seen: Vec<&str> = top.iter().map(|(t, _)| t.as_str()).collect();
        return Err(data_err(format!(
            "the labeller's reply has neither label '1' nor '2' among its {} most likely first \
             tokens (found {seen:?})",
            top.len()
        )));
    }
    Ok(one / (one + two))
}

/// The ratings 1–10 from the first token's alternatives (normalised over those present).
pub fn rating_from_top(top: &[(String, f64)]) -> Result<[f64; 10]> {
    let mut lik = [0f64; 10];
    for (t, lp) in top {
        if let Ok(r) = t.trim().parse::<usize>()
            && (1..=10).contains(&r)
            && t.trim().len() <= 2
        {
            lik[r - 1] += lp.exp();
        }
    }
    let z: f64 = lik.iter().sum();
    if !(z > 0.0 && z.is_finite()) {
        let seen: Vec<&str> = top.iter().map(|(t, _)| t.as_str()).collect();
        return Err(data_err(format!(
            "the labeller's reply has no rating 1–10 among its most likely first tokens (found \
             {seen:?})"
        )));
    }
    for x in lik.iter_mut() {
        *x /= z;
    }
    Ok(lik)
}

impl Labeller for RemoteLabeller {
    fn name(&self) -> String {
        let base = format!("remote:{}:{}", self.url, self.model);
        match self.cot_tokens {
            None => base,
            Some(n) => format!("{base} (chain of thought, {n} tokens)"),
        }
    }

    fn p_first(&mut self, p: &Problem, first: &str, second: &str) -> Result<f64> {
        let top = match self.cot_tokens {
            None => {
                let user = pair_user_text(p, first, second, false);
                self.first_token(&[("user", &user)])?
            }
            Some(max) => {
                let user = pair_user_text(p, first, second, true);
                let v = self.chat(&[("user", &user)], max, false)?;
                let why = v["choices"][0]["message"]["content"]
                    .as_str()
                    .ok_or_else(|| {
                        data_err(format!(
                            "the labeller endpoint returned no choices[0].message.content: {v}"
                        ))
                    })?
                    .trim()
                    .to_string();
                let top = self.first_token(&[
                    ("user", &user),
                    ("assistant", &why),
                    ("user", "Preferred answer? Reply with 1 or 2 only."),
                ])?;
                self.rationales.push(why);
                top
            }
        };
        label_from_top(&top)
    }

    fn rating_probs(&mut self, p: &Problem, answer: &str) -> Result<[f64; 10]> {
        let key = (*p, answer.to_string());
        if let Some(r) = self.ratings.get(&key) {
            return Ok(*r);
        }
        let user = rating_user_text(p, answer);
        let r = rating_from_top(&self.first_token(&[("user", &user)])?)?;
        self.ratings.insert(key, r);
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;

    fn top(entries: &[(&str, f64)]) -> Vec<(String, f64)> {
        entries.iter().map(|(t, l)| (t.to_string(), *l)).collect()
    }

    #[test]
    fn labels_and_ratings_from_the_alternatives() {
        let p = label_from_top(&top(&[
            ("1", 0.5f64.ln()),
            (" 2", 0.25f64.ln()),
            ("x", -0.1),
        ]))
        .unwrap();
        assert!((p - 2.0 / 3.0).abs() < 1e-12, "{p}");
        // Variants of one label add up; a missing label has probability 0.
        let p = label_from_top(&top(&[("1", 0.2f64.ln()), (" 1", 0.2f64.ln())])).unwrap();
        assert_eq!(p, 1.0);
        let e = label_from_top(&top(&[("yes", -0.1)]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("neither label") && e.contains("yes"), "{e}");
        let r = rating_from_top(&top(&[
            ("10", 0.3f64.ln()),
            ("7", 0.1f64.ln()),
            ("100", -0.1),
        ]))
        .unwrap();
        assert!(
            (r[9] - 0.75).abs() < 1e-12 && (r[6] - 0.25).abs() < 1e-12,
            "{r:?}"
        );
        assert!(rating_from_top(&top(&[("a", -1.0)])).is_err());
    }

    /// A loopback server that answers `n` requests with `reply(i, body)` and returns the bodies.
    fn serve(
        n: usize,
        reply: impl Fn(usize, &Value) -> Value + Send + 'static,
    ) -> (String, std::thread::JoinHandle<Vec<Value>>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let h = std::thread::spawn(move || {
            let mut bodies = Vec::new();
            for i in 0..n {
                let (mut s, _) = l.accept().unwrap();
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut len = 0;
                loop {
                    let mut line = String::new();
                    r.read_line(&mut line).unwrap();
                    if line == "\r\n" || line.is_empty() {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap();
                    }
                }
                let mut buf = vec![0u8; len];
                r.read_exact(&mut buf).unwrap();
                let body: Value = serde_json::from_slice(&buf).unwrap();
                let out = reply(i, &body).to_string();
                write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{out}",
                    out.len()
                )
                .unwrap();
                bodies.push(body);
            }
            bodies
        });
        (url, h)
    }

    fn logprob_reply(entries: &[(&str, f64)]) -> Value {
        let alts: Vec<Value> = entries
            .iter()
            .map(|(t, l)| json!({"token": t, "logprob": l}))
            .collect();
        json!({"choices": [{"message": {"content": entries[0].0},
            "logprobs": {"content": [{"token": entries[0].0, "logprob": entries[0].1, "top_logprobs": alts}]}}]})
    }

    #[test]
    fn an_endpoint_labels_pairs_with_and_without_a_rationale() {
        let p = Problem { a: 12, b: 30 };
        let (url, h) = serve(1, |_, _| logprob_reply(&[("2", -0.1), ("1", -2.4)]));
        let mut lab = RemoteLabeller::new(&url, "m").unwrap();
        let got = lab.p_first(&p, "42.", "41.").unwrap();
        let want = (-2.4f64).exp() / ((-2.4f64).exp() + (-0.1f64).exp());
        assert!((got - want).abs() < 1e-12);
        let bodies = h.join().unwrap();
        assert_eq!(bodies[0]["max_tokens"], 1);
        assert_eq!(bodies[0]["top_logprobs"], TOP_LOGPROBS);
        let user = bodies[0]["messages"][0]["content"].as_str().unwrap();
        assert!(user.contains("Answer 1: 42.") && user.contains("Answer 2: 41."));

        // Chain of thought: a rationale call, then the label call that carries it.
        let (url, h) = serve(2, |i, _| {
            if i == 0 {
                json!({"choices": [{"message": {"content": " Answer 1 is right. "}}]})
            } else {
                logprob_reply(&[("1", -0.05), ("2", -3.0)])
            }
        });
        let mut lab = RemoteLabeller::new(&url, "m")
            .unwrap()
            .with_chain_of_thought(32)
            .unwrap();
        assert!(lab.name().contains("chain of thought, 32 tokens"));
        let got = lab.p_first(&p, "42.", "41.").unwrap();
        assert!(got > 0.9, "{got}");
        assert_eq!(lab.rationales, vec!["Answer 1 is right.".to_string()]);
        let bodies = h.join().unwrap();
        assert_eq!(bodies[0]["max_tokens"], 32);
        assert!(bodies[0].get("logprobs").is_none());
        assert_eq!(bodies[1]["messages"][1]["role"], "assistant");
        assert_eq!(bodies[1]["messages"][1]["content"], "Answer 1 is right.");
        assert_eq!(lab.calls, 2);
    }

    #[test]
    fn an_endpoint_without_logprobs_or_labels_is_a_clear_error() {
        let p = Problem { a: 1, b: 2 };
        let (url, h) = serve(
            1,
            |_, _| json!({"choices": [{"message": {"content": "1"}}]}),
        );
        let mut lab = RemoteLabeller::new(&url, "m").unwrap();
        let e = lab.p_first(&p, "3.", "4.").unwrap_err().to_string();
        assert!(e.contains("top_logprobs"), "{e}");
        h.join().unwrap();
        assert!(RemoteLabeller::new("127.0.0.1:80", "m").is_err());
    }
}
