//! The polling loop: reads Argo Smart Routing for every watched zone once
//! per cycle and stores the results as metrics.
//!
//! A cycle lasts the poll interval, or longer when the API budget cannot
//! cover every zone in one interval. Its polls start evenly spread over the
//! first 90% of the cycle (the rest leaves time for the last answers), at
//! most `concurrency` at a time. The first cycle starts every poll at once,
//! as fast as the budget allows, so metrics are there soon after start.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Utc};
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::alerting::{AlertBoard, Notifier};
use crate::cloudflare::{
    codes, ApiError, ArgoValue, Client, Endpoint, ErrorKind, SmartRouting, Zone,
};
use crate::config::{AlertingConfig, PollConfig, ZoneId};
use crate::metrics::{Metrics, ZoneLabels};
use crate::zones::{Expectation, Source, WatchedZone, ZoneSet};

/// Longest wait between two attempts to look up a zone's name.
const MAX_NAME_RETRY: Duration = Duration::from_secs(3600);

/// The share of a cycle over which its polls start.
const SPREAD_SHARE: f64 = 0.9;

/// A zone whose plan lacks Argo is asked again once every this many cycles.
const NOT_ENTITLED_RECHECK_CYCLES: u32 = 10;

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
    source: Source,
    name_lookup: NameLookup,
    last_value: Option<ArgoValue>,
    /// The kind of the last failure, so a failing zone is logged once, not every cycle.
    last_error: Option<ErrorKind>,
    /// Cycles left to skip a zone whose plan lacks Argo.
    skip_cycles: u32,
    /// Whether the last `modified_on` could not be read, so it is warned about once.
    bad_modified_on: bool,
    expect: Expectation,
    /// Since when the zone has been seen off where it should be on.
    off_since: Option<Instant>,
    /// When `--enforce` last tried to turn it back on.
    last_remediation: Option<Instant>,
}

impl ZoneState {
    fn new(zone: &WatchedZone) -> Self {
        Self {
            id: zone.id.clone(),
            labels: ZoneLabels {
                id: zone.id.to_string(),
                name: zone.name.clone().unwrap_or_default(),
            },
            source: zone.source,
            name_lookup: NameLookup {
                due: zone.name.is_none().then(Instant::now),
                failures: 0,
            },
            last_value: None,
            last_error: None,
            skip_cycles: 0,
            bad_modified_on: false,
            expect: zone.expect,
            off_since: None,
            last_remediation: None,
        }
    }
}

/// When to try `GET /zones/{id}` again; names are nice to have, so failures
/// back off instead of doubling the request rate.
struct NameLookup {
    due: Option<Instant>,
    failures: u32,
}

/// What one zone's poll tells its cycle: the failures that are logged once
/// per cycle for all zones rather than once per zone.
#[derive(Default)]
struct Outcome {
    /// The Argo read was refused for the credentials.
    argo_refused: Option<Refusal>,
    /// The name lookup failed for the first time (later failures are quiet).
    name_failed: Option<NameFailure>,
}

/// Credentials refused, with Cloudflare's error code when it gave one.
struct Refusal {
    code: Option<i64>,
}

struct NameFailure {
    kind: ErrorKind,
    code: Option<i64>,
    retry_in: Duration,
}

/// What a cycle found, for the lines logged once per cycle.
#[derive(Default)]
struct CycleReport {
    zones: usize,
    argo_refused: usize,
    argo_refused_code: Option<i64>,
    names_failed: usize,
    /// The first new name lookup failure, as the example for the log line.
    name_failure: Option<NameFailure>,
}

/// How long a cycle lasts and how far apart its polls start.
#[derive(Debug, Clone, Copy, PartialEq)]
struct CyclePlan {
    length: Duration,
    spacing: Duration,
}

pub struct Poller {
    client: Client,
    metrics: Metrics,
    interval: Duration,
    concurrency: usize,
    /// The API budget's spacing between two requests.
    budget_period: Duration,
    zones: Vec<ZoneState>,
    zone_set: watch::Receiver<ZoneSet>,
    /// Whether the budget currently stretches cycles past the interval.
    stretched: bool,
    actions: Actions,
}

/// What the poller does about a zone found off where it should be on,
/// besides exporting it.
#[derive(Clone, Default)]
pub struct Actions {
    /// Where the daemon's own alerts go (with `--alertmanager.url`).
    pub alerts: Option<Arc<AlertBoard>>,
    /// With `--enforce`: how long a zone may stay off before it is turned on.
    pub enforce_grace: Option<Duration>,
}

impl Actions {
    /// The actions `config` asks for. With Alertmanagers, starts the task
    /// that delivers the alerts (until `stop`) and points the board at it.
    pub fn start(
        config: &AlertingConfig,
        metrics: &Metrics,
        stop: &CancellationToken,
    ) -> Result<Self, reqwest::Error> {
        let mut actions = Self {
            alerts: None,
            enforce_grace: config.enforce_grace,
        };
        if !config.alertmanagers.is_empty() {
            let board = Arc::new(AlertBoard::default());
            let notifier = Notifier::new(
                Arc::clone(&board),
                config.alertmanagers.clone(),
                config.resend_interval,
                metrics.alerting.clone(),
            )?;
            tokio::spawn(notifier.run(stop.clone()));
            actions.alerts = Some(board);
        }
        Ok(actions)
    }
}

impl Poller {
    pub fn new(
        client: Client,
        metrics: Metrics,
        config: &PollConfig,
        budget_period: Duration,
        zone_set: watch::Receiver<ZoneSet>,
        actions: Actions,
    ) -> Self {
        let mut poller = Self {
            client,
            metrics,
            interval: config.interval,
            concurrency: config.concurrency.get(),
            budget_period,
            zones: Vec::new(),
            zone_set,
            stretched: false,
            actions,
        };
        poller.sync_zones();
        poller
    }

    /// Polls cycle after cycle until `shutdown` is cancelled. With
    /// `wait_for_zones`, the first cycle waits for the zone tracker's first
    /// round (names resolved, zones discovered).
    pub async fn run(
        mut self,
        readiness: Readiness,
        wait_for_zones: bool,
        shutdown: CancellationToken,
    ) {
        if wait_for_zones {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = self.zone_set.changed() => {}
            }
        }
        let mut overrunning = false;
        let mut cycle: u64 = 0;
        let mut next_start = Instant::now();

        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep_until(next_start) => {}
            }
            self.sync_zones();
            let plan = self.plan(cycle == 0);
            cycle += 1;
            let started = Instant::now();
            let waited_before = self.metrics.api.budget_wait_seconds();
            let span = info_span!("poll_cycle", cycle);
            let report = tokio::select! {
                () = shutdown.cancelled() => break,
                report = self.poll_cycle(plan.spacing).instrument(span) => report,
            };
            let took = started.elapsed();

            let poll = &self.metrics.poll;
            poll.cycles.inc();
            poll.cycle_duration.observe(took.as_secs_f64());
            poll.last_cycle_end.set(unix_now());
            report.log();
            if !readiness.is_ready() {
                info!(zones = report.zones, took = ?took, "first poll cycle finished");
                readiness.set_ready();
            }

            if took > plan.length {
                poll.overruns.inc();
                if !overrunning {
                    // Summed over requests, so it can exceed the cycle's length;
                    // half of it is enough to say where the time went.
                    let waited = self.metrics.api.budget_wait_seconds() - waited_before;
                    let hint = if waited >= took.as_secs_f64() / 2.0 {
                        "requests waited for the API budget or a 429 pause \
                         (see argo_rate_limit_wait_seconds_total)"
                    } else {
                        "answers were slow: raise --poll.concurrency or --poll.interval"
                    };
                    warn!(
                        took = ?took,
                        cycle = ?plan.length,
                        budget_wait_seconds = waited,
                        hint,
                        "poll cycle took longer than planned; the next one starts late"
                    );
                }
                overrunning = true;
            } else if overrunning {
                info!(took = ?took, "poll cycles fit their plan again");
                overrunning = false;
            }
            next_start = started + plan.length;
        }
        debug!("poller stopped");
    }

    /// Applies the latest zone set: new zones are added, zones gone from it
    /// lose their series, renamed ones move their series to the new name.
    fn sync_zones(&mut self) {
        let set = self.zone_set.borrow_and_update().clone();
        let mut old: std::collections::HashMap<ZoneId, ZoneState> =
            self.zones.drain(..).map(|z| (z.id.clone(), z)).collect();
        for watched in set.iter() {
            let state = match old.remove(&watched.id) {
                Some(mut state) => {
                    state.source = watched.source;
                    if state.expect != watched.expect {
                        state.expect = watched.expect;
                        self.metrics.zones.set_expected(&state.labels, state.expect);
                        // Judged again at once: a zone no longer expected on
                        // must not stay alerted until its next good poll.
                        let off = state.last_value == Some(ArgoValue::Off);
                        if !(off && state.expect == Expectation::On) {
                            state.off_since = None;
                            if let Some(board) = &self.actions.alerts {
                                board.set(&state.labels, false);
                            }
                        }
                    }
                    if let Some(name) = watched.name.as_ref().filter(|n| **n != state.labels.name) {
                        let renamed = ZoneLabels {
                            id: state.labels.id.clone(),
                            name: name.clone(),
                        };
                        self.metrics.zones.relabel(&state.labels, &renamed);
                        state.labels = renamed;
                        state.name_lookup.due = None;
                    }
                    state
                }
                None => {
                    debug!(zone_id = %watched.id, source = watched.source.as_str(), "zone added");
                    let state = ZoneState::new(watched);
                    self.metrics.zones.set_expected(&state.labels, state.expect);
                    state
                }
            };
            self.zones.push(state);
        }
        for gone in old.values() {
            info!(zone_id = %gone.id, zone_name = %gone.labels.name, "zone no longer watched");
            self.metrics.zones.forget(&gone.labels);
            if let Some(board) = &self.actions.alerts {
                board.set(&gone.labels, false);
            }
        }
        for source in [Source::Configured, Source::Discovered] {
            let count = self.zones.iter().filter(|z| z.source == source).count();
            self.metrics.poll.set_zone_count(source.as_str(), count);
        }
    }

    /// The next cycle's length and spacing. Warns when the budget cannot
    /// poll every zone once per interval, saying how fresh values will be.
    fn plan(&mut self, first: bool) -> CyclePlan {
        let plan = plan_cycle(self.zones.len(), self.interval, self.budget_period);
        let stretched = plan.length > self.interval;
        if stretched && !self.stretched {
            warn!(
                zones = self.zones.len(),
                interval = %humantime::format_duration(self.interval),
                each_zone_every = %humantime::format_duration(round_to_millis(plan.length)),
                "the API budget (--cloudflare.rate-limit) cannot poll every zone once per \
                 --poll.interval; polling each zone less often instead"
            );
        } else if !stretched && self.stretched {
            info!("the API budget covers every zone once per interval again");
        }
        self.stretched = stretched;
        self.metrics.poll.interval.set(plan.length.as_secs_f64());
        if first {
            CyclePlan {
                spacing: Duration::ZERO,
                ..plan
            }
        } else {
            plan
        }
    }

    /// Polls every zone once: poll `i` starts `i × spacing` after the cycle
    /// does, once fewer than `concurrency` polls are in flight.
    async fn poll_cycle(&mut self, spacing: Duration) -> CycleReport {
        let Self {
            client,
            metrics,
            interval,
            concurrency,
            zones,
            actions,
            ..
        } = self;
        let context = PollContext {
            client,
            metrics,
            interval: *interval,
            actions,
        };
        let concurrency = *concurrency;
        let mut report = CycleReport {
            zones: zones.len(),
            ..CycleReport::default()
        };
        let start = Instant::now();
        let mut in_flight = FuturesUnordered::new();

        for (index, zone) in zones.iter_mut().enumerate() {
            let slot = start + spacing.mul_f64(index as f64);
            while Instant::now() < slot || in_flight.len() >= concurrency {
                tokio::select! {
                    Some(outcome) = in_flight.next(), if !in_flight.is_empty() => {
                        report.add(outcome);
                    }
                    () = tokio::time::sleep_until(slot), if in_flight.len() < concurrency => {}
                }
            }
            let span = info_span!("zone", zone_id = %zone.id);
            in_flight.push(poll_zone(&context, zone).instrument(span));
        }
        while let Some(outcome) = in_flight.next().await {
            report.add(outcome);
        }
        report
    }
}

/// Spreads `zones` polls over the interval, stretching the cycle when the
/// budget allows fewer requests than that.
fn plan_cycle(zones: usize, interval: Duration, budget_period: Duration) -> CyclePlan {
    if zones == 0 {
        return CyclePlan {
            length: interval,
            spacing: Duration::ZERO,
        };
    }
    // Compared in whole nanoseconds: in floating point, a count of zones the
    // budget just covers could come out a hair over and stretch the cycle.
    let spread = interval.mul_f64(SPREAD_SHARE);
    let zones_n = zones as u128;
    if budget_period.as_nanos() * zones_n <= spread.as_nanos() {
        let spacing = Duration::from_nanos((spread.as_nanos() / zones_n) as u64);
        return CyclePlan {
            length: interval,
            spacing,
        };
    }
    let needed = budget_period.mul_f64(zones as f64).div_f64(SPREAD_SHARE);
    CyclePlan {
        length: interval.max(needed),
        spacing: budget_period,
    }
}

fn round_to_millis(duration: Duration) -> Duration {
    Duration::from_millis(duration.as_millis().try_into().unwrap_or(u64::MAX))
}

impl CycleReport {
    fn add(&mut self, outcome: Outcome) {
        if let Some(refusal) = outcome.argo_refused {
            self.argo_refused += 1;
            self.argo_refused_code = self.argo_refused_code.or(refusal.code);
        }
        if let Some(failure) = outcome.name_failed {
            self.names_failed += 1;
            self.name_failure.get_or_insert(failure);
        }
    }

    /// One line per cycle for credential problems and for zone names that
    /// could not be found, however many zones had them.
    fn log(&self) {
        if self.argo_refused > 0 {
            warn!(
                failed = self.argo_refused,
                zones = self.zones,
                cloudflare_code = self.argo_refused_code,
                hint = %auth_hint(self.argo_refused_code, "Zone Settings Read"),
                "Cloudflare refused the credentials for Argo Smart Routing"
            );
        }
        if let Some(failure) = &self.name_failure {
            let hint = if failure.kind == ErrorKind::Auth {
                auth_hint(failure.code, "Zone Read")
            } else {
                "retrying later".to_owned()
            };
            warn!(
                failed = self.names_failed,
                kind = %failure.kind,
                cloudflare_code = failure.code,
                retry_in = %humantime::format_duration(failure.retry_in),
                hint = %hint,
                "cannot look up zone names (GET /zones/{{id}}); exporting without them for now"
            );
        }
    }
}

/// What to do about refused credentials, from Cloudflare's code.
fn auth_hint(code: Option<i64>, permission: &str) -> String {
    match code {
        Some(codes::INVALID_ACCESS_TOKEN) => {
            "the API token is invalid: check it was copied whole and has not been rolled".into()
        }
        Some(codes::INVALID_REQUEST_HEADERS) => {
            "the credentials are malformed: check the token, or the email and API key".into()
        }
        _ => format!(
            "the credentials lack a permission: an API token needs \"{permission}\" on every \
             watched zone"
        ),
    }
}

/// What polling a zone needs besides the zone itself.
struct PollContext<'a> {
    client: &'a Client,
    metrics: &'a Metrics,
    interval: Duration,
    actions: &'a Actions,
}

/// Polls one zone: reads its Argo setting (and, when due, looks up its name
/// at the same time, so a slow lookup does not hold the read back), records
/// what came back and acts on it.
async fn poll_zone(context: &PollContext<'_>, zone: &mut ZoneState) -> Outcome {
    let client = context.client;
    let mut outcome = Outcome::default();
    if zone.skip_cycles > 0 {
        zone.skip_cycles -= 1;
        return outcome;
    }

    let name_due = zone
        .name_lookup
        .due
        .is_some_and(|due| due <= Instant::now());
    let (found, read) = if name_due {
        let (found, read) = tokio::join!(client.zone(&zone.id), client.smart_routing(&zone.id));
        (Some(found), read)
    } else {
        (None, client.smart_routing(&zone.id).await)
    };
    if let Some(found) = found {
        outcome.name_failed = record_name(context, zone, found);
    }

    match read {
        Ok(setting) => record_setting(context, zone, &setting).await,
        Err(err) if err.kind() == ErrorKind::NotEntitled => {
            record_not_entitled(context, zone, &err)
        }
        Err(err) => {
            let kind = err.kind();
            record_failure(context, zone, &err);
            if kind == ErrorKind::Auth {
                outcome.argo_refused = Some(Refusal {
                    code: err.cloudflare_code(),
                });
            }
        }
    }
    outcome
}

/// A successful read: exports it, judges it, and with `--enforce` acts on it.
async fn record_setting(context: &PollContext<'_>, zone: &mut ZoneState, setting: &SmartRouting) {
    let metrics = context.metrics;
    let modified_on = match setting.modified_at() {
        Ok(at) => {
            zone.bad_modified_on = false;
            at.map(unix_seconds)
        }
        Err(err) => {
            metrics
                .api
                .observe_error(Endpoint::SmartRouting, ErrorKind::Decode);
            if !zone.bad_modified_on {
                warn!(
                    zone_name = %zone.labels.name,
                    modified_on = setting.modified_on.as_deref(),
                    error = %err,
                    "modified_on is not an RFC 3339 time; dropping it"
                );
            }
            zone.bad_modified_on = true;
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
    observe_value(context, zone, setting.value, setting.modified_on.as_deref());

    if zone.off_since.is_some() && setting.editable {
        enforce(context, zone).await;
    }
}

/// Code 1015: the zone's plan lacks Argo. That is a state of the zone, asked
/// about again only every few cycles, and judged as Argo being off.
fn record_not_entitled(context: &PollContext<'_>, zone: &mut ZoneState, err: &ApiError) {
    context
        .metrics
        .zones
        .record_not_entitled(&zone.labels, unix_now());
    if zone.last_error != Some(ErrorKind::NotEntitled) {
        info!(
            zone_name = %zone.labels.name,
            cloudflare_code = err.cloudflare_code(),
            "the zone's plan does not include Argo Smart Routing; asking again every \
             {NOT_ENTITLED_RECHECK_CYCLES} cycles"
        );
    }
    zone.last_error = Some(ErrorKind::NotEntitled);
    zone.skip_cycles = NOT_ENTITLED_RECHECK_CYCLES - 1;
    // A lapsed plan is Argo turning off, and is judged as such.
    observe_value(context, zone, ArgoValue::Off, None);
}

/// A failed read: the last good values stay, and the failure is logged when
/// it is new for the zone. Refused credentials are left to the cycle's line.
fn record_failure(context: &PollContext<'_>, zone: &mut ZoneState, err: &ApiError) {
    context.metrics.zones.record_failure(&zone.labels);
    let kind = err.kind();
    if kind == ErrorKind::Auth {
        debug!(kind = %kind, error = %err, "poll refused");
    } else if zone.last_error != Some(kind) {
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
}

/// Records a value read from the API: counts and logs a change, judges it
/// against the zone's expectation, and tells the alert board.
fn observe_value(
    context: &PollContext<'_>,
    zone: &mut ZoneState,
    value: ArgoValue,
    modified_on: Option<&str>,
) {
    let metrics = &context.metrics.zones;
    match zone.last_value.replace(value) {
        None => metrics.start_change_counters(&zone.labels),
        Some(old) if old != value => {
            metrics.record_change(&zone.labels, value);
            warn!(
                zone_name = %zone.labels.name,
                from = %old,
                to = %value,
                modified_on,
                expected = zone.expect.as_str(),
                "Argo Smart Routing changed"
            );
        }
        Some(_) => debug!(value = %value, "polled"),
    }

    let unexpectedly_off = zone.expect == Expectation::On && value == ArgoValue::Off;
    zone.off_since = match (unexpectedly_off, zone.off_since) {
        (true, Some(since)) => Some(since),
        (true, None) => Some(Instant::now()),
        (false, _) => None,
    };
    if let Some(board) = &context.actions.alerts {
        board.set(&zone.labels, unexpectedly_off);
    }
}

/// With `--enforce`, turns Argo back on for a zone expected on that has been
/// off for the grace period, at most once per grace period, and reads the
/// setting back to confirm.
async fn enforce(context: &PollContext<'_>, zone: &mut ZoneState) {
    let (Some(grace), Some(off_since)) = (context.actions.enforce_grace, zone.off_since) else {
        return;
    };
    let now = Instant::now();
    let tried_recently = zone
        .last_remediation
        .is_some_and(|last| now.duration_since(last) < grace);
    if now.duration_since(off_since) < grace || tried_recently {
        return;
    }
    zone.last_remediation = Some(now);

    let client = context.client;
    let outcome = match client.set_smart_routing(&zone.id, ArgoValue::On).await {
        Ok(_) => client.smart_routing(&zone.id).await,
        Err(err) => Err(err),
    };
    let remediations = &context.metrics.alerting;
    match outcome {
        Ok(setting) if setting.value == ArgoValue::On => {
            remediations.observe_remediation(true);
            warn!(
                zone_name = %zone.labels.name,
                off_for = %humantime::format_duration(round_to_millis(now.duration_since(off_since))),
                "--enforce turned Argo Smart Routing back on"
            );
            context.metrics.zones.record_success(
                &zone.labels,
                true,
                setting.editable,
                setting.modified_at().ok().flatten().map(unix_seconds),
                unix_now(),
            );
            observe_value(context, zone, ArgoValue::On, setting.modified_on.as_deref());
        }
        Ok(_) => {
            remediations.observe_remediation(false);
            warn!(
                zone_name = %zone.labels.name,
                "--enforce asked to turn Argo Smart Routing on, but it still reads off"
            );
        }
        Err(err) => {
            remediations.observe_remediation(false);
            warn!(
                zone_name = %zone.labels.name,
                kind = %err.kind(),
                error = %err,
                "--enforce could not turn Argo Smart Routing back on (the token needs \
                 \"Zone Settings Write\")"
            );
        }
    }
}

/// Applies the answer of `GET /zones/{id}`: the zone's series move to its
/// name, or the next lookup is planned further off. Returns a first failure,
/// for the cycle's log line.
fn record_name(
    context: &PollContext<'_>,
    zone: &mut ZoneState,
    found: Result<Zone, ApiError>,
) -> Option<NameFailure> {
    match found {
        Ok(found) => {
            zone.name_lookup.due = None;
            if found.name != zone.labels.name {
                let renamed = ZoneLabels {
                    id: zone.labels.id.clone(),
                    name: found.name,
                };
                context.metrics.zones.relabel(&zone.labels, &renamed);
                debug!(zone_name = %renamed.name, "zone name found");
                zone.labels = renamed;
            }
            None
        }
        Err(err) => {
            let failures = zone.name_lookup.failures.saturating_add(1);
            let retry_in = context
                .interval
                .saturating_mul(2u32.saturating_pow(failures - 1))
                .min(MAX_NAME_RETRY);
            debug!(kind = %err.kind(), error = %err, retry_in = ?retry_in, "zone name lookup failed");
            zone.name_lookup = NameLookup {
                due: Some(Instant::now() + retry_in),
                failures,
            };
            (failures == 1).then(|| NameFailure {
                kind: err.kind(),
                code: err.cloudflare_code(),
                retry_in,
            })
        }
    }
}

/// Unix seconds, with the microseconds Cloudflare sends.
fn unix_seconds(at: DateTime<Utc>) -> f64 {
    at.timestamp_micros() as f64 / 1e6
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |elapsed| elapsed.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::RateLimit;

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn polls_spread_over_the_interval_when_the_budget_allows() {
        // 100 zones a minute need 500 requests per 5 minutes: within 1000/5m.
        let plan = plan_cycle(100, MINUTE, Duration::from_millis(300));
        assert_eq!(plan.length, MINUTE);
        assert_eq!(plan.spacing, Duration::from_millis(540));
    }

    #[test]
    fn the_budget_stretches_the_cycle() {
        // 1000 zones at one request per 300 ms take 300 s, over 90% of the cycle.
        let plan = plan_cycle(1000, MINUTE, Duration::from_millis(300));
        assert_eq!(plan.spacing, Duration::from_millis(300));
        assert!(
            (plan.length.as_secs_f64() - 300.0 / SPREAD_SHARE).abs() < 1e-6,
            "{plan:?}"
        );
        // The planned request rate never exceeds the budget.
        let per_second = 1000.0 / (plan.length.as_secs_f64() * SPREAD_SHARE);
        assert!(per_second <= 1.0 / 0.3 + 1e-9);
    }

    #[test]
    fn every_zone_count_the_budget_covers_fits_the_interval() {
        // Regression: rounding stretched some counts up to 176 zones (the
        // most 1000/5m covers at 60 s) to 60.00000008 s, with a warning.
        let period = "1000/5m".parse::<RateLimit>().unwrap().period();
        for zones in 1..=176 {
            let plan = plan_cycle(zones, MINUTE, period);
            assert_eq!(plan.length, MINUTE, "{zones} zones");
            assert!(plan.spacing >= period, "{zones} zones: {plan:?}");
        }
        assert!(plan_cycle(177, MINUTE, period).length > MINUTE);
    }

    #[test]
    fn no_zones_no_spacing() {
        let plan = plan_cycle(0, MINUTE, Duration::from_millis(300));
        assert_eq!(plan.length, MINUTE);
        assert_eq!(plan.spacing, Duration::ZERO);
    }
}
