//! Command-line flags of `herald-controller`, each with an environment-variable equivalent.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use herald_config::process::LogFormat;

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
    /// Rewrite MetalLB's layer-2 configuration (metallb.io/v1beta1 IPAddressPools and
    /// L2Advertisements, and Services' metallb.io / metallb.universe.tf annotations) as
    /// Herald's, print it as YAML, and list on stderr what was refused, what behaves
    /// differently and what was left out; then `check` the result. Exits 1 if anything was
    /// refused or check finds a problem. Reads `kubectl get -o yaml` output as well as files.
    Migrate {
        /// MetalLB's namespace: its configuration objects elsewhere were never served.
        #[arg(long, default_value = herald_config::migrate::METALLB_NAMESPACE)]
        from_namespace: String,
        /// YAML files to migrate together (`-` reads standard input).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(clap::Args, Debug, Clone)]
pub struct Config {
    /// Namespace the IPAddressPools (and the speakers' shared secret) live in.
    #[arg(long, env = "HERALD_NAMESPACE", default_value = herald_config::deploy::NAMESPACE)]
    pub namespace: String,
    /// `spec.loadBalancerClass` handled besides Services with no class.
    #[arg(long, env = "HERALD_LB_CLASS", default_value = herald_config::DEFAULT_LB_CLASS)]
    pub lb_class: String,
    /// Address of the HTTP server for /metrics, /healthz and /readyz.
    #[arg(long, env = "HERALD_METRICS_ADDR", default_value_t = SocketAddr::from(([0, 0, 0, 0], herald_config::deploy::CONTROLLER_METRICS_PORT)))]
    pub metrics_addr: SocketAddr,
    /// Log format.
    #[arg(long, env = "HERALD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Name of the Secret holding the speakers' shared key, filled with a random key if empty.
    #[arg(long, env = "HERALD_SPEAKER_SECRET", default_value = herald_config::deploy::SPEAKER_SECRET)]
    pub speaker_secret: String,
    /// Elect one writing replica through a Lease; the others stand by, state rebuilt, writing
    /// nothing. `--leader-elect=false` for a single replica that always writes.
    #[arg(long, env = "HERALD_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true")]
    pub leader_elect: bool,
    /// How long standbys wait after the Lease last changed before taking it over.
    #[arg(long, env = "HERALD_LEADER_ELECT_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    pub leader_elect_lease_duration: Duration,
    /// How long a leader keeps writing without a successful renewal before it steps down.
    #[arg(long, env = "HERALD_LEADER_ELECT_RENEW_DEADLINE", default_value = "10s", value_parser = parse_duration)]
    pub leader_elect_renew_deadline: Duration,
    /// How often the leader renews and standbys look at the Lease.
    #[arg(long, env = "HERALD_LEADER_ELECT_RETRY_PERIOD", default_value = "2s", value_parser = parse_duration)]
    pub leader_elect_retry_period: Duration,
    /// Name of the Lease (in `--namespace`). The shipped RBAC allows only `herald-controller`.
    #[arg(long, env = "HERALD_LEADER_ELECT_LEASE_NAME", default_value = herald_config::deploy::CONTROLLER)]
    pub leader_elect_lease_name: String,
    /// This replica's pod name, the base of its leader-election identity (default: hostname).
    #[arg(long, env = "HERALD_POD_NAME")]
    pub pod_name: Option<String>,
}

impl Config {
    /// The leader-election timing, checked (`lease > renew deadline > retry period > 0`).
    pub fn election_timing(&self) -> Result<crate::leader::Timing, crate::leader::TimingError> {
        let timing = crate::leader::Timing {
            lease_duration: self.leader_elect_lease_duration,
            renew_deadline: self.leader_elect_renew_deadline,
            retry_period: self.leader_elect_retry_period,
        };
        timing.check().map(|()| timing)
    }
}

/// A duration as Kubernetes flags spell it: a decimal number and a unit (`ms`, `s`, `m`, `h`),
/// e.g. `15s`, `1.5s`, `300ms`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("{text:?}: needs a unit (ms, s, m or h)"))?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?}: {number:?} is not a number"))?;
    let scale = match unit {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (ms, s, m or h)")),
    };
    Duration::try_from_secs_f64(number * scale).map_err(|e| format!("{text:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_as_kubernetes_flags_spell_them() {
        assert_eq!(parse_duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("300ms"), Ok(Duration::from_millis(300)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("15").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn leader_election_is_on_by_default_with_kubernetes_timing() {
        let cli = Cli::try_parse_from(["herald-controller"]).unwrap();
        let c = cli.config;
        assert!(c.leader_elect);
        assert_eq!(c.leader_elect_lease_name, "herald-controller");
        assert_eq!(c.election_timing(), Ok(crate::leader::Timing::default()));
        let off = Cli::try_parse_from(["herald-controller", "--leader-elect=false"]).unwrap();
        assert!(!off.config.leader_elect);
        let bare = Cli::try_parse_from(["herald-controller", "--leader-elect"]).unwrap();
        assert!(bare.config.leader_elect);
        let bad = Cli::try_parse_from(["herald-controller", "--leader-elect-renew-deadline", "20s"]).unwrap();
        assert!(bad.config.election_timing().is_err());
    }
}
