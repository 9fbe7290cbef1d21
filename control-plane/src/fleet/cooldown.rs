//! Fleet-wide 429 cooldowns and provider pauses: the control plane owns the
//! consecutive-429 count of each backend (and of each model with its own limits) and
//! broadcasts a cooldown to every node.

use std::time::Duration;

use tracing::{info, warn};

use super::{BackendFleet, CooldownNotice, Fleet, FleetMessage, RateLimited};
use crate::{
    store::{CooldownRecord, Settings, Store},
    util::now_ms,
};

/// Fleet-wide 429 cooldown and provider pause of a backend, or of one model's own
/// limits on it.
#[derive(Debug, Default)]
pub(super) struct Cool {
    pub(super) consecutive: u32,
    pub(super) cooling_until_ms: i64,
    /// Paused fleet-wide until then: the provider reported the budget spent.
    pub(super) exhausted_until_ms: i64,
}

impl BackendFleet {
    /// The cooldown of the backend (`model` empty) or of one of its models with their
    /// own limits; `None` for a model without (a node cannot grow the map).
    fn cool(&mut self, model: &str) -> Option<&mut Cool> {
        if model.is_empty() {
            return Some(&mut self.cool);
        }
        self.models.contains_key(model).then(|| self.model_cool.entry(model.to_owned()).or_default())
    }
}

impl Fleet {
    /// A node saw a 429 (for one model with its own limits, when the provider's answer
    /// named it). Unless the backend (or model) already cools fleet-wide, the count
    /// escalates and the cooldown goes to every node using the backend. Returns the
    /// cooldown record to store, if one started.
    pub fn rate_limited(&self, node_id: &str, event: &RateLimited, settings: &Settings) -> Option<CooldownRecord> {
        let now = now_ms();
        let record = {
            let mut backends = self.backends.lock().expect("fleet lock");
            let fleet = backends.entry(event.backend_id.clone()).or_default();
            let cool = fleet.cool(&event.model)?;
            if cool.cooling_until_ms > now {
                // During a cooldown only a node that already knew the fleet-wide count
                // and still got a 429 (an emergency probe) escalates it; other 429s come
                // from requests in flight when the cooldown began.
                if event.consecutive_count <= cool.consecutive {
                    return None;
                }
                cool.consecutive = event.consecutive_count;
            } else {
                cool.consecutive += 1;
            }
            let base = u64::from(settings.cooldown_base_seconds) * 1000;
            let max = u64::from(settings.cooldown_max_seconds) * 1000;
            let backoff = base.saturating_mul(1u64 << cool.consecutive.saturating_sub(1).min(32)).min(max);
            let duration = backoff.max(event.retry_after_ms);
            cool.cooling_until_ms = now + duration as i64;
            CooldownRecord {
                backend_id: event.backend_id.clone(),
                node_id: node_id.to_owned(),
                consecutive_count: cool.consecutive,
                duration_ms: duration,
                retry_after_ms: event.retry_after_ms,
                start_ms: now,
                end_ms: now + duration as i64,
                model: event.model.clone(),
            }
        };
        info!(backend = %record.backend_id, model = %record.model, node = node_id, count = record.consecutive_count, duration_ms = record.duration_ms, "fleet-wide cooldown");
        self.broadcast(FleetMessage::Cooldown(CooldownNotice {
            backend_id: record.backend_id.clone(),
            model: record.model.clone(),
            consecutive_count: record.consecutive_count,
            remaining_ms: record.duration_ms,
            duration_ms: record.duration_ms,
            node_id: node_id.to_owned(),
            exhausted: false,
        }));
        Some(record)
    }

    /// A node succeeded after 429s (for one model, or the backend): the fleet-wide count
    /// starts over and any cooldown ends.
    pub fn recovered(&self, node_id: &str, backend_id: &str, model: &str) {
        let was = {
            let mut backends = self.backends.lock().expect("fleet lock");
            let fleet = backends.entry(backend_id.to_owned()).or_default();
            let Some(cool) = fleet.cool(model) else { return };
            let was = cool.consecutive > 0 || cool.cooling_until_ms > now_ms();
            cool.consecutive = 0;
            cool.cooling_until_ms = 0;
            was
        };
        if was {
            info!(backend = backend_id, model, node = node_id, "recovered fleet-wide");
            self.broadcast(FleetMessage::Cooldown(CooldownNotice {
                backend_id: backend_id.to_owned(),
                model: model.to_owned(),
                node_id: node_id.to_owned(),
                ..CooldownNotice::default()
            }));
        }
    }

    /// A node heard the provider say the budget of the backend (or of one of its models
    /// with their own limits) is spent for `reset`: every node pauses it until then. No
    /// escalation: the count stays as it is.
    pub fn exhausted(&self, node_id: &str, backend_id: &str, model: &str, reset: Duration) {
        let until = now_ms() + reset.as_millis() as i64;
        let count = {
            let mut backends = self.backends.lock().expect("fleet lock");
            let fleet = backends.entry(backend_id.to_owned()).or_default();
            let Some(cool) = fleet.cool(model) else { return };
            if cool.exhausted_until_ms >= until {
                return;
            }
            cool.exhausted_until_ms = until;
            cool.consecutive
        };
        info!(
            backend = backend_id,
            model,
            node = node_id,
            reset_ms = reset.as_millis() as u64,
            "provider budget spent: paused fleet-wide"
        );
        let ms = reset.as_millis() as u64;
        self.broadcast(FleetMessage::Cooldown(CooldownNotice {
            backend_id: backend_id.to_owned(),
            model: model.to_owned(),
            consecutive_count: count,
            remaining_ms: ms,
            duration_ms: ms,
            node_id: node_id.to_owned(),
            exhausted: true,
        }));
    }

    /// Sends `msg` to every node: once to each node of this instance, and once to the
    /// other instances (if any), which pass it to theirs.
    pub(super) fn broadcast(&self, msg: FleetMessage) {
        let cooldown = matches!(msg, FleetMessage::Cooldown(_));
        for (node, s) in self.sessions.lock().expect("sessions lock").iter().filter(|(_, s)| !s.remote) {
            // A full channel means the node is far behind; it gets the cooldown with its
            // next snapshot (and a budget a grant interval later).
            if s.tx.try_send(msg.clone()).is_err() && cooldown {
                warn!(node = %node, "could not queue a cooldown broadcast");
            }
        }
        if let Some(peers) = self.peers.lock().expect("peers lock").as_ref()
            && peers.try_send(msg).is_err()
        {
            warn!("could not queue a broadcast for the other control-plane instances");
        }
    }

    /// Stores a cooldown record, logging a failure (the cooldown itself still applies).
    pub fn store_cooldown(store: &Store, record: &CooldownRecord) {
        if let Err(error) = store.record_cooldown(record) {
            warn!(%error, "could not store a cooldown event");
        }
    }
}
