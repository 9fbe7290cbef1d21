//! The floor for any proxy built on hyper: the least a hyper-based HTTP/1 reverse proxy
//! can do per request, measured beside nginx and sidecar-proxy in the same run. One
//! single-threaded runtime per worker thread (as sidecar-proxy runs), hyper-util's
//! server and pooled client, the request body read whole and sent on, the response
//! streamed back. No routing, limits, accounting or header hygiene: what is left is the
//! cost of hyper and tokio themselves.

use std::{convert::Infallible, net::SocketAddr};

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
struct Args {
    /// Listen address.
    #[arg(long, default_value = "127.0.0.1:18300")]
    listen: SocketAddr,
    /// Upstream host:port.
    #[arg(long, default_value = "127.0.0.1:18000")]
    upstream: String,
    /// Worker threads.
    #[arg(long, default_value_t = 2)]
    workers: usize,
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

async fn forward(client: HttpClient, upstream: &str, request: Request<Incoming>) -> Response<Incoming> {
    let (parts, body) = request.into_parts();
    let body = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
    let uri = format!("http://{upstream}{}", parts.uri.path());
    let mut out = Request::post(uri).body(Full::new(body)).expect("valid request");
    *out.headers_mut() = parts.headers;
    out.headers_mut().remove(http::header::HOST);
    match client.request(out).await {
        Ok(response) => response,
        Err(e) => panic!("upstream failed: {e}"),
    }
}

async fn worker(listener: std::net::TcpListener, upstream: &'static str) {
    let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    let client: HttpClient = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(256).build(http);
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let Ok((tcp, _)) = listener.accept().await else { continue };
        let _ = tcp.set_nodelay(true);
        let client = client.clone();
        let service = service_fn(move |r| {
            let client = client.clone();
            async move { Ok::<_, Infallible>(forward(client, upstream, r).await) }
        });
        let connection = builder.serve_connection(TokioIo::new(tcp), service).into_owned();
        tokio::spawn(connection);
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let upstream: &'static str = Box::leak(args.upstream.into_boxed_str());
    let listener = std::net::TcpListener::bind(args.listen)?;
    listener.set_nonblocking(true)?;
    let threads: Vec<_> = (0..args.workers)
        .map(|_| {
            let listener = listener.try_clone().expect("listener clone");
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
                runtime.block_on(worker(listener, upstream));
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}
