//! End to end with the real Prometheus tools (Debian package `prometheus`):
//! the demo's scrape passes `promtool check metrics`, and a real Prometheus
//! scraping the demo reads back the values the simulated zones hold.
//!
//! Needs `promtool` and `prometheus` on PATH; `scripts/test` installs them.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use cloudflare_argo_exporter::cloudflare::ArgoValue;
use cloudflare_argo_exporter::demo;
use common::{free_port, start_demo, Running};

fn require_tool(name: &str) {
    let found = Command::new(name)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "`{name}` is not installed: run scripts/test, or apt-get install prometheus"
    );
}

async fn get_text(url: &str) -> Option<String> {
    let response = reqwest::get(url).await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    response.text().await.ok()
}

async fn wait_ready(exporter: &str) -> String {
    common::eventually("the demo to be ready", || async {
        get_text(&format!("{exporter}/readyz")).await.is_some()
    })
    .await;
    get_text(&format!("{exporter}/metrics"))
        .await
        .expect("metrics")
}

#[tokio::test]
async fn demo_scrape_passes_promtool_without_warnings() {
    require_tool("promtool");
    let port = free_port();
    let _demo = start_demo(port);
    let text = wait_ready(&format!("http://127.0.0.1:{port}")).await;

    // Every metric the README lists is in the demo's output.
    let metrics = common::Metrics::parse(&text);
    for name in [
        "argo_enabled",
        "argo_editable",
        "argo_last_modified_timestamp",
        "argo_zone_poll_success",
        "argo_zone_last_success_timestamp_seconds",
        "argo_api_requests_total",
        "argo_api_errors_total",
        "argo_api_request_duration_seconds",
        "argo_exporter_build_info",
        "argo_poll_cycles_total",
        "argo_poll_cycle_overruns_total",
        "argo_poll_cycle_duration_seconds",
        "argo_last_poll_cycle_timestamp_seconds",
        "argo_zones",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
    ] {
        assert!(metrics.has(name), "{name} missing from the demo's metrics");
    }

    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool starts");
    promtool
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(text.as_bytes())
        .expect("promtool reads the scrape");
    let output = promtool.wait_with_output().expect("promtool finishes");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "promtool failed:\n{report}");
    assert_eq!(report.trim(), "", "promtool warned:\n{report}");
}

fn write_prometheus_config(dir: &Path, exporter_port: u16) -> std::path::PathBuf {
    let path = dir.join("prometheus.yml");
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
         scrape_configs:\n  - job_name: argo\n    static_configs:\n      \
         - targets: ['127.0.0.1:{exporter_port}']\n"
    );
    std::fs::write(&path, config).expect("write prometheus.yml");
    path
}

/// `argo_enabled` per zone name, as Prometheus answers an instant query.
async fn query_enabled(prometheus: &str) -> BTreeMap<String, f64> {
    let url = format!("{prometheus}/api/v1/query?query=argo_enabled");
    let Some(body) = get_text(&url).await else {
        return BTreeMap::new();
    };
    let answer: serde_json::Value = serde_json::from_str(&body).expect("Prometheus answers JSON");
    let mut values = BTreeMap::new();
    for series in answer["data"]["result"].as_array().into_iter().flatten() {
        let name = series["metric"]["zone_name"].as_str().unwrap_or_default();
        let value = series["value"][1].as_str().and_then(|v| v.parse().ok());
        if let Some(value) = value {
            values.insert(name.to_owned(), value);
        }
    }
    values
}

#[tokio::test]
async fn prometheus_reads_the_demo_values_back() {
    require_tool("prometheus");
    let exporter_port = free_port();
    let _demo = start_demo(exporter_port);
    wait_ready(&format!("http://127.0.0.1:{exporter_port}")).await;

    let dir = tempfile::tempdir().expect("temporary directory");
    let config = write_prometheus_config(dir.path(), exporter_port);
    let prometheus_port = free_port();
    let _prometheus = Running(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prometheus_port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus starts"),
    );

    // The demo's flapping zone may flip during the test, so it is left out.
    let expected: BTreeMap<String, f64> = demo::zones()
        .into_iter()
        .filter(|zone| zone.id != demo::FLAPPING_ZONE_ID)
        .map(|zone| {
            (
                zone.name,
                if zone.value == ArgoValue::On {
                    1.0
                } else {
                    0.0
                },
            )
        })
        .collect();
    let prometheus = format!("http://127.0.0.1:{prometheus_port}");
    let deadline = tokio::time::Instant::now() + common::PATIENCE;
    let seen = loop {
        let seen = query_enabled(&prometheus).await;
        if expected.keys().all(|name| seen.contains_key(name)) {
            break seen;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "Prometheus never returned every demo zone; last answer: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for (name, value) in &expected {
        assert_eq!(seen.get(name), Some(value), "argo_enabled for {name}");
    }
}
