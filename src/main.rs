#![forbid(unsafe_code)]
//! `tollgate`: parse the command line, load the config, run.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc instead of the system allocator: a proxied call allocates and frees a few hundred
/// small buffers, and with glibc's malloc that was about a sixth of the gateway's instructions
/// per call (see README, Benchmarks).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A reverse-proxy metering gateway.
#[derive(Parser)]
#[command(name = "tollgate", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// The config file.
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Validate a config file: prints `ok` or every error as FILE:LINE:COL: message.
    Check {
        /// The config file.
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Manage API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Print a fresh API key once, and the YAML line with its hash.
    New {
        /// The tenant the key is for.
        #[arg(long)]
        tenant: String,
        /// Key prefix.
        #[arg(long, default_value = "tg_live")]
        prefix: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match tollgate::config::load(&config) {
            Ok(_) => {
                println!("ok");
                ExitCode::SUCCESS
            }
            Err(errors) => {
                for e in errors.0 {
                    println!("{e}");
                }
                ExitCode::FAILURE
            }
        },
        Command::Serve { config } => {
            init_logging();
            let config = match tollgate::config::load(&config) {
                Ok(c) => c,
                Err(errors) => {
                    for e in errors.0 {
                        eprintln!("{e}");
                    }
                    return ExitCode::FAILURE;
                }
            };
            match tollgate::app::serve(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("tollgate: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Keys {
            command: KeysCommand::New { tenant, prefix },
        } => {
            let key = tollgate::keys::generate(&prefix);
            let id = format!("{tenant}-{}", &key[key.len() - 4..].to_ascii_lowercase());
            println!("API key (shown once; store it now): {key}");
            println!("YAML for tenants.{tenant}.keys:");
            println!(
                "  - {{ id: {id}, sha256: \"{}\" }}",
                tollgate::keys::sha256_hex(&key)
            );
            ExitCode::SUCCESS
        }
    }
}

/// Logs go to stderr: JSON lines when not on a terminal, human-readable otherwise. The level
/// comes from `TOLLGATE_LOG` (default `info`). pingora's own `log` records are included.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TOLLGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::io::stderr().is_terminal() {
        builder.init();
    } else {
        builder.json().init();
    }
}
