//! CloudEvents SQL (CESQL v1) filters: `{"cesql": "type = 'a' AND ..."}`.
//!
//! An expression is parsed once, when its trigger is created ([`parse`]:
//! a syntax error, an unknown function or a wrong number of arguments is
//! refused there, naming the position), and evaluated per event
//! ([`Expression::evaluate`]) as the specification says: three types
//! (Boolean, 32-bit Integer, String), implicit casts, and errors that do
//! not stop evaluation but give the failed part its type's zero value; the
//! first error is reported beside the result. A trigger matches when the
//! result is `TRUE` and no error occurred.
//!
//! Sluice keeps every attribute in its canonical string form (as HTTP
//! binary mode carries it), so an attribute evaluates to a String, cast
//! where an operator needs another type (`sequence = 5`, `hop < ttl`).
//!
//! [`Expression::implied`] gives the conditions the expression cannot
//! match without (exact and `LIKE 'x%'`/`'%x'` tests of an attribute in
//! its top-level `AND` chain), so the trigger index narrows by them.

mod eval;
mod parse;

#[cfg(test)]
pub(crate) mod tests;

use std::fmt;

use crate::event::CloudEvent;
use crate::filter::Filter;

pub use eval::{MAX_LIKE_STEPS, MAX_STRING_BYTES};
pub use parse::{MAX_DEPTH, MAX_EXPRESSION_BYTES, MAX_NESTING};

/// A CESQL value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// `TRUE` or `FALSE`.
    Boolean(bool),
    /// A 32-bit signed integer.
    Integer(i32),
    /// A string.
    String(String),
}

impl Value {
    /// The value's type.
    pub fn kind(&self) -> Type {
        match self {
            Value::Boolean(_) => Type::Boolean,
            Value::Integer(_) => Type::Integer,
            Value::String(_) => Type::String,
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Boolean(b) => f.write_str(if *b { "TRUE" } else { "FALSE" }),
            Value::Integer(n) => write!(f, "{n}"),
            Value::String(s) => write!(f, "{s:?}"),
        }
    }
}

/// A CESQL type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Type {
    /// Boolean.
    Boolean,
    /// Integer.
    Integer,
    /// String.
    String,
}

impl Type {
    /// What a failed part of this type evaluates to.
    pub fn zero(self) -> Value {
        match self {
            Type::Boolean => Value::Boolean(false),
            Type::Integer => Value::Integer(0),
            Type::String => Value::String(String::new()),
        }
    }
}

impl fmt::Display for Type {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Type::Boolean => "a Boolean",
            Type::Integer => "an Integer",
            Type::String => "a String",
        })
    }
}

/// The specification's error kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The expression is not CESQL.
    Parse,
    /// Division or remainder by zero, or an integer overflow.
    Math,
    /// A value that cannot be cast to the type an operator needs.
    Cast,
    /// An attribute the event does not have.
    MissingAttribute,
    /// A function that does not exist with that many arguments.
    MissingFunction,
    /// A function given arguments it cannot work with.
    FunctionEvaluation,
}

impl ErrorKind {
    /// The kind's name, as the specification's TCK spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Parse => "parse",
            ErrorKind::Math => "math",
            ErrorKind::Cast => "cast",
            ErrorKind::MissingAttribute => "missingAttribute",
            ErrorKind::MissingFunction => "missingFunction",
            ErrorKind::FunctionEvaluation => "functionEvaluation",
        }
    }
}

/// Why an expression was refused at parse time.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message} (at character {position})")]
pub struct ParseError {
    /// [`ErrorKind::Parse`] or [`ErrorKind::MissingFunction`].
    pub kind: ErrorKind,
    /// Where, counted in characters from 1.
    pub position: usize,
    /// What is wrong.
    pub message: String,
}

/// A parsed CESQL expression.
#[derive(Clone, Debug)]
pub struct Expression {
    text: String,
    root: Node,
}

impl PartialEq for Expression {
    fn eq(&self, other: &Expression) -> bool {
        self.text == other.text
    }
}

impl Eq for Expression {}

/// Parses `text` as a CESQL expression.
pub fn parse(text: &str) -> Result<Expression, ParseError> {
    let root = parse::parse(text)?;
    Ok(Expression {
        text: text.to_string(),
        root,
    })
}

impl Expression {
    /// The expression as written.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The type of the expression's result, where it is known before an
    /// event is seen (an attribute alone could hold anything).
    pub fn result_type(&self) -> Option<Type> {
        self.root.kind()
    }

    /// Evaluates the expression on `event`: its result, and the first
    /// error met on the way, if any.
    pub fn evaluate(&self, event: &CloudEvent) -> (Value, Option<ErrorKind>) {
        eval::evaluate(&self.root, event)
    }

    /// Whether `event` passes this expression as a filter: the result is
    /// `TRUE` (or an attribute alone holding `true`, in any case) and
    /// evaluating it met no error.
    pub fn matches(&self, event: &CloudEvent) -> bool {
        eval::matches(&self.root, event)
    }

    /// Conditions every event this expression matches must meet, as
    /// dialect filters (ANDed): for the trigger index.
    pub fn implied(&self) -> Vec<Filter> {
        let mut out = Vec::new();
        implied(&self.root, &mut out);
        out
    }

    /// The whole expression as a dialect filter (`=` of an attribute and a
    /// string, `LIKE 'x%'`, `LIKE '%x'`, `AND`, `OR`, `NOT`), equivalent on
    /// events that have every attribute it names: where one is missing,
    /// CESQL matches nothing while a dialect `not` or `any` may match.
    pub fn as_dialect(&self) -> Option<Filter> {
        dialect(&self.root)
    }
}

/// One node of a parsed expression.
#[derive(Clone, Debug)]
enum Node {
    Literal(Value),
    Attribute(String),
    Exists(String),
    Not(Box<Node>),
    Negate(Box<Node>),
    Arithmetic(Arithmetic, Box<Node>, Box<Node>),
    /// `=` (`equal`) or `!=`/`<>`.
    Equality {
        equal: bool,
        left: Box<Node>,
        right: Box<Node>,
    },
    Compare(Compare, Box<Node>, Box<Node>),
    Logic(Logic, Box<Node>, Box<Node>),
    Like {
        value: Box<Node>,
        pattern: eval::Pattern,
        negated: bool,
    },
    In {
        value: Box<Node>,
        set: Vec<Node>,
        negated: bool,
    },
    Call(eval::Function, Vec<Node>),
    /// `DATA('$.path')`: a field of the JSON `data` (a Sluice extension).
    Data(crate::data::DataPath),
    /// A `DATA` call that is not one: refused once parsing ends, as
    /// [`Node::Unknown`] is.
    BadData {
        kind: ErrorKind,
        message: String,
        from_end: usize,
    },
    /// A call of no known function: refused once parsing ends (so never
    /// evaluated). `from_end` is where it starts, in bytes from the end.
    Unknown {
        name: String,
        arity: usize,
        from_end: usize,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Arithmetic {
    Add,
    Subtract,
    Multiply,
    Divide,
    Remainder,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Compare {
    Less,
    LessOrEqual,
    Greater,
    GreaterOrEqual,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Logic {
    And,
    Or,
    Xor,
}

impl Node {
    /// The node's type, where it is known without an event: an attribute
    /// alone could be any (the specification then assumes a Boolean).
    fn kind(&self) -> Option<Type> {
        Some(match self {
            Node::Literal(value) => value.kind(),
            Node::Attribute(_) | Node::Data(_) => return None,
            Node::Negate(_) | Node::Arithmetic(..) => Type::Integer,
            Node::Call(function, _) => function.returns(),
            Node::Unknown { .. }
            | Node::BadData { .. }
            | Node::Exists(_)
            | Node::Not(_)
            | Node::Equality { .. }
            | Node::Compare(..)
            | Node::Logic(..)
            | Node::Like { .. }
            | Node::In { .. } => Type::Boolean,
        })
    }
}

fn implied(node: &Node, out: &mut Vec<Filter>) {
    match node {
        Node::Logic(Logic::And, left, right) => {
            implied(left, out);
            implied(right, out);
        }
        other => {
            if let Some(filter @ (Filter::Exact(..) | Filter::Prefix(..) | Filter::Suffix(..))) =
                dialect(other)
            {
                out.push(filter);
            }
        }
    }
}

fn dialect(node: &Node) -> Option<Filter> {
    match node {
        Node::Equality {
            equal: true,
            left,
            right,
        } => match (&**left, &**right) {
            (Node::Attribute(name), Node::Literal(Value::String(value)))
            | (Node::Literal(Value::String(value)), Node::Attribute(name)) => {
                Some(Filter::Exact(name.clone(), value.clone()))
            }
            _ => None,
        },
        Node::Like {
            value,
            pattern,
            negated: false,
        } => {
            let Node::Attribute(name) = &**value else {
                return None;
            };
            match pattern.affix()? {
                eval::Affix::Exact(value) => Some(Filter::Exact(name.clone(), value)),
                eval::Affix::Prefix(value) => Some(Filter::Prefix(name.clone(), value)),
                eval::Affix::Suffix(value) => Some(Filter::Suffix(name.clone(), value)),
            }
        }
        Node::Logic(Logic::And, left, right) => {
            Some(Filter::All(vec![dialect(left)?, dialect(right)?]))
        }
        Node::Logic(Logic::Or, left, right) => {
            Some(Filter::Any(vec![dialect(left)?, dialect(right)?]))
        }
        Node::Not(inner) => Some(Filter::Not(Box::new(dialect(inner)?))),
        _ => None,
    }
}
