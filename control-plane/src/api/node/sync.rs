//! `NodeService.Sync`: one long-lived stream per node. The node says hello; it gets a
//! snapshot at once and after every config change, its fleet grants and cooldowns, and
//! its answers (ack/nack, demand, 429 events) reach the domain. The stream ends on
//! shutdown, when the node's credential is revoked, or when either side goes away.

use std::{collections::VecDeque, sync::Arc, time::Duration};

use rand::RngCore;
use sidecar_proto::v1::{self as pb, node_message::Kind};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Status, Streaming};
use tracing::{debug, info, warn};

use super::{NodeApi, SyncStream};
use crate::{
    api::{convert::node as convert, error::ApiError},
    fleet::{Fleet, FleetMessage, LocalNode},
    metrics,
    nodes::Hello,
    state::Shared,
};

/// How long a node has to say hello after opening the stream.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Snapshots whose answer we still accept; older ones are superseded anyway.
const PENDING_SNAPSHOTS: usize = 8;
/// Messages queued for a node (snapshots, grants, cooldowns) before it counts as far
/// behind.
const QUEUE: usize = 16;

impl NodeApi {
    pub(super) async fn open_sync(&self, request: Request<Streaming<pb::NodeMessage>>) -> Result<SyncStream, ApiError> {
        let who = self.node_principal(&request)?;
        let mut inbound = request.into_inner();
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
            Ok(Ok(Some(pb::NodeMessage { kind: Some(Kind::Hello(hello)) }))) => Hello::from(hello),
            Ok(Err(status)) => return Err(ApiError::Wire(status)),
            Err(_) => return Err(ApiError::Timeout("no Hello within 10 s of opening Sync".into())),
            Ok(_) => return Err(ApiError::Invalid("the first message on Sync must be Hello".into())),
        };
        if crate::validate::node_id("hello.node_id", &hello.node_id).is_err() {
            return Err(ApiError::invalid(
                "hello.node_id",
                "must be 1-128 characters of letters, digits, '-', '_' or '.'",
            ));
        }
        self.check_node(&who, "Sync", &hello.node_id, Some(&hello.region))?;
        self.note_use(&who);
        let (tx, rx) = mpsc::channel(QUEUE);
        let (fleet_tx, fleet_rx) = mpsc::channel(QUEUE);
        // A certificate is not revoked through the token list: only tokens are watched.
        let token_id = (!self.shared.node_client_certs).then_some(who.token_id);
        let session = Session { shared: self.shared.clone(), hello, tx, pending: VecDeque::new(), token_id };
        tokio::spawn(session.run(inbound, fleet_tx, fleet_rx));
        Ok(Box::pin(ReceiverStream::new(rx)))
    }
}

/// A node holds a config version above the store's (the store was restored from an older
/// backup, or replaced): the version is raised above it, in a write of its own, so the
/// config the node is sent next is newer than anything it ran and it never keeps an old
/// config under a version it already holds. Versions never go backwards.
async fn raise_version_to(shared: &Shared, node_id: &str, node_version: u64) {
    if node_version <= shared.store.config_version() {
        return;
    }
    let system = crate::auth::Principal {
        token_id: "system".into(),
        role: crate::store::Role::Admin,
        node_id: None,
        region: None,
    };
    let raised = shared
        .write(&system, "RaiseConfigVersion", |_| {
            let change = crate::store::ConfigChange { min_version: Some(node_version + 1), ..Default::default() };
            Ok::<_, ApiError>((change, format!("node {node_id}"), ()))
        })
        .await;
    match raised {
        Ok((version, ())) => {
            warn!(node = %node_id, node_version, version, "a node held a newer config version than the store; raised it")
        }
        Err(e) => warn!(node = %node_id, error = %e, "could not raise the config version above the node's"),
    }
}

/// One node's Sync stream.
struct Session {
    shared: Arc<Shared>,
    hello: Hello,
    tx: mpsc::Sender<Result<pb::ControlMessage, Status>>,
    /// (version, nonce) of snapshots sent and not yet answered.
    pending: VecDeque<(u64, String)>,
    /// The token the stream was opened with: revoking it ends the stream.
    token_id: Option<String>,
}

fn nonce() -> String {
    let mut bytes = [0u8; 12];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

impl Session {
    async fn run(
        mut self,
        mut inbound: Streaming<pb::NodeMessage>,
        fleet_tx: mpsc::Sender<FleetMessage>,
        mut fleet_rx: mpsc::Receiver<FleetMessage>,
    ) {
        let shared = self.shared.clone();
        let store = &shared.store;
        let node_id = self.hello.node_id.clone();
        let session = self.shared.nodes.connect(store, &self.hello, shared.cluster.name());
        shared.fleet.attach(&node_id, &self.hello.boot_id, session, &self.hello.region, fleet_tx);
        shared.cluster.attached(LocalNode {
            node_id: node_id.clone(),
            boot_id: self.hello.boot_id.clone(),
            session,
            region: self.hello.region.clone(),
        });
        info!(node = %node_id, region = %self.hello.region, has_version = self.hello.config_version, "node connected");
        raise_version_to(&shared, &node_id, self.hello.config_version).await;
        let mut config = self.shared.config();
        let mut shutdown = self.shared.shutdown();
        let mut tokens = self.shared.auth.subscribe();
        config.mark_changed();
        let mut goodbye = false;
        loop {
            tokio::select! {
                _ = tokens.changed() => {
                    if let Some(token) = self.token_id.as_deref().filter(|t| !shared.auth.holds(t)) {
                        warn!(node = %node_id, token, "the node's credential was revoked: closing its stream");
                        let _ = self.tx.send(Err(Status::unauthenticated("this node's credential was revoked"))).await;
                        break;
                    }
                }
                _ = shutdown.changed() => {
                    let _ = self.tx.send(Err(Status::unavailable("control plane shutting down"))).await;
                    break;
                }
                changed = config.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let state = config.borrow_and_update().clone();
                    let nonce = nonce();
                    let span = shared.traces.as_ref().map(|t| {
                        let attributes = vec![
                            sidecar_otel::KeyValue::new("sidecar.node", node_id.clone()),
                            sidecar_otel::KeyValue::new("sidecar.config_version", state.version as i64),
                        ];
                        t.child("snapshot push", sidecar_otel::Kind::Producer, None, attributes)
                    });
                    let mut snapshot = state.snapshot_for(&self.hello.region, nonce.clone());
                    shared.cluster.decorate(&shared.fleet, &node_id, &mut snapshot);
                    if self.tx.send(Ok(convert::snapshot_message(&snapshot))).await.is_err() {
                        break;
                    }
                    metrics::snapshot_pushed();
                    drop(span);
                    debug!(node = %node_id, version = state.version, "snapshot sent");
                    if self.pending.len() == PENDING_SNAPSHOTS {
                        self.pending.pop_front();
                    }
                    self.pending.push_back((state.version, nonce));
                }
                Some(message) = fleet_rx.recv() => {
                    // As the fleet itself does: a node too far behind to take a grant or
                    // a cooldown now gets the next one (or the cooldown with its next
                    // snapshot); the session never waits on it.
                    let cooldown = matches!(message, FleetMessage::Cooldown(_));
                    match self.tx.try_send(Ok(convert::fleet_message(message))) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) if cooldown => {
                            warn!(node = %node_id, "could not queue a cooldown broadcast");
                        }
                        Err(mpsc::error::TrySendError::Full(_)) => {}
                        Err(mpsc::error::TrySendError::Closed(_)) => break,
                    }
                }
                message = inbound.message() => match message {
                    Ok(Some(pb::NodeMessage { kind: Some(Kind::Goodbye(_)) })) => {
                        goodbye = true;
                        break;
                    }
                    Ok(Some(message)) => self.handle(message),
                    Ok(None) => break,
                    Err(status) => {
                        debug!(node = %node_id, %status, "sync stream error");
                        break;
                    }
                },
            }
        }
        shared.fleet.detach(&node_id, session, goodbye);
        shared.cluster.detached(&node_id, session, goodbye);
        self.shared.nodes.disconnect(store, &node_id, session);
        if goodbye {
            info!(node = %node_id, "node said goodbye");
        } else {
            info!(node = %node_id, "node disconnected");
        }
    }

    /// Takes the answer to a snapshot we sent; answers to anything else are ignored.
    fn answered(&mut self, version: u64, nonce: &str) -> bool {
        match self.pending.iter().position(|(v, n)| *v == version && n == nonce) {
            Some(i) => {
                self.pending.drain(..=i);
                true
            }
            None => {
                warn!(node = %self.hello.node_id, version, "answer to a snapshot that was not sent or was already answered");
                false
            }
        }
    }

    fn handle(&mut self, message: pb::NodeMessage) {
        let shared = self.shared.clone();
        let store = &shared.store;
        let node_id = self.hello.node_id.clone();
        shared.nodes.seen(store, &node_id);
        match message.kind {
            Some(Kind::Ack(ack)) if self.answered(ack.version, &ack.nonce) => {
                metrics::snapshot_answer(true);
                shared.nodes.acked(store, &node_id, ack.version);
            }
            Some(Kind::Nack(nack)) if self.answered(nack.version, &nack.nonce) => {
                metrics::snapshot_answer(false);
                warn!(node = %node_id, version = nack.version, error = %nack.error, "node rejected snapshot");
                shared.nodes.nacked(store, &node_id, nack.version, &nack.error);
            }
            Some(Kind::Ack(_) | Kind::Nack(_)) => {}
            Some(Kind::RateLimited(event)) => {
                metrics::rate_limit_event();
                let event = event.into();
                if shared.cluster.rate_limited(&node_id, &event) {
                    let settings = shared.config().borrow().settings.clone();
                    if let Some(record) = shared.fleet.rate_limited(&node_id, &event, &settings) {
                        Fleet::store_cooldown(store, &record);
                    }
                }
            }
            Some(Kind::Demand(demand)) => {
                let keys = convert::key_demand_from_pb(&demand.keys);
                let backends = convert::demand_from_pb(demand);
                if shared.cluster.demand(&node_id, &backends, &keys) {
                    shared.fleet.key_demand(&node_id, &keys);
                    shared.fleet.demand(&node_id, &backends);
                }
            }
            Some(Kind::Recovered(r)) if shared.cluster.recovered(&node_id, &r.backend_id, &r.model) => {
                shared.fleet.recovered(&node_id, &r.backend_id, &r.model);
            }
            Some(Kind::Recovered(_)) => {}
            Some(Kind::LimitLearned(l)) => {
                tokio::spawn(crate::health::learned_limit(shared.clone(), node_id.clone(), l.backend_id, l.rpm_limit));
            }
            Some(Kind::Exhausted(e)) => {
                // At most a day: a node's report cannot pause a backend for longer.
                let reset = Duration::from_millis(e.reset_ms.min(86_400_000));
                if shared.cluster.exhausted(&node_id, &e.backend_id, &e.model, reset.as_millis() as u64) {
                    shared.fleet.exhausted(&node_id, &e.backend_id, &e.model, reset);
                }
            }
            Some(Kind::Hello(_)) => warn!(node = %node_id, "ignoring a second Hello on one stream"),
            Some(Kind::Goodbye(_)) => {}
            None => {}
        }
    }
}
