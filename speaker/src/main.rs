//! `herald-speaker`: parses flags, sets up logging, and runs the speaker until SIGTERM, when it
//! hands its IPs to their next owners before exiting.

use std::process::ExitCode;

use clap::Parser;
use herald_speaker::config::{Command, Config, LogFormat};
use tracing_subscriber::EnvFilter;

/// glibc's allocator spent a third of a pass at 10,000 Services in `malloc_consolidate` and
/// its free-list walks (perf, lab); mimalloc keeps small allocations cheap in a large heap.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("herald-speaker: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(run());
    tracing::info!("exiting");
    // Background tasks (watches, servers) end with the process instead of being waited for.
    runtime.shutdown_background();
    code
}

async fn run() -> ExitCode {
    let config = Config::parse();
    let filter = EnvFilter::try_from_env("HERALD_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter);
    match config.log_format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Text => logs.init(),
    }
    if config.command == Some(Command::Cleanup) {
        let pin_dir = config.pin_dir();
        return match herald_speaker::dataplane::remove_pinned(&pin_dir) {
            Ok(()) => {
                tracing::info!(pin_dir = %pin_dir.display(), "removed Herald's pinned eBPF programs and maps");
                ExitCode::SUCCESS
            }
            Err(e) => {
                tracing::error!(error = %e, "cleanup failed");
                ExitCode::FAILURE
            }
        };
    }
    match herald_speaker::run::run(config, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "herald-speaker stopped");
            ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
    tracing::info!("shutdown requested");
}
