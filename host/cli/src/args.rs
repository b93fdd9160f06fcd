//! The `sluice` command line: `serve` runs the server; every other command is
//! a client of its HTTP API.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Makes the clap arguments of a table of limits (the runtime's,
/// `sluice_runtime::runtime_limits!`, or the server's,
/// `sluice_server::server_limits!`) and their conversion to the plain
/// limits, so each flag's doc and default are its limit's own (as
/// wasmtime's `cli-flags` maps its flags onto `wasmtime::Config`).
macro_rules! limit_args {
    (Limits; $($table:tt)*) => {
        limit_args!(@make LimitArgs, sluice_runtime::Limits; $($table)*);
    };
    (ServerLimits; $($table:tt)*) => {
        limit_args!(@make ServerLimitArgs, sluice_server::ServerLimits; $($table)*);
    };
    (@make $args:ident, $target:path;
     $( $(#[doc = $doc:expr])* $field:ident : $ty:ty = $default:expr, $flag:literal; )*) => {
        /// Limits of `sluice serve`, one flag each.
        #[derive(Clone, Debug, clap::Args)]
        pub struct $args {
            $( $(#[doc = $doc])* #[arg(long = $flag, default_value_t = $default)] pub $field: $ty, )*
        }

        impl From<$args> for $target {
            fn from(args: $args) -> Self {
                Self { $( $field: args.$field, )* }
            }
        }
    };
}

sluice_runtime::runtime_limits!(limit_args);
sluice_server::server_limits!(limit_args);

/// Sluice: a WebAssembly function host with an event router.
#[derive(Debug, Parser)]
#[command(
    name = "sluice",
    version,
    about,
    after_help = "The client flags of every command but serve (--server, --token, --data-dir, -o) may also come before the command: sluice --server URL fn list."
)]
pub struct Cli {
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[expect(clippy::large_enum_variant, reason = "parsed once per process")]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server.
    Serve(ServeArgs),
    /// Manage and call functions.
    #[command(name = "fn", subcommand)]
    Function(FunctionCommand),
    /// Manage triggers.
    #[command(subcommand)]
    Trigger(TriggerCommand),
    /// Send events.
    #[command(subcommand)]
    Event(EventCommand),
    /// Manage API tokens (admin).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Asynchronous invocations.
    #[command(subcommand)]
    Invocation(InvocationCommand),
    /// Inspect and redrive dead letters.
    #[command(name = "deadletter", subcommand)]
    DeadLetter(DeadLetterCommand),
    /// Manage brokers (their default delivery).
    #[command(subcommand)]
    Broker(BrokerCommand),
    /// Cron schedules that post an event into a broker at each instant
    /// (Knative's PingSource).
    #[command(subcommand)]
    Schedule(ScheduleCommand),
    /// Apply Knative resources (Trigger, Broker, PingSource) and Sluice Functions from
    /// YAML or JSON, as `kubectl apply` does: twice changes nothing.
    Apply {
        /// The file (`-` for stdin): YAML with one or more documents, or
        /// JSON (a resource, an array, or a List).
        #[arg(long = "file", short = 'f', value_name = "FILE")]
        file: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print resources in the shapes `apply` takes (YAML unless `-o json`),
    /// so that export then apply is a round trip.
    Get {
        /// What to print.
        #[arg(value_enum)]
        kind: GetKind,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show the server's health and counts.
    Status {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Copy an embedded data directory's functions, triggers, brokers,
    /// schedules, tokens and guest data into a cluster (its server stopped;
    /// names the cluster has already are kept as the cluster has them).
    Migrate {
        /// The embedded server's data directory.
        #[arg(
            long = "data-dir",
            env = "SLUICE_DATA_DIR",
            default_value = "sluice-data"
        )]
        data_dir: PathBuf,
        /// The cluster's NATS URLs (comma-separated or repeated).
        #[arg(
            long = "nats",
            env = "SLUICE_NATS_URL",
            value_delimiter = ',',
            value_name = "URL",
            required = true
        )]
        nats: Vec<String>,
        /// A NATS credentials file (.creds).
        #[arg(long, env = "SLUICE_NATS_CREDS", value_name = "FILE")]
        nats_creds: Option<PathBuf>,
        /// Migrate a directory migrated before once more: copies what the
        /// cluster lacks, including what it deleted since.
        #[arg(long)]
        again: bool,
    },
    /// Print a shell completion script (`sluice completions bash > /etc/bash_completion.d/sluice`).
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// What `sluice get` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum GetKind {
    /// Knative Triggers.
    #[value(alias = "trigger")]
    Triggers,
    /// Sluice Functions (by digest, settings included, secrets redacted).
    #[value(alias = "function", alias = "fn")]
    Functions,
    /// Knative Brokers (the stored ones).
    #[value(alias = "broker")]
    Brokers,
    /// Schedules, as Knative PingSources.
    #[value(alias = "schedule", alias = "pingsources")]
    Schedules,
}

/// `sluice broker ...`
#[derive(Debug, Subcommand)]
pub enum BrokerCommand {
    /// List brokers: stored ones, those triggers name, and `default`.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show one broker.
    Get {
        /// Broker name.
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Create or replace a broker, with the default delivery of its
    /// triggers that set none.
    Create {
        /// Broker name.
        name: String,
        #[command(flatten)]
        delivery: DeliveryArgs,
        /// Deliver every event a client posts, a repeat of (source, id)
        /// within the de-duplication window too.
        #[arg(long)]
        no_dedupe: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete a stored broker (its triggers stay).
    Delete {
        /// Broker name.
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// `sluice schedule ...`
#[derive(Debug, Subcommand)]
pub enum ScheduleCommand {
    /// List schedules with their next instant.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show one schedule.
    Get {
        /// Schedule name.
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Create or replace a schedule: from its next instant on, each instant
    /// posts a `dev.knative.sources.ping` event into the broker (or
    /// straight to a function or URL).
    Create {
        /// Schedule name.
        name: String,
        /// Cron pattern: "MIN HOUR DAY MONTH WEEKDAY", with an optional
        /// leading seconds field ("*/10 * * * * *"), or "@hourly" and such.
        #[arg(long = "cron", value_name = "PATTERN")]
        schedule: String,
        /// IANA time zone the pattern is read in (default UTC).
        #[arg(long)]
        timezone: Option<String>,
        /// Broker the events go to.
        #[arg(long, default_value = "default", conflicts_with_all = ["function", "uri"])]
        broker: String,
        /// Deliver the events straight to this function instead (no broker,
        /// no trigger).
        #[arg(long, conflicts_with = "uri")]
        function: Option<String>,
        /// Deliver the events straight to this URL instead.
        #[arg(long)]
        uri: Option<String>,
        /// The events' data (text; JSON text is sent as JSON).
        #[arg(long, conflicts_with = "data_base64")]
        data: Option<String>,
        /// The events' data, base64-encoded bytes.
        #[arg(long)]
        data_base64: Option<String>,
        /// The events' content type.
        #[arg(long)]
        content_type: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete a schedule: it fires no more.
    Delete {
        /// Schedule name.
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// How read commands print what they get.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// For people: tables and summaries.
    #[default]
    Text,
    /// The API's JSON, for scripts.
    Json,
    /// The API's answer as YAML.
    Yaml,
}

/// `sluice trigger ...`
#[expect(clippy::large_enum_variant, reason = "parsed once per process")]
#[derive(Debug, Subcommand)]
pub enum TriggerCommand {
    /// Create or replace a trigger, from flags or from a file holding the
    /// API's JSON (`-f FILE`, `-f -` for stdin; flags then add to it).
    Create {
        /// Trigger name.
        name: String,
        /// A trigger as JSON (the body of `PUT /v1/triggers/{name}`).
        #[arg(long = "file", short = 'f', value_name = "FILE")]
        file: Option<String>,
        /// Function that receives matching events.
        #[arg(long, conflicts_with = "uri")]
        function: Option<String>,
        /// External sink URL that receives matching events.
        #[arg(long)]
        uri: Option<String>,
        /// Broker whose events it sees (`default` unless the file names one).
        #[arg(long)]
        broker: Option<String>,
        /// Exact attribute match, ATTR=VALUE (repeatable, ANDed).
        #[arg(long = "filter", value_name = "ATTR=VALUE")]
        filters: Vec<String>,
        /// Attribute prefix match, ATTR=PREFIX (repeatable, ANDed).
        #[arg(long = "prefix", value_name = "ATTR=PREFIX")]
        prefixes: Vec<String>,
        /// Attribute suffix match, ATTR=SUFFIX (repeatable, ANDed).
        #[arg(long = "suffix", value_name = "ATTR=SUFFIX")]
        suffixes: Vec<String>,
        /// A CloudEvents SQL expression (repeatable, ANDed).
        #[arg(long = "cesql", value_name = "EXPRESSION")]
        cesql: Vec<String>,
        /// Any Subscriptions API filter as JSON, such as
        /// `{"any": [{"exact": {"type": "a"}}, {"not": {"prefix": {"source": "/x"}}}]}`
        /// (repeatable, ANDed).
        #[arg(long = "filter-json", value_name = "JSON")]
        filter_json: Vec<String>,
        #[command(flatten)]
        delivery: DeliveryArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List triggers.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show one trigger.
    Get {
        /// Trigger name.
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete a trigger.
    Delete {
        /// Trigger name.
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// `sluice event ...`
#[derive(Debug, Subcommand)]
pub enum EventCommand {
    /// Send one event (binary mode; `--structured` for structured mode), or
    /// post a file holding a structured event or a batch (`--file`).
    Send {
        #[command(flatten)]
        event: EventArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Say which triggers of the broker an event would match and, for each
    /// other one, the first condition that failed; nothing is stored or
    /// delivered.
    Explain {
        #[command(flatten)]
        event: EventArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show what became of a recent event: when it was accepted, each
    /// trigger's verdict, every delivery attempt, its dead letters and the
    /// events it caused (kept for the server's --trace-retention).
    Trace {
        /// The event's id.
        id: String,
        /// Its broker.
        #[arg(long, default_value = "default")]
        broker: String,
        /// Its source (without it, every event of this id).
        #[arg(long)]
        source: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print events as they are accepted and delivered (the live stream),
    /// a line each (one JSON object a line with -o json), until
    /// interrupted.
    Watch {
        /// Only this broker's.
        #[arg(long)]
        broker: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// The event of `sluice event send` and `sluice event explain`.
#[derive(Debug, clap::Args)]
pub struct EventArgs {
    /// `type` attribute.
    #[arg(long = "type", required_unless_present = "file")]
    pub ty: Option<String>,
    /// `source` attribute.
    #[arg(long, required_unless_present = "file")]
    pub source: Option<String>,
    /// `id` attribute (default: a fresh one).
    #[arg(long)]
    pub id: Option<String>,
    /// `subject` attribute.
    #[arg(long)]
    pub subject: Option<String>,
    /// Extension attribute, NAME=VALUE (repeatable).
    #[arg(long = "ext", value_name = "NAME=VALUE")]
    pub extensions: Vec<String>,
    /// Data: `@FILE`, `-` for stdin, or literal text.
    #[arg(long, short)]
    pub data: Option<String>,
    /// Media type of the data.
    #[arg(long, default_value = "application/json")]
    pub content_type: String,
    /// The broker.
    #[arg(long, default_value = "default")]
    pub broker: String,
    /// Send it in structured mode (`application/cloudevents+json`).
    #[arg(long, conflicts_with = "file")]
    pub structured: bool,
    /// A file (`-` for stdin) holding a structured event (JSON) or a
    /// batch (a JSON array), posted as it is.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["ty", "source", "data", "id", "subject", "extensions"])]
    pub file: Option<String>,
}

/// `sluice deadletter ...`
#[derive(Debug, Subcommand)]
pub enum DeadLetterCommand {
    /// List dead letters.
    List {
        /// Only those of this trigger.
        #[arg(long)]
        trigger: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show one dead letter, its event whole.
    Get {
        /// Dead letter id.
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Redeliver a dead letter to its trigger.
    Replay {
        /// Dead letter id.
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Discard a dead letter.
    Delete {
        /// Dead letter id.
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// `sluice serve` flags.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8080", env = "SLUICE_LISTEN")]
    pub listen: SocketAddr,
    /// Data directory: the store and compiled artifacts.
    #[arg(long, default_value = "sluice-data", env = "SLUICE_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Deploy every NAME.wasm in this folder at start (public).
    #[arg(long)]
    pub examples: Option<PathBuf>,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Accept this admin token instead of creating `<data-dir>/admin.token`.
    #[arg(long, env = "SLUICE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// A broker that accepts events without a token (repeatable).
    #[arg(long = "public-broker", value_name = "BROKER")]
    pub public_brokers: Vec<String>,
    /// Start on a damaged delivery journal by keeping every readable frame
    /// and dropping the damaged bytes (the deliveries in them are lost).
    /// Without it, a damaged journal stops the server with the file and
    /// offset of the damage.
    #[arg(long)]
    pub salvage_journal: bool,
    /// Serve `/metrics` without a token. Without it, scraping needs a token
    /// of scope `metrics` (or `admin`): the series name every function,
    /// private ones too.
    #[arg(long)]
    pub public_metrics: bool,
    /// Cluster mode: run as one of several identical nodes on NATS
    /// JetStream at these URLs (comma-separated or repeated; any one
    /// reachable is enough). Every node given the same NATS is one Sluice:
    /// functions, triggers, brokers, tokens, accepted events, deliveries and
    /// dead letters live in JetStream (see docs/cluster.md).
    #[arg(
        long = "nats",
        env = "SLUICE_NATS_URL",
        value_delimiter = ',',
        value_name = "URL"
    )]
    pub nats: Vec<String>,
    /// A NATS credentials file (.creds) for cluster mode.
    #[arg(
        long,
        env = "SLUICE_NATS_CREDS",
        value_name = "FILE",
        requires = "nats"
    )]
    pub nats_creds: Option<PathBuf>,
    /// Replicas of each JetStream stream and bucket (default: 3 when the
    /// NATS cluster has three or more servers, else 1).
    #[arg(long, value_name = "N", requires = "nats")]
    pub nats_replicas: Option<usize>,
    /// How long a client's repeat of an event (the same broker, source and
    /// id) is answered 202 as a duplicate and not delivered again, e.g.
    /// `10m` (`0s`: off; a broker turns it off for itself with `"dedupe":
    /// false`). In cluster mode, the events stream's duplicate window (at
    /// most --event-retention).
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = humantime::parse_duration)]
    pub dedupe_window: std::time::Duration,
    /// How long the trace of an accepted event (`GET
    /// /v1/brokers/{broker}/events/{id}`, `sluice event trace`) is kept, e.g.
    /// `1h` (`0s`: none; at most --trace-max-events): in memory, or in
    /// cluster mode in the traces stream (its age limit).
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = humantime::parse_duration)]
    pub trace_retention: std::time::Duration,
    /// Cluster mode: how long accepted events stay in the events stream
    /// (for replay), e.g. `24h`, `7d`.
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = humantime::parse_duration)]
    pub event_retention: std::time::Duration,
    /// Cluster mode: the most bytes the events stream holds; a full stream
    /// refuses new events (503) instead of dropping old ones (default: no
    /// limit of its own, only JetStream's storage). Raised, never lowered
    /// below what the stream holds; give every node the same.
    #[arg(long, value_name = "BYTES", requires = "nats", value_parser = clap::value_parser!(u64).range(1..))]
    pub event_max_bytes: Option<u64>,
    /// Cluster mode: how long a node may hold an event or a delivery
    /// without a sign of life (it sends progress notes while it works)
    /// before another node takes it over: how soon a dead node's work moves.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    pub nats_ack_wait: std::time::Duration,
    /// Cluster mode: this node's name, as `/v1/status`, traces and recent
    /// calls show it (default: `sluice ADDR pid N`).
    #[arg(long, env = "SLUICE_NODE_NAME", value_name = "NAME", requires = "nats")]
    pub node_name: Option<String>,
    /// The runtime's limits.
    #[command(flatten)]
    pub limits: LimitArgs,
    /// The server's limits.
    #[command(flatten)]
    pub server_limits: ServerLimitArgs,
}

/// How logs are written to stderr.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Where the server is, and how to authenticate.
#[derive(Debug, clap::Args)]
pub struct ClientArgs {
    /// URL of the Sluice server.
    #[arg(
        long,
        global = true,
        env = "SLUICE_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub server: String,
    /// API token. Default: `<data-dir>/admin.token` when the server is on
    /// this machine.
    #[arg(long, global = true, env = "SLUICE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The server's data directory, to find its admin token.
    #[arg(
        long = "data-dir",
        global = true,
        env = "SLUICE_DATA_DIR",
        default_value = "sluice-data"
    )]
    pub data_dir: PathBuf,
    /// Output format of read commands.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

/// `sluice fn ...`
#[derive(Debug, Subcommand)]
pub enum FunctionCommand {
    /// Deploy (or replace) a function from a component file. A replacement
    /// keeps every setting this command does not name.
    Deploy {
        /// Function name (lowercase letters, digits, `-`).
        name: String,
        /// The component (`.wasm`, built for wasm32-wasip2).
        file: PathBuf,
        #[command(flatten)]
        settings: SettingsArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Change a function's settings, keeping its code and every setting not
    /// named here.
    Update {
        /// Function name.
        name: String,
        #[command(flatten)]
        settings: SettingsArgs,
        /// Reset a setting to the server default (repeatable): `env`,
        /// `secrets`, `allow_outbound`, `kv_buckets`, `timeout_ms`, ...
        #[arg(long = "reset", value_name = "SETTING")]
        reset: Vec<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List functions.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show one function.
    Get {
        /// Function name.
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete a function.
    Delete {
        /// Function name.
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print a function's log (guest stdout and stderr).
    Logs {
        /// Function name.
        name: String,
        /// Keep printing new lines as they come.
        #[arg(long, short)]
        follow: bool,
        /// Start after this sequence number.
        #[arg(long, default_value_t = 0)]
        since: u64,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Call a function and print its response body.
    Invoke {
        /// Function name.
        name: String,
        /// Request body: `@FILE`, `-` for stdin, or literal text.
        #[arg(long, short)]
        data: Option<String>,
        /// HTTP method (an HTTP function is then called at `/fn/NAME/PATH`).
        #[arg(long, short = 'X')]
        method: Option<String>,
        /// Path and query the guest sees (`/orders?limit=5`).
        #[arg(long)]
        path: Option<String>,
        /// Request header, NAME:VALUE (repeatable).
        #[arg(long = "header", short = 'H', value_name = "NAME:VALUE")]
        headers: Vec<String>,
        /// Print the response status and headers before the body.
        #[arg(long, short = 'i')]
        include: bool,
        /// Queue the call and print its invocation id (see `sluice invocation get`).
        #[arg(long = "async")]
        asynchronous: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// Delivery flags of `trigger create` and `broker create` (Knative's
/// `delivery`; those given are set).
#[derive(Debug, clap::Args)]
pub struct DeliveryArgs {
    /// Retries after the first attempt.
    #[arg(long)]
    pub retry: Option<u32>,
    /// Backoff policy: exponential or linear.
    #[arg(long)]
    pub backoff_policy: Option<String>,
    /// Backoff base delay, ISO 8601 (PT0.2S).
    #[arg(long)]
    pub backoff_delay: Option<String>,
    /// Time limit of one delivery attempt, ISO 8601 (PT5S).
    #[arg(long)]
    pub timeout: Option<String>,
    /// Function that receives events whose delivery failed for good.
    #[arg(long, conflicts_with = "dead_letter_uri")]
    pub dead_letter: Option<String>,
    /// External URL that receives events whose delivery failed for good.
    #[arg(long)]
    pub dead_letter_uri: Option<String>,
}

/// Function settings on `fn deploy` and `fn update`.
#[derive(Debug, clap::Args)]
pub struct SettingsArgs {
    /// Environment variable for the guest, KEY=VALUE (repeatable; on
    /// `deploy` they replace the function's variables, on `update` they are
    /// added to them).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Secret for the guest, KEY=VALUE (repeatable; never shown back).
    #[arg(long = "secret", value_name = "KEY=VALUE")]
    pub secret: Vec<String>,
    /// Timeout of one call, in milliseconds.
    #[arg(long, value_name = "MS")]
    pub timeout: Option<u64>,
    /// Memory cap of one instance, in MiB.
    #[arg(long, value_name = "MB")]
    pub memory: Option<u64>,
    /// Instances that may run at once.
    #[arg(long)]
    pub max_concurrency: Option<u32>,
    /// Largest request body the function accepts, in bytes.
    #[arg(long, value_name = "BYTES")]
    pub max_request_bytes: Option<u64>,
    /// Largest response body the function may produce, in bytes.
    #[arg(long, value_name = "BYTES")]
    pub max_response_bytes: Option<u64>,
    /// Host the guest may call over HTTP (repeatable).
    #[arg(long = "allow-outbound", value_name = "HOST")]
    pub allow_outbound: Vec<String>,
    /// Shared key-value bucket the guest may open (repeatable).
    #[arg(long = "kv-bucket", value_name = "BUCKET")]
    pub kv_bucket: Vec<String>,
    /// Allow anonymous invocation.
    #[arg(long, conflicts_with = "private")]
    pub public: bool,
    /// Require an `invoke` token (the default for a new function).
    #[arg(long)]
    pub private: bool,
}

/// `sluice token ...`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Mint a token; prints it once.
    Create {
        /// What it may do: admin (everything), deploy (manage functions,
        /// triggers and dead letters), invoke (call private functions),
        /// publish (post events), metrics (read /metrics).
        #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(
            sluice_server::auth::Scope::ALL.map(sluice_server::auth::Scope::as_str)
        ))]
        scope: String,
        /// A label.
        #[arg(long, default_value = "")]
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List tokens (ids and scopes, never secrets).
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Revoke a token by id.
    Revoke {
        /// Token id.
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// `sluice invocation ...`
#[derive(Debug, Subcommand)]
pub enum InvocationCommand {
    /// Show the status and result of an asynchronous invocation.
    Get {
        /// Invocation id.
        id: String,
        /// Wait until it has finished.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List asynchronous invocations (your token's; an admin token: all),
    /// newest first.
    List {
        /// Only this function's.
        #[arg(long)]
        function: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Cancel an asynchronous invocation: a queued one never runs, a
    /// running one is interrupted.
    Cancel {
        /// Invocation id.
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_well_formed() {
        // clap checks its own rules (names, conflicts, requirements) here,
        // not only when a user reaches the broken command.
        <super::Cli as clap::CommandFactory>::command().debug_assert();
    }
}
