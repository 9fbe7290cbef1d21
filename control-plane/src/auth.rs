//! Bearer-token authentication and role checks. Tokens are stored as SHA-256 hashes and
//! compared in constant time; the set of tokens is cached in memory and replaced whole
//! after every token write. A node token may be bound to one node id (and region): it
//! then authenticates only that node.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, RwLock},
};

use rand::{Rng, RngCore};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::store::{Actor, Role, TokenRecord};

/// A caller refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No valid credential.
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// A valid credential that may not do this.
    #[error("{0}")]
    Denied(String),
}

/// Who is calling.
#[derive(Debug, Clone)]
pub struct Principal {
    /// Token id.
    pub token_id: String,
    /// The token's role.
    pub role: Role,
    /// Node credentials bound to a node: its id (`None` = a shared node token).
    pub node_id: Option<String>,
    /// Node credentials bound to a node and region.
    pub region: Option<String>,
}

impl Principal {
    /// The audit actor for this caller.
    pub fn actor(&self) -> Actor {
        Actor { id: self.token_id.clone(), role: self.role.as_str().to_owned() }
    }

    /// Whether this node credential may act as `node_id` (in `region`, for Sync).
    /// Names what does not match.
    pub fn may_be_node(&self, node_id: &str, region: Option<&str>) -> Result<(), AuthError> {
        if let Some(bound) = &self.node_id
            && bound != node_id
        {
            return Err(AuthError::Denied(format!(
                "this credential belongs to node {bound:?}, not {:?}",
                crate::util::clip(node_id)
            )));
        }
        if let (Some(bound), Some(region)) = (&self.region, region)
            && bound != region
        {
            return Err(AuthError::Denied(format!(
                "this credential belongs to region {bound:?}, not {:?}",
                crate::util::clip(region)
            )));
        }
        Ok(())
    }
}

/// What an RPC needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// AdminService reads: admin or viewer.
    AdminRead,
    /// AdminService writes: admin only.
    AdminWrite,
    /// NodeService: node tokens only.
    Node,
}

/// SHA-256 of a bearer token.
pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A fresh random bearer token (`sct_` + 64 hex characters).
pub fn generate_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("sct_{}", hex::encode(bytes))
}

/// A fresh client key: `sk-sc-` and 40 random letters and digits (238 bits).
pub fn generate_client_key() -> String {
    let random: String = rand::rng().sample_iter(rand::distr::Alphanumeric).take(40).map(char::from).collect();
    format!("{CLIENT_KEY_PREFIX}{random}")
}

/// What every client key starts with.
pub const CLIENT_KEY_PREFIX: &str = "sk-sc-";

/// How a client key is shown after it was created: its start only (`sk-sc-ab12…`).
pub fn client_key_prefix(secret: &str) -> String {
    format!("{}…", &secret[..CLIENT_KEY_PREFIX.len() + 4])
}

/// How often a token's last use is written to the store, at most.
const LAST_USED_EVERY_MS: i64 = 60_000;

/// Checks bearer tokens against the stored hashes.
pub struct Authenticator {
    tokens: RwLock<Arc<Vec<TokenRecord>>>,
    /// Bumped by every reload, so live node streams can see a revocation at once.
    changes: tokio::sync::watch::Sender<u64>,
    /// Token id → when its use was last written to the store.
    used: Mutex<HashMap<String, i64>>,
}

impl Default for Authenticator {
    fn default() -> Self {
        Self { tokens: RwLock::default(), changes: tokio::sync::watch::channel(0).0, used: Mutex::default() }
    }
}

impl Authenticator {
    /// Replaces the cached token set (after any token write).
    pub fn reload(&self, tokens: Vec<TokenRecord>) {
        *self.tokens.write().expect("token cache lock") = Arc::new(tokens);
        self.changes.send_modify(|n| *n += 1);
    }

    /// Changes whenever the token set does.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Whether the token `id` still exists (it was not revoked).
    pub fn holds(&self, id: &str) -> bool {
        self.tokens.read().expect("token cache lock").iter().any(|t| t.id == id)
    }

    /// Notes that token `id` was used at `now_ms`; true when that should be written to
    /// the store (the first use, then at most once a minute).
    pub fn used(&self, id: &str, now_ms: i64) -> bool {
        let mut used = self.used.lock().expect("token use lock");
        match used.get(id) {
            Some(&at) if now_ms - at < LAST_USED_EVERY_MS => false,
            _ => {
                used.insert(id.to_owned(), now_ms);
                true
            }
        }
    }

    /// Authenticates the caller by its `authorization` value and checks that its role
    /// allows `access`.
    pub fn check(&self, authorization: Option<&[u8]>, access: Access) -> Result<Principal, AuthError> {
        let Some(value) = authorization else {
            return Err(AuthError::Unauthenticated("missing `authorization: Bearer <token>` metadata"));
        };
        let token = std::str::from_utf8(value)
            .ok()
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(AuthError::Unauthenticated("malformed authorization metadata; expected `Bearer <token>`"))?;
        let principal = self.find(&hash_token(token)).ok_or(AuthError::Unauthenticated("invalid or revoked token"))?;
        match (access, principal.role) {
            (Access::AdminRead, Role::Admin | Role::Viewer)
            | (Access::AdminWrite, Role::Admin)
            | (Access::Node, Role::Node) => Ok(principal),
            (Access::AdminWrite, Role::Viewer) => {
                Err(AuthError::Denied("role viewer may only read; this call needs an admin token".into()))
            }
            (Access::AdminRead | Access::AdminWrite, Role::Node) => {
                Err(AuthError::Denied("node tokens may only use NodeService".into()))
            }
            (Access::Node, _) => Err(AuthError::Denied("NodeService needs a node token".into())),
        }
    }

    /// Looks the hash up comparing against every stored hash in constant time, so the
    /// time taken says nothing about how close a guess was.
    fn find(&self, hash: &[u8; 32]) -> Option<Principal> {
        let tokens = self.tokens.read().expect("token cache lock").clone();
        let mut found = None;
        for t in tokens.iter() {
            if bool::from(t.hash.ct_eq(hash)) {
                found = Some(Principal {
                    token_id: t.id.clone(),
                    role: t.role,
                    node_id: t.node_id.clone(),
                    region: t.region.clone(),
                });
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth_with(role: Role, token: &str) -> Authenticator {
        let a = Authenticator::default();
        a.reload(vec![TokenRecord {
            id: "tok_1".into(),
            role,
            name: String::new(),
            hash: hash_token(token),
            created_at_ms: 0,
            created_by: "test".into(),
            node_id: None,
            region: None,
        }]);
        a
    }

    fn md(value: &str) -> Option<&[u8]> {
        Some(value.as_bytes())
    }

    fn denied(r: Result<Principal, AuthError>) -> bool {
        matches!(r, Err(AuthError::Denied(_)))
    }

    #[test]
    fn roles_gate_access() {
        let admin = auth_with(Role::Admin, "t");
        assert!(admin.check(md("Bearer t"), Access::AdminWrite).is_ok());
        assert!(denied(admin.check(md("Bearer t"), Access::Node)));
        let viewer = auth_with(Role::Viewer, "t");
        assert!(viewer.check(md("Bearer t"), Access::AdminRead).is_ok());
        assert!(denied(viewer.check(md("Bearer t"), Access::AdminWrite)));
        let node = auth_with(Role::Node, "t");
        assert!(node.check(md("Bearer t"), Access::Node).is_ok());
        assert!(denied(node.check(md("Bearer t"), Access::AdminRead)));
    }

    #[test]
    fn missing_wrong_or_malformed_tokens_are_unauthenticated() {
        let a = auth_with(Role::Admin, "right");
        for m in [None, md("Bearer wrong"), md("Basic right"), md("Bearer "), Some(&[0xff, 0xfe][..])] {
            assert!(matches!(a.check(m, Access::AdminRead), Err(AuthError::Unauthenticated(_))));
        }
    }

    #[test]
    fn generated_tokens_are_distinct_and_long() {
        let (a, b) = (generate_token(), generate_token());
        assert_ne!(a, b);
        assert_eq!(a.len(), 4 + 64);
    }
}
