//! The verbs on resources: get, list, create, update, patch (all strategies), delete
//! (finalizers, propagation, namespaces, owner GC), and the per-kind work kube-apiserver
//! does on writes (status subresource rules, generation, managedFields, Service
//! defaulting, CRD status). Watches live in `watch`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::{Query, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{SecondsFormat, Utc};
use k8s_openapi::api::core::v1::Service;
use serde_json::{Value, json};

use super::Server;
use super::apply::{self, ApplyRequest, ManagedEntry, Scope};
use super::builtin;
use super::controllers::{self, InUse};
use super::delete::{Propagation, after_delete, delete_cascade, delete_options};
use super::endpoint_slices::{reconcile_namespace_slices, reconcile_service_slices};
use super::events;
use super::patch::{self, PatchError};
use super::protobuf;
use super::registry::{GroupResource, Registry, ResourceType, type_from_crd};
use super::schema;
use super::selectors::{FieldSelector, LabelSelector, field_supported};
use super::status::{ApiError, ApiResult, Cause, json_response};
use super::store::{StoreError, object_key, object_rv};
use super::table;

/// What a resource path names.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) version: String,
    pub(crate) rt: ResourceType,
    pub(crate) namespace: Option<String>,
    pub(crate) name: Option<String>,
    pub(crate) subresource: Option<String>,
    /// Legacy `/watch/` path prefix.
    pub(crate) watch_prefix: bool,
}

impl Target {
    fn ns(&self) -> &str {
        self.namespace.as_deref().unwrap_or_default()
    }
    fn name(&self) -> &str {
        self.name.as_deref().unwrap_or_default()
    }
    fn scope(&self) -> Scope {
        match (self.subresource.as_deref(), self.rt.has_status) {
            (Some("status"), _) => Scope::Status,
            (_, true) => Scope::Main,
            _ => Scope::Whole,
        }
    }
}

fn parse_target(registry: &Registry, group: &str, version: &str, rest: &[String]) -> ApiResult<Target> {
    let (watch_prefix, rest) = match rest.first().map(String::as_str) {
        Some("watch") => (true, &rest[1..]),
        _ => (false, rest),
    };
    let namespaced_path = rest.len() >= 3
        && rest[0] == "namespaces"
        && registry.lookup(group, version, &rest[2]).is_some_and(|t| t.namespaced);
    let (namespace, parts) = if namespaced_path {
        (Some(rest[1].clone()), &rest[2..])
    } else {
        (None, rest)
    };
    if parts.is_empty() || parts.len() > 3 {
        return Err(ApiError::path_not_found());
    }
    let rt = registry
        .lookup(group, version, &parts[0])
        .cloned()
        .ok_or_else(ApiError::path_not_found)?;
    let name = parts.get(1).cloned();
    let subresource = parts.get(2).cloned();
    if let Some(sub) = &subresource
        && !(sub == "status" && rt.has_status)
    {
        return Err(ApiError::path_not_found());
    }
    if namespace.is_none() && rt.namespaced && name.is_some() {
        return Err(ApiError::path_not_found());
    }
    Ok(Target {
        version: version.to_string(),
        rt,
        namespace,
        name,
        subresource,
        watch_prefix,
    })
}

/// Handles `/api/v1/...` and `/apis/{group}/{version}/...`.
pub(crate) async fn resource_request(
    server: Arc<Server>,
    group: &str,
    version: &str,
    rest: Vec<String>,
    req: Request,
) -> Response {
    match handle(server, group, version, rest, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

fn header(req: &Request, name: &str) -> String {
    req.headers()
        .get(name)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

async fn handle(
    server: Arc<Server>,
    group: &str,
    version: &str,
    rest: Vec<String>,
    req: Request,
) -> ApiResult<Response> {
    let registry = server.registry();
    let target = parse_target(&registry, group, version, &rest)?;
    let query: HashMap<String, String> = Query::<HashMap<String, String>>::try_from_uri(req.uri())
        .map(|q| q.0)
        .map_err(|e| ApiError::bad_request(format!("invalid query: {e}")))?;
    let accept = header(&req, "accept");
    let content_type = header(&req, "content-type");
    let manager = query
        .get("fieldManager")
        .cloned()
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| {
            let ua = header(&req, "user-agent");
            let prefix = ua.split('/').next().unwrap_or_default().to_string();
            if prefix.is_empty() { "unknown".into() } else { prefix }
        });
    let method = req.method().clone();
    let body = axum::body::to_bytes(req.into_body(), 16 << 20)
        .await
        .map_err(|e| ApiError::bad_request(format!("cannot read body: {e}")))?;
    let dry_run = query.get("dryRun").is_some_and(|d| d == "All");
    let field_validation = query.get("fieldValidation").map(String::as_str).unwrap_or("Warn");
    if !matches!(field_validation, "Strict" | "Warn" | "Ignore") {
        return Err(ApiError::bad_request(format!(
            "fieldValidation: invalid value {field_validation:?}: must be Ignore, Warn or Strict"
        )));
    }
    let opts = WriteOptions {
        manager: &manager,
        dry_run,
        strict: field_validation == "Strict",
        ignore_unknown: field_validation == "Ignore",
        warnings: Default::default(),
    };
    let is_watch = target.watch_prefix || query.get("watch").is_some_and(|w| w == "true" || w == "1");
    let as_table = table::wants_table(&accept);

    let m = method.as_str();
    match (m, target.name.is_some()) {
        ("GET", false) if is_watch => Ok(super::watch::watch(server, target, query, as_table).await),
        ("GET", true) if is_watch => {
            let mut query = query;
            let by_name = format!("metadata.name={}", target.name());
            let combined = match query.get("fieldSelector").filter(|f| !f.is_empty()) {
                Some(f) => format!("{f},{by_name}"),
                None => by_name,
            };
            query.insert("fieldSelector".into(), combined);
            let mut collection = target;
            collection.name = None;
            Ok(super::watch::watch(server, collection, query, as_table).await)
        }
        ("GET", false) => list(&server, &target, &query, as_table),
        ("GET", true) => {
            let obj = server
                .store
                .get(&target.rt.key(), target.ns(), target.name())
                .ok_or_else(|| not_found(&target))?;
            if as_table {
                return Ok(ok(&table::table(
                    &target.rt,
                    &[&present(&obj, &target)],
                    object_rv(&obj),
                    None,
                    query_str(&query, "includeObject"),
                )));
            }
            Ok(ok(&present(&obj, &target)))
        }
        ("POST", false) => {
            if target.subresource.is_some() {
                return Err(ApiError::method_not_allowed(m));
            }
            // Reviews need nothing from the body (kubectl sends them as protobuf).
            let review_body = parse_json_body(&body, &content_type).unwrap_or_else(|_| json!({}));
            if let Some(review) = review_response(&target, &review_body) {
                return Ok(json_response(StatusCode::CREATED, &review));
            }
            let body = parse_json_body(&body, &content_type)?;
            let (code, obj) = write(&server, &target, Change::Create(body), &opts).await?;
            Ok(opts.respond(code, &obj))
        }
        ("PUT", true) => {
            let body = parse_json_body(&body, &content_type)?;
            let (code, obj) = write(&server, &target, Change::Replace(body), &opts).await?;
            Ok(opts.respond(code, &obj))
        }
        ("PATCH", true) => {
            let media = content_type.split(';').next().unwrap_or_default().trim().to_string();
            let force = query.get("force").is_some_and(|f| f == "true");
            let change = match media.as_str() {
                "application/apply-patch+yaml" => {
                    if query.get("fieldManager").is_none_or(|m| m.is_empty()) {
                        return Err(ApiError::bad_request(
                            "PATCH, application/apply-patch+yaml: fieldManager is required for apply requests",
                        ));
                    }
                    let text =
                        std::str::from_utf8(&body).map_err(|_| ApiError::bad_request("apply patch is not UTF-8"))?;
                    let yaml: serde_yaml::Value = serde_yaml::from_str(text)
                        .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?;
                    let value = serde_json::to_value(yaml)
                        .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?;
                    Change::Apply { body: value, force }
                }
                "application/json-patch+json"
                | "application/merge-patch+json"
                | "application/strategic-merge-patch+json" => {
                    if force {
                        return Err(ApiError::bad_request("force is not allowed for non-apply patch"));
                    }
                    if media == "application/strategic-merge-patch+json" && target.rt.custom {
                        return Err(ApiError::unsupported_media_type(
                            "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
                        ));
                    }
                    let value: Value = serde_json::from_slice(&body)
                        .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
                    Change::Patch { media, body: value }
                }
                _ => {
                    return Err(ApiError::unsupported_media_type(format!(
                        "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml{}",
                        if target.rt.custom {
                            ""
                        } else {
                            ", application/strategic-merge-patch+json"
                        }
                    )));
                }
            };
            let (code, obj) = write(&server, &target, change, &opts).await?;
            Ok(opts.respond(code, &obj))
        }
        ("DELETE", true) if target.subresource.is_none() => {
            let opts = delete_options(&body, &query)?;
            let deleted = delete_cascade(&server, &target.rt.key(), target.ns(), target.name(), &opts, dry_run).await?;
            Ok(ok(&present(&deleted, &target)))
        }
        ("DELETE", false) => {
            let opts = delete_options(&body, &query)?;
            let (items, _) = select(&server, &target, &query)?;
            let mut deleted = Vec::new();
            for item in items {
                let (ns, name) = object_key(&item);
                if let Ok(d) = delete_cascade(&server, &target.rt.key(), &ns, &name, &opts, dry_run).await {
                    deleted.push(present(&d, &target));
                }
            }
            Ok(ok(
                &json!({"kind": format!("{}List", target.rt.kind), "apiVersion": target.rt.api_version(&target.version), "metadata": {"resourceVersion": server.store.current_rv().to_string()}, "items": deleted}),
            ))
        }
        _ => Err(ApiError::method_not_allowed(m)),
    }
}

/// Reviews are answered, never stored. There is no authorization here: every access is
/// allowed, and every client is the lab's administrator (`kubectl auth can-i`, `auth whoami`).
fn review_response(target: &Target, body: &Value) -> Option<Value> {
    let mut answer = body.clone();
    let map = answer.as_object_mut()?;
    map.insert("apiVersion".into(), json!(target.rt.api_version(&target.version)));
    map.insert("kind".into(), json!(target.rt.kind));
    match (target.rt.group.as_str(), target.rt.plural.as_str()) {
        ("authorization.k8s.io", "selfsubjectaccessreviews" | "selfsubjectrulesreviews") => {
            map.insert("status".into(), json!({"allowed": true, "reason": "herald-lab does not authorize requests", "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}], "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}], "incomplete": false}));
        }
        ("authentication.k8s.io", "selfsubjectreviews") => {
            map.insert("status".into(), json!({"userInfo": {"username": "herald-lab-admin", "groups": ["system:masters", "system:authenticated"]}}));
        }
        _ => return None,
    }
    Some(answer)
}

fn query_str<'a>(query: &'a HashMap<String, String>, key: &str) -> &'a str {
    query.get(key).map(String::as_str).unwrap_or_default()
}

fn ok(v: &Value) -> Response {
    json_response(StatusCode::OK, v)
}

fn not_found(target: &Target) -> ApiError {
    ApiError::not_found(&target.rt.group, &target.rt.plural, target.name())
}

fn parse_json_body(body: &[u8], content_type: &str) -> ApiResult<Value> {
    let media = content_type.split(';').next().unwrap_or_default().trim();
    match media {
        "" | "application/json" | "*/*" => serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("the object provided is unrecognized: {e}"))),
        "application/vnd.kubernetes.protobuf" => protobuf::decode(body).map_err(|e| {
            ApiError::unsupported_media_type(format!(
                "the body of the request was in an unknown format (application/vnd.kubernetes.protobuf): {e}"
            ))
        }),
        "application/yaml" => {
            let text = std::str::from_utf8(body).map_err(|_| ApiError::bad_request("body is not UTF-8"))?;
            let yaml: serde_yaml::Value =
                serde_yaml::from_str(text).map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?;
            serde_json::to_value(yaml).map_err(|e| ApiError::bad_request(e.to_string()))
        }
        other => Err(ApiError::unsupported_media_type(format!(
            "the body of the request was in an unknown format ({other}) - accepted media types include: application/json, application/yaml"
        ))),
    }
}

/// The object as served at the request's version.
pub(crate) fn present(obj: &Value, target: &Target) -> Value {
    if target.rt.is_events_v1() {
        return events::core_to_v1(obj);
    }
    let mut out = obj.clone();
    if let Some(map) = out.as_object_mut() {
        map.insert("apiVersion".into(), json!(target.rt.api_version(&target.version)));
        map.insert("kind".into(), json!(target.rt.kind));
    }
    out
}

/// Parsed `labelSelector` and `fieldSelector` of a request.
pub(crate) fn selectors(target: &Target, query: &HashMap<String, String>) -> ApiResult<(LabelSelector, FieldSelector)> {
    let labels =
        LabelSelector::parse(query_str(query, "labelSelector")).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let fields =
        FieldSelector::parse(query_str(query, "fieldSelector")).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let (group, plural) = (target.rt.group.clone(), target.rt.plural.clone());
    if let Some(bad) = fields.unsupported_fields(&|f| field_supported(&group, &plural, f)) {
        return Err(ApiError::bad_request(format!("field label not supported: {bad}")));
    }
    Ok((labels, fields))
}

fn select(server: &Server, target: &Target, query: &HashMap<String, String>) -> ApiResult<(Vec<Arc<Value>>, u64)> {
    let (labels, fields) = selectors(target, query)?;
    let (items, rv) = server.store.list(&target.rt.key(), target.namespace.as_deref());
    let items = items
        .into_iter()
        .filter(|o| {
            labels.matches(o.pointer("/metadata/labels"))
                && if target.rt.is_events_v1() {
                    fields.matches(&present(o, target))
                } else {
                    fields.matches(o)
                }
        })
        .collect();
    Ok((items, rv))
}

fn encode_continue(rv: u64, ns: &str, name: &str) -> String {
    format!("{rv}/{ns}/{name}")
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn decode_continue(token: &str) -> Option<(u64, String, String)> {
    if !token.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(token.get(i..i + 2)?, 16).ok())
        .collect();
    let text = String::from_utf8(bytes?).ok()?;
    let mut parts = text.splitn(3, '/');
    let rv = parts.next()?.parse().ok()?;
    Some((rv, parts.next()?.to_string(), parts.next()?.to_string()))
}

fn list(server: &Server, target: &Target, query: &HashMap<String, String>, as_table: bool) -> ApiResult<Response> {
    let limit: usize = match query.get("limit").filter(|l| !l.is_empty()) {
        Some(l) => l
            .parse::<i64>()
            .map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?
            .max(0) as usize,
        None => 0,
    };
    let start = match query.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => {
            let (rv, ns, name) = decode_continue(token).ok_or_else(|| {
                ApiError::bad_request(
                    "continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)",
                )
            })?;
            if !server.store.is_resumable(rv) {
                return Err(ApiError::expired(
                    "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.",
                ));
            }
            Some((rv, (ns, name)))
        }
        None => None,
    };
    let (items, current_rv) = select(server, target, query)?;
    let list_rv = start.as_ref().map(|(rv, _)| *rv).unwrap_or(current_rv);
    let after: Vec<Arc<Value>> = match &start {
        Some((_, key)) => items.into_iter().filter(|o| object_key(o) > *key).collect(),
        None => items,
    };
    let total = after.len();
    let page: Vec<Value> = after
        .iter()
        .take(if limit == 0 { usize::MAX } else { limit })
        .map(|o| present(o, target))
        .collect();
    let continue_token = (page.len() < total).then(|| {
        let (ns, name) = page.last().map(object_key).unwrap_or_default();
        encode_continue(list_rv, &ns, &name)
    });
    if as_table {
        let refs: Vec<&Value> = page.iter().collect();
        return Ok(ok(&table::table(
            &target.rt,
            &refs,
            list_rv,
            continue_token.as_deref(),
            query_str(query, "includeObject"),
        )));
    }
    let mut metadata = json!({ "resourceVersion": list_rv.to_string() });
    if let Some(token) = continue_token {
        metadata["continue"] = json!(token);
        metadata["remainingItemCount"] = json!(total - page.len());
    }
    Ok(ok(&json!({
        "kind": format!("{}List", target.rt.kind),
        "apiVersion": target.rt.api_version(&target.version),
        "metadata": metadata,
        "items": page,
    })))
}

/// The requested change of a write.
pub(crate) enum Change {
    /// POST.
    Create(Value),
    /// PUT.
    Replace(Value),
    /// PATCH with JSON, merge or strategic patch.
    Patch { media: String, body: Value },
    /// PATCH with server-side apply.
    Apply { body: Value, force: bool },
}

pub(crate) fn now_rfc3339() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true)
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A pseudo-random u64 (splitmix64 over a counter and the clock); uniqueness, not secrecy.
fn random_u64() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut z = nanos.wrapping_add(
        COUNTER
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15),
    );
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

pub(crate) fn new_uid() -> String {
    let a = random_u64();
    let b = random_u64();
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        (b >> 48) & 0x3fff | 0x8000,
        b & 0xffff_ffff_ffff
    )
}

pub(crate) fn name_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut r = random_u64();
    (0..5)
        .map(|_| {
            let c = ALPHABET[(r % ALPHABET.len() as u64) as usize] as char;
            r /= ALPHABET.len() as u64;
            c
        })
        .collect()
}

fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn is_dns_label(name: &str) -> bool {
    name.len() <= 63 && !name.contains('.') && is_dns_subdomain(name)
}

fn validate_metadata(rt: &ResourceType, obj: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let label_names = matches!((rt.group.as_str(), rt.plural.as_str()), ("", "namespaces" | "services"));
    let valid = if label_names {
        is_dns_label(name) && (rt.plural != "services" || name.starts_with(|c: char| c.is_ascii_lowercase()))
    } else {
        is_dns_subdomain(name)
    };
    if name.is_empty() {
        causes.push(Cause {
            reason: "FieldValueRequired",
            field: "metadata.name".into(),
            message: "Required value: name or generateName is required".into(),
        });
    } else if !valid {
        let rule = if label_names {
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-'"
        } else {
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'"
        };
        causes.push(Cause::invalid(
            "metadata.name",
            format!("Invalid value: {name:?}: {rule}"),
        ));
    }
    if let Some(labels) = obj.pointer("/metadata/labels") {
        match labels.as_object() {
            Some(map) => {
                for (k, v) in map {
                    let ok_value = v
                        .as_str()
                        .is_some_and(|s| LabelSelector::parse(&format!("k={s}")).is_ok() || s.is_empty());
                    if !ok_value || LabelSelector::parse(k).is_err() {
                        causes.push(Cause::invalid(format!("metadata.labels.{k}"), format!("Invalid value: {v}: a valid label must be 63 characters or less and consist of alphanumeric characters, '-', '_' or '.'")));
                    }
                }
            }
            None if !labels.is_null() => causes.push(Cause::invalid("metadata.labels", "must be a map of strings")),
            None => {}
        }
    }
    causes
}

/// Without metadata and status: what `generation` tracks.
/// Without a status subresource, status changes count too, as in kube-apiserver.
fn spec_part(obj: &Value, has_status: bool) -> Value {
    let mut v = obj.clone();
    if let Some(map) = v.as_object_mut() {
        map.remove("metadata");
        if has_status {
            map.remove("status");
        }
        map.remove("apiVersion");
        map.remove("kind");
    }
    v
}

enum Prepared {
    Store(Value),
    /// The last finalizer of a terminating object was removed.
    Delete,
}

/// Request options of a write.
pub(crate) struct WriteOptions<'a> {
    /// Field manager recorded in managedFields.
    pub(crate) manager: &'a str,
    /// `dryRun=All`: compute, validate, but do not store.
    pub(crate) dry_run: bool,
    /// `fieldValidation=Strict`: unknown fields are an error instead of being dropped.
    pub(crate) strict: bool,
    /// `fieldValidation=Ignore`: unknown fields are dropped without a warning.
    pub(crate) ignore_unknown: bool,
    /// Warnings for the response's `Warning` headers (unknown fields under the default `Warn`).
    pub(crate) warnings: std::sync::Mutex<Vec<String>>,
}

impl WriteOptions<'_> {
    fn warn(&self, message: String) {
        self.warnings.lock().unwrap_or_else(|p| p.into_inner()).push(message);
    }

    /// A JSON response carrying the collected warnings as `Warning: 299 - "..."` headers.
    fn respond(&self, code: StatusCode, body: &Value) -> Response {
        let mut response = json_response(code, body);
        for w in self.warnings.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let escaped = w.replace('\\', "\\\\").replace('"', "\\\"");
            if let Ok(value) = axum::http::HeaderValue::from_str(&format!("299 - \"{escaped}\"")) {
                response.headers_mut().append(axum::http::header::WARNING, value);
            }
        }
        response
    }
}

/// Runs a create/update/patch/apply through the same steps as kube-apiserver: compute the
/// candidate, apply status-subresource rules, system metadata, field ownership, per-kind
/// defaulting and validation, then compare-and-swap into the store (retrying on races).
pub(crate) async fn write(
    server: &Arc<Server>,
    target: &Target,
    change: Change,
    opts: &WriteOptions<'_>,
) -> ApiResult<(StatusCode, Value)> {
    let (manager, dry_run) = (opts.manager, opts.dry_run);
    let rt = &target.rt;
    let gr = rt.key();
    let is_service = rt.group.is_empty() && rt.plural == "services";
    let _guard = if is_service {
        Some(server.controller_lock.lock().await)
    } else {
        None
    };
    let scope = target.scope();
    let api_version = rt.api_version(&target.version);
    let events_v1 = rt.is_events_v1();
    let core_events_target;
    let stored_target = if events_v1 {
        let core = server
            .registry()
            .lookup("", "v1", "events")
            .cloned()
            .ok_or_else(ApiError::path_not_found)?;
        core_events_target = Target {
            version: "v1".into(),
            rt: core,
            ..target.clone()
        };
        &core_events_target
    } else {
        target
    };
    let mut attempted_name = String::new();
    for _attempt in 0..64 {
        let now = now_rfc3339();
        let old: Option<Arc<Value>> = match (&change, &target.name) {
            (_, Some(name)) => server.store.get(&gr, target.ns(), name),
            (Change::Create(_), None) => None,
            _ => return Err(ApiError::method_not_allowed("write")),
        };
        if let Change::Create(_) = change
            && target.subresource.is_some()
        {
            return Err(ApiError::method_not_allowed("POST"));
        }
        // events.k8s.io Events are computed in their own shape, stored in core shape.
        let to_view = |v: &Value| if events_v1 { events::core_to_v1(v) } else { v.clone() };
        let to_stored = |v: Value| if events_v1 { events::v1_to_core(&v) } else { v };
        let (candidate, entries, creating) = match &change {
            Change::Create(body) => (to_stored(body.clone()), None, true),
            Change::Replace(body) => {
                let old = old.as_ref().ok_or_else(|| not_found(target))?;
                let given = body
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if !given.is_empty() && given != object_rv(old).to_string() {
                    return Err(ApiError::conflict(&rt.group, &rt.plural, target.name()));
                }
                (to_stored(body.clone()), None, false)
            }
            Change::Patch { media, body } => {
                let old = old.as_ref().ok_or_else(|| not_found(target))?;
                let mut patched = to_view(old);
                let result = match media.as_str() {
                    "application/json-patch+json" => patch::json_patch(&mut patched, body),
                    "application/merge-patch+json" => patch::merge_patch(&mut patched, body),
                    _ => patch::strategic_merge_patch(&mut patched, body),
                };
                result.map_err(|e| match e {
                    PatchError::Malformed(m) => ApiError::bad_request(m),
                    PatchError::DoesNotApply(m) => ApiError::unprocessable(m),
                })?;
                let given = patched
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if !given.is_empty() && given != object_rv(old).to_string() {
                    return Err(ApiError::conflict(&rt.group, &rt.plural, target.name()));
                }
                (to_stored(patched), None, false)
            }
            Change::Apply { body, force } => {
                let live = old.as_deref().map(to_view).unwrap_or_else(|| json!({}));
                let current = old.as_deref().map(apply::read_managed_fields).unwrap_or_default();
                let req = ApplyRequest {
                    manager,
                    force: *force,
                    scope,
                    api_version: &api_version,
                    now: &now,
                };
                let (merged, entries) = apply::server_side_apply(&live, body, &current, &req)
                    .map_err(|conflicts| ApiError::apply_conflict(&rt.group, &rt.plural, target.name(), &conflicts))?;
                let mut merged = merged;
                if old.is_none()
                    && let Some(meta) = merged.get_mut("metadata").and_then(Value::as_object_mut)
                {
                    meta.insert("name".into(), json!(target.name()));
                }
                (to_stored(merged), Some(entries), old.is_none())
            }
        };
        if creating && matches!(change, Change::Apply { .. }) && scope == Scope::Status {
            return Err(not_found(target));
        }
        let prepared = prepare(
            server,
            stored_target,
            old.as_deref(),
            candidate,
            creating,
            entries,
            opts,
            &now,
        )?;
        let result = match prepared {
            Prepared::Delete => {
                let Some(old) = &old else {
                    return Err(not_found(target));
                };
                if dry_run {
                    return Ok((StatusCode::OK, present(old, target)));
                }
                match server
                    .store
                    .delete(&gr, target.ns(), target.name(), Some(object_rv(old)))
                {
                    Ok(deleted) => {
                        after_delete(server, &gr, &deleted, Propagation::Background).await;
                        return Ok((StatusCode::OK, present(&deleted, target)));
                    }
                    Err(StoreError::Conflict) => continue,
                    Err(_) => return Err(not_found(target)),
                }
            }
            Prepared::Store(mut obj) if dry_run => {
                // Nothing was written: the object keeps the version it has.
                if let (Some(old), Some(meta)) = (&old, obj.get_mut("metadata").and_then(Value::as_object_mut)) {
                    meta.insert("resourceVersion".into(), json!(object_rv(old).to_string()));
                }
                return Ok((
                    if creating { StatusCode::CREATED } else { StatusCode::OK },
                    present(&obj, target),
                ));
            }
            Prepared::Store(obj) if creating => {
                attempted_name = object_key(&obj).1;
                server.store.create(&gr, obj)
            }
            Prepared::Store(obj) => server
                .store
                .update(&gr, obj, old.as_deref().map(object_rv).unwrap_or_default()),
        };
        match result {
            Ok(stored) => {
                after_write(server, &gr, &stored, is_service).await;
                return Ok((
                    if creating { StatusCode::CREATED } else { StatusCode::OK },
                    present(&stored, target),
                ));
            }
            Err(StoreError::AlreadyExists) if matches!(change, Change::Create(_)) => {
                return Err(ApiError::already_exists(&rt.group, &rt.plural, &attempted_name));
            }
            // Lost a race with another writer: recompute from the new state.
            Err(_) => continue,
        }
    }
    Err(ApiError::internal("too many concurrent modifications"))
}

#[allow(clippy::too_many_arguments)]
fn prepare(
    server: &Server,
    target: &Target,
    old: Option<&Value>,
    mut obj: Value,
    creating: bool,
    apply_entries: Option<Vec<ManagedEntry>>,
    opts: &WriteOptions<'_>,
    now: &str,
) -> ApiResult<Prepared> {
    let manager = opts.manager;
    // A retried write starts over: only the last attempt's warnings count.
    opts.warnings.lock().unwrap_or_else(|p| p.into_inner()).clear();
    let rt = &target.rt;
    let api_version = rt.api_version(&target.version);
    let Some(map) = obj.as_object_mut() else {
        return Err(ApiError::bad_request("the object provided is not a JSON object"));
    };
    if let Some(kind) = map.get("kind").and_then(Value::as_str)
        && kind != rt.kind
    {
        return Err(ApiError::bad_request(format!(
            "the kind of the object ({kind}) does not match the expected kind ({})",
            rt.kind
        )));
    }
    if let Some(av) = map.get("apiVersion").and_then(Value::as_str)
        && av != api_version
    {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({av}) does not match the expected API version ({api_version})"
        )));
    }
    map.insert("apiVersion".into(), json!(api_version));
    map.insert("kind".into(), json!(rt.kind));
    let meta = map.entry("metadata").or_insert_with(|| json!({}));
    let Some(meta) = meta.as_object_mut() else {
        return Err(ApiError::bad_request("metadata must be an object"));
    };

    // Name and namespace.
    let body_name = meta.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
    match (&target.name, creating) {
        (Some(url), _) if !body_name.is_empty() && body_name != *url => {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({url})"
            )));
        }
        (Some(url), _) => {
            meta.insert("name".into(), json!(url));
        }
        (None, true) if body_name.is_empty() => {
            if let Some(prefix) = meta
                .get("generateName")
                .and_then(Value::as_str)
                .filter(|p| !p.is_empty())
                .map(str::to_string)
            {
                let ns = if rt.namespaced {
                    target.ns().to_string()
                } else {
                    String::new()
                };
                let generated = (0..16)
                    .map(|_| format!("{prefix}{}", name_suffix()))
                    .find(|n| server.store.get(&rt.key(), &ns, n).is_none());
                if let Some(name) = generated {
                    meta.insert("name".into(), json!(name));
                }
            }
        }
        _ => {}
    }
    if rt.namespaced {
        let body_ns = meta
            .get("namespace")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        match &target.namespace {
            Some(ns) if !body_ns.is_empty() && body_ns != *ns => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            Some(ns) => {
                meta.insert("namespace".into(), json!(ns));
            }
            None => {
                return Err(ApiError::bad_request(
                    "a namespace is required for namespaced resources",
                ));
            }
        }
    } else {
        meta.remove("namespace");
    }

    // System metadata.
    meta.remove("resourceVersion");
    meta.remove("selfLink");
    match old {
        Some(old) => {
            for key in [
                "uid",
                "creationTimestamp",
                "generation",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
            ] {
                match old.pointer(&format!("/metadata/{key}")) {
                    Some(v) => meta.insert(key.into(), v.clone()),
                    None => meta.remove(key),
                };
            }
        }
        None => {
            meta.insert("uid".into(), json!(new_uid()));
            meta.insert("creationTimestamp".into(), json!(now));
            meta.insert("generation".into(), json!(1));
            meta.remove("deletionTimestamp");
            meta.remove("deletionGracePeriodSeconds");
        }
    }
    if creating
        && rt.namespaced
        && server
            .store
            .get(&GroupResource::new("", "namespaces"), "", target.ns())
            .is_none()
    {
        return Err(ApiError::not_found("", "namespaces", target.ns()));
    }

    // Status subresource rules.
    let scope = target.scope();
    match scope {
        Scope::Status => {
            let Some(old) = old else {
                return Err(not_found(target));
            };
            let new_status = obj.get("status").cloned();
            let mut kept = old.clone();
            if let Some(m) = kept.as_object_mut() {
                match new_status {
                    Some(s) if !s.is_null() => m.insert("status".into(), s),
                    _ => m.remove("status"),
                };
                m.insert("apiVersion".into(), json!(api_version));
                if let Some(meta) = m.get_mut("metadata").and_then(Value::as_object_mut) {
                    meta.remove("resourceVersion");
                }
            }
            obj = kept;
        }
        Scope::Main => {
            let status = match old {
                Some(old) => old.get("status").cloned(),
                None => match (rt.group.as_str(), rt.plural.as_str()) {
                    ("", "services") => Some(json!({"loadBalancer": {}})),
                    ("", "pods") => Some(json!({"phase": "Pending"})),
                    ("", "nodes") => obj.get("status").cloned(),
                    ("", "namespaces") => Some(json!({"phase": "Active"})),
                    _ => None,
                },
            };
            if let Some(m) = obj.as_object_mut() {
                match status {
                    Some(s) => m.insert("status".into(), s),
                    None => m.remove("status"),
                };
            }
        }
        Scope::Whole => {}
    }

    // Built-ins: decode through the typed struct (type errors, unknown fields, normal form).
    if !rt.custom
        && let Some(decoded) = builtin::decode(&rt.group, &rt.plural, &obj)
    {
        let decoded = decoded.map_err(|e| ApiError::bad_request(format!("error decoding {}: {e}", rt.kind)))?;
        if opts.strict && !decoded.unknown.is_empty() {
            let listed: Vec<String> = decoded
                .unknown
                .iter()
                .map(|f| format!("unknown field \"{f}\""))
                .collect();
            return Err(ApiError::bad_request(format!(
                "strict decoding error: {}",
                listed.join(", ")
            )));
        }
        if !opts.ignore_unknown {
            for field in &decoded.unknown {
                opts.warn(format!("unknown field \"{field}\""));
            }
        }
        obj = decoded.object;
    }

    // Custom resources: prune unknown fields and default, as decoding does.
    let crd_schema = rt.schemas.get(&target.version).filter(|_| rt.custom);
    if let Some(schema) = crd_schema {
        let unknown = schema::prune(&mut obj, schema);
        if opts.strict && !unknown.is_empty() {
            let listed: Vec<String> = unknown.iter().map(|f| format!("unknown field \"{f}\"")).collect();
            return Err(ApiError::bad_request(format!(
                "strict decoding error: {}",
                listed.join(", ")
            )));
        }
        if !opts.ignore_unknown {
            for field in unknown {
                opts.warn(format!("unknown field \"{field}\""));
            }
        }
        schema::apply_defaults(&mut obj, schema);
    }

    if let Some(old) = old
        && spec_part(&obj, rt.has_status) != spec_part(old, rt.has_status)
    {
        let generation = old.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(1) + 1;
        if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("generation".into(), json!(generation));
        }
    }

    let mut causes = validate_metadata(rt, &obj);
    if let Some(schema) = crd_schema {
        causes.extend(schema::validate(&obj, schema));
    }
    if !causes.is_empty() {
        let name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        return Err(ApiError::invalid(&rt.group, &rt.kind, &name, causes));
    }

    // Field ownership, recorded before server-side defaulting (which no manager owns).
    let entries = match apply_entries {
        Some(e) => e,
        None => {
            let current = old.map(apply::read_managed_fields).unwrap_or_default();
            apply::record_update(old, &obj, &current, manager, scope, &api_version, now)
        }
    };
    apply::write_managed_fields(&mut obj, &entries);

    per_kind(server, target, old, &mut obj)?;

    let terminating = old.is_some_and(|o| o.pointer("/metadata/deletionTimestamp").is_some());
    let finalizers_left = obj
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|f| !f.is_empty());
    if terminating && !finalizers_left {
        return Ok(Prepared::Delete);
    }
    Ok(Prepared::Store(obj))
}

fn per_kind(server: &Server, target: &Target, old: Option<&Value>, obj: &mut Value) -> ApiResult<()> {
    let rt = &target.rt;
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    match (rt.group.as_str(), rt.plural.as_str()) {
        ("", "services") if target.scope() == Scope::Status => {
            let ingress = obj
                .pointer("/status/loadBalancer/ingress")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let mut causes = Vec::new();
            for (i, entry) in ingress.iter().enumerate() {
                if let Some(ip) = entry.get("ip").and_then(Value::as_str) {
                    if ip.parse::<std::net::IpAddr>().is_err() {
                        causes.push(Cause::invalid(
                            format!("status.loadBalancer.ingress[{i}].ip"),
                            format!("Invalid value: {ip:?}: must be a valid IP address"),
                        ));
                    }
                } else if entry.get("ipMode").is_some() {
                    causes.push(Cause::required(format!("status.loadBalancer.ingress[{i}].ip")));
                }
            }
            if !causes.is_empty() {
                return Err(ApiError::invalid("", "Service", &name, causes));
            }
        }
        ("", "services") if target.scope() != Scope::Status => {
            let mut svc: Service = serde_json::from_value(obj.clone())
                .map_err(|e| ApiError::bad_request(format!("invalid Service: {e}")))?;
            let old_svc: Option<Service> = old.and_then(|o| serde_json::from_value(o.clone()).ok());
            let (all, _) = server.store.list(&GroupResource::new("", "services"), None);
            let mut in_use = InUse::default();
            let key = object_key(obj);
            for other in all.iter().filter(|o| object_key(o) != key) {
                in_use.add_json(other);
            }
            controllers::default_service(&mut svc, old_svc.as_ref(), &in_use, &server.network)
                .map_err(|causes| ApiError::invalid("", "Service", &name, causes))?;
            let defaulted = serde_json::to_value(&svc).map_err(|e| ApiError::internal(e.to_string()))?;
            // Keep the exact status and metadata; take the defaulted spec.
            if let (Some(out), Some(spec)) = (obj.as_object_mut(), defaulted.get("spec")) {
                out.insert("spec".into(), spec.clone());
            }
        }
        ("", "secrets") => {
            // stringData is write-only: merged into data (base64) and never stored.
            let string_data = obj.as_object_mut().and_then(|m| m.remove("stringData"));
            if let Some(Value::Object(entries)) = string_data {
                let data = obj
                    .as_object_mut()
                    .map(|m| m.entry("data").or_insert_with(|| json!({})));
                if let Some(Value::Object(data)) = data {
                    for (key, value) in entries {
                        let bytes = value.as_str().unwrap_or_default().as_bytes().to_vec();
                        let encoded = serde_json::to_value(k8s_openapi::ByteString(bytes))
                            .map_err(|e| ApiError::internal(e.to_string()))?;
                        data.insert(key, encoded);
                    }
                }
            }
        }
        ("apiextensions.k8s.io", "customresourcedefinitions") => {
            let defined = type_from_crd(obj).map_err(|(field, message)| {
                ApiError::invalid(&rt.group, &rt.kind, &name, vec![Cause::invalid(field, message)])
            })?;
            if let Some(old_type) = old.and_then(|o| type_from_crd(o).ok())
                && old_type.namespaced != defined.namespaced
            {
                return Err(ApiError::invalid(
                    &rt.group,
                    &rt.kind,
                    &name,
                    vec![Cause::invalid("spec.scope", "Invalid value: field is immutable")],
                ));
            }
            let now = now_rfc3339();
            let storage = obj
                .pointer("/spec/versions")
                .and_then(Value::as_array)
                .and_then(|vs| vs.iter().find(|v| v["storage"] == true))
                .and_then(|v| v["name"].as_str())
                .unwrap_or_default()
                .to_string();
            let condition = |type_: &str, reason: &str, message: &str| json!({"type": type_, "status": "True", "lastTransitionTime": now, "reason": reason, "message": message});
            let status = json!({
                "conditions": [
                    condition("NamesAccepted", "NoConflicts", "no conflicts found"),
                    condition("Established", "InitialNamesAccepted", "the initial names have been accepted"),
                ],
                "acceptedNames": obj.pointer("/spec/names").cloned().unwrap_or_else(|| json!({})),
                "storedVersions": [storage],
            });
            if let Some(m) = obj.as_object_mut() {
                m.insert("status".into(), status);
            }
        }
        _ => {}
    }
    Ok(())
}

async fn after_write(server: &Arc<Server>, gr: &GroupResource, stored: &Value, lock_held: bool) {
    match (gr.group.as_str(), gr.resource.as_str()) {
        ("apiextensions.k8s.io", "customresourcedefinitions") => server.refresh_registry(),
        ("", "services") if lock_held => {
            let (ns, name) = object_key(stored);
            reconcile_service_slices(server, &ns, &name);
        }
        ("", "pods") => {
            let (ns, _) = object_key(stored);
            let _guard = server.controller_lock.lock().await;
            reconcile_namespace_slices(server, &ns);
        }
        _ => {}
    }
}

/// Creates an object from inside the server (initial namespaces, the lab's fixtures).
pub(crate) async fn create_internal(server: &Arc<Server>, group: &str, plural: &str, body: Value) -> ApiResult<Value> {
    let registry = server.registry();
    let rt = registry
        .types()
        .iter()
        .find(|t| t.group == group && t.plural == plural)
        .cloned()
        .ok_or_else(ApiError::path_not_found)?;
    let namespace = body
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .map(str::to_string)
        .filter(|_| rt.namespaced);
    let target = Target {
        version: rt.preferred_version().to_string(),
        rt,
        namespace,
        name: None,
        subresource: None,
        watch_prefix: false,
    };
    let opts = WriteOptions {
        manager: "herald-lab",
        dry_run: false,
        strict: false,
        ignore_unknown: false,
        warnings: Default::default(),
    };
    write(server, &target, Change::Create(body), &opts)
        .await
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continue_tokens_round_trip_and_reject_garbage() {
        let t = encode_continue(42, "ns", "name-1");
        assert_eq!(decode_continue(&t), Some((42, "ns".into(), "name-1".into())));
        assert_eq!(decode_continue("zz"), None);
        assert_eq!(decode_continue("abc"), None);
    }

    #[test]
    fn names() {
        assert!(is_dns_subdomain("a.b-c"));
        assert!(!is_dns_subdomain("A"));
        assert!(!is_dns_label("a.b"));
        assert_eq!(name_suffix().len(), 5);
        assert_ne!(new_uid(), new_uid());
    }
}
