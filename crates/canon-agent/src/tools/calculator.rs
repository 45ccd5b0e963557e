//! The calculator: exact rational arithmetic over `i128` (`+ - * /`, parentheses, unary minus,
//! decimals), with overflow and division by zero as errors.

use serde_json::{Value, json};

use super::{Tool, ToolError, ToolSpec};

/// A reduced fraction `num / den` with `den > 0`, over `i128` with overflow checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rational {
    pub num: i128,
    pub den: i128,
}

fn gcd(mut a: i128, mut b: i128) -> i128 {
    a = a.abs();
    b = b.abs();
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

const OVERFLOW: &str = "the result is too large for exact arithmetic (128-bit)";

impl Rational {
    pub fn new(num: i128, den: i128) -> Result<Rational, ToolError> {
        if den == 0 {
            return Err(ToolError::new("division by zero"));
        }
        let g = gcd(num, den).max(1);
        let (mut n, mut d) = (num / g, den / g);
        if d < 0 {
            n = n.checked_neg().ok_or_else(|| ToolError::new(OVERFLOW))?;
            d = d.checked_neg().ok_or_else(|| ToolError::new(OVERFLOW))?;
        }
        Ok(Rational { num: n, den: d })
    }
    pub fn int(n: i128) -> Rational {
        Rational { num: n, den: 1 }
    }
    fn ovf<T>(x: Option<T>) -> Result<T, ToolError> {
        x.ok_or_else(|| ToolError::new(OVERFLOW))
    }
    pub fn plus(self, o: Rational) -> Result<Rational, ToolError> {
        let g = gcd(self.den, o.den);
        let l = self.den / g;
        let a = Self::ovf(self.num.checked_mul(o.den / g))?;
        let b = Self::ovf(o.num.checked_mul(l))?;
        Rational::new(
            Self::ovf(a.checked_add(b))?,
            Self::ovf(l.checked_mul(o.den))?,
        )
    }
    pub fn negate(self) -> Result<Rational, ToolError> {
        Ok(Rational {
            num: Self::ovf(self.num.checked_neg())?,
            den: self.den,
        })
    }
    pub fn minus(self, o: Rational) -> Result<Rational, ToolError> {
        self.plus(o.negate()?)
    }
    pub fn times(self, o: Rational) -> Result<Rational, ToolError> {
        let g1 = gcd(self.num, o.den).max(1);
        let g2 = gcd(o.num, self.den).max(1);
        Rational::new(
            Self::ovf((self.num / g1).checked_mul(o.num / g2))?,
            Self::ovf((self.den / g2).checked_mul(o.den / g1))?,
        )
    }
    pub fn over(self, o: Rational) -> Result<Rational, ToolError> {
        if o.num == 0 {
            return Err(ToolError::new("division by zero"));
        }
        self.times(Rational::new(o.den, o.num)?)
    }
    pub fn pow(self, e: i128) -> Result<Rational, ToolError> {
        if e.abs() > 4096 {
            return Err(ToolError::new(format!(
                "expected an exponent between -4096 and 4096, found {e}"
            )));
        }
        let mut r = Rational::int(1);
        for _ in 0..e.abs() {
            r = r.times(self)?;
        }
        if e < 0 {
            Rational::int(1).over(r)
        } else {
            Ok(r)
        }
    }
    /// `p/q` or the integer.
    pub fn exact(&self) -> String {
        if self.den == 1 {
            self.num.to_string()
        } else {
            format!("{}/{}", self.num, self.den)
        }
    }
    /// Decimal with `places` digits, rounded half away from zero, trailing zeros removed; exact
    /// integer arithmetic.
    pub fn decimal(&self, places: u32) -> String {
        let neg = self.num < 0;
        let n = self.num.unsigned_abs();
        let d = self.den.unsigned_abs();
        let scale = 10u128.saturating_pow(places);
        let (int, rem) = (n / d, n % d);
        // fraction digits, rounded: floor((rem*scale*2 + d) / (2d)), with overflow fallback.
        let frac = rem
            .checked_mul(scale)
            .and_then(|x| x.checked_mul(2))
            .and_then(|x| x.checked_add(d))
            .map(|x| x / (2 * d));
        let (mut int, mut frac) = match frac {
            Some(f) => (int, f),
            None => (int, 0),
        };
        if frac >= scale {
            int += 1;
            frac -= scale;
        }
        let mut s = int.to_string();
        if places > 0 && frac > 0 {
            let digits = format!("{frac:0width$}", width = places as usize);
            s.push('.');
            s.push_str(digits.trim_end_matches('0'));
        }
        if neg && (int > 0 || frac > 0) {
            s.insert(0, '-');
        }
        s
    }
}

/// Parses and evaluates `+ - * / ^`, parentheses, unary minus, integers and decimals exactly.
pub fn evaluate(expr: &str) -> Result<Rational, ToolError> {
    let toks = lex(expr)?;
    if toks.is_empty() {
        return Err(ToolError::new(
            "expected an arithmetic expression, found nothing",
        ));
    }
    let mut p = Parser { toks, pos: 0 };
    let v = p.expr(0)?;
    if p.pos != p.toks.len() {
        return Err(ToolError::new(format!(
            "expected an operator or the end, found '{}'",
            p.toks[p.pos].text()
        )));
    }
    Ok(v)
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Num(Rational),
    Op(char),
}

impl Tok {
    fn text(&self) -> String {
        match self {
            Tok::Num(r) => r.exact(),
            Tok::Op(c) => c.to_string(),
        }
    }
}

fn lex(s: &str) -> Result<Vec<Tok>, ToolError> {
    let cs: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < cs.len() {
        let c = cs[i];
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        if c.is_ascii_digit() || c == '.' {
            let mut num: i128 = 0;
            let mut den: i128 = 1;
            let mut seen_dot = false;
            let mut any = false;
            while i < cs.len() {
                let d = cs[i];
                if d.is_ascii_digit() {
                    any = true;
                    num = num
                        .checked_mul(10)
                        .and_then(|x| x.checked_add(i128::from(d as u8 - b'0')))
                        .ok_or_else(|| ToolError::new(OVERFLOW))?;
                    if seen_dot {
                        den = den
                            .checked_mul(10)
                            .ok_or_else(|| ToolError::new(OVERFLOW))?;
                    }
                } else if d == '.' && !seen_dot {
                    seen_dot = true;
                } else if d == ',' && !seen_dot && any && digits_follow(&cs, i) {
                    // a thousands separator: `1,000`
                } else {
                    break;
                }
                i += 1;
            }
            if !any {
                return Err(ToolError::new("expected a number, found '.'"));
            }
            out.push(Tok::Num(Rational::new(num, den)?));
            continue;
        }
        let op = match c {
            '+' | '-' | '*' | '/' | '^' | '(' | ')' => c,
            '×' | 'x' => '*',
            '÷' => '/',
            '−' => '-',
            _ => {
                return Err(ToolError::new(format!(
                    "expected a number, an operator (+ - * / ^) or a parenthesis, found '{c}'"
                )));
            }
        };
        out.push(Tok::Op(op));
        i += 1;
    }
    Ok(out)
}

/// `,` followed by exactly three digits (then no digit): a thousands separator.
fn digits_follow(cs: &[char], i: usize) -> bool {
    (1..=3).all(|k| cs.get(i + k).is_some_and(|c| c.is_ascii_digit()))
        && !cs.get(i + 4).is_some_and(|c| c.is_ascii_digit())
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }
    /// Precedence climbing: `+ -` < `* /` < unary minus < `^` (right-associative).
    fn expr(&mut self, min: u8) -> Result<Rational, ToolError> {
        let mut lhs = self.unary()?;
        while let Some(Tok::Op(op)) = self.peek().cloned() {
            let prec = match op {
                '+' | '-' => 1,
                '*' | '/' => 2,
                _ => break,
            };
            if prec < min.max(1) {
                break;
            }
            self.pos += 1;
            let rhs = self.expr(prec + 1)?;
            lhs = match op {
                '+' => lhs.plus(rhs)?,
                '-' => lhs.minus(rhs)?,
                '*' => lhs.times(rhs)?,
                _ => lhs.over(rhs)?,
            };
        }
        Ok(lhs)
    }
    fn unary(&mut self) -> Result<Rational, ToolError> {
        match self.peek() {
            Some(Tok::Op('-')) => {
                self.pos += 1;
                self.unary()?.negate()
            }
            Some(Tok::Op('+')) => {
                self.pos += 1;
                self.unary()
            }
            _ => self.power(),
        }
    }
    fn power(&mut self) -> Result<Rational, ToolError> {
        let base = self.atom()?;
        if let Some(Tok::Op('^')) = self.peek() {
            self.pos += 1;
            let e = self.unary()?;
            if e.den != 1 {
                return Err(ToolError::new(format!(
                    "expected an integer exponent, found {}",
                    e.exact()
                )));
            }
            return base.pow(e.num);
        }
        Ok(base)
    }
    fn atom(&mut self) -> Result<Rational, ToolError> {
        match self.peek().cloned() {
            Some(Tok::Num(r)) => {
                self.pos += 1;
                Ok(r)
            }
            Some(Tok::Op('(')) => {
                self.pos += 1;
                let v = self.expr(0)?;
                match self.peek() {
                    Some(Tok::Op(')')) => {
                        self.pos += 1;
                        Ok(v)
                    }
                    other => Err(ToolError::new(format!(
                        "expected ')', found {}",
                        other.map_or("the end".into(), |t| format!("'{}'", t.text()))
                    ))),
                }
            }
            other => Err(ToolError::new(format!(
                "expected a number or '(', found {}",
                other.map_or("the end".into(), |t| format!("'{}'", t.text()))
            ))),
        }
    }
}

/// Exact rational arithmetic. Answers `p/q (≈ decimal)`, or the integer.
pub struct Calculator;

impl Tool for Calculator {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "calculator".into(),
            description: "Exact arithmetic on integers and decimals: + - * / ^ and parentheses. \
                          Answers an integer or a reduced fraction with its decimal value."
                .into(),
            parameters: json!({"type": "object",
                "properties": {"expression": {"type": "string", "description": "e.g. (400 / 1400) * 3"}},
                "required": ["expression"]}),
        }
    }
    fn call(&self, args: &Value) -> Result<String, ToolError> {
        let e = args["expression"].as_str().unwrap_or("");
        let r = evaluate(e)?;
        Ok(if r.den == 1 {
            r.exact()
        } else {
            format!("{} (= {})", r.exact(), r.decimal(6))
        })
    }
}
