//! `herald-speaker`: parses flags, sets up logging, and runs the speaker until SIGTERM, when it
//! hands its IPs to their next owners before exiting.
use std::process::ExitCode;

use clap::Parser;
use herald_config::process;
use herald_speaker::config::{Command, Config};

/// glibc's allocator spent a third of a pass at 10,000 Services in `malloc_consolidate` and
/// its free-list walks (perf, lab); mimalloc keeps small allocations cheap in a large heap.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let config = Config::parse();
    process::run_to_exit("herald-speaker", || run(config))
}

async fn run(config: Config) -> ExitCode {
    process::init_logging(config.log_format);
    if config.command == Some(Command::Cleanup) {
        let pin_dir = config.pin_dir();
        return match herald_speaker::dataplane::remove_pinned(&pin_dir) {
            Ok(()) => {
                tracing::info!(pin_dir = %pin_dir.display(), "removed Herald's pinned eBPF programs and maps");
                ExitCode::SUCCESS
            }
            Err(e) => {
                tracing::error!(error = process::error_chain(&e), "cleanup failed");
                ExitCode::FAILURE
            }
        };
    }
    match herald_speaker::run::run(config, process::shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = process::error_chain(&e), "herald-speaker stopped");
            ExitCode::FAILURE
        }
    }
}
