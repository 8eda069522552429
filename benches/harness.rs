//! The benchmark harness: the exporter against the simulator at several zone
//! counts, with the API budget lifted. For each count it measures a poll
//! cycle (wall time, CPU seconds per 1,000 polls, requests per second), then
//! loads `/metrics` with `wrk` while polling goes on and compares it with the
//! very same bytes served by a bare hyper handler, records the exporter's
//! peak resident memory and the output size per zone, and writes a Markdown
//! table to BENCHMARKS.md.
//!
//! Run: `cargo bench --bench harness` (needs `wrk`: `apt-get install wrk`).
//! Options: `--zones 100,1000,10000`, `--load-seconds 10`, `--out BENCHMARKS.md`.
//! Ratios are the figures to read: absolute numbers drift on shared machines.

use std::convert::Infallible;
use std::net::TcpListener as StdListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::Response;
use hyper_util::rt::TokioIo;

const BINARY: &str = env!("CARGO_BIN_EXE_cloudflare-argo-exporter");

/// Short enough that cycles run back to back: the cycle time is then what
/// polling every zone costs, not the interval.
const POLL_INTERVAL: &str = "10ms";

struct Options {
    zones: Vec<u32>,
    load_seconds: u32,
    out: String,
}

fn options() -> Options {
    let mut options = Options {
        zones: vec![100, 1000, 10_000],
        load_seconds: 10,
        out: "BENCHMARKS.md".to_owned(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--zones" => {
                options.zones = args
                    .next()
                    .unwrap_or_default()
                    .split(',')
                    .filter_map(|n| n.trim().parse().ok())
                    .collect();
            }
            "--load-seconds" => {
                options.load_seconds = args.next().and_then(|n| n.parse().ok()).unwrap_or(10);
            }
            "--out" => options.out = args.next().unwrap_or(options.out),
            // cargo bench passes --bench; anything else is ignored.
            _ => {}
        }
    }
    options
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

/// What one zone count measured.
struct Row {
    zones: u32,
    cycle_seconds: f64,
    cpu_per_1000_polls: f64,
    polls_per_second: f64,
    /// With polls planned at about 1,000 a second, before and during the scrape load.
    polls_per_second_steady: f64,
    polls_per_second_under_load: f64,
    metrics_bytes: usize,
    gzip_bytes: usize,
    exporter_rps: f64,
    exporter_p50_ms: f64,
    exporter_p99_ms: f64,
    static_rps: f64,
    static_p99_ms: f64,
    peak_rss_mib: f64,
}

/// A snapshot of the exporter's own counters and its CPU time.
struct Sample {
    at: Instant,
    cycles: f64,
    cycle_seconds_sum: f64,
    polls: f64,
    cpu_seconds: f64,
}

/// The exporter's metrics as text, fetched gzipped as Prometheus fetches them
/// (a plain scrape would make the exporter build the whole text in memory).
async fn fetch_text(client: &reqwest::Client, url: &str) -> (String, usize) {
    let gzipped = client
        .get(url)
        .header("accept-encoding", "gzip")
        .send()
        .await
        .expect("exporter answers")
        .bytes()
        .await
        .expect("metrics body");
    let mut text = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&gzipped[..]), &mut text)
        .expect("gzipped metrics");
    (text, gzipped.len())
}

/// The first sample taken after the exporter finishes a cycle past `cycles`.
async fn next_cycle(client: &reqwest::Client, url: &str, pid: u32, cycles: f64) -> Sample {
    loop {
        let now = sample(client, url, pid).await;
        if now.cycles > cycles {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn sample(client: &reqwest::Client, url: &str, pid: u32) -> Sample {
    let (text, _) = fetch_text(client, url).await;
    let sum_of = |prefix: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    Sample {
        at: Instant::now(),
        cycles: sum_of("argo_poll_cycles_total "),
        cycle_seconds_sum: sum_of("argo_poll_cycle_duration_seconds_sum "),
        polls: sum_of("argo_api_requests_total{code=\"200\",endpoint=\"smart_routing\"}"),
        cpu_seconds: cpu_seconds(pid),
    }
}

/// User plus system CPU time of a process, from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after ')'.
    (ticks(11) + ticks(12)) / clock_ticks_per_second()
}

fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

/// Requests per second and latency percentiles (ms) from `wrk --latency`.
struct WrkResult {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn wrk(url: &str, seconds: u32) -> WrkResult {
    let output = Command::new("wrk")
        .args(["-t2", "-c4", &format!("-d{seconds}s"), "--latency"])
        .args(["-H", "Accept-Encoding: gzip", url])
        .output()
        .expect("wrk runs (apt-get install wrk)");
    let text = String::from_utf8_lossy(&output.stdout);
    let value = |line: &str| -> f64 {
        let raw = line.split_whitespace().last().unwrap_or("0");
        let (number, scale) = if let Some(n) = raw.strip_suffix("us") {
            (n, 0.001)
        } else if let Some(n) = raw.strip_suffix("ms") {
            (n, 1.0)
        } else if let Some(n) = raw.strip_suffix('s') {
            (n, 1000.0)
        } else {
            (raw, 1.0)
        };
        number.parse::<f64>().unwrap_or(0.0) * scale
    };
    let find = |prefix: &str| text.lines().find(|l| l.trim_start().starts_with(prefix));
    WrkResult {
        rps: find("Requests/sec:").map_or(0.0, value),
        p50_ms: find("50%").map_or(0.0, value),
        p99_ms: find("99%").map_or(0.0, value),
    }
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
        .args(["--poll.concurrency", "32"])
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
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
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

async fn wait_ready(client: &reqwest::Client, url: &str, patience: Duration) {
    let start = Instant::now();
    while client
        .get(url)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .ok()
        != Some(200)
    {
        assert!(start.elapsed() < patience, "{url} never became ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn measure(zones: u32, load_seconds: u32) -> Row {
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
    let (exporter, exporter_port) = start_exporter(simulator_port, POLL_INTERVAL);
    let pid = exporter.0.id();
    let base = format!("http://127.0.0.1:{exporter_port}");
    let metrics_url = format!("{base}/metrics");
    wait_ready(&client, &format!("{base}/readyz"), Duration::from_secs(600)).await;

    // Polling alone: at least three whole cycles.
    let before = sample(&client, &metrics_url, pid).await;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = sample(&client, &metrics_url, pid).await;
        if now.cycles >= before.cycles + 3.0 && now.at - before.at >= Duration::from_secs(5) {
            break;
        }
    }
    let after = sample(&client, &metrics_url, pid).await;
    let polls = after.polls - before.polls;
    let cycle_seconds =
        (after.cycle_seconds_sum - before.cycle_seconds_sum) / (after.cycles - before.cycles);
    let cpu_per_1000_polls = (after.cpu_seconds - before.cpu_seconds) / (polls / 1000.0);
    let polls_per_second = polls / (after.at - before.at).as_secs_f64();

    // Scrapes while polling goes on, at a steady planned rate rather than
    // flat out: a fresh exporter polling about 1,000 zones a second.
    drop(exporter);
    let steady = format!("{}ms", (u64::from(zones)).max(1000));
    let (exporter, exporter_port) = start_exporter(simulator_port, &steady);
    let pid = exporter.0.id();
    let base = format!("http://127.0.0.1:{exporter_port}");
    let metrics_url = format!("{base}/metrics");
    wait_ready(&client, &format!("{base}/readyz"), Duration::from_secs(600)).await;
    // Whole cycles only: polls are spread over each cycle.
    let ready = sample(&client, &metrics_url, pid).await;
    let steady_before = next_cycle(&client, &metrics_url, pid, ready.cycles).await;
    let steady_after = next_cycle(&client, &metrics_url, pid, steady_before.cycles).await;
    let polls_per_second_steady = (steady_after.polls - steady_before.polls)
        / (steady_after.at - steady_before.at).as_secs_f64();
    let (text, gzip_bytes) = fetch_text(&client, &metrics_url).await;
    let gzipped = client
        .get(&metrics_url)
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    // The load lasts three cycles at least, so two whole cycles fall inside it.
    let cycle = (steady_after.at - steady_before.at).as_secs_f64();
    let load_for = load_seconds.max((3.0 * cycle).ceil() as u32);
    let load = tokio::task::spawn_blocking({
        let url = metrics_url.clone();
        move || wrk(&url, load_for)
    });
    let loaded_before = next_cycle(&client, &metrics_url, pid, steady_after.cycles).await;
    let loaded_after = next_cycle(&client, &metrics_url, pid, loaded_before.cycles).await;
    let exporter_load = load.await.unwrap();
    let polls_per_second_under_load = (loaded_after.polls - loaded_before.polls)
        / (loaded_after.at - loaded_before.at).as_secs_f64();
    let peak_rss = peak_rss_mib(pid);
    drop(exporter);

    let static_url = static_server(gzipped.clone()).await;
    let static_load = tokio::task::spawn_blocking(move || wrk(&static_url, load_seconds))
        .await
        .unwrap();

    Row {
        zones,
        cycle_seconds,
        cpu_per_1000_polls,
        polls_per_second,
        polls_per_second_steady,
        polls_per_second_under_load,
        metrics_bytes: text.len(),
        gzip_bytes,
        exporter_rps: exporter_load.rps,
        exporter_p50_ms: exporter_load.p50_ms,
        exporter_p99_ms: exporter_load.p99_ms,
        static_rps: static_load.rps,
        static_p99_ms: static_load.p99_ms,
        peak_rss_mib: peak_rss,
    }
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

fn table(rows: &[Row], options: &Options) -> String {
    let date = chrono::Utc::now().format("%Y-%m-%d");
    let mut text = format!(
        "# Benchmarks\n\nMeasured {date} on {machine} by `cargo bench --bench harness -- --zones {zones} \
         --load-seconds {load}`.\nThe exporter polls the simulator (`simulate`) on loopback with the \
         API budget lifted and `--poll.concurrency 32`: first flat out (a 10 ms interval, so cycles \
         run back to back) for the cycle time, CPU and polls/s; then, restarted with polls planned \
         at about 1,000 a second, for the rest; `/metrics` is loaded by \
         `wrk -t2 -c4 -H 'Accept-Encoding: gzip'` (Prometheus asks for gzip) for {load} s or three \
         cycles, whichever is longer, while polling goes on (polls/s are counted over whole cycles), and the same gzipped bytes are then served by a bare hyper handler \
         under the same load. Ratios are the figures that travel between \
         machines.\n\n",
        machine = machine(),
        zones = rows.iter().map(|r| r.zones.to_string()).collect::<Vec<_>>().join(","),
        load = options.load_seconds,
    );
    text.push_str(
        "| zones | poll cycle (s) | CPU s / 1000 polls | polls/s flat out | steady polls/s, under scrape load (ratio) \
         | /metrics bytes per zone (gzip) | /metrics req/s | p50 ms | p99 ms | static req/s | throughput vs \
         static | peak RSS MiB |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        text.push_str(&format!(
            "| {} | {:.2} | {:.3} | {:.0} | {:.0}, {:.0} ({:.2}) | {:.0} ({:.0}) | {:.0} | {:.2} | {:.2} | {:.0} | {:.2} | {:.1} |\n",
            r.zones,
            r.cycle_seconds,
            r.cpu_per_1000_polls,
            r.polls_per_second,
            r.polls_per_second_steady,
            r.polls_per_second_under_load,
            r.polls_per_second_under_load / r.polls_per_second_steady,
            r.metrics_bytes as f64 / f64::from(r.zones),
            r.gzip_bytes as f64 / f64::from(r.zones),
            r.exporter_rps,
            r.exporter_p50_ms,
            r.exporter_p99_ms,
            r.static_rps,
            r.exporter_rps / r.static_rps,
            r.peak_rss_mib,
        ));
    }
    if let [first, .., last] = rows {
        let growth = |a: f64, b: f64| b / a;
        text.push_str(&format!(
            "\nFrom {} to {} zones ({:.0}×): cycle time ×{:.1}, CPU per poll ×{:.2}, output per zone ×{:.2}, \
             peak RSS ×{:.1}.\n",
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
    let _ = static_p99_note(rows, &mut text);
    text
}

fn static_p99_note(rows: &[Row], text: &mut String) -> std::fmt::Result {
    use std::fmt::Write as _;
    writeln!(text, "\nStatic handler p99 (ms), for reference:")?;
    for r in rows {
        writeln!(text, "- {} zones: {:.2}", r.zones, r.static_p99_ms)?;
    }
    Ok(())
}

fn main() {
    // `cargo test --all-targets` runs benchmarks too, without `--bench`: a
    // measurement there would take minutes, need wrk, and overwrite the results.
    if !std::env::args().any(|arg| arg == "--bench") {
        println!("benches/harness.rs is a benchmark: run `cargo bench --bench harness`");
        return;
    }
    let options = options();
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let mut rows = Vec::new();
    for &zones in &options.zones {
        eprintln!("measuring {zones} zones…");
        let row = runtime.block_on(measure(zones, options.load_seconds));
        eprintln!(
            "  cycle {:.2} s, {:.3} CPU s/1000 polls, /metrics {:.0} req/s p99 {:.2} ms (static {:.0} req/s), peak RSS {:.1} MiB",
            row.cycle_seconds, row.cpu_per_1000_polls, row.exporter_rps, row.exporter_p99_ms, row.static_rps, row.peak_rss_mib
        );
        rows.push(row);
    }
    let text = table(&rows, &options);
    std::fs::write(&options.out, &text).expect("write the results");
    println!("{text}");
}
