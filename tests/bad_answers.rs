//! Every kind of bad answer the API (or a proxy in front of it) can give:
//! the exporter keeps serving, counts the error under the right kind, logs
//! one line naming the zone and the reason, and keeps the last good values.

mod common;

use std::time::Duration;

use cloudflare_argo_exporter::config::Config;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const GOOD_MODIFIED_ON: &str = "2024-01-11T12:00:00Z";
const GOOD_MODIFIED_UNIX: f64 = 1_704_974_400.0;

fn argo_path(zone: &str) -> String {
    format!("/zones/{zone}/argo/smart_routing")
}

/// A zone ID of its own for each test, so log lines can be told apart.
fn zone_for(test: u32) -> String {
    format!("{:032x}", 0xbad0_0000_u64 + u64::from(test))
}

fn good_answer() -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(argo_body("on", true, Some(GOOD_MODIFIED_ON)))
}

/// The API answers the zone's first poll well and every later one with `bad`.
async fn api_turning_bad(zone: &str, bad: ResponseTemplate) -> MockServer {
    let api = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(argo_path(zone)))
        .respond_with(good_answer())
        .up_to_n_times(1)
        .mount(&api)
        .await;
    Mock::given(method("GET"))
        .and(path(argo_path(zone)))
        .respond_with(bad)
        .mount(&api)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("/zones/{zone}")))
        .respond_with(ResponseTemplate::new(200).set_body_json(zone_body(zone, "bad.example.com")))
        .mount(&api)
        .await;
    api
}

/// Waits for the zone's poll to fail, then checks everything the exporter owes.
async fn assert_survives(exporter: &Exporter, zone: &str, kind: &str, reason: &str) {
    let m = exporter
        .scrape_until("the bad answer", |m| {
            m.zone_value("argo_zone_poll_success", zone) == Some(0.0)
        })
        .await;
    assert!(
        m.errors("smart_routing", kind) >= 1.0,
        "no {kind} error counted:\n{}",
        m.text
    );
    assert_eq!(m.zone_value("argo_enabled", zone), Some(1.0));
    assert_eq!(m.zone_value("argo_editable", zone), Some(1.0));
    assert_eq!(
        m.zone_value("argo_last_modified_timestamp", zone),
        Some(GOOD_MODIFIED_UNIX)
    );

    // A few more failed polls still make one warning.
    let cycles = m.value("argo_poll_cycles_total", &[]).unwrap_or(0.0);
    exporter
        .scrape_until("two more cycles", |m| {
            m.value("argo_poll_cycles_total", &[]).unwrap_or(0.0) >= cycles + 2.0
        })
        .await;
    assert_eq!(exporter.get("/healthz").await.status(), 200);
    let warnings: Vec<String> = log_lines_with(&format!("zone_id={zone}"))
        .into_iter()
        .filter(|line| line.contains("level=warn") && line.contains("poll failed"))
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(
        warnings[0].contains(&format!("kind={kind}")),
        "{}",
        warnings[0]
    );
    assert!(
        warnings[0].contains(reason),
        "{reason:?} missing from {}",
        warnings[0]
    );
}

async fn check(test: u32, bad: ResponseTemplate, kind: &str, reason: &str) {
    check_with(test, bad, kind, reason, |_| {}).await;
}

/// [`check`] with the test configuration changed first.
async fn check_with(
    test: u32,
    bad: ResponseTemplate,
    kind: &str,
    reason: &str,
    change: impl FnOnce(&mut Config),
) {
    let zone = zone_for(test);
    let api = api_turning_bad(&zone, bad).await;
    let mut config = config(&api.uri(), &[&zone], Duration::from_millis(100));
    change(&mut config);
    let exporter = Exporter::start(config).await;
    assert_survives(&exporter, &zone, kind, reason).await;
    exporter.stop().await;
}

#[tokio::test]
async fn html_502_page() {
    let page = "<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>";
    let bad = ResponseTemplate::new(502).set_body_raw(page, "text/html");
    check(1, bad, "http_5xx", "HTTP 502").await;
}

#[tokio::test]
async fn truncated_json() {
    let bad = ResponseTemplate::new(200).set_body_raw(
        r#"{"result":{"id":"smart_routing","val"#,
        "application/json",
    );
    check(2, bad, "decode", "truncated JSON").await;
}

#[tokio::test]
async fn empty_200_body() {
    let bad = ResponseTemplate::new(200).set_body_raw("", "application/json");
    check(3, bad, "decode", "empty body").await;
}

#[tokio::test]
async fn success_false_with_status_200() {
    let bad = ResponseTemplate::new(200).set_body_json(failure_body(1004, "DNS Validation Error"));
    check(
        4,
        bad,
        "api_error",
        "Cloudflare error 1004: DNS Validation Error",
    )
    .await;
}

#[tokio::test]
async fn status_500_with_a_json_error() {
    let bad = ResponseTemplate::new(500).set_body_json(failure_body(1000, "Internal error"));
    check(5, bad, "http_5xx", "Cloudflare error 1000: Internal error").await;
}

#[tokio::test]
async fn result_null_with_success_true() {
    let body = serde_json::json!({"result": null, "success": true, "errors": [], "messages": []});
    check(
        6,
        ResponseTemplate::new(200).set_body_json(body),
        "decode",
        "result is null",
    )
    .await;
}

#[tokio::test]
async fn value_neither_on_nor_off() {
    let bad = ResponseTemplate::new(200).set_body_json(argo_body("partial", true, None));
    check(7, bad, "decode", "partial").await;
}

#[tokio::test]
async fn editable_missing() {
    let body = serde_json::json!({
        "result": {"id": "smart_routing", "value": "on"},
        "success": true, "errors": [], "messages": [],
    });
    check(
        8,
        ResponseTemplate::new(200).set_body_json(body),
        "decode",
        "editable",
    )
    .await;
}

#[tokio::test]
async fn editable_not_a_boolean() {
    let body = serde_json::json!({
        "result": {"id": "smart_routing", "value": "on", "editable": "yes"},
        "success": true, "errors": [], "messages": [],
    });
    check(
        9,
        ResponseTemplate::new(200).set_body_json(body),
        "decode",
        "boolean",
    )
    .await;
}

#[tokio::test]
async fn body_over_one_mebibyte() {
    let huge = format!("{{\"padding\":\"{}\"}}", "x".repeat(2 * 1024 * 1024));
    let bad = ResponseTemplate::new(200).set_body_raw(huge, "application/json");
    check(10, bad, "decode", "body larger than 1048576 bytes").await;
}

#[tokio::test]
async fn answer_slower_than_the_timeout() {
    // A short timeout, so that three attempts a poll leave the test's
    // patience room for the cycles it waits out.
    let bad = good_answer().set_delay(Duration::from_secs(5));
    check_with(11, bad, "timeout", "no answer within 500ms", |config| {
        config.api.timeout = Duration::from_millis(500);
    })
    .await;
}

#[tokio::test]
async fn oversized_5xx_page_is_a_5xx_and_retried() {
    let page = format!("<html><body>{}</body></html>", "x".repeat(2 * 1024 * 1024));
    let bad = ResponseTemplate::new(503).set_body_raw(page, "text/html");
    check(16, bad, "http_5xx", "HTTP 503").await;
}

#[tokio::test]
async fn unknown_zone() {
    let message = "Could not route to /zones/x, perhaps your object identifier is invalid?";
    let bad = ResponseTemplate::new(404).set_body_json(failure_body(7003, message));
    check(12, bad, "not_found", "Cloudflare error 7003").await;
}

#[tokio::test]
async fn valid_json_with_a_wrong_content_type_is_accepted() {
    let zone = zone_for(13);
    let body = argo_body("off", false, Some("2024-02-01T00:00:00Z")).to_string();
    let api = api_turning_bad(
        &zone,
        ResponseTemplate::new(200).set_body_raw(body, "text/html"),
    )
    .await;
    let exporter = Exporter::start(config(&api.uri(), &[&zone], Duration::from_millis(100))).await;
    let m = exporter
        .scrape_until("the second answer", |m| {
            m.zone_value("argo_enabled", &zone) == Some(0.0)
        })
        .await;
    assert_eq!(m.zone_value("argo_zone_poll_success", &zone), Some(1.0));
    assert_eq!(m.errors("smart_routing", "decode"), 0.0);
    exporter.stop().await;
}

#[tokio::test]
async fn unparseable_modified_on_drops_only_that_series() {
    let zone = zone_for(14);
    let bad =
        ResponseTemplate::new(200).set_body_json(argo_body("off", true, Some("last Tuesday")));
    let api = api_turning_bad(&zone, bad).await;
    let exporter = Exporter::start(config(&api.uri(), &[&zone], Duration::from_millis(100))).await;
    let m = exporter
        .scrape_until("the second answer", |m| {
            m.zone_value("argo_enabled", &zone) == Some(0.0)
        })
        .await;
    assert_eq!(m.zone_value("argo_zone_poll_success", &zone), Some(1.0));
    assert_eq!(m.zone_value("argo_last_modified_timestamp", &zone), None);
    assert!(m.errors("smart_routing", "decode") >= 1.0);
    let warnings = log_lines_with(&format!("zone_id={zone}"));
    let warnings: Vec<&String> = warnings
        .iter()
        .filter(|l| l.contains("level=warn"))
        .collect();
    assert!(
        !warnings.is_empty() && warnings[0].contains("last Tuesday"),
        "{warnings:#?}"
    );
    exporter.stop().await;
}

/// A server that answers the first Argo request properly and resets every
/// connection after that, the way a crashing proxy does.
async fn resetting_server() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut answered = false;
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut request = vec![0u8; 4096];
            let read = stream.read(&mut request).await.unwrap_or(0);
            let request = String::from_utf8_lossy(&request[..read]).into_owned();
            if !answered && request.contains("/argo/smart_routing") {
                answered = true;
                let body = good_answer_body();
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            } else {
                // Closing with SO_LINGER 0 sends a TCP reset instead of a FIN.
                let _ = stream.set_zero_linger();
            }
        }
    });
    format!("http://{address}")
}

fn good_answer_body() -> String {
    argo_body("on", true, Some(GOOD_MODIFIED_ON)).to_string()
}

#[tokio::test]
async fn connection_reset() {
    let zone = zone_for(15);
    let url = resetting_server().await;
    let exporter = Exporter::start(config(&url, &[&zone], Duration::from_millis(100))).await;
    assert_survives(&exporter, &zone, "connect", "connection").await;
    exporter.stop().await;
}
