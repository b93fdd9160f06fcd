//! The CESQL TCK's Subscriptions API recreations, run against the filter
//! dialects: each CESQL expression in the file (`=`, `LIKE 'x%'`,
//! `LIKE '%x'`, `AND`, `OR`, `NOT`, parentheses) is parsed by the CESQL
//! parser, turned into the equivalent dialect filter, evaluated on the
//! test's event, and compared with the expected result (and with the CESQL
//! evaluation of the same expression). Reads `../shared/vectors/` beside
//! the repository; skips, saying so, where it is absent, except under
//! `CI`, where that fails.

use crate::cesql::tests::TckFile;
use crate::filter::Filter;

/// The dialect filter equivalent to a CESQL expression, if there is one.
fn translate(expression: &str) -> Option<Filter> {
    crate::cesql::parse(expression).ok()?.as_dialect()
}

#[test]
fn subscriptions_api_recreations_pass() {
    let Some(text) = crate::cesql::tests::tck_text("subscriptions_api_recreations") else {
        return;
    };
    let file: TckFile = serde_norway::from_str(&text).unwrap();
    let mut run = 0;
    for case in &file.tests {
        let filter = translate(&case.expression).unwrap_or_else(|| {
            panic!(
                "{}: {:?} was expected to be expressible",
                case.name, case.expression
            )
        });
        let expected = case
            .result
            .as_ref()
            .and_then(serde_norway::Value::as_bool)
            .expect("boolean result");
        let event = crate::cesql::tests::event_of(case);
        let got = filter.matches(&event);
        assert_eq!(
            got, expected,
            "{}: {} as {:?}",
            case.name, case.expression, filter
        );
        let cesql = crate::cesql::parse(&case.expression).unwrap();
        assert_eq!(cesql.matches(&event), expected, "{}: as CESQL", case.name);
        run += 1;
    }
    assert_eq!(run, file.tests.len());
    assert!(run >= 20, "the file holds {run} cases");
}

#[test]
fn translation_of_the_subset() {
    assert_eq!(
        translate("id LIKE 'my%' AND NOT (source = 'x' OR type like '%.y')"),
        Some(Filter::All(vec![
            Filter::Prefix("id".into(), "my".into()),
            Filter::Not(Box::new(Filter::Any(vec![
                Filter::Exact("source".into(), "x".into()),
                Filter::Suffix("type".into(), ".y".into()),
            ]))),
        ]))
    );
    assert_eq!(translate("a LIKE '%b%'"), None);
    assert_eq!(translate("a + 1"), None);
}
