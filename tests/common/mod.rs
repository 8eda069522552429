//! Helpers shared by the integration tests: start the exporter on port 0
//! against a stand-in API, scrape it and read the exposition with a parser.

#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tracing_subscriber::layer::SubscriberExt;

use cloudflare_argo_exporter::budget::RateLimit;
use cloudflare_argo_exporter::cloudflare::RetryPolicy;
use cloudflare_argo_exporter::config::{
    AlertingConfig, ApiConfig, Config, Credentials, PollConfig, WebConfig, ZoneId,
};
use cloudflare_argo_exporter::zones::{ZoneRef, ZoneSources};
use prometheus_parse::{Sample, Scrape, Value};
use secrecy::SecretString;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const TOKEN: &str = "test-token-7f3a9c";
pub const ZONE_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
pub const ZONE_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

/// How long a test waits for something the exporter should do within a poll
/// or two. Generous because CI machines are shared; it bounds a hang, it is
/// not a performance assertion.
pub const PATIENCE: Duration = Duration::from_secs(15);

pub fn zone(id: &str) -> ZoneId {
    id.parse().expect("test zone IDs are valid")
}

/// A configuration polling `zones` at `api_url` every `interval`.
pub fn config(api_url: &str, zones: &[&str], interval: Duration) -> Config {
    Config {
        zones: ZoneSources::configured(zones.iter().map(|id| ZoneRef::Id(zone(id)))),
        api: ApiConfig {
            base_url: format!("{}/", api_url.trim_end_matches('/'))
                .parse()
                .expect("test API URL is valid"),
            credentials: Credentials::Token(SecretString::from(TOKEN)),
            timeout: Duration::from_secs(2),
            rate_limit: RateLimit {
                count: 1000,
                duration: Duration::from_secs(1),
            },
            retry: RetryPolicy {
                max_retries: 2,
                first_backoff: Duration::from_millis(20),
                max_backoff: Duration::from_millis(100),
            },
        },
        poll: PollConfig {
            interval,
            concurrency: NonZeroUsize::new(4).expect("4 is not zero"),
        },
        web: WebConfig {
            listen_address: "127.0.0.1:0".to_owned(),
            telemetry_path: "/metrics".to_owned(),
            security: None,
            // Tests read back what a poll just did, so no encoding is reused.
            metrics_max_age: Duration::ZERO,
        },
        alerting: AlertingConfig::default(),
    }
}

/// Everything the exporter logged in this test process, at debug level, in
/// its logfmt format. Tests run in parallel, so each test uses its own zone
/// IDs and looks only at the lines that name them.
static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();

#[derive(Clone)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Starts capturing logs (once per test process).
pub fn capture_logs() {
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = LogBuffer(Arc::clone(&buffer));
        let layer = tracing_logfmt::builder()
            .layer()
            .with_writer(move || writer.clone());
        let subscriber = tracing_subscriber::registry()
            .with(tracing_subscriber::filter::LevelFilter::DEBUG)
            .with(layer);
        // Another test binary's subscriber cannot exist in this process.
        let _ = tracing::subscriber::set_global_default(subscriber);
        buffer
    });
}

/// The captured log lines that contain `needle`.
pub fn log_lines_with(needle: &str) -> Vec<String> {
    let Some(buffer) = LOGS.get() else {
        return Vec::new();
    };
    let bytes = buffer.lock().unwrap_or_else(|p| p.into_inner()).clone();
    String::from_utf8_lossy(&bytes)
        .lines()
        .filter(|line| line.contains(needle))
        .map(str::to_owned)
        .collect()
}

/// A running exporter; dropping it without `stop` leaves the task to die with the runtime.
pub struct Exporter {
    pub address: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), cloudflare_argo_exporter::Error>>,
}

impl Exporter {
    pub async fn start(config: Config) -> Self {
        capture_logs();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
        let address = listener.local_addr().expect("local address");
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown = async move {
            let _ = stopped.await;
        };
        let task = tokio::spawn(cloudflare_argo_exporter::run(config, listener, shutdown));
        Self {
            address,
            stop: Some(stop),
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        reqwest::get(self.url(path))
            .await
            .expect("exporter answers")
    }

    pub async fn scrape_text(&self) -> String {
        let response = self.get("/metrics").await;
        assert_eq!(response.status(), 200);
        response.text().await.expect("metrics body")
    }

    pub async fn scrape(&self) -> Metrics {
        Metrics::parse(&self.scrape_text().await)
    }

    /// Scrapes until `ready` holds, panicking with the last scrape if it never does.
    pub async fn scrape_until(&self, what: &str, ready: impl Fn(&Metrics) -> bool) -> Metrics {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let metrics = self.scrape().await;
            if ready(&metrics) {
                return metrics;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("gave up waiting for {what}; last scrape:\n{}", metrics.text);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let result = tokio::time::timeout(PATIENCE, self.task)
            .await
            .expect("exporter stops after shutdown")
            .expect("exporter task did not panic");
        result.expect("exporter ran without error");
        assert!(
            log_lines_with(TOKEN).is_empty(),
            "the API token appeared in the logs"
        );
    }
}

/// A parsed scrape with lookups by metric name and labels.
pub struct Metrics {
    pub text: String,
    pub samples: Vec<Sample>,
}

impl Metrics {
    pub fn parse(text: &str) -> Self {
        let lines = text.lines().map(|line| Ok(line.to_owned()));
        let scrape = Scrape::parse(lines).expect("exposition text parses");
        Self {
            text: text.to_owned(),
            samples: scrape.samples,
        }
    }

    /// The value of the one sample named `name` whose labels include `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let matching: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .collect();
        assert!(
            matching.len() <= 1,
            "{name}{labels:?} matches {} samples",
            matching.len()
        );
        matching.first().map(|s| match &s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(_) | Value::Summary(_) => panic!("{name} is not a single value"),
        })
    }

    pub fn zone_value(&self, name: &str, zone_id: &str) -> Option<f64> {
        self.value(name, &[("zone_id", zone_id)])
    }

    pub fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|s| s.metric == name)
    }

    pub fn errors(&self, endpoint: &str, kind: &str) -> f64 {
        self.value(
            "argo_api_errors_total",
            &[("endpoint", endpoint), ("kind", kind)],
        )
        .unwrap_or(0.0)
    }
}

/// The body of a successful `GET /zones/{id}/argo/smart_routing`.
pub fn argo_body(value: &str, editable: bool, modified_on: Option<&str>) -> serde_json::Value {
    serde_json::json!({
        "result": {
            "id": "smart_routing",
            "value": value,
            "editable": editable,
            "modified_on": modified_on,
        },
        "success": true,
        "errors": [],
        "messages": [],
    })
}

/// The body of a successful `GET /zones/{id}`.
pub fn zone_body(id: &str, name: &str) -> serde_json::Value {
    serde_json::json!({
        "result": { "id": id, "name": name, "status": "active" },
        "success": true,
        "errors": [],
        "messages": [],
    })
}

/// One page holding every zone of a `GET /zones` listing, as `(id, name)`.
pub fn zone_listing(zones: &[(&str, &str)]) -> serde_json::Value {
    let results: Vec<serde_json::Value> = zones
        .iter()
        .map(|(id, name)| zone_body(id, name)["result"].clone())
        .collect();
    serde_json::json!({
        "result": results,
        "result_info": {
            "page": 1, "per_page": 50, "count": zones.len(),
            "total_count": zones.len(), "total_pages": 1
        },
        "success": true,
        "errors": [],
        "messages": [],
    })
}

/// A Cloudflare failure envelope with one error.
pub fn failure_body(code: i64, message: &str) -> serde_json::Value {
    serde_json::json!({
        "result": null,
        "success": false,
        "errors": [{ "code": code, "message": message }],
        "messages": [],
    })
}

/// Runs `check` repeatedly until it returns true, up to [`PATIENCE`].
pub async fn eventually<F, Fut>(what: &str, check: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = bool>,
{
    eventually_within(what, PATIENCE, check).await;
}

/// [`eventually`] for what cannot happen sooner than some fixed wait of the
/// exporter's own (a request timeout, say): `patience` bounds a hang.
pub async fn eventually_within<F, Fut>(what: &str, patience: Duration, check: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + patience;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Serves `simulator` on a free loopback port and returns its API base URL.
/// It runs until the test's runtime ends.
pub async fn serve_simulator(simulator: &cloudflare_argo_exporter::simulator::Simulator) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
    let address = listener.local_addr().expect("local address");
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(simulator.clone().serve(listener, stop));
    format!(
        "http://{address}{}",
        cloudflare_argo_exporter::simulator::BASE_PATH
    )
}

/// A child process (Prometheus, Alertmanager, the binary) killed when the
/// test ends, whether it passed or not.
pub struct Running(pub std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A free loopback port for a child process to listen on. Another process
/// could take it before the child binds it; on a test machine that race is
/// rare enough to accept.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// The built binary's `demo` on `127.0.0.1:port`, polling every second.
pub fn start_demo(port: u16) -> Running {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_cloudflare-argo-exporter"))
        .args(["demo", "--poll.interval", "1s", "--log.level", "warn"])
        .args(["--web.listen-address", &format!("127.0.0.1:{port}")])
        .env_clear()
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("the demo starts");
    Running(child)
}
