//! What a user does with the real `kubectl` against the lab's real kube-apiserver, with Herald
//! running: `explain` on our CRDs, apply, get (short names, printer columns, `-o wide`,
//! `-o yaml`), describe, label, annotate, patch, wait, events, delete; the CRD schema refusing
//! a malformed object; and the RBAC of `config/deploy` enforced for Herald's ServiceAccounts.
//!
//! Needs root (namespaces, eBPF), kubectl and the control plane `make deps` builds; under
//! `CI=true` a missing prerequisite fails the test.

use std::time::{Duration, Instant};

use herald_e2e::lab::{Lab, LabConfig};

async fn lab() -> Option<Lab> {
    if let Err(e) = herald_e2e::lab::check_prerequisites() {
        herald_testkit::skip("the kubectl battery", e);
        return None;
    }
    let prefix = format!("kb{}", std::process::id() % 10_000);
    let config = LabConfig {
        nodes: 2,
        ..LabConfig::new(&prefix)
    };
    Some(Lab::up(config).await.expect("lab comes up"))
}

/// Runs kubectl and returns (success, stdout, stderr).
async fn kubectl(lab: &Lab, args: &[&str], input: Option<&str>) -> (bool, String, String) {
    use tokio::io::AsyncWriteExt;
    let mut cmd = lab.kubectl_command(args);
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    if input.is_some() {
        cmd.stdin(std::process::Stdio::piped());
    }
    let mut child = cmd.spawn().expect("kubectl runs");
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(text.as_bytes()).await.expect("stdin");
    }
    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("kubectl {args:?} timed out"))
        .expect("kubectl output");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

async fn ok(lab: &Lab, args: &[&str]) -> String {
    let (success, out, err) = kubectl(lab, args, None).await;
    assert!(success, "kubectl {args:?} failed:\n{out}\n{err}");
    out
}

/// Runs `args` until its stdout contains `want`, for at most 20 s; returns the last stdout.
async fn until_contains(lab: &Lab, args: &[&str], want: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, out, err) = kubectl(lab, args, None).await;
        if out.contains(want) {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "kubectl {args:?} never showed {want:?}:\n{out}\n{err}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

const POOL: &str = "apiVersion: herald.io/v1beta1
kind: IPAddressPool
metadata: {name: lab, namespace: herald-system}
spec:
  addresses: [10.203.0.200/29, fd00:203::200/125]
---
apiVersion: herald.io/v1beta1
kind: L2Advertisement
metadata: {name: lab, namespace: herald-system}
spec: {}
";

const SERVICE: &str = "apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  type: LoadBalancer
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_works_on_herald_objects_against_the_real_api_server() {
    let Some(lab) = lab().await else { return };

    // The CRDs are structural: explain reads their schema from the server's OpenAPI.
    let explained = ok(&lab, &["explain", "ipaddresspool.spec"]).await;
    assert!(explained.contains("addresses"), "{explained}");
    assert!(explained.contains("autoAssign"), "{explained}");
    let explained = ok(&lab, &["explain", "l2advertisement.spec.interfaces"]).await;
    assert!(explained.contains("interfaces"), "{explained}");

    // apply, and the schema refusing what it can judge.
    let (applied, out, err) = kubectl(&lab, &["apply", "-f", "-"], Some(POOL)).await;
    assert!(applied, "{out}{err}");
    assert!(out.contains("ipaddresspool.herald.io/lab created"), "{out}");
    let malformed = "apiVersion: herald.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: bad, namespace: herald-system}\nspec:\n  addresses: 10.0.0.0/24\n";
    let (applied, _, err) = kubectl(&lab, &["apply", "-f", "-"], Some(malformed)).await;
    assert!(!applied, "a string where the schema wants a list is refused");
    assert!(err.contains("spec.addresses"), "{err}");

    // Printer columns and short names; wait on the condition the controller sets.
    ok(
        &lab,
        &[
            "wait",
            "-n",
            "herald-system",
            "--for=condition=Ready",
            "ippool/lab",
            "--timeout=30s",
        ],
    )
    .await;
    let table = ok(&lab, &["get", "ippool", "-n", "herald-system"]).await;
    for column in [
        "NAME",
        "ADDRESSES",
        "AUTO ASSIGN",
        "READY",
        "ASSIGNED V4",
        "AVAILABLE V4",
    ] {
        assert!(table.contains(column), "{column} missing:\n{table}");
    }
    assert!(table.contains("True"), "{table}");
    let wide = ok(&lab, &["get", "ipaddresspools", "-n", "herald-system", "-o", "wide"]).await;
    assert!(
        wide.contains("ASSIGNED V6"),
        "-o wide shows the priority-1 columns:\n{wide}"
    );
    let yaml = ok(&lab, &["get", "ippool", "lab", "-n", "herald-system", "-o", "yaml"]).await;
    assert!(yaml.contains("availableIPv4: 8"), "{yaml}");
    let adv = ok(&lab, &["get", "l2adv", "-n", "herald-system"]).await;
    assert!(adv.contains("lab"), "{adv}");

    // label, annotate, patch, describe.
    ok(&lab, &["label", "ippool", "lab", "-n", "herald-system", "team=net"]).await;
    ok(&lab, &["annotate", "ippool", "lab", "-n", "herald-system", "owner=lab"]).await;
    ok(
        &lab,
        &[
            "patch",
            "ippool",
            "lab",
            "-n",
            "herald-system",
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"avoidBuggyIPs":true}}"#,
        ],
    )
    .await;
    let labelled = ok(
        &lab,
        &["get", "ippool", "-n", "herald-system", "-l", "team=net", "-o", "name"],
    )
    .await;
    assert_eq!(labelled.trim(), "ipaddresspool.herald.io/lab");
    let described = ok(&lab, &["describe", "ippool", "lab", "-n", "herald-system"]).await;
    for line in ["team=net", "owner: lab", "Avoid Buggy", "Conditions:"] {
        assert!(described.contains(line), "{line:?} missing:\n{described}");
    }

    // A Service gets its address; wait on it, see the Events and who announces it.
    let web = std::collections::BTreeMap::from([("app".to_string(), "web".to_string())]);
    lab.add_backend(1, "web-a", web).await.expect("backend web-a");
    let (applied, out, err) = kubectl(&lab, &["apply", "-f", "-"], Some(SERVICE)).await;
    assert!(applied, "{out}{err}");
    ok(
        &lab,
        &[
            "wait",
            "--for=jsonpath={.status.loadBalancer.ingress[0].ip}=10.203.0.200",
            "service/web",
            "--timeout=30s",
        ],
    )
    .await;
    let events = until_contains(
        &lab,
        &["get", "events", "--field-selector", "involvedObject.name=web"],
        "IPAllocated",
    )
    .await;
    assert!(events.contains("assigned 10.203.0.200"), "{events}");
    let described = ok(&lab, &["describe", "service", "web"]).await;
    assert!(described.contains("IPAllocated"), "{described}");
    let l2 = until_contains(&lab, &["get", "l2status", "-A"], "node").await;
    assert!(l2.contains("herald-system"), "{l2}");

    // RBAC: Herald's ServiceAccounts get what config/deploy grants and nothing more.
    let speaker = "--as=system:serviceaccount:herald-system:herald-speaker";
    let controller = "--as=system:serviceaccount:herald-system:herald-controller";
    for (who, verb, resource, namespace, allowed) in [
        (speaker, "watch", "endpointslices.discovery.k8s.io", "default", true),
        (speaker, "create", "servicel2statuses.herald.io", "herald-system", true),
        (speaker, "patch", "services/status", "default", false),
        (controller, "patch", "services/status", "default", true),
        (
            controller,
            "create",
            "servicel2statuses.herald.io",
            "herald-system",
            false,
        ),
        (controller, "delete", "services", "default", false),
    ] {
        let (_, answer, _) = kubectl(&lab, &["auth", "can-i", who, verb, resource, "-n", namespace], None).await;
        let want = if allowed { "yes" } else { "no" };
        assert_eq!(answer.trim(), want, "{who} {verb} {resource} in {namespace}");
    }

    // delete: the Service's address returns to the pool.
    ok(&lab, &["delete", "service", "web", "--wait=true", "--timeout=30s"]).await;
    until_contains(
        &lab,
        &[
            "get",
            "ippool",
            "lab",
            "-n",
            "herald-system",
            "-o",
            "jsonpath={.status.assignedIPv4}",
        ],
        "0",
    )
    .await;
    let (deleted, out, err) = kubectl(&lab, &["delete", "-f", "-", "--wait=true"], Some(POOL)).await;
    assert!(deleted, "{out}{err}");
    lab.down().await.expect("lab removed");
}
