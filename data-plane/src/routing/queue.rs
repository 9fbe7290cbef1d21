//! The bounded priority queue for requests that must wait for a token (or for a backend
//! that recovers soon). One dispatcher task hands tokens to waiters in priority order
//! (urgent > high > normal > low, FIFO within a priority). It sleeps until the earliest
//! moment any waiter could be served, or until woken by a change: no polling loop.

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use arc_swap::ArcSwap;
use tokio::{
    sync::{Notify, oneshot, watch},
    time::Instant,
};

use super::{
    bundle::Bundle,
    select::{Assessment, Grant, assess, take},
};
use crate::snapshot::Api;

/// Request priority from `X-Priority`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    /// Served first.
    Urgent = 0,
    /// Before normal.
    High = 1,
    /// The default.
    Normal = 2,
    /// Last; shortest wait limit.
    Low = 3,
}

impl Priority {
    /// All priorities, highest first.
    pub const ALL: [Priority; 4] = [Priority::Urgent, Priority::High, Priority::Normal, Priority::Low];

    /// Parses `X-Priority` (case-insensitive); anything else is normal.
    pub fn from_header(value: Option<&str>) -> Self {
        match value.map(|v| v.trim().to_ascii_lowercase()).as_deref() {
            Some("urgent") => Priority::Urgent,
            Some("high") => Priority::High,
            Some("low") => Priority::Low,
            _ => Priority::Normal,
        }
    }

    /// The label used in metrics and /status.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Urgent => "urgent",
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }
}

/// What the dispatcher tells a waiter.
#[derive(Debug)]
pub enum Decision {
    /// A token was taken for it.
    Granted(Grant),
    /// Pushed out by a higher-priority request while the queue was full.
    Evicted,
    /// Its route can no longer be served by waiting (every candidate cooling, or gone):
    /// assess again.
    Reassess,
}

/// The queue was full and the newcomer had the lowest priority.
#[derive(Debug)]
pub struct QueueFull;

struct Waiter {
    id: u64,
    api: Api,
    model: String,
    exclude: Vec<String>,
    estimate: u64,
    tx: oneshot::Sender<Decision>,
}

#[derive(Default)]
struct Lanes {
    lanes: [VecDeque<Waiter>; 4],
    next_id: u64,
}

/// The wait queue of one proxy.
#[derive(Default)]
pub struct Queue {
    lanes: Mutex<Lanes>,
    len: AtomicUsize,
    wake: Notify,
}

impl Queue {
    /// Requests waiting.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    /// Whether nobody waits (new requests may then take tokens directly).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Requests waiting per priority (urgent, high, normal, low).
    pub fn depths(&self) -> [usize; 4] {
        let lanes = self.lanes.lock().expect("queue lock");
        [0, 1, 2, 3].map(|i| lanes.lanes[i].len())
    }

    /// Requests waiting per API and model.
    pub fn waiting_by_model(&self) -> std::collections::HashMap<(Api, String), u64> {
        let lanes = self.lanes.lock().expect("queue lock");
        let mut out = std::collections::HashMap::new();
        for w in lanes.lanes.iter().flatten() {
            *out.entry((w.api, w.model.clone())).or_insert(0) += 1;
        }
        out
    }

    /// Enqueues a request. When the queue holds `capacity` requests, the lowest-priority
    /// newest request is rejected: a waiter of lower priority than the newcomer is evicted,
    /// otherwise the newcomer is refused. A higher-priority waiter is never evicted.
    pub fn push(
        &self,
        priority: Priority,
        (api, model): (Api, &str),
        exclude: &[String],
        estimate: u64,
        capacity: usize,
    ) -> Result<(u64, oneshot::Receiver<Decision>), QueueFull> {
        let mut lanes = self.lanes.lock().expect("queue lock");
        if self.len() >= capacity {
            let lowest = (0..4).rev().find(|&i| !lanes.lanes[i].is_empty());
            match lowest {
                Some(i) if i > priority as usize => {
                    let evicted = lanes.lanes[i].pop_back().expect("non-empty lane");
                    let _ = evicted.tx.send(Decision::Evicted);
                    self.len.fetch_sub(1, Ordering::AcqRel);
                }
                _ => return Err(QueueFull),
            }
        }
        lanes.next_id += 1;
        let id = lanes.next_id;
        let (tx, rx) = oneshot::channel();
        lanes.lanes[priority as usize].push_back(Waiter {
            id,
            api,
            model: model.to_owned(),
            exclude: exclude.to_vec(),
            estimate,
            tx,
        });
        self.len.fetch_add(1, Ordering::AcqRel);
        drop(lanes);
        self.wake.notify_one();
        Ok((id, rx))
    }

    /// Removes a waiter that gave up (timeout). Returns false if it had already been
    /// decided on, in which case the caller must read its decision.
    pub fn remove(&self, id: u64) -> bool {
        let mut lanes = self.lanes.lock().expect("queue lock");
        for lane in lanes.lanes.iter_mut() {
            if let Some(i) = lane.iter().position(|w| w.id == id) {
                lane.remove(i);
                self.len.fetch_sub(1, Ordering::AcqRel);
                return true;
            }
        }
        false
    }

    /// Wakes the dispatcher: something changed (a new config, a cooldown ended early).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// One pass: serve every waiter that can be served now, in priority order; returns
    /// the earliest moment another waiter could be served.
    fn dispatch(&self, bundle: &Bundle, now: Instant) -> Option<Instant> {
        let mut lanes = self.lanes.lock().expect("queue lock");
        let mut next: Option<Instant> = None;
        let mut removed = 0;
        for lane in lanes.lanes.iter_mut() {
            let mut i = 0;
            while i < lane.len() {
                let w = &lane[i];
                if w.tx.is_closed() {
                    lane.remove(i);
                    removed += 1;
                    continue;
                }
                let decision = match bundle.route(w.api, &w.model) {
                    None => Some(Decision::Reassess),
                    Some(route) => {
                        match assess(&route, &w.exclude, now, w.estimate, &bundle.settings) {
                            Assessment::Ready => {
                                let grant = take(&route, &w.exclude, now, w.estimate);
                                if grant.is_none() {
                                    // Another request took the token between assess and
                                    // take: look again shortly, never sleep without a timer.
                                    let soon = now + std::time::Duration::from_millis(5);
                                    next = Some(next.map_or(soon, |n| n.min(soon)));
                                }
                                grant.map(Decision::Granted)
                            }
                            Assessment::Wait(t) => {
                                next = Some(next.map_or(t, |n| n.min(t)));
                                None
                            }
                            Assessment::Exhausted(_) => Some(Decision::Reassess),
                        }
                    }
                };
                match decision {
                    Some(d) => {
                        let w = lane.remove(i).expect("index in range");
                        removed += 1;
                        if let Err(Decision::Granted(grant)) = w.tx.send(d) {
                            grant.refund();
                        }
                    }
                    None => i += 1,
                }
            }
        }
        self.len.fetch_sub(removed, Ordering::AcqRel);
        next
    }

    /// The dispatcher task: runs until `shutdown` turns true.
    pub async fn run(self: Arc<Self>, bundle: Arc<ArcSwap<Bundle>>, mut shutdown: watch::Receiver<bool>) {
        loop {
            let next = self.dispatch(&bundle.load(), Instant::now());
            let sleep = async {
                match next {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = sleep => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    }
}
