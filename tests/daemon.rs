//! The daemon end to end against a mock Cloudflare API (wiremock): what it
//! polls, what it serves, and how it behaves when the API misbehaves.

mod common;

use std::time::Duration;

use common::*;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn argo_path(zone: &str) -> String {
    format!("/zones/{zone}/argo/smart_routing")
}

async fn mock_zone(server: &MockServer, id: &str, name: &str, value: &str, editable: bool) {
    Mock::given(method("GET"))
        .and(path(argo_path(id)))
        .respond_with(ResponseTemplate::new(200).set_body_json(argo_body(
            value,
            editable,
            Some("2024-01-11T12:00:00Z"),
        )))
        .mount(server)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("/zones/{id}")))
        .respond_with(ResponseTemplate::new(200).set_body_json(zone_body(id, name)))
        .mount(server)
        .await;
}

#[tokio::test]
async fn exports_the_state_of_every_zone() {
    let api = MockServer::start().await;
    mock_zone(&api, ZONE_A, "a.example.com", "on", true).await;
    mock_zone(&api, ZONE_B, "b.example.com", "off", false).await;

    let exporter = Exporter::start(config(
        &api.uri(),
        &[ZONE_A, ZONE_B],
        Duration::from_secs(60),
    ))
    .await;
    let m = exporter
        .scrape_until("both zones", |m| {
            m.zone_value("argo_zone_poll_success", ZONE_A) == Some(1.0)
                && m.zone_value("argo_zone_poll_success", ZONE_B) == Some(1.0)
        })
        .await;

    let a = [("zone_id", ZONE_A), ("zone_name", "a.example.com")];
    let b = [("zone_id", ZONE_B), ("zone_name", "b.example.com")];
    assert_eq!(m.value("argo_enabled", &a), Some(1.0));
    assert_eq!(m.value("argo_editable", &a), Some(1.0));
    assert_eq!(m.value("argo_enabled", &b), Some(0.0));
    assert_eq!(m.value("argo_editable", &b), Some(0.0));
    assert_eq!(
        m.value("argo_last_modified_timestamp", &a),
        Some(1_704_974_400.0)
    );
    assert!(
        m.value("argo_zone_last_success_timestamp_seconds", &b)
            .unwrap()
            > 1.7e9
    );
    assert_eq!(
        m.value(
            "argo_api_requests_total",
            &[("endpoint", "smart_routing"), ("code", "200")]
        ),
        Some(2.0)
    );
    assert_eq!(
        m.value("argo_zones", &[("source", "configured")]),
        Some(2.0)
    );
    assert_eq!(m.value("argo_poll_cycles_total", &[]), Some(1.0));
    assert!(m.has("argo_api_request_duration_seconds"));
    assert!(m.has("argo_exporter_build_info"));
    assert!(m.has("process_resident_memory_bytes"));
    exporter.stop().await;
}

#[tokio::test]
async fn sends_the_token_as_a_bearer_header() {
    let api = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(argo_path(ZONE_A)))
        .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(argo_body("on", true, None)))
        .expect(1..)
        .mount(&api)
        .await;

    let exporter = Exporter::start(config(&api.uri(), &[ZONE_A], Duration::from_secs(60))).await;
    exporter
        .scrape_until("a successful poll", |m| {
            m.zone_value("argo_zone_poll_success", ZONE_A) == Some(1.0)
        })
        .await;
    exporter.stop().await;
}

#[tokio::test]
async fn sends_the_global_key_pair_when_configured() {
    use cloudflare_argo_exporter::config::Credentials;
    use secrecy::SecretString;

    let api = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(argo_path(ZONE_A)))
        .and(header("x-auth-email", "ops@example.com"))
        .and(header("x-auth-key", "global-key-1234"))
        .respond_with(ResponseTemplate::new(200).set_body_json(argo_body("on", true, None)))
        .expect(1..)
        .mount(&api)
        .await;

    let mut config = config(&api.uri(), &[ZONE_A], Duration::from_secs(60));
    config.api.credentials = Credentials::GlobalKey {
        email: "ops@example.com".to_owned(),
        key: SecretString::from("global-key-1234"),
    };
    let exporter = Exporter::start(config).await;
    exporter
        .scrape_until("a successful poll", |m| {
            m.zone_value("argo_zone_poll_success", ZONE_A) == Some(1.0)
        })
        .await;
    exporter.stop().await;
}

#[tokio::test]
async fn a_failed_poll_keeps_the_last_good_values() {
    let api = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(argo_path(ZONE_A)))
        .respond_with(ResponseTemplate::new(200).set_body_json(argo_body(
            "on",
            true,
            Some("2024-01-11T12:00:00Z"),
        )))
        .up_to_n_times(1)
        .mount(&api)
        .await;
    Mock::given(method("GET"))
        .and(path(argo_path(ZONE_A)))
        .respond_with(ResponseTemplate::new(502).set_body_raw(
            "<html><body><h1>502 Bad Gateway</h1></body></html>",
            "text/html",
        ))
        .mount(&api)
        .await;

    let exporter = Exporter::start(config(&api.uri(), &[ZONE_A], Duration::from_millis(100))).await;
    let m = exporter
        .scrape_until("the poll after the good one to fail", |m| {
            m.zone_value("argo_zone_poll_success", ZONE_A) == Some(0.0)
        })
        .await;
    // The failed poll was tried three times, each failure counted.
    assert!(m.errors("smart_routing", "http_5xx") >= 3.0);
    assert!(
        m.value("argo_api_retries_total", &[("endpoint", "smart_routing")])
            .unwrap()
            >= 2.0
    );
    assert_eq!(m.zone_value("argo_zone_poll_success", ZONE_A), Some(0.0));
    assert_eq!(m.zone_value("argo_enabled", ZONE_A), Some(1.0));
    assert_eq!(m.zone_value("argo_editable", ZONE_A), Some(1.0));
    assert_eq!(
        m.zone_value("argo_last_modified_timestamp", ZONE_A),
        Some(1_704_974_400.0)
    );
    assert!(m
        .zone_value("argo_zone_last_success_timestamp_seconds", ZONE_A)
        .is_some());
    assert!(m
        .value(
            "argo_api_requests_total",
            &[("endpoint", "smart_routing"), ("code", "502")]
        )
        .is_some());
    exporter.stop().await;
}

#[tokio::test]
async fn failures_are_counted_by_kind() {
    let api = MockServer::start().await;
    let cases = [
        (
            ZONE_A,
            403,
            failure_body(10000, "Authentication error"),
            "auth",
        ),
        (
            ZONE_B,
            401,
            failure_body(1015, "not entitled"),
            "not_entitled",
        ),
    ];
    for (zone, status, body, _) in &cases {
        Mock::given(method("GET"))
            .and(path(argo_path(zone)))
            .respond_with(ResponseTemplate::new(*status).set_body_json(body))
            .mount(&api)
            .await;
    }
    let exporter = Exporter::start(config(
        &api.uri(),
        &[ZONE_A, ZONE_B],
        Duration::from_secs(60),
    ))
    .await;
    let m = exporter
        .scrape_until("both failures", |m| {
            cases
                .iter()
                .all(|(_, _, _, kind)| m.errors("smart_routing", kind) >= 1.0)
        })
        .await;
    // A zone that never answered has no state to report, only the failed poll.
    assert_eq!(m.zone_value("argo_zone_poll_success", ZONE_A), Some(0.0));
    assert_eq!(m.zone_value("argo_enabled", ZONE_A), None);
    exporter.stop().await;
}

#[tokio::test]
async fn a_slow_zone_does_not_hold_up_the_others() {
    let api = MockServer::start().await;
    // The timeout in the test config is 2 s; this zone answers after 30 s.
    Mock::given(method("GET"))
        .and(path(argo_path(ZONE_A)))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(argo_body("on", true, None))
                .set_delay(Duration::from_secs(30)),
        )
        .mount(&api)
        .await;
    mock_zone(&api, ZONE_B, "b.example.com", "on", true).await;

    let exporter = Exporter::start(config(
        &api.uri(),
        &[ZONE_A, ZONE_B],
        Duration::from_secs(60),
    ))
    .await;
    // B is exported while A's request is still waiting.
    let m = exporter
        .scrape_until("zone B", |m| {
            m.zone_value("argo_enabled", ZONE_B) == Some(1.0)
        })
        .await;
    assert_eq!(m.errors("smart_routing", "timeout"), 0.0);

    // A timed-out request is tried again twice before the poll fails.
    let m = exporter
        .scrape_until("zone A to time out", |m| {
            m.zone_value("argo_zone_poll_success", ZONE_A) == Some(0.0)
        })
        .await;
    assert_eq!(m.errors("smart_routing", "timeout"), 3.0);
    assert_eq!(
        m.value(
            "argo_api_requests_total",
            &[("endpoint", "smart_routing"), ("code", "none")]
        ),
        Some(3.0)
    );
    exporter.stop().await;
}

#[tokio::test]
async fn an_overrunning_cycle_is_counted_not_overlapped() {
    let api = MockServer::start().await;
    // Each poll takes 400 ms while the interval is 100 ms.
    Mock::given(method("GET"))
        .and(path(argo_path(ZONE_A)))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(argo_body("on", true, None))
                .set_delay(Duration::from_millis(400)),
        )
        .mount(&api)
        .await;

    let exporter = Exporter::start(config(&api.uri(), &[ZONE_A], Duration::from_millis(100))).await;
    exporter
        .scrape_until("two overruns", |m| {
            m.value("argo_poll_cycle_overruns_total", &[])
                .unwrap_or(0.0)
                >= 2.0
        })
        .await;

    // Each cycle sends one request and waits for it, so requests sent can be
    // at most the cycles finished plus the one in flight. Overlapping cycles
    // would have sent about four times as many.
    let requests = api.received_requests().await.unwrap_or_default();
    let requests = requests
        .iter()
        .filter(|r| r.url.path() == argo_path(ZONE_A))
        .count() as f64;
    let cycles = exporter
        .scrape()
        .await
        .value("argo_poll_cycles_total", &[])
        .unwrap();
    assert!(
        requests <= cycles + 1.0,
        "{requests} requests in {cycles} cycles"
    );
    exporter.stop().await;
}

#[tokio::test]
async fn zone_names_are_retried_until_found() {
    let api = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(argo_path(ZONE_A)))
        .respond_with(ResponseTemplate::new(200).set_body_json(argo_body("off", true, None)))
        .mount(&api)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("/zones/{ZONE_A}")))
        .respond_with(
            ResponseTemplate::new(403).set_body_json(failure_body(10000, "Authentication error")),
        )
        .up_to_n_times(1)
        .mount(&api)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("/zones/{ZONE_A}")))
        .respond_with(ResponseTemplate::new(200).set_body_json(zone_body(ZONE_A, "a.example.com")))
        .mount(&api)
        .await;

    let exporter = Exporter::start(config(&api.uri(), &[ZONE_A], Duration::from_millis(100))).await;
    let unnamed = exporter
        .scrape_until("the zone without a name", |m| {
            m.value("argo_enabled", &[("zone_id", ZONE_A), ("zone_name", "")])
                .is_some()
        })
        .await;
    assert_eq!(unnamed.errors("zone", "auth"), 1.0);

    let named = exporter
        .scrape_until("the zone name", |m| {
            m.value(
                "argo_enabled",
                &[("zone_id", ZONE_A), ("zone_name", "a.example.com")],
            ) == Some(0.0)
        })
        .await;
    // The unnamed series is gone, not left behind beside the named one.
    assert_eq!(
        named.value("argo_enabled", &[("zone_id", ZONE_A), ("zone_name", "")]),
        None
    );
    exporter.stop().await;
}

#[tokio::test]
async fn ready_only_after_the_first_cycle() {
    let api = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(argo_path(ZONE_A)))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(argo_body("on", true, None))
                .set_delay(Duration::from_millis(1500)),
        )
        .mount(&api)
        .await;

    let exporter = Exporter::start(config(&api.uri(), &[ZONE_A], Duration::from_secs(60))).await;
    assert_eq!(exporter.get("/readyz").await.status(), 503);
    assert_eq!(exporter.get("/healthz").await.status(), 200);
    eventually("/readyz to turn 200", || async {
        exporter.get("/readyz").await.status() == 200
    })
    .await;
    exporter.stop().await;
}

#[tokio::test]
async fn scrapes_are_served_from_memory() {
    let api = MockServer::start().await;
    mock_zone(&api, ZONE_A, "a.example.com", "on", true).await;

    let exporter = Exporter::start(config(&api.uri(), &[ZONE_A], Duration::from_secs(60))).await;
    exporter
        .scrape_until("the first poll", |m| {
            m.zone_value("argo_enabled", ZONE_A).is_some()
        })
        .await;
    let before = api.received_requests().await.unwrap_or_default().len();
    for _ in 0..20 {
        exporter.scrape().await;
    }
    let after = api.received_requests().await.unwrap_or_default().len();
    assert_eq!(before, after, "a scrape called the API");
    exporter.stop().await;
}

#[tokio::test]
async fn other_endpoints_and_methods() {
    let api = MockServer::start().await;
    mock_zone(&api, ZONE_A, "a.example.com", "on", true).await;
    let exporter = Exporter::start(config(&api.uri(), &[ZONE_A], Duration::from_secs(60))).await;

    exporter
        .scrape_until("the first poll", |m| {
            m.zone_value("argo_enabled", ZONE_A).is_some()
        })
        .await;
    let landing = exporter.get("/").await;
    assert_eq!(landing.status(), 200);
    assert!(landing.text().await.unwrap().contains("href=\"/metrics\""));
    assert_eq!(exporter.get("/nothing-here").await.status(), 404);

    let metrics = exporter.get("/metrics").await;
    let content_type = metrics.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );

    // Prometheus asks for gzip, and gets the same text compressed.
    let gzipped = reqwest::Client::new()
        .get(exporter.url("/metrics"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(gzipped.headers()["content-encoding"], "gzip");
    let body = gzipped.bytes().await.unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&body[..]), &mut text).unwrap();
    let parsed = Metrics::parse(&text);
    assert_eq!(parsed.zone_value("argo_enabled", ZONE_A), Some(1.0));

    let post = reqwest::Client::new()
        .post(exporter.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 405);
    exporter.stop().await;
}

#[tokio::test]
async fn custom_telemetry_path() {
    let api = MockServer::start().await;
    mock_zone(&api, ZONE_A, "a.example.com", "on", true).await;
    let mut config = config(&api.uri(), &[ZONE_A], Duration::from_secs(60));
    config.web.telemetry_path = "/argo/metrics".to_owned();
    let exporter = Exporter::start(config).await;

    assert_eq!(exporter.get("/argo/metrics").await.status(), 200);
    assert_eq!(exporter.get("/metrics").await.status(), 404);
    exporter.stop().await;
}

#[tokio::test]
async fn redirects_are_not_followed() {
    use cloudflare_argo_exporter::config::Credentials;
    use secrecy::SecretString;

    // Following a redirect could hand the key to whoever the Location names.
    let elsewhere = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_json(argo_body("on", true, None)))
        .mount(&elsewhere)
        .await;
    let api = MockServer::start().await;
    let location = format!("{}{}", elsewhere.uri(), argo_path(ZONE_A));
    Mock::given(method("GET"))
        .and(path(argo_path(ZONE_A)))
        .respond_with(ResponseTemplate::new(302).insert_header("location", location.as_str()))
        .mount(&api)
        .await;

    let mut config = config(&api.uri(), &[ZONE_A], Duration::from_secs(60));
    config.api.credentials = Credentials::GlobalKey {
        email: "ops@example.com".to_owned(),
        key: SecretString::from("global-key-1234"),
    };
    let exporter = Exporter::start(config).await;
    let m = exporter
        .scrape_until("the redirect to count as a failure", |m| {
            m.zone_value("argo_zone_poll_success", ZONE_A) == Some(0.0)
        })
        .await;
    assert_eq!(m.errors("smart_routing", "api_error"), 1.0);
    assert!(elsewhere
        .received_requests()
        .await
        .unwrap_or_default()
        .is_empty());
    exporter.stop().await;
}

#[tokio::test]
async fn head_requests_are_answered() {
    let api = MockServer::start().await;
    mock_zone(&api, ZONE_A, "a.example.com", "on", true).await;
    let exporter = Exporter::start(config(&api.uri(), &[ZONE_A], Duration::from_secs(60))).await;
    let head = reqwest::Client::new()
        .head(exporter.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    exporter.stop().await;
}
