//! The binary as an operator meets it: exit codes and messages for bad
//! configuration, log output, secrets kept out of it, and clean shutdown.

mod common;

use std::process::{Command, Output, Stdio};

use common::{failure_body, ZONE_A, ZONE_B};
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

const BINARY: &str = env!("CARGO_BIN_EXE_cloudflare-argo-exporter");
const ZONE_C: &str = "cccccccccccccccccccccccccccccccc";

/// The binary with a clean environment, so the caller's variables cannot leak in.
fn exporter(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(BINARY);
    command.args(args).env_clear().envs(env.iter().copied());
    command
}

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    exporter(args, env).output().expect("binary runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn assert_usage_error(output: &Output, mentions: &[&str]) {
    let text = stderr(output);
    assert_eq!(output.status.code(), Some(64), "stderr: {text}");
    assert_eq!(
        text.trim_end().lines().count(),
        1,
        "one line expected: {text}"
    );
    for needle in mentions {
        assert!(text.contains(needle), "{needle:?} missing from: {text}");
    }
}

#[test]
fn malformed_zone_flag_exits_64_naming_the_value() {
    let output = run(&["--zone", "not-a-zone"], &[("CLOUDFLARE_API_TOKEN", "t")]);
    assert_usage_error(&output, &["--zone", "not-a-zone"]);
}

#[test]
fn malformed_zone_variable_exits_64_naming_the_value() {
    let zones = format!("{ZONE_A},EXAMPLE");
    let output = run(
        &[],
        &[
            ("ARGO_EXPORTER_ZONES", &zones),
            ("CLOUDFLARE_API_TOKEN", "t"),
        ],
    );
    assert_usage_error(&output, &["EXAMPLE", "ARGO_EXPORTER_ZONES"]);
}

#[test]
fn missing_credentials_exit_64_naming_the_variables() {
    let output = run(&["--zone", ZONE_A], &[]);
    assert_usage_error(&output, &["CLOUDFLARE_API_TOKEN", "CLOUDFLARE_API_KEY"]);
}

#[test]
fn missing_zones_exit_64() {
    let output = run(&[], &[("CLOUDFLARE_API_TOKEN", "t")]);
    assert_usage_error(&output, &["--zone", "ARGO_EXPORTER_ZONES"]);
}

#[test]
fn bad_durations_and_numbers_exit_64_naming_the_flag() {
    let env = [("CLOUDFLARE_API_TOKEN", "t")];
    for (flag, value) in [
        ("--poll.interval", "soon"),
        ("--poll.interval", "0s"),
        ("--cloudflare.timeout", "-1s"),
        ("--poll.concurrency", "0"),
        ("--log.format", "xml"),
        ("--web.listen-address", "9832"),
        ("--web.telemetry-path", "metrics"),
        ("--cloudflare.api-url", "ftp://example.com"),
    ] {
        let output = run(&["--zone", ZONE_A, &format!("{flag}={value}")], &env);
        assert_usage_error(&output, &[flag]);
    }
}

#[test]
fn help_exits_zero_and_lists_the_environment_variables() {
    let output = run(&["--help"], &[]);
    assert_eq!(output.status.code(), Some(0));
    let help = String::from_utf8_lossy(&output.stdout);
    for text in [
        "--web.listen-address",
        "ARGO_EXPORTER_ZONES",
        "CLOUDFLARE_API_URL",
        "demo",
    ] {
        assert!(help.contains(text), "{text} missing from help");
    }
}

#[test]
fn a_busy_port_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let output = run(
        &["--zone", ZONE_A, "--web.listen-address", &address],
        &[("CLOUDFLARE_API_TOKEN", "t")],
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("--web.listen-address"),
        "{}",
        stderr(&output)
    );
}

/// Runs the exporter against an API that refuses everything, at debug level,
/// for a few poll cycles, then stops it with SIGTERM.
async fn logs_of_a_refused_run(format: &str, env: &[(&str, &str)]) -> Output {
    logs_of_a_run(refusal(), &[ZONE_A], format, env).await
}

fn refusal() -> ResponseTemplate {
    ResponseTemplate::new(403).set_body_json(failure_body(10000, "Authentication error"))
}

/// Runs the exporter on `zones` against an API that always gives `answer`.
async fn logs_of_a_run(
    answer: ResponseTemplate,
    zones: &[&str],
    format: &str,
    env: &[(&str, &str)],
) -> Output {
    let api = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(answer)
        .mount(&api)
        .await;

    let mut env = env.to_vec();
    let url = api.uri();
    env.push(("CLOUDFLARE_API_URL", &url));
    let zones = zones.join(",");
    let child = exporter(
        &[
            "--zone",
            &zones,
            "--web.listen-address",
            "127.0.0.1:0",
            "--poll.interval",
            "100ms",
            "--cloudflare.rate-limit",
            "100/1s",
            "--log.level",
            "debug",
            "--log.format",
            format,
        ],
        &env,
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("binary starts");

    // Six requests for each zone's Argo setting are two whole cycles even
    // when every poll is retried twice.
    let enough = 6 * zones.split(',').count();
    common::eventually("a few polls", || async {
        let requests = api.received_requests().await.unwrap_or_default();
        let argo = requests
            .iter()
            .filter(|r| r.url.path().ends_with("/argo/smart_routing"));
        argo.count() >= enough
    })
    .await;
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn secrets_never_reach_the_logs() {
    let token = "tok-SHOULD-NEVER-BE-LOGGED";
    let output = logs_of_a_refused_run("logfmt", &[("CLOUDFLARE_API_TOKEN", token)]).await;
    let logs = stderr(&output);
    assert_eq!(output.status.code(), Some(0), "{logs}");
    assert!(logs.contains("Authentication error"), "{logs}");
    assert!(!logs.contains(token), "the token was logged:\n{logs}");

    let key = "key-SHOULD-NEVER-BE-LOGGED";
    let env = [
        ("CLOUDFLARE_EMAIL", "ops@example.com"),
        ("CLOUDFLARE_API_KEY", key),
    ];
    let logs = stderr(&logs_of_a_refused_run("logfmt", &env).await);
    assert!(!logs.contains(key), "the key was logged:\n{logs}");
}

#[tokio::test]
async fn secrets_echoed_by_the_api_never_reach_the_logs() {
    // A proxy or an error message that quotes the request must not carry the
    // token into the logs.
    let token = "tok-ECHOED-BY-A-PROXY";
    let echo = ResponseTemplate::new(200)
        .set_body_json(failure_body(1000, &format!("bad header Bearer {token}")));
    let env = [("CLOUDFLARE_API_TOKEN", token)];
    let logs = stderr(&logs_of_a_run(echo, &[ZONE_A], "logfmt", &env).await);
    assert!(logs.contains("bad header Bearer [redacted]"), "{logs}");
    assert!(!logs.contains(token), "the token was logged:\n{logs}");
}

#[tokio::test]
async fn secrets_from_a_token_file_never_reach_the_logs() {
    let token = "file-tok-SHOULD-NEVER-BE-LOGGED";
    let mut file = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut file, format!("{token}\n").as_bytes()).unwrap();
    let path = file.path().to_str().unwrap().to_owned();
    let output =
        logs_of_a_refused_run("json", &[("CLOUDFLARE_API_TOKEN_FILE", path.as_str())]).await;
    let logs = stderr(&output);
    assert_eq!(output.status.code(), Some(0), "{logs}");
    assert!(logs.contains("Authentication error"), "{logs}");
    assert!(!logs.contains(token), "the token was logged:\n{logs}");
}

#[test]
fn an_unusable_token_exits_64_naming_the_variable() {
    let output = run(
        &["--zone", ZONE_A],
        &[("CLOUDFLARE_API_TOKEN", "abc\u{7}def")],
    );
    assert_usage_error(&output, &["CLOUDFLARE_API_TOKEN"]);
    assert!(!stderr(&output).contains("abc"), "{}", stderr(&output));
}

#[test]
fn cleartext_api_url_to_another_host_is_refused() {
    let output = run(
        &[
            "--zone",
            ZONE_A,
            "--cloudflare.api-url",
            "http://api.example.com/client/v4",
        ],
        &[("CLOUDFLARE_API_TOKEN", "t")],
    );
    assert_usage_error(&output, &["--cloudflare.api-url", "https"]);
}

#[tokio::test]
async fn a_failing_zone_is_warned_about_once() {
    let answer = ResponseTemplate::new(500).set_body_json(failure_body(1000, "Internal error"));
    let output = logs_of_a_run(
        answer,
        &[ZONE_A],
        "logfmt",
        &[("CLOUDFLARE_API_TOKEN", "t")],
    )
    .await;
    let logs = stderr(&output);
    let warnings: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("level=warn") && l.contains("poll failed"))
        .collect();
    assert_eq!(warnings.len(), 1, "{logs}");
    let line = warnings[0];
    for field in [
        &format!("zone_id={ZONE_A}"),
        "kind=http_5xx",
        "cloudflare_code=1000",
        "Internal error",
    ] {
        assert!(line.contains(field), "{field} missing from {line}");
    }
}

#[tokio::test]
async fn refused_credentials_are_reported_per_cycle_not_per_zone() {
    let zones = [ZONE_A, ZONE_B, ZONE_C];
    let env = [("CLOUDFLARE_API_TOKEN", "t")];
    let output = logs_of_a_run(refusal(), &zones, "logfmt", &env).await;
    let logs = stderr(&output);
    let warnings = |needle: &str| -> Vec<&str> {
        let lines = logs.lines();
        lines
            .filter(|l| l.contains("level=warn") && l.contains(needle))
            .collect()
    };
    assert_eq!(warnings("poll failed").len(), 0, "{logs}");

    // One line per cycle, each counting the three zones; never one per zone.
    let cycles: std::collections::BTreeSet<&str> = logs
        .split_whitespace()
        .filter_map(|word| word.strip_prefix("cycle="))
        .collect();
    let per_cycle = warnings("refused the credentials");
    assert!(
        !per_cycle.is_empty() && per_cycle.len() <= cycles.len(),
        "{} lines for {} cycles:\n{logs}",
        per_cycle.len(),
        cycles.len()
    );
    for line in &per_cycle {
        for field in [
            "cloudflare_code=10000",
            "Zone Settings Read",
            "failed=3",
            "zones=3",
        ] {
            assert!(line.contains(field), "{field} missing from {line}");
        }
    }

    // The zone names cannot be read either: said once, for the three zones.
    let names = warnings("cannot look up zone names");
    assert_eq!(names.len(), 1, "{logs}");
    for field in ["failed=3", "kind=auth", "Zone Read"] {
        assert!(
            names[0].contains(field),
            "{field} missing from {}",
            names[0]
        );
    }
}

#[tokio::test]
async fn json_logs_are_one_object_per_line() {
    let output = logs_of_a_refused_run("json", &[("CLOUDFLARE_API_TOKEN", "t")]).await;
    let logs = stderr(&output);
    let mut lines = 0;
    for line in logs.lines() {
        let entry: serde_json::Value = serde_json::from_str(line).expect("a JSON log line");
        assert!(
            entry.get("level").is_some() && entry.get("message").is_some(),
            "{line}"
        );
        lines += 1;
    }
    assert!(lines >= 2, "{logs}");
}
