//! The HTTP server: metrics at the telemetry path, a landing page, and the
//! `/healthz` and `/readyz` probes, over HTTP or HTTPS, with optional basic
//! auth. Every answer comes from memory.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use flate2::write::GzEncoder;
use flate2::Compression;
use http_body_util::Full;
use hyper::header::{
    HeaderValue, ACCEPT_ENCODING, ALLOW, AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, VARY,
    WWW_AUTHENTICATE,
};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

use crate::metrics::Metrics;
use crate::poller::Readiness;
use crate::web_config::WebSecurity;

/// A client has this long to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long open connections may finish their requests after shutdown begins.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A client has this long to finish the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What request handlers read.
pub struct AppState {
    pub metrics: EncodedMetrics,
    pub telemetry_path: String,
    pub readiness: Readiness,
    /// TLS and basic auth from `--web.config.file`.
    pub security: Option<Arc<WebSecurity>>,
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
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls = state.security.as_ref().and_then(|s| s.tls().cloned());
            match tls {
                None => serve_connection(TokioIo::new(stream), state, watcher).await,
                Some(acceptor) => {
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                    {
                        Ok(Ok(stream)) => {
                            serve_connection(TokioIo::new(stream), state, watcher).await;
                        }
                        Ok(Err(err)) => debug!(error = %err, "TLS handshake failed"),
                        Err(_) => debug!("TLS handshake timed out"),
                    }
                }
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

async fn serve_connection<IO>(io: IO, state: Arc<AppState>, watcher: Watcher)
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = service_fn(move |request| {
        let state = Arc::clone(&state);
        async move { Ok::<_, Infallible>(handle(&state, &request).await) }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(io, service);
    if let Err(err) = watcher.watch(connection).await {
        debug!(error = %err, "HTTP connection ended with an error");
    }
}

/// Checks basic auth, then routes. The probes stay open, so a kubelet or
/// Docker can call them without credentials.
async fn handle<B>(state: &AppState, request: &Request<B>) -> Response<Full<Bytes>> {
    let probe = matches!(request.uri().path(), "/healthz" | "/readyz");
    if let Some(security) = state
        .security
        .as_ref()
        .filter(|s| s.requires_auth() && !probe)
    {
        let header = request
            .headers()
            .get(AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let security = Arc::clone(security);
        // bcrypt takes tens of milliseconds on purpose: keep it off the async
        // threads, and run only as many checks at once as there are cores, so
        // made-up credentials cannot starve polling.
        let Ok(_permit) = bcrypt_permits().acquire().await else {
            return plain(StatusCode::SERVICE_UNAVAILABLE, "busy\n");
        };
        let allowed = tokio::task::spawn_blocking(move || security.authorize(header.as_deref()))
            .await
            .unwrap_or(false);
        if !allowed {
            let mut response = plain(StatusCode::UNAUTHORIZED, "unauthorized\n");
            response.headers_mut().insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"cloudflare-argo-exporter\""),
            );
            return response;
        }
    }
    let read = request.method() == Method::GET || request.method() == Method::HEAD;
    if read && request.uri().path() == state.telemetry_path {
        let gzip = request
            .headers()
            .get_all(ACCEPT_ENCODING)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .any(accepts_gzip);
        return metrics(state, gzip).await;
    }
    route(state, request)
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

/// The basic-auth checks allowed to run at once.
fn bcrypt_permits() -> &'static tokio::sync::Semaphore {
    static PERMITS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    PERMITS.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
        tokio::sync::Semaphore::new(cores)
    })
}

/// Whether an `Accept-Encoding` value allows gzip: an explicit `gzip` entry
/// decides, else `*`; a weight of 0 refuses.
fn accepts_gzip(value: &str) -> bool {
    let weight_of = |wanted: &str| {
        value.split(',').find_map(|coding| {
            let mut parts = coding.split(';').map(str::trim);
            let name = parts.next().unwrap_or_default();
            if !name.eq_ignore_ascii_case(wanted) {
                return None;
            }
            let q = parts
                .find_map(|p| {
                    p.strip_prefix("q=")
                        .and_then(|q| q.trim().parse::<f32>().ok())
                })
                .unwrap_or(1.0);
            Some(q)
        })
    };
    weight_of("gzip")
        .or_else(|| weight_of("*"))
        .is_some_and(|q| q > 0.0)
}

async fn metrics(state: &AppState, gzip: bool) -> Response<Full<Bytes>> {
    let encoded = if gzip {
        state.metrics.gzipped().await
    } else {
        state.metrics.plain().await
    };
    match encoded {
        Ok(body) => {
            let mut response = Response::new(Full::new(body));
            let headers = response.headers_mut();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static(TEXT_FORMAT));
            headers.insert(VARY, HeaderValue::from_static("Accept-Encoding"));
            if gzip {
                headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            }
            response
        }
        Err(err) => {
            error!(error = %err, "cannot encode metrics");
            plain(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n")
        }
    }
}

/// The encoded metrics, shared by the scrapes that come close together.
///
/// Encoding 10,000 zones takes tens of milliseconds, and a busy Prometheus
/// pair (or a dashboard) may scrape many times a second. So a gzipped
/// encoding (what Prometheus asks for) is served as it is while younger than
/// `max_age`. An older one, while younger than `STALE_LIMIT`, is still served
/// at once while a background task encodes anew, so under load no scrape
/// waits for an encoding. Past that (a lone scrape every 15 s), the scrape
/// waits for a fresh encoding. The metrics are gzipped as they are encoded,
/// so the full text is never held in memory; a scrape that does not accept
/// gzip (rare: a person with curl) gets a plain encoding of its own, one at a
/// time and apart from the gzipped ones.
pub struct EncodedMetrics {
    inner: Arc<Inner>,
}

/// An encoding this old is not served while a fresh one is made.
const STALE_LIMIT: Duration = Duration::from_secs(5);

struct Inner {
    metrics: Metrics,
    max_age: Duration,
    latest: std::sync::RwLock<Option<(Instant, Bytes)>>,
    /// Held by whoever is encoding, so only one encoding runs at a time.
    encoding: Arc<tokio::sync::Mutex<()>>,
    /// The same for plain-text encodings, kept apart so that a burst of
    /// plain scrapes never holds up the gzipped ones Prometheus makes.
    plain_encoding: tokio::sync::Mutex<()>,
    /// Bytes of the last plain encoding.
    plain_size: AtomicUsize,
}

impl EncodedMetrics {
    pub fn new(metrics: Metrics, max_age: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                metrics,
                max_age,
                latest: std::sync::RwLock::new(None),
                encoding: Arc::new(tokio::sync::Mutex::new(())),
                plain_encoding: tokio::sync::Mutex::new(()),
                plain_size: AtomicUsize::new(16 * 1024),
            }),
        }
    }

    /// The metrics gzipped, shared as described above.
    pub async fn gzipped(&self) -> Result<Bytes, String> {
        let inner = &self.inner;
        if let Some((at, bytes)) = inner.latest() {
            let age = at.elapsed();
            if age < inner.max_age {
                return Ok(bytes);
            }
            // With no max_age (tests), every scrape waits for a fresh encoding.
            if !inner.max_age.is_zero() && age < STALE_LIMIT {
                if let Ok(encoding) = Arc::clone(&inner.encoding).try_lock_owned() {
                    let inner = Arc::clone(&self.inner);
                    tokio::spawn(async move {
                        if let Err(err) = inner.encode().await {
                            error!(error = %err, "cannot encode metrics");
                        }
                        drop(encoding);
                    });
                }
                return Ok(bytes);
            }
        }
        let _encoding = inner.encoding.lock().await;
        match inner.latest() {
            Some((at, bytes)) if at.elapsed() < inner.max_age => Ok(bytes),
            _ => inner.encode().await,
        }
    }

    /// The metrics as plain text, encoded for this request. One encoding runs
    /// at a time, so a burst of plain scrapes cannot each hold a full text.
    pub async fn plain(&self) -> Result<Bytes, String> {
        let _encoding = self.inner.plain_encoding.lock().await;
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            // Sized from the last plain encoding, so the buffer is not doubled.
            let last = inner.plain_size.load(Ordering::Relaxed);
            let mut plain = Vec::with_capacity(last + last / 8);
            inner
                .metrics
                .encode_into(&mut plain)
                .map_err(|err| err.to_string())?;
            inner.plain_size.store(plain.len(), Ordering::Relaxed);
            Ok(Bytes::from(plain))
        })
        .await
        .map_err(|err| err.to_string())?
    }
}

impl Inner {
    fn latest(&self) -> Option<(Instant, Bytes)> {
        self.latest
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    async fn encode(&self) -> Result<Bytes, String> {
        let metrics = self.metrics.clone();
        // Room for the last encoding and some growth, so the buffer is not
        // doubled (and copied) on the way.
        let capacity = self
            .latest()
            .map_or(16 * 1024, |(_, last)| last.len() + last.len() / 4);
        let started = Instant::now();
        let gzip = tokio::task::spawn_blocking(move || {
            // Fast compression: it runs on every encoding, and the text is
            // repetitive enough that level 1 already shrinks it tenfold.
            let mut gzip = GzEncoder::new(Vec::with_capacity(capacity), Compression::fast());
            metrics
                .encode_into(&mut gzip)
                .map_err(|err| err.to_string())?;
            gzip.finish().map_err(|err| err.to_string())
        })
        .await
        .map_err(|err| err.to_string())??;
        let bytes = Bytes::from(gzip);
        *self.latest.write().unwrap_or_else(|p| p.into_inner()) = Some((started, bytes.clone()));
        Ok(bytes)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::RateLimit;

    fn gunzip(bytes: &Bytes) -> String {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&bytes[..]), &mut text)
            .unwrap();
        text
    }

    // Paused time: the cache's ages are read from tokio's clock, so the test
    // does not depend on how fast this machine runs it.
    #[tokio::test(start_paused = true)]
    async fn scrapes_close_together_share_one_encoding() {
        let metrics = Metrics::new(RateLimit::default()).unwrap();
        let encoded = EncodedMetrics::new(metrics.clone(), Duration::from_millis(300));
        let first = encoded.gzipped().await.unwrap();
        assert!(gunzip(&first).contains("argo_poll_cycles_total 0"));

        metrics.poll.cycles.inc();
        let second = encoded.gzipped().await.unwrap();
        assert_eq!(first, second, "re-encoded within max_age");
        // A plain scrape is encoded for itself, so it is current.
        let plain = String::from_utf8(encoded.plain().await.unwrap().to_vec()).unwrap();
        assert!(plain.contains("argo_poll_cycles_total 1"), "{plain}");

        // Past max_age the old encoding is served once more while a new one
        // is made in the background; the next scrape gets the new one.
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert_eq!(encoded.gzipped().await.unwrap(), first);
        let mut fresh = first.clone();
        for _ in 0..100 {
            fresh = encoded.gzipped().await.unwrap();
            if fresh != first {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The same text but for the process's own readings, which move.
        let argo_lines = |text: &str| -> Vec<String> {
            let lines = text.lines().filter(|l| l.starts_with("argo_"));
            lines.map(str::to_owned).collect()
        };
        assert_eq!(argo_lines(&gunzip(&fresh)), argo_lines(&plain));
    }

    #[test]
    fn accept_encoding() {
        assert!(accepts_gzip("gzip"));
        assert!(accepts_gzip("deflate, gzip;q=1.0, *;q=0.5"));
        assert!(accepts_gzip("*"));
        assert!(!accepts_gzip("identity"));
        assert!(!accepts_gzip("gzip;q=0"));
        assert!(!accepts_gzip("gzip;q=0.000"));
        assert!(!accepts_gzip("*;q=0.5, gzip;q=0"));
        assert!(accepts_gzip("gzip;q=0.1, *;q=0"));
        assert!(!accepts_gzip("br"));
    }
}
