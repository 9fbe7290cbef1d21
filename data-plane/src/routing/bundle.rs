//! The runtime bundle: everything a request needs, built from one snapshot and swapped
//! in whole, so a request sees one config version or the next, never a mix.

use std::{collections::HashMap, sync::Arc, time::Duration};

use tokio::time::Instant;

use super::{
    backend::{Backend, BackendState},
    key::{KeyBudget, KeyState},
};
use crate::snapshot::{Api, ClientKey, ModelBucketRef, ModelRoute, Settings, Snapshot};

impl ModelRoute {
    /// Whether `b` can serve this model at all now, tokens aside: the backend is live
    /// and the model is not cooling on it on its own.
    pub fn is_live(&self, b: &Backend, now: Instant) -> bool {
        b.is_live(now) && self.bucket.as_ref().is_none_or(|m| m.0.cooling_until(now).is_none())
    }
}

/// The backends of one pool that serve a model.
#[derive(Debug)]
pub struct Tier {
    /// Pool name.
    pub pool: String,
    /// Pool rank (0 = first pool).
    pub rank: usize,
    /// Later pools are used only when no member of this one is live (see
    /// [`Route::open_tiers`]).
    pub spill_on_failure: bool,
    /// Members and how each serves the model.
    pub members: Vec<(Arc<Backend>, ModelRoute)>,
}

/// Candidates for one model, in pool order.
#[derive(Debug, Default)]
pub struct Route {
    /// One tier per pool that has members.
    pub tiers: Vec<Tier>,
}

impl Route {
    /// Every member, in pool order.
    pub fn members(&self) -> impl Iterator<Item = &(Arc<Backend>, ModelRoute)> {
        self.tiers.iter().flat_map(|t| t.members.iter())
    }

    /// The tiers a request may use now, in order: every tier up to and including the
    /// first `on_failure` tier that still has a live member (enabled, healthy, not
    /// cooling or in error, not `excluded` because it failed this request). Past such a
    /// tier a request waits for it rather than spilling over.
    pub fn open_tiers<'a>(
        &'a self,
        excluded: impl Fn(&Backend) -> bool + 'a,
        now: Instant,
    ) -> impl Iterator<Item = &'a Tier> + 'a {
        let mut closed = false;
        self.tiers.iter().take_while(move |tier| {
            if closed {
                return false;
            }
            closed = tier.spill_on_failure && tier.members.iter().any(|(b, m)| !excluded(b) && m.is_live(b, now));
            true
        })
    }
}

/// One config version, ready to serve.
#[derive(Debug)]
pub struct Bundle {
    /// Config version (0 = no config yet).
    pub version: u64,
    /// Every backend.
    pub backends: Vec<Arc<Backend>>,
    /// Per API (see [`Api::index`]): canonical model → candidates among the backends
    /// that speak it.
    routes: [HashMap<String, Arc<Route>>; 2],
    /// Per API: candidates for a model no backend maps explicitly, the `*` backends.
    wildcard: [Option<Arc<Route>>; 2],
    /// Settings.
    pub settings: Settings,
    /// Canonical model names this node serves, sorted (for `/v1/models`).
    pub models: Vec<String>,
    /// The limiters' window (60 s; shorter only in tests).
    pub window: Duration,
    /// Client keys by the SHA-256 of the key.
    keys: HashMap<[u8; 32], Arc<ClientKey>>,
    /// The live state of each client key with a request limit, by key id.
    key_states: HashMap<Arc<str>, (Arc<ClientKey>, Arc<KeyState>)>,
    /// What is left of each budgeted client key's budget, by key id.
    budgets: HashMap<Arc<str>, Arc<KeyBudget>>,
}

impl Bundle {
    /// The bundle before any config: serves nothing.
    pub fn empty(window: Duration) -> Self {
        Self {
            version: 0,
            backends: Vec::new(),
            routes: Default::default(),
            wildcard: Default::default(),
            settings: Settings::default(),
            models: Vec::new(),
            window,
            keys: HashMap::new(),
            key_states: HashMap::new(),
            budgets: HashMap::new(),
        }
    }

    /// Builds the bundle for `snapshot`, carrying over the live state of every backend
    /// that `previous` already had (by id) so tokens, cooldowns and health survive.
    /// State is reset only when the backend's upstream (URL or key) changed.
    pub fn prepare(snapshot: &Snapshot, previous: &Bundle, window: Duration, now: Instant) -> Self {
        let settings = &snapshot.settings;
        let backends: Vec<Arc<Backend>> = snapshot
            .backends
            .iter()
            .map(|config| {
                let pool_rank = snapshot.pools.iter().position(|p| p.name == config.pool).unwrap_or(usize::MAX);
                let state = match previous.backends.iter().find(|b| b.config.id == config.id) {
                    Some(old) if old.config.same_upstream(config) => {
                        old.state.reconfigure(config, settings, window, now);
                        old.state.clone()
                    }
                    _ => Arc::new(BackendState::new(config, settings, window, now)),
                };
                Arc::new(Backend { config: config.clone(), pool_rank, state, metrics: Default::default() })
            })
            .collect();

        let route_for = |api: Api, model: Option<&str>| -> Route {
            let mut tiers: Vec<Tier> = Vec::new();
            for (rank, pool) in snapshot.pools.iter().enumerate() {
                let members: Vec<_> = backends
                    .iter()
                    .filter(|b| b.config.pool == pool.name && b.config.api == api)
                    .filter_map(|b| {
                        let m = &b.config.models;
                        let (name, route) =
                            model.and_then(|name| m.get_key_value(name)).or_else(|| m.get_key_value("*"))?;
                        let mut route = route.clone();
                        route.bucket = b.state.model_bucket(name).map(ModelBucketRef);
                        Some((b.clone(), route))
                    })
                    .collect();
                if !members.is_empty() {
                    tiers.push(Tier {
                        pool: pool.name.clone(),
                        rank,
                        spill_on_failure: pool.spill_on_failure,
                        members,
                    });
                }
            }
            Route { tiers }
        };
        let mut models: Vec<String> = backends
            .iter()
            .filter(|b| b.config.enabled)
            .flat_map(|b| b.config.models.keys().filter(|k| k.as_str() != "*").cloned())
            .collect();
        models.sort();
        models.dedup();
        let routes = Api::ALL.map(|api| {
            models
                .iter()
                .map(|m| (m.clone(), Arc::new(route_for(api, Some(m)))))
                .filter(|(_, r)| !r.tiers.is_empty())
                .collect()
        });
        let wildcard = Api::ALL.map(|api| Some(Arc::new(route_for(api, None))).filter(|r| !r.tiers.is_empty()));
        let keys: HashMap<[u8; 32], Arc<ClientKey>> =
            snapshot.client_keys.iter().map(|k| (k.hash, Arc::new(k.clone()))).collect();
        // A limited key keeps its admissions and share across configs (by id).
        let key_states = keys
            .values()
            .filter(|k| k.is_limited())
            .map(|k| {
                let state = match previous.key_states.get(&k.id) {
                    Some((_, old)) => {
                        old.reconfigure(k, window, now);
                        old.clone()
                    }
                    None => Arc::new(KeyState::new(k, window, now)),
                };
                (k.id.clone(), (k.clone(), state))
            })
            .collect();
        let budgets = keys
            .values()
            .filter(|k| k.has_budget)
            .map(|k| (k.id.clone(), previous.budgets.get(&k.id).cloned().unwrap_or_default()))
            .collect();
        Self {
            version: snapshot.version,
            backends,
            routes,
            wildcard,
            settings: settings.clone(),
            models,
            window,
            keys,
            key_states,
            budgets,
        }
    }

    /// The candidates for `model` among the backends that speak `api`, if any serves it.
    pub fn route(&self, api: Api, model: &str) -> Option<Arc<Route>> {
        let i = api.index();
        self.routes[i].get(model).or(self.wildcard[i].as_ref()).cloned()
    }

    /// The APIs whose backends serve `model` (for telling a client which path to call).
    pub fn apis_serving<'a>(&'a self, model: &'a str) -> impl Iterator<Item = Api> + 'a {
        Api::ALL.into_iter().filter(move |api| self.route(*api, model).is_some())
    }

    /// The client key whose SHA-256 is `hash`.
    pub fn client_key(&self, hash: &[u8; 32]) -> Option<&Arc<ClientKey>> {
        self.keys.get(hash)
    }

    /// The client key `id` and its live state, if it has a request limit.
    pub fn limited_key(&self, id: &str) -> Option<&(Arc<ClientKey>, Arc<KeyState>)> {
        self.key_states.get(id)
    }

    /// The live state of the client key `id`, if it has a request limit.
    pub fn key_state(&self, id: &str) -> Option<&Arc<KeyState>> {
        self.limited_key(id).map(|(_, state)| state)
    }

    /// What is left of client key `id`'s budget, if it has one.
    pub fn key_budget(&self, id: &str) -> Option<&Arc<KeyBudget>> {
        self.budgets.get(id)
    }

    /// Every client key with a request limit, with its live state.
    pub fn limited_keys(&self) -> impl Iterator<Item = &(Arc<ClientKey>, Arc<KeyState>)> {
        self.key_states.values()
    }

    /// A backend by id.
    pub fn backend(&self, id: &str) -> Option<&Arc<Backend>> {
        self.backends.iter().find(|b| b.config.id == id)
    }
}
