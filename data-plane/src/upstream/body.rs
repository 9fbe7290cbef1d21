//! The response body as it goes to the client: upstream frames passed through one by
//! one, untouched and unbuffered, while usage and time to first byte are read on the
//! side. Accounting completes exactly once — at the end of the body, on an error, or,
//! if the client goes away first, after draining the upstream in the background so the
//! tokens the provider bills are still counted.

use std::{
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use super::usage::{Usage, UsageScanner};

/// How a response body ended.
#[derive(Debug, Clone, Copy, Default)]
pub struct Finished {
    /// Usage read from the body.
    pub usage: Option<Usage>,
    /// Time from sending the request to the first body byte.
    pub ttft: Option<Duration>,
    /// Time from sending the request to the end of the body.
    pub elapsed: Duration,
    /// The upstream body failed or stalled (`"io"`, `"timeout"`).
    pub error: Option<&'static str>,
    /// The client went away before the end.
    pub client_gone: bool,
}

type OnFinish = Box<dyn FnOnce(Finished) + Send + Sync>;

/// A streaming response body that accounts for itself.
pub struct TappedBody {
    inner: Option<Incoming>,
    scanner: UsageScanner,
    started: Instant,
    ttft: Option<Duration>,
    idle: Duration,
    /// Armed only when the upstream makes us wait: a body that is already there (most
    /// JSON answers) costs no timer at all.
    idle_timer: Option<Pin<Box<Sleep>>>,
    on_finish: Option<OnFinish>,
}

impl TappedBody {
    /// Wraps `inner`; `started` is when the request was sent; `idle` is the longest wait
    /// between two chunks; `on_finish` runs once when the body ends, however it ends.
    pub fn new(
        inner: Incoming,
        stream: bool,
        started: Instant,
        idle: Duration,
        on_finish: impl FnOnce(Finished) + Send + Sync + 'static,
    ) -> Self {
        Self {
            inner: Some(inner),
            scanner: UsageScanner::new(stream),
            started,
            ttft: None,
            idle,
            idle_timer: None,
            on_finish: Some(Box::new(on_finish)),
        }
    }

    fn finish(&mut self, error: Option<&'static str>, client_gone: bool) {
        if let Some(f) = self.on_finish.take() {
            f(Finished {
                usage: self.scanner.finish(),
                ttft: self.ttft,
                elapsed: self.started.elapsed(),
                error,
                client_gone,
            });
        }
    }
}

impl Body for TappedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(&mut *inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.ttft.get_or_insert_with(|| this.started.elapsed());
                    this.scanner.feed(data);
                }
                // The next wait starts now.
                this.idle_timer = None;
                if inner.is_end_stream() {
                    // The last frame of a body of known length: the server stops
                    // polling once it has written that many bytes, so the end is
                    // accounted here rather than when the body is dropped.
                    this.inner = None;
                    this.finish(None, false);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.inner = None;
                this.finish(Some("io"), false);
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                this.inner = None;
                this.finish(None, false);
                Poll::Ready(None)
            }
            Poll::Pending => {
                let idle = this.idle;
                let timer = this.idle_timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                ready!(timer.as_mut().poll(cx));
                // Stalled longer than the backend's timeout: end the body here. The
                // client sees a truncated stream; accounting records the timeout.
                this.inner = None;
                this.finish(Some("timeout"), false);
                Poll::Ready(None)
            }
        }
    }

    /// Only after the end was seen (and accounted) — so the server always polls to
    /// the end and accounting happens on the request's own task.
    fn is_end_stream(&self) -> bool {
        self.inner.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.as_ref().map(Body::size_hint).unwrap_or_default()
    }
}

impl Drop for TappedBody {
    fn drop(&mut self) {
        if self.on_finish.is_none() {
            return;
        }
        let Some(mut inner) = self.inner.take() else {
            self.finish(None, true);
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.finish(Some("io"), true);
            return;
        };
        // The client left mid-body. Drain the upstream (bounded by the idle timeout) so
        // the usage the provider bills is still read and accounted.
        let mut rest = TappedBody {
            inner: None,
            scanner: std::mem::replace(&mut self.scanner, UsageScanner::new(false)),
            started: self.started,
            ttft: self.ttft,
            idle: self.idle,
            idle_timer: None,
            on_finish: self.on_finish.take(),
        };
        runtime.spawn(async move {
            loop {
                let next =
                    tokio::time::timeout(rest.idle, futures::future::poll_fn(|cx| Pin::new(&mut inner).poll_frame(cx)))
                        .await;
                match next.map(|f| f.map(|r| r.map(|frame| frame.into_data()))) {
                    Ok(Some(Ok(Ok(data)))) => {
                        rest.ttft.get_or_insert_with(|| rest.started.elapsed());
                        rest.scanner.feed(&data);
                    }
                    Ok(Some(Ok(Err(_trailers)))) => {}
                    Ok(None) => return rest.finish(None, true),
                    Ok(Some(Err(_))) => return rest.finish(Some("io"), true),
                    Err(_) => return rest.finish(Some("timeout"), true),
                }
            }
        });
    }
}
