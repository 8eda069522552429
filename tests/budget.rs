//! The API budget, measured where Cloudflare would measure it: at the API.
//! With 2,000 zones and a short interval, no window of the budget's length
//! ever holds more requests than the budget; a 429 stops all traffic for its
//! `Retry-After`.

mod common;

use std::time::Duration;

use cloudflare_argo_exporter::budget::RateLimit;
use cloudflare_argo_exporter::simulator::Simulator;
use cloudflare_argo_exporter::zones::ZoneRef;
use common::*;
use tokio::time::Instant;

/// The most arrivals in any window of `window` (half-open), given sorted times.
fn busiest_window(times: &[Instant], window: Duration) -> usize {
    let mut busiest = 0;
    let mut first = 0;
    for (last, &at) in times.iter().enumerate() {
        while times[first] + window <= at {
            first += 1;
        }
        busiest = busiest.max(last - first + 1);
    }
    busiest
}

#[test]
fn busiest_window_counts_half_open_windows() {
    let start = Instant::now();
    let at = |ms| start + Duration::from_millis(ms);
    let times = [at(0), at(100), at(999), at(1000), at(1001), at(1500)];
    assert_eq!(busiest_window(&times, Duration::from_secs(1)), 4);
}

#[tokio::test]
async fn two_thousand_zones_never_exceed_the_budget() {
    let simulator = Simulator::numbered(2000).record_requests();
    let url = serve_simulator(&simulator).await;
    let mut config = config(&url, &[], Duration::from_secs(1));
    config.zones.configured = (1..=2000u32)
        .map(|n| ZoneRef::Id(zone(&format!("{n:032x}"))).into())
        .collect();
    config.poll.concurrency = std::num::NonZeroUsize::new(32).unwrap();
    let budget = RateLimit {
        count: 100,
        duration: Duration::from_secs(1),
    };
    config.api.rate_limit = budget;
    let exporter = Exporter::start(config).await;

    // Enough requests to span several budget windows.
    eventually("350 requests", || async {
        simulator.request_log().len() >= 350
    })
    .await;
    exporter.stop().await;

    let times: Vec<Instant> = simulator
        .request_log()
        .into_iter()
        .map(|(at, _)| at)
        .collect();
    let busiest = busiest_window(&times, budget.duration);
    assert!(
        busiest <= budget.count as usize,
        "{busiest} requests in one {:?} window; the budget is {}",
        budget.duration,
        budget.count
    );
    // The exporter said it cannot poll 2000 zones a second on this budget.
    let warned = log_lines_with("cannot poll every zone once per --poll.interval");
    assert!(
        warned.iter().any(|l| l.contains("zones=2000")),
        "{warned:#?}"
    );
}

#[tokio::test]
async fn a_429_stops_all_traffic_for_its_retry_after() {
    let simulator = Simulator::numbered(20).record_requests();
    let url = serve_simulator(&simulator).await;
    let ids: Vec<String> = (1..=20u32).map(|n| format!("{n:032x}")).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let exporter = Exporter::start(config(&url, &ids, Duration::from_millis(200))).await;
    exporter
        .scrape_until("a first cycle", |m| {
            m.value("argo_poll_cycles_total", &[]).unwrap_or(0.0) >= 1.0
        })
        .await;

    simulator.rate_limit_next(5);
    eventually("the 429 to be sent", || async {
        simulator.rate_limited_at().is_some()
    })
    .await;
    let limited_at = simulator.rate_limited_at().unwrap();
    eventually("traffic to resume", || async {
        simulator
            .request_log()
            .iter()
            .any(|(at, _)| *at >= limited_at + Duration::from_secs(5))
    })
    .await;
    let m = exporter.scrape().await;
    let limited = m.errors("smart_routing", "rate_limited") + m.errors("zone", "rate_limited");
    assert_eq!(limited, 1.0);
    let waited = m
        .value("argo_rate_limit_wait_seconds_total", &[])
        .unwrap_or(0.0);
    assert!(waited >= 4.0, "waited {waited} s in all");
    // Said once, when the pause began, with how long it lasts.
    let said = log_lines_with("pausing every request");
    assert_eq!(said.len(), 1, "{said:#?}");
    assert!(
        said[0].contains("level=warn") && said[0].contains("pause=5s"),
        "{}",
        said[0]
    );
    exporter.stop().await;

    // Requests already on the wire when the 429 was sent may still arrive
    // just after it; nothing new is sent until Retry-After has passed.
    let quiet_from = limited_at + Duration::from_millis(500);
    let quiet_to = limited_at + Duration::from_secs(5);
    let during: Vec<Duration> = simulator
        .request_log()
        .iter()
        .filter(|(at, _)| *at > quiet_from && *at < quiet_to)
        .map(|(at, _)| *at - limited_at)
        .collect();
    assert!(
        during.is_empty(),
        "requests during the pause, after: {during:?}"
    );
}
