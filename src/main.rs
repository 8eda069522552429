use std::process::ExitCode;

use clap::Parser;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use cloudflare_argo_exporter::cli::{Cli, Command, DemoArgs, ExporterArgs, SimulateArgs};
use cloudflare_argo_exporter::config::{Config, LogConfig, PollConfig, WebConfig};
use cloudflare_argo_exporter::simulator::{Simulator, BASE_PATH};
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
        Err(err) => return usage_error(first_line(&err.render().to_string())),
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => return failure(format!("cannot start the async runtime: {err}")),
    };
    match cli.command {
        None => runtime.block_on(exporter(cli.exporter)),
        Some(Command::Demo(args)) => runtime.block_on(demo(args)),
        Some(Command::Simulate(args)) => runtime.block_on(simulate(args)),
    }
}

async fn exporter(args: ExporterArgs) -> ExitCode {
    logging::init(LogConfig::from(&args.log));
    let config = match Config::from_args(&args, |name| std::env::var(name).ok()) {
        Ok(config) => config,
        Err(err) => return usage_error(err.to_string()),
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
        Err(err) => return usage_error(err.to_string()),
    };
    let poll = PollConfig::from(&args.poll);
    let listener = match bind(&web.listen_address).await {
        Ok(listener) => listener,
        Err(code) => return code,
    };
    outcome(demo::run(poll, web, listener, shutdown_signal()).await)
}

async fn simulate(args: SimulateArgs) -> ExitCode {
    logging::init(LogConfig::from(&args.log));
    let listener = match bind(&args.listen_address).await {
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

fn first_line(text: &str) -> &str {
    let line = text.lines().next().unwrap_or(text);
    line.strip_prefix("error: ").unwrap_or(line)
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
