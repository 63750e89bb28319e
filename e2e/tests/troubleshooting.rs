//! `TROUBLESHOOTING.md` cannot rot: every `sh` block in it runs against a lab with the demo's
//! pool, backends and Service, and must succeed and print something. Blocks marked `sh node`
//! run on the node that announces the Service's address, `sh client` in the client's
//! namespace, plain `sh` on the host with the lab's kubeconfig and Herald's binaries on PATH;
//! each as one `bash -euo pipefail` script with `IP` set to the Service's address, as the
//! document's first block sets it.
//!
//! Needs root (namespaces, eBPF), kubectl and the control plane `make deps` builds; under
//! `CI=true` a missing prerequisite fails the test.

use std::path::PathBuf;
use std::time::Duration;

use herald_e2e::lab::{Lab, LabConfig};
use herald_e2e::story;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Host,
    Node,
    Client,
}

/// Every `sh` block of the document, where it runs, and the line it starts on.
fn blocks(markdown: &str) -> Vec<(Place, usize, String)> {
    let mut out = Vec::new();
    let mut current: Option<(Place, usize, String)> = None;
    for (number, line) in markdown.lines().enumerate() {
        match current.as_mut() {
            Some(_) if line.trim_start() == "```" => out.extend(current.take()),
            Some((_, _, script)) => {
                script.push_str(line);
                script.push('\n');
            }
            None => {
                let place = match line.trim_start() {
                    "```sh" => Some(Place::Host),
                    "```sh node" => Some(Place::Node),
                    "```sh client" => Some(Place::Client),
                    _ => None,
                };
                if let Some(place) = place {
                    current = Some((place, number + 1, String::new()));
                }
            }
        }
    }
    assert!(current.is_none(), "an unterminated block");
    out
}

#[test]
fn blocks_are_found_with_their_place() {
    let doc = "text\n```sh\na\nb\n```\n```text\nnot run\n```\n```sh node\nc\n```\n```sh client\nd\n```\n";
    assert_eq!(
        blocks(doc),
        [
            (Place::Host, 2, "a\nb\n".to_string()),
            (Place::Node, 9, "c\n".to_string()),
            (Place::Client, 12, "d\n".to_string())
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_of_the_troubleshooting_guide_runs() {
    if let Err(e) = herald_e2e::lab::check_prerequisites() {
        assert!(
            !std::env::var("CI").is_ok_and(|v| v == "true"),
            "the troubleshooting guide must be checked under CI: {e}"
        );
        eprintln!("skipping: {e}");
        return;
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let markdown = std::fs::read_to_string(root.join("TROUBLESHOOTING.md")).expect("TROUBLESHOOTING.md");
    let blocks = blocks(&markdown);
    for place in [Place::Host, Place::Node, Place::Client] {
        assert!(blocks.iter().any(|(p, _, _)| *p == place), "a {place:?} block exists");
    }

    let prefix = format!("tr{}", std::process::id() % 10_000);
    let lab = Lab::up(LabConfig {
        nodes: 3,
        ..LabConfig::new(&prefix)
    })
    .await
    .expect("lab comes up");
    story::apply_demo_objects(&lab, &|_| {}).await.expect("demo objects");
    let ip = story::wait_for_ip(&lab, Duration::from_secs(20))
        .await
        .expect("an address");
    let owner = story::wait_for_stable_owner(&lab, Duration::from_millis(800), Duration::from_secs(20))
        .await
        .expect("an owner");
    // One request, so the client has resolved the address and the dataplane has counted a flow.
    story::reach(&lab, lab.client_namespace(), &format!("http://{ip}/"))
        .await
        .expect("the Service answers");

    let binaries = std::env::var("HERALD_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target/debug"));
    let path = format!("{}:{}", binaries.display(), std::env::var("PATH").unwrap_or_default());
    let node_ns = lab
        .node_namespace(lab.node_index(&owner).expect("owner is a lab node"))
        .unwrap()
        .to_string();
    let mut failures = Vec::new();
    for (place, line, script) in &blocks {
        let mut command = match place {
            Place::Host => lab.host_command("bash"),
            Place::Node => lab.command_in(&node_ns, "bash").expect("node namespace"),
            Place::Client => lab
                .command_in(lab.client_namespace(), "bash")
                .expect("client namespace"),
        };
        command
            .args(["-euo", "pipefail", "-c", script])
            .env("IP", ip.to_string())
            .env("PATH", &path)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let output = tokio::time::timeout(Duration::from_secs(30), command.output())
            .await
            .unwrap_or_else(|_| panic!("block at line {line} did not finish in 30 s"))
            .expect("bash runs");
        let stdout = String::from_utf8_lossy(&output.stdout);
        eprintln!("--- line {line} ({place:?}):\n{script}{stdout}");
        if !output.status.success() || stdout.trim().is_empty() {
            failures.push(format!(
                "line {line} ({place:?}) exited {:?} with {} bytes of output:\n{script}stderr: {}",
                output.status.code(),
                stdout.len(),
                String::from_utf8_lossy(&output.stderr)
            ));
        }
    }
    lab.down().await.expect("lab down");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
