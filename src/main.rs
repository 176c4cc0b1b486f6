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
        /// Do not look up the host names of upstream targets (for a machine without the DNS
        /// the gateway will have, such as a CI runner); everything else is checked.
        #[arg(long)]
        no_resolve: bool,
    },
    /// Print a JSON Schema of the config file (for editors: see config/tollgate.schema.json).
    Schema,
    /// Manage API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Print a fresh API key once, and the YAML line with its hash. With --config, file it in
    /// that config's store instead (a runtime key: works on the next call, no restart).
    New {
        /// The tenant the key is for.
        #[arg(long)]
        tenant: String,
        /// Key prefix.
        #[arg(long, default_value = "tg_live")]
        prefix: String,
        /// The key's id (default: the tenant and four characters of the key).
        #[arg(long)]
        id: Option<String>,
        /// File the key in this config's store (kind redis).
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Revoke a runtime key in the config's store; refused from the next call on.
    Revoke {
        /// The config whose store holds the key.
        #[arg(short, long)]
        config: PathBuf,
        /// The SHA-256 (hex) of the key, as `keys new` printed it.
        #[arg(long)]
        sha256: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tollgate::install_crypto_provider();
    match cli.command {
        Command::Check { config, no_resolve } => match if no_resolve {
            tollgate::config::load_unresolved(&config)
        } else {
            tollgate::config::load(&config)
        } {
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
        Command::Schema => {
            match serde_json::to_string_pretty(&tollgate::config::schema::schema()) {
                Ok(text) => println!("{text}"),
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            }
            ExitCode::SUCCESS
        }
        Command::Keys { command } => match keys(command) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tollgate: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn keys(command: KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::New {
            tenant,
            prefix,
            id,
            config,
        } => {
            let key = tollgate::keys::generate(&prefix);
            let sha = tollgate::keys::sha256_hex(&key);
            let id = id.unwrap_or_else(|| {
                format!(
                    "{tenant}-{}",
                    key[key.len() - 10..key.len() - 6].to_ascii_lowercase()
                )
            });
            match config {
                None => {
                    println!("API key (shown once; store it now): {key}");
                    println!("YAML for tenants.{tenant}.keys:");
                    println!("  - {{ id: {id}, sha256: \"{sha}\" }}");
                }
                Some(path) => {
                    let record = tollgate::store::KeyRecord {
                        tenant: tenant.clone(),
                        id: id.clone(),
                        plan: None,
                    };
                    let filed = sha.clone();
                    with_store(&path, |store| async move {
                        store.put_key(&filed, &record).await
                    })?;
                    println!("API key (shown once; store it now): {key}");
                    println!("Filed in the store as tg:key:{sha} (tenant {tenant}, id {id}).");
                }
            }
            Ok(())
        }
        KeysCommand::Revoke { config, sha256 } => {
            let sha = sha256.to_ascii_lowercase();
            anyhow::ensure!(
                sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit()),
                "--sha256 takes the 64 hex characters `keys new` printed"
            );
            let found = with_store(&config, |store| async move { store.delete_key(&sha).await })?;
            anyhow::ensure!(found, "no runtime key with that hash is on file");
            println!("Revoked.");
            Ok(())
        }
    }
}

/// Runs one store operation against the store of the config at `path`.
fn with_store<T, F, Fut>(path: &std::path::Path, op: F) -> anyhow::Result<T>
where
    F: FnOnce(tollgate::store::StoreHandle) -> Fut,
    Fut: std::future::Future<Output = Result<T, tollgate::store::StoreError>>,
{
    let config = tollgate::config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut store_config = config.store.clone();
    // A command line tool may wait longer than a request would.
    store_config.timeout = store_config.timeout.max(std::time::Duration::from_secs(5));
    let metrics = tollgate::telemetry::metrics::Metrics::unregistered()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let store = tollgate::store::StoreHandle::open(&store_config, &metrics)?;
        Ok(op(store).await?)
    })
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
