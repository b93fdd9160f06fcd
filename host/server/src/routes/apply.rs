//! `POST /v1/apply`: Knative's own resource shapes, applied declaratively
//! (`kubectl apply` style): `eventing.knative.dev/v1` `Trigger` and
//! `Broker`, `sources.knative.dev/v1` `PingSource` (a schedule), and Sluice's `sluice.dev/v1` `Function` (by the digest of a
//! component the server holds; `sluice apply -f` uploads files first).
//! Every resource is checked before any is written; each answers
//! `created`, `changed` or `unchanged` (applying twice changes nothing).

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use sluice_router::broker::Broker;
use sluice_router::schedule::Schedule;
use sluice_router::trigger::Trigger;
use sluice_store::FunctionSettings;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::error::ApiError;
use crate::routes::triggers::json_body;
use crate::state::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(apply))
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ApplyQuery {
    /// Check every resource, write none (`results` say `checked`).
    #[serde(default)]
    dry_run: bool,
}

const REDACTED: &str = crate::routes::functions::REDACTED;

/// The kind and name of `resource`.
fn identify(resource: &Desired) -> (&'static str, &str) {
    match resource {
        Desired::Trigger(t) => ("Trigger", &t.name),
        Desired::Broker(b) => ("Broker", &b.name),
        Desired::Schedule(s) => ("PingSource", &s.name),
        Desired::Function { name, .. } => ("Function", name),
    }
}

/// Most resources one apply takes.
const MAX_RESOURCES: usize = 1000;

/// A resource, checked.
enum Desired {
    Trigger(Trigger),
    Broker(Broker),
    Schedule(Box<Schedule>),
    Function {
        name: String,
        digest: String,
        settings: FunctionSettings,
    },
}

fn invalid(at: &str, reason: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request("invalid_resource", format!("{at}: {reason}"))
}

/// The resources of a body: one, an array, or a `List`.
fn items(body: Value) -> Result<Vec<Value>, ApiError> {
    let items = match body {
        Value::Array(items) => items,
        Value::Object(ref map) if map.get("kind").and_then(Value::as_str) == Some("List") => {
            match map.get("items") {
                Some(Value::Array(items)) => items.clone(),
                _ => return Err(invalid("$", "a List needs `items`, an array")),
            }
        }
        object @ Value::Object(_) => vec![object],
        _ => return Err(invalid("$", "send a resource, an array of them, or a List")),
    };
    if items.len() > MAX_RESOURCES {
        return Err(invalid("$", format!("more than {MAX_RESOURCES} resources")));
    }
    Ok(items)
}

/// Checks one resource (`at` names it in errors).
fn check(value: &Value, at: &str) -> Result<Desired, ApiError> {
    let Value::Object(map) = value else {
        return Err(invalid(at, "a resource is a JSON object"));
    };
    let text = |key: &str| map.get(key).and_then(Value::as_str).unwrap_or_default();
    let (api, kind) = (text("apiVersion"), text("kind"));
    let metadata = map.get("metadata").and_then(Value::as_object);
    let name = metadata
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(at, "metadata.name is required"))?
        .to_string();
    if let Some(namespace) = metadata
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
        .filter(|n| *n != "default")
    {
        return Err(invalid(
            at,
            format!("metadata.namespace {namespace:?}: Sluice has one namespace, `default`"),
        ));
    }
    let at = format!("{at} ({kind} {name})");
    let spec = match map.get("spec") {
        None | Some(Value::Null) => serde_json::Map::new(),
        Some(Value::Object(spec)) => spec.clone(),
        Some(_) => return Err(invalid(&at, "spec must be an object")),
    };
    let spec_fields = |known: &[&str]| -> Result<(), ApiError> {
        match spec.keys().find(|k| !known.contains(&k.as_str())) {
            Some(unknown) => Err(invalid(
                &at,
                format!("unknown field spec.{unknown}; known: {}", known.join(", ")),
            )),
            None => Ok(()),
        }
    };
    match (api, kind) {
        ("eventing.knative.dev/v1", "Trigger") => {
            spec_fields(&["broker", "filter", "filters", "subscriber", "delivery"])?;
            let mut definition = Value::Object(spec.clone());
            definition["name"] = json!(name);
            let trigger = Trigger::parse(&definition, None)
                .map_err(|e| invalid(&at, format!("spec.{}: {}", e.path, e.reason)))?;
            Ok(Desired::Trigger(trigger))
        }
        ("eventing.knative.dev/v1", "Broker") => {
            // `config` names a Kubernetes ConfigMap of the broker class:
            // Sluice has none to read, so it is accepted and has no effect.
            // `dedupe` is a Sluice extension (as in `PUT /v1/brokers/{name}`).
            spec_fields(&["delivery", "config", "dedupe"])?;
            let mut definition = json!({"name": name});
            for field in ["delivery", "dedupe"] {
                if let Some(value) = spec.get(field) {
                    definition[field] = value.clone();
                }
            }
            let broker = Broker::parse(&definition, None)
                .map_err(|e| invalid(&at, format!("spec.{}: {}", e.path, e.reason)))?;
            Ok(Desired::Broker(broker))
        }
        ("sources.knative.dev/v1", "PingSource") => {
            if spec.contains_key("ceOverrides") {
                return Err(invalid(
                    &at,
                    "spec.ceOverrides is not supported: a schedule's events carry the attributes Sluice gives them",
                ));
            }
            spec_fields(&sluice_router::schedule::SPEC_FIELDS)?;
            let mut definition = Value::Object(spec.clone());
            definition["name"] = json!(name);
            let schedule = Schedule::parse_new(&definition, None)
                .map_err(|e| invalid(&at, format!("spec.{}: {}", e.path, e.reason)))?;
            Ok(Desired::Schedule(Box::new(schedule)))
        }
        ("sluice.dev/v1", "Function") => {
            spec_fields(&["digest", "component", "settings"])?;
            if spec.contains_key("component") {
                return Err(invalid(
                    &at,
                    "spec.component is a file on your machine: `sluice apply -f` uploads it; this route takes spec.digest of a component the server holds",
                ));
            }
            sluice_runtime::functions::validate_name(&name).map_err(|e| invalid(&at, e))?;
            let digest = spec
                .get("digest")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid(&at, "spec.digest is required"))?
                .to_string();
            let settings = match spec.get("settings") {
                None | Some(Value::Null) => FunctionSettings::default(),
                Some(settings) => serde_json::from_value(settings.clone())
                    .map_err(|e| invalid(&at, format!("spec.settings: {e}")))?,
            };
            Ok(Desired::Function {
                name,
                digest,
                settings,
            })
        }
        (api, kind) => Err(invalid(
            &at,
            format!(
                "apiVersion {api:?} kind {kind:?} is not one Sluice applies: eventing.knative.dev/v1 Trigger or Broker, sources.knative.dev/v1 PingSource, sluice.dev/v1 Function"
            ),
        )),
    }
}

/// Applies Knative `Trigger`, `Broker` and `PingSource` resources and Sluice `Function`
/// resources, declaratively: each ends as the resource says (a `Function`
/// takes exactly its `spec.settings`; secrets shown as `<redacted>` keep
/// their values). All are checked before any is written.
#[utoipa::path(post, path = "/v1/apply", tag = "triggers",
    params(ApplyQuery),
    request_body(content = Vec<crate::openapi::Resource>, description = "A resource, an array of them, or a `List`"),
    responses(
        (status = 200, description = "What each resource did", body = crate::openapi::Applied),
        (status = 400, description = "A resource is invalid (nothing was written)", body = crate::openapi::Error),
        crate::openapi::AuthErrors,
        (status = 409, description = "Past a limit, or a function changed meanwhile", body = crate::openapi::Error)))]
async fn apply(
    State(state): State<AppState>,
    crate::error::Query(query): crate::error::Query<ApplyQuery>,
    request: Request,
) -> Result<Response, ApiError> {
    let items = items(json_body(request).await?)?;
    let mut desired = Vec::with_capacity(items.len());
    let mut seen = std::collections::BTreeSet::new();
    for (i, item) in items.iter().enumerate() {
        let resource = check(item, &format!("resource {i}"))?;
        let (kind, name) = identify(&resource);
        if !seen.insert((kind, name.to_string())) {
            return Err(invalid(
                &format!("resource {i} ({kind} {name})"),
                "appears twice in one apply",
            ));
        }
        desired.push(resource);
    }
    let store = state.functions.store();
    let limits = state.functions.runtime().limits();
    let mut new_triggers = 0;
    for resource in &mut desired {
        match resource {
            Desired::Function {
                name,
                digest,
                settings,
            } => {
                let at = format!("Function {name}");
                if store.blob(digest)?.is_none() {
                    return Err(invalid(
                        &at,
                        format!(
                            "the server holds no component {digest}; deploy it first (`sluice apply -f` uploads spec.component)"
                        ),
                    ));
                }
                limits.validate(settings).map_err(|e| invalid(&at, e))?;
                // A redacted secret sent back keeps its stored value; one
                // with no stored value is refused, not stored as the mark.
                let current = store.function(name)?;
                for (key, value) in settings.secrets.iter_mut() {
                    if value == REDACTED {
                        match current.as_ref().and_then(|c| c.settings.secrets.get(key)) {
                            Some(stored) => value.clone_from(stored),
                            None => {
                                return Err(invalid(
                                    &at,
                                    format!(
                                        "spec.settings.secrets.{key} is {REDACTED:?} (an export hides secrets): give its value"
                                    ),
                                ));
                            }
                        }
                    }
                }
            }
            Desired::Trigger(trigger) => {
                if state.router.trigger(&trigger.name).is_none() {
                    new_triggers += 1;
                }
            }
            Desired::Broker(_) | Desired::Schedule(_) => {}
        }
    }
    let new_schedules = (desired.iter())
        .filter(|r| matches!(r, Desired::Schedule(s) if state.router.schedule(&s.name).is_none()))
        .count();
    let max_schedules = state.limits.max_schedules;
    if new_schedules > 0 && state.router.schedules().len() + new_schedules > max_schedules {
        return Err(ApiError::new(
            http::StatusCode::CONFLICT,
            "too_many_schedules",
            format!(
                "the apply would pass the server's limit of {max_schedules} schedules; nothing was written"
            ),
        ));
    }
    let max = state.limits.max_triggers;
    if new_triggers > 0 && state.router.store().trigger_count() + new_triggers > max {
        return Err(ApiError::new(
            http::StatusCode::CONFLICT,
            "too_many_triggers",
            format!(
                "the apply would pass the server's limit of {max} triggers; nothing was written"
            ),
        ));
    }
    if query.dry_run {
        let results: Vec<Value> = desired
            .iter()
            .map(|resource| {
                let (kind, name) = identify(resource);
                json!({"kind": kind, "name": name, "action": "checked"})
            })
            .collect();
        return Ok(axum::Json(json!({"results": results})).into_response());
    }
    let mut results: Vec<Value> = Vec::new();
    let written = |results: &Vec<Value>| -> String {
        let done: Vec<String> = results
            .iter()
            .filter(|r| r["action"] != "unchanged")
            .map(|r| {
                format!(
                    "{} {}",
                    r["kind"].as_str().unwrap_or_default(),
                    r["name"].as_str().unwrap_or_default()
                )
            })
            .collect();
        if done.is_empty() {
            "nothing was written".into()
        } else {
            format!("already written: {}", done.join(", "))
        }
    };
    for resource in desired {
        let (kind, name, action) = match resource {
            Desired::Trigger(trigger) => {
                let name = trigger.name.clone();
                let action = match state.router.trigger(&name) {
                    Some(current) if current.to_json() == trigger.to_json() => "unchanged",
                    Some(_) => "changed",
                    None => "created",
                };
                if action != "unchanged"
                    && let Err(error) = state.router.put_trigger(trigger).await
                {
                    return Err(ApiError::from(error).context(&written(&results)));
                }
                ("Trigger", name, action)
            }
            Desired::Broker(broker) => {
                let name = broker.name.clone();
                let action = match state.router.broker(&name) {
                    Some(current) if *current == broker => "unchanged",
                    Some(_) => "changed",
                    None => "created",
                };
                if action != "unchanged"
                    && let Err(error) = state.router.put_broker(broker).await
                {
                    return Err(ApiError::from(error).context(&written(&results)));
                }
                ("Broker", name, action)
            }
            Desired::Schedule(schedule) => {
                let name = schedule.name.clone();
                let action = match state.router.schedule(&name) {
                    Some((current, _)) if *current == *schedule => "unchanged",
                    Some(_) => "changed",
                    None => "created",
                };
                if action != "unchanged"
                    && let Err(error) = state.router.put_schedule(*schedule).await
                {
                    return Err(ApiError::from(error).context(&written(&results)));
                }
                ("PingSource", name, action)
            }
            Desired::Function {
                name,
                digest,
                settings,
            } => {
                let current = store.function(&name)?;
                let action = match &current {
                    Some(c) if c.digest == digest && c.settings == settings => "unchanged",
                    Some(_) => "changed",
                    None => "created",
                };
                if action != "unchanged" {
                    let Some(bytes) = store.blob(&digest)? else {
                        return Err(invalid(
                            &format!("Function {name}"),
                            format!(
                                "component {digest} went away meanwhile ({})",
                                written(&results)
                            ),
                        ));
                    };
                    let expected = current.map_or(0, |c| c.version);
                    if let Err(error) = state
                        .functions
                        .deploy(&name, bytes, settings, Some(expected))
                        .await
                    {
                        return Err(ApiError::from(error).context(&written(&results)));
                    }
                }
                ("Function", name, action)
            }
        };
        tracing::info!(kind, %name, action, "applied");
        results.push(json!({"kind": kind, "name": name, "action": action}));
    }
    Ok(axum::Json(json!({"results": results})).into_response())
}
