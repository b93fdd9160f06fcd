//! Evaluation: casts, operators, `LIKE` patterns and the built-in
//! functions, with the specification's error rules.
//!
//! A part that fails (a missing attribute, a division by zero, an
//! overflow) takes its type's zero value, and so does every operator over
//! it: `1 != 1 / 0` is `FALSE`, with a math error. A cast that fails
//! inside an operator gives the zero value of the type cast to, and the
//! operator goes on: `NOT 10` is `TRUE`, with a cast error. The first
//! error met is the one reported.

use super::{Arithmetic, Compare, ErrorKind, Logic, Node, Type, Value};
use crate::event::CloudEvent;

/// Evaluates `root` on `event`.
pub(super) fn evaluate(root: &Node, event: &CloudEvent) -> (Value, Option<ErrorKind>) {
    let mut eval = Eval { event, first: None };
    let value = match eval.node(root) {
        Ok(value) => value,
        // A root of unknown type is taken for a Boolean (§3.2).
        Err(Failed) => root.kind().unwrap_or(Type::Boolean).zero(),
    };
    (value, eval.first)
}

/// A part of the expression failed; its error is noted in [`Eval`].
struct Failed;

struct Eval<'e> {
    event: &'e CloudEvent,
    first: Option<ErrorKind>,
}

impl Eval<'_> {
    fn note(&mut self, kind: ErrorKind) {
        self.first.get_or_insert(kind);
    }

    fn fail<T>(&mut self, kind: ErrorKind) -> Result<T, Failed> {
        self.note(kind);
        Err(Failed)
    }

    fn node(&mut self, node: &Node) -> Result<Value, Failed> {
        Ok(match node {
            Node::Literal(value) => value.clone(),
            Node::Attribute(name) => match self.event.attribute(name) {
                Some(value) => Value::String(value.to_string()),
                None => return self.fail(ErrorKind::MissingAttribute),
            },
            Node::Exists(name) => Value::Boolean(self.event.attribute(name).is_some()),
            Node::Not(inner) => {
                let value = self.node(inner)?;
                Value::Boolean(!self.boolean(value))
            }
            Node::Negate(inner) => {
                let value = self.node(inner)?;
                let n = self.integer(value);
                match n.checked_neg() {
                    Some(n) => Value::Integer(n),
                    None => return self.fail(ErrorKind::Math),
                }
            }
            Node::Arithmetic(op, left, right) => {
                let left = self.node(left)?;
                let right = self.node(right)?;
                let (a, b) = (self.integer(left), self.integer(right));
                let result = match op {
                    Arithmetic::Add => a.checked_add(b),
                    Arithmetic::Subtract => a.checked_sub(b),
                    Arithmetic::Multiply => a.checked_mul(b),
                    Arithmetic::Divide => a.checked_div(b),
                    Arithmetic::Remainder => a.checked_rem(b),
                };
                match result {
                    Some(n) => Value::Integer(n),
                    None => return self.fail(ErrorKind::Math),
                }
            }
            Node::Equality { equal, left, right } => {
                let left = self.node(left)?;
                let right = self.node(right)?;
                // Of two types, the left is cast to the right's.
                let left = self.cast(left, right.kind());
                Value::Boolean((left == right) == *equal)
            }
            Node::Compare(op, left, right) => {
                let left = self.node(left)?;
                let right = self.node(right)?;
                let (a, b) = (self.integer(left), self.integer(right));
                Value::Boolean(match op {
                    Compare::Less => a < b,
                    Compare::LessOrEqual => a <= b,
                    Compare::Greater => a > b,
                    Compare::GreaterOrEqual => a >= b,
                })
            }
            Node::Logic(op, left, right) => {
                let left = self.node(left)?;
                let left = self.boolean(left);
                // AND and OR stop once the left decides.
                match (op, left) {
                    (Logic::And, false) => return Ok(Value::Boolean(false)),
                    (Logic::Or, true) => return Ok(Value::Boolean(true)),
                    _ => {}
                }
                let right = self.node(right)?;
                let right = self.boolean(right);
                Value::Boolean(match op {
                    Logic::And => left && right,
                    Logic::Or => left || right,
                    Logic::Xor => left != right,
                })
            }
            Node::Like {
                value,
                pattern,
                negated,
            } => {
                let value = self.node(value)?;
                let text = self.string(value);
                match pattern.matches(&text) {
                    Some(matched) => Value::Boolean(matched != *negated),
                    None => return self.fail(ErrorKind::FunctionEvaluation),
                }
            }
            Node::In {
                value,
                set,
                negated,
            } => {
                let value = self.node(value)?;
                let mut found = false;
                for item in set {
                    // Each member is cast to the value's type.
                    let item = self.node(item)?;
                    let item = self.cast(item, value.kind());
                    if item == value {
                        found = true;
                        break;
                    }
                }
                Value::Boolean(found != *negated)
            }
            Node::Unknown { .. } => return self.fail(ErrorKind::MissingFunction),
            Node::Call(function, args) => {
                let mut values = Vec::with_capacity(args.len());
                for arg in args {
                    values.push(self.node(arg)?);
                }
                function.call(self, values)?
            }
        })
    }

    /// `value` as `to`, or `to`'s zero value with a cast error.
    fn cast(&mut self, value: Value, to: Type) -> Value {
        match to {
            Type::Boolean => Value::Boolean(self.boolean(value)),
            Type::Integer => Value::Integer(self.integer(value)),
            Type::String => Value::String(self.string(value)),
        }
    }

    /// An implicit cast to Boolean: from a String `true` or `false` (any
    /// case), not from an Integer.
    fn boolean(&mut self, value: Value) -> bool {
        match value {
            Value::Boolean(b) => b,
            Value::String(s) if s.eq_ignore_ascii_case("true") => true,
            Value::String(s) if s.eq_ignore_ascii_case("false") => false,
            Value::String(_) | Value::Integer(_) => {
                self.note(ErrorKind::Cast);
                false
            }
        }
    }

    fn integer(&mut self, value: Value) -> i32 {
        match value {
            Value::Integer(n) => n,
            Value::Boolean(b) => i32::from(b),
            Value::String(s) => s.parse().unwrap_or_else(|_| {
                self.note(ErrorKind::Cast);
                0
            }),
        }
    }

    fn string(&mut self, value: Value) -> String {
        match value {
            Value::String(s) => s,
            Value::Integer(n) => n.to_string(),
            Value::Boolean(b) => b.to_string(),
        }
    }
}

/// The longest string a function may make: past it, a function
/// evaluation error and an empty string (nested `CONCAT_WS` could
/// otherwise grow without bound from a few hundred bytes of expression).
pub const MAX_STRING_BYTES: usize = 64 << 10;

/// The most steps one `LIKE` may take (pattern pieces times characters
/// tried): past it, a function evaluation error and no match.
pub const MAX_LIKE_STEPS: usize = 1 << 22;

/// The built-in functions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Function {
    Length,
    Concat,
    ConcatWs,
    Lower,
    Upper,
    Trim,
    Left,
    Right,
    Substring,
    Abs,
    Int,
    Bool,
    String,
    IsBool,
    IsInt,
}

impl Function {
    /// The function `name` (any case) taking `arity` arguments.
    pub(super) fn find(name: &str, arity: usize) -> Option<Function> {
        let function = match name.to_ascii_uppercase().as_str() {
            "LENGTH" => Function::Length,
            "CONCAT" => Function::Concat,
            "CONCAT_WS" => Function::ConcatWs,
            "LOWER" => Function::Lower,
            "UPPER" => Function::Upper,
            "TRIM" => Function::Trim,
            "LEFT" => Function::Left,
            "RIGHT" => Function::Right,
            "SUBSTRING" => Function::Substring,
            "ABS" => Function::Abs,
            "INT" => Function::Int,
            "BOOL" => Function::Bool,
            "STRING" => Function::String,
            "IS_BOOL" => Function::IsBool,
            "IS_INT" => Function::IsInt,
            _ => return None,
        };
        let fits = match function {
            Function::Concat => true,
            Function::ConcatWs => arity >= 1,
            Function::Left | Function::Right => arity == 2,
            Function::Substring => arity == 2 || arity == 3,
            _ => arity == 1,
        };
        fits.then_some(function)
    }

    pub(super) fn returns(self) -> Type {
        match self {
            Function::Length | Function::Abs | Function::Int => Type::Integer,
            Function::Bool | Function::IsBool | Function::IsInt => Type::Boolean,
            _ => Type::String,
        }
    }

    fn call(self, eval: &mut Eval<'_>, args: Vec<Value>) -> Result<Value, Failed> {
        let mut args = args.into_iter();
        let string = |eval: &mut Eval<'_>, args: &mut std::vec::IntoIter<Value>| {
            let value = args.next().expect("arity checked at parse time");
            eval.string(value)
        };
        Ok(match self {
            Function::Length => {
                let s = string(eval, &mut args);
                Value::Integer(i32::try_from(s.chars().count()).unwrap_or(i32::MAX))
            }
            Function::Concat => {
                let parts: Vec<String> = args.map(|v| eval.string(v)).collect();
                joined(eval, &parts, "")
            }
            Function::ConcatWs => {
                let separator = string(eval, &mut args);
                let parts: Vec<String> = args.map(|v| eval.string(v)).collect();
                joined(eval, &parts, &separator)
            }
            Function::Lower => Value::String(string(eval, &mut args).to_lowercase()),
            Function::Upper => Value::String(string(eval, &mut args).to_uppercase()),
            Function::Trim => Value::String(string(eval, &mut args).trim().to_string()),
            Function::Left | Function::Right => {
                let s = string(eval, &mut args);
                let n = args.next().expect("arity checked");
                let n = eval.integer(n);
                let Ok(n) = usize::try_from(n) else {
                    // A negative length: the string as it is.
                    eval.note(ErrorKind::FunctionEvaluation);
                    return Ok(Value::String(s));
                };
                let chars: Vec<char> = s.chars().collect();
                let n = n.min(chars.len());
                Value::String(if self == Function::Left {
                    chars[..n].iter().collect()
                } else {
                    chars[chars.len() - n..].iter().collect()
                })
            }
            Function::Substring => {
                let s = string(eval, &mut args);
                let position = args.next().expect("arity checked");
                let position = eval.integer(position);
                let length = args.next().map(|length| eval.integer(length));
                match substring(&s, position, length) {
                    Some(s) => Value::String(s),
                    None => {
                        eval.note(ErrorKind::FunctionEvaluation);
                        Value::String(String::new())
                    }
                }
            }
            Function::Abs => {
                let value = args.next().expect("arity checked");
                let n = eval.integer(value);
                match n.checked_abs() {
                    Some(n) => Value::Integer(n),
                    None => {
                        eval.note(ErrorKind::Math);
                        Value::Integer(i32::MAX)
                    }
                }
            }
            Function::Int => {
                let value = args.next().expect("arity checked");
                Value::Integer(eval.integer(value))
            }
            Function::Bool => match args.next().expect("arity checked") {
                // An explicit cast takes Integers too: non-zero is TRUE.
                Value::Integer(n) => Value::Boolean(n != 0),
                other => Value::Boolean(eval.boolean(other)),
            },
            Function::String => {
                let value = args.next().expect("arity checked");
                Value::String(eval.string(value))
            }
            Function::IsBool => {
                let s = string(eval, &mut args);
                Value::Boolean(s.eq_ignore_ascii_case("true") || s.eq_ignore_ascii_case("false"))
            }
            Function::IsInt => {
                let s = string(eval, &mut args);
                Value::Boolean(s.parse::<i32>().is_ok())
            }
        })
    }
}

/// `parts` joined by `separator`, unless that passes [`MAX_STRING_BYTES`]
/// (checked before anything is joined).
fn joined(eval: &mut Eval<'_>, parts: &[String], separator: &str) -> Value {
    let gaps = parts.len().saturating_sub(1);
    let len = parts
        .iter()
        .try_fold(separator.len().checked_mul(gaps), |sum, part| {
            sum.and_then(|sum| sum.checked_add(part.len())).map(Some)
        })
        .flatten();
    match len {
        Some(len) if len <= MAX_STRING_BYTES => Value::String(parts.join(separator)),
        _ => {
            eval.note(ErrorKind::FunctionEvaluation);
            Value::String(String::new())
        }
    }
}

/// `SUBSTRING(s, position[, length])`: `position` counts characters from
/// 1, or from the end when negative; 0 gives an empty string. `None` when
/// `position` lies outside `s` or `length` is negative.
fn substring(s: &str, position: i32, length: Option<i32>) -> Option<String> {
    let chars: Vec<char> = s.chars().collect();
    let len = i64::try_from(chars.len()).unwrap_or(i64::MAX);
    let position = i64::from(position);
    if position == 0 {
        return Some(String::new());
    }
    if position > len || position < -len {
        return None;
    }
    let start = if position > 0 {
        position - 1
    } else {
        len + position
    };
    let end = match length {
        None => len,
        Some(n) if n < 0 => return None,
        Some(n) => (start + i64::from(n)).min(len),
    };
    let (start, end) = (usize::try_from(start).ok()?, usize::try_from(end).ok()?);
    Some(chars[start..end].iter().collect())
}

/// A compiled `LIKE` pattern: `%` any run of characters, `_` any one,
/// `\%`, `\_` and `\\` those characters themselves; a backslash before
/// anything else is itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Pattern(Vec<Piece>);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Piece {
    Char(char),
    One,
    Any,
}

/// A pattern that is one plain string, or a plain string then `%`, or `%`
/// then a plain string.
pub(super) enum Affix {
    Exact(String),
    Prefix(String),
    Suffix(String),
}

impl Pattern {
    pub(super) fn new(text: &str) -> Pattern {
        let mut pieces = Vec::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            pieces.push(match c {
                '%' => Piece::Any,
                '_' => Piece::One,
                '\\' => match chars.peek() {
                    Some(&next @ ('%' | '_' | '\\')) => {
                        chars.next();
                        Piece::Char(next)
                    }
                    _ => Piece::Char('\\'),
                },
                c => Piece::Char(c),
            });
        }
        Pattern(pieces)
    }

    /// Whether `text` matches, in time proportional to their lengths'
    /// product at worst (one backtracking point, no recursion); `None` past
    /// [`MAX_LIKE_STEPS`].
    pub(super) fn matches(&self, text: &str) -> Option<bool> {
        let text: Vec<char> = text.chars().collect();
        let pattern = &self.0;
        let (mut p, mut t) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        let mut steps = 0usize;
        while t < text.len() {
            steps += 1;
            if steps > MAX_LIKE_STEPS {
                return None;
            }
            match pattern.get(p) {
                Some(Piece::Any) => {
                    star = Some((p, t));
                    p += 1;
                }
                Some(Piece::One) => {
                    p += 1;
                    t += 1;
                }
                Some(Piece::Char(c)) if *c == text[t] => {
                    p += 1;
                    t += 1;
                }
                _ => match star {
                    Some((sp, st)) => {
                        p = sp + 1;
                        t = st + 1;
                        star = Some((sp, st + 1));
                    }
                    None => return Some(false),
                },
            }
        }
        Some(pattern[p..].iter().all(|piece| *piece == Piece::Any))
    }

    pub(super) fn affix(&self) -> Option<Affix> {
        let plain = |pieces: &[Piece]| -> Option<String> {
            pieces
                .iter()
                .map(|piece| match piece {
                    Piece::Char(c) => Some(*c),
                    _ => None,
                })
                .collect()
        };
        match self.0.as_slice() {
            [] => Some(Affix::Exact(String::new())),
            [rest @ .., Piece::Any] if !rest.is_empty() => plain(rest).map(Affix::Prefix),
            [Piece::Any, rest @ ..] if !rest.is_empty() => plain(rest).map(Affix::Suffix),
            all => plain(all).map(Affix::Exact),
        }
    }
}
