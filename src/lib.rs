//! Cloudflare Argo Smart Routing exporter: polls the Cloudflare API for each
//! zone and serves what it found as Prometheus metrics.

pub mod cli;
pub mod cloudflare;
pub mod config;
pub mod demo;
pub mod logging;
pub mod metrics;
pub mod poller;
pub mod server;
pub mod simulator;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::cloudflare::{Client, ClientError};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::poller::{Poller, Readiness};
use crate::server::AppState;

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
}

/// Runs the exporter: polls Cloudflare in the background and serves metrics
/// on `listener` until `shutdown` completes.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let metrics = Metrics::new()?;
    let client = Client::new(&config.api, metrics.api.clone())?;
    let readiness = Readiness::default();
    let stop = CancellationToken::new();

    info!(
        zones = config.zones.len(),
        api_url = %config.api.base_url,
        interval = %humantime::format_duration(config.poll.interval),
        listen_address = %listener.local_addr().map_or_else(|_| "?".into(), |a| a.to_string()),
        telemetry_path = %config.web.telemetry_path,
        "starting cloudflare-argo-exporter {}",
        env!("CARGO_PKG_VERSION"),
    );

    let poller = Poller::new(client, metrics.clone(), &config.poll, &config.zones);
    let polling = tokio::spawn(poller.run(readiness.clone(), stop.clone()));

    let trigger = stop.clone();
    tokio::spawn(async move {
        shutdown.await;
        trigger.cancel();
    });

    let state = Arc::new(AppState {
        metrics,
        telemetry_path: config.web.telemetry_path,
        readiness,
    });
    server::serve(listener, state, stop.clone()).await;
    stop.cancel();
    // The poller only ends by cancellation; a panic inside it is a bug worth surfacing.
    if let Err(err) = polling.await {
        if err.is_panic() {
            std::panic::resume_unwind(err.into_panic());
        }
    }
    info!("stopped");
    Ok(())
}
