//! The CESQL TCK, every file its own test, read from `../shared/vectors/`
//! beside the repository (skipped, saying so, where that is absent, except
//! under `CI`, where it fails).

use std::path::PathBuf;

use serde::Deserialize;

use super::{ErrorKind, Value, parse};
use crate::event::CloudEvent;

/// A TCK file.
#[derive(Deserialize)]
pub(crate) struct TckFile {
    pub(crate) tests: Vec<TckCase>,
}

/// One case of a TCK file.
#[derive(Deserialize)]
pub(crate) struct TckCase {
    pub(crate) name: String,
    pub(crate) expression: String,
    #[serde(default)]
    pub(crate) result: Option<serde_norway::Value>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    event: Option<serde_norway::Mapping>,
    #[serde(default, rename = "eventOverrides")]
    pub(crate) event_overrides: Option<serde_norway::Mapping>,
}

fn json_of(value: &serde_norway::Value) -> serde_json::Value {
    serde_json::to_value(value).expect("YAML scalars are JSON")
}

/// The case's event: its own, or a plain one with its overrides.
pub(crate) fn event_of(case: &TckCase) -> CloudEvent {
    let mut object = match &case.event {
        Some(event) => json_of(&serde_norway::Value::Mapping(event.clone())),
        None => serde_json::json!({
            "specversion": "1.0",
            "id": "default-id",
            "source": "http://localhost/default",
            "type": "default.type",
        }),
    };
    for (key, value) in case.event_overrides.iter().flatten() {
        object[key.as_str().expect("attribute names are strings")] = json_of(value);
    }
    CloudEvent::from_json(object.to_string().as_bytes()).unwrap()
}

fn expected_value(value: &serde_norway::Value) -> Value {
    match value {
        serde_norway::Value::Bool(b) => Value::Boolean(*b),
        serde_norway::Value::Number(n) => {
            Value::Integer(i32::try_from(n.as_i64().expect("integer")).expect("32-bit"))
        }
        serde_norway::Value::String(s) => Value::String(s.clone()),
        other => panic!("unexpected result {other:?}"),
    }
}

fn expected_error(name: &str) -> ErrorKind {
    match name {
        "parse" => ErrorKind::Parse,
        "math" => ErrorKind::Math,
        "cast" => ErrorKind::Cast,
        "missingAttribute" => ErrorKind::MissingAttribute,
        "missingFunction" => ErrorKind::MissingFunction,
        "functionEvaluation" => ErrorKind::FunctionEvaluation,
        other => panic!("unknown error kind {other}"),
    }
}

/// Whether the case reads an extension the TCK gives a non-string type
/// (`myint: 10`): Sluice keeps attributes in their canonical string form,
/// so reading one alone gives that string.
fn reads_typed_extension(case: &TckCase, got: &Value) -> bool {
    let Value::String(_) = got else { return false };
    case.event_overrides
        .iter()
        .flatten()
        .any(|(key, value)| !value.is_string() && key.as_str() == Some(case.expression.trim()))
}

/// The text of TCK file `name`, or `None` (said on stderr) where the
/// vectors are absent; under `CI` their absence fails.
pub(crate) fn tck_text(name: &str) -> Option<String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/vectors/cesql_tck")
        .join(format!("{name}.yaml"));
    match std::fs::read_to_string(&path) {
        Ok(text) => Some(text),
        Err(error) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "the CESQL TCK needs {}: {error}",
                path.display()
            );
            eprintln!("skipping: {} is absent ({error})", path.display());
            None
        }
    }
}

fn run(file: &str) {
    let Some(text) = tck_text(file) else {
        return;
    };
    let file: TckFile = serde_norway::from_str(&text).unwrap();
    assert!(!file.tests.is_empty());
    for case in &file.tests {
        let error = case.error.as_deref().map(expected_error);
        let expression = match parse(&case.expression) {
            Ok(expression) => expression,
            Err(refused) => {
                assert_eq!(
                    Some(refused.kind),
                    error,
                    "{}: {:?} was refused: {refused}",
                    case.name,
                    case.expression
                );
                continue;
            }
        };
        assert!(
            !matches!(error, Some(ErrorKind::Parse | ErrorKind::MissingFunction)),
            "{}: {:?} parsed, but the TCK expects {error:?}",
            case.name,
            case.expression
        );
        let (got, got_error) = expression.evaluate(&event_of(case));
        assert_eq!(got_error, error, "{}: {:?}", case.name, case.expression);
        let expected = expected_value(case.result.as_ref().expect("a result"));
        if got != expected && reads_typed_extension(case, &got) {
            let canonical = match &expected {
                Value::Boolean(b) => b.to_string(),
                Value::Integer(n) => n.to_string(),
                Value::String(s) => s.clone(),
            };
            assert_eq!(got, Value::String(canonical), "{}", case.name);
            continue;
        }
        assert_eq!(got, expected, "{}: {:?}", case.name, case.expression);
    }
}

macro_rules! tck {
    ($($file:ident),* $(,)?) => {
        $(
            #[test]
            fn $file() {
                run(stringify!($file));
            }
        )*
    };
}

tck!(
    binary_comparison_operators,
    binary_logical_operators,
    binary_math_operators,
    case_sensitivity,
    casting_functions,
    context_attributes_access,
    exists_expression,
    in_expression,
    integer_builtin_functions,
    like_expression,
    literals,
    negate_operator,
    not_operator,
    parse_errors,
    spec_examples,
    string_builtin_functions,
    sub_expression,
    subscriptions_api_recreations,
);

#[test]
fn errors_name_the_position() {
    let error = parse("type = 'a' AND (source = 'b'").unwrap_err();
    assert_eq!(error.kind, ErrorKind::Parse);
    assert_eq!(error.position, 29, "{error}");
    let error = parse("type = 'a' AND NOPE(1)").unwrap_err();
    assert_eq!(error.kind, ErrorKind::MissingFunction);
    assert_eq!(error.position, 16, "{error}");
    assert!(
        error.to_string().contains("NOPE taking 1 argument"),
        "{error}"
    );
    let error = parse("x LIKE 123").unwrap_err();
    assert_eq!(error.position, 8, "{error}");
    assert!(parse("2147483648").is_err());
    assert!(parse("-2147483648").is_ok());
}

#[test]
fn hostile_nesting_and_length_are_refused_before_parsing() {
    let deep = format!("{}TRUE{}", "(".repeat(10_000), ")".repeat(10_000));
    assert!(parse(&deep).unwrap_err().message.contains("bytes"));
    let deep = format!("{}TRUE{}", "(".repeat(100), ")".repeat(100));
    assert!(parse(&deep).unwrap_err().message.contains("nested"));
    let nots = format!("{}TRUE", "NOT ".repeat(100));
    assert!(parse(&nots).unwrap_err().message.contains("nested"));
    let minus = format!("{}1", "-".repeat(100));
    assert!(parse(&minus).unwrap_err().message.contains("nested"));
    // Long but flat is fine.
    let flat = vec!["type = 'a'"; 200].join(" OR ");
    assert!(parse(&flat).is_ok());
}

#[test]
fn implied_conditions_are_the_top_level_and_chain() {
    use crate::filter::Filter;
    let e =
        parse("type = 'a' AND source LIKE 'http://x/%' AND (subject = 'b' OR id = 'c')").unwrap();
    assert_eq!(
        e.implied(),
        vec![
            Filter::Exact("type".into(), "a".into()),
            Filter::Prefix("source".into(), "http://x/".into()),
        ]
    );
    assert_eq!(parse("type = 'a' OR type = 'b'").unwrap().implied(), vec![]);
    assert_eq!(parse("NOT (type = 'a')").unwrap().implied(), vec![]);
    assert_eq!(
        parse("type LIKE '%.done'").unwrap().implied(),
        vec![Filter::Suffix("type".into(), ".done".into())]
    );
    // A wildcard or escape in the middle is no affix.
    assert_eq!(parse("type LIKE 'a%b'").unwrap().implied(), vec![]);
    assert_eq!(
        parse("type LIKE 'a\\%'").unwrap().implied(),
        vec![Filter::Exact("type".into(), "a%".into())]
    );
}

#[test]
fn comparisons_share_one_level_read_left_to_right() {
    let event =
        CloudEvent::from_json(br#"{"specversion":"1.0","id":"1","source":"/s","type":"t"}"#)
            .unwrap();
    assert_eq!(
        parse("1 < 2 = TRUE").unwrap().evaluate(&event),
        (Value::Boolean(true), None)
    );
}

#[test]
fn hostile_expressions_are_bounded() {
    let event =
        CloudEvent::from_json(br#"{"specversion":"1.0","id":"1","source":"/s","type":"t"}"#)
            .unwrap();
    // Nested CONCAT_WS would grow by ten times a level.
    let mut e = "'xxxxxxxx'".to_string();
    for _ in 0..10 {
        e = format!("CONCAT_WS({e}, '', '', '', '', '', '', '', '', '', '')");
    }
    let grown = parse(&format!("LENGTH({e}) = 0")).unwrap();
    // The function gives "" with its error; the filter does not match.
    assert_eq!(
        grown.evaluate(&event),
        (Value::Boolean(true), Some(ErrorKind::FunctionEvaluation))
    );
    assert!(!grown.matches(&event));
    // A long chain of one operator parses flat but nests: bounded.
    let chain = vec!["1"; 1000].join("+");
    assert!(
        parse(&chain)
            .unwrap_err()
            .message
            .contains("nests more than")
    );
    // A LIKE that would backtrack past its step budget fails, not hangs.
    let long = CloudEvent::from_json(
        format!(
            r#"{{"specversion":"1.0","id":"1","source":"/s","type":"t","myext":"{}"}}"#,
            "a".repeat(4000)
        )
        .as_bytes(),
    )
    .unwrap();
    let pattern = format!("'%{}b'", "a".repeat(1500));
    let slow = parse(&format!("CONCAT(myext, myext) LIKE {pattern}")).unwrap();
    assert_eq!(
        slow.evaluate(&long),
        (Value::Boolean(false), Some(ErrorKind::FunctionEvaluation))
    );
}
