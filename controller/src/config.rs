//! Command-line flags of `herald-controller`, each with an environment-variable equivalent.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Allocates LoadBalancer IPs from IPAddressPools and writes them to Services.
#[derive(Parser, Debug, Clone)]
#[command(name = "herald-controller", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub config: Config,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug, Clone)]
pub enum Command {
    /// Judge manifests (IPAddressPools, L2Advertisements, Services) as the controller would once
    /// they are applied, and print every problem. Exits 1 if there is any.
    Check {
        /// YAML files to check together (overlaps between pools of different files count).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(clap::Args, Debug, Clone)]
pub struct Config {
    /// Namespace the IPAddressPools (and the speakers' shared secret) live in.
    #[arg(long, env = "HERALD_NAMESPACE", default_value = "herald-system")]
    pub namespace: String,
    /// `spec.loadBalancerClass` handled besides Services with no class.
    #[arg(long, env = "HERALD_LB_CLASS", default_value = herald_config::DEFAULT_LB_CLASS)]
    pub lb_class: String,
    /// Address of the HTTP server for /metrics, /healthz and /readyz.
    #[arg(long, env = "HERALD_METRICS_ADDR", default_value = "0.0.0.0:7472")]
    pub metrics_addr: SocketAddr,
    /// Log format.
    #[arg(long, env = "HERALD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Name of the Secret holding the speakers' shared key, filled with a random key if empty.
    #[arg(long, env = "HERALD_SPEAKER_SECRET", default_value = "herald-speaker-auth")]
    pub speaker_secret: String,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}
