//! Herald installed, upgraded and uninstalled with helm, as a user does it, in a lab whose
//! kubelet runs what the chart creates: `helm install` brings up the controller and one
//! speaker per node, a Service gets an address and answers; `helm upgrade` with a changed
//! value rolls every speaker while a client keeps connecting (nothing beyond a handoff's gap);
//! `helm uninstall` leaves nothing behind: no Herald Pod, no ServiceL2Status, no Secret, no
//! pinned eBPF program or map on any node.
//!
//! Needs root, the workspace binaries and helm (`make deps` builds it); under `CI=true` a
//! missing prerequisite fails the test.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use herald_e2e::chart;
use herald_e2e::lab::{Lab, LabConfig, ProbeConfig, check_prerequisites, summarize};
use herald_e2e::story;

fn prerequisites() -> Option<PathBuf> {
    let problem = match (check_prerequisites(), chart::locate_helm()) {
        (Ok(()), Ok(helm)) => return Some(helm),
        (Err(e), _) => e.to_string(),
        (_, Err(e)) => e,
    };
    herald_testkit::skip("the helm lifecycle test", problem);
    None
}

/// `helm args…` against the lab (at most 240 s); its stdout, or the test fails with stderr.
async fn helm(lab: &Lab, helm: &Path, args: &[&str]) -> String {
    let mut cmd = lab.host_command(&helm.display().to_string());
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    let out = tokio::time::timeout(Duration::from_secs(240), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("helm {args:?} within 240 s"))
        .expect("helm runs");
    assert!(
        out.status.success(),
        "helm {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `check` every 200 ms for up to `limit`; the last value it returned.
async fn eventually<T, F, Fut>(limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = (bool, T)>,
{
    let deadline = Instant::now() + limit;
    loop {
        let (done, value) = check().await;
        if done || Instant::now() > deadline {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every file (not directory) under `dir`.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files_under(&path));
        } else {
            found.push(path);
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_install_upgrade_and_uninstall_leave_nothing_behind() {
    let Some(helm_binary) = prerequisites() else { return };
    let prefix = format!("hh{}", std::process::id() % 10_000);
    let lab = Lab::up(LabConfig {
        install_herald: false,
        ..LabConfig::new(&prefix)
    })
    .await
    .expect("a lab without Herald");
    let chart_dir = chart::chart_dir().display().to_string();

    // Install: the controller and a speaker on every node, Ready.
    helm(
        &lab,
        &helm_binary,
        &[
            "install",
            "herald",
            &chart_dir,
            "--namespace",
            "herald-system",
            "--create-namespace",
            "--set",
            "logFormat=text",
            "--wait",
            "--timeout",
            "180s",
        ],
    )
    .await;
    let pods = lab
        .kubectl(&["-n", "herald-system", "get", "pods", "-o", "wide"])
        .await
        .expect("kubectl get pods");
    eprintln!("{pods}");
    assert_eq!(lab.controller_pods().len(), 2, "{pods}");
    for node in 1..=lab.node_count() {
        assert!(
            lab.speaker_pid(node).unwrap().is_some(),
            "a speaker on node{node}: {pods}"
        );
    }
    story::apply_demo_objects(&lab, &|_| {})
        .await
        .expect("pool, backends, Service");
    let ip = story::wait_for_ip(&lab, Duration::from_secs(20))
        .await
        .expect("an address");
    let client = lab.client_namespace().to_string();
    story::reach(&lab, &client, &format!("http://{ip}/"))
        .await
        .expect("the Service answers");

    // Upgrade with a changed value while the client keeps connecting: every speaker is
    // replaced, one node at a time, each handing its addresses over as it goes.
    let probe = lab
        .start_probe(
            &client,
            &ProbeConfig {
                target: std::net::SocketAddr::new(ip, 80),
                interval: Duration::from_millis(10),
                duration: Duration::from_secs(45),
                timeout: Duration::from_millis(300),
            },
        )
        .expect("probe starts");
    tokio::time::sleep(Duration::from_secs(1)).await;
    helm(
        &lab,
        &helm_binary,
        &[
            "upgrade",
            "herald",
            &chart_dir,
            "--namespace",
            "herald-system",
            "--reuse-values",
            "--set",
            "speaker.forwarding=snat",
            "--wait",
            "--timeout",
            "180s",
        ],
    )
    .await;
    story::wait_speakers_ready(&lab)
        .await
        .expect("the upgraded speakers are ready");
    let samples = probe.finish().await.expect("probe finishes");
    let upgrade = summarize(&samples);
    eprintln!(
        "helm upgrade: {} of {} requests failed, longest outage {:.0} ms",
        upgrade.failed, upgrade.requests, upgrade.longest_outage_ms
    );
    let forwarding = lab
        .kubectl(&[
            "-n",
            "herald-system",
            "get",
            "daemonset",
            "herald-speaker",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].env[?(@.name==\"HERALD_FORWARDING\")].value}",
        ])
        .await
        .expect("kubectl get daemonset");
    assert_eq!(forwarding.trim(), "snat", "the changed value reached the DaemonSet");
    assert!(upgrade.requests > 1000, "{upgrade:?}");
    // A handoff costs at most a few requests; an outage (every speaker gone at once, an
    // address left unannounced) would cost seconds of them.
    assert!(
        upgrade.longest_outage_ms < 1000.0,
        "traffic stopped during the upgrade: {upgrade:?}"
    );
    story::reach(&lab, &client, &format!("http://{ip}/"))
        .await
        .expect("the Service answers after the upgrade");

    // Uninstall: nothing of Herald stays, in the API or in any node's kernel.
    helm(
        &lab,
        &helm_binary,
        &[
            "uninstall",
            "herald",
            "--namespace",
            "herald-system",
            "--wait",
            "--timeout",
            "120s",
        ],
    )
    .await;
    let left = eventually(Duration::from_secs(60), || async {
        let left = lab
            .kubectl(&["-n", "herald-system", "get", "pods", "-o", "name"])
            .await
            .unwrap_or_default();
        (left.trim().is_empty(), left)
    })
    .await;
    assert!(left.trim().is_empty(), "Herald Pods left: {left}");
    let statuses = eventually(Duration::from_secs(30), || async {
        let left = lab
            .kubectl(&["get", "servicel2statuses", "-A", "-o", "name"])
            .await
            .unwrap_or_else(|e| e.to_string());
        (left.trim().is_empty(), left)
    })
    .await;
    assert!(statuses.trim().is_empty(), "ServiceL2Status objects left: {statuses}");
    let secret = lab
        .kubectl(&["-n", "herald-system", "get", "secrets", "-o", "name"])
        .await
        .expect("kubectl get secrets");
    assert!(
        !secret.contains("herald-speaker-auth"),
        "the speakers' Secret is left: {secret}"
    );
    // The speakers pin under /sys/fs/bpf/herald/<node> (the lab's bpf filesystem; its own
    // maps.debug and progs.debug are the kernel's).
    let pins = eventually(Duration::from_secs(30), || async {
        let pins = files_under(&lab.state_dir().join("bpf").join("herald"));
        (pins.is_empty(), pins)
    })
    .await;
    assert!(pins.is_empty(), "eBPF pins left on the nodes: {pins:?}");
    lab.down().await.expect("lab removed");
}
