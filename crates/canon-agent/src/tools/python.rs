//! Python in the HumanEval sandbox as a tool.

use std::sync::Arc;

use serde_json::{Value, json};

use super::{Tool, ToolError, ToolSpec};

/// Runs a Python program in the sandbox; the observation is what it printed. The sandbox reports
/// only a verdict string, so the program runs wrapped: its output is captured and raised back as
/// one JSON-escaped exception message, which the wrapper then decodes.
pub struct Python {
    pub sandbox: Arc<canon_eval::Sandbox>,
}

const PY_MARK: &str = "CanonToolOutput";

impl Python {
    /// The program as the sandbox runs it.
    pub fn wrap(code: &str) -> String {
        let src = serde_json::to_string(code).unwrap_or_else(|_| "\"\"".into());
        format!(
            "import io, json, sys, traceback\n\
             class {PY_MARK}(Exception):\n    pass\n\
             _buf = io.StringIO()\n_old = sys.stdout\nsys.stdout = _buf\n_err = None\n\
             try:\n    exec(compile({src}, '<tool>', 'exec'), {{'__name__': '__main__'}})\n\
             except BaseException as e:\n    _err = type(e).__name__ + ': ' + str(e)\n\
             sys.stdout = _old\n\
             raise {PY_MARK}(json.dumps({{'out': _buf.getvalue()[-1500:], 'err': _err}}))\n"
        )
    }
}

impl Tool for Python {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "python".into(),
            description: "Runs a Python 3 program in a sandbox (no network, no files outside a \
                          private folder, a few seconds) and answers what it printed."
                .into(),
            parameters: json!({"type": "object",
                "properties": {"code": {"type": "string"}}, "required": ["code"]}),
        }
    }
    fn call(&self, args: &Value) -> Result<String, ToolError> {
        let code = args["code"].as_str().unwrap_or("");
        let out = self
            .sandbox
            .run(&Self::wrap(code))
            .map_err(|e| ToolError::new(e.to_string()))?;
        match out {
            canon_eval::Outcome::TimedOut => Err(ToolError::new("the program timed out")),
            canon_eval::Outcome::Passed => Err(ToolError::new(
                "the program ended the interpreter before its output was collected",
            )),
            canon_eval::Outcome::Failed(msg) => {
                let Some(json) = msg.strip_prefix(PY_MARK).and_then(|m| m.strip_prefix(": "))
                else {
                    return Err(ToolError::new(format!("the program failed: {msg}")));
                };
                let v: Value = serde_json::from_str(json).map_err(|_| {
                    ToolError::new("the program's output was cut (more than ~1500 characters)")
                })?;
                let out = v["out"].as_str().unwrap_or("").trim_end().to_string();
                match v["err"].as_str() {
                    Some(e) => Err(ToolError::new(if out.is_empty() {
                        e.to_string()
                    } else {
                        format!("{out}\n{e}")
                    })),
                    None => Ok(out),
                }
            }
        }
    }
}
