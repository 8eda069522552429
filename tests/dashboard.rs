//! Checks the Grafana dashboard `dashboards/argo-smart-routing.json` two ways:
//!
//! - its JSON type-checks against Grafana's own `Dashboard` type (package
//!   `@grafana/schema`) with `tsc`, through the small project in
//!   `dashboards/check/`, so Grafana can import it;
//! - every query of every panel returns data from a real Prometheus scraping
//!   the demo, so no panel is empty because of a misspelled metric, label or
//!   function.
//!
//! Needs `npm ci` done in `dashboards/check` and the Debian package
//! `prometheus`; `scripts/install-test-deps` (run by `scripts/test`) does both.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{free_port, start_demo, Running};
use serde_json::Value;
use tokio::time::Instant;

/// The job name the README's Prometheus configuration uses.
const JOB: &str = "cloudflare-argo";

/// Scrapes (one a second) to wait for before querying, so that `rate()` and
/// `increase()` over a minute have plenty of samples.
const SCRAPES_BEFORE_QUERYING: u32 = 15;

/// Bounds each wait: the demo starting, Prometheus starting, the scrapes.
const PATIENCE: Duration = Duration::from_secs(60);

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn dashboard() -> Value {
    let path = root().join("dashboards/argo-smart-routing.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()));
    serde_json::from_str(&text)
        .unwrap_or_else(|err| panic!("{} is not JSON: {err}", path.display()))
}

#[test]
fn dashboard_type_checks_against_grafana_schema() {
    let check = root().join("dashboards/check");
    let installed = check.join("node_modules/.bin/tsc").exists()
        && check
            .join("node_modules/@grafana/schema/package.json")
            .exists();
    assert!(
        installed,
        "{}/node_modules is missing TypeScript or @grafana/schema: run scripts/install-test-deps",
        check.display()
    );
    // npx finds tsc in the node_modules of its working directory, so it runs
    // from dashboards/check; --no-install keeps it from fetching anything.
    let output = Command::new("npx")
        .args(["--no-install", "tsc", "--noEmit", "-p", "."])
        .current_dir(&check)
        .output()
        .unwrap_or_else(|err| {
            panic!(
                "cannot run npx ({err}): install Node.js and npm, then scripts/install-test-deps"
            )
        });
    assert!(
        output.status.success(),
        "tsc refused dashboards/argo-smart-routing.json ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Every panel, including those inside rows.
fn all_panels(panels: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for panel in panels.as_array().into_iter().flatten() {
        out.push(panel);
        out.extend(all_panels(&panel["panels"]));
    }
    out
}

/// (panel title, expr) of every target, after checking each panel has
/// targets and every target and panel uses the `$datasource` variable.
fn targets(dashboard: &Value) -> Vec<(String, String)> {
    let datasource = serde_json::json!({"type": "prometheus", "uid": "${datasource}"});
    let mut out = Vec::new();
    for panel in all_panels(&dashboard["panels"]) {
        let title = panel["title"].as_str().unwrap_or("(untitled)").to_owned();
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(
            panel["datasource"], datasource,
            "datasource of panel {title:?}"
        );
        let list = panel["targets"].as_array().cloned().unwrap_or_default();
        assert!(!list.is_empty(), "panel {title:?} has no targets");
        for target in list {
            assert_eq!(
                target["datasource"], datasource,
                "datasource of a target of {title:?}"
            );
            let expr = target["expr"].as_str().unwrap_or_default();
            assert!(!expr.trim().is_empty(), "a target of {title:?} has no expr");
            out.push((title.clone(), expr.to_owned()));
        }
    }
    out
}

/// The value mappings of one field: 0 and 1 to their words.
fn mapped_words(mappings: &Value) -> Option<(String, String)> {
    let options = mappings
        .as_array()?
        .iter()
        .find(|mapping| mapping["type"] == "value")?
        .get("options")?;
    let word = |value: &str| options[value]["text"].as_str().map(str::to_owned);
    Some((word("0")?, word("1")?))
}

/// The setting `id` of the field named `name`, from the panel's overrides.
fn override_of<'a>(panel: &'a Value, name: &str, id: &str) -> Option<&'a Value> {
    let overrides = panel["fieldConfig"]["overrides"].as_array()?;
    overrides
        .iter()
        .filter(|o| o["matcher"]["options"] == name)
        .flat_map(|o| o["properties"].as_array().into_iter().flatten())
        .find(|property| property["id"] == id)
        .map(|property| &property["value"])
}

#[test]
fn values_show_as_words_and_numbers_carry_units() {
    let dashboard = dashboard();
    let panels: Vec<&Value> = all_panels(&dashboard["panels"])
        .into_iter()
        .filter(|panel| panel["type"] != "row")
        .collect();
    let words = |expr: &str| -> Option<(&str, &str)> {
        if expr.contains("argo_editable") {
            Some(("no", "yes"))
        } else if expr.contains("argo_enabled") || expr.contains("argo_expected_enabled") {
            Some(("off", "on"))
        } else {
            None
        }
    };
    let mut mapped = 0;
    for panel in &panels {
        let title = panel["title"].as_str().unwrap_or_default();
        let defaults = &panel["fieldConfig"]["defaults"];
        match panel["type"].as_str() {
            // A 1/0 series per zone: the panel's own values read on/off.
            Some("state-timeline") => {
                let expr = panel["targets"][0]["expr"].as_str().unwrap_or_default();
                let (zero, one) = words(expr).expect("a timeline of a 1/0 series");
                let found = mapped_words(&defaults["mappings"]);
                assert_eq!(found, Some((zero.into(), one.into())), "{title}");
                mapped += 1;
            }
            // One column per query: 1/0 columns mapped, the others with units.
            Some("table") => {
                for target in panel["targets"].as_array().into_iter().flatten() {
                    let expr = target["expr"].as_str().unwrap_or_default();
                    let column = format!("Value #{}", target["refId"].as_str().unwrap_or("?"));
                    match words(expr) {
                        Some((zero, one)) if !expr.contains("time()") => {
                            let found =
                                override_of(panel, &column, "mappings").and_then(mapped_words);
                            assert_eq!(found, Some((zero.into(), one.into())), "{title}: {column}");
                            mapped += 1;
                        }
                        _ => {
                            let unit = override_of(panel, &column, "unit").and_then(Value::as_str);
                            assert!(
                                unit.is_some_and(|u| !u.is_empty()),
                                "{title}: {column} has no unit"
                            );
                        }
                    }
                }
            }
            // Counts, rates, latencies and times: each says its unit.
            _ => {
                let unit = defaults["unit"].as_str().unwrap_or_default();
                assert!(!unit.is_empty(), "panel {title:?} has no unit");
            }
        }
    }
    // The timeline and the table's Argo, Editable and Expected columns.
    assert!(mapped >= 4, "only {mapped} fields map 1/0 to words");
    // Times read as dates or durations, not as raw seconds.
    let table = panels
        .iter()
        .find(|p| p["type"] == "table")
        .expect("a table");
    let units: Vec<&str> = table["fieldConfig"]["overrides"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|o| o["properties"].as_array().into_iter().flatten())
        .filter(|property| property["id"] == "unit")
        .filter_map(|property| property["value"].as_str())
        .collect();
    assert!(units.iter().any(|u| u.starts_with("dateTime")), "{units:?}");
    assert!(units.contains(&"s"), "{units:?}");
}

/// The `label_values(SELECTOR, LABEL)` queries of the template variables.
fn variable_queries(dashboard: &Value) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for variable in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if variable["type"] != "query" {
            continue;
        }
        let name = variable["name"].as_str().unwrap_or_default().to_owned();
        let query = match &variable["query"] {
            Value::String(query) => query.clone(),
            other => other["query"].as_str().unwrap_or_default().to_owned(),
        };
        let inner = query
            .trim()
            .strip_prefix("label_values(")
            .and_then(|rest| rest.strip_suffix(')'))
            .unwrap_or_else(|| {
                panic!("variable {name}: expected label_values(...), got {query:?}")
            });
        let (selector, label) = inner
            .rsplit_once(',')
            .unwrap_or_else(|| panic!("variable {name}: expected label_values(SELECTOR, LABEL)"));
        out.push((name, selector.trim().to_owned(), label.trim().to_owned()));
    }
    out
}

/// What Grafana would put in place of the variables (`$name`, `${name}` or
/// `[[name]]`): `job` and `zone` as given (a regex, since every query matches
/// them with `=~`), the interval variables as Grafana computes them for a
/// short dashboard range. An unknown variable is left as it is, `$` and all.
fn substitute(expr: &str, job: &str, zone: &str) -> String {
    let value = |name: &str| match name {
        "job" => Some(job),
        "zone" => Some(zone),
        "__rate_interval" => Some("1m"),
        "__interval" => Some("15s"),
        "__interval_ms" => Some("15000"),
        "__range" => Some("5m"),
        "__range_s" => Some("300"),
        "__range_ms" => Some("300000"),
        _ => None,
    };
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = String::new();
    let mut rest = expr;
    while let Some(start) = rest.find(['$', '[']) {
        out.push_str(&rest[..start]);
        let tail = &rest[start..];
        // (the variable's name, the length of its reference in `tail`)
        let reference = if let Some(braced) = tail.strip_prefix("${") {
            braced.find('}').map(|end| (&braced[..end], end + 3))
        } else if let Some(bracketed) = tail.strip_prefix("[[") {
            bracketed.find("]]").map(|end| (&bracketed[..end], end + 4))
        } else if let Some(plain) = tail.strip_prefix('$') {
            let end = plain.find(|c| !is_name(c)).unwrap_or(plain.len());
            Some((&plain[..end], end + 1))
        } else {
            None
        };
        match reference.and_then(|(name, len)| Some((value(name)?, len))) {
            Some((value, len)) => {
                out.push_str(value);
                rest = &tail[len..];
            }
            None => {
                out.push_str(&tail[..1]);
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

fn start_prometheus(dir: &Path, exporter_port: u16) -> (Running, String) {
    let config: PathBuf = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: {JOB}\n    static_configs:\n      \
             - targets: ['127.0.0.1:{exporter_port}']\n"
        ),
    )
    .expect("write prometheus.yml");
    let port = free_port();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--log.level=warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|err| {
            panic!(
                "cannot start prometheus ({err}): run scripts/install-test-deps, which installs it"
            )
        });
    (Running(child), format!("http://127.0.0.1:{port}"))
}

/// Prometheus's JSON answer at `path` with `params`, when it answered 200.
async fn api(prometheus: &str, path: &str, params: &[(&str, &str)]) -> Result<Value, String> {
    let url = url::Url::parse_with_params(&format!("{prometheus}{path}"), params)
        .map_err(|err| err.to_string())?;
    let response = reqwest::get(url).await.map_err(|err| err.to_string())?;
    let status = response.status();
    let body = response.text().await.map_err(|err| err.to_string())?;
    if !status.is_success() {
        return Err(format!("HTTP {status}: {body}"));
    }
    serde_json::from_str(&body).map_err(|err| format!("{err}: {body}"))
}

/// The series an instant query returns (a scalar counts as one).
async fn query(prometheus: &str, expr: &str) -> Result<Vec<Value>, String> {
    let answer = api(prometheus, "/api/v1/query", &[("query", expr)]).await?;
    match answer["data"]["resultType"].as_str() {
        Some("vector" | "matrix") => Ok(answer["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()),
        Some(_) => Ok(vec![answer["data"]["result"].clone()]),
        None => Err(format!("unexpected answer: {answer}")),
    }
}

/// Waits, at most PATIENCE, until `done` holds; panics saying `what` otherwise.
async fn wait_for<F, Fut>(what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + PATIENCE;
    while !done().await {
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn every_dashboard_query_returns_data_from_prometheus_scraping_the_demo() {
    let dashboard = dashboard();
    let targets = targets(&dashboard);
    let variables = variable_queries(&dashboard);

    let exporter_port = free_port();
    let _demo = start_demo(exporter_port);
    wait_for("the demo to be ready", || async {
        reqwest::get(format!("http://127.0.0.1:{exporter_port}/readyz"))
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;

    let dir = tempfile::tempdir().expect("temporary directory");
    let (_prometheus, prometheus) = start_prometheus(dir.path(), exporter_port);

    // Every demo zone is in Prometheus, under its name...
    let demo_zones: BTreeSet<String> = cloudflare_argo_exporter::demo::zones()
        .into_iter()
        .map(|zone| zone.name)
        .collect();
    let selector = format!("argo_enabled{{job=\"{JOB}\"}}");
    wait_for(
        "Prometheus to have argo_enabled for every demo zone",
        || async {
            let seen: BTreeSet<String> = query(&prometheus, &selector)
                .await
                .unwrap_or_default()
                .iter()
                .filter_map(|series| series["metric"]["zone_name"].as_str().map(str::to_owned))
                .collect();
            seen == demo_zones
        },
    )
    .await;
    // ...with enough scrapes behind it for rate() over a minute.
    let scrapes = format!("count_over_time(up{{job=\"{JOB}\"}}[1m]) >= {SCRAPES_BEFORE_QUERYING}");
    wait_for("enough scrapes of the demo", || async {
        query(&prometheus, &scrapes)
            .await
            .is_ok_and(|r| !r.is_empty())
    })
    .await;

    // "All" selected (Grafana sends the variables' allValue, `.*`), then a
    // selection of some values (Grafana joins them into an escaped regex).
    let selections = [
        (".*", ".*"),
        (
            "(cloudflare-argo)",
            "(shop\\\\.example\\\\.com|legacy\\\\.example\\\\.net)",
        ),
    ];
    let mut failures = Vec::new();
    let mut checked = 0;
    for (job, zone) in selections {
        for (title, expr) in &targets {
            let expr = substitute(expr, job, zone);
            checked += 1;
            if expr.contains('$') || expr.contains("[[") {
                failures.push(format!("{title}: unknown variable left in {expr}"));
                continue;
            }
            match query(&prometheus, &expr).await {
                Ok(result) if result.is_empty() => {
                    failures.push(format!("{title}: no data for {expr}"))
                }
                Ok(_) => {}
                Err(err) => failures.push(format!("{title}: {expr} failed: {err}")),
            }
        }
        for (name, selector, label) in &variables {
            let selector = substitute(selector, job, zone);
            checked += 1;
            let answer = api(
                &prometheus,
                &format!("/api/v1/label/{label}/values"),
                &[("match[]", selector.as_str())],
            )
            .await;
            match answer {
                Ok(answer) if answer["data"].as_array().is_some_and(|v| !v.is_empty()) => {}
                Ok(answer) => failures.push(format!(
                    "variable {name}: no values for {label} of {selector}: {answer}"
                )),
                Err(err) => failures.push(format!(
                    "variable {name}: {label} of {selector} failed: {err}"
                )),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} dashboard queries failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
