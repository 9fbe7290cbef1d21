//! What the fleet offers for several control-plane instances on one store (see
//! [`crate::cluster`]): nodes of other instances attached through a relay, broadcasts
//! passed on once per instance, cooldowns heard from the leader, and starting shares of
//! an instance that does not allocate.

use super::{CooldownNotice, Fleet, FleetMessage, Sender, Session};
use crate::{snapshot::NodeSnapshot, util::now_ms};

/// A node of this instance, as the leader is told of it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LocalNode {
    /// The node id.
    pub node_id: String,
    /// Its process.
    pub boot_id: String,
    /// Its session on this instance.
    pub session: u64,
    /// Its region.
    pub region: String,
}

impl Fleet {
    /// A node connected to another instance, which relays what `tx` receives to it.
    pub fn attach_relayed(&self, node: &LocalNode, fleet_session: u64, tx: Sender) {
        let session = Session { id: fleet_session, region: node.region.clone(), tx, remote: true };
        self.attach_session(&node.node_id, &node.boot_id, session);
    }

    /// Broadcasts also go to `tx`, once each, for the nodes of other instances.
    pub fn relay_broadcasts(&self, tx: Sender) {
        *self.peers.lock().expect("peers lock") = Some(tx);
    }

    /// Passes a message from the leader to the node if it is connected here; false if not.
    pub fn deliver(&self, node_id: &str, msg: FleetMessage) -> bool {
        let sessions = self.sessions.lock().expect("sessions lock");
        sessions.get(node_id).filter(|s| !s.remote).is_some_and(|s| s.tx.try_send(msg).is_ok())
    }

    /// Passes a broadcast from the leader to every node connected here (remembering a
    /// cooldown, for the snapshots of nodes that connect later).
    pub fn deliver_all(&self, msg: &FleetMessage) {
        if let FleetMessage::Cooldown(notice) = msg {
            self.heard(notice);
        }
        for s in self.sessions.lock().expect("sessions lock").values().filter(|s| !s.remote) {
            let _ = s.tx.try_send(msg.clone());
        }
    }

    /// Takes a cooldown (or its end, or a pause) the leader decided.
    fn heard(&self, n: &CooldownNotice) {
        let mut backends = self.backends.lock().expect("fleet lock");
        let fleet = backends.entry(n.backend_id.clone()).or_default();
        let cool =
            if n.model.is_empty() { &mut fleet.cool } else { fleet.model_cool.entry(n.model.clone()).or_default() };
        let until = now_ms() + n.remaining_ms.min(86_400_000) as i64;
        if n.exhausted {
            cool.exhausted_until_ms = until;
        } else {
            cool.consecutive = n.consecutive_count;
            cool.cooling_until_ms = if n.consecutive_count == 0 { 0 } else { until };
        }
    }

    /// The nodes connected to this instance.
    pub fn local_nodes(&self) -> Vec<LocalNode> {
        let boots = self.boots.lock().expect("boots lock");
        let mut nodes: Vec<LocalNode> = self
            .sessions
            .lock()
            .expect("sessions lock")
            .iter()
            .filter(|(_, s)| !s.remote)
            .map(|(id, s)| LocalNode {
                node_id: id.clone(),
                boot_id: boots.get(id).cloned().unwrap_or_default(),
                session: s.id,
                region: s.region.clone(),
            })
            .collect();
        nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        nodes
    }

    /// Forgets every share (an instance that stops allocating: what it knew is stale by
    /// the time it allocates again, and a fresh start learns from the nodes' reports).
    /// Cooldowns stay.
    pub fn forget_allocations(&self) {
        for fleet in self.backends.lock().expect("fleet lock").values_mut() {
            fleet.shares.0.clear();
            fleet.models.clear();
        }
        self.keys.lock().expect("keys lock").clear();
    }

    /// The snapshot's fleet fields as an instance that does not allocate now gives them:
    /// cooldowns as the leader announced them, every starting share 0.
    pub fn decorate_without_allocating(&self, node_id: &str, snapshot: &mut NodeSnapshot) {
        self.decorate_as(node_id, snapshot, false);
    }

    /// Whether the node is connected to this instance.
    pub fn is_local(&self, node_id: &str) -> bool {
        self.sessions.lock().expect("sessions lock").get(node_id).is_some_and(|s| !s.remote)
    }

    /// Whether the node's session here is `session`.
    pub fn has_session(&self, node_id: &str, session: u64) -> bool {
        self.sessions.lock().expect("sessions lock").get(node_id).is_some_and(|s| s.id == session)
    }
}
