//! The `hookrelay` command: parses arguments, sets up logging, loads the
//! configuration and calls into the library.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hookrelay::delivery::verify::{self, Headers, Verdict};
use hookrelay::domain::Scopes;
use hookrelay::domain::Secret;
use hookrelay::domain::signing::{Scheme, VerifyKey};
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
    /// Check a received webhook against a subscription's secret, as a
    /// subscriber would. Exit status: 0 valid, 1 invalid, 2 usage error.
    Verify(VerifyArgs),
}

#[derive(clap::Args, Debug)]
#[command(after_help = "Example:\n  export HOOKRELAY_VERIFY_SECRET=whsec_...\n  \
    hookrelay verify --headers-file request-head.txt --body-file body.json --now 1763820003")]
struct VerifyArgs {
    /// The subscription's secret (`whsec_...`), or its public key
    /// (`whpk_...`) for `standard-webhooks-ed25519`. Prefer the environment
    /// variable: it keeps the secret out of shell history and the process list.
    #[arg(
        long,
        env = "HOOKRELAY_VERIFY_SECRET",
        hide_env_values = true,
        value_name = "whsec_...|whpk_...",
        value_parser = secret_arg
    )]
    secret: Secret,
    /// The raw request body, byte for byte: a file, or `-` for standard input.
    #[arg(long, value_name = "PATH|-")]
    body_file: PathBuf,
    /// A request header, `Name: value`; repeat for each header.
    #[arg(long = "header", short = 'H', value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// A file of `Name: value` lines, such as a captured request head (blank
    /// lines and a leading `POST /path HTTP/1.1` are skipped); `-` for stdin.
    #[arg(long, value_name = "PATH|-")]
    headers_file: Option<PathBuf>,
    /// `standard-webhooks` or `courier`; detected from the headers when absent.
    #[arg(long, value_parser = scheme_arg)]
    scheme: Option<Scheme>,
    /// Most seconds the signature's time may be from now, either way.
    #[arg(long, default_value_t = 300)]
    tolerance_seconds: u32,
    /// Check as of this time (unix seconds) instead of now, e.g. an old capture's.
    #[arg(long, value_name = "UNIX_SECONDS")]
    now: Option<i64>,
}

/// Keeps the secret in a type that never prints (clap would quote a value
/// it failed to parse, so it is parsed later, with an error that does not).
fn secret_arg(s: &str) -> Result<Secret, std::convert::Infallible> {
    Ok(Secret::new(s))
}

fn scheme_arg(s: &str) -> Result<Scheme, String> {
    Scheme::parse(s).ok_or_else(|| "expected `standard-webhooks`, `standard-webhooks-ed25519` or `courier`".to_owned())
}

#[derive(Subcommand, Debug)]
enum ApiKeyCommand {
    /// Create a new API key and print it once (only its hash is stored).
    Create {
        /// Who or what the key is for.
        #[arg(long, alias = "label", default_value = "created with hookrelay api-key create")]
        name: String,
        /// `read` (message logs, histograms, deliveries), `send` (register
        /// messages, report events, tracking) or `admin` (everything);
        /// repeat or separate with commas for several.
        #[arg(long = "scope", value_name = "read|send|admin", value_delimiter = ',', default_value = "admin")]
        scopes: Vec<String>,
    },
    /// List the stored keys: id, name, prefix, scopes, created, last used.
    List,
    /// Revoke a stored key, by its id or its prefix.
    Revoke {
        #[arg(value_name = "ID|PREFIX")]
        key: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = match cli.command {
        // A consumer-side tool: no configuration, no logging set-up.
        Command::Verify(args) => return verify_command(args),
        command => command,
    };
    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("hookrelay: {e}");
            return ExitCode::from(2);
        }
    };
    if matches!(command, Command::Serve | Command::CheckConfig)
        && let Err(e) = hookrelay::app::check(&config)
    {
        eprintln!("hookrelay: {e}");
        return ExitCode::from(2);
    }
    telemetry::init_logging(&config.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hookrelay: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(command, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Once, on stderr (where the log goes too), each cause once.
            eprintln!("hookrelay: {}", hookrelay::telemetry::error_chain(e.as_ref()));
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
        Command::ApiKey { command } => api_key_command(command, &config).await,
        Command::CheckConfig => {
            println!("# configuration is valid; the settings in force, secrets hidden:\n");
            print!("{}", config.to_masked_toml());
            Ok(())
        }
        Command::Verify(_) => unreachable!("handled before the configuration is loaded"),
    }
}

/// `hookrelay api-key ...`.
async fn api_key_command(command: ApiKeyCommand, config: &Config) -> anyhow::Result<()> {
    match command {
        ApiKeyCommand::Create { name, scopes } => {
            let name = hookrelay::http::api_keys::check_name(&name).map_err(|e| anyhow::anyhow!("--name: {e}"))?;
            let scopes = Scopes::parse(&scopes.join(",")).map_err(|e| anyhow::anyhow!("--scope: {e}"))?;
            let (key, record) = hookrelay::app::create_api_key(config, name, scopes).await?;
            eprintln!("created {} ({}, scopes {}); the key is shown only this once:", record.id, record.name, scopes);
            println!("{key}");
        }
        ApiKeyCommand::List => {
            let keys = hookrelay::app::list_api_keys(config).await?;
            if keys.is_empty() {
                println!("no API keys are stored in the database");
            }
            let when = |ms: Option<i64>| ms.map_or_else(|| "never".to_owned(), hookrelay::clock::rfc3339);
            let rows: Vec<[String; 6]> = keys
                .iter()
                .map(|k| {
                    [
                        k.id.to_string(),
                        k.name.clone(),
                        k.prefix.clone().unwrap_or_else(|| "-".into()),
                        k.scopes.to_string(),
                        when(Some(k.created_at)),
                        when(k.last_used_at),
                    ]
                })
                .collect();
            print_table(&["ID", "NAME", "PREFIX", "SCOPES", "CREATED", "LAST USED"], &rows);
        }
        ApiKeyCommand::Revoke { key } => {
            let revoked = hookrelay::app::revoke_api_key(config, &key).await?;
            println!("revoked {} ({}); other processes stop accepting it within seconds", revoked.id, revoked.name);
        }
    }
    Ok(())
}

/// Prints rows under a header, each column as wide as its widest cell.
fn print_table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) {
    if rows.is_empty() {
        return;
    }
    let mut widths = header.map(|h| h.chars().count());
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// `hookrelay verify`: reads the inputs, prints the report, and exits 0
/// (valid), 1 (invalid) or 2 (the command cannot be carried out).
fn verify_command(args: VerifyArgs) -> ExitCode {
    let usage = |message: String| {
        eprintln!("hookrelay verify: {message}");
        ExitCode::from(2)
    };
    let secret = match VerifyKey::parse(args.secret.expose()) {
        Ok(secret) => secret,
        Err(e) => return usage(format!("the secret is not usable: {e}")),
    };
    let stdin = Path::new("-");
    if args.headers_file.as_deref() == Some(stdin) && args.body_file == stdin {
        return usage("only one of --body-file and --headers-file can be standard input".into());
    }
    let mut headers = Headers::new();
    if let Some(path) = &args.headers_file {
        let text = match read_input(path) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) => return usage(format!("cannot read {}: {e}", path.display())),
        };
        if let Err(e) = headers.add_file(&text) {
            return usage(format!("{}: {e}", path.display()));
        }
    }
    for (i, line) in args.headers.iter().enumerate() {
        if let Err(e) = headers.add_line(line) {
            return usage(format!("--header #{}: {e}", i + 1));
        }
    }
    let body = match read_input(&args.body_file) {
        Ok(body) => body,
        Err(e) => return usage(format!("cannot read {}: {e}", args.body_file.display())),
    };
    let report = verify::verify(&verify::Check {
        secret: &secret,
        headers: &headers,
        body: &body,
        scheme: args.scheme,
        now_ms: args.now.map_or_else(hookrelay::clock::now_ms, |s| s.saturating_mul(1000)),
        tolerance_seconds: i64::from(args.tolerance_seconds),
    });
    match report.verdict {
        Verdict::Valid => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Verdict::Ambiguous => {
            eprint!("hookrelay verify: {report}");
            ExitCode::from(2)
        }
        Verdict::Invalid(_) | Verdict::NoSignatureHeader => {
            print!("{report}");
            ExitCode::from(1)
        }
    }
}

/// A file's bytes, or standard input's for `-`.
fn read_input(path: &Path) -> std::io::Result<Vec<u8>> {
    if path == Path::new("-") {
        let mut bytes = Vec::new();
        std::io::stdin().read_to_end(&mut bytes)?;
        Ok(bytes)
    } else {
        std::fs::read(path)
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
    } else if app.stored_api_keys() > 0 {
        println!(
            "API keys: {} stored in the database (none in the configuration). Lost yours? Create another:\n    \
             hookrelay api-key create --name <who> --scope admin",
            app.stored_api_keys()
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
