//! `herald-lab`: Herald's lab command line. Each subcommand parses its typed arguments
//! and calls into the `herald_e2e` library; nothing else lives here.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use herald_e2e::apiserver::{ApiServer, ApiServerConfig};
use herald_e2e::bench::{BenchConfig, run_bench};

#[derive(Parser)]
#[command(
    name = "herald-lab",
    about = "Herald's lab: stand-in API server, topologies, demos, benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the in-memory Kubernetes API server until SIGINT/SIGTERM.
    Apiserver(ApiserverArgs),
    /// Load-test the lab API server with concurrent kube-rs clients and watchers.
    BenchApiserver(BenchArgs),
}

#[derive(Args)]
struct ApiserverArgs {
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, env = "HERALD_LAB_LISTEN", default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// Where to write a kubeconfig for kubectl and Herald's binaries.
    #[arg(long, env = "HERALD_LAB_KUBECONFIG")]
    kubeconfig: PathBuf,
    /// Bearer token clients must present.
    #[arg(long, env = "HERALD_LAB_TOKEN")]
    token: Option<String>,
    /// File to keep objects in across restarts.
    #[arg(long, env = "HERALD_LAB_STATE")]
    state: Option<PathBuf>,
    /// Number of changes kept for watches that resume (older versions get 410 Gone).
    #[arg(long, env = "HERALD_LAB_HISTORY", default_value_t = 10_000)]
    history: usize,
}

#[derive(Args)]
struct BenchArgs {
    /// Services to create.
    #[arg(long, default_value_t = 1000)]
    services: usize,
    /// Concurrent creating clients.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Open watchers on services.
    #[arg(long, default_value_t = 10)]
    watchers: usize,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    match Cli::parse().command {
        Command::Apiserver(args) => run_apiserver(args).await,
        Command::BenchApiserver(args) => {
            let report = run_bench(BenchConfig {
                services: args.services,
                clients: args.clients,
                watchers: args.watchers,
            })
            .await?;
            println!("{}", report.summary());
            if let Some(path) = args.json {
                std::fs::write(&path, serde_json::to_vec_pretty(&report)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            Ok(())
        }
    }
}

async fn run_apiserver(args: ApiserverArgs) -> anyhow::Result<()> {
    let config = ApiServerConfig {
        listen: args.listen,
        token: args.token,
        state_file: args.state,
        history_limit: args.history,
        ..ApiServerConfig::local()
    };
    let server = ApiServer::start(config).await.context("starting the lab apiserver")?;
    server
        .write_kubeconfig(&args.kubeconfig)
        .context("writing the kubeconfig")?;
    println!(
        "herald-lab apiserver listening on {} (kubeconfig: {})",
        server.url(),
        args.kubeconfig.display()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing SIGTERM handler")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    server.shutdown().await;
    Ok(())
}
