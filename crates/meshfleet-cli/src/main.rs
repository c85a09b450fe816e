//! `meshfleet`: run and manage painlessMesh-compatible meshes from a terminal.
//!
//! Each subcommand lives in its own module under `src/cmd/` with an `Args` struct
//! (clap derive; its doc comment is the subcommand's help) and a
//! `run(args, &Context) -> anyhow::Result<()>` function. Adding one is one line in the
//! `subcommands!` list below.
//!
//! Exit codes: 0 success, 1 runtime error, 2 usage error (bad flags, bad config file).

mod context;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::context::{Context, Exit, UsageError};

/// Declares the subcommands, one line each: `Variant => module`. The module is
/// `src/cmd/<module>.rs`; it provides `Args` and `run`.
macro_rules! subcommands {
    ($($variant:ident => $module:ident,)*) => {
        mod cmd {
            $(pub(crate) mod $module;)*
        }

        #[derive(Subcommand)]
        enum Command {
            $($variant(cmd::$module::Args),)*
        }

        impl Command {
            fn run(self, ctx: &Context) -> anyhow::Result<()> {
                match self {
                    $(Self::$variant(args) => cmd::$module::run(args, ctx),)*
                }
            }
        }
    };
}

subcommands! {
    Node => node,
    Firmware => firmware,
    Sim => sim,
    Ota => ota,
    Gateway => gateway,
    Demo => demo,
}

/// Run and manage painlessMesh-compatible meshes.
#[derive(Parser)]
#[command(name = "meshfleet", version, propagate_version = true)]
#[command(long_about = "Run and manage painlessMesh-compatible meshes.\n\n\
    Logs go to stderr; set RUST_LOG to choose what (default: info), \
    e.g. RUST_LOG=meshfleet_runtime=debug.\n\n\
    Exit status: 0 success, 1 runtime error, 2 usage error \
    (`ota offer` has more: see its --help).")]
#[command(after_long_help = "Examples:\n  \
    meshfleet node --listen 0.0.0.0:5555 --node-id 1001     # start an access point\n  \
    meshfleet node --connect 192.168.1.10:5555              # join it, then type commands\n  \
    meshfleet node --help                                   # commands, events, more examples\n\n\
    A config file gives defaults, flags override them:\n  \
    [node]\n  listen = \"0.0.0.0:5555\"\n  connect = [\"192.168.1.10:5555\"]\n  node-id = 1001")]
struct Cli {
    /// TOML file with defaults for `meshfleet node` (its `[node]` table, e.g.
    /// `listen = "0.0.0.0:5555"`, `node-id = 1001`, `ota-dir = ...`) and `meshfleet gateway`
    /// (its `[gateway]` table, see `docs/gateway.md`, and its MQTT bridge's `[mqtt]` table, see
    /// `docs/mqtt.md`). Flags override it. Other tables are refused: no other command reads
    /// the file.
    #[arg(long, global = true, value_name = "FILE", env = "MESHFLEET_CONFIG")]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

fn main() -> ExitCode {
    // Usage errors exit with 2 here (clap's default).
    let cli = Cli::parse();
    init_logging();
    let result = Context::load(cli.config.as_deref()).and_then(|ctx| cli.command.run(&ctx));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some(Exit(code)) = e.downcast_ref::<Exit>() {
                return ExitCode::from(*code);
            }
            eprintln!("error: {}", error_text(&e));
            if e.downcast_ref::<UsageError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// An error and its causes on one line, each cause once: a context that already quotes
/// its cause (`cannot read x: x: No such file`) does not repeat it.
fn error_text(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let c = cause.to_string();
        if text.contains(&c) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&c);
    }
    text
}

/// `RUST_LOG` filter, to stderr: stdout carries the program's output. The default, `info`
/// without the runtime's link lines (a node prints those as events already); colours only
/// on a terminal.
fn init_logging() {
    use std::io::IsTerminal as _;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,meshfleet_runtime=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}
