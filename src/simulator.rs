//! A stand-in for the Cloudflare v4 API on loopback, used by the tests, the
//! `demo` and `simulate` commands and the benchmarks. It serves, under
//! `/client/v4`, the routes the exporter uses with Cloudflare's envelope and
//! error codes: Argo Smart Routing (GET and PATCH), one zone, the paginated
//! zone list and token verification.
//!
//! Cloudflare documents the failure envelope but not which code every refusal
//! carries; where it does not say (a PATCH of a setting that is not editable,
//! a `per_page` out of range), the simulator answers 400 with code 1007 or 1001.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::cloudflare::ArgoValue;

/// The path prefix of every route, as on `api.cloudflare.com`.
pub const BASE_PATH: &str = "/client/v4";

/// The account every simulated zone belongs to.
pub const ACCOUNT_ID: &str = "01a7362d577a6c3019a474fd6f485823";

/// Zones per page when the client does not ask (Cloudflare's default).
const DEFAULT_PER_PAGE: usize = 20;

/// A PATCH body is a few bytes; anything much larger is a client bug.
const MAX_REQUEST_BODY: usize = 64 * 1024;

/// One simulated zone and its Argo Smart Routing setting.
#[derive(Debug, Clone, PartialEq)]
pub struct SimZone {
    pub id: String,
    pub name: String,
    pub status: String,
    pub value: ArgoValue,
    pub editable: bool,
    pub modified_on: Option<DateTime<Utc>>,
}

impl SimZone {
    pub fn new(id: impl Into<String>, name: impl Into<String>, value: ArgoValue) -> Self {
        Self {
            id: id.into(),
            name: name.into(),
            status: "active".to_owned(),
            value,
            editable: true,
            modified_on: Some(Utc::now()),
        }
    }

    /// Zone number `n` of a generated set: ID `format!("{n:032x}")`, name
    /// `zone-N.example.com`, Argo on except for every tenth zone.
    pub fn numbered(n: u32) -> Self {
        let value = if n % 10 == 0 {
            ArgoValue::Off
        } else {
            ArgoValue::On
        };
        Self::new(format!("{n:032x}"), format!("zone-{n}.example.com"), value)
    }
}

/// A shared handle on the simulated account; clones see the same zones.
#[derive(Clone, Default)]
pub struct Simulator {
    state: Arc<Mutex<State>>,
    requests: Arc<AtomicU64>,
}

#[derive(Default)]
struct State {
    zones: BTreeMap<String, SimZone>,
    /// When set, only this bearer token is accepted.
    token: Option<String>,
    /// Arrival time, method and path ("PATCH /client/v4/...") of every
    /// request, when recording is on.
    log: Option<Vec<(tokio::time::Instant, String)>>,
    /// Answer the next request with a 429 carrying this `Retry-After`.
    rate_limit_next: Option<u64>,
    /// What token verification reports as the token's expiry.
    token_expires_on: Option<DateTime<Utc>>,
    /// When the last injected 429 was answered.
    rate_limited_at: Option<tokio::time::Instant>,
}

impl Simulator {
    pub fn new(zones: impl IntoIterator<Item = SimZone>) -> Self {
        let simulator = Self::default();
        simulator.lock().zones = zones.into_iter().map(|z| (z.id.clone(), z)).collect();
        simulator
    }

    /// Zones 1 to `count` as made by [`SimZone::numbered`].
    pub fn numbered(count: u32) -> Self {
        Self::new((1..=count).map(SimZone::numbered))
    }

    /// Accepts only `Authorization: Bearer <token>`; others get code 9109.
    pub fn require_token(self, token: impl Into<String>) -> Self {
        self.lock().token = Some(token.into());
        self
    }

    /// Records when each request arrives, for tests of the request rate.
    pub fn record_requests(self) -> Self {
        self.lock().log = Some(Vec::new());
        self
    }

    /// Arrival times and "METHOD path" of the requests so far (empty unless recording).
    pub fn request_log(&self) -> Vec<(tokio::time::Instant, String)> {
        self.lock().log.clone().unwrap_or_default()
    }

    /// Answers the next request with 429, code 971 and `Retry-After: seconds`,
    /// as Cloudflare does to a user over the limit.
    pub fn rate_limit_next(&self, retry_after_seconds: u64) {
        self.lock().rate_limit_next = Some(retry_after_seconds);
    }

    /// Adds a zone, or replaces the one with the same ID.
    pub fn insert(&self, zone: SimZone) {
        self.lock().zones.insert(zone.id.clone(), zone);
    }

    /// Deletes a zone, as when it leaves the account.
    pub fn remove(&self, id: &str) -> Option<SimZone> {
        self.lock().zones.remove(id)
    }

    /// When the last 429 asked for with [`Simulator::rate_limit_next`] was sent.
    pub fn rate_limited_at(&self) -> Option<tokio::time::Instant> {
        self.lock().rate_limited_at
    }

    /// Makes token verification report this expiry time.
    pub fn set_token_expiry(&self, expires_on: DateTime<Utc>) {
        self.lock().token_expires_on = Some(expires_on);
    }

    pub fn zone(&self, id: &str) -> Option<SimZone> {
        self.lock().zones.get(id).cloned()
    }

    pub fn zone_ids(&self) -> Vec<String> {
        self.lock().zones.keys().cloned().collect()
    }

    /// Changes a zone as if someone had used the dashboard. Returns false for
    /// an unknown zone.
    pub fn update(&self, id: &str, change: impl FnOnce(&mut SimZone)) -> bool {
        match self.lock().zones.get_mut(id) {
            Some(zone) => {
                change(zone);
                true
            }
            None => false,
        }
    }

    /// Sets the zone's Argo value and stamps `modified_on`, as Cloudflare does.
    pub fn set_value(&self, id: &str, value: ArgoValue) -> bool {
        self.update(id, |zone| {
            if zone.value != value {
                zone.value = value;
                zone.modified_on = Some(Utc::now());
            }
        })
    }

    /// Requests answered so far, for benchmarks and tests.
    pub fn requests_served(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the map half-changed
        // (every change is a single assignment), so a poisoned lock is usable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Serves the API on `listener` until `shutdown` is cancelled.
    pub async fn serve(self, listener: TcpListener, shutdown: CancellationToken) {
        loop {
            let stream = tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(err) => {
                        debug!(error = %err, "simulator cannot accept a connection");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let simulator = self.clone();
            let service = service_fn(move |request| {
                let simulator = simulator.clone();
                async move { Ok::<_, Infallible>(simulator.handle(request).await) }
            });
            let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = connection => {}
                    () = shutdown.cancelled() => {}
                }
            });
        }
    }

    async fn handle(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let (parts, body) = request.into_parts();
        let rate_limited = {
            let mut state = self.lock();
            let now = tokio::time::Instant::now();
            if let Some(log) = state.log.as_mut() {
                log.push((now, format!("{} {}", parts.method, parts.uri.path())));
            }
            let limited = state.rate_limit_next.take();
            if limited.is_some() {
                state.rate_limited_at = Some(now);
            }
            limited
        };
        if let Some(seconds) = rate_limited {
            let mut response = failure(
                StatusCode::TOO_MANY_REQUESTS,
                971,
                "Please wait and consider throttling your request speed",
            );
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(seconds));
            return response;
        }
        if let Err(refusal) = self.authenticate(&parts.headers) {
            return refusal;
        }
        let body = match Limited::new(body, MAX_REQUEST_BODY).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(_) => return failure(StatusCode::BAD_REQUEST, 6007, "Malformed request body"),
        };
        let Some(path) = parts.uri.path().strip_prefix(BASE_PATH) else {
            return no_route();
        };
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let query = parts.uri.query().unwrap_or("");

        match (&parts.method, segments.as_slice()) {
            (&Method::GET, ["zones"]) => self.list_zones(query),
            (&Method::GET, ["zones", id]) => self.get_zone(id),
            (&Method::GET, ["zones", id, "argo", "smart_routing"]) => self.get_argo(id),
            (&Method::PATCH, ["zones", id, "argo", "smart_routing"]) => self.patch_argo(id, &body),
            (&Method::GET, ["user", "tokens", "verify"]) => self.verify_token(),
            _ => no_route(),
        }
    }

    #[allow(clippy::result_large_err)]
    fn authenticate(&self, headers: &hyper::HeaderMap) -> Result<(), Response<Full<Bytes>>> {
        let header = |name| {
            headers
                .get(name)
                .and_then(|v: &HeaderValue| v.to_str().ok())
        };
        let bearer = header(AUTHORIZATION.as_str()).and_then(|v| v.strip_prefix("Bearer "));
        let global_key = header("x-auth-email").is_some() && header("x-auth-key").is_some();
        let required = self.lock().token.clone();
        match (bearer, required) {
            (Some(given), Some(required)) if given != required => {
                Err(failure(StatusCode::FORBIDDEN, 9109, "Invalid access token"))
            }
            (Some(_), _) => Ok(()),
            (None, None) if global_key => Ok(()),
            (None, Some(_)) if global_key => Err(failure(
                StatusCode::FORBIDDEN,
                10000,
                "Authentication error",
            )),
            (None, _) => Err(failure(
                StatusCode::BAD_REQUEST,
                6003,
                "Invalid request headers",
            )),
        }
    }

    fn verify_token(&self) -> Response<Full<Bytes>> {
        let expires_on = self.lock().token_expires_on;
        let mut result = json!({
            "id": "ed17574386854bf78a67040be0a770b0",
            "status": "active",
        });
        if let Some(at) = expires_on {
            result["expires_on"] = json!(at.to_rfc3339_opts(SecondsFormat::Secs, true));
        }
        success(result)
    }

    fn get_argo(&self, id: &str) -> Response<Full<Bytes>> {
        match self.lock().zones.get(id) {
            Some(zone) => success(argo_json(zone)),
            None => unknown_zone(id),
        }
    }

    fn patch_argo(&self, id: &str, body: &[u8]) -> Response<Full<Bytes>> {
        let value = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|body| serde_json::from_value::<ArgoValue>(body.get("value")?.clone()).ok());
        let mut state = self.lock();
        let Some(zone) = state.zones.get_mut(id) else {
            return unknown_zone(id);
        };
        let Some(value) = value else {
            return failure(
                StatusCode::BAD_REQUEST,
                1007,
                "Invalid value for zone setting smart_routing",
            );
        };
        if !zone.editable {
            return failure(
                StatusCode::BAD_REQUEST,
                1007,
                "The setting smart_routing is not editable for this zone",
            );
        }
        if zone.value != value {
            zone.value = value;
            zone.modified_on = Some(Utc::now());
        }
        success(argo_json(zone))
    }

    fn get_zone(&self, id: &str) -> Response<Full<Bytes>> {
        match self.lock().zones.get(id) {
            Some(zone) => success(zone_json(zone)),
            None => unknown_zone(id),
        }
    }

    fn list_zones(&self, query: &str) -> Response<Full<Bytes>> {
        let mut page = 1usize;
        let mut per_page = DEFAULT_PER_PAGE;
        let (mut name, mut status, mut account) = (None, None, None);
        for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
            match key.as_ref() {
                "page" => match value.parse::<usize>() {
                    Ok(n) if n >= 1 => page = n,
                    _ => return failure(StatusCode::BAD_REQUEST, 1001, "Invalid page"),
                },
                "per_page" => match value.parse::<usize>() {
                    Ok(n) if (5..=50).contains(&n) => per_page = n,
                    _ => {
                        return failure(
                            StatusCode::BAD_REQUEST,
                            1001,
                            "per_page must be a number from 5 to 50",
                        )
                    }
                },
                "name" => name = Some(value.into_owned()),
                "status" => status = Some(value.into_owned()),
                "account.id" => account = Some(value.into_owned()),
                _ => {}
            }
        }

        let state = self.lock();
        let matching: Vec<&SimZone> = state
            .zones
            .values()
            .filter(|z| name.as_deref().is_none_or(|n| z.name == n))
            .filter(|z| status.as_deref().is_none_or(|s| z.status == s))
            .filter(|_| account.as_deref().is_none_or(|a| a == ACCOUNT_ID))
            .collect();
        let mut sorted = matching;
        sorted.sort_by(|a, b| a.name.cmp(&b.name));
        let total = sorted.len();
        let results: Vec<Value> = sorted
            .iter()
            .skip((page - 1).saturating_mul(per_page))
            .take(per_page)
            .map(|zone| zone_json(zone))
            .collect();
        let body = json!({
            "result": results,
            "result_info": {
                "page": page,
                "per_page": per_page,
                "count": results.len(),
                "total_count": total,
                "total_pages": total.div_ceil(per_page),
            },
            "success": true,
            "errors": [],
            "messages": [],
        });
        json_response(StatusCode::OK, &body)
    }
}

fn argo_json(zone: &SimZone) -> Value {
    json!({
        "id": "smart_routing",
        "value": zone.value,
        "editable": zone.editable,
        "modified_on": zone
            .modified_on
            .map(|at| at.to_rfc3339_opts(SecondsFormat::Micros, true)),
    })
}

/// A zone object with every field the API definition requires.
fn zone_json(zone: &SimZone) -> Value {
    json!({
        "id": zone.id,
        "name": zone.name,
        "status": zone.status,
        "paused": false,
        "type": "full",
        "development_mode": 0,
        "name_servers": ["ada.ns.cloudflare.com", "bob.ns.cloudflare.com"],
        "original_name_servers": null,
        "original_registrar": null,
        "original_dnshost": null,
        "account": { "id": ACCOUNT_ID, "name": "Simulated account" },
        "owner": { "id": ACCOUNT_ID, "name": "Simulated account", "type": "organization" },
        "meta": {
            "cdn_only": false,
            "custom_certificate_quota": 0,
            "dns_only": false,
            "foundation_dns": false,
            "page_rule_quota": 3,
            "phishing_detected": false,
            "step": 2,
        },
        "plan": {
            "id": "0feeeeeeeeeeeeeeeeeeeeeeeeeeeeee",
            "name": "Free Website",
            "price": 0,
            "currency": "USD",
            "frequency": "",
            "is_subscribed": true,
            "can_subscribe": false,
            "legacy_id": "free",
            "legacy_discount": false,
            "externally_managed": false,
        },
        "created_on": "2024-01-01T00:00:00.000000Z",
        "modified_on": "2024-01-01T00:00:00.000000Z",
        "activated_on": "2024-01-01T00:00:00.000000Z",
    })
}

fn success(result: Value) -> Response<Full<Bytes>> {
    let body = json!({ "result": result, "success": true, "errors": [], "messages": [] });
    json_response(StatusCode::OK, &body)
}

fn failure(status: StatusCode, code: u32, message: &str) -> Response<Full<Bytes>> {
    let body = json!({
        "result": null,
        "success": false,
        "errors": [{ "code": code, "message": message }],
        "messages": [],
    });
    json_response(status, &body)
}

fn unknown_zone(id: &str) -> Response<Full<Bytes>> {
    let message =
        format!("Could not route to /zones/{id}, perhaps your object identifier is invalid?");
    failure(StatusCode::NOT_FOUND, 7003, &message)
}

fn no_route() -> Response<Full<Bytes>> {
    failure(StatusCode::NOT_FOUND, 7000, "No route for that URI")
}

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
