//! The shipped Prometheus alert rules, checked and unit-tested by the real
//! `promtool` (Debian package `prometheus`; `scripts/test` installs it).

use std::process::Command;

fn promtool(args: &[&str]) -> String {
    let output = Command::new("promtool")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("`promtool` is not installed: run scripts/test, or apt-get install prometheus");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn rules_pass_promtool_check() {
    let text = promtool(&["check", "rules", "alerts/argo-smart-routing.rules.yml"]);
    assert!(text.contains("SUCCESS"), "{text}");
    assert!(!text.to_lowercase().contains("warn"), "{text}");
}

#[test]
fn rule_unit_tests_pass() {
    let tests: Vec<String> =
        std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/alerts/tests"))
            .expect("alerts/tests exists")
            .filter_map(|entry| entry.ok())
            .map(|entry| format!("alerts/tests/{}", entry.file_name().to_string_lossy()))
            .filter(|name| name.ends_with(".yml"))
            .collect();
    assert!(!tests.is_empty());
    let mut args = vec!["test", "rules"];
    args.extend(tests.iter().map(String::as_str));
    let text = promtool(&args);
    assert!(text.contains("SUCCESS"), "{text}");
}

#[test]
fn every_alert_has_a_runbook_section_in_the_readme() {
    let rules = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/alerts/argo-smart-routing.rules.yml"
    ))
    .unwrap();
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|line| line.trim().strip_prefix("- alert: "))
        .collect();
    assert!(alerts.len() >= 8, "{alerts:?}");
    for alert in alerts {
        assert!(
            readme.contains(&format!("### {alert}\n")),
            "no README section for {alert}"
        );
        let anchor = format!("README.md#{}", alert.to_lowercase());
        assert!(
            rules.contains(&anchor),
            "{alert} has no runbook_url to {anchor}"
        );
    }
}
