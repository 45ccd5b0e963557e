//! The calendar: today's date and date arithmetic.

use serde_json::{Value, json};

use super::{Tool, ToolError, ToolSpec};

/// Today's date and date arithmetic (proleptic Gregorian calendar, UTC).
pub struct Calendar {
    /// The date "today" is; `None` reads the clock (fixed in tests and reproducible runs).
    pub today: Option<chrono::NaiveDate>,
}

fn parse_date(s: &str) -> Result<chrono::NaiveDate, ToolError> {
    chrono::NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d").map_err(|_| {
        ToolError::new(format!(
            "expected a date as YYYY-MM-DD, found {:?}",
            s.trim()
        ))
    })
}

/// `Friday, December 4, 2026`.
pub fn long_date(d: chrono::NaiveDate) -> String {
    d.format("%A, %B %-d, %Y").to_string()
}

impl Calendar {
    pub fn today(&self) -> chrono::NaiveDate {
        self.today
            .unwrap_or_else(|| chrono::Utc::now().date_naive())
    }
}

impl Tool for Calendar {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "calendar".into(),
            description: "Dates. op=today: today's date; op=weekday: the weekday of `date`; \
                          op=add_days: `date` plus `days` (negative to go back); op=days_between: \
                          days from `date` to `other`. Dates are YYYY-MM-DD."
                .into(),
            parameters: json!({"type": "object",
                "properties": {
                    "op": {"type": "string", "enum": ["today", "weekday", "add_days", "days_between"]},
                    "date": {"type": "string"}, "other": {"type": "string"},
                    "days": {"type": "integer"}},
                "required": ["op"]}),
        }
    }
    fn call(&self, args: &Value) -> Result<String, ToolError> {
        let op = args["op"]
            .as_str()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        let date = || {
            args["date"]
                .as_str()
                .ok_or_else(|| ToolError::new(format!("op={op} expects argument 'date'")))
                .and_then(parse_date)
        };
        match op.as_str() {
            "today" | "" => Ok(format!("Today is {}.", long_date(self.today()))),
            "weekday" => Ok(date()?.format("%A").to_string()),
            "add_days" => {
                let n = args["days"]
                    .as_i64()
                    .ok_or_else(|| ToolError::new("op=add_days expects an integer 'days'"))?;
                let d = date()?;
                let r = chrono::Duration::try_days(n)
                    .and_then(|dd| d.checked_add_signed(dd))
                    .ok_or_else(|| ToolError::new("the date is out of range"))?;
                Ok(r.format("%Y-%m-%d").to_string())
            }
            "days_between" => {
                let o = parse_date(args["other"].as_str().unwrap_or(""))?;
                Ok((o - date()?).num_days().to_string())
            }
            other => Err(ToolError::new(format!(
                "expected op today, weekday, add_days or days_between, found {other:?}"
            ))),
        }
    }
}
