//! Which zones to watch: the ones configured by ID or name, and the ones
//! discovered through the API. A background task keeps the list current and
//! hands each new version to the poller.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use regex::Regex;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::cloudflare::{ApiError, ArgoValue, Client, Zone, ZoneQuery};
use crate::config::ZoneId;

/// First wait before a failed discovery or name lookup is tried again; it
/// doubles up to the refresh interval.
const FIRST_RETRY: Duration = Duration::from_secs(15);

/// A zone as the user names it: by ID, or by its domain name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum ZoneRef {
    Id(ZoneId),
    Name(String),
}

impl FromStr for ZoneRef {
    type Err = String;

    /// Surrounding spaces (`a, b` in a variable) and a name's final dot (the
    /// DNS root, which Cloudflare's zone names never carry) are dropped.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if let Ok(id) = text.parse::<ZoneId>() {
            return Ok(Self::Id(id));
        }
        if is_domain_name(text) {
            let name = text.strip_suffix('.').unwrap_or(text);
            return Ok(Self::Name(name.to_ascii_lowercase()));
        }
        Err(format!(
            "{text:?} is neither a zone ID (32 lowercase hexadecimal characters) nor a \
             zone name such as example.com"
        ))
    }
}

impl fmt::Display for ZoneRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Id(id) => id.fmt(f),
            Self::Name(name) => f.write_str(name),
        }
    }
}

/// A plausible DNS zone name: at least two labels of letters, digits and
/// inner hyphens, 253 characters at most.
fn is_domain_name(text: &str) -> bool {
    let labels: Vec<&str> = text.strip_suffix('.').unwrap_or(text).split('.').collect();
    text.len() <= 253
        && labels.len() >= 2
        && labels.iter().all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// The state Argo Smart Routing should be in on a zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Expectation {
    On,
    Off,
    /// Either is fine: nothing to alert on.
    Any,
}

impl Expectation {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::On => "on",
            Self::Off => "off",
            Self::Any => "any",
        }
    }

    /// The value the zone should have, if it matters.
    pub fn wanted(self) -> Option<ArgoValue> {
        match self {
            Self::On => Some(ArgoValue::On),
            Self::Off => Some(ArgoValue::Off),
            Self::Any => None,
        }
    }

    pub fn is_met_by(self, value: ArgoValue) -> bool {
        self.wanted().is_none_or(|wanted| wanted == value)
    }
}

impl FromStr for Expectation {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "on" => Ok(Self::On),
            "off" => Ok(Self::Off),
            "any" => Ok(Self::Any),
            _ => Err(format!("{text:?} is not on, off or any")),
        }
    }
}

/// A zone named in the configuration, with its expectation if it has its own.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ConfiguredZone {
    pub zone: ZoneRef,
    /// `None`: the default (`--argo.expect`).
    pub expect: Option<Expectation>,
}

impl From<ZoneRef> for ConfiguredZone {
    fn from(zone: ZoneRef) -> Self {
        Self { zone, expect: None }
    }
}

/// Where a watched zone came from, as the `source` label of `argo_zones`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    Configured,
    Discovered,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Configured => "configured",
            Self::Discovered => "discovered",
        }
    }
}

/// One zone the poller should poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchedZone {
    pub id: ZoneId,
    /// Known when the zone came from a listing or was configured by name.
    pub name: Option<String>,
    pub source: Source,
    pub expect: Expectation,
}

/// The zones to watch right now, in a stable order.
pub type ZoneSet = Arc<Vec<WatchedZone>>;

/// `--zones.discover` and its filters.
#[derive(Debug, Clone)]
pub struct Discovery {
    pub query: ZoneQuery,
    pub include: Option<Regex>,
    pub exclude: Option<Regex>,
    pub refresh: Duration,
}

impl Discovery {
    fn keeps(&self, name: &str) -> bool {
        self.include.as_ref().is_none_or(|re| re.is_match(name))
            && !self.exclude.as_ref().is_some_and(|re| re.is_match(name))
    }
}

/// One replica's share of the zones when several split them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl Shard {
    /// The whole set: one replica watches every zone.
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    /// Whether the zone is this shard's. A zone ID is 128 random bits written
    /// in hex, so its value modulo the count spreads zones evenly and never
    /// changes with the program's version.
    pub fn owns(self, zone: &ZoneId) -> bool {
        let value = u128::from_str_radix(zone.as_str(), 16).unwrap_or(0);
        value % u128::from(self.count) == u128::from(self.index)
    }
}

/// Everything that decides which zones are watched.
#[derive(Debug, Clone)]
pub struct ZoneSources {
    /// Zones from `--zone` and the configuration file, without duplicates.
    pub configured: Vec<ConfiguredZone>,
    pub discovery: Option<Discovery>,
    /// How often zone names are resolved again and discovery re-runs.
    pub refresh: Duration,
    /// The expectation of zones that have none of their own.
    pub default_expect: Expectation,
    /// The zones of other shards are left to their replicas.
    pub shard: Shard,
}

impl ZoneSources {
    /// Only the given zones, expected on, refreshed every ten minutes.
    pub fn configured(zones: impl IntoIterator<Item = ZoneRef>) -> Self {
        Self {
            configured: zones.into_iter().map(ConfiguredZone::from).collect(),
            discovery: None,
            refresh: Duration::from_secs(600),
            default_expect: Expectation::On,
            shard: Shard::ALL,
        }
    }
}

/// A configured zone name that no zone answers to, as `status` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnresolvedName {
    pub name: String,
    pub expect: Expectation,
    pub reason: String,
}

/// Keeps the set of watched zones current: resolves configured names and
/// re-runs discovery every refresh interval.
pub struct ZoneTracker {
    client: Client,
    configured: Vec<ConfiguredZone>,
    discovery: Option<Discovery>,
    refresh: Duration,
    default_expect: Expectation,
    shard: Shard,
    /// What each configured name resolved to last (see `resolve_names`).
    resolved: BTreeMap<String, Zone>,
    /// Names whose last lookup failed, with why, so each failure is warned
    /// about once and `status` can say why a name is unresolved.
    failing_names: BTreeMap<String, String>,
    /// The last successful discovery, kept while the API is failing.
    discovered: Vec<Zone>,
    /// How many listed zones had unusable IDs last time, so that is warned
    /// about when it changes rather than at every refresh.
    malformed_ids: usize,
    /// Whether the last discovery failed, so a failure is warned about once.
    discovery_failing: bool,
    /// Whether a round has been published yet.
    published_once: bool,
    sender: watch::Sender<ZoneSet>,
}

impl ZoneTracker {
    /// The tracker and a receiver that already holds the zones configured by ID.
    pub fn new(client: Client, sources: &ZoneSources) -> (Self, watch::Receiver<ZoneSet>) {
        let mut tracker = Self {
            client,
            configured: sources.configured.clone(),
            discovery: sources.discovery.clone(),
            refresh: sources.refresh,
            default_expect: sources.default_expect,
            shard: sources.shard,
            resolved: BTreeMap::new(),
            failing_names: BTreeMap::new(),
            discovered: Vec::new(),
            malformed_ids: 0,
            discovery_failing: false,
            published_once: false,
            sender: watch::channel(ZoneSet::default()).0,
        };
        let (sender, receiver) = watch::channel(tracker.current());
        tracker.sender = sender;
        (tracker, receiver)
    }

    /// Whether the tracker has anything to do beyond the configured IDs.
    pub fn needs_api(&self) -> bool {
        self.discovery.is_some()
            || self
                .configured
                .iter()
                .any(|configured| matches!(configured.zone, ZoneRef::Name(_)))
    }

    /// Updates the set now and then every refresh interval, retrying sooner
    /// after a failure, until `shutdown`. Once per refresh interval a round
    /// checks every configured name again; the retries in between look up
    /// only the names that have not resolved.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut retry = FIRST_RETRY;
        let mut last_full: Option<Instant> = None;
        loop {
            let full = last_full.is_none_or(|at| at.elapsed() >= self.refresh);
            if full {
                last_full = Some(Instant::now());
            }
            let complete = self.refresh_once(full).await;
            let wait = if complete {
                retry = FIRST_RETRY;
                self.refresh
            } else {
                let wait = retry.min(self.refresh);
                retry = retry.saturating_mul(2);
                wait
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One round: discovery, then the configured names (with `recheck_names`
    /// all of them, otherwise only those not resolved yet). Publishes the
    /// result and returns whether every step succeeded.
    pub async fn refresh_once(&mut self, recheck_names: bool) -> bool {
        let discovered = self.discover().await;
        let resolved = self.resolve_names(recheck_names).await;
        self.publish();
        discovered && resolved
    }

    /// Looks up configured names. A name that discovery listed costs no
    /// request. Re-checking follows a zone deleted and created anew under its
    /// name to the new ID, and stops watching one that is gone; while a
    /// lookup fails, the last answer stands. Failures new in this round are
    /// summed up in one line.
    async fn resolve_names(&mut self, recheck: bool) -> bool {
        let mut complete = true;
        let mut new_failures: Vec<(String, String)> = Vec::new();
        for name in self.configured_names() {
            let before = self.resolved.get(&name).map(|zone| zone.id.clone());
            if before.is_some() && !recheck {
                continue;
            }
            let listed = self
                .discovered
                .iter()
                .find(|zone| zone.name.eq_ignore_ascii_case(&name))
                .cloned();
            let answer = match listed {
                Some(zone) => Ok(Some(zone)),
                None => self.resolve(&name).await,
            };
            let reason = match answer {
                Ok(Some(zone)) => {
                    if before.as_ref() != Some(&zone.id) {
                        info!(
                            zone_name = %name,
                            zone_id = %zone.id,
                            previous_zone_id = before.as_deref(),
                            "zone name resolved"
                        );
                    }
                    self.failing_names.remove(&name);
                    self.resolved.insert(name, zone);
                    continue;
                }
                Ok(None) => {
                    // The lookup worked and found nothing: a zone watched
                    // under this name is gone, and loses its series.
                    if let Some(gone) = self.resolved.remove(&name) {
                        warn!(
                            zone_name = %name,
                            zone_id = %gone.id,
                            "no zone of this name is visible to the token any more; \
                             no longer watching it"
                        );
                    }
                    "no zone of that name is visible to the token".to_owned()
                }
                Err(err) => format!("cannot look the name up ({}): {err}", err.kind()),
            };
            complete = false;
            if self.failing_names.get(&name) != Some(&reason) {
                new_failures.push((name.clone(), reason.clone()));
            } else {
                debug!(zone_name = %name, reason = %reason, "zone name still unresolved");
            }
            self.failing_names.insert(name, reason);
        }
        if let Some((name, reason)) = new_failures.first() {
            warn!(
                names = new_failures.len(),
                example = %name,
                reason = %reason,
                "cannot resolve configured zone names; retrying (zones resolved before stay \
                 watched)"
            );
        }
        complete
    }

    /// Lists the zones for `--zones.discover`; returns false when that failed
    /// (the zones found last time stay).
    async fn discover(&mut self) -> bool {
        let Some(discovery) = &self.discovery else {
            return true;
        };
        match self.client.all_zones(&discovery.query).await {
            Ok(zones) => {
                let listed = zones.len();
                let before = self.discovered.len();
                let (usable, malformed): (Vec<Zone>, Vec<Zone>) = zones
                    .into_iter()
                    .partition(|zone| zone.id.parse::<ZoneId>().is_ok());
                if !malformed.is_empty() && malformed.len() != self.malformed_ids {
                    warn!(
                        malformed = malformed.len(),
                        example = %malformed[0].id,
                        "the zone list holds IDs that are not 32 hexadecimal characters; \
                         skipping those zones"
                    );
                }
                self.malformed_ids = malformed.len();
                self.discovered = usable
                    .into_iter()
                    .filter(|zone| discovery.keeps(&zone.name))
                    .collect();
                let kept = self.discovered.len();
                if !self.published_once || kept != before || self.discovery_failing {
                    info!(listed, kept, "zone discovery finished");
                } else {
                    debug!(listed, kept, "zone discovery finished");
                }
                self.discovery_failing = false;
                true
            }
            Err(err) => {
                if !self.discovery_failing {
                    warn!(
                        kind = %err.kind(),
                        error = %err,
                        kept = self.discovered.len(),
                        "zone discovery failed; keeping the zones found last time"
                    );
                } else {
                    debug!(kind = %err.kind(), error = %err, "zone discovery failed again");
                }
                self.discovery_failing = true;
                false
            }
        }
    }

    /// Hands the current set to the poller: the first round always, later
    /// ones when the set changed.
    fn publish(&mut self) {
        let current = self.current();
        if self.published_once {
            self.sender.send_if_modified(|published| {
                let changed = **published != *current;
                if changed {
                    *published = current;
                }
                changed
            });
        } else {
            // The poller waits for this first round, changed or not.
            self.sender.send_replace(current);
            self.published_once = true;
        }
    }

    /// Every zone configured by name.
    fn configured_names(&self) -> Vec<String> {
        self.configured
            .iter()
            .filter_map(|configured| match &configured.zone {
                ZoneRef::Name(name) => Some(name.clone()),
                ZoneRef::Id(_) => None,
            })
            .collect()
    }

    /// Configured names that have not resolved to a zone (yet), with why.
    pub fn unresolved_names(&self) -> Vec<UnresolvedName> {
        self.configured
            .iter()
            .filter_map(|configured| match &configured.zone {
                ZoneRef::Name(name) if !self.resolved.contains_key(name) => Some(UnresolvedName {
                    name: name.clone(),
                    expect: configured.expect.unwrap_or(self.default_expect),
                    reason: self
                        .failing_names
                        .get(name)
                        .cloned()
                        .unwrap_or_else(|| "not looked up yet".to_owned()),
                }),
                _ => None,
            })
            .collect()
    }

    async fn resolve(&self, name: &str) -> Result<Option<Zone>, ApiError> {
        let query = ZoneQuery {
            name: Some(name.to_owned()),
            ..ZoneQuery::default()
        };
        let (zones, _) = self.client.list_zones(&query, 1).await?;
        Ok(zones
            .into_iter()
            .find(|zone| zone.name.eq_ignore_ascii_case(name)))
    }

    /// The configured zones (those resolved so far) and the discovered ones;
    /// a zone both configured and discovered counts as configured.
    fn current(&self) -> ZoneSet {
        let mut zones: BTreeMap<ZoneId, WatchedZone> = BTreeMap::new();
        for zone in &self.discovered {
            if let Ok(id) = zone.id.parse::<ZoneId>() {
                zones.insert(
                    id.clone(),
                    WatchedZone {
                        id,
                        name: Some(zone.name.clone()),
                        source: Source::Discovered,
                        expect: self.default_expect,
                    },
                );
            }
        }
        for configured in &self.configured {
            let (id, name) = match &configured.zone {
                ZoneRef::Id(id) => {
                    let known = zones.get(id).and_then(|z| z.name.clone());
                    (id.clone(), known)
                }
                ZoneRef::Name(name) => match self
                    .resolved
                    .get(name)
                    .and_then(|zone| zone.id.parse::<ZoneId>().ok())
                {
                    Some(id) => (id, Some(name.clone())),
                    None => continue,
                },
            };
            zones.insert(
                id.clone(),
                WatchedZone {
                    id,
                    name,
                    source: Source::Configured,
                    expect: configured.expect.unwrap_or(self.default_expect),
                },
            );
        }
        Arc::new(
            zones
                .into_values()
                .filter(|zone| self.shard.owns(&zone.id))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zone_refs_are_ids_or_names() {
        let id = "0123456789abcdef0123456789abcdef";
        assert_eq!(id.parse::<ZoneRef>(), Ok(ZoneRef::Id(id.parse().unwrap())));
        assert_eq!(
            "Example.COM".parse::<ZoneRef>(),
            Ok(ZoneRef::Name("example.com".to_owned()))
        );
        assert!("shop.example.co.uk".parse::<ZoneRef>().is_ok());
        // Regression: a final dot was kept, and the name never resolved.
        assert_eq!(
            "example.com.".parse::<ZoneRef>(),
            Ok(ZoneRef::Name("example.com".to_owned()))
        );
        assert_eq!(" example.com".parse::<ZoneRef>(), "example.com".parse());
        assert_eq!(format!(" {id}").parse::<ZoneRef>(), id.parse());
        for bad in [
            "",
            "localhost",
            "not-a-zone",
            "0123456789ABCDEF0123456789ABCDEF",
            "exa mple.com",
            "-bad.example.com",
            "a..b",
            "x_y.example.com",
        ] {
            let err = bad.parse::<ZoneRef>().unwrap_err();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn shards_split_zones_evenly_and_exactly_once() {
        let shards: Vec<Shard> = (0..3).map(|index| Shard { index, count: 3 }).collect();
        let mut per_shard = [0; 3];
        for n in 0u32..3000 {
            // Spread-out IDs, like real ones.
            let id: ZoneId = format!(
                "{:032x}",
                u128::from(n).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)
            )
            .parse()
            .unwrap();
            let owners: Vec<usize> = (0..3).filter(|&s| shards[s].owns(&id)).collect();
            assert_eq!(owners.len(), 1);
            per_shard[owners[0]] += 1;
        }
        assert!(
            per_shard.iter().all(|&count| (900..=1100).contains(&count)),
            "{per_shard:?}"
        );
        // Stable: this ID always belongs to shard 0 of 3.
        let id: ZoneId = "023e105f4ecef8ad9ca31a8372d0c353".parse().unwrap();
        assert!(Shard { index: 0, count: 3 }.owns(&id));
        assert!(!Shard { index: 2, count: 3 }.owns(&id));
        assert!(Shard::ALL.owns(&id));
    }

    #[test]
    fn discovery_filters_names() {
        let discovery = Discovery {
            query: ZoneQuery::default(),
            include: Some(Regex::new(r"\.example\.com$").unwrap()),
            exclude: Some(Regex::new("^staging").unwrap()),
            refresh: Duration::from_secs(600),
        };
        assert!(discovery.keeps("shop.example.com"));
        assert!(!discovery.keeps("staging.example.com"));
        assert!(!discovery.keeps("shop.example.org"));
    }
}
