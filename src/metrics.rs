//! Every metric the exporter serves, registered in one `Registry` that the
//! HTTP server encodes on each scrape. Nothing here calls Cloudflare: the
//! values are whatever the poller last stored.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::core::Collector;
use prometheus::proto::MetricType;
use prometheus::{
    Counter, Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::budget::RateLimit;
use crate::cloudflare::{ArgoValue, Endpoint, ErrorKind};
use crate::zones::Expectation;

/// Request latency buckets: Cloudflare usually answers in 50-500 ms; the top
/// buckets catch requests that ran into the default 10 s timeout.
const REQUEST_DURATION_BUCKETS: &[f64] = &[0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// A poll cycle takes from well under a second to about the poll interval.
const CYCLE_DURATION_BUCKETS: &[f64] = &[0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];

/// Every collector, in registration order. The `prometheus` crate's
/// `Registry` is kept for its checks (names unique and valid), but encoding
/// walks this list one collector at a time: gathering everything at once
/// would hold a copy of every series in memory, tens of megabytes at 10,000
/// zones.
#[derive(Clone, Default)]
pub struct MetricRegistry {
    registry: Registry,
    collectors: Arc<Mutex<Vec<Box<dyn Collector>>>>,
}

impl MetricRegistry {
    pub fn register<C: Collector + Clone + 'static>(&self, collector: C) -> prometheus::Result<()> {
        self.registry.register(Box::new(collector.clone()))?;
        self.lock().push(Box::new(collector));
        Ok(())
    }

    /// Adds a collector that cannot be cloned, skipping the registry's checks.
    fn add_unchecked(&self, collector: Box<dyn Collector>) {
        self.lock().push(collector);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Box<dyn Collector>>> {
        // Only ever pushed to: a poisoned list is still whole.
        self.collectors.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The registry and the handles of every metric in it.
#[derive(Clone)]
pub struct Metrics {
    registry: MetricRegistry,
    pub api: ApiMetrics,
    pub zones: ZoneMetrics,
    pub poll: PollMetrics,
    pub alerting: AlertingMetrics,
}

impl Metrics {
    /// Registers every metric; `budget` is the configured API allowance.
    pub fn new(budget: RateLimit) -> prometheus::Result<Self> {
        let registry = MetricRegistry::default();
        let metrics = Self {
            api: ApiMetrics::register(&registry, budget)?,
            zones: ZoneMetrics::register(&registry)?,
            poll: PollMetrics::register(&registry)?,
            alerting: AlertingMetrics::register(&registry)?,
            registry,
        };
        register_build_info(&metrics.registry)?;
        #[cfg(target_os = "linux")]
        metrics.registry.add_unchecked(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ));
        Ok(metrics)
    }

    /// Sets the token's expiry time. The series exists only once set, so it
    /// is absent for tokens that never expire.
    pub fn set_token_expiry(&self, unix_seconds: f64) {
        self.api
            .token_expiry
            .with_label_values(&[] as &[&str])
            .set(unix_seconds);
    }

    /// Encodes every metric in the text exposition format, one collector at
    /// a time, appending to `buffer`.
    pub fn encode_into(&self, buffer: &mut Vec<u8>) -> Result<(), prometheus::Error> {
        let encoder = TextEncoder::new();
        for collector in self.registry.lock().iter() {
            let families: Vec<_> = collector
                .collect()
                .into_iter()
                .filter(|family| !family.get_metric().is_empty())
                .collect();
            encoder.encode(&families, buffer)?;
        }
        Ok(())
    }

    /// Encodes every metric in the text exposition format.
    pub fn encode(&self) -> Result<Vec<u8>, prometheus::Error> {
        let mut buffer = Vec::with_capacity(16 * 1024);
        self.encode_into(&mut buffer)?;
        Ok(buffer)
    }
}

fn register_build_info(registry: &MetricRegistry) -> prometheus::Result<()> {
    let build_info = IntGaugeVec::new(
        Opts::new(
            "argo_exporter_build_info",
            "A metric with a constant '1' value labeled by the version of the exporter.",
        ),
        &["version"],
    )?;
    build_info
        .with_label_values(&[env!("CARGO_PKG_VERSION")])
        .set(1);
    registry.register(build_info)
}

/// Counters and timings of Cloudflare API requests.
#[derive(Clone)]
pub struct ApiMetrics {
    requests: IntCounterVec,
    errors: IntCounterVec,
    retries: IntCounterVec,
    duration: HistogramVec,
    budget_wait: Counter,
    /// No labels; a vector so the series can stay absent until set.
    token_expiry: GaugeVec,
}

impl ApiMetrics {
    fn register(registry: &MetricRegistry, budget: RateLimit) -> prometheus::Result<Self> {
        let requests = IntCounterVec::new(
            Opts::new(
                "argo_api_requests_total",
                "Cloudflare API requests made, by endpoint and HTTP status code \
                 (code=\"none\" when no answer arrived).",
            ),
            &["endpoint", "code"],
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "argo_api_errors_total",
                "Failed Cloudflare API requests, by endpoint and kind of failure.",
            ),
            &["endpoint", "kind"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "argo_api_request_duration_seconds",
                "Time from sending a Cloudflare API request to having read its answer.",
            )
            .buckets(REQUEST_DURATION_BUCKETS.to_vec()),
            &["endpoint"],
        )?;
        let retries = IntCounterVec::new(
            Opts::new(
                "argo_api_retries_total",
                "Cloudflare API requests sent again after a timeout, a broken connection, \
                 a 408, 409, 429 or a 5xx answer.",
            ),
            &["endpoint"],
        )?;
        let budget_wait = Counter::new(
            "argo_rate_limit_wait_seconds_total",
            "Time requests spent waiting for the API budget or a rate-limit pause, summed \
             over requests.",
        )?;
        let budget_requests = IntGauge::new(
            "argo_api_budget_requests",
            "Cloudflare API requests the exporter allows itself per budget window \
             (--cloudflare.rate-limit).",
        )?;
        let budget_window = Gauge::new(
            "argo_api_budget_window_seconds",
            "Length of the API budget window (--cloudflare.rate-limit).",
        )?;
        let token_expiry = GaugeVec::new(
            Opts::new(
                "argo_api_token_expiry_timestamp_seconds",
                "Unix time in seconds when the API token expires, from the token check at \
                 start; absent when the token does not expire.",
            ),
            &[],
        )?;
        budget_requests.set(i64::from(budget.count));
        budget_window.set(budget.duration.as_secs_f64());

        registry.register(requests.clone())?;
        registry.register(errors.clone())?;
        registry.register(retries.clone())?;
        registry.register(duration.clone())?;
        registry.register(budget_wait.clone())?;
        registry.register(budget_requests)?;
        registry.register(budget_window)?;
        registry.register(token_expiry.clone())?;

        // Start every error series at zero so rate() and alerts see the first error.
        for endpoint in Endpoint::ALL {
            for kind in ErrorKind::ALL {
                errors.with_label_values(&[endpoint.as_str(), kind.as_str()]);
            }
            retries.with_label_values(&[endpoint.as_str()]);
        }
        Ok(Self {
            requests,
            errors,
            retries,
            duration,
            budget_wait,
            token_expiry,
        })
    }

    pub fn observe_retry(&self, endpoint: Endpoint) {
        self.retries.with_label_values(&[endpoint.as_str()]).inc();
    }

    pub fn observe_budget_wait(&self, waited: Duration) {
        if !waited.is_zero() {
            self.budget_wait.inc_by(waited.as_secs_f64());
        }
    }

    /// Records one request. `status` is `None` when no HTTP answer arrived.
    pub fn observe_request(&self, endpoint: Endpoint, status: Option<u16>, seconds: f64) {
        let code = status.map_or_else(|| "none".to_owned(), |s| s.to_string());
        self.requests
            .with_label_values(&[endpoint.as_str(), &code])
            .inc();
        self.duration
            .with_label_values(&[endpoint.as_str()])
            .observe(seconds);
    }

    pub fn observe_error(&self, endpoint: Endpoint, kind: ErrorKind) {
        self.errors
            .with_label_values(&[endpoint.as_str(), kind.as_str()])
            .inc();
    }
}

/// The zone's identity as it appears in labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneLabels {
    pub id: String,
    /// Empty until the zone's name has been looked up.
    pub name: String,
}

impl ZoneLabels {
    fn values(&self) -> [&str; 2] {
        [&self.id, &self.name]
    }

    fn pairs(&self) -> [(&str, &str); 2] {
        [("zone_id", &self.id), ("zone_name", &self.name)]
    }
}

/// The value of the series with these labels, if it exists. (The vectors'
/// own `get_metric_with_label_values` would create a missing one at zero.)
fn existing_value(collector: &dyn Collector, labels: &[(&str, &str)]) -> Option<f64> {
    collector.collect().iter().find_map(|family| {
        let counter = family.get_field_type() == MetricType::COUNTER;
        family
            .get_metric()
            .iter()
            .find(|metric| {
                metric.get_label().len() == labels.len()
                    && labels.iter().all(|(name, value)| {
                        metric
                            .get_label()
                            .iter()
                            .any(|pair| pair.name() == *name && pair.value() == *value)
                    })
            })
            .map(|metric| {
                if counter {
                    metric.get_counter().get_value()
                } else {
                    metric.get_gauge().get_value()
                }
            })
    })
}

/// What the last poll of each zone found.
#[derive(Clone)]
pub struct ZoneMetrics {
    enabled: IntGaugeVec,
    editable: IntGaugeVec,
    entitled: IntGaugeVec,
    expected: IntGaugeVec,
    last_modified: GaugeVec,
    poll_success: IntGaugeVec,
    last_success: GaugeVec,
    changes: IntCounterVec,
}

const ZONE_LABELS: &[&str] = &["zone_id", "zone_name"];

impl ZoneMetrics {
    fn register(registry: &MetricRegistry) -> prometheus::Result<Self> {
        let int_gauge = |name: &str, help: &str| {
            let gauge = IntGaugeVec::new(Opts::new(name, help), ZONE_LABELS)?;
            registry.register(gauge.clone())?;
            Ok::<_, prometheus::Error>(gauge)
        };
        let gauge = |name: &str, help: &str| {
            let gauge = GaugeVec::new(Opts::new(name, help), ZONE_LABELS)?;
            registry.register(gauge.clone())?;
            Ok::<_, prometheus::Error>(gauge)
        };
        Ok(Self {
            enabled: int_gauge(
                "argo_enabled",
                "1 if Argo Smart Routing is on for the zone, 0 if off, as of the last \
                 successful poll.",
            )?,
            editable: int_gauge(
                "argo_editable",
                "1 if the Argo Smart Routing setting can be changed through the API, as of \
                 the last successful poll.",
            )?,
            entitled: int_gauge(
                "argo_zone_entitled",
                "1 if the zone's plan includes Argo Smart Routing, 0 if Cloudflare answered \
                 that it does not (code 1015), as of the last poll.",
            )?,
            last_modified: gauge(
                "argo_last_modified_timestamp",
                "Unix time in seconds of the last change to Argo Smart Routing, as of the \
                 last successful poll; absent when Cloudflare does not say.",
            )?,
            poll_success: int_gauge(
                "argo_zone_poll_success",
                "1 if the last poll of the zone succeeded, 0 if it failed.",
            )?,
            last_success: gauge(
                "argo_zone_last_success_timestamp_seconds",
                "Unix time in seconds of the last successful poll of the zone.",
            )?,
            expected: int_gauge(
                "argo_expected_enabled",
                "1 if Argo Smart Routing is expected on for the zone, 0 if expected off; \
                 absent when either is fine.",
            )?,
            changes: {
                let counter = IntCounterVec::new(
                    Opts::new(
                        "argo_state_changes_total",
                        "Changes of Argo Smart Routing seen between two successful polls, by \
                         the state changed to.",
                    ),
                    &["zone_id", "zone_name", "to"],
                )?;
                registry.register(counter.clone())?;
                counter
            },
        })
    }

    /// Exports the zone's expected state (no series for `any`).
    pub fn set_expected(&self, zone: &ZoneLabels, expect: Expectation) {
        let labels = zone.values();
        match expect.wanted() {
            Some(value) => self
                .expected
                .with_label_values(&labels)
                .set(i64::from(value == ArgoValue::On)),
            None => {
                let _ = self.expected.remove_label_values(&labels);
            }
        }
    }

    /// Starts both change counters at zero, so the first change shows in `increase()`.
    pub fn start_change_counters(&self, zone: &ZoneLabels) {
        for value in [ArgoValue::On, ArgoValue::Off] {
            self.changes
                .with_label_values(&[&zone.id, &zone.name, value.as_str()]);
        }
    }

    pub fn record_change(&self, zone: &ZoneLabels, to: ArgoValue) {
        self.changes
            .with_label_values(&[&zone.id, &zone.name, to.as_str()])
            .inc();
    }

    /// Stores what a successful poll read.
    pub fn record_success(
        &self,
        zone: &ZoneLabels,
        enabled: bool,
        editable: bool,
        modified_on: Option<f64>,
        now: f64,
    ) {
        let labels = zone.values();
        self.enabled
            .with_label_values(&labels)
            .set(i64::from(enabled));
        self.editable
            .with_label_values(&labels)
            .set(i64::from(editable));
        match modified_on {
            Some(at) => self.last_modified.with_label_values(&labels).set(at),
            None => {
                // The series goes away while Cloudflare omits the time; an
                // error here only means there was no series to remove.
                let _ = self.last_modified.remove_label_values(&labels);
            }
        }
        self.entitled.with_label_values(&labels).set(1);
        self.poll_success.with_label_values(&labels).set(1);
        self.last_success.with_label_values(&labels).set(now);
    }

    /// Stores Cloudflare's answer that the zone's plan lacks Argo (code
    /// 1015). Argo is then off in effect: a lapsed plan must look like Argo
    /// turning off, so `argo_enabled` and `argo_editable` drop to 0.
    pub fn record_not_entitled(&self, zone: &ZoneLabels, now: f64) {
        let labels = zone.values();
        self.entitled.with_label_values(&labels).set(0);
        self.enabled.with_label_values(&labels).set(0);
        self.editable.with_label_values(&labels).set(0);
        let _ = self.last_modified.remove_label_values(&labels);
        self.poll_success.with_label_values(&labels).set(1);
        self.last_success.with_label_values(&labels).set(now);
    }

    /// Marks the last poll as failed. The last good values stay as they were.
    pub fn record_failure(&self, zone: &ZoneLabels) {
        self.poll_success.with_label_values(&zone.values()).set(0);
    }

    /// Removes every series of the zone, e.g. before its labels change.
    pub fn forget(&self, zone: &ZoneLabels) {
        let labels = zone.values();
        // Each removal fails harmlessly when the series was never set.
        let _ = self.enabled.remove_label_values(&labels);
        let _ = self.editable.remove_label_values(&labels);
        let _ = self.entitled.remove_label_values(&labels);
        let _ = self.last_modified.remove_label_values(&labels);
        let _ = self.poll_success.remove_label_values(&labels);
        let _ = self.last_success.remove_label_values(&labels);
        let _ = self.expected.remove_label_values(&labels);
        for value in [ArgoValue::On, ArgoValue::Off] {
            let _ = self
                .changes
                .remove_label_values(&[&zone.id, &zone.name, value.as_str()]);
        }
    }

    /// Moves a zone's series to new labels, keeping their values; a series
    /// the zone did not have is not created.
    pub fn relabel(&self, from: &ZoneLabels, to: &ZoneLabels) {
        let (old, new) = (from.pairs(), to.values());
        for vec in [
            &self.enabled,
            &self.editable,
            &self.entitled,
            &self.expected,
            &self.poll_success,
        ] {
            if let Some(value) = existing_value(vec, &old) {
                vec.with_label_values(&new).set(value as i64);
            }
        }
        for vec in [&self.last_modified, &self.last_success] {
            if let Some(value) = existing_value(vec, &old) {
                vec.with_label_values(&new).set(value);
            }
        }
        for value in [ArgoValue::On, ArgoValue::Off] {
            let [id, name] = old;
            let labels = [id, name, ("to", value.as_str())];
            if let Some(count) = existing_value(&self.changes, &labels) {
                self.changes
                    .with_label_values(&[&to.id, &to.name, value.as_str()])
                    .inc_by(count as u64);
            }
        }
        self.forget(from);
    }
}

/// What the daemon did about zones found off: alerts pushed, zones re-enabled.
#[derive(Clone)]
pub struct AlertingMetrics {
    notifications: IntCounterVec,
    remediations: IntCounterVec,
}

impl AlertingMetrics {
    fn register(registry: &MetricRegistry) -> prometheus::Result<Self> {
        let notifications = IntCounterVec::new(
            Opts::new(
                "argo_alertmanager_notifications_total",
                "Deliveries of alerts to an Alertmanager (--alertmanager.url), by result.",
            ),
            &["result"],
        )?;
        let remediations = IntCounterVec::new(
            Opts::new(
                "argo_remediations_total",
                "Attempts of --enforce to turn Argo Smart Routing back on, by result.",
            ),
            &["result"],
        )?;
        registry.register(notifications.clone())?;
        registry.register(remediations.clone())?;
        for result in ["success", "failure"] {
            notifications.with_label_values(&[result]);
            remediations.with_label_values(&[result]);
        }
        Ok(Self {
            notifications,
            remediations,
        })
    }

    pub fn observe_notification(&self, delivered: bool) {
        let result = if delivered { "success" } else { "failure" };
        self.notifications.with_label_values(&[result]).inc();
    }

    pub fn observe_remediation(&self, succeeded: bool) {
        let result = if succeeded { "success" } else { "failure" };
        self.remediations.with_label_values(&[result]).inc();
    }
}

/// The health of the polling loop itself.
#[derive(Clone)]
pub struct PollMetrics {
    pub cycles: IntCounter,
    pub overruns: IntCounter,
    pub cycle_duration: Histogram,
    pub last_cycle_end: Gauge,
    /// The planned time between two polls of a zone.
    pub interval: Gauge,
    zones: IntGaugeVec,
}

impl PollMetrics {
    fn register(registry: &MetricRegistry) -> prometheus::Result<Self> {
        let cycles = IntCounter::new(
            "argo_poll_cycles_total",
            "Poll cycles completed; each cycle polls every zone once.",
        )?;
        let overruns = IntCounter::new(
            "argo_poll_cycle_overruns_total",
            "Poll cycles that took longer than the poll interval, delaying the next one.",
        )?;
        let cycle_duration = Histogram::with_opts(
            HistogramOpts::new(
                "argo_poll_cycle_duration_seconds",
                "Time one poll cycle took to poll every zone.",
            )
            .buckets(CYCLE_DURATION_BUCKETS.to_vec()),
        )?;
        let last_cycle_end = Gauge::new(
            "argo_last_poll_cycle_timestamp_seconds",
            "Unix time in seconds when the last poll cycle finished.",
        )?;
        let interval = Gauge::new(
            "argo_poll_interval_seconds",
            "Seconds between two polls of a zone: --poll.interval, or longer while the API \
             budget cannot cover every zone in one interval.",
        )?;
        let zones = IntGaugeVec::new(
            Opts::new(
                "argo_zones",
                "Zones being watched, by where they came from: configured (--zone or the \
                 config file) or discovered (--zones.discover).",
            ),
            &["source"],
        )?;
        registry.register(cycles.clone())?;
        registry.register(overruns.clone())?;
        registry.register(cycle_duration.clone())?;
        registry.register(last_cycle_end.clone())?;
        registry.register(interval.clone())?;
        registry.register(zones.clone())?;
        Ok(Self {
            cycles,
            overruns,
            cycle_duration,
            last_cycle_end,
            interval,
            zones,
        })
    }

    pub fn set_zone_count(&self, source: &str, count: usize) {
        let count = i64::try_from(count).unwrap_or(i64::MAX);
        self.zones.with_label_values(&[source]).set(count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(metrics: &Metrics) -> String {
        String::from_utf8(metrics.encode().unwrap()).unwrap()
    }

    fn zone(name: &str) -> ZoneLabels {
        ZoneLabels {
            id: "0123456789abcdef0123456789abcdef".to_owned(),
            name: name.to_owned(),
        }
    }

    #[test]
    fn success_then_failure_keeps_the_last_good_values() {
        let metrics = Metrics::new(RateLimit::default()).unwrap();
        let z = zone("example.com");
        metrics
            .zones
            .record_success(&z, true, false, Some(1_704_974_400.5), 1_800_000_000.0);
        metrics.zones.record_failure(&z);

        let text = text(&metrics);
        let labels = r#"{zone_id="0123456789abcdef0123456789abcdef",zone_name="example.com"}"#;
        for line in [
            format!("argo_enabled{labels} 1"),
            format!("argo_editable{labels} 0"),
            format!("argo_last_modified_timestamp{labels} 1704974400.5"),
            format!("argo_zone_poll_success{labels} 0"),
            format!("argo_zone_last_success_timestamp_seconds{labels} 1800000000"),
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }

    #[test]
    fn missing_modified_on_removes_its_series() {
        let metrics = Metrics::new(RateLimit::default()).unwrap();
        let z = zone("example.com");
        metrics.zones.record_success(&z, true, true, Some(1.0), 2.0);
        metrics.zones.record_success(&z, true, true, None, 3.0);
        assert!(!text(&metrics).contains("argo_last_modified_timestamp{"));
    }

    #[test]
    fn relabel_moves_values_to_the_new_name() {
        let metrics = Metrics::new(RateLimit::default()).unwrap();
        let (unnamed, named) = (zone(""), zone("example.com"));
        metrics
            .zones
            .record_success(&unnamed, false, true, None, 5.0);
        metrics.zones.relabel(&unnamed, &named);

        let text = text(&metrics);
        assert!(!text.contains(r#"zone_name="""#), "{text}");
        assert!(text.contains(
            r#"argo_enabled{zone_id="0123456789abcdef0123456789abcdef",zone_name="example.com"} 0"#
        ));
    }

    #[test]
    fn relabel_creates_no_series_the_zone_did_not_have() {
        let metrics = Metrics::new(RateLimit::default()).unwrap();
        let (unnamed, named) = (zone(""), zone("example.com"));
        metrics.zones.set_expected(&unnamed, Expectation::Any);
        metrics
            .zones
            .record_success(&unnamed, true, true, None, 5.0);
        metrics.zones.start_change_counters(&unnamed);
        metrics.zones.record_change(&unnamed, ArgoValue::Off);
        metrics.zones.relabel(&unnamed, &named);

        let text = text(&metrics);
        assert!(!text.contains("argo_expected_enabled{"), "{text}");
        assert!(!text.contains("argo_last_modified_timestamp{"), "{text}");
        assert!(text.contains(
            r#"argo_state_changes_total{to="off",zone_id="0123456789abcdef0123456789abcdef",zone_name="example.com"} 1"#
        ), "{text}");
        assert!(!text.contains(r#"zone_name="""#), "{text}");
    }

    #[test]
    fn error_counters_start_at_zero_and_build_info_is_set() {
        let text = text(&Metrics::new(RateLimit::default()).unwrap());
        assert!(
            text.contains(r#"argo_api_errors_total{endpoint="smart_routing",kind="timeout"} 0"#)
        );
        assert!(text.contains(&format!(
            "argo_exporter_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )));
    }
}
