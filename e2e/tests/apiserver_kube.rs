//! The lab API server driven by kube-rs the way Herald's binaries use it: watchers and
//! reflectors across watch expiry, status patches, server-side apply conflicts,
//! pagination, Service allocation, EndpointSlices, finalizers, persistence, and one
//! test per error code.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use common::{Lab, TempDir, eventually};
use futures::StreamExt;
use herald_e2e::apiserver::{ApiServer, ApiServerConfig};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use serde_json::{Value, json};

fn configmap(name: &str, data: &str) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name}, "data": {"v": data}})).expect("configmap")
}

fn error_code<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> (u16, String) {
    match result {
        Err(kube::Error::Api(status)) => (status.code, status.reason.clone()),
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// Every change reaches a reflector exactly once, including across a forced watch
/// expiry: the watcher's resumed watch gets 410, relists, and ends up with the server's state.
#[tokio::test]
async fn watcher_and_reflector_survive_forced_expiry() {
    let lab = Lab::start_with(ApiServerConfig {
        history_limit: 5,
        ..ApiServerConfig::local()
    })
    .await;
    let api: Api<ConfigMap> = Api::default_namespaced(lab.client().await);
    for i in 0..3 {
        api.create(&PostParams::default(), &configmap(&format!("cm-{i}"), "0"))
            .await
            .expect("create");
    }
    let (reader, writer) = reflector::store::<ConfigMap>();
    let (events_tx, mut events_rx) = tokio::sync::mpsc::unbounded_channel();
    let stream = reflector(writer, watcher(api.clone(), watcher::Config::default())).default_backoff();
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(item) = stream.next().await {
            let summary = match item {
                Ok(watcher::Event::Apply(cm)) => format!(
                    "apply {} {}",
                    cm.metadata.name.unwrap_or_default(),
                    cm.metadata.resource_version.unwrap_or_default()
                ),
                Ok(watcher::Event::Delete(cm)) => format!("delete {}", cm.metadata.name.unwrap_or_default()),
                Ok(watcher::Event::Init) => "init".into(),
                Ok(watcher::Event::InitApply(cm)) => format!("initapply {}", cm.metadata.name.unwrap_or_default()),
                Ok(watcher::Event::InitDone) => "initdone".into(),
                Err(e) => format!("error {e}"),
            };
            if events_tx.send(summary).is_err() {
                return;
            }
        }
    });
    let mut log: Vec<String> = Vec::new();
    let mut drain = |log: &mut Vec<String>| {
        while let Ok(e) = events_rx.try_recv() {
            log.push(e);
        }
    };
    eventually("initial list", Duration::from_secs(10), || {
        let n = reader.state().len();
        async move { n == 3 }
    })
    .await;

    // Live changes while connected.
    let mut expected_applies: Vec<String> = Vec::new();
    for i in 0..3 {
        let cm = api
            .patch(
                &format!("cm-{i}"),
                &PatchParams::default(),
                &Patch::Merge(json!({"data": {"v": "1"}})),
            )
            .await
            .expect("patch");
        expected_applies.push(format!(
            "apply cm-{i} {}",
            cm.metadata.resource_version.unwrap_or_default()
        ));
    }
    let last = expected_applies.last().cloned().unwrap_or_default();
    for _ in 0..500 {
        drain(&mut log);
        if log.contains(&last) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for e in &expected_applies {
        assert_eq!(log.iter().filter(|l| *l == e).count(), 1, "{e} exactly once in {log:?}");
    }

    // Watchers away while more changes than the history window happen.
    lab.server.pause_watches();
    for i in 3..10 {
        api.create(&PostParams::default(), &configmap(&format!("cm-{i}"), "0"))
            .await
            .expect("create");
    }
    api.delete("cm-0", &DeleteParams::default()).await.expect("delete");
    lab.server.resume_watches();

    let server_state = |list: Vec<ConfigMap>| -> BTreeMap<String, String> {
        list.into_iter()
            .map(|c| {
                (
                    c.metadata.name.unwrap_or_default(),
                    c.metadata.resource_version.unwrap_or_default(),
                )
            })
            .collect()
    };
    let want = server_state(api.list(&ListParams::default()).await.expect("list").items);
    eventually("reflector catches up after 410", Duration::from_secs(20), || {
        let have = server_state(reader.state().iter().map(|c| (**c).clone()).collect());
        let want = want.clone();
        async move { have == want }
    })
    .await;
    drain(&mut log);
    assert!(
        log.iter().any(|l| l.starts_with("error") && l.contains("Expired")),
        "a 410 was seen: {log:?}"
    );
    assert!(
        log.iter().filter(|l| *l == "initdone").count() >= 2,
        "relisted: {log:?}"
    );
    // No live event was delivered twice.
    let applies: Vec<&String> = log.iter().filter(|l| l.starts_with("apply ")).collect();
    let unique: HashSet<&&String> = applies.iter().collect();
    assert_eq!(applies.len(), unique.len(), "duplicate events: {log:?}");
    task.abort();
    lab.stop().await;
}

#[tokio::test]
async fn status_subresource_and_generation() {
    let lab = Lab::start().await;
    let api: Api<Service> = Api::default_namespaced(lab.client().await);
    let svc: Service = serde_json::from_value(
        json!({"metadata": {"name": "web"}, "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}}),
    )
    .expect("svc");
    let created = api.create(&PostParams::default(), &svc).await.expect("create");
    assert_eq!(created.metadata.generation, Some(1));
    let status = json!({"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}}, "spec": {"type": "ClusterIP"}});
    let patched = api
        .patch_status("web", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("patch status");
    let ingress = patched
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|l| l.ingress.clone())
        .expect("ingress");
    assert_eq!(ingress[0].ip.as_deref(), Some("192.0.2.1"));
    assert_eq!(
        patched.spec.as_ref().and_then(|s| s.type_.as_deref()),
        Some("LoadBalancer"),
        "status patch left spec alone"
    );
    assert_eq!(patched.metadata.generation, Some(1), "status does not bump generation");
    // Main resource ignores .status; spec change bumps generation; allocations are kept.
    let main = api
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"loadBalancer": {}}, "spec": {"externalTrafficPolicy": "Local"}})),
        )
        .await
        .expect("patch");
    assert_eq!(main.metadata.generation, Some(2));
    assert!(
        main.status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|l| l.ingress.as_ref())
            .is_some()
    );
    let spec = main.spec.expect("spec");
    assert_eq!(
        spec.cluster_ip,
        created.spec.as_ref().and_then(|s| s.cluster_ip.clone())
    );
    assert!(spec.health_check_node_port.is_some());
    // Status is validated: an ingress IP must be an IP.
    let bad = json!({"status": {"loadBalancer": {"ingress": [{"ip": "not-an-ip"}]}}});
    assert_eq!(
        error_code(
            api.patch_status("web", &PatchParams::default(), &Patch::Merge(&bad))
                .await
        ),
        (422, "Invalid".into())
    );
    // Server-side apply on /status, as Herald's controller may do it.
    let applied = api
        .patch_status("web", &PatchParams::apply("herald-controller").force(), &Patch::Apply(json!({"apiVersion": "v1", "kind": "Service", "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.2"}]}}})))
        .await
        .expect("apply status");
    assert_eq!(
        applied
            .status
            .and_then(|s| s.load_balancer)
            .and_then(|l| l.ingress)
            .map(|i| i[0].ip.clone()),
        Some(Some("192.0.2.2".into()))
    );
    lab.stop().await;
}

#[tokio::test]
async fn server_side_apply_conflicts_and_force() {
    let lab = Lab::start().await;
    let api: Api<ConfigMap> = Api::default_namespaced(lab.client().await);
    let intent =
        |v: &str| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "shared"}, "data": {"key": v}});
    let created = api
        .patch("shared", &PatchParams::apply("alice"), &Patch::Apply(intent("a")))
        .await
        .expect("apply creates");
    assert_eq!(
        created.data.as_ref().and_then(|d| d.get("key")).map(String::as_str),
        Some("a")
    );
    match api
        .patch("shared", &PatchParams::apply("bob"), &Patch::Apply(intent("b")))
        .await
    {
        Err(kube::Error::Api(status)) => {
            assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));
            assert!(
                status.message.contains("conflict with \"alice\"") && status.message.contains(".data.key"),
                "{}",
                status.message
            );
        }
        other => panic!("expected conflict, got {other:?}"),
    }
    // Same value: shared ownership, no conflict.
    api.patch("shared", &PatchParams::apply("carol"), &Patch::Apply(intent("a")))
        .await
        .expect("same value");
    let forced = api
        .patch("shared", &PatchParams::apply("bob").force(), &Patch::Apply(intent("b")))
        .await
        .expect("forced");
    assert_eq!(
        forced.data.as_ref().and_then(|d| d.get("key")).map(String::as_str),
        Some("b")
    );
    let managers: Vec<String> = forced
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| m.manager)
        .collect();
    assert_eq!(managers, vec!["bob".to_string()]);
    lab.stop().await;
}

#[tokio::test]
async fn pagination_with_limit_and_continue() {
    let lab = Lab::start().await;
    let api: Api<ConfigMap> = Api::default_namespaced(lab.client().await);
    for i in 0..25 {
        api.create(&PostParams::default(), &configmap(&format!("page-{i:02}"), "x"))
            .await
            .expect("create");
    }
    let mut names = Vec::new();
    let mut params = ListParams::default().limit(10);
    let mut pages = 0;
    for _ in 0..10 {
        let page = api.list(&params).await.expect("list");
        pages += 1;
        if page.metadata.continue_.is_some() {
            assert_eq!(page.items.len(), 10);
            assert!(page.metadata.remaining_item_count.is_some());
        }
        names.extend(page.items.into_iter().filter_map(|c| c.metadata.name));
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = ListParams::default().limit(10).continue_token(&token),
            _ => break,
        }
    }
    assert_eq!(pages, 3);
    let expected: Vec<String> = (0..25).map(|i| format!("page-{i:02}")).collect();
    assert_eq!(names, expected);
    // Selectors apply before the limit.
    let labelled = api
        .list(&ListParams::default().fields("metadata.name=page-07"))
        .await
        .expect("list");
    assert_eq!(labelled.items.len(), 1);
    lab.stop().await;
}

/// A server with a token and a small history window, a client with the token, and a
/// ConfigMap API in `default`: the setting of the error-code tests.
async fn error_lab() -> (Lab, kube::Client, Api<ConfigMap>) {
    let lab = Lab::start_with(ApiServerConfig {
        token: Some("s3cret".into()),
        history_limit: 3,
        ..ApiServerConfig::local()
    })
    .await;
    let client = lab.client().await;
    let api: Api<ConfigMap> = Api::default_namespaced(client.clone());
    (lab, client, api)
}

#[tokio::test]
async fn error_400_bad_request() {
    let (lab, _client, api) = error_lab().await;
    // 400: malformed selector, unsupported field selector.
    assert_eq!(
        error_code(api.list(&ListParams::default().labels("a in (b")).await),
        (400, "BadRequest".into())
    );
    assert_eq!(
        error_code(api.list(&ListParams::default().fields("spec.nodeName=x")).await).0,
        400
    );

    lab.stop().await;
}

#[tokio::test]
async fn error_401_unauthorized() {
    let (lab, _client, _api) = error_lab().await;
    // 401: wrong token.
    let bad_client = {
        let yaml = herald_e2e::apiserver::kubeconfig_yaml(&lab.server.url(), Some("wrong"));
        let kc = kube::config::Kubeconfig::from_yaml(&yaml).expect("kubeconfig");
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .expect("config");
        kube::Client::try_from(cfg).expect("client")
    };
    let bad: Api<ConfigMap> = Api::default_namespaced(bad_client);
    assert_eq!(
        error_code(bad.list(&ListParams::default()).await),
        (401, "Unauthorized".into())
    );

    lab.stop().await;
}

#[tokio::test]
async fn error_404_not_found() {
    let (lab, client, api) = error_lab().await;
    // 404.
    assert_eq!(error_code(api.get("missing").await), (404, "NotFound".into()));
    let in_missing_ns: Api<ConfigMap> = Api::namespaced(client.clone(), "no-such-ns");
    assert_eq!(
        error_code(in_missing_ns.create(&PostParams::default(), &configmap("x", "1")).await).0,
        404
    );

    lab.stop().await;
}

#[tokio::test]
async fn error_409_already_exists_and_conflict() {
    let (lab, _client, api) = error_lab().await;
    // 409 AlreadyExists and Conflict on a stale resourceVersion.
    let first = api
        .create(&PostParams::default(), &configmap("dup", "1"))
        .await
        .expect("create");
    assert_eq!(
        error_code(api.create(&PostParams::default(), &configmap("dup", "1")).await),
        (409, "AlreadyExists".into())
    );
    let mut stale = first.clone();
    api.replace("dup", &PostParams::default(), &configmap("dup", "2"))
        .await
        .expect("unconditional update");
    stale.data = Some([("v".to_string(), "3".to_string())].into());
    assert_eq!(
        error_code(api.replace("dup", &PostParams::default(), &stale).await),
        (409, "Conflict".into())
    );

    lab.stop().await;
}

#[tokio::test]
async fn error_410_expired() {
    let (lab, _client, api) = error_lab().await;
    // 410: a watch from a version that left the history window, and a stale continue token.
    for name in ["page-a", "page-b"] {
        api.create(&PostParams::default(), &configmap(name, "x"))
            .await
            .expect("create");
    }
    let old_rv = lab.server.resource_version().to_string();
    let page = api.list(&ListParams::default().limit(1)).await.expect("list");
    let token = page.metadata.continue_.clone().expect("continue");
    for i in 0..5 {
        api.create(&PostParams::default(), &configmap(&format!("churn-{i}"), "x"))
            .await
            .expect("create");
    }
    let mut stream = api
        .watch(&WatchParams::default(), &old_rv)
        .await
        .expect("watch")
        .boxed();
    match tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("event")
    {
        Some(Ok(WatchEvent::Error(status))) => {
            assert_eq!((status.code, status.reason.as_str()), (410, "Expired"));
        }
        other => panic!("expected 410 ERROR event, got {other:?}"),
    }
    assert_eq!(
        error_code(api.list(&ListParams::default().limit(1).continue_token(&token)).await),
        (410, "Expired".into())
    );

    lab.stop().await;
}

#[tokio::test]
async fn error_415_unsupported_media_type() {
    let (lab, client, _api) = error_lab().await;
    // 415: strategic merge patch on a custom resource; unknown patch media type.
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(
        &PostParams::default(),
        &serde_json::from_value(widget_crd()).expect("crd"),
    )
    .await
    .expect("crd");
    let widgets: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &widget_resource());
    widgets.create(&PostParams::default(), &serde_json::from_value(json!({"apiVersion": "example.io/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {"size": 1}})).expect("obj")).await.expect("create widget");
    assert_eq!(
        error_code(
            widgets
                .patch(
                    "w",
                    &PatchParams::default(),
                    &Patch::Strategic(json!({"spec": {"size": 2}}))
                )
                .await
        )
        .0,
        415
    );
    let raw = http::Request::builder()
        .method("PATCH")
        .uri("/api/v1/namespaces/default/configmaps/dup")
        .header("content-type", "application/xml")
        .body(b"<x/>".to_vec())
        .expect("request");
    assert_eq!(
        error_code(client.request::<ConfigMap>(raw).await),
        (415, "UnsupportedMediaType".into())
    );

    lab.stop().await;
}

#[tokio::test]
async fn error_422_invalid() {
    let (lab, client, api) = error_lab().await;
    // 422: invalid name, and a node port already in use (with field causes).
    assert_eq!(
        error_code(api.create(&PostParams::default(), &configmap("Not_Valid", "1")).await),
        (422, "Invalid".into())
    );
    let services: Api<Service> = Api::default_namespaced(client.clone());
    let svc = |name: &str| -> Service {
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}]}})).expect("svc")
    };
    services
        .create(&PostParams::default(), &svc("one"))
        .await
        .expect("first");
    match services.create(&PostParams::default(), &svc("two")).await {
        Err(kube::Error::Api(status)) => {
            assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
            let details = status.details.expect("details");
            assert_eq!(details.causes[0].field, "spec.ports[0].nodePort");
        }
        other => panic!("expected 422, got {other:?}"),
    }
    lab.stop().await;
}

fn widget_crd() -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.io"},
        "spec": {"group": "example.io", "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [{"name": "v1", "served": true, "storage": true, "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}
    })
}

fn widget_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("example.io", "v1", "Widget"), "widgets")
}

#[tokio::test]
async fn services_endpointslices_follow_pods() {
    let lab = Lab::start().await;
    let client = lab.client().await;
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let services: Api<Service> = Api::default_namespaced(client.clone());
    let slices: Api<EndpointSlice> = Api::default_namespaced(client.clone());
    let svc: Service = serde_json::from_value(json!({"metadata": {"name": "web"}, "spec": {"type": "LoadBalancer", "ipFamilyPolicy": "RequireDualStack", "selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}})).expect("svc");
    let created = services.create(&PostParams::default(), &svc).await.expect("create");
    let spec = created.spec.clone().expect("spec");
    assert_eq!(spec.ip_families, Some(vec!["IPv4".to_string(), "IPv6".to_string()]));
    assert_eq!(spec.cluster_ips.as_ref().map(Vec::len), Some(2));

    for (name, v4, v6, ready) in [
        ("web-a", "10.244.0.5", "fd00:244::5", true),
        ("web-b", "10.244.1.5", "fd00:244:1::5", false),
    ] {
        let pod: Pod = serde_json::from_value(json!({"metadata": {"name": name, "labels": {"app": "web"}}, "spec": {"nodeName": "node-1", "containers": [{"name": "c", "image": "nginx", "ports": [{"name": "http", "containerPort": 8080}]}]}})).expect("pod");
        pods.create(&PostParams::default(), &pod).await.expect("pod");
        let status = json!({"status": {"phase": "Running", "podIP": v4, "podIPs": [{"ip": v4}, {"ip": v6}], "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}});
        pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .expect("pod status");
    }
    let selector = ListParams::default().labels("kubernetes.io/service-name=web");
    let list = slices.list(&selector).await.expect("slices");
    assert_eq!(list.items.len(), 2, "one per family");
    for slice in &list.items {
        let endpoints = slice.endpoints.as_deref().unwrap_or_default();
        assert_eq!(endpoints.len(), 2);
        assert_eq!(slice.ports.as_ref().and_then(|p| p[0].port), Some(8080));
        let ready: Vec<Option<bool>> = endpoints
            .iter()
            .map(|e| e.conditions.as_ref().and_then(|c| c.ready))
            .collect();
        assert_eq!(ready, vec![Some(true), Some(false)]);
        assert_eq!(endpoints[0].node_name.as_deref(), Some("node-1"));
        let owner = &slice.metadata.owner_references.as_ref().expect("owner")[0];
        assert_eq!(owner.uid, created.metadata.uid.clone().expect("uid"));
    }
    let v6 = list.items.iter().find(|s| s.address_type == "IPv6").expect("v6 slice");
    assert_eq!(
        v6.endpoints.as_deref().unwrap_or_default()[0].addresses,
        vec!["fd00:244::5".to_string()]
    );

    // A pod going away disappears from the slices; the Service's deletion removes them.
    pods.delete("web-a", &DeleteParams::default())
        .await
        .expect("delete pod");
    let list = slices.list(&selector).await.expect("slices");
    assert!(
        list.items
            .iter()
            .all(|s| s.endpoints.as_deref().unwrap_or_default().len() == 1)
    );
    services
        .delete("web", &DeleteParams::background())
        .await
        .expect("delete svc");
    assert!(slices.list(&selector).await.expect("slices").items.is_empty());
    lab.stop().await;
}

#[tokio::test]
async fn finalizers_namespaces_generate_name_and_crds() {
    let lab = Lab::start().await;
    let client = lab.client().await;
    let api: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let mut held = configmap("held", "x");
    held.metadata.finalizers = Some(vec!["example.io/hold".into()]);
    api.create(&PostParams::default(), &held).await.expect("create");
    api.delete("held", &DeleteParams::default()).await.expect("delete");
    let terminating = api.get("held").await.expect("still there");
    assert!(terminating.metadata.deletion_timestamp.is_some());
    api.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .expect("release");
    assert_eq!(error_code(api.get("held").await).0, 404);

    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::default_namespaced(client.clone());
    let secret =
        serde_json::from_value(json!({"metadata": {"name": "s"}, "stringData": {"token": "abc"}})).expect("secret");
    let stored = secrets.create(&PostParams::default(), &secret).await.expect("secret");
    assert_eq!(
        stored.data.and_then(|d| d.get("token").cloned()).map(|b| b.0),
        Some(b"abc".to_vec())
    );
    assert!(stored.string_data.is_none());

    let mut generated = configmap("", "x");
    generated.metadata.name = None;
    generated.metadata.generate_name = Some("gen-".into());
    let made = api
        .create(&PostParams::default(), &generated)
        .await
        .expect("generateName");
    let name = made.metadata.name.expect("name");
    assert!(name.starts_with("gen-") && name.len() == 9, "{name}");

    // A CRD is served at once; its objects go with the namespace.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "scratch"}})).expect("ns"),
        )
        .await
        .expect("ns");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(
        &PostParams::default(),
        &serde_json::from_value(widget_crd()).expect("crd"),
    )
    .await
    .expect("crd");
    let widgets: Api<DynamicObject> = Api::namespaced_with(client.clone(), "scratch", &widget_resource());
    widgets.create(&PostParams::default(), &serde_json::from_value(json!({"apiVersion": "example.io/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {"size": 1}})).expect("obj")).await.expect("widget");
    let in_scratch: Api<ConfigMap> = Api::namespaced(client.clone(), "scratch");
    in_scratch
        .create(&PostParams::default(), &configmap("c", "x"))
        .await
        .expect("cm");
    namespaces
        .delete("scratch", &DeleteParams::default())
        .await
        .expect("delete ns");
    eventually("namespace gone", Duration::from_secs(5), || {
        let n = namespaces.clone();
        async move { n.get_opt("scratch").await.ok().flatten().is_none() }
    })
    .await;
    assert_eq!(error_code(widgets.get("w").await).0, 404);
    assert_eq!(error_code(in_scratch.get("c").await).0, 404);
    lab.stop().await;
}

#[tokio::test]
async fn state_file_survives_restart() {
    let dir = TempDir::new("state");
    let state = dir.path().join("state.json");
    let config = ApiServerConfig {
        state_file: Some(state.clone()),
        ..ApiServerConfig::local()
    };
    let server = ApiServer::start(config.clone()).await.expect("start");
    let api: Api<Service> = Api::default_namespaced(server.client().await.expect("client"));
    let svc: Service = serde_json::from_value(
        json!({"metadata": {"name": "kept"}, "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}}),
    )
    .expect("svc");
    let before = api.create(&PostParams::default(), &svc).await.expect("create");
    let rv_before = server.resource_version();
    server.shutdown().await;
    assert!(state.exists());

    let server = ApiServer::start(config).await.expect("restart");
    assert_eq!(server.resource_version(), rv_before);
    let api: Api<Service> = Api::default_namespaced(server.client().await.expect("client"));
    let after = api.get("kept").await.expect("restored");
    assert_eq!(after.metadata.uid, before.metadata.uid);
    assert_eq!(
        after.spec.and_then(|s| s.cluster_ip),
        before.spec.and_then(|s| s.cluster_ip)
    );
    // Watchers from before the restart must relist.
    let mut stream = api
        .watch(&WatchParams::default(), &(rv_before - 1).to_string())
        .await
        .expect("watch")
        .boxed();
    match tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("event")
    {
        Some(Ok(WatchEvent::Error(status))) => assert_eq!(status.code, 410),
        other => panic!("expected 410, got {other:?}"),
    }
    let next = api
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "new"}, "spec": {"ports": [{"port": 80}]}}))
                .expect("svc"),
        )
        .await
        .expect("create");
    let rv: u64 = next.metadata.resource_version.expect("rv").parse().expect("number");
    assert!(rv > rv_before);
    server.shutdown().await;
}

#[tokio::test]
async fn watch_bookmarks_selectors_and_timeouts() {
    let lab = Lab::start_with(ApiServerConfig {
        bookmark_interval: Duration::from_millis(100),
        ..ApiServerConfig::local()
    })
    .await;
    let api: Api<ConfigMap> = Api::default_namespaced(lab.client().await);
    let start = lab.server.resource_version().to_string();
    let mut params = WatchParams::default().labels("team=a").timeout(3);
    params.bookmarks = true;
    let mut stream = api.watch(&params, &start).await.expect("watch").boxed();
    let mut labelled = configmap("moving", "x");
    labelled.metadata.labels = Some([("team".to_string(), "b".to_string())].into());
    api.create(&PostParams::default(), &labelled).await.expect("create");
    api.patch(
        "moving",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"team": "a"}}})),
    )
    .await
    .expect("into selector");
    api.patch(
        "moving",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"team": "c"}}})),
    )
    .await
    .expect("out of selector");
    let mut kinds: Vec<String> = Vec::new();
    let mut bookmarks = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while let Ok(Some(event)) = tokio::time::timeout_at(deadline, stream.next()).await {
        match event.expect("event") {
            WatchEvent::Added(_) => kinds.push("ADDED".into()),
            WatchEvent::Modified(_) => kinds.push("MODIFIED".into()),
            WatchEvent::Deleted(_) => kinds.push("DELETED".into()),
            WatchEvent::Bookmark(_) => bookmarks += 1,
            WatchEvent::Error(e) => panic!("{e:?}"),
        }
    }
    // The stream ended by itself (timeoutSeconds) well before the deadline.
    assert!(tokio::time::Instant::now() < deadline);
    assert_eq!(kinds, vec!["ADDED", "DELETED"]);
    assert!(bookmarks > 0);
    lab.stop().await;
}

#[tokio::test]
async fn streaming_list_collection_delete_and_method_not_allowed() {
    let lab = Lab::start().await;
    let client = lab.client().await;
    let api: Api<ConfigMap> = Api::default_namespaced(client.clone());
    for name in ["s-1", "s-2"] {
        let mut cm = configmap(name, "x");
        cm.metadata.labels = Some([("batch".to_string(), "one".to_string())].into());
        api.create(&PostParams::default(), &cm).await.expect("create");
    }
    // kube-rs's streaming-list watcher (sendInitialEvents + initial-events-end bookmark).
    let (reader, writer) = reflector::store::<ConfigMap>();
    let stream = reflector(
        writer,
        watcher(api.clone(), watcher::Config::default().streaming_lists()),
    )
    .default_backoff();
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while stream.next().await.is_some() {}
    });
    eventually("streaming list", Duration::from_secs(10), || {
        let n = reader.state().len();
        async move { n == 2 }
    })
    .await;
    task.abort();

    api.delete_collection(&DeleteParams::default(), &ListParams::default().labels("batch=one"))
        .await
        .expect("delete collection");
    assert!(api.list(&ListParams::default()).await.expect("list").items.is_empty());

    let raw = http::Request::builder()
        .method("POST")
        .uri("/api/v1/namespaces/default/configmaps/s-1")
        .body(b"{}".to_vec())
        .expect("request");
    assert_eq!(
        error_code(client.request::<ConfigMap>(raw).await),
        (405, "MethodNotAllowed".into())
    );
    lab.stop().await;
}

/// `herald-lab apiserver` as a process: env-var configuration, kubeconfig, state saved on SIGTERM.
#[tokio::test]
async fn cli_serves_until_sigterm_and_saves_state() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let dir = TempDir::new("cli");
    let kubeconfig = dir.path().join("kubeconfig");
    let state = dir.path().join("state.json");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald-lab"))
        .arg("apiserver")
        .env("HERALD_LAB_LISTEN", "127.0.0.1:0")
        .env("HERALD_LAB_KUBECONFIG", &kubeconfig)
        .env("HERALD_LAB_STATE", &state)
        .env("HERALD_LAB_TOKEN", "cli-token")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn herald-lab");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("prints")
        .expect("read")
        .expect("a line");
    assert!(
        line.starts_with("herald-lab apiserver listening on http://127.0.0.1:"),
        "{line}"
    );

    let kc = kube::config::Kubeconfig::read_from(&kubeconfig).expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("config");
    let api: Api<ConfigMap> = Api::default_namespaced(kube::Client::try_from(config).expect("client"));
    api.create(&PostParams::default(), &configmap("from-cli", "x"))
        .await
        .expect("create");

    let pid = child.id().expect("pid").to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exits")
        .expect("status");
    assert!(status.success(), "{status:?}");
    let saved = std::fs::read_to_string(&state).expect("state saved");
    assert!(saved.contains("from-cli"));
}

#[tokio::test]
async fn delete_propagation_orphan_keeps_dependents() {
    let lab = Lab::start().await;
    let client = lab.client().await;
    let services: Api<Service> = Api::default_namespaced(client.clone());
    let slices: Api<EndpointSlice> = Api::default_namespaced(client.clone());
    let svc: Service = serde_json::from_value(
        json!({"metadata": {"name": "kept-slices"}, "spec": {"selector": {"app": "x"}, "ports": [{"port": 80}]}}),
    )
    .expect("svc");
    services.create(&PostParams::default(), &svc).await.expect("create");
    let selector = ListParams::default().labels("kubernetes.io/service-name=kept-slices");
    assert_eq!(slices.list(&selector).await.expect("list").items.len(), 1);
    services
        .delete("kept-slices", &DeleteParams::orphan())
        .await
        .expect("delete");
    let left = slices.list(&selector).await.expect("list").items;
    assert_eq!(left.len(), 1, "orphaned, not deleted");
    assert!(left[0].metadata.owner_references.as_ref().is_none_or(|o| o.is_empty()));
    // An unsupported policy is refused.
    let bad = DeleteParams {
        propagation_policy: None,
        ..DeleteParams::default()
    };
    let raw = http::Request::builder()
        .method("DELETE")
        .uri("/apis/discovery.k8s.io/v1/namespaces/default/endpointslices?propagationPolicy=Sometimes")
        .body(serde_json::to_vec(&bad).expect("json"))
        .expect("request");
    assert_eq!(error_code(client.request::<Value>(raw).await).0, 422);
    lab.stop().await;
}

/// A client holding a version from an earlier server (restarted without state) relists.
#[tokio::test]
async fn watch_from_the_future_is_expired() {
    let lab = Lab::start().await;
    let api: Api<ConfigMap> = Api::default_namespaced(lab.client().await);
    let future = (lab.server.resource_version() + 1000).to_string();
    let mut stream = api
        .watch(&WatchParams::default(), &future)
        .await
        .expect("watch")
        .boxed();
    match tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("event")
    {
        Some(Ok(WatchEvent::Error(status))) => assert_eq!(status.code, 410),
        other => panic!("expected 410, got {other:?}"),
    }
    lab.stop().await;
}
