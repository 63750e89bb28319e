//! The speaker process: Kubernetes watches → election → announcer and dataplane.
//!
//! The loop feeds a [`Speaker`] whenever anything it depends on changes — a watched object,
//! the membership view (a peer died, left, or changed health), this node's health and
//! interfaces — and once a second, and carries out the [`Actions`] of each pass: the dataplane
//! writes only the frontends of the Services that changed, the announcer and the status
//! writer only what differs. When a pass is needed and what it decides is the [`Speaker`]'s
//! (pure, tested without root); this module only wires it to its inputs and effects.
//! `herald_speaker_pass_seconds` and `herald_speaker_change_apply_seconds` show what a pass
//! costs and how long a change waits.
//! Nothing in the loop waits on the API server, so announcing goes on while it is down.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Secret};
use kube::{Api, Client};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use thiserror::Error;
use tokio::sync::watch;

use crate::announcer::{Announcer, AnnouncerConfig, AnnouncerError};
use crate::cluster::Cluster;
use crate::cluster::install;
use crate::config::{Config, DataplaneMode};
use crate::dataplane::{Dataplane, DataplaneConfig};
use crate::http::{Endpoints, Health};
use crate::links::{self, InterfacePolicy, LinkError, LinkWatch, SystemInterfaces};
use herald_config::deploy::{SPEAKER_KEY_FIELD, SPEAKER_NEXT_KEY_FIELD};
use herald_config::process::{self, TaskEnded, Tasks};

use crate::membership::auth::{KeyRing, SecretKey};
use crate::membership::{Membership, MembershipError, NodeHealth};
use crate::plan::Plan;
use crate::speaker::{Actions, ClusterState, Observation, Speaker, SpeakerConfig};
use crate::status::{self, PlannedServices};

/// Keys shorter than this are refused: `head -c 32 /dev/urandom` is what README shows.
const MIN_KEY_BYTES: usize = 16;

#[derive(Debug, Error)]
pub enum Error {
    #[error("connecting to the Kubernetes API")]
    Client(#[source] kube::Error),
    #[error("serving the HTTP endpoints")]
    Http(#[from] process::BindError),
    #[error("following the node's network links")]
    Links(#[from] LinkError),
    #[error("starting the ARP/NDP announcer")]
    Announcer(#[from] AnnouncerError),
    #[error("starting membership")]
    Membership(#[from] MembershipError),
    /// A task the speaker runs for as long as it runs (a watch, the status writer, the server).
    #[error("a part of the speaker stopped")]
    TaskEnded(#[source] TaskEnded),
}

/// Counters of the loop itself.
struct LoopMetrics {
    owned: Gauge,
    changes: Family<Vec<(String, String)>, Counter>,
    pass_seconds: Histogram,
    change_seconds: Histogram,
}

/// Buckets of the loop's latency histograms, in seconds (1 ms to 2.5 s).
const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.25, 0.5, 2.5,
];

impl LoopMetrics {
    fn register(registry: &mut Registry) -> LoopMetrics {
        let owned = Gauge::default();
        let changes = Family::<Vec<(String, String)>, Counter>::default();
        let pass_seconds = Histogram::new(LATENCY_BUCKETS);
        let change_seconds = Histogram::new(LATENCY_BUCKETS);
        registry.register(
            "speaker_pass_seconds",
            "Time one pass of the loop takes: derive, plan, and apply to the announcer, the eBPF maps and the status writer",
            pass_seconds.clone(),
        );
        registry.register(
            "speaker_change_apply_seconds",
            "Time from a watched Kubernetes change arriving to the end of the pass that applied it",
            change_seconds.clone(),
        );
        registry.register("speaker_owned_ips", "IPs this node announces", owned.clone());
        registry.register(
            "speaker_ownership_changes",
            "IPs this node gained (takeovers) or lost",
            changes.clone(),
        );
        LoopMetrics {
            owned,
            changes,
            pass_seconds,
            change_seconds,
        }
    }

    fn count(&self, direction: &str) {
        self.changes
            .get_or_create(&vec![("direction".to_string(), direction.to_string())])
            .inc();
    }
}

/// Runs with the ambient kubeconfig (or in-cluster config) until `shutdown` completes.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), Error> {
    let client = Client::try_default().await.map_err(Error::Client)?;
    run_with_client(client, config, shutdown).await
}

/// [`run`] with a given client.
pub async fn run_with_client(
    client: Client,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let node = config.node_name.clone();
    let mut registry = process::metrics_registry();
    let health = Arc::new(Health::default());
    health.mark_pass();
    let listener = process::bind_probes(config.metrics_addr).await?;
    let registry_cell = Arc::new(std::sync::OnceLock::new());
    let endpoints = Arc::new(Endpoints {
        health: health.clone(),
        registry: registry_cell.clone(),
    });
    // What runs as long as the speaker: if one of them ends, the speaker leaves and stops.
    let mut tasks = Tasks::default();
    tasks.spawn("HTTP server", async move {
        if let Err(e) = process::serve_probes(listener, endpoints).await {
            tracing::error!(error = %e, "the HTTP server stopped");
        }
    });
    let mut shutdown = std::pin::pin!(shutdown);

    // One watch of the speakers' Secret gives the keys at start and every change after.
    let (keys_tx, mut keys_rx) = watch::channel(None);
    let keys_task = tokio::spawn(follow_keys(
        client.clone(),
        config.namespace.clone(),
        config.speaker_secret.clone(),
        keys_tx,
    ));
    let Some(keys) = wait_for_key(&mut keys_rx, &config.namespace, &health, &mut shutdown).await else {
        keys_task.abort();
        return Ok(());
    };
    health.key_loaded.store(true, Ordering::SeqCst);

    let announcer_config = AnnouncerConfig {
        interfaces: InterfacePolicy {
            explicit: (!config.interfaces.is_empty()).then(|| config.interfaces.clone()),
            ..InterfacePolicy::default()
        },
        ..AnnouncerConfig::default()
    };
    announcer_config.metrics.register(&mut registry);
    let link_watch = LinkWatch::start(SystemInterfaces, links::POLL_INTERVAL)?;
    // The watch's thread ends only if it panicked: then no link change would be noticed again.
    let mut links_followed = link_watch.subscribe();
    tasks.spawn(
        "link watch",
        async move { while links_followed.changed().await.is_ok() {} },
    );
    let announcer = Announcer::start(announcer_config, link_watch.subscribe())?;
    let Some(advertise) = advertise_address(&client, &config, &health, &mut shutdown).await else {
        return Ok(());
    };
    // Peers hear this node's real health from its first answer: a default one (no dataplane)
    // would have them switch its backends from DSR to SNAT, and back, while it starts.
    let initial_health = local_health(&announcer, &announcer.usable_interfaces(), None);
    let membership = Membership::start(
        config.membership(advertise),
        &node,
        keys,
        initial_health,
        &mut registry,
        &mut tasks,
    )
    .await?;
    let dataplane = start_dataplane(&config, &announcer, advertise, &mut registry);
    health.set_dataplane(dataplane.as_ref().map(|_| ()).map_err(Clone::clone));
    let mut dataplane = dataplane.take_ok();
    let metrics = LoopMetrics::register(&mut registry);
    if registry_cell.set(registry).is_err() {
        tracing::error!("the metrics registry was set twice; /metrics serves the first");
    }

    let cluster = Cluster::start(&client, &config.namespace, &config.speaker_selector, &mut tasks);
    // Owned by the DaemonSet, this node's ServiceL2Status objects go with it (an uninstall).
    let owner = match &config.daemonset {
        Some(name) => match install::look_up(&client, &config.namespace, name).await {
            install::DaemonSetLookup::Present { owner, .. } => Some(*owner),
            other => {
                tracing::warn!(daemonset = %name, found = ?other, "cannot read the speaker's DaemonSet; its ServiceL2Status objects get no owner");
                None
            }
        },
        None => None,
    };
    let (status_tx, status_rx) = watch::channel(PlannedServices::new());
    tasks.spawn(
        "ServiceL2Status writer",
        status::run(
            client.clone(),
            status::Writer {
                namespace: config.namespace.clone(),
                node: node.clone(),
                owner,
            },
            status_rx,
            announcer.watch_answered(),
        ),
    );

    let mut view_rx = membership.view();
    let mut interfaces_rx = announcer.watch_usable_interfaces();
    let mut speaker = Speaker::new(SpeakerConfig {
        node: node.clone(),
        peer_port: config.peer_port,
        lb_class: config.lb_class.clone(),
        require_dataplane: true,
        advertise,
    });
    let mut dataplane_sync = DataplaneSync::default();
    let mut woken_by_input = true;
    let mut keys_followed = true;
    let mut failed = None;
    tracing::info!(%node, port = config.peer_port, "speaker running");
    loop {
        // Not `announcer.status()`: it lists every owned IP, and this runs on every wake.
        let usable_interfaces = announcer.usable_interfaces();
        let local_health = local_health(
            &announcer,
            &usable_interfaces,
            dataplane.as_ref().map(|_| dataplane_sync.healthy),
        );
        health
            .announcer_ready
            .store(local_health.announcer_ready, Ordering::SeqCst);
        health.cluster_synced.store(cluster.synced(), Ordering::SeqCst);
        membership.set_local_health(local_health.clone());
        // Borrowing the view marks it seen, so a change that arrived after the select returned
        // (on the timer, say) would wake nothing any more: it counts as an input now.
        woken_by_input |= view_rx.has_changed().unwrap_or(false);
        let view = view_rx.borrow_and_update().clone();
        health.membership_settled.store(view.settled, Ordering::SeqCst);
        let started = Instant::now();
        let seen = Observation {
            woken_by_input,
            view: &view,
            health: &local_health,
            usable_interfaces: &usable_interfaces,
            now: started,
            wall: k8s_openapi::jiff::Timestamp::now(),
        };
        if let Some(actions) = speaker.step(&cluster, &seen) {
            apply(
                &actions,
                &config,
                &announcer,
                &membership,
                dataplane.as_mut().map(|dp| (dp, &mut dataplane_sync)),
                &status_tx,
                &metrics,
            );
            metrics.pass_seconds.observe(started.elapsed().as_secs_f64());
            if let Some(since) = actions.pending_since
                && cluster.synced()
            {
                metrics.change_seconds.observe(since.elapsed().as_secs_f64());
            }
        }
        health.mark_pass();

        woken_by_input = tokio::select! {
            _ = &mut shutdown => break,
            ended = tasks.ended() => {
                tracing::error!(error = %ended, "a part of the speaker stopped; leaving and stopping");
                failed = Some(ended);
                break;
            }
            _ = cluster.changed.notified() => true,
            _ = view_rx.changed() => true,
            _ = interfaces_rx.changed() => true,
            followed = keys_rx.changed(), if keys_followed => {
                match followed {
                    Ok(()) => {
                        if let Some(Ok(keys)) = keys_rx.borrow_and_update().clone() {
                            membership.set_keys(keys);
                        }
                    }
                    Err(_) => {
                        keys_followed = false;
                        tracing::error!("the watch of the speakers' Secret ended; keeping the keys in use");
                    }
                }
                false
            }
            _ = tokio::time::sleep(Duration::from_secs(1)) => false,
        };
    }
    keys_task.abort();

    // Graceful leave: peers learn it at once and take over (sending their own gratuitous
    // announcements); then stop answering and withdraw what this node reported.
    tracing::info!("leaving: handing IPs to their next owners");
    membership.leave().await;
    announcer.set_owned(BTreeMap::new());
    announcer.shutdown();
    // The eBPF maps and links stay pinned: a restarted speaker resumes them without breaking
    // established flows (see `dataplane`). Unless this is an uninstall: then nothing stays.
    let uninstalling = match &config.daemonset {
        Some(name) => install::is_uninstalling(&install::look_up(&client, &config.namespace, name).await),
        None => false,
    };
    match dataplane {
        Some(dp) if uninstalling => match dp.shutdown() {
            Ok(()) => tracing::info!("uninstalled (the DaemonSet is gone): removed the eBPF programs and maps"),
            Err(e) => tracing::warn!(
                error = process::error_chain(&e),
                "uninstalled, but the eBPF programs could not all be removed"
            ),
        },
        other => drop(other),
    }
    status_tx.send_replace(PlannedServices::new());
    drop(status_tx);
    // The status writer withdraws this node's objects and ends; the other tasks run until
    // dropped.
    if tokio::time::timeout(Duration::from_secs(2), tasks.ended())
        .await
        .is_err()
    {
        tracing::warn!("the ServiceL2Status writer did not finish withdrawing this node's objects within 2 s");
    }
    failed.map_or(Ok(()), |ended| Err(Error::TaskEnded(ended)))
}

/// Carries out one pass's [`Actions`]: the dataplane first (a new owner's maps must be
/// programmed when the network switches to it), then membership, then the announcer and the
/// status writer.
fn apply(
    actions: &Actions,
    config: &Config,
    announcer: &Announcer,
    membership: &Membership,
    dataplane: Option<(&mut Dataplane, &mut DataplaneSync)>,
    status_tx: &watch::Sender<PlannedServices>,
    metrics: &LoopMetrics,
) {
    let plan = &actions.plan;
    if actions.selector_finds_no_speaker {
        tracing::warn!(selector = %config.speaker_selector, "--speaker-selector finds no running speaker Pod on this node; every Node is taken for a peer");
    }
    // The pinned maps carry what the previous speaker programmed (traffic flows through them
    // while this one starts): they are left alone until the step hands over inputs, once the
    // caches synced and the view settled. Programming the empty world of a first pass dropped
    // the connections tunnelled to this node's backends meanwhile.
    if let (Some((dp, sync)), Some(inputs)) = (dataplane, &actions.dataplane) {
        sync.update(dp, &inputs.interfaces, inputs.addresses.clone(), plan);
    }
    if actions.set_peers {
        membership.set_peers(plan.peers.clone());
        membership.watch_closely(plan.watch_closely.clone());
    }
    let Some(announce) = &actions.announce else { return };
    for change in &announce.owner_changes {
        if change.to.as_deref() == Some(config.node_name.as_str()) {
            metrics.count("gained");
        }
        if change.from.as_deref() == Some(config.node_name.as_str()) {
            metrics.count("lost");
        }
        tracing::info!(ip = %change.ip, from = ?change.from, to = ?change.to, reason = %change.reason, "owner changed");
    }
    announcer.set_owned(plan.owned.clone());
    if announce.announce_again {
        tracing::info!(
            ips = plan.owned.len(),
            "peers may have declared this node dead and taken its IPs meanwhile: announcing them again"
        );
        announcer.announce_again();
    }
    metrics.owned.set(i64::try_from(plan.owned.len()).unwrap_or(i64::MAX));
    status_tx.send_if_modified(|current| {
        let changed = *current != plan.announced;
        if changed {
            current.clone_from(&plan.announced);
        }
        changed
    });
}

/// This node's health as peers hear it. `dataplane_synced`: None for an announce-only node,
/// else whether the running dataplane's last attach and apply succeeded.
fn local_health(announcer: &Announcer, usable_interfaces: &[String], dataplane_synced: Option<bool>) -> NodeHealth {
    NodeHealth {
        announcer_ready: announcer.ready(),
        // Announce-only nodes (by flag, or eBPF unavailable at start) serve as configured;
        // a running dataplane that fails to program or attach does not.
        dataplane_ready: dataplane_synced.unwrap_or(true),
        interfaces: usable_interfaces.iter().cloned().collect(),
        other_interfaces: announcer.other_interfaces().into_iter().collect(),
    }
}

/// Starts the eBPF dataplane unless it is switched off; on failure says why (the speaker then
/// runs announce-only).
fn start_dataplane(
    config: &Config,
    announcer: &Announcer,
    advertise: IpAddr,
    registry: &mut Registry,
) -> DataplaneStart {
    if config.dataplane == DataplaneMode::Off {
        tracing::info!("dataplane off (--dataplane off): announcing only");
        remove_left_behind(config);
        return DataplaneStart::Failed("switched off with --dataplane off".to_string());
    }
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    if let Some(fstype) = filesystem_of(&config.bpf_pin_root, &mounts)
        && fstype != "bpf"
    {
        let why = format!(
            "{} is on a {fstype} filesystem, not bpf: mount one (mount -t bpf bpf /sys/fs/bpf) or pass --bpf-pin-root on one",
            config.bpf_pin_root.display()
        );
        tracing::error!("eBPF dataplane unavailable: announcing only; {why}");
        return DataplaneStart::Failed(why);
    }
    let dp_config = DataplaneConfig {
        interfaces: announcer.usable_interfaces(),
        pin_dir: config.pin_dir(),
        node_name: config.node_name.clone(),
        node_addresses: vec![advertise],
        forwarding: config.forwarding.into(),
        snat_ports: config.snat_ports,
    };
    match Dataplane::start(dp_config) {
        Ok(dp) => {
            dp.register(registry);
            tracing::info!(pin_dir = %config.pin_dir().display(), "eBPF dataplane running");
            DataplaneStart::Running(Box::new(dp))
        }
        Err(e) => {
            let error = process::error_chain(&e);
            tracing::error!(%error, "eBPF dataplane unavailable: announcing only; LoadBalancer traffic is not forwarded by Herald on this node");
            remove_left_behind(config);
            DataplaneStart::Failed(error)
        }
    }
}

/// A speaker that does not run the dataplane removes what an earlier one pinned, so frozen maps
/// do not keep forwarding to addresses that may since belong to other pods.
fn remove_left_behind(config: &Config) {
    match crate::dataplane::remove_pinned(&config.pin_dir()) {
        Ok(()) => {
            tracing::info!(pin_dir = %config.pin_dir().display(), "removed any eBPF programs and maps an earlier speaker left")
        }
        Err(e) => {
            tracing::warn!(
                error = process::error_chain(&e),
                "cannot remove the eBPF programs an earlier speaker left; they stop translating two minutes after its last heartbeat"
            )
        }
    }
}

/// The type of the filesystem `path` lives on, from `/proc/self/mounts` text (the mount point
/// that is the longest prefix of `path`).
fn filesystem_of(path: &std::path::Path, mounts: &str) -> Option<String> {
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_, mount_point, fstype) = (fields.next()?, fields.next()?, fields.next()?);
            // /proc/mounts escapes spaces as \040.
            let mount_point = mount_point.replace("\\040", " ");
            path.starts_with(&mount_point)
                .then(|| (mount_point.len(), fstype.to_string()))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, fstype)| fstype)
}

enum DataplaneStart {
    Running(Box<Dataplane>),
    Failed(String),
}

impl DataplaneStart {
    fn as_ref(&self) -> Result<&Dataplane, &String> {
        match self {
            DataplaneStart::Running(dp) => Ok(dp),
            DataplaneStart::Failed(why) => Err(why),
        }
    }

    fn take_ok(self) -> Option<Dataplane> {
        match self {
            DataplaneStart::Running(dp) => Some(*dp),
            DataplaneStart::Failed(_) => None,
        }
    }
}

/// What was last given to the dataplane, so a pass writes only when something changed.
struct DataplaneSync {
    /// The last attach and apply succeeded.
    healthy: bool,
    interfaces: Vec<String>,
    addresses: Vec<IpAddr>,
    tunnel_peers: BTreeMap<String, Vec<IpAddr>>,
    dead_nodes: BTreeSet<String>,
}

impl Default for DataplaneSync {
    fn default() -> Self {
        DataplaneSync {
            healthy: true,
            interfaces: Vec::new(),
            addresses: Vec::new(),
            tunnel_peers: BTreeMap::new(),
            dead_nodes: BTreeSet::new(),
        }
    }
}

impl DataplaneSync {
    fn update(&mut self, dp: &mut Dataplane, interfaces: &[String], addresses: Vec<IpAddr>, plan: &Plan) {
        let Plan {
            tunnel_peers,
            dead_nodes,
            services,
            ..
        } = plan;
        let mut healthy = true;
        if self.interfaces != interfaces {
            match dp.attach_interfaces(interfaces) {
                Ok(()) => self.interfaces = interfaces.to_vec(),
                Err(e) => {
                    tracing::warn!(
                        error = process::error_chain(&e),
                        "cannot attach the eBPF dataplane; this node gives up its IPs"
                    );
                    healthy = false;
                }
            }
        }
        let node_changed =
            self.addresses != addresses || self.tunnel_peers != *tunnel_peers || self.dead_nodes != *dead_nodes;
        if node_changed {
            if self.tunnel_peers != *tunnel_peers {
                tracing::info!(peers = ?tunnel_peers.keys().collect::<Vec<_>>(), "nodes that take tunnelled (DSR) traffic changed");
            }
            if self.dead_nodes != *dead_nodes {
                tracing::info!(
                    nodes = ?dead_nodes,
                    "nodes declared dead changed: their backends keep established flows and take no new ones"
                );
            }
            dp.set_node_addresses(addresses.clone());
            dp.set_tunnel_peers(tunnel_peers.clone());
            dp.set_dead_nodes(dead_nodes.clone());
            self.addresses = addresses;
            self.tunnel_peers.clone_from(tunnel_peers);
            self.dead_nodes.clone_from(dead_nodes);
        }
        // Every pass: the dataplane finds the changed Services by pointer (none: no write).
        match dp.apply_services(services) {
            Ok(stats) => tracing::debug!(?stats, "service map updated"),
            Err(e) => {
                tracing::warn!(
                    error = process::error_chain(&e),
                    "cannot update the eBPF service map; this node gives up its IPs until it can"
                );
                healthy = false;
            }
        }
        self.healthy = healthy;
    }
}

/// The address peers reach this speaker at: the flag, else this Node's address from the API
/// (waiting for the Node to exist). `None` if shutdown came first.
async fn advertise_address(
    client: &Client,
    config: &Config,
    health: &Health,
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Option<IpAddr> {
    if let Some(address) = config.advertise_address {
        return Some(address);
    }
    let api: Api<Node> = Api::all(client.clone());
    // A list by name needs only the `list` the node watch needs anyway, not `get`.
    let own = kube::api::ListParams::default().fields(&format!("metadata.name={}", config.node_name));
    let mut attempt: u64 = 0;
    loop {
        let problem = match api.list(&own).await.map(|list| list.items.into_iter().next()) {
            Ok(Some(node)) => match crate::cluster::facts::node_address(&node) {
                Some(address) => return Some(address),
                None => format!("Node {} has no address in its status", config.node_name),
            },
            Ok(None) => format!("Node {} does not exist (check --node-name)", config.node_name),
            Err(e) => format!("cannot read Node {}: {e}", config.node_name),
        };
        if attempt.is_multiple_of(10) {
            tracing::warn!("{problem}; waiting (or pass --advertise-address)");
        }
        health.mark_pass();
        attempt += 1;
        tokio::select! {
            _ = shutdown.as_mut() => return None,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// The speakers' keys in their Secret: `secretkey`, and `secretkey-next` during a rotation.
fn key_ring_from(secret: &Secret, name: &str) -> Result<KeyRing, String> {
    let field = |field: &str| -> Result<Option<SecretKey>, String> {
        match secret.data.as_ref().and_then(|d| d.get(field)) {
            None => Ok(None),
            Some(value) if value.0.is_empty() => Ok(None),
            Some(value) if value.0.len() < MIN_KEY_BYTES => Err(format!(
                "Secret {name}'s {field} is {} bytes; a key needs at least {MIN_KEY_BYTES} (use 32 random bytes)",
                value.0.len()
            )),
            Some(value) => Ok(Some(SecretKey::new(value.0.clone()))),
        }
    };
    let current = field(SPEAKER_KEY_FIELD)?.ok_or_else(|| format!("Secret {name} has no {SPEAKER_KEY_FIELD} yet"))?;
    let next = field(SPEAKER_NEXT_KEY_FIELD)?.filter(|next| *next != current);
    Ok(KeyRing { current, next })
}

/// What the speakers' Secret gives: `None` until it is first read, then the keys, or why
/// there are none usable yet.
type KeysState = Option<Result<KeyRing, String>>;

/// Follows the speakers' Secret and passes on its keys and every valid change of them: a
/// rotation needs no restart. Once there are keys, a Secret deleted or made invalid leaves
/// them as they are (and says so); before, the reason is passed on for [`wait_for_key`].
async fn follow_keys(client: Client, namespace: String, name: String, keys: watch::Sender<KeysState>) {
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, watcher};
    let api: Api<Secret> = Api::namespaced(client, &namespace);
    let selector = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = std::pin::pin!(watcher(api, selector).default_backoff());
    let mut listed = false;
    // A problem replaces nothing that works; keys replace whatever was there.
    let report = |outcome: Result<KeyRing, String>| {
        keys.send_if_modified(|current| match (&outcome, current.as_ref()) {
            (Err(problem), Some(Ok(_))) => {
                tracing::warn!(%namespace, "{problem}; keeping the keys in use");
                false
            }
            _ if current.as_ref() == Some(&outcome) => false,
            _ => {
                *current = Some(outcome.clone());
                true
            }
        })
    };
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Apply(secret) | watcher::Event::InitApply(secret)) => {
                listed = true;
                report(key_ring_from(&secret, &name));
            }
            Ok(watcher::Event::Delete(_)) => {
                report(Err(format!("the speakers' Secret {name} was deleted")));
            }
            Ok(watcher::Event::Init) => listed = false,
            Ok(watcher::Event::InitDone) if !listed => {
                report(Err(format!("Secret {name} does not exist")));
            }
            Ok(watcher::Event::InitDone) => {}
            Err(e) => {
                tracing::debug!(secret = %name, error = %e, "watching the speakers' Secret failed; retrying with backoff");
                report(Err(format!("cannot read Secret {name}: {e}")));
            }
        }
    }
}

/// Waits (and says why, every 10 s) until [`follow_keys`] has keys. `None` if shutdown came
/// first.
async fn wait_for_key(
    keys: &mut watch::Receiver<KeysState>,
    namespace: &str,
    health: &Health,
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Option<KeyRing> {
    let mut warned: Option<Instant> = None;
    loop {
        match keys.borrow_and_update().clone() {
            Some(Ok(ring)) => return Some(ring),
            Some(Err(problem)) if warned.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) => {
                warned = Some(Instant::now());
                tracing::warn!(%namespace, "{problem}; speakers cannot authenticate each other until it does; waiting");
            }
            _ => {}
        }
        health.mark_pass();
        tokio::select! {
            _ = shutdown.as_mut() => return None,
            followed = keys.changed() => {
                if followed.is_err() {
                    tracing::error!("the watch of the speakers' Secret ended");
                    return None;
                }
            }
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{filesystem_of, key_ring_from};
    use crate::membership::auth::{KeyRing, SecretKey};
    use k8s_openapi::ByteString;
    use k8s_openapi::api::core::v1::Secret;
    use std::path::Path;

    fn secret(fields: &[(&str, &[u8])]) -> Secret {
        Secret {
            data: Some(
                fields
                    .iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.to_vec())))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn the_secret_gives_the_current_key_and_during_a_rotation_the_next() {
        let (one, two) = ([1u8; 32], [2u8; 32]);
        assert_eq!(
            key_ring_from(&secret(&[("secretkey", &one)]), "s"),
            Ok(KeyRing::single(SecretKey::new(one.to_vec())))
        );
        assert_eq!(
            key_ring_from(&secret(&[("secretkey", &one), ("secretkey-next", &two)]), "s"),
            Ok(KeyRing {
                current: SecretKey::new(one.to_vec()),
                next: Some(SecretKey::new(two.to_vec())),
            })
        );
        // A next key equal to the current one, or empty, is no rotation.
        for next in [&one[..], b""] {
            let ring = key_ring_from(&secret(&[("secretkey", &one), ("secretkey-next", next)]), "s").unwrap();
            assert_eq!(ring.next, None);
        }
    }

    #[test]
    fn a_missing_or_short_key_is_refused_with_what_is_wrong() {
        assert_eq!(
            key_ring_from(&Secret::default(), "herald-speaker-auth"),
            Err("Secret herald-speaker-auth has no secretkey yet".to_string())
        );
        assert_eq!(
            key_ring_from(&secret(&[("secretkey", b"")]), "s"),
            Err("Secret s has no secretkey yet".to_string())
        );
        let short = key_ring_from(
            &secret(&[("secretkey", &[1u8; 32]), ("secretkey-next", b"hunter2")]),
            "s",
        );
        assert_eq!(
            short,
            Err("Secret s's secretkey-next is 7 bytes; a key needs at least 16 (use 32 random bytes)".to_string())
        );
    }

    #[test]
    fn the_longest_mount_point_decides_the_filesystem() {
        let mounts =
            "sysfs /sys sysfs rw 0 0\nbpf /sys/fs/bpf bpf rw 0 0\ntmpfs /run tmpfs rw 0 0\n/dev/vda / ext4 rw 0 0\n";
        assert_eq!(
            filesystem_of(Path::new("/sys/fs/bpf/herald"), mounts).as_deref(),
            Some("bpf")
        );
        assert_eq!(
            filesystem_of(Path::new("/sys/fs/cgroup"), mounts).as_deref(),
            Some("sysfs")
        );
        assert_eq!(filesystem_of(Path::new("/srv/x"), mounts).as_deref(), Some("ext4"));
        assert_eq!(
            filesystem_of(Path::new("/sys/fs/bpfx"), mounts).as_deref(),
            Some("sysfs")
        );
    }
}
