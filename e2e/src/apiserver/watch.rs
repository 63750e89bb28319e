//! Watch streams: newline-delimited `{"type","object"}` events from a resourceVersion,
//! with initial events, selector transitions (objects entering or leaving a selector
//! appear as ADDED/DELETED), BOOKMARKs, `timeoutSeconds`, and 410 Expired as an ERROR
//! event when the version has left the history window, as kube-apiserver sends it.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use super::handlers::{Target, present, selectors};
use super::selectors::{FieldSelector, LabelSelector};
use super::status::ApiError;
use super::store::{EventType, StoredEvent};
use super::table;
use super::{Server, wait_until_clear, wait_until_set};

/// Initial events, live receiver, version reached, whether to mark the end of initial events.
type WatchStart = (
    Vec<(&'static str, Arc<Value>)>,
    broadcast::Receiver<Arc<StoredEvent>>,
    u64,
    bool,
);

struct Filter {
    /// Field selectors of events.k8s.io watches apply to the converted form.
    events_v1: bool,
    namespace: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Filter {
    fn matches(&self, object: &Value) -> bool {
        if let Some(ns) = &self.namespace
            && object
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or_default()
                != ns
        {
            return false;
        }
        if !self.labels.matches(object.pointer("/metadata/labels")) {
            return false;
        }
        if self.events_v1 {
            return self.fields.matches(&super::events::core_to_v1(object));
        }
        self.fields.matches(object)
    }

    /// The event this watcher sees for a stored change, if any.
    fn translate(&self, event: &StoredEvent) -> Option<(&'static str, Arc<Value>)> {
        let now = self.matches(&event.object);
        let before = event.previous.as_ref().is_some_and(|p| self.matches(p));
        match event.kind {
            EventType::Added if now => Some(("ADDED", event.object.clone())),
            EventType::Deleted if before || now => Some(("DELETED", event.object.clone())),
            EventType::Modified => match (before, now) {
                (true, true) => Some(("MODIFIED", event.object.clone())),
                (false, true) => Some(("ADDED", event.object.clone())),
                (true, false) => Some(("DELETED", event.object.clone())),
                (false, false) => None,
            },
            _ => None,
        }
    }
}

struct Encoder {
    target: Target,
    as_table: bool,
    include_object: String,
}

impl Encoder {
    /// The line for a recorded change, shared between watchers when they would all encode
    /// the same bytes (plain JSON at the stored apiVersion).
    fn event_line(&self, type_: &'static str, event: &StoredEvent) -> Bytes {
        let stored_version = event.object.get("apiVersion").and_then(Value::as_str);
        let shareable = !self.as_table
            && !self.target.rt.is_events_v1()
            && stored_version == Some(self.target.rt.api_version(&self.target.version).as_str());
        let slot = match type_ {
            "ADDED" => 0,
            "MODIFIED" => 1,
            _ => 2,
        };
        if shareable {
            return event.encoded[slot]
                .get_or_init(|| self.line(type_, &event.object))
                .clone();
        }
        self.line(type_, &event.object)
    }

    fn line(&self, type_: &str, object: &Value) -> Bytes {
        let object = present(object, &self.target);
        let object = if self.as_table {
            table::table(
                &self.target.rt,
                &[&object],
                super::store::object_rv(&object),
                None,
                &self.include_object,
            )
        } else {
            object
        };
        let mut bytes = serde_json::to_vec(&json!({ "type": type_, "object": object })).unwrap_or_default();
        bytes.push(b'\n');
        Bytes::from(bytes)
    }

    fn bookmark(&self, rv: u64, initial_end: bool) -> Bytes {
        let mut metadata = json!({ "resourceVersion": rv.to_string() });
        if initial_end {
            metadata["annotations"] = json!({ "k8s.io/initial-events-end": "true" });
        }
        let object = json!({ "kind": self.target.rt.kind, "apiVersion": self.target.rt.api_version(&self.target.version), "metadata": metadata });
        let mut bytes = serde_json::to_vec(&json!({ "type": "BOOKMARK", "object": object })).unwrap_or_default();
        bytes.push(b'\n');
        Bytes::from(bytes)
    }
}

fn error_line(err: &ApiError) -> Bytes {
    let mut bytes = serde_json::to_vec(&json!({ "type": "ERROR", "object": err.to_status() })).unwrap_or_default();
    bytes.push(b'\n');
    Bytes::from(bytes)
}

fn streaming(rx: mpsc::Receiver<Bytes>) -> Response {
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-cache, private"),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

/// Starts a watch on `target`'s collection and returns the streaming response.
pub(crate) async fn watch(
    server: Arc<Server>,
    target: Target,
    query: HashMap<String, String>,
    as_table: bool,
) -> Response {
    let (labels, fields) = match selectors(&target, &query) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let rv_param = query.get("resourceVersion").cloned().unwrap_or_default();
    let since: Option<u64> = match rv_param.as_str() {
        "" | "0" => None,
        other => match other.parse() {
            Ok(v) => Some(v),
            Err(_) => {
                return ApiError::bad_request(format!("invalid resourceVersion {other:?}")).into_response();
            }
        },
    };
    let timeout = match query.get("timeoutSeconds").filter(|t| !t.is_empty()) {
        Some(t) => match t.parse::<u64>() {
            Ok(s) => Duration::from_secs(s),
            Err(_) => {
                return ApiError::bad_request(format!("invalid timeoutSeconds {t:?}")).into_response();
            }
        },
        None => Duration::from_secs(1800),
    };
    let bookmarks = query.get("allowWatchBookmarks").is_some_and(|b| b == "true");
    let send_initial = query.get("sendInitialEvents").is_some_and(|b| b == "true");
    let filter = Filter {
        events_v1: target.rt.is_events_v1(),
        namespace: target.namespace.clone(),
        labels,
        fields,
    };
    let encoder = Encoder {
        target: target.clone(),
        as_table,
        include_object: query.get("includeObject").cloned().unwrap_or_default(),
    };
    let (tx, rx) = mpsc::channel::<Bytes>(1024);

    // Test hook: while paused, a new watch waits before it reads the store.
    let mut paused = server.watches_paused.subscribe();
    let mut shutdown = server.shutdown.clone();
    let mut epoch = server.watch_epoch.subscribe();
    let bookmark_interval = server.bookmark_interval;
    tokio::spawn(async move {
        tokio::select! {
            _ = wait_until_clear(&mut paused) => {}
            _ = wait_until_set(&mut shutdown) => return,
            _ = tokio::time::sleep(timeout) => return,
        }
        epoch.mark_unchanged();
        let gr = target.rt.key();
        let (initial, mut live, mut last_rv, initial_end): WatchStart = match since {
            Some(rv) if !send_initial => match server.store.resume(&gr, rv) {
                Ok((past, live, current)) => (
                    past.iter().filter_map(|e| filter.translate(e)).collect(),
                    live,
                    current.max(rv),
                    false,
                ),
                Err(too_old) => {
                    let err = ApiError::expired(format!(
                        "too old resource version: {} ({})",
                        too_old.requested, too_old.oldest
                    ));
                    let _ = tx.send(error_line(&err)).await;
                    return;
                }
            },
            _ => {
                let (items, rv, live) = server.store.snapshot_and_subscribe(&gr);
                let added = items
                    .into_iter()
                    .filter(|o| filter.matches(o))
                    .map(|o| ("ADDED", o))
                    .collect();
                (added, live, rv, send_initial && bookmarks)
            }
        };
        for (type_, object) in initial {
            if tx.send(encoder.line(type_, &object)).await.is_err() {
                return;
            }
        }
        if initial_end && tx.send(encoder.bookmark(last_rv, true)).await.is_err() {
            return;
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + bookmark_interval, bookmark_interval);
        loop {
            tokio::select! {
                received = live.recv() => match received {
                    Ok(event) => {
                        if event.rv <= last_rv {
                            continue;
                        }
                        last_rv = event.rv;
                        if event.resource != gr {
                            continue;
                        }
                        if let Some((type_, _)) = filter.translate(&event)
                            && tx.send(encoder.event_line(type_, &event)).await.is_err() {
                                return;
                            }
                    }
                    // Too slow to keep up: end the watch; the client resumes or relists.
                    Err(_) => return,
                },
                _ = ticker.tick(), if bookmarks => {
                    if tx.send(encoder.bookmark(last_rv, false)).await.is_err() {
                        return;
                    }
                }
                _ = tokio::time::sleep_until(deadline) => return,
                _ = epoch.changed() => return,
                _ = wait_until_set(&mut shutdown) => return,
                _ = tx.closed() => return,
            }
        }
    });
    streaming(rx)
}
