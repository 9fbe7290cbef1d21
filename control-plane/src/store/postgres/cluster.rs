//! The link between control-plane instances on one PostgreSQL database.
//!
//! - **Leadership** is a session advisory lock ([`LOCK_KEY`]) held on a connection of its
//!   own. Whoever takes it bumps the term in `cluster_leader`. The leader confirms its
//!   session every [`CHECK`]; one that cannot within [`CHECK_TIMEOUT`] stops leading at
//!   once and drops the connection (which frees the lock). The server ends a dead
//!   leader's session — and so frees the lock — when the connection closes, or when TCP
//!   keepalives (set short on that session) find the peer gone; other instances try for
//!   the lock every [`CHECK`].
//! - **Messages** go through `cluster_bus`: a batch is one INSERT that also notifies
//!   `sidecar_bus`; every instance listens and reads what is new (by id), and also polls
//!   every [`POLL`], since notifications are lost while its connection is down. Ids are
//!   taken at insert but become visible at commit, so an id skipped over is looked for
//!   again for [`GAP_WAIT`]. The leader's messages are written only while the term in
//!   `cluster_leader` is still its own (fencing: a leader that lost the lock without
//!   noticing yet cannot be heard). Rows older than a minute are deleted by the leader.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicI64, Ordering},
    },
    time::{Duration, Instant},
};

use sqlx::{PgConnection, PgPool, postgres::PgListener};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::{
    cluster::{ClusterLink, Delivery, Target},
    util::now_ms,
};

/// The advisory lock whose holder leads ("SIDCAR" in ASCII).
const LOCK_KEY: i64 = 0x5349_4443_4152;
/// How often the leader confirms its session and the others try for the lock.
const CHECK: Duration = Duration::from_millis(500);
/// A leader that cannot confirm its session this long stops leading.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the bus is read without a notification.
const POLL: Duration = Duration::from_millis(250);
/// How long an id skipped over (not committed yet when a later one was read) is looked
/// for again.
const GAP_WAIT: Duration = Duration::from_secs(2);
/// At most this many messages wait to be written, and to be handled.
const QUEUE: usize = 10_000;
/// At most this many messages per INSERT.
const BATCH: usize = 500;

/// The PostgreSQL link.
pub(super) struct PgCluster {
    id: String,
    name: String,
    /// The term this instance leads in; 0 = it does not.
    term: Arc<AtomicI64>,
    /// When the leader last confirmed its session.
    confirmed: Arc<Mutex<Option<Instant>>>,
    leader_name: Arc<Mutex<Option<String>>>,
    out: mpsc::Sender<(Target, serde_json::Value)>,
    inbox: Mutex<Option<mpsc::Receiver<Delivery>>>,
}

impl PgCluster {
    /// Starts the link's tasks on `rt` for an instance named `name`.
    pub(super) fn start(rt: &tokio::runtime::Runtime, pool: PgPool, name: &str) -> Arc<Self> {
        let mut suffix = [0u8; 4];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut suffix);
        let id = format!("{name}#{}", hex::encode(suffix));
        let (out, out_rx) = mpsc::channel(QUEUE);
        let (in_tx, in_rx) = mpsc::channel(QUEUE);
        let link = Arc::new(Self {
            id: id.clone(),
            name: name.to_owned(),
            term: Arc::default(),
            confirmed: Arc::default(),
            leader_name: Arc::default(),
            out,
            inbox: Mutex::new(Some(in_rx)),
        });
        rt.spawn(lead(pool.clone(), link.clone()));
        rt.spawn(write(pool.clone(), id.clone(), link.term.clone(), out_rx));
        rt.spawn(read(pool, id, link.clone(), in_tx));
        link
    }

    fn stop_leading(&self, why: &str) {
        if self.term.swap(0, Ordering::SeqCst) != 0 {
            warn!(instance = %self.name, why, "stopped leading");
        }
        *self.confirmed.lock().expect("confirmed lock") = None;
    }
}

impl ClusterLink for PgCluster {
    fn id(&self) -> &str {
        &self.id
    }

    fn leading(&self) -> bool {
        self.term.load(Ordering::SeqCst) != 0
            && self.confirmed.lock().expect("confirmed lock").is_some_and(|at| at.elapsed() < CHECK_TIMEOUT)
    }

    fn leader_name(&self) -> Option<String> {
        self.leader_name.lock().expect("leader lock").clone()
    }

    fn send(&self, to: Target, body: serde_json::Value) {
        if self.out.try_send((to, body)).is_err() {
            warn!("the queue to other control-plane instances is full: a message is dropped");
        }
    }

    fn take_inbox(&self) -> Option<mpsc::Receiver<Delivery>> {
        self.inbox.lock().expect("inbox lock").take()
    }
}

/// A connection of its own for the lock, with keepalives short enough that the server
/// frees the lock of a leader whose host vanished within seconds.
async fn lock_connection(pool: &PgPool) -> Option<PgConnection> {
    let mut conn = pool.acquire().await.ok()?.detach();
    for set in ["SET tcp_keepalives_idle = 5", "SET tcp_keepalives_interval = 1", "SET tcp_keepalives_count = 3"] {
        let _ = sqlx::query(set).execute(&mut conn).await;
    }
    Some(conn)
}

/// Takes and keeps the leadership when it can, until the runtime stops.
async fn lead(pool: PgPool, link: Arc<PgCluster>) {
    let mut conn: Option<PgConnection> = None;
    let mut pruned = Instant::now();
    loop {
        tokio::time::sleep(CHECK).await;
        if conn.is_none() {
            conn = tokio::time::timeout(CHECK_TIMEOUT, lock_connection(&pool)).await.ok().flatten();
        }
        let Some(c) = conn.as_mut() else {
            link.stop_leading("no connection to the database");
            continue;
        };
        let leading = link.term.load(Ordering::SeqCst) != 0;
        let step = async {
            if leading {
                sqlx::query("SELECT 1").execute(&mut *c).await?;
                return Ok::<_, sqlx::Error>(None);
            }
            let got: bool =
                sqlx::query_scalar("SELECT pg_try_advisory_lock($1)").bind(LOCK_KEY).fetch_one(&mut *c).await?;
            if !got {
                return Ok(None);
            }
            let term: i64 = sqlx::query_scalar(
                "INSERT INTO cluster_leader (id, term, instance, since_ms) VALUES (1, 1, $1, $2) \
                 ON CONFLICT (id) DO UPDATE SET term = cluster_leader.term + 1, instance = $1, since_ms = $2 \
                 RETURNING term",
            )
            .bind(&link.name)
            .bind(now_ms())
            .fetch_one(&mut *c)
            .await?;
            Ok(Some(term))
        };
        match tokio::time::timeout(CHECK_TIMEOUT, step).await {
            Ok(Ok(Some(term))) => {
                *link.confirmed.lock().expect("confirmed lock") = Some(Instant::now());
                link.term.store(term, Ordering::SeqCst);
                *link.leader_name.lock().expect("leader lock") = Some(link.name.clone());
                info!(instance = %link.name, term, "took the leadership");
            }
            Ok(Ok(None)) if leading => *link.confirmed.lock().expect("confirmed lock") = Some(Instant::now()),
            Ok(Ok(None)) => {
                let leader: Option<String> = sqlx::query_scalar("SELECT instance FROM cluster_leader WHERE id = 1")
                    .fetch_optional(&pool)
                    .await
                    .ok()
                    .flatten();
                *link.leader_name.lock().expect("leader lock") = leader;
            }
            Ok(Err(error)) => {
                debug!(%error, "leadership check");
                link.stop_leading("the database did not answer");
                // Dropping the connection ends the session, and with it the lock.
                conn = None;
            }
            Err(_) => {
                link.stop_leading("the database did not answer in time");
                conn = None;
            }
        }
        if link.leading() && pruned.elapsed() > Duration::from_secs(10) {
            pruned = Instant::now();
            if let Err(error) =
                sqlx::query("DELETE FROM cluster_bus WHERE at < now() - interval '1 minute'").execute(&pool).await
            {
                debug!(%error, "pruning the bus");
            }
        }
    }
}

fn target_name(to: &Target) -> &str {
    match to {
        Target::Leader => "leader",
        Target::All => "*",
        Target::Instance(id) => id,
    }
}

/// Writes queued messages in batches, until the runtime stops.
async fn write(pool: PgPool, id: String, term: Arc<AtomicI64>, mut queue: mpsc::Receiver<(Target, serde_json::Value)>) {
    const INSERT: &str = "WITH ins AS ( \
            INSERT INTO cluster_bus (sender, target, body) \
            SELECT $1, u.t, u.b::jsonb FROM UNNEST($2::text[], $3::text[]) AS u(t, b) \
            WHERE $4 = 0 OR (SELECT term FROM cluster_leader WHERE id = 1) = $4 \
            RETURNING 1) \
        SELECT pg_notify('sidecar_bus', '') FROM (SELECT count(*) AS n FROM ins) c WHERE c.n > 0";
    while let Some(first) = queue.recv().await {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match queue.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        // What goes to the leader is anyone's to say; the rest only the leader's, in its
        // term (a former leader's queued messages are dropped).
        let current = term.load(Ordering::SeqCst);
        let (to_leader, from_leader): (Vec<_>, Vec<_>) = batch.into_iter().partition(|(t, _)| *t == Target::Leader);
        for (fence, part) in [(0, to_leader), (current, from_leader)] {
            // Fence 0 is for messages to the leader only.
            if part.is_empty() || (fence == 0 && part[0].0 != Target::Leader) {
                continue;
            }
            let targets: Vec<String> = part.iter().map(|(t, _)| target_name(t).to_owned()).collect();
            let bodies: Vec<String> = part.iter().map(|(_, b)| b.to_string()).collect();
            let done = sqlx::query(INSERT).bind(&id).bind(targets).bind(bodies).bind(fence).execute(&pool).await;
            if let Err(error) = done {
                warn!(%error, messages = part.len(), "could not send to the other control-plane instances");
            }
        }
    }
}

/// Reads what is new on the bus for this instance, until the runtime stops.
async fn read(pool: PgPool, id: String, link: Arc<PgCluster>, inbox: mpsc::Sender<Delivery>) {
    const SELECT: &str = "SELECT id, sender, target, \
            CASE WHEN sender <> $3 AND target IN ($3, '*', 'leader') THEN body::text END \
        FROM cluster_bus WHERE id > $1 OR id = ANY($2) ORDER BY id LIMIT 5000";
    let mut cursor: i64 = loop {
        match sqlx::query_scalar::<_, Option<i64>>("SELECT max(id) FROM cluster_bus").fetch_one(&pool).await {
            Ok(max) => break max.unwrap_or(0),
            Err(error) => {
                debug!(%error, "reading the bus position");
                tokio::time::sleep(POLL).await;
            }
        }
    };
    let mut gaps: BTreeMap<i64, Instant> = BTreeMap::new();
    let mut listener: Option<PgListener> = None;
    loop {
        if listener.is_none()
            && let Ok(mut l) = PgListener::connect_with(&pool).await
            && l.listen("sidecar_bus").await.is_ok()
        {
            listener = Some(l);
        }
        match listener.as_mut() {
            Some(l) => {
                if let Ok(Err(error)) = tokio::time::timeout(POLL, l.recv()).await {
                    debug!(%error, "the bus listener broke; polling");
                    listener = None;
                }
            }
            None => tokio::time::sleep(POLL).await,
        }
        let wanted: Vec<i64> = gaps.keys().copied().collect();
        let rows: Vec<(i64, String, String, Option<String>)> =
            match sqlx::query_as(SELECT).bind(cursor).bind(&wanted).bind(&id).fetch_all(&pool).await {
                Ok(rows) => rows,
                Err(error) => {
                    debug!(%error, "reading the bus");
                    continue;
                }
            };
        let now = Instant::now();
        for (row_id, sender, target, body) in rows {
            gaps.remove(&row_id);
            if row_id > cursor {
                // Ids between are not visible yet (or never will be): look again.
                if row_id - cursor < 1000 {
                    gaps.extend((cursor + 1..row_id).map(|g| (g, now)));
                }
                cursor = row_id;
            }
            let Some(body) = body else { continue };
            if target == "leader" && !link.leading() {
                continue;
            }
            match serde_json::from_str(&body) {
                Ok(body) => {
                    if inbox.try_send(Delivery { sender, body }).is_err() {
                        warn!(
                            "messages from other control-plane instances arrive faster than they are handled: one dropped"
                        );
                    }
                }
                Err(error) => warn!(%error, "an unreadable message on the bus"),
            }
        }
        gaps.retain(|_, at| now.duration_since(*at) < GAP_WAIT);
    }
}
