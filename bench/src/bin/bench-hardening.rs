//! What the slow-client defences cost on the request path, measured in one process so the
//! baseline and the feature share one run: reading a typical chat body as the proxy does
//! (`Limited` + `collect`) bare and inside `tokio::time::timeout` (SIDECAR_BODY_TIMEOUT;
//! the body is already there, as it is for almost every request), the declared
//! `Content-Length` check (SIDECAR_MAX_BODY_BYTES before reading), and taking and giving
//! back a connection slot (SIDECAR_MAX_CONNECTIONS, the proxy's own `Connections`; once per
//! connection, not per request). Rounds alternate baseline and feature; medians of ns/op.
//! Prints JSON.

use std::{hint::black_box, sync::Arc, time::Duration};

use bytes::Bytes;
use clap::Parser;
use http::{HeaderMap, HeaderValue, header::CONTENT_LENGTH};
use http_body_util::{BodyExt, Full, Limited};
use sidecar_data_plane::state::Connections;

#[derive(Parser)]
struct Args {
    /// Operations per round.
    #[arg(long, default_value_t = 200_000)]
    ops: u32,
    /// Rounds (each measures baseline and feature once).
    #[arg(long, default_value_t = 15)]
    rounds: usize,
}

/// The body bench/run.py sends in its chat scenario.
const BODY: &str = r#"{"model":"bench","messages":[{"role":"user","content":"hello"}]}"#;
const LIMIT: usize = 4 << 20;

async fn read(body: Bytes) -> usize {
    Limited::new(Full::new(body), LIMIT).collect().await.map(|c| c.to_bytes().len()).unwrap_or(0)
}

/// Nanoseconds per operation of `op` over `ops` operations.
async fn per_op<F, Fut>(ops: u32, mut op: F) -> f64
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = usize>,
{
    let start = std::time::Instant::now();
    let mut sum = 0usize;
    for _ in 0..ops {
        sum = sum.wrapping_add(op().await);
    }
    black_box(sum);
    start.elapsed().as_nanos() as f64 / f64::from(ops)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // A current-thread runtime, as each of the proxy's workers is.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let body = Bytes::from_static(BODY.as_bytes());
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_LENGTH, HeaderValue::from(BODY.len()));
    let connections = Arc::new(Connections::new(1_000_000));
    let timeout = Duration::from_secs(30);
    let (mut bare, mut timed, mut check, mut nothing, mut slot) = (vec![], vec![], vec![], vec![], vec![]);
    rt.block_on(async {
        for _ in 0..args.rounds {
            bare.push(per_op(args.ops, || read(body.clone())).await);
            timed.push(
                per_op(args.ops, || async { tokio::time::timeout(timeout, read(body.clone())).await.unwrap_or(0) })
                    .await,
            );
            nothing.push(per_op(args.ops, || async { black_box(0usize) }).await);
            check.push(
                per_op(args.ops, || async {
                    let declared =
                        black_box(&headers).get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
                    usize::from(declared.is_some_and(|n| n > LIMIT as u64))
                })
                .await,
            );
            slot.push(per_op(args.ops, || async { usize::from(black_box(connections.admit()).is_some()) }).await);
        }
    });
    let (bare, timed, nothing) = (median(bare), median(timed), median(nothing));
    let out = serde_json::json!({
        "body_read_ns": bare,
        "body_read_with_timeout_ns": timed,
        "body_timeout_ns": timed - bare,
        "content_length_check_ns": median(check) - nothing,
        "connection_slot_ns": median(slot) - nothing,
        "ops": args.ops,
        "rounds": args.rounds,
    });
    println!("{out}");
    Ok(())
}
