//! Cloudflare Argo Smart Routing exporter: polls the Cloudflare API for each
//! zone and serves what it found as Prometheus metrics.

pub mod alerting;
pub mod budget;
pub mod cli;
pub mod cloudflare;
pub mod commands;
pub mod config;
pub mod config_file;
pub mod demo;
pub mod logging;
pub mod metrics;
pub mod poller;
pub mod server;
pub mod simulator;
pub mod web_config;
pub mod zone_table;
pub mod zones;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::budget::Budget;
use crate::cloudflare::{Client, ClientError, Endpoint, ErrorKind};
use crate::config::{Config, Credentials};
use crate::metrics::Metrics;
use crate::poller::{Actions, Poller, Readiness};
use crate::server::{AppState, EncodedMetrics};
use crate::zones::ZoneTracker;

/// Why the exporter could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot register metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("cannot start the simulator: {0}")]
    Simulator(std::io::Error),
    #[error("internal error: {0} is invalid")]
    Internal(&'static str),
    #[error("the poller stopped unexpectedly: {0}")]
    PollerStopped(String),
}

/// Runs the exporter: polls Cloudflare in the background and serves metrics
/// on `listener` until `shutdown` completes.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let metrics = Metrics::new(config.api.rate_limit)?;
    let budget = Arc::new(Budget::new(config.api.rate_limit));
    let client = Client::new(&config.api, Arc::clone(&budget), metrics.api.clone())?;
    let readiness = Readiness::default();
    let stop = CancellationToken::new();

    info!(
        zones = config.zones.configured.len(),
        discover = config.zones.discovery.is_some(),
        expect = config.zones.default_expect.as_str(),
        alertmanagers = config.alerting.alertmanagers.len(),
        enforce = config.alerting.enforce_grace.is_some(),
        api_url = %config.api.base_url,
        interval = %humantime::format_duration(config.poll.interval),
        rate_limit = %config.api.rate_limit,
        listen_address = %listener.local_addr().map_or_else(|_| "?".into(), |a| a.to_string()),
        telemetry_path = %config.web.telemetry_path,
        "starting cloudflare-argo-exporter {}",
        env!("CARGO_PKG_VERSION"),
    );

    if matches!(config.api.credentials, Credentials::Token(_)) {
        tokio::spawn(check_token(client.clone(), metrics.clone()));
    }

    let (tracker, zone_set) = ZoneTracker::new(client.clone(), &config.zones);
    let wait_for_zones = tracker.needs_api();
    if wait_for_zones {
        tokio::spawn(tracker.run(stop.clone()));
    }
    let actions = Actions::start(&config.alerting, &metrics, &stop).map_err(ClientError::Build)?;
    let poller = Poller::new(
        client,
        metrics.clone(),
        &config.poll,
        budget.limit().period(),
        zone_set,
        actions,
    );
    let polling = tokio::spawn(poller.run(readiness.clone(), wait_for_zones, stop.clone()));

    let trigger = stop.clone();
    tokio::spawn(async move {
        shutdown.await;
        trigger.cancel();
    });

    let state = Arc::new(AppState {
        metrics: EncodedMetrics::new(metrics, config.web.metrics_max_age),
        telemetry_path: config.web.telemetry_path,
        readiness,
        security: config.web.security,
    });
    // The poller only ends when told to; if it ends on its own (a bug), the
    // metrics would freeze while looking healthy, so the exporter stops too.
    let serving = server::serve(listener, state, stop.clone());
    tokio::pin!(serving);
    let mut polling = polling;
    let result = tokio::select! {
        () = &mut serving => {
            stop.cancel();
            polling.await.map_err(|err| Error::PollerStopped(err.to_string()))
        }
        joined = &mut polling => {
            // At shutdown the poller may finish before the server.
            let expected = stop.is_cancelled() && joined.is_ok();
            stop.cancel();
            serving.await;
            if expected {
                Ok(())
            } else {
                let reason =
                    joined.err().map_or_else(|| "it returned".to_owned(), |e| e.to_string());
                error!(reason = %reason, "the poller stopped unexpectedly; shutting down");
                Err(Error::PollerStopped(reason))
            }
        }
    };
    info!("stopped");
    result
}

/// Asks Cloudflare about the API token once at start: logs its status and
/// exports its expiry. A failure here is worth a warning, not a stop.
async fn check_token(client: Client, metrics: Metrics) {
    match client.verify_token().await {
        Ok(token) => {
            let expires = token
                .expires_on
                .as_deref()
                .map(chrono::DateTime::parse_from_rfc3339);
            match expires {
                Some(Ok(expires)) => metrics.set_token_expiry(expires.timestamp() as f64),
                Some(Err(err)) => {
                    metrics
                        .api
                        .observe_error(Endpoint::TokenVerify, ErrorKind::Decode);
                    warn!(
                        expires_on = token.expires_on.as_deref(),
                        error = %err,
                        "the token's expires_on is not an RFC 3339 time; its expiry is not exported"
                    );
                }
                None => {}
            }
            if token.status == "active" {
                info!(status = %token.status, expires_on = token.expires_on.as_deref(), "API token verified");
            } else {
                warn!(status = %token.status, expires_on = token.expires_on.as_deref(), "the API token is not active");
            }
        }
        Err(err) => warn!(
            kind = %err.kind(),
            error = %err,
            "cannot verify the API token; polling anyway"
        ),
    }
}
