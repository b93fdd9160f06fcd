//! The CESQL v1 grammar, as a Pratt parser over winnow combinators.
//!
//! Binding, loosest first, as in the specification: `AND`, `OR` and `XOR`
//! (one level, left to right); `=`, `!=`, `<>`, `<`, `<=`, `>`, `>=` (one
//! level, left to right); `+`, `-`; `*`, `/`, `%`; `[NOT] IN (...)`; `[NOT] LIKE '...'`;
//! unary `-`; `NOT`. So `NOT a = b` is `(NOT a) = b`: write `NOT (a = b)`
//! or `a != b`. Keywords, function names and attribute names are
//! case-insensitive (attribute names are lowercase in CloudEvents).

use winnow::ascii::{Caseless, digit1, multispace0};
use winnow::combinator::{
    Infix, Postfix, Prefix, alt, cut_err, delimited, dispatch, eof, expression, fail, not, opt,
    peek, preceded, separated, terminated,
};
use winnow::error::{ContextError, ErrMode, StrContext, StrContextValue};
use winnow::prelude::*;
use winnow::token::{any, one_of, take_while};

use super::eval::{Function, Pattern};
use super::{Arithmetic, Compare, ErrorKind, Logic, Node, ParseError, Value};

/// The longest expression accepted, in bytes.
pub const MAX_EXPRESSION_BYTES: usize = 4096;

/// The deepest nesting accepted: parentheses, function calls and prefix
/// operators together (the parser's and the evaluator's stack).
pub const MAX_NESTING: usize = 32;

type Input<'i> = &'i str;
type PResult<T> = ModalResult<T, ContextError>;

const KEYWORDS: [&str; 9] = [
    "and", "or", "xor", "not", "like", "in", "exists", "true", "false",
];

pub(super) fn parse(text: &str) -> Result<Node, ParseError> {
    if text.len() > MAX_EXPRESSION_BYTES {
        return Err(ParseError {
            kind: ErrorKind::Parse,
            position: 1,
            message: format!(
                "the expression is {} bytes; the limit is {MAX_EXPRESSION_BYTES}",
                text.len()
            ),
        });
    }
    check_nesting(text)?;
    let mut input = text;
    let parsed = terminated(delimited(multispace0, expr, multispace0), eof).parse_next(&mut input);
    let at = |rest: &str| text[..text.len() - rest.len()].chars().count() + 1;
    match parsed {
        Ok(node) => {
            check_tree(&node, text)?;
            Ok(node)
        }
        Err(error) => {
            let context = match &error {
                ErrMode::Backtrack(e) | ErrMode::Cut(e) => e.to_string(),
                ErrMode::Incomplete(_) => String::new(),
            };
            let found = match input.chars().next() {
                Some(c) => format!("unexpected {c:?}"),
                None => "unexpected end of the expression".to_string(),
            };
            Err(ParseError {
                kind: ErrorKind::Parse,
                position: at(input),
                message: if context.is_empty() {
                    found
                } else {
                    format!("{found}: {context}")
                },
            })
        }
    }
}

/// Refuses nesting past [`MAX_NESTING`] before the parser recurses into
/// it: parentheses open at once, and prefix operators in a row.
fn check_nesting(text: &str) -> Result<(), ParseError> {
    let mut depth = 0usize;
    let mut prefixes = 0usize;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    let mut word = String::new();
    for (i, c) in text.chars().enumerate() {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        if c.is_ascii_alphanumeric() || c == '_' {
            word.push(c.to_ascii_lowercase());
            continue;
        }
        if word == "not" {
            prefixes += 1;
        } else if !word.is_empty() {
            prefixes = 0;
        }
        word.clear();
        match c {
            '\'' | '"' => quote = Some(c),
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            '-' => prefixes += 1,
            c if c.is_whitespace() => {}
            _ => prefixes = 0,
        }
        if depth + prefixes > MAX_NESTING {
            return Err(ParseError {
                kind: ErrorKind::Parse,
                position: i + 1,
                message: format!("nested deeper than {MAX_NESTING} levels"),
            });
        }
    }
    Ok(())
}

/// The deepest tree accepted: operator chains (`a OR b OR ...`, `1+1+...`)
/// parse without recursion but nest their nodes, and evaluating them
/// recurses once a level.
pub const MAX_DEPTH: usize = 256;

/// Refuses a tree deeper than [`MAX_DEPTH`], measured without recursion,
/// and calls of functions that do not exist with that many arguments (the
/// first in the text).
fn check_tree(root: &Node, text: &str) -> Result<(), ParseError> {
    let mut stack = vec![(root, 1usize)];
    while let Some((node, depth)) = stack.pop() {
        if depth > MAX_DEPTH {
            return Err(ParseError {
                kind: ErrorKind::Parse,
                position: 1,
                message: format!(
                    "the expression nests more than {MAX_DEPTH} operations (a long chain of one operator: use IN for many alternatives)"
                ),
            });
        }
        let children: Vec<&Node> = match node {
            Node::Not(a) | Node::Negate(a) => vec![a],
            Node::Arithmetic(_, a, b) | Node::Compare(_, a, b) | Node::Logic(_, a, b) => {
                vec![a, b]
            }
            Node::Equality { left, right, .. } => vec![left, right],
            Node::Like { value, .. } => vec![value],
            Node::In { value, set, .. } => std::iter::once(&**value).chain(set).collect(),
            Node::Call(_, args) => args.iter().collect(),
            Node::Unknown {
                name,
                arity,
                from_end,
            } => {
                return Err(ParseError {
                    kind: ErrorKind::MissingFunction,
                    position: text[..text.len() - from_end].chars().count() + 1,
                    message: format!(
                        "no function {name} taking {arity} argument{}",
                        if *arity == 1 { "" } else { "s" }
                    ),
                });
            }
            Node::BadData {
                kind,
                message,
                from_end,
            } => {
                return Err(ParseError {
                    kind: *kind,
                    position: text[..text.len() - from_end].chars().count() + 1,
                    message: message.clone(),
                });
            }
            Node::Literal(_) | Node::Attribute(_) | Node::Exists(_) | Node::Data(_) => Vec::new(),
        };
        // Leftmost first, so the first unknown function in the text is
        // the one named.
        stack.extend(children.into_iter().rev().map(|child| (child, depth + 1)));
    }
    Ok(())
}

fn ws<'i, O>(
    parser: impl Parser<Input<'i>, O, ErrMode<ContextError>>,
) -> impl Parser<Input<'i>, O, ErrMode<ContextError>> {
    preceded(multispace0, parser)
}

fn is_word(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// `word` in any case, not followed by more of a word.
fn keyword<'i>(word: &'static str) -> impl Parser<Input<'i>, (), ErrMode<ContextError>> {
    ws(terminated(Caseless(word), not(one_of(is_word))).void())
}

fn expected(what: &'static str) -> StrContext {
    StrContext::Expected(StrContextValue::Description(what))
}

fn expr(input: &mut Input<'_>) -> PResult<Node> {
    expression(ws(operand))
        .prefix(ws(alt((
            keyword("not").value(Prefix(19, |_: &mut Input<'_>, a| Ok(Node::Not(Box::new(a))))),
            '-'.value(Prefix(17, |_: &mut Input<'_>, a| Ok(negate(a)))),
        ))))
        .postfix(ws(alt((
            (opt(keyword("not")), keyword("like")).map(|(not, ())| {
                if not.is_some() {
                    Postfix(15, like_negated as PostfixFn)
                } else {
                    Postfix(15, like as PostfixFn)
                }
            }),
            (opt(keyword("not")), keyword("in")).map(|(not, ())| {
                if not.is_some() {
                    Postfix(13, in_negated as PostfixFn)
                } else {
                    Postfix(13, in_set as PostfixFn)
                }
            }),
        ))))
        .infix(ws(alt((
            keyword("and").value(Infix::Left(1, |_: &mut Input<'_>, a, b| Ok(logic(Logic::And, a, b)))),
            keyword("or").value(Infix::Left(1, |_: &mut Input<'_>, a, b| Ok(logic(Logic::Or, a, b)))),
            keyword("xor").value(Infix::Left(1, |_: &mut Input<'_>, a, b| Ok(logic(Logic::Xor, a, b)))),
            dispatch! {any;
                '<' => alt((
                    '='.value(Infix::Left(3, |_: &mut Input<'_>, a, b| Ok(compare(Compare::LessOrEqual, a, b)))),
                    '>'.value(Infix::Left(3, |_: &mut Input<'_>, a, b| Ok(equality(false, a, b)))),
                    winnow::combinator::empty.value(Infix::Left(3, |_: &mut Input<'_>, a, b| Ok(compare(Compare::Less, a, b)))),
                )),
                '>' => alt((
                    '='.value(Infix::Left(3, |_: &mut Input<'_>, a, b| Ok(compare(Compare::GreaterOrEqual, a, b)))),
                    winnow::combinator::empty.value(Infix::Left(3, |_: &mut Input<'_>, a, b| Ok(compare(Compare::Greater, a, b)))),
                )),
                '=' => winnow::combinator::empty.value(Infix::Left(3, |_: &mut Input<'_>, a, b| Ok(equality(true, a, b)))),
                '!' => '='.value(Infix::Left(3, |_: &mut Input<'_>, a, b| Ok(equality(false, a, b)))),
                '+' => winnow::combinator::empty.value(Infix::Left(7, |_: &mut Input<'_>, a, b| Ok(arithmetic(Arithmetic::Add, a, b)))),
                '-' => winnow::combinator::empty.value(Infix::Left(7, |_: &mut Input<'_>, a, b| Ok(arithmetic(Arithmetic::Subtract, a, b)))),
                '*' => winnow::combinator::empty.value(Infix::Left(9, |_: &mut Input<'_>, a, b| Ok(arithmetic(Arithmetic::Multiply, a, b)))),
                '/' => winnow::combinator::empty.value(Infix::Left(9, |_: &mut Input<'_>, a, b| Ok(arithmetic(Arithmetic::Divide, a, b)))),
                '%' => winnow::combinator::empty.value(Infix::Left(9, |_: &mut Input<'_>, a, b| Ok(arithmetic(Arithmetic::Remainder, a, b)))),
                _ => fail,
            },
        ))))
        .parse_next(input)
}

type PostfixFn = for<'a, 'i> fn(&'a mut Input<'i>, Node) -> PResult<Node>;

fn like(input: &mut Input<'_>, value: Node) -> PResult<Node> {
    like_with(input, value, false)
}

fn like_negated(input: &mut Input<'_>, value: Node) -> PResult<Node> {
    like_with(input, value, true)
}

fn like_with(input: &mut Input<'_>, value: Node, negated: bool) -> PResult<Node> {
    let pattern = cut_err(ws(string))
        .context(expected("a string literal pattern after LIKE"))
        .parse_next(input)?;
    Ok(Node::Like {
        value: Box::new(value),
        pattern: Pattern::new(&pattern),
        negated,
    })
}

fn in_set(input: &mut Input<'_>, value: Node) -> PResult<Node> {
    in_with(input, value, false)
}

fn in_negated(input: &mut Input<'_>, value: Node) -> PResult<Node> {
    in_with(input, value, true)
}

fn in_with(input: &mut Input<'_>, value: Node, negated: bool) -> PResult<Node> {
    let set = cut_err(delimited(ws('('), separated(1.., expr, ws(',')), ws(')')))
        .context(expected(
            "a parenthesised list of one or more values after IN",
        ))
        .parse_next(input)?;
    Ok(Node::In {
        value: Box::new(value),
        set,
        negated,
    })
}

fn negate(node: Node) -> Node {
    match node {
        Node::Literal(Value::Integer(n)) if n != i32::MIN => Node::Literal(Value::Integer(-n)),
        other => Node::Negate(Box::new(other)),
    }
}

fn logic(op: Logic, a: Node, b: Node) -> Node {
    Node::Logic(op, Box::new(a), Box::new(b))
}

fn compare(op: Compare, a: Node, b: Node) -> Node {
    Node::Compare(op, Box::new(a), Box::new(b))
}

fn equality(equal: bool, left: Node, right: Node) -> Node {
    Node::Equality {
        equal,
        left: Box::new(left),
        right: Box::new(right),
    }
}

fn arithmetic(op: Arithmetic, a: Node, b: Node) -> Node {
    Node::Arithmetic(op, Box::new(a), Box::new(b))
}

fn operand(input: &mut Input<'_>) -> PResult<Node> {
    alt((
        delimited(
            '(',
            ws(cut_err(expr)),
            cut_err(ws(')')).context(expected("a closing parenthesis")),
        ),
        string.map(|s| Node::Literal(Value::String(s))),
        integer,
        exists,
        call,
        word_operand,
    ))
    .parse_next(input)
}

/// An integer literal, with its sign where a `-` comes right before the
/// digits at the start of an operand (so `-2147483648` is one literal);
/// in `5 -3` the `-` is taken as subtraction before an operand is looked
/// for.
fn integer(input: &mut Input<'_>) -> PResult<Node> {
    let (minus, digits) = (opt('-'), terminated(digit1, not(one_of(is_word)))).parse_next(input)?;
    let magnitude = digits.parse::<i64>().unwrap_or(i64::MAX);
    let n = if minus.is_some() {
        -magnitude
    } else {
        magnitude
    };
    match i32::try_from(n) {
        Ok(n) => Ok(Node::Literal(Value::Integer(n))),
        Err(_) => cut_err(fail)
            .context(expected("an integer between -2147483648 and 2147483647"))
            .parse_next(input),
    }
}

/// `'...'` or `"..."`; a backslash before the quote (or another
/// backslash) escapes it, and before anything else stays (so `LIKE`
/// patterns keep their `\%` and `\_`).
fn string(input: &mut Input<'_>) -> PResult<String> {
    let quote = one_of(['\'', '"']).parse_next(input)?;
    let mut out = String::new();
    loop {
        let c = cut_err(any)
            .context(expected("the string's closing quote"))
            .parse_next(input)?;
        if c == quote {
            return Ok(out);
        }
        if c == '\\' {
            let next = peek(opt(any)).parse_next(input)?;
            if next == Some(quote) {
                any.parse_next(input)?;
                out.push(quote);
                continue;
            }
            out.push('\\');
            if next == Some('\\') {
                any.parse_next(input)?;
                out.push('\\');
            }
            continue;
        }
        out.push(c);
    }
}

fn exists(input: &mut Input<'_>) -> PResult<Node> {
    let name = preceded(
        keyword("exists"),
        cut_err(ws(identifier)).context(expected("an attribute name after EXISTS")),
    )
    .parse_next(input)?;
    Ok(Node::Exists(name))
}

fn call(input: &mut Input<'_>) -> PResult<Node> {
    let start = *input;
    let name = (
        one_of(|c: char| c.is_ascii_alphabetic()),
        take_while(0.., is_word),
    )
        .take()
        .verify(|name: &str| !KEYWORDS.contains(&name.to_ascii_lowercase().as_str()))
        .parse_next(input)?;
    let args: Vec<Node> = preceded(
        ws('('),
        cut_err(terminated(
            separated(0.., expr, ws(',')),
            ws(')').context(expected("a closing parenthesis")),
        )),
    )
    .parse_next(input)?;
    if name.eq_ignore_ascii_case("data") {
        let from_end = start.len();
        return Ok(match args.as_slice() {
            [Node::Literal(Value::String(path))] => match crate::data::DataPath::parse(path) {
                Ok(path) => Node::Data(path),
                Err(message) => Node::BadData {
                    kind: ErrorKind::Parse,
                    message,
                    from_end,
                },
            },
            [_] => Node::BadData {
                kind: ErrorKind::Parse,
                message: "DATA takes the path as a string literal: DATA('$.field')".to_owned(),
                from_end,
            },
            _ => Node::BadData {
                kind: ErrorKind::MissingFunction,
                message: format!(
                    "no function DATA taking {} arguments (it takes one, the path: DATA('$.field'))",
                    args.len()
                ),
                from_end,
            },
        });
    }
    Ok(match Function::find(name, args.len()) {
        Some(function) => Node::Call(function, args),
        // Refused once the whole expression has parsed, as a missing
        // function rather than a syntax error.
        None => Node::Unknown {
            name: name.to_ascii_uppercase(),
            arity: args.len(),
            from_end: start.len(),
        },
    })
}

fn identifier(input: &mut Input<'_>) -> PResult<String> {
    take_while(1.., |c: char| c.is_ascii_alphanumeric())
        .map(|s: &str| s.to_ascii_lowercase())
        .parse_next(input)
}

/// `TRUE`, `FALSE`, or an attribute name (not another keyword).
fn word_operand(input: &mut Input<'_>) -> PResult<Node> {
    let word = terminated(identifier, not(one_of(is_word))).parse_next(input)?;
    match word.as_str() {
        "true" => Ok(Node::Literal(Value::Boolean(true))),
        "false" => Ok(Node::Literal(Value::Boolean(false))),
        w if KEYWORDS.contains(&w) => fail.parse_next(input),
        _ => Ok(Node::Attribute(word)),
    }
}
