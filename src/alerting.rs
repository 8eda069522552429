//! The unexpected-disable alert, sent by the daemon itself to Alertmanager's
//! v2 API as soon as a poll sees it, without waiting for a scrape and a rule.
//!
//! The poller writes each zone's verdict on an [`AlertBoard`], which never
//! waits; a [`Notifier`] task sends what is on the board whenever it changes
//! and again every resend interval while an alert lasts, and sends a resolved
//! alert (`endsAt` now) once. Labels are those of the Prometheus rule of the
//! same name, so Alertmanager groups, deduplicates and silences both alike.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use url::Url;

use crate::cloudflare::RetryPolicy;
use crate::metrics::{AlertingMetrics, ZoneLabels};

/// The alert's name, the same as the Prometheus rule's.
pub const ALERT_NAME: &str = "ArgoSmartRoutingUnexpectedlyDisabled";

/// Where the runbook for the alert lives.
pub const RUNBOOK_URL: &str = "https://github.com/cloudflare-argo-exporter/cloudflare-argo-exporter/blob/main/README.md#argosmartroutingunexpectedlydisabled";

/// How often a firing alert is sent again; Prometheus's default too.
pub const DEFAULT_RESEND_INTERVAL: Duration = Duration::from_secs(60);

/// A firing alert that is not sent again within this many resend intervals
/// resolves itself in Alertmanager (the exporter died, say).
const ENDS_AFTER_RESENDS: u32 = 4;

/// A resolved alert no Alertmanager took is dropped after this long.
const KEEP_UNDELIVERED_RESOLVED: Duration = Duration::from_secs(600);

/// One zone's alert as the board holds it.
#[derive(Debug, Clone)]
struct Alert {
    labels: ZoneLabels,
    starts_at: DateTime<Utc>,
    /// Set once the zone is fine again.
    ends_at: Option<DateTime<Utc>>,
}

/// The zones whose Argo is off where it should be on. Cheap to write to.
#[derive(Default)]
pub struct AlertBoard {
    alerts: Mutex<BTreeMap<String, Alert>>,
    changed: Notify,
}

impl AlertBoard {
    /// Records the zone's verdict from a poll: `firing` when Argo is off
    /// where it is expected on.
    pub fn set(&self, zone: &ZoneLabels, firing: bool) {
        let mut alerts = self.lock();
        let changed = match (alerts.get_mut(&zone.id), firing) {
            (Some(alert), true) if alert.ends_at.is_none() => {
                if alert.labels == *zone {
                    false
                } else {
                    // Renamed while firing: Alertmanager knows the alert by its
                    // labels, so the old one is resolved and a new one starts.
                    let retired = Alert {
                        labels: alert.labels.clone(),
                        starts_at: alert.starts_at,
                        ends_at: Some(Utc::now()),
                    };
                    alert.labels = zone.clone();
                    let key = format!("{}\u{0}{}", retired.labels.id, retired.labels.name);
                    alerts.insert(key, retired);
                    true
                }
            }
            (Some(alert), false) if alert.ends_at.is_none() => {
                alert.ends_at = Some(Utc::now());
                true
            }
            (_, true) => {
                alerts.insert(
                    zone.id.clone(),
                    Alert {
                        labels: zone.clone(),
                        starts_at: Utc::now(),
                        ends_at: None,
                    },
                );
                true
            }
            (_, false) => false,
        };
        drop(alerts);
        if changed {
            self.changed.notify_one();
        }
    }

    /// Whether the zone's alert is firing.
    pub fn is_firing(&self, zone_id: &str) -> bool {
        self.lock()
            .get(zone_id)
            .is_some_and(|alert| alert.ends_at.is_none())
    }

    /// The alerts to send now, as Alertmanager's v2 API takes them.
    fn payload(&self, now: DateTime<Utc>, resend: Duration) -> Vec<Value> {
        let lapse = chrono::TimeDelta::from_std(resend * ENDS_AFTER_RESENDS)
            .unwrap_or(chrono::TimeDelta::MAX);
        self.lock()
            .values()
            .map(|alert| alert_json(alert, alert.ends_at.unwrap_or(now + lapse)))
            .collect()
    }

    /// Drops resolved alerts once delivered, or once too old to matter.
    fn sweep_resolved(&self, delivered: bool, now: DateTime<Utc>) {
        let keep = chrono::TimeDelta::from_std(KEEP_UNDELIVERED_RESOLVED)
            .unwrap_or(chrono::TimeDelta::MAX);
        // `now` is when the payload was built: an alert resolved after that
        // was not in it and must stay to be sent.
        self.lock().retain(|_, alert| match alert.ends_at {
            None => true,
            Some(ended) => ended > now || (!delivered && now - ended < keep),
        });
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Alert>> {
        // Every change is a single insert or assignment: a poisoned map is whole.
        self.alerts.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn alert_json(alert: &Alert, ends_at: DateTime<Utc>) -> Value {
    let zone = &alert.labels;
    let shown = if zone.name.is_empty() {
        &zone.id
    } else {
        &zone.name
    };
    json!({
        "labels": {
            "alertname": ALERT_NAME,
            "severity": "critical",
            "zone_id": zone.id,
            "zone_name": zone.name,
        },
        "annotations": {
            "summary": format!("Argo Smart Routing is off on {shown}"),
            "description": format!(
                "Argo Smart Routing is off on zone {shown} ({}), where it is expected on. \
                 Traffic takes Cloudflare's default routes until it is turned back on.",
                zone.id
            ),
            "runbook_url": RUNBOOK_URL,
        },
        "startsAt": alert.starts_at.to_rfc3339_opts(SecondsFormat::Millis, true),
        "endsAt": ends_at.to_rfc3339_opts(SecondsFormat::Millis, true),
    })
}

/// Sends the board to every Alertmanager.
pub struct Notifier {
    board: Arc<AlertBoard>,
    http: reqwest::Client,
    alertmanagers: Vec<Url>,
    resend: Duration,
    retry: RetryPolicy,
    metrics: AlertingMetrics,
}

/// Time limit for one delivery to an Alertmanager, which answers at once
/// when healthy; a stuck one is given up on and retried later.
pub const NOTIFY_TIMEOUT: Duration = Duration::from_secs(10);

impl Notifier {
    pub fn new(
        board: Arc<AlertBoard>,
        alertmanagers: Vec<Url>,
        resend: Duration,
        metrics: AlertingMetrics,
    ) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(NOTIFY_TIMEOUT)
            .user_agent(concat!(
                "cloudflare-argo-exporter/",
                env!("CARGO_PKG_VERSION")
            ))
            .build()?;
        Ok(Self {
            board,
            http,
            alertmanagers,
            resend,
            retry: RetryPolicy::default(),
            metrics,
        })
    }

    /// Sends on every change and every resend interval until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.board.changed.notified() => {}
                () = tokio::time::sleep(self.resend) => {}
            }
            let now = Utc::now();
            let alerts = self.board.payload(now, self.resend);
            if alerts.is_empty() {
                continue;
            }
            // All at once, so one Alertmanager down does not delay the others.
            let deliveries = self
                .alertmanagers
                .iter()
                .map(|alertmanager| self.deliver(alertmanager, &alerts));
            let delivered = tokio::select! {
                () = shutdown.cancelled() => return,
                delivered = futures_util::future::join_all(deliveries) => delivered,
            };
            self.board.sweep_resolved(delivered.iter().all(|d| *d), now);
        }
    }

    /// POSTs the alerts to one Alertmanager, retrying with backoff.
    async fn deliver(&self, alertmanager: &Url, alerts: &[Value]) -> bool {
        let url = match alertmanager.join("api/v2/alerts") {
            Ok(url) => url,
            Err(err) => {
                warn!(alertmanager = %alertmanager, error = %err, "bad Alertmanager URL");
                return false;
            }
        };
        let mut retry = 0;
        loop {
            let outcome = self.http.post(url.clone()).json(alerts).send().await;
            let failure = match outcome {
                Ok(response) if response.status().is_success() => {
                    self.metrics.observe_notification(true);
                    debug!(alertmanager = %alertmanager, alerts = alerts.len(), "alerts delivered");
                    if retry > 0 {
                        info!(alertmanager = %alertmanager, "alerts delivered after retrying");
                    }
                    return true;
                }
                Ok(response) => format!("HTTP {}", response.status().as_u16()),
                Err(err) => err.to_string(),
            };
            self.metrics.observe_notification(false);
            if retry >= self.retry.max_retries {
                warn!(
                    alertmanager = %alertmanager,
                    error = %failure,
                    "cannot deliver alerts to Alertmanager; trying again at the next change \
                     or resend"
                );
                return false;
            }
            tokio::time::sleep(self.retry.backoff(retry)).await;
            retry += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone(name: &str) -> ZoneLabels {
        ZoneLabels {
            id: "0123456789abcdef0123456789abcdef".to_owned(),
            name: name.to_owned(),
        }
    }

    #[test]
    fn firing_then_resolved_then_swept() {
        let board = AlertBoard::default();
        let z = zone("example.com");
        board.set(&z, true);
        assert!(board.is_firing(&z.id));

        let now = Utc::now();
        let firing = board.payload(now, Duration::from_secs(60));
        assert_eq!(firing.len(), 1);
        assert_eq!(firing[0]["labels"]["alertname"], ALERT_NAME);
        assert_eq!(firing[0]["labels"]["zone_name"], "example.com");
        let ends: DateTime<Utc> = firing[0]["endsAt"].as_str().unwrap().parse().unwrap();
        assert!(ends > now + chrono::TimeDelta::seconds(200));

        board.set(&z, false);
        assert!(!board.is_firing(&z.id));
        let resolved = board.payload(Utc::now(), Duration::from_secs(60));
        let ends: DateTime<Utc> = resolved[0]["endsAt"].as_str().unwrap().parse().unwrap();
        assert!(ends <= Utc::now());

        // Kept until delivered, then gone.
        board.sweep_resolved(false, Utc::now());
        assert_eq!(board.payload(Utc::now(), Duration::from_secs(60)).len(), 1);
        board.sweep_resolved(true, Utc::now());
        assert!(board
            .payload(Utc::now(), Duration::from_secs(60))
            .is_empty());
    }

    #[test]
    fn a_resolution_after_the_payload_was_built_is_kept() {
        let board = AlertBoard::default();
        let z = zone("example.com");
        board.set(&z, true);
        let built = Utc::now();
        std::thread::sleep(Duration::from_millis(5));
        board.set(&z, false);
        board.sweep_resolved(true, built);
        assert_eq!(board.payload(Utc::now(), Duration::from_secs(60)).len(), 1);
    }

    #[test]
    fn a_rename_while_firing_resolves_the_old_labels() {
        let board = AlertBoard::default();
        board.set(&zone(""), true);
        board.set(&zone("example.com"), true);
        let now = Utc::now() + chrono::TimeDelta::milliseconds(1);
        let alerts = board.payload(now, Duration::from_secs(60));
        assert_eq!(alerts.len(), 2);
        let ended = |a: &Value| {
            a["endsAt"]
                .as_str()
                .unwrap()
                .parse::<DateTime<Utc>>()
                .unwrap()
                <= now
        };
        let old = alerts
            .iter()
            .find(|a| a["labels"]["zone_name"] == "")
            .unwrap();
        let new = alerts
            .iter()
            .find(|a| a["labels"]["zone_name"] == "example.com")
            .unwrap();
        assert!(ended(old));
        assert!(!ended(new));
    }

    #[test]
    fn a_fine_zone_without_an_alert_adds_nothing() {
        let board = AlertBoard::default();
        board.set(&zone("example.com"), false);
        assert!(board
            .payload(Utc::now(), Duration::from_secs(60))
            .is_empty());
    }

    #[test]
    fn labels_are_exactly_the_rules() {
        let board = AlertBoard::default();
        board.set(&zone("example.com"), true);
        let alert = &board.payload(Utc::now(), Duration::from_secs(60))[0];
        let mut keys: Vec<&String> = alert["labels"].as_object().unwrap().keys().collect();
        keys.sort();
        assert_eq!(keys, ["alertname", "severity", "zone_id", "zone_name"]);
        assert_eq!(alert["labels"]["severity"], "critical");
        assert!(alert["annotations"]["runbook_url"]
            .as_str()
            .unwrap()
            .ends_with("#argosmartroutingunexpectedlydisabled"));
    }
}
