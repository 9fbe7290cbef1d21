//! Several control-plane instances on one store (PostgreSQL). Every instance serves the
//! admin API, the console and node streams; one of them **leads**: it runs the fleet
//! allocator, retention sweeps, backups and active probes. The others relay to it what
//! their nodes report (demand, 429s, recoveries, budget spend) and pass to their nodes
//! what it decides (grants, cooldowns, budgets). With an embedded store there is one
//! instance, and it always leads.
//!
//! The link between instances ([`ClusterLink`]) belongs to the store: on PostgreSQL,
//! leadership is a session advisory lock (its holder leads while its session lives; a
//! leader that cannot confirm its session within a few seconds stops acting, and every
//! message it sends is fenced by its term), and messages travel through a table that
//! every instance follows (a notification wakes it, a short poll catches anything
//! missed).
//!
//! Safety across a change of leader: a new leader knows nothing of the grants the old
//! one issued. It therefore sends no grant for a warm-up of one lease and one
//! propagation delay, while nodes keep the grants they hold and then their fallback
//! shares (which the old leader sized to add up to the limit), and every connected node
//! reports to it — including the share it runs, which the allocator counts as in use
//! until the node runs a grant of the new leader's (see `fleet::share`).

mod relay;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use serde::{Deserialize, Serialize};
use tokio::{sync::mpsc, time::Instant};

use crate::fleet::{BackendDemand, BackendLive, FleetMessage, KeyDemand, LocalNode, RateLimited};
pub use relay::{announce_live, run, tick};

/// Whom a message is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Whichever instance leads when it arrives.
    Leader,
    /// One instance, by its link id.
    Instance(String),
    /// Every other instance.
    All,
}

/// A message from another instance.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The sender's link id.
    pub sender: String,
    /// What it said.
    pub body: serde_json::Value,
}

/// How instances on one store reach each other and agree on a leader.
pub trait ClusterLink: Send + Sync {
    /// This process's address among the instances (unique per process).
    fn id(&self) -> &str;
    /// Whether this instance leads now: it holds the leadership and confirmed it lately.
    fn leading(&self) -> bool;
    /// The instance name of the leader as the store last said, if known.
    fn leader_name(&self) -> Option<String>;
    /// Queues `body` for `to`; never waits (when the queue is full the message is
    /// dropped with a warning: every fleet message is either repeated each grant
    /// interval or announced again by the next snapshot).
    fn send(&self, to: Target, body: serde_json::Value);
    /// Messages for this instance; `None` after the first call.
    fn take_inbox(&self) -> Option<mpsc::Receiver<Delivery>>;
}

/// What instances tell each other.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum Envelope {
    /// To the leader, every grant interval: the nodes connected to the sender.
    Roster { nodes: Vec<LocalNode> },
    /// To the leader: a node connected to the sender.
    Attach { node: LocalNode },
    /// To the leader: a node's session on the sender ended.
    Detach { node_id: String, session: u64, goodbye: bool },
    /// To the leader: a node's demand report.
    Demand { node_id: String, backends: Vec<BackendDemand>, keys: Vec<KeyDemand> },
    /// To the leader: a node saw a 429.
    RateLimited { node_id: String, event: RateLimited },
    /// To the leader: a node succeeded after 429s.
    Recovered { node_id: String, backend_id: String, model: String },
    /// To the leader: a node heard the provider's budget is spent.
    Exhausted { node_id: String, backend_id: String, model: String, reset_ms: u64 },
    /// To the leader: client keys' spend in reports the sender applied: (key, minute, USD).
    Spent { spend: Vec<(String, i64, f64)> },
    /// From the leader to the instance a node is connected to.
    ToNode { node_id: String, message: FleetMessage },
    /// From the leader to every instance, for all their nodes.
    Broadcast { message: FleetMessage },
    /// From the leader to every instance: the fleet's live figures, for the dashboard.
    Live { backends: Vec<(String, BackendLive)> },
    /// From the leader to every instance: backends found failing (probes, passive).
    Health { backends: Vec<(String, crate::status::Health)> },
    /// To every instance: a provider reported a lower request limit for a backend.
    Learned { backend_id: String, rpm: u32 },
}

/// A node of another instance, attached to the fleet while this instance leads.
#[derive(Debug)]
struct Relayed {
    /// The instance's link id.
    instance: String,
    /// Its session there.
    session: u64,
    /// The session the fleet knows it by here.
    fleet_session: u64,
}

#[derive(Debug, Default)]
struct RelayState {
    /// Nodes of other instances, by node id (only while leading).
    relayed: HashMap<String, Relayed>,
    /// When each other instance last sent its roster.
    rosters: HashMap<String, Instant>,
    /// The leader's live figures, while following.
    live: HashMap<String, BackendLive>,
    /// When this instance's current term as leader began; `None` while following.
    term: Option<Instant>,
    next_session: u64,
}

/// This instance's place among the control-plane instances on its store.
pub struct Cluster {
    link: Option<Arc<dyn ClusterLink>>,
    name: String,
    state: Mutex<RelayState>,
}

impl Cluster {
    /// An instance named `name`, linked to the others by `link` (`None`: alone).
    pub fn new(name: String, link: Option<Arc<dyn ClusterLink>>) -> Self {
        // Sessions of relayed nodes are numbered apart from this instance's own.
        let state = RelayState { next_session: 1 << 48, ..Default::default() };
        Self { link, name, state: Mutex::new(state) }
    }

    /// This instance's name (`SIDECAR_INSTANCE_NAME`, else the host name).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether this instance leads (always, alone).
    pub fn leading(&self) -> bool {
        self.link.as_ref().is_none_or(|l| l.leading())
    }

    /// The leader's instance name, as far as known.
    pub fn leader_name(&self) -> Option<String> {
        match &self.link {
            None => Some(self.name.clone()),
            Some(link) => link.leader_name(),
        }
    }

    /// Whether other instances may share the store.
    pub fn linked(&self) -> bool {
        self.link.is_some()
    }

    fn to_leader(&self, envelope: &Envelope) {
        if let Some(link) = &self.link {
            link.send(Target::Leader, serde_json::to_value(envelope).expect("envelopes serialize"));
        }
    }

    /// Whether this instance allocates now: it leads, and its warm-up is over.
    fn allocating(&self, warm_up: std::time::Duration) -> bool {
        if self.link.is_none() {
            return true;
        }
        let term = self.state.lock().expect("relay lock").term;
        self.leading() && term.is_some_and(|t| t.elapsed() >= warm_up)
    }
}

/// Node events, as the node API hands them over: applied here when this instance leads,
/// relayed to the leader otherwise.
impl Cluster {
    /// A node's session started here (the fleet already has it).
    pub fn attached(&self, node: LocalNode) {
        if self.leading() {
            self.state.lock().expect("relay lock").relayed.remove(&node.node_id);
        } else {
            self.to_leader(&Envelope::Attach { node });
        }
    }

    /// A node's session here ended (the fleet already knows).
    pub fn detached(&self, node_id: &str, session: u64, goodbye: bool) {
        if !self.leading() {
            self.to_leader(&Envelope::Detach { node_id: node_id.to_owned(), session, goodbye });
        }
    }

    /// Whether a node event is for the leader elsewhere (then it was relayed there).
    fn relayed(&self, envelope: impl FnOnce() -> Envelope) -> bool {
        if self.leading() {
            return false;
        }
        self.to_leader(&envelope());
        true
    }

    /// A node's demand report; `true` if it must be applied here.
    pub fn demand(&self, node_id: &str, backends: &[BackendDemand], keys: &[KeyDemand]) -> bool {
        !self.relayed(|| Envelope::Demand {
            node_id: node_id.to_owned(),
            backends: backends.to_vec(),
            keys: keys.to_vec(),
        })
    }

    /// A node's 429; `true` if it must be applied here.
    pub fn rate_limited(&self, node_id: &str, event: &RateLimited) -> bool {
        !self.relayed(|| Envelope::RateLimited { node_id: node_id.to_owned(), event: event.clone() })
    }

    /// A node's recovery; `true` if it must be applied here.
    pub fn recovered(&self, node_id: &str, backend_id: &str, model: &str) -> bool {
        !self.relayed(|| Envelope::Recovered {
            node_id: node_id.to_owned(),
            backend_id: backend_id.to_owned(),
            model: model.to_owned(),
        })
    }

    /// A node heard a provider's budget is spent; `true` if it must be applied here.
    pub fn exhausted(&self, node_id: &str, backend_id: &str, model: &str, reset_ms: u64) -> bool {
        !self.relayed(|| Envelope::Exhausted {
            node_id: node_id.to_owned(),
            backend_id: backend_id.to_owned(),
            model: model.to_owned(),
            reset_ms,
        })
    }

    /// The leader's view of backend health changed: every instance publishes it.
    pub fn health_changed(&self, health: &HashMap<String, crate::status::Health>) {
        if let Some(link) = self.link.as_ref().filter(|l| l.leading()) {
            let backends = health.iter().map(|(k, v)| (k.clone(), *v)).collect();
            link.send(Target::All, serde_json::to_value(Envelope::Health { backends }).expect("envelopes serialize"));
        }
    }

    /// A node here reported a lower request limit: every instance uses it.
    pub fn limit_learned(&self, backend_id: &str, rpm: u32) {
        if let Some(link) = &self.link {
            let envelope = Envelope::Learned { backend_id: backend_id.to_owned(), rpm };
            link.send(Target::All, serde_json::to_value(envelope).expect("envelopes serialize"));
        }
    }

    /// Client keys' spend in a report applied here: the leader, which pushes budgets,
    /// hears of it too.
    pub fn spent(&self, spend: Vec<(String, i64, f64)>) {
        if !spend.is_empty() && !self.leading() {
            self.to_leader(&Envelope::Spent { spend });
        }
    }

    /// The fleet's live figures: this instance's own while it leads, else the leader's as
    /// it last announced them.
    pub fn live(&self, fleet: &crate::fleet::Fleet) -> HashMap<String, BackendLive> {
        if self.leading() { fleet.live() } else { self.state.lock().expect("relay lock").live.clone() }
    }

    /// Fills the fleet fields of a node's snapshot.
    pub fn decorate(&self, fleet: &crate::fleet::Fleet, node_id: &str, snapshot: &mut crate::snapshot::NodeSnapshot) {
        let timing = fleet.timing();
        if self.allocating(timing.lease + timing.propagation) {
            fleet.decorate(node_id, snapshot);
        } else {
            fleet.decorate_without_allocating(node_id, snapshot);
        }
    }
}
