//! The lab API server driven by the real `kubectl` (never a mock): apply (client-side and
//! server-side), get (tables, YAML, watch), patch (all types), label, wait, delete.

mod common;

use std::time::Duration;

use common::{Lab, fixture, kubectl_available};
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

async fn lab_with_crd() -> Lab {
    let lab = Lab::start().await;
    let crd = fixture("servicel2status-crd.yaml");
    lab.kubectl_ok(&["apply", "-f", crd.to_str().expect("utf8")]).await;
    lab
}

#[tokio::test]
async fn crd_apply_and_printer_columns() {
    if !kubectl_available() {
        return;
    }
    let lab = lab_with_crd().await;
    let sample = fixture("servicel2status-sample.yaml");
    let sample = sample.to_str().expect("utf8");
    let out = lab.kubectl_ok(&["apply", "-f", sample]).await;
    assert!(out.contains("servicel2status.herald.io/web-node-a created"), "{out}");

    let table = lab.kubectl_ok(&["get", "servicel2status", "-A"]).await;
    let header: Vec<&str> = table.lines().next().expect("header").split_whitespace().collect();
    assert_eq!(
        header,
        ["NAMESPACE", "NAME", "NODE", "SERVICE", "IPS", "INTERFACES", "AGE"],
        "{table}"
    );
    let row = table.lines().nth(1).expect("row");
    assert!(
        row.starts_with("herald-system")
            && row.contains("web-node-a")
            && row.contains("node-a")
            && row.contains("192.0.2.10")
            && row.contains("eth0"),
        "{table}"
    );

    // Short name from discovery, and CRD status.
    let by_short = lab
        .kubectl_ok(&["get", "sl2s", "-n", "herald-system", "-o", "name"])
        .await;
    assert_eq!(by_short.trim(), "servicel2status.herald.io/web-node-a");
    let established = lab
        .kubectl_ok(&[
            "get",
            "crd",
            "servicel2statuses.herald.io",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Established\")].status}",
        ])
        .await;
    assert_eq!(established, "True");

    // Re-apply unchanged, then server-side apply of the CRD and of a changed object.
    let again = lab.kubectl_ok(&["apply", "-f", sample]).await;
    assert!(again.contains("unchanged"), "{again}");
    let crd = fixture("servicel2status-crd.yaml");
    let ssa = lab
        .kubectl_ok(&["apply", "--server-side", "-f", crd.to_str().expect("utf8")])
        .await;
    assert!(ssa.contains("serverside-applied"), "{ssa}");
    let changed = std::fs::read_to_string(fixture("servicel2status-sample.yaml"))
        .expect("read")
        .replace("node: node-a", "node: node-b");
    let changed_path = lab.dir.path().join("changed.yaml");
    std::fs::write(&changed_path, changed).expect("write");
    let out = lab
        .kubectl_ok(&[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            changed_path.to_str().expect("utf8"),
        ])
        .await;
    assert!(out.contains("serverside-applied"), "{out}");
    let yaml = lab
        .kubectl_ok(&["get", "sl2s", "web-node-a", "-n", "herald-system", "-o", "yaml"])
        .await;
    assert!(
        yaml.contains("node: node-b") && yaml.contains("kind: ServiceL2Status") && yaml.contains("resourceVersion:"),
        "{yaml}"
    );
    lab.stop().await;
}

#[tokio::test]
async fn service_apply_patch_label_delete() {
    if !kubectl_available() {
        return;
    }
    let lab = Lab::start().await;
    let svc = fixture("service.yaml");
    let svc = svc.to_str().expect("utf8");
    lab.kubectl_ok(&["apply", "-f", svc]).await;
    let ssa = lab.kubectl_ok(&["apply", "--server-side", "-f", svc]).await;
    assert!(ssa.contains("serverside-applied"), "{ssa}");

    let table = lab.kubectl_ok(&["get", "svc", "web"]).await;
    assert!(
        table.contains("LoadBalancer")
            && table.contains("10.96.0.2")
            && table.contains("80:30000/TCP")
            && table.contains("<pending>"),
        "{table}"
    );
    let yaml = lab.kubectl_ok(&["get", "svc", "web", "-o", "yaml"]).await;
    assert!(
        yaml.contains("clusterIP: 10.96.0.2")
            && yaml.contains("nodePort: 30000")
            && yaml.contains("externalTrafficPolicy: Cluster"),
        "{yaml}"
    );

    // Strategic merge patch merges ports by port number.
    lab.kubectl_ok(&[
        "patch",
        "svc",
        "web",
        "-p",
        r#"{"spec":{"ports":[{"port":80,"targetPort":8080}]}}"#,
    ])
    .await;
    let ports = lab
        .kubectl_ok(&[
            "get",
            "svc",
            "web",
            "-o",
            "jsonpath={.spec.ports[0].name}/{.spec.ports[0].targetPort}/{.spec.ports[0].nodePort}",
        ])
        .await;
    assert_eq!(ports, "http/8080/30000");
    lab.kubectl_ok(&[
        "patch",
        "svc",
        "web",
        "--type=merge",
        "-p",
        r#"{"metadata":{"annotations":{"a":"1"}}}"#,
    ])
    .await;
    lab.kubectl_ok(&[
        "patch",
        "svc",
        "web",
        "--type=json",
        "-p",
        r#"[{"op":"add","path":"/metadata/annotations/b","value":"2"}]"#,
    ])
    .await;
    lab.kubectl_ok(&["label", "svc", "web", "tier=front"]).await;
    let selected = lab
        .kubectl_ok(&[
            "get",
            "svc",
            "-l",
            "tier in (front),app=web",
            "-o",
            "jsonpath={.items[*].metadata.annotations.a}{.items[*].metadata.annotations.b}",
        ])
        .await;
    assert_eq!(selected, "12");
    let none = lab
        .kubectl_ok(&["get", "svc", "-l", "tier notin (front)", "-o", "name"])
        .await;
    assert!(none.trim().is_empty(), "{none}");

    // A bad JSON patch is refused with the server's message.
    let (ok, _, err) = lab
        .kubectl(&[
            "patch",
            "svc",
            "web",
            "--type=json",
            "-p",
            r#"[{"op":"replace","path":"/spec/nope/x","value":1}]"#,
        ])
        .await;
    assert!(!ok && !err.is_empty());

    // Unknown fields of built-in kinds: refused under kubectl's strict validation, dropped
    // with a warning under --validate=warn.
    let typo = std::fs::read_to_string(fixture("service.yaml"))
        .expect("read")
        .replace("  type: LoadBalancer", "  type: LoadBalancer\n  portz: []");
    let typo_path = lab.dir.path().join("typo.yaml");
    std::fs::write(&typo_path, typo).expect("write");
    let typo_path = typo_path.to_str().expect("utf8");
    let (ok, _, err) = lab.kubectl(&["apply", "-f", typo_path]).await;
    assert!(!ok && err.contains("unknown field \"spec.portz\""), "{err}");
    let (ok, _, err) = lab.kubectl(&["apply", "--validate=warn", "-f", typo_path]).await;
    assert!(ok && err.contains("unknown field \"spec.portz\""), "{err}");

    // Server-side dry run (kubectl diff) changes nothing and keeps the version.
    let port_81 = std::fs::read_to_string(fixture("service.yaml"))
        .expect("read")
        .replace("port: 80", "port: 81");
    let port_81_path = lab.dir.path().join("port81.yaml");
    std::fs::write(&port_81_path, port_81).expect("write");
    let (ok, diff, err) = lab.kubectl(&["diff", "-f", port_81_path.to_str().expect("utf8")]).await;
    assert!(
        !ok && diff.contains("+    port: 81") && !diff.contains("resourceVersion"),
        "{diff}{err}"
    );
    let port = lab
        .kubectl_ok(&["get", "svc", "web", "-o", "jsonpath={.spec.ports[0].port}"])
        .await;
    assert_eq!(port, "80");

    // No authorization in the lab: kubectl's access reviews say yes.
    assert_eq!(
        lab.kubectl_ok(&["auth", "can-i", "create", "services"]).await.trim(),
        "yes"
    );

    // Its EndpointSlice exists and goes away with it.
    let slices = lab
        .kubectl_ok(&[
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=web",
            "-o",
            "name",
        ])
        .await;
    assert_eq!(slices.lines().count(), 1, "{slices}");
    lab.kubectl_ok(&["delete", "svc", "web", "--timeout=20s"]).await;
    let (ok, _, err) = lab.kubectl(&["get", "svc", "web"]).await;
    assert!(!ok && err.contains("NotFound"), "{err}");
    let slices = lab.kubectl_ok(&["get", "endpointslices", "-o", "name"]).await;
    assert!(slices.trim().is_empty(), "{slices}");
    lab.stop().await;
}

#[tokio::test]
async fn custom_resource_patches_and_status_subresource() {
    if !kubectl_available() {
        return;
    }
    let lab = lab_with_crd().await;
    lab.kubectl_ok(&[
        "apply",
        "-f",
        fixture("servicel2status-sample.yaml").to_str().expect("utf8"),
    ])
    .await;
    let ns = ["-n", "herald-system"];
    // Strategic merge patch is not defined for custom resources: kubectl shows the 415.
    let (ok, _, err) = lab
        .kubectl(&[
            "patch",
            "sl2s",
            "web-node-a",
            ns[0],
            ns[1],
            "-p",
            r#"{"spec":{"node":"x"}}"#,
        ])
        .await;
    assert!(!ok && err.contains("unknown format"), "{err}");
    lab.kubectl_ok(&[
        "patch",
        "sl2s",
        "web-node-a",
        ns[0],
        ns[1],
        "--type=merge",
        "-p",
        r#"{"spec":{"node":"node-m"}}"#,
    ])
    .await;
    lab.kubectl_ok(&[
        "patch",
        "sl2s",
        "web-node-a",
        ns[0],
        ns[1],
        "--type=json",
        "-p",
        r#"[{"op":"add","path":"/spec/ips/-","value":"2001:db8::10"}]"#,
    ])
    .await;
    // .status on the main resource is ignored; /status changes only .status.
    lab.kubectl_ok(&[
        "patch",
        "sl2s",
        "web-node-a",
        ns[0],
        ns[1],
        "--type=merge",
        "-p",
        r#"{"status":{"ignored":true}}"#,
    ])
    .await;
    lab.kubectl_ok(&[
        "patch",
        "sl2s",
        "web-node-a",
        ns[0],
        ns[1],
        "--type=merge",
        "--subresource=status",
        "-p",
        r#"{"status":{"ready":true},"spec":{"node":"ignored"}}"#,
    ])
    .await;
    // The CRD schema is enforced: unknown fields (kubectl asks for strict validation) and wrong types.
    let bogus = [
        "patch",
        "sl2s",
        "web-node-a",
        ns[0],
        ns[1],
        "--type=merge",
        "-p",
        r#"{"spec":{"bogus":1}}"#,
    ];
    let (ok, _, err) = lab.kubectl(&bogus).await;
    assert!(ok && err.contains("Warning: unknown field \"spec.bogus\""), "{err}");
    let strict = ["apply", "--validate=strict", "-f", "-"];
    let mut child = lab
        .kubectl_command(&strict)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let manifest = "apiVersion: herald.io/v1beta1\nkind: ServiceL2Status\nmetadata: {name: x, namespace: herald-system}\nspec: {node: n, bogus: 1}\n";
    if let Some(mut stdin) = child.stdin.take() {
        use tokio::io::AsyncWriteExt;
        stdin.write_all(manifest.as_bytes()).await.expect("write stdin");
    }
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("done")
        .expect("output");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("strict decoding error: unknown field \"spec.bogus\""),
        "{err}"
    );
    let wrong_type = [
        "patch",
        "sl2s",
        "web-node-a",
        ns[0],
        ns[1],
        "--type=merge",
        "-p",
        r#"{"spec":{"ips":"192.0.2.1"}}"#,
    ];
    let (ok, _, err) = lab.kubectl(&wrong_type).await;
    assert!(!ok && err.contains("spec.ips in body must be of type array"), "{err}");
    let got = lab
        .kubectl_ok(&[
            "get",
            "sl2s",
            "web-node-a",
            ns[0],
            ns[1],
            "-o",
            "jsonpath={.spec.node} {.spec.ips} {.status} {.metadata.generation} {.spec.bogus}",
        ])
        .await;
    // Empty last field: the unknown `spec.bogus` was dropped, and dropping it changed nothing.
    assert_eq!(got, r#"node-m ["192.0.2.10","2001:db8::10"] {"ready":true} 3 "#);
    lab.stop().await;
}

#[tokio::test]
async fn get_watch_sees_a_later_change() {
    if !kubectl_available() {
        return;
    }
    let lab = Lab::start().await;
    lab.kubectl_ok(&["apply", "-f", fixture("service.yaml").to_str().expect("utf8")])
        .await;
    let mut child = lab
        .kubectl_command(&["get", "svc", "-w", "--request-timeout=0"])
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut seen = Vec::new();
    let api: Api<Service> = Api::default_namespaced(lab.client().await);
    let result = tokio::time::timeout(Duration::from_secs(20), async {
        let mut changed = false;
        while let Some(line) = lines.next_line().await.expect("read") {
            seen.push(line.clone());
            if line.starts_with("web ") && !changed {
                // The initial row is printed: now change the Service.
                let status = json!({"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.77"}]}}});
                api.patch_status("web", &PatchParams::default(), &Patch::Merge(&status))
                    .await
                    .expect("patch status");
                changed = true;
            } else if line.contains("192.0.2.77") {
                return true;
            }
        }
        false
    })
    .await;
    let _ = child.kill().await;
    assert_eq!(result, Ok(true), "watch output: {seen:?}");
    lab.stop().await;
}

#[tokio::test]
async fn wait_for_jsonpath_and_delete_waits() {
    if !kubectl_available() {
        return;
    }
    let lab = lab_with_crd().await;
    lab.kubectl_ok(&[
        "apply",
        "-f",
        fixture("servicel2status-sample.yaml").to_str().expect("utf8"),
    ])
    .await;
    let waiter = lab
        .kubectl_command(&[
            "wait",
            "-n",
            "herald-system",
            "--for=jsonpath={.status.phase}=Announced",
            "servicel2status/web-node-a",
            "--timeout=20s",
        ])
        .spawn()
        .expect("spawn");
    tokio::time::sleep(Duration::from_millis(500)).await;
    lab.kubectl_ok(&[
        "patch",
        "sl2s",
        "web-node-a",
        "-n",
        "herald-system",
        "--type=merge",
        "--subresource=status",
        "-p",
        r#"{"status":{"phase":"Announced"}}"#,
    ])
    .await;
    let out = tokio::time::timeout(Duration::from_secs(25), waiter.wait_with_output())
        .await
        .expect("wait finishes")
        .expect("output");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("condition met"));
    let deleted = lab
        .kubectl_ok(&["delete", "sl2s", "web-node-a", "-n", "herald-system", "--timeout=20s"])
        .await;
    assert!(deleted.contains("deleted"), "{deleted}");
    lab.stop().await;
}

/// Herald's own CRDs and samples, once they exist in `config/`, must apply cleanly.
#[tokio::test]
async fn repository_crds_and_samples_apply() {
    if !kubectl_available() {
        return;
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("config");
    let files = |dir: &str| -> Vec<std::path::PathBuf> {
        let mut out: Vec<_> = std::fs::read_dir(root.join(dir))
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    };
    let crds = files("crd");
    if crds.is_empty() {
        eprintln!("no config/crd/*.yaml yet: nothing to check");
        return;
    }
    let lab = Lab::start().await;
    for crd in &crds {
        lab.kubectl_ok(&["apply", "-f", crd.to_str().expect("utf8")]).await;
    }
    for sample in files("samples") {
        lab.kubectl_ok(&["apply", "-f", sample.to_str().expect("utf8")]).await;
    }
    // The documented install: kubectl apply -k config/deploy (namespace, CRDs, RBAC, workloads).
    let deploy = root.join("deploy");
    if deploy.join("kustomization.yaml").exists() {
        lab.kubectl_ok(&["apply", "-k", deploy.to_str().expect("utf8")]).await;
        let workloads = lab
            .kubectl_ok(&["get", "deployments,daemonsets", "-n", "herald-system", "-o", "name"])
            .await;
        assert!(!workloads.trim().is_empty(), "{workloads}");
    }
    lab.stop().await;
}

/// Events written the way kube-rs's `Recorder` writes them (events.k8s.io/v1) are the
/// core Events `kubectl get events` and `kubectl describe` show.
#[tokio::test]
async fn events_v1_are_core_events() {
    if !kubectl_available() {
        return;
    }
    let lab = Lab::start().await;
    lab.kubectl_ok(&["apply", "-f", fixture("service.yaml").to_str().expect("utf8")])
        .await;
    let client = lab.client().await;
    let services: kube::Api<k8s_openapi::api::core::v1::Service> = kube::Api::default_namespaced(client.clone());
    let uid = services.get("web").await.expect("service").metadata.uid.expect("uid");
    let events: kube::Api<k8s_openapi::api::events::v1::Event> = kube::Api::default_namespaced(client.clone());
    let event = serde_json::from_value(json!({
        "metadata": {"generateName": "web."},
        "eventTime": "2026-01-01T00:00:00.000000Z",
        "reportingController": "herald.io/controller", "reportingInstance": "controller-0",
        "action": "Allocate", "reason": "IPAllocated", "type": "Normal", "note": "assigned 192.0.2.10",
        "regarding": {"apiVersion": "v1", "kind": "Service", "name": "web", "namespace": "default", "uid": uid}
    }))
    .expect("event");
    let created = events
        .create(&kube::api::PostParams::default(), &event)
        .await
        .expect("create event");
    let name = created.metadata.name.clone().expect("name");
    // A series update by merge patch in the events.k8s.io shape.
    let series = json!({"series": {"count": 2, "lastObservedTime": "2026-01-01T00:00:05.000000Z"}});
    events
        .patch(&name, &PatchParams::default(), &Patch::Merge(&series))
        .await
        .expect("patch series");
    let listed = events
        .list(&kube::api::ListParams::default().fields("regarding.name=web"))
        .await
        .expect("list");
    assert_eq!(listed.items.len(), 1);
    assert_eq!(listed.items[0].note.as_deref(), Some("assigned 192.0.2.10"));

    let table = lab.kubectl_ok(&["get", "events"]).await;
    let header: Vec<&str> = table.lines().next().expect("header").split_whitespace().collect();
    assert_eq!(
        header,
        ["LAST", "SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"],
        "{table}"
    );
    assert!(
        table.contains("IPAllocated") && table.contains("service/web") && table.contains("assigned 192.0.2.10"),
        "{table}"
    );
    let core = lab
        .kubectl_ok(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=web",
            "-o",
            "jsonpath={.items[0].message}",
        ])
        .await;
    assert_eq!(core, "assigned 192.0.2.10");
    let described = lab.kubectl_ok(&["describe", "svc", "web"]).await;
    assert!(described.contains("IPAllocated"), "{described}");
    lab.stop().await;
}

/// kubectl's typed-client commands send protobuf bodies; the lab decodes the kinds they
/// create and refuses others with 415.
#[tokio::test]
async fn create_commands_in_protobuf() {
    if !kubectl_available() {
        return;
    }
    let lab = Lab::start().await;
    lab.kubectl_ok(&["create", "namespace", "demo"]).await;
    lab.kubectl_ok(&["create", "configmap", "cfg", "-n", "demo", "--from-literal=a=b"])
        .await;
    lab.kubectl_ok(&[
        "create",
        "secret",
        "generic",
        "sec",
        "-n",
        "demo",
        "--from-literal=token=abc",
    ])
    .await;
    lab.kubectl_ok(&[
        "create",
        "service",
        "loadbalancer",
        "web",
        "-n",
        "demo",
        "--tcp=80:8080",
    ])
    .await;
    let got = lab
        .kubectl_ok(&[
            "get",
            "cm/cfg",
            "secret/sec",
            "svc/web",
            "-n",
            "demo",
            "-o",
            "jsonpath={.items[0].data.a} {.items[1].data.token} {.items[2].spec.type} {.items[2].spec.ports[0].port}:{.items[2].spec.ports[0].targetPort} {.items[2].spec.selector.app}",
        ])
        .await;
    assert_eq!(got, "b YWJj LoadBalancer 80:8080 web");
    let node_port = lab
        .kubectl_ok(&[
            "get",
            "svc",
            "web",
            "-n",
            "demo",
            "-o",
            "jsonpath={.spec.ports[0].nodePort}",
        ])
        .await;
    assert_eq!(node_port, "30000", "nodePort 0 on the wire means unset");
    let (ok, _, err) = lab.kubectl(&["create", "deployment", "d", "--image=nginx"]).await;
    assert!(!ok && err.contains("protobuf"), "{err}");
    lab.stop().await;
}
