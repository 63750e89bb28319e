//! `herald-controller`: parses flags, sets up logging, and runs the reconciler until SIGTERM;
//! or runs one of the offline commands (`check`, `migrate`), which write only their output.
use std::process::ExitCode;

use clap::Parser;
use herald_config::process;
use herald_controller::config::{Cli, Command, Config};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Check { files }) => herald_controller::check::run(&files, &cli.config.namespace),
        Some(Command::Migrate { from_namespace, files }) => {
            herald_controller::check::migrate(&files, &from_namespace, &cli.config.namespace)
        }
        None => process::run_to_exit("herald-controller", || serve(cli.config)),
    }
}

async fn serve(config: Config) -> ExitCode {
    process::init_logging(config.log_format);
    match herald_controller::run(config, process::shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = process::error_chain(&e), "herald-controller stopped");
            ExitCode::FAILURE
        }
    }
}
