//! What the speaker watches in Kubernetes, and the facts election is computed from.
//!
//! Every watch feeds a reflector store and pokes [`Cluster::changed`]; the speaker's loop
//! recomputes ownership from the stores. Watches retry with backoff, so while the API server
//! is away the stores keep their last contents and announcing goes on unchanged.
//!
//! - [`facts`]: objects → the plain facts election works on.
//! - [`in_use`]: which pools and advertisements are used; one edited into an invalid spec keeps
//!   its last valid spec, so a bad edit never stops an announcement.
//! - [`install`]: the speaker's own DaemonSet: owner of its ServiceL2Status objects, and how a
//!   stopping speaker tells an uninstall from a restart.

pub mod facts;
pub mod in_use;
pub mod install;

use facts::{Changes, ObjectKey};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::StreamExt;
use herald_config::process::Tasks;
use herald_config::{IPAddressPool, L2Advertisement};
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;

use crate::speaker::ClusterState;

/// The speaker's stores of Kubernetes objects.
#[derive(Clone)]
pub struct Cluster {
    pub nodes: Store<Node>,
    pub services: Store<Service>,
    pub endpoint_slices: Store<EndpointSlice>,
    pub pools: Store<IPAddressPool>,
    pub advertisements: Store<L2Advertisement>,
    /// The speaker Pods (in Herald's namespace, by `--speaker-selector`): who the peers are.
    pub speakers: Store<Pod>,
    /// Notified after every change to any store.
    pub changed: Arc<Notify>,
    /// When the oldest change not yet taken by the loop arrived ([`ClusterState::take_pending`]).
    pending_since: Arc<Mutex<Option<Instant>>>,
    /// Services and EndpointSlices changed since the loop last took them.
    changes: Arc<Mutex<Changes>>,
    synced: Arc<[AtomicBool; 6]>,
}

impl Cluster {
    /// Starts the watches; Herald's own kinds and the speaker Pods (`speaker_selector`, a
    /// label selector) are read from `namespace` only.
    pub fn start(client: &Client, namespace: &str, speaker_selector: &str, tasks: &mut Tasks) -> Cluster {
        let changed = Arc::new(Notify::new());
        let pending_since = Arc::new(Mutex::new(None));
        let changes = Arc::new(Mutex::new(Changes::default()));
        let synced: Arc<[AtomicBool; 6]> = Arc::new(Default::default());
        let watch = |i: usize, record: Record| Watch {
            changed: changed.clone(),
            pending_since: pending_since.clone(),
            changes: changes.clone(),
            record,
            synced: synced.clone(),
            index: i,
        };
        let services: Record = |meta, changes| {
            changes.services.insert(object_key(meta));
        };
        let slices: Record = |meta, changes| {
            changes.slices.insert(object_key(meta));
        };
        let other: Record = |_, _| {};
        Cluster {
            nodes: spawn_watch(
                tasks,
                "Node watch",
                Api::all(client.clone()),
                watch(0, other),
                watcher::Config::default(),
            ),
            services: spawn_watch(
                tasks,
                "Service watch",
                Api::all(client.clone()),
                watch(1, services),
                watcher::Config::default(),
            ),
            endpoint_slices: spawn_watch(
                tasks,
                "EndpointSlice watch",
                Api::all(client.clone()),
                watch(2, slices),
                watcher::Config::default(),
            ),
            pools: spawn_watch(
                tasks,
                "IPAddressPool watch",
                Api::namespaced(client.clone(), namespace),
                watch(3, other),
                watcher::Config::default(),
            ),
            advertisements: spawn_watch(
                tasks,
                "L2Advertisement watch",
                Api::namespaced(client.clone(), namespace),
                watch(4, other),
                watcher::Config::default(),
            ),
            speakers: spawn_watch(
                tasks,
                "speaker Pod watch",
                Api::namespaced(client.clone(), namespace),
                watch(5, other),
                watcher::Config::default().labels(speaker_selector),
            ),
            changed,
            pending_since,
            changes,
            synced,
        }
    }
}

impl ClusterState for Cluster {
    fn synced(&self) -> bool {
        self.synced.iter().all(|s| s.load(Ordering::SeqCst))
    }

    fn nodes(&self) -> Vec<Arc<Node>> {
        self.nodes.state()
    }

    fn pools(&self) -> Vec<Arc<IPAddressPool>> {
        self.pools.state()
    }

    fn advertisements(&self) -> Vec<Arc<L2Advertisement>> {
        self.advertisements.state()
    }

    fn speaker_pods(&self) -> Vec<Arc<Pod>> {
        self.speakers.state()
    }

    fn services(&self) -> Vec<Arc<Service>> {
        self.services.state()
    }

    fn endpoint_slices(&self) -> Vec<Arc<EndpointSlice>> {
        self.endpoint_slices.state()
    }

    fn service(&self, namespace: &str, name: &str) -> Option<Arc<Service>> {
        self.services.get(&ObjectRef::new(name).within(namespace))
    }

    fn endpoint_slice(&self, namespace: &str, name: &str) -> Option<Arc<EndpointSlice>> {
        self.endpoint_slices.get(&ObjectRef::new(name).within(namespace))
    }

    fn take_changes(&self) -> Changes {
        std::mem::replace(
            &mut self.changes.lock().unwrap_or_else(|p| p.into_inner()),
            Changes::none(),
        )
    }

    fn take_pending(&self) -> Option<Instant> {
        self.pending_since.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// Notes an applied or deleted object in [`Changes`].
type Record = fn(&ObjectMeta, &mut Changes);

fn object_key(meta: &ObjectMeta) -> ObjectKey {
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

/// What a watch task reports to.
struct Watch {
    changed: Arc<Notify>,
    pending_since: Arc<Mutex<Option<Instant>>>,
    changes: Arc<Mutex<Changes>>,
    record: Record,
    synced: Arc<[AtomicBool; 6]>,
    index: usize,
}

impl Watch {
    /// `object` was applied or deleted; `None`: the watch relisted, anything may have changed.
    fn changed(&self, object: Option<&ObjectMeta>) {
        {
            let mut changes = self.changes.lock().unwrap_or_else(|p| p.into_inner());
            match object {
                Some(meta) => (self.record)(meta, &mut changes),
                None => changes.everything = true,
            }
        }
        self.pending_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert_with(Instant::now);
        self.changed.notify_one();
    }
}

fn spawn_watch<K>(tasks: &mut Tasks, name: &'static str, api: Api<K>, watch: Watch, config: watcher::Config) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, config).default_backoff().reflect(writer);
    tasks.spawn(name, async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(watcher::Event::InitDone) => {
                    watch.synced[watch.index].store(true, Ordering::SeqCst);
                    watch.changed(None);
                }
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
                Ok(watcher::Event::Apply(object) | watcher::Event::Delete(object)) => {
                    watch.changed(Some(object.meta()))
                }
                Err(e) => tracing::warn!(kind = %K::kind(&()), error = %e, "watch failed; retrying with backoff"),
            }
        }
    });
    reader
}
