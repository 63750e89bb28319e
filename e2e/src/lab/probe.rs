//! A steady client for failover measurements: one new HTTP connection every `interval`
//! to a target, each with its own timeout, recording when it was sent, how long it took
//! and which backend answered (the echo servers answer with their pod name). Runs inside
//! the client namespace as the hidden `herald-lab probe` subcommand, one JSON line per
//! request on stdout; [`summarize`] turns the samples into outage numbers.
//!
//! Requests are started on a fixed cadence, not after the previous one finished, so a
//! stalled request does not hide the ones behind it. A new connection per request means
//! the samples show when *new* connections work again after a failover.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What to probe and how.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeConfig {
    /// HTTP server to connect to (e.g. a LoadBalancer IP and port).
    pub target: SocketAddr,
    /// Pause between the starts of two requests.
    pub interval: Duration,
    /// How long to keep sending.
    pub duration: Duration,
    /// Per-request limit (connect + answer).
    pub timeout: Duration,
}

/// One request's outcome.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ProbeSample {
    /// When the request was started, in ms since the probe started.
    pub sent_ms: f64,
    /// The same instant in Unix ms (the host clock), to line samples up with other events.
    #[serde(default)]
    pub sent_unix_ms: f64,
    /// Time to the full answer, if there was one.
    pub latency_ms: Option<f64>,
    /// Backend named in the answer.
    pub backend: Option<String>,
    /// Why there was no answer.
    pub error: Option<String>,
}

impl ProbeSample {
    /// Whether a backend answered.
    pub fn ok(&self) -> bool {
        self.backend.is_some()
    }
}

/// One request: connect, `GET /`, read to the end, take the last body line as the backend.
async fn request(target: SocketAddr) -> Result<String, String> {
    let mut stream = tokio::net::TcpStream::connect(target)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    stream
        .write_all(b"GET / HTTP/1.0\r\nHost: herald-lab\r\nUser-Agent: herald-lab-probe\r\n\r\n")
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .await
        .map_err(|e| format!("receive: {e}"))?;
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no HTTP header")?;
    if !head.starts_with("HTTP/1.") || head.split_whitespace().nth(1) != Some("200") {
        return Err(format!("answer: {}", head.lines().next().unwrap_or_default()));
    }
    body.lines()
        .last()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .ok_or_else(|| "empty body".to_string())
}

/// Sends requests per `config` and writes one JSON [`ProbeSample`] per line to `out`
/// as they complete (not in send order). Returns once every request has finished.
pub async fn run_probe(config: ProbeConfig, out: &mut (dyn Write + Send)) -> std::io::Result<()> {
    let start = Instant::now();
    let start_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let sender = tokio::spawn(async move {
        let mut ticks = tokio::time::interval(config.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        while start.elapsed() < config.duration {
            ticks.tick().await;
            let sent = Instant::now();
            let sent_ms = sent.duration_since(start).as_secs_f64() * 1000.0;
            let sent_unix_ms = start_unix_ms + sent_ms;
            let tx = tx.clone();
            tokio::spawn(async move {
                let outcome = tokio::time::timeout(config.timeout, request(config.target)).await;
                let sample = match outcome {
                    Ok(Ok(backend)) => ProbeSample {
                        sent_ms,
                        sent_unix_ms,
                        latency_ms: Some(sent.elapsed().as_secs_f64() * 1000.0),
                        backend: Some(backend),
                        error: None,
                    },
                    Ok(Err(e)) => ProbeSample {
                        sent_ms,
                        sent_unix_ms,
                        latency_ms: None,
                        backend: None,
                        error: Some(e),
                    },
                    Err(_) => ProbeSample {
                        sent_ms,
                        sent_unix_ms,
                        latency_ms: None,
                        backend: None,
                        error: Some("timeout".into()),
                    },
                };
                // The receiver is gone only once writing the output failed, which is reported.
                tx.send(sample).ok();
            });
        }
    });
    // The channel closes once the sender loop and every request task have dropped their ends.
    while let Some(sample) = rx.recv().await {
        serde_json::to_writer(&mut *out, &sample).map_err(std::io::Error::other)?;
        out.write_all(b"\n")?;
        out.flush()?;
    }
    sender.await.map_err(std::io::Error::other)?;
    Ok(())
}

/// Outage numbers from a probe's samples.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct ProbeSummary {
    /// Requests sent.
    pub requests: usize,
    /// Requests a backend answered.
    pub answered: usize,
    /// Requests without an answer.
    pub failed: usize,
    /// Longest stretch without a working request: from the first failed request's send
    /// time to the send time of the next answered one (or of the last request).
    pub longest_outage_ms: f64,
    /// Send time of the first failed request.
    pub first_failure_ms: Option<f64>,
    /// Answers per backend.
    pub backends: BTreeMap<String, usize>,
    /// Median latency of answered requests.
    pub median_latency_ms: Option<f64>,
}

/// Summarizes samples (in any order).
pub fn summarize(samples: &[ProbeSample]) -> ProbeSummary {
    let mut sorted: Vec<&ProbeSample> = samples.iter().collect();
    sorted.sort_by(|a, b| a.sent_ms.total_cmp(&b.sent_ms));
    let mut summary = ProbeSummary {
        requests: sorted.len(),
        ..ProbeSummary::default()
    };
    let mut outage_start: Option<f64> = None;
    for sample in &sorted {
        if let Some(backend) = &sample.backend {
            summary.answered += 1;
            *summary.backends.entry(backend.clone()).or_default() += 1;
            if let Some(start) = outage_start.take() {
                summary.longest_outage_ms = summary.longest_outage_ms.max(sample.sent_ms - start);
            }
        } else {
            summary.failed += 1;
            summary.first_failure_ms.get_or_insert(sample.sent_ms);
            outage_start.get_or_insert(sample.sent_ms);
        }
    }
    if let (Some(start), Some(last)) = (outage_start, sorted.last()) {
        summary.longest_outage_ms = summary.longest_outage_ms.max(last.sent_ms - start);
    }
    let mut latencies: Vec<f64> = sorted.iter().filter_map(|s| s.latency_ms).collect();
    latencies.sort_by(f64::total_cmp);
    summary.median_latency_ms = latencies.get(latencies.len() / 2).copied();
    summary
}

/// Parses the JSON lines `run_probe` writes; lines that are not samples are skipped.
pub fn parse_samples(output: &str) -> Vec<ProbeSample> {
    output.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(sent_ms: f64, backend: Option<&str>) -> ProbeSample {
        ProbeSample {
            sent_unix_ms: sent_ms,
            sent_ms,
            latency_ms: backend.map(|_| 1.0),
            backend: backend.map(str::to_string),
            error: backend.is_none().then(|| "timeout".to_string()),
        }
    }

    #[test]
    fn outage_runs_from_the_first_failure_to_the_next_answer() {
        let samples = [
            sample(0.0, Some("a")),
            sample(30.0, None),
            sample(10.0, Some("a")),
            sample(20.0, None),
            sample(40.0, Some("b")),
            sample(50.0, None),
            sample(60.0, Some("b")),
        ];
        let summary = summarize(&samples);
        assert_eq!((summary.requests, summary.answered, summary.failed), (7, 4, 3));
        assert_eq!(summary.longest_outage_ms, 20.0);
        assert_eq!(summary.first_failure_ms, Some(20.0));
        assert_eq!(summary.backends, BTreeMap::from([("a".into(), 2), ("b".into(), 2)]));
        assert_eq!(summary.median_latency_ms, Some(1.0));
    }

    #[test]
    fn an_outage_that_never_ends_counts_to_the_last_request() {
        let summary = summarize(&[sample(0.0, Some("a")), sample(10.0, None), sample(35.0, None)]);
        assert_eq!(summary.longest_outage_ms, 25.0);
        assert_eq!(summarize(&[]), ProbeSummary::default());
    }

    #[test]
    fn samples_round_trip_through_json_lines() {
        let samples = vec![sample(1.5, Some("web-a")), sample(2.5, None)];
        let mut text = String::from("not json\n");
        for s in &samples {
            text.push_str(&serde_json::to_string(s).unwrap());
            text.push('\n');
        }
        assert_eq!(parse_samples(&text), samples);
    }

    #[tokio::test]
    async fn probes_an_echo_server_and_notices_it_going_away() {
        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let target = http.local_addr().unwrap();
        let server = tokio::spawn(super::super::echo::serve_echo("web-a".into(), http, udp));
        let config = ProbeConfig {
            target,
            interval: Duration::from_millis(10),
            duration: Duration::from_millis(400),
            timeout: Duration::from_millis(200),
        };
        let stopper = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            server.abort();
        });
        let mut out = Vec::new();
        run_probe(config, &mut out).await.unwrap();
        stopper.await.unwrap();
        let samples = parse_samples(&String::from_utf8(out).unwrap());
        let summary = summarize(&samples);
        assert!(summary.requests >= 20, "{summary:?}");
        assert!(summary.answered >= 5, "{summary:?}");
        assert!(summary.failed >= 5, "{summary:?}");
        assert_eq!(summary.backends.keys().collect::<Vec<_>>(), ["web-a"]);
        let first_failure = summary.first_failure_ms.unwrap();
        assert!((100.0..350.0).contains(&first_failure), "{summary:?}");
    }
}
