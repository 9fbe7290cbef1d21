//! The relay between instances: the leader attaches the nodes of the others to its fleet
//! (each through a channel whose messages go to that node's instance), the others pass
//! what the leader says to their nodes; and every grant interval, the roster and the
//! change of leadership.

use std::{sync::Arc, time::Duration};

use tokio::{sync::mpsc, time::Instant};
use tracing::{info, warn};

use super::{Cluster, ClusterLink, Delivery, Envelope, Relayed, Target};
use crate::{
    fleet::{Fleet, LocalNode},
    state::Shared,
};

/// An instance whose roster has not arrived for this many grant intervals is gone: its
/// nodes are detached (they reconnect to another instance).
const SILENT_ROSTERS: u32 = 3;

fn send(link: &Arc<dyn ClusterLink>, to: Target, envelope: &Envelope) {
    link.send(to, serde_json::to_value(envelope).expect("envelopes serialize"));
}

/// Runs this instance's part in the cluster until shutdown: passes the fleet's broadcasts
/// to the other instances while leading, and handles what they send.
pub async fn run(shared: Arc<Shared>) {
    let Some(link) = shared.cluster.link.clone() else { return };
    let Some(mut inbox) = link.take_inbox() else { return };
    let (peers, mut broadcasts) = mpsc::channel(1024);
    shared.fleet.relay_broadcasts(peers);
    let mut shutdown = shared.shutdown();
    loop {
        tokio::select! {
            Some(message) = broadcasts.recv() => {
                if shared.cluster.leading() {
                    send(&link, Target::All, &Envelope::Broadcast { message });
                }
            }
            Some(delivery) = inbox.recv() => handle(&shared, &link, delivery),
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

fn handle(shared: &Arc<Shared>, link: &Arc<dyn ClusterLink>, delivery: Delivery) {
    let envelope = match serde_json::from_value::<Envelope>(delivery.body) {
        Ok(e) => e,
        Err(error) => {
            // Another software version may say things this one does not know.
            warn!(%error, sender = %delivery.sender, "ignoring a message from another instance");
            return;
        }
    };
    let (fleet, cluster) = (&shared.fleet, &shared.cluster);
    let sender = delivery.sender;
    match envelope {
        Envelope::Roster { nodes } => cluster.roster(fleet, link, &sender, nodes),
        Envelope::Attach { node } => cluster.attach_relayed(fleet, link, &sender, node),
        Envelope::Detach { node_id, session, goodbye } => {
            cluster.detach_relayed(fleet, &sender, &node_id, Some(session), goodbye);
        }
        Envelope::Demand { node_id, backends, keys } => {
            fleet.key_demand(&node_id, &keys);
            fleet.demand(&node_id, &backends);
        }
        Envelope::RateLimited { node_id, event } => {
            let settings = shared.config().borrow().settings.clone();
            if let Some(record) = fleet.rate_limited(&node_id, &event, &settings) {
                Fleet::store_cooldown(&shared.store, &record);
            }
        }
        Envelope::Recovered { node_id, backend_id, model } => fleet.recovered(&node_id, &backend_id, &model),
        Envelope::Exhausted { node_id, backend_id, model, reset_ms } => {
            fleet.exhausted(&node_id, &backend_id, &model, Duration::from_millis(reset_ms.min(86_400_000)));
        }
        Envelope::Spent { spend } => shared.budgets.add(&spend),
        Envelope::ToNode { node_id, message } => {
            fleet.deliver(&node_id, message);
        }
        Envelope::Broadcast { message } => fleet.deliver_all(&message),
        Envelope::Live { backends } => {
            cluster.state.lock().expect("relay lock").live = backends.into_iter().collect();
        }
        Envelope::Health { backends } => {
            tokio::spawn(crate::health::heard(shared.clone(), backends.into_iter().collect()));
        }
        Envelope::Learned { backend_id, rpm } => {
            tokio::spawn(crate::health::heard_learned(shared.clone(), backend_id, rpm));
        }
    }
}

impl Cluster {
    /// Another instance's roster: its nodes are attached here, and those it no longer
    /// lists detached.
    fn roster(&self, fleet: &Fleet, link: &Arc<dyn ClusterLink>, instance: &str, nodes: Vec<LocalNode>) {
        self.state.lock().expect("relay lock").rosters.insert(instance.to_owned(), Instant::now());
        let gone: Vec<String> = {
            let state = self.state.lock().expect("relay lock");
            state
                .relayed
                .iter()
                .filter(|(id, r)| r.instance == instance && !nodes.iter().any(|n| &n.node_id == *id))
                .map(|(id, _)| id.clone())
                .collect()
        };
        for id in gone {
            self.detach_relayed(fleet, instance, &id, None, false);
        }
        for node in nodes {
            self.attach_relayed(fleet, link, instance, node);
        }
    }

    /// A node of `instance` joins the fleet here (unless it already has, or is connected
    /// to this instance itself).
    fn attach_relayed(&self, fleet: &Fleet, link: &Arc<dyn ClusterLink>, instance: &str, node: LocalNode) {
        if !self.leading() || fleet.is_local(&node.node_id) {
            return;
        }
        let fleet_session = {
            let mut state = self.state.lock().expect("relay lock");
            state.rosters.entry(instance.to_owned()).or_insert_with(Instant::now);
            if state.relayed.get(&node.node_id).is_some_and(|r| r.instance == instance && r.session == node.session) {
                return;
            }
            state.next_session += 1;
            let fleet_session = state.next_session;
            let relayed = Relayed { instance: instance.to_owned(), session: node.session, fleet_session };
            state.relayed.insert(node.node_id.clone(), relayed);
            fleet_session
        };
        let (tx, mut rx) = mpsc::channel(64);
        let (link, to, node_id) = (link.clone(), instance.to_owned(), node.node_id.clone());
        // Ends when the fleet drops the session.
        tokio::spawn(async move {
            while let Some(message) = rx.recv().await {
                send(&link, Target::Instance(to.clone()), &Envelope::ToNode { node_id: node_id.clone(), message });
            }
        });
        fleet.attach_relayed(&node, fleet_session, tx);
    }

    /// A node of `instance` left it (its `session` there, or whichever it had).
    fn detach_relayed(&self, fleet: &Fleet, instance: &str, node_id: &str, session: Option<u64>, goodbye: bool) {
        let fleet_session = {
            let mut state = self.state.lock().expect("relay lock");
            let matches = state
                .relayed
                .get(node_id)
                .is_some_and(|r| r.instance == instance && session.is_none_or(|s| s == r.session));
            if !matches {
                return;
            }
            state.relayed.remove(node_id).map(|r| r.fleet_session)
        };
        if let Some(fleet_session) = fleet_session {
            fleet.detach(node_id, fleet_session, goodbye);
        }
    }
}

/// This instance's turn every grant interval: notices a change of leadership, sends its
/// roster to the leader (following) or drops the nodes of instances gone silent (leading),
/// and says whether to allocate now. Alone, it always allocates.
pub fn tick(shared: &Shared) -> bool {
    let cluster = &shared.cluster;
    let Some(link) = &cluster.link else { return true };
    let fleet = &shared.fleet;
    let timing = fleet.timing();
    let leading = link.leading();
    let mut dropped = Vec::new();
    let mut stepped_down = false;
    {
        let mut state = cluster.state.lock().expect("relay lock");
        match (state.term, leading) {
            (None, true) => {
                info!(instance = %cluster.name, "leading: allocating after a warm-up of one lease");
                state.term = Some(Instant::now());
                // Spend reported while following went to the leader then.
                shared.budgets.forget();
            }
            (Some(_), false) => {
                warn!(instance = %cluster.name, "no longer leading");
                state.term = None;
                stepped_down = true;
                state.rosters.clear();
                dropped.extend(state.relayed.drain().map(|(id, r)| (id, r.fleet_session)));
            }
            _ => {}
        }
        if leading {
            let silent = timing.interval * SILENT_ROSTERS;
            let gone: Vec<String> =
                state.rosters.iter().filter(|(_, at)| at.elapsed() > silent).map(|(i, _)| i.clone()).collect();
            for instance in gone {
                warn!(%instance, "an instance went silent: its nodes leave the fleet until they reconnect");
                state.rosters.remove(&instance);
                let ids: Vec<String> =
                    state.relayed.iter().filter(|(_, r)| r.instance == instance).map(|(id, _)| id.clone()).collect();
                for id in ids {
                    let r = state.relayed.remove(&id).expect("listed");
                    dropped.push((id, r.fleet_session));
                }
            }
        }
    }
    for (id, fleet_session) in dropped {
        fleet.detach(&id, fleet_session, false);
    }
    if !leading {
        if stepped_down {
            fleet.forget_allocations();
        }
        send(link, Target::Leader, &Envelope::Roster { nodes: fleet.local_nodes() });
        return false;
    }
    cluster.allocating(timing.lease + timing.propagation)
}

/// After an allocation round: the live figures go to the other instances.
pub fn announce_live(shared: &Shared) {
    if let Some(link) = &shared.cluster.link {
        let backends = shared.fleet.live().into_iter().collect();
        send(link, Target::All, &Envelope::Live { backends });
    }
}
