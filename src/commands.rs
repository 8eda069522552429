//! Operator commands: `status` and `check` read every zone once and judge it
//! against its expectation; `enable` and `disable` change zones the safe
//! way: read, check `editable`, change only what needs it, read back.

use std::fmt::Write as _;
use std::sync::Arc;

use futures_util::stream::{self, StreamExt};
use serde::Serialize;

use crate::budget::Budget;
use crate::cloudflare::{ApiError, ArgoValue, Client, ClientError, ZoneQuery};
use crate::config::{ApiConfig, WebConfig, ZoneId};
use crate::metrics::Metrics;
use crate::zones::{Expectation, ZoneRef, ZoneSources, ZoneTracker};

/// Zones read at the same time by the commands.
const CONCURRENCY: usize = 8;

/// A healthy exporter answers `/healthz` at once; Docker's own timeout is 30 s.
const HEALTHCHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Exit codes of `check`, `enable` and `disable`.
pub mod exit {
    /// Every zone is as it should be (or, with `--dry-run`, could be made so).
    pub const OK: u8 = 0;
    /// A zone does not meet its expectation (`check`), or could not be changed
    /// because it is not editable or did not read back as asked (`enable`, `disable`).
    pub const NOT_MET: u8 = 1;
    /// A zone could not be read or changed through the API, or does not exist.
    pub const UNREADABLE: u8 = 2;
}

/// Why a command could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("cannot set up metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// A client for a one-off command, with the configured budget and retries.
pub fn client(api: &ApiConfig) -> Result<Client, CommandError> {
    let metrics = Metrics::new(api.rate_limit)?;
    let budget = Arc::new(Budget::new(api.rate_limit));
    Ok(Client::new(api, budget, metrics.api)?)
}

/// One zone as `status` and `check` report it.
#[derive(Debug, Clone, Serialize)]
pub struct ZoneReport {
    pub zone_id: String,
    pub zone_name: String,
    /// `None` when the zone could not be read.
    pub value: Option<ArgoValue>,
    pub editable: Option<bool>,
    pub modified_on: Option<String>,
    pub expected: &'static str,
    pub verdict: Verdict,
    /// Why the zone could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Ok,
    UnexpectedlyOff,
    UnexpectedlyOn,
    Unreadable,
}

impl Verdict {
    fn judge(expect: Expectation, value: ArgoValue) -> Self {
        match (expect.is_met_by(value), value) {
            (true, _) => Self::Ok,
            (false, ArgoValue::Off) => Self::UnexpectedlyOff,
            (false, ArgoValue::On) => Self::UnexpectedlyOn,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::UnexpectedlyOff => "UNEXPECTEDLY OFF",
            Self::UnexpectedlyOn => "UNEXPECTEDLY ON",
            Self::Unreadable => "UNREADABLE",
        }
    }
}

/// Reads every configured or discovered zone once.
pub async fn survey(client: &Client, sources: &ZoneSources) -> Vec<ZoneReport> {
    let (mut tracker, zone_set) = ZoneTracker::new(client.clone(), sources);
    tracker.refresh_once(true).await;
    let zones = zone_set.borrow().clone();

    let mut reports: Vec<ZoneReport> = tracker
        .unresolved_names()
        .into_iter()
        .map(|unresolved| ZoneReport {
            zone_id: String::new(),
            zone_name: unresolved.name,
            value: None,
            editable: None,
            modified_on: None,
            expected: unresolved.expect.as_str(),
            verdict: Verdict::Unreadable,
            error: Some(unresolved.reason),
        })
        .collect();
    let read = stream::iter(zones.iter())
        .map(|zone| async move {
            let name = match &zone.name {
                Some(name) => name.clone(),
                None => client
                    .zone(&zone.id)
                    .await
                    .map(|z| z.name)
                    .unwrap_or_default(),
            };
            let mut report = ZoneReport {
                zone_id: zone.id.to_string(),
                zone_name: name,
                value: None,
                editable: None,
                modified_on: None,
                expected: zone.expect.as_str(),
                verdict: Verdict::Unreadable,
                error: None,
            };
            match client.smart_routing(&zone.id).await {
                Ok(setting) => {
                    report.value = Some(setting.value);
                    report.editable = Some(setting.editable);
                    report.modified_on = setting.modified_on;
                    report.verdict = Verdict::judge(zone.expect, setting.value);
                }
                Err(err) => report.error = Some(format!("{}: {err}", err.kind())),
            }
            report
        })
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
    reports.extend(read);
    reports.sort_by(|a, b| (&a.zone_name, &a.zone_id).cmp(&(&b.zone_name, &b.zone_id)));
    reports
}

/// `check`'s exit code: unreadable zones outrank unmet expectations.
pub fn check_exit_code(reports: &[ZoneReport]) -> u8 {
    if reports.iter().any(|r| r.verdict == Verdict::Unreadable) {
        exit::UNREADABLE
    } else if reports.iter().any(|r| r.verdict != Verdict::Ok) {
        exit::NOT_MET
    } else {
        exit::OK
    }
}

/// The reports as an aligned text table.
pub fn table(reports: &[ZoneReport]) -> String {
    let header = [
        "NAME",
        "ZONE ID",
        "VALUE",
        "EDITABLE",
        "MODIFIED ON",
        "EXPECTED",
        "VERDICT",
    ];
    let rows: Vec<[String; 7]> = reports
        .iter()
        .map(|r| {
            let verdict = match &r.error {
                Some(error) => format!("{}: {error}", r.verdict.as_str()),
                None => r.verdict.as_str().to_owned(),
            };
            [
                r.zone_name.clone(),
                r.zone_id.clone(),
                r.value.map_or("-".to_owned(), |v| v.to_string()),
                r.editable
                    .map_or("-".to_owned(), |e| if e { "yes" } else { "no" }.to_owned()),
                r.modified_on.clone().unwrap_or_else(|| "-".to_owned()),
                r.expected.to_owned(),
                verdict,
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let mut text = String::new();
    let mut line = |cells: &[&str]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:width$}"))
            .collect();
        let _ = writeln!(text, "{}", padded.join("  ").trim_end());
    };
    line(&header);
    for row in &rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        line(&cells);
    }
    text
}

/// What `enable` or `disable` did to one zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeOutcome {
    Changed,
    AlreadySo,
    WouldChange,
    NotEditable,
    /// The change was accepted but the setting read back differently.
    NotConfirmed,
    Failed(String),
}

impl ChangeOutcome {
    fn exit_code(&self) -> u8 {
        match self {
            Self::Changed | Self::AlreadySo | Self::WouldChange => exit::OK,
            Self::NotEditable | Self::NotConfirmed => exit::NOT_MET,
            Self::Failed(_) => exit::UNREADABLE,
        }
    }
}

/// Sets Argo to `value` on each zone, the safe way, printing one line per
/// zone. Returns the exit code: the worst of the zones'.
pub async fn change(client: &Client, zones: &[ZoneRef], value: ArgoValue, dry_run: bool) -> u8 {
    let mut code = exit::OK;
    for zone in zones {
        let outcome = change_one(client, zone, value, dry_run).await;
        let message = match &outcome {
            ChangeOutcome::Changed => format!("turned {value} (read back to confirm)"),
            ChangeOutcome::AlreadySo => format!("already {value}; nothing to do"),
            ChangeOutcome::WouldChange => format!("would turn {value} (--dry-run)"),
            ChangeOutcome::NotEditable => {
                "refused: the setting is not editable through the API for this zone".to_owned()
            }
            ChangeOutcome::NotConfirmed => {
                format!("asked to turn {value}, but the setting does not read back {value}")
            }
            ChangeOutcome::Failed(reason) => format!("failed: {reason}"),
        };
        println!("{zone}: {message}");
        code = code.max(outcome.exit_code());
    }
    code
}

async fn change_one(
    client: &Client,
    zone: &ZoneRef,
    value: ArgoValue,
    dry_run: bool,
) -> ChangeOutcome {
    let failed = |err: ApiError| ChangeOutcome::Failed(format!("{}: {err}", err.kind()));
    let id = match resolve(client, zone).await {
        Ok(Some(id)) => id,
        Ok(None) => {
            return ChangeOutcome::Failed("no zone of that name is visible to the token".into())
        }
        Err(err) => return failed(err),
    };
    let current = match client.smart_routing(&id).await {
        Ok(current) => current,
        Err(err) => return failed(err),
    };
    if current.value == value {
        return ChangeOutcome::AlreadySo;
    }
    if !current.editable {
        return ChangeOutcome::NotEditable;
    }
    if dry_run {
        return ChangeOutcome::WouldChange;
    }
    if let Err(err) = client.set_smart_routing(&id, value).await {
        return failed(err);
    }
    match client.smart_routing(&id).await {
        Ok(after) if after.value == value => ChangeOutcome::Changed,
        Ok(_) => ChangeOutcome::NotConfirmed,
        Err(err) => failed(err),
    }
}

async fn resolve(client: &Client, zone: &ZoneRef) -> Result<Option<ZoneId>, ApiError> {
    let name = match zone {
        ZoneRef::Id(id) => return Ok(Some(id.clone())),
        ZoneRef::Name(name) => name,
    };
    let query = ZoneQuery {
        name: Some(name.clone()),
        ..ZoneQuery::default()
    };
    let (zones, _) = client.list_zones(&query, 1).await?;
    Ok(zones
        .into_iter()
        .find(|z| z.name.eq_ignore_ascii_case(name))
        .and_then(|z| z.id.parse().ok()))
}

/// Asks the local exporter's `/healthz`, over HTTPS when it serves TLS.
///
/// It has no client certificate to present, so it cannot check an exporter
/// that requires one (`RequireAndVerifyClientCert`); it says so rather than
/// reporting a handshake failure as ill health.
pub async fn healthcheck(web: &WebConfig) -> Result<(), String> {
    if web
        .security
        .as_ref()
        .is_some_and(|security| security.requires_client_cert())
    {
        return Err(
            "the web config requires client certificates (RequireAndVerifyClientCert), \
                    which healthcheck does not have: probe the port with a TCP check instead"
                .to_owned(),
        );
    }
    let (host, port) = web
        .listen_address
        .rsplit_once(':')
        .ok_or_else(|| "the listen address has no port".to_owned())?;
    let host = match host {
        "" | "0.0.0.0" => "127.0.0.1",
        "[::]" => "[::1]",
        other => other,
    };
    let tls = web.security.as_ref().is_some_and(|s| s.tls().is_some());
    let scheme = if tls { "https" } else { "http" };
    // The probe talks to this same host's exporter: whatever certificate it
    // serves (often self-signed, or for another name) is the one expected.
    let client = reqwest::Client::builder()
        .timeout(HEALTHCHECK_TIMEOUT)
        .danger_accept_invalid_certs(true)
        .build()
        .map_err(|err| err.to_string())?;
    let url = format!("{scheme}://{host}:{port}/healthz");
    let response = client
        .get(&url)
        .send()
        .await
        .map_err(|err| format!("{url}: {err}"))?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!("{url} answered {}", response.status()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(name: &str, verdict: Verdict) -> ZoneReport {
        ZoneReport {
            zone_id: "0123456789abcdef0123456789abcdef".to_owned(),
            zone_name: name.to_owned(),
            value: Some(ArgoValue::On),
            editable: Some(true),
            modified_on: None,
            expected: "on",
            verdict,
            error: None,
        }
    }

    #[test]
    fn verdicts() {
        assert_eq!(Verdict::judge(Expectation::On, ArgoValue::On), Verdict::Ok);
        assert_eq!(
            Verdict::judge(Expectation::On, ArgoValue::Off),
            Verdict::UnexpectedlyOff
        );
        assert_eq!(
            Verdict::judge(Expectation::Off, ArgoValue::On),
            Verdict::UnexpectedlyOn
        );
        assert_eq!(
            Verdict::judge(Expectation::Any, ArgoValue::Off),
            Verdict::Ok
        );
    }

    #[test]
    fn check_exit_codes() {
        assert_eq!(check_exit_code(&[report("a", Verdict::Ok)]), exit::OK);
        let unmet = [
            report("a", Verdict::Ok),
            report("b", Verdict::UnexpectedlyOff),
        ];
        assert_eq!(check_exit_code(&unmet), exit::NOT_MET);
        let unreadable = [
            report("a", Verdict::UnexpectedlyOff),
            report("b", Verdict::Unreadable),
        ];
        assert_eq!(check_exit_code(&unreadable), exit::UNREADABLE);
    }

    #[test]
    fn table_aligns_columns() {
        let text = table(&[
            report("a.example.com", Verdict::Ok),
            report("b.example.org", Verdict::UnexpectedlyOff),
        ]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("NAME           ZONE ID"), "{text}");
        let column = lines[0].find("VERDICT").unwrap();
        assert_eq!(&lines[2][column..], "UNEXPECTEDLY OFF");
    }
}
