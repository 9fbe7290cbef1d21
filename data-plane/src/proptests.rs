//! Property tests for the parsers at the edge, over inputs nobody wrote by hand: the
//! request body check and `model` splice, the usage scanner (JSON and SSE, split at any
//! chunk boundary, and arbitrary bytes), and `Retry-After`.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, header::RETRY_AFTER};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

use sidecar_proto::v1 as pb;

use crate::{
    config::{Flags, ProxyConfig},
    proxy::{ParsedRequest, ProxyError},
    snapshot::Snapshot,
    upstream::{Usage, UsageScanner, retry_after},
};

/// JSON values of bounded depth, with strings that need escaping.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        "\\PC{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Strings a snapshot field might hold: sane ones, URLs, junk.
fn text() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z0-9_-]{0,12}", "https?://[a-z.]{1,12}(:[0-9]{1,6})?(/[a-z0-9]{0,6}){0,2}", "\\PC{0,24}"]
}

fn snapshot_backend() -> impl Strategy<Value = pb::SnapshotBackend> {
    (
        (text(), text(), text(), text(), text()),
        (any::<u32>(), any::<u32>(), any::<u32>(), any::<u32>(), any::<Option<u32>>(), any::<bool>(), 0..100u32),
        prop::collection::btree_map(text(), (text(), any::<f64>(), any::<u32>()), 0..4),
        (prop_oneof![Just("healthy".to_string()), Just("error".to_string()), text()], any::<u64>()),
    )
        .prop_map(
            |(
                (id, name, base_url, api_key, pool),
                (timeout, rpm, tpm, weight, share, enabled, window_seconds),
                models,
                (health, cooldown),
            )| {
                pb::SnapshotBackend {
                    id,
                    name,
                    base_url,
                    api_key,
                    pool,
                    timeout_seconds: timeout % 1000,
                    rpm_limit: rpm,
                    tpm_limit: tpm,
                    weight,
                    initial_rpm_share: share,
                    window_seconds,
                    enabled,
                    model_mappings: models
                        .into_iter()
                        .map(|(k, (native_id, price, context_window))| {
                            let cost = pb::ModelCost { input: price, output: price, ..Default::default() };
                            (k, pb::ModelMapping { native_id, cost: Some(cost), context_window, ..Default::default() })
                        })
                        .collect(),
                    health,
                    cooldown_remaining_ms: cooldown,
                    ..Default::default()
                }
            },
        )
}

fn parse(bytes: Bytes) -> Result<ParsedRequest, ProxyError> {
    ParsedRequest::parse(bytes)
}

fn feed_split(stream: bool, body: &[u8], cuts: &[usize]) -> Option<Usage> {
    let mut scanner = UsageScanner::new(stream, crate::upstream::Dialect::OpenAi);
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (body.len() + 1)).collect();
    cuts.sort_unstable();
    let mut from = 0;
    for cut in cuts.into_iter().chain([body.len()]) {
        scanner.feed(&Bytes::copy_from_slice(&body[from..cut]));
        from = cut;
    }
    scanner.finish()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Splicing a new model into any body, then parsing, gives the original object with
    /// only `model` changed; the other bytes are the client's.
    #[test]
    fn the_model_splice_changes_only_the_model(
        fields in prop::collection::btree_map("[a-z_]{1,10}", json_value(), 0..6),
        model in "\\PC{1,20}",
        native in "\\PC{1,20}",
        pretty in any::<bool>(),
    ) {
        let mut object: Map<String, Value> = fields.into_iter().filter(|(k, _)| k != "model" && k != "stream_options").collect();
        object.insert("model".into(), Value::String(model.clone()));
        let body = if pretty { serde_json::to_vec_pretty(&object) } else { serde_json::to_vec(&object) }.unwrap();
        let parsed = parse(Bytes::from(body)).unwrap();
        prop_assert_eq!(&parsed.model, &model);
        let spliced: Map<String, Value> = serde_json::from_slice(&parsed.upstream_body(&native, false).unwrap()).unwrap();
        object.insert("model".into(), Value::String(native));
        prop_assert_eq!(spliced, object);
    }

    /// Asking for usage on a stream adds exactly `stream_options.include_usage`.
    #[test]
    fn asking_for_usage_adds_only_include_usage(
        fields in prop::collection::btree_map("[a-z_]{1,10}", json_value(), 0..6),
        options in prop::option::of(prop::collection::btree_map("[a-z]{1,6}", json_value(), 0..3)),
    ) {
        let mut object: Map<String, Value> = fields.into_iter().filter(|(k, _)| k != "model" && k != "stream_options").collect();
        object.insert("model".into(), json!("m"));
        object.insert("stream".into(), json!(true));
        if let Some(o) = &options {
            let o: Map<String, Value> = o.iter().filter(|(k, _)| *k != "include_usage").map(|(k, v)| (k.clone(), v.clone())).collect();
            object.insert("stream_options".into(), Value::Object(o));
        }
        let parsed = parse(Bytes::from(serde_json::to_vec(&object).unwrap())).unwrap();
        let out: Map<String, Value> = serde_json::from_slice(&parsed.upstream_body("m", true).unwrap()).unwrap();
        let mut expected = object.clone();
        let mut o = expected.get("stream_options").and_then(|v| v.as_object().cloned()).unwrap_or_default();
        o.insert("include_usage".into(), json!(true));
        expected.insert("stream_options".into(), Value::Object(o));
        prop_assert_eq!(out, expected);
    }

    /// Any bytes at all: the body check refuses or accepts, never panics.
    #[test]
    fn the_body_check_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = parse(Bytes::from(bytes));
    }

    /// Usage in a JSON body is found wherever the frames are cut.
    #[test]
    fn json_usage_is_found_across_any_frame_boundaries(
        prompt in 0u64..1_000_000, completion in 0u64..1_000_000,
        cuts in prop::collection::vec(any::<usize>(), 0..6),
        padding in "[a-z ]{0,300}",
    ) {
        let body = serde_json::to_vec(&json!({
            "id": "x", "choices": [{"message": {"content": padding}}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
        })).unwrap();
        let usage = feed_split(false, &body, &cuts);
        prop_assert_eq!(usage, Some(Usage { prompt, completion, total: prompt + completion, cached: 0, cache_write: 0 }));
    }

    /// The usage chunk of an SSE stream is found wherever the frames are cut.
    #[test]
    fn sse_usage_is_found_across_any_frame_boundaries(
        prompt in 0u64..1_000_000, completion in 0u64..1_000_000,
        chunks in 0usize..5,
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let mut body = String::new();
        for i in 0..chunks {
            body.push_str(&format!("data: {{\"choices\":[{{\"delta\":{{\"content\":\"t{i}\"}}}}]}}\n\n"));
        }
        body.push_str(&format!(
            "data: {{\"choices\":[],\"usage\":{{\"prompt_tokens\":{prompt},\"completion_tokens\":{completion},\"total_tokens\":{}}}}}\n\ndata: [DONE]\n\n",
            prompt + completion
        ));
        let usage = feed_split(true, body.as_bytes(), &cuts);
        prop_assert_eq!(usage, Some(Usage { prompt, completion, total: prompt + completion, cached: 0, cache_write: 0 }));
    }

    /// Arbitrary bytes, JSON or SSE, cut anywhere: the scanner never panics.
    #[test]
    fn the_usage_scanner_never_panics(
        bytes in prop::collection::vec(any::<u8>(), 0..512),
        cuts in prop::collection::vec(any::<usize>(), 0..6),
        stream in any::<bool>(),
    ) {
        let _ = feed_split(stream, &bytes, &cuts);
    }

    /// Any snapshot a control plane (or an impostor) could send: applied or refused with
    /// an error, never a panic.
    #[test]
    fn the_snapshot_check_never_panics(
        backends in prop::collection::vec(snapshot_backend(), 0..4),
        pools in prop::collection::vec((text(), any::<i32>(), any::<i32>()), 0..3),
        settings in any::<bool>(),
        version in any::<u64>(),
    ) {
        let snapshot = pb::Snapshot {
            version,
            backends,
            pools: pools.into_iter().map(|(name, order, spill)| pb::Pool { name, order, spill, ..Default::default() }).collect(),
            settings: settings.then(pb::Settings::default),
            ..Default::default()
        };
        if let Ok(applied) = Snapshot::try_from(&snapshot) {
            // What is accepted can be enforced: a window of 1-60 s allowing at least one
            // request, and a starting share within it.
            for b in &applied.backends {
                prop_assert!((1..=60).contains(&b.window_seconds), "{}", b.window_seconds);
                prop_assert!(b.window_limit() >= 1 && b.window_limit() <= b.rpm_limit);
                prop_assert!(b.initial_share.is_none_or(|s| s <= b.window_limit()));
            }
        }
    }

    /// Any config file: resolved, or refused in one line naming what is wrong.
    #[test]
    fn config_files_are_resolved_or_refused_in_one_line(
        lines in prop::collection::vec(
            (prop_oneof![
                Just("control_url"), Just("port"), Just("max_body_bytes"), Just("body_timeout"),
                Just("max_connections"), Just("outbox_batches"), Just("cache_key"), Just("workers"), Just("unknown"),
            ], prop_oneof![text().prop_map(|t| format!("{t:?}")), any::<i64>().prop_map(|n| n.to_string()), "\\PC{0,12}"]),
            0..6,
        ),
        junk in prop::option::of("\\PC{0,40}"),
    ) {
        let mut text: String = lines.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
        if let Some(junk) = junk {
            text.push_str(&junk);
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.toml");
        std::fs::write(&path, &text).unwrap();
        let flags = Flags { config: Some(path), ..Default::default() };
        if let Err(e) = ProxyConfig::resolve(&flags, &|_| None) {
            prop_assert!(!e.setting.is_empty());
            prop_assert!(!e.to_string().contains('\n'), "{}", e);
        }
    }

    /// Any Retry-After value: at most a day, never a panic; whole seconds are read as such.
    #[test]
    fn retry_after_is_bounded_and_never_panics(value in "\\PC{0,40}", secs in 0u64..100_000, huge in 1e19f64..1e300) {
        let mut headers = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(RETRY_AFTER, v);
            prop_assert!(retry_after(&headers).is_none_or(|d| d.as_secs() <= 86_400));
        }
        headers.insert(RETRY_AFTER, HeaderValue::from(secs));
        prop_assert_eq!(retry_after(&headers).unwrap().as_secs(), secs.min(86_400));
        headers.insert(RETRY_AFTER, HeaderValue::from_str(&huge.to_string()).unwrap());
        prop_assert_eq!(retry_after(&headers).unwrap().as_secs(), 86_400);
    }
}
