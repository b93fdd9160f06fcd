//! Function settings from the API's three spellings: query parameters on a
//! deploy, a multipart `config` JSON part, and a `PATCH` JSON body.

use sluice_store::{FunctionSettings, Visibility};

use crate::error::ApiError;

fn bad(message: String) -> ApiError {
    ApiError::bad_request("invalid_setting", message)
}

fn number<T: std::str::FromStr>(key: &str, value: &str) -> Result<T, ApiError> {
    value.parse().map_err(|_| {
        bad(format!(
            "invalid setting `{key}`: {value:?} is not a non-negative integer"
        ))
    })
}

/// Applies query parameters (`visibility`, `timeout_ms`, `memory_mb`,
/// `max_concurrency`, `max_request_bytes`, `max_response_bytes`, repeated
/// `env=KEY=VALUE`, repeated `allow_outbound=HOST`) onto `settings`.
/// Unknown parameters are refused, so a typo is not silently ignored.
pub fn apply_query(settings: &mut FunctionSettings, query: Option<&str>) -> Result<(), ApiError> {
    let Some(query) = query else { return Ok(()) };
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        match key.as_ref() {
            "visibility" => {
                settings.visibility = match value.as_ref() {
                    "private" => Visibility::Private,
                    "public" => Visibility::Public,
                    other => {
                        return Err(bad(format!(
                            "invalid setting `visibility`: {other:?} is not `private` or `public`"
                        )));
                    }
                }
            }
            "timeout_ms" => settings.timeout_ms = Some(number(&key, &value)?),
            "memory_mb" => settings.memory_mb = Some(number(&key, &value)?),
            "max_concurrency" => settings.max_concurrency = Some(number(&key, &value)?),
            "max_request_bytes" => settings.max_request_bytes = Some(number(&key, &value)?),
            "max_response_bytes" => settings.max_response_bytes = Some(number(&key, &value)?),
            "env" => {
                let (name, value) = value.split_once('=').ok_or_else(|| {
                    bad(format!("invalid setting `env`: {value:?} is not KEY=VALUE"))
                })?;
                settings.env.insert(name.to_string(), value.to_string());
            }
            "allow_outbound" => settings.allow_outbound.push(value.into_owned()),
            "kv_bucket" => settings.kv_buckets.push(value.into_owned()),
            "secret" => {
                // The message does not repeat the value: it may be the secret.
                let (name, value) = value.split_once('=').ok_or_else(|| {
                    bad("invalid setting `secret`: the value is not KEY=VALUE (not shown)".into())
                })?;
                settings.secrets.insert(name.to_string(), value.to_string());
            }
            other => {
                return Err(bad(format!(
                    "unknown setting `{other}`; known: visibility, timeout_ms, memory_mb, max_concurrency, max_request_bytes, max_response_bytes, env, secret, allow_outbound, kv_bucket"
                )));
            }
        }
    }
    Ok(())
}

/// Parses a full settings object (the multipart `config` part).
pub fn from_json(bytes: &[u8]) -> Result<FunctionSettings, ApiError> {
    serde_json::from_slice(bytes).map_err(|error| bad(format!("invalid config JSON: {error}")))
}

/// Merges a `PATCH` body onto `current`: each key present replaces that
/// setting; `null` resets it to the server default.
pub fn merge_patch(current: &FunctionSettings, patch: &[u8]) -> Result<FunctionSettings, ApiError> {
    let patch: serde_json::Value = serde_json::from_slice(patch)
        .map_err(|error| bad(format!("invalid JSON body: {error}")))?;
    let serde_json::Value::Object(patch) = patch else {
        return Err(bad(
            "the PATCH body must be a JSON object of settings".into()
        ));
    };
    let serde_json::Value::Object(mut merged) =
        serde_json::to_value(current).expect("settings serialize")
    else {
        unreachable!("settings serialize to an object")
    };
    for (key, value) in patch {
        if value.is_null() {
            merged.remove(&key);
        } else {
            merged.insert(key, value);
        }
    }
    let mut merged: FunctionSettings = serde_json::from_value(serde_json::Value::Object(merged))
        .map_err(|error| bad(format!("invalid settings: {error}")))?;
    // A settings view sent back as a patch carries redacted secrets: keep
    // the stored values instead of storing the placeholder.
    for (name, value) in merged.secrets.iter_mut() {
        if value == crate::routes::functions::REDACTED
            && let Some(stored) = current.secrets.get(name)
        {
            value.clone_from(stored);
        }
    }
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_become_settings() {
        let mut settings = FunctionSettings::default();
        apply_query(
            &mut settings,
            Some("visibility=public&timeout_ms=100&env=A=1&env=B=x%3Dy&allow_outbound=api.example.com&memory_mb=8"),
        )
        .unwrap();
        assert_eq!(settings.visibility, Visibility::Public);
        assert_eq!(settings.timeout_ms, Some(100));
        assert_eq!(settings.memory_mb, Some(8));
        assert_eq!(settings.env["A"], "1");
        assert_eq!(settings.env["B"], "x=y");
        assert_eq!(settings.allow_outbound, vec!["api.example.com"]);
    }

    #[test]
    fn unknown_or_malformed_query_parameters_are_400() {
        for query in [
            "timeout=5",
            "timeout_ms=-1",
            "env=NOEQUALS",
            "visibility=everyone",
        ] {
            let error = apply_query(&mut FunctionSettings::default(), Some(query)).unwrap_err();
            assert_eq!(error.status, http::StatusCode::BAD_REQUEST, "{query}");
        }
    }

    #[test]
    fn patch_replaces_present_keys_and_null_resets() {
        let current = FunctionSettings {
            timeout_ms: Some(5),
            memory_mb: Some(9),
            ..FunctionSettings::default()
        };
        let merged = merge_patch(
            &current,
            br#"{"timeout_ms": 7, "memory_mb": null, "env": {"K": "V"}}"#,
        )
        .unwrap();
        assert_eq!(merged.timeout_ms, Some(7));
        assert_eq!(merged.memory_mb, None);
        assert_eq!(merged.env["K"], "V");
        assert!(merge_patch(&current, br#"{"timeout": 7}"#).is_err());
        let with_secret = FunctionSettings {
            secrets: [("TOKEN".to_string(), "s3cr3t".to_string())].into(),
            ..FunctionSettings::default()
        };
        let merged = merge_patch(
            &with_secret,
            br#"{"secrets": {"TOKEN": "<redacted>", "NEW": "n"}}"#,
        )
        .unwrap();
        assert_eq!(
            merged.secrets["TOKEN"], "s3cr3t",
            "a redacted view sent back keeps the secret"
        );
        assert_eq!(merged.secrets["NEW"], "n");
        assert!(merge_patch(&current, b"[1]").is_err());
    }
}
