//! `herald-controller`: parses flags, sets up logging, and runs the reconciler until SIGTERM;
//! or runs one of the offline commands (`check`, `migrate`), which write only their output.

use std::process::ExitCode;

use clap::Parser;
use herald_controller::config::{Cli, Command, Config, LogFormat};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Check { files }) => herald_controller::check::run(&files, &cli.config.namespace),
        Some(Command::Migrate { from_namespace, files }) => {
            herald_controller::check::migrate(&files, &from_namespace, &cli.config.namespace)
        }
        None => serve(cli.config),
    }
}

fn serve(config: Config) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("herald-controller: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(run(config));
    tracing::info!("exiting");
    // Background tasks (watches, servers) end with the process instead of being waited for.
    runtime.shutdown_background();
    code
}

async fn run(config: Config) -> ExitCode {
    let filter = EnvFilter::try_from_env("HERALD_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter);
    match config.log_format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Text => logs.init(),
    }
    match herald_controller::run(config, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "herald-controller stopped");
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
