//! The Cloudflare API client: the few v4 endpoints the exporter reads and
//! writes. Every request waits for the shared [`Budget`], is retried when a
//! retry can help, and is timed, counted and classified.

mod wire;

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, RETRY_AFTER};
use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use tracing::{debug, warn};
use url::Url;

pub use wire::{
    codes, interpret, interpret_with_info, ApiError, ApiMessage, ArgoValue, ErrorKind, ResultInfo,
    SmartRouting, TokenStatus, Zone,
};

use crate::budget::Budget;
use crate::config::{ApiConfig, Credentials, ZoneId};
use crate::metrics::ApiMetrics;

/// Answers larger than this are refused unread: a real one is a few hundred bytes.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Zones per page when listing; the most Cloudflare allows.
pub const ZONES_PER_PAGE: u32 = 50;

/// How long every request waits after a 429 that did not say (Cloudflare
/// blocks a user who went over the limit for up to five minutes).
const DEFAULT_RATE_LIMIT_PAUSE: Duration = Duration::from_secs(60);

/// When and how often a failed request is sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_retries: u32,
    pub first_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    /// The baseline of Cloudflare's own SDKs: two retries, backing off from
    /// half a second, doubling, up to eight.
    fn default() -> Self {
        Self {
            max_retries: 2,
            first_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(8),
        }
    }
}

impl RetryPolicy {
    /// The wait before retry number `retry` (from 0): the first backoff
    /// doubled `retry` times, plus up to a quarter more at random so clients
    /// that failed together do not retry together, and never over the cap.
    pub fn backoff(&self, retry: u32) -> Duration {
        let base = self
            .first_backoff
            .saturating_mul(2u32.saturating_pow(retry))
            .min(self.max_backoff);
        let jitter = base.mul_f64(0.25 * rand::rng().random::<f64>());
        (base + jitter).min(self.max_backoff)
    }
}

/// Search criteria for listing zones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ZoneQuery {
    pub name: Option<String>,
    pub status: Option<String>,
    pub account_id: Option<String>,
}

/// The API endpoints, as used in metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/zones/{zone_id}/argo/smart_routing`
    SmartRouting,
    /// `/zones/{zone_id}`
    Zone,
    /// `/zones`, the zone list
    Zones,
    /// `/user/tokens/verify`
    TokenVerify,
}

impl Endpoint {
    pub const ALL: [Endpoint; 4] = [
        Self::SmartRouting,
        Self::Zone,
        Self::Zones,
        Self::TokenVerify,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::SmartRouting => "smart_routing",
            Self::Zone => "zone",
            Self::Zones => "zones",
            Self::TokenVerify => "token_verify",
        }
    }
}

/// Building the HTTP client fails only on a broken TLS setup or a header
/// value that is not valid HTTP (e.g. a token with a newline inside).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("credentials contain characters not allowed in an HTTP header")]
    InvalidCredentials,
    #[error("cannot build the HTTP client: {0}")]
    Build(#[from] reqwest::Error),
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    /// The token or key, to scrub from any answer that echoes it.
    secret: SecretString,
    base_url: Url,
    timeout: Duration,
    retry: RetryPolicy,
    budget: Arc<Budget>,
    metrics: ApiMetrics,
}

impl Client {
    pub fn new(
        config: &ApiConfig,
        budget: Arc<Budget>,
        metrics: ApiMetrics,
    ) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder()
            .default_headers(auth_headers(&config.credentials)?)
            .user_agent(concat!(
                "cloudflare-argo-exporter/",
                env!("CARGO_PKG_VERSION")
            ))
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            // The API never redirects; following one could carry the key to
            // another host (reqwest drops only `Authorization` on the way).
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let secret = match &config.credentials {
            Credentials::Token(token) => token.clone(),
            Credentials::GlobalKey { key, .. } => key.clone(),
        };
        Ok(Self {
            http,
            secret,
            base_url: config.base_url.clone(),
            timeout: config.timeout,
            retry: config.retry,
            budget,
            metrics,
        })
    }

    /// `GET /zones/{zone_id}/argo/smart_routing`
    pub async fn smart_routing(&self, zone: &ZoneId) -> Result<SmartRouting, ApiError> {
        let url = self.url(&["zones", zone.as_str(), "argo", "smart_routing"]);
        self.send(Endpoint::SmartRouting, Method::GET, url, None)
            .await
    }

    /// `PATCH /zones/{zone_id}/argo/smart_routing` with `{"value": ...}`.
    pub async fn set_smart_routing(
        &self,
        zone: &ZoneId,
        value: ArgoValue,
    ) -> Result<SmartRouting, ApiError> {
        let url = self.url(&["zones", zone.as_str(), "argo", "smart_routing"]);
        let body = serde_json::json!({ "value": value });
        self.send(Endpoint::SmartRouting, Method::PATCH, url, Some(body))
            .await
    }

    /// `GET /zones/{zone_id}`
    pub async fn zone(&self, zone: &ZoneId) -> Result<Zone, ApiError> {
        let url = self.url(&["zones", zone.as_str()]);
        self.send(Endpoint::Zone, Method::GET, url, None).await
    }

    /// `GET /zones?page=N&per_page=50` with the query's filters: one page of
    /// zones and the number of pages.
    pub async fn list_zones(
        &self,
        query: &ZoneQuery,
        page: u32,
    ) -> Result<(Vec<Zone>, u32), ApiError> {
        let mut url = self.url(&["zones"]);
        {
            let mut pairs = url.query_pairs_mut();
            pairs
                .append_pair("page", &page.to_string())
                .append_pair("per_page", &ZONES_PER_PAGE.to_string());
            if let Some(name) = &query.name {
                pairs.append_pair("name", name);
            }
            if let Some(status) = &query.status {
                pairs.append_pair("status", status);
            }
            if let Some(account) = &query.account_id {
                pairs.append_pair("account.id", account);
            }
        }
        let (zones, info): (Vec<Zone>, Option<ResultInfo>) = self
            .send_with_info(Endpoint::Zones, Method::GET, url, None)
            .await?;
        Ok((zones, info.map_or(1, |info| info.total_pages)))
    }

    /// Every zone matching the query, following the pages.
    pub async fn all_zones(&self, query: &ZoneQuery) -> Result<Vec<Zone>, ApiError> {
        let mut zones = Vec::new();
        let mut page = 1;
        loop {
            let (found, total_pages) = self.list_zones(query, page).await?;
            let empty = found.is_empty();
            zones.extend(found);
            if page >= total_pages || empty {
                return Ok(zones);
            }
            page += 1;
        }
    }

    /// `GET /user/tokens/verify`
    pub async fn verify_token(&self) -> Result<TokenStatus, ApiError> {
        let url = self.url(&["user", "tokens", "verify"]);
        self.send(Endpoint::TokenVerify, Method::GET, url, None)
            .await
    }

    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base_url.clone();
        // The base URL was checked at start-up to be a plain http(s) URL, so
        // it always has path segments to extend.
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    async fn send<T: DeserializeOwned>(
        &self,
        endpoint: Endpoint,
        method: Method,
        url: Url,
        body: Option<serde_json::Value>,
    ) -> Result<T, ApiError> {
        self.send_with_info(endpoint, method, url, body)
            .await
            .map(|(result, _)| result)
    }

    /// Sends a request, retrying as the [`RetryPolicy`] allows.
    async fn send_with_info<T: DeserializeOwned>(
        &self,
        endpoint: Endpoint,
        method: Method,
        url: Url,
        body: Option<serde_json::Value>,
    ) -> Result<(T, Option<ResultInfo>), ApiError> {
        let mut retry = 0;
        loop {
            let result = self
                .attempt(endpoint, method.clone(), url.clone(), body.clone())
                .await;
            let err = match result {
                Err(err) if err.is_retryable() && retry < self.retry.max_retries => err,
                other => return other,
            };
            let backoff = self.retry.backoff(retry);
            retry += 1;
            self.metrics.observe_retry(endpoint);
            debug!(
                endpoint = endpoint.as_str(),
                retry,
                kind = %err.kind(),
                error = %err,
                backoff = ?backoff,
                "retrying"
            );
            // A rate-limited request waits for the budget's pause instead.
            if err.kind() != ErrorKind::RateLimited {
                tokio::time::sleep(backoff).await;
            }
        }
    }

    /// One try: waits for the budget, sends, reads, classifies and counts.
    async fn attempt<T: DeserializeOwned>(
        &self,
        endpoint: Endpoint,
        method: Method,
        url: Url,
        body: Option<serde_json::Value>,
    ) -> Result<(T, Option<ResultInfo>), ApiError> {
        let waited = self.budget.acquire().await;
        self.metrics.observe_budget_wait(waited);

        let started = Instant::now();
        let outcome = self.exchange(method, url, body).await;
        let status = match &outcome {
            Ok(answer) => Some(answer.status),
            Err(err) => err.status(),
        };
        self.metrics
            .observe_request(endpoint, status, started.elapsed().as_secs_f64());

        let mut result = outcome.and_then(|answer| {
            if let Some(ratelimit) = &answer.ratelimit {
                self.budget
                    .observe_ratelimit_header(ratelimit, answer.ratelimit_policy.as_deref());
            }
            interpret_with_info(answer.status, answer.retry_after, &answer.body)
        });
        if let Err(err) = &mut result {
            err.redact(self.secret.expose_secret());
        }
        if let Err(err) = &result {
            self.metrics.observe_error(endpoint, err.kind());
            if err.kind() == ErrorKind::RateLimited {
                let asked = err.retry_after().unwrap_or(DEFAULT_RATE_LIMIT_PAUSE);
                if let Some(pause) = self.budget.pause_for(asked) {
                    warn!(
                        endpoint = endpoint.as_str(),
                        retry_after = err.retry_after().map(|d| d.as_secs()),
                        pause = %humantime::format_duration(pause),
                        "Cloudflare answered 429 (rate limited): pausing every request; the \
                         user's allowance is shared with the dashboard and other tools"
                    );
                }
            }
        }
        result
    }

    /// Sends the request and reads the whole answer, refusing an oversized one.
    async fn exchange(
        &self,
        method: Method,
        url: Url,
        body: Option<serde_json::Value>,
    ) -> Result<Answer, ApiError> {
        let mut request = self.http.request(method, url);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let mut response = request
            .send()
            .await
            .map_err(|err| self.transport_error(&err))?;

        let status = response.status().as_u16();
        let header = |name: &str| {
            let value = response.headers().get(name)?.to_str().ok()?;
            Some(value.to_owned())
        };
        let retry_after = header(RETRY_AFTER.as_str())
            .and_then(|value| wire::parse_retry_after(&value, chrono::Utc::now()));
        let ratelimit = header("ratelimit");
        let ratelimit_policy = header("ratelimit-policy");
        // An oversized error page still says what its status says: a 5xx or
        // 429 is retried (and a 429 pauses) as if its body had been small.
        let too_large = || {
            if (200..300).contains(&status) {
                ApiError::Decode {
                    status,
                    reason: format!("body larger than {MAX_BODY_BYTES} bytes"),
                }
            } else {
                ApiError::Status {
                    status,
                    retry_after,
                }
            }
        };
        if response
            .content_length()
            .is_some_and(|length| length > MAX_BODY_BYTES as u64)
        {
            return Err(too_large());
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|err| self.transport_error(&err))?
        {
            if bytes.len() + chunk.len() > MAX_BODY_BYTES {
                return Err(too_large());
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(Answer {
            status,
            retry_after,
            ratelimit,
            ratelimit_policy,
            body: bytes,
        })
    }

    fn transport_error(&self, err: &reqwest::Error) -> ApiError {
        if err.is_timeout() {
            ApiError::Timeout {
                after: self.timeout,
            }
        } else {
            ApiError::Connect {
                reason: error_chain(err),
            }
        }
    }
}

/// An HTTP answer read in full.
struct Answer {
    status: u16,
    retry_after: Option<Duration>,
    ratelimit: Option<String>,
    ratelimit_policy: Option<String>,
    body: Vec<u8>,
}

fn auth_headers(credentials: &Credentials) -> Result<HeaderMap, ClientError> {
    let sensitive = |text: &str| {
        let mut value = HeaderValue::from_str(text).map_err(|_| ClientError::InvalidCredentials)?;
        value.set_sensitive(true);
        Ok::<_, ClientError>(value)
    };
    let mut headers = HeaderMap::new();
    match credentials {
        Credentials::Token(token) => {
            let bearer = format!("Bearer {}", token.expose_secret());
            headers.insert(AUTHORIZATION, sensitive(&bearer)?);
        }
        Credentials::GlobalKey { email, key } => {
            let email =
                HeaderValue::from_str(email).map_err(|_| ClientError::InvalidCredentials)?;
            headers.insert("x-auth-email", email);
            headers.insert("x-auth-key", sensitive(key.expose_secret())?);
        }
    }
    Ok(headers)
}

/// Joins an error with its sources, e.g. "error sending request: connection refused".
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let line = cause.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_first_with_up_to_a_quarter_of_jitter() {
        let policy = RetryPolicy::default();
        for _ in 0..200 {
            let first = policy.backoff(0);
            assert!(first >= Duration::from_millis(500), "{first:?}");
            assert!(first <= Duration::from_millis(625), "{first:?}");
            let second = policy.backoff(1);
            assert!(second >= Duration::from_secs(1), "{second:?}");
            assert!(second <= Duration::from_millis(1250), "{second:?}");
            // Capped at the maximum, jitter included.
            assert_eq!(policy.backoff(5), Duration::from_secs(8));
            assert_eq!(policy.backoff(u32::MAX), Duration::from_secs(8));
        }
    }
}
