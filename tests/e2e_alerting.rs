//! End to end, for real: the simulator, the exporter (pushing to one
//! Alertmanager), a real Prometheus with the shipped rules (sending to a
//! second Alertmanager), all on loopback. A zone turned off through the
//! simulator's PATCH must reach both Alertmanagers as the same alert, turn
//! back on and resolve on both, and an API outage must raise nothing.
//!
//! Needs `prometheus` and `prometheus-alertmanager` (Debian packages);
//! `scripts/test` installs them. Prints how long each path took.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use cloudflare_argo_exporter::cloudflare::ArgoValue;
use cloudflare_argo_exporter::simulator::{SimZone, Simulator};
use cloudflare_argo_exporter::zones::{ConfiguredZone, Expectation, ZoneRef};
use common::*;
use serde_json::Value;
use tokio::time::Instant;

const ALERT: &str = "ArgoSmartRoutingUnexpectedlyDisabled";
const WATCHED: &str = "00000000000000000000000000000e01";
const EXPECTED_OFF: &str = "00000000000000000000000000000e02";

/// The rule's `for` is 1m; with scrapes, evaluations and resends on top.
const RULE_PATIENCE: Duration = Duration::from_secs(150);

fn spawn(program: &str, args: &[String]) -> Running {
    let child = Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|err| {
            panic!("cannot start {program} ({err}): run scripts/test, which installs it")
        });
    Running(child)
}

fn start_alertmanager(dir: &Path, name: &str) -> (Running, String) {
    let config = dir.join(format!("{name}.yml"));
    std::fs::write(
        &config,
        "route:\n  receiver: blackhole\n  group_wait: 1s\nreceivers:\n  - name: blackhole\n",
    )
    .unwrap();
    let port = free_port();
    let process = spawn(
        "prometheus-alertmanager",
        &[
            format!("--config.file={}", config.display()),
            format!("--storage.path={}", dir.join(name).display()),
            format!("--web.listen-address=127.0.0.1:{port}"),
            "--cluster.listen-address=".to_owned(),
            "--log.level=warn".to_owned(),
        ],
    );
    (process, format!("http://127.0.0.1:{port}"))
}

fn start_prometheus(dir: &Path, exporter: &str, alertmanager: &str) -> (Running, String) {
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("alerts/argo-smart-routing.rules.yml");
    let config = dir.join("prometheus.yml");
    let alertmanager = alertmanager.trim_start_matches("http://");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {rules}\n\
             alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ['{alertmanager}']\n\
             scrape_configs:\n  - job_name: cloudflare-argo\n    static_configs:\n      - targets: ['{exporter}']\n",
            rules = rules.display(),
        ),
    )
    .unwrap();
    let port = free_port();
    let process = spawn(
        "prometheus",
        &[
            format!("--config.file={}", config.display()),
            format!("--storage.tsdb.path={}", dir.join("prometheus").display()),
            format!("--web.listen-address=127.0.0.1:{port}"),
            "--rules.alert.resend-delay=1s".to_owned(),
            "--log.level=warn".to_owned(),
        ],
    );
    (process, format!("http://127.0.0.1:{port}"))
}

async fn get_json(url: &str) -> Option<Value> {
    let response = reqwest::get(url).await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    response.json().await.ok()
}

/// The active unexpected-disable alert for the watched zone, if Alertmanager has one.
async fn active_alert(alertmanager: &str) -> Option<Value> {
    let alerts = get_json(&format!("{alertmanager}/api/v2/alerts")).await?;
    alerts
        .as_array()?
        .iter()
        .find(|alert| {
            alert["labels"]["alertname"] == ALERT
                && alert["labels"]["zone_id"] == WATCHED
                && alert["status"]["state"] == "active"
        })
        .cloned()
}

/// Waits until `condition` holds, returning how long that took.
async fn time_until<F, Fut>(what: &str, patience: Duration, condition: F) -> Duration
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !condition().await {
        assert!(start.elapsed() < patience, "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    start.elapsed()
}

async fn prometheus_query(prometheus: &str, query: &str) -> Vec<Value> {
    let url = format!("{prometheus}/api/v1/query?query={}", urlencode(query));
    get_json(&url)
        .await
        .and_then(|answer| answer["data"]["result"].as_array().cloned())
        .unwrap_or_default()
}

fn urlencode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// Turns Argo on or off through the simulator's API, as a person would.
async fn patch(api: &str, value: &str) {
    let response = reqwest::Client::new()
        .patch(format!("{api}/zones/{WATCHED}/argo/smart_routing"))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({ "value": value }))
        .send()
        .await
        .expect("the simulator answers");
    assert_eq!(response.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_paths_alert_resolve_and_stay_quiet_during_an_outage() {
    let dir = tempfile::tempdir().unwrap();
    let (_am_push, am_push) = start_alertmanager(dir.path(), "am-push");
    let (_am_rules, am_rules) = start_alertmanager(dir.path(), "am-rules");

    let simulator = Simulator::new([
        SimZone::new(WATCHED, "shop.example.com", ArgoValue::On),
        SimZone::new(EXPECTED_OFF, "blog.example.com", ArgoValue::Off),
    ])
    .require_token(TOKEN);
    let api = serve_simulator(&simulator).await;

    let mut config = config(&api, &[], Duration::from_secs(1));
    config.zones.configured = vec![
        ConfiguredZone::from(ZoneRef::Id(zone(WATCHED))),
        ConfiguredZone {
            zone: ZoneRef::Id(zone(EXPECTED_OFF)),
            expect: Some(Expectation::Off),
        },
    ];
    config.alerting.alertmanagers = vec![format!("{am_push}/").parse().unwrap()];
    config.alerting.resend_interval = Duration::from_secs(5);
    let exporter = Exporter::start(config).await;
    let (_prometheus, prometheus) =
        start_prometheus(dir.path(), &exporter.address.to_string(), &am_rules);

    // Everything is up and Prometheus has the zone's state.
    let scraped = format!("argo_enabled{{zone_id=\"{WATCHED}\"}}");
    time_until("Prometheus to scrape the zone", PATIENCE * 4, || async {
        prometheus_query(&prometheus, &scraped).await.len() == 1
    })
    .await;
    time_until("both Alertmanagers", PATIENCE, || async {
        get_json(&format!("{am_push}/api/v2/status"))
            .await
            .is_some()
            && get_json(&format!("{am_rules}/api/v2/status"))
                .await
                .is_some()
    })
    .await;
    // The zone expected off raises nothing anywhere.
    assert!(active_alert(&am_push).await.is_none());

    // Someone turns Argo off.
    let turned_off = Instant::now();
    patch(&api, "off").await;
    time_until("the daemon's alert", PATIENCE, || async {
        active_alert(&am_push).await.is_some()
    })
    .await;
    let push_path = turned_off.elapsed();
    time_until("the rule's alert", RULE_PATIENCE, || async {
        active_alert(&am_rules).await.is_some()
    })
    .await;
    let rule_path = turned_off.elapsed();
    let pushed = active_alert(&am_push).await.expect("still firing");
    let ruled = active_alert(&am_rules).await.expect("still firing");
    assert_eq!(
        pushed["labels"], ruled["labels"],
        "the two paths' labels differ"
    );
    assert_eq!(pushed["annotations"], ruled["annotations"]);
    assert_eq!(pushed["labels"]["zone_name"], "shop.example.com");
    assert_eq!(pushed["labels"]["severity"], "critical");

    // Turned back on: both resolve.
    let turned_on = Instant::now();
    patch(&api, "on").await;
    time_until("the daemon's alert to resolve", PATIENCE, || async {
        active_alert(&am_push).await.is_none()
    })
    .await;
    let push_resolved = turned_on.elapsed();
    time_until("the rule's alert to resolve", RULE_PATIENCE, || async {
        active_alert(&am_rules).await.is_none()
    })
    .await;
    let rule_resolved = turned_on.elapsed();

    // The API fails: polls fail, and no disable alert appears or even pends.
    let simulator = simulator.require_token("a-token-the-exporter-does-not-have");
    time_until("Prometheus to see the failing polls", PATIENCE, || async {
        let query = format!("argo_zone_poll_success{{zone_id=\"{WATCHED}\"}} == 0");
        !prometheus_query(&prometheus, &query).await.is_empty()
    })
    .await;
    let quiet_until = Instant::now() + Duration::from_secs(15);
    while Instant::now() < quiet_until {
        let query = format!("ALERTS{{alertname=\"{ALERT}\"}}");
        assert!(
            prometheus_query(&prometheus, &query).await.is_empty(),
            "alert during outage"
        );
        assert!(active_alert(&am_push).await.is_none());
        assert!(active_alert(&am_rules).await.is_none());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(simulator);

    println!(
        "seconds from the change to the alert in Alertmanager, 1 s poll interval: \
         daemon push {:.1}, Prometheus rule {:.1} (its `for` is 1m); to the resolution: \
         push {:.1}, rule {:.1}",
        push_path.as_secs_f64(),
        rule_path.as_secs_f64(),
        push_resolved.as_secs_f64(),
        rule_resolved.as_secs_f64(),
    );
    exporter.stop().await;
}
