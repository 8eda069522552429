//! The HTTP server: metrics at the telemetry path, a landing page, and the
//! `/healthz` and `/readyz` probes. Every answer comes from memory.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

use crate::metrics::Metrics;
use crate::poller::Readiness;

/// A client has this long to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long open connections may finish their requests after shutdown begins.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What request handlers read.
pub struct AppState {
    pub metrics: Metrics,
    pub telemetry_path: String,
    pub readiness: Readiness,
}

/// Serves connections from `listener` until `shutdown` is cancelled, then
/// lets open requests finish for a few seconds.
pub async fn serve(listener: TcpListener, state: Arc<AppState>, shutdown: CancellationToken) {
    let graceful = GracefulShutdown::new();
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    // Usually out of file descriptors; pause rather than spin.
                    warn!(error = %err, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let state = Arc::clone(&state);
        let service = service_fn(move |request| {
            let state = Arc::clone(&state);
            async move { Ok::<_, Infallible>(route(&state, &request)) }
        });
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                debug!(error = %err, "HTTP connection ended with an error");
            }
        });
    }

    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        warn!("open HTTP connections did not finish in time; closing them");
    }
}

fn route<B>(state: &AppState, request: &Request<B>) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match request.uri().path() {
        path if path == state.telemetry_path => metrics(state),
        "/" => landing_page(&state.telemetry_path),
        "/healthz" => plain(StatusCode::OK, "ok\n"),
        "/readyz" if state.readiness.is_ready() => plain(StatusCode::OK, "ready\n"),
        "/readyz" => plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the first poll cycle has not finished\n",
        ),
        _ => plain(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn metrics(state: &AppState) -> Response<Full<Bytes>> {
    match state.metrics.encode() {
        Ok(body) => respond(StatusCode::OK, TEXT_FORMAT, body),
        Err(err) => {
            error!(error = %err, "cannot encode metrics");
            plain(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n")
        }
    }
}

fn landing_page(telemetry_path: &str) -> Response<Full<Bytes>> {
    let path = html_escape(telemetry_path);
    let body = format!(
        "<!DOCTYPE html>\n<html>\n<head><title>Cloudflare Argo Exporter</title></head>\n<body>\n\
         <h1>Cloudflare Argo Exporter</h1>\n<p>Version {version}</p>\n<ul>\n\
         <li><a href=\"{path}\">Metrics</a></li>\n<li><a href=\"/healthz\">Health</a></li>\n\
         <li><a href=\"/readyz\">Readiness</a></li>\n</ul>\n</body>\n</html>\n",
        version = env!("CARGO_PKG_VERSION"),
    );
    respond(
        StatusCode::OK,
        "text/html; charset=utf-8",
        body.into_bytes(),
    )
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn plain(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    respond(
        status,
        "text/plain; charset=utf-8",
        body.as_bytes().to_vec(),
    )
}

fn respond(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
