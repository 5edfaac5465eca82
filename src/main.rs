//! The `hookrelay` command: parses arguments, sets up logging, loads the
//! configuration and calls into the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hookrelay::{Application, Config, telemetry};
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(name = "hookrelay", version, about = "Self-hosted delivery-status relay")]
struct Cli {
    /// TOML configuration file (optional; defaults work with no file).
    #[arg(long, global = true, env = "HOOKRELAY_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the relay.
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Manage API keys.
    ApiKey {
        #[command(subcommand)]
        command: ApiKeyCommand,
    },
    /// Check the configuration and print it (secrets hidden).
    CheckConfig,
}

#[derive(Subcommand, Debug)]
enum ApiKeyCommand {
    /// Create a new API key and print it once.
    Create {
        #[arg(long, default_value = "created with hookrelay api-key create")]
        label: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("hookrelay: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init_logging(&config.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hookrelay: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("hookrelay: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, config: Config) -> anyhow::Result<()> {
    match command {
        Command::Serve => serve(config).await,
        Command::Migrate => {
            hookrelay::store::open(&config.database).await?;
            println!("migrations applied");
            Ok(())
        }
        Command::ApiKey { command: ApiKeyCommand::Create { label } } => {
            let key = hookrelay::app::create_api_key(&config, &label).await?;
            println!("{key}");
            Ok(())
        }
        Command::CheckConfig => {
            println!("configuration is valid\n{config:#?}");
            Ok(())
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let app = Application::build(config).await?;
    if let Some(key) = app.generated_api_key() {
        println!(
            "\nNo API key was configured, so hookrelay generated one. It is shown only this once;\n\
             only its hash is stored. Keep it somewhere safe:\n\n    {key}\n\n\
             Use it as:  Authorization: Bearer {key}\n"
        );
    }
    println!("hookrelay listening on http://{}", app.local_addr());
    let shutdown = CancellationToken::new();
    tokio::spawn(signal_shutdown(shutdown.clone()));
    app.run(shutdown).await
}

/// Fires `shutdown` on SIGINT or SIGTERM.
async fn signal_shutdown(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("received SIGINT"),
        () = terminate => tracing::info!("received SIGTERM"),
    }
    shutdown.cancel();
}
