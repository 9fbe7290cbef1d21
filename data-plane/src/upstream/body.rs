//! The response body as it goes to the client: upstream frames passed through one by
//! one, untouched and unbuffered, while usage and time to first byte are read on the
//! side. A usage chunk the proxy asked for on the client's behalf is taken out on the
//! way (see [`UsageChunkFilter`]). Accounting completes exactly once — at the end of the body, on an error, or,
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

use super::{
    sse::UsageChunkFilter,
    usage::{Dialect, Usage, UsageScanner},
};

/// How a response body ended.
#[derive(Debug, Clone, Default)]
pub struct Finished {
    /// Usage read from the body.
    pub usage: Option<Usage>,
    /// The response's id (Responses API only).
    pub response_id: Option<String>,
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
    /// Set when the client did not ask for the usage chunk the proxy asked for. Boxed:
    /// most bodies have none, and the body's size is the response future's.
    strip: Option<Box<UsageChunkFilter>>,
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
    /// With `strip_usage` (an SSE stream whose client did not ask for usage), the usage
    /// chunk is read for accounting and not passed on.
    pub fn new(
        inner: Incoming,
        (stream, dialect): (bool, Dialect),
        strip_usage: bool,
        started: Instant,
        idle: Duration,
        on_finish: impl FnOnce(Finished) + Send + Sync + 'static,
    ) -> Self {
        Self {
            inner: Some(inner),
            scanner: UsageScanner::new(stream, dialect),
            strip: (stream && strip_usage).then(Box::default),
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
                response_id: self.scanner.response_id(),
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
        loop {
            let Some(inner) = this.inner.as_mut() else {
                return Poll::Ready(None);
            };
            match Pin::new(&mut *inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(mut frame))) => {
                    if let Some(data) = frame.data_ref() {
                        this.ttft.get_or_insert_with(|| this.started.elapsed());
                        this.scanner.feed(data);
                    }
                    // The next wait starts now.
                    this.idle_timer = None;
                    let last = inner.is_end_stream();
                    if let Some(filter) = this.strip.as_mut() {
                        frame = match frame.into_data() {
                            Ok(data) => {
                                let mut out = filter.filter(data);
                                if last {
                                    out = [out, filter.finish()].concat().into();
                                }
                                if out.is_empty() && !last {
                                    // All of it was the usage chunk (or is held): nothing
                                    // to send yet.
                                    continue;
                                }
                                Frame::data(out)
                            }
                            Err(frame) => frame,
                        };
                    }
                    if last {
                        // The last frame of a body of known length: the server stops
                        // polling once it has written that many bytes, so the end is
                        // accounted here rather than when the body is dropped.
                        this.inner = None;
                        this.finish(None, false);
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Poll::Ready(Some(Err(e))) => {
                    this.inner = None;
                    this.finish(Some("io"), false);
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(None) => {
                    this.inner = None;
                    this.finish(None, false);
                    let rest = this.strip.as_mut().map(|f| f.finish()).unwrap_or_default();
                    return Poll::Ready((!rest.is_empty()).then(|| Ok(Frame::data(rest))));
                }
                Poll::Pending => {
                    let idle = this.idle;
                    let timer = this.idle_timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                    ready!(timer.as_mut().poll(cx));
                    // Stalled longer than the backend's timeout: end the body here. The
                    // client sees a truncated stream; accounting records the timeout.
                    this.inner = None;
                    this.finish(Some("timeout"), false);
                    return Poll::Ready(None);
                }
            }
        }
    }

    /// Only after the end was seen (and accounted) — so the server always polls to
    /// the end and accounting happens on the request's own task.
    fn is_end_stream(&self) -> bool {
        self.inner.is_none()
    }

    /// Unknown once the body is filtered: it may come out shorter than the upstream's.
    fn size_hint(&self) -> SizeHint {
        match (&self.inner, &self.strip) {
            (Some(inner), None) => inner.size_hint(),
            _ => SizeHint::default(),
        }
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
            scanner: std::mem::replace(&mut self.scanner, UsageScanner::new(false, Dialect::OpenAi)),
            strip: None,
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
