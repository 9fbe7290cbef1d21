//! `sidecar-proxy`: the data-plane process.

use std::process::ExitCode;

use clap::Parser;
use sidecar_data_plane::{Flags, LogFormat, Proxy, ProxyConfig};
use tokio::net::TcpListener;

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
    let config = match ProxyConfig::resolve(&cli.flags, &|name| std::env::var(name).ok()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sidecar-proxy: {e}");
            return ExitCode::from(2);
        }
    };
    let filter = tracing_subscriber::EnvFilter::new(&config.log_level);
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
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

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
