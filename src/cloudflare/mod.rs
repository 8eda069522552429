//! The Cloudflare API client: the few v4 endpoints the exporter reads and
//! writes, each request timed, counted and classified.

mod wire;

use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, RETRY_AFTER};
use reqwest::Method;
use secrecy::ExposeSecret;
use serde::de::DeserializeOwned;
use url::Url;

pub use wire::{codes, interpret, ApiError, ApiMessage, ArgoValue, ErrorKind, SmartRouting, Zone};

use crate::config::{ApiConfig, Credentials, ZoneId};
use crate::metrics::ApiMetrics;

/// Answers larger than this are refused unread: a real one is a few hundred bytes.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// The API endpoints, as used in metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/zones/{zone_id}/argo/smart_routing`
    SmartRouting,
    /// `/zones/{zone_id}`
    Zone,
}

impl Endpoint {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SmartRouting => "smart_routing",
            Self::Zone => "zone",
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
    base_url: Url,
    timeout: Duration,
    metrics: ApiMetrics,
}

impl Client {
    pub fn new(config: &ApiConfig, metrics: ApiMetrics) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder()
            .default_headers(auth_headers(&config.credentials)?)
            .user_agent(concat!(
                "cloudflare-argo-exporter/",
                env!("CARGO_PKG_VERSION")
            ))
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .build()?;
        Ok(Self {
            http,
            base_url: config.base_url.clone(),
            timeout: config.timeout,
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
        let started = Instant::now();
        let outcome = self.exchange(method, url, body).await;
        let status = outcome.as_ref().ok().map(|answer| answer.0);
        self.metrics
            .observe_request(endpoint, status, started.elapsed().as_secs_f64());

        let result =
            outcome.and_then(|(status, retry_after, bytes)| interpret(status, retry_after, &bytes));
        if let Err(err) = &result {
            self.metrics.observe_error(endpoint, err.kind());
        }
        result
    }

    /// Sends the request and reads the whole answer, refusing an oversized one.
    async fn exchange(
        &self,
        method: Method,
        url: Url,
        body: Option<serde_json::Value>,
    ) -> Result<(u16, Option<Duration>, Vec<u8>), ApiError> {
        let mut request = self.http.request(method, url);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let mut response = request
            .send()
            .await
            .map_err(|err| self.transport_error(&err))?;

        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| wire::parse_retry_after(value, chrono::Utc::now()));
        let too_large = || ApiError::Decode {
            status,
            reason: format!("body larger than {MAX_BODY_BYTES} bytes"),
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
        Ok((status, retry_after, bytes))
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
