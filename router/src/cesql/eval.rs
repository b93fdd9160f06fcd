//! Evaluation: casts, operators, `LIKE` patterns and the built-in
//! functions, with the specification's error rules.
//!
//! A part that fails (a missing attribute, a division by zero, an
//! overflow) takes its type's zero value, and so does every operator over
//! it: `1 != 1 / 0` is `FALSE`, with a math error. A cast that fails
//! inside an operator gives the zero value of the type cast to, and the
//! operator goes on: `NOT 10` is `TRUE`, with a cast error. The first
//! error met is the one reported.

use std::borrow::Cow;

use super::{Arithmetic, Compare, ErrorKind, Logic, Node, Type, Value};
use crate::event::CloudEvent;

/// A value while evaluating: strings borrowed from the event and the
/// expression where they can be, so matching an event copies no
/// attribute.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Val<'a> {
    Boolean(bool),
    Integer(i32),
    String(Cow<'a, str>),
}

impl<'a> Val<'a> {
    fn kind(&self) -> Type {
        match self {
            Val::Boolean(_) => Type::Boolean,
            Val::Integer(_) => Type::Integer,
            Val::String(_) => Type::String,
        }
    }

    fn of(value: &'a Value) -> Val<'a> {
        match value {
            Value::Boolean(b) => Val::Boolean(*b),
            Value::Integer(n) => Val::Integer(*n),
            Value::String(s) => Val::String(Cow::Borrowed(s)),
        }
    }

    fn into_value(self) -> Value {
        match self {
            Val::Boolean(b) => Value::Boolean(b),
            Val::Integer(n) => Value::Integer(n),
            Val::String(s) => Value::String(s.into_owned()),
        }
    }
}

/// Evaluates `root` on `event`.
pub(super) fn evaluate(root: &Node, event: &CloudEvent) -> (Value, Option<ErrorKind>) {
    let mut eval = Eval { event, first: None };
    let value = match eval.node(root) {
        Ok(value) => value.into_value(),
        // A root of unknown type is taken for a Boolean (§3.2).
        Err(Failed) => root.kind().unwrap_or(Type::Boolean).zero(),
    };
    (value, eval.first)
}

/// Whether `root` is `TRUE` on `event` (or an attribute alone holding
/// `true`, in any case), with no error: [`evaluate`] without making the
/// result a [`Value`].
pub(super) fn matches(root: &Node, event: &CloudEvent) -> bool {
    let mut eval = Eval { event, first: None };
    let result = eval.node(root);
    eval.first.is_none()
        && match result {
            Ok(Val::Boolean(b)) => b,
            Ok(Val::String(s)) => s.eq_ignore_ascii_case("true"),
            _ => false,
        }
}

/// A part of the expression failed; its error is noted in [`Eval`].
struct Failed;

struct Eval<'a> {
    event: &'a CloudEvent,
    first: Option<ErrorKind>,
}

impl<'a> Eval<'a> {
    fn note(&mut self, kind: ErrorKind) {
        self.first.get_or_insert(kind);
    }

    fn fail<T>(&mut self, kind: ErrorKind) -> Result<T, Failed> {
        self.note(kind);
        Err(Failed)
    }

    fn node(&mut self, node: &'a Node) -> Result<Val<'a>, Failed> {
        Ok(match node {
            Node::Literal(value) => Val::of(value),
            Node::Attribute(name) => match self.event.attribute(name) {
                Some(value) => Val::String(Cow::Borrowed(value)),
                None => return self.fail(ErrorKind::MissingAttribute),
            },
            Node::Exists(name) => Val::Boolean(self.event.attribute(name).is_some()),
            Node::Data(path) => match self.event.data_json().and_then(|d| path.lookup(d)) {
                Some(serde_json::Value::String(s)) => Val::String(Cow::Borrowed(s)),
                Some(serde_json::Value::Bool(b)) => Val::Boolean(*b),
                Some(serde_json::Value::Number(n))
                    if let Some(n) = n.as_i64().and_then(|n| i32::try_from(n).ok()) =>
                {
                    Val::Integer(n)
                }
                _ => return self.fail(ErrorKind::MissingAttribute),
            },
            Node::BadData { .. } => return self.fail(ErrorKind::Parse),
            Node::Not(inner) => {
                let value = self.node(inner)?;
                Val::Boolean(!self.boolean(value))
            }
            Node::Negate(inner) => {
                let value = self.node(inner)?;
                let n = self.integer(value);
                match n.checked_neg() {
                    Some(n) => Val::Integer(n),
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
                    Some(n) => Val::Integer(n),
                    None => return self.fail(ErrorKind::Math),
                }
            }
            Node::Equality { equal, left, right } => {
                let left = self.node(left)?;
                let right = self.node(right)?;
                // Of two types, the left is cast to the right's.
                let left = self.cast(left, right.kind());
                Val::Boolean((left == right) == *equal)
            }
            Node::Compare(op, left, right) => {
                let left = self.node(left)?;
                let right = self.node(right)?;
                let (a, b) = (self.integer(left), self.integer(right));
                Val::Boolean(match op {
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
                    (Logic::And, false) => return Ok(Val::Boolean(false)),
                    (Logic::Or, true) => return Ok(Val::Boolean(true)),
                    _ => {}
                }
                let right = self.node(right)?;
                let right = self.boolean(right);
                Val::Boolean(match op {
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
                    Some(matched) => Val::Boolean(matched != *negated),
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
                Val::Boolean(found != *negated)
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
    fn cast(&mut self, value: Val<'a>, to: Type) -> Val<'a> {
        match to {
            Type::Boolean => Val::Boolean(self.boolean(value)),
            Type::Integer => Val::Integer(self.integer(value)),
            Type::String => Val::String(self.string(value)),
        }
    }

    /// An implicit cast to Boolean: from a String `true` or `false` (any
    /// case), not from an Integer.
    fn boolean(&mut self, value: Val<'a>) -> bool {
        match value {
            Val::Boolean(b) => b,
            Val::String(s) if s.eq_ignore_ascii_case("true") => true,
            Val::String(s) if s.eq_ignore_ascii_case("false") => false,
            Val::String(_) | Val::Integer(_) => {
                self.note(ErrorKind::Cast);
                false
            }
        }
    }

    fn integer(&mut self, value: Val<'a>) -> i32 {
        match value {
            Val::Integer(n) => n,
            Val::Boolean(b) => i32::from(b),
            Val::String(s) => s.parse().unwrap_or_else(|_| {
                self.note(ErrorKind::Cast);
                0
            }),
        }
    }

    fn string(&mut self, value: Val<'a>) -> Cow<'a, str> {
        match value {
            Val::String(s) => s,
            Val::Integer(n) => Cow::Owned(n.to_string()),
            Val::Boolean(b) => Cow::Borrowed(if b { "true" } else { "false" }),
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

    fn call<'a>(self, eval: &mut Eval<'a>, args: Vec<Val<'a>>) -> Result<Val<'a>, Failed> {
        let mut args = args.into_iter();
        let string = |eval: &mut Eval<'a>, args: &mut std::vec::IntoIter<Val<'a>>| {
            let value = args.next().expect("arity checked at parse time");
            eval.string(value)
        };
        Ok(match self {
            Function::Length => {
                let s = string(eval, &mut args);
                Val::Integer(i32::try_from(s.chars().count()).unwrap_or(i32::MAX))
            }
            Function::Concat => {
                let parts: Vec<Cow<'a, str>> = args.map(|v| eval.string(v)).collect();
                joined(eval, &parts, "")
            }
            Function::ConcatWs => {
                let separator = string(eval, &mut args);
                let parts: Vec<Cow<'a, str>> = args.map(|v| eval.string(v)).collect();
                joined(eval, &parts, &separator)
            }
            Function::Lower => Val::String(Cow::Owned(string(eval, &mut args).to_lowercase())),
            Function::Upper => Val::String(Cow::Owned(string(eval, &mut args).to_uppercase())),
            Function::Trim => Val::String(Cow::Owned(string(eval, &mut args).trim().to_string())),
            Function::Left | Function::Right => {
                let s = string(eval, &mut args);
                let n = args.next().expect("arity checked");
                let n = eval.integer(n);
                let Ok(n) = usize::try_from(n) else {
                    // A negative length: the string as it is.
                    eval.note(ErrorKind::FunctionEvaluation);
                    return Ok(Val::String(s));
                };
                let chars: Vec<char> = s.chars().collect();
                let n = n.min(chars.len());
                Val::String(Cow::Owned(if self == Function::Left {
                    chars[..n].iter().collect()
                } else {
                    chars[chars.len() - n..].iter().collect()
                }))
            }
            Function::Substring => {
                let s = string(eval, &mut args);
                let position = args.next().expect("arity checked");
                let position = eval.integer(position);
                let length = args.next().map(|length| eval.integer(length));
                match substring(&s, position, length) {
                    Some(s) => Val::String(Cow::Owned(s)),
                    None => {
                        eval.note(ErrorKind::FunctionEvaluation);
                        Val::String(Cow::Borrowed(""))
                    }
                }
            }
            Function::Abs => {
                let value = args.next().expect("arity checked");
                let n = eval.integer(value);
                match n.checked_abs() {
                    Some(n) => Val::Integer(n),
                    None => {
                        eval.note(ErrorKind::Math);
                        Val::Integer(i32::MAX)
                    }
                }
            }
            Function::Int => {
                let value = args.next().expect("arity checked");
                Val::Integer(eval.integer(value))
            }
            Function::Bool => match args.next().expect("arity checked") {
                // An explicit cast takes Integers too: non-zero is TRUE.
                Val::Integer(n) => Val::Boolean(n != 0),
                other => Val::Boolean(eval.boolean(other)),
            },
            Function::String => {
                let value = args.next().expect("arity checked");
                Val::String(eval.string(value))
            }
            Function::IsBool => {
                let s = string(eval, &mut args);
                Val::Boolean(s.eq_ignore_ascii_case("true") || s.eq_ignore_ascii_case("false"))
            }
            Function::IsInt => {
                let s = string(eval, &mut args);
                Val::Boolean(s.parse::<i32>().is_ok())
            }
        })
    }
}

/// `parts` joined by `separator`, unless that passes [`MAX_STRING_BYTES`]
/// (checked before anything is joined).
fn joined<'a>(eval: &mut Eval<'a>, parts: &[Cow<'a, str>], separator: &str) -> Val<'a> {
    let gaps = parts.len().saturating_sub(1);
    let len = parts
        .iter()
        .try_fold(separator.len().checked_mul(gaps), |sum, part| {
            sum.and_then(|sum| sum.checked_add(part.len())).map(Some)
        })
        .flatten();
    match len {
        Some(len) if len <= MAX_STRING_BYTES => Val::String(Cow::Owned(parts.join(separator))),
        _ => {
            eval.note(ErrorKind::FunctionEvaluation);
            Val::String(Cow::Borrowed(""))
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
        // `t` and the star's text position are byte offsets at characters.
        let first = |at: usize| text[at..].chars().next().expect("at a character");
        let pattern = &self.0;
        let (mut p, mut t) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        let mut steps = 0usize;
        while t < text.len() {
            steps += 1;
            if steps > MAX_LIKE_STEPS {
                return None;
            }
            let c = first(t);
            match pattern.get(p) {
                Some(Piece::Any) => {
                    star = Some((p, t));
                    p += 1;
                }
                Some(Piece::One) => {
                    p += 1;
                    t += c.len_utf8();
                }
                Some(Piece::Char(want)) if *want == c => {
                    p += 1;
                    t += c.len_utf8();
                }
                _ => match star {
                    Some((sp, st)) => {
                        let st = st + first(st).len_utf8();
                        p = sp + 1;
                        t = st;
                        star = Some((sp, st));
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
