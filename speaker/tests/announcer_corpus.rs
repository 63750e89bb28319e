//! Replays the committed corpus of interesting frames (`tests/corpus/*.frame`) through the
//! responder and checks each decision against the expectation written in the file.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use herald_speaker::announcer::responder::{Verdict, respond};
use herald_speaker::announcer::{MacAddr, arp, ndp};

const OUR_MAC: MacAddr = MacAddr([0x02, 0xaa, 0, 0, 0, 2]);

fn owned(ip: IpAddr) -> bool {
    ip == "10.203.0.100".parse::<IpAddr>().unwrap() || ip == "fd00:203::64".parse::<IpAddr>().unwrap()
}

/// Reads a corpus file: (expectation, frame bytes).
pub fn read_frame(path: &Path) -> (String, Vec<u8>) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let expect = lines
        .next()
        .and_then(|line| line.strip_prefix("# expect: "))
        .unwrap_or_else(|| panic!("{}: first line must be '# expect: ...'", path.display()))
        .trim()
        .to_string();
    let hex: String = lines.flat_map(|line| line.split_whitespace()).collect();
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(&hex[at..at + 2], 16).unwrap())
        .collect();
    (expect, bytes)
}

fn corpus() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "frame"))
        .collect();
    paths.sort();
    paths
}

#[test]
fn corpus_frames_get_the_expected_verdict() {
    let paths = corpus();
    assert!(paths.len() >= 30, "corpus has {} frames", paths.len());
    let mut failures = Vec::new();
    for path in &paths {
        let (expect, frame) = read_frame(path);
        let verdict = respond(&frame, OUR_MAC, owned);
        let got = match &verdict {
            Verdict::Answer { .. } => "answer".to_string(),
            Verdict::Ignore => "ignore".to_string(),
            Verdict::Drop(error) => format!("drop:{}", error.reason()),
        };
        if got != expect {
            failures.push(format!("{}: expected {expect}, got {got}", path.display()));
        }
        if let Verdict::Answer { frame: answer, .. } = verdict {
            // Every answer is itself a well-formed frame from our MAC.
            let from_us = match arp::parse(&answer) {
                Ok(reply) => reply.sender_mac == OUR_MAC && reply.operation == arp::OP_REPLY,
                Err(_) => ndp::parse(&answer).is_ok_and(|na| na.ethernet_source == OUR_MAC),
            };
            if !from_us {
                failures.push(format!("{}: malformed answer {answer:02x?}", path.display()));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
