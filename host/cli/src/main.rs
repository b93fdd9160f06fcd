//! The `sluice` binary.
//!
//! `serve` runs the server (`sluice-server`); every other command is a
//! client of the HTTP API (`sluice-client`, through `commands.rs`). Flags
//! are in `args.rs`, the limits among them made from the runtime's and the
//! server's tables of limits.

/// `println!` and `print!` for output that may go to a pipe closed early
/// (`sluice fn list | head -1`): a closed stdout ends the command quietly
/// instead of panicking the way std's macros do.
macro_rules! println {
    () => { $crate::stdout_write(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::stdout_write(format_args!("{}\n", format_args!($($arg)*))) };
}
macro_rules! print {
    ($($arg:tt)*) => { $crate::stdout_write(format_args!($($arg)*)) };
}

mod args;
mod commands;

/// Writes to stdout; a reader that went away ends the process, quietly.
fn stdout_write(text: std::fmt::Arguments<'_>) {
    use std::io::Write;
    if let Err(error) = std::io::stdout().lock().write_fmt(text) {
        quit_on(&error);
        panic!("failed printing to stdout: {error}");
    }
}

/// Ends the process at once, successfully, if `error` (of a write to
/// stdout) is a closed pipe.
pub(crate) fn quit_on(error: &std::io::Error) {
    if error.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
}

use args::{Cli, Command, LogFormat};
use clap::Parser;
use sluice_server::{ServeOptions, serve};
use tracing_subscriber::EnvFilter;

#[global_allocator]
static ALLOCATOR: sluice_runtime::allocator::Allocator = sluice_runtime::allocator::Allocator;

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_env("SLUICE_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,cranelift=warn,wasmtime=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal, not in log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// The flags every client command takes (`ClientArgs`), with a value.
const CLIENT_FLAGS: &[&str] = &["--server", "--token", "--data-dir", "--output", "-o"];

/// Moves client flags given before the command (`sluice --server URL fn
/// list`) after it, where clap parses them: each command has its own.
fn hoist_client_flags(args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let mut args = args.into_iter();
    let mut out: Vec<_> = args.next().into_iter().collect();
    let mut hoisted = Vec::new();
    let mut rest = args.peekable();
    while let Some(arg) = rest.peek() {
        let text = arg.to_string_lossy();
        let with_value = CLIENT_FLAGS.contains(&&*text);
        // `--server=URL`, and `-ojson` or `-o=json`.
        let joined = CLIENT_FLAGS
            .iter()
            .any(|flag| flag.starts_with("--") && text.starts_with(&format!("{flag}=")))
            || (text.len() > 2 && text.starts_with("-o"));
        if !with_value && !joined {
            break;
        }
        hoisted.push(rest.next().expect("peeked"));
        if with_value {
            match rest.next() {
                Some(value) => hoisted.push(value),
                None => break,
            }
        }
    }
    out.extend(rest);
    out.extend(hoisted);
    out
}

fn main() -> std::process::ExitCode {
    sluice_runtime::allocator::configure();
    let cli = Cli::parse_from(hoist_client_flags(std::env::args_os().collect()));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => {
                init_logging(args.log_format);
                serve(ServeOptions {
                    listen: args.listen,
                    data_dir: args.data_dir,
                    limits: args.limits.into(),
                    server_limits: args.server_limits.into(),
                    examples: args.examples,
                    admin_token: args.admin_token,
                    public_brokers: args.public_brokers,
                    salvage_journal: args.salvage_journal,
                    public_metrics: args.public_metrics,
                    dedupe_window: args.dedupe_window,
                    trace_retention: args.trace_retention,
                    cluster: (!args.nats.is_empty()).then(|| {
                        let mut cluster = sluice_server::ClusterOptions::new(args.nats);
                        cluster.credentials = args.nats_creds;
                        cluster.replicas = args.nats_replicas;
                        cluster.event_retention = args.event_retention;
                        cluster.event_max_bytes = args.event_max_bytes;
                        cluster.ack_wait =
                            args.nats_ack_wait.max(std::time::Duration::from_secs(1));
                        cluster.name = args.node_name.clone().unwrap_or_else(|| {
                            format!("sluice {} pid {}", args.listen, std::process::id())
                        });
                        cluster
                    }),
                })
                .await
            }
            Command::Function(command) => commands::run_function_command(command).await,
            Command::Trigger(command) => commands::run_trigger_command(command).await,
            Command::Token(command) => commands::run_token_command(command).await,
            Command::Invocation(command) => commands::run_invocation_command(command).await,
            Command::Event(command) => commands::run_event_command(command).await,
            Command::DeadLetter(command) => commands::run_dead_letter_command(command).await,
            Command::Broker(command) => commands::run_broker_command(command).await,
            Command::Schedule(command) => commands::run_schedule_command(command).await,
            Command::Apply { file, client } => commands::run_apply(&file, client).await,
            Command::Get { kind, client } => commands::run_get(kind, client).await,
            Command::Status { client } => commands::run_status(client).await,
            Command::Migrate {
                data_dir,
                nats,
                nats_creds,
                again,
            } => commands::run_migrate(&data_dir, nats, nats_creds, again).await,
            Command::Completions { shell } => {
                use clap::CommandFactory;
                clap_complete::generate(
                    shell,
                    &mut Cli::command(),
                    "sluice",
                    &mut std::io::stdout(),
                );
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::hoist_client_flags;

    fn hoist(args: &[&str]) -> Vec<String> {
        hoist_client_flags(args.iter().map(Into::into).collect())
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect()
    }

    #[test]
    fn client_flags_before_the_command_go_after_it() {
        assert_eq!(
            hoist(&[
                "sluice",
                "--server",
                "http://h:1",
                "-o",
                "json",
                "fn",
                "get",
                "x"
            ]),
            [
                "sluice",
                "fn",
                "get",
                "x",
                "--server",
                "http://h:1",
                "-o",
                "json"
            ]
        );
        assert_eq!(
            hoist(&["sluice", "--token=t", "trigger", "delete", "a"]),
            ["sluice", "trigger", "delete", "a", "--token=t"]
        );
        assert_eq!(
            hoist(&["sluice", "-ojson", "fn", "list"]),
            ["sluice", "fn", "list", "-ojson"]
        );
        // After the command, or anything else first: left as it is.
        let as_is = ["sluice", "fn", "list", "--server", "u"];
        assert_eq!(hoist(&as_is), as_is);
        let as_is = ["sluice", "--help", "--server", "u"];
        assert_eq!(hoist(&as_is), as_is);
        // A flag without its value: clap says so.
        assert_eq!(hoist(&["sluice", "--server"]), ["sluice", "--server"]);
    }
}
