//! A secured `/metrics`: `--web.config.file` in the exporter-toolkit format,
//! with a certificate generated for the test. HTTPS with basic auth works,
//! wrong credentials get 401, plain HTTP to the TLS port fails, a real
//! Prometheus scrapes it with `basic_auth` and `tls_config`, and the
//! `healthcheck` command speaks TLS. Client certificates, required or
//! optional, are checked against `client_ca_file`.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use cloudflare_argo_exporter::web_config::WebSecurity;
use common::*;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

const BINARY: &str = env!("CARGO_BIN_EXE_cloudflare-argo-exporter");
const PASSWORD: &str = "correct horse battery staple";

/// A self-signed certificate for localhost and 127.0.0.1, its key, and a
/// web config using them with basic auth for `prometheus`.
struct Secured {
    dir: tempfile::TempDir,
    cert_pem: String,
}

impl Secured {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let certified = rcgen::generate_simple_self_signed(vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
        ])
        .unwrap();
        let cert_pem = certified.cert.pem();
        std::fs::write(dir.path().join("server.crt"), &cert_pem).unwrap();
        std::fs::write(
            dir.path().join("server.key"),
            certified.signing_key.serialize_pem(),
        )
        .unwrap();
        // A low bcrypt cost keeps the test fast; real files use 10 or more.
        let hash = bcrypt::hash(PASSWORD, 4).unwrap();
        std::fs::write(
            dir.path().join("web.yml"),
            format!(
                "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  \
                 min_version: TLS12\nbasic_auth_users:\n  prometheus: '{hash}'\n"
            ),
        )
        .unwrap();
        Self { dir, cert_pem }
    }

    fn web_config(&self) -> PathBuf {
        self.dir.path().join("web.yml")
    }

    fn client(&self) -> reqwest::Client {
        let root = reqwest::Certificate::from_pem(self.cert_pem.as_bytes()).unwrap();
        reqwest::Client::builder()
            .add_root_certificate(root)
            .build()
            .unwrap()
    }
}

async fn api() -> MockServer {
    let api = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_json(argo_body("on", true, None)))
        .mount(&api)
        .await;
    api
}

async fn secured_exporter(secured: &Secured, api: &MockServer) -> Exporter {
    let mut config = config(&api.uri(), &[ZONE_A], Duration::from_secs(60));
    config.web.security = Some(Arc::new(WebSecurity::load(&secured.web_config()).unwrap()));
    Exporter::start(config).await
}

#[tokio::test]
async fn https_with_basic_auth() {
    let secured = Secured::new();
    let api = api().await;
    let exporter = secured_exporter(&secured, &api).await;
    let url = format!("https://localhost:{}/metrics", exporter.address.port());
    let client = secured.client();

    let ok = client
        .get(&url)
        .basic_auth("prometheus", Some(PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert!(ok
        .text()
        .await
        .unwrap()
        .contains("argo_exporter_build_info"));

    let wrong = client
        .get(&url)
        .basic_auth("prometheus", Some("hunter2"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert!(wrong.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Basic"));
    let anonymous = client.get(&url).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);

    // Probes stay open for kubelets and Docker.
    let health = format!("https://localhost:{}/healthz", exporter.address.port());
    assert_eq!(client.get(&health).send().await.unwrap().status(), 200);
    exporter.stop().await;
}

#[tokio::test]
async fn plain_http_to_the_tls_port_fails() {
    let secured = Secured::new();
    let api = api().await;
    let exporter = secured_exporter(&secured, &api).await;
    let plain = reqwest::Client::new()
        .get(format!(
            "http://127.0.0.1:{}/metrics",
            exporter.address.port()
        ))
        .basic_auth("prometheus", Some(PASSWORD))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(
        plain.as_ref().map_or(true, |r| !r.status().is_success()),
        "plain HTTP got {plain:?}"
    );
    exporter.stop().await;
}

#[tokio::test]
async fn healthcheck_speaks_tls() {
    let secured = Secured::new();
    let api = api().await;
    let exporter = secured_exporter(&secured, &api).await;
    let address = exporter.address.to_string();
    let config = secured.web_config();
    let healthy = tokio::task::spawn_blocking(move || {
        Command::new(BINARY)
            .args(["healthcheck", "--web.listen-address", &address])
            .arg("--web.config.file")
            .arg(&config)
            .env_clear()
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(
        healthy.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&healthy.stderr)
    );
    exporter.stop().await;

    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let unhealthy = Command::new(BINARY)
        .args(["healthcheck", "--web.listen-address", &closed])
        .env_clear()
        .output()
        .unwrap();
    assert_eq!(unhealthy.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unhealthy.stderr).contains("unhealthy"));
}

fn write_prometheus_config(dir: &Path, target: &str, ca: &Path) -> PathBuf {
    let path = dir.join("prometheus.yml");
    std::fs::write(
        &path,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: cloudflare-argo\n    \
             scheme: https\n    tls_config:\n      ca_file: {ca}\n      server_name: localhost\n    \
             basic_auth:\n      username: prometheus\n      password: '{PASSWORD}'\n    \
             static_configs:\n      - targets: ['{target}']\n",
            ca = ca.display()
        ),
    )
    .unwrap();
    path
}

#[tokio::test]
async fn prometheus_scrapes_with_tls_and_basic_auth() {
    let secured = Secured::new();
    let api = api().await;
    let exporter = secured_exporter(&secured, &api).await;

    let prometheus_dir = tempfile::tempdir().unwrap();
    let config = write_prometheus_config(
        prometheus_dir.path(),
        &exporter.address.to_string(),
        &secured.dir.path().join("server.crt"),
    );
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _prometheus = Running(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                prometheus_dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus starts (run scripts/test, which installs it)"),
    );

    let query = |q: &'static str| async move {
        let url = format!("http://127.0.0.1:{port}/api/v1/query?query={q}");
        let Ok(response) = reqwest::get(&url).await else {
            return Vec::new();
        };
        let answer: serde_json::Value = response.json().await.unwrap_or_default();
        answer["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    eventually("Prometheus to scrape over TLS with basic auth", || async {
        let up = query("up").await;
        up.first().is_some_and(|s| s["value"][1] == "1") && !query("argo_enabled").await.is_empty()
    })
    .await;
    exporter.stop().await;
}

/// A certificate authority made for one test.
struct Ca {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pem: String,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        Self {
            issuer: rcgen::Issuer::new(params, key),
            pem,
        }
    }

    /// A certificate for `names` signed by this CA, and its key, in PEM.
    fn sign(&self, names: &[&str], usage: rcgen::ExtendedKeyUsagePurpose) -> (String, String) {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        params.extended_key_usages = vec![usage];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A client identity signed by this CA.
    fn client_identity(&self) -> reqwest::Identity {
        let (cert, key) = self.sign(
            &["scraper.example.com"],
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        );
        reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap()
    }
}

/// A server certificate signed by `ca`, and a web config that asks clients
/// for a certificate from the same CA as `client_auth_type` says.
struct MutualTls {
    dir: tempfile::TempDir,
    ca: Ca,
}

impl MutualTls {
    fn new(client_auth_type: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("exporter test CA");
        let (cert, key) = ca.sign(
            &["localhost", "127.0.0.1"],
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        );
        std::fs::write(dir.path().join("ca.crt"), &ca.pem).unwrap();
        std::fs::write(dir.path().join("server.crt"), cert).unwrap();
        std::fs::write(dir.path().join("server.key"), key).unwrap();
        std::fs::write(
            dir.path().join("web.yml"),
            format!(
                "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  \
                 client_ca_file: ca.crt\n  client_auth_type: {client_auth_type}\n"
            ),
        )
        .unwrap();
        Self { dir, ca }
    }

    async fn exporter(&self, api: &MockServer) -> Exporter {
        let mut config = config(&api.uri(), &[ZONE_A], Duration::from_secs(60));
        let security = WebSecurity::load(&self.dir.path().join("web.yml")).unwrap();
        config.web.security = Some(Arc::new(security));
        Exporter::start(config).await
    }

    /// Scrapes over HTTPS, trusting the server's CA, with `identity` if given.
    async fn scrape(
        &self,
        exporter: &Exporter,
        identity: Option<reqwest::Identity>,
    ) -> reqwest::Result<reqwest::Response> {
        let root = reqwest::Certificate::from_pem(self.ca.pem.as_bytes()).unwrap();
        let mut client = reqwest::Client::builder()
            .add_root_certificate(root)
            .timeout(Duration::from_secs(5));
        if let Some(identity) = identity {
            client = client.identity(identity);
        }
        let url = format!("https://localhost:{}/metrics", exporter.address.port());
        client.build().unwrap().get(url).send().await
    }
}

/// Asserts that the scrape got no HTTP answer because the server ended the
/// TLS handshake with `alert` (as rustls names TLS alerts).
fn assert_refused(scrape: reqwest::Result<reqwest::Response>, alert: &str) {
    let err = match scrape {
        Ok(response) => panic!(
            "expected a refused handshake, got HTTP {}",
            response.status()
        ),
        Err(err) => err,
    };
    let mut chain = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        chain.push_str(": ");
        chain.push_str(&cause.to_string());
        source = cause.source();
    }
    assert!(
        chain.contains(&format!("received fatal alert: {alert}")),
        "{chain}"
    );
}

#[tokio::test]
async fn a_required_client_certificate_admits_only_clients_of_the_ca() {
    let tls = MutualTls::new("RequireAndVerifyClientCert");
    let api = api().await;
    let exporter = tls.exporter(&api).await;

    let admitted = tls
        .scrape(&exporter, Some(tls.ca.client_identity()))
        .await
        .unwrap();
    assert_eq!(admitted.status(), 200);

    assert_refused(tls.scrape(&exporter, None).await, "CertificateRequired");
    let foreign = Ca::new("another CA").client_identity();
    assert_refused(tls.scrape(&exporter, Some(foreign)).await, "UnknownCA");

    // Refused handshakes leave the server serving.
    let again = tls
        .scrape(&exporter, Some(tls.ca.client_identity()))
        .await
        .unwrap();
    assert_eq!(again.status(), 200);

    // healthcheck has no client certificate: it says so instead of blaming
    // the exporter's health on a refused handshake.
    let address = exporter.address.to_string();
    let web_config = tls.dir.path().join("web.yml");
    let healthcheck = tokio::task::spawn_blocking(move || {
        Command::new(BINARY)
            .args(["healthcheck", "--web.listen-address", &address])
            .arg("--web.config.file")
            .arg(&web_config)
            .env_clear()
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let said = String::from_utf8_lossy(&healthcheck.stderr);
    assert_eq!(healthcheck.status.code(), Some(1), "{said}");
    assert!(said.contains("RequireAndVerifyClientCert"), "{said}");
    exporter.stop().await;
}

#[tokio::test]
async fn an_optional_client_certificate_admits_anonymous_clients_but_not_foreign_ones() {
    let tls = MutualTls::new("VerifyClientCertIfGiven");
    let api = api().await;
    let exporter = tls.exporter(&api).await;

    let anonymous = tls.scrape(&exporter, None).await.unwrap();
    assert_eq!(anonymous.status(), 200);
    let admitted = tls
        .scrape(&exporter, Some(tls.ca.client_identity()))
        .await
        .unwrap();
    assert_eq!(admitted.status(), 200);

    let foreign = Ca::new("another CA").client_identity();
    assert_refused(tls.scrape(&exporter, Some(foreign)).await, "UnknownCA");
    exporter.stop().await;
}
