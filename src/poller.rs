//! The polling loop: reads Argo Smart Routing for every zone once per
//! interval, with bounded concurrency, and stores the results as metrics.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::stream::{self, StreamExt};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::cloudflare::{ArgoValue, Client, Endpoint, ErrorKind};
use crate::config::{PollConfig, ZoneId};
use crate::metrics::{Metrics, ZoneLabels};

/// Longest wait between two attempts to look up a zone's name.
const MAX_NAME_RETRY: Duration = Duration::from_secs(3600);

/// Set once the first poll cycle has finished; `/readyz` reports it.
#[derive(Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    fn set_ready(&self) {
        self.0.store(true, Ordering::Release);
    }
}

/// What the poller remembers about one zone between cycles.
struct ZoneState {
    id: ZoneId,
    labels: ZoneLabels,
    name_lookup: NameLookup,
    last_value: Option<ArgoValue>,
    /// The kind of the last failure, so a failing zone is logged once, not every cycle.
    last_error: Option<ErrorKind>,
}

/// When to try `GET /zones/{id}` again; names are nice to have, so failures
/// back off instead of doubling the request rate.
struct NameLookup {
    due: Option<Instant>,
    failures: u32,
}

pub struct Poller {
    client: Client,
    metrics: Metrics,
    interval: Duration,
    concurrency: usize,
    zones: Vec<ZoneState>,
}

impl Poller {
    pub fn new(client: Client, metrics: Metrics, config: &PollConfig, zones: &[ZoneId]) -> Self {
        metrics.poll.set_zone_count("configured", zones.len());
        let zones = zones
            .iter()
            .map(|id| ZoneState {
                id: id.clone(),
                labels: ZoneLabels {
                    id: id.to_string(),
                    name: String::new(),
                },
                name_lookup: NameLookup {
                    due: Some(Instant::now()),
                    failures: 0,
                },
                last_value: None,
                last_error: None,
            })
            .collect();
        Self {
            client,
            metrics,
            interval: config.interval,
            concurrency: config.concurrency.get(),
            zones,
        }
    }

    /// Polls every interval until `shutdown` is cancelled. The first cycle
    /// starts at once; a cycle that overruns delays the next instead of
    /// overlapping it.
    pub async fn run(mut self, readiness: Readiness, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut overrunning = false;
        let mut cycle: u64 = 0;

        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = ticker.tick() => {}
            }
            cycle += 1;
            let started = Instant::now();
            let span = info_span!("poll_cycle", cycle);
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = self.poll_all().instrument(span) => {}
            }
            let took = started.elapsed();

            let poll = &self.metrics.poll;
            poll.cycles.inc();
            poll.cycle_duration.observe(took.as_secs_f64());
            poll.last_cycle_end.set(unix_now());
            if !readiness.is_ready() {
                info!(zones = self.zones.len(), took = ?took, "first poll cycle finished");
                readiness.set_ready();
            }

            if took > self.interval {
                poll.overruns.inc();
                if !overrunning {
                    warn!(
                        took = ?took,
                        interval = ?self.interval,
                        "poll cycle took longer than the interval; the next one starts late \
                         (raise --poll.concurrency or --poll.interval)"
                    );
                }
                overrunning = true;
            } else if overrunning {
                info!(took = ?took, "poll cycles fit the interval again");
                overrunning = false;
            }
        }
        debug!("poller stopped");
    }

    /// Polls every zone once, at most `concurrency` at a time.
    pub async fn poll_all(&mut self) {
        let (client, metrics, interval) = (&self.client, &self.metrics, self.interval);
        stream::iter(self.zones.iter_mut())
            .for_each_concurrent(self.concurrency, |zone| {
                let span = info_span!("zone", zone_id = %zone.id);
                poll_zone(client, metrics, interval, zone).instrument(span)
            })
            .await;
    }
}

async fn poll_zone(client: &Client, metrics: &Metrics, interval: Duration, zone: &mut ZoneState) {
    if zone
        .name_lookup
        .due
        .is_some_and(|due| due <= Instant::now())
    {
        look_up_name(client, metrics, interval, zone).await;
    }

    let setting = match client.smart_routing(&zone.id).await {
        Ok(setting) => setting,
        Err(err) => {
            metrics.zones.record_failure(&zone.labels);
            let kind = err.kind();
            if zone.last_error != Some(kind) {
                warn!(
                    zone_name = %zone.labels.name,
                    kind = %kind,
                    cloudflare_code = err.cloudflare_code(),
                    error = %err,
                    "poll failed; serving the last good values"
                );
            } else {
                debug!(kind = %kind, error = %err, "poll failed again");
            }
            zone.last_error = Some(kind);
            return;
        }
    };

    let modified_on = match setting.modified_at() {
        Ok(at) => at.map(|at| at.timestamp_micros() as f64 / 1e6),
        Err(err) => {
            metrics
                .api
                .observe_error(Endpoint::SmartRouting, ErrorKind::Decode);
            warn!(
                zone_name = %zone.labels.name,
                modified_on = setting.modified_on.as_deref(),
                error = %err,
                "modified_on is not an RFC 3339 time; dropping it"
            );
            None
        }
    };
    metrics.zones.record_success(
        &zone.labels,
        setting.value == ArgoValue::On,
        setting.editable,
        modified_on,
        unix_now(),
    );

    if let Some(kind) = zone.last_error.take() {
        info!(zone_name = %zone.labels.name, previous_error = %kind, "poll succeeded again");
    }
    match zone.last_value.replace(setting.value) {
        Some(old) if old != setting.value => info!(
            zone_name = %zone.labels.name,
            from = %old,
            to = %setting.value,
            modified_on = setting.modified_on.as_deref(),
            "Argo Smart Routing changed"
        ),
        _ => debug!(value = %setting.value, editable = setting.editable, "polled"),
    }
}

async fn look_up_name(
    client: &Client,
    metrics: &Metrics,
    interval: Duration,
    zone: &mut ZoneState,
) {
    match client.zone(&zone.id).await {
        Ok(found) => {
            zone.name_lookup.due = None;
            if found.name != zone.labels.name {
                let renamed = ZoneLabels {
                    id: zone.labels.id.clone(),
                    name: found.name,
                };
                metrics.zones.relabel(&zone.labels, &renamed);
                debug!(zone_name = %renamed.name, "zone name found");
                zone.labels = renamed;
            }
        }
        Err(err) => {
            let failures = zone.name_lookup.failures.saturating_add(1);
            let delay = interval
                .saturating_mul(2u32.saturating_pow(failures - 1))
                .min(MAX_NAME_RETRY);
            if failures == 1 {
                warn!(
                    kind = %err.kind(),
                    error = %err,
                    retry_in = %humantime::format_duration(delay),
                    "cannot look up the zone name (needs the \"Zone Read\" permission); \
                     exporting without it for now"
                );
            }
            zone.name_lookup = NameLookup {
                due: Some(Instant::now() + delay),
                failures,
            };
        }
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |elapsed| elapsed.as_secs_f64())
}
