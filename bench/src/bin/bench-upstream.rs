//! A fast mock provider for benchmarks: `POST /v1/chat/completions` answers a small
//! OpenAI-shaped JSON body, or an SSE stream of `--chunks` chunks `--chunk-interval-ms`
//! apart (plus a usage chunk and `[DONE]`) when the request has `"stream": true`;
//! `POST /v1/messages` the same in Anthropic's shape (a `message_start` event, the
//! chunks as `content_block_delta` events, then `message_delta` with the output count and
//! `message_stop`).

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use clap::Parser;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};

#[derive(Parser, Clone)]
struct Args {
    /// Listen address.
    #[arg(long, default_value = "127.0.0.1:18000")]
    addr: SocketAddr,
    /// Chunks per streamed response.
    #[arg(long, default_value_t = 50)]
    chunks: usize,
    /// Pause between chunks, ms.
    #[arg(long, default_value_t = 0)]
    chunk_interval_ms: u64,
}

const JSON: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion","created":1,"model":"bench","choices":[{"index":0,"message":{"role":"assistant","content":"Hello from the benchmark upstream."},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":8,"total_tokens":20}}"#;
const CHUNK: &str = "data: {\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"token \"}}]}\n\n";
const USAGE: &str = "data: {\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":50,\"total_tokens\":62}}\n\ndata: [DONE]\n\n";

const MESSAGE: &str = r#"{"id":"msg_bench","type":"message","role":"assistant","model":"bench","content":[{"type":"text","text":"Hello from the benchmark upstream."}],"stop_reason":"end_turn","usage":{"input_tokens":12,"output_tokens":8}}"#;
const MESSAGE_START: &str = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_bench\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"usage\":{\"input_tokens\":12,\"output_tokens\":1}}}\n\n";
const MESSAGE_CHUNK: &str = "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"token \"}}\n\n";
const MESSAGE_END: &str = "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":50}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";

type Body = BoxBody<Bytes, Infallible>;

async fn handle(args: Arc<Args>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let messages = req.uri().path().ends_with("/messages");
    let (json, first, chunk, last) = match messages {
        true => (MESSAGE, Some(MESSAGE_START), MESSAGE_CHUNK, MESSAGE_END),
        false => (JSON, None, CHUNK, USAGE),
    };
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let stream = serde_json::from_slice::<serde_json::Value>(&body).is_ok_and(|v| v["stream"] == true);
    if !stream {
        let mut r = Response::new(Full::new(Bytes::from_static(json.as_bytes())).boxed());
        r.headers_mut().insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        return Ok(r);
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
    let (chunks, interval) = (args.chunks, Duration::from_millis(args.chunk_interval_ms));
    tokio::spawn(async move {
        if let Some(first) = first
            && tx.send(Ok(Frame::data(Bytes::from_static(first.as_bytes())))).await.is_err()
        {
            return;
        }
        for i in 0..chunks {
            if i > 0 && !interval.is_zero() {
                tokio::time::sleep(interval).await;
            }
            if tx.send(Ok(Frame::data(Bytes::from_static(chunk.as_bytes())))).await.is_err() {
                return;
            }
        }
        let _ = tx.send(Ok(Frame::data(Bytes::from_static(last.as_bytes())))).await;
    });
    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)).boxed();
    let mut r = Response::new(body);
    *r.status_mut() = StatusCode::OK;
    r.headers_mut().insert(header::CONTENT_TYPE, "text/event-stream".parse().unwrap());
    Ok(r)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Arc::new(Args::parse());
    let listener = tokio::net::TcpListener::bind(args.addr).await?;
    eprintln!("bench-upstream listening on {}", args.addr);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let args = args.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| handle(args.clone(), req));
            let _ = auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), service).await;
        });
    }
}
