//! The operator commands, run as a user would run the binary, against the
//! project's simulator: `status`, `check` and its exit codes, and `enable` /
//! `disable` with the safe pattern (read, check editable, change, read back).

mod common;

use std::process::Output;

use cloudflare_argo_exporter::cloudflare::ArgoValue;
use cloudflare_argo_exporter::simulator::{SimZone, Simulator};

const BINARY: &str = env!("CARGO_BIN_EXE_cloudflare-argo-exporter");
const ON: &str = "00000000000000000000000000000c01";
const OFF: &str = "00000000000000000000000000000c02";
const LOCKED: &str = "00000000000000000000000000000c03";
const UNKNOWN: &str = "00000000000000000000000000000c99";

fn simulator() -> Simulator {
    let mut locked = SimZone::new(LOCKED, "locked.example.com", ArgoValue::Off);
    locked.editable = false;
    Simulator::new([
        SimZone::new(ON, "on.example.com", ArgoValue::On),
        SimZone::new(OFF, "off.example.com", ArgoValue::Off),
        locked,
    ])
    .record_requests()
}

/// Runs the binary with `args` against the simulator at `url`.
async fn run(url: &str, args: &[&str]) -> Output {
    let mut command = std::process::Command::new(BINARY);
    command
        .args(args)
        .args(["--log.level", "warn"])
        .env_clear()
        .env("CLOUDFLARE_API_URL", url)
        .env("CLOUDFLARE_API_TOKEN", common::TOKEN);
    tokio::task::spawn_blocking(move || command.output().expect("binary runs"))
        .await
        .expect("no panic")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn patches(simulator: &Simulator) -> usize {
    let log = simulator.request_log();
    log.iter()
        .filter(|(_, request)| request.starts_with("PATCH "))
        .count()
}

#[tokio::test]
async fn status_prints_a_table_and_json() {
    let simulator = simulator();
    let url = common::serve_simulator(&simulator).await;
    let output = run(&url, &["status", "--zone", ON, "--zone", OFF]).await;
    assert_eq!(output.status.code(), Some(0));
    let table = stdout(&output);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(
        lines[0].starts_with("NAME") && lines[0].contains("VERDICT"),
        "{table}"
    );
    let off = lines
        .iter()
        .find(|l| l.starts_with("off.example.com"))
        .unwrap();
    assert!(
        off.contains(OFF) && off.ends_with("UNEXPECTEDLY OFF"),
        "{off}"
    );
    let on = lines
        .iter()
        .find(|l| l.starts_with("on.example.com"))
        .unwrap();
    assert!(on.ends_with(" ok"), "{on}");

    let output = run(
        &url,
        &["status", "--zone", ON, "--zone", OFF, "--output", "json"],
    )
    .await;
    let zones: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).unwrap();
    let off = zones.iter().find(|z| z["zone_id"] == OFF).unwrap();
    assert_eq!(off["value"], "off");
    assert_eq!(off["editable"], true);
    assert_eq!(off["expected"], "on");
    assert_eq!(off["verdict"], "unexpectedly_off");
}

#[tokio::test]
async fn check_exit_codes() {
    let simulator = simulator();
    let url = common::serve_simulator(&simulator).await;
    assert_eq!(
        run(&url, &["check", "--zone", ON]).await.status.code(),
        Some(0)
    );
    assert_eq!(
        run(&url, &["check", "--zone", ON, "--zone", OFF])
            .await
            .status
            .code(),
        Some(1)
    );
    let expect_any = ["check", "--zone", OFF, "--argo.expect", "any"];
    assert_eq!(run(&url, &expect_any).await.status.code(), Some(0));
    let unknown = run(
        &url,
        &["check", "--zone", ON, "--zone", OFF, "--zone", UNKNOWN],
    )
    .await;
    assert_eq!(unknown.status.code(), Some(2));
    assert!(
        stdout(&unknown).contains("not_found"),
        "{}",
        stdout(&unknown)
    );
}

#[tokio::test]
async fn check_reads_expectations_from_the_config_file() {
    let simulator = simulator();
    let url = common::serve_simulator(&simulator).await;
    let mut file = tempfile::NamedTempFile::new().unwrap();
    let yaml = format!("zones:\n  - id: {ON}\n  - name: off.example.com\n    expect: off\n");
    std::io::Write::write_all(&mut file, yaml.as_bytes()).unwrap();
    let path = file.path().to_str().unwrap();
    let output = run(&url, &["check", "--config.file", path]).await;
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
}

#[tokio::test]
async fn enable_follows_the_safe_pattern() {
    let simulator = simulator();
    let url = common::serve_simulator(&simulator).await;

    // Not editable: refused, nothing written.
    let locked = run(&url, &["enable", LOCKED]).await;
    assert_eq!(locked.status.code(), Some(1));
    assert!(
        stdout(&locked).contains("not editable"),
        "{}",
        stdout(&locked)
    );
    // Already on: nothing to do.
    let already = run(&url, &["enable", ON]).await;
    assert_eq!(already.status.code(), Some(0));
    assert!(
        stdout(&already).contains("already on"),
        "{}",
        stdout(&already)
    );
    // Dry run: says what it would do, does nothing.
    let dry = run(&url, &["enable", "--dry-run", OFF]).await;
    assert_eq!(dry.status.code(), Some(0));
    assert!(stdout(&dry).contains("would turn on"), "{}", stdout(&dry));
    assert_eq!(patches(&simulator), 0);
    assert_eq!(simulator.zone(OFF).unwrap().value, ArgoValue::Off);

    // The real change, read back afterwards.
    let changed = run(&url, &["enable", OFF]).await;
    assert_eq!(changed.status.code(), Some(0), "{}", stdout(&changed));
    assert!(
        stdout(&changed).contains("turned on"),
        "{}",
        stdout(&changed)
    );
    assert_eq!(simulator.zone(OFF).unwrap().value, ArgoValue::On);
    let log = simulator.request_log();
    let requests: Vec<&str> = log
        .iter()
        .map(|(_, r)| r.as_str())
        .filter(|r| r.contains(OFF))
        .collect();
    let patch = requests
        .iter()
        .position(|r| r.starts_with("PATCH"))
        .unwrap();
    assert!(
        requests[..patch].iter().any(|r| r.starts_with("GET")),
        "{requests:?}"
    );
    assert!(
        requests[patch + 1..].iter().any(|r| r.starts_with("GET")),
        "{requests:?}"
    );
    assert_eq!(patches(&simulator), 1);
}

#[tokio::test]
async fn disable_takes_zone_names_and_reports_the_worst_outcome() {
    let simulator = simulator();
    let url = common::serve_simulator(&simulator).await;
    let output = run(&url, &["disable", "on.example.com", UNKNOWN]).await;
    assert_eq!(output.status.code(), Some(2), "{}", stdout(&output));
    assert_eq!(simulator.zone(ON).unwrap().value, ArgoValue::Off);
    let text = stdout(&output);
    assert!(text.contains("on.example.com: turned off"), "{text}");
    assert!(
        text.contains(&format!("{UNKNOWN}: failed: not_found")),
        "{text}"
    );

    let missing = run(&url, &["disable"]).await;
    assert_eq!(missing.status.code(), Some(64));
}

#[tokio::test]
async fn status_says_why_a_zone_name_could_not_be_resolved() {
    // Regression: every failed name lookup read "no zone of that name is
    // visible to the token", even when the API could not be reached at all.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/client/v4", closed.local_addr().unwrap());
    drop(closed);
    let output = run(
        &url,
        &["check", "--zone", "on.example.com", "--output", "json"],
    )
    .await;
    assert_eq!(output.status.code(), Some(2));
    let reports: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    let error = reports[0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("(connect)"), "{reports}");

    let simulator = simulator();
    let url = common::serve_simulator(&simulator).await;
    let output = run(
        &url,
        &["check", "--zone", "typo.example.com", "--output", "json"],
    )
    .await;
    assert_eq!(output.status.code(), Some(2));
    let reports: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    let error = reports[0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("no zone of that name"), "{reports}");
}
