//! Command-line flags as the user typed them. Nothing here is trusted:
//! [`crate::config`] turns these raw values into a validated configuration.

use std::path::PathBuf;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::{Args, Parser, Subcommand, ValueEnum};

use regex::Regex;

use crate::budget::RateLimit;
use crate::zones::{Expectation, ZoneRef};

/// Where the exporter listens unless told otherwise. Chosen from the
/// exporter range (9100-9999) and not used by any exporter we know of.
pub const DEFAULT_LISTEN_ADDRESS: &str = ":9832";

/// Watches Cloudflare Argo Smart Routing on your zones and exports its state to Prometheus.
///
/// Credentials come from the environment: CLOUDFLARE_API_TOKEN (an API token with
/// "Zone Settings Read", plus "Zone Read" for zone names), or the legacy pair
/// CLOUDFLARE_EMAIL and CLOUDFLARE_API_KEY. `--cloudflare.api-token-file` reads the
/// token from a file instead.
#[derive(Debug, Parser)]
#[command(
    name = "cloudflare-argo-exporter",
    version,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub exporter: ExporterArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a local Cloudflare API simulator with a few sample zones and the
    /// exporter against it. Needs no token and reaches no network.
    Demo(DemoArgs),
    /// Run only the Cloudflare API simulator (for benchmarks and fire drills).
    Simulate(SimulateArgs),
    /// Print every zone's Argo state, expectation and verdict.
    Status(StatusArgs),
    /// Poll every zone once. Exit 0 when every zone meets its expectation,
    /// 1 when one does not, 2 when one could not be read.
    Check(StatusArgs),
    /// Turn Argo Smart Routing on for the given zones (read, check editable,
    /// change, read back).
    Enable(ChangeArgs),
    /// Turn Argo Smart Routing off for the given zones (read, check editable,
    /// change, read back).
    Disable(ChangeArgs),
    /// Ask a running exporter's /healthz (for Docker's HEALTHCHECK): exit 0
    /// when it answers 200, 1 otherwise.
    Healthcheck(HealthcheckArgs),
}

/// Flags of `healthcheck`: the running exporter's own web flags.
#[derive(Debug, Args)]
pub struct HealthcheckArgs {
    #[command(flatten)]
    pub web: WebArgs,
}

/// Flags of `status` and `check`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub sources: ZoneArgs,

    #[command(flatten)]
    pub api: ApiArgs,

    /// How to print the result.
    #[arg(long = "output", value_name = "FORMAT", default_value = "table")]
    pub output: OutputFormat,

    #[command(flatten)]
    pub log: LogArgs,
}

/// Flags of `enable` and `disable`.
#[derive(Debug, Args)]
pub struct ChangeArgs {
    /// Zones to change, by ID or name.
    #[arg(value_name = "ZONE", required = true)]
    pub zones: Vec<ZoneRef>,

    /// Show what would change without changing anything.
    #[arg(long = "dry-run")]
    pub dry_run: bool,

    #[command(flatten)]
    pub api: ApiArgs,

    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
}

/// Flags of the exporter daemon, the default command.
#[derive(Debug, Args)]
pub struct ExporterArgs {
    #[command(flatten)]
    pub sources: ZoneArgs,

    #[command(flatten)]
    pub api: ApiArgs,

    #[command(flatten)]
    pub poll: PollArgs,

    #[command(flatten)]
    pub web: WebArgs,

    #[command(flatten)]
    pub alerting: AlertingArgs,

    #[command(flatten)]
    pub log: LogArgs,
}

/// Which zones to watch, and what state Argo should be in on them.
#[derive(Debug, Args)]
pub struct ZoneArgs {
    /// Zone to watch: its ID (32 lowercase hex characters) or its name
    /// (example.com). Repeat the flag, or give a comma-separated list in the
    /// environment variable.
    #[arg(
        long = "zone",
        value_name = "ID|NAME",
        env = "ARGO_EXPORTER_ZONES",
        value_delimiter = ','
    )]
    pub zones: Vec<ZoneRef>,

    /// YAML file listing zones to watch, by ID or name, each optionally with
    /// its own `expect`.
    #[arg(
        long = "config.file",
        value_name = "PATH",
        env = "ARGO_EXPORTER_CONFIG_FILE"
    )]
    pub config_file: Option<PathBuf>,

    /// The state Argo Smart Routing should be in on zones that do not say
    /// otherwise in the config file; a zone found off where "on" is expected
    /// raises the alarm.
    #[arg(
        long = "argo.expect",
        value_name = "STATE",
        env = "ARGO_EXPORTER_ARGO_EXPECT",
        default_value = "on"
    )]
    pub expect: Expectation,

    #[command(flatten)]
    pub discovery: DiscoveryArgs,

    /// This replica's shard, from 0: it watches only the zones whose ID
    /// falls in it (see --shard.count).
    #[arg(
        long = "shard.index",
        value_name = "I",
        env = "ARGO_EXPORTER_SHARD_INDEX",
        default_value_t = 0
    )]
    pub shard_index: u32,

    /// How many replicas share the zones: each zone goes to exactly one, by
    /// its ID, the same way across restarts and versions.
    #[arg(
        long = "shard.count",
        value_name = "N",
        env = "ARGO_EXPORTER_SHARD_COUNT",
        default_value_t = 1,
        value_parser = clap::value_parser!(u32).range(1..=1024)
    )]
    pub shard_count: u32,
}

/// How to reach the Cloudflare API.
#[derive(Debug, Args)]
pub struct ApiArgs {
    /// Read the Cloudflare API token from this file (trailing newline trimmed)
    /// instead of CLOUDFLARE_API_TOKEN.
    #[arg(
        long = "cloudflare.api-token-file",
        value_name = "PATH",
        env = "CLOUDFLARE_API_TOKEN_FILE"
    )]
    pub api_token_file: Option<PathBuf>,

    /// Base URL of the Cloudflare v4 API.
    #[arg(
        long = "cloudflare.api-url",
        value_name = "URL",
        env = "CLOUDFLARE_API_URL",
        default_value = crate::config::DEFAULT_API_URL
    )]
    pub api_url: String,

    /// Time limit for one Cloudflare API request, connection included.
    #[arg(
        long = "cloudflare.timeout",
        value_name = "DURATION",
        env = "ARGO_EXPORTER_CLOUDFLARE_TIMEOUT",
        default_value = "10s",
        value_parser = parse_positive_duration
    )]
    pub timeout: Duration,

    /// Most Cloudflare API requests to make per time window, shared by every
    /// request of the process. Cloudflare allows 1200 per 5 minutes per user.
    #[arg(
        long = "cloudflare.rate-limit",
        value_name = "COUNT/DURATION",
        env = "ARGO_EXPORTER_CLOUDFLARE_RATE_LIMIT",
        default_value = "1000/5m"
    )]
    pub rate_limit: RateLimit,
}

/// Alerts sent by the daemon itself, and automatic re-enabling.
#[derive(Debug, Args)]
pub struct AlertingArgs {
    /// Alertmanager to send the unexpected-disable alert to, as soon as a poll
    /// sees it (e.g. http://alertmanager:9093). Repeat for an HA pair.
    #[arg(
        long = "alertmanager.url",
        value_name = "URL",
        env = "ARGO_EXPORTER_ALERTMANAGER_URLS",
        value_delimiter = ','
    )]
    pub alertmanager_urls: Vec<String>,

    /// Turn Argo back on, through the API, on a zone expected on that is
    /// found off and editable, once it has been off for --enforce.grace.
    #[arg(
        long = "enforce",
        env = "ARGO_EXPORTER_ENFORCE",
        value_parser = BoolishValueParser::new()
    )]
    pub enforce: bool,

    /// How long a zone must stay off before --enforce turns it back on, and
    /// the least time between two attempts on the same zone.
    #[arg(
        long = "enforce.grace",
        value_name = "DURATION",
        env = "ARGO_EXPORTER_ENFORCE_GRACE",
        default_value = "5m",
        value_parser = parse_positive_duration
    )]
    pub enforce_grace: Duration,
}

#[derive(Debug, Args)]
pub struct DiscoveryArgs {
    /// Watch every zone the token can list, besides any --zone.
    #[arg(
        long = "zones.discover",
        env = "ARGO_EXPORTER_ZONES_DISCOVER",
        value_parser = BoolishValueParser::new()
    )]
    pub discover: bool,

    /// Discover only the zones of this account (its 32-character ID).
    #[arg(
        long = "zones.account-id",
        value_name = "ID",
        env = "ARGO_EXPORTER_ZONES_ACCOUNT_ID",
        value_parser = parse_account_id
    )]
    pub account_id: Option<String>,

    /// Discover only zones whose name matches this regular expression.
    #[arg(
        long = "zones.include",
        value_name = "REGEX",
        env = "ARGO_EXPORTER_ZONES_INCLUDE",
        value_parser = parse_regex
    )]
    pub include: Option<Regex>,

    /// Skip discovered zones whose name matches this regular expression.
    #[arg(
        long = "zones.exclude",
        value_name = "REGEX",
        env = "ARGO_EXPORTER_ZONES_EXCLUDE",
        value_parser = parse_regex
    )]
    pub exclude: Option<Regex>,

    /// Discover only zones with this status ("any" for all).
    #[arg(
        long = "zones.status",
        value_name = "STATUS",
        env = "ARGO_EXPORTER_ZONES_STATUS",
        default_value = "active",
        value_parser = ["active", "pending", "initializing", "moved", "any"]
    )]
    pub status: String,

    /// How often discovery runs again and unresolved zone names are retried.
    #[arg(
        long = "zones.refresh-interval",
        value_name = "DURATION",
        env = "ARGO_EXPORTER_ZONES_REFRESH_INTERVAL",
        default_value = "10m",
        value_parser = parse_positive_duration
    )]
    pub refresh_interval: Duration,
}

#[derive(Debug, Args)]
pub struct PollArgs {
    /// How often every zone is polled.
    #[arg(
        long = "poll.interval",
        value_name = "DURATION",
        env = "ARGO_EXPORTER_POLL_INTERVAL",
        default_value = "60s",
        value_parser = parse_positive_duration
    )]
    pub interval: Duration,

    /// How many zones are polled at the same time.
    #[arg(
        long = "poll.concurrency",
        value_name = "N",
        env = "ARGO_EXPORTER_POLL_CONCURRENCY",
        default_value_t = 8,
        value_parser = clap::value_parser!(u16).range(1..=256)
    )]
    pub concurrency: u16,
}

#[derive(Debug, Args)]
pub struct WebArgs {
    /// Address to serve metrics on: HOST:PORT, or :PORT for every interface.
    #[arg(
        long = "web.listen-address",
        value_name = "ADDRESS",
        env = "ARGO_EXPORTER_WEB_LISTEN_ADDRESS",
        default_value = DEFAULT_LISTEN_ADDRESS
    )]
    pub listen_address: String,

    /// Path under which metrics are served.
    #[arg(
        long = "web.telemetry-path",
        value_name = "PATH",
        env = "ARGO_EXPORTER_WEB_TELEMETRY_PATH",
        default_value = "/metrics"
    )]
    pub telemetry_path: String,

    /// YAML file with TLS and basic auth settings, in the Prometheus
    /// exporter-toolkit format (tls_server_config, basic_auth_users).
    #[arg(
        long = "web.config.file",
        value_name = "PATH",
        env = "ARGO_EXPORTER_WEB_CONFIG_FILE"
    )]
    pub web_config_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct LogArgs {
    /// Only log messages with this severity or above.
    #[arg(
        long = "log.level",
        value_name = "LEVEL",
        env = "ARGO_EXPORTER_LOG_LEVEL",
        default_value = "info"
    )]
    pub level: LogLevel,

    /// Output format of log lines (written to standard error).
    #[arg(
        long = "log.format",
        value_name = "FORMAT",
        env = "ARGO_EXPORTER_LOG_FORMAT",
        default_value = "logfmt"
    )]
    pub format: LogFormat,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    #[command(flatten)]
    pub poll: PollArgs,

    #[command(flatten)]
    pub web: WebArgs,

    #[command(flatten)]
    pub alerting: AlertingArgs,

    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// Number of zones to simulate (at most 1,000,000). Zone N (counting
    /// from 1) has the ID `printf '%032x' N` and the name zone-N.example.com.
    #[arg(
        long = "zones",
        value_name = "N",
        default_value_t = 100,
        value_parser = clap::value_parser!(u32).range(1..=1_000_000)
    )]
    pub zones: u32,

    /// Address the simulator listens on.
    #[arg(
        long = "web.listen-address",
        value_name = "ADDRESS",
        default_value = "127.0.0.1:9833"
    )]
    pub listen_address: String,

    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Logfmt,
    Json,
}

fn parse_regex(text: &str) -> Result<Regex, String> {
    // The regex crate draws the pattern with a caret under the fault over
    // several lines; its last line says what the fault is.
    Regex::new(text).map_err(|err| {
        let message = err.to_string();
        let reason = message.lines().last().unwrap_or_default();
        let reason = reason.strip_prefix("error: ").unwrap_or(reason);
        format!("not a regular expression: {reason}")
    })
}

fn parse_account_id(text: &str) -> Result<String, String> {
    let well_formed = text.len() == 32 && text.bytes().all(|b| b.is_ascii_hexdigit());
    if well_formed {
        Ok(text.to_ascii_lowercase())
    } else {
        Err("an account ID is 32 hexadecimal characters".to_owned())
    }
}

/// The longest duration any flag takes: longer ones are surely typos, and
/// would overflow time arithmetic if taken at their word.
pub const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text).map_err(|err| err.to_string())?;
    if duration.is_zero() {
        return Err("must be longer than zero".to_owned());
    }
    if duration > MAX_DURATION {
        return Err("must be at most a week".to_owned());
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_with_defaults() {
        let cli = Cli::try_parse_from(["cloudflare-argo-exporter"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.exporter.poll.interval, Duration::from_secs(60));
        assert_eq!(cli.exporter.poll.concurrency, 8);
        assert_eq!(cli.exporter.api.timeout, Duration::from_secs(10));
        assert_eq!(cli.exporter.web.listen_address, ":9832");
        assert_eq!(cli.exporter.web.telemetry_path, "/metrics");
        assert_eq!(cli.exporter.log.format, LogFormat::Logfmt);
    }

    #[test]
    fn zone_flag_repeats_and_splits_on_commas() {
        let a = "0123456789abcdef0123456789abcdef";
        let b = "fedcba9876543210fedcba9876543210";
        let cli = Cli::try_parse_from([
            "cloudflare-argo-exporter",
            "--zone",
            a,
            "--zone",
            &format!("{b},{a}"),
        ])
        .unwrap();
        let zones: Vec<String> = cli
            .exporter
            .sources
            .zones
            .iter()
            .map(ZoneRef::to_string)
            .collect();
        assert_eq!(zones, [a, b, a]);
    }

    #[test]
    fn bad_zone_id_is_refused_naming_the_value() {
        let err = Cli::try_parse_from(["cloudflare-argo-exporter", "--zone", "example com"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("example com"), "{err}");
        assert!(err.contains("--zone"), "{err}");
    }

    #[test]
    fn zone_names_are_accepted() {
        let cli =
            Cli::try_parse_from(["cloudflare-argo-exporter", "--zone", "example.com"]).unwrap();
        assert_eq!(
            cli.exporter.sources.zones,
            [ZoneRef::Name("example.com".to_owned())]
        );
    }

    #[test]
    fn discovery_flags() {
        let cli = Cli::try_parse_from([
            "cloudflare-argo-exporter",
            "--zones.discover",
            "--zones.include",
            "^shop",
            "--zones.refresh-interval",
            "5m",
            "--cloudflare.rate-limit",
            "50/1s",
        ])
        .unwrap();
        let discovery = &cli.exporter.sources.discovery;
        assert!(discovery.discover);
        assert!(discovery
            .include
            .as_ref()
            .unwrap()
            .is_match("shop.example.com"));
        assert_eq!(discovery.status, "active");
        assert_eq!(discovery.refresh_interval, Duration::from_secs(300));
        assert_eq!(cli.exporter.api.rate_limit.count, 50);

        for (flag, value) in [
            ("--zones.include", "(unclosed"),
            ("--zones.status", "sleeping"),
            ("--zones.account-id", "acct"),
            ("--cloudflare.rate-limit", "1000"),
        ] {
            let err = Cli::try_parse_from(["cloudflare-argo-exporter", flag, value])
                .unwrap_err()
                .to_string();
            assert!(err.contains(flag), "{err}");
        }
    }

    #[test]
    fn absurd_durations_are_refused() {
        for flag in [
            "--poll.interval",
            "--cloudflare.timeout",
            "--zones.refresh-interval",
        ] {
            let err = Cli::try_parse_from(["cloudflare-argo-exporter", flag, "1000years"])
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(flag) && err.contains("at most a week"),
                "{err}"
            );
        }
        let err = Cli::try_parse_from([
            "cloudflare-argo-exporter",
            "--cloudflare.rate-limit",
            "5/1000years",
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("--cloudflare.rate-limit"), "{err}");
    }

    #[test]
    fn zero_interval_is_refused() {
        let err = Cli::try_parse_from(["cloudflare-argo-exporter", "--poll.interval", "0s"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--poll.interval"), "{err}");
    }

    #[test]
    fn exporter_flags_do_not_mix_with_subcommands() {
        let zone = "0123456789abcdef0123456789abcdef";
        assert!(Cli::try_parse_from(["cloudflare-argo-exporter", "--zone", zone, "demo"]).is_err());
    }
}
