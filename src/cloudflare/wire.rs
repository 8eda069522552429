//! Cloudflare v4 wire types and the rules for reading an answer: the
//! `{result, success, errors, messages}` envelope, and how a failed answer is
//! classified into an [`ErrorKind`].

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Whether Argo Smart Routing is switched on for a zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ArgoValue {
    On,
    Off,
}

impl ArgoValue {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::On => "on",
            Self::Off => "off",
        }
    }
}

impl fmt::Display for ArgoValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `result` of `GET /zones/{zone_id}/argo/smart_routing`. Fields not
/// listed here are ignored.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct SmartRouting {
    pub id: String,
    pub value: ArgoValue,
    pub editable: bool,
    /// RFC 3339 time of the last change; Cloudflare may omit it or send null.
    #[serde(
        default,
        deserialize_with = "text_of_any",
        skip_serializing_if = "Option::is_none"
    )]
    pub modified_on: Option<String>,
}

/// A string as it is, null as none, and any other JSON value as its JSON
/// text: a `modified_on` that is not a time at all (a number, say) then fails
/// to parse later and drops only its own series, not the whole answer.
fn text_of_any<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<String>, D::Error> {
    Ok(
        match Option::<serde_json::Value>::deserialize(deserializer)? {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(text)) => Some(text),
            Some(other) => Some(other.to_string()),
        },
    )
}

impl SmartRouting {
    /// The parsed `modified_on`: `Ok(None)` when Cloudflare sent none.
    pub fn modified_at(&self) -> Result<Option<DateTime<Utc>>, chrono::ParseError> {
        self.modified_on
            .as_deref()
            .map(|text| DateTime::parse_from_rfc3339(text).map(|at| at.with_timezone(&Utc)))
            .transpose()
    }
}

/// The parts of a zone object this exporter uses.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Zone {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub status: Option<String>,
}

/// The `result` of `GET /user/tokens/verify`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct TokenStatus {
    pub id: String,
    /// `active`, `disabled` or `expired`.
    pub status: String,
    #[serde(default)]
    pub expires_on: Option<String>,
}

/// One entry of an envelope's `errors` or `messages`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct ApiMessage {
    #[serde(default)]
    pub code: i64,
    #[serde(default)]
    pub message: String,
}

/// Cloudflare error codes the exporter treats specially.
pub mod codes {
    pub const RATE_LIMITED: i64 = 971;
    pub const NOT_ENTITLED: i64 = 1015;
    pub const INVALID_REQUEST_HEADERS: i64 = 6003;
    pub const BAD_ZONE_IDENTIFIER: i64 = 7003;
    pub const INVALID_ACCESS_TOKEN: i64 = 9109;
    pub const AUTHENTICATION_ERROR: i64 = 10000;
}

/// Why a request failed, as a fixed set usable as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// No complete answer within the configured timeout.
    Timeout,
    /// The connection could not be made or broke off.
    Connect,
    /// HTTP 429 or Cloudflare code 971.
    RateLimited,
    /// The credentials were refused or lack a permission.
    Auth,
    /// The zone's plan does not include the setting (code 1015).
    NotEntitled,
    /// The zone does not exist or the ID is not valid (code 7003, HTTP 404).
    NotFound,
    /// Any other refusal that Cloudflare explained in an error body.
    ApiError,
    /// A 5xx answer without a usable Cloudflare error body (e.g. a proxy's HTML page).
    Http5xx,
    /// The answer could not be read: not JSON, wrong shape, or too large.
    Decode,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 9] = [
        Self::Timeout,
        Self::Connect,
        Self::RateLimited,
        Self::Auth,
        Self::NotEntitled,
        Self::NotFound,
        Self::ApiError,
        Self::Http5xx,
        Self::Decode,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Connect => "connect",
            Self::RateLimited => "rate_limited",
            Self::Auth => "auth",
            Self::NotEntitled => "not_entitled",
            Self::NotFound => "not_found",
            Self::ApiError => "api_error",
            Self::Http5xx => "http_5xx",
            Self::Decode => "decode",
        }
    }

    /// The kind an HTTP status implies when the body says nothing more.
    fn from_status(status: u16) -> Self {
        match status {
            401 | 403 => Self::Auth,
            404 => Self::NotFound,
            429 => Self::RateLimited,
            500..=599 => Self::Http5xx,
            _ => Self::ApiError,
        }
    }

    /// The kind of a refusal that came with Cloudflare error codes.
    fn from_codes(status: u16, errors: &[ApiMessage]) -> Self {
        let has = |code| errors.iter().any(|e| e.code == code);
        if has(codes::NOT_ENTITLED) {
            Self::NotEntitled
        } else if status == 429 || has(codes::RATE_LIMITED) {
            Self::RateLimited
        } else if has(codes::AUTHENTICATION_ERROR)
            || has(codes::INVALID_ACCESS_TOKEN)
            || has(codes::INVALID_REQUEST_HEADERS)
        {
            Self::Auth
        } else if has(codes::BAD_ZONE_IDENTIFIER) {
            Self::NotFound
        } else if status >= 500 {
            Self::Http5xx
        } else {
            match Self::from_status(status) {
                Self::Auth | Self::NotFound => Self::from_status(status),
                _ => Self::ApiError,
            }
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The shortest secret [`ApiError::redact`] scrubs from messages.
pub const MIN_REDACTED_LEN: usize = 8;

/// A failed Cloudflare API request. Messages carry the HTTP status and
/// Cloudflare's own codes; they never carry credentials.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    #[error("no answer within {}", humantime::format_duration(*after))]
    Timeout { after: Duration },
    #[error("connection failed: {reason}")]
    Connect { reason: String },
    #[error("HTTP {status}, {}", describe_errors(errors))]
    Refused {
        status: u16,
        errors: Vec<ApiMessage>,
        /// Seconds from a `Retry-After` header, when one came with the answer.
        retry_after: Option<Duration>,
    },
    #[error("HTTP {status} with a body that is not a Cloudflare answer")]
    Status {
        status: u16,
        retry_after: Option<Duration>,
    },
    #[error("unreadable answer (HTTP {status}): {reason}")]
    Decode { status: u16, reason: String },
}

impl ApiError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Timeout { .. } => ErrorKind::Timeout,
            Self::Connect { .. } => ErrorKind::Connect,
            Self::Refused { status, errors, .. } => ErrorKind::from_codes(*status, errors),
            Self::Status { status, .. } => ErrorKind::from_status(*status),
            Self::Decode { .. } => ErrorKind::Decode,
        }
    }

    /// The HTTP status of the answer, when one arrived.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Timeout { .. } | Self::Connect { .. } => None,
            Self::Refused { status, .. }
            | Self::Status { status, .. }
            | Self::Decode { status, .. } => Some(*status),
        }
    }

    /// The `Retry-After` that came with the answer.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Refused { retry_after, .. } | Self::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Whether the same request may succeed if sent again: timeouts, broken
    /// connections, 408, 409, 429 and 5xx. Other refusals will not change.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Timeout { .. } | Self::Connect { .. } => true,
            Self::Refused { .. } | Self::Status { .. } => {
                self.kind() == ErrorKind::RateLimited
                    || matches!(self.status(), Some(408 | 409 | 429 | 500..=599))
            }
            Self::Decode { .. } => false,
        }
    }

    /// Replaces `secret` wherever the answer echoed it (a proxy's error page,
    /// a message quoting the request), so it cannot reach the logs. Real
    /// credentials are 37 characters or more; a secret shorter than
    /// [`MIN_REDACTED_LEN`] is left alone, since scrubbing it would mangle
    /// ordinary words and hide nothing worth hiding.
    pub fn redact(&mut self, secret: &str) {
        let scrub = |text: &mut String| {
            if secret.len() >= MIN_REDACTED_LEN && text.contains(secret) {
                *text = text.replace(secret, "[redacted]");
            }
        };
        match self {
            Self::Refused { errors, .. } => {
                for error in errors {
                    scrub(&mut error.message);
                }
            }
            Self::Connect { reason } | Self::Decode { reason, .. } => scrub(reason),
            Self::Timeout { .. } | Self::Status { .. } => {}
        }
    }

    /// The first Cloudflare error code of the answer, if it had one.
    pub fn cloudflare_code(&self) -> Option<i64> {
        match self {
            Self::Refused { errors, .. } => errors.first().map(|e| e.code),
            _ => None,
        }
    }
}

fn describe_errors(errors: &[ApiMessage]) -> String {
    if errors.is_empty() {
        return "success is false and no error was given".to_owned();
    }
    let parts: Vec<String> = errors
        .iter()
        .map(|e| format!("Cloudflare error {}: {}", e.code, e.message))
        .collect();
    parts.join("; ")
}

/// The envelope with `result` left unparsed until `success` is known, so a
/// failure body with an odd `result` still yields its error codes.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow, default)]
    result: Option<&'a RawValue>,
    success: bool,
    #[serde(default)]
    errors: Vec<ApiMessage>,
    #[serde(default)]
    result_info: Option<ResultInfo>,
}

/// Pagination of a list answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct ResultInfo {
    #[serde(default)]
    pub page: u32,
    #[serde(default)]
    pub total_pages: u32,
}

/// Reads one answer: its HTTP status, `Retry-After` (already parsed) and body.
pub fn interpret<T: DeserializeOwned>(
    status: u16,
    retry_after: Option<Duration>,
    body: &[u8],
) -> Result<T, ApiError> {
    interpret_with_info(status, retry_after, body).map(|(result, _)| result)
}

/// Like [`interpret`], also returning the pagination of a list answer.
pub fn interpret_with_info<T: DeserializeOwned>(
    status: u16,
    retry_after: Option<Duration>,
    body: &[u8],
) -> Result<(T, Option<ResultInfo>), ApiError> {
    let ok_status = (200..300).contains(&status);
    let envelope: Envelope<'_> = match serde_json::from_slice(body) {
        Ok(envelope) => envelope,
        Err(err) if ok_status => {
            return Err(ApiError::Decode {
                status,
                reason: describe_json_error(&err, body),
            })
        }
        Err(_) => {
            return Err(ApiError::Status {
                status,
                retry_after,
            })
        }
    };

    if !envelope.success {
        return Err(ApiError::Refused {
            status,
            errors: envelope.errors,
            retry_after,
        });
    }
    if !ok_status {
        return Err(ApiError::Status {
            status,
            retry_after,
        });
    }
    let result = envelope
        .result
        .filter(|raw| raw.get() != "null")
        .ok_or_else(|| ApiError::Decode {
            status,
            reason: "success is true but result is null".to_owned(),
        })?;
    let parsed = serde_json::from_str(result.get()).map_err(|err| ApiError::Decode {
        status,
        reason: format!("result: {err}"),
    })?;
    Ok((parsed, envelope.result_info))
}

fn describe_json_error(err: &serde_json::Error, body: &[u8]) -> String {
    if body.iter().all(u8::is_ascii_whitespace) {
        "empty body".to_owned()
    } else if err.is_eof() {
        format!("truncated JSON ({} bytes)", body.len())
    } else {
        format!("not a JSON envelope: {err}")
    }
}

/// Parses a `Retry-After` value: whole seconds, or an HTTP date.
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = DateTime::parse_from_rfc2822(value).ok()?;
    Some(
        (at.with_timezone(&Utc) - now)
            .to_std()
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smart_routing(body: &str) -> Result<SmartRouting, ApiError> {
        interpret(200, None, body.as_bytes())
    }

    #[test]
    fn documented_success_body() {
        let body = r#"{"result":{"id":"smart_routing","value":"on","editable":true,
            "modified_on":"2024-01-11T12:00:00Z"},"success":true,"errors":[],"messages":[]}"#;
        let setting = smart_routing(body).unwrap();
        assert_eq!(setting.value, ArgoValue::On);
        assert!(setting.editable);
        let at = setting.modified_at().unwrap().unwrap();
        assert_eq!(at.timestamp(), 1_704_974_400);
    }

    #[test]
    fn modified_on_absent_null_and_fractional() {
        let absent = r#"{"result":{"id":"smart_routing","value":"off","editable":false},
            "success":true,"errors":[],"messages":[]}"#;
        let setting = smart_routing(absent).unwrap();
        assert_eq!(setting.value, ArgoValue::Off);
        assert!(!setting.editable);
        assert_eq!(setting.modified_at().unwrap(), None);

        let null = r#"{"result":{"id":"smart_routing","value":"off","editable":true,
            "modified_on":null},"success":true,"errors":[],"messages":[]}"#;
        assert_eq!(smart_routing(null).unwrap().modified_at().unwrap(), None);

        let fractional = r#"{"result":{"id":"smart_routing","value":"on","editable":true,
            "modified_on":"2014-01-01T05:20:00.12345Z"},"success":true,"errors":[],"messages":[]}"#;
        let at = smart_routing(fractional)
            .unwrap()
            .modified_at()
            .unwrap()
            .unwrap();
        assert_eq!(at.timestamp(), 1_388_553_600);
        assert_eq!(at.timestamp_subsec_micros(), 123_450);
    }

    #[test]
    fn unparseable_modified_on_is_reported_without_losing_the_rest() {
        let body = r#"{"result":{"id":"smart_routing","value":"on","editable":true,
            "modified_on":"yesterday"},"success":true,"errors":[],"messages":[]}"#;
        let setting = smart_routing(body).unwrap();
        assert_eq!(setting.value, ArgoValue::On);
        assert!(setting.modified_at().is_err());

        // Regression: a modified_on that was not a string failed the whole poll.
        for odd in ["1704974400", "true", "{\"at\":1}", "[]"] {
            let body = format!(
                r#"{{"result":{{"id":"smart_routing","value":"off","editable":true,
                "modified_on":{odd}}},"success":true,"errors":[],"messages":[]}}"#
            );
            let setting = smart_routing(&body).unwrap();
            assert_eq!(setting.value, ArgoValue::Off, "{odd}");
            assert!(setting.modified_at().is_err(), "{odd}");
        }
    }

    #[test]
    fn extra_fields_are_ignored() {
        let body = r#"{"result":{"id":"smart_routing","value":"on","editable":true,
            "future_field":{"nested":[1,2]}},"success":true,"errors":[],"messages":[],
            "result_info":{"page":1}}"#;
        assert_eq!(smart_routing(body).unwrap().value, ArgoValue::On);
    }

    #[test]
    fn value_other_than_on_or_off_is_a_decode_error() {
        let body = r#"{"result":{"id":"smart_routing","value":"maybe","editable":true},
            "success":true,"errors":[],"messages":[]}"#;
        let err = smart_routing(body).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Decode);
        assert!(err.to_string().contains("maybe"), "{err}");
    }

    #[test]
    fn editable_missing_or_not_boolean_is_a_decode_error() {
        for result in [
            r#"{"id":"smart_routing","value":"on"}"#,
            r#"{"id":"smart_routing","value":"on","editable":"yes"}"#,
        ] {
            let body = format!(r#"{{"result":{result},"success":true,"errors":[],"messages":[]}}"#);
            assert_eq!(
                smart_routing(&body).unwrap_err().kind(),
                ErrorKind::Decode,
                "{body}"
            );
        }
    }

    #[test]
    fn failure_codes_map_to_kinds() {
        let cases = [
            (403, 10000, ErrorKind::Auth),
            (403, 9109, ErrorKind::Auth),
            (400, 6003, ErrorKind::Auth),
            (400, 7003, ErrorKind::NotFound),
            (404, 7003, ErrorKind::NotFound),
            (429, 971, ErrorKind::RateLimited),
            (401, 1015, ErrorKind::NotEntitled),
            (400, 1004, ErrorKind::ApiError),
            (500, 1000, ErrorKind::Http5xx),
        ];
        for (status, code, kind) in cases {
            let body = format!(
                r#"{{"result":null,"success":false,"errors":[{{"code":{code},"message":"m"}}],"messages":[]}}"#
            );
            let err = interpret::<SmartRouting>(status, None, body.as_bytes()).unwrap_err();
            assert_eq!(err.kind(), kind, "status {status} code {code}");
            assert_eq!(err.cloudflare_code(), Some(code));
            assert!(err.to_string().contains(&format!("HTTP {status}")), "{err}");
        }
    }

    #[test]
    fn success_false_with_status_200_is_an_api_error() {
        let body = r#"{"result":null,"success":false,"errors":[{"code":1004,"message":"nope"}],
            "messages":[]}"#;
        let err = smart_routing(body).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ApiError);
        assert!(
            err.to_string().contains("Cloudflare error 1004: nope"),
            "{err}"
        );
    }

    #[test]
    fn bodies_that_are_not_envelopes() {
        let html = b"<html><body><h1>502 Bad Gateway</h1></body></html>";
        assert_eq!(
            interpret::<SmartRouting>(502, None, html)
                .unwrap_err()
                .kind(),
            ErrorKind::Http5xx
        );
        assert_eq!(
            interpret::<SmartRouting>(403, None, html)
                .unwrap_err()
                .kind(),
            ErrorKind::Auth
        );
        assert_eq!(
            interpret::<SmartRouting>(200, None, html)
                .unwrap_err()
                .kind(),
            ErrorKind::Decode
        );

        let empty = smart_routing("").unwrap_err();
        assert_eq!(empty.kind(), ErrorKind::Decode);
        assert!(empty.to_string().contains("empty body"), "{empty}");

        let truncated = smart_routing(r#"{"result":{"id":"smart_routing","val"#).unwrap_err();
        assert!(truncated.to_string().contains("truncated"), "{truncated}");

        let null = smart_routing(r#"{"result":null,"success":true,"errors":[],"messages":[]}"#);
        assert_eq!(null.unwrap_err().kind(), ErrorKind::Decode);
        let missing = smart_routing(r#"{"success":true,"errors":[],"messages":[]}"#);
        assert_eq!(missing.unwrap_err().kind(), ErrorKind::Decode);
    }

    #[test]
    fn zone_name_is_read_from_the_zone_object() {
        let body = r#"{"result":{"id":"023e105f4ecef8ad9ca31a8372d0c353","name":"example.com",
            "status":"active","paused":false,"type":"full"},"success":true,"errors":[],"messages":[]}"#;
        let zone: Zone = interpret(200, None, body.as_bytes()).unwrap();
        assert_eq!(zone.name, "example.com");
        assert_eq!(zone.status.as_deref(), Some("active"));
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        let now = DateTime::parse_from_rfc3339("2015-10-21T07:28:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(parse_retry_after("5", now), Some(Duration::from_secs(5)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
