//! Fleet load against a running control plane:
//! - `propagation`: N simulated nodes hold Sync streams and ACK every snapshot; the tool
//!   makes admin writes and measures, per node, the time from the write to the node's ACK.
//! - `ingest`: N simulated nodes each send one usage batch per second; the tool measures
//!   Report latency (the control plane's CPU is measured by the caller).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use clap::{Parser, Subcommand};
use sidecar_bench::{micros, quantile};
use sidecar_proto::v1::{
    self as pb, admin_service_client::AdminServiceClient, control_message, node_message,
    node_service_client::NodeServiceClient,
};
use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, metadata::AsciiMetadataValue, transport::Channel};

#[derive(Parser)]
struct Args {
    /// Control plane gRPC URL.
    #[arg(long, default_value = "http://127.0.0.1:9290")]
    control: String,
    /// Admin token.
    #[arg(long, env = "SIDECAR_ADMIN_TOKEN")]
    admin_token: String,
    /// Node token.
    #[arg(long, env = "SIDECAR_NODE_TOKEN")]
    node_token: String,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Admin write → ACK latency over N nodes.
    Propagation {
        #[arg(long, default_value_t = 50)]
        nodes: usize,
        #[arg(long, default_value_t = 20)]
        writes: usize,
    },
    /// Report ingestion from N nodes, one batch per second each.
    Ingest {
        #[arg(long, default_value_t = 500)]
        nodes: usize,
        #[arg(long, default_value_t = 30)]
        seconds: u64,
    },
}

fn bearer(token: &str) -> AsciiMetadataValue {
    format!("Bearer {token}").parse().expect("token is ASCII")
}

fn with_token<T>(msg: T, token: &AsciiMetadataValue) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut().insert("authorization", token.clone());
    r
}

/// Receipt times of snapshot versions, per node.
#[derive(Default)]
struct Seen {
    at: Mutex<HashMap<u64, Vec<Instant>>>,
    changed: Notify,
}

async fn propagation(
    control: &str,
    channel: Channel,
    admin: AsciiMetadataValue,
    node: AsciiMetadataValue,
    nodes: usize,
    writes: usize,
) -> anyhow::Result<()> {
    let seen = Arc::new(Seen::default());
    for i in 0..nodes {
        let (tx, rx) = mpsc::channel(16);
        let hello = pb::Hello { node_id: format!("bench-node-{i}"), boot_id: "bench".into(), ..Default::default() };
        tx.send(pb::NodeMessage { kind: Some(node_message::Kind::Hello(hello)) }).await?;
        // One connection per node, as real proxies have.
        let mut client = NodeServiceClient::new(Channel::from_shared(control.to_owned())?.connect().await?);
        let mut inbound = client.sync(with_token(ReceiverStream::new(rx), &node)).await?.into_inner();
        let seen = seen.clone();
        tokio::spawn(async move {
            while let Ok(Some(msg)) = inbound.message().await {
                if let Some(control_message::Kind::Snapshot(s)) = msg.kind {
                    let now = Instant::now();
                    let ack = pb::Ack { version: s.version, nonce: s.nonce };
                    let _ = tx.send(pb::NodeMessage { kind: Some(node_message::Kind::Ack(ack)) }).await;
                    seen.at.lock().unwrap().entry(s.version).or_default().push(now);
                    seen.changed.notify_waiters();
                }
            }
        });
    }
    let mut admin_client = AdminServiceClient::new(channel.clone());
    let mut samples = Vec::with_capacity(nodes * writes);
    for w in 0..writes {
        let patch = pb::SettingsPatch { queue_capacity: Some(500 + (w % 2) as i64), ..Default::default() };
        let started = Instant::now();
        let version = admin_client
            .update_settings(with_token(
                pb::UpdateSettingsRequest { patch: Some(patch), expected_resource_version: None },
                &admin,
            ))
            .await?
            .into_inner()
            .config_version;
        let deadline = started + Duration::from_secs(10);
        loop {
            let notified = seen.changed.notified();
            let count = seen.at.lock().unwrap().get(&version).map_or(0, Vec::len);
            if count >= nodes || Instant::now() > deadline {
                break;
            }
            let _ = tokio::time::timeout(Duration::from_millis(50), notified).await;
        }
        let times = seen.at.lock().unwrap().get(&version).cloned().unwrap_or_default();
        anyhow::ensure!(times.len() >= nodes, "write {w}: only {} of {nodes} nodes acked", times.len());
        samples.extend(times.iter().map(|t| t.duration_since(started)));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "{}",
        serde_json::json!({
            "nodes": nodes, "writes": writes,
            "p50_ms": micros(quantile(&mut samples, 0.5)) / 1000.0,
            "p99_ms": micros(quantile(&mut samples, 0.99)) / 1000.0,
            "max_ms": micros(quantile(&mut samples, 1.0)) / 1000.0,
        })
    );
    Ok(())
}

async fn ingest(control: &str, node: AsciiMetadataValue, nodes: usize, seconds: u64) -> anyhow::Result<()> {
    // One connection per ten nodes keeps the client side cheap while spreading load.
    let mut channels = Vec::new();
    for _ in 0..nodes.div_ceil(10) {
        channels.push(Channel::from_shared(control.to_owned())?.connect().await?);
    }
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..nodes {
        let mut client = NodeServiceClient::new(channels[i / 10].clone());
        let node = node.clone();
        tasks.spawn(async move {
            // Spread the nodes over the second, as real ones would be.
            tokio::time::sleep(Duration::from_millis((i as u64 * 1000) / nodes as u64)).await;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let (mut latencies, mut errors) = (Vec::new(), 0u32);
            for seq in 1..=seconds {
                tick.tick().await;
                let minute = (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()
                    as i64
                    / 60_000)
                    * 60_000;
                let records = (0..4)
                    .map(|r| pb::UsageRecord {
                        minute_ms: minute,
                        backend_id: format!("bkd_bench{}", r % 3),
                        model: format!("model-{r}"),
                        attempts: 10,
                        succeeded: 9,
                        errors_429: 1,
                        answered: 10,
                        prompt_tokens: 1000,
                        completion_tokens: 500,
                        total_tokens: 1500,
                        cost_usd: 0.01,
                        latency_ms_sum: 5000,
                        latency_histogram: vec![0, 1, 2, 3, 4, 0, 0, 0, 0, 0, 0],
                        pool: "primary".into(),
                        ..Default::default()
                    })
                    .collect();
                let batch = pb::ReportBatch {
                    node_id: format!("ingest-{i}"),
                    boot_id: "bench".into(),
                    seq,
                    records,
                    ..Default::default()
                };
                let sent = Instant::now();
                match client.report(with_token(batch, &node)).await {
                    Ok(_) => latencies.push(sent.elapsed()),
                    Err(_) => errors += 1,
                }
            }
            (latencies, errors)
        });
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for (l, e) in tasks.join_all().await {
        all.extend(l);
        errors += e;
    }
    println!(
        "{}",
        serde_json::json!({
            "nodes": nodes, "batches": all.len(), "errors": errors,
            "elapsed_s": start.elapsed().as_secs_f64(),
            "p50_ms": micros(quantile(&mut all, 0.5)) / 1000.0,
            "p99_ms": micros(quantile(&mut all, 0.99)) / 1000.0,
            "max_ms": micros(quantile(&mut all, 1.0)) / 1000.0,
        })
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let channel = Channel::from_shared(args.control.clone())?.connect().await?;
    let (admin, node) = (bearer(&args.admin_token), bearer(&args.node_token));
    match args.command {
        Cmd::Propagation { nodes, writes } => propagation(&args.control, channel, admin, node, nodes, writes).await,
        Cmd::Ingest { nodes, seconds } => ingest(&args.control, node, nodes, seconds).await,
    }
}
