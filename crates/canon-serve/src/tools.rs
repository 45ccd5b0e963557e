//! OpenAI tool calling and structured output for a model whatever its chat template: the tools are
//! described in a system message, a call is spelled `<tool_call>{"name": …, "arguments": {…}}
//! </tool_call>` (the format many open models are tuned on), and constrained decoding makes every
//! call name a listed tool with arguments valid against its JSON schema. The reply is parsed back
//! into OpenAI's `tool_calls`.

use canon_infer::Grammar;
use serde_json::{Value, json};

use crate::api::ApiError;

pub const CALL_OPEN: &str = "<tool_call>";
pub const CALL_CLOSE: &str = "</tool_call>";

/// One function the model may call.
#[derive(Debug, Clone)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    pub parameters: Value,
}

/// `tool_choice`.
#[derive(Debug, Clone, PartialEq)]
pub enum Choice {
    None,
    Auto,
    Required,
    Named(String),
}

/// The tools of one request and how they may be used.
#[derive(Debug, Clone)]
pub struct ToolMode {
    pub tools: Vec<ToolSpec>,
    pub choice: Choice,
}

fn bad(msg: impl Into<String>, param: &str) -> ApiError {
    ApiError::invalid(msg, Some(param))
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Reads `tools` and `tool_choice`; `None` when the request has no tools.
pub fn parse(tools: Option<&Value>, choice: Option<&Value>) -> Result<Option<ToolMode>, ApiError> {
    let list = match tools {
        None | Some(Value::Null) => {
            if let Some(c) = choice
                && !c.is_null()
                && c != "none"
                && c != "auto"
            {
                return Err(bad(
                    "tool_choice needs tools: the request lists none",
                    "tool_choice",
                ));
            }
            return Ok(None);
        }
        Some(Value::Array(a)) => a,
        Some(other) => {
            return Err(bad(
                format!("tools must be an array of function tools, found {other}"),
                "tools",
            ));
        }
    };
    if list.is_empty() {
        return Ok(None);
    }
    if list.len() > 128 {
        return Err(bad(
            format!("at most 128 tools, found {}", list.len()),
            "tools",
        ));
    }
    let mut specs = Vec::with_capacity(list.len());
    for (i, t) in list.iter().enumerate() {
        if t["type"] != "function" {
            return Err(bad(
                format!(
                    "tools[{i}].type: expected \"function\", found {}",
                    t["type"]
                ),
                "tools",
            ));
        }
        let f = &t["function"];
        let name = f["name"].as_str().unwrap_or_default();
        if !valid_name(name) {
            return Err(bad(
                format!(
                    "tools[{i}].function.name: expected 1-64 letters, digits, '_' or '-', found {}",
                    f["name"]
                ),
                "tools",
            ));
        }
        if specs.iter().any(|s: &ToolSpec| s.name == name) {
            return Err(bad(format!("two tools are named '{name}'"), "tools"));
        }
        let parameters = match &f["parameters"] {
            Value::Null => json!({"type": "object", "properties": {}}),
            p @ Value::Object(_) => p.clone(),
            other => {
                return Err(bad(
                    format!(
                        "tools[{i}].function.parameters: expected a JSON schema object, found {other}"
                    ),
                    "tools",
                ));
            }
        };
        specs.push(ToolSpec {
            name: name.to_string(),
            description: f["description"].as_str().unwrap_or_default().to_string(),
            parameters,
        });
    }
    let choice = match choice {
        None | Some(Value::Null) => Choice::Auto,
        Some(Value::String(s)) => match s.as_str() {
            "none" => Choice::None,
            "auto" => Choice::Auto,
            "required" => Choice::Required,
            other => {
                return Err(bad(
                    format!(
                        "tool_choice: expected \"none\", \"auto\", \"required\" or a function, found \"{other}\""
                    ),
                    "tool_choice",
                ));
            }
        },
        Some(v @ Value::Object(_)) => {
            let name = v["function"]["name"].as_str().unwrap_or_default();
            if v["type"] != "function" || name.is_empty() {
                return Err(bad(
                    format!(
                        "tool_choice: expected {{\"type\": \"function\", \"function\": {{\"name\": …}}}}, found {v}"
                    ),
                    "tool_choice",
                ));
            }
            if !specs.iter().any(|s| s.name == name) {
                return Err(bad(
                    format!("tool_choice names '{name}', which is not among the tools"),
                    "tool_choice",
                ));
            }
            Choice::Named(name.to_string())
        }
        Some(other) => {
            return Err(bad(
                format!("tool_choice: expected a string or an object, found {other}"),
                "tool_choice",
            ));
        }
    };
    Ok(Some(ToolMode {
        tools: specs,
        choice,
    }))
}

impl ToolMode {
    /// Whether the model is told about the tools and may call them.
    pub fn active(&self) -> bool {
        self.choice != Choice::None
    }

    /// The tools the model may call under `tool_choice`.
    fn callable(&self) -> impl Iterator<Item = &ToolSpec> {
        self.tools.iter().filter(move |t| match &self.choice {
            Choice::Named(n) => &t.name == n,
            _ => true,
        })
    }

    /// The system-message text that teaches the call format and lists the tools.
    pub fn instructions(&self) -> String {
        let mut s = String::from(
            "You can call functions. To call one, reply with nothing but\n<tool_call>\n{\"name\": \"FUNCTION\", \"arguments\": {ARGUMENTS}}\n</tool_call>\nand its result comes back in a <tool_response> message. Functions:\n",
        );
        for t in self.callable() {
            s.push_str(&format!(
                "- {}: {}\n  arguments (JSON schema): {}\n",
                t.name,
                if t.description.is_empty() {
                    "(no description)"
                } else {
                    &t.description
                },
                t.parameters
            ));
        }
        match &self.choice {
            Choice::Required => s.push_str("You must call at least one function.\n"),
            Choice::Named(n) => s.push_str(&format!("You must call {n}.\n")),
            _ => s.push_str("Answer directly when no function is needed.\n"),
        }
        s
    }

    /// The grammar of the reply: one or more calls (`required`, a named function), or a call or
    /// plain text (`auto`; plain text then may not begin with '<').
    /// With `answer` (a `response_format`), a reply that is not a call must match it.
    pub fn grammar(&self, answer: Option<&Grammar>) -> Option<Grammar> {
        if !self.active() {
            return answer.cloned();
        }
        let alternatives: Vec<Value> = self
            .callable()
            .map(|t| {
                json!({
                    "type": "object",
                    "properties": {
                        "name": {"const": t.name},
                        "arguments": t.parameters,
                    },
                    "required": ["name", "arguments"],
                    "additionalProperties": false,
                })
            })
            .collect();
        let schema = canon_infer::structured::compact(json!({ "anyOf": alternatives }));
        let mut g = format!(
            "calls: call (\"\\n\" call)*\ncall: \"{CALL_OPEN}\\n\" %json {schema} \"\\n{CALL_CLOSE}\"\n"
        );
        if self.choice == Choice::Auto {
            let answer = match answer {
                Some(Grammar::JsonObject) => Some(json!({"type": "object"})),
                Some(Grammar::JsonSchema(s)) => Some(s.clone()),
                _ => None,
            };
            match answer {
                Some(a) => g.insert_str(
                    0,
                    &format!(
                        "start: calls | %json {}\n",
                        canon_infer::structured::compact(a)
                    ),
                ),
                None => g.insert_str(0, "start: calls | TEXT\nTEXT: /[^<][\\s\\S]*/\n"),
            }
        } else {
            g.insert_str(0, "start: calls\n");
        }
        Some(Grammar::Lark(g))
    }
}

/// A call parsed out of a reply.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub name: String,
    /// The arguments as a JSON text (OpenAI sends them as a string).
    pub arguments: String,
}

/// Splits a reply into leading text and calls; `None` when it holds no complete call.
pub fn parse_calls(text: &str) -> Option<(String, Vec<Call>)> {
    let start = text.find(CALL_OPEN)?;
    let mut calls = Vec::new();
    let mut rest = &text[start..];
    while let Some(i) = rest.find(CALL_OPEN) {
        let after = &rest[i + CALL_OPEN.len()..];
        let Some(j) = after.find(CALL_CLOSE) else {
            break;
        };
        let body = after[..j].trim();
        if let Ok(v) = serde_json::from_str::<Value>(body)
            && let Some(name) = v["name"].as_str()
        {
            let args = match &v["arguments"] {
                Value::Null => "{}".to_string(),
                a => a.to_string(),
            };
            calls.push(Call {
                name: name.to_string(),
                arguments: args,
            });
        }
        rest = &after[j + CALL_CLOSE.len()..];
    }
    if calls.is_empty() {
        return None;
    }
    Some((text[..start].trim().to_string(), calls))
}

/// OpenAI's `tool_calls` array for parsed calls; ids are `call_<prefix>_<i>`.
pub fn tool_calls_json(calls: &[Call], id_prefix: &str, with_index: bool) -> Value {
    Value::Array(
        calls
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let mut v = json!({
                    "id": format!("call_{id_prefix}_{i}"),
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                });
                if with_index {
                    v["index"] = json!(i);
                }
                v
            })
            .collect(),
    )
}

/// How an assistant turn that made calls is written back into the prompt.
pub fn render_assistant_calls(content: &str, tool_calls: &Value) -> Result<String, String> {
    let Some(list) = tool_calls.as_array() else {
        return Err(format!("tool_calls must be an array, found {tool_calls}"));
    };
    let mut out = content.trim().to_string();
    for (k, c) in list.iter().enumerate() {
        let f = &c["function"];
        let name = f["name"]
            .as_str()
            .ok_or_else(|| format!("tool_calls[{k}].function.name is missing"))?;
        // Arguments arrive as a JSON string (OpenAI) or, leniently, as an object.
        let args = match &f["arguments"] {
            Value::String(s) => serde_json::from_str::<Value>(s).map_err(|e| {
                format!("tool_calls[{k}].function.arguments is not valid JSON: {e}")
            })?,
            Value::Null => json!({}),
            v => v.clone(),
        };
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(&format!(
            "{CALL_OPEN}\n{}\n{CALL_CLOSE}",
            json!({"name": name, "arguments": args})
        ));
    }
    Ok(out)
}

/// How a `tool` message is written into the prompt (as a user turn, which every template knows).
pub fn render_tool_result(content: &str, name: Option<&str>, call_id: Option<&str>) -> String {
    let mut head = String::from("<tool_response>");
    if let Some(n) = name.or(call_id) {
        head = format!("<tool_response name=\"{n}\">");
    }
    format!("{head}\n{}\n</tool_response>", content.trim())
}

/// The grammar `response_format` asks for; `None` for plain text.
pub fn response_format(v: Option<&Value>) -> Result<Option<Grammar>, ApiError> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let p = "response_format";
    match v["type"].as_str() {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(Grammar::JsonObject)),
        Some("json_schema") => {
            let js = &v["json_schema"];
            if !js.is_object() {
                return Err(bad(
                    "response_format.json_schema: expected an object with a \"schema\"",
                    p,
                ));
            }
            match &js["schema"] {
                s @ (Value::Object(_) | Value::Bool(_)) => Ok(Some(Grammar::JsonSchema(s.clone()))),
                Value::Null => Err(bad(
                    "response_format.json_schema.schema is missing: expected a JSON schema object",
                    p,
                )),
                other => Err(bad(
                    format!(
                        "response_format.json_schema.schema: expected a JSON schema object, found {other}"
                    ),
                    p,
                )),
            }
        }
        _ => Err(bad(
            format!(
                "response_format.type: expected \"text\", \"json_object\" or \"json_schema\", found {}",
                v["type"]
            ),
            p,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weather() -> Value {
        json!([{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}])
    }

    #[test]
    fn parses_tools_and_choices() {
        let m = parse(Some(&weather()), None).unwrap().unwrap();
        assert_eq!(m.choice, Choice::Auto);
        assert_eq!(m.tools[0].name, "get_weather");
        let named = json!({"type": "function", "function": {"name": "get_weather"}});
        assert_eq!(
            parse(Some(&weather()), Some(&named))
                .unwrap()
                .unwrap()
                .choice,
            Choice::Named("get_weather".into())
        );
        for (tools, choice, needle) in [
            (json!({"a": 1}), Value::Null, "must be an array"),
            (json!([{"type": "web"}]), Value::Null, "tools[0].type"),
            (
                json!([{"type": "function", "function": {"name": "a b"}}]),
                Value::Null,
                "tools[0].function.name",
            ),
            (weather(), json!("sometimes"), "tool_choice"),
            (
                weather(),
                json!({"type": "function", "function": {"name": "other"}}),
                "not among the tools",
            ),
        ] {
            let e = parse(Some(&tools), Some(&choice)).unwrap_err();
            assert!(e.message.contains(needle), "{}", e.message);
        }
        assert!(parse(None, Some(&json!("required"))).is_err());
        assert!(parse(Some(&json!([])), None).unwrap().is_none());
    }

    #[test]
    fn parses_calls_out_of_a_reply() {
        let r = "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"x\": 1}}\n</tool_call>\n<tool_call>\n{\"name\": \"g\", \"arguments\": {}}\n</tool_call>";
        let (text, calls) = parse_calls(r).unwrap();
        assert!(text.is_empty());
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].name, "f");
        assert_eq!(
            serde_json::from_str::<Value>(&calls[0].arguments).unwrap(),
            json!({"x": 1})
        );
        assert!(parse_calls("plain answer").is_none());
        assert!(parse_calls("<tool_call>\n{\"name\": \"f\"").is_none());
    }

    #[test]
    fn history_round_trips() {
        let tc = json!([{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"x\": 2}"}}]);
        let s = render_assistant_calls("", &tc).unwrap();
        let (_, calls) = parse_calls(&s).unwrap();
        assert_eq!(calls[0].name, "f");
        assert!(
            render_assistant_calls(
                "",
                &json!([{"function": {"name": "f", "arguments": "{oops"}}])
            )
            .is_err()
        );
        assert!(render_tool_result("21", Some("f"), None).contains("name=\"f\""));
    }

    #[test]
    fn response_formats() {
        assert!(response_format(None).unwrap().is_none());
        assert!(
            response_format(Some(&json!({"type": "text"})))
                .unwrap()
                .is_none()
        );
        assert_eq!(
            response_format(Some(&json!({"type": "json_object"}))).unwrap(),
            Some(Grammar::JsonObject)
        );
        assert!(
            response_format(Some(
                &json!({"type": "json_schema", "json_schema": {"name": "x"}})
            ))
            .is_err()
        );
        assert!(response_format(Some(&json!({"type": "yaml"}))).is_err());
    }
}
