//! The API's event loops: one thread per worker, each running its own single-threaded
//! runtime that accepts from the shared listening socket and serves its connections to
//! the end, with its own pool of upstream connections. A request, its upstream
//! connection and its response then live on one thread: no cross-thread wake-ups, no
//! shared connection pool, no work stealing on the hot path. Everything else (config
//! sync, the queue dispatcher, reports, ops) runs on the main runtime and meets the
//! workers through atomics, `ArcSwap` and channels.

use std::{convert::Infallible, sync::Arc, time::Duration};

use hyper::service::service_fn;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
};
use tokio::{
    net::TcpListener,
    sync::{oneshot, watch},
};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

use crate::{proxy, state::Shared, upstream};

/// What the workers are asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Accept and serve.
    Serve,
    /// Stop accepting; finish in-flight requests, close idle connections.
    Drain,
    /// Give up on whatever is still open.
    Abort,
}

/// Running workers.
pub(crate) struct Workers {
    phase: watch::Sender<Phase>,
    done: Vec<oneshot::Receiver<()>>,
}

/// Connect timeout for upstream connections.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Below the shortest upstream timeout a backend can have (1 s).
const TIMER_FLOOR: Duration = Duration::from_millis(500);

impl Workers {
    /// Starts `count` workers serving `listener`.
    pub(crate) fn start(
        listener: TcpListener,
        count: usize,
        header_timeout: Duration,
        tls: Option<TlsAcceptor>,
        shared: Arc<Shared>,
    ) -> std::io::Result<Self> {
        let listener = listener.into_std()?;
        let (phase, _) = watch::channel(Phase::Serve);
        let mut done = Vec::with_capacity(count);
        for i in 0..count {
            let listener = listener.try_clone()?;
            let (done_tx, done_rx) = oneshot::channel();
            let shared = shared.clone();
            let tls = tls.clone();
            let phase = phase.subscribe();
            std::thread::Builder::new().name(format!("sidecar-api-{i}")).spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
                match runtime {
                    Ok(runtime) => runtime.block_on(worker(listener, header_timeout, tls, shared, phase)),
                    Err(e) => warn!(error = %e, "API worker could not start its runtime"),
                }
                // Dropping the runtime cancels connections still open after an abort;
                // their response bodies account for themselves as they drop.
                let _ = done_tx.send(());
            })?;
            done.push(done_rx);
        }
        Ok(Self { phase, done })
    }

    /// Stops accepting and waits up to `grace` for in-flight requests; after that,
    /// closes what is left. Returns whether everything finished in time.
    pub(crate) async fn shutdown(self, grace: Duration) -> bool {
        let _ = self.phase.send(Phase::Drain);
        let all = futures::future::join_all(self.done);
        tokio::pin!(all);
        let in_time = tokio::time::timeout(grace, &mut all).await.is_ok();
        if !in_time {
            let _ = self.phase.send(Phase::Abort);
            all.await;
        }
        in_time
    }
}

/// The accept loop of one worker, then its drain.
async fn worker(
    listener: std::net::TcpListener,
    header_timeout: Duration,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    mut phase: watch::Receiver<Phase>,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => return warn!(error = %e, "API worker could not register the listener"),
    };
    // This worker's upstream connections: used only by requests on this thread.
    let context = Arc::new((shared.clone(), upstream::client(CONNECT_TIMEOUT, &shared.upstream_tls)));
    // Every request arms a timer for its upstream timeout. tokio wakes its own driver
    // (an eventfd write, then an extra trip through epoll) whenever a new timer is due
    // before every other one, which is every request when none is in flight. A timer
    // that is always due sooner than any request's keeps that off the request path.
    tokio::spawn(async {
        let mut tick = tokio::time::interval(TIMER_FLOOR);
        loop {
            tick.tick().await;
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Without a timer hyper silently drops its header timeout: a client could hold a
    // connection (and its buffers) forever by never finishing a request.
    builder.http1().timer(TokioTimer::new()).header_read_timeout(header_timeout);
    let graceful = GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = phase.wait_for(|p| *p != Phase::Serve) => break,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                // Out of file descriptors, most likely: back off instead of spinning.
                warn!(error = %e, "accepting API connections failed; retrying in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        // At the cap the connection is closed at once: its descriptor is back before the
        // next accept, so neither this port nor the ops port runs out.
        let Some(slot) = shared.connections.admit() else {
            shared.metrics.connection_rejected();
            if shared.connections.should_warn(crate::now_ms() as u64) {
                warn!(
                    max = shared.connections.max(),
                    "API connection limit reached (SIDECAR_MAX_CONNECTIONS): closing new connections"
                );
            }
            drop(tcp);
            continue;
        };
        // No Nagle delay: responses often go out as headers, then body.
        let _ = tcp.set_nodelay(true);
        let context = context.clone();
        let service = service_fn(move |request| {
            let context = context.clone();
            async move { Ok::<_, Infallible>(proxy::handle(&context.0, &context.1, request).await) }
        });
        let Some(acceptor) = &tls else {
            let connection = builder.serve_connection(TokioIo::new(tcp), service).into_owned();
            let connection = graceful.watch(connection);
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    debug!(error = %e, "API connection ended with an error");
                }
                drop(slot);
            });
            continue;
        };
        // HTTPS: the handshake runs in the connection's task, within the header timeout.
        let (acceptor, builder, watcher) = (acceptor.clone(), builder.clone(), graceful.watcher());
        tokio::spawn(async move {
            match tokio::time::timeout(header_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    let connection = builder.serve_connection(TokioIo::new(stream), service).into_owned();
                    if let Err(e) = watcher.watch(connection).await {
                        debug!(error = %e, "API connection ended with an error");
                    }
                }
                Ok(Err(e)) => debug!(error = %e, "TLS handshake with a client failed"),
                Err(_) => debug!("TLS handshake with a client timed out"),
            }
            drop(slot);
        });
    }
    drop(listener);
    // Until an abort (or the `Workers` handle is dropped): let the connections finish,
    // then the upstream bodies of clients that left mid-stream, which drain on this
    // runtime so the usage they carry is still accounted.
    let finish = async {
        graceful.shutdown().await;
        shared.in_flight.wait_idle(Duration::from_secs(24 * 3600)).await;
    };
    tokio::select! {
        _ = finish => {}
        _ = phase.wait_for(|p| *p == Phase::Abort) => {}
    }
}

fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), ConnectionRefused | ConnectionAborted | ConnectionReset | Interrupted | WouldBlock)
}
