//! Streaming probe: sends `--requests` streamed chat requests (`--anthropic`: Anthropic
//! messages requests) one after another to `--url` and reports the time to first body byte (median, p99) and how many separate
//! body frames arrived per response (chunks not coalesced ≈ the upstream's chunk count).
//! With `--hold N --hold-secs S` it instead opens N concurrent streams and keeps them
//! open, reporting how many got a 200.

use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use sidecar_bench::{micros, quantile};

#[derive(Parser)]
struct Args {
    /// Chat completions URL.
    #[arg(long)]
    url: String,
    /// Sequential requests to measure.
    #[arg(long, default_value_t = 200)]
    requests: usize,
    /// Hold this many concurrent streams instead.
    #[arg(long, default_value_t = 0)]
    hold: usize,
    /// How long to hold them, seconds.
    #[arg(long, default_value_t = 20)]
    hold_secs: u64,
    /// Model to ask for.
    #[arg(long, default_value = "bench")]
    model: String,
    /// Send Anthropic Messages requests (`--url` is then a `/v1/messages` URL).
    #[arg(long)]
    anthropic: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let client: Client<_, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).pool_max_idle_per_host(usize::MAX).build_http();
    let max_tokens = if args.anthropic { r#""max_tokens":64,"# } else { "" };
    let body = Bytes::from(format!(
        r#"{{"model":"{}",{max_tokens}"stream":true,"messages":[{{"role":"user","content":"hi"}}]}}"#,
        args.model
    ));
    let request = || {
        let mut r = http::Request::post(&args.url).header("content-type", "application/json");
        if args.anthropic {
            r = r.header("anthropic-version", "2023-06-01");
        }
        r.body(Full::new(body.clone())).unwrap()
    };
    if args.hold > 0 {
        let until = Instant::now() + Duration::from_secs(args.hold_secs);
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..args.hold {
            let client = client.clone();
            let req = request();
            tasks.spawn(async move {
                let Ok(resp) = client.request(req).await else { return false };
                let ok = resp.status().is_success();
                let mut body = resp.into_body();
                while Instant::now() < until {
                    match tokio::time::timeout_at(until.into(), body.frame()).await {
                        Ok(Some(Ok(_))) => continue,
                        _ => break,
                    }
                }
                ok
            });
            if tasks.len() % 500 == 0 {
                tokio::task::yield_now().await;
            }
        }
        let ok = tasks.join_all().await.iter().filter(|&&ok| ok).count();
        println!("{}", serde_json::json!({ "held": args.hold, "ok": ok }));
        return Ok(());
    }
    let mut ttfb = Vec::with_capacity(args.requests);
    let mut frames = Vec::with_capacity(args.requests);
    for _ in 0..args.requests {
        let started = Instant::now();
        let resp = client.request(request()).await?;
        anyhow::ensure!(resp.status().is_success(), "status {}", resp.status());
        let mut body = resp.into_body();
        let mut first = None;
        let mut n = 0usize;
        while let Some(frame) = body.frame().await {
            if frame?.data_ref().is_some_and(|d| !d.is_empty()) {
                first.get_or_insert_with(|| started.elapsed());
                n += 1;
            }
        }
        ttfb.push(first.unwrap_or_default());
        frames.push(n);
    }
    frames.sort_unstable();
    let median_frames = frames[frames.len() / 2];
    println!(
        "{}",
        serde_json::json!({
            "ttfb_p50_us": micros(quantile(&mut ttfb, 0.5)),
            "ttfb_p99_us": micros(quantile(&mut ttfb, 0.99)),
            "frames_median": median_frames,
        })
    );
    Ok(())
}
