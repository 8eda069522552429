//! The benchmark harness: the exporter against the simulator at several zone
//! counts, with the API budget lifted. For each count it measures polling
//! flat out (cycle time, CPU seconds per 1,000 polls, polls per second), then
//! the same polling while `wrk` loads `/metrics` (and, as a control, while the
//! same load goes to a static server), then `/metrics` under that load while
//! a fresh exporter polls at a planned pace, compared with the very same
//! bytes served by a bare hyper handler. It records the highest peak resident
//! memory of the exporter processes and the output size per zone, and writes
//! a Markdown table to BENCHMARKS.md, keeping the hand-written sections there.
//!
//! Run: `cargo bench --bench harness` (needs `wrk`: `apt-get install wrk`).
//! Options: `--zones 100,1000,10000`, `--load-seconds 10`, `--out BENCHMARKS.md`.
//! Ratios are the figures to read: absolute numbers drift on shared machines.

use std::convert::Infallible;
use std::net::TcpListener as StdListener;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::Response;
use hyper_util::rt::TokioIo;

const BINARY: &str = env!("CARGO_BIN_EXE_cloudflare-argo-exporter");

/// Short enough that cycles run back to back: the cycle time is then what
/// polling every zone costs, not the interval.
const FLAT_OUT_INTERVAL: &str = "10ms";

const POLL_CONCURRENCY: u32 = 32;

/// Every `wrk` run, on the exporter or the static server, uses these: only
/// the URL differs, so the two always get the same load.
const WRK_THREADS: u32 = 2;
const WRK_CONNECTIONS: u32 = 4;
/// Prometheus asks for gzip, and the exporter gzips for it.
const WRK_HEADER: &str = "Accept-Encoding: gzip";

/// Polling alone lasts at least this many whole cycles, and the load at least
/// this many flat-out cycles, so several whole cycles fall inside it.
const MIN_CYCLES: f64 = 4.0;

/// Fewer whole cycles than this inside the load give no polling figure.
const MIN_LOADED_CYCLES: f64 = 2.0;

/// How often the harness reads the exporter's counters. The exporter shares
/// one encoding between scrapes less than a second apart, so this costs it
/// about one encoding a second.
const SNAPSHOT_EVERY: Duration = Duration::from_millis(250);

/// Cycles that end this soon after `wrk` starts are not counted as loaded:
/// wrk is still connecting.
const LOAD_WARM_UP: f64 = 0.2;

/// The targets at 10,000 zones (issue 6).
const TARGET_ZONES: u32 = 10_000;
const TARGET_P99_MS: f64 = 20.0;
const TARGET_STATIC_RATIO: f64 = 0.5;
const TARGET_RSS_MB: f64 = 40.0;
const TARGET_CPU_PER_1000: f64 = 0.5;
/// Polling under the `/metrics` load keeps at least this share of what it
/// keeps under the same load on the static server: the rest of the drop is
/// wrk taking CPU from the shared cores, not polls waiting for scrapes.
const TARGET_POLL_SHARE: f64 = 0.9;

struct Options {
    zones: Vec<u32>,
    load_seconds: u32,
    out: String,
}

fn options() -> Result<Options, String> {
    let mut options = Options {
        zones: vec![100, 1000, 10_000],
        load_seconds: 10,
        out: "BENCHMARKS.md".to_owned(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--zones" => {
                let list = value()?;
                options.zones = list
                    .split(',')
                    .map(|n| n.trim().parse().ok().filter(|&n: &u32| n > 0))
                    .collect::<Option<_>>()
                    .ok_or_else(|| format!("--zones {list}: expected counts such as 100,1000"))?;
            }
            "--load-seconds" => {
                let seconds = value()?;
                options.load_seconds = seconds
                    .parse()
                    .ok()
                    .filter(|&s: &u32| s > 0)
                    .ok_or_else(|| format!("--load-seconds {seconds}: expected whole seconds"))?;
            }
            "--out" => options.out = value()?,
            // cargo bench passes --bench; anything else is ignored.
            _ => {}
        }
    }
    Ok(options)
}

/// Kills the child when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// What one zone count measured.
struct Row {
    zones: u32,
    load_seconds: u32,
    cycle_seconds: f64,
    cpu_per_1000_polls: f64,
    /// Flat out, over whole cycles: alone (before and after the loads, and
    /// both taken as one), under the `/metrics` load, and under the same load
    /// on the static server.
    polls_per_second: f64,
    polls_per_second_before: f64,
    polls_per_second_after: f64,
    polls_per_second_metrics_load: f64,
    polls_per_second_static_load: f64,
    metrics_bytes: usize,
    gzip_bytes: usize,
    /// `/metrics` while a fresh exporter polls at a planned pace.
    exporter: WrkResult,
    /// `/metrics` while the exporter polls flat out.
    exporter_flat_out: WrkResult,
    /// The same bytes from a bare handler, with no exporter running.
    static_server: WrkResult,
    peak_rss_mib: f64,
}

impl Row {
    fn metrics_load_ratio(&self) -> f64 {
        self.polls_per_second_metrics_load / self.polls_per_second
    }

    fn static_load_ratio(&self) -> f64 {
        self.polls_per_second_static_load / self.polls_per_second
    }

    fn static_ratio(&self) -> f64 {
        self.exporter.rps / self.static_server.rps
    }
}

/// The exporter's counters as one encoding of `/metrics` saw them, and its
/// CPU time when that encoding was fetched. Scrapes share an encoding for up
/// to a second, so the counters may be older than `at`: rates of polling are
/// taken between cycle ends (`last_cycle_end`), never between fetches.
struct Snapshot {
    at: Instant,
    cpu_seconds: f64,
    cycles: f64,
    cycle_seconds_sum: f64,
    /// Unix time the last counted cycle finished.
    last_cycle_end: f64,
    api_errors: f64,
}

/// The exporter's metrics gzipped, as Prometheus fetches them (a plain
/// scrape would make the exporter build the whole text in memory).
async fn fetch_gzipped(client: &reqwest::Client, url: &str) -> Result<Bytes, String> {
    let response = client
        .get(url)
        .header("accept-encoding", "gzip")
        .send()
        .await
        .map_err(|err| format!("{url}: {err}"))?;
    if !response.status().is_success() {
        return Err(format!("{url} answered {}", response.status()));
    }
    response
        .bytes()
        .await
        .map_err(|err| format!("{url}: {err}"))
}

fn gunzip(gzipped: &[u8]) -> Result<String, String> {
    let mut text = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(gzipped), &mut text)
        .map_err(|err| format!("metrics are not gzipped text: {err}"))?;
    Ok(text)
}

async fn snapshot(client: &reqwest::Client, url: &str, pid: u32) -> Result<Snapshot, String> {
    let text = gunzip(&fetch_gzipped(client, url).await?)?;
    let at = Instant::now();
    let cpu_seconds = cpu_seconds(pid)?;
    let value = |name: &str| -> Result<f64, String> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .ok_or_else(|| format!("no {name} in the exporter's metrics"))
    };
    // One series per endpoint and kind, none until an error happens.
    let api_errors = text
        .lines()
        .filter(|l| l.starts_with("argo_api_errors_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    Ok(Snapshot {
        at,
        cpu_seconds,
        cycles: value("argo_poll_cycles_total")?,
        cycle_seconds_sum: value("argo_poll_cycle_duration_seconds_sum")?,
        last_cycle_end: value("argo_last_poll_cycle_timestamp_seconds")?,
        api_errors,
    })
}

/// Polling between two snapshots, over the whole cycles that ended between
/// them. Each cycle polls every zone once.
#[derive(Clone, Copy)]
struct Polling {
    zones: f64,
    cycles: f64,
    /// The cycles' own durations, summed.
    cycle_seconds: f64,
    /// From the first cycle's end to the last's.
    seconds: f64,
    /// CPU time used, and the time between the two fetches it was read at.
    cpu_seconds: f64,
    cpu_over: f64,
}

impl Polling {
    fn between(zones: u32, from: &Snapshot, to: &Snapshot) -> Self {
        Self {
            zones: f64::from(zones),
            cycles: to.cycles - from.cycles,
            cycle_seconds: to.cycle_seconds_sum - from.cycle_seconds_sum,
            seconds: to.last_cycle_end - from.last_cycle_end,
            cpu_seconds: to.cpu_seconds - from.cpu_seconds,
            cpu_over: (to.at - from.at).as_secs_f64(),
        }
    }

    /// Two stretches of the same polling taken as one.
    fn and(self, other: Self) -> Self {
        Self {
            zones: self.zones,
            cycles: self.cycles + other.cycles,
            cycle_seconds: self.cycle_seconds + other.cycle_seconds,
            seconds: self.seconds + other.seconds,
            cpu_seconds: self.cpu_seconds + other.cpu_seconds,
            cpu_over: self.cpu_over + other.cpu_over,
        }
    }

    fn mean_cycle_seconds(&self) -> f64 {
        self.cycle_seconds / self.cycles
    }

    fn polls_per_second(&self) -> f64 {
        self.zones * self.cycles / self.seconds
    }

    /// CPU used per second over the same stretch of steady polling, per
    /// 1,000 polls a second.
    fn cpu_per_1000_polls(&self) -> f64 {
        1000.0 * (self.cpu_seconds / self.cpu_over) / self.polls_per_second()
    }
}

/// Snapshots until one is past `cycles` cycles.
async fn after_cycle(
    client: &reqwest::Client,
    url: &str,
    pid: u32,
    cycles: f64,
) -> Result<Snapshot, String> {
    loop {
        let now = snapshot(client, url, pid).await?;
        if now.cycles > cycles {
            return Ok(now);
        }
        tokio::time::sleep(SNAPSHOT_EVERY).await;
    }
}

/// Polling with nothing else loading the exporter: at least `seconds` and
/// `MIN_CYCLES` whole cycles, from the first cycle end seen on.
async fn polling_alone(
    client: &reqwest::Client,
    url: &str,
    pid: u32,
    zones: u32,
    seconds: u32,
) -> Result<Polling, String> {
    let from = snapshot(client, url, pid).await?;
    loop {
        tokio::time::sleep(SNAPSHOT_EVERY).await;
        let to = snapshot(client, url, pid).await?;
        if to.cycles - from.cycles >= MIN_CYCLES
            && to.last_cycle_end - from.last_cycle_end >= f64::from(seconds)
        {
            warn_on_errors(&from, &to, "polling alone");
            return Ok(Polling::between(zones, &from, &to));
        }
    }
}

/// Runs `wrk` on `load_url` for `seconds` while snapshotting the exporter,
/// and measures polling over the whole cycles that started after wrk did
/// and ended before it stopped.
async fn polling_under_load(
    client: &reqwest::Client,
    url: &str,
    pid: u32,
    zones: u32,
    load_url: &str,
    seconds: u32,
) -> Result<(Polling, WrkResult), String> {
    let load_start = unix_now();
    let load = tokio::task::spawn_blocking({
        let load_url = load_url.to_owned();
        move || wrk(&load_url, seconds)
    });
    let mut snapshots = Vec::new();
    while !load.is_finished() {
        let now = snapshot(client, url, pid).await?;
        if !load.is_finished() {
            snapshots.push(now);
        }
        tokio::time::sleep(SNAPSHOT_EVERY).await;
    }
    let result = load.await.map_err(|err| format!("wrk: {err}"))??;

    let load_end = load_start + f64::from(seconds);
    let inside = |s: &&Snapshot| {
        s.last_cycle_end >= load_start + LOAD_WARM_UP && s.last_cycle_end <= load_end
    };
    let from = snapshots.iter().find(inside);
    let to = snapshots.iter().rev().find(inside);
    match (from, to) {
        (Some(from), Some(to)) if to.cycles - from.cycles >= MIN_LOADED_CYCLES => {
            warn_on_errors(from, to, &format!("polling under load on {load_url}"));
            Ok((Polling::between(zones, from, to), result))
        }
        (Some(from), Some(to)) => Err(format!(
            "only {} whole poll cycles fell inside the {seconds} s load on {load_url} \
             (at least {MIN_LOADED_CYCLES} are needed): raise --load-seconds",
            to.cycles - from.cycles
        )),
        _ => Err(format!(
            "no poll cycle ended inside the {seconds} s load on {load_url}: raise --load-seconds"
        )),
    }
}

fn warn_on_errors(from: &Snapshot, to: &Snapshot, during: &str) {
    let errors = to.api_errors - from.api_errors;
    if errors > 0.0 {
        eprintln!("  warning: {errors} API errors during {during}; polls/s include them");
    }
}

/// User plus system CPU time of a process, from /proc.
fn cpu_seconds(pid: u32) -> Result<f64, String> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).map_err(|err| format!("{path}: {err}"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| -> Result<f64, String> {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .ok_or_else(|| format!("{path}: no CPU time in {stat:?}"))
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after ')'.
    Ok((ticks(11)? + ticks(12)?) / clock_ticks_per_second())
}

fn clock_ticks_per_second() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// The process's peak resident memory so far (VmHWM), read before it stops.
fn peak_rss_mib(pid: u32) -> Result<f64, String> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).map_err(|err| format!("{path}: {err}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kib| kib / 1024.0)
        .ok_or_else(|| format!("{path}: no VmHWM"))
}

/// Requests per second and latency percentiles (ms) from `wrk --latency`.
#[derive(Clone, Copy)]
struct WrkResult {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// Loads `url` for `seconds` with the one wrk setup every run shares. Output
/// that cannot be read, or that counts failed requests, is an error carrying
/// wrk's whole output: a benchmark must not record a figure it did not see.
fn wrk(url: &str, seconds: u32) -> Result<WrkResult, String> {
    let output = Command::new("wrk")
        .arg(format!("-t{WRK_THREADS}"))
        .arg(format!("-c{WRK_CONNECTIONS}"))
        .arg(format!("-d{seconds}s"))
        .args(["--latency", "-H", WRK_HEADER, url])
        .output()
        .map_err(|err| format!("cannot run wrk (apt-get install wrk): {err}"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    let fail = |why: &str| {
        format!(
            "wrk on {url}: {why}; its output:\n{text}{}",
            String::from_utf8_lossy(&output.stderr)
        )
    };
    if !output.status.success() {
        return Err(fail(&format!("exited with {}", output.status)));
    }
    for bad in ["Non-2xx or 3xx responses:", "Socket errors:"] {
        if text.lines().any(|l| l.trim_start().starts_with(bad)) {
            return Err(fail("some requests failed"));
        }
    }
    let field = |prefix: &str| -> Result<&str, String> {
        text.lines()
            .find_map(|l| l.trim_start().strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().next())
            .ok_or_else(|| fail(&format!("no {prefix:?} line")))
    };
    let millis = |prefix: &str| -> Result<f64, String> {
        let raw = field(prefix)?;
        // wrk prints durations in us, ms, s, m or h.
        let units = [
            ("us", 0.001),
            ("ms", 1.0),
            ("s", 1e3),
            ("m", 6e4),
            ("h", 3.6e6),
        ];
        let (number, scale) = units
            .iter()
            .find_map(|&(unit, scale)| Some((raw.strip_suffix(unit)?, scale)))
            .ok_or_else(|| fail(&format!("{prefix} {raw:?} has no unit")))?;
        let number: f64 = number
            .parse()
            .map_err(|_| fail(&format!("{prefix} {raw:?} is not a duration")))?;
        Ok(number * scale)
    };
    let rps = field("Requests/sec:")?;
    Ok(WrkResult {
        rps: rps
            .parse()
            .map_err(|_| fail(&format!("Requests/sec {rps:?} is not a number")))?,
        p50_ms: millis("50%")?,
        p99_ms: millis("99%")?,
    })
}

/// The exporter discovering the simulator's zones, budget lifted.
fn start_exporter(simulator_port: u16, interval: &str) -> (Running, u16) {
    let port = free_port();
    let child = Command::new(BINARY)
        .args([
            "--zones.discover",
            "--zones.status",
            "any",
            "--log.level",
            "error",
        ])
        .arg("--cloudflare.api-url")
        .arg(format!("http://127.0.0.1:{simulator_port}/client/v4"))
        .args([
            "--cloudflare.rate-limit",
            "1000000/1s",
            "--poll.interval",
            interval,
        ])
        .args(["--poll.concurrency", &POLL_CONCURRENCY.to_string()])
        .arg("--web.listen-address")
        .arg(format!("127.0.0.1:{port}"))
        .env("CLOUDFLARE_API_TOKEN", "benchmark")
        .stderr(Stdio::null())
        .spawn()
        .expect("exporter starts");
    (Running(child), port)
}

/// Serves `body` (gzipped text) for every request on a loopback port, as a
/// floor to compare with.
async fn static_server(body: Bytes) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port for the static server");
    let address = listener.local_addr().expect("a bound listener's address");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_| {
                    let body = body.clone();
                    async move {
                        let mut response = Response::new(Full::new(body));
                        response.headers_mut().insert(
                            hyper::header::CONTENT_ENCODING,
                            hyper::header::HeaderValue::from_static("gzip"),
                        );
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    format!("http://{address}/metrics")
}

async fn wait_ready(client: &reqwest::Client, url: &str, patience: Duration) -> Result<(), String> {
    let start = Instant::now();
    while client
        .get(url)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .ok()
        != Some(200)
    {
        if start.elapsed() > patience {
            return Err(format!("{url} not ready after {patience:?}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// A started exporter and the URLs the harness uses.
struct Exporter {
    process: Running,
    pid: u32,
    metrics_url: String,
}

async fn exporter(
    client: &reqwest::Client,
    simulator_port: u16,
    interval: &str,
) -> Result<Exporter, String> {
    let (process, port) = start_exporter(simulator_port, interval);
    let base = format!("http://127.0.0.1:{port}");
    wait_ready(client, &format!("{base}/readyz"), Duration::from_secs(600)).await?;
    Ok(Exporter {
        pid: process.0.id(),
        process,
        metrics_url: format!("{base}/metrics"),
    })
}

impl Exporter {
    /// Stops the exporter and gives its peak resident memory.
    fn stop(self) -> Result<f64, String> {
        let peak = peak_rss_mib(self.pid);
        drop(self.process);
        peak
    }
}

async fn measure(zones: u32, load_seconds: u32) -> Result<Row, String> {
    let client = reqwest::Client::new();
    let simulator_port = free_port();
    let _simulator = Running(
        Command::new(BINARY)
            .args([
                "simulate",
                "--zones",
                &zones.to_string(),
                "--log.level",
                "error",
            ])
            .args([
                "--web.listen-address",
                &format!("127.0.0.1:{simulator_port}"),
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("simulator starts"),
    );

    // Flat out, cycles back to back: alone, then under the /metrics load,
    // then under the same load on the static server (what wrk's share of the
    // cores costs polling, with no scrape of the exporter at all), then
    // alone again, so drift over the run shows.
    let flat = exporter(&client, simulator_port, FLAT_OUT_INTERVAL).await?;
    let (url, pid) = (flat.metrics_url.as_str(), flat.pid);
    let before = polling_alone(&client, url, pid, zones, load_seconds).await?;
    let wall_cycle = f64::from(zones) / before.polls_per_second();
    // Every load lasts this long, on the exporter or the static server.
    let load_for = load_seconds.max((MIN_CYCLES * wall_cycle).ceil() as u32);
    eprintln!(
        "  flat out alone: {:.0} cycles, {:.0} polls/s; each load lasts {load_for} s",
        before.cycles,
        before.polls_per_second()
    );
    let gzipped = fetch_gzipped(&client, url).await?;
    let text = gunzip(&gzipped)?;
    let static_url = static_server(gzipped.clone()).await;
    let (metrics_loaded, exporter_flat_out) =
        polling_under_load(&client, url, pid, zones, url, load_for).await?;
    let (static_loaded, _) =
        polling_under_load(&client, url, pid, zones, &static_url, load_for).await?;
    let after = polling_alone(&client, url, pid, zones, load_seconds).await?;
    let alone = before.and(after);
    let mut peak_rss = flat.stop()?;

    // Scrapes while a fresh exporter polls at a planned pace. Its first
    // cycle polls every zone at once and the next starts one interval after
    // the first did, so the load waits for the second cycle to end.
    let paced = exporter(&client, simulator_port, &paced_interval(zones)).await?;
    after_cycle(&client, &paced.metrics_url, paced.pid, 1.0).await?;
    let exporter_paced = tokio::task::spawn_blocking({
        let url = paced.metrics_url.clone();
        move || wrk(&url, load_for)
    })
    .await
    .map_err(|err| format!("wrk: {err}"))??;
    peak_rss = peak_rss.max(paced.stop()?);

    // The floor: the same bytes, the same load, no exporter running.
    let static_alone = tokio::task::spawn_blocking(move || wrk(&static_url, load_for))
        .await
        .map_err(|err| format!("wrk: {err}"))??;

    Ok(Row {
        zones,
        load_seconds: load_for,
        cycle_seconds: alone.mean_cycle_seconds(),
        cpu_per_1000_polls: alone.cpu_per_1000_polls(),
        polls_per_second: alone.polls_per_second(),
        polls_per_second_before: before.polls_per_second(),
        polls_per_second_after: after.polls_per_second(),
        polls_per_second_metrics_load: metrics_loaded.polls_per_second(),
        polls_per_second_static_load: static_loaded.polls_per_second(),
        metrics_bytes: text.len(),
        gzip_bytes: gzipped.len(),
        exporter: exporter_paced,
        exporter_flat_out,
        static_server: static_alone,
        peak_rss_mib: peak_rss,
    })
}

/// One poll planned per millisecond from 1,000 zones up; 100 zones once a
/// second.
fn paced_interval(zones: u32) -> String {
    format!("{}ms", zones.max(1000))
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    format!("{cores} cores, {memory_gib:.0} GiB memory")
}

fn header(rows: &[Row], options: &Options) -> String {
    let date = chrono::Utc::now().format("%Y-%m-%d");
    let zones = rows
        .iter()
        .map(|r| r.zones.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let load = options.load_seconds;
    let every = SNAPSHOT_EVERY.as_millis();
    let wrk = format!("wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS} --latency -H '{WRK_HEADER}'");
    format!(
        "# Benchmarks\n\n\
         Measured {date} on {machine} by \
         `cargo bench --bench harness -- --zones {zones} --load-seconds {load}`.\n\n\
         For each zone count the harness starts the simulator (`simulate`) and the exporter on \
         loopback, the exporter discovering the zones with the API budget lifted \
         (`--cloudflare.rate-limit 1000000/1s`) and `--poll.concurrency {POLL_CONCURRENCY}`. \
         Every load is `{wrk}` (Prometheus asks for gzip) for the same time: {load} s, or \
         {MIN_CYCLES} flat-out cycles if longer (the \"load s\" column).\n\n\
         1. Flat out (`--poll.interval {FLAT_OUT_INTERVAL}`, so each cycle starts when the last \
         ends), polling alone for at least {load} s and {MIN_CYCLES} whole cycles: the mean \
         cycle time (`argo_poll_cycle_duration_seconds`), polls/s (zones × cycles finished, \
         divided by the time between the first and last cycle's end, \
         `argo_last_poll_cycle_timestamp_seconds`), and the exporter's user + system CPU \
         seconds (from /proc) per 1,000 polls. Polling alone is measured once before steps 2 \
         and 3 and once after them (step 4); the figures are the two stretches taken as one, \
         and the table gives polls/s of each too, so drift over the run shows.\n\
         2. The same process under the load on its `/metrics`: polls/s over the whole cycles \
         that started after wrk did and ended before it stopped, and its ratio to polling \
         alone. `/metrics` req/s and p99 while polling flat out come from this load.\n\
         3. The same process with the load on the static server instead: the drop in polls/s \
         that wrk's share of the {cores} cores causes with no scrape of the exporter at all, \
         to read step 2 against.\n\
         4. The same process polling alone again, as in step 1.\n\
         5. A fresh exporter polling at a planned pace, `--poll.interval` of max(zones, 1000) \
         ms (its polls spread over 90% of each cycle: one planned per millisecond from 1,000 \
         zones up, 100 a second at 100 zones), under the load on `/metrics` once its second \
         cycle has ended: `/metrics` req/s, p50 and p99.\n\
         6. The very same gzipped bytes served by a bare hyper handler in the harness, with no \
         exporter running, under the load: static req/s and p99. Throughput vs static is step \
         5's req/s divided by this.\n\n\
         Peak RSS is the highest `VmHWM` of the two exporter processes, read before each stops. \
         Bytes per zone are `/metrics` text (and gzipped) divided by zones. To read its \
         counters the harness scrapes `/metrics` gzipped every {every} ms throughout; the \
         exporter shares one encoding between scrapes less than a second apart, so that is \
         about one encoding a second, and it is in the CPU figure. Ratios are the figures that \
         travel between machines.\n\n",
        machine = machine(),
        cores = std::thread::available_parallelism().map_or(0, |n| n.get()),
    )
}

fn table(rows: &[Row], options: &Options) -> String {
    let mut text = header(rows, options);
    text.push_str(
        "| zones | poll cycle (s) | CPU s / 1000 polls | polls/s flat out: alone (before, after) \
         | under `/metrics` load (ratio) | under static load (ratio) \
         | /metrics bytes per zone (gzip) | /metrics req/s | p50 ms | p99 ms | static req/s \
         | throughput vs static | /metrics req/s, p99 ms while polling flat out \
         | peak RSS MiB | load s |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        text.push_str(&format!(
            "| {} | {:.3} | {:.3} | {:.0} ({:.0}, {:.0}) | {:.0} ({:.2}) | {:.0} ({:.2}) \
             | {:.0} ({:.0}) | {:.0} \
             | {:.2} | {:.2} | {:.0} | {:.2} | {:.0}, {:.2} | {:.1} | {} |\n",
            r.zones,
            r.cycle_seconds,
            r.cpu_per_1000_polls,
            r.polls_per_second,
            r.polls_per_second_before,
            r.polls_per_second_after,
            r.polls_per_second_metrics_load,
            r.metrics_load_ratio(),
            r.polls_per_second_static_load,
            r.static_load_ratio(),
            r.metrics_bytes as f64 / f64::from(r.zones),
            r.gzip_bytes as f64 / f64::from(r.zones),
            r.exporter.rps,
            r.exporter.p50_ms,
            r.exporter.p99_ms,
            r.static_server.rps,
            r.static_ratio(),
            r.exporter_flat_out.rps,
            r.exporter_flat_out.p99_ms,
            r.peak_rss_mib,
            r.load_seconds,
        ));
    }
    if let [first, .., last] = rows {
        let growth = |a: f64, b: f64| b / a;
        text.push_str(&format!(
            "\nFrom {} to {} zones ({:.0}×): cycle time ×{:.1}, CPU per poll ×{:.2}, output per \
             zone ×{:.2}, peak RSS ×{:.1}.\n",
            first.zones,
            last.zones,
            f64::from(last.zones) / f64::from(first.zones),
            growth(first.cycle_seconds, last.cycle_seconds),
            growth(first.cpu_per_1000_polls, last.cpu_per_1000_polls),
            growth(
                first.metrics_bytes as f64 / f64::from(first.zones),
                last.metrics_bytes as f64 / f64::from(last.zones)
            ),
            growth(first.peak_rss_mib, last.peak_rss_mib),
        ));
    }
    text.push_str("\nStatic handler p99 (ms), for reference:\n");
    for r in rows {
        text.push_str(&format!(
            "- {} zones: {:.2}\n",
            r.zones, r.static_server.p99_ms
        ));
    }
    if let Some(last) = rows.iter().max_by_key(|r| r.zones) {
        text.push_str(&targets(last));
    }
    text
}

/// The targets, judged on the largest zone count measured.
fn targets(r: &Row) -> String {
    let met = |ok: bool| if ok { "yes" } else { "no" };
    let rss_mb = r.peak_rss_mib * 1.048_576;
    let poll_share = r.metrics_load_ratio() / r.static_load_ratio();
    let mut text = format!("\n## Against the targets at {} zones\n\n", r.zones);
    if r.zones != TARGET_ZONES {
        text.push_str(&format!(
            "The targets are set for {TARGET_ZONES} zones; this run's largest count was {}.\n\n",
            r.zones
        ));
    }
    text.push_str("| target | measured | met |\n|---|---|---|\n");
    text.push_str(&format!(
        "| `/metrics` p99 under {TARGET_P99_MS} ms | {:.1} ms ({:.1} ms while polling flat out) \
         | {} |\n",
        r.exporter.p99_ms,
        r.exporter_flat_out.p99_ms,
        met(r.exporter.p99_ms < TARGET_P99_MS),
    ));
    text.push_str(&format!(
        "| throughput at least {TARGET_STATIC_RATIO}× the static-bytes server | {:.2}× | {} |\n",
        r.static_ratio(),
        met(r.static_ratio() >= TARGET_STATIC_RATIO),
    ));
    text.push_str(&format!(
        "| peak RSS under {TARGET_RSS_MB} MB | {:.1} MiB ({rss_mb:.1} MB) | {} |\n",
        r.peak_rss_mib,
        met(rss_mb < TARGET_RSS_MB),
    ));
    text.push_str(&format!(
        "| at most {TARGET_CPU_PER_1000} CPU-seconds per 1,000 polls | {:.2} | {} |\n",
        r.cpu_per_1000_polls,
        met(r.cpu_per_1000_polls <= TARGET_CPU_PER_1000),
    ));
    text.push_str(&format!(
        "| a poll never waits for a scrape | flat-out polls/s under the `/metrics` load: {:.2}× \
         of alone; under the same load on the static server: {:.2}× (so {poll_share:.2}× of \
         what wrk's share of the cores leaves; met from {TARGET_POLL_SHARE}×) | {} |\n",
        r.metrics_load_ratio(),
        r.static_load_ratio(),
        met(poll_share >= TARGET_POLL_SHARE),
    ));
    text
}

/// What `out` holds that the harness does not write: everything from its
/// first second-level heading other than the targets, which are regenerated.
fn hand_written(out: &str) -> String {
    let existing = std::fs::read_to_string(out).unwrap_or_default();
    let mut offset = 0;
    for line in existing.split_inclusive('\n') {
        if line.starts_with("## ") && !line.starts_with("## Against the targets") {
            return existing[offset..].to_owned();
        }
        offset += line.len();
    }
    String::new()
}

fn main() {
    // `cargo test --all-targets` runs benchmarks too, without `--bench`: a
    // measurement there would take minutes, need wrk, and overwrite the results.
    if !std::env::args().any(|arg| arg == "--bench") {
        println!("benches/harness.rs is a benchmark: run `cargo bench --bench harness`");
        return;
    }
    let options = options().unwrap_or_else(|err| {
        eprintln!("benchmark harness: {err}");
        std::process::exit(2);
    });
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let mut rows = Vec::new();
    for &zones in &options.zones {
        eprintln!("measuring {zones} zones…");
        let row = runtime
            .block_on(measure(zones, options.load_seconds))
            .unwrap_or_else(|err| {
                eprintln!("benchmark failed at {zones} zones: {err}");
                std::process::exit(1);
            });
        eprintln!(
            "  cycle {:.3} s, {:.3} CPU s/1000 polls, flat-out polls/s alone {:.0} then {:.0}, \
             ×{:.2} under /metrics load (×{:.2} under static load), /metrics {:.0} req/s p99 \
             {:.2} ms (static {:.0} req/s), peak RSS {:.1} MiB",
            row.cycle_seconds,
            row.cpu_per_1000_polls,
            row.polls_per_second_before,
            row.polls_per_second_after,
            row.metrics_load_ratio(),
            row.static_load_ratio(),
            row.exporter.rps,
            row.exporter.p99_ms,
            row.static_server.rps,
            row.peak_rss_mib
        );
        rows.push(row);
    }
    let generated = table(&rows, &options);
    let kept = hand_written(&options.out);
    let text = if kept.is_empty() {
        generated.clone()
    } else {
        format!("{generated}\n{kept}")
    };
    std::fs::write(&options.out, text).expect("write the results");
    println!("{generated}");
    if !kept.is_empty() {
        println!(
            "(kept the hand-written sections of {} after this)",
            options.out
        );
    }
}
