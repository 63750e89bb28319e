//! What the speaker watches in Kubernetes, and the facts election is computed from.
//!
//! Every watch feeds a reflector store and pokes [`Cluster::changed`]; the speaker's loop
//! recomputes ownership from the stores. Watches retry with backoff, so while the API server
//! is away the stores keep their last contents and announcing goes on unchanged.
//!
//! - [`facts`]: objects → the plain facts election works on.
//! - [`in_use`]: which pools and advertisements are used; one edited into an invalid spec keeps
//!   its last valid spec, so a bad edit never stops an announcement.

pub mod facts;
pub mod in_use;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::StreamExt;
use herald_config::{IPAddressPool, L2Advertisement};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;

/// The speaker's stores of Kubernetes objects.
#[derive(Clone)]
pub struct Cluster {
    pub nodes: Store<Node>,
    pub services: Store<Service>,
    pub endpoint_slices: Store<EndpointSlice>,
    pub pools: Store<IPAddressPool>,
    pub advertisements: Store<L2Advertisement>,
    /// Notified after every change to any store.
    pub changed: Arc<Notify>,
    synced: Arc<[AtomicBool; 5]>,
}

impl Cluster {
    /// Starts the watches; Herald's own kinds are read from `namespace` only.
    pub fn start(client: &Client, namespace: &str) -> Cluster {
        let changed = Arc::new(Notify::new());
        let synced: Arc<[AtomicBool; 5]> = Arc::new(Default::default());
        let watch = |i: usize| (changed.clone(), synced.clone(), i);
        Cluster {
            nodes: spawn_watch(Api::all(client.clone()), watch(0)),
            services: spawn_watch(Api::all(client.clone()), watch(1)),
            endpoint_slices: spawn_watch(Api::all(client.clone()), watch(2)),
            pools: spawn_watch(Api::namespaced(client.clone(), namespace), watch(3)),
            advertisements: spawn_watch(Api::namespaced(client.clone(), namespace), watch(4)),
            changed,
            synced,
        }
    }

    /// Every store has had its first full list.
    pub fn synced(&self) -> bool {
        self.synced.iter().all(|s| s.load(Ordering::SeqCst))
    }
}

fn spawn_watch<K>(api: Api<K>, (changed, synced, index): (Arc<Notify>, Arc<[AtomicBool; 5]>, usize)) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer);
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(watcher::Event::InitDone) => {
                    synced[index].store(true, Ordering::SeqCst);
                    changed.notify_one();
                }
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
                Ok(_) => changed.notify_one(),
                Err(e) => tracing::warn!(kind = %K::kind(&()), error = %e, "watch failed; retrying with backoff"),
            }
        }
    });
    reader
}
