//! Every metric the exporter serves, registered in one `Registry` that the
//! HTTP server encodes on each scrape. Nothing here calls Cloudflare: the
//! values are whatever the poller last stored.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::core::Collector;
use prometheus::{
    Counter, Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::budget::RateLimit;
use crate::cloudflare::{ArgoValue, Endpoint, ErrorKind};
use crate::zone_table::{Row, ZoneTable};
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
            zones: ZoneMetrics::default(),
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
    /// a time, writing to `buffer` (a `Vec`, or a gzip stream).
    pub fn encode_into<W: std::io::Write>(&self, buffer: &mut W) -> Result<(), prometheus::Error> {
        let encoder = TextEncoder::new();
        for collector in self.registry.lock().iter() {
            let families: Vec<_> = collector
                .collect()
                .into_iter()
                .filter(|family| !family.get_metric().is_empty())
                .collect();
            encoder.encode(&families, buffer)?;
        }
        self.zones
            .encode_into(buffer)
            .map_err(|err| prometheus::Error::Msg(err.to_string()))
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

    /// Seconds requests have waited for the budget so far, summed.
    pub fn budget_wait_seconds(&self) -> f64 {
        self.budget_wait.get()
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

/// What the last poll of each zone found.
#[derive(Clone, Default)]
pub struct ZoneMetrics {
    table: Arc<ZoneTable>,
}

impl ZoneMetrics {
    fn update(&self, zone: &ZoneLabels, change: impl FnOnce(&mut Row)) {
        self.table.update(&zone.id, &zone.name, change);
    }

    /// Exports the zone's expected state (no series for `any`).
    pub fn set_expected(&self, zone: &ZoneLabels, expect: Expectation) {
        let expected = expect.wanted().map(|value| value == ArgoValue::On);
        self.update(zone, |row| row.expected = expected);
    }

    /// Starts both change counters at zero, so the first change shows in `increase()`.
    pub fn start_change_counters(&self, zone: &ZoneLabels) {
        self.update(zone, |row| {
            row.changes.get_or_insert([0, 0]);
        });
    }

    pub fn record_change(&self, zone: &ZoneLabels, to: ArgoValue) {
        self.update(zone, |row| {
            let counts = row.changes.get_or_insert([0, 0]);
            counts[usize::from(to == ArgoValue::Off)] += 1;
        });
    }

    /// Stores what a successful poll read; without `modified_on` that
    /// series goes away.
    pub fn record_success(
        &self,
        zone: &ZoneLabels,
        enabled: bool,
        editable: bool,
        modified_on: Option<f64>,
        now: f64,
    ) {
        self.update(zone, |row| {
            row.enabled = Some(enabled);
            row.editable = Some(editable);
            row.entitled = Some(true);
            row.last_modified = modified_on;
            row.poll_success = Some(true);
            row.last_success = Some(now);
        });
    }

    /// Stores Cloudflare's answer that the zone's plan lacks Argo (code
    /// 1015). Argo is then off in effect: a lapsed plan must look like Argo
    /// turning off, so `argo_enabled` and `argo_editable` drop to 0.
    pub fn record_not_entitled(&self, zone: &ZoneLabels, now: f64) {
        self.update(zone, |row| {
            row.enabled = Some(false);
            row.editable = Some(false);
            row.entitled = Some(false);
            row.last_modified = None;
            row.poll_success = Some(true);
            row.last_success = Some(now);
        });
    }

    /// Marks the last poll as failed. The last good values stay as they were.
    pub fn record_failure(&self, zone: &ZoneLabels) {
        self.update(zone, |row| row.poll_success = Some(false));
    }

    /// Removes every series of the zone.
    pub fn forget(&self, zone: &ZoneLabels) {
        self.table.remove(&zone.id);
    }

    /// Moves a zone's series to new labels, keeping their values; a series
    /// the zone did not have is not created.
    pub fn relabel(&self, from: &ZoneLabels, to: &ZoneLabels) {
        if from.id != to.id {
            self.forget(from);
        }
        self.update(to, |_| {});
    }

    fn encode_into<W: std::io::Write>(&self, buffer: &mut W) -> std::io::Result<()> {
        self.table.encode_into(buffer)
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
            "Poll cycles that took longer than planned (the poll interval, or the longer cycle \
             the API budget allows), delaying the next one.",
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
