//! The object store: every object as generic JSON keyed by (group, resource) and
//! (namespace, name), a cluster-wide monotonically increasing resourceVersion, a bounded
//! history of changes for watches that resume, and the fan-out of live changes.
//!
//! Invariants: every write bumps the counter by one and is recorded, under the same lock,
//! both in the history and on the broadcast channel, so a watcher that subscribes while
//! holding the lock sees each change exactly once.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{Notify, broadcast};

use super::registry::GroupResource;

/// (namespace, name); namespace is "" for cluster-scoped objects.
pub type ObjectKey = (String, String);

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// Created.
    Added,
    /// Changed.
    Modified,
    /// Removed.
    Deleted,
}

/// One recorded change.
#[derive(Debug)]
pub struct StoredEvent {
    /// resourceVersion of the change.
    pub rv: u64,
    /// Which resource changed.
    pub resource: GroupResource,
    /// What happened.
    pub kind: EventType,
    /// The object after the change (for deletions: its last state, with the deletion's RV).
    pub object: Arc<Value>,
    /// The object before the change, if any (lets selector watches see objects leave).
    pub previous: Option<Arc<Value>>,
    /// The encoded watch line per event type (ADDED, MODIFIED, DELETED) in the stored
    /// form, filled by the first watcher that needs it so the others reuse it.
    pub encoded: [std::sync::OnceLock<axum::body::Bytes>; 3],
}

/// Why a write was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// Create of an existing key.
    #[error("already exists")]
    AlreadyExists,
    /// Update or delete of a missing key.
    #[error("not found")]
    NotFound,
    /// Compare-and-swap failed: the stored resourceVersion differs.
    #[error("resourceVersion conflict")]
    Conflict,
}

/// A resumed watch asked for a resourceVersion older than the history window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too old resource version: {requested} ({oldest})")]
pub struct TooOld {
    /// What the client asked for.
    pub requested: u64,
    /// Oldest version the server can still resume from.
    pub oldest: u64,
}

/// A resumed watch: past changes newer than the requested version, a receiver for
/// what follows, and the current version.
pub type Resumed = (Vec<Arc<StoredEvent>>, broadcast::Receiver<Arc<StoredEvent>>, u64);

/// Contents of a state file.
#[derive(Debug, Serialize, Deserialize)]
pub struct Snapshot {
    /// The resourceVersion counter.
    #[serde(rename = "resourceVersion")]
    pub resource_version: u64,
    /// Every object with its resource.
    pub objects: Vec<SnapshotEntry>,
}

/// One object in a [`Snapshot`].
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotEntry {
    /// Group and resource.
    #[serde(flatten)]
    pub resource: GroupResource,
    /// The object.
    pub object: Value,
}

struct Inner {
    rv: u64,
    objects: HashMap<GroupResource, BTreeMap<ObjectKey, Arc<Value>>>,
    history: VecDeque<Arc<StoredEvent>>,
    history_limit: usize,
    /// Watches may resume from any version >= this one.
    oldest_resumable: u64,
}

/// The store. Cheap operations under one mutex; never held across an await.
pub struct Store {
    inner: Mutex<Inner>,
    events: broadcast::Sender<Arc<StoredEvent>>,
    changed: Notify,
}

/// Capacity of the live fan-out: a watcher that falls this far behind is disconnected
/// (it resumes from its last version, or relists on 410), as kube-apiserver does.
const FANOUT_CAPACITY: usize = 65_536;

/// The resourceVersion stored in an object's metadata, 0 if absent or malformed.
pub fn object_rv(object: &Value) -> u64 {
    object
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// (namespace, name) of an object.
pub fn object_key(object: &Value) -> ObjectKey {
    let s = |p: &str| {
        object
            .pointer(p)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    (s("/metadata/namespace"), s("/metadata/name"))
}

fn set_rv(object: &mut Value, rv: u64) {
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
    }
}

impl Store {
    /// An empty store keeping at most `history_limit` changes for resuming watches.
    pub fn new(history_limit: usize) -> Self {
        let (events, _) = broadcast::channel(FANOUT_CAPACITY);
        Self {
            inner: Mutex::new(Inner {
                rv: 1,
                objects: HashMap::new(),
                history: VecDeque::new(),
                history_limit: history_limit.max(1),
                oldest_resumable: 1,
            }),
            events,
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data that is still consistent
        // (every mutation is a single insert/remove), so poisoning is not fatal.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The latest resourceVersion.
    pub fn current_rv(&self) -> u64 {
        self.lock().rv
    }

    /// Resolves when something changed since the last call (for the state saver).
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// One object.
    pub fn get(&self, resource: &GroupResource, namespace: &str, name: &str) -> Option<Arc<Value>> {
        self.lock()
            .objects
            .get(resource)?
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// All objects of `resource` (in `namespace` if given) in key order, with the current RV.
    pub fn list(&self, resource: &GroupResource, namespace: Option<&str>) -> (Vec<Arc<Value>>, u64) {
        let inner = self.lock();
        let items = match inner.objects.get(resource) {
            None => Vec::new(),
            Some(map) => match namespace {
                Some(ns) => map
                    .range((ns.to_string(), String::new())..)
                    .take_while(|((n, _), _)| n == ns)
                    .map(|(_, v)| v.clone())
                    .collect(),
                None => map.values().cloned().collect(),
            },
        };
        (items, inner.rv)
    }

    /// Every object of every resource in `namespace`.
    pub fn list_namespace(&self, namespace: &str) -> Vec<(GroupResource, Arc<Value>)> {
        let inner = self.lock();
        let mut out = Vec::new();
        for (gr, map) in &inner.objects {
            for ((ns, _), v) in map {
                if ns == namespace {
                    out.push((gr.clone(), v.clone()));
                }
            }
        }
        out
    }

    /// Every object of every resource.
    pub fn list_all(&self) -> Vec<(GroupResource, Arc<Value>)> {
        let inner = self.lock();
        inner
            .objects
            .iter()
            .flat_map(|(gr, map)| map.values().map(move |v| (gr.clone(), v.clone())))
            .collect()
    }

    fn record(
        &self,
        inner: &mut Inner,
        resource: &GroupResource,
        kind: EventType,
        object: Arc<Value>,
        previous: Option<Arc<Value>>,
    ) {
        let event = Arc::new(StoredEvent {
            rv: inner.rv,
            resource: resource.clone(),
            kind,
            object,
            previous,
            encoded: Default::default(),
        });
        inner.history.push_back(event.clone());
        while inner.history.len() > inner.history_limit {
            if let Some(dropped) = inner.history.pop_front() {
                inner.oldest_resumable = dropped.rv;
            }
        }
        // No receivers is fine: nobody is watching.
        let _ = self.events.send(event);
        self.changed.notify_one();
    }

    /// Stores a new object; sets its resourceVersion.
    pub fn create(&self, resource: &GroupResource, mut object: Value) -> Result<Arc<Value>, StoreError> {
        let key = object_key(&object);
        let mut inner = self.lock();
        if inner.objects.get(resource).is_some_and(|m| m.contains_key(&key)) {
            return Err(StoreError::AlreadyExists);
        }
        inner.rv += 1;
        set_rv(&mut object, inner.rv);
        let stored = Arc::new(object);
        inner
            .objects
            .entry(resource.clone())
            .or_default()
            .insert(key, stored.clone());
        self.record(&mut inner, resource, EventType::Added, stored.clone(), None);
        Ok(stored)
    }

    /// Replaces an object if its stored resourceVersion is still `expected_rv`.
    pub fn update(
        &self,
        resource: &GroupResource,
        mut object: Value,
        expected_rv: u64,
    ) -> Result<Arc<Value>, StoreError> {
        let key = object_key(&object);
        let mut inner = self.lock();
        let previous = inner
            .objects
            .get(resource)
            .and_then(|m| m.get(&key))
            .cloned()
            .ok_or(StoreError::NotFound)?;
        if object_rv(&previous) != expected_rv {
            return Err(StoreError::Conflict);
        }
        inner.rv += 1;
        set_rv(&mut object, inner.rv);
        let stored = Arc::new(object);
        inner
            .objects
            .entry(resource.clone())
            .or_default()
            .insert(key, stored.clone());
        self.record(
            &mut inner,
            resource,
            EventType::Modified,
            stored.clone(),
            Some(previous),
        );
        Ok(stored)
    }

    /// Removes an object, if `expected_rv` (when given) still matches.
    pub fn delete(
        &self,
        resource: &GroupResource,
        namespace: &str,
        name: &str,
        expected_rv: Option<u64>,
    ) -> Result<Arc<Value>, StoreError> {
        let key = (namespace.to_string(), name.to_string());
        let mut inner = self.lock();
        let previous = inner
            .objects
            .get(resource)
            .and_then(|m| m.get(&key))
            .cloned()
            .ok_or(StoreError::NotFound)?;
        if expected_rv.is_some_and(|rv| rv != object_rv(&previous)) {
            return Err(StoreError::Conflict);
        }
        if let Some(map) = inner.objects.get_mut(resource) {
            map.remove(&key);
        }
        inner.rv += 1;
        let mut last = (*previous).clone();
        set_rv(&mut last, inner.rv);
        let last = Arc::new(last);
        self.record(&mut inner, resource, EventType::Deleted, last.clone(), Some(previous));
        Ok(last)
    }

    /// For a watch resuming after `since`: the recorded changes of `resource` newer than it,
    /// and a receiver for everything after them. Both are taken under the lock, so nothing
    /// is missed or repeated.
    ///
    /// A version newer than the current one can only come from an earlier server (one
    /// restarted without its state file): it is refused like an expired one, so clients
    /// relist instead of waiting for the counter to catch up.
    pub fn resume(&self, resource: &GroupResource, since: u64) -> Result<Resumed, TooOld> {
        let inner = self.lock();
        if since < inner.oldest_resumable || since > inner.rv {
            return Err(TooOld {
                requested: since,
                oldest: inner.oldest_resumable,
            });
        }
        let past = inner
            .history
            .iter()
            .filter(|e| e.rv > since && e.resource == *resource)
            .cloned()
            .collect();
        Ok((past, self.events.subscribe(), inner.rv))
    }

    /// For a watch that starts with the current state: all objects of `resource`, the
    /// current RV, and a receiver for what follows.
    pub fn snapshot_and_subscribe(
        &self,
        resource: &GroupResource,
    ) -> (Vec<Arc<Value>>, u64, broadcast::Receiver<Arc<StoredEvent>>) {
        let inner = self.lock();
        let items = inner
            .objects
            .get(resource)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        (items, inner.rv, self.events.subscribe())
    }

    /// Whether a list continuation taken at `rv` can still be served.
    pub fn is_resumable(&self, rv: u64) -> bool {
        let inner = self.lock();
        rv >= inner.oldest_resumable && rv <= inner.rv
    }

    /// Forgets the change history, as etcd compaction does: watches resuming from any
    /// version older than the current one get 410 Gone. A test hook.
    pub fn compact(&self) {
        let mut inner = self.lock();
        inner.history.clear();
        inner.oldest_resumable = inner.rv;
    }

    /// Everything, for the state file.
    pub fn snapshot(&self) -> Snapshot {
        let inner = self.lock();
        let mut objects = Vec::new();
        let mut resources: Vec<&GroupResource> = inner.objects.keys().collect();
        resources.sort();
        for gr in resources {
            for v in inner.objects[gr].values() {
                objects.push(SnapshotEntry {
                    resource: gr.clone(),
                    object: (**v).clone(),
                });
            }
        }
        Snapshot {
            resource_version: inner.rv,
            objects,
        }
    }

    /// Replaces the contents with a snapshot. Watches can resume only from its version on.
    pub fn restore(&self, snapshot: Snapshot) {
        let mut inner = self.lock();
        inner.objects.clear();
        inner.history.clear();
        for entry in snapshot.objects {
            let key = object_key(&entry.object);
            inner
                .objects
                .entry(entry.resource)
                .or_default()
                .insert(key, Arc::new(entry.object));
        }
        inner.rv = snapshot.resource_version.max(1);
        inner.oldest_resumable = inner.rv;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(name: &str) -> Value {
        json!({"metadata": {"name": name, "namespace": "ns"}})
    }

    #[test]
    fn rv_increases_and_cas_conflicts() {
        let store = Store::new(100);
        let gr = GroupResource::new("", "configmaps");
        let a = store.create(&gr, obj("a")).expect("created");
        assert_eq!(store.create(&gr, obj("a")), Err(StoreError::AlreadyExists));
        let rv = object_rv(&a);
        let b = store.update(&gr, obj("a"), rv).expect("updated");
        assert!(object_rv(&b) > rv);
        assert_eq!(store.update(&gr, obj("a"), rv), Err(StoreError::Conflict));
        let d = store.delete(&gr, "ns", "a", None).expect("deleted");
        assert!(object_rv(&d) > object_rv(&b));
        assert_eq!(store.get(&gr, "ns", "a"), None);
    }

    #[test]
    fn history_window_expires_old_versions() {
        let store = Store::new(3);
        let gr = GroupResource::new("", "configmaps");
        let start = store.current_rv();
        for i in 0..5 {
            store.create(&gr, obj(&format!("o{i}"))).expect("created");
        }
        assert!(store.resume(&gr, start).is_err());
        let (past, _, _) = store.resume(&gr, store.current_rv() - 2).expect("recent is resumable");
        assert_eq!(past.len(), 2);
        store.compact();
        assert!(store.resume(&gr, store.current_rv() - 1).is_err());
        assert!(store.resume(&gr, store.current_rv()).is_ok());
        // From a previous server's future: relist.
        assert!(store.resume(&gr, store.current_rv() + 100).is_err());
    }
}
