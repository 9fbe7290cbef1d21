//! What a model's own limits cost on the request path, measured in one process so the
//! baseline and the feature share one run: taking a token for a request (the routing
//! fast path, `routing::take`, then giving it back) from a backend whose model has no
//! limits of its own, and from one whose model has (a second bucket beside the
//! backend's). Rounds alternate baseline and feature; medians of ns/op. Prints JSON.

use std::{collections::HashMap, hint::black_box, time::Duration};

use clap::Parser;
use sidecar_data_plane::{
    routing::{Bundle, take},
    snapshot::Snapshot,
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
    let route = bundle.route("m").expect("m is served");
    let started = std::time::Instant::now();
    for _ in 0..ops {
        let grant = take(&route, &[], Instant::now(), 0).expect("a token");
        grant.refund();
        black_box(&grant);
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
    println!(
        "{}",
        serde_json::json!({
            "rounds": args.rounds,
            "ops": args.ops,
            "take_ns": base,
            "take_with_model_bucket_ns": feature,
            "model_bucket_ns": feature - base,
        })
    );
}
