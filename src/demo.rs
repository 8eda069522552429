//! `cloudflare-argo-exporter demo`: the exporter against a local simulator
//! holding a few sample zones, so the whole product can be tried without a
//! Cloudflare account or network.

use std::future::Future;
use std::time::Duration;

use secrecy::SecretString;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::budget::RateLimit;
use crate::cloudflare::{ArgoValue, RetryPolicy, ZoneQuery};
use crate::config::{AlertingConfig, ApiConfig, Config, Credentials, PollConfig, WebConfig};
use crate::simulator::{SimZone, Simulator, BASE_PATH};
use crate::zones::{ConfiguredZone, Discovery, Expectation, Shard, ZoneRef, ZoneSources};

/// The token the demo's simulator accepts; it opens nothing real.
const DEMO_TOKEN: &str = "demo-token-not-a-secret";

/// Days until the demo token "expires".
const DEMO_TOKEN_DAYS_LEFT: i64 = 90;

/// The demo zone whose Argo setting is switched on and off by itself.
pub const FLAPPING_ZONE_ID: &str = "5c1e0a7f3b2d4e6f8a9b0c1d2e3f4a5b";

/// How often the flapping zone changes, so a user watching sees a change.
const FLIP_EVERY: Duration = Duration::from_secs(120);

/// How often the demo lists its zones again.
const ZONE_REFRESH: Duration = Duration::from_secs(60);

/// The sample zones: Argo on, off, on but not editable, and one that flaps.
pub fn zones() -> Vec<SimZone> {
    let mut locked = SimZone::new(
        "9f3c2b1a0e4d5c6b7a8f9e0d1c2b3a4f",
        "legacy.example.net",
        ArgoValue::On,
    );
    locked.editable = false;
    vec![
        SimZone::new(
            "2b7e151628aed2a6abf7158809cf4f3c",
            "shop.example.com",
            ArgoValue::On,
        ),
        SimZone::new(
            "3ad77bb40d7a3660a89ecaf32466ef97",
            "api.example.com",
            ArgoValue::On,
        ),
        SimZone::new(
            "6bc1bee22e409f96e93d7e117393172a",
            "blog.example.com",
            ArgoValue::Off,
        ),
        locked,
        SimZone::new(FLAPPING_ZONE_ID, "flappy.example.org", ArgoValue::On),
    ]
}

/// Starts the simulator on a free loopback port, then runs the exporter
/// against it on `listener` until `shutdown` completes.
pub async fn run(
    poll: PollConfig,
    web: WebConfig,
    alerting: AlertingConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), crate::Error> {
    let simulator = Simulator::new(zones()).require_token(DEMO_TOKEN);
    // A token that expires, so the expiry metric (and its dashboard panel) shows.
    simulator.set_token_expiry(chrono::Utc::now() + chrono::TimeDelta::days(DEMO_TOKEN_DAYS_LEFT));
    let api_listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(crate::Error::Simulator)?;
    let api_address = api_listener.local_addr().map_err(crate::Error::Simulator)?;
    let stop = CancellationToken::new();
    tokio::spawn(simulator.clone().serve(api_listener, stop.clone()));
    tokio::spawn(flap(simulator.clone(), stop.clone()));

    let base_url = format!("http://{api_address}{BASE_PATH}/");
    // The demo finds its zones the way --zones.discover does; Argo is
    // expected on everywhere but on the blog.
    let config = Config {
        zones: ZoneSources {
            configured: vec![ConfiguredZone {
                zone: ZoneRef::Name("blog.example.com".to_owned()),
                expect: Some(Expectation::Off),
            }],
            discovery: Some(Discovery {
                query: ZoneQuery {
                    status: Some("active".to_owned()),
                    ..ZoneQuery::default()
                },
                include: None,
                exclude: None,
                refresh: ZONE_REFRESH,
            }),
            refresh: ZONE_REFRESH,
            default_expect: Expectation::On,
            shard: Shard::ALL,
        },
        api: ApiConfig {
            base_url: base_url
                .parse()
                .map_err(|_| crate::Error::Internal("demo URL"))?,
            credentials: Credentials::Token(SecretString::from(DEMO_TOKEN)),
            timeout: Duration::from_secs(5),
            rate_limit: RateLimit::default(),
            retry: RetryPolicy::default(),
        },
        poll,
        web,
        alerting,
    };
    let zone_count = simulator.zone_ids().len();

    let local = listener.local_addr().map_err(crate::Error::Simulator)?;
    let host = if local.ip().is_unspecified() {
        "localhost".to_owned()
    } else {
        local.ip().to_string()
    };
    let shown = if local.is_ipv6() && host != "localhost" {
        format!("[{host}]:{}", local.port())
    } else {
        format!("{host}:{}", local.port())
    };
    println!(
        "Demo running: {} sample zones served by a simulated Cloudflare API at {base_url}\n\
         Open http://{shown}{} for the metrics (flappy.example.org flips every {}). \
         Press Ctrl-C to stop.",
        zone_count,
        config.web.telemetry_path,
        humantime::format_duration(FLIP_EVERY),
    );
    info!(api_url = %base_url, "demo simulator started");

    let result = crate::run(config, listener, shutdown).await;
    stop.cancel();
    result
}

async fn flap(simulator: Simulator, stop: CancellationToken) {
    let mut ticker = tokio::time::interval(FLIP_EVERY);
    ticker.tick().await;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let next = match simulator.zone(FLAPPING_ZONE_ID).map(|z| z.value) {
            Some(ArgoValue::On) => ArgoValue::Off,
            _ => ArgoValue::On,
        };
        simulator.set_value(FLAPPING_ZONE_ID, next);
        info!(zone_name = "flappy.example.org", value = %next, "demo zone flipped");
    }
}
