//! The browser console: static files from `web-ui/dist`, served on the API port at `/`
//! next to gRPC and gRPC-web, so the console is same-origin with the API it calls. Any
//! path that is not a file gets `index.html` (the console routes in the browser). A gRPC
//! or gRPC-web call to a path no service serves gets the gRPC status UNIMPLEMENTED, as
//! gRPC clients expect, rather than an HTTP error page.

use std::path::Path;

use axum::{http::StatusCode, response::Html};
use http::{HeaderValue, header};
use tonic::service::Routes;
use tower::ServiceBuilder;
use tower_http::{
    services::{ServeDir, ServeFile},
    set_header::SetResponseHeaderLayer,
};

/// Content Security Policy of the console: everything from this origin only, no inline
/// scripts; values from the server are rendered as text by the console itself.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; \
                   connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

const NOT_BUILT: &str = "<!doctype html><title>Sidecar</title><h1>Sidecar control plane</h1>\
<p>The browser console is not built. Build it with <code>npm --prefix web-ui ci &amp;&amp; npm --prefix web-ui run build</code> \
(scripts/start.sh does this), or point SIDECAR_CONSOLE_DIR at a built console. The gRPC API is served on this port.</p>";

/// Adds gRPC-web to the gRPC routes, and the console (or a page saying how to build it)
/// behind them. gRPC-web wraps only the gRPC routes: it refuses plain HTTP/1.1 requests,
/// which is what a browser sends for the console's files.
pub fn with_console(routes: Routes, dir: Option<&Path>) -> Routes {
    let router = routes.into_axum_router().layer(tonic_web::GrpcWebLayer::new());
    let fallback = match dir {
        Some(dir) => {
            let files = ServeDir::new(dir).fallback(ServeFile::new(dir.join("index.html")));
            let service = ServiceBuilder::new()
                .layer(SetResponseHeaderLayer::overriding(
                    header::CONTENT_SECURITY_POLICY,
                    HeaderValue::from_static(CSP),
                ))
                .layer(SetResponseHeaderLayer::overriding(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")))
                .layer(SetResponseHeaderLayer::overriding(
                    header::X_CONTENT_TYPE_OPTIONS,
                    HeaderValue::from_static("nosniff"),
                ))
                .layer(SetResponseHeaderLayer::overriding(
                    header::REFERRER_POLICY,
                    HeaderValue::from_static("no-referrer"),
                ))
                .service(files);
            axum::Router::new().fallback_service(service)
        }
        None => axum::Router::new().fallback(|| async { (StatusCode::NOT_FOUND, Html(NOT_BUILT)) }),
    };
    let fallback = fallback.layer(axum::middleware::from_fn(grpc_unimplemented));
    Routes::from(router.fallback_service(fallback))
}

/// A gRPC (or gRPC-web) call that reached the fallback names a method nobody serves:
/// answered with the gRPC status UNIMPLEMENTED, which is what gRPC clients understand.
async fn grpc_unimplemented(request: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    let grpc = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if !grpc {
        return next.run(request).await;
    }
    let status = tonic::Status::unimplemented(format!(
        "no gRPC method {} on this server",
        crate::util::clip(request.uri().path())
    ));
    status.into_http::<axum::body::Body>()
}
