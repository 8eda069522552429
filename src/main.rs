//! The `cloudflare-argo-exporter` binary: parses the command line, sets up
//! logging, and hands the validated configuration to the library. A bad
//! flag, variable or file exits 64; a failure at run time exits 1; `check`,
//! `enable` and `disable` have exit codes of their own (see `commands`).

use std::process::ExitCode;

use clap::error::{ContextKind, ContextValue};
use clap::{CommandFactory, Parser};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use cloudflare_argo_exporter::cli::{
    ChangeArgs, Cli, Command, DemoArgs, ExporterArgs, HealthcheckArgs, OutputFormat, SimulateArgs,
    StatusArgs,
};
use cloudflare_argo_exporter::cloudflare::ArgoValue;
use cloudflare_argo_exporter::commands;
use cloudflare_argo_exporter::config::{
    parse_listen_address, AlertingConfig, ApiConfig, Config, LogConfig, PollConfig, WebConfig,
};
use cloudflare_argo_exporter::simulator::{Simulator, BASE_PATH};
use cloudflare_argo_exporter::zones::ZoneSources;
use cloudflare_argo_exporter::{demo, logging};

/// Exit code for a bad flag, environment variable or file (sysexits' EX_USAGE).
const EXIT_USAGE: u8 = 64;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) if !err.use_stderr() => {
            // --help and --version.
            let _ = err.print();
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            let message = one_line(&err.render().to_string());
            return usage_error(message + &env_origin(&err));
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => return failure(format!("cannot start the async runtime: {err}")),
    };
    match cli.command {
        None => runtime.block_on(exporter(cli.exporter)),
        Some(Command::Demo(args)) => runtime.block_on(demo(args)),
        Some(Command::Simulate(args)) => runtime.block_on(simulate(args)),
        Some(Command::Status(args)) => runtime.block_on(status(args, false)),
        Some(Command::Check(args)) => runtime.block_on(status(args, true)),
        Some(Command::Enable(args)) => runtime.block_on(change(args, ArgoValue::On)),
        Some(Command::Disable(args)) => runtime.block_on(change(args, ArgoValue::Off)),
        Some(Command::Healthcheck(args)) => runtime.block_on(healthcheck(args)),
    }
}

async fn exporter(args: ExporterArgs) -> ExitCode {
    logging::init(LogConfig::from(&args.log));
    let config = match Config::from_args(&args, env_var) {
        Ok(config) => config,
        Err(err) => return config_error(err),
    };
    let listener = match bind(&config.web.listen_address).await {
        Ok(listener) => listener,
        Err(code) => return code,
    };
    outcome(cloudflare_argo_exporter::run(config, listener, shutdown_signal()).await)
}

async fn demo(args: DemoArgs) -> ExitCode {
    logging::init(LogConfig::from(&args.log));
    let web = match WebConfig::from_args(&args.web) {
        Ok(web) => web,
        Err(err) => return config_error(err),
    };
    let alerting = match AlertingConfig::from_args(&args.alerting) {
        Ok(alerting) => alerting,
        Err(err) => return config_error(err),
    };
    let poll = PollConfig::from(&args.poll);
    let listener = match bind(&web.listen_address).await {
        Ok(listener) => listener,
        Err(code) => return code,
    };
    outcome(demo::run(poll, web, alerting, listener, shutdown_signal()).await)
}

/// `status` (prints every zone) and `check` (also sets the exit code).
async fn status(args: StatusArgs, check: bool) -> ExitCode {
    logging::init(LogConfig::from(&args.log));
    let (sources, api) = match (
        ZoneSources::from_args(&args.sources),
        ApiConfig::from_args(&args.api, env_var),
    ) {
        (Ok(sources), Ok(api)) => (sources, api),
        (Err(err), _) | (_, Err(err)) => return config_error(err),
    };
    let client = match commands::client(&api) {
        Ok(client) => client,
        Err(err) => return failure(err.to_string()),
    };
    let reports = commands::survey(&client, &sources).await;
    match args.output {
        OutputFormat::Table => print!("{}", commands::table(&reports)),
        OutputFormat::Json => match serde_json::to_string_pretty(&reports) {
            Ok(json) => println!("{json}"),
            Err(err) => return failure(format!("cannot write JSON: {err}")),
        },
    }
    if check {
        ExitCode::from(commands::check_exit_code(&reports))
    } else {
        ExitCode::SUCCESS
    }
}

/// `healthcheck`: exit 0 when the exporter's /healthz answers 200.
async fn healthcheck(args: HealthcheckArgs) -> ExitCode {
    let web = match WebConfig::from_args(&args.web) {
        Ok(web) => web,
        Err(err) => return config_error(err),
    };
    match commands::healthcheck(&web).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(reason) => failure(format!("unhealthy: {reason}")),
    }
}

/// `enable` and `disable`.
async fn change(args: ChangeArgs, value: ArgoValue) -> ExitCode {
    logging::init(LogConfig::from(&args.log));
    let api = match ApiConfig::from_args(&args.api, env_var) {
        Ok(api) => api,
        Err(err) => return config_error(err),
    };
    let client = match commands::client(&api) {
        Ok(client) => client,
        Err(err) => return failure(err.to_string()),
    };
    ExitCode::from(commands::change(&client, &args.zones, value, args.dry_run).await)
}

async fn simulate(args: SimulateArgs) -> ExitCode {
    logging::init(LogConfig::from(&args.log));
    let address = match parse_listen_address(&args.listen_address) {
        Ok(address) => address,
        Err(err) => return config_error(err),
    };
    let listener = match bind(&address).await {
        Ok(listener) => listener,
        Err(code) => return code,
    };
    let address = listener
        .local_addr()
        .map_or_else(|_| args.listen_address.clone(), |a| a.to_string());
    println!(
        "Simulating {} zones at http://{address}{BASE_PATH} (zone N has ID `printf '%032x' N`)",
        args.zones
    );
    let stop = CancellationToken::new();
    let trigger = stop.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        trigger.cancel();
    });
    Simulator::numbered(args.zones).serve(listener, stop).await;
    ExitCode::SUCCESS
}

async fn bind(address: &str) -> Result<TcpListener, ExitCode> {
    TcpListener::bind(address).await.map_err(|err| {
        failure(format!(
            "--web.listen-address: cannot listen on {address}: {err}"
        ))
    })
}

fn outcome(result: Result<(), cloudflare_argo_exporter::Error>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => failure(err.to_string()),
    }
}

fn usage_error(message: impl AsRef<str>) -> ExitCode {
    eprintln!("cloudflare-argo-exporter: {}", message.as_ref());
    ExitCode::from(EXIT_USAGE)
}

fn failure(message: impl AsRef<str>) -> ExitCode {
    eprintln!("cloudflare-argo-exporter: {}", message.as_ref());
    ExitCode::FAILURE
}

/// " (from VARIABLE)" when the refused value came from an environment
/// variable rather than the command line, so the user knows where to look.
fn env_origin(err: &clap::Error) -> String {
    let Some(ContextValue::String(shown)) = err.get(ContextKind::InvalidArg) else {
        return String::new();
    };
    origin_of(shown.split_whitespace().next().unwrap_or_default())
}

/// " (from VARIABLE)" when `--flag` was not on the command line but its
/// environment variable is set.
fn origin_of(long: &str) -> String {
    let on_command_line = std::env::args_os().any(|arg| {
        let arg = arg.to_string_lossy();
        arg == long || arg.starts_with(&format!("{long}="))
    });
    if on_command_line {
        return String::new();
    }
    let command = Cli::command();
    let variable = command
        .get_subcommands()
        .flat_map(|sub| sub.get_arguments())
        .chain(command.get_arguments())
        .find(|arg| {
            arg.get_long()
                .is_some_and(|name| long.strip_prefix("--") == Some(name))
        })
        .and_then(|arg| arg.get_env().map(|env| env.to_string_lossy().into_owned()));
    match variable {
        Some(variable) if std::env::var_os(&variable).is_some() => {
            format!(" (from {variable})")
        }
        _ => String::new(),
    }
}

/// A configuration error, with where its value came from when the message
/// names a flag whose value was set through its environment variable.
fn config_error(err: impl std::fmt::Display) -> ExitCode {
    let message = err.to_string();
    let flag = message
        .split(':')
        .next()
        .filter(|head| head.starts_with("--") && !head.contains(' '))
        .map(origin_of)
        .unwrap_or_default();
    usage_error(message + &flag)
}

/// Clap's message as one line: its first paragraph (the error and, for a
/// fixed set of values, the values allowed), without the usage and help
/// hints that follow.
fn one_line(text: &str) -> String {
    let paragraph: Vec<&str> = text
        .lines()
        .take_while(|line| !line.trim().is_empty())
        .map(str::trim)
        .collect();
    let joined = paragraph.join(" ");
    joined.strip_prefix("error: ").unwrap_or(&joined).to_owned()
}

/// An environment variable for the configuration. One that is not UTF-8 is
/// passed on with its odd bytes replaced, so it is refused for what it holds
/// rather than taken for unset.
fn env_var(name: &str) -> Option<String> {
    std::env::var_os(name).map(|value| value.to_string_lossy().into_owned())
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => {
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
    tracing::info!("shutdown signal received");
}
