//! A small, safe integer expression language for constraints and launch geometry.
//!
//! Specs describe which configs are valid (`block_m * block_n / (tm * tn) <= max_threads_per_block`)
//! and how a kernel is launched (`grid = [ceil_div(n, block_n), ceil_div(m, block_m), 1]`) as
//! expressions over tunable parameters, shape dimensions and device limits. They are parsed once,
//! when a spec loads, into a flat postfix program; evaluation walks that program over a fixed-size
//! stack, so it allocates nothing and can run on the launch hot path.
//!
//! Grammar (lowest precedence first): `c ? a : b`, `||`, `&&`, `== !=`, `< <= > >=`, `+ -`,
//! `* / %`, unary `- !`, then atoms: integers, `true`/`false`, names, `(e)` and the functions
//! `min(a, b)`, `max(a, b)`, `ceil_div(a, b)`, `log2(a)`, `pow2(a)`. Booleans are 0 and 1; `&&`
//! and `||` short-circuit. Arithmetic is checked: overflow and division by zero are errors.

use std::fmt;

/// Deepest evaluation stack an expression may need; deeper ones are rejected at parse time.
pub const MAX_STACK: usize = 32;

/// Why an expression did not parse: a message and the 1-based column where it went wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    pub column: usize,
    pub msg: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "column {}: {}", self.column, self.msg)
    }
}

/// Why an evaluation failed. Carries no heap data so that failing costs nothing either.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EvalError {
    DivisionByZero,
    Overflow,
    /// `log2` of a value that is not positive.
    LogOfNonPositive,
    /// A variable slot outside the environment handed to `eval` (the expression was bound
    /// against a different variable table).
    UnboundVariable(u16),
}

impl fmt::Display for EvalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EvalError::DivisionByZero => write!(f, "division by zero"),
            EvalError::Overflow => write!(f, "integer overflow"),
            EvalError::LogOfNonPositive => write!(f, "log2 of a value <= 0"),
            EvalError::UnboundVariable(s) => write!(f, "variable slot {s} has no value"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Op {
    Const(i64),
    /// Index into the variable table the expression is bound to.
    Var(u16),
    Neg,
    Not,
    Add,
    Sub,
    Mul,
    Div,
    Rem,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Min,
    Max,
    CeilDiv,
    Log2,
    Pow2,
    /// `&&`: if the top is 0, leave 0 and jump to the target; otherwise pop it.
    AndJump(u16),
    /// `||`: if the top is non-zero, leave 1 and jump; otherwise pop it.
    OrJump(u16),
    /// Turn the top into 0/1 (closes `&&`/`||` chains).
    Bool,
    /// Pop the condition; when 0, jump to the target.
    JumpIfZero(u16),
    Jump(u16),
}

/// A parsed expression: its source, its variable names and a postfix program over them.
#[derive(Clone, Debug)]
pub struct Expr {
    source: String,
    /// Variable names in order of first appearance; `Op::Var(i)` refers to `vars[i]` until the
    /// expression is bound, and to slot `i` of the caller's table afterwards.
    vars: Vec<String>,
    /// Table slot of each name in `vars`, once bound.
    slots: Option<Vec<u16>>,
    ops: Vec<Op>,
}

impl PartialEq for Expr {
    fn eq(&self, other: &Self) -> bool {
        self.canonical() == other.canonical()
    }
}

impl Expr {
    /// Parses `source`. Errors carry the 1-based column of the offending character.
    pub fn parse(source: &str) -> Result<Expr, ParseError> {
        let tokens = lex(source)?;
        let mut p = Parser {
            tokens,
            pos: 0,
            vars: Vec::new(),
            ops: Vec::new(),
            src_len: source.chars().count(),
            depth: 0,
        };
        p.ternary()?;
        if let Some(t) = p.tokens.get(p.pos) {
            return Err(ParseError {
                column: t.col,
                msg: format!("unexpected `{}` after the end of the expression", t.kind),
            });
        }
        let depth = max_depth(&p.ops);
        if depth > MAX_STACK {
            return Err(ParseError {
                column: 1,
                msg: format!(
                    "expression nests too deeply (needs {depth} stack slots, at most {MAX_STACK})"
                ),
            });
        }
        Ok(Expr {
            source: source.to_string(),
            vars: p.vars,
            slots: None,
            ops: p.ops,
        })
    }

    /// The expression as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// A whitespace-free rendering of the program, used for hashing specs: two expressions that
    /// differ only in spacing or redundant parentheses have the same canonical form.
    pub fn canonical(&self) -> String {
        let mut s = String::new();
        for op in &self.ops {
            use std::fmt::Write;
            let _ = match op {
                Op::Var(i) => write!(s, "${};", self.var_name(*i)),
                other => write!(s, "{other:?};"),
            };
        }
        s
    }

    /// The name behind a `Var` operand (a slot once bound, a position in `vars` before).
    fn var_name(&self, operand: u16) -> &str {
        let pos = match &self.slots {
            Some(slots) => slots.iter().position(|s| *s == operand).unwrap_or(0),
            None => operand as usize,
        };
        self.vars.get(pos).map(String::as_str).unwrap_or("?")
    }

    /// The names the expression refers to, in order of first appearance.
    pub fn variables(&self) -> &[String] {
        &self.vars
    }

    /// Binds every variable to a slot of a variable table; `slot_of` returns `None` for an
    /// unknown name, which is returned as the error.
    pub fn bind(&self, mut slot_of: impl FnMut(&str) -> Option<u16>) -> Result<Expr, String> {
        let mut slots = Vec::with_capacity(self.vars.len());
        for v in &self.vars {
            match slot_of(v) {
                Some(s) => slots.push(s),
                None => return Err(v.clone()),
            }
        }
        // Always bind from the unbound program, so re-binding a bound expression works.
        let ops = self
            .unbound_ops()
            .iter()
            .map(|op| match op {
                Op::Var(i) => Op::Var(slots[*i as usize]),
                o => *o,
            })
            .collect();
        Ok(Expr {
            source: self.source.clone(),
            vars: self.vars.clone(),
            slots: Some(slots),
            ops,
        })
    }

    /// Whether [`Expr::bind`] was called.
    pub fn is_bound(&self) -> bool {
        self.slots.is_some()
    }

    /// The table slots this bound expression reads (empty before binding).
    pub fn slots(&self) -> &[u16] {
        self.slots.as_deref().unwrap_or(&[])
    }

    /// Evaluates over `env`, the variable table (indexed by slot once bound, by position in
    /// [`Expr::variables`] before). Allocation-free.
    pub fn eval(&self, env: &[i64]) -> Result<i64, EvalError> {
        let mut stack = [0i64; MAX_STACK];
        let mut sp = 0usize;
        let mut pc = 0usize;
        let ops = &self.ops[..];
        macro_rules! pop {
            () => {{
                sp -= 1;
                stack[sp]
            }};
        }
        while pc < ops.len() {
            match ops[pc] {
                Op::Const(c) => {
                    stack[sp] = c;
                    sp += 1;
                }
                Op::Var(i) => {
                    stack[sp] = *env.get(i as usize).ok_or(EvalError::UnboundVariable(i))?;
                    sp += 1;
                }
                Op::Neg => {
                    let a = pop!();
                    stack[sp] = a.checked_neg().ok_or(EvalError::Overflow)?;
                    sp += 1;
                }
                Op::Not => {
                    let a = pop!();
                    stack[sp] = (a == 0) as i64;
                    sp += 1;
                }
                Op::Log2 => {
                    let a = pop!();
                    if a <= 0 {
                        return Err(EvalError::LogOfNonPositive);
                    }
                    stack[sp] = 63 - a.leading_zeros() as i64;
                    sp += 1;
                }
                Op::Pow2 => {
                    let a = pop!();
                    if !(0..63).contains(&a) {
                        return Err(EvalError::Overflow);
                    }
                    stack[sp] = 1i64 << a;
                    sp += 1;
                }
                Op::Bool => {
                    let a = pop!();
                    stack[sp] = (a != 0) as i64;
                    sp += 1;
                }
                Op::AndJump(t) => {
                    if stack[sp - 1] == 0 {
                        pc = t as usize;
                        continue;
                    }
                    sp -= 1;
                }
                Op::OrJump(t) => {
                    if stack[sp - 1] != 0 {
                        stack[sp - 1] = 1;
                        pc = t as usize;
                        continue;
                    }
                    sp -= 1;
                }
                Op::JumpIfZero(t) => {
                    if pop!() == 0 {
                        pc = t as usize;
                        continue;
                    }
                }
                Op::Jump(t) => {
                    pc = t as usize;
                    continue;
                }
                bin => {
                    let b = pop!();
                    let a = pop!();
                    stack[sp] = binary(bin, a, b)?;
                    sp += 1;
                }
            }
            pc += 1;
        }
        Ok(if sp > 0 { stack[sp - 1] } else { 0 })
    }

    /// Evaluates with names looked up by `value_of` (convenience for tests and tools; allocates).
    pub fn eval_with(&self, mut value_of: impl FnMut(&str) -> Option<i64>) -> Result<i64, String> {
        let env: Vec<i64> = self
            .vars
            .iter()
            .map(|v| value_of(v).ok_or_else(|| format!("no value for `{v}`")))
            .collect::<Result<_, _>>()?;
        let unbound = Expr {
            slots: None,
            ops: self.unbound_ops(),
            ..self.clone()
        };
        unbound.eval(&env).map_err(|e| e.to_string())
    }

    fn unbound_ops(&self) -> Vec<Op> {
        match &self.slots {
            None => self.ops.clone(),
            Some(slots) => self
                .ops
                .iter()
                .map(|op| match op {
                    Op::Var(s) => Op::Var(slots.iter().position(|x| x == s).unwrap_or(0) as u16),
                    o => *o,
                })
                .collect(),
        }
    }
}

fn binary(op: Op, a: i64, b: i64) -> Result<i64, EvalError> {
    Ok(match op {
        Op::Add => a.checked_add(b).ok_or(EvalError::Overflow)?,
        Op::Sub => a.checked_sub(b).ok_or(EvalError::Overflow)?,
        Op::Mul => a.checked_mul(b).ok_or(EvalError::Overflow)?,
        Op::Div => {
            if b == 0 {
                return Err(EvalError::DivisionByZero);
            }
            a.checked_div(b).ok_or(EvalError::Overflow)?
        }
        Op::Rem => {
            if b == 0 {
                return Err(EvalError::DivisionByZero);
            }
            a.checked_rem(b).ok_or(EvalError::Overflow)?
        }
        Op::CeilDiv => {
            if b == 0 {
                return Err(EvalError::DivisionByZero);
            }
            let q = a.checked_div(b).ok_or(EvalError::Overflow)?;
            let r = a % b;
            if r != 0 && ((r > 0) == (b > 0)) {
                q + 1
            } else {
                q
            }
        }
        Op::Eq => (a == b) as i64,
        Op::Ne => (a != b) as i64,
        Op::Lt => (a < b) as i64,
        Op::Le => (a <= b) as i64,
        Op::Gt => (a > b) as i64,
        Op::Ge => (a >= b) as i64,
        Op::Min => a.min(b),
        Op::Max => a.max(b),
        _ => return Err(EvalError::Overflow), // unreachable: only binary ops reach here
    })
}

/// Stack depth the program needs (a simple walk; jumps only skip work, never deepen it).
fn max_depth(ops: &[Op]) -> usize {
    let mut d: isize = 0;
    let mut max = 0isize;
    for op in ops {
        d += match op {
            Op::Const(_) | Op::Var(_) => 1,
            Op::Neg | Op::Not | Op::Log2 | Op::Pow2 | Op::Bool | Op::Jump(_) => 0,
            Op::AndJump(_) | Op::OrJump(_) | Op::JumpIfZero(_) => -1,
            _ => -1,
        };
        max = max.max(d + 1);
    }
    max.max(1) as usize
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Int(i64),
    Ident(String),
    Sym(&'static str),
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::Int(i) => write!(f, "{i}"),
            Tok::Ident(s) => write!(f, "{s}"),
            Tok::Sym(s) => write!(f, "{s}"),
        }
    }
}

struct Token {
    kind: Tok,
    col: usize,
}

const SYMBOLS: [&str; 22] = [
    "&&", "||", "==", "!=", "<=", ">=", "<", ">", "+", "-", "*", "/", "%", "!", "(", ")", ",", "?",
    ":", "[", "]", "=",
];

fn lex(src: &str) -> Result<Vec<Token>, ParseError> {
    let chars: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let col = i + 1;
        if c.is_whitespace() {
            i += 1;
        } else if c.is_ascii_digit() {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            let text: String = chars[start..i].iter().filter(|c| **c != '_').collect();
            let v = if let Some(hex) = text.strip_prefix("0x") {
                i64::from_str_radix(hex, 16)
            } else {
                text.parse::<i64>()
            };
            match v {
                Ok(v) => out.push(Token {
                    kind: Tok::Int(v),
                    col,
                }),
                Err(_) => {
                    return Err(ParseError {
                        column: col,
                        msg: format!("`{text}` is not a 64-bit integer"),
                    })
                }
            }
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_alphanumeric() || chars[i] == '_' || chars[i] == '.')
            {
                i += 1;
            }
            out.push(Token {
                kind: Tok::Ident(chars[start..i].iter().collect()),
                col,
            });
        } else {
            let rest: String = chars[i..chars.len().min(i + 2)].iter().collect();
            match SYMBOLS.iter().find(|s| rest.starts_with(**s)) {
                Some(s) if *s == "[" || *s == "]" || *s == "=" => {
                    return Err(ParseError {
                        column: col,
                        msg: format!("unexpected `{s}`"),
                    })
                }
                Some(s) => {
                    out.push(Token {
                        kind: Tok::Sym(s),
                        col,
                    });
                    i += s.len();
                }
                None => {
                    return Err(ParseError {
                        column: col,
                        msg: format!("unexpected character `{c}`"),
                    })
                }
            }
        }
    }
    Ok(out)
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    vars: Vec<String>,
    ops: Vec<Op>,
    src_len: usize,
    /// Current nesting of sub-expressions; bounded so hostile input cannot overflow the stack.
    depth: usize,
}

/// Deepest nesting of parentheses, calls and ternaries the parser accepts.
const MAX_NESTING: usize = 64;

impl Parser {
    fn peek_sym(&self) -> Option<&'static str> {
        match self.tokens.get(self.pos) {
            Some(Token {
                kind: Tok::Sym(s), ..
            }) => Some(s),
            _ => None,
        }
    }

    fn col(&self) -> usize {
        self.tokens
            .get(self.pos)
            .map(|t| t.col)
            .unwrap_or(self.src_len + 1)
    }

    fn expect(&mut self, sym: &str) -> Result<(), ParseError> {
        if self.peek_sym() == Some(sym) {
            self.pos += 1;
            Ok(())
        } else {
            let found = self
                .tokens
                .get(self.pos)
                .map(|t| format!("`{}`", t.kind))
                .unwrap_or_else(|| "the end".into());
            Err(ParseError {
                column: self.col(),
                msg: format!("expected `{sym}`, found {found}"),
            })
        }
    }

    fn jump_target(&self) -> Result<u16, ParseError> {
        u16::try_from(self.ops.len()).map_err(|_| ParseError {
            column: self.col(),
            msg: "expression too long".into(),
        })
    }

    fn patch(&mut self, at: usize) -> Result<(), ParseError> {
        let t = self.jump_target()?;
        self.ops[at] = match self.ops[at] {
            Op::AndJump(_) => Op::AndJump(t),
            Op::OrJump(_) => Op::OrJump(t),
            Op::JumpIfZero(_) => Op::JumpIfZero(t),
            Op::Jump(_) => Op::Jump(t),
            o => o,
        };
        Ok(())
    }

    fn ternary(&mut self) -> Result<(), ParseError> {
        self.depth += 1;
        if self.depth > MAX_NESTING {
            return Err(ParseError {
                column: self.col(),
                msg: format!("expression nests deeper than {MAX_NESTING} levels"),
            });
        }
        let r = self.ternary_inner();
        self.depth -= 1;
        r
    }

    fn ternary_inner(&mut self) -> Result<(), ParseError> {
        self.or()?;
        if self.peek_sym() == Some("?") {
            self.pos += 1;
            let jz = self.ops.len();
            self.ops.push(Op::JumpIfZero(0));
            self.ternary()?;
            let j = self.ops.len();
            self.ops.push(Op::Jump(0));
            self.expect(":")?;
            self.patch(jz)?;
            self.ternary()?;
            self.patch(j)?;
        }
        Ok(())
    }

    fn or(&mut self) -> Result<(), ParseError> {
        self.and()?;
        if self.peek_sym() == Some("||") {
            let mut jumps = Vec::new();
            while self.peek_sym() == Some("||") {
                self.pos += 1;
                jumps.push(self.ops.len());
                self.ops.push(Op::OrJump(0));
                self.and()?;
            }
            self.ops.push(Op::Bool);
            for j in jumps {
                self.patch(j)?;
            }
        }
        Ok(())
    }

    fn and(&mut self) -> Result<(), ParseError> {
        self.equality()?;
        if self.peek_sym() == Some("&&") {
            let mut jumps = Vec::new();
            while self.peek_sym() == Some("&&") {
                self.pos += 1;
                jumps.push(self.ops.len());
                self.ops.push(Op::AndJump(0));
                self.equality()?;
            }
            self.ops.push(Op::Bool);
            for j in jumps {
                self.patch(j)?;
            }
        }
        Ok(())
    }

    fn binary_level(
        &mut self,
        table: &[(&str, Op)],
        next: fn(&mut Self) -> Result<(), ParseError>,
    ) -> Result<(), ParseError> {
        next(self)?;
        while let Some(sym) = self.peek_sym() {
            let Some((_, op)) = table.iter().find(|(s, _)| *s == sym) else {
                break;
            };
            self.pos += 1;
            next(self)?;
            self.ops.push(*op);
        }
        Ok(())
    }

    fn equality(&mut self) -> Result<(), ParseError> {
        self.binary_level(&[("==", Op::Eq), ("!=", Op::Ne)], Self::comparison)
    }

    fn comparison(&mut self) -> Result<(), ParseError> {
        self.binary_level(
            &[("<", Op::Lt), ("<=", Op::Le), (">", Op::Gt), (">=", Op::Ge)],
            Self::additive,
        )
    }

    fn additive(&mut self) -> Result<(), ParseError> {
        self.binary_level(&[("+", Op::Add), ("-", Op::Sub)], Self::multiplicative)
    }

    fn multiplicative(&mut self) -> Result<(), ParseError> {
        self.binary_level(
            &[("*", Op::Mul), ("/", Op::Div), ("%", Op::Rem)],
            Self::unary,
        )
    }

    fn unary(&mut self) -> Result<(), ParseError> {
        // Prefix operators are collected in a loop, not by recursion, so `------…1` cannot
        // exhaust the parser's stack.
        let mut prefix = Vec::new();
        while let Some(sym @ ("-" | "!")) = self.peek_sym() {
            self.pos += 1;
            prefix.push(if sym == "-" { Op::Neg } else { Op::Not });
        }
        self.atom()?;
        self.ops.extend(prefix.into_iter().rev());
        Ok(())
    }

    fn atom(&mut self) -> Result<(), ParseError> {
        let col = self.col();
        let Some(tok) = self.tokens.get(self.pos) else {
            return Err(ParseError {
                column: col,
                msg: "expected a value, found the end".into(),
            });
        };
        match tok.kind.clone() {
            Tok::Int(v) => {
                self.pos += 1;
                self.ops.push(Op::Const(v));
            }
            Tok::Sym("(") => {
                self.pos += 1;
                self.ternary()?;
                self.expect(")")?;
            }
            Tok::Ident(name) => {
                self.pos += 1;
                if self.peek_sym() == Some("(") {
                    let (arity, op) = match name.as_str() {
                        "min" => (2, Op::Min),
                        "max" => (2, Op::Max),
                        "ceil_div" => (2, Op::CeilDiv),
                        "log2" => (1, Op::Log2),
                        "pow2" => (1, Op::Pow2),
                        _ => {
                            return Err(ParseError {
                                column: col,
                                msg: format!(
                                "unknown function `{name}` (known: min, max, ceil_div, log2, pow2)"
                            ),
                            })
                        }
                    };
                    self.pos += 1;
                    for i in 0..arity {
                        if i > 0 {
                            self.expect(",")?;
                        }
                        self.ternary()?;
                    }
                    self.expect(")")?;
                    self.ops.push(op);
                } else if name == "true" || name == "false" {
                    self.ops.push(Op::Const((name == "true") as i64));
                } else {
                    let idx = match self.vars.iter().position(|v| *v == name) {
                        Some(i) => i,
                        None => {
                            self.vars.push(name);
                            self.vars.len() - 1
                        }
                    };
                    self.ops.push(Op::Var(idx as u16));
                }
            }
            other => {
                return Err(ParseError {
                    column: col,
                    msg: format!("expected a value, found `{other}`"),
                })
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(src: &str, vars: &[(&str, i64)]) -> Result<i64, String> {
        let e = Expr::parse(src).map_err(|e| e.to_string())?;
        e.eval_with(|n| vars.iter().find(|(k, _)| *k == n).map(|(_, v)| *v))
    }

    #[test]
    fn arithmetic_and_precedence() {
        assert_eq!(ev("1 + 2 * 3", &[]), Ok(7));
        assert_eq!(ev("(1 + 2) * 3", &[]), Ok(9));
        assert_eq!(ev("10 - 3 - 2", &[]), Ok(5));
        assert_eq!(ev("-7 / 2", &[]), Ok(-3));
        assert_eq!(ev("7 % 4 + -(-1)", &[]), Ok(4));
        assert_eq!(ev("ceil_div(10, 4) + ceil_div(8, 4)", &[]), Ok(5));
        assert_eq!(ev("log2(1024) + log2(1023)", &[]), Ok(19));
        assert_eq!(ev("min(3, 9) * max(2, -1) + pow2(4)", &[]), Ok(22));
        assert_eq!(ev("a * b", &[("a", 6), ("b", 7)]), Ok(42));
    }

    #[test]
    fn logic_comparisons_and_ternary() {
        assert_eq!(ev("1 < 2 && 3 >= 3", &[]), Ok(1));
        assert_eq!(ev("1 > 2 || 0", &[]), Ok(0));
        assert_eq!(ev("!0 && !!5", &[]), Ok(1));
        assert_eq!(ev("2 == 2 && 3 != 3", &[]), Ok(0));
        assert_eq!(ev("x > 3 ? 10 : 20", &[("x", 4)]), Ok(10));
        assert_eq!(ev("x > 3 ? 10 : x > 1 ? 20 : 30", &[("x", 0)]), Ok(30));
        assert_eq!(ev("true && !false", &[]), Ok(1));
    }

    #[test]
    fn short_circuit_guards_division() {
        assert_eq!(ev("a != 0 && 10 / a > 2", &[("a", 0)]), Ok(0));
        assert_eq!(ev("a == 0 || 10 / a > 2", &[("a", 0)]), Ok(1));
        assert_eq!(ev("a == 0 ? 0 : 10 / a", &[("a", 0)]), Ok(0));
    }

    #[test]
    fn evaluation_errors_are_values() {
        assert_eq!(ev("1 / 0", &[]), Err("division by zero".into()));
        assert_eq!(ev("5 % (2 - 2)", &[]), Err("division by zero".into()));
        assert_eq!(
            ev("9223372036854775807 + 1", &[]),
            Err("integer overflow".into())
        );
        assert_eq!(ev("log2(0)", &[]), Err("log2 of a value <= 0".into()));
        assert!(ev("x + 1", &[]).is_err());
    }

    #[test]
    fn parse_errors_name_the_column() {
        let e = Expr::parse("a + * b").unwrap_err();
        assert_eq!(e.column, 5, "{e}");
        let e = Expr::parse("min(a b)").unwrap_err();
        assert_eq!(e.column, 7, "{e}");
        let e = Expr::parse("foo(1)").unwrap_err();
        assert_eq!(e.column, 1);
        assert!(e.msg.contains("unknown function"));
        let e = Expr::parse("a + 3 $").unwrap_err();
        assert_eq!(e.column, 7);
        let e = Expr::parse("(a + 1").unwrap_err();
        assert_eq!(e.column, 7);
        assert!(Expr::parse("").is_err());
        assert!(Expr::parse("a = 1").is_err());
        assert!(Expr::parse("99999999999999999999").is_err());
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep = format!("{}1{}", "(1 + ".repeat(40), ")".repeat(40));
        assert!(Expr::parse(&deep).is_err());
        assert!(Expr::parse(&"(".repeat(100_000)).is_err());
        assert_eq!(ev(&format!("{}5", "-".repeat(100_001)), &[]), Ok(-5));
        let fine = format!("{}1{}", "(1 + ".repeat(10), ")".repeat(10));
        assert_eq!(ev(&fine, &[]), Ok(11));
    }

    #[test]
    fn binding_maps_names_to_table_slots() {
        let e = Expr::parse("n / bn + m").unwrap();
        assert_eq!(
            e.variables(),
            &["n".to_string(), "bn".to_string(), "m".to_string()]
        );
        let table = ["m", "n", "bn"];
        let b = e
            .bind(|name| table.iter().position(|t| *t == name).map(|p| p as u16))
            .unwrap();
        assert_eq!(b.eval(&[1, 100, 10]), Ok(11));
        assert_eq!(e.bind(|_| None).unwrap_err(), "n");
        assert_eq!(b.eval(&[1]), Err(EvalError::UnboundVariable(1)));
    }

    #[test]
    fn canonical_form_ignores_spacing_and_parentheses() {
        let a = Expr::parse("a*b+(c)").unwrap();
        let b = Expr::parse("  a * b +  c ").unwrap();
        let c = Expr::parse("a * (b + c)").unwrap();
        assert_eq!(a.canonical(), b.canonical());
        assert_ne!(a.canonical(), c.canonical());
    }
}
