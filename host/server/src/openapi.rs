//! The OpenAPI 3 document of the HTTP API, served at `GET /v1/openapi.json`.
//!
//! Every route is mounted through [`utoipa_axum::router::OpenApiRouter`]
//! from its handler's `#[utoipa::path]`, so a route cannot exist without its
//! entry in the document (the test `every_route_is_documented` checks the
//! source for routes mounted any other way). The types below describe the
//! JSON bodies; they are documentation only, named as the API names them.

#![allow(dead_code)]

use std::collections::BTreeMap;

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// The document's fixed part: info, tags, security, and the schemas.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Sluice",
        description = "A WebAssembly function host with an event router. Management routes need `Authorization: Bearer <token>` (scopes: admin, deploy, invoke, publish, metrics); see the README.",
        license(name = "Apache-2.0")
    ),
    servers((url = "/", description = "The server that serves this document")),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags(
        (name = "functions", description = "Deploy, configure and inspect functions."),
        (name = "invoke", description = "Call functions."),
        (name = "events", description = "Post CloudEvents; triggers route them to functions."),
        (name = "triggers", description = "Knative-style triggers: filters and subscribers."),
        (name = "deadletters", description = "Events whose delivery failed for good."),
        (name = "tokens", description = "API tokens (admin only)."),
        (name = "operations", description = "Health, readiness, metrics, this document, the dashboard.")
    ),
    components(schemas(
        Error, ErrorDetail, Function, FunctionSettings, FunctionList, LogPage, LogLine, DeployForm,
        RecentInvocations, RecentInvocation, Trigger, TriggerList, TriggerStatus, TriggerStats,
        Accepted, Explanation, ExplainedEvent, ExplainedTrigger, DeadLetter, DeadLetterList, Replayed, TokenRequest, Token, TokenList,
        Invocation, InvocationAccepted, InvocationSummary, InvocationList, Status, Deleted,
        Revoked, ServerStatus, CloudEvent, Component, AnyBody, Broker, BrokerList, Schedule, ScheduleList, EventTraces, EventTrace, TracedTrigger, TracedAttempt, TracedDeadLetter, Resource,
        Applied, AppliedResource
    ))
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

static DOCUMENT: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Keeps the finished document for [`document`] (the first one built wins;
/// every server in a process mounts the same routes).
pub fn publish(openapi: utoipa::openapi::OpenApi) {
    DOCUMENT.get_or_init(|| openapi.to_pretty_json().expect("the document is JSON"));
}

/// The document as JSON.
pub fn document() -> String {
    DOCUMENT.get().cloned().unwrap_or_default()
}

/// Turns the finished document's axum path templates into OpenAPI ones
/// (`{*path}` becomes `{path}`).
pub fn finish(mut openapi: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    let paths = std::mem::take(&mut openapi.paths.paths);
    openapi.paths.paths = paths
        .into_iter()
        .map(|(path, item)| (path.replace("{*", "{"), item))
        .collect();
    openapi.info.version = env!("CARGO_PKG_VERSION").to_string();
    // A handler serving several methods names each operation after itself:
    // make the ids unique (`call_function_get`, ...), as OpenAPI requires.
    let mut seen = std::collections::HashMap::<String, usize>::new();
    for item in openapi.paths.paths.values_mut() {
        for (_, operation) in operations_mut(item) {
            if let Some(id) = &operation.operation_id {
                *seen.entry(id.clone()).or_default() += 1;
            }
        }
    }
    for item in openapi.paths.paths.values_mut() {
        for (method, operation) in operations_mut(item) {
            if let Some(id) = &mut operation.operation_id
                && seen.get(id.as_str()).copied().unwrap_or(0) > 1
            {
                *id = format!("{id}_{method}");
            }
        }
    }
    // `/fn/{name}` and `/fn/{name}/` share their handler's name too.
    if let Some(item) = openapi.paths.paths.get_mut("/fn/{name}/") {
        for (_, operation) in operations_mut(item) {
            if let Some(id) = &mut operation.operation_id {
                *id = id.replace("call_function_slash", "call_function_root_slash");
            }
        }
    }
    openapi
}

type Operation = utoipa::openapi::path::Operation;

fn operations_mut(item: &mut utoipa::openapi::PathItem) -> Vec<(&'static str, &mut Operation)> {
    [
        ("get", &mut item.get),
        ("put", &mut item.put),
        ("post", &mut item.post),
        ("delete", &mut item.delete),
        ("options", &mut item.options),
        ("head", &mut item.head),
        ("patch", &mut item.patch),
        ("trace", &mut item.trace),
    ]
    .into_iter()
    .filter_map(|(method, operation)| Some((method, operation.as_mut()?)))
    .collect()
}

/// The refusals of a route that needs a token.
#[derive(utoipa::IntoResponses)]
pub enum AuthErrors {
    /// No valid token.
    #[response(status = 401)]
    Unauthorized(Error),
    /// The token lacks the scope.
    #[response(status = 403)]
    Forbidden(Error),
}

/// How a call of a function can fail.
#[derive(utoipa::IntoResponses)]
pub enum CallErrors {
    /// No valid token (private function).
    #[response(status = 401)]
    Unauthorized(Error),
    /// The token lacks the `invoke` scope.
    #[response(status = 403)]
    Forbidden(Error),
    /// An event function called over HTTP (`wrong_world`), or a bad query.
    #[response(status = 400)]
    BadRequest(Error),
    /// No such function.
    #[response(status = 404)]
    NotFound(Error),
    /// The request body arrived too slowly (`--min-body-rate`).
    #[response(status = 408)]
    TooSlow(Error),
    /// A request body past the function's limit, or a response whose
    /// declared length is past it (`response_too_large`).
    #[response(status = 413)]
    TooLarge(Error),
    /// At its `max_concurrency` past `--queue-timeout-ms`; `Retry-After`.
    #[response(status = 429)]
    Busy(Error),
    /// The guest trapped or failed.
    #[response(status = 500)]
    Failed(Error),
    /// The instance pool or the memory budget is full, or too many request
    /// bytes are held; `Retry-After`.
    #[response(status = 503)]
    Unavailable(Error),
    /// Past its timeout.
    #[response(status = 504)]
    Timeout(Error),
}

/// How posting events can fail.
#[derive(utoipa::IntoResponses)]
pub enum IngestErrors {
    /// Not a valid CloudEvent (the code names the rule).
    #[response(status = 400)]
    Invalid(Error),
    /// No valid token (the broker is not public).
    #[response(status = 401)]
    Unauthorized(Error),
    /// The token lacks the `publish` scope.
    #[response(status = 403)]
    Forbidden(Error),
    /// Body past `--max-event-bytes`, or events making more deliveries than
    /// the backlog may hold at all (`too_many_deliveries`).
    #[response(status = 413)]
    TooLarge(Error),
    /// The store cannot take writes, or the backlog is full
    /// (`backlog_full`); nothing was accepted; retry later.
    #[response(status = 503)]
    Unavailable(Error),
}

/// Every error: a stable code and a message for a person.
#[derive(ToSchema)]
pub struct Error {
    error: ErrorDetail,
}

/// What went wrong.
#[derive(ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable (`function_not_found`, `missing_attribute`, ...).
    code: String,
    /// What happened and what to do.
    message: String,
}

/// Who may invoke a function.
#[derive(ToSchema)]
#[allow(non_camel_case_types)]
pub enum Visibility {
    /// Needs an `invoke` token (the default).
    private,
    /// Anyone.
    public,
}

/// What a token may do.
#[derive(ToSchema)]
#[allow(non_camel_case_types)]
pub enum Scope {
    /// Everything.
    admin,
    /// Functions, triggers, dead letters.
    deploy,
    /// Call private functions; read their invocations.
    invoke,
    /// Post events.
    publish,
    /// Read `/metrics`.
    metrics,
}

/// Any bytes.
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct AnyBody(Vec<u8>);

/// Component bytes (a WebAssembly component).
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct Component(Vec<u8>);

/// A CloudEvent in structured mode (JSON). Extension attributes are
/// further top-level members (lowercase `a-z0-9`).
#[derive(ToSchema)]
pub struct CloudEvent {
    /// `1.0`.
    specversion: String,
    id: String,
    /// A URI-reference.
    source: String,
    #[schema(rename = "type")]
    ty: String,
    subject: Option<String>,
    /// RFC 3339.
    time: Option<String>,
    datacontenttype: Option<String>,
    dataschema: Option<String>,
    /// Any JSON value.
    #[schema(value_type = Option<Object>)]
    data: Option<serde_json::Value>,
    /// Base64 binary data (not with `data`).
    data_base64: Option<String>,
}

/// Settings given as query parameters of a deploy or a settings change.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SettingsQuery {
    /// `private` or `public`.
    #[param(value_type = Option<Visibility>)]
    visibility: Option<String>,
    /// Wall-clock limit per call, in milliseconds (at most `--max-timeout-ms`).
    #[param(minimum = 1)]
    timeout_ms: Option<u64>,
    /// Linear memory cap, in MiB (at most `--max-memory-mb`, at least what
    /// the component needs to start).
    #[param(minimum = 1)]
    memory_mb: Option<u64>,
    /// Instances at once.
    #[param(minimum = 1)]
    max_concurrency: Option<u32>,
    /// Largest request body, in bytes.
    max_request_bytes: Option<u64>,
    /// Largest response body, in bytes.
    max_response_bytes: Option<u64>,
    /// `KEY=VALUE`; repeatable.
    env: Option<String>,
    /// `KEY=VALUE`, redacted in every view; repeatable.
    secret: Option<String>,
    /// A host outbound HTTP may reach; repeatable.
    allow_outbound: Option<String>,
    /// A shared key-value bucket; repeatable.
    kv_bucket: Option<String>,
}

/// A deployed function.
#[derive(ToSchema)]
pub struct Function {
    /// DNS label.
    name: String,
    /// `sha256:<hex>` of the component.
    digest: String,
    /// 1 at the first deploy, one more at every change.
    version: u64,
    /// `http` (`wasi:http/proxy`) or `event` (`sluice:function/event-function`).
    world: String,
    settings: FunctionSettings,
    /// RFC 3339.
    created: String,
    /// RFC 3339.
    updated: String,
    /// Where to call it: `/fn/{name}/`.
    url: String,
    /// Only in the answer to a redeploy: the settings kept from the previous
    /// version because the request did not name them (those that differ
    /// from the server defaults).
    kept: Option<Vec<String>>,
    /// Only in the answer to a redeploy: false when the code and settings
    /// were those of the current version (which then stays).
    changed: Option<bool>,
}

/// A deploy as `multipart/form-data`.
#[derive(ToSchema)]
pub struct DeployForm {
    /// The component.
    #[schema(value_type = String, format = Binary, content_media_type = "application/wasm")]
    component: Vec<u8>,
    /// Settings (JSON). On a redeploy only the keys present change; `null`
    /// resets one to the server default.
    config: Option<FunctionSettings>,
}

/// Per-function settings; unset limits take the server's defaults.
#[derive(ToSchema)]
pub struct FunctionSettings {
    /// `private` (needs an `invoke` token; the default) or `public`.
    #[schema(value_type = Option<Visibility>)]
    visibility: Option<String>,
    /// At most `--max-timeout-ms`.
    #[schema(minimum = 1)]
    timeout_ms: Option<u64>,
    /// At most `--max-memory-mb`, at least what the component needs to start.
    #[schema(minimum = 1)]
    memory_mb: Option<u64>,
    #[schema(minimum = 1)]
    max_concurrency: Option<u32>,
    max_request_bytes: Option<u64>,
    max_response_bytes: Option<u64>,
    /// Environment variables (also `wasi:config` values).
    env: Option<BTreeMap<String, String>>,
    /// Hosts outbound HTTP may reach: `api.example.com`, `host:port`, `*.example.com`.
    allow_outbound: Option<Vec<String>>,
    /// Like `env`, but the API shows `<redacted>` for the values.
    secrets: Option<BTreeMap<String, String>>,
    /// Shared `wasi:keyvalue` buckets the function may open.
    kv_buckets: Option<Vec<String>>,
}

/// Every function.
#[derive(ToSchema)]
pub struct FunctionList {
    functions: Vec<Function>,
}

/// A page of a function's captured output.
#[derive(ToSchema)]
pub struct LogPage {
    logs: Vec<LogLine>,
    /// Pass as `since` for the next page.
    next: u64,
}

/// One line a guest wrote.
#[derive(ToSchema)]
pub struct LogLine {
    seq: u64,
    /// RFC 3339.
    time: String,
    invocation: String,
    /// `stdout` or `stderr`.
    stream: String,
    line: String,
}

/// A function's recent invocations, newest first (the last 50; in
/// cluster mode through every node).
#[derive(ToSchema)]
pub struct RecentInvocations {
    invocations: Vec<RecentInvocation>,
}

/// One finished invocation.
#[derive(ToSchema)]
pub struct RecentInvocation {
    time_ms: u64,
    /// `ok`, `guest_error`, `timeout`, `trap`, `memory_limit`, ...
    outcome: String,
    duration_us: u64,
    memory_peak_bytes: u64,
    cold: bool,
    /// Cluster mode: the node that ran it.
    node: Option<String>,
}

/// A trigger (Knative `Trigger` shape, or the Subscriptions API's `filters`).
#[derive(ToSchema)]
pub struct Trigger {
    /// DNS label (on `PUT`, taken from the path when absent).
    #[schema(pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")]
    name: String,
    /// Default `default`.
    broker: Option<String>,
    /// Knative: `{"attributes": {"type": "..."}}`, every attribute equal.
    #[schema(value_type = Option<Object>)]
    filter: Option<serde_json::Value>,
    /// Subscriptions API dialects: `exact`, `prefix`, `suffix`, `all`, `any`, `not`,
    /// and `cesql` (a CloudEvents SQL v1 expression in a string). A key `$.path`
    /// in `exact`/`prefix`/`suffix`, and `DATA('$.path')` in CESQL, name a field
    /// of a JSON `data` (a Sluice extension).
    #[schema(value_type = Option<Vec<Object>>)]
    filters: Option<Vec<serde_json::Value>>,
    /// `{"function": "name"}`, `{"uri": "http://..."}`, or a Knative
    /// reference to a function: `{"ref": {"apiVersion": "serving.knative.dev/v1",
    /// "kind": "Service", "name": "name"}}` (kind `Service` or `Function`;
    /// `deadLetterSink` takes the same three shapes).
    #[schema(value_type = Object)]
    subscriber: serde_json::Value,
    /// `retry`, `backoffPolicy` (`exponential`, `linear`), `backoffDelay`
    /// (ISO 8601), `timeout`, `retryAfterMax` (kept; Sluice does not wait
    /// for `Retry-After` yet), `maxConcurrency` (a Sluice extension:
    /// deliveries in flight at once), `deadLetterSink`.
    #[schema(value_type = Option<Object>)]
    delivery: Option<serde_json::Value>,
    /// Read only (ignored on a write).
    #[schema(read_only)]
    status: Option<TriggerStatus>,
    /// Read only (ignored on a write).
    #[schema(read_only)]
    stats: Option<TriggerStats>,
}

/// Whether the subscriber can take events now, and the delivery in force.
#[derive(ToSchema)]
pub struct TriggerStatus {
    ready: bool,
    reason: Option<String>,
    /// The trigger's own `delivery`, or (when it sets none) its broker's
    /// default, or Knative's defaults.
    #[schema(value_type = Option<Object>)]
    delivery: Option<serde_json::Value>,
}

/// Counts since the server started.
#[derive(ToSchema)]
pub struct TriggerStats {
    matched: u64,
    delivered: u64,
    retried: u64,
    dead_lettered: u64,
    in_flight: i64,
}

/// A broker: the default `delivery` of its triggers that set none, and
/// whether client events are de-duplicated.
#[derive(ToSchema)]
pub struct Broker {
    /// DNS label (on `PUT`, taken from the path when absent).
    name: Option<String>,
    /// As a trigger's `delivery`.
    #[schema(value_type = Option<Object>)]
    delivery: Option<serde_json::Value>,
    /// `false`: every event a client posts is delivered, a repeat of
    /// (source, id) too (default `true`: a repeat within the
    /// de-duplication window is answered as a duplicate and not delivered
    /// again). A Sluice extension.
    dedupe: Option<bool>,
    /// Read only: how many triggers it has.
    #[schema(read_only)]
    triggers: Option<u64>,
    /// Read only: true for a stored broker (`PUT`), false for one only
    /// named by triggers (or `default`).
    #[schema(read_only)]
    stored: Option<bool>,
}

/// Every broker.
#[derive(ToSchema)]
pub struct BrokerList {
    brokers: Vec<Broker>,
}

/// A cron schedule (Knative's `PingSource` spec): at each instant it posts
/// a CloudEvent of type `dev.knative.sources.ping`, source
/// `/apis/v1/namespaces/default/pingsources/{name}`, id and `time` the
/// instant (RFC 3339, UTC), into a broker.
#[derive(ToSchema)]
pub struct Schedule {
    /// DNS label (on `PUT`, taken from the path when absent).
    name: Option<String>,
    /// A cron pattern: five fields (minute, hour, day of month, month,
    /// day of week), or six with leading seconds (a Sluice extension);
    /// names (`MON`, `JAN`), `L`, `W`, `#` and `@hourly`-style nicknames.
    schedule: String,
    /// IANA time zone the pattern is read in (default UTC).
    timezone: Option<String>,
    /// The events' `datacontenttype` (default `application/json` for JSON
    /// data, `text/plain` for other text, `application/octet-stream` for
    /// `dataBase64`).
    #[schema(rename = "contentType")]
    content_type: Option<String>,
    /// The events' data: a string (Knative's), or any JSON value (a Sluice
    /// extension). At most 64 KiB.
    data: Option<serde_json::Value>,
    /// The events' data as base64 (instead of `data`).
    #[schema(rename = "dataBase64")]
    data_base64: Option<String>,
    /// `{"broker": NAME}` or Knative's `{"ref": {"kind": "Broker", "name":
    /// NAME}}`; or straight to a function or URL, as a trigger's subscriber:
    /// `{"function": NAME}`, `{"uri": URL}`, `{"ref": {"kind": "Service",
    /// "name": NAME}}` (delivered with the default retries; its events are
    /// traced under broker `_schedule_NAME`).
    #[schema(value_type = Object)]
    sink: serde_json::Value,
    /// Read only: the next instant (RFC 3339).
    #[schema(read_only)]
    next: Option<String>,
    /// Read only: the last instant fired (RFC 3339), if any.
    #[schema(read_only, rename = "lastFired")]
    last_fired: Option<String>,
    /// Read only: whether the sink can take events now (a function sink
    /// that is not deployed cannot: its firings are retried, then dead
    /// lettered), as a trigger's status.
    #[schema(read_only)]
    status: Option<SinkStatus>,
}

/// Whether a schedule's sink can take events now.
#[derive(ToSchema)]
pub struct SinkStatus {
    ready: bool,
    /// Why not.
    reason: Option<String>,
}

/// Every schedule.
#[derive(ToSchema)]
pub struct ScheduleList {
    schedules: Vec<Schedule>,
}

/// Resources for `POST /v1/apply`: one, an array, or a `List` with `items`.
#[derive(ToSchema)]
pub struct Resource {
    /// `eventing.knative.dev/v1` (`Trigger`, `Broker`) or `sluice.dev/v1`
    /// (`Function`).
    #[schema(rename = "apiVersion")]
    api_version: String,
    kind: String,
    /// `name` (and `namespace`, only `default`).
    #[schema(value_type = Object)]
    metadata: serde_json::Value,
    /// The kind's spec.
    #[schema(value_type = Option<Object>)]
    spec: Option<serde_json::Value>,
}

/// What `POST /v1/apply` did, per resource, in order.
#[derive(ToSchema)]
pub struct Applied {
    results: Vec<AppliedResource>,
}

/// One resource of an apply.
#[derive(ToSchema)]
pub struct AppliedResource {
    kind: String,
    name: String,
    /// `created`, `changed` or `unchanged`.
    action: String,
}

/// Every trigger.
#[derive(ToSchema)]
pub struct TriggerList {
    triggers: Vec<Trigger>,
}

/// Events accepted: durable before this answer.
#[derive(ToSchema)]
pub struct Accepted {
    /// Events in the request.
    accepted: u64,
    ids: Vec<String>,
    /// True when every event was a duplicate: a repeat of (broker, source,
    /// id) accepted within the de-duplication window, not delivered again.
    duplicate: bool,
    /// The ids of the events that were duplicates (also a repeat earlier
    /// in the same batch).
    duplicates: Vec<String>,
}

/// What a broker would do with each event posted to `explain`.
#[derive(ToSchema)]
pub struct Explanation {
    broker: String,
    /// One per event, in the order posted.
    events: Vec<ExplainedEvent>,
}

/// What one event would match.
#[derive(ToSchema)]
pub struct ExplainedEvent {
    id: String,
    source: String,
    #[schema(rename = "type")]
    ty: String,
    /// The names of the triggers it matches: one delivery each.
    matched: Vec<String>,
    /// Every trigger of the broker, by name.
    triggers: Vec<ExplainedTrigger>,
}

/// One trigger's verdict on an event.
#[derive(ToSchema)]
pub struct ExplainedTrigger {
    name: String,
    matched: bool,
    /// `{"function": ...}` or `{"uri": ...}`.
    subscriber: serde_json::Value,
    /// For a miss, the first condition that failed, such as
    /// `filter.attributes.type: wanted "a", got "b"` or
    /// `filters[0].cesql: evaluated to FALSE`.
    reason: Option<String>,
}

/// The traces of the recent events with one id.
#[derive(ToSchema)]
pub struct EventTraces {
    broker: String,
    id: String,
    /// One per source that posted this id, newest first.
    traces: Vec<EventTrace>,
}

/// What became of one accepted event.
#[derive(ToSchema)]
pub struct EventTrace {
    id: String,
    source: String,
    #[schema(rename = "type")]
    ty: String,
    /// When it was accepted (RFC 3339).
    accepted: String,
    accepted_ms: u64,
    /// The triggers it matched: one delivery each (at most 32 kept).
    matched: Vec<String>,
    matched_not_kept: u32,
    /// Every trigger of the broker now: matched, or for the others why not
    /// (as `explain` says it).
    triggers: Vec<TracedTrigger>,
    /// Every delivery attempt, in the order they ended (at most 32 kept:
    /// the first 32; in cluster mode the newest 32).
    attempts: Vec<TracedAttempt>,
    /// Attempts past the 32 kept (embedded mode; cluster mode counts none).
    attempts_not_kept: u32,
    /// One per trigger that failed for good.
    dead_letters: Vec<TracedDeadLetter>,
    /// Ids of the events it caused (replies, and events functions published
    /// into the same broker while handling it; at most 32 kept).
    caused: Vec<String>,
    caused_not_kept: u32,
    /// Repeats posted within the de-duplication window (in cluster mode
    /// at most 32 counted).
    duplicates: u32,
}

/// One trigger's verdict in a trace.
#[derive(ToSchema)]
pub struct TracedTrigger {
    name: String,
    matched: bool,
    reason: Option<String>,
}

/// One delivery attempt in a trace.
#[derive(ToSchema)]
pub struct TracedAttempt {
    trigger: String,
    attempt: u32,
    /// When it started (RFC 3339).
    start: String,
    start_ms: u64,
    duration_ms: f64,
    /// `delivered`, `retrying` or `failed` (for good).
    outcome: String,
    /// The subscriber's HTTP status, when it answered.
    status: Option<u16>,
    /// Why it failed: a trap, a limit the instance hit, a timeout, the
    /// subscriber's answer.
    error: Option<String>,
    /// Cluster mode: the node that ran it.
    node: Option<String>,
}

/// A dead letter in a trace.
#[derive(ToSchema)]
pub struct TracedDeadLetter {
    trigger: String,
    /// Its id in `/v1/deadletters`.
    id: String,
    reason: String,
}

/// An event whose delivery failed for good.
#[derive(ToSchema)]
pub struct DeadLetter {
    id: String,
    broker: String,
    trigger: String,
    attempts: u32,
    reason: String,
    /// RFC 3339.
    time: String,
    /// The event (structured JSON) with `knativeerrordest`, `knativeerrorcode`
    /// and `knativeerrordata`.
    #[schema(value_type = Object)]
    event: serde_json::Value,
}

/// Dead letters.
#[derive(ToSchema)]
pub struct DeadLetterList {
    deadletters: Vec<DeadLetter>,
}

/// A replayed dead letter.
#[derive(ToSchema)]
pub struct Replayed {
    replayed: String,
}

/// What was deleted.
#[derive(ToSchema)]
pub struct Deleted {
    deleted: String,
}

/// The id of the revoked token.
#[derive(ToSchema)]
pub struct Revoked {
    revoked: String,
}

/// A new token's scope and label.
#[derive(ToSchema)]
pub struct TokenRequest {
    #[schema(value_type = Scope)]
    scope: String,
    name: Option<String>,
}

/// A token; `token` (the secret) only in the answer that created it.
#[derive(ToSchema)]
pub struct Token {
    id: String,
    scope: String,
    name: String,
    created: String,
    token: Option<String>,
}

/// Every token (without secrets).
#[derive(ToSchema)]
pub struct TokenList {
    tokens: Vec<Token>,
}

/// An asynchronous invocation.
#[derive(ToSchema)]
pub struct Invocation {
    id: String,
    function: String,
    /// `queued`, `running`, `succeeded`, `failed`, `cancelled`.
    status: String,
    created: String,
    finished: Option<String>,
    /// `status`, `headers`, and `body` (text) or `body_base64`; `null`
    /// until it finished (and for a cancelled one).
    #[schema(value_type = Option<Object>)]
    response: Option<serde_json::Value>,
}

/// A queued asynchronous invocation (`?async=true`).
#[derive(ToSchema)]
pub struct InvocationAccepted {
    id: String,
    /// `queued`.
    status: String,
    /// Where to read it: `/v1/invocations/{id}`.
    url: String,
}

/// One invocation in a list (without its response).
#[derive(ToSchema)]
pub struct InvocationSummary {
    id: String,
    function: String,
    /// `queued`, `running`, `succeeded`, `failed`, `cancelled`.
    status: String,
    created: String,
    finished: Option<String>,
    /// The function's status code, once it answered.
    response_status: Option<u16>,
}

/// `GET /v1/invocations`.
#[derive(ToSchema)]
pub struct InvocationList {
    /// Newest first.
    invocations: Vec<InvocationSummary>,
}

/// A health or readiness answer.
#[derive(ToSchema)]
pub struct Status {
    /// `ok` or `ready`.
    status: String,
}

/// The server at a glance (`GET /v1/status`).
#[derive(ToSchema)]
pub struct ServerStatus {
    version: String,
    uptime_secs: u64,
    /// As `/readyz` says (in cluster mode: NATS and JetStream answer).
    ready: bool,
    /// Why not ready.
    not_ready: Option<String>,
    store_healthy: bool,
    functions: u64,
    /// Functions whose compiled code is in memory now.
    functions_loaded: u64,
    triggers: u64,
    /// Deliveries not finished: this node's, or in cluster mode the
    /// cluster's (waiting and held, from the work queue's consumers).
    deliveries_pending: i64,
    dead_letters: u64,
    requests_in_flight: u64,
    /// Cluster mode only.
    cluster: Option<ClusterStatus>,
}

/// Cluster mode: the node answering, the live nodes, JetStream.
#[derive(ToSchema)]
pub struct ClusterStatus {
    /// This node's name.
    node: String,
    /// This node's id (its lease's key; new at each start).
    node_id: String,
    /// The nodes whose leases are live (renewed every 3 s, lapsing 10 s
    /// after the last renewal).
    nodes: Vec<ClusterNode>,
    /// Why `nodes` could not be read (it is then empty).
    nodes_error: Option<String>,
    jetstream: JetStreamStatus,
    /// Trace records this node dropped since it started (its queue of
    /// records to send was full: NATS slow or away).
    trace_records_dropped: u64,
}

/// One live node.
#[derive(ToSchema)]
pub struct ClusterNode {
    id: String,
    name: String,
    /// The address it serves HTTP on.
    listen: String,
    version: String,
    started: String,
}

/// JetStream as the answering node sees it.
#[derive(ToSchema)]
pub struct JetStreamStatus {
    healthy: bool,
    /// Why not healthy.
    reason: Option<String>,
    events: Option<StreamState>,
    deliveries: Option<StreamState>,
    backlog: Option<ClusterBacklog>,
}

/// One stream's state.
#[derive(ToSchema)]
pub struct StreamState {
    messages: u64,
    bytes: u64,
    replicas: u64,
    /// The server leading it.
    leader: Option<String>,
    /// Followers that are current.
    replicas_current: u64,
}

/// The cluster's backlog, from the consumers' counts.
#[derive(ToSchema)]
pub struct ClusterBacklog {
    /// Accepted events not fanned out yet.
    events_to_fan_out: u64,
    /// Deliveries queued, not taken by a node.
    deliveries_waiting: u64,
    /// Deliveries a node holds (running, in backoff, or held under
    /// `maxConcurrency`).
    deliveries_held: u64,
}

#[cfg(test)]
mod tests {
    /// Routes mounted straight on axum would be missing from the document:
    /// every route must go through `OpenApiRouter::routes(routes!(...))`.
    #[test]
    fn every_route_is_documented() {
        let mut dirs = vec![std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src")];
        let mut files = Vec::new();
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else {
                    files.push(path);
                }
            }
        }
        assert!(files.iter().any(|p| p.ends_with("routes/functions.rs")));
        for path in files {
            if path.ends_with("openapi.rs") {
                continue;
            }
            let source = std::fs::read_to_string(&path).unwrap();
            for forbidden in [
                ".route(\"",
                ".route_service(",
                ".nest(",
                "axum::routing::",
                "Routes::new()",
            ] {
                assert!(
                    !source.contains(forbidden),
                    "{} mounts a route outside the OpenAPI router ({forbidden})",
                    path.display()
                );
            }
        }
    }

    #[test]
    fn the_document_names_every_route_in_openapi_syntax() {
        let openapi = super::finish(<super::ApiDoc as utoipa::OpenApi>::openapi());
        assert!(openapi.info.version.starts_with(env!("CARGO_PKG_VERSION")));
        assert!(openapi.paths.paths.keys().all(|p| !p.contains("{*")));
    }
}
