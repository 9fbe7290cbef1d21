//! What the client-key check costs on the request path, measured in one process so the
//! baseline and the feature share one run: `proxy::caller::authenticate` as the proxy
//! calls it for every request — an anonymous request (no key: two header lookups), a
//! valid key sent as `Authorization: Bearer` among `--keys` keys in the bundle (SHA-256
//! of the key and a map lookup), and an unknown key (the same, and the error). Then what
//! a key's own limits add once it is known (`proxy::caller::admit`): a key with a request,
//! a token and a concurrency limit takes its share of each, and its permit is settled and
//! let go as the answer ends; time moves 1 ms per request. Rounds alternate the cases;
//! medians of ns/op, less an empty loop. Prints JSON.

use std::{hint::black_box, time::Duration};

use clap::Parser;
use http::{HeaderMap, HeaderValue};
use sha2::{Digest, Sha256};
use sidecar_data_plane::{
    proxy::caller::{admit, authenticate},
    routing::Bundle,
    snapshot::{ClientKey, Snapshot},
};

#[derive(Parser)]
struct Args {
    /// Operations per round.
    #[arg(long, default_value_t = 200_000)]
    ops: u32,
    /// Rounds (each measures every case once).
    #[arg(long, default_value_t = 15)]
    rounds: usize,
    /// Client keys in the bundle.
    #[arg(long, default_value_t = 10_000)]
    keys: usize,
}

fn per_op(ops: u32, mut op: impl FnMut() -> usize) -> f64 {
    let start = std::time::Instant::now();
    let mut sum = 0usize;
    for _ in 0..ops {
        sum = sum.wrapping_add(op());
    }
    black_box(sum);
    start.elapsed().as_nanos() as f64 / f64::from(ops)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn secret(i: usize) -> String {
    format!("sk-sc-{i:040}")
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let client_keys = (0..args.keys)
        .map(|i| ClientKey {
            id: format!("key_{i}").into(),
            hash: Sha256::digest(secret(i).as_bytes()).into(),
            team: "".into(),
            models: Vec::new(),
            pools: Vec::new(),
            // One key with every limit, far above what the run admits.
            rpm_limit: if i == 0 { 100_000_000 } else { 0 },
            tpm_limit: if i == 0 { 100_000_000 } else { 0 },
            max_concurrent: if i == 0 { 1_000 } else { 0 },
            expires_at_ms: None,
            enabled: true,
            initial_share: None,
            initial_tpm_share: None,
            initial_concurrent_share: None,
            has_budget: false,
        })
        .collect();
    let snapshot = Snapshot {
        version: 1,
        nonce: String::new(),
        backends: Vec::new(),
        pools: Vec::new(),
        settings: Default::default(),
        client_keys,
    };
    let window = Duration::from_secs(60);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let bundle =
        rt.block_on(async { Bundle::prepare(&snapshot, &Bundle::empty(window), window, tokio::time::Instant::now()) });
    let anonymous = HeaderMap::new();
    let mut valid = HeaderMap::new();
    valid.insert("authorization", HeaderValue::from_str(&format!("Bearer {}", secret(args.keys / 2)))?);
    let mut unknown = HeaderMap::new();
    unknown.insert("authorization", HeaderValue::from_str(&format!("Bearer {}", secret(args.keys + 1)))?);
    let now_ms = 1_000;
    let limited = bundle.limited_key("key_0").expect("key_0 has limits").0.clone();
    let start = tokio::time::Instant::now();
    let mut tick = 0u64;
    let (mut none, mut anon, mut good, mut bad, mut lim) = (vec![], vec![], vec![], vec![], vec![]);
    for _ in 0..args.rounds {
        none.push(per_op(args.ops, || black_box(0usize)));
        anon.push(per_op(args.ops, || usize::from(authenticate(&bundle, black_box(&anonymous), true, now_ms).is_ok())));
        good.push(per_op(args.ops, || usize::from(authenticate(&bundle, black_box(&valid), false, now_ms).is_ok())));
        bad.push(per_op(args.ops, || usize::from(authenticate(&bundle, black_box(&unknown), false, now_ms).is_ok())));
        lim.push(per_op(args.ops, || {
            tick += 1;
            let now = start + Duration::from_millis(tick);
            let permit = admit(&bundle, black_box(&limited), 100, now, now_ms).expect("admitted").expect("a permit");
            permit.settle(black_box(80));
            1
        }));
    }
    let nothing = median(none);
    let out = serde_json::json!({
        "anonymous_ns": median(anon) - nothing,
        "valid_key_ns": median(good) - nothing,
        "unknown_key_ns": median(bad) - nothing,
        "limited_key_admit_ns": median(lim) - nothing,
        "keys": args.keys,
        "ops": args.ops,
        "rounds": args.rounds,
    });
    println!("{out}");
    Ok(())
}
