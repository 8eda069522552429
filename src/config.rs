//! The validated configuration of the exporter, built once from the raw flags
//! and the environment. Everything after start-up works with these types only.

use std::collections::BTreeMap;
use std::fmt;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use url::Url;

use crate::budget::RateLimit;
use crate::cli::{
    AlertingArgs, ApiArgs, DiscoveryArgs, ExporterArgs, LogArgs, LogFormat, LogLevel, PollArgs,
    WebArgs, ZoneArgs,
};
use crate::cloudflare::{RetryPolicy, ZoneQuery};
use crate::config_file::{ConfigFile, FileError};
use crate::web_config::{WebConfigError, WebSecurity};
use crate::zones::{ConfiguredZone, Discovery, Expectation, Shard, ZoneRef, ZoneSources};

/// Base URL of the real Cloudflare v4 API.
pub const DEFAULT_API_URL: &str = "https://api.cloudflare.com/client/v4";

/// A Cloudflare zone identifier: exactly 32 lowercase hexadecimal characters.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ZoneId(String);

impl ZoneId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for ZoneId {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let well_formed = text.len() == 32
            && text
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if well_formed {
            Ok(Self(text.to_owned()))
        } else {
            Err(format!(
                "zone ID {text:?} is not 32 lowercase hexadecimal characters"
            ))
        }
    }
}

impl fmt::Display for ZoneId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ZoneId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ZoneId({})", self.0)
    }
}

/// How requests authenticate to Cloudflare. `Debug` never shows the secret.
#[derive(Debug)]
pub enum Credentials {
    /// An API token, sent as `Authorization: Bearer`.
    Token(SecretString),
    /// The legacy global API key, sent as `X-Auth-Email` and `X-Auth-Key`.
    GlobalKey { email: String, key: SecretString },
}

#[derive(Debug)]
pub struct Config {
    pub zones: ZoneSources,
    pub api: ApiConfig,
    pub poll: PollConfig,
    pub web: WebConfig,
    pub alerting: AlertingConfig,
}

/// What the daemon does itself when Argo is found off where it should be on.
#[derive(Debug, Clone)]
pub struct AlertingConfig {
    /// Alertmanagers to push the unexpected-disable alert to.
    pub alertmanagers: Vec<Url>,
    /// With `--enforce`: how long a zone stays off before it is turned back on.
    pub enforce_grace: Option<Duration>,
    /// How often a firing alert is sent again.
    pub resend_interval: Duration,
}

#[derive(Debug)]
pub struct ApiConfig {
    pub base_url: Url,
    pub credentials: Credentials,
    pub timeout: Duration,
    pub rate_limit: RateLimit,
    pub retry: RetryPolicy,
}

#[derive(Debug, Clone)]
pub struct PollConfig {
    pub interval: Duration,
    pub concurrency: NonZeroUsize,
}

#[derive(Debug, Clone)]
pub struct WebConfig {
    /// Where to listen, in a form `tokio::net::TcpListener::bind` accepts.
    pub listen_address: String,
    pub telemetry_path: String,
    /// TLS and basic auth, from `--web.config.file`.
    pub security: Option<Arc<WebSecurity>>,
    /// How long one encoding of the metrics serves scrapes that come close
    /// together (see `server::EncodedMetrics`).
    pub metrics_max_age: Duration,
}

/// Scrapes within a second of each other share one encoding: values only
/// change when a poll lands, and polls of one zone are seconds apart at least.
pub const DEFAULT_METRICS_MAX_AGE: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy)]
pub struct LogConfig {
    pub level: LogLevel,
    pub format: LogFormat,
}

impl From<&PollArgs> for PollConfig {
    fn from(args: &PollArgs) -> Self {
        Self {
            interval: args.interval,
            // The flag's parser keeps the value from 1 to 256.
            concurrency: NonZeroUsize::new(usize::from(args.concurrency))
                .unwrap_or(NonZeroUsize::MIN),
        }
    }
}

impl From<&LogArgs> for LogConfig {
    fn from(args: &LogArgs) -> Self {
        Self {
            level: args.level,
            format: args.format,
        }
    }
}

/// A configuration problem found at start-up. Each message names the flag or
/// environment variable to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "no zones to watch: give --zone (or ARGO_EXPORTER_ZONES), zones in --config.file, \
         or --zones.discover"
    )]
    NoZones,
    #[error("--alertmanager.url: {url:?}: {reason}")]
    AlertmanagerUrl { url: String, reason: String },
    #[error("--shard.index: {index} is not below --shard.count {count} (shards count from 0)")]
    Shard { index: u32, count: u32 },
    #[error("{flag} only applies with --zones.discover")]
    DiscoveryFilterWithoutDiscovery { flag: &'static str },
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    WebConfig(#[from] WebConfigError),
    #[error(
        "no Cloudflare credentials: set CLOUDFLARE_API_TOKEN, --cloudflare.api-token-file, \
         or CLOUDFLARE_EMAIL with CLOUDFLARE_API_KEY"
    )]
    NoCredentials,
    #[error("{0}")]
    ConflictingCredentials(&'static str),
    #[error("CLOUDFLARE_EMAIL and CLOUDFLARE_API_KEY go together: {missing} is not set or empty")]
    IncompleteGlobalKey { missing: &'static str },
    #[error("--cloudflare.api-token-file: cannot read {path}: {source}")]
    TokenFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{origin} is empty")]
    EmptySecret { origin: String },
    #[error("{origin} holds characters that cannot be sent in an HTTP header")]
    UnusableSecret { origin: String },
    #[error("--cloudflare.api-url: {url:?} is not an http(s) URL: {reason}")]
    ApiUrl { url: String, reason: String },
    #[error("--web.listen-address: {address:?} {reason}")]
    ListenAddress {
        address: String,
        reason: &'static str,
    },
    #[error("--web.telemetry-path: {path:?} {reason}")]
    TelemetryPath { path: String, reason: &'static str },
}

impl Config {
    /// Validates the exporter flags. `env` looks up an environment variable;
    /// it is a parameter so tests need not change the process environment.
    pub fn from_args(
        args: &ExporterArgs,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        Ok(Self {
            zones: ZoneSources::from_args(&args.sources)?,
            api: ApiConfig::from_args(&args.api, env)?,
            poll: PollConfig::from(&args.poll),
            web: WebConfig::from_args(&args.web)?,
            alerting: AlertingConfig::from_args(&args.alerting)?,
        })
    }
}

impl ZoneSources {
    /// The zones of `--zone` and the file (the file's entry wins for a zone
    /// named in both), and discovery. Refuses a configuration with no zones.
    pub fn from_args(args: &ZoneArgs) -> Result<Self, ConfigError> {
        let mut zones: BTreeMap<ZoneRef, Option<Expectation>> =
            args.zones.iter().map(|zone| (zone.clone(), None)).collect();
        if let Some(path) = &args.config_file {
            for entry in ConfigFile::load(path)?.zones {
                zones.insert(entry.zone, entry.expect);
            }
        }
        let discovery = discovery_from(&args.discovery)?;
        if zones.is_empty() && discovery.is_none() {
            return Err(ConfigError::NoZones);
        }
        Ok(Self {
            configured: zones
                .into_iter()
                .map(|(zone, expect)| ConfiguredZone { zone, expect })
                .collect(),
            discovery,
            refresh: args.discovery.refresh_interval,
            default_expect: args.expect,
            shard: shard_from(args)?,
        })
    }
}

impl ApiConfig {
    pub fn from_args(
        args: &ApiArgs,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        Ok(Self {
            base_url: parse_api_url(&args.api_url)?,
            credentials: credentials_from(args.api_token_file.as_deref(), env)?,
            timeout: args.timeout,
            rate_limit: args.rate_limit,
            retry: RetryPolicy::default(),
        })
    }
}

impl Default for AlertingConfig {
    /// No Alertmanager, no enforcing.
    fn default() -> Self {
        Self {
            alertmanagers: Vec::new(),
            enforce_grace: None,
            resend_interval: crate::alerting::DEFAULT_RESEND_INTERVAL,
        }
    }
}

impl AlertingConfig {
    pub fn from_args(args: &AlertingArgs) -> Result<Self, ConfigError> {
        let alertmanagers = args
            .alertmanager_urls
            .iter()
            .map(|text| parse_alertmanager_url(text))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            alertmanagers,
            enforce_grace: args.enforce.then_some(args.enforce_grace),
            resend_interval: crate::alerting::DEFAULT_RESEND_INTERVAL,
        })
    }
}

/// A URL as it may be shown in an error: without the user name and password
/// (either may be a credential, such as a token pasted in the wrong place).
/// Text that does not parse as a URL is shown from its last `@` on, since
/// what stands before it may be one.
fn shown_url(text: &str) -> String {
    if let Ok(mut url) = Url::parse(text) {
        let _ = url.set_username("");
        let _ = url.set_password(None);
        return url.to_string();
    }
    match text.rfind('@') {
        Some(at) => format!("…{}", &text[at..]),
        None => text.to_owned(),
    }
}

fn parse_alertmanager_url(text: &str) -> Result<Url, ConfigError> {
    let invalid = |reason: &str| ConfigError::AlertmanagerUrl {
        url: shown_url(text),
        reason: reason.to_owned(),
    };
    let mut url = Url::parse(text).map_err(|err| invalid(&err.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
        return Err(invalid("it must be an http(s) URL"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid("it must be a plain base URL"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid("it must not carry a user name or password"));
    }
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

impl WebConfig {
    pub fn from_args(args: &WebArgs) -> Result<Self, ConfigError> {
        let security = args
            .web_config_file
            .as_deref()
            .map(WebSecurity::load)
            .transpose()?
            .map(Arc::new);
        Ok(Self {
            listen_address: parse_listen_address(&args.listen_address)?,
            telemetry_path: parse_telemetry_path(&args.telemetry_path)?,
            security,
            metrics_max_age: DEFAULT_METRICS_MAX_AGE,
        })
    }
}

fn shard_from(args: &ZoneArgs) -> Result<Shard, ConfigError> {
    if args.shard_index >= args.shard_count {
        return Err(ConfigError::Shard {
            index: args.shard_index,
            count: args.shard_count,
        });
    }
    Ok(Shard {
        index: args.shard_index,
        count: args.shard_count,
    })
}

fn discovery_from(args: &DiscoveryArgs) -> Result<Option<Discovery>, ConfigError> {
    if !args.discover {
        let set_filter = [
            ("--zones.account-id", args.account_id.is_some()),
            ("--zones.include", args.include.is_some()),
            ("--zones.exclude", args.exclude.is_some()),
        ]
        .into_iter()
        .find(|(_, set)| *set);
        return match set_filter {
            Some((flag, _)) => Err(ConfigError::DiscoveryFilterWithoutDiscovery { flag }),
            None => Ok(None),
        };
    }
    Ok(Some(Discovery {
        query: ZoneQuery {
            name: None,
            status: (args.status != "any").then(|| args.status.clone()),
            account_id: args.account_id.clone(),
        },
        include: args.include.clone(),
        exclude: args.exclude.clone(),
        refresh: args.refresh_interval,
    }))
}

fn credentials_from(
    token_file: Option<&std::path::Path>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Credentials, ConfigError> {
    let token_env = env("CLOUDFLARE_API_TOKEN").filter(|value| !value.is_empty());
    let email = env("CLOUDFLARE_EMAIL").filter(|value| !value.is_empty());
    let key = env("CLOUDFLARE_API_KEY").filter(|value| !value.is_empty());

    let token = match (token_env, token_file) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::ConflictingCredentials(
                "CLOUDFLARE_API_TOKEN and --cloudflare.api-token-file are both set: keep one",
            ))
        }
        (Some(token), None) => Some(secret(token, "CLOUDFLARE_API_TOKEN")?),
        (None, Some(path)) => Some(read_token_file(path)?),
        (None, None) => None,
    };

    match (token, email, key) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => Err(ConfigError::ConflictingCredentials(
            "an API token and CLOUDFLARE_EMAIL/CLOUDFLARE_API_KEY are both set: keep one",
        )),
        (Some(token), None, None) => Ok(Credentials::Token(token)),
        (None, Some(email), Some(key)) => Ok(Credentials::GlobalKey {
            email: secret(email, "CLOUDFLARE_EMAIL")?
                .expose_secret()
                .to_owned(),
            key: secret(key, "CLOUDFLARE_API_KEY")?,
        }),
        (None, Some(_), None) => Err(ConfigError::IncompleteGlobalKey {
            missing: "CLOUDFLARE_API_KEY",
        }),
        (None, None, Some(_)) => Err(ConfigError::IncompleteGlobalKey {
            missing: "CLOUDFLARE_EMAIL",
        }),
        (None, None, None) => Err(ConfigError::NoCredentials),
    }
}

/// A token is 40 characters; a file much larger than that is the wrong file,
/// and is not read whole into memory.
const MAX_TOKEN_FILE_BYTES: u64 = 64 * 1024;

fn read_token_file(path: &std::path::Path) -> Result<SecretString, ConfigError> {
    use std::io::Read;

    let error = |source| ConfigError::TokenFile {
        path: path.to_owned(),
        source,
    };
    let mut contents = String::new();
    std::fs::File::open(path)
        .and_then(|file| {
            file.take(MAX_TOKEN_FILE_BYTES + 1)
                .read_to_string(&mut contents)
        })
        .map_err(error)?;
    if contents.len() as u64 > MAX_TOKEN_FILE_BYTES {
        return Err(error(std::io::Error::other(format!(
            "larger than {} KiB, so not a token",
            MAX_TOKEN_FILE_BYTES / 1024
        ))));
    }
    secret(contents, &format!("token file {}", path.display()))
}

/// Trims surrounding white space (a copied token often has some) and checks
/// the value can travel in an HTTP header.
fn secret(value: String, origin: &str) -> Result<SecretString, ConfigError> {
    let value = value.trim();
    if value.is_empty() {
        return Err(ConfigError::EmptySecret {
            origin: origin.to_owned(),
        });
    }
    if !value.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        return Err(ConfigError::UnusableSecret {
            origin: origin.to_owned(),
        });
    }
    Ok(SecretString::from(value.to_owned()))
}

fn parse_api_url(text: &str) -> Result<Url, ConfigError> {
    let invalid = |reason: String| ConfigError::ApiUrl {
        url: shown_url(text),
        reason,
    };
    let mut url = Url::parse(text).map_err(|err| invalid(err.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid(format!(
            "scheme {:?} is not supported",
            url.scheme()
        )));
    }
    if url.cannot_be_a_base() || url.query().is_some() || url.fragment().is_some() {
        return Err(invalid("it must be a plain base URL".to_owned()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(
            "it must not carry a user name or password".to_owned(),
        ));
    }
    // Plain http would send the token in clear; it is for a local simulator
    // or a proxy on the same machine only.
    let loopback = match url.host() {
        Some(url::Host::Domain(name)) => name == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    if url.scheme() == "http" && !loopback {
        return Err(invalid(
            "http is only allowed to a loopback address; use https".to_owned(),
        ));
    }
    // Path segments are appended to the base later, which needs a trailing slash.
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

/// Accepts `HOST:PORT`, `[V6]:PORT`, or `:PORT` (all interfaces, as in the Go
/// exporters), and returns an address `TcpListener::bind` understands.
pub fn parse_listen_address(text: &str) -> Result<String, ConfigError> {
    let invalid = |reason| ConfigError::ListenAddress {
        address: text.to_owned(),
        reason,
    };
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| invalid("has no port (expected HOST:PORT or :PORT)"))?;
    port.parse::<u16>()
        .map_err(|_| invalid("does not end in a port number from 0 to 65535"))?;
    if host.is_empty() {
        return Ok(format!("0.0.0.0:{port}"));
    }
    let bracketed = host.starts_with('[') && host.ends_with(']');
    if host.contains(':') && !bracketed {
        return Err(invalid(
            "has an IPv6 address without brackets (write [::1]:9832)",
        ));
    }
    if bracketed
        && host[1..host.len() - 1]
            .parse::<std::net::Ipv6Addr>()
            .is_err()
    {
        return Err(invalid(
            "has brackets around something that is not an IPv6 address",
        ));
    }
    Ok(text.to_owned())
}

fn parse_telemetry_path(path: &str) -> Result<String, ConfigError> {
    let invalid = |reason| ConfigError::TelemetryPath {
        path: path.to_owned(),
        reason,
    };
    if !path.starts_with('/') {
        return Err(invalid("must start with '/'"));
    }
    if ["/", "/healthz", "/readyz"].contains(&path) {
        return Err(invalid("is taken by the landing page or a probe"));
    }
    // Requests arrive percent-encoded; plain characters compare as written.
    let plain = path
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/-._~".contains(&b));
    if !plain {
        return Err(invalid(
            "may hold only letters, digits, '/', '-', '.', '_' and '~'",
        ));
    }
    Ok(path.to_owned())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::io::Write;

    use clap::Parser;
    use secrecy::ExposeSecret;

    use super::*;
    use crate::cli::Cli;

    const ZONE: &str = "0123456789abcdef0123456789abcdef";

    fn args(extra: &[&str]) -> ExporterArgs {
        let mut argv = vec!["cloudflare-argo-exporter", "--zone", ZONE];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).unwrap().exporter
    }

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn zone_ids_must_be_32_lowercase_hex() {
        assert!(ZONE.parse::<ZoneId>().is_ok());
        for bad in [
            "",
            "0123456789ABCDEF0123456789ABCDEF",
            "0123456789abcdef0123456789abcde",
            "0123456789abcdef0123456789abcdeff",
            "0123456789abcdef0123456789abcdeg",
            "example.com",
        ] {
            let err = bad.parse::<ZoneId>().unwrap_err();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn token_from_environment() {
        let config =
            Config::from_args(&args(&[]), env_of(&[("CLOUDFLARE_API_TOKEN", "tok-123")])).unwrap();
        match &config.api.credentials {
            Credentials::Token(token) => assert_eq!(token.expose_secret(), "tok-123"),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(
            config.api.base_url.as_str(),
            "https://api.cloudflare.com/client/v4/"
        );
    }

    #[test]
    fn token_file_has_trailing_newline_trimmed() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, "tok-from-file").unwrap();
        let path = file.path().to_str().unwrap();
        let config =
            Config::from_args(&args(&["--cloudflare.api-token-file", path]), env_of(&[])).unwrap();
        match &config.api.credentials {
            Credentials::Token(token) => assert_eq!(token.expose_secret(), "tok-from-file"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn secrets_are_trimmed_and_must_fit_in_a_header() {
        let config = Config::from_args(
            &args(&[]),
            env_of(&[("CLOUDFLARE_API_TOKEN", "  tok-123 \n")]),
        )
        .unwrap();
        match &config.api.credentials {
            Credentials::Token(token) => assert_eq!(token.expose_secret(), "tok-123"),
            other => panic!("unexpected {other:?}"),
        }
        let err = Config::from_args(&args(&[]), env_of(&[("CLOUDFLARE_API_TOKEN", "a\nb")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("CLOUDFLARE_API_TOKEN"), "{err}");
        assert!(!err.contains("a\nb"), "{err}");
    }

    #[test]
    fn missing_token_file_names_the_flag() {
        let err = Config::from_args(
            &args(&["--cloudflare.api-token-file", "/nonexistent/token"]),
            env_of(&[]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("--cloudflare.api-token-file"), "{err}");
    }

    #[test]
    fn oversized_token_file_is_refused_unread() {
        // /dev/zero never ends: the file must be refused without reading it all.
        let err = Config::from_args(
            &args(&["--cloudflare.api-token-file", "/dev/zero"]),
            env_of(&[]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("--cloudflare.api-token-file"), "{err}");
        assert!(err.contains("larger than 64 KiB"), "{err}");
    }

    #[test]
    fn global_key_pair() {
        let env = env_of(&[
            ("CLOUDFLARE_EMAIL", "ops@example.com"),
            ("CLOUDFLARE_API_KEY", "key-456"),
        ]);
        let config = Config::from_args(&args(&[]), env).unwrap();
        match &config.api.credentials {
            Credentials::GlobalKey { email, key } => {
                assert_eq!(email, "ops@example.com");
                assert_eq!(key.expose_secret(), "key-456");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn credential_mistakes_are_named() {
        let cases: [(&[(&str, &str)], &str); 4] = [
            (&[], "no Cloudflare credentials"),
            (
                &[("CLOUDFLARE_EMAIL", "a@b.c")],
                "CLOUDFLARE_API_KEY is not set",
            ),
            (
                &[("CLOUDFLARE_API_KEY", "k")],
                "CLOUDFLARE_EMAIL is not set",
            ),
            (
                &[("CLOUDFLARE_API_TOKEN", "t"), ("CLOUDFLARE_API_KEY", "k")],
                "both set",
            ),
        ];
        for (env, expected) in cases {
            let err = Config::from_args(&args(&[]), env_of(env))
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{env:?}: {err}");
        }
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let config = Config::from_args(
            &args(&[]),
            env_of(&[("CLOUDFLARE_API_TOKEN", "super-secret-token")]),
        )
        .unwrap();
        let debug = format!("{config:?}");
        assert!(!debug.contains("super-secret-token"), "{debug}");

        let env = env_of(&[
            ("CLOUDFLARE_EMAIL", "ops@example.com"),
            ("CLOUDFLARE_API_KEY", "super-secret-key"),
        ]);
        let debug = format!("{:?}", Config::from_args(&args(&[]), env).unwrap());
        assert!(!debug.contains("super-secret-key"), "{debug}");
    }

    #[test]
    fn duplicate_zones_are_polled_once() {
        let config = Config::from_args(
            &args(&["--zone", ZONE]),
            env_of(&[("CLOUDFLARE_API_TOKEN", "t")]),
        )
        .unwrap();
        assert_eq!(config.zones.configured.len(), 1);
    }

    #[test]
    fn zones_come_from_flags_and_the_file() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, "zones:\n  - name: example.com\n  - id: {ZONE}").unwrap();
        let path = file.path().to_str().unwrap();
        let config = Config::from_args(
            &args(&["--config.file", path]),
            env_of(&[("CLOUDFLARE_API_TOKEN", "t")]),
        )
        .unwrap();
        let zones: Vec<&ZoneRef> = config.zones.configured.iter().map(|c| &c.zone).collect();
        assert_eq!(
            zones,
            [
                &ZoneRef::Id(ZONE.parse().unwrap()),
                &ZoneRef::Name("example.com".to_owned())
            ]
        );
    }

    #[test]
    fn the_file_sets_expectations_and_wins_over_the_flag() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, "zones:\n  - id: {ZONE}\n    expect: off").unwrap();
        let path = file.path().to_str().unwrap();
        let config = Config::from_args(
            &args(&["--config.file", path, "--argo.expect", "any"]),
            env_of(&[("CLOUDFLARE_API_TOKEN", "t")]),
        )
        .unwrap();
        assert_eq!(
            config.zones.configured,
            [ConfiguredZone {
                zone: ZoneRef::Id(ZONE.parse().unwrap()),
                expect: Some(Expectation::Off)
            }]
        );
        assert_eq!(config.zones.default_expect, Expectation::Any);
    }

    #[test]
    fn alerting_flags() {
        let config = Config::from_args(
            &args(&[
                "--alertmanager.url",
                "http://am-1:9093",
                "--alertmanager.url",
                "http://am-2:9093/prefix",
                "--enforce",
            ]),
            env_of(&[("CLOUDFLARE_API_TOKEN", "t")]),
        )
        .unwrap();
        let urls: Vec<&str> = config
            .alerting
            .alertmanagers
            .iter()
            .map(Url::as_str)
            .collect();
        assert_eq!(urls, ["http://am-1:9093/", "http://am-2:9093/prefix/"]);
        assert_eq!(
            config.alerting.enforce_grace,
            Some(Duration::from_secs(300))
        );

        let err = Config::from_args(
            &args(&["--alertmanager.url", "am-1:9093"]),
            env_of(&[("CLOUDFLARE_API_TOKEN", "t")]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("--alertmanager.url"), "{err}");
    }

    #[test]
    fn a_bad_config_file_names_the_flag_file_and_line() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, "zones:\n  - name: example.com\n    colour: red").unwrap();
        let path = file.path().to_str().unwrap();
        let err = Config::from_args(
            &args(&["--config.file", path]),
            env_of(&[("CLOUDFLARE_API_TOKEN", "t")]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("--config.file: "), "{err}");
        assert!(err.contains(path) && err.contains("line 3"), "{err}");
    }

    #[test]
    fn discovery_alone_is_enough_and_filters_need_it() {
        let cli = Cli::try_parse_from(["x", "--zones.discover", "--zones.status", "any"]).unwrap();
        let config =
            Config::from_args(&cli.exporter, env_of(&[("CLOUDFLARE_API_TOKEN", "t")])).unwrap();
        let discovery = config.zones.discovery.unwrap();
        assert_eq!(discovery.query.status, None);
        assert!(config.zones.configured.is_empty());

        let cli = Cli::try_parse_from(["x", "--zone", ZONE, "--zones.include", "shop"]).unwrap();
        let err = Config::from_args(&cli.exporter, env_of(&[("CLOUDFLARE_API_TOKEN", "t")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("--zones.include"), "{err}");

        let cli = Cli::try_parse_from(["x"]).unwrap();
        let err = Config::from_args(&cli.exporter, env_of(&[("CLOUDFLARE_API_TOKEN", "t")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no zones to watch"), "{err}");
    }

    #[test]
    fn listen_address_forms() {
        assert_eq!(parse_listen_address(":9832").unwrap(), "0.0.0.0:9832");
        assert_eq!(parse_listen_address("127.0.0.1:0").unwrap(), "127.0.0.1:0");
        assert_eq!(parse_listen_address("[::1]:9832").unwrap(), "[::1]:9832");
        assert!(parse_listen_address("9832").is_err());
        assert!(parse_listen_address("localhost:http").is_err());
        assert!(parse_listen_address(":70000").is_err());
        assert!(parse_listen_address("::1:9832").is_err());
        assert!(parse_listen_address("[nope]:9832").is_err());
    }

    #[test]
    fn api_url_gets_a_trailing_slash_and_must_be_http() {
        assert_eq!(
            parse_api_url("http://127.0.0.1:8080/client/v4")
                .unwrap()
                .as_str(),
            "http://127.0.0.1:8080/client/v4/"
        );
        assert!(parse_api_url("ftp://example.com").is_err());
        assert!(parse_api_url("not a url").is_err());
        assert!(parse_api_url("https://api.cloudflare.com/client/v4").is_ok());
        assert!(parse_api_url("http://localhost:8080/client/v4").is_ok());
        assert!(parse_api_url("http://[::1]:8080/").is_ok());

        let cleartext = parse_api_url("http://api.example.com/client/v4").unwrap_err();
        assert!(cleartext.to_string().contains("https"), "{cleartext}");
        let with_password = parse_api_url("https://user:hunter2@proxy.example.com/").unwrap_err();
        let shown = with_password.to_string();
        assert!(shown.contains("user name or password"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn credentials_in_a_url_are_never_shown() {
        // Regression: a token pasted as the user name was echoed back.
        for text in [
            "https://SECRET-TOKEN@api.example.com/client/v4",
            "https://user:SECRET-TOKEN@api.example.com/",
            "http://user:SECRET-TOKEN@[not-an-address/",
            "https:user:SECRET-TOKEN@api.example.com/client/v4",
            "https:\\\\SECRET-TOKEN@api.example.com/",
            "SECRET-TOKEN@api.example.com/client/v4",
        ] {
            for err in [
                parse_api_url(text).unwrap_err().to_string(),
                parse_alertmanager_url(text).unwrap_err().to_string(),
            ] {
                assert!(!err.contains("SECRET-TOKEN"), "{err}");
            }
        }
        assert_eq!(shown_url("https://a:b@host:1/x@y"), "https://host:1/x@y");
        assert_eq!(shown_url("no scheme@here"), "…@here");
        assert_eq!(shown_url("https://host/"), "https://host/");
    }

    #[test]
    fn telemetry_path_must_not_shadow_other_endpoints() {
        assert!(parse_telemetry_path("/metrics").is_ok());
        assert!(parse_telemetry_path("/probe/metrics").is_ok());
        for bad in ["metrics", "/", "/healthz", "/readyz"] {
            assert!(parse_telemetry_path(bad).is_err(), "{bad}");
        }
        let err = parse_telemetry_path("/a b").unwrap_err().to_string();
        assert!(err.contains("may hold only letters"), "{err}");
    }
}
