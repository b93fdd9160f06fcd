//! Function settings from the API's three spellings: query parameters on a
//! deploy, a multipart `config` JSON part, and a `PATCH` JSON body.

use std::collections::BTreeSet;

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
/// Returns the settings it named, by their JSON names (`secret` is
/// `secrets`, `kv_bucket` is `kv_buckets`).
pub fn apply_query(
    settings: &mut FunctionSettings,
    query: Option<&str>,
) -> Result<BTreeSet<&'static str>, ApiError> {
    let mut named = BTreeSet::new();
    let Some(query) = query else {
        return Ok(named);
    };
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        let setting = match key.as_ref() {
            "secret" => "secrets",
            "kv_bucket" => "kv_buckets",
            other => KNOWN
                .iter()
                .copied()
                .find(|known| *known == other)
                .unwrap_or(""),
        };
        if !setting.is_empty() {
            named.insert(setting);
        }
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
    Ok(named)
}

/// Every setting, by its JSON name.
pub const KNOWN: [&str; 10] = [
    "visibility",
    "timeout_ms",
    "memory_mb",
    "max_concurrency",
    "max_request_bytes",
    "max_response_bytes",
    "env",
    "secrets",
    "allow_outbound",
    "kv_buckets",
];

/// The settings a deploy request sets: its multipart `config` part and its
/// query parameters. Whatever it does not set is kept from the function's
/// current version, so a plain re-upload of new code changes only the code.
#[derive(Debug, Default)]
pub struct Requested {
    /// The `config` part: a JSON object of settings (`null` resets one).
    pub config: Option<bytes::Bytes>,
    /// The query string.
    pub query: Option<String>,
}

impl Requested {
    /// The settings of the new version over `current` (`None` for a new
    /// function), and the settings kept from `current` that differ from the
    /// server defaults, by JSON name.
    pub fn over(
        &self,
        current: Option<&FunctionSettings>,
    ) -> Result<(FunctionSettings, Vec<&'static str>), ApiError> {
        let base = current.cloned().unwrap_or_default();
        let mut named = BTreeSet::new();
        let mut settings = match &self.config {
            Some(config) => {
                let (merged, keys) = merge(&base, config, "invalid config JSON")?;
                named.extend(keys);
                merged
            }
            None => base.clone(),
        };
        let mut given = FunctionSettings::default();
        let from_query = apply_query(&mut given, self.query.as_deref())?;
        if !from_query.is_empty() {
            let given = to_map(&given);
            let mut merged = to_map(&settings);
            for key in &from_query {
                match given.get(*key) {
                    Some(value) => merged.insert((*key).to_string(), value.clone()),
                    None => merged.remove(*key),
                };
            }
            settings = from_map(merged)?;
            named.extend(from_query);
        }
        let kept = match current {
            None => Vec::new(),
            Some(current) => {
                let (current, defaults) = (to_map(current), to_map(&FunctionSettings::default()));
                KNOWN
                    .into_iter()
                    .filter(|key| !named.contains(key) && current.get(*key) != defaults.get(*key))
                    .collect()
            }
        };
        Ok((settings, kept))
    }
}

type Map = serde_json::Map<String, serde_json::Value>;

fn to_map(settings: &FunctionSettings) -> Map {
    match serde_json::to_value(settings) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => unreachable!("settings serialize to an object"),
    }
}

fn from_map(map: Map) -> Result<FunctionSettings, ApiError> {
    serde_json::from_value(serde_json::Value::Object(map))
        .map_err(|error| bad(format!("invalid settings: {error}")))
}

/// Merges a `PATCH` body onto `current`: each key present replaces that
/// setting; `null` resets it to the server default.
pub fn merge_patch(current: &FunctionSettings, patch: &[u8]) -> Result<FunctionSettings, ApiError> {
    merge(current, patch, "invalid JSON body").map(|(merged, _)| merged)
}

/// [`merge_patch`], also returning the keys the patch named.
fn merge(
    current: &FunctionSettings,
    patch: &[u8],
    what: &str,
) -> Result<(FunctionSettings, Vec<&'static str>), ApiError> {
    let patch: serde_json::Value =
        serde_json::from_slice(patch).map_err(|error| bad(format!("{what}: {error}")))?;
    let serde_json::Value::Object(patch) = patch else {
        return Err(bad(format!(
            "{what}: settings must be a JSON object of settings"
        )));
    };
    let mut merged = to_map(current);
    let mut named = Vec::new();
    for (key, value) in patch {
        match KNOWN.iter().find(|known| **known == key) {
            Some(known) => named.push(*known),
            None => {
                return Err(bad(format!(
                    "unknown setting `{key}`; known: {}",
                    KNOWN.join(", ")
                )));
            }
        }
        if value.is_null() {
            merged.remove(&key);
        } else {
            merged.insert(key, value);
        }
    }
    let mut merged = from_map(merged)?;
    // A settings view sent back as a patch carries redacted secrets: keep
    // the stored values instead of storing the placeholder.
    for (name, value) in merged.secrets.iter_mut() {
        if value == crate::routes::functions::REDACTED
            && let Some(stored) = current.secrets.get(name)
        {
            value.clone_from(stored);
        }
    }
    Ok((merged, named))
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
    fn a_request_over_current_settings_keeps_what_it_does_not_name() {
        let current = FunctionSettings {
            visibility: Visibility::Public,
            timeout_ms: Some(5),
            env: [("A".to_string(), "1".to_string())].into(),
            kv_buckets: vec!["shared".into()],
            ..FunctionSettings::default()
        };
        let requested = |config: Option<&'static str>, query: Option<&str>| Requested {
            config: config.map(|c| bytes::Bytes::from_static(c.as_bytes())),
            query: query.map(str::to_string),
        };
        let (same, kept) = requested(None, None).over(Some(&current)).unwrap();
        assert_eq!(same, current);
        assert_eq!(kept, ["visibility", "timeout_ms", "env", "kv_buckets"]);

        let (changed, kept) = requested(Some(r#"{"timeout_ms": null}"#), Some("env=B=2"))
            .over(Some(&current))
            .unwrap();
        assert_eq!(changed.timeout_ms, None);
        assert_eq!(changed.env, [("B".to_string(), "2".to_string())].into());
        assert_eq!(changed.visibility, Visibility::Public);
        assert_eq!(kept, ["visibility", "kv_buckets"]);

        let (fresh, kept) = requested(Some(r#"{"memory_mb": 8}"#), Some("visibility=public"))
            .over(None)
            .unwrap();
        assert_eq!(fresh.memory_mb, Some(8));
        assert_eq!(fresh.visibility, Visibility::Public);
        assert!(kept.is_empty(), "a new function keeps nothing");

        for bad in [r#"{"timeout": 5}"#, "[1]", r#"{"timeout_ms": "x"}"#] {
            assert!(
                requested(Some(bad), None).over(Some(&current)).is_err(),
                "{bad}"
            );
        }
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
