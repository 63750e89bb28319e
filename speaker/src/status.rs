//! Reports what this node announces: one `ServiceL2Status` per announced Service (removed when
//! the node stops announcing it) and a `nodeAssigned` Event on the Service when it starts.
//! It also removes what other nodes cannot clean up any more ([`is_stale`]): their objects for
//! IPs this node took over, and their objects that list no IPs at all.
//!
//! Runs beside the election loop and never blocks it: the loop publishes the desired state on
//! a watch channel; this task converges the API towards it and retries while the API is away.
//! A pass looks only at the Services that changed since the last one — in what this node
//! announces or in the watched objects — so its cost does not grow with the number of
//! Services; after a relist and after a failed write it looks at all. Time passing is no event
//! but for one rule of [`is_stale`], another node's object that lists no IPs: the task wakes
//! when the first of those reaches [`EMPTY_GRACE`] ([`grace_ends`]), and an idle speaker does
//! no pass at all.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use herald_config::l2status::{NODE_LABEL, SERVICE_NAME_LABEL, SERVICE_NAMESPACE_LABEL};
use herald_config::{ServiceL2Status, ServiceL2StatusStatus};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio::time::Instant;

/// Reason of the Event on a Service whose announcement this node took.
pub const NODE_ASSIGNED: &str = "nodeAssigned";

/// How long a pass waits after a watch event for the rest of its burst (our own writes, another
/// speaker's, a relist).
const EVENT_DEBOUNCE: Duration = Duration::from_millis(100);
/// How soon a pass after a failed write tries again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// A Service by namespace and name.
pub type ServiceKey = (String, String);

/// A Service this node announces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announced {
    pub ips: Vec<IpAddr>,
    pub interfaces: Vec<String>,
}

/// `namespace/name` of a Service → what this node announces for it.
pub type AnnouncedServices = BTreeMap<ServiceKey, Announced>;

/// `namespace/name` of a Service → the IPs the election gave this node for it.
pub type PlannedServices = BTreeMap<ServiceKey, Vec<IpAddr>>;

/// What this node really announces for each Service: the IPs the election gave it (`planned`)
/// with the links the announcer answers on for each (`real`, [`Announcer::watch_answered`]).
/// An IP the announcer answers on no link (its link failed to open, or went away) is not
/// reported, and a Service left with no IP gets no object: the status must not say this node
/// answers where it does not.
///
/// [`Announcer::watch_answered`]: crate::announcer::Announcer::watch_answered
pub fn really_announced(planned: &PlannedServices, real: &BTreeMap<IpAddr, Vec<String>>) -> AnnouncedServices {
    planned
        .iter()
        .filter_map(|(key, planned_ips)| {
            let mut ips = Vec::new();
            let mut interfaces: Vec<String> = Vec::new();
            for ip in planned_ips {
                let Some(links) = real.get(ip).filter(|links| !links.is_empty()) else {
                    continue;
                };
                ips.push(*ip);
                for link in links {
                    if !interfaces.contains(link) {
                        interfaces.push(link.clone());
                    }
                }
            }
            interfaces.sort();
            (!ips.is_empty()).then(|| (key.clone(), Announced { ips, interfaces }))
        })
        .collect()
}

/// Object name: stable per (Service, node), within the 63-character label-value limit.
pub fn status_name(namespace: &str, service: &str, node: &str) -> String {
    let digest = Sha256::digest(format!("{namespace}/{service}/{node}").as_bytes());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("l2-{hex}")
}

/// The Service an object describes, from its labels (empty strings where a label is missing).
fn service_of(object: &ServiceL2Status) -> ServiceKey {
    let labels = object.labels();
    (
        labels.get(SERVICE_NAMESPACE_LABEL).cloned().unwrap_or_default(),
        labels.get(SERVICE_NAME_LABEL).cloned().unwrap_or_default(),
    )
}

/// The Services a pass looks at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every Service this node announces, has written, or that any object describes.
    Everything,
    /// Only these.
    Services(BTreeSet<ServiceKey>),
}

impl Default for Scope {
    fn default() -> Self {
        Scope::Services(BTreeSet::new())
    }
}

impl Scope {
    pub fn is_empty(&self) -> bool {
        matches!(self, Scope::Services(keys) if keys.is_empty())
    }

    pub fn add(&mut self, key: ServiceKey) {
        if let Scope::Services(keys) = self {
            keys.insert(key);
        }
    }

    pub fn widen(&mut self, other: Scope) {
        match other {
            Scope::Everything => *self = Scope::Everything,
            Scope::Services(keys) => keys.into_iter().for_each(|k| self.add(k)),
        }
    }
}

/// The Services whose announcement differs between `before` and `after` (added, removed, or
/// with other IPs or interfaces).
pub fn changed_services(before: &AnnouncedServices, after: &AnnouncedServices) -> BTreeSet<ServiceKey> {
    let mut changed: BTreeSet<ServiceKey> = before
        .iter()
        .filter(|(key, entry)| after.get(*key) != Some(*entry))
        .map(|(key, _)| key.clone())
        .collect();
    changed.extend(after.keys().filter(|key| !before.contains_key(*key)).cloned());
    changed
}

/// The `ServiceL2Status` objects as the watch shows them, by name and by the Service they
/// describe, so a pass reads one Service's objects without reading them all.
#[derive(Debug, Default)]
pub struct Objects {
    by_name: HashMap<String, Arc<ServiceL2Status>>,
    by_service: HashMap<ServiceKey, BTreeSet<String>>,
}

impl Objects {
    pub fn from_list(objects: impl IntoIterator<Item = ServiceL2Status>) -> Self {
        let mut all = Objects::default();
        for object in objects {
            all.apply(object);
        }
        all
    }

    pub fn get(&self, name: &str) -> Option<&ServiceL2Status> {
        self.by_name.get(name).map(Arc::as_ref)
    }

    /// Every object that describes `service`.
    pub fn of_service<'a>(&'a self, service: &ServiceKey) -> impl Iterator<Item = &'a ServiceL2Status> + 'a {
        self.by_service
            .get(service)
            .into_iter()
            .flatten()
            .filter_map(|name| self.get(name))
    }

    pub fn services(&self) -> impl Iterator<Item = &ServiceKey> {
        self.by_service.keys()
    }

    /// Adds or replaces an object; returns the Services it described before and describes now
    /// (different if someone edited its labels).
    pub fn apply(&mut self, object: ServiceL2Status) -> Scope {
        let name = object.name_any();
        let mut touched = self.forget(&name);
        let service = service_of(&object);
        self.by_service.entry(service.clone()).or_default().insert(name.clone());
        self.by_name.insert(name, Arc::new(object));
        touched.add(service);
        touched
    }

    /// Removes an object; returns the Service it described.
    pub fn delete(&mut self, object: &ServiceL2Status) -> Scope {
        self.forget(&object.name_any())
    }

    fn forget(&mut self, name: &str) -> Scope {
        let mut touched = Scope::default();
        if let Some(old) = self.by_name.remove(name) {
            let service = service_of(&old);
            if let Some(names) = self.by_service.get_mut(&service) {
                names.remove(name);
                if names.is_empty() {
                    self.by_service.remove(&service);
                }
            }
            touched.add(service);
        }
        touched
    }
}

/// The objects as a `watcher` stream reports them, with a relist replacing them only once
/// complete.
#[derive(Debug, Default)]
pub struct Mirror {
    objects: Objects,
    relisting: Option<Vec<ServiceL2Status>>,
    synced: bool,
}

impl Mirror {
    pub fn objects(&self) -> &Objects {
        &self.objects
    }

    /// Whether a first list has completed.
    pub fn synced(&self) -> bool {
        self.synced
    }

    /// Takes one event; returns the Services a pass should look at because of it.
    pub fn handle(&mut self, event: watcher::Event<ServiceL2Status>) -> Scope {
        match event {
            watcher::Event::Apply(object) => self.objects.apply(object),
            watcher::Event::Delete(object) => self.objects.delete(&object),
            watcher::Event::Init => {
                self.relisting = Some(Vec::new());
                Scope::default()
            }
            watcher::Event::InitApply(object) => {
                self.relisting.get_or_insert_default().push(object);
                Scope::default()
            }
            watcher::Event::InitDone => {
                // Anything missed while the watch was away (deletes included) is in the list.
                self.objects = Objects::from_list(self.relisting.take().unwrap_or_default());
                self.synced = true;
                Scope::Everything
            }
        }
    }
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
/// What it writes follows the election (`planned`) and what the announcer really answers for
/// (`answered`): an IP whose link goes away drops out of the objects without waiting for a pass
/// of the speaker's loop.
pub async fn run(
    client: Client,
    writer_config: Writer,
    mut planned: watch::Receiver<PlannedServices>,
    mut answered: watch::Receiver<BTreeMap<IpAddr, Vec<String>>>,
) {
    let Writer { namespace, node, owner } = writer_config;
    let api: Api<ServiceL2Status> = Api::namespaced(client.clone(), &namespace);
    // Any change to the objects is looked at: another node deleting ours as stale (after a
    // partition it could not see through), a user's edit, a relist after a reconnect. Without
    // this the objects were repaired only on the next full pass, and a Service could list no
    // announcing node for that long while one announced it.
    let mut events = watcher(api.clone(), watcher::Config::default())
        .default_backoff()
        .boxed();
    let reporter = Reporter::from(format!("{}/{node}", herald_config::deploy::SPEAKER).as_str());
    let mut mirror = Mirror::default();
    let mut want = AnnouncedServices::new();
    // Objects this task created, kept until it deletes them: the watch can lag behind our own
    // create, and an object we no longer want must go even if the watch has not shown it.
    let mut written: BTreeMap<String, ServiceKey> = BTreeMap::new();
    let mut dirty = Scope::Everything;
    let mut next_pass: Option<Instant> = None;
    // When the first of other nodes' objects that list no IPs turns stale.
    let mut grace_over: Option<Instant> = None;
    loop {
        let pass_at = next_pass.into_iter().chain(grace_over).min();
        let mut inputs_changed = false;
        tokio::select! {
            changed = planned.changed() => {
                if changed.is_err() {
                    return;
                }
                inputs_changed = true;
            }
            changed = answered.changed() => {
                if changed.is_err() {
                    return;
                }
                inputs_changed = true;
            }
            event = events.next() => match event {
                Some(Ok(event)) => {
                    dirty.widen(mirror.handle(event));
                    next_pass.get_or_insert_with(|| Instant::now() + EVENT_DEBOUNCE);
                }
                Some(Err(e)) => tracing::warn!(error = %e, "cannot watch ServiceL2Status objects; retrying"),
                None => return,
            },
            () = sleep_until(pass_at) => {
                next_pass = None;
                // Take what the watch already has, so the pass does not write what it reports done.
                while let Some(next) = events.next().now_or_never() {
                    match next {
                        Some(Ok(event)) => dirty.widen(mirror.handle(event)),
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "cannot watch ServiceL2Status objects; retrying");
                            break;
                        }
                        None => return,
                    }
                }
                if !mirror.synced() {
                    continue;
                }
                // One look at the objects: those past their grace join this pass (a failed
                // delete is retried as every failed write is), the next one sets the timer.
                let now = Timestamp::now();
                let mut next_end: Option<Timestamp> = None;
                for (end, service) in grace_ends(mirror.objects(), &node) {
                    if end <= now {
                        dirty.add(service);
                    } else {
                        next_end = Some(next_end.map_or(end, |next| next.min(end)));
                    }
                }
                grace_over = next_end
                    .map(|end| Instant::now() + Duration::try_from(end.duration_since(now)).unwrap_or_default());
                if !dirty.is_empty() {
                    let scope = std::mem::take(&mut dirty);
                    let writes = plan_writes(mirror.objects(), &node, &want, &written, &scope, now);
                    if !apply(&api, writes, owner.as_ref(), &mut written).await {
                        dirty = Scope::Everything;
                        next_pass = Some(Instant::now() + RETRY_AFTER);
                    }
                }
            }
        }
        if inputs_changed {
            let now_wanted = really_announced(&planned.borrow_and_update(), &answered.borrow_and_update());
            for (key, entry) in now_wanted.iter().filter(|(key, _)| !want.contains_key(*key)) {
                // A fresh recorder per Event: kube's folds same-reason Events and keeps the first note.
                publish_assigned(&Recorder::new(client.clone(), reporter.clone()), key, &node, entry).await;
            }
            dirty.widen(Scope::Services(changed_services(&want, &now_wanted)));
            want = now_wanted;
            next_pass = Some(Instant::now());
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

/// Decides one pass over the Services in `scope` from the watched objects, what this node
/// announces (`want`) and the objects it created itself (`written`, name → Service, which the
/// watch may not show yet).
pub fn plan_writes(
    objects: &Objects,
    node: &str,
    want: &AnnouncedServices,
    written: &BTreeMap<String, ServiceKey>,
    scope: &Scope,
    now: Timestamp,
) -> Writes {
    let everything: BTreeSet<ServiceKey>;
    let services = match scope {
        Scope::Services(keys) => keys,
        Scope::Everything => {
            everything = want
                .keys()
                .chain(objects.services())
                .chain(written.values())
                .cloned()
                .collect();
            &everything
        }
    };
    let mut writes = Writes::default();
    let mut delete = BTreeSet::new();
    for service in services {
        let (namespace, service_name) = service;
        let mine = status_name(namespace, service_name, node);
        match want.get(service) {
            Some(announced) => {
                let status = ServiceL2StatusStatus {
                    node: node.to_string(),
                    service_namespace: namespace.clone(),
                    service_name: service_name.clone(),
                    ips: announced.ips.iter().map(ToString::to_string).collect(),
                    interfaces: announced.interfaces.clone(),
                };
                let current = objects.get(&mine);
                if current.is_none() {
                    writes.create.push(Labelled {
                        name: mine.clone(),
                        node: node.to_string(),
                        namespace: namespace.clone(),
                        service: service_name.clone(),
                    });
                }
                if current.and_then(|c| c.status.as_ref()) != Some(&status) {
                    writes.status.push((mine, status));
                }
            }
            None if written.contains_key(&mine) => {
                delete.insert(mine);
            }
            None => {}
        }
        delete.extend(
            objects
                .of_service(service)
                .filter(|o| is_stale(o, node, want, now))
                .map(ResourceExt::name_any),
        );
    }
    writes.delete = delete.into_iter().collect();
    writes
}

/// Performs `writes`, logging what fails; returns whether all succeeded.
async fn apply(
    api: &Api<ServiceL2Status>,
    writes: Writes,
    owner: Option<&OwnerReference>,
    written: &mut BTreeMap<String, ServiceKey>,
) -> bool {
    let mut failed_create = BTreeSet::new();
    for new in writes.create {
        let mut object = ServiceL2Status::new(&new.name, Default::default());
        object.metadata.labels = Some(BTreeMap::from([
            (NODE_LABEL.to_string(), new.node),
            (SERVICE_NAMESPACE_LABEL.to_string(), new.namespace.clone()),
            (SERVICE_NAME_LABEL.to_string(), new.service.clone()),
        ]));
        object.metadata.owner_references = owner.map(|o| vec![o.clone()]);
        match api.create(&PostParams::default(), &object).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => {
                tracing::warn!(name = %new.name, error = %e, "cannot create ServiceL2Status");
                failed_create.insert(new.name);
                continue;
            }
        }
        written.insert(new.name, (new.namespace, new.service));
    }
    let mut all_done = failed_create.is_empty();
    for (name, status) in writes.status.into_iter().filter(|(n, _)| !failed_create.contains(n)) {
        let patch = serde_json::json!({"status": status});
        if let Err(e) = api.patch_status(&name, &field_manager(), &Patch::Merge(&patch)).await {
            tracing::warn!(%name, error = %e, "cannot write ServiceL2Status");
            all_done = false;
        }
    }
    for name in writes.delete {
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => {
                tracing::warn!(%name, error = %e, "cannot delete stale ServiceL2Status");
                all_done = false;
                continue;
            }
        }
        written.remove(&name);
    }
    all_done
}

/// How long another node's `ServiceL2Status` may list no IPs before it counts as stale: a
/// speaker creates its object and then writes the status, so a fresh one lists nothing for a
/// moment.
pub const EMPTY_GRACE: SignedDuration = SignedDuration::from_secs(30);

/// Other nodes' objects that list no IPs, as (when they turn stale by [`is_stale`], the
/// Service they describe): the one rule that time alone makes true.
pub fn grace_ends<'a>(objects: &'a Objects, node: &'a str) -> impl Iterator<Item = (Timestamp, ServiceKey)> + 'a {
    objects
        .by_name
        .values()
        .filter(move |object| object.labels().get(NODE_LABEL).map(String::as_str) != Some(node))
        .filter(|object| object.status.as_ref().is_none_or(|s| s.ips.is_empty()))
        .map(|object| {
            let end = object
                .metadata
                .creation_timestamp
                .as_ref()
                .and_then(|created| created.0.checked_add(EMPTY_GRACE).ok())
                .unwrap_or(Timestamp::MIN);
            (end, service_of(object))
        })
}

/// Sleeps until `at`; forever if `None`.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Whether an existing `ServiceL2Status` should go: ours but the Service is no longer announced
/// here; another node's whose every IP this node announces now (that node lost them, maybe by
/// dying, and cannot clean up); or another node's that lists no IPs at all (it announces
/// nothing, so it says nothing true; its node died before writing it) once it is older than
/// [`EMPTY_GRACE`]. Election is per IP, so two nodes may each announce one IP of a dual-stack
/// Service: both objects stay.
pub fn is_stale(object: &ServiceL2Status, node: &str, want: &AnnouncedServices, now: Timestamp) -> bool {
    let key = service_of(object);
    if object.labels().get(NODE_LABEL).map(String::as_str) == Some(node) {
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
            .all(|ip| ip.parse::<IpAddr>().is_ok_and(|ip| announced.ips.contains(&ip)))
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
        field_manager: Some(herald_config::deploy::SPEAKER.to_string()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use proptest::prelude::*;

    #[test]
    fn only_what_the_announcer_answers_for_is_reported() {
        let key = |name: &str| ("default".to_string(), name.to_string());
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let planned: PlannedServices = [
            (key("web"), vec![ip("10.0.0.1"), ip("fd00::1")]),
            (key("dns"), vec![ip("10.0.0.2")]),
        ]
        .into();
        // eth1 failed to open: the IPv6 address and dns are answered nowhere.
        let real = BTreeMap::from([(ip("10.0.0.1"), vec!["eth0".to_string()]), (ip("fd00::1"), Vec::new())]);
        let web_on_eth0 = Announced {
            ips: vec![ip("10.0.0.1")],
            interfaces: vec!["eth0".into()],
        };
        assert_eq!(really_announced(&planned, &real), [(key("web"), web_on_eth0)].into());
        let everywhere = BTreeMap::from([
            (ip("10.0.0.1"), vec!["eth1".to_string(), "eth0".to_string()]),
            (ip("fd00::1"), vec!["eth0".to_string()]),
            (ip("10.0.0.2"), vec!["eth1".to_string()]),
        ]);
        let reported = really_announced(&planned, &everywhere);
        assert_eq!(reported[&key("web")].ips, planned[&key("web")]);
        assert_eq!(
            reported[&key("web")].interfaces,
            ["eth0", "eth1"],
            "each link once, sorted"
        );
        assert_eq!(reported[&key("dns")].interfaces, ["eth1"]);
    }

    fn object_of(service: &str, node: &str, ips: &[&str]) -> ServiceL2Status {
        let mut o = ServiceL2Status::new(&status_name("default", service, node), Default::default());
        o.metadata.labels = Some(BTreeMap::from([
            (NODE_LABEL.to_string(), node.to_string()),
            (SERVICE_NAMESPACE_LABEL.to_string(), "default".to_string()),
            (SERVICE_NAME_LABEL.to_string(), service.to_string()),
        ]));
        o.status = Some(ServiceL2StatusStatus {
            node: node.into(),
            service_namespace: "default".into(),
            service_name: service.into(),
            ips: ips.iter().map(|s| s.to_string()).collect(),
            interfaces: vec!["eth0".into()],
        });
        o
    }

    fn object(node: &str, ips: &[&str]) -> ServiceL2Status {
        object_of("web", node, ips)
    }

    fn web() -> ServiceKey {
        ("default".to_string(), "web".to_string())
    }

    fn announcing(ips: &[&str]) -> AnnouncedServices {
        BTreeMap::from([(
            web(),
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
    fn grace_ends_are_when_other_nodes_empty_objects_turn_stale() {
        let created = |mut o: ServiceL2Status, at: Timestamp| {
            o.metadata.creation_timestamp = Some(Time(at));
            o
        };
        let early = now() - SignedDuration::from_secs(10);
        let objects = Objects::from_list([
            created(object_of("web", "n2", &[]), early),
            created(object_of("dns", "n3", &[]), now()),
            created(object_of("api", "n2", &["10.0.0.3"]), early),
            created(object_of("db", "n1", &[]), early),
        ]);
        let mut ends: Vec<_> = grace_ends(&objects, "n1").collect();
        ends.sort();
        let key = |name: &str| ("default".to_string(), name.to_string());
        assert_eq!(
            ends,
            [(early + EMPTY_GRACE, key("web")), (now() + EMPTY_GRACE, key("dns"))]
        );
        // Each turns stale exactly then, not before.
        let want = AnnouncedServices::new();
        for (end, service) in ends {
            let object = objects.of_service(&service).next().unwrap();
            assert!(!is_stale(object, "n1", &want, end - SignedDuration::from_millis(1)));
            assert!(is_stale(object, "n1", &want, end));
        }
        // Objects that list IPs, or are this node's, never need a timer.
        let settled = Objects::from_list([created(object_of("api", "n2", &["10.0.0.3"]), early)]);
        assert_eq!(grace_ends(&settled, "n1").count(), 0);
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
        // The same address written another way is the same address.
        assert!(stale(&object("n2", &["fd00:0::1"]), &announcing(&["fd00::1"])));
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
    fn a_pass_writes_what_differs_and_deletes_what_it_created_even_before_the_watch_shows_it() {
        let mine = status_name("default", "web", "n1");
        let none = Objects::default();
        let nothing_written = BTreeMap::new();
        let everything = Scope::Everything;
        // Nothing watched yet: create and write the status.
        let writes = plan_writes(
            &none,
            "n1",
            &announcing(&["10.0.0.1"]),
            &nothing_written,
            &everything,
            now(),
        );
        assert_eq!(writes.create.len(), 1);
        assert_eq!(writes.create[0].name, mine);
        assert_eq!(writes.status.len(), 1);
        assert!(writes.delete.is_empty());
        // Watched and equal: nothing to do.
        let watched = Objects::from_list([object("n1", &["10.0.0.1"])]);
        let written = BTreeMap::from([(mine.clone(), web())]);
        assert!(plan_writes(&watched, "n1", &announcing(&["10.0.0.1"]), &written, &everything, now()).is_empty());
        // The node lost the Service before the watch showed its create: the object still goes.
        let writes = plan_writes(&none, "n1", &AnnouncedServices::new(), &written, &everything, now());
        assert_eq!(writes.delete, vec![mine.clone()]);
        assert!(writes.create.is_empty() && writes.status.is_empty());
        // A changed IP list is a status write, not a create.
        let writes = plan_writes(&watched, "n1", &announcing(&["10.0.0.2"]), &written, &everything, now());
        assert!(writes.create.is_empty());
        assert_eq!(writes.status.len(), 1);
        // Another node's object for the IP this node took over goes; one this node did not
        // take stays.
        let theirs = Objects::from_list([object("n2", &["10.0.0.1"])]);
        let writes = plan_writes(
            &theirs,
            "n1",
            &announcing(&["10.0.0.1"]),
            &nothing_written,
            &everything,
            now(),
        );
        assert_eq!(writes.delete, vec![status_name("default", "web", "n2")]);
        assert!(
            plan_writes(
                &theirs,
                "n1",
                &AnnouncedServices::new(),
                &nothing_written,
                &everything,
                now()
            )
            .is_empty()
        );
    }

    #[test]
    fn a_pass_over_some_services_touches_only_their_objects() {
        let watched = Objects::from_list([
            object_of("web", "n2", &["10.0.0.1"]),
            object_of("db", "n2", &["10.0.0.2"]),
        ]);
        let mut want = announcing(&["10.0.0.1"]);
        want.insert(
            ("default".to_string(), "db".to_string()),
            Announced {
                ips: vec!["10.0.0.2".parse().unwrap()],
                interfaces: vec!["eth0".into()],
            },
        );
        let only_web = Scope::Services([web()].into());
        let writes = plan_writes(&watched, "n1", &want, &BTreeMap::new(), &only_web, now());
        assert_eq!(writes.create.len(), 1);
        assert_eq!(writes.create[0].service, "web");
        assert_eq!(writes.delete, vec![status_name("default", "web", "n2")]);
        assert!(plan_writes(&watched, "n1", &want, &BTreeMap::new(), &Scope::default(), now()).is_empty());
    }

    #[test]
    fn the_mirror_follows_watch_events_and_replaces_everything_on_a_relist() {
        let mut mirror = Mirror::default();
        assert!(!mirror.synced());
        assert!(mirror.handle(watcher::Event::Init).is_empty());
        assert!(
            mirror
                .handle(watcher::Event::InitApply(object("n1", &["10.0.0.1"])))
                .is_empty()
        );
        assert_eq!(mirror.handle(watcher::Event::InitDone), Scope::Everything);
        assert!(mirror.synced());
        assert_eq!(mirror.objects().of_service(&web()).count(), 1);
        // A label edit moves the object from one Service to another: both need a look.
        let mut relabelled = object("n1", &["10.0.0.1"]);
        relabelled
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert(SERVICE_NAME_LABEL.to_string(), "db".to_string());
        let db = ("default".to_string(), "db".to_string());
        assert_eq!(
            mirror.handle(watcher::Event::Apply(relabelled.clone())),
            Scope::Services([web(), db.clone()].into())
        );
        assert_eq!(mirror.objects().of_service(&web()).count(), 0);
        assert_eq!(
            mirror.handle(watcher::Event::Delete(relabelled)),
            Scope::Services([db.clone()].into())
        );
        assert_eq!(mirror.objects().of_service(&db).count(), 0);
        // A relist drops what it does not list, once complete.
        mirror.handle(watcher::Event::Apply(object("n2", &["10.0.0.1"])));
        mirror.handle(watcher::Event::Init);
        assert_eq!(
            mirror.objects().of_service(&web()).count(),
            1,
            "kept until the relist completes"
        );
        mirror.handle(watcher::Event::InitDone);
        assert_eq!(mirror.objects().of_service(&web()).count(), 0);
    }

    #[test]
    fn status_names_are_stable_short_and_distinct() {
        let a = status_name("default", "web", "node-1");
        assert_eq!(a, status_name("default", "web", "node-1"));
        assert_ne!(a, status_name("default", "web", "node-2"));
        assert_eq!(a.len(), 19);
    }

    const SERVICES: [&str; 4] = ["a", "b", "c", "d"];
    const NODES: [&str; 3] = ["n1", "n2", "n3"];
    const IPS: [&str; 3] = ["10.0.0.1", "10.0.0.2", "fd00::1"];

    fn ip_set() -> impl Strategy<Value = Vec<&'static str>> {
        proptest::sample::subsequence(IPS.to_vec(), 0..=IPS.len())
    }

    prop_compose! {
        fn world()(
            objects in proptest::collection::vec(
                (proptest::sample::select(SERVICES.to_vec()), proptest::sample::select(NODES.to_vec()), ip_set()), 0..8),
            want in proptest::collection::btree_map(proptest::sample::select(SERVICES.to_vec()), ip_set(), 0..4),
            written in proptest::collection::btree_set(proptest::sample::select(SERVICES.to_vec()), 0..4),
        ) -> (Objects, AnnouncedServices, BTreeMap<String, ServiceKey>) {
            let objects = Objects::from_list(objects.into_iter().map(|(s, n, ips)| object_of(s, n, &ips)));
            let want = want
                .into_iter()
                .map(|(s, ips)| (
                    ("default".to_string(), s.to_string()),
                    Announced { ips: ips.iter().map(|i| i.parse().unwrap()).collect(), interfaces: vec!["eth0".into()] },
                ))
                .collect();
            let written = written
                .into_iter()
                .map(|s| (status_name("default", s, "n1"), ("default".to_string(), s.to_string())))
                .collect();
            (objects, want, written)
        }
    }

    proptest! {
        /// Looking at the Services one by one decides exactly what looking at all of them does:
        /// a pass over the changed Services misses nothing a full pass would write.
        #[test]
        fn passes_over_single_services_add_up_to_a_full_pass((objects, want, written) in world()) {
            let full = plan_writes(&objects, "n1", &want, &written, &Scope::Everything, now());
            let mut summed = Writes::default();
            for service in SERVICES {
                let one = Scope::Services([("default".to_string(), service.to_string())].into());
                let part = plan_writes(&objects, "n1", &want, &written, &one, now());
                summed.create.extend(part.create);
                summed.status.extend(part.status);
                summed.delete.extend(part.delete);
            }
            summed.delete.sort();
            prop_assert_eq!(summed, full);
        }
    }
}
