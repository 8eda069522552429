//! What the daemon does when Argo is off where it should be on: the expected
//! state and changes it exports, the alert it pushes to Alertmanager, and
//! `--enforce`. The API is the project's simulator (or wiremock, to refuse a
//! PATCH); Alertmanager is wiremock, or a listener that never answers.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cloudflare_argo_exporter::budget::Budget;
use cloudflare_argo_exporter::cloudflare::{ArgoValue, Client, ZoneQuery};
use cloudflare_argo_exporter::metrics::Metrics as ExporterMetrics;
use cloudflare_argo_exporter::poller::{Actions, Poller, Readiness};
use cloudflare_argo_exporter::simulator::{SimZone, Simulator};
use cloudflare_argo_exporter::zones::{
    ConfiguredZone, Discovery, Expectation, Source, WatchedZone, ZoneRef, ZoneSet,
};
use common::*;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use url::Url;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// Zone IDs of one test: logs are shared by the tests of this file, so each
/// test has zones of its own. Zone `a001` of test 3 is `...3a001`.
struct Zones {
    on: String,
    off: String,
    any: String,
}

fn zones(test: u32) -> Zones {
    let id = |n: u32| format!("{:032x}", test * 0x10_0000 + n);
    Zones {
        on: id(0xa001),
        off: id(0xa002),
        any: id(0xa003),
    }
}

fn simulator(zones: &Zones) -> Simulator {
    Simulator::new([
        SimZone::new(&zones.on, "on.example.com", ArgoValue::On),
        SimZone::new(&zones.off, "off.example.com", ArgoValue::Off),
        SimZone::new(&zones.any, "any.example.com", ArgoValue::Off),
    ])
}

fn configured(id: &str, expect: Option<Expectation>) -> ConfiguredZone {
    ConfiguredZone {
        zone: ZoneRef::Id(zone(id)),
        expect,
    }
}

async fn exporter_for(url: &str, zones: &Zones, alertmanager: Option<&str>) -> Exporter {
    let mut config = config(url, &[], Duration::from_millis(100));
    config.zones.configured = vec![
        configured(&zones.on, None),
        configured(&zones.off, Some(Expectation::Off)),
        configured(&zones.any, Some(Expectation::Any)),
    ];
    if let Some(am) = alertmanager {
        config.alerting.alertmanagers = vec![alertmanager_url(am)];
        config.alerting.resend_interval = RESEND;
    }
    Exporter::start(config).await
}

/// How often the tests' firing alerts are sent again.
const RESEND: Duration = Duration::from_millis(300);

fn alertmanager_url(base: &str) -> Url {
    format!("{}/", base.trim_end_matches('/')).parse().unwrap()
}

async fn alertmanager() -> MockServer {
    let am = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/v2/alerts"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&am)
        .await;
    am
}

/// Every alert the exporter posted, newest last.
async fn posted_alerts(am: &MockServer) -> Vec<serde_json::Value> {
    let requests = am.received_requests().await.unwrap_or_default();
    requests
        .iter()
        .filter(|r| r.url.path() == "/api/v2/alerts")
        .flat_map(|r| serde_json::from_slice::<Vec<serde_json::Value>>(&r.body).unwrap_or_default())
        .collect()
}

fn is_resolved(alert: &serde_json::Value) -> bool {
    let ends: chrono::DateTime<chrono::Utc> = alert["endsAt"]
        .as_str()
        .unwrap_or_default()
        .parse()
        .unwrap_or_default();
    ends <= chrono::Utc::now()
}

#[tokio::test]
async fn expectations_and_changes_are_exported() {
    let zones = zones(1);
    let simulator = simulator(&zones);
    let url = serve_simulator(&simulator).await;
    let exporter = exporter_for(&url, &zones, None).await;

    let m = exporter
        .scrape_until("all three zones", |m| {
            m.zone_value("argo_enabled", &zones.any).is_some()
        })
        .await;
    assert_eq!(m.zone_value("argo_expected_enabled", &zones.on), Some(1.0));
    assert_eq!(m.zone_value("argo_expected_enabled", &zones.off), Some(0.0));
    assert_eq!(m.zone_value("argo_expected_enabled", &zones.any), None);
    let changes = |m: &Metrics, to: &str| {
        m.value(
            "argo_state_changes_total",
            &[("zone_id", &zones.on), ("to", to)],
        )
    };
    assert_eq!(changes(&m, "off"), Some(0.0));
    assert_eq!(changes(&m, "on"), Some(0.0));

    simulator.set_value(&zones.on, ArgoValue::Off);
    let m = exporter
        .scrape_until("the change", |m| changes(m, "off") == Some(1.0))
        .await;
    assert_eq!(m.zone_value("argo_enabled", &zones.on), Some(0.0));
    let warned: Vec<String> = log_lines_with(&format!("zone_id={}", zones.on))
        .into_iter()
        .filter(|l| l.contains("level=warn") && l.contains("Argo Smart Routing changed"))
        .collect();
    assert_eq!(warned.len(), 1, "{warned:#?}");
    for field in ["from=on", "to=off", "modified_on=", "expected=on"] {
        assert!(
            warned[0].contains(field),
            "{field} missing from {}",
            warned[0]
        );
    }
    exporter.stop().await;
}

#[tokio::test]
async fn a_poll_error_is_never_a_change() {
    let zones = zones(2);
    let simulator = simulator(&zones).require_token(TOKEN);
    let url = serve_simulator(&simulator).await;
    let exporter = exporter_for(&url, &zones, None).await;
    exporter
        .scrape_until("the first poll", |m| {
            m.zone_value("argo_enabled", &zones.on) == Some(1.0)
        })
        .await;

    let simulator = simulator.require_token("rotated-elsewhere");
    exporter
        .scrape_until("polls to fail", |m| {
            m.zone_value("argo_zone_poll_success", &zones.on) == Some(0.0)
        })
        .await;
    let simulator = simulator.require_token(TOKEN);
    let m = exporter
        .scrape_until("polls to work again", |m| {
            m.zone_value("argo_zone_poll_success", &zones.on) == Some(1.0)
        })
        .await;
    for to in ["on", "off"] {
        let changes = m.value(
            "argo_state_changes_total",
            &[("zone_id", &zones.on), ("to", to)],
        );
        assert_eq!(changes, Some(0.0), "to={to}");
    }
    drop(simulator);
    exporter.stop().await;
}

#[tokio::test]
async fn the_alert_is_pushed_at_once_and_resolved() {
    let zones = zones(3);
    let simulator = simulator(&zones);
    let url = serve_simulator(&simulator).await;
    let am = alertmanager().await;
    let exporter = exporter_for(&url, &zones, Some(&am.uri())).await;
    exporter
        .scrape_until("the first poll", |m| {
            m.zone_value("argo_enabled", &zones.on) == Some(1.0)
        })
        .await;
    // Zones fine or expected off raise nothing.
    assert!(posted_alerts(&am).await.is_empty());

    simulator.set_value(&zones.on, ArgoValue::Off);
    eventually("the alert", || async {
        posted_alerts(&am).await.iter().any(|a| !is_resolved(a))
    })
    .await;
    let alert = posted_alerts(&am)
        .await
        .into_iter()
        .find(|a| !is_resolved(a))
        .unwrap();
    assert_eq!(
        alert["labels"],
        serde_json::json!({
            "alertname": "ArgoSmartRoutingUnexpectedlyDisabled",
            "severity": "critical",
            "zone_id": zones.on,
            "zone_name": "on.example.com",
        })
    );
    assert!(alert["annotations"]["runbook_url"]
        .as_str()
        .unwrap()
        .contains("#argosmartrouting"));

    // It is sent again while it lasts.
    let sent = posted_alerts(&am).await.len();
    eventually("a resend", || async {
        posted_alerts(&am).await.len() > sent + 1
    })
    .await;

    simulator.set_value(&zones.on, ArgoValue::On);
    eventually("the resolution", || async {
        posted_alerts(&am).await.last().is_some_and(is_resolved)
    })
    .await;
    let m = exporter.scrape().await;
    assert!(
        m.value(
            "argo_alertmanager_notifications_total",
            &[("result", "success")]
        )
        .unwrap()
            >= 3.0
    );
    exporter.stop().await;
}

#[tokio::test]
async fn a_failing_alertmanager_is_retried_and_counted() {
    let zones = zones(4);
    let simulator = Simulator::new([SimZone::new(&zones.on, "on.example.com", ArgoValue::Off)]);
    let url = serve_simulator(&simulator).await;
    let am = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(2)
        .mount(&am)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&am)
        .await;
    let exporter = exporter_for(&url, &zones, Some(&am.uri())).await;
    let m = exporter
        .scrape_until("a delivery after two failures", |m| {
            m.value(
                "argo_alertmanager_notifications_total",
                &[("result", "success")],
            ) >= Some(1.0)
        })
        .await;
    assert_eq!(
        m.value(
            "argo_alertmanager_notifications_total",
            &[("result", "failure")]
        ),
        Some(2.0)
    );
    exporter.stop().await;
}

#[tokio::test]
async fn enforce_turns_argo_back_on_after_the_grace() {
    let zones = zones(5);
    let simulator = simulator(&zones).record_requests();
    let locked = format!("{:032x}", 0xa004 + 0x50_0000);
    let mut not_editable = SimZone::new(&locked, "locked.example.com", ArgoValue::Off);
    not_editable.editable = false;
    simulator.insert(not_editable);
    let url = serve_simulator(&simulator).await;

    let mut config = config(&url, &[], Duration::from_millis(100));
    config.zones.configured = vec![configured(&zones.on, None), configured(&locked, None)];
    config.alerting.enforce_grace = Some(Duration::from_millis(500));
    let exporter = Exporter::start(config).await;
    exporter
        .scrape_until("the first poll", |m| {
            m.zone_value("argo_enabled", &zones.on) == Some(1.0)
        })
        .await;

    let turned_off = tokio::time::Instant::now();
    simulator.set_value(&zones.on, ArgoValue::Off);
    let m = exporter
        .scrape_until("the remediation", |m| {
            m.value("argo_remediations_total", &[("result", "success")]) == Some(1.0)
        })
        .await;
    assert_eq!(simulator.zone(&zones.on).unwrap().value, ArgoValue::On);
    assert_eq!(m.zone_value("argo_enabled", &zones.on), Some(1.0));
    // The zone that is not editable was never changed, only read.
    assert_eq!(simulator.zone(&locked).unwrap().value, ArgoValue::Off);
    assert_eq!(
        m.value("argo_remediations_total", &[("result", "failure")]),
        Some(0.0)
    );

    // Not before the grace: the PATCH came at least 500 ms after the change.
    let log = simulator.request_log();
    let patches: Vec<_> = log
        .iter()
        .filter(|(_, request)| request.starts_with("PATCH ") && request.ends_with("/smart_routing"))
        .collect();
    assert_eq!(patches.len(), 1, "{patches:?}");
    let waited = patches[0].0 - turned_off;
    assert!(
        waited >= Duration::from_millis(500),
        "patched after {waited:?}"
    );
    let warned = log_lines_with("--enforce turned Argo Smart Routing back on");
    assert!(
        warned
            .iter()
            .any(|l| l.contains(&format!("zone_id={}", zones.on))),
        "{warned:#?}"
    );
    exporter.stop().await;
}

/// The alerts posted for one zone, newest last.
async fn alerts_for(am: &MockServer, zone_id: &str) -> Vec<serde_json::Value> {
    posted_alerts(am)
        .await
        .into_iter()
        .filter(|a| a["labels"]["zone_id"] == zone_id)
        .collect()
}

/// Waits until the last alert posted for the zone is firing (or resolved).
async fn until_last_alert(am: &MockServer, zone_id: &str, resolved: bool) {
    let what = if resolved {
        "the resolution"
    } else {
        "the alert"
    };
    eventually(what, || async {
        alerts_for(am, zone_id)
            .await
            .last()
            .is_some_and(|alert| is_resolved(alert) == resolved)
    })
    .await;
}

/// One watched zone, as the zone tracker would publish it.
fn watched(id: &str, name: &str, expect: Expectation) -> ZoneSet {
    Arc::new(vec![WatchedZone {
        id: zone(id),
        name: Some(name.to_owned()),
        source: Source::Configured,
        expect,
    }])
}

#[tokio::test]
async fn the_alert_resolves_when_the_zone_is_no_longer_expected_on() {
    // The daemon has no configuration reload: a watched zone's expectation
    // only changes when the zone tracker publishes a new zone set. The poller
    // and its actions are started here as `run` starts them, with the set in
    // the test's hands.
    let zones = zones(6);
    let simulator = Simulator::new([SimZone::new(&zones.on, "on.example.com", ArgoValue::Off)])
        .require_token(TOKEN);
    let url = serve_simulator(&simulator).await;
    let am = alertmanager().await;
    let mut config = config(&url, &[], Duration::from_millis(100));
    config.alerting.alertmanagers = vec![alertmanager_url(&am.uri())];
    config.alerting.resend_interval = RESEND;
    let metrics = ExporterMetrics::new(config.api.rate_limit).unwrap();
    let budget = Arc::new(Budget::new(config.api.rate_limit));
    let client = Client::new(&config.api, Arc::clone(&budget), metrics.api.clone()).unwrap();
    let stop = CancellationToken::new();
    let actions = Actions::start(&config.alerting, &metrics, &stop).unwrap();
    let (publish, zone_set) = watch::channel(watched(&zones.on, "on.example.com", Expectation::On));
    let poller = Poller::new(
        client,
        metrics.clone(),
        &config.poll,
        budget.limit().period(),
        zone_set,
        actions,
    );
    let polling = tokio::spawn(poller.run(Readiness::default(), false, stop.clone()));

    until_last_alert(&am, &zones.on, false).await;

    let scrape = || Metrics::parse(&String::from_utf8(metrics.encode().unwrap()).unwrap());
    let poll_success = || scrape().zone_value("argo_zone_poll_success", &zones.on);

    // Polls now fail, so no poll can judge the zone again: the change of
    // expectation alone must resolve the alert. Argo stays off throughout.
    let simulator = simulator.require_token("rotated-elsewhere");
    eventually("polls to fail", || async { poll_success() == Some(0.0) }).await;
    publish.send_replace(watched(&zones.on, "on.example.com", Expectation::Any));
    until_last_alert(&am, &zones.on, true).await;

    // Polls that work again, and still read Argo off, raise it no more.
    let simulator = simulator.require_token(TOKEN);
    eventually("polls to work again", || async {
        poll_success() == Some(1.0)
    })
    .await;
    let cycles = metrics.poll.cycles.get();
    eventually("more poll cycles", || async {
        metrics.poll.cycles.get() >= cycles + 5
    })
    .await;
    let alerts = alerts_for(&am, &zones.on).await;
    assert!(alerts.last().is_some_and(is_resolved), "{alerts:#?}");
    let m = scrape();
    assert_eq!(m.zone_value("argo_enabled", &zones.on), Some(0.0));
    assert_eq!(m.zone_value("argo_expected_enabled", &zones.on), None);
    drop(simulator);

    stop.cancel();
    polling.await.unwrap();
}

#[tokio::test]
async fn the_alert_resolves_when_the_zone_is_no_longer_watched() {
    let zones = zones(7);
    let simulator = Simulator::new([
        SimZone::new(&zones.on, "on.example.com", ArgoValue::Off),
        SimZone::new(&zones.any, "any.example.com", ArgoValue::On),
    ]);
    let url = serve_simulator(&simulator).await;
    let am = alertmanager().await;
    let mut config = config(&url, &[], Duration::from_millis(100));
    let refresh = Duration::from_millis(300);
    config.zones.discovery = Some(Discovery {
        query: ZoneQuery::default(),
        include: None,
        exclude: None,
        refresh,
    });
    config.zones.refresh = refresh;
    config.alerting.alertmanagers = vec![alertmanager_url(&am.uri())];
    config.alerting.resend_interval = RESEND;
    let exporter = Exporter::start(config).await;
    until_last_alert(&am, &zones.on, false).await;

    // The zone leaves the account while its alert fires.
    simulator.remove(&zones.on);
    exporter
        .scrape_until("the zone no longer watched", |m| {
            m.value("argo_zones", &[("source", "discovered")]) == Some(1.0)
                && m.zone_value("argo_enabled", &zones.on).is_none()
        })
        .await;
    until_last_alert(&am, &zones.on, true).await;
    let resolved = alerts_for(&am, &zones.on).await.pop().unwrap();
    assert_eq!(resolved["labels"]["zone_name"], "on.example.com");
    exporter.stop().await;
}

/// An "Alertmanager" on loopback that accepts connections and never answers
/// on them: its URL, and how many connections it has taken.
async fn hanging_alertmanager() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    tokio::spawn(async move {
        // Held open, unread, until the test's runtime ends.
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    (url, accepted)
}

#[tokio::test]
async fn a_hanging_alertmanager_does_not_hold_up_polling() {
    let zones = zones(8);
    let simulator = simulator(&zones);
    let url = serve_simulator(&simulator).await;
    let (am, accepted) = hanging_alertmanager().await;
    let exporter = exporter_for(&url, &zones, Some(&am)).await;
    exporter
        .scrape_until("the first poll", |m| {
            m.zone_value("argo_enabled", &zones.on) == Some(1.0)
        })
        .await;

    // The alert sends the notifier to an Alertmanager that never answers.
    simulator.set_value(&zones.on, ArgoValue::Off);
    eventually("the notifier to connect", || async {
        accepted.load(Ordering::SeqCst) >= 1
    })
    .await;

    // Polling goes on meanwhile: cycles count up and values follow the API.
    let notifications = |m: &Metrics, result: &str| {
        m.value(
            "argo_alertmanager_notifications_total",
            &[("result", result)],
        )
        .unwrap_or(0.0)
    };
    let cycles = |m: &Metrics| m.value("argo_poll_cycles_total", &[]).unwrap_or(0.0);
    let stuck = exporter.scrape().await;
    simulator.set_value(&zones.any, ArgoValue::On);
    let m = exporter
        .scrape_until("more cycles and the zone turned on", |m| {
            cycles(m) >= cycles(&stuck) + 5.0
                && m.zone_value("argo_enabled", &zones.any) == Some(1.0)
        })
        .await;
    simulator.set_value(&zones.any, ArgoValue::Off);
    let m = exporter
        .scrape_until("more cycles and the zone turned off", |later| {
            cycles(later) >= cycles(&m) + 5.0
                && later.zone_value("argo_enabled", &zones.any) == Some(0.0)
        })
        .await;
    assert!(
        m.zone_value("argo_zone_last_success_timestamp_seconds", &zones.on)
            > stuck.zone_value("argo_zone_last_success_timestamp_seconds", &zones.on)
    );
    assert_eq!(m.zone_value("argo_enabled", &zones.on), Some(0.0));
    assert_eq!(notifications(&m, "success"), 0.0);

    // The stuck request times out and is counted as a failure.
    eventually_within(
        "a failed notification",
        cloudflare_argo_exporter::alerting::NOTIFY_TIMEOUT + PATIENCE,
        || async { notifications(&exporter.scrape().await, "failure") >= 1.0 },
    )
    .await;
    assert_eq!(notifications(&exporter.scrape().await, "success"), 0.0);
    exporter.stop().await;
}

#[tokio::test]
async fn enforce_with_a_refused_patch_tries_once_per_grace_period() {
    let zone_id = zones(9).on;
    let argo = format!("/zones/{zone_id}/argo/smart_routing");
    let api = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(argo.as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(argo_body(
            "off",
            true,
            Some("2024-01-11T12:00:00.500000Z"),
        )))
        .mount(&api)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("/zones/{zone_id}")))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(zone_body(&zone_id, "locked.example.com")),
        )
        .mount(&api)
        .await;
    // A token without "Zone Settings Write".
    Mock::given(method("PATCH"))
        .and(path(argo.as_str()))
        .respond_with(
            ResponseTemplate::new(403).set_body_json(failure_body(10000, "Authentication error")),
        )
        .mount(&api)
        .await;

    let grace = Duration::from_secs(1);
    let mut config = config(&api.uri(), &[&zone_id], Duration::from_millis(100));
    config.alerting.enforce_grace = Some(grace);
    let started = tokio::time::Instant::now();
    let exporter = Exporter::start(config).await;

    let patches = || async {
        let requests = api.received_requests().await.unwrap_or_default();
        requests
            .iter()
            .filter(|r| r.method == wiremock::http::Method::PATCH)
            .count()
    };
    let failures = |m: &Metrics| m.value("argo_remediations_total", &[("result", "failure")]);
    eventually("four tries", || async { patches().await >= 4 }).await;
    // Each try is counted once its PATCH has been answered.
    eventually("the tries counted", || async {
        let seen = patches().await;
        failures(&exporter.scrape().await) == Some(seen as f64)
    })
    .await;

    // A try comes a whole grace after the zone was first seen off, and each
    // later one a whole grace after the last: within `elapsed` (measured
    // after counting, so it can only be too long) there is room for
    // elapsed / grace of them, and one more is allowed for generosity.
    let tries = patches().await;
    let elapsed = started.elapsed();
    let periods = (elapsed.as_secs_f64() / grace.as_secs_f64()).floor();
    assert!(
        tries as f64 <= periods + 1.0,
        "{tries} PATCHes in {elapsed:?} with a grace of {grace:?}"
    );
    let m = exporter.scrape().await;
    assert_eq!(
        m.value("argo_remediations_total", &[("result", "success")]),
        Some(0.0)
    );
    assert_eq!(m.zone_value("argo_enabled", &zone_id), Some(0.0));
    let warned = log_lines_with("--enforce could not turn Argo Smart Routing back on");
    assert!(
        warned
            .iter()
            .any(|l| l.contains(&format!("zone_id={zone_id}"))),
        "{warned:#?}"
    );
    exporter.stop().await;
}
