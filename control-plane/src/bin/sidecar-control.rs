//! `sidecar-control`: the control plane process.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sidecar_control_plane::{ControlConfig, ControlPlane, Flags, LogFormat, crypto::MasterKey};
use tokio::net::TcpListener;

/// Report ingestion allocates per batch; mimalloc keeps that cheap.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Sidecar control plane: source of truth for provider backends, pools and settings;
/// streams config to data-plane proxies.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    flags: Flags,
}

#[derive(Subcommand)]
enum Command {
    /// Print a fresh random encryption key (64 hex characters) for SIDECAR_ENCRYPTION_KEY.
    GenKey,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::GenKey) = cli.command {
        println!("{}", MasterKey::generate_hex());
        return ExitCode::SUCCESS;
    }
    let config = match ControlConfig::resolve(&cli.flags, &|name| std::env::var(name).ok()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sidecar-control: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(&config);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "control plane failed");
            eprintln!("sidecar-control: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: ControlConfig) -> anyhow::Result<()> {
    let cp = ControlPlane::open(&config)?;
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    if let Some(token) = cp.generated_admin_token() {
        eprintln!(
            "\nNo admin token was configured, so one was generated. It is shown only this once:\n\n    {token}\n\n\
             Use it with sidecarctl (--token or SIDECAR_TOKEN). Only its hash is stored.\n"
        );
    }
    let api = TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {} (SIDECAR_CONTROL_LISTEN): {e}", config.listen))?;
    let ops = TcpListener::bind(config.ops_listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {} (SIDECAR_CONTROL_OPS_LISTEN): {e}", config.ops_listen))?;
    cp.serve(api, ops, shutdown_signal()).await?;
    Ok(())
}

/// SIGTERM or SIGINT. The handlers are registered when this is called, not when the
/// future is first polled, so a signal that arrives right after start-up is not lost.
fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("shutdown signal received");
    }
}

fn init_logging(config: &ControlConfig) {
    let filter = tracing_subscriber::EnvFilter::new(&config.log_level);
    // Colour only on a terminal, and never with NO_COLOR set (no-color.org): logs that go
    // to a file, a pipe or journald stay plain text.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(colour);
    match config.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
