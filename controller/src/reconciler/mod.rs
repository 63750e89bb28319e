//! The controller process: rebuilds the allocator from the cluster, then keeps Services'
//! addresses and pools' statuses in step with the cluster.
//!
//! # Flow
//! 1. The pools are listed and the valid ones handed to the allocator; then [`rebuild`] lists
//!    every Service and [`Allocator::restore`]s the addresses already in its status, oldest Service
//!    first. Nothing is allocated before this is done, so a restart never renumbers a Service
//!    and a pending Service never takes an address another one still holds.
//! 2. A kube-rs `Controller` over Services ([`service::reconcile`]) allocates, writes
//!    `status.loadBalancer.ingress` and the `ip-allocated-from-pool` annotation, and emits
//!    Events. It is fed by a reflector whose Delete events release addresses at once.
//! 3. [`pools`]: a watch on `IPAddressPool`s re-validates the set when a spec changes, replaces
//!    the allocator's pools (moving Services whose address left every pool), and writes each
//!    pool's status counters and `Ready` condition. A pool edited into an invalid spec keeps
//!    serving from its last valid spec, so a bad edit moves nothing.
//! 4. Leader election ([`crate::leader`]): every replica does 1–3, but only the leader writes
//!    (Service status and annotation, pool status, Events, the speaker key). A standby's
//!    reconcile only makes its allocator follow each Service's status ([`service::follow`]), so
//!    it is current when it takes over; a new term first re-syncs the allocator from the whole
//!    Service cache ([`service::follow_all`]), then opens the write gate and re-runs every
//!    Service. Every write asks the gate right before it is sent.
//! 5. Anything that can free capacity or change the rules (a release, a pool change, a
//!    Namespace label change) re-runs every Service through the reconciler; a Service that
//!    could not get an address is thus retried exactly when it might succeed, never in a loop.

pub mod events;
pub mod pools;
pub mod service;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use herald_config::last_valid::{LastValid, Verdict};
use herald_config::process::{self, TaskEnded, Tasks};
use herald_config::validation::PoolError;
use herald_config::{IPAddressPool, IPAddressPoolSpec};
use k8s_openapi::api::core::v1::{Namespace, Service};
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::events::Reporter;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use thiserror::Error;
use tokio::sync::{Notify, watch};

use crate::allocator::{Allocator, ServiceKey, ServiceRequest};
use crate::config::Config;
use crate::http::Health;
use crate::leader::{self, Leadership, Role, TimingError};
use crate::metrics::Metrics;

/// Why a reconcile or the controller failed.
#[derive(Debug, Error)]
pub enum Error {
    #[error("connecting to the Kubernetes API")]
    Client(#[source] kube::Error),
    #[error("listing {what}")]
    List {
        what: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("writing {what} of {object}")]
    Write {
        what: &'static str,
        object: String,
        #[source]
        source: kube::Error,
    },
    #[error("leader election")]
    Timing(#[source] TimingError),
    /// This replica stepped down (or never led): it writes nothing.
    #[error("not the leader: not writing {what} of {object}")]
    NotLeader { what: &'static str, object: String },
    /// A task the controller runs for as long as it runs (a watch, a writer, the election).
    #[error("a part of the controller stopped")]
    TaskEnded(#[source] TaskEnded),
    #[error("serving the HTTP endpoints")]
    Http(#[from] process::BindError),
}

/// Shared state of every reconcile.
pub struct Context {
    pub client: Client,
    pub config: Config,
    /// Held only for synchronous allocator calls, never across an await.
    pub allocator: Mutex<Allocator>,
    pub namespaces: Store<Namespace>,
    /// Who Events come from.
    pub reporter: Reporter,
    pub metrics: Arc<Metrics>,
    /// Whether this replica may write now; ask right before each write.
    pub leadership: Arc<Leadership>,
    /// Re-run every Service (capacity freed, pools or namespaces changed).
    pub retry_all: Arc<Notify>,
    /// Pools' counters or verdicts changed; their statuses need writing.
    pub pools_changed: Arc<Notify>,
    /// Why a Service lost its addresses in a pool change, for the Event that moves it.
    pub displaced: Mutex<HashMap<ServiceKey, String>>,
    /// The last failure reported per Service, so a retry that fails the same way stays quiet.
    pub reported_failures: Mutex<HashMap<ServiceKey, String>>,
    /// Annotations already warned of (deprecated spellings, unusable values), per Service.
    pub reported_annotations: Mutex<HashSet<(ServiceKey, String)>>,
    /// Verdict per pool name.
    pub pool_verdicts: Mutex<std::collections::BTreeMap<String, Verdict<PoolError>>>,
    /// The last valid spec of each pool, which stays in use while the pool is invalid.
    pub last_valid: Mutex<LastValid<IPAddressPoolSpec>>,
}

impl Context {
    pub fn namespace_labels(&self, namespace: &str) -> std::collections::BTreeMap<String, String> {
        self.namespaces
            .get(&ObjectRef::new(namespace))
            .map(|ns| ns.labels().clone())
            .unwrap_or_default()
    }
}

pub use herald_config::service::{handles, ingress_ips};

pub fn service_key(service: &Service) -> ServiceKey {
    ServiceKey::new(service.namespace().unwrap_or_default(), service.name_any())
}

/// Runs the controller against the cluster of the ambient kubeconfig (or in-cluster config)
/// until `shutdown` completes or a part of it fails.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send + Sync + 'static) -> Result<(), Error> {
    let client = Client::try_default().await.map_err(Error::Client)?;
    run_with_client(client, config, shutdown).await
}

/// [`run`] with a given client. Every task it starts ends with it: dropping (aborting) this
/// future is a crash, which the other candidates of the election survive.
pub async fn run_with_client(
    client: Client,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), Error> {
    let timing = config.election_timing().map_err(Error::Timing)?;
    let identity = leader::identity(config.pod_name.as_deref());
    let leadership = if config.leader_elect {
        Leadership::elected(identity)
    } else {
        Leadership::unelected(identity)
    };
    let metrics = Arc::new(Metrics::default());
    metrics.leader.set(i64::from(leadership.may_write()));
    let health = Arc::new(Health::new(client.clone(), leadership.clone(), metrics.clone()));
    let listener = process::bind_probes(config.metrics_addr).await?;
    // Aborted when this future ends or is dropped; if one ends before, so does the controller.
    let mut tasks = Tasks::default();
    let serving = health.clone();
    tasks.spawn("HTTP server", async move {
        if let Err(e) = process::serve_probes(listener, serving).await {
            tracing::error!(error = %e, "the HTTP server stopped");
        }
    });

    // Namespaces: labels for serviceAllocation.namespaceSelectors; a label change may change
    // which pool a Service may use.
    let retry_all = Arc::new(Notify::new());
    let (namespaces, ns_writer) = reflector::store();
    let ns_stream = watcher(Api::<Namespace>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .reflect(ns_writer)
        .applied_objects();
    let ns_trigger = retry_all.clone();
    tasks.spawn("Namespace watch", async move {
        let mut stream = std::pin::pin!(ns_stream);
        while let Some(event) = stream.next().await {
            if event.is_ok() {
                ns_trigger.notify_one();
            }
        }
    });

    let ctx = Arc::new(Context {
        reporter: Reporter {
            controller: herald_config::deploy::CONTROLLER.into(),
            instance: Some(leadership.identity().to_string()),
        },
        client: client.clone(),
        config: config.clone(),
        allocator: Mutex::new(Allocator::new()),
        namespaces,
        metrics: metrics.clone(),
        leadership: leadership.clone(),
        retry_all: retry_all.clone(),
        pools_changed: Arc::new(Notify::new()),
        displaced: Mutex::default(),
        reported_failures: Mutex::default(),
        reported_annotations: Mutex::default(),
        pool_verdicts: Mutex::default(),
        last_valid: Mutex::default(),
    });
    ctx.namespaces.wait_until_ready().await.ok();

    // Leader or standby alike: the allocator is rebuilt before anything else happens.
    let pool_api: Api<IPAddressPool> = Api::namespaced(client.clone(), &config.namespace);
    let initial_pools = pool_api
        .list(&Default::default())
        .await
        .map_err(|source| Error::List {
            what: "IPAddressPools",
            source,
        })?
        .items;
    pools::apply_pool_set(&ctx, &initial_pools);
    rebuild(&ctx).await?;
    health.rebuilt.store(true, Ordering::SeqCst);
    tracing::info!("allocations rebuilt from the cluster; reconciling");

    let watch_ctx = ctx.clone();
    let watch_api = pool_api.clone();
    tasks.spawn("IPAddressPool watch", async move {
        pools::watch_pools(watch_ctx, watch_api, &initial_pools).await
    });
    tasks.spawn(
        "IPAddressPool status writer",
        pools::write_statuses(ctx.clone(), pool_api),
    );
    tasks.spawn("leadership follower", on_role_changes(ctx.clone()));

    // Services: one reflector feeds the Controller; its Delete events release addresses.
    let services: Api<Service> = Api::all(client.clone());
    let (reader, writer) = reflector::store();
    let release_ctx = ctx.clone();
    let release_reader = reader.clone();
    let (cache_ready_tx, cache_ready) = watch::channel(false);
    let service_events = watcher(services.clone(), watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .inspect(move |event| match event {
            Ok(watcher::Event::Delete(service)) => service::released(&release_ctx, &service_key(service), "deleted"),
            // After a relist, anything we hold for a Service that is gone was deleted unseen.
            Ok(watcher::Event::InitDone) => {
                service::release_missing(&release_ctx, &release_reader);
                cache_ready_tx.send_replace(true);
            }
            _ => {}
        })
        .applied_objects();

    // The election starts once the Service cache is complete, so a new term's re-sync from it
    // sees every Service.
    let (stop_election, election_stopped) = watch::channel(false);
    let mut election = config.leader_elect.then(|| {
        let ctx = ctx.clone();
        let reader = reader.clone();
        let election = leader::ElectionConfig {
            namespace: config.namespace.clone(),
            lease_name: config.leader_elect_lease_name.clone(),
            timing,
        };
        AbortOnDrop(tokio::spawn(async move {
            let mut cache_ready = cache_ready;
            if cache_ready.wait_for(|ready| *ready).await.is_err() {
                return;
            }
            let hook_ctx = ctx.clone();
            leader::run(
                ctx.client.clone(),
                election,
                ctx.leadership.clone(),
                ctx.metrics.clone(),
                move || service::follow_all(&hook_ctx, &reader),
                election_stopped,
            )
            .await
        }))
    });

    let trigger = retry_all.clone();
    let retry_stream = futures::stream::unfold(trigger, |n| async move {
        n.notified().await;
        Some(((), n))
    });
    health.reconciling.store(true, Ordering::SeqCst);
    let reconciling = Controller::for_stream(service_events, reader)
        .with_config(ControllerConfig::default().debounce(std::time::Duration::from_millis(20)))
        .reconcile_all_on(retry_stream)
        .graceful_shutdown_on(shutdown)
        .run(service::reconcile, service::error_policy, ctx.clone())
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = process::error_chain(&e), "reconcile failed");
            }
        });
    // The election ends only when told to (below); ending before is a failure like a task's.
    let election_ended = async {
        match &mut election {
            Some(AbortOnDrop(handle)) => {
                let panicked = handle.await.err().is_some_and(|e| e.is_panic());
                TaskEnded {
                    task: "leader election",
                    panicked,
                }
            }
            None => std::future::pending().await,
        }
    };
    let failed = tokio::select! {
        () = reconciling => None,
        ended = tasks.ended() => Some(ended),
        ended = election_ended => Some(ended),
    };
    health.reconciling.store(false, Ordering::SeqCst);
    match &failed {
        Some(ended) => tracing::error!(error = %ended, "a part of the controller stopped; stopping"),
        None => tracing::info!("reconcile loop stopped"),
    }
    // Only now that no reconcile is running: give the Lease up (unless the election itself is
    // what ended).
    stop_election.send_replace(true);
    if let Some(AbortOnDrop(handle)) = &mut election
        && !handle.is_finished()
        && let Err(e) = handle.await
    {
        tracing::error!(error = %e, "the leader election ended abnormally while giving up the Lease");
    }
    failed.map_or(Ok(()), |ended| Err(Error::TaskEnded(ended)))
}

/// Aborts the task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What a change of role starts: a new leader re-runs every Service (pending ones get addresses
/// now), writes pools' statuses and fills the speaker key; a replica that steps down re-runs
/// every Service too, which makes its allocator follow the statuses again (dropping anything it
/// allocated but could not write).
async fn on_role_changes(ctx: Arc<Context>) {
    let mut roles = ctx.leadership.subscribe();
    loop {
        let role = *roles.borrow_and_update();
        ctx.retry_all.notify_one();
        if role == Role::Leader {
            ctx.pools_changed.notify_one();
            crate::secret::ensure_speaker_key(
                &ctx.client,
                &ctx.config.namespace,
                &ctx.config.speaker_secret,
                &ctx.leadership,
            )
            .await;
        }
        if roles.changed().await.is_err() {
            return;
        }
    }
}

/// Restores every handled Service's current addresses into the allocator, oldest first, so a
/// conflict (two Services claiming one address they may not share) keeps the older one.
async fn rebuild(ctx: &Context) -> Result<(), Error> {
    let api: Api<Service> = Api::all(ctx.client.clone());
    let mut services = api
        .list(&Default::default())
        .await
        .map_err(|source| Error::List {
            what: "Services",
            source,
        })?
        .items;
    services.sort_by(|a, b| {
        let key = |s: &Service| (s.metadata.creation_timestamp.clone(), s.namespace(), s.name_any());
        key(a).cmp(&key(b))
    });
    let mut restored = 0;
    let mut allocator = ctx.allocator.lock().expect("allocator lock");
    for service in &services {
        let ips = ingress_ips(service);
        if ips.is_empty() || !handles(service, &ctx.config.lb_class) {
            continue;
        }
        let key = service_key(service);
        let request = ServiceRequest::from_service(service, ctx.namespace_labels(&key.namespace))
            .unwrap_or_else(|_| ServiceRequest::auto(key.clone(), herald_config::IpFamily::of(ips[0])));
        match allocator.restore(&request, &ips) {
            Ok(_) => restored += 1,
            Err(e) => {
                tracing::warn!(service = %key, error = process::error_chain(&e), "cannot keep the addresses in the Service's status")
            }
        }
    }
    tracing::info!(services = services.len(), restored, "rebuilt allocations");
    Ok(())
}
