//! Who uses the control plane and what they did: token roles and records, node records,
//! the audit trail, and the store's non-config writes for them (node records, token
//! last use, audit events).

use serde::{Deserialize, Serialize};

use super::{SledStore, StoreError, decode, encode};
use crate::util::now_ms;

/// Who made a write, for the audit trail.
#[derive(Debug, Clone)]
pub struct Actor {
    /// Token id, or `system`.
    pub id: String,
    /// Role name.
    pub role: String,
}

impl Actor {
    /// The control plane itself (first-start setup, migrations).
    pub fn system() -> Self {
        Self { id: "system".into(), role: "system".into() }
    }
}

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything on AdminService.
    Admin,
    /// Reads on AdminService.
    Viewer,
    /// NodeService only.
    Node,
}

impl Role {
    /// Its name in the audit trail (as stored: lower case).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Viewer => "viewer",
            Role::Node => "node",
        }
    }
}

/// An API token, stored as a hash only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// `tok_…`.
    pub id: String,
    /// What it may do.
    pub role: Role,
    /// Free text.
    pub name: String,
    /// SHA-256 of the bearer token.
    #[serde(with = "hex::serde")]
    pub hash: [u8; 32],
    /// Creation time, unix ms.
    pub created_at_ms: i64,
    /// Token id of the creator, or `system`/`env`.
    pub created_by: String,
    /// Node tokens: the node id it is bound to; `None` = shared (any node id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// Node tokens bound to a node: the region it must say hello with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

/// What the control plane remembers of a data-plane node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct NodeRecord {
    pub id: String,
    pub region: String,
    pub software_version: String,
    pub boot_id: String,
    pub acked_config_version: u64,
    pub last_nack_error: String,
    pub last_nack_version: u64,
    pub last_seen_ms: i64,
    pub last_report_ms: i64,
    pub connected_since_ms: i64,
    /// The control-plane instance its latest session is (or was) on.
    #[serde(default)]
    pub instance: String,
    /// Its latest session had not ended when this record was written.
    #[serde(default)]
    pub connected: bool,
}

/// One entry of the audit trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// When, unix ms.
    pub at_ms: i64,
    /// Token id of who did it (`system` for the control plane itself).
    pub actor: String,
    /// The actor's role.
    pub role: String,
    /// The RPC.
    pub action: String,
    /// What it touched.
    pub target: String,
    /// Config version the write produced.
    pub config_version: u64,
}

impl SledStore {
    /// Every node the control plane has seen.
    pub fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        Self::scan(&self.nodes, "nodes")
    }

    /// One node by id.
    pub fn node(&self, id: &str) -> Result<Option<NodeRecord>, StoreError> {
        Self::get(&self.nodes, "nodes", id.as_bytes())
    }

    /// Saves a node's record (not a config write: no version bump, no audit).
    pub fn put_node(&self, node: &NodeRecord) -> Result<(), StoreError> {
        self.nodes.insert(node.id.as_bytes(), encode(node))?;
        Ok(())
    }

    /// Records when a token last authenticated (not a config write).
    pub fn touch_token(&self, id: &str, at_ms: i64) -> Result<(), StoreError> {
        self.token_used.insert(id.as_bytes(), encode(&at_ms))?;
        Ok(())
    }

    /// When each token last authenticated, by token id.
    pub fn tokens_last_used(&self) -> Result<std::collections::HashMap<String, i64>, StoreError> {
        self.token_used
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                Ok((String::from_utf8_lossy(&k).into_owned(), decode::<i64>("token_used", &v)?))
            })
            .collect()
    }

    /// Appends an audit entry for something that is not a config write (a refused node
    /// credential, say): the config version is the current one, unchanged.
    pub fn audit_event(&self, actor: &Actor, action: &str, target: &str) -> Result<(), StoreError> {
        let at_ms = now_ms();
        let entry = AuditRecord::new(at_ms, actor, action, target, self.config_version());
        self.audit.insert(audit_key(at_ms, self.db.generate_id()?), encode(&entry))?;
        Ok(())
    }

    /// Audit entries in `[since_ms, until_ms)`.
    pub fn audit(&self, since_ms: i64, until_ms: i64) -> Result<Vec<AuditRecord>, StoreError> {
        let lo = audit_key(since_ms, 0);
        let hi = audit_key(until_ms, 0);
        self.audit.range(lo..hi).values().map(|v| decode("audit", &v?)).collect()
    }
}

impl AuditRecord {
    pub(super) fn new(at_ms: i64, actor: &Actor, action: &str, target: &str, config_version: u64) -> Self {
        Self {
            at_ms,
            actor: actor.id.clone(),
            role: actor.role.clone(),
            action: action.to_owned(),
            target: target.to_owned(),
            config_version,
        }
    }
}

pub(super) fn audit_key(at_ms: i64, id: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&(at_ms.max(0) as u64).to_be_bytes());
    key[8..].copy_from_slice(&id.to_be_bytes());
    key
}
