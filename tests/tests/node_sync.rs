//! NodeService end to end: snapshots, acks and nacks, regions, reports, shutdown.

use std::time::{Duration, Instant};

use sidecar_proto::v1::{self as pb, control_message, node_message};
use sidecar_tests::{ControlPlaneHarness, control::NodeClient, eventually};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Streaming};

/// A fake data-plane node speaking the Sync protocol.
struct FakeNode {
    tx: mpsc::Sender<pb::NodeMessage>,
    rx: Streaming<pb::ControlMessage>,
}

impl FakeNode {
    async fn connect(client: &mut NodeClient, node_id: &str, region: &str) -> Result<Self, tonic::Status> {
        let (tx, out) = mpsc::channel(16);
        tx.send(pb::NodeMessage {
            kind: Some(node_message::Kind::Hello(pb::Hello {
                node_id: node_id.into(),
                region: region.into(),
                software_version: "test".into(),
                config_version: 0,
                boot_id: "boot-1".into(),
            })),
        })
        .await
        .unwrap();
        let rx = client.sync(ReceiverStream::new(out)).await?.into_inner();
        Ok(Self { tx, rx })
    }

    /// The next snapshot, skipping quota grants and cooldown broadcasts.
    async fn next_snapshot(&mut self) -> pb::Snapshot {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(5), self.rx.message())
                .await
                .expect("a snapshot within 5 s")
                .expect("stream ok")
                .expect("stream open");
            match msg.kind {
                Some(control_message::Kind::Snapshot(s)) => return s,
                Some(control_message::Kind::Grants(_) | control_message::Kind::Cooldown(_)) => continue,
                other => panic!("expected a snapshot, got {other:?}"),
            }
        }
    }

    async fn ack(&self, s: &pb::Snapshot) {
        let ack = pb::Ack { version: s.version, nonce: s.nonce.clone() };
        self.tx.send(pb::NodeMessage { kind: Some(node_message::Kind::Ack(ack)) }).await.unwrap();
    }

    async fn nack(&self, s: &pb::Snapshot, error: &str) {
        let nack = pb::Nack { version: s.version, nonce: s.nonce.clone(), error: error.into() };
        self.tx.send(pb::NodeMessage { kind: Some(node_message::Kind::Nack(nack)) }).await.unwrap();
    }
}

fn backend(name: &str, key: &str, regions: &[&str]) -> pb::CreateBackendRequest {
    let mut mappings = std::collections::HashMap::new();
    mappings.insert("m".to_string(), pb::ModelMapping { native_id: "native-m".into(), ..Default::default() });
    pb::CreateBackendRequest {
        backend: Some(pb::BackendSpec {
            name: name.into(),
            base_url: "https://api.example.com/v1".into(),
            api_key: key.into(),
            model_mappings: mappings,
            regions: regions.iter().map(|r| r.to_string()).collect(),
            ..Default::default()
        }),
        validate: false,
    }
}

async fn node_view(cp: &ControlPlaneHarness, id: &str) -> Option<pb::Node> {
    let mut admin = cp.admin().await;
    admin.list_nodes(pb::ListNodesRequest {}).await.unwrap().into_inner().nodes.into_iter().find(|n| n.id == id)
}

#[tokio::test]
async fn a_node_syncs_acks_and_gets_the_next_snapshot_within_a_second_of_a_write() {
    let cp = ControlPlaneHarness::start().await;
    let mut admin = cp.admin().await;
    admin.create_backend(backend("b1", "sk-first-key-0123456789", &[])).await.unwrap();

    let mut node = FakeNode::connect(&mut cp.node().await, "node-a", "eu").await.unwrap();
    let first = node.next_snapshot().await;
    assert_eq!(first.backends.len(), 1);
    let sb = &first.backends[0];
    assert_eq!(sb.api_key, "sk-first-key-0123456789", "nodes get the plaintext key");
    assert_eq!(sb.model_mappings["m"].native_id, "native-m");
    assert_eq!(first.pools.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["primary", "fallback"]);
    assert_eq!(first.settings.as_ref().unwrap().queue_capacity, 500);
    assert!(!first.nonce.is_empty());
    node.ack(&first).await;
    let view = eventually("node-a acked", Duration::from_secs(5), || async {
        node_view(&cp, "node-a").await.filter(|n| n.acked_config_version == first.version)
    })
    .await;
    assert!(view.connected);
    assert_eq!(view.region, "eu");

    let started = Instant::now();
    let written = admin.create_backend(backend("b2", "sk-second-key-0123456789", &[])).await.unwrap().into_inner();
    let next = node.next_snapshot().await;
    let elapsed = started.elapsed();
    eprintln!("admin write to snapshot at the node: {elapsed:?}");
    assert!(elapsed < Duration::from_secs(1), "snapshot took {elapsed:?}");
    assert_eq!(next.version, written.config_version);
    assert_eq!(next.backends.len(), 2);
    assert_ne!(next.nonce, first.nonce);
}

#[tokio::test]
async fn a_nack_is_visible_in_list_nodes_and_a_later_ack_clears_it() {
    let cp = ControlPlaneHarness::start().await;
    let mut admin = cp.admin().await;
    let mut node = FakeNode::connect(&mut cp.node().await, "node-n", "").await.unwrap();
    let s1 = node.next_snapshot().await;
    node.ack(&s1).await;
    admin.create_backend(backend("b1", "sk-some-key-0123456789", &[])).await.unwrap();
    let s2 = node.next_snapshot().await;
    node.nack(&s2, "backend b1: unsupported thing").await;
    let view = eventually("nack recorded", Duration::from_secs(5), || async {
        node_view(&cp, "node-n").await.filter(|n| !n.last_nack_error.is_empty())
    })
    .await;
    assert_eq!(view.last_nack_error, "backend b1: unsupported thing");
    assert_eq!(view.last_nack_version, s2.version);
    assert_eq!(view.acked_config_version, s1.version, "the node still runs the old version");

    admin.delete_backend(pb::DeleteBackendRequest { id: "b1".into(), expected_resource_version: None }).await.unwrap();
    let s3 = node.next_snapshot().await;
    node.ack(&s3).await;
    eventually("nack cleared", Duration::from_secs(5), || async {
        node_view(&cp, "node-n").await.filter(|n| n.last_nack_error.is_empty() && n.acked_config_version == s3.version)
    })
    .await;
}

#[tokio::test]
async fn an_ack_with_a_wrong_nonce_does_not_count() {
    let cp = ControlPlaneHarness::start().await;
    let mut node = FakeNode::connect(&mut cp.node().await, "node-x", "").await.unwrap();
    let s = node.next_snapshot().await;
    // An answer to a snapshot that was never sent: if it counted, the node would show
    // version + 100.
    let forged = pb::Snapshot { version: s.version + 100, nonce: "forged".into(), ..s.clone() };
    node.ack(&forged).await;
    node.ack(&s).await;
    let view = eventually("ack", Duration::from_secs(5), || async {
        node_view(&cp, "node-x").await.filter(|n| n.acked_config_version == s.version)
    })
    .await;
    assert_eq!(view.acked_config_version, s.version);
}

#[tokio::test]
async fn nodes_only_receive_backends_allowed_in_their_region() {
    let cp = ControlPlaneHarness::start().await;
    let mut admin = cp.admin().await;
    admin.create_backend(backend("everywhere", "sk-aaaa-0123456789", &[])).await.unwrap();
    admin.create_backend(backend("eu-only", "sk-bbbb-0123456789", &["eu"])).await.unwrap();
    admin.create_backend(backend("us-only", "sk-cccc-0123456789", &["us"])).await.unwrap();
    let mut eu = FakeNode::connect(&mut cp.node().await, "eu-1", "eu").await.unwrap();
    let names: Vec<_> = eu.next_snapshot().await.backends.into_iter().map(|b| b.name).collect();
    assert_eq!(names.len(), 2);
    assert!(names.contains(&"everywhere".to_string()) && names.contains(&"eu-only".to_string()), "{names:?}");
    let mut nowhere = FakeNode::connect(&mut cp.node().await, "plain", "").await.unwrap();
    let names: Vec<_> = nowhere.next_snapshot().await.backends.into_iter().map(|b| b.name).collect();
    assert_eq!(names, ["everywhere"]);
}

#[tokio::test]
async fn sync_requires_a_node_token_and_a_hello_first() {
    let cp = ControlPlaneHarness::start().await;
    let err = FakeNode::connect(&mut cp.node_as(None).await, "n", "").await.err().unwrap();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = FakeNode::connect(&mut cp.node_as(Some(&cp.admin_token)).await, "n", "").await.err().unwrap();
    assert_eq!(err.code(), Code::PermissionDenied);

    let (tx, out) = mpsc::channel(1);
    tx.send(pb::NodeMessage { kind: Some(node_message::Kind::Ack(pb::Ack::default())) }).await.unwrap();
    let err = cp.node().await.sync(ReceiverStream::new(out)).await.err().unwrap();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("Hello"));
}

#[tokio::test]
async fn disconnected_nodes_show_as_disconnected() {
    let cp = ControlPlaneHarness::start().await;
    let mut node = FakeNode::connect(&mut cp.node().await, "node-gone", "").await.unwrap();
    let s = node.next_snapshot().await;
    node.ack(&s).await;
    eventually("connected", Duration::from_secs(5), || async {
        node_view(&cp, "node-gone").await.filter(|n| n.connected)
    })
    .await;
    drop(node);
    let view = eventually("disconnected", Duration::from_secs(5), || async {
        node_view(&cp, "node-gone").await.filter(|n| !n.connected)
    })
    .await;
    assert_eq!(view.acked_config_version, s.version, "the last acked version is remembered");
}

fn record(minute_ms: i64, requests: u64) -> pb::UsageRecord {
    pb::UsageRecord {
        minute_ms,
        backend_id: "bkd_x".into(),
        model: "gpt-4o".into(),
        attempts: requests,
        succeeded: requests,
        prompt_tokens: 10 * requests,
        latency_histogram: vec![requests],
        ..Default::default()
    }
}

#[tokio::test]
async fn a_repeated_report_seq_is_not_double_counted() {
    let mut cp = ControlPlaneHarness::start().await;
    let mut node = cp.node().await;
    let batch = |seq: u64, requests: u64| pb::ReportBatch {
        node_id: "node-r".into(),
        boot_id: "boot-1".into(),
        seq,
        records: vec![record(120_000, requests)],
        ..Default::default()
    };
    let ack = node.report(batch(1, 5)).await.unwrap().into_inner();
    assert_eq!((ack.seq, ack.applied), (1, true));
    let again = node.report(batch(1, 5)).await.unwrap().into_inner();
    assert_eq!((again.seq, again.applied), (1, false), "a retry gets the same ack and changes nothing");
    assert!(node.report(batch(2, 7)).await.unwrap().into_inner().applied);

    let bad = pb::ReportBatch { records: vec![record(120_001, 1)], ..batch(3, 1) };
    let err = node.report(bad).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("records[0].minute_ms"), "{}", err.message());

    let view = node_view(&cp, "node-r").await.unwrap();
    assert!(view.last_report_ms > 0);

    cp.stop().await;
    let store = sidecar_control_plane::store::Store::open(&cp.data_dir).unwrap();
    let rows = store.usage_minutes(0, i64::MAX).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].3.attempts, 12, "5 + 7, the retry not counted");
    assert_eq!(rows[0].3.prompt_tokens, 120);
}

#[tokio::test]
async fn impossible_counts_are_refused_by_name_and_totals_never_wrap() {
    let mut cp = ControlPlaneHarness::start().await;
    let mut node = cp.node().await;
    let batch = |seq: u64, record: pb::UsageRecord| pb::ReportBatch {
        node_id: "node-w".into(),
        boot_id: "boot-1".into(),
        seq,
        records: vec![record],
        ..Default::default()
    };
    assert!(node.report(batch(1, record(120_000, 25))).await.unwrap().into_inner().applied);
    // The attack from the review: succeeded = 2^64 - 1 wrapped the fleet total to 23.
    let wrap = pb::UsageRecord { succeeded: u64::MAX, ..record(120_000, 1) };
    let err = node.report(batch(2, wrap)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("records[0].succeeded"), "{}", err.message());
    for (field, bad) in [
        ("attempts", pb::UsageRecord { attempts: u64::MAX, ..record(120_000, 1) }),
        ("answered_errors", pb::UsageRecord { answered: 1, answered_errors: 2, ..record(120_000, 1) }),
        ("latency_histogram", pb::UsageRecord { latency_histogram: vec![u64::MAX, 2], ..record(120_000, 1) }),
        ("prompt_tokens", pb::UsageRecord { prompt_tokens: u64::MAX, ..record(120_000, 1) }),
        ("ttft_count", pb::UsageRecord { ttft_count: 5, ..record(120_000, 1) }),
    ] {
        let err = node.report(batch(3, bad)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{field}");
        assert!(err.message().starts_with(&format!("records[0].{field}")), "{field}: {}", err.message());
    }
    cp.stop().await;
    let store = sidecar_control_plane::store::Store::open(&cp.data_dir).unwrap();
    let rows = store.usage_minutes(0, i64::MAX).unwrap();
    assert_eq!((rows.len(), rows[0].3.succeeded), (1, 25), "nothing of the refused batches applied");
}

#[tokio::test]
async fn a_node_may_not_report_as_another_node_that_is_connected() {
    let cp = ControlPlaneHarness::start().await;
    let mut client = cp.node().await;
    // node-v is connected, its Sync stream said hello with boot-1.
    let mut victim = FakeNode::connect(&mut client, "node-v", "").await.unwrap();
    victim.next_snapshot().await;
    let batch = |seq: u64, boot: &str, sender: &str| pb::ReportBatch {
        node_id: "node-v".into(),
        boot_id: boot.into(),
        sender_boot_id: sender.into(),
        seq,
        records: vec![record(120_000, 1)],
        ..Default::default()
    };
    let err = client.report(batch(1, "boot-evil", "")).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("node_id node-v") && !err.message().contains("boot-1"), "{}", err.message());
    let err = client.report(batch(1, "boot-1", "boot-evil")).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "the sender is checked, not only the batch's origin");
    // The node itself reports, including batches an earlier run of it left behind.
    assert!(client.report(batch(1, "boot-1", "")).await.unwrap().into_inner().applied);
    assert!(client.report(batch(1, "boot-0", "boot-1")).await.unwrap().into_inner().applied);
    // Once it has gone, its next run may deliver what this one left.
    drop(victim);
    eventually("node-v disconnected", Duration::from_secs(5), || async {
        let mut c = cp.node().await;
        c.report(batch(2, "boot-1", "boot-2")).await.ok().map(|_| ())
    })
    .await;
}

#[tokio::test]
async fn shutdown_ends_open_sync_streams() {
    let mut cp = ControlPlaneHarness::start().await;
    let mut node = FakeNode::connect(&mut cp.node().await, "node-s", "").await.unwrap();
    node.next_snapshot().await;
    tokio::time::timeout(Duration::from_secs(10), cp.stop()).await.expect("graceful stop with a node connected");
    loop {
        match tokio::time::timeout(Duration::from_secs(5), node.rx.message()).await.unwrap() {
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable);
                break;
            }
            Ok(None) => break,
            // Grants sent before the shutdown may still be in the stream.
            Ok(Some(pb::ControlMessage { kind: Some(control_message::Kind::Grants(_)) })) => continue,
            Ok(Some(m)) => panic!("unexpected message {m:?}"),
        }
    }
}

#[tokio::test]
async fn last_seen_advances_while_a_node_stays_connected() {
    let cp = ControlPlaneHarness::start().await;
    let mut node = FakeNode::connect(&mut cp.node().await, "node-seen", "eu").await.unwrap();
    let first = node.next_snapshot().await;
    node.ack(&first).await;
    let view = eventually("node acked", Duration::from_secs(5), || async {
        node_view(&cp, "node-seen").await.filter(|n| n.acked_config_version == first.version)
    })
    .await;
    let seen_at_ack = view.last_seen_ms;
    // The node keeps talking on its stream (a real proxy sends its demand every second);
    // its last_seen follows, within the control plane's write interval (5 s).
    let beat = node.tx.clone();
    let heartbeat = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tick.tick().await;
            let demand = pb::Demand { backends: vec![], at_ms: 0, keys: vec![] };
            if beat.send(pb::NodeMessage { kind: Some(node_message::Kind::Demand(demand)) }).await.is_err() {
                return;
            }
        }
    });
    let later = eventually("last_seen advanced", Duration::from_secs(10), || async {
        node_view(&cp, "node-seen").await.filter(|n| n.last_seen_ms >= seen_at_ack + 4_000)
    })
    .await;
    assert!(later.connected);
    heartbeat.abort();
}

/// Issues a node token bound to `node_id` (and `region`); returns (token id, secret).
async fn node_token(cp: &ControlPlaneHarness, node_id: &str, region: &str) -> (String, String) {
    let request = pb::CreateTokenRequest {
        role: pb::Role::Node as i32,
        name: node_id.into(),
        node_id: node_id.into(),
        region: region.into(),
    };
    let resp = cp.admin().await.create_token(request).await.unwrap().into_inner();
    (resp.token.unwrap().id, resp.secret)
}

#[tokio::test]
async fn a_node_token_is_bound_to_its_node_id_and_region() {
    let cp = ControlPlaneHarness::start().await;
    let (a_id, a_secret) = node_token(&cp, "node-a", "eu").await;
    let mut as_a = cp.node_as(Some(&a_secret)).await;

    // Node A's token cannot sync as node B, nor as A from another region.
    let err = FakeNode::connect(&mut as_a, "node-b", "eu").await.err().unwrap();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("node-a") && err.message().contains("node-b"), "{}", err.message());
    let err = FakeNode::connect(&mut as_a, "node-a", "us").await.err().unwrap();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("region"), "{}", err.message());

    // Nor report as node B, even when B is not connected.
    let batch = |node: &str| pb::ReportBatch {
        node_id: node.into(),
        boot_id: "boot-1".into(),
        seq: 1,
        records: vec![record(120_000, 1)],
        ..Default::default()
    };
    let err = as_a.report(batch("node-b")).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    // As itself it syncs and reports.
    let mut a = FakeNode::connect(&mut as_a, "node-a", "eu").await.unwrap();
    a.next_snapshot().await;
    assert!(as_a.report(batch("node-a")).await.unwrap().into_inner().applied);

    // Both refusals are audited, naming the token and what it tried.
    let mut admin = cp.admin().await;
    let audit = admin.list_audit(pb::ListAuditRequest::default()).await.unwrap().into_inner().entries;
    let refused: Vec<_> = audit.iter().filter(|e| e.action == "NodeCredentialRefused").collect();
    assert_eq!(refused.len(), 3, "{audit:?}");
    assert!(refused.iter().all(|e| e.actor == a_id), "{refused:?}");
    assert!(refused.iter().any(|e| e.target.starts_with("Report as node node-b")), "{refused:?}");

    // The token list shows the binding and the last use, never the secret.
    let tokens = admin.list_tokens(pb::ListTokensRequest {}).await.unwrap().into_inner().tokens;
    let t = tokens.iter().find(|t| t.id == a_id).unwrap();
    assert_eq!((t.node_id.as_str(), t.region.as_str()), ("node-a", "eu"));
    assert!(t.last_used_ms > 0);
    assert!(!format!("{tokens:?}").contains(&a_secret));

    // Binding is for node tokens only, and a node id must be one.
    for (request, field) in [
        (pb::CreateTokenRequest { role: pb::Role::Admin as i32, node_id: "n".into(), ..Default::default() }, "node_id"),
        (
            pb::CreateTokenRequest { role: pb::Role::Node as i32, node_id: "bad id!".into(), ..Default::default() },
            "node_id",
        ),
        (pb::CreateTokenRequest { role: pb::Role::Node as i32, region: "eu".into(), ..Default::default() }, "region"),
    ] {
        let err = admin.create_token(request).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().starts_with(field), "{}", err.message());
    }
}

#[tokio::test]
async fn revoking_a_node_token_ends_its_stream_within_a_second_and_a_second_token_rotates_it() {
    let cp = ControlPlaneHarness::start().await;
    let (old_id, old_secret) = node_token(&cp, "node-r", "").await;
    let mut node = FakeNode::connect(&mut cp.node_as(Some(&old_secret)).await, "node-r", "").await.unwrap();
    node.next_snapshot().await;

    // Rotation: a second token for the same node works alongside the first.
    let (_, new_secret) = node_token(&cp, "node-r", "").await;
    let mut rotated = FakeNode::connect(&mut cp.node_as(Some(&new_secret)).await, "node-r", "").await.unwrap();
    rotated.next_snapshot().await;

    // Revoking the old one ends the stream opened with it, within a second.
    let revoked = Instant::now();
    cp.admin().await.revoke_token(pb::RevokeTokenRequest { id: old_id }).await.unwrap();
    let end = loop {
        match tokio::time::timeout(Duration::from_secs(1), node.rx.message()).await.expect("the stream ends within 1 s")
        {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream ended without saying why"),
            Err(status) => break status,
        }
    };
    assert!(revoked.elapsed() < Duration::from_secs(1));
    assert_eq!(end.code(), Code::Unauthenticated);
    assert!(end.message().contains("revoked"), "{}", end.message());
    let err = FakeNode::connect(&mut cp.node_as(Some(&old_secret)).await, "node-r", "").await.err().unwrap();
    assert_eq!(err.code(), Code::Unauthenticated);
    // The stream of the new token is untouched.
    cp.admin().await.create_backend(backend("after-revoke", "sk-after-revoke-0123456789", &[])).await.unwrap();
    // (Token writes are config writes too: skip the snapshot of the revocation.)
    while !rotated.next_snapshot().await.backends.iter().any(|b| b.name == "after-revoke") {}
}
