//! What per-model and learned limits cost on the request path, measured in one process so
//! the baseline and the feature share one run:
//! - taking a token for a request (the routing fast path, `routing::take`, then giving it
//!   back) from a backend whose model has no limits of its own, and from one whose model
//!   has (a second bucket beside the backend's);
//! - reading the provider's rate-limit headers from a response's headers (done on every
//!   response), for a response that carries OpenAI's six `x-ratelimit-*` headers and for
//!   one that carries none.
//!
//! Rounds alternate baseline and feature; medians of ns/op. Prints JSON.

use std::{collections::HashMap, hint::black_box, time::Duration};

use clap::Parser;
use http::{HeaderMap, HeaderValue};
use sidecar_data_plane::{
    routing::{Bundle, take},
    snapshot::Snapshot,
    upstream::ratelimit,
};
use sidecar_proto::v1 as pb;
use tokio::time::Instant;

#[derive(Parser)]
struct Args {
    /// Operations per round.
    #[arg(long, default_value_t = 200_000)]
    ops: u32,
    /// Rounds (each measures baseline and feature once).
    #[arg(long, default_value_t = 15)]
    rounds: usize,
}

const MINUTE: Duration = Duration::from_secs(60);

/// A bundle of one backend serving model `m`, with `m` limited on its own or not.
fn bundle(model_rpm: Option<u32>) -> Bundle {
    let mapping = pb::ModelMapping { native_id: "native".into(), rpm_limit: model_rpm, ..Default::default() };
    let backend = pb::SnapshotBackend {
        id: "b".into(),
        name: "b".into(),
        base_url: "http://127.0.0.1:1/v1".into(),
        api_key: "k".into(),
        timeout_seconds: 5,
        rpm_limit: 1_000_000_000,
        pool: "primary".into(),
        enabled: true,
        weight: 1,
        model_mappings: HashMap::from([("m".to_string(), mapping)]),
        ..Default::default()
    };
    let settings = pb::Settings {
        cooldown_base_seconds: 30,
        cooldown_max_seconds: 600,
        queue_capacity: 100,
        queue_timeout_seconds: 30,
        failure_threshold: 3,
        error_cooldown_seconds: 30,
        bucket_burst: 1000,
        ..Default::default()
    };
    let snapshot = pb::Snapshot {
        version: 1,
        backends: vec![backend],
        pools: vec![pb::Pool { name: "primary".into(), ..Default::default() }],
        settings: Some(settings),
        ..Default::default()
    };
    let snapshot = Snapshot::try_from(&snapshot).expect("a valid snapshot");
    Bundle::prepare(&snapshot, &Bundle::empty(MINUTE), MINUTE, Instant::now())
}

/// Nanoseconds per take-and-refund on `bundle`'s route for `m`.
fn per_op(bundle: &Bundle, ops: u32) -> f64 {
    let route = bundle.route(sidecar_data_plane::snapshot::Api::OpenAi, "m").expect("m is served");
    let started = std::time::Instant::now();
    for _ in 0..ops {
        let grant = take(&route, &[], Instant::now(), 0).expect("a token");
        grant.refund();
        black_box(&grant);
    }
    started.elapsed().as_nanos() as f64 / f64::from(ops)
}

/// A response's headers as an OpenAI-compatible provider sends them.
fn response_headers(with_limits: bool) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [("content-type", "application/json"), ("x-request-id", "req_123"), ("openai-processing-ms", "412")] {
        h.insert(k, HeaderValue::from_static(v));
    }
    if with_limits {
        for (k, v) in [
            ("x-ratelimit-limit-requests", "10000"),
            ("x-ratelimit-remaining-requests", "9999"),
            ("x-ratelimit-reset-requests", "6ms"),
            ("x-ratelimit-limit-tokens", "2000000"),
            ("x-ratelimit-remaining-tokens", "1999985"),
            ("x-ratelimit-reset-tokens", "0s"),
        ] {
            h.insert(k, HeaderValue::from_static(v));
        }
    }
    h
}

/// Nanoseconds per reading of `headers`.
fn parse_per_op(headers: &HeaderMap, ops: u32) -> f64 {
    let started = std::time::Instant::now();
    for _ in 0..ops {
        black_box(ratelimit::parse(black_box(headers), std::time::SystemTime::now()));
    }
    started.elapsed().as_nanos() as f64 / f64::from(ops)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args = Args::parse();
    let plain = bundle(None);
    let limited = bundle(Some(1_000_000_000));
    let (mut base, mut feature) = (Vec::new(), Vec::new());
    for _ in 0..args.rounds {
        base.push(per_op(&plain, args.ops));
        feature.push(per_op(&limited, args.ops));
    }
    let (base, feature) = (median(base), median(feature));
    let (bare, limited) = (response_headers(false), response_headers(true));
    let (mut none, mut six) = (Vec::new(), Vec::new());
    for _ in 0..args.rounds {
        none.push(parse_per_op(&bare, args.ops));
        six.push(parse_per_op(&limited, args.ops));
    }
    println!(
        "{}",
        serde_json::json!({
            "rounds": args.rounds,
            "ops": args.ops,
            "take_ns": base,
            "take_with_model_bucket_ns": feature,
            "model_bucket_ns": feature - base,
            "limit_headers_absent_ns": median(none),
            "limit_headers_present_ns": median(six),
        })
    );
}
