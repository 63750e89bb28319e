//! Command-line flags of `herald-speaker`, each with an environment-variable equivalent.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use herald_config::process::LogFormat;

use crate::membership::MembershipConfig;

/// Elects an owner per LoadBalancer IP with the other speakers and announces the IPs it owns.
#[derive(Parser, Debug, Clone)]
#[command(name = "herald-speaker", version, about)]
pub struct Config {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// This node's name (the DaemonSet passes `spec.nodeName`).
    #[arg(long, env = "HERALD_NODE_NAME")]
    pub node_name: String,
    /// Namespace of Herald's configuration, the speakers' Secret and the ServiceL2Status objects.
    #[arg(long, env = "HERALD_NAMESPACE", default_value = herald_config::deploy::NAMESPACE)]
    pub namespace: String,
    /// `spec.loadBalancerClass` handled besides Services with no class.
    #[arg(long, env = "HERALD_LB_CLASS", default_value = herald_config::DEFAULT_LB_CLASS)]
    pub lb_class: String,
    /// Port of the speaker-to-speaker gRPC protocol, on every node.
    #[arg(long, env = "HERALD_PEER_PORT", default_value_t = herald_config::deploy::SPEAKER_PEER_PORT)]
    pub peer_port: u16,
    /// Address peers reach this speaker at (the DaemonSet passes the pod IP, which is the
    /// node's with host networking); default: this Node's InternalIP from the API.
    #[arg(long, env = "HERALD_POD_IP")]
    pub advertise_address: Option<std::net::IpAddr>,
    /// Address of the HTTP server for /metrics, /healthz and /readyz.
    #[arg(long, env = "HERALD_METRICS_ADDR", default_value_t = SocketAddr::from(([0, 0, 0, 0], herald_config::deploy::SPEAKER_METRICS_PORT)))]
    pub metrics_addr: SocketAddr,
    /// Log format.
    #[arg(long, env = "HERALD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Secret (in --namespace) whose `secretkey` authenticates speaker messages.
    #[arg(long, env = "HERALD_SPEAKER_SECRET", default_value = herald_config::deploy::SPEAKER_SECRET)]
    pub speaker_secret: String,
    /// The DaemonSet this speaker runs in (in --namespace). Its ServiceL2Status objects are
    /// owned by it, so they go with it; a speaker that stops while it is gone or being deleted
    /// (an uninstall) removes its eBPF programs and maps instead of leaving them pinned for a
    /// successor.
    #[arg(long, env = "HERALD_DAEMONSET")]
    pub daemonset: Option<String>,
    /// Label selector of the speaker Pods (in --namespace): the peers are the Ready Nodes that
    /// run one, so nodes without a speaker are never waited for or probed.
    #[arg(
        long,
        env = "HERALD_SPEAKER_SELECTOR",
        default_value = herald_config::deploy::SPEAKER_POD_SELECTOR
    )]
    pub speaker_selector: String,
    /// Announce only on these interfaces (comma-separated), overriding the default selection
    /// (every up, broadcast-capable interface that is not a bridge/bond member or a
    /// container device).
    #[arg(long, env = "HERALD_INTERFACES", value_delimiter = ',')]
    pub interfaces: Vec<String>,
    /// `ebpf`: forward LoadBalancer IPs and NodePorts with the embedded eBPF service map;
    /// `off`: announce only (when kube-proxy or another dataplane forwards). If eBPF cannot be
    /// loaded the speaker says why and runs announce-only.
    #[arg(long, env = "HERALD_DATAPLANE", value_enum, default_value_t = DataplaneMode::Ebpf)]
    pub dataplane: DataplaneMode,
    /// Directory on a bpf filesystem under which this node's maps and links are pinned (in
    /// `<root>/<node name>`), so a restarted speaker resumes them.
    #[arg(long, env = "HERALD_BPF_PIN_ROOT", default_value = "/sys/fs/bpf/herald")]
    pub bpf_pin_root: std::path::PathBuf,
    /// How backends on other nodes are reached (Cluster policy). `dsr`: the client's packet is
    /// tunnelled (IPIP / IP6IP6) to the backend's node, which answers the client directly:
    /// backends see the client's address and flows survive the loss of the owner node; nodes
    /// whose speaker is dead or known to run announce-only are reached with SNAT, and so are
    /// NodePorts. `snat`: the source becomes this node's address, for networks that drop
    /// packets from the LB IP leaving other nodes (anti-spoofing switch ports, stateful
    /// firewalls that see one direction of a flow).
    #[arg(long, env = "HERALD_FORWARDING", value_enum, default_value_t = ForwardingMode::Dsr)]
    pub forwarding: ForwardingMode,
    /// Source ports of SNATed flows, FIRST-LAST; must lie outside net.ipv4.ip_local_port_range.
    /// Changing it breaks the SNATed flows that hold a port outside the new range.
    #[arg(long, env = "HERALD_SNAT_PORTS", default_value = "10000-29999")]
    pub snat_ports: crate::dataplane::SnatPorts,
    /// Slow round-robin probe interval (all members not watched closely share it).
    #[arg(long, env = "HERALD_PROBE_INTERVAL", value_parser = parse_duration, default_value = "1s")]
    pub probe_interval: Duration,
    /// Probe interval of the members this node would take over from.
    #[arg(long, env = "HERALD_WATCH_PROBE_INTERVAL", value_parser = parse_duration, default_value = "40ms")]
    pub watch_probe_interval: Duration,
    /// How long to wait for a probe's answer before suspecting a member.
    #[arg(long, env = "HERALD_PROBE_TIMEOUT", value_parser = parse_duration, default_value = "50ms")]
    pub probe_timeout: Duration,
    /// How long a suspected member has to show a sign of life before it is declared dead.
    #[arg(long, env = "HERALD_SUSPICION_TIMEOUT", value_parser = parse_duration, default_value = "70ms")]
    pub suspicion_timeout: Duration,
    /// How long a node back from a partition in which it was cut off from most of the cluster
    /// ranks after the other nodes, so its IPs return to it once rather than at every flap of the
    /// link that came back (0s: at once).
    #[arg(long, env = "HERALD_REJOIN_HOLD", value_parser = parse_hold, default_value = "3s")]
    pub rejoin_hold: Duration,
}

/// What to do instead of running the speaker.
#[derive(clap::Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Detach and remove the eBPF programs and maps a speaker pinned for this node (under
    /// --bpf-pin-root/--node-name), e.g. after uninstalling Herald, then exit.
    Cleanup,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataplaneMode {
    Ebpf,
    Off,
}

/// `--forwarding`.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardingMode {
    Dsr,
    Snat,
}

impl From<ForwardingMode> for crate::dataplane::Forwarding {
    fn from(mode: ForwardingMode) -> Self {
        match mode {
            ForwardingMode::Dsr => crate::dataplane::Forwarding::Dsr,
            ForwardingMode::Snat => crate::dataplane::Forwarding::Snat,
        }
    }
}

impl Config {
    /// This node's pin directory.
    pub fn pin_dir(&self) -> std::path::PathBuf {
        self.bpf_pin_root.join(&self.node_name)
    }

    /// Membership settings from the flags; the rest keep their defaults.
    pub fn membership(&self, advertise: std::net::IpAddr) -> MembershipConfig {
        MembershipConfig {
            // Only the node's own address: peers reach it there, and nothing else should.
            listen: SocketAddr::new(advertise, self.peer_port),
            advertise_address: Some(SocketAddr::new(advertise, self.peer_port)),
            probe_interval: self.probe_interval,
            watch_probe_interval: self.watch_probe_interval,
            probe_timeout: self.probe_timeout,
            suspicion_timeout: self.suspicion_timeout,
            rejoin_hold: self.rejoin_hold,
            ..MembershipConfig::default()
        }
    }
}

/// `250ms`, `1s`, `1.5s`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = if let Some(n) = text.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else {
        return Err(format!("{text:?}: give a unit, e.g. 250ms or 1s"));
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (e.g. 250ms or 1s)"))?;
    if !(value.is_finite() && value > 0.0) {
        return Err(format!("{text:?}: the duration must be positive"));
    }
    Duration::try_from_secs_f64(value * unit).map_err(|_| format!("{text:?} is too long a duration"))
}

/// [`parse_duration`], or zero (`0s`, `0ms`, `0`): a hold that can be switched off.
pub fn parse_hold(text: &str) -> Result<Duration, String> {
    match text.trim() {
        "0" | "0s" | "0ms" => Ok(Duration::ZERO),
        _ => parse_duration(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_defaults_are_membership_defaults() {
        let config = Config::parse_from(["herald-speaker", "--node-name", "n1"]);
        let flags = config.membership("10.0.0.1".parse().unwrap());
        let defaults = MembershipConfig::default();
        assert_eq!(flags.probe_interval, defaults.probe_interval);
        assert_eq!(flags.watch_probe_interval, defaults.watch_probe_interval);
        assert_eq!(flags.probe_timeout, defaults.probe_timeout);
        assert_eq!(flags.suspicion_timeout, defaults.suspicion_timeout);
        assert_eq!(flags.rejoin_hold, defaults.rejoin_hold);
        assert_eq!(flags.advertise_address, Some("10.0.0.1:7946".parse().unwrap()));
        assert_eq!(
            flags.listen,
            "10.0.0.1:7946".parse().unwrap(),
            "bound to the node address only"
        );
        assert_eq!(config.snat_ports, crate::dataplane::SnatPorts::default());
        assert_eq!(config.command, None);
        let cleanup = Config::parse_from(["herald-speaker", "--node-name", "n1", "cleanup"]);
        assert_eq!(cleanup.command, Some(Command::Cleanup));
        assert_eq!(config.forwarding, ForwardingMode::Dsr);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("5").unwrap_err(), "\"5\": give a unit, e.g. 250ms or 1s");
        assert_eq!(
            parse_duration("-1s").unwrap_err(),
            "\"-1s\": the duration must be positive"
        );
        assert_eq!(
            parse_duration("xs").unwrap_err(),
            "\"xs\" is not a duration (e.g. 250ms or 1s)"
        );
    }
}
