//! Log set-up: `logfmt` or JSON lines on standard error, filtered by level.

use tracing_subscriber::filter::{EnvFilter, LevelFilter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::cli::{LogFormat, LogLevel};
use crate::config::LogConfig;

/// Installs the global subscriber. Call once, at the start of `main`.
pub fn init(config: LogConfig) {
    let level = match config.level {
        LogLevel::Error => LevelFilter::ERROR,
        LogLevel::Warn => LevelFilter::WARN,
        LogLevel::Info => LevelFilter::INFO,
        LogLevel::Debug => LevelFilter::DEBUG,
        LogLevel::Trace => LevelFilter::TRACE,
    };
    // The HTTP libraries log every connection at debug; keep them at warn
    // (or quieter, if asked) unless the user asks for trace.
    let mut filter = EnvFilter::default().add_directive(level.into());
    if config.level != LogLevel::Trace {
        let quiet = level.min(LevelFilter::WARN);
        for noisy in ["hyper", "hyper_util", "reqwest", "h2", "rustls"] {
            if let Ok(directive) = format!("{noisy}={quiet}").parse() {
                filter = filter.add_directive(directive);
            }
        }
    }

    let registry = tracing_subscriber::registry().with(filter);
    match config.format {
        LogFormat::Logfmt => registry
            .with(
                tracing_logfmt::builder()
                    .layer()
                    .with_writer(std::io::stderr),
            )
            .init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(std::io::stderr),
            )
            .init(),
    }
}
