//! `herald-lab`: Herald's lab command line. Each subcommand parses its typed arguments
//! and calls into the `herald_e2e` library; nothing else lives here.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use herald_e2e::lab;

#[derive(Parser)]
#[command(
    name = "herald-lab",
    about = "Herald's lab: network-namespace clusters on a real Kubernetes control plane, demos, benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build a lab cluster from network namespaces and run Herald in it until Ctrl-C/SIGTERM.
    Up(UpArgs),
    /// Remove a lab (running or crashed): processes, namespaces, state directory.
    Down(DownArgs),
    /// The user's story: a lab, a pool, a Service reached from outside, its owner's speaker
    /// Pod force-deleted and then its node's cable pulled while a client sends requests;
    /// timeline pictures and a JSON summary.
    Demo(DemoArgs),
    /// Fault the owner repeatedly (--fault: its speaker killed or deleted, a rolling restart,
    /// its cable pulled, its speaker frozen) and report failover percentiles.
    FailoverBench(FailoverBenchArgs),
    /// Create many LoadBalancer Services at once and measure how fast herald-controller gives
    /// them addresses (latency, CPU, API requests per Service).
    BenchAllocation(BenchAllocationArgs),
    /// Speakers idle with Services announced while every core is kept busy: suspicions,
    /// deaths and ownership changes over the window (target: no death, no change).
    Soak(SoakArgs),
    /// Draw the shipped Grafana dashboard from a lab's real metrics (an SVG): the demo's
    /// Service under a steady client, a speaker Pod force-deleted, a node's cable pulled.
    Dashboard(DashboardArgs),
    /// Write Herald's OCI image (herald-controller, herald-speaker and the libraries they
    /// load) as an oci-archive, without a daemon or a registry.
    Image(ImageArgs),
    /// Backend pod program: HTTP and UDP servers answering with the pod name.
    #[command(hide = true)]
    Echo(EchoArgs),
    /// Relay TCP connections to the Unix socket in front of kube-apiserver (runs inside the lab).
    #[command(hide = true)]
    Relay(RelayArgs),
    /// Start a Pod's container (run by the lab's kubelet inside `ip netns exec`): bind-mount
    /// its volumes, then exec the program through setpriv with its user and capabilities.
    #[command(hide = true)]
    Container(ContainerArgs),
    /// Steady HTTP client: one new connection per interval, one JSON line per request.
    #[command(hide = true)]
    Probe(ProbeArgs),
}

#[derive(Args)]
struct ProbeArgs {
    /// HTTP server address.
    #[arg(long)]
    target: SocketAddr,
    #[arg(long, default_value_t = 10)]
    interval_ms: u64,
    #[arg(long, default_value_t = 10_000)]
    duration_ms: u64,
    #[arg(long, default_value_t = 200)]
    timeout_ms: u64,
}

#[derive(Args)]
struct UpArgs {
    /// Prefix of the lab's namespaces and state directory ([a-z][a-z0-9]*, at most 10 chars).
    #[arg(long, env = "HERALD_LAB_PREFIX", default_value = "hlab")]
    prefix: String,
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Parent directory of the lab's state directory.
    #[arg(long, env = "HERALD_LAB_STATE_ROOT", default_value = herald_e2e::lab::DEFAULT_STATE_ROOT)]
    state_root: PathBuf,
    /// Directory holding herald-controller, herald-speaker and herald-lab (default: next to this executable).
    #[arg(long, env = herald_e2e::lab::BIN_DIR_ENV)]
    bin_dir: Option<PathBuf>,
    /// Directory holding etcd, kube-apiserver, kube-controller-manager and kube-scheduler
    /// (default: the cache `make deps` built them into).
    #[arg(long, env = herald_e2e::lab::CONTROLPLANE_DIR_ENV)]
    controlplane_dir: Option<PathBuf>,
    /// The kubelet's first restart back-off, in milliseconds, for a container that exited.
    #[arg(long, default_value_t = 1000)]
    restart_delay_ms: u64,
    /// Do not start the speakers.
    #[arg(long)]
    no_speakers: bool,
    /// JSON logs from Herald's processes.
    #[arg(long)]
    json_logs: bool,
    /// Extra herald-speaker flag (repeat for more), e.g. --speaker-arg=--probe-interval=500ms.
    #[arg(long = "speaker-arg", allow_hyphen_values = true)]
    speaker_args: Vec<String>,
    /// Extra herald-controller flag (repeat for more).
    #[arg(long = "controller-arg", allow_hyphen_values = true)]
    controller_args: Vec<String>,
    /// Log filter for Herald's processes (their HERALD_LOG), e.g. `debug` or `herald_speaker=debug`.
    #[arg(long)]
    log: Option<String>,
    /// Write a description of the lab (namespaces, addresses, kubeconfigs, pids) here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args)]
struct DemoArgs {
    /// Prefix of the demo lab's namespaces.
    #[arg(long, default_value = "hdemo")]
    prefix: String,
    /// Directory for the timeline picture and the JSON summary.
    #[arg(long, default_value = "target/herald-demo")]
    out: PathBuf,
    /// Also write the summary here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args)]
struct DashboardArgs {
    /// Prefix of the lab's namespaces.
    #[arg(long, default_value = "hdash")]
    prefix: String,
    /// Where to write the SVG.
    #[arg(long, default_value = "target/herald-demo/dashboard.svg")]
    out: PathBuf,
}

#[derive(Args)]
struct FailoverBenchArgs {
    /// Prefix of the benchmark lab's namespaces.
    #[arg(long, default_value = "hbench")]
    prefix: String,
    /// Failovers to measure.
    #[arg(long, default_value_t = 20)]
    rounds: usize,
    /// What happens to the owner: its speaker killed or stopped gracefully, its speaker Pod
    /// deleted (gracefully or forced), a rolling restart, its cable pulled (node loss), or its
    /// speaker frozen.
    #[arg(long, value_enum, default_value_t = herald_e2e::story::Fault::Kill)]
    fault: herald_e2e::story::Fault,
    /// Write {"fault", "rounds", "kill_to_garp_ms": {p50, p99}, "kill_to_traffic_ms": {p50, p99}, ...}
    /// here (the times are from the fault, whatever it is).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Extra herald-speaker flag (repeat for more), e.g. --speaker-arg=--probe-timeout=100ms.
    #[arg(long = "speaker-arg", allow_hyphen_values = true)]
    speaker_args: Vec<String>,
}

#[derive(Args)]
struct SoakArgs {
    /// Prefix of the soak lab's namespaces.
    #[arg(long, default_value = "hsoak")]
    prefix: String,
    /// Length of the idle window.
    #[arg(long, default_value_t = 10.0)]
    minutes: f64,
    /// LoadBalancer Services announced (one backend on node1 serves them all).
    #[arg(long, default_value_t = 6)]
    services: usize,
    /// Threads spinning on the host during the window (default: one per core).
    #[arg(long)]
    busy_threads: Option<usize>,
    /// Also write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Extra herald-speaker flag (repeat for more), e.g. --speaker-arg=--probe-timeout=100ms.
    #[arg(long = "speaker-arg", allow_hyphen_values = true)]
    speaker_args: Vec<String>,
}

#[derive(Args)]
struct BenchAllocationArgs {
    /// Prefix of the benchmark lab's namespaces.
    #[arg(long, default_value = "halloc")]
    prefix: String,
    /// Services to create.
    #[arg(long, default_value_t = 1000)]
    services: usize,
    /// Concurrent creating clients.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Also run the speakers (3 nodes) and measure their CPU this many seconds while idle.
    #[arg(long, default_value_t = 0)]
    speaker_idle_seconds: u64,
    /// With speakers: afterwards change this many Services one at a time and report how long
    /// each change took to be applied (the speakers' histograms).
    #[arg(long, default_value_t = 20)]
    single_changes: usize,
    /// With speakers: every Service selects one echo backend, so each has an EndpointSlice and
    /// an owner that announces it, writes its ServiceL2Status and programs its frontend.
    #[arg(long)]
    endpoints: bool,
    /// Also write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args)]
struct ImageArgs {
    /// Directory holding the herald-controller and herald-speaker to put in the image.
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// The archive to write.
    #[arg(long, default_value = "target/image/herald-0.1.0.oci.tar")]
    out: PathBuf,
    /// Image name and tag.
    #[arg(long, default_value = "herald:0.1.0")]
    tag: String,
    /// Source revision for the org.opencontainers.image.revision label.
    #[arg(long, default_value = "unknown")]
    revision: String,
    /// Timestamp of the image's files and of its creation (seconds since the epoch).
    #[arg(long, env = "SOURCE_DATE_EPOCH", default_value_t = 0)]
    epoch: u64,
}

#[derive(Args)]
struct DownArgs {
    /// Prefix of the lab to remove.
    #[arg(long, env = "HERALD_LAB_PREFIX", default_value = "hlab")]
    prefix: String,
    /// Parent directory of the lab's state directory.
    #[arg(long, env = "HERALD_LAB_STATE_ROOT", default_value = herald_e2e::lab::DEFAULT_STATE_ROOT)]
    state_root: PathBuf,
    /// Instead of one prefix: every lab under the state root whose `up` process is gone.
    #[arg(long)]
    stale: bool,
    /// Write what was removed here (JSON).
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args)]
struct EchoArgs {
    /// Name to answer with.
    #[arg(long)]
    name: String,
    #[arg(long, default_value_t = 8080)]
    http_port: u16,
    #[arg(long, default_value_t = 5353)]
    udp_port: u16,
}

#[derive(Args)]
struct ContainerArgs {
    /// SOURCE:TARGET:ro|rw, one per volume mount.
    #[arg(long = "mount")]
    mounts: Vec<lab::container::BindMount>,
    /// Remount `/` read-only (readOnlyRootFilesystem).
    #[arg(long)]
    read_only_root: bool,
    /// A setpriv option (user, groups, capability sets, no-new-privs).
    #[arg(long = "setpriv", allow_hyphen_values = true)]
    setpriv: Vec<String>,
    /// The program and its arguments.
    #[arg(last = true, required = true)]
    program: Vec<String>,
}

#[derive(Args)]
struct RelayArgs {
    /// TCP address to accept on.
    #[arg(long)]
    listen: SocketAddr,
    /// Unix socket to connect each stream to.
    #[arg(long)]
    unix: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    match Cli::parse().command {
        Command::Up(args) => {
            let binaries = args.bin_dir.as_deref().map(lab::Binaries::in_dir).transpose()?;
            let control_plane = args
                .controlplane_dir
                .as_deref()
                .map(lab::ControlPlaneBinaries::in_dir)
                .transpose()?;
            let config = lab::LabConfig {
                nodes: args.nodes,
                state_root: args.state_root,
                binaries,
                control_plane,
                restart_delay: Duration::from_millis(args.restart_delay_ms),
                json_logs: args.json_logs,
                speaker_args: args.speaker_args,
                controller_args: args.controller_args,
                log_filter: args.log,
                start_speakers: !args.no_speakers,
                ..lab::LabConfig::new(&args.prefix)
            };
            Ok(lab::foreground::run_up(config, args.json).await?)
        }
        Command::Demo(args) => run_demo(args).await,
        Command::Dashboard(args) => run_dashboard(args).await,
        Command::Image(args) => run_image(args),
        Command::BenchAllocation(args) => run_bench_allocation(args).await,
        Command::FailoverBench(args) => run_failover_bench(args).await,
        Command::Soak(args) => run_soak(args).await,
        Command::Down(args) if args.stale => Ok(lab::foreground::run_down_stale(&args.state_root, args.json).await?),
        Command::Down(args) => {
            lab::foreground::run_down(&args.prefix, &args.state_root, args.json).await?;
            Ok(())
        }
        Command::Echo(args) => Ok(lab::echo::run_echo(args.name, args.http_port, args.udp_port).await?),
        Command::Relay(args) => Ok(lab::relay::serve_tcp_to_unix(args.listen, args.unix).await?),
        Command::Container(args) => {
            let error = lab::container::enter(&args.mounts, args.read_only_root, &args.setpriv, &args.program);
            anyhow::bail!("cannot start the container: {error}")
        }
        Command::Probe(args) => {
            let config = lab::ProbeConfig {
                target: args.target,
                interval: Duration::from_millis(args.interval_ms.max(1)),
                duration: Duration::from_millis(args.duration_ms),
                timeout: Duration::from_millis(args.timeout_ms.max(1)),
            };
            Ok(lab::probe::run_probe(config, &mut std::io::stdout()).await?)
        }
    }
}

async fn run_bench_allocation(args: BenchAllocationArgs) -> anyhow::Result<()> {
    let speakers = args.speaker_idle_seconds > 0;
    let config = lab::LabConfig {
        nodes: if speakers { 3 } else { 1 },
        start_speakers: speakers,
        bpf_filesystem: speakers,
        ..lab::LabConfig::new(&args.prefix)
    };
    let bench = herald_e2e::bench::AllocationBench {
        services: args.services,
        clients: args.clients,
        speaker_idle: Duration::from_secs(args.speaker_idle_seconds),
        single_changes: args.single_changes,
        endpoints: args.endpoints,
    };
    let report = in_lab(config, async |lab, say| {
        herald_e2e::bench::allocation(lab, &bench, say).await
    })
    .await?;
    let text = serde_json::to_string_pretty(&report)?;
    println!("{text}");
    if let Some(path) = args.json {
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

async fn run_soak(args: SoakArgs) -> anyhow::Result<()> {
    let config = lab::LabConfig {
        nodes: 3,
        speaker_args: args.speaker_args.clone(),
        ..lab::LabConfig::new(&args.prefix)
    };
    let soak = herald_e2e::soak::Soak {
        window: Duration::from_secs_f64(args.minutes.max(0.0) * 60.0),
        services: args.services.max(1),
        busy_threads: args
            .busy_threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, usize::from)),
    };
    let report = in_lab(config, async |lab, say| herald_e2e::soak::run(lab, &soak, say).await).await?;
    let text = serde_json::to_string_pretty(&report)?;
    println!("{text}");
    if let Some(path) = args.json {
        std::fs::write(&path, &text).with_context(|| format!("writing {}", path.display()))?;
    }
    anyhow::ensure!(
        report.target_met,
        "target missed: a death, an ownership change or a moved Service during the window"
    );
    Ok(())
}

fn run_image(args: ImageArgs) -> anyhow::Result<()> {
    use herald_e2e::image;
    let (repository, tag) = args
        .tag
        .rsplit_once(':')
        .with_context(|| format!("--tag {:?} must be NAME:TAG", args.tag))?;
    let name = if repository.contains('/') {
        args.tag.clone()
    } else {
        format!("docker.io/library/{repository}:{tag}")
    };
    let created = chrono::DateTime::from_timestamp(i64::try_from(args.epoch).unwrap_or(0), 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let meta = image::ImageMeta {
        tag: tag.to_string(),
        name,
        labels: image::labels(tag, &args.revision, &created),
        user: format!("{0}:{0}", image::IMAGE_USER),
        epoch: args.epoch,
    };
    let binaries = [
        args.bin_dir.join("herald-controller"),
        args.bin_dir.join("herald-speaker"),
    ];
    let files = image::write_image(&binaries, &meta, &args.out)?;
    let bytes: usize = files.iter().map(|f| f.contents.len()).sum();
    println!(
        "wrote {} ({} files, {:.1} MB uncompressed): {}",
        args.out.display(),
        files.len(),
        bytes as f64 / 1e6,
        meta.name
    );
    Ok(())
}

/// Brings a lab up with progress on stderr, runs `story` in it, and always takes it down.
async fn in_lab<T>(
    config: lab::LabConfig,
    story: impl AsyncFnOnce(&lab::Lab, &dyn Fn(&str)) -> Result<T, lab::LabError>,
) -> anyhow::Result<T> {
    let progress = lab::foreground::stderr_progress();
    let say = progress.clone();
    let say: &dyn Fn(&str) = &move |line: &str| say(line);
    say(&format!(
        "bringing up lab {} ({} nodes, a client, the Kubernetes control plane, Herald)",
        config.prefix, config.nodes
    ));
    let running = lab::Lab::up(lab::LabConfig {
        progress: Some(progress.clone()),
        ..config
    })
    .await?;
    let result = tokio::select! {
        result = story(&running, say) => result.map_err(anyhow::Error::from),
        () = herald_config::process::shutdown_signal() => Err(anyhow::anyhow!("interrupted")),
    };
    say("tearing the lab down");
    running.down().await?;
    result
}

async fn run_demo(args: DemoArgs) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let out = args.out.clone();
    // The killed speaker's container is restarted after 5 s, so the takeover can be looked
    // at before the restarted speaker wins its IP back.
    let config = lab::LabConfig {
        restart_delay: Duration::from_secs(5),
        restart_backoff_limit: Duration::from_secs(5),
        ..lab::LabConfig::new(&args.prefix)
    };
    let failover = in_lab(config, async |lab, say| herald_e2e::story::demo(lab, &out, say).await).await?;
    if let Some(path) = args.json {
        std::fs::write(&path, serde_json::to_vec_pretty(&failover)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    eprintln!("demo finished in {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}

async fn run_dashboard(args: DashboardArgs) -> anyhow::Result<()> {
    let path = herald_e2e::observability::config_dir().join("grafana/herald.json");
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)
        .with_context(|| format!("{} is not JSON", path.display()))?;
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let out = args.out.clone();
    in_lab(lab::LabConfig::new(&args.prefix), async |lab, say| {
        herald_e2e::dashboard::snapshot(lab, &dashboard, &out, say).await
    })
    .await
}

async fn run_failover_bench(args: FailoverBenchArgs) -> anyhow::Result<()> {
    // The victim's speaker container is restarted after 5 s every time (no growing back-off
    // over the rounds), outside each 3.5 s measurement, so a round measures the takeover alone
    // and not the restarted speaker winning its IP back.
    let config = lab::LabConfig {
        speaker_args: args.speaker_args,
        restart_delay: Duration::from_secs(5),
        restart_backoff_limit: Duration::from_secs(5),
        ..lab::LabConfig::new(&args.prefix)
    };
    let (rounds, fault) = (args.rounds, args.fault);
    let summary = in_lab(config, async |lab, say| {
        herald_e2e::story::failover_bench(lab, rounds, fault, say).await
    })
    .await?;
    let fmt = |p: &herald_e2e::story::Percentiles| {
        format!(
            "p50 {} ms, p99 {} ms, max {} ms ({} samples)",
            p.p50.map(|v| format!("{v:.0}")).unwrap_or_else(|| "-".into()),
            p.p99.map(|v| format!("{v:.0}")).unwrap_or_else(|| "-".into()),
            p.max.map(|v| format!("{v:.0}")).unwrap_or_else(|| "-".into()),
            p.samples
        )
    };
    let fault = summary.fault.name();
    println!("fault: {fault}, rounds: {}", summary.rounds);
    println!(
        "{fault} -> gratuitous ARP at the client: {}",
        fmt(&summary.kill_to_garp_ms)
    );
    println!("{fault} -> traffic flowing: {}", fmt(&summary.kill_to_traffic_ms));
    println!(
        "requests failed: {} of {} (longest gap {:.0} ms)",
        summary.failed_requests_total, summary.requests_total, summary.longest_gap_ms
    );
    if let Some(path) = args.json {
        std::fs::write(&path, serde_json::to_vec_pretty(&summary)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
