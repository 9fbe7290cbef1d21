//! Optional OpenTelemetry traces for `sidecar-proxy` and `sidecar-control`.
//!
//! Off unless `SIDECAR_OTLP_ENDPOINT` is set: then [`Traces::start`] exports spans over
//! OTLP/HTTP (protobuf) to `ENDPOINT/v1/traces`, in batches from a thread of the SDK's, so
//! the request path only records. The binaries hold an `Option<Traces>`: with export off
//! there is no tracer, no span and no header work — one `None` check per request.
//!
//! Trace context is W3C (`traceparent`, `tracestate`): a server span continues the
//! caller's trace, and [`Traces::inject`] writes a span's context into outgoing headers.
//! Spans ([`Span`]) end when dropped, so a span held by a response body ends with it.

use std::{fmt, time::Duration};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use opentelemetry::{
    propagation::TextMapPropagator,
    trace::{SpanKind, TraceContextExt, Tracer as _, TracerProvider as _},
};
use opentelemetry_http::{HeaderExtractor, HeaderInjector, HttpClient, HttpError, hyper::HyperClient};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::{
    Resource,
    propagation::TraceContextPropagator,
    trace::{SdkTracer, SdkTracerProvider},
};

pub use opentelemetry::{Context, KeyValue, trace::Status};

/// How long one export may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// A span that ends when dropped (or at [`Span::end`]).
pub struct Span(Context);

impl Span {
    /// Adds attributes.
    pub fn set(&self, attributes: impl IntoIterator<Item = KeyValue>) {
        self.0.span().set_attributes(attributes);
    }

    /// Marks the span failed, saying why.
    pub fn fail(&self, why: impl Into<std::borrow::Cow<'static, str>>) {
        self.0.span().set_status(Status::error(why));
    }

    /// The span's context: the parent of spans started under it.
    pub fn context(&self) -> &Context {
        &self.0
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        self.0.span().end();
    }
}

/// Exports spans to an OTLP/HTTP collector.
pub struct Traces {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    propagator: TraceContextPropagator,
}

impl fmt::Debug for Traces {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Traces")
    }
}

/// The OTLP/HTTP traces URL for `endpoint`: as given if it names `/v1/traces`, else that
/// path under it (the OpenTelemetry convention for a collector's base URL).
pub fn traces_url(endpoint: &str) -> String {
    let base = endpoint.trim().trim_end_matches('/');
    if base.ends_with("/v1/traces") { base.to_owned() } else { format!("{base}/v1/traces") }
}

/// What `SIDECAR_OTLP_ENDPOINT` must be.
const EXPECTED: &str = "expected an http:// or https:// URL such as http://otel-collector:4318";

/// The collector URL parsed, if it is an http(s) URL with a host.
fn collector(endpoint: &str) -> Option<http::Uri> {
    let uri: http::Uri = endpoint.trim().parse().ok()?;
    (matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some()).then_some(uri)
}

/// `SIDECAR_OTLP_ENDPOINT` as configured: `None` when unset or empty, else the URL, or what
/// is wrong with it (never echoing the value, which may hold credentials).
pub fn endpoint_setting(value: Option<&str>) -> Result<Option<String>, &'static str> {
    match value.map(str::trim) {
        None | Some("") => Ok(None),
        Some(url) => collector(url).map(|_| Some(url.to_owned())).ok_or(EXPECTED),
    }
}

/// Where traces go, for a log line: scheme, host and port only.
pub fn describe(endpoint: &str) -> String {
    collector(endpoint).map_or_else(String::new, |u| {
        let port = u.port_u16().map(|p| format!(":{p}")).unwrap_or_default();
        format!("{}://{}{port}", u.scheme_str().unwrap_or("http"), u.host().unwrap_or(""))
    })
}

/// The exporter's HTTP client: hyper on the binary's own runtime, reached from the SDK's
/// export thread (which runs no runtime) through a task spawned there.
#[derive(Debug)]
struct OnRuntime {
    runtime: tokio::runtime::Handle,
    client: HyperClient<hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>>,
}

#[async_trait::async_trait]
impl HttpClient for OnRuntime {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let client = self.client.clone();
        self.runtime.spawn(async move { client.send_bytes(request).await }).await?
    }
}

impl Traces {
    /// Starts exporting to `endpoint` (`http://…` or `https://…`, a collector's base URL or
    /// its `/v1/traces`) as `service`. Call it inside the binary's Tokio runtime.
    pub fn start(endpoint: &str, service: &'static str) -> Result<Self, String> {
        let url = traces_url(endpoint);
        collector(&url).ok_or(EXPECTED)?;
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .build();
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| "no Tokio runtime to export from".to_owned())?;
        let client = OnRuntime { runtime, client: HyperClient::new(connector, EXPORT_TIMEOUT, None) };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_endpoint(url)
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|e| e.to_string())?;
        let resource = Resource::builder().with_service_name(service).build();
        let provider = SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build();
        let tracer = provider.tracer(service);
        Ok(Self { provider, tracer, propagator: TraceContextPropagator::new() })
    }

    /// A server span named `name` continuing the trace of the caller's `traceparent` (a
    /// new trace without one).
    pub fn serve(&self, name: &'static str, headers: &HeaderMap, attributes: Vec<KeyValue>) -> Span {
        let parent = self.propagator.extract(&HeaderExtractor(headers));
        self.open(name, SpanKind::Server, &parent, attributes)
    }

    /// A span named `name` under `parent` (a new trace for `None`).
    pub fn child(&self, name: &'static str, kind: SpanKind, parent: Option<&Span>, attributes: Vec<KeyValue>) -> Span {
        match parent {
            Some(p) => self.open(name, kind, p.context(), attributes),
            None => self.open(name, kind, &Context::new(), attributes),
        }
    }

    fn open(&self, name: &'static str, kind: SpanKind, parent: &Context, attributes: Vec<KeyValue>) -> Span {
        let span = self
            .tracer
            .span_builder(name)
            .with_kind(kind)
            .with_attributes(attributes)
            .start_with_context(&self.tracer, parent);
        Span(parent.with_span(span))
    }

    /// Writes `span`'s context into `headers` (`traceparent`, and the caller's
    /// `tracestate`).
    pub fn inject(&self, span: &Span, headers: &mut HeaderMap) {
        self.propagator.inject_context(span.context(), &mut HeaderInjector(headers));
    }

    /// Exports what is still buffered and stops. Waits off the async workers (the export
    /// runs on them).
    pub async fn shutdown(&self) {
        let provider = self.provider.clone();
        let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
    }
}

pub use opentelemetry::trace::SpanKind as Kind;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoint_setting_takes_http_urls_and_refuses_the_rest_without_echoing_them() {
        assert_eq!(endpoint_setting(None), Ok(None));
        assert_eq!(endpoint_setting(Some("  ")), Ok(None));
        assert_eq!(endpoint_setting(Some("http://c:4318")), Ok(Some("http://c:4318".into())));
        let refused = endpoint_setting(Some("grpc://secret@c:4317")).unwrap_err();
        assert!(!refused.contains("secret"), "{refused}");
        assert_eq!(traces_url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(traces_url("http://c:4318/v1/traces"), "http://c:4318/v1/traces");
        assert_eq!(describe("https://user:pw@c.example:4318/x"), "https://c.example:4318");
    }
}
