//! One established connection through a LoadBalancer IP, kept busy across a fault: `curl`
//! in the client namespace asks for `http://<ip>/` ten times a second on a single HTTP/1.1
//! keep-alive connection (URL globbing runs the requests one after another, `--rate` paces
//! them), and reports per request whether it had to open a new connection. A connection the
//! fault broke shows as a failed request or as a new connection from another local port.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::lab::{Lab, LabError};

/// Requests per second on the connection.
const RATE_PER_SEC: u32 = 10;
/// Requests curl is given: two minutes' worth, more than any scenario keeps it.
const REQUESTS: u32 = 1200;
/// Marks curl's per-request report (`--write-out`) apart from the answer's body (not `@`, which
/// would make curl read the format from a file).
const REPORT: &str = "report:";

/// One request on the connection, as curl reported it.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// When its report arrived.
    pub at: Instant,
    /// The body: the answering pod's name (empty when the request failed).
    pub pod: String,
    /// curl opened a connection for it (the first request, or the old one was broken).
    pub new_connection: bool,
    pub local_port: u16,
    /// HTTP status; 0 when there was no answer.
    pub status: u16,
}

/// Turns curl's output lines into answers: a body line (the pod's name) followed by the
/// request's report, which starts a line of its own unless a body lacked its newline.
/// `pending` carries a body whose report has not arrived yet.
pub fn parse_line(line: &str, pending: &mut Option<String>, at: Instant) -> Option<Answer> {
    let Some((body, report)) = line.split_once(REPORT) else {
        *pending = Some(line.trim().to_string());
        return None;
    };
    if !body.trim().is_empty() {
        *pending = Some(body.trim().to_string());
    }
    let fields: Vec<&str> = report.split_whitespace().collect();
    let [connects, port, status] = fields[..] else {
        return None;
    };
    Some(Answer {
        at,
        pod: pending.take().unwrap_or_default(),
        new_connection: connects.parse::<u32>().ok()? > 0,
        local_port: port.parse().ok()?,
        status: status.parse().ok()?,
    })
}

/// A running keep-alive client; killed when dropped.
pub struct KeepAlive {
    child: tokio::process::Child,
    answers: Arc<Mutex<Vec<Answer>>>,
}

impl KeepAlive {
    /// Starts curl in the client namespace against `http://ip/`.
    pub fn start(lab: &Lab, ip: IpAddr) -> Result<KeepAlive, LabError> {
        let host = match ip {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("[{v6}]"),
        };
        let mut cmd = lab.command_in(lab.client_namespace(), "curl")?;
        cmd.args([
            "--silent",
            "--no-buffer",
            "--globoff",
            "--rate",
            &format!("{RATE_PER_SEC}/s"),
            "--max-time",
            "10",
            "--write-out",
            &format!("{REPORT} %{{num_connects}} %{{local_port}} %{{http_code}}\\n"),
        ]);
        // One URL per request rather than a glob: an IPv6 host's brackets need --globoff.
        cmd.args((1..=REQUESTS).map(|n| format!("http://{host}/?request={n}")));
        cmd.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null());
        let mut child = cmd.spawn().map_err(|source| LabError::Spawn {
            program: "curl".to_string(),
            source,
        })?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let answers = Arc::new(Mutex::new(Vec::new()));
        let sink = answers.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            let mut pending = None;
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(answer) = parse_line(&line, &mut pending, Instant::now()) {
                    sink.lock().expect("answers lock").push(answer);
                }
            }
        });
        Ok(KeepAlive { child, answers })
    }

    /// A connection to `ip` whose backend runs on another node than `owner` (one whose
    /// connections the owner's loss must not break), with its first answer and that backend's
    /// node. New connections land on a backend by their flow hash, so a few tries find one;
    /// `None` after 20 that all reached the owner's pods.
    pub async fn start_off(
        lab: &Lab,
        ip: IpAddr,
        owner: &str,
    ) -> Result<Option<(KeepAlive, Answer, String)>, LabError> {
        let pods: Api<Pod> = Api::namespaced(lab.client(), "default");
        for _ in 0..20 {
            let connection = KeepAlive::start(lab, ip)?;
            let Some(first) = connection.first(Duration::from_secs(5)).await else {
                return Err(LabError::Timeout {
                    what: format!("the first answer on a keep-alive connection to {ip}"),
                });
            };
            let node = pods.get(&first.pod).await.ok().and_then(|p| p.spec?.node_name);
            if let Some(node) = node.filter(|n| n != owner) {
                return Ok(Some((connection, first, node)));
            }
            connection.stop().await;
        }
        Ok(None)
    }

    /// The answers so far.
    pub fn answers(&self) -> Vec<Answer> {
        self.answers.lock().expect("answers lock").clone()
    }

    /// The first answer, waiting up to `limit` for it.
    pub async fn first(&self, limit: Duration) -> Option<Answer> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(first) = self.answers().into_iter().next() {
                return Some(first);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops curl and returns every answer.
    pub async fn stop(mut self) -> Vec<Answer> {
        self.child.kill().await.ok();
        // Let the reader take the last lines.
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.answers()
    }
}

/// What a keep-alive connection went through: `None` when it stayed one connection to one
/// pod with every request answered, else what broke it.
pub fn broken(answers: &[Answer]) -> Option<String> {
    let first = answers.first()?;
    answers.iter().enumerate().find_map(|(n, a)| {
        let why = if a.status != 200 {
            format!("request {} got no answer (status {})", n + 1, a.status)
        } else if n > 0 && (a.new_connection || a.local_port != first.local_port) {
            format!("request {} needed a new connection (port {})", n + 1, a.local_port)
        } else if a.pod != first.pod {
            format!("request {} was answered by {}, not {}", n + 1, a.pod, first.pod)
        } else {
            return None;
        };
        Some(why)
    })
}

/// The longest time between two answers in a row.
pub fn longest_gap(answers: &[Answer]) -> Duration {
    answers
        .windows(2)
        .map(|w| w[1].at.duration_since(w[0].at))
        .max()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answers(lines: &[&str]) -> Vec<Answer> {
        let mut pending = None;
        let now = Instant::now();
        lines.iter().filter_map(|l| parse_line(l, &mut pending, now)).collect()
    }

    #[test]
    fn pairs_each_body_with_its_report() {
        let got = answers(&["web-a", "report: 1 40000 200", "web-a", "report: 0 40000 200"]);
        assert_eq!(got.len(), 2);
        assert_eq!(
            (got[0].pod.as_str(), got[0].new_connection, got[0].local_port),
            ("web-a", true, 40000)
        );
        assert_eq!((got[1].new_connection, got[1].status), (false, 200));
        assert_eq!(broken(&got), None);
        let unterminated = answers(&["web-a", "report: 1 40000 200", "web-areport: 0 40000 200"]);
        assert_eq!(
            (unterminated[1].pod.as_str(), unterminated[1].local_port),
            ("web-a", 40000)
        );
    }

    #[test]
    fn a_failed_request_or_a_new_connection_breaks_it() {
        let failed = answers(&["web-a", "report: 1 40000 200", "report: 0 40000 000"]);
        assert_eq!(failed[1].pod, "");
        assert!(broken(&failed).unwrap().contains("request 2 got no answer"));
        let reconnected = answers(&["web-a", "report: 1 40000 200", "web-a", "report: 1 40002 200"]);
        assert!(broken(&reconnected).unwrap().contains("new connection (port 40002)"));
        let moved = answers(&["web-a", "report: 1 40000 200", "web-b", "report: 0 40000 200"]);
        assert!(broken(&moved).unwrap().contains("answered by web-b"));
    }
}
