//! `sidecar-proxy`: the data-plane process.

use std::process::ExitCode;

use clap::Parser;
use sidecar_data_plane::{Flags, LogFormat, Proxy, ProxyConfig};
use tokio::net::TcpListener;

/// A proxy allocates and frees small buffers on every request; mimalloc does that with
/// far less contention and fragmentation than the system allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Sidecar proxy: an OpenAI-compatible gateway that keeps every provider backend inside
/// its rate limits. Config comes from the control plane.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    flags: Flags,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    sidecar_data_plane::config::raise_open_file_limit();
    let config = match ProxyConfig::resolve(&cli.flags, &|name| std::env::var(name).ok()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sidecar-proxy: {e}");
            return ExitCode::from(2);
        }
    };
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
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sidecar-proxy: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: ProxyConfig) -> anyhow::Result<()> {
    let proxy = Proxy::new(&config)?;
    let api = TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {} (SIDECAR_HOST/SIDECAR_PORT): {e}", config.listen))?;
    let ops = TcpListener::bind(config.ops_listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {} (SIDECAR_OPS_LISTEN): {e}", config.ops_listen))?;
    proxy.serve(api, ops, shutdown_signal()).await?;
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
