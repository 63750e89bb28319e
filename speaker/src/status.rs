//! Reports what this node announces: one `ServiceL2Status` per announced Service (removed when
//! the node stops announcing it) and a `nodeAssigned` Event on the Service when it starts.
//! It also removes what other nodes cannot clean up any more ([`is_stale`]): their objects for
//! IPs this node took over, and their objects that list no IPs at all.
//!
//! Runs beside the election loop and never blocks it: the loop publishes the desired state on
//! a watch channel; this task converges the API towards it and retries while the API is away.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use herald_config::{ServiceL2Status, ServiceL2StatusStatus};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use sha2::{Digest, Sha256};
use tokio::sync::{Notify, watch};

/// Labels on every `ServiceL2Status` the speakers write.
pub const NODE_LABEL: &str = "herald.io/node";
pub const SERVICE_NAMESPACE_LABEL: &str = "herald.io/service-namespace";
pub const SERVICE_NAME_LABEL: &str = "herald.io/service-name";
/// Reason of the Event on a Service whose announcement this node took.
pub const NODE_ASSIGNED: &str = "nodeAssigned";

/// A Service this node announces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announced {
    pub ips: Vec<IpAddr>,
    pub interfaces: Vec<String>,
}

/// `namespace/name` of a Service → what this node announces for it.
pub type AnnouncedServices = BTreeMap<(String, String), Announced>;

/// Object name: stable per (Service, node), within the 63-character label-value limit.
pub fn status_name(namespace: &str, service: &str, node: &str) -> String {
    let digest = Sha256::digest(format!("{namespace}/{service}/{node}").as_bytes());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("l2-{hex}")
}

/// Where and as whom the objects are written.
#[derive(Debug, Clone)]
pub struct Writer {
    /// Namespace of the objects.
    pub namespace: String,
    /// This node.
    pub node: String,
    /// Owner of every object this node creates (the speaker's DaemonSet), if known.
    pub owner: Option<OwnerReference>,
}

/// Converges `ServiceL2Status` objects and Events to `desired` until the channel closes.
pub async fn run(client: Client, writer_config: Writer, mut desired: watch::Receiver<AnnouncedServices>) {
    let Writer { namespace, node, owner } = writer_config;
    let api: Api<ServiceL2Status> = Api::namespaced(client.clone(), &namespace);
    let (store, writer) = reflector::store();
    let stream = watcher(api.clone(), watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .touched_objects();
    // Any change to the objects wakes the writer: another node deleting ours as stale (after a
    // partition it could not see through), a user's edit, a relist after a reconnect. Without
    // this the objects were repaired only on the next 30 s tick, and a Service could list no
    // announcing node for that long while one announced it.
    let touched = Arc::new(Notify::new());
    let notify = touched.clone();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while stream.next().await.is_some() {
            notify.notify_one();
        }
    });
    let reporter = Reporter::from(format!("herald-speaker/{node}").as_str());
    let mut announced_before: BTreeSet<(String, String)> = BTreeSet::new();
    // Names this task created, kept until it deletes them: the watch cache can lag behind our
    // own create, and an object we no longer want must go even if the cache has not shown it.
    let mut written: BTreeSet<String> = BTreeSet::new();
    loop {
        let want = desired.borrow_and_update().clone();
        for key in want.keys().filter(|k| !announced_before.contains(*k)) {
            let entry = &want[key];
            // A fresh recorder per Event: kube's folds same-reason Events and keeps the first note.
            publish_assigned(&Recorder::new(client.clone(), reporter.clone()), key, &node, entry).await;
        }
        announced_before = want.keys().cloned().collect();
        // Quiet only after a pass that found nothing to write: after writes, look again soon
        // to see them in the cache (and to retry what failed).
        let quiet = match store.wait_until_ready().await {
            Ok(()) => {
                let writes = plan_writes(&store.state(), &node, &want, &written, Timestamp::now());
                let nothing_to_do = writes.is_empty();
                apply(&api, writes, owner.as_ref(), &mut written).await;
                nothing_to_do
            }
            Err(_) => false,
        };
        let retry = tokio::time::sleep(if quiet {
            Duration::from_secs(30)
        } else {
            Duration::from_secs(1)
        });
        tokio::select! {
            changed = desired.changed() => if changed.is_err() { return },
            _ = touched.notified() => {
                // Let a burst of events (our own writes, a relist) arrive before the next pass.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            _ = retry => {},
        }
    }
}

/// The API writes that bring the objects to what this node announces.
#[derive(Debug, Default, PartialEq)]
pub struct Writes {
    /// Objects to create (empty; their status follows in `status`).
    pub create: Vec<Labelled>,
    /// Status to write, by object name.
    pub status: Vec<(String, ServiceL2StatusStatus)>,
    /// Objects to delete, by name.
    pub delete: Vec<String>,
}

/// A new object's name and its labels' values.
#[derive(Debug, PartialEq)]
pub struct Labelled {
    pub name: String,
    pub node: String,
    pub namespace: String,
    pub service: String,
}

impl Writes {
    pub fn is_empty(&self) -> bool {
        self.create.is_empty() && self.status.is_empty() && self.delete.is_empty()
    }
}

/// Decides one pass from the watch cache (`existing`), what this node announces (`want`) and
/// the names it created itself (`written`, which the cache may not show yet).
pub fn plan_writes(
    existing: &[Arc<ServiceL2Status>],
    node: &str,
    want: &AnnouncedServices,
    written: &BTreeSet<String>,
    now: Timestamp,
) -> Writes {
    let by_name: HashMap<String, &ServiceL2Status> = existing.iter().map(|o| (o.name_any(), o.as_ref())).collect();
    let mut writes = Writes::default();
    let mut wanted_names = BTreeSet::new();
    for ((namespace, service), announced) in want {
        let name = status_name(namespace, service, node);
        let status = ServiceL2StatusStatus {
            node: node.to_string(),
            service_namespace: namespace.clone(),
            service_name: service.clone(),
            ips: announced.ips.iter().map(ToString::to_string).collect(),
            interfaces: announced.interfaces.clone(),
        };
        let current = by_name.get(&name);
        if current.is_none() {
            writes.create.push(Labelled {
                name: name.clone(),
                node: node.to_string(),
                namespace: namespace.clone(),
                service: service.clone(),
            });
        }
        if current.and_then(|c| c.status.as_ref()) != Some(&status) {
            writes.status.push((name.clone(), status));
        }
        wanted_names.insert(name);
    }
    let mut delete: BTreeSet<String> = existing
        .iter()
        .filter(|o| is_stale(o, node, want, now))
        .map(|o| o.name_any())
        .collect();
    delete.extend(written.iter().filter(|n| !wanted_names.contains(*n)).cloned());
    writes.delete = delete.into_iter().collect();
    writes
}

/// Performs `writes`, logging what fails (the next pass retries it).
async fn apply(
    api: &Api<ServiceL2Status>,
    writes: Writes,
    owner: Option<&OwnerReference>,
    written: &mut BTreeSet<String>,
) {
    let mut failed_create = BTreeSet::new();
    for new in writes.create {
        let mut object = ServiceL2Status::new(&new.name, Default::default());
        object.metadata.labels = Some(BTreeMap::from([
            (NODE_LABEL.to_string(), new.node),
            (SERVICE_NAMESPACE_LABEL.to_string(), new.namespace),
            (SERVICE_NAME_LABEL.to_string(), new.service),
        ]));
        object.metadata.owner_references = owner.map(|o| vec![o.clone()]);
        match api.create(&PostParams::default(), &object).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => {
                tracing::warn!(name = %new.name, error = %e, "cannot create ServiceL2Status");
                failed_create.insert(new.name.clone());
                continue;
            }
        }
        written.insert(new.name);
    }
    for (name, status) in writes.status.into_iter().filter(|(n, _)| !failed_create.contains(n)) {
        let patch = serde_json::json!({"status": status});
        if let Err(e) = api.patch_status(&name, &field_manager(), &Patch::Merge(&patch)).await {
            tracing::warn!(%name, error = %e, "cannot write ServiceL2Status");
        }
    }
    for name in writes.delete {
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => {
                tracing::warn!(%name, error = %e, "cannot delete stale ServiceL2Status");
                continue;
            }
        }
        written.remove(&name);
    }
}

/// How long another node's `ServiceL2Status` may list no IPs before it counts as stale: a
/// speaker creates its object and then writes the status, so a fresh one lists nothing for a
/// moment.
pub const EMPTY_GRACE: SignedDuration = SignedDuration::from_secs(30);

/// Whether an existing `ServiceL2Status` should go: ours but the Service is no longer announced
/// here; another node's whose every IP this node announces now (that node lost them, maybe by
/// dying, and cannot clean up); or another node's that lists no IPs at all (it announces
/// nothing, so it says nothing true; its node died before writing it) once it is older than
/// [`EMPTY_GRACE`]. Election is per IP, so two nodes may each announce one IP of a dual-stack
/// Service: both objects stay.
pub fn is_stale(object: &ServiceL2Status, node: &str, want: &AnnouncedServices, now: Timestamp) -> bool {
    let labels = object.labels();
    let key = (
        labels.get(SERVICE_NAMESPACE_LABEL).cloned().unwrap_or_default(),
        labels.get(SERVICE_NAME_LABEL).cloned().unwrap_or_default(),
    );
    if labels.get(NODE_LABEL).map(String::as_str) == Some(node) {
        return !want.contains_key(&key);
    }
    let theirs = object.status.as_ref().map(|s| s.ips.as_slice()).unwrap_or_default();
    if theirs.is_empty() {
        return object
            .metadata
            .creation_timestamp
            .as_ref()
            .is_none_or(|created| now.duration_since(created.0) >= EMPTY_GRACE);
    }
    want.get(&key).is_some_and(|announced| {
        theirs
            .iter()
            .all(|ip| announced.ips.iter().any(|mine| mine.to_string() == *ip))
    })
}

async fn publish_assigned(recorder: &Recorder, (namespace, service): &(String, String), node: &str, entry: &Announced) {
    let ips: Vec<String> = entry.ips.iter().map(ToString::to_string).collect();
    let event = Event {
        type_: EventType::Normal,
        reason: NODE_ASSIGNED.to_string(),
        note: Some(format!(
            "announcing {} from node {node} on {}",
            ips.join(", "),
            if entry.interfaces.is_empty() {
                "no interface yet".to_string()
            } else {
                entry.interfaces.join(", ")
            }
        )),
        action: "Announce".to_string(),
        secondary: None,
    };
    let reference = ObjectReference {
        api_version: Some("v1".to_string()),
        kind: Some("Service".to_string()),
        name: Some(service.clone()),
        namespace: Some(namespace.clone()),
        ..Default::default()
    };
    if let Err(e) = recorder.publish(&event, &reference).await {
        tracing::warn!(service = %format!("{namespace}/{service}"), error = %e, "cannot publish nodeAssigned event");
    }
}

fn field_manager() -> PatchParams {
    PatchParams {
        field_manager: Some("herald-speaker".to_string()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn object(node: &str, ips: &[&str]) -> ServiceL2Status {
        let mut o = ServiceL2Status::new(&status_name("default", "web", node), Default::default());
        o.metadata.labels = Some(BTreeMap::from([
            (NODE_LABEL.to_string(), node.to_string()),
            (SERVICE_NAMESPACE_LABEL.to_string(), "default".to_string()),
            (SERVICE_NAME_LABEL.to_string(), "web".to_string()),
        ]));
        o.status = Some(ServiceL2StatusStatus {
            node: node.into(),
            service_namespace: "default".into(),
            service_name: "web".into(),
            ips: ips.iter().map(|s| s.to_string()).collect(),
            interfaces: vec!["eth0".into()],
        });
        o
    }

    fn announcing(ips: &[&str]) -> AnnouncedServices {
        BTreeMap::from([(
            ("default".to_string(), "web".to_string()),
            Announced {
                ips: ips.iter().map(|s| s.parse().unwrap()).collect(),
                interfaces: vec!["eth0".into()],
            },
        )])
    }

    fn now() -> Timestamp {
        Timestamp::from_second(1_000_000).unwrap()
    }

    #[test]
    fn stale_objects_are_ours_unannounced_or_others_fully_taken_over() {
        let nothing = AnnouncedServices::new();
        let stale = |o: &ServiceL2Status, want: &AnnouncedServices| is_stale(o, "n1", want, now());
        assert!(stale(&object("n1", &["10.0.0.1"]), &nothing));
        assert!(!stale(&object("n1", &["10.0.0.1"]), &announcing(&["10.0.0.1"])));
        // n2 announced 10.0.0.1, n1 took it over: n2's object goes.
        assert!(stale(&object("n2", &["10.0.0.1"]), &announcing(&["10.0.0.1"])));
        // Dual stack split across nodes: n2 keeps its IPv6 object while n1 announces IPv4.
        assert!(!stale(&object("n2", &["fd00::1"]), &announcing(&["10.0.0.1"])));
        // Another node's object for a Service this node does not announce is not ours to touch.
        assert!(!stale(&object("n2", &["10.0.0.1"]), &nothing));
    }

    #[test]
    fn another_nodes_object_listing_no_ips_is_stale_after_a_grace() {
        let nothing = AnnouncedServices::new();
        let empty = object("n2", &[]);
        // Whether or not this node announces the Service, the object claims an announcement of
        // nothing: it goes.
        assert!(is_stale(&empty, "n1", &nothing, now()));
        assert!(is_stale(&empty, "n1", &announcing(&["10.0.0.1"]), now()));
        let mut no_status = object("n2", &[]);
        no_status.status = None;
        assert!(is_stale(&no_status, "n1", &nothing, now()));
        // Just created: its speaker is about to write the status; leave it.
        let mut fresh = object("n2", &[]);
        fresh.metadata.creation_timestamp = Some(Time(now() - SignedDuration::from_secs(5)));
        assert!(!is_stale(&fresh, "n1", &nothing, now()));
        fresh.metadata.creation_timestamp = Some(Time(now() - EMPTY_GRACE));
        assert!(is_stale(&fresh, "n1", &nothing, now()));
        // Our own object is judged by what we announce, empty or not.
        assert!(!is_stale(&object("n1", &[]), "n1", &announcing(&["10.0.0.1"]), now()));
    }

    #[test]
    fn a_pass_writes_what_differs_and_deletes_what_it_created_even_before_the_cache_shows_it() {
        let mine = status_name("default", "web", "n1");
        // Nothing cached yet: create and write the status.
        let writes = plan_writes(&[], "n1", &announcing(&["10.0.0.1"]), &BTreeSet::new(), now());
        assert_eq!(writes.create.len(), 1);
        assert_eq!(writes.create[0].name, mine);
        assert_eq!(writes.status.len(), 1);
        assert!(writes.delete.is_empty());
        // Cached and equal: nothing to do.
        let cached = [Arc::new(object("n1", &["10.0.0.1"]))];
        let written = BTreeSet::from([mine.clone()]);
        assert!(plan_writes(&cached, "n1", &announcing(&["10.0.0.1"]), &written, now()).is_empty());
        // The node lost the Service before the cache showed its create: the object still goes.
        let writes = plan_writes(&[], "n1", &AnnouncedServices::new(), &written, now());
        assert_eq!(writes.delete, vec![mine.clone()]);
        assert!(writes.create.is_empty() && writes.status.is_empty());
        // A changed IP list is a status write, not a create.
        let writes = plan_writes(&cached, "n1", &announcing(&["10.0.0.2"]), &written, now());
        assert!(writes.create.is_empty());
        assert_eq!(writes.status.len(), 1);
        // Another node's object for the IP this node took over goes; one this node did not
        // take stays.
        let theirs = [Arc::new(object("n2", &["10.0.0.1"]))];
        let writes = plan_writes(&theirs, "n1", &announcing(&["10.0.0.1"]), &BTreeSet::new(), now());
        assert_eq!(writes.delete, vec![status_name("default", "web", "n2")]);
        assert!(plan_writes(&theirs, "n1", &AnnouncedServices::new(), &BTreeSet::new(), now()).is_empty());
    }

    #[test]
    fn status_names_are_stable_short_and_distinct() {
        let a = status_name("default", "web", "node-1");
        assert_eq!(a, status_name("default", "web", "node-1"));
        assert_ne!(a, status_name("default", "web", "node-2"));
        assert_eq!(a.len(), 19);
    }
}
