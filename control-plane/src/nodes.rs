//! Which nodes are connected, and what each last acknowledged. Every change is also
//! saved to the `nodes` tree so ListNodes shows nodes that have gone away.

use std::{
    collections::HashMap,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use tracing::warn;

use crate::{
    metrics,
    store::{NodeRecord, Store},
    util::now_ms,
};

/// What a node says when it opens its Sync stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hello {
    /// Its id (validated).
    pub node_id: String,
    /// Its region; empty = none.
    pub region: String,
    /// Its software version.
    pub software_version: String,
    /// Config version it already runs (from its cache); 0 = none.
    pub config_version: u64,
    /// Its process's boot id.
    pub boot_id: String,
}

/// Connected nodes by id; a node id has at most one live session (the newest).
#[derive(Default)]
pub struct NodeRegistry {
    /// Live session and boot id per node.
    live: Mutex<HashMap<String, (u64, String)>>,
    next_session: AtomicU64,
    /// Serialises read-modify-write of node records (a report and an ACK for the same
    /// node can arrive at once), and holds when each node's record was last written, so
    /// that "seen" on every stream message costs a store write at most every
    /// [`SEEN_WRITE_MS`].
    records: Mutex<HashMap<String, i64>>,
}

/// How stale a live node's `last_seen` may get in the store: a node sends a demand
/// message about every second, and writing each would be a store write per node per
/// second for a value nobody needs to the millisecond.
pub(crate) const SEEN_WRITE_MS: i64 = 5_000;

impl NodeRegistry {
    fn update(&self, store: &Store, node_id: &str, f: impl FnOnce(&mut NodeRecord)) {
        let mut written = self.records.lock().expect("node records lock");
        let mut record = store
            .node(node_id)
            .ok()
            .flatten()
            .unwrap_or_else(|| NodeRecord { id: node_id.to_owned(), ..Default::default() });
        f(&mut record);
        record.last_seen_ms = now_ms();
        if let Err(error) = store.put_node(&record) {
            warn!(%error, node = node_id, "could not save node record");
        }
        written.insert(node_id.to_owned(), record.last_seen_ms);
    }

    /// A message arrived from a connected node: its `last_seen` advances (written at most
    /// every [`SEEN_WRITE_MS`]).
    pub fn seen(&self, store: &Store, node_id: &str) {
        let due = self
            .records
            .lock()
            .expect("node records lock")
            .get(node_id)
            .is_none_or(|&at| now_ms() - at >= SEEN_WRITE_MS);
        if due {
            self.update(store, node_id, |_| {});
        }
    }

    /// A node said hello; returns its session id.
    pub fn connect(&self, store: &Store, hello: &Hello, instance: &str) -> u64 {
        let session = self.next_session.fetch_add(1, Ordering::Relaxed) + 1;
        let connected = {
            let mut live = self.live.lock().expect("registry lock");
            live.insert(hello.node_id.clone(), (session, hello.boot_id.clone()));
            live.len()
        };
        metrics::nodes_connected(connected);
        self.update(store, &hello.node_id, |n| {
            n.region = hello.region.clone();
            n.software_version = hello.software_version.clone();
            n.boot_id = hello.boot_id.clone();
            n.connected_since_ms = now_ms();
            n.instance = instance.to_owned();
            n.connected = true;
        });
        session
    }

    /// A session ended; the node counts as disconnected unless a newer session took over.
    pub fn disconnect(&self, store: &Store, node_id: &str, session: u64) {
        let (was_current, connected) = {
            let mut live = self.live.lock().expect("registry lock");
            let current = live.get(node_id).is_some_and(|(s, _)| *s == session);
            if current {
                live.remove(node_id);
            }
            (current, live.len())
        };
        metrics::nodes_connected(connected);
        if was_current {
            self.update(store, node_id, |n| n.connected = false);
            // Bounded by the nodes connected now, not by every node ever seen.
            self.records.lock().expect("node records lock").remove(node_id);
        }
    }

    /// The node applied `version`.
    pub fn acked(&self, store: &Store, node_id: &str, version: u64) {
        self.update(store, node_id, |n| {
            n.acked_config_version = n.acked_config_version.max(version);
            n.last_nack_error.clear();
            n.last_nack_version = 0;
        });
    }

    /// The node rejected `version`.
    pub fn nacked(&self, store: &Store, node_id: &str, version: u64, error: &str) {
        self.update(store, node_id, |n| {
            n.last_nack_error = error.chars().take(1000).collect();
            n.last_nack_version = version;
        });
    }

    /// The node delivered a report.
    pub fn reported(&self, store: &Store, node_id: &str) {
        self.update(store, node_id, |n| n.last_report_ms = now_ms());
    }

    /// The boot id the node's live session said hello with, if it has one.
    pub fn live_boot(&self, node_id: &str) -> Option<String> {
        self.live.lock().expect("registry lock").get(node_id).map(|(_, boot)| boot.clone())
    }

    /// Whether the node has a live session here.
    pub fn is_connected(&self, node_id: &str) -> bool {
        self.live.lock().expect("registry lock").contains_key(node_id)
    }

    /// Whether the node is connected here, or (by its record) to another instance on the
    /// same store that still writes it: a connected node's record is rewritten at least
    /// every [`SEEN_WRITE_MS`] while it talks, so one older than three of those belongs to
    /// an instance that is gone.
    pub fn is_connected_anywhere(&self, record: &NodeRecord, here: &str) -> bool {
        self.is_connected(&record.id)
            || (record.instance != here && record.connected && now_ms() - record.last_seen_ms < 3 * SEEN_WRITE_MS)
    }
}
